//! Logical plans and the optimizer that fuses them into stages.
//!
//! A [`LogicalPlan`] is a source and a list of one-to-one operators, as the user wrote them.
//! [`LogicalPlan::compile`] checks every expression against the schema flowing into it (so an
//! unknown column fails before any task runs, with DataFusion's message naming the valid
//! columns), then fuses: the source and every following operator go into one stage, until a
//! `map_batches` asks for different resources, which starts a new stage (its tasks must run
//! where those resources are). A sink joins the last stage. Most pipelines are one stage: read,
//! filter, compute, map and write each block in one task, with no intermediate objects.

use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use bytes::Bytes;
use datafusion::logical_expr::Expr;
use manta_engine::Resources;

use crate::error::{Error, Result};
use crate::ops;
use crate::parquet_source::{Fragment, ParquetSource};
use crate::stage::{OpSpec, SinkSpec, StageSpec, encode_expr, encode_spec};

/// Options for reading.
#[derive(Clone, Debug)]
pub struct ReadOptions {
    /// Resources each read task asks for (default: one CPU).
    pub resources: Resources,
    /// Rows per batch.
    pub batch_size: usize,
    /// Rows per read task (row groups are merged up to this).
    pub rows_per_task: u64,
}

impl Default for ReadOptions {
    fn default() -> Self {
        Self {
            resources: Resources::one_cpu(),
            batch_size: 8192,
            rows_per_task: 256 * 1024,
        }
    }
}

/// Options for `map_batches`.
#[derive(Clone, Debug, Default)]
pub struct MapBatchesOptions {
    /// Resources each task asks for; `None` runs in the stage before it (fused).
    pub resources: Option<Resources>,
}

/// One operator as the user wrote it.
#[derive(Clone, Debug)]
pub enum LogicalOp {
    /// Keep rows where the predicate is true.
    Filter(Expr),
    /// Add or replace a column.
    WithColumn(String, Expr),
    /// Apply a registered batch function.
    MapBatches {
        /// Its registered name.
        function: &'static str,
        /// Its options.
        options: MapBatchesOptions,
    },
}

impl LogicalOp {
    fn describe(&self) -> String {
        match self {
            LogicalOp::Filter(e) => format!("filter({e})"),
            LogicalOp::WithColumn(name, e) => format!("with_column({name}, {e})"),
            LogicalOp::MapBatches { function, .. } => {
                format!("map_batches({})", short_name(function))
            }
        }
    }

    fn stage_name(&self) -> String {
        match self {
            LogicalOp::Filter(_) => "Filter".into(),
            LogicalOp::WithColumn(name, _) => format!("WithColumn({name})"),
            LogicalOp::MapBatches { function, .. } => {
                format!("MapBatches({})", short_name(function))
            }
        }
    }
}

fn short_name(function: &str) -> &str {
    function.rsplit("::").next().unwrap_or(function)
}

/// A source and its operators.
#[derive(Clone, Debug)]
pub struct LogicalPlan {
    /// What is read.
    pub source: Arc<ParquetSource>,
    /// How.
    pub read_options: ReadOptions,
    /// Then what is done to each block.
    pub ops: Vec<LogicalOp>,
}

/// Where a compiled pipeline's output goes.
#[derive(Clone, Debug)]
pub enum Sink {
    /// Back to the driver (count, take, iterate).
    Driver,
    /// Parquet part files in this (temporary) directory.
    Parquet(std::path::PathBuf),
}

/// A stage ready to run.
#[derive(Clone, Debug)]
pub struct PhysicalStage {
    /// Its name ("ReadParquet->Filter->...").
    pub name: String,
    /// Its serialised spec.
    pub spec: Bytes,
    /// Resources per task.
    pub resources: Resources,
}

/// A compiled pipeline: the source fragments and the stages each block flows through.
#[derive(Clone, Debug)]
pub struct PhysicalPlan {
    /// Read tasks of the first stage, one block each.
    pub fragments: Vec<Fragment>,
    /// The stages, in order.
    pub stages: Vec<PhysicalStage>,
    /// The output schema, when the operators let it be known before running.
    pub schema: Option<SchemaRef>,
}

impl LogicalPlan {
    /// The plan with one more operator.
    pub fn with_op(&self, op: LogicalOp) -> Self {
        let mut plan = self.clone();
        plan.ops.push(op);
        plan
    }

    /// Checks the expressions and fuses the operators into stages.
    pub fn compile(&self, sink: Sink) -> Result<PhysicalPlan> {
        let mut schema = Some(Arc::clone(&self.source.schema));
        let mut stages: Vec<(String, Resources, Vec<OpSpec>)> = vec![(
            "ReadParquet".to_string(),
            self.read_options.resources.clone(),
            Vec::new(),
        )];
        for op in &self.ops {
            let plan_error = |source| Error::Plan {
                operator: op.describe(),
                source,
            };
            let spec = match op {
                LogicalOp::Filter(predicate) => {
                    if let Some(schema) = &schema {
                        ops::check_predicate(predicate, schema).map_err(plan_error)?;
                    }
                    OpSpec::Filter {
                        expr: encode_expr(predicate).map_err(plan_error)?,
                    }
                }
                LogicalOp::WithColumn(name, value) => {
                    if let Some(current) = &schema {
                        schema = Some(
                            ops::with_column_schema(name, value, current).map_err(plan_error)?,
                        );
                    }
                    OpSpec::WithColumn {
                        name: name.clone(),
                        expr: encode_expr(value).map_err(plan_error)?,
                    }
                }
                LogicalOp::MapBatches { function, options } => {
                    schema = None;
                    if let Some(resources) = &options.resources {
                        let current = &stages.last().expect("at least one stage").1;
                        if resources != current {
                            stages.push((String::new(), resources.clone(), Vec::new()));
                        }
                    }
                    OpSpec::MapBatches {
                        function: function.to_string(),
                    }
                }
            };
            let stage = stages.last_mut().expect("at least one stage");
            if !stage.0.is_empty() {
                stage.0.push_str("->");
            }
            stage.0.push_str(&op.stage_name());
            stage.2.push(spec);
        }
        let last = stages.len() - 1;
        let stages = stages
            .into_iter()
            .enumerate()
            .map(|(i, (mut name, resources, ops))| {
                let sink = match (&sink, i == last) {
                    (Sink::Parquet(dir), true) => {
                        name.push_str("->WriteParquet");
                        Some(SinkSpec::Parquet { dir: dir.clone() })
                    }
                    _ => None,
                };
                let spec = StageSpec {
                    name: name.clone(),
                    batch_size: self.read_options.batch_size,
                    ops,
                    sink,
                };
                Ok(PhysicalStage {
                    name,
                    spec: encode_spec(&spec)?,
                    resources,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(PhysicalPlan {
            fragments: self.source.fragments(self.read_options.rows_per_task),
            stages,
            schema,
        })
    }
}
