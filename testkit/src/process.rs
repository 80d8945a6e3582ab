//! Child processes of a test, above all the `spacelock` CLI binary: start
//! one with its output piped, wait for it with a deadline, and collect its
//! exit status, stdout and stderr; plus the small waits such tests share
//! (a file that appears, a process's state letter).
//!
//! The binary's path comes from the test (`env!("CARGO_BIN_EXE_spacelock")`,
//! which Cargo sets only for the CLI crate's own tests).

use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::wait_until;

/// What a finished child did.
pub struct Output {
    /// How it exited.
    pub status: ExitStatus,
    /// Everything it wrote to stdout.
    pub stdout: String,
    /// Everything it wrote to stderr.
    pub stderr: String,
    /// From the call of [`finish`] to its exit.
    pub took: Duration,
}

impl Output {
    /// The exit code (`None` when a signal ended it).
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }
}

/// The `spacelock` binary at `bin`, without `SPACELOCK_URL` and `REDIS_URL`
/// in its environment, so that only what the test passes counts.
pub fn cli_command(bin: &str) -> Command {
    let mut c = Command::new(bin);
    c.env_remove("SPACELOCK_URL").env_remove("REDIS_URL");
    c
}

/// `spacelock run --url URL <args…>` (see [`cli_command`]).
pub fn cli_run(bin: &str, url: &str, args: &[&str]) -> Command {
    let mut c = cli_command(bin);
    c.arg("run").arg("--url").arg(url).args(args);
    c
}

/// Starts `cmd` with stdin closed and stdout and stderr piped.
///
/// # Panics
/// If it cannot be spawned.
pub fn start(mut cmd: Command) -> Child {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot spawn {:?}: {e}", cmd.get_program()))
}

/// Waits for `child` and collects its output (a stream the test took or
/// never piped reads as empty).
///
/// # Panics
/// If it has not exited within `timeout` (it is killed first; the panic
/// message holds what it wrote).
pub fn finish(mut child: Child, timeout: Duration) -> Output {
    let started = Instant::now();
    let drain = |stream: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            if let Some(mut stream) = stream {
                let _ = stream.read_to_string(&mut s);
            }
            s
        })
    };
    let stdout = drain(child.stdout.take().map(|s| Box::new(s) as _));
    let stderr = drain(child.stderr.take().map(|s| Box::new(s) as _));
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if started.elapsed() > timeout {
            let _ = child.kill();
            let st = child.wait().unwrap();
            let (o, e) = (stdout.join().unwrap(), stderr.join().unwrap());
            panic!("the child did not exit within {timeout:?} ({st}); stdout:\n{o}\nstderr:\n{e}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Output {
        status,
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
        took: started.elapsed(),
    }
}

/// [`start`], then [`finish`] within `timeout`.
pub fn output(cmd: Command, timeout: Duration) -> Output {
    finish(start(cmd), timeout)
}

/// `sh -c script`, as arguments.
pub fn sh(script: &str) -> [&str; 3] {
    ["sh", "-c", script]
}

/// Waits until `path` exists.
///
/// # Panics
/// If it does not within 10 s.
pub fn wait_for_file(path: &Path) {
    assert!(
        wait_until(Duration::from_secs(10), || path.exists()),
        "{} never appeared",
        path.display()
    );
}

/// The state letter of process `pid` (`S`, `R`, `T` for stopped, `Z`, …),
/// from `/proc`; `None` once it is gone.
pub fn proc_state(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 1..].trim_start().chars().next()
}
