//! Command handlers: parse and validate argv, run the state machine against
//! the server's keys, reply. Every path sends exactly one reply, and every
//! error reply starts with its code word.

use crate::config;
use crate::ffi::{Command, Ctx, RStr, Value};
use crate::stats;
use crate::store::{fence_name, fence_token, RedisStore};
use spacelock_core::args::{check_owner, parse_ttl};
use spacelock_core::fence;
use spacelock_core::lock;

/// Validates `owner` and `ttl` (in that order) before any key is opened.
fn owner_and_ttl(owner: RStr, ttl: RStr) -> Result<i64, spacelock_core::args::ArgError> {
    check_owner(owner.as_bytes(), config::max_owner_len())?;
    parse_ttl(ttl.as_bytes(), config::max_ttl())
}

/// `SPACELOCK.ACQUIRE key owner ttl_ms [WAIT timeout_ms]`
pub struct Acquire;

impl Command for Acquire {
    fn run(ctx: &Ctx, args: &[RStr]) {
        let [_, key, owner, ttl, rest @ ..] = args else {
            return ctx.wrong_arity();
        };
        let ttl = match owner_and_ttl(*owner, *ttl) {
            Ok(t) => t,
            Err(e) => return ctx.reply_error(&e.to_string()),
        };
        let rest: Vec<&[u8]> = rest.iter().map(RStr::as_bytes).collect();
        let wait = match crate::wait::parse_options(&rest) {
            Ok(w) => w,
            Err(e) => return ctx.reply_error(&e.to_string()),
        };
        let _quiet = crate::wait::SelfWrites::begin();
        // Clients already queued go first (no barging while a grant is due).
        crate::wait::settle(ctx, *key);
        let outcome = {
            let mut store = RedisStore::open(ctx, *key, *owner);
            lock::acquire(&mut store, ttl)
        };
        match outcome {
            Ok(Some(token)) => {
                stats::ACQUIRED.incr();
                ctx.reply_i64(token);
            }
            // WAIT inside MULTI/EXEC or a script acts as a plain ACQUIRE.
            Ok(None) => match wait {
                Some(timeout) if ctx.may_block() => {
                    crate::wait::enqueue(ctx, *key, *owner, ttl, timeout)
                }
                _ => {
                    stats::ACQUIRE_CONTENDED.incr();
                    ctx.reply_null();
                }
            },
            Err(e) => ctx.reply_error(&e.to_string()),
        }
    }
}

/// `SPACELOCK.REFRESH key owner ttl_ms`
pub struct Refresh;

impl Command for Refresh {
    fn run(ctx: &Ctx, args: &[RStr]) {
        let [_, key, owner, ttl] = args else {
            return ctx.wrong_arity();
        };
        let ttl = match owner_and_ttl(*owner, *ttl) {
            Ok(t) => t,
            Err(e) => return ctx.reply_error(&e.to_string()),
        };
        let _quiet = crate::wait::SelfWrites::begin();
        let outcome = {
            let mut store = RedisStore::open(ctx, *key, *owner);
            lock::refresh(&mut store, ttl)
        };
        // Moves the expiry timer of a queue, or grants an expired lock.
        crate::wait::settle(ctx, *key);
        match outcome {
            Ok(true) => {
                stats::REFRESHED.incr();
                ctx.reply_i64(1);
            }
            Ok(false) => {
                stats::REFRESH_NOT_OWNER.incr();
                ctx.reply_i64(0);
            }
            Err(e) => ctx.reply_error(&e.to_string()),
        }
    }
}

/// `SPACELOCK.RELEASE key owner`
pub struct Release;

impl Command for Release {
    fn run(ctx: &Ctx, args: &[RStr]) {
        let [_, key, owner] = args else {
            return ctx.wrong_arity();
        };
        if let Err(e) = check_owner(owner.as_bytes(), config::max_owner_len()) {
            return ctx.reply_error(&e.to_string());
        }
        let _quiet = crate::wait::SelfWrites::begin();
        let outcome = {
            let mut store = RedisStore::open(ctx, *key, *owner);
            lock::release(&mut store)
        };
        // Direct handoff: the head waiter gets the lock in this same command.
        crate::wait::settle(ctx, *key);
        match outcome {
            Ok(true) => {
                stats::RELEASED.incr();
                ctx.reply_i64(1);
            }
            Ok(false) => {
                stats::RELEASE_NOT_OWNER.incr();
                ctx.reply_i64(0);
            }
            Err(e) => ctx.reply_error(&e.to_string()),
        }
    }
}

/// `SPACELOCK.INFO key`: nil when free, else owner / ttl_ms / token / waiters.
pub struct Info;

impl Command for Info {
    fn run(ctx: &Ctx, args: &[RStr]) {
        let [_, key] = args else {
            return ctx.wrong_arity();
        };
        let lock_key = ctx.open(*key, false);
        let owner = match lock_key.value() {
            Value::Empty => return ctx.reply_null(),
            Value::Other => return ctx.reply_error(&lock::LockError::LockWrongType.to_string()),
            Value::Str(v) => v,
        };
        let name = fence_name(key.as_bytes());
        let fence_key = ctx.open(name.as_rstr(), false);
        let token = match fence_token(&fence_key) {
            Ok(t) => t,
            Err(e) => return ctx.reply_error(&e.to_string()),
        };
        ctx.reply_map(4);
        ctx.reply_bulk(b"owner");
        ctx.reply_bulk(owner);
        ctx.reply_bulk(b"ttl_ms");
        ctx.reply_i64(lock_key.ttl_ms().unwrap_or(-1));
        ctx.reply_bulk(b"token");
        ctx.reply_i64(token);
        ctx.reply_bulk(b"waiters");
        ctx.reply_i64(crate::wait::waiters_on(ctx.selected_db(), key.as_bytes()) as i64);
    }
}

/// `SPACELOCK.FENCEKEY key`: the name of the key's fence counter.
pub struct FenceKey;

impl Command for FenceKey {
    fn run(ctx: &Ctx, args: &[RStr]) {
        let [_, key] = args else {
            return ctx.wrong_arity();
        };
        ctx.reply_bulk(&fence::fence_key(key.as_bytes()));
    }
}
