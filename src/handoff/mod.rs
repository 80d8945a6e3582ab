//! The server side of the WAIT handoff (`ACQUIRE … WAIT`):
//! `spacelock_core::handoff` makes every decision (its docs say why no
//! interleaving of grants, deadlines, disconnects, pauses and slow commands
//! breaks the WAIT guarantee); this folder carries them out on the server,
//! one job a file:
//!
//! * this file: the registry (one static, locked for one callback at a
//!   time), [`step`] that runs one engine call under it, and what the
//!   commands call: [`settle_from_command`], [`enqueue`], [`waiters_on`],
//!   [`gauges`]; and, for `MODULE UNLOAD`, [`unload_blocker`] and
//!   [`release_for_unload`];
//! * [`host`]: `ServerHost`, the engine's `Host` over one callback's
//!   context (lock state, the grant as ACQUIRE writes it, undo, unblock,
//!   timers);
//! * [`callbacks`]: [`Callbacks`], which receives the blocked clients'
//!   reply, disconnect and free callbacks, the module timers, and flushes /
//!   role changes / `SWAPDB`;
//! * [`keyspace`]: keyspace events, subscribed while someone waits (a
//!   server where nobody ever waits pays nothing for them) and unsubscribed
//!   from a timer once nobody does, where the server can (Redis 7.4+,
//!   Valkey 8.1+);
//! * [`self_writes`]: [`SelfWrites`]. The engine's writes fire keyspace
//!   events, which come back here while the registry is locked; they are
//!   ours, and `SelfWrites` makes the event callback ignore them before it
//!   looks at the registry.
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
//! * The output buffer limit is checked when a reply is added, and once more
//!   when the server takes over the reply callback's output, after the
//!   callback and the free callback have returned. Neither callback can see
//!   that close, so the reply callback foresees it from the client's unread
//!   output (`omem`) and `client-output-buffer-limit`.
//! * A module timer armed with a 0 ms period from a command runs in the same
//!   event-loop iteration, after every command the server read in it, and
//!   the reply callbacks run at the start of the next `beforeSleep`, before
//!   the server reads another command (unless I/O threads read for it:
//!   Redis 7.0 runs what they read first thing in `beforeSleep`). So a grant
//!   the pending timer writes meets no command before its reply.
//! * `REPLICAOF` lets every blocked client go with `-UNBLOCKED` from inside
//!   the command, calling their disconnect callbacks while the server is
//!   still a primary; but what a module replicates there goes out after the
//!   command, when the server is a replica and feeds no replica any more. A
//!   grant written earlier in the iteration could not be undone on the
//!   replicas: so no command writes a grant (the engine's `settle` makes it
//!   due, the pending timer writes it).
//! * `beforeSleep` answers the server's own timeouts before (Redis 7.0) or
//!   after (newer) the module reply callbacks: nothing here depends on it,
//!   since the server has no timeouts of ours to answer.
//! * Redis 7.0 updates its cached clock only in its cron and at the start of
//!   a command: a timer that asks whether a timed write pause has ended
//!   first runs a command (`PING`) through `RedisModule_Call`.

mod callbacks;
mod host;
mod keyspace;
mod self_writes;

use std::sync::{Mutex, MutexGuard};

use spacelock_core::handoff::{self as engine, Origin, Registry, Request};
use spacelock_core::shared::{Kind, Mode};

use crate::config;
use crate::ffi::{BlockedClient, CommandError, Ctx, RStr};

pub use callbacks::Callbacks;
use host::{ServerHost, Site};
pub use self_writes::SelfWrites;

/// A blocked client's handle, as the registry keeps it.
type Handle = BlockedClient<Callbacks>;

// A plain static, not `thread_local!`: a TLS destructor registered by the
// shared object would keep glibc from unloading it on MODULE UNLOAD (and a
// reload would then see the old statics).
static REGISTRY: Mutex<Option<Registry<Handle>>> = Mutex::new(None);

fn registry() -> MutexGuard<'static, Option<Registry<Handle>>> {
    crate::sync::lock(&REGISTRY)
}

/// Whether nobody waits anywhere (the cheap exit of most callbacks).
fn nobody_waits() -> bool {
    registry().as_ref().is_none_or(Registry::is_idle)
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
    if host.went_idle() && reg.is_idle() && keyspace::may_unsubscribe() {
        if site == Site::Timer {
            keyspace::unsubscribe(ctx);
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

/// The kind of lock the clients queued on `key` wait for (`None`: nobody
/// waits): a request of another kind is the wrong mode, and a request of
/// this kind queues behind them.
pub fn queue_kind(db: i32, key: &[u8]) -> Option<Kind> {
    if nobody_waits() {
        return None;
    }
    registry().as_ref().and_then(|r| r.kind(db, key))
}

/// The clients queued on `key`, in arrival order: (owner, mode).
pub fn queue_of(db: i32, key: &[u8]) -> Vec<(Vec<u8>, Mode)> {
    if nobody_waits() {
        return Vec::new();
    }
    registry()
        .as_ref()
        .map(|r| r.waiting(db, key))
        .unwrap_or_default()
}

/// Why the WAIT handoff keeps the module from unloading, if it does: a
/// client waits, or a grant nobody received is still to be undone.
pub fn unload_blocker() -> Option<String> {
    let guard = registry();
    let reg = guard.as_ref()?;
    let (clients, keys) = reg.gauges();
    if clients > 0 {
        return Some(format!(
            "{clients} client(s) wait in SPACELOCK.ACQUIRE ... WAIT on {keys} key(s)"
        ));
    }
    (!reg.is_idle()).then(|| {
        "a WAIT grant whose client went away is still to be undone (retry in a moment)".into()
    })
}

/// Lets go of everything the WAIT handoff holds, for `MODULE UNLOAD` once
/// [`unload_blocker`] found nothing: stops the timer it knows of (the
/// server refuses an unload while any timer of the module is armed, so this
/// is tidiness), drops the keyspace-event subscription and frees the
/// registry.
pub fn release_for_unload(ctx: &Ctx) {
    let mut guard = registry();
    if let Some(id) = guard.as_ref().and_then(Registry::pending_timer) {
        ctx.stop_timer(id.0);
    }
    *guard = None;
    drop(guard);
    keyspace::drop_for_unload(ctx);
}

/// Settles `key` from a spacelock command (the engine's `settle`, with
/// `Origin::Command`): undoes a grant nobody received, keeps the expiry
/// timer in line, and finding the lock free with clients queued, makes its
/// grant due: the pending timer writes it at the end of this event-loop
/// iteration (see [`grant_due`]).
pub fn settle_from_command(ctx: &Ctx, key: RStr<'_>) {
    if nobody_waits() {
        return;
    }
    let db = ctx.selected_db();
    step(ctx, Site::Command, |host, reg| {
        engine::settle(host, reg, db, key.as_bytes(), Origin::Command)
    });
}

/// Whether `key`'s lock is due to its queue at the end of this event-loop
/// iteration: it reads as free, but ACQUIRE must not take it (the engine's
/// `grant_due`).
pub fn grant_due(ctx: &Ctx, key: RStr<'_>) -> bool {
    if nobody_waits() {
        return false;
    }
    let db = ctx.selected_db();
    registry()
        .as_ref()
        .is_some_and(|r| engine::grant_due(r, db, key.as_bytes()))
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
    mode: Mode,
) -> Result<(), CommandError> {
    let db = ctx.selected_db();
    let max = config::max_waiters();
    step(ctx, Site::Command, |host, reg| {
        engine::may_enqueue(reg, db, key.as_bytes(), max)
            .map_err(|_| CommandError::Reply(engine::too_many_waiters(max)))?;
        let handle = ctx.block_client::<Callbacks>().ok_or_else(|| {
            CommandError::Reply("ERR spacelock: this client cannot block here".into())
        })?;
        let req = Request {
            handle,
            client_id: ctx.client_id(),
            owner: owner.as_bytes(),
            ttl_ms,
            timeout_ms,
            mode,
        };
        engine::enqueue(host, reg, db, key.as_bytes(), req);
        Ok::<(), CommandError>(())
    })?;
    // Keyspace events matter only while someone waits.
    keyspace::subscribe(ctx);
    Ok(())
}
