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

use super::callbacks::{Callbacks, Reply};
use super::Handle;
use crate::ffi::{Contents, Ctx, Level, OwnedStr, RStr};
use crate::store::{fence_name, holder_token, remove_grant, RedisStore};
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
        // `A`: the server frees the client at the end of this iteration
        // (its socket read failed, or its output buffer overflowed).
        self.ctx
            .client_flags(client_id)
            .is_some_and(|flags| flags.contains('A'))
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

    fn acquire_for(&mut self, db: i32, key: &[u8], owner: &[u8], ttl_ms: i64) -> Acquired {
        if !self.select(db) {
            return Ok(None);
        }
        let (name, owner) = (OwnedStr::new(key), OwnedStr::new(owner));
        let mut store = RedisStore::open(self.ctx, name.as_rstr(), owner.as_rstr());
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
        process::with(|p| holder_token(ctx, &p.ledger, name.as_rstr(), &grant.owner))
            == Ok(Some(grant.token))
    }

    fn undo(&mut self, grant: &Grant) -> bool {
        let ctx = self.ctx;
        self.select(grant.db)
            && process::with(|p| {
                remove_grant(ctx, &mut p.ledger, &grant.key, &grant.owner, grant.token)
            })
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
