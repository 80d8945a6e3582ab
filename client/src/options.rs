//! Configuration of a [`SpaceLock`](crate::SpaceLock).

use std::time::Duration;

/// The default lease time to live: 30 s, as the seed's `GIT_SYNC_LOCK_TTL_MS`.
pub const DEFAULT_TTL: Duration = Duration::from_secs(30);

/// The default prefix put in front of every lock name to form its Redis key.
pub const DEFAULT_KEY_PREFIX: &str = "spacelock:lock:";

/// The default size of the pool of dedicated connections for blocking acquires.
pub const DEFAULT_WAIT_CONNECTIONS: usize = 4;

/// Settings for a [`SpaceLock`](crate::SpaceLock), built with chained setters.
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
/// assert_eq!(options.get_ttl(), Duration::from_secs(10));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    pub(crate) ttl: Duration,
    pub(crate) key_prefix: String,
    pub(crate) owner: Option<String>,
    pub(crate) cancel_on_lost: bool,
    pub(crate) wait_connections: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            ttl: DEFAULT_TTL,
            key_prefix: DEFAULT_KEY_PREFIX.to_string(),
            owner: None,
            cancel_on_lost: false,
            wait_connections: DEFAULT_WAIT_CONNECTIONS,
        }
    }
}

impl Options {
    /// Same as [`Options::default`].
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use spacelock_client::Options;
    ///
    /// assert_eq!(Options::new(), Options::default());
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    /// The lease time to live. The heartbeat refreshes every `max(1 ms, ttl/3)`,
    /// and a lease whose last successful refresh started more than `ttl` ago is
    /// lost. Rounded up to whole milliseconds, at least 1 ms; the server
    /// rejects values above its `spacelock.max-ttl`.
    ///
    /// Defaults to 30 s ([`DEFAULT_TTL`]).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use spacelock_client::Options;
    ///
    /// let options = Options::default().ttl(Duration::from_secs(10));
    /// assert_eq!(options.get_ttl(), Duration::from_secs(10));
    /// ```
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// The prefix put in front of every lock name to form its Redis key, as
    /// the seed's `GIT_SYNC_LOCK_PREFIX`. Put a `{hash tag}` in the *name*
    /// if several locks must share a cluster slot.
    ///
    /// Defaults to `"spacelock:lock:"` ([`DEFAULT_KEY_PREFIX`]).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use spacelock_client::Options;
    ///
    /// let options = Options::default().key_prefix("git-sync:lock:");
    /// assert_eq!(options.get_key_prefix(), "git-sync:lock:");
    /// ```
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.key_prefix = prefix.into();
        self
    }

    /// The owner id written into every lock this `SpaceLock` takes (the
    /// seed's `instanceId`). Two `SpaceLock`s with the same owner can release
    /// and refresh each other's locks, so only set this to give a process a
    /// stable, unique, recognisable id.
    ///
    /// Defaults to a fresh UUID v4 for each [`SpaceLock::new`](crate::SpaceLock::new).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use spacelock_client::Options;
    ///
    /// let options = Options::default().owner("sync-worker-1");
    /// assert_eq!(options.get_owner(), Some("sync-worker-1"));
    /// ```
    pub fn owner(mut self, owner: impl Into<String>) -> Self {
        self.owner = Some(owner.into());
        self
    }

    /// Whether to drop (cancel) the body when its lease is lost. When set,
    /// [`SpaceLock::with_space_lock`](crate::SpaceLock::with_space_lock)
    /// returns [`Error::LockLost`](crate::Error::LockLost) in that case; when
    /// not set, the body only gets the signal through [`Lease::lost`](crate::Lease::lost)
    /// and [`Lease::is_lost`](crate::Lease::is_lost).
    ///
    /// Defaults to `false` (signal only).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use spacelock_client::Options;
    ///
    /// let options = Options::default().cancel_on_lost(true);
    /// assert!(options.get_cancel_on_lost());
    /// ```
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
    /// use std::time::Duration;
    /// use spacelock_client::Options;
    ///
    /// let options = Options::default().wait_connections(16);
    /// assert_eq!(options.get_wait_connections(), 16);
    /// ```
    pub fn wait_connections(mut self, n: usize) -> Self {
        self.wait_connections = n.max(1);
        self
    }

    /// The configured lease time to live.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use spacelock_client::Options;
    ///
    /// assert_eq!(Options::default().get_ttl(), Duration::from_secs(30));
    /// ```
    pub fn get_ttl(&self) -> Duration {
        self.ttl
    }

    /// The configured key prefix.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use spacelock_client::Options;
    ///
    /// assert_eq!(Options::default().get_key_prefix(), "spacelock:lock:");
    /// ```
    pub fn get_key_prefix(&self) -> &str {
        &self.key_prefix
    }

    /// The configured owner id, if one was set.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use spacelock_client::Options;
    ///
    /// assert_eq!(Options::default().get_owner(), None);
    /// ```
    pub fn get_owner(&self) -> Option<&str> {
        self.owner.as_deref()
    }

    /// Whether the body is cancelled when its lease is lost.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use spacelock_client::Options;
    ///
    /// assert!(!Options::default().get_cancel_on_lost());
    /// ```
    pub fn get_cancel_on_lost(&self) -> bool {
        self.cancel_on_lost
    }

    /// The configured size of the blocking-acquire connection pool.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use spacelock_client::Options;
    ///
    /// assert_eq!(Options::default().get_wait_connections(), 4);
    /// ```
    pub fn get_wait_connections(&self) -> usize {
        self.wait_connections
    }
}

/// A duration in whole milliseconds, rounded up, at least 1.
pub(crate) fn millis_ceil(d: Duration) -> u64 {
    let ms = d.as_nanos().div_ceil(1_000_000);
    u64::try_from(ms).unwrap_or(u64::MAX).max(1)
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
    }

    #[test]
    fn defaults() {
        let o = Options::default();
        assert_eq!(o.get_ttl(), DEFAULT_TTL);
        assert_eq!(o.get_key_prefix(), DEFAULT_KEY_PREFIX);
        assert_eq!(o.get_owner(), None);
        assert!(!o.get_cancel_on_lost());
        assert_eq!(o.get_wait_connections(), 4);
        assert_eq!(Options::new().wait_connections(0).get_wait_connections(), 1);
    }
}
