//! The database's files on disk: the database, its `-wal` and its `-shm` are readable and
//! writable by the owner only (0600). SQLite gives the `-wal` and `-shm` it creates the
//! database file's mode, so the database file is created 0600 before SQLite opens it, and any
//! of the three found wider is tightened. It must not touch any other file.

use std::fs::{DirBuilder, OpenOptions, Permissions};
use std::io::ErrorKind;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use fhirwall_store::StoreError;

const OWNER_ONLY: u32 = 0o600;

fn io_error(what: &str, path: &Path, e: &std::io::Error) -> StoreError {
    StoreError::Backend(format!("{what} {}: {e}", path.display()))
}

/// The database file and the two SQLite keeps beside it in WAL mode.
pub(crate) fn database_files(path: &Path) -> [PathBuf; 3] {
    let beside = |suffix: &str| {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        PathBuf::from(name)
    };
    [path.to_path_buf(), beside("-wal"), beside("-shm")]
}

/// Makes the database's directory (owner-only, when this creates it), creates the database
/// file 0600 if it is missing, and tightens any of its files that others could read.
pub(crate) fn prepare(path: &Path) -> Result<(), StoreError> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)
            .map_err(|e| io_error("creating", parent, &e))?;
    }
    // An empty file is a new database to SQLite; creating it here is what fixes its mode.
    match OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(OWNER_ONLY)
        .open(path)
    {
        Ok(_) => {}
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io_error("creating", path, &e)),
    }
    for file in database_files(path) {
        let mode = match std::fs::metadata(&file) {
            Ok(metadata) => metadata.permissions().mode(),
            Err(e) if e.kind() == ErrorKind::NotFound => continue,
            Err(e) => return Err(io_error("inspecting", &file, &e)),
        };
        if mode & 0o077 != 0 {
            std::fs::set_permissions(&file, Permissions::from_mode(OWNER_ONLY))
                .map_err(|e| io_error("restricting", &file, &e))?;
        }
    }
    Ok(())
}
