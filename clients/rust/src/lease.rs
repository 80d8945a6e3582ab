//! The [`Lease`] handed to a locked body.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;

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

/// Asks the server whether a lease's grant still stands (`SPACELOCK.CHECK`),
/// over the connection of the `SpaceLock` that made it.
pub(crate) type Checker =
    Arc<dyn Fn() -> BoxFuture<'static, Result<bool, crate::Error>> + Send + Sync>;

pub(crate) struct LeaseInner {
    pub(crate) name: String,
    pub(crate) key: String,
    pub(crate) owner: Arc<str>,
    pub(crate) token: u64,
    pub(crate) ttl: Duration,
    pub(crate) lost: Arc<LostSignal>,
    pub(crate) valid_until: Arc<ValidUntil>,
    pub(crate) checker: Checker,
}

impl std::fmt::Debug for LeaseInner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseInner")
            .field("name", &self.name)
            .field("key", &self.key)
            .field("owner", &self.owner)
            .field("token", &self.token)
            .field("ttl", &self.ttl)
            .field("lost", &self.lost)
            .field("valid_until", &self.valid_until)
            .finish_non_exhaustive()
    }
}

/// Why a lease ended, from [`Lease::lost_reason`].
///
/// # Examples
///
/// ```no_run
/// use spacelock_client::LostReason;
/// # async fn demo(locks: spacelock_client::SpaceLock<redis::aio::ConnectionManager>) -> Result<(), spacelock_client::Error> {
/// locks
///     .with_space_lock("space-42", |lease| async move {
///         lease.lost().await;
///         match lease.lost_reason() {
///             Some(LostReason::NotOwner) => eprintln!("someone else has the lock now"),
///             Some(LostReason::Expired) => eprintln!("could not refresh in time"),
///             _ => {}
///         }
///     })
///     .await?;
/// # Ok(()) }
/// ```
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LostReason {
    /// A refresh answered `0`: the key expired, was deleted, or has another owner.
    NotOwner,
    /// No refresh succeeded within the ttl (Redis unreachable, slow or stalled, or this process starved), so the lock may have expired.
    Expired,
    /// The body ended (returned, panicked or was cancelled) and the lock was
    /// released (or found to be no longer ours). Set when the body ends; by
    /// the time `with_space_lock` returns, the release has finished, and a
    /// release that failed has turned this into [`ReleaseFailed`](Self::ReleaseFailed).
    Released,
    /// The body ended, but the release did not succeed within
    /// [`Options::release_timeout`](crate::Options::release_timeout), or
    /// before the lock would have expired anyway (the server was unreachable
    /// or did not answer). The lock stays held in this owner's name until the
    /// server runs the release (if it got it) or its ttl runs out; a warning
    /// was logged.
    ReleaseFailed,
}

impl LostReason {
    fn code(self) -> u8 {
        match self {
            LostReason::NotOwner => 1,
            LostReason::Expired => 2,
            LostReason::Released => 3,
            LostReason::ReleaseFailed => 4,
        }
    }

    fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(LostReason::NotOwner),
            2 => Some(LostReason::Expired),
            3 => Some(LostReason::Released),
            4 => Some(LostReason::ReleaseFailed),
            _ => None,
        }
    }
}

impl std::fmt::Display for LostReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LostReason::NotOwner => "the lock expired or has another owner",
            LostReason::Expired => "no refresh succeeded within the ttl",
            LostReason::Released => "the lock was released",
            LostReason::ReleaseFailed => {
                "the release failed; the lock stays held until its ttl runs out"
            }
        })
    }
}

/// The end of a lease, shared by the lease, its heartbeat entry and the
/// guard that releases it: a cancellation token, and the reason of whoever
/// ended it first.
#[derive(Debug, Default)]
pub(crate) struct LostSignal {
    token: CancellationToken,
    reason: AtomicU8,
}

impl LostSignal {
    /// A lease that is not lost yet.
    pub(crate) fn new() -> Arc<Self> {
        Arc::default()
    }

    /// Ends the lease for `reason`, unless it has already ended (the first
    /// reason stays).
    pub(crate) fn lose(&self, reason: LostReason) {
        let _ = self
            .reason
            .compare_exchange(0, reason.code(), Ordering::AcqRel, Ordering::Acquire);
        self.token.cancel();
    }

    /// Records that the release after the body failed: `Released` becomes
    /// `ReleaseFailed` (any other first reason stays).
    pub(crate) fn release_failed(&self) {
        let _ = self.reason.compare_exchange(
            LostReason::Released.code(),
            LostReason::ReleaseFailed.code(),
            Ordering::AcqRel,
            Ordering::Acquire,
        );
    }

    /// Whether the lease has ended.
    pub(crate) fn is_lost(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Why it ended, once it has.
    pub(crate) fn reason(&self) -> Option<LostReason> {
        LostReason::from_code(self.reason.load(Ordering::Acquire))
    }

    /// Resolves once the lease has ended.
    pub(crate) async fn cancelled(&self) {
        self.token.cancelled().await
    }

    /// A token cancelled when the lease ends.
    pub(crate) fn child_token(&self) -> CancellationToken {
        self.token.child_token()
    }
}

/// The local deadline of a lease: the start of its last successful refresh
/// (or the moment the acquire was sent) plus the ttl, on the monotonic clock.
/// It is the only record of that deadline: the heartbeat moves it forward and
/// checks it; [`Lease::is_lost`] reads it directly, so a holder sees the
/// deadline pass even when the heartbeat task has not run yet (a busy or
/// starved runtime).
#[derive(Debug)]
pub(crate) struct ValidUntil {
    base: Instant,
    nanos: AtomicU64,
    /// The latest the key can exist on the server: the arrival of the last
    /// reply that set its expiry, plus the ttl (nanoseconds after `base`).
    /// It bounds how long a release is worth trying.
    expires_by: AtomicU64,
}

impl ValidUntil {
    /// A deadline of `start + ttl`.
    pub(crate) fn new(start: Instant, ttl: Duration) -> Arc<Self> {
        let ttl = ttl.min(crate::options::MAX_SPAN);
        let v = Arc::new(ValidUntil {
            base: start,
            nanos: AtomicU64::new(0),
            expires_by: AtomicU64::new(0),
        });
        v.extend(start, ttl);
        v.answered(Instant::now(), ttl);
        v
    }

    /// A reply that set the key's expiry arrived at `at`: the key is gone
    /// by `at + ttl` at the latest.
    pub(crate) fn answered(&self, at: Instant, ttl: Duration) {
        let by = crate::options::after(at, ttl)
            .saturating_duration_since(self.base)
            .as_nanos();
        self.expires_by
            .fetch_max(u64::try_from(by).unwrap_or(u64::MAX), Ordering::Release);
    }

    /// The latest the key can exist on the server.
    pub(crate) fn expires_by(&self) -> Instant {
        self.base + Duration::from_nanos(self.expires_by.load(Ordering::Acquire))
    }

    /// Moves the deadline to `start + ttl` if that is later.
    pub(crate) fn extend(&self, start: Instant, ttl: Duration) {
        let at = crate::options::after(start, ttl)
            .saturating_duration_since(self.base)
            .as_nanos();
        self.nanos
            .fetch_max(u64::try_from(at).unwrap_or(u64::MAX), Ordering::Release);
    }

    /// The moment the first deadline counts from.
    pub(crate) fn start(&self) -> Instant {
        self.base
    }

    /// The deadline itself.
    pub(crate) fn at(&self) -> Instant {
        self.base + Duration::from_nanos(self.nanos.load(Ordering::Acquire))
    }

    /// Whether `now` is at or past the deadline.
    pub(crate) fn passed(&self, now: Instant) -> bool {
        now >= self.at()
    }
}

impl Lease {
    pub(crate) fn new(inner: LeaseInner) -> Self {
        Lease {
            inner: Arc::new(inner),
        }
    }

    /// Asks the server whether this lease's grant still holds the lock
    /// (`SPACELOCK.CHECK key owner token`): `true` only while the key holds
    /// this lease's owner under exactly this grant. It is the server's answer
    /// at that moment, unlike [`is_lost`](Self::is_lost), which is local; a
    /// resource that fences with [`token`](Self::token) does not need it.
    ///
    /// # Errors
    ///
    /// [`Error::ModuleNotLoaded`](crate::Error::ModuleNotLoaded), or
    /// [`Error::Redis`](crate::Error::Redis) /
    /// [`Error::Timeout`](crate::Error::Timeout) if no answer came within the
    /// `SpaceLock`'s request timeout (it retries on a fresh connection after
    /// an I/O error).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only reads.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(locks: spacelock_client::SpaceLock<redis::aio::ConnectionManager>) -> Result<(), spacelock_client::Error> {
    /// let outcome = locks
    ///     .with_space_lock("space-42", |lease| async move {
    ///         if !lease.check().await? {
    ///             return Ok(()); // someone else holds it now: stop
    ///         }
    ///         // ... write, passing lease.token()
    ///         Ok::<_, spacelock_client::Error>(())
    ///     })
    ///     .await?;
    /// if let spacelock_client::Outcome::Ran(result) = outcome {
    ///     result?;
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn check(&self) -> Result<bool, crate::Error> {
        (self.inner.checker)().await
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
    #[must_use]
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
    #[must_use]
    pub fn key(&self) -> &str {
        &self.inner.key
    }

    /// The owner value this lease's grant holds the lock under: the
    /// `SpaceLock`'s [`owner`](crate::SpaceLock::owner) id and the call's
    /// number, `{owner}:{n}`. Each call has its own, so that a release one
    /// call sends late can never end another call's grant of the same name.
    /// It is what `SPACELOCK.CHECK key owner token` and `SPACELOCK.INFO`
    /// name.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(locks: spacelock_client::SpaceLock<redis::aio::ConnectionManager>) -> Result<(), spacelock_client::Error> {
    /// let prefix = format!("{}:", locks.owner());
    /// locks
    ///     .with_space_lock("space-42", |lease| async move {
    ///         assert!(lease.owner().starts_with(&prefix));
    ///     })
    ///     .await?;
    /// # Ok(()) }
    /// ```
    #[must_use]
    pub fn owner(&self) -> &str {
        &self.inner.owner
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
    #[must_use]
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
    #[must_use]
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
    #[must_use]
    pub fn is_lost(&self) -> bool {
        if self.inner.lost.is_lost() {
            return true;
        }
        // The deadline check does not wait for the heartbeat task to notice.
        // Latch it: `lost()` resolves too, and the heartbeat stops.
        if self.inner.valid_until.passed(Instant::now()) {
            self.inner.lost.lose(LostReason::Expired);
            return true;
        }
        false
    }

    /// Why the lease ended: `None` while it is held.
    ///
    /// [`LostReason::NotOwner`] when a refresh answered `0`,
    /// [`LostReason::Expired`] when no refresh succeeded within the ttl
    /// (also when [`is_lost`](Self::is_lost) saw the local deadline pass),
    /// [`LostReason::Released`] once the body has ended and the lock was
    /// released, and [`LostReason::ReleaseFailed`] if that release did not
    /// succeed. The first reason stays, except that `Released` turns into
    /// `ReleaseFailed`; once `with_space_lock` has returned it is final, so a
    /// lease kept past its body tells whether the lock was let go.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(locks: spacelock_client::SpaceLock<redis::aio::ConnectionManager>) -> Result<(), spacelock_client::Error> {
    /// locks
    ///     .with_space_lock("space-42", |lease| async move {
    ///         assert_eq!(lease.lost_reason(), None, "held while the body runs");
    ///         lease.lost().await;
    ///         eprintln!("lost {}: {}", lease.key(), lease.lost_reason().unwrap());
    ///     })
    ///     .await?;
    /// # Ok(()) }
    /// ```
    #[must_use]
    pub fn lost_reason(&self) -> Option<LostReason> {
        if self.is_lost() {
            self.inner.lost.reason()
        } else {
            None
        }
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
    #[must_use]
    pub fn lost_token(&self) -> CancellationToken {
        self.inner.lost.child_token()
    }
}
