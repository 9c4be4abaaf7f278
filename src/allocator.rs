//! How the process gives freed memory back to the system. Under load, mimalloc's defaults
//! (purge a second after a free, ten for whole arenas, transparent huge pages) kept freed
//! memory resident: 1.1 GB after a saturation run instead of about 400 MB
//! (docs/benchmarks.md, issue 14).

/// mimalloc's `mi_option_purge_delay` (`mimalloc.h`, the same index in its v2 and v3).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Purges freed memory at once, and turns transparent huge pages off for the process (a
/// 2 MiB page stays resident while any of it is used). Call before anything else runs.
/// The crate's one `unsafe`: two calls into C that take plain integers.
#[allow(unsafe_code)]
pub fn return_freed_memory_promptly() {
    // SAFETY: both only set process-wide options; neither touches memory of ours.
    unsafe {
        libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0);
        // Refused only where the kernel has no transparent huge pages: nothing to turn off.
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}
