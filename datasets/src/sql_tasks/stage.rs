//! A stage: a fragment of a query's plan run as one task per partition, its output objects in
//! the store, made once however many readers it has.
//!
//! A stage runs when it is first read: it runs the stages it reads first (concurrently), then
//! submits its tasks, all at once, each with the objects of every stage it reads as inputs.
//! Inputs read by hash partition arrive as only the task's partition (the task's
//! `input_batches`), so a reducer moves only its share between nodes; broadcast inputs arrive
//! whole beside them.
//! Tasks run through [`Client::submit`], so their outputs keep their lineage: an output lost
//! with its node is made again when a later stage or the driver needs it.

use std::sync::Arc;

use bytes::Bytes;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::error::{DataFusionError, Result, SharedResult};
use datafusion::physical_plan::metrics::{ExecutionPlanMetricsSet, MetricBuilder};
use datafusion::physical_plan::repartition::RepartitionExec;
use datafusion::physical_plan::{ExecutionPlan, ExecutionPlanProperties, Partitioning};
use futures::FutureExt;
use futures::future::BoxFuture;
use manta_engine::{ObjectRef, Resources, TaskSpec};
use manta_scheduler::Client;
use serde::{Deserialize, Serialize};

use super::adaptive::{self, BroadcastIfSmall};
use super::blocks::DatasetBlocksExec;
use super::exec::StageExec;
use super::input::{InputCodec, Read, StageInput};
use super::metrics::TaskMetrics;
use super::subquery_values::SubqueryValues;
use super::task::{STAGE_FUNCTION, TASK_SESSION, TaskArgs};

/// The largest encoded fragment shipped with every task.
const MAX_FRAGMENT_BYTES: usize = 1 << 20;

/// What each task of a stage stores.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Output {
    /// The rows of its partition, as one block.
    Partitions,
    /// The rows of its partition of the input of the fragment's top (a hash
    /// `RepartitionExec`), split by that repartitioning: one block whose batch *j* holds the
    /// rows of output partition *j*.
    Hash,
}

/// What a stage reads: another stage's output, or a registered dataset's blocks.
enum Input {
    Stage(Arc<Stage>),
    Blocks(Arc<Vec<ObjectRef>>),
}

/// A stage (see the module doc).
pub struct Stage {
    /// Its number in the query (unique; given as the plan is cut, from the leaves up, and
    /// kept by a stage made again in place of another).
    number: usize,
    /// The fragment as planned, with [`StageExec`]s where it reads other stages.
    fragment: Arc<dyn ExecutionPlan>,
    /// The fragment as tasks decode it: reads of other stages as [`StageInput`]s.
    encoded: Bytes,
    /// The fragment as it travels, if it reads scalar subqueries: encoded again with their
    /// values when the stage runs (`encoded` has typed nulls in their place).
    reads_subqueries: Option<Arc<dyn ExecutionPlan>>,
    output: Output,
    /// What it reads, in the order of its input groups, and how.
    inputs: Vec<(Input, Read)>,
    tasks: usize,
    client: Client,
    metrics: ExecutionPlanMetricsSet,
    /// The form it runs instead if its join's build side turns out small (see [`adaptive`]).
    broadcast_if_small: Option<BroadcastIfSmall>,
    /// Its output objects, by task, once it has run.
    outputs: tokio::sync::OnceCell<SharedResult<Arc<Vec<ObjectRef>>>>,
}

impl std::fmt::Debug for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stage")
            .field("number", &self.number)
            .field("output", &self.output)
            .field("tasks", &self.tasks)
            .field("inputs", &self.inputs.len())
            .finish()
    }
}

impl Stage {
    /// The stage running `fragment`; an error if it cannot travel to a task (an operator
    /// `datafusion-proto` does not encode, an expression bound to an operator outside it, or
    /// too large a plan).
    pub fn try_new(
        number: usize,
        fragment: Arc<dyn ExecutionPlan>,
        output: Output,
        client: Client,
    ) -> Result<Self> {
        let tasks = match output {
            Output::Partitions => fragment.output_partitioning().partition_count(),
            Output::Hash => {
                let hash = fragment
                    .downcast_ref::<RepartitionExec>()
                    .filter(|r| matches!(r.partitioning(), Partitioning::Hash(..)));
                let Some(repartition) = hash else {
                    return Err(DataFusionError::Internal(format!(
                        "a hash stage's fragment is {}, not a hash RepartitionExec",
                        fragment.name()
                    )));
                };
                repartition.input().output_partitioning().partition_count()
            }
        };
        let mut inputs = Vec::new();
        let travelling = Arc::clone(&fragment)
            .transform_down(|node| {
                let input = if let Some(read) = node.downcast_ref::<StageExec>() {
                    (Input::Stage(Arc::clone(read.stage())), read.read())
                } else if let Some(dataset) = node.downcast_ref::<DatasetBlocksExec>() {
                    (
                        Input::Blocks(Arc::clone(dataset.blocks())),
                        Read::Partitions,
                    )
                } else {
                    return Ok(Transformed::no(node));
                };
                let leaf = StageInput::new(
                    inputs.len(),
                    input.1,
                    node.schema(),
                    node.output_partitioning().partition_count(),
                );
                inputs.push(input);
                Ok(Transformed::new(
                    Arc::new(leaf) as Arc<dyn ExecutionPlan>,
                    true,
                    TreeNodeRecursion::Jump,
                ))
            })?
            .data;
        let (encoded, reads_subqueries) =
            SubqueryValues::encode_placeholders(Arc::clone(&travelling), &InputCodec::unbound())?;
        if encoded.len() > MAX_FRAGMENT_BYTES {
            // DataFusion's encoding can include per-file statistics.
            return Err(DataFusionError::ResourcesExhausted(format!(
                "its plan is {} bytes",
                encoded.len()
            )));
        }
        // Some plans encode but do not decode alone (an expression bound to an operator above
        // the cut): decode once here to know.
        datafusion_proto::bytes::physical_plan_from_bytes_with_extension_codec(
            &encoded,
            &TASK_SESSION.task_ctx(),
            &InputCodec::unbound(),
        )?;
        Ok(Self {
            number,
            fragment,
            encoded,
            reads_subqueries: reads_subqueries.then_some(travelling),
            output,
            inputs,
            tasks,
            client,
            metrics: ExecutionPlanMetricsSet::new(),
            broadcast_if_small: None,
            outputs: tokio::sync::OnceCell::new(),
        })
    }

    /// This stage, running its join with the build side broadcast instead if that side's
    /// stage makes at most `max_rows` rows and broadcasting them sends fewer rows than the
    /// probe side's exchange would (see [`adaptive`]); unchanged if its fragment has no such
    /// join.
    pub fn with_broadcast_if_small(mut self, max_rows: usize) -> Self {
        if self.output != Output::Hash {
            return self;
        }
        // Without an estimate of the probe side, nothing says a broadcast sends fewer rows.
        let Some((form, probe_rows)) = adaptive::broadcast_form(&self.fragment)
            .and_then(|form| form.probe_rows.map(|rows| (form, rows)))
        else {
            return self;
        };
        match Stage::try_new(
            self.number,
            form.fragment,
            Output::Hash,
            self.client.clone(),
        ) {
            Ok(mut broadcast) => {
                // One stage to `EXPLAIN ANALYZE`, whichever form ran.
                broadcast.metrics = self.metrics.clone();
                let max_rows =
                    adaptive::most_rows_to_broadcast(max_rows as u64, probe_rows, broadcast.tasks);
                if max_rows > 0 {
                    self.broadcast_if_small = Some(BroadcastIfSmall {
                        build: form.build,
                        max_rows,
                        broadcast: Arc::new(broadcast),
                    });
                }
            }
            Err(e) => tracing::debug!("a join's broadcast form does not travel: {e}"),
        }
        self
    }

    /// Whether `other` does the same work as this stage: the same fragment (as its tasks
    /// decode it) and output, over the same inputs (the same stages and blocks, read the same
    /// way). A query that holds a subplan twice, such as TPC-H q15's view, then runs it once,
    /// as the embedded session's shared subplans do. A fragment that reads scalar subqueries
    /// is never the same as another: its encoding does not show which.
    pub fn does_the_same_as(&self, other: &Stage) -> bool {
        if self.reads_subqueries.is_some() || other.reads_subqueries.is_some() {
            return false;
        }
        let same_input = |(a, read_a): &(Input, Read), (b, read_b): &(Input, Read)| {
            read_a == read_b
                && match (a, b) {
                    (Input::Stage(a), Input::Stage(b)) => Arc::ptr_eq(a, b),
                    (Input::Blocks(a), Input::Blocks(b)) => Arc::ptr_eq(a, b),
                    _ => false,
                }
        };
        self.output == other.output
            && self.encoded == other.encoded
            && self.inputs.len() == other.inputs.len()
            && self
                .inputs
                .iter()
                .zip(&other.inputs)
                .all(|(a, b)| same_input(a, b))
    }

    /// The most build rows its join broadcasts instead (see [`adaptive`]), if it has that form.
    pub fn broadcast_threshold(&self) -> Option<u64> {
        self.broadcast_if_small.as_ref().map(|b| b.max_rows)
    }

    /// Its number in the query.
    pub fn number(&self) -> usize {
        self.number
    }

    /// The fragment as planned.
    pub fn fragment(&self) -> &Arc<dyn ExecutionPlan> {
        &self.fragment
    }

    /// What each task stores.
    pub fn output(&self) -> Output {
        self.output
    }

    /// How many tasks it runs.
    pub fn tasks(&self) -> usize {
        self.tasks
    }

    /// The client its tasks go through.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// What its tasks did.
    pub fn metrics(&self) -> &ExecutionPlanMetricsSet {
        &self.metrics
    }

    /// Its output objects by task, running it (and the stages it reads) the first time.
    pub fn run(self: &Arc<Self>) -> BoxFuture<'static, Result<Arc<Vec<ObjectRef>>>> {
        let stage = Arc::clone(self);
        async move {
            stage
                .outputs
                .get_or_init(|| stage.run_tasks())
                .await
                .clone()
                .map_err(DataFusionError::Shared)
        }
        .boxed()
    }

    async fn run_tasks(&self) -> SharedResult<Arc<Vec<ObjectRef>>> {
        if let Some(adaptive) = &self.broadcast_if_small {
            let build = adaptive.build.run().await.map_err(Arc::new)?;
            let rows: u64 = build.iter().map(|object| object.meta().num_rows).sum();
            tracing::debug!(
                stage = self.number,
                rows,
                max_rows = adaptive.max_rows,
                "a partitioned join's build side has run"
            );
            if rows <= adaptive.max_rows {
                MetricBuilder::new(&self.metrics)
                    .global_counter("broadcast_build_rows")
                    .add(rows as usize);
                return adaptive.broadcast.run().await.map_err(Arc::new);
            }
        }
        let inputs =
            futures::future::try_join_all(self.inputs.iter().map(|(input, _)| match input {
                Input::Stage(stage) => stage.run(),
                Input::Blocks(blocks) => futures::future::ready(Ok(Arc::clone(blocks))).boxed(),
            }))
            .await
            .map_err(Arc::new)?;
        let encoded = match &self.reads_subqueries {
            Some(travelling) => {
                SubqueryValues::encode_values(Arc::clone(travelling), &InputCodec::unbound())
                    .map_err(Arc::new)?
            }
            None => self.encoded.clone(),
        };
        let metrics = Arc::new(TaskMetrics::new(&self.metrics));
        let submitted = self.specs(&inputs, &encoded).into_iter().map(|spec| {
            let (outcome, metrics) = (self.client.submit(spec), Arc::clone(&metrics));
            async move {
                let outcome = outcome
                    .await
                    .map_err(|e| Arc::new(DataFusionError::External(Box::new(e))))?;
                metrics.record(&outcome);
                Ok::<_, Arc<DataFusionError>>(outcome.output)
            }
        });
        Ok(Arc::new(futures::future::try_join_all(submitted).await?))
    }

    /// Its tasks, given the outputs of what it reads and its fragment as they decode it.
    fn specs(&self, inputs: &[Arc<Vec<ObjectRef>>], encoded: &Bytes) -> Vec<TaskSpec> {
        // Hash reads arrive as the task's partition alone (the task's `input_batches`), so they
        // go first; broadcasts follow whole, and of a dataset's blocks only the task's own.
        let sliced = self.inputs.iter().any(|(_, read)| *read == Read::Hash);
        let read_inputs = || self.inputs.iter().map(|(_, read)| *read).zip(inputs);
        let hashed: Vec<ObjectRef> = read_inputs()
            .filter(|(read, _)| *read == Read::Hash)
            .flat_map(|(_, objects)| objects.iter().cloned())
            .collect();
        (0..self.tasks)
            .map(|partition| {
                let mut objects = hashed.clone();
                let groups = read_inputs()
                    .map(|(read, all)| {
                        let given = match read {
                            Read::Hash => return (read, all.len() as u32),
                            Read::Broadcast => all.as_slice(),
                            Read::Partitions => all.get(partition..=partition).unwrap_or(&[]),
                        };
                        objects.extend(given.iter().cloned());
                        (read, given.len() as u32)
                    })
                    .collect();
                let args = TaskArgs {
                    partition: partition as u32,
                    output: self.output,
                    sliced,
                    groups,
                };
                TaskSpec {
                    function: STAGE_FUNCTION.to_string(),
                    args: args.encode(encoded),
                    inputs: objects,
                    input_batches: sliced.then_some(partition as u32..partition as u32 + 1),
                    batched_inputs: Some(hashed.len() as u32),
                    resources: Resources::one_cpu(),
                    max_retries: crate::retries::task_max_retries(),
                    label: format!(
                        "SQL stage {}, partition {partition} of {} ({})",
                        self.number,
                        self.tasks,
                        self.fragment.name()
                    ),
                }
            })
            .collect()
    }
}
