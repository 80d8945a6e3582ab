//! Counters and gauges for `INFO spacelock`. Field names are a public
//! contract (dashboards rely on them); the server prefixes each with
//! `spacelock_`.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::ffi::{InfoCtx, InfoSection};

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

/// The `INFO spacelock` section.
pub struct ModuleInfo;

impl InfoSection for ModuleInfo {
    fn render(info: &mut InfoCtx, _for_crash_report: bool) {
        info.section();
        info.field(c"acquired", ACQUIRED.get());
        info.field(c"acquire_contended", ACQUIRE_CONTENDED.get());
        info.field(c"refreshed", REFRESHED.get());
        info.field(c"refresh_not_owner", REFRESH_NOT_OWNER.get());
        info.field(c"released", RELEASED.get());
        info.field(c"release_not_owner", RELEASE_NOT_OWNER.get());
        info.field(c"handoffs", HANDOFFS.get());
        info.field(c"wait_timeouts", WAIT_TIMEOUTS.get());
        info.field(c"wait_grants_undone", WAIT_GRANTS_UNDONE.get());
        info.field(c"wait_grants_lost", WAIT_GRANTS_LOST.get());
        let (clients, keys) = crate::wait::gauges();
        info.field(c"waiting_clients", clients);
        info.field(c"keys_with_waiters", keys);
        info.field(c"checks_passed", CHECKS_PASSED.get());
        info.field(c"checks_failed", CHECKS_FAILED.get());
        info.field_str(
            c"token_mode",
            match crate::config::token_mode() {
                spacelock_core::tokens::TokenMode::Term => c"term",
                spacelock_core::tokens::TokenMode::Counter => c"counter",
            },
        );
        if let Some(terms) = crate::terms::snapshot() {
            info.field_i64(c"term_start_ms", terms.start_ms());
            info.field_i64(c"token_floor", terms.next());
            info.field(c"terms_opened", terms.opened());
        }
    }
}
