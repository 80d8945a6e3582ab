//! Every `unsafe` line of the module lives in this layer, each with a
//! `// SAFETY:` comment; the rest of the crate is `#![deny(unsafe_code)]`.
//!
//! It is a leaf: it imports nothing from the module's logic. It wraps the
//! Redis Module API (function pointers filled in by `RedisModule_Init`) in
//! safe types, and turns each kind of callback into a trait the module
//! implements, with generic trampolines behind `catch_unwind`:
//!
//! | area | here | the module implements |
//! |---|---|---|
//! | strings, keys | [`RStr`], [`OwnedStr`], [`Key`] | – |
//! | context, replies, replication | [`Ctx`] | – |
//! | core commands run by the module | `Ctx::cluster_nodes`, … | – |
//! | commands, load, unload | [`entry`], [`load`], [`unload`], [`module_entry_points!`](crate::module_entry_points) | [`Command`] |
//! | registration | [`LoadCtx`], [`CommandDef`] | [`Configs`], [`InfoSection`] |
//! | blocked clients | [`BlockedClient`] | [`Blocking`] |
//! | timers, keyspace and server events | `Ctx::create_timer`, … | [`Timers`], [`KeyEvents`], [`ServerEvents`] |
//! | CPU hints | [`prefetch`] | – |
//!
//! Invariant relied on by every `// SAFETY:` comment: the server calls the
//! module on its main thread only, with pointers valid for the duration of
//! the callback, and every API function used was checked at load (the
//! required ones) or is checked at the call (the optional ones).

/// Calls a Redis Module API function pointer. Panics (caught by the
/// trampolines) only if the server lacks it, which the load-time check rules
/// out. Only usable inside an `unsafe` block: reading the function-pointer
/// statics is sound because RedisModule_Init wrote them once, before any
/// other call, and the main thread is the only reader.
macro_rules! api {
    ($name:ident) => {
        redis_module::raw::$name.expect(concat!(stringify!($name), " is missing"))
    };
}

mod blocking;
mod calls;
mod ctx;
mod entry;
mod events;
mod hint;
mod keys;
mod register;
mod strings;

pub use blocking::{BlockedClient, Blocking};
pub use ctx::{Ctx, EventClass, Level};
pub use entry::{entry, load, unload, Command, CommandError};
pub use events::{KeyEvents, ServerEvent, ServerEvents, Timers};
pub use hint::prefetch;
pub use keys::{Contents, Key};
pub use register::{ArgDoc, ArgType, CommandDef, Configs, InfoCtx, InfoSection, KeyFlags, LoadCtx};
pub use strings::{OwnedStr, RStr};
