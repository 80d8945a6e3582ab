//! The crate's error type.

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
    /// A Redis command failed: connection, timeout or an error reply.
    #[error("redis error: {0}")]
    Redis(#[source] RedisError),
    /// The lease was lost while the body ran and `cancel_on_lost` dropped the body.
    #[error("lost the lock {key} while the body was running; the body was cancelled")]
    LockLost {
        /// The Redis key of the lost lock.
        key: String,
    },
    /// A blocking acquire was asked for, but no [`WaitConnector`](crate::WaitConnector) was given.
    #[error(
        "blocking acquire needs dedicated connections: call SpaceLock::with_wait_connector \
         (for example with a redis::Client) first"
    )]
    WaitNotConfigured,
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
    pub fn is_module_not_loaded(&self) -> bool {
        matches!(self, Error::ModuleNotLoaded { .. })
    }
}

impl From<RedisError> for Error {
    /// Classifies `ERR unknown command 'SPACELOCK.…'` as
    /// [`Error::ModuleNotLoaded`]; everything else is [`Error::Redis`].
    fn from(e: RedisError) -> Self {
        let text = e.to_string();
        let lower = text.to_ascii_lowercase();
        if lower.contains("unknown command") && lower.contains("spacelock.") {
            Error::ModuleNotLoaded { reply: text }
        } else {
            Error::Redis(e)
        }
    }
}
