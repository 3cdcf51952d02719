//! The content-addressed cache of job executables.
//!
//! A driver's own executable is what worker processes run (so its `#[manta::remote]` functions
//! exist there). When a driver joins a cluster it hashes its executable (SHA-256) and uploads it
//! to the head unless the head already has that hash; node daemons fetch it from the head the
//! first time a task of the job arrives. Files are named by their hash, written to a temporary
//! name, verified, made executable and renamed into place, so a half-written binary is never
//! started. On one machine the head and its nodes share the cache directory, so nothing is
//! copied twice. The cache keeps the [`KEEP_EXECUTABLES`] most recently used executables (a
//! driver's binary is some hundred MB, and every rebuild is a new one).

use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// How many executables the cache keeps.
pub const KEEP_EXECUTABLES: usize = 8;

/// A directory of executables named by SHA-256.
#[derive(Clone, Debug)]
pub struct ExecutableCache {
    dir: PathBuf,
}

impl ExecutableCache {
    /// The cache in `dir`, created if missing.
    pub fn new(dir: impl Into<PathBuf>) -> Result<Self> {
        let dir = dir.into();
        fs::create_dir_all(&dir).map_err(|source| Error::Io {
            action: "creating",
            path: dir.clone(),
            source,
        })?;
        Ok(Self { dir })
    }

    /// `$MANTA_CACHE_DIR/executables`, or `<temp dir>/manta-cache/executables`.
    pub fn default_dir() -> PathBuf {
        std::env::var_os("MANTA_CACHE_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| std::env::temp_dir().join("manta-cache"))
            .join("executables")
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

    /// Deletes all but the `keep` most recently used executables.
    pub fn prune(&self, keep: usize) {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return;
        };
        let mut files: Vec<(std::time::SystemTime, PathBuf)> = entries
            .flatten()
            .filter(|e| e.file_name().to_str().is_some_and(is_hash))
            .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
            .collect();
        files.sort_by_key(|f| std::cmp::Reverse(f.0));
        for (_, path) in files.into_iter().skip(keep) {
            let _ = fs::remove_file(path);
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
            .prune(KEEP_EXECUTABLES);
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

/// The SHA-256 (hex) and size of a file.
pub fn hash_file(path: &Path) -> Result<(String, u64)> {
    let io = |source| Error::Io {
        action: "reading",
        path: path.to_path_buf(),
        source,
    };
    let mut file = File::open(path).map_err(io)?;
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

#[cfg(test)]
mod tests {
    use super::*;

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
        cache.prune(2);
        let kept: Vec<bool> = hashes.iter().map(|h| cache.path(h).exists()).collect();
        assert_eq!(kept, vec![true, false, false, true]);
    }
}
