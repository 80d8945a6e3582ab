//! Module configs (`CONFIG GET spacelock.*`).
//!
//! Values live in atomics so the hot path reads them without a server call.
//! Redis itself enforces each config's range on `CONFIG SET` and in the
//! config file; load arguments (`loadmodule … max-ttl 60000`) are checked here
//! against the same rules.

use std::ffi::CStr;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering::Relaxed};

use spacelock_core::args::parse_i64;
use spacelock_core::lock::Policy;
use spacelock_core::tokens::TokenMode;

use crate::ffi::{Configs, LoadCtx};

/// One numeric config.
pub struct NumericConfig {
    /// Name without the `spacelock.` prefix.
    pub name: &'static CStr,
    /// (default, min, max).
    pub range: (i64, i64, i64),
    value: AtomicI64,
}

impl NumericConfig {
    const fn new(name: &'static CStr, default: i64, min: i64, max: i64) -> Self {
        NumericConfig {
            name,
            range: (default, min, max),
            value: AtomicI64::new(default),
        }
    }
}

/// Index of `spacelock.max-ttl` in [`NUMERIC`].
const MAX_TTL: usize = 0;
/// Index of `spacelock.max-owner-len` in [`NUMERIC`].
const MAX_OWNER_LEN: usize = 1;
/// Index of `spacelock.max-waiters` in [`NUMERIC`].
const MAX_WAITERS: usize = 2;
/// Index of `spacelock.fence-retention` in [`NUMERIC`].
const FENCE_RETENTION: usize = 3;

/// Every numeric config, in registration order.
static NUMERIC: [NumericConfig; 4] = [
    // Largest ttl_ms accepted by ACQUIRE and REFRESH (ms).
    NumericConfig::new(c"max-ttl", 86_400_000, 1, i64::MAX),
    // Longest owner id accepted (bytes).
    NumericConfig::new(c"max-owner-len", 256, 1, 1 << 20),
    // Most clients that may queue with WAIT on one key.
    NumericConfig::new(c"max-waiters", 1024, 0, 1 << 20),
    // How long a fence key outlives the last lease of its name (ms); 0
    // keeps fence keys forever. Ten minutes: far above any clock skew
    // between servers, which is all a fence key guards once its name is
    // unused (see docs/fencing.md).
    NumericConfig::new(c"fence-retention", 600_000, 0, i64::MAX),
];

/// `spacelock.token-mode`: how grants pick their token (see
/// `spacelock_core::tokens`). Stored as its enum number.
const TOKEN_MODE_NAME: &CStr = c"token-mode";
/// Its values and their enum numbers, from `TokenMode`.
const TOKEN_MODES: [(&CStr, i32); TokenMode::ALL.len()] = {
    let mut out = [(c"", 0); TokenMode::ALL.len()];
    let mut i = 0;
    while i < out.len() {
        let mode = TokenMode::ALL[i];
        out[i] = (mode.config_value(), mode as i32);
        i += 1;
    }
    out
};
static TOKEN_MODE: AtomicI64 = AtomicI64::new(0);

/// `spacelock.allow-unload`: whether `MODULE UNLOAD` may unload the module
/// (when nothing waits; see `crate::unload`). Off by default.
const ALLOW_UNLOAD_NAME: &CStr = c"allow-unload";
static ALLOW_UNLOAD: AtomicBool = AtomicBool::new(false);

/// `spacelock.max-ttl`.
pub fn max_ttl() -> i64 {
    NUMERIC[MAX_TTL].value.load(Relaxed)
}

/// `spacelock.max-owner-len`.
pub fn max_owner_len() -> i64 {
    NUMERIC[MAX_OWNER_LEN].value.load(Relaxed)
}

/// `spacelock.max-waiters`.
pub fn max_waiters() -> i64 {
    NUMERIC[MAX_WAITERS].value.load(Relaxed)
}

/// `spacelock.token-mode`.
pub fn token_mode() -> TokenMode {
    TokenMode::from_number(TOKEN_MODE.load(Relaxed))
}

/// `spacelock.fence-retention`.
pub fn fence_retention() -> i64 {
    NUMERIC[FENCE_RETENTION].value.load(Relaxed)
}

/// How grants pick tokens and keep fence keys, from `token-mode` and
/// `fence-retention`.
pub fn policy() -> Policy {
    Policy {
        mode: token_mode(),
        retention_ms: fence_retention(),
    }
}

/// `spacelock.allow-unload`.
pub fn allow_unload() -> bool {
    ALLOW_UNLOAD.load(Relaxed)
}

/// The configs as the server reads and writes them.
pub struct ModuleConfigs;

impl Configs for ModuleConfigs {
    fn get_numeric(index: usize) -> i64 {
        NUMERIC.get(index).map_or(0, |c| c.value.load(Relaxed))
    }
    fn set_numeric(index: usize, value: i64) {
        if let Some(c) = NUMERIC.get(index) {
            c.value.store(value, Relaxed);
        }
    }
    fn get_enum(_index: usize) -> i32 {
        TOKEN_MODE.load(Relaxed) as i32
    }
    fn set_enum(_index: usize, value: i32) {
        TOKEN_MODE.store(i64::from(value), Relaxed);
    }
    fn get_bool(_index: usize) -> bool {
        ALLOW_UNLOAD.load(Relaxed)
    }
    fn set_bool(_index: usize, value: bool) {
        ALLOW_UNLOAD.store(value, Relaxed);
    }
}

/// Registers every config with the server, then applies the config file.
///
/// # Errors
///
/// What the server refused.
pub fn register(ctx: &LoadCtx) -> Result<(), String> {
    // The "default" handed to the server is the current value: the server
    // applies it when the config file has no line for it, and load
    // arguments (applied before) must win over the built-in default.
    for (index, cfg) in NUMERIC.iter().enumerate() {
        let (_, min, max) = cfg.range;
        let current = cfg.value.load(Relaxed);
        ctx.register_numeric_config::<ModuleConfigs>(cfg.name, index, (current, min, max))?;
    }
    let default = TOKEN_MODE.load(Relaxed) as i32;
    ctx.register_enum_config::<ModuleConfigs>(TOKEN_MODE_NAME, 0, default, &TOKEN_MODES)?;
    ctx.register_bool_config::<ModuleConfigs>(ALLOW_UNLOAD_NAME, 0, ALLOW_UNLOAD.load(Relaxed))?;
    ctx.load_configs()
}

/// Applies `loadmodule` arguments: `name value` pairs, where `name` may carry
/// the `spacelock.` prefix. Returns the message to log on error; a failed
/// call changes nothing.
pub fn apply_load_args(args: &[&[u8]]) -> Result<(), String> {
    if args.len() % 2 != 0 {
        return Err("module arguments must be name/value pairs (e.g. max-ttl 60000)".into());
    }
    let mut numeric = Vec::new();
    let mut mode = None;
    let mut allow_unload = None;
    for pair in args.chunks(2) {
        let raw_name = String::from_utf8_lossy(pair[0]);
        let name = raw_name
            .strip_prefix("spacelock.")
            .unwrap_or(&raw_name)
            .to_ascii_lowercase();
        if name.as_bytes() == TOKEN_MODE_NAME.to_bytes() {
            let value = TOKEN_MODES
                .iter()
                .find(|(n, _)| n.to_bytes().eq_ignore_ascii_case(pair[1]))
                .ok_or_else(|| {
                    let names: Vec<&str> = TokenMode::ALL.iter().map(|m| m.name()).collect();
                    format!(
                        "invalid value for {raw_name}: expected {}",
                        names.join(" or ")
                    )
                })?;
            mode = Some(value.1);
            continue;
        }
        if name.as_bytes() == ALLOW_UNLOAD_NAME.to_bytes() {
            allow_unload = Some(
                parse_yes_no(pair[1])
                    .ok_or_else(|| format!("invalid value for {raw_name}: expected yes or no"))?,
            );
            continue;
        }
        let cfg = NUMERIC
            .iter()
            .find(|c| c.name.to_bytes() == name.as_bytes())
            .ok_or_else(|| format!("unknown module argument '{raw_name}'"))?;
        let (_, min, max) = cfg.range;
        let value = parse_i64(pair[1])
            .filter(|v| (min..=max).contains(v))
            .ok_or_else(|| {
                format!("invalid value for {raw_name}: expected an integer from {min} to {max}")
            })?;
        numeric.push((cfg, value));
    }
    for (cfg, value) in numeric {
        cfg.value.store(value, Relaxed);
    }
    if let Some(m) = mode {
        TOKEN_MODE.store(i64::from(m), Relaxed);
    }
    if let Some(allow) = allow_unload {
        ALLOW_UNLOAD.store(allow, Relaxed);
    }
    Ok(())
}

/// `yes` or `no` (any case), as the server spells a boolean config.
fn parse_yes_no(value: &[u8]) -> Option<bool> {
    if value.eq_ignore_ascii_case(b"yes") {
        Some(true)
    } else if value.eq_ignore_ascii_case(b"no") {
        Some(false)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // One test touches the globals, so parallel tests cannot race on them.
    #[test]
    fn load_args() {
        assert!(apply_load_args(&[b"max-ttl"]).is_err());
        assert!(apply_load_args(&[b"nope", b"1"]).is_err());
        assert!(apply_load_args(&[b"max-ttl", b"0"]).is_err());
        assert!(apply_load_args(&[b"max-ttl", b"x"]).is_err());
        assert!(apply_load_args(&[b"max-ttl", b"5", b"token-mode", b"sometimes"]).is_err());
        assert!(apply_load_args(&[b"max-ttl", b"5", b"allow-unload", b"1"]).is_err());
        assert_eq!(max_ttl(), 86_400_000, "failed args change nothing");
        assert_eq!(token_mode(), TokenMode::Term);
        assert!(!allow_unload());
        apply_load_args(&[
            b"spacelock.max-ttl",
            b"5000",
            b"MAX-OWNER-LEN",
            b"64",
            b"token-mode",
            b"COUNTER",
            b"spacelock.allow-unload",
            b"Yes",
        ])
        .unwrap();
        assert_eq!((max_ttl(), max_owner_len()), (5000, 64));
        assert_eq!(token_mode(), TokenMode::Counter);
        assert!(allow_unload());
        apply_load_args(&[b"allow-unload", b"no"]).unwrap();
        assert!(!allow_unload());
        ModuleConfigs::set_numeric(MAX_TTL, NUMERIC[MAX_TTL].range.0);
        ModuleConfigs::set_numeric(MAX_OWNER_LEN, NUMERIC[MAX_OWNER_LEN].range.0);
        ModuleConfigs::set_enum(0, 0);
        assert_eq!(token_mode(), TokenMode::Term);
    }
}
