//! Progress bars, one per running stage (indicatif; drawn only on a terminal).

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

/// The bars of one pipeline run.
pub struct Progress {
    bars: Vec<ProgressBar>,
    _multi: MultiProgress,
}

impl Progress {
    /// One bar per stage, each expecting `tasks` tasks.
    pub fn new(stage_names: &[String], tasks: u64) -> Self {
        let multi = MultiProgress::new();
        let style = ProgressStyle::with_template(
            "{prefix:.bold} [{bar:30.cyan/blue}] {pos}/{len} {msg} {elapsed}",
        )
        .expect("valid template")
        .progress_chars("=> ");
        let bars = stage_names
            .iter()
            .map(|name| {
                let bar = multi.add(ProgressBar::new(tasks));
                bar.set_style(style.clone());
                bar.set_prefix(truncate(name, 48));
                bar
            })
            .collect();
        Self {
            bars,
            _multi: multi,
        }
    }

    /// One task of `stage` finished; `rows` rows out of the stage so far.
    pub fn task_done(&self, stage: usize, rows: u64) {
        if let Some(bar) = self.bars.get(stage) {
            bar.inc(1);
            bar.set_message(format!("{rows} rows"));
        }
    }

    /// The run ended: leave the bars as they are.
    pub fn finish(&self) {
        for bar in &self.bars {
            bar.abandon();
        }
    }
}

fn truncate(name: &str, max: usize) -> String {
    if name.chars().count() <= max {
        name.to_string()
    } else {
        let head: String = name.chars().take(max - 1).collect();
        format!("{head}…")
    }
}
