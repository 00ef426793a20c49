//! Opening, starting, stopping and reopening: writes wait for `start`, a store starts once,
//! and a reopened store continues the chain from its stored head.

use std::sync::Arc;

use fhirwall_store::{
    AuditChain, AuditTrail, Expect, IntegrityTag, Method, ResourceId, ResourceKey, ResourceStore,
    ResourceType, SealedAudit, Store, StoreError, StoredVersion, TenantId, WriteRequest,
};
use fhirwall_store_conformance::TestChain;
use fhirwall_store_sqlite::SqliteStore;

use crate::TempDir;

fn record(n: u8) -> SealedAudit {
    SealedAudit {
        tenant: TenantId::default_tenant(),
        record_id: format!("r{n}"),
        recorded_micros: i64::from(n),
        sealed: vec![n; 8],
    }
}

fn patient() -> ResourceKey {
    ResourceKey {
        tenant: TenantId::default_tenant(),
        resource_type: ResourceType::parse("Patient").unwrap(),
        id: ResourceId::parse("p").unwrap(),
    }
}

fn create(n: u8) -> WriteRequest {
    WriteRequest {
        version: StoredVersion {
            key: patient(),
            version: 1,
            last_updated_micros: 5,
            method: Method::Create,
            sealed_body: Some(vec![9; 4]),
            seq: 0,
            tag: Some(IntegrityTag([1; 32])),
        },
        pointer_tag: IntegrityTag([2; 32]),
        expect: Expect::Absent,
        guard: None,
        index_terms: vec![],
        audit: record(n),
    }
}

#[tokio::test]
async fn writes_wait_for_start_and_a_store_starts_once() {
    let dir = TempDir::new("start");
    let store = SqliteStore::open(&dir.database()).unwrap();
    assert!(matches!(
        store.append_audit(record(1)).await,
        Err(StoreError::Closed)
    ));
    assert!(matches!(
        store.write(create(1)).await,
        Err(StoreError::Closed)
    ));
    store.start(Arc::new(TestChain)).unwrap();
    assert!(store.start(Arc::new(TestChain)).is_err(), "one writer only");
    assert_eq!(store.append_audit(record(2)).await.unwrap(), 1);
    store.shutdown();
    assert!(matches!(
        store.append_audit(record(3)).await,
        Err(StoreError::Closed)
    ));
}

/// The cache answers reads while the writer runs, so what the database file holds is seen
/// only by a store that has not started: this one reads what its predecessor wrote.
#[tokio::test]
async fn a_reopened_store_continues_the_chain_and_keeps_the_current_pointers() {
    let dir = TempDir::new("reopen");
    let elsewhere = ResourceKey {
        tenant: TenantId::parse("elsewhere").unwrap(),
        ..patient()
    };
    {
        let store = SqliteStore::open(&dir.database()).unwrap();
        store.start(Arc::new(TestChain)).unwrap();
        store.append_audit(record(1)).await.unwrap();
        store.write(create(2)).await.unwrap().unwrap();
        let mut update = create(3);
        update.version.version = 2;
        update.version.method = Method::Update;
        update.version.tag = Some(IntegrityTag([3; 32]));
        update.pointer_tag = IntegrityTag([4; 32]);
        update.expect = Expect::Current(1);
        store.write(update).await.unwrap().unwrap();
        let mut other = create(4);
        other.version.key = elsewhere.clone();
        other.pointer_tag = IntegrityTag([5; 32]);
        store.write(other).await.unwrap().unwrap();
        store.shutdown();
    }
    let store = SqliteStore::open(&dir.database()).unwrap();
    let current = store.read_current(&patient()).await.unwrap().unwrap();
    assert_eq!(current.version.version, 2);
    assert_eq!(current.version.tag, Some(IntegrityTag([3; 32])));
    assert_eq!(
        current.pointer_tag,
        Some(IntegrityTag([4; 32])),
        "an update replaces the stored pointer tag"
    );
    let other = store.read_current(&elsewhere).await.unwrap().unwrap();
    assert_eq!(other.pointer_tag, Some(IntegrityTag([5; 32])));
    let first = store.read_version(&patient(), 1).await.unwrap().unwrap();
    assert_eq!(first.tag, Some(IntegrityTag([1; 32])));

    store.start(Arc::new(TestChain)).unwrap();
    assert_eq!(store.append_audit(record(5)).await.unwrap(), 5);
    let trail = store.audit_scan(0, 10).await.unwrap();
    let mut previous = Vec::new();
    for (n, stored) in trail.iter().enumerate() {
        assert_eq!(stored.seq, n as u64 + 1);
        assert_eq!(
            stored.link,
            TestChain.link(&previous, stored.seq, &stored.record_id, &stored.sealed),
            "the chain goes on from the stored head"
        );
        previous = stored.link.clone();
    }
    assert_eq!(trail.len(), 5);
}
