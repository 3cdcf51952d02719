//! The jobs API over HTTP and JSON, for scripts and the dashboard: the same
//! operations as `manta job`, on the head's `--dashboard-port`.
//!
//! | request | answer |
//! |---|---|
//! | `POST /api/jobs` with `{"entrypoint": ["cmd", "arg", ...], "env": {"K": "V"}}` | the new job |
//! | `GET /api/jobs` | every job, oldest first |
//! | `GET /api/jobs/{id}` | the job |
//! | `GET /api/jobs/{id}/logs` | its log so far, as text |
//! | `POST /api/jobs/{id}/stop` | the job, being stopped |
//!
//! A job is `{"job_id", "entrypoint", "state": "RUNNING", "message", "submitted_unix_millis",
//! "ended_unix_millis", "driver_pid", "log_bytes"}`. Over HTTP the entrypoint is a command on
//! the head's machine (uploading a binary takes `manta job submit`). Every request must carry
//! the cluster token (`Authorization: Bearer <token>`) or a dashboard session, or gets 401
//! before anything is done ([`crate::dashboard::login`]).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{JobSpec, Jobs};
use crate::error::Error;
use crate::proto::{self, JobState};

/// The routes with no check of their own (the dashboard puts its login in front).
pub fn routes(jobs: Arc<Jobs>) -> Router {
    Router::new()
        .route("/api/jobs", post(submit).get(list))
        .route("/api/jobs/{id}", get(one))
        .route("/api/jobs/{id}/logs", get(logs))
        .route("/api/jobs/{id}/stop", post(stop))
        .with_state(jobs)
}

/// A job as JSON.
pub fn job_json(info: &proto::JobInfo) -> Value {
    json!({
        "job_id": info.job_id,
        "entrypoint": info.entrypoint,
        "state": state_name(info.state),
        "message": info.message,
        "submitted_unix_millis": info.submitted_unix_millis,
        "ended_unix_millis": info.ended_unix_millis,
        "driver_pid": info.driver_pid,
        "log_bytes": info.log_bytes,
    })
}

/// A job state's name: `PENDING`, `RUNNING`, `SUCCEEDED`, `FAILED` or `STOPPED`.
pub fn state_name(state: i32) -> &'static str {
    match JobState::try_from(state) {
        Ok(JobState::JobPending) => "PENDING",
        Ok(JobState::JobRunning) => "RUNNING",
        Ok(JobState::JobSucceeded) => "SUCCEEDED",
        Ok(JobState::JobFailed) => "FAILED",
        Ok(JobState::JobStopped) => "STOPPED",
        Err(_) => "UNKNOWN",
    }
}

fn failure(error: Error) -> Response {
    let status = match error {
        Error::NoSuchJob { .. } => StatusCode::NOT_FOUND,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    (status, Json(json!({"error": error.to_string()}))).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Submit {
    entrypoint: Vec<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
}

async fn submit(State(jobs): State<Arc<Jobs>>, Json(body): Json<Submit>) -> Response {
    let Some((program, args)) = body.entrypoint.split_first() else {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "entrypoint is empty: give [\"command\", \"arg\", ...]"})),
        )
            .into_response();
    };
    let spec = JobSpec {
        program: PathBuf::from(program),
        args: args.to_vec(),
        env: body.env,
        entrypoint: body.entrypoint.join(" "),
    };
    match jobs.submit(spec) {
        Ok(info) => Json(job_json(&info)).into_response(),
        Err(e) => failure(e),
    }
}

async fn list(State(jobs): State<Arc<Jobs>>) -> Response {
    Json(Value::Array(jobs.list().iter().map(job_json).collect())).into_response()
}

async fn one(State(jobs): State<Arc<Jobs>>, Path(id): Path<String>) -> Response {
    match jobs.get(&id) {
        Ok(info) => Json(job_json(&info)).into_response(),
        Err(e) => failure(e),
    }
}

async fn stop(State(jobs): State<Arc<Jobs>>, Path(id): Path<String>) -> Response {
    match jobs.stop(&id) {
        Ok(info) => Json(job_json(&info)).into_response(),
        Err(e) => failure(e),
    }
}

async fn logs(State(jobs): State<Arc<Jobs>>, Path(id): Path<String>) -> Response {
    let stream = match jobs.logs(&id, 0, false) {
        Ok(stream) => stream,
        Err(e) => return failure(e),
    };
    let mut text = Vec::new();
    let mut stream = std::pin::pin!(stream);
    while let Some(chunk) = futures::StreamExt::next(&mut stream).await {
        match chunk {
            Ok(chunk) => text.extend_from_slice(&chunk),
            Err(e) => return failure(e),
        }
    }
    ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response()
}
