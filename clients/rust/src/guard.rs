//! Release on every path.
//!
//! * [`Registry`]: the in-process mutex, one entry per key. An entry is
//!   *running* while a call acquires, runs its body and releases, and
//!   *releasing* while the release of a cancelled call runs in the
//!   background. A call that finds its key running gets `InProgress`; one
//!   that finds it releasing waits for that release first (it could
//!   otherwise delete the new grant: both use the same owner id).
//! * [`Guard`]: owns a running entry. [`Guard::finish`] releases in the
//!   foreground after the body; dropping a guard that may still hold the
//!   lock (the call was cancelled, or the body panicked past `finish`)
//!   releases from a task spawned on the runtime, and a release that the
//!   runtime drops unrun (shutdown) is logged, never silently skipped.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::runtime::Handle;
use tokio::sync::watch;

use std::time::Duration;

use tokio::time::Instant;

use crate::conn::LockConnection;
use crate::lease::{LostReason, LostSignal, ValidUntil};
use crate::lock::Inner;
use crate::options::Settings;
use crate::retry;

enum Slot {
    Running,
    /// Changes (closes) when the background release has finished.
    Releasing(watch::Receiver<()>),
}

/// The in-process mutex: which keys this `SpaceLock` (and its clones) is
/// running or still releasing.
#[derive(Default)]
pub(crate) struct Registry {
    map: Mutex<HashMap<String, Slot>>,
}

impl Registry {
    fn map(&self) -> MutexGuard<'_, HashMap<String, Slot>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Claims `key` for one call: `None` if a call is running it. Waits out
    /// a background release of `key` first. The check and the claim are one
    /// synchronous critical section.
    pub(crate) async fn claim(self: &Arc<Self>, key: &str) -> Option<Entry> {
        loop {
            let mut done = {
                let mut map = self.map();
                match map.get(key) {
                    None => {
                        map.insert(key.to_string(), Slot::Running);
                        return Some(Entry {
                            registry: self.clone(),
                            key: key.to_string(),
                            done: None,
                        });
                    }
                    Some(Slot::Running) => return None,
                    Some(Slot::Releasing(rx)) => rx.clone(),
                }
            };
            // Errors once the releasing task drops its sender: done.
            let _ = done.changed().await;
        }
    }

    /// Whether a call is running `key` (not: releasing it in the background).
    pub(crate) fn is_running(&self, key: &str) -> bool {
        matches!(self.map().get(key), Some(Slot::Running))
    }

    /// Waits until no background release is in flight.
    pub(crate) async fn settle(&self) {
        loop {
            let pending: Vec<watch::Receiver<()>> = self
                .map()
                .values()
                .filter_map(|s| match s {
                    Slot::Releasing(rx) => Some(rx.clone()),
                    Slot::Running => None,
                })
                .collect();
            if pending.is_empty() {
                return;
            }
            for mut rx in pending {
                let _ = rx.changed().await;
            }
        }
    }
}

/// A claimed key; removed from the registry on drop.
pub(crate) struct Entry {
    registry: Arc<Registry>,
    key: String,
    /// Set while releasing in the background; dropped (after the removal)
    /// to wake the calls waiting for the key.
    done: Option<watch::Sender<()>>,
}

impl Entry {
    /// From now on the key is being released in the background.
    fn into_releasing(mut self) -> Entry {
        let (tx, rx) = watch::channel(());
        self.registry
            .map()
            .insert(self.key.clone(), Slot::Releasing(rx));
        self.done = Some(tx);
        self
    }
}

impl Drop for Entry {
    fn drop(&mut self) {
        self.registry.map().remove(&self.key);
        // `done` is dropped after this, waking the waiters.
    }
}

/// Owns a running entry and releases the lock on every path.
pub(crate) struct Guard<C: LockConnection> {
    inner: Arc<Inner<C>>,
    key: String,
    entry: Option<Entry>,
    /// Redis may hold our lock (acquiring, or held): release on drop.
    held: bool,
    heartbeat_id: Option<u64>,
    lost: Option<Arc<LostSignal>>,
    valid_until: Option<Arc<ValidUntil>>,
    handle: Handle,
}

/// How long a release may take from now: the release timeout, but no
/// longer than the key can still exist (at least 250 ms, so that a short
/// lease on a busy machine still gets its reply).
fn release_budget(s: &Settings, valid_until: Option<&ValidUntil>) -> Duration {
    match valid_until {
        Some(v) => s.release_timeout().min(
            v.expires_by()
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(250)),
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
    pub(crate) fn new(inner: Arc<Inner<C>>, key: String, entry: Entry) -> Self {
        Guard {
            inner,
            key,
            entry: Some(entry),
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

    /// Releases now, in the foreground, and frees the entry. A release
    /// that fails is logged and turns the lease's reason into
    /// `ReleaseFailed`. Returns whether it succeeded.
    pub(crate) async fn finish(&mut self) -> bool {
        self.stop_heartbeat();
        let s = &self.inner.settings;
        let budget = release_budget(s, self.valid_until.as_deref());
        let ok = retry::release_logged(&self.inner.conn, &self.key, &s.owner, budget).await;
        if !ok {
            if let Some(lost) = &self.lost {
                lost.release_failed();
            }
        }
        self.held = false;
        self.entry = None;
        ok
    }
}

impl<C: LockConnection> Drop for Guard<C> {
    fn drop(&mut self) {
        if !self.held {
            return; // the entry frees itself
        }
        self.stop_heartbeat();
        let Some(entry) = self.entry.take() else {
            return;
        };
        let pending = PendingRelease {
            key: std::mem::take(&mut self.key),
            done: false,
        };
        tracing::debug!(key = %pending.key, "spacelock: cancelled while the lock may be held; releasing in the background");
        let (inner, lost, entry) = (self.inner.clone(), self.lost.take(), entry.into_releasing());
        let budget = release_budget(&inner.settings, self.valid_until.as_deref());
        self.handle.spawn(async move {
            let mut pending = pending;
            let owner = &inner.settings.owner;
            let ok = retry::release_logged(&inner.conn, &pending.key, owner, budget).await;
            if !ok {
                if let Some(lost) = lost {
                    lost.release_failed();
                }
            }
            pending.done = true;
            drop(entry);
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
