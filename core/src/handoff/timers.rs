//! The module timers WAIT arms, and their arithmetic.
//!
//! A server timer carries one pointer-sized word of data. [`TimerKind`]
//! packs what the timer is for into it, so no magic value stands for a kind.

pub use super::ids::TimerId;
use super::ids::{QueueId, WaiterId};

/// What a module timer is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TimerKind {
    /// Settles the keys marked pending (by keyspace events, flushes, role
    /// changes) and undoes grants that could not be delivered. Armed with a
    /// 0 ms period: it runs in the next event-loop iteration.
    Pending,
    /// A queue's expiry timer: fires just after the holder's lease ends.
    Queue(QueueId),
    /// A waiter's WAIT deadline.
    Deadline(WaiterId),
}

const TAG_SHIFT: u32 = 62;
const ID_MASK: u64 = (1 << TAG_SHIFT) - 1;

impl TimerKind {
    /// The timer's data word.
    pub fn encode(self) -> u64 {
        match self {
            TimerKind::Pending => 0,
            TimerKind::Queue(QueueId(id)) => (1 << TAG_SHIFT) | (id & ID_MASK),
            TimerKind::Deadline(WaiterId(id)) => (2 << TAG_SHIFT) | (id & ID_MASK),
        }
    }

    /// The kind a data word stands for (`None`: not one of ours).
    pub fn decode(data: u64) -> Option<TimerKind> {
        let id = data & ID_MASK;
        match data >> TAG_SHIFT {
            0 if id == 0 => Some(TimerKind::Pending),
            1 => Some(TimerKind::Queue(QueueId(id))),
            2 => Some(TimerKind::Deadline(WaiterId(id))),
            _ => None,
        }
    }
}

/// Longest module timer armed at once (1 h). The server computes
/// `now_us + period * 1000` without overflow checks, so a lease or a WAIT of
/// years must not become one timer; a timer that fires early re-arms.
pub const MAX_TIMER_MS: i64 = 3_600_000;

/// How often a grant held back by a write pause is tried again.
pub const PAUSE_RETRY_MS: i64 = 5;

/// Delay for a timer that must fire once `now > at_ms` (Redis' expiry test:
/// a key counts as expired only after its expiry time), at most
/// [`MAX_TIMER_MS`].
pub fn after(at_ms: i64, now_ms: i64) -> i64 {
    at_ms
        .saturating_sub(now_ms)
        .saturating_add(1)
        .clamp(1, MAX_TIMER_MS)
}

/// Delay for a WAIT deadline timer: the deadline itself is due (a waiter
/// whose deadline is `now` has timed out), at most [`MAX_TIMER_MS`].
pub fn until(deadline_ms: i64, now_ms: i64) -> i64 {
    deadline_ms.saturating_sub(now_ms).clamp(0, MAX_TIMER_MS)
}

/// WAIT timeouts beyond this (about 100 years) mean "no limit".
pub const MAX_FINITE_TIMEOUT_MS: i64 = 100 * 365 * 86_400_000;

/// The deadline of a WAIT of `timeout_ms` that starts at `now_ms`, or `None`
/// for no limit (0, or beyond [`MAX_FINITE_TIMEOUT_MS`]).
pub fn deadline(now_ms: i64, timeout_ms: i64) -> Option<i64> {
    (timeout_ms > 0 && timeout_ms <= MAX_FINITE_TIMEOUT_MS)
        .then(|| now_ms.saturating_add(timeout_ms))
}

/// A queue's expiry timer, armed for a holder's expiry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExpiryTimer {
    /// The server's timer id.
    pub id: TimerId,
    /// The absolute expiry it was armed for (ms since the epoch).
    pub at_ms: i64,
}

/// What to do with a queue's expiry timer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimerPlan {
    /// The armed timer is right.
    Keep,
    /// Stop this timer; none is needed.
    Stop(TimerId),
    /// Stop `stop` (if any) and arm one for expiry `at_ms`.
    Arm {
        /// Timer to stop first.
        stop: Option<TimerId>,
        /// Absolute lock expiry.
        at_ms: i64,
    },
}

/// Decides the expiry timer for a held key whose expiry is `want` (None: no
/// expiry; waiters wait for a removal event or their deadline).
pub fn plan(current: Option<ExpiryTimer>, want: Option<i64>) -> TimerPlan {
    match (current, want) {
        (Some(t), Some(at)) if t.at_ms == at => TimerPlan::Keep,
        (current, Some(at)) => TimerPlan::Arm {
            stop: current.map(|t| t.id),
            at_ms: at,
        },
        (Some(t), None) => TimerPlan::Stop(t.id),
        (None, None) => TimerPlan::Keep,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_and_strangers_are_refused() {
        for kind in [
            TimerKind::Pending,
            TimerKind::Queue(QueueId(1)),
            TimerKind::Queue(QueueId(ID_MASK)),
            TimerKind::Deadline(WaiterId(0)),
            TimerKind::Deadline(WaiterId(77)),
        ] {
            assert_eq!(TimerKind::decode(kind.encode()), Some(kind), "{kind:?}");
        }
        assert_eq!(TimerKind::decode(3 << TAG_SHIFT), None);
        assert_eq!(TimerKind::decode(5), None, "tag 0 with an id");
    }

    #[test]
    fn periods() {
        assert_eq!(after(1_000, 900), 101);
        assert_eq!(after(1_000, 1_000), 1);
        assert_eq!(after(1_000, 5_000), 1);
        assert_eq!(after(i64::MAX, i64::MIN), MAX_TIMER_MS);
        assert_eq!(after(1_000 + 2 * MAX_TIMER_MS, 1_000), MAX_TIMER_MS);
        assert_eq!(until(1_050, 1_000), 50);
        assert_eq!(until(1_000, 1_000), 0);
        assert_eq!(until(900, 1_000), 0);
        assert_eq!(until(i64::MAX, 0), MAX_TIMER_MS);
        assert_eq!(deadline(1_000, 0), None);
        assert_eq!(deadline(1_000, 250), Some(1_250));
        assert_eq!(
            deadline(1_000, MAX_FINITE_TIMEOUT_MS),
            Some(1_000 + MAX_FINITE_TIMEOUT_MS)
        );
        assert_eq!(deadline(1_000, i64::MAX), None);
        assert_eq!(deadline(i64::MAX - 1, 5), Some(i64::MAX));
    }

    #[test]
    fn expiry_timer_plans() {
        let t = |id, at_ms| {
            Some(ExpiryTimer {
                id: TimerId(id),
                at_ms,
            })
        };
        assert_eq!(plan(None, None), TimerPlan::Keep);
        assert_eq!(plan(t(1, 50), Some(50)), TimerPlan::Keep);
        assert_eq!(
            plan(None, Some(50)),
            TimerPlan::Arm {
                stop: None,
                at_ms: 50
            }
        );
        // REFRESH moved the expiry.
        assert_eq!(
            plan(t(1, 50), Some(80)),
            TimerPlan::Arm {
                stop: Some(TimerId(1)),
                at_ms: 80
            }
        );
        // SET without expiry by another client.
        assert_eq!(plan(t(1, 50), None), TimerPlan::Stop(TimerId(1)));
    }
}
