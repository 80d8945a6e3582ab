//! Counters for `INFO spacelock`. Field names are a public contract
//! (dashboards rely on them); the server prefixes each with `spacelock_`.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::ffi::InfoCtx;

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

/// ACQUIRE calls that granted the lock.
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
/// Locks passed directly to a waiting client.
pub static HANDOFFS: Counter = Counter::new();
/// WAIT calls that timed out.
pub static WAIT_TIMEOUTS: Counter = Counter::new();

/// Renders the section.
pub fn render(info: &mut InfoCtx) {
    info.section();
    info.field(c"acquired", ACQUIRED.get());
    info.field(c"acquire_contended", ACQUIRE_CONTENDED.get());
    info.field(c"refreshed", REFRESHED.get());
    info.field(c"refresh_not_owner", REFRESH_NOT_OWNER.get());
    info.field(c"released", RELEASED.get());
    info.field(c"release_not_owner", RELEASE_NOT_OWNER.get());
    info.field(c"handoffs", HANDOFFS.get());
    info.field(c"wait_timeouts", WAIT_TIMEOUTS.get());
    let (clients, keys) = crate::wait::gauges();
    info.field(c"waiting_clients", clients);
    info.field(c"keys_with_waiters", keys);
}
