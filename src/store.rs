//! [`Store`] over real keys: the only place the lock logic meets the server.
//!
//! Every write is mirrored by exactly the core command a replica or an AOF
//! replay needs, with absolute times (`SET … PXAT`, `PEXPIREAT`, `DEL`,
//! `SET fence n`), and by the keyspace events the core command would emit.

use crate::ffi::{Ctx, EventClass, Key, OwnedStr, RStr, Value};
use spacelock_core::fence;
use spacelock_core::lock::{parse_token, LockError, Probe, Store};

/// The last token stored in an open fence key: 0 when it does not exist.
pub fn fence_token(fence: &Key) -> Result<i64, LockError> {
    match fence.value() {
        Value::Empty => Ok(0),
        Value::Str(v) => parse_token(v),
        Value::Other => Err(LockError::FenceWrongType),
    }
}

/// The fence key of lock `key`, as a server string. Built on the stack for
/// any key name of usual length (one allocation, the server string's).
pub fn fence_name(key: &[u8]) -> OwnedStr {
    let mut buf = [0u8; 192];
    match fence::fence_key_in(key, &mut buf) {
        Some(name) => OwnedStr::new(name),
        None => OwnedStr::new(&fence::fence_key(key)),
    }
}

/// One lock key opened for one caller.
pub struct RedisStore<'a> {
    ctx: &'a Ctx,
    owner: RStr,
    lock: Key,
    /// Opened on first use: REFRESH and RELEASE never touch it.
    fence: Option<(Key, OwnedStr)>,
}

impl<'a> RedisStore<'a> {
    /// Opens `key` for writing, on behalf of `owner`.
    pub fn open(ctx: &'a Ctx, key: RStr, owner: RStr) -> Self {
        RedisStore {
            ctx,
            owner,
            lock: ctx.open(key, true),
            fence: None,
        }
    }

    fn fence(&mut self) -> &mut Key {
        let ctx = self.ctx;
        let name = self.lock.name();
        &mut self
            .fence
            .get_or_insert_with(|| {
                let fence = fence_name(name.as_bytes());
                (ctx.open(fence.as_rstr(), true), fence)
            })
            .0
    }
}

impl Store for RedisStore<'_> {
    fn now_ms(&self) -> i64 {
        self.ctx.now_ms()
    }

    fn probe(&mut self) -> Result<Probe, LockError> {
        match self.lock.value() {
            Value::Empty => Ok(Probe::Free),
            Value::Str(v) if v == self.owner.as_bytes() => Ok(Probe::Mine),
            Value::Str(_) => Ok(Probe::Other),
            Value::Other => Err(LockError::LockWrongType),
        }
    }

    fn last_token(&mut self) -> Result<i64, LockError> {
        fence_token(self.fence())
    }

    fn grant(&mut self, expire_at_ms: i64, token: i64) {
        let (ctx, key, owner) = (self.ctx, self.lock.name(), self.owner);
        self.lock.write(owner.as_bytes());
        self.lock.set_expire_at(expire_at_ms);
        let fence = self.fence();
        let mut digits = [0u8; 20];
        fence.write(decimal(token, &mut digits));
        let fence_name = fence.name();
        ctx.replicate_set_pxat(key, owner, expire_at_ms);
        ctx.replicate_set_int(fence_name, token);
        ctx.signal_modified(key);
        ctx.signal_modified(fence_name);
        ctx.notify(EventClass::String, c"set", key);
        ctx.notify(EventClass::Generic, c"expire", key);
        ctx.notify(EventClass::String, c"set", fence_name);
    }

    fn extend(&mut self, expire_at_ms: i64) {
        let key = self.lock.name();
        self.lock.set_expire_at(expire_at_ms);
        self.ctx.replicate_pexpireat(key, expire_at_ms);
        self.ctx.signal_modified(key);
        self.ctx.notify(EventClass::Generic, c"expire", key);
    }

    fn remove(&mut self) {
        let key = self.lock.name();
        self.lock.delete();
        self.ctx.replicate_del(key);
        self.ctx.signal_modified(key);
        self.ctx.notify(EventClass::Generic, c"del", key);
    }
}

/// The decimal digits of `n` (≥ 0), written at the end of `buf`.
fn decimal(n: i64, buf: &mut [u8; 20]) -> &[u8] {
    let mut n = n.unsigned_abs();
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[i..];
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn decimal_digits() {
        let mut buf = [0u8; 20];
        for n in [0, 1, 9, 10, 12345, i64::MAX] {
            assert_eq!(super::decimal(n, &mut buf), n.to_string().as_bytes());
        }
    }
}
