//! The generated gRPC code (from `proto/manta.proto`) and conversions to the engine's types.

#![allow(missing_docs, clippy::large_enum_variant)]

tonic::include_proto!("manta.v1");

use std::sync::Arc;

use bytes::Bytes;
use manta_engine::{Location, NodeId, ObjectId, ObjectMeta};

use crate::error::{Error, Result};

impl From<&manta_engine::Resources> for Resources {
    fn from(r: &manta_engine::Resources) -> Self {
        Self {
            cpus: r.cpus,
            memory_bytes: r.memory_bytes,
            custom: r.custom.iter().map(|(k, v)| (k.clone(), *v)).collect(),
        }
    }
}

impl From<Resources> for manta_engine::Resources {
    fn from(r: Resources) -> Self {
        Self {
            cpus: r.cpus,
            memory_bytes: r.memory_bytes,
            custom: r.custom.into_iter().collect(),
        }
    }
}

/// Sums store usages (of several nodes: the cluster's).
impl std::ops::AddAssign<&StoreUsage> for StoreUsage {
    fn add_assign(&mut self, u: &StoreUsage) {
        self.budget_bytes += u.budget_bytes;
        self.resident_bytes += u.resident_bytes;
        self.spilled_bytes += u.spilled_bytes;
        self.objects += u.objects;
        self.spilled_bytes_total += u.spilled_bytes_total;
        self.restored_bytes_total += u.restored_bytes_total;
        self.recycled_bytes += u.recycled_bytes;
    }
}

impl From<manta_engine::StoreUsage> for self::StoreUsage {
    fn from(u: manta_engine::StoreUsage) -> Self {
        Self {
            budget_bytes: u.budget_bytes,
            resident_bytes: u.resident_bytes,
            spilled_bytes: u.spilled_bytes,
            objects: u.objects,
            spilled_bytes_total: u.spilled_bytes_total,
            restored_bytes_total: u.restored_bytes_total,
            recycled_bytes: u.recycled_bytes,
        }
    }
}

impl From<self::StoreUsage> for manta_engine::StoreUsage {
    fn from(u: self::StoreUsage) -> Self {
        manta_engine::StoreUsage {
            budget_bytes: u.budget_bytes,
            resident_bytes: u.resident_bytes,
            spilled_bytes: u.spilled_bytes,
            objects: u.objects,
            spilled_bytes_total: u.spilled_bytes_total,
            restored_bytes_total: u.restored_bytes_total,
            recycled_bytes: u.recycled_bytes,
        }
    }
}

impl From<manta_engine::TaskStats> for TaskStats {
    fn from(s: manta_engine::TaskStats) -> Self {
        Self {
            wall_ns: s.wall_ns,
            cpu_ns: s.cpu_ns,
            pulled_bytes: s.pulled_bytes,
            pulled_objects: s.pulled_objects,
            spilled_bytes: s.spilled_bytes,
            peak_memory_bytes: s.peak_memory_bytes,
            inputs_ns: s.inputs_ns,
            output_ns: s.output_ns,
        }
    }
}

impl From<TaskStats> for manta_engine::TaskStats {
    fn from(s: TaskStats) -> Self {
        Self {
            wall_ns: s.wall_ns,
            cpu_ns: s.cpu_ns,
            pulled_bytes: s.pulled_bytes,
            pulled_objects: s.pulled_objects,
            spilled_bytes: s.spilled_bytes,
            peak_memory_bytes: s.peak_memory_bytes,
            inputs_ns: s.inputs_ns,
            output_ns: s.output_ns,
        }
    }
}

impl From<&ObjectMeta> for ObjectLocation {
    fn from(m: &ObjectMeta) -> Self {
        Self {
            object_id: Bytes::copy_from_slice(m.id.as_bytes()),
            node_id: Bytes::copy_from_slice(m.location.node.as_bytes()),
            address: m.location.flight_address.to_string(),
            size_bytes: m.size_bytes,
            num_rows: m.num_rows,
            inline: None,
        }
    }
}

impl<T> From<&manta_engine::ObjectRef<T>> for ObjectLocation {
    fn from(object: &manta_engine::ObjectRef<T>) -> Self {
        Self {
            inline: object.inline_value().cloned(),
            ..Self::from(object.meta())
        }
    }
}

impl ObjectLocation {
    /// The engine's view of this location.
    pub fn to_meta(&self) -> Result<ObjectMeta> {
        Ok(ObjectMeta {
            id: ObjectId::from_slice(&self.object_id)?,
            location: Location {
                node: NodeId::from_slice(&self.node_id)?,
                flight_address: Arc::from(self.address.as_str()),
            },
            size_bytes: self.size_bytes,
            num_rows: self.num_rows,
        })
    }
}

impl TaskError {
    /// A task error of `kind` with a message.
    pub fn new(kind: task_error::Kind, message: impl Into<String>) -> Self {
        Self {
            kind: kind as i32,
            message: message.into(),
            ..Default::default()
        }
    }

    /// The wire form of a scheduler error.
    pub fn from_error(error: &Error) -> Self {
        use task_error::Kind;
        let mut e = TaskError::new(Kind::Internal, error.to_string());
        match error {
            Error::UserFunction {
                function,
                input,
                message,
            } => {
                e.kind = Kind::UserFunction as i32;
                (e.function, e.input, e.message) =
                    (function.clone(), input.clone(), message.clone());
            }
            Error::UserPanic {
                function,
                input,
                message,
            } => {
                e.kind = Kind::UserPanic as i32;
                (e.function, e.input, e.message) =
                    (function.clone(), input.clone(), message.clone());
            }
            Error::FunctionNotFound { function } => {
                e.kind = Kind::FunctionNotFound as i32;
                e.function = function.clone();
            }
            Error::FetchFailed {
                node,
                object,
                message,
            } => {
                e.kind = Kind::FetchFailed as i32;
                (e.node, e.message) = (node.clone(), message.clone());
                e.object_id = Bytes::copy_from_slice(object.as_bytes());
            }
            Error::Flight(manta_flight::Error::FetchFailed {
                node,
                object,
                status,
            }) => {
                e.kind = Kind::FetchFailed as i32;
                (e.node, e.message) = (node.clone(), status.message().to_string());
                e.object_id = Bytes::copy_from_slice(object.as_bytes());
            }
            Error::Flight(manta_flight::Error::Connect { address, source }) => {
                e.kind = Kind::FetchFailed as i32;
                (e.node, e.message) = (address.clone(), source.to_string());
            }
            Error::ObjectLost { object, node } => {
                e.kind = Kind::ObjectLost as i32;
                e.node = node.clone();
                e.object_id = Bytes::copy_from_slice(object.as_bytes());
            }
            Error::ActorDied {
                actor,
                call,
                message,
            } => {
                e.kind = Kind::ActorDied as i32;
                (e.function, e.input, e.message) = (actor.clone(), call.clone(), message.clone());
            }
            Error::WorkerDied {
                task,
                node,
                message,
            } => {
                e.kind = Kind::WorkerDied as i32;
                (e.input, e.node, e.message) = (task.clone(), node.clone(), message.clone());
            }
            Error::NodeLost {
                node,
                task,
                message,
            } => {
                e.kind = Kind::NodeLost as i32;
                (e.input, e.node, e.message) = (task.clone(), node.clone(), message.clone());
            }
            Error::Infeasible { .. } => e.kind = Kind::Infeasible as i32,
            _ => {}
        }
        e
    }

    /// The scheduler error this message stands for.
    pub fn into_error(self) -> Error {
        use task_error::Kind;
        let object = || {
            ObjectId::from_slice(&self.object_id).unwrap_or_else(|_| ObjectId::from_bytes([0; 16]))
        };
        match Kind::try_from(self.kind).unwrap_or(Kind::Internal) {
            Kind::UserFunction => Error::UserFunction {
                function: self.function,
                input: self.input,
                message: self.message,
            },
            Kind::UserPanic => Error::UserPanic {
                function: self.function,
                input: self.input,
                message: self.message,
            },
            Kind::FunctionNotFound => Error::FunctionNotFound {
                function: self.function,
            },
            Kind::FetchFailed => Error::FetchFailed {
                object: object(),
                node: self.node,
                message: self.message,
            },
            Kind::ObjectLost => Error::ObjectLost {
                object: object(),
                node: self.node,
            },
            Kind::WorkerDied => Error::WorkerDied {
                task: self.input,
                node: self.node,
                message: self.message,
            },
            Kind::NodeLost => Error::NodeLost {
                task: self.input,
                node: self.node,
                message: self.message,
            },
            Kind::ActorDied => Error::ActorDied {
                actor: self.function,
                call: self.input,
                message: self.message,
            },
            Kind::Infeasible | Kind::Internal => Error::Internal(self.message),
        }
    }
}

impl From<Result<TaskSuccess>> for TaskReply {
    fn from(outcome: Result<TaskSuccess>) -> Self {
        match outcome {
            Ok(success) => Self {
                result: Some(task_reply::Result::Success(success)),
            },
            Err(error) => Self::failed(&error),
        }
    }
}

impl TaskReply {
    /// A failed reply.
    pub fn failed(error: &Error) -> Self {
        Self {
            result: Some(task_reply::Result::Error(TaskError::from_error(error))),
        }
    }
}

/// Parses 16 id bytes from a message field, as a gRPC status on failure.
pub fn parse_id<T>(
    bytes: &[u8],
    parse: fn(&[u8]) -> manta_engine::Result<T>,
    field: &str,
) -> Result<T, tonic::Status> {
    parse(bytes)
        .map_err(|_| tonic::Status::invalid_argument(format!("{field} is not a 16-byte id")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_errors_round_trip_by_kind() {
        let object = ObjectId::random();
        let errors = [
            Error::UserFunction {
                function: "f".into(),
                input: "block 1".into(),
                message: "bad".into(),
            },
            Error::UserPanic {
                function: "f".into(),
                input: "block 2".into(),
                message: "boom".into(),
            },
            Error::FunctionNotFound {
                function: "g".into(),
            },
            Error::FetchFailed {
                node: "http://a".into(),
                object,
                message: "gone".into(),
            },
            Error::ObjectLost {
                object,
                node: "http://a".into(),
            },
            Error::WorkerDied {
                task: "t".into(),
                node: "http://b".into(),
                message: "signal 9".into(),
            },
            Error::NodeLost {
                node: "http://b".into(),
                task: "t".into(),
                message: "no heartbeat".into(),
            },
            Error::ActorDied {
                actor: "Counter(1a2b)".into(),
                call: "Counter::incr".into(),
                message: "its worker exited".into(),
            },
        ];
        for error in errors {
            let back = TaskError::from_error(&error).into_error();
            assert_eq!(back.to_string(), error.to_string());
            assert_eq!(
                std::mem::discriminant(&back),
                std::mem::discriminant(&error)
            );
        }
    }

    /// The control plane's messages as they arrive from the network: random bytes, and real
    /// messages cut or with bytes changed, decode to a message or an error, and what decodes
    /// converts to the engine's types or an error. Never a panic.
    mod hostile_bytes {
        use super::*;
        use proptest::prelude::*;
        use prost::Message;

        fn a_real_task() -> Vec<u8> {
            let location = ObjectLocation {
                object_id: ObjectId::random().as_bytes().to_vec().into(),
                node_id: NodeId::random().as_bytes().to_vec().into(),
                address: "http://127.0.0.1:1".into(),
                size_bytes: 10,
                num_rows: 1,
                ..Default::default()
            };
            TaskCalls {
                calls: vec![TaskCall {
                    task: Some(TaskRequest {
                        job_id: ObjectId::random().as_bytes().to_vec().into(),
                        function: "crate::f".into(),
                        args: vec![1, 2, 3].into(),
                        inputs: vec![location],
                        resources: Some(Resources::from(&manta_engine::Resources::one_cpu())),
                        input_batch: Some(3),
                        ..Default::default()
                    }),
                    ..Default::default()
                }],
            }
            .encode_to_vec()
        }

        fn convert(calls: TaskCalls) {
            for call in calls.calls {
                if let Some(request) = call.task {
                    for input in &request.inputs {
                        let _ = input.to_meta();
                    }
                    let _ = parse_id(&request.job_id, manta_engine::JobId::from_slice, "job_id");
                    let _ = parse_id(
                        &request.actor_id,
                        manta_engine::ActorId::from_slice,
                        "actor_id",
                    );
                    let _ = request.resources.map(manta_engine::Resources::from);
                }
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]

            #[test]
            fn task_messages_decode_or_fail_cleanly(
                noise in proptest::collection::vec(any::<u8>(), 0..256),
                cut in any::<usize>(),
                changes in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..8),
            ) {
                let mut real = a_real_task();
                real.truncate(cut % (real.len() + 1));
                let len = real.len().max(1);
                for (at, value) in changes {
                    if !real.is_empty() {
                        real[at % len] = value;
                    }
                }
                for bytes in [&noise, &real] {
                    if let Ok(calls) = TaskCalls::decode(bytes.as_slice()) {
                        convert(calls);
                    }
                    if let Ok(error) = TaskError::decode(bytes.as_slice()) {
                        let _ = error.into_error();
                    }
                    let _ = WorkerAssignment::decode(bytes.as_slice());
                    let _ = WorkerMessage::decode(bytes.as_slice());
                    if let Ok(node) = RegisterNodeRequest::decode(bytes.as_slice()) {
                        let _ = node.resources.map(manta_engine::Resources::from);
                    }
                    let _ = HeartbeatRequest::decode(bytes.as_slice());
                }
            }
        }
    }
}
