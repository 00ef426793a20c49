//! The database schema and its migrations. Bodies and audit records are ciphertext, tags are
//! the application's keyed MACs; ids are server-assigned or client-chosen identifiers, never
//! patient data. Migrations are only ever appended: a released one must not change.

use rusqlite::Connection;

use crate::rows::store_error;
use fhirwall_store::StoreError;

pub(crate) const MIGRATIONS: &[&str] = &[
    r"
CREATE TABLE resource_versions (
    seq INTEGER PRIMARY KEY,
    tenant TEXT NOT NULL,
    rtype TEXT NOT NULL,
    id TEXT NOT NULL,
    version INTEGER NOT NULL,
    last_updated INTEGER NOT NULL,
    method TEXT NOT NULL,
    body BLOB,
    UNIQUE (tenant, rtype, id, version)
);
CREATE INDEX resource_versions_by_type ON resource_versions (tenant, rtype, seq);
CREATE TABLE resource_current (
    tenant TEXT NOT NULL,
    rtype TEXT NOT NULL,
    id TEXT NOT NULL,
    version INTEGER NOT NULL,
    deleted INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    PRIMARY KEY (tenant, rtype, id)
) WITHOUT ROWID;
CREATE INDEX resource_current_by_seq ON resource_current (tenant, rtype, seq);
CREATE TABLE search_terms (
    tenant TEXT NOT NULL,
    rtype TEXT NOT NULL,
    id TEXT NOT NULL,
    term BLOB NOT NULL,
    PRIMARY KEY (tenant, rtype, id, term)
) WITHOUT ROWID;
CREATE INDEX search_terms_by_term ON search_terms (tenant, rtype, term);
CREATE TABLE audit_log (
    seq INTEGER PRIMARY KEY,
    tenant TEXT NOT NULL,
    record_id TEXT NOT NULL,
    recorded INTEGER NOT NULL,
    sealed BLOB NOT NULL,
    link BLOB NOT NULL
);
CREATE TABLE wrapped_keys (
    key_id TEXT PRIMARY KEY,
    purpose TEXT NOT NULL,
    tenant TEXT NOT NULL,
    kek_id TEXT NOT NULL,
    wrapped BLOB NOT NULL,
    created INTEGER NOT NULL
);
CREATE TABLE clients (
    client_id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    jwks TEXT,
    jwks_uri TEXT,
    scope TEXT NOT NULL,
    created INTEGER NOT NULL
);
CREATE TABLE used_jti (
    client_id TEXT NOT NULL,
    jti TEXT NOT NULL,
    expires INTEGER NOT NULL,
    PRIMARY KEY (client_id, jti)
) WITHOUT ROWID;
CREATE INDEX used_jti_by_expiry ON used_jti (expires);
",
    // Integrity tags (NULL on rows written before them) and clients per tenant. A client's
    // key becomes (tenant, client_id), which SQLite can only do by rebuilding the table;
    // existing clients belong to the default tenant. Audit pages are per tenant now, so they
    // get an index that keeps one tenant's page from walking every other tenant's records.
    r"
ALTER TABLE resource_versions ADD COLUMN tag BLOB;
ALTER TABLE resource_current ADD COLUMN pointer_tag BLOB;
CREATE TABLE clients_by_tenant (
    tenant TEXT NOT NULL,
    client_id TEXT NOT NULL,
    name TEXT NOT NULL,
    jwks TEXT,
    jwks_uri TEXT,
    scope TEXT NOT NULL,
    created INTEGER NOT NULL,
    tag BLOB,
    PRIMARY KEY (tenant, client_id)
);
INSERT INTO clients_by_tenant (tenant, client_id, name, jwks, jwks_uri, scope, created)
    SELECT 'default', client_id, name, jwks, jwks_uri, scope, created FROM clients;
DROP TABLE clients;
ALTER TABLE clients_by_tenant RENAME TO clients;
CREATE INDEX audit_log_by_tenant ON audit_log (tenant, seq);
",
    // Search: one inverted index keyed by (term, resource), with each resource a number (the
    // sequence number of its first version) instead of its tenant, type and id: terms are
    // already MACs over tenant and type, and a posting shrinks from about 70 bytes to 17, one
    // B-tree instead of two. A term keeps its first 8 bytes. The current row lists its
    // postings (`terms`, 8 bytes each), so an update removes exactly the old ones.
    r"
ALTER TABLE resource_current ADD COLUMN rid INTEGER;
ALTER TABLE resource_current ADD COLUMN terms BLOB;
UPDATE resource_current SET rid = (SELECT min(v.seq) FROM resource_versions v
    WHERE v.tenant = resource_current.tenant AND v.rtype = resource_current.rtype
    AND v.id = resource_current.id);
CREATE UNIQUE INDEX resource_current_by_rid ON resource_current (rid);
CREATE TABLE search_index (
    term BLOB NOT NULL,
    rid INTEGER NOT NULL,
    PRIMARY KEY (term, rid)
) WITHOUT ROWID;
INSERT OR IGNORE INTO search_index (term, rid)
    SELECT substr(t.term, 1, 8), c.rid FROM search_terms t JOIN resource_current c
    ON c.tenant = t.tenant AND c.rtype = t.rtype AND c.id = t.id;
UPDATE resource_current SET terms = (SELECT unhex(group_concat(hex(substr(t.term, 1, 8)), ''))
    FROM search_terms t WHERE t.tenant = resource_current.tenant
    AND t.rtype = resource_current.rtype AND t.id = resource_current.id);
DROP TABLE search_terms;
CREATE TABLE settings (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
",
];

/// Puts the database in WAL mode and applies the migrations it has not seen.
pub(crate) fn migrate(conn: &Connection) -> Result<(), StoreError> {
    let mode: String = conn
        .query_row("PRAGMA journal_mode=WAL", [], |row| row.get(0))
        .map_err(store_error)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Backend(format!(
            "the database refused WAL mode ({mode})"
        )));
    }
    let applied: i64 = conn
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .map_err(store_error)?;
    let known = i64::try_from(MIGRATIONS.len()).unwrap_or(i64::MAX);
    if applied > known {
        // A newer release changed the schema; writing with this one could break its rules.
        return Err(StoreError::Backend(format!(
            "the database schema is version {applied}, newer than this release knows ({known})"
        )));
    }
    for (number, sql) in (1_i64..).zip(MIGRATIONS) {
        if number <= applied {
            continue;
        }
        let applied = conn.execute_batch(&format!(
            "BEGIN IMMEDIATE; {sql}; PRAGMA user_version = {number}; COMMIT;"
        ));
        if let Err(e) = applied {
            // The batch stops at the failing statement with its transaction still open.
            let _ = conn.execute_batch("ROLLBACK");
            return Err(store_error(e));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

    use fhirwall_store::{
        AuthState, ResourceId, ResourceKey, ResourceStore, ResourceType, TenantId,
    };

    use super::*;
    use crate::SqliteStore;

    /// A database written before tags and tenants of clients opens with its rows intact:
    /// no tags (NULL) and its clients in the default tenant.
    #[tokio::test]
    async fn rows_from_before_tags_read_without_them() {
        let dir = std::env::temp_dir().join(format!("fhirwall-schema-v1-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("db.sqlite");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(&format!(
                "PRAGMA journal_mode=WAL; BEGIN; {} ; PRAGMA user_version = 1; COMMIT;",
                MIGRATIONS[0]
            ))
            .unwrap();
            conn.execute_batch(
                "INSERT INTO resource_versions (tenant, rtype, id, version, last_updated, method, body) \
                 VALUES ('default', 'Patient', 'old', 1, 7, 'create', x'01');
                 INSERT INTO resource_current (tenant, rtype, id, version, deleted, seq) \
                 VALUES ('default', 'Patient', 'old', 1, 0, 1);
                 INSERT INTO clients (client_id, name, jwks, jwks_uri, scope, created) \
                 VALUES ('c', 'n', NULL, 'https://c.example/jwks', 'system/*.rs', 3);",
            )
            .unwrap();
        }
        let store = SqliteStore::open(&path).unwrap();
        let key = ResourceKey {
            tenant: TenantId::default_tenant(),
            resource_type: ResourceType::parse("Patient").unwrap(),
            id: ResourceId::parse("old").unwrap(),
        };
        let current = store.read_current(&key).await.unwrap().unwrap();
        assert_eq!(current.version.tag, None);
        assert_eq!(current.pointer_tag, None);
        assert_eq!(current.version.sealed_body, Some(vec![1]));
        let client = store
            .get_client(&TenantId::default_tenant(), "c")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(client.tenant, TenantId::default_tenant());
        assert_eq!(client.tag, None);
        assert_eq!(client.jwks_uri.as_deref(), Some("https://c.example/jwks"));
        let version: i64 = store
            .with_admin(|conn| conn.query_row("PRAGMA user_version", [], |row| row.get(0)))
            .unwrap();
        assert_eq!(version, MIGRATIONS.len() as i64);
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Postings of a version-2 database move to the inverted index with their resource's
    /// number, and the current row lists them, so the next update replaces them.
    #[tokio::test]
    async fn terms_from_before_the_inverted_index_still_find_and_are_replaced() {
        let dir = std::env::temp_dir().join(format!("fhirwall-schema-v2-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("db.sqlite");
        let term = [7u8; 16];
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(&format!(
                "PRAGMA journal_mode=WAL; BEGIN; {} ; {} ; PRAGMA user_version = 2; COMMIT;",
                MIGRATIONS[0], MIGRATIONS[1]
            ))
            .unwrap();
            conn.execute_batch(
                "INSERT INTO resource_versions (seq, tenant, rtype, id, version, last_updated, method, body) \
                 VALUES (5, 'default', 'Patient', 'old', 1, 7, 'create', x'01');",
            )
            .unwrap();
            conn.execute(
                "INSERT INTO resource_current (tenant, rtype, id, version, deleted, seq) \
                 VALUES ('default', 'Patient', 'old', 1, 0, 5)",
                [],
            )
            .unwrap();
            conn.execute(
                "INSERT INTO search_terms (tenant, rtype, id, term) VALUES ('default', 'Patient', 'old', ?1)",
                [term.as_slice()],
            )
            .unwrap();
        }
        let store = SqliteStore::open(&path).unwrap();
        let query = fhirwall_store::CurrentQuery {
            tenant: TenantId::default_tenant(),
            resource_type: ResourceType::parse("Patient").unwrap(),
            clauses: vec![fhirwall_store::Clause::Terms(vec![
                fhirwall_store::IndexTerm(term),
            ])],
            after_seq: None,
            up_to_seq: None,
            limit: 10,
        };
        let found = store.find_current(query.clone()).await.unwrap();
        assert_eq!(found.len(), 1);
        let (rid, terms): (i64, Vec<u8>) = store
            .with_admin(|conn| {
                conn.query_row("SELECT rid, terms FROM resource_current", [], |row| {
                    Ok((row.get(0)?, row.get(1)?))
                })
            })
            .unwrap();
        assert_eq!(rid, 5);
        assert_eq!(terms, term[..8].to_vec());
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_schema_newer_than_this_release_is_refused() {
        let dir = std::env::temp_dir().join(format!("fhirwall-schema-new-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("db.sqlite");
        Connection::open(&path)
            .unwrap()
            .execute_batch("PRAGMA user_version = 99")
            .unwrap();
        let refused = SqliteStore::open(&path).map(|_| ());
        assert!(
            matches!(&refused, Err(StoreError::Backend(m)) if m.contains("newer")),
            "{refused:?}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
