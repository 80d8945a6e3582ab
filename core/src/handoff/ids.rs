//! The identifiers WAIT hands around.

/// A database number.
pub type Db = i32;

/// (db, key) of a queue.
pub type QueueKey = (Db, Vec<u8>);

/// A waiter's id: unique for the life of the process (never reused, unlike
/// the server's blocked-client handles), so a timer that fires late can
/// never act on a later waiter. Ids also give the arrival order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WaiterId(pub u64);

/// A queue's id, carried by its expiry timer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct QueueId(pub u64);

/// A timer's id as the server hands it out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TimerId(pub u64);
