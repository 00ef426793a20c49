//! The audit trail (`AuditTrail`): appends go to the writer thread, which numbers and links
//! them; pages and lookups return only the asking tenant's records, the scan every record.

use fhirwall_store::{AuditTrail, SealedAudit, StoreFuture, StoredAudit, TenantId};
use rusqlite::{OptionalExtension, params};

use crate::rows::{self, AUDIT_COLUMNS, bound, limit};
use crate::writer::Command;
use crate::{SqliteStore, ready};

impl AuditTrail for SqliteStore {
    fn append_audit(&self, record: SealedAudit) -> StoreFuture<'_, u64> {
        self.send(|reply| Command::Audit(record, reply))
    }

    fn audit_page<'a>(
        &'a self,
        tenant: &'a TenantId,
        before_seq: Option<u64>,
        limit_to: usize,
    ) -> StoreFuture<'a, Vec<StoredAudit>> {
        let before = before_seq.map_or(i64::MAX, bound);
        let result = self.with_reader(|conn| {
            // audit_log_by_tenant walks one tenant's records, newest first. `+?3`: a bound
            // LIMIT the planner can read re-prepares the statement for every new value.
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {AUDIT_COLUMNS} FROM audit_log \
                 WHERE tenant = ?1 AND seq < ?2 ORDER BY seq DESC LIMIT +?3"
            ))?;
            let rows = stmt.query_map(
                params![tenant.as_str(), before, limit(limit_to)],
                rows::audit,
            )?;
            rows.collect()
        });
        ready(result)
    }

    fn audit_scan(&self, after_seq: u64, limit_to: usize) -> StoreFuture<'_, Vec<StoredAudit>> {
        let result = self.with_reader(|conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {AUDIT_COLUMNS} FROM audit_log WHERE seq > ?1 ORDER BY seq ASC LIMIT +?2"
            ))?;
            let rows = stmt.query_map(params![bound(after_seq), limit(limit_to)], rows::audit)?;
            rows.collect()
        });
        ready(result)
    }

    fn audit_get<'a>(
        &'a self,
        tenant: &'a TenantId,
        seq: u64,
    ) -> StoreFuture<'a, Option<StoredAudit>> {
        let Ok(seq) = i64::try_from(seq) else {
            return ready(Ok(None));
        };
        let result = self.with_reader(|conn| {
            conn.prepare_cached(&format!(
                "SELECT {AUDIT_COLUMNS} FROM audit_log WHERE seq = ?1 AND tenant = ?2"
            ))?
            .query_row(params![seq, tenant.as_str()], rows::audit)
            .optional()
        });
        ready(result)
    }
}
