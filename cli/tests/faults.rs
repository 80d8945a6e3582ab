//! Faults through the `spacelock` binary, against real servers (and a
//! fault proxy in front of one): a wait longer than the ttl, connections
//! closed when idle, write pauses, a stopped and a restarted server, a dead
//! server, and input that used to make the CLI panic. Each test reproduces
//! a failure measured before the fix.

use spacelock_testkit as kit;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kit::process::{finish, proc_state, sh, start, wait_for_file, Output};
use kit::{wait_until, Proxy, ProxyMode, Server, ServerBuilder};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

const BIN: &str = env!("CARGO_BIN_EXE_spacelock");
const PREFIX: &str = "spacelock:lock:";

fn spacelock() -> Command {
    kit::process::cli_command(BIN)
}

fn run_at(url: &str, args: &[&str]) -> Command {
    kit::process::cli_run(BIN, url, args)
}

fn output(cmd: Command) -> Output {
    kit::process::output(cmd, Duration::from_secs(30))
}

fn exists(server: &Server, key: &str) -> bool {
    kit::exists(&mut server.conn(), key)
}

/// Runs until SIGTERM (then exits 0); writes `started` first.
fn until_term(dir: &Path) -> String {
    format!(
        "trap 'exit 0' TERM; touch {d}/started; while :; do sleep 0.05 & wait $!; done",
        d = dir.display()
    )
}

/// Runs until the file `go` appears; writes `started` first.
fn until_go(dir: &Path) -> String {
    format!(
        "touch {d}/started; while [ ! -f {d}/go ]; do sleep 0.02; done",
        d = dir.display()
    )
}

fn server_pid(server: &Server) -> Pid {
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query(&mut server.conn())
        .unwrap();
    let pid = info
        .lines()
        .find_map(|l| l.strip_prefix("process_id:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    Pid::from_raw(pid)
}

fn child_running(child: &Child) -> bool {
    proc_state(child.id() as i32).is_some_and(|s| s != 'Z')
}

/// Before: the second `run --wait 10s --ttl 500ms` got the lock after more
/// than its ttl, its command was killed at once and it exited 76 ("no
/// refresh succeeded within the ttl"): the lease counted from before the wait.
#[kit::test]
fn a_wait_longer_than_the_ttl_keeps_its_lease() {
    let server = Server::new();
    let dir = tempfile::tempdir().unwrap();
    let mut c = run_at(&server.url(), &["--ttl", "300ms", "par2", "--"]);
    c.args(sh(&until_term(dir.path())));
    let first = start(c);
    wait_for_file(&dir.path().join("started"));
    let mut c = run_at(
        &server.url(),
        &["--wait", "10s", "--ttl", "300ms", "par2", "--"],
    );
    c.args(sh("sleep 1; echo done"));
    let second = start(c);
    kit::until_waiting(&mut server.conn(), 1);
    // The wait lasts well over the second's 300 ms ttl.
    std::thread::sleep(Duration::from_millis(600));
    kill(Pid::from_raw(first.id() as i32), Signal::SIGTERM).unwrap();
    assert_eq!(finish(first, Duration::from_secs(10)).code(), Some(0));
    let out = finish(second, Duration::from_secs(15));
    assert_eq!(out.code(), Some(0), "stderr: {}", out.stderr);
    assert_eq!(out.stdout, "done\n");
    assert_eq!(out.stderr, "");
    assert!(!exists(&server, &format!("{PREFIX}par2")));
}

/// Before: behind an idle timeout shorter than ttl/3, every refresh failed
/// ("broken pipe") and the run exited 76; a release after an idle command
/// failed silently, the lock stayed held for its ttl, and the next run
/// exited 75.
#[kit::test]
fn connections_closed_when_idle_keep_the_lease_and_the_release_lands() {
    let server = Server::new();
    let proxy = Proxy::start(server.port);
    proxy.set_idle_timeout(Some(Duration::from_millis(250)));
    // Refreshes every 400 ms, each after 400 ms of silence.
    let out = output({
        let mut c = run_at(&proxy.url(), &["--ttl", "1200ms", "idle", "--"]);
        c.args(sh("sleep 2; echo ok"));
        c
    });
    assert_eq!(out.code(), Some(0), "stderr: {}", out.stderr);
    assert_eq!(out.stdout, "ok\n");
    // Release after 0.6 s of silence (the ttl is 30 s: no refresh before it).
    let out = output(run_at(&proxy.url(), &["idlerel", "--", "sleep", "0.6"]));
    assert_eq!(out.code(), Some(0), "stderr: {}", out.stderr);
    assert!(
        !exists(&server, &format!("{PREFIX}idlerel")),
        "the release did not land"
    );
    assert_eq!(
        output(run_at(&proxy.url(), &["idlerel", "--", "true"])).code(),
        Some(0)
    );
    assert!(
        proxy.closed() >= 4,
        "the proxy closed only {} idle connections",
        proxy.closed()
    );
}

/// The same against the server's own idle timeout (`timeout 1`, checked in
/// whole seconds): a connection silent for 2.2 s is closed.
#[kit::test]
fn a_server_idle_timeout_does_not_keep_the_lock_held() {
    let server = ServerBuilder::new().arg("timeout", "1").start();
    let out = output(run_at(&server.url(), &["idlerel", "--", "sleep", "2.2"]));
    assert_eq!(out.code(), Some(0), "stderr: {}", out.stderr);
    assert!(
        !exists(&server, &format!("{PREFIX}idlerel")),
        "the release did not land"
    );
    assert_eq!(
        output(run_at(&server.url(), &["idlerel", "--", "true"])).code(),
        Some(0),
        "the next run"
    );
}

/// Before: the RELEASE timed out after 500 ms while the server held it,
/// spacelock exited 0 at once, and the lock stayed held (27 s left).
#[kit::test]
fn a_release_during_a_write_pause_lands_before_exit() {
    let server = Server::new();
    let port = server.port.to_string();
    let out = output(run_at(
        &server.url(),
        &[
            "pauserel",
            "--",
            "redis-cli",
            "-p",
            &port,
            "client",
            "pause",
            "1500",
            "write",
        ],
    ));
    assert_eq!(out.code(), Some(0), "stderr: {}", out.stderr);
    assert!(
        out.took >= Duration::from_millis(1300),
        "exited after {:?}",
        out.took
    );
    assert!(!exists(&server, &format!("{PREFIX}pauserel")), "still held");
    assert_eq!(out.stderr, "");
}

/// Before: `spacelock run` started during a write pause exited 69 ("redis
/// unavailable … timed out") although the server was up.
#[kit::test]
fn a_run_started_during_a_write_pause_waits_for_it() {
    let server = Server::new();
    for args in [
        &["paused", "--", "true"][..],
        &["--wait", "2s", "paused", "--", "true"],
    ] {
        kit::pause_writes(&mut server.conn(), 800);
        let out = output(run_at(&server.url(), args));
        assert_eq!(out.code(), Some(0), "{args:?}: {}", out.stderr);
        assert!(
            out.took >= Duration::from_millis(600),
            "{args:?}: {:?}",
            out.took
        );
        assert!(!exists(&server, &format!("{PREFIX}paused")));
    }
}

/// A server stopped (SIGSTOP) while spacelock releases: the release waits
/// for it to continue and lands. Before: the release timed out after 500 ms.
#[kit::test]
fn a_release_while_the_server_is_stopped_lands_when_it_continues() {
    let server = Server::new();
    let pid = server_pid(&server);
    let mut c = run_at(&server.url(), &["stopped", "--"]);
    c.args(sh(&format!("kill -STOP {pid}")));
    let t0 = Instant::now();
    let child = start(c);
    assert!(
        wait_until(Duration::from_secs(10), || proc_state(pid.as_raw())
            == Some('T')),
        "the server was not stopped"
    );
    // The server stays stopped for a while (this is the fault, not a wait).
    std::thread::sleep(Duration::from_millis(800));
    assert!(
        child_running(&child),
        "spacelock exited while the server was stopped"
    );
    let stopped_for = t0.elapsed();
    kill(pid, Signal::SIGCONT).unwrap();
    let out = finish(child, Duration::from_secs(15));
    assert_eq!(out.code(), Some(0), "stderr: {}", out.stderr);
    // It waited the stop out: more than the 500 ms it used to give up after.
    assert!(stopped_for >= Duration::from_millis(800), "{stopped_for:?}");
    assert!(!exists(&server, &format!("{PREFIX}stopped")), "still held");
}

/// The server is killed (SIGKILL) and restarts from its AOF, with the lock
/// in it, while the command runs: the heartbeat and the release reconnect.
/// Before: the release failed on the dead connection and the restored lock
/// stayed held.
#[kit::test]
fn a_server_restarted_under_a_running_command_gets_the_release() {
    let server = ServerBuilder::new()
        .arg("appendonly", "yes")
        .arg("appendfsync", "always")
        .start();
    let dir = tempfile::tempdir().unwrap();
    let mut c = run_at(&server.url(), &["--ttl", "10s", "restarted", "--"]);
    c.args(sh(&until_go(dir.path())));
    let child = start(c);
    wait_for_file(&dir.path().join("started"));
    let server = server.crash_and_restart();
    assert!(
        exists(&server, &format!("{PREFIX}restarted")),
        "restored from the AOF"
    );
    std::fs::write(dir.path().join("go"), "").unwrap();
    let out = finish(child, Duration::from_secs(15));
    assert_eq!(out.code(), Some(0), "stderr: {}", out.stderr);
    assert!(
        !exists(&server, &format!("{PREFIX}restarted")),
        "still held"
    );
}

/// Before: a release that failed was never reported. Now it is, on stderr,
/// within --release-timeout, and the exit code stays the command's.
#[kit::test]
fn a_failed_release_is_reported() {
    let server = Server::new();
    let port = server.port.to_string();
    let mut c = run_at(
        &server.url(),
        &["--ttl", "20s", "--release-timeout", "1s", "dead", "--"],
    );
    c.args(sh(&format!(
        "redis-cli -p {port} shutdown nosave >/dev/null 2>&1; exit 3"
    )));
    let out = output(c);
    assert_eq!(out.code(), Some(3), "stderr: {}", out.stderr);
    assert!(
        out.stderr.contains(&format!(
            "spacelock: could not release {PREFIX}dead: redis did not answer within 1s"
        )),
        "{}",
        out.stderr
    );
    assert!(out.took < Duration::from_secs(4), "{:?}", out.took);
}

/// Before: when no wait connection could be opened, `--wait 500ms` said
/// "lock held … still held after waiting" (75) although the lock was free.
#[kit::test]
fn a_wait_connection_that_cannot_connect_does_not_mean_held() {
    let server = Server::new();
    let proxy = Proxy::start(server.port);
    // The first connection (the shared one) works; the wait connection hangs.
    proxy.set_mode(ProxyMode::ForwardFirst(1));
    let out = output(run_at(
        &proxy.url(),
        &["--wait", "500ms", "free", "--", "true"],
    ));
    assert_eq!(out.code(), Some(0), "stderr: {}", out.stderr);
    assert!(proxy.accepted() >= 2, "the wait connection was never tried");
}

/// Before: these panicked (exit 101, or 69 for a panic in the wait task).
#[kit::test]
fn no_input_makes_it_panic() {
    let server = Server::new();
    let url = server.url();
    for (args, needle) in [
        (&["--wait", "5124095576030431h"][..], "too large"),
        (&["--kill-grace", "5124095576030431h"], "too large"),
        (&["--release-timeout", "99999999999999999999s"], "too large"),
        (&["--ttl", "1ms"], "at least 10ms"),
        (&["--ttl", "9ms"], "at least 10ms"),
    ] {
        let mut c = run_at(&url, args);
        c.args(["k", "--", "true"]);
        let out = output(c);
        assert_eq!(out.code(), Some(64), "{args:?}: {}", out.stderr);
        assert!(out.stderr.contains(needle), "{args:?}: {}", out.stderr);
        assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
    }
    for args in [
        &["run", "--url", &url, "", "--", "true"][..],
        &["info", "--url", &url, ""],
    ] {
        let mut c = spacelock();
        c.args(args);
        let out = output(c);
        assert_eq!(out.code(), Some(64), "{args:?}: {}", out.stderr);
        assert!(out.stderr.contains("must not be empty"), "{}", out.stderr);
    }
    assert!(!exists(&server, PREFIX), "the bare prefix was never locked");

    // The largest kill grace, on a lost lease.
    let dir = tempfile::tempdir().unwrap();
    let mut c = run_at(
        &url,
        &["--ttl", "300ms", "--kill-grace", "876000h", "kg", "--"],
    );
    c.args(sh(&until_term(dir.path())));
    let child = start(c);
    wait_for_file(&dir.path().join("started"));
    let _: i64 = redis::cmd("DEL")
        .arg(format!("{PREFIX}kg"))
        .query(&mut server.conn())
        .unwrap();
    let out = finish(child, Duration::from_secs(10));
    assert_eq!(out.code(), Some(76), "stderr: {}", out.stderr);
    assert!(out.stderr.contains("SIGKILL in 876000h"), "{}", out.stderr);

    // stdout or stderr closed: quiet, with the real exit code.
    for (args, code) in [
        (&["info", "--url", &url, "k"][..], 0),
        (&["info", "--json", "--url", &url, "k"], 0),
        (&["--help"], 0),
    ] {
        let mut c = spacelock();
        c.args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .stdin(Stdio::null());
        let mut child = c.spawn().unwrap();
        drop(child.stdout.take()); // `| head -0`
        let out = finish(child, Duration::from_secs(10));
        assert_eq!(out.code(), Some(code), "{args:?}: {}", out.stderr);
        assert_eq!(out.stderr, "", "{args:?}");
    }
    let mut holder = run_at(&url, &["held", "--"]);
    holder.args(sh(&until_term(dir.path())));
    let _ = std::fs::remove_file(dir.path().join("started"));
    let holder = start(holder);
    wait_for_file(&dir.path().join("started"));
    let mut c = run_at(&url, &["held", "--", "true"]);
    c.stdout(Stdio::null())
        .stderr(Stdio::piped())
        .stdin(Stdio::null());
    let mut child = c.spawn().unwrap();
    drop(child.stderr.take());
    let out = finish(child, Duration::from_secs(10));
    assert_eq!(out.code(), Some(75), "lock held, with stderr closed");
    kill(Pid::from_raw(holder.id() as i32), Signal::SIGTERM).unwrap();
    assert_eq!(finish(holder, Duration::from_secs(10)).code(), Some(0));
}

/// Before: text-mode `info` printed an owner's NUL and invalid bytes raw.
#[kit::test]
fn info_escapes_what_a_terminal_would_act_on() {
    let server = Server::new();
    let _: () = redis::cmd("SET")
        .arg(format!("{PREFIX}bin"))
        .arg(&b"o\x00w\xffn\x1b[2J"[..])
        .query(&mut server.conn())
        .unwrap();
    let mut c = spacelock();
    c.args(["info", "--url", &server.url(), "bin"]);
    let out = output(c);
    assert_eq!(out.code(), Some(0), "{}", out.stderr);
    assert!(
        out.stdout.contains("owner: o\\x00w\\xffn\\x1b[2J\n"),
        "{:?}",
        out.stdout
    );
    assert!(!out.stdout.contains('\u{1b}') && !out.stdout.contains('\0'));
    // A run that finds it held says so on one escaped line.
    let out = output(run_at(&server.url(), &["bin", "--", "true"]));
    assert_eq!(out.code(), Some(75));
    assert!(
        out.stderr.contains("owner o\\x00w\\xffn\\x1b[2J"),
        "{:?}",
        out.stderr
    );
}

kit::main!();
