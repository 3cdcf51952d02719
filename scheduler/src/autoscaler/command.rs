//! The command provider: user-given shell commands launch and terminate nodes, the way to
//! reach machines through SSH, Slurm (`sbatch`/`scancel`) or a cloud's command line.
//!
//! `launch` runs with `sh -c` and these variables set:
//!
//! | variable | value |
//! |---|---|
//! | `MANTA_NODE_NAME` | the node's name (it must join with `--node-name` set to it) |
//! | `MANTA_NODE_TYPE` | its node type |
//! | `MANTA_START_ARGS` | the `manta` arguments that start it: `start --address ... --node-name ...` |
//! | `MANTA_HEAD_ADDRESS` | the head |
//! | `MANTA_TOKEN` | the cluster token (pass it on privately: an environment variable, never an argument others can see) |
//! | `MANTA_NUM_CPUS`, `MANTA_OBJECT_STORE_MEMORY`, `MANTA_RESOURCES` | what the node offers |
//! | `MANTA_PROGRAM` | the head's own `manta` executable |
//!
//! It must exit 0 once the node is on its way; the last line it prints is the node's id
//! (a host name, a job id, a process id; the node's name if it prints nothing). `terminate`
//! runs with `MANTA_PROVIDER_ID` set to that id and `MANTA_NODE_NAME`. Each command has
//! [`COMMAND_DEADLINE`]; one that fails or overruns is a failed launch (or stop), with its
//! exit status and the end of its standard error in the message.

use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;

use super::provider::{LaunchRequest, NodeProvider};
use crate::error::{Error, Result};

/// How long one launch or terminate command may run.
pub const COMMAND_DEADLINE: Duration = Duration::from_secs(300);

/// Runs shell commands to launch and terminate nodes (see the module doc).
pub struct CommandProvider {
    launch: String,
    terminate: String,
}

impl CommandProvider {
    /// A provider running `launch` and `terminate` with `sh -c`.
    pub fn new(launch: String, terminate: String) -> Self {
        Self { launch, terminate }
    }
}

/// Runs `script` with `sh -c` and `env`; its standard output, or why it failed.
async fn run(script: &str, env: &[(&str, String)]) -> std::result::Result<String, String> {
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg(script)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (key, value) in env {
        command.env(key, value);
    }
    let output = tokio::time::timeout(COMMAND_DEADLINE, command.output())
        .await
        .map_err(|_| format!("still running after {} s", COMMAND_DEADLINE.as_secs()))?
        .map_err(|e| format!("could not run sh: {e}"))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let tail: Vec<&str> = stderr.trim().lines().rev().take(3).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        return Err(format!("{}: {}", output.status, tail.join(" / ")));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

#[async_trait::async_trait]
impl NodeProvider for CommandProvider {
    async fn launch(&self, request: &LaunchRequest) -> Result<String> {
        let program = std::env::current_exe()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        let env = [
            ("MANTA_NODE_NAME", request.name.clone()),
            ("MANTA_NODE_TYPE", request.node_type.clone()),
            ("MANTA_START_ARGS", request.start_args().join(" ")),
            ("MANTA_HEAD_ADDRESS", request.head_address.clone()),
            ("MANTA_TOKEN", request.token.secret().to_string()),
            ("MANTA_NUM_CPUS", request.resources.cpus.to_string()),
            (
                "MANTA_OBJECT_STORE_MEMORY",
                request.resources.memory_bytes.to_string(),
            ),
            ("MANTA_RESOURCES", request.custom_resources()),
            ("MANTA_PROGRAM", program),
        ];
        let output = run(&self.launch, &env)
            .await
            .map_err(|message| Error::Provider {
                action: "launch",
                node: request.name.clone(),
                message: format!("the launch command failed: {message}"),
            })?;
        Ok(output
            .lines()
            .rev()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .unwrap_or(&request.name)
            .to_string())
    }

    async fn terminate(&self, id: &str) -> Result<()> {
        let env = [("MANTA_PROVIDER_ID", id.to_string())];
        run(&self.terminate, &env)
            .await
            .map(drop)
            .map_err(|message| Error::Provider {
                action: "terminate",
                node: id.to_string(),
                message: format!("the terminate command failed: {message}"),
            })
    }
}
