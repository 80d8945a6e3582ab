//! The short runs of the history checker, part of `make test`: real
//! servers (a primary, two replicas, three Sentinels) through real faults,
//! with the CLI, Rust and (when its build is there) Node clients.
//!
//! 1. About 40 s with replica-acknowledged grants and every server fault:
//!    no violation, and the clients made progress.
//! 2. About 20 s with acknowledgements off and a forced lossy failover (the
//!    primary stopped until Sentinel promoted a replica, then resumed): the
//!    checker must report an overlap and exit non-zero, so a checker that
//!    cannot see overlaps is caught.
//!
//! `make chaos` runs the long version (`CHAOS_SECONDS`, default 600).

use spacelock_testkit as kit;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The runs use most of this machine: one at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

const CHAOS: &str = env!("CARGO_BIN_EXE_spacelock-chaos");

/// The `spacelock` CLI next to this build's binaries, built first if it is
/// not there (a `cargo test -p spacelock-chaos` alone does not build it).
fn cli() -> PathBuf {
    let bin = Path::new(CHAOS).with_file_name("spacelock");
    if !bin.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "--release", "--quiet", "-p", "spacelock-cli"])
            .status()
            .expect("cargo");
        assert!(status.success(), "could not build the spacelock CLI");
    }
    bin
}

/// The compiled Node worker, when the Node package's test build is there.
fn node_worker() -> Option<PathBuf> {
    let p =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../clients/node/build/test/chaos-worker.js");
    let fresh = p.exists()
        && Command::new("node")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
    fresh.then_some(p)
}

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn chaos_run(args: &[&str]) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(CHAOS);
    cmd.arg("run")
        .arg("--dir")
        .arg(dir.path().join("run"))
        .arg("--cli")
        .arg(cli())
        .args(args);
    match node_worker() {
        Some(w) => {
            cmd.arg("--node-worker").arg(w);
        }
        None => {
            eprintln!(
                "the Node worker is not built (npm run build:test): CLI and Rust workers only"
            );
            cmd.arg("--node-workers").arg("0");
        }
    }
    let started = Instant::now();
    let out = kit::process::output(cmd, Duration::from_secs(180));
    eprintln!("{}\n{}", out.stderr, out.stdout);
    eprintln!("the run took {:?}", started.elapsed());
    let run = Run {
        code: out.code(),
        stdout: out.stdout,
        stderr: out.stderr,
    };
    if run.stderr.contains("cannot spawn the sentinel") {
        kit::skip(format!("no sentinel can run here: {}", run.stderr));
    }
    run
}

/// The count in the table's row `name`.
fn row(stdout: &str, name: &str) -> u64 {
    stdout
        .lines()
        .find(|l| l.trim_start_matches([' ', '|']).starts_with(name))
        .and_then(|l| l.split('|').nth(2))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no row {name:?} in\n{stdout}"))
}

#[kit::test]
fn acknowledged_grants_hold_through_every_server_fault() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let run = chaos_run(&[
        "--seconds",
        "40",
        "--replicas",
        "2",
        "--every",
        "4-6",
        "--first-fault",
        "3",
        "--seed",
        "7",
    ]);
    assert_eq!(run.code, Some(0), "violations:\n{}", run.stdout);
    assert!(row(&run.stdout, "(a) overlaps") == 0, "{}", run.stdout);
    // The report names the server it ran on (the binary the kit starts).
    let plain = kit::ServerBuilder::new().without_module().start();
    let mut con = plain.conn();
    let (major, minor, patch) = kit::version_of(&mut con);
    let product = if kit::is_valkey(&mut con) {
        "Valkey"
    } else {
        "Redis"
    };
    let server = format!("; server: {product} {major}.{minor}.{patch}\n");
    assert!(
        run.stdout.contains(&server),
        "no {server:?} in\n{}",
        run.stdout
    );
    let bodies = row(&run.stdout, "bodies");
    assert!(
        bodies >= 80,
        "only {bodies} bodies in 40 s:\n{}",
        run.stdout
    );
    let faults = run
        .stderr
        .lines()
        .filter(|l| l.contains("\"ev\":\"fault\""))
        .count();
    assert!(faults >= 3, "only {faults} faults:\n{}", run.stderr);
}

#[kit::test]
fn without_acknowledgements_a_lossy_failover_shows_as_an_overlap() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let run = chaos_run(&[
        "--seconds",
        "20",
        "--replicas",
        "0",
        "--faults",
        "lossy-failover",
        "--first-fault",
        "3",
        "--seed",
        "11",
    ]);
    assert_eq!(
        run.code,
        Some(1),
        "the checker found no violation:\n{}",
        run.stdout
    );
    assert!(
        row(&run.stdout, "(a) overlaps") >= 1,
        "no overlap found:\n{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("VIOLATION (a) overlap on chaos:"),
        "{}",
        run.stdout
    );
}

kit::main!();
