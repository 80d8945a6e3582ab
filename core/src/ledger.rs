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

use hashbrown::HashTable;

/// A lock name in one database, with the keyed hash of its key, computed
/// once per command ([`crate::lock::Process::name`]) and shared by the
/// ledger and the token marks.
#[derive(Debug, Clone, Copy)]
pub struct Name<'a> {
    /// The lock key's database.
    pub db: i32,
    /// The lock key.
    pub key: &'a [u8],
    /// The keyed hash of `key` (the database plays no part: one key in
    /// several databases shares a bucket, a chain no longer than the
    /// number of databases).
    pub hash: u64,
}

/// One grant, as the module wrote it (its owner is kept beside it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record {
    /// The grant's token.
    pub token: i64,
    /// The lease's deadline (ms since the epoch), as the module last set it.
    pub deadline_ms: i64,
    /// When the fence key expires (ms since the epoch), `None` when it is
    /// kept.
    pub fence_until_ms: Option<i64>,
}

/// One entry: the key and the owner share one allocation.
#[derive(Debug)]
struct Entry {
    hash: u64,
    db: i32,
    key_len: usize,
    /// The key, then the owner.
    bytes: Box<[u8]>,
    record: Record,
}

impl Entry {
    fn key(&self) -> &[u8] {
        &self.bytes[..self.key_len]
    }

    fn owner(&self) -> &[u8] {
        &self.bytes[self.key_len..]
    }

    fn is(&self, name: &Name<'_>) -> bool {
        self.hash == name.hash && self.db == name.db && self.key() == name.key
    }
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
    table: HashTable<Entry>,
    /// Sweep when the table reaches this many entries.
    sweep_at: usize,
}

impl Ledger {
    /// An empty ledger.
    pub const fn new() -> Self {
        Ledger {
            table: HashTable::new(),
            sweep_at: SWEEP_FLOOR,
        }
    }

    /// Entries held (grants that may still stand).
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// Whether it holds no entry.
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// Records `owner`'s grant of `name`, replacing any earlier one.
    /// Sweeps ended leases (deadline ≤ `now_ms`) when the ledger has doubled
    /// since the last sweep.
    pub fn record(&mut self, name: &Name<'_>, owner: &[u8], record: Record, now_ms: i64) {
        match self.table.find_mut(name.hash, |e| e.is(name)) {
            Some(e) if e.owner() == owner => e.record = record,
            Some(e) => {
                e.bytes = [name.key, owner].concat().into_boxed_slice();
                e.record = record;
            }
            None => {
                let entry = Entry {
                    hash: name.hash,
                    db: name.db,
                    key_len: name.key.len(),
                    bytes: [name.key, owner].concat().into_boxed_slice(),
                    record,
                };
                self.table.insert_unique(name.hash, entry, |e| e.hash);
            }
        }
        if self.table.len() >= self.sweep_at {
            self.sweep(now_ms);
        }
    }

    /// The owner and record of `name`'s last grant.
    pub fn get(&self, name: &Name<'_>) -> Option<(&[u8], &Record)> {
        self.table
            .find(name.hash, |e| e.is(name))
            .map(|e| (e.owner(), &e.record))
    }

    /// The record of `name`'s last grant, if it went to `owner`.
    pub fn get_mut(&mut self, name: &Name<'_>, owner: &[u8]) -> Option<&mut Record> {
        self.table
            .find_mut(name.hash, |e| e.is(name))
            .filter(|e| e.owner() == owner)
            .map(|e| &mut e.record)
    }

    /// The token of `name`'s last grant, if it went to `owner`.
    pub fn token_of(&self, name: &Name<'_>, owner: &[u8]) -> Option<i64> {
        self.get(name)
            .filter(|(o, _)| *o == owner)
            .map(|(_, r)| r.token)
    }

    /// Forgets `name`'s grant (the lock key was deleted); returns it.
    pub fn forget(&mut self, name: &Name<'_>) -> Option<Record> {
        let entry = self.table.find_entry(name.hash, |e| e.is(name)).ok()?;
        let (e, _) = entry.remove();
        self.shrink();
        Some(e.record)
    }

    /// Forgets every grant of database `db` (`FLUSHDB`), or of all of them
    /// (`None`: `FLUSHALL`, a full resync, an RDB load).
    pub fn forget_db(&mut self, db: Option<i32>) {
        match db {
            Some(db) => {
                self.table.retain(|e| e.db != db);
                self.shrink();
            }
            None => *self = Ledger::new(),
        }
    }

    /// Swaps the grants of databases `a` and `b` (`SWAPDB`).
    pub fn swap_dbs(&mut self, a: i32, b: i32) {
        for e in self.table.iter_mut() {
            if e.db == a {
                e.db = b;
            } else if e.db == b {
                e.db = a;
            }
        }
    }

    /// Drops the entries whose lease has ended by `now_ms`.
    pub fn sweep(&mut self, now_ms: i64) {
        self.table.retain(|e| e.record.deadline_ms > now_ms);
        self.shrink();
        self.sweep_at = (2 * self.table.len()).max(SWEEP_FLOOR);
    }

    /// Gives memory back after a burst of names.
    fn shrink(&mut self) {
        let (len, cap) = (self.table.len(), self.table.capacity());
        if cap > 64 && len * 4 < cap {
            self.table.shrink_to(len * 2, |e| e.hash);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A name hashed by a plain (unkeyed) hasher: the ledger only needs the
    /// same hash for the same key.
    fn n(db: i32, key: &[u8]) -> Name<'_> {
        use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
        let hash = BuildHasherDefault::<DefaultHasher>::default().hash_one(key);
        Name { db, key, hash }
    }

    fn rec(token: i64, deadline_ms: i64) -> Record {
        Record {
            token,
            deadline_ms,
            fence_until_ms: None,
        }
    }

    #[test]
    fn records_by_database_and_key() {
        let mut l = Ledger::new();
        l.record(&n(0, b"k"), b"a", rec(5, 100), 0);
        l.record(&n(1, b"k"), b"b", rec(6, 100), 0);
        assert_eq!(l.token_of(&n(0, b"k"), b"a"), Some(5));
        assert_eq!(l.token_of(&n(0, b"k"), b"b"), None, "another owner");
        assert_eq!(l.token_of(&n(1, b"k"), b"b"), Some(6));
        l.record(&n(0, b"k"), b"a", rec(7, 100), 0);
        assert_eq!((l.len(), l.token_of(&n(0, b"k"), b"a")), (2, Some(7)));
        l.record(&n(0, b"k"), b"c", rec(8, 100), 0);
        assert_eq!(l.get(&n(0, b"k")), Some((&b"c"[..], &rec(8, 100))));
        assert_eq!(l.get_mut(&n(0, b"k"), b"a"), None, "another owner");
        l.get_mut(&n(0, b"k"), b"c").unwrap().deadline_ms = 200;
        assert_eq!(l.get(&n(0, b"k")).unwrap().1.deadline_ms, 200);
        assert_eq!(l.forget(&n(0, b"k")), Some(rec(8, 200)));
        assert_eq!((l.len(), l.get(&n(0, b"k"))), (1, None));
        assert_eq!(l.forget(&n(0, b"k")), None);
        assert_eq!(l.len(), 1);
    }

    #[test]
    fn keys_whose_hashes_collide_stay_apart() {
        let mut l = Ledger::new();
        let (a, b) = (
            Name {
                db: 0,
                key: b"a",
                hash: 7,
            },
            Name {
                db: 0,
                key: b"b",
                hash: 7,
            },
        );
        l.record(&a, b"x", rec(1, 100), 0);
        l.record(&b, b"y", rec(2, 100), 0);
        assert_eq!(l.token_of(&a, b"x"), Some(1));
        assert_eq!(l.token_of(&b, b"y"), Some(2));
        l.forget(&a);
        assert_eq!(
            (l.token_of(&a, b"x"), l.token_of(&b, b"y")),
            (None, Some(2))
        );
    }

    #[test]
    fn flushes_and_swaps_follow_the_keys() {
        let mut l = Ledger::new();
        l.record(&n(0, b"x"), b"a", rec(1, 100), 0);
        l.record(&n(1, b"y"), b"b", rec(2, 100), 0);
        l.swap_dbs(0, 1);
        assert_eq!(l.token_of(&n(1, b"x"), b"a"), Some(1));
        assert_eq!(l.token_of(&n(0, b"y"), b"b"), Some(2));
        assert_eq!(l.token_of(&n(0, b"x"), b"a"), None);
        l.forget_db(Some(0));
        assert_eq!((l.len(), l.get(&n(0, b"y"))), (1, None));
        l.forget_db(None);
        assert!(l.is_empty());
    }

    #[test]
    fn ended_leases_are_swept_as_it_grows() {
        let mut l = Ledger::new();
        for i in 0..1000u32 {
            l.record(&n(0, &i.to_le_bytes()), b"a", rec(1, 100), 0);
        }
        l.record(&n(0, b"live"), b"a", rec(1, 10_000), 0);
        assert_eq!(l.len(), 1001);
        for i in 0..30u32 {
            l.record(&n(1, &i.to_le_bytes()), b"a", rec(1, 10_000), 200);
        }
        assert_eq!(l.len(), 31);
        assert_eq!(l.token_of(&n(0, b"live"), b"a"), Some(1));
    }

    #[test]
    fn memory_goes_back_after_a_burst_of_names() {
        let mut l = Ledger::new();
        for i in 0..100_000u32 {
            l.record(&n(0, &i.to_le_bytes()), b"a", rec(1, i64::MAX), 0);
        }
        for i in 0..100_000u32 {
            l.forget(&n(0, &i.to_le_bytes()));
        }
        assert!(l.is_empty());
        assert!(l.table.capacity() <= 128, "{}", l.table.capacity());
    }
}
