//! How many threads a runtime that mostly passes messages gets: the head's and nodes' daemons,
//! and a driver's runtime on a cluster.
//!
//! These runtimes move small messages between streams (tasks in, tasks out, results,
//! heartbeats) and serve or pull Flight; the work itself runs in workers. Each message that a
//! second runtime thread has to be woken for costs a cross-thread wake-up, and on a small
//! machine, where these threads share the cores with the workers, that costs more than the
//! message: on 2 cores, one thread for each of the head, the two nodes and the driver raised
//! the cluster's no-op tasks/s by about 20% and left shuffles, sorts and SQL on the cluster
//! unchanged (docs/benchmarks.md). Larger machines get more threads, as Ray sizes its object
//! manager's threads by the cores: a quarter of them, at most 8.
//!
//! An embedded driver's runtime is not one of these: DataFusion's operators run on it.

/// Threads for a message-passing runtime on this machine: a quarter of its cores, within 1..=8.
///
/// ```
/// let threads = manta_scheduler::io_threads::io_threads();
/// assert!((1..=8).contains(&threads));
/// ```
pub fn io_threads() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    threads_for(cores)
}

fn threads_for(cores: usize) -> usize {
    (cores / 4).clamp(1, 8)
}

#[cfg(test)]
mod tests {
    use super::threads_for;

    #[test]
    fn a_quarter_of_the_cores_within_one_and_eight() {
        for cores in 1..=64 {
            let threads = threads_for(cores);
            assert!((1..=8).contains(&threads), "{cores} cores: {threads}");
            assert!(
                threads == 1 || threads * 4 <= cores,
                "{cores} cores: {threads}"
            );
            assert!(
                threads == 8 || (threads + 1) * 4 > cores,
                "{cores} cores: {threads}"
            );
        }
    }
}
