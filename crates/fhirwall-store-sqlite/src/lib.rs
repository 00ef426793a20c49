//! The embedded store: SQLite in WAL mode with one writer thread that group-commits every
//! pending write and audit record in a single durable transaction.
//! It stores only what it is given (sealed bodies, blind-index terms, sealed audit records);
//! it must not decrypt, and only this crate knows SQLite.

mod cache;
mod schema;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use fhirwall_store::{
    ClientRecord, CurrentQuery, HistoryQuery, Method, SealedAudit, Store, StoreError, StoreFuture,
    StoredAudit, StoredKey, StoredVersion, WriteConflict, WriteRequest,
};
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};

pub use writer::ChainFn;
use writer::{Command, WriterHandle};

fn backend(e: rusqlite::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

/// The SQLite store. Open it, load its keys, then [`SqliteStore::start_writer`].
pub struct SqliteStore {
    path: PathBuf,
    readers: Mutex<Vec<Connection>>,
    admin: Mutex<Connection>,
    writer: Mutex<Option<WriterHandle>>,
    sender: std::sync::RwLock<Option<std::sync::mpsc::Sender<Command>>>,
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
    let conn = Connection::open_with_flags(path, flags).map_err(backend)?;
    conn.busy_timeout(std::time::Duration::from_secs(10))
        .map_err(backend)?;
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(backend)?;
    // Statement journals and sorts stay in memory instead of temporary files.
    conn.pragma_update(None, "temp_store", "MEMORY")
        .map_err(backend)?;
    // A negative cache size is in KiB: readers get 8 MiB each; the writer sets its own.
    conn.pragma_update(None, "cache_size", -8192)
        .map_err(backend)?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

/// Stores a wrapped key (used by the admin connection and by the writer).
pub(crate) fn insert_key(conn: &Connection, key: &StoredKey) -> Result<(), rusqlite::Error> {
    conn.prepare_cached(
        "INSERT INTO wrapped_keys (key_id, purpose, tenant, kek_id, wrapped, created) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![
        key.key_id,
        key.purpose,
        key.tenant,
        key.kek_id,
        key.wrapped,
        key.created_unix
    ])
    .map(|_| ())
}

/// Sealed bytes the current-version cache may hold.
const CACHE_BYTES: usize = 64 * 1024 * 1024;

fn poll_briefly(attempt: i32) -> bool {
    std::thread::sleep(std::time::Duration::from_micros(100));
    attempt < 10_000
}

impl SqliteStore {
    /// Opens (creating if needed) the database file `path` and brings its schema up to date.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| StoreError::Backend(e.to_string()))?;
        }
        let admin = open_connection(path, false)?;
        schema::migrate(&admin)?;
        Ok(SqliteStore {
            path: path.to_path_buf(),
            readers: Mutex::new(Vec::new()),
            admin: Mutex::new(admin),
            writer: Mutex::new(None),
            sender: std::sync::RwLock::new(None),
            cache: Arc::new(cache::CurrentCache::new(CACHE_BYTES)),
        })
    }

    /// Starts the group-commit writer. `chain` computes each audit record's chain link.
    pub fn start_writer(&self, chain: ChainFn) -> Result<(), StoreError> {
        let conn = open_connection(&self.path, false)?;
        // The writer's inserts touch index pages all over the file; a page cache that holds
        // them keeps each commit from re-reading pages it wrote moments ago.
        conn.pragma_update(None, "cache_size", -131_072)
            .map_err(backend)?;
        // Checkpoints run on their own thread (see writer::checkpointer), not inside a commit.
        conn.pragma_update(None, "wal_autocheckpoint", 0)
            .map_err(backend)?;
        let mut checkpoint_conn = open_connection(&self.path, false)?;
        // A restarting checkpoint blocks writers while it waits for readers to leave the log.
        // SQLite's default busy handler backs off up to 100 ms per retry; readers here last
        // microseconds, so poll every 100 us instead, for at most about a second.
        checkpoint_conn
            .busy_handler(Some(poll_briefly))
            .map_err(backend)?;
        let mut wal_path = self.path.clone().into_os_string();
        wal_path.push("-wal");
        let handle = writer::spawn(
            conn,
            checkpoint_conn,
            wal_path.into(),
            chain,
            self.cache.clone(),
        )?;
        let sender = handle.sender.clone();
        *self.writer.lock().map_err(|_| poisoned())? = Some(handle);
        *self.sender.write().map_err(|_| poisoned())? = Some(sender);
        Ok(())
    }

    /// Stops accepting writes, lets the writer commit what it holds, and waits for it.
    pub fn shutdown(&self) {
        if let Ok(mut sender) = self.sender.write() {
            sender.take();
        }
        let handle = self.writer.lock().ok().and_then(|mut w| w.take());
        if let Some(handle) = handle {
            handle.join();
        }
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
        let result = f(&conn).map_err(backend);
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
        f(&conn).map_err(backend)
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

const VERSION_COLUMNS: &str =
    "v.tenant, v.rtype, v.id, v.version, v.last_updated, v.method, v.body, v.seq";

fn row_to_version(row: &rusqlite::Row<'_>) -> Result<StoredVersion, rusqlite::Error> {
    let method: String = row.get(5)?;
    Ok(StoredVersion {
        tenant: row.get(0)?,
        resource_type: row.get(1)?,
        id: row.get(2)?,
        version: row.get::<_, i64>(3)? as u64,
        last_updated_micros: row.get(4)?,
        method: Method::parse(&method).unwrap_or(Method::Update),
        sealed_body: row.get(6)?,
        seq: row.get::<_, i64>(7)? as u64,
    })
}

fn row_to_audit(row: &rusqlite::Row<'_>) -> Result<StoredAudit, rusqlite::Error> {
    Ok(StoredAudit {
        seq: row.get::<_, i64>(0)? as u64,
        tenant: row.get(1)?,
        record_id: row.get(2)?,
        recorded_micros: row.get(3)?,
        sealed: row.get(4)?,
        link: row.get(5)?,
    })
}

fn row_to_client(row: &rusqlite::Row<'_>) -> Result<ClientRecord, rusqlite::Error> {
    Ok(ClientRecord {
        client_id: row.get(0)?,
        name: row.get(1)?,
        jwks: row.get(2)?,
        jwks_uri: row.get(3)?,
        scope: row.get(4)?,
        created_unix: row.get(5)?,
    })
}

/// Appends the SQL and parameters that restrict `c` (resource_current) to `query`.
pub(crate) fn current_query_sql(query: &CurrentQuery) -> (String, Vec<rusqlite::types::Value>) {
    use rusqlite::types::Value as V;
    let mut sql = "SELECT c.seq FROM resource_current c WHERE c.tenant = ?1 AND c.rtype = ?2 AND c.deleted = 0"
        .to_string();
    let mut args = vec![
        V::Text(query.tenant.clone()),
        V::Text(query.resource_type.clone()),
    ];
    if let Some(id) = &query.id {
        args.push(V::Text(id.clone()));
        sql.push_str(&format!(" AND c.id = ?{}", args.len()));
    }
    for term in &query.terms {
        args.push(V::Blob(term.0.to_vec()));
        sql.push_str(&format!(
            " AND EXISTS (SELECT 1 FROM search_terms t WHERE t.tenant = c.tenant AND t.rtype = c.rtype \
             AND t.id = c.id AND t.term = ?{})",
            args.len()
        ));
    }
    if let Some(after) = query.after_seq {
        args.push(V::Integer(after as i64));
        sql.push_str(&format!(" AND c.seq > ?{}", args.len()));
    }
    args.push(V::Integer(query.limit as i64));
    sql.push_str(&format!(" ORDER BY c.seq LIMIT ?{}", args.len()));
    let sql = format!(
        "SELECT {VERSION_COLUMNS} FROM resource_versions v WHERE v.seq IN ({sql}) ORDER BY v.seq"
    );
    (sql, args)
}

impl Store for SqliteStore {
    fn write(&self, request: WriteRequest) -> StoreFuture<'_, Result<u64, WriteConflict>> {
        self.send(|reply| Command::Write(Box::new(request), reply))
    }

    fn append_audit(&self, record: SealedAudit) -> StoreFuture<'_, u64> {
        self.send(|reply| Command::Audit(record, reply))
    }

    fn use_jti(&self, client_id: &str, jti: &str, expires_unix: i64) -> StoreFuture<'_, bool> {
        let (client_id, jti) = (client_id.to_string(), jti.to_string());
        self.send(move |reply| Command::Jti {
            client_id,
            jti,
            expires_unix,
            reply,
        })
    }

    fn read_current<'a>(
        &'a self,
        tenant: &'a str,
        resource_type: &'a str,
        id: &'a str,
    ) -> StoreFuture<'a, Option<StoredVersion>> {
        let writer_running = self.sender.read().map(|s| s.is_some()).unwrap_or(false);
        let generation = if writer_running {
            let (hit, generation) = self.cache.get(tenant, resource_type, id);
            if let Some(version) = hit {
                return Box::pin(async move { Ok(Some(version)) });
            }
            Some(generation)
        } else {
            None
        };
        let result = self.with_reader(|conn| {
            // A sub-select, not a join: with a join SQLite's constant propagation marks the
            // bound parameters as plan-relevant and re-prepares the statement on every use.
            conn.prepare_cached(&format!(
                "SELECT {VERSION_COLUMNS} FROM resource_versions v WHERE v.seq = \
                 (SELECT c.seq FROM resource_current c WHERE c.tenant = ?1 AND c.rtype = ?2 AND c.id = ?3)"
            ))?
            .query_row(params![tenant, resource_type, id], row_to_version)
            .optional()
        });
        if let (Some(generation), Ok(Some(version))) = (generation, &result) {
            self.cache.fill(version, generation);
        }
        Box::pin(async move { result })
    }

    fn read_version<'a>(
        &'a self,
        tenant: &'a str,
        resource_type: &'a str,
        id: &'a str,
        version: u64,
    ) -> StoreFuture<'a, Option<StoredVersion>> {
        let result = self.with_reader(|conn| {
            conn.prepare_cached(&format!(
                "SELECT {VERSION_COLUMNS} FROM resource_versions v \
                 WHERE v.tenant = ?1 AND v.rtype = ?2 AND v.id = ?3 AND v.version = ?4"
            ))?
            .query_row(
                params![tenant, resource_type, id, version as i64],
                row_to_version,
            )
            .optional()
        });
        Box::pin(async move { result })
    }

    fn history(&self, query: HistoryQuery) -> StoreFuture<'_, Vec<StoredVersion>> {
        use rusqlite::types::Value as V;
        let mut sql =
            format!("SELECT {VERSION_COLUMNS} FROM resource_versions v WHERE v.tenant = ?1");
        let mut args = vec![V::Text(query.tenant.clone())];
        if let Some(rtype) = &query.resource_type {
            args.push(V::Text(rtype.clone()));
            sql.push_str(&format!(" AND v.rtype = ?{}", args.len()));
        }
        if let Some(id) = &query.id {
            args.push(V::Text(id.clone()));
            sql.push_str(&format!(" AND v.id = ?{}", args.len()));
        }
        if let Some(since) = query.since_micros {
            args.push(V::Integer(since));
            sql.push_str(&format!(" AND v.last_updated >= ?{}", args.len()));
        }
        if let Some(before) = query.before_seq {
            args.push(V::Integer(before as i64));
            sql.push_str(&format!(" AND v.seq < ?{}", args.len()));
        }
        args.push(V::Integer(query.limit as i64));
        sql.push_str(&format!(" ORDER BY v.seq DESC LIMIT ?{}", args.len()));
        let result = self.with_reader(|conn| {
            let mut stmt = conn.prepare_cached(&sql)?;
            let rows = stmt.query_map(rusqlite::params_from_iter(args), row_to_version)?;
            rows.collect()
        });
        Box::pin(async move { result })
    }

    fn find_current(&self, query: CurrentQuery) -> StoreFuture<'_, Vec<StoredVersion>> {
        let (sql, args) = current_query_sql(&query);
        let result = self.with_reader(|conn| {
            let mut stmt = conn.prepare_cached(&sql)?;
            let rows = stmt.query_map(rusqlite::params_from_iter(args), row_to_version)?;
            rows.collect()
        });
        Box::pin(async move { result })
    }

    fn audit_page(
        &self,
        before_seq: Option<u64>,
        limit: usize,
    ) -> StoreFuture<'_, Vec<StoredAudit>> {
        let before = before_seq.map_or(i64::MAX, |s| s as i64);
        let result = self.with_reader(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT seq, tenant, record_id, recorded, sealed, link FROM audit_log \
                 WHERE seq < ?1 ORDER BY seq DESC LIMIT ?2",
            )?;
            let rows = stmt.query_map(params![before, limit as i64], row_to_audit)?;
            rows.collect()
        });
        Box::pin(async move { result })
    }

    fn audit_scan(&self, after_seq: u64, limit: usize) -> StoreFuture<'_, Vec<StoredAudit>> {
        let result = self.with_reader(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT seq, tenant, record_id, recorded, sealed, link FROM audit_log \
                 WHERE seq > ?1 ORDER BY seq ASC LIMIT ?2",
            )?;
            let rows = stmt.query_map(params![after_seq as i64, limit as i64], row_to_audit)?;
            rows.collect()
        });
        Box::pin(async move { result })
    }

    fn audit_get(&self, seq: u64) -> StoreFuture<'_, Option<StoredAudit>> {
        let result = self.with_reader(|conn| {
            conn.prepare_cached(
                "SELECT seq, tenant, record_id, recorded, sealed, link FROM audit_log WHERE seq = ?1",
            )?
            .query_row(params![seq as i64], row_to_audit)
            .optional()
        });
        Box::pin(async move { result })
    }

    fn load_keys(&self) -> StoreFuture<'_, Vec<StoredKey>> {
        let result = self.with_admin(|conn| {
            let mut stmt = conn.prepare(
                "SELECT key_id, purpose, tenant, kek_id, wrapped, created FROM wrapped_keys ORDER BY rowid",
            )?;
            let rows = stmt.query_map([], |row| {
                Ok(StoredKey {
                    key_id: row.get(0)?,
                    purpose: row.get(1)?,
                    tenant: row.get(2)?,
                    kek_id: row.get(3)?,
                    wrapped: row.get(4)?,
                    created_unix: row.get(5)?,
                })
            })?;
            rows.collect()
        });
        Box::pin(async move { result })
    }

    fn save_key(&self, key: StoredKey) -> StoreFuture<'_, ()> {
        // Once the writer runs, keys commit through it like every other runtime write (no
        // competing for SQLite's write lock); before that (start-up, operator commands) the
        // admin connection stores them.
        let writer_running = self.sender.read().map(|s| s.is_some()).unwrap_or(false);
        if writer_running {
            return self.send(move |reply| Command::SaveKey(key, reply));
        }
        let result = self.with_admin(|conn| insert_key(conn, &key));
        Box::pin(async move { result })
    }

    fn rewrap_key(&self, key: StoredKey) -> StoreFuture<'_, bool> {
        let result = self.with_admin(|conn| {
            conn.execute(
                "UPDATE wrapped_keys SET kek_id = ?2, wrapped = ?3 WHERE key_id = ?1",
                params![key.key_id, key.kek_id, key.wrapped],
            )
            .map(|n| n == 1)
        });
        Box::pin(async move { result })
    }

    fn add_client(&self, client: ClientRecord) -> StoreFuture<'_, ()> {
        let result = self.with_admin(|conn| {
            conn.execute(
                "INSERT INTO clients (client_id, name, jwks, jwks_uri, scope, created) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    client.client_id,
                    client.name,
                    client.jwks,
                    client.jwks_uri,
                    client.scope,
                    client.created_unix
                ],
            )
            .map(|_| ())
        });
        Box::pin(async move { result })
    }

    fn get_client<'a>(&'a self, client_id: &'a str) -> StoreFuture<'a, Option<ClientRecord>> {
        let result = self.with_reader(|conn| {
            conn.prepare_cached(
                "SELECT client_id, name, jwks, jwks_uri, scope, created FROM clients WHERE client_id = ?1",
            )?
            .query_row(params![client_id], row_to_client)
            .optional()
        });
        Box::pin(async move { result })
    }

    fn list_clients(&self) -> StoreFuture<'_, Vec<ClientRecord>> {
        let result = self.with_admin(|conn| {
            let mut stmt = conn.prepare(
                "SELECT client_id, name, jwks, jwks_uri, scope, created FROM clients ORDER BY created, client_id",
            )?;
            let rows = stmt.query_map([], row_to_client)?;
            rows.collect()
        });
        Box::pin(async move { result })
    }

    fn remove_client<'a>(&'a self, client_id: &'a str) -> StoreFuture<'a, bool> {
        let result = self.with_admin(|conn| {
            conn.execute(
                "DELETE FROM clients WHERE client_id = ?1",
                params![client_id],
            )
            .map(|n| n > 0)
        });
        Box::pin(async move { result })
    }
}

/// Shared handle type used by the server.
pub type SharedSqliteStore = Arc<SqliteStore>;
