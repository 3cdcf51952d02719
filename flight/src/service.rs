//! The Flight service every node runs: `DoGet(ticket = object id)` streams a stored object;
//! `DoGet(ticket = object id + batch index)` only that batch of it (a reduce task's partition),
//! read from a spilled object in place. `DoPut` (descriptor = object id) stores an object a
//! driver pushes, in the same messages: a new id only (`ALREADY_EXISTS` otherwise: objects never
//! change), no larger than the store's budget, and no more bytes than its metadata declared.
//!
//! A block is stored as an Arrow IPC stream (see `manta_engine::store`), and an IPC stream is
//! exactly what Flight sends: one `FlightData` per IPC message, its `data_header` the message's
//! flatbuffer and its `data_body` the message's body. So the service does not decode and
//! re-encode anything: it maps the object and hands out slices of the mapping, and any Flight
//! client can read the result as record batches. The first message's `app_metadata` says
//! `manta:block:<size>` (or `manta:bytes:<size>` for a bytes object, sent in 2 MiB pieces), so a
//! Manta receiver can size its buffer once.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arrow_flight::flight_service_server::{FlightService, FlightServiceServer};
use arrow_flight::{
    Action, ActionType, Criteria, Empty, FlightData, FlightDescriptor, FlightInfo,
    HandshakeRequest, HandshakeResponse, PollInfo, PutResult, SchemaResult, Ticket,
};
use bytes::Bytes;
use futures::Stream;
use manta_engine::store::{HEADER_LEN, ipc_messages, is_block};
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

/// A ticket: an object id, and the batch asked for if only one is.
pub fn ticket(id: ObjectId, batch: Option<u32>) -> Bytes {
    let mut ticket = id.as_bytes().to_vec();
    if let Some(batch) = batch {
        ticket.extend_from_slice(&batch.to_le_bytes());
    }
    Bytes::from(ticket)
}

fn parse_ticket(ticket: &[u8]) -> Option<(ObjectId, Option<u32>)> {
    let id = ObjectId::from_slice(ticket.get(..16)?).ok()?;
    match ticket.len() {
        16 => Some((id, None)),
        20 => Some((id, Some(u32::from_le_bytes(ticket[16..].try_into().ok()?)))),
        _ => None,
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
    let size: usize = messages
        .iter()
        .map(|m| m.data_header.len() + m.data_body.len() + 72)
        .sum::<usize>()
        + HEADER_LEN;
    if let Some(first) = messages.first_mut() {
        first.app_metadata = Bytes::from(format!("manta:block:{size}"));
    }
    Ok(messages)
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
        let (id, batch) = parse_ticket(&ticket).ok_or_else(|| {
            Status::invalid_argument(
                "a Manta ticket is a 16-byte object id, optionally followed by a 4-byte batch index",
            )
        })?;
        let store = Arc::clone(&self.store);
        // Reading may read a spill file or restore an object: keep it off the async threads. A
        // single batch of a spilled block is read alone from its spill file, never restored.
        let messages = tokio::task::spawn_blocking(move || match batch {
            Some(batch) => match store.spilled_batch(id, batch as usize)? {
                Some(alone) => batch_messages(id, alone, 0),
                None => batch_messages(id, store.stored_bytes(id)?, batch),
            },
            None => object_messages(id, store.stored_bytes(id)?),
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(|e| match e {
            manta_engine::Error::ObjectNotFound { .. } => Status::not_found(e.to_string()),
            manta_engine::Error::CorruptObject { .. } => Status::data_loss(e.to_string()),
            other => Status::internal(other.to_string()),
        })?;
        let bytes: usize = messages
            .iter()
            .map(|m| m.data_header.len() + m.data_body.len())
            .sum();
        self.traffic
            .served_bytes
            .fetch_add(bytes as u64, Ordering::Relaxed);
        Ok(Response::new(Box::pin(futures::stream::iter(
            messages.into_iter().map(Ok),
        ))))
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
