//! One clock reading per request: a version's `meta.lastUpdated`, the reply's version time and
//! the audit record's `recorded` are the same instant, and they move with the clock.

use fhirwall_model::Timestamp;
use fhirwall_store::AuditTrail as _;

use crate::support::*;

/// The version's time as the body, the reply and the write's audit record state it.
async fn three_times(app: &App, reply: &fhirwall_service::Reply) -> (String, Timestamp, String) {
    let last_updated = body(reply)["meta"]["lastUpdated"]
        .as_str()
        .unwrap()
        .to_string();
    let (_, at) = reply.version.unwrap();
    let records = app.audit_records().await;
    let record = records.last().unwrap();
    assert!(
        record.entities.iter().any(|e| e.ends_with(&format!(
            "/_history/{}",
            body(reply)["meta"]["versionId"].as_str().unwrap()
        ))),
        "the last record is the write's: {:?}",
        record.entities
    );
    (last_updated, at, record.recorded.clone())
}

#[tokio::test]
async fn a_write_and_its_audit_record_carry_the_same_instant() {
    let app = App::new().await;
    // Milliseconds are what FHIR instants carry; the clock's microseconds are dropped.
    let first_instant = Timestamp::from_micros(1_700_000_123_456_789);
    app.clock.set(first_instant);
    let created = app
        .handle(&admin(), create(patient_body("MRN-1")))
        .await
        .unwrap();
    let (last_updated, at, recorded) = three_times(&app, &created).await;
    assert_eq!(last_updated, "2023-11-14T22:15:23.456Z");
    assert_eq!(at, first_instant);
    assert_eq!(at.to_fhir_instant(), last_updated);
    assert_eq!(recorded, last_updated);
    let stored = app.store.audit_scan(0, 1000).await.unwrap();
    assert_eq!(stored.last().unwrap().recorded_micros, at.micros());

    app.clock.advance_secs(90);
    let pid = id(body(&created)["id"].as_str().unwrap());
    let updated = app.update_patient(&pid, "MRN-1", "Roe").await;
    let (last_updated, at, recorded) = three_times(&app, &updated).await;
    assert_eq!(last_updated, "2023-11-14T22:16:53.456Z");
    assert_eq!(at.micros(), first_instant.micros() + 90_000_000);
    assert_eq!(recorded, last_updated);

    // A read is audited at its own instant and reports the version's.
    app.clock.advance_secs(5);
    let read_back = app.handle(&admin(), read(&pid)).await.unwrap();
    assert_eq!(read_back.version.unwrap().1, at);
    let records = app.audit_records().await;
    assert_eq!(records.last().unwrap().subtype, "read");
    assert_eq!(records.last().unwrap().recorded, "2023-11-14T22:16:58.456Z");
}
