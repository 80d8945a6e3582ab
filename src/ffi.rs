//! Every `unsafe` line of spacelock lives in this file.
//!
//! It wraps the raw Redis Module API (function pointers filled in by
//! `RedisModule_Init`) in small safe types used by the rest of the crate:
//!
//! * [`Ctx`]: a command (or load) context: replies, keys, replication,
//!   notifications, logging;
//! * [`RStr`]: a borrowed `RedisModuleString` (an argv element);
//! * [`Key`]: an open key, closed on drop;
//! * command and config registration, the INFO callback, and the module's
//!   `RedisModule_OnLoad` entry point.
//!
//! Invariant relied on by every `// SAFETY:` comment below: Redis calls the
//! module from its main thread only, with pointers that are valid for the
//! duration of the callback, and every API function used here was checked to
//! be present at load time ([`REQUIRED_APIS`]), so the `Option` function
//! pointers are `Some` when a command runs.

use std::ffi::{c_char, c_int, c_longlong, c_void, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};

use redis_module::raw;

/// Calls a Redis Module API function pointer. Panics (caught by the command
/// trampoline) only if the server lacks it, which load-time checks rule out.
/// Only usable inside an `unsafe` block: reading the function-pointer statics
/// is sound because RedisModule_Init wrote them once, before any other call,
/// and the main thread is the only reader.
macro_rules! api {
    ($name:ident) => {
        raw::$name.expect(concat!(stringify!($name), " is missing"))
    };
}

/// API functions without which the module refuses to load. All exist in
/// Redis 7.0; Redis 6.2 lacks the config and command-info ones.
/// (name, is-present check) of an API function.
type ApiCheck = (&'static str, fn() -> bool);

const REQUIRED_APIS: &[ApiCheck] = &[
    ("RedisModule_SetCommandInfo", || {
        // SAFETY: see `api!`.
        unsafe { raw::RedisModule_SetCommandInfo }.is_some()
    }),
    ("RedisModule_RegisterNumericConfig", || {
        // SAFETY: see `api!`.
        unsafe { raw::RedisModule_RegisterNumericConfig }.is_some()
    }),
    ("RedisModule_LoadConfigs", || {
        // SAFETY: see `api!`.
        unsafe { raw::RedisModule_LoadConfigs }.is_some()
    }),
    ("RedisModule_SetAbsExpire", || {
        // SAFETY: see `api!`.
        unsafe { raw::RedisModule_SetAbsExpire }.is_some()
    }),
    ("RedisModule_GetCommand", || {
        // SAFETY: see `api!`.
        unsafe { raw::RedisModule_GetCommand }.is_some()
    }),
];

// ---------------------------------------------------------------------------
// Strings

/// A borrowed `RedisModuleString`, e.g. one element of a command's argv.
#[repr(transparent)]
#[derive(Clone, Copy)]
pub struct RStr(*mut raw::RedisModuleString);

impl RStr {
    /// The string's bytes (binary-safe).
    pub fn as_bytes(&self) -> &[u8] {
        let mut len = 0usize;
        // SAFETY: `self.0` is a live string for the callback (argv element or
        // an owned string we hold); StringPtrLen returns its buffer and length.
        unsafe {
            let ptr = api!(RedisModule_StringPtrLen)(self.0, &mut len);
            if ptr.is_null() {
                return &[];
            }
            std::slice::from_raw_parts(ptr.cast::<u8>(), len)
        }
    }
}

/// A `RedisModuleString` we created and must free.
pub struct OwnedStr(RStr);

impl OwnedStr {
    /// Copies `bytes` into a new server string.
    pub fn new(bytes: &[u8]) -> Self {
        // SAFETY: CreateString copies `len` bytes from `ptr`; a NULL ctx makes
        // the string unmanaged, freed in Drop.
        let ptr = unsafe {
            api!(RedisModule_CreateString)(
                std::ptr::null_mut(),
                bytes.as_ptr().cast::<c_char>(),
                bytes.len(),
            )
        };
        OwnedStr(RStr(ptr))
    }

    /// A borrowed view.
    pub fn as_rstr(&self) -> RStr {
        self.0
    }
}

impl Drop for OwnedStr {
    fn drop(&mut self) {
        // SAFETY: we created the string with a NULL context and free it once.
        unsafe { api!(RedisModule_FreeString)(std::ptr::null_mut(), self.0 .0) }
    }
}

// ---------------------------------------------------------------------------
// Context

/// Keyspace-event classes used by spacelock.
#[derive(Clone, Copy)]
pub enum EventClass {
    /// `$` string events (`set`).
    String,
    /// `g` generic events (`expire`, `del`).
    Generic,
}

/// A command context.
pub struct Ctx(*mut raw::RedisModuleCtx);

impl Ctx {
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

    /// Replies with an error. `msg` must start with its code word (`ERR …`).
    pub fn reply_error(&self, msg: &str) {
        // Interior NULs cannot occur in our messages; fall back just in case.
        let text = std::ffi::CString::new(msg)
            .unwrap_or_else(|_| std::ffi::CString::from(c"ERR spacelock error"));
        // SAFETY: valid ctx; the message is copied.
        unsafe { api!(RedisModule_ReplyWithError)(self.0, text.as_ptr()) };
    }

    /// Replies with the standard wrong-arity error.
    pub fn wrong_arity(&self) {
        // SAFETY: valid ctx for this callback.
        unsafe { api!(RedisModule_WrongArity)(self.0) };
    }

    /// The server's wall clock, ms since the Unix epoch.
    pub fn now_ms(&self) -> i64 {
        // SAFETY: no arguments; always valid after init.
        unsafe { api!(RedisModule_Milliseconds)() }
    }

    /// Opens `name` for writing (`write == true`) or reading.
    pub fn open(&self, name: RStr, write: bool) -> Key {
        let mode = if write {
            raw::REDISMODULE_READ | raw::REDISMODULE_WRITE
        } else {
            raw::REDISMODULE_READ
        };
        // SAFETY: valid ctx and key name; the key is closed in Key::drop.
        let ptr = unsafe { api!(RedisModule_OpenKey)(self.0, name.0, mode as c_int) };
        Key { ptr, name }
    }

    /// Propagates `SET key value PXAT at` to replicas and the AOF.
    pub fn replicate_set_pxat(&self, key: RStr, value: RStr, at_ms: i64) {
        // SAFETY: "sscl" matches the two strings, one C string and one long long.
        unsafe {
            api!(RedisModule_Replicate)(
                self.0,
                c"SET".as_ptr(),
                c"sscl".as_ptr(),
                key.0,
                value.0,
                c"PXAT".as_ptr(),
                at_ms as c_longlong,
            )
        };
    }

    /// Propagates `SET key <integer>`.
    pub fn replicate_set_int(&self, key: RStr, value: i64) {
        // SAFETY: "sl" matches one string and one long long.
        unsafe {
            api!(RedisModule_Replicate)(
                self.0,
                c"SET".as_ptr(),
                c"sl".as_ptr(),
                key.0,
                value as c_longlong,
            )
        };
    }

    /// Propagates `PEXPIREAT key at`.
    pub fn replicate_pexpireat(&self, key: RStr, at_ms: i64) {
        // SAFETY: "sl" matches one string and one long long.
        unsafe {
            api!(RedisModule_Replicate)(
                self.0,
                c"PEXPIREAT".as_ptr(),
                c"sl".as_ptr(),
                key.0,
                at_ms as c_longlong,
            )
        };
    }

    /// Propagates `DEL key`.
    pub fn replicate_del(&self, key: RStr) {
        // SAFETY: "s" matches one string.
        unsafe { api!(RedisModule_Replicate)(self.0, c"DEL".as_ptr(), c"s".as_ptr(), key.0) };
    }

    /// Fires a keyspace notification, as the equivalent core command would.
    pub fn notify(&self, class: EventClass, event: &CStr, key: RStr) {
        let class = match class {
            EventClass::String => raw::REDISMODULE_NOTIFY_STRING,
            EventClass::Generic => raw::REDISMODULE_NOTIFY_GENERIC,
        };
        // SAFETY: valid ctx, NUL-terminated event name, live key string.
        unsafe { api!(RedisModule_NotifyKeyspaceEvent)(self.0, class, event.as_ptr(), key.0) };
    }

    /// Tells WATCH (and client-side caching) that `key` changed. The module
    /// opts out of implicit signalling at load, so a failed owner check opened
    /// for writing does not invalidate a WATCH.
    pub fn signal_modified(&self, key: RStr) {
        // SAFETY: valid ctx and key name.
        unsafe { api!(RedisModule_SignalModifiedKey)(self.0, key.0) };
    }

    /// Logs at `level` (`debug`, `verbose`, `notice`, `warning`).
    pub fn log(&self, level: &CStr, msg: &str) {
        log_raw(self.0, level, msg);
    }
}

fn log_raw(ctx: *mut raw::RedisModuleCtx, level: &CStr, msg: &str) {
    let text = std::ffi::CString::new(msg.replace('\0', "\\0")).unwrap_or_default();
    // SAFETY: "%s" with one NUL-terminated string; ctx may be NULL (allowed).
    unsafe { api!(RedisModule_Log)(ctx, level.as_ptr(), c"%s".as_ptr(), text.as_ptr()) };
}

// ---------------------------------------------------------------------------
// Keys

/// What a key holds.
pub enum Value<'a> {
    /// The key does not exist.
    Empty,
    /// A string value (binary-safe).
    Str(&'a [u8]),
    /// Any other type.
    Other,
}

/// An open key; closed (and, if modified, signalled to WATCH) on drop.
pub struct Key {
    ptr: *mut raw::RedisModuleKey,
    name: RStr,
}

impl Key {
    /// The key's name.
    pub fn name(&self) -> RStr {
        self.name
    }

    /// Reads the value without copying it.
    pub fn value(&self) -> Value<'_> {
        if self.ptr.is_null() {
            return Value::Empty;
        }
        // SAFETY: `ptr` is an open key. KeyType is a plain read.
        let kind = unsafe { api!(RedisModule_KeyType)(self.ptr) };
        if kind == raw::REDISMODULE_KEYTYPE_EMPTY as c_int {
            return Value::Empty;
        }
        if kind != raw::REDISMODULE_KEYTYPE_STRING as c_int {
            return Value::Other;
        }
        let mut len = 0usize;
        // SAFETY: a string key; READ-mode DMA returns a pointer valid until the
        // key is modified or closed, and `&self` borrows prevent both.
        unsafe {
            let ptr =
                api!(RedisModule_StringDMA)(self.ptr, &mut len, raw::REDISMODULE_READ as c_int);
            if ptr.is_null() {
                return Value::Other;
            }
            Value::Str(std::slice::from_raw_parts(ptr.cast::<u8>(), len))
        }
    }

    /// Sets the value to `bytes` (binary-safe) as a plain (raw-encoded)
    /// string, and drops any TTL, as `SET` would.
    ///
    /// Why not `StringSet` with the argv string: that stores the client's
    /// embstr object, and every later READ-mode `StringDMA` on an embstr
    /// first converts it to a raw string (an allocation and a copy: ~1–2 k
    /// instructions, paid by the first REFRESH and by every RELEASE). Creating
    /// the value raw here costs one small allocation instead, and an existing
    /// raw value (the fence counter) is rewritten in place without replacing
    /// the object.
    pub fn write(&mut self, bytes: &[u8]) {
        let mut len = 0usize;
        // SAFETY: key opened for writing. StringTruncate creates a raw string
        // of exactly `bytes.len()` bytes (or resizes the existing one, after
        // unsharing it); WRITE-mode DMA then returns its buffer, valid until
        // the key is modified or closed, and we fill exactly `len` bytes.
        unsafe {
            if api!(RedisModule_StringTruncate)(self.ptr, bytes.len())
                != raw::REDISMODULE_OK as c_int
            {
                return;
            }
            let ptr =
                api!(RedisModule_StringDMA)(self.ptr, &mut len, raw::REDISMODULE_WRITE as c_int);
            if !ptr.is_null() && len == bytes.len() {
                std::ptr::copy_nonoverlapping(bytes.as_ptr(), ptr.cast::<u8>(), len);
            }
            if api!(RedisModule_GetExpire)(self.ptr) != raw::REDISMODULE_NO_EXPIRE as c_longlong {
                api!(RedisModule_SetExpire)(self.ptr, raw::REDISMODULE_NO_EXPIRE as c_longlong);
            }
        }
    }

    /// Sets the absolute expiry, ms since the epoch.
    pub fn set_expire_at(&mut self, at_ms: i64) {
        // SAFETY: key opened for writing and not empty (callers set it first).
        unsafe { api!(RedisModule_SetAbsExpire)(self.ptr, at_ms) };
    }

    /// Remaining time to live in ms, or `None` without an expiry.
    pub fn ttl_ms(&self) -> Option<i64> {
        // SAFETY: open key; GetExpire is a read.
        let ttl = unsafe { api!(RedisModule_GetExpire)(self.ptr) };
        (ttl >= 0).then_some(ttl)
    }

    /// Deletes the key.
    pub fn delete(&mut self) {
        // SAFETY: key opened for writing.
        unsafe { api!(RedisModule_DeleteKey)(self.ptr) };
    }
}

impl Drop for Key {
    fn drop(&mut self) {
        if !self.ptr.is_null() {
            // SAFETY: closes the key we opened, once.
            unsafe { api!(RedisModule_CloseKey)(self.ptr) };
        }
    }
}

// ---------------------------------------------------------------------------
// Commands

/// A command implementation: `run` gets the context and argv (argv[0] is the
/// command name).
pub trait Command {
    /// Runs the command and sends exactly one reply.
    fn run(ctx: &Ctx, args: &[RStr]);
}

/// The C entry point for command `C`: wraps `C::run` in `catch_unwind`, so a
/// bug can never unwind into (and abort) the server.
extern "C" fn trampoline<C: Command>(
    ctx: *mut raw::RedisModuleCtx,
    argv: *mut *mut raw::RedisModuleString,
    argc: c_int,
) -> c_int {
    let ctx = Ctx(ctx);
    let args: &[RStr] = if argv.is_null() || argc <= 0 {
        &[]
    } else {
        // SAFETY: Redis passes `argc` valid string pointers; RStr is
        // repr(transparent) over the pointer, so the layouts match.
        unsafe { std::slice::from_raw_parts(argv.cast::<RStr>(), argc as usize) }
    };
    if catch_unwind(AssertUnwindSafe(|| C::run(&ctx, args))).is_err() {
        ctx.log(
            c"warning",
            "spacelock: internal error in a command handler (bug); the command was aborted",
        );
        ctx.reply_error("ERR spacelock internal error (see the server log)");
    }
    raw::REDISMODULE_OK as c_int
}

/// Key-spec flags (see `REDISMODULE_CMD_KEY_*`).
pub mod key_flags {
    /// Read-only access.
    pub const RO: u64 = 1 << 0;
    /// Read-write access.
    pub const RW: u64 = 1 << 1;
    /// Overwrite.
    pub const OW: u64 = 1 << 2;
    /// Removes the key.
    pub const RM: u64 = 1 << 3;
    /// Returns user data.
    pub const ACCESS: u64 = 1 << 4;
    /// Updates data.
    pub const UPDATE: u64 = 1 << 5;
    /// Inserts new data.
    pub const INSERT: u64 = 1 << 6;
    /// Deletes data.
    pub const DELETE: u64 = 1 << 7;
}

/// The type of a documented argument.
#[derive(Clone, Copy)]
pub enum ArgType {
    /// A key name.
    Key,
    /// A string.
    String,
    /// An integer.
    Integer,
}

/// One documented argument (for COMMAND DOCS).
pub struct ArgDoc {
    /// Argument name.
    pub name: &'static CStr,
    /// Its type.
    pub kind: ArgType,
    /// A token that precedes it (e.g. `WAIT`).
    pub token: Option<&'static CStr>,
    /// Whether it may be omitted.
    pub optional: bool,
}

/// Everything needed to register one command.
pub struct CommandDef {
    /// Command name.
    pub name: &'static CStr,
    /// Command flags (`write deny-oom fast`, …).
    pub flags: &'static CStr,
    /// One-line summary.
    pub summary: &'static CStr,
    /// Complexity.
    pub complexity: &'static CStr,
    /// Module version the command appeared in.
    pub since: &'static CStr,
    /// Arity (negative: at least).
    pub arity: i32,
    /// Key-spec flags of the single key at argv[1].
    pub key_flags: u64,
    /// Documented arguments after the command name.
    pub args: &'static [ArgDoc],
    /// The C entry point ([`entry`]).
    pub entry: raw::RedisModuleCmdFunc,
}

/// The C entry point for `C`.
pub fn entry<C: Command>() -> raw::RedisModuleCmdFunc {
    Some(trampoline::<C>)
}

static INFO_VERSION: raw::RedisModuleCommandInfoVersion = raw::RedisModuleCommandInfoVersion {
    version: 1,
    sizeof_historyentry: std::mem::size_of::<raw::RedisModuleCommandHistoryEntry>(),
    sizeof_keyspec: std::mem::size_of::<raw::RedisModuleCommandKeySpec>(),
    sizeof_arg: std::mem::size_of::<raw::RedisModuleCommandArg>(),
};

/// A context during `RedisModule_OnLoad`.
pub struct LoadCtx(*mut raw::RedisModuleCtx);

impl LoadCtx {
    /// Turns off implicit modified-key signalling on CloseKey (see
    /// [`Ctx::signal_modified`]).
    pub fn disable_implicit_signal(&self) {
        // SAFETY: valid load ctx; a documented option flag.
        unsafe {
            api!(RedisModule_SetModuleOptions)(
                self.0,
                raw::REDISMODULE_OPTION_NO_IMPLICIT_SIGNAL_MODIFIED as c_int,
            )
        };
    }

    /// Logs at `level`.
    pub fn log(&self, level: &CStr, msg: &str) {
        log_raw(self.0, level, msg);
    }

    /// Registers `def` with its key spec, arity and docs. The legacy
    /// (first, last, step) = (1, 1, 1) key positions are set too, so every
    /// server version routes and ACL-checks argv[1].
    pub fn create_command(&self, def: &CommandDef) -> Result<(), String> {
        let name = def.name.to_string_lossy();
        // SAFETY: valid load ctx; strings are NUL-terminated statics.
        let rc = unsafe {
            api!(RedisModule_CreateCommand)(
                self.0,
                def.name.as_ptr(),
                def.entry,
                def.flags.as_ptr(),
                1,
                1,
                1,
            )
        };
        if rc != raw::REDISMODULE_OK as c_int {
            return Err(format!("cannot create command {name}"));
        }
        // SAFETY: the command was just created under this name.
        let cmd = unsafe { api!(RedisModule_GetCommand)(self.0, def.name.as_ptr()) };
        if cmd.is_null() {
            return Err(format!("cannot look up command {name}"));
        }

        // SAFETY: an all-zero key spec / arg is the documented terminator
        // (and a valid bit pattern: null pointers and zero integers).
        let mut specs: [raw::RedisModuleCommandKeySpec; 2] = unsafe { std::mem::zeroed() };
        specs[0].flags = def.key_flags;
        specs[0].begin_search_type =
            raw::RedisModuleKeySpecBeginSearchType_REDISMODULE_KSPEC_BS_INDEX;
        specs[0].bs.index.pos = 1;
        specs[0].find_keys_type = raw::RedisModuleKeySpecFindKeysType_REDISMODULE_KSPEC_FK_RANGE;
        specs[0].fk.range.lastkey = 0;
        specs[0].fk.range.keystep = 1;
        specs[0].fk.range.limit = 0;

        let mut args: Vec<raw::RedisModuleCommandArg> = def
            .args
            .iter()
            .map(|a| {
                // SAFETY: all-zero is a valid RedisModuleCommandArg (see above).
                let mut arg: raw::RedisModuleCommandArg = unsafe { std::mem::zeroed() };
                arg.name = a.name.as_ptr();
                arg.type_ = match a.kind {
                    ArgType::Key => raw::RedisModuleCommandArgType_REDISMODULE_ARG_TYPE_KEY,
                    ArgType::String => raw::RedisModuleCommandArgType_REDISMODULE_ARG_TYPE_STRING,
                    ArgType::Integer => raw::RedisModuleCommandArgType_REDISMODULE_ARG_TYPE_INTEGER,
                };
                arg.key_spec_index = if matches!(a.kind, ArgType::Key) {
                    0
                } else {
                    -1
                };
                arg.token = a.token.map_or(std::ptr::null(), CStr::as_ptr);
                arg.flags = if a.optional {
                    raw::REDISMODULE_CMD_ARG_OPTIONAL as c_int
                } else {
                    0
                };
                arg
            })
            .collect();
        // SAFETY: terminator, as above.
        args.push(unsafe { std::mem::zeroed() });

        let info = raw::RedisModuleCommandInfo {
            version: &INFO_VERSION,
            summary: def.summary.as_ptr(),
            complexity: def.complexity.as_ptr(),
            since: def.since.as_ptr(),
            history: std::ptr::null_mut(),
            tips: std::ptr::null(),
            arity: def.arity,
            key_specs: specs.as_mut_ptr(),
            args: args.as_mut_ptr(),
        };
        // SAFETY: `info` and everything it points to outlive the call; the
        // server copies what it keeps.
        let rc = unsafe { api!(RedisModule_SetCommandInfo)(cmd, &info) };
        if rc != raw::REDISMODULE_OK as c_int {
            return Err(format!("cannot set command info for {name}"));
        }
        Ok(())
    }

    /// Adds the module ACL category `name`; `false` if the server predates
    /// module ACL categories (Redis < 7.4).
    pub fn add_acl_category(&self, name: &CStr) -> Result<bool, String> {
        // SAFETY: see `api!`.
        let Some(add) = (unsafe { raw::RedisModule_AddACLCategory }) else {
            return Ok(false);
        };
        // SAFETY: see `api!`.
        if unsafe { raw::RedisModule_SetCommandACLCategories }.is_none() {
            return Ok(false);
        }
        // SAFETY: valid load ctx, NUL-terminated name.
        if unsafe { add(self.0, name.as_ptr()) } != raw::REDISMODULE_OK as c_int {
            return Err(format!(
                "cannot add ACL category {}",
                name.to_string_lossy()
            ));
        }
        Ok(true)
    }

    /// Puts command `cmd` into the ACL categories `categories` (space-separated).
    pub fn set_acl_categories(&self, cmd: &CStr, categories: &CStr) -> Result<(), String> {
        // SAFETY: valid load ctx; the command exists (created earlier).
        let rc = unsafe {
            let c = api!(RedisModule_GetCommand)(self.0, cmd.as_ptr());
            if c.is_null() {
                return Err(format!("unknown command {}", cmd.to_string_lossy()));
            }
            api!(RedisModule_SetCommandACLCategories)(c, categories.as_ptr())
        };
        if rc != raw::REDISMODULE_OK as c_int {
            return Err(format!(
                "cannot set ACL categories of {}",
                cmd.to_string_lossy()
            ));
        }
        Ok(())
    }

    /// Registers numeric config `spacelock.<name>`. `index` identifies it in
    /// `crate::config`'s table for the get/set callbacks.
    pub fn register_numeric_config(
        &self,
        name: &CStr,
        default: i64,
        min: i64,
        max: i64,
        index: usize,
    ) -> Result<(), String> {
        // SAFETY: valid load ctx; callbacks are plain functions; privdata is
        // an index disguised as a pointer and never dereferenced.
        let rc = unsafe {
            api!(RedisModule_RegisterNumericConfig)(
                self.0,
                name.as_ptr(),
                default,
                raw::REDISMODULE_CONFIG_DEFAULT,
                min,
                max,
                Some(config_get),
                Some(config_set),
                None,
                index as *mut c_void,
            )
        };
        if rc != raw::REDISMODULE_OK as c_int {
            return Err(format!(
                "cannot register config spacelock.{}",
                name.to_string_lossy()
            ));
        }
        Ok(())
    }

    /// Applies `spacelock.*` values from the server's config file.
    pub fn load_configs(&self) -> Result<(), String> {
        // SAFETY: valid load ctx.
        if unsafe { api!(RedisModule_LoadConfigs)(self.0) } != raw::REDISMODULE_OK as c_int {
            return Err("invalid spacelock.* value in the server config".into());
        }
        Ok(())
    }

    /// Registers the `INFO spacelock` callback.
    pub fn register_info(&self) -> Result<(), String> {
        // SAFETY: valid load ctx; the callback is a plain function.
        if unsafe { api!(RedisModule_RegisterInfoFunc)(self.0, Some(info_callback)) }
            != raw::REDISMODULE_OK as c_int
        {
            return Err("cannot register the INFO callback".into());
        }
        Ok(())
    }
}

extern "C" fn config_get(_name: *const c_char, privdata: *mut c_void) -> c_longlong {
    crate::config::get(privdata as usize)
}

extern "C" fn config_set(
    _name: *const c_char,
    value: c_longlong,
    privdata: *mut c_void,
    _err: *mut *mut raw::RedisModuleString,
) -> c_int {
    crate::config::set(privdata as usize, value);
    raw::REDISMODULE_OK as c_int
}

/// Builder for the module's INFO section.
pub struct InfoCtx(*mut raw::RedisModuleInfoCtx);

impl InfoCtx {
    /// Starts the section (named after the module).
    pub fn section(&mut self) {
        // SAFETY: valid info ctx; NULL name means the module's own section.
        unsafe { api!(RedisModule_InfoAddSection)(self.0, std::ptr::null()) };
    }

    /// Adds `name:value`.
    pub fn field(&mut self, name: &CStr, value: u64) {
        // SAFETY: valid info ctx; NUL-terminated field name.
        unsafe { api!(RedisModule_InfoAddFieldULongLong)(self.0, name.as_ptr(), value) };
    }
}

extern "C" fn info_callback(ctx: *mut raw::RedisModuleInfoCtx, _for_crash_report: c_int) {
    let mut info = InfoCtx(ctx);
    let _ = catch_unwind(AssertUnwindSafe(|| crate::stats::render(&mut info)));
}

// ---------------------------------------------------------------------------
// Module entry points

/// Module name and version as registered with the server.
const MODULE_NAME: &CStr = c"spacelock";
const MODULE_VERSION: c_int = 100; // 0.1.0

/// Module entry point, called by `loadmodule` / `MODULE LOAD`.
///
/// # Safety
/// Called by the server with a valid context and `argc` argument strings.
#[no_mangle]
pub unsafe extern "C" fn RedisModule_OnLoad(
    ctx: *mut raw::RedisModuleCtx,
    argv: *mut *mut raw::RedisModuleString,
    argc: c_int,
) -> c_int {
    // Nothing may allocate before Init: the global allocator is the server's.
    // SAFETY: ctx is the load context; the name is a static C string.
    let rc = unsafe {
        raw::Export_RedisModule_Init(
            ctx,
            MODULE_NAME.as_ptr(),
            MODULE_VERSION,
            raw::REDISMODULE_APIVER_1 as c_int,
        )
    };
    if rc != raw::REDISMODULE_OK as c_int {
        return raw::REDISMODULE_ERR as c_int;
    }
    let load = LoadCtx(ctx);
    if let Some((missing, _)) = REQUIRED_APIS.iter().find(|(_, present)| !present()) {
        load.log(
            c"warning",
            &format!(
                "spacelock: refusing to load: this server lacks {missing}; spacelock needs Redis >= 7.0 or Valkey >= 7.2"
            ),
        );
        return raw::REDISMODULE_ERR as c_int;
    }
    let args: &[RStr] = if argv.is_null() || argc <= 0 {
        &[]
    } else {
        // SAFETY: `argc` valid string pointers; RStr is repr(transparent).
        unsafe { std::slice::from_raw_parts(argv.cast::<RStr>(), argc as usize) }
    };
    match catch_unwind(AssertUnwindSafe(|| crate::on_load(&load, args))) {
        Ok(Ok(())) => raw::REDISMODULE_OK as c_int,
        Ok(Err(msg)) => {
            load.log(c"warning", &format!("spacelock: refusing to load: {msg}"));
            raw::REDISMODULE_ERR as c_int
        }
        Err(_) => {
            load.log(
                c"warning",
                "spacelock: refusing to load: internal error during load",
            );
            raw::REDISMODULE_ERR as c_int
        }
    }
}

/// Module exit point (`MODULE UNLOAD`).
#[no_mangle]
pub extern "C" fn RedisModule_OnUnload(_ctx: *mut raw::RedisModuleCtx) -> c_int {
    raw::REDISMODULE_OK as c_int
}

// ---------------------------------------------------------------------------
// WAIT (issue 4): blocked clients, timers, keyspace and server events.
//
// Life cycle of a waiter's `RedisModuleBlockedClient` (see `crate::wait`):
// exactly one `RedisModule_UnblockClient` per handle, whatever happens:
// granted (privdata = the token), timed out (from the timeout callback) or
// disconnected (from the disconnect callback). The server frees the handle
// (and our privdata, through `wait_free_privdata`) in its next
// `moduleHandleBlockedClients`, and calls the reply callback only if the
// client is still connected.

/// A blocked client's handle. Only used on the main thread; its address
/// identifies the waiter in `crate::wait`'s registry.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct BlockedClient(*mut raw::RedisModuleBlockedClient);

// SAFETY: a handle is only created, stored and used on the server's main
// thread; `Send` only lets `crate::wait` keep handles in a `static Mutex`
// (a `thread_local!` would register a TLS destructor that blocks MODULE
// UNLOAD).
unsafe impl Send for BlockedClient {}

/// What a waiter is eventually told.
pub enum WaitReply {
    /// It was granted the lock with this fencing token.
    Token(i64),
    /// An error reply (full text, starting with its code word).
    Error(String),
}

impl BlockedClient {
    /// Unblocks the client with `reply` (sent by the reply callback if the
    /// client is still connected). Must be called once per handle.
    pub fn unblock(self, reply: WaitReply) {
        let data = Box::into_raw(Box::new(reply));
        // SAFETY: `self.0` is a live handle that has not been unblocked yet
        // (the registry hands each handle out once); the server owns `data`
        // from here and gives it back to `wait_free_privdata`.
        let rc = unsafe { api!(RedisModule_UnblockClient)(self.0, data.cast::<c_void>()) };
        if rc != raw::REDISMODULE_OK as c_int {
            // SAFETY: the server refused the handle, so it did not take `data`.
            drop(unsafe { Box::from_raw(data) });
        }
    }

    /// Unblocks without a reply: for a client that timed out (the timeout
    /// callback replied) or disconnected. Frees the handle.
    pub fn release(self) {
        // SAFETY: a live handle not unblocked yet (see `unblock`); NULL
        // privdata means nothing for the free callback.
        unsafe { api!(RedisModule_UnblockClient)(self.0, std::ptr::null_mut()) };
    }
}

impl Ctx {
    /// `RedisModule_GetContextFlags`.
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

    /// The text of `CLUSTER NODES` (through `RedisModule_Call`), or `None`
    /// if the call fails.
    pub fn cluster_nodes(&self) -> Option<String> {
        // SAFETY: valid ctx; "c" matches one NUL-terminated C string.
        let reply = unsafe {
            api!(RedisModule_Call)(
                self.0,
                c"CLUSTER".as_ptr(),
                c"c".as_ptr(),
                c"NODES".as_ptr(),
            )
        };
        if reply.is_null() {
            return None;
        }
        // SAFETY: `reply` is a live call reply until freed below; the string
        // pointer is valid for `len` bytes while the reply lives, and we copy
        // it before freeing.
        unsafe {
            let kind = api!(RedisModule_CallReplyType)(reply) as isize;
            let text = if kind == raw::REDISMODULE_REPLY_STRING
                || kind == raw::REDISMODULE_REPLY_VERBATIM_STRING
            {
                let mut len = 0usize;
                let ptr = api!(RedisModule_CallReplyStringPtr)(reply, &mut len);
                (!ptr.is_null()).then(|| {
                    String::from_utf8_lossy(std::slice::from_raw_parts(ptr.cast::<u8>(), len))
                        .into_owned()
                })
            } else {
                None
            };
            api!(RedisModule_FreeCallReply)(reply);
            text
        }
    }

    /// Whether the server asks modules not to add replication traffic: its
    /// writes are paused (`CLIENT PAUSE`, `FAILOVER`, a cluster manual
    /// failover) so that replicas can catch up with its offset.
    pub fn avoid_replica_traffic(&self) -> bool {
        // SAFETY: a plain query of server state from the main thread; the
        // pointer is checked (the function exists since Redis 6.0).
        unsafe { raw::RedisModule_AvoidReplicaTraffic.is_some_and(|f| f() != 0) }
    }

    /// Whether `key` is stored in the selected database at all, expired or
    /// not (`MEMORY USAGE`, which looks the key up without the expiry
    /// check); `None` if the call fails (e.g. the command was renamed).
    pub fn stored_at_all(&self, key: RStr) -> Option<bool> {
        // SAFETY: valid ctx; "cs" matches one NUL-terminated C string and
        // one live server string.
        let reply = unsafe {
            api!(RedisModule_Call)(
                self.0,
                c"MEMORY".as_ptr(),
                c"cs".as_ptr(),
                c"USAGE".as_ptr(),
                key.0,
            )
        };
        if reply.is_null() {
            return None;
        }
        // SAFETY: `reply` is a live call reply, freed once here.
        unsafe {
            let kind = api!(RedisModule_CallReplyType)(reply) as isize;
            api!(RedisModule_FreeCallReply)(reply);
            match kind {
                raw::REDISMODULE_REPLY_INTEGER => Some(true),
                raw::REDISMODULE_REPLY_NULL => Some(false),
                _ => None,
            }
        }
    }

    /// The selected database of the context's client.
    pub fn selected_db(&self) -> i32 {
        // SAFETY: valid ctx for this callback.
        unsafe { api!(RedisModule_GetSelectedDb)(self.0) }
    }

    /// Selects database `db` (only used on timer contexts, whose client is a
    /// temporary one).
    pub fn select_db(&self, db: i32) -> bool {
        // SAFETY: valid ctx; an out-of-range id is rejected with ERR.
        unsafe { api!(RedisModule_SelectDb)(self.0, db) == raw::REDISMODULE_OK as c_int }
    }

    /// Blocks the calling client for up to `timeout_ms` (0: no limit). The
    /// reply, timeout, disconnect and free callbacks go to `crate::wait`.
    /// `None` if the server refused (it then already replied with an error).
    pub fn block_client(&self, timeout_ms: i64) -> Option<BlockedClient> {
        // SAFETY: valid command ctx; the callbacks are plain functions that
        // live as long as the module.
        let bc = unsafe {
            api!(RedisModule_BlockClient)(
                self.0,
                Some(wait_reply_cb),
                Some(wait_timeout_cb),
                Some(wait_free_privdata),
                timeout_ms as c_longlong,
            )
        };
        if bc.is_null() {
            return None;
        }
        // SAFETY: `bc` was just returned by BlockClient.
        unsafe { api!(RedisModule_SetDisconnectCallback)(bc, Some(wait_disconnect_cb)) };
        Some(BlockedClient(bc))
    }

    /// Arms a one-shot module timer in `period_ms` that calls
    /// `crate::wait::on_timer(ctx, data)`. Returns its id.
    pub fn create_timer(&self, period_ms: i64, data: u64) -> u64 {
        // SAFETY: valid ctx; `data` is an integer disguised as a pointer and
        // never dereferenced.
        unsafe {
            api!(RedisModule_CreateTimer)(
                self.0,
                period_ms.max(0),
                Some(wait_timer_cb),
                data as usize as *mut c_void,
            )
        }
    }

    /// Stops timer `id` if it has not fired yet.
    pub fn stop_timer(&self, id: u64) {
        let mut data: *mut c_void = std::ptr::null_mut();
        // SAFETY: valid ctx; an unknown or fired id is reported as ERR and
        // is harmless. Our data is an integer, nothing to free.
        unsafe { api!(RedisModule_StopTimer)(self.0, id, &mut data) };
    }
}

impl Key {
    /// Absolute expiry in ms since the epoch, or `None` without one.
    pub fn expire_at_ms(&self) -> Option<i64> {
        if self.ptr.is_null() {
            return None;
        }
        // SAFETY: open key; GetAbsExpire is a read.
        let at = unsafe { api!(RedisModule_GetAbsExpire)(self.ptr) };
        (at >= 0).then_some(at)
    }
}

/// Keyspace-event classes WAIT listens to: generic, expired and evicted
/// (DEL, UNLINK, RENAME, MOVE, MIGRATE, EXPIRE — which `SET … PX` also fires
/// —, expiry, eviction). Not string events: a plain `SET` would then pay for a
/// module callback on every key of the server (measured +0.1–0.15 µs per SET
/// on Redis 7.0), and a `SET` without expiry over a held lock is caught when
/// the armed timer fires.
const WAIT_EVENTS: c_int = (raw::REDISMODULE_NOTIFY_GENERIC
    | raw::REDISMODULE_NOTIFY_EXPIRED
    | raw::REDISMODULE_NOTIFY_EVICTED) as c_int;

impl Ctx {
    /// Subscribes `crate::wait::on_key_event` to [`WAIT_EVENTS`]. Done
    /// lazily, when the first client waits: until then the server pays
    /// nothing for keyspace events on behalf of spacelock.
    pub fn subscribe_key_events(&self) -> bool {
        // SAFETY: valid ctx; plain callback function.
        let rc = unsafe {
            api!(RedisModule_SubscribeToKeyspaceEvents)(self.0, WAIT_EVENTS, Some(wait_key_cb))
        };
        rc == raw::REDISMODULE_OK as c_int
    }

    /// Whether this server can undo a keyspace-event subscription.
    pub fn can_unsubscribe_key_events() -> bool {
        // SAFETY: see `api!`.
        unsafe { raw::RedisModule_UnsubscribeFromKeyspaceEvents }.is_some()
    }

    /// Undoes [`subscribe_key_events`](Self::subscribe_key_events) where the
    /// server can (Redis >= 7.4, Valkey >= 8.1 …); `false` if it cannot.
    /// Call only from a timer callback, never while the server dispatches a
    /// keyspace event (it walks the subscriber list).
    pub fn unsubscribe_key_events(&self) -> bool {
        // SAFETY: see `api!`; the function may be absent on older servers.
        let Some(unsubscribe) = (unsafe { raw::RedisModule_UnsubscribeFromKeyspaceEvents }) else {
            return false;
        };
        // SAFETY: valid ctx; the same (types, callback) pair we subscribed.
        unsafe {
            unsubscribe(self.0, WAIT_EVENTS, Some(wait_key_cb)) == raw::REDISMODULE_OK as c_int
        }
    }
}

impl LoadCtx {
    /// Subscribes `crate::wait::on_flush` to FLUSHALL / FLUSHDB, SWAPDB and
    /// replication role changes (a primary turned replica must let its
    /// waiters go).
    pub fn subscribe_flush(&self) -> Result<(), String> {
        // The header defines the event as a `static const`, so build it here.
        let event = raw::RedisModuleEvent {
            id: raw::REDISMODULE_EVENT_FLUSHDB,
            dataver: 1,
        };
        // SAFETY: valid load ctx; plain callback function.
        let rc =
            unsafe { api!(RedisModule_SubscribeToServerEvent)(self.0, event, Some(wait_flush_cb)) };
        if rc != raw::REDISMODULE_OK as c_int {
            return Err("cannot subscribe to the FlushDB server event".into());
        }
        let event = raw::RedisModuleEvent {
            id: raw::REDISMODULE_EVENT_REPLICATION_ROLE_CHANGED,
            dataver: 1,
        };
        // SAFETY: valid load ctx; plain callback function.
        let rc =
            unsafe { api!(RedisModule_SubscribeToServerEvent)(self.0, event, Some(wait_role_cb)) };
        if rc != raw::REDISMODULE_OK as c_int {
            return Err("cannot subscribe to the ReplicationRoleChanged server event".into());
        }
        let event = raw::RedisModuleEvent {
            id: raw::REDISMODULE_EVENT_SWAPDB,
            dataver: 1,
        };
        // SAFETY: valid load ctx; plain callback function. Optional: without
        // it, SWAPDB is only noticed when a queue's timer fires.
        let _ =
            unsafe { api!(RedisModule_SubscribeToServerEvent)(self.0, event, Some(wait_role_cb)) };
        Ok(())
    }
}

/// Runs `f`, logging instead of unwinding into the server.
fn guarded(ctx: *mut raw::RedisModuleCtx, what: &str, f: impl FnOnce()) {
    if catch_unwind(AssertUnwindSafe(f)).is_err() {
        log_raw(
            ctx,
            c"warning",
            &format!("spacelock: internal error in the {what} callback (bug)"),
        );
    }
}

extern "C" fn wait_reply_cb(
    ctx: *mut raw::RedisModuleCtx,
    _argv: *mut *mut raw::RedisModuleString,
    _argc: c_int,
) -> c_int {
    let c = Ctx(ctx);
    // SAFETY: called in the blocked client's reply context; the privdata is
    // the `WaitReply` we passed to UnblockClient (or NULL), still owned by the
    // server until `wait_free_privdata`, so a shared borrow is sound.
    let reply = unsafe { api!(RedisModule_GetBlockedClientPrivateData)(ctx) }.cast::<WaitReply>();
    // SAFETY: see above; NULL is handled.
    match unsafe { reply.as_ref() } {
        Some(WaitReply::Token(t)) => c.reply_i64(*t),
        Some(WaitReply::Error(e)) => c.reply_error(e),
        None => c.reply_null(),
    }
    raw::REDISMODULE_OK as c_int
}

extern "C" fn wait_timeout_cb(
    ctx: *mut raw::RedisModuleCtx,
    _argv: *mut *mut raw::RedisModuleString,
    _argc: c_int,
) -> c_int {
    let c = Ctx(ctx);
    // SAFETY: in a timeout callback the context carries the handle.
    let bc = BlockedClient(unsafe { api!(RedisModule_GetBlockedClientHandle)(ctx) });
    guarded(ctx, "WAIT timeout", || crate::wait::on_timeout(&c, bc));
    c.reply_null();
    raw::REDISMODULE_OK as c_int
}

extern "C" fn wait_disconnect_cb(
    ctx: *mut raw::RedisModuleCtx,
    bc: *mut raw::RedisModuleBlockedClient,
) {
    let c = Ctx(ctx);
    guarded(ctx, "WAIT disconnect", || {
        crate::wait::on_disconnect(&c, BlockedClient(bc))
    });
}

extern "C" fn wait_free_privdata(_ctx: *mut raw::RedisModuleCtx, data: *mut c_void) {
    if !data.is_null() {
        // SAFETY: the only non-NULL privdata we pass is a Box<WaitReply>
        // (see `BlockedClient::unblock`); the server frees it exactly once.
        drop(unsafe { Box::from_raw(data.cast::<WaitReply>()) });
    }
}

extern "C" fn wait_timer_cb(ctx: *mut raw::RedisModuleCtx, data: *mut c_void) {
    let c = Ctx(ctx);
    guarded(ctx, "WAIT timer", || {
        crate::wait::on_timer(&c, data as usize as u64)
    });
}

extern "C" fn wait_key_cb(
    ctx: *mut raw::RedisModuleCtx,
    _type: c_int,
    _event: *const c_char,
    key: *mut raw::RedisModuleString,
) -> c_int {
    let c = Ctx(ctx);
    guarded(ctx, "keyspace event", || {
        crate::wait::on_key_event(&c, RStr(key))
    });
    raw::REDISMODULE_OK as c_int
}

extern "C" fn wait_flush_cb(
    ctx: *mut raw::RedisModuleCtx,
    _eid: raw::RedisModuleEvent,
    subevent: u64,
    data: *mut c_void,
) {
    if subevent != raw::REDISMODULE_SUBEVENT_FLUSHDB_END {
        return;
    }
    // SAFETY: for FlushDB events the data is a RedisModuleFlushInfo.
    let dbnum =
        unsafe { data.cast::<raw::RedisModuleFlushInfo>().as_ref() }.map_or(-1, |i| i.dbnum);
    let c = Ctx(ctx);
    guarded(ctx, "FlushDB event", || crate::wait::on_flush(&c, dbnum));
}

extern "C" fn wait_role_cb(
    ctx: *mut raw::RedisModuleCtx,
    _eid: raw::RedisModuleEvent,
    _subevent: u64,
    _data: *mut c_void,
) {
    let c = Ctx(ctx);
    // Every queue is settled soon; on a replica that unblocks its waiters,
    // after SWAPDB it grants locks whose key is gone from its database.
    guarded(ctx, "role change / SWAPDB event", || {
        crate::wait::on_flush(&c, -1)
    });
}
