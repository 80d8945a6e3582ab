//! What the server process remembers between commands (see
//! `spacelock_core::lock::Process`): the token terms, opened at load, when
//! the server becomes a primary and by `SPACELOCK.NEWTERM`, and the ledger
//! of the grants the module wrote.

use std::sync::{Mutex, MutexGuard};

use spacelock_core::lock::Process;
use spacelock_core::shared::SharedIndex;

// A plain static, not `thread_local!` (see `crate::handoff`).
static PROCESS: Mutex<Process> = Mutex::new(Process::NEW);

/// The holders of shared and counted keys: a cache of their hashes (see
/// `spacelock_core::shared::SharedIndex`). Always locked after `PROCESS`.
static SHARED: Mutex<SharedIndex> = Mutex::new(SharedIndex::new());

fn lock() -> MutexGuard<'static, Process> {
    crate::sync::lock(&PROCESS)
}

/// A term, as logged and replied.
#[derive(Debug, Clone, Copy)]
pub struct Term {
    /// Its start, ms since the epoch.
    pub start_ms: i64,
    /// Its floor: every later grant issues at least this.
    pub floor: i64,
}

/// The process state for INFO.
#[derive(Debug, Clone, Copy)]
pub struct Summary {
    /// The current term.
    pub term: Term,
    /// The highest token of the current term.
    pub highest: i64,
    /// How much later another term must start to be above every token of
    /// this one.
    pub lead_ms: i64,
    /// Terms opened since load.
    pub opened: u64,
    /// Grants in the ledger.
    pub ledger_len: usize,
}

/// Opens a new term at `now_ms` (the first one at load) and returns it.
pub fn open_term(now_ms: i64) -> Term {
    let mut p = lock();
    p.terms.open(now_ms);
    Term {
        start_ms: p.terms.start_ms(),
        floor: p.terms.floor(),
    }
}

/// Runs `f` on the process state. Never held across anything that could
/// call back into it (grants run with keyspace events muted, see
/// `crate::handoff::SelfWrites`).
pub fn with<R>(f: impl FnOnce(&mut Process) -> R) -> R {
    f(&mut lock())
}

/// Asks the CPU for the process memory a command on `key` will read (see
/// `Process::lines_of`), so that it arrives while the server looks the
/// key up: on a server with many locks, both look-ups wait on memory, and
/// one after the other they would wait twice.
pub fn prefetch(key: &[u8], with_marks: bool) {
    let lines = lock().lines_of(key, with_marks);
    for (at, len) in lines.into_iter().flatten() {
        crate::ffi::prefetch(at, len);
    }
}

/// Runs `f` on the process state and the index of shared and counted
/// keys (locked in that order).
pub fn with_shared<R>(f: impl FnOnce(&mut Process, &mut SharedIndex) -> R) -> R {
    let mut p = lock();
    let mut index = crate::sync::lock(&SHARED);
    f(&mut p, &mut index)
}

/// Forgets the shared index of database `db`, or of all (`None`): after a
/// flush, `SWAPDB`, a full resync or an RDB load.
pub fn forget_shared(db: Option<i32>) {
    crate::sync::lock(&SHARED).forget_db(db);
}

/// The process state for INFO, if it is not busy (INFO may run in a crash
/// report while it is held).
pub fn snapshot() -> Option<Summary> {
    crate::sync::try_lock(&PROCESS).map(|p| Summary {
        term: Term {
            start_ms: p.terms.start_ms(),
            floor: p.terms.floor(),
        },
        highest: p.terms.highest(),
        lead_ms: p.terms.lead_ms(),
        opened: p.terms.opened(),
        ledger_len: p.ledger.len(),
    })
}

/// The first clock reading (ms) at which a module loaded afresh opens a term
/// above every token of this load (see `Terms::fresh_start_safe_ms`).
pub fn fresh_start_safe_ms() -> i64 {
    lock().terms.fresh_start_safe_ms()
}

/// Frees the process state before `MODULE UNLOAD` takes the code away (the
/// marks and the ledger live in the server's allocator, which would keep
/// them forever).
pub fn release_for_unload() {
    *lock() = Process::NEW;
    *crate::sync::lock(&SHARED) = SharedIndex::new();
}
