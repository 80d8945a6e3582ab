//! [`Store`] over real keys: the only place the lock logic meets the server.
//!
//! Every write is mirrored by exactly the core command a replica or an AOF
//! replay needs, with absolute times (`SET … PXAT`, `PEXPIREAT`, `DEL`,
//! `SET fence n`), and by the keyspace events the core command would emit.

use spacelock_core::fence;
use spacelock_core::lock::{current_token, parse_token, LockError, Probe, Process, Store};
use spacelock_core::shared::{self, Holder, KeyMode, Layout, SharedStore, MODE_FIELD};

use crate::ffi::{Contents, Ctx, EventClass, Key, OwnedStr, RStr};

/// The last token stored in a fence key: 0 when it does not exist.
///
/// # Errors
///
/// When the fence key holds another type or a non-counter.
pub fn fence_token(fence: Option<&Key<'_>>) -> Result<i64, LockError> {
    match fence.map_or(Contents::Missing, Key::contents) {
        Contents::Missing => Ok(0),
        Contents::Str(v) => parse_token(v),
        Contents::Other => Err(LockError::FenceWrongType),
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
    db: i32,
    owner: RStr<'a>,
    /// The bytes of the key and the owner, read once (each read is a call
    /// into the server).
    key_bytes: &'a [u8],
    owner_bytes: &'a [u8],
    lock: Key<'a>,
    /// Opened on first use: REFRESH and RELEASE never touch it.
    fence: Option<Key<'a>>,
}

impl<'a> RedisStore<'a> {
    /// Opens `key` for writing, on behalf of `owner`.
    pub fn open(ctx: &'a Ctx, key: RStr<'a>, owner: RStr<'a>) -> Self {
        RedisStore {
            ctx,
            db: ctx.selected_db(),
            owner,
            key_bytes: key.as_bytes(),
            owner_bytes: owner.as_bytes(),
            lock: ctx.open_write(key),
            fence: None,
        }
    }

    /// Whether the key holds a hash (a shared or counted lock, served by
    /// `spacelock_core::shared`, or a foreign hash).
    pub fn is_hash(&self) -> bool {
        self.lock.is_hash()
    }

    fn fence(&mut self) -> &mut Key<'a> {
        let (ctx, key) = (self.ctx, self.key_bytes);
        self.fence.get_or_insert_with(|| {
            // The open key keeps its own reference to the name.
            let name = fence_name(key);
            ctx.open_write(name.as_rstr())
        })
    }
}

impl Store for RedisStore<'_> {
    fn now_ms(&self) -> i64 {
        self.ctx.now_ms()
    }

    fn db(&self) -> i32 {
        self.db
    }

    fn key(&self) -> &[u8] {
        self.key_bytes
    }

    fn owner(&self) -> &[u8] {
        self.owner_bytes
    }

    fn probe(&mut self) -> Result<Probe, LockError> {
        match self.lock.contents() {
            Contents::Missing => Ok(Probe::Free),
            Contents::Str(v) if v == self.owner_bytes => Ok(Probe::Mine),
            Contents::Str(_) => Ok(Probe::Other),
            // A shared key is held (nil, or the client queues), a counted
            // one the wrong mode; any other type is the wrong type.
            Contents::Other if self.lock.is_hash() => {
                shared::exclusive_probe(hash_mode(&self.lock))
            }
            Contents::Other => Err(LockError::LockWrongType),
        }
    }

    fn last_token(&mut self) -> Result<i64, LockError> {
        fence_token(Some(self.fence()))
    }

    fn fence_expiry(&mut self) -> Option<Option<i64>> {
        let fence = self.fence();
        if fence.contents() == Contents::Missing {
            return None;
        }
        Some(fence.expire_at_ms())
    }

    fn write_grant(
        &mut self,
        expire_at_ms: i64,
        token: i64,
        fence_until_ms: Option<i64>,
    ) -> Result<(), LockError> {
        let ctx = self.ctx;
        write_fence(ctx, self.fence(), token, fence_until_ms)?;

        let (owner, lock) = (self.owner, &mut self.lock);
        // Free (the probe said so): no expiry to drop before setting one.
        lock.overwrite(self.owner_bytes)
            .map_err(|_| LockError::WriteFailed)?;
        lock.set_expire_at(expire_at_ms);
        let key = lock.name();
        ctx.replicate_set_pxat(key, owner, expire_at_ms);
        ctx.signal_modified(key);
        ctx.notify(EventClass::String, c"set", key);
        ctx.notify(EventClass::Generic, c"expire", key);
        Ok(())
    }

    fn extend(&mut self, expire_at_ms: i64) {
        self.lock.set_expire_at(expire_at_ms);
        let key = self.lock.name();
        self.ctx.replicate_pexpireat(key, expire_at_ms);
        self.ctx.signal_modified(key);
        self.ctx.notify(EventClass::Generic, c"expire", key);
    }

    fn extend_fence(&mut self, until_ms: Option<i64>) {
        let ctx = self.ctx;
        extend_fence(ctx, self.fence(), until_ms);
    }

    fn remove(&mut self) {
        self.lock.delete();
        let key = self.lock.name();
        self.ctx.replicate_del(key);
        self.ctx.signal_modified(key);
        self.ctx.notify(EventClass::Generic, c"del", key);
    }
}

/// Sets the fence counter `fence` to `token`, expiring at `until_ms`
/// (`None`: kept), replicated as `SET fence token [PXAT until]`.
fn write_fence(
    ctx: &Ctx,
    fence: &mut Key<'_>,
    token: i64,
    fence_until_ms: Option<i64>,
) -> Result<(), LockError> {
    let mut buf = [0u8; 20];
    let digits = decimal(token, &mut buf);
    // As `SET` does: the expiry is replaced, or dropped when the fence
    // key is kept.
    match fence_until_ms {
        Some(at) => {
            fence
                .overwrite(digits)
                .map_err(|_| LockError::WriteFailed)?;
            fence.set_expire_at(at);
        }
        None => fence.write(digits).map_err(|_| LockError::WriteFailed)?,
    }
    let fence_key = fence.name();
    match fence_until_ms {
        Some(at) => ctx.replicate_set_bytes_pxat(fence_key, digits, at),
        None => ctx.replicate_set(fence_key, digits),
    }
    ctx.signal_modified(fence_key);
    ctx.notify(EventClass::String, c"set", fence_key);
    if fence_until_ms.is_some() {
        ctx.notify(EventClass::Generic, c"expire", fence_key);
    }
    Ok(())
}

/// Moves an existing fence key's expiry (`None`: persists it), replicated
/// as `PEXPIREAT` or `PERSIST`.
fn extend_fence(ctx: &Ctx, fence: &mut Key<'_>, until_ms: Option<i64>) {
    if fence.contents() == Contents::Missing {
        return;
    }
    match until_ms {
        Some(at) => fence.set_expire_at(at),
        None => fence.persist(),
    }
    let name = fence.name();
    match until_ms {
        Some(at) => {
            ctx.replicate_pexpireat(name, at);
            ctx.notify(EventClass::Generic, c"expire", name);
        }
        None => {
            ctx.replicate_persist(name);
            ctx.notify(EventClass::Generic, c"persist", name);
        }
    }
    ctx.signal_modified(name);
}

/// The mode a hash key records in its mode field (`None`: not ours).
fn hash_mode(key: &Key<'_>) -> Option<KeyMode> {
    key.hash_get(MODE_FIELD).and_then(|m| KeyMode::parse(&m))
}

/// A shared or counted lock key (a hash, see `spacelock_core::shared`)
/// opened for one command: the `SharedStore` over real keys. Every write
/// is replicated as the core command with absolute times (`HSET`, `HDEL`,
/// `PEXPIREAT`, `DEL`, `SET fence`), with its keyspace events; the server
/// wraps a command's writes in one `MULTI/EXEC`.
pub struct HashStore<'a> {
    ctx: &'a Ctx,
    db: i32,
    key_bytes: &'a [u8],
    /// `None`: opened for reading and missing.
    lock: Option<Key<'a>>,
    fence: Option<Key<'a>>,
}

impl<'a> HashStore<'a> {
    /// Opens `key` for writing.
    pub fn open(ctx: &'a Ctx, key: RStr<'a>) -> Self {
        HashStore {
            ctx,
            db: ctx.selected_db(),
            key_bytes: key.as_bytes(),
            lock: Some(ctx.open_write(key)),
            fence: None,
        }
    }

    /// Opens `key` for reading (CHECK, INFO: nothing is written).
    pub fn open_read(ctx: &'a Ctx, key: RStr<'a>) -> Self {
        HashStore {
            ctx,
            db: ctx.selected_db(),
            key_bytes: key.as_bytes(),
            lock: ctx.open_read(key),
            fence: None,
        }
    }

    /// Whether the key holds a hash (then the shared path serves it).
    pub fn is_hash(&self) -> bool {
        self.lock.as_ref().is_some_and(Key::is_hash)
    }

    fn fence(&mut self) -> &mut Key<'a> {
        let (ctx, key) = (self.ctx, self.key_bytes);
        self.fence.get_or_insert_with(|| {
            let name = fence_name(key);
            ctx.open_write(name.as_rstr())
        })
    }
}

impl SharedStore for HashStore<'_> {
    fn now_ms(&self) -> i64 {
        self.ctx.now_ms()
    }

    fn db(&self) -> i32 {
        self.db
    }

    fn key(&self) -> &[u8] {
        self.key_bytes
    }

    fn layout(&mut self) -> Layout {
        let Some(lock) = self.lock.as_ref() else {
            return Layout::Missing;
        };
        match lock.contents() {
            Contents::Missing => Layout::Missing,
            Contents::Str(_) => Layout::Exclusive,
            Contents::Other if lock.is_hash() => {
                hash_mode(lock).map_or(Layout::Foreign, Layout::Hash)
            }
            Contents::Other => Layout::Foreign,
        }
    }

    fn holder(&mut self, owner: &[u8]) -> Result<Option<Holder>, LockError> {
        self.lock
            .as_ref()
            .and_then(|l| l.hash_get(owner))
            .map(|v| Holder::parse(&v))
            .transpose()
    }

    fn holders(&mut self) -> Result<Vec<(Vec<u8>, Holder)>, LockError> {
        let Some(lock) = self.lock.as_ref() else {
            return Ok(Vec::new());
        };
        lock.hash_fields()
            .into_iter()
            .filter(|(f, _)| f.as_slice() != MODE_FIELD)
            .map(|(f, v)| Ok((f, Holder::parse(&v)?)))
            .collect()
    }

    fn holder_count(&mut self) -> usize {
        self.lock
            .as_ref()
            .filter(|l| l.is_hash())
            .map_or(0, |l| l.hash_len().saturating_sub(1))
    }

    fn expire_at(&mut self) -> Option<i64> {
        self.lock.as_ref().and_then(Key::expire_at_ms)
    }

    fn last_token(&mut self) -> Result<i64, LockError> {
        fence_token(Some(self.fence()))
    }

    fn fence_expiry(&mut self) -> Option<Option<i64>> {
        let fence = self.fence();
        if fence.contents() == Contents::Missing {
            return None;
        }
        Some(fence.expire_at_ms())
    }

    fn write_fence(&mut self, token: i64, until_ms: Option<i64>) -> Result<(), LockError> {
        let ctx = self.ctx;
        write_fence(ctx, self.fence(), token, until_ms)
    }

    fn extend_fence(&mut self, until_ms: Option<i64>) {
        let ctx = self.ctx;
        extend_fence(ctx, self.fence(), until_ms);
    }

    fn put(
        &mut self,
        create: Option<KeyMode>,
        owner: &[u8],
        holder: Holder,
    ) -> Result<(), LockError> {
        let ctx = self.ctx;
        let lock = self.lock.as_mut().ok_or(LockError::WriteFailed)?;
        let value = holder.encode();
        match create {
            Some(mode) => {
                let mode = mode.encode();
                lock.hash_set(MODE_FIELD, &mode)
                    .map_err(|_| LockError::WriteFailed)?;
                lock.hash_set(owner, &value)
                    .map_err(|_| LockError::WriteFailed)?;
                ctx.replicate_hset2(lock.name(), (MODE_FIELD, &mode), (owner, &value));
            }
            None => {
                lock.hash_set(owner, &value)
                    .map_err(|_| LockError::WriteFailed)?;
                ctx.replicate_hset(lock.name(), owner, &value);
            }
        }
        let key = lock.name();
        ctx.signal_modified(key);
        ctx.notify(EventClass::Hash, c"hset", key);
        Ok(())
    }

    fn remove_holder(&mut self, owner: &[u8]) {
        let ctx = self.ctx;
        let Some(lock) = self.lock.as_mut() else {
            return;
        };
        lock.hash_del(owner);
        let key = lock.name();
        ctx.replicate_hdel(key, owner);
        ctx.signal_modified(key);
        ctx.notify(EventClass::Hash, c"hdel", key);
    }

    fn set_expire_at(&mut self, at_ms: i64) {
        let ctx = self.ctx;
        let Some(lock) = self.lock.as_mut() else {
            return;
        };
        lock.set_expire_at(at_ms);
        let key = lock.name();
        ctx.replicate_pexpireat(key, at_ms);
        ctx.signal_modified(key);
        ctx.notify(EventClass::Generic, c"expire", key);
    }

    fn delete(&mut self) {
        let ctx = self.ctx;
        let Some(lock) = self.lock.as_mut() else {
            return;
        };
        lock.delete();
        let key = lock.name();
        ctx.replicate_del(key);
        ctx.signal_modified(key);
        ctx.notify(EventClass::Generic, c"del", key);
    }
}

/// Deletes `key` (replicated as `DEL`, with its events), the way RELEASE
/// does, if it still stands under the grant the ledger recorded for
/// `owner` with `token`: the undo of a grant nobody received. Whether it
/// did. The fence key is not consulted: anyone may have changed it.
pub fn remove_grant(
    ctx: &Ctx,
    process: &mut Process,
    key: &[u8],
    owner: &[u8],
    token: i64,
) -> bool {
    let name = OwnedStr::new(key);
    let mut lock = ctx.open_write(name.as_rstr());
    if lock.contents() != Contents::Str(owner) {
        return false;
    }
    let name = process.name(ctx.selected_db(), key);
    if process.ledger.token_of(&name, owner) != Some(token) {
        return false;
    }
    lock.delete();
    process.ledger.forget(&name);
    let key = lock.name();
    ctx.replicate_del(key);
    ctx.signal_modified(key);
    ctx.notify(EventClass::Generic, c"del", key);
    true
}

/// The token of the grant under which `key` holds `owner` now: `None` when
/// it does not hold `owner`. The ledger's record when it has one (whatever
/// became of the fence key), else the fence key's value (0 when missing:
/// a lock taken with plain `SET NX`, or whose fence key is gone).
///
/// # Errors
///
/// When the lock key holds a non-string, or the fence key is consulted and
/// unusable.
pub fn holder_token(
    ctx: &Ctx,
    process: &Process,
    key: RStr<'_>,
    owner: &[u8],
) -> Result<Option<i64>, LockError> {
    let lock = ctx.open_read(key);
    match lock.as_ref().map_or(Contents::Missing, Key::contents) {
        Contents::Str(v) if v == owner => {}
        Contents::Other => return Err(LockError::LockWrongType),
        _ => return Ok(None),
    }
    let name = process.name(ctx.selected_db(), key.as_bytes());
    current_token(&process.ledger, &name, owner, || {
        let fence = fence_name(key.as_bytes());
        fence_token(ctx.open_read(fence.as_rstr()).as_ref())
    })
    .map(Some)
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
