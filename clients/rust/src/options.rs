//! Configuration: [`Options`] (a builder, setters only) and [`Settings`]
//! (what a [`SpaceLock`](crate::SpaceLock) actually uses, with getters).
//!
//! Why two types: the setters are builder methods named after the setting
//! (`Options::ttl(d)`), so getters of the same name cannot live next to them,
//! and `get_`-prefixed getters go against the API guidelines (C-GETTER).
//! The values worth reading are the *resolved* ones anyway (the owner id that
//! was generated, the ttl rounded to whole milliseconds), and those live in
//! the view [`SpaceLock::settings`](crate::SpaceLock::settings) returns.

use std::sync::Arc;
use std::time::Duration;

use crate::Error;

/// The default lease time to live: 30 s, as the existing service's `GIT_SYNC_LOCK_TTL_MS`.
pub const DEFAULT_TTL: Duration = Duration::from_secs(30);

/// The shortest ttl accepted: a shorter lease cannot be refreshed in time
/// (its heartbeat would have to answer within a few milliseconds).
pub const MIN_TTL: Duration = Duration::from_millis(10);

/// The default prefix put in front of every lock name to form its Redis key.
pub const DEFAULT_KEY_PREFIX: &str = "spacelock:lock:";

/// The default size of the pool of dedicated connections for blocking acquires.
pub const DEFAULT_WAIT_CONNECTIONS: usize = 4;

/// The default time an ACQUIRE (without WAIT), a REFRESH or an INFO may take,
/// retries on a fresh connection included.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// The default cap on the time a RELEASE may take, retries included.
pub const DEFAULT_RELEASE_TIMEOUT: Duration = Duration::from_secs(5);

/// The default time a blocking acquire waits for its reply past its timeout.
pub const DEFAULT_WAIT_GRACE: Duration = Duration::from_secs(5);

/// Durations are clamped to this before any clock arithmetic, so that no
/// input can overflow an `Instant` (about a century).
pub(crate) const MAX_SPAN: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// The least time a release is given, however soon its key expires: a short
/// lease on a busy machine still gets the release's reply.
pub(crate) const RELEASE_FLOOR: Duration = Duration::from_millis(250);

/// Settings for a [`SpaceLock`](crate::SpaceLock), built with chained setters.
/// Read the values back from [`SpaceLock::settings`](crate::SpaceLock::settings).
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use spacelock_client::Options;
///
/// let options = Options::default()
///     .ttl(Duration::from_secs(10))
///     .key_prefix("git-sync:lock:")
///     .cancel_on_lost(true);
/// # let _ = options;
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    ttl: Duration,
    key_prefix: String,
    owner: Option<String>,
    cancel_on_lost: bool,
    wait_connections: usize,
    request_timeout: Duration,
    release_timeout: Duration,
    wait_grace: Duration,
    replicas: usize,
    ack_timeout: Option<Duration>,
    wait_aof: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            ttl: DEFAULT_TTL,
            key_prefix: DEFAULT_KEY_PREFIX.to_string(),
            owner: None,
            cancel_on_lost: false,
            wait_connections: DEFAULT_WAIT_CONNECTIONS,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            release_timeout: DEFAULT_RELEASE_TIMEOUT,
            wait_grace: DEFAULT_WAIT_GRACE,
            replicas: 0,
            ack_timeout: None,
            wait_aof: false,
        }
    }
}

impl Options {
    /// Same as [`Options::default`].
    ///
    /// # Examples
    ///
    /// ```
    /// use spacelock_client::Options;
    /// assert_eq!(Options::new(), Options::default());
    /// ```
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// The lease time to live. The heartbeat refreshes every `ttl/3`, and a
    /// lease none of whose refreshes succeeded within `ttl` of the start of
    /// the last successful one is lost. Rounded up to whole milliseconds.
    /// Lock calls fail with [`Error::InvalidArgument`] below [`MIN_TTL`]
    /// (10 ms); the server rejects values above its `spacelock.max-ttl`.
    ///
    /// Defaults to 30 s ([`DEFAULT_TTL`]).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use spacelock_client::Options;
    /// let options = Options::default().ttl(Duration::from_secs(10));
    /// # let _ = options;
    /// ```
    #[must_use]
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// The prefix put in front of every lock name to form its Redis key, as
    /// the existing service's `GIT_SYNC_LOCK_PREFIX`. Put a `{hash tag}` in the *name*
    /// if several locks must share a cluster slot.
    ///
    /// Defaults to `"spacelock:lock:"` ([`DEFAULT_KEY_PREFIX`]).
    ///
    /// # Examples
    ///
    /// ```
    /// use spacelock_client::Options;
    /// let options = Options::default().key_prefix("git-sync:lock:");
    /// # let _ = options;
    /// ```
    #[must_use]
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.key_prefix = prefix.into();
        self
    }

    /// The owner id written into every lock this `SpaceLock` takes (the
    /// existing service's `instanceId`; a locked call adds its own number,
    /// `{owner}:{n}`, see [`SpaceLock::owner`](crate::SpaceLock::owner)).
    /// Two `SpaceLock`s with the same owner can release and refresh each
    /// other's locks, so only set this to give a process a stable, unique,
    /// recognisable id.
    ///
    /// Defaults to a fresh UUID v4 for each [`SpaceLock::new`](crate::SpaceLock::new).
    ///
    /// # Examples
    ///
    /// ```
    /// use spacelock_client::Options;
    /// let options = Options::default().owner("sync-worker-1");
    /// # let _ = options;
    /// ```
    #[must_use]
    pub fn owner(mut self, owner: impl Into<String>) -> Self {
        self.owner = Some(owner.into());
        self
    }

    /// Whether to drop (cancel) the body when its lease is lost. When set,
    /// [`SpaceLock::with_space_lock`](crate::SpaceLock::with_space_lock)
    /// returns [`Error::LockLost`] in that case; when not set, the body only
    /// gets the signal through [`Lease::lost`](crate::Lease::lost) and
    /// [`Lease::is_lost`](crate::Lease::is_lost).
    ///
    /// Defaults to `false` (signal only).
    ///
    /// # Examples
    ///
    /// ```
    /// use spacelock_client::Options;
    /// let options = Options::default().cancel_on_lost(true);
    /// # let _ = options;
    /// ```
    #[must_use]
    pub fn cancel_on_lost(mut self, cancel: bool) -> Self {
        self.cancel_on_lost = cancel;
        self
    }

    /// The most dedicated connections opened for blocking acquires
    /// ([`SpaceLock::with_space_lock_wait`](crate::SpaceLock::with_space_lock_wait)).
    /// Each waiting call holds one for the length of its wait; further calls
    /// queue for a free one. At least 1.
    ///
    /// Defaults to 4 ([`DEFAULT_WAIT_CONNECTIONS`]).
    ///
    /// # Examples
    ///
    /// ```
    /// use spacelock_client::Options;
    /// let options = Options::default().wait_connections(16);
    /// # let _ = options;
    /// ```
    #[must_use]
    pub fn wait_connections(mut self, n: usize) -> Self {
        self.wait_connections = n;
        self
    }

    /// How long an `ACQUIRE` without `WAIT`, a `REFRESH` sent by
    /// [`SpaceLock::refresh`](crate::SpaceLock::refresh) and an `INFO` may
    /// take in all. A server in a write pause (`CLIENT PAUSE … WRITE`,
    /// `FAILOVER`) holds the lock commands until the pause ends; a dropped
    /// connection is retried on a fresh one within this time.
    ///
    /// Defaults to 5 s ([`DEFAULT_REQUEST_TIMEOUT`]).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use spacelock_client::Options;
    /// let options = Options::default().request_timeout(Duration::from_secs(30));
    /// # let _ = options;
    /// ```
    #[must_use]
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// The most time a release may take, waiting for the reply (a write
    /// pause holds it) and retrying on a fresh connection after errors
    /// included. A release is not tried for longer than the key can still
    /// exist either (the last successful refresh's reply plus the ttl): by
    /// then it has expired anyway. A release that fails within this time is
    /// logged and reported as
    /// [`LostReason::ReleaseFailed`](crate::LostReason::ReleaseFailed).
    ///
    /// Defaults to 5 s ([`DEFAULT_RELEASE_TIMEOUT`]).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use spacelock_client::Options;
    /// let options = Options::default().release_timeout(Duration::from_secs(15));
    /// # let _ = options;
    /// ```
    #[must_use]
    pub fn release_timeout(mut self, timeout: Duration) -> Self {
        self.release_timeout = timeout;
        self
    }

    /// How long a blocking acquire waits for the server's reply beyond its
    /// own timeout before it gives up with [`Error::Timeout`] (and releases
    /// the lock in case it was granted meanwhile).
    ///
    /// Defaults to 5 s ([`DEFAULT_WAIT_GRACE`]).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use spacelock_client::Options;
    /// let options = Options::default().wait_grace(Duration::from_secs(2));
    /// # let _ = options;
    /// ```
    #[must_use]
    pub fn wait_grace(mut self, grace: Duration) -> Self {
        self.wait_grace = grace;
        self
    }

    /// How many replicas must acknowledge a grant, and every refresh, before
    /// it counts. With `n` ≥ 1, the client follows each grant (an immediate
    /// one, or one from the server's wait queue) with `WAIT n ack_timeout` on
    /// the connection that got it, and starts the body only once at least `n`
    /// replicas have acknowledged it. A grant that fewer acknowledge within
    /// [`ack_timeout`](Self::ack_timeout) is released and reported as
    /// [`Skipped::NotAcknowledged`](crate::Skipped::NotAcknowledged). The
    /// heartbeat follows its refreshes with the same `WAIT`, and a lease's
    /// deadline moves only on an acknowledged refresh.
    ///
    /// An immediate grant's `WAIT` goes out in one pipeline with its
    /// ACQUIRE, on the shared connection: while replicas lag, it holds what
    /// is queued behind it on that connection (other calls' acquires and
    /// refreshes) for up to the ack timeout.
    ///
    /// On a cluster, the `WAIT` goes to the node of the key (in the pipeline
    /// of its ACQUIRE or REFRESH), except after a wait-queue grant on a
    /// dedicated cluster connection, where redis-rs sends the lone `WAIT` to
    /// every primary and the smallest answer counts (every shard then needs
    /// `n` replicas). Replica-acknowledged grants are tested on a primary
    /// with replicas and with Sentinel, not on a cluster.
    ///
    /// Set `n` to the number of replicas that can be promoted (see
    /// `docs/replication.md` for the exact guarantee and its conditions).
    /// The primitives ([`SpaceLock::acquire`](crate::SpaceLock::acquire),
    /// [`SpaceLock::acquire_wait`](crate::SpaceLock::acquire_wait),
    /// [`SpaceLock::refresh`](crate::SpaceLock::refresh)) stay raw: they
    /// send no `WAIT`.
    ///
    /// Defaults to 0: no `WAIT`, no extra round trip.
    ///
    /// # Examples
    ///
    /// ```
    /// use spacelock_client::Options;
    /// let options = Options::default().replicas(2);
    /// # let _ = options;
    /// ```
    #[must_use]
    pub fn replicas(mut self, n: usize) -> Self {
        self.replicas = n;
        self
    }

    /// How long the replicas are given to acknowledge a grant or a refresh
    /// (the `WAIT` timeout), when [`replicas`](Self::replicas) is set. Must
    /// be above zero and below the ttl: lock calls fail with
    /// [`Error::InvalidArgument`] otherwise. Rounded up to whole milliseconds.
    ///
    /// Defaults to a third of the ttl.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use spacelock_client::Options;
    /// let options = Options::default().replicas(2).ack_timeout(Duration::from_secs(2));
    /// # let _ = options;
    /// ```
    #[must_use]
    pub fn ack_timeout(mut self, timeout: Duration) -> Self {
        self.ack_timeout = Some(timeout);
        self
    }

    /// Whether to wait for the grants and refreshes to be written to disk:
    /// `WAITAOF 1 n ack_timeout` instead of `WAIT n ack_timeout`, which
    /// counts a grant only once the primary has fsynced it to its append-only
    /// file and [`replicas`](Self::replicas) replicas have fsynced it to
    /// theirs (so it survives a restart under `appendfsync everysec`). With
    /// `replicas` 0 it waits for the primary's fsync alone.
    ///
    /// `WAITAOF` exists in Redis 7.2 and later and in Valkey, and needs
    /// `appendonly yes`: elsewhere lock calls fail with
    /// [`Error::WaitAofUnavailable`] (never silently without it).
    ///
    /// Defaults to `false`.
    ///
    /// # Examples
    ///
    /// ```
    /// use spacelock_client::Options;
    /// let options = Options::default().replicas(1).wait_aof(true);
    /// # let _ = options;
    /// ```
    #[must_use]
    pub fn wait_aof(mut self, on: bool) -> Self {
        self.wait_aof = on;
        self
    }

    /// Resolves the options for one `SpaceLock`.
    pub(crate) fn resolve(self) -> Settings {
        let owner: Arc<str> = match self.owner {
            Some(o) => o.into(),
            None => uuid::Uuid::new_v4().to_string().into(),
        };
        // Capped like every other span, so the server gets a number it can
        // parse (and answers "above spacelock.max-ttl") rather than u64::MAX.
        let ttl_ms = millis_ceil(self.ttl.min(MAX_SPAN));
        let ack_timeout = match self.ack_timeout {
            Some(d) if d.is_zero() => Duration::ZERO,
            Some(d) => Duration::from_millis(millis_ceil(d.min(MAX_SPAN))),
            None => refresh_interval(ttl_ms),
        };
        Settings {
            ttl: Duration::from_millis(ttl_ms),
            ttl_ms,
            key_prefix: self.key_prefix,
            owner,
            cancel_on_lost: self.cancel_on_lost,
            wait_connections: self.wait_connections.max(1),
            request_timeout: self.request_timeout.min(MAX_SPAN),
            release_timeout: self.release_timeout.min(MAX_SPAN),
            wait_grace: self.wait_grace.min(MAX_SPAN),
            replicas: self.replicas,
            ack_timeout,
            wait_aof: self.wait_aof,
        }
    }
}

/// The settings a [`SpaceLock`](crate::SpaceLock) runs with, resolved from
/// its [`Options`]: from [`SpaceLock::settings`](crate::SpaceLock::settings).
///
/// # Examples
///
/// ```no_run
/// # async fn demo(locks: spacelock_client::SpaceLock<redis::aio::ConnectionManager>) {
/// let settings = locks.settings();
/// println!("{} locks with a ttl of {:?}", settings.owner(), settings.ttl());
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Settings {
    ttl: Duration,
    pub(crate) ttl_ms: u64,
    key_prefix: String,
    pub(crate) owner: Arc<str>,
    cancel_on_lost: bool,
    wait_connections: usize,
    request_timeout: Duration,
    release_timeout: Duration,
    wait_grace: Duration,
    replicas: usize,
    ack_timeout: Duration,
    wait_aof: bool,
}

/// What acknowledges a grant or a refresh: `WAIT replicas timeout_ms`, or
/// `WAITAOF 1 replicas timeout_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ack {
    pub(crate) replicas: usize,
    pub(crate) timeout: Duration,
    pub(crate) aof: bool,
}

impl Settings {
    /// The lease time to live, in whole milliseconds as sent to the server.
    #[must_use]
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The prefix put in front of lock names.
    #[must_use]
    pub fn key_prefix(&self) -> &str {
        &self.key_prefix
    }

    /// The owner id written into the locks: the one set, or the generated UUID.
    #[must_use]
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// Whether a body is cancelled when its lease is lost.
    #[must_use]
    pub fn cancel_on_lost(&self) -> bool {
        self.cancel_on_lost
    }

    /// The size of the blocking-acquire connection pool (at least 1).
    #[must_use]
    pub fn wait_connections(&self) -> usize {
        self.wait_connections
    }

    /// See [`Options::request_timeout`].
    #[must_use]
    pub fn request_timeout(&self) -> Duration {
        self.request_timeout
    }

    /// See [`Options::release_timeout`].
    #[must_use]
    pub fn release_timeout(&self) -> Duration {
        self.release_timeout
    }

    /// See [`Options::wait_grace`].
    #[must_use]
    pub fn wait_grace(&self) -> Duration {
        self.wait_grace
    }

    /// See [`Options::replicas`]: 0 when grants are not acknowledged.
    #[must_use]
    pub fn replicas(&self) -> usize {
        self.replicas
    }

    /// See [`Options::ack_timeout`]: the one set, or a third of the ttl.
    #[must_use]
    pub fn ack_timeout(&self) -> Duration {
        self.ack_timeout
    }

    /// See [`Options::wait_aof`].
    #[must_use]
    pub fn wait_aof(&self) -> bool {
        self.wait_aof
    }

    /// How grants and refreshes are acknowledged: `None` when they are not.
    pub(crate) fn ack(&self) -> Option<Ack> {
        (self.replicas > 0 || self.wait_aof).then_some(Ack {
            replicas: self.replicas,
            timeout: self.ack_timeout,
            aof: self.wait_aof,
        })
    }

    /// The refresh interval: a third of the ttl.
    pub(crate) fn interval(&self) -> Duration {
        refresh_interval(self.ttl_ms)
    }

    /// How long a release may take from now: the release timeout, but no
    /// longer than the key can still exist (one ttl; at least
    /// [`RELEASE_FLOOR`]).
    pub(crate) fn release_budget(&self) -> Duration {
        self.release_timeout.min(self.ttl.max(RELEASE_FLOOR))
    }

    /// Refuses what the client will not send: an empty name, a ttl too
    /// short to refresh.
    pub(crate) fn check(&self, name: &str) -> Result<(), Error> {
        check_name(name)?;
        if self.ttl < MIN_TTL {
            return Err(Error::InvalidArgument {
                reason: format!(
                    "ttl {:?} is below the minimum of {:?}: a lease that short cannot be refreshed in time",
                    self.ttl, MIN_TTL
                ),
            });
        }
        if self.ack_timeout.is_zero() || self.ack_timeout >= self.ttl {
            return Err(Error::InvalidArgument {
                reason: format!(
                    "ack timeout {:?} must be above zero and below the ttl {:?}: \
                     a grant acknowledged after its ttl would already have expired",
                    self.ack_timeout, self.ttl
                ),
            });
        }
        if i64::try_from(self.replicas).is_err() {
            return Err(Error::InvalidArgument {
                reason: format!("replicas {} is too large", self.replicas),
            });
        }
        Ok(())
    }
}

/// Refuses an empty lock name (it would lock the bare prefix).
pub(crate) fn check_name(name: &str) -> Result<(), Error> {
    if name.is_empty() {
        return Err(Error::InvalidArgument {
            reason: "the lock name must not be empty".into(),
        });
    }
    Ok(())
}

/// Interval between refreshes: `max(1 ms, ttl/3)`, in whole ms as the existing service computes it.
pub(crate) fn refresh_interval(ttl_ms: u64) -> Duration {
    Duration::from_millis((ttl_ms / 3).max(1))
}

/// A duration in whole milliseconds, rounded up, at least 1.
pub(crate) fn millis_ceil(d: Duration) -> u64 {
    let ms = d.as_nanos().div_ceil(1_000_000);
    u64::try_from(ms).unwrap_or(u64::MAX).max(1)
}

/// `t + d`, saturating at [`MAX_SPAN`] past `t`: never panics.
pub(crate) fn after(t: tokio::time::Instant, d: Duration) -> tokio::time::Instant {
    let d = d.min(MAX_SPAN);
    t.checked_add(d).unwrap_or(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn millis_round_up() {
        assert_eq!(millis_ceil(Duration::ZERO), 1);
        assert_eq!(millis_ceil(Duration::from_micros(1)), 1);
        assert_eq!(millis_ceil(Duration::from_micros(1001)), 2);
        assert_eq!(millis_ceil(Duration::from_secs(30)), 30_000);
        assert_eq!(millis_ceil(Duration::MAX), u64::MAX);
    }

    #[test]
    fn interval_is_a_third_at_least_one_ms() {
        assert_eq!(refresh_interval(30_000), Duration::from_millis(10_000));
        assert_eq!(refresh_interval(300), Duration::from_millis(100));
        assert_eq!(refresh_interval(2), Duration::from_millis(1));
    }

    #[test]
    fn defaults_resolve() {
        let s = Options::default().resolve();
        assert_eq!(s.ttl(), DEFAULT_TTL);
        assert_eq!(s.key_prefix(), DEFAULT_KEY_PREFIX);
        assert!(uuid::Uuid::parse_str(s.owner()).is_ok());
        assert!(!s.cancel_on_lost());
        assert_eq!(s.wait_connections(), 4);
        assert_eq!(s.request_timeout(), DEFAULT_REQUEST_TIMEOUT);
        assert_eq!(s.release_timeout(), DEFAULT_RELEASE_TIMEOUT);
        assert_eq!(s.wait_grace(), DEFAULT_WAIT_GRACE);
        assert_eq!(
            Options::new()
                .wait_connections(0)
                .resolve()
                .wait_connections(),
            1
        );
        assert_eq!(Options::new().owner("me").resolve().owner(), "me");
        let s = Options::new().ttl(Duration::from_micros(1500)).resolve();
        assert_eq!(s.ttl(), Duration::from_millis(2), "rounded up to whole ms");
    }

    #[test]
    fn release_budget_is_capped_by_the_ttl() {
        let s = Options::new().ttl(Duration::from_secs(2)).resolve();
        assert_eq!(s.release_budget(), Duration::from_secs(2));
        let s = Options::new().resolve();
        assert_eq!(s.release_budget(), DEFAULT_RELEASE_TIMEOUT);
        let s = Options::new().ttl(Duration::from_millis(20)).resolve();
        assert_eq!(s.release_budget(), Duration::from_millis(250));
    }

    #[test]
    fn check_refuses_empty_names_and_short_ttls() {
        let s = Options::new().resolve();
        assert!(s.check("x").is_ok());
        assert!(matches!(s.check(""), Err(Error::InvalidArgument { .. })));
        let s = Options::new().ttl(Duration::from_millis(9)).resolve();
        assert!(matches!(s.check("x"), Err(Error::InvalidArgument { .. })));
        assert!(Options::new().ttl(MIN_TTL).resolve().check("x").is_ok());
    }

    #[test]
    fn huge_durations_never_overflow() {
        let s = Options::new()
            .ttl(Duration::MAX)
            .request_timeout(Duration::MAX)
            .release_timeout(Duration::MAX)
            .wait_grace(Duration::MAX)
            .resolve();
        let now = tokio::time::Instant::now();
        for d in [
            s.ttl(),
            s.request_timeout(),
            s.release_budget(),
            Duration::MAX,
        ] {
            assert!(after(now, d) >= now);
        }
        // The ttl sent to the server is the capped one, a number it parses
        // (it then refuses it as above spacelock.max-ttl), not u64::MAX.
        assert_eq!(Duration::from_millis(s.ttl_ms), s.ttl());
        assert!(i64::try_from(s.ttl_ms).is_ok());
    }
}
