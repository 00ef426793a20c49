//! The single writer: it owns the write connection and commits every queued request in one
//! transaction with one disk sync (group commit). It links audit records with the store's
//! `AuditChain` in commit order, so the chain needs no lock. It never reads the clock: the
//! only time it needs (to forget expired jtis) comes with the requests.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender, TryRecvError};
use std::thread::JoinHandle;

use fhirwall_store::{
    AuditChain, CurrentVersion, Expect, SealedAudit, StoreError, StoredVersion, WriteConflict,
    WriteRequest,
};
use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};
use tokio::sync::oneshot;

use crate::plan::{Select, guard_plan, render};
use crate::rows::{self, store_error};

type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

/// The chain head: the last record's sequence number and link (0 and empty before the first).
type Head = (u64, Vec<u8>);

pub(crate) enum Command {
    Write(Box<WriteRequest>, Reply<Result<u64, WriteConflict>>),
    Audit(SealedAudit, Reply<u64>),
    Jti {
        client_id: String,
        jti: String,
        expires_unix: i64,
        now_unix: i64,
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
    chain: Arc<dyn AuditChain>,
    cache: Arc<crate::cache::CurrentCache>,
) -> Result<WriterHandle, StoreError> {
    let head: Head = conn
        .query_row(
            "SELECT seq, link FROM audit_log ORDER BY seq DESC LIMIT 1",
            [],
            |row| Ok((rows::unsigned(row, 0, "audit seq")?, row.get(1)?)),
        )
        .optional()
        .map_err(store_error)?
        .unwrap_or_default();
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
        Option<CurrentVersion>,
    ),
    Audit(Reply<u64>, Result<u64, StoreError>),
    Jti(Reply<bool>, Result<bool, StoreError>),
    SaveKey(Reply<()>, Result<(), StoreError>),
}

fn run(
    mut conn: Connection,
    receiver: Receiver<Command>,
    chain: Arc<dyn AuditChain>,
    mut head: Head,
    cache: &crate::cache::CurrentCache,
) {
    let mut commits: u64 = 0;
    // The clock of the latest client-assertion check: entries that expired before it can go.
    let mut latest_now: Option<i64> = None;
    while let Ok(first) = receiver.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match receiver.try_recv() {
                Ok(command) => batch.push(command),
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
            }
        }
        for command in &batch {
            if let Command::Jti { now_unix, .. } = command {
                latest_now = Some(*now_unix);
            }
        }
        let head_before = head.clone();
        let outcome = commit_batch(&mut conn, batch, chain.as_ref(), &mut head);
        match outcome {
            Ok(pending) => {
                for item in pending {
                    match item {
                        Pending::Write(reply, result, committed) => {
                            // Published before the answer, so whoever hears of the write reads it.
                            if let Some(current) = &committed {
                                cache.publish(current);
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
        if commits.is_multiple_of(4096)
            && let Some(now) = latest_now
            && let Err(e) = conn.execute("DELETE FROM used_jti WHERE expires < ?1", params![now])
        {
            tracing::warn!(error = %e, "could not prune used client-assertion ids");
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
    chain: &dyn AuditChain,
    head: &mut Head,
) -> BatchResult {
    let mut pending = Vec::with_capacity(batch.len());
    let tx = match conn.transaction_with_behavior(TransactionBehavior::Immediate) {
        Ok(tx) => tx,
        Err(e) => {
            for command in batch {
                pending.push(failed(command));
            }
            return Err((pending, store_error(e)));
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
                    Ok(Ok(seq)) => Some(CurrentVersion {
                        version: StoredVersion {
                            seq: *seq,
                            ..request.version
                        },
                        pointer_tag: Some(request.pointer_tag),
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
                now_unix: _,
                reply,
            } => {
                let result = tx
                    .prepare_cached(
                        "INSERT OR IGNORE INTO used_jti (client_id, jti, expires) VALUES (?1, ?2, ?3)",
                    )
                    .and_then(|mut s| s.execute(params![client_id, jti, expires_unix]))
                    .map(|n| n == 1)
                    .map_err(store_error);
                if let Err(e) = &result {
                    failure = Some(StoreError::Backend(e.to_string()));
                }
                pending.push(Pending::Jti(reply, result));
            }
            Command::SaveKey(key, reply) => {
                let result = crate::keys::insert_key(&tx, &key).map_err(store_error);
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
        Err(e) => Err((pending, store_error(e))),
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
    chain: &dyn AuditChain,
    head: &mut Head,
) -> Result<u64, StoreError> {
    let seq = head.0 + 1;
    let link = chain.link(&head.1, seq, &record.record_id, &record.sealed);
    tx.prepare_cached(
        "INSERT INTO audit_log (seq, tenant, record_id, recorded, sealed, link) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )
    .and_then(|mut s| {
        s.execute(params![
            rows::bound(seq),
            record.tenant.as_str(),
            record.record_id,
            record.recorded_micros,
            record.sealed,
            link
        ])
    })
    .map_err(store_error)?;
    *head = (seq, link);
    Ok(seq)
}

/// Checks the expectation and guard, then stores the version, its current pointer, its index
/// terms and its audit record. An error here fails the whole batch (see `commit_batch`).
fn apply_write(
    tx: &Transaction<'_>,
    request: &WriteRequest,
    chain: &dyn AuditChain,
    head: &mut Head,
) -> Result<Result<u64, WriteConflict>, StoreError> {
    let v = &request.version;
    let key = &v.key;
    let (tenant, rtype, id) = (
        key.tenant.as_str(),
        key.resource_type.as_str(),
        key.id.as_str(),
    );
    let current: Option<u64> = tx
        .prepare_cached(
            "SELECT version FROM resource_current WHERE tenant = ?1 AND rtype = ?2 AND id = ?3",
        )
        .and_then(|mut s| {
            s.query_row(params![tenant, rtype, id], |row| {
                rows::unsigned(row, 0, "version")
            })
            .optional()
        })
        .map_err(store_error)?;
    let matches = match request.expect {
        Expect::Absent => current.is_none(),
        Expect::Current(n) => current == Some(n),
    };
    if !matches {
        return Ok(Err(WriteConflict::VersionMismatch { current }));
    }
    if let Some(guard) = &request.guard
        && let Some((sql, args)) = render(&guard_plan(key, guard), Select::Ids)
    {
        let ids = tx
            .prepare_cached(&sql)
            .and_then(|mut s| {
                let rows = s.query_map(rusqlite::params_from_iter(args), |row| {
                    rows::resource_id(row, 0)
                })?;
                rows.collect::<Result<Vec<_>, _>>()
            })
            .map_err(store_error)?;
        if !ids.is_empty() {
            return Ok(Err(WriteConflict::GuardMatched { ids }));
        }
    }

    tx.prepare_cached(
        "INSERT INTO resource_versions (tenant, rtype, id, version, last_updated, method, body, tag) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )
    .and_then(|mut s| {
        s.execute(params![
            tenant,
            rtype,
            id,
            rows::bound(v.version),
            v.last_updated_micros,
            v.method.as_str(),
            v.sealed_body,
            v.tag.as_ref().map(|t| t.0.as_slice())
        ])
    })
    .map_err(store_error)?;
    let seq = tx.last_insert_rowid();
    tx.prepare_cached(
        "INSERT INTO resource_current (tenant, rtype, id, version, deleted, seq, pointer_tag) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) \
         ON CONFLICT (tenant, rtype, id) DO UPDATE SET version = excluded.version, \
         deleted = excluded.deleted, seq = excluded.seq, pointer_tag = excluded.pointer_tag",
    )
    .and_then(|mut s| {
        s.execute(params![
            tenant,
            rtype,
            id,
            rows::bound(v.version),
            i64::from(v.is_deleted()),
            seq,
            request.pointer_tag.0.as_slice()
        ])
    })
    .map_err(store_error)?;
    if current.is_some() {
        tx.prepare_cached("DELETE FROM search_terms WHERE tenant = ?1 AND rtype = ?2 AND id = ?3")
            .and_then(|mut s| s.execute(params![tenant, rtype, id]))
            .map_err(store_error)?;
    }
    {
        let mut insert = tx
            .prepare_cached(
                "INSERT OR IGNORE INTO search_terms (tenant, rtype, id, term) VALUES (?1, ?2, ?3, ?4)",
            )
            .map_err(store_error)?;
        for term in &request.index_terms {
            insert
                .execute(params![tenant, rtype, id, term.0.as_slice()])
                .map_err(store_error)?;
        }
    }
    append_audit(tx, &request.audit, chain, head)?;
    let seq = u64::try_from(seq)
        .map_err(|_| StoreError::Corrupt("a version's sequence number is negative".into()))?;
    Ok(Ok(seq))
}
