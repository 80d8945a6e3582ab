//! Every queue of waiting clients, in plain Rust (handles are any `Copy`
//! type, so the tests use integers).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::Hash;

use super::ids::TimerId;
pub use super::ids::{Db, QueueId, QueueKey, WaiterId};
use super::timers::ExpiryTimer;
use crate::shared::{Kind, Mode};

/// Which databases a flush or a role change concerns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DbScope {
    /// Every database (`FLUSHALL`, `SWAPDB`, a role change).
    All,
    /// One database (`FLUSHDB`).
    One(Db),
}

/// A queued client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waiter<H> {
    /// Unique id, in arrival order.
    pub id: WaiterId,
    /// Its blocked-client handle.
    pub handle: H,
    /// The server's id of its connection.
    pub client_id: u64,
    /// The owner id it asked for.
    pub owner: Vec<u8>,
    /// The ttl it asked for (counted from the grant).
    pub ttl_ms: i64,
    /// What it asks for: exclusive, a shared share, or a permit.
    pub mode: Mode,
    /// When its WAIT times out (ms since the epoch); `None`: no limit.
    pub deadline_ms: Option<i64>,
    /// The timer armed for that deadline.
    pub deadline_timer: Option<TimerId>,
}

/// A client about to queue: what [`Registry::push`] needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Arrival<'a, H> {
    /// Its blocked-client handle.
    pub handle: H,
    /// The server's id of its connection.
    pub client_id: u64,
    /// The owner id it asks for.
    pub owner: &'a [u8],
    /// The ttl it asks for.
    pub ttl_ms: i64,
    /// What it asks for.
    pub mode: Mode,
    /// When its WAIT times out; `None`: no limit.
    pub deadline_ms: Option<i64>,
}

/// A grant the handoff wrote for a waiter: which lock, to whom, with which
/// token. It travels with the unblock (`Outcome::Granted`) to the reply
/// callback, which answers its token if it still stands; one that could
/// not be delivered (its client was gone by the time the reply was due) is
/// kept here until it is undone (the lock key deleted, if it still holds
/// this grant) and the lock handed on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The lock's database.
    pub db: Db,
    /// The lock key.
    pub key: Vec<u8>,
    /// The owner written into it.
    pub owner: Vec<u8>,
    /// The fencing token issued.
    pub token: i64,
}

struct Queue<H> {
    id: QueueId,
    waiters: BTreeMap<WaiterId, Waiter<H>>,
    timer: Option<ExpiryTimer>,
    /// When a command found the lock free: its grant is due, and written
    /// by the pending timer at the end of the event-loop iteration.
    due_since: Option<i64>,
}

/// Every queue, with indexes by handle, by waiter id and by queue id, the
/// keys waiting for the pending timer, and the grants to undo.
pub struct Registry<H> {
    queues: HashMap<QueueKey, Queue<H>>,
    by_handle: HashMap<H, (QueueKey, WaiterId)>,
    by_waiter: HashMap<WaiterId, QueueKey>,
    by_queue: HashMap<QueueId, QueueKey>,
    next_waiter: u64,
    next_queue: u64,
    pending: BTreeSet<QueueKey>,
    pending_timer: Option<TimerId>,
    undo: Vec<Grant>,
}

impl<H: Copy + Eq + Hash> Default for Registry<H> {
    fn default() -> Self {
        Self::new()
    }
}

impl<H: Copy + Eq + Hash> Registry<H> {
    /// An empty registry.
    pub fn new() -> Self {
        Registry {
            queues: HashMap::new(),
            by_handle: HashMap::new(),
            by_waiter: HashMap::new(),
            by_queue: HashMap::new(),
            next_waiter: 1,
            next_queue: 1,
            pending: BTreeSet::new(),
            pending_timer: None,
            undo: Vec::new(),
        }
    }

    fn queue_mut(&mut self, db: Db, key: &[u8]) -> Option<&mut Queue<H>> {
        self.queues.get_mut(&(db, key.to_vec()))
    }

    /// Clients waiting on `key` in `db`.
    pub fn len(&self, db: Db, key: &[u8]) -> usize {
        self.queues
            .get(&(db, key.to_vec()))
            .map_or(0, |q| q.waiters.len())
    }

    /// Whether `key` in `db` has a queue.
    pub fn has(&self, db: Db, key: &[u8]) -> bool {
        self.queues.contains_key(&(db, key.to_vec()))
    }

    /// Whether nobody waits anywhere and no grant waits to be undone.
    pub fn is_idle(&self) -> bool {
        self.by_handle.is_empty() && self.undo.is_empty()
    }

    /// (waiting clients, keys with waiters), for INFO.
    pub fn gauges(&self) -> (u64, u64) {
        (self.by_handle.len() as u64, self.queues.len() as u64)
    }

    /// Queues a waiter at the tail and returns its id.
    pub fn push(&mut self, db: Db, key: &[u8], arrival: Arrival<'_, H>) -> WaiterId {
        let Arrival {
            handle,
            client_id,
            owner,
            ttl_ms,
            mode,
            deadline_ms,
        } = arrival;
        let id = WaiterId(self.next_waiter);
        self.next_waiter += 1;
        let qkey = (db, key.to_vec());
        if !self.queues.contains_key(&qkey) {
            let qid = QueueId(self.next_queue);
            self.next_queue += 1;
            self.by_queue.insert(qid, qkey.clone());
            self.queues.insert(
                qkey.clone(),
                Queue {
                    id: qid,
                    waiters: BTreeMap::new(),
                    timer: None,
                    due_since: None,
                },
            );
        }
        let waiter = Waiter {
            id,
            handle,
            client_id,
            owner: owner.to_vec(),
            ttl_ms,
            mode,
            deadline_ms,
            deadline_timer: None,
        };
        if let Some(q) = self.queues.get_mut(&qkey) {
            q.waiters.insert(id, waiter);
        }
        self.by_handle.insert(handle, (qkey.clone(), id));
        self.by_waiter.insert(id, qkey);
        id
    }

    /// Records the deadline timer armed for waiter `id`.
    pub fn set_deadline_timer(&mut self, id: WaiterId, timer: TimerId) {
        if let Some(qkey) = self.by_waiter.get(&id).cloned() {
            if let Some(w) = self
                .queues
                .get_mut(&qkey)
                .and_then(|q| q.waiters.get_mut(&id))
            {
                w.deadline_timer = Some(timer);
            }
        }
    }

    /// A queued waiter, by id.
    pub fn waiter(&self, id: WaiterId) -> Option<&Waiter<H>> {
        let qkey = self.by_waiter.get(&id)?;
        self.queues.get(qkey)?.waiters.get(&id)
    }

    /// The head waiter (the longest-waiting one), left in place.
    pub fn head(&self, db: Db, key: &[u8]) -> Option<&Waiter<H>> {
        let q = self.queues.get(&(db, key.to_vec()))?;
        q.waiters.first_key_value().map(|(_, w)| w)
    }

    /// The kind of lock `key`'s queue waits for (its head's), `None` when
    /// nobody waits: a request of another kind is the wrong mode.
    pub fn kind(&self, db: Db, key: &[u8]) -> Option<Kind> {
        self.head(db, key).map(|w| w.mode.kind())
    }

    /// `key`'s waiters in arrival order: (owner, mode).
    pub fn waiting(&self, db: Db, key: &[u8]) -> Vec<(Vec<u8>, Mode)> {
        self.queues
            .get(&(db, key.to_vec()))
            .map(|q| {
                q.waiters
                    .values()
                    .map(|w| (w.owner.clone(), w.mode))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Takes the head waiter (the longest-waiting one).
    pub fn pop_head(&mut self, db: Db, key: &[u8]) -> Option<Waiter<H>> {
        let (_, w) = self.queue_mut(db, key)?.waiters.pop_first()?;
        self.by_handle.remove(&w.handle);
        self.by_waiter.remove(&w.id);
        Some(w)
    }

    /// Puts a waiter taken by [`pop_head`](Self::pop_head) back in its place.
    pub fn push_front(&mut self, db: Db, key: &[u8], w: Waiter<H>) {
        let qkey = (db, key.to_vec());
        if let Some(q) = self.queues.get_mut(&qkey) {
            self.by_handle.insert(w.handle, (qkey.clone(), w.id));
            self.by_waiter.insert(w.id, qkey);
            q.waiters.insert(w.id, w);
        }
    }

    /// Removes the waiter with `handle`, wherever it is.
    pub fn remove(&mut self, handle: H) -> Option<(QueueKey, Waiter<H>)> {
        let (qkey, id) = self.by_handle.remove(&handle)?;
        self.by_waiter.remove(&id);
        let w = self.queues.get_mut(&qkey)?.waiters.remove(&id)?;
        Some((qkey, w))
    }

    /// Removes waiter `id`, wherever it is.
    pub fn remove_id(&mut self, id: WaiterId) -> Option<(QueueKey, Waiter<H>)> {
        let handle = self.waiter(id)?.handle;
        self.remove(handle)
    }

    /// Takes every waiter of `key`, in order.
    pub fn drain(&mut self, db: Db, key: &[u8]) -> Vec<Waiter<H>> {
        let Some(q) = self.queue_mut(db, key) else {
            return Vec::new();
        };
        let all: Vec<Waiter<H>> = std::mem::take(&mut q.waiters).into_values().collect();
        for w in &all {
            self.by_handle.remove(&w.handle);
            self.by_waiter.remove(&w.id);
        }
        all
    }

    /// Frees the queue of `key` if it has no waiters left; returns the
    /// expiry timer the caller must stop.
    pub fn drop_if_empty(&mut self, db: Db, key: &[u8]) -> Option<TimerId> {
        let qkey = (db, key.to_vec());
        if !self.queues.get(&qkey)?.waiters.is_empty() {
            return None;
        }
        let q = self.queues.remove(&qkey)?;
        self.by_queue.remove(&q.id);
        self.pending.remove(&qkey);
        if self.by_handle.is_empty() {
            // Give memory back once nobody waits (see the memory test).
            self.by_handle.shrink_to_fit();
            self.by_waiter.shrink_to_fit();
            self.by_queue.shrink_to_fit();
            self.queues.shrink_to_fit();
        }
        q.timer.map(|t| t.id)
    }

    /// The expiry timer armed for `key`.
    pub fn expiry_timer(&self, db: Db, key: &[u8]) -> Option<ExpiryTimer> {
        self.queues.get(&(db, key.to_vec()))?.timer
    }

    /// The id `key`'s expiry timer carries.
    pub fn queue_id(&self, db: Db, key: &[u8]) -> Option<QueueId> {
        self.queues.get(&(db, key.to_vec())).map(|q| q.id)
    }

    /// Records the expiry timer armed for `key` (None: none armed).
    pub fn set_expiry_timer(&mut self, db: Db, key: &[u8], timer: Option<ExpiryTimer>) {
        if let Some(q) = self.queue_mut(db, key) {
            q.timer = timer;
        }
    }

    /// Records that a command found `key` free at `at_ms` with clients
    /// queued: a grant is due (the earliest such moment is kept).
    pub fn mark_due(&mut self, db: Db, key: &[u8], at_ms: i64) {
        if let Some(q) = self.queue_mut(db, key) {
            q.due_since.get_or_insert(at_ms);
        }
    }

    /// Whether a grant is due on `key` (see [`mark_due`](Self::mark_due)).
    pub fn is_due(&self, db: Db, key: &[u8]) -> bool {
        self.queues
            .get(&(db, key.to_vec()))
            .is_some_and(|q| q.due_since.is_some())
    }

    /// Takes the moment `key`'s grant became due, if it is.
    pub fn take_due(&mut self, db: Db, key: &[u8]) -> Option<i64> {
        self.queue_mut(db, key)?.due_since.take()
    }

    /// The queue an expiry timer's id designates.
    pub fn key_of(&self, qid: QueueId) -> Option<QueueKey> {
        self.by_queue.get(&qid).cloned()
    }

    /// Marks `key` for a settle from the pending timer, if it has a queue.
    pub fn mark_pending(&mut self, db: Db, key: &[u8]) -> bool {
        if !self.has(db, key) {
            return false;
        }
        self.pending.insert((db, key.to_vec()))
    }

    /// Marks every queue in `scope`. Returns whether any was marked.
    pub fn mark_scope_pending(&mut self, scope: DbScope) -> bool {
        let keys: Vec<QueueKey> = self
            .queues
            .keys()
            .filter(|(d, _)| scope == DbScope::All || scope == DbScope::One(*d))
            .cloned()
            .collect();
        let any = !keys.is_empty();
        self.pending.extend(keys);
        any
    }

    /// Whether anything waits for the pending timer.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty() || !self.undo.is_empty()
    }

    /// The pending timer, if armed.
    pub fn pending_timer(&self) -> Option<TimerId> {
        self.pending_timer
    }

    /// Records the pending timer (None: it fired or was never armed).
    pub fn set_pending_timer(&mut self, id: Option<TimerId>) {
        self.pending_timer = id;
    }

    /// Takes the pending keys, in order.
    pub fn take_pending(&mut self) -> Vec<QueueKey> {
        let keys: Vec<QueueKey> = std::mem::take(&mut self.pending).into_iter().collect();
        keys
    }

    /// Records a grant to undo.
    pub fn push_undo(&mut self, grant: Grant) {
        self.undo.push(grant);
    }

    /// Takes the grants to undo on `key` (every key with `None`).
    pub fn take_undo(&mut self, only: Option<(Db, &[u8])>) -> Vec<Grant> {
        match only {
            None => std::mem::take(&mut self.undo),
            Some((db, key)) => {
                let (mine, rest) = std::mem::take(&mut self.undo)
                    .into_iter()
                    .partition(|g| g.db == db && g.key == key);
                self.undo = rest;
                mine
            }
        }
    }

    /// Whether a grant on `key` waits to be undone.
    pub fn has_undo(&self, db: Db, key: &[u8]) -> bool {
        self.undo.iter().any(|g| g.db == db && g.key == key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn push(r: &mut Registry<u32>, db: Db, key: &[u8], h: u32) -> WaiterId {
        let arrival = Arrival {
            handle: h,
            client_id: u64::from(h),
            owner: b"o",
            ttl_ms: 100,
            mode: Mode::Exclusive,
            deadline_ms: None,
        };
        r.push(db, key, arrival)
    }

    #[test]
    fn fifo_per_key_and_db() {
        let mut r: Registry<u32> = Registry::new();
        for h in 1..=5 {
            push(&mut r, 0, b"k", h);
        }
        push(&mut r, 1, b"k", 9);
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
    fn waiter_ids_are_never_reused() {
        let mut r: Registry<u32> = Registry::new();
        let a = push(&mut r, 0, b"k", 1);
        r.remove(1);
        // The same handle again (the server reuses freed handles).
        let b = push(&mut r, 0, b"k", 1);
        assert_ne!(a, b);
        assert!(r.waiter(a).is_none(), "a late timer for `a` finds nobody");
        assert_eq!(r.waiter(b).map(|w| w.handle), Some(1));
        assert_eq!(r.remove_id(b).map(|(_, w)| w.id), Some(b));
    }

    #[test]
    fn cleanup_frees_everything() {
        let mut r: Registry<u32> = Registry::new();
        push(&mut r, 0, b"k", 1);
        push(&mut r, 0, b"k", 2);
        push(&mut r, 0, b"other", 3);
        let qid = r.queue_id(0, b"k").unwrap();
        r.set_expiry_timer(
            0,
            b"k",
            Some(ExpiryTimer {
                id: TimerId(77),
                at_ms: 5,
            }),
        );
        assert_eq!(r.key_of(qid), Some((0, b"k".to_vec())));
        assert_eq!(r.drop_if_empty(0, b"k"), None, "not empty yet");
        assert!(r.mark_pending(0, b"k"));
        let drained = r.drain(0, b"k");
        assert_eq!(drained.iter().map(|w| w.handle).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(
            r.drop_if_empty(0, b"k"),
            Some(TimerId(77)),
            "its timer must stop"
        );
        assert!(!r.has(0, b"k"));
        assert_eq!(r.key_of(qid), None);
        assert!(r.remove(3).is_some());
        assert_eq!(r.drop_if_empty(0, b"other"), None, "no timer armed");
        assert!(r.is_idle());
        assert_eq!(r.gauges(), (0, 0));
        assert!(r.queues.is_empty() && r.by_queue.is_empty() && r.by_waiter.is_empty());
        assert!(r.pending.is_empty());
    }

    #[test]
    fn pending_marks_and_scopes() {
        let mut r: Registry<u32> = Registry::new();
        assert!(!r.mark_pending(0, b"k"), "no queue, nothing to do");
        push(&mut r, 0, b"k", 1);
        push(&mut r, 2, b"j", 2);
        assert!(r.mark_pending(0, b"k"));
        assert!(!r.mark_pending(0, b"k"), "already marked");
        assert_eq!(r.take_pending(), vec![(0, b"k".to_vec())]);
        assert!(r.mark_scope_pending(DbScope::One(2)));
        assert_eq!(r.take_pending(), vec![(2, b"j".to_vec())]);
        assert!(r.mark_scope_pending(DbScope::All));
        assert_eq!(r.take_pending().len(), 2);
        assert!(!r.mark_scope_pending(DbScope::One(7)));
        assert!(!r.has_pending());
    }

    #[test]
    fn undo_is_kept_per_key() {
        let mut r: Registry<u32> = Registry::new();
        let g = |key: &[u8], token| Grant {
            db: 0,
            key: key.to_vec(),
            owner: b"o".to_vec(),
            token,
        };
        r.push_undo(g(b"a", 1));
        r.push_undo(g(b"b", 2));
        assert!(!r.is_idle(), "an undo keeps the registry busy");
        assert!(r.has_undo(0, b"a") && !r.has_undo(1, b"a"));
        assert_eq!(r.take_undo(Some((0, b"a"))), vec![g(b"a", 1)]);
        assert!(r.has_pending());
        assert_eq!(r.take_undo(None), vec![g(b"b", 2)]);
        assert!(r.is_idle());
    }
}
