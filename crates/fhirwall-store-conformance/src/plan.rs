//! `find_current` and `count_current`: the AND of clauses (terms, ids, last-update windows)
//! over current, non-deleted resources of one type, with the `after_seq`, `up_to_seq` and
//! `limit` restrictions, in commit order.

use fhirwall_store::{Clause, CurrentQuery, ResourceId, Store};

use crate::{Story, delete, key, pointer_tag, put, rid, tenant, term, version_tag};

fn plan(clauses: &[&[u8]]) -> CurrentQuery {
    CurrentQuery {
        tenant: tenant("plan"),
        resource_type: fhirwall_store::ResourceType::parse("Patient").expect("a FHIR type"),
        clauses: clauses
            .iter()
            .map(|clause| Clause::Terms(clause.iter().copied().map(term).collect()))
            .collect(),
        after_seq: None,
        up_to_seq: None,
        limit: 100,
    }
}

async fn ids(store: &dyn Store, query: CurrentQuery) -> Vec<String> {
    store
        .find_current(query)
        .await
        .expect("find")
        .iter()
        .map(|v| v.key.id.to_string())
        .collect()
}

pub(crate) async fn find_current(store: &dyn Store, story: &mut Story) {
    // Terms: 1 = X, 2 = Y, 3 = Z.
    let p = |id: &str| key("plan", "Patient", id);
    put(store, story, &p("p1"), 1, 1_000, vec![term(1), term(2)]).await;
    let p2_seq = put(store, story, &p("p2"), 1, 1_001, vec![term(1)]).await;
    put(store, story, &p("p3"), 1, 1_002, vec![term(2), term(3)]).await;
    put(store, story, &p("p4"), 1, 1_003, vec![term(3)]).await;
    put(store, story, &p("p5"), 1, 1_004, vec![term(1)]).await;
    delete(store, story, &p("p5"), 2, 1_005).await;
    put(
        store,
        story,
        &key("plan-elsewhere", "Patient", "q1"),
        1,
        1_006,
        vec![term(1)],
    )
    .await;
    put(
        store,
        story,
        &key("plan", "Observation", "o1"),
        1,
        1_007,
        vec![term(1)],
    )
    .await;

    assert_eq!(
        ids(store, plan(&[])).await,
        ["p1", "p2", "p3", "p4"],
        "no clause: every current, non-deleted resource of the type, in commit order"
    );
    assert_eq!(ids(store, plan(&[&[1]])).await, ["p1", "p2"], "one term");
    assert_eq!(
        ids(store, plan(&[&[1, 3]])).await,
        ["p1", "p2", "p3", "p4"],
        "a clause holds when any one of its terms is carried; each match comes once"
    );
    assert_eq!(ids(store, plan(&[&[1, 2]])).await, ["p1", "p2", "p3"]);
    assert_eq!(
        ids(store, plan(&[&[1], &[2]])).await,
        ["p1"],
        "every clause must hold"
    );
    assert_eq!(ids(store, plan(&[&[1, 3], &[2]])).await, ["p1", "p3"]);
    assert_eq!(ids(store, plan(&[&[1, 3], &[2], &[3]])).await, ["p3"]);
    assert!(
        ids(store, plan(&[&[9]])).await.is_empty(),
        "an unknown term matches nothing"
    );
    assert!(
        ids(store, plan(&[&[]])).await.is_empty(),
        "a clause with zero terms matches nothing"
    );
    assert!(
        ids(store, plan(&[&[1, 2, 3], &[]])).await.is_empty(),
        "a zero-term clause beside others matches nothing"
    );

    // The id restriction, alone and with terms.
    let with_id = |id: &str, clauses: &[&[u8]]| {
        let mut query = plan(clauses);
        query.clauses.push(Clause::Ids(vec![
            ResourceId::parse(id).expect("a valid id"),
        ]));
        query
    };
    assert_eq!(ids(store, with_id("p3", &[])).await, ["p3"]);
    assert_eq!(ids(store, with_id("p2", &[&[1]])).await, ["p2"]);
    assert!(
        ids(store, with_id("p3", &[&[1]])).await.is_empty(),
        "id and terms both hold"
    );
    assert!(
        ids(store, with_id("p5", &[])).await.is_empty(),
        "deleted ones never match"
    );
    assert!(
        ids(store, with_id("o1", &[])).await.is_empty(),
        "the type holds"
    );

    let either = {
        let mut query = plan(&[]);
        query.clauses.push(Clause::Ids(vec![
            ResourceId::parse("p4").expect("a valid id"),
            ResourceId::parse("p1").expect("a valid id"),
            ResourceId::parse("nothing").expect("a valid id"),
        ]));
        query
    };
    assert_eq!(
        ids(store, either).await,
        ["p1", "p4"],
        "ids are alternatives"
    );
    let no_ids = {
        let mut query = plan(&[]);
        query.clauses.push(Clause::Ids(vec![]));
        query
    };
    assert!(ids(store, no_ids).await.is_empty(), "no id admits nothing");

    // Last-update windows (microseconds, inclusive), as alternatives.
    let updated = |windows: Vec<(Option<i64>, Option<i64>)>| {
        let mut query = plan(&[]);
        query.clauses.push(Clause::Updated(windows));
        query
    };
    assert_eq!(
        ids(store, updated(vec![(Some(1_001), Some(1_002))])).await,
        ["p2", "p3"],
        "both ends inclusive"
    );
    assert_eq!(
        ids(
            store,
            updated(vec![(None, Some(1_000)), (Some(1_003), None)])
        )
        .await,
        ["p1", "p4"],
        "open ends; windows are alternatives"
    );
    let updated_and_term = {
        let mut query = updated(vec![(Some(1_001), None)]);
        query.clauses.push(Clause::Terms(vec![term(2)]));
        query
    };
    assert_eq!(ids(store, updated_and_term).await, ["p3"]);

    // Counting: the same plan, without after_seq or limit.
    let counted = CurrentQuery {
        limit: 1,
        after_seq: Some(u64::MAX / 2),
        ..plan(&[&[1, 3]])
    };
    assert_eq!(store.count_current(counted).await.expect("count"), 4);
    assert_eq!(
        store
            .count_current(plan(&[&[1], &[]]))
            .await
            .expect("count"),
        0
    );

    // Paging: after_seq and limit.
    let page = CurrentQuery {
        limit: 2,
        ..plan(&[&[1, 3]])
    };
    let first = store.find_current(page.clone()).await.expect("find");
    assert_eq!(
        crate::names(&first),
        ["Patient/p1@1", "Patient/p2@1"],
        "limit"
    );
    let after = first.last().map(|v| v.seq);
    assert_eq!(after, Some(p2_seq));
    let second = CurrentQuery {
        after_seq: after,
        ..page.clone()
    };
    assert_eq!(ids(store, second.clone()).await, ["p3", "p4"], "after_seq");
    let third = CurrentQuery {
        after_seq: store
            .find_current(second)
            .await
            .expect("find")
            .last()
            .map(|v| v.seq),
        ..page
    };
    assert!(ids(store, third).await.is_empty());

    // Other types and tenants see only their own.
    let observations = CurrentQuery {
        resource_type: fhirwall_store::ResourceType::parse("Observation").expect("a FHIR type"),
        ..plan(&[&[1]])
    };
    assert_eq!(ids(store, observations).await, ["o1"]);
    let elsewhere = CurrentQuery {
        tenant: tenant("plan-elsewhere"),
        ..plan(&[&[1]])
    };
    assert_eq!(ids(store, elsewhere).await, ["q1"]);

    // Results are whole versions with their tags; terms follow the current version, and
    // commit order is the order of the current versions' commits.
    let found = store.find_current(plan(&[&[2]])).await.expect("find");
    let p1 = found.first().expect("p1 matches");
    assert_eq!(p1.key, p("p1"));
    assert_eq!(p1.tag, Some(version_tag(&p("p1"), 1)));
    assert_eq!(p1.sealed_body, Some(crate::body(&p("p1"), 1)));
    put(store, story, &p("p2"), 2, 2_000, vec![term(3)]).await;
    assert_eq!(
        ids(store, plan(&[&[1]])).await,
        ["p1"],
        "old terms are gone"
    );
    assert_eq!(ids(store, plan(&[&[1, 3]])).await, ["p1", "p3", "p4", "p2"]);
    // A snapshot: only current versions committed up to a sequence number.
    let snapshot = CurrentQuery {
        up_to_seq: Some(p2_seq + 2),
        ..plan(&[&[1, 3]])
    };
    assert_eq!(ids(store, snapshot.clone()).await, ["p1", "p3", "p4"]);
    assert_eq!(store.count_current(snapshot).await.expect("count"), 3);
    // The type as it stood at the snapshot: p2 changed since, so its version 1 is what it was.
    let patients = fhirwall_store::ResourceType::parse("Patient").expect("a FHIR type");
    let then = store
        .versions_at(&tenant("plan"), &patients, p2_seq + 2, None, 100)
        .await
        .expect("versions at");
    assert_eq!(crate::names(&then), ["Patient/p2@1"]);
    assert!(
        store
            .versions_at(&tenant("plan"), &patients, p2_seq + 2, Some(p2_seq), 100)
            .await
            .expect("versions at")
            .is_empty(),
        "after_seq applies to the old version's own commit"
    );
    assert!(store.last_seq().await.expect("last seq") > p2_seq + 2);
    // An update that keeps some terms and drops others.
    put(store, story, &p("p3"), 2, 2_001, vec![term(3), term(4)]).await;
    assert_eq!(
        ids(store, plan(&[&[2]])).await,
        ["p1"],
        "a dropped term is gone"
    );
    assert_eq!(
        ids(store, plan(&[&[3]])).await,
        ["p4", "p2", "p3"],
        "a kept term stays"
    );
    assert_eq!(
        ids(store, plan(&[&[4]])).await,
        ["p3"],
        "an added term is there"
    );
    delete(store, story, &p("p3"), 3, 2_002).await;
    assert_eq!(
        ids(store, plan(&[&[3]])).await,
        ["p4", "p2"],
        "a deleted one has none"
    );
    put(store, story, &p("p3"), 4, 2_003, vec![term(2)]).await;
    assert_eq!(
        ids(store, plan(&[&[2]])).await,
        ["p1", "p3"],
        "recreated with new terms"
    );
    assert!(ids(store, plan(&[&[4]])).await.is_empty());

    // A reindex replaces the terms of versions that are still current, and only those.
    let replaced = store
        .reindex(vec![
            fhirwall_store::Reindexed {
                key: p("p3"),
                version: 4,
                terms: vec![term(5)],
            },
            fhirwall_store::Reindexed {
                key: p("p1"),
                version: 9,
                terms: vec![term(5)],
            },
            fhirwall_store::Reindexed {
                key: p("nothing"),
                version: 1,
                terms: vec![term(5)],
            },
        ])
        .await
        .expect("reindex");
    assert_eq!(
        replaced, 1,
        "p1 is not at version 9; nothing does not exist"
    );
    assert_eq!(ids(store, plan(&[&[5]])).await, ["p3"]);
    assert_eq!(
        ids(store, plan(&[&[2]])).await,
        ["p1"],
        "p3's old term is gone"
    );
    put(store, story, &p("p3"), 5, 2_004, vec![term(6)]).await;
    assert!(
        ids(store, plan(&[&[5]])).await.is_empty(),
        "a write after a reindex replaces its terms"
    );

    // Settings.
    assert_eq!(store.read_setting("conformance").await.expect("read"), None);
    store
        .write_setting("conformance".into(), "one".into())
        .await
        .expect("write");
    store
        .write_setting("conformance".into(), "two".into())
        .await
        .expect("write");
    assert_eq!(
        store
            .read_setting("conformance")
            .await
            .expect("read")
            .as_deref(),
        Some("two")
    );
    let p2 = store
        .read_current(&p("p2"))
        .await
        .expect("read")
        .expect("exists");
    assert_eq!(p2.pointer_tag, Some(pointer_tag(&p("p2"), 2)));
    assert_eq!(rid("p2"), p2.version.key.id);
}

/// Clauses that each match most resources of a type: a backend may walk commit order instead
/// of reading postings (the embedded store does past a cost), and must give the same answer,
/// in the same order, also past the window such a walk covers (6,000 resources here).
pub(crate) async fn broad_clauses(store: &dyn Store, story: &mut Story) {
    const N: usize = 6_000;
    let tenant_name = "plan-broad";
    let mut expected = Vec::new();
    for chunk in 0..N / 500 {
        let mut writes = Vec::new();
        for i in chunk * 500..(chunk + 1) * 500 {
            let id = format!("b{i}");
            // A (term 20) on all, B (term 21) on five of six; terms 22-27 on none.
            let mut terms = vec![term(20)];
            if i % 6 != 0 {
                terms.push(term(21));
                expected.push(id.clone());
            }
            let key = key(tenant_name, "Patient", &id);
            writes.push(crate::request(
                story,
                &key,
                1,
                fhirwall_store::Method::Create,
                10_000,
                fhirwall_store::Expect::Absent,
                terms,
            ));
        }
        let records: Vec<String> = writes.iter().map(|w| w.audit.record_id.clone()).collect();
        let request = fhirwall_store::TransactionRequest {
            writes,
            audit: story.audit(&tenant(tenant_name)),
        };
        let own = request.audit.record_id.clone();
        store
            .write_all(request)
            .await
            .expect("the store works")
            .expect("the batch is created");
        for record in records {
            story.committed(&record);
        }
        story.committed(&own);
    }
    let query = |limit: usize, after_seq: Option<u64>| CurrentQuery {
        tenant: tenant(tenant_name),
        resource_type: fhirwall_store::ResourceType::parse("Patient").expect("a FHIR type"),
        clauses: vec![
            Clause::Terms([20, 22, 23, 24].map(term).to_vec()),
            Clause::Terms([21, 25, 26, 27].map(term).to_vec()),
        ],
        after_seq,
        up_to_seq: None,
        limit,
    };
    assert_eq!(
        ids(store, query(N, None)).await,
        expected,
        "broad clauses: every match, in commit order, across the whole type"
    );
    assert_eq!(
        ids(store, query(100, None)).await,
        expected[..100],
        "broad clauses: the first page"
    );
    let all = store.find_current(query(N, None)).await.expect("find");
    let middle = all.get(4_500).map(|v| v.seq);
    assert_eq!(
        ids(store, query(N, middle)).await,
        expected[4_501..],
        "broad clauses: after a position past the middle"
    );
    assert_eq!(
        store.count_current(query(0, None)).await.expect("count"),
        expected.len() as u64,
        "broad clauses: the count"
    );
}
