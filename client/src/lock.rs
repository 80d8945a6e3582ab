//! [`SpaceLock`]: the in-process mutex, the Redis lease, the heartbeat and
//! the release on every path.

use std::any::Any;
use std::collections::HashSet;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::FutureExt;
use redis::{Cmd, FromRedisValue, Value};
use tokio::runtime::Handle;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::conn::{LockConnection, WaitConnector, WaitPool};
use crate::heartbeat::Heartbeat;
use crate::lease::{LostReason, LostSignal, ValidUntil};
use crate::options::{millis_ceil, Options};
use crate::{Error, Lease};

/// How long past its WAIT timeout a blocking acquire may take before the
/// client gives up on the reply and drops the connection.
const WAIT_GRACE: Duration = Duration::from_secs(5);

/// What [`SpaceLock::with_space_lock`] did.
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
    /// This `SpaceLock` is already running a body for that name.
    InProgress,
    /// A blocking acquire waited its whole timeout without getting the lock.
    TimedOut,
}

impl std::fmt::Display for Skipped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Skipped::LockHeld => "lock-held",
            Skipped::InProgress => "in-progress",
            Skipped::TimedOut => "timed-out",
        })
    }
}

/// Reply of [`SpaceLock::acquire`] and [`SpaceLock::acquire_wait`].
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

/// Reply of [`SpaceLock::refresh`].
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

/// Reply of [`SpaceLock::release`].
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

/// Reply of [`SpaceLock::info`]: the state of a held lock.
///
/// # Examples
///
/// ```no_run
/// # async fn demo(locks: spacelock_client::SpaceLock<redis::aio::ConnectionManager>) -> Result<(), spacelock_client::Error> {
/// if let Some(info) = locks.info("space-42").await? {
///     println!("{} holds it, token {}, {:?} left", info.owner, info.token, info.ttl);
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockInfo {
    /// The owner id stored in the lock.
    pub owner: String,
    /// The remaining time to live, `None` if the key has no expiry.
    pub ttl: Option<Duration>,
    /// The token of the current grant (the last one issued for the key).
    pub token: u64,
    /// Clients blocked in `SPACELOCK.ACQUIRE … WAIT` on this key.
    pub waiters: u64,
}

/// Per-name lease locks over Redis: the seed's `SpaceLockService`.
///
/// A `SpaceLock` combines an in-process mutex (one body per name at a time in
/// this instance) with a lease in Redis (one holder per name across
/// instances), kept alive by a heartbeat while the body runs and released on
/// every exit path. It is cheap to clone; clones share the owner id, the
/// in-process mutex and the heartbeat.
///
/// All leases of one `SpaceLock` are refreshed by a single background task
/// (started on first use), which sends the due refreshes concurrently over the
/// shared connection.
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
/// let locks = SpaceLock::new(redis::aio::ConnectionManager::new(redis).await?, options);
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
    inner: Arc<Inner<C>>,
    wait: Option<Arc<WaitPool>>,
}

struct Inner<C> {
    conn: C,
    owner: Arc<str>,
    options: Options,
    ttl_ms: u64,
    running: Arc<Mutex<HashSet<String>>>,
    heartbeat: Heartbeat,
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
            .field("owner", &self.inner.owner)
            .field("options", &self.inner.options)
            .field("wait_pool", &self.wait.is_some())
            .finish_non_exhaustive()
    }
}

impl<C: LockConnection> SpaceLock<C> {
    /// Creates a `SpaceLock` over a connection. Its owner id is
    /// `options`' owner if set, else a fresh UUID v4.
    ///
    /// Nothing is sent to the server until the first lock call.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// use spacelock_client::{Options, SpaceLock};
    /// let client = redis::Client::open("redis://127.0.0.1/")?;
    /// let locks = SpaceLock::new(
    ///     redis::aio::ConnectionManager::new(client).await?,
    ///     Options::default(),
    /// );
    /// println!("owner id {}", locks.owner());
    /// # Ok(()) }
    /// ```
    pub fn new(conn: C, options: Options) -> Self {
        let owner: Arc<str> = match &options.owner {
            Some(o) => o.as_str().into(),
            None => uuid::Uuid::new_v4().to_string().into(),
        };
        let ttl_ms = millis_ceil(options.ttl);
        SpaceLock {
            inner: Arc::new(Inner {
                conn,
                owner,
                ttl_ms,
                options,
                running: Arc::new(Mutex::new(HashSet::new())),
                heartbeat: Heartbeat::new(),
            }),
            wait: None,
        }
    }

    /// Gives this `SpaceLock` a source of dedicated connections for blocking
    /// acquires ([`with_space_lock_wait`](Self::with_space_lock_wait),
    /// [`acquire_wait`](Self::acquire_wait)), pooled up to
    /// [`Options::wait_connections`]. Clones made after this call share the
    /// pool; clones made before do not get it.
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
    pub fn with_wait_connector(mut self, connector: impl WaitConnector) -> Self {
        self.wait = Some(Arc::new(WaitPool::new(
            Box::new(connector),
            self.inner.options.wait_connections,
        )));
        self
    }

    /// The owner id this `SpaceLock` writes into its locks.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(locks: spacelock_client::SpaceLock<redis::aio::ConnectionManager>) -> Result<(), spacelock_client::Error> {
    /// println!("this process writes {} into its locks", locks.owner());
    /// # Ok(()) }
    /// ```
    pub fn owner(&self) -> &str {
        &self.inner.owner
    }

    /// The options this `SpaceLock` was built with.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(locks: spacelock_client::SpaceLock<redis::aio::ConnectionManager>) -> Result<(), spacelock_client::Error> {
    /// println!("ttl {:?}", locks.options().get_ttl());
    /// # Ok(()) }
    /// ```
    pub fn options(&self) -> &Options {
        &self.inner.options
    }

    /// The Redis key of the lock called `name`: the key prefix, then `name`.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(locks: spacelock_client::SpaceLock<redis::aio::ConnectionManager>) -> Result<(), spacelock_client::Error> {
    /// assert_eq!(locks.key("space-42"), "spacelock:lock:space-42");
    /// # Ok(()) }
    /// ```
    pub fn key(&self, name: &str) -> String {
        format!("{}{}", self.inner.options.key_prefix, name)
    }

    /// Whether this `SpaceLock` (or a clone) is running a body for `name`,
    /// or still cleaning up after one.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(locks: spacelock_client::SpaceLock<redis::aio::ConnectionManager>) -> Result<(), spacelock_client::Error> {
    /// if locks.is_running("space-42") {
    ///     println!("a sync of space-42 is in progress here");
    /// }
    /// # Ok(()) }
    /// ```
    pub fn is_running(&self, name: &str) -> bool {
        lock_set(&self.inner.running).contains(&self.key(name))
    }

    /// How many leases the heartbeat is refreshing right now.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(locks: spacelock_client::SpaceLock<redis::aio::ConnectionManager>) -> Result<(), spacelock_client::Error> {
    /// println!("{} leases held", locks.active_leases());
    /// # Ok(()) }
    /// ```
    pub fn active_leases(&self) -> usize {
        self.inner.heartbeat.active()
    }

    /// Runs `f` while holding the lock called `name`, as the seed's
    /// `withSpaceLock(spaceId, fn)`.
    ///
    /// 1. If this `SpaceLock` is already running a body for `name`, returns
    ///    `Skipped(InProgress)` at once, without touching Redis (the check and
    ///    the claim are one atomic step).
    /// 2. Sends `SPACELOCK.ACQUIRE`; if another owner holds the lock, returns
    ///    `Skipped(LockHeld)`.
    /// 3. Calls `f` with a [`Lease`] while the heartbeat refreshes the lock
    ///    every `max(1 ms, ttl/3)`. If the lease is lost, `f` is told through
    ///    the lease, or dropped when [`Options::cancel_on_lost`] is set.
    /// 4. Releases the lock when `f` returns, and returns `Ran(output)`. A
    ///    failed release is logged and does not change the result.
    ///
    /// If `f` panics, the lock is released and then the panic resumes.
    ///
    /// # Errors
    ///
    /// * [`Error::ModuleNotLoaded`] if the server has no spacelock module.
    /// * [`Error::Redis`] if the acquire command fails (connection, timeout,
    ///   error reply). Nothing ran.
    /// * [`Error::LockLost`] if the lease was lost while `f` ran and
    ///   [`Options::cancel_on_lost`] is set; `f` was dropped.
    ///
    /// Errors from `f` itself are part of its output, inside `Ran`.
    ///
    /// # Cancel safety
    ///
    /// Dropping the returned future at any point is safe: the heartbeat
    /// stops, the body is dropped, the lock is released by a task spawned on
    /// the runtime, and the in-process entry is freed once that release has
    /// finished (so this instance cannot take the lock again before the stale
    /// release has run).
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
        self.run_locked(name, None, f).await
    }

    /// Like [`with_space_lock`](Self::with_space_lock), but when another
    /// owner holds the lock, waits up to `timeout` for it on the server
    /// (`SPACELOCK.ACQUIRE key owner ttl WAIT timeout_ms`), without polling.
    /// Returns `Skipped(TimedOut)` if the lock did not come free in time.
    ///
    /// The wait runs on a dedicated connection from the pool set up by
    /// [`with_wait_connector`](Self::with_wait_connector), never on the
    /// shared connection that carries the heartbeats. Waiting for a free
    /// pool connection counts against `timeout`. The timeout is rounded up to
    /// whole milliseconds, at least 1 ms (the server's "0 waits forever" is
    /// never sent).
    ///
    /// # Errors
    ///
    /// As [`with_space_lock`](Self::with_space_lock), plus
    /// [`Error::WaitNotConfigured`] without a wait connector, and
    /// [`Error::Redis`] if a pool connection cannot be opened.
    ///
    /// # Cancel safety
    ///
    /// As [`with_space_lock`](Self::with_space_lock). If it is dropped while
    /// waiting, the wait goes on in the background until the server answers;
    /// if the lock was granted meanwhile, it is released at once.
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
        self.run_locked(name, Some(timeout), f).await
    }

    async fn run_locked<F, Fut, T>(
        &self,
        name: &str,
        wait: Option<Duration>,
        f: F,
    ) -> Result<Outcome<T>, Error>
    where
        F: FnOnce(Lease) -> Fut,
        Fut: Future<Output = T>,
    {
        let key = self.key(name);
        let Some(entry) = Entry::claim(&self.inner.running, &key) else {
            return Ok(Outcome::Skipped(Skipped::InProgress));
        };
        let mut guard = Guard {
            lock: self.clone(),
            key: key.clone(),
            entry: Some(entry),
            state: State::MaybeHeld,
            heartbeat_id: None,
            lost: None,
            pending_wait: None,
            handle: Handle::current(),
        };
        let started = Instant::now();
        let reply = match wait {
            None => acquire_cmd(&self.inner.conn, &key, &self.inner.owner, self.inner.ttl_ms).await,
            Some(timeout) => match self.spawn_wait(&key, timeout) {
                Ok(handle) => {
                    let pending = guard.pending_wait.insert(handle);
                    let r = pending.await.unwrap_or_else(|e| {
                        Err(Error::Redis(
                            std::io::Error::other(format!("wait task failed: {e}")).into(),
                        ))
                    });
                    guard.pending_wait = None;
                    r
                }
                Err(e) => Err(e),
            },
        };
        let token = match reply {
            Ok(Some(token)) => token,
            Ok(None) => {
                guard.state = State::Free;
                return Ok(Outcome::Skipped(if wait.is_some() {
                    Skipped::TimedOut
                } else {
                    Skipped::LockHeld
                }));
            }
            Err(e) => {
                if !may_have_run(&e) {
                    guard.state = State::Free;
                }
                // else: the guard releases (compare-and-delete on our owner id).
                return Err(e);
            }
        };

        let lost = LostSignal::new();
        let ttl = Duration::from_millis(self.inner.ttl_ms);
        let valid_until = ValidUntil::new(started, ttl);
        guard.heartbeat_id = Some(self.inner.heartbeat.register(
            &self.inner.conn,
            &self.inner.owner,
            &key,
            self.inner.ttl_ms,
            lost.clone(),
            valid_until.clone(),
        ));
        guard.lost = Some(lost.clone());
        let lease = Lease::new(name, key.clone(), token, ttl, lost.clone(), valid_until);

        let body = AssertUnwindSafe(async move { f(lease).await }).catch_unwind();
        let result: Option<Result<T, Box<dyn Any + Send>>> = if self.inner.options.cancel_on_lost {
            tokio::select! {
                biased;
                r = body => Some(r),
                _ = lost.cancelled() => None,
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

    fn spawn_wait(
        &self,
        key: &str,
        timeout: Duration,
    ) -> Result<JoinHandle<Result<Option<u64>, Error>>, Error> {
        let pool = self.wait.clone().ok_or(Error::WaitNotConfigured)?;
        let key = key.to_string();
        let owner = self.inner.owner.clone();
        let ttl_ms = self.inner.ttl_ms;
        Ok(tokio::spawn(async move {
            let deadline = Instant::now() + timeout;
            let Ok(pooled) = tokio::time::timeout_at(deadline, pool.checkout()).await else {
                return Ok(None); // no free connection within the timeout
            };
            let mut pooled = pooled.map_err(Error::from)?;
            let left = deadline.saturating_duration_since(Instant::now());
            let mut cmd = redis::cmd("SPACELOCK.ACQUIRE");
            cmd.arg(&key)
                .arg(&*owner)
                .arg(ttl_ms)
                .arg("WAIT")
                .arg(millis_ceil(left));
            match tokio::time::timeout(left + WAIT_GRACE, pooled.conn.req(&cmd)).await {
                Ok(Ok(value)) => {
                    pool.checkin(pooled);
                    parse_token("SPACELOCK.ACQUIRE", value)
                }
                Ok(Err(e)) => Err(e.into()),
                Err(_) => Err(Error::Redis(
                    std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "no reply to SPACELOCK.ACQUIRE WAIT within its timeout plus 5 s",
                    )
                    .into(),
                )),
            }
        }))
    }

    /// Sends `SPACELOCK.ACQUIRE` once for `name` with this `SpaceLock`'s
    /// owner and ttl. No in-process mutex, no heartbeat: the caller manages
    /// the lease ([`refresh`](Self::refresh), [`release`](Self::release)).
    ///
    /// # Errors
    ///
    /// [`Error::ModuleNotLoaded`], or [`Error::Redis`] if the command fails.
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: if dropped after the command was sent, the lock may
    /// have been granted without the caller knowing. Call
    /// [`release`](Self::release) to be sure.
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
        let reply = acquire_cmd(
            &self.inner.conn,
            &self.key(name),
            &self.inner.owner,
            self.inner.ttl_ms,
        )
        .await?;
        Ok(match reply {
            Some(token) => AcquireReply::Acquired { token },
            None => AcquireReply::Held,
        })
    }

    /// Sends `SPACELOCK.ACQUIRE … WAIT` for `name` on a pooled dedicated
    /// connection: waits on the server up to `timeout` for the lock.
    ///
    /// # Errors
    ///
    /// [`Error::WaitNotConfigured`] without a
    /// [wait connector](Self::with_wait_connector), [`Error::ModuleNotLoaded`],
    /// or [`Error::Redis`] if the command fails.
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: if dropped, the wait goes on in the background and a
    /// grant that arrives later is lost to the caller (it expires after the
    /// ttl). Use [`with_space_lock_wait`](Self::with_space_lock_wait) for a
    /// cancel-safe wait.
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
        let handle = self.spawn_wait(&self.key(name), timeout)?;
        let reply = handle.await.map_err(|e| {
            Error::Redis(std::io::Error::other(format!("wait task failed: {e}")).into())
        })??;
        Ok(match reply {
            Some(token) => AcquireReply::Acquired { token },
            None => AcquireReply::Held,
        })
    }

    /// Sends `SPACELOCK.REFRESH` for `name`: resets the ttl if this
    /// `SpaceLock`'s owner holds the lock.
    ///
    /// # Errors
    ///
    /// [`Error::ModuleNotLoaded`], or [`Error::Redis`] if the command fails.
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
        let mut cmd = redis::cmd("SPACELOCK.REFRESH");
        cmd.arg(self.key(name))
            .arg(&*self.inner.owner)
            .arg(self.inner.ttl_ms);
        let n: i64 = query(&self.inner.conn, &cmd, "SPACELOCK.REFRESH").await?;
        Ok(if n == 1 {
            RefreshReply::Refreshed
        } else {
            RefreshReply::NotOwner
        })
    }

    /// Sends `SPACELOCK.RELEASE` for `name`: deletes the lock if this
    /// `SpaceLock`'s owner holds it.
    ///
    /// # Errors
    ///
    /// [`Error::ModuleNotLoaded`], or [`Error::Redis`] if the command fails.
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
        release_cmd(&self.inner.conn, &self.key(name), &self.inner.owner).await
    }

    /// Sends `SPACELOCK.INFO` for `name`: `None` if the lock is free.
    ///
    /// # Errors
    ///
    /// [`Error::ModuleNotLoaded`], [`Error::Redis`] if the command fails, or
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
        let mut cmd = redis::cmd("SPACELOCK.INFO");
        cmd.arg(self.key(name));
        let value: Value = query(&self.inner.conn, &cmd, "SPACELOCK.INFO").await?;
        parse_info(value)
    }
}

fn lock_set(set: &Mutex<HashSet<String>>) -> std::sync::MutexGuard<'_, HashSet<String>> {
    set.lock().unwrap_or_else(|p| p.into_inner())
}

/// Membership of a key in the in-process mutex; removed on drop.
struct Entry {
    set: Arc<Mutex<HashSet<String>>>,
    key: String,
}

impl Entry {
    /// Atomically checks and inserts (one synchronous critical section).
    fn claim(set: &Arc<Mutex<HashSet<String>>>, key: &str) -> Option<Entry> {
        if !lock_set(set).insert(key.to_string()) {
            return None;
        }
        Some(Entry {
            set: set.clone(),
            key: key.to_string(),
        })
    }
}

impl Drop for Entry {
    fn drop(&mut self) {
        lock_set(&self.set).remove(&self.key);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Redis may hold our lock (acquiring or held): release on drop.
    MaybeHeld,
    /// Redis does not hold our lock: just free the entry.
    Free,
    /// Released and cleaned up.
    Done,
}

/// Releases on every path: `finish` after the body, `Drop` on cancellation.
struct Guard<C: LockConnection> {
    lock: SpaceLock<C>,
    key: String,
    entry: Option<Entry>,
    state: State,
    heartbeat_id: Option<u64>,
    lost: Option<Arc<LostSignal>>,
    pending_wait: Option<JoinHandle<Result<Option<u64>, Error>>>,
    handle: Handle,
}

impl<C: LockConnection> Guard<C> {
    fn stop_heartbeat(&mut self) {
        if let Some(id) = self.heartbeat_id.take() {
            self.lock.inner.heartbeat.unregister(id);
        }
        if let Some(lost) = self.lost.take() {
            lost.lose(LostReason::Released);
        }
    }

    async fn finish(&mut self) {
        self.stop_heartbeat();
        release_logged(&self.lock.inner.conn, &self.key, &self.lock.inner.owner).await;
        self.state = State::Done;
        self.entry = None;
    }
}

impl<C: LockConnection> Drop for Guard<C> {
    fn drop(&mut self) {
        if self.state != State::MaybeHeld {
            return; // the entry frees itself
        }
        self.stop_heartbeat();
        let conn = self.lock.inner.conn.clone();
        let owner = self.lock.inner.owner.clone();
        let key = std::mem::take(&mut self.key);
        let entry = self.entry.take();
        let pending = self.pending_wait.take();
        tracing::debug!(key = %key, "spacelock: cancelled while holding the lock; releasing in the background");
        // If the runtime is shutting down the task is dropped unrun; the
        // entry is still freed (it is dropped with the task).
        self.handle.spawn(async move {
            if let Some(pending) = pending {
                let _ = pending.await; // a grant after the cancel must be released too
            }
            release_logged(&conn, &key, &owner).await;
            drop(entry);
        });
    }
}

/// Whether a failed acquire may nonetheless have been applied by the server.
fn may_have_run(e: &Error) -> bool {
    match e {
        Error::Redis(e) => e.is_timeout() || e.is_io_error() || e.is_connection_dropped(),
        _ => false,
    }
}

async fn query<C: LockConnection, T: FromRedisValue>(
    conn: &C,
    cmd: &Cmd,
    command: &'static str,
) -> Result<T, Error> {
    let mut conn = conn.clone();
    let value = cmd.query_async::<Value>(&mut conn).await?;
    parse(command, value)
}

fn parse<T: FromRedisValue>(command: &'static str, value: Value) -> Result<T, Error> {
    let value = value.extract_error()?;
    redis::from_redis_value::<T>(value.clone()).map_err(|_| Error::UnexpectedReply {
        command,
        reply: format!("{value:?}"),
    })
}

fn parse_token(command: &'static str, value: Value) -> Result<Option<u64>, Error> {
    let token: Option<i64> = parse(command, value)?;
    token
        .map(|t| {
            u64::try_from(t).map_err(|_| Error::UnexpectedReply {
                command,
                reply: t.to_string(),
            })
        })
        .transpose()
}

async fn acquire_cmd<C: LockConnection>(
    conn: &C,
    key: &str,
    owner: &str,
    ttl_ms: u64,
) -> Result<Option<u64>, Error> {
    let mut cmd = redis::cmd("SPACELOCK.ACQUIRE");
    cmd.arg(key).arg(owner).arg(ttl_ms);
    let value: Value = query(conn, &cmd, "SPACELOCK.ACQUIRE").await?;
    parse_token("SPACELOCK.ACQUIRE", value)
}

async fn release_cmd<C: LockConnection>(
    conn: &C,
    key: &str,
    owner: &str,
) -> Result<ReleaseReply, Error> {
    let mut cmd = redis::cmd("SPACELOCK.RELEASE");
    cmd.arg(key).arg(owner);
    let n: i64 = query(conn, &cmd, "SPACELOCK.RELEASE").await?;
    Ok(if n == 1 {
        ReleaseReply::Released
    } else {
        ReleaseReply::NotOwner
    })
}

/// Releases and logs the outcome; never fails.
async fn release_logged<C: LockConnection>(conn: &C, key: &str, owner: &str) {
    match release_cmd(conn, key, owner).await {
        Ok(ReleaseReply::Released) => {}
        Ok(ReleaseReply::NotOwner) => {
            tracing::debug!(key = %key, "spacelock: release found the lock no longer ours");
        }
        Err(e) => {
            tracing::warn!(key = %key, error = %e, "spacelock: failed to release lock");
        }
    }
}

fn parse_info(value: Value) -> Result<Option<LockInfo>, Error> {
    let value = value.extract_error()?;
    if value == Value::Nil {
        return Ok(None);
    }
    let bad = || Error::UnexpectedReply {
        command: "SPACELOCK.INFO",
        reply: format!("{value:?}"),
    };
    let pairs: Vec<(Value, Value)> = match &value {
        Value::Map(pairs) => pairs.clone(),
        Value::Array(items) if items.len() % 2 == 0 => items
            .chunks(2)
            .map(|c| (c[0].clone(), c[1].clone()))
            .collect(),
        _ => return Err(bad()),
    };
    let (mut owner, mut ttl, mut token, mut waiters) = (None, None, None, None);
    for (k, v) in pairs {
        let k: String = redis::from_redis_value(k).map_err(|_| bad())?;
        match k.as_str() {
            "owner" => {
                let bytes: Vec<u8> = redis::from_redis_value(v).map_err(|_| bad())?;
                owner = Some(String::from_utf8_lossy(&bytes).into_owned());
            }
            "ttl_ms" => ttl = Some(redis::from_redis_value::<i64>(v).map_err(|_| bad())?),
            "token" => token = Some(redis::from_redis_value::<u64>(v).map_err(|_| bad())?),
            "waiters" => waiters = Some(redis::from_redis_value::<u64>(v).map_err(|_| bad())?),
            _ => {}
        }
    }
    Ok(Some(LockInfo {
        owner: owner.ok_or_else(bad)?,
        ttl: ttl
            .and_then(|t| u64::try_from(t).ok())
            .map(Duration::from_millis),
        token: token.ok_or_else(bad)?,
        waiters: waiters.unwrap_or(0),
    }))
}
