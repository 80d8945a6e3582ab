//! Sending a command with a deadline, and trying again after a failure that
//! may be transient.
//!
//! Every command gets the client's own deadline, independent of the
//! connection's response timeout: a server in a write pause legitimately
//! holds `SPACELOCK.*` commands until the pause ends, so a refresh may wait
//! as long as its lease could still be valid and a release as long as its
//! budget allows. After an I/O error the command is sent again at once (the
//! [`ConnectionManager`](redis::aio::ConnectionManager) has started
//! reconnecting, so the retry goes out on a fresh connection), then with a
//! doubling pause, never past the deadline.
//!
//! An `ACQUIRE` that failed without a reply may have been granted: it is
//! released (owner-checked) before it is tried again or the error returned.

use std::time::Duration;

use redis::aio::ConnectionLike;
use redis::{Cmd, Value};
use tokio::time::Instant;

use crate::proto::{self, is_transient, may_have_run};
use crate::{Error, ReleaseReply};

/// Pauses between attempts: none before the first retry (the connection
/// manager is already reconnecting), then 10 ms, doubling up to 500 ms.
#[derive(Debug, Default)]
pub(crate) struct Backoff {
    attempt: u32,
}

impl Backoff {
    /// The pause before the next attempt.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let d = match self.attempt {
            0 => Duration::ZERO,
            n => Duration::from_millis(10u64 << (n - 1).min(6)).min(Duration::from_millis(500)),
        };
        self.attempt = self.attempt.saturating_add(1);
        d
    }

    /// Sleeps before the next attempt; `false` if `deadline` comes first.
    pub(crate) async fn wait(&mut self, deadline: Instant) -> bool {
        let at = crate::options::after(Instant::now(), self.next_delay());
        if at >= deadline {
            return false;
        }
        tokio::time::sleep_until(at).await;
        true
    }
}

/// Sends `cmd` once and waits for its reply until `deadline`; an error
/// reply becomes an error. `budget` is what a timeout reports.
pub(crate) async fn send<C: ConnectionLike + Clone>(
    conn: &C,
    cmd: &Cmd,
    command: &'static str,
    deadline: Instant,
    budget: Duration,
) -> Result<Value, Error> {
    let mut conn = conn.clone();
    match tokio::time::timeout_at(deadline, conn.req_packed_command(cmd)).await {
        Ok(Ok(value)) => proto::check(value),
        Ok(Err(e)) => Err(e.into()),
        Err(_) => Err(Error::Timeout {
            command,
            after: budget,
        }),
    }
}

/// Sends an idempotent command (REFRESH, INFO) until it gets a reply or a
/// non-transient error, or `deadline` passes.
pub(crate) async fn idempotent<C: ConnectionLike + Clone>(
    conn: &C,
    cmd: &Cmd,
    command: &'static str,
    timeout: Duration,
) -> Result<Value, Error> {
    let deadline = crate::options::after(Instant::now(), timeout);
    let mut backoff = Backoff::default();
    loop {
        match send(conn, cmd, command, deadline, timeout).await {
            Err(e) if is_transient(&e) && backoff.wait(deadline).await => {
                tracing::debug!(command, error = %e, "spacelock: retrying");
            }
            other => return other,
        }
    }
}

/// `SPACELOCK.RELEASE key owner`, tried until it is answered or `timeout`
/// passes. A `0` after an attempt that got no reply may mean that attempt
/// released it: either way the lock is not ours any more.
pub(crate) async fn release<C: ConnectionLike + Clone>(
    conn: &C,
    key: &str,
    owner: &str,
    timeout: Duration,
) -> Result<ReleaseReply, Error> {
    let cmd = proto::release(key, owner);
    let value = idempotent(conn, &cmd, proto::RELEASE, timeout).await?;
    Ok(if proto::parse_flag(proto::RELEASE, value)? {
        ReleaseReply::Released
    } else {
        ReleaseReply::NotOwner
    })
}

/// How long a WAIT that the server answered with nil waits, at most, for the
/// defensive RELEASE it then sends. Nothing was granted, so the RELEASE only
/// makes sure; a write pause holds it, and it runs when the pause ends.
///
/// A cap, not a floor: it is not [`RELEASE_FLOOR`](crate::options::RELEASE_FLOOR)
/// (the least time a release that may free a held lock is given), though
/// both are 250 ms today; changing one does not change the other.
pub(crate) const DEFENSIVE_RELEASE_WAIT: Duration = Duration::from_millis(250);

/// Releases and logs the outcome at the right level; `false` if it failed.
pub(crate) async fn release_logged<C: ConnectionLike + Clone>(
    conn: &C,
    key: &str,
    owner: &str,
    timeout: Duration,
) -> bool {
    match release(conn, key, owner, timeout).await {
        Ok(ReleaseReply::Released) => true,
        Ok(ReleaseReply::NotOwner) => {
            tracing::debug!(key = %key, "spacelock: release found the lock no longer ours");
            true
        }
        Err(e @ Error::Timeout { .. }) => {
            tracing::warn!(
                key = %key,
                error = %e,
                "spacelock: failed to release lock in time; the server runs the release if it gets it, else the lock stays held until its ttl runs out"
            );
            false
        }
        Err(e) => {
            tracing::warn!(
                key = %key,
                error = %e,
                "spacelock: failed to release lock; it stays held until its ttl runs out"
            );
            false
        }
    }
}

/// A grant, with when its ACQUIRE was sent (the server granted no earlier).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Grant {
    pub(crate) token: u64,
    pub(crate) sent: Instant,
}

/// `SPACELOCK.ACQUIRE key owner ttl` until it is answered or `timeout`
/// passes. An attempt that got no reply is released (owner-checked, within
/// `release_timeout`) before the next one; if that release fails, the
/// acquire's error is returned (the lock may then stay held until its ttl).
pub(crate) async fn acquire<C: ConnectionLike + Clone>(
    conn: &C,
    key: &str,
    owner: &str,
    ttl_ms: u64,
    timeout: Duration,
    release_timeout: Duration,
) -> Result<Option<Grant>, Error> {
    let deadline = crate::options::after(Instant::now(), timeout);
    let cmd = proto::acquire(key, owner, ttl_ms);
    let mut backoff = Backoff::default();
    loop {
        let sent = Instant::now();
        let e = match send(conn, &cmd, proto::ACQUIRE, deadline, timeout).await {
            Ok(v) => {
                return Ok(proto::parse_token(proto::ACQUIRE, v)?.map(|token| Grant { token, sent }))
            }
            Err(e) => e,
        };
        if may_have_run(&e) && !release_logged(conn, key, owner, release_timeout).await {
            return Err(e);
        }
        if !(is_transient(&e) && backoff.wait(deadline).await) {
            return Err(e);
        }
        tracing::debug!(key = %key, error = %e, "spacelock: retrying ACQUIRE");
    }
}

/// Confirms a grant that arrived late with `SPACELOCK.REFRESH`: `Some(sent)`
/// (the refresh's start, from which the lease now counts) if it is still
/// ours, `None` if it is not. Tries until `timeout`.
pub(crate) async fn confirm<C: ConnectionLike + Clone>(
    conn: &C,
    key: &str,
    owner: &str,
    ttl_ms: u64,
    timeout: Duration,
) -> Result<Option<Instant>, Error> {
    let deadline = crate::options::after(Instant::now(), timeout);
    let cmd = proto::refresh(key, owner, ttl_ms);
    let mut backoff = Backoff::default();
    loop {
        let sent = Instant::now();
        match send(conn, &cmd, proto::REFRESH, deadline, timeout).await {
            Ok(v) => return Ok(proto::parse_flag(proto::REFRESH, v)?.then_some(sent)),
            Err(e) if is_transient(&e) && backoff.wait(deadline).await => {}
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_starts_at_once_then_doubles_to_half_a_second() {
        let mut b = Backoff::default();
        let ms: Vec<u128> = (0..10).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(ms, [0, 10, 20, 40, 80, 160, 320, 500, 500, 500]);
        let mut b = Backoff { attempt: u32::MAX };
        assert_eq!(b.next_delay(), Duration::from_millis(500));
    }
}
