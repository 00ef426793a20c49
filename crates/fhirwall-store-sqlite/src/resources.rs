//! Resources and their history (`ResourceStore`): writes and transactions go to the writer
//! thread; reads run on pooled read-only connections, current versions through the cache.
//! Lookups are sub-selects, never joins (see `plan`).

use fhirwall_store::{
    CurrentQuery, CurrentVersion, HistoryQuery, ResourceKey, ResourceStore, StoreError,
    StoreFuture, StoredVersion, TransactionConflict, TransactionRequest, WriteConflict,
    WriteRequest,
};
use rusqlite::types::Value;
use rusqlite::{OptionalExtension, params};

use crate::plan::{Select, render};
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
        let Some((sql, args)) = render(&query, Select::Versions) else {
            return ready(Ok(Vec::new()));
        };
        let result = self.with_reader(|conn| {
            let mut stmt = conn.prepare_cached(&sql)?;
            let rows = stmt.query_map(rusqlite::params_from_iter(args), rows::version)?;
            rows.collect()
        });
        ready(result)
    }
}
