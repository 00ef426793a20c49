//! The storage interface every backend implements (embedded SQLite today, PostgreSQL next), as
//! four roles: resources and their history, the audit trail, authorization state, and wrapped
//! keys. Backends receive only sealed bytes, keyed index terms and keyed integrity tags:
//! nothing here ever sees plaintext ePHI or a key, and nothing here knows SQL.
//!
//! The invariants every backend keeps are written on the traits; the conformance suite
//! (`fhirwall-store-conformance`) tells the same story against each backend.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

pub use fhirwall_model::{ResourceId, ResourceType, TenantId};

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

/// A keyed MAC the application computes over a stored row's meaning (a version, a current
/// pointer, a client record). The store keeps it beside the row and hands it back; whoever can
/// write the database but not read the keyring cannot make a valid one, so an edited row is
/// detected when it is used and by `audit verify`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IntegrityTag(pub [u8; 32]);

/// Which resource: tenant, type and id.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ResourceKey {
    pub tenant: TenantId,
    pub resource_type: ResourceType,
    pub id: ResourceId,
}

impl ResourceKey {
    /// `Type/id`, as references and audit entities name it.
    pub fn reference(&self) -> String {
        format!("{}/{}", self.resource_type, self.id)
    }

    /// `Type/id/_history/n`, as audit entities name a version.
    pub fn versioned_reference(&self, version: u64) -> String {
        format!("{}/{}/_history/{version}", self.resource_type, self.id)
    }
}

/// One version of one resource as stored. `sealed_body` is ciphertext (absent for a delete).
#[derive(Debug, Clone)]
pub struct StoredVersion {
    pub key: ResourceKey,
    pub version: u64,
    pub last_updated_micros: i64,
    pub method: Method,
    pub sealed_body: Option<Vec<u8>>,
    /// The store-wide commit sequence number; 0 until stored.
    pub seq: u64,
    /// The application's tag over this version (`None` only for rows written before tags).
    pub tag: Option<IntegrityTag>,
}

impl StoredVersion {
    pub fn is_deleted(&self) -> bool {
        self.method == Method::Delete
    }
}

/// The current version of a resource together with the tag of the pointer that makes it
/// current, so a pointer moved back to an older version is detected on use.
#[derive(Debug, Clone)]
pub struct CurrentVersion {
    pub version: StoredVersion,
    pub pointer_tag: Option<IntegrityTag>,
}

/// A blind-index term (a keyed MAC of a normalized search value, scoped by the MAC to one
/// tenant and resource type). A backend may keep only its first 8 bytes: two different terms
/// then share a posting with probability 2^-64, which a search only sees as one extra
/// candidate among millions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
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
    pub tenant: TenantId,
    pub record_id: String,
    pub recorded_micros: i64,
    pub sealed: Vec<u8>,
}

/// A stored audit record with its position and chain link.
#[derive(Debug, Clone)]
pub struct StoredAudit {
    pub seq: u64,
    pub tenant: TenantId,
    pub record_id: String,
    pub recorded_micros: i64,
    pub sealed: Vec<u8>,
    pub link: Vec<u8>,
}

/// One resource write with the audit record that must commit with it.
#[derive(Debug, Clone)]
pub struct WriteRequest {
    pub version: StoredVersion,
    /// The tag of the current pointer the write leaves behind.
    pub pointer_tag: IntegrityTag,
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
    GuardMatched { ids: Vec<ResourceId> },
}

/// Several resource writes that commit together or not at all (a FHIR transaction), with the
/// audit record of the whole beside each write's own.
#[derive(Debug, Clone)]
pub struct TransactionRequest {
    pub writes: Vec<WriteRequest>,
    pub audit: SealedAudit,
}

/// Why a transaction was not applied: which write (its index in `writes`) found the state it
/// expected changed, or its guard matched. Nothing was stored, not even an audit record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransactionConflict {
    pub index: usize,
    pub conflict: WriteConflict,
}

/// New index terms for a current version (a reindex): applied only while that version is
/// still the current one.
#[derive(Debug, Clone)]
pub struct Reindexed {
    pub key: ResourceKey,
    pub version: u64,
    pub terms: Vec<IndexTerm>,
}

/// Which history to page through, newest first.
#[derive(Debug, Clone)]
pub struct HistoryQuery {
    pub tenant: TenantId,
    pub resource_type: Option<ResourceType>,
    /// Only with `resource_type`.
    pub id: Option<ResourceId>,
    pub since_micros: Option<i64>,
    /// Only versions committed before this sequence number (the paging cursor).
    pub before_seq: Option<u64>,
    pub limit: usize,
}

/// A plan over current, non-deleted resources of one type, as the application's indexing
/// module builds it: every clause must hold (AND). Results come in commit order.
#[derive(Debug, Clone)]
pub struct CurrentQuery {
    pub tenant: TenantId,
    pub resource_type: ResourceType,
    pub clauses: Vec<Clause>,
    /// Only resources whose current version was committed after this sequence number.
    pub after_seq: Option<u64>,
    /// Only resources whose current version was committed at or before this sequence number
    /// (the snapshot a paged search started from).
    pub up_to_seq: Option<u64>,
    pub limit: usize,
}

/// One condition of a [`CurrentQuery`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Clause {
    /// The resource carries at least one of these terms (an empty list matches nothing).
    Terms(Vec<IndexTerm>),
    /// The resource's id is one of these (an empty list matches nothing).
    Ids(Vec<ResourceId>),
    /// The current version's last update falls in one of these windows: microseconds since
    /// 1970, both ends inclusive, `None` unbounded (an empty list matches nothing).
    Updated(Vec<(Option<i64>, Option<i64>)>),
}

impl Clause {
    /// Whether the clause can match nothing at all.
    pub fn is_empty(&self) -> bool {
        match self {
            Clause::Terms(t) => t.is_empty(),
            Clause::Ids(ids) => ids.is_empty(),
            Clause::Updated(windows) => windows.is_empty(),
        }
    }
}

/// A wrapped key as persisted; the store never sees an unwrapped key. The same type is what
/// the crypto crate wraps and unwraps (`fhirwall_crypto::WrappedDataKey` converts both ways).
#[derive(Debug, Clone)]
pub struct StoredKey {
    pub key_id: String,
    pub purpose: String,
    pub tenant: TenantId,
    pub kek_id: String,
    pub wrapped: Vec<u8>,
    pub created_unix: i64,
}

/// A registered client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientRecord {
    pub tenant: TenantId,
    pub client_id: String,
    pub name: String,
    pub jwks: Option<String>,
    pub jwks_uri: Option<String>,
    pub scope: String,
    pub created_unix: i64,
    /// The application's tag over every field above (`None` only for rows written before tags).
    pub tag: Option<IntegrityTag>,
}

/// Computes an audit record's chain link. The chain is part of the interface: each backend is
/// started with one and links every record it appends, in commit order, as
/// `link(n) = chain.link(link(n-1), n, record id, sealed record)` with an empty `link(0)`.
pub trait AuditChain: Send + Sync + 'static {
    fn link(&self, previous: &[u8], seq: u64, record_id: &str, sealed: &[u8]) -> Vec<u8>;
}

/// Resources and their history.
///
/// Invariants every backend keeps:
/// - A write stores its version, its current pointer, its index terms and its audit record in
///   one durable commit, or none of them; the future resolves only after that commit.
/// - `expect` and `guard` are checked atomically with the write; a failed check stores
///   nothing (not even the audit record) and answers a [`WriteConflict`].
/// - Every version is kept; `seq` grows with commit order across all resources.
pub trait ResourceStore: Send + Sync {
    /// Applies a resource write and its audit record in one durable commit, or neither.
    fn write(&self, request: WriteRequest) -> StoreFuture<'_, Result<u64, WriteConflict>>;
    /// Applies every write of a transaction, each with its audit record, and the transaction's
    /// own record in one durable commit, or nothing. Each write's expectation and guard are
    /// checked in order against the state the earlier writes of the same transaction leave
    /// (so no two writes may touch one resource unless each expects the one before). A write's
    /// version is always the one after what it expects (1 after `Absent`). The audit records
    /// join the chain as each write's record in order, then the transaction's own, with
    /// nothing between them. Returns each write's commit sequence number, in order. The
    /// application bounds a transaction's size (1,000 entries).
    fn write_all(
        &self,
        request: TransactionRequest,
    ) -> StoreFuture<'_, Result<Vec<u64>, TransactionConflict>>;
    /// The current version (deleted ones included).
    fn read_current<'a>(&'a self, key: &'a ResourceKey) -> StoreFuture<'a, Option<CurrentVersion>>;
    fn read_version<'a>(
        &'a self,
        key: &'a ResourceKey,
        version: u64,
    ) -> StoreFuture<'a, Option<StoredVersion>>;
    fn history(&self, query: HistoryQuery) -> StoreFuture<'_, Vec<StoredVersion>>;
    /// Current, non-deleted versions matching the plan, at most `limit`, in commit order.
    fn find_current(&self, query: CurrentQuery) -> StoreFuture<'_, Vec<StoredVersion>>;
    /// How many current, non-deleted resources match the plan (`after_seq` and `limit` are
    /// ignored; `up_to_seq` applies).
    fn count_current(&self, query: CurrentQuery) -> StoreFuture<'_, u64>;
    /// For resources of the type whose current version was committed after `snapshot`: the
    /// version that was current at `snapshot`, when there was one and it was not a deletion,
    /// committed after `after_seq`, at most `limit`, in commit order. With
    /// [`ResourceStore::find_current`] up to `snapshot`, this is the type as it stood then.
    fn versions_at(
        &self,
        tenant: &TenantId,
        resource_type: &ResourceType,
        snapshot: u64,
        after_seq: Option<u64>,
        limit: usize,
    ) -> StoreFuture<'_, Vec<StoredVersion>>;
    /// Replaces the index terms of current versions that are still current (a version
    /// written since carries its own); returns how many were replaced. One durable commit.
    fn reindex(&self, items: Vec<Reindexed>) -> StoreFuture<'_, u64>;
    /// A setting of the server's own (such as which search parameters the index was built
    /// for); never patient data.
    fn read_setting<'a>(&'a self, name: &'a str) -> StoreFuture<'a, Option<String>>;
    /// Stores a setting durably.
    fn write_setting(&self, name: String, value: String) -> StoreFuture<'_, ()>;
    /// The sequence number of the newest committed version (0 before the first): the
    /// snapshot a paged search starts from.
    fn last_seq(&self) -> StoreFuture<'_, u64>;
}

/// The audit trail.
///
/// Invariants every backend keeps:
/// - Records are numbered 1, 2, 3... without gaps in commit order and linked with the
///   [`AuditChain`] the backend was started with; a record is never changed or removed.
/// - `append` resolves only when the record is durable (reads are answered only then).
pub trait AuditTrail: Send + Sync {
    /// Appends an audit record; resolves when it is durable. Returns its sequence number.
    fn append_audit(&self, record: SealedAudit) -> StoreFuture<'_, u64>;
    /// The tenant's records newest first, before `before_seq` when given.
    fn audit_page<'a>(
        &'a self,
        tenant: &'a TenantId,
        before_seq: Option<u64>,
        limit: usize,
    ) -> StoreFuture<'a, Vec<StoredAudit>>;
    /// Every record oldest first, after `after_seq`: the verifier's walk over the one chain.
    fn audit_scan(&self, after_seq: u64, limit: usize) -> StoreFuture<'_, Vec<StoredAudit>>;
    /// One of the tenant's records by sequence number.
    fn audit_get<'a>(
        &'a self,
        tenant: &'a TenantId,
        seq: u64,
    ) -> StoreFuture<'a, Option<StoredAudit>>;
}

/// Authorization state: registered clients and used client-assertion ids.
///
/// Invariants every backend keeps:
/// - `use_jti` is single-use across every process sharing the store: of two concurrent uses
///   of one (client, jti), exactly one returns true. Entries may be forgotten after
///   `expires_unix` has passed (`now_unix` is the caller's clock).
pub trait AuthState: Send + Sync {
    /// Records a client-assertion `jti`; false if it was already used.
    fn use_jti<'a>(
        &'a self,
        client_id: &'a str,
        jti: &'a str,
        expires_unix: i64,
        now_unix: i64,
    ) -> StoreFuture<'a, bool>;
    fn add_client(&self, client: ClientRecord) -> StoreFuture<'_, ()>;
    fn get_client<'a>(
        &'a self,
        tenant: &'a TenantId,
        client_id: &'a str,
    ) -> StoreFuture<'a, Option<ClientRecord>>;
    fn list_clients<'a>(&'a self, tenant: &'a TenantId) -> StoreFuture<'a, Vec<ClientRecord>>;
    fn remove_client<'a>(
        &'a self,
        tenant: &'a TenantId,
        client_id: &'a str,
    ) -> StoreFuture<'a, bool>;
}

/// Wrapped keys.
///
/// Invariants every backend keeps: keys come back in the order they were saved (the newest
/// data key of a tenant is its active one); a rewrap changes only `kek_id` and `wrapped`.
pub trait KeyStore: Send + Sync {
    fn load_keys(&self) -> StoreFuture<'_, Vec<StoredKey>>;
    fn save_key(&self, key: StoredKey) -> StoreFuture<'_, ()>;
    /// Replaces the wrapping of an existing key (KEK rotation); its id and order stay.
    fn rewrap_key(&self, key: StoredKey) -> StoreFuture<'_, bool>;
}

/// A whole backend: the four roles, plus its life cycle. It is opened first (keys can be read
/// then, to unwrap the chain key), then started with the chain, which enables writes.
pub trait Store: ResourceStore + AuditTrail + AuthState + KeyStore + 'static {
    /// Enables writes; every audit record appended from now on is linked by `chain`.
    fn start(&self, chain: Arc<dyn AuditChain>) -> Result<(), StoreError>;
    /// Commits what is pending and stops accepting writes.
    fn shutdown(&self);
}
