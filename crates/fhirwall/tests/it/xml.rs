//! FHIR XML on the wire: request bodies, answers chosen by Accept and `_format`, errors, Bundles, and refusal of DTDs and entities.

use reqwest::StatusCode;
use reqwest::header::{ACCEPT, CONTENT_TYPE};
use serde_json::Value;

use crate::support::{Client, Server, json, patient, stored_versions};

const XML: &str = "application/fhir+xml";

const PATIENT_XML: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<Patient xmlns="http://hl7.org/fhir">
  <text>
    <status value="generated"/>
    <div xmlns="http://www.w3.org/1999/xhtml"><p>Testa Xml</p></div>
  </text>
  <identifier>
    <system value="urn:oid:1.2.36.146.595.217.0.1"/>
    <value value="MRN-X1"/>
  </identifier>
  <name>
    <family value="Xml"/>
    <given value="Testa"/>
    <given value="Marie"/>
  </name>
  <gender value="female"/>
  <birthDate id="bd" value="1974-12-25">
    <extension url="http://hl7.org/fhir/StructureDefinition/patient-birthTime">
      <valueDateTime value="1974-12-25T14:35:45-05:00"/>
    </extension>
  </birthDate>
  <multipleBirthInteger value="2"/>
</Patient>"#;

async fn send_xml(
    c: &Client,
    method: reqwest::Method,
    path: &str,
    body: &str,
) -> reqwest::Response {
    c.http
        .request(method, c.fhir(path))
        .bearer_auth(&c.token)
        .header(CONTENT_TYPE, XML)
        .header(ACCEPT, XML)
        .body(body.to_string())
        .send()
        .await
        .unwrap()
}

fn content_type(r: &reqwest::Response) -> String {
    r.headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

#[tokio::test]
async fn xml_in_and_out_on_every_interaction() {
    let server = Server::start().await;
    let c = server.client("system/*.cruds").await;

    // Create from XML, answered in XML.
    let r = send_xml(&c, reqwest::Method::POST, "Patient", PATIENT_XML).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    assert!(content_type(&r).starts_with(XML));
    let created = r.text().await.unwrap();
    assert!(
        created.starts_with("<Patient xmlns=\"http://hl7.org/fhir\">"),
        "{created}"
    );
    assert!(created.contains("<versionId value=\"1\"/>"), "{created}");

    // The same resource read as JSON: every element arrived, primitive extensions included.
    let list = json(c.get("Patient?identifier=MRN-X1").send().await.unwrap()).await;
    let stored = &list["entry"][0]["resource"];
    let id = stored["id"].as_str().unwrap().to_string();
    assert_eq!(
        stored["name"][0]["given"],
        serde_json::json!(["Testa", "Marie"])
    );
    assert_eq!(stored["birthDate"], "1974-12-25");
    assert_eq!(stored["_birthDate"]["id"], "bd");
    assert_eq!(
        stored["_birthDate"]["extension"][0]["valueDateTime"],
        "1974-12-25T14:35:45-05:00"
    );
    assert_eq!(stored["multipleBirthInteger"], 2);
    assert!(
        stored["text"]["div"]
            .as_str()
            .unwrap()
            .contains("<p>Testa Xml</p>")
    );

    // Read in XML by Accept and by _format; JSON by _format even when Accept says XML.
    let r = c
        .get(&format!("Patient/{id}"))
        .header(ACCEPT, XML)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(content_type(&r).starts_with(XML));
    let xml = r.text().await.unwrap();
    // Element order follows the definitions: id, meta, text, identifier, name, gender, birthDate.
    let order: Vec<usize> = [
        "<id ",
        "<meta>",
        "<text>",
        "<identifier>",
        "<name>",
        "<gender ",
        "<birthDate ",
    ]
    .iter()
    .map(|tag| xml.find(tag).unwrap_or_else(|| panic!("{tag} in {xml}")))
    .collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{xml}");
    let r = c
        .get(&format!("Patient/{id}?_format=xml"))
        .send()
        .await
        .unwrap();
    assert!(content_type(&r).starts_with(XML));
    let r = c
        .get(&format!("Patient/{id}?_format=json"))
        .header(ACCEPT, XML)
        .send()
        .await
        .unwrap();
    assert!(content_type(&r).starts_with("application/fhir+json"));

    // Update with the XML read back (the round trip loses nothing), then compare as JSON.
    let r = send_xml(&c, reqwest::Method::PUT, &format!("Patient/{id}"), &xml).await;
    assert_eq!(
        r.status(),
        StatusCode::OK,
        "{}",
        r.text().await.unwrap_or_default()
    );
    let v2 = json(c.get(&format!("Patient/{id}")).send().await.unwrap()).await;
    let mut a = stored.clone();
    let mut b = v2.clone();
    a.as_object_mut().unwrap().remove("meta");
    b.as_object_mut().unwrap().remove("meta");
    assert_eq!(a, b);
    assert_eq!(v2["meta"]["versionId"], "2");

    // Search and history Bundles in XML.
    let r = c
        .get("Patient?identifier=MRN-X1&_format=xml")
        .send()
        .await
        .unwrap();
    let bundle = r.text().await.unwrap();
    assert!(
        bundle.contains("<Bundle xmlns=\"http://hl7.org/fhir\">"),
        "{bundle}"
    );
    assert!(
        bundle.contains("<resource><Patient xmlns=\"http://hl7.org/fhir\">"),
        "{bundle}"
    );
    let r = c
        .get(&format!("Patient/{id}/_history"))
        .header(ACCEPT, XML)
        .send()
        .await
        .unwrap();
    assert!(
        r.text()
            .await
            .unwrap()
            .contains("<type value=\"history\"/>")
    );

    // Errors come back in XML too.
    let r = c
        .get("Patient/no-such-patient")
        .header(ACCEPT, XML)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert!(content_type(&r).starts_with(XML));
    assert!(
        r.text()
            .await
            .unwrap()
            .contains("<OperationOutcome xmlns=\"http://hl7.org/fhir\">")
    );

    // $validate with XML in and out.
    let r = send_xml(&c, reqwest::Method::POST, "Patient/$validate", PATIENT_XML).await;
    assert_eq!(r.status(), StatusCode::OK);
    let outcome = r.text().await.unwrap();
    assert!(outcome.contains("<OperationOutcome"), "{outcome}");
    assert!(
        !outcome.contains("<severity value=\"error\"/>"),
        "{outcome}"
    );

    // The CapabilityStatement in XML.
    let r = c.get("metadata").header(ACCEPT, XML).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.text().await.unwrap().contains("<CapabilityStatement"));

    // Formats nobody speaks here.
    let r = c
        .get(&format!("Patient/{id}"))
        .header(ACCEPT, "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_ACCEPTABLE);
    let r = c
        .get(&format!("Patient/{id}?_format=turtle"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_ACCEPTABLE);
}

#[tokio::test]
async fn hostile_or_broken_xml_is_refused_and_changes_nothing() {
    let server = Server::start_in(&crate::support::fresh_dir(), &["--max-json-depth", "20"]).await;
    let c = server.client("system/*.cruds").await;
    c.create(&patient("Keep", "MRN-K1")).await;
    let before = stored_versions(&c).await;
    let deep = format!(
        "<Patient xmlns=\"http://hl7.org/fhir\">{}{}</Patient>",
        "<contact><name><extension url=\"http://e.org/x\">".repeat(10),
        "</extension></name></contact>".repeat(10)
    );
    let cases: Vec<(&str, String)> = vec![
        (
            "internal entity expansion",
            r#"<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;">]><Patient xmlns="http://hl7.org/fhir"><gender value="&lol2;"/></Patient>"#.to_string(),
        ),
        (
            "external entity",
            r#"<?xml version="1.0"?><!DOCTYPE p [<!ENTITY xxe SYSTEM "file:///etc/passwd">]><Patient xmlns="http://hl7.org/fhir"><gender value="&xxe;"/></Patient>"#.to_string(),
        ),
        ("no namespace", "<Patient><gender value=\"female\"/></Patient>".to_string()),
        (
            "unknown element",
            r#"<Patient xmlns="http://hl7.org/fhir"><nickname value="x"/></Patient>"#.to_string(),
        ),
        (
            "out of order",
            r#"<Patient xmlns="http://hl7.org/fhir"><gender value="female"/><name><family value="A"/></name></Patient>"#.to_string(),
        ),
        ("not well-formed", "<Patient xmlns=\"http://hl7.org/fhir\"><gender value=\"female\">".to_string()),
        ("too deep", deep),
        (
            "wrong type in the URL",
            r#"<Observation xmlns="http://hl7.org/fhir"><status value="final"/></Observation>"#.to_string(),
        ),
    ];
    for (what, body) in cases {
        let r = send_xml(&c, reqwest::Method::POST, "Patient", &body).await;
        assert!(r.status().is_client_error(), "{what}: {}", r.status());
        let text = r.text().await.unwrap();
        assert!(text.contains("<OperationOutcome"), "{what}: {text}");
        assert!(!text.contains("root:"), "{what}: leaked file content");
    }
    // The refusals are answered as OperationOutcome JSON to a client that asks for JSON, and
    // in XML, the body's format, to one that states no preference.
    let hostile = r#"<!DOCTYPE p [<!ENTITY x "y">]><Patient xmlns="http://hl7.org/fhir"/>"#;
    let r = c
        .http
        .post(c.fhir("Patient"))
        .bearer_auth(&c.token)
        .header(CONTENT_TYPE, XML)
        .header(ACCEPT, "application/fhir+json")
        .body(hostile)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let outcome: Value = r.json().await.unwrap();
    assert_eq!(
        outcome["issue"][0]["details"]["coding"][0]["code"],
        "invalid-xml"
    );
    let r = c
        .http
        .post(c.fhir("Patient"))
        .bearer_auth(&c.token)
        .header(CONTENT_TYPE, XML)
        .body(hostile)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(content_type(&r).starts_with(XML));
    assert!(
        r.text()
            .await
            .unwrap()
            .contains("<code value=\"invalid-xml\"/>")
    );
    assert_eq!(stored_versions(&c).await, before);
}
