//! The conformance suite: the one storage story every backend must tell the same way, run by
//! each backend's own tests against a fresh store. It is test support: production code never
//! depends on it, and it uses fake sealed bytes and tags (the store never looks inside them)
//! and a non-cryptographic test chain (the store must not depend on crypto).

// A test suite: panicking with the broken rule is its whole job.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::indexing_slicing)]

mod audit;
mod auth;
mod history;
mod keys;
mod plan;
mod resources;
mod transactions;

use std::sync::Arc;

use fhirwall_store::{
    AuditChain, Expect, IndexTerm, IntegrityTag, Method, ResourceId, ResourceKey, ResourceType,
    SealedAudit, Store, StoredVersion, TenantId, WriteConflict, WriteRequest,
};

/// A chain for tests: FNV-1a over every input, 8 bytes long (shorter than a real HMAC link, so
/// a backend that assumes a length is caught). Anyone can recompute it, which is the point here.
#[derive(Debug, Clone, Copy, Default)]
pub struct TestChain;

impl AuditChain for TestChain {
    fn link(&self, previous: &[u8], seq: u64, record_id: &str, sealed: &[u8]) -> Vec<u8> {
        let mut hash = Fnv::new();
        // Lengths first, so that moving a byte from one input to the next changes the link.
        for part in [previous, record_id.as_bytes(), sealed] {
            hash.write(&(part.len() as u64).to_le_bytes());
            hash.write(part);
        }
        hash.write(&seq.to_le_bytes());
        hash.finish().to_be_bytes().to_vec()
    }
}

struct Fnv(u64);

impl Fnv {
    fn new() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }

    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 = (self.0 ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// Runs the whole story. `store` must be freshly opened on empty storage and not yet started:
/// the suite checks what works before `start` (keys), starts it with [`TestChain`], and ends
/// with `shutdown`. Panics with a message naming the broken rule.
pub async fn run(store: &dyn Store) {
    let mut story = Story::default();
    keys::before_start(store, &mut story).await;
    store
        .start(Arc::new(TestChain))
        .expect("a fresh store starts");
    resources::versions_and_expectations(store, &mut story).await;
    resources::guards(store, &mut story).await;
    transactions::all_or_nothing(store, &mut story).await;
    plan::find_current(store, &mut story).await;
    plan::broad_clauses(store, &mut story).await;
    history::paging_and_filters(store, &mut story).await;
    auth::client_assertion_ids(store).await;
    auth::clients(store).await;
    keys::order_and_rewrap(store).await;
    audit::trail(store, &mut story).await;
    store.shutdown();
    assert!(
        store.append_audit(story.audit(&tenant("a"))).await.is_err(),
        "after shutdown no write is accepted"
    );
}

/// What the suite has committed so far, so the audit trail can be checked against it.
#[derive(Default)]
pub(crate) struct Story {
    next_record: u32,
    /// Record ids in the order their commits were answered (the commit order).
    committed: Vec<String>,
}

impl Story {
    /// A new audit record of `tenant`; every one differs in id and sealed bytes.
    pub(crate) fn audit(&mut self, tenant: &TenantId) -> SealedAudit {
        self.next_record += 1;
        let n = self.next_record;
        SealedAudit {
            tenant: tenant.clone(),
            record_id: format!("rec-{n}"),
            recorded_micros: i64::from(n) * 10,
            sealed: format!("sealed-{n};")
                .repeat(n as usize % 3 + 1)
                .into_bytes(),
        }
    }

    pub(crate) fn committed(&mut self, record_id: &str) {
        self.committed.push(record_id.to_string());
    }
}

pub(crate) fn tenant(name: &str) -> TenantId {
    TenantId::parse(name).expect("a valid tenant")
}

pub(crate) fn key(tenant_name: &str, resource_type: &str, id: &str) -> ResourceKey {
    ResourceKey {
        tenant: tenant(tenant_name),
        resource_type: ResourceType::parse(resource_type).expect("a FHIR type"),
        id: ResourceId::parse(id).expect("a valid id"),
    }
}

pub(crate) fn rid(id: &str) -> ResourceId {
    ResourceId::parse(id).expect("a valid id")
}

pub(crate) fn term(n: u8) -> IndexTerm {
    IndexTerm([n; 16])
}

/// A fake tag, distinct for every distinct label.
pub(crate) fn tag(label: &str) -> IntegrityTag {
    let mut bytes = [0u8; 32];
    for (lane, chunk) in bytes.chunks_mut(8).enumerate() {
        let mut hash = Fnv::new();
        hash.write(&[lane as u8]);
        hash.write(label.as_bytes());
        chunk.copy_from_slice(&hash.finish().to_be_bytes());
    }
    IntegrityTag(bytes)
}

pub(crate) fn version_tag(key: &ResourceKey, version: u64) -> IntegrityTag {
    tag(&format!(
        "version {}/{} {version}",
        key.tenant,
        key.reference()
    ))
}

pub(crate) fn pointer_tag(key: &ResourceKey, version: u64) -> IntegrityTag {
    tag(&format!(
        "pointer {}/{} {version}",
        key.tenant,
        key.reference()
    ))
}

pub(crate) fn body(key: &ResourceKey, version: u64) -> Vec<u8> {
    format!("{}/{}@{version}", key.tenant, key.reference()).into_bytes()
}

/// A write of `key` at `version`, with the tags and body the suite expects back.
pub(crate) fn request(
    story: &mut Story,
    key: &ResourceKey,
    version: u64,
    method: Method,
    micros: i64,
    expect: Expect,
    index_terms: Vec<IndexTerm>,
) -> WriteRequest {
    WriteRequest {
        version: StoredVersion {
            key: key.clone(),
            version,
            last_updated_micros: micros,
            method,
            sealed_body: (method != Method::Delete).then(|| body(key, version)),
            seq: 0,
            tag: Some(version_tag(key, version)),
        },
        pointer_tag: pointer_tag(key, version),
        expect,
        guard: None,
        index_terms,
        audit: story.audit(&key.tenant),
    }
}

/// Sends a write and notes its audit record when it was applied.
pub(crate) async fn write(
    store: &dyn Store,
    story: &mut Story,
    request: WriteRequest,
) -> Result<u64, WriteConflict> {
    let record_id = request.audit.record_id.clone();
    let result = store.write(request).await.expect("the store works");
    if result.is_ok() {
        story.committed(&record_id);
    }
    result
}

/// A write the story needs to succeed; returns its commit sequence number.
pub(crate) async fn put(
    store: &dyn Store,
    story: &mut Story,
    key: &ResourceKey,
    version: u64,
    micros: i64,
    index_terms: Vec<IndexTerm>,
) -> u64 {
    let (method, expect) = if version == 1 {
        (Method::Create, Expect::Absent)
    } else {
        (Method::Update, Expect::Current(version - 1))
    };
    let request = request(story, key, version, method, micros, expect, index_terms);
    write(store, story, request)
        .await
        .unwrap_or_else(|conflict| panic!("{} v{version}: {conflict:?}", key.reference()))
}

/// Deletes `key`, whose current version is `version - 1`.
pub(crate) async fn delete(
    store: &dyn Store,
    story: &mut Story,
    key: &ResourceKey,
    version: u64,
    micros: i64,
) -> u64 {
    let request = request(
        story,
        key,
        version,
        Method::Delete,
        micros,
        Expect::Current(version - 1),
        vec![],
    );
    write(store, story, request)
        .await
        .unwrap_or_else(|conflict| panic!("delete {}: {conflict:?}", key.reference()))
}

/// `Type/id@version` of each, for readable assertions.
pub(crate) fn names(versions: &[StoredVersion]) -> Vec<String> {
    versions
        .iter()
        .map(|v| format!("{}@{}", v.key.reference(), v.version))
        .collect()
}
