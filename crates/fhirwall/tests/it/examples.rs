//! The specification's example resources through the real server: each is created (JSON, and every tenth also as XML) and the answer agrees with the validator's verdict, so the API refuses exactly what validation refuses; skipped when `../shared` is absent.

use std::sync::Arc;

use reqwest::StatusCode;
use serde_json::Value;

use crate::support::{Client, Server};

/// Larger bodies exceed what a create is for (the bulk definition Bundles run to megabytes).
const MAX_EXAMPLE_BYTES: usize = 1024 * 1024;
const WORKERS: usize = 8;

struct Example {
    name: String,
    body: Value,
    valid: bool,
    as_xml: Option<String>,
}

async fn create(c: &Client, example: &Example) -> (StatusCode, Option<StatusCode>) {
    let resource_type = example.body["resourceType"].as_str().unwrap();
    let json = c
        .post(resource_type, &example.body)
        .header("prefer", "return=minimal")
        .send()
        .await
        .unwrap()
        .status();
    let xml = match &example.as_xml {
        Some(xml) => Some(
            c.http
                .post(c.fhir(resource_type))
                .bearer_auth(&c.token)
                .header("content-type", "application/fhir+xml")
                .header("prefer", "return=minimal")
                .body(xml.clone())
                .send()
                .await
                .unwrap()
                .status(),
        ),
        None => None,
    };
    (json, xml)
}

#[tokio::test]
async fn the_specification_examples_are_accepted_exactly_when_valid() {
    let Some(package) = fhirwall_testdata::shared_file_or_skip(fhirwall_testdata::EXAMPLES_PACKAGE)
    else {
        return;
    };
    let definitions = fhirwall_definitions::Definitions::core();
    let validator = fhirwall_validation::Validator::new(definitions);
    let options = fhirwall_validation::ValidateOptions::default();
    let mut examples = Vec::new();
    fhirwall_testdata::for_each_package_json(
        &package,
        |name| name != "package.json",
        |name, bytes| {
            if bytes.len() > MAX_EXAMPLE_BYTES {
                return;
            }
            let Ok(body) = serde_json::from_slice::<Value>(&bytes) else {
                return;
            };
            // The server's AuditEvents are its own trail, read-only through the API (405).
            if body["resourceType"] == "AuditEvent" {
                return;
            }
            let valid = validator.validate(&body, &options).is_valid();
            let as_xml = (examples.len() % 10 == 0)
                .then(|| fhirwall_xml::json_to_xml(&body, definitions, false).ok())
                .flatten();
            examples.push(Example {
                name,
                body,
                valid,
                as_xml,
            });
        },
    )
    .unwrap();
    assert!(examples.len() > 5000, "{}", examples.len());

    // The examples refer to one another in no particular order, and to resources that are
    // not among them: referential integrity is switched off for this load.
    let server = Server::start_with(&["--referential-integrity", "false"]).await;
    let c = server.client("system/*.cruds").await;
    let examples = Arc::new(examples);
    let mut workers = Vec::new();
    for worker in 0..WORKERS {
        let c = c.clone();
        let examples = Arc::clone(&examples);
        workers.push(tokio::spawn(async move {
            let mut wrong = Vec::new();
            for example in examples.iter().skip(worker).step_by(WORKERS) {
                let (json, xml) = create(&c, example).await;
                let expected_ok = example.valid;
                let json_ok = json == StatusCode::CREATED;
                if json_ok != expected_ok || !(json_ok || json.is_client_error()) {
                    wrong.push(format!(
                        "{} (JSON): {json}, valid={expected_ok}",
                        example.name
                    ));
                }
                if let Some(xml) = xml
                    && xml != json
                {
                    wrong.push(format!("{} (XML): {xml}, JSON gave {json}", example.name));
                }
            }
            wrong
        }));
    }
    let mut wrong = Vec::new();
    for worker in workers {
        wrong.extend(worker.await.unwrap());
    }
    let accepted = examples.iter().filter(|e| e.valid).count();
    println!(
        "{} examples through the API: {accepted} valid and created, {} refused as invalid",
        examples.len(),
        examples.len() - accepted
    );
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    // The validator's own corpus test names the few invalid ones; here they must stay few.
    assert!(examples.len() - accepted < 40);
}
