//! The audit trail: what it records, how it reads as AuditEvent, tamper detection, fail-closed.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{Server, json, patient};

fn db(server: &Server) -> rusqlite::Connection {
    rusqlite::Connection::open(server.data_dir.join("fhirwall.db")).unwrap()
}

#[tokio::test]
async fn accesses_become_audit_events_readable_only_with_scope() {
    let server = Server::start().await;
    let c = server
        .client("system/Patient.cruds system/Observation.cruds")
        .await;
    let created = c.create(&patient("Audited", "MRN-A")).await;
    let id = created["id"].as_str().unwrap();
    assert_eq!(
        c.get(&format!("Patient/{id}"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let obs = c
        .create(
            &json!({"resourceType": "Observation", "status": "final", "code": {"text": "bp"},
                        "subject": {"reference": format!("Patient/{id}")}}),
        )
        .await;
    let _ = server
        .http
        .get(server.url("/fhir/Patient"))
        .bearer_auth("bogus")
        .send()
        .await
        .unwrap();
    // Without an AuditEvent scope the trail is closed, and `*` does not open it: the trail
    // holds every client's activity, so it takes a scope that names it.
    assert_eq!(
        c.get("AuditEvent").send().await.unwrap().status(),
        StatusCode::FORBIDDEN
    );
    let everything = server.client("system/*.cruds").await;
    let refused = everything.get("AuditEvent").send().await.unwrap();
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    assert!(
        json(refused).await["issue"][0]["details"]["text"]
            .as_str()
            .unwrap()
            .contains("system/AuditEvent.rs")
    );
    assert_eq!(
        everything
            .get("AuditEvent/1")
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::FORBIDDEN
    );

    let auditor = server.client("system/AuditEvent.rs").await;
    let bundle = json(auditor.get("AuditEvent?_count=100").send().await.unwrap()).await;
    let events: Vec<&Value> = bundle["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["resource"])
        .collect();
    let text = serde_json::to_string(&bundle).unwrap();
    assert!(
        !text.contains("Audited"),
        "audit events never hold resource bodies"
    );
    let subtype = |e: &Value| {
        e["subtype"][0]["code"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    let create = events
        .iter()
        .find(|e| subtype(e) == "create" && text_of(e).contains(&format!("Patient/{id}")))
        .unwrap();
    assert_eq!(create["action"], "C");
    assert_eq!(create["outcome"], "0");
    assert!(text_of(create).contains(&c.client_id));
    assert!(text_of(create).contains("127.0.0.1"));
    let read = events.iter().find(|e| subtype(e) == "read").unwrap();
    assert_eq!(read["action"], "R");
    let obs_create = events
        .iter()
        .find(|e| subtype(e) == "create" && text_of(e).contains(obs["id"].as_str().unwrap()))
        .unwrap();
    assert!(
        text_of(obs_create).contains(&format!("\"Patient/{id}\"")),
        "the patient an Observation concerns is named"
    );
    let refused = events
        .iter()
        .find(|e| e["type"]["code"] == "110114" && e["outcome"] == "4")
        .unwrap();
    assert_eq!(refused["action"], "E");
    let forbidden = events
        .iter()
        .find(|e| e["outcome"] == "4" && subtype(e) == "search-type")
        .unwrap();
    assert!(text_of(forbidden).contains("403"));

    // Search by patient, entity, agent, action and date.
    let by_patient = json(
        auditor
            .get(&format!("AuditEvent?patient={id}"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    let hits = by_patient["entry"].as_array().unwrap();
    assert!(
        hits.len() >= 3,
        "create, read and the Observation create concern the patient"
    );
    assert!(
        hits.iter()
            .all(|e| text_of(&e["resource"]).contains(&format!("Patient/{id}")))
    );
    let by_entity = json(
        auditor
            .get(&format!("AuditEvent?entity=Patient/{id}&action=R"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(by_entity["entry"].as_array().unwrap().len(), 1);
    let by_agent = json(
        auditor
            .get(&format!("AuditEvent?agent={}&subtype=create", c.client_id))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(by_agent["entry"].as_array().unwrap().len(), 2);
    let none = json(
        auditor
            .get("AuditEvent?date=lt2000-01-01")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert!(none["entry"].as_array().unwrap().is_empty());
    let paged = json(auditor.get("AuditEvent?_count=2").send().await.unwrap()).await;
    assert_eq!(paged["entry"].as_array().unwrap().len(), 2);
    assert!(
        paged["link"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["relation"] == "next")
    );
    assert_eq!(
        auditor
            .get("AuditEvent?bogus=1")
            .send()
            .await
            .unwrap()
            .status(),
        400
    );

    // Read one by id; writing is refused.
    let one_id = bundle["entry"][0]["resource"]["id"].as_str().unwrap();
    let one = json(
        auditor
            .get(&format!("AuditEvent/{one_id}"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(one["resourceType"], "AuditEvent");
    let writer = server.client("system/AuditEvent.cruds").await;
    let r = writer.post("AuditEvent", &one).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(
        writer
            .delete(&format!("AuditEvent/{one_id}"))
            .send()
            .await
            .unwrap()
            .status(),
        405
    );
    assert_eq!(
        writer
            .put(&format!("AuditEvent/{one_id}"), &one)
            .send()
            .await
            .unwrap()
            .status(),
        405
    );

    let (ok, out) = server.audit_verify();
    assert!(ok, "{out}");
}

fn text_of(v: &Value) -> String {
    serde_json::to_string(v).unwrap()
}

#[tokio::test]
async fn verify_detects_altered_removed_and_reordered_records() {
    let mut server = Server::start().await;
    let c = server.client("system/*.cruds").await;
    for i in 0..4 {
        c.create(&patient("Chain", &format!("MRN-CH{i}"))).await;
    }
    server.kill9();
    let (ok, out) = server.audit_verify();
    assert!(ok, "{out}");
    let records: i64 = db(&server)
        .query_row("SELECT COUNT(*) FROM audit_log", [], |r| r.get(0))
        .unwrap();
    assert!(records >= 5);

    // Altered: flip one byte of record 3.
    let conn = db(&server);
    let original: Vec<u8> = conn
        .query_row("SELECT sealed FROM audit_log WHERE seq = 3", [], |r| {
            r.get(0)
        })
        .unwrap();
    let mut altered = original.clone();
    let last = altered.len() - 1;
    altered[last] ^= 0x01;
    conn.execute("UPDATE audit_log SET sealed = ?1 WHERE seq = 3", [&altered])
        .unwrap();
    let (ok, out) = server.audit_verify();
    assert!(!ok);
    assert!(out.contains("record 3"), "{out}");
    conn.execute(
        "UPDATE audit_log SET sealed = ?1 WHERE seq = 3",
        [&original],
    )
    .unwrap();
    assert!(server.audit_verify().0);

    // Reordered: swap the bodies and links of records 2 and 3.
    conn.execute_batch(
        "CREATE TEMP TABLE keep AS SELECT * FROM audit_log WHERE seq IN (2, 3);
         UPDATE audit_log SET record_id = (SELECT record_id FROM keep WHERE seq = 3), sealed = (SELECT sealed FROM keep WHERE seq = 3), link = (SELECT link FROM keep WHERE seq = 3) WHERE seq = 2;
         UPDATE audit_log SET record_id = (SELECT record_id FROM keep WHERE seq = 2), sealed = (SELECT sealed FROM keep WHERE seq = 2), link = (SELECT link FROM keep WHERE seq = 2) WHERE seq = 3;",
    )
    .unwrap();
    let (ok, out) = server.audit_verify();
    assert!(!ok);
    assert!(out.contains("record 2"), "{out}");
    conn.execute_batch(
        "UPDATE audit_log SET record_id = (SELECT record_id FROM keep WHERE seq = 2), sealed = (SELECT sealed FROM keep WHERE seq = 2), link = (SELECT link FROM keep WHERE seq = 2) WHERE seq = 2;
         UPDATE audit_log SET record_id = (SELECT record_id FROM keep WHERE seq = 3), sealed = (SELECT sealed FROM keep WHERE seq = 3), link = (SELECT link FROM keep WHERE seq = 3) WHERE seq = 3;",
    )
    .unwrap();
    assert!(server.audit_verify().0);

    // Cut from the end: the chain alone cannot see it, but the write it recorded is stored.
    conn.execute_batch(
        "CREATE TEMP TABLE tail AS SELECT * FROM audit_log WHERE seq = (SELECT MAX(seq) FROM audit_log);
         DELETE FROM audit_log WHERE seq = (SELECT seq FROM tail);",
    )
    .unwrap();
    let (ok, out) = server.audit_verify();
    assert!(!ok, "{out}");
    assert!(out.contains("no audit record"), "{out}");
    conn.execute_batch("INSERT INTO audit_log SELECT * FROM tail;")
        .unwrap();
    assert!(server.audit_verify().0);

    // Removed: delete record 2.
    conn.execute("DELETE FROM audit_log WHERE seq = 2", [])
        .unwrap();
    let (ok, out) = server.audit_verify();
    assert!(!ok);
    assert!(out.contains("record 3"), "{out}");
}

#[tokio::test]
async fn requests_fail_closed_when_audit_cannot_be_stored() {
    let mut server = Server::start().await;
    let c = server.client("system/*.cruds").await;
    let created = c.create(&patient("Closed", "MRN-FC")).await;
    let id = created["id"].as_str().unwrap().to_string();
    server.kill9();
    // Make every audit insert fail from now on.
    db(&server)
        .execute_batch("CREATE TRIGGER refuse_audit BEFORE INSERT ON audit_log BEGIN SELECT RAISE(ABORT, 'audit disk full'); END;")
        .unwrap();
    let dir = server.data_dir.clone();
    let server2 = Server::start_in(&dir, &[]).await;
    let c2 = crate::support::Client {
        http: server2.http.clone(),
        origin: server2.origin.clone(),
        token: c.token.clone(),
        client_id: c.client_id.clone(),
    };
    // A token from before still verifies (same key); the read must not leak data.
    let r = c2.get(&format!("Patient/{id}")).send().await.unwrap();
    assert!(r.status().is_server_error(), "{}", r.status());
    let body = r.text().await.unwrap();
    assert!(
        !body.contains("Closed"),
        "no data leaves without an audit record"
    );
    let r = c2
        .post("Patient", &patient("Never", "MRN-NEVER"))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_server_error());
    drop(server2);
    let conn = db(&server);
    let versions: i64 = conn
        .query_row("SELECT COUNT(*) FROM resource_versions", [], |r| r.get(0))
        .unwrap();
    assert_eq!(versions, 1, "the refused create stored nothing");
    conn.execute_batch("DROP TRIGGER refuse_audit;").unwrap();
    assert!(server.audit_verify().0);
}
