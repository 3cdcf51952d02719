//! Transparent huge pages, off for Manta's processes.
//!
//! With transparent huge pages, the first touch of a fresh 2 MiB region of anonymous memory
//! makes the kernel find (and, under `defrag = madvise`, compact memory for) a whole huge page
//! and zero it. An allocator that asks for huge pages (mimalloc does) then pays that on every
//! region a query first grows into, and keeps each region's whole 2 MiB resident. Measured on
//! the 2-core machine of docs/benchmarks.md (a VM, where such a fault also waits for the host
//! to back the page), with them and without, in one sitting:
//! - the 22 TPC-H queries: first run 7.3–8.2 s with, 3.2–3.4 s without; later runs 3.8–5.7 s
//!   with, 3.2–3.3 s without; peak memory 780–850 MiB with, 600–690 MiB without;
//! - the first run of TPC-H q1 through the Dataset API: 0.74–0.90 s with, 0.24 s without;
//! - the scale-10 shuffle and sort with a 1 GiB store: peak memory 1,633 and 1,654 MiB with,
//!   1,554 and 1,587 MiB without;
//! - the scale-1 shuffle, the one workload that lost: 0.96–1.00 s with, 1.00–1.09 s without
//!   (medians of five); `etl` and `sort` within noise.
//!
//! So [`disable_transparent_huge_pages`] turns them off for the whole process
//! (`PR_SET_THP_DISABLE`), which its children (a node's worker processes) inherit; memory it
//! already mapped keeps what it has. Setting `MANTA_TRANSPARENT_HUGE_PAGES=1` keeps them.

/// The variable that, set to `1`, keeps transparent huge pages on.
pub const KEEP_VARIABLE: &str = "MANTA_TRANSPARENT_HUGE_PAGES";

/// Turns transparent huge pages off for this process and the processes it starts, unless
/// `MANTA_TRANSPARENT_HUGE_PAGES=1`. Returns whether they are off now. Off Linux, does nothing
/// and returns `false`.
///
/// ```
/// let off = manta_engine::huge_pages::disable_transparent_huge_pages();
/// assert_eq!(off, manta_engine::huge_pages::disabled());
/// ```
pub fn disable_transparent_huge_pages() -> bool {
    if std::env::var(KEEP_VARIABLE).is_ok_and(|value| value == "1") {
        return disabled();
    }
    #[cfg(target_os = "linux")]
    // SAFETY: PR_SET_THP_DISABLE takes an integer flag and touches no memory of ours.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
    disabled()
}

/// Whether transparent huge pages are off for this process.
pub fn disabled() -> bool {
    #[cfg(target_os = "linux")]
    // SAFETY: PR_GET_THP_DISABLE reads a flag of this process and touches no memory of ours.
    unsafe {
        libc::prctl(libc::PR_GET_THP_DISABLE, 0, 0, 0, 0) == 1
    }
    #[cfg(not(target_os = "linux"))]
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The flag is the kernel's, read back through another call; and a child process
    /// inherits it (a node's workers are its children).
    #[test]
    #[cfg(target_os = "linux")]
    fn turns_them_off_for_this_process_and_its_children() {
        if std::env::var(KEEP_VARIABLE).is_ok_and(|value| value == "1") {
            return;
        }
        assert!(disable_transparent_huge_pages());
        assert!(disabled());
        let status = std::process::Command::new("grep")
            .args(["THP_enabled", "/proc/self/status"])
            .output()
            .expect("grep runs");
        let line = String::from_utf8_lossy(&status.stdout);
        assert!(line.contains('0'), "a child's status says {line:?}");
    }
}
