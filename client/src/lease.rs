//! The [`Lease`] handed to a locked body.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use tokio_util::sync::CancellationToken;

/// A held lock, as seen by the body running under it.
///
/// Cheap to clone. The lease stays valid while the heartbeat keeps
/// refreshing it; when it is lost, [`Lease::lost`] resolves and
/// [`Lease::is_lost`] turns true. After the body returns and the lock is
/// released, the lease also counts as lost.
///
/// # Examples
///
/// ```no_run
/// # async fn demo(locks: spacelock_client::SpaceLock<redis::aio::ConnectionManager>) -> Result<(), spacelock_client::Error> {
/// locks
///     .with_space_lock("space-42", |lease| async move {
///         println!("holding {} with token {}", lease.key(), lease.token());
///         tokio::select! {
///             _ = lease.lost() => eprintln!("lost the lock, stopping early"),
///             _ = tokio::time::sleep(std::time::Duration::from_secs(5)) => {}
///         }
///     })
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Lease {
    inner: Arc<LeaseInner>,
}

#[derive(Debug)]
struct LeaseInner {
    name: String,
    key: String,
    token: u64,
    ttl: Duration,
    lost: CancellationToken,
    valid_until: Arc<ValidUntil>,
}

/// The local deadline of a lease: the start of its last successful refresh
/// (or of the acquire) plus the ttl, on the monotonic clock. The heartbeat
/// moves it forward; [`Lease::is_lost`] reads it directly, so a holder sees
/// the deadline pass even when the heartbeat task has not run yet (a busy or
/// starved runtime).
#[derive(Debug)]
pub(crate) struct ValidUntil {
    base: Instant,
    nanos: AtomicU64,
}

impl ValidUntil {
    /// A deadline of `start + ttl`.
    pub(crate) fn new(start: Instant, ttl: Duration) -> Arc<Self> {
        let v = Arc::new(ValidUntil {
            base: start,
            nanos: AtomicU64::new(0),
        });
        v.extend(start, ttl);
        v
    }

    /// Moves the deadline to `start + ttl` if that is later.
    pub(crate) fn extend(&self, start: Instant, ttl: Duration) {
        let at = (start + ttl)
            .saturating_duration_since(self.base)
            .as_nanos();
        self.nanos
            .fetch_max(u64::try_from(at).unwrap_or(u64::MAX), Ordering::Release);
    }

    /// The acquire's start, which the first deadline counts from.
    pub(crate) fn start(&self) -> Instant {
        self.base
    }

    /// Whether `now` is at or past the deadline.
    pub(crate) fn passed(&self, now: Instant) -> bool {
        let at = self.base + Duration::from_nanos(self.nanos.load(Ordering::Acquire));
        now >= at
    }
}

impl Lease {
    pub(crate) fn new(
        name: &str,
        key: String,
        token: u64,
        ttl: Duration,
        lost: CancellationToken,
        valid_until: Arc<ValidUntil>,
    ) -> Self {
        Lease {
            inner: Arc::new(LeaseInner {
                name: name.to_string(),
                key,
                token,
                ttl,
                lost,
                valid_until,
            }),
        }
    }

    /// The fencing token of this grant: strictly greater than every token
    /// issued before for the same key. Pass it to the protected resource so
    /// it can reject writes from a holder whose lease has expired.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(locks: spacelock_client::SpaceLock<redis::aio::ConnectionManager>) -> Result<(), spacelock_client::Error> {
    /// locks
    ///     .with_space_lock("space-42", |lease| async move {
    ///         // e.g. UPDATE tree SET ... WHERE last_token <= $token
    ///         println!("writing with fencing token {}", lease.token());
    ///     })
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn token(&self) -> u64 {
        self.inner.token
    }

    /// The Redis key of the lock: the key prefix followed by the name.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(locks: spacelock_client::SpaceLock<redis::aio::ConnectionManager>) -> Result<(), spacelock_client::Error> {
    /// locks
    ///     .with_space_lock("space-42", |lease| async move {
    ///         assert_eq!(lease.key(), "spacelock:lock:space-42");
    ///     })
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn key(&self) -> &str {
        &self.inner.key
    }

    /// The lock name as given to `with_space_lock` (without the prefix).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(locks: spacelock_client::SpaceLock<redis::aio::ConnectionManager>) -> Result<(), spacelock_client::Error> {
    /// locks
    ///     .with_space_lock("space-42", |lease| async move {
    ///         assert_eq!(lease.name(), "space-42");
    ///     })
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The time to live the lease is refreshed with.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(locks: spacelock_client::SpaceLock<redis::aio::ConnectionManager>) -> Result<(), spacelock_client::Error> {
    /// locks
    ///     .with_space_lock("space-42", |lease| async move {
    ///         println!("refreshed every {:?}", lease.ttl() / 3);
    ///     })
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn ttl(&self) -> Duration {
        self.inner.ttl
    }

    /// Whether the lease has been lost (or released). Once true, stays true.
    ///
    /// True as soon as a refresh answered `0`, or as soon as the local
    /// deadline (start of the last successful refresh + ttl, monotonic clock)
    /// has passed, even if the heartbeat task has not woken up yet.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(locks: spacelock_client::SpaceLock<redis::aio::ConnectionManager>) -> Result<(), spacelock_client::Error> {
    /// locks
    ///     .with_space_lock("space-42", |lease| async move {
    ///         for step in 0..10 {
    ///             if lease.is_lost() {
    ///                 return Err(format!("lost the lock before step {step}"));
    ///             }
    ///             // ... one step of work ...
    ///         }
    ///         Ok(())
    ///     })
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn is_lost(&self) -> bool {
        if self.inner.lost.is_cancelled() {
            return true;
        }
        // The deadline check does not wait for the heartbeat task to notice.
        // Latch it: `lost()` resolves too, and the heartbeat stops.
        if self.inner.valid_until.passed(Instant::now()) {
            self.inner.lost.cancel();
            return true;
        }
        false
    }

    /// Resolves when the lease is lost: a refresh answered `0` (the key
    /// expired, was deleted or has another owner), or no refresh succeeded
    /// within the ttl. Also resolves once the lock has been released.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping the future has no effect, and a later call
    /// resolves just the same.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(locks: spacelock_client::SpaceLock<redis::aio::ConnectionManager>) -> Result<(), spacelock_client::Error> {
    /// locks
    ///     .with_space_lock("space-42", |lease| async move {
    ///         tokio::select! {
    ///             _ = lease.lost() => Err("lost the lock"),
    ///             _ = tokio::time::sleep(std::time::Duration::from_secs(60)) => Ok(()),
    ///         }
    ///     })
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub async fn lost(&self) {
        self.inner.lost.cancelled().await
    }

    /// A token that is cancelled when the lease is lost, for use with APIs
    /// that take a [`CancellationToken`]. Cancelling it yourself does not
    /// affect the lease.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(locks: spacelock_client::SpaceLock<redis::aio::ConnectionManager>) -> Result<(), spacelock_client::Error> {
    /// locks
    ///     .with_space_lock("space-42", |lease| async move {
    ///         let token = lease.lost_token();
    ///         tokio::spawn(async move {
    ///             token.cancelled().await;
    ///             eprintln!("lock lost; stopping the helper task");
    ///         });
    ///     })
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn lost_token(&self) -> CancellationToken {
        self.inner.lost.child_token()
    }
}
