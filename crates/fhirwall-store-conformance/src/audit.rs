//! The audit trail: gap-free, linked by the chain the store was started with in commit order,
//! holding exactly the applied writes' records and the appended ones; pages and lookups are
//! per tenant, the scan walks every tenant's records.

use fhirwall_store::{AuditChain, SealedAudit, Store, StoredAudit};

use crate::{Story, TestChain, tenant};

fn same(stored: &StoredAudit, sent: &SealedAudit) -> bool {
    stored.tenant == sent.tenant
        && stored.record_id == sent.record_id
        && stored.recorded_micros == sent.recorded_micros
        && stored.sealed == sent.sealed
}

pub(crate) async fn trail(store: &dyn Store, story: &mut Story) {
    let (ta, tb) = (tenant("audit-a"), tenant("audit-b"));
    let first = story.audit(&ta);
    let seq = store.append_audit(first.clone()).await.expect("append");
    story.committed(&first.record_id);
    let got = store
        .audit_get(&ta, seq)
        .await
        .expect("get")
        .expect("stored");
    assert!(same(&got, &first), "a record round-trips");
    assert_eq!(got.seq, seq);

    // Records appended at once are numbered and linked in the order they commit.
    let sent = [story.audit(&tb), story.audit(&ta), story.audit(&tb)];
    let (one, two, three) = tokio::join!(
        store.append_audit(sent[0].clone()),
        store.append_audit(sent[1].clone()),
        store.append_audit(sent[2].clone())
    );
    let mut appended: Vec<(u64, &SealedAudit)> = [one, two, three]
        .into_iter()
        .map(|r| r.expect("append"))
        .zip(sent.iter())
        .collect();
    appended.sort_by_key(|(seq, _)| *seq);
    for (_, record) in &appended {
        story.committed(&record.record_id);
    }
    let a_seq = appended
        .iter()
        .find(|(_, r)| r.tenant == ta)
        .map(|(seq, _)| *seq)
        .expect("one of A's");
    let b_seq = appended
        .iter()
        .find(|(_, r)| r.tenant == tb)
        .map(|(seq, _)| *seq)
        .expect("one of B's");

    // The scan: every record once, numbered from 1 without gaps, each linked to the one
    // before by the chain the store was started with.
    let mut scanned: Vec<StoredAudit> = Vec::new();
    loop {
        let after = scanned.last().map_or(0, |r| r.seq);
        let page = store.audit_scan(after, 7).await.expect("scan");
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= 7, "limit");
        scanned.extend(page);
    }
    let ids: Vec<&str> = scanned.iter().map(|r| r.record_id.as_str()).collect();
    assert_eq!(
        ids, story.committed,
        "the trail holds the records of applied writes and appends, in commit order, and \
         nothing of refused ones"
    );
    let mut previous: Vec<u8> = Vec::new();
    for (n, record) in scanned.iter().enumerate() {
        assert_eq!(
            record.seq,
            n as u64 + 1,
            "records are numbered 1, 2, 3... without gaps"
        );
        let expected = TestChain.link(&previous, record.seq, &record.record_id, &record.sealed);
        assert_eq!(
            record.link, expected,
            "record {} is linked by the chain",
            record.seq
        );
        previous = record.link.clone();
    }

    // Pages and lookups hold only the tenant's records.
    let page_a = store.audit_page(&ta, None, 100).await.expect("page");
    let seqs_a: Vec<u64> = scanned
        .iter()
        .rev()
        .filter(|r| r.tenant == ta)
        .map(|r| r.seq)
        .collect();
    assert_eq!(page_a.iter().map(|r| r.seq).collect::<Vec<_>>(), seqs_a);
    assert_eq!(seqs_a.len(), 2, "A has two records");
    let newest_a = store.audit_page(&ta, None, 1).await.expect("page");
    assert_eq!(
        newest_a.first().map(|r| r.seq),
        seqs_a.first().copied(),
        "newest first"
    );
    let older_a = store
        .audit_page(&ta, seqs_a.first().copied(), 10)
        .await
        .expect("page");
    assert_eq!(
        older_a.iter().map(|r| r.seq).collect::<Vec<_>>(),
        seqs_a[1..]
    );
    let page_b = store.audit_page(&tb, None, 100).await.expect("page");
    assert_eq!(page_b.len(), 2);
    assert!(page_b.iter().all(|r| r.tenant == tb));
    let whole = scanned.iter().find(|r| r.seq == b_seq).expect("scanned");
    let got = store
        .audit_get(&tb, b_seq)
        .await
        .expect("get")
        .expect("B's own");
    assert_eq!(
        (got.seq, &got.record_id, &got.sealed, &got.link),
        (whole.seq, &whole.record_id, &whole.sealed, &whole.link)
    );
    assert!(
        store.audit_get(&ta, b_seq).await.expect("get").is_none(),
        "one tenant cannot read another's record"
    );
    assert!(store.audit_get(&tb, a_seq).await.expect("get").is_none());
    let last = scanned.last().map_or(0, |r| r.seq);
    assert!(store.audit_get(&ta, last + 1).await.expect("get").is_none());
    let writes = store
        .audit_page(&tenant("versions"), None, 100)
        .await
        .expect("page");
    assert!(
        !writes.is_empty() && writes.iter().all(|r| r.tenant.as_str() == "versions"),
        "a write's record belongs to the written resource's tenant"
    );
}
