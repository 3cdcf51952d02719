//! `manta sql`: SQL over tables of files, a query at a time or in a shell.
//!
//! Each `--table NAME=PATH` registers files (a file, a directory or a glob) with the context's
//! SQL session: CSV for `.csv` paths, newline-delimited JSON for `.json`/`.jsonl`/`.ndjson`,
//! Parquet otherwise. With a query, its answer is printed and the command ends; without one, a
//! shell reads statements (ending with `;`, over as many lines as they need) until end of input
//! or `\q`, and a bad statement prints its error and the shell goes on.

use std::io::{BufRead, Write};

use anyhow::{Context as _, Result, bail};
use arrow::array::RecordBatch;
use clap::{Args, ValueEnum};

/// Arguments of `manta sql`.
#[derive(Debug, Args)]
pub struct SqlArgs {
    /// A table, as NAME=PATH (Parquet, CSV or newline-delimited JSON files: a file, a
    /// directory or a glob). Repeat for more tables.
    #[arg(long = "table", value_name = "NAME=PATH")]
    tables: Vec<String>,
    /// Run on the cluster whose head is here (default: embedded, in this process).
    #[arg(long)]
    address: Option<String>,
    /// How to print answers.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
    /// The query; without one, an interactive shell.
    query: Option<String>,
}

/// How `manta sql` prints an answer.
#[derive(Clone, Copy, Debug, ValueEnum)]
enum Format {
    /// An aligned text table.
    Table,
    /// CSV with a header row.
    Csv,
    /// One JSON object per row.
    Json,
}

/// Runs `manta sql`.
pub fn run(args: SqlArgs) -> Result<()> {
    let ctx = manta::init_with(manta::Config {
        address: args.address.clone(),
        ..manta::Config::from_env()?
    })?;
    for table in &args.tables {
        let (name, path) = table
            .split_once('=')
            .with_context(|| format!("--table {table:?}: expected NAME=PATH"))?;
        register(&ctx, name, path).with_context(|| format!("table {name} at {path}"))?;
    }
    match &args.query {
        Some(query) => answer(&ctx, query, args.format),
        None => shell(&ctx, args.format),
    }
}

fn register(ctx: &manta::Context, name: &str, path: &str) -> manta::Result<()> {
    let lower = path.to_ascii_lowercase();
    if lower.ends_with(".csv") {
        ctx.register_csv(name, path)
    } else if [".json", ".jsonl", ".ndjson"]
        .iter()
        .any(|e| lower.ends_with(e))
    {
        ctx.register_json(name, path)
    } else {
        ctx.register_parquet(name, path)
    }
}

/// Runs one query and prints its answer.
fn answer(ctx: &manta::Context, query: &str, format: Format) -> Result<()> {
    let batches = ctx.sql(query)?.to_arrow()?;
    let mut out = std::io::stdout().lock();
    print(&mut out, &batches, format)?;
    out.flush()?;
    Ok(())
}

fn print(out: &mut impl Write, batches: &[RecordBatch], format: Format) -> Result<()> {
    match format {
        Format::Table => writeln!(
            out,
            "{}",
            arrow::util::pretty::pretty_format_batches(batches)?
        )?,
        Format::Csv => {
            let mut writer = arrow::csv::WriterBuilder::new()
                .with_header(true)
                .build(out);
            for batch in batches {
                writer.write(batch)?;
            }
        }
        Format::Json => {
            let mut writer = arrow::json::LineDelimitedWriter::new(out);
            for batch in batches {
                writer.write(batch)?;
            }
            writer.finish()?;
        }
    }
    Ok(())
}

/// Reads statements from standard input until it ends or `\q`.
fn shell(ctx: &manta::Context, format: Format) -> Result<()> {
    let stdin = std::io::stdin();
    let mut statement = String::new();
    prompt(&statement)?;
    for line in stdin.lock().lines() {
        let line = line?;
        if statement.is_empty() && matches!(line.trim(), "\\q" | "quit" | "exit") {
            return Ok(());
        }
        statement.push_str(&line);
        statement.push('\n');
        if line.trim_end().ends_with(';') {
            let query = statement.trim().trim_end_matches(';').to_string();
            statement.clear();
            if !query.trim().is_empty()
                && let Err(e) = answer(ctx, &query, format)
            {
                eprintln!("error: {e:#}");
            }
        }
        prompt(&statement)?;
    }
    if !statement.trim().is_empty() {
        bail!("input ended inside a statement (statements end with ';')");
    }
    Ok(())
}

fn prompt(statement: &str) -> Result<()> {
    let mut err = std::io::stderr().lock();
    write!(
        err,
        "{}",
        if statement.is_empty() {
            "manta> "
        } else {
            "   ... "
        }
    )?;
    err.flush()?;
    Ok(())
}
