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

use crate::options::Ack;
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

/// What an acquire came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Acquired {
    /// Granted (and acknowledged, if acknowledgements were asked for).
    Granted(Grant),
    /// Someone else holds the lock.
    Held,
    /// Granted, but fewer replicas than required acknowledged it in time;
    /// the grant has been released (or its release tried and logged).
    NotAcknowledged { acknowledged: usize },
}

/// Sends `cmd` followed by the acknowledgement (`WAIT`/`WAITAOF`) as one
/// pipeline, so that both go out on the same connection (a `WAIT` on a
/// fresh connection would count the replicas' acknowledgements of nothing).
/// Returns both replies; an error reply to `cmd` becomes an error.
async fn send_acked<C: ConnectionLike + Clone>(
    conn: &C,
    cmd: &Cmd,
    ack: &Ack,
    command: &'static str,
    deadline: Instant,
    budget: Duration,
) -> Result<(Value, Value), Error> {
    let mut conn = conn.clone();
    let mut pipe = redis::pipe();
    pipe.add_command(cmd.clone()).add_command(proto::ack(ack));
    match tokio::time::timeout_at(deadline, conn.req_packed_commands(&pipe, 0, 2)).await {
        Ok(Ok(values)) if values.len() == 2 => {
            let mut it = values.into_iter();
            let (first, second) = (
                it.next().unwrap_or(Value::Nil),
                it.next().unwrap_or(Value::Nil),
            );
            Ok((proto::check(first)?, second))
        }
        Ok(Ok(values)) => Err(Error::UnexpectedReply {
            command,
            reply: format!("{values:?}"),
        }),
        Ok(Err(e)) => Err(e.into()),
        Err(_) => Err(Error::Timeout {
            command,
            after: budget,
        }),
    }
}

/// `cmd` (`SPACELOCK.ACQUIRE key owner ttl [mode]`, from
/// [`proto::acquire`]) until it is answered or `timeout`
/// passes, followed on the same connection by the acknowledgement `ack`
/// asks for (the attempt may then take `ack.timeout` longer). An attempt
/// that got no reply is released (owner-checked, within `release_timeout`)
/// before the next one; if that release fails, the acquire's error is
/// returned (the lock may then stay held until its ttl). A grant that is not
/// acknowledged, or whose acknowledgement fails, is released too.
pub(crate) async fn acquire<C: ConnectionLike + Clone>(
    conn: &C,
    key: &str,
    owner: &str,
    cmd: &Cmd,
    timeout: Duration,
    release_timeout: Duration,
    ack: Option<&Ack>,
) -> Result<Acquired, Error> {
    let deadline = crate::options::after(Instant::now(), timeout);
    let mut backoff = Backoff::default();
    loop {
        let sent = Instant::now();
        let reply = match ack {
            None => send(conn, cmd, proto::ACQUIRE, deadline, timeout)
                .await
                .map(|v| (v, None)),
            Some(a) => {
                let budget = timeout
                    .min(crate::options::MAX_SPAN)
                    .saturating_add(a.timeout);
                let until = crate::options::after(deadline, a.timeout);
                send_acked(conn, cmd, a, proto::ACQUIRE, until, budget)
                    .await
                    .map(|(v, w)| (v, Some(w)))
            }
        };
        let e = match reply {
            Ok((v, acked)) => {
                let Some(token) = proto::parse_token(proto::ACQUIRE, v)? else {
                    return Ok(Acquired::Held);
                };
                let grant = Grant { token, sent };
                let (Some(a), Some(acked)) = (ack, acked) else {
                    return Ok(Acquired::Granted(grant));
                };
                return settle_ack(conn, key, owner, release_timeout, a, acked, grant).await;
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

/// Decides on a grant from the reply to its acknowledgement: granted if
/// enough replicas acknowledged; otherwise (too few, or an error) the grant
/// is released first.
pub(crate) async fn settle_ack<C: ConnectionLike + Clone>(
    conn: &C,
    key: &str,
    owner: &str,
    release_timeout: Duration,
    ack: &Ack,
    reply: Value,
    grant: Grant,
) -> Result<Acquired, Error> {
    let parsed = proto::parse_ack(ack, reply);
    if let Ok((_, true)) = parsed {
        return Ok(Acquired::Granted(grant));
    }
    match &parsed {
        Ok((n, _)) => tracing::warn!(
            key = %key,
            acknowledged = n,
            required = ack.replicas,
            "spacelock: too few replicas acknowledged the grant in time; releasing it"
        ),
        Err(e) => {
            tracing::warn!(key = %key, error = %e, "spacelock: the grant's acknowledgement failed; releasing it")
        }
    }
    release_logged(conn, key, owner, release_timeout).await;
    let (acknowledged, _) = parsed?;
    Ok(Acquired::NotAcknowledged { acknowledged })
}

/// What confirming a late grant came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Confirmed {
    /// Still ours: the lease counts from this refresh's start.
    From(Instant),
    /// No longer ours.
    Gone,
    /// Refreshed, but too few replicas acknowledged the refresh.
    NotAcknowledged { acknowledged: usize },
}

/// Confirms a grant that arrived late with `SPACELOCK.REFRESH` (followed
/// by the acknowledgement `ack` asks for, on the same connection). Tries
/// until `timeout`.
pub(crate) async fn confirm<C: ConnectionLike + Clone>(
    conn: &C,
    key: &str,
    owner: &str,
    ttl_ms: u64,
    timeout: Duration,
    ack: Option<&Ack>,
) -> Result<Confirmed, Error> {
    let deadline = crate::options::after(Instant::now(), timeout);
    let cmd = proto::refresh(key, owner, ttl_ms);
    let mut backoff = Backoff::default();
    loop {
        let sent = Instant::now();
        let reply = match ack {
            None => send(conn, &cmd, proto::REFRESH, deadline, timeout)
                .await
                .map(|v| (v, None)),
            Some(a) => {
                let budget = timeout
                    .min(crate::options::MAX_SPAN)
                    .saturating_add(a.timeout);
                let until = crate::options::after(deadline, a.timeout);
                send_acked(conn, &cmd, a, proto::REFRESH, until, budget)
                    .await
                    .map(|(v, w)| (v, Some(w)))
            }
        };
        match reply {
            Ok((v, acked)) => {
                if !proto::parse_flag(proto::REFRESH, v)? {
                    return Ok(Confirmed::Gone);
                }
                if let (Some(a), Some(acked)) = (ack, acked) {
                    let (n, enough) = proto::parse_ack(a, acked)?;
                    if !enough {
                        return Ok(Confirmed::NotAcknowledged { acknowledged: n });
                    }
                }
                return Ok(Confirmed::From(sent));
            }
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
