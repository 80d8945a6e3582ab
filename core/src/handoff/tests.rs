//! Every WAIT decision against a fake host: an in-memory keyspace
//! ([`MemoryStore`]), a settable clock, switches for replica, cluster, slot
//! and write pause, and a log of what the host was asked to do. Timers fire
//! only when a test says so, so two events can be made to meet in any order.

use std::collections::{BTreeMap, HashSet};

use super::registry::WaiterId;
use super::timers::{MAX_TIMER_MS, PAUSE_RETRY_MS};
use super::*;
use crate::fence::fence_key;
use crate::lock::{self, LockError, MemoryStore, Value};
use crate::shared::{self, KeyMode, Mode, SharedIndex, Want};
use crate::tokens::{Terms, TokenMode};

const T0: i64 = 1_700_000_000_000;

#[derive(Default)]
struct Fake {
    keys: MemoryStore,
    process: Option<lock::Process>,
    replica: bool,
    cluster: bool,
    slot_moved: bool,
    paused: bool,
    /// The read-only look says every key is free, whatever the write finds.
    looks_free: bool,
    closing: HashSet<u64>,
    /// Connections whose next reply would overflow their output buffer.
    overflowing: HashSet<u64>,
    unblocked: Vec<(u32, Outcome)>,
    freed: Vec<u32>,
    timers: BTreeMap<u64, (TimerKind, i64)>,
    next_timer: u64,
    events: Vec<Event>,
    idle: usize,
    /// The holders of shared and counted keys, as the module keeps them.
    index: SharedIndex,
}

const POLICY: lock::Policy = lock::Policy {
    mode: TokenMode::Counter,
    retention_ms: 0,
};

impl Fake {
    fn process(&mut self) -> &mut lock::Process {
        self.process.get_or_insert_with(|| lock::Process {
            terms: Terms::open_at(T0),
            ledger: Default::default(),
        })
    }

    fn is_hash(&self, key: &[u8]) -> bool {
        matches!(self.keys.get(key), Some(Value::Hash(_)))
    }
}

/// Keys of db `d` live under a `d:` prefix in the one MemoryStore.
fn k(db: Db, key: &[u8]) -> Vec<u8> {
    [format!("{db}:").as_bytes(), key].concat()
}

impl Host for Fake {
    type Handle = u32;
    fn now_ms(&mut self) -> i64 {
        self.keys.now
    }
    fn is_replica(&mut self) -> bool {
        self.replica
    }
    fn in_cluster(&mut self) -> bool {
        self.cluster
    }
    fn serves_slot(&mut self, _key: &[u8]) -> bool {
        !self.slot_moved
    }
    fn writes_paused(&mut self, _db: Db, _key: &[u8]) -> bool {
        self.paused
    }
    fn client_closing(&mut self, client_id: u64) -> bool {
        self.closing.contains(&client_id)
    }
    fn reply_would_close(&mut self, client_id: u64) -> bool {
        self.closing.contains(&client_id) || self.overflowing.contains(&client_id)
    }
    fn lock_state(&mut self, db: Db, key: &[u8]) -> LockState {
        if self.looks_free {
            return LockState::Free;
        }
        let key = k(db, key);
        match self.keys.get(&key) {
            None => LockState::Free,
            Some(_) => LockState::Held {
                expire_at_ms: self.keys.expire_at(&key),
            },
        }
    }
    fn lock_state_for(&mut self, db: Db, key: &[u8], mode: Mode, owner: &[u8]) -> LockState {
        let kk = k(db, key);
        if self.looks_free || (mode == Mode::Exclusive && !self.is_hash(&kk)) {
            return self.lock_state(db, key);
        }
        let now = self.keys.now;
        self.process();
        let (process, index) = (self.process.as_mut().unwrap(), &mut self.index);
        let mut view = self.keys.view(&kk, owner);
        let want = Want { mode, owner };
        match shared::grantable(&mut view, [want], process, index) {
            Ok(0) => {
                let earliest = shared::expire(&mut view, process, index).ok().flatten();
                let at = earliest.or_else(|| self.keys.expire_at(&kk));
                LockState::Held {
                    expire_at_ms: at.filter(|&at| at >= now),
                }
            }
            _ => LockState::Free,
        }
    }
    fn acquire_mode(
        &mut self,
        db: Db,
        key: &[u8],
        owner: &[u8],
        ttl_ms: i64,
        mode: Mode,
    ) -> Acquired {
        let Some(key_mode) = KeyMode::of(mode) else {
            return self.acquire_for(db, key, owner, ttl_ms);
        };
        let kk = k(db, key);
        self.process();
        let (process, index) = (self.process.as_mut().unwrap(), &mut self.index);
        let mut view = self.keys.view(&kk, owner);
        shared::acquire(
            &mut view, owner, ttl_ms, key_mode, None, process, index, POLICY,
        )
    }
    fn acquire_for(&mut self, db: Db, key: &[u8], owner: &[u8], ttl_ms: i64) -> Acquired {
        let key = k(db, key);
        let process = self.process.get_or_insert_with(|| lock::Process {
            terms: Terms::open_at(T0),
            ledger: Default::default(),
        });
        let policy = lock::Policy {
            mode: TokenMode::Counter,
            retention_ms: 0,
        };
        lock::acquire(&mut self.keys.view(&key, owner), ttl_ms, process, policy)
    }
    fn grant_stands(&mut self, g: &Grant) -> bool {
        // As the module does: by its own ledger, not the fence key.
        let key = k(g.db, &g.key);
        if self.is_hash(&key) {
            let mut view = self.keys.view(&key, &g.owner);
            return shared::check(&mut view, &g.owner, g.token) == Ok(true);
        }
        let recorded = self
            .process
            .as_ref()
            .and_then(|p| p.ledger.token_of(&p.name(0, &key), &g.owner));
        self.keys.get(&key) == Some(&Value::Str(g.owner.clone())) && recorded == Some(g.token)
    }
    fn undo(&mut self, g: &Grant) -> bool {
        let key = k(g.db, &g.key);
        if self.is_hash(&key) {
            self.process();
            let (process, index) = (self.process.as_mut().unwrap(), &mut self.index);
            let mut view = self.keys.view(&key, &g.owner);
            return shared::undo(&mut view, &g.owner, g.token, process, index, POLICY) == Ok(true);
        }
        let stands = self.grant_stands(g);
        if stands {
            let key = k(g.db, &g.key);
            self.keys.keys.remove(&key);
            if let Some(p) = self.process.as_mut() {
                let name = p.name(0, &key);
                p.ledger.forget(&name);
            }
        }
        stands
    }
    fn unblock(&mut self, handle: u32, outcome: Outcome) {
        self.unblocked.push((handle, outcome));
    }
    fn free_handle(&mut self, handle: u32) {
        self.freed.push(handle);
    }
    fn arm(&mut self, kind: TimerKind, period_ms: i64) -> TimerId {
        self.next_timer += 1;
        self.timers
            .insert(self.next_timer, (kind, self.keys.now + period_ms));
        TimerId(self.next_timer)
    }
    fn stop(&mut self, id: TimerId) {
        self.timers.remove(&id.0);
    }
    fn count(&mut self, event: Event) {
        self.events.push(event);
    }
    fn idle(&mut self) {
        self.idle += 1;
    }
}

struct World {
    host: Fake,
    reg: Registry<u32>,
}

impl World {
    fn new() -> Self {
        World {
            host: Fake {
                keys: MemoryStore::at(T0),
                ..Fake::default()
            },
            reg: Registry::new(),
        }
    }

    /// A world where "a" holds `k` for `ttl` ms and clients `(h, timeout)`
    /// queue behind it, in that order.
    fn queued(ttl: i64, waiters: &[(u32, i64)]) -> Self {
        let mut w = World::new();
        w.hold(b"k", b"a", ttl);
        for &(h, timeout) in waiters {
            w.wait(b"k", h, timeout);
        }
        w
    }

    /// `owner` takes `key` in db 0 as a plain ACQUIRE would.
    fn hold(&mut self, key: &[u8], owner: &[u8], ttl: i64) -> i64 {
        self.host.acquire_for(0, key, owner, ttl).unwrap().unwrap()
    }

    /// Client `h` (connection id h) WAITs on `key` for `timeout` ms.
    fn wait(&mut self, key: &[u8], h: u32, timeout: i64) -> WaiterId {
        assert!(may_enqueue(&self.reg, 0, key, 100).is_ok());
        let owner = format!("w{h}");
        let req = Request {
            handle: h,
            client_id: u64::from(h),
            owner: owner.as_bytes(),
            ttl_ms: 1_000,
            timeout_ms: timeout,
            mode: crate::shared::Mode::Exclusive,
        };
        enqueue(&mut self.host, &mut self.reg, 0, key, req)
    }

    /// `owner` takes a share of `key` in `mode` as a plain ACQUIRE would.
    fn hold_mode(&mut self, key: &[u8], owner: &[u8], ttl: i64, mode: Mode) -> i64 {
        self.host
            .acquire_mode(0, key, owner, ttl, mode)
            .unwrap()
            .unwrap()
    }

    /// Client `h` (owner `w<h>`) WAITs on `key` in `mode` without a limit.
    fn wait_mode(&mut self, key: &[u8], h: u32, mode: Mode) -> WaiterId {
        let owner = format!("w{h}");
        let req = Request {
            handle: h,
            client_id: u64::from(h),
            owner: owner.as_bytes(),
            ttl_ms: 1_000,
            timeout_ms: 0,
            mode,
        };
        enqueue(&mut self.host, &mut self.reg, 0, key, req)
    }

    /// `owner` RELEASEs its share of `key`, and the iteration ends.
    fn release_share(&mut self, key: &[u8], owner: &[u8]) {
        let kk = k(0, key);
        self.host.process();
        let (process, index) = (self.host.process.as_mut().unwrap(), &mut self.host.index);
        let mut view = self.host.keys.view(&kk, owner);
        assert_eq!(
            shared::release(&mut view, owner, process, index, POLICY),
            Ok(true)
        );
        self.command(key);
        self.fire_due();
    }

    /// The owners holding a share of `key`.
    fn sharers(&self, key: &[u8]) -> Vec<Vec<u8>> {
        match self.host.keys.get(&k(0, key)) {
            Some(Value::Hash(h)) => h.keys().filter(|f| !f.is_empty()).cloned().collect(),
            _ => Vec::new(),
        }
    }

    /// A spacelock command on `key` (RELEASE, REFRESH, ACQUIRE's pre-settle).
    fn command(&mut self, key: &[u8]) {
        settle(&mut self.host, &mut self.reg, 0, key, Origin::Command);
    }

    /// The holder's RELEASE: delete, then the same command settles, and
    /// the timers due at the end of the iteration run (the pending timer
    /// writes the grant the command made due).
    fn release(&mut self, key: &[u8]) {
        self.release_only(key);
        self.fire_due();
    }

    /// The holder's RELEASE, and nothing else yet in its iteration.
    fn release_only(&mut self, key: &[u8]) {
        self.host.keys.keys.remove(&k(0, key));
        self.command(key);
    }

    fn advance(&mut self, ms: i64) {
        self.host.keys.now += ms;
    }

    /// Fires every timer due now, in due order (ties: in arming order).
    fn fire_due(&mut self) {
        loop {
            let now = self.host.keys.now;
            let due = self
                .host
                .timers
                .iter()
                .filter(|(_, (_, at))| *at <= now)
                .min_by_key(|(id, (_, at))| (*at, **id))
                .map(|(id, (kind, _))| (*id, *kind));
            let Some((id, kind)) = due else { return };
            self.host.timers.remove(&id);
            on_timer(&mut self.host, &mut self.reg, kind);
        }
    }

    fn outcomes(&self) -> Vec<(u32, Outcome)> {
        self.host.unblocked.clone()
    }

    fn granted(&self, h: u32) -> Option<i64> {
        self.host.unblocked.iter().find_map(|(x, o)| match o {
            Outcome::Granted(g) if *x == h => Some(g.token),
            _ => None,
        })
    }

    fn holder(&self, key: &[u8]) -> Option<Vec<u8>> {
        match self.host.keys.get(&k(0, key)) {
            Some(Value::Str(v)) => Some(v.clone()),
            _ => None,
        }
    }

    /// What `h` was unblocked with.
    fn outcome_of(&self, h: u32) -> Outcome {
        let found = self.host.unblocked.iter().find(|(x, _)| *x == h);
        found.map(|(_, o)| o.clone()).expect("unblocked")
    }

    /// The reply callback for `h`'s outcome.
    fn reply(&mut self, h: u32) -> Option<Answer> {
        let outcome = self.outcome_of(h);
        answer(&mut self.host, &outcome, u64::from(h))
    }

    /// The server frees `h`'s outcome without a reply (it disconnected).
    fn freed_without_reply(&mut self, h: u32) {
        let outcome = self.outcome_of(h);
        undelivered(&mut self.host, &mut self.reg, outcome);
    }
}

/// If the look at the key (read) and the grant (write) ever disagreed, the
/// handoff loop used to put the waiter back and look again, forever: the
/// main thread spun. Now it keeps the waiter's place, arms a retry and stops.
#[test]
fn a_grant_refused_on_a_key_that_looked_free_keeps_the_waiter_and_retries() {
    let mut w = World::queued(30_000, &[(1, 0)]);
    w.host.looks_free = true;
    w.command(b"k");
    w.fire_due(); // the grant it made due: returns, no spin
    assert!(w.outcomes().is_empty(), "{:?}", w.outcomes());
    assert_eq!(w.reg.len(0, b"k"), 1, "the waiter keeps its place");
    assert!(
        w.host
            .timers
            .values()
            .any(|&(kind, at)| matches!(kind, TimerKind::Queue(_)) && at <= T0 + PAUSE_RETRY_MS),
        "a retry is armed: {:?}",
        w.host.timers
    );
    // Once the looks agree again and the holder is gone, the retry grants.
    w.host.looks_free = false;
    w.release(b"k");
    assert!(w.granted(1).is_some());
}

#[test]
fn release_hands_the_lock_to_the_head_at_the_end_of_the_iteration() {
    let mut w = World::queued(1_000, &[(1, 0), (2, 0)]);
    assert!(w.outcomes().is_empty(), "held: both queue");
    w.release_only(b"k");
    // The RELEASE only made the grant due; nobody may take the lock now.
    assert!(w.outcomes().is_empty());
    assert_eq!(w.holder(b"k"), None);
    assert!(grant_due(&w.reg, 0, b"k"));
    // The pending timer, at the end of the iteration, writes it.
    w.fire_due();
    assert!(!grant_due(&w.reg, 0, b"k"));
    assert_eq!(w.holder(b"k"), Some(b"w1".to_vec()));
    assert_eq!(
        w.granted(1),
        Some(2),
        "the next token, written with the grant"
    );
    assert_eq!(w.reg.len(0, b"k"), 1);
    // The expiry timer follows the new holder.
    let timer = w.reg.expiry_timer(0, b"k").unwrap();
    assert_eq!(timer.at_ms, T0 + 1_000);
    // The reply callback answers the token, and counts a handoff.
    assert_eq!(w.reply(1), Some(Answer::Token(2)));
    assert_eq!(w.host.events, [Event::Handoff]);
}

#[test]
fn expiry_hands_the_lock_on_in_fifo_order() {
    let mut w = World::new();
    w.hold(b"k", b"a", 100);
    for h in 1..=3 {
        w.wait(b"k", h, 0);
    }
    w.advance(100);
    w.fire_due();
    assert!(w.outcomes().is_empty(), "now == expiry: not expired yet");
    w.advance(1);
    w.fire_due();
    assert_eq!(w.holder(b"k"), Some(b"w1".to_vec()));
    w.advance(1_001);
    w.fire_due();
    w.advance(1_001);
    w.fire_due();
    let order: Vec<u32> = w.outcomes().iter().map(|(h, _)| *h).collect();
    assert_eq!(order, [1, 2, 3]);
    assert!(!w.reg.has(0, b"k"), "queue freed once empty");
    assert!(w.host.timers.is_empty(), "no timer left behind");
    assert!(w.host.idle >= 1);
}

#[test]
fn a_deadline_that_passed_before_the_release_is_never_granted() {
    // The deadline timer has not run yet (a slow command held the loop)
    // when the RELEASE comes: the waiter gets nil, the next one the lock.
    let mut w = World::queued(10_000, &[(1, 50), (2, 0)]);
    w.advance(80);
    w.release(b"k");
    assert_eq!(w.outcomes()[0], (1, Outcome::TimedOut));
    assert!(w.granted(2).is_some());
    assert_eq!(w.holder(b"k"), Some(b"w2".to_vec()));
    // Its deadline timer was stopped: firing everything changes nothing.
    w.fire_due();
    assert_eq!(w.outcomes().len(), 2);
    assert_eq!(w.reply(1), Some(Answer::Nil));
}

#[test]
fn a_deadline_timer_times_out_and_cleans_up() {
    let mut w = World::queued(10_000, &[(1, 50)]);
    w.advance(49);
    w.fire_due();
    assert!(w.outcomes().is_empty());
    w.advance(1);
    w.fire_due();
    assert_eq!(w.outcomes(), [(1, Outcome::TimedOut)]);
    assert!(!w.reg.has(0, b"k"));
    assert!(
        w.host.timers.is_empty(),
        "the expiry timer went with the queue"
    );
    assert_eq!(w.reply(1), Some(Answer::Nil));
    assert_eq!(w.host.events, [Event::Timeout]);
    assert_eq!(w.holder(b"k"), Some(b"a".to_vec()), "the holder keeps it");
}

#[test]
fn a_wait_longer_than_the_longest_timer_re_arms() {
    let mut w = World::queued(100 * MAX_TIMER_MS, &[(1, 2 * MAX_TIMER_MS + 5)]);
    w.advance(MAX_TIMER_MS);
    w.fire_due();
    w.advance(MAX_TIMER_MS);
    w.fire_due();
    assert!(w.outcomes().is_empty(), "not due yet");
    w.advance(5);
    w.fire_due();
    assert_eq!(w.outcomes(), [(1, Outcome::TimedOut)]);
}

#[test]
fn expiry_and_deadline_due_in_the_same_millisecond() {
    // Whichever timer runs first, the waiter is told exactly one thing, and
    // a deadline that has come is never granted.
    for deadline_first in [false, true] {
        let mut w = World::new();
        w.hold(b"k", b"a", 100);
        // Expiry timer due at T0+101; the deadline at T0+101 too.
        w.wait(b"k", 1, 101);
        w.advance(101);
        if deadline_first {
            let (id, kind) = w
                .host
                .timers
                .iter()
                .find(|(_, (kind, _))| matches!(kind, TimerKind::Deadline(_)))
                .map(|(id, (kind, _))| (*id, *kind))
                .unwrap();
            w.host.timers.remove(&id);
            on_timer(&mut w.host, &mut w.reg, kind);
        }
        w.fire_due();
        assert_eq!(
            w.outcomes(),
            [(1, Outcome::TimedOut)],
            "deadline_first={deadline_first}"
        );
        assert_eq!(w.holder(b"k"), None, "nothing held in its name");
    }
    // One millisecond more of patience, and it is granted.
    let mut w = World::queued(100, &[(1, 102)]);
    w.advance(101);
    w.fire_due();
    assert!(w.granted(1).is_some());
}

#[test]
fn a_queued_waiter_that_disconnects_is_never_granted() {
    let mut w = World::queued(1_000, &[(1, 500), (2, 0)]);
    on_disconnect(&mut w.host, &mut w.reg, 1);
    assert_eq!(w.host.freed, [1]);
    w.release(b"k");
    assert_eq!(w.outcomes().len(), 1);
    assert!(w.granted(2).is_some());
    // Its deadline timer went with it.
    assert!(w
        .host
        .timers
        .values()
        .all(|(kind, _)| !matches!(kind, TimerKind::Deadline(_))));
    // A second disconnect callback (or one for a stranger) changes nothing.
    on_disconnect(&mut w.host, &mut w.reg, 1);
    assert_eq!(w.host.freed, [1]);
}

#[test]
fn a_grant_whose_client_goes_away_is_undone_and_handed_on() {
    // The RELEASE grants waiter 1, then its socket closes in the same
    // iteration: the server frees the outcome without a reply.
    let mut w = World::queued(1_000, &[(1, 0), (2, 0)]);
    w.release(b"k");
    let t1 = w.granted(1).unwrap();
    on_disconnect(&mut w.host, &mut w.reg, 1); // already unblocked: nothing
    w.freed_without_reply(1);
    assert_eq!(
        w.holder(b"k"),
        Some(b"w1".to_vec()),
        "until the pending timer"
    );
    w.fire_due(); // the pending timer, in the next iteration
    assert_eq!(w.holder(b"k"), Some(b"w2".to_vec()));
    assert!(w.granted(2).unwrap() > t1);
    assert!(w.host.events.contains(&Event::Undone));
}

#[test]
fn a_command_undoes_an_undelivered_grant_before_it_looks() {
    // Before the pending timer runs, an ACQUIRE (its pre-settle) on the key
    // must not find the lock held by the client that is gone.
    let mut w = World::queued(1_000, &[(1, 0)]);
    w.release(b"k");
    w.freed_without_reply(1);
    w.command(b"k");
    assert_eq!(w.holder(b"k"), None, "free for the ACQUIRE");
    assert!(!w.reg.has_pending(), "nothing left for the timer");
}

#[test]
fn a_closing_client_is_skipped_at_the_grant() {
    let mut w = World::queued(1_000, &[(1, 0), (2, 0)]);
    w.host.closing.insert(1);
    w.release(b"k");
    assert_eq!(w.outcomes()[0], (1, Outcome::Gone));
    assert_eq!(w.holder(b"k"), Some(b"w2".to_vec()));
}

#[test]
fn a_client_that_starts_closing_after_its_grant_gets_it_undone() {
    let mut w = World::queued(1_000, &[(1, 0)]);
    w.release(b"k");
    w.host.closing.insert(1);
    assert_eq!(w.reply(1), None, "undeliverable");
    w.freed_without_reply(1);
    w.fire_due();
    assert_eq!(w.holder(b"k"), None);
    assert_eq!(w.host.events, [Event::Undone]);
}

#[test]
fn a_grant_whose_reply_would_overflow_the_output_buffer_is_undone() {
    // Unread replies ahead of the token: the server would close the
    // connection as the reply is added, so it is not sent, and the grant
    // goes to the next waiter.
    let mut w = World::queued(1_000, &[(1, 0), (2, 0)]);
    w.host.overflowing.insert(1);
    w.release(b"k");
    assert!(w.granted(1).is_some(), "not closing at the grant");
    assert_eq!(w.reply(1), None, "undeliverable");
    w.freed_without_reply(1);
    w.fire_due();
    assert_eq!(w.holder(b"k"), Some(b"w2".to_vec()));
    assert_eq!(w.host.events, [Event::Undone]);
}

#[test]
fn a_grant_that_no_longer_stands_is_answered_nil() {
    // A slow script after the RELEASE runs past the new lease (or DELs it):
    // the reply callback finds the grant gone and says nil.
    let mut w = World::queued(1_000, &[(1, 0)]);
    w.release(b"k");
    w.advance(5_000);
    assert_eq!(w.reply(1), Some(Answer::Nil));
    assert_eq!(w.host.events, [Event::GrantLost]);
    // Re-granted meanwhile to the same owner name: the token decides.
    let mut w = World::queued(1_000, &[(1, 0)]);
    w.release(b"k");
    w.host.keys.keys.remove(&k(0, b"k"));
    w.hold(b"k", b"w1", 1_000);
    assert_eq!(w.reply(1), Some(Answer::Nil));
}

#[test]
fn a_timer_grant_waits_out_a_write_pause() {
    let mut w = World::queued(100, &[(1, 0)]);
    w.host.paused = true;
    w.advance(101);
    w.fire_due();
    assert!(w.outcomes().is_empty(), "no write during the pause");
    w.advance(PAUSE_RETRY_MS);
    w.fire_due();
    assert!(w.outcomes().is_empty(), "still paused");
    w.host.paused = false;
    w.advance(PAUSE_RETRY_MS);
    w.fire_due();
    assert!(
        w.granted(1).is_some(),
        "granted within one retry of the end"
    );
}

#[test]
fn an_undo_waits_out_a_write_pause_too() {
    let mut w = World::queued(1_000, &[(1, 0), (2, 0)]);
    w.release(b"k");
    w.freed_without_reply(1);
    w.host.paused = true;
    w.fire_due();
    assert_eq!(
        w.holder(b"k"),
        Some(b"w1".to_vec()),
        "no DEL during the pause"
    );
    w.host.paused = false;
    w.advance(PAUSE_RETRY_MS);
    w.fire_due();
    assert_eq!(w.holder(b"k"), Some(b"w2".to_vec()));
}

#[test]
fn a_grant_a_command_made_due_waits_out_a_pause_begun_after_it() {
    // `MULTI, RELEASE, CLIENT PAUSE … WRITE, EXEC`: the timer that writes
    // the grant finds writes paused, and grants once they are not.
    let mut w = World::queued(1_000, &[(1, 0)]);
    w.release_only(b"k");
    w.host.paused = true;
    w.fire_due();
    assert!(w.outcomes().is_empty(), "no write during the pause");
    w.host.paused = false;
    w.advance(PAUSE_RETRY_MS);
    w.fire_due();
    assert!(w.granted(1).is_some());
}

#[test]
fn a_role_change_in_the_iteration_of_a_release_grants_nothing() {
    // `RELEASE` then `REPLICAOF` in one iteration: the server lets the
    // blocked waiter go with -UNBLOCKED (its disconnect callback), then
    // fires the role change; the pending timer finds a replica. Nothing is
    // written in the waiter's name, so nothing reaches the replicas.
    let mut w = World::queued(1_000, &[(1, 0), (2, 0)]);
    w.release_only(b"k");
    on_disconnect(&mut w.host, &mut w.reg, 1);
    on_disconnect(&mut w.host, &mut w.reg, 2);
    w.host.replica = true;
    on_flush(&mut w.host, &mut w.reg, DbScope::All);
    w.fire_due();
    assert!(w.outcomes().is_empty(), "{:?}", w.outcomes());
    assert_eq!(w.holder(b"k"), None);
    assert_eq!(w.host.freed, [1, 2]);
    assert!(w.reg.is_idle());
}

#[test]
fn a_release_before_the_deadline_grants_though_the_timer_runs_after_it() {
    // A slow command after the RELEASE, in the same iteration, runs past the
    // waiter's deadline: the lock came free in time, so it is granted.
    let mut w = World::queued(10_000, &[(1, 50)]);
    w.advance(40);
    w.release_only(b"k");
    w.advance(100);
    w.fire_due();
    assert!(w.granted(1).is_some(), "{:?}", w.outcomes());
    assert_eq!(w.reply(1), Some(Answer::Token(w.granted(1).unwrap())));
}

#[test]
fn a_grant_due_to_the_queue_is_not_taken_by_an_acquire() {
    // Until the pending timer runs, ACQUIRE finds the lock due to the queue
    // (its own pre-settle included) and does not take it.
    let mut w = World::queued(1_000, &[(1, 0)]);
    w.release_only(b"k");
    w.command(b"k"); // another client's ACQUIRE
    assert!(grant_due(&w.reg, 0, b"k"));
    w.fire_due();
    assert_eq!(w.holder(b"k"), Some(b"w1".to_vec()));
    assert!(!grant_due(&w.reg, 0, b"k"));
}

#[test]
fn a_replica_lets_its_waiters_go_and_drops_undos() {
    let mut w = World::queued(1_000, &[(1, 0), (2, 50)]);
    w.host.replica = true;
    on_flush(&mut w.host, &mut w.reg, DbScope::All); // the role change event
    w.fire_due();
    assert_eq!(
        w.outcomes(),
        [
            (1, Outcome::Failed(REPLICA_UNBLOCKED.into())),
            (2, Outcome::Failed(REPLICA_UNBLOCKED.into()))
        ]
    );
    assert!(w.host.timers.is_empty(), "deadline timers stopped");
    // An undelivered grant on a replica is its primary's business.
    w.reg.push_undo(Grant {
        db: 0,
        key: b"k".to_vec(),
        owner: b"a".to_vec(),
        token: 1,
    });
    arm_pending(&mut w.host, &mut w.reg);
    w.fire_due();
    assert_eq!(w.holder(b"k"), Some(b"a".to_vec()));
    assert!(w.reg.is_idle());
}

#[test]
fn a_node_that_lost_the_slot_never_grants_from_a_timer() {
    let mut w = World::new();
    w.host.cluster = true;
    w.hold(b"k", b"a", 100);
    w.wait(b"k", 1, 0);
    w.wait(b"k", 2, 0);
    w.host.slot_moved = true;
    // MIGRATE deleted the key here: the keyspace event marks it.
    w.host.keys.keys.remove(&k(0, b"k"));
    on_key_event(&mut w.host, &mut w.reg, 0, b"k");
    w.fire_due();
    assert_eq!(
        w.outcomes(),
        [
            (1, Outcome::Failed(SLOT_MOVED_TRYAGAIN.into())),
            (2, Outcome::Failed(SLOT_MOVED_TRYAGAIN.into()))
        ]
    );
    assert_eq!(w.holder(b"k"), None, "no second holder on the old node");
}

#[test]
fn the_expiry_timer_follows_the_holder() {
    let mut w = World::queued(1_000, &[(1, 0)]);
    let first = w.reg.expiry_timer(0, b"k").unwrap();
    // REFRESH moves the expiry; the command settles and re-arms.
    let key = k(0, b"k");
    w.host.keys.keys.get_mut(&key).unwrap().1 = Some(T0 + 5_000);
    w.command(b"k");
    let moved = w.reg.expiry_timer(0, b"k").unwrap();
    assert_eq!(moved.at_ms, T0 + 5_000);
    assert!(
        !w.host.timers.contains_key(&first.id.0),
        "old timer stopped"
    );
    // A plain SET without expiry by someone else: no timer; waiters wait for
    // a removal or their deadline.
    w.host.keys.keys.get_mut(&key).unwrap().1 = None;
    w.command(b"k");
    assert_eq!(w.reg.expiry_timer(0, b"k"), None);
    assert!(w.outcomes().is_empty());
}

#[test]
fn a_grant_error_goes_to_that_waiter_and_the_next_one_tries() {
    let mut w = World::queued(1_000, &[(1, 0)]);
    // Someone put a list where the fence counter lives.
    let fence = fence_key(&k(0, b"k"));
    w.host.keys.keys.insert(fence, (Value::Other, None));
    w.release(b"k");
    assert_eq!(
        w.outcomes(),
        [(1, Outcome::Failed(LockError::FenceWrongType.to_string()))]
    );
    assert_eq!(
        w.reply(1),
        Some(Answer::Error(LockError::FenceWrongType.to_string()))
    );
    assert_eq!(w.holder(b"k"), None);
}

#[test]
fn keyspace_events_and_flushes_share_one_pending_timer() {
    let mut w = World::new();
    w.hold(b"k", b"a", 1_000);
    w.hold(b"j", b"a", 1_000);
    w.wait(b"k", 1, 0);
    w.wait(b"j", 2, 0);
    let pending = |w: &World| {
        w.host
            .timers
            .values()
            .filter(|(kind, _)| *kind == TimerKind::Pending)
            .count()
    };
    on_key_event(&mut w.host, &mut w.reg, 0, b"nobody-waits");
    assert_eq!(pending(&w), 0);
    on_key_event(&mut w.host, &mut w.reg, 0, b"k");
    on_flush(&mut w.host, &mut w.reg, DbScope::One(0));
    on_flush(&mut w.host, &mut w.reg, DbScope::One(3));
    assert_eq!(pending(&w), 1);
    // FLUSHDB removed both keys: both waiters are granted by the timer.
    w.host.keys.keys.clear();
    w.fire_due();
    assert!(w.granted(1).is_some() && w.granted(2).is_some());
}

#[test]
fn max_waiters_is_checked_before_blocking() {
    let w = World::queued(1_000, &[(1, 0)]);
    assert_eq!(may_enqueue(&w.reg, 0, b"k", 1), Err(Refused::TooMany));
    assert_eq!(may_enqueue(&w.reg, 0, b"other", 1), Ok(()));
    assert_eq!(may_enqueue(&w.reg, 0, b"other", 0), Err(Refused::TooMany));
}

#[test]
fn every_waiter_leaves_exactly_once_under_random_interleavings() {
    // A small deterministic soak: random commands, timers, disconnects,
    // closings, pauses and slow "iterations" between a grant and its
    // reply. Invariants: each waiter is unblocked at most once and released
    // only if never unblocked; a delivered token means the key holds it; a
    // nil means nothing is held in its name; tokens only grow.
    let mut seed: u64 = 0x5EED_1234_ABCD_0001;
    let mut rnd = |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let mut w = World::new();
    let mut next_h: u32 = 1;
    let mut live: Vec<u32> = Vec::new();
    let mut answered: HashSet<u32> = HashSet::new();
    let mut last_token = 0;
    for step in 0..20_000 {
        match rnd(9) {
            0 | 1 => {
                let h = next_h;
                next_h += 1;
                w.command(b"k"); // ACQUIRE's pre-settle
                if w.holder(b"k").is_none() && !grant_due(&w.reg, 0, b"k") {
                    let t = w.hold(b"k", format!("w{h}").as_bytes(), 1 + rnd(50) as i64);
                    assert!(t > last_token);
                    last_token = t;
                } else {
                    w.wait(b"k", h, rnd(80) as i64);
                    live.push(h);
                }
            }
            // The holder releases (whoever it is).
            2 if w.holder(b"k").is_some() => w.release(b"k"),
            3 => w.advance(1 + rnd(20) as i64),
            4 => w.fire_due(),
            5 if !live.is_empty() => {
                let h = live[rnd(live.len() as u64) as usize];
                on_disconnect(&mut w.host, &mut w.reg, h);
                w.host.closing.insert(u64::from(h));
            }
            6 => w.host.paused = rnd(4) == 0,
            _ => {}
        }
        // Sometimes a socket closes after its grant, in the same iteration.
        let fresh = w.host.unblocked.len() - answered.len();
        if fresh > 0 && rnd(3) == 0 {
            let h = w.host.unblocked[answered.len() + rnd(fresh as u64) as usize].0;
            w.host.closing.insert(u64::from(h));
        }
        // Deliver every outcome not answered yet (the reply callbacks at
        // the end of the iteration), or free it for gone clients.
        let fresh: Vec<(u32, Outcome)> = w.host.unblocked[answered.len()..].to_vec();
        for (h, outcome) in fresh {
            assert!(answered.insert(h), "step {step}: {h} unblocked twice");
            live.retain(|x| *x != h);
            let reply = answer(&mut w.host, &outcome, u64::from(h));
            if w.host.closing.contains(&u64::from(h)) {
                match reply {
                    Some(Answer::Token(_)) => panic!("step {step}: a token to a closing client"),
                    None => undelivered(&mut w.host, &mut w.reg, outcome),
                    Some(_) => {}
                }
                continue;
            }
            match reply {
                Some(Answer::Token(t)) => {
                    assert_eq!(
                        w.holder(b"k"),
                        Some(format!("w{h}").into_bytes()),
                        "step {step}"
                    );
                    assert!(t > last_token, "step {step}: token went backwards");
                    last_token = t;
                }
                Some(Answer::Nil) => {
                    assert_ne!(
                        w.holder(b"k"),
                        Some(format!("w{h}").into_bytes()),
                        "step {step}"
                    );
                }
                other => panic!("step {step}: {other:?}"),
            }
        }
    }
    for h in &w.host.freed {
        assert!(!answered.contains(h), "{h} released after an unblock");
    }
    // No lock is left with a client that went away.
    w.host.paused = false;
    w.fire_due();
    w.command(b"k");
    if let Some(holder) = w.holder(b"k") {
        let h: u64 = String::from_utf8(holder[1..].to_vec())
            .unwrap()
            .parse()
            .unwrap();
        assert!(
            !w.host.closing.contains(&h),
            "w{h} is gone but holds the lock"
        );
    }
    assert!(next_h > 1000, "the soak queued enough waiters: {next_h}");
    for event in [Event::Handoff, Event::Timeout, Event::Undone] {
        let n = w.host.events.iter().filter(|e| **e == event).count();
        assert!(n > 10, "the soak exercised {event:?}: {n}");
    }
}

// ---------------------------------------------------------------------------
// Modes: one FIFO per key for exclusive, shared and counted requests.

#[test]
fn a_queued_writer_keeps_later_readers_behind_it_then_they_go_together() {
    let mut w = World::new();
    w.hold_mode(b"k", b"r", 60_000, Mode::Shared);
    w.wait_mode(b"k", 1, Mode::Exclusive);
    w.wait_mode(b"k", 2, Mode::Shared);
    w.wait_mode(b"k", 3, Mode::Shared);
    w.fire_due();
    assert!(
        w.outcomes().is_empty(),
        "a reader holds: the writer waits, and so do later readers"
    );
    w.release_share(b"k", b"r");
    let t1 = w.granted(1).expect("the writer alone");
    assert_eq!(w.holder(b"k"), Some(b"w1".to_vec()));
    assert_eq!(w.reg.len(0, b"k"), 2);
    w.release(b"k");
    let (t2, t3) = (w.granted(2).unwrap(), w.granted(3).unwrap());
    assert!(t1 < t2 && t2 < t3, "{t1} {t2} {t3}");
    assert_eq!(w.sharers(b"k"), [b"w2".to_vec(), b"w3".to_vec()]);
    assert_eq!(w.reg.len(0, b"k"), 0);
}

#[test]
fn counted_waiters_go_in_order_and_an_ended_permit_goes_at_its_deadline() {
    let mut w = World::new();
    w.hold_mode(b"k", b"a", 100, Mode::Limit(2));
    w.hold_mode(b"k", b"b", 60_000, Mode::Limit(2));
    w.wait_mode(b"k", 1, Mode::Limit(2));
    w.wait_mode(b"k", 2, Mode::Limit(2));
    w.fire_due();
    assert!(w.outcomes().is_empty());
    // a's lease ends: the queue's timer, armed at its deadline, hands on.
    w.advance(100);
    w.fire_due();
    assert!(w.granted(1).is_none(), "not before the deadline has passed");
    w.advance(1);
    w.fire_due();
    assert!(w.granted(1).is_some(), "at a's deadline");
    assert!(w.granted(2).is_none(), "n = 2");
    w.release_share(b"k", b"b");
    assert!(w.granted(2).is_some());
    assert_eq!(w.sharers(b"k"), [b"w1".to_vec(), b"w2".to_vec()]);
}

#[test]
fn a_share_nobody_received_is_undone_alone_and_handed_on() {
    let mut w = World::new();
    w.hold_mode(b"k", b"a", 60_000, Mode::Limit(2));
    w.hold_mode(b"k", b"b", 60_000, Mode::Limit(2));
    w.wait_mode(b"k", 1, Mode::Limit(2));
    w.wait_mode(b"k", 2, Mode::Limit(2));
    w.release_share(b"k", b"a");
    assert!(w.granted(1).is_some());
    // Client 1 is gone before its reply: its permit is undone (its field
    // only: b keeps its own), and client 2 gets it.
    w.freed_without_reply(1);
    w.fire_due();
    assert!(w.granted(2).is_some());
    assert_eq!(w.sharers(b"k"), [b"b".to_vec(), b"w2".to_vec()]);
    assert_eq!(w.reply(2), Some(Answer::Token(w.granted(2).unwrap())));
    assert!(w.host.events.contains(&Event::Undone));
}
