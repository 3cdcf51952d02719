//! Finding the files a path names: a file, a directory (read recursively, skipping names that
//! start with `.` or `_`, as Spark and Ray do), or a glob. The result is sorted, so the same
//! path always gives the same order of files and so the same order of blocks. Object store URLs
//! are listed by [`crate::storage::list_objects`] with the same rules.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The files `path` names; an error naming the path if there are none.
pub fn list_files(path: &str) -> Result<Vec<PathBuf>> {
    let not_found = || Error::InputNotFound {
        path: path.to_string(),
    };
    if crate::storage::is_url(path) {
        return crate::storage::list_objects(path);
    }
    let path = path.strip_prefix("file://").unwrap_or(path);
    let mut files = if path.contains(['*', '?', '[']) {
        let matches = glob::glob(path)
            .map_err(|e| Error::InvalidArgument(format!("invalid glob {path:?}: {e}")))?;
        matches
            .filter_map(|m| m.ok())
            .filter(|p| p.is_file())
            .collect::<Vec<_>>()
    } else {
        let root = Path::new(path);
        if root.is_file() {
            vec![root.to_path_buf()]
        } else if root.is_dir() {
            let mut files = Vec::new();
            walk(root, &mut files).map_err(|source| Error::Io {
                action: "listing",
                path: root.to_path_buf(),
                source,
            })?;
            files
        } else {
            return Err(not_found());
        }
    };
    files.sort();
    if files.is_empty() {
        return Err(not_found());
    }
    Ok(files)
}

fn walk(dir: &Path, files: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        if name.to_string_lossy().starts_with(['.', '_']) {
            continue;
        }
        if entry.file_type()?.is_dir() {
            walk(&entry.path(), files)?;
        } else {
            files.push(entry.path());
        }
    }
    Ok(())
}
