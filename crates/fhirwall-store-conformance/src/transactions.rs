//! Transactions (`write_all`): every write of a FHIR transaction and every audit record of it
//! commit together or not at all; each write is checked against the state the earlier ones
//! leave; the chain holds the writes' records in order, then the transaction's own record.

use fhirwall_store::{
    CurrentQuery, Expect, IndexTerm, Method, NoMatchGuard, ResourceKey, Store, StoredAudit,
    TransactionConflict, TransactionRequest, WriteConflict, WriteRequest,
};

use crate::{Story, body, key, pointer_tag, put, request, rid, tenant, term, version_tag, write};

/// The tenant every resource of this module lives in.
const TENANT: &str = "transactions";

fn patient(id: &str) -> ResourceKey {
    key(TENANT, "Patient", id)
}

fn create(story: &mut Story, key: &ResourceKey, terms: &[u8]) -> WriteRequest {
    let terms = terms.iter().copied().map(term).collect();
    request(story, key, 1, Method::Create, 10_000, Expect::Absent, terms)
}

fn update(story: &mut Story, key: &ResourceKey, version: u64, terms: &[u8]) -> WriteRequest {
    let terms = terms.iter().copied().map(term).collect();
    let expect = Expect::Current(version - 1);
    request(story, key, version, Method::Update, 10_000, expect, terms)
}

fn guarded(mut write: WriteRequest, terms: &[u8]) -> WriteRequest {
    write.guard = Some(NoMatchGuard {
        terms: terms.iter().copied().map(term).collect(),
    });
    write
}

fn transaction(story: &mut Story, writes: Vec<WriteRequest>) -> TransactionRequest {
    TransactionRequest {
        writes,
        audit: story.audit(&tenant(TENANT)),
    }
}

/// Sends a transaction and, when it was applied, notes its records in the chain order the
/// interface fixes: each write's, in order, then the transaction's own.
async fn transact(
    store: &dyn Store,
    story: &mut Story,
    request: TransactionRequest,
) -> Result<Vec<u64>, TransactionConflict> {
    let records = record_ids(&request);
    let result = store.write_all(request).await.expect("the store works");
    if result.is_ok() {
        for record in &records {
            story.committed(record);
        }
    }
    result
}

/// The transaction's record ids in chain order.
fn record_ids(request: &TransactionRequest) -> Vec<String> {
    request
        .writes
        .iter()
        .map(|w| &w.audit.record_id)
        .chain([&request.audit.record_id])
        .cloned()
        .collect()
}

/// Every stored audit record, oldest first.
async fn trail(store: &dyn Store) -> Vec<StoredAudit> {
    let mut records: Vec<StoredAudit> = Vec::new();
    loop {
        let after = records.last().map_or(0, |r| r.seq);
        let page = store.audit_scan(after, 500).await.expect("scan");
        if page.is_empty() {
            return records;
        }
        records.extend(page);
    }
}

/// The ids of current, non-deleted patients of this module carrying `term`.
async fn carrying(store: &dyn Store, term: IndexTerm) -> Vec<String> {
    let query = CurrentQuery {
        tenant: tenant(TENANT),
        resource_type: fhirwall_store::ResourceType::parse("Patient").expect("a FHIR type"),
        clauses: vec![fhirwall_store::Clause::Terms(vec![term])],
        after_seq: None,
        up_to_seq: None,
        limit: 100,
    };
    let found = store.find_current(query).await.expect("find");
    found.iter().map(|v| v.key.id.to_string()).collect()
}

async fn current_version(store: &dyn Store, key: &ResourceKey) -> Option<u64> {
    let current = store.read_current(key).await.expect("read");
    current.map(|c| c.version.version)
}

pub(crate) async fn all_or_nothing(store: &dyn Store, story: &mut Story) {
    applied_in_order(store, story).await;
    a_late_conflict_stores_nothing(store, story).await;
    checks_see_earlier_writes(store, story).await;
    empty_transaction(store, story).await;
    beside_single_writes(store, story).await;
}

/// Terms: 20 = A's first, 21 = A's second, 22 = B's.
async fn applied_in_order(store: &dyn Store, story: &mut Story) {
    let (a, b) = (patient("a"), patient("b"));
    let before = trail(store).await.len();
    let writes = vec![
        create(story, &a, &[20]),
        // No one carries 22 yet; B will.
        guarded(create(story, &b, &[22]), &[22]),
        update(story, &a, 2, &[21]),
    ];
    let request = transaction(story, writes);
    let records = record_ids(&request);
    let seqs = transact(store, story, request)
        .await
        .expect("create A, guarded create B, update A expecting 1");
    assert_eq!(seqs.len(), 3, "one sequence number per write");
    assert!(
        seqs[0] < seqs[1] && seqs[1] < seqs[2],
        "sequence numbers in the order of the writes: {seqs:?}"
    );

    let first = store
        .read_version(&a, 1)
        .await
        .expect("read")
        .expect("the version a transaction replaced is kept");
    assert_eq!(first.seq, seqs[0]);
    assert_eq!(first.method, Method::Create);
    assert_eq!(first.sealed_body, Some(body(&a, 1)));
    assert_eq!(first.tag, Some(version_tag(&a, 1)));
    let current = store.read_current(&a).await.expect("read").expect("A");
    assert_eq!(current.version.version, 2);
    assert_eq!(current.version.seq, seqs[2]);
    assert_eq!(current.version.method, Method::Update);
    assert_eq!(current.version.sealed_body, Some(body(&a, 2)));
    assert_eq!(current.version.tag, Some(version_tag(&a, 2)));
    assert_eq!(
        current.pointer_tag,
        Some(pointer_tag(&a, 2)),
        "the pointer the last write of A leaves"
    );
    let current = store.read_current(&b).await.expect("read").expect("B");
    assert_eq!(current.version.version, 1);
    assert_eq!(current.version.seq, seqs[1]);
    assert_eq!(current.pointer_tag, Some(pointer_tag(&b, 1)));

    assert!(
        carrying(store, term(20)).await.is_empty(),
        "a later write of the transaction replaces an earlier one's terms"
    );
    assert_eq!(carrying(store, term(21)).await, ["a"]);
    assert_eq!(carrying(store, term(22)).await, ["b"]);

    let trail = trail(store).await;
    let added: Vec<&str> = trail[before..]
        .iter()
        .map(|r| r.record_id.as_str())
        .collect();
    assert_eq!(
        added, records,
        "the writes' records in order, then the transaction's own, one after another"
    );
    assert!(
        trail
            .iter()
            .rev()
            .take(4)
            .all(|r| r.tenant.as_str() == TENANT),
        "each record keeps its tenant"
    );
}

/// Terms: 23 = C's, 24 = A's third version (never stored).
async fn a_late_conflict_stores_nothing(store: &dyn Store, story: &mut Story) {
    let (a, b, c) = (patient("a"), patient("b"), patient("c"));
    let before = trail(store).await;
    let writes = vec![
        create(story, &c, &[23]),
        update(story, &a, 3, &[24]),
        // B exists: the last write conflicts after two that would have applied.
        create(story, &b, &[]),
    ];
    let request = transaction(story, writes);
    assert_eq!(
        transact(store, story, request).await,
        Err(TransactionConflict {
            index: 2,
            conflict: WriteConflict::VersionMismatch { current: Some(1) }
        }),
        "the first failing write is named"
    );

    assert_eq!(
        current_version(store, &c).await,
        None,
        "an earlier write of a refused transaction is not stored"
    );
    assert!(store.read_version(&c, 1).await.expect("read").is_none());
    let current = store.read_current(&a).await.expect("read").expect("A");
    assert_eq!(current.version.version, 2, "nor is an earlier update");
    assert_eq!(current.pointer_tag, Some(pointer_tag(&a, 2)));
    assert!(store.read_version(&a, 3).await.expect("read").is_none());
    assert!(
        carrying(store, term(23)).await.is_empty() && carrying(store, term(24)).await.is_empty(),
        "nor are its terms"
    );
    assert_eq!(
        carrying(store, term(21)).await,
        ["a"],
        "and the terms it would have replaced stay"
    );
    let after = trail(store).await;
    assert_eq!(
        after.len(),
        before.len(),
        "a refused transaction stores no audit record at all"
    );

    // A conflict in the first write is named as such.
    let writes = vec![update(story, &a, 2, &[]), create(story, &c, &[])];
    let request = transaction(story, writes);
    assert_eq!(
        transact(store, story, request).await,
        Err(TransactionConflict {
            index: 0,
            conflict: WriteConflict::VersionMismatch { current: Some(2) }
        })
    );

    // Nothing is left behind that would stand in the way of the same writes done right.
    let writes = vec![create(story, &c, &[23]), update(story, &a, 3, &[24])];
    let request = transaction(story, writes);
    transact(store, story, request)
        .await
        .expect("the refused writes apply once their expectations hold");
    assert_eq!(current_version(store, &c).await, Some(1));
    assert_eq!(current_version(store, &a).await, Some(3));
    assert_eq!(carrying(store, term(24)).await, ["a"]);
}

/// Terms: 30 = D's, 31 = E's.
async fn checks_see_earlier_writes(store: &dyn Store, story: &mut Story) {
    let (d, e, f, g) = (patient("d"), patient("e"), patient("f"), patient("g"));
    let before = trail(store).await.len();

    let writes = vec![create(story, &d, &[30]), create(story, &d, &[30])];
    let request = transaction(story, writes);
    assert_eq!(
        transact(store, story, request).await,
        Err(TransactionConflict {
            index: 1,
            conflict: WriteConflict::VersionMismatch { current: Some(1) }
        }),
        "two creates of one id: the second sees the first"
    );

    let writes = vec![
        create(story, &d, &[30]),
        guarded(create(story, &e, &[]), &[30]),
    ];
    let request = transaction(story, writes);
    assert_eq!(
        transact(store, story, request).await,
        Err(TransactionConflict {
            index: 1,
            conflict: WriteConflict::GuardMatched {
                ids: vec![rid("d")]
            }
        }),
        "a guard matches a term an earlier write of the same transaction stored"
    );
    assert_eq!(current_version(store, &d).await, None);
    assert_eq!(current_version(store, &e).await, None);
    assert!(carrying(store, term(30)).await.is_empty());
    assert_eq!(trail(store).await.len(), before, "no record of either");

    // The other way round: an earlier write that removes the match lets the guard pass.
    put(store, story, &f, 1, 11_000, vec![term(31)]).await;
    let writes = vec![
        update(story, &f, 2, &[]),
        guarded(create(story, &g, &[]), &[31]),
    ];
    let request = transaction(story, writes);
    transact(store, story, request)
        .await
        .expect("the guard sees F as the earlier write left it");
    assert_eq!(current_version(store, &g).await, Some(1));
}

async fn empty_transaction(store: &dyn Store, story: &mut Story) {
    let before = trail(store).await;
    let request = transaction(story, Vec::new());
    let record = request.audit.clone();
    let seqs = transact(store, story, request)
        .await
        .expect("a transaction without writes");
    assert!(seqs.is_empty());
    let after = trail(store).await;
    assert_eq!(
        after.len(),
        before.len() + 1,
        "it stores its own record and nothing else"
    );
    let stored = after.last().expect("a record");
    assert_eq!(
        (&stored.tenant, &stored.record_id, &stored.sealed),
        (&record.tenant, &record.record_id, &record.sealed)
    );
}

/// Single writes and transactions sent at once (likely one group commit): each applies, or is
/// refused, on its own.
async fn beside_single_writes(store: &dyn Store, story: &mut Story) {
    let (h, i, j, k, l) = (
        patient("h"),
        patient("i"),
        patient("j"),
        patient("k"),
        patient("l"),
    );
    let (single_h, single_l) = (create(story, &h, &[40]), create(story, &l, &[]));
    let writes = vec![create(story, &i, &[41]), update(story, &i, 2, &[42])];
    let applied = transaction(story, writes);
    // J is created, then K conflicts (it never existed): J must not stay.
    let writes = vec![create(story, &j, &[43]), update(story, &k, 2, &[])];
    let refused = transaction(story, writes);
    let groups = [
        vec![single_h.audit.record_id.clone()],
        record_ids(&applied),
        vec![single_l.audit.record_id.clone()],
    ];
    let (h_seq, applied_seqs, refused_result, l_seq) = tokio::join!(
        store.write(single_h),
        store.write_all(applied),
        store.write_all(refused),
        store.write(single_l),
    );
    let h_seq = h_seq.expect("the store works").expect("H is created");
    let applied_seqs = applied_seqs
        .expect("the store works")
        .expect("the transaction on I applies");
    let l_seq = l_seq
        .expect("the store works")
        .expect("a refused transaction beside it does not refuse L");
    assert_eq!(
        refused_result.expect("the store works"),
        Err(TransactionConflict {
            index: 1,
            conflict: WriteConflict::VersionMismatch { current: None }
        })
    );
    assert_eq!(current_version(store, &h).await, Some(1));
    assert_eq!(current_version(store, &i).await, Some(2));
    assert_eq!(current_version(store, &l).await, Some(1));
    assert_eq!(current_version(store, &j).await, None);
    assert_eq!(carrying(store, term(40)).await, ["h"]);
    assert_eq!(carrying(store, term(42)).await, ["i"]);
    assert!(carrying(store, term(43)).await.is_empty());

    // The story learns the commit order from the sequence numbers: a transaction's records
    // come together, after its last write.
    let mut ordered: Vec<(u64, &Vec<String>)> = [h_seq, applied_seqs[0], l_seq]
        .into_iter()
        .zip(groups.iter())
        .collect();
    ordered.sort_by_key(|(seq, _)| *seq);
    for (_, records) in ordered {
        for record in records {
            story.committed(record);
        }
    }

    // A write that expects what a concurrent transaction left sees it.
    let after = update(story, &i, 3, &[]);
    write(store, story, after)
        .await
        .expect("an update of I expecting the transaction's last version");
}
