//! spacelock's pure logic: no `redis-module`, no I/O, no globals.
//!
//! Everything here is plain Rust, unit-tested without a server (the
//! redis-cell pattern): the module (`spacelock`), the client, the CLI, the
//! bench and the tests all build on it.
//!
//! * [`args`]: argument rules (integers as Redis parses them, ttl, owner);
//! * [`fence`]: the cluster hash slot (the only CRC16 in the tree), whether
//!   a node serves a slot, and fence-key naming;
//! * [`lock`]: the lock state machine over a [`lock::Store`], with
//!   [`lock::MemoryStore`] and an injectable clock;
//! * [`tokens`]: which fencing token a grant issues (terms and their floor);
//! * [`shared`]: shared (reader-writer) and counted locks: their layout,
//!   per-holder leases, and who of a queue is granted;
//! * [`handoff`]: the WAIT handoff: the queues of waiting clients and every
//!   decision they make, against a [`handoff::Host`] trait.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod args;
mod error;
pub mod fence;
#[cfg(test)]
mod fuzz;
pub mod handoff;
pub mod ledger;
pub mod lock;
pub mod shared;
pub mod tokens;
