//! spacelock: a native lease-lock module for Redis and Valkey.
//!
//! This file wires things together: the command table, the configs, the
//! INFO section and the event handlers, registered at load. The decisions
//! live in `spacelock_core` (pure Rust, unit-tested without a server): the
//! lock state machine, the token rule, every decision of the WAIT handoff.
//! Here:
//!
//! * [`commands`]: the command handlers;
//! * [`store`]: the lock state machine's `Store` over real keys
//!   (replication, notifications);
//! * [`handoff`]: the WAIT handoff on the server (the engine's host, the
//!   server's callbacks, keyspace events, muting our own writes);
//! * [`process`]: what the process remembers: its token terms and its
//!   ledger of grants;
//! * [`unload`]: whether `MODULE UNLOAD` may unload the module, and letting
//!   go of its state when it may;
//! * [`config`], [`stats`], [`info`]: configs, counters and `INFO
//!   spacelock`;
//! * [`ffi`]: the only `unsafe` code, a leaf that imports nothing from the
//!   rest.
// The module is a cdylib: its rustdoc is for maintainers, and its map above
// links the private modules on purpose.
#![allow(rustdoc::private_intra_doc_links)]
#![deny(unsafe_code)]

mod commands;
mod config;
#[allow(unsafe_code)]
mod ffi;
mod handoff;
mod info;
mod process;
mod stats;
mod store;
mod sync;
mod unload;

use ffi::{entry, ArgDoc, ArgType, Command, CommandDef, KeyFlags, Level, LoadCtx, RStr};

// The server's allocator in the module, so `INFO memory` and maxmemory see
// our allocations. Unit tests run outside a server, where it would abort.
#[cfg(not(test))]
#[global_allocator]
static ALLOCATOR: redis_module::alloc::RedisAlloc = redis_module::alloc::RedisAlloc;

module_entry_points!(
    name: c"spacelock",
    version: MODULE_VERSION,
    on_load: on_load,
    on_unload: unload::on_unload,
);

/// The version `MODULE LIST` shows, from the crate's version (Cargo.toml is
/// its one source): major × 10000 + minor × 100 + patch, so 0.2.0 is 200.
const MODULE_VERSION: i32 = module_version(env!("CARGO_PKG_VERSION"));

/// Encodes `major.minor.patch` (a pre-release or build suffix is ignored)
/// as major × 10000 + minor × 100 + patch. A version that does not fit
/// (minor or patch above 99) fails the build.
const fn module_version(version: &str) -> i32 {
    let bytes = version.as_bytes();
    let mut parts = [0i32; 3];
    let (mut part, mut i) = (0, 0);
    while i < bytes.len() {
        match bytes[i] {
            b'0'..=b'9' => parts[part] = parts[part] * 10 + (bytes[i] - b'0') as i32,
            b'.' if part < 2 => part += 1,
            _ => break,
        }
        i += 1;
    }
    assert!(part == 2, "the crate version is not major.minor.patch");
    assert!(
        parts[1] < 100 && parts[2] < 100,
        "minor and patch must stay below 100"
    );
    parts[0] * 10_000 + parts[1] * 100 + parts[2]
}

/// Command `C`, which first tells `unload` that this load is in use (see
/// `unload::LOADED`).
struct Used<C>(std::marker::PhantomData<fn() -> C>);

impl<C: Command> Command for Used<C> {
    fn run(ctx: &ffi::Ctx, args: &[RStr<'_>]) -> Result<(), ffi::CommandError> {
        unload::used();
        C::run(ctx, args)
    }
}

/// A documented argument that every call passes.
const fn required(name: &'static std::ffi::CStr, kind: ArgType) -> ArgDoc {
    ArgDoc {
        name,
        kind,
        token: None,
        optional: false,
    }
}

const KEY: ArgDoc = required(c"key", ArgType::Key);
const OWNER: ArgDoc = required(c"owner", ArgType::String);
const TTL: ArgDoc = required(c"ttl_ms", ArgType::Integer);
const TOKEN: ArgDoc = required(c"token", ArgType::Integer);
const SHARED: ArgDoc = ArgDoc {
    token: Some(c"SHARED"),
    optional: true,
    ..required(c"shared", ArgType::PureToken)
};
const LIMIT: ArgDoc = ArgDoc {
    token: Some(c"LIMIT"),
    optional: true,
    ..required(c"limit", ArgType::Integer)
};
const WAIT_TIMEOUT: ArgDoc = ArgDoc {
    token: Some(c"WAIT"),
    optional: true,
    ..required(c"timeout_ms", ArgType::Integer)
};

/// The ACL category every spacelock command belongs to (Redis ≥ 7.4).
const ACL_CATEGORY: &std::ffi::CStr = c"spacelock";

/// Every command, in one table. Each one's ACL categories are `spacelock`
/// plus the core categories its flags imply, which the server does not
/// derive for module commands on its own (so `+@all -@write` removes
/// ACQUIRE, and `+@read` allows INFO).
fn command_table() -> [CommandDef; 7] {
    [
        CommandDef {
            name: c"spacelock.acquire",
            flags: c"write deny-oom fast blocking",
            summary: c"Acquires a lease lock if the key is free and returns a new fencing token; with WAIT, queues (FIFO) until the lock is handed over or the timeout passes; SHARED takes one of many readers' shares, LIMIT n one of at most n permits",
            complexity: c"O(1); SHARED or LIMIT: O(log N) where N is the number of holders",
            since: c"0.1.0",
            arity: -4,
            key: Some(KeyFlags::RW | KeyFlags::INSERT),
            args: &[KEY, OWNER, TTL, SHARED, LIMIT, WAIT_TIMEOUT],
            acl: c"spacelock write fast",
            entry: entry::<Used<commands::Acquire>>(),
        },
        CommandDef {
            name: c"spacelock.refresh",
            flags: c"write fast",
            summary: c"Resets the lease's TTL if the key is held by owner (on a shared or counted lock, owner's own lease)",
            complexity: c"O(1); shared or counted: O(log N) where N is the number of holders",
            since: c"0.1.0",
            arity: 4,
            key: Some(KeyFlags::RW | KeyFlags::UPDATE),
            args: &[KEY, OWNER, TTL],
            acl: c"spacelock write fast",
            entry: entry::<Used<commands::Refresh>>(),
        },
        CommandDef {
            name: c"spacelock.release",
            flags: c"write fast",
            summary: c"Deletes the lock if the key is held by owner (on a shared or counted lock, removes owner's share)",
            complexity: c"O(1); shared or counted: O(log N) where N is the number of holders",
            since: c"0.1.0",
            arity: 3,
            key: Some(KeyFlags::RW | KeyFlags::DELETE),
            args: &[KEY, OWNER],
            acl: c"spacelock write fast",
            entry: entry::<Used<commands::Release>>(),
        },
        CommandDef {
            name: c"spacelock.info",
            flags: c"readonly fast",
            summary: c"Returns the holder, remaining TTL, fencing token and waiters of a lock, and the server's token term; on a shared or counted lock, its mode and every holder",
            complexity: c"O(1); shared or counted: O(N) where N is the number of holders",
            since: c"0.1.0",
            arity: 2,
            key: Some(KeyFlags::RO | KeyFlags::ACCESS),
            args: &[KEY],
            acl: c"spacelock read fast",
            entry: entry::<Used<commands::Info>>(),
        },
        CommandDef {
            name: c"spacelock.check",
            flags: c"readonly fast",
            summary: c"Returns 1 if the key is held by owner under the grant with this fencing token, else 0 (for fenced writes from Lua)",
            complexity: c"O(1)",
            since: c"0.2.0",
            arity: 4,
            key: Some(KeyFlags::RO | KeyFlags::ACCESS),
            args: &[KEY, OWNER, TOKEN],
            acl: c"spacelock read fast",
            entry: entry::<Used<commands::Check>>(),
        },
        CommandDef {
            name: c"spacelock.fencekey",
            flags: c"readonly fast",
            summary: c"Returns the name of the key that holds a lock's fencing counter",
            complexity: c"O(1)",
            since: c"0.1.0",
            arity: 2,
            key: Some(KeyFlags::RO),
            args: &[KEY],
            acl: c"spacelock read fast",
            entry: entry::<Used<commands::FenceKey>>(),
        },
        CommandDef {
            name: c"spacelock.newterm",
            flags: c"admin fast",
            summary: c"Opens a new token term now: every later grant issues a token of at least the reply",
            complexity: c"O(1)",
            since: c"0.2.0",
            arity: 1,
            key: None,
            args: &[],
            acl: c"spacelock admin fast",
            entry: entry::<Used<commands::NewTerm>>(),
        },
    ]
}

/// Called by `RedisModule_OnLoad` after the API check. An `Err` refuses the
/// load; its text is logged.
fn on_load(ctx: &LoadCtx, args: &[RStr<'_>]) -> Result<(), String> {
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
            ctx.set_acl_categories(def).map_err(|e| match &added {
                Err(add) => format!("{add}; {e}"),
                Ok(_) => e,
            })?;
        }
    } else {
        ctx.log(
            Level::Notice,
            "spacelock: ACL category @spacelock unavailable (needs Redis >= 7.4 or Valkey >= 8.0); grant spacelock commands by name (+spacelock.acquire ...), as @write/@read/@fast do not cover module commands here",
        );
    }

    config::register(ctx)?;
    ctx.register_info::<info::ModuleInfo>()?;
    // WAIT: flushes, SWAPDB and role changes settle the queues (keyspace
    // events are subscribed by the first WAIT); becoming a primary also
    // opens a token term.
    ctx.subscribe_server_events::<handoff::Callbacks>()?;
    // The first turn of the event loop tells `unload` that the server has
    // accepted this load.
    ctx.subscribe_event_loop::<unload::LoadWatch>()?;
    let term = process::open_term(ctx.now_ms());
    ctx.log(
        Level::Notice,
        &format!(
            "spacelock {} loaded (max-ttl={} max-owner-len={} max-waiters={} fence-retention={} token-mode={} allow-unload={}; token term opened at {}, next token >= {})",
            env!("CARGO_PKG_VERSION"),
            config::max_ttl(),
            config::max_owner_len(),
            config::max_waiters(),
            config::fence_retention(),
            config::token_mode().name(),
            if config::allow_unload() { "yes" } else { "no" },
            term.start_ms,
            term.floor
        ),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{module_version, MODULE_VERSION};

    #[test]
    fn module_version_encoding() {
        assert_eq!(module_version("0.2.0"), 200);
        assert_eq!(module_version("1.12.3"), 11_203);
        assert_eq!(module_version("0.2.1-rc.1"), 201);
        assert_eq!(MODULE_VERSION, module_version(env!("CARGO_PKG_VERSION")));
    }
}
