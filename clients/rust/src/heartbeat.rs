//! One background refresher per [`SpaceLock`](crate::SpaceLock).
//!
//! Every held lease is an entry in a map, and its next wake-up time sits in an
//! ordered set. A single task sleeps until the earliest wake-up, then, for each
//! lease that is due:
//!
//! * marks it lost if its deadline has passed: no refresh has succeeded
//!   within `ttl` of the *start* of the last successful one (monotonic clock,
//!   [`Instant`]). The deadline is the lease's [`ValidUntil`], which the
//!   [`Lease`](crate::Lease) reads too; the heartbeat only moves it forward;
//! * otherwise adds a `SPACELOCK.REFRESH` to this wake-up's pipeline, unless
//!   one is already in flight for it.
//!
//! Each wake-up sends the refreshes it gathered as one pipeline over the
//! shared connection (one pipeline per hash slot on a cluster connection).
//! The task does not wait for a pipeline's replies: it keeps the pipelines in
//! flight in a `FuturesUnordered` and handles their replies as they come, so a
//! stalled server never delays the local deadline of any lease, and the body
//! of a lease is never blocked. A reply of `0` marks the lease lost.
//!
//! A refresh waits for its reply as long as its lease can still be valid (a
//! server in a write pause holds it until the pause ends). After an error
//! (a dropped connection, an idle timeout, a restart) the lease is tried
//! again promptly, not at its next tick: 10 ms later, then with a doubling
//! pause up to the refresh interval, for as long as its deadline allows.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::conn::LockConnection;
use crate::lease::{LostReason, LostSignal, ValidUntil};
use crate::options::{after, refresh_interval, Ack};
use redis::Value;

#[cfg(test)]
mod tests;

/// The pause before retry `n` (≥ 1) of a failed refresh: 10 ms, doubling,
/// at most the refresh interval.
fn retry_delay(failures: u32, interval: Duration) -> Duration {
    let n = failures.clamp(1, 16) - 1;
    Duration::from_millis(10u64 << n).min(interval)
}

struct Entry {
    key: String,
    /// The owner value of the call that holds it.
    owner: Arc<str>,
    ttl: Duration,
    ttl_ms: u64,
    interval: Duration,
    next_refresh: Instant,
    /// This entry's element of `State::wakeups`.
    wake: Instant,
    in_flight: bool,
    /// Refreshes that failed in a row.
    failures: u32,
    lost: Arc<LostSignal>,
    /// The lease's deadline: the start of the last successful refresh (or
    /// of the acquire) plus the ttl. Shared with the
    /// [`Lease`](crate::Lease), which reads it directly.
    valid_until: Arc<ValidUntil>,
}

impl Entry {
    fn deadline(&self) -> Instant {
        self.valid_until.at()
    }
}

#[derive(Default)]
struct State {
    next_id: u64,
    leases: HashMap<u64, Entry>,
    wakeups: BTreeSet<(Instant, u64)>,
    task: Option<JoinHandle<()>>,
}

impl State {
    fn reschedule(&mut self, id: u64) {
        if let Some(e) = self.leases.get_mut(&id) {
            self.wakeups.remove(&(e.wake, id));
            e.wake = e.next_refresh.min(e.deadline());
            self.wakeups.insert((e.wake, id));
        }
    }

    fn remove(&mut self, id: u64) -> Option<Entry> {
        let e = self.leases.remove(&id)?;
        self.wakeups.remove(&(e.wake, id));
        Some(e)
    }
}

struct Shared {
    /// How refreshes are acknowledged: with it, every pipeline of refreshes
    /// ends with `WAIT`/`WAITAOF`, and a refresh moves its lease's deadline
    /// only if that acknowledged it.
    ack: Option<Ack>,
    state: Mutex<State>,
    notify: Notify,
    shutdown: CancellationToken,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Handle to the refresher; shuts the task down when dropped.
pub(crate) struct Heartbeat {
    shared: Arc<Shared>,
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.shared.shutdown.cancel();
    }
}

impl Heartbeat {
    /// A refresher whose refreshes are acknowledged as `ack` says.
    pub(crate) fn new(ack: Option<Ack>) -> Self {
        Heartbeat {
            shared: Arc::new(Shared {
                ack,
                state: Mutex::new(State::default()),
                notify: Notify::new(),
                shutdown: CancellationToken::new(),
            }),
        }
    }

    /// Starts refreshing `key`, whose lease counts from `valid_until.start()`
    /// (when the acquire, or the refresh that confirmed it, was sent).
    /// `lost` is cancelled when the lease is lost; `valid_until` is moved
    /// forward on every successful refresh.
    pub(crate) fn register<C: LockConnection>(
        &self,
        conn: &C,
        owner: &Arc<str>,
        key: &str,
        ttl_ms: u64,
        lost: Arc<LostSignal>,
        valid_until: Arc<ValidUntil>,
    ) -> u64 {
        let interval = refresh_interval(ttl_ms);
        let acquired_at = valid_until.start();
        let valid_until_at = valid_until.at();
        let mut st = self.shared.lock();
        let id = st.next_id;
        st.next_id += 1;
        let next_refresh = after(acquired_at, interval);
        let ttl = Duration::from_millis(ttl_ms);
        let entry = Entry {
            key: key.to_string(),
            owner: owner.clone(),
            ttl,
            ttl_ms,
            interval,
            next_refresh,
            wake: next_refresh,
            in_flight: false,
            failures: 0,
            lost,
            valid_until,
        };
        // The refresher sleeps until the earliest wake-up: wake it only if
        // this lease is due before that (a lock cycle then costs no task switch).
        let earliest = st.wakeups.first().map(|w| w.0);
        st.leases.insert(id, entry);
        st.wakeups.insert((next_refresh, id));
        st.reschedule(id);
        let wake_refresher = earliest.is_none_or(|t| next_refresh.min(valid_until_at) < t);
        let running = st.task.as_ref().is_some_and(|t| !t.is_finished());
        if !running {
            let task = tokio::spawn(run(self.shared.clone(), conn.clone()));
            st.task = Some(task);
        }
        drop(st);
        if wake_refresher {
            self.shared.notify.notify_one();
        }
        id
    }

    /// Stops refreshing a lease (its body is over). Idempotent.
    pub(crate) fn unregister(&self, id: u64) {
        self.shared.lock().remove(id);
    }

    /// Number of leases being refreshed (for tests and metrics).
    pub(crate) fn active(&self) -> usize {
        self.shared.lock().leases.len()
    }
}

/// Replies of one pipelined batch: (lease id, reply or error text, and
/// why the refresh does not count if it was not acknowledged).
type Batch = Vec<(u64, Result<i64, String>, Option<String>)>;

/// Sends one pipeline of refreshes (ending with the acknowledgement, with
/// `ack`) and waits for the replies until `deadline` (the latest deadline
/// among its leases).
async fn send_batch<C: LockConnection>(
    mut conn: C,
    ids: Vec<u64>,
    mut pipe: redis::Pipeline,
    deadline: Instant,
    ack: Option<Ack>,
) -> Batch {
    let Some(ack) = ack else {
        return send_refreshes(conn, ids, pipe, deadline)
            .await
            .into_iter()
            .map(|(id, r)| (id, r, None))
            .collect();
    };
    pipe.add_command(crate::proto::ack(&ack));
    let n = ids.len();
    let sent = tokio::time::timeout_at(deadline, conn.req_packed_commands(&pipe, 0, n + 1));
    let msg = match sent.await {
        Ok(Ok(mut values)) if values.len() == n + 1 => {
            let acked = values.pop().unwrap_or(Value::Nil);
            let short = match crate::proto::parse_ack(&ack, acked) {
                Ok((_, true)) => None,
                Ok((got, false)) => Some(format!(
                    "the refresh was not acknowledged: {got} of {} replicas within {:?}",
                    ack.replicas, ack.timeout
                )),
                Err(e) => Some(format!("the refresh's acknowledgement failed: {e}")),
            };
            return ids
                .into_iter()
                .zip(values)
                .map(|(id, v)| (id, refresh_reply(v), short.clone()))
                .collect();
        }
        Ok(Ok(values)) => format!(
            "pipeline returned {} replies for {} commands",
            values.len(),
            n + 1
        ),
        Ok(Err(e)) => e.to_string(),
        Err(_) => "no reply within the ttl".to_string(),
    };
    ids.into_iter()
        .map(|id| (id, Err(msg.clone()), None))
        .collect()
}

/// One refresh's reply: its integer, or the error's text.
fn refresh_reply(v: Value) -> Result<i64, String> {
    v.extract_error()
        .and_then(|v| Ok(redis::from_redis_value::<i64>(v)?))
        .map_err(|e| e.to_string())
}

/// Sends one pipeline of refreshes without acknowledgement.
async fn send_refreshes<C: LockConnection>(
    mut conn: C,
    ids: Vec<u64>,
    pipe: redis::Pipeline,
    deadline: Instant,
) -> Vec<(u64, Result<i64, String>)> {
    let sent = tokio::time::timeout_at(deadline, conn.req_packed_commands(&pipe, 0, ids.len()));
    let Ok(result) = sent.await else {
        let msg = "no reply within the ttl".to_string();
        return ids.into_iter().map(|id| (id, Err(msg.clone()))).collect();
    };
    match result {
        Ok(values) if values.len() == ids.len() => ids
            .into_iter()
            .zip(values)
            .map(|(id, v)| (id, refresh_reply(v)))
            .collect(),
        Ok(values) => {
            let msg = format!(
                "pipeline returned {} replies for {} commands",
                values.len(),
                ids.len()
            );
            ids.into_iter().map(|id| (id, Err(msg.clone()))).collect()
        }
        Err(e) => {
            let msg = e.to_string();
            ids.into_iter().map(|id| (id, Err(msg.clone()))).collect()
        }
    }
}

async fn run<C: LockConnection>(shared: Arc<Shared>, conn: C) {
    let ack = shared.ack;
    let mut inflight = FuturesUnordered::new();
    loop {
        let now = Instant::now();
        // Due refreshes, pipelined per group (one group, or one per cluster slot).
        let mut batches: HashMap<u16, (Vec<u64>, redis::Pipeline, Instant)> = HashMap::new();
        let next_wake = {
            let mut st = shared.lock();
            while let Some(&(t, id)) = st.wakeups.first() {
                if t > now {
                    break;
                }
                st.wakeups.pop_first();
                let Some(e) = st.leases.get_mut(&id) else {
                    continue;
                };
                // Declared lost by the holder (`Lease::is_lost` saw the
                // deadline pass first): stop refreshing it.
                if e.lost.is_lost() {
                    st.leases.remove(&id);
                    continue;
                }
                if now >= e.deadline() {
                    tracing::warn!(
                        key = %e.key,
                        ttl_ms = e.ttl_ms,
                        "spacelock: lease lost: no refresh succeeded within the ttl"
                    );
                    e.lost.lose(LostReason::Expired);
                    st.leases.remove(&id);
                    continue;
                }
                if now >= e.next_refresh {
                    if !e.in_flight {
                        e.in_flight = true;
                        let deadline = e.deadline();
                        let (ids, pipe, until) = batches
                            .entry(C::pipeline_group(e.key.as_bytes()))
                            .or_insert_with(|| (Vec::new(), redis::pipe(), deadline));
                        ids.push(id);
                        *until = (*until).max(deadline);
                        pipe.add_command(crate::proto::refresh(&e.key, &e.owner, e.ttl_ms));
                    }
                    e.next_refresh = after(now, e.interval);
                }
                e.wake = e.next_refresh.min(e.deadline());
                let wake = e.wake;
                st.wakeups.insert((wake, id));
            }
            st.wakeups.first().map(|w| w.0)
        };
        for (_, (ids, pipe, until)) in batches {
            let conn = conn.clone();
            inflight.push(async move { (now, send_batch(conn, ids, pipe, until, ack).await) });
        }
        let sleep = tokio::time::sleep_until(
            next_wake.unwrap_or_else(|| after(now, Duration::from_secs(3600))),
        );
        tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            _ = shared.notify.notified() => {}
            _ = sleep => {}
            Some((started, batch)) = inflight.next(), if !inflight.is_empty() => {
                handle_replies(&shared, started, batch);
                // Take whatever else is ready without another pass.
                while let Some(Some((started, batch))) =
                    futures_util::FutureExt::now_or_never(inflight.next())
                {
                    handle_replies(&shared, started, batch);
                }
            }
        }
    }
}

fn handle_replies(shared: &Shared, started: Instant, batch: Batch) {
    let mut st = shared.lock();
    for (id, result, short) in batch {
        handle_reply(&mut st, id, started, result, short);
    }
}

fn handle_reply(
    st: &mut State,
    id: u64,
    started: Instant,
    result: Result<i64, String>,
    short: Option<String>,
) {
    let Some(e) = st.leases.get_mut(&id) else {
        return; // released meanwhile
    };
    e.in_flight = false;
    if e.lost.is_lost() {
        st.remove(id);
        return;
    }
    match result {
        Ok(1) if short.is_some() => {
            // The primary took the refresh (the key may live that much
            // longer), but too few replicas did: the deadline stays.
            e.valid_until.answered(Instant::now(), e.ttl);
            let why = short.unwrap_or_default();
            retry_soon(st, id, &why);
        }
        Ok(1) => {
            if e.failures > 0 {
                tracing::info!(key = %e.key, failures = e.failures, "spacelock: refresh succeeded again");
                e.failures = 0;
            }
            // Moves the deadline forward only: a reply to an older refresh
            // never takes it back.
            e.valid_until.extend(started, e.ttl);
            e.valid_until.answered(Instant::now(), e.ttl);
            if Instant::now() >= e.deadline() {
                tracing::warn!(
                    key = %e.key,
                    ttl_ms = e.ttl_ms,
                    "spacelock: lease lost: the refresh reply came back after the ttl"
                );
                e.lost.lose(LostReason::Expired);
                st.remove(id);
            } else {
                st.reschedule(id);
            }
        }
        Ok(0) => {
            tracing::warn!(
                key = %e.key,
                "spacelock: lease lost: the lock expired or has another owner"
            );
            e.lost.lose(LostReason::NotOwner);
            st.remove(id);
        }
        Ok(other) => {
            let err = format!("unexpected reply {other}");
            retry_soon(st, id, &err);
        }
        Err(err) => retry_soon(st, id, &err),
    }
}

/// Schedules the next attempt of a failed refresh soon (not a whole
/// interval later: the connection may just have been replaced).
fn retry_soon(st: &mut State, id: u64, err: &str) {
    let Some(e) = st.leases.get_mut(&id) else {
        return;
    };
    e.failures = e.failures.saturating_add(1);
    let delay = retry_delay(e.failures, e.interval);
    if e.failures == 1 {
        tracing::warn!(key = %e.key, error = %err, "spacelock: refresh failed; retrying in {delay:?}");
    } else {
        tracing::debug!(key = %e.key, error = %err, failures = e.failures, "spacelock: refresh failed again; retrying in {delay:?}");
    }
    e.next_refresh = e.next_refresh.min(after(Instant::now(), delay));
    st.reschedule(id);
}
