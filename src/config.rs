//! Module configs (`CONFIG GET spacelock.*`).
//!
//! Values live in atomics so the hot path reads them without a server call.
//! Redis itself enforces each config's range on `CONFIG SET` and in the
//! config file; load arguments (`loadmodule … max-ttl 60000`) are checked here
//! against the same ranges.

use std::ffi::CStr;
use std::sync::atomic::{AtomicI64, Ordering::Relaxed};

/// One numeric config.
pub struct NumericConfig {
    /// Name without the `spacelock.` prefix.
    pub name: &'static CStr,
    /// Default value.
    pub default: i64,
    /// Smallest accepted value.
    pub min: i64,
    /// Largest accepted value.
    pub max: i64,
    /// One-line meaning, for docs.
    pub doc: &'static str,
    value: AtomicI64,
}

impl NumericConfig {
    const fn new(name: &'static CStr, default: i64, min: i64, max: i64, doc: &'static str) -> Self {
        NumericConfig {
            name,
            default,
            min,
            max,
            doc,
            value: AtomicI64::new(default),
        }
    }
}

/// Index of `spacelock.max-ttl` in [`CONFIGS`].
pub const MAX_TTL: usize = 0;
/// Index of `spacelock.max-owner-len` in [`CONFIGS`].
pub const MAX_OWNER_LEN: usize = 1;
/// Index of `spacelock.max-waiters` in [`CONFIGS`].
pub const MAX_WAITERS: usize = 2;

/// Every config, in registration order.
pub static CONFIGS: [NumericConfig; 3] = [
    NumericConfig::new(
        c"max-ttl",
        86_400_000,
        1,
        i64::MAX,
        "largest ttl_ms accepted by ACQUIRE and REFRESH (ms)",
    ),
    NumericConfig::new(
        c"max-owner-len",
        256,
        1,
        1 << 20,
        "longest owner id accepted (bytes)",
    ),
    NumericConfig::new(
        c"max-waiters",
        1024,
        0,
        1 << 20,
        "most clients that may queue with WAIT on one key",
    ),
];

/// Current value of config `index`.
pub fn get(index: usize) -> i64 {
    CONFIGS.get(index).map_or(0, |c| c.value.load(Relaxed))
}

/// Sets config `index` (range already checked by the server).
pub fn set(index: usize, value: i64) {
    if let Some(c) = CONFIGS.get(index) {
        c.value.store(value, Relaxed);
    }
}

/// `spacelock.max-ttl`.
pub fn max_ttl() -> i64 {
    CONFIGS[MAX_TTL].value.load(Relaxed)
}

/// `spacelock.max-owner-len`.
pub fn max_owner_len() -> i64 {
    CONFIGS[MAX_OWNER_LEN].value.load(Relaxed)
}

/// `spacelock.max-waiters`.
pub fn max_waiters() -> i64 {
    CONFIGS[MAX_WAITERS].value.load(Relaxed)
}

/// Applies `loadmodule` arguments: `name value` pairs, where `name` may carry
/// the `spacelock.` prefix. Returns the message to log on error.
pub fn apply_load_args(args: &[&[u8]]) -> Result<(), String> {
    if args.len() % 2 != 0 {
        return Err("module arguments must be name/value pairs (e.g. max-ttl 60000)".into());
    }
    for pair in args.chunks(2) {
        let raw_name = String::from_utf8_lossy(pair[0]);
        let name = raw_name
            .strip_prefix("spacelock.")
            .unwrap_or(&raw_name)
            .to_ascii_lowercase();
        let cfg = CONFIGS
            .iter()
            .find(|c| c.name.to_bytes() == name.as_bytes())
            .ok_or_else(|| format!("unknown module argument '{raw_name}'"))?;
        let value = spacelock_core::args::parse_i64(pair[1])
            .filter(|v| (cfg.min..=cfg.max).contains(v))
            .ok_or_else(|| {
                format!(
                    "invalid value for {raw_name}: expected an integer from {} to {}",
                    cfg.min, cfg.max
                )
            })?;
        cfg.value.store(value, Relaxed);
    }
    Ok(())
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
        assert_eq!(max_ttl(), 86_400_000, "failed args change nothing");
        apply_load_args(&[b"spacelock.max-ttl", b"5000", b"MAX-OWNER-LEN", b"64"]).unwrap();
        assert_eq!((max_ttl(), max_owner_len()), (5000, 64));
        set(MAX_TTL, CONFIGS[MAX_TTL].default);
        set(MAX_OWNER_LEN, CONFIGS[MAX_OWNER_LEN].default);
    }
}
