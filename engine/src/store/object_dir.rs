//! A directory of object files: one node's shared memory, or its spill directory.
//!
//! Each object is one file named by its id, under a session directory. For the store's resident
//! objects the directory is in `/dev/shm` (tmpfs, so the file's pages are the shared memory);
//! for spilled objects it is on disk. The layout is the same in both (see [`super::format`]). Writers create `<id>.tmp` and rename it to `<id>`
//! when complete, so a reader never sees half an object. Readers map the file read-only with
//! memmap2 and decode it in place (see [`super::format`]).
//!
//! The session directory (mode 0700) and its object files (mode 0600) are readable by the
//! node's user only: its worker processes run as that user, nobody else may map an object.
//!
//! The session directory is named `manta-<pid>-<random>`, and its owner holds an exclusive
//! `flock` on the session's `.owner` file for as long as it lives (the kernel lets go when
//! the process dies, however it dies). The node that created it removes it when it stops; and
//! every new session, and `manta stop`, first remove the sessions whose lock nobody holds, so a
//! crashed node leaks nothing past the next start or stop on that machine — a session is never
//! kept because another process happens to have its dead owner's pid.

use std::fs::{self, File};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use memmap2::Mmap;

use super::file_write::{WriteMapping, write_encoded};
use super::format::{encode_object, read_object};
use super::recycle::RecycledFile;
use crate::error::{Error, Result};
use crate::ids::ObjectId;
use crate::object::Object;

/// Prefix of every session directory Manta creates.
const SESSION_PREFIX: &str = "manta-";

/// The file in a session directory whose lock says the session's owner is alive.
const OWNER_FILE: &str = ".owner";

/// A directory of object files; removes itself on drop if it owns the session.
#[derive(Debug)]
pub struct ObjectDir {
    path: PathBuf,
    owned: bool,
    /// The owner's lock on [`OWNER_FILE`], held while the session lives.
    _owner_lock: Option<File>,
}

impl ObjectDir {
    /// Creates a fresh session directory under `parent`, first removing stale sessions there.
    pub fn create_session(parent: &Path) -> Result<Self> {
        remove_stale_sessions(parent);
        let name = format!(
            "{SESSION_PREFIX}{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        );
        let path = parent.join(name);
        fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .map_err(|e| Error::io(&path, e))?;
        let owner = path.join(OWNER_FILE);
        let lock_file = fs::OpenOptions::new()
            .create_new(true)
            .write(true)
            .mode(0o600)
            .open(&owner)
            .map_err(|e| Error::io(&owner, e))?;
        lock(&lock_file, libc::LOCK_EX | libc::LOCK_NB).map_err(|e| Error::io(&owner, e))?;
        Ok(Self {
            path,
            owned: true,
            _owner_lock: Some(lock_file),
        })
    }

    /// Opens a session directory another process owns (a worker opening its node's store).
    pub fn open(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            owned: false,
            _owner_lock: None,
        }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the process that owns this session is alive (it holds the `.owner` lock).
    pub fn owner_alive(&self) -> bool {
        let pid = self
            .path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix(SESSION_PREFIX))
            .and_then(|rest| rest.split('-').next())
            .and_then(|p| p.parse::<i32>().ok());
        pid.is_some_and(|pid| session_owner_alive(&self.path, pid))
    }

    /// The file that holds (or will hold) `id`.
    pub fn file(&self, id: ObjectId) -> PathBuf {
        self.path.join(id.to_string())
    }

    /// Writes `object` as `id` and seals it; returns its size in bytes.
    pub fn write(&self, id: ObjectId, object: &Object) -> Result<u64> {
        self.write_reusing(id, object, None)
    }

    /// [`write`](Self::write), into `recycled` (a file of this directory whose pages are
    /// already allocated, see [`super::recycle`]) if given.
    pub fn write_reusing(
        &self,
        id: ObjectId,
        object: &Object,
        recycled: Option<&Path>,
    ) -> Result<u64> {
        let recycled = recycled.map(|path| RecycledFile {
            path: path.to_path_buf(),
            mapping: None,
        });
        self.write_over(id, object, recycled)
            .map(|(size, _mapping)| size)
    }

    /// [`write_reusing`](Self::write_reusing) for the store, which keeps the mapping a write
    /// goes through for the next write over the same file (see [`super::file_write`]):
    /// `recycled` brings the mapping kept with it, if any, and the one written through is
    /// returned with the size.
    pub(crate) fn write_over(
        &self,
        id: ObjectId,
        object: &Object,
        recycled: Option<RecycledFile>,
    ) -> Result<(u64, Option<WriteMapping>)> {
        let encoded = encode_object(object)?;
        let (path, kept) = match recycled {
            Some(RecycledFile { path, mapping }) => (Some(path), mapping),
            None => (None, None),
        };
        let (file, tmp, reused) = self.open_tmp_reusing(id, path.as_deref())?;
        // A mapping kept with a file that could not be taken maps another file.
        let kept = kept.filter(|_| reused);
        let result = write_encoded(&file, &encoded, kept)
            .map(|mapping| (encoded.len(), mapping))
            .map_err(|e| Error::io(&tmp, e));
        match result {
            Ok(written) => {
                self.seal(id, &tmp)?;
                Ok(written)
            }
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                Err(e)
            }
        }
    }

    /// Opens `<id>.tmp` for writing (and reading, so it can be mapped) from its start: a fresh
    /// file, or `recycled` renamed (its old bytes are overwritten, and whatever is left past
    /// the new end must be cut with `set_len` once the length is known).
    pub fn open_tmp(&self, id: ObjectId, recycled: Option<&Path>) -> Result<(File, PathBuf)> {
        self.open_tmp_reusing(id, recycled)
            .map(|(file, tmp, _reused)| (file, tmp))
    }

    /// [`open_tmp`](Self::open_tmp), also saying whether the file is `recycled`.
    pub(crate) fn open_tmp_reusing(
        &self,
        id: ObjectId,
        recycled: Option<&Path>,
    ) -> Result<(File, PathBuf, bool)> {
        let tmp = self.path.join(format!("{id}.tmp"));
        if let Some(recycled) = recycled
            && fs::rename(recycled, &tmp).is_ok()
            && let Ok(file) = fs::OpenOptions::new().read(true).write(true).open(&tmp)
        {
            return Ok((file, tmp, true));
        }
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| Error::io(&tmp, e))?;
        Ok((file, tmp, false))
    }

    /// Renames a completely written `tmp` file to `id`'s name.
    pub fn seal(&self, id: ObjectId, tmp: &Path) -> Result<()> {
        let path = self.file(id);
        fs::rename(tmp, &path).map_err(|e| Error::io(&path, e))
    }

    /// Maps `id`'s file and returns its whole contents (header included) without copying.
    /// `keep_alive` lives as long as any view of the mapping (a pin, for instance).
    pub fn map(&self, id: ObjectId, keep_alive: Option<Box<dyn Send + Sync>>) -> Result<Bytes> {
        map_file(&self.file(id), id, keep_alive)
    }

    /// Maps and decodes `id` without copying.
    pub fn read(&self, id: ObjectId, keep_alive: Option<Box<dyn Send + Sync>>) -> Result<Object> {
        read_object(id, self.map(id, keep_alive)?)
    }

    /// [`read`](Self::read) for a process other than the store's (a worker): the file is held
    /// with a shared lock for as long as any view of the mapping lives, which is what keeps the
    /// store from recycling it (see [`super::recycle`]). `ObjectNotFound` if the object was
    /// freed (or recycled) before the lock was taken.
    pub fn read_locked(&self, id: ObjectId) -> Result<Object> {
        read_object(id, self.map_locked(id)?)
    }

    /// Maps `id`'s file under a shared lock held as long as the mapping lives (see
    /// [`read_locked`](Self::read_locked)): for a reader that takes several batches of one
    /// object, mapping it once.
    pub fn map_locked(&self, id: ObjectId) -> Result<Bytes> {
        let path = self.file(id);
        let file = File::open(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::ObjectNotFound { id },
            _ => Error::io(&path, e),
        })?;
        lock(&file, libc::LOCK_SH).map_err(|e| Error::io(&path, e))?;
        // The store renames a file away (holding the exclusive lock) before it recycles it:
        // if the name no longer leads to this file, it is not this object any more.
        if !same_file(&file, &path) {
            return Err(Error::ObjectNotFound { id });
        }
        let holder = file.try_clone().map_err(|e| Error::io(&path, e))?;
        map_open_file(file, &path, Some(Box::new(holder)))
    }

    /// Removes `id`'s file, if there is one.
    pub fn remove(&self, id: ObjectId) {
        let _ = fs::remove_file(self.file(id));
    }
}

impl Drop for ObjectDir {
    fn drop(&mut self) {
        if self.owned {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

/// Maps a whole object file read-only, as `Bytes` that own the mapping.
pub(crate) fn map_file(
    path: &Path,
    id: ObjectId,
    keep_alive: Option<Box<dyn Send + Sync>>,
) -> Result<Bytes> {
    let file = File::open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::ObjectNotFound { id },
        _ => Error::io(path, e),
    })?;
    map_open_file(file, path, keep_alive)
}

/// `flock(2)` on `file` (`LOCK_SH`, `LOCK_EX`, with `LOCK_NB` or not).
pub(crate) fn lock(file: &File, operation: libc::c_int) -> std::io::Result<()> {
    loop {
        // SAFETY: flock on a descriptor this `File` owns; it touches no memory.
        if unsafe { libc::flock(file.as_raw_fd(), operation) } == 0 {
            return Ok(());
        }
        let error = std::io::Error::last_os_error();
        if error.kind() != std::io::ErrorKind::Interrupted {
            return Err(error);
        }
    }
}

/// Whether `path` names the file `file` has open.
fn same_file(file: &File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (file.metadata(), fs::metadata(path)) {
        (Ok(open), Ok(named)) => (open.dev(), open.ino()) == (named.dev(), named.ino()),
        _ => false,
    }
}

/// Maps an object file already opened (`path` for messages).
pub(crate) fn map_open_file(
    file: File,
    path: &Path,
    keep_alive: Option<Box<dyn Send + Sync>>,
) -> Result<Bytes> {
    // SAFETY: an object file is written once and sealed by rename; after that its bytes change
    // only if the store recycles it (see `super::recycle`), which it does only when no pin of
    // its own process is left and no other process holds the file's shared lock (which
    // `read_locked` takes, and keeps with the mapping). Removing a file leaves mappings valid.
    let mmap = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
    Ok(Bytes::from_owner(Mapping {
        mmap,
        _keep_alive: keep_alive,
    }))
}

struct Mapping {
    mmap: Mmap,
    _keep_alive: Option<Box<dyn Send + Sync>>,
}

impl AsRef<[u8]> for Mapping {
    fn as_ref(&self) -> &[u8] {
        &self.mmap
    }
}

/// Where shared memory lives: `/dev/shm`, or the temporary directory where there is none.
pub fn default_shared_parent() -> PathBuf {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    }
}

/// Removes the `manta-<pid>-*` session directories under `parent` whose owner is gone: nobody
/// holds the lock on its `.owner` file (or, for a session without one, no process has its pid).
pub fn remove_stale_sessions(parent: &Path) {
    let Ok(entries) = fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(SESSION_PREFIX)) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<i32>().ok()) else {
            continue;
        };
        if !session_owner_alive(&entry.path(), pid) {
            tracing::info!(dir = %entry.path().display(), pid, "removing a dead session's objects");
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

/// Whether the session at `dir`, named for `pid`, still has its owner: its `.owner` lock is
/// held. A session that has no `.owner` yet (being created this instant, or made by an older
/// Manta) counts as owned while its pid exists.
fn session_owner_alive(dir: &Path, pid: i32) -> bool {
    match File::open(dir.join(OWNER_FILE)) {
        Ok(owner) => match lock(&owner, libc::LOCK_EX | libc::LOCK_NB) {
            // Taken at once: nobody held it. (Dropping the file lets it go again.)
            Ok(()) => false,
            Err(_) => true,
        },
        Err(_) => process_alive(pid),
    }
}

/// Whether a process with this pid exists.
pub fn process_alive(pid: i32) -> bool {
    // SAFETY: kill with signal 0 only checks for existence and permission.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Array, Int64Array, RecordBatch};

    use super::*;

    /// An object written over a recycled file (through mappings, on several threads past 8
    /// MiB, shares cut anywhere in its pieces) has the bytes a plain write gives, whatever the
    /// recycled file's size: blocks of many small and large batches, bytes objects on both
    /// sides of the threshold.
    #[test]
    fn a_write_over_a_recycled_file_has_the_written_bytes() {
        use arrow::array::StringArray;
        let batch = |rows: i64| {
            RecordBatch::try_from_iter([
                ("n", Arc::new(Int64Array::from_iter_values(0..rows)) as _),
                (
                    "s",
                    Arc::new(StringArray::from_iter_values(
                        (0..rows).map(|i| format!("ü{}", i % 97)),
                    )) as _,
                ),
            ])
            .unwrap()
        };
        let batches: Vec<RecordBatch> = [1, 0, 300_000, 7, 900_000, 3]
            .into_iter()
            .map(batch)
            .collect();
        let big = crate::object::Block::try_new(batches[0].schema(), batches).unwrap();
        let small = crate::object::Block::try_new(batch(3).schema(), vec![batch(3)]).unwrap();
        let bytes = |len: usize| {
            bytes::Bytes::from((0..len).map(|i| (i * 31 % 251) as u8).collect::<Vec<u8>>())
        };
        let parent = tempfile::tempdir_in(default_shared_parent()).unwrap();
        let dir = ObjectDir::create_session(parent.path()).unwrap();
        let mut recycled = dir.path().join("recycled-0");
        fs::write(&recycled, vec![0xAB; 3 << 20]).unwrap();
        for object in [
            Object::Block(big),
            Object::Bytes(bytes((8 << 20) - 65)),
            Object::Block(small),
            Object::Bytes(bytes((8 << 20) + 12_345)),
            Object::Bytes(bytes(17 << 20)),
        ] {
            let mut written = Vec::new();
            crate::store::format::write_object(&mut written, &object).unwrap();
            let id = ObjectId::random();
            dir.write_reusing(id, &object, Some(&recycled)).unwrap();
            let stored = fs::read(dir.file(id)).unwrap();
            assert!(
                stored == written,
                "{} bytes, {} stored",
                written.len(),
                stored.len()
            );
            // The next object is written over this one's file.
            recycled = dir.path().join(format!("recycled-{id}"));
            fs::rename(dir.file(id), &recycled).unwrap();
        }
    }

    #[test]
    fn write_then_map_is_zero_copy() {
        let parent = tempfile::tempdir().unwrap();
        let dir = ObjectDir::create_session(parent.path()).unwrap();
        let id = ObjectId::random();
        let batch = RecordBatch::try_from_iter([(
            "x",
            Arc::new(Int64Array::from_iter_values(0..1000)) as _,
        )])
        .unwrap();
        dir.write(id, &Object::from(batch.clone())).unwrap();

        let mapped = dir.map(id, None).unwrap();
        let range = mapped.as_ptr() as usize..mapped.as_ptr() as usize + mapped.len();
        let block = read_object(id, mapped).unwrap().into_block(id).unwrap();
        assert_eq!(block.batches(), &[batch]);
        let values = block.batches()[0].column(0).to_data().buffers()[0].as_ptr() as usize;
        assert!(
            range.contains(&values),
            "column buffer is not inside the mapping"
        );
    }

    #[test]
    fn session_dir_is_removed_on_drop_and_stale_ones_at_start() {
        let parent = tempfile::tempdir().unwrap();
        let dir = ObjectDir::create_session(parent.path()).unwrap();
        let path = dir.path().to_path_buf();
        drop(dir);
        assert!(!path.exists());

        // A session of a process that no longer exists: pid 2^22 + 1 is above Linux's pid_max.
        let stale = parent.path().join("manta-4194305-deadbeef");
        fs::create_dir_all(&stale).unwrap();
        // A session whose pid is alive (ours) but whose owner lock nobody holds: its owner died
        // and the pid was reused. Removed all the same.
        let reused = parent
            .path()
            .join(format!("manta-{}-cafe0001", std::process::id()));
        fs::create_dir_all(&reused).unwrap();
        fs::write(reused.join(OWNER_FILE), b"").unwrap();
        let fresh = ObjectDir::create_session(parent.path()).unwrap();
        assert!(!reused.exists(), "a session nobody holds is removed");
        assert!(!stale.exists());
        assert!(fresh.path().exists());
    }

    #[test]
    fn missing_object_is_not_found() {
        let parent = tempfile::tempdir().unwrap();
        let dir = ObjectDir::create_session(parent.path()).unwrap();
        let id = ObjectId::random();
        assert!(matches!(dir.read(id, None), Err(Error::ObjectNotFound { id: got }) if got == id));
    }
}
