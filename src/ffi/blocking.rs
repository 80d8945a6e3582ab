//! Blocked clients (`RedisModule_BlockClient`).
//!
//! Life cycle of a handle, as every supported server runs it: the module
//! unblocks it exactly once (`RedisModule_UnblockClient`), with a reply in
//! its private data, or without one for a client that disconnected. In the
//! next `beforeSleep` the server calls the reply callback (only if the
//! client is still connected), then frees the private data, then the
//! handle. A client that disconnects first gets the disconnect callback,
//! also after the module unblocked it (the server clears that callback
//! only once it has run the reply callback).

use std::ffi::{c_int, c_longlong, c_void};
use std::marker::PhantomData;

use redis_module::raw;

use super::entry::guarded;
use super::Ctx;

/// What the module does with its blocked clients.
pub trait Blocking: 'static {
    /// The private data an unblock carries to the reply callback.
    type Reply: 'static;
    /// The reply callback: the client is still connected; reply to it
    /// (through `ctx`) from `reply`, which stays with the server until
    /// [`freed`](Self::freed).
    fn reply(ctx: &Ctx, reply: &mut Self::Reply);
    /// The client disconnected (or the server let it go, e.g. on a role
    /// change), whether or not the module had unblocked it.
    fn disconnected(ctx: &Ctx, handle: BlockedClient<Self>);
    /// The server frees `reply`, after the reply callback or instead of it.
    /// `ctx` may have no client: do not open keys with it.
    fn freed(ctx: &Ctx, reply: Self::Reply);
}

/// A blocked client's handle. Its address identifies the client until the
/// server frees it; only used on the main thread.
pub struct BlockedClient<B: ?Sized>(*mut raw::RedisModuleBlockedClient, PhantomData<fn(&B)>);

impl<B: ?Sized> Clone for BlockedClient<B> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<B: ?Sized> Copy for BlockedClient<B> {}
impl<B: ?Sized> PartialEq for BlockedClient<B> {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}
impl<B: ?Sized> Eq for BlockedClient<B> {}
impl<B: ?Sized> std::hash::Hash for BlockedClient<B> {
    fn hash<S: std::hash::Hasher>(&self, state: &mut S) {
        self.0.hash(state);
    }
}
impl<B: ?Sized> std::fmt::Debug for BlockedClient<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BlockedClient({:p})", self.0)
    }
}

// SAFETY: a handle is only created, stored and used on the server's main
// thread; `Send` only lets the module keep handles in a `static Mutex` (a
// `thread_local!` would register a TLS destructor that blocks MODULE UNLOAD).
unsafe impl<B: ?Sized> Send for BlockedClient<B> {}

impl<B: Blocking> BlockedClient<B> {
    /// Unblocks the client; `reply` goes to [`Blocking::reply`] (if it is
    /// still connected) and then [`Blocking::freed`]. Call once per handle.
    pub fn unblock(self, reply: B::Reply) {
        let data = Box::into_raw(Box::new(reply));
        // SAFETY: a live handle not unblocked yet (the module hands each one
        // out once); the server owns `data` from here and gives it back to
        // `free_trampoline`.
        let rc = unsafe { api!(RedisModule_UnblockClient)(self.0, data.cast::<c_void>()) };
        if rc != raw::REDISMODULE_OK as c_int {
            // SAFETY: the server refused the handle, so it did not take `data`.
            drop(unsafe { Box::from_raw(data) });
        }
    }

    /// Frees the handle of a client that disconnected while blocked: no
    /// reply, nothing to free. Call once per handle, instead of `unblock`.
    pub fn discard_disconnected(self) {
        // SAFETY: a live handle not unblocked yet; NULL privdata means no
        // reply callback data and no free callback.
        unsafe { api!(RedisModule_UnblockClient)(self.0, std::ptr::null_mut()) };
    }
}

impl Ctx {
    /// Blocks the calling client with no server-side timeout and no timeout
    /// callback: the module alone decides when it ends (so the server never
    /// times it out, and `CLIENT UNBLOCK` refuses it). `None` if the server
    /// returned no handle, which no supported server does (inside MULTI or a
    /// script they hand back a handle and reply themselves, which is why the
    /// caller never blocks there); nothing has been replied then.
    pub fn block_client<B: Blocking>(&self) -> Option<BlockedClient<B>> {
        // SAFETY: valid command ctx; the callbacks are plain functions that
        // live as long as the module.
        let bc = unsafe {
            api!(RedisModule_BlockClient)(
                self.raw(),
                Some(reply_trampoline::<B>),
                None,
                Some(free_trampoline::<B>),
                0 as c_longlong,
            )
        };
        if bc.is_null() {
            return None;
        }
        // SAFETY: `bc` was just returned by BlockClient.
        unsafe { api!(RedisModule_SetDisconnectCallback)(bc, Some(disconnect_trampoline::<B>)) };
        Some(BlockedClient(bc, PhantomData))
    }
}

extern "C" fn reply_trampoline<B: Blocking>(
    ctx: *mut raw::RedisModuleCtx,
    _argv: *mut *mut raw::RedisModuleString,
    _argc: c_int,
) -> c_int {
    let c = Ctx::from_raw(ctx);
    // SAFETY: called in the blocked client's reply context; the privdata is
    // the Box<B::Reply> we passed to UnblockClient (never NULL: a NULL
    // unblock is only for disconnected clients, which get no reply
    // callback), owned by the server until `free_trampoline`; the server
    // does not touch it meanwhile, so a unique borrow is sound.
    let data = unsafe { api!(RedisModule_GetBlockedClientPrivateData)(ctx) }.cast::<B::Reply>();
    // SAFETY: see above; NULL is handled.
    match unsafe { data.as_mut() } {
        Some(reply) => guarded(ctx, "WAIT reply", || B::reply(&c, reply)),
        None => c.reply_null(),
    }
    raw::REDISMODULE_OK as c_int
}

extern "C" fn disconnect_trampoline<B: Blocking>(
    ctx: *mut raw::RedisModuleCtx,
    bc: *mut raw::RedisModuleBlockedClient,
) {
    let c = Ctx::from_raw(ctx);
    guarded(ctx, "WAIT disconnect", || {
        B::disconnected(&c, BlockedClient(bc, PhantomData))
    });
}

extern "C" fn free_trampoline<B: Blocking>(ctx: *mut raw::RedisModuleCtx, data: *mut c_void) {
    if data.is_null() {
        return;
    }
    // SAFETY: the only non-NULL privdata is a Box<B::Reply> (see `unblock`);
    // the server frees it exactly once, here.
    let reply = *unsafe { Box::from_raw(data.cast::<B::Reply>()) };
    let c = Ctx::from_raw(ctx);
    guarded(ctx, "WAIT free", || B::freed(&c, reply));
}
