//! Which fencing token the next grant of a lock issues.
//!
//! A token must never be issued twice for a lock name, and must never go
//! backwards, even when the fence key that remembers the last token is lost:
//! a restart without persistence, `FLUSHALL`, eviction, a failover that lost
//! writes. The fence key alone cannot promise that, because whatever erased
//! it erased the memory of the tokens too. So tokens also come from a
//! **term**, kept by the server process:
//!
//! * A term opens whenever a server starts acting as a primary: when the
//!   module loads, when a replica is promoted, and by hand
//!   (`SPACELOCK.NEWTERM`, after restoring a backup say). Its **floor** is
//!   its start on the wall clock in ms × 1,000, so a token reads as "term
//!   start in ms, then a counter".
//! * A grant of a name issues `max(fence + 1, floor, guard + 1)`, where
//!   `guard` is at least every token the process issued for that name
//!   before (per-name high-water marks in a fixed table, see [`Terms`]). So
//!   within a process a name's token is above every token it had before,
//!   whatever happened to its fence key (`FLUSHALL`, `SWAPDB`, `MOVE`,
//!   eviction, `DEL`, expiry after the retention time), and each name
//!   counts on its own: grants of other names do not move it.
//! * Across terms, tokens grow with the clock. The assumption, and the only
//!   one: **a new term's floor (its start ms × 1,000, on its own server's
//!   clock) is above every token issued before it for the names it may
//!   grant.** When those tokens came from the previous term, that is: the
//!   new term starts later than the previous term's start plus 1 ms for
//!   every thousand tokens that any *one* name was issued in it
//!   ([`bound_holds`], for the tests at its edge; [`Terms::lead_ms`] shows
//!   it live). One name gets well under a thousand grants per millisecond
//!   (each needs an acquire and a release; a whole server manages a few
//!   hundred), so a name's tokens never run ahead of the clock, and with
//!   NTP-synchronised clocks the bound holds for any term older than a few
//!   times the clock skew. A token
//!   that came from a fence key set higher elsewhere (a slot migrated from a
//!   node whose clock runs ahead, counter mode, a hand-made value) counts by
//!   its value.
//! * The fence key still holds the last token of each name (`GET` shows it),
//!   and `fence + 1` still wins when it is larger: a fence key that came
//!   from a node with a later term (a slot migration) is never undercut.
//!
//! In a split brain, the old primary keeps issuing tokens of its old term
//! (`old_start × 1000 + n`, n counting the grants of that one name), which
//! stay below the new primary's floor (`new_start × 1000`) while n stays
//! below a thousand per ms between the two starts, so a resource that has
//! seen a token of the new primary rejects the old one. Traffic on other
//! names does not count.
//!
//! [`TokenMode::Counter`] keeps plain counters (`fence + 1`), for setups that
//! persist every write (`appendfsync always`) and never fail over.
//!
//! Why × 1,000 and not more: tokens must stay exact in a double, because a
//! Lua script gets integer replies as Lua numbers and JavaScript reads them
//! as numbers. ms × 1,000 stays below 2^53 until the year 2255 (and below
//! `i64::MAX` far longer).

use std::ffi::CStr;

use crate::error::LockError;

/// Tokens per millisecond of a term's start: the floor's scale.
pub const PER_MS: i64 = 1_000;

/// How grants pick their token. The config's value names and enum numbers
/// come from here ([`TokenMode::ALL`], [`TokenMode::config_value`], the
/// discriminant), and nowhere else.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum TokenMode {
    /// `max(fence + 1, floor, guard + 1)`: never reissued, never backwards
    /// (the default).
    #[default]
    Term = 0,
    /// `fence + 1`: a plain per-name counter, which restarts when the fence
    /// key is lost.
    Counter = 1,
}

impl TokenMode {
    /// Every mode, in the order of their enum numbers.
    pub const ALL: [TokenMode; 2] = [TokenMode::Term, TokenMode::Counter];

    /// The config value (`term` or `counter`), as `spacelock.token-mode`,
    /// `INFO spacelock` and the load log spell it.
    pub const fn config_value(self) -> &'static CStr {
        match self {
            TokenMode::Term => c"term",
            TokenMode::Counter => c"counter",
        }
    }

    /// The config value as text.
    pub fn name(self) -> &'static str {
        self.config_value().to_str().unwrap_or_default()
    }

    /// The mode of enum number `n` (the default for an unknown number).
    pub fn from_number(n: i64) -> TokenMode {
        TokenMode::ALL
            .into_iter()
            .find(|&m| m as i64 == n)
            .unwrap_or_default()
    }
}

/// Cells per row of the per-name high-water marks ([`Terms`]).
pub const GUARD_CELLS: usize = 1 << 15;
/// Rows of the per-name high-water marks: a name shares its guard with
/// another only where it shares a cell in every row.
pub const GUARD_ROWS: usize = 2;

/// The term state of one server process, and the per-name high-water
/// marks that keep each name's tokens increasing when its fence key is lost.
///
/// The marks are a fixed table (`GUARD_ROWS` × `GUARD_CELLS` cells, 512 KiB,
/// whatever the number of names): each name hashes (with a key drawn per
/// process, so nobody can pick names that collide) to one cell per row, and
/// every cell holds the highest token issued for any name that hashes to
/// it. The lowest of a name's cells is therefore at least every token the
/// name was ever issued by this process, which is all that "never
/// backwards" needs after a fence key is lost. Another name raises a name's
/// next token only when it shares a cell with it in every row and has run
/// further ahead; one name's traffic, or one hostile fence value, is that
/// name's alone otherwise.
#[derive(Clone, PartialEq, Eq)]
pub struct Terms {
    /// Start of the current term, ms since the Unix epoch.
    start_ms: i64,
    /// The lowest token of the current term.
    floor: i64,
    /// The highest token issued in the current term (`floor - 1` before
    /// the first).
    highest: i64,
    /// Terms opened since load.
    opened: u64,
    /// The key of the names' keyed hash, drawn when the first term opens.
    hash_key: u64,
    /// `GUARD_ROWS` rows of `GUARD_CELLS` cells; empty until the first
    /// term opens (the statics that hold a `Terms` must be `const`).
    cells: Vec<i64>,
}

impl std::fmt::Debug for Terms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Terms")
            .field("start_ms", &self.start_ms)
            .field("floor", &self.floor)
            .field("highest", &self.highest)
            .field("opened", &self.opened)
            .finish_non_exhaustive()
    }
}

impl Terms {
    /// The state before any term opened: it issues plain counters from 1
    /// (the module opens a term at load, before any command can run).
    pub const UNOPENED: Terms = Terms {
        start_ms: 0,
        floor: 1,
        highest: 0,
        opened: 0,
        hash_key: 0,
        cells: Vec::new(),
    };

    /// The state of a process that opens its first term at `now_ms`, with a
    /// hash key drawn at random.
    pub fn open_at(now_ms: i64) -> Self {
        let mut t = Terms::UNOPENED;
        t.open(now_ms);
        t
    }

    /// [`open_at`](Self::open_at) with a chosen hash key, so that a test can
    /// find names that share cells.
    pub fn open_seeded(now_ms: i64, hash_key: u64) -> Self {
        let mut t = Terms::UNOPENED;
        t.hash_key = hash_key;
        t.cells = vec![0; GUARD_ROWS * GUARD_CELLS];
        t.open(now_ms);
        t
    }

    /// Opens a new term at `now_ms`. The floor never goes down: a clock that
    /// reads earlier than a previous term (a step back) opens the term just
    /// above the previous floor. The marks stay: within the process, each
    /// name's tokens keep increasing whatever the clock and the fence keys
    /// do; only another process's lost tokens depend on the clock.
    pub fn open(&mut self, now_ms: i64) {
        if self.cells.is_empty() {
            use std::hash::BuildHasher;
            self.hash_key = std::collections::hash_map::RandomState::new().hash_one(now_ms);
            self.cells = vec![0; GUARD_ROWS * GUARD_CELLS];
        }
        let above_previous = if self.opened == 0 {
            0
        } else {
            self.floor.saturating_add(1)
        };
        self.start_ms = now_ms;
        self.floor = floor_of(now_ms).max(above_previous);
        self.highest = self.floor - 1;
        self.opened += 1;
    }

    /// Start of the current term (ms since the epoch).
    pub fn start_ms(&self) -> i64 {
        self.start_ms
    }

    /// The lowest token of the current term: every later grant issues at
    /// least this.
    pub fn floor(&self) -> i64 {
        self.floor
    }

    /// The highest token issued in the current term, `floor - 1` before the
    /// first.
    pub fn highest(&self) -> i64 {
        self.highest
    }

    /// How much later than this term's start another term must start (on
    /// its own clock) for its floor to be above every token this term has
    /// issued: the split-brain and restart headroom, set by the name that
    /// has run furthest above the floor (a thousand grants of one name per
    /// ms). 0 before the first grant.
    pub fn lead_ms(&self) -> i64 {
        if self.highest < self.floor {
            return 0;
        }
        (self.highest - self.floor) / PER_MS + 1
    }

    /// Terms opened since the process loaded the module.
    pub fn opened(&self) -> u64 {
        self.opened
    }

    /// The keyed hash of `name` (the key is drawn when the first term
    /// opens, so nobody can pick names that collide): one computation per
    /// command, shared by the marks and the ledger.
    pub fn hash(&self, name: &[u8]) -> u64 {
        use std::hash::{BuildHasher, Hasher};
        let hasher = foldhash::quality::FixedState::with_seed(self.hash_key);
        let mut h = hasher.build_hasher();
        h.write(name);
        h.finish()
    }

    /// The cells of the name whose hash is `hash`, one per row.
    fn cells_of(hash: u64) -> [usize; GUARD_ROWS] {
        let mask = (GUARD_CELLS - 1) as u64;
        [
            (hash & mask) as usize,
            GUARD_CELLS + ((hash >> 32) & mask) as usize,
        ]
    }

    /// The addresses of the cells of the name whose hash is `hash`, for a
    /// prefetch (nothing is read through them); none before the first term.
    pub fn cells_at(&self, hash: u64) -> [Option<*const u8>; GUARD_ROWS] {
        if self.cells.is_empty() {
            return [None; GUARD_ROWS];
        }
        Self::cells_of(hash).map(|c| Some(self.cells.as_ptr().wrapping_add(c).cast()))
    }

    /// At least every token this process ever issued for the name whose
    /// hash is `hash` (0 before any term opened).
    fn guard(&self, hash: u64) -> i64 {
        if self.cells.is_empty() {
            return 0;
        }
        Self::cells_of(hash)
            .iter()
            .map(|&c| self.cells[c])
            .min()
            .unwrap_or(0)
    }

    /// The token a grant of `name` issues when its fence key holds `fence`
    /// (0 when missing): `max(fence + 1, floor, guard + 1)` in term mode,
    /// `fence + 1` in counter mode. Changes nothing: call
    /// [`issued`](Self::issued) once the grant is written.
    ///
    /// # Errors
    ///
    /// [`LockError::TokenOverflow`] when no token is left below `i64::MAX`
    /// for this name.
    pub fn peek(&self, name: &[u8], fence: i64, mode: TokenMode) -> Result<i64, LockError> {
        self.peek_hashed(self.hash(name), fence, mode)
    }

    /// [`peek`](Self::peek) for the name whose [`hash`](Self::hash) is
    /// `hash`.
    ///
    /// # Errors
    ///
    /// As [`peek`](Self::peek).
    pub fn peek_hashed(&self, hash: u64, fence: i64, mode: TokenMode) -> Result<i64, LockError> {
        let after_fence = fence.checked_add(1).ok_or(LockError::TokenOverflow)?;
        match mode {
            TokenMode::Counter => Ok(after_fence),
            TokenMode::Term => {
                let after_guard = self
                    .guard(hash)
                    .checked_add(1)
                    .ok_or(LockError::TokenOverflow)?;
                Ok(after_fence.max(self.floor).max(after_guard))
            }
        }
    }

    /// The first clock reading (ms) at which a term that starts afresh,
    /// without this state (the module loaded again after `MODULE UNLOAD`,
    /// whose statics are gone), has a floor above every token this process
    /// has issued or learned from a fence key, in any of its terms (the
    /// high-water marks keep them all), and so issues only tokens above
    /// them whatever the fence keys still say.
    pub fn fresh_start_safe_ms(&self) -> i64 {
        let top = self.cells.iter().copied().fold(self.highest, i64::max);
        top.max(0) / PER_MS + 1
    }

    /// Records that `token` was issued for `name`: its later grants issue
    /// more. Counter mode records too, so a switch back to term mode stays
    /// above it.
    pub fn issued(&mut self, name: &[u8], token: i64) {
        self.issued_hashed(self.hash(name), token);
    }

    /// [`issued`](Self::issued) for the name whose [`hash`](Self::hash) is
    /// `hash`.
    pub fn issued_hashed(&mut self, hash: u64, token: i64) {
        if !self.cells.is_empty() {
            for c in Self::cells_of(hash) {
                self.cells[c] = self.cells[c].max(token);
            }
        }
        self.highest = self.highest.max(token);
    }
}

/// The floor of a term that starts at `now_ms`.
pub fn floor_of(now_ms: i64) -> i64 {
    now_ms.max(0).saturating_mul(PER_MS)
}

/// The cross-term guarantee: a term that starts at `new_start_ms` issues
/// only tokens above every token of an earlier term that started at
/// `old_start_ms` and issued `old_tokens` tokens, whatever became of their
/// fence keys.
pub fn bound_holds(old_start_ms: i64, old_tokens: i64, new_start_ms: i64) -> bool {
    let last_old = floor_of(old_start_ms).saturating_add(old_tokens.saturating_sub(1));
    floor_of(new_start_ms) > last_old
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_764_000_000_000; // 2025-11-24, ms
    const A: &[u8] = b"space:a";
    const B: &[u8] = b"space:b";

    /// Issues one token for `name` and returns it.
    fn grant(t: &mut Terms, name: &[u8], fence: i64) -> i64 {
        let token = t.peek(name, fence, TokenMode::Term).unwrap();
        t.issued(name, token);
        token
    }

    #[test]
    fn a_term_starts_at_its_floor_and_each_name_counts_up() {
        let mut t = Terms::open_at(T0);
        assert_eq!(t.start_ms(), T0);
        assert_eq!(t.floor(), T0 * PER_MS);
        assert_eq!(t.lead_ms(), 0);
        // A fresh name (no fence key) gets the floor; then its counter.
        let a = grant(&mut t, A, 0);
        assert_eq!(a, T0 * PER_MS);
        assert_eq!(grant(&mut t, A, a), a + 1);
        // Another name counts on its own, from the floor.
        assert_eq!(grant(&mut t, B, 0), T0 * PER_MS);
        assert_eq!(t.highest(), a + 1);
        assert_eq!(t.lead_ms(), 1);
    }

    #[test]
    fn a_lost_fence_key_never_brings_a_token_back() {
        // (fence value seen by the grant, expected token) over one term:
        // the fence key is deleted, evicted, expired or flushed between
        // grants.
        let mut t = Terms::open_at(T0);
        let f = T0 * PER_MS;
        let table: &[(i64, i64)] = &[
            (0, f),         // first grant of the name
            (f, f + 1),     // fence intact
            (0, f + 2),     // fence lost (FLUSHALL, eviction, DEL, expiry)
            (0, f + 3),     // lost again
            (f + 3, f + 4), // fence intact
            (7, f + 5),     // an old small counter (plain SET by someone)
        ];
        for (i, &(fence, want)) in table.iter().enumerate() {
            assert_eq!(grant(&mut t, A, fence), want, "grant {i}");
        }
        // A name that never had a token still starts at the floor.
        assert_eq!(grant(&mut t, B, 0), f);
    }

    #[test]
    fn other_names_traffic_leaves_a_names_headroom_alone() {
        // The split brain, in one process: the old primary opened a term,
        // and a new primary opened one 200 ms later. The old side serves a
        // million grants on other names and a hundred thousand on the lock
        // itself: its next token for the lock is still below the new
        // primary's first.
        let mut old = Terms::open_at(T0);
        for i in 0..1_000_000u32 {
            let name = i.to_le_bytes();
            grant(&mut old, &name, 0);
        }
        let mut last = 0;
        for _ in 0..100_000 {
            last = grant(&mut old, A, last);
        }
        // The new primary had seen the lock's first grant replicated.
        let new = Terms::open_at(T0 + 200);
        let new_first = new.peek(A, T0 * PER_MS, TokenMode::Term).unwrap();
        assert_eq!(new_first, new.floor());
        let next_old = old.peek(A, last, TokenMode::Term).unwrap();
        assert!(next_old < new_first, "{next_old} vs {new_first}");
        // The name furthest ahead is the lock: 100 000 grants above the
        // floor (its first token may sit one above the floor, where both of
        // its cells hold other names' first grants).
        assert!((100..=101).contains(&old.lead_ms()), "{}", old.lead_ms());
    }

    #[test]
    fn a_hostile_fence_value_is_that_names_problem_alone() {
        let mut t = Terms::open_seeded(T0, 1);
        // Near i64::MAX: one grant, then that name is exhausted.
        let top = grant(&mut t, A, i64::MAX - 1);
        assert_eq!(top, i64::MAX);
        assert_eq!(t.peek(A, 0, TokenMode::Term), Err(LockError::TokenOverflow));
        // At 2^60: that name leaves the exact range of a double.
        grant(&mut t, b"space:c", 1 << 60);
        // Every other name stays at the floor, far below 2^53: a name's
        // guard is the lower of its two cells, so the hostile names reach
        // it only where they share a cell with it in both rows (1 in 2^30
        // for a given pair, with a per-process hash key). Where both of its
        // cells hold other fresh names' first grants, it starts a little
        // above.
        for i in 0..10_000u32 {
            let token = grant(&mut t, &i.to_le_bytes(), 0);
            assert!(token < T0 * PER_MS + 10, "name {i}: {token}");
        }
    }

    #[test]
    fn names_sharing_one_cell_keep_their_own_counts() {
        // Find a name that shares A's first-row cell but not its second.
        let mut t = Terms::open_seeded(T0, 7);
        let [a0, a1] = Terms::cells_of(t.hash(A));
        let b = (0..u32::MAX)
            .map(|i| format!("n{i}").into_bytes())
            .find(|n| {
                let [b0, b1] = Terms::cells_of(t.hash(n));
                b0 == a0 && b1 != a1
            })
            .unwrap();
        let mut last = 0;
        for _ in 0..5_000 {
            last = grant(&mut t, &b, last);
        }
        assert_eq!(grant(&mut t, A, 0), T0 * PER_MS);
    }

    #[test]
    fn a_larger_fence_wins() {
        // A fence key migrated in from a node with a later term.
        let t = Terms::open_at(T0);
        let theirs = (T0 + 5_000) * PER_MS + 9;
        assert_eq!(t.peek(A, theirs, TokenMode::Term), Ok(theirs + 1));
    }

    #[test]
    fn a_new_term_is_above_the_old_one_by_the_clock() {
        // 500 grants of one name in the old term's first millisecond (a
        // busy server manages a few hundred).
        let mut old = Terms::open_at(T0);
        let mut last = 0;
        for _ in 0..500 {
            last = grant(&mut old, A, 0);
        }
        // A promoted replica (another process) 1 ms later.
        let new = Terms::open_at(T0 + 1);
        assert!(new.peek(A, 0, TokenMode::Term).unwrap() > last);
        // The old primary keeps issuing in a split brain: still below.
        let stale = old.peek(A, 0, TokenMode::Term).unwrap();
        assert!(stale < new.peek(A, 0, TokenMode::Term).unwrap());
    }

    #[test]
    fn the_clock_bound_at_its_edge() {
        // A term of 1 ms start difference covers up to a thousand tokens.
        assert!(bound_holds(T0, PER_MS, T0 + 1));
        assert!(!bound_holds(T0, PER_MS + 1, T0 + 1));
        // A new term on a clock that is not later does not hold.
        assert!(!bound_holds(T0, 1, T0));
        assert!(!bound_holds(T0, 1, T0 - 10));
        // The same edge, through Terms.
        let mut old = Terms::open_at(T0);
        let mut last = 0;
        for _ in 0..3 {
            last = grant(&mut old, A, 0);
        }
        let same_ms = Terms::open_at(T0);
        assert!(same_ms.peek(A, 0, TokenMode::Term).unwrap() <= last);
        let next_ms = Terms::open_at(T0 + 1);
        assert!(next_ms.peek(A, 0, TokenMode::Term).unwrap() > last);
    }

    #[test]
    fn the_clock_bound_at_its_edge_through_a_thousand_grants() {
        // A name granted exactly PER_MS times in a term at T0 ends one below
        // the floor of a term at T0 + 1; one more grant and the next term's
        // first token would be that very token again.
        let mut old = Terms::open_at(T0);
        let mut last = 0;
        for _ in 0..PER_MS {
            last = grant(&mut old, A, 0);
        }
        assert_eq!(last, floor_of(T0 + 1) - 1);
        assert_eq!(old.lead_ms(), 1);
        let next_ms = Terms::open_at(T0 + 1);
        assert_eq!(next_ms.peek(A, 0, TokenMode::Term), Ok(last + 1));
        let extra = old.peek(A, 0, TokenMode::Term).unwrap();
        assert_eq!(
            extra,
            next_ms.peek(A, 0, TokenMode::Term).unwrap(),
            "past the bound, a token is reissued"
        );
        old.issued(A, extra);
        assert_eq!(old.lead_ms(), 2, "INFO shows the bound moving");
        // The same edge for longer terms: k ms hold k thousand tokens.
        for k in [1, 2, 1_000, 86_400_000] {
            assert!(bound_holds(T0, k * PER_MS, T0 + k), "{k}");
            assert!(!bound_holds(T0, k * PER_MS + 1, T0 + k), "{k}");
        }
    }

    #[test]
    fn the_bound_is_on_the_highest_token_not_on_the_count() {
        // A term whose token came from a fence key above its floor: migrated
        // in from a node whose clock runs 5 s ahead. Counting its tokens
        // (one) says a new term 10 ms later is safe ...
        let mut y = Terms::open_at(T0);
        let theirs = (T0 + 5_000) * PER_MS + 9;
        let t = grant(&mut y, A, theirs);
        assert!(bound_holds(T0, 1, T0 + 10));
        // ... but a new process of that node at T0 + 10 (a restart that lost
        // the fence key) starts below the token: what must hold is
        // new_start_ms × 1000 > every token issued before.
        let restarted = Terms::open_at(T0 + 10);
        assert!(restarted.peek(A, 0, TokenMode::Term).unwrap() < t);
        assert!(
            Terms::open_at(T0 + 5_001)
                .peek(A, 0, TokenMode::Term)
                .unwrap()
                > t
        );
        // Within the process the token is never undercut, whatever the clock.
        assert!(y.peek(A, 0, TokenMode::Term).unwrap() > t);
        assert_eq!(y.lead_ms(), 5_001);
    }

    #[test]
    fn reopening_in_the_same_process_never_goes_down() {
        let mut t = Terms::open_at(T0);
        t.issued(A, T0 * PER_MS + 41);
        // The clock stepped back by a minute, then NEWTERM.
        t.open(T0 - 60_000);
        assert_eq!(t.start_ms(), T0 - 60_000);
        assert_eq!(t.floor(), T0 * PER_MS + 1);
        assert_eq!(t.peek(A, 0, TokenMode::Term), Ok(T0 * PER_MS + 42));
        assert_eq!(t.opened(), 2);
        // Forward: the floor moves up.
        t.open(T0 + 1);
        assert_eq!(t.floor(), (T0 + 1) * PER_MS);
        assert_eq!(t.peek(A, 0, TokenMode::Term), Ok((T0 + 1) * PER_MS));
    }

    #[test]
    fn a_fresh_start_is_safe_once_its_floor_is_above_every_token() {
        // Nothing issued yet: a fresh term in the same ms has the same
        // floor, which is above every token issued (none).
        let mut t = Terms::open_at(T0);
        assert_eq!(t.fresh_start_safe_ms(), T0);
        // One token issued at the floor: the next millisecond.
        let a = t.peek(A, 0, TokenMode::Term).unwrap();
        t.issued(A, a);
        assert_eq!(t.fresh_start_safe_ms(), T0 + 1);
        assert!(bound_holds(T0, 1, t.fresh_start_safe_ms()));
        assert!(!bound_holds(T0, 1, t.fresh_start_safe_ms() - 1));
        // A name that ran a thousand tokens ends one below the next floor.
        t.issued(B, floor_of(T0 + 1) - 1);
        assert_eq!(t.fresh_start_safe_ms(), T0 + 1);
        t.issued(B, floor_of(T0 + 1));
        assert_eq!(t.fresh_start_safe_ms(), T0 + 2);
        // A token from a fence key far ahead (another node's later clock)
        // moves it as far.
        t.issued(A, floor_of(T0 + 5_000) + 9);
        assert_eq!(t.fresh_start_safe_ms(), T0 + 5_001);
        // A later term of this process does not forget the earlier one's
        // tokens: the marks keep them.
        t.open(T0 + 10);
        assert_eq!(t.fresh_start_safe_ms(), T0 + 5_001);
        // Through Terms: a fresh term opened then issues above every token,
        // for any name, even one whose fence key still holds the old token.
        let fresh = Terms::open_at(t.fresh_start_safe_ms());
        assert!(fresh.peek(B, 0, TokenMode::Term).unwrap() > floor_of(T0 + 5_000) + 9);
        assert!(
            fresh
                .peek(A, floor_of(T0 + 5_000) + 9, TokenMode::Term)
                .unwrap()
                > floor_of(T0 + 5_000) + 9
        );
        // An unopened state is safe at once.
        assert_eq!(Terms::UNOPENED.fresh_start_safe_ms(), 1);
        let mut near_max = Terms::open_at(T0);
        near_max.issued(A, i64::MAX - 1);
        assert_eq!(near_max.fresh_start_safe_ms(), i64::MAX / PER_MS + 1);
    }

    #[test]
    fn counter_mode_is_fence_plus_one_and_remembered() {
        let mut t = Terms::open_at(T0);
        assert_eq!(t.peek(A, 0, TokenMode::Counter), Ok(1));
        assert_eq!(t.peek(A, 41, TokenMode::Counter), Ok(42));
        t.issued(A, 42);
        // Back to term mode: still the floor (which is above 42).
        assert_eq!(t.peek(A, 42, TokenMode::Term), Ok(T0 * PER_MS));
        // A counter above the floor is remembered for term mode.
        let big = T0 * PER_MS + 500;
        t.issued(A, big);
        assert_eq!(t.peek(A, 0, TokenMode::Term), Ok(big + 1));
    }

    #[test]
    fn exhaustion_is_an_error_never_a_wrap() {
        let mut t = Terms::open_at(T0);
        assert_eq!(
            t.peek(A, i64::MAX, TokenMode::Term),
            Err(LockError::TokenOverflow)
        );
        assert_eq!(
            t.peek(A, i64::MAX, TokenMode::Counter),
            Err(LockError::TokenOverflow)
        );
        t.issued(A, i64::MAX);
        assert_eq!(t.peek(A, 0, TokenMode::Term), Err(LockError::TokenOverflow));
        assert_eq!(t.peek(B, 0, TokenMode::Term), Ok(T0 * PER_MS));
        // The floor saturates instead of overflowing.
        assert_eq!(floor_of(i64::MAX / 10), i64::MAX);
        assert_eq!(floor_of(-5), 0);
    }

    #[test]
    fn before_any_term_tokens_are_plain_counters() {
        let t = Terms::UNOPENED;
        assert_eq!(t.peek(A, 0, TokenMode::Term), Ok(1));
        assert_eq!(t.peek(A, 9, TokenMode::Term), Ok(10));
    }

    #[test]
    fn tokens_are_exact_in_a_double_for_centuries() {
        // A term opened in 2255 (ms 9_000_000_000_000) still issues tokens
        // that a double (a Lua number, a JavaScript number) holds exactly,
        // with room for ten billion grants.
        let y2255: i64 = 9_000_000_000_000;
        let token = floor_of(y2255) + 10_000_000_000;
        assert!(token < 1 << 53);
        assert_eq!(token as f64 as i64, token);
        // Today's tokens are far from it.
        assert!(floor_of(T0) < 1 << 53);
    }
}
