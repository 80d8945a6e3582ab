//! Release on every path.
//!
//! A [`Guard`] owns a call's [`Claim`] on its key in the in-process
//! [`Registry`](crate::registry::Registry). [`Guard::finish`] releases in the
//! foreground after the body; dropping a guard that may still hold the lock
//! (the call was cancelled, or the body panicked past `finish`) releases from
//! a task spawned on the runtime, and a release that the runtime drops unrun
//! (shutdown) is logged, never silently skipped.

use std::sync::Arc;
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::time::Instant;

use crate::conn::LockConnection;
use crate::inner::Inner;
use crate::lease::{LostReason, LostSignal, ValidUntil};
use crate::options::{Settings, RELEASE_FLOOR};
use crate::registry::Claim;
use crate::retry;

/// Owns a running claim and releases the lock on every path.
pub(crate) struct Guard<C: LockConnection> {
    inner: Arc<Inner<C>>,
    key: String,
    /// The call's own owner value ([`Inner::call_owner`]).
    owner: Arc<str>,
    claim: Option<Claim>,
    /// Redis may hold our lock (acquiring, or held): release on drop.
    held: bool,
    heartbeat_id: Option<u64>,
    lost: Option<Arc<LostSignal>>,
    valid_until: Option<Arc<ValidUntil>>,
    handle: Handle,
}

/// How long a release may take from now: the release timeout, but no
/// longer than the key can still exist (at least [`RELEASE_FLOOR`]).
fn release_budget(s: &Settings, valid_until: Option<&ValidUntil>) -> Duration {
    match valid_until {
        Some(v) => s.release_timeout().min(
            v.expires_by()
                .saturating_duration_since(Instant::now())
                .max(RELEASE_FLOOR),
        ),
        None => s.release_budget(),
    }
}

impl<C: LockConnection> Guard<C> {
    /// A guard for a call that is about to acquire `key`.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime.
    pub(crate) fn new(inner: Arc<Inner<C>>, key: String, owner: Arc<str>, claim: Claim) -> Self {
        Guard {
            inner,
            key,
            owner,
            claim: Some(claim),
            held: true,
            heartbeat_id: None,
            lost: None,
            valid_until: None,
            handle: Handle::current(),
        }
    }

    /// Redis does not hold our lock (or its release was already tried).
    pub(crate) fn set_free(&mut self) {
        self.held = false;
    }

    /// The lease is running: stop its heartbeat and signal its end on
    /// release, which is worth trying only while the key can exist.
    pub(crate) fn attach(
        &mut self,
        heartbeat_id: u64,
        lost: Arc<LostSignal>,
        valid_until: Arc<ValidUntil>,
    ) {
        self.heartbeat_id = Some(heartbeat_id);
        self.lost = Some(lost);
        self.valid_until = Some(valid_until);
    }

    fn stop_heartbeat(&mut self) {
        if let Some(id) = self.heartbeat_id.take() {
            self.inner.heartbeat.unregister(id);
        }
        if let Some(lost) = &self.lost {
            lost.lose(LostReason::Released);
        }
    }

    /// Releases now, in the foreground, and frees the claim. A release
    /// that fails is logged and turns the lease's reason into
    /// `ReleaseFailed`. Returns whether it succeeded.
    pub(crate) async fn finish(&mut self) -> bool {
        self.stop_heartbeat();
        let s = &self.inner.settings;
        let budget = release_budget(s, self.valid_until.as_deref());
        let ok = retry::release_logged(&self.inner.conn, &self.key, &self.owner, budget).await;
        if !ok {
            if let Some(lost) = &self.lost {
                lost.release_failed();
            }
        }
        self.held = false;
        self.claim = None;
        ok
    }
}

impl<C: LockConnection> Drop for Guard<C> {
    fn drop(&mut self) {
        if !self.held {
            return; // the claim frees itself
        }
        self.stop_heartbeat();
        let Some(claim) = self.claim.take() else {
            return;
        };
        let pending = PendingRelease {
            key: std::mem::take(&mut self.key),
            done: false,
        };
        tracing::debug!(key = %pending.key, "spacelock: cancelled while the lock may be held; releasing in the background");
        let (inner, lost, claim) = (self.inner.clone(), self.lost.take(), claim.into_releasing());
        let owner = self.owner.clone();
        let budget = release_budget(&inner.settings, self.valid_until.as_deref());
        self.handle.spawn(async move {
            let mut pending = pending;
            let ok = retry::release_logged(&inner.conn, &pending.key, &owner, budget).await;
            if !ok {
                if let Some(lost) = lost {
                    lost.release_failed();
                }
            }
            pending.done = true;
            drop(claim);
        });
    }
}

/// The background release of a cancelled call. If the runtime drops it
/// before it finished (shutdown), says so instead of failing silently.
struct PendingRelease {
    key: String,
    done: bool,
}

impl Drop for PendingRelease {
    fn drop(&mut self) {
        if !self.done {
            tracing::warn!(
                key = %self.key,
                "spacelock: the runtime shut down before the lock was released; it stays held until its ttl runs out"
            );
        }
    }
}
