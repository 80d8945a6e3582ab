//! [`Callbacks`]: the type the server calls back for the WAIT handoff.
//! Here: a blocked client's reply, disconnect and free callbacks, the
//! module timers, and flushes / `SWAPDB` / role changes (keyspace events
//! are in [`super::keyspace`]). Each callback is one engine step.

use spacelock_core::handoff::{self as engine, Answer, DbScope, Outcome, TimerKind};

use super::host::Site;
use super::{nobody_waits, step, Handle};
use crate::ffi::{Blocking, Ctx, Level, ServerEvent, ServerEvents, Timers};
use crate::process;

/// The module's handler of every WAIT callback.
pub struct Callbacks;

/// A blocked client's private data: its outcome, and whether the reply
/// callback delivered it.
pub struct Reply {
    outcome: Outcome,
    delivered: bool,
}

impl Reply {
    /// The private data of an unblock: not delivered yet.
    pub(super) fn new(outcome: Outcome) -> Self {
        Reply {
            outcome,
            delivered: false,
        }
    }
}

impl Blocking for Callbacks {
    type Reply = Reply;

    fn reply(ctx: &Ctx, reply: &mut Reply) {
        let client_id = ctx.client_id();
        let answer = step(ctx, Site::Callback, |host, _| {
            engine::answer(host, &reply.outcome, client_id)
        });
        reply.delivered = answer.is_some();
        match answer {
            Some(Answer::Token(token)) => ctx.reply_i64(token),
            Some(Answer::Error(e)) => ctx.reply_error(&e),
            // Undeliverable (the client is closing): it reads nothing, and
            // `freed` undoes the grant.
            Some(Answer::Nil) | None => ctx.reply_null(),
        }
    }

    fn disconnected(ctx: &Ctx, handle: Handle) {
        step(ctx, Site::Callback, |host, reg| {
            engine::on_disconnect(host, reg, handle)
        });
    }

    fn freed(ctx: &Ctx, reply: Reply) {
        if reply.delivered {
            return;
        }
        step(ctx, Site::Callback, |host, reg| {
            engine::undelivered(host, reg, reply.outcome)
        });
    }
}

impl Timers for Callbacks {
    fn fired(ctx: &Ctx, data: u64) {
        let Some(kind) = TimerKind::decode(data) else {
            return;
        };
        step(ctx, Site::Timer, |host, reg| {
            engine::on_timer(host, reg, kind)
        });
    }
}

impl ServerEvents for Callbacks {
    fn event(ctx: &Ctx, event: ServerEvent) {
        let scope = match event {
            ServerEvent::Flushed { db: Some(db) } => {
                process::with(|p| p.ledger.forget_db(Some(db)));
                process::forget_shared(Some(db));
                DbScope::One(db)
            }
            // The ledger follows keys it can name: after SWAPDB, or on a
            // replica (whose keys its primary now writes), the fence keys
            // answer until a grant or refresh records again.
            ServerEvent::Flushed { db: None } | ServerEvent::SwappedDbs => {
                process::with(|p| p.ledger.forget_db(None));
                process::forget_shared(None);
                DbScope::All
            }
            ServerEvent::NowPrimary => {
                // A promoted replica may have missed writes of its old
                // primary: its tokens start above them by the clock.
                let term = process::open_term(ctx.now_ms());
                ctx.log(
                    Level::Notice,
                    &format!(
                        "spacelock: this server is now a primary; opened a token term at {} (next token >= {})",
                        term.start_ms, term.floor
                    ),
                );
                DbScope::All
            }
            ServerEvent::NowReplica => {
                process::with(|p| p.ledger.forget_db(None));
                process::forget_shared(None);
                DbScope::All
            }
            ServerEvent::LoopIteration => return,
        };
        if nobody_waits() {
            return;
        }
        step(ctx, Site::Callback, |host, reg| {
            engine::on_flush(host, reg, scope)
        });
    }
}
