//! The local provider: node daemons as child processes of the head, on its machine
//! (`manta start --address HEAD --node-name NAME --block`), each logging to `<name>.log`.
//!
//! It is what `manta up` uses on one machine, and what the autoscaler's tests run. A node is
//! stopped with SIGTERM (it stops its workers and removes its store), then SIGKILL if it has
//! not exited within [`STOP_GRACE`]. Its children die with the head too: they are started
//! with a parent-death signal, and killed when the provider is dropped.

use std::collections::HashMap;
use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};

use super::provider::{LaunchRequest, NodeProvider};
use crate::error::{Error, Result};

/// How long a stopped node has to exit before it is killed.
pub const STOP_GRACE: Duration = Duration::from_secs(15);

/// Starts node daemons as child processes (see the module doc).
pub struct LocalProvider {
    program: PathBuf,
    log_dir: PathBuf,
    /// The running nodes, by their id (the process id, as text).
    children: Mutex<HashMap<String, Child>>,
}

impl LocalProvider {
    /// Runs `program` (a `manta` executable) for each node; logs go under `log_dir`.
    pub fn new(program: PathBuf, log_dir: PathBuf) -> Self {
        Self {
            program,
            log_dir,
            children: Mutex::default(),
        }
    }
}

fn failed(request: &LaunchRequest, message: String) -> Error {
    Error::Provider {
        action: "launch",
        node: request.name.clone(),
        message,
    }
}

#[async_trait::async_trait]
impl NodeProvider for LocalProvider {
    async fn launch(&self, request: &LaunchRequest) -> Result<String> {
        std::fs::create_dir_all(&self.log_dir).map_err(|source| Error::Io {
            action: "creating the node log directory",
            path: self.log_dir.clone(),
            source,
        })?;
        let log_path = self.log_dir.join(format!("{}.log", request.name));
        let log = std::fs::File::create(&log_path).map_err(|source| Error::Io {
            action: "creating the node log",
            path: log_path.clone(),
            source,
        })?;
        let mut command = Command::new(&self.program);
        command
            .args(request.start_args())
            .args(["--block", "--daemon-child"])
            .env("MANTA_TOKEN", request.token.secret())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .kill_on_drop(true);
        // SAFETY: prctl is async-signal-safe; the node gets SIGTERM if the head dies.
        unsafe {
            command.as_std_mut().pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let mut child = command
            .spawn()
            .map_err(|e| failed(request, format!("running {}: {e}", self.program.display())))?;
        let stdout = child.stdout.take().expect("piped");
        let mut line = String::new();
        // The node says it is ready once registered; it then stops writing to stdout.
        let _ = BufReader::new(stdout).read_line(&mut line).await;
        if !line.starts_with("MANTA_READY") {
            let _ = child.kill().await;
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(5).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            return Err(failed(
                request,
                format!("the node exited before joining: {}", tail.join(" / ")),
            ));
        }
        let id = child.id().unwrap_or_default().to_string();
        self.children.lock().insert(id.clone(), child);
        Ok(id)
    }

    async fn terminate(&self, id: &str) -> Result<()> {
        let Some(mut child) = self.children.lock().remove(id) else {
            return Ok(());
        };
        if let Some(pid) = child.id() {
            // SAFETY: kill(2) of our own child, which has not been reaped (we hold it).
            unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        }
        if tokio::time::timeout(STOP_GRACE, child.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                pid = id,
                "the node did not stop within {} s; killing it",
                STOP_GRACE.as_secs()
            );
            let _ = child.kill().await;
        }
        Ok(())
    }
}
