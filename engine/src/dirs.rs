//! Directories of one user: where Manta keeps what must survive a process but not be shared
//! with other users of the machine.
//!
//! [`user_cache_dir`] is `$XDG_CACHE_HOME/manta`, else `~/.cache/manta`, else
//! `/var/tmp/manta-<uid>`: on disk (never tmpfs by default), and per user, so that nothing in it
//! sits at a path another user could have created first. [`private_dir`] creates a directory
//! readable by its user only, and refuses one owned by someone else.
//!
//! ```
//! let parent = tempfile::tempdir().unwrap();
//! let dir = manta_engine::dirs::private_dir(&parent.path().join("a/b")).unwrap();
//! use std::os::unix::fs::PermissionsExt;
//! assert_eq!(std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700);
//! ```

use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// This user's cache directory for Manta (not created; see the module doc).
pub fn user_cache_dir() -> PathBuf {
    let from_env = |name: &str| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(xdg) = from_env("XDG_CACHE_HOME") {
        return xdg.join("manta");
    }
    if let Some(home) = from_env("HOME") {
        return home.join(".cache").join("manta");
    }
    // SAFETY: getuid cannot fail.
    PathBuf::from(format!("/var/tmp/manta-{}", unsafe { libc::getuid() }))
}

/// Creates `path` (and its parents) if missing, readable by this user only, and returns it. An
/// existing directory of this user's is made private; one of another user's is an error.
pub fn private_dir(path: &Path) -> Result<PathBuf> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(|e| Error::io(path, e))?;
    let meta = std::fs::symlink_metadata(path).map_err(|e| Error::io(path, e))?;
    // SAFETY: getuid cannot fail.
    let me = unsafe { libc::getuid() };
    if !meta.is_dir() || meta.uid() != me {
        return Err(Error::io(
            path,
            std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                "not a directory of this user's (refusing to keep private files there)",
            ),
        ));
    }
    if meta.permissions().mode() & 0o077 != 0 {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| Error::io(path, e))?;
    }
    Ok(path.to_path_buf())
}
