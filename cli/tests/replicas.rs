//! `spacelock run --replicas N [--ack-timeout D] [--wait-aof]` against a
//! real primary with a real replica: the command runs only on a grant that
//! N replicas acknowledged; otherwise spacelock exits 69 without starting it
//! and says how many did.

use spacelock_testkit as kit;

use std::process::Command;
use std::time::Duration;

use kit::process::{sh, Output};
use kit::Server;

const BIN: &str = env!("CARGO_BIN_EXE_spacelock");
const PREFIX: &str = "spacelock:lock:";

fn run_cmd(server: &Server, args: &[&str]) -> Command {
    kit::process::cli_run(BIN, &server.url(), args)
}

fn output(cmd: Command) -> Output {
    kit::process::output(cmd, Duration::from_secs(20))
}

/// A primary with one replica, its link up and counted by `WAIT`.
fn primary_with_replica() -> (Server, Server) {
    let primary = Server::new();
    let replica = kit::attached_replica(&primary);
    (primary, replica)
}

#[kit::test]
fn an_acknowledged_grant_runs_the_command() {
    let (primary, _replica) = primary_with_replica();
    let waits = kit::command_calls(&mut primary.conn(), "wait");
    let mut c = run_cmd(&primary, &["--replicas", "1", "job", "--"]);
    c.args(sh("echo ran $SPACELOCK_TOKEN"));
    let out = output(c);
    assert_eq!(out.code(), Some(0), "stderr: {}", out.stderr);
    assert!(out.stdout.starts_with("ran "), "{}", out.stdout);
    assert_eq!(out.stderr, "");
    assert!(kit::command_calls(&mut primary.conn(), "wait") > waits);
    assert!(!kit::exists(&mut primary.conn(), format!("{PREFIX}job")));
}

#[kit::test]
fn too_few_replicas_exit_69_without_starting_the_command() {
    let (primary, _replica) = primary_with_replica();
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("ran");
    let mut c = run_cmd(
        &primary,
        &["--replicas", "2", "--ack-timeout", "300ms", "job", "--"],
    );
    c.args(["touch", marker.to_str().unwrap()]);
    let out = output(c);
    assert_eq!(out.code(), Some(69), "stderr: {}", out.stderr);
    assert_eq!(
        out.stderr,
        format!(
            "spacelock: {PREFIX}job: 1 of 2 replicas acknowledged the grant within 300ms; \
             not running the command\n"
        )
    );
    assert!(!marker.exists(), "the command never started");
    assert!(
        !kit::exists(&mut primary.conn(), format!("{PREFIX}job")),
        "the grant was released"
    );
    // The default ack timeout is a third of the ttl; -q does not hide the line.
    let c = run_cmd(
        &primary,
        &[
            "-q",
            "--replicas",
            "3",
            "--ttl",
            "900ms",
            "job",
            "--",
            "true",
        ],
    );
    let out = output(c);
    assert_eq!(out.code(), Some(69), "stderr: {}", out.stderr);
    assert!(
        out.stderr
            .contains("1 of 3 replicas acknowledged the grant within 300ms"),
        "{}",
        out.stderr
    );
}

#[kit::test]
fn bad_replica_values_are_usage_errors() {
    // Nothing listens there: the values are refused before connecting.
    let url = format!("redis://127.0.0.1:{}/", kit::free_port());
    for args in [
        &["--replicas", "-1"][..],
        &["--replicas", "two"],
        &["--replicas", "1.5"],
        &["--replicas", ""],
        &["--replicas", "1", "--ack-timeout", "0s"],
        &["--replicas", "1", "--ack-timeout", "30s"],
        &["--replicas", "1", "--ttl", "2s", "--ack-timeout", "5s"],
        &["--replicas", "1", "--ack-timeout", "soon"],
    ] {
        let mut c = kit::process::cli_run(BIN, &url, args);
        c.args(["job", "--", "true"]);
        let out = output(c);
        assert_eq!(out.code(), Some(64), "{args:?}: {}", out.stderr);
        assert!(
            out.stderr.contains("replica") || out.stderr.contains("ack-timeout"),
            "{args:?}: {}",
            out.stderr
        );
    }
}

#[kit::test]
fn wait_aof_without_waitaof_exits_69_without_starting_the_command() {
    let server = Server::new();
    let version = kit::version_of(&mut server.conn());
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("ran");
    let mut c = run_cmd(&server, &["--wait-aof", "job", "--"]);
    c.args(["touch", marker.to_str().unwrap()]);
    let out = output(c);
    assert_eq!(out.code(), Some(69), "{version:?}: {}", out.stderr);
    assert!(
        out.stderr.contains("WAITAOF") && out.stderr.contains("did not run"),
        "{}",
        out.stderr
    );
    assert!(!marker.exists());
    assert!(!kit::exists(&mut server.conn(), format!("{PREFIX}job")));
}

kit::main!();
