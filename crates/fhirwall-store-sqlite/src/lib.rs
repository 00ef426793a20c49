//! The embedded store: SQLite in WAL mode, with one writer thread that group-commits every
//! pending write, FHIR transaction, audit record and jti use in a single durable transaction,
//! a checkpointer thread, and a cache of current versions. It stores only what it is given
//! (sealed bodies, blind-index terms, sealed audit records, integrity tags) and links the
//! trail with the chain it is started with; it must not decrypt or compute a tag itself, and
//! only this crate knows SQLite.
//!
//! Use: [`SqliteStore::open`], read and save keys, then [`Store::start`] with the chain.

mod audit;
mod auth;
mod cache;
mod files;
mod keys;
mod plan;
mod resources;
mod rows;
mod schema;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use fhirwall_store::{AuditChain, Store, StoreError, StoreFuture};
use rusqlite::{Connection, OpenFlags};

use rows::store_error;
use writer::{Command, WriterHandle};

/// The SQLite store. Open it, load its keys, then [`Store::start`] it with the audit chain.
pub struct SqliteStore {
    path: PathBuf,
    readers: Mutex<Vec<Connection>>,
    admin: Mutex<Connection>,
    writer: Mutex<Option<WriterHandle>>,
    sender: RwLock<Option<std::sync::mpsc::Sender<Command>>>,
    /// Current versions published by the writer; consulted only while the writer runs (then
    /// every write of this database goes through it).
    cache: Arc<cache::CurrentCache>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish()
    }
}

pub(crate) fn open_connection(path: &Path, read_only: bool) -> Result<Connection, StoreError> {
    let flags = if read_only {
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX
    } else {
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
    };
    let conn = Connection::open_with_flags(path, flags).map_err(store_error)?;
    conn.busy_timeout(std::time::Duration::from_secs(10))
        .map_err(store_error)?;
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(store_error)?;
    // Statement journals and sorts stay in memory instead of temporary files.
    conn.pragma_update(None, "temp_store", "MEMORY")
        .map_err(store_error)?;
    // A negative cache size is in KiB: readers get 8 MiB each; the writer sets its own.
    conn.pragma_update(None, "cache_size", -8192)
        .map_err(store_error)?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

/// Sealed bytes the current-version cache may hold.
const CACHE_BYTES: usize = 64 * 1024 * 1024;

fn poll_briefly(attempt: i32) -> bool {
    std::thread::sleep(std::time::Duration::from_micros(100));
    attempt < 10_000
}

impl SqliteStore {
    /// Opens (creating if needed, owner-only) the database file `path` and brings its schema
    /// up to date. Keys can be read and saved now; writes wait for [`Store::start`].
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        files::prepare(path)?;
        let admin = open_connection(path, false)?;
        schema::migrate(&admin)?;
        Ok(SqliteStore {
            path: path.to_path_buf(),
            readers: Mutex::new(Vec::new()),
            admin: Mutex::new(admin),
            writer: Mutex::new(None),
            sender: RwLock::new(None),
            cache: Arc::new(cache::CurrentCache::new(CACHE_BYTES)),
        })
    }

    fn writer_running(&self) -> bool {
        self.sender.read().map(|s| s.is_some()).unwrap_or(false)
    }

    fn send<T: Send + 'static>(
        &self,
        make: impl FnOnce(tokio::sync::oneshot::Sender<Result<T, StoreError>>) -> Command,
    ) -> StoreFuture<'_, T> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let sent = self
            .sender
            .read()
            .ok()
            .and_then(|s| s.as_ref().map(|s| s.send(make(tx)).is_ok()))
            .unwrap_or(false);
        Box::pin(async move {
            if !sent {
                return Err(StoreError::Closed);
            }
            rx.await.map_err(|_| StoreError::Closed)?
        })
    }

    fn with_reader<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, rusqlite::Error>,
    ) -> Result<T, StoreError> {
        let pooled = self.readers.lock().map_err(|_| poisoned())?.pop();
        let conn = match pooled {
            Some(conn) => conn,
            None => open_connection(&self.path, true)?,
        };
        let result = f(&conn).map_err(store_error);
        if let Ok(mut pool) = self.readers.lock()
            && pool.len() < 16
        {
            pool.push(conn);
        }
        result
    }

    fn with_admin<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, rusqlite::Error>,
    ) -> Result<T, StoreError> {
        let conn = self.admin.lock().map_err(|_| poisoned())?;
        f(&conn).map_err(store_error)
    }
}

/// An answer that is already known (reads run synchronously on a pooled connection).
fn ready<'a, T: Send + 'a>(result: Result<T, StoreError>) -> StoreFuture<'a, T> {
    Box::pin(std::future::ready(result))
}

impl Store for SqliteStore {
    /// Starts the group-commit writer and the checkpointer; `chain` links every audit record
    /// from now on. Refused while a writer already runs.
    fn start(&self, chain: Arc<dyn AuditChain>) -> Result<(), StoreError> {
        let mut writer = self.writer.lock().map_err(|_| poisoned())?;
        if writer.is_some() {
            return Err(StoreError::Backend("the store is already started".into()));
        }
        let conn = open_connection(&self.path, false)?;
        // The writer's inserts touch index pages all over the file; a page cache that holds
        // them keeps each commit from re-reading pages it wrote moments ago.
        conn.pragma_update(None, "cache_size", -131_072)
            .map_err(store_error)?;
        // Checkpoints run on their own thread (see writer::checkpointer), not inside a commit.
        conn.pragma_update(None, "wal_autocheckpoint", 0)
            .map_err(store_error)?;
        let mut checkpoint_conn = open_connection(&self.path, false)?;
        // A restarting checkpoint blocks writers while it waits for readers to leave the log.
        // SQLite's default busy handler backs off up to 100 ms per retry; readers here last
        // microseconds, so poll every 100 us instead, for at most about a second.
        checkpoint_conn
            .busy_handler(Some(poll_briefly))
            .map_err(store_error)?;
        let [_, wal_path, _] = files::database_files(&self.path);
        let handle = writer::spawn(conn, checkpoint_conn, wal_path, chain, self.cache.clone())?;
        let sender = handle.sender.clone();
        *writer = Some(handle);
        *self.sender.write().map_err(|_| poisoned())? = Some(sender);
        Ok(())
    }

    /// Stops accepting writes, lets the writer commit what it holds, and waits for it.
    fn shutdown(&self) {
        if let Ok(mut sender) = self.sender.write() {
            sender.take();
        }
        let handle = self.writer.lock().ok().and_then(|mut w| w.take());
        if let Some(handle) = handle {
            handle.join();
        }
    }
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn poisoned() -> StoreError {
    StoreError::Backend("a lock was poisoned".to_string())
}

/// Shared handle type used by the server.
pub type SharedSqliteStore = Arc<SqliteStore>;
