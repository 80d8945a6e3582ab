//! Process and terminal plumbing for `spacelock run`: the only `unsafe` in
//! the CLI (one `pre_exec` hook), plus the terminal handoff that lets an
//! interactive command read from the terminal although it runs in its own
//! process group.
//!
//! Why the handoff: the command gets its own process group so that a lost
//! lease can stop everything it started. A process group that is not the
//! terminal's foreground group gets `SIGTTIN` when it reads from the
//! terminal (and stops). So when `spacelock` itself runs in the foreground of
//! a terminal, it hands the terminal to the command's group, as a shell does
//! for a job, and takes it back when the command exits or stops. Run as a
//! background job, it never takes the terminal from the shell; a command
//! that then reads it stops, spacelock stops with it, and `fg` continues both
//! with the terminal handed on.

#![allow(unsafe_code)]

use std::io::IsTerminal;
use std::os::unix::io::RawFd;

use nix::sys::signal::{kill, pthread_sigmask, SigSet, SigmaskHow, Signal};
use nix::unistd::{getpgrp, tcgetpgrp, tcsetpgrp, Pid};

/// The controlling terminal, on stdin.
#[derive(Debug, Clone, Copy)]
pub struct Terminal {
    fd: RawFd,
}

impl Terminal {
    /// The terminal on stdin, if it is this process's controlling terminal;
    /// `None` otherwise (cron, pipes, CI).
    pub fn of_stdin() -> Option<Terminal> {
        let fd = 0;
        if !std::io::stdin().is_terminal() {
            return None;
        }
        // Fails (ENOTTY) for a terminal that is not our controlling one.
        tcgetpgrp(fd).ok()?;
        Some(Terminal { fd })
    }

    /// Whether `pg` is the terminal's foreground process group.
    pub fn is_foreground(self, pg: Pid) -> bool {
        tcgetpgrp(self.fd).is_ok_and(|fg| fg == pg)
    }

    /// Whether this process's group is (again) the foreground group.
    pub fn is_ours(self) -> bool {
        self.is_foreground(getpgrp())
    }

    /// Makes `pg` the foreground process group.
    pub fn give_to(self, pg: Pid) {
        self.set_foreground(pg);
    }

    /// Makes this process's group the foreground group again.
    pub fn take_back(self) {
        self.set_foreground(getpgrp());
    }

    fn set_foreground(self, pg: Pid) {
        // From a background group, tcsetpgrp raises SIGTTOU (and stops us)
        // unless the signal is blocked in the calling thread.
        let mut ttou = SigSet::empty();
        ttou.add(Signal::SIGTTOU);
        let mut old = SigSet::empty();
        let blocked = pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&ttou), Some(&mut old)).is_ok();
        let _ = tcsetpgrp(self.fd, pg);
        if blocked {
            let _ = pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&old), None);
        }
    }
}

/// Whether process `pid` is stopped (state `T` in `/proc/PID/stat`), e.g. by
/// Ctrl-Z. Linux only; elsewhere always false.
pub fn is_stopped(pid: Pid) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            // The state follows the parenthesised command name, which may
            // itself contain spaces and parentheses.
            let rest = &stat[stat.rfind(')')? + 1..];
            rest.split_whitespace().next().map(|s| s == "T")
        })
        .unwrap_or(false)
}

/// Stops this whole process (as Ctrl-Z would) and returns once it has been
/// continued (`fg`, `bg`, `kill -CONT`).
pub fn stop_self() {
    let _ = kill(Pid::this(), Signal::SIGSTOP);
}

/// Sets up the command's process before `exec`:
///
/// * if spacelock dies (`kill -9`, the OOM killer), nobody refreshes the
///   lease or stops the command when it runs out, so have the kernel send
///   the command `SIGTERM` then (Linux `PR_SET_PDEATHSIG`);
/// * with `foreground` (the terminal spacelock holds as its foreground
///   group), make the command's new process group the foreground group from
///   inside the child too, so it is foreground before it can read (the
///   parent does the same after spawn: the race a shell closes this way).
///
/// The command must be spawned with `process_group(0)`.
pub fn prepare_child(cmd: &mut tokio::process::Command, foreground: Option<Terminal>) {
    let parent = std::process::id();
    // SAFETY: the closure runs in the forked child before exec and makes
    // only async-signal-safe system calls (prctl, getppid, sigprocmask,
    // tcsetpgrp, getpid): it allocates nothing and takes no lock.
    unsafe {
        cmd.pre_exec(move || {
            #[cfg(target_os = "linux")]
            {
                if libc::prctl(
                    libc::PR_SET_PDEATHSIG,
                    libc::SIGTERM as libc::c_ulong,
                    0,
                    0,
                    0,
                ) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                // The parent may have died before the prctl took effect:
                // then do not start the command at all.
                if u32::try_from(libc::getppid()).ok() != Some(parent) {
                    return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
                }
            }
            #[cfg(not(target_os = "linux"))]
            let _ = parent;
            if let Some(t) = foreground {
                // std has set the new group (setpgid) before pre_exec hooks
                // run, and reset the signal mask; the helper blocks SIGTTOU
                // around the call and restores the mask.
                t.give_to(Pid::this());
            }
            Ok(())
        });
    }
}
