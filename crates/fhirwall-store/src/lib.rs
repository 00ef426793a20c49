//! The storage interface every backend implements (embedded SQLite today, PostgreSQL next).
//! Backends receive only sealed bytes and blind-index terms: nothing here ever sees plaintext
//! ePHI, and nothing here knows SQL.

pub mod conformance;

use std::future::Future;
use std::pin::Pin;

/// The tenant of a single-tenant deployment.
pub const DEFAULT_TENANT: &str = "default";

/// What every store call returns.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// A storage failure. The text is for operators' logs, never for clients.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage backend failure: {0}")]
    Backend(String),
    #[error("the store is shutting down")]
    Closed,
    #[error("stored data is inconsistent: {0}")]
    Corrupt(String),
}

/// The interaction that made a version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Create,
    Update,
    Patch,
    Delete,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Create => "create",
            Method::Update => "update",
            Method::Patch => "patch",
            Method::Delete => "delete",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "create" => Some(Method::Create),
            "update" => Some(Method::Update),
            "patch" => Some(Method::Patch),
            "delete" => Some(Method::Delete),
            _ => None,
        }
    }
}

/// One version of one resource as stored. `sealed_body` is ciphertext (absent for a delete).
#[derive(Debug, Clone)]
pub struct StoredVersion {
    pub tenant: String,
    pub resource_type: String,
    pub id: String,
    pub version: u64,
    pub last_updated_micros: i64,
    pub method: Method,
    pub sealed_body: Option<Vec<u8>>,
    /// The store-wide commit sequence number; 0 until stored.
    pub seq: u64,
}

impl StoredVersion {
    pub fn is_deleted(&self) -> bool {
        self.method == Method::Delete
    }
}

/// A blind-index term (a keyed MAC of a normalized search value).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IndexTerm(pub [u8; 16]);

/// The state of a resource the writer saw when it prepared a write. The store applies the
/// write only if the state is unchanged, so concurrent writers never lose an update.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// No version of the resource exists.
    Absent,
    /// The current version (deleted or not) is this one.
    Current(u64),
}

/// A condition checked atomically with the write: no current, non-deleted resource of the type
/// carries all of `terms` (conditional create and update).
#[derive(Debug, Clone)]
pub struct NoMatchGuard {
    pub terms: Vec<IndexTerm>,
}

/// A sealed audit record, ready to chain.
#[derive(Debug, Clone)]
pub struct SealedAudit {
    pub tenant: String,
    pub record_id: String,
    pub recorded_micros: i64,
    pub sealed: Vec<u8>,
}

/// A stored audit record with its position and chain link.
#[derive(Debug, Clone)]
pub struct StoredAudit {
    pub seq: u64,
    pub tenant: String,
    pub record_id: String,
    pub recorded_micros: i64,
    pub sealed: Vec<u8>,
    pub link: Vec<u8>,
}

/// One resource write with the audit record that must commit with it.
#[derive(Debug, Clone)]
pub struct WriteRequest {
    pub version: StoredVersion,
    pub expect: Expect,
    pub guard: Option<NoMatchGuard>,
    /// The index terms of the new current version (empty for a delete); they replace the old.
    pub index_terms: Vec<IndexTerm>,
    pub audit: SealedAudit,
}

/// Why a write was not applied. Nothing was stored, not even the audit record: the caller
/// decides whether to retry or to audit a refusal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteConflict {
    /// The resource changed since the caller looked; `current` is what is there now.
    VersionMismatch { current: Option<u64> },
    /// A conditional guard matched these resource ids.
    GuardMatched { ids: Vec<String> },
}

/// Which history to page through, newest first.
#[derive(Debug, Clone)]
pub struct HistoryQuery {
    pub tenant: String,
    pub resource_type: Option<String>,
    pub id: Option<String>,
    pub since_micros: Option<i64>,
    /// Only versions committed before this sequence number (the paging cursor).
    pub before_seq: Option<u64>,
    pub limit: usize,
}

/// A current-resource lookup: all criteria must hold; results in commit order.
#[derive(Debug, Clone)]
pub struct CurrentQuery {
    pub tenant: String,
    pub resource_type: String,
    pub id: Option<String>,
    pub terms: Vec<IndexTerm>,
    /// Only resources whose current version was committed after this sequence number.
    pub after_seq: Option<u64>,
    pub limit: usize,
}

/// A wrapped key as persisted; the store never sees an unwrapped key.
#[derive(Debug, Clone)]
pub struct StoredKey {
    pub key_id: String,
    pub purpose: String,
    pub tenant: String,
    pub kek_id: String,
    pub wrapped: Vec<u8>,
    pub created_unix: i64,
}

/// A registered backend-services client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientRecord {
    pub client_id: String,
    pub name: String,
    pub jwks: Option<String>,
    pub jwks_uri: Option<String>,
    pub scope: String,
    pub created_unix: i64,
}

/// The storage interface. Writes and audit appends are durable when their future resolves.
pub trait Store: Send + Sync + 'static {
    /// Applies a resource write and its audit record in one durable commit, or neither.
    fn write(&self, request: WriteRequest) -> StoreFuture<'_, Result<u64, WriteConflict>>;
    /// Appends an audit record; resolves when it is durable. Returns its sequence number.
    fn append_audit(&self, record: SealedAudit) -> StoreFuture<'_, u64>;
    /// Records a client-assertion `jti`; false if it was already used.
    fn use_jti(&self, client_id: &str, jti: &str, expires_unix: i64) -> StoreFuture<'_, bool>;

    fn read_current<'a>(
        &'a self,
        tenant: &'a str,
        resource_type: &'a str,
        id: &'a str,
    ) -> StoreFuture<'a, Option<StoredVersion>>;
    fn read_version<'a>(
        &'a self,
        tenant: &'a str,
        resource_type: &'a str,
        id: &'a str,
        version: u64,
    ) -> StoreFuture<'a, Option<StoredVersion>>;
    fn history(&self, query: HistoryQuery) -> StoreFuture<'_, Vec<StoredVersion>>;
    /// Current, non-deleted versions matching the query.
    fn find_current(&self, query: CurrentQuery) -> StoreFuture<'_, Vec<StoredVersion>>;

    /// Audit records newest first, before `before_seq` when given.
    fn audit_page(
        &self,
        before_seq: Option<u64>,
        limit: usize,
    ) -> StoreFuture<'_, Vec<StoredAudit>>;
    /// Audit records oldest first, after `after_seq`: the verifier's walk.
    fn audit_scan(&self, after_seq: u64, limit: usize) -> StoreFuture<'_, Vec<StoredAudit>>;
    fn audit_get(&self, seq: u64) -> StoreFuture<'_, Option<StoredAudit>>;

    fn load_keys(&self) -> StoreFuture<'_, Vec<StoredKey>>;
    fn save_key(&self, key: StoredKey) -> StoreFuture<'_, ()>;
    /// Replaces the wrapping of an existing key (KEK rotation); its id and order stay.
    fn rewrap_key(&self, key: StoredKey) -> StoreFuture<'_, bool>;

    fn add_client(&self, client: ClientRecord) -> StoreFuture<'_, ()>;
    fn get_client<'a>(&'a self, client_id: &'a str) -> StoreFuture<'a, Option<ClientRecord>>;
    fn list_clients(&self) -> StoreFuture<'_, Vec<ClientRecord>>;
    fn remove_client<'a>(&'a self, client_id: &'a str) -> StoreFuture<'a, bool>;
}
