//! Where files live: local paths, or object_store URLs (`s3://`, `gs://`, `az://`, `memory://`).
//!
//! Readers and writers name files by path strings. A string with one of the schemes above names
//! an object in a cloud store; anything else (including `file://`) is a local path. Stores are
//! built from the usual environment variables (`AWS_ACCESS_KEY_ID`, `AWS_ENDPOINT`,
//! `GOOGLE_SERVICE_ACCOUNT`, `AZURE_STORAGE_ACCOUNT_NAME`, ...; see object_store's
//! `from_env` builders) and cached per bucket. `memory://` is one in-memory store per process,
//! for tests and examples.
//!
//! Everything here is blocking: the object_store futures run on a small runtime of their own,
//! so read and write tasks (plain threads) can call in without an async context of their own.
//! [`StorageFile`] is what the readers open: a local file, or a remote object read by ranges,
//! so a Parquet reader fetches only the footer and the column chunks it decodes.

use std::collections::HashMap;
use std::io::{Cursor, Read, Seek};
use std::path::{Path as LocalPath, PathBuf};
use std::sync::{Arc, LazyLock, Mutex};

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use parquet::file::reader::{ChunkReader, Length};

use crate::error::{Error, Result};

/// The schemes read and written through object_store.
const SCHEMES: [&str; 9] = [
    "s3", "s3a", "gs", "gcs", "az", "azure", "abfs", "abfss", "memory",
];

/// Whether `path` names an object in a cloud store (not a local file).
pub fn is_url(path: &str) -> bool {
    path.split_once("://")
        .is_some_and(|(scheme, _)| SCHEMES.contains(&scheme.to_ascii_lowercase().as_str()))
}

/// An object in a store: the store and the key inside it.
#[derive(Clone, Debug)]
pub struct Object {
    store: Arc<dyn ObjectStore>,
    /// `scheme://bucket`, to rebuild full URLs.
    root: String,
    key: ObjectPath,
}

impl Object {
    /// Parses `url` and finds (or builds) its store.
    pub fn parse(url: &str) -> Result<Self> {
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| bad_url(url, "no scheme"))?;
        let scheme = scheme.to_ascii_lowercase();
        // memory:// has no bucket: the whole rest is the key.
        let (bucket, key) = if scheme == "memory" {
            ("", rest.trim_start_matches('/'))
        } else {
            rest.split_once('/').unwrap_or((rest, ""))
        };
        if scheme != "memory" && bucket.is_empty() {
            return Err(bad_url(url, "no bucket"));
        }
        let root = format!("{scheme}://{bucket}");
        let key = ObjectPath::parse(key.trim_end_matches('/'))
            .map_err(|e| bad_url(url, &e.to_string()))?;
        Ok(Self {
            store: store_for(&scheme, &root)?,
            root,
            key,
        })
    }

    /// The object's full URL.
    pub fn url(&self) -> String {
        join_url(&self.root, &self.key)
    }

    /// The same store, another key.
    fn with_key(&self, key: ObjectPath) -> Self {
        Self {
            store: Arc::clone(&self.store),
            root: self.root.clone(),
            key,
        }
    }

    /// The object's size, or `None` if there is no object at exactly this key.
    pub fn size(&self) -> Result<Option<u64>> {
        match block_on(self.store.head(&self.key)) {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.error("reading", e)),
        }
    }

    /// The whole object.
    pub fn read(&self) -> Result<Bytes> {
        block_on(async { self.store.get(&self.key).await?.bytes().await })
            .map_err(|e| self.error("reading", e))
    }

    /// Bytes `start..end` of the object.
    pub fn read_range(&self, start: u64, end: u64) -> Result<Bytes> {
        block_on(self.store.get_range(&self.key, start..end)).map_err(|e| self.error("reading", e))
    }

    /// Writes the whole object at once (atomic in every store).
    pub fn write(&self, bytes: Vec<u8>) -> Result<()> {
        block_on(self.store.put(&self.key, PutPayload::from(bytes)))
            .map(|_| ())
            .map_err(|e| self.error("writing", e))
    }

    /// The objects under this key taken as a directory, as full objects, sorted.
    pub fn list(&self) -> Result<Vec<Object>> {
        let prefix = (!self.key.as_ref().is_empty()).then_some(&self.key);
        let metas: Vec<_> = block_on(self.store.list(prefix).try_collect::<Vec<_>>())
            .map_err(|e| self.error("listing", e))?;
        let mut keys: Vec<ObjectPath> = metas.into_iter().map(|m| m.location).collect();
        keys.sort();
        Ok(keys.into_iter().map(|k| self.with_key(k)).collect())
    }

    fn delete(&self) -> Result<()> {
        match block_on(self.store.delete(&self.key)) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.error("deleting", e)),
        }
    }

    fn copy_to(&self, to: &Object) -> Result<()> {
        block_on(self.store.copy(&self.key, &to.key)).map_err(|e| self.error("copying", e))
    }

    /// The key relative to `dir`'s key, if it is inside it.
    fn relative_to(&self, dir: &Object) -> Option<String> {
        let key = self.key.as_ref();
        let dir = dir.key.as_ref();
        if dir.is_empty() {
            return Some(key.to_string());
        }
        key.strip_prefix(dir)?.strip_prefix('/').map(str::to_string)
    }

    fn error(&self, action: &'static str, e: object_store::Error) -> Error {
        let kind = match &e {
            object_store::Error::NotFound { .. } => std::io::ErrorKind::NotFound,
            _ => std::io::ErrorKind::Other,
        };
        Error::Io {
            action,
            path: PathBuf::from(self.url()),
            source: std::io::Error::new(kind, e),
        }
    }
}

fn join_url(root: &str, key: &ObjectPath) -> String {
    if root.starts_with("memory://") {
        format!("memory:///{key}")
    } else {
        format!("{root}/{key}")
    }
}

fn bad_url(url: &str, reason: &str) -> Error {
    Error::InvalidArgument(format!("invalid storage URL {url:?}: {reason}"))
}

/// The stores built so far, by `scheme://bucket`.
static STORES: LazyLock<Mutex<HashMap<String, Arc<dyn ObjectStore>>>> =
    LazyLock::new(Default::default);

fn store_for(scheme: &str, root: &str) -> Result<Arc<dyn ObjectStore>> {
    let mut stores = STORES.lock().expect("store cache poisoned");
    if let Some(store) = stores.get(root) {
        return Ok(Arc::clone(store));
    }
    let failed = |e: object_store::Error| {
        Error::InvalidArgument(format!(
            "cannot open {root}: {e} (credentials and endpoints come from the environment)"
        ))
    };
    let store: Arc<dyn ObjectStore> = match scheme {
        "memory" => Arc::new(object_store::memory::InMemory::new()),
        "s3" | "s3a" => Arc::new(
            object_store::aws::AmazonS3Builder::from_env()
                .with_url(root)
                .build()
                .map_err(failed)?,
        ),
        "gs" | "gcs" => Arc::new(
            object_store::gcp::GoogleCloudStorageBuilder::from_env()
                .with_url(root.replacen("gcs://", "gs://", 1))
                .build()
                .map_err(failed)?,
        ),
        _ => Arc::new(
            object_store::azure::MicrosoftAzureBuilder::from_env()
                .with_url(root)
                .build()
                .map_err(failed)?,
        ),
    };
    stores.insert(root.to_string(), Arc::clone(&store));
    Ok(store)
}

/// The runtime object_store's futures run on.
static IO_RUNTIME: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("manta-storage")
        .enable_all()
        .build()
        .expect("a tokio runtime for storage IO")
});

/// Runs `future` on the storage runtime and waits for it; callable from any thread.
pub(crate) fn block_on<F>(future: F) -> F::Output
where
    F: Future + Send,
    F::Output: Send,
{
    if tokio::runtime::Handle::try_current().is_err() {
        return IO_RUNTIME.block_on(future);
    }
    // Inside another runtime, block_on would panic: wait from a scoped thread instead.
    std::thread::scope(|scope| {
        scope
            .spawn(|| IO_RUNTIME.block_on(future))
            .join()
            .expect("storage IO thread panicked")
    })
}

/// The objects a URL names: the object itself, every object under it taken as a directory
/// (skipping names that start with `.` or `_`), or the objects a glob in it matches. Sorted,
/// as full URLs; an error naming the URL if there are none.
pub fn list_objects(url: &str) -> Result<Vec<PathBuf>> {
    let not_found = || Error::InputNotFound {
        path: url.to_string(),
    };
    let urls: Vec<String> = if let Some(glob_at) = url.find(['*', '?', '[']) {
        let dir_end = url[..glob_at].rfind('/').ok_or_else(not_found)?;
        let pattern = glob::Pattern::new(url)
            .map_err(|e| Error::InvalidArgument(format!("invalid glob {url:?}: {e}")))?;
        let dir = Object::parse(&url[..dir_end])?;
        dir.list()?
            .into_iter()
            .map(|o| o.url())
            .filter(|u| {
                let options = glob::MatchOptions {
                    require_literal_separator: true,
                    ..Default::default()
                };
                pattern.matches_with(u, options)
            })
            .collect()
    } else {
        let object = Object::parse(url)?;
        if object.size()?.is_some() {
            vec![object.url()]
        } else {
            object
                .list()?
                .into_iter()
                .filter(|o| {
                    o.relative_to(&object)
                        .is_some_and(|rel| !rel.split('/').any(|part| part.starts_with(['.', '_'])))
                })
                .map(|o| o.url())
                .collect()
        }
    };
    if urls.is_empty() {
        return Err(not_found());
    }
    Ok(urls.into_iter().map(PathBuf::from).collect())
}

/// The bytes of a whole file, local or remote.
pub fn read_all(path: &LocalPath) -> Result<Bytes> {
    let text = path.to_string_lossy();
    if is_url(&text) {
        return Object::parse(&text)?.read();
    }
    std::fs::read(path)
        .map(Bytes::from)
        .map_err(|source| Error::Io {
            action: "reading",
            path: path.to_path_buf(),
            source,
        })
}

/// Something readable and seekable, for the CSV, JSON, IPC and text readers.
pub trait ReadSeek: Read + Seek + Send {}
impl<T: Read + Seek + Send> ReadSeek for T {}

/// Opens a file for sequential reading: a local file, or a remote object fetched whole.
pub fn open(path: &LocalPath) -> Result<Box<dyn ReadSeek>> {
    let text = path.to_string_lossy();
    if is_url(&text) {
        return Ok(Box::new(Cursor::new(Object::parse(&text)?.read()?)));
    }
    std::fs::File::open(path)
        .map(|f| Box::new(f) as Box<dyn ReadSeek>)
        .map_err(|source| Error::Io {
            action: "opening",
            path: path.to_path_buf(),
            source,
        })
}

/// A file the Parquet reader reads by ranges: local, or a remote object fetched range by range.
pub enum StorageFile {
    /// A local file.
    Local(std::fs::File),
    /// A remote object and its size.
    Remote(Object, u64),
}

impl StorageFile {
    /// Opens `path`.
    pub fn open(path: &LocalPath) -> Result<Self> {
        let text = path.to_string_lossy();
        if is_url(&text) {
            let object = Object::parse(&text)?;
            let size = object.size()?.ok_or_else(|| Error::InputNotFound {
                path: text.to_string(),
            })?;
            return Ok(StorageFile::Remote(object, size));
        }
        std::fs::File::open(path)
            .map(StorageFile::Local)
            .map_err(|source| Error::Io {
                action: "opening",
                path: path.to_path_buf(),
                source,
            })
    }

    /// Another handle on the same file, for a second reader of it: a duplicated descriptor,
    /// or the same object and size (no request to the store).
    pub fn try_clone(&self, path: &LocalPath) -> Result<Self> {
        match self {
            StorageFile::Local(file) => {
                file.try_clone()
                    .map(StorageFile::Local)
                    .map_err(|source| Error::Io {
                        action: "opening",
                        path: path.to_path_buf(),
                        source,
                    })
            }
            StorageFile::Remote(object, size) => Ok(StorageFile::Remote(object.clone(), *size)),
        }
    }
}

impl Length for StorageFile {
    fn len(&self) -> u64 {
        match self {
            StorageFile::Local(file) => file.len(),
            StorageFile::Remote(_, size) => *size,
        }
    }
}

impl ChunkReader for StorageFile {
    type T = Box<dyn Read + Send>;

    fn get_read(&self, start: u64) -> parquet::errors::Result<Self::T> {
        match self {
            StorageFile::Local(file) => Ok(Box::new(file.get_read(start)?)),
            StorageFile::Remote(object, size) => Ok(Box::new(Cursor::new(
                object
                    .read_range(start, *size)
                    .map_err(|e| parquet::errors::ParquetError::External(Box::new(e)))?,
            ))),
        }
    }

    fn get_bytes(&self, start: u64, length: usize) -> parquet::errors::Result<Bytes> {
        match self {
            StorageFile::Local(file) => file.get_bytes(start, length),
            StorageFile::Remote(object, _) => object
                .read_range(start, start + length as u64)
                .map_err(|e| parquet::errors::ParquetError::External(Box::new(e))),
        }
    }
}

/// Where a write's part files go until it commits: a local directory, or a staging prefix in
/// an object store.
#[derive(Clone, Debug)]
pub enum PartDir {
    /// A local directory.
    Local(PathBuf),
    /// A staging URL prefix.
    Remote(String),
}

/// Whether a write in `mode` may go to the object store `url`: never where an object is at
/// exactly that key (a file), and (the default mode) never over a prefix that holds objects.
pub fn check_remote_destination(url: &str, mode: crate::sink::WriteMode) -> Result<()> {
    let destination = Object::parse(url)?;
    let exists = |reason: &str| Error::OutputExists {
        path: PathBuf::from(url),
        reason: reason.to_string(),
    };
    if !destination.key.as_ref().is_empty() && destination.size()?.is_some() {
        return Err(exists(
            "an object is there (a file, not a directory); choose another path",
        ));
    }
    if mode == crate::sink::WriteMode::Error && !destination.list()?.is_empty() {
        return Err(exists(
            "objects are there already; write with WriteMode::Overwrite to replace them or \
             WriteMode::Append to add to them",
        ));
    }
    Ok(())
}

/// Moves staged parts to `destination` as `mode` says: beside what is there (`Append`, under
/// names tagged with `tag`), or replacing it (`Overwrite`, the objects of the old output that
/// the new one did not overwrite are deleted afterwards), then writes `_SUCCESS`.
pub fn commit_remote(
    staging: &str,
    destination: &str,
    mode: crate::sink::WriteMode,
    tag: &str,
) -> Result<()> {
    let staging = Object::parse(staging)?;
    let destination = Object::parse(destination)?;
    let staged = staging.list()?;
    let old = destination.list()?;
    let mut written = Vec::with_capacity(staged.len());
    for part in &staged {
        let Some(mut name) = part.relative_to(&staging) else {
            continue;
        };
        if mode == crate::sink::WriteMode::Append {
            name = crate::sink::appended_name(LocalPath::new(&name), tag);
        }
        let target = destination.with_key(destination.key.clone().join(name.as_str()));
        part.copy_to(&target)?;
        written.push(target.key.clone());
    }
    if mode != crate::sink::WriteMode::Append {
        for object in old {
            let inside_staging = object.relative_to(&staging).is_some();
            if !written.contains(&object.key) && !inside_staging {
                object.delete()?;
            }
        }
    }
    abort_remote(&staging.url())?;
    destination
        .with_key(destination.key.clone().join("_SUCCESS"))
        .write(Vec::new())
}

/// Removes everything under a staging prefix.
pub fn abort_remote(staging: &str) -> Result<()> {
    let staging = Object::parse(staging)?;
    for object in staging.list()? {
        object.delete()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_told_from_local_paths() {
        assert!(is_url("s3://bucket/key"));
        assert!(is_url("memory:///x"));
        assert!(is_url("GS://b/k"));
        assert!(!is_url("/tmp/x"));
        assert!(!is_url("file:///tmp/x"));
        assert!(!is_url("relative/s3://x"));
    }

    #[test]
    fn memory_objects_list_skip_hidden_and_match_globs() {
        for (key, body) in [
            ("t/a.csv", "1"),
            ("t/sub/b.csv", "22"),
            ("t/_tmp/c.csv", "3"),
            ("t/.hidden", "4"),
            ("t/d.json", "5"),
        ] {
            Object::parse(&format!("memory:///storage-test/{key}"))
                .unwrap()
                .write(body.as_bytes().to_vec())
                .unwrap();
        }
        let names = |url: &str| -> Vec<String> {
            list_objects(url)
                .unwrap()
                .into_iter()
                .map(|p| p.to_string_lossy().into_owned())
                .collect()
        };
        assert_eq!(
            names("memory:///storage-test/t"),
            [
                "memory:///storage-test/t/a.csv",
                "memory:///storage-test/t/d.json",
                "memory:///storage-test/t/sub/b.csv"
            ]
        );
        assert_eq!(
            names("memory:///storage-test/t/*.csv"),
            ["memory:///storage-test/t/a.csv"]
        );
        assert_eq!(
            names("memory:///storage-test/t/sub/b.csv"),
            ["memory:///storage-test/t/sub/b.csv"]
        );
        let bytes = read_all(LocalPath::new("memory:///storage-test/t/sub/b.csv")).unwrap();
        assert_eq!(&bytes[..], b"22");
        assert!(matches!(
            list_objects("memory:///storage-test/none"),
            Err(Error::InputNotFound { .. })
        ));
    }

    #[test]
    fn remote_commit_replaces_the_destination_and_abort_leaves_nothing() {
        let put = |url: &str| Object::parse(url).unwrap().write(b"x".to_vec()).unwrap();
        put("memory:///commit-test/out/old.csv");
        put("memory:///commit-test/out/_tmp1/part-0.csv");
        put("memory:///commit-test/out/_tmp1/part-1.csv");
        commit_remote(
            "memory:///commit-test/out/_tmp1",
            "memory:///commit-test/out",
            crate::sink::WriteMode::Overwrite,
            "tag",
        )
        .unwrap();
        let all: Vec<String> = Object::parse("memory:///commit-test")
            .unwrap()
            .list()
            .unwrap()
            .iter()
            .map(Object::url)
            .collect();
        assert_eq!(
            all,
            [
                "memory:///commit-test/out/_SUCCESS",
                "memory:///commit-test/out/part-0.csv",
                "memory:///commit-test/out/part-1.csv"
            ]
        );
        put("memory:///commit-test/other/_tmp2/part-0.csv");
        abort_remote("memory:///commit-test/other/_tmp2").unwrap();
        assert!(
            Object::parse("memory:///commit-test/other")
                .unwrap()
                .list()
                .unwrap()
                .is_empty()
        );
    }
}
