//! The shared storage story, told by a fresh SQLite store.

use fhirwall_store_sqlite::SqliteStore;

use crate::TempDir;

#[tokio::test]
async fn sqlite_store_conforms() {
    let dir = TempDir::new("conformance");
    let store = SqliteStore::open(&dir.database()).expect("open");
    fhirwall_store_conformance::run(&store).await;
}
