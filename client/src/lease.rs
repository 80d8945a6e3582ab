//! The [`Lease`] handed to a locked body.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// A held lock, as seen by the body running under it.
///
/// Cheap to clone. The lease stays valid while the heartbeat keeps
/// refreshing it; when it is lost, [`Lease::lost`] resolves and
/// [`Lease::is_lost`] turns true. After the body returns and the lock is
/// released, the lease also counts as lost.
///
/// # Examples
///
/// ```no_run
/// # async fn demo(locks: spacelock_client::SpaceLock<redis::aio::ConnectionManager>) -> Result<(), spacelock_client::Error> {
/// locks
///     .with_space_lock("space-42", |lease| async move {
///         println!("holding {} with token {}", lease.key(), lease.token());
///         tokio::select! {
///             _ = lease.lost() => eprintln!("lost the lock, stopping early"),
///             _ = tokio::time::sleep(std::time::Duration::from_secs(5)) => {}
///         }
///     })
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Lease {
    inner: Arc<LeaseInner>,
}

#[derive(Debug)]
struct LeaseInner {
    name: String,
    key: String,
    token: u64,
    ttl: Duration,
    lost: CancellationToken,
}

impl Lease {
    pub(crate) fn new(
        name: &str,
        key: String,
        token: u64,
        ttl: Duration,
        lost: CancellationToken,
    ) -> Self {
        Lease {
            inner: Arc::new(LeaseInner {
                name: name.to_string(),
                key,
                token,
                ttl,
                lost,
            }),
        }
    }

    /// The fencing token of this grant: strictly greater than every token
    /// issued before for the same key. Pass it to the protected resource so
    /// it can reject writes from a holder whose lease has expired.
    pub fn token(&self) -> u64 {
        self.inner.token
    }

    /// The Redis key of the lock: the key prefix followed by the name.
    pub fn key(&self) -> &str {
        &self.inner.key
    }

    /// The lock name as given to `with_space_lock` (without the prefix).
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The time to live the lease is refreshed with.
    pub fn ttl(&self) -> Duration {
        self.inner.ttl
    }

    /// Whether the lease has been lost (or released). Once true, stays true.
    pub fn is_lost(&self) -> bool {
        self.inner.lost.is_cancelled()
    }

    /// Resolves when the lease is lost: a refresh answered `0` (the key
    /// expired, was deleted or has another owner), or no refresh succeeded
    /// within the ttl. Also resolves once the lock has been released.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping the future has no effect, and a later call
    /// resolves just the same.
    pub async fn lost(&self) {
        self.inner.lost.cancelled().await
    }

    /// A token that is cancelled when the lease is lost, for use with APIs
    /// that take a [`CancellationToken`]. Cancelling it yourself does not
    /// affect the lease.
    pub fn lost_token(&self) -> CancellationToken {
        self.inner.lost.child_token()
    }
}
