//! Keyspace events (DEL, UNLINK, RENAME, expiry, eviction, … by anyone
//! else) mark a queue's key for the pending timer, which settles it.
//! Writing from inside a notification is unsupported, so nothing is
//! granted here.
//!
//! The subscription is taken by the first WAIT ([`subscribe`]) and dropped
//! from a timer once nobody waits ([`unsubscribe`]), where the server can
//! (Redis 7.4+, Valkey 8.1+): a server where nobody ever waits pays nothing
//! for keyspace events.

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

use spacelock_core::handoff as engine;

use super::callbacks::Callbacks;
use super::host::{ServerHost, Site};
use super::self_writes::SelfWrites;
use super::REGISTRY;
use crate::ffi::{Ctx, KeyEvents, RStr};

/// Whether [`Callbacks`] is subscribed to keyspace events.
static SUBSCRIBED: AtomicBool = AtomicBool::new(false);

/// Subscribes to keyspace events unless already subscribed.
pub(super) fn subscribe(ctx: &Ctx) {
    if !SUBSCRIBED.load(Relaxed) && ctx.subscribe_key_events::<Callbacks>() {
        SUBSCRIBED.store(true, Relaxed);
    }
}

/// Whether there is a subscription this server can drop.
pub(super) fn may_unsubscribe() -> bool {
    SUBSCRIBED.load(Relaxed) && Ctx::can_unsubscribe_key_events()
}

/// Drops the subscription (from a timer only: this may otherwise run
/// inside the server's event dispatch).
pub(super) fn unsubscribe(ctx: &Ctx) {
    if ctx.unsubscribe_key_events::<Callbacks>() {
        SUBSCRIBED.store(false, Relaxed);
    }
}

/// Drops the subscription for `MODULE UNLOAD` where the server can; where
/// it cannot (before Redis 7.4 and Valkey 8.1), the server drops every
/// subscription of the module as it unloads it.
pub(super) fn drop_for_unload(ctx: &Ctx) {
    if may_unsubscribe() {
        unsubscribe(ctx);
    }
    SUBSCRIBED.store(false, Relaxed);
}

impl KeyEvents for Callbacks {
    fn event(ctx: &Ctx, key: RStr<'_>) {
        if SelfWrites::active() {
            return;
        }
        // Not `registry()`: an event raised while the registry is locked
        // would deadlock. Every such event is one of ours (muted above); a
        // busy lock here would be a bug, and skipping the event only delays
        // a grant to the queue's next timer.
        let Some(mut guard) = crate::sync::try_lock(&REGISTRY) else {
            return;
        };
        let Some(reg) = guard.as_mut().filter(|r| !r.is_idle()) else {
            return;
        };
        let db = ctx.selected_db();
        let mut host = ServerHost::new(ctx, Site::Callback);
        engine::on_key_event(&mut host, reg, db, key.as_bytes());
    }
}
