//! The crate's error type.

use std::time::Duration;

use redis::RedisError;

/// Everything that can go wrong when talking to the spacelock module.
///
/// Outcomes that are not failures, such as a lock held by someone else, are
/// not errors: they come back as [`Outcome::Skipped`](crate::Outcome::Skipped).
///
/// # Examples
///
/// ```no_run
/// # async fn demo(locks: spacelock_client::SpaceLock<redis::aio::ConnectionManager>) {
/// use spacelock_client::Error;
/// match locks.with_space_lock("space-42", |_lease| async {}).await {
///     Ok(outcome) => println!("{outcome:?}"),
///     Err(Error::ModuleNotLoaded { .. }) => eprintln!("load libspacelock.so into the server"),
///     Err(e) => eprintln!("redis trouble: {e}"),
/// }
/// # }
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The server does not know the `SPACELOCK.*` commands: the module is not loaded.
    #[error(
        "the spacelock module is not loaded on this server (it answered: {reply}); \
         load it at startup with `loadmodule /path/to/libspacelock.so` in redis.conf \
         (or `--loadmodule /path/to/libspacelock.so`), or at runtime with \
         `MODULE LOAD /path/to/libspacelock.so`"
    )]
    ModuleNotLoaded {
        /// The server's error reply, verbatim.
        reply: String,
    },
    /// A Redis command failed: connection, an error reply, or the
    /// connection's own response timeout.
    #[error("redis error: {0}")]
    Redis(#[source] RedisError),
    /// No reply came within the time the client allows for it (the
    /// connection may be fine but the server stalled, or the connection went
    /// dead without being closed). The command may still have been applied;
    /// a lock it could have granted was released before this was returned.
    #[error("no reply to {command} within {after:?}")]
    Timeout {
        /// The command that got no reply.
        command: &'static str,
        /// How long the client waited, retries included.
        after: Duration,
    },
    /// The lease was lost: while the body ran, with
    /// [`Options::cancel_on_lost`](crate::Options::cancel_on_lost) set (the
    /// body was dropped), or before the body could start (a grant that had
    /// already expired when the client confirmed it, e.g. because this
    /// process was stopped while it waited).
    #[error("lost the lock {key}; the body was cancelled or never started")]
    LockLost {
        /// The Redis key of the lost lock.
        key: String,
    },
    /// An argument the client refuses before sending anything: an empty lock
    /// name, or a ttl below [`MIN_TTL`](crate::MIN_TTL).
    #[error("invalid argument: {reason}")]
    InvalidArgument {
        /// What is wrong.
        reason: String,
    },
    /// A blocking acquire was asked for, but no [`WaitConnector`](crate::WaitConnector) was given.
    #[error(
        "blocking acquire needs dedicated connections: call SpaceLock::with_wait_connector \
         (for example with a redis::Client) first"
    )]
    WaitNotConfigured,
    /// [`Options::wait_aof`](crate::Options::wait_aof) is set, but the server
    /// cannot run `WAITAOF`: it has no such command (Redis before 7.2) or its
    /// append-only file is off (`appendonly no`). Nothing ran; a grant taken
    /// before the `WAITAOF` failed was released.
    #[error(
        "WAITAOF is not available on this server (it answered: {reply}); \
         it needs Redis 7.2 or later, or Valkey, with `appendonly yes`"
    )]
    WaitAofUnavailable {
        /// The server's error reply, verbatim.
        reply: String,
    },
    /// The lock is of another kind than the request (`WRONGMODE`): a
    /// [`Semaphore`](crate::Semaphore) asked for a name used as a
    /// reader-writer lock (exclusive or shared), with another number of
    /// permits, or a shared or exclusive lock asked for a name used as a
    /// semaphore. Nothing changed on the server, and nothing ran.
    #[error("wrong lock mode: {reply}")]
    WrongMode {
        /// The server's error reply, verbatim (it names both modes).
        reply: String,
    },
    /// The server answered a spacelock command with a reply of an unexpected shape.
    #[error("unexpected reply to {command}: {reply}")]
    UnexpectedReply {
        /// The command that was sent.
        command: &'static str,
        /// The reply, as debug text.
        reply: String,
    },
}

impl Error {
    /// Whether this is [`Error::ModuleNotLoaded`].
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(locks: spacelock_client::SpaceLock<redis::aio::ConnectionManager>) {
    /// if let Err(e) = locks.acquire("space-42").await {
    ///     if e.is_module_not_loaded() {
    ///         eprintln!("{e}"); // says how to load the module
    ///     }
    /// }
    /// # }
    /// ```
    #[must_use]
    pub fn is_module_not_loaded(&self) -> bool {
        matches!(self, Error::ModuleNotLoaded { .. })
    }

    /// Whether the server (or the network) did not answer: an I/O or
    /// connection error, or no reply in time ([`Error::Timeout`], or the
    /// connection's own response timeout). The server may be restarting,
    /// paused or unreachable; the command may or may not have been applied.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(locks: spacelock_client::SpaceLock<redis::aio::ConnectionManager>) {
    /// if let Err(e) = locks.acquire("space-42").await {
    ///     if e.is_unavailable() {
    ///         eprintln!("redis is unreachable: {e}");
    ///     }
    /// }
    /// # }
    /// ```
    #[must_use]
    pub fn is_unavailable(&self) -> bool {
        match self {
            Error::Timeout { .. } => true,
            Error::Redis(e) => e.is_io_error(),
            _ => false,
        }
    }
}

impl From<RedisError> for Error {
    /// Classifies `ERR unknown command 'SPACELOCK.…'` as
    /// [`Error::ModuleNotLoaded`], a `WRONGMODE …` reply as
    /// [`Error::WrongMode`]; everything else is [`Error::Redis`].
    fn from(e: RedisError) -> Self {
        if e.code() == Some("WRONGMODE") {
            return Error::WrongMode {
                reply: e.to_string(),
            };
        }
        let text = e.to_string();
        let lower = text.to_ascii_lowercase();
        if lower.contains("unknown command") && lower.contains("spacelock.") {
            Error::ModuleNotLoaded { reply: text }
        } else {
            Error::Redis(e)
        }
    }
}
