//! `manta timeline` (a job's tasks as a Chrome trace, as `ray timeline` writes) and `manta
//! dashboard` (a one-time link that signs a browser in to the dashboard).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, Result};
use clap::Args;
use manta::scheduler::proto::head_client::HeadClient;
use manta::scheduler::proto::{DashboardLinkRequest, TaskEventsRequest};

use super::StatusArgs;

/// How long either command waits for the head.
const DEADLINE: Duration = Duration::from_secs(60);

/// Arguments of `manta timeline`.
#[derive(Debug, Args)]
pub struct TimelineArgs {
    /// The job: a submitted job's id (`manta job list`) or a driver's job id; without it,
    /// every task the head remembers.
    #[arg(long)]
    job: Option<String>,
    /// Where to write the trace (JSON).
    #[arg(long, short, default_value = "timeline.json")]
    output: PathBuf,
    #[command(flatten)]
    head: StatusArgs,
}

/// Arguments of `manta dashboard`.
#[derive(Debug, Args)]
pub struct DashboardArgs {
    /// The dashboard page to open, e.g. /jobs/job-1.
    #[arg(long, default_value = "/")]
    page: String,
    #[command(flatten)]
    head: StatusArgs,
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// Writes the job's task events as a Chrome trace.
pub fn timeline(args: TimelineArgs) -> Result<()> {
    let (address, token) = super::head_of(&args.head)?;
    let events = runtime()?.block_on(async {
        tokio::time::timeout(DEADLINE, async {
            let (channel, _) =
                manta::scheduler::cluster_token::connect_head(&address, token.as_ref()).await?;
            let mut batches = HeadClient::new(channel)
                .task_events(TaskEventsRequest {
                    job: args.job.clone().unwrap_or_default(),
                })
                .await?
                .into_inner();
            let mut events = Vec::new();
            while let Some(batch) = batches.message().await? {
                events.extend(batch.events);
            }
            anyhow::Ok(events)
        })
        .await
        .with_context(|| format!("the head at {address} did not answer within {DEADLINE:?}"))?
    })?;
    let trace = manta::scheduler::events::chrome_trace(&events);
    let text = serde_json::to_vec(&trace)?;
    write_atomically(&args.output, &text)
        .with_context(|| format!("writing {}", args.output.display()))?;
    println!(
        "Wrote {} task run(s) to {} (open it in https://ui.perfetto.dev or chrome://tracing)",
        events.len(),
        args.output.display()
    );
    Ok(())
}

/// Prints a link that signs a browser in to the dashboard.
pub fn dashboard(args: DashboardArgs) -> Result<()> {
    let (address, token) = super::head_of(&args.head)?;
    let reply = runtime()?.block_on(async {
        tokio::time::timeout(DEADLINE, async {
            let (channel, _) =
                manta::scheduler::cluster_token::connect_head(&address, token.as_ref()).await?;
            let reply = HeadClient::new(channel)
                .dashboard_link(DashboardLinkRequest { next: args.page })
                .await?;
            anyhow::Ok(reply.into_inner())
        })
        .await
        .with_context(|| format!("the head at {address} did not answer within {DEADLINE:?}"))?
    })?;
    println!(
        "{}\n(signs one browser in; valid for {} s)",
        reply.url, reply.expires_in_seconds
    );
    Ok(())
}

/// Writes `path` whole or not at all: a temporary file beside it, renamed over it.
fn write_atomically(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => std::path::Path::new("."),
    };
    let mut file = tempfile::NamedTempFile::new_in(dir)?;
    file.write_all(bytes)?;
    file.persist(path).map_err(|e| e.error)?;
    Ok(())
}
