//! The errors of the lock state machine that are not argument errors.

use crate::args::ArgError;
use crate::shared::WrongMode;

/// Failures that are not argument errors. `Display` is the error reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LockError {
    /// A bad argument (see [`ArgError`]).
    Arg(ArgError),
    /// The lock key holds a non-string value.
    LockWrongType,
    /// The fence key holds a non-string value.
    FenceWrongType,
    /// The fence key is a string but not a token counter (an integer ≥ 0).
    FenceCorrupt,
    /// The fence counter reached `i64::MAX`; no further token can be issued.
    TokenOverflow,
    /// The server refused a write the grant needed (it changed nothing
    /// that was not replicated).
    WriteFailed,
    /// The request's mode does not fit the lock's (a counted lock asked
    /// for exclusive or shared, a reader-writer lock asked for a count, or
    /// another count).
    WrongMode(WrongMode),
    /// A holder field of a shared or counted lock does not hold
    /// `token:deadline_ms`.
    HolderCorrupt,
}

impl From<ArgError> for LockError {
    fn from(e: ArgError) -> Self {
        LockError::Arg(e)
    }
}

impl std::fmt::Display for LockError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LockError::Arg(e) => e.fmt(f),
            LockError::LockWrongType => {
                f.write_str("WRONGTYPE Operation against a key holding the wrong kind of value")
            }
            LockError::FenceWrongType => f.write_str(
                "WRONGTYPE the lock's fence key (spacelock:fence:…) holds the wrong kind of value",
            ),
            LockError::FenceCorrupt => f.write_str(
                "ERR the lock's fence key (spacelock:fence:…) does not hold a token counter",
            ),
            LockError::TokenOverflow => {
                f.write_str("ERR the lock's fencing counter is exhausted (reached 2^63-1)")
            }
            LockError::WriteFailed => {
                f.write_str("ERR spacelock could not write the lock (see the server log)")
            }
            LockError::WrongMode(w) => w.fmt(f),
            LockError::HolderCorrupt => f.write_str(
                "ERR a holder of this shared or counted lock is not stored as token:deadline_ms",
            ),
        }
    }
}
