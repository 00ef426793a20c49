//! The shared storage story, told by the SQLite backend.

use fhirwall_store_sqlite::SqliteStore;

#[tokio::test]
async fn sqlite_store_conforms() {
    let dir = std::env::temp_dir().join(format!("fhirwall-conformance-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let store = SqliteStore::open(&dir.join("db.sqlite")).unwrap_or_else(|e| panic!("open: {e}"));
    store
        .start_writer(Box::new(|previous, seq, _, sealed| {
            let mut link = *previous;
            link[0] = link[0].wrapping_add(seq as u8);
            link[1] = sealed.len() as u8;
            link
        }))
        .unwrap_or_else(|e| panic!("writer: {e}"));
    fhirwall_store::conformance::run(&store).await;
    store.shutdown();
    let _ = std::fs::remove_dir_all(&dir);
}
