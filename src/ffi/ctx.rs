//! [`Ctx`]: replies, the clock, replication, notifications, logging, and
//! what the module asks the server about itself.

use std::ffi::{c_char, c_int, c_longlong, CStr};

use redis_module::raw;

use super::RStr;

/// A context the server passes to a command or a callback. Only built by
/// the trampolines of this layer, for the duration of one callback.
pub struct Ctx(*mut raw::RedisModuleCtx);

/// Keyspace-event classes spacelock fires.
#[derive(Clone, Copy, Debug)]
pub enum EventClass {
    /// `$` string events (`set`).
    String,
    /// `g` generic events (`expire`, `del`).
    Generic,
    /// `h` hash events (`hset`, `hdel`).
    Hash,
}

/// A log level.
#[derive(Clone, Copy, Debug)]
pub enum Level {
    /// `notice`.
    Notice,
    /// `warning`.
    Warning,
}

impl Level {
    fn c(self) -> &'static CStr {
        match self {
            Level::Notice => c"notice",
            Level::Warning => c"warning",
        }
    }
}

impl Ctx {
    pub(super) fn from_raw(ctx: *mut raw::RedisModuleCtx) -> Self {
        Ctx(ctx)
    }

    pub(super) fn raw(&self) -> *mut raw::RedisModuleCtx {
        self.0
    }

    /// Replies with an integer.
    pub fn reply_i64(&self, v: i64) {
        // SAFETY: valid ctx for this callback.
        unsafe { api!(RedisModule_ReplyWithLongLong)(self.0, v as c_longlong) };
    }

    /// Replies with a null (RESP2 nil bulk, RESP3 null).
    pub fn reply_null(&self) {
        // SAFETY: valid ctx for this callback.
        unsafe { api!(RedisModule_ReplyWithNull)(self.0) };
    }

    /// Replies with a bulk string.
    pub fn reply_bulk(&self, bytes: &[u8]) {
        // SAFETY: valid ctx; the buffer is copied into the reply.
        unsafe {
            api!(RedisModule_ReplyWithStringBuffer)(
                self.0,
                bytes.as_ptr().cast::<c_char>(),
                bytes.len(),
            )
        };
    }

    /// Starts a map of `pairs` entries (a flat array of 2×`pairs` under RESP2).
    pub fn reply_map(&self, pairs: usize) {
        // SAFETY: valid ctx for this callback.
        unsafe { api!(RedisModule_ReplyWithMap)(self.0, pairs as std::ffi::c_long) };
    }

    /// Replies with an error. `msg` starts with its code word (`ERR …`).
    pub fn reply_error(&self, msg: &str) {
        // Our messages hold no NUL; a stray one becomes a generic error.
        let text = std::ffi::CString::new(msg)
            .unwrap_or_else(|_| std::ffi::CString::from(c"ERR spacelock error"));
        // SAFETY: valid ctx; the message is copied.
        unsafe { api!(RedisModule_ReplyWithError)(self.0, text.as_ptr()) };
    }

    pub(super) fn reply_wrong_arity(&self) {
        // SAFETY: valid ctx for this callback.
        unsafe { api!(RedisModule_WrongArity)(self.0) };
    }

    /// The server's wall clock, ms since the Unix epoch.
    pub fn now_ms(&self) -> i64 {
        // SAFETY: no arguments; always valid after init.
        unsafe { api!(RedisModule_Milliseconds)() }
    }

    /// Propagates `SET key value PXAT at` to replicas and the AOF.
    pub fn replicate_set_pxat(&self, key: RStr<'_>, value: RStr<'_>, at_ms: i64) {
        // SAFETY: "sscl" matches the two strings, one C string and one long long.
        unsafe {
            api!(RedisModule_Replicate)(
                self.0,
                c"SET".as_ptr(),
                c"sscl".as_ptr(),
                key.ptr(),
                value.ptr(),
                c"PXAT".as_ptr(),
                at_ms as c_longlong,
            )
        };
    }

    /// Propagates `SET key <value>` (a value the caller has already
    /// formatted: the server then only copies it).
    pub fn replicate_set(&self, key: RStr<'_>, value: &[u8]) {
        // SAFETY: "sb" matches one string and one (pointer, length) buffer,
        // which the server copies.
        unsafe {
            api!(RedisModule_Replicate)(
                self.0,
                c"SET".as_ptr(),
                c"sb".as_ptr(),
                key.ptr(),
                value.as_ptr().cast::<c_char>(),
                value.len(),
            )
        };
    }

    /// Propagates `SET key <value> PXAT at` (a value the caller has already
    /// formatted).
    pub fn replicate_set_bytes_pxat(&self, key: RStr<'_>, value: &[u8], at_ms: i64) {
        // SAFETY: "sbcl" matches one string, one (pointer, length) buffer
        // that the server copies, one C string and one long long.
        unsafe {
            api!(RedisModule_Replicate)(
                self.0,
                c"SET".as_ptr(),
                c"sbcl".as_ptr(),
                key.ptr(),
                value.as_ptr().cast::<c_char>(),
                value.len(),
                c"PXAT".as_ptr(),
                at_ms as c_longlong,
            )
        };
    }

    /// Propagates `PERSIST key`.
    pub fn replicate_persist(&self, key: RStr<'_>) {
        // SAFETY: "s" matches one string.
        unsafe {
            api!(RedisModule_Replicate)(self.0, c"PERSIST".as_ptr(), c"s".as_ptr(), key.ptr())
        };
    }

    /// Propagates `PEXPIREAT key at`.
    pub fn replicate_pexpireat(&self, key: RStr<'_>, at_ms: i64) {
        // SAFETY: "sl" matches one string and one long long.
        unsafe {
            api!(RedisModule_Replicate)(
                self.0,
                c"PEXPIREAT".as_ptr(),
                c"sl".as_ptr(),
                key.ptr(),
                at_ms as c_longlong,
            )
        };
    }

    /// Propagates `HSET key field value`.
    pub fn replicate_hset(&self, key: RStr<'_>, field: &[u8], value: &[u8]) {
        // SAFETY: "sbb" matches one string and two (pointer, length)
        // buffers, which the server copies.
        unsafe {
            api!(RedisModule_Replicate)(
                self.0,
                c"HSET".as_ptr(),
                c"sbb".as_ptr(),
                key.ptr(),
                field.as_ptr().cast::<c_char>(),
                field.len(),
                value.as_ptr().cast::<c_char>(),
                value.len(),
            )
        };
    }

    /// Propagates `HSET key field1 value1 field2 value2`.
    pub fn replicate_hset2(&self, key: RStr<'_>, first: (&[u8], &[u8]), second: (&[u8], &[u8])) {
        // SAFETY: "sbbbb" matches one string and four (pointer, length)
        // buffers, which the server copies.
        unsafe {
            api!(RedisModule_Replicate)(
                self.0,
                c"HSET".as_ptr(),
                c"sbbbb".as_ptr(),
                key.ptr(),
                first.0.as_ptr().cast::<c_char>(),
                first.0.len(),
                first.1.as_ptr().cast::<c_char>(),
                first.1.len(),
                second.0.as_ptr().cast::<c_char>(),
                second.0.len(),
                second.1.as_ptr().cast::<c_char>(),
                second.1.len(),
            )
        };
    }

    /// Propagates `HDEL key field`.
    pub fn replicate_hdel(&self, key: RStr<'_>, field: &[u8]) {
        // SAFETY: "sb" matches one string and one (pointer, length) buffer,
        // which the server copies.
        unsafe {
            api!(RedisModule_Replicate)(
                self.0,
                c"HDEL".as_ptr(),
                c"sb".as_ptr(),
                key.ptr(),
                field.as_ptr().cast::<c_char>(),
                field.len(),
            )
        };
    }

    /// Starts an array of `len` elements.
    pub fn reply_array(&self, len: usize) {
        // SAFETY: valid ctx for this callback.
        unsafe { api!(RedisModule_ReplyWithArray)(self.0, len as std::ffi::c_long) };
    }

    /// Propagates `DEL key`.
    pub fn replicate_del(&self, key: RStr<'_>) {
        // SAFETY: "s" matches one string.
        unsafe { api!(RedisModule_Replicate)(self.0, c"DEL".as_ptr(), c"s".as_ptr(), key.ptr()) };
    }

    /// Fires a keyspace notification, as the equivalent core command would.
    pub fn notify(&self, class: EventClass, event: &CStr, key: RStr<'_>) {
        let class = match class {
            EventClass::String => raw::REDISMODULE_NOTIFY_STRING,
            EventClass::Generic => raw::REDISMODULE_NOTIFY_GENERIC,
            EventClass::Hash => raw::REDISMODULE_NOTIFY_HASH,
        };
        // SAFETY: valid ctx, NUL-terminated event name, live key string.
        unsafe {
            api!(RedisModule_NotifyKeyspaceEvent)(self.0, class as c_int, event.as_ptr(), key.ptr())
        };
    }

    /// Tells WATCH (and client-side caching) that `key` changed. The module
    /// opts out of implicit signalling at load, so a failed owner check opened
    /// for writing does not invalidate a WATCH.
    pub fn signal_modified(&self, key: RStr<'_>) {
        // SAFETY: valid ctx and key name.
        unsafe { api!(RedisModule_SignalModifiedKey)(self.0, key.ptr()) };
    }

    /// Logs a line.
    pub fn log(&self, level: Level, msg: &str) {
        log_raw(self.0, level, msg);
    }

    fn flags(&self) -> u32 {
        // SAFETY: valid ctx for this callback.
        unsafe { api!(RedisModule_GetContextFlags)(self.0) as u32 }
    }

    /// Whether the caller may block: not inside MULTI/EXEC, a script, or any
    /// other context that denies blocking (RM_Call, …).
    pub fn may_block(&self) -> bool {
        let deny = raw::REDISMODULE_CTX_FLAGS_MULTI
            | raw::REDISMODULE_CTX_FLAGS_LUA
            | raw::REDISMODULE_CTX_FLAGS_DENY_BLOCKING;
        self.flags() & deny == 0
    }

    /// Whether this server is a replica (it must not write).
    pub fn is_replica(&self) -> bool {
        self.flags() & raw::REDISMODULE_CTX_FLAGS_SLAVE != 0
    }

    /// Whether cluster mode is enabled.
    pub fn in_cluster(&self) -> bool {
        self.flags() & raw::REDISMODULE_CTX_FLAGS_CLUSTER != 0
    }

    /// Whether the server asks modules not to add replication traffic: its
    /// writes are paused (`CLIENT PAUSE`, `FAILOVER`, a cluster manual
    /// failover) so that replicas can catch up with its offset.
    pub fn avoid_replica_traffic(&self) -> bool {
        // SAFETY: a plain query of server state from the main thread; the
        // pointer is checked (the function exists since Redis 6.0).
        unsafe { raw::RedisModule_AvoidReplicaTraffic.is_some_and(|f| f() != 0) }
    }

    /// The selected database of the context's client.
    pub fn selected_db(&self) -> i32 {
        // SAFETY: valid ctx for this callback.
        unsafe { api!(RedisModule_GetSelectedDb)(self.0) }
    }

    /// Selects database `db`. Only for timer contexts, whose client is a
    /// temporary one (in a command it would change the caller's database).
    pub fn select_db(&self, db: i32) -> bool {
        // SAFETY: valid ctx; an out-of-range id is rejected with ERR.
        unsafe { api!(RedisModule_SelectDb)(self.0, db) == raw::REDISMODULE_OK as c_int }
    }

    /// The id of the context's client (0 for contexts without one).
    pub fn client_id(&self) -> u64 {
        // SAFETY: valid ctx; returns 0 when there is no client.
        unsafe { api!(RedisModule_GetClientId)(self.0) }
    }
}

pub(super) fn log_raw(ctx: *mut raw::RedisModuleCtx, level: Level, msg: &str) {
    let text = std::ffi::CString::new(msg.replace('\0', "\\0")).unwrap_or_default();
    // SAFETY: "%s" with one NUL-terminated string; ctx may be NULL (allowed).
    unsafe { api!(RedisModule_Log)(ctx, level.c().as_ptr(), c"%s".as_ptr(), text.as_ptr()) };
}
