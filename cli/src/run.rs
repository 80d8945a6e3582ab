//! `spacelock run KEY -- COMMAND…`: acquire, run the child under the
//! heartbeat, forward signals, kill on a lost lease, release.

use std::io::ErrorKind;
use std::os::unix::process::ExitStatusExt;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use spacelock_client::{
    Lease, LockConnection, LockInfo, LostReason, Outcome, Semaphore, Skipped, SpaceLock,
};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::duration::format_duration;
use crate::sys::{self, Terminal};
use crate::terminal::escape;
use crate::{conn, exit, RunArgs, Say};

/// How long the best-effort side queries (who holds it, why it was lost) may take.
const SIDE_QUERY_TIMEOUT: Duration = Duration::from_secs(1);

/// What the signal task and the body share.
#[derive(Debug, Default)]
struct SignalState {
    /// The child's process group while it runs: signals go there.
    child_pg: Option<Pid>,
    /// Whether a child was ever started (then signals never abort the run).
    started: bool,
    /// A signal that arrived before the child started.
    pending: Option<Signal>,
}

type Shared = Arc<Mutex<SignalState>>;

fn lock(shared: &Shared) -> MutexGuard<'_, SignalState> {
    shared.lock().unwrap_or_else(|p| p.into_inner())
}

/// How the locked body ended.
enum BodyEnd {
    /// The child exited; this is spacelock's exit code.
    Exited(i32),
    /// The lease was lost; the child was killed.
    Lost,
    /// The child could not be started.
    SpawnFailed(i32),
    /// A signal arrived before the child started.
    Interrupted(Signal),
}

/// Runs `spacelock run` and returns the exit code.
pub async fn run<C: LockConnection>(
    locks: SpaceLock<C>,
    args: &RunArgs,
    url: &str,
    say: Say,
) -> i32 {
    let shared: Shared = Arc::default();
    let (interrupt_tx, mut interrupt_rx) = watch::channel(None::<Signal>);
    if let Err(e) = spawn_signal_forwarder(shared.clone(), interrupt_tx, say) {
        say.error(format_args!("cannot install signal handlers: {e}"));
        return exit::SOFTWARE;
    }

    let name = args.key.as_str();
    // The lease outlives the body: after the release it says whether that
    // release succeeded.
    let kept: Arc<Mutex<Option<Lease>>> = Arc::default();
    let body = {
        let locks = locks.clone();
        let shared = shared.clone();
        let kept = kept.clone();
        move |lease: Lease| {
            *kept.lock().unwrap_or_else(|p| p.into_inner()) = Some(lease.clone());
            run_child(lease, locks, args, shared, say)
        }
    };
    let locked = async {
        match (args.shared, args.limit, args.wait) {
            (true, _, None) => locks.with_shared_lock(name, body).await,
            (true, _, Some(timeout)) => locks.with_shared_lock_wait(name, timeout, body).await,
            (false, Some(n), wait) => {
                let slots = Semaphore::new(locks.clone(), name, n)?;
                match wait {
                    None => slots.with_permit(body).await,
                    Some(timeout) => slots.with_permit_wait(timeout, body).await,
                }
            }
            (false, None, None) => locks.with_space_lock(name, body).await,
            (false, None, Some(timeout)) => locks.with_space_lock_wait(name, timeout, body).await,
        }
    };

    // Only resolves while no child has been started: dropping the acquire
    // (or the body before its spawn) is then safe.
    let interrupted = async {
        match interrupt_rx.wait_for(Option::is_some).await {
            Ok(sig) => sig.unwrap_or(Signal::SIGINT),
            Err(_) => std::future::pending().await,
        }
    };
    let outcome = tokio::select! {
        biased;
        outcome = locked => outcome,
        sig = interrupted => {
            // The dropped call closed its wait connection (if it was waiting)
            // and releases in the background, in case the lock was granted
            // just now: wait for that release before exiting.
            locks.settle().await;
            Ok(Outcome::Ran(BodyEnd::Interrupted(sig)))
        }
    };

    let key = escape(locks.key(name).as_bytes());
    let lease = kept.lock().unwrap_or_else(|p| p.into_inner()).take();
    if let Some(lease) = lease.filter(|l| l.lost_reason() == Some(LostReason::ReleaseFailed)) {
        say.error(format_args!(
            "could not release {key}: redis did not answer within {} (or before the lock would \
             expire anyway); it stays held until redis runs the release or its ttl runs out, at \
             most {} from now",
            format_duration(locks.settings().release_timeout()),
            format_duration(lease.ttl())
        ));
    }
    match outcome {
        Ok(Outcome::Ran(BodyEnd::Exited(code))) => code,
        Ok(Outcome::Ran(BodyEnd::Lost)) => exit::LEASE_LOST,
        Ok(Outcome::Ran(BodyEnd::SpawnFailed(code))) => code,
        Ok(Outcome::Ran(BodyEnd::Interrupted(sig))) => {
            say.note(format_args!(
                "interrupted by {} before the command started: {key}",
                sig.as_str()
            ));
            128 + sig as i32
        }
        Ok(Outcome::Skipped(Skipped::NotAcknowledged {
            acknowledged,
            required,
        })) => {
            say.error(format_args!(
                "{key}: {acknowledged} of {required} replicas acknowledged the grant within {}; \
                 not running the command",
                format_duration(locks.settings().ack_timeout())
            ));
            exit::UNAVAILABLE
        }
        Ok(Outcome::Skipped(why)) => {
            let holder = holder_text(&locks, name).await;
            match (why, args.wait) {
                (Skipped::TimedOut, Some(t)) => say.note(format_args!(
                    "lock held: {key}: still held after waiting {}{holder}",
                    format_duration(t)
                )),
                _ => say.note(format_args!("lock held: {key}{holder}")),
            }
            exit::LOCK_HELD
        }
        Err(e) => {
            let (msg, code) = conn::describe_error(&e, url);
            say.error(msg);
            code
        }
    }
}

/// `" (owner O, token T, ttl D)"` for the current holder, or `""`.
async fn holder_text<C: LockConnection>(locks: &SpaceLock<C>, name: &str) -> String {
    match tokio::time::timeout(SIDE_QUERY_TIMEOUT, locks.info(name)).await {
        Ok(Ok(Some(info))) => {
            let LockInfo { ttl, token, .. } = info;
            let ttl = ttl.map_or_else(|| "none".to_string(), format_duration);
            let owner = escape(&info.owner_bytes);
            format!(" (owner {owner}, token {token}, ttl {ttl})")
        }
        _ => String::new(),
    }
}

/// Installs SIGINT/SIGTERM/SIGHUP handlers: while the child runs, each signal
/// is forwarded to its process group; before that, the first one aborts the run.
fn spawn_signal_forwarder(
    shared: Shared,
    interrupt_tx: watch::Sender<Option<Signal>>,
    say: Say,
) -> std::io::Result<()> {
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut hup = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        loop {
            let sig = tokio::select! {
                Some(()) = int.recv() => Signal::SIGINT,
                Some(()) = term.recv() => Signal::SIGTERM,
                Some(()) = hup.recv() => Signal::SIGHUP,
                else => return,
            };
            let mut st = lock(&shared);
            if let Some(pg) = st.child_pg {
                say.note(format_args!("forwarding {} to the command", sig.as_str()));
                let _ = killpg(pg, sig);
            } else if !st.started {
                st.pending.get_or_insert(sig);
                let _ = interrupt_tx.send(Some(sig));
            }
            // else: the child has exited and the lock is being released;
            // finish that rather than die half-way.
        }
    });
    Ok(())
}

/// The locked body: start the child, wait for it, kill it if the lease is lost.
async fn run_child<C: LockConnection>(
    lease: Lease,
    locks: SpaceLock<C>,
    args: &RunArgs,
    shared: Shared,
    say: Say,
) -> BodyEnd {
    let program = &args.command[0];
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(&args.command[1..])
        .env("SPACELOCK_KEY", lease.key())
        .env("SPACELOCK_TOKEN", lease.token().to_string())
        .env("SPACELOCK_OWNER", lease.owner())
        .stdin(Stdio::inherit())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        // Its own process group, so a lost lease can stop everything it started.
        .process_group(0)
        .kill_on_drop(false);
    // On a terminal, the command gets it if spacelock has it (see `sys`).
    let terminal = Terminal::of_stdin();
    sys::prepare_child(&mut cmd, terminal.filter(|t| t.is_ours()));
    // Subscribe before spawning, so no stop of the child can be missed.
    let mut chld = match terminal.map(|_| signal(SignalKind::child())).transpose() {
        Ok(chld) => chld,
        Err(e) => {
            say.error(format_args!("cannot watch the command: {e}"));
            return BodyEnd::SpawnFailed(exit::SOFTWARE);
        }
    };

    let mut child = {
        // Spawn under the lock, so a signal is either pending (and we do not
        // start) or finds the child's group to forward to.
        let mut st = lock(&shared);
        if let Some(sig) = st.pending {
            return BodyEnd::Interrupted(sig);
        }
        match cmd.spawn() {
            Ok(child) => {
                st.started = true;
                // process_group(0) makes the group id the child's pid.
                st.child_pg = child
                    .id()
                    .and_then(|id| i32::try_from(id).ok())
                    .map(Pid::from_raw);
                child
            }
            Err(e) => {
                drop(st);
                let name = program.to_string_lossy();
                return BodyEnd::SpawnFailed(if e.kind() == ErrorKind::NotFound {
                    say.error(format_args!("command not found: {name}"));
                    exit::NOT_FOUND
                } else {
                    say.error(format_args!("cannot execute {name}: {e}"));
                    exit::CANNOT_EXECUTE
                });
            }
        }
    };
    let pg = lock(&shared).child_pg;
    if let (Some(t), Some(pg)) = (terminal, pg) {
        if t.is_ours() {
            t.give_to(pg);
        }
    }

    let status = loop {
        tokio::select! {
            biased;
            status = child.wait() => break Some(status),
            () = lease.lost() => break None,
            Some(()) = async { chld.as_mut()?.recv().await } => {
                if let (Some(t), Some(pg)) = (terminal, pg) {
                    follow_stop(t, pg, &say);
                }
            }
        }
    };
    // Take the terminal back from the command's group, never from a shell
    // that has it because we run in the background.
    if let (Some(t), Some(pg)) = (terminal, pg) {
        if t.is_foreground(pg) {
            t.take_back();
        }
    }
    if let Some(status) = status {
        lock(&shared).child_pg = None;
        return BodyEnd::Exited(match status {
            Ok(status) => exit_code(status),
            Err(e) => {
                say.error(format_args!("lost track of the command: {e}"));
                exit::SOFTWARE
            }
        });
    }

    // The lease is lost: stop the whole process group, then say why.
    let grace = args.kill_grace;
    let start = Instant::now();
    let deadline = start.checked_add(grace).unwrap_or(start);
    if let Some(pg) = pg {
        let _ = killpg(pg, Signal::SIGTERM);
        // A stopped process (Ctrl-Z, or SIGTTIN now that it lost the
        // terminal) only acts on SIGTERM once continued.
        let _ = killpg(pg, Signal::SIGCONT);
    }
    let why = lost_reason(&locks, &lease).await;
    let key = escape(lease.key().as_bytes());
    say.error(format_args!(
        "lease lost: {key}: {why}; sent SIGTERM to the command (SIGKILL in {})",
        format_duration(grace)
    ));
    if tokio::time::timeout_at(deadline, child.wait())
        .await
        .is_err()
    {
        say.error(format_args!(
            "lease lost: {key}: the command did not exit within {} of SIGTERM; sending SIGKILL",
            format_duration(grace)
        ));
        if let Some(pg) = pg {
            let _ = killpg(pg, Signal::SIGKILL);
        }
        let _ = child.kill().await;
    }
    lock(&shared).child_pg = None;
    // The child is gone; processes it left behind in its group get the rest
    // of the grace, then SIGKILL.
    if let Some(pg) = pg {
        while killpg(pg, None).is_ok() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if killpg(pg, None).is_ok() {
            let _ = killpg(pg, Signal::SIGKILL);
        }
    }
    BodyEnd::Lost
}

/// Job control for a command on a terminal: when it is stopped (Ctrl-Z
/// sends SIGTSTP to the foreground group, which is the command's; a
/// command in the background that reads the terminal gets SIGTTIN), take
/// the terminal back if the command has it, and stop spacelock too, so the
/// shell sees its job stopped and gets its prompt back. When the shell
/// continues us (`fg`), hand the terminal on if we are in the foreground,
/// and continue the command. While stopped, spacelock does not refresh the
/// lease: a job suspended for longer than the ttl loses it (and is then
/// stopped).
fn follow_stop(terminal: Terminal, pg: Pid, say: &Say) {
    if !sys::is_stopped(pg) {
        return;
    }
    if terminal.is_foreground(pg) {
        terminal.take_back();
    }
    say.note(format_args!(
        "the command was stopped; stopping too (the lease is not refreshed while stopped)"
    ));
    sys::stop_self();
    if terminal.is_ours() {
        terminal.give_to(pg);
    }
    let _ = killpg(pg, Signal::SIGCONT);
}

/// Why the lease was lost: the client's reason, with what the server can
/// tell now (who holds the key, if anyone).
async fn lost_reason<C: LockConnection>(locks: &SpaceLock<C>, lease: &Lease) -> String {
    let server = tokio::time::timeout(SIDE_QUERY_TIMEOUT, locks.info(lease.name())).await;
    let expired = lease.lost_reason() != Some(LostReason::NotOwner);
    match server {
        Ok(Ok(Some(info))) if info.owner_bytes != lease.owner().as_bytes() => format!(
            "{}the lock now belongs to {} (token {})",
            if expired {
                "no refresh succeeded within the ttl; "
            } else {
                ""
            },
            escape(&info.owner_bytes),
            info.token
        ),
        Ok(Ok(None)) if !expired => "the key is gone (it expired or was deleted)".to_string(),
        Ok(Ok(None)) => "no refresh succeeded within the ttl; the key is gone".to_string(),
        _ if !expired => LostReason::NotOwner.to_string(),
        Ok(Ok(Some(_))) => "no refresh succeeded within the ttl".to_string(),
        Ok(Err(e)) => format!("no refresh succeeded within the ttl ({e})"),
        Err(_) => "no refresh succeeded within the ttl (redis is not answering)".to_string(),
    }
}

/// The child's exit code, or 128 + the signal that killed it.
fn exit_code(status: ExitStatus) -> i32 {
    match (status.code(), status.signal()) {
        (Some(code), _) => code,
        (None, Some(sig)) => 128 + sig,
        (None, None) => exit::SOFTWARE,
    }
}
