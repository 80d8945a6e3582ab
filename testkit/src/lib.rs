//! spacelock's test kit, shared by every integration test of the workspace.
//!
//! * [`ServerBuilder`] / [`Server`]: a real `redis-server` or `valkey-server`
//!   (`$SPACELOCK_SERVER`, default `redis-server`) with the module
//!   (`$SPACELOCK_MODULE`, default `target/release/libspacelock.so`) on a free
//!   loopback port below the ephemeral range, in its own temp dir; readiness
//!   is polled with a deadline, and `Drop` sends `SHUTDOWN NOSAVE`, waits,
//!   then kills.
//! * [`Cluster`]: masters with slots assigned and met, for cluster tests.
//! * [`Sentinel`]: a real sentinel monitoring one primary, for failovers.
//! * Replication: [`ServerBuilder::replica_of`], [`replicaof`],
//!   [`until_link_up`], [`sync_replicas`] and [`promote`].
//! * [`Proxy`]: a TCP proxy that injects connection faults (drop every
//!   connection, close idle ones, hang or refuse new ones).
//! * [`FakeServer`]: a fake RESP server that never answers a blocking
//!   `SPACELOCK.ACQUIRE … WAIT`, for the one fault a real server will not
//!   produce on demand.
//! * [`mod@cmd`] helpers: the lock commands, keyspace snapshots, `INFO`
//!   fields and waits driven by what the server reports ([`until_waiting`]),
//!   so that no test sleeps in place of synchronisation.
//! * [`captured_logs`]: what a test binary's logger wrote, in memory.
//! * [`mod@process`]: child processes (the `spacelock` CLI above all) run
//!   with their output captured and a deadline.
//! * A harness that can say *skipped*: a test binary declares
//!   `harness = false`, marks its tests `#[spacelock_testkit::test]` (sync,
//!   or `async fn` on a two-worker tokio runtime) and ends with
//!   `spacelock_testkit::main!();`. A test that cannot run calls
//!   [`skip`], and is reported and counted as ignored, never as passed.
//!
//! Nothing here downloads anything: servers other than the default come in
//! through `$SPACELOCK_SERVER` (see `scripts/fetch-servers.sh`).

mod cluster;
pub mod cmd;
mod fake;
mod logs;
pub mod process;
mod proxy;
mod replication;
mod sentinel;
mod server;

pub use cluster::Cluster;
pub use cmd::*;
pub use fake::FakeServer;
pub use logs::{captured_logs, CapturedLogs};
pub use proxy::{Proxy, ProxyMode};
pub use replication::{attached_replica, promote, replicaof, sync_replicas, until_link_up};
pub use sentinel::{Sentinel, SentinelTimings};
pub use server::*;
pub use spacelock_testkit_macros::test;

#[doc(hidden)]
pub use linkme;

/// One registered test (made by `#[spacelock_testkit::test]`).
#[doc(hidden)]
pub struct Case {
    pub name: &'static str,
    pub run: fn(),
}

/// Every test of this binary.
#[doc(hidden)]
#[linkme::distributed_slice]
pub static TESTS: [Case];

/// The payload of [`skip`].
struct Skip(String);

/// Ends the current test as *skipped*, with `reason` printed. Use it only
/// for a test that cannot run here (a server without the feature, a tool
/// that is not installed); never to hide a failure.
pub fn skip(reason: impl Into<String>) -> ! {
    // resume_unwind: no panic message, no backtrace; the harness turns the
    // payload into "ignored".
    std::panic::resume_unwind(Box::new(Skip(reason.into())))
}

/// Whether the long, soak-length variants of tests run: `SPACELOCK_SOAK`
/// set to anything but empty or `0` (`make soak` sets it). Without it, such
/// tests run a short version that still checks the same property, so that
/// `make test` stays quick.
pub fn soak() -> bool {
    std::env::var_os("SPACELOCK_SOAK").is_some_and(|v| !v.is_empty() && v != "0")
}

/// Runs every registered test; `main!()` calls it.
///
/// # Panics
///
/// When the binary registered no test at all: a test file whose tests never
/// reached the registry (a missing `#[spacelock_testkit::test]`, a linker
/// that dropped the registry) must fail, not pass having run nothing.
#[doc(hidden)]
pub fn run_all() {
    let mut cases: Vec<&'static Case> = TESTS.iter().collect();
    if cases.is_empty() {
        eprintln!(
            "error: this test binary registered no test: mark its tests \
             #[spacelock_testkit::test]"
        );
        std::process::exit(101);
    }
    cases.sort_by_key(|c| c.name);
    let trials = cases.into_iter().map(|case| {
        libtest2_mimic::Trial::test(case.name, move |ctx| {
            match std::panic::catch_unwind(case.run) {
                Ok(()) => Ok(()),
                Err(payload) => match payload.downcast::<Skip>() {
                    Ok(skip) => {
                        eprintln!("skipped {}: {}", case.name, skip.0);
                        ctx.ignore_for(skip.0)
                    }
                    Err(payload) => std::panic::resume_unwind(payload),
                },
            }
        })
    });
    // Output is never captured by this harness, so libtest's capture flags
    // (which scripts and habits pass) are accepted and dropped.
    let args = std::env::args_os().filter(|a| {
        !matches!(
            a.to_str(),
            Some("--nocapture" | "--no-capture" | "--show-output")
        )
    });
    libtest2_mimic::Harness::with_args(args)
        .discover(trials)
        .main();
}

/// The `main` of a test binary built with `harness = false`.
///
/// A test file that lacks its `[[test]] harness = false` entry in
/// `Cargo.toml` is built by cargo with libtest's harness instead, which
/// ignores this `main` and would run none of the kit's tests. The `#[test]`
/// below exists only in that build, and fails it, so the mistake is seen at
/// once; `make lint` also checks the entries (`scripts/check-tests.sh`).
#[macro_export]
macro_rules! main {
    () => {
        #[allow(dead_code)]
        fn main() {
            $crate::run_all()
        }

        #[test]
        fn missing_harness_false_entry() {
            panic!(
                "{} is built with libtest's harness, which runs none of its \
                 #[spacelock_testkit::test]s: add `[[test]] name = \"{}\" \
                 harness = false` to its Cargo.toml",
                file!(),
                env!("CARGO_CRATE_NAME"),
            );
        }
    };
}

/// The owner id of an owner value that a client's locked call wrote
/// (`{owner}:{n}`, the call's number after the last colon); the value
/// itself when it has no such number.
#[must_use]
pub fn call_base(owner: &str) -> &str {
    match owner.rsplit_once(':') {
        Some((base, n)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => base,
        _ => owner,
    }
}
