//! Data-directory preparation and engine markers shared by the disk backends.
//!
//! Every backend stores its files below `config.path` and writes a small marker file
//! ([`MARKER_FILE`]) naming the engine, so that opening a directory with the wrong engine
//! is a clear [`StorageError::WrongEngine`] instead of a confusing engine error or,
//! worse, a silently created second store.

use std::fs;
use std::io::Write;
use std::path::Path;

use crate::error::{StorageError, StorageResult};

/// Name of the marker file inside a data directory.
pub const MARKER_FILE: &str = "RUSD_ENGINE";
/// Version of the directory layout written into the marker.
pub const LAYOUT_VERSION: u32 = 1;

fn marker_text(engine: &str) -> String {
    format!("rusd-storage engine={engine} layout={LAYOUT_VERSION}\n")
}

/// Creates `path` if needed and claims it for `engine`.
///
/// * `path` is a file, or cannot be created → [`StorageError::InvalidPath`].
/// * The marker names another engine, or the directory has other content and no marker →
///   [`StorageError::WrongEngine`].
pub fn prepare_data_dir(path: &Path, engine: &'static str) -> StorageResult<()> {
    let invalid = |reason: String| StorageError::InvalidPath {
        path: path.to_path_buf(),
        reason,
    };
    if path.as_os_str().is_empty() {
        return Err(invalid("the path is empty".into()));
    }
    if path.exists() && !path.is_dir() {
        return Err(invalid("it exists and is not a directory".into()));
    }
    // The directories this call creates: their names must be made durable in their parents.
    let created: Vec<&Path> = path
        .ancestors()
        .take_while(|a| !a.as_os_str().is_empty() && !a.exists())
        .collect();
    fs::create_dir_all(path).map_err(|e| invalid(format!("cannot create it: {e}")))?;
    for dir in &created {
        let parent = match dir.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        fs::File::open(parent)
            .and_then(|d| d.sync_all())
            .map_err(|e| invalid(format!("cannot sync {}: {e}", parent.display())))?;
    }
    let marker = path.join(MARKER_FILE);
    match fs::read_to_string(&marker) {
        Ok(text) => {
            let found = text
                .split_whitespace()
                .find_map(|w| w.strip_prefix("engine="))
                .unwrap_or("unknown")
                .to_string();
            if found == engine {
                Ok(())
            } else {
                Err(StorageError::WrongEngine {
                    path: path.to_path_buf(),
                    expected: engine,
                    found,
                })
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut entries =
                fs::read_dir(path).map_err(|e| invalid(format!("cannot list it: {e}")))?;
            if entries.next().is_some() {
                return Err(StorageError::WrongEngine {
                    path: path.to_path_buf(),
                    expected: engine,
                    found: "a non-empty directory without a rusd marker".into(),
                });
            }
            write_marker(path, engine).map_err(|e| invalid(format!("cannot write marker: {e}")))
        }
        Err(e) => Err(invalid(format!("cannot read {MARKER_FILE}: {e}"))),
    }
}

fn write_marker(path: &Path, engine: &str) -> std::io::Result<()> {
    let tmp = path.join(format!("{MARKER_FILE}.tmp"));
    let mut f = fs::File::create(&tmp)?;
    f.write_all(marker_text(engine).as_bytes())?;
    f.sync_all()?;
    fs::rename(&tmp, path.join(MARKER_FILE))?;
    fs::File::open(path)?.sync_all()
}

/// Apparent size in bytes of every file below `path` (recursively).
pub fn dir_size(path: &Path) -> StorageResult<u64> {
    fn walk(p: &Path) -> std::io::Result<u64> {
        let mut total = 0;
        for entry in fs::read_dir(p)? {
            let entry = entry?;
            let meta = entry.metadata()?;
            if meta.is_dir() {
                total += walk(&entry.path())?;
            } else {
                total += meta.len();
            }
        }
        Ok(total)
    }
    walk(path).map_err(|e| StorageError::io(format!("measuring {}", path.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_empty_dir_and_rejects_other_engines() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("store");
        prepare_data_dir(&p, "sled").unwrap();
        prepare_data_dir(&p, "sled").unwrap();
        match prepare_data_dir(&p, "redb") {
            Err(StorageError::WrongEngine {
                found, expected, ..
            }) => {
                assert_eq!(found, "sled");
                assert_eq!(expected, "redb");
            }
            other => panic!("expected WrongEngine, got {other:?}"),
        }
    }

    #[test]
    fn rejects_files_and_foreign_dirs() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        fs::write(&file, b"x").unwrap();
        assert!(matches!(
            prepare_data_dir(&file, "sled"),
            Err(StorageError::InvalidPath { .. })
        ));
        let foreign = dir.path().join("foreign");
        fs::create_dir(&foreign).unwrap();
        fs::write(foreign.join("member.db"), b"etcd").unwrap();
        assert!(matches!(
            prepare_data_dir(&foreign, "sled"),
            Err(StorageError::WrongEngine { .. })
        ));
        assert!(matches!(
            prepare_data_dir(Path::new(""), "sled"),
            Err(StorageError::InvalidPath { .. })
        ));
    }

    #[test]
    fn dir_size_counts_nested_files() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("a"), [0u8; 10]).unwrap();
        fs::create_dir(dir.path().join("sub")).unwrap();
        fs::write(dir.path().join("sub/b"), [0u8; 32]).unwrap();
        assert_eq!(dir_size(dir.path()).unwrap(), 42);
    }
}
