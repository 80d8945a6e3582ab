//! The lock state machine, in plain Rust.
//!
//! The three operations are written once, against the [`Store`] trait. The
//! server implements `Store` over real keys (`crate::store`); [`MemoryStore`]
//! implements it over a `HashMap` with an injectable clock, so every decision
//! is unit-tested without Redis (the redis-cell pattern).
//!
//! A `Store` is a view of *one* lock key and *one* caller (owner), so the
//! operations below take no key or owner arguments.

use crate::args::expire_at;
pub use crate::error::LockError;
use crate::ledger::{Ledger, Name, Record};
use crate::tokens::{Terms, TokenMode};

/// What a server process remembers between commands: its token terms and
/// its ledger of the grants it wrote.
#[derive(Debug)]
pub struct Process {
    /// The token terms and per-name high-water marks.
    pub terms: Terms,
    /// The grants that may still stand.
    pub ledger: Ledger,
}

impl Process {
    /// The state at load, before the first term opens.
    pub const NEW: Process = Process {
        terms: Terms::UNOPENED,
        ledger: Ledger::new(),
    };

    /// The memory a command on `key` reads in this state (the name's entry
    /// in the ledger; for a grant, `with_marks`, also the place its entry
    /// goes and the name's high-water mark cells), as
    /// `(address, bytes)` for a prefetch issued before the server looks the
    /// key up; nothing is read through them.
    pub fn lines_of(&self, key: &[u8], with_marks: bool) -> [Option<(*const u8, usize)>; 4] {
        let hash = self.terms.hash(key);
        let mut lines = [self.ledger.entry_at(hash), None, None, None];
        if with_marks {
            // A grant: where its entry goes, and the name's mark cells.
            lines[1] = self.ledger.next_free_at();
            let [a, b] = self.terms.cells_at(hash);
            lines[2] = a.map(|at| (at, 8));
            lines[3] = b.map(|at| (at, 8));
        }
        lines
    }

    /// `key` in database `db`, hashed once for the ledger and the marks.
    /// The hash key is drawn when the first term opens (at load): the
    /// ledger holds nothing before.
    pub fn name<'a>(&self, db: i32, key: &'a [u8]) -> Name<'a> {
        Name {
            db,
            key,
            hash: self.terms.hash(key),
        }
    }
}

/// How grants pick their token and how long fence keys are kept: the
/// module's `token-mode` and `fence-retention` configs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// How tokens are picked.
    pub mode: TokenMode,
    /// How long a fence key outlives the last lease of its name, in ms; 0
    /// keeps it forever. Counter mode always keeps it: its tokens restart
    /// when the fence key is lost.
    pub retention_ms: i64,
}

impl Policy {
    /// When the fence key of a lease that ends at `deadline_ms` expires:
    /// `None` when it is kept.
    pub fn fence_until(&self, deadline_ms: i64) -> Option<i64> {
        (self.mode == TokenMode::Term && self.retention_ms > 0)
            .then(|| deadline_ms.saturating_add(self.retention_ms))
    }

    /// Where a fence key that expires at `until` must move for a lease that
    /// now ends at `deadline_ms`: `None` to leave it. A kept fence key stays
    /// kept (it may hold a counter); an expiring one moves to two retentions
    /// after the lease once it is less than one retention after it, so that
    /// it always outlives the lease by one to two retentions and most
    /// refreshes leave it alone; under a policy that keeps fence keys, it
    /// becomes kept.
    pub(crate) fn fence_move(&self, until: Option<i64>, deadline_ms: i64) -> Option<Option<i64>> {
        match (until, self.fence_until(deadline_ms)) {
            (Some(until), Some(at_least)) if until < at_least => {
                Some(Some(at_least.saturating_add(self.retention_ms)))
            }
            (Some(_), None) => Some(None),
            _ => None,
        }
    }

    /// Where the fence key must move when a lease is released at `now_ms`:
    /// to one retention from now when it would otherwise outlive the release
    /// by more than two (a lease released long before its deadline).
    pub(crate) fn fence_move_at_release(&self, until: Option<i64>, now_ms: i64) -> Option<i64> {
        let soon = self.fence_until(now_ms)?;
        (until? > soon.saturating_add(self.retention_ms)).then_some(soon)
    }
}

/// What the lock key holds, relative to the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// The key does not exist (or has expired).
    Free,
    /// The key holds exactly the caller's owner id.
    Mine,
    /// The key holds some other value.
    Other,
}

/// One lock key as seen by one caller.
///
/// Reads come first and may fail. A grant's writes fail only if the server
/// refuses them, which no input can cause; [`Store::write_grant`] then reports it,
/// leaving the keyspace consistent: at worst a token is skipped (see its
/// docs).
pub trait Store {
    /// Current time in ms since the Unix epoch (the server's wall clock).
    fn now_ms(&self) -> i64;
    /// The database of the lock key.
    fn db(&self) -> i32;
    /// The lock key's name.
    fn key(&self) -> &[u8];
    /// The caller's owner id.
    fn owner(&self) -> &[u8];
    /// Compares the lock key with the caller's owner.
    fn probe(&mut self) -> Result<Probe, LockError>;
    /// The last token issued for this lock name (0 if none yet).
    fn last_token(&mut self) -> Result<i64, LockError>;
    /// The fence key's expiry: `Some(None)` when it has none, `None` when
    /// it does not exist.
    fn fence_expiry(&mut self) -> Option<Option<i64>>;
    /// Sets the fence counter to `token` (expiring at `fence_until_ms`, or
    /// kept) and the lock key to the caller's owner expiring at
    /// `expire_at_ms`, in that order.
    ///
    /// # Errors
    ///
    /// [`LockError::WriteFailed`] if the server refused a write. A refused
    /// fence write changes nothing; a refused lock write leaves the fence
    /// advanced (and replicated), which only skips a token.
    fn write_grant(
        &mut self,
        expire_at_ms: i64,
        token: i64,
        fence_until_ms: Option<i64>,
    ) -> Result<(), LockError>;
    /// Moves the lock key's expiry to `expire_at_ms`; the value is untouched.
    fn extend(&mut self, expire_at_ms: i64);
    /// Moves an existing fence key's expiry to `until_ms` (`None`: keeps it
    /// forever); the value is untouched.
    fn extend_fence(&mut self, until_ms: Option<i64>);
    /// Deletes the lock key (never the fence key).
    fn remove(&mut self);
}

/// `SPACELOCK.ACQUIRE`: `Some(token)` when granted, `None` when the key
/// exists (whoever holds it, the caller included, as with `SET NX`).
///
/// The token follows the rule of [`crate::tokens`]: `max(fence + 1, floor,
/// guard + 1)` in [`TokenMode::Term`], `fence + 1` in [`TokenMode::Counter`].
/// The grant goes into the process's ledger.
pub fn acquire<S: Store>(
    store: &mut S,
    ttl_ms: i64,
    process: &mut Process,
    policy: Policy,
) -> Result<Option<i64>, LockError> {
    let now = store.now_ms();
    let at = expire_at(now, ttl_ms)?;
    if store.probe()? != Probe::Free {
        return Ok(None);
    }
    let fence = store.last_token()?;
    let hash = process.terms.hash(store.key());
    let token = process.terms.peek_hashed(hash, fence, policy.mode)?;
    let fence_until = policy.fence_until(at);
    store.write_grant(at, token, fence_until)?;
    process.terms.issued_hashed(hash, token);
    let name = Name {
        db: store.db(),
        key: store.key(),
        hash,
    };
    let record = Record {
        token,
        deadline_ms: at,
        fence_until_ms: fence_until,
    };
    process.ledger.record(&name, store.owner(), record, now);
    Ok(Some(token))
}

/// `SPACELOCK.REFRESH`: `true` if the caller held the lock and its TTL was
/// reset to `ttl_ms`. The fence key's expiry follows the lease when it
/// would otherwise expire less than half a retention after it; a grant the
/// ledger does not know (written before a restart, or by the old primary)
/// is recorded from its fence key.
pub fn refresh<S: Store>(
    store: &mut S,
    ttl_ms: i64,
    process: &mut Process,
    policy: Policy,
) -> Result<bool, LockError> {
    let now = store.now_ms();
    let at = expire_at(now, ttl_ms)?;
    if store.probe()? != Probe::Mine {
        return Ok(false);
    }
    store.extend(at);
    let hash = process.terms.hash(store.key());
    let ledger = &mut process.ledger;
    let name = Name {
        db: store.db(),
        key: store.key(),
        hash,
    };
    if let Some(r) = ledger.get_mut(&name, store.owner()) {
        r.deadline_ms = at;
        if let Some(until) = policy.fence_move(r.fence_until_ms, at) {
            r.fence_until_ms = until;
            store.extend_fence(until);
        }
        return Ok(true);
    }
    // Not in the ledger: learn the grant from its fence key, if it has one
    // (a lock taken with the old `SET NX` has none, and no token).
    let Some(until) = store.fence_expiry() else {
        return Ok(true);
    };
    let Ok(token) = store.last_token() else {
        return Ok(true);
    };
    let mut fence_until = until;
    if let Some(moved) = policy.fence_move(until, at) {
        fence_until = moved;
        store.extend_fence(moved);
    }
    let record = Record {
        token,
        deadline_ms: at,
        fence_until_ms: fence_until,
    };
    let name = Name {
        db: store.db(),
        key: store.key(),
        hash,
    };
    ledger.record(&name, store.owner(), record, now);
    Ok(true)
}

/// `SPACELOCK.RELEASE`: `true` if the caller held the lock and it was
/// deleted. The fence key then expires one to two retentions later: it
/// keeps its expiry unless that is further away (a lease released long
/// before its deadline).
pub fn release<S: Store>(
    store: &mut S,
    process: &mut Process,
    policy: Policy,
) -> Result<bool, LockError> {
    if store.probe()? != Probe::Mine {
        return Ok(false);
    }
    store.remove();
    let name = process.name(store.db(), store.key());
    let record = process.ledger.forget(&name);
    let until = record.and_then(|r| r.fence_until_ms);
    if let Some(at) = policy.fence_move_at_release(until, store.now_ms()) {
        store.extend_fence(Some(at));
    }
    Ok(true)
}

/// The token of the grant under which `owner` holds the lock key now (the
/// lock key is known to hold `owner`): the ledger's, else the fence key's
/// (`fence`, read only when needed: 0 when missing).
pub fn current_token(
    ledger: &Ledger,
    name: &Name<'_>,
    owner: &[u8],
    fence: impl FnOnce() -> Result<i64, LockError>,
) -> Result<i64, LockError> {
    match ledger.token_of(name, owner) {
        Some(token) => Ok(token),
        None => fence(),
    }
}

/// Parses a fence counter value as stored by spacelock (a decimal ≥ 0).
pub fn parse_token(bytes: &[u8]) -> Result<i64, LockError> {
    match crate::args::parse_i64(bytes) {
        Some(t) if t >= 0 => Ok(t),
        _ => Err(LockError::FenceCorrupt),
    }
}

/// A value in [`MemoryStore`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// A string, as written by SET.
    Str(Vec<u8>),
    /// A hash, as written by HSET: field → value (a shared or counted lock,
    /// see [`crate::shared`], or anyone's hash).
    Hash(std::collections::BTreeMap<Vec<u8>, Vec<u8>>),
    /// Any other type (a list, a set, …).
    Other,
}

/// An in-memory keyspace with expiry and a settable clock, for tests and for
/// the reference model of the differential test.
#[derive(Debug, Default, Clone)]
pub struct MemoryStore {
    /// Current time in ms.
    pub now: i64,
    /// key → (value, absolute expiry in ms or None).
    pub keys: std::collections::HashMap<Vec<u8>, (Value, Option<i64>)>,
}

impl MemoryStore {
    /// An empty keyspace at time `now`.
    pub fn at(now: i64) -> Self {
        MemoryStore {
            now,
            keys: Default::default(),
        }
    }

    /// The live value at `key` (expired keys read as missing).
    pub fn get(&self, key: &[u8]) -> Option<&Value> {
        match self.keys.get(key) {
            Some((v, exp)) if exp.is_none_or(|e| e > self.now) => Some(v),
            _ => None,
        }
    }

    /// The live absolute expiry of `key`.
    pub fn expire_at(&self, key: &[u8]) -> Option<i64> {
        self.get(key)?;
        self.keys.get(key).and_then(|(_, e)| *e)
    }

    /// A [`Store`] view of `key` for `owner`.
    pub fn view<'a>(&'a mut self, key: &'a [u8], owner: &'a [u8]) -> MemoryView<'a> {
        MemoryView {
            fence: crate::fence::fence_key(key),
            store: self,
            key,
            owner,
        }
    }
}

/// [`Store`] (and [`crate::shared::SharedStore`]) over a [`MemoryStore`].
pub struct MemoryView<'a> {
    pub(crate) store: &'a mut MemoryStore,
    pub(crate) key: &'a [u8],
    owner: &'a [u8],
    pub(crate) fence: Vec<u8>,
}

impl Store for MemoryView<'_> {
    fn now_ms(&self) -> i64 {
        self.store.now
    }
    fn db(&self) -> i32 {
        0
    }
    fn key(&self) -> &[u8] {
        self.key
    }
    fn owner(&self) -> &[u8] {
        self.owner
    }
    fn probe(&mut self) -> Result<Probe, LockError> {
        match self.store.get(self.key) {
            None => Ok(Probe::Free),
            Some(Value::Other) => Err(LockError::LockWrongType),
            Some(Value::Str(v)) if v == self.owner => Ok(Probe::Mine),
            Some(Value::Str(_)) => Ok(Probe::Other),
            // A shared lock is held (by readers); a counted lock is the
            // wrong mode; anyone else's hash is the wrong type, as before.
            Some(Value::Hash(h)) => crate::shared::exclusive_probe(
                h.get(crate::shared::MODE_FIELD)
                    .and_then(|m| crate::shared::KeyMode::parse(m)),
            ),
        }
    }
    fn last_token(&mut self) -> Result<i64, LockError> {
        match self.store.get(&self.fence) {
            None => Ok(0),
            Some(Value::Other | Value::Hash(_)) => Err(LockError::FenceWrongType),
            Some(Value::Str(v)) => parse_token(v),
        }
    }
    fn fence_expiry(&mut self) -> Option<Option<i64>> {
        self.store.get(&self.fence)?;
        Some(self.store.expire_at(&self.fence))
    }
    fn write_grant(
        &mut self,
        expire_at_ms: i64,
        token: i64,
        fence_until_ms: Option<i64>,
    ) -> Result<(), LockError> {
        self.store.keys.insert(
            self.fence.clone(),
            (Value::Str(token.to_string().into_bytes()), fence_until_ms),
        );
        self.store.keys.insert(
            self.key.to_vec(),
            (Value::Str(self.owner.to_vec()), Some(expire_at_ms)),
        );
        Ok(())
    }
    fn extend(&mut self, expire_at_ms: i64) {
        if let Some(entry) = self.store.keys.get_mut(self.key) {
            entry.1 = Some(expire_at_ms);
        }
    }
    fn extend_fence(&mut self, until_ms: Option<i64>) {
        if self.store.get(&self.fence).is_some() {
            if let Some(entry) = self.store.keys.get_mut(&self.fence) {
                entry.1 = until_ms;
            }
        }
    }
    fn remove(&mut self) {
        self.store.keys.remove(self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::args::ArgError;

    const T0: i64 = 1_700_000_000_000;
    /// The first token of the test process's term.
    const F: i64 = T0 * crate::tokens::PER_MS;

    const COUNTER: Policy = Policy {
        mode: TokenMode::Counter,
        retention_ms: 0,
    };
    const TERM: Policy = Policy {
        mode: TokenMode::Term,
        retention_ms: 0,
    };

    fn process() -> Process {
        Process {
            terms: Terms::open_at(T0),
            ledger: Ledger::new(),
        }
    }

    /// A plain counter, for readable token sequences.
    fn acq(v: &mut MemoryView<'_>, ttl: i64) -> Result<Option<i64>, LockError> {
        acquire(v, ttl, &mut process(), COUNTER)
    }

    #[derive(Debug)]
    enum Op {
        Acquire(&'static [u8], i64),
        Refresh(&'static [u8], i64),
        Release(&'static [u8]),
        Advance(i64),
    }
    use Op::*;

    /// What each op replies: Some(token)/None as i64 (0 for nil), or 1/0.
    fn run(ops: &[(Op, Result<i64, LockError>)]) -> MemoryStore {
        let mut s = MemoryStore::at(T0);
        for (i, (op, want)) in ops.iter().enumerate() {
            let got = match op {
                Acquire(o, ttl) => acq(&mut s.view(b"k", o), *ttl).map(|t| t.unwrap_or(0)),
                Refresh(o, ttl) => {
                    refresh(&mut s.view(b"k", o), *ttl, &mut process(), COUNTER).map(i64::from)
                }
                Release(o) => release(&mut s.view(b"k", o), &mut process(), COUNTER).map(i64::from),
                Advance(ms) => {
                    s.now += ms;
                    Ok(0)
                }
            };
            assert_eq!(&got, want, "step {i}: {op:?}");
        }
        s
    }

    #[test]
    fn table_of_transitions() {
        // The semantics of the existing Lua-based service (the `SET NX PX` +
        // Lua recipe), one row per step: acquire is SET NX (even the
        // holder gets nil), refresh/release are owner-checked.
        run(&[
            (Acquire(b"a", 1000), Ok(1)),
            (Acquire(b"a", 1000), Ok(0)),
            (Acquire(b"b", 1000), Ok(0)),
            (Refresh(b"b", 1000), Ok(0)),
            (Release(b"b"), Ok(0)),
            (Refresh(b"a", 5000), Ok(1)),
            (Advance(4999), Ok(0)),
            (Acquire(b"b", 1000), Ok(0)),
            (Advance(1), Ok(0)),
            // Expired: free for anyone, and the token keeps increasing.
            (Refresh(b"a", 1000), Ok(0)),
            (Release(b"a"), Ok(0)),
            (Acquire(b"b", 1000), Ok(2)),
            (Release(b"b"), Ok(1)),
            (Release(b"b"), Ok(0)),
            (Acquire(b"a", 1000), Ok(3)),
        ]);
    }

    #[test]
    fn refresh_sets_absolute_expiry_without_touching_value() {
        let mut s = run(&[(Acquire(b"a", 1000), Ok(1)), (Advance(400), Ok(0))]);
        assert!(refresh(&mut s.view(b"k", b"a"), 1000, &mut process(), COUNTER).unwrap());
        assert_eq!(s.expire_at(b"k"), Some(T0 + 1400));
        assert_eq!(s.get(b"k"), Some(&Value::Str(b"a".to_vec())));
    }

    #[test]
    fn errors_change_nothing() {
        let mut s = MemoryStore::at(T0);
        s.keys.insert(b"k".to_vec(), (Value::Other, None));
        let before = s.keys.clone();
        assert_eq!(
            acq(&mut s.view(b"k", b"a"), 10),
            Err(LockError::LockWrongType)
        );
        assert_eq!(
            refresh(&mut s.view(b"k", b"a"), 10, &mut process(), COUNTER),
            Err(LockError::LockWrongType)
        );
        assert_eq!(
            release(&mut s.view(b"k", b"a"), &mut process(), COUNTER),
            Err(LockError::LockWrongType)
        );
        assert_eq!(s.keys, before);

        let mut s = MemoryStore::at(T0);
        let fence = crate::fence::fence_key(b"k");
        for (value, err) in [
            (Value::Other, LockError::FenceWrongType),
            (Value::Str(b"abc".to_vec()), LockError::FenceCorrupt),
            (Value::Str(b"-3".to_vec()), LockError::FenceCorrupt),
            (
                Value::Str(i64::MAX.to_string().into_bytes()),
                LockError::TokenOverflow,
            ),
        ] {
            s.keys.insert(fence.clone(), (value, None));
            let before = s.keys.clone();
            assert_eq!(acq(&mut s.view(b"k", b"a"), 10), Err(err.clone()));
            let mut p = process();
            let got = acquire(&mut s.view(b"k", b"a"), 10, &mut p, TERM);
            assert_eq!(got, Err(err));
            assert_eq!(p.terms.highest(), F - 1, "a failed grant issues nothing");
            assert!(p.ledger.is_empty());
            assert_eq!(s.keys, before);
        }
    }

    #[test]
    fn expiry_overflow_changes_nothing() {
        let mut s = MemoryStore::at(i64::MAX - 5);
        assert_eq!(
            acq(&mut s.view(b"k", b"a"), 10),
            Err(LockError::Arg(ArgError::TtlOverflow))
        );
        assert!(s.keys.is_empty());
    }

    #[test]
    fn tokens_are_per_lock_name_and_survive_deletion_of_the_lock() {
        let mut s = MemoryStore::at(T0);
        assert_eq!(acq(&mut s.view(b"x", b"o"), 10), Ok(Some(1)));
        assert_eq!(acq(&mut s.view(b"y", b"o"), 10), Ok(Some(1)));
        s.keys.remove(b"x".as_slice());
        assert_eq!(acq(&mut s.view(b"x", b"o"), 10), Ok(Some(2)));
        // A lock taken by plain SET NX (the existing Lua-based service) is
        // released by its owner.
        s.keys
            .insert(b"z".to_vec(), (Value::Str(b"lua".to_vec()), Some(T0 + 10)));
        assert_eq!(
            release(&mut s.view(b"z", b"lua"), &mut process(), COUNTER),
            Ok(true)
        );
    }

    #[test]
    fn term_tokens_survive_the_loss_of_fence_keys() {
        // One process (one Terms), two names; fence keys vanish (FLUSHALL,
        // eviction) between grants. Every token is above every earlier one.
        let mut s = MemoryStore::at(T0);
        let mut p = process();
        let mut grant = |s: &mut MemoryStore, key: &'static [u8]| {
            let got = acquire(&mut s.view(key, b"o"), 10, &mut p, TERM);
            s.keys.remove(key);
            got.unwrap().unwrap()
        };
        assert_eq!(grant(&mut s, b"x"), F);
        assert_eq!(grant(&mut s, b"x"), F + 1);
        // Each name counts on its own.
        assert_eq!(grant(&mut s, b"y"), F);
        s.keys.clear(); // FLUSHALL
        assert_eq!(grant(&mut s, b"x"), F + 2);
        assert_eq!(grant(&mut s, b"y"), F + 1);
        // GET on the fence key still shows the last token of the name.
        let fence = crate::fence::fence_key(b"y");
        assert_eq!(
            s.get(&fence),
            Some(&Value::Str((F + 1).to_string().into_bytes()))
        );
    }

    #[test]
    fn a_refused_write_is_an_error_and_issues_nothing() {
        struct Refusing(MemoryStore);
        impl Store for Refusing {
            fn now_ms(&self) -> i64 {
                self.0.now
            }
            fn probe(&mut self) -> Result<Probe, LockError> {
                Ok(Probe::Free)
            }
            fn db(&self) -> i32 {
                0
            }
            fn key(&self) -> &[u8] {
                b"k"
            }
            fn owner(&self) -> &[u8] {
                b"o"
            }
            fn last_token(&mut self) -> Result<i64, LockError> {
                Ok(0)
            }
            fn fence_expiry(&mut self) -> Option<Option<i64>> {
                None
            }
            fn write_grant(&mut self, _: i64, _: i64, _: Option<i64>) -> Result<(), LockError> {
                Err(LockError::WriteFailed)
            }
            fn extend(&mut self, _: i64) {}
            fn extend_fence(&mut self, _: Option<i64>) {}
            fn remove(&mut self) {}
        }
        let mut p = process();
        let mut store = Refusing(MemoryStore::at(T0));
        assert_eq!(
            acquire(&mut store, 10, &mut p, TERM),
            Err(LockError::WriteFailed)
        );
        assert_eq!(p.terms.highest(), F - 1, "nothing issued");
        assert_eq!(p.terms.peek(b"k", 0, TokenMode::Term), Ok(F));
        assert!(p.ledger.is_empty());
    }

    #[test]
    fn fence_keys_expire_a_retention_after_the_last_lease() {
        let policy = Policy {
            mode: TokenMode::Term,
            retention_ms: 10_000,
        };
        let fence = crate::fence::fence_key(b"k");
        let mut s = MemoryStore::at(T0);
        let mut p = process();
        let token = acquire(&mut s.view(b"k", b"a"), 1000, &mut p, policy)
            .unwrap()
            .unwrap();
        assert_eq!(s.expire_at(&fence), Some(T0 + 1000 + 10_000));
        // A refresh that leaves it less than a retention after the lease
        // moves it two retentions after the lease ...
        s.now += 500;
        assert_eq!(
            refresh(&mut s.view(b"k", b"a"), 1000, &mut p, policy),
            Ok(true)
        );
        assert_eq!(s.expire_at(&fence), Some(T0 + 1500 + 20_000));
        // ... so that refreshing for a retention moves it once at most, and
        // it always outlives the lease by one to two retentions.
        let mut moves = 0;
        for _ in 0..20 {
            s.now += 500;
            let before = s.expire_at(&fence);
            assert_eq!(
                refresh(&mut s.view(b"k", b"a"), 1000, &mut p, policy),
                Ok(true)
            );
            moves += usize::from(s.expire_at(&fence) != before);
            let lease_end = s.expire_at(b"k").unwrap();
            let until = s.expire_at(&fence).unwrap();
            assert!((lease_end + 10_000..=lease_end + 20_000).contains(&until));
        }
        assert!(moves <= 1, "{moves} moves");
        // Release: one to two retentions from now.
        assert_eq!(release(&mut s.view(b"k", b"a"), &mut p, policy), Ok(true));
        assert!(p.ledger.is_empty());
        let until = s.expire_at(&fence).unwrap();
        assert!((s.now + 10_000..=s.now + 20_000).contains(&until));
        // A lease released long before its deadline moves it closer.
        acquire(&mut s.view(b"long", b"a"), 600_000, &mut p, policy).unwrap();
        assert_eq!(
            release(&mut s.view(b"long", b"a"), &mut p, policy),
            Ok(true)
        );
        let long_fence = crate::fence::fence_key(b"long");
        assert_eq!(s.expire_at(&long_fence), Some(s.now + 10_000));
        // Once it has expired, the name costs nothing, and its next token
        // is still above the last.
        s.now = until;
        assert_eq!(s.get(&fence), None);
        let again = acquire(&mut s.view(b"k", b"b"), 1000, &mut p, policy)
            .unwrap()
            .unwrap();
        assert!(again > token);
    }

    #[test]
    fn zero_retention_and_counter_mode_keep_fence_keys() {
        let fence = crate::fence::fence_key(b"k");
        for policy in [
            TERM,
            COUNTER,
            Policy {
                mode: TokenMode::Counter,
                retention_ms: 5_000,
            },
        ] {
            let mut s = MemoryStore::at(T0);
            let mut p = process();
            acquire(&mut s.view(b"k", b"a"), 1000, &mut p, policy).unwrap();
            assert_eq!(s.expire_at(&fence), None, "{policy:?}");
            s.now += 800;
            refresh(&mut s.view(b"k", b"a"), 1000, &mut p, policy).unwrap();
            assert_eq!(s.expire_at(&fence), None, "{policy:?}");
        }
        // A fence key that expires, under a policy that now keeps them.
        let mut s = MemoryStore::at(T0);
        let mut p = process();
        let retain = Policy {
            mode: TokenMode::Term,
            retention_ms: 5_000,
        };
        acquire(&mut s.view(b"k", b"a"), 1000, &mut p, retain).unwrap();
        refresh(&mut s.view(b"k", b"a"), 1000, &mut p, TERM).unwrap();
        assert_eq!(s.expire_at(&fence), None);
    }

    #[test]
    fn the_ledger_knows_the_current_grant_whatever_the_fence_key_says() {
        let mut s = MemoryStore::at(T0);
        let mut p = process();
        let token = acquire(&mut s.view(b"k", b"a"), 1000, &mut p, TERM)
            .unwrap()
            .unwrap();
        let fence = crate::fence::fence_key(b"k");
        for tampered in [None, Some(b"7".to_vec()), Some(b"junk".to_vec())] {
            match tampered {
                None => s.keys.remove(&fence),
                Some(v) => s.keys.insert(fence.clone(), (Value::Str(v), None)),
            };
            let got = current_token(&p.ledger, &p.name(0, b"k"), b"a", || {
                s.view(b"k", b"a").last_token()
            });
            assert_eq!(got, Ok(token));
        }
        // Another owner's grant is not this one: the fence key answers.
        s.keys
            .insert(fence.clone(), (Value::Str(b"9".to_vec()), None));
        let got = current_token(&p.ledger, &p.name(0, b"k"), b"b", || {
            s.view(b"k", b"b").last_token()
        });
        assert_eq!(got, Ok(9));
    }

    #[test]
    fn a_grant_from_before_a_restart_is_learned_at_its_refresh() {
        let mut s = MemoryStore::at(T0);
        acquire(&mut s.view(b"k", b"a"), 1000, &mut process(), TERM).unwrap();
        // A new process: empty ledger.
        let mut p = process();
        assert_eq!(p.ledger.token_of(&p.name(0, b"k"), b"a"), None);
        assert_eq!(
            refresh(&mut s.view(b"k", b"a"), 1000, &mut p, TERM),
            Ok(true)
        );
        assert_eq!(p.ledger.token_of(&p.name(0, b"k"), b"a"), Some(F));
        // A lock taken with plain SET NX has no fence key: nothing learned.
        s.keys
            .insert(b"z".to_vec(), (Value::Str(b"lua".to_vec()), Some(T0 + 10)));
        assert_eq!(
            refresh(&mut s.view(b"z", b"lua"), 1000, &mut p, TERM),
            Ok(true)
        );
        assert_eq!(p.ledger.get(&p.name(0, b"z")), None);
    }

    #[test]
    fn error_replies_carry_code_words() {
        for e in [
            LockError::LockWrongType,
            LockError::FenceWrongType,
            LockError::FenceCorrupt,
            LockError::TokenOverflow,
            LockError::WriteFailed,
            LockError::Arg(ArgError::OwnerEmpty),
        ] {
            let msg = e.to_string();
            assert!(
                msg.starts_with("ERR ") || msg.starts_with("WRONGTYPE "),
                "{msg}"
            );
        }
    }
}
