//! `SPACELOCK.ACQUIRE key owner ttl_ms WAIT timeout_ms`: a FIFO per lock key
//! with direct handoff, and every decision it makes.
//!
//! # The guarantee
//!
//! Every `ACQUIRE … WAIT` gets exactly one reply, and the reply agrees with
//! the lock at the moment it is sent: a token means the waiter holds the lock
//! with that token; nil means it was not granted and nothing is held in its
//! name. A client whose connection goes away gets no reply and holds
//! nothing.
//!
//! # Why no interleaving breaks it
//!
//! A blocked client ends in one of three ways, and the module decides all
//! three itself, in one place ([`Registry`]: a waiter leaves it exactly once,
//! and whoever removes it is the only one to unblock it):
//!
//! 1. **Granted** ([`settle`]): the grant is written (and replicated) in the
//!    same step that takes the waiter off the queue, so nobody barges in.
//!    That step is always a timer's: a command that frees the lock only
//!    makes the grant due ([`grant_due`]: ACQUIRE keeps off it), and the
//!    pending timer writes it at the end of the event-loop iteration, after
//!    every other command read in it. One of those can make the server a
//!    replica (`REPLICAOF`), which lets every blocked client go with
//!    `-UNBLOCKED` and drops what the module would replicate from inside
//!    it: a grant written before it would stand on the replicas in the name
//!    of a client told otherwise. The deadline is judged as of the moment
//!    the lock came free.
//! 2. **Timed out**: the module owns WAIT deadlines. The server is given no
//!    timeout and no timeout callback, so it never times a waiter out on its
//!    own, and `CLIENT UNBLOCK` refuses spacelock waiters (it only unblocks
//!    module clients that have a timeout callback). A deadline timer removes
//!    the waiter; a grant that finds the deadline passed answers nil
//!    instead. So the order in which a server checks its own timeouts,
//!    module unblocks and `CLIENT UNBLOCK` (Redis 7.0 checks timeouts before
//!    it runs module reply callbacks; newer servers the other way round)
//!    cannot matter: there is only one decision.
//! 3. **Disconnected** ([`on_disconnect`]): a queued waiter leaves the queue
//!    and is never granted.
//!
//! Between the decision and the reply, the server runs the rest of the
//! event-loop iteration: a slow script, a `DEL`, the client's socket
//! closing. So the reply is decided again when it is sent ([`answer`], from
//! the reply callback): a grant is answered with its token only if it still
//! stands, else nil; and a grant whose client is closing, or is gone before
//! its reply callback runs, is **undone** ([`undelivered`]): the lock key is
//! deleted if it still holds that grant (replicated as `DEL`), and the lock
//! goes to the next live waiter. That history is one the server could have
//! produced anyway (the client took the lock and released it), and no
//! spacelock command can see the undelivered grant: each one undoes it
//! first.
//!
//! A closing connection is spotted from its `CLIENT LIST` flags (`A`: close
//! as soon as possible), because Redis frees a client whose socket read
//! failed only at the end of the iteration, after the reply callbacks. A
//! reply that would overflow the connection's output buffer limit counts as
//! undeliverable too ([`Host::reply_would_close`]): the server closes the
//! connection as the reply is added, and the token never arrives.
//!
//! # Other events
//!
//! * **Expiry**: a queue's expiry timer fires just after the holder's lease
//!   ends (a key counts as expired once `now > expire_at`); REFRESH and any
//!   other change of the key move it.
//! * **Keyspace events** (DEL, UNLINK, RENAME, expiry, eviction, …) and
//!   FLUSHALL/FLUSHDB/SWAPDB/role changes mark keys for the pending timer:
//!   writing from inside a notification is unsupported, and Redis 7.0 has no
//!   post-notification jobs, so every write of this module comes from a
//!   command or a timer.
//! * **Write pauses** (`CLIENT PAUSE … WRITE`, `FAILOVER`) hold commands but
//!   not timers: a timer grants (or undoes) only when the host says writes
//!   are allowed, and looks again every `PAUSE_RETRY_MS` (in `timers.rs`).
//! * **Replicas** never write: waiters are let go with `-UNBLOCKED`, a grant
//!   made due in the iteration the role changed included.
//! * **Clusters**: a timer grants only on a node that still serves the
//!   key's slot (else `-TRYAGAIN`).
//! * **Memory**: a queue, its timers and index entries go when it empties.

mod engine;
mod ids;
mod options;
mod registry;
mod timers;

pub use engine::{
    answer, arm_pending, enqueue, grant_due, may_enqueue, on_disconnect, on_flush, on_key_event,
    on_timer, settle, undelivered, Acquired, Answer, Event, Host, LockState, Origin, Outcome,
    Refused, Request,
};
pub use options::{parse_options, too_many_waiters, REPLICA_UNBLOCKED, SLOT_MOVED_TRYAGAIN};
pub use registry::{Db, DbScope, Grant, Registry};
pub use timers::{TimerId, TimerKind};

#[cfg(test)]
mod tests;
