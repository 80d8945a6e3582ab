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
    /// several databases shares a home slot, a run no longer than the
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

/// Bytes of key and owner that an entry holds in its own slot: a name and
/// an owner of usual length (a `space:<uuid>` key and a host-and-process
/// owner) need no allocation of their own, and are compared on the cache
/// lines the slot already brought in.
const INLINE: usize = 78;

/// The key, then the owner: in the slot when they fit, else on the heap.
#[derive(Debug)]
enum Bytes {
    Inline { len: u8, buf: [u8; INLINE] },
    Heap(Box<[u8]>),
}

impl Bytes {
    fn of(key: &[u8], owner: &[u8]) -> Bytes {
        let len = key.len() + owner.len();
        if len <= INLINE {
            let mut buf = [0u8; INLINE];
            buf[..key.len()].copy_from_slice(key);
            buf[key.len()..len].copy_from_slice(owner);
            // len ≤ INLINE < 256.
            Bytes::Inline {
                len: len as u8,
                buf,
            }
        } else {
            Bytes::Heap([key, owner].concat().into_boxed_slice())
        }
    }

    fn as_slice(&self) -> &[u8] {
        match self {
            Bytes::Inline { len, buf } => &buf[..usize::from(*len)],
            Bytes::Heap(b) => b,
        }
    }
}

/// One entry: two cache lines, aligned on them.
#[derive(Debug)]
#[repr(align(64))]
struct Entry {
    hash: u64,
    record: Record,
    db: i32,
    key_len: u32,
    bytes: Bytes,
}

impl Entry {
    fn key(&self) -> &[u8] {
        &self.bytes.as_slice()[..self.key_len as usize]
    }

    fn owner(&self) -> &[u8] {
        &self.bytes.as_slice()[self.key_len as usize..]
    }

    fn is(&self, name: &Name<'_>) -> bool {
        self.hash == name.hash && self.db == name.db && self.key() == name.key
    }

    /// Marks the place free (and gives back a long name's bytes).
    fn free(&mut self) {
        self.key_len = FREE;
        self.bytes = Bytes::Inline {
            len: 0,
            buf: [0; INLINE],
        };
    }

    fn is_free(&self) -> bool {
        self.key_len == FREE
    }
}

/// The `key_len` of a free place (no key is that long: keys are far
/// shorter than 4 GiB).
const FREE: u32 = u32::MAX;

impl Default for Ledger {
    fn default() -> Self {
        Ledger::new()
    }
}

/// Below this many entries the ledger is never swept.
const SWEEP_FLOOR: usize = 1024;

/// The smallest index allocated.
const MIN_SLOTS: usize = 16;

/// One slot of the index: the low 32 bits of the name's hash (which fix
/// its home slot, and tell most other names apart without reading their
/// entry), then the entry's position plus one; 0 when free.
type Slot = u64;

fn slot(hash: u64, at: usize) -> Slot {
    (hash & 0xffff_ffff) << 32 | (at as u64 + 1)
}

/// The low 32 bits of the hash a slot holds.
fn slot_hash(s: Slot) -> u64 {
    s >> 32
}

/// The entry position a (taken) slot holds.
fn slot_at(s: Slot) -> usize {
    ((s & 0xffff_ffff) - 1) as usize
}

/// The grants of every database, by lock key.
///
/// The entries sit in one array, in no order; a small index (8 bytes a
/// slot, at most half full, linear probing with backward-shift removal)
/// maps each name's hash to its entry's position. A removed entry leaves a
/// free place, which the next new grant takes (the array is compacted once
/// most of it is free), so a removal moves nothing. A look-up reads the
/// index, which stays small enough for the CPU's caches, and then one
/// entry: [`entry_at`](Self::entry_at) and [`next_free_at`](Self::next_free_at)
/// tell a command which entry it will touch, for a prefetch before the
/// server looks the lock key up, so that the two waits on memory overlap
/// instead of adding up.
#[derive(Debug)]
pub struct Ledger {
    entries: Vec<Entry>,
    /// Positions in `entries` that hold no grant, the next one to use last.
    free: Vec<u32>,
    /// A power of two slots (or none).
    index: Vec<Slot>,
    /// Sweep when the ledger reaches this many entries.
    sweep_at: usize,
}

impl Ledger {
    /// An empty ledger.
    pub const fn new() -> Self {
        Ledger {
            entries: Vec::new(),
            free: Vec::new(),
            index: Vec::new(),
            sweep_at: SWEEP_FLOOR,
        }
    }

    /// Entries held (grants that may still stand).
    pub fn len(&self) -> usize {
        self.entries.len() - self.free.len()
    }

    /// Whether it holds no entry.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Where the next new grant's entry goes, when it reuses a free place
    /// (address and size, for a prefetch; nothing is read through it).
    pub fn next_free_at(&self) -> Option<(*const u8, usize)> {
        let at = *self.free.last()? as usize;
        let e = self.entries.as_ptr().wrapping_add(at);
        Some((e.cast(), std::mem::size_of::<Entry>()))
    }

    /// Where the entry of the name whose hash is `hash` most likely is (the
    /// first entry whose slot carries the same hash bits), as its address
    /// and size in bytes, for a prefetch: nothing is read through it.
    /// `None` when no slot matches.
    pub fn entry_at(&self, hash: u64) -> Option<(*const u8, usize)> {
        let mask = self.mask()?;
        let mut i = hash as usize & mask;
        loop {
            let s = self.index[i];
            if s == 0 {
                return None;
            }
            if slot_hash(s) == hash & 0xffff_ffff {
                let at = self.entries.as_ptr().wrapping_add(slot_at(s));
                return Some((at.cast(), std::mem::size_of::<Entry>()));
            }
            i = (i + 1) & mask;
        }
    }

    fn mask(&self) -> Option<usize> {
        (!self.index.is_empty()).then(|| self.index.len() - 1)
    }

    /// The index slot and the entry position of `name`.
    fn find(&self, name: &Name<'_>) -> Option<(usize, usize)> {
        let mask = self.mask()?;
        let low = name.hash & 0xffff_ffff;
        // Truncation keeps the low bits, which the mask keeps anyway.
        let mut i = name.hash as usize & mask;
        // The index is never full, so a free slot ends every probe.
        loop {
            let s = self.index[i];
            if s == 0 {
                return None;
            }
            if slot_hash(s) == low && self.entries[slot_at(s)].is(name) {
                return Some((i, slot_at(s)));
            }
            i = (i + 1) & mask;
        }
    }

    /// Writes `s` into the first free slot from its home on.
    fn place(index: &mut [Slot], s: Slot) {
        let mask = index.len() - 1;
        let mut i = slot_hash(s) as usize & mask;
        while index[i] != 0 {
            i = (i + 1) & mask;
        }
        index[i] = s;
    }

    /// Rebuilds the index with `slots` slots for the entries as they are.
    fn reindex(&mut self, slots: usize) {
        let mut index = vec![0; slots];
        for (at, e) in self.entries.iter().enumerate() {
            if !e.is_free() {
                Self::place(&mut index, slot(e.hash, at));
            }
        }
        self.index = index;
    }

    /// The index size for `len` entries: at most half full once built.
    fn slots_for(len: usize) -> usize {
        len.saturating_mul(2).next_power_of_two().max(MIN_SLOTS)
    }

    /// Records `owner`'s grant of `name`, replacing any earlier one.
    /// Sweeps ended leases (deadline ≤ `now_ms`) when the ledger has doubled
    /// since the last sweep.
    pub fn record(&mut self, name: &Name<'_>, owner: &[u8], record: Record, now_ms: i64) {
        if let Some((_, at)) = self.find(name) {
            let e = &mut self.entries[at];
            if e.owner() != owner {
                e.bytes = Bytes::of(name.key, owner);
            }
            e.record = record;
            return;
        }
        if self.len() + 1 >= self.sweep_at {
            self.sweep(now_ms);
        }
        let entry = Entry {
            hash: name.hash,
            db: name.db,
            key_len: name.key.len() as u32,
            bytes: Bytes::of(name.key, owner),
            record,
        };
        let at = match self.free.pop() {
            Some(at) => {
                self.entries[at as usize] = entry;
                at as usize
            }
            None => {
                self.entries.push(entry);
                self.entries.len() - 1
            }
        };
        if self.len() * 2 > self.index.len() {
            self.reindex(Self::slots_for(self.len()));
        } else {
            Self::place(&mut self.index, slot(name.hash, at));
        }
    }

    /// The owner and record of `name`'s last grant.
    pub fn get(&self, name: &Name<'_>) -> Option<(&[u8], &Record)> {
        let (_, at) = self.find(name)?;
        let e = &self.entries[at];
        Some((e.owner(), &e.record))
    }

    /// The record of `name`'s last grant, if it went to `owner`.
    pub fn get_mut(&mut self, name: &Name<'_>, owner: &[u8]) -> Option<&mut Record> {
        let (_, at) = self.find(name)?;
        let e = &mut self.entries[at];
        (e.owner() == owner).then_some(&mut e.record)
    }

    /// The token of `name`'s last grant, if it went to `owner`.
    pub fn token_of(&self, name: &Name<'_>, owner: &[u8]) -> Option<i64> {
        self.get(name)
            .filter(|(o, _)| *o == owner)
            .map(|(_, r)| r.token)
    }

    /// Forgets `name`'s grant (the lock key was deleted); returns it.
    pub fn forget(&mut self, name: &Name<'_>) -> Option<Record> {
        let (hole, at) = self.find(name)?;
        let mask = self.index.len() - 1;
        self.unindex(hole, mask);
        let e = &mut self.entries[at];
        let record = e.record;
        e.free();
        // Positions fit in 32 bits: the index addresses no more.
        self.free.push(at as u32);
        self.shrink();
        Some(record)
    }

    /// Frees index slot `hole`. Backward shift: every slot of the run after
    /// the hole whose probe path crosses the hole moves into it, so that no
    /// probe stops short of its entry.
    fn unindex(&mut self, mut hole: usize, mask: usize) {
        self.index[hole] = 0;
        let mut j = hole;
        loop {
            j = (j + 1) & mask;
            let s = self.index[j];
            if s == 0 {
                return;
            }
            let home = slot_hash(s) as usize & mask;
            if (j.wrapping_sub(home) & mask) >= (j.wrapping_sub(hole) & mask) {
                self.index[hole] = s;
                self.index[j] = 0;
                hole = j;
            }
        }
    }

    /// Keeps the entries `keep` accepts, and rebuilds the index for them.
    fn retain(&mut self, mut keep: impl FnMut(&Entry) -> bool) {
        self.entries.retain(|e| !e.is_free() && keep(e));
        self.free.clear();
        self.reindex(Self::slots_for(self.entries.len()));
        self.shrink();
    }

    /// Forgets every grant of database `db` (`FLUSHDB`), or of all of them
    /// (`None`: `FLUSHALL`, a full resync, an RDB load).
    pub fn forget_db(&mut self, db: Option<i32>) {
        match db {
            Some(db) => self.retain(|e| e.db != db),
            None => *self = Ledger::new(),
        }
    }

    /// Swaps the grants of databases `a` and `b` (`SWAPDB`).
    pub fn swap_dbs(&mut self, a: i32, b: i32) {
        for e in self.entries.iter_mut().filter(|e| !e.is_free()) {
            if e.db == a {
                e.db = b;
            } else if e.db == b {
                e.db = a;
            }
        }
    }

    /// Drops the entries whose lease has ended by `now_ms`.
    pub fn sweep(&mut self, now_ms: i64) {
        if self
            .entries
            .iter()
            .any(|e| !e.is_free() && e.record.deadline_ms <= now_ms)
        {
            self.retain(|e| e.record.deadline_ms > now_ms);
        }
        self.sweep_at = (2 * self.len()).max(SWEEP_FLOOR);
    }

    /// Gives memory back after a burst of names: once most of the entries'
    /// array is free it is compacted (and keeps at most twice what it
    /// holds), and an index less than a sixteenth full is rebuilt at most
    /// half full.
    fn shrink(&mut self) {
        let len = self.len();
        if self.free.len() > 4 * MIN_SLOTS && self.free.len() > 2 * len {
            self.entries.retain(|e| !e.is_free());
            self.free.clear();
            self.entries.shrink_to(2 * len.max(MIN_SLOTS));
            self.reindex(Self::slots_for(len));
        } else if self.index.len() > 4 * MIN_SLOTS && len * 16 < self.index.len() {
            self.reindex(Self::slots_for(len));
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
        assert!(l.index.len() <= 128, "{}", l.index.len());
        // A drained ledger keeps a few dozen places (under 16 KiB), which
        // the next grants take without allocating.
        assert!(l.entries.capacity() <= 128, "{}", l.entries.capacity());
    }

    /// The table against a `HashMap`, through records, replacements and
    /// removals, with hashes squeezed into few home slots so that runs
    /// wrap around and removals shift entries back across them.
    #[test]
    fn agrees_with_a_map_under_collisions_and_removals() {
        use std::collections::HashMap;
        // xorshift64: the same operations on every run.
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for spread in [1u64, 3, 17, 1 << 40] {
            let mut l = Ledger::new();
            let mut m: HashMap<(i32, Vec<u8>), (Vec<u8>, i64)> = HashMap::new();
            for step in 0..20_000 {
                let k = next() % 300;
                let db = (k % 2) as i32;
                // Some keys too long for the slot, some owners too.
                let key = if k % 7 == 0 {
                    format!("{k}-{}", "x".repeat(90)).into_bytes()
                } else {
                    format!("{k}").into_bytes()
                };
                let name = Name {
                    db,
                    key: &key,
                    hash: (k % spread).wrapping_mul(0x1000_0000_0000_0001) ^ (k / spread) << 50,
                };
                let r = next() % 3;
                if r == 0 {
                    assert_eq!(
                        l.forget(&name).map(|r| r.token),
                        m.remove(&(db, key.clone())).map(|v| v.1),
                        "step {step}"
                    );
                } else {
                    let owner = if r == 1 {
                        b"a".to_vec()
                    } else {
                        vec![b'o'; 70]
                    };
                    let token = step as i64;
                    l.record(&name, &owner, rec(token, i64::MAX), 0);
                    m.insert((db, key.clone()), (owner, token));
                }
                assert_eq!(l.len(), m.len());
            }
            for ((db, key), (owner, token)) in &m {
                let k: u64 = std::str::from_utf8(key)
                    .unwrap()
                    .split('-')
                    .next()
                    .unwrap()
                    .parse()
                    .unwrap();
                let name = Name {
                    db: *db,
                    key,
                    hash: (k % spread).wrapping_mul(0x1000_0000_0000_0001) ^ (k / spread) << 50,
                };
                assert_eq!(l.get(&name), Some((&owner[..], &rec(*token, i64::MAX))));
            }
        }
    }

    #[test]
    fn the_prefetch_addresses_are_the_entries_touched() {
        let mut l = Ledger::new();
        assert_eq!(l.entry_at(5), None);
        l.record(&n(0, b"k"), b"a", rec(1, 100), 0);
        let name = n(0, b"k");
        let (at, size) = l.entry_at(name.hash).unwrap();
        assert_eq!(size, 128);
        let (_, i) = l.find(&name).unwrap();
        assert_eq!(at, l.entries.as_ptr().wrapping_add(i).cast());
        // A removal leaves a free place, named for the next grant, which
        // takes it.
        l.record(&n(0, b"j"), b"a", rec(2, 100), 0);
        assert_eq!(l.next_free_at(), None);
        l.forget(&name);
        assert_eq!(l.next_free_at(), Some((at, 128)));
        l.record(&n(0, b"m"), b"b", rec(3, 100), 0);
        assert_eq!(l.entry_at(n(0, b"m").hash).map(|e| e.0), Some(at));
        assert_eq!((l.len(), l.next_free_at()), (2, None));
    }
}
