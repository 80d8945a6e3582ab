//! The process's token term (see `spacelock_core::tokens`): opened at load,
//! when the server becomes a primary, and by `SPACELOCK.NEWTERM`.

use std::sync::{Mutex, MutexGuard};

use spacelock_core::tokens::Terms;

// A plain static, not `thread_local!` (see `crate::handoff`).
static TERMS: Mutex<Terms> = Mutex::new(Terms::UNOPENED);

fn lock() -> MutexGuard<'static, Terms> {
    crate::sync::lock(&TERMS)
}

/// Opens a new term at `now_ms` (the first one at load) and returns it.
pub fn open(now_ms: i64) -> Terms {
    let mut terms = lock();
    terms.open(now_ms);
    *terms
}

/// Runs `f` on the term state. Never held across anything that could call
/// back into it (grants run with keyspace events muted, see
/// `crate::handoff::SelfWrites`).
pub fn with<R>(f: impl FnOnce(&mut Terms) -> R) -> R {
    f(&mut lock())
}

/// The term state for INFO, if it is not busy (INFO may run in a crash
/// report while it is held).
pub fn snapshot() -> Option<Terms> {
    crate::sync::try_lock(&TERMS).map(|t| *t)
}

/// The first clock reading (ms) at which a module loaded afresh opens a term
/// above every token of this load (see `Terms::fresh_start_safe_ms`).
pub fn fresh_start_safe_ms() -> i64 {
    lock().fresh_start_safe_ms()
}
