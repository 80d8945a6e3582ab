//! The primitives: one lock command each, with this `SpaceLock`'s owner,
//! ttl and prefix, for callers that manage leases themselves (no heartbeat).
//! They share the fault handling of the locked calls: their own deadlines,
//! retries after a dropped connection, and for the acquires the in-process
//! mutex and a release of whatever a failed attempt may have been granted.

use std::time::Duration;

use crate::conn::LockConnection;
use crate::guard::Guard;
use crate::options::check_name;
use crate::retry::Acquired;
use crate::{blocking_acquire, proto, retry};
use crate::{AcquireReply, Error, LockInfo, RefreshReply, ReleaseReply, SpaceLock};

impl<C: LockConnection> SpaceLock<C> {
    /// Sends `SPACELOCK.ACQUIRE` for `name` with this `SpaceLock`'s owner
    /// and ttl. Raw: no `WAIT` follows it, whatever
    /// [`Options::replicas`](crate::Options::replicas) says. No heartbeat: the caller manages the lease
    /// ([`refresh`](Self::refresh), [`release`](Self::release)). Returns
    /// `Held` without asking the server while this `SpaceLock` runs a call
    /// for `name`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`], [`Error::ModuleNotLoaded`],
    /// [`Error::Redis`] if the command fails, or [`Error::Timeout`] with no
    /// answer within [`Options::request_timeout`](crate::Options::request_timeout).
    /// After an error, nothing is held: an attempt that may have been granted
    /// was released first.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: if it is dropped after the command was sent, the lock is
    /// released by a task spawned on the runtime (owner-checked).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(locks: spacelock_client::SpaceLock<redis::aio::ConnectionManager>) -> Result<(), spacelock_client::Error> {
    /// use spacelock_client::AcquireReply;
    /// if let AcquireReply::Acquired { token } = locks.acquire("space-42").await? {
    ///     println!("token {token}");
    ///     let _ = locks.release("space-42").await?;
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn acquire(&self, name: &str) -> Result<AcquireReply, Error> {
        let s = &self.inner.settings;
        s.check(name)?;
        let key = self.key(name);
        let Some(claim) = self.inner.registry.claim(&key).await else {
            return Ok(AcquireReply::Held);
        };
        let owner = self.inner.settings.owner.clone();
        let mut guard = Guard::new(self.inner.clone(), key.clone(), owner, claim);
        let (ttl, timeout) = (s.ttl_ms, s.request_timeout());
        let reply = retry::acquire(
            &self.inner.conn,
            &key,
            &s.owner,
            &proto::acquire(&key, &s.owner, ttl, crate::Mode::Exclusive),
            timeout,
            s.release_budget(),
            None,
        )
        .await;
        guard.set_free();
        Ok(match reply? {
            Acquired::Granted(grant) => AcquireReply::Acquired { token: grant.token },
            Acquired::Held | Acquired::NotAcknowledged { .. } => AcquireReply::Held,
        })
    }

    /// Sends `SPACELOCK.ACQUIRE … WAIT` for `name` on a pooled dedicated
    /// connection (raw: no `WAIT` follows it, whatever
    /// [`Options::replicas`](crate::Options::replicas) says): waits on the server up to `timeout` for the lock, with the
    /// same defences as [`with_space_lock_wait`](Self::with_space_lock_wait)
    /// (a wait that ends without a grant is followed by an owner-checked
    /// release; no reply by `timeout` + [`Options::wait_grace`](crate::Options::wait_grace)
    /// is an error). Returns `Held` at once while this `SpaceLock` runs a
    /// call for `name`.
    ///
    /// That release assumes this owner does not hold `name` through another
    /// call at the same time: do not wait for a lock you already hold with
    /// [`acquire`](Self::acquire) (the wait would only end with your own
    /// lease anyway). A grant after a wait longer than the ttl may already
    /// have expired: refresh it at once before relying on it.
    ///
    /// # Errors
    ///
    /// [`Error::WaitNotConfigured`] without a
    /// [wait connector](Self::with_wait_connector), [`Error::InvalidArgument`],
    /// [`Error::ModuleNotLoaded`], [`Error::Timeout`], or [`Error::Redis`] if
    /// the command fails.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: if dropped, the dedicated connection is closed (the
    /// server takes the waiter out of its queue) and the lock is released by
    /// a task spawned on the runtime, in case it was granted just then.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(locks: spacelock_client::SpaceLock<redis::aio::ConnectionManager>) -> Result<(), spacelock_client::Error> {
    /// use std::time::Duration;
    /// let reply = locks.acquire_wait("space-42", Duration::from_millis(500)).await?;
    /// println!("{reply:?}");
    /// # Ok(()) }
    /// ```
    pub async fn acquire_wait(&self, name: &str, timeout: Duration) -> Result<AcquireReply, Error> {
        self.inner.settings.check(name)?;
        let pool = self.wait.clone().ok_or(Error::WaitNotConfigured)?;
        let key = self.key(name);
        let Some(claim) = self.inner.registry.claim(&key).await else {
            return Ok(AcquireReply::Held);
        };
        // The primitives write this `SpaceLock`'s own owner id, which the
        // caller's REFRESH and RELEASE name.
        let owner = self.inner.settings.owner.clone();
        let mut guard = Guard::new(self.inner.clone(), key.clone(), owner.clone(), claim);
        let reply = blocking_acquire::acquire_wait(
            &self.inner,
            &pool,
            &key,
            &owner,
            crate::Mode::Exclusive,
            timeout,
            None,
        )
        .await;
        guard.set_free();
        Ok(match reply? {
            Acquired::Granted(grant) => AcquireReply::Acquired { token: grant.token },
            Acquired::Held | Acquired::NotAcknowledged { .. } => AcquireReply::Held,
        })
    }

    /// Sends `SPACELOCK.REFRESH` for `name`: resets the ttl if this
    /// `SpaceLock`'s owner holds the lock (raw: no `WAIT` follows it). Retried after a dropped
    /// connection within [`Options::request_timeout`](crate::Options::request_timeout).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`], [`Error::ModuleNotLoaded`],
    /// [`Error::Redis`] if the command fails, or [`Error::Timeout`].
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a refresh that may or may not have been applied changes
    /// nothing but the ttl.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(locks: spacelock_client::SpaceLock<redis::aio::ConnectionManager>) -> Result<(), spacelock_client::Error> {
    /// use spacelock_client::RefreshReply;
    /// if locks.refresh("space-42").await? == RefreshReply::NotOwner {
    ///     eprintln!("lost it");
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn refresh(&self, name: &str) -> Result<RefreshReply, Error> {
        let s = &self.inner.settings;
        s.check(name)?;
        let cmd = proto::refresh(&self.key(name), &s.owner, s.ttl_ms);
        let value =
            retry::idempotent(&self.inner.conn, &cmd, proto::REFRESH, s.request_timeout()).await?;
        Ok(if proto::parse_flag(proto::REFRESH, value)? {
            RefreshReply::Refreshed
        } else {
            RefreshReply::NotOwner
        })
    }

    /// Sends `SPACELOCK.RELEASE` for `name`: deletes the lock if this
    /// `SpaceLock`'s owner holds it. It waits for the reply (a write pause
    /// holds it) and retries after a dropped connection, for up to
    /// [`Options::release_timeout`](crate::Options::release_timeout) (and no
    /// longer than the ttl). After a retry, `NotOwner` can also mean that the
    /// attempt whose reply was lost did the release.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] for an empty name, [`Error::ModuleNotLoaded`],
    /// [`Error::Redis`] if the command fails, or [`Error::Timeout`].
    ///
    /// # Cancel safety
    ///
    /// Cancel safe in the sense that retrying is harmless; a dropped call may
    /// or may not have released.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(locks: spacelock_client::SpaceLock<redis::aio::ConnectionManager>) -> Result<(), spacelock_client::Error> {
    /// let reply = locks.release("space-42").await?;
    /// println!("{reply:?}");
    /// # Ok(()) }
    /// ```
    pub async fn release(&self, name: &str) -> Result<ReleaseReply, Error> {
        check_name(name)?;
        let s = &self.inner.settings;
        retry::release(
            &self.inner.conn,
            &self.key(name),
            &s.owner,
            s.release_budget(),
        )
        .await
    }

    /// Sends `SPACELOCK.INFO` for `name`: `None` if the lock is free.
    /// Retried after a dropped connection within
    /// [`Options::request_timeout`](crate::Options::request_timeout).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] for an empty name, [`Error::ModuleNotLoaded`],
    /// [`Error::Redis`] if the command fails, [`Error::Timeout`], or
    /// [`Error::UnexpectedReply`].
    ///
    /// # Cancel safety
    ///
    /// Cancel safe (read only).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(locks: spacelock_client::SpaceLock<redis::aio::ConnectionManager>) -> Result<(), spacelock_client::Error> {
    /// if let Some(info) = locks.info("space-42").await? {
    ///     println!("held by {} with token {}", info.owner, info.token);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn info(&self, name: &str) -> Result<Option<LockInfo>, Error> {
        check_name(name)?;
        let s = &self.inner.settings;
        let cmd = proto::info(&self.key(name));
        let value =
            retry::idempotent(&self.inner.conn, &cmd, proto::INFO, s.request_timeout()).await?;
        proto::parse_info(value)
    }
}
