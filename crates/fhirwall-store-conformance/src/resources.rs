//! Versions, expectations, integrity tags and no-match guards: a write applies only when the
//! state it expects is there, stores nothing when refused, and never rewrites history.

use fhirwall_store::{Expect, Method, NoMatchGuard, Store, WriteConflict};

use crate::{Story, body, delete, key, pointer_tag, put, request, rid, term, version_tag, write};

pub(crate) async fn versions_and_expectations(store: &dyn Store, story: &mut Story) {
    let a = key("versions", "Patient", "a");

    let first = put(store, story, &a, 1, 1_000, vec![term(1)]).await;
    let current = store
        .read_current(&a)
        .await
        .expect("read")
        .expect("a create is readable");
    assert_eq!(current.version.key, a);
    assert_eq!(current.version.version, 1);
    assert_eq!(
        current.version.seq, first,
        "write answers the version's seq"
    );
    assert_eq!(current.version.method, Method::Create);
    assert_eq!(current.version.last_updated_micros, 1_000);
    assert_eq!(current.version.sealed_body, Some(body(&a, 1)));
    assert_eq!(
        current.version.tag,
        Some(version_tag(&a, 1)),
        "version tag round-trips"
    );
    assert_eq!(
        current.pointer_tag,
        Some(pointer_tag(&a, 1)),
        "pointer tag round-trips"
    );

    let again = request(story, &a, 1, Method::Create, 1_001, Expect::Absent, vec![]);
    assert_eq!(
        write(store, story, again).await,
        Err(WriteConflict::VersionMismatch { current: Some(1) }),
        "a create of an existing id is refused"
    );

    let second = put(store, story, &a, 2, 2_000, vec![term(2)]).await;
    assert!(second > first, "seq grows with commit order");
    let current = store.read_current(&a).await.expect("read").expect("exists");
    assert_eq!(current.version.version, 2);
    assert_eq!(current.version.method, Method::Update);
    assert_eq!(current.version.sealed_body, Some(body(&a, 2)));
    assert_eq!(current.version.tag, Some(version_tag(&a, 2)));
    assert_eq!(
        current.pointer_tag,
        Some(pointer_tag(&a, 2)),
        "each write replaces the pointer tag"
    );

    let stale = request(
        story,
        &a,
        3,
        Method::Update,
        2_001,
        Expect::Current(1),
        vec![],
    );
    assert_eq!(
        write(store, story, stale).await,
        Err(WriteConflict::VersionMismatch { current: Some(2) }),
        "an update that expects an old version is refused"
    );
    let nothing = key("versions", "Patient", "never-written");
    let phantom = request(
        story,
        &nothing,
        2,
        Method::Update,
        2_002,
        Expect::Current(1),
        vec![],
    );
    assert_eq!(
        write(store, story, phantom).await,
        Err(WriteConflict::VersionMismatch { current: None })
    );
    assert!(store.read_current(&nothing).await.expect("read").is_none());
    let after_refusals = store.read_current(&a).await.expect("read").expect("exists");
    assert_eq!(after_refusals.version.version, 2);
    assert_eq!(
        after_refusals.pointer_tag,
        Some(pointer_tag(&a, 2)),
        "a refused write stores nothing, not even its pointer tag"
    );

    let old = store
        .read_version(&a, 1)
        .await
        .expect("read")
        .expect("old versions are kept");
    assert_eq!(
        old.sealed_body,
        Some(body(&a, 1)),
        "history is never rewritten"
    );
    assert_eq!(old.tag, Some(version_tag(&a, 1)));
    assert_eq!(old.seq, first);
    assert!(store.read_version(&a, 3).await.expect("read").is_none());

    // A version written without a tag (as before tags existed) comes back without one.
    let untagged_key = key("versions", "Patient", "untagged");
    let mut untagged = request(
        story,
        &untagged_key,
        1,
        Method::Create,
        3_000,
        Expect::Absent,
        vec![],
    );
    untagged.version.tag = None;
    write(store, story, untagged).await.expect("created");
    let read = store
        .read_current(&untagged_key)
        .await
        .expect("read")
        .expect("exists");
    assert_eq!(read.version.tag, None);

    // Tenants and types are apart.
    for other in [
        key("elsewhere", "Patient", "a"),
        key("versions", "Observation", "a"),
    ] {
        assert!(store.read_current(&other).await.expect("read").is_none());
        assert!(store.read_version(&other, 1).await.expect("read").is_none());
    }
    let same_id_elsewhere = key("elsewhere", "Patient", "a");
    put(store, story, &same_id_elsewhere, 1, 4_000, vec![]).await;
    let mine = store.read_current(&a).await.expect("read").expect("exists");
    assert_eq!(
        mine.version.version, 2,
        "a write in one tenant leaves another's alone"
    );

    // A delete is a version without a body; it is current and keeps its own tags.
    let deleted = delete(store, story, &a, 3, 5_000).await;
    let current = store
        .read_current(&a)
        .await
        .expect("read")
        .expect("deleted is current");
    assert!(current.version.is_deleted());
    assert_eq!(current.version.sealed_body, None);
    assert_eq!(current.version.seq, deleted);
    assert_eq!(current.version.tag, Some(version_tag(&a, 3)));
    assert_eq!(current.pointer_tag, Some(pointer_tag(&a, 3)));
    // Recreating after a delete expects the deleted version, not absence.
    let recreate = request(story, &a, 4, Method::Create, 6_000, Expect::Absent, vec![]);
    assert_eq!(
        write(store, story, recreate).await,
        Err(WriteConflict::VersionMismatch { current: Some(3) })
    );
    let recreate = request(
        story,
        &a,
        4,
        Method::Update,
        6_000,
        Expect::Current(3),
        vec![],
    );
    write(store, story, recreate).await.expect("recreated");
}

pub(crate) async fn guards(store: &dyn Store, story: &mut Story) {
    let x = key("guards", "Patient", "x");
    let y = key("guards", "Patient", "y");
    put(store, story, &x, 1, 1_000, vec![term(10)]).await;
    put(store, story, &x, 2, 1_001, vec![term(11), term(12)]).await;

    let guarded = |story: &mut Story, id: &str, terms: Vec<u8>| {
        let mut r = request(
            story,
            &key("guards", "Patient", id),
            1,
            Method::Create,
            2_000,
            Expect::Absent,
            vec![term(11)],
        );
        r.guard = Some(NoMatchGuard {
            terms: terms.into_iter().map(term).collect(),
        });
        r
    };

    let refused = guarded(story, "y", vec![11]);
    assert_eq!(
        write(store, story, refused).await,
        Err(WriteConflict::GuardMatched {
            ids: vec![rid("x")]
        }),
        "a guard that matches refuses the write and names the match"
    );
    assert!(
        store.read_current(&y).await.expect("read").is_none(),
        "a refused guarded write stores nothing"
    );
    let refused = guarded(story, "y", vec![11, 12]);
    assert_eq!(
        write(store, story, refused).await,
        Err(WriteConflict::GuardMatched {
            ids: vec![rid("x")]
        }),
        "a guard matches a resource carrying all of its terms"
    );

    // Terms that do not all match, terms of an older version, another type, another tenant.
    for (id, terms) in [("y1", vec![11, 13]), ("y2", vec![10])] {
        let allowed = guarded(story, id, terms);
        assert!(
            write(store, story, allowed).await.is_ok(),
            "{id}: no match, no refusal"
        );
    }
    let mut other_type = guarded(story, "y3", vec![12]);
    other_type.version.key = key("guards", "Observation", "y3");
    other_type.pointer_tag = pointer_tag(&other_type.version.key, 1);
    assert!(
        write(store, story, other_type).await.is_ok(),
        "guards are per type"
    );
    let mut other_tenant = guarded(story, "y4", vec![12]);
    other_tenant.version.key = key("guards-elsewhere", "Patient", "y4");
    other_tenant.audit.tenant = other_tenant.version.key.tenant.clone();
    assert!(
        write(store, story, other_tenant).await.is_ok(),
        "guards are per tenant"
    );

    // y1 and y2 now carry term 11 too (guarded() indexes it): three matches.
    let refused = guarded(story, "z", vec![11]);
    match write(store, story, refused).await {
        Err(WriteConflict::GuardMatched { ids }) => {
            assert!(
                ids.len() >= 2,
                "a guard with several matches says so: {ids:?}"
            );
            for id in &ids {
                assert!(
                    ["x", "y1", "y2"].contains(&id.as_str()),
                    "{id} does not match"
                );
            }
        }
        other => panic!("a guard with several matches refuses the write: {other:?}"),
    }

    // A deleted resource no longer matches.
    delete(store, story, &key("guards", "Patient", "y1"), 2, 3_000).await;
    delete(store, story, &key("guards", "Patient", "y2"), 2, 3_001).await;
    let refused = guarded(story, "z", vec![11]);
    assert_eq!(
        write(store, story, refused).await,
        Err(WriteConflict::GuardMatched {
            ids: vec![rid("x")]
        }),
    );
    delete(store, story, &x, 3, 3_002).await;
    let allowed = guarded(story, "z", vec![11]);
    assert!(write(store, story, allowed).await.is_ok());
}
