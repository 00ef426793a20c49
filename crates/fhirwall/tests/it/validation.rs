//! Validation at the API: every write is checked against the definitions and the profiles the server holds, `$validate`, and profiles arriving through the API or a package at start-up.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{Server, json, patient, stored_versions};

const US_CORE_PATIENT: &str = "http://hl7.org/fhir/us/core/StructureDefinition/us-core-patient";

fn fixture(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/it/fixtures")
        .join(name)
}

/// (severity, code, first expression) of each issue.
fn issues(outcome: &Value) -> Vec<(String, String, String)> {
    assert_eq!(outcome["resourceType"], "OperationOutcome", "{outcome}");
    outcome["issue"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["severity"].as_str().unwrap_or_default().to_string(),
                i["code"].as_str().unwrap_or_default().to_string(),
                i["expression"][0].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

fn has_error_at(outcome: &Value, code: &str, expression: &str) -> bool {
    issues(outcome)
        .iter()
        .any(|(s, c, e)| (s == "error" || s == "fatal") && c == code && e == expression)
}

fn error_count(outcome: &Value) -> usize {
    issues(outcome)
        .iter()
        .filter(|(s, _, _)| s == "error" || s == "fatal")
        .count()
}

#[tokio::test]
async fn invalid_writes_are_refused_one_issue_per_problem_and_store_nothing() {
    let server = Server::start().await;
    let c = server.client("system/*.cruds").await;
    let valid = c.create(&patient("Valid", "MRN-V1")).await;
    let id = valid["id"].as_str().unwrap().to_string();
    assert_eq!(stored_versions(&c).await, 1);

    // Three problems, three issues; an unknown element makes it a 400 (not FHIR's shape).
    let r = c
        .post(
            "Patient",
            &json!({
                "resourceType": "Patient",
                "birthDate": "1974-13-45",
                "gender": "woman",
                "nickname": "Tess"
            }),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let outcome = json(r).await;
    assert!(
        has_error_at(&outcome, "structure", "Patient.nickname"),
        "{outcome}"
    );
    assert!(
        has_error_at(&outcome, "value", "Patient.birthDate"),
        "{outcome}"
    );
    assert!(
        has_error_at(&outcome, "code-invalid", "Patient.gender"),
        "{outcome}"
    );
    assert!(error_count(&outcome) >= 3);
    for issue in outcome["issue"].as_array().unwrap() {
        let text = issue["details"]["text"].as_str().unwrap();
        assert!(!text.is_empty());
        // Messages name elements and rules, never the submitted values.
        assert!(
            !text.contains("1974-13-45") && !text.contains("Tess"),
            "{text}"
        );
    }

    // Rule violations of a well-shaped resource are 422.
    let r = c
        .post("Observation", &json!({"resourceType": "Observation"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let outcome = json(r).await;
    assert!(
        has_error_at(&outcome, "required", "Observation.status"),
        "{outcome}"
    );
    assert!(
        has_error_at(&outcome, "required", "Observation.code"),
        "{outcome}"
    );

    // A core invariant (pat-1: a contact needs details or an organization).
    let r = c
        .post(
            "Patient",
            &json!({"resourceType": "Patient", "contact": [{"gender": "female"}]}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let outcome = json(r).await;
    assert!(
        issues(&outcome).iter().any(|(s, code, e)| s == "error"
            && code == "invariant"
            && e.starts_with("Patient.contact")),
        "{outcome}"
    );

    // Active content in the narrative.
    for div in [
        r#"<div xmlns="http://www.w3.org/1999/xhtml"><script>alert(1)</script></div>"#,
        r#"<div xmlns="http://www.w3.org/1999/xhtml"><p onclick="alert(1)">x</p></div>"#,
        r#"<div xmlns="http://www.w3.org/1999/xhtml"><a href="javascript:alert(1)">x</a></div>"#,
        r#"<div xmlns="http://www.w3.org/1999/xhtml"><iframe src="https://example.org"></iframe></div>"#,
        r#"<div xmlns="http://www.w3.org/1999/xhtml"><p>unclosed</div>"#,
    ] {
        let r = c
            .post(
                "Patient",
                &json!({"resourceType": "Patient", "text": {"status": "generated", "div": div}}),
            )
            .send()
            .await
            .unwrap();
        assert!(r.status().is_client_error(), "{div}");
        let outcome = json(r).await;
        assert!(
            issues(&outcome)
                .iter()
                .any(|(s, _, e)| s == "error" && e == "Patient.text.div"),
            "{div}: {outcome}"
        );
    }

    // Update and conditional update with an invalid body.
    let mut bad = valid.clone();
    bad["gender"] = json!("woman");
    let r = c.put(&format!("Patient/{id}"), &bad).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert!(has_error_at(
        &json(r).await,
        "code-invalid",
        "Patient.gender"
    ));
    let r = c
        .put("Patient?identifier=MRN-V1", &bad)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);

    // A conditional create whose condition matches still refuses an invalid body.
    let r = c
        .post("Patient", &bad)
        .header("if-none-exist", "identifier=MRN-V1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);

    // A patch whose result is invalid is 422.
    let r = c
        .http
        .patch(c.fhir(&format!("Patient/{id}")))
        .bearer_auth(&c.token)
        .header("content-type", "application/json-patch+json")
        .body(r#"[{"op":"replace","path":"/birthDate","value":"not a date"}]"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert!(has_error_at(&json(r).await, "value", "Patient.birthDate"));

    // Nothing of the above was stored.
    assert_eq!(stored_versions(&c).await, 1);

    let current = json(c.get(&format!("Patient/{id}")).send().await.unwrap()).await;
    assert_eq!(current["meta"]["versionId"], "1");
    assert_eq!(current["gender"], "female");

    // A client that prefers an OperationOutcome hears the warnings of an accepted write.
    let r = c
        .post("Patient", &patient("Warned", "MRN-W1"))
        .header("prefer", "return=OperationOutcome")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let outcome = json(r).await;
    let found = issues(&outcome);
    assert_eq!(found[0].0, "information", "{outcome}");
    assert!(
        found
            .iter()
            .any(|(s, c, e)| s == "warning" && c == "invariant" && e == "Patient"),
        "{outcome}"
    );

    // A valid resource of another type is accepted.
    let r = c
        .post(
            "Observation",
            &json!({
                "resourceType": "Observation",
                "status": "final",
                "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
                "subject": {"reference": format!("Patient/{id}")},
                "valueQuantity": {"value": 72, "unit": "beats/min", "system": "http://unitsofmeasure.org", "code": "/min"}
            }),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
}

#[tokio::test]
async fn validate_operation_answers_an_outcome_and_stores_nothing() {
    let server = Server::start().await;
    let c = server.client("system/*.cruds").await;
    let created = c.create(&patient("Check", "MRN-C1")).await;
    let id = created["id"].as_str().unwrap().to_string();

    // Type level, the resource as the body.
    let r = c
        .post("Patient/$validate", &patient("Other", "MRN-C2"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let outcome = json(r).await;
    assert_eq!(error_count(&outcome), 0, "{outcome}");
    // A narrative-free patient draws dom-6's best-practice warning, nothing worse.
    assert!(
        issues(&outcome)
            .iter()
            .all(|(s, _, _)| s == "warning" || s == "information"),
        "{outcome}"
    );
    let mut narrated = patient("Other", "MRN-C3");
    narrated["text"] = json!({
        "status": "generated",
        "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\"><p>Other</p></div>"
    });
    let r = c.post("Patient/$validate", &narrated).send().await.unwrap();
    let outcome = json(r).await;
    assert_eq!(issues(&outcome).len(), 1, "{outcome}");
    assert_eq!(outcome["issue"][0]["severity"], "information");

    // Errors are reported with 200: the operation worked, the resource did not.
    let r = c
        .post(
            "Patient/$validate",
            &json!({"resourceType": "Patient", "birthDate": "25/12/1974"}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(has_error_at(&json(r).await, "value", "Patient.birthDate"));

    // Parameters form with mode and resource.
    let r = c
        .post(
            "Patient/$validate",
            &json!({
                "resourceType": "Parameters",
                "parameter": [
                    {"name": "mode", "valueCode": "create"},
                    {"name": "resource", "resource": {"resourceType": "Patient", "gender": "woman"}}
                ]
            }),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(has_error_at(
        &json(r).await,
        "code-invalid",
        "Patient.gender"
    ));

    // Instance level: update with a mismatching id, delete of an existing and a missing one.
    let r = c
        .post(
            &format!("Patient/{id}/$validate?mode=update"),
            &patient("Check", "MRN-C1"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(has_error_at(&json(r).await, "invalid", "Patient.id"));
    let r = c
        .get(&format!("Patient/{id}/$validate?mode=delete"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(error_count(&json(r).await), 0);
    let r = c
        .get("Patient/does-not-exist/$validate?mode=delete")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = c
        .post("Patient/$validate?mode=update", &patient("X", "Y"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let r = c
        .post("Patient/$validate?mode=sideways", &patient("X", "Y"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);

    // An unknown profile asked for explicitly is an error issue.
    let r = c
        .post(
            "Patient/$validate?profile=https://example.org/StructureDefinition/nope",
            &patient("X", "Y"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(error_count(&json(r).await) >= 1);

    // Nothing stored but the one create.
    assert_eq!(stored_versions(&c).await, 1);
}

/// A profile with only a differential: birthDate becomes mandatory.
fn birthdate_profile(url: &str) -> Value {
    json!({
        "resourceType": "StructureDefinition",
        "url": url,
        "name": "PatientWithBirthDate",
        "status": "active",
        "kind": "resource",
        "abstract": false,
        "type": "Patient",
        "baseDefinition": "http://hl7.org/fhir/StructureDefinition/Patient",
        "derivation": "constraint",
        "differential": {"element": [
            {"id": "Patient", "path": "Patient"},
            {"id": "Patient.birthDate", "path": "Patient.birthDate", "min": 1}
        ]}
    })
}

fn profiled(mut resource: Value, url: &str) -> Value {
    resource["meta"] = json!({"profile": [url]});
    resource
}

#[tokio::test]
async fn profiles_from_a_package_and_through_the_api() {
    let dir = crate::support::fresh_dir();
    let package = fixture("us-core-5.0.1-patient.json");
    let mut server =
        Server::start_in(&dir, &["--profile-package", package.to_str().unwrap()]).await;
    let c = server.client("system/*.cruds").await;

    // US Core from the start-up package: identifier, name and gender are required.
    let r = c
        .post(
            "Patient",
            &profiled(
                json!({"resourceType": "Patient", "birthDate": "1970"}),
                US_CORE_PATIENT,
            ),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let outcome = json(r).await;
    for element in ["Patient.identifier", "Patient.name", "Patient.gender"] {
        assert!(
            issues(&outcome)
                .iter()
                .any(|(s, _, e)| s == "error" && e == element),
            "{element}: {outcome}"
        );
    }
    let r = c
        .post(
            "Patient",
            &profiled(patient("Core", "MRN-U1"), US_CORE_PATIENT),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);

    // The CapabilityStatement lists the profiles held, and is itself valid.
    let capability = json(c.get("metadata").send().await.unwrap()).await;
    let patient_entry = capability["rest"][0]["resource"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["type"] == "Patient")
        .unwrap();
    assert!(
        patient_entry["supportedProfile"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p == US_CORE_PATIENT)
    );
    let r = c
        .post("CapabilityStatement/$validate", &capability)
        .send()
        .await
        .unwrap();
    let outcome = json(r).await;
    assert_eq!(error_count(&outcome), 0, "{outcome}");

    // A profile uploaded with a differential only: the server builds its snapshot.
    let url = "https://example.org/fhir/StructureDefinition/patient-with-birthdate";
    let r = c
        .post("StructureDefinition", &birthdate_profile(url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let sd_id = json(r).await["id"].as_str().unwrap().to_string();
    let mut no_birth = patient("Prof", "MRN-P1");
    no_birth.as_object_mut().unwrap().remove("birthDate");
    let r = c
        .post("Patient", &profiled(no_birth.clone(), url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert!(has_error_at(
        &json(r).await,
        "required",
        "Patient.birthDate"
    ));
    let r = c
        .post(&format!("Patient/$validate?profile={url}"), &no_birth)
        .send()
        .await
        .unwrap();
    assert!(has_error_at(
        &json(r).await,
        "required",
        "Patient.birthDate"
    ));
    let r = c
        .post("Patient", &profiled(patient("Prof", "MRN-P2"), url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);

    // A profile that loosens its base is refused and not stored.
    let before = stored_versions(&c).await;
    let mut loose = birthdate_profile("https://example.org/fhir/StructureDefinition/loose");
    loose["differential"]["element"][1] =
        json!({"id": "Patient.gender", "path": "Patient.gender", "max": "2"});
    let r = c.post("StructureDefinition", &loose).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(stored_versions(&c).await, before);

    // A profile of a type FHIR does not have is refused too, rather than stored unused.
    let mut unknown = birthdate_profile("https://example.org/fhir/StructureDefinition/unknown");
    unknown["type"] = json!("Spaceship");
    unknown["baseDefinition"] = json!("http://hl7.org/fhir/StructureDefinition/DomainResource");
    unknown["differential"] = json!({"element": [{"id": "Spaceship", "path": "Spaceship"}]});
    unknown["snapshot"] = json!({"element": [{
        "id": "Spaceship", "path": "Spaceship", "definition": "A vessel.", "min": 0, "max": "*",
        "base": {"path": "Spaceship", "min": 0, "max": "*"}
    }]});
    let r = c
        .post("StructureDefinition", &unknown)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let outcome = json(r).await;
    assert_eq!(
        outcome["issue"][0]["details"]["coding"][0]["code"], "invalid-profile",
        "{outcome}"
    );
    assert_eq!(stored_versions(&c).await, before);

    // Profiles survive a restart: loaded from the store.
    server.terminate();
    let server = Server::start_in(&dir, &[]).await;
    let c = server.client("system/*.cruds").await;
    let r = c
        .post("Patient", &profiled(no_birth.clone(), url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);

    // Deleting the StructureDefinition retires the profile: an unknown profile is a warning.
    let r = c
        .delete(&format!("StructureDefinition/{sd_id}"))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let r = c
        .post("Patient", &profiled(no_birth, url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);

    // US Core through the API on this server (no package this time).
    let r = c
        .post(
            "Patient",
            &profiled(
                json!({"resourceType": "Patient", "birthDate": "1970"}),
                US_CORE_PATIENT,
            ),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::CREATED,
        "not held after restart without the package"
    );
    let definitions: Value =
        serde_json::from_slice(&std::fs::read(fixture("us-core-5.0.1-patient.json")).unwrap())
            .unwrap();
    for sd in definitions.as_array().unwrap() {
        let r = c.post("StructureDefinition", sd).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::CREATED, "{}", sd["url"]);
    }
    let r = c
        .post(
            "Patient",
            &profiled(
                json!({"resourceType": "Patient", "birthDate": "1970"}),
                US_CORE_PATIENT,
            ),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
}

#[tokio::test]
async fn what_the_server_writes_is_valid_fhir() {
    let server = Server::start().await;
    let c = server.client("system/*.cruds system/AuditEvent.rs").await;
    let created = c.create(&patient("Self", "MRN-SELF")).await;
    let id = created["id"].as_str().unwrap();
    let mut answers = vec![
        created.clone(),
        json(c.get("metadata").send().await.unwrap()).await,
        json(c.get("Patient?identifier=MRN-SELF").send().await.unwrap()).await,
        json(
            c.get("Patient?identifier=MRN-SELF&_summary=count")
                .send()
                .await
                .unwrap(),
        )
        .await,
        json(
            c.get(&format!("Patient/{id}/_history"))
                .send()
                .await
                .unwrap(),
        )
        .await,
        json(c.get("_history").send().await.unwrap()).await,
        json(c.get("Patient/unknown-id").send().await.unwrap()).await,
        json(
            c.post("Observation", &json!({"resourceType": "Observation"}))
                .send()
                .await
                .unwrap(),
        )
        .await,
    ];
    let trail = json(
        c.get(&format!("AuditEvent?patient=Patient/{id}"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    answers.push(trail["entry"][0]["resource"].clone());
    answers.push(trail);
    for answer in answers {
        let resource_type = answer["resourceType"].as_str().unwrap().to_string();
        let r = c
            .post(&format!("{resource_type}/$validate"), &answer)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{resource_type}");
        let outcome = json(r).await;
        assert_eq!(
            error_count(&outcome),
            0,
            "{resource_type}: {answer}\n{outcome}"
        );
    }
}
