//! The single writer: it owns the write connection and commits every queued request in one
//! transaction with one disk sync (group commit). It links audit records into the chain in
//! commit order, so the chain needs no lock.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender, TryRecvError};
use std::thread::JoinHandle;

use fhirwall_store::{CurrentQuery, Expect, SealedAudit, StoreError, WriteConflict, WriteRequest};
use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};
use tokio::sync::oneshot;

use crate::backend;

/// Computes the chain link of a record from the previous link, its sequence number, its id
/// and its sealed bytes (the keyed MAC lives in the crypto and audit crates).
pub type ChainFn = Box<dyn Fn(&[u8; 32], u64, &str, &[u8]) -> [u8; 32] + Send>;

type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

pub(crate) enum Command {
    Write(Box<WriteRequest>, Reply<Result<u64, WriteConflict>>),
    Audit(SealedAudit, Reply<u64>),
    Jti {
        client_id: String,
        jti: String,
        expires_unix: i64,
        reply: Reply<bool>,
    },
    SaveKey(fhirwall_store::StoredKey, Reply<()>),
}

pub(crate) struct WriterHandle {
    pub(crate) sender: Sender<Command>,
    thread: JoinHandle<()>,
    checkpointer: JoinHandle<()>,
    stop_checkpoints: Arc<AtomicBool>,
}

impl WriterHandle {
    pub(crate) fn join(self) {
        drop(self.sender);
        let _ = self.thread.join();
        self.stop_checkpoints.store(true, Ordering::SeqCst);
        self.checkpointer.thread().unpark();
        let _ = self.checkpointer.join();
    }
}

/// Most requests one transaction takes; more wait for the next commit.
const MAX_BATCH: usize = 2048;

/// WAL size above which the checkpointer waits for a moment without readers to restart the
/// log from its start.
const WAL_RESTART_BYTES: u64 = 128 * 1024 * 1024;

/// Copies committed WAL frames into the database file in the background (a passive
/// checkpoint never blocks the writer or readers), so commits do not pay for it. Under
/// constant load some reader always holds the log, so it never restarts by itself; past
/// `WAL_RESTART_BYTES` a restarting checkpoint waits briefly for readers and resets it.
fn checkpointer(conn: Connection, wal_path: std::path::PathBuf, stop: Arc<AtomicBool>) {
    loop {
        let stopping = stop.load(Ordering::SeqCst);
        let wal_bytes = std::fs::metadata(&wal_path).map(|m| m.len()).unwrap_or(0);
        // A passive pass first copies nearly everything without holding up the writer; the
        // RESTART that follows (when the log has grown) then has little left to copy while it
        // blocks writers. RESTART keeps the file and rewrites it from the start, so no blocks
        // are allocated and zeroed again; TRUNCATE at shutdown leaves a small directory.
        let mut modes = vec!["PASSIVE"];
        if stopping {
            modes.push("TRUNCATE");
        } else if wal_bytes > WAL_RESTART_BYTES {
            modes.push("RESTART");
        }
        for mode in modes {
            if let Err(e) =
                conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |_| Ok(()))
            {
                tracing::warn!(error = %e, "background checkpoint failed");
            }
        }
        if stopping {
            return;
        }
        std::thread::park_timeout(std::time::Duration::from_millis(250));
    }
}

pub(crate) fn spawn(
    conn: Connection,
    checkpoint_conn: Connection,
    wal_path: std::path::PathBuf,
    chain: ChainFn,
    cache: Arc<crate::cache::CurrentCache>,
) -> Result<WriterHandle, StoreError> {
    let head = conn
        .query_row(
            "SELECT seq, link FROM audit_log ORDER BY seq DESC LIMIT 1",
            [],
            |row| Ok((row.get::<_, i64>(0)? as u64, row.get::<_, Vec<u8>>(1)?)),
        )
        .optional()
        .map_err(backend)?;
    let head = match head {
        None => (0, [0u8; 32]),
        Some((seq, link)) => {
            let link: [u8; 32] = link
                .try_into()
                .map_err(|_| StoreError::Corrupt("the audit chain head is malformed".into()))?;
            (seq, link)
        }
    };
    let (sender, receiver) = std::sync::mpsc::channel();
    let thread = std::thread::Builder::new()
        .name("fhirwall-writer".into())
        .spawn(move || run(conn, receiver, chain, head, &cache))
        .map_err(|e| StoreError::Backend(e.to_string()))?;
    let stop_checkpoints = Arc::new(AtomicBool::new(false));
    let stop = stop_checkpoints.clone();
    let checkpointer = std::thread::Builder::new()
        .name("fhirwall-checkpoint".into())
        .spawn(move || checkpointer(checkpoint_conn, wal_path, stop))
        .map_err(|e| StoreError::Backend(e.to_string()))?;
    Ok(WriterHandle {
        sender,
        thread,
        checkpointer,
        stop_checkpoints,
    })
}

enum Pending {
    Write(
        Reply<Result<u64, WriteConflict>>,
        Result<Result<u64, WriteConflict>, StoreError>,
        Option<fhirwall_store::StoredVersion>,
    ),
    Audit(Reply<u64>, Result<u64, StoreError>),
    Jti(Reply<bool>, Result<bool, StoreError>),
    SaveKey(Reply<()>, Result<(), StoreError>),
}

fn run(
    mut conn: Connection,
    receiver: Receiver<Command>,
    chain: ChainFn,
    mut head: (u64, [u8; 32]),
    cache: &crate::cache::CurrentCache,
) {
    let mut commits: u64 = 0;
    while let Ok(first) = receiver.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match receiver.try_recv() {
                Ok(command) => batch.push(command),
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
            }
        }
        let head_before = head;
        let outcome = commit_batch(&mut conn, batch, &chain, &mut head);
        match outcome {
            Ok(pending) => {
                for item in pending {
                    match item {
                        Pending::Write(reply, result, committed) => {
                            // Published before the answer, so whoever hears of the write reads it.
                            if let Some(version) = &committed {
                                cache.publish(version);
                            }
                            drop(reply.send(result));
                        }
                        Pending::Audit(reply, result) => drop(reply.send(result)),
                        Pending::Jti(reply, result) => drop(reply.send(result)),
                        Pending::SaveKey(reply, result) => drop(reply.send(result)),
                    }
                }
            }
            Err((pending, error)) => {
                head = head_before;
                tracing::error!(error = %error, "group commit failed; every request in it fails");
                for item in pending {
                    let err = || StoreError::Backend("the commit failed".into());
                    match item {
                        Pending::Write(reply, _, _) => drop(reply.send(Err(err()))),
                        Pending::Audit(reply, _) => drop(reply.send(Err(err()))),
                        Pending::Jti(reply, _) => drop(reply.send(Err(err()))),
                        Pending::SaveKey(reply, _) => drop(reply.send(Err(err()))),
                    }
                }
            }
        }
        commits += 1;
        if commits.is_multiple_of(4096) {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or(0);
            if let Err(e) = conn.execute("DELETE FROM used_jti WHERE expires < ?1", params![now]) {
                tracing::warn!(error = %e, "could not prune used client-assertion ids");
            }
        }
    }
}

type BatchResult = Result<Vec<Pending>, (Vec<Pending>, StoreError)>;

/// Applies a batch in one transaction. Checks (versions, guards, jti reuse) run before any
/// insert, so an insert that fails is a real storage failure (disk full, corruption, a refused
/// audit insert): then the whole transaction rolls back and every request in it fails, which
/// keeps each write and its audit record together without a savepoint per request.
fn commit_batch(
    conn: &mut Connection,
    batch: Vec<Command>,
    chain: &ChainFn,
    head: &mut (u64, [u8; 32]),
) -> BatchResult {
    let mut pending = Vec::with_capacity(batch.len());
    let tx = match conn.transaction_with_behavior(TransactionBehavior::Immediate) {
        Ok(tx) => tx,
        Err(e) => {
            for command in batch {
                pending.push(failed(command));
            }
            return Err((pending, backend(e)));
        }
    };
    let mut failure: Option<StoreError> = None;
    for command in batch {
        if failure.is_some() {
            pending.push(failed(command));
            continue;
        }
        match command {
            Command::Write(request, reply) => {
                let result = apply_write(&tx, &request, chain, head);
                if let Err(e) = &result {
                    failure = Some(StoreError::Backend(e.to_string()));
                }
                let committed = match &result {
                    Ok(Ok(seq)) => Some(fhirwall_store::StoredVersion {
                        seq: *seq,
                        ..request.version
                    }),
                    _ => None,
                };
                pending.push(Pending::Write(reply, result, committed));
            }
            Command::Audit(record, reply) => {
                let result = append_audit(&tx, &record, chain, head);
                if let Err(e) = &result {
                    failure = Some(StoreError::Backend(e.to_string()));
                }
                pending.push(Pending::Audit(reply, result));
            }
            Command::Jti {
                client_id,
                jti,
                expires_unix,
                reply,
            } => {
                let result = tx
                    .prepare_cached(
                        "INSERT OR IGNORE INTO used_jti (client_id, jti, expires) VALUES (?1, ?2, ?3)",
                    )
                    .and_then(|mut s| s.execute(params![client_id, jti, expires_unix]))
                    .map(|n| n == 1)
                    .map_err(backend);
                if let Err(e) = &result {
                    failure = Some(StoreError::Backend(e.to_string()));
                }
                pending.push(Pending::Jti(reply, result));
            }
            Command::SaveKey(key, reply) => {
                let result = crate::insert_key(&tx, &key).map_err(backend);
                if let Err(e) = &result {
                    failure = Some(StoreError::Backend(e.to_string()));
                }
                pending.push(Pending::SaveKey(reply, result));
            }
        }
    }
    if let Some(error) = failure {
        drop(tx);
        return Err((pending, error));
    }
    match tx.commit() {
        Ok(()) => Ok(pending),
        Err(e) => Err((pending, backend(e))),
    }
}

fn failed(command: Command) -> Pending {
    let err = || StoreError::Backend("the transaction did not start".into());
    match command {
        Command::Write(_, reply) => Pending::Write(reply, Err(err()), None),
        Command::Audit(_, reply) => Pending::Audit(reply, Err(err())),
        Command::Jti { reply, .. } => Pending::Jti(reply, Err(err())),
        Command::SaveKey(_, reply) => Pending::SaveKey(reply, Err(err())),
    }
}

fn append_audit(
    tx: &Transaction<'_>,
    record: &SealedAudit,
    chain: &ChainFn,
    head: &mut (u64, [u8; 32]),
) -> Result<u64, StoreError> {
    let seq = head.0 + 1;
    let link = chain(&head.1, seq, &record.record_id, &record.sealed);
    tx.prepare_cached(
        "INSERT INTO audit_log (seq, tenant, record_id, recorded, sealed, link) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )
    .and_then(|mut s| {
        s.execute(params![
            seq as i64,
            record.tenant,
            record.record_id,
            record.recorded_micros,
            record.sealed,
            link.as_slice()
        ])
    })
    .map_err(backend)?;
    *head = (seq, link);
    Ok(seq)
}

/// Checks the expectation and guard, then stores the version, its index terms and its audit
/// record. An error here fails the whole batch (see `commit_batch`).
fn apply_write(
    tx: &Transaction<'_>,
    request: &WriteRequest,
    chain: &ChainFn,
    head: &mut (u64, [u8; 32]),
) -> Result<Result<u64, WriteConflict>, StoreError> {
    let v = &request.version;
    let current: Option<u64> = tx
        .prepare_cached(
            "SELECT version FROM resource_current WHERE tenant = ?1 AND rtype = ?2 AND id = ?3",
        )
        .and_then(|mut s| {
            s.query_row(params![v.tenant, v.resource_type, v.id], |row| {
                row.get::<_, i64>(0)
            })
            .optional()
        })
        .map_err(backend)?
        .map(|n| n as u64);
    let matches = match request.expect {
        Expect::Absent => current.is_none(),
        Expect::Current(n) => current == Some(n),
    };
    if !matches {
        return Ok(Err(WriteConflict::VersionMismatch { current }));
    }
    if let Some(guard) = &request.guard {
        let (sql, args) = crate::current_query_sql(&CurrentQuery {
            tenant: v.tenant.clone(),
            resource_type: v.resource_type.clone(),
            id: None,
            terms: guard.terms.clone(),
            after_seq: None,
            limit: 2,
        });
        let ids: Vec<String> = tx
            .prepare_cached(&sql)
            .and_then(|mut s| {
                let rows = s.query_map(rusqlite::params_from_iter(args), |row| {
                    row.get::<_, String>(2)
                })?;
                rows.collect()
            })
            .map_err(backend)?;
        if !ids.is_empty() {
            return Ok(Err(WriteConflict::GuardMatched { ids }));
        }
    }

    tx.prepare_cached(
        "INSERT INTO resource_versions (tenant, rtype, id, version, last_updated, method, body) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )
    .and_then(|mut s| {
        s.execute(params![
            v.tenant,
            v.resource_type,
            v.id,
            v.version as i64,
            v.last_updated_micros,
            v.method.as_str(),
            v.sealed_body
        ])
    })
    .map_err(backend)?;
    let seq = tx.last_insert_rowid();
    tx.prepare_cached(
        "INSERT INTO resource_current (tenant, rtype, id, version, deleted, seq) VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
         ON CONFLICT (tenant, rtype, id) DO UPDATE SET version = excluded.version, \
         deleted = excluded.deleted, seq = excluded.seq",
    )
    .and_then(|mut s| {
        s.execute(params![
            v.tenant,
            v.resource_type,
            v.id,
            v.version as i64,
            i64::from(v.is_deleted()),
            seq
        ])
    })
    .map_err(backend)?;
    if current.is_some() {
        tx.prepare_cached("DELETE FROM search_terms WHERE tenant = ?1 AND rtype = ?2 AND id = ?3")
            .and_then(|mut s| s.execute(params![v.tenant, v.resource_type, v.id]))
            .map_err(backend)?;
    }
    {
        let mut insert = tx
            .prepare_cached(
                "INSERT OR IGNORE INTO search_terms (tenant, rtype, id, term) VALUES (?1, ?2, ?3, ?4)",
            )
            .map_err(backend)?;
        for term in &request.index_terms {
            insert
                .execute(params![v.tenant, v.resource_type, v.id, term.0.as_slice()])
                .map_err(backend)?;
        }
    }
    append_audit(tx, &request.audit, chain, head)?;
    Ok(Ok(seq as u64))
}
