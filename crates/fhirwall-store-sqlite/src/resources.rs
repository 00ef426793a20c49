//! Resources and their history (`ResourceStore`): writes and transactions go to the writer
//! thread; reads run on pooled read-only connections, current versions through the cache.
//! Lookups are sub-selects, never joins (see `plan`).

use fhirwall_store::{
    CurrentQuery, CurrentVersion, HistoryQuery, ResourceKey, ResourceStore, ResourceType,
    StoreError, StoreFuture, StoredVersion, TenantId, TransactionConflict, TransactionRequest,
    WriteConflict, WriteRequest,
};
use rusqlite::types::Value;
use rusqlite::{OptionalExtension, params};

use crate::plan::{Drive, Select, render_driven};
use crate::rows::{self, VERSION_COLUMNS, bound, limit};
use crate::writer::Command;
use crate::{SqliteStore, ready};

/// The current version (`rows::VERSION_COLUMNS`, then the pointer tag) in one statement: both
/// sub-selects are lookups of the same primary key, and a join here would be re-prepared on
/// every use.
pub(crate) const READ_CURRENT: &str = "SELECT v.tenant, v.rtype, v.id, v.version, \
     v.last_updated, v.method, v.body, v.seq, v.tag, \
     (SELECT c.pointer_tag FROM resource_current c \
      WHERE c.tenant = ?1 AND c.rtype = ?2 AND c.id = ?3) \
     FROM resource_versions v WHERE v.seq = \
     (SELECT c.seq FROM resource_current c WHERE c.tenant = ?1 AND c.rtype = ?2 AND c.id = ?3)";

/// Refuses, here and alone, a write SQLite cannot store, rather than letting its insert fail
/// the writer's whole batch.
fn storable(request: &WriteRequest) -> Result<(), StoreError> {
    match i64::try_from(request.version.version) {
        Ok(_) => Ok(()),
        Err(_) => Err(StoreError::Backend(
            "a version number past what SQLite stores".into(),
        )),
    }
}

impl ResourceStore for SqliteStore {
    fn write(&self, request: WriteRequest) -> StoreFuture<'_, Result<u64, WriteConflict>> {
        if let Err(refused) = storable(&request) {
            return ready(Err(refused));
        }
        self.send(|reply| Command::Write(Box::new(request), reply))
    }

    fn write_all(
        &self,
        request: TransactionRequest,
    ) -> StoreFuture<'_, Result<Vec<u64>, TransactionConflict>> {
        if let Err(refused) = request.writes.iter().try_for_each(storable) {
            return ready(Err(refused));
        }
        self.send(|reply| Command::Transaction(Box::new(request), reply))
    }

    fn read_current<'a>(&'a self, key: &'a ResourceKey) -> StoreFuture<'a, Option<CurrentVersion>> {
        let generation = if self.writer_running() {
            let (hit, generation) = self.cache.get(key);
            if let Some(current) = hit {
                return ready(Ok(Some(current)));
            }
            Some(generation)
        } else {
            None
        };
        let result = self.with_reader(|conn| {
            conn.prepare_cached(READ_CURRENT)?
                .query_row(
                    params![
                        key.tenant.as_str(),
                        key.resource_type.as_str(),
                        key.id.as_str()
                    ],
                    |row| {
                        Ok(CurrentVersion {
                            version: rows::version(row)?,
                            pointer_tag: rows::tag(row, 9)?,
                        })
                    },
                )
                .optional()
        });
        if let (Some(generation), Ok(Some(current))) = (generation, &result) {
            self.cache.fill(current, generation);
        }
        ready(result)
    }

    fn read_version<'a>(
        &'a self,
        key: &'a ResourceKey,
        version: u64,
    ) -> StoreFuture<'a, Option<StoredVersion>> {
        let Ok(version) = i64::try_from(version) else {
            return ready(Ok(None));
        };
        let result = self.with_reader(|conn| {
            conn.prepare_cached(&format!(
                "SELECT {VERSION_COLUMNS} FROM resource_versions v \
                 WHERE v.tenant = ?1 AND v.rtype = ?2 AND v.id = ?3 AND v.version = ?4"
            ))?
            .query_row(
                params![
                    key.tenant.as_str(),
                    key.resource_type.as_str(),
                    key.id.as_str(),
                    version
                ],
                rows::version,
            )
            .optional()
        });
        ready(result)
    }

    fn history(&self, query: HistoryQuery) -> StoreFuture<'_, Vec<StoredVersion>> {
        let mut sql =
            format!("SELECT {VERSION_COLUMNS} FROM resource_versions v WHERE v.tenant = ?1");
        let mut args = vec![Value::Text(query.tenant.as_str().to_string())];
        if let Some(rtype) = &query.resource_type {
            args.push(Value::Text(rtype.as_str().to_string()));
            sql.push_str(&format!(" AND v.rtype = ?{}", args.len()));
        }
        if let Some(id) = &query.id {
            args.push(Value::Text(id.as_str().to_string()));
            sql.push_str(&format!(" AND v.id = ?{}", args.len()));
        }
        if let Some(since) = query.since_micros {
            args.push(Value::Integer(since));
            sql.push_str(&format!(" AND v.last_updated >= ?{}", args.len()));
        }
        if let Some(before) = query.before_seq {
            args.push(Value::Integer(bound(before)));
            sql.push_str(&format!(" AND v.seq < ?{}", args.len()));
        }
        args.push(Value::Integer(limit(query.limit)));
        // `+?n`: a bound LIMIT the planner can read re-prepares the statement per value.
        sql.push_str(&format!(" ORDER BY v.seq DESC LIMIT +?{}", args.len()));
        let result = self.with_reader(|conn| {
            let mut stmt = conn.prepare_cached(&sql)?;
            let rows = stmt.query_map(rusqlite::params_from_iter(args), rows::version)?;
            rows.collect()
        });
        ready(result)
    }

    fn find_current(&self, query: CurrentQuery) -> StoreFuture<'_, Vec<StoredVersion>> {
        let result = self.with_reader(|conn| {
            let run = |query: &CurrentQuery, drive| -> rusqlite::Result<Vec<StoredVersion>> {
                let Some((sql, args)) = render_driven(query, Select::Versions, drive) else {
                    return Ok(Vec::new());
                };
                let mut stmt = conn.prepare_cached(&sql)?;
                let rows = stmt.query_map(rusqlite::params_from_iter(args), rows::version)?;
                rows.collect()
            };
            let drive = crate::plan::choose(conn, &query, Select::Versions)?;
            if drive != Drive::Walk || query.clauses.is_empty() {
                return run(&query, drive);
            }
            // Every clause is broad: walk a window of the type in commit order (dense matches
            // fill the page there), then let the narrowest clause drive past it.
            let Some(end) = crate::plan::walk_end(conn, &query)? else {
                return run(&query, Drive::Walk);
            };
            let end = u64::try_from(end).unwrap_or(0);
            let mut window = query.clone();
            window.up_to_seq = Some(query.up_to_seq.map_or(end, |u| u.min(end)));
            let mut found = run(&window, Drive::Walk)?;
            if found.len() >= query.limit || query.up_to_seq.is_some_and(|u| u <= end) {
                return Ok(found);
            }
            let mut rest = query.clone();
            rest.after_seq = Some(end);
            rest.limit = query.limit - found.len();
            let narrowest = query
                .clauses
                .iter()
                .position(|c| matches!(c, fhirwall_store::Clause::Terms(_)))
                .map_or(Drive::Walk, Drive::Clause);
            let narrowest = match crate::plan::choose(conn, &rest, Select::Count)? {
                Drive::Clause(n) => Drive::Clause(n),
                Drive::Walk => narrowest,
            };
            found.extend(run(&rest, narrowest)?);
            Ok(found)
        });
        ready(result)
    }

    fn versions_at(
        &self,
        tenant: &TenantId,
        resource_type: &ResourceType,
        snapshot: u64,
        after_seq: Option<u64>,
        limit: usize,
    ) -> StoreFuture<'_, Vec<StoredVersion>> {
        let sql = format!(
            "SELECT {VERSION_COLUMNS} FROM resource_versions v WHERE v.seq IN ( \
               SELECT (SELECT max(o.seq) FROM resource_versions o WHERE o.tenant = c.tenant \
                       AND o.rtype = c.rtype AND o.id = c.id AND o.seq <= ?3) \
               FROM resource_current c WHERE c.tenant = ?1 AND c.rtype = ?2 AND c.seq > ?3) \
             AND v.method != 'delete' AND v.seq > ?4 ORDER BY v.seq LIMIT +?5"
        );
        let result = self.with_reader(|conn| {
            let mut stmt = conn.prepare_cached(&sql)?;
            let rows = stmt.query_map(
                rusqlite::params![
                    tenant.as_str(),
                    resource_type.as_str(),
                    rows::bound(snapshot),
                    rows::bound(after_seq.unwrap_or(0)),
                    rows::limit(limit)
                ],
                rows::version,
            )?;
            rows.collect()
        });
        ready(result)
    }

    fn reindex(&self, items: Vec<fhirwall_store::Reindexed>) -> StoreFuture<'_, u64> {
        self.send(move |reply| {
            Command::Run(
                Box::new(move |tx| crate::writer::reindex(tx, &items)),
                reply,
            )
        })
    }

    fn read_setting<'a>(&'a self, name: &'a str) -> StoreFuture<'a, Option<String>> {
        let result = self.with_reader(|conn| {
            conn.prepare_cached("SELECT value FROM settings WHERE name = ?1")?
                .query_row([name], |row| row.get(0))
                .optional()
        });
        ready(result)
    }

    fn write_setting(&self, name: String, value: String) -> StoreFuture<'_, ()> {
        // Through the writer once it runs (one writer for every runtime write); before that
        // (start-up, operator commands) on the admin connection.
        if self.writer_running() {
            let done = self.send(move |reply| {
                Command::Run(
                    Box::new(move |tx| {
                        upsert_setting(tx, &name, &value).map_err(rows::store_error)?;
                        Ok(0)
                    }),
                    reply,
                )
            });
            return Box::pin(async move { done.await.map(|_| ()) });
        }
        ready(self.with_admin(|conn| upsert_setting(conn, &name, &value)))
    }

    fn last_seq(&self) -> StoreFuture<'_, u64> {
        let result = self.with_reader(|conn| {
            conn.prepare_cached("SELECT coalesce(max(seq), 0) FROM resource_versions")?
                .query_row([], |row| rows::unsigned(row, 0, "seq"))
        });
        ready(result)
    }

    fn count_current(&self, query: CurrentQuery) -> StoreFuture<'_, u64> {
        let result = self.with_reader(|conn| {
            let drive = crate::plan::choose(conn, &query, Select::Count)?;
            let Some((sql, args)) = render_driven(&query, Select::Count, drive) else {
                return Ok(0);
            };
            let mut stmt = conn.prepare_cached(&sql)?;
            stmt.query_row(rusqlite::params_from_iter(args), |row| {
                rows::unsigned(row, 0, "count")
            })
        });
        ready(result)
    }
}

fn upsert_setting(conn: &rusqlite::Connection, name: &str, value: &str) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO settings (name, value) VALUES (?1, ?2) \
         ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        params![name, value],
    )
    .map(|_| ())
}
