//! A reduce task's partitions: batch `b` (or each batch of a range) of each of its inputs (the
//! map outputs), made readable by its worker from this node's shared memory.
//!
//! * An input resident here is pinned and read in place (the worker picks the batch).
//! * An input spilled here is read in place too: the worker reads its batch alone from the
//!   spill file, through a link the store makes for it ([`ObjectStore::link_spilled_batch`]),
//!   so nothing is copied into shared memory and nothing else is spilled to make room. (A
//!   spilled block the store could not index, one with dictionaries, has the batch copied
//!   out as a scratch object.)
//! * Inputs on other nodes are pulled with **one `DoGet` per source node**, its ticket naming
//!   every part wanted there ([`manta_flight::ticket`]): a reduce task over the outputs of a
//!   thousand map tasks on three nodes makes three calls, not a thousand. The parts from one
//!   node are written into **one object**, whose batch `k` is part `k`
//!   ([`manta_flight::combined`]): one file per source node, not per part (parts that cannot
//!   share one IPC stream, dictionary-encoded say, are pulled one object each). Nodes are
//!   fetched from concurrently, and beside the local copies.
//!
//! Scratch objects (copied or pulled for this task alone) and links are removed when the task
//! ends, or when gathering fails, whichever part failed.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;

use futures::StreamExt;
use manta_engine::store::SpilledBatch;
use manta_engine::{ObjectId, ObjectMeta, ObjectStore, TaskStats};
use manta_flight::Part;

use super::NodeDaemon;
use crate::error::{Error, Result};

/// Source nodes a reduce task fetches from at once.
const SOURCE_FETCHES: usize = 16;

/// Objects copied or pulled for one task alone, and links made for its worker to read spill
/// files through: freed and removed when it is dropped.
pub(super) struct Scratch {
    store: Arc<ObjectStore>,
    objects: Vec<ObjectId>,
    links: Vec<std::path::PathBuf>,
}

impl Scratch {
    pub(super) fn new(store: &Arc<ObjectStore>) -> Self {
        Self {
            store: Arc::clone(store),
            objects: Vec::new(),
            links: Vec::new(),
        }
    }
}

impl Scratch {
    /// Frees or removes what was made for `partition` (of input `input`) with this scratch.
    fn keep(&mut self, partition: &Partition, input: ObjectId) {
        // Partitions pulled from one node are batches of one object, kept once.
        if partition.id != input && self.objects.last() != Some(&partition.id) {
            self.objects.push(partition.id);
        }
        if let Some(spilled) = &partition.spilled {
            self.links.push(spilled.path.clone());
        }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        for id in self.objects.drain(..) {
            self.store.free(id);
        }
        for link in self.links.drain(..) {
            if let Err(e) = std::fs::remove_file(&link) {
                tracing::warn!(link = %link.display(), "could not remove a spill file's link: {e}");
            }
        }
    }
}

/// One partition, readable by a worker: batch `index` of object `id` in shared memory (pinned
/// if it is the input itself), or a batch read from a spill file.
pub(super) struct Partition {
    pub(super) id: ObjectId,
    pub(super) index: u32,
    pub(super) pin: Option<manta_engine::Pin>,
    pub(super) spilled: Option<SpilledBatch>,
    /// Where its schema and batch messages lie in object `id`, when known.
    pub(super) ranges: Option<MessageRanges>,
}

/// The byte ranges of a batch's schema message and of its batch message in a stored block.
pub(super) type MessageRanges = (Range<u64>, Range<u64>);

impl Partition {
    /// Batch `index` of `id` in shared memory, its messages at `ranges` if known.
    fn in_memory(
        id: ObjectId,
        index: u32,
        pin: Option<manta_engine::Pin>,
        ranges: Option<MessageRanges>,
    ) -> Self {
        Self {
            id,
            index,
            pin,
            spilled: None,
            ranges,
        }
    }
}

/// Where the inputs of one reduce task come from.
#[derive(Default)]
struct Sources {
    /// Inputs in this node's store, by position.
    local: Vec<usize>,
    /// Inputs on other nodes, by Flight address: the node and the positions of its inputs.
    remote: HashMap<Arc<str>, (manta_engine::Location, Vec<usize>)>,
}

impl NodeDaemon {
    /// The wanted batch of each of `inputs` (an object and which of its batches), in order,
    /// readable by a worker; scratch objects are added to `scratch` and pulled bytes to `stats`.
    pub(super) async fn gather_partitions(
        &self,
        inputs: &[(ObjectMeta, u32)],
        scratch: &mut Scratch,
        stats: &mut TaskStats,
    ) -> Result<Vec<Partition>> {
        let mut sources = Sources::default();
        for (position, (meta, _)) in inputs.iter().enumerate() {
            if self.store.contains(meta.id) {
                sources.local.push(position);
            } else if meta.location.node == self.id {
                return Err(Error::ObjectLost {
                    object: meta.id,
                    node: self.address.clone(),
                });
            } else {
                sources
                    .remote
                    .entry(Arc::clone(&meta.location.flight_address))
                    .or_insert_with(|| (meta.location.clone(), Vec::new()))
                    .1
                    .push(position);
            }
        }
        let local = self.local_partitions(inputs, &sources.local);
        let remote = futures::stream::iter(sources.remote.into_values())
            .map(|(location, positions)| self.pull_partitions(inputs, location, positions))
            .buffer_unordered(SOURCE_FETCHES)
            .collect::<Vec<_>>();
        // Every fetch is awaited, so the scratch objects of those that succeeded are freed even
        // if another failed.
        let (local, remote) = futures::join!(local, remote);
        let mut slots: Vec<Option<Partition>> = inputs.iter().map(|_| None).collect();
        let mut first_error = None;
        for gathered in std::iter::once(local).chain(remote) {
            match gathered {
                Ok(partitions) => {
                    for (position, partition, pulled) in partitions {
                        scratch.keep(&partition, inputs[position].0.id);
                        if pulled > 0 {
                            stats.pulled_bytes += pulled;
                            stats.pulled_objects += 1;
                        }
                        slots[position] = Some(partition);
                    }
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        if let Some(e) = first_error {
            return Err(e);
        }
        let partitions = slots
            .into_iter()
            .map(|slot| slot.expect("every input is local or on a source node"))
            .collect();
        self.pin_copies(partitions).await
    }

    /// Pins the copies among `partitions` (pulled or copied into the store for this task), so
    /// that none is spilled before the worker maps it: the store may be over its budget while
    /// a task gathers its partitions, and spills the least recently used unpinned objects.
    async fn pin_copies(&self, mut partitions: Vec<Partition>) -> Result<Vec<Partition>> {
        let store = Arc::clone(&self.store);
        // Off the async threads: a copy spilled meanwhile is read back.
        tokio::task::spawn_blocking(move || {
            for partition in &mut partitions {
                if partition.pin.is_none() && partition.spilled.is_none() {
                    partition.pin = Some(store.pin(partition.id)?);
                }
            }
            Ok(partitions)
        })
        .await
        .map_err(|e| Error::Internal(e.to_string()))?
    }

    /// The partitions of the inputs at `positions`, all in this node's store (see
    /// [`local_partition`]).
    async fn local_partitions(
        &self,
        inputs: &[(ObjectMeta, u32)],
        positions: &[usize],
    ) -> Result<Vec<(usize, Partition, u64)>> {
        if positions.is_empty() {
            return Ok(Vec::new());
        }
        let store = Arc::clone(&self.store);
        let wanted: Vec<(usize, ObjectId, u32)> = positions
            .iter()
            .map(|&p| (p, inputs[p].0.id, inputs[p].1))
            .collect();
        // Off the async threads: linking touches the disk, and a copy reads a spill file.
        tokio::task::spawn_blocking(move || {
            let mut partitions = Vec::with_capacity(wanted.len());
            for &(position, id, batch) in &wanted {
                match local_partition(&store, id, batch) {
                    Ok(partition) => partitions.push((position, partition, 0)),
                    Err(e) => {
                        // What was made so far goes with the error.
                        let mut made = Scratch::new(&store);
                        for ((_, partition, _), &(_, input, _)) in partitions.iter().zip(&wanted) {
                            made.keep(partition, input);
                        }
                        return Err(Error::Engine(e));
                    }
                }
            }
            Ok(partitions)
        })
        .await
        .map_err(|e| Error::Internal(e.to_string()))?
    }

    /// The partitions of the inputs at `positions`, all on the node at `location`, pulled in
    /// one `DoGet` into one object whose batches they are ([`manta_flight::combined`]), or,
    /// if they cannot share one, one object each.
    async fn pull_partitions(
        &self,
        inputs: &[(ObjectMeta, u32)],
        location: manta_engine::Location,
        positions: Vec<usize>,
    ) -> Result<Vec<(usize, Partition, u64)>> {
        let wanted: Vec<(ObjectId, u32)> = positions
            .iter()
            .map(|&p| (inputs[p].0.id, inputs[p].1))
            .collect();
        let combined = ObjectId::random();
        let pulled = self
            .flight
            .pull_parts_combined(&self.store, &location, &wanted, combined)
            .await
            .map_err(|e| {
                let object = e.object().unwrap_or(wanted[0].0);
                Error::fetching(&location.flight_address, object, e)
            })?;
        if let Some(block) = pulled {
            // The pulled bytes are counted once, with the first partition.
            return Ok(positions
                .into_iter()
                .zip(block.parts)
                .enumerate()
                .map(|(k, (position, batch))| {
                    let ranges = Some((block.schema.clone(), batch));
                    let partition = Partition::in_memory(combined, k as u32, None, ranges);
                    (position, partition, if k == 0 { block.size } else { 0 })
                })
                .collect());
        }
        let parts: Vec<Part> = positions
            .iter()
            .map(|&p| Part {
                object: inputs[p].0.id,
                batch: inputs[p].1,
                local: ObjectId::random(),
            })
            .collect();
        let sizes = self
            .flight
            .pull_parts_into(&self.store, &location, &parts)
            .await
            .map_err(|e| {
                let object = e.object().unwrap_or(parts[0].object);
                Error::fetching(&location.flight_address, object, e)
            })?;
        Ok(positions
            .into_iter()
            .zip(parts)
            .zip(sizes)
            .map(|((position, part), size)| {
                (
                    position,
                    Partition::in_memory(part.local, 0, None, None),
                    size,
                )
            })
            .collect())
    }
}

/// Batch `batch` of `id`, which is in `store`: in place if resident (pinned, with where its
/// messages lie if it is in shared memory) or spilled (a link to its spill file), else (a
/// spilled block that is not indexed, or a spill directory without hard links) copied out
/// alone.
fn local_partition(
    store: &Arc<ObjectStore>,
    id: ObjectId,
    batch: u32,
) -> manta_engine::Result<Partition> {
    if let Some(pin) = store.pin_if_resident(id)? {
        let ranges = store.batch_ranges(id, batch as usize)?;
        return Ok(Partition::in_memory(id, batch, Some(pin), ranges));
    }
    match store.link_spilled_batch(id, batch as usize) {
        Ok(Some(spilled)) => {
            return Ok(Partition {
                spilled: Some(spilled),
                ..Partition::in_memory(id, 0, None, None)
            });
        }
        Ok(None) => {}
        // A spill directory that takes no hard links (some network file systems): the batch
        // is copied instead. (An object gone since is gone for the copy too, which says so.)
        Err(e) => tracing::debug!(%id, "reading a spilled partition through a copy: {e}"),
    }
    let copy = ObjectId::random();
    store.put(copy, store.get_batch(id, batch as usize)?)?;
    Ok(Partition::in_memory(copy, 0, None, None))
}
