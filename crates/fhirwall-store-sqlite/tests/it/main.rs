//! Integration tests of the SQLite backend: the shared conformance story against a fresh
//! temporary store, and what only this backend promises (owner-only files, reopening with the
//! chain head, rows it refuses to decode). One test binary, as every crate has.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod conformance;
mod corrupt;
mod files;
mod lifecycle;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

/// A fresh directory under the system's temporary directory, removed when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(name: &str) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!(
            "fhirwall-store-sqlite-{name}-{}-{n}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        TempDir(dir)
    }

    /// The database file inside (not created).
    pub fn database(&self) -> PathBuf {
        self.0.join("data").join("fhirwall.sqlite")
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
