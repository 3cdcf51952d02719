//! Memory pressure: whether some object store in this process is about full, told to whoever
//! keeps freed memory around (the process's allocator).
//!
//! A store that spills, or is about to, has about as many objects as its budget, so the
//! process is at the memory it was given. What is freed then (objects spilled, read back and
//! freed; the buffers tasks decode into) is worth giving back to the kernel soon, where an
//! allocator otherwise keeps it a while for reuse: mimalloc keeps freed memory for a second by
//! default, and at scale 10 with a 1 GiB store that put a shuffle's peak at 1.8 GiB
//! (docs/benchmarks.md). Returning memory at once costs when the store has room (the scale-1
//! runs were up to a fifth slower), so the allocator is told only while some store is full.
//!
//! The engine does not choose the allocator; the program does, and registers what to do with
//! [`on_pressure_change`] (`manta::run_worker_if_requested` does for mimalloc). A store is
//! *under pressure* while it holds spilled objects or its resident objects fill three quarters
//! of its budget (the memory freed before the first spill counts as much as what is freed
//! after it); the hook is called with `true` when the first store of the process comes under
//! pressure and with `false` when the last one leaves it (or is dropped).

use parking_lot::Mutex;

/// The registered hook, and how many stores are under pressure now.
static PRESSURE: Mutex<Pressure> = Mutex::new(Pressure {
    hook: None,
    stores: 0,
});

struct Pressure {
    hook: Option<fn(bool)>,
    stores: usize,
}

/// Registers `hook`, called with `true` when some object store of this process comes under
/// pressure (see the module doc) and with `false` when none is any more. Replaces an earlier hook; if
/// stores are under pressure already, `hook(true)` is called at once.
///
/// ```
/// use std::sync::atomic::{AtomicBool, Ordering};
/// static UNDER: AtomicBool = AtomicBool::new(false);
/// manta_engine::store::on_pressure_change(|under| UNDER.store(under, Ordering::Relaxed));
/// assert!(!manta_engine::store::under_pressure());
/// ```
pub fn on_pressure_change(hook: fn(bool)) {
    let mut pressure = PRESSURE.lock();
    pressure.hook = Some(hook);
    if pressure.stores > 0 {
        hook(true);
    }
}

/// Whether some object store of this process is under pressure now (see the module doc).
pub fn under_pressure() -> bool {
    PRESSURE.lock().stores > 0
}

/// One store's part: whether it is under pressure. Dropping it leaves the pressure.
#[derive(Debug, Default)]
pub(crate) struct StorePressure {
    under: bool,
}

impl StorePressure {
    /// Records whether the store is under pressure now, calling the hook if that changes the
    /// process's state. Cheap when nothing changes (no lock).
    pub(crate) fn set(&mut self, under: bool) {
        if under == self.under {
            return;
        }
        self.under = under;
        let mut pressure = PRESSURE.lock();
        let was = pressure.stores > 0;
        if under {
            pressure.stores += 1;
        } else {
            pressure.stores -= 1;
        }
        let is = pressure.stores > 0;
        if was != is
            && let Some(hook) = pressure.hook
        {
            hook(is);
        }
    }
}

impl Drop for StorePressure {
    fn drop(&mut self) {
        self.set(false);
    }
}
