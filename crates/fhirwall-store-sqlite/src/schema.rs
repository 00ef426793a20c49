//! The database schema and its migrations. Bodies and audit records are ciphertext; ids are
//! server-assigned or client-chosen identifiers, never patient data.

use rusqlite::Connection;

use crate::backend;
use fhirwall_store::StoreError;

const MIGRATIONS: &[&str] = &[r"
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
"];

/// Puts the database in WAL mode and applies the migrations it has not seen.
pub(crate) fn migrate(conn: &Connection) -> Result<(), StoreError> {
    let mode: String = conn
        .query_row("PRAGMA journal_mode=WAL", [], |row| row.get(0))
        .map_err(backend)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Backend(format!(
            "the database refused WAL mode ({mode})"
        )));
    }
    let applied: i64 = conn
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .map_err(backend)?;
    for (index, sql) in MIGRATIONS.iter().enumerate() {
        let number = index as i64 + 1;
        if number <= applied {
            continue;
        }
        conn.execute_batch(&format!(
            "BEGIN IMMEDIATE; {sql}; PRAGMA user_version = {number}; COMMIT;"
        ))
        .map_err(backend)?;
    }
    Ok(())
}
