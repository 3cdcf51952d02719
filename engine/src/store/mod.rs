//! One node's object store: immutable objects by id, within a memory budget, spilling past it.
//!
//! # How it works
//!
//! Every object is in one of three places:
//!
//! ```text
//!            put / adopt                     make_room (over budget, LRU, unpinned)
//!   caller ──────────────▶ resident ───────────────────────────────────────────▶ spilled
//!                          (heap or /dev/shm)  ◀─────────────────────────────── (disk file)
//!                                                  get / pin (restore on access)
//! ```
//!
//! * **Resident on the heap** (the embedded runtime): the object is kept as Arrow arrays; `get`
//!   clones `Arc`s, so nothing is serialised or copied on the fast path.
//! * **Resident in shared memory** (a node daemon): the object is a file in the node's
//!   [`ObjectDir`] under `/dev/shm`; `get` maps it and decodes in place, and worker processes on
//!   the same node map the same file, so every reader shares one copy.
//! * **Spilled**: past the byte budget, the least recently used objects that nobody has pinned
//!   are written to the spill directory and dropped from memory; `get` brings them back.
//!
//! A *pin* keeps an object resident while someone reads it: a mapping handed out by `get` pins
//! until its last buffer is dropped, and a node daemon pins a task's inputs while the task runs.
//! [`ObjectStore::free`] deletes an object when its owner reports that no reference is left.
//!
//! Disk I/O for spilling and restoring runs outside the store's lock; an object in motion is
//! marked as such and readers wait for it on a condition variable.

mod batch_index;
mod file_write;
mod format;
mod object_dir;
mod pressure;
mod recycle;
mod spill;
mod spill_behind;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};

use arrow::buffer::MutableBuffer;
use bytes::Bytes;
use parking_lot::{Condvar, Mutex};

use batch_index::BatchIndex;

pub use batch_index::SpilledBatch;
pub use format::{
    HEADER_LEN, IpcMessage, header, ipc_messages, is_block, read_batch_at, read_block_stream,
    read_object, read_object_batch, read_object_validated, write_block_stream, write_ipc_end,
    write_ipc_message, write_object,
};
pub use object_dir::{ObjectDir, default_shared_parent, process_alive, remove_stale_sessions};
pub use pressure::{on_pressure_change, under_pressure};

use crate::error::{Error, Result};
use crate::ids::ObjectId;
use crate::object::{Block, Object};

/// How a store is set up.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// Bytes of objects kept in memory before spilling.
    pub budget_bytes: u64,
    /// Keep objects in shared memory (`Some(parent of the session directory)`), or on the heap.
    pub shared_parent: Option<PathBuf>,
    /// Where the spill session directory is created (default: [`default_spill_parent`], on
    /// disk: spilling into tmpfs would only move the memory it frees).
    pub spill_parent: PathBuf,
}

/// `<user cache dir>/spill` (see [`crate::dirs::user_cache_dir`]).
pub fn default_spill_parent() -> PathBuf {
    crate::dirs::user_cache_dir().join("spill")
}

impl StoreConfig {
    /// A heap store for the embedded runtime.
    pub fn heap(budget_bytes: u64) -> Self {
        Self {
            budget_bytes,
            shared_parent: None,
            spill_parent: default_spill_parent(),
        }
    }

    /// A shared-memory store for a node daemon, in `/dev/shm`.
    pub fn shared(budget_bytes: u64) -> Self {
        Self {
            budget_bytes,
            shared_parent: Some(default_shared_parent()),
            spill_parent: default_spill_parent(),
        }
    }
}

/// How one batch of a block is read without restoring the block ([`ObjectStore::one_batch`]).
pub enum OneBatch {
    /// The block is spilled: the stored bytes of a block of that batch alone, read from its
    /// spill file.
    Read(Bytes),
    /// The block is resident, and stays so while this pin lives: read the batch in place.
    Resident(Pin),
    /// The block is spilled without an index of its batches (it has dictionaries): only a
    /// restore reads it.
    Unindexed,
}

/// Batch `index` of a block object, as a block of that one batch (empty past the last).
pub fn select_batch(id: ObjectId, object: Object, index: usize) -> Result<Object> {
    let Object::Block(block) = object else {
        return Err(Error::CorruptObject {
            id,
            reason: "a batch was asked of a bytes object".into(),
        });
    };
    let schema = std::sync::Arc::clone(block.schema());
    let batch =
        block.batches().get(index).cloned().unwrap_or_else(|| {
            arrow::array::RecordBatch::new_empty(std::sync::Arc::clone(&schema))
        });
    Ok(Object::Block(Block::try_new(schema, vec![batch])?))
}

/// What storing one object did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stored {
    /// The object's size in the store.
    pub size_bytes: u64,
    /// Bytes of other objects spilled to disk to make room for it.
    pub spilled_bytes: u64,
}

/// A snapshot of what the store holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreUsage {
    /// The memory budget.
    pub budget_bytes: u64,
    /// Bytes of objects in memory now.
    pub resident_bytes: u64,
    /// Bytes of objects in the spill directory now.
    pub spilled_bytes: u64,
    /// Objects stored.
    pub objects: u64,
    /// Bytes written to the spill directory since the store started.
    pub spilled_bytes_total: u64,
    /// Bytes read back from the spill directory since the store started.
    pub restored_bytes_total: u64,
    /// Bytes of freed shared-memory files kept to be written over (see `recycle`).
    pub recycled_bytes: u64,
}

enum Residence {
    Heap(Object),
    /// In shared memory; mapped and decoded once the first `get` asks for it.
    Shared(Option<Mapped>),
    /// Being spilled or restored by another thread.
    Moving,
    /// In the spill directory, with the index of its batches if it is a block without
    /// dictionaries (see [`batch_index`]).
    Spilled(Option<Arc<BatchIndex>>),
}

/// A shared-memory block mapped and decoded once and kept for later gets, so a repeated `get`
/// clones `Arc`s instead of mapping and decoding again.
///
/// Whether any reader still holds (part of) the block is told by reference counts: a reader
/// holding a batch or a column holds the cached arrays' `Arc`s (count above one), and a reader
/// holding a slice or a buffer holds a clone of the one Arrow buffer all arrays are slices of
/// (count above the `baseline` the cached block accounts for). Such an object is in use, like a
/// pinned one: it is neither spilled nor recycled.
struct Mapped {
    object: Object,
    root: arrow::buffer::Buffer,
    baseline: usize,
}

impl Mapped {
    /// Caches a decoded block whose buffers all come from one mapping; `None` if there is
    /// nothing to count references by (bytes, or a block without buffers).
    fn new(object: Object) -> Option<Self> {
        let Object::Block(block) = &object else {
            return None;
        };
        let root = block
            .batches()
            .iter()
            .flat_map(|b| b.columns())
            .find_map(|c| c.to_data().buffers().first().cloned())?;
        let baseline = root.strong_count();
        Some(Self {
            object,
            root,
            baseline,
        })
    }

    fn has_readers(&self) -> bool {
        let Object::Block(block) = &self.object else {
            return false;
        };
        self.root.strong_count() > self.baseline
            || block
                .batches()
                .iter()
                .any(|b| b.columns().iter().any(|c| Arc::strong_count(c) > 1))
    }
}

struct Entry {
    residence: Residence,
    size_bytes: u64,
    pins: u32,
    last_used: u64,
    /// The job the object was put for by a client outside the node (see
    /// [`ObjectStore::free_job`]).
    job: Option<crate::ids::JobId>,
    /// Where the batches of a shared-memory block lie in its file, once one was served alone
    /// ([`ObjectStore::shared_batch`]); the file never changes, so neither does the index.
    batches: Option<Arc<BatchIndex>>,
    /// The mapping the store wrote the object's shared-memory file through, kept for the next
    /// write over the file once it is recycled (see [`file_write`]).
    write_mapping: Option<file_write::WriteMapping>,
}

impl Entry {
    /// Whether someone reads the object now: pinned, or a cached block still held elsewhere.
    fn in_use(&self) -> bool {
        self.pins > 0
            || matches!(&self.residence, Residence::Shared(Some(mapped)) if mapped.has_readers())
    }
}

#[derive(Default)]
struct State {
    entries: HashMap<ObjectId, Entry>,
    /// Objects being received ([`ObjectStore::receive`]): their ids are taken.
    receiving: std::collections::HashSet<ObjectId>,
    usage: StoreUsage,
    clock: u64,
    /// Whether the store is under memory pressure, as told to the process (see [`pressure`]).
    pressure: pressure::StorePressure,
}

impl State {
    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    /// Tells the process whether the store is under memory pressure (see [`pressure`]): it
    /// holds spilled objects, or its resident objects fill three quarters of its budget.
    /// Called wherever `usage` changes.
    fn note_pressure(&mut self) {
        let usage = &self.usage;
        let nearly_full = usage.resident_bytes >= usage.budget_bytes - usage.budget_bytes / 4;
        self.pressure.set(usage.spilled_bytes > 0 || nearly_full);
    }
}

/// A node's object store. Always used behind an `Arc` (pins point back to it).
pub struct ObjectStore {
    state: Mutex<State>,
    moved: Condvar,
    shared: Option<ObjectDir>,
    spill: ObjectDir,
    recycler: recycle::Recycler,
    /// The background spiller of [`ObjectStore::adopt_spilling_behind`].
    spilling: spill_behind::SpillBehind,
}

impl std::fmt::Debug for ObjectStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectStore")
            .field("usage", &self.usage())
            .field("shared", &self.shared)
            .finish()
    }
}

impl ObjectStore {
    /// Creates a store and its session directories.
    pub fn new(config: StoreConfig) -> Result<Arc<Self>> {
        let shared = config
            .shared_parent
            .as_deref()
            .map(ObjectDir::create_session)
            .transpose()?;
        let spill = ObjectDir::create_session(&config.spill_parent)?;
        let state = State {
            usage: StoreUsage {
                budget_bytes: config.budget_bytes,
                ..Default::default()
            },
            ..Default::default()
        };
        let recycler = recycle::Recycler::new(config.budget_bytes / 4);
        Ok(Arc::new(Self {
            state: Mutex::new(state),
            moved: Condvar::new(),
            shared,
            spill,
            recycler,
            spilling: Default::default(),
        }))
    }

    /// The shared-memory directory worker processes open, if objects live in shared memory.
    pub fn shared_dir(&self) -> Option<&Path> {
        self.shared.as_ref().map(ObjectDir::path)
    }

    /// The directory spilled objects are written to (each sealed by a rename, as in the
    /// shared-memory directory).
    pub fn spill_dir(&self) -> &Path {
        self.spill.path()
    }

    /// What the store holds now.
    pub fn usage(&self) -> StoreUsage {
        StoreUsage {
            recycled_bytes: self.recycler.bytes(),
            ..self.state.lock().usage
        }
    }

    /// A freed shared-memory file to write the next object into (its pages already exist),
    /// for a worker process writing its task's output. `None` if there is none to spare.
    pub fn take_recycled(&self) -> Option<PathBuf> {
        self.recycler.take()
    }

    /// Gives back a file from [`take_recycled`](Self::take_recycled) that was not written (its
    /// task's output went elsewhere).
    pub fn give_back_recycled(&self, path: &std::path::Path) {
        let Some(dir) = self.shared_dir() else {
            return;
        };
        match std::fs::metadata(path) {
            Ok(meta) => {
                self.recycler.keep(dir, path, meta.len(), None);
            }
            Err(_) => {
                let _ = std::fs::remove_file(path);
            }
        }
    }

    /// Whether `id` is stored here (resident or spilled).
    pub fn contains(&self, id: ObjectId) -> bool {
        self.state.lock().entries.contains_key(&id)
    }

    /// Stores `object` as `id`; returns its size in the store. May spill older objects.
    pub fn put(&self, id: ObjectId, object: Object) -> Result<u64> {
        self.put_reporting(id, object)
            .map(|stored| stored.size_bytes)
    }

    /// [`put`](Self::put), also saying how many bytes of other objects it spilled.
    pub fn put_reporting(&self, id: ObjectId, object: Object) -> Result<Stored> {
        let (residence, size_bytes, write_mapping) = match &self.shared {
            Some(dir) => {
                let recycled = self.recycler.take_fitting(object.size_bytes() as u64);
                let (size, mapping) = dir.write_over(id, &object, recycled)?;
                (Residence::Shared(None), size, mapping)
            }
            None => {
                let object = object.compacted();
                let size = object.size_bytes() as u64;
                (Residence::Heap(object), size, None)
            }
        };
        self.insert(id, residence, size_bytes, write_mapping);
        let spilled_bytes = self.make_room(None)?;
        Ok(Stored {
            size_bytes,
            spilled_bytes,
        })
    }

    /// Takes ownership of an object file a worker process wrote and sealed in the shared
    /// directory; returns its size.
    pub fn adopt(&self, id: ObjectId) -> Result<u64> {
        self.adopt_reporting(id).map(|stored| stored.size_bytes)
    }

    /// [`adopt`](Self::adopt), also saying how many bytes of other objects it spilled.
    pub fn adopt_reporting(&self, id: ObjectId) -> Result<Stored> {
        let size = self.take_sealed(id, None)?;
        let spilled_bytes = self.make_room(None)?;
        Ok(Stored {
            size_bytes: size,
            spilled_bytes,
        })
    }

    /// [`adopt`](Self::adopt) of a file this process wrote through `mapping` (kept for the
    /// next write over the file, see [`file_write`]): an object received over Flight, or a
    /// reduce task's partitions pulled from another node. Room is made behind it, within the
    /// slack (see [`spill_behind`]), so a task's inputs do not wait for the disk.
    fn adopt_written(
        self: &Arc<Self>,
        id: ObjectId,
        mapping: Option<file_write::WriteMapping>,
    ) -> Result<u64> {
        let size = self.take_sealed(id, mapping)?;
        self.make_room_behind()?;
        Ok(size)
    }

    /// Counts the sealed shared-memory file of `id` (written by another process, or by this
    /// one through `mapping`) as a resident object of this store, without making room; its
    /// size.
    fn take_sealed(&self, id: ObjectId, mapping: Option<file_write::WriteMapping>) -> Result<u64> {
        let dir = self
            .shared
            .as_ref()
            .expect("adopt needs a shared-memory store");
        let path = dir.file(id);
        let size = std::fs::metadata(&path)
            .map_err(|e| Error::io(&path, e))?
            .len();
        self.insert(id, Residence::Shared(None), size, mapping);
        Ok(size)
    }

    /// The object, restored first if it was spilled. Shared-memory objects are mapped without
    /// copying and stay pinned while any of the returned buffers live.
    pub fn get(self: &Arc<Self>, id: ObjectId) -> Result<Object> {
        let pin = match self.access(id, true)? {
            Access::Ready(object) => return Ok(object),
            Access::Pinned(pin) => pin,
        };
        // First read of a shared-memory object: map and decode it, then keep it for later
        // gets. Bytes objects (no buffers to count readers by) stay pinned by their mapping.
        let object = self.shared_dir_ref().read(id, None)?;
        match Mapped::new(object.clone()) {
            Some(mapped) => {
                let mut state = self.state.lock();
                if let Some(entry) = state.entries.get_mut(&id)
                    && matches!(entry.residence, Residence::Shared(None))
                {
                    entry.residence = Residence::Shared(Some(mapped));
                }
                drop(state);
                drop(pin);
                Ok(object)
            }
            None => {
                drop(object);
                self.shared_dir_ref().read(id, Some(Box::new(pin)))
            }
        }
    }

    /// Batch `index` of a stored block, as a block of that one batch (empty past the last),
    /// without restoring a spilled block: only that batch is read from its spill file (see
    /// [`one_batch`](Self::one_batch)), so a reduce task reading its partition of a spilled
    /// map output reads only that partition. Zero-copy for resident blocks.
    pub fn get_batch(self: &Arc<Self>, id: ObjectId, index: usize) -> Result<Object> {
        match self.one_batch(id, index)? {
            OneBatch::Read(bytes) => read_object(id, bytes),
            // Pinned, so it cannot be spilled before `get` has it.
            OneBatch::Resident(_pin) => select_batch(id, self.get(id)?, index),
            OneBatch::Unindexed => select_batch(id, self.get(id)?, index),
        }
    }

    /// If `id` is a spilled block with an index of its batches, the stored bytes of a block of
    /// its batch `index` alone (see [`one_batch`](Self::one_batch)); `None` if it is resident
    /// (or not indexed), when a caller reads it the usual way.
    pub fn spilled_batch(self: &Arc<Self>, id: ObjectId, index: usize) -> Result<Option<Bytes>> {
        Ok(match self.one_batch(id, index)? {
            OneBatch::Read(bytes) => Some(bytes),
            OneBatch::Resident(_) | OneBatch::Unindexed => None,
        })
    }

    /// How to read batch `index` of block `id` without restoring it, decided under one lock
    /// (so the block cannot move between the look and the read): from its spill file, read
    /// here with two `pread`s into a fresh buffer (never mapped: see [`batch_index`]), or in
    /// place, the block pinned resident. A spill or restore under way is waited for.
    pub fn one_batch(self: &Arc<Self>, id: ObjectId, index: usize) -> Result<OneBatch> {
        let (file, batches) = {
            let mut state = self.state.lock();
            let entry = self.settled(&mut state, id)?;
            match &entry.residence {
                Residence::Spilled(Some(batches)) => {
                    // Opened under the lock, so no restore can remove the file first; the open
                    // file stays readable after that.
                    let path = self.spill.file(id);
                    let file = std::fs::File::open(&path).map_err(|e| Error::io(&path, e))?;
                    (file, Arc::clone(batches))
                }
                Residence::Spilled(None) => return Ok(OneBatch::Unindexed),
                Residence::Heap(_) | Residence::Shared(_) => {
                    entry.pins += 1;
                    drop(state);
                    return Ok(OneBatch::Resident(Pin::new(self, id)));
                }
                Residence::Moving => unreachable!("settled"),
            }
        };
        batches
            .read_batch(&file, &self.spill.file(id), index)
            .map(OneBatch::Read)
    }

    /// Batch `index` of shared-memory block `id`, as its schema message and its batch message
    /// (each framed, as in the stored stream; the batch empty past the last), zero-copy from
    /// the mapping, which stays pinned while they live. `None` if `id` is not a block in shared
    /// memory or has dictionaries (the caller reads it whole then). A spilled block is
    /// restored, as [`stored_bytes`](Self::stored_bytes) does. The block's messages are
    /// indexed the first time (see [`batch_index`]).
    pub fn shared_batch(
        self: &Arc<Self>,
        id: ObjectId,
        index: usize,
    ) -> Result<Option<(Bytes, Bytes)>> {
        let pin = match self.access(id, false)? {
            Access::Ready(_) => return Ok(None),
            Access::Pinned(pin) => pin,
        };
        let Some(batches) = self.shared_index(id)? else {
            return Ok(None);
        };
        let stored = self.shared_dir_ref().map(id, Some(Box::new(pin)))?;
        let cut = |range: std::ops::Range<u64>| -> Result<Bytes> {
            let (start, end) = (range.start as usize, range.end as usize);
            if start > end || end > stored.len() {
                return Err(Error::CorruptObject {
                    id,
                    reason: format!("a batch at {start}..{end} of a {}-byte file", stored.len()),
                });
            }
            Ok(stored.slice(start..end))
        };
        Ok(Some((cut(batches.schema())?, cut(batches.batch(index))?)))
    }

    /// Where batch `index` of block `id`, resident in shared memory, lies in its file: the
    /// schema message's bytes and the batch message's bytes (empty past the last). A worker of
    /// this node given them reads the batch out of its mapping ([`read_batch_at`]) without
    /// stepping over the messages before it, which for a reduce task over map outputs of
    /// hundreds of batches touched a page of each. `None` if `id` is not resident in shared
    /// memory, or has dictionaries. The caller keeps it pinned while the ranges are used.
    pub fn batch_ranges(
        &self,
        id: ObjectId,
        index: usize,
    ) -> Result<Option<(std::ops::Range<u64>, std::ops::Range<u64>)>> {
        Ok(self
            .shared_index(id)?
            .map(|batches| (batches.schema(), batches.batch(index))))
    }

    /// The index of shared-memory block `id`'s messages (see [`batch_index`]), made the first
    /// time from its file and kept with its entry (the file never changes); `None` if it is not
    /// resident in shared memory, or is not a block without dictionaries.
    fn shared_index(&self, id: ObjectId) -> Result<Option<Arc<BatchIndex>>> {
        {
            let state = self.state.lock();
            let entry = state.entries.get(&id).ok_or(Error::ObjectNotFound { id })?;
            if !matches!(entry.residence, Residence::Shared(_)) {
                return Ok(None);
            }
            if let Some(known) = &entry.batches {
                return Ok(Some(Arc::clone(known)));
            }
        }
        let path = self.shared_dir_ref().file(id);
        let file = std::fs::File::open(&path).map_err(|e| Error::io(&path, e))?;
        let Some(made) = BatchIndex::of_file(id, &file, &path)? else {
            return Ok(None);
        };
        let made = Arc::new(made);
        if let Some(entry) = self.state.lock().entries.get_mut(&id) {
            entry.batches = Some(Arc::clone(&made));
        }
        Ok(Some(made))
    }

    /// For a reader in another process: if `id` is a spilled block with an index of its
    /// batches, a new hard link to its spill file and where batch `index` lies in it; `None` if
    /// it is resident (or not indexed), when the reader has it the usual way. A spill or
    /// restore under way is waited for.
    ///
    /// The link keeps the file's bytes as they are while the reader needs them, whatever the
    /// store does meanwhile (a restore or a free removes the spill file's name, never its
    /// content; a later spill writes a new file). The caller removes the link when done.
    pub fn link_spilled_batch(&self, id: ObjectId, index: usize) -> Result<Option<SpilledBatch>> {
        let mut state = self.state.lock();
        let entry = self.settled(&mut state, id)?;
        let Residence::Spilled(Some(batches)) = &entry.residence else {
            return Ok(None);
        };
        // Linked under the lock, so no restore can remove the file first.
        let link = self
            .spill
            .path()
            .join(format!("reader-{}", ObjectId::random()));
        let path = self.spill.file(id);
        std::fs::hard_link(&path, &link).map_err(|e| Error::io(&path, e))?;
        Ok(Some(SpilledBatch {
            path: link,
            schema: batches.schema(),
            batch: batches.batch(index),
        }))
    }

    /// Keeps `id` resident until the returned pin drops, if it is resident now; `None` if it is
    /// spilled, which a caller that can read spilled objects in place prefers to restoring it.
    /// A spill or restore under way is waited for.
    pub fn pin_if_resident(self: &Arc<Self>, id: ObjectId) -> Result<Option<Pin>> {
        let mut state = self.state.lock();
        let entry = self.settled(&mut state, id)?;
        match entry.residence {
            Residence::Heap(_) | Residence::Shared(_) => {
                entry.pins += 1;
                drop(state);
                Ok(Some(Pin::new(self, id)))
            }
            Residence::Spilled(_) | Residence::Moving => Ok(None),
        }
    }

    /// `id`'s entry once it is not moving: a spill or restore under way is waited for (the
    /// thread moving it holds no lock meanwhile, and wakes the waiters when done).
    ///
    /// The readers of single batches wait rather than read a moving object some other way: a
    /// reduce task's partition of a map output being spilled was read by restoring the whole
    /// output, which pushed out another, and so on (in a scale-10 shuffle on a full store,
    /// a restore of a whole block for a partition of a 240th of it, many times per task).
    fn settled<'a>(
        &self,
        state: &'a mut parking_lot::MutexGuard<'_, State>,
        id: ObjectId,
    ) -> Result<&'a mut Entry> {
        loop {
            let entry = state.entries.get(&id).ok_or(Error::ObjectNotFound { id })?;
            if !matches!(entry.residence, Residence::Moving) {
                break;
            }
            self.moved.wait(state);
        }
        Ok(state
            .entries
            .get_mut(&id)
            .expect("found just now, under the lock"))
    }

    /// The object's stored bytes (header and payload, see [`write_object`]), for sending it
    /// elsewhere. Zero-copy for shared-memory objects, which stay pinned while the bytes live;
    /// heap objects are encoded.
    pub fn stored_bytes(self: &Arc<Self>, id: ObjectId) -> Result<Bytes> {
        match self.access(id, false)? {
            Access::Ready(object) => {
                let mut out = Vec::with_capacity(object.size_bytes() + HEADER_LEN);
                write_object(&mut out, &object)?;
                Ok(Bytes::from(out))
            }
            Access::Pinned(pin) => self.shared_dir_ref().map(id, Some(Box::new(pin))),
        }
    }

    /// Starts receiving `id` as stored bytes (see [`write_object`]) arriving in pieces, from
    /// another node say. `size_hint` is the expected total. An id already stored, or being
    /// received, is [`Error::ObjectExists`]: an object never changes under its readers.
    pub fn receive(self: &Arc<Self>, id: ObjectId, size_hint: usize) -> Result<ObjectReceiver> {
        {
            let mut state = self.state.lock();
            if state.entries.contains_key(&id) || !state.receiving.insert(id) {
                return Err(Error::ObjectExists { id });
            }
        }
        // From here the receiver owns the id: dropping it gives the id back.
        let mut receiver = ObjectReceiver {
            store: Arc::clone(self),
            id,
            target: None,
        };
        let target = match &self.shared {
            Some(dir) => {
                let recycled = self.recycler.take_fitting(size_hint as u64);
                let (path, kept) = match recycled {
                    Some(recycle::RecycledFile { path, mapping }) => (Some(path), mapping),
                    None => (None, None),
                };
                let (file, tmp, reused) = dir.open_tmp_reusing(id, path.as_deref())?;
                // Over a recycled file through a mapping; a fresh file with `write(2)`, which
                // allocates its pages as it fills them.
                let mapped = match reused {
                    true => file_write::MappedWriter::new(&file, kept, size_hint).map_err(|e| {
                        let _ = std::fs::remove_file(&tmp);
                        Error::io(&tmp, e)
                    })?,
                    false => None,
                };
                match mapped {
                    Some(out) => Target::Mapped { out, tmp },
                    None => Target::File {
                        out: std::io::BufWriter::with_capacity(1 << 20, file),
                        tmp,
                    },
                }
            }
            None => Target::Memory(AlignedWriter(MutableBuffer::with_capacity(size_hint))),
        };
        receiver.target = Some(target);
        Ok(receiver)
    }

    /// Keeps `id` resident (restoring it if needed) until the returned pin drops.
    pub fn pin(self: &Arc<Self>, id: ObjectId) -> Result<Pin> {
        self.with_resident(id, |store, entry| {
            entry.pins += 1;
            Ok(Pin::new(store, id))
        })
    }

    /// Records that `id` was put for `job` (by its driver, from outside the node): if it is
    /// still here when the job ends, [`free_job`](Self::free_job) deletes it.
    pub fn set_job(&self, id: ObjectId, job: crate::ids::JobId) {
        if let Some(entry) = self.state.lock().entries.get_mut(&id) {
            entry.job = Some(job);
        }
    }

    /// Deletes the objects put for `job` that are still here (its driver ended, or went away
    /// without freeing them); returns how many.
    pub fn free_job(&self, job: crate::ids::JobId) -> usize {
        let ids: Vec<ObjectId> = self
            .state
            .lock()
            .entries
            .iter()
            .filter(|(_, entry)| entry.job == Some(job))
            .map(|(id, _)| *id)
            .collect();
        for id in &ids {
            self.free(*id);
        }
        ids.len()
    }

    /// Deletes `id` (its owner holds no reference any more). Readers that already mapped it
    /// keep their mapping.
    pub fn free(&self, id: ObjectId) {
        let mut state = self.state.lock();
        let Some(entry) = state.entries.remove(&id) else {
            return;
        };
        state.usage.objects -= 1;
        match entry.residence {
            Residence::Heap(_) => {
                state.usage.resident_bytes -= entry.size_bytes;
                state.note_pressure();
            }
            Residence::Shared(_) => {
                state.usage.resident_bytes -= entry.size_bytes;
                state.note_pressure();
                drop(state);
                let dir = self.shared_dir_ref();
                if !entry.in_use() {
                    self.recycler.keep(
                        dir.path(),
                        &dir.file(id),
                        entry.size_bytes,
                        entry.write_mapping,
                    );
                } else {
                    dir.remove(id);
                }
            }
            Residence::Spilled(_) => {
                state.usage.spilled_bytes -= entry.size_bytes;
                state.note_pressure();
                drop(state);
                self.spill.remove(id);
            }
            // The thread moving it sees the entry gone, fixes the counters and removes the files.
            Residence::Moving => {}
        }
    }

    /// A heap object (or, with `use_cache`, a cached mapped block) ready to hand out, or a pin
    /// on a shared-memory object the caller then maps.
    fn access(self: &Arc<Self>, id: ObjectId, use_cache: bool) -> Result<Access> {
        self.with_resident(id, |store, entry| match &entry.residence {
            Residence::Heap(object) => Ok(Access::Ready(object.clone())),
            Residence::Shared(Some(mapped)) if use_cache => {
                Ok(Access::Ready(mapped.object.clone()))
            }
            _ => {
                entry.pins += 1;
                Ok(Access::Pinned(Pin::new(store, id)))
            }
        })
    }

    fn shared_dir_ref(&self) -> &ObjectDir {
        self.shared
            .as_ref()
            .expect("only shared-memory objects are pinned")
    }

    fn insert(
        &self,
        id: ObjectId,
        residence: Residence,
        size_bytes: u64,
        write_mapping: Option<file_write::WriteMapping>,
    ) {
        let mut state = self.state.lock();
        let last_used = state.tick();
        let old = state.entries.insert(
            id,
            Entry {
                residence,
                size_bytes,
                pins: 0,
                last_used,
                job: None,
                batches: None,
                write_mapping,
            },
        );
        assert!(old.is_none(), "object {id} stored twice");
        state.usage.objects += 1;
        state.usage.resident_bytes += size_bytes;
        state.note_pressure();
    }

    /// Runs `f` on `id`'s entry once the object is resident, restoring it first if spilled.
    fn with_resident<T>(
        self: &Arc<Self>,
        id: ObjectId,
        f: impl FnOnce(&Arc<Self>, &mut Entry) -> Result<T>,
    ) -> Result<T> {
        let mut state = self.state.lock();
        loop {
            let tick = state.tick();
            let entry = state
                .entries
                .get_mut(&id)
                .ok_or(Error::ObjectNotFound { id })?;
            match entry.residence {
                Residence::Heap(_) | Residence::Shared(_) => {
                    entry.last_used = tick;
                    return f(self, entry);
                }
                Residence::Moving => self.moved.wait(&mut state),
                Residence::Spilled(_) => {
                    entry.last_used = tick;
                    entry.residence = Residence::Moving;
                    let size = entry.size_bytes;
                    state.usage.spilled_bytes -= size;
                    state.usage.resident_bytes += size;
                    state.note_pressure();
                    drop(state);
                    let restored = self.restore(id);
                    state = self.state.lock();
                    self.finish_move(&mut state, id, size, restored, Direction::Restore)?;
                    // Restoring may push others out, never the one being restored (it is about
                    // to be used: spilling it would restore it again, round and round).
                    drop(state);
                    self.make_room(Some(id))?;
                    state = self.state.lock();
                }
            }
        }
    }

    /// Reads a spilled object back: onto the heap, or into shared memory.
    fn restore(&self, id: ObjectId) -> Result<Residence> {
        match &self.shared {
            Some(dir) => {
                let tmp = dir.path().join(format!("{id}.tmp"));
                let from = self.spill.file(id);
                std::fs::copy(&from, &tmp).map_err(|e| Error::io(&from, e))?;
                dir.seal(id, &tmp)?;
                Ok(Residence::Shared(None))
            }
            None => {
                let path = self.spill.file(id);
                let bytes = read_aligned(&path)?;
                Ok(Residence::Heap(read_object(id, bytes)?))
            }
        }
    }

    /// The batch index of a just-spilled object (see [`batch_index`]); none if it cannot be
    /// made, which only costs readers of single batches a restore.
    fn index_spilled(&self, id: ObjectId) -> Option<Arc<BatchIndex>> {
        let path = self.spill.file(id);
        let indexed = std::fs::File::open(&path)
            .map_err(|e| Error::io(&path, e))
            .and_then(|file| BatchIndex::of_file(id, &file, &path));
        match indexed {
            Ok(index) => index.map(Arc::new),
            Err(e) => {
                tracing::warn!(%id, error = %e, "could not index a spilled block's batches");
                None
            }
        }
    }

    /// Spills least-recently-used unpinned objects (other than `keep`) until the resident
    /// bytes and the recycled files fit the budget; returns the bytes spilled.
    ///
    /// Recycled files hold no data anyone needs, so they go first, but for a reserve (see
    /// [`recycle::reserve`]) kept while there is an object to spill instead: on a full store
    /// (a stage whose outputs overflow it) every spilled file would otherwise be deleted at
    /// once, and every next output written into freshly allocated pages.
    fn make_room(&self, keep: Option<ObjectId>) -> Result<u64> {
        let mut spilled_bytes = 0;
        loop {
            let mut state = self.state.lock();
            let budget = state.usage.budget_bytes;
            let resident = state.usage.resident_bytes;
            let pooled = self.recycler.bytes();
            if resident + pooled <= budget {
                return Ok(spilled_bytes);
            }
            let reserve = recycle::reserve(budget).min(pooled);
            self.recycler
                .shrink_to(budget.saturating_sub(resident).max(reserve));
            if resident + self.recycler.bytes() <= budget {
                return Ok(spilled_bytes);
            }
            let candidates = state.entries.iter().filter(|(id, _)| Some(**id) != keep);
            let Some(id) = spill::choose_victim(candidates.map(|(id, e)| (*id, e))) else {
                // Nothing to spill: the reserve goes too.
                self.recycler.shrink_to(budget.saturating_sub(resident));
                tracing::debug!(usage = ?state.usage, "over budget, but every resident object is pinned");
                return Ok(spilled_bytes);
            };
            spilled_bytes += state.entries[&id].size_bytes;
            let entry = state.entries.get_mut(&id).expect("victim exists");
            let size = entry.size_bytes;
            let residence = std::mem::replace(&mut entry.residence, Residence::Moving);
            let write_mapping = entry.write_mapping.take();
            state.usage.resident_bytes -= size;
            state.usage.spilled_bytes += size;
            state.note_pressure();
            drop(state);
            let spilled = self.spill_out(id, residence, write_mapping);
            let mut state = self.state.lock();
            self.finish_move(&mut state, id, size, spilled, Direction::Spill)?;
        }
    }

    /// Writes one object to the spill directory and drops it from memory; on failure, gives
    /// the object back with the error.
    #[allow(clippy::result_large_err)]
    fn spill_out(
        &self,
        id: ObjectId,
        residence: Residence,
        write_mapping: Option<file_write::WriteMapping>,
    ) -> Result<Residence, (Error, Residence)> {
        match residence {
            Residence::Heap(object) => match self.spill.write(id, &object) {
                Ok(_) => Ok(Residence::Spilled(self.index_spilled(id))),
                Err(e) => Err((e, Residence::Heap(object))),
            },
            Residence::Shared(_) => {
                let dir = self.shared_dir_ref();
                let to = self.spill.file(id);
                // Copied under a temporary name and renamed, so that a reader of the spill
                // directory (a driver on this machine) never maps half a file.
                let tmp = self.spill.path().join(format!("{id}.tmp"));
                let copied = std::fs::copy(dir.file(id), &tmp)
                    .and_then(|size| std::fs::rename(&tmp, &to).map(|()| size))
                    .inspect_err(|_| {
                        let _ = std::fs::remove_file(&tmp);
                    });
                match copied {
                    Ok(size) => {
                        // Victims are unpinned, so nobody maps the file: its pages can be reused.
                        self.recycler
                            .keep(dir.path(), &dir.file(id), size, write_mapping);
                        Ok(Residence::Spilled(self.index_spilled(id)))
                    }
                    Err(e) => Err((Error::io(to, e), Residence::Shared(None))),
                }
            }
            Residence::Moving | Residence::Spilled(_) => {
                unreachable!("only resident objects are spilled")
            }
        }
    }

    /// Records the end of a spill or restore, undoing the counters if it failed, and cleaning
    /// up if the object was freed meanwhile.
    fn finish_move<E: Into<MoveError>>(
        &self,
        state: &mut State,
        id: ObjectId,
        size: u64,
        result: Result<Residence, E>,
        direction: Direction,
    ) -> Result<()> {
        let (result, restore_residence) = match result.map_err(Into::into) {
            Ok(residence) => (Ok(()), residence),
            Err(MoveError { error, previous }) => (Err(error), previous),
        };
        let Some(entry) = state.entries.get_mut(&id) else {
            // Freed while moving: `free` left the counts to us. They already say where the
            // move was going, whatever its outcome.
            match direction {
                Direction::Spill => state.usage.spilled_bytes -= size,
                Direction::Restore => state.usage.resident_bytes -= size,
            }
            state.note_pressure();
            if let Some(dir) = &self.shared {
                dir.remove(id);
            }
            self.spill.remove(id);
            self.moved.notify_all();
            return Ok(());
        };
        entry.residence = restore_residence;
        match (&result, direction) {
            (Ok(()), Direction::Spill) => {
                state.usage.spilled_bytes_total += size;
            }
            (Ok(()), Direction::Restore) => {
                state.usage.restored_bytes_total += size;
                self.spill.remove(id);
            }
            (Err(_), Direction::Spill) => {
                state.usage.resident_bytes += size;
                state.usage.spilled_bytes -= size;
            }
            (Err(_), Direction::Restore) => {
                state.usage.resident_bytes -= size;
                state.usage.spilled_bytes += size;
            }
        }
        state.note_pressure();
        self.moved.notify_all();
        result
    }

    fn unpin(&self, id: ObjectId) {
        let mut state = self.state.lock();
        if let Some(entry) = state.entries.get_mut(&id) {
            entry.pins = entry.pins.saturating_sub(1);
        }
    }
}

#[derive(Clone, Copy)]
enum Direction {
    Spill,
    Restore,
}

/// A failed move and where the object still is.
struct MoveError {
    error: Error,
    previous: Residence,
}

impl From<(Error, Residence)> for MoveError {
    fn from((error, previous): (Error, Residence)) -> Self {
        Self { error, previous }
    }
}

impl From<Error> for MoveError {
    fn from(error: Error) -> Self {
        Self {
            error,
            previous: Residence::Spilled(None),
        }
    }
}

enum Access {
    Ready(Object),
    Pinned(Pin),
}

/// Keeps one object resident while it lives.
#[derive(Debug)]
pub struct Pin {
    store: Weak<ObjectStore>,
    id: ObjectId,
}

impl Pin {
    fn new(store: &Arc<ObjectStore>, id: ObjectId) -> Self {
        Self {
            store: Arc::downgrade(store),
            id,
        }
    }

    /// The pinned object.
    pub fn id(&self) -> ObjectId {
        self.id
    }
}

impl Drop for Pin {
    fn drop(&mut self) {
        if let Some(store) = self.store.upgrade() {
            store.unpin(self.id);
        }
    }
}

/// Receives one object's stored bytes piece by piece; [`ObjectReceiver::finish`] stores it.
/// Dropped unfinished, it leaves nothing behind.
pub struct ObjectReceiver {
    store: Arc<ObjectStore>,
    id: ObjectId,
    target: Option<Target>,
}

enum Target {
    File {
        out: std::io::BufWriter<std::fs::File>,
        tmp: PathBuf,
    },
    Mapped {
        out: file_write::MappedWriter,
        tmp: PathBuf,
    },
    Memory(AlignedWriter),
}

/// A growing 64-byte aligned buffer that takes writes.
#[derive(Debug, Default)]
pub struct AlignedWriter(MutableBuffer);

impl AlignedWriter {
    fn into_bytes(self) -> Bytes {
        Bytes::from_owner(ArrowBytes(self.0.into()))
    }
}

/// An Arrow buffer as the owner of `Bytes`.
struct ArrowBytes(arrow::buffer::Buffer);

impl AsRef<[u8]> for ArrowBytes {
    fn as_ref(&self) -> &[u8] {
        self.0.as_slice()
    }
}

impl std::io::Write for AlignedWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl ObjectReceiver {
    /// The destination as a writer, for framing helpers such as [`write_ipc_message`].
    pub fn writer(&mut self) -> &mut (dyn std::io::Write + Send) {
        match self.target.as_mut().expect("not finished") {
            Target::File { out, .. } => out,
            Target::Mapped { out, .. } => out,
            Target::Memory(buffer) => buffer,
        }
    }

    /// Stores the object; returns its size.
    pub fn finish(self) -> Result<u64> {
        self.store(false)
    }

    /// Seals the received file `tmp`, once `written` whole (with the mapping it was written
    /// through, if any), and adds it to the store: its size. Validated first if asked.
    fn seal(
        &self,
        tmp: &Path,
        written: Result<Option<file_write::WriteMapping>>,
        validate: bool,
    ) -> Result<u64> {
        let id = self.id;
        let sealed = written.and_then(|mapping| {
            if validate {
                format::read_object_validated(id, object_dir::map_file(tmp, id, None)?)?;
            }
            self.store.shared_dir_ref().seal(id, tmp)?;
            Ok(mapping)
        });
        match sealed {
            Ok(mapping) => self.store.adopt_written(id, mapping),
            Err(e) => {
                let _ = std::fs::remove_file(tmp);
                Err(e)
            }
        }
    }

    /// [`finish`](Self::finish) for bytes from outside the cluster (a client's `DoPut`): the
    /// object is decoded with Arrow's full validation first, and a malformed one is an error
    /// and is not stored (stored objects are later decoded without validation).
    pub fn finish_validated(self) -> Result<u64> {
        self.store(true)
    }

    fn store(mut self, validate: bool) -> Result<u64> {
        let id = self.id;
        match self.target.take().expect("not finished") {
            Target::File { out, tmp } => {
                let written = (|| {
                    let mut file = out
                        .into_inner()
                        .map_err(|e| Error::io(&tmp, e.into_error()))?;
                    // Cut what a recycled file held past the new end.
                    let written = std::io::Seek::stream_position(&mut file)
                        .map_err(|e| Error::io(&tmp, e))?;
                    file.set_len(written).map_err(|e| Error::io(&tmp, e))?;
                    Ok(None)
                })();
                self.seal(&tmp, written, validate)
            }
            Target::Mapped { out, tmp } => {
                let written = out.finish().map(Some).map_err(|e| Error::io(&tmp, e));
                self.seal(&tmp, written, validate)
            }
            Target::Memory(buffer) => {
                let bytes = buffer.into_bytes();
                let object = match validate {
                    true => format::read_object_validated(id, bytes)?,
                    false => read_object(id, bytes)?,
                };
                self.store.put(id, object)
            }
        }
    }
}

impl Drop for ObjectReceiver {
    fn drop(&mut self) {
        if let Some(Target::File { tmp, .. } | Target::Mapped { tmp, .. }) = &self.target {
            let _ = std::fs::remove_file(tmp);
        }
        // Finished (the object is stored under the id) or abandoned: either way the id is no
        // longer being received.
        self.store.state.lock().receiving.remove(&self.id);
    }
}

/// Receives one object's stored bytes into memory, without a store (a driver reading a result).
#[derive(Debug, Default)]
pub struct MemoryReceiver {
    buffer: AlignedWriter,
}

impl MemoryReceiver {
    /// A receiver with room for `size_hint` bytes.
    pub fn with_capacity(size_hint: usize) -> Self {
        Self {
            buffer: AlignedWriter(MutableBuffer::with_capacity(size_hint)),
        }
    }

    /// The destination as a writer.
    pub fn writer(&mut self) -> &mut AlignedWriter {
        &mut self.buffer
    }

    /// Decodes what was received (zero-copy from the 64-byte aligned buffer).
    pub fn finish(self, id: ObjectId) -> Result<Object> {
        read_object(id, self.buffer.into_bytes())
    }
}

/// Reads a whole file into a 64-byte aligned buffer, so decoded arrays need no realignment.
fn read_aligned(path: &Path) -> Result<Bytes> {
    use std::io::Read;
    let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let len = file.metadata().map_err(|e| Error::io(path, e))?.len() as usize;
    let mut buffer = MutableBuffer::from_len_zeroed(len);
    file.read_exact(buffer.as_slice_mut())
        .map_err(|e| Error::io(path, e))?;
    Ok(Bytes::from_owner(ArrowBytes(buffer.into())))
}

#[cfg(test)]
mod tests;
