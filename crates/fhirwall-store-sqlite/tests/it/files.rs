//! The database, its `-wal` and its `-shm` are owner-only (0600), whether this store created
//! them or found them wider.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use fhirwall_store::{AuditTrail, SealedAudit, Store, TenantId};
use fhirwall_store_conformance::TestChain;
use fhirwall_store_sqlite::SqliteStore;

use crate::TempDir;

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

fn beside(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

fn record() -> SealedAudit {
    SealedAudit {
        tenant: TenantId::default_tenant(),
        record_id: "r".into(),
        recorded_micros: 1,
        sealed: vec![1; 16],
    }
}

/// Writes through a started store, then checks all three files while they exist.
async fn write_and_check(database: &Path) {
    let store = SqliteStore::open(database).expect("open");
    store.start(Arc::new(TestChain)).expect("start");
    store.append_audit(record()).await.expect("append");
    for file in [
        database.to_path_buf(),
        beside(database, "-wal"),
        beside(database, "-shm"),
    ] {
        assert_eq!(
            format!("{:o}", mode(&file)),
            "600",
            "{} is owner-only",
            file.display()
        );
    }
    store.shutdown();
}

#[tokio::test]
async fn a_new_database_and_its_log_files_are_owner_only() {
    let dir = TempDir::new("modes-new");
    let database = dir.database();
    write_and_check(&database).await;
    assert_eq!(
        format!("{:o}", mode(database.parent().expect("a directory"))),
        "700",
        "a directory the store creates is owner-only too"
    );
}

#[tokio::test]
async fn an_existing_database_readable_by_others_is_tightened() {
    let dir = TempDir::new("modes-existing");
    let database = dir.database();
    {
        let store = SqliteStore::open(&database).expect("open");
        store.start(Arc::new(TestChain)).expect("start");
        store.append_audit(record()).await.expect("append");
        store.shutdown();
    }
    // As an older release (or a careless copy) may have left them.
    let wider = std::fs::Permissions::from_mode(0o644);
    std::fs::set_permissions(&database, wider.clone()).expect("chmod");
    let wal = beside(&database, "-wal");
    std::fs::write(&wal, b"").expect("an empty log");
    std::fs::set_permissions(&wal, wider).expect("chmod");
    assert_eq!(format!("{:o}", mode(&database)), "644");
    write_and_check(&database).await;
    assert!(dir.path().exists());
}
