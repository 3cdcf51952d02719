//! What a pipeline run did, per stage: `ds.stats()`.

use std::fmt;
use std::time::{Duration, Instant};

use manta_engine::TaskStats;

/// Figures for one stage.
#[derive(Clone, Debug, Default)]
pub struct StageStats {
    /// The stage ("ReadParquet->Filter->...").
    pub name: String,
    /// Tasks run.
    pub tasks: u64,
    /// Rows into the stage.
    pub rows_in: u64,
    /// Rows out of the stage.
    pub rows_out: u64,
    /// Bytes of output blocks, as stored.
    pub bytes_out: u64,
    /// Wall time from the stage's first task starting to its last finishing.
    pub wall: Duration,
    /// Sum of the tasks' own statistics (wall, CPU, bytes pulled over Flight).
    pub task: TaskStats,
    /// The most of its tasks submitted and not yet finished at any one time.
    pub most_running: usize,
    first_start: Option<Instant>,
    last_end: Option<Instant>,
}

impl StageStats {
    /// Empty figures for `name`.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            ..Default::default()
        }
    }

    /// A task of the stage was submitted at `at`, making `running` not yet finished.
    pub(crate) fn started(&mut self, at: Instant, running: usize) {
        self.first_start.get_or_insert(at);
        self.most_running = self.most_running.max(running);
    }

    pub(crate) fn finished(
        &mut self,
        at: Instant,
        rows_in: u64,
        rows_out: u64,
        bytes_out: u64,
        task: &TaskStats,
    ) {
        self.tasks += 1;
        self.rows_in += rows_in;
        self.rows_out += rows_out;
        self.bytes_out += bytes_out;
        self.task.add(task);
        self.last_end = Some(at);
        if let Some(start) = self.first_start {
            self.wall = at.duration_since(start);
        }
    }
}

/// Figures for one run of a pipeline.
#[derive(Clone, Debug, Default)]
pub struct DatasetStats {
    /// Per stage, in order.
    pub stages: Vec<StageStats>,
    /// Wall time of the whole run.
    pub wall: Duration,
}

impl DatasetStats {
    /// Bytes pulled between nodes over Flight, over all stages.
    pub fn pulled_bytes(&self) -> u64 {
        self.stages.iter().map(|s| s.task.pulled_bytes).sum()
    }

    /// Bytes spilled to disk to make room for the stages' outputs, over all stages.
    pub fn spilled_bytes(&self) -> u64 {
        self.stages.iter().map(|s| s.task.spilled_bytes).sum()
    }

    /// Rows out of the last stage.
    pub fn rows_out(&self) -> u64 {
        self.stages.last().map_or(0, |s| s.rows_out)
    }
}

impl fmt::Display for DatasetStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "Pipeline: {} stage(s), {:.3} s wall",
            self.stages.len(),
            self.wall.as_secs_f64()
        )?;
        for (i, s) in self.stages.iter().enumerate() {
            let cpu = Duration::from_nanos(s.task.cpu_ns);
            let task_wall = Duration::from_nanos(s.task.wall_ns);
            writeln!(
                f,
                "Stage {i} {}: {} tasks, at most {} at once",
                s.name, s.tasks, s.most_running
            )?;
            writeln!(
                f,
                "  wall {:.3} s, task wall {:.3} s, CPU {:.3} s",
                s.wall.as_secs_f64(),
                task_wall.as_secs_f64(),
                cpu.as_secs_f64()
            )?;
            writeln!(
                f,
                "  rows in {}, rows out {}, blocks out {}, bytes out {}",
                s.rows_in,
                s.rows_out,
                s.tasks,
                human_bytes(s.bytes_out)
            )?;
            if s.task.inputs_ns > 0 || s.task.output_ns > 0 {
                writeln!(
                    f,
                    "  making inputs readable {:.3} s, storing outputs {:.3} s",
                    Duration::from_nanos(s.task.inputs_ns).as_secs_f64(),
                    Duration::from_nanos(s.task.output_ns).as_secs_f64()
                )?;
            }
            if s.task.spilled_bytes > 0 {
                writeln!(
                    f,
                    "  spilled to disk to make room for its output: {}",
                    human_bytes(s.task.spilled_bytes)
                )?;
            }
            if s.task.peak_memory_bytes > 0 {
                writeln!(
                    f,
                    "  peak memory of a worker running one of its tasks: {}",
                    human_bytes(s.task.peak_memory_bytes)
                )?;
            }
            if s.task.pulled_objects > 0 {
                writeln!(
                    f,
                    "  pulled over Flight: {} in {} objects",
                    human_bytes(s.task.pulled_bytes),
                    s.task.pulled_objects
                )?;
            }
        }
        Ok(())
    }
}

pub use manta_engine::human_bytes;
