//! How often a dataset or SQL task runs again after its worker process or its node failed,
//! process-wide like Ray Data's `DataContext` (set from [`crate::Config::task_max_retries`] or
//! `MANTA_TASK_MAX_RETRIES`; 3 unless set). A block lost *after* its task finished is not a
//! retry: it is made again from its lineage when it is needed (see
//! [`manta_scheduler::lineage`]), as often as it is lost.

use std::sync::atomic::{AtomicU32, Ordering};

/// Retries a task gets unless set otherwise.
pub const DEFAULT_TASK_MAX_RETRIES: u32 = 3;

static TASK_MAX_RETRIES: AtomicU32 = AtomicU32::new(DEFAULT_TASK_MAX_RETRIES);

/// How often a dataset or SQL task runs again after its worker or node failed.
pub fn task_max_retries() -> u32 {
    TASK_MAX_RETRIES.load(Ordering::Relaxed)
}

/// Sets [`task_max_retries`] for tasks made from now on.
pub(crate) fn set_task_max_retries(retries: u32) {
    TASK_MAX_RETRIES.store(retries, Ordering::Relaxed);
}
