//! Entry points: the module's load and unload, and every command, each
//! behind `catch_unwind`, so a bug can never unwind into (and abort) the
//! server.

use std::ffi::{c_int, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};

use redis_module::raw;

use super::ctx::{log_raw, Level};
use super::{Ctx, LoadCtx, RStr};

/// Why a command failed. The trampoline turns it into its reply, in one
/// place: handlers just return it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandError {
    /// The standard "wrong number of arguments" error.
    WrongArity,
    /// An error reply, starting with its code word (`ERR …`, `WRONGTYPE …`).
    Reply(String),
}

/// A command: `run` gets the context and argv (argv[0] is the command name),
/// and either replies (or blocks) and returns `Ok`, or returns the error.
pub trait Command {
    /// Runs the command.
    ///
    /// # Errors
    ///
    /// The error to reply; the handler has replied nothing then.
    fn run(ctx: &Ctx, args: &[RStr<'_>]) -> Result<(), CommandError>;
}

/// The C entry point for `C`.
pub fn entry<C: Command>() -> raw::RedisModuleCmdFunc {
    Some(command_trampoline::<C>)
}

/// argv as a slice of [`RStr`].
fn args<'a>(argv: *mut *mut raw::RedisModuleString, argc: c_int) -> &'a [RStr<'a>] {
    if argv.is_null() || argc <= 0 {
        return &[];
    }
    // SAFETY: the server passes `argc` valid string pointers that live for
    // the callback; RStr is repr(transparent) over the pointer.
    unsafe { std::slice::from_raw_parts(argv.cast::<RStr<'a>>(), argc as usize) }
}

extern "C" fn command_trampoline<C: Command>(
    ctx: *mut raw::RedisModuleCtx,
    argv: *mut *mut raw::RedisModuleString,
    argc: c_int,
) -> c_int {
    let ctx = Ctx::from_raw(ctx);
    let args = args(argv, argc);
    match catch_unwind(AssertUnwindSafe(|| C::run(&ctx, args))) {
        Ok(Ok(())) => {}
        Ok(Err(CommandError::WrongArity)) => ctx.reply_wrong_arity(),
        Ok(Err(CommandError::Reply(msg))) => ctx.reply_error(&msg),
        Err(_) => {
            ctx.log(
                Level::Warning,
                "spacelock: internal error in a command handler (bug); the command was aborted",
            );
            ctx.reply_error("ERR spacelock internal error (see the server log)");
        }
    }
    raw::REDISMODULE_OK as c_int
}

/// Runs `f` for a callback, logging instead of unwinding into the server.
pub(super) fn guarded(ctx: *mut raw::RedisModuleCtx, what: &str, f: impl FnOnce()) {
    if catch_unwind(AssertUnwindSafe(f)).is_err() {
        log_raw(
            ctx,
            Level::Warning,
            &format!("spacelock: internal error in the {what} callback (bug)"),
        );
    }
}

/// (name, is-present check) of an API function.
type ApiCheck = (&'static str, fn() -> bool);

/// API functions without which the module refuses to load. All exist in
/// Redis 7.0; Redis 6.2 lacks the config and command-info ones.
const REQUIRED_APIS: &[ApiCheck] = &[
    ("RedisModule_SetCommandInfo", || {
        // SAFETY: see `api!`.
        unsafe { raw::RedisModule_SetCommandInfo }.is_some()
    }),
    ("RedisModule_RegisterNumericConfig", || {
        // SAFETY: see `api!`.
        unsafe { raw::RedisModule_RegisterNumericConfig }.is_some()
    }),
    ("RedisModule_RegisterEnumConfig", || {
        // SAFETY: see `api!`.
        unsafe { raw::RedisModule_RegisterEnumConfig }.is_some()
    }),
    ("RedisModule_RegisterBoolConfig", || {
        // SAFETY: see `api!`.
        unsafe { raw::RedisModule_RegisterBoolConfig }.is_some()
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

/// The body of `RedisModule_OnLoad` (see [`module_entry_points!`]): Init,
/// the API check, then `on_load`, whose `Err` refuses the load with its
/// text logged.
///
/// # Safety
///
/// Only for `RedisModule_OnLoad`: `ctx` is the server's load context and
/// `argv` holds `argc` valid strings.
pub unsafe fn load(
    ctx: *mut raw::RedisModuleCtx,
    argv: *mut *mut raw::RedisModuleString,
    argc: c_int,
    name: &CStr,
    version: c_int,
    on_load: fn(&LoadCtx, &[RStr<'_>]) -> Result<(), String>,
) -> c_int {
    // Nothing may allocate before Init: the global allocator is the server's.
    // SAFETY: ctx is the load context; the name is a NUL-terminated static.
    let rc = unsafe {
        raw::Export_RedisModule_Init(
            ctx,
            name.as_ptr(),
            version,
            raw::REDISMODULE_APIVER_1 as c_int,
        )
    };
    if rc != raw::REDISMODULE_OK as c_int {
        return raw::REDISMODULE_ERR as c_int;
    }
    let load = LoadCtx::from_raw(ctx);
    if let Some((missing, _)) = REQUIRED_APIS.iter().find(|(_, present)| !present()) {
        log_raw(
            ctx,
            Level::Warning,
            &format!(
                "spacelock: refusing to load: this server lacks {missing}; spacelock needs Redis >= 7.0 or Valkey >= 7.2"
            ),
        );
        return raw::REDISMODULE_ERR as c_int;
    }
    let args = args(argv, argc);
    match catch_unwind(AssertUnwindSafe(|| on_load(&load, args))) {
        Ok(Ok(())) => raw::REDISMODULE_OK as c_int,
        Ok(Err(msg)) => {
            log_raw(
                ctx,
                Level::Warning,
                &format!("spacelock: refusing to load: {msg}"),
            );
            raw::REDISMODULE_ERR as c_int
        }
        Err(_) => {
            log_raw(
                ctx,
                Level::Warning,
                "spacelock: refusing to load: internal error during load",
            );
            raw::REDISMODULE_ERR as c_int
        }
    }
}

/// The body of `RedisModule_OnUnload` (see [`module_entry_points!`]): runs
/// `on_unload`, whose `Err` refuses the unload with its text logged as a
/// warning. A panic refuses it too: the module stays loaded and whole.
///
/// The server has already refused an unload while the module has blocked
/// clients or armed timers; after an `Ok` it unregisters everything the
/// module registered and unloads the shared object.
///
/// # Safety
///
/// Only for `RedisModule_OnUnload`: `ctx` is the context the server passes
/// it (a temporary client's).
pub unsafe fn unload(
    ctx: *mut raw::RedisModuleCtx,
    on_unload: fn(&Ctx) -> Result<(), String>,
) -> c_int {
    let c = Ctx::from_raw(ctx);
    match catch_unwind(AssertUnwindSafe(|| on_unload(&c))) {
        Ok(Ok(())) => raw::REDISMODULE_OK as c_int,
        Ok(Err(msg)) => {
            log_raw(
                ctx,
                Level::Warning,
                &format!("spacelock: refusing MODULE UNLOAD: {msg}"),
            );
            raw::REDISMODULE_ERR as c_int
        }
        Err(_) => {
            log_raw(
                ctx,
                Level::Warning,
                "spacelock: refusing MODULE UNLOAD: internal error while preparing to unload (bug); the module stays loaded",
            );
            raw::REDISMODULE_ERR as c_int
        }
    }
}

/// Defines the module's `RedisModule_OnLoad` and `RedisModule_OnUnload`
/// symbols, which call [`load`] with `$on_load` and [`unload`] with
/// `$on_unload`.
#[macro_export]
macro_rules! module_entry_points {
    (
        name: $name:expr,
        version: $version:expr,
        on_load: $on_load:path,
        on_unload: $on_unload:path $(,)?
    ) => {
        /// Module entry point, called by `loadmodule` / `MODULE LOAD`.
        ///
        /// # Safety
        ///
        /// Called by the server only, with its load context and `argc`
        /// valid argument strings.
        #[allow(unsafe_code)] // the exported symbol
        #[no_mangle]
        pub unsafe extern "C" fn RedisModule_OnLoad(
            ctx: *mut ::redis_module::raw::RedisModuleCtx,
            argv: *mut *mut ::redis_module::raw::RedisModuleString,
            argc: ::std::ffi::c_int,
        ) -> ::std::ffi::c_int {
            let (name, version, on_load): (&::std::ffi::CStr, ::std::ffi::c_int, _) =
                ($name, $version, $on_load);
            // SAFETY: forwarded from the server's call (see above).
            unsafe { $crate::ffi::load(ctx, argv, argc, name, version, on_load) }
        }

        /// Module exit point, called by `MODULE UNLOAD`: returning
        /// `REDISMODULE_ERR` makes the server refuse the unload.
        ///
        /// # Safety
        ///
        /// Called by the server only, with the context it made for it.
        #[allow(unsafe_code)] // the exported symbol
        #[no_mangle]
        pub unsafe extern "C" fn RedisModule_OnUnload(
            ctx: *mut ::redis_module::raw::RedisModuleCtx,
        ) -> ::std::ffi::c_int {
            let on_unload: fn(&$crate::ffi::Ctx) -> Result<(), String> = $on_unload;
            // SAFETY: forwarded from the server's call (see above).
            unsafe { $crate::ffi::unload(ctx, on_unload) }
        }
    };
}
