//! Locks on the module's shared state that survive a caught panic.
//!
//! Every entry point catches panics, so a panic while a lock is held poisons
//! it and the server goes on. The state behind it is kept consistent step by
//! step, so the next caller takes it as it is: a poisoned lock must not turn
//! WAIT handoffs, keyspace events or INFO fields off for good.

use std::sync::{Mutex, MutexGuard, TryLockError};

/// Locks `m`, poisoned or not.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Locks `m` if it is free, poisoned or not; `None` while it is held.
pub fn try_lock<T>(m: &Mutex<T>) -> Option<MutexGuard<'_, T>> {
    match m.try_lock() {
        Ok(guard) => Some(guard),
        Err(TryLockError::Poisoned(poisoned)) => Some(poisoned.into_inner()),
        Err(TryLockError::WouldBlock) => None,
    }
}
