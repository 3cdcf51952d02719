//! A remote call's arguments: values encoded in the driver, object refs resolved before the
//! task runs.
//!
//! The driver turns each argument into a [`Slot`]: a value is encoded with postcard into the
//! task's argument bytes, an object ref becomes one of the task's *inputs* (which the node
//! fetches, from its own store where it can, before the task starts). The task body decodes
//! each slot back into the function's parameter type with [`TaskArgs::get`].

use arrow::array::RecordBatch;
use bytes::Bytes;
use manta_engine::{Object, TaskInput};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::object_ref::{ObjectRef, UntypedRef};

/// Batches up to this size travel inside the task on a cluster; larger ones through a node's
/// store.
const INLINE_BATCH_BYTES: usize = 1 << 20;

/// One argument of a remote call: a value, or the value an object ref will hold.
///
/// Both convert into it, so a call takes either: `add.remote(&ctx, 5, &other)`.
pub enum Arg<T> {
    /// A value, encoded into the task.
    Value(T),
    /// An object ref, resolved before the task runs.
    Ref(ObjectRef<T>),
}

impl<T> From<T> for Arg<T> {
    fn from(value: T) -> Self {
        Arg::Value(value)
    }
}

impl<T> From<&ObjectRef<T>> for Arg<T> {
    fn from(object: &ObjectRef<T>) -> Self {
        Arg::Ref(object.clone())
    }
}

/// Where a task finds one argument.
#[derive(Debug, Serialize, Deserialize)]
enum Slot {
    /// Encoded in the task's argument bytes.
    Value(Vec<u8>),
    /// The task's input object with this index.
    Input(u32),
    /// A record batch, as Arrow IPC stream bytes in the task's argument bytes.
    Batch(Vec<u8>),
}

/// A call's arguments, as the driver builds them.
#[derive(Default)]
pub struct Args {
    /// The actor a method call is for.
    actor: Option<manta_engine::ActorId>,
    slots: Vec<Slot>,
    refs: Vec<(usize, UntypedRef)>,
    /// Record batches passed by value, by slot, until [`Args::place_batches`] decides how
    /// they travel.
    batches: Vec<(usize, RecordBatch)>,
    error: Option<Error>,
}

impl Args {
    /// No arguments yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends one argument. A value that does not encode makes the call fail with the error.
    pub fn push<T: Serialize>(&mut self, arg: Arg<T>) {
        match arg {
            Arg::Value(value) => match encode(&value) {
                Ok(bytes) => self.slots.push(Slot::Value(bytes)),
                Err(e) => {
                    self.error.get_or_insert(e);
                    self.slots.push(Slot::Value(Vec::new()));
                }
            },
            Arg::Ref(object) => {
                self.slots.push(Slot::Input(self.refs.len() as u32));
                self.refs.push((self.slots.len() - 1, object.untyped()));
            }
        }
    }

    /// Appends a record batch argument. A batch value travels zero-copy in this process's
    /// store when tasks run here, and as Arrow IPC inside the task on a cluster.
    pub fn push_batch(&mut self, arg: Arg<RecordBatch>) {
        match arg {
            Arg::Value(batch) => {
                self.batches.push((self.slots.len(), batch));
                self.slots.push(Slot::Batch(Vec::new()));
            }
            Arg::Ref(object) => {
                self.slots.push(Slot::Input(self.refs.len() as u32));
                self.refs.push((self.slots.len() - 1, object.untyped()));
            }
        }
    }

    /// Decides how the batch values travel to a task run by `client`: stored in the embedded
    /// store (the task gets the very arrays); on a cluster, encoded into the task if small, else
    /// pushed to a node's store (task messages stay small).
    pub(crate) async fn place_batches(&mut self, client: &manta_scheduler::Client) {
        for (slot, batch) in std::mem::take(&mut self.batches) {
            let stored = match client {
                manta_scheduler::Client::Embedded(embedded) => {
                    embedded.put_object(Object::Block(manta_engine::Block::from_batch(batch)))
                }
                manta_scheduler::Client::Cluster(_)
                    if batch.get_array_memory_size() <= INLINE_BATCH_BYTES =>
                {
                    match encode_batch(&batch) {
                        Ok(bytes) => self.slots[slot] = Slot::Batch(bytes),
                        Err(e) => {
                            self.error.get_or_insert(e);
                        }
                    }
                    continue;
                }
                manta_scheduler::Client::Cluster(cluster) => {
                    let block = Object::Block(manta_engine::Block::from_batch(batch));
                    cluster.put_object(block).await
                }
            };
            match stored {
                Ok(stored) => {
                    self.refs.push((slot, UntypedRef::ready(Ok(stored))));
                    self.slots[slot] = Slot::Input(0);
                }
                Err(e) => {
                    self.error.get_or_insert(Error::from(e));
                }
            }
        }
        // Inputs are resolved in the order of `refs`, which is the order their slots name.
        self.refs.sort_by_key(|(slot, _)| *slot);
        for (input, (slot, _)) in self.refs.iter().enumerate() {
            self.slots[*slot] = Slot::Input(input as u32);
        }
    }

    /// Whether every argument is a plain value: nothing to resolve or place before the call.
    pub(crate) fn is_plain(&self) -> bool {
        self.refs.is_empty() && self.batches.is_empty()
    }

    /// Marks these as the arguments of a call on `actor` (its constructor or a method).
    pub(crate) fn for_actor(mut self, actor: manta_engine::ActorId) -> Self {
        self.actor = Some(actor);
        self
    }

    /// The argument bytes, the refs to resolve (in input order, each with its argument's
    /// position), and an encoding error if any.
    pub(crate) fn into_parts(self) -> (Bytes, Vec<(usize, UntypedRef)>, Option<Error>) {
        let bytes = postcard::to_stdvec(&(self.actor, &self.slots)).expect("slots are plain data");
        (Bytes::from(bytes), self.refs, self.error)
    }
}

/// A call's arguments, as the task body reads them.
pub struct TaskArgs {
    function: &'static str,
    actor: Option<manta_engine::ActorId>,
    slots: Vec<Slot>,
    objects: Vec<Object>,
}

impl TaskArgs {
    /// Reads the task's input as the arguments of `function`.
    pub fn decode(function: &'static str, input: TaskInput) -> manta_engine::Result<Self> {
        let (actor, slots) = postcard::from_bytes(&input.args).map_err(|source| {
            manta_engine::Error::Serialization {
                action: "decode",
                what: format!("the arguments of {function}"),
                source,
            }
        })?;
        Ok(Self {
            function,
            actor,
            slots,
            objects: input.objects,
        })
    }

    /// Argument `index`, a record batch (zero-copy when it is a block in this process).
    pub fn batch(&self, index: usize) -> manta_engine::Result<RecordBatch> {
        match self.slots.get(index) {
            Some(Slot::Batch(bytes)) => decode_batch(bytes).map_err(|e| {
                manta_engine::Error::Internal(format!("argument {index} of {}: {e}", self.function))
            }),
            Some(Slot::Input(input)) => match self.objects.get(*input as usize) {
                Some(Object::Block(block)) => one_batch(block),
                _ => Err(manta_engine::Error::Internal(format!(
                    "argument {index} of {} is not a record batch",
                    self.function
                ))),
            },
            _ => Err(manta_engine::Error::Internal(format!(
                "argument {index} of {} is not a record batch",
                self.function
            ))),
        }
    }

    /// The actor this call is for (a constructor's or method's call).
    pub fn actor(&self) -> manta_engine::Result<manta_engine::ActorId> {
        self.actor.ok_or_else(|| {
            manta_engine::Error::Internal(format!("{} was called without an actor", self.function))
        })
    }

    /// Argument `index`, decoded as a `T`.
    pub fn get<T: DeserializeOwned>(&self, index: usize) -> manta_engine::Result<T> {
        let bytes: &[u8] = match self.slots.get(index) {
            Some(Slot::Value(bytes)) => bytes,
            Some(Slot::Batch(_)) => {
                return Err(manta_engine::Error::Internal(format!(
                    "argument {index} of {} is a record batch, not a value",
                    self.function
                )));
            }
            Some(Slot::Input(input)) => match self.objects.get(*input as usize) {
                Some(Object::Bytes(bytes)) => bytes,
                Some(Object::Block(_)) => {
                    return Err(manta_engine::Error::Internal(format!(
                        "argument {index} of {} is a block, not a value",
                        self.function
                    )));
                }
                None => {
                    return Err(manta_engine::Error::Internal(format!(
                        "argument {index} of {} names a missing input",
                        self.function
                    )));
                }
            },
            None => {
                return Err(manta_engine::Error::Internal(format!(
                    "{} was called with {} arguments; argument {index} is missing",
                    self.function,
                    self.slots.len()
                )));
            }
        };
        postcard::from_bytes(bytes).map_err(|source| manta_engine::Error::Serialization {
            action: "decode",
            what: format!(
                "argument {index} of {} as {}",
                self.function,
                std::any::type_name::<T>()
            ),
            source,
        })
    }
}

/// `value` encoded as an object's bytes.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>> {
    postcard::to_stdvec(value).map_err(|e| Error::Codec {
        action: "encode",
        type_name: std::any::type_name::<T>(),
        reason: e.to_string(),
    })
}

/// An object's bytes decoded as a `T`.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    postcard::from_bytes(bytes).map_err(|e| Error::Codec {
        action: "decode",
        type_name: std::any::type_name::<T>(),
        reason: e.to_string(),
    })
}

/// What a task body returns: its function's result encoded as an object. A `Result` that is an
/// error becomes the task's error, naming the function.
pub fn output<T: Serialize>(function: &'static str, value: T) -> manta_engine::Result<Object> {
    let bytes =
        postcard::to_stdvec(&value).map_err(|source| manta_engine::Error::Serialization {
            action: "encode",
            what: format!("the result of {function}"),
            source,
        })?;
    Ok(Object::Bytes(Bytes::from(bytes)))
}

/// A block as one record batch: its only batch (zero-copy), or its batches concatenated.
pub(crate) fn one_batch(block: &manta_engine::Block) -> manta_engine::Result<RecordBatch> {
    match block.batches() {
        [one] => Ok(one.clone()),
        _ => block.concat(),
    }
}

/// What a task body returning a record batch returns: a block of it.
pub fn output_batch(batch: RecordBatch) -> manta_engine::Result<Object> {
    Ok(Object::Block(manta_engine::Block::from_batch(batch)))
}

/// `batch` as Arrow IPC stream bytes.
pub(crate) fn encode_batch(batch: &RecordBatch) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    let written = arrow::ipc::writer::StreamWriter::try_new(&mut bytes, &batch.schema()).and_then(
        |mut writer| {
            writer.write(batch)?;
            writer.finish()
        },
    );
    written.map_err(|e| Error::Codec {
        action: "encode",
        type_name: "RecordBatch",
        reason: e.to_string(),
    })?;
    Ok(bytes)
}

/// Arrow IPC stream bytes as one record batch.
pub(crate) fn decode_batch(bytes: &[u8]) -> Result<RecordBatch> {
    let codec = |e: arrow::error::ArrowError| Error::Codec {
        action: "decode",
        type_name: "RecordBatch",
        reason: e.to_string(),
    };
    let reader = arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes), None)
        .map_err(codec)?;
    let schema = reader.schema();
    let batches = reader.collect::<Result<Vec<_>, _>>().map_err(codec)?;
    match batches.as_slice() {
        [one] => Ok(one.clone()),
        _ => arrow::compute::concat_batches(&schema, &batches).map_err(codec),
    }
}

/// A function's `Err` as the task's error.
pub fn user_error(
    function: &'static str,
    error: impl Into<manta_engine::BoxError>,
) -> manta_engine::Error {
    manta_engine::Error::UserFunction {
        name: function.to_string(),
        input: "a task".into(),
        source: error.into(),
    }
}
