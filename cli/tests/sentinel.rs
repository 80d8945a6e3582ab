//! `spacelock run --url redis+sentinel://…/service-name` with a real
//! Sentinel: the run locks on the primary Sentinel names, and after
//! `SENTINEL FAILOVER` a new run locks on the new primary.

use spacelock_testkit as kit;

use std::process::Command;
use std::time::Duration;

use kit::process::{sh, Output};
use kit::{wait_until, Sentinel, SentinelTimings, Server, ServerBuilder};

const BIN: &str = env!("CARGO_BIN_EXE_spacelock");
const SERVICE: &str = "spacelock-cli-fo";

fn output(cmd: Command) -> Output {
    kit::process::output(cmd, Duration::from_secs(30))
}

fn role(server: &Server) -> Option<String> {
    let mut c = server.client().get_connection().ok()?;
    kit::info_text(&mut c, "replication", "role")
}

fn acquires(server: &Server) -> u64 {
    kit::command_calls(&mut server.conn(), "spacelock.acquire")
}

#[kit::test]
fn a_run_after_a_failover_locks_on_the_new_primary() {
    let primary = Server::new();
    let replica = ServerBuilder::new().replica_of(&primary).start();
    kit::until_link_up(&mut replica.conn(), &replica);
    kit::sync_replicas(&mut primary.conn(), 1);
    let sentinel = match Sentinel::start(&primary, SERVICE, SentinelTimings::default()) {
        Ok(s) => s,
        Err(why) if why.starts_with("cannot spawn") => {
            kit::skip(format!("no sentinel can run here: {why}"))
        }
        Err(why) => panic!("the sentinel did not start: {why}"),
    };
    assert!(
        wait_until(Duration::from_secs(20), || sentinel
            .knows_replica(replica.port)),
        "the sentinel never saw the replica:\n{}",
        sentinel.log()
    );
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

    let mut con = sentinel.conn();
    assert!(
        wait_until(Duration::from_secs(15), || redis::cmd("SENTINEL")
            .arg("FAILOVER")
            .arg(SERVICE)
            .query::<()>(&mut con)
            .is_ok()),
        "SENTINEL FAILOVER refused:\n{}",
        sentinel.log()
    );
    // Until Sentinel has re-pointed the old primary, that one still calls
    // itself a primary and Sentinel's `SENTINEL MASTERS` (what redis-rs
    // reads) may still name it: wait for the end of the failover.
    assert!(
        wait_until(Duration::from_secs(30), || sentinel.primary_port()
            == Some(replica.port)
            && role(&replica).as_deref() == Some("master")
            && role(&primary).as_deref() == Some("slave")),
        "no failover:\n{}",
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
