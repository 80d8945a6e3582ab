//! Server strings: borrowed ([`RStr`]) and owned ([`OwnedStr`]).

use std::ffi::c_char;
use std::marker::PhantomData;

use redis_module::raw;

/// A borrowed `RedisModuleString`, valid for `'a` (an argv element lives as
/// long as its command; a key's name as long as the open key).
#[repr(transparent)]
#[derive(Clone, Copy)]
pub struct RStr<'a>(*mut raw::RedisModuleString, PhantomData<&'a ()>);

impl<'a> RStr<'a> {
    /// Wraps a pointer the server guarantees for `'a`.
    pub(super) fn from_raw(ptr: *mut raw::RedisModuleString) -> Self {
        RStr(ptr, PhantomData)
    }

    pub(super) fn ptr(self) -> *mut raw::RedisModuleString {
        self.0
    }

    /// The string's bytes (binary-safe).
    pub fn as_bytes(&self) -> &'a [u8] {
        let mut len = 0usize;
        // SAFETY: `self.0` is a live string for `'a` (see the type's docs);
        // StringPtrLen returns its buffer and length, which stay valid and
        // unchanged while the string lives (nothing here mutates it).
        unsafe {
            let ptr = api!(RedisModule_StringPtrLen)(self.0, &mut len);
            if ptr.is_null() {
                return &[];
            }
            std::slice::from_raw_parts(ptr.cast::<u8>(), len)
        }
    }
}

/// A `RedisModuleString` created by the module, freed on drop.
pub struct OwnedStr(*mut raw::RedisModuleString);

impl OwnedStr {
    /// Copies `bytes` into a new server string.
    pub fn new(bytes: &[u8]) -> Self {
        // SAFETY: CreateString copies `len` bytes from `ptr`; a NULL ctx makes
        // the string unmanaged, freed in Drop.
        let ptr = unsafe {
            api!(RedisModule_CreateString)(
                std::ptr::null_mut(),
                bytes.as_ptr().cast::<c_char>(),
                bytes.len(),
            )
        };
        OwnedStr(ptr)
    }

    /// Takes ownership of a string the server handed over (freed on drop);
    /// `None` for NULL.
    pub(super) fn from_raw(ptr: *mut raw::RedisModuleString) -> Option<Self> {
        // Not `then_some(OwnedStr(ptr))`: that would build (and drop,
        // freeing NULL) an OwnedStr even for NULL.
        if ptr.is_null() {
            None
        } else {
            Some(OwnedStr(ptr))
        }
    }

    /// A view that cannot outlive the string.
    pub fn as_rstr(&self) -> RStr<'_> {
        RStr::from_raw(self.0)
    }
}

impl Drop for OwnedStr {
    fn drop(&mut self) {
        // SAFETY: we created the string with a NULL context and free it once.
        // A key opened with it holds its own reference (RM_OpenKey retains
        // the name), so this never pulls a name from under an open key.
        unsafe { api!(RedisModule_FreeString)(std::ptr::null_mut(), self.0) }
    }
}
