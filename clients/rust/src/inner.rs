//! What every clone of a [`SpaceLock`](crate::SpaceLock) shares: the
//! connection, the resolved settings, the in-process mutex and the heartbeat.
//! The lock calls, the guard and the blocking acquire all work on it.

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
}
