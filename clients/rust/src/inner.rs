//! What every clone of a [`SpaceLock`](crate::SpaceLock) shares: the
//! connection, the resolved settings, the in-process mutex and the heartbeat.
//! The lock calls, the guard and the blocking acquire all work on it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::heartbeat::Heartbeat;
use crate::options::Settings;
use crate::registry::Registry;

/// What every clone of a `SpaceLock` shares.
pub(crate) struct Inner<C> {
    pub(crate) conn: C,
    pub(crate) settings: Settings,
    pub(crate) registry: Arc<Registry>,
    pub(crate) heartbeat: Heartbeat,
    /// Locked calls started so far, for each call's own owner value.
    pub(crate) calls: AtomicU64,
}

impl<C> Inner<C> {
    /// The owner value one locked call writes: this `SpaceLock`'s owner id
    /// and the call's number (`{owner}:{n}`). A release that one call sends
    /// late (its lease lost while the server was paused, a timed-out wait
    /// whose grant may have landed) then names that call's grant alone: it
    /// can never end a later call's grant of the same name, which a shared
    /// owner value would let it do.
    pub(crate) fn call_owner(&self) -> Arc<str> {
        let n = self.calls.fetch_add(1, Ordering::Relaxed) + 1;
        format!("{}:{n}", self.settings.owner).into()
    }
}
