//! Timers, keyspace events and server events, each delivered to a handler
//! type of the module.

use std::ffi::{c_char, c_int, c_void};

use redis_module::raw;

use super::entry::guarded;
use super::{Ctx, LoadCtx, RStr};

/// What a module timer runs.
pub trait Timers: 'static {
    /// Timer `data` fired.
    fn fired(ctx: &Ctx, data: u64);
}

impl Ctx {
    /// Arms a one-shot module timer in `period_ms` that calls
    /// `T::fired(ctx, data)`. Returns its id.
    pub fn create_timer<T: Timers>(&self, period_ms: i64, data: u64) -> u64 {
        // SAFETY: valid ctx (the server only needs its module); `data` is an
        // integer disguised as a pointer and never dereferenced.
        unsafe {
            api!(RedisModule_CreateTimer)(
                self.raw(),
                period_ms.max(0),
                Some(timer_trampoline::<T>),
                data as usize as *mut c_void,
            )
        }
    }

    /// Stops timer `id` if it has not fired yet.
    pub fn stop_timer(&self, id: u64) {
        let mut data: *mut c_void = std::ptr::null_mut();
        // SAFETY: valid ctx; an unknown or fired id is reported as ERR and
        // is harmless. Our data is an integer, nothing to free.
        unsafe { api!(RedisModule_StopTimer)(self.raw(), id, &mut data) };
    }
}

extern "C" fn timer_trampoline<T: Timers>(ctx: *mut raw::RedisModuleCtx, data: *mut c_void) {
    let c = Ctx::from_raw(ctx);
    guarded(ctx, "timer", || T::fired(&c, data as usize as u64));
}

/// What keyspace events the module listens to.
pub trait KeyEvents: 'static {
    /// An event on `key` in the context's selected database.
    fn event(ctx: &Ctx, key: RStr<'_>);
}

/// Generic, expired and evicted events (DEL, UNLINK, RENAME, MOVE, MIGRATE,
/// EXPIRE — which `SET … PX` fires too —, expiry, eviction). Not string
/// events: a plain `SET` would then pay for a module callback on every key
/// of the server (measured +0.1–0.15 µs per SET on Redis 7.0).
const KEY_EVENTS: c_int = (raw::REDISMODULE_NOTIFY_GENERIC
    | raw::REDISMODULE_NOTIFY_EXPIRED
    | raw::REDISMODULE_NOTIFY_EVICTED) as c_int;

impl Ctx {
    /// Subscribes `K` to generic, expired and evicted keyspace events.
    pub fn subscribe_key_events<K: KeyEvents>(&self) -> bool {
        // SAFETY: valid ctx; plain callback function.
        let rc = unsafe {
            api!(RedisModule_SubscribeToKeyspaceEvents)(
                self.raw(),
                KEY_EVENTS,
                Some(key_event_trampoline::<K>),
            )
        };
        rc == raw::REDISMODULE_OK as c_int
    }

    /// Whether this server can undo a keyspace-event subscription (Redis
    /// 7.4+, Valkey 8.1+).
    pub fn can_unsubscribe_key_events() -> bool {
        // SAFETY: see `api!`.
        unsafe { raw::RedisModule_UnsubscribeFromKeyspaceEvents }.is_some()
    }

    /// Undoes [`subscribe_key_events`](Self::subscribe_key_events); `false`
    /// where the server cannot. Call only from a timer, never while the
    /// server dispatches a keyspace event (it walks the subscriber list).
    pub fn unsubscribe_key_events<K: KeyEvents>(&self) -> bool {
        // SAFETY: see `api!`; the function may be absent on older servers.
        let Some(unsubscribe) = (unsafe { raw::RedisModule_UnsubscribeFromKeyspaceEvents }) else {
            return false;
        };
        // SAFETY: valid ctx; the same (types, callback) pair we subscribed.
        let rc = unsafe { unsubscribe(self.raw(), KEY_EVENTS, Some(key_event_trampoline::<K>)) };
        rc == raw::REDISMODULE_OK as c_int
    }
}

extern "C" fn key_event_trampoline<K: KeyEvents>(
    ctx: *mut raw::RedisModuleCtx,
    _type: c_int,
    _event: *const c_char,
    key: *mut raw::RedisModuleString,
) -> c_int {
    let c = Ctx::from_raw(ctx);
    guarded(ctx, "keyspace event", || K::event(&c, RStr::from_raw(key)));
    raw::REDISMODULE_OK as c_int
}

/// A server event the module follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerEvent {
    /// `FLUSHALL` (`db: None`) or `FLUSHDB` of `db` finished.
    Flushed {
        /// The database flushed, `None` for all.
        db: Option<i32>,
    },
    /// The server became a primary (`REPLICAOF NO ONE`, a failover).
    NowPrimary,
    /// The server became a replica.
    NowReplica,
    /// `SWAPDB` swapped two databases.
    SwappedDbs,
    /// An iteration of the server's event loop is about to sleep or has
    /// woken up (only for [`LoadCtx::subscribe_event_loop`]).
    LoopIteration,
}

/// What the module does on server events.
pub trait ServerEvents: 'static {
    /// `event` happened.
    fn event(ctx: &Ctx, event: ServerEvent);
}

impl LoadCtx {
    /// Subscribes `E` to flushes, role changes and `SWAPDB`.
    ///
    /// # Errors
    ///
    /// If the server refused the flush or role subscriptions (SWAPDB is
    /// optional: without it, a swap is noticed when a timer fires).
    pub fn subscribe_server_events<E: ServerEvents>(&self) -> Result<(), String> {
        for (id, what, required) in [
            (raw::REDISMODULE_EVENT_FLUSHDB, "FlushDB", true),
            (
                raw::REDISMODULE_EVENT_REPLICATION_ROLE_CHANGED,
                "ReplicationRoleChanged",
                true,
            ),
            (raw::REDISMODULE_EVENT_SWAPDB, "SwapDB", false),
        ] {
            // The header defines the events as `static const`; build them.
            let event = raw::RedisModuleEvent { id, dataver: 1 };
            // SAFETY: valid load ctx; plain callback function.
            let rc = unsafe {
                api!(RedisModule_SubscribeToServerEvent)(
                    self.raw(),
                    event,
                    Some(server_event_trampoline::<E>),
                )
            };
            if required && rc != raw::REDISMODULE_OK as c_int {
                return Err(format!("cannot subscribe to the {what} server event"));
            }
        }
        Ok(())
    }
}

impl LoadCtx {
    /// Subscribes `E` to the server's event loop ([`ServerEvent::LoopIteration`]
    /// before and after every sleep) until [`Ctx::unsubscribe_event_loop`].
    ///
    /// # Errors
    ///
    /// If the server refused.
    pub fn subscribe_event_loop<E: ServerEvents>(&self) -> Result<(), String> {
        let event = raw::RedisModuleEvent {
            id: raw::REDISMODULE_EVENT_EVENTLOOP,
            dataver: 1,
        };
        // SAFETY: valid load ctx; plain callback function.
        let rc = unsafe {
            api!(RedisModule_SubscribeToServerEvent)(
                self.raw(),
                event,
                Some(server_event_trampoline::<E>),
            )
        };
        if rc != raw::REDISMODULE_OK as c_int {
            return Err("cannot subscribe to the EventLoop server event".into());
        }
        Ok(())
    }
}

impl Ctx {
    /// Ends [`LoadCtx::subscribe_event_loop`]. Call only from a timer: the
    /// server frees the subscription at once, and must not be inside the
    /// event's own dispatch, which still uses it after the callback.
    pub fn unsubscribe_event_loop(&self) {
        let event = raw::RedisModuleEvent {
            id: raw::REDISMODULE_EVENT_EVENTLOOP,
            dataver: 1,
        };
        // SAFETY: valid ctx; a NULL callback removes the module's listener
        // of this event, if any.
        unsafe { api!(RedisModule_SubscribeToServerEvent)(self.raw(), event, None) };
    }
}

/// Sub-event numbers from redismodule.h.
const SUBEVENT_FLUSHDB_END: u64 = 1;
const SUBEVENT_NOW_MASTER: u64 = 0;

extern "C" fn server_event_trampoline<E: ServerEvents>(
    ctx: *mut raw::RedisModuleCtx,
    eid: raw::RedisModuleEvent,
    subevent: u64,
    data: *mut c_void,
) {
    let event = match eid.id {
        raw::REDISMODULE_EVENT_FLUSHDB => {
            if subevent != SUBEVENT_FLUSHDB_END {
                return;
            }
            // SAFETY: for FlushDB events the data is a RedisModuleFlushInfo.
            let db = unsafe { data.cast::<raw::RedisModuleFlushInfo>().as_ref() }
                .map_or(-1, |i| i.dbnum);
            ServerEvent::Flushed {
                db: (db >= 0).then_some(db),
            }
        }
        raw::REDISMODULE_EVENT_REPLICATION_ROLE_CHANGED if subevent == SUBEVENT_NOW_MASTER => {
            ServerEvent::NowPrimary
        }
        raw::REDISMODULE_EVENT_REPLICATION_ROLE_CHANGED => ServerEvent::NowReplica,
        raw::REDISMODULE_EVENT_SWAPDB => ServerEvent::SwappedDbs,
        raw::REDISMODULE_EVENT_EVENTLOOP => ServerEvent::LoopIteration,
        _ => return,
    };
    let c = Ctx::from_raw(ctx);
    guarded(ctx, "server event", || E::event(&c, event));
}
