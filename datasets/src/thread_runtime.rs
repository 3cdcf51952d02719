//! A current-thread tokio runtime per thread, for running DataFusion's async plans inside
//! tasks, which run on plain threads (a pool's, or a worker process's task thread).

use std::future::Future;

/// Runs a future on this thread's own current-thread runtime (DataFusion's plans are async;
/// tasks run on plain threads).
pub(crate) fn block_on<F: Future>(future: F) -> F::Output {
    thread_local! {
        static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a current-thread runtime");
    }
    RUNTIME.with(|rt| rt.block_on(future))
}
