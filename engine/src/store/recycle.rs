//! Recycling shared-memory files, so writing an object rarely allocates fresh pages.
//!
//! Writing into a new tmpfs file makes the kernel allocate and zero every page first, which
//! costs more than copying the data itself: measured here, fresh writes ran at about 1 GB/s
//! where a memory copy runs at over 10. So when an unpinned object's file is freed (or spilled),
//! the store keeps it under a `recycled-<n>` name instead of deleting it, and the next object
//! written on this node (a `put`, an object pulled over Flight, a worker's task output) is
//! written over it: its pages already exist. The pool is small (at most 64 files and a quarter
//! of the store's budget), counts against the budget, and is emptied first when the store
//! needs room. This is what Ray's plasma store gets from its preallocated arena, without an
//! allocator: each object still has a file of its own, mapped by readers.
//!
//! # Never under a reader
//!
//! Writing over a file that someone still maps would change bytes under them (and decoded
//! Arrow arrays are trusted, so that is undefined behaviour, not just a wrong answer). The
//! invariant: **a file is recycled only when nobody can still map it.** Readers in the store's
//! process hold pins, and the store offers only unpinned files. Readers in other processes (a
//! node's worker processes, whose actors and callables may keep an input batch for as long as
//! they like) map through [`ObjectDir::read_locked`](super::ObjectDir::read_locked), which holds
//! a shared `flock` on the file for as long as the mapping lives. Before recycling a file the
//! store takes the exclusive lock without waiting; if it cannot, a reader holds it, and the
//! file is deleted instead (its pages stay with the reader's mapping until it is dropped). The
//! rename happens while the exclusive lock is held, and a reader that got its lock after it
//! finds the object's name gone and reports the object not found, never a recycled file.

use std::path::{Path, PathBuf};

use parking_lot::Mutex;

/// Files smaller than this are deleted, not recycled.
const MIN_RECYCLED_BYTES: u64 = 256 << 10;
/// At most this many recycled files.
const MAX_RECYCLED_FILES: usize = 64;

/// The pool of recycled files of one shared-memory directory.
#[derive(Debug, Default)]
pub(crate) struct Recycler {
    files: Mutex<Vec<(PathBuf, u64)>>,
    next: std::sync::atomic::AtomicU64,
    max_bytes: u64,
}

impl Recycler {
    pub(crate) fn new(max_bytes: u64) -> Self {
        Self {
            max_bytes,
            ..Default::default()
        }
    }

    /// Keeps `path` (an object file of `size` bytes in `dir` that nobody maps) for reuse;
    /// deletes it if it is small or the pool is full. Returns whether it was kept.
    pub(crate) fn keep(&self, dir: &Path, path: &Path, size: u64) -> bool {
        // Held (if taken) until the file is renamed into the pool: see the module doc.
        let unmapped = std::fs::File::open(path)
            .ok()
            .filter(|file| super::object_dir::lock(file, libc::LOCK_EX | libc::LOCK_NB).is_ok());
        if unmapped.is_none() {
            let _ = std::fs::remove_file(path);
            return false;
        }
        let mut files = self.files.lock();
        let pooled: u64 = files.iter().map(|(_, size)| size).sum();
        if size < MIN_RECYCLED_BYTES
            || files.len() >= MAX_RECYCLED_FILES
            || pooled + size > self.max_bytes
        {
            drop(files);
            let _ = std::fs::remove_file(path);
            return false;
        }
        let n = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let recycled = dir.join(format!("recycled-{n}"));
        if std::fs::rename(path, &recycled).is_err() {
            let _ = std::fs::remove_file(path);
            return false;
        }
        files.push((recycled, size));
        true
    }

    /// A recycled file to write over (the most recently freed: likeliest still in cache).
    pub(crate) fn take(&self) -> Option<PathBuf> {
        self.files.lock().pop().map(|(path, _)| path)
    }

    /// Bytes of memory the pool holds.
    pub(crate) fn bytes(&self) -> u64 {
        self.files.lock().iter().map(|(_, size)| size).sum()
    }

    /// Deletes pooled files until at most `keep_bytes` remain; returns the bytes released.
    pub(crate) fn shrink_to(&self, keep_bytes: u64) -> u64 {
        let mut files = self.files.lock();
        let mut pooled: u64 = files.iter().map(|(_, size)| size).sum();
        let mut released = 0;
        while pooled > keep_bytes {
            let Some((path, size)) = (!files.is_empty()).then(|| files.remove(0)) else {
                break;
            };
            let _ = std::fs::remove_file(path);
            pooled -= size;
            released += size;
        }
        released
    }
}
