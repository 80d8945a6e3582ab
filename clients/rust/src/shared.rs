//! Shared (read) leases and counting semaphores: the same locked call as an
//! exclusive lease (in-process mutex, heartbeat, release on every path,
//! replica acknowledgements), with `SHARED` or `LIMIT n` on its ACQUIRE.
//! REFRESH, RELEASE and CHECK act on this owner's own share, so the
//! heartbeat, the guard and [`Lease::check`] need nothing else.

use std::future::Future;
use std::time::Duration;

use crate::conn::LockConnection;
use crate::{Error, Lease, Outcome, SpaceLock};

/// The most permits a [`Semaphore`] may have (the module's `LIMIT` bound).
const MAX_PERMITS: u32 = 1_000_000;

/// How an ACQUIRE asks for a lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Mode {
    /// The only holder (no mode word).
    Exclusive,
    /// One of many readers (`SHARED`).
    Shared,
    /// One of at most n holders (`LIMIT n`).
    Limit(u32),
}

impl<C: LockConnection> SpaceLock<C> {
    /// Runs `f` while holding a shared (read) lease on the lock called
    /// `name`: any number of owners hold it together, and an exclusive
    /// holder ([`with_space_lock`](Self::with_space_lock)) excludes them all.
    ///
    /// Everything else is as for [`with_space_lock`](Self::with_space_lock):
    /// `Skipped(InProgress)` while this `SpaceLock` runs a call for `name`
    /// (one `SpaceLock` holds at most one share of a name: its owner id is
    /// the holder), `Skipped(LockHeld)` when a writer holds the lock or
    /// clients are queued on it with WAIT (nobody barges past them, so a
    /// waiting writer is not starved by readers), the heartbeat refreshes
    /// this share alone, [`Lease::token`] is this grant's fencing token,
    /// and the share is released when `f` returns, panics or is dropped.
    ///
    /// # Errors
    ///
    /// As [`with_space_lock`](Self::with_space_lock), plus
    /// [`Error::WrongMode`] if `name` is used as a [`Semaphore`]
    /// (nothing ran).
    ///
    /// # Cancel safety
    ///
    /// As [`with_space_lock`](Self::with_space_lock): dropping the future
    /// stops the heartbeat and releases this share in the background.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime. Panics from `f` are propagated after release.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(locks: spacelock_client::SpaceLock<redis::aio::ConnectionManager>) -> Result<(), spacelock_client::Error> {
    /// use spacelock_client::{Outcome, Skipped};
    /// // Readers of a space's git cache, while no sync rewrites it.
    /// match locks
    ///     .with_shared_lock("space-42", |lease| async move { lease.token() })
    ///     .await?
    /// {
    ///     Outcome::Ran(token) => println!("read under token {token}"),
    ///     Outcome::Skipped(Skipped::LockHeld) => println!("a sync is running (or queued)"),
    ///     Outcome::Skipped(why) => println!("skipped: {why}"),
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn with_shared_lock<F, Fut, T>(&self, name: &str, f: F) -> Result<Outcome<T>, Error>
    where
        F: FnOnce(Lease) -> Fut,
        Fut: Future<Output = T>,
    {
        self.run_locked(name, None, Mode::Shared, f).await
    }

    /// Like [`with_shared_lock`](Self::with_shared_lock), but waits up to
    /// `timeout` on the server (`SPACELOCK.ACQUIRE … SHARED WAIT ms`) in the
    /// key's FIFO queue: readers at its head are granted together, and a
    /// reader queued behind a writer waits for that writer's turn. Returns
    /// `Skipped(TimedOut)` if no share came in time. The wait has the
    /// defences of [`with_space_lock_wait`](Self::with_space_lock_wait).
    ///
    /// # Errors
    ///
    /// As [`with_space_lock_wait`](Self::with_space_lock_wait), plus
    /// [`Error::WrongMode`] if `name` is used as a [`Semaphore`].
    ///
    /// # Cancel safety
    ///
    /// As [`with_space_lock_wait`](Self::with_space_lock_wait).
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime. Panics from `f` are propagated after release.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(locks: spacelock_client::SpaceLock<redis::aio::ConnectionManager>) -> Result<(), spacelock_client::Error> {
    /// use std::time::Duration;
    /// let outcome = locks
    ///     .with_shared_lock_wait("space-42", Duration::from_secs(5), |lease| async move {
    ///         lease.token()
    ///     })
    ///     .await?;
    /// println!("{outcome:?}");
    /// # Ok(()) }
    /// ```
    pub async fn with_shared_lock_wait<F, Fut, T>(
        &self,
        name: &str,
        timeout: Duration,
        f: F,
    ) -> Result<Outcome<T>, Error>
    where
        F: FnOnce(Lease) -> Fut,
        Fut: Future<Output = T>,
    {
        self.run_locked(name, Some(timeout), Mode::Shared, f).await
    }
}

/// A counting semaphore: at most `permits` owners hold the name at once
/// (`SPACELOCK.ACQUIRE key owner ttl LIMIT n`), each with its own lease,
/// fencing token and heartbeat.
///
/// A permit is one [`SpaceLock`]'s: its owner id is the holder, so one
/// `SpaceLock` (and its clones) holds at most one permit of a name at a
/// time, and a second concurrent call gets `Skipped(InProgress)`. Give each
/// worker that needs its own permit its own `SpaceLock` (they may share a
/// connection). Every user of the name must ask for the same number of
/// permits: another number is [`Error::WrongMode`], as is a name used as a
/// reader-writer lock.
///
/// # Examples
///
/// ```no_run
/// # async fn demo(locks: spacelock_client::SpaceLock<redis::aio::ConnectionManager>) -> Result<(), spacelock_client::Error> {
/// use spacelock_client::{Outcome, Semaphore};
/// // N clone slots per host.
/// let slots = Semaphore::new(locks, "clone-slots:host-1", 4)?;
/// match slots.with_permit(|lease| async move { lease.token() }).await? {
///     Outcome::Ran(token) => println!("cloned under token {token}"),
///     Outcome::Skipped(why) => println!("no free slot: {why}"),
/// }
/// # Ok(()) }
/// ```
pub struct Semaphore<C> {
    locks: SpaceLock<C>,
    name: String,
    permits: u32,
}

impl<C> Clone for Semaphore<C> {
    fn clone(&self) -> Self {
        Semaphore {
            locks: self.locks.clone(),
            name: self.name.clone(),
            permits: self.permits,
        }
    }
}

impl<C> std::fmt::Debug for Semaphore<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Semaphore")
            .field("name", &self.name)
            .field("permits", &self.permits)
            .field("locks", &self.locks)
            .finish()
    }
}

impl<C: LockConnection> Semaphore<C> {
    /// A semaphore of `permits` permits on the lock called `name`, taken
    /// with `locks`' owner, ttl, prefix, acknowledgements and wait pool.
    /// Nothing is sent to the server.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] for an empty `name`, a ttl below
    /// [`MIN_TTL`](crate::MIN_TTL), or `permits` outside 1 to 1 000 000.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(locks: spacelock_client::SpaceLock<redis::aio::ConnectionManager>) -> Result<(), spacelock_client::Error> {
    /// let builds = spacelock_client::Semaphore::new(locks, "builds:space-42", 2)?;
    /// assert_eq!(builds.permits(), 2);
    /// # Ok(()) }
    /// ```
    pub fn new(locks: SpaceLock<C>, name: impl Into<String>, permits: u32) -> Result<Self, Error> {
        let name = name.into();
        locks.inner.settings.check(&name)?;
        if !(1..=MAX_PERMITS).contains(&permits) {
            return Err(Error::InvalidArgument {
                reason: format!("permits must be from 1 to {MAX_PERMITS}, not {permits}"),
            });
        }
        Ok(Semaphore {
            locks,
            name,
            permits,
        })
    }

    /// The lock name.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # fn demo(slots: spacelock_client::Semaphore<redis::aio::ConnectionManager>) {
    /// println!("{} permits of {}", slots.permits(), slots.name());
    /// # }
    /// ```
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// How many owners may hold the name at once.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # fn demo(slots: spacelock_client::Semaphore<redis::aio::ConnectionManager>) {
    /// assert!(slots.permits() >= 1);
    /// # }
    /// ```
    #[must_use]
    pub fn permits(&self) -> u32 {
        self.permits
    }

    /// The [`SpaceLock`] whose owner holds the permits.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # fn demo(slots: spacelock_client::Semaphore<redis::aio::ConnectionManager>) {
    /// println!("permits held as {}", slots.locks().owner());
    /// # }
    /// ```
    #[must_use]
    pub fn locks(&self) -> &SpaceLock<C> {
        &self.locks
    }

    /// Runs `f` while holding one permit, as
    /// [`SpaceLock::with_space_lock`] runs it under an exclusive lease:
    /// `Skipped(LockHeld)` when all permits are held or clients are queued
    /// for one, `Skipped(InProgress)` while this `SpaceLock` runs a call for
    /// the name, a heartbeat for this permit alone, and the permit given
    /// back when `f` returns, panics or is dropped. A permit whose lease
    /// ends (lost) counts no more on the server at once.
    ///
    /// # Errors
    ///
    /// As [`SpaceLock::with_space_lock`], plus [`Error::WrongMode`] if the
    /// name is a reader-writer lock or a semaphore of another size.
    ///
    /// # Cancel safety
    ///
    /// As [`SpaceLock::with_space_lock`]: dropping the future releases the
    /// permit in the background.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime. Panics from `f` are propagated after release.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(slots: spacelock_client::Semaphore<redis::aio::ConnectionManager>) -> Result<(), spacelock_client::Error> {
    /// if let Some(token) = slots.with_permit(|lease| async move { lease.token() }).await?.ran() {
    ///     println!("held a permit under token {token}");
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn with_permit<F, Fut, T>(&self, f: F) -> Result<Outcome<T>, Error>
    where
        F: FnOnce(Lease) -> Fut,
        Fut: Future<Output = T>,
    {
        let mode = Mode::Limit(self.permits);
        self.locks.run_locked(&self.name, None, mode, f).await
    }

    /// Like [`with_permit`](Self::with_permit), but waits up to `timeout`
    /// on the server for a permit (`… LIMIT n WAIT ms`): permits are handed
    /// out in arrival order as they come back. Returns `Skipped(TimedOut)`
    /// if none came in time. The wait has the defences of
    /// [`SpaceLock::with_space_lock_wait`].
    ///
    /// # Errors
    ///
    /// As [`SpaceLock::with_space_lock_wait`] (so
    /// [`Error::WaitNotConfigured`] without a wait connector), plus
    /// [`Error::WrongMode`] as for [`with_permit`](Self::with_permit).
    ///
    /// # Cancel safety
    ///
    /// As [`SpaceLock::with_space_lock_wait`].
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime. Panics from `f` are propagated after release.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(slots: spacelock_client::Semaphore<redis::aio::ConnectionManager>) -> Result<(), spacelock_client::Error> {
    /// use std::time::Duration;
    /// let outcome = slots
    ///     .with_permit_wait(Duration::from_secs(30), |_lease| async { /* clone */ })
    ///     .await?;
    /// println!("{outcome:?}");
    /// # Ok(()) }
    /// ```
    pub async fn with_permit_wait<F, Fut, T>(
        &self,
        timeout: Duration,
        f: F,
    ) -> Result<Outcome<T>, Error>
    where
        F: FnOnce(Lease) -> Fut,
        Fut: Future<Output = T>,
    {
        let mode = Mode::Limit(self.permits);
        self.locks
            .run_locked(&self.name, Some(timeout), mode, f)
            .await
    }
}
