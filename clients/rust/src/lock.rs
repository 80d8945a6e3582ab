//! [`SpaceLock`]: the in-process mutex, the Redis lease, the heartbeat and
//! the release on every path, put together. (The primitives, one command
//! each, are in `primitives.rs`.)

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use tokio::time::Instant;

use crate::blocking_acquire;
use crate::conn::{LockConnection, WaitConnector, WaitPool};
use crate::guard::Guard;
use crate::heartbeat::Heartbeat;
use crate::inner::Inner;
use crate::lease::{LeaseInner, LostSignal, ValidUntil};
use crate::options::{after, Settings};
use crate::proto;
use crate::retry::{self, Acquired, Confirmed, Grant};
use crate::{Error, Lease, Mode, Options, Outcome, Skipped};

/// Per-name lease locks over Redis: the existing Lua-based service's
/// `SpaceLockService`, in Rust.
///
/// A `SpaceLock` combines an in-process mutex (one body per name at a time in
/// this instance) with a lease in Redis (one holder per name across
/// instances), kept alive by a heartbeat while the body runs and released on
/// every exit path. It is cheap to clone; clones share the owner id, the
/// in-process mutex and the heartbeat.
///
/// All leases of one `SpaceLock` are refreshed by a single background task
/// (started on first use): the refreshes that fall due together go out as one
/// pipeline over the shared connection (one per hash slot on a cluster).
///
/// # Examples
///
/// ```no_run
/// use std::time::Duration;
/// use spacelock_client::{Options, Outcome, Skipped, SpaceLock};
///
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let redis = redis::Client::open("redis://127.0.0.1:6379/")?;
/// let options = Options::default()
///     .ttl(Duration::from_secs(30))
///     .key_prefix("git-sync:lock:");
/// let config = redis::aio::ConnectionManagerConfig::new()
///     .set_response_timeout(None)
///     .set_max_delay(Duration::from_millis(500));
/// let conn = redis::aio::ConnectionManager::new_with_config(redis, config).await?;
/// let locks = SpaceLock::new(conn, options);
/// match locks
///     .with_space_lock("space-42", |lease| async move { lease.token() })
///     .await?
/// {
///     Outcome::Ran(token) => println!("synced under token {token}"),
///     Outcome::Skipped(Skipped::LockHeld) => println!("another instance is syncing"),
///     Outcome::Skipped(why) => println!("skipped: {why}"),
/// }
/// # Ok(()) }
/// ```
pub struct SpaceLock<C> {
    pub(crate) inner: Arc<Inner<C>>,
    pub(crate) wait: Option<Arc<WaitPool>>,
}

impl<C> Clone for SpaceLock<C> {
    fn clone(&self) -> Self {
        SpaceLock {
            inner: self.inner.clone(),
            wait: self.wait.clone(),
        }
    }
}

impl<C> std::fmt::Debug for SpaceLock<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpaceLock")
            .field("settings", &self.inner.settings)
            .field("wait_pool", &self.wait.is_some())
            .finish_non_exhaustive()
    }
}

impl<C: LockConnection> SpaceLock<C> {
    /// Creates a `SpaceLock` over a connection. Its owner id is
    /// `options`' owner if set, else a fresh UUID v4.
    ///
    /// Nothing is sent to the server until the first lock call. See
    /// [`LockConnection`] for which connections reconnect.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// use spacelock_client::{Options, SpaceLock};
    /// let client = redis::Client::open("redis://127.0.0.1/")?;
    /// // The client puts its own deadline on every command: no response
    /// // timeout on the connection lets a write pause end normally.
    /// // A capped reconnect backoff: the first call after a restart gets through.
    /// let config = redis::aio::ConnectionManagerConfig::new()
    ///     .set_response_timeout(None)
    ///     .set_max_delay(std::time::Duration::from_millis(500));
    /// let manager = redis::aio::ConnectionManager::new_with_config(client, config).await?;
    /// let locks = SpaceLock::new(manager, Options::default());
    /// println!("owner id {}", locks.owner());
    /// # Ok(()) }
    /// ```
    #[must_use]
    pub fn new(conn: C, options: Options) -> Self {
        let settings = options.resolve();
        SpaceLock {
            inner: Arc::new(Inner {
                conn,
                heartbeat: Heartbeat::new(settings.ack()),
                settings,
                registry: Arc::default(),
                calls: std::sync::atomic::AtomicU64::new(0),
            }),
            wait: None,
        }
    }

    /// Gives this `SpaceLock` a source of dedicated connections for blocking
    /// acquires ([`with_space_lock_wait`](Self::with_space_lock_wait),
    /// [`acquire_wait`](Self::acquire_wait)), pooled up to
    /// [`Options::wait_connections`]. Clones made after this call share the
    /// pool; clones made before do not get it. Without one, blocking
    /// acquires fail with [`Error::WaitNotConfigured`].
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// use spacelock_client::{Options, SpaceLock};
    /// let client = redis::Client::open("redis://127.0.0.1/")?;
    /// let manager = redis::aio::ConnectionManager::new(client.clone()).await?;
    /// let locks = SpaceLock::new(manager, Options::default()).with_wait_connector(client);
    /// # let _ = locks;
    /// # Ok(()) }
    /// ```
    #[must_use]
    pub fn with_wait_connector(mut self, connector: impl WaitConnector) -> Self {
        self.wait = Some(Arc::new(WaitPool::new(
            Box::new(connector),
            self.inner.settings.wait_connections(),
        )));
        self
    }

    /// The owner id this `SpaceLock` writes into its locks. The locked
    /// calls (`with_space_lock`, `with_shared_lock`, a `Semaphore`'s
    /// permits) hold each grant under `{owner}:{n}`, `n` counting this
    /// `SpaceLock`'s calls ([`Lease::owner`](crate::Lease::owner)), so that
    /// a release one call sends late can never end a later call's grant of
    /// the same name; the primitives ([`acquire`](Self::acquire) and the
    /// rest) write the owner id itself.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(locks: spacelock_client::SpaceLock<redis::aio::ConnectionManager>) {
    /// println!("this process writes {} into its locks", locks.owner());
    /// # }
    /// ```
    #[must_use]
    pub fn owner(&self) -> &str {
        self.inner.settings.owner()
    }

    /// The settings this `SpaceLock` runs with (its [`Options`], resolved).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(locks: spacelock_client::SpaceLock<redis::aio::ConnectionManager>) {
    /// println!("ttl {:?}", locks.settings().ttl());
    /// # }
    /// ```
    #[must_use]
    pub fn settings(&self) -> &Settings {
        &self.inner.settings
    }

    /// The Redis key of the lock called `name`: the key prefix, then `name`.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(locks: spacelock_client::SpaceLock<redis::aio::ConnectionManager>) {
    /// assert_eq!(locks.key("space-42"), "spacelock:lock:space-42");
    /// # }
    /// ```
    #[must_use]
    pub fn key(&self, name: &str) -> String {
        format!("{}{}", self.inner.settings.key_prefix(), name)
    }

    /// Whether this `SpaceLock` (or a clone) is running a call for `name`
    /// right now: acquiring, running the body, or releasing after it. (Not
    /// while a cancelled call's release runs in the background: a new call
    /// waits for that release instead of being told `InProgress`.)
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(locks: spacelock_client::SpaceLock<redis::aio::ConnectionManager>) {
    /// if locks.is_running("space-42") {
    ///     println!("a sync of space-42 is in progress here");
    /// }
    /// # }
    /// ```
    #[must_use]
    pub fn is_running(&self, name: &str) -> bool {
        self.inner.registry.is_running(&self.key(name))
    }

    /// How many leases the heartbeat is refreshing right now.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(locks: spacelock_client::SpaceLock<redis::aio::ConnectionManager>) {
    /// println!("{} leases held", locks.active_leases());
    /// # }
    /// ```
    #[must_use]
    pub fn active_leases(&self) -> usize {
        self.inner.heartbeat.active()
    }

    /// Waits until the releases that cancelled calls left running in the
    /// background have finished (each is bounded by
    /// [`Options::release_timeout`]). Call it before the runtime shuts down,
    /// e.g. at the end of `main`, so that no lock stays held for its ttl.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only waits.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(locks: spacelock_client::SpaceLock<redis::aio::ConnectionManager>) {
    /// // ... calls that may have been cancelled ...
    /// locks.settle().await;
    /// # }
    /// ```
    pub async fn settle(&self) {
        self.inner.registry.settle().await;
    }

    /// Runs `f` while holding the lock called `name`, as the existing
    /// service's `withSpaceLock(spaceId, fn)`.
    ///
    /// 1. If this `SpaceLock` is already running a call for `name`, returns
    ///    `Skipped(InProgress)` at once, without touching Redis (the check and
    ///    the claim are one atomic step).
    /// 2. Sends `SPACELOCK.ACQUIRE`; if another owner holds the lock, returns
    ///    `Skipped(LockHeld)`. After a dropped connection it is sent again on
    ///    a fresh one (having first released, owner-checked, what the lost
    ///    attempt may have been granted), within [`Options::request_timeout`].
    ///    With [`Options::replicas`] `n` ≥ 1, the ACQUIRE is followed by
    ///    `WAIT n` on the same connection; if fewer than `n` replicas
    ///    acknowledge the grant within [`Options::ack_timeout`], it is
    ///    released and the call returns `Skipped(NotAcknowledged)`: `f` never
    ///    starts on a grant the replicas do not have.
    /// 3. Calls `f` with a [`Lease`] while the heartbeat refreshes the lock
    ///    every `ttl/3` (each refresh acknowledged like the grant, when
    ///    [`Options::replicas`] is set: only an acknowledged refresh moves the
    ///    lease's deadline). The lease counts from when the ACQUIRE was sent (the
    ///    server granted no earlier); a grant that arrives too late for that
    ///    (a write pause held the ACQUIRE) is first confirmed with a REFRESH.
    ///    If the lease is lost, `f` is told through the lease, or dropped when
    ///    [`Options::cancel_on_lost`] is set.
    /// 4. Releases the lock when `f` returns, and returns `Ran(output)`. A
    ///    release that fails within [`Options::release_timeout`] is logged at
    ///    warn level and shows as [`LostReason::ReleaseFailed`](crate::LostReason::ReleaseFailed)
    ///    on the lease; it does not change the result.
    ///
    /// If `f` panics, the lock is released and then the panic resumes.
    ///
    /// # Errors
    ///
    /// * [`Error::InvalidArgument`] for an empty `name` or a ttl below
    ///   [`MIN_TTL`](crate::MIN_TTL); nothing is sent.
    /// * [`Error::ModuleNotLoaded`] if the server has no spacelock module.
    /// * [`Error::Redis`] or [`Error::Timeout`] if the acquire failed for
    ///   good (error reply; or no answer within [`Options::request_timeout`]).
    ///   Nothing ran, and a lock the failed attempts may have been granted
    ///   has been released (owner-checked) before the error is returned, so
    ///   a retry right away behaves like a first call.
    /// * [`Error::LockLost`] if the lease was lost while `f` ran and
    ///   [`Options::cancel_on_lost`] is set; `f` was dropped.
    /// * [`Error::InvalidArgument`] for an [`Options::ack_timeout`] that is
    ///   zero or not below the ttl; [`Error::WaitAofUnavailable`] with
    ///   [`Options::wait_aof`] on a server without `WAITAOF` or with
    ///   `appendonly no` (the grant was released; nothing ran).
    ///
    /// Errors from `f` itself are part of its output, inside `Ran`.
    ///
    /// # Cancel safety
    ///
    /// Dropping the returned future at any point is safe: the heartbeat
    /// stops, the body is dropped, and the lock is released by a task spawned
    /// on the runtime. Until that release has finished, a new call for the
    /// same name waits for it (it is not told `InProgress`); [`settle`](Self::settle)
    /// waits for all of them.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime. Panics from `f` are propagated after release.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(locks: spacelock_client::SpaceLock<redis::aio::ConnectionManager>) -> Result<(), spacelock_client::Error> {
    /// use spacelock_client::Outcome;
    /// let outcome = locks
    ///     .with_space_lock("space-42", |lease| async move {
    ///         // write to the protected resource, passing lease.token()
    ///         Ok::<_, std::io::Error>(lease.token())
    ///     })
    ///     .await?;
    /// if let Outcome::Ran(Err(e)) = outcome {
    ///     eprintln!("the sync failed (the lock was released anyway): {e}");
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn with_space_lock<F, Fut, T>(&self, name: &str, f: F) -> Result<Outcome<T>, Error>
    where
        F: FnOnce(Lease) -> Fut,
        Fut: Future<Output = T>,
    {
        self.run_locked(name, None, Mode::Exclusive, f).await
    }

    /// Like [`with_space_lock`](Self::with_space_lock), but when another
    /// owner holds the lock, waits up to `timeout` for it on the server
    /// (`SPACELOCK.ACQUIRE key owner ttl WAIT timeout_ms`), without polling.
    /// Returns `Skipped(TimedOut)` if the lock did not come free in time.
    ///
    /// The wait runs on a dedicated connection from the pool set up by
    /// [`with_wait_connector`](Self::with_wait_connector), never on the
    /// shared connection that carries the heartbeats. Waiting for a free
    /// pool connection counts against `timeout`; if none can be had in time,
    /// one plain ACQUIRE decides. A stale pooled connection (after a restart
    /// or an idle timeout) is replaced and the wait sent again. A wait longer
    /// than the ttl keeps its whole lease: the grant is confirmed with a
    /// REFRESH before the body starts.
    ///
    /// With [`Options::replicas`] set, a grant (also one the server hands
    /// over from its wait queue when the holder releases) is followed by
    /// `WAIT` on the dedicated connection that got it, as in
    /// [`with_space_lock`](Self::with_space_lock); too few acknowledgements
    /// give `Skipped(NotAcknowledged)`.
    ///
    /// Whenever the wait ends without a grant (nil, an error, or no reply by
    /// `timeout` + [`Options::wait_grace`]), an owner-checked
    /// `SPACELOCK.RELEASE` of the key is sent before the call returns (after
    /// a nil, which grants nothing, it is awaited at most 250 ms).
    ///
    /// # Errors
    ///
    /// As [`with_space_lock`](Self::with_space_lock), plus
    /// [`Error::WaitNotConfigured`] without a wait connector,
    /// [`Error::Timeout`] if the server did not answer by `timeout` +
    /// [`Options::wait_grace`], [`Error::Redis`] if no pool connection can
    /// be opened (and the lock is not free right now), and
    /// [`Error::LockLost`] if the grant had already expired when it was
    /// confirmed (this process was stopped, or the server paused, for longer
    /// than the ttl after granting it).
    ///
    /// # Cancel safety
    ///
    /// As [`with_space_lock`](Self::with_space_lock). If it is dropped while
    /// waiting, the dedicated connection is closed at once (the server takes
    /// the waiter out of its queue) and the lock is released in the
    /// background in case it was granted just then.
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
    /// use spacelock_client::{Outcome, Skipped};
    /// match locks
    ///     .with_space_lock_wait("space-42", Duration::from_secs(2), |lease| async move { lease.token() })
    ///     .await?
    /// {
    ///     Outcome::Ran(token) => println!("ran under token {token}"),
    ///     Outcome::Skipped(Skipped::TimedOut) => println!("still held after 2 s"),
    ///     Outcome::Skipped(other) => println!("skipped: {other}"),
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn with_space_lock_wait<F, Fut, T>(
        &self,
        name: &str,
        timeout: Duration,
        f: F,
    ) -> Result<Outcome<T>, Error>
    where
        F: FnOnce(Lease) -> Fut,
        Fut: Future<Output = T>,
    {
        self.run_locked(name, Some(timeout), Mode::Exclusive, f)
            .await
    }

    /// The locked call of every mode: claim, acquire (waiting or not),
    /// confirm, heartbeat, body, release.
    pub(crate) async fn run_locked<F, Fut, T>(
        &self,
        name: &str,
        wait: Option<Duration>,
        mode: Mode,
        f: F,
    ) -> Result<Outcome<T>, Error>
    where
        F: FnOnce(Lease) -> Fut,
        Fut: Future<Output = T>,
    {
        let inner = &self.inner;
        let s = &inner.settings;
        s.check(name)?;
        let pool = match wait {
            Some(_) => Some(self.wait.clone().ok_or(Error::WaitNotConfigured)?),
            None => None,
        };
        let key = self.key(name);
        let Some(claim) = inner.registry.claim(&key).await else {
            return Ok(Outcome::Skipped(Skipped::InProgress));
        };
        let owner = inner.call_owner();
        let mut guard = Guard::new(inner.clone(), key.clone(), owner.clone(), claim);
        let ack = s.ack();
        let reply = match (wait, &pool) {
            (Some(timeout), Some(pool)) => {
                blocking_acquire::acquire_wait(
                    inner,
                    pool,
                    &key,
                    &owner,
                    mode,
                    timeout,
                    ack.as_ref(),
                )
                .await
            }
            _ => {
                let (ttl, timeout) = (s.ttl_ms, s.request_timeout());
                retry::acquire(
                    &inner.conn,
                    &key,
                    &owner,
                    &proto::acquire(&key, &owner, ttl, mode),
                    timeout,
                    s.release_budget(),
                    ack.as_ref(),
                )
                .await
            }
        };
        let not_acknowledged = |acknowledged| {
            Outcome::Skipped(Skipped::NotAcknowledged {
                acknowledged,
                required: s.replicas(),
            })
        };
        let grant = match reply {
            Ok(Acquired::Granted(grant)) => grant,
            Ok(Acquired::Held) => {
                guard.set_free();
                let why = if wait.is_some() {
                    Skipped::TimedOut
                } else {
                    Skipped::LockHeld
                };
                return Ok(Outcome::Skipped(why));
            }
            Ok(Acquired::NotAcknowledged { acknowledged }) => {
                // The acquire has already released the grant.
                guard.set_free();
                return Ok(not_acknowledged(acknowledged));
            }
            Err(e) => {
                // The acquire has already released what it may have been granted.
                guard.set_free();
                return Err(e);
            }
        };
        let start = match self.lease_start(&key, &owner, grant).await {
            Ok(Confirmed::From(start)) => start,
            Ok(Confirmed::Gone) => {
                guard.set_free();
                tracing::warn!(key = %key, "spacelock: the grant expired before it could be confirmed");
                return Err(Error::LockLost { key });
            }
            Ok(Confirmed::NotAcknowledged { acknowledged }) => {
                tracing::warn!(key = %key, "spacelock: too few replicas acknowledged the refresh that confirmed a late grant; releasing it");
                guard.finish().await;
                return Ok(not_acknowledged(acknowledged));
            }
            Err(e) => {
                guard.finish().await;
                return Err(e);
            }
        };

        let lost = LostSignal::new();
        let valid_until = ValidUntil::new(start, s.ttl());
        let id = inner.heartbeat.register(
            &inner.conn,
            &owner,
            &key,
            s.ttl_ms,
            lost.clone(),
            valid_until.clone(),
        );
        guard.attach(id, lost.clone(), valid_until.clone());
        let checker: crate::lease::Checker = {
            let (conn, key, owner) = (inner.conn.clone(), key.clone(), owner.clone());
            let (token, timeout) = (grant.token, s.request_timeout());
            Arc::new(move || {
                let (conn, cmd) = (conn.clone(), proto::check_grant(&key, &owner, token));
                Box::pin(async move {
                    let reply = retry::idempotent(&conn, &cmd, proto::CHECK, timeout).await?;
                    proto::parse_flag(proto::CHECK, reply)
                })
            })
        };
        let lease = Lease::new(LeaseInner {
            name: name.to_string(),
            key: key.clone(),
            owner,
            token: grant.token,
            ttl: s.ttl(),
            lost: lost.clone(),
            valid_until,
            checker,
        });

        let body = AssertUnwindSafe(async move { f(lease).await }).catch_unwind();
        let result: Option<Result<T, Box<dyn Any + Send>>> = if s.cancel_on_lost() {
            tokio::select! {
                biased;
                r = body => Some(r),
                () = lost.cancelled() => None,
            }
        } else {
            Some(body.await)
        };

        guard.finish().await;
        match result {
            Some(Ok(value)) => Ok(Outcome::Ran(value)),
            Some(Err(panic)) => std::panic::resume_unwind(panic),
            None => Err(Error::LockLost { key }),
        }
    }

    /// When a new lease counts from: when its ACQUIRE was sent (the server
    /// granted no earlier), unless the reply came so late that the first
    /// refresh is already due (a long wait, a write pause, a stopped
    /// process, a slow acknowledgement). Then a REFRESH (acknowledged like
    /// the grant) confirms the grant first and the lease counts from that
    /// refresh.
    async fn lease_start(&self, key: &str, owner: &str, grant: Grant) -> Result<Confirmed, Error> {
        let s = &self.inner.settings;
        if Instant::now() < after(grant.sent, s.interval()) {
            return Ok(Confirmed::From(grant.sent));
        }
        tracing::debug!(key = %key, "spacelock: late grant; confirming it with a refresh");
        let ack = s.ack();
        retry::confirm(
            &self.inner.conn,
            key,
            owner,
            s.ttl_ms,
            s.ttl(),
            ack.as_ref(),
        )
        .await
    }
}
