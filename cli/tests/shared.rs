//! `spacelock run --shared` and `--limit N` against a real redis-server with
//! the module: readers overlap, a writer excludes them, N permits at most.

use spacelock_testkit as kit;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use kit::process::{finish, sh, start, wait_for_file, Output};
use kit::Server;

const BIN: &str = env!("CARGO_BIN_EXE_spacelock");
const PREFIX: &str = "spacelock:lock:";

fn run_cmd(server: &Server, args: &[&str]) -> Command {
    kit::process::cli_run(BIN, &server.url(), args)
}

fn output(cmd: Command) -> Output {
    kit::process::output(cmd, Duration::from_secs(20))
}

/// Writes `name` in `dir`, then waits until `until` exists there.
fn hold_until(dir: &Path, name: &str, until: &str) -> String {
    format!(
        "touch {d}/{name}; while [ ! -e {d}/{until} ]; do sleep 0.02; done",
        d = dir.display()
    )
}

fn touch(dir: &Path, name: &str) -> String {
    format!("touch {}/{name}", dir.display())
}

#[kit::test]
fn two_shared_runs_overlap_and_a_writer_is_excluded() {
    let server = Server::new();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut c = run_cmd(&server, &["--shared", "cache", "--"]);
    c.args(sh(&hold_until(d, "first", "go")));
    let first = start(c);
    wait_for_file(&d.join("first"));
    // A second reader runs while the first holds its share.
    let mut c = run_cmd(&server, &["--shared", "cache", "--"]);
    c.args(sh(&touch(d, "second")));
    let out = output(c);
    assert_eq!(out.code(), Some(0), "stderr: {}", out.stderr);
    assert!(d.join("second").exists());
    // A writer does not.
    let mut c = run_cmd(&server, &["cache", "--"]);
    c.args(sh(&touch(d, "writer")));
    let out = output(c);
    assert_eq!(out.code(), Some(75), "stderr: {}", out.stderr);
    assert!(!d.join("writer").exists());
    std::fs::write(d.join("go"), "").unwrap();
    let out = finish(first, Duration::from_secs(10));
    assert_eq!(out.code(), Some(0), "stderr: {}", out.stderr);
    assert!(!kit::exists(&mut server.conn(), format!("{PREFIX}cache")));
}

/// A reader run on a name a writer holds: without `--wait` it exits 75 at
/// once; with a `--wait` that runs out while the writer still holds, 75
/// when it runs out. Then, with a reader inside and a writer queued, a
/// reader run that would fit beside the reader exits 75 too (nobody
/// barges). The command runs in none of them, and the run that waited has
/// left the queue.
#[kit::test]
fn a_shared_run_exits_75_while_a_writer_holds_or_waits() {
    let server = Server::new();
    let mut con = server.conn();
    let key = format!("{PREFIX}cache");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut c = run_cmd(&server, &["cache", "--"]);
    c.args(sh(&hold_until(d, "writing", "written")));
    let writer = start(c);
    wait_for_file(&d.join("writing"));
    let mut c = run_cmd(&server, &["--shared", "cache", "--"]);
    c.args(sh(&touch(d, "no-wait")));
    let out = output(c);
    assert_eq!(out.code(), Some(75), "stderr: {}", out.stderr);
    assert!(!d.join("no-wait").exists());
    // With --wait: queued on the server until the wait runs out, then 75.
    let mut c = run_cmd(&server, &["--shared", "--wait", "2s", "cache", "--"]);
    c.args(sh(&touch(d, "waited")));
    let started = Instant::now();
    let waiting = start(c);
    assert!(kit::wait_until(
        Duration::from_secs(10),
        || kit::key_waiters(&mut con, &key) == 1
    ));
    let out = finish(waiting, Duration::from_secs(20));
    assert_eq!(out.code(), Some(75), "stderr: {}", out.stderr);
    assert!(started.elapsed() >= Duration::from_secs(2), "it waited");
    assert!(!d.join("waited").exists());
    assert_eq!(kit::key_waiters(&mut con, &key), 0, "it left the queue");
    let t: String = redis::cmd("TYPE").arg(&key).query(&mut con).unwrap();
    assert_eq!(t, "string", "the writer still holds the name");
    std::fs::write(d.join("written"), "").unwrap();
    let out = finish(writer, Duration::from_secs(10));
    assert_eq!(out.code(), Some(0), "stderr: {}", out.stderr);

    // A reader inside, a writer queued behind it: a reader run does not
    // pass the writer, though it would fit beside the reader.
    let mut c = run_cmd(&server, &["--shared", "cache", "--"]);
    c.args(sh(&hold_until(d, "reading", "read")));
    let reader = start(c);
    wait_for_file(&d.join("reading"));
    let mut w = server.conn();
    let k = key.clone();
    let queued =
        std::thread::spawn(move || kit::acquire_wait(&mut w, &k, "syncer", 60_000, 20_000));
    assert!(kit::wait_until(
        Duration::from_secs(10),
        || kit::key_waiters(&mut con, &key) == 1
    ));
    let mut c = run_cmd(&server, &["--shared", "cache", "--"]);
    c.args(sh(&touch(d, "barged")));
    let out = output(c);
    assert_eq!(out.code(), Some(75), "stderr: {}", out.stderr);
    assert!(!d.join("barged").exists());
    std::fs::write(d.join("read"), "").unwrap();
    let out = finish(reader, Duration::from_secs(10));
    assert_eq!(out.code(), Some(0), "stderr: {}", out.stderr);
    let token = queued.join().unwrap().unwrap().expect("the writer's turn");
    assert_eq!(kit::check(&mut con, &key, "syncer", token), 1);
}

#[kit::test]
fn limit_1_excludes_and_limit_2_allows_two() {
    let server = Server::new();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for (n, key) in [("1", "one"), ("2", "two")] {
        let mut c = run_cmd(&server, &["--limit", n, key, "--"]);
        c.args(sh(&hold_until(
            d,
            &format!("{key}-first"),
            &format!("{key}-go"),
        )));
        let first = start(c);
        wait_for_file(&d.join(format!("{key}-first")));
        let mut c = run_cmd(&server, &["--limit", n, key, "--"]);
        c.args(sh(&touch(d, &format!("{key}-second"))));
        let out = output(c);
        let ran = d.join(format!("{key}-second")).exists();
        if n == "1" {
            assert_eq!(out.code(), Some(75), "stderr: {}", out.stderr);
            assert!(!ran);
        } else {
            assert_eq!(out.code(), Some(0), "stderr: {}", out.stderr);
            assert!(ran);
        }
        std::fs::write(d.join(format!("{key}-go")), "").unwrap();
        let out = finish(first, Duration::from_secs(10));
        assert_eq!(out.code(), Some(0), "stderr: {}", out.stderr);
    }
}

#[kit::test]
fn a_queued_permit_runs_when_one_comes_back_and_wrong_mode_exits_69() {
    let server = Server::new();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut c = run_cmd(&server, &["--limit", "1", "slot", "--"]);
    c.args(sh(&hold_until(d, "first", "go")));
    let first = start(c);
    wait_for_file(&d.join("first"));
    // Another number of permits, or a reader, on a counted name: WRONGMODE.
    for args in [&["--limit", "2"][..], &["--shared"], &[]] {
        let mut all = args.to_vec();
        all.extend(["slot", "--", "true"]);
        let out = output(run_cmd(&server, &all));
        assert_eq!(out.code(), Some(69), "{args:?}: {}", out.stderr);
        assert!(out.stderr.contains("WRONGMODE"), "{args:?}: {}", out.stderr);
    }
    let mut c = run_cmd(&server, &["--limit", "1", "--wait", "10s", "slot", "--"]);
    c.args(sh(&touch(d, "second")));
    let second = start(c);
    assert!(kit::wait_until(
        Duration::from_secs(5),
        || kit::key_waiters(&mut server.conn(), format!("{PREFIX}slot")) == 1
    ));
    assert!(!d.join("second").exists());
    std::fs::write(d.join("go"), "").unwrap();
    assert_eq!(finish(first, Duration::from_secs(10)).code(), Some(0));
    let out = finish(second, Duration::from_secs(10));
    assert_eq!(out.code(), Some(0), "stderr: {}", out.stderr);
    assert!(d.join("second").exists());
}

#[kit::test]
fn bad_mode_arguments_exit_64() {
    for args in [
        &["run", "--shared", "--limit", "2", "k", "--", "true"][..],
        &["run", "--limit", "0", "k", "--", "true"],
        &["run", "--limit", "1000001", "k", "--", "true"],
        &["run", "--limit", "two", "k", "--", "true"],
        &["run", "--limit", "-1", "k", "--", "true"],
    ] {
        let mut c = kit::process::cli_command(BIN);
        c.args(args);
        let out = output(c);
        assert_eq!(out.code(), Some(64), "{args:?}: {}", out.stderr);
        assert!(out.stderr.contains("Usage"), "{args:?}: {}", out.stderr);
    }
    let mut c = kit::process::cli_command(BIN);
    c.args(["run", "--help"]);
    let help = output(c).stdout;
    assert!(
        help.contains("--shared") && help.contains("--limit <N>"),
        "{help}"
    );
}

kit::main!();

#[kit::test]
fn info_lists_every_holder_of_a_shared_or_counted_key() {
    let server = Server::new();
    let mut con = server.conn();
    for (key, owner, shape) in [
        ("readers", "r1", "SHARED"),
        ("readers", "r2", "SHARED"),
        ("slots", "s1", "LIMIT"),
    ] {
        let mut cmd = redis::cmd("SPACELOCK.ACQUIRE");
        cmd.arg(format!("{PREFIX}{key}"))
            .arg(owner)
            .arg(30_000)
            .arg(shape);
        if shape == "LIMIT" {
            cmd.arg(3);
        }
        let token: i64 = cmd.query(&mut con).unwrap();
        assert!(token > 0);
    }
    let info = |args: &[&str]| {
        let mut c = kit::process::cli_command(BIN);
        c.arg("info").args(args).args(["--url", &server.url()]);
        let out = output(c);
        assert_eq!(out.code(), Some(0), "stderr: {}", out.stderr);
        out.stdout
    };
    let text = info(&["readers"]);
    assert!(text.starts_with("held\n"), "{text}");
    assert!(text.contains("mode: shared\nholders: 2\n"), "{text}");
    assert!(
        text.contains("owner: r1 ") && text.contains("owner: r2 "),
        "{text}"
    );
    let json = info(&["--json", "slots"]);
    assert!(json.contains(r#""held":true,"owner":"s1","#), "{json}");
    assert!(
        json.contains(r#""mode":"limit","limit":3,"holders":[{"owner":"s1","#),
        "{json}"
    );
}
