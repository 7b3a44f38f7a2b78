//! Keeps `serve`'s resident memory independent of allocation history.
//!
//! `serve` allocates a body of nearly 4 MiB for every full log object it uploads. glibc's malloc
//! serves blocks above its mmap threshold with their own mapping, returned on free, but raises
//! that threshold to the size of each such block freed (up to 32 MiB). After the first object
//! body is freed, later bodies come from the heap arenas, and what glibc keeps of them after
//! free depends on upload timing and on which threads allocated: the RSS after the same 16 GiB
//! random fill varied from 38 to 97 MiB between runs. Fixed thresholds turn the raising off:
//! object bodies always get their own mapping and go back to the kernel on free, so the same
//! fill ends at 39 MiB (peak 63 MiB) every time. See `docs/decisions/068-volume-allocator-thresholds.md`.

/// Blocks at least this large get their own mapping: above the 1 MiB request buffers of
/// ordinary NBD clients (a mapping per request would cost its page faults every time), below a
/// full log object's body (4 MiB less a page at the default object size), which is what the
/// heap must not keep.
pub const MMAP_THRESHOLD: usize = 2 << 20;

/// Free memory at the top of a heap is kept up to this much. A fixed mmap threshold also stops
/// glibc raising this one (it keeps it at twice the mmap threshold); left at its 128 KiB default,
/// every free of a 1 MiB request buffer at the top returns it to the kernel and the next one
/// faults it back in (the 1 MiB NBD write rate fell to about a third in the benchmark). At
/// 4 MiB a cold read job still took 270,000 to 650,000 page faults in 15 s; at 32 MiB, 22,000 to 32,000.
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

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    use super::*;

    /// Resident KiB of this process (nextest, which `scripts/test.sh` uses, runs each test in a
    /// process of its own, so no other test allocates meanwhile).
    fn rss_kib() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("a VmRSS line");
        line.split_whitespace().nth(1).and_then(|v| v.parse().ok()).expect("VmRSS in KiB")
    }

    /// A log object's body at the default size, every page touched as an upload's read does.
    fn body() -> Vec<u8> {
        vec![1u8; (4 << 20) - 4096]
    }

    /// What `serve` does with bodies: one freed, then several alive at once between small
    /// allocations that outlive them, then freed. With glibc's dynamic threshold the first free
    /// raises the threshold above a body's size, the later bodies come from the heap, and the
    /// small blocks between them keep that memory resident after they are freed (16 MiB here).
    /// With the fixed thresholds each body is its own mapping and goes back on free.
    #[test]
    fn freed_object_bodies_leave_no_resident_memory() {
        assert!(fix_thresholds(), "glibc took the thresholds");
        drop(std::hint::black_box(body()));
        let before = rss_kib();
        let mut bodies = Vec::new();
        let mut pins = Vec::new();
        for _ in 0..4 {
            bodies.push(std::hint::black_box(body()));
            pins.push(std::hint::black_box(vec![2u8; 4096]));
        }
        drop(bodies);
        let after = rss_kib();
        assert!(
            after < before + 4096,
            "{} KiB still resident after the bodies were freed (before {before} KiB, after {after} KiB)",
            after.saturating_sub(before)
        );
        drop(pins);
    }
}
