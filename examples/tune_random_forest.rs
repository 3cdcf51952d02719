//! Ray Tune's example: a grid search over a random forest classifier on the iris data, 108
//! trials run in parallel as tasks of one CPU each, scored by 5-fold cross-validated accuracy.
//!
//! ```sh
//! cargo run --release --example tune_random_forest
//! cargo run --release --example tune_random_forest -- --sequential   # one thread, no Manta
//! ```

use std::sync::LazyLock;
use std::time::Instant;

use manta::tune::{self, Config, Metrics, Mode, SearchSpace, TuneConfig, Tuner, grid_search};
use smartcore::ensemble::random_forest_classifier::{
    RandomForestClassifier, RandomForestClassifierParameters,
};
use smartcore::linalg::basic::matrix::DenseMatrix;

/// Iris: 150 flowers, 4 measurements each, 3 species (in blocks of 50).
static IRIS: LazyLock<(Vec<Vec<f32>>, Vec<u32>)> = LazyLock::new(|| {
    let iris = smartcore::dataset::iris::load_dataset();
    let rows = iris
        .data
        .chunks(iris.num_features)
        .map(<[f32]>::to_vec)
        .collect();
    (rows, iris.target)
});

const FOLDS: usize = 5;

/// The forest's mean accuracy over 5 folds (row i is in fold i % 5, so every fold holds
/// 10 flowers of each species).
#[manta::remote]
fn train_forest(config: Config) -> Result<Metrics, manta::BoxError> {
    let mut params = RandomForestClassifierParameters::default()
        .with_n_trees(config.get("n_estimators")?)
        .with_min_samples_split(config.get("min_samples_split")?)
        .with_min_samples_leaf(config.get("min_samples_leaf")?)
        .with_seed(42);
    if let Some(depth) = config.get::<Option<u16>>("max_depth")? {
        params = params.with_max_depth(depth);
    }
    let (rows, species) = &*IRIS;
    let mut correct = 0;
    for fold in 0..FOLDS {
        let (mut train_x, mut train_y, mut test_x, mut test_y) = (vec![], vec![], vec![], vec![]);
        for (i, (row, label)) in rows.iter().zip(species).enumerate() {
            let (x, y) = if i % FOLDS == fold {
                (&mut test_x, &mut test_y)
            } else {
                (&mut train_x, &mut train_y)
            };
            x.push(row.clone());
            y.push(*label);
        }
        let forest = RandomForestClassifier::fit(
            &DenseMatrix::from_2d_vec(&train_x)?,
            &train_y,
            params.clone(),
        )?;
        let predicted = forest.predict(&DenseMatrix::from_2d_vec(&test_x)?)?;
        correct += predicted
            .iter()
            .zip(&test_y)
            .filter(|(p, y)| p == y)
            .count();
    }
    Ok(tune::metrics([(
        "accuracy",
        correct as f64 / rows.len() as f64,
    )]))
}

fn main() -> Result<(), manta::Report> {
    let ctx = manta::init()?;
    let space = SearchSpace::new()
        .with("n_estimators", grid_search([10, 50, 100]))
        .with(
            "max_depth",
            grid_search([None, Some(10), Some(20), Some(30)]),
        )
        .with("min_samples_split", grid_search([2, 5, 10]))
        .with("min_samples_leaf", grid_search([1, 2, 4]));
    let started = Instant::now();
    if std::env::args().any(|a| a == "--sequential") {
        let configs = space.configs(1, &mut rand::rng());
        let mut best = (f64::MIN, Config::default());
        for config in &configs {
            let accuracy =
                train_forest::call(config.clone()).map_err(manta::Report::new)?["accuracy"];
            if accuracy > best.0 {
                best = (accuracy, config.clone());
            }
        }
        println!("best config: {}, accuracy {:.4}", best.1, best.0);
        println!(
            "{} trials one after another in {:.2?}",
            configs.len(),
            started.elapsed()
        );
        return Ok(());
    }
    let results = Tuner::new(&ctx, train_forest, space)
        .with_config(TuneConfig::new("accuracy", Mode::Max))
        .fit()?;
    println!("{}", results.table(5));
    let best = results
        .best()
        .ok_or_else(|| manta::Report::new("no trial finished"))?;
    println!(
        "best config: {}, accuracy {:.4}",
        best.config, best.metrics["accuracy"]
    );
    println!(
        "{} trials in {:.2?}",
        results.trials().len(),
        started.elapsed()
    );
    Ok(())
}
