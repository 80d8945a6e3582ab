//! The process's token term (see `spacelock_core::tokens`): opened at load,
//! when the server becomes a primary, and by `SPACELOCK.NEWTERM`.

use std::sync::{Mutex, MutexGuard};

use spacelock_core::tokens::Terms;

// A plain static, not `thread_local!` (see `crate::wait`).
static TERMS: Mutex<Option<Terms>> = Mutex::new(None);

fn lock() -> MutexGuard<'static, Option<Terms>> {
    TERMS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Opens a new term at `now_ms` (the first one at load).
pub fn open(now_ms: i64) -> Terms {
    let mut terms = lock();
    match terms.as_mut() {
        Some(t) => t.open(now_ms),
        None => *terms = Some(Terms::open_at(now_ms)),
    }
    terms.unwrap_or_else(|| Terms::open_at(now_ms))
}

/// Runs `f` on the term state. Never held across anything that could call
/// back into it (grants run with keyspace events muted, see
/// `crate::wait::SelfWrites`).
pub fn with<R>(now_ms: i64, f: impl FnOnce(&mut Terms) -> R) -> R {
    f(lock().get_or_insert_with(|| Terms::open_at(now_ms)))
}

/// The term state for INFO, if it is not busy (INFO may run in a crash
/// report while it is held).
pub fn snapshot() -> Option<Terms> {
    TERMS.try_lock().ok().and_then(|t| *t)
}
