//! CPU hints: nothing here reads or writes program state.

/// Asks the CPU to bring the cache lines of `len` bytes at `at` closer,
/// without waiting for them; a command issues it for its own memory
/// before it asks the server for a key, so that both look-ups wait for
/// memory at the same time. A no-op where no prefetch instruction is
/// available.
pub fn prefetch(at: *const u8, len: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let mut line = at;
        let end = at.wrapping_add(len);
        while line < end {
            // SAFETY: a prefetch never faults and reads nothing into the
            // program, whatever the address (the pointer is never
            // dereferenced); SSE, which it needs, is part of every x86_64.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(line.cast()) };
            line = line.wrapping_add(64);
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (at, len);
}
