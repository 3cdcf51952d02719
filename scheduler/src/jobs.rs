//! Submitted jobs, in Ray Jobs' model: an entrypoint the head runs as a driver of its own
//! cluster, with states, a log on disk, and a way to stop it.
//!
//! ```text
//!  manta job submit -- ./my_pipeline --flag     (or POST /api/jobs)
//!        │ upload ./my_pipeline (content-addressed, as drivers' executables are)
//!        ▼
//!  head: SubmitJob ─▶ spawn the driver: MANTA_ADDRESS=<head>, MANTA_TOKEN=<token>,
//!                     in <jobs dir>/<id>/, its own process group,
//!                     stdout + stderr ─▶ <jobs dir>/<id>.log (capped at JOB_LOG_CAP)
//!        state: PENDING ─▶ RUNNING ─▶ SUCCEEDED | FAILED | STOPPED
//! ```
//!
//! The driver joins the cluster like any other (it registers its own scheduler job and holds
//! it open), so stopping a job is killing its driver's process group: SIGTERM, then SIGKILL
//! after [`STOP_GRACE`]; the head then sees the driver's connection close and ends its
//! scheduler job, which frees its tasks, actors and objects. Job records live in the head's
//! memory (a restarted head has none); their logs stay on disk.

pub mod http;

use std::collections::{BTreeMap, HashMap};
use std::io::Write as _;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use manta_flight::auth::Token;
use parking_lot::Mutex;
use tokio::io::AsyncReadExt as _;
use tokio::sync::watch;

use crate::error::{Error, Result};
use crate::events::now_millis;
use crate::proto::{self, JobState};

/// The most bytes of output kept per job; past it the log says it was cut, and the rest of
/// the output is read and dropped.
pub const JOB_LOG_CAP: u64 = 64 << 20;

/// How long a stopped job's driver has to exit before it is killed.
pub const STOP_GRACE: Duration = Duration::from_secs(10);

/// What the head runs for one job.
#[derive(Debug, Clone)]
pub struct JobSpec {
    /// The program.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
    /// Extra environment variables.
    pub env: BTreeMap<String, String>,
    /// The entrypoint as people know it (for listings).
    pub entrypoint: String,
}

/// The head's jobs: their records, drivers and logs.
pub struct Jobs {
    dir: PathBuf,
    /// The head's address and token, which drivers are given.
    head_address: Mutex<String>,
    token: Token,
    jobs: Mutex<HashMap<String, Job>>,
    /// The most bytes of output kept per job ([`JOB_LOG_CAP`] unless set).
    log_cap: u64,
    /// How long a stopped job's driver has to exit before it is killed ([`STOP_GRACE`]).
    stop_grace: Duration,
    /// Where state changes are recorded, if anywhere.
    events: std::sync::OnceLock<Arc<crate::events::Events>>,
}

struct Job {
    info: proto::JobInfo,
    /// Bumped as the log grows and when the job ends (followers wait on it).
    progress: watch::Sender<u64>,
    stopping: bool,
    /// Told by [`Jobs::stop`]: the supervisor, which owns the driver's process (so never
    /// signals a pid it has reaped), sends SIGTERM to its group, and SIGKILL if the driver
    /// outlives [`STOP_GRACE`].
    stop: Arc<tokio::sync::Notify>,
}

fn ended(state: i32) -> bool {
    [
        JobState::JobSucceeded,
        JobState::JobFailed,
        JobState::JobStopped,
    ]
    .iter()
    .any(|s| *s as i32 == state)
}

impl Jobs {
    /// Jobs whose working directories and logs go under `dir`; their drivers get `token`.
    pub fn new(dir: PathBuf, token: Token) -> Arc<Self> {
        Arc::new(Self {
            dir,
            head_address: Mutex::default(),
            token,
            jobs: Mutex::default(),
            log_cap: JOB_LOG_CAP,
            stop_grace: STOP_GRACE,
            events: std::sync::OnceLock::new(),
        })
    }

    /// Records jobs' state changes in `events` from now on.
    pub fn report_to(&self, events: Arc<crate::events::Events>) {
        let _ = self.events.set(events);
    }

    fn record(&self, id: &str, info: &proto::JobInfo) {
        if let Some(events) = self.events.get() {
            let state = http::state_name(info.state);
            let why = if info.message.is_empty() {
                String::new()
            } else {
                format!(": {}", info.message)
            };
            events.cluster(
                crate::events::EventKind::JobState,
                format!("job {id} {state}{why}"),
            );
        }
    }

    /// [`Jobs::new`] keeping at most `log_cap` bytes of each job's output.
    pub fn with_log_cap(dir: PathBuf, token: Token, log_cap: u64) -> Arc<Self> {
        Arc::new(Self {
            log_cap,
            ..Arc::into_inner(Self::new(dir, token)).expect("just made")
        })
    }

    /// The default directory: `jobs` beside the executable cache.
    pub fn default_dir() -> PathBuf {
        crate::executables::manta_cache_dir().join("jobs")
    }

    /// Tells drivers started from now on where the head is.
    pub fn set_head_address(&self, address: String) {
        *self.head_address.lock() = address;
    }

    fn log_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.log"))
    }

    /// Starts `spec` as a job: its record at once (RUNNING, or FAILED if its driver could not
    /// start, with why).
    pub fn submit(self: &Arc<Self>, spec: JobSpec) -> Result<proto::JobInfo> {
        let id = format!("job-{:016x}", rand::random::<u64>());
        let workdir = self.dir.join(&id);
        std::fs::create_dir_all(&workdir).map_err(|source| Error::Io {
            action: "creating the job's directory",
            path: workdir.clone(),
            source,
        })?;
        let log_path = self.log_path(&id);
        let log = std::fs::File::create(&log_path).map_err(|source| Error::Io {
            action: "creating the job's log",
            path: log_path.clone(),
            source,
        })?;
        let mut command = tokio::process::Command::new(&spec.program);
        command
            .args(&spec.args)
            .envs(&spec.env)
            .env("MANTA_ADDRESS", self.head_address.lock().clone())
            .env("MANTA_TOKEN", self.token.secret())
            .env("MANTA_JOB_ID", &id)
            .current_dir(&workdir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        let (progress, _) = watch::channel(0);
        let mut info = proto::JobInfo {
            job_id: id.clone(),
            entrypoint: spec.entrypoint.clone(),
            state: JobState::JobPending as i32,
            submitted_unix_millis: now_millis(),
            ..Default::default()
        };
        let child = command.spawn();
        match &child {
            Ok(child) => {
                info.state = JobState::JobRunning as i32;
                info.driver_pid = child.id().unwrap_or_default();
            }
            Err(e) => {
                info.state = JobState::JobFailed as i32;
                info.message = format!("could not start {}: {e}", spec.program.display());
                info.ended_unix_millis = now_millis();
                let _ = writeln!(&log, "{}", info.message);
            }
        }
        tracing::info!(job = %id, entrypoint = %spec.entrypoint, "job submitted");
        self.record(&id, &info);
        let stop = Arc::new(tokio::sync::Notify::new());
        self.jobs.lock().insert(
            id.clone(),
            Job {
                info: info.clone(),
                progress,
                stopping: false,
                stop: Arc::clone(&stop),
            },
        );
        if let Ok(child) = child {
            tokio::spawn(Arc::clone(self).supervise(id, child, log, stop));
        }
        Ok(info)
    }

    /// Copies the driver's output to its log, kills its process group if it outlives a stop
    /// by [`STOP_GRACE`], and records how it ended.
    async fn supervise(
        self: Arc<Self>,
        id: String,
        mut child: tokio::process::Child,
        log: std::fs::File,
        stop: Arc<tokio::sync::Notify>,
    ) {
        let log = Arc::new(Mutex::new((log, 0u64)));
        let copy = |pipe: Option<Box<dyn tokio::io::AsyncRead + Unpin + Send>>| {
            let (me, id, log) = (Arc::clone(&self), id.clone(), Arc::clone(&log));
            let cap = self.log_cap;
            async move {
                let Some(mut pipe) = pipe else { return };
                let mut buffer = vec![0u8; 64 << 10];
                while let Ok(n) = pipe.read(&mut buffer).await {
                    if n == 0 {
                        break;
                    }
                    let written = {
                        let mut log = log.lock();
                        let (file, written) = &mut *log;
                        let room = cap.saturating_sub(*written);
                        let keep = (n as u64).min(room) as usize;
                        if keep > 0 && file.write_all(&buffer[..keep]).is_ok() {
                            *written += keep as u64;
                            if keep < n {
                                let note = format!("\n[manta: log cut at {cap} bytes]\n");
                                let _ = file.write_all(note.as_bytes());
                                *written = cap + 1;
                            }
                        }
                        *written
                    };
                    me.progressed(&id, written);
                }
            }
        };
        let stdout = child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn tokio::io::AsyncRead + Unpin + Send>);
        let stderr = child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn tokio::io::AsyncRead + Unpin + Send>);
        let copies = tokio::spawn(futures::future::join(copy(stdout), copy(stderr)));
        // Signals go to the driver's process group only from here, where the driver is owned
        // and not yet reaped (`child.id()` is `None` once it is): never to a pid reused since.
        let signal_group = |child: &tokio::process::Child, signal: libc::c_int| {
            if let Some(pid) = child.id() {
                // SAFETY: kill(2) of the process group of a driver this task owns and has not
                // reaped.
                unsafe { libc::kill(-(pid as i32), signal) };
            }
        };
        let status = tokio::select! {
            status = child.wait() => status,
            () = stop.notified() => {
                signal_group(&child, libc::SIGTERM);
                match tokio::time::timeout(self.stop_grace, child.wait()).await {
                    Ok(status) => status,
                    Err(_) => {
                        tracing::warn!(job = %id, "the driver did not stop within {:?}; killing it", self.stop_grace);
                        signal_group(&child, libc::SIGKILL);
                        child.wait().await
                    }
                }
            }
        };
        // The rest of the output: what is still in the pipes, for at most a few seconds (a
        // child the driver left behind may hold them open).
        let _ = tokio::time::timeout(Duration::from_secs(5), copies).await;
        let mut jobs = self.jobs.lock();
        let Some(job) = jobs.get_mut(&id) else { return };
        let (state, message) = match status {
            _ if job.stopping => (JobState::JobStopped, "stopped".to_string()),
            Ok(status) if status.success() => (JobState::JobSucceeded, String::new()),
            Ok(status) => (
                JobState::JobFailed,
                format!("the driver exited with {status}"),
            ),
            Err(e) => (JobState::JobFailed, format!("waiting for the driver: {e}")),
        };
        job.info.state = state as i32;
        job.info.message = message;
        job.info.ended_unix_millis = now_millis();
        job.info.driver_pid = 0;
        tracing::info!(job = %id, state = ?state, "job ended");
        self.record(&id, &job.info);
        job.progress.send_modify(|n| *n += 1);
    }

    fn progressed(&self, id: &str, written: u64) {
        if let Some(job) = self.jobs.lock().get_mut(id) {
            job.info.log_bytes = written.min(self.log_cap);
            job.progress.send_modify(|n| *n += 1);
        }
    }

    /// The job's record.
    pub fn get(&self, id: &str) -> Result<proto::JobInfo> {
        self.jobs
            .lock()
            .get(id)
            .map(|job| job.info.clone())
            .ok_or_else(|| Error::NoSuchJob {
                job: id.to_string(),
            })
    }

    /// Every job, oldest first.
    pub fn list(&self) -> Vec<proto::JobInfo> {
        let mut jobs: Vec<_> = self.jobs.lock().values().map(|j| j.info.clone()).collect();
        jobs.sort_by_key(|j| (j.submitted_unix_millis, j.job_id.clone()));
        jobs
    }

    /// Stops the job: SIGTERM to its driver's process group, SIGKILL after [`STOP_GRACE`]
    /// (both sent by the job's supervisor, which owns the driver's process).
    /// Its record says STOPPED once the driver has exited.
    pub fn stop(&self, id: &str) -> Result<proto::JobInfo> {
        let mut jobs = self.jobs.lock();
        let job = jobs.get_mut(id).ok_or_else(|| Error::NoSuchJob {
            job: id.to_string(),
        })?;
        if ended(job.info.state) || job.info.driver_pid == 0 {
            return Ok(job.info.clone());
        }
        job.stopping = true;
        tracing::info!(job = %id, "stopping the job");
        // Its supervisor signals the driver (see `supervise`).
        job.stop.notify_one();
        Ok(job.info.clone())
    }

    /// The job's log from `offset`: what is there now, then (with `follow`) what is written
    /// until the job ends.
    pub fn logs(
        self: &Arc<Self>,
        id: &str,
        offset: u64,
        follow: bool,
    ) -> Result<tokio_stream::wrappers::ReceiverStream<Result<bytes::Bytes>>> {
        let progress = {
            let jobs = self.jobs.lock();
            let job = jobs.get(id).ok_or_else(|| Error::NoSuchJob {
                job: id.to_string(),
            })?;
            job.progress.subscribe()
        };
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let (me, id) = (Arc::clone(self), id.to_string());
        tokio::spawn(async move {
            if let Err(e) = me.send_log(&id, offset, follow, progress, &tx).await {
                let _ = tx.send(Err(e)).await;
            }
        });
        Ok(tokio_stream::wrappers::ReceiverStream::new(rx))
    }

    async fn send_log(
        &self,
        id: &str,
        offset: u64,
        follow: bool,
        mut progress: watch::Receiver<u64>,
        tx: &tokio::sync::mpsc::Sender<Result<bytes::Bytes>>,
    ) -> Result<()> {
        let path = self.log_path(id);
        let io = |action: &'static str| {
            let path = path.clone();
            move |source| Error::Io {
                action,
                path,
                source,
            }
        };
        let mut file = tokio::fs::File::open(&path)
            .await
            .map_err(io("opening the job's log"))?;
        tokio::io::AsyncSeekExt::seek(&mut file, std::io::SeekFrom::Start(offset))
            .await
            .map_err(io("reading the job's log"))?;
        let mut buffer = vec![0u8; 64 << 10];
        loop {
            progress.borrow_and_update();
            let done = ended(self.get(id)?.state);
            // Everything written so far (and, if the job had ended, all there will be).
            loop {
                let n = file
                    .read(&mut buffer)
                    .await
                    .map_err(io("reading the job's log"))?;
                if n == 0 {
                    break;
                }
                if tx
                    .send(Ok(bytes::Bytes::copy_from_slice(&buffer[..n])))
                    .await
                    .is_err()
                {
                    return Ok(());
                }
            }
            if !follow || done || progress.changed().await.is_err() {
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt as _;

    use super::*;

    fn spec(script: &str) -> JobSpec {
        JobSpec {
            program: "sh".into(),
            args: vec!["-c".into(), script.into()],
            env: [("WORD".to_string(), "hello".to_string())].into(),
            entrypoint: script.into(),
        }
    }

    /// The whole log, following it until the job ends.
    async fn followed(jobs: &Arc<Jobs>, id: &str) -> String {
        let mut text = Vec::new();
        let mut log = jobs.logs(id, 0, true).unwrap();
        while let Some(chunk) = log.next().await {
            text.extend_from_slice(&chunk.unwrap());
        }
        String::from_utf8(text).unwrap()
    }

    #[tokio::test]
    async fn jobs_succeed_fail_and_keep_their_output_within_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let jobs = Jobs::with_log_cap(dir.path().into(), Token::generate(), 1000);
        jobs.set_head_address("127.0.0.1:1".into());

        let ok = jobs
            .submit(spec("echo $WORD at $MANTA_ADDRESS; pwd"))
            .unwrap();
        let log = followed(&jobs, &ok.job_id).await;
        let workdir = dir.path().join(&ok.job_id).canonicalize().unwrap();
        assert_eq!(
            log,
            format!("hello at 127.0.0.1:1\n{}\n", workdir.display())
        );
        assert_eq!(
            jobs.get(&ok.job_id).unwrap().state,
            JobState::JobSucceeded as i32
        );

        let chatty = jobs
            .submit(spec("yes | head -c 100000; echo done >&2"))
            .unwrap();
        let log = followed(&jobs, &chatty.job_id).await;
        assert!(log.starts_with("y\ny\n"), "{log}");
        assert!(log.ends_with("\n[manta: log cut at 1000 bytes]\n"), "{log}");
        assert_eq!(log.len(), 1000 + "\n[manta: log cut at 1000 bytes]\n".len());
        let chatty = jobs.get(&chatty.job_id).unwrap();
        assert_eq!(
            (chatty.state, chatty.log_bytes),
            (JobState::JobSucceeded as i32, 1000)
        );

        let failing = jobs.submit(spec("exit 7")).unwrap();
        followed(&jobs, &failing.job_id).await;
        let failing = jobs.get(&failing.job_id).unwrap();
        assert_eq!(failing.state, JobState::JobFailed as i32);
        assert!(
            failing.message.contains("exit status: 7"),
            "{}",
            failing.message
        );

        let missing = jobs
            .submit(JobSpec {
                program: dir.path().join("no-such-program"),
                ..spec("")
            })
            .unwrap();
        assert_eq!(missing.state, JobState::JobFailed as i32);
        assert!(
            missing.message.contains("no-such-program"),
            "{}",
            missing.message
        );
        assert!(
            followed(&jobs, &missing.job_id)
                .await
                .contains("could not start")
        );

        let listed: Vec<String> = jobs.list().into_iter().map(|j| j.job_id).collect();
        assert_eq!(listed.len(), 4);
        assert!(matches!(jobs.get("job-nope"), Err(Error::NoSuchJob { .. })));
    }

    #[tokio::test]
    async fn a_stopped_job_and_its_children_are_killed() {
        let dir = tempfile::tempdir().unwrap();
        let jobs = Jobs::new(dir.path().into(), Token::generate());
        // A driver whose own child ignores nothing: both are in the job's process group.
        let job = jobs.submit(spec("sleep 600 & echo started; wait")).unwrap();
        let mut log = jobs.logs(&job.job_id, 0, true).unwrap();
        assert_eq!(&log.next().await.unwrap().unwrap()[..], b"started\n");
        jobs.stop(&job.job_id).unwrap();
        assert!(log.next().await.is_none(), "the log ends when the job does");
        let stopped = jobs.get(&job.job_id).unwrap();
        assert_eq!(stopped.state, JobState::JobStopped as i32);
        // Every process of the job's group is gone (or a zombie waiting to be reaped): the
        // signal reached the driver's child too.
        group_ends(job.driver_pid).await;
    }

    /// A driver that ignores SIGTERM is killed once its grace is over, and the job is STOPPED.
    #[tokio::test]
    async fn a_driver_that_ignores_a_stop_is_killed_after_its_grace() {
        let dir = tempfile::tempdir().unwrap();
        let jobs = Arc::new(Jobs {
            stop_grace: Duration::from_millis(200),
            ..Arc::into_inner(Jobs::new(dir.path().into(), Token::generate())).unwrap()
        });
        let job = jobs
            .submit(spec("trap '' TERM; echo started; sleep 600 & wait; wait"))
            .unwrap();
        let mut log = jobs.logs(&job.job_id, 0, true).unwrap();
        assert_eq!(&log.next().await.unwrap().unwrap()[..], b"started\n");
        jobs.stop(&job.job_id).unwrap();
        let rest = tokio::time::timeout(Duration::from_secs(30), log.next())
            .await
            .expect("the job ends once its grace is over");
        assert!(rest.is_none(), "the log ends when the job does");
        let stopped = jobs.get(&job.job_id).unwrap();
        assert_eq!(stopped.state, JobState::JobStopped as i32);
        group_ends(job.driver_pid).await;
    }

    /// Waits (up to 10 s, then fails) until no process of group `group` is alive: the kernel
    /// tears a killed group's processes down a moment after the driver's end is seen (its log
    /// closes first), so a check made at once failed now and then.
    async fn group_ends(group: u32) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !live_members(group).is_empty() {
            assert!(
                std::time::Instant::now() < deadline,
                "the job's process group outlived it: {:?}",
                live_members(group)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The processes of group `group` that are not zombies.
    fn live_members(group: u32) -> Vec<u32> {
        std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| {
                let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                    return false;
                };
                // After the parenthesised name: state, parent, process group.
                let mut fields = stat
                    .rsplit_once(')')
                    .map_or("", |(_, rest)| rest)
                    .split_whitespace();
                let state = fields.next();
                let group_of = fields.nth(1).and_then(|g| g.parse::<u32>().ok());
                state != Some("Z") && group_of == Some(group)
            })
            .collect()
    }
}
