//! Batch inference with a stateful callable: a linear model's weights are loaded from a file
//! once per worker, then every batch of TPC-H lineitem is scored with them (Ray Data's
//! `map_batches(CallableClass, concurrency=n)` pattern).
//!
//! ```text
//! cargo run --release --example batch_inference -- [--scale S] [--concurrency N]
//! ```

use std::sync::Arc;

use arrow::array::{AsArray, Float64Array};
use arrow::datatypes::{DataType, Field, Float64Type, Schema};
use clap::Parser;
use manta::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Parser)]
struct Args {
    /// TPC-H scale factor of the generated input.
    #[arg(long, default_value_t = 0.1)]
    scale: f64,
    /// Scorers working at once (the actor pool's size).
    #[arg(long, default_value_t = 2)]
    concurrency: usize,
}

/// The model file: a weight per feature column, and a bias.
#[derive(Serialize, Deserialize)]
struct LinearModel {
    features: Vec<String>,
    weights: Vec<f64>,
    bias: f64,
}

/// Scores rows with a linear model loaded once, at construction.
struct Scorer {
    model: LinearModel,
}

#[manta::callable]
impl Callable for Scorer {
    /// The model file's path.
    type Args = String;

    fn new(path: String) -> Result<Self, BoxError> {
        let model = serde_json::from_slice(&std::fs::read(&path)?)?;
        Ok(Self { model })
    }

    fn call(&mut self, batch: RecordBatch) -> Result<RecordBatch, BoxError> {
        let mut score = vec![self.model.bias; batch.num_rows()];
        for (name, weight) in self.model.features.iter().zip(&self.model.weights) {
            let column = batch
                .column_by_name(name)
                .ok_or_else(|| format!("the model needs column {name}"))?;
            let values = arrow::compute::cast(column, &DataType::Float64)?;
            for (s, v) in score
                .iter_mut()
                .zip(values.as_primitive::<Float64Type>().values())
            {
                *s += weight * v;
            }
        }
        let mut fields = batch.schema().fields().to_vec();
        fields.push(Arc::new(Field::new("score", DataType::Float64, false)));
        let mut columns = batch.columns().to_vec();
        columns.push(Arc::new(Float64Array::from(score)));
        Ok(RecordBatch::try_new(
            Arc::new(Schema::new(fields)),
            columns,
        )?)
    }
}

fn main() -> Result<(), manta::Report> {
    let ctx = manta::init()?; // first: in a worker process this never returns
    let args = Args::parse();
    let dir = manta::tpch::default_dir();
    let input = manta::tpch::lineitem(&dir, args.scale)?;

    // "Train" a model: here, fixed weights written where every worker can read them.
    let model_path = dir.join("linear_model.json");
    let model = LinearModel {
        features: vec!["l_quantity".into(), "l_discount".into(), "l_tax".into()],
        weights: vec![0.02, -3.0, 1.5],
        bias: 0.1,
    };
    std::fs::write(&model_path, serde_json::to_vec_pretty(&model)?)?;

    let scored = ctx
        .read_parquet(input.to_str().expect("a UTF-8 path"))?
        .select_columns(&["l_orderkey", "l_quantity", "l_discount", "l_tax"])
        .map_batches_callable::<Scorer>(
            model_path.to_string_lossy().into_owned(),
            MapBatchesOptions::default()
                .concurrency(args.concurrency)
                .batch_size(8192),
        )?;
    let summary = scored.aggregate(vec![
        Aggregate::count().alias("rows"),
        Aggregate::mean("score").alias("mean_score"),
        Aggregate::max("score").alias("max_score"),
    ]);
    summary.show(1)?;
    scored.limit(5).show(5)?;
    println!("{}", summary.stats());
    Ok(())
}
