//! Authorization state: single-use client-assertion ids, and clients kept per tenant.

use fhirwall_store::{ClientRecord, IntegrityTag, Store};

use crate::{tag, tenant};

const NOW: i64 = 1_700_000_000;

pub(crate) async fn client_assertion_ids(store: &dyn Store) {
    let later = NOW + 300;
    assert!(
        store.use_jti("c", "j1", later, NOW).await.expect("jti"),
        "a first use succeeds"
    );
    assert!(
        !store.use_jti("c", "j1", later, NOW + 1).await.expect("jti"),
        "a jti is single-use"
    );
    assert!(
        store.use_jti("d", "j1", later, NOW).await.expect("jti"),
        "jtis are per client"
    );
    assert!(store.use_jti("c", "j2", later, NOW).await.expect("jti"));

    // Two uses in flight at once: exactly one wins.
    let (one, two) = tokio::join!(
        store.use_jti("c", "race", later, NOW),
        store.use_jti("c", "race", later, NOW)
    );
    let (one, two) = (one.expect("jti"), two.expect("jti"));
    assert!(
        one ^ two,
        "of two concurrent uses exactly one is accepted: {one} {two}"
    );

    // An entry is kept at least until it expires, whatever else is recorded meanwhile.
    for n in 0..20 {
        store
            .use_jti("e", &format!("filler-{n}"), NOW + 10, NOW + 5)
            .await
            .expect("jti");
    }
    assert!(
        !store
            .use_jti("c", "j1", later, later - 1)
            .await
            .expect("jti"),
        "an unexpired jti is still remembered"
    );
}

fn client(
    tenant_name: &str,
    client_id: &str,
    name: &str,
    tag: Option<IntegrityTag>,
) -> ClientRecord {
    ClientRecord {
        tenant: tenant(tenant_name),
        client_id: client_id.into(),
        name: name.into(),
        jwks: Some(r#"{"keys":[]}"#.into()),
        jwks_uri: None,
        scope: "system/*.rs".into(),
        created_unix: NOW,
        tag,
    }
}

async fn listed(store: &dyn Store, tenant_name: &str) -> Vec<ClientRecord> {
    let mut clients = store
        .list_clients(&tenant(tenant_name))
        .await
        .expect("list");
    clients.sort_by(|a, b| a.client_id.cmp(&b.client_id));
    clients
}

pub(crate) async fn clients(store: &dyn Store) {
    let a1 = client("clinic-a", "c1", "A's first", Some(tag("client a c1")));
    let a2 = ClientRecord {
        jwks: None,
        jwks_uri: Some("https://a.example/jwks".into()),
        created_unix: NOW + 1,
        ..client("clinic-a", "c2", "A's second", None)
    };
    // The same client id in another tenant is another client.
    let b1 = client("clinic-b", "c1", "B's", Some(tag("client b c1")));
    for c in [&a1, &a2, &b1] {
        store.add_client(c.clone()).await.expect("add");
    }

    let (ta, tb, tc) = (tenant("clinic-a"), tenant("clinic-b"), tenant("clinic-c"));
    assert_eq!(
        store.get_client(&ta, "c1").await.expect("get"),
        Some(a1.clone()),
        "a client round-trips, tag included"
    );
    assert_eq!(
        store.get_client(&ta, "c2").await.expect("get"),
        Some(a2.clone())
    );
    assert_eq!(
        store.get_client(&tb, "c1").await.expect("get"),
        Some(b1.clone())
    );
    assert_eq!(
        store.get_client(&tb, "c2").await.expect("get"),
        None,
        "per tenant"
    );
    assert_eq!(store.get_client(&tc, "c1").await.expect("get"), None);
    assert_eq!(listed(store, "clinic-a").await, [a1.clone(), a2.clone()]);
    assert_eq!(listed(store, "clinic-b").await, std::slice::from_ref(&b1));
    assert!(listed(store, "clinic-c").await.is_empty());

    assert!(
        !store.remove_client(&tc, "c1").await.expect("remove"),
        "another tenant cannot remove a client"
    );
    assert!(!store.remove_client(&tb, "c2").await.expect("remove"));
    assert!(store.remove_client(&tb, "c1").await.expect("remove"));
    assert!(
        !store.remove_client(&tb, "c1").await.expect("remove"),
        "removed once"
    );
    assert_eq!(store.get_client(&tb, "c1").await.expect("get"), None);
    assert_eq!(
        store.get_client(&ta, "c1").await.expect("get"),
        Some(a1.clone()),
        "removing B's c1 leaves A's"
    );
    assert_eq!(listed(store, "clinic-a").await, [a1, a2]);
}
