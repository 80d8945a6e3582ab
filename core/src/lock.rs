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
use crate::tokens::{Terms, TokenMode};

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
    /// Compares the lock key with the caller's owner.
    fn probe(&mut self) -> Result<Probe, LockError>;
    /// The last token issued for this lock name (0 if none yet).
    fn last_token(&mut self) -> Result<i64, LockError>;
    /// Sets the fence counter to `token` and the lock key to the caller's
    /// owner expiring at `expire_at_ms`, in that order.
    ///
    /// # Errors
    ///
    /// [`LockError::WriteFailed`] if the server refused a write. A refused
    /// fence write changes nothing; a refused lock write leaves the fence
    /// advanced (and replicated), which only skips a token.
    fn write_grant(&mut self, expire_at_ms: i64, token: i64) -> Result<(), LockError>;
    /// Moves the lock key's expiry to `expire_at_ms`; the value is untouched.
    fn extend(&mut self, expire_at_ms: i64);
    /// Deletes the lock key (never the fence key).
    fn remove(&mut self);
}

/// `SPACELOCK.ACQUIRE`: `Some(token)` when granted, `None` when the key
/// exists (whoever holds it, the caller included, as with `SET NX`).
///
/// The token follows the rule of [`crate::tokens`]: `max(fence + 1, next)`
/// in [`TokenMode::Term`], `fence + 1` in [`TokenMode::Counter`].
pub fn acquire<S: Store>(
    store: &mut S,
    ttl_ms: i64,
    terms: &mut Terms,
    mode: TokenMode,
) -> Result<Option<i64>, LockError> {
    let at = expire_at(store.now_ms(), ttl_ms)?;
    if store.probe()? != Probe::Free {
        return Ok(None);
    }
    let token = terms.peek(store.last_token()?, mode)?;
    store.write_grant(at, token)?;
    terms.issued(token);
    Ok(Some(token))
}

/// `SPACELOCK.REFRESH`: `true` if the caller held the lock and its TTL was
/// reset to `ttl_ms`.
pub fn refresh<S: Store>(store: &mut S, ttl_ms: i64) -> Result<bool, LockError> {
    let at = expire_at(store.now_ms(), ttl_ms)?;
    if store.probe()? != Probe::Mine {
        return Ok(false);
    }
    store.extend(at);
    Ok(true)
}

/// `SPACELOCK.RELEASE`: `true` if the caller held the lock and it was deleted.
pub fn release<S: Store>(store: &mut S) -> Result<bool, LockError> {
    if store.probe()? != Probe::Mine {
        return Ok(false);
    }
    store.remove();
    Ok(true)
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
    /// Any non-string type (a list, a hash, …).
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

/// [`Store`] over a [`MemoryStore`].
pub struct MemoryView<'a> {
    store: &'a mut MemoryStore,
    key: &'a [u8],
    owner: &'a [u8],
    fence: Vec<u8>,
}

impl Store for MemoryView<'_> {
    fn now_ms(&self) -> i64 {
        self.store.now
    }
    fn probe(&mut self) -> Result<Probe, LockError> {
        match self.store.get(self.key) {
            None => Ok(Probe::Free),
            Some(Value::Other) => Err(LockError::LockWrongType),
            Some(Value::Str(v)) if v == self.owner => Ok(Probe::Mine),
            Some(Value::Str(_)) => Ok(Probe::Other),
        }
    }
    fn last_token(&mut self) -> Result<i64, LockError> {
        match self.store.get(&self.fence) {
            None => Ok(0),
            Some(Value::Other) => Err(LockError::FenceWrongType),
            Some(Value::Str(v)) => parse_token(v),
        }
    }
    fn write_grant(&mut self, expire_at_ms: i64, token: i64) -> Result<(), LockError> {
        self.store.keys.insert(
            self.fence.clone(),
            (Value::Str(token.to_string().into_bytes()), None),
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

    /// A plain counter, for readable token sequences.
    fn acq(v: &mut MemoryView<'_>, ttl: i64) -> Result<Option<i64>, LockError> {
        acquire(v, ttl, &mut Terms::open_at(T0), TokenMode::Counter)
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
                Refresh(o, ttl) => refresh(&mut s.view(b"k", o), *ttl).map(i64::from),
                Release(o) => release(&mut s.view(b"k", o)).map(i64::from),
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
        assert!(refresh(&mut s.view(b"k", b"a"), 1000).unwrap());
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
            refresh(&mut s.view(b"k", b"a"), 10),
            Err(LockError::LockWrongType)
        );
        assert_eq!(
            release(&mut s.view(b"k", b"a")),
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
            let mut terms = Terms::open_at(T0);
            let got = acquire(&mut s.view(b"k", b"a"), 10, &mut terms, TokenMode::Term);
            assert_eq!(got, Err(err));
            assert_eq!(terms, Terms::open_at(T0), "a failed grant issues nothing");
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
        assert_eq!(release(&mut s.view(b"z", b"lua")), Ok(true));
    }

    #[test]
    fn term_tokens_survive_the_loss_of_fence_keys() {
        // One process (one Terms), two names; fence keys vanish (FLUSHALL,
        // eviction) between grants. Every token is above every earlier one.
        let mut s = MemoryStore::at(T0);
        let mut t = Terms::open_at(T0);
        let mut grant = |s: &mut MemoryStore, key: &'static [u8]| {
            let got = acquire(&mut s.view(key, b"o"), 10, &mut t, TokenMode::Term);
            s.keys.remove(key);
            got.unwrap().unwrap()
        };
        assert_eq!(grant(&mut s, b"x"), F);
        assert_eq!(grant(&mut s, b"x"), F + 1);
        assert_eq!(grant(&mut s, b"y"), F + 2);
        s.keys.clear(); // FLUSHALL
        assert_eq!(grant(&mut s, b"x"), F + 3);
        assert_eq!(grant(&mut s, b"y"), F + 4);
        // GET on the fence key still shows the last token of the name.
        let fence = crate::fence::fence_key(b"y");
        assert_eq!(
            s.get(&fence),
            Some(&Value::Str((F + 4).to_string().into_bytes()))
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
            fn last_token(&mut self) -> Result<i64, LockError> {
                Ok(0)
            }
            fn write_grant(&mut self, _: i64, _: i64) -> Result<(), LockError> {
                Err(LockError::WriteFailed)
            }
            fn extend(&mut self, _: i64) {}
            fn remove(&mut self) {}
        }
        let mut t = Terms::open_at(T0);
        let mut store = Refusing(MemoryStore::at(T0));
        assert_eq!(
            acquire(&mut store, 10, &mut t, TokenMode::Term),
            Err(LockError::WriteFailed)
        );
        assert_eq!(t.next(), F, "nothing issued");
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
