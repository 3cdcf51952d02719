//! `manta job`: submit an entrypoint for the head to run as a driver of its cluster, and
//! follow, list and stop jobs (see `manta::scheduler::jobs`).

use std::path::Path;

use anyhow::{Context as _, Result, bail};
use clap::{Args, Subcommand};
use manta::flight::auth::AuthChannel;
use manta::scheduler::jobs::http::state_name;
use manta::scheduler::proto::head_client::HeadClient;
use manta::scheduler::proto::{self, JobState};

use super::StatusArgs;

/// Arguments of `manta job`.
#[derive(Debug, Args)]
pub struct JobArgs {
    #[command(subcommand)]
    command: JobCommand,
    #[command(flatten)]
    head: StatusArgs,
}

#[derive(Debug, Subcommand)]
enum JobCommand {
    /// Run an entrypoint on the head as a driver of the cluster (MANTA_ADDRESS and the token
    /// set); prints the job's id. A file path is uploaded and run; anything else is a command
    /// on the head's machine.
    Submit {
        /// An environment variable for the job, as KEY=VALUE. Repeat for more.
        #[arg(long = "env", value_name = "KEY=VALUE")]
        env: Vec<String>,
        /// Follow the job's log until it ends; exit non-zero unless it succeeded.
        #[arg(long)]
        wait: bool,
        /// The entrypoint and its arguments, after `--`.
        #[arg(last = true, required = true, value_name = "ENTRYPOINT")]
        entrypoint: Vec<String>,
    },
    /// A job's state.
    Status {
        /// The job's id.
        job_id: String,
    },
    /// A job's log.
    Logs {
        /// The job's id.
        job_id: String,
        /// Keep printing what it writes until it ends.
        #[arg(long, short)]
        follow: bool,
    },
    /// Stop a job: kill its driver (its tasks, actors and objects are freed).
    Stop {
        /// The job's id.
        job_id: String,
    },
    /// Every job, oldest first.
    List,
}

/// Runs one `manta job` command.
pub fn run(args: JobArgs) -> Result<()> {
    let (address, token) = super::head_of(&args.head)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let (channel, _) =
            manta::scheduler::cluster_token::connect_head(&address, token.as_ref()).await?;
        let mut head = HeadClient::new(channel);
        match args.command {
            JobCommand::Submit {
                env,
                wait,
                entrypoint,
            } => submit(&mut head, env, wait, entrypoint).await,
            JobCommand::Status { job_id } => {
                let info = get(&mut head, &job_id).await?;
                print_job(&info);
                Ok(())
            }
            JobCommand::Logs { job_id, follow } => print_logs(&mut head, &job_id, follow).await,
            JobCommand::Stop { job_id } => {
                let info = head
                    .stop_job(proto::GetJobRequest { job_id })
                    .await
                    .map_err(|s| anyhow::anyhow!("{}", s.message()))?
                    .into_inner();
                println!("Stopping job {}.", info.job_id);
                Ok(())
            }
            JobCommand::List => {
                let jobs = head
                    .list_jobs(proto::ListJobsRequest {})
                    .await
                    .map_err(|s| anyhow::anyhow!("{}", s.message()))?
                    .into_inner()
                    .jobs;
                println!("{:<22} {:<10} entrypoint", "job", "state");
                for job in jobs {
                    println!(
                        "{:<22} {:<10} {}{}",
                        job.job_id,
                        state_name(job.state),
                        job.entrypoint,
                        if job.message.is_empty() {
                            String::new()
                        } else {
                            format!("  ({})", job.message)
                        }
                    );
                }
                Ok(())
            }
        }
    })
}

async fn submit(
    head: &mut HeadClient<AuthChannel>,
    env: Vec<String>,
    wait: bool,
    entrypoint: Vec<String>,
) -> Result<()> {
    let env = env
        .iter()
        .map(|pair| {
            pair.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .with_context(|| format!("--env {pair}: give KEY=VALUE"))
        })
        .collect::<Result<_>>()?;
    let (program, args) = entrypoint.split_first().expect("clap requires one");
    let mut request = proto::SubmitJobRequest {
        args: args.to_vec(),
        env,
        ..Default::default()
    };
    let path = Path::new(program);
    if path.is_file() {
        request.executable_hash = manta::scheduler::client::upload_executable(head, path)
            .await
            .with_context(|| format!("uploading {program}"))?;
        request.entrypoint_name = path
            .file_name()
            .map_or(program.clone(), |n| n.to_string_lossy().into_owned());
    } else {
        request.command = program.clone();
    }
    let info = head
        .submit_job(request)
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?
        .into_inner();
    println!(
        "Submitted job {} ({}).",
        info.job_id,
        state_name(info.state)
    );
    if !wait {
        println!("Follow it with:  manta job logs {} --follow", info.job_id);
        return Ok(());
    }
    print_logs(head, &info.job_id, true).await?;
    let info = get(head, &info.job_id).await?;
    print_job(&info);
    if info.state != JobState::JobSucceeded as i32 {
        bail!(
            "job {} {}",
            info.job_id,
            state_name(info.state).to_lowercase()
        );
    }
    Ok(())
}

async fn get(head: &mut HeadClient<AuthChannel>, job_id: &str) -> Result<proto::JobInfo> {
    Ok(head
        .get_job(proto::GetJobRequest {
            job_id: job_id.to_string(),
        })
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?
        .into_inner())
}

fn print_job(info: &proto::JobInfo) {
    println!("Job {}: {}", info.job_id, state_name(info.state));
    println!("  entrypoint: {}", info.entrypoint);
    if !info.message.is_empty() {
        println!("  {}", info.message);
    }
}

async fn print_logs(head: &mut HeadClient<AuthChannel>, job_id: &str, follow: bool) -> Result<()> {
    use std::io::Write as _;
    let mut chunks = head
        .job_logs(proto::JobLogsRequest {
            job_id: job_id.to_string(),
            follow,
            offset: 0,
        })
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?
        .into_inner();
    let mut stdout = std::io::stdout();
    while let Some(chunk) = chunks
        .message()
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?
    {
        stdout.write_all(&chunk.data)?;
        stdout.flush()?;
    }
    Ok(())
}
