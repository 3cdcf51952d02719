//! What a stage's tasks did, summed from their answers, as DataFusion metrics: `EXPLAIN
//! ANALYZE` shows them on the stage's [`super::StageExec`].

use datafusion::physical_plan::metrics::{
    Count, ExecutionPlanMetricsSet, Gauge, MetricBuilder, Time,
};

/// The figures of a stage's tasks, summed.
pub struct TaskMetrics {
    tasks: Count,
    output_rows: Count,
    output_bytes: Count,
    pulled_bytes: Count,
    spilled_bytes: Count,
    task_wall: Time,
    task_cpu: Time,
    peak_memory: Gauge,
}

impl TaskMetrics {
    /// The figures, registered in `metrics`.
    pub fn new(metrics: &ExecutionPlanMetricsSet) -> Self {
        let counter = |name: &'static str| MetricBuilder::new(metrics).global_counter(name);
        let time = |name: &'static str| MetricBuilder::new(metrics).subset_time(name, 0);
        Self {
            tasks: counter("tasks"),
            output_rows: MetricBuilder::new(metrics).output_rows(0),
            output_bytes: counter("task_output_bytes"),
            pulled_bytes: counter("task_pulled_bytes"),
            spilled_bytes: counter("task_spilled_bytes"),
            task_wall: time("task_wall"),
            task_cpu: time("task_cpu"),
            peak_memory: MetricBuilder::new(metrics).global_gauge("task_peak_memory_bytes"),
        }
    }

    /// Adds one task's answer.
    pub fn record(&self, outcome: &manta_engine::TaskOutcome) {
        let stats = &outcome.stats;
        let meta = outcome.output.meta();
        self.tasks.add(1);
        self.output_rows.add(meta.num_rows as usize);
        self.output_bytes.add(meta.size_bytes as usize);
        self.pulled_bytes.add(stats.pulled_bytes as usize);
        self.spilled_bytes.add(stats.spilled_bytes as usize);
        self.task_wall
            .add_duration(std::time::Duration::from_nanos(stats.wall_ns));
        self.task_cpu
            .add_duration(std::time::Duration::from_nanos(stats.cpu_ns));
        self.peak_memory.set_max(stats.peak_memory_bytes as usize);
    }
}
