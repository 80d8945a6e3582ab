//! What the lock calls return: [`Outcome`] and [`Skipped`] for the locked
//! bodies, and one typed reply per primitive command.

use std::time::Duration;

/// What [`SpaceLock::with_space_lock`](crate::SpaceLock::with_space_lock) did.
///
/// # Examples
///
/// ```no_run
/// # async fn demo(locks: spacelock_client::SpaceLock<redis::aio::ConnectionManager>) -> Result<(), spacelock_client::Error> {
/// use spacelock_client::{Outcome, Skipped};
/// match locks.with_space_lock("space-42", |_lease| async { 7 }).await? {
///     Outcome::Ran(n) => assert_eq!(n, 7),
///     Outcome::Skipped(Skipped::LockHeld) => {}
///     Outcome::Skipped(_) => {}
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[must_use = "the body may not have run: check for Outcome::Skipped"]
pub enum Outcome<T> {
    /// The lock was taken and the body ran; this is its output.
    Ran(T),
    /// The body did not run, for the reason given.
    Skipped(Skipped),
}

impl<T> Outcome<T> {
    /// The body's output, or `None` if it was skipped.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(locks: spacelock_client::SpaceLock<redis::aio::ConnectionManager>) -> Result<(), spacelock_client::Error> {
    /// let seven = locks.with_space_lock("space-42", |_lease| async { 7 }).await?.ran();
    /// assert!(seven.is_none() || seven == Some(7));
    /// # Ok(()) }
    /// ```
    pub fn ran(self) -> Option<T> {
        match self {
            Outcome::Ran(v) => Some(v),
            Outcome::Skipped(_) => None,
        }
    }

    /// Why the body was skipped, or `None` if it ran.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(locks: spacelock_client::SpaceLock<redis::aio::ConnectionManager>) -> Result<(), spacelock_client::Error> {
    /// let outcome = locks.with_space_lock("space-42", |_lease| async {}).await?;
    /// if let Some(why) = outcome.skipped() {
    ///     println!("skipped: {why}");
    /// }
    /// # Ok(()) }
    /// ```
    #[must_use]
    pub fn skipped(&self) -> Option<Skipped> {
        match self {
            Outcome::Ran(_) => None,
            Outcome::Skipped(s) => Some(*s),
        }
    }

    /// Whether the body ran.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(locks: spacelock_client::SpaceLock<redis::aio::ConnectionManager>) -> Result<(), spacelock_client::Error> {
    /// let outcome = locks.with_space_lock("space-42", |_lease| async {}).await?;
    /// println!("ran: {}", outcome.is_ran());
    /// # Ok(()) }
    /// ```
    #[must_use]
    pub fn is_ran(&self) -> bool {
        matches!(self, Outcome::Ran(_))
    }
}

/// Why a body did not run.
///
/// # Examples
///
/// ```no_run
/// # async fn demo(locks: spacelock_client::SpaceLock<redis::aio::ConnectionManager>) -> Result<(), spacelock_client::Error> {
/// use spacelock_client::{Outcome, Skipped};
/// let status = match locks.with_space_lock("space-42", |_lease| async {}).await? {
///     Outcome::Ran(()) => 200,
///     Outcome::Skipped(Skipped::LockHeld | Skipped::InProgress) => 503,
///     Outcome::Skipped(_) => 504,
/// };
/// # let _ = status;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Skipped {
    /// Another owner (another instance or process) holds the Redis lock.
    LockHeld,
    /// This `SpaceLock` (or a clone) is running a body for that name right
    /// now. (A call that finds a release of that name still in flight, after
    /// a cancelled call, waits for it instead.)
    InProgress,
    /// A blocking acquire waited its whole timeout without getting the lock.
    TimedOut,
    /// The lock was granted, but fewer than
    /// [`Options::replicas`](crate::Options::replicas) replicas acknowledged
    /// the grant within [`Options::ack_timeout`](crate::Options::ack_timeout)
    /// (a replica is down, lagging or disconnected). The body did not run,
    /// and the grant was released (owner-checked; if that release fails, the
    /// lock expires after its ttl).
    NotAcknowledged {
        /// How many replicas acknowledged the grant (what `WAIT` answered).
        acknowledged: usize,
        /// How many were required ([`Options::replicas`](crate::Options::replicas)).
        required: usize,
    },
}

impl std::fmt::Display for Skipped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Skipped::LockHeld => "lock-held",
            Skipped::InProgress => "in-progress",
            Skipped::TimedOut => "timed-out",
            Skipped::NotAcknowledged { .. } => "not-acknowledged",
        })
    }
}

/// Reply of [`SpaceLock::acquire`](crate::SpaceLock::acquire) and [`SpaceLock::acquire_wait`](crate::SpaceLock::acquire_wait).
///
/// # Examples
///
/// ```no_run
/// # async fn demo(locks: spacelock_client::SpaceLock<redis::aio::ConnectionManager>) -> Result<(), spacelock_client::Error> {
/// use spacelock_client::AcquireReply;
/// match locks.acquire("space-42").await? {
///     AcquireReply::Acquired { token } => println!("token {token}"),
///     AcquireReply::Held => println!("busy"),
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[must_use]
pub enum AcquireReply {
    /// The lock was granted with this fencing token.
    Acquired {
        /// The fencing token of the grant.
        token: u64,
    },
    /// Someone holds the lock (still, after the wait, for a blocking acquire).
    Held,
}

/// Reply of [`SpaceLock::refresh`](crate::SpaceLock::refresh).
///
/// # Examples
///
/// ```no_run
/// # async fn demo(locks: spacelock_client::SpaceLock<redis::aio::ConnectionManager>) -> Result<(), spacelock_client::Error> {
/// use spacelock_client::RefreshReply;
/// assert_eq!(locks.refresh("not-mine").await?, RefreshReply::NotOwner);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[must_use]
pub enum RefreshReply {
    /// The caller held the lock and its ttl was reset.
    Refreshed,
    /// The caller does not hold the lock (expired, deleted or re-owned).
    NotOwner,
}

/// Reply of [`SpaceLock::release`](crate::SpaceLock::release).
///
/// # Examples
///
/// ```no_run
/// # async fn demo(locks: spacelock_client::SpaceLock<redis::aio::ConnectionManager>) -> Result<(), spacelock_client::Error> {
/// use spacelock_client::ReleaseReply;
/// assert_eq!(locks.release("not-mine").await?, ReleaseReply::NotOwner);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[must_use]
pub enum ReleaseReply {
    /// The caller held the lock and it was deleted.
    Released,
    /// The caller does not hold the lock; nothing was changed.
    NotOwner,
}

/// Reply of [`SpaceLock::info`](crate::SpaceLock::info): the state of a held lock.
///
/// `owner`, `ttl` and `token` describe one holder: the only one of an
/// exclusive lock, the newest of a shared or counted one. Every holder is in
/// [`holders`](Self::holders).
///
/// # Examples
///
/// ```no_run
/// # async fn demo(locks: spacelock_client::SpaceLock<redis::aio::ConnectionManager>) -> Result<(), spacelock_client::Error> {
/// if let Some(info) = locks.info("space-42").await? {
///     println!("{} holds it, token {}, {:?} left", info.owner, info.token, info.ttl);
///     for h in &info.holders {
///         println!("  {:?}: {} (token {})", info.mode, h.owner, h.token);
///     }
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct LockInfo {
    /// The owner id stored in the lock, as UTF-8 (invalid bytes replaced by
    /// U+FFFD; owners written by this crate are always valid UTF-8).
    pub owner: String,
    /// The owner id exactly as stored (any bytes, NUL included).
    pub owner_bytes: Vec<u8>,
    /// The remaining time to live, `None` if the key has no expiry.
    pub ttl: Option<Duration>,
    /// The token of that holder's grant (exclusive: the last one issued for
    /// the key).
    pub token: u64,
    /// Clients blocked in `SPACELOCK.ACQUIRE … WAIT` on this key.
    pub waiters: u64,
    /// How the lock is held.
    pub mode: LockMode,
    /// Every live holder, oldest grant first (one for an exclusive lock).
    pub holders: Vec<HolderInfo>,
}

/// How a lock is held, in [`LockInfo::mode`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum LockMode {
    /// One holder ([`with_space_lock`](crate::SpaceLock::with_space_lock)).
    Exclusive,
    /// Readers ([`with_shared_lock`](crate::SpaceLock::with_shared_lock)).
    Shared,
    /// At most this many holders ([`Semaphore`](crate::Semaphore)).
    Limit(u32),
}

/// One holder of a lock, in [`LockInfo::holders`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct HolderInfo {
    /// The owner id as UTF-8 (invalid bytes replaced by U+FFFD).
    pub owner: String,
    /// The owner id exactly as stored.
    pub owner_bytes: Vec<u8>,
    /// This holder's remaining time to live, `None` if it has no expiry.
    pub ttl: Option<Duration>,
    /// This holder's token.
    pub token: u64,
}
