//! Keeps `serve`'s resident memory independent of allocation history.
//!
//! `serve` allocates a body of nearly 4 MiB for every full log object it uploads. glibc's malloc
//! serves blocks above its mmap threshold with their own mapping, returned on free, but raises
//! that threshold to the size of each such block freed (up to 32 MiB). After the first object
//! body is freed, later bodies come from the heap arenas, and what glibc keeps of them after
//! free depends on upload timing and on which threads allocated: the RSS after the same 16 GiB
//! random fill varied from 38 to 99 MiB between runs. Fixed thresholds turn the raising off:
//! object bodies always get their own mapping and go back to the kernel on free, so the same
//! fill ends at 39 MiB every time. See `docs/decisions/068-volume-allocator-thresholds.md`.

/// Blocks at least this large get their own mapping: above the 1 MiB request buffers of
/// ordinary NBD clients (a mapping per request would cost its page faults every time), below a
/// full log object's body (4 MiB less a page at the default object size), which is what the
/// heap must not keep.
pub const MMAP_THRESHOLD: usize = 2 << 20;

/// Free memory at the top of a heap is kept up to this much. A fixed mmap threshold also stops
/// glibc raising this one (it keeps it at twice the mmap threshold); left at its 128 KiB default,
/// every free of a 1 MiB request buffer at the top returns it to the kernel and the next one
/// faults it back in (the 1 MiB NBD write rate fell to about a third in the benchmark). At
/// 4 MiB a cold read job still took 270,000 to 650,000 page faults in 15 s; at 32 MiB, 23,000.
/// What this keeps is bounded (32 MiB per heap) and did not show in the memory bar.
pub const TRIM_THRESHOLD: usize = 32 << 20;

/// Fixes glibc's mmap and trim thresholds at [`MMAP_THRESHOLD`] and [`TRIM_THRESHOLD`] for the
/// whole process. Returns whether the allocator took them (false on other C libraries, where
/// there is nothing to fix this way).
pub fn fix_thresholds() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only changes malloc's tuning parameters, under malloc's own lock; it
        // takes no pointers and may be called at any time, from any thread.
        #[allow(unsafe_code)]
        let took = unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD as libc::c_int) == 1
                && libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD as libc::c_int) == 1
        };
        took
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}
