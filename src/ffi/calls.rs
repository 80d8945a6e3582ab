//! Core commands the module runs through `RedisModule_Call`, each wrapped in
//! a function that returns plain Rust data.

use std::ffi::{c_char, CStr};

use redis_module::raw;

use super::{Ctx, RStr};

/// A call reply, freed on drop.
struct Reply(*mut raw::RedisModuleCallReply);

impl Reply {
    fn new(ptr: *mut raw::RedisModuleCallReply) -> Option<Self> {
        // Not `then_some(Reply(ptr))`: that would build (and drop, freeing
        // NULL) a Reply even when the call returned none.
        if ptr.is_null() {
            None
        } else {
            Some(Reply(ptr))
        }
    }

    fn kind(&self) -> isize {
        kind_of(self.0)
    }

    /// The text of a string reply.
    fn text(&self) -> Option<String> {
        text_of(self.0)
    }

    /// The texts of an array of strings (`None` if it is not one, or holds
    /// anything else).
    fn texts(&self) -> Option<Vec<String>> {
        if self.kind() != raw::REDISMODULE_REPLY_ARRAY {
            return None;
        }
        // SAFETY: a live array reply.
        let len = unsafe { api!(RedisModule_CallReplyLength)(self.0) };
        (0..len)
            .map(|i| {
                // SAFETY: a live array reply and an index below its length;
                // the element belongs to it (never freed on its own) and is
                // read before the array is dropped.
                text_of(unsafe { api!(RedisModule_CallReplyArrayElement)(self.0, i) })
            })
            .collect()
    }

    /// The text of element `idx` of an array reply.
    fn element_text(&self, idx: usize) -> Option<String> {
        if self.kind() != raw::REDISMODULE_REPLY_ARRAY {
            return None;
        }
        // SAFETY: a live array reply; an index past its end gives NULL. The
        // element belongs to this reply (freed with it, never on its own)
        // and is only read before the drop.
        text_of(unsafe { api!(RedisModule_CallReplyArrayElement)(self.0, idx) })
    }
}

/// The type of the reply at `ptr` (live, or NULL).
fn kind_of(ptr: *mut raw::RedisModuleCallReply) -> isize {
    if ptr.is_null() {
        return raw::REDISMODULE_REPLY_UNKNOWN;
    }
    // SAFETY: a live reply.
    unsafe { api!(RedisModule_CallReplyType)(ptr) as isize }
}

/// The text of the string reply at `ptr` (live, or NULL).
fn text_of(ptr: *mut raw::RedisModuleCallReply) -> Option<String> {
    let kind = kind_of(ptr);
    if kind != raw::REDISMODULE_REPLY_STRING && kind != raw::REDISMODULE_REPLY_VERBATIM_STRING {
        return None;
    }
    let mut len = 0usize;
    // SAFETY: a live string reply; its buffer is valid for `len` bytes
    // while the reply lives, and we copy it out before the drop.
    unsafe {
        let text = api!(RedisModule_CallReplyStringPtr)(ptr, &mut len);
        (!text.is_null()).then(|| {
            String::from_utf8_lossy(std::slice::from_raw_parts(text.cast::<u8>(), len)).into_owned()
        })
    }
}

impl Drop for Reply {
    fn drop(&mut self) {
        // SAFETY: a reply we received and free once.
        unsafe { api!(RedisModule_FreeCallReply)(self.0) };
    }
}

impl Ctx {
    /// The text of `CLUSTER NODES`, or `None` if the call fails.
    pub fn cluster_nodes(&self) -> Option<String> {
        // SAFETY: valid ctx; "c" matches one NUL-terminated C string.
        let reply = unsafe {
            api!(RedisModule_Call)(
                self.raw(),
                c"CLUSTER".as_ptr(),
                c"c".as_ptr(),
                c"NODES".as_ptr(),
            )
        };
        Reply::new(reply)?.text()
    }

    /// Whether `key` is stored in the selected database at all, expired or
    /// not (`MEMORY USAGE` looks keys up without the expiry check); `None`
    /// if the call fails (the command renamed, a cluster redirect).
    pub fn stored_at_all(&self, key: RStr<'_>) -> Option<bool> {
        // SAFETY: valid ctx; "cs" matches one C string and one live string.
        let reply = unsafe {
            api!(RedisModule_Call)(
                self.raw(),
                c"MEMORY".as_ptr(),
                c"cs".as_ptr(),
                c"USAGE".as_ptr(),
                key.ptr(),
            )
        };
        match Reply::new(reply)?.kind() {
            raw::REDISMODULE_REPLY_INTEGER => Some(true),
            raw::REDISMODULE_REPLY_NULL => Some(false),
            _ => None,
        }
    }

    /// The line of client `id` in `CLIENT LIST ID` (its `flags=`, `obl=`,
    /// `omem=`, … fields), or `None` if the client is gone or the call fails.
    pub fn client_entry(&self, id: u64) -> Option<String> {
        let id = std::ffi::CString::new(id.to_string()).ok()?;
        // SAFETY: valid ctx; "ccc" matches three NUL-terminated C strings.
        let reply = unsafe {
            api!(RedisModule_Call)(
                self.raw(),
                c"CLIENT".as_ptr(),
                c"ccc".as_ptr(),
                c"LIST".as_ptr(),
                c"ID".as_ptr(),
                id.as_ptr() as *const c_char,
            )
        };
        let text = Reply::new(reply)?.text()?;
        let line = text.lines().next()?.trim();
        (!line.is_empty()).then(|| line.to_string())
    }

    /// The value of config `name` (`CONFIG GET name`), or `None` if the
    /// call fails.
    pub fn config_value(&self, name: &CStr) -> Option<String> {
        // SAFETY: valid ctx; "cc" matches two NUL-terminated C strings.
        let reply = unsafe {
            api!(RedisModule_Call)(
                self.raw(),
                c"CONFIG".as_ptr(),
                c"cc".as_ptr(),
                c"GET".as_ptr(),
                name.as_ptr(),
            )
        };
        // [name, value]
        Reply::new(reply)?.element_text(1)
    }

    /// The text of `CLIENT LIST` (one line per connection), or `None` if
    /// the call fails (`CLIENT` renamed, say).
    pub fn client_list(&self) -> Option<String> {
        // SAFETY: valid ctx; "c" matches one NUL-terminated C string.
        let reply = unsafe {
            api!(RedisModule_Call)(
                self.raw(),
                c"CLIENT".as_ptr(),
                c"c".as_ptr(),
                c"LIST".as_ptr(),
            )
        };
        Reply::new(reply)?.text()
    }

    /// The lines of `ACL LIST` (one per user, with its rules), or `None` if
    /// the call fails.
    pub fn acl_list(&self) -> Option<Vec<String>> {
        // SAFETY: valid ctx; "c" matches one NUL-terminated C string.
        let reply = unsafe {
            api!(RedisModule_Call)(self.raw(), c"ACL".as_ptr(), c"c".as_ptr(), c"LIST".as_ptr())
        };
        Reply::new(reply)?.texts()
    }

    /// Brings the server's cached clock up to date. Redis 7.0 refreshes it
    /// only in its cron (every 1000/hz ms) and at the start of a command, so
    /// a timer that asks whether a write pause has ended would otherwise
    /// learn it up to one cron period late; running any command through
    /// `RedisModule_Call` refreshes it (newer servers need no help).
    pub fn refresh_cached_clock(&self) {
        // SAFETY: valid ctx; "" takes no arguments.
        let reply = unsafe { api!(RedisModule_Call)(self.raw(), c"PING".as_ptr(), c"".as_ptr()) };
        drop(Reply::new(reply));
    }
}
