//! `ServerHost`: the engine's `Host` over one callback's context. Every
//! engine question (is the lock free, is this client closing, are writes
//! paused, does this node serve the slot) and every act (acquire for a
//! waiter, undo a grant, unblock, free a handle, arm a timer) goes through
//! here.

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

use spacelock_core::fence::{key_slot, serves_slot};
use spacelock_core::handoff::{
    Acquired, Event, Grant, Host, LockState, Outcome, TimerId, TimerKind,
};
use spacelock_core::lock;
use spacelock_core::shared::{self, admit, Held, Holder, KeyMode, Mode, Want, MODE_FIELD};

use super::callbacks::{Callbacks, Reply};
use super::Handle;
use crate::ffi::{Contents, Ctx, Level, OwnedStr, RStr};
use crate::store::{fence_name, holder_token, remove_grant, HashStore, RedisStore};
use crate::{config, process, stats};

/// Whether the failure of the write-pause probe has been logged.
static PROBE_WARNED: AtomicBool = AtomicBool::new(false);

/// Where a callback runs: only a timer may select another database, or
/// unsubscribe from keyspace events.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Site {
    Command,
    Timer,
    Callback,
}

/// `Host` over one callback's context.
pub(super) struct ServerHost<'c> {
    ctx: &'c Ctx,
    /// The database the context is on, asked for when first needed: the
    /// context of a free callback has no client (and so no database), and
    /// must never ask.
    db: Option<i32>,
    site: Site,
    went_idle: bool,
}

impl<'c> ServerHost<'c> {
    pub(super) fn new(ctx: &'c Ctx, site: Site) -> Self {
        ServerHost {
            ctx,
            db: None,
            site,
            went_idle: false,
        }
    }

    /// Whether the engine said nobody waits any more during this step.
    pub(super) fn went_idle(&self) -> bool {
        self.went_idle
    }

    /// Acts on database `db`: timers select it; elsewhere the engine only
    /// ever asks for the context's own database.
    fn select(&mut self, db: i32) -> bool {
        let ctx = self.ctx;
        if *self.db.get_or_insert_with(|| ctx.selected_db()) == db {
            return true;
        }
        if self.site == Site::Timer && self.ctx.select_db(db) {
            self.db = Some(db);
            return true;
        }
        false
    }

    /// Whether `name` reads as free after a look-up for writing yet is still
    /// stored: the state of a paused primary (or Valkey's import-mode),
    /// where writing it would abort the server. A failed probe (`MEMORY`
    /// renamed, a cluster redirect) counts as not stored, as before.
    fn stuck(&self, name: RStr<'_>) -> bool {
        if self.ctx.open_write(name).contents() != Contents::Missing {
            return false;
        }
        self.ctx.stored_at_all(name).unwrap_or_else(|| {
            if !PROBE_WARNED.swap(true, Relaxed) {
                self.ctx.log(
                    Level::Warning,
                    "spacelock: could not ask MEMORY USAGE whether a free-looking key is still stored (the command is renamed, or the cluster redirects it); WAIT grants from timers go ahead without that check",
                );
            }
            false
        })
    }
}

impl Host for ServerHost<'_> {
    type Handle = Handle;

    fn now_ms(&mut self) -> i64 {
        self.ctx.now_ms()
    }

    fn is_replica(&mut self) -> bool {
        self.ctx.is_replica()
    }

    fn in_cluster(&mut self) -> bool {
        self.ctx.in_cluster()
    }

    fn serves_slot(&mut self, key: &[u8]) -> bool {
        self.ctx
            .cluster_nodes()
            .is_some_and(|nodes| serves_slot(&nodes, key_slot(key)))
    }

    /// Writes are paused when the server asks modules to avoid replica
    /// traffic (`CLIENT PAUSE … WRITE`, `FAILOVER`, a cluster manual
    /// failover); as a backstop, also when the lock or fence key is stuck
    /// (see [`ServerHost::stuck`]).
    fn writes_paused(&mut self, db: i32, key: &[u8]) -> bool {
        if !self.select(db) {
            return true;
        }
        // Redis 7.0 learns that a pause ended only with a fresh clock.
        self.ctx.refresh_cached_clock();
        if self.ctx.avoid_replica_traffic() {
            return true;
        }
        let name = OwnedStr::new(key);
        if self.stuck(name.as_rstr()) {
            return true;
        }
        let fence = fence_name(key);
        self.stuck(fence.as_rstr())
    }

    fn client_closing(&mut self, client_id: u64) -> bool {
        self.ctx
            .client_entry(client_id)
            .is_some_and(|entry| closing(&entry))
    }

    /// The server checks a connection's output buffer limit when a reply is
    /// added, and again when it takes over the reply callback's output,
    /// after the callback has returned (Redis 7.0 to Valkey 9.1): a look at
    /// the flags after replying would not see that second check close it.
    /// So the overflow is foreseen from what the connection has not read
    /// yet, before the token is written.
    fn reply_would_close(&mut self, client_id: u64) -> bool {
        let Some(entry) = self.ctx.client_entry(client_id) else {
            return false;
        };
        if closing(&entry) {
            return true;
        }
        let Some(unread) = unread_reply_bytes(&entry) else {
            // Nothing unread: the reply goes into its empty buffer.
            return false;
        };
        self.ctx
            .config_value(c"client-output-buffer-limit")
            .and_then(|limits| output_limits(&limits, output_class(&entry)))
            .is_some_and(|limits| overflows(unread, limits))
    }

    fn lock_state(&mut self, db: i32, key: &[u8]) -> LockState {
        if !self.select(db) {
            return LockState::Held { expire_at_ms: None };
        }
        let name = OwnedStr::new(key);
        match self.ctx.open_read(name.as_rstr()) {
            Some(k) if k.contents() != Contents::Missing => LockState::Held {
                expire_at_ms: k.expire_at_ms(),
            },
            _ => LockState::Free,
        }
    }

    fn lock_state_for(&mut self, db: i32, key: &[u8], mode: Mode, owner: &[u8]) -> LockState {
        if !self.select(db) {
            return LockState::Held { expire_at_ms: None };
        }
        let name = OwnedStr::new(key);
        let Some(k) = self.ctx.open_read(name.as_rstr()) else {
            return LockState::Free;
        };
        let held = match k.contents() {
            Contents::Missing => return LockState::Free,
            // Today's exclusive lock: held until it goes.
            Contents::Str(_) if mode == Mode::Exclusive => {
                return LockState::Held {
                    expire_at_ms: k.expire_at_ms(),
                }
            }
            Contents::Str(_) => Held::Exclusive,
            Contents::Other if k.is_hash() => {
                // A shared or counted key, read as of now without writing
                // (a timer may run during a write pause): only live
                // holders count, and the earliest deadline is when to look
                // again.
                let Some(key_mode) = k.hash_get(MODE_FIELD).and_then(|m| KeyMode::parse(&m)) else {
                    // Not a lock: the grant fails with WRONGTYPE.
                    return LockState::Free;
                };
                let now = self.ctx.now_ms();
                let mut live = 0usize;
                let mut earliest: Option<i64> = None;
                let mut is_holder = false;
                for (field, value) in k.hash_fields() {
                    if field.as_slice() == MODE_FIELD {
                        continue;
                    }
                    let Ok(h) = Holder::parse(&value) else {
                        return LockState::Free;
                    };
                    if !h.live_at(now) {
                        continue;
                    }
                    live += 1;
                    earliest = Some(earliest.map_or(h.deadline_ms, |e| e.min(h.deadline_ms)));
                    is_holder |= field.as_slice() == owner;
                }
                if live == 0 {
                    return LockState::Free;
                }
                let held = match key_mode {
                    KeyMode::Limit(limit) => Held::Counted {
                        limit,
                        holders: live,
                    },
                    _ => Held::Shared(live),
                };
                let want = Want { mode, owner };
                return match admit(held, None, want, |_| is_holder) {
                    // Granted now, or told the wrong mode.
                    Ok(true) | Err(_) => LockState::Free,
                    Ok(false) => LockState::Held {
                        expire_at_ms: earliest,
                    },
                };
            }
            Contents::Other => return LockState::Free,
        };
        let want = Want { mode, owner };
        match admit(held, None, want, |_| false) {
            Ok(true) | Err(_) => LockState::Free,
            Ok(false) => LockState::Held {
                expire_at_ms: k.expire_at_ms(),
            },
        }
    }

    fn acquire_mode(
        &mut self,
        db: i32,
        key: &[u8],
        owner: &[u8],
        ttl_ms: i64,
        mode: Mode,
    ) -> Acquired {
        let Some(key_mode) = KeyMode::of(mode) else {
            return self.acquire_for(db, key, owner, ttl_ms);
        };
        if !self.select(db) {
            return Ok(None);
        }
        let name = OwnedStr::new(key);
        let mut store = HashStore::open(self.ctx, name.as_rstr());
        process::with_shared(|p, index| {
            shared::acquire(
                &mut store,
                owner,
                ttl_ms,
                key_mode,
                None,
                p,
                index,
                config::policy(),
            )
        })
    }

    fn acquire_for(&mut self, db: i32, key: &[u8], owner: &[u8], ttl_ms: i64) -> Acquired {
        if !self.select(db) {
            return Ok(None);
        }
        let (name, owner) = (OwnedStr::new(key), OwnedStr::new(owner));
        let mut store = RedisStore::open(self.ctx, name.as_rstr(), owner.as_rstr());
        if store.is_hash() {
            // A shared or counted key whose last lease ended: free now.
            drop(store);
            crate::commands::sweep_shared(self.ctx, name.as_rstr())?;
            store = RedisStore::open(self.ctx, name.as_rstr(), owner.as_rstr());
        }
        process::with(|p| lock::acquire(&mut store, ttl_ms, p, config::policy()))
    }

    fn grant_stands(&mut self, grant: &Grant) -> bool {
        if !self.select(grant.db) {
            return false;
        }
        // By the module's own ledger: the fence key may have been changed
        // by anyone in the meantime.
        let name = OwnedStr::new(&grant.key);
        let ctx = self.ctx;
        // A share or permit: its own field, with this token and live.
        let mut store = HashStore::open_read(ctx, name.as_rstr());
        if store.is_hash() {
            return shared::check(&mut store, &grant.owner, grant.token) == Ok(true);
        }
        drop(store);
        process::with(|p| holder_token(ctx, p, name.as_rstr(), &grant.owner))
            == Ok(Some(grant.token))
    }

    fn undo(&mut self, grant: &Grant) -> bool {
        let ctx = self.ctx;
        if !self.select(grant.db) {
            return false;
        }
        let name = OwnedStr::new(&grant.key);
        let mut store = HashStore::open(ctx, name.as_rstr());
        if store.is_hash() {
            // Only that grant's share: an HDEL if its field still holds
            // this token (a DEL if it was the last).
            return process::with_shared(|p, index| {
                shared::undo(
                    &mut store,
                    &grant.owner,
                    grant.token,
                    p,
                    index,
                    config::policy(),
                )
            }) == Ok(true);
        }
        drop(store);
        process::with(|p| remove_grant(ctx, p, &grant.key, &grant.owner, grant.token))
    }

    fn unblock(&mut self, handle: Handle, outcome: Outcome) {
        handle.unblock(Reply::new(outcome));
    }

    fn free_handle(&mut self, handle: Handle) {
        handle.discard_disconnected();
    }

    fn arm(&mut self, kind: TimerKind, period_ms: i64) -> TimerId {
        TimerId(self.ctx.create_timer::<Callbacks>(period_ms, kind.encode()))
    }

    fn stop(&mut self, id: TimerId) {
        self.ctx.stop_timer(id.0);
    }

    fn count(&mut self, event: Event) {
        match event {
            Event::Handoff => stats::HANDOFFS.incr(),
            Event::Timeout => stats::WAIT_TIMEOUTS.incr(),
            Event::Undone => stats::WAIT_GRANTS_UNDONE.incr(),
            Event::GrantLost => stats::WAIT_GRANTS_LOST.incr(),
        }
    }

    fn idle(&mut self) {
        self.went_idle = true;
    }
}

/// A field of a `CLIENT LIST` line.
fn field<'a>(entry: &'a str, name: &str) -> Option<&'a str> {
    entry
        .split_whitespace()
        .find_map(|f| f.strip_prefix(name)?.strip_prefix('='))
}

/// `A`: the server frees the client at the end of this iteration (its
/// socket read failed, or its output buffer overflowed).
fn closing(entry: &str) -> bool {
    field(entry, "flags").is_some_and(|flags| flags.contains('A'))
}

/// The output the connection has not read (`omem`, the reply list the limit
/// counts), or `None` when it has nothing unread at all (`obl`, its static
/// buffer, empty too).
fn unread_reply_bytes(entry: &str) -> Option<u64> {
    let number = |name| field(entry, name).and_then(|v| v.parse::<u64>().ok());
    let (buffered, listed) = (number("obl").unwrap_or(0), number("omem").unwrap_or(0));
    (buffered > 0 || listed > 0).then_some(listed)
}

/// The `client-output-buffer-limit` class of a connection: `pubsub` for a
/// subscriber (flag `P`, a RESP3 client can WAIT while subscribed), else
/// `normal`.
fn output_class(entry: &str) -> &'static str {
    if field(entry, "flags").is_some_and(|flags| flags.contains('P')) {
        "pubsub"
    } else {
        "normal"
    }
}

/// The (hard, soft) byte limits of `class` in the value of
/// `client-output-buffer-limit` (`normal 0 0 0 replica … pubsub …`; 0: none).
fn output_limits(value: &str, class: &str) -> Option<(u64, u64)> {
    let words: Vec<&str> = value.split_whitespace().collect();
    let group = words.chunks_exact(4).find(|g| g[0] == class)?;
    Some((group[1].parse().ok()?, group[2].parse().ok()?))
}

/// Room for the reply itself: it may open one more reply block (16 KiB plus
/// the allocator's rounding and the block's header).
const REPLY_ROOM: u64 = 64 * 1024;

/// Whether a reply added behind `unread` bytes may trip a limit. The hard
/// limit closes at once; the soft one only after it has been exceeded for
/// its seconds, which the server does not tell: exceeding it counts.
fn overflows(unread: u64, (hard, soft): (u64, u64)) -> bool {
    let after = unread.saturating_add(REPLY_ROOM);
    (hard > 0 && after >= hard) || (soft > 0 && after >= soft)
}

#[cfg(test)]
mod tests {
    use super::*;

    const REDIS70: &str = "id=5 addr=127.0.0.1:44116 laddr=127.0.0.1:17411 fd=9 name= age=0 idle=0 flags=b db=0 sub=0 psub=0 ssub=0 multi=-1 qbuf=0 qbuf-free=20474 argv-mem=29 multi-mem=0 rbs=16384 rbp=16384 obl=0 oll=1 omem=33554456 tot-mem=33592165 events=rw cmd=spacelock.acquire user=default redir=-1 resp=2";
    const VALKEY91: &str = "id=4 addr=127.0.0.1:44134 laddr=127.0.0.1:17411 fd=11 name= age=0 idle=0 flags=b capa= db=0 sub=0 psub=0 ssub=0 multi=-1 watch=0 qbuf=0 qbuf-free=0 argv-mem=29 multi-mem=0 rbs=16392 rbp=16392 obl=36 oll=0 omem=33554445 tot-mem=33571498 events=rw cmd=spacelock.acquire user=default redir=-1 resp=2 lib-name= lib-ver= tot-net-in=92 tot-net-out=3899392 tot-cmds=1";
    const IDLE: &str = "id=7 addr=127.0.0.1:5 laddr=127.0.0.1:6 fd=9 name=omem flags=b db=0 obl=0 oll=0 omem=0 cmd=spacelock.acquire";

    #[test]
    fn fields_of_a_client_list_line() {
        assert_eq!(field(REDIS70, "flags"), Some("b"));
        assert_eq!(field(REDIS70, "omem"), Some("33554456"));
        assert_eq!(field(IDLE, "name"), Some("omem"));
        assert_eq!(field(IDLE, "mem"), None, "whole field names only");
        assert!(!closing(REDIS70));
        assert!(closing("id=1 flags=bA omem=0"));
        assert_eq!(output_class(REDIS70), "normal");
        assert_eq!(output_class("id=1 flags=bP"), "pubsub");
    }

    #[test]
    fn unread_output() {
        assert_eq!(unread_reply_bytes(REDIS70), Some(33_554_456));
        assert_eq!(unread_reply_bytes(VALKEY91), Some(33_554_445));
        assert_eq!(unread_reply_bytes(IDLE), None);
        assert_eq!(unread_reply_bytes("id=1 obl=12 omem=0"), Some(0));
    }

    #[test]
    fn limits_by_class() {
        let redis = "normal 0 0 0 slave 268435456 67108864 60 pubsub 33554432 8388608 60";
        let valkey = "normal 1048576 0 0 replica 268435456 67108864 60 pubsub 33554432 8388608 60";
        assert_eq!(output_limits(redis, "normal"), Some((0, 0)));
        assert_eq!(
            output_limits(redis, "pubsub"),
            Some((33_554_432, 8_388_608))
        );
        assert_eq!(output_limits(valkey, "normal"), Some((1_048_576, 0)));
        assert_eq!(output_limits("", "normal"), None);
        assert_eq!(output_limits("normal x 0 0", "normal"), None);
    }

    #[test]
    fn what_overflows() {
        assert!(!overflows(u64::MAX, (0, 0)), "no limits");
        assert!(overflows(33_554_456, (1 << 20, 0)), "past the hard limit");
        assert!(
            overflows((1 << 20) - 100, (1 << 20, 0)),
            "the reply's block crosses it"
        );
        assert!(!overflows(1 << 19, (1 << 20, 0)));
        assert!(
            overflows(9 << 20, (32 << 20, 8 << 20)),
            "past the soft limit"
        );
        assert!(!overflows(0, (1 << 20, 1 << 20)));
    }
}
