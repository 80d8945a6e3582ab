//! Open keys.

use std::ffi::{c_int, c_longlong, c_void};
use std::marker::PhantomData;
use std::ptr::NonNull;

use redis_module::raw;

use super::{Ctx, OwnedStr, RStr};

/// What a key holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Contents<'a> {
    /// The key does not exist (or has expired).
    Missing,
    /// A string value (binary-safe).
    Str(&'a [u8]),
    /// Any other type.
    Other,
}

/// The server refused a write (see [`Key::write`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteRefused;

/// An open key, closed on drop. It cannot outlive the context `'c` it was
/// opened in.
pub struct Key<'c> {
    ptr: NonNull<raw::RedisModuleKey>,
    /// The key's name: the server holds a reference to it while the key is
    /// open (RM_OpenKey retains it), so it lives as long as `self`.
    name: *mut raw::RedisModuleString,
    _ctx: PhantomData<&'c Ctx>,
}

impl Ctx {
    /// Opens `name` for writing (a look-up for writing: an expired key is
    /// deleted first where the server allows it).
    ///
    /// # Panics
    ///
    /// Never for a valid context: the server returns a key for writing even
    /// when it does not exist. A NULL would be a server bug, caught by the
    /// command trampoline.
    pub fn open_write(&self, name: RStr<'_>) -> Key<'_> {
        let mode = (raw::REDISMODULE_READ | raw::REDISMODULE_WRITE) as c_int;
        // SAFETY: valid ctx and key name; the key is closed in Key::drop.
        let ptr = unsafe { api!(RedisModule_OpenKey)(self.raw(), name.ptr(), mode) };
        Key {
            ptr: NonNull::new(ptr.cast()).expect("RedisModule_OpenKey for writing returned NULL"),
            name: name.ptr(),
            _ctx: PhantomData,
        }
    }

    /// Opens `name` for reading; `None` when it does not exist.
    pub fn open_read(&self, name: RStr<'_>) -> Option<Key<'_>> {
        // SAFETY: valid ctx and key name; a non-NULL key is closed in drop.
        let ptr = unsafe {
            api!(RedisModule_OpenKey)(self.raw(), name.ptr(), raw::REDISMODULE_READ as c_int)
        };
        Some(Key {
            ptr: NonNull::new(ptr.cast())?,
            name: name.ptr(),
            _ctx: PhantomData,
        })
    }
}

impl Key<'_> {
    fn raw(&self) -> *mut raw::RedisModuleKey {
        self.ptr.as_ptr()
    }

    /// The key's name.
    pub fn name(&self) -> RStr<'_> {
        RStr::from_raw(self.name)
    }

    /// Reads the value without copying it.
    pub fn contents(&self) -> Contents<'_> {
        // SAFETY: an open key; KeyType is a plain read.
        let kind = unsafe { api!(RedisModule_KeyType)(self.raw()) };
        if kind == raw::REDISMODULE_KEYTYPE_EMPTY as c_int {
            return Contents::Missing;
        }
        if kind != raw::REDISMODULE_KEYTYPE_STRING as c_int {
            return Contents::Other;
        }
        let mut len = 0usize;
        // SAFETY: a string key; READ-mode DMA returns a pointer valid until the
        // key is modified or closed, and `&self` borrows prevent both.
        unsafe {
            let ptr =
                api!(RedisModule_StringDMA)(self.raw(), &mut len, raw::REDISMODULE_READ as c_int);
            if ptr.is_null() {
                return Contents::Other;
            }
            Contents::Str(std::slice::from_raw_parts(ptr.cast::<u8>(), len))
        }
    }

    /// Sets the value to `bytes` (binary-safe) as a plain (raw-encoded)
    /// string, and drops any TTL, as `SET` would.
    ///
    /// Why not `StringSet` with the argv string: that stores the client's
    /// embstr object, and every later READ-mode `StringDMA` on an embstr
    /// first converts it to a raw string (an allocation and a copy: ~1–2 k
    /// instructions, paid by the first REFRESH and by every RELEASE). Creating
    /// the value raw here costs one small allocation instead, and an existing
    /// raw value (the fence counter) is rewritten in place.
    ///
    /// # Errors
    ///
    /// [`WriteRefused`] if the server refused (the key holds another type,
    /// or the size is beyond its limit); nothing was changed then.
    pub fn write(&mut self, bytes: &[u8]) -> Result<(), WriteRefused> {
        self.overwrite(bytes)?;
        // SAFETY: an open key, written above; SetExpire with NO_EXPIRE
        // removes its expiry.
        unsafe {
            if api!(RedisModule_GetExpire)(self.raw()) != raw::REDISMODULE_NO_EXPIRE as c_longlong {
                api!(RedisModule_SetExpire)(self.raw(), raw::REDISMODULE_NO_EXPIRE as c_longlong);
            }
        }
        Ok(())
    }

    /// [`write`](Self::write), but an existing expiry stays: for a caller
    /// that sets the expiry next (removing it first would cost a second
    /// change to the server's table of expiries).
    ///
    /// # Errors
    ///
    /// As [`write`](Self::write).
    pub fn overwrite(&mut self, bytes: &[u8]) -> Result<(), WriteRefused> {
        let mut len = 0usize;
        // SAFETY: a key opened for writing (only `open_write` keys are ever
        // written: a read-only key refuses with ERR). StringTruncate makes a
        // raw string of exactly `bytes.len()` bytes (or resizes the existing
        // one after unsharing it); WRITE-mode DMA returns its buffer, valid
        // until the key is modified or closed, and we fill exactly `len` bytes.
        unsafe {
            if api!(RedisModule_StringTruncate)(self.raw(), bytes.len())
                != raw::REDISMODULE_OK as c_int
            {
                return Err(WriteRefused);
            }
            let ptr =
                api!(RedisModule_StringDMA)(self.raw(), &mut len, raw::REDISMODULE_WRITE as c_int);
            if ptr.is_null() || len != bytes.len() {
                return Err(WriteRefused);
            }
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), ptr.cast::<u8>(), len);
        }
        Ok(())
    }

    /// Sets the absolute expiry, ms since the epoch (the key must exist).
    pub fn set_expire_at(&mut self, at_ms: i64) {
        // SAFETY: an open key; on a missing key the server replies ERR and
        // changes nothing.
        unsafe { api!(RedisModule_SetAbsExpire)(self.raw(), at_ms) };
    }

    /// Removes the expiry (the key must exist).
    pub fn persist(&mut self) {
        // SAFETY: an open key; REDISMODULE_NO_EXPIRE removes the expiry, and
        // on a missing key the server replies ERR and changes nothing.
        unsafe { api!(RedisModule_SetExpire)(self.raw(), raw::REDISMODULE_NO_EXPIRE.into()) };
    }

    /// Remaining time to live in ms, or `None` without an expiry.
    pub fn ttl_ms(&self) -> Option<i64> {
        // SAFETY: an open key; GetExpire is a read.
        let ttl = unsafe { api!(RedisModule_GetExpire)(self.raw()) };
        (ttl >= 0).then_some(ttl)
    }

    /// Absolute expiry in ms since the epoch, or `None` without one.
    pub fn expire_at_ms(&self) -> Option<i64> {
        // SAFETY: an open key; GetAbsExpire is a read.
        let at = unsafe { api!(RedisModule_GetAbsExpire)(self.raw()) };
        (at >= 0).then_some(at)
    }

    /// Deletes the key.
    pub fn delete(&mut self) {
        // SAFETY: an open key; on a read-only key the server replies ERR.
        unsafe { api!(RedisModule_DeleteKey)(self.raw()) };
    }
}

/// Hash fields and values, as [`Key::hash_fields`] collects them.
type Fields = Vec<(Vec<u8>, Vec<u8>)>;

/// The `RedisModule_ScanKey` callback of [`Key::hash_fields`]: copies one
/// field and its value.
extern "C" fn collect_field(
    _key: *mut raw::RedisModuleKey,
    field: *mut raw::RedisModuleString,
    value: *mut raw::RedisModuleString,
    privdata: *mut c_void,
) {
    // SAFETY: `privdata` is the `Fields` that `hash_fields` passed for this
    // scan, alive and not otherwise borrowed while the scan runs; `field`
    // and `value` are live strings for the duration of the callback, copied
    // out before it returns.
    unsafe {
        let out = &mut *privdata.cast::<Fields>();
        let (field, value) = (RStr::from_raw(field), RStr::from_raw(value));
        out.push((field.as_bytes().to_vec(), value.as_bytes().to_vec()));
    }
}

impl Key<'_> {
    /// Whether the key holds a hash.
    pub fn is_hash(&self) -> bool {
        // SAFETY: an open key; KeyType is a plain read.
        let kind = unsafe { api!(RedisModule_KeyType)(self.raw()) };
        kind == raw::REDISMODULE_KEYTYPE_HASH as c_int
    }

    /// The number of fields of a hash key (`HLEN`); 0 for a missing key.
    pub fn hash_len(&self) -> usize {
        // SAFETY: an open key; ValueLength is a plain read.
        unsafe { api!(RedisModule_ValueLength)(self.raw()) }
    }

    /// The value of `field` of a hash key (`HGET`); `None` when the field
    /// or the hash does not exist.
    pub fn hash_get(&self, field: &[u8]) -> Option<Vec<u8>> {
        if !self.is_hash() {
            return None;
        }
        let name = OwnedStr::new(field);
        let mut value: *mut raw::RedisModuleString = std::ptr::null_mut();
        // SAFETY: a hash key; HashGet with REDISMODULE_HASH_NONE takes
        // (RedisModuleString field, RedisModuleString **value) pairs ended
        // by NULL, and stores a new string (or NULL) that we own: the key's
        // context has no automatic memory, so we free it (OwnedStr).
        let status = unsafe {
            api!(RedisModule_HashGet)(
                self.raw(),
                raw::REDISMODULE_HASH_NONE as c_int,
                name.as_rstr().ptr(),
                &mut value as *mut *mut raw::RedisModuleString,
                std::ptr::null::<c_void>(),
            )
        };
        if status != raw::REDISMODULE_OK as c_int {
            return None;
        }
        OwnedStr::from_raw(value).map(|v| v.as_rstr().as_bytes().to_vec())
    }

    /// Sets `field` of a hash key to `value` (`HSET`), creating the hash if
    /// the key is missing.
    ///
    /// # Errors
    ///
    /// [`WriteRefused`] if the server refused (another type, a read-only
    /// key); nothing was changed then.
    pub fn hash_set(&mut self, field: &[u8], value: &[u8]) -> Result<(), WriteRefused> {
        let (name, value) = (OwnedStr::new(field), OwnedStr::new(value));
        // SAFETY: an open key; HashSet with REDISMODULE_HASH_NONE takes
        // (field, value) string pairs ended by NULL, and copies both.
        let updated = unsafe {
            api!(RedisModule_HashSet)(
                self.raw(),
                raw::REDISMODULE_HASH_NONE as c_int,
                name.as_rstr().ptr(),
                value.as_rstr().ptr(),
                std::ptr::null::<c_void>(),
            )
        };
        // It returns the number of fields changed, or 0 with errno on an
        // error; an existing field rewritten counts as changed only in
        // newer servers, so only the key's type tells a refusal.
        if updated == 0 && !self.is_hash() {
            return Err(WriteRefused);
        }
        Ok(())
    }

    /// Removes `field` of a hash key (`HDEL`); the server deletes a hash
    /// left empty.
    pub fn hash_del(&mut self, field: &[u8]) {
        let name = OwnedStr::new(field);
        // SAFETY: an open key; REDISMODULE_HASH_DELETE as the value deletes
        // the field; the pair list is ended by NULL.
        unsafe {
            api!(RedisModule_HashSet)(
                self.raw(),
                raw::REDISMODULE_HASH_NONE as c_int,
                name.as_rstr().ptr(),
                raw::REDISMODULE_HASH_DELETE,
                std::ptr::null::<c_void>(),
            )
        };
    }

    /// Every field of a hash key with its value (`HGETALL`), in any order
    /// (a field reported twice by the scan of a rehashing table is kept
    /// once). Empty for a missing key or another type.
    pub fn hash_fields(&self) -> Fields {
        let mut out: Fields = Vec::new();
        if !self.is_hash() {
            return out;
        }
        // SAFETY: an open hash key; the cursor is created and destroyed
        // here; the callback receives `&mut out` as privdata and nothing
        // else touches `out` until the scan ends.
        unsafe {
            let cursor = api!(RedisModule_ScanCursorCreate)();
            let data = (&mut out as *mut Fields).cast::<c_void>();
            while api!(RedisModule_ScanKey)(self.raw(), cursor, Some(collect_field), data) != 0 {}
            api!(RedisModule_ScanCursorDestroy)(cursor);
        }
        out.sort();
        out.dedup_by(|a, b| a.0 == b.0);
        out
    }
}

impl Drop for Key<'_> {
    fn drop(&mut self) {
        // SAFETY: closes the key we opened, once.
        unsafe { api!(RedisModule_CloseKey)(self.raw()) };
    }
}
