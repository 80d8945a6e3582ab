//! spacelock: a native lease-lock module for Redis and Valkey.
//!
//! This file only registers things. The lock logic is plain Rust in
//! `spacelock_core::lock` (unit-tested without a server), argument rules are in `spacelock_core::args`,
//! fence-key naming in `spacelock_core::fence`, the server-facing store in [`store`],
//! command handlers in [`commands`], and every `unsafe` line in [`ffi`].

pub mod commands;
pub mod config;
pub mod ffi;
pub mod stats;
pub mod store;
pub mod wait;

use ffi::{entry, key_flags as kf, ArgDoc, ArgType, CommandDef, LoadCtx, RStr};

// The server's allocator in the module, so `INFO memory` and maxmemory see
// our allocations. Unit tests run outside a server, where it would abort.
#[cfg(not(test))]
#[global_allocator]
static ALLOCATOR: redis_module::alloc::RedisAlloc = redis_module::alloc::RedisAlloc;

const KEY: ArgDoc = ArgDoc {
    name: c"key",
    kind: ArgType::Key,
    token: None,
    optional: false,
};
const OWNER: ArgDoc = ArgDoc {
    name: c"owner",
    kind: ArgType::String,
    token: None,
    optional: false,
};
const TTL: ArgDoc = ArgDoc {
    name: c"ttl_ms",
    kind: ArgType::Integer,
    token: None,
    optional: false,
};

const WAIT_TIMEOUT: ArgDoc = ArgDoc {
    name: c"timeout_ms",
    kind: ArgType::Integer,
    token: Some(c"WAIT"),
    optional: true,
};

/// The ACL category every spacelock command belongs to (Redis ≥ 7.4).
const ACL_CATEGORY: &std::ffi::CStr = c"spacelock";

fn command_table() -> [CommandDef; 5] {
    [
        CommandDef {
            name: c"spacelock.acquire",
            flags: c"write deny-oom fast blocking",
            summary: c"Acquires a lease lock if the key is free and returns a new fencing token; with WAIT, queues (FIFO) until the lock is handed over or the timeout passes",
            complexity: c"O(1)",
            since: c"0.1.0",
            arity: -4,
            key_flags: kf::RW | kf::INSERT,
            args: &[KEY, OWNER, TTL, WAIT_TIMEOUT],
            entry: entry::<commands::Acquire>(),
        },
        CommandDef {
            name: c"spacelock.refresh",
            flags: c"write fast",
            summary: c"Resets the lease's TTL if the key is held by owner",
            complexity: c"O(1)",
            since: c"0.1.0",
            arity: 4,
            key_flags: kf::RW | kf::UPDATE,
            args: &[KEY, OWNER, TTL],
            entry: entry::<commands::Refresh>(),
        },
        CommandDef {
            name: c"spacelock.release",
            flags: c"write fast",
            summary: c"Deletes the lock if the key is held by owner",
            complexity: c"O(1)",
            since: c"0.1.0",
            arity: 3,
            key_flags: kf::RW | kf::DELETE,
            args: &[KEY, OWNER],
            entry: entry::<commands::Release>(),
        },
        CommandDef {
            name: c"spacelock.info",
            flags: c"readonly fast",
            summary: c"Returns the holder, remaining TTL, fencing token and waiters of a lock",
            complexity: c"O(1)",
            since: c"0.1.0",
            arity: 2,
            key_flags: kf::RO | kf::ACCESS,
            args: &[KEY],
            entry: entry::<commands::Info>(),
        },
        CommandDef {
            name: c"spacelock.fencekey",
            flags: c"readonly fast",
            summary: c"Returns the name of the key that holds a lock's fencing counter",
            complexity: c"O(1)",
            since: c"0.1.0",
            arity: 2,
            key_flags: kf::RO,
            args: &[KEY],
            entry: entry::<commands::FenceKey>(),
        },
    ]
}

/// The ACL categories of `def` where modules may set them (Redis >= 7.4,
/// Valkey >= 8.0): `spacelock` plus the core categories its flags imply
/// (`write` or `read`, and `fast`). The server derives none of them for module
/// commands, so without this `+@all -@write` would still allow ACQUIRE and
/// `+@read` would not allow INFO.
fn acl_categories(def: &CommandDef) -> std::ffi::CString {
    let flags = def.flags.to_string_lossy();
    let has = |f: &str| flags.split(' ').any(|x| x == f);
    let mut cats = vec![ACL_CATEGORY.to_string_lossy().into_owned()];
    cats.push(if has("write") { "write" } else { "read" }.to_string());
    if has("fast") {
        cats.push("fast".to_string());
    }
    // The names are static ASCII words: no NUL.
    std::ffi::CString::new(cats.join(" ")).unwrap_or_else(|_| ACL_CATEGORY.to_owned())
}

/// Called by `RedisModule_OnLoad` after the API check. An `Err` refuses the
/// load; its text is logged.
pub fn on_load(ctx: &LoadCtx, args: &[RStr]) -> Result<(), String> {
    let args: Vec<&[u8]> = args.iter().map(RStr::as_bytes).collect();
    config::apply_load_args(&args)?;
    spacelock_core::fence::warm_up();
    ctx.disable_implicit_signal();

    let commands = command_table();
    for def in &commands {
        ctx.create_command(def)?;
    }
    // The server keeps a module's ACL categories after MODULE UNLOAD, so a
    // reload finds @spacelock already there and cannot add it again; then
    // setting the commands' categories below is what decides.
    let added = ctx.add_acl_category(ACL_CATEGORY);
    if added != Ok(false) {
        for def in &commands {
            ctx.set_acl_categories(def.name, &acl_categories(def))
                .map_err(|e| match &added {
                    Err(add) => format!("{add}; {e}"),
                    Ok(_) => e,
                })?;
        }
    } else {
        ctx.log(
            c"notice",
            "spacelock: ACL category @spacelock unavailable (needs Redis >= 7.4 or Valkey >= 8.0); grant spacelock commands by name (+spacelock.acquire ...), as @write/@read/@fast do not cover module commands here",
        );
    }

    for (index, cfg) in config::CONFIGS.iter().enumerate() {
        ctx.register_numeric_config(cfg.name, config::get(index), cfg.min, cfg.max, index)?;
    }
    ctx.load_configs()?;
    ctx.register_info()?;
    // WAIT: FLUSH*/SWAPDB/role changes settle the queues (keyspace events
    // are subscribed lazily, by the first WAIT: see crate::wait).
    ctx.subscribe_flush()?;
    ctx.log(
        c"notice",
        &format!(
            "spacelock {} loaded (max-ttl={} max-owner-len={} max-waiters={})",
            env!("CARGO_PKG_VERSION"),
            config::max_ttl(),
            config::max_owner_len(),
            config::max_waiters()
        ),
    );
    Ok(())
}
