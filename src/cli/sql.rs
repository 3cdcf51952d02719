//! `manta sql`: SQL over tables of files, a query at a time or in a shell.
//!
//! Each `--table NAME=PATH` registers files (a file, a directory or a glob) with the context's
//! SQL session: CSV for `.csv` paths, newline-delimited JSON for `.json`/`.jsonl`/`.ndjson`,
//! Parquet otherwise. With a query, its answer is printed and the command ends; without one, a
//! shell reads statements (ending with `;`, over as many lines as they need) until end of input
//! or `\q`, and a bad statement prints its error and the shell goes on. At a terminal the
//! shell has line editing and a history kept in `~/.manta_sql_history` (rustyline).
//!
//! With `--flight-sql HOST:PORT` the statements go to a Flight SQL server instead (Manta's,
//! or any other), through arrow-flight's Flight SQL client.

use std::io::{BufRead, IsTerminal, Write};

use anyhow::{Context as _, Result, bail};
use arrow::array::RecordBatch;
use arrow_flight::sql::client::FlightSqlServiceClient;
use clap::{Args, ValueEnum};
use futures::TryStreamExt;

/// Arguments of `manta sql`.
#[derive(Debug, Args)]
pub struct SqlArgs {
    /// A table, as NAME=PATH (Parquet, CSV or newline-delimited JSON files: a file, a
    /// directory or a glob). Repeat for more tables.
    #[arg(long = "table", value_name = "NAME=PATH")]
    tables: Vec<String>,
    /// Run on the cluster whose head is here (default: embedded, in this process).
    #[arg(long, conflicts_with = "flight_sql")]
    address: Option<String>,
    /// Send the statements to the Flight SQL server at HOST:PORT instead.
    #[arg(long, value_name = "HOST:PORT", conflicts_with = "tables")]
    flight_sql: Option<String>,
    /// The cluster token, for --address or --flight-sql (default: the token file of the head
    /// or Flight SQL endpoint at that address, on its machine).
    #[arg(long, env = "MANTA_TOKEN", hide_env_values = true)]
    token: Option<String>,
    #[command(flatten)]
    pub(super) ca: super::CaArgs,
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

/// Where statements run.
enum Engine {
    /// This process's context (embedded, or a driver of a cluster).
    Context(manta::Context),
    /// A Flight SQL server.
    FlightSql {
        runtime: tokio::runtime::Runtime,
        client: Box<FlightSqlServiceClient<tonic::transport::Channel>>,
    },
}

impl Engine {
    fn query(&mut self, query: &str) -> Result<Vec<RecordBatch>> {
        match self {
            Engine::Context(ctx) => Ok(ctx.sql(query)?.to_arrow()?),
            Engine::FlightSql { runtime, client } => runtime.block_on(async {
                let info = client.execute(query.to_string(), None).await?;
                let mut batches = Vec::new();
                for endpoint in info.endpoint {
                    let ticket = endpoint.ticket.context("an endpoint without a ticket")?;
                    let stream = client.do_get(ticket).await?;
                    batches.extend(stream.try_collect::<Vec<_>>().await?);
                }
                Ok(batches)
            }),
        }
    }
}

/// Runs `manta sql`.
pub fn run(args: SqlArgs) -> Result<()> {
    let token = super::token(args.token.as_deref())?;
    let mut engine = match &args.flight_sql {
        Some(address) => {
            let token = manta::scheduler::cluster_token::resolve(token.as_ref(), address)?;
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let client = runtime
                .block_on(async {
                    let url = manta::scheduler::server::normalize_address(address);
                    let channel = manta::flight::tls::endpoint(&url)?.connect().await?;
                    let mut client = FlightSqlServiceClient::new(channel);
                    client.set_token(token.secret().to_string());
                    Ok::<_, anyhow::Error>(client)
                })
                .with_context(|| format!("connecting to the Flight SQL server at {address}"))?;
            Engine::FlightSql {
                runtime,
                client: Box::new(client),
            }
        }
        None => {
            let mut config = manta::Config {
                address: args.address.clone(),
                ..manta::Config::from_env()?
            };
            config.token = token.or(config.token);
            let ctx = manta::init_with(config)?;
            for table in &args.tables {
                let (name, path) = parse_table(table)?;
                register(&ctx, name, path).with_context(|| format!("table {name} at {path}"))?;
            }
            Engine::Context(ctx)
        }
    };
    match &args.query {
        Some(query) => answer(&mut engine, query, args.format),
        None if std::io::stdin().is_terminal() => edited_shell(&mut engine, args.format),
        None => shell(&mut engine, args.format),
    }
}

/// `NAME=PATH` split in two.
pub fn parse_table(table: &str) -> Result<(&str, &str)> {
    table
        .split_once('=')
        .with_context(|| format!("--table {table:?}: expected NAME=PATH"))
}

/// Registers files as a table: CSV, newline-delimited JSON or Parquet by the path's ending.
pub fn register(ctx: &manta::Context, name: &str, path: &str) -> manta::Result<()> {
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
fn answer(engine: &mut Engine, query: &str, format: Format) -> Result<()> {
    let batches = engine.query(query)?;
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

/// What a shell does with a line: the statement so far, and what to do next.
enum Line {
    /// Read another line.
    More,
    /// Leave the shell.
    Quit,
}

/// Adds `line` to `statement`; runs it when it ends with `;`.
fn take_line(engine: &mut Engine, statement: &mut String, line: &str, format: Format) -> Line {
    if statement.is_empty() && matches!(line.trim(), "\\q" | "quit" | "exit") {
        return Line::Quit;
    }
    statement.push_str(line);
    statement.push('\n');
    if line.trim_end().ends_with(';') {
        let query = statement.trim().trim_end_matches(';').to_string();
        statement.clear();
        if !query.trim().is_empty()
            && let Err(e) = answer(engine, &query, format)
        {
            eprintln!("error: {e:#}");
        }
    }
    Line::More
}

/// The shell at a terminal: line editing, and history across sessions.
fn edited_shell(engine: &mut Engine, format: Format) -> Result<()> {
    let mut editor = rustyline::DefaultEditor::new()?;
    let history = std::env::var_os("HOME")
        .map(|home| std::path::PathBuf::from(home).join(".manta_sql_history"));
    if let Some(path) = &history {
        let _ = editor.load_history(path);
    }
    let mut statement = String::new();
    loop {
        let prompt = if statement.is_empty() {
            "manta> "
        } else {
            "   ... "
        };
        match editor.readline(prompt) {
            Ok(line) => {
                let _ = editor.add_history_entry(line.as_str());
                if let Line::Quit = take_line(engine, &mut statement, &line, format) {
                    break;
                }
            }
            // Ctrl-C drops the statement being typed.
            Err(rustyline::error::ReadlineError::Interrupted) => statement.clear(),
            Err(rustyline::error::ReadlineError::Eof) => break,
            Err(e) => return Err(e.into()),
        }
    }
    if let Some(path) = &history {
        let _ = editor.save_history(path);
    }
    Ok(())
}

/// Reads statements from standard input until it ends or `\q`.
fn shell(engine: &mut Engine, format: Format) -> Result<()> {
    let stdin = std::io::stdin();
    let mut statement = String::new();
    prompt(&statement)?;
    for line in stdin.lock().lines() {
        if let Line::Quit = take_line(engine, &mut statement, &line?, format) {
            return Ok(());
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
