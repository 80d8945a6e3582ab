//! The server side of `ACQUIRE … WAIT`: `spacelock_core::wait` makes every
//! decision (its docs say why no interleaving of grants, deadlines,
//! disconnects, pauses and slow commands breaks the WAIT guarantee); this
//! file carries them out on the server.
//!
//! * [`ServerHost`] implements the engine's `Host` over one callback's
//!   context.
//! * [`Waits`] receives the server's callbacks: the blocked clients' reply,
//!   disconnect and free callbacks, the module timers, keyspace events, and
//!   flushes / role changes / `SWAPDB`.
//! * The registry is one static, locked for one callback at a time. The
//!   engine's writes fire keyspace events, which come back here while it is
//!   locked; they are ours, and [`SelfWrites`] makes the event callback
//!   ignore them before it looks at the registry.
//! * Keyspace events are subscribed while someone waits (a server where
//!   nobody ever waits pays nothing for them), and unsubscribed from a
//!   timer once nobody does, where the server can (Redis 7.4+, Valkey 8.1+).
//!
//! # What this relies on in the server
//!
//! Checked in the sources of Redis 7.0.15, Redis 8.0.6 and Valkey 9.1.2
//! (module.c, networking.c, blocked.c, server.c), and exercised on every
//! supported server by `tests/wait_races.rs`:
//!
//! * A client blocked with timeout 0 is never timed out by the server, and
//!   `CLIENT UNBLOCK` (and anything else that goes through
//!   `moduleBlockedClientMayTimeout`) leaves a module client without a
//!   timeout callback alone. So no server path unblocks a waiter but ours,
//!   except a disconnect or the server letting go of every blocked client on
//!   a role change (both call the disconnect callback).
//! * The disconnect callback is called whenever the client goes away before
//!   the server has run its reply callback, even after the module unblocked
//!   it (the server clears the callback only once the reply callback ran).
//!   So a waiter still queued always leaves the queue, and a grant in flight
//!   is never taken for delivered.
//! * The private data of an unblock is always freed, after the reply
//!   callback or, for a client gone, instead of it (free callback with no
//!   client in its context: it must not touch keys, and does not).
//! * A client whose socket read failed, or whose output buffer overflowed, is
//!   only marked to close (`CLIENT_CLOSE_ASAP`, flag `A` in `CLIENT LIST`)
//!   and freed at the end of the iteration, after the reply callbacks: the
//!   reply callback must look for that flag, and does.
//! * `beforeSleep` answers the server's own timeouts before (Redis 7.0) or
//!   after (newer) the module reply callbacks: nothing here depends on it,
//!   since the server has no timeouts of ours to answer.
//! * Redis 7.0 updates its cached clock only in its cron and at the start of
//!   a command: a timer that asks whether a timed write pause has ended
//!   first runs a command (`PING`) through `RedisModule_Call`.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering::Relaxed};
use std::sync::{Mutex, MutexGuard};

use spacelock_core::fence::key_slot;
use spacelock_core::lock;
use spacelock_core::wait::{
    self as engine, Answer, DbScope, Event, Grant, Granted, Host, LockState, Outcome, Registry,
    Request, TimerId, TimerKind,
};

use crate::ffi::{
    BlockedClient, Blocking, CommandError, Contents, Ctx, KeyEvents, Level, OwnedStr, RStr,
    ServerEvent, ServerEvents, Timers,
};
use crate::store::{fence_name, holds, remove_grant, RedisStore};
use crate::{config, stats, terms};

/// The module's handler of every WAIT callback.
pub struct Waits;

type Handle = BlockedClient<Waits>;

// Plain statics, not `thread_local!`: a TLS destructor registered by the
// shared object would keep glibc from unloading it on MODULE UNLOAD (and a
// reload would then see the old statics).
static REGISTRY: Mutex<Option<Registry<Handle>>> = Mutex::new(None);
static SELF_WRITES: AtomicU32 = AtomicU32::new(0);
/// Whether [`Waits`] is subscribed to keyspace events.
static SUBSCRIBED: AtomicBool = AtomicBool::new(false);
/// Whether the failure of the write-pause probe has been logged.
static PROBE_WARNED: AtomicBool = AtomicBool::new(false);

fn registry() -> MutexGuard<'static, Option<Registry<Handle>>> {
    crate::sync::lock(&REGISTRY)
}

/// While alive, keyspace events are ours (a spacelock command or a settle
/// that handles its key itself) and are not scheduled for a settle.
pub struct SelfWrites(());

impl SelfWrites {
    /// Starts a section of spacelock's own writes.
    #[must_use]
    pub fn begin() -> Self {
        SELF_WRITES.fetch_add(1, Relaxed);
        SelfWrites(())
    }
}

impl Drop for SelfWrites {
    fn drop(&mut self) {
        SELF_WRITES.fetch_sub(1, Relaxed);
    }
}

/// Where a callback runs: only a timer may select another database, or
/// unsubscribe from keyspace events.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Site {
    Command,
    Timer,
    Callback,
}

/// `Host` over one callback's context.
struct ServerHost<'c> {
    ctx: &'c Ctx,
    /// The database the context is on, asked for when first needed: the
    /// context of a free callback has no client (and so no database), and
    /// must never ask.
    db: Option<i32>,
    site: Site,
    went_idle: bool,
}

impl<'c> ServerHost<'c> {
    fn new(ctx: &'c Ctx, site: Site) -> Self {
        ServerHost {
            ctx,
            db: None,
            site,
            went_idle: false,
        }
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
            .is_some_and(|nodes| engine::serves_slot(&nodes, key_slot(key)))
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

    fn grant(&mut self, db: i32, key: &[u8], owner: &[u8], ttl_ms: i64) -> Granted {
        if !self.select(db) {
            return Ok(None);
        }
        let (name, owner) = (OwnedStr::new(key), OwnedStr::new(owner));
        let mut store = RedisStore::open(self.ctx, name.as_rstr(), owner.as_rstr());
        terms::with(|t| lock::acquire(&mut store, ttl_ms, t, config::token_mode()))
    }

    fn grant_stands(&mut self, grant: &Grant) -> bool {
        if !self.select(grant.db) {
            return false;
        }
        let name = OwnedStr::new(&grant.key);
        holds(self.ctx, name.as_rstr(), &grant.owner, grant.token) == Ok(true)
    }

    fn undo(&mut self, grant: &Grant) -> bool {
        self.select(grant.db) && remove_grant(self.ctx, &grant.key, &grant.owner, grant.token)
    }

    fn unblock(&mut self, handle: Handle, outcome: Outcome) {
        handle.unblock(Reply {
            outcome,
            delivered: false,
        });
    }

    fn release(&mut self, handle: Handle) {
        handle.discard_disconnected();
    }

    fn arm(&mut self, kind: TimerKind, period_ms: i64) -> TimerId {
        TimerId(self.ctx.create_timer::<Waits>(period_ms, kind.encode()))
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

/// Runs one engine step for a callback: the registry locked, our writes
/// muted, and, once nobody waits, keyspace events unsubscribed (from a
/// timer: this may run inside the server's event dispatch).
fn step<R>(
    ctx: &Ctx,
    site: Site,
    f: impl FnOnce(&mut ServerHost<'_>, &mut Registry<Handle>) -> R,
) -> R {
    let _quiet = SelfWrites::begin();
    let mut guard = registry();
    let reg = guard.get_or_insert_with(Registry::new);
    let mut host = ServerHost::new(ctx, site);
    let out = f(&mut host, reg);
    if host.went_idle
        && reg.is_idle()
        && SUBSCRIBED.load(Relaxed)
        && Ctx::can_unsubscribe_key_events()
    {
        if site == Site::Timer {
            if ctx.unsubscribe_key_events::<Waits>() {
                SUBSCRIBED.store(false, Relaxed);
            }
        } else {
            engine::arm_pending(&mut host, reg);
        }
    }
    out
}

/// (waiting clients, keys with waiters) for INFO.
pub fn gauges() -> (u64, u64) {
    // try_lock: INFO may run in a crash report while the lock is held.
    crate::sync::try_lock(&REGISTRY).map_or((0, 0), |r| r.as_ref().map_or((0, 0), Registry::gauges))
}

/// Clients waiting on `key` in `db`.
pub fn waiters_on(db: i32, key: &[u8]) -> usize {
    registry().as_ref().map_or(0, |r| r.len(db, key))
}

/// Settles `key` from a spacelock command: hands a free lock to its head
/// waiter, undoes a grant nobody received, keeps the expiry timer in line.
pub fn settle(ctx: &Ctx, key: RStr<'_>) {
    // Cheap exit for the common case: nobody waits anywhere.
    if registry().as_ref().is_none_or(Registry::is_idle) {
        return;
    }
    let db = ctx.selected_db();
    step(ctx, Site::Command, |host, reg| {
        engine::settle(host, reg, db, key.as_bytes(), engine::Origin::Command)
    });
}

/// Blocks the caller in `key`'s queue (its ACQUIRE found the lock held).
///
/// # Errors
///
/// Too many waiters, or a client that cannot block here.
pub fn enqueue(
    ctx: &Ctx,
    key: RStr<'_>,
    owner: RStr<'_>,
    ttl_ms: i64,
    timeout_ms: i64,
) -> Result<(), CommandError> {
    let db = ctx.selected_db();
    let max = config::max_waiters();
    step(ctx, Site::Command, |host, reg| {
        engine::may_enqueue(reg, db, key.as_bytes(), max)
            .map_err(|_| CommandError::Reply(engine::too_many_waiters(max)))?;
        let handle = ctx.block_client::<Waits>().ok_or_else(|| {
            CommandError::Reply("ERR spacelock: this client cannot block here".into())
        })?;
        let req = Request {
            handle,
            client_id: ctx.client_id(),
            owner: owner.as_bytes(),
            ttl_ms,
            timeout_ms,
        };
        engine::enqueue(host, reg, db, key.as_bytes(), req);
        Ok::<(), CommandError>(())
    })?;
    // Keyspace events matter only while someone waits.
    if !SUBSCRIBED.load(Relaxed) && ctx.subscribe_key_events::<Waits>() {
        SUBSCRIBED.store(true, Relaxed);
    }
    Ok(())
}

/// A blocked client's private data: its outcome, and whether the reply
/// callback delivered it.
pub struct Reply {
    outcome: Outcome,
    delivered: bool,
}

impl Blocking for Waits {
    type Reply = Reply;

    fn reply(ctx: &Ctx, reply: &mut Reply) {
        let client_id = ctx.client_id();
        let answer = step(ctx, Site::Callback, |host, _| {
            engine::answer(host, &reply.outcome, client_id)
        });
        reply.delivered = answer.is_some();
        match answer {
            Some(Answer::Token(token)) => ctx.reply_i64(token),
            Some(Answer::Error(e)) => ctx.reply_error(&e),
            // Undeliverable (the client is closing): it reads nothing, and
            // `freed` undoes the grant.
            Some(Answer::Nil) | None => ctx.reply_null(),
        }
    }

    fn disconnected(ctx: &Ctx, handle: Handle) {
        step(ctx, Site::Callback, |host, reg| {
            engine::on_disconnect(host, reg, handle)
        });
    }

    fn freed(ctx: &Ctx, reply: Reply) {
        if reply.delivered {
            return;
        }
        step(ctx, Site::Callback, |host, reg| {
            engine::undelivered(host, reg, reply.outcome)
        });
    }
}

impl Timers for Waits {
    fn fired(ctx: &Ctx, data: u64) {
        let Some(kind) = TimerKind::decode(data) else {
            return;
        };
        step(ctx, Site::Timer, |host, reg| {
            engine::on_timer(host, reg, kind)
        });
    }
}

impl KeyEvents for Waits {
    fn event(ctx: &Ctx, key: RStr<'_>) {
        if SELF_WRITES.load(Relaxed) > 0 {
            return;
        }
        // Not `registry()`: an event raised while the registry is locked
        // would deadlock. Every such event is one of ours (muted above); a
        // busy lock here would be a bug, and skipping the event only delays
        // a grant to the queue's next timer.
        let Some(mut guard) = crate::sync::try_lock(&REGISTRY) else {
            return;
        };
        let Some(reg) = guard.as_mut().filter(|r| !r.is_idle()) else {
            return;
        };
        let db = ctx.selected_db();
        let mut host = ServerHost::new(ctx, Site::Callback);
        engine::on_key_event(&mut host, reg, db, key.as_bytes());
    }
}

impl ServerEvents for Waits {
    fn event(ctx: &Ctx, event: ServerEvent) {
        let scope = match event {
            ServerEvent::Flushed { db: Some(db) } => DbScope::One(db),
            ServerEvent::Flushed { db: None } | ServerEvent::SwappedDbs => DbScope::All,
            ServerEvent::NowPrimary => {
                // A promoted replica may have missed writes of its old
                // primary: its tokens start above them by the clock.
                let term = terms::open(ctx.now_ms());
                ctx.log(
                    Level::Notice,
                    &format!(
                        "spacelock: this server is now a primary; opened a token term at {} (next token >= {})",
                        term.start_ms(),
                        term.next()
                    ),
                );
                DbScope::All
            }
            ServerEvent::NowReplica => DbScope::All,
        };
        if registry().as_ref().is_none_or(Registry::is_idle) {
            return;
        }
        step(ctx, Site::Callback, |host, reg| {
            engine::on_flush(host, reg, scope)
        });
    }
}
