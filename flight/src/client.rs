//! Pulling objects from other nodes: into the local store, or into memory.
//!
//! [`FlightPool`] keeps one HTTP/2 channel per remote node and issues `DoGet(object id)`. The
//! messages that arrive are written back into the stored layout as they come (an IPC stream
//! whose bodies stay 64-byte aligned), straight into a shared-memory file of the local store, so
//! the object is decoded only when read, zero-copy, like any local object.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use arrow_flight::flight_service_client::FlightServiceClient;
use arrow_flight::{FlightData, Ticket};
use manta_engine::store::{MemoryReceiver, header, write_ipc_end, write_ipc_message};
use manta_engine::{Location, Object, ObjectId, ObjectStore};
use parking_lot::Mutex;
use tonic::transport::Endpoint;

use crate::auth::{AuthChannel, Token, with_token};
use crate::error::{Error, Result};
use crate::service::MAX_MESSAGE_BYTES;
use crate::ticket::{MAX_PARTS, encode_object, encode_parts};

/// How long to wait for a node's Flight endpoint to accept a connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How often either end of a connection pings the other (HTTP/2 PING), busy or idle.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(2);

/// How long a ping may go unanswered before the connection is given up as dead: a peer that
/// died without closing it, or a network partition, is noticed within
/// `KEEPALIVE_INTERVAL + KEEPALIVE_TIMEOUT`, and the calls on it fail naming the peer.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(8);

/// How long a call waits for a peer's answer, or a pull for the object's next message, from a
/// peer that still answers pings (so keepalive does not end the connection) but sends nothing:
/// a stuck node fails the call, naming it, instead of stalling it forever. Objects are sent as
/// soon as they are asked for, so only a stuck peer takes this long.
pub const MESSAGE_DEADLINE: Duration = Duration::from_secs(60);

/// `call` (a request, or the next message of a stream) under [`MESSAGE_DEADLINE`]; past it,
/// an `Unavailable` status saying what was waited for.
pub(crate) async fn in_time<T>(
    what: &str,
    call: impl std::future::Future<Output = std::result::Result<T, tonic::Status>>,
) -> std::result::Result<T, tonic::Status> {
    tokio::time::timeout(MESSAGE_DEADLINE, call)
        .await
        .unwrap_or_else(|_| {
            Err(tonic::Status::unavailable(format!(
                "{what}: nothing for {} s from a node that still answers pings (stuck?)",
                MESSAGE_DEADLINE.as_secs()
            )))
        })
}

/// Applies Manta's transport settings to an endpoint: a connect timeout, keepalive pings (see
/// [`KEEPALIVE_TIMEOUT`]), no Nagle delay, and HTTP/2 flow-control windows large enough that a
/// multi-MiB message is not throttled.
pub fn tune_endpoint(endpoint: Endpoint) -> Endpoint {
    endpoint
        .connect_timeout(CONNECT_TIMEOUT)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true)
        .tcp_nodelay(true)
        .initial_stream_window_size(Some(16 << 20))
        .initial_connection_window_size(Some(32 << 20))
        .max_frame_size(Some(MAX_FRAME_BYTES))
}

/// Largest HTTP/2 frame either side accepts: a 1 MiB batch crosses in one frame instead of
/// sixty-four of HTTP/2's default 16 KiB.
pub const MAX_FRAME_BYTES: u32 = 1 << 20;

/// Channels to other nodes' Flight endpoints, one per address, shared by all pulls.
/// Every call presents the cluster token (see [`crate::auth`]).
#[derive(Debug)]
pub struct FlightPool {
    token: Token,
    clients: Mutex<HashMap<Arc<str>, FlightServiceClient<AuthChannel>>>,
}

/// One part of a [`FlightPool::pull_parts_into`]: batch `batch` of block `object`, to be
/// stored as `local`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Part {
    /// The block on the serving node.
    pub object: ObjectId,
    /// Which of its batches.
    pub batch: u32,
    /// The id it is stored under here.
    pub local: ObjectId,
}

impl FlightPool {
    /// An empty pool whose calls present `token`.
    pub fn new(token: &Token) -> Self {
        Self {
            token: token.clone(),
            clients: Mutex::default(),
        }
    }

    async fn client(&self, address: &Arc<str>) -> Result<FlightServiceClient<AuthChannel>> {
        if let Some(client) = self.clients.lock().get(address) {
            return Ok(client.clone());
        }
        let endpoint = crate::tls::endpoint(address)?;
        let channel = endpoint.connect().await.map_err(|source| Error::Connect {
            address: address.to_string(),
            source,
        })?;
        let client = FlightServiceClient::new(with_token(channel, &self.token))
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        self.clients
            .lock()
            .insert(Arc::clone(address), client.clone());
        Ok(client)
    }

    /// Pulls `id` from `location` into `store`; returns its size as stored.
    pub async fn pull_into(
        &self,
        store: &Arc<ObjectStore>,
        location: &Location,
        id: ObjectId,
    ) -> Result<u64> {
        let (first, stream, is_block, size) = self.open_object(location, id).await?;
        let mut receiver = store.receive(id, size)?;
        receive(
            first,
            stream,
            is_block,
            size,
            receiver.writer(),
            location,
            id,
        )
        .await?;
        Ok(receiver.finish()?)
    }

    /// Pulls only batch `batch` of block `id` from `location` into `store`, as a new object
    /// `local` (a block of that one batch); returns its size as stored.
    pub async fn pull_batch_into(
        &self,
        store: &Arc<ObjectStore>,
        location: &Location,
        id: ObjectId,
        batch: u32,
        local: ObjectId,
    ) -> Result<u64> {
        let part = Part {
            object: id,
            batch,
            local,
        };
        Ok(self.pull_parts_into(store, location, &[part]).await?[0])
    }

    /// Pulls one batch of each of many blocks from `location` into `store`, each as a new
    /// object (a block of that one batch), in one `DoGet` (one per [`MAX_PARTS`]); returns the
    /// parts' sizes as stored, in order. On failure the parts stored so far are freed, and the
    /// error names the object of the part that failed.
    pub async fn pull_parts_into(
        &self,
        store: &Arc<ObjectStore>,
        location: &Location,
        parts: &[Part],
    ) -> Result<Vec<u64>> {
        let mut sizes = Vec::with_capacity(parts.len());
        let pulled = async {
            for chunk in parts.chunks(MAX_PARTS) {
                let asked: Vec<_> = chunk.iter().map(|p| (p.object, p.batch)).collect();
                let first_object = chunk[0].object;
                let mut stream = self
                    .open(location, encode_parts(&asked), first_object)
                    .await?;
                let mut next = next_message(&mut stream, location, first_object).await?;
                for part in chunk {
                    let first = next.take().ok_or_else(|| {
                        malformed(location, part.object, "the answer ended before this part")
                    })?;
                    let (is_block, size) = parse_metadata(&first, location, part.object)?;
                    let mut receiver = store.receive(part.local, size)?;
                    let (_, following) = receive_part(
                        first,
                        &mut stream,
                        is_block,
                        size,
                        receiver.writer(),
                        location,
                        part.object,
                    )
                    .await?;
                    sizes.push(receiver.finish()?);
                    next = following;
                }
                if next.is_some() {
                    return Err(malformed(
                        location,
                        first_object,
                        "more parts in the answer than were asked for",
                    ));
                }
            }
            Ok(())
        };
        let pulled = pulled.await;
        if let Err(e) = pulled {
            for part in &parts[..sizes.len()] {
                store.free(part.local);
            }
            return Err(e);
        }
        Ok(sizes)
    }

    /// Stores `object` as `id` in the store of the node at `location` (Flight `DoPut`); returns
    /// its stored size.
    pub async fn push(&self, location: &Location, id: ObjectId, object: &Object) -> Result<u64> {
        self.push_as(location, id, object, None).await
    }

    /// [`push`](Self::push) on behalf of `job`: the node frees the object when the job ends
    /// (its driver finished or went away), if nobody freed it before.
    pub async fn push_for_job(
        &self,
        location: &Location,
        id: ObjectId,
        object: &Object,
        job: manta_engine::JobId,
    ) -> Result<u64> {
        self.push_as(location, id, object, Some(job)).await
    }

    async fn push_as(
        &self,
        location: &Location,
        id: ObjectId,
        object: &Object,
        job: Option<manta_engine::JobId>,
    ) -> Result<u64> {
        let mut stored = Vec::with_capacity(object.size_bytes() + 4096);
        manta_engine::store::write_object(&mut stored, object)?;
        let mut messages = crate::service::object_messages(id, bytes::Bytes::from(stored))?;
        // The descriptor: the object's id, then the owning job's, if any.
        let mut descriptor = id.as_bytes().to_vec();
        if let Some(job) = job {
            descriptor.extend_from_slice(job.as_bytes());
        }
        messages[0].flight_descriptor = Some(arrow_flight::FlightDescriptor::new_cmd(descriptor));
        let mut client = self.client(&location.flight_address).await?;
        let mut replies = in_time("DoPut", client.do_put(futures::stream::iter(messages)))
            .await
            .map_err(|status| fetch_failed(location, id, status))?
            .into_inner();
        let reply = in_time("DoPut's answer", replies.message())
            .await
            .map_err(|status| fetch_failed(location, id, status))?
            .ok_or_else(|| malformed(location, id, "DoPut answered nothing"))?;
        std::str::from_utf8(&reply.app_metadata)
            .ok()
            .and_then(|size| size.parse().ok())
            .ok_or_else(|| malformed(location, id, "DoPut's answer is not a size"))
    }

    /// Fetches `id` from `location` into this process's memory.
    pub async fn fetch(&self, location: &Location, id: ObjectId) -> Result<Object> {
        let (first, stream, is_block, size) = self.open_object(location, id).await?;
        let mut receiver = MemoryReceiver::with_capacity(size);
        receive(
            first,
            stream,
            is_block,
            size,
            receiver.writer(),
            location,
            id,
        )
        .await?;
        Ok(receiver.finish(id)?)
    }

    /// Asks `location` for object `id` whole: its first message, the rest of the stream, and
    /// whether it is a block of what declared size.
    async fn open_object(
        &self,
        location: &Location,
        id: ObjectId,
    ) -> Result<(FlightData, tonic::Streaming<FlightData>, bool, usize)> {
        let mut stream = self.open(location, encode_object(id), id).await?;
        let first = next_message(&mut stream, location, id)
            .await?
            .ok_or_else(|| malformed(location, id, "no messages"))?;
        let (is_block, size) = parse_metadata(&first, location, id)?;
        Ok((first, stream, is_block, size))
    }

    /// Sends `ticket` to `location`'s `DoGet`; errors name `id`.
    pub(crate) async fn open(
        &self,
        location: &Location,
        ticket: bytes::Bytes,
        id: ObjectId,
    ) -> Result<tonic::Streaming<FlightData>> {
        let mut client = self.client(&location.flight_address).await?;
        let ticket = Ticket { ticket };
        match in_time("DoGet", client.do_get(ticket)).await {
            Ok(response) => Ok(response.into_inner()),
            Err(status) => {
                if status.code() == tonic::Code::Unavailable {
                    // The channel may be stale (the node restarted): connect afresh next time.
                    self.clients.lock().remove(&location.flight_address);
                }
                Err(fetch_failed(location, id, status))
            }
        }
    }
}

pub(crate) async fn next_message(
    stream: &mut tonic::Streaming<FlightData>,
    location: &Location,
    id: ObjectId,
) -> Result<Option<FlightData>> {
    in_time("the object's first message", stream.message())
        .await
        .map_err(|status| fetch_failed(location, id, status))
}

/// Writes the messages of one object into `out` in the stored layout; returns bytes received.
/// The answer must hold that object only.
pub(crate) async fn receive(
    first: FlightData,
    mut stream: tonic::Streaming<FlightData>,
    is_block: bool,
    declared: usize,
    out: &mut (dyn std::io::Write + Send),
    location: &Location,
    id: ObjectId,
) -> Result<u64> {
    let (received, next) =
        receive_part(first, &mut stream, is_block, declared, out, location, id).await?;
    match next {
        None => Ok(received),
        Some(_) => Err(malformed(
            location,
            id,
            "more than one object in the answer",
        )),
    }
}

/// Writes the messages of one object or part into `out` in the stored layout, up to the first
/// message of the next part (one with `app_metadata`) or the end of the stream; returns the
/// bytes received and that next message.
async fn receive_part(
    first: FlightData,
    stream: &mut tonic::Streaming<FlightData>,
    is_block: bool,
    declared: usize,
    out: &mut (dyn std::io::Write + Send),
    location: &Location,
    id: ObjectId,
) -> Result<(u64, Option<FlightData>)> {
    let io = |e: std::io::Error| malformed(location, id, &format!("could not store it: {e}"));
    out.write_all(&header(is_block)).map_err(io)?;
    let mut received = 0u64;
    let mut message = Some(first);
    while let Some(data) = message {
        count_received(&mut received, &data, declared, location, id)?;
        if is_block {
            write_ipc_message(out, &data.data_header, &data.data_body).map_err(io)?;
        } else {
            out.write_all(&data.data_body).map_err(io)?;
        }
        message = in_time("the object's next message", stream.message())
            .await
            .map_err(|status| fetch_failed(location, id, status))?;
        if message.as_ref().is_some_and(|m| !m.app_metadata.is_empty()) {
            break;
        }
    }
    if is_block {
        write_ipc_end(out).map_err(io)?;
    }
    Ok((received, message))
}

/// Adds `data` to the bytes `received` of object `id`, which must stay within the `declared`
/// size its first message announced: a peer cannot make a receiver write without bound.
pub(crate) fn count_received(
    received: &mut u64,
    data: &FlightData,
    declared: usize,
    location: &Location,
    id: ObjectId,
) -> Result<()> {
    *received += (data.data_header.len() + data.data_body.len()) as u64;
    if *received > declared as u64 {
        return Err(malformed(
            location,
            id,
            &format!("more than the {declared} bytes its metadata declared"),
        ));
    }
    Ok(())
}

pub(crate) fn parse_metadata(
    first: &FlightData,
    location: &Location,
    id: ObjectId,
) -> Result<(bool, usize)> {
    let text = std::str::from_utf8(&first.app_metadata).unwrap_or("");
    let (kind, size) = text
        .strip_prefix("manta:")
        .and_then(|rest| rest.split_once(':'))
        .ok_or_else(|| malformed(location, id, "first message lacks manta metadata"))?;
    if kind == "error" {
        // A part the serving node could not read (see `service::failed_part`).
        let (code, message) = size.split_once(':').unwrap_or((size, ""));
        let code = code
            .parse()
            .map_or(tonic::Code::Unknown, tonic::Code::from_i32);
        return Err(fetch_failed(
            location,
            id,
            tonic::Status::new(code, message.to_string()),
        ));
    }
    let size = size
        .parse()
        .map_err(|_| malformed(location, id, "bad size in metadata"))?;
    match kind {
        "block" => Ok((true, size)),
        "bytes" => Ok((false, size)),
        other => Err(malformed(
            location,
            id,
            &format!("unknown object kind {other:?}"),
        )),
    }
}

pub(crate) fn fetch_failed(location: &Location, id: ObjectId, status: tonic::Status) -> Error {
    Error::FetchFailed {
        node: location.flight_address.to_string(),
        object: id,
        status: Box::new(status),
    }
}

pub(crate) fn malformed(location: &Location, id: ObjectId, reason: &str) -> Error {
    Error::Malformed {
        node: location.flight_address.to_string(),
        object: id,
        reason: reason.to_string(),
    }
}
