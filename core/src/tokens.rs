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
//! * A grant issues `max(fence + 1, next)`, then sets `next` to the token
//!   plus one. `next` starts at the floor and only grows, for every lock
//!   name of the process, so within a term a token is above every token the
//!   process issued before, whatever happened to the fence keys
//!   (`FLUSHALL`, `SWAPDB`, `MOVE`, eviction, `DEL`).
//! * Across terms, tokens grow with the clock. The assumption, and the only
//!   one: **a new term's floor (its start ms × 1,000, on its own server's
//!   clock) is above every token issued before it for the names it may
//!   grant.** When those tokens came from the previous term's own counter,
//!   that is: the new term starts later than the previous term's start plus
//!   1 ms for every thousand tokens issued in it ([`bound_holds`], for the
//!   tests at its edge). A server issues well under a thousand grants per
//!   millisecond on average (a few hundred at most, flat out), so tokens
//!   never run ahead of the clock, and with NTP-synchronised clocks the
//!   bound holds for any term older than a few times the clock skew. A token
//!   that came from a fence key set higher elsewhere (a slot migrated from a
//!   node whose clock runs ahead, counter mode, a hand-made value) counts by
//!   its value.
//! * The fence key still holds the last token of each name (`GET` shows it),
//!   and `fence + 1` still wins when it is larger: a fence key that came
//!   from a node with a later term (a slot migration) is never undercut.
//!
//! In a split brain, the old primary keeps issuing tokens of its old term
//! (`old_start × 1000 + n`), which stay below the new primary's floor
//! (`new_start × 1000`) under the same assumption, so a resource that has
//! seen a token of the new primary rejects the old one.
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
    /// `max(fence + 1, next)`: never reissued, never backwards (the default).
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

/// The term state of one server process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Terms {
    /// Start of the current term, ms since the Unix epoch.
    start_ms: i64,
    /// The lowest token the next grant may issue (in [`TokenMode::Term`]).
    next: i64,
    /// Terms opened since load.
    opened: u64,
}

impl Terms {
    /// The state before any term opened: it issues plain counters from 1
    /// (the module opens a term at load, before any command can run).
    pub const UNOPENED: Terms = Terms {
        start_ms: 0,
        next: 1,
        opened: 0,
    };

    /// The state of a process that opens its first term at `now_ms`.
    pub fn open_at(now_ms: i64) -> Self {
        let mut t = Terms::UNOPENED;
        t.open(now_ms);
        t
    }

    /// Opens a new term at `now_ms`. `next` never goes down: a clock that
    /// reads earlier than a previous term (a step back) keeps the tokens of
    /// this process increasing; only another process's lost tokens depend on
    /// the clock.
    pub fn open(&mut self, now_ms: i64) {
        self.start_ms = now_ms;
        self.next = self.next.max(floor_of(now_ms));
        self.opened += 1;
    }

    /// Start of the current term (ms since the epoch).
    pub fn start_ms(&self) -> i64 {
        self.start_ms
    }

    /// The lowest token the next grant may issue.
    pub fn next(&self) -> i64 {
        self.next
    }

    /// Terms opened since the process loaded the module.
    pub fn opened(&self) -> u64 {
        self.opened
    }

    /// The token a grant issues when the name's fence key holds `fence` (0
    /// when missing). Changes nothing: call [`issued`](Self::issued) once the
    /// grant is written.
    ///
    /// # Errors
    ///
    /// [`LockError::TokenOverflow`] when no token is left below `i64::MAX`.
    pub fn peek(&self, fence: i64, mode: TokenMode) -> Result<i64, LockError> {
        let after_fence = fence.checked_add(1).ok_or(LockError::TokenOverflow)?;
        match mode {
            TokenMode::Counter => Ok(after_fence),
            TokenMode::Term if self.next == i64::MAX => Err(LockError::TokenOverflow),
            TokenMode::Term => Ok(after_fence.max(self.next)),
        }
    }

    /// The first clock reading (ms) at which a term that starts afresh,
    /// without this state (the module loaded again after `MODULE UNLOAD`,
    /// whose statics are gone), has a floor of at least [`next`](Self::next)
    /// and so issues only tokens above every token recorded here.
    pub fn fresh_start_safe_ms(&self) -> i64 {
        self.next.div_euclid(PER_MS) + i64::from(self.next.rem_euclid(PER_MS) != 0)
    }

    /// Records that `token` was issued: later grants issue more. Counter
    /// mode records too, so a switch back to term mode stays above it.
    pub fn issued(&mut self, token: i64) {
        self.next = self.next.max(token.saturating_add(1));
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

    #[test]
    fn a_term_starts_at_its_floor_and_counts_up() {
        let mut t = Terms::open_at(T0);
        assert_eq!(t.start_ms(), T0);
        assert_eq!(t.next(), T0 * PER_MS);
        // A fresh name (no fence key) gets the floor; then the counter.
        let a = t.peek(0, TokenMode::Term).unwrap();
        assert_eq!(a, T0 * PER_MS);
        t.issued(a);
        let b = t.peek(a, TokenMode::Term).unwrap();
        assert_eq!(b, a + 1);
        t.issued(b);
        // Another name shares the process counter: above every token so far.
        let c = t.peek(0, TokenMode::Term).unwrap();
        assert_eq!(c, b + 1);
    }

    #[test]
    fn a_lost_fence_key_never_brings_a_token_back() {
        // (fence value seen by the grant, expected token) over one term:
        // the fence key is deleted, evicted or flushed between grants.
        let mut t = Terms::open_at(T0);
        let f = T0 * PER_MS;
        let table: &[(i64, i64)] = &[
            (0, f),         // first grant of the name
            (f, f + 1),     // fence intact
            (0, f + 2),     // fence lost (FLUSHALL, eviction, DEL)
            (0, f + 3),     // lost again
            (f + 3, f + 4), // fence intact
            (7, f + 5),     // an old small counter (plain SET by someone)
        ];
        for (i, &(fence, want)) in table.iter().enumerate() {
            let got = t.peek(fence, TokenMode::Term).unwrap();
            assert_eq!(got, want, "grant {i}");
            t.issued(got);
        }
    }

    #[test]
    fn a_larger_fence_wins() {
        // A fence key migrated in from a node with a later term.
        let t = Terms::open_at(T0);
        let theirs = (T0 + 5_000) * PER_MS + 9;
        assert_eq!(t.peek(theirs, TokenMode::Term), Ok(theirs + 1));
    }

    #[test]
    fn a_new_term_is_above_the_old_one_by_the_clock() {
        // 500 grants in the old term's first millisecond (a busy server
        // manages a few hundred).
        let mut old = Terms::open_at(T0);
        let mut last = 0;
        for _ in 0..500 {
            last = old.peek(0, TokenMode::Term).unwrap();
            old.issued(last);
        }
        // A promoted replica (another process) 1 ms later.
        let new = Terms::open_at(T0 + 1);
        assert!(new.peek(0, TokenMode::Term).unwrap() > last);
        // The old primary keeps issuing in a split brain: still below.
        let stale = old.peek(0, TokenMode::Term).unwrap();
        assert!(stale < new.peek(0, TokenMode::Term).unwrap());
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
            last = old.peek(0, TokenMode::Term).unwrap();
            old.issued(last);
        }
        let same_ms = Terms::open_at(T0);
        assert!(same_ms.peek(0, TokenMode::Term).unwrap() <= last);
        let next_ms = Terms::open_at(T0 + 1);
        assert!(next_ms.peek(0, TokenMode::Term).unwrap() > last);
    }

    #[test]
    fn the_clock_bound_at_its_edge_through_a_thousand_grants() {
        // A term at T0 that issues exactly PER_MS tokens ends one below the
        // floor of a term at T0 + 1; one more token and the next term's
        // first token would be that very token again.
        let mut old = Terms::open_at(T0);
        let mut last = 0;
        for _ in 0..PER_MS {
            last = old.peek(0, TokenMode::Term).unwrap();
            old.issued(last);
        }
        assert_eq!(last, floor_of(T0 + 1) - 1);
        let next_ms = Terms::open_at(T0 + 1);
        assert_eq!(next_ms.peek(0, TokenMode::Term), Ok(last + 1));
        let extra = old.peek(0, TokenMode::Term).unwrap();
        assert_eq!(
            extra,
            next_ms.peek(0, TokenMode::Term).unwrap(),
            "past the bound, a token is reissued"
        );
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
        let t = y.peek(theirs, TokenMode::Term).unwrap();
        y.issued(t);
        assert!(bound_holds(T0, 1, T0 + 10));
        // ... but a new process of that node at T0 + 10 (a restart that lost
        // the fence key) starts below the token: what must hold is
        // new_start_ms × 1000 > every token issued before.
        let restarted = Terms::open_at(T0 + 10);
        assert!(restarted.peek(0, TokenMode::Term).unwrap() < t);
        assert!(Terms::open_at(T0 + 5_001).peek(0, TokenMode::Term).unwrap() > t);
        // Within the process the token is never undercut, whatever the clock.
        assert!(y.peek(0, TokenMode::Term).unwrap() > t);
    }

    #[test]
    fn reopening_in_the_same_process_never_goes_down() {
        let mut t = Terms::open_at(T0);
        t.issued(T0 * PER_MS + 41);
        // The clock stepped back by a minute, then NEWTERM.
        t.open(T0 - 60_000);
        assert_eq!(t.start_ms(), T0 - 60_000);
        assert_eq!(t.next(), T0 * PER_MS + 42);
        assert_eq!(t.opened(), 2);
        // Forward: the floor moves up.
        t.open(T0 + 1);
        assert_eq!(t.next(), (T0 + 1) * PER_MS);
    }

    #[test]
    fn a_fresh_start_is_safe_once_its_floor_reaches_next() {
        // Nothing issued yet: a fresh term in the same ms has the same
        // floor, which is above every token issued (none).
        let mut t = Terms::open_at(T0);
        assert_eq!(t.fresh_start_safe_ms(), T0);
        // One token issued at the floor: the next millisecond.
        let a = t.peek(0, TokenMode::Term).unwrap();
        t.issued(a);
        assert_eq!(t.fresh_start_safe_ms(), T0 + 1);
        assert!(bound_holds(T0, 1, t.fresh_start_safe_ms()));
        assert!(!bound_holds(T0, 1, t.fresh_start_safe_ms() - 1));
        // Exactly a thousand tokens end one below the next floor.
        t.issued(floor_of(T0 + 1) - 1);
        assert_eq!(t.fresh_start_safe_ms(), T0 + 1);
        t.issued(floor_of(T0 + 1));
        assert_eq!(t.fresh_start_safe_ms(), T0 + 2);
        // A token from a fence key far ahead (another node's later clock)
        // moves it as far.
        t.issued(floor_of(T0 + 5_000) + 9);
        assert_eq!(t.fresh_start_safe_ms(), T0 + 5_001);
        // Through Terms: a fresh term opened then issues above every token.
        let fresh = Terms::open_at(t.fresh_start_safe_ms());
        assert!(fresh.peek(0, TokenMode::Term).unwrap() > floor_of(T0 + 5_000) + 9);
        // Counter mode's small tokens do not move it; an unopened state is safe at once.
        assert_eq!(Terms::UNOPENED.fresh_start_safe_ms(), 1);
        let mut near_max = Terms::open_at(T0);
        near_max.issued(i64::MAX - 1);
        assert_eq!(near_max.fresh_start_safe_ms(), i64::MAX / PER_MS + 1);
    }

    #[test]
    fn counter_mode_is_fence_plus_one_and_remembered() {
        let mut t = Terms::open_at(T0);
        assert_eq!(t.peek(0, TokenMode::Counter), Ok(1));
        assert_eq!(t.peek(41, TokenMode::Counter), Ok(42));
        t.issued(42);
        // Back to term mode: still the floor (which is above 42).
        assert_eq!(t.peek(42, TokenMode::Term), Ok(T0 * PER_MS));
        // A counter above the floor is remembered for term mode.
        let big = T0 * PER_MS + 500;
        t.issued(big);
        assert_eq!(t.peek(0, TokenMode::Term), Ok(big + 1));
    }

    #[test]
    fn exhaustion_is_an_error_never_a_wrap() {
        let mut t = Terms::open_at(T0);
        assert_eq!(
            t.peek(i64::MAX, TokenMode::Term),
            Err(LockError::TokenOverflow)
        );
        assert_eq!(
            t.peek(i64::MAX, TokenMode::Counter),
            Err(LockError::TokenOverflow)
        );
        t.issued(i64::MAX - 1);
        assert_eq!(t.next(), i64::MAX);
        assert_eq!(t.peek(0, TokenMode::Term), Err(LockError::TokenOverflow));
        // The floor saturates instead of overflowing.
        assert_eq!(floor_of(i64::MAX / 10), i64::MAX);
        assert_eq!(floor_of(-5), 0);
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
