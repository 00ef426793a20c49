//! Decoding stored rows into the interface's types, and the integer conversions at the SQL
//! boundary. A stored value that does not decode (an unknown type, a malformed id, tenant or
//! tag, a negative count) is reported as corrupt data; it must never be replaced by a default.

use std::fmt;

use fhirwall_store::{
    ClientRecord, IntegrityTag, Method, ResourceId, ResourceKey, ResourceType, StoreError,
    StoredAudit, StoredKey, StoredVersion, TenantId,
};
use rusqlite::Row;
use rusqlite::types::{Type, ValueRef};

/// Why a stored value was refused. It names the column's meaning, never the value.
#[derive(Debug)]
struct Undecodable(&'static str);

impl fmt::Display for Undecodable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the stored {} does not decode", self.0)
    }
}

impl std::error::Error for Undecodable {}

/// rusqlite carries a refused value as a conversion failure, which [`store_error`] reports as
/// corrupt data.
fn undecodable(column: usize, kind: Type, what: &'static str) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(column, kind, Box::new(Undecodable(what)))
}

/// The one mapping of SQLite failures: stored data that does not decode is `Corrupt`,
/// everything else is a backend failure.
pub(crate) fn store_error(e: rusqlite::Error) -> StoreError {
    match e {
        rusqlite::Error::FromSqlConversionFailure(..)
        | rusqlite::Error::IntegralValueOutOfRange(..)
        | rusqlite::Error::InvalidColumnType(..) => StoreError::Corrupt(e.to_string()),
        _ => StoreError::Backend(e.to_string()),
    }
}

/// A bound (limit, cursor) as SQLite's integer; past `i64::MAX` every row is within it.
pub(crate) fn bound(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// A limit as SQLite's integer.
pub(crate) fn limit(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn text<'r>(row: &'r Row<'_>, column: usize, what: &'static str) -> rusqlite::Result<&'r str> {
    row.get_ref(column)?
        .as_str()
        .map_err(|_| undecodable(column, Type::Text, what))
}

pub(crate) fn unsigned(row: &Row<'_>, column: usize, what: &'static str) -> rusqlite::Result<u64> {
    let n: i64 = row.get(column)?;
    u64::try_from(n).map_err(|_| undecodable(column, Type::Integer, what))
}

pub(crate) fn tenant(row: &Row<'_>, column: usize) -> rusqlite::Result<TenantId> {
    TenantId::parse(text(row, column, "tenant")?)
        .map_err(|_| undecodable(column, Type::Text, "tenant"))
}

fn resource_type(row: &Row<'_>, column: usize) -> rusqlite::Result<ResourceType> {
    ResourceType::parse(text(row, column, "resource type")?)
        .map_err(|_| undecodable(column, Type::Text, "resource type"))
}

pub(crate) fn resource_id(row: &Row<'_>, column: usize) -> rusqlite::Result<ResourceId> {
    ResourceId::parse(text(row, column, "resource id")?)
        .map_err(|_| undecodable(column, Type::Text, "resource id"))
}

/// A nullable tag column: NULL for rows written before tags.
pub(crate) fn tag(row: &Row<'_>, column: usize) -> rusqlite::Result<Option<IntegrityTag>> {
    match row.get_ref(column)? {
        ValueRef::Null => Ok(None),
        ValueRef::Blob(bytes) => <[u8; 32]>::try_from(bytes)
            .map(|b| Some(IntegrityTag(b)))
            .map_err(|_| undecodable(column, Type::Blob, "integrity tag")),
        _ => Err(undecodable(column, Type::Blob, "integrity tag")),
    }
}

/// The columns [`version`] reads, from `resource_versions v`.
pub(crate) const VERSION_COLUMNS: &str =
    "v.tenant, v.rtype, v.id, v.version, v.last_updated, v.method, v.body, v.seq, v.tag";

pub(crate) fn version(row: &Row<'_>) -> rusqlite::Result<StoredVersion> {
    let method = Method::parse(text(row, 5, "method")?)
        .ok_or_else(|| undecodable(5, Type::Text, "method"))?;
    Ok(StoredVersion {
        key: ResourceKey {
            tenant: tenant(row, 0)?,
            resource_type: resource_type(row, 1)?,
            id: resource_id(row, 2)?,
        },
        version: unsigned(row, 3, "version")?,
        last_updated_micros: row.get(4)?,
        method,
        sealed_body: row.get(6)?,
        seq: unsigned(row, 7, "seq")?,
        tag: tag(row, 8)?,
    })
}

/// The columns [`audit`] reads, from `audit_log`.
pub(crate) const AUDIT_COLUMNS: &str = "seq, tenant, record_id, recorded, sealed, link";

pub(crate) fn audit(row: &Row<'_>) -> rusqlite::Result<StoredAudit> {
    Ok(StoredAudit {
        seq: unsigned(row, 0, "audit seq")?,
        tenant: tenant(row, 1)?,
        record_id: row.get(2)?,
        recorded_micros: row.get(3)?,
        sealed: row.get(4)?,
        link: row.get(5)?,
    })
}

/// The columns [`client`] reads, from `clients`.
pub(crate) const CLIENT_COLUMNS: &str =
    "tenant, client_id, name, jwks, jwks_uri, scope, created, tag";

pub(crate) fn client(row: &Row<'_>) -> rusqlite::Result<ClientRecord> {
    Ok(ClientRecord {
        tenant: tenant(row, 0)?,
        client_id: row.get(1)?,
        name: row.get(2)?,
        jwks: row.get(3)?,
        jwks_uri: row.get(4)?,
        scope: row.get(5)?,
        created_unix: row.get(6)?,
        tag: tag(row, 7)?,
    })
}

/// The columns [`key`] reads, from `wrapped_keys`.
pub(crate) const KEY_COLUMNS: &str = "key_id, purpose, tenant, kek_id, wrapped, created";

pub(crate) fn key(row: &Row<'_>) -> rusqlite::Result<StoredKey> {
    Ok(StoredKey {
        key_id: row.get(0)?,
        purpose: row.get(1)?,
        tenant: tenant(row, 2)?,
        kek_id: row.get(3)?,
        wrapped: row.get(4)?,
        created_unix: row.get(5)?,
    })
}
