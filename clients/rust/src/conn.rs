//! The connections a [`SpaceLock`](crate::SpaceLock) runs its commands on.

use std::sync::{Arc, Mutex};

use futures_util::future::BoxFuture;
use redis::aio::ConnectionLike;
use redis::{Cmd, RedisFuture, RedisResult, Value};
use tokio::sync::Semaphore;

/// A shared async connection that runs each command on the node that owns the
/// command's key.
///
/// Every `SPACELOCK.*` command has its key as `argv[1]`. redis-rs' cluster
/// client routes commands it does not know by their first argument, so a
/// [`ClusterConnection`](redis::cluster_async::ClusterConnection) sends each
/// lock command to the shard owning its key; single-node connections have one
/// node to send to.
///
/// Implemented for [`ConnectionManager`](redis::aio::ConnectionManager) (which
/// reconnects), [`MultiplexedConnection`](redis::aio::MultiplexedConnection)
/// and [`ClusterConnection`](redis::cluster_async::ClusterConnection). Clones
/// must share one underlying connection (pipelining), as those three do; the
/// heartbeat clones the connection for each refresh it sends. A pipeline must
/// go out whole on one connection (a cluster connection sends it to the node
/// of its first key): with [`Options::replicas`](crate::Options::replicas)
/// the client pipelines each ACQUIRE or REFRESH with its `WAIT`.
///
/// After a dropped connection (a server restart, an idle timeout in a load
/// balancer), the client retries its commands at once: over a
/// `ConnectionManager` or a `ClusterConnection` the retry goes out on the
/// fresh connection they open. A `MultiplexedConnection` never reconnects,
/// so once its connection is gone every command fails; use it only where
/// that is acceptable. The client puts its own deadline on every command,
/// so a connection without a response timeout is best
/// (`ConnectionManagerConfig::set_response_timeout(None)`, with the
/// reconnect backoff capped by `set_max_delay(500 ms)` so the first command
/// after an outage is not held by a multi-second reconnect sleep): with redis-rs'
/// default of 500 ms, a command the server holds during a write pause times
/// out and is sent again, which still works (the retry queues behind the
/// original on the same connection) but costs a round trip per 500 ms.
///
/// # Examples
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use spacelock_client::{Options, SpaceLock};
///
/// let nodes = vec!["redis://127.0.0.1:7000/", "redis://127.0.0.1:7001/"];
/// let cluster = redis::cluster::ClusterClient::new(nodes)?;
/// let locks = SpaceLock::new(cluster.get_async_connection().await?, Options::default());
/// # let _ = locks;
/// # Ok(()) }
/// ```
pub trait LockConnection: ConnectionLike + Clone + Send + Sync + 'static {
    /// The pipeline group of a key: refreshes that fall due together are
    /// sent as one pipeline per group. Single-node connections put every key
    /// in group 0 (the default); cluster connections return the key's hash
    /// slot, because a cluster pipeline must stay within one slot.
    ///
    /// # Examples
    ///
    /// ```
    /// use spacelock_client::LockConnection;
    /// use redis::{aio::ConnectionManager, cluster_async::ClusterConnection};
    ///
    /// assert_eq!(ConnectionManager::pipeline_group(b"foo"), 0);
    /// assert_eq!(ClusterConnection::pipeline_group(b"foo"), 12182); // CLUSTER KEYSLOT foo
    /// ```
    fn pipeline_group(key: &[u8]) -> u16 {
        let _ = key;
        0
    }
}

impl LockConnection for redis::aio::ConnectionManager {}
impl LockConnection for redis::aio::MultiplexedConnection {}
impl LockConnection for redis::cluster_async::ClusterConnection {
    fn pipeline_group(key: &[u8]) -> u16 {
        spacelock_core::fence::key_slot(key)
    }
}

/// Object-safe view of a connection (for the blocking pool).
trait DynConn: Send {
    fn req<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value>;
}

impl<T: ConnectionLike + Send> DynConn for T {
    fn req<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        self.req_packed_command(cmd)
    }
}

/// A dedicated connection for blocking commands, made by a [`WaitConnector`].
///
/// Blocking commands stop the server from reading anything else on their
/// connection, so a blocking `SPACELOCK.ACQUIRE … WAIT` must never share the
/// multiplexed connection that carries heartbeats. A `WaitConnection` is
/// used by one blocking call at a time and must not time responses out
/// before the wait ends (the client applies its own deadline: the wait's
/// timeout plus [`Options::wait_grace`](crate::Options::wait_grace)).
/// Dropping it must close the connection: that is how an abandoned wait
/// leaves the server's queue. It must not reconnect by itself either: with
/// [`Options::replicas`](crate::Options::replicas), the `WAIT` after a grant
/// must go out on the connection that got the grant (on a fresh connection
/// it would count the replicas' acknowledgements of nothing).
pub struct WaitConnection {
    conn: Box<dyn DynConn>,
    /// For a cluster: the same connection, to send a command to the
    /// primary of a given key's slot (redis-rs routes a keyless `WAIT` to
    /// every primary).
    cluster: Option<redis::cluster_async::ClusterConnection>,
}

impl WaitConnection {
    /// Wraps any async redis-rs connection.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo() -> redis::RedisResult<()> {
    /// use spacelock_client::WaitConnection;
    /// let client = redis::Client::open("redis://127.0.0.1/")?;
    /// let config = redis::AsyncConnectionConfig::new().set_response_timeout(None);
    /// let conn = WaitConnection::new(client.get_multiplexed_async_connection_with_config(&config).await?);
    /// # let _ = conn;
    /// # Ok(()) }
    /// ```
    pub fn new<C: ConnectionLike + Send + 'static>(conn: C) -> Self {
        WaitConnection {
            conn: Box::new(conn),
            cluster: None,
        }
    }

    /// Wraps a cluster connection: the `WAIT` that acknowledges a grant
    /// goes to the primary of the granted key's slot, on the connection
    /// that got the grant, and to no other shard. ([`new`](Self::new) on a
    /// cluster connection would let redis-rs send that `WAIT` to every
    /// primary and take the fewest acknowledgements: never a false
    /// acknowledgement, but a failover on another shard would fail it.)
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo() -> redis::RedisResult<()> {
    /// use spacelock_client::WaitConnection;
    /// let client = redis::cluster::ClusterClient::new(vec!["redis://127.0.0.1:7000/"])?;
    /// let conn = WaitConnection::cluster(client.get_async_connection().await?);
    /// # let _ = conn;
    /// # Ok(()) }
    /// ```
    pub fn cluster(conn: redis::cluster_async::ClusterConnection) -> Self {
        WaitConnection {
            conn: Box::new(conn.clone()),
            cluster: Some(conn),
        }
    }

    pub(crate) fn req<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        self.conn.req(cmd)
    }

    /// `cmd` (which names no key) on the node that serves `key`: the
    /// primary of its slot on a cluster, the one node otherwise.
    pub(crate) fn req_for_key<'a>(&'a mut self, cmd: &'a Cmd, key: &str) -> RedisFuture<'a, Value> {
        use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
        match self.cluster.as_mut() {
            Some(c) => {
                let slot = spacelock_core::fence::key_slot(key.as_bytes());
                let route = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(
                    Route::new(slot, SlotAddr::Master),
                ));
                Box::pin(c.route_command(cmd.clone(), route))
            }
            None => self.conn.req(cmd),
        }
    }
}

impl std::fmt::Debug for WaitConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WaitConnection")
    }
}

/// Opens dedicated connections for blocking acquires
/// ([`SpaceLock::with_space_lock_wait`](crate::SpaceLock::with_space_lock_wait)).
///
/// Implemented for [`redis::Client`] (one multiplexed connection with no
/// response timeout per call) and for
/// [`redis::cluster::ClusterClient`] (one cluster connection per call, which
/// routes by key). Implement it to add authentication, TLS or other setup.
///
/// # Examples
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use spacelock_client::{Options, SpaceLock};
///
/// let client = redis::Client::open("redis://127.0.0.1/")?;
/// let manager = redis::aio::ConnectionManager::new(client.clone()).await?;
/// let locks = SpaceLock::new(manager, Options::default()).with_wait_connector(client);
/// # let _ = locks;
/// # Ok(()) }
/// ```
pub trait WaitConnector: Send + Sync + 'static {
    /// Opens one new connection.
    ///
    /// # Errors
    ///
    /// Whatever the connection attempt fails with.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future abandons the attempt; nothing is leaked.
    fn connect(&self) -> BoxFuture<'_, RedisResult<WaitConnection>>;
}

impl WaitConnector for redis::Client {
    fn connect(&self) -> BoxFuture<'_, RedisResult<WaitConnection>> {
        Box::pin(async move {
            let config = redis::AsyncConnectionConfig::new().set_response_timeout(None);
            let conn = self
                .get_multiplexed_async_connection_with_config(&config)
                .await?;
            Ok(WaitConnection::new(conn))
        })
    }
}

impl WaitConnector for redis::cluster::ClusterClient {
    fn connect(&self) -> BoxFuture<'_, RedisResult<WaitConnection>> {
        Box::pin(async move {
            // The pool puts its own deadline on every wait; the connection's
            // response timeout must not end a wait early.
            let config = redis::cluster::ClusterConfig::new()
                .set_response_timeout(std::time::Duration::from_secs(365 * 24 * 3600));
            let conn = self.get_async_connection_with_config(config).await?;
            Ok(WaitConnection::cluster(conn))
        })
    }
}

/// A bounded pool of dedicated connections for blocking commands.
///
/// A connection goes back to the pool only after a command on it was
/// answered; one that failed (or whose command was abandoned) is dropped,
/// so the next wait opens a fresh one.
pub(crate) struct WaitPool {
    connector: Box<dyn WaitConnector>,
    idle: Mutex<Vec<WaitConnection>>,
    permits: Arc<Semaphore>,
}

/// A connection checked out of the pool, with its permit.
pub(crate) struct PooledConn {
    pub(crate) conn: WaitConnection,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

/// What [`WaitPool::checkout`] got.
pub(crate) enum Checkout {
    /// A connection: an idle one, or a fresh one.
    Got(PooledConn),
    /// No slot came free, or the connection attempt did not finish, before
    /// the deadline.
    NotInTime,
    /// Opening a connection failed.
    Failed(redis::RedisError),
}

impl WaitPool {
    pub(crate) fn new(connector: Box<dyn WaitConnector>, size: usize) -> Self {
        WaitPool {
            connector,
            idle: Mutex::new(Vec::new()),
            permits: Arc::new(Semaphore::new(size.max(1))),
        }
    }

    /// Waits for a free slot, then reuses an idle connection or opens one,
    /// all before `deadline`.
    pub(crate) async fn checkout(&self, deadline: tokio::time::Instant) -> Checkout {
        let permit =
            match tokio::time::timeout_at(deadline, self.permits.clone().acquire_owned()).await {
                Ok(Ok(permit)) => permit,
                // The semaphore is never closed.
                Ok(Err(_)) | Err(_) => return Checkout::NotInTime,
            };
        let idle = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let conn = match idle {
            Some(c) => c,
            None => match tokio::time::timeout_at(deadline, self.connector.connect()).await {
                Ok(Ok(c)) => c,
                Ok(Err(e)) => return Checkout::Failed(e),
                Err(_) => return Checkout::NotInTime,
            },
        };
        Checkout::Got(PooledConn {
            conn,
            _permit: permit,
        })
    }

    /// Returns a connection whose last command was answered, for reuse.
    pub(crate) fn checkin(&self, conn: PooledConn) {
        self.idle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(conn.conn);
    }
}
