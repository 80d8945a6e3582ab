//! [`SentinelConnection`]: a [`LockConnection`] to whichever server Redis
//! Sentinel names as the primary, re-resolved after a failover.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::future::BoxFuture;
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::sentinel::SentinelClient;
use redis::{Cmd, Pipeline, RedisError, RedisFuture, RedisResult, Value};

use crate::conn::{LockConnection, WaitConnection, WaitConnector};

/// A shared connection to the primary of a Sentinel-monitored service,
/// which follows the primary through a failover.
///
/// It asks Sentinel for the current primary (redis-rs' `sentinel` support,
/// which also checks the server's `ROLE`) whenever it has no connection, and
/// drops its connection when that connection fails or the server answers as
/// one that is no longer the primary: `READONLY` (a demoted primary refuses
/// the lock commands, which are writes), `UNBLOCKED` (a blocking acquire
/// ended by the demotion), `MASTERDOWN`, or a `WAIT` refused on a replica.
/// The failed command comes back as a connection error (the command was not
/// applied), which the client retries at once on a connection to the primary
/// Sentinel names now: a lease whose grant reached the promoted replica goes
/// on being refreshed there, and one whose grant did not is reported lost
/// (its refresh answers `0`). Grants acknowledged by the replicas that can
/// be promoted ([`Options::replicas`](crate::Options::replicas)) are the
/// ones that survive a failover.
///
/// Until Sentinel has re-pointed the old primary at the new one, the old
/// one still answers `ROLE` as a primary, and a new connection may still
/// land on it (redis-rs reads `SENTINEL MASTERS`): two primaries for a few
/// seconds. Grants acknowledged by all promotable replicas make that
/// window safe: the old primary lost the replica that was promoted, so it
/// cannot collect the acknowledgements, and its grants are released and
/// reported as [`Skipped::NotAcknowledged`](crate::Skipped::NotAcknowledged).
///
/// It is also a [`WaitConnector`]: each blocking acquire gets its own
/// connection to the current primary. Clones share the connection.
///
/// Needs the crate's `sentinel` feature.
///
/// # Examples
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use redis::sentinel::{SentinelClient, SentinelServerType};
/// use spacelock_client::{Options, SentinelConnection, SpaceLock};
///
/// let sentinels = vec!["redis://10.0.0.1:26379/", "redis://10.0.0.2:26379/"];
/// let client = SentinelClient::build(sentinels, "mymaster".into(), None, SentinelServerType::Master)?;
/// let conn = SentinelConnection::new(client).await?;
/// let locks = SpaceLock::new(conn.clone(), Options::default().replicas(2)).with_wait_connector(conn);
/// # let _ = locks;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct SentinelConnection {
    shared: Arc<Shared>,
}

struct Shared {
    sentinel: tokio::sync::Mutex<SentinelClient>,
    /// The connection in use, with its generation (so that a failure on an
    /// older connection does not drop a newer one).
    current: Mutex<Option<(u64, MultiplexedConnection)>>,
    generation: AtomicU64,
}

impl std::fmt::Debug for SentinelConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SentinelConnection").finish_non_exhaustive()
    }
}

/// No response timeout: the client puts its own deadline on every command.
fn config() -> redis::AsyncConnectionConfig {
    redis::AsyncConnectionConfig::new().set_response_timeout(None)
}

impl SentinelConnection {
    /// Connects to the primary that `client`'s Sentinels name now. Build
    /// `client` with [`SentinelServerType::Master`](redis::sentinel::SentinelServerType::Master).
    ///
    /// # Errors
    ///
    /// If no Sentinel answers, none knows the service, or its primary cannot
    /// be reached (or does not answer `ROLE` as a primary).
    ///
    /// # Cancel safety
    ///
    /// Dropping the future abandons the attempt; nothing is leaked.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo() -> redis::RedisResult<()> {
    /// use redis::sentinel::{SentinelClient, SentinelServerType};
    /// let client = SentinelClient::build(
    ///     vec!["redis://127.0.0.1:26379/"],
    ///     "mymaster".into(),
    ///     None,
    ///     SentinelServerType::Master,
    /// )?;
    /// let conn = spacelock_client::SentinelConnection::new(client).await?;
    /// # let _ = conn;
    /// # Ok(()) }
    /// ```
    pub async fn new(client: SentinelClient) -> RedisResult<Self> {
        let this = SentinelConnection {
            shared: Arc::new(Shared {
                sentinel: tokio::sync::Mutex::new(client),
                current: Mutex::new(None),
                generation: AtomicU64::new(0),
            }),
        };
        this.connection().await?;
        Ok(this)
    }

    /// The connection in use, or a new one to the primary Sentinel names now.
    async fn connection(&self) -> RedisResult<(u64, MultiplexedConnection)> {
        if let Some(c) = self.current().clone() {
            return Ok(c);
        }
        let mut sentinel = self.shared.sentinel.lock().await;
        // Another caller may have connected while this one waited.
        if let Some(c) = self.current().clone() {
            return Ok(c);
        }
        let conn = sentinel.get_async_connection_with_config(&config()).await?;
        drop(sentinel);
        let generation = self.shared.generation.fetch_add(1, Ordering::Relaxed) + 1;
        *self.current() = Some((generation, conn.clone()));
        Ok((generation, conn))
    }

    fn current(&self) -> std::sync::MutexGuard<'_, Option<(u64, MultiplexedConnection)>> {
        self.shared
            .current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Forgets connection `generation` (if still in use): the next command
    /// asks Sentinel again.
    fn forget(&self, generation: u64) {
        let mut current = self.current();
        if current.as_ref().is_some_and(|(g, _)| *g == generation) {
            *current = None;
            tracing::info!("spacelock: dropping the connection to the primary; asking Sentinel for the current one");
        }
    }
}

/// Whether an error means the server is not (or no longer) the primary, or
/// the connection is gone: then the connection is dropped and re-resolved.
fn not_the_primary(e: &RedisError) -> bool {
    if e.is_io_error() || e.is_connection_dropped() || e.is_unrecoverable_error() {
        return true;
    }
    let code = e.code().unwrap_or_default();
    let text = e.to_string();
    matches!(code, "READONLY" | "UNBLOCKED" | "MASTERDOWN")
        || text.contains("READONLY")
        || text.contains("UNBLOCKED")
        || text.contains("cannot be used with replica instances")
}

/// A reply from a server that is not the primary becomes a connection error
/// (the command was refused, not applied), so that it is retried on the
/// primary; other replies pass unchanged.
fn classify(result: RedisResult<Value>) -> Result<Value, RedisError> {
    match result {
        Ok(Value::ServerError(se)) => {
            let e = RedisError::from(se.clone());
            if not_the_primary(&e) {
                Err(demoted(&e))
            } else {
                Ok(Value::ServerError(se))
            }
        }
        Ok(v) => Ok(v),
        Err(e) if !e.is_io_error() && not_the_primary(&e) => Err(demoted(&e)),
        Err(e) => Err(e),
    }
}

fn demoted(e: &RedisError) -> RedisError {
    std::io::Error::new(
        std::io::ErrorKind::ConnectionReset,
        format!(
            "the server is not the primary any more ({e}); asking Sentinel for the current one"
        ),
    )
    .into()
}

impl ConnectionLike for SentinelConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let (generation, mut conn) = self.connection().await?;
            let result = classify(conn.req_packed_command(cmd).await);
            if let Err(e) = &result {
                if not_the_primary(e) {
                    self.forget(generation);
                }
            }
            result
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let (generation, mut conn) = self.connection().await?;
            let result = conn
                .req_packed_commands(pipeline, offset, count)
                .await
                .and_then(|values| {
                    values
                        .into_iter()
                        .map(|v| classify(Ok(v)))
                        .collect::<RedisResult<Vec<Value>>>()
                })
                .map_err(|e| {
                    if !e.is_io_error() && not_the_primary(&e) {
                        demoted(&e)
                    } else {
                        e
                    }
                });
            if let Err(e) = &result {
                if not_the_primary(e) {
                    self.forget(generation);
                }
            }
            result
        })
    }

    fn get_db(&self) -> i64 {
        0
    }
}

impl LockConnection for SentinelConnection {}

/// A dedicated connection for one blocking acquire, which turns a refusal
/// by a demoted primary into a connection error (retried on the new one).
struct Dedicated(MultiplexedConnection);

impl ConnectionLike for Dedicated {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move { classify(self.0.req_packed_command(cmd).await) })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let values = self.0.req_packed_commands(pipeline, offset, count).await?;
            values.into_iter().map(|v| classify(Ok(v))).collect()
        })
    }

    fn get_db(&self) -> i64 {
        self.0.get_db()
    }
}

impl WaitConnector for SentinelConnection {
    fn connect(&self) -> BoxFuture<'_, RedisResult<WaitConnection>> {
        Box::pin(async move {
            let mut sentinel = self.shared.sentinel.lock().await;
            let conn = sentinel.get_async_connection_with_config(&config()).await?;
            Ok(WaitConnection::new(Dedicated(conn)))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server_error(bytes: &[u8]) -> Value {
        redis::parse_redis_value(bytes).unwrap()
    }

    #[test]
    fn refusals_by_a_replica_become_connection_errors() {
        for reply in [
            &b"-READONLY You can't write against a read only replica.\r\n"[..],
            b"-UNBLOCKED force unblock from blocking operation, instance state changed (master -> replica?)\r\n",
            b"-MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'.\r\n",
            b"-ERR WAIT cannot be used with replica instances. Please also note that since Redis 4.0 if a replica is configured to be writable (which is not the default) writes to replicas are just local and are not propagated.\r\n",
        ] {
            let e = classify(Ok(server_error(reply))).unwrap_err();
            assert!(e.is_io_error(), "{e:?}");
            assert!(not_the_primary(&e));
        }
        let other = server_error(b"-ERR invalid ttl\r\n");
        assert_eq!(classify(Ok(other.clone())).unwrap(), other);
        assert_eq!(classify(Ok(Value::Int(1))).unwrap(), Value::Int(1));
    }
}
