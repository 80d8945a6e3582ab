//! Registration at load: commands with their docs and key specs, ACL
//! categories, configs, the INFO section.

use std::ffi::{c_char, c_int, c_longlong, c_void, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};

use redis_module::raw;

use super::ctx::{log_raw, Level};

/// The context of `RedisModule_OnLoad`.
pub struct LoadCtx(*mut raw::RedisModuleCtx);

/// Key-spec flags (`REDISMODULE_CMD_KEY_*`) of a command's key.
#[derive(Clone, Copy, Debug)]
pub struct KeyFlags(u64);

impl KeyFlags {
    /// Read-only access.
    pub const RO: KeyFlags = KeyFlags(1 << 0);
    /// Read-write access.
    pub const RW: KeyFlags = KeyFlags(1 << 1);
    /// Returns user data.
    pub const ACCESS: KeyFlags = KeyFlags(1 << 4);
    /// Updates data.
    pub const UPDATE: KeyFlags = KeyFlags(1 << 5);
    /// Inserts new data.
    pub const INSERT: KeyFlags = KeyFlags(1 << 6);
    /// Deletes data.
    pub const DELETE: KeyFlags = KeyFlags(1 << 7);
}

impl std::ops::BitOr for KeyFlags {
    type Output = KeyFlags;
    fn bitor(self, rhs: KeyFlags) -> KeyFlags {
        KeyFlags(self.0 | rhs.0)
    }
}

/// The type of a documented argument.
#[derive(Clone, Copy, Debug)]
pub enum ArgType {
    /// A key name.
    Key,
    /// A string.
    String,
    /// An integer.
    Integer,
    /// A token alone (e.g. `SHARED`), no value.
    PureToken,
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
    /// The key spec of the single key at argv[1], if the command has a key.
    pub key: Option<KeyFlags>,
    /// Documented arguments after the command name.
    pub args: &'static [ArgDoc],
    /// ACL categories (space-separated), where the server supports them.
    pub acl: &'static CStr,
    /// The C entry point (`entry::<C>()`).
    pub entry: raw::RedisModuleCmdFunc,
}

static INFO_VERSION: raw::RedisModuleCommandInfoVersion = raw::RedisModuleCommandInfoVersion {
    version: 1,
    sizeof_historyentry: std::mem::size_of::<raw::RedisModuleCommandHistoryEntry>(),
    sizeof_keyspec: std::mem::size_of::<raw::RedisModuleCommandKeySpec>(),
    sizeof_arg: std::mem::size_of::<raw::RedisModuleCommandArg>(),
};

fn ok(rc: c_int) -> bool {
    rc == raw::REDISMODULE_OK as c_int
}

/// `Ok` if the server accepted (`rc` is OK), else `Err` with `what` failed.
fn accepted(rc: c_int, what: impl FnOnce() -> String) -> Result<(), String> {
    if ok(rc) {
        Ok(())
    } else {
        Err(what())
    }
}

/// The error for a config the server refused.
fn config_refused(name: &CStr) -> String {
    format!(
        "cannot register config spacelock.{}",
        name.to_string_lossy()
    )
}

impl LoadCtx {
    pub(super) fn from_raw(ctx: *mut raw::RedisModuleCtx) -> Self {
        LoadCtx(ctx)
    }

    pub(super) fn raw(&self) -> *mut raw::RedisModuleCtx {
        self.0
    }

    /// Logs a line.
    pub fn log(&self, level: Level, msg: &str) {
        log_raw(self.0, level, msg);
    }

    /// The server's wall clock, ms since the Unix epoch.
    pub fn now_ms(&self) -> i64 {
        // SAFETY: no arguments; always valid after init.
        unsafe { api!(RedisModule_Milliseconds)() }
    }

    /// Turns off implicit modified-key signalling on CloseKey (see
    /// `Ctx::signal_modified`).
    pub fn disable_implicit_signal(&self) {
        // SAFETY: valid load ctx; a documented option flag.
        unsafe {
            api!(RedisModule_SetModuleOptions)(
                self.0,
                raw::REDISMODULE_OPTION_NO_IMPLICIT_SIGNAL_MODIFIED as c_int,
            )
        };
    }

    /// Registers `def` with its key spec, arity and docs. The legacy
    /// (first, last, step) key positions are set too, so every server
    /// version routes and ACL-checks argv[1].
    ///
    /// # Errors
    ///
    /// The reason, if the server refused.
    pub fn create_command(&self, def: &CommandDef) -> Result<(), String> {
        let name = def.name.to_string_lossy();
        let first_key = c_int::from(def.key.is_some());
        // SAFETY: valid load ctx; strings are NUL-terminated statics.
        let rc = unsafe {
            api!(RedisModule_CreateCommand)(
                self.0,
                def.name.as_ptr(),
                def.entry,
                def.flags.as_ptr(),
                first_key,
                first_key,
                first_key,
            )
        };
        if !ok(rc) {
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
        if let Some(flags) = def.key {
            specs[0].flags = flags.0;
            specs[0].begin_search_type =
                raw::RedisModuleKeySpecBeginSearchType_REDISMODULE_KSPEC_BS_INDEX;
            specs[0].bs.index.pos = 1;
            specs[0].find_keys_type =
                raw::RedisModuleKeySpecFindKeysType_REDISMODULE_KSPEC_FK_RANGE;
            specs[0].fk.range.lastkey = 0;
            specs[0].fk.range.keystep = 1;
            specs[0].fk.range.limit = 0;
        }

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
                    ArgType::PureToken => {
                        raw::RedisModuleCommandArgType_REDISMODULE_ARG_TYPE_PURE_TOKEN
                    }
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
            key_specs: if def.key.is_some() {
                specs.as_mut_ptr()
            } else {
                std::ptr::null_mut()
            },
            args: args.as_mut_ptr(),
        };
        // SAFETY: `info` and everything it points to outlive the call; the
        // server copies what it keeps.
        let rc = unsafe { api!(RedisModule_SetCommandInfo)(cmd, &info) };
        if !ok(rc) {
            return Err(format!("cannot set command info for {name}"));
        }
        Ok(())
    }

    /// Adds the module ACL category `name`: `Ok(false)` if the server
    /// predates module ACL categories (Redis < 7.4).
    ///
    /// # Errors
    ///
    /// If the server refused (e.g. the category exists after a reload).
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
        if !ok(unsafe { add(self.0, name.as_ptr()) }) {
            return Err(format!(
                "cannot add ACL category {}",
                name.to_string_lossy()
            ));
        }
        Ok(true)
    }

    /// Puts command `def` into its ACL categories.
    ///
    /// # Errors
    ///
    /// If the server refused.
    pub fn set_acl_categories(&self, def: &CommandDef) -> Result<(), String> {
        let cmd = def.name;
        // SAFETY: valid load ctx; the command exists (created earlier).
        let rc = unsafe {
            let c = api!(RedisModule_GetCommand)(self.0, cmd.as_ptr());
            if c.is_null() {
                return Err(format!("unknown command {}", cmd.to_string_lossy()));
            }
            api!(RedisModule_SetCommandACLCategories)(c, def.acl.as_ptr())
        };
        accepted(rc, || {
            format!("cannot set ACL categories of {}", cmd.to_string_lossy())
        })
    }

    /// Registers numeric config `spacelock.<name>`, read and written through
    /// `C` with `index`.
    ///
    /// # Errors
    ///
    /// If the server refused.
    pub fn register_numeric_config<C: Configs>(
        &self,
        name: &CStr,
        index: usize,
        (default, min, max): (i64, i64, i64),
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
                Some(numeric_get::<C>),
                Some(numeric_set::<C>),
                None,
                index as *mut c_void,
            )
        };
        accepted(rc, || config_refused(name))
    }

    /// Registers enum config `spacelock.<name>` with `values` (name, number).
    ///
    /// # Errors
    ///
    /// If the server refused.
    pub fn register_enum_config<C: Configs>(
        &self,
        name: &CStr,
        index: usize,
        default: i32,
        values: &[(&'static CStr, i32)],
    ) -> Result<(), String> {
        let mut names: Vec<*const c_char> = values.iter().map(|(n, _)| n.as_ptr()).collect();
        let numbers: Vec<c_int> = values.iter().map(|(_, v)| *v).collect();
        // SAFETY: valid load ctx; the arrays hold `values.len()` entries and
        // the server copies them; callbacks are plain functions; privdata is
        // an index, never dereferenced.
        let rc = unsafe {
            api!(RedisModule_RegisterEnumConfig)(
                self.0,
                name.as_ptr(),
                default,
                raw::REDISMODULE_CONFIG_DEFAULT,
                names.as_mut_ptr(),
                numbers.as_ptr(),
                values.len() as c_int,
                Some(enum_get::<C>),
                Some(enum_set::<C>),
                None,
                index as *mut c_void,
            )
        };
        accepted(rc, || config_refused(name))
    }

    /// Registers boolean config `spacelock.<name>` (`yes`/`no`), read and
    /// written through `C` with `index`.
    ///
    /// # Errors
    ///
    /// If the server refused.
    pub fn register_bool_config<C: Configs>(
        &self,
        name: &CStr,
        index: usize,
        default: bool,
    ) -> Result<(), String> {
        // SAFETY: valid load ctx; callbacks are plain functions; privdata is
        // an index disguised as a pointer and never dereferenced.
        let rc = unsafe {
            api!(RedisModule_RegisterBoolConfig)(
                self.0,
                name.as_ptr(),
                c_int::from(default),
                raw::REDISMODULE_CONFIG_DEFAULT,
                Some(bool_get::<C>),
                Some(bool_set::<C>),
                None,
                index as *mut c_void,
            )
        };
        accepted(rc, || config_refused(name))
    }

    /// Applies `spacelock.*` values from the server's config file.
    ///
    /// # Errors
    ///
    /// If a value there is invalid.
    pub fn load_configs(&self) -> Result<(), String> {
        // SAFETY: valid load ctx.
        if !ok(unsafe { api!(RedisModule_LoadConfigs)(self.0) }) {
            return Err("invalid spacelock.* value in the server config".into());
        }
        Ok(())
    }

    /// Registers `I` as the module's `INFO` section.
    ///
    /// # Errors
    ///
    /// If the server refused.
    pub fn register_info<I: InfoSection>(&self) -> Result<(), String> {
        // SAFETY: valid load ctx; the callback is a plain function.
        if !ok(unsafe { api!(RedisModule_RegisterInfoFunc)(self.0, Some(info_trampoline::<I>)) }) {
            return Err("cannot register the INFO callback".into());
        }
        Ok(())
    }
}

/// Where the module's configs live (numeric, enum and boolean, by index).
pub trait Configs: 'static {
    /// Current value of numeric config `index`.
    fn get_numeric(index: usize) -> i64;
    /// Sets numeric config `index` (the server checked the range).
    fn set_numeric(index: usize, value: i64);
    /// Current value of enum config `index`.
    fn get_enum(index: usize) -> i32;
    /// Sets enum config `index` (the server checked the value).
    fn set_enum(index: usize, value: i32);
    /// Current value of boolean config `index`.
    fn get_bool(index: usize) -> bool;
    /// Sets boolean config `index`.
    fn set_bool(index: usize, value: bool);
}

extern "C" fn numeric_get<C: Configs>(_name: *const c_char, privdata: *mut c_void) -> c_longlong {
    catch_unwind(|| C::get_numeric(privdata as usize)).unwrap_or(0)
}

extern "C" fn numeric_set<C: Configs>(
    _name: *const c_char,
    value: c_longlong,
    privdata: *mut c_void,
    _err: *mut *mut raw::RedisModuleString,
) -> c_int {
    let _ = catch_unwind(|| C::set_numeric(privdata as usize, value));
    raw::REDISMODULE_OK as c_int
}

extern "C" fn enum_get<C: Configs>(_name: *const c_char, privdata: *mut c_void) -> c_int {
    catch_unwind(|| C::get_enum(privdata as usize)).unwrap_or(0)
}

extern "C" fn enum_set<C: Configs>(
    _name: *const c_char,
    value: c_int,
    privdata: *mut c_void,
    _err: *mut *mut raw::RedisModuleString,
) -> c_int {
    let _ = catch_unwind(|| C::set_enum(privdata as usize, value));
    raw::REDISMODULE_OK as c_int
}

extern "C" fn bool_get<C: Configs>(_name: *const c_char, privdata: *mut c_void) -> c_int {
    catch_unwind(|| c_int::from(C::get_bool(privdata as usize))).unwrap_or(0)
}

extern "C" fn bool_set<C: Configs>(
    _name: *const c_char,
    value: c_int,
    privdata: *mut c_void,
    _err: *mut *mut raw::RedisModuleString,
) -> c_int {
    let _ = catch_unwind(|| C::set_bool(privdata as usize, value != 0));
    raw::REDISMODULE_OK as c_int
}

/// The module's `INFO` section.
pub trait InfoSection: 'static {
    /// Adds the section and its fields.
    fn render(info: &mut InfoCtx, for_crash_report: bool);
}

/// Builder for the module's INFO section.
pub struct InfoCtx(*mut raw::RedisModuleInfoCtx);

impl InfoCtx {
    /// Starts the section (named after the module).
    pub fn section(&mut self) {
        // SAFETY: valid info ctx; NULL name means the module's own section.
        unsafe { api!(RedisModule_InfoAddSection)(self.0, std::ptr::null()) };
    }

    /// Adds `name:value` (an unsigned integer).
    pub fn field(&mut self, name: &CStr, value: u64) {
        // SAFETY: valid info ctx; NUL-terminated field name.
        unsafe { api!(RedisModule_InfoAddFieldULongLong)(self.0, name.as_ptr(), value) };
    }

    /// Adds `name:value` (a signed integer).
    pub fn field_i64(&mut self, name: &CStr, value: i64) {
        // SAFETY: valid info ctx; NUL-terminated field name.
        unsafe { api!(RedisModule_InfoAddFieldLongLong)(self.0, name.as_ptr(), value) };
    }

    /// Adds `name:value` (a word: no spaces, CR or LF).
    pub fn field_str(&mut self, name: &CStr, value: &CStr) {
        // SAFETY: valid info ctx; NUL-terminated strings.
        unsafe { api!(RedisModule_InfoAddFieldCString)(self.0, name.as_ptr(), value.as_ptr()) };
    }
}

extern "C" fn info_trampoline<I: InfoSection>(
    ctx: *mut raw::RedisModuleInfoCtx,
    for_crash_report: c_int,
) {
    let mut info = InfoCtx(ctx);
    let _ = catch_unwind(AssertUnwindSafe(|| {
        I::render(&mut info, for_crash_report != 0)
    }));
}
