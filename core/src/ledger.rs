//! The module's own record of the grants it wrote and that may still stand.
//!
//! Whether a grant still stands (and whether it can be undone) must not be
//! read from the fence key: anyone can `SET`, `INCR`, `DEL` or evict it, and
//! the lock key holds only the owner, so an owner that takes the same lock
//! twice would look the same under both grants. The ledger remembers, per
//! lock key, the owner and token of the module's last grant, the lease's
//! deadline as the module last set it, and when the fence key expires. It
//! answers `SPACELOCK.CHECK` and `SPACELOCK.INFO` while the lock key still
//! holds that owner, whatever became of the fence key, and lets the WAIT
//! handoff recognise its own grant in the iteration that wrote it.
//!
//! It is process memory: a restart or a promoted replica starts with an
//! empty ledger, and the fence key (replicated with every grant) answers
//! until the lock's next grant or refresh records it again.
//!
//! Its size follows the locks held, not the names ever used: RELEASE drops
//! an entry, and entries whose deadline has passed (a holder that never
//! released) are swept as the ledger grows, so it never holds more than
//! twice the entries whose leases were live at the last sweep.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, DefaultHasher};

/// The map of databases (a handful of small numbers).
type Dbs = HashMap<i32, HashMap<Box<[u8]>, Record>, BuildHasherDefault<DefaultHasher>>;

/// One grant, as the module wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The owner the lock key was set to.
    pub owner: Box<[u8]>,
    /// The grant's token.
    pub token: i64,
    /// The lease's deadline (ms since the epoch), as the module last set it.
    pub deadline_ms: i64,
    /// When the fence key expires (ms since the epoch), `None` when it is
    /// kept.
    pub fence_until_ms: Option<i64>,
}

impl Default for Ledger {
    fn default() -> Self {
        Ledger::new()
    }
}

/// Below this many entries the ledger is never swept.
const SWEEP_FLOOR: usize = 1024;

/// The grants of every database, by lock key.
#[derive(Debug)]
pub struct Ledger {
    dbs: Dbs,
    len: usize,
    /// Sweep when `len` reaches this.
    sweep_at: usize,
}

impl Ledger {
    /// An empty ledger.
    pub const fn new() -> Self {
        Ledger {
            dbs: HashMap::with_hasher(BuildHasherDefault::new()),
            len: 0,
            sweep_at: SWEEP_FLOOR,
        }
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no entry is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Records a grant of `key` in `db` (replacing any earlier one), and
    /// sweeps out leases that ended before `now_ms` when the ledger has
    /// doubled since the last sweep.
    pub fn record(&mut self, db: i32, key: &[u8], record: Record, now_ms: i64) {
        let map = self.dbs.entry(db).or_default();
        match map.get_mut(key) {
            Some(r) => *r = record,
            None => {
                map.insert(key.into(), record);
                self.len += 1;
            }
        }
        if self.len >= self.sweep_at {
            self.sweep(now_ms);
        }
    }

    /// The grant recorded for `key` in `db`.
    pub fn get(&self, db: i32, key: &[u8]) -> Option<&Record> {
        self.dbs.get(&db)?.get(key)
    }

    /// The grant recorded for `key` in `db`, to update its deadline.
    pub fn get_mut(&mut self, db: i32, key: &[u8]) -> Option<&mut Record> {
        self.dbs.get_mut(&db)?.get_mut(key)
    }

    /// The token of `owner`'s grant of `key`, if the ledger has one.
    pub fn token_of(&self, db: i32, key: &[u8], owner: &[u8]) -> Option<i64> {
        self.get(db, key)
            .filter(|r| &*r.owner == owner)
            .map(|r| r.token)
    }

    /// Forgets the grant of `key` in `db` (the lock was released or
    /// undone).
    pub fn forget(&mut self, db: i32, key: &[u8]) -> Option<Record> {
        let map = self.dbs.get_mut(&db)?;
        let record = map.remove(key)?;
        self.len -= 1;
        shrink(map);
        Some(record)
    }

    /// Forgets every grant in `db` (`FLUSHDB`), or everywhere (`None`:
    /// `FLUSHALL`).
    pub fn forget_db(&mut self, db: Option<i32>) {
        match db {
            Some(db) => {
                if let Some(map) = self.dbs.remove(&db) {
                    self.len -= map.len();
                }
            }
            None => *self = Ledger::new(),
        }
    }

    /// `SWAPDB a b`: the grants move with their keys.
    pub fn swap_dbs(&mut self, a: i32, b: i32) {
        let in_a = self.dbs.remove(&a);
        let in_b = self.dbs.remove(&b);
        if let Some(m) = in_a {
            self.dbs.insert(b, m);
        }
        if let Some(m) = in_b {
            self.dbs.insert(a, m);
        }
    }

    /// Drops the grants whose lease ended before `now_ms`: their lock keys
    /// have expired, or are held under a deadline set by someone else.
    pub fn sweep(&mut self, now_ms: i64) {
        let mut len = 0;
        self.dbs.retain(|_, map| {
            map.retain(|_, r| r.deadline_ms > now_ms);
            shrink(map);
            len += map.len();
            !map.is_empty()
        });
        self.len = len;
        self.sweep_at = (2 * len).max(SWEEP_FLOOR);
    }
}

/// Gives memory back once a map is mostly empty (after a burst of names).
fn shrink(map: &mut HashMap<Box<[u8]>, Record>) {
    if map.capacity() > 64 && map.len() * 4 < map.capacity() {
        map.shrink_to(map.len() * 2);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(owner: &[u8], token: i64, deadline_ms: i64) -> Record {
        Record {
            owner: owner.into(),
            token,
            deadline_ms,
            fence_until_ms: None,
        }
    }

    #[test]
    fn records_by_database_and_key() {
        let mut l = Ledger::new();
        l.record(0, b"k", rec(b"a", 5, 100), 0);
        l.record(1, b"k", rec(b"b", 6, 100), 0);
        assert_eq!(l.token_of(0, b"k", b"a"), Some(5));
        assert_eq!(l.token_of(0, b"k", b"b"), None, "another owner");
        assert_eq!(l.token_of(1, b"k", b"b"), Some(6));
        l.record(0, b"k", rec(b"a", 7, 100), 0);
        assert_eq!((l.len(), l.token_of(0, b"k", b"a")), (2, Some(7)));
        l.forget(0, b"k");
        assert_eq!((l.len(), l.get(0, b"k")), (1, None));
        l.forget(0, b"k");
        assert_eq!(l.len(), 1);
    }

    #[test]
    fn flushes_and_swaps_follow_the_keys() {
        let mut l = Ledger::new();
        l.record(0, b"x", rec(b"a", 1, 100), 0);
        l.record(1, b"y", rec(b"b", 2, 100), 0);
        l.swap_dbs(0, 1);
        assert_eq!(l.token_of(1, b"x", b"a"), Some(1));
        assert_eq!(l.token_of(0, b"y", b"b"), Some(2));
        l.forget_db(Some(0));
        assert_eq!((l.len(), l.get(0, b"y")), (1, None));
        l.forget_db(None);
        assert!(l.is_empty());
    }

    #[test]
    fn ended_leases_are_swept_as_it_grows() {
        let mut l = Ledger::new();
        // A thousand holders that never released, leases ended at 100.
        for i in 0..1000u32 {
            l.record(0, &i.to_le_bytes(), rec(b"a", 1, 100), 0);
        }
        l.record(0, b"live", rec(b"a", 1, 10_000), 0);
        assert_eq!(l.len(), 1001);
        // Growing past the floor at ms 200 sweeps the ended ones.
        for i in 0..30u32 {
            l.record(1, &i.to_le_bytes(), rec(b"a", 1, 10_000), 200);
        }
        assert_eq!(l.len(), 31);
        assert_eq!(l.token_of(0, b"live", b"a"), Some(1));
    }

    #[test]
    fn memory_goes_back_after_a_burst_of_names() {
        let mut l = Ledger::new();
        for i in 0..100_000u32 {
            l.record(0, &i.to_le_bytes(), rec(b"a", 1, i64::MAX), 0);
        }
        for i in 0..100_000u32 {
            l.forget(0, &i.to_le_bytes());
        }
        assert!(l.is_empty());
        assert!(l.dbs[&0].capacity() <= 128, "{}", l.dbs[&0].capacity());
    }
}
