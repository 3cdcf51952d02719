//! Giving freed memory back to the kernel at once while an object store is full, when asked.
//!
//! Manta's executables use mimalloc, which keeps freed memory a while (its *purge delay*, a
//! second by default in mimalloc 3) before it returns it to the kernel, so that a buffer freed
//! and allocated again does not fault its pages in again. That is what speed wants; but in a
//! process whose object store is full, memory freed and not yet returned adds to its peak.
//! Measured on the 2-core machine of docs/benchmarks.md (scale-10 shuffle and sort, embedded,
//! a 1 GiB store, one sitting):
//!
//! | purge delay while the store is full | shuffle peak, time | sort peak, time |
//! |---|---|---|
//! | mimalloc's (1 s) | 1,564 MiB, 57 s | 1,612 MiB, 69 s |
//! | 250 ms | 1,534 MiB, 66 s | 1,585 MiB, 77 s |
//! | 100 ms | 1,583 MiB, 69 s | 1,548 MiB, 81 s |
//! | none | 1,422–1,445 MiB, 98–99 s | 1,458–1,460 MiB, 104 s |
//!
//! Only returning memory at once keeps the peak under 1.5 GiB, and it makes the runs that spill
//! half again as slow; a shorter delay than mimalloc's gains nothing measurable. So it is a
//! choice, not the default: with `MANTA_PRESSURE_PURGE_DELAY_MS` set (to `0` for the figures
//! above), [`purge_sooner_under_pressure`] sets mimalloc's purge delay to it while some store
//! of the process is three quarters full or spills (see
//! [`manta_engine::store::on_pressure_change`]) and puts it back afterwards; runs whose store
//! has room are not touched. [`run_worker_if_requested`](crate::run_worker_if_requested)
//! calls it. In a program whose global allocator is not mimalloc, it changes nothing.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicI64, Ordering};

use libmimalloc_sys::{mi_collect, mi_option_get, mi_option_set, mi_option_t};

/// mimalloc 3's `mi_option_purge_delay` (`mimalloc.h`; `libmimalloc-sys` names only some
/// options). The test below checks it reads the documented default.
const PURGE_DELAY: mi_option_t = 15;

/// The variable that asks for a purge delay (milliseconds; 0 returns memory at once) while an
/// object store is full.
pub const PRESSURE_DELAY_VARIABLE: &str = "MANTA_PRESSURE_PURGE_DELAY_MS";

/// The delay in force before the pressure began; `i64::MIN` while there is none.
static DELAY_BEFORE: AtomicI64 = AtomicI64::new(i64::MIN);

/// Shortens mimalloc's purge delay while an object store of this process is full, if
/// [`PRESSURE_DELAY_VARIABLE`] asks for it (see the module doc).
///
/// ```
/// manta::memory::purge_sooner_under_pressure();
/// ```
pub fn purge_sooner_under_pressure() {
    if pressure_delay_ms().is_some() {
        manta_engine::store::on_pressure_change(set_purge_delay);
    }
}

/// The delay [`PRESSURE_DELAY_VARIABLE`] asks for, if it is set to a number of milliseconds.
fn pressure_delay_ms() -> Option<i64> {
    static DELAY: OnceLock<Option<i64>> = OnceLock::new();
    *DELAY.get_or_init(|| {
        std::env::var(PRESSURE_DELAY_VARIABLE)
            .ok()
            .and_then(|value| value.trim().parse().ok())
            .filter(|ms: &i64| *ms >= 0)
    })
}

fn set_purge_delay(under_pressure: bool) {
    if let Some(shorter) = pressure_delay_ms() {
        apply(under_pressure, shorter);
    }
}

/// Sets the purge delay to `shorter` while under pressure (if it is longer), and back after.
fn apply(under_pressure: bool, shorter: i64) {
    if under_pressure {
        // SAFETY: reading and setting a mimalloc option touches only mimalloc's option table.
        let before = unsafe { mi_option_get(PURGE_DELAY) } as i64;
        // A negative delay means purging is off (someone asked for that): leave it.
        if before > shorter {
            DELAY_BEFORE.store(before, Ordering::Relaxed);
            // SAFETY: mimalloc's own collection, and setting an option as above. The collection
            // comes first: it purges what was freed under the longer delay, which a purge
            // scheduled under it would otherwise keep until that delay ends (and with no
            // delay, mimalloc purges only what is freed from then on).
            unsafe {
                mi_collect(true);
                mi_option_set(PURGE_DELAY, shorter as _);
            }
        }
    } else {
        let before = DELAY_BEFORE.swap(i64::MIN, Ordering::Relaxed);
        if before != i64::MIN {
            // SAFETY: as above.
            unsafe { mi_option_set(PURGE_DELAY, before as _) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn purge_delay() -> i64 {
        // SAFETY: reading a mimalloc option.
        unsafe { mi_option_get(PURGE_DELAY) as i64 }
    }

    #[test]
    fn the_delay_is_shorter_under_pressure_and_restored_after() {
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
            // mimalloc 3's default, so `PURGE_DELAY` names the purge delay.
            assert_eq!(purge_delay(), 1000);
        }
        let before = purge_delay();
        apply(true, 0);
        assert_eq!(purge_delay(), before.min(0));
        apply(false, 0);
        assert_eq!(purge_delay(), before);
    }
}
