//! `SPACELOCK.ACQUIRE key owner ttl_ms WAIT timeout_ms`: a server-side FIFO
//! per lock key with direct handoff.
//!
//! # Design
//!
//! * A waiter is a client blocked with `RM_BlockClient` (not on keys), queued
//!   in [`Registry`] under (db, key) in arrival order.
//! * **Handoff** happens in [`settle`]: whenever the lock key is free and the
//!   queue is not empty, the head waiter is granted with the same path as a
//!   plain ACQUIRE (`lock::acquire` over `RedisStore`: `SET key owner PXAT`
//!   plus `SET fence n`, replicated as core commands with keyspace events),
//!   and unblocked with its token. `settle` runs
//!   - inside RELEASE and REFRESH (same command: the release and the grant are
//!     one atomic step, replicated in one MULTI/EXEC, no barging);
//!   - inside every ACQUIRE *before* it looks at the key, so a client that
//!     arrives while a grant is pending never overtakes the queue;
//!   - from a module timer armed at the holder's absolute expiry (+1 ms,
//!     because a key only counts as expired once `now > expire_at`); REFRESH
//!     and any other change of the key re-arm it;
//!   - from a 0 ms timer scheduled by keyspace events (DEL, UNLINK, RENAME,
//!     SET, EXPIRE, expired, evicted) and by FLUSHALL/FLUSHDB on keys with
//!     waiters.
//! * **Why timers, also for keyspace events**: Redis 7.0 has no
//!   `RM_AddPostNotificationJob` (7.2+), and writing from inside a
//!   notification callback is unsupported. A timer callback is a normal
//!   execution unit: on 7.0 its `RM_Replicate` calls are propagated at the end
//!   of the callback, wrapped in MULTI/EXEC. So every write of this module
//!   comes from a command or a timer, on every supported server.
//! * **One unblock per handle**: a waiter leaves the registry exactly once
//!   (granted, timed out, disconnected, or failed), and whoever removes it
//!   calls `RedisModule_UnblockClient` for it. A disconnected client is thus
//!   never granted: the disconnect callback removes it before any later grant.
//! * **Other writers**: a `SET` by a non-module client keeps the key held, so
//!   waiters keep waiting (the timer follows the key's new expiry; without an
//!   expiry they wait for a DEL or their timeout). DEL/UNLINK/RENAME/expiry/
//!   eviction/FLUSH free the key and the head waiter is granted within one
//!   event-loop iteration. After FLUSHALL the fence counter restarts, as for
//!   any lock (documented in the README).
//! * **Replicas** never write: if the server has become a replica while
//!   clients wait, they are unblocked with `-UNBLOCKED`.
//! * **Write pauses** (`CLIENT PAUSE … WRITE`, `FAILOVER`, a cluster manual
//!   failover) hold every spacelock command, but not timers: a grant from a
//!   timer waits while the server asks modules to avoid replica traffic,
//!   and is tried again every 10 ms (see `writes_paused`).
//! * **Timeouts** are the server's blocked-client timeouts (nil reply), which
//!   it checks before each event-loop sleep. An idle server sleeps until its
//!   next timer, up to one cron period (1000/hz ms: 100 ms at the default
//!   hz 10), so each waiter with a finite timeout also gets a no-op module
//!   *wake* timer just after its deadline: the timeout is answered within
//!   about a millisecond, like the expiry handoff. The wake timer is stopped
//!   when the waiter leaves earlier.
//! * **Memory**: a queue, its timers and its index entries are freed as soon
//!   as it empties.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::Hash;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering::Relaxed};
use std::sync::{Mutex, MutexGuard};

use crate::config;
use crate::ffi::{BlockedClient, Ctx, OwnedStr, RStr, Value, WaitReply};
use crate::stats;
use crate::store::RedisStore;
use spacelock_core::args::{parse_timeout, ArgError};
use spacelock_core::lock;

/// Parses the options after `key owner ttl_ms`: only `WAIT timeout_ms`
/// (case-insensitive), at most once. `Ok(None)` without WAIT.
pub fn parse_options(rest: &[&[u8]]) -> Result<Option<i64>, ArgError> {
    let mut wait = None;
    let mut it = rest.iter();
    while let Some(opt) = it.next() {
        if !opt.eq_ignore_ascii_case(b"WAIT") {
            return Err(ArgError::UnknownOption);
        }
        if wait.is_some() {
            return Err(ArgError::RepeatedOption);
        }
        let value = it.next().ok_or(ArgError::MissingValue)?;
        wait = Some(parse_timeout(value)?);
    }
    Ok(wait)
}

/// The error for a WAIT beyond `spacelock.max-waiters`.
pub fn too_many_waiters(max: i64) -> String {
    format!("ERR too many clients waiting for this lock (spacelock.max-waiters is {max})")
}

/// The error sent to waiters when, in a cluster, the node no longer (or not
/// stably) serves the lock's hash slot: resharding moved the key away.
pub const SLOT_MOVED_TRYAGAIN: &str =
    "TRYAGAIN the lock's hash slot is migrating or has moved; retry the WAIT";

/// Whether the `myself` node of a `CLUSTER NODES` text serves `slot` and is
/// neither migrating nor importing it.
pub fn serves_slot(nodes: &str, slot: u16) -> bool {
    let Some(line) = nodes.lines().find(|l| {
        l.split(' ')
            .nth(2)
            .is_some_and(|flags| flags.split(',').any(|f| f == "myself"))
    }) else {
        return false;
    };
    let mut owned = false;
    for field in line.split(' ').skip(8) {
        if let Some(open) = field.strip_prefix('[') {
            // `[slot->-id]` (migrating) or `[slot-<-id]` (importing).
            if open.split('-').next().and_then(|n| n.parse::<u16>().ok()) == Some(slot) {
                return false;
            }
            continue;
        }
        let (lo, hi) = field.split_once('-').unwrap_or((field, field));
        if let (Ok(lo), Ok(hi)) = (lo.trim().parse::<u16>(), hi.trim().parse::<u16>()) {
            owned |= (lo..=hi).contains(&slot);
        }
    }
    owned
}

/// The error sent to waiters when the server turned into a replica.
pub const REPLICA_UNBLOCKED: &str =
    "UNBLOCKED this server is now a replica; retry the WAIT on the primary";

/// A queued client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waiter<H> {
    /// Its blocked-client handle.
    pub handle: H,
    /// The owner id it asked for.
    pub owner: Vec<u8>,
    /// The ttl it asked for (counted from the grant).
    pub ttl_ms: i64,
    /// The wake timer armed just after its WAIT deadline, if any.
    pub wake: Option<u64>,
    /// Arrival order.
    seq: u64,
}

/// A module timer armed for a queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timer {
    /// The server's timer id.
    pub id: u64,
    /// The absolute lock expiry it was armed for (ms since the epoch).
    pub at_ms: i64,
}

struct Queue<H> {
    qid: u64,
    waiters: BTreeMap<u64, Waiter<H>>,
    timer: Option<Timer>,
}

/// (db, key) of a queue.
pub type QueueKey = (i32, Vec<u8>);

/// Every queue, with indexes by handle and by queue id (the timers' data).
/// Plain Rust: unit-tested with integer handles.
pub struct Registry<H> {
    queues: HashMap<i32, HashMap<Vec<u8>, Queue<H>>>,
    handles: HashMap<H, (QueueKey, u64)>,
    qids: HashMap<u64, QueueKey>,
    next_seq: u64,
    next_qid: u64,
    pending: HashSet<QueueKey>,
    pending_timer: Option<u64>,
}

impl<H: Copy + Eq + Hash> Default for Registry<H> {
    fn default() -> Self {
        Self::new()
    }
}

impl<H: Copy + Eq + Hash> Registry<H> {
    /// An empty registry. Queue id 0 is reserved for the pending-keys timer.
    pub fn new() -> Self {
        Registry {
            queues: HashMap::new(),
            handles: HashMap::new(),
            qids: HashMap::new(),
            next_seq: 0,
            next_qid: 1,
            pending: HashSet::new(),
            pending_timer: None,
        }
    }

    fn queue(&self, db: i32, key: &[u8]) -> Option<&Queue<H>> {
        self.queues.get(&db)?.get(key)
    }

    fn queue_mut(&mut self, db: i32, key: &[u8]) -> Option<&mut Queue<H>> {
        self.queues.get_mut(&db)?.get_mut(key)
    }

    /// Number of clients waiting on `key` in `db`.
    pub fn len(&self, db: i32, key: &[u8]) -> usize {
        self.queue(db, key).map_or(0, |q| q.waiters.len())
    }

    /// Whether `key` in `db` has a queue.
    pub fn has(&self, db: i32, key: &[u8]) -> bool {
        self.queue(db, key).is_some()
    }

    /// Whether nobody waits anywhere.
    pub fn is_empty(&self) -> bool {
        self.handles.is_empty()
    }

    /// (waiting clients, keys with waiters).
    pub fn gauges(&self) -> (u64, u64) {
        let keys = self.queues.values().map(HashMap::len).sum::<usize>();
        (self.handles.len() as u64, keys as u64)
    }

    /// Queues a waiter at the tail. `Err(())` when `max` already wait.
    #[allow(clippy::result_unit_err)]
    pub fn push(
        &mut self,
        db: i32,
        key: &[u8],
        handle: H,
        owner: &[u8],
        ttl_ms: i64,
        max: usize,
    ) -> Result<(), ()> {
        if self.len(db, key) >= max {
            return Err(());
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        if !self.has(db, key) {
            let qid = self.next_qid;
            self.next_qid += 1;
            self.qids.insert(qid, (db, key.to_vec()));
            self.queues.entry(db).or_default().insert(
                key.to_vec(),
                Queue {
                    qid,
                    waiters: BTreeMap::new(),
                    timer: None,
                },
            );
        }
        let waiter = Waiter {
            handle,
            owner: owner.to_vec(),
            ttl_ms,
            wake: None,
            seq,
        };
        if let Some(q) = self.queue_mut(db, key) {
            q.waiters.insert(seq, waiter);
        }
        self.handles.insert(handle, ((db, key.to_vec()), seq));
        Ok(())
    }

    /// Records the wake timer armed for the waiter with `handle`.
    pub fn set_wake(&mut self, handle: H, timer: u64) {
        let Some(((db, key), seq)) = self.handles.get(&handle).cloned() else {
            return;
        };
        if let Some(w) = self
            .queue_mut(db, &key)
            .and_then(|q| q.waiters.get_mut(&seq))
        {
            w.wake = Some(timer);
        }
    }

    /// Takes the head waiter (the longest-waiting one).
    pub fn pop_head(&mut self, db: i32, key: &[u8]) -> Option<Waiter<H>> {
        let (_, w) = self.queue_mut(db, key)?.waiters.pop_first()?;
        self.handles.remove(&w.handle);
        Some(w)
    }

    /// Puts a waiter taken by [`pop_head`](Self::pop_head) back in its place.
    pub fn push_front(&mut self, db: i32, key: &[u8], w: Waiter<H>) {
        let (handle, seq) = (w.handle, w.seq);
        if let Some(q) = self.queue_mut(db, key) {
            q.waiters.insert(seq, w);
            self.handles.insert(handle, ((db, key.to_vec()), seq));
        }
    }

    /// Removes the waiter with `handle`, wherever it is.
    pub fn remove(&mut self, handle: H) -> Option<(QueueKey, Waiter<H>)> {
        let ((db, key), seq) = self.handles.remove(&handle)?;
        let w = self.queue_mut(db, &key)?.waiters.remove(&seq)?;
        Some(((db, key), w))
    }

    /// Takes every waiter of `key`, in order.
    pub fn drain(&mut self, db: i32, key: &[u8]) -> Vec<Waiter<H>> {
        let Some(q) = self.queue_mut(db, key) else {
            return Vec::new();
        };
        let all: Vec<Waiter<H>> = std::mem::take(&mut q.waiters).into_values().collect();
        for w in &all {
            self.handles.remove(&w.handle);
        }
        all
    }

    /// Frees the queue of `key` if it has no waiters left; returns the timer
    /// the caller must stop.
    pub fn drop_if_empty(&mut self, db: i32, key: &[u8]) -> Option<u64> {
        let per_db = self.queues.get_mut(&db)?;
        if !per_db.get(key)?.waiters.is_empty() {
            return None;
        }
        let q = per_db.remove(key)?;
        if per_db.is_empty() {
            self.queues.remove(&db);
        }
        self.qids.remove(&q.qid);
        self.pending.remove(&(db, key.to_vec()));
        if self.handles.is_empty() {
            // Give memory back once nobody waits (see the memory test).
            self.handles.shrink_to_fit();
            self.qids.shrink_to_fit();
            self.queues.shrink_to_fit();
        }
        q.timer.map(|t| t.id)
    }

    /// The timer armed for `key`, and the queue id timers carry.
    pub fn timer(&self, db: i32, key: &[u8]) -> Option<(u64, Option<Timer>)> {
        self.queue(db, key).map(|q| (q.qid, q.timer))
    }

    /// Records the timer armed for `key` (None: none armed).
    pub fn set_timer(&mut self, db: i32, key: &[u8], timer: Option<Timer>) {
        if let Some(q) = self.queue_mut(db, key) {
            q.timer = timer;
        }
    }

    /// The queue a timer's data designates.
    pub fn key_of(&self, qid: u64) -> Option<QueueKey> {
        self.qids.get(&qid).cloned()
    }

    /// Marks `key` for a settle from the pending timer. Returns whether that
    /// timer must be armed now.
    pub fn mark_pending(&mut self, db: i32, key: &[u8]) -> bool {
        if !self.has(db, key) {
            return false;
        }
        self.pending.insert((db, key.to_vec()));
        self.pending_timer.is_none()
    }

    /// Marks every queue of `db` (all dbs for -1). Returns whether the
    /// pending timer must be armed now.
    pub fn mark_db_pending(&mut self, db: i32) -> bool {
        let keys: Vec<QueueKey> = self
            .queues
            .iter()
            .filter(|(d, _)| db < 0 || **d == db)
            .flat_map(|(d, qs)| qs.keys().map(move |k| (*d, k.clone())))
            .collect();
        let any = !keys.is_empty();
        self.pending.extend(keys);
        any && self.pending_timer.is_none()
    }

    /// Asks the pending timer to run (to unsubscribe from keyspace events
    /// once idle). Returns whether it must be armed now.
    pub fn mark_unsubscribe(&mut self) -> bool {
        self.pending_timer.is_none()
    }

    /// Records the pending timer.
    pub fn set_pending_timer(&mut self, id: Option<u64>) {
        self.pending_timer = id;
    }

    /// Takes the pending keys (the pending timer fired).
    pub fn take_pending(&mut self) -> Vec<QueueKey> {
        self.pending_timer = None;
        let mut keys: Vec<QueueKey> = self.pending.drain().collect();
        keys.sort();
        self.pending.shrink_to_fit();
        keys
    }
}

/// What to do with a queue's expiry timer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimerPlan {
    /// The armed timer is right.
    Keep,
    /// Stop this timer; none is needed.
    Stop(u64),
    /// Stop `stop` (if any) and arm one for expiry `at_ms`.
    Arm {
        /// Timer to stop first.
        stop: Option<u64>,
        /// Absolute lock expiry.
        at_ms: i64,
    },
}

/// Decides the timer for a held key whose expiry is `want` (None: no
/// expiry, waiters wait for a removal event or their timeout).
pub fn timer_plan(current: Option<Timer>, want: Option<i64>) -> TimerPlan {
    match (current, want) {
        (Some(t), Some(at)) if t.at_ms == at => TimerPlan::Keep,
        (current, Some(at)) => TimerPlan::Arm {
            stop: current.map(|t| t.id),
            at_ms: at,
        },
        (Some(t), None) => TimerPlan::Stop(t.id),
        (None, None) => TimerPlan::Keep,
    }
}

/// Longest module timer armed at once (1 h). The server computes
/// `now_us + period * 1000` without overflow checks, so a lease of years must
/// not become one timer; a timer that fires early just re-arms.
pub const MAX_TIMER_MS: i64 = 3_600_000;

/// Delay for a timer that must fire once `now > at_ms` (Redis' expiry test),
/// at most [`MAX_TIMER_MS`].
pub fn timer_period(at_ms: i64, now_ms: i64) -> i64 {
    at_ms
        .saturating_sub(now_ms)
        .saturating_add(1)
        .clamp(1, MAX_TIMER_MS)
}

/// Timer data of the wake timers (see the module docs): not a queue id
/// (those count up from 1), and nothing to do when it fires.
pub const WAKE_TIMER: u64 = u64::MAX;

/// The wake timer's delay for a WAIT of `timeout_ms` (1 ms after the
/// deadline, as the server answers once `now >= deadline`), or `None` when
/// none is needed: no limit, or a limit so far off that a cron period of
/// lateness does not matter.
pub fn wake_period(timeout_ms: i64) -> Option<i64> {
    let block = block_timeout(timeout_ms);
    (block > 0 && block < MAX_TIMER_MS).then(|| block + 1)
}

/// WAIT timeouts beyond this (about 100 years) mean "no limit": the server
/// computes `now + timeout` without overflow checks.
pub const MAX_FINITE_TIMEOUT_MS: i64 = 100 * 365 * 86_400_000;

/// The timeout handed to `RM_BlockClient` for a WAIT of `timeout_ms`.
pub fn block_timeout(timeout_ms: i64) -> i64 {
    if timeout_ms > MAX_FINITE_TIMEOUT_MS {
        0
    } else {
        timeout_ms
    }
}

// ---------------------------------------------------------------------------
// Server glue. Everything below runs on the server's main thread. The
// registry is never locked across a server call (server calls can re-enter
// this module through keyspace events).
//
// Plain statics, not `thread_local!`: a TLS destructor registered by the
// shared object would keep glibc from unloading it on MODULE UNLOAD (and a
// reload would then see the old statics).

static REGISTRY: Mutex<Option<Registry<BlockedClient>>> = Mutex::new(None);
static SELF_WRITES: AtomicU32 = AtomicU32::new(0);
/// Whether `on_key_event` is subscribed (see [`enqueue`] and [`on_timer`]).
static SUBSCRIBED: AtomicBool = AtomicBool::new(false);
/// Whether the failure of the write-pause probe has been logged.
static PROBE_WARNED: AtomicBool = AtomicBool::new(false);

fn lock_registry() -> MutexGuard<'static, Option<Registry<BlockedClient>>> {
    REGISTRY
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn with<R>(f: impl FnOnce(&mut Registry<BlockedClient>) -> R) -> R {
    f(lock_registry().get_or_insert_with(Registry::new))
}

/// While alive, keyspace events are ours (a spacelock command or a settle
/// that handles its key itself) and are not scheduled for a settle.
pub struct SelfWrites(());

impl SelfWrites {
    /// Starts a section of spacelock's own writes.
    #[must_use]
    pub fn begin() -> Self {
        SELF_WRITES.fetch_add(1, Relaxed);
        SelfWrites(())
    }
}

impl Drop for SelfWrites {
    fn drop(&mut self) {
        SELF_WRITES.fetch_sub(1, Relaxed);
    }
}

/// (waiting clients, keys with waiters) for INFO.
pub fn gauges() -> (u64, u64) {
    // try_lock: INFO may run in a crash report while the lock is held.
    match REGISTRY.try_lock() {
        Ok(r) => r.as_ref().map_or((0, 0), Registry::gauges),
        Err(_) => (0, 0),
    }
}

/// Clients waiting on `key` in `db`.
pub fn waiters_on(db: i32, key: &[u8]) -> usize {
    lock_registry().as_ref().map_or(0, |r| r.len(db, key))
}

/// Blocks the caller in `key`'s queue (the lock is held: the caller checked).
/// Replies itself on error.
pub fn enqueue(ctx: &Ctx, key: RStr, owner: RStr, ttl_ms: i64, timeout_ms: i64) {
    let db = ctx.selected_db();
    let name = key.as_bytes();
    let max = config::max_waiters();
    if with(|r| r.len(db, name)) as u64 >= max.max(0) as u64 {
        return ctx.reply_error(&too_many_waiters(max));
    }
    let Some(bc) = ctx.block_client(block_timeout(timeout_ms)) else {
        return ctx.reply_error("ERR spacelock: this client cannot block here");
    };
    let pushed = with(|r| r.push(db, name, bc, owner.as_bytes(), ttl_ms, usize::MAX));
    debug_assert!(pushed.is_ok());
    if let Some(period) = wake_period(timeout_ms) {
        let id = ctx.create_timer(period, WAKE_TIMER);
        with(|r| r.set_wake(bc, id));
    }
    // Keyspace events matter only while someone waits: subscribe now (a
    // server where nobody ever waits pays nothing for them).
    if !SUBSCRIBED.load(Relaxed) && ctx.subscribe_key_events() {
        SUBSCRIBED.store(true, Relaxed);
    }
    settle(ctx, key);
}

/// Grants `key` to its head waiters while it is free, then keeps the expiry
/// timer in line with the holder's expiry; frees the queue once empty. Call
/// with `ctx` on the key's database, from a spacelock command (the cluster
/// has already routed it to the slot's owner).
pub fn settle(ctx: &Ctx, key: RStr) {
    settle_from(ctx, key, false);
}

/// [`settle`], from a timer when `from_timer`: in a cluster the node must
/// then check that it still serves the key's slot before it grants, because
/// nothing routed this call. A MIGRATE deletes the key on the source node;
/// granting there would create a second holder (with a token from a fence
/// counter that moved away) in a slot the node is handing over.
fn settle_from(ctx: &Ctx, key: RStr, from_timer: bool) {
    if with(|r| r.is_empty()) {
        return;
    }
    let db = ctx.selected_db();
    let name = key.as_bytes();
    if !with(|r| r.has(db, name)) {
        return;
    }
    let _quiet = SelfWrites::begin();
    let mut slot_checked = false;
    let mut pause_checked = false;
    if ctx.is_replica() {
        for w in with(|r| r.drain(db, name)) {
            stop_wake(ctx, &w);
            w.handle.unblock(WaitReply::Error(REPLICA_UNBLOCKED.into()));
        }
    } else {
        loop {
            let (free, expire_at) = {
                let k = ctx.open(key, false);
                (matches!(k.value(), Value::Empty), k.expire_at_ms())
            };
            if !free {
                arm(ctx, db, name, expire_at);
                break;
            }
            if from_timer && !pause_checked {
                pause_checked = true;
                if writes_paused(ctx, key) {
                    // Look again shortly: the first look after the pause
                    // deletes the expired key, and the grant goes ahead.
                    arm(ctx, db, name, Some(ctx.now_ms() + PAUSE_RETRY_MS));
                    break;
                }
            }
            if from_timer && !slot_checked && ctx.in_cluster() && with(|r| r.len(db, name)) > 0 {
                slot_checked = true;
                let slot = spacelock_core::fence::key_slot(name);
                if !ctx.cluster_nodes().is_some_and(|n| serves_slot(&n, slot)) {
                    for w in with(|r| r.drain(db, name)) {
                        stop_wake(ctx, &w);
                        w.handle
                            .unblock(WaitReply::Error(SLOT_MOVED_TRYAGAIN.into()));
                    }
                    break;
                }
            }
            let Some(w) = with(|r| r.pop_head(db, name)) else {
                break;
            };
            let owner = OwnedStr::new(&w.owner);
            let outcome = {
                let mut store = RedisStore::open(ctx, key, owner.as_rstr());
                lock::acquire(&mut store, w.ttl_ms)
            };
            match outcome {
                Ok(Some(token)) => {
                    stats::HANDOFFS.incr();
                    stop_wake(ctx, &w);
                    w.handle.unblock(WaitReply::Token(token));
                }
                // Not reachable (the key was just free); keep its place and
                // look at the key again.
                Ok(None) => with(|r| r.push_front(db, name, w)),
                Err(e) => {
                    stop_wake(ctx, &w);
                    w.handle.unblock(WaitReply::Error(e.to_string()));
                }
            }
        }
    }
    finish(ctx, db, name);
}

/// How often a grant held back by a write pause is tried again.
const PAUSE_RETRY_MS: i64 = 10;

/// Whether a grant from a timer must wait because the server's writes are
/// paused (`CLIENT PAUSE … WRITE`, `FAILOVER`, a cluster manual failover).
///
/// Only timers can run then: every spacelock command is a write command,
/// which the pause holds. A grant during the pause would be a write the
/// failover does not expect (a manual failover can lose it), and on an
/// expired lock or fence key the server aborts: a paused primary keeps
/// expired keys stored and only reports them gone, and its `SET` path
/// asserts that a key it adds is not stored yet.
///
/// The server says so through `RedisModule_AvoidReplicaTraffic`. As a
/// backstop for any other state that keeps expired keys stored even for a
/// write, a key the grant would write that reads as free after a look-up
/// for writing is probed with `MEMORY USAGE` (which looks keys up without
/// the expiry check): stored means wait too. The fence key is probed only
/// when it reads as free (it never expires unless someone gave it a ttl).
/// If the probe fails (`MEMORY` renamed; in a cluster, a slot being
/// migrated redirects it), the grant goes ahead, as it did before.
fn writes_paused(ctx: &Ctx, key: RStr) -> bool {
    if ctx.avoid_replica_traffic() {
        return true;
    }
    let stored = |name: RStr| match ctx.stored_at_all(name) {
        Some(stored) => stored,
        None => {
            if !PROBE_WARNED.swap(true, Relaxed) {
                ctx.log(
                    c"warning",
                    "spacelock: could not ask MEMORY USAGE whether a free-looking key is still stored (the command is renamed, or the cluster redirects it); WAIT grants from timers go ahead without that check",
                );
            }
            false
        }
    };
    // A look-up for writing deletes an expired key whenever the server
    // allows it (Valkey's import-mode, say, keeps expired keys until then),
    // so only a key still stored after one would make the grant's write
    // abort the server.
    let stuck = |name: RStr| matches!(ctx.open(name, true).value(), Value::Empty) && stored(name);
    if stuck(key) {
        return true;
    }
    let fence = crate::store::fence_name(key.as_bytes());
    stuck(fence.as_rstr())
}

/// Arms, moves or stops `key`'s expiry timer (only while waiters remain).
fn arm(ctx: &Ctx, db: i32, name: &[u8], expire_at: Option<i64>) {
    if with(|r| r.len(db, name)) == 0 {
        return;
    }
    let Some((qid, current)) = with(|r| r.timer(db, name)) else {
        return;
    };
    match timer_plan(current, expire_at) {
        TimerPlan::Keep => {}
        TimerPlan::Stop(id) => {
            ctx.stop_timer(id);
            with(|r| r.set_timer(db, name, None));
        }
        TimerPlan::Arm { stop, at_ms } => {
            if let Some(id) = stop {
                ctx.stop_timer(id);
            }
            let id = ctx.create_timer(timer_period(at_ms, ctx.now_ms()), qid);
            with(|r| r.set_timer(db, name, Some(Timer { id, at_ms })));
        }
    }
}

/// Frees `key`'s queue and timer if nobody waits any more. Once nobody
/// waits anywhere, the pending timer unsubscribes from keyspace events (from
/// a timer: this may run inside the server's event dispatch).
fn finish(ctx: &Ctx, db: i32, name: &[u8]) {
    if let Some(id) = with(|r| r.drop_if_empty(db, name)) {
        ctx.stop_timer(id);
    }
    if SUBSCRIBED.load(Relaxed) && Ctx::can_unsubscribe_key_events() && with(|r| r.is_empty()) {
        let needed = with(|r| r.mark_unsubscribe());
        arm_pending(ctx, needed);
    }
}

/// Stops the wake timer of a waiter that leaves the queue.
fn stop_wake<H>(ctx: &Ctx, w: &Waiter<H>) {
    if let Some(id) = w.wake {
        ctx.stop_timer(id);
    }
}

/// A waiter's timeout fired (the ffi callback replies nil).
pub fn on_timeout(ctx: &Ctx, bc: BlockedClient) {
    if let Some(((db, key), w)) = with(|r| r.remove(bc)) {
        stats::WAIT_TIMEOUTS.incr();
        // Usually fired already (it is what woke the server); not when the
        // server happened to check the timeout first.
        stop_wake(ctx, &w);
        bc.release();
        finish(ctx, db, &key);
    }
}

/// A waiter disconnected (or was unblocked by CLIENT UNBLOCK … ERROR, or by
/// a role change): it leaves the queue and is never granted.
pub fn on_disconnect(ctx: &Ctx, bc: BlockedClient) {
    if let Some(((db, key), w)) = with(|r| r.remove(bc)) {
        stop_wake(ctx, &w);
        bc.release();
        finish(ctx, db, &key);
    }
}

/// A timer fired: the expiry timer of a queue, (data 0) the pending one, or
/// a waiter's wake timer.
pub fn on_timer(ctx: &Ctx, data: u64) {
    if data == WAKE_TIMER {
        // Nothing to do: firing woke the event loop, and the server answers
        // the due timeouts before it sleeps again.
        return;
    }
    let keys = if data == 0 {
        let idle = with(|r| r.is_empty());
        if idle && SUBSCRIBED.load(Relaxed) && ctx.unsubscribe_key_events() {
            SUBSCRIBED.store(false, Relaxed);
        }
        with(|r| r.take_pending())
    } else {
        match with(|r| r.key_of(data)) {
            Some((db, key)) => {
                with(|r| r.set_timer(db, &key, None));
                vec![(db, key)]
            }
            None => Vec::new(),
        }
    };
    for (db, key) in keys {
        if ctx.select_db(db) {
            let name = OwnedStr::new(&key);
            settle_from(ctx, name.as_rstr(), true);
        }
    }
}

fn arm_pending(ctx: &Ctx, needed: bool) {
    if needed {
        let id = ctx.create_timer(0, 0);
        with(|r| r.set_pending_timer(Some(id)));
    }
}

/// A keyspace event on `key` by someone else: settle it soon.
pub fn on_key_event(ctx: &Ctx, key: RStr) {
    if SELF_WRITES.load(Relaxed) > 0 || with(|r| r.is_empty()) {
        return;
    }
    let db = ctx.selected_db();
    let needed = with(|r| r.mark_pending(db, key.as_bytes()));
    arm_pending(ctx, needed);
}

/// FLUSHALL (`db` = -1) or FLUSHDB finished, or the replication role changed
/// (`db` = -1): settle every queue of it soon.
pub fn on_flush(ctx: &Ctx, db: i32) {
    if with(|r| r.is_empty()) {
        return;
    }
    let needed = with(|r| r.mark_db_pending(db));
    arm_pending(ctx, needed);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(args: &[&str]) -> Result<Option<i64>, ArgError> {
        let v: Vec<&[u8]> = args.iter().map(|s| s.as_bytes()).collect();
        parse_options(&v)
    }

    #[test]
    fn options() {
        assert_eq!(opts(&[]), Ok(None));
        assert_eq!(opts(&["WAIT", "0"]), Ok(Some(0)));
        assert_eq!(opts(&["wait", "250"]), Ok(Some(250)));
        assert_eq!(opts(&["WAIT"]), Err(ArgError::MissingValue));
        assert_eq!(opts(&["WAIT", "-1"]), Err(ArgError::TimeoutInvalid));
        assert_eq!(opts(&["WAIT", "1.5"]), Err(ArgError::TimeoutInvalid));
        assert_eq!(opts(&["WAIT", "x"]), Err(ArgError::TimeoutInvalid));
        assert_eq!(
            opts(&["WAIT", "1", "WAIT", "2"]),
            Err(ArgError::RepeatedOption)
        );
        assert_eq!(opts(&["NOWAIT", "1"]), Err(ArgError::UnknownOption));
        assert_eq!(opts(&["WAIT", "1", "PX"]), Err(ArgError::UnknownOption));
        assert!(too_many_waiters(3).starts_with("ERR "));
        assert!(REPLICA_UNBLOCKED.starts_with("UNBLOCKED "));
    }

    #[test]
    fn fifo_per_key_and_db() {
        let mut r: Registry<u32> = Registry::new();
        for h in 1..=5 {
            r.push(0, b"k", h, b"o", 100, 10).unwrap();
        }
        r.push(1, b"k", 9, b"o", 100, 10).unwrap();
        assert_eq!(r.gauges(), (6, 2));
        assert_eq!(r.len(0, b"k"), 5);
        assert_eq!(r.pop_head(0, b"k").unwrap().handle, 1);
        // A waiter leaving from the middle keeps the others' order.
        assert_eq!(r.remove(3).unwrap().0, (0, b"k".to_vec()));
        assert!(r.remove(3).is_none(), "removed only once");
        let w = r.pop_head(0, b"k").unwrap();
        assert_eq!(w.handle, 2);
        r.push_front(0, b"k", w);
        let order: Vec<u32> = std::iter::from_fn(|| r.pop_head(0, b"k"))
            .map(|w| w.handle)
            .collect();
        assert_eq!(order, vec![2, 4, 5]);
        assert_eq!(r.pop_head(1, b"k").unwrap().handle, 9);
    }

    #[test]
    fn limit_and_cleanup() {
        let mut r: Registry<u32> = Registry::new();
        r.push(0, b"k", 1, b"a", 1, 2).unwrap();
        r.push(0, b"k", 2, b"b", 1, 2).unwrap();
        assert!(r.push(0, b"k", 3, b"c", 1, 2).is_err());
        assert!(r.push(0, b"other", 3, b"c", 1, 2).is_ok());
        assert_eq!(r.push(0, b"x", 4, b"c", 1, 0), Err(()));
        let (qid, _) = r.timer(0, b"k").unwrap();
        r.set_timer(0, b"k", Some(Timer { id: 77, at_ms: 5 }));
        assert_eq!(r.key_of(qid), Some((0, b"k".to_vec())));
        assert_eq!(r.drop_if_empty(0, b"k"), None, "not empty yet");
        assert!(r.mark_pending(0, b"k"));
        let drained = r.drain(0, b"k");
        assert_eq!(drained.iter().map(|w| w.handle).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(r.drop_if_empty(0, b"k"), Some(77), "its timer must stop");
        assert!(!r.has(0, b"k"));
        assert_eq!(r.key_of(qid), None);
        assert!(r.remove(3).is_some());
        assert_eq!(r.drop_if_empty(0, b"other"), None, "no timer armed");
        assert!(r.is_empty());
        assert_eq!(r.gauges(), (0, 0));
        assert!(r.queues.is_empty() && r.qids.is_empty() && r.pending.is_empty());
    }

    #[test]
    fn pending_marks() {
        let mut r: Registry<u32> = Registry::new();
        assert!(!r.mark_pending(0, b"k"), "no queue, nothing to do");
        r.push(0, b"k", 1, b"a", 1, 9).unwrap();
        r.push(2, b"j", 2, b"a", 1, 9).unwrap();
        assert!(r.mark_pending(0, b"k"));
        r.set_pending_timer(Some(5));
        assert!(!r.mark_pending(0, b"k"), "timer already armed");
        assert_eq!(r.take_pending(), vec![(0, b"k".to_vec())]);
        assert!(r.mark_db_pending(2));
        assert_eq!(r.take_pending(), vec![(2, b"j".to_vec())]);
        assert!(r.mark_db_pending(-1));
        assert_eq!(r.take_pending().len(), 2);
        assert!(!r.mark_db_pending(7));
    }

    #[test]
    fn cluster_nodes_parsing() {
        let me = "a1 127.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-100 200 [150->-b2] [300-<-b2]\n";
        let other = "b2 127.0.0.1:7001@17001 master - 0 1 2 connected 101-199 201-16383\n";
        let nodes = format!("{other}{me}");
        assert!(serves_slot(&nodes, 0));
        assert!(serves_slot(&nodes, 100));
        assert!(serves_slot(&nodes, 200));
        assert!(!serves_slot(&nodes, 101), "another node's slot");
        assert!(!serves_slot(&nodes, 150), "migrating away");
        assert!(!serves_slot(&nodes, 300), "importing");
        assert!(!serves_slot(&nodes, 16383));
        let replica = "c3 127.0.0.1:7002@17002 myself,slave a1 0 0 1 connected\n";
        assert!(!serves_slot(replica, 0));
        assert!(!serves_slot("", 0));
        assert!(SLOT_MOVED_TRYAGAIN.starts_with("TRYAGAIN "));
    }

    #[test]
    fn wake_timers() {
        // Finite timeouts get a wake timer 1 ms after the deadline; "no
        // limit" (0, or beyond the finite range) and hour-plus waits do not.
        assert_eq!(wake_period(50), Some(51));
        assert_eq!(wake_period(1), Some(2));
        assert_eq!(wake_period(0), None);
        assert_eq!(wake_period(MAX_TIMER_MS), None);
        assert_eq!(wake_period(i64::MAX), None);
        let mut r: Registry<u32> = Registry::new();
        r.push(0, b"k", 1, b"a", 1, 9).unwrap();
        r.push(0, b"k", 2, b"b", 1, 9).unwrap();
        r.set_wake(2, 42);
        r.set_wake(7, 43); // unknown handle: ignored
        assert_eq!(r.pop_head(0, b"k").unwrap().wake, None);
        assert_eq!(
            r.remove(2).unwrap().1.wake,
            Some(42),
            "leaves with its timer"
        );
    }

    #[test]
    fn timer_decisions() {
        let t = |id, at_ms| Some(Timer { id, at_ms });
        assert_eq!(timer_plan(None, None), TimerPlan::Keep);
        assert_eq!(timer_plan(t(1, 50), Some(50)), TimerPlan::Keep);
        assert_eq!(
            timer_plan(None, Some(50)),
            TimerPlan::Arm {
                stop: None,
                at_ms: 50
            }
        );
        // REFRESH moved the expiry.
        assert_eq!(
            timer_plan(t(1, 50), Some(80)),
            TimerPlan::Arm {
                stop: Some(1),
                at_ms: 80
            }
        );
        // SET without expiry by another client.
        assert_eq!(timer_plan(t(1, 50), None), TimerPlan::Stop(1));
        assert_eq!(timer_period(1_000, 900), 101);
        assert_eq!(timer_period(1_000, 1_000), 1);
        assert_eq!(timer_period(1_000, 5_000), 1);
        assert_eq!(timer_period(i64::MAX, i64::MIN), MAX_TIMER_MS);
        assert_eq!(timer_period(1_000 + 2 * MAX_TIMER_MS, 1_000), MAX_TIMER_MS);
        assert_eq!(block_timeout(0), 0);
        assert_eq!(block_timeout(250), 250);
        assert_eq!(block_timeout(MAX_FINITE_TIMEOUT_MS), MAX_FINITE_TIMEOUT_MS);
        assert_eq!(block_timeout(i64::MAX), 0);
    }
}
