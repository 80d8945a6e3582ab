//! Muting the module's own writes. Every write of a spacelock command or of
//! an engine step fires keyspace events, which come back to
//! [`super::keyspace`] while the registry may be locked. They are ours, and
//! must not schedule a settle: while a [`SelfWrites`] is alive, the event
//! callback returns before it looks at the registry.

use std::sync::atomic::{AtomicU32, Ordering::Relaxed};

// A plain static, not `thread_local!`: see `REGISTRY` in `super`.
static SELF_WRITES: AtomicU32 = AtomicU32::new(0);

/// While alive, keyspace events are ours (a spacelock command or a settle
/// that handles its key itself) and are not scheduled for a settle.
pub struct SelfWrites(());

impl SelfWrites {
    /// Starts a section of spacelock's own writes.
    #[must_use]
    pub fn begin() -> Self {
        SELF_WRITES.fetch_add(1, Relaxed);
        SelfWrites(())
    }

    /// Whether a section of spacelock's own writes is open.
    pub(super) fn active() -> bool {
        SELF_WRITES.load(Relaxed) > 0
    }
}

impl Drop for SelfWrites {
    fn drop(&mut self) {
        SELF_WRITES.fetch_sub(1, Relaxed);
    }
}
