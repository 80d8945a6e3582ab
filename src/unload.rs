//! `MODULE UNLOAD`: refused unless `spacelock.allow-unload` is `yes`, and
//! even then while anything could still reach the unloaded code or a
//! reload could issue a token again.
//!
//! The server itself refuses the unload while the module has blocked
//! clients (every client in `SPACELOCK.ACQUIRE ... WAIT`) or armed timers,
//! before it asks the module. Once the module agrees, the server drops its
//! commands, configs, keyspace and server event subscriptions and INFO
//! section, and unloads the shared object: the statics go with it, so a
//! later `MODULE LOAD` starts from the defaults and opens its first token
//! term on the clock.
//!
//! An unload the server starts itself, to undo a load that failed one of
//! its checks after `RedisModule_OnLoad` returned (`MODULE LOADEX` with a
//! config the module does not have), is never refused: nothing has used
//! the module yet, and Redis 8.2 aborts when the module refuses it. That
//! unload happens inside the `MODULE LOAD` command, so the module tells it
//! apart by whether the server's event loop has turned, or a spacelock
//! command has run, since the load ([`LoadWatch`]). (An unload pipelined
//! right behind the load, before anything ran, goes through as well:
//! nothing has used the module then either.)
//!
//! What the module checks on top, in this order, each found by trying it
//! on Redis 7.0 and Valkey 9.1 (every one of them crashed the server or
//! read freed memory after an unload):
//!
//! 1. `spacelock.allow-unload` (default `no`): a lock module holds leases
//!    and queued clients that an unload would drop, so removing it is a
//!    restart without its `loadmodule` line, unless the operator says so.
//! 2. The WAIT handoff: no client waits, no undelivered grant is still to
//!    be undone.
//! 3. Connections ([`client_blocker`], from `CLIENT LIST`):
//!    * a transaction with queued commands (`MULTI`): a queued command was
//!      looked up when it was queued, and `EXEC` would run the unloaded code;
//!    * a connection whose last command was a spacelock command: the server
//!      keeps a pointer to it, which `CLIENT LIST` would read after it is
//!      freed;
//!    * a blocked connection (`BLPOP`, `CLIENT PAUSE`, …): Valkey 9 looks up
//!      the commands pipelined behind the blocking one before it returns,
//!      and would run a spacelock command among them from the freed table.
//! 4. ACL rules that name a spacelock command (`+spacelock.acquire`, the way
//!    to grant them where `@spacelock` does not exist): Redis 7.0 aborts on
//!    the next `ACL LIST` after the commands are gone (Valkey 9.1 refuses
//!    the unload itself).
//! 5. The token term: the reload's first term starts on the clock, so the
//!    unload waits (at most [`MAX_CLOCK_WAIT_MS`]) until the clock has
//!    passed every token issued; beyond that it is refused.
//!
//! Then it lets go: timers stopped, the keyspace subscription dropped, the
//! registry, the token marks and the ledger of grants freed.
//!
//! One case no module can see: on Valkey 9, commands pipelined after
//! `MODULE UNLOAD` on the same connection were looked up before the unload
//! ran, and a spacelock command among them crashes the server. The docs
//! tell operators to send `MODULE UNLOAD` alone.

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::{Duration, Instant};

use crate::ffi::{Ctx, Level, ServerEvent, ServerEvents, Timers};
use crate::{config, handoff, process};

/// The longest `MODULE UNLOAD` waits for the clock to pass the tokens
/// issued. A server issues well under a thousand grants per millisecond, so
/// tokens run at most a millisecond or so ahead of the clock, right after a
/// term opened; only a token taken from a fence key set ahead (a slot
/// migrated from a node whose clock runs ahead, a hand-made value) runs
/// further.
pub const MAX_CLOCK_WAIT_MS: i64 = 10;

/// Why the unload is refused while `spacelock.allow-unload` is `no`.
pub const NOT_ALLOWED: &str = "spacelock holds lease locks and WAIT queues and does not unload by default; to remove it, restart the server without its loadmodule line, or CONFIG SET spacelock.allow-unload yes and unload while no client uses it";

/// Whether the server has accepted this load: set on the first turn of its
/// event loop after the load, or by the first spacelock command. Until then
/// an unload is the server undoing a load that failed one of its own checks
/// after `RedisModule_OnLoad` (`MODULE LOADEX` with a config the module does
/// not have), which must not be refused (Redis 8.2 aborts when it is), and
/// which nothing can have used yet.
static LOADED: AtomicBool = AtomicBool::new(false);

/// Whether the timer that ends the event-loop subscription is armed.
static WATCH_ENDING: AtomicBool = AtomicBool::new(false);

/// A spacelock command ran: the load was accepted.
pub fn used() {
    if !LOADED.load(Relaxed) {
        LOADED.store(true, Relaxed);
    }
}

/// Watches for the first turn of the event loop after the load (the server
/// is done with `MODULE LOAD` then), then ends its subscription from a
/// timer: the event loop is not followed for longer than that.
pub struct LoadWatch;

impl ServerEvents for LoadWatch {
    fn event(ctx: &Ctx, event: ServerEvent) {
        if event != ServerEvent::LoopIteration {
            return;
        }
        LOADED.store(true, Relaxed);
        // Not from here: the server still uses the subscription after this
        // callback returns.
        if !WATCH_ENDING.swap(true, Relaxed) {
            ctx.create_timer::<LoadWatch>(0, 0);
        }
    }
}

impl Timers for LoadWatch {
    fn fired(ctx: &Ctx, _data: u64) {
        ctx.unsubscribe_event_loop();
    }
}

/// `RedisModule_OnUnload`: `Ok` lets the server unload the module.
///
/// # Errors
///
/// Why the module stays loaded (logged as a warning).
pub fn on_unload(ctx: &Ctx) -> Result<(), String> {
    if !LOADED.load(Relaxed) {
        ctx.log(
            Level::Notice,
            "spacelock: the server is undoing a load that failed its checks; unloading",
        );
        handoff::release_for_unload(ctx);
        return Ok(());
    }
    if !config::allow_unload() {
        return Err(NOT_ALLOWED.into());
    }
    if let Some(why) = handoff::unload_blocker() {
        return Err(why);
    }
    let clients = ctx.client_list().ok_or(
        "CLIENT LIST failed (is CLIENT renamed?), so connections that still use spacelock cannot be ruled out",
    )?;
    if let Some(why) = client_blocker(&clients) {
        return Err(why);
    }
    let users = ctx.acl_list().ok_or(
        "ACL LIST failed (is ACL renamed?), so ACL rules that name spacelock commands cannot be ruled out",
    )?;
    if let Some(why) = acl_blocker(&users) {
        return Err(why);
    }
    wait_for_clock(ctx)?;
    handoff::release_for_unload(ctx);
    process::release_for_unload();
    ctx.log(
        Level::Notice,
        "spacelock: unloading (spacelock.allow-unload is yes and no client uses spacelock)",
    );
    Ok(())
}

/// Whether `name` (a command's full name, any case) is a spacelock command.
fn is_ours(name: &str) -> bool {
    name.len() > "spacelock.".len()
        && name.as_bytes()[.."spacelock.".len()].eq_ignore_ascii_case(b"spacelock.")
}

/// What in `CLIENT LIST` keeps the module loaded, if anything: the ids of
/// connections with queued transactions, blocked ones, and ones whose last
/// command was a spacelock command.
fn client_blocker(client_list: &str) -> Option<String> {
    let (mut queued, mut blocked, mut ours) = (Vec::new(), Vec::new(), Vec::new());
    for line in client_list.lines() {
        let field = |name: &str| line.split_whitespace().find_map(|f| f.strip_prefix(name));
        let id = field("id=").unwrap_or("?").to_string();
        if field("multi=")
            .and_then(|n| n.parse::<i64>().ok())
            .is_some_and(|n| n > 0)
        {
            queued.push(id.clone());
        }
        if field("flags=").is_some_and(|f| f.contains('b')) {
            blocked.push(id.clone());
        }
        if field("cmd=").is_some_and(is_ours) {
            ours.push(id);
        }
    }
    let mut why = Vec::new();
    if !queued.is_empty() {
        why.push(format!(
            "connection(s) {} have a transaction with queued commands (MULTI), which could run spacelock commands at EXEC",
            queued.join(",")
        ));
    }
    if !blocked.is_empty() {
        why.push(format!(
            "connection(s) {} are blocked, and commands pipelined behind them may already be looked up",
            blocked.join(",")
        ));
    }
    if !ours.is_empty() {
        why.push(format!(
            "connection(s) {} last ran a spacelock command, which the server still points to; they must disconnect or run another command first",
            ours.join(",")
        ));
    }
    (!why.is_empty()).then(|| why.join("; "))
}

/// What in `ACL LIST` keeps the module loaded, if anything: users whose
/// rules name a spacelock command.
fn acl_blocker(users: &[String]) -> Option<String> {
    let named: Vec<&str> = users
        .iter()
        .filter(|line| {
            line.split_whitespace().any(|rule| {
                let rule = rule.trim_start_matches('(').trim_end_matches(')');
                rule.strip_prefix(['+', '-']).is_some_and(is_ours)
            })
        })
        .map(|line| line.split_whitespace().nth(1).unwrap_or("?"))
        .collect();
    (!named.is_empty()).then(|| {
        format!(
            "ACL user(s) {} have rules that name spacelock commands; remove those rules first",
            named.join(",")
        )
    })
}

/// Waits until the clock reads a millisecond whose term floor is above every
/// token this load issued, so the next load's first term cannot issue one of
/// them again (a reload in the same millisecond would otherwise start at the
/// same floor).
fn wait_for_clock(ctx: &Ctx) -> Result<(), String> {
    let safe_at = process::fresh_start_safe_ms();
    let ahead = safe_at.saturating_sub(ctx.now_ms());
    if ahead > MAX_CLOCK_WAIT_MS {
        return Err(format!(
            "the tokens issued run {ahead} ms ahead of the clock (a fence key set ahead of it), so a module loaded again now could issue them again; retry in {ahead} ms, or restart the server instead"
        ));
    }
    // A deadline on the monotonic clock too, in case the wall clock stalls.
    let deadline = Instant::now() + Duration::from_millis(MAX_CLOCK_WAIT_MS as u64 + 5);
    while ctx.now_ms() < safe_at {
        if Instant::now() > deadline {
            return Err(format!(
                "the clock did not pass the tokens issued ({safe_at} ms) within {MAX_CLOCK_WAIT_MS} ms; retry"
            ));
        }
        std::thread::sleep(Duration::from_micros(100));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const IDLE: &str = "id=3 addr=127.0.0.1:1 laddr=127.0.0.1:2 fd=9 name= age=0 idle=0 flags=N db=0 sub=0 psub=0 ssub=0 multi=-1 qbuf=0 cmd=module|unload user=default redir=-1 resp=2\n\
                        id=4 addr=127.0.0.1:3 laddr=127.0.0.1:2 fd=10 name=app age=9 idle=9 flags=N db=0 sub=0 psub=0 ssub=0 multi=-1 qbuf=0 cmd=get user=default redir=-1 resp=2\n";

    #[test]
    fn idle_connections_allow_the_unload() {
        assert_eq!(client_blocker(IDLE), None);
        assert_eq!(client_blocker(""), None);
    }

    #[test]
    fn transactions_blocked_clients_and_our_last_commands_refuse_it() {
        let multi = IDLE.replace(
            "flags=N db=0 sub=0 psub=0 ssub=0 multi=-1 qbuf=0 cmd=get",
            "flags=x db=0 sub=0 psub=0 ssub=0 multi=2 qbuf=0 cmd=multi",
        );
        assert!(client_blocker(&multi)
            .unwrap()
            .contains("connection(s) 4 have a transaction"));
        // MULTI with nothing queued yet: a later SPACELOCK is looked up then,
        // after the unload, and refused as unknown.
        let empty = multi.replace("multi=2", "multi=0");
        assert_eq!(client_blocker(&empty), None);
        let blocked = IDLE.replace(
            "flags=N db=0 sub=0 psub=0 ssub=0 multi=-1 qbuf=0 cmd=get",
            "flags=b db=0 sub=0 psub=0 ssub=0 multi=-1 qbuf=0 cmd=blpop",
        );
        assert!(client_blocker(&blocked)
            .unwrap()
            .contains("connection(s) 4 are blocked"));
        let ours = IDLE.replace("cmd=get", "cmd=spacelock.acquire");
        let why = client_blocker(&ours).unwrap();
        assert!(
            why.contains("connection(s) 4 last ran a spacelock command"),
            "{why}"
        );
        let both = format!(
            "{ours}{}",
            blocked.lines().nth(1).unwrap().replace("id=4", "id=7")
        );
        let why = client_blocker(&both).unwrap();
        assert!(
            why.contains("connection(s) 7 are blocked") && why.contains("connection(s) 4 last ran"),
            "{why}"
        );
        // Not ours: a command that merely starts alike.
        assert_eq!(
            client_blocker(&IDLE.replace("cmd=get", "cmd=spacelockx")),
            None
        );
        assert_eq!(
            client_blocker(&IDLE.replace("cmd=get", "cmd=spacelock.")),
            None
        );
    }

    #[test]
    fn acl_rules_naming_our_commands_refuse_it() {
        let users = |rules: &str| {
            vec![
                "user default on nopass ~* &* +@all".to_string(),
                format!("user app on nopass resetchannels {rules}"),
            ]
        };
        assert_eq!(acl_blocker(&users("-@all +get")), None);
        // A category is not a command: the server keeps it across unloads.
        assert_eq!(acl_blocker(&users("-@all +@spacelock")), None);
        assert_eq!(acl_blocker(&users("~spacelock.* -@all +get")), None);
        for rules in [
            "-@all +spacelock.acquire",
            "+@all -SPACELOCK.NEWTERM",
            "-@all (~lock:* +spacelock.check)",
        ] {
            let why = acl_blocker(&users(rules)).unwrap_or_else(|| panic!("{rules}"));
            assert!(why.contains("ACL user(s) app have rules"), "{why}");
        }
    }
}
