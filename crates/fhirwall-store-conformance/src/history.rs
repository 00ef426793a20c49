//! History: every version, newest first, filtered by type, id and `since`, paged by
//! `before_seq`.

use fhirwall_store::{HistoryQuery, ResourceId, ResourceType, Store};

use crate::{Story, delete, key, names, put, tenant, version_tag};

fn all() -> HistoryQuery {
    HistoryQuery {
        tenant: tenant("history"),
        resource_type: None,
        id: None,
        since_micros: None,
        before_seq: None,
        limit: 100,
    }
}

async fn history(store: &dyn Store, query: HistoryQuery) -> Vec<String> {
    names(&store.history(query).await.expect("history"))
}

pub(crate) async fn paging_and_filters(store: &dyn Store, story: &mut Story) {
    let h1 = key("history", "Patient", "h1");
    let h2 = key("history", "Observation", "h2");
    let h3 = key("history", "Patient", "h3");
    put(store, story, &h1, 1, 1_000, vec![]).await;
    put(store, story, &h2, 1, 1_500, vec![]).await;
    put(store, story, &h1, 2, 2_000, vec![]).await;
    put(store, story, &h3, 1, 2_500, vec![]).await;
    delete(store, story, &h1, 3, 3_000).await;
    put(
        store,
        story,
        &key("history-elsewhere", "Patient", "h1"),
        1,
        1_000,
        vec![],
    )
    .await;

    assert_eq!(
        history(store, all()).await,
        [
            "Patient/h1@3",
            "Patient/h3@1",
            "Patient/h1@2",
            "Observation/h2@1",
            "Patient/h1@1"
        ],
        "a tenant's whole history, newest first"
    );
    let patient = ResourceType::parse("Patient").expect("a FHIR type");
    let of_type = HistoryQuery {
        resource_type: Some(patient.clone()),
        ..all()
    };
    assert_eq!(
        history(store, of_type.clone()).await,
        [
            "Patient/h1@3",
            "Patient/h3@1",
            "Patient/h1@2",
            "Patient/h1@1"
        ]
    );
    let of_one = HistoryQuery {
        id: Some(ResourceId::parse("h1").expect("a valid id")),
        ..of_type.clone()
    };
    assert_eq!(
        history(store, of_one.clone()).await,
        ["Patient/h1@3", "Patient/h1@2", "Patient/h1@1"]
    );
    let since = HistoryQuery {
        since_micros: Some(2_000),
        ..all()
    };
    assert_eq!(
        history(store, since).await,
        ["Patient/h1@3", "Patient/h3@1", "Patient/h1@2"],
        "since includes versions updated at that instant"
    );
    let since_of_type = HistoryQuery {
        since_micros: Some(2_001),
        ..of_type
    };
    assert_eq!(
        history(store, since_of_type).await,
        ["Patient/h1@3", "Patient/h3@1"]
    );

    // Paging by before_seq.
    let mut query = HistoryQuery { limit: 2, ..all() };
    let mut pages = Vec::new();
    loop {
        let page = store.history(query.clone()).await.expect("history");
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= 2, "limit");
        query.before_seq = page.last().map(|v| v.seq);
        pages.push(names(&page));
        assert!(pages.len() < 10, "paging ends");
    }
    assert_eq!(
        pages,
        [
            vec!["Patient/h1@3", "Patient/h3@1"],
            vec!["Patient/h1@2", "Observation/h2@1"],
            vec!["Patient/h1@1"]
        ]
    );

    // Versions come whole: method, body (none for the delete), tag, seq in commit order.
    let versions = store.history(of_one).await.expect("history");
    let newest = versions.first().expect("h1@3");
    assert!(newest.is_deleted() && newest.sealed_body.is_none());
    assert_eq!(newest.tag, Some(version_tag(&h1, 3)));
    let oldest = versions.last().expect("h1@1");
    assert_eq!(oldest.sealed_body, Some(crate::body(&h1, 1)));
    assert_eq!(oldest.last_updated_micros, 1_000);
    assert!(versions.windows(2).all(|w| w[0].seq > w[1].seq));

    let elsewhere = HistoryQuery {
        tenant: tenant("history-elsewhere"),
        ..all()
    };
    assert_eq!(
        history(store, elsewhere).await,
        ["Patient/h1@1"],
        "tenants are apart"
    );
    let nobody = HistoryQuery {
        tenant: tenant("history-nobody"),
        ..all()
    };
    assert!(history(store, nobody).await.is_empty());
}
