//! Command handlers: parse and validate argv, run the state machine against
//! the server's keys, reply. A handler either replies (or blocks) and
//! returns `Ok`, or returns the error, which the FFI trampoline replies.
//! Validation happens before any key is opened, so bad input changes
//! nothing (save an expiry overflow, possible only with `max-ttl` raised
//! near 2^63 ms: see `ArgError::TtlOverflow`).

use spacelock_core::args::{check_owner, parse_token_arg, parse_ttl, ArgError};
use spacelock_core::fence;
use spacelock_core::lock::{self, LockError};
use spacelock_core::shared::{
    self, parse_acquire_options, HolderInfo, KeyMode, Kind, Mode, WrongMode,
};

use crate::ffi::{Command, CommandError, Contents, Ctx, RStr};
use crate::store::{holder_token, HashStore, RedisStore};
use crate::{config, handoff, process, stats};

impl From<ArgError> for CommandError {
    fn from(e: ArgError) -> Self {
        CommandError::Reply(e.to_string())
    }
}

impl From<LockError> for CommandError {
    fn from(e: LockError) -> Self {
        CommandError::Reply(e.to_string())
    }
}

/// Validates `owner` and `ttl` (in that order) before any key is opened.
fn owner_and_ttl(owner: RStr<'_>, ttl: RStr<'_>) -> Result<i64, ArgError> {
    check_owner(owner.as_bytes(), config::max_owner_len())?;
    parse_ttl(ttl.as_bytes(), config::max_ttl())
}

/// Replies 1 or 0.
fn reply_bool(ctx: &Ctx, yes: bool) {
    ctx.reply_i64(i64::from(yes));
}

/// `SPACELOCK.ACQUIRE key owner ttl_ms [WAIT timeout_ms]`
pub struct Acquire;

impl Command for Acquire {
    fn run(ctx: &Ctx, args: &[RStr<'_>]) -> Result<(), CommandError> {
        let [_, key, owner, ttl, rest @ ..] = args else {
            return Err(CommandError::WrongArity);
        };
        let ttl = owner_and_ttl(*owner, *ttl)?;
        let rest: Vec<&[u8]> = rest.iter().map(RStr::as_bytes).collect();
        // Without SHARED or LIMIT: today's parser, values and errors.
        let (mode, wait_ms) = parse_acquire_options(&rest)?;
        if let Some(mode) = KeyMode::of(mode) {
            return acquire_shared(ctx, *key, *owner, ttl, mode, wait_ms);
        }
        process::prefetch(key.as_bytes(), true);
        // Clients queued for permits of a counted key: exclusive is the
        // wrong mode there, as on the key itself.
        if let Some(Kind::Counted(n)) = handoff::queue_kind(ctx.selected_db(), key.as_bytes()) {
            return Err(LockError::from(WrongMode {
                held: Kind::Counted(n),
                asked: Mode::Exclusive,
            })
            .into());
        }
        let _quiet = handoff::SelfWrites::begin();
        // Clients already queued go first (no barging while a grant is due),
        // and a grant nobody received is undone before this one looks.
        handoff::settle_from_command(ctx, *key);
        let granted = if handoff::grant_due(ctx, *key) {
            // Free, but the head waiter's at the end of this iteration.
            None
        } else {
            let mut store = RedisStore::open(ctx, *key, *owner);
            if store.is_hash() {
                drop(store);
                sweep_shared(ctx, *key)?;
                store = RedisStore::open(ctx, *key, *owner);
            }
            process::with(|p| lock::acquire(&mut store, ttl, p, config::policy()))?
        };
        match (granted, wait_ms) {
            (Some(token), _) => {
                stats::ACQUIRED.incr();
                ctx.reply_i64(token);
            }
            // WAIT inside MULTI/EXEC or a script acts as a plain ACQUIRE.
            (None, Some(timeout)) if ctx.may_block() => {
                handoff::enqueue(ctx, *key, *owner, ttl, timeout, Mode::Exclusive)?;
            }
            (None, _) => {
                stats::ACQUIRE_CONTENDED.incr();
                ctx.reply_null();
            }
        }
        Ok(())
    }
}

/// Before an exclusive grant looks at a shared or counted key: removes the
/// holders whose lease has ended (their `HDEL`s, or the `DEL` of a key
/// none of whose leases is live, replicated), so a key whose last lease
/// ended this millisecond is free, not held until the server expires it.
///
/// # Errors
///
/// A hash that is not a lock, a corrupt holder field.
pub fn sweep_shared(ctx: &Ctx, key: RStr<'_>) -> Result<(), LockError> {
    let mut store = HashStore::open(ctx, key);
    process::with_shared(|p, index| shared::held(&mut store, p, index)).map(|_| ())
}

/// `SPACELOCK.ACQUIRE key owner ttl_ms SHARED|LIMIT n [WAIT timeout_ms]`:
/// a token when granted; else nil (the key is held in a way that excludes
/// the request, the owner already holds a share, or clients are queued on
/// the key), or with WAIT, a place at the tail of the key's queue.
fn acquire_shared(
    ctx: &Ctx,
    key: RStr<'_>,
    owner: RStr<'_>,
    ttl: i64,
    mode: KeyMode,
    wait_ms: Option<i64>,
) -> Result<(), CommandError> {
    let _quiet = handoff::SelfWrites::begin();
    handoff::settle_from_command(ctx, key);
    // Clients queued on the key go first (nobody barges, even when the
    // request would fit): a reader does not pass a waiting writer, a permit
    // is not taken past earlier requests; a request of another kind than
    // the queue's is the wrong mode.
    let ahead = handoff::queue_kind(ctx.selected_db(), key.as_bytes());
    let mut store = HashStore::open(ctx, key);
    let granted = process::with_shared(|p, index| {
        shared::acquire(
            &mut store,
            owner.as_bytes(),
            ttl,
            mode,
            ahead,
            p,
            index,
            config::policy(),
        )
    })?;
    match granted {
        Some(token) => {
            stats::ACQUIRED.incr();
            ctx.reply_i64(token);
        }
        // WAIT inside MULTI/EXEC or a script acts as a plain ACQUIRE.
        None if wait_ms.is_some() && ctx.may_block() => {
            let timeout = wait_ms.unwrap_or(0);
            handoff::enqueue(ctx, key, owner, ttl, timeout, mode.mode())?;
        }
        None => {
            stats::ACQUIRE_CONTENDED.incr();
            ctx.reply_null();
        }
    }
    Ok(())
}

/// `SPACELOCK.REFRESH key owner ttl_ms`
pub struct Refresh;

impl Command for Refresh {
    fn run(ctx: &Ctx, args: &[RStr<'_>]) -> Result<(), CommandError> {
        let [_, key, owner, ttl] = args else {
            return Err(CommandError::WrongArity);
        };
        let ttl = owner_and_ttl(*owner, *ttl)?;
        process::prefetch(key.as_bytes(), false);
        let _quiet = handoff::SelfWrites::begin();
        let mut store = RedisStore::open(ctx, *key, *owner);
        let refreshed = if store.is_hash() {
            drop(store);
            let mut store = HashStore::open(ctx, *key);
            process::with_shared(|p, index| {
                shared::refresh(
                    &mut store,
                    owner.as_bytes(),
                    ttl,
                    p,
                    index,
                    config::policy(),
                )
            })?
        } else {
            let refreshed = process::with(|p| lock::refresh(&mut store, ttl, p, config::policy()))?;
            drop(store);
            refreshed
        };
        // Moves the expiry timer of a queue.
        handoff::settle_from_command(ctx, *key);
        if refreshed {
            stats::REFRESHED.incr();
        } else {
            stats::REFRESH_NOT_OWNER.incr();
        }
        reply_bool(ctx, refreshed);
        Ok(())
    }
}

/// `SPACELOCK.RELEASE key owner`
pub struct Release;

impl Command for Release {
    fn run(ctx: &Ctx, args: &[RStr<'_>]) -> Result<(), CommandError> {
        let [_, key, owner] = args else {
            return Err(CommandError::WrongArity);
        };
        check_owner(owner.as_bytes(), config::max_owner_len())?;
        process::prefetch(key.as_bytes(), false);
        let _quiet = handoff::SelfWrites::begin();
        let mut store = RedisStore::open(ctx, *key, *owner);
        let released = if store.is_hash() {
            drop(store);
            let mut store = HashStore::open(ctx, *key);
            process::with_shared(|p, index| {
                shared::release(&mut store, owner.as_bytes(), p, index, config::policy())
            })?
        } else {
            let released = process::with(|p| lock::release(&mut store, p, config::policy()))?;
            drop(store);
            released
        };
        // Direct handoff: the head waiter gets the lock at the end of this
        // event-loop iteration, before any reply is sent.
        handoff::settle_from_command(ctx, *key);
        if released {
            stats::RELEASED.incr();
        } else {
            stats::RELEASE_NOT_OWNER.incr();
        }
        reply_bool(ctx, released);
        Ok(())
    }
}

/// `SPACELOCK.INFO key`: nil when free, else owner / ttl_ms / token /
/// waiters, and the process's term (term_start_ms, token_floor).
pub struct Info;

impl Command for Info {
    fn run(ctx: &Ctx, args: &[RStr<'_>]) -> Result<(), CommandError> {
        let [_, key] = args else {
            return Err(CommandError::WrongArity);
        };
        let Some(lock_key) = ctx.open_read(*key) else {
            ctx.reply_null();
            return Ok(());
        };
        let owner = match lock_key.contents() {
            Contents::Missing => {
                ctx.reply_null();
                return Ok(());
            }
            Contents::Other if lock_key.is_hash() => {
                drop(lock_key);
                return info_shared(ctx, *key);
            }
            Contents::Other => return Err(LockError::LockWrongType.into()),
            Contents::Str(v) => v,
        };
        let (token, term) = process::with(|p| {
            let token = holder_token(ctx, p, *key, owner);
            (token, (p.terms.start_ms(), p.terms.floor()))
        });
        let token = token?.unwrap_or(0);
        ctx.reply_map(6);
        ctx.reply_bulk(b"owner");
        ctx.reply_bulk(owner);
        ctx.reply_bulk(b"ttl_ms");
        ctx.reply_i64(lock_key.ttl_ms().unwrap_or(-1));
        ctx.reply_bulk(b"token");
        ctx.reply_i64(token);
        ctx.reply_bulk(b"waiters");
        ctx.reply_i64(handoff::waiters_on(ctx.selected_db(), key.as_bytes()) as i64);
        ctx.reply_bulk(b"term_start_ms");
        ctx.reply_i64(term.0);
        ctx.reply_bulk(b"token_floor");
        ctx.reply_i64(term.1);
        Ok(())
    }
}

/// `SPACELOCK.INFO key` on a shared or counted key: nil when no holder's
/// lease is live, else a map of `mode` (`shared` or `limit`), `limit` (n,
/// or 0), `holders` (maps of `owner`, `ttl_ms`, `token`, in token order),
/// `queue` (`[owner, mode]` pairs in arrival order, `mode` one of
/// `exclusive`, `shared`, `limit`),
/// `waiters`, `term_start_ms`, `token_floor`.
fn info_shared(ctx: &Ctx, key: RStr<'_>) -> Result<(), CommandError> {
    let mut store = HashStore::open_read(ctx, key);
    let Some((mode, holders)) = shared::info(&mut store)? else {
        ctx.reply_null();
        return Ok(());
    };
    drop(store);
    let term = process::with(|p| (p.terms.start_ms(), p.terms.floor()));
    let (name, limit) = match mode {
        KeyMode::Limit(n) => (&b"limit"[..], i64::from(n)),
        _ => (&b"shared"[..], 0),
    };
    ctx.reply_map(7);
    ctx.reply_bulk(b"mode");
    ctx.reply_bulk(name);
    ctx.reply_bulk(b"limit");
    ctx.reply_i64(limit);
    ctx.reply_bulk(b"holders");
    ctx.reply_array(holders.len());
    for HolderInfo {
        owner,
        ttl_ms,
        token,
    } in &holders
    {
        ctx.reply_map(3);
        ctx.reply_bulk(b"owner");
        ctx.reply_bulk(owner);
        ctx.reply_bulk(b"ttl_ms");
        ctx.reply_i64(*ttl_ms);
        ctx.reply_bulk(b"token");
        ctx.reply_i64(*token);
    }
    let queue = handoff::queue_of(ctx.selected_db(), key.as_bytes());
    ctx.reply_bulk(b"queue");
    ctx.reply_array(queue.len());
    for (owner, mode) in &queue {
        ctx.reply_array(2);
        ctx.reply_bulk(owner);
        ctx.reply_bulk(match mode {
            Mode::Exclusive => b"exclusive",
            Mode::Shared => b"shared",
            _ => b"limit",
        });
    }
    ctx.reply_bulk(b"waiters");
    ctx.reply_i64(handoff::waiters_on(ctx.selected_db(), key.as_bytes()) as i64);
    ctx.reply_bulk(b"term_start_ms");
    ctx.reply_i64(term.0);
    ctx.reply_bulk(b"token_floor");
    ctx.reply_i64(term.1);
    Ok(())
}

/// `SPACELOCK.CHECK key owner token`: 1 if `key` holds `owner` under the
/// grant with `token`, else 0. Read-only, for fenced writes from Lua.
pub struct Check;

impl Command for Check {
    fn run(ctx: &Ctx, args: &[RStr<'_>]) -> Result<(), CommandError> {
        let [_, key, owner, token] = args else {
            return Err(CommandError::WrongArity);
        };
        check_owner(owner.as_bytes(), config::max_owner_len())?;
        let token = parse_token_arg(token.as_bytes())?;
        let mut store = HashStore::open_read(ctx, *key);
        let current = if store.is_hash() {
            shared::check(&mut store, owner.as_bytes(), token)?
        } else {
            drop(store);
            let held = process::with(|p| holder_token(ctx, p, *key, owner.as_bytes()))?;
            held == Some(token)
        };
        if current {
            stats::CHECKS_PASSED.incr();
        } else {
            stats::CHECKS_FAILED.incr();
        }
        reply_bool(ctx, current);
        Ok(())
    }
}

/// `SPACELOCK.FENCEKEY key`: the name of the key's fence counter.
pub struct FenceKey;

impl Command for FenceKey {
    fn run(ctx: &Ctx, args: &[RStr<'_>]) -> Result<(), CommandError> {
        let [_, key] = args else {
            return Err(CommandError::WrongArity);
        };
        ctx.reply_bulk(&fence::fence_key(key.as_bytes()));
        Ok(())
    }
}

/// `SPACELOCK.NEWTERM`: opens a new token term now (after restoring a
/// backup, say) and replies its floor: every later grant issues a token of
/// at least that.
pub struct NewTerm;

impl Command for NewTerm {
    fn run(ctx: &Ctx, args: &[RStr<'_>]) -> Result<(), CommandError> {
        if args.len() != 1 {
            return Err(CommandError::WrongArity);
        }
        let term = process::open_term(ctx.now_ms());
        ctx.log(
            crate::ffi::Level::Notice,
            &format!(
                "spacelock: SPACELOCK.NEWTERM opened a token term at {} (next token >= {})",
                term.start_ms, term.floor
            ),
        );
        ctx.reply_i64(term.floor);
        Ok(())
    }
}
