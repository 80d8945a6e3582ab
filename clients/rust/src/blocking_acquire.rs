//! The blocking acquire: `SPACELOCK.ACQUIRE … WAIT` on a dedicated
//! connection, with its defences against a grant the client never sees.
//!
//! * The wait never outlives `timeout` + [`Options::wait_grace`]: a reply
//!   that does not come by then ends the call with [`Error::Timeout`], and
//!   the connection is dropped (which takes the waiter out of the server's
//!   queue).
//! * Whenever a WAIT ends without a token (nil, an error, no reply), an
//!   owner-checked `SPACELOCK.RELEASE` of the key is sent over the shared
//!   connection before the call returns, so that a grant the client never
//!   saw cannot stay held in its name. After an error or no reply it is
//!   awaited up to the release budget; after a nil (nothing was granted) at
//!   most [`DEFENSIVE_RELEASE_WAIT`], as a write pause holds it and it runs
//!   when the pause ends. The caller holds the key's in-process claim, so no
//!   other call of this owner holds that lock.
//! * After a connection error (a stale pooled connection after a restart or
//!   an idle timeout, a `CLIENT KILL`), the wait is released and tried again
//!   on a fresh connection, within the same timeout.
//! * If no dedicated connection can be had in time (the pool is busy, or
//!   connecting hangs), one plain ACQUIRE over the shared connection
//!   decides, rather than reporting a lock as held without asking.
//!
//! The wait runs inside the calling future: if that is dropped, the
//! dedicated connection is closed at once and the guard releases.
//!
//! [`Options::wait_grace`]: crate::Options::wait_grace
//! [`DEFENSIVE_RELEASE_WAIT`]: crate::retry::DEFENSIVE_RELEASE_WAIT

use std::time::Duration;

use tokio::time::Instant;

use crate::conn::{Checkout, LockConnection, PooledConn, WaitPool};
use crate::inner::Inner;
use crate::options::{after, millis_ceil, Ack};
use crate::proto::{self, is_transient, may_have_run};
use crate::retry::{self, Acquired, Backoff, Grant};
use crate::{Error, Mode};

/// Waits up to `timeout` for `key`: granted, held (it stayed held), not
/// acknowledged (with `ack`: the grant was released), or an error. Never
/// leaves a lock it did not return granted.
///
/// With `ack`, a grant is followed by `WAIT`/`WAITAOF` on the dedicated
/// connection that got it: the server counts that connection's last write,
/// which covers a grant the module wrote for it while it waited.
pub(crate) async fn acquire_wait<C: LockConnection>(
    inner: &Inner<C>,
    pool: &WaitPool,
    key: &str,
    owner: &str,
    mode: Mode,
    timeout: Duration,
    ack: Option<&Ack>,
) -> Result<Acquired, Error> {
    let s = &inner.settings;
    let deadline = after(Instant::now(), timeout);
    let mut backoff = Backoff::default();
    loop {
        let mut pooled = match pool.checkout(deadline).await {
            Checkout::Got(c) => c,
            Checkout::NotInTime => return last_try(inner, key, owner, mode, ack).await,
            Checkout::Failed(e) => {
                let e = Error::from(e);
                if is_transient(&e) && backoff.wait(deadline).await {
                    continue;
                }
                // We cannot wait; but the lock may be free right now.
                return match last_try(inner, key, owner, mode, ack).await {
                    Ok(Acquired::Held) => Err(e),
                    other => other,
                };
            }
        };
        let left = deadline.saturating_duration_since(Instant::now());
        let cmd = proto::acquire_wait(key, owner, s.ttl_ms, mode, millis_ceil(left));
        let sent = Instant::now();
        let budget = left.saturating_add(s.wait_grace());
        let reply = tokio::time::timeout_at(after(sent, budget), pooled.conn.req(&cmd)).await;
        let e = match reply {
            Ok(Ok(value)) => match proto::parse_token(proto::ACQUIRE_WAIT, value) {
                Ok(Some(token)) => {
                    let grant = Grant { token, sent };
                    let Some(a) = ack else {
                        pool.checkin(pooled);
                        return Ok(Acquired::Granted(grant));
                    };
                    return acknowledge(inner, pool, pooled, key, owner, a, grant).await;
                }
                Ok(None) => {
                    pool.checkin(pooled);
                    // Defence in depth: a nil must mean no grant; make sure,
                    // but briefly (a write pause holds the RELEASE, and it
                    // runs when the pause ends) and quietly: nothing was
                    // granted, so nothing stays held if it does not land.
                    let wait = s.release_timeout().min(retry::DEFENSIVE_RELEASE_WAIT);
                    if let Err(e) = retry::release(&inner.conn, key, owner, wait).await {
                        tracing::debug!(key = %key, error = %e, "spacelock: the release after a nil WAIT reply is not confirmed");
                    }
                    return Ok(Acquired::Held);
                }
                Err(e) => {
                    // An error reply: nothing was granted, the connection is fine.
                    pool.checkin(pooled);
                    if is_transient(&e) && backoff.wait(deadline).await {
                        continue;
                    }
                    return Err(e);
                }
            },
            Ok(Err(e)) => Error::from(e),
            Err(_) => Error::Timeout {
                command: proto::ACQUIRE_WAIT,
                after: timeout
                    .min(crate::options::MAX_SPAN)
                    .saturating_add(s.wait_grace()),
            },
        };
        // Close the connection first: the server takes a gone client out of
        // the queue, so no grant can reach it after our release.
        drop(pooled);
        if may_have_run(&e) {
            tracing::warn!(key = %key, error = %e, "spacelock: blocking acquire failed; releasing in case it was granted");
            if !retry::release_logged(&inner.conn, key, owner, s.release_budget()).await {
                return Err(e);
            }
        }
        let timed_out = matches!(e, Error::Timeout { .. });
        if timed_out || !is_transient(&e) || !backoff.wait(deadline).await {
            return Err(e);
        }
        tracing::debug!(key = %key, error = %e, "spacelock: retrying the blocking acquire on a fresh connection");
    }
}

/// Sends the acknowledgement of a grant on the dedicated connection that
/// got it (never on another: a `WAIT` counts its own connection's writes),
/// and settles the grant on its reply. A connection that fails is dropped
/// and the grant released.
async fn acknowledge<C: LockConnection>(
    inner: &Inner<C>,
    pool: &WaitPool,
    mut pooled: PooledConn,
    key: &str,
    owner: &str,
    ack: &Ack,
    grant: Grant,
) -> Result<Acquired, Error> {
    let s = &inner.settings;
    let cmd = proto::ack(ack);
    let budget = ack.timeout.saturating_add(s.request_timeout());
    let reply = tokio::time::timeout_at(
        after(Instant::now(), budget),
        pooled.conn.req_for_key(&cmd, key),
    )
    .await;
    let reply = match reply {
        Ok(Ok(value)) => {
            pool.checkin(pooled);
            value
        }
        Ok(Err(e)) => {
            drop(pooled);
            tracing::warn!(key = %key, error = %e, "spacelock: the grant's acknowledgement failed; releasing it");
            retry::release_logged(&inner.conn, key, owner, s.release_budget()).await;
            return Err(e.into());
        }
        Err(_) => {
            drop(pooled);
            tracing::warn!(key = %key, "spacelock: no reply to the grant's acknowledgement; releasing it");
            retry::release_logged(&inner.conn, key, owner, s.release_budget()).await;
            return Err(Error::Timeout {
                command: if ack.aof { proto::WAITAOF } else { proto::WAIT },
                after: budget,
            });
        }
    };
    retry::settle_ack(
        &inner.conn,
        key,
        owner,
        s.release_budget(),
        ack,
        reply,
        grant,
    )
    .await
}

/// One plain ACQUIRE over the shared connection, for when no dedicated
/// connection could be had before the deadline.
async fn last_try<C: LockConnection>(
    inner: &Inner<C>,
    key: &str,
    owner: &str,
    mode: Mode,
    ack: Option<&Ack>,
) -> Result<Acquired, Error> {
    let s = &inner.settings;
    retry::acquire(
        &inner.conn,
        key,
        owner,
        &proto::acquire(key, owner, s.ttl_ms, mode),
        s.request_timeout(),
        s.release_budget(),
        ack,
    )
    .await
}
