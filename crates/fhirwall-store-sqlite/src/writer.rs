//! The single writer: it owns the write connection and commits every queued request in one
//! transaction with one disk sync (group commit). It links audit records with the store's
//! `AuditChain` in commit order, so the chain needs no lock. A FHIR transaction is one request
//! of the batch, with a savepoint of its own, so its conflict undoes only it. It never reads
//! the clock: the only time it needs (to forget expired jtis) comes with the requests.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender, TryRecvError};
use std::thread::JoinHandle;

use fhirwall_store::{
    AuditChain, CurrentVersion, Expect, SealedAudit, StoreError, StoredVersion,
    TransactionConflict, TransactionRequest, WriteConflict, WriteRequest,
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
    Transaction(
        Box<TransactionRequest>,
        Reply<Result<Vec<u64>, TransactionConflict>>,
    ),
    Audit(SealedAudit, Reply<u64>),
    Jti {
        client_id: String,
        jti: String,
        expires_unix: i64,
        now_unix: i64,
        reply: Reply<bool>,
    },
    SaveKey(fhirwall_store::StoredKey, Reply<()>),
    /// Work of the store's own (index maintenance, settings) that commits with the batch.
    Run(StoreWork, Reply<u64>),
}

/// A piece of the store's own work, run inside the writer's transaction.
pub(crate) type StoreWork = Box<dyn FnOnce(&Transaction<'_>) -> Result<u64, StoreError> + Send>;

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
    /// The versions to publish are empty unless the transaction was applied.
    Transaction(
        Reply<Result<Vec<u64>, TransactionConflict>>,
        Result<Result<Vec<u64>, TransactionConflict>, StoreError>,
        Vec<CurrentVersion>,
    ),
    Audit(Reply<u64>, Result<u64, StoreError>),
    Jti(Reply<bool>, Result<bool, StoreError>),
    SaveKey(Reply<()>, Result<(), StoreError>),
    Run(Reply<u64>, Result<u64, StoreError>),
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
                        Pending::Transaction(reply, result, committed) => {
                            for current in &committed {
                                cache.publish(current);
                            }
                            drop(reply.send(result));
                        }
                        Pending::Audit(reply, result) => drop(reply.send(result)),
                        Pending::Jti(reply, result) => drop(reply.send(result)),
                        Pending::SaveKey(reply, result) => drop(reply.send(result)),
                        Pending::Run(reply, result) => drop(reply.send(result)),
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
                        Pending::Transaction(reply, _, _) => drop(reply.send(Err(err()))),
                        Pending::Audit(reply, _) => drop(reply.send(Err(err()))),
                        Pending::Jti(reply, _) => drop(reply.send(Err(err()))),
                        Pending::SaveKey(reply, _) => drop(reply.send(Err(err()))),
                        Pending::Run(reply, _) => drop(reply.send(Err(err()))),
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
/// keeps each write and its audit record together without a savepoint per request. Only a
/// FHIR transaction of several writes takes a savepoint (see `apply_transaction`): a later
/// write's check can fail after an earlier write's inserts.
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
            Command::Transaction(request, reply) => {
                let result = apply_transaction(&tx, &request, chain, head);
                if let Err(e) = &result {
                    failure = Some(StoreError::Backend(e.to_string()));
                }
                let committed = match &result {
                    Ok(Ok(seqs)) => committed_versions(*request, seqs),
                    _ => Vec::new(),
                };
                pending.push(Pending::Transaction(reply, result, committed));
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
            Command::Run(work, reply) => {
                let result = work(&tx);
                if let Err(e) = &result {
                    failure = Some(StoreError::Backend(e.to_string()));
                }
                pending.push(Pending::Run(reply, result));
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
        Command::Transaction(_, reply) => Pending::Transaction(reply, Err(err()), Vec::new()),
        Command::Audit(_, reply) => Pending::Audit(reply, Err(err())),
        Command::Jti { reply, .. } => Pending::Jti(reply, Err(err())),
        Command::SaveKey(_, reply) => Pending::SaveKey(reply, Err(err())),
        Command::Run(_, reply) => Pending::Run(reply, Err(err())),
    }
}

/// Applies a FHIR transaction's writes in order, each checked against the state the earlier
/// ones leave (they are in the database already, uncommitted), then appends the transaction's
/// own record. The chain therefore holds, contiguously, each write's record in the order of
/// `writes` and the transaction's record last. A conflict rolls back to the savepoint taken
/// before the first write and restores the chain head, so only this transaction is undone and
/// the rest of the batch commits. A storage failure leaves the savepoint to the batch's
/// rollback, as for any request.
fn apply_transaction(
    tx: &Transaction<'_>,
    request: &TransactionRequest,
    chain: &dyn AuditChain,
    head: &mut Head,
) -> Result<Result<Vec<u64>, TransactionConflict>, StoreError> {
    // With one write (or none) a conflict is found before anything is inserted, exactly as
    // for a single write, so there is nothing to roll back.
    let savepoint = request.writes.len() > 1;
    if savepoint {
        execute_cached(tx, "SAVEPOINT write_all")?;
    }
    let head_before = head.clone();
    let mut seqs = Vec::with_capacity(request.writes.len());
    for (index, write) in request.writes.iter().enumerate() {
        match apply_write(tx, write, chain, head)? {
            Ok(seq) => seqs.push(seq),
            Err(conflict) => {
                if savepoint {
                    // ROLLBACK TO keeps the savepoint open; RELEASE then closes it, empty.
                    execute_cached(tx, "ROLLBACK TO write_all")?;
                    execute_cached(tx, "RELEASE write_all")?;
                }
                *head = head_before;
                return Ok(Err(TransactionConflict { index, conflict }));
            }
        }
    }
    append_audit(tx, &request.audit, chain, head)?;
    if savepoint {
        execute_cached(tx, "RELEASE write_all")?;
    }
    Ok(Ok(seqs))
}

/// Savepoint statements come from the statement cache like every other statement of the
/// writer, rather than being parsed again for each transaction.
fn execute_cached(tx: &Transaction<'_>, sql: &str) -> Result<(), StoreError> {
    tx.prepare_cached(sql)
        .and_then(|mut s| s.execute([]))
        .map(|_| ())
        .map_err(store_error)
}

/// What an applied transaction makes current, for the cache: the last write of each resource
/// only, so no reader is handed a version the transaction made current and replaced before
/// its commit.
fn committed_versions(request: TransactionRequest, seqs: &[u64]) -> Vec<CurrentVersion> {
    let mut seen = HashSet::new();
    let mut committed: Vec<CurrentVersion> = request
        .writes
        .into_iter()
        .zip(seqs)
        .rev()
        .filter(|(write, _)| seen.insert(write.version.key.clone()))
        .map(|(write, seq)| CurrentVersion {
            version: StoredVersion {
                seq: *seq,
                ..write.version
            },
            pointer_tag: Some(write.pointer_tag),
        })
        .collect();
    committed.reverse();
    committed
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
    let existing: Option<(u64, Option<i64>, Option<Vec<u8>>)> = tx
        .prepare_cached(
            "SELECT version, rid, terms FROM resource_current \
             WHERE tenant = ?1 AND rtype = ?2 AND id = ?3",
        )
        .and_then(|mut s| {
            s.query_row(params![tenant, rtype, id], |row| {
                Ok((rows::unsigned(row, 0, "version")?, row.get(1)?, row.get(2)?))
            })
            .optional()
        })
        .map_err(store_error)?;
    let current = existing.as_ref().map(|(version, _, _)| *version);
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
    // A resource's number is the sequence number of its first version: unique and stable.
    let (rid, old_postings) = match &existing {
        Some((_, Some(rid), terms)) => (*rid, postings(terms.as_deref())),
        _ => (seq, Vec::new()),
    };
    let mut new_postings: Vec<[u8; POSTING]> = request.index_terms.iter().map(posting).collect();
    new_postings.sort_unstable();
    new_postings.dedup();
    tx.prepare_cached(
        "INSERT INTO resource_current (tenant, rtype, id, version, deleted, seq, pointer_tag, rid, terms) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) \
         ON CONFLICT (tenant, rtype, id) DO UPDATE SET version = excluded.version, \
         deleted = excluded.deleted, seq = excluded.seq, pointer_tag = excluded.pointer_tag, \
         rid = excluded.rid, terms = excluded.terms",
    )
    .and_then(|mut s| {
        s.execute(params![
            tenant,
            rtype,
            id,
            rows::bound(v.version),
            i64::from(v.is_deleted()),
            seq,
            request.pointer_tag.0.as_slice(),
            rid,
            new_postings.concat()
        ])
    })
    .map_err(store_error)?;
    replace_postings(tx, rid, &old_postings, &new_postings)?;
    append_audit(tx, &request.audit, chain, head)?;
    let seq = u64::try_from(seq)
        .map_err(|_| StoreError::Corrupt("a version's sequence number is negative".into()))?;
    Ok(Ok(seq))
}

/// Writes only the postings that change: an update that keeps most values touches few
/// index pages. Both lists are sorted.
fn replace_postings(
    tx: &Transaction<'_>,
    rid: i64,
    old_postings: &[[u8; POSTING]],
    new_postings: &[[u8; POSTING]],
) -> Result<(), StoreError> {
    let mut delete = tx
        .prepare_cached("DELETE FROM search_index WHERE term = ?1 AND rid = ?2")
        .map_err(store_error)?;
    for old in old_postings
        .iter()
        .filter(|p| new_postings.binary_search(p).is_err())
    {
        delete
            .execute(params![old.as_slice(), rid])
            .map_err(store_error)?;
    }
    let added: Vec<&[u8; POSTING]> = new_postings
        .iter()
        .filter(|p| old_postings.binary_search(p).is_err())
        .collect();
    // Sixteen rows per statement: a resource carries about a hundred postings, and each
    // statement's bind, step and reset cost more than its row's B-tree insert.
    let mut chunks = added.chunks_exact(POSTINGS_PER_INSERT);
    if chunks.len() > 0 {
        let mut insert = tx
            .prepare_cached(&multi_insert_sql())
            .map_err(store_error)?;
        for chunk in chunks.by_ref() {
            let mut args: Vec<rusqlite::types::Value> = Vec::with_capacity(chunk.len() * 2);
            for posting in chunk {
                args.push(rusqlite::types::Value::Blob(posting.to_vec()));
                args.push(rusqlite::types::Value::Integer(rid));
            }
            insert
                .execute(rusqlite::params_from_iter(args))
                .map_err(store_error)?;
        }
    }
    let mut insert = tx
        .prepare_cached("INSERT OR IGNORE INTO search_index (term, rid) VALUES (?1, ?2)")
        .map_err(store_error)?;
    for posting in chunks.remainder() {
        insert
            .execute(params![posting.as_slice(), rid])
            .map_err(store_error)?;
    }
    Ok(())
}

/// Postings one multi-row insert writes.
const POSTINGS_PER_INSERT: usize = 16;

fn multi_insert_sql() -> String {
    let rows: Vec<String> = (0..POSTINGS_PER_INSERT)
        .map(|n| format!("(?{}, ?{})", 2 * n + 1, 2 * n + 2))
        .collect();
    format!(
        "INSERT OR IGNORE INTO search_index (term, rid) VALUES {}",
        rows.join(", ")
    )
}

/// Replaces the postings of current versions that are still current (a newer version has
/// its own). Returns how many were replaced.
pub(crate) fn reindex(
    tx: &Transaction<'_>,
    items: &[fhirwall_store::Reindexed],
) -> Result<u64, StoreError> {
    let mut done = 0;
    for item in items {
        let key = &item.key;
        let row: Option<(u64, Option<i64>, Option<Vec<u8>>)> = tx
            .prepare_cached(
                "SELECT version, rid, terms FROM resource_current \
                 WHERE tenant = ?1 AND rtype = ?2 AND id = ?3 AND deleted = 0",
            )
            .and_then(|mut s| {
                s.query_row(
                    params![
                        key.tenant.as_str(),
                        key.resource_type.as_str(),
                        key.id.as_str()
                    ],
                    |row| Ok((rows::unsigned(row, 0, "version")?, row.get(1)?, row.get(2)?)),
                )
                .optional()
            })
            .map_err(store_error)?;
        let Some((version, Some(rid), terms)) = row else {
            continue;
        };
        if version != item.version {
            continue;
        }
        let old_postings = postings(terms.as_deref());
        let mut new_postings: Vec<[u8; POSTING]> = item.terms.iter().map(posting).collect();
        new_postings.sort_unstable();
        new_postings.dedup();
        replace_postings(tx, rid, &old_postings, &new_postings)?;
        tx.prepare_cached(
            "UPDATE resource_current SET terms = ?4 WHERE tenant = ?1 AND rtype = ?2 AND id = ?3",
        )
        .and_then(|mut s| {
            s.execute(params![
                key.tenant.as_str(),
                key.resource_type.as_str(),
                key.id.as_str(),
                new_postings.concat()
            ])
        })
        .map_err(store_error)?;
        done += 1;
    }
    Ok(done)
}

/// Bytes of a term the index keeps (see `IndexTerm`).
pub(crate) const POSTING: usize = 8;

pub(crate) fn posting(term: &fhirwall_store::IndexTerm) -> [u8; POSTING] {
    let mut out = [0u8; POSTING];
    for (o, b) in out.iter_mut().zip(term.0.iter()) {
        *o = *b;
    }
    out
}

/// The postings a current row lists, sorted.
fn postings(terms: Option<&[u8]>) -> Vec<[u8; POSTING]> {
    let mut out: Vec<[u8; POSTING]> = terms
        .unwrap_or_default()
        .chunks_exact(POSTING)
        .map(|chunk| {
            let mut p = [0u8; POSTING];
            p.copy_from_slice(chunk);
            p
        })
        .collect();
    out.sort_unstable();
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

    use fhirwall_store::{IntegrityTag, Method, ResourceId, ResourceKey, ResourceType, TenantId};
    use fhirwall_store_conformance::TestChain;

    use super::*;

    fn key(id: &str) -> ResourceKey {
        ResourceKey {
            tenant: TenantId::default_tenant(),
            resource_type: ResourceType::parse("Patient").unwrap(),
            id: ResourceId::parse(id).unwrap(),
        }
    }

    fn record(id: &str) -> SealedAudit {
        SealedAudit {
            tenant: TenantId::default_tenant(),
            record_id: id.to_string(),
            recorded_micros: 1,
            sealed: id.as_bytes().to_vec(),
        }
    }

    fn write(id: &str, version: u64, expect: Expect, record_id: &str) -> WriteRequest {
        WriteRequest {
            version: StoredVersion {
                key: key(id),
                version,
                last_updated_micros: 1,
                method: if version == 1 {
                    Method::Create
                } else {
                    Method::Update
                },
                sealed_body: Some(vec![1]),
                seq: 0,
                tag: Some(IntegrityTag([1; 32])),
            },
            pointer_tag: IntegrityTag([version as u8; 32]),
            expect,
            guard: None,
            index_terms: vec![],
            audit: record(record_id),
        }
    }

    fn single(request: WriteRequest) -> Command {
        Command::Write(Box::new(request), oneshot::channel().0)
    }

    fn transaction(writes: Vec<WriteRequest>, record_id: &str) -> Command {
        let request = TransactionRequest {
            writes,
            audit: record(record_id),
        };
        Command::Transaction(Box::new(request), oneshot::channel().0)
    }

    /// The batch case the conformance suite cannot force: a transaction that conflicts after
    /// its first write's inserts, between requests of the same batch, undoes only itself and
    /// leaves the chain head where it was, so the records after it still link.
    #[test]
    fn a_conflicting_transaction_undoes_only_itself_within_a_batch() {
        let mut conn = Connection::open_in_memory().unwrap();
        for migration in crate::schema::MIGRATIONS {
            conn.execute_batch(migration).unwrap();
        }
        let batch = vec![
            single(write("x", 1, Expect::Absent, "x")),
            transaction(
                vec![
                    write("t", 1, Expect::Absent, "refused-t"),
                    write("x", 1, Expect::Absent, "refused-x"),
                ],
                "refused",
            ),
            single(write("y", 1, Expect::Absent, "y")),
            transaction(
                vec![
                    write("t", 1, Expect::Absent, "t1"),
                    write("t", 2, Expect::Current(1), "t2"),
                ],
                "applied",
            ),
        ];
        let mut head = Head::default();
        let Ok(pending) = commit_batch(&mut conn, batch, &TestChain, &mut head) else {
            panic!("the batch commits");
        };
        let [
            Pending::Write(_, Ok(Ok(x_seq)), Some(_)),
            Pending::Transaction(_, Ok(Err(refused)), refused_versions),
            Pending::Write(_, Ok(Ok(y_seq)), Some(_)),
            Pending::Transaction(_, Ok(Ok(applied)), applied_versions),
        ] = pending.as_slice()
        else {
            panic!("every request of the batch is answered in order");
        };
        assert_eq!(
            refused,
            &TransactionConflict {
                index: 1,
                conflict: WriteConflict::VersionMismatch { current: Some(1) }
            }
        );
        assert!(refused_versions.is_empty(), "nothing refused is published");
        assert!(x_seq < y_seq && applied.len() == 2 && y_seq < &applied[0]);
        assert!(applied[0] < applied[1]);
        let published: Vec<(u64, u64)> = applied_versions
            .iter()
            .map(|c| (c.version.version, c.version.seq))
            .collect();
        assert_eq!(
            published,
            [(2, applied[1])],
            "only the version the transaction leaves current is published"
        );

        let records: Vec<(i64, String, Vec<u8>)> = conn
            .prepare("SELECT seq, record_id, link FROM audit_log ORDER BY seq")
            .unwrap()
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let ids: Vec<&str> = records.iter().map(|(_, id, _)| id.as_str()).collect();
        assert_eq!(ids, ["x", "y", "t1", "t2", "applied"]);
        let mut previous = Vec::new();
        for (n, (seq, id, link)) in records.iter().enumerate() {
            assert_eq!(*seq, n as i64 + 1);
            assert_eq!(
                link,
                &TestChain.link(&previous, *seq as u64, id, id.as_bytes())
            );
            previous = link.clone();
        }
        assert_eq!(head, (5, previous), "the head is the last stored record");
        let versions: i64 = conn
            .query_row("SELECT count(*) FROM resource_versions", [], |row| {
                row.get(0)
            })
            .unwrap();
        assert_eq!(versions, 4, "x, y, t@1, t@2: nothing of the refused one");
    }
}
