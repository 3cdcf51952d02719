//! The Flight service every node runs: `DoGet` streams a stored object whole, or one batch of
//! each of many blocks in one call (a reduce task's partitions of the map outputs this node
//! holds), read from a spilled block in place; see [`crate::ticket`]. `DoPut` (descriptor =
//! object id) stores an object a driver pushes, in the same messages: a new id only
//! (`ALREADY_EXISTS` otherwise: objects never change), no larger than the store's budget, and
//! no more bytes than its metadata declared.
//!
//! A block is stored as an Arrow IPC stream (see `manta_engine::store`), and an IPC stream is
//! exactly what Flight sends: one `FlightData` per IPC message, its `data_header` the message's
//! flatbuffer and its `data_body` the message's body. So the service does not decode and
//! re-encode anything: it maps the object and hands out slices of the mapping, and any Flight
//! client can read the result as record batches. The first message of each object or part has
//! `app_metadata` saying `manta:block:<size>` (or `manta:bytes:<size>` for a bytes object, sent
//! in 2 MiB pieces), the others none, so a Manta receiver can size its buffer once and tell
//! where one part ends and the next begins.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arrow_flight::flight_service_server::{FlightService, FlightServiceServer};
use arrow_flight::{
    Action, ActionType, Criteria, Empty, FlightData, FlightDescriptor, FlightInfo,
    HandshakeRequest, HandshakeResponse, PollInfo, PutResult, SchemaResult, Ticket,
};
use bytes::Bytes;
use futures::{Stream, StreamExt};
use manta_engine::store::{HEADER_LEN, OneBatch, ipc_messages, is_block};
use manta_engine::{ObjectId, ObjectStore};
use tonic::{Request, Response, Status, Streaming};

/// Largest message the service sends or accepts; blocks hold batches of a few MiB at most.
pub const MAX_MESSAGE_BYTES: usize = 1 << 30;
/// Size of the pieces a bytes object is sent in.
const BYTES_CHUNK: usize = 2 << 20;

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// Bytes a node's Flight service has sent (`DoGet`) and received (`DoPut`), for its metrics.
#[derive(Debug, Default)]
pub struct FlightTraffic {
    /// Bytes of objects sent to `DoGet` callers.
    pub served_bytes: AtomicU64,
    /// Bytes of objects stored from `DoPut` callers.
    pub received_bytes: AtomicU64,
}

/// Serves one node's objects over Arrow Flight.
#[derive(Debug, Clone)]
pub struct ObjectFlightService {
    store: Arc<ObjectStore>,
    traffic: Arc<FlightTraffic>,
}

impl ObjectFlightService {
    /// A service over `store`.
    pub fn new(store: Arc<ObjectStore>) -> Self {
        Self {
            store,
            traffic: Arc::default(),
        }
    }

    /// The service, counting its traffic in `traffic`.
    pub fn counting(self, traffic: Arc<FlightTraffic>) -> Self {
        Self { traffic, ..self }
    }

    /// The service as a tonic server, with message limits raised for blocks.
    pub fn into_server(self) -> FlightServiceServer<Self> {
        FlightServiceServer::new(self)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }
}

/// Splits an object's stored bytes into Flight messages, without copying.
pub fn object_messages(
    id: ObjectId,
    stored: Bytes,
) -> Result<Vec<FlightData>, manta_engine::Error> {
    let total = stored.len();
    if is_block(&stored) {
        let mut messages: Vec<FlightData> = ipc_messages(stored.slice(HEADER_LEN..))
            .map(|m| {
                m.map(|m| FlightData {
                    data_header: m.header,
                    data_body: m.body,
                    ..Default::default()
                })
            })
            .collect::<Result<_, _>>()
            .map_err(|e| manta_engine::Error::CorruptObject {
                id,
                reason: e.to_string(),
            })?;
        if let Some(first) = messages.first_mut() {
            first.app_metadata = Bytes::from(format!("manta:block:{total}"));
        }
        Ok(messages)
    } else {
        let payload = stored.slice(HEADER_LEN.min(total)..);
        let mut messages: Vec<FlightData> = (0..payload.len().div_ceil(BYTES_CHUNK).max(1))
            .map(|i| FlightData {
                data_body: payload
                    .slice(i * BYTES_CHUNK..((i + 1) * BYTES_CHUNK).min(payload.len())),
                ..Default::default()
            })
            .collect();
        messages[0].app_metadata = Bytes::from(format!("manta:bytes:{total}"));
        Ok(messages)
    }
}

/// The Flight messages of one batch of a stored block: the schema, any dictionaries, and the
/// `batch`th record batch (an empty stream of the schema if there are fewer). Zero-copy.
pub fn batch_messages(
    id: ObjectId,
    stored: Bytes,
    batch: u32,
) -> Result<Vec<FlightData>, manta_engine::Error> {
    let corrupt = |reason: String| manta_engine::Error::CorruptObject { id, reason };
    if !is_block(&stored) {
        return Err(corrupt("a batch was asked of a bytes object".into()));
    }
    let mut messages = Vec::new();
    let mut batches_seen = 0u32;
    for message in ipc_messages(stored.slice(HEADER_LEN..)) {
        let message = message.map_err(|e| corrupt(e.to_string()))?;
        let kind = arrow::ipc::root_as_message(&message.header)
            .map_err(|e| corrupt(e.to_string()))?
            .header_type();
        let keep = if kind == arrow::ipc::MessageHeader::RecordBatch {
            batches_seen += 1;
            batches_seen == batch + 1
        } else {
            true
        };
        if keep {
            messages.push(FlightData {
                data_header: message.header,
                data_body: message.body,
                ..Default::default()
            });
        }
        if batches_seen > batch {
            break;
        }
    }
    with_part_metadata(&mut messages);
    Ok(messages)
}

/// Marks the first of a part's `messages` with the part's kind and its size as stored (an
/// upper bound), where a receiver sees the part begin.
fn with_part_metadata(messages: &mut [FlightData]) {
    let size: usize = messages
        .iter()
        .map(|m| m.data_header.len() + m.data_body.len() + 72)
        .sum::<usize>()
        + HEADER_LEN;
    if let Some(first) = messages.first_mut() {
        first.app_metadata = Bytes::from(format!("manta:block:{size}"));
    }
}

/// The messages of one batch found through the block's index ([`ObjectStore::shared_batch`]):
/// its `schema` message and its `batch` message (none if empty), framed, as
/// [`batch_messages`] sends them.
fn indexed_batch_messages(
    schema: Bytes,
    batch: Bytes,
) -> Result<Vec<FlightData>, manta_engine::Error> {
    let mut messages = Vec::with_capacity(2);
    for framed in [schema, batch] {
        if let Some(message) = ipc_messages(framed).next() {
            let message = message?;
            messages.push(FlightData {
                data_header: message.header,
                data_body: message.body,
                ..Default::default()
            });
        }
    }
    with_part_metadata(&mut messages);
    Ok(messages)
}

/// The messages of one part of a `DoGet`: object `id` whole, or only its batch `batch` (read
/// alone from the spill file if the block is spilled, never restoring it).
fn part_messages(
    store: &Arc<ObjectStore>,
    id: ObjectId,
    batch: Option<u32>,
) -> Result<Vec<FlightData>, manta_engine::Error> {
    let messages = match batch {
        Some(batch) => match store.one_batch(id, batch as usize)? {
            OneBatch::Read(alone) => batch_messages(id, alone, 0)?,
            // Pinned while it is cut, so not spilled (and restored) meanwhile.
            OneBatch::Resident(_pin) => resident_batch_messages(store, id, batch)?,
            OneBatch::Unindexed => resident_batch_messages(store, id, batch)?,
        },
        None => object_messages(id, store.stored_bytes(id)?)?,
    };
    // The first message's metadata is where a receiver sees the part begin.
    if messages.is_empty() {
        return Err(manta_engine::Error::CorruptObject {
            id,
            reason: "a stored block without a schema".into(),
        });
    }
    Ok(messages)
}

/// The messages of batch `batch` of block `id`, resident (or restored) here: cut from its
/// mapping through its index if it has one, else by stepping over its messages.
fn resident_batch_messages(
    store: &Arc<ObjectStore>,
    id: ObjectId,
    batch: u32,
) -> Result<Vec<FlightData>, manta_engine::Error> {
    match store.shared_batch(id, batch as usize)? {
        Some((schema, batch)) => indexed_batch_messages(schema, batch),
        None => batch_messages(id, store.stored_bytes(id)?, batch),
    }
}

/// The message that stands for a part that could not be read: only `app_metadata`, saying
/// `manta:error:<gRPC code>:<message>` (read by [`crate::client`]).
fn failed_part(status: &Status) -> FlightData {
    FlightData {
        app_metadata: Bytes::from(format!(
            "manta:error:{}:{}",
            status.code() as i32,
            status.message()
        )),
        ..Default::default()
    }
}

/// The status a failed read of an object answers with.
fn status_of(error: manta_engine::Error) -> Status {
    match error {
        manta_engine::Error::ObjectNotFound { .. } => Status::not_found(error.to_string()),
        manta_engine::Error::CorruptObject { .. } => Status::data_loss(error.to_string()),
        other => Status::internal(other.to_string()),
    }
}

#[tonic::async_trait]
impl FlightService for ObjectFlightService {
    type HandshakeStream = BoxStream<HandshakeResponse>;
    type ListFlightsStream = BoxStream<FlightInfo>;
    type DoGetStream = BoxStream<FlightData>;
    type DoPutStream = BoxStream<PutResult>;
    type DoExchangeStream = BoxStream<FlightData>;
    type DoActionStream = BoxStream<arrow_flight::Result>;
    type ListActionsStream = BoxStream<ActionType>;

    async fn do_get(
        &self,
        request: Request<Ticket>,
    ) -> Result<Response<Self::DoGetStream>, Status> {
        let ticket = request.into_inner().ticket;
        let parts = match crate::ticket::Ticket::parse(&ticket) {
            Some(crate::ticket::Ticket::Object(id)) => vec![(id, None)],
            Some(crate::ticket::Ticket::Parts(parts)) => parts
                .into_iter()
                .map(|(id, batch)| (id, Some(batch)))
                .collect(),
            None => {
                return Err(Status::invalid_argument(format!(
                    "a Manta ticket is a 16-byte object id, or 1 to {} parts of 20 bytes \
                     (an object id and a batch index)",
                    crate::ticket::MAX_PARTS
                )));
            }
        };
        let (store, traffic) = (Arc::clone(&self.store), Arc::clone(&self.traffic));
        let read = move |(id, batch): (ObjectId, Option<u32>)| {
            let (store, traffic) = (Arc::clone(&store), Arc::clone(&traffic));
            async move {
                // Off the async threads: reading may read a spill file or restore an object.
                let messages =
                    tokio::task::spawn_blocking(move || part_messages(&store, id, batch))
                        .await
                        .map_err(|e| Status::internal(e.to_string()))?
                        .map_err(status_of)?;
                let bytes: usize = messages
                    .iter()
                    .map(|m| m.data_header.len() + m.data_body.len())
                    .sum();
                traffic
                    .served_bytes
                    .fetch_add(bytes as u64, Ordering::Relaxed);
                Ok::<_, Status>(messages)
            }
        };
        if let [(id, None)] = parts[..] {
            // An object whole: read before answering, so a missing one is the call's status.
            let messages = read((id, None)).await?;
            return Ok(Response::new(Box::pin(futures::stream::iter(
                messages.into_iter().map(Ok),
            ))));
        }
        // Parts are read as the stream reaches them. One that cannot be read is sent as a
        // message saying why (see [`failed_part`]) and ends the stream: the caller learns which
        // object it could not have, with the parts before it whole.
        let messages = futures::stream::iter(parts)
            .then(read)
            .scan(false, |ended, part| {
                let next = (!*ended).then(|| {
                    *ended = part.is_err();
                    part.unwrap_or_else(|status| vec![failed_part(&status)])
                });
                futures::future::ready(next)
            })
            .flat_map(|messages| futures::stream::iter(messages.into_iter().map(Ok)));
        Ok(Response::new(Box::pin(messages)))
    }

    async fn handshake(
        &self,
        _: Request<Streaming<HandshakeRequest>>,
    ) -> Result<Response<Self::HandshakeStream>, Status> {
        Err(Status::unimplemented("a Manta node needs no handshake"))
    }

    async fn list_flights(
        &self,
        _: Request<Criteria>,
    ) -> Result<Response<Self::ListFlightsStream>, Status> {
        Err(Status::unimplemented(
            "objects are fetched by id with DoGet",
        ))
    }

    async fn get_flight_info(
        &self,
        _: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        Err(Status::unimplemented(
            "objects are fetched by id with DoGet",
        ))
    }

    async fn poll_flight_info(
        &self,
        _: Request<FlightDescriptor>,
    ) -> Result<Response<PollInfo>, Status> {
        Err(Status::unimplemented(
            "objects are fetched by id with DoGet",
        ))
    }

    async fn get_schema(
        &self,
        _: Request<FlightDescriptor>,
    ) -> Result<Response<SchemaResult>, Status> {
        Err(Status::unimplemented(
            "objects are fetched by id with DoGet",
        ))
    }

    /// Stores an object a driver pushes (its `put`): the first message's descriptor is the
    /// object id, the messages are those `DoGet` sends. Answers with the stored size.
    async fn do_put(
        &self,
        request: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoPutStream>, Status> {
        let mut messages = request.into_inner();
        let first = messages
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("an empty DoPut"))?;
        // The object's id, then (optionally) the id of the job it belongs to.
        let cmd = first
            .flight_descriptor
            .as_ref()
            .map(|d| d.cmd.clone())
            .unwrap_or_default();
        let (id, job) = match cmd.len() {
            16 => (ObjectId::from_slice(&cmd).ok(), None),
            32 => (
                ObjectId::from_slice(&cmd[..16]).ok(),
                manta_engine::JobId::from_slice(&cmd[16..]).ok(),
            ),
            _ => (None, None),
        };
        let id = id.ok_or_else(|| {
            Status::invalid_argument(
                "a DoPut's descriptor must be the 16-byte object id (and the 16-byte id of its job)",
            )
        })?;
        let from = manta_engine::Location {
            node: manta_engine::NodeId::from_bytes([0; 16]),
            flight_address: "the pushing client".into(),
        };
        let invalid = |e: crate::Error| Status::invalid_argument(e.to_string());
        let (is_block, size) = crate::client::parse_metadata(&first, &from, id).map_err(invalid)?;
        // Whole objects live in the store's budget: one larger than all of it never fits, and
        // the sender may not send more than it declared.
        let budget = self.store.usage().budget_bytes;
        if size as u64 > budget {
            return Err(Status::resource_exhausted(format!(
                "object {id} of {size} bytes is larger than this node's whole object store \
                 budget of {budget} bytes"
            )));
        }
        // Off the async threads: making room may spill other objects to disk.
        let store = std::sync::Arc::clone(&self.store);
        let mut receiver = tokio::task::spawn_blocking(move || store.receive(id, size))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| match e {
                manta_engine::Error::ObjectExists { .. } => Status::already_exists(e.to_string()),
                e => Status::resource_exhausted(e.to_string()),
            })?;
        crate::client::receive(
            first,
            messages,
            is_block,
            size,
            receiver.writer(),
            &from,
            id,
        )
        .await
        .map_err(invalid)?;
        // Off the async threads: validating (and storing, which may spill others to make room)
        // reads or copies the whole object.
        let stored = tokio::task::spawn_blocking(move || receiver.finish_validated())
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| match e {
                e @ manta_engine::Error::CorruptObject { .. } => {
                    Status::invalid_argument(e.to_string())
                }
                e => Status::internal(e.to_string()),
            })?;
        self.traffic
            .received_bytes
            .fetch_add(size as u64, Ordering::Relaxed);
        if let Some(job) = job {
            self.store.set_job(id, job);
        }
        let reply = PutResult {
            app_metadata: Bytes::from(stored.to_string()),
        };
        Ok(Response::new(Box::pin(futures::stream::once(async move {
            Ok(reply)
        }))))
    }

    async fn do_exchange(
        &self,
        _: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoExchangeStream>, Status> {
        Err(Status::unimplemented("DoExchange is not used"))
    }

    async fn do_action(
        &self,
        _: Request<Action>,
    ) -> Result<Response<Self::DoActionStream>, Status> {
        Err(Status::unimplemented("no actions"))
    }

    async fn list_actions(
        &self,
        _: Request<Empty>,
    ) -> Result<Response<Self::ListActionsStream>, Status> {
        Ok(Response::new(Box::pin(futures::stream::empty())))
    }
}
