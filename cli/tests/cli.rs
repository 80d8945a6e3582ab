//! End-to-end tests of the `spacelock` binary against real redis-server
//! processes with (and without) the module.

use spacelock_testkit as kit;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use kit::process::{finish, proc_state, sh, start, wait_for_file, Output};
use kit::{free_port, wait_until, Server, ServerBuilder};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

const BIN: &str = env!("CARGO_BIN_EXE_spacelock");
const PREFIX: &str = "spacelock:lock:";

/// The binary with a clean environment for URLs.
fn spacelock() -> Command {
    kit::process::cli_command(BIN)
}

/// `spacelock run --url URL <args…>`.
fn run_cmd(server: &Server, args: &[&str]) -> Command {
    kit::process::cli_run(BIN, &server.url(), args)
}

fn output(cmd: Command) -> Output {
    kit::process::output(cmd, Duration::from_secs(20))
}

fn exists(server: &Server, key: &str) -> bool {
    kit::exists(&mut server.conn(), key)
}

/// The `waiters` field of `SPACELOCK.INFO key` (0 when free).
fn waiters(server: &Server, key: &str) -> i64 {
    kit::key_waiters(&mut server.conn(), key)
}

/// A shell loop that writes `started`, and on SIGTERM writes `term` and exits `code`.
/// (`sleep & wait` rather than a foreground `sleep`: a trapped signal
/// interrupts `wait` at once, so the trap runs promptly and reliably.)
fn trap_script(dir: &Path, code: i32) -> String {
    format!(
        "trap 'touch {d}/term; exit {code}' TERM; touch {d}/started; \
         while :; do sleep 0.05 & wait $!; done",
        d = dir.display()
    )
}

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

#[kit::test]
fn env_carries_key_token_owner_and_tokens_increase() {
    let server = Server::new();
    let mut tokens = Vec::new();
    for _ in 0..3 {
        let mut c = run_cmd(&server, &["job", "--"]);
        c.args(sh(
            "echo \"$SPACELOCK_TOKEN|$SPACELOCK_KEY|$SPACELOCK_OWNER\"",
        ));
        let out = output(c);
        assert_eq!(out.code(), Some(0), "stderr: {}", out.stderr);
        assert_eq!(out.stderr, "", "a successful run is silent");
        let line = out.stdout.trim();
        let parts: Vec<&str> = line.split('|').collect();
        assert_eq!(parts.len(), 3, "{line}");
        assert_eq!(parts[1], format!("{PREFIX}job"));
        assert!(parts[2].starts_with("spacelock-cli:"), "{line}");
        tokens.push(parts[0].parse::<u64>().expect("numeric token"));
        assert!(!exists(&server, &format!("{PREFIX}job")), "released");
    }
    assert!(
        tokens.windows(2).all(|w| w[0] < w[1]),
        "tokens must increase: {tokens:?}"
    );

    // --prefix '' locks KEY itself; the owner differs on every run.
    let mut c = run_cmd(&server, &["--prefix", "", "raw-key", "--"]);
    c.args(sh(
        "echo \"$SPACELOCK_KEY\"; redis-cli -p $PORT get raw-key",
    ))
    .env("PORT", server.port.to_string());
    let out = output(c);
    assert_eq!(out.code(), Some(0), "stderr: {}", out.stderr);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines[0], "raw-key");
    assert!(lines[1].starts_with("spacelock-cli:"), "{lines:?}");
    assert!(!exists(&server, "raw-key"));
}

#[kit::test]
fn url_falls_back_to_spacelock_url_then_redis_url() {
    let server = Server::new();
    let dead = format!("redis://127.0.0.1:{}/", free_port());
    let mut c = spacelock();
    c.args(["run", "k", "--", "true"])
        .env("SPACELOCK_URL", server.url())
        .env("REDIS_URL", &dead);
    assert_eq!(output(c).code(), Some(0));
    let mut c = spacelock();
    c.args(["run", "k", "--", "true"])
        .env("REDIS_URL", server.url());
    assert_eq!(output(c).code(), Some(0));
    let mut c = spacelock();
    c.args(["run", "k", "--", "true"])
        .env("SPACELOCK_URL", &dead)
        .env("REDIS_URL", server.url());
    assert_eq!(output(c).code(), Some(69), "SPACELOCK_URL wins");
}

#[kit::test]
fn exit_code_is_propagated_including_signals() {
    let server = Server::new();
    for (script, want) in [
        ("exit 0", 0),
        ("exit 7", 7),
        ("exit 255", 255),
        ("kill -KILL $$", 128 + 9),
        ("kill -TERM $$", 128 + 15),
        ("kill -SEGV $$", 128 + 11),
        // SIGPIPE is not left ignored for the command (Rust ignores it in
        // spacelock itself): `yes` dies of it quietly.
        ("yes | head -n 1 >/dev/null; exit 0", 0),
    ] {
        let mut c = run_cmd(&server, &["-q", "codes", "--"]);
        c.args(sh(script));
        let out = output(c);
        assert_eq!(out.code(), Some(want), "{script}: stderr {}", out.stderr);
        assert_eq!(out.stderr, "", "{script}");
        assert!(
            !exists(&server, &format!("{PREFIX}codes")),
            "{script}: released"
        );
    }
}

#[kit::test]
fn concurrent_run_without_wait_exits_75_quickly() {
    let server = Server::new();
    let dir = tmp();
    let mut c = run_cmd(&server, &["busy", "--"]);
    c.args(sh(&trap_script(dir.path(), 0)));
    let first = start(c);
    wait_for_file(&dir.path().join("started"));

    let mut c = run_cmd(&server, &["busy", "--", "touch"]);
    c.arg(dir.path().join("second-ran"));
    let out = output(c);
    assert_eq!(out.code(), Some(75), "stderr: {}", out.stderr);
    assert!(out.took < Duration::from_secs(3), "took {:?}", out.took);
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line: {:?}", out.stderr);
    assert!(
        lines[0].starts_with(&format!("spacelock: lock held: {PREFIX}busy")),
        "{}",
        lines[0]
    );
    assert!(lines[0].contains("owner spacelock-cli:"), "{}", lines[0]);
    assert!(!dir.path().join("second-ran").exists());

    // -q silences it; the exit code stays.
    let mut c = run_cmd(&server, &["-q", "busy", "--", "true"]);
    c.arg("x");
    let out = output(c);
    assert_eq!(out.code(), Some(75));
    assert_eq!(out.stderr, "");

    kill(Pid::from_raw(first.id() as i32), Signal::SIGTERM).unwrap();
    let out = finish(first, Duration::from_secs(10));
    assert_eq!(out.code(), Some(0), "stderr: {}", out.stderr);
    assert!(!exists(&server, &format!("{PREFIX}busy")));
}

#[kit::test]
fn concurrent_run_with_wait_runs_after_the_first() {
    let server = Server::new();
    let dir = tmp();
    let d = dir.path().display().to_string();
    let mut c = run_cmd(&server, &["deploy", "--"]);
    c.args(sh(&format!(
        "echo $SPACELOCK_TOKEN; touch {d}/a.started; sleep 1; touch {d}/a.done"
    )));
    let first = start(c);
    wait_for_file(&dir.path().join("a.started"));

    // Times out while the first still holds it: 75, after the wait.
    let mut c = run_cmd(&server, &["--wait", "200ms", "deploy", "--", "touch"]);
    c.arg(dir.path().join("never"));
    let out = output(c);
    assert_eq!(out.code(), Some(75), "stderr: {}", out.stderr);
    assert!(
        out.took >= Duration::from_millis(200),
        "took {:?}",
        out.took
    );
    assert!(
        out.stderr.contains(&format!(
            "lock held: {PREFIX}deploy: still held after waiting 200ms"
        )),
        "{}",
        out.stderr
    );
    assert!(!dir.path().join("never").exists());

    let mut c = run_cmd(&server, &["--wait", "15s", "deploy", "--"]);
    c.args(sh(&format!("test -f {d}/a.done && echo $SPACELOCK_TOKEN")));
    let second = start(c);
    let a = finish(first, Duration::from_secs(15));
    let b = finish(second, Duration::from_secs(20));
    assert_eq!(a.code(), Some(0), "first: {}", a.stderr);
    assert_eq!(
        b.code(),
        Some(0),
        "second ran before the first finished: {}",
        b.stderr
    );
    let ta: u64 = a.stdout.trim().parse().unwrap();
    let tb: u64 = b.stdout.trim().parse().unwrap();
    assert!(tb > ta, "{tb} > {ta}");
    assert!(!exists(&server, &format!("{PREFIX}deploy")));
}

#[kit::test]
fn sigint_while_waiting_aborts_without_running() {
    let server = Server::new();
    let dir = tmp();
    let mut c = run_cmd(&server, &["held", "--"]);
    c.args(sh(&trap_script(dir.path(), 0)));
    let first = start(c);
    wait_for_file(&dir.path().join("started"));

    let mut c = run_cmd(&server, &["--wait", "30s", "held", "--", "touch"]);
    c.arg(dir.path().join("waiter-ran"));
    let waiter = start(c);
    // Until the waiter is queued on the server.
    assert!(wait_until(Duration::from_secs(10), || waiters(
        &server,
        &format!("{PREFIX}held")
    ) == 1));
    kill(Pid::from_raw(waiter.id() as i32), Signal::SIGINT).unwrap();
    let out = finish(waiter, Duration::from_secs(5));
    assert_eq!(out.code(), Some(130), "stderr: {}", out.stderr);
    assert!(
        out.stderr.contains("interrupted by SIGINT"),
        "{}",
        out.stderr
    );

    kill(Pid::from_raw(first.id() as i32), Signal::SIGTERM).unwrap();
    assert_eq!(finish(first, Duration::from_secs(10)).code(), Some(0));
    assert!(!dir.path().join("waiter-ran").exists());
    // spacelock exits only after its releases are done: nothing to wait for.
    assert!(!exists(&server, &format!("{PREFIX}held")));
}

#[kit::test]
fn lost_lease_sigterms_the_group_and_exits_76() {
    let server = Server::new();
    let dir = tmp();
    let mut c = run_cmd(
        &server,
        &["--ttl", "300ms", "--kill-grace", "5s", "fragile", "--"],
    );
    c.args(sh(&trap_script(dir.path(), 0)));
    let child = start(c);
    wait_for_file(&dir.path().join("started"));
    // Held (and refreshed) well past its ttl.
    std::thread::sleep(Duration::from_millis(700));
    assert!(exists(&server, &format!("{PREFIX}fragile")));

    let _: i64 = redis::cmd("DEL")
        .arg(format!("{PREFIX}fragile"))
        .query(&mut server.conn())
        .unwrap();
    let out = finish(child, Duration::from_secs(10));
    assert_eq!(out.code(), Some(76), "stderr: {}", out.stderr);
    assert!(
        dir.path().join("term").exists(),
        "the child got SIGTERM; stderr: {}",
        out.stderr
    );
    assert!(
        out.stderr.contains(&format!(
            "spacelock: lease lost: {PREFIX}fragile: the key is gone (it expired or was deleted)"
        )),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("SIGKILL;"), "{}", out.stderr);
}

#[kit::test]
fn lost_lease_sigkills_a_child_that_ignores_sigterm() {
    let server = Server::new();
    let dir = tmp();
    let d = dir.path().display();
    let mut c = run_cmd(
        &server,
        &["--ttl", "300ms", "--kill-grace", "500ms", "stubborn", "--"],
    );
    c.args(sh(&format!(
        "trap '' TERM; touch {d}/started; while :; do sleep 0.05; done"
    )));
    let child = start(c);
    wait_for_file(&dir.path().join("started"));
    // Another owner takes the key over.
    let _: () = redis::cmd("SET")
        .arg(format!("{PREFIX}stubborn"))
        .arg("someone-else")
        .query(&mut server.conn())
        .unwrap();
    let out = finish(child, Duration::from_secs(10));
    assert_eq!(out.code(), Some(76), "stderr: {}", out.stderr);
    assert!(out.stderr.contains("lease lost"), "{}", out.stderr);
    assert!(out.stderr.contains("sending SIGKILL"), "{}", out.stderr);
    // The other owner's key is untouched.
    let v: String = redis::cmd("GET")
        .arg(format!("{PREFIX}stubborn"))
        .query(&mut server.conn())
        .unwrap();
    assert_eq!(v, "someone-else");
}

#[kit::test]
fn lost_lease_also_stops_what_the_command_left_behind() {
    let server = Server::new();
    let dir = tmp();
    let d = dir.path().display();
    // The command starts a helper that ignores SIGTERM, then waits; on
    // SIGTERM it exits at once, leaving the helper behind in its group.
    let mut c = run_cmd(
        &server,
        &["--ttl", "300ms", "--kill-grace", "700ms", "leftover", "--"],
    );
    c.args(sh(&format!(
        "(trap '' TERM; while :; do sleep 0.05; done) & echo $! > {d}/helper.pid; \
         trap 'exit 0' TERM; touch {d}/started; while :; do sleep 0.05 & wait $!; done"
    )));
    let child = start(c);
    wait_for_file(&dir.path().join("started"));
    let helper: i32 = std::fs::read_to_string(dir.path().join("helper.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let _: i64 = redis::cmd("DEL")
        .arg(format!("{PREFIX}leftover"))
        .query(&mut server.conn())
        .unwrap();
    let out = finish(child, Duration::from_secs(10));
    assert_eq!(out.code(), Some(76), "stderr: {}", out.stderr);
    // The helper got SIGKILL at the end of the grace (it may linger a moment
    // as a zombie until init reaps it).
    let gone = wait_until(Duration::from_secs(5), || {
        std::fs::read_to_string(format!("/proc/{helper}/stat"))
            .map_or(true, |st| st.contains(") Z "))
    });
    assert!(gone, "the helper {helper} survived the lost lease");
}

#[kit::test]
fn sigterm_to_spacelock_reaches_the_child_then_releases() {
    let server = Server::new();
    let dir = tmp();
    let mut c = run_cmd(&server, &["svc", "--"]);
    c.args(sh(&trap_script(dir.path(), 3)));
    let child = start(c);
    wait_for_file(&dir.path().join("started"));
    assert!(exists(&server, &format!("{PREFIX}svc")));
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    let out = finish(child, Duration::from_secs(10));
    assert_eq!(
        out.code(),
        Some(3),
        "the child's own exit code; stderr {}",
        out.stderr
    );
    assert!(dir.path().join("term").exists(), "the child got SIGTERM");
    assert!(out.stderr.contains("forwarding SIGTERM"), "{}", out.stderr);
    assert!(!exists(&server, &format!("{PREFIX}svc")), "released");

    // SIGINT too; a child that dies of it gives 130.
    let mut c = run_cmd(&server, &["-q", "svc", "--"]);
    c.args(sh(&format!(
        "touch {}/started2; exec sleep 30",
        dir.path().display()
    )));
    let child = start(c);
    wait_for_file(&dir.path().join("started2"));
    kill(Pid::from_raw(child.id() as i32), Signal::SIGINT).unwrap();
    let out = finish(child, Duration::from_secs(10));
    assert_eq!(out.code(), Some(130), "stderr {}", out.stderr);
    assert_eq!(out.stderr, "", "-q");
    assert!(!exists(&server, &format!("{PREFIX}svc")), "released");
}

#[kit::test]
fn unreachable_server_exits_69() {
    let url = format!("redis://127.0.0.1:{}/", free_port());
    let mut c = spacelock();
    c.args(["run", "--url", &url, "k", "--", "true"]);
    let out = output(c);
    assert_eq!(out.code(), Some(69), "stderr: {}", out.stderr);
    assert!(
        out.stderr
            .starts_with(&format!("spacelock: redis unavailable at {url}")),
        "{}",
        out.stderr
    );
    assert!(out.took < Duration::from_secs(10), "took {:?}", out.took);

    let mut c = spacelock();
    c.args(["info", "--url", &url, "k"]);
    assert_eq!(output(c).code(), Some(69));

    // The password is not echoed.
    let url = format!("redis://:hunter2@127.0.0.1:{}/", free_port());
    let mut c = spacelock();
    c.args(["run", "--url", &url, "k", "--", "true"]);
    let out = output(c);
    assert_eq!(out.code(), Some(69));
    assert!(!out.stderr.contains("hunter2"), "{}", out.stderr);

    // A URL that does not parse is a usage error.
    let mut c = spacelock();
    c.args(["run", "--url", "not a url", "k", "--", "true"]);
    let out = output(c);
    assert_eq!(out.code(), Some(64), "stderr: {}", out.stderr);
    assert!(
        out.stderr.starts_with("spacelock: invalid --url not a url"),
        "{}",
        out.stderr
    );
}

#[kit::test]
fn server_without_the_module_exits_69_with_the_hint() {
    let server = ServerBuilder::new().without_module().start();
    let dir = tmp();
    let mut c = run_cmd(&server, &["k", "--", "touch"]);
    c.arg(dir.path().join("ran"));
    let out = output(c);
    assert_eq!(out.code(), Some(69), "stderr: {}", out.stderr);
    assert!(out.stderr.contains("module not loaded"), "{}", out.stderr);
    assert!(out.stderr.contains("loadmodule"), "{}", out.stderr);
    assert!(out.stderr.contains("MODULE LOAD"), "{}", out.stderr);
    assert!(!dir.path().join("ran").exists());

    let mut c = spacelock();
    c.args(["info", "--url", &server.url(), "k"]);
    let out = output(c);
    assert_eq!(out.code(), Some(69));
    assert!(out.stderr.contains("loadmodule"), "{}", out.stderr);
}

#[kit::test]
fn bad_arguments_exit_64_with_usage() {
    for args in [
        &[][..],
        &["run"],
        &["run", "k"],
        &["run", "--ttl", "30", "k", "--", "true"],
        &["run", "--ttl", "0s", "k", "--", "true"],
        &["run", "--wait", "forever", "k", "--", "true"],
        &["run", "--kill-grace", "-1s", "k", "--", "true"],
        &["run", "--bogus", "k", "--", "true"],
        &["info"],
        &["frobnicate"],
    ] {
        let mut c = spacelock();
        c.args(args);
        let out = output(c);
        assert_eq!(out.code(), Some(64), "{args:?}: {}", out.stderr);
        assert!(out.stderr.contains("Usage"), "{args:?}: {}", out.stderr);
    }
    for args in [
        &["--help"][..],
        &["run", "--help"],
        &["info", "-h"],
        &["--version"],
    ] {
        let mut c = spacelock();
        c.args(args);
        let out = output(c);
        assert_eq!(out.code(), Some(0), "{args:?}");
        assert!(!out.stdout.is_empty());
    }
    let mut c = spacelock();
    c.arg("--help");
    let help = output(c).stdout;
    for needle in ["run", "info", "Exit codes", "75", "76", "SPACELOCK_URL"] {
        assert!(help.contains(needle), "--help lacks {needle}");
    }
}

#[kit::test]
fn server_errors_are_reported() {
    let server = Server::new();
    kit::config_set(&mut server.conn(), "spacelock.max-ttl", 1000);
    let mut c = run_cmd(&server, &["--ttl", "2s", "k", "--", "true"]);
    c.arg("x");
    let out = output(c);
    assert_eq!(out.code(), Some(64), "stderr: {}", out.stderr);
    assert!(
        out.stderr
            .starts_with("spacelock: the server refuses --ttl: ")
            && out.stderr.contains("max-ttl"),
        "{}",
        out.stderr
    );

    // An ACL user without the spacelock commands: a clear error, 69.
    let _: () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg("ro")
        .arg("on")
        .arg(">pw")
        .arg("~*")
        .arg("+@all")
        .arg("-spacelock.acquire")
        .query(&mut server.conn())
        .unwrap();
    let mut c = spacelock();
    c.args([
        "run",
        "--url",
        &format!("redis://ro:pw@127.0.0.1:{}/", server.port),
    ])
    .args(["k", "--", "true"]);
    let out = output(c);
    assert_eq!(out.code(), Some(69), "stderr: {}", out.stderr);
    assert!(out.stderr.contains("redis error at"), "{}", out.stderr);
    assert!(out.stderr.contains("no permissions"), "{}", out.stderr);
    assert!(!out.stderr.contains(":pw@"), "{}", out.stderr);
}

#[kit::test]
fn missing_command_exits_127_after_releasing() {
    let server = Server::new();
    let mut c = run_cmd(
        &server,
        &["nocmd", "--", "/nonexistent/spacelock-test-cmd", "a"],
    );
    c.arg("b");
    let out = output(c);
    assert_eq!(out.code(), Some(127), "stderr: {}", out.stderr);
    assert!(
        out.stderr
            .contains("spacelock: command not found: /nonexistent/spacelock-test-cmd"),
        "{}",
        out.stderr
    );
    assert!(!exists(&server, &format!("{PREFIX}nocmd")), "released");
    let mut c = run_cmd(
        &server,
        &["nocmd", "--", "spacelock-no-such-command-on-path"],
    );
    c.arg("x");
    assert_eq!(output(c).code(), Some(127));

    // Found but not executable: 126, released as well.
    let dir = tmp();
    let script: PathBuf = dir.path().join("not-exec.sh");
    std::fs::write(&script, "#!/bin/sh\necho hi\n").unwrap();
    let mut c = run_cmd(&server, &["nocmd", "--"]);
    c.arg(&script);
    let out = output(c);
    assert_eq!(out.code(), Some(126), "stderr: {}", out.stderr);
    assert!(!exists(&server, &format!("{PREFIX}nocmd")), "released");
}

#[kit::test]
fn info_shows_free_and_the_holder() {
    let server = Server::new();
    let mut c = spacelock();
    c.args(["info", "--url", &server.url(), "jobx"]);
    let out = output(c);
    assert_eq!(out.code(), Some(0));
    assert_eq!(out.stdout, "free\n");
    let mut c = spacelock();
    c.args(["info", "--json", "--url", &server.url(), "jobx"]);
    assert_eq!(
        output(c).stdout.trim(),
        format!(r#"{{"key":"{PREFIX}jobx","held":false}}"#)
    );

    let dir = tmp();
    let d = dir.path().display();
    let mut c = run_cmd(&server, &["jobx", "--"]);
    c.args(sh(&format!(
        "trap 'exit 0' TERM; \
         echo \"$SPACELOCK_OWNER $SPACELOCK_TOKEN\" > {d}/env.tmp; mv {d}/env.tmp {d}/env; \
         while :; do sleep 0.05 & wait $!; done"
    )));
    let holder = start(c);
    wait_for_file(&dir.path().join("env"));
    let env = std::fs::read_to_string(dir.path().join("env")).unwrap();
    let (owner, token) = env.trim().split_once(' ').unwrap();

    let mut c = spacelock();
    c.args(["info", "--url", &server.url(), "jobx"]);
    let text = output(c).stdout;
    assert!(text.starts_with("held\n"), "{text}");
    assert!(text.contains(&format!("owner: {owner}\n")), "{text}");
    assert!(text.contains(&format!("token: {token}\n")), "{text}");
    assert!(text.contains("waiters: 0\n"), "{text}");

    let mut c = spacelock();
    c.args(["info", "--json", "--url", &server.url(), "jobx"]);
    let json = output(c).stdout;
    assert!(
        json.starts_with(&format!(
            r#"{{"key":"{PREFIX}jobx","held":true,"owner":"{owner}","ttl_ms":"#
        )),
        "{json}"
    );
    assert!(
        json.contains(&format!(
            r#","token":{token},"waiters":0,"mode":"exclusive","limit":1,"holders":[{{"owner":"{owner}","#
        )),
        "{json}"
    );

    kill(Pid::from_raw(holder.id() as i32), Signal::SIGTERM).unwrap();
    assert_eq!(finish(holder, Duration::from_secs(10)).code(), Some(0));
}

#[kit::test]
fn redis_going_away_is_a_lost_lease() {
    let mut server = Server::new();
    let dir = tmp();
    let mut c = run_cmd(
        &server,
        &["--ttl", "500ms", "--kill-grace", "2s", "orphan", "--"],
    );
    c.args(sh(&trap_script(dir.path(), 0)));
    let child = start(c);
    wait_for_file(&dir.path().join("started"));
    server.kill9();
    let out = finish(child, Duration::from_secs(15));
    assert_eq!(out.code(), Some(76), "stderr: {}", out.stderr);
    assert!(dir.path().join("term").exists(), "the child got SIGTERM");
    assert!(
        out.stderr.contains(&format!(
            "spacelock: lease lost: {PREFIX}orphan: no refresh succeeded within the ttl"
        )),
        "{}",
        out.stderr
    );
}

#[cfg(target_os = "linux")]
#[kit::test]
fn killing_spacelock_with_sigkill_still_stops_the_command() {
    let server = Server::new();
    let dir = tmp();
    let mut c = run_cmd(&server, &["--ttl", "1s", "killed", "--"]);
    c.args(sh(&trap_script(dir.path(), 0)));
    let mut child = start(c);
    wait_for_file(&dir.path().join("started"));
    child.kill().unwrap(); // SIGKILL: no forwarding, no release
    child.wait().unwrap();
    wait_for_file(&dir.path().join("term"));
    // Nobody released it; the lease runs out on its own.
    assert!(wait_until(Duration::from_secs(5), || !exists(
        &server,
        &format!("{PREFIX}killed")
    )));
}

#[kit::test]
fn works_against_a_cluster() {
    let cluster = kit::Cluster::start(3);
    let urls = cluster.urls().join(",");
    let mut tokens = Vec::new();
    // Names that hash to different nodes.
    for name in ["alpha", "bravo", "charlie", "alpha"] {
        let mut c = spacelock();
        c.args(["run", "--cluster", "--url", &urls, name, "--"])
            .args(sh("echo $SPACELOCK_TOKEN"));
        let out = output(c);
        assert_eq!(out.code(), Some(0), "{name}: {}", out.stderr);
        tokens.push((name, out.stdout.trim().parse::<u64>().unwrap()));
    }
    assert!(tokens[3].1 > tokens[0].1, "{tokens:?}");

    let dir = tmp();
    let mut c = spacelock();
    c.args(["run", "--cluster", "--url", &urls, "bravo", "--"])
        .args(sh(&trap_script(dir.path(), 0)));
    let holder = start(c);
    wait_for_file(&dir.path().join("started"));
    let mut c = spacelock();
    c.args(["info", "--cluster", "--url", &urls, "bravo"]);
    let out = output(c);
    assert!(
        out.stdout.starts_with("held\n"),
        "{}{}",
        out.stdout,
        out.stderr
    );
    let mut c = spacelock();
    c.args(["run", "--cluster", "--url", &urls, "bravo", "--", "true"]);
    assert_eq!(output(c).code(), Some(75));
    kill(Pid::from_raw(holder.id() as i32), Signal::SIGTERM).unwrap();
    assert_eq!(finish(holder, Duration::from_secs(10)).code(), Some(0));
    let mut c = spacelock();
    c.args(["info", "--cluster", "--url", &urls, "bravo"]);
    assert_eq!(output(c).stdout, "free\n");
}

/// `script(1)` (util-linux, in every Debian) runs `spacelock` on a fresh
/// pseudo-terminal, in the terminal's foreground group, as a shell prompt
/// would. Bytes written to the returned child's stdin reach the terminal.
fn under_terminal(server: &Server, key: &str, command: &str) -> Child {
    let line = format!(
        "{BIN} run --url {} --ttl 3s {key} -- sh -c '{command}'",
        server.url()
    );
    Command::new("script")
        .args(["-q", "-e", "-c", &line, "/dev/null"])
        .env_remove("SPACELOCK_URL")
        .env_remove("REDIS_URL")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn script(1)")
}

/// Waits for the `script(1)` run (10 s at most) and checks it exited 0.
fn finish_under_terminal(child: Child) -> Output {
    let out = finish(child, Duration::from_secs(10));
    assert_eq!(
        out.code(),
        Some(0),
        "stdout:\n{}\nstderr:\n{}",
        out.stdout,
        out.stderr
    );
    out
}

/// The pid of the `spacelock run` process locking `key` (under `script`).
fn spacelock_pid(key: &str) -> Option<Pid> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: i32 = e.file_name().to_str()?.parse().ok()?;
        let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        (args.first() == Some(&BIN.as_bytes()) && args.contains(&key.as_bytes()))
            .then(|| Pid::from_raw(pid))
    })
}

/// `/proc/PID/stat` after the command name: state, ppid, pgrp, session,
/// tty, tpgid (the terminal's foreground group), ...
fn stat_fields(pid: i32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_string).collect())
}

/// Whether the command that `spacelock` (pid `spacelock`) runs is running
/// (not stopped) in the terminal's foreground group, so that what is typed
/// next reaches it.
fn command_has_the_terminal(spacelock: Pid) -> bool {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return false;
    };
    dir.flatten().any(|e| {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            return false;
        };
        let Some(f) = stat_fields(pid) else {
            return false;
        };
        f.len() > 5 && f[1] == spacelock.as_raw().to_string() && f[0] != "T" && f[2] == f[5]
    })
}

/// Run from a terminal, the command (in its own process group, for
/// kill-on-loss) is handed the terminal and can read from it, instead of
/// being stopped by SIGTTIN.
#[kit::test]
fn an_interactive_command_can_read_the_terminal() {
    use std::io::Write;
    let server = Server::new();
    let mut child = under_terminal(&server, "tty-read", "read x; echo got:$x");
    let key = format!("{PREFIX}tty-read");
    assert!(
        wait_until(Duration::from_secs(10), || exists(&server, &key)),
        "the lock was never taken"
    );
    child.stdin.as_mut().unwrap().write_all(b"hello\n").unwrap();
    let out = finish_under_terminal(child);
    assert!(out.stdout.contains("got:hello"), "stdout:\n{}", out.stdout);
    assert!(!exists(&server, &key), "released after the command");
}

/// Ctrl-Z stops the command (the terminal's foreground group); spacelock
/// then stops too, so a shell sees the job stopped. Continued, it hands
/// the terminal back and continues the command, which finishes normally.
#[kit::test]
fn ctrl_z_stops_spacelock_with_the_command_and_continue_resumes_both() {
    use std::io::Write;
    let server = Server::new();
    let dir = tmp();
    // The command has the terminal by the time it runs (spacelock hands it
    // over before exec), so Ctrl-Z goes to it only once it has started:
    // waiting for the key alone raced the spawn on a loaded machine.
    let started = dir.path().join("started");
    let command = format!("touch {}; read x; echo got:$x", started.display());
    let mut child = under_terminal(&server, "tty-stop", &command);
    let key = format!("{PREFIX}tty-stop");
    wait_for_file(&started);
    let pid = spacelock_pid("tty-stop").expect("spacelock process");
    let stdin = child.stdin.as_mut().unwrap();
    stdin.write_all(&[0x1a]).unwrap(); // Ctrl-Z
    stdin.flush().unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || proc_state(pid.as_raw())
            == Some('T')),
        "spacelock did not stop with its command (state {:?})",
        proc_state(pid.as_raw())
    );
    assert!(
        exists(&server, &key),
        "still held while stopped (within the ttl)"
    );
    // script(1) stops itself when its child stops, as a shell's job would
    // appear stopped; continuing it continues spacelock (as `fg` would).
    let script = Pid::from_raw(i32::try_from(child.id()).unwrap());
    kill(script, Signal::SIGCONT).unwrap();
    kill(pid, Signal::SIGCONT).unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || proc_state(pid.as_raw())
            != Some('T')),
        "spacelock did not continue"
    );
    assert!(
        wait_until(Duration::from_secs(5), || command_has_the_terminal(pid)),
        "spacelock did not hand the terminal back to the command"
    );
    let stdin = child.stdin.as_mut().unwrap();
    stdin.write_all(b"again\n").unwrap();
    let out = finish_under_terminal(child);
    assert!(out.stdout.contains("got:again"), "stdout:\n{}", out.stdout);
    assert!(
        out.stdout.contains("the command was stopped"),
        "stdout:\n{}",
        out.stdout
    );
    assert!(!exists(&server, &key), "released after the command");
}

/// Started as a background job of an interactive shell, spacelock leaves the
/// terminal to the shell. The command stops when it reads the terminal
/// (SIGTTIN); spacelock stops with it, so the shell reports the job stopped,
/// and `fg` hands the terminal on to the command, which then reads it.
#[kit::test]
fn a_background_job_reading_the_terminal_stops_and_fg_resumes_it() {
    use std::io::Write;
    let server = Server::new();
    let key = format!("{PREFIX}bg-read");
    let mut shell = Command::new("script")
        .args(["-q", "-c", "bash --norc --noprofile -i", "/dev/null"])
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("PS1", "$ ")
        .env("TERM", "dumb")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn script(1)");
    let line = format!(
        "{BIN} run --url {} --ttl 3s bg-read -- sh -c 'read x; echo got:$x' &\n",
        server.url()
    );
    shell
        .stdin
        .as_mut()
        .unwrap()
        .write_all(line.as_bytes())
        .unwrap();
    let mut pid = None;
    assert!(
        wait_until(Duration::from_secs(10), || {
            pid = spacelock_pid("bg-read");
            pid.is_some_and(|p| proc_state(p.as_raw()) == Some('T'))
        }),
        "the background job did not stop (pid {pid:?})"
    );
    assert!(exists(&server, &key), "held while the job is stopped");
    let pid = pid.unwrap();
    shell.stdin.as_mut().unwrap().write_all(b"fg\n").unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || proc_state(pid.as_raw())
            != Some('T')),
        "fg did not continue spacelock"
    );
    assert!(
        wait_until(Duration::from_secs(5), || command_has_the_terminal(pid)),
        "spacelock did not hand the terminal on to the command"
    );
    let stdin = shell.stdin.as_mut().unwrap();
    stdin.write_all(b"yo\n").unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || !exists(&server, &key)),
        "the command did not finish and release after reading"
    );
    stdin.write_all(b"exit\n").unwrap();
    let out = finish(shell, Duration::from_secs(10));
    assert!(out.stdout.contains("got:yo"), "stdout:\n{}", out.stdout);
    assert!(
        out.stdout.contains("the command was stopped; stopping too"),
        "stdout:\n{}",
        out.stdout
    );
}

kit::main!();
