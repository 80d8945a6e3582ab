//! `spacelock run --url redis+sentinel://…/service-name` with a real
//! Sentinel: the run locks on the primary Sentinel names, and after
//! `SENTINEL FAILOVER` a new run locks on the new primary.

use spacelock_testkit as kit;

use std::process::Command;
use std::time::Duration;

use kit::process::{sh, Output};
use kit::{role, wait_until, Sentinel, Server};

const BIN: &str = env!("CARGO_BIN_EXE_spacelock");
const SERVICE: &str = "spacelock-cli-fo";

fn output(cmd: Command) -> Output {
    kit::process::output(cmd, Duration::from_secs(30))
}

fn acquires(server: &Server) -> u64 {
    kit::command_calls(&mut server.conn(), "spacelock.acquire")
}

#[kit::test]
fn a_run_after_a_failover_locks_on_the_new_primary() {
    let (primary, replica, sentinel) = Sentinel::over_a_replicated_primary(SERVICE);
    let url = format!(
        "redis+sentinel://127.0.0.1:{},127.0.0.1:{}/{SERVICE}",
        sentinel.port,
        kit::free_port()
    );

    let before = acquires(&primary);
    let mut c = kit::process::cli_run(BIN, &url, &["--replicas", "1", "job", "--"]);
    c.args(sh("echo $SPACELOCK_TOKEN"));
    let out = output(c);
    assert_eq!(out.code(), Some(0), "stderr: {}", out.stderr);
    let first: u64 = out.stdout.trim().parse().unwrap();
    assert!(acquires(&primary) > before, "locked on the primary");

    sentinel.fail_over_to(&replica, Duration::from_secs(30));
    // Until Sentinel has re-pointed the old primary, that one still calls
    // itself a primary and Sentinel's `SENTINEL MASTERS` (what redis-rs
    // reads) may still name it: wait for the end of the failover.
    assert!(
        wait_until(Duration::from_secs(30), || role(&primary).as_deref()
            == Some("slave")),
        "the old primary was never re-pointed:\n{}",
        sentinel.log()
    );

    // Through $SPACELOCK_URL this time; no --replicas (the old primary may
    // not be replicating the new one yet).
    let before = acquires(&replica);
    let mut c = kit::process::cli_command(BIN);
    c.env("SPACELOCK_URL", &url).args(["run", "job", "--"]);
    c.args(sh("echo $SPACELOCK_TOKEN"));
    let out = output(c);
    assert_eq!(out.code(), Some(0), "stderr: {}", out.stderr);
    let second: u64 = out.stdout.trim().parse().unwrap();
    assert!(
        acquires(&replica) > before,
        "locked on the new primary: {before} -> {}; old primary {} ({:?})\n{}",
        acquires(&replica),
        acquires(&primary),
        role(&primary),
        sentinel.log()
    );
    assert!(second > first, "tokens go on rising: {first} then {second}");

    // `spacelock info` follows it too.
    let mut c = kit::process::cli_command(BIN);
    c.args(["info", "--url", &url, "job"]);
    let out = output(c);
    assert_eq!(out.code(), Some(0), "stderr: {}", out.stderr);
}

#[kit::test]
fn bad_sentinel_urls_are_usage_errors() {
    for url in [
        "redis+sentinel://127.0.0.1:1",
        "redis+sentinel://127.0.0.1:1/",
        "redis+sentinel://127.0.0.1:x/svc",
    ] {
        let out = output(kit::process::cli_run(BIN, url, &["job", "--", "true"]));
        assert_eq!(out.code(), Some(64), "{url}: {}", out.stderr);
        assert!(out.stderr.contains("Sentinel URL"), "{url}: {}", out.stderr);
    }
    // Nobody answers: unavailable, not a usage error.
    let url = format!("redis+sentinel://127.0.0.1:{}/svc", kit::free_port());
    let out = output(kit::process::cli_run(BIN, &url, &["job", "--", "true"]));
    assert_eq!(out.code(), Some(69), "{}", out.stderr);
}

kit::main!();
