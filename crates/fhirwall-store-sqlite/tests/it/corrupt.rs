//! Stored values that do not decode are reported as corrupt, never replaced by defaults.

use std::sync::Arc;

use fhirwall_store::{
    Expect, IntegrityTag, KeyStore, Method, ResourceId, ResourceKey, ResourceStore, ResourceType,
    SealedAudit, Store, StoreError, StoredKey, StoredVersion, TenantId, WriteRequest,
};
use fhirwall_store_conformance::TestChain;
use fhirwall_store_sqlite::SqliteStore;

use crate::TempDir;

fn patient() -> ResourceKey {
    ResourceKey {
        tenant: TenantId::default_tenant(),
        resource_type: ResourceType::parse("Patient").unwrap(),
        id: ResourceId::parse("p").unwrap(),
    }
}

async fn stored_patient(dir: &TempDir) {
    let store = SqliteStore::open(&dir.database()).unwrap();
    store
        .save_key(StoredKey {
            key_id: "k".into(),
            purpose: "data".into(),
            tenant: TenantId::default_tenant(),
            kek_id: "kek".into(),
            wrapped: vec![1; 8],
            created_unix: 1,
        })
        .await
        .unwrap();
    store.start(Arc::new(TestChain)).unwrap();
    store
        .write(WriteRequest {
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
            audit: SealedAudit {
                tenant: TenantId::default_tenant(),
                record_id: "r".into(),
                recorded_micros: 5,
                sealed: vec![3; 8],
            },
        })
        .await
        .unwrap()
        .unwrap();
    store.shutdown();
}

/// Edits the stored rows behind the store's back, then reads them through a fresh one.
async fn read_after(edit: &str) -> (Result<(), StoreError>, Result<(), StoreError>) {
    let dir = TempDir::new("corrupt");
    stored_patient(&dir).await;
    rusqlite::Connection::open(dir.database())
        .unwrap()
        .execute_batch(edit)
        .unwrap();
    let store = SqliteStore::open(&dir.database()).unwrap();
    let current = store.read_current(&patient()).await.map(|_| ());
    let keys = store.load_keys().await.map(|_| ());
    (current, keys)
}

fn is_corrupt(result: &Result<(), StoreError>) -> bool {
    matches!(result, Err(StoreError::Corrupt(_)))
}

#[tokio::test]
async fn undecodable_rows_are_corrupt() {
    let (current, keys) = read_after("SELECT 1").await;
    assert!(current.is_ok() && keys.is_ok(), "the untouched rows decode");
    for edit in [
        "UPDATE resource_versions SET rtype = 'NoSuchType'",
        "UPDATE resource_versions SET id = 'not/an/id'",
        "UPDATE resource_versions SET method = 'upsert'",
        "UPDATE resource_versions SET version = -1",
        "UPDATE resource_versions SET tag = x'0102'",
        "UPDATE resource_current SET pointer_tag = 'text, not a tag'",
    ] {
        let (current, _) = read_after(edit).await;
        assert!(is_corrupt(&current), "{edit}: {current:?}");
    }
    let (_, keys) = read_after("UPDATE wrapped_keys SET tenant = 'Not A Tenant'").await;
    assert!(is_corrupt(&keys), "{keys:?}");
}
