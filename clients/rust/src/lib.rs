//! Async Rust client for the **spacelock** Redis/Valkey lease-lock module.
//!
//! [`SpaceLock::with_space_lock`] runs a body while holding a named lock,
//! like the TypeScript `SpaceLockService.withSpaceLock(spaceId, fn)` it
//! replaces, with that service's gaps closed:
//!
//! * an **in-process mutex** whose check-and-claim is atomic: two concurrent
//!   calls for one name in one process give exactly one run and one
//!   [`Skipped::InProgress`], never a [`Skipped::LockHeld`];
//! * a **lease in Redis** taken with `SPACELOCK.ACQUIRE`, which hands out a
//!   strictly increasing **fencing token** ([`Lease::token`]);
//! * a **heartbeat** refreshing every `ttl/3`, one background task per
//!   [`SpaceLock`] for all its leases, with a **lost signal**
//!   ([`Lease::lost`], [`Lease::is_lost`]) when a refresh answers `0` or no
//!   refresh has succeeded within the ttl (measured on a monotonic clock);
//! * **release on every path**: after the body, on panic (then the panic
//!   resumes) and on cancellation (the release is spawned onto the runtime);
//! * an optional blocking acquire ([`SpaceLock::with_space_lock_wait`]) that
//!   waits on the server instead of polling;
//! * **fault handling**: every command has the client's own deadline (a
//!   write pause is waited out, a dead server is not waited for forever);
//!   a dropped connection (restart, idle timeout, `CLIENT KILL`) is retried
//!   at once on a fresh one; a failed acquire never leaves a lock behind;
//! * optional **replica-acknowledged grants** ([`Options::replicas`]): each
//!   grant and each refresh is followed by `WAIT n` (or `WAITAOF`), the body
//!   starts only once `n` replicas have the grant, and a lease's deadline
//!   moves only on acknowledged refreshes, so that a failover to one of
//!   those replicas keeps the lock ([`Skipped::NotAcknowledged`] when too
//!   few acknowledge; see `docs/replication.md` for the exact guarantee);
//! * a typed [`Error::ModuleNotLoaded`] that says how to load the module.
//!
//! It runs over redis-rs' [`ConnectionManager`](redis::aio::ConnectionManager),
//! [`MultiplexedConnection`](redis::aio::MultiplexedConnection), a cluster
//! [`ClusterConnection`](redis::cluster_async::ClusterConnection) (see
//! [`LockConnection`]), or, with the `sentinel` feature (on by default), a
//! [`SentinelConnection`] that follows the primary of a Sentinel-monitored
//! service through a failover (see [Sentinel](#sentinel)).
//!
//! # Examples
//!
//! ```no_run
//! use std::time::Duration;
//! use spacelock_client::{Lease, Options, Outcome, Skipped, SpaceLock};
//!
//! async fn do_the_sync(token: u64) -> Result<(), std::io::Error> {
//!     println!("syncing under fencing token {token}");
//!     Ok(())
//! }
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let redis = redis::Client::open("redis://127.0.0.1:6379/")?;
//!     let options = Options::default()
//!         .ttl(Duration::from_secs(30))
//!         .key_prefix("git-sync:lock:");
//!     // No response timeout (the client sets its own deadlines), and a
//!     // capped reconnect backoff, so the first call after an outage gets
//!     // through (see the crate README).
//!     let config = redis::aio::ConnectionManagerConfig::new()
//!         .set_response_timeout(None)
//!         .set_max_delay(Duration::from_millis(500));
//!     let conn = redis::aio::ConnectionManager::new_with_config(redis, config).await?;
//!     let locks = SpaceLock::new(conn, options);
//!     match locks
//!         .with_space_lock("space-42", |lease: Lease| async move {
//!             do_the_sync(lease.token()).await
//!         })
//!         .await?
//!     {
//!         Outcome::Ran(result) => result?,
//!         Outcome::Skipped(Skipped::LockHeld) => println!("another instance holds it"),
//!         Outcome::Skipped(Skipped::InProgress) => println!("this instance is already running it"),
//!         Outcome::Skipped(other) => println!("skipped: {other}"),
//!     }
//!     Ok(())
//! }
//! ```
//!
//! # Sentinel
//!
//! Over redis-rs' `sentinel` support, [`SentinelConnection`] asks the
//! Sentinels for the current primary, and asks again when its connection
//! fails or the server answers as a replica (`READONLY`, `-UNBLOCKED`): the
//! client's retry then goes to the new primary. A lease whose grant the
//! promoted replica has goes on there; one whose grant it lacks is reported
//! lost (its refresh answers `0`). With [`Options::replicas`] set to the
//! number of replicas Sentinel can promote, every grant the body runs under
//! is on the promoted one.
//!
//! ```no_run
//! # #[cfg(feature = "sentinel")]
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use redis::sentinel::{SentinelClient, SentinelServerType};
//! use spacelock_client::{Options, SentinelConnection, SpaceLock};
//!
//! let sentinels = vec!["redis://10.0.0.1:26379/", "redis://10.0.0.2:26379/", "redis://10.0.0.3:26379/"];
//! let client = SentinelClient::build(sentinels, "mymaster".into(), None, SentinelServerType::Master)?;
//! let conn = SentinelConnection::new(client).await?;
//! let locks = SpaceLock::new(conn.clone(), Options::default().replicas(2))
//!     .with_wait_connector(conn);
//! # let _ = locks;
//! # Ok(()) }
//! ```
//!
//! # Loading the module
//!
//! The server needs `loadmodule /path/to/libspacelock.so` in its config (or
//! `MODULE LOAD /path/to/libspacelock.so` at runtime); otherwise every call
//! fails with [`Error::ModuleNotLoaded`].
#![deny(missing_docs)]
#![warn(rustdoc::broken_intra_doc_links)]

mod blocking_acquire;
mod conn;
mod error;
#[cfg(test)]
mod fake;
mod guard;
mod heartbeat;
mod inner;
mod lease;
mod lock;
mod options;
mod outcome;
mod primitives;
mod proto;
mod registry;
mod retry;
#[cfg(feature = "sentinel")]
mod sentinel;
mod shared;

pub use conn::{LockConnection, WaitConnection, WaitConnector};
pub use error::Error;
pub use lease::{Lease, LostReason};
pub use lock::SpaceLock;
pub use options::{
    Options, Settings, DEFAULT_KEY_PREFIX, DEFAULT_RELEASE_TIMEOUT, DEFAULT_REQUEST_TIMEOUT,
    DEFAULT_TTL, DEFAULT_WAIT_CONNECTIONS, DEFAULT_WAIT_GRACE, MIN_TTL,
};
pub use outcome::{
    AcquireReply, HolderInfo, LockInfo, LockMode, Outcome, RefreshReply, ReleaseReply, Skipped,
};
#[cfg(feature = "sentinel")]
pub use sentinel::SentinelConnection;
pub(crate) use shared::Mode;
pub use shared::Semaphore;
