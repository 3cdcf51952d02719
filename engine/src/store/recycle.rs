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
//! allocator: each object still has a file of its own, mapped by readers. A file keeps the
//! store's own mapping of it while it waits in the pool, if the store wrote it (see
//! [`super::file_write`]), so writing over it maps no pages either.
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

use super::file_write::WriteMapping;

/// Files smaller than this are deleted, not recycled.
const MIN_RECYCLED_BYTES: u64 = 256 << 10;
/// At most this many recycled files.
const MAX_RECYCLED_FILES: usize = 64;

/// The share of the store's budget that [`reserve`] keeps in recycled files on a full store.
const RESERVE_DIVISOR: u64 = 8;

/// Bytes of recycled files a store over its budget keeps while it can spill objects instead:
/// an eighth of its `budget`. On a full store, spilling an object (a copy to disk) and
/// writing the next output over its file costs less than writing that output into fresh
/// pages (allocated and zeroed by the kernel) and freeing the spilled object's pages.
pub(crate) fn reserve(budget: u64) -> u64 {
    budget / RESERVE_DIVISOR
}

/// A file taken from the pool to write over, with the store's mapping of it if one was kept.
#[derive(Debug)]
pub(crate) struct RecycledFile {
    pub path: PathBuf,
    pub mapping: Option<WriteMapping>,
}

/// A file in the pool.
#[derive(Debug)]
struct Pooled {
    path: PathBuf,
    size: u64,
    mapping: Option<WriteMapping>,
}

/// The pool of recycled files of one shared-memory directory.
#[derive(Debug, Default)]
pub(crate) struct Recycler {
    files: Mutex<Vec<Pooled>>,
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

    /// Keeps `path` (an object file of `size` bytes in `dir` that nobody maps but the store,
    /// through `mapping` if it wrote the file) for reuse; deletes it if it is small or the
    /// pool is full. Returns whether it was kept.
    pub(crate) fn keep(
        &self,
        dir: &Path,
        path: &Path,
        size: u64,
        mapping: Option<WriteMapping>,
    ) -> bool {
        // Held (if taken) until the file is renamed into the pool: see the module doc.
        let unmapped = std::fs::File::open(path)
            .ok()
            .filter(|file| super::object_dir::lock(file, libc::LOCK_EX | libc::LOCK_NB).is_ok());
        if unmapped.is_none() {
            let _ = std::fs::remove_file(path);
            return false;
        }
        let mut files = self.files.lock();
        let pooled: u64 = files.iter().map(|file| file.size).sum();
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
        files.push(Pooled {
            path: recycled,
            size,
            mapping,
        });
        true
    }

    /// A recycled file for another process to write over (the most recently freed: likeliest
    /// still in cache). The store's mapping of it, if any, is dropped.
    pub(crate) fn take(&self) -> Option<PathBuf> {
        self.files.lock().pop().map(|file| file.path)
    }

    /// A recycled file to write an object of about `size` bytes over: the one closest to its
    /// size, a byte short counting twice a byte over, and none more than twice its size (plus
    /// 1 MiB). Writing over a file larger than the object cuts it, freeing the pages past its
    /// end; writing past a smaller one allocates and zeroes new pages, which costs about twice
    /// as much a page. So a file a little short is better than one far over: a reduce task's
    /// pulled partitions, whose size is estimated from the first part and comes out slightly
    /// over, then take the file of the task before (about their size) instead of a freed map
    /// output twice as large. A file much larger than the object would also waste what a
    /// large output could use.
    pub(crate) fn take_fitting(&self, size: u64) -> Option<RecycledFile> {
        let mut files = self.files.lock();
        let limit = size.saturating_mul(2).saturating_add(1 << 20);
        let cost = |file: u64| match file.checked_sub(size) {
            Some(over) => over,
            None => (size - file).saturating_mul(2),
        };
        let chosen = files
            .iter()
            .enumerate()
            .filter(|(_, file)| file.size <= limit)
            .min_by_key(|(_, file)| cost(file.size))
            .map(|(index, _)| index)?;
        let Pooled { path, mapping, .. } = files.remove(chosen);
        Some(RecycledFile { path, mapping })
    }

    /// Bytes of memory the pool holds.
    pub(crate) fn bytes(&self) -> u64 {
        self.files.lock().iter().map(|file| file.size).sum()
    }

    /// Deletes pooled files until at most `keep_bytes` remain; returns the bytes released.
    pub(crate) fn shrink_to(&self, keep_bytes: u64) -> u64 {
        let mut files = self.files.lock();
        let mut pooled: u64 = files.iter().map(|file| file.size).sum();
        let mut released = 0;
        while pooled > keep_bytes {
            let Some(file) = (!files.is_empty()).then(|| files.remove(0)) else {
                break;
            };
            // Unmapped with the file deleted: its pages are freed.
            let _ = std::fs::remove_file(&file.path);
            pooled -= file.size;
            released += file.size;
        }
        released
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pool of files of the given sizes (in KiB), in the order they were kept.
    fn pool_of(dir: &Path, sizes_kib: &[u64]) -> Recycler {
        let recycler = Recycler::new(u64::MAX);
        for (i, kib) in sizes_kib.iter().enumerate() {
            let path = dir.join(format!("object-{i}"));
            std::fs::File::create(&path).unwrap();
            assert!(recycler.keep(dir, &path, kib << 10, None));
        }
        recycler
    }

    /// The size of the file `taken` from `recycler`, made by `pool_of(dir, sizes_kib)`.
    fn size_in(
        sizes_kib: &[u64],
        recycler: &Recycler,
        dir: &Path,
        taken: Option<PathBuf>,
    ) -> Option<u64> {
        let taken = taken?;
        assert!(taken.starts_with(dir));
        assert!(!recycler.files.lock().iter().any(|file| file.path == taken));
        Some(
            taken
                .file_name()
                .and_then(|name| name.to_str())
                .and_then(|name| name.strip_prefix("recycled-"))
                .map(|n| n.parse::<usize>().unwrap())
                .map(|n| sizes_kib[n])
                .unwrap(),
        )
    }

    impl Recycler {
        fn take_fitting_path(&self, size: u64) -> Option<PathBuf> {
            self.take_fitting(size).map(|file| file.path)
        }
    }

    #[test]
    fn a_file_is_taken_to_fit_the_object() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let sizes = [300, 4096, 51_200, 700, 2048];
        let recycler = pool_of(dir, &sizes);
        let size_of =
            |recycler: &Recycler, dir: &Path, taken| size_in(&sizes, recycler, dir, taken);
        // The smallest file that holds the object.
        assert_eq!(
            size_of(&recycler, dir, recycler.take_fitting_path(650 << 10)),
            Some(700)
        );
        // None holds it within twice its size: the largest smaller one.
        assert_eq!(
            size_of(&recycler, dir, recycler.take_fitting_path(8 << 20)),
            Some(4096)
        );
        // A small object does not take a file many times its size.
        assert_eq!(
            size_of(&recycler, dir, recycler.take_fitting_path(200 << 10)),
            Some(300)
        );
        assert_eq!(
            size_of(&recycler, dir, recycler.take_fitting_path(10 << 10)),
            None
        );
        // An output of unknown size takes the most recently kept.
        assert_eq!(size_of(&recycler, dir, recycler.take()), Some(2048));
        assert_eq!(recycler.bytes(), 51_200 << 10);

        // A file a little short of the object is taken over one far over it, and one a little
        // over it over one far short.
        let dir = &tmp.path().join("closest");
        std::fs::create_dir(dir).unwrap();
        let sizes = [1000, 1200, 600];
        let recycler = pool_of(dir, &sizes);
        let size_of =
            |recycler: &Recycler, dir: &Path, taken| size_in(&sizes, recycler, dir, taken);
        assert_eq!(
            size_of(&recycler, dir, recycler.take_fitting_path(1010 << 10)),
            Some(1000)
        );
        assert_eq!(
            size_of(&recycler, dir, recycler.take_fitting_path(1000 << 10)),
            Some(1200)
        );
    }
}
