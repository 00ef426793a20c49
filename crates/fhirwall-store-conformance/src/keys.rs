//! Wrapped keys: readable and savable before `start` (to unwrap the chain key), loaded in the
//! order saved, and rewrapped in place.

use fhirwall_store::{Store, StoredKey};

use crate::{Story, key, request, tenant};

fn stored(key_id: &str, purpose: &str, tenant_name: &str, created_unix: i64) -> StoredKey {
    StoredKey {
        key_id: key_id.into(),
        purpose: purpose.into(),
        tenant: tenant(tenant_name),
        kek_id: "kek-1".into(),
        wrapped: format!("wrapped {key_id} under kek-1").into_bytes(),
        created_unix,
    }
}

fn summary(keys: &[StoredKey]) -> Vec<String> {
    keys.iter()
        .map(|k| {
            format!(
                "{} {} {} {} {} {}",
                k.key_id,
                k.purpose,
                k.tenant,
                k.kek_id,
                String::from_utf8_lossy(&k.wrapped),
                k.created_unix
            )
        })
        .collect()
}

/// What the composition root does before `start`: read keys, save missing ones. Writes of
/// resources and audit records are refused until then (they need the chain).
pub(crate) async fn before_start(store: &dyn Store, story: &mut Story) {
    assert!(
        store.load_keys().await.expect("keys").is_empty(),
        "a fresh store"
    );
    store
        .save_key(stored("k1", "audit-chain", "keys", 30))
        .await
        .expect("keys can be saved before start");
    assert_eq!(
        summary(&store.load_keys().await.expect("keys")),
        summary(&[stored("k1", "audit-chain", "keys", 30)]),
    );
    assert!(
        store
            .append_audit(story.audit(&tenant("keys")))
            .await
            .is_err(),
        "no audit record before start: there is no chain yet"
    );
    let early = request(
        story,
        &key("keys", "Patient", "early"),
        1,
        fhirwall_store::Method::Create,
        1,
        fhirwall_store::Expect::Absent,
        vec![],
    );
    assert!(
        store.write(early).await.is_err(),
        "no resource write before start"
    );
}

pub(crate) async fn order_and_rewrap(store: &dyn Store) {
    // Saved after start: in the order saved, whatever their ids, tenants or times.
    let k2 = stored("k0-second", "data", "keys-other", 10);
    let k3 = stored("k3", "data", "keys", 20);
    store.save_key(k2.clone()).await.expect("save");
    store.save_key(k3.clone()).await.expect("save");
    let k1 = stored("k1", "audit-chain", "keys", 30);
    assert_eq!(
        summary(&store.load_keys().await.expect("keys")),
        summary(&[k1.clone(), k2.clone(), k3.clone()]),
        "keys come back in the order they were saved"
    );

    // A rewrap changes only kek_id and wrapped, and keeps the key's place.
    let rewrap = StoredKey {
        kek_id: "kek-2".into(),
        wrapped: b"wrapped k1 under kek-2".to_vec(),
        purpose: "ignored".into(),
        tenant: tenant("ignored"),
        created_unix: 99,
        ..k1.clone()
    };
    assert!(store.rewrap_key(rewrap).await.expect("rewrap"));
    let rewrapped = StoredKey {
        kek_id: "kek-2".into(),
        wrapped: b"wrapped k1 under kek-2".to_vec(),
        ..k1
    };
    assert_eq!(
        summary(&store.load_keys().await.expect("keys")),
        summary(&[rewrapped, k2.clone(), k3.clone()]),
    );
    assert!(
        !store
            .rewrap_key(stored("unknown", "data", "keys", 1))
            .await
            .expect("rewrap"),
        "rewrapping an unknown key changes nothing"
    );
    assert_eq!(store.load_keys().await.expect("keys").len(), 3);
}
