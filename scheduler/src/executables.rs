//! The content-addressed cache of job executables.
//!
//! A driver's own executable is what worker processes run (so its `#[manta::remote]` functions
//! exist there). When a driver joins a cluster it hashes its executable (SHA-256) and uploads it
//! to the head unless the head already has that hash; node daemons fetch it from the head the
//! first time a task of the job arrives. Files are named by their hash, written to a temporary
//! name, verified, made executable and renamed into place, so a half-written binary is never
//! started. On one machine the head and its nodes share the cache directory, so nothing is
//! copied twice. The cache keeps the [`KEEP_EXECUTABLES`] most recently used executables, and
//! at most [`MAX_CACHE_BYTES`] of them (a driver's binary is some hundred MB, and every
//! rebuild is a new one).
//!
//! The directory is per user (`~/.cache/manta/executables`, mode 0700): never a predictable
//! path in `/tmp` that another user could create first and fill. A node trusts a file's name
//! only until it [loads](ExecutableCache::load) it: loading hashes the contents and keeps the
//! file open, and before each start of a worker the node checks the name still leads to that
//! same file ([`LoadedExecutable::installed`]); if another process pruned it meanwhile, it is
//! put back from the open file (verified again), so a node never starts workers from a path
//! it only remembers.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// How many executables the cache keeps.
pub const KEEP_EXECUTABLES: usize = 8;

/// How many bytes of executables the cache keeps (the most recently used one is always kept).
pub const MAX_CACHE_BYTES: u64 = 4 << 30;

/// A directory of executables named by SHA-256.
#[derive(Clone, Debug)]
pub struct ExecutableCache {
    dir: PathBuf,
}

impl ExecutableCache {
    /// The cache in `dir`, created if missing, readable by this user only (an existing
    /// directory of another user's is an error).
    pub fn new(dir: impl Into<PathBuf>) -> Result<Self> {
        let dir = manta_engine::dirs::private_dir(&dir.into())?;
        Ok(Self { dir })
    }

    /// `$MANTA_CACHE_DIR/executables`, else `executables` in this user's cache directory
    /// ([`manta_engine::dirs::user_cache_dir`]).
    pub fn default_dir() -> PathBuf {
        manta_cache_dir().join("executables")
    }

    /// Opens the executable with `hash` and checks its contents have that hash: `None` if it
    /// is not cached, or was not what its name says (then it is deleted, to be fetched again).
    pub fn load(&self, hash: &str) -> Result<Option<LoadedExecutable>> {
        let path = self.path(hash);
        if !is_hash(hash) {
            return Ok(None);
        }
        let file = match File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(Error::Io {
                    action: "opening",
                    path,
                    source,
                });
            }
        };
        let (actual, _) = hash_reader(&file, &path)?;
        if actual != hash {
            tracing::warn!(path = %path.display(), %actual, "a cached executable is not what its name says; deleting it");
            let _ = fs::remove_file(&path);
            return Ok(None);
        }
        touch(&path);
        Ok(Some(LoadedExecutable {
            hash: hash.to_string(),
            path,
            file,
        }))
    }

    /// Where the executable with this hash is (or would be).
    pub fn path(&self, hash: &str) -> PathBuf {
        self.dir.join(hash)
    }

    /// Whether the executable is cached (and marks it used, for [`prune`](Self::prune)).
    pub fn contains(&self, hash: &str) -> bool {
        let path = self.path(hash);
        let cached = is_hash(hash) && path.is_file();
        if cached {
            touch(&path);
        }
        cached
    }

    /// Deletes all but the `keep` most recently used executables, and the least recently
    /// used past `max_bytes` in all (the most recently used one is always kept).
    pub fn prune(&self, keep: usize, max_bytes: u64) {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return;
        };
        let mut files: Vec<(std::time::SystemTime, u64, PathBuf)> = entries
            .flatten()
            .filter(|e| e.file_name().to_str().is_some_and(is_hash))
            .filter_map(|e| {
                let meta = e.metadata().ok()?;
                Some((meta.modified().ok()?, meta.len(), e.path()))
            })
            .collect();
        files.sort_by_key(|f| std::cmp::Reverse(f.0));
        let mut bytes = 0u64;
        for (index, (_, size, path)) in files.into_iter().enumerate() {
            bytes = bytes.saturating_add(size);
            if index > 0 && (index >= keep || bytes > max_bytes) {
                let _ = fs::remove_file(path);
            }
        }
    }

    /// Starts writing the executable with this hash.
    pub fn writer(&self, hash: &str) -> Result<CacheWriter> {
        if !is_hash(hash) {
            return Err(Error::Internal(format!(
                "{hash:?} is not a SHA-256 hex digest"
            )));
        }
        let tmp = self
            .dir
            .join(format!(".{hash}.{:08x}.tmp", rand::random::<u32>()));
        let file = File::create(&tmp).map_err(|source| Error::Io {
            action: "creating",
            path: tmp.clone(),
            source,
        })?;
        Ok(CacheWriter {
            file,
            tmp,
            target: self.path(hash),
            hash: hash.to_string(),
            hasher: Sha256::new(),
            done: false,
        })
    }
}

/// Writes one executable into the cache; [`CacheWriter::finish`] verifies and installs it.
pub struct CacheWriter {
    file: File,
    tmp: PathBuf,
    target: PathBuf,
    hash: String,
    hasher: Sha256,
    done: bool,
}

impl CacheWriter {
    /// Appends a chunk.
    pub fn write(&mut self, data: &[u8]) -> Result<()> {
        self.hasher.update(data);
        self.file.write_all(data).map_err(|source| Error::Io {
            action: "writing",
            path: self.tmp.clone(),
            source,
        })
    }

    /// Checks the hash, marks the file executable and moves it into place.
    pub fn finish(mut self) -> Result<PathBuf> {
        let actual = hex::encode(std::mem::take(&mut self.hasher).finalize());
        if actual != self.hash {
            return Err(Error::Internal(format!(
                "executable upload is corrupt: expected hash {}, got {actual}",
                self.hash
            )));
        }
        self.file.sync_all().map_err(|source| Error::Io {
            action: "syncing",
            path: self.tmp.clone(),
            source,
        })?;
        set_executable(&self.tmp)?;
        fs::rename(&self.tmp, &self.target).map_err(|source| Error::Io {
            action: "installing",
            path: self.target.clone(),
            source,
        })?;
        self.done = true;
        if let Some(dir) = self.target.parent() {
            ExecutableCache {
                dir: dir.to_path_buf(),
            }
            .prune(KEEP_EXECUTABLES, MAX_CACHE_BYTES);
        }
        Ok(self.target.clone())
    }
}

impl Drop for CacheWriter {
    fn drop(&mut self) {
        if !self.done {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// An executable of the cache, opened and verified (see [`ExecutableCache::load`]).
#[derive(Debug)]
pub struct LoadedExecutable {
    hash: String,
    path: PathBuf,
    /// The verified file, open: its contents stay whatever happens to its name.
    file: File,
}

impl LoadedExecutable {
    /// Its path, if that still names the verified file (two `stat`s).
    pub fn in_place(&self) -> Option<&Path> {
        use std::os::unix::fs::MetadataExt;
        let open = self.file.metadata().ok()?;
        let named = fs::metadata(&self.path).ok()?;
        ((named.dev(), named.ino()) == (open.dev(), open.ino())).then_some(self.path.as_path())
    }

    /// The path to start it by, after checking it still names the verified file; if it does
    /// not (pruned, or replaced), the file is put back from the open copy, verified again.
    pub fn installed(&self, cache: &ExecutableCache) -> Result<PathBuf> {
        if let Some(path) = self.in_place() {
            return Ok(path.to_path_buf());
        }
        tracing::info!(path = %self.path.display(), "a loaded executable left the cache; putting it back");
        let mut writer = cache.writer(&self.hash)?;
        let mut offset = 0u64;
        let mut buffer = vec![0u8; 1 << 20];
        loop {
            use std::os::unix::fs::FileExt;
            let n = self
                .file
                .read_at(&mut buffer, offset)
                .map_err(|source| Error::Io {
                    action: "reading",
                    path: self.path.clone(),
                    source,
                })?;
            if n == 0 {
                break;
            }
            writer.write(&buffer[..n])?;
            offset += n as u64;
        }
        writer.finish()
    }
}

/// A job's executable as a node starts workers from it: loaded once, and checked (or put
/// back) before each start by [`JobExecutable::path`], not on every task.
#[derive(Clone, Debug)]
pub struct JobExecutable {
    loaded: std::sync::Arc<LoadedExecutable>,
    cache: ExecutableCache,
}

impl JobExecutable {
    /// `loaded`, from `cache`.
    pub fn new(loaded: std::sync::Arc<LoadedExecutable>, cache: ExecutableCache) -> Self {
        Self { loaded, cache }
    }

    /// The path to start a worker by, after [`LoadedExecutable::installed`] on a blocking
    /// thread.
    pub async fn path(&self) -> Result<PathBuf> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.loaded.installed(&this.cache))
            .await
            .map_err(|e| Error::Internal(e.to_string()))?
    }
}

/// The SHA-256 (hex) and size of a file.
pub fn hash_file(path: &Path) -> Result<(String, u64)> {
    let file = File::open(path).map_err(|source| Error::Io {
        action: "reading",
        path: path.to_path_buf(),
        source,
    })?;
    hash_reader(&file, path)
}

/// The SHA-256 (hex) and size of what `file` (at `path`, for errors) holds.
fn hash_reader(mut file: &File, path: &Path) -> Result<(String, u64)> {
    let io = |source| Error::Io {
        action: "reading",
        path: path.to_path_buf(),
        source,
    };
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buffer).map_err(io)?;
        if n == 0 {
            break;
        }
        size += n as u64;
        hasher.update(&buffer[..n]);
    }
    Ok((hex::encode(hasher.finalize()), size))
}

/// Sets a file's times to now, without opening it (it may be a running executable).
fn touch(path: &Path) {
    use std::os::unix::ffi::OsStrExt;
    let Ok(path) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return;
    };
    // SAFETY: a valid NUL-terminated path; a null `times` means "now".
    unsafe { libc::utimensat(libc::AT_FDCWD, path.as_ptr(), std::ptr::null(), 0) };
}

fn is_hash(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit())
}

fn set_executable(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).map_err(|source| Error::Io {
        action: "making executable",
        path: path.to_path_buf(),
        source,
    })
}

/// Manta's cache directory: `MANTA_CACHE_DIR`, else the user's cache directory (executables
/// and submitted jobs live under it).
pub fn manta_cache_dir() -> PathBuf {
    std::env::var_os("MANTA_CACHE_DIR")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(manta_engine::dirs::user_cache_dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn install(cache: &ExecutableCache, data: &[u8]) -> String {
        let hash = hex::encode(Sha256::digest(data));
        let mut writer = cache.writer(&hash).unwrap();
        writer.write(data).unwrap();
        writer.finish().unwrap();
        hash
    }

    /// Nine different executables through a cache that keeps eight: the node that loaded the
    /// first still starts workers from it, the same verified bytes, though it was pruned.
    #[test]
    fn a_loaded_executable_survives_being_pruned() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = ExecutableCache::new(tmp.path().join("cache")).unwrap();
        let first = install(&cache, b"#!/bin/sh\necho first\n");
        let loaded = cache.load(&first).unwrap().expect("cached");
        for i in 0..KEEP_EXECUTABLES {
            // Newer than the first: it is the one pruned.
            let old = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1);
            File::options()
                .append(true)
                .open(cache.path(&first))
                .and_then(|f| f.set_modified(old))
                .ok();
            install(&cache, format!("program {i}").as_bytes());
        }
        assert!(!cache.path(&first).exists(), "pruned");
        // What a node's worker pool does before it starts a worker.
        let job = JobExecutable::new(std::sync::Arc::new(loaded), cache.clone());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let path = runtime.block_on(job.path()).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"#!/bin/sh\necho first\n");
        assert_eq!(hash_file(&path).unwrap().0, first);
    }

    #[test]
    fn a_file_that_is_not_what_its_name_says_is_not_loaded() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = ExecutableCache::new(tmp.path()).unwrap();
        let hash = install(&cache, b"the real thing");
        fs::write(cache.path(&hash), b"something else").unwrap();
        assert!(cache.load(&hash).unwrap().is_none());
        assert!(!cache.path(&hash).exists(), "deleted, to be fetched again");
        assert!(cache.load(&"f".repeat(64)).unwrap().is_none());
        assert!(cache.load("../../etc/passwd").unwrap().is_none());
    }

    #[test]
    fn the_cache_is_its_users_alone_and_capped_in_bytes() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let cache = ExecutableCache::new(tmp.path().join("cache")).unwrap();
        let mode = fs::metadata(tmp.path().join("cache"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
        let hashes: Vec<String> = (0..3)
            .map(|i| install(&cache, &vec![i as u8; 1000]))
            .collect();
        // The newest is kept even past the cap; then as many as fit.
        cache.prune(usize::MAX, 1);
        let kept = hashes.iter().filter(|h| cache.path(h).exists()).count();
        assert_eq!(kept, 1);
    }

    #[test]
    fn installs_verified_executables_only() {
        let tmp = tempfile::tempdir().unwrap();
        let source = tmp.path().join("prog");
        fs::write(&source, b"#!/bin/sh\necho hi\n").unwrap();
        let (hash, size) = hash_file(&source).unwrap();
        assert_eq!(size, 18);

        let cache = ExecutableCache::new(tmp.path().join("cache")).unwrap();
        assert!(!cache.contains(&hash));
        let mut writer = cache.writer(&hash).unwrap();
        writer.write(&fs::read(&source).unwrap()).unwrap();
        let installed = writer.finish().unwrap();
        assert!(cache.contains(&hash));
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            fs::metadata(&installed).unwrap().permissions().mode() & 0o111,
            0o111
        );

        let wrong = "0".repeat(64);
        let mut writer = cache.writer(&wrong).unwrap();
        writer.write(b"something else").unwrap();
        assert!(writer.finish().is_err());
        assert!(!cache.contains(&wrong));
        let leftovers = fs::read_dir(tmp.path().join("cache")).unwrap().count();
        assert_eq!(leftovers, 1, "only the verified executable remains");
    }

    #[test]
    fn prune_keeps_the_most_recently_used() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = ExecutableCache::new(tmp.path()).unwrap();
        let hashes: Vec<String> = (0..4)
            .map(|i| {
                let data = format!("program {i}");
                let hash = hex::encode(Sha256::digest(data.as_bytes()));
                let mut writer = cache.writer(&hash).unwrap();
                writer.write(data.as_bytes()).unwrap();
                writer.finish().unwrap();
                // Distinct modification times, oldest first.
                let when = std::time::SystemTime::UNIX_EPOCH
                    + std::time::Duration::from_secs(1_000_000 + i);
                File::options()
                    .append(true)
                    .open(cache.path(&hash))
                    .unwrap()
                    .set_modified(when)
                    .unwrap();
                hash
            })
            .collect();
        assert!(
            cache.contains(&hashes[0]),
            "using the oldest makes it the newest"
        );
        cache.prune(2, u64::MAX);
        let kept: Vec<bool> = hashes.iter().map(|h| cache.path(h).exists()).collect();
        assert_eq!(kept, vec![true, false, false, true]);
    }
}
