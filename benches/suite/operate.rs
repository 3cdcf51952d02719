//! `autoscale` and `jobs`: how a cluster reacts, measured from outside as its users see it.
//!
//! `autoscale`, on a head started by `manta up` whose config has a one-CPU node type with
//! `min_nodes = 0` (no node up yet): `--count` (40) one-CPU tasks of 1 s each arrive at once.
//! Prints the seconds from the burst to the first task running on a new node, to every
//! `max_nodes` node up, and from the last task's end to the last node stopped (which includes
//! the config's `idle_timeout_s`).
//!
//! `jobs`, on any head: the seconds from `SubmitJob` to the job's first log line, for a
//! command that prints at once (`sh -c 'echo ready'`: the job machinery alone) and for the
//! quickstart (`--job PATH`, default `target/release/examples/quickstart`, at `--scale`), whose
//! first line comes once its pipeline ran; and the quickstart's submit-to-end.
//!
//! ```text
//! manta up cluster.toml   # [head] num_cpus = 0; [node_types.cpu1] num_cpus = 1, max_nodes = 3
//! cargo bench --bench workloads -- autoscale --address A
//! manta start --head --port 0
//! cargo bench --bench workloads -- jobs --address A --scale 0.1 --runs 3
//! ```

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::StreamExt as _;
use manta::scheduler::proto::head_client::HeadClient;
use manta::scheduler::proto::{self, JobState};

use crate::Args;

fn unix_seconds() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Holds a CPU for `ms`; answers when it started (Unix seconds).
#[manta::remote]
fn hold_cpu(ms: u64) -> f64 {
    let started = unix_seconds();
    std::thread::sleep(Duration::from_millis(ms));
    started
}

async fn head(address: &str) -> anyhow::Result<HeadClient<manta::flight::auth::AuthChannel>> {
    let (channel, _) = manta::scheduler::cluster_token::connect_head(address, None).await?;
    Ok(HeadClient::new(channel))
}

pub fn autoscale(args: &Args) -> anyhow::Result<()> {
    let address = args.address.clone().ok_or_else(|| {
        anyhow::anyhow!("autoscale runs on a head started by `manta up`: pass --address")
    })?;
    let runtime = tokio::runtime::Runtime::new()?;
    let status = runtime.block_on(async {
        anyhow::Ok(
            head(&address)
                .await?
                .list_nodes(proto::ListNodesRequest {})
                .await?
                .into_inner(),
        )
    })?;
    let autoscaler = status.autoscaler.ok_or_else(|| {
        anyhow::anyhow!("the head at {address} runs no autoscaler (start it with manta up)")
    })?;
    let max_nodes: u32 = autoscaler.node_types.iter().map(|t| t.max_nodes).sum();
    anyhow::ensure!(
        status.nodes.iter().all(|n| n.name.is_empty()),
        "autoscaled nodes are still up: wait for them to stop"
    );
    let named_alive = |reply: &proto::ListNodesReply| {
        reply
            .nodes
            .iter()
            .filter(|n| n.alive && !n.name.is_empty())
            .count() as u32
    };
    let mut config = manta::Config::from_env()?;
    config.address = Some(address.clone());
    let ctx = manta::init_with(config)?;
    let count = args.count.unwrap_or(40);

    let burst = unix_seconds();
    let started = Instant::now();
    let calls: Vec<_> = (0..count).map(|_| hold_cpu.remote(&ctx, 1000)).collect();
    // Watch the node table until every node is up.
    let all_up = runtime.block_on(async {
        let mut head = head(&address).await?;
        loop {
            let reply = head
                .list_nodes(proto::ListNodesRequest {})
                .await?
                .into_inner();
            if named_alive(&reply) >= max_nodes {
                return anyhow::Ok(started.elapsed().as_secs_f64());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })?;
    let starts: Vec<f64> = ctx.get_all(&calls)?;
    let done = unix_seconds();
    let first = starts.iter().copied().fold(f64::INFINITY, f64::min) - burst;
    drop(ctx);
    let scaled_down = runtime.block_on(async {
        let mut head = head(&address).await?;
        loop {
            let reply = head
                .list_nodes(proto::ListNodesRequest {})
                .await?
                .into_inner();
            if named_alive(&reply) == 0 {
                return anyhow::Ok(unix_seconds() - done);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })?;
    println!(
        "RESULT workload=autoscale tasks={count} max_nodes={max_nodes} first_node_task_seconds={first:.2} \
         all_nodes_up_seconds={all_up:.2} idle_to_scaled_down_seconds={scaled_down:.2}"
    );
    Ok(())
}

/// Submits a job and follows its log: (seconds to the first line, seconds to the end, state).
async fn time_job(
    head: &mut HeadClient<manta::flight::auth::AuthChannel>,
    request: proto::SubmitJobRequest,
) -> anyhow::Result<(f64, f64, String)> {
    let started = Instant::now();
    let job = head.submit_job(request).await?.into_inner();
    let mut log = head
        .job_logs(proto::JobLogsRequest {
            job_id: job.job_id.clone(),
            follow: true,
            offset: 0,
        })
        .await?
        .into_inner();
    let mut first_line = None;
    while let Some(chunk) = log.next().await {
        if first_line.is_none() && chunk?.data.contains(&b'\n') {
            first_line = Some(started.elapsed().as_secs_f64());
        }
    }
    let end = started.elapsed().as_secs_f64();
    let info = head
        .get_job(proto::GetJobRequest { job_id: job.job_id })
        .await?
        .into_inner();
    let state = manta::scheduler::jobs::http::state_name(info.state).to_string();
    anyhow::ensure!(
        info.state == JobState::JobSucceeded as i32,
        "the job {state}: {}",
        info.message
    );
    Ok((first_line.unwrap_or(end), end, state))
}

pub fn jobs(args: &Args) -> anyhow::Result<()> {
    let address = args
        .address
        .clone()
        .ok_or_else(|| anyhow::anyhow!("jobs runs on a cluster: pass --address"))?;
    let quickstart = args
        .job
        .clone()
        .unwrap_or_else(|| "target/release/examples/quickstart".into());
    anyhow::ensure!(
        quickstart.is_file(),
        "{} is missing: cargo build --release --example quickstart",
        quickstart.display()
    );
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let mut head = head(&address).await?;
        let uploading = Instant::now();
        let hash = manta::scheduler::client::upload_executable(&mut head, &quickstart).await?;
        println!(
            "RESULT workload=jobs case=upload seconds={:.3} bytes={}",
            uploading.elapsed().as_secs_f64(),
            std::fs::metadata(&quickstart)?.len()
        );
        for _ in 0..args.runs {
            let echo = proto::SubmitJobRequest {
                command: "sh".into(),
                args: vec!["-c".into(), "echo ready".into()],
                ..Default::default()
            };
            let (first, _, _) = time_job(&mut head, echo).await?;
            println!("RESULT workload=jobs case=echo first_line_seconds={first:.3}");
            let run = proto::SubmitJobRequest {
                executable_hash: hash.clone(),
                args: vec!["--scale".into(), args.scale.to_string(), "--output".into(), "out".into()],
                entrypoint_name: "quickstart".into(),
                ..Default::default()
            };
            let (first, end, _) = time_job(&mut head, run).await?;
            println!(
                "RESULT workload=jobs case=quickstart scale={} first_line_seconds={first:.3} seconds={end:.3}",
                args.scale
            );
        }
        anyhow::Ok(())
    })
}
