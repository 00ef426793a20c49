//! The conformance suite: one story every storage backend must tell the same way. Each backend
//! runs it from its own tests against a fresh, started store. It uses fake sealed bytes: the
//! store never looks inside them.

// A test suite: panicking with the broken rule is its whole job.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use crate::{
    ClientRecord, CurrentQuery, Expect, HistoryQuery, IndexTerm, Method, NoMatchGuard, SealedAudit,
    Store, StoredKey, StoredVersion, WriteConflict, WriteRequest,
};

fn version(id: &str, version: u64, method: Method, micros: i64) -> StoredVersion {
    StoredVersion {
        tenant: "t".into(),
        resource_type: "Patient".into(),
        id: id.into(),
        version,
        last_updated_micros: micros,
        method,
        sealed_body: (method != Method::Delete).then(|| format!("{id}@{version}").into_bytes()),
        seq: 0,
    }
}

fn audit(n: u32) -> SealedAudit {
    SealedAudit {
        tenant: "t".into(),
        record_id: format!("rec-{n}"),
        recorded_micros: i64::from(n),
        sealed: vec![n as u8; 8],
    }
}

fn write(v: StoredVersion, expect: Expect, terms: Vec<IndexTerm>, n: u32) -> WriteRequest {
    WriteRequest {
        version: v,
        expect,
        guard: None,
        index_terms: terms,
        audit: audit(n),
    }
}

/// Panics with a message naming the broken rule. `store` must be fresh and accept writes.
pub async fn run(store: &dyn Store) {
    let term_a = IndexTerm([1; 16]);
    let term_b = IndexTerm([2; 16]);

    // Create, then a second create of the same id is a conflict.
    let first = store
        .write(write(
            version("a", 1, Method::Create, 1_000),
            Expect::Absent,
            vec![term_a],
            1,
        ))
        .await
        .expect("store works");
    assert!(first.is_ok(), "a create of a new id succeeds");
    let again = store
        .write(write(
            version("a", 1, Method::Create, 1_001),
            Expect::Absent,
            vec![],
            2,
        ))
        .await
        .expect("store works");
    assert_eq!(
        again,
        Err(WriteConflict::VersionMismatch { current: Some(1) })
    );

    // Update with the right and the wrong expectation.
    let updated = store
        .write(write(
            version("a", 2, Method::Update, 2_000),
            Expect::Current(1),
            vec![term_b],
            3,
        ))
        .await
        .expect("store works");
    assert!(updated.is_ok());
    let stale = store
        .write(write(
            version("a", 3, Method::Update, 2_001),
            Expect::Current(1),
            vec![],
            4,
        ))
        .await
        .expect("store works");
    assert_eq!(
        stale,
        Err(WriteConflict::VersionMismatch { current: Some(2) })
    );

    let current = store
        .read_current("t", "Patient", "a")
        .await
        .expect("read")
        .expect("exists");
    assert_eq!(current.version, 2);
    assert_eq!(current.sealed_body.as_deref(), Some(b"a@2".as_slice()));
    let old = store
        .read_version("t", "Patient", "a", 1)
        .await
        .expect("read")
        .expect("kept");
    assert_eq!(
        old.sealed_body.as_deref(),
        Some(b"a@1".as_slice()),
        "history is never rewritten"
    );
    assert!(
        store
            .read_current("other", "Patient", "a")
            .await
            .expect("read")
            .is_none(),
        "tenants are apart"
    );

    // Index terms follow the current version only.
    let query = |terms: Vec<IndexTerm>| CurrentQuery {
        tenant: "t".into(),
        resource_type: "Patient".into(),
        id: None,
        terms,
        after_seq: None,
        limit: 10,
    };
    assert!(
        store
            .find_current(query(vec![term_a]))
            .await
            .expect("find")
            .is_empty()
    );
    assert_eq!(
        store
            .find_current(query(vec![term_b]))
            .await
            .expect("find")
            .len(),
        1
    );

    // A guard that matches refuses the write.
    let mut guarded = write(
        version("b", 1, Method::Create, 3_000),
        Expect::Absent,
        vec![term_b],
        5,
    );
    guarded.guard = Some(NoMatchGuard {
        terms: vec![term_b],
    });
    let refused = store.write(guarded).await.expect("store works");
    assert_eq!(
        refused,
        Err(WriteConflict::GuardMatched {
            ids: vec!["a".into()]
        })
    );
    assert!(
        store
            .read_current("t", "Patient", "b")
            .await
            .expect("read")
            .is_none()
    );

    // Delete: a version without a body; deleted resources leave searches.
    let deleted = store
        .write(write(
            version("a", 3, Method::Delete, 4_000),
            Expect::Current(2),
            vec![],
            6,
        ))
        .await
        .expect("store works");
    assert!(deleted.is_ok());
    let current = store
        .read_current("t", "Patient", "a")
        .await
        .expect("read")
        .expect("exists");
    assert!(current.is_deleted() && current.sealed_body.is_none());
    assert!(
        store
            .find_current(query(vec![]))
            .await
            .expect("find")
            .is_empty()
    );

    // History, newest first, with since and paging.
    let history = store
        .history(HistoryQuery {
            tenant: "t".into(),
            resource_type: Some("Patient".into()),
            id: Some("a".into()),
            since_micros: None,
            before_seq: None,
            limit: 10,
        })
        .await
        .expect("history");
    assert_eq!(
        history.iter().map(|v| v.version).collect::<Vec<_>>(),
        vec![3, 2, 1]
    );
    let page = store
        .history(HistoryQuery {
            tenant: "t".into(),
            resource_type: None,
            id: None,
            since_micros: Some(2_000),
            before_seq: history.first().map(|v| v.seq),
            limit: 10,
        })
        .await
        .expect("history");
    assert_eq!(page.iter().map(|v| v.version).collect::<Vec<_>>(), vec![2]);

    // The audit trail: only successful writes and appended records, in order, gap-free.
    store.append_audit(audit(7)).await.expect("append");
    let trail = store.audit_scan(0, 100).await.expect("scan");
    let ids: Vec<&str> = trail.iter().map(|a| a.record_id.as_str()).collect();
    assert_eq!(
        ids,
        vec!["rec-1", "rec-3", "rec-6", "rec-7"],
        "refused writes leave no record"
    );
    assert!(
        trail
            .windows(2)
            .all(|w| w.get(1).map(|b| b.seq) == w.first().map(|a| a.seq + 1))
    );
    let newest = store.audit_page(None, 1).await.expect("page");
    assert_eq!(newest.first().map(|a| a.record_id.as_str()), Some("rec-7"));
    let last_seq = newest.first().map(|a| a.seq).unwrap_or_default();
    assert!(store.audit_get(last_seq).await.expect("get").is_some());

    // Client-assertion ids are single-use.
    assert!(store.use_jti("c", "j1", i64::MAX).await.expect("jti"));
    assert!(!store.use_jti("c", "j1", i64::MAX).await.expect("jti"));
    assert!(
        store.use_jti("d", "j1", i64::MAX).await.expect("jti"),
        "per client"
    );

    // Keys and clients.
    store
        .save_key(StoredKey {
            key_id: "k1".into(),
            purpose: "data".into(),
            tenant: "t".into(),
            kek_id: "kek".into(),
            wrapped: vec![9; 44],
            created_unix: 1,
        })
        .await
        .expect("save key");
    assert_eq!(store.load_keys().await.expect("keys").len(), 1);
    let rewrapped = StoredKey {
        key_id: "k1".into(),
        purpose: "data".into(),
        tenant: "t".into(),
        kek_id: "kek2".into(),
        wrapped: vec![7; 44],
        created_unix: 1,
    };
    assert!(store.rewrap_key(rewrapped).await.expect("rewrap"));
    let keys = store.load_keys().await.expect("keys");
    assert_eq!(keys.first().map(|k| k.kek_id.as_str()), Some("kek2"));
    let client = ClientRecord {
        client_id: "c1".into(),
        name: "n".into(),
        jwks: Some("{}".into()),
        jwks_uri: None,
        scope: "system/*.rs".into(),
        created_unix: 1,
    };
    store.add_client(client.clone()).await.expect("add");
    assert_eq!(store.get_client("c1").await.expect("get"), Some(client));
    assert_eq!(store.list_clients().await.expect("list").len(), 1);
    assert!(store.remove_client("c1").await.expect("remove"));
    assert!(!store.remove_client("c1").await.expect("remove"));
}
