//! Bad input: each class gets a 4xx OperationOutcome and changes nothing.

use reqwest::StatusCode;
use reqwest::header::CONTENT_TYPE;
use serde_json::{Value, json};

use crate::support::{Client, Server, json, patient, stored_versions};

async fn post_raw(
    c: &Client,
    path: &str,
    content_type: &str,
    body: impl Into<reqwest::Body>,
) -> (StatusCode, Value) {
    let r = c
        .http
        .post(c.fhir(path))
        .bearer_auth(&c.token)
        .header(CONTENT_TYPE, content_type)
        .header(reqwest::header::ACCEPT, "application/fhir+json")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = r.status();
    let body = r.json().await.unwrap_or(Value::Null);
    (status, body)
}

fn code_of(outcome: &Value) -> String {
    assert_eq!(outcome["resourceType"], "OperationOutcome", "{outcome}");
    assert!(
        outcome["extension"][0]["valueString"]
            .as_str()
            .is_some_and(|s| !s.is_empty())
    );
    outcome["issue"][0]["details"]["coding"][0]["code"]
        .as_str()
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn every_class_of_bad_input_is_refused_and_changes_nothing() {
    let dir = crate::support::fresh_dir();
    let server = Server::start_in(
        &dir,
        &["--max-body-bytes", "65536", "--max-json-depth", "20"],
    )
    .await;
    let c = server.client("system/*.cruds").await;
    let fhir = "application/fhir+json";
    let cases: Vec<(&str, &str, Vec<u8>, StatusCode, &str)> = vec![
        (
            "Patient",
            fhir,
            b"{\"resourceType\": \"Patient\",".to_vec(),
            StatusCode::BAD_REQUEST,
            "invalid-json",
        ),
        (
            "Patient",
            fhir,
            b"not json".to_vec(),
            StatusCode::BAD_REQUEST,
            "invalid-json",
        ),
        (
            "Patient",
            fhir,
            br#"{"resourceType":"Patient","gender":"male","gender":"female"}"#.to_vec(),
            StatusCode::BAD_REQUEST,
            "duplicate-key",
        ),
        (
            "Patient",
            fhir,
            format!(
                "{{\"resourceType\":\"Patient\",\"extension\":{}1{}}}",
                "[".repeat(40),
                "]".repeat(40)
            )
            .into_bytes(),
            StatusCode::BAD_REQUEST,
            "too-deep",
        ),
        (
            "Patient",
            fhir,
            br#"{"resourceType":"Observation","status":"final"}"#.to_vec(),
            StatusCode::BAD_REQUEST,
            "resource-type-mismatch",
        ),
        (
            "Patient",
            fhir,
            br#"{"gender":"male"}"#.to_vec(),
            StatusCode::BAD_REQUEST,
            "missing-resource-type",
        ),
        (
            "Patient",
            fhir,
            br#"[{"resourceType":"Patient"}]"#.to_vec(),
            StatusCode::BAD_REQUEST,
            "not-a-resource",
        ),
        (
            "Patient",
            fhir,
            br#"{"resourceType":"Patient","id":"bad id!"}"#.to_vec(),
            StatusCode::BAD_REQUEST,
            "invalid-id",
        ),
        (
            "Patient",
            fhir,
            b"".to_vec(),
            StatusCode::BAD_REQUEST,
            "empty-body",
        ),
        (
            "Patient",
            "text/plain",
            br#"{"resourceType":"Patient"}"#.to_vec(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
        ),
        (
            "Patient",
            "application/fhir+xml",
            b"<Patient/>".to_vec(),
            StatusCode::BAD_REQUEST,
            "invalid-xml",
        ),
        (
            "Patient",
            fhir,
            format!(
                "{{\"resourceType\":\"Patient\",\"x\":\"{}\"}}",
                "a".repeat(70_000)
            )
            .into_bytes(),
            StatusCode::PAYLOAD_TOO_LARGE,
            "body-too-large",
        ),
        (
            "Patient",
            fhir,
            b"{\"resourceType\":\"Patient\",\"name\":[{\"family\":\"\xff\xfe\"}]}".to_vec(),
            StatusCode::BAD_REQUEST,
            "invalid-json",
        ),
        (
            "NotAType",
            fhir,
            br#"{"resourceType":"NotAType"}"#.to_vec(),
            StatusCode::NOT_FOUND,
            "unknown-resource-type",
        ),
    ];
    for (path, content_type, body, status, code) in cases {
        let (got, outcome) = post_raw(&c, path, content_type, body).await;
        assert_eq!(got, status, "{code}: {outcome}");
        assert_eq!(code_of(&outcome), code);
    }
    assert_eq!(stored_versions(&c).await, 0, "nothing was stored");

    // Update-specific refusals.
    let created = c.create(&patient("Valid", "MRN-V")).await;
    let id = created["id"].as_str().unwrap();
    let mut wrong_id = created.clone();
    wrong_id["id"] = json!("another");
    let r = c
        .put(&format!("Patient/{id}"), &wrong_id)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(code_of(&json(r).await), "id-mismatch");
    let mut no_id = created.clone();
    no_id.as_object_mut().unwrap().remove("id");
    let r = c
        .put(&format!("Patient/{id}"), &no_id)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = c.put("Patient/bad$id", &created).send().await.unwrap();
    assert_eq!(r.status(), 400);
    let r = c
        .get(&format!("Patient/{}", "a".repeat(65)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = c
        .put(&format!("Patient/{id}"), &created)
        .header("If-Match", "garbage")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    // A patch with the wrong content type or a malformed document.
    let r = c
        .http
        .patch(c.fhir(&format!("Patient/{id}")))
        .bearer_auth(&c.token)
        .header(CONTENT_TYPE, "text/plain")
        .body("[]")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);
    // A FHIR JSON body is a FHIRPath Patch: anything but a Parameters resource is refused.
    let r = c
        .http
        .patch(c.fhir(&format!("Patient/{id}")))
        .bearer_auth(&c.token)
        .header(CONTENT_TYPE, "application/fhir+json")
        .body("[]")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(code_of(&json(r).await), "invalid-patch");
    let r = c
        .http
        .patch(c.fhir(&format!("Patient/{id}")))
        .bearer_auth(&c.token)
        .header(CONTENT_TYPE, "application/json-patch+json")
        .body(r#"{"resourceType":"Parameters"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = c
        .http
        .patch(c.fhir(&format!("Patient/{id}")))
        .bearer_auth(&c.token)
        .header(CONTENT_TYPE, "application/fhir+json")
        .body(r#"{"resourceType":"Parameters","parameter":[{"name":"operation","part":[{"name":"type","valueCode":"explode"},{"name":"path","valueString":"Patient"}]}]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = c
        .http
        .patch(c.fhir(&format!("Patient/{id}")))
        .bearer_auth(&c.token)
        .header(CONTENT_TYPE, "application/json-patch+json")
        .body(r#"[{"op":"frobnicate","path":"/x"}]"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    // Unsupported interactions and addresses answer with an OperationOutcome too.
    let r = c
        .http
        .post(c.fhir(""))
        .bearer_auth(&c.token)
        .header(CONTENT_TYPE, fhir)
        .body("{}")
        .send()
        .await
        .unwrap();
    assert!(r.status().is_client_error());
    assert_eq!(json(r).await["resourceType"], "OperationOutcome");
    let r = c
        .http
        .get(format!("{}/nowhere", server.origin))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(json(r).await["resourceType"], "OperationOutcome");
    // Unsupported search parameters: an error when the client asks for strict handling,
    // otherwise ignored and left out of the self link (FHIR's default).
    let r = c
        .get("Patient?frobnicate=x")
        .header("Prefer", "handling=strict")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(code_of(&json(r).await), "unknown-search-parameter");
    let r = c.get("Patient?frobnicate=x&_count=5").send().await.unwrap();
    assert_eq!(r.status(), 200);
    let bundle = json(r).await;
    let self_link = bundle["link"][0]["url"].as_str().unwrap().to_string();
    assert!(!self_link.contains("frobnicate="), "{self_link}");
    assert!(self_link.contains("_count=5"), "{self_link}");
    // Conditional interactions never ignore a criterion.
    let r = c
        .put(
            "Patient?identifier=MRN-V&frobnicate=x",
            &patient("Valid", "MRN-V"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    // One version from the one valid create: nothing else changed.
    assert_eq!(stored_versions(&c).await, 1);
    drop(server);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn a_trickled_body_times_out_with_408() {
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = crate::support::fresh_dir();
    let server = Server::start_in(&dir, &["--body-read-timeout-secs", "1"]).await;
    let c = server.client("system/*.cruds").await;
    let ca = std::fs::read(dir.join("tls/ca.pem")).unwrap();
    let config = crate::support::client_tls(&ca);
    let port: u16 = server.origin.rsplit(':').next().unwrap().parse().unwrap();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(
            rustls::pki_types::ServerName::try_from("localhost").unwrap(),
            tcp,
        )
        .await
        .unwrap();
    let head = format!(
        "POST /fhir/Patient HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {}\r\nContent-Type: application/fhir+json\r\nContent-Length: 100\r\n\r\n{{\"resourceType\":",
        c.token
    );
    tls.write_all(head.as_bytes()).await.unwrap();
    let started = std::time::Instant::now();
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(std::time::Duration::from_secs(10), tls.read(&mut answer))
        .await
        .expect("the server answers a stalled body")
        .unwrap();
    let text = String::from_utf8_lossy(&answer[..n]).to_string();
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    assert_eq!(stored_versions(&c).await, 0);
    drop(server);
    let _ = std::fs::remove_dir_all(dir);
}
