//! The counters behind `INFO spacelock` (rendered by [`crate::info`]).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// A monotonically increasing counter.
pub struct Counter(AtomicU64);

impl Counter {
    const fn new() -> Self {
        Counter(AtomicU64::new(0))
    }
    /// Adds one.
    pub fn incr(&self) {
        self.0.fetch_add(1, Relaxed);
    }
    /// Current value.
    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

/// ACQUIRE calls that granted the lock at once.
pub static ACQUIRED: Counter = Counter::new();
/// ACQUIRE calls answered nil because the key was held.
pub static ACQUIRE_CONTENDED: Counter = Counter::new();
/// REFRESH calls that extended the lease.
pub static REFRESHED: Counter = Counter::new();
/// REFRESH calls answered 0.
pub static REFRESH_NOT_OWNER: Counter = Counter::new();
/// RELEASE calls that deleted the lock.
pub static RELEASED: Counter = Counter::new();
/// RELEASE calls answered 0.
pub static RELEASE_NOT_OWNER: Counter = Counter::new();
/// Grants delivered to a waiting client.
pub static HANDOFFS: Counter = Counter::new();
/// WAIT calls answered nil at their deadline.
pub static WAIT_TIMEOUTS: Counter = Counter::new();
/// Grants undone because their client was gone before the reply.
pub static WAIT_GRANTS_UNDONE: Counter = Counter::new();
/// Grants that no longer stood when their reply was due (answered nil).
pub static WAIT_GRANTS_LOST: Counter = Counter::new();
/// SPACELOCK.CHECK calls answered 1.
pub static CHECKS_PASSED: Counter = Counter::new();
/// SPACELOCK.CHECK calls answered 0.
pub static CHECKS_FAILED: Counter = Counter::new();
