//! The disk reserve: below `--min-free-disk-bytes` of free space the server refuses writes
//! (507) and keeps answering reads, so a full disk cannot take the audited reads down with it.

use reqwest::StatusCode;

use crate::support::{Server, json, patient};

#[tokio::test]
async fn below_the_disk_reserve_writes_are_refused_and_reads_go_on() {
    // A reserve no disk can meet: the server is "low" from its first check.
    let server = Server::start_with(&["--min-free-disk-bytes", "18446744073709551615"]).await;
    let c = server.client("system/*.cruds").await;
    let r = c
        .post("Patient", &patient("Reserve", "MRN-R"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 507);
    let outcome = json(r).await;
    assert_eq!(
        outcome["issue"][0]["details"]["coding"][0]["code"],
        "insufficient-storage"
    );
    let count = json(c.get("Patient?_summary=count").send().await.unwrap()).await;
    assert_eq!(count["total"], 0, "nothing was stored");
    assert_eq!(
        c.get("metadata").send().await.unwrap().status(),
        StatusCode::OK
    );
    // A bad token is still answered 401 (so clients know to get a new one).
    let r = server
        .http
        .get(server.url("/fhir/Patient"))
        .bearer_auth("bogus")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn with_room_on_the_disk_writes_go_through() {
    let server = Server::start_with(&["--min-free-disk-bytes", "1"]).await;
    let c = server.client("system/*.cruds").await;
    let r = c
        .post("Patient", &patient("Room", "MRN-S"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
}
