//! Every WAIT decision, written against [`Host`] (the way the lock state
//! machine is written against `Store`): the module implements `Host` over
//! the server, and the tests over a fake (see the `tests` module below).

use std::fmt::Debug;
use std::hash::Hash;

use super::options::{REPLICA_UNBLOCKED, SLOT_MOVED_TRYAGAIN};
use super::registry::{Arrival, Db, DbScope, Grant, Registry, Waiter, WaiterId};
use super::timers::{self, ExpiryTimer, TimerId, TimerKind, TimerPlan, PAUSE_RETRY_MS};
use crate::lock::LockError;
use crate::shared::Mode;

/// Where a decision runs from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// A spacelock command: it undoes grants nobody received and keeps the
    /// expiry timer in line, but leaves a grant it finds due to the pending
    /// timer (see [`settle`]).
    Command,
    /// A module timer: it runs whatever the server is doing, so it checks
    /// for a write pause and, in a cluster, that the slot is still served.
    Timer,
}

/// The lock key as the grant path sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockState {
    /// Missing or expired: a grant may write it.
    Free,
    /// Held; the holder's absolute expiry, if it has one.
    Held {
        /// Ms since the epoch.
        expire_at_ms: Option<i64>,
    },
}

/// What a waiter is finally told. The host hands it to the server with the
/// unblock, and gets it back in the reply callback (see [`answer`]) or, if
/// the client never gets a reply, when the server frees it (see
/// [`undelivered`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The lock was written in the waiter's name.
    Granted(Grant),
    /// Its deadline passed before the lock came free.
    TimedOut,
    /// Its connection was closing: it gets nothing, and no grant was made.
    Gone,
    /// An error reply (full text, starting with its code word).
    Failed(String),
}

/// The reply the reply callback sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// The fencing token of a grant that stands.
    Token(i64),
    /// Not granted.
    Nil,
    /// An error reply.
    Error(String),
}

/// Events the host counts (for `INFO spacelock`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A grant was delivered to its waiter.
    Handoff,
    /// A nil for a passed deadline was delivered.
    Timeout,
    /// A grant was undone because its client was gone.
    Undone,
    /// A grant no longer stood when its reply was due (the key was deleted
    /// or expired in between); the waiter got nil.
    GrantLost,
}

/// What [`Host::acquire_for`] returns: the token, `None` if the lock turned
/// out held, or the error ACQUIRE would reply.
pub type Acquired = Result<Option<i64>, LockError>;

/// The server, as WAIT needs it. Methods that take a `db` act on that
/// database (a timer context selects it; a command context is already in
/// it).
pub trait Host {
    /// A blocked client's handle.
    type Handle: Copy + Eq + Hash + Debug;
    /// The server's wall clock, ms since the epoch.
    fn now_ms(&mut self) -> i64;
    /// Whether this server is a replica (it must not write).
    fn is_replica(&mut self) -> bool;
    /// Whether cluster mode is on.
    fn in_cluster(&mut self) -> bool;
    /// Whether this node serves `key`'s slot, stably (not migrating).
    fn serves_slot(&mut self, key: &[u8]) -> bool;
    /// Whether a write now would break a write pause (`CLIENT PAUSE …
    /// WRITE`, `FAILOVER`) or hit a key the server keeps stored while
    /// expired.
    fn writes_paused(&mut self, db: Db, key: &[u8]) -> bool;
    /// Whether the connection `client_id` is closing (its socket is gone,
    /// the server will free it after this iteration).
    fn client_closing(&mut self, client_id: u64) -> bool;
    /// Whether a reply added now for connection `client_id` would never
    /// reach it: it is closing, or the reply would overflow its output
    /// buffer (the server closes a connection whose unread replies exceed
    /// `client-output-buffer-limit` when a reply is added). By default,
    /// [`client_closing`](Self::client_closing).
    fn reply_would_close(&mut self, client_id: u64) -> bool {
        self.client_closing(client_id)
    }
    /// The state of the lock key.
    fn lock_state(&mut self, db: Db, key: &[u8]) -> LockState;
    /// The state of the lock key for a head waiter of `mode` and `owner`:
    /// `Free` when a grant to it may go ahead now (or would fail with the
    /// error it is to be told), else `Held` with when to look again (for a
    /// shared or counted key, the earliest live holder's deadline, so an
    /// ended lease frees its share at once). Read-only. By default, as
    /// [`lock_state`](Self::lock_state).
    fn lock_state_for(&mut self, db: Db, key: &[u8], mode: Mode, owner: &[u8]) -> LockState {
        let _ = (mode, owner);
        self.lock_state(db, key)
    }
    /// Acquires the lock for a waiter's `owner` exactly as ACQUIRE does
    /// (`lock::acquire` over the host's `Store`, whose
    /// [`Store::write_grant`](crate::lock::Store::write_grant) writes and
    /// replicates it): `Ok(None)` if it turned out held. The caller turns
    /// a token into a [`Grant`].
    ///
    /// # Errors
    ///
    /// What ACQUIRE would reply (a wrong type, an exhausted counter).
    fn acquire_for(&mut self, db: Db, key: &[u8], owner: &[u8], ttl_ms: i64) -> Acquired;
    /// [`acquire_for`](Self::acquire_for) in `mode`: a shared share or a
    /// permit through `shared::acquire` (the waiter is the queue's head:
    /// nobody is ahead of it). By default, exclusive only.
    fn acquire_mode(
        &mut self,
        db: Db,
        key: &[u8],
        owner: &[u8],
        ttl_ms: i64,
        mode: Mode,
    ) -> Acquired {
        let _ = mode;
        self.acquire_for(db, key, owner, ttl_ms)
    }
    /// Whether `grant` still stands: the key holds its owner and the fence
    /// counter its token.
    fn grant_stands(&mut self, grant: &Grant) -> bool;
    /// Deletes the lock key if `grant` still stands (replicated as `DEL`);
    /// whether it did.
    fn undo(&mut self, grant: &Grant) -> bool;
    /// Unblocks a waiter; the reply is decided later by [`answer`].
    fn unblock(&mut self, handle: Self::Handle, outcome: Outcome);
    /// Frees the blocked-client handle of a client that disconnected while
    /// queued (no reply, no lock involved).
    fn free_handle(&mut self, handle: Self::Handle);
    /// Arms a timer.
    fn arm(&mut self, kind: TimerKind, period_ms: i64) -> TimerId;
    /// Stops a timer (harmless if it fired).
    fn stop(&mut self, id: TimerId);
    /// Counts an event.
    fn count(&mut self, event: Event);
    /// Nobody waits any more, and no grant waits to be undone.
    fn idle(&mut self) {}
}

/// Why a WAIT was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// `spacelock.max-waiters` already wait on the key.
    TooMany,
}

/// Whether one more client may queue on `key` (checked before the host
/// blocks it).
pub fn may_enqueue<H: Copy + Eq + Hash>(
    reg: &Registry<H>,
    db: Db,
    key: &[u8],
    max_waiters: i64,
) -> Result<(), Refused> {
    if reg.len(db, key) as u64 >= max_waiters.max(0) as u64 {
        return Err(Refused::TooMany);
    }
    Ok(())
}

/// A blocked client's WAIT, as [`enqueue`] takes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request<'a, H> {
    /// Its blocked-client handle.
    pub handle: H,
    /// The server's id of its connection.
    pub client_id: u64,
    /// The owner id it asks for.
    pub owner: &'a [u8],
    /// The ttl it asks for (counted from the grant).
    pub ttl_ms: i64,
    /// Its WAIT timeout (0: no limit).
    pub timeout_ms: i64,
    /// What it asks for.
    pub mode: Mode,
}

/// Queues a client the host just blocked (the lock was held when its
/// ACQUIRE looked), arms its deadline, and settles the key.
pub fn enqueue<H: Host>(
    host: &mut H,
    reg: &mut Registry<H::Handle>,
    db: Db,
    key: &[u8],
    req: Request<'_, H::Handle>,
) -> WaiterId {
    let now = host.now_ms();
    let deadline = timers::deadline(now, req.timeout_ms);
    let arrival = Arrival {
        handle: req.handle,
        client_id: req.client_id,
        owner: req.owner,
        ttl_ms: req.ttl_ms,
        mode: req.mode,
        deadline_ms: deadline,
    };
    let id = reg.push(db, key, arrival);
    if let Some(at) = deadline {
        let timer = host.arm(TimerKind::Deadline(id), timers::until(at, now));
        reg.set_deadline_timer(id, timer);
    }
    settle(host, reg, db, key, Origin::Command);
    id
}

/// Grants `key` to its head waiters while it is free, keeps its expiry
/// timer in line with the holder's expiry, and frees the queue once empty.
/// Runs inside RELEASE, REFRESH and every ACQUIRE (before it looks at the
/// key, so nobody barges past a grant that is due), and from timers.
///
/// A command never writes the grant itself: it marks it due, and the
/// pending timer writes it at the end of the event-loop iteration, after
/// every other command the server read in it and before the server sends
/// any reply. A command later in the same iteration can make this server a
/// replica (`REPLICAOF`), and the server then lets every blocked client go
/// with `-UNBLOCKED`; a grant already written and replicated would stand,
/// on the replicas and on whichever of them is promoted, in the name of a
/// client told otherwise. The timer finds the role changed and writes
/// nothing. It judges deadlines as of the moment the command found the lock
/// free, so that moment decides, as if the grant had been written then;
/// until the timer runs, ACQUIRE treats the lock as held ([`grant_due`]).
pub fn settle<H: Host>(
    host: &mut H,
    reg: &mut Registry<H::Handle>,
    db: Db,
    key: &[u8],
    origin: Origin,
) {
    if reg.has_undo(db, key) {
        undo(host, reg, Some((db, key)), origin);
    }
    if !reg.has(db, key) {
        return;
    }
    if host.is_replica() {
        for w in reg.drain(db, key) {
            leave(host, &w);
            host.unblock(w.handle, Outcome::Failed(REPLICA_UNBLOCKED.into()));
        }
        finish(host, reg, db, key);
        return;
    }
    let (mut pause_checked, mut slot_checked) = (false, false);
    let due_since = match origin {
        Origin::Timer => reg.take_due(db, key),
        Origin::Command => None,
    };
    loop {
        // The head's mode decides whether the key is free for it: readers
        // are granted one by one while they fit beside the holders (the
        // prefix of `shared::decide`), and a head that does not fit keeps
        // everyone behind it waiting.
        let head = reg.head(db, key).map(|w| (w.mode, w.owner.clone()));
        let state = match &head {
            Some((mode, owner)) => host.lock_state_for(db, key, *mode, owner),
            None => host.lock_state(db, key),
        };
        if let LockState::Held { expire_at_ms } = state {
            arm_expiry(host, reg, db, key, expire_at_ms);
            break;
        }
        if reg.len(db, key) == 0 {
            break;
        }
        if origin == Origin::Command {
            let now = host.now_ms();
            reg.mark_due(db, key, now);
            reg.mark_pending(db, key);
            arm_pending(host, reg);
            break;
        }
        if origin == Origin::Timer && !pause_checked {
            pause_checked = true;
            if host.writes_paused(db, key) {
                // Look again shortly; the grant goes ahead once the pause ends.
                let at = host.now_ms().saturating_add(PAUSE_RETRY_MS - 1);
                arm_expiry(host, reg, db, key, Some(at));
                break;
            }
        }
        if origin == Origin::Timer && !slot_checked && host.in_cluster() {
            slot_checked = true;
            if !host.serves_slot(key) {
                // A MIGRATE deleted the key here; a grant would make a
                // second holder on a node that no longer owns the slot.
                for w in reg.drain(db, key) {
                    leave(host, &w);
                    host.unblock(w.handle, Outcome::Failed(SLOT_MOVED_TRYAGAIN.into()));
                }
                break;
            }
        }
        let Some(w) = reg.pop_head(db, key) else {
            break;
        };
        let now = host.now_ms();
        let as_of = due_since.map_or(now, |at| at.min(now));
        if w.deadline_ms.is_some_and(|d| d <= as_of) {
            // Its deadline passed (its timer has not run yet) before the
            // lock came free: it is told nil, never granted late.
            leave(host, &w);
            host.unblock(w.handle, Outcome::TimedOut);
            continue;
        }
        if host.client_closing(w.client_id) {
            leave(host, &w);
            host.unblock(w.handle, Outcome::Gone);
            continue;
        }
        match host.acquire_mode(db, key, &w.owner, w.ttl_ms, w.mode) {
            Ok(Some(token)) => {
                leave(host, &w);
                let grant = Grant {
                    db,
                    key: key.to_vec(),
                    owner: w.owner.clone(),
                    token,
                };
                host.unblock(w.handle, Outcome::Granted(grant));
            }
            // Not reachable (the key was just free). Keep its place and
            // stop: looping would spin forever if the look and the write
            // ever disagreed. The expiry timer, or a retry shortly, looks
            // again.
            Ok(None) => {
                let (mode, owner) = (w.mode, w.owner.clone());
                reg.push_front(db, key, w);
                let at = match host.lock_state_for(db, key, mode, &owner) {
                    LockState::Held { expire_at_ms } => expire_at_ms,
                    LockState::Free => Some(host.now_ms().saturating_add(PAUSE_RETRY_MS - 1)),
                };
                arm_expiry(host, reg, db, key, at);
                break;
            }
            Err(e) => {
                leave(host, &w);
                host.unblock(w.handle, Outcome::Failed(e.to_string()));
            }
        }
    }
    finish(host, reg, db, key);
}

/// Whether `key`'s lock is due to its queue: a command found it free with
/// clients queued, and the pending timer grants the head waiter at the end
/// of this event-loop iteration. The key reads as free until then, but
/// ACQUIRE must not take it.
pub fn grant_due<H: Copy + Eq + Hash>(reg: &Registry<H>, db: Db, key: &[u8]) -> bool {
    reg.is_due(db, key)
}

/// A timer fired.
pub fn on_timer<H: Host>(host: &mut H, reg: &mut Registry<H::Handle>, kind: TimerKind) {
    match kind {
        TimerKind::Pending => {
            reg.set_pending_timer(None);
            undo(host, reg, None, Origin::Timer);
            for (db, key) in reg.take_pending() {
                settle(host, reg, db, &key, Origin::Timer);
            }
            if reg.is_idle() {
                host.idle();
            }
        }
        TimerKind::Queue(qid) => {
            if let Some((db, key)) = reg.key_of(qid) {
                reg.set_expiry_timer(db, &key, None);
                settle(host, reg, db, &key, Origin::Timer);
            }
        }
        TimerKind::Deadline(id) => on_deadline(host, reg, id),
    }
}

/// A waiter's deadline timer fired.
fn on_deadline<H: Host>(host: &mut H, reg: &mut Registry<H::Handle>, id: WaiterId) {
    let Some(deadline) = reg.waiter(id).map(|w| w.deadline_ms) else {
        return; // it left earlier
    };
    let now = host.now_ms();
    if let Some(at) = deadline.filter(|&at| at > now) {
        // Early: a wait longer than the longest timer re-arms.
        let timer = host.arm(TimerKind::Deadline(id), timers::until(at, now));
        reg.set_deadline_timer(id, timer);
        return;
    }
    if let Some(((db, key), w)) = reg.remove_id(id) {
        host.unblock(w.handle, Outcome::TimedOut);
        finish(host, reg, db, &key);
    }
}

/// A blocked client disconnected. A queued waiter leaves the queue; a
/// client already unblocked is left to [`undelivered`].
pub fn on_disconnect<H: Host>(host: &mut H, reg: &mut Registry<H::Handle>, handle: H::Handle) {
    if let Some(((db, key), w)) = reg.remove(handle) {
        leave(host, &w);
        host.free_handle(handle);
        finish(host, reg, db, &key);
    }
}

/// The reply a waiter gets for `outcome`, decided when the reply is sent:
/// `None` when it cannot be delivered (its connection `client_id` is
/// closing, or the reply would overflow its output buffer), which makes the
/// outcome undelivered.
pub fn answer<H: Host>(host: &mut H, outcome: &Outcome, client_id: u64) -> Option<Answer> {
    match outcome {
        Outcome::Granted(grant) => {
            if host.reply_would_close(client_id) {
                return None;
            }
            if host.grant_stands(grant) {
                host.count(Event::Handoff);
                Some(Answer::Token(grant.token))
            } else {
                // Deleted or expired between the grant and this reply (a
                // slow command ran in between): nothing is held in its
                // name, so it is told nil.
                host.count(Event::GrantLost);
                Some(Answer::Nil)
            }
        }
        Outcome::TimedOut => {
            host.count(Event::Timeout);
            Some(Answer::Nil)
        }
        Outcome::Gone => Some(Answer::Nil),
        Outcome::Failed(e) => Some(Answer::Error(e.clone())),
    }
}

/// The server freed an outcome whose reply was never sent (the client went
/// away first). A grant in it is undone from the pending timer, which runs
/// in the next event-loop iteration; until then, every spacelock command on
/// that key undoes it first (see [`settle`]).
pub fn undelivered<H: Host>(host: &mut H, reg: &mut Registry<H::Handle>, outcome: Outcome) {
    if let Outcome::Granted(grant) = outcome {
        reg.push_undo(grant);
        arm_pending(host, reg);
    }
}

/// A keyspace event by someone else on `key`: settle it soon.
pub fn on_key_event<H: Host>(host: &mut H, reg: &mut Registry<H::Handle>, db: Db, key: &[u8]) {
    if reg.mark_pending(db, key) {
        arm_pending(host, reg);
    }
}

/// A flush, `SWAPDB` or role change: settle every queue of `scope` soon.
pub fn on_flush<H: Host>(host: &mut H, reg: &mut Registry<H::Handle>, scope: DbScope) {
    if reg.mark_scope_pending(scope) {
        arm_pending(host, reg);
    }
}

/// Asks for the pending timer (unless it is armed).
pub fn arm_pending<H: Host>(host: &mut H, reg: &mut Registry<H::Handle>) {
    if reg.pending_timer().is_none() {
        let id = host.arm(TimerKind::Pending, 0);
        reg.set_pending_timer(Some(id));
    }
}

/// Undoes the grants that could not be delivered (those on one key, or
/// all). A replica drops them (its primary decides); during a write pause
/// they wait, and the pending timer looks again shortly.
fn undo<H: Host>(
    host: &mut H,
    reg: &mut Registry<H::Handle>,
    only: Option<(Db, &[u8])>,
    origin: Origin,
) {
    let grants = reg.take_undo(only);
    if grants.is_empty() || host.is_replica() {
        return;
    }
    let mut held = Vec::new();
    for grant in grants {
        if origin == Origin::Timer && host.writes_paused(grant.db, &grant.key) {
            held.push(grant);
            continue;
        }
        if host.undo(&grant) {
            host.count(Event::Undone);
        }
        reg.mark_pending(grant.db, &grant.key);
    }
    if !held.is_empty() {
        for grant in held {
            reg.push_undo(grant);
        }
        if reg.pending_timer().is_none() {
            let id = host.arm(TimerKind::Pending, PAUSE_RETRY_MS);
            reg.set_pending_timer(Some(id));
        }
    }
    // The keys undone were marked pending: the caller settles them next
    // (`settle` goes on with its key; the pending timer takes the marks).
}

/// Arms, moves or stops `key`'s expiry timer.
fn arm_expiry<H: Host>(
    host: &mut H,
    reg: &mut Registry<H::Handle>,
    db: Db,
    key: &[u8],
    expire_at: Option<i64>,
) {
    let Some(qid) = reg.queue_id(db, key) else {
        return;
    };
    match timers::plan(reg.expiry_timer(db, key), expire_at) {
        TimerPlan::Keep => {}
        TimerPlan::Stop(id) => {
            host.stop(id);
            reg.set_expiry_timer(db, key, None);
        }
        TimerPlan::Arm { stop, at_ms } => {
            if let Some(id) = stop {
                host.stop(id);
            }
            let now = host.now_ms();
            let id = host.arm(TimerKind::Queue(qid), timers::after(at_ms, now));
            reg.set_expiry_timer(db, key, Some(ExpiryTimer { id, at_ms }));
        }
    }
}

/// Stops the deadline timer of a waiter that leaves the queue.
fn leave<H: Host>(host: &mut H, w: &Waiter<H::Handle>) {
    if let Some(id) = w.deadline_timer {
        host.stop(id);
    }
}

/// Frees `key`'s queue and timer if nobody waits on it any more.
fn finish<H: Host>(host: &mut H, reg: &mut Registry<H::Handle>, db: Db, key: &[u8]) {
    if let Some(id) = reg.drop_if_empty(db, key) {
        host.stop(id);
    }
    if reg.is_idle() {
        host.idle();
    }
}
