//! Writing an object's stored bytes ([`Encoded`]) as the whole of its file, in one copy from
//! the object's buffers.
//!
//! A fresh file is written with `write(2)`: its pages are allocated as they are filled, where a
//! mapping would need them allocated and zeroed first (3.4 GB/s against 1.7 here). A recycled
//! file (see [`super::recycle`]), whose pages exist, is written through a mapping: 7.9–8.3 GB/s
//! for 64 MiB blocks here on two threads (4.7–5.5 on one), against 3.1 for `write(2)`, which
//! locks, copies into and unlocks tmpfs page by page. A large object is copied on several
//! threads, each mapping the pages of its own share first ([`copy_threads`]).
//!
//! # Kept mappings
//!
//! Mapping a file's pages and unmapping them costs more than the copy: a profile of 64 MiB
//! puts over recycled files spent 28% of its samples mapping pages (`MAP_POPULATE`) and 20%
//! unmapping them, against 22% copying. So a writer may keep the mapping it wrote through
//! ([`WriteMapping`]) and hand it to the next write over the same file, whose pages are then
//! already mapped: the store keeps it with the object, then with the recycled file (see
//! [`super::recycle`]). Only the store's own process keeps them; a worker process writes a
//! file once and unmaps it. A kept mapping holds no memory of its own (its pages are the
//! file's, freed when the file is deleted and the mapping dropped, which the store does
//! together), but the pages count in the store process's resident set.

use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;

use super::format::Encoded;

/// A writable mapping of an object file, kept from one write over the file to the next (see
/// the module doc). Every page of the file that lies within the mapping is mapped in it: the
/// write that made or last used it wrote or mapped all of them (a file cut shorter loses its
/// pages past the cut from every mapping; a file grown gets its new pages mapped by the next
/// write through the mapping).
pub(crate) struct WriteMapping {
    map: memmap2::MmapMut,
}

impl std::fmt::Debug for WriteMapping {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteMapping")
            .field("len", &self.map.len())
            .finish()
    }
}

impl WriteMapping {
    /// Maps the first `len` bytes of `file` for writing, no page mapped yet.
    fn new(file: &File, len: usize) -> std::io::Result<Self> {
        // SAFETY: the file is an object file being written by the one writer that opened it
        // (a fresh `<id>.tmp`, or a recycled file renamed to that name under the exclusive
        // lock no reader holds, see `super::recycle`): nothing else maps, truncates or writes
        // it while this mapping is written through. Once the file is sealed, this mapping is
        // only written through again after the file is recycled, under the same rule; it is
        // never read or handed out.
        let map = unsafe { memmap2::MmapOptions::new().len(len).map_mut(file)? };
        Ok(Self { map })
    }

    /// How many bytes of the file it covers.
    fn len(&self) -> usize {
        self.map.len()
    }
}

/// Writes a recycled file from its start, as bytes arrive (an object received from another
/// node), through a mapping of its first `capacity` bytes: their space allocated and their
/// pages mapped up front, so each write is a copy into mapped pages (where `write(2)` into
/// tmpfs locks, copies into and unlocks page by page). Bytes past the capacity (the object
/// came out larger than said) go to the file with `pwrite`. [`finish`](Self::finish) cuts the
/// file where the writes ended.
pub(crate) struct MappedWriter {
    file: File,
    mapping: WriteMapping,
    capacity: usize,
    written: usize,
}

impl MappedWriter {
    /// A writer over `file` (recycled: opened for reading and writing, its pages those of a
    /// written object), through `kept` (the store's mapping of it) if that covers `capacity`
    /// bytes, else a new mapping. At least the file's old length is mapped. `None` on a
    /// filesystem that cannot allocate space ahead.
    pub(crate) fn new(
        file: &File,
        kept: Option<WriteMapping>,
        capacity: usize,
    ) -> std::io::Result<Option<Self>> {
        let old_len = usize::try_from(file.metadata()?.len()).map_err(std::io::Error::other)?;
        let capacity = capacity.max(old_len).max(1).next_multiple_of(page_size());
        let Some((mut mapping, mapped)) = resize_and_map(file, old_len, capacity, kept)? else {
            return Ok(None);
        };
        populate(&mut mapping.map[..capacity], mapped);
        Ok(Some(Self {
            file: file.try_clone()?,
            mapping,
            capacity,
            written: 0,
        }))
    }

    /// Cuts the file at the end of what was written; returns the mapping, to keep with it.
    pub(crate) fn finish(self) -> std::io::Result<WriteMapping> {
        self.file.set_len(self.written as u64)?;
        Ok(self.mapping)
    }
}

impl Write for MappedWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let start = self.written;
        let fits = self.capacity.saturating_sub(start).min(buf.len());
        if fits > 0 {
            self.mapping.map[start..start + fits].copy_from_slice(&buf[..fits]);
        }
        if fits < buf.len() {
            use std::os::unix::fs::FileExt;
            self.file
                .write_all_at(&buf[fits..], (start + fits) as u64)?;
        }
        self.written += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Allocates the space of `file` from `from` to `to` (`fallocate`); `false` where the
/// filesystem cannot.
fn allocate(file: &File, from: usize, to: usize) -> std::io::Result<bool> {
    if from >= to {
        return Ok(true);
    }
    let offset = libc::off_t::try_from(from).map_err(std::io::Error::other)?;
    let len = libc::off_t::try_from(to - from).map_err(std::io::Error::other)?;
    // SAFETY: `fallocate` on an open descriptor we own, within the file's length.
    let status = unsafe { libc::fallocate(file.as_raw_fd(), 0, offset, len) };
    if status == 0 {
        return Ok(true);
    }
    let error = std::io::Error::last_os_error();
    match error.raw_os_error() {
        Some(libc::EOPNOTSUPP) => Ok(false),
        _ => Err(error),
    }
}

/// Writes `encoded` as the whole of `file` (opened for reading and writing, fresh or recycled):
/// a recycled file through a mapping (`kept`, if it is that file's and large enough, else a
/// new one), a fresh file with `write(2)`. Returns the mapping written through, to keep for the
/// next write over the same file; `None` if there was none.
pub(crate) fn write_encoded(
    file: &File,
    encoded: &Encoded,
    kept: Option<WriteMapping>,
) -> std::io::Result<Option<WriteMapping>> {
    let old_len = file.metadata()?.len();
    if old_len > 0
        && !encoded.is_empty()
        && let Some(mapping) = write_mapped(file, old_len, encoded, kept)?
    {
        return Ok(Some(mapping));
    }
    file.set_len(0)?;
    // Small pieces (message headers, padding, short columns) gathered into one `write`;
    // a piece as large as the buffer goes to the file straight from the column.
    let mut out = std::io::BufWriter::with_capacity(64 << 10, file);
    encoded.write_to(&mut out)?;
    out.flush()?;
    Ok(None)
}

/// Writes `encoded` as the whole of `file`, whose length was `old_len`, through a mapping:
/// its length set, its space allocated, then each share of it (a large object has several, see
/// [`copy_threads`]) has its pages mapped and is copied, one thread per share. With a `kept`
/// mapping that covers the new length, only the pages past the old length need mapping.
/// `None` (nothing written) on a filesystem that cannot allocate space ahead (`fallocate`
/// unsupported).
///
/// The space is allocated before anything is mapped: a store whose filesystem is full fails
/// here with ENOSPC, where a write through the mapping into a hole would kill the process
/// with SIGBUS.
fn write_mapped(
    file: &File,
    old_len: u64,
    encoded: &Encoded,
    kept: Option<WriteMapping>,
) -> std::io::Result<Option<WriteMapping>> {
    let len = usize::try_from(encoded.len()).map_err(std::io::Error::other)?;
    let old_len = usize::try_from(old_len).map_err(std::io::Error::other)?;
    let Some((mut mapping, mapped)) = resize_and_map(file, old_len, len, kept)? else {
        return Ok(None);
    };
    copy_in_shares(&mut mapping.map[..len], mapped, encoded)?;
    Ok(Some(mapping))
}

/// Sets `file` (whose length was `old_len`) to `len` bytes with their space allocated, and
/// maps them for writing: through `kept` if it covers them, else a new mapping. Returns the
/// mapping and how many of its first bytes already have their pages mapped; `None` (nothing
/// mapped) on a filesystem that cannot allocate space ahead.
fn resize_and_map(
    file: &File,
    old_len: usize,
    len: usize,
    kept: Option<WriteMapping>,
) -> std::io::Result<Option<(WriteMapping, usize)>> {
    file.set_len(len as u64)?;
    // On tmpfs the pages of a recycled file's old length exist (it was written whole) and are
    // written in place; only what lies past them needs allocating. Elsewhere (a filesystem
    // that copies on write, say) all of it.
    let allocated = if on_tmpfs(file) { old_len.min(len) } else { 0 };
    if !allocate(file, allocated, len)? {
        return Ok(None);
    }
    Ok(Some(match kept {
        Some(kept) if kept.len() >= len => (kept, old_len.min(len)),
        _ => (WriteMapping::new(file, len)?, 0),
    }))
}

/// Copies `encoded` into `dest` (a mapping of its file, whose first `mapped` bytes have their
/// pages mapped), each share of it on a thread of its own that maps the share's missing pages
/// in one go first (see [`copy_threads`]).
fn copy_in_shares(dest: &mut [u8], mapped: usize, encoded: &Encoded) -> std::io::Result<()> {
    let share = dest
        .len()
        .div_ceil(copy_threads(dest.len()))
        .next_multiple_of(SHARE_ALIGNMENT);
    let shares: Vec<(usize, &mut [u8])> = dest
        .chunks_mut(share)
        .enumerate()
        .map(|(i, share_bytes)| (i * share, share_bytes))
        .collect();
    on_threads(shares, |(start, share_bytes)| {
        populate(share_bytes, mapped.saturating_sub(start));
        encoded.copy_range(start, share_bytes);
        Ok(())
    })
}

/// Maps the pages of `bytes` (part of a shared file mapping, starting on a page) from `from` on,
/// in one call (`MADV_POPULATE_READ`: what `MAP_POPULATE` does, fault-around included; on
/// tmpfs the pages come mapped writable). Best effort: where the kernel cannot, the copy
/// faults them in one by one.
fn populate(bytes: &mut [u8], from: usize) {
    let from = from - from % page_size();
    if from >= bytes.len() {
        return;
    }
    let rest = &mut bytes[from..];
    // SAFETY: madvise over memory this function borrows exclusively (a page-aligned start
    // within a file mapping); populating changes no byte of it.
    let status = unsafe {
        libc::madvise(
            rest.as_mut_ptr().cast(),
            rest.len(),
            libc::MADV_POPULATE_READ,
        )
    };
    if status != 0 {
        tracing::trace!(error = %std::io::Error::last_os_error(), "pages not populated");
    }
}

/// The size of a memory page.
fn page_size() -> usize {
    static PAGE: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    // SAFETY: sysconf reads a constant of the system.
    *PAGE.get_or_init(|| {
        usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096)
    })
}

/// Whether `file` is on tmpfs (shared memory).
fn on_tmpfs(file: &File) -> bool {
    // SAFETY: fstatfs fills the zeroed struct it is given, from a descriptor we own.
    let mut stats: libc::statfs = unsafe { std::mem::zeroed() };
    let status = unsafe { libc::fstatfs(file.as_raw_fd(), &mut stats) };
    status == 0 && stats.f_type == libc::TMPFS_MAGIC
}

/// Objects at least this large are written by more than one thread.
const PARALLEL_WRITE_BYTES: usize = 8 << 20;

/// Where the shares of a parallel write may start: a multiple of any page size.
const SHARE_ALIGNMENT: usize = 64 << 10;

/// How many threads write an object of `len` bytes into its mapping: one per 4 MiB past
/// [`PARALLEL_WRITE_BYTES`], at most four and at most one per core. As Ray's plasma client
/// copies large objects on several threads: here one core copies 64 MiB at 7.3 GB/s, two at
/// 13.9; a put of a 64 MiB block ran at 4.7–5.5 GB/s on one thread, 7.9–8.3 on two.
fn copy_threads(len: usize) -> usize {
    if len < PARALLEL_WRITE_BYTES {
        return 1;
    }
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    let cores = *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    (len / (4 << 20)).clamp(1, 4).min(cores)
}

/// Runs `work` on every item on as many threads as there are items, the calling one included:
/// each takes the next item until none is left, so a thread that cannot be started leaves its
/// items to the others. Returns the first error.
fn on_threads<T: Send>(
    items: Vec<T>,
    work: impl Fn(T) -> std::io::Result<()> + Sync,
) -> std::io::Result<()> {
    let threads = items.len();
    let items = parking_lot::Mutex::new(items);
    let first_error = parking_lot::Mutex::new(None);
    let take_items = || {
        loop {
            let next = items.lock().pop();
            let Some(item) = next else { break };
            if let Err(e) = work(item) {
                first_error.lock().get_or_insert(e);
            }
        }
    };
    std::thread::scope(|scope| {
        for _ in 1..threads {
            let started = std::thread::Builder::new()
                .name("manta-write".into())
                .spawn_scoped(scope, take_items);
            if let Err(e) = started {
                tracing::debug!(error = %e, "writing an object on fewer threads");
                break;
            }
        }
        take_items();
    });
    first_error.into_inner().map_or(Ok(()), Err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::object::Object;
    use crate::store::format::{encode_object, write_object};

    /// A bytes object of `len` bytes that differ from one object to the next.
    fn object_of(len: usize, seed: usize) -> Object {
        Object::Bytes(bytes::Bytes::from(
            (0..len)
                .map(|i| ((i * 31 + seed * 7) % 251) as u8)
                .collect::<Vec<u8>>(),
        ))
    }

    /// One file written over again and again through the mapping each write returns: objects
    /// that shrink the file, grow it within the mapping (pages cut by the shrink, mapped again),
    /// grow it past the mapping (a new one), and sizes on both sides of the parallel-write
    /// threshold and off page boundaries. After each write the file holds exactly the object's
    /// stored bytes, and the mapping is kept while it covers the object.
    #[test]
    fn a_file_written_over_through_its_kept_mapping_holds_each_object() {
        let dir = tempfile::tempdir_in(super::super::object_dir::default_shared_parent()).unwrap();
        let path = dir.path().join("object");
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        let mut kept: Option<WriteMapping> = None;
        let sizes = [
            (9 << 20) + 4097, // fresh: written with write(2), no mapping
            (12 << 20) + 3,   // past the file: a new mapping
            5 << 20,          // shrinks, within the mapping
            (11 << 20) + 17,  // grows again within the mapping: cut pages mapped again
            (12 << 20) + 3,   // the mapping's whole length
            100_000,          // far smaller: one thread
            (20 << 20) + 1,   // past the mapping: a new one
            (20 << 20) + 1,   // the same size again
        ];
        for (seed, size) in sizes.into_iter().enumerate() {
            let object = object_of(size, seed);
            let mut expected = Vec::new();
            write_object(&mut expected, &object).unwrap();
            let encoded = encode_object(&object).unwrap();
            let kept_len = kept.as_ref().map(WriteMapping::len);
            kept = write_encoded(&file, &encoded, kept).unwrap();
            let stored = std::fs::read(&path).unwrap();
            assert!(
                stored == expected,
                "object {seed}: {} bytes, {} stored",
                expected.len(),
                stored.len()
            );
            let now = kept.as_ref().map(WriteMapping::len);
            match (seed, kept_len) {
                (0, _) => assert_eq!(now, None, "a fresh file is written without a mapping"),
                (_, Some(len)) if len >= expected.len() => {
                    assert_eq!(now, Some(len), "object {seed}: the kept mapping is reused")
                }
                _ => assert_eq!(now, Some(expected.len()), "object {seed}: a new mapping"),
            }
        }
    }
}
