//! The peak memory of a task run in a worker process, for `ds.stats()`, the dashboard's stages
//! and the timeline.
//!
//! A worker runs one task at a time, so the process's peak resident set while a task runs is
//! that task's peak (its allocations, the pages of its inputs it touched in shared memory, its
//! output, plus the worker's own few MiB). Linux keeps that high-water mark as `VmHWM` in
//! `/proc/self/status` and resets it to the current resident set when `5` is written to
//! `/proc/self/clear_refs`. Ray Data reports the same figure (a worker's maximum RSS per task).
//!
//! Both files stay open: a reset is one `pwrite` (under a microsecond), a reading one `pread`
//! (about 8 µs, as the kernel formats the whole status file), so only tasks that ran at least
//! [`MEASURED_FROM`] are read; a shorter task reports 0, "not measured", and its peak counts
//! towards the next measured task's. Where the files are missing (not Linux) nothing is
//! measured.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::time::Duration;

/// Tasks shorter than this are not measured (the reading would cost up to 1% of them).
pub const MEASURED_FROM: Duration = Duration::from_millis(1);

/// This process's resident-set high-water mark, reset before each task.
pub struct PeakMemory {
    status: File,
    clear_refs: File,
}

impl PeakMemory {
    /// Opens the two files, or `None` where the kernel does not offer them.
    pub fn open() -> Option<Self> {
        let status = File::open("/proc/self/status").ok()?;
        let clear_refs = OpenOptions::new()
            .write(true)
            .open("/proc/self/clear_refs")
            .ok()?;
        let peak = Self { status, clear_refs };
        peak.reset().then_some(peak)
    }

    /// Starts a new high-water mark at the current resident set; false if the kernel refused.
    pub fn reset(&self) -> bool {
        self.clear_refs.write_at(b"5", 0).is_ok()
    }

    /// The high-water mark since the last reset, in bytes, if the task that just ran for `wall`
    /// is long enough to be measured; then starts the next.
    pub fn after_task(&self, wall: Duration) -> u64 {
        if wall < MEASURED_FROM {
            return 0;
        }
        let peak = self.high_water_mark().unwrap_or(0);
        self.reset();
        peak
    }

    fn high_water_mark(&self) -> Option<u64> {
        let mut text = [0u8; 4096];
        let n = self.status.read_at(&mut text, 0).ok()?;
        parse_vm_hwm(&text[..n])
    }
}

/// The `VmHWM:  1234 kB` line of a `/proc/<pid>/status`, in bytes.
fn parse_vm_hwm(status: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(status).ok()?;
    let line = text.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line["VmHWM:".len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_status_line_and_nothing_else() {
        let status = b"Name:\tw\nVmPeak:\t 99 kB\nVmHWM:\t   13656 kB\nVmRSS:\t 1 kB\n";
        assert_eq!(parse_vm_hwm(status), Some(13656 * 1024));
        assert_eq!(parse_vm_hwm(b"VmRSS:\t 1 kB\n"), None);
        assert_eq!(parse_vm_hwm(b"VmHWM:\t lots kB\n"), None);
    }

    #[test]
    fn a_touched_allocation_raises_the_mark_and_a_reset_lowers_it() {
        let Some(peak) = PeakMemory::open() else {
            eprintln!("skipped: no /proc/self/clear_refs here");
            return;
        };
        let before = peak.high_water_mark().unwrap();
        let size = 256 << 20;
        let touched = vec![1u8; size];
        std::hint::black_box(&touched);
        let during = peak.after_task(MEASURED_FROM);
        assert!(
            during >= before + size as u64 / 2,
            "{during} after touching {size} bytes from {before}"
        );
        drop(touched);
        // Other tests of this binary may allocate meanwhile, but not 256 MiB.
        peak.reset();
        let after = peak.high_water_mark().unwrap();
        assert!(after < during - size as u64 / 2, "{after} vs {during}");
        assert_eq!(
            peak.after_task(MEASURED_FROM / 2),
            0,
            "short tasks are not read"
        );
    }
}
