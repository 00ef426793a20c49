//! The RESTful interactions end to end: CRUD, versions, conditional requests, history, negotiation.

use reqwest::StatusCode;
use reqwest::header::{
    ACCEPT, CONTENT_TYPE, ETAG, IF_MATCH, IF_MODIFIED_SINCE, IF_NONE_MATCH, LAST_MODIFIED, LOCATION,
};
use serde_json::{Value, json};

use crate::support::{Server, json, patient};

#[tokio::test]
async fn create_read_update_patch_delete_and_versions() {
    let server = Server::start().await;
    let c = server.client("system/*.cruds").await;

    let response = c
        .post("Patient", &patient("Lifecycle", "MRN-1"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let location = response.headers()[LOCATION].to_str().unwrap().to_string();
    assert_eq!(response.headers()[ETAG], "W/\"1\"");
    assert!(response.headers().contains_key(LAST_MODIFIED));
    assert!(
        response.headers()[CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("application/fhir+json")
    );
    let created = json(response).await;
    let id = created["id"].as_str().unwrap().to_string();
    assert_eq!(
        location,
        format!("{}/fhir/Patient/{id}/_history/1", server.origin)
    );
    assert_eq!(created["meta"]["versionId"], "1");
    assert!(
        created["meta"]["lastUpdated"]
            .as_str()
            .unwrap()
            .ends_with('Z')
    );
    assert_eq!(created["name"][0]["family"], "Lifecycle");

    let read = c.get(&format!("Patient/{id}")).send().await.unwrap();
    assert_eq!(read.status(), 200);
    assert_eq!(read.headers()[ETAG], "W/\"1\"");
    let last_modified = read.headers()[LAST_MODIFIED].to_str().unwrap().to_string();
    assert_eq!(json(read).await, created);

    // Conditional reads.
    let r = c
        .get(&format!("Patient/{id}"))
        .header(IF_NONE_MATCH, "W/\"1\"")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
    let r = c
        .get(&format!("Patient/{id}"))
        .header(IF_MODIFIED_SINCE, &last_modified)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
    let r = c
        .get(&format!("Patient/{id}"))
        .header(IF_NONE_MATCH, "W/\"7\"")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // Update.
    let mut changed = created.clone();
    changed["gender"] = json!("other");
    let r = c
        .put(&format!("Patient/{id}"), &changed)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()[ETAG], "W/\"2\"");
    let v2 = json(r).await;
    assert_eq!(v2["meta"]["versionId"], "2");
    assert_eq!(v2["gender"], "other");

    // A stale If-Match is refused and changes nothing.
    let r = c
        .put(&format!("Patient/{id}"), &changed)
        .header(IF_MATCH, "W/\"1\"")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PRECONDITION_FAILED);
    assert_eq!(json(r).await["resourceType"], "OperationOutcome");
    let r = c
        .put(&format!("Patient/{id}"), &changed)
        .header(IF_MATCH, "W/\"2\"")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()[ETAG], "W/\"3\"");

    // JSON Patch.
    let r = c
        .http
        .patch(c.fhir(&format!("Patient/{id}")))
        .bearer_auth(&c.token)
        .header(CONTENT_TYPE, "application/json-patch+json")
        .body(r#"[{"op":"replace","path":"/birthDate","value":"1975-01-01"},{"op":"add","path":"/active","value":true}]"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v4 = json(r).await;
    assert_eq!(v4["meta"]["versionId"], "4");
    assert_eq!(v4["birthDate"], "1975-01-01");
    assert_eq!(v4["active"], true);
    // A patch that fails its test changes nothing.
    let r = c
        .http
        .patch(c.fhir(&format!("Patient/{id}")))
        .bearer_auth(&c.token)
        .header(CONTENT_TYPE, "application/json-patch+json")
        .body(r#"[{"op":"test","path":"/gender","value":"male"},{"op":"remove","path":"/name"}]"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    // A patch may not change the id.
    let r = c
        .http
        .patch(c.fhir(&format!("Patient/{id}")))
        .bearer_auth(&c.token)
        .header(CONTENT_TYPE, "application/json-patch+json")
        .body(r#"[{"op":"replace","path":"/id","value":"other"}]"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);

    // vread of an old version.
    let r = c
        .get(&format!("Patient/{id}/_history/1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(json(r).await["gender"], "female");
    assert_eq!(
        c.get(&format!("Patient/{id}/_history/99"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );

    // Delete: later reads answer 410, history keeps everything.
    let r = c.delete(&format!("Patient/{id}")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        c.get(&format!("Patient/{id}"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::GONE
    );
    assert_eq!(
        c.get(&format!("Patient/{id}/_history/5"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::GONE
    );
    assert_eq!(
        c.get(&format!("Patient/{id}/_history/4"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let history = json(
        c.get(&format!("Patient/{id}/_history"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(history["type"], "history");
    let entries = history["entry"].as_array().unwrap();
    assert_eq!(entries.len(), 5);
    assert_eq!(entries[0]["request"]["method"], "DELETE");
    assert!(entries[0].get("resource").is_none());
    assert_eq!(entries[4]["request"]["method"], "POST");
    assert_eq!(entries[4]["resource"]["meta"]["versionId"], "1");
    // Deleting again changes nothing; so does deleting what never existed.
    assert_eq!(
        c.delete(&format!("Patient/{id}"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        c.delete("Patient/never-was").send().await.unwrap().status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        c.get("Patient/never-was").send().await.unwrap().status(),
        404
    );

    // Update after delete brings it back as a new version: created again, so 201.
    let r = c
        .put(&format!("Patient/{id}"), &changed)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(r.headers()[ETAG], "W/\"6\"");
}

#[tokio::test]
async fn fhirpath_patch_in_json_xml_and_transactions() {
    let server = Server::start().await;
    let c = server.client("system/*.cruds").await;
    let mut body = patient("Patchy", "MRN-FP");
    body["active"] = json!(true);
    body.as_object_mut().unwrap().remove("gender");
    let created = c.create(&body).await;
    let id = created["id"].as_str().unwrap().to_string();
    // FHIRPath Patch, in JSON and in XML.
    let fhirpath_patch = json!({
        "resourceType": "Parameters",
        "parameter": [
            {"name": "operation", "part": [
                {"name": "type", "valueCode": "replace"},
                {"name": "path", "valueString": "Patient.birthDate"},
                {"name": "value", "valueDate": "1976-06-06"}
            ]},
            {"name": "operation", "part": [
                {"name": "type", "valueCode": "add"},
                {"name": "path", "valueString": "Patient"},
                {"name": "name", "valueString": "gender"},
                {"name": "value", "valueCode": "female"}
            ]},
            {"name": "operation", "part": [
                {"name": "type", "valueCode": "delete"},
                {"name": "path", "valueString": "Patient.active"}
            ]}
        ]
    });
    let r = c
        .http
        .patch(c.fhir(&format!("Patient/{id}")))
        .bearer_auth(&c.token)
        .header(CONTENT_TYPE, "application/fhir+json")
        .body(fhirpath_patch.to_string())
        .send()
        .await
        .unwrap();
    let status = r.status();
    assert_eq!(status, 200, "{}", r.text().await.unwrap());
    let patched = json(r).await;
    assert_eq!(patched["meta"]["versionId"], "2");
    assert_eq!(patched["birthDate"], "1976-06-06");
    assert_eq!(patched["gender"], "female");
    assert!(patched.get("active").is_none());
    let xml_patch = r#"<Parameters xmlns="http://hl7.org/fhir"><parameter><name value="operation"/><part><name value="type"/><valueCode value="replace"/></part><part><name value="path"/><valueString value="Patient.gender"/></part><part><name value="value"/><valueCode value="male"/></part></parameter></Parameters>"#;
    let r = c
        .http
        .patch(c.fhir(&format!("Patient/{id}")))
        .bearer_auth(&c.token)
        .header(CONTENT_TYPE, "application/fhir+xml")
        .header("Accept", "application/fhir+json")
        .body(xml_patch)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(json(r).await["gender"], "male");
    // A FHIRPath Patch that cannot apply (add to an element that has a value; a value of the
    // wrong type) changes nothing.
    for value in [
        json!({"name": "value", "valueCode": "other"}),
        json!({"name": "value", "valueBoolean": true}),
    ] {
        let op = if value.get("valueCode").is_some() {
            "add"
        } else {
            "replace"
        };
        let mut parts = vec![
            json!({"name": "type", "valueCode": op}),
            json!({"name": "path", "valueString": if op == "add" { "Patient" } else { "Patient.gender" }}),
            value,
        ];
        if op == "add" {
            parts.push(json!({"name": "name", "valueString": "gender"}));
        }
        let body = json!({"resourceType": "Parameters", "parameter": [{"name": "operation", "part": parts}]});
        let r = c
            .http
            .patch(c.fhir(&format!("Patient/{id}")))
            .bearer_auth(&c.token)
            .header(CONTENT_TYPE, "application/fhir+json")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY, "{op}");
    }
    let current = json(c.get(&format!("Patient/{id}")).send().await.unwrap()).await;
    assert_eq!(current["meta"]["versionId"], "3");

    // Inside a transaction, the entry's resource is the Parameters resource.
    let bundle = json!({
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [{
            "resource": {"resourceType": "Parameters", "parameter": [{"name": "operation", "part": [
                {"name": "type", "valueCode": "replace"},
                {"name": "path", "valueString": "Patient.birthDate"},
                {"name": "value", "valueDate": "1990-09-09"}
            ]}]},
            "request": {"method": "PATCH", "url": format!("Patient/{id}")}
        }]
    });
    let r = c.post("", &bundle).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let answer = json(r).await;
    assert!(
        answer["entry"][0]["response"]["status"]
            .as_str()
            .unwrap()
            .starts_with("200"),
        "{answer}"
    );
    let current = json(c.get(&format!("Patient/{id}")).send().await.unwrap()).await;
    assert_eq!(current["birthDate"], "1990-09-09");
    assert_eq!(current["meta"]["versionId"], "4");
    let (ok, out) = server.audit_verify();
    assert!(ok, "{out}");
}

#[tokio::test]
async fn update_as_create_and_prefer() {
    let server = Server::start().await;
    let c = server.client("system/*.cruds").await;
    let mut body = patient("Chosen", "MRN-2");
    body["id"] = json!("client-chosen-1");
    let r = c
        .put("Patient/client-chosen-1", &body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert!(
        r.headers()[LOCATION]
            .to_str()
            .unwrap()
            .ends_with("/fhir/Patient/client-chosen-1/_history/1")
    );

    let r = c
        .post("Patient", &patient("Minimal", "MRN-3"))
        .header("Prefer", "return=minimal")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert!(r.headers().contains_key(LOCATION));
    assert!(r.bytes().await.unwrap().is_empty());
    let r = c
        .post("Patient", &patient("Outcome", "MRN-4"))
        .header("Prefer", "return=OperationOutcome")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(json(r).await["resourceType"], "OperationOutcome");
    // The server assigns the id of a create, whatever the body says.
    let mut with_id = patient("Ignored", "MRN-5");
    with_id["id"] = json!("ignored-id");
    let created = c.create(&with_id).await;
    assert_ne!(created["id"], "ignored-id");
}

#[tokio::test]
async fn concurrent_updates_never_lose_a_write() {
    let server = Server::start().await;
    let c = server.client("system/*.cruds").await;
    let created = c.create(&patient("Race", "MRN-R")).await;
    let id = created["id"].as_str().unwrap().to_string();
    let mut tasks = Vec::new();
    for i in 0..20 {
        let c = c.clone();
        let mut body = created.clone();
        let id = id.clone();
        tasks.push(tokio::spawn(async move {
            body["name"][0]["given"] = json!([format!("Writer{i}")]);
            c.put(&format!("Patient/{id}"), &body)
                .send()
                .await
                .unwrap()
                .status()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    let history = json(
        c.get(&format!("Patient/{id}/_history?_count=100"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(history["entry"].as_array().unwrap().len(), 21);
    let current = json(c.get(&format!("Patient/{id}")).send().await.unwrap()).await;
    assert_eq!(current["meta"]["versionId"], "21");

    // With If-Match, exactly one of several writers holding the same version wins.
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let c = c.clone();
        let body = current.clone();
        let id = id.clone();
        tasks.push(tokio::spawn(async move {
            c.put(&format!("Patient/{id}"), &body)
                .header(IF_MATCH, "W/\"21\"")
                .send()
                .await
                .unwrap()
                .status()
        }));
    }
    let mut ok = 0;
    for t in tasks {
        match t.await.unwrap() {
            StatusCode::OK => ok += 1,
            StatusCode::PRECONDITION_FAILED => {}
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(ok, 1);
}

#[tokio::test]
async fn conditional_create_update_delete_by_identifier() {
    let server = Server::start().await;
    let c = server.client("system/*.cruds").await;
    let system = "urn:oid:1.2.36.146.595.217.0.1";
    let body = patient("Conditional", "MRN-C1");
    let r = c
        .post("Patient", &body)
        .header("If-None-Exist", format!("identifier={system}|MRN-C1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let first = json(r).await;
    let r = c
        .post("Patient", &body)
        .header("If-None-Exist", format!("identifier={system}|MRN-C1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "a match means no new resource");
    assert_eq!(json(r).await["id"], first["id"]);
    // Value alone matches any system.
    let r = c
        .post("Patient", &body)
        .header("If-None-Exist", "identifier=MRN-C1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // Concurrent conditional creates make exactly one resource.
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let c = c.clone();
        let body = patient("Once", "MRN-ONCE");
        tasks.push(tokio::spawn(async move {
            c.post("Patient", &body)
                .header("If-None-Exist", "identifier=MRN-ONCE")
                .send()
                .await
                .unwrap()
                .status()
        }));
    }
    let mut created = 0;
    for t in tasks {
        let s = t.await.unwrap();
        assert!(s == 201 || s == 200, "{s}");
        if s == 201 {
            created += 1;
        }
    }
    assert_eq!(created, 1);
    let search = json(c.get("Patient?identifier=MRN-ONCE").send().await.unwrap()).await;
    assert_eq!(search["entry"].as_array().unwrap().len(), 1);

    // Conditional update: one match updates it; none creates.
    let mut update = body.clone();
    update["gender"] = json!("male");
    let r = c
        .put(&format!("Patient?identifier={system}|MRN-C1"), &update)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let updated = json(r).await;
    assert_eq!(updated["id"], first["id"]);
    assert_eq!(updated["meta"]["versionId"], "2");
    let r = c
        .put("Patient?identifier=MRN-NEW", &patient("New", "MRN-NEW"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    // Several matches: 412.
    c.create(&patient("Dup", "MRN-DUP")).await;
    c.create(&patient("Dup", "MRN-DUP")).await;
    let r = c
        .put("Patient?identifier=MRN-DUP", &patient("Dup", "MRN-DUP"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PRECONDITION_FAILED);
    let r = c.delete("Patient?identifier=MRN-DUP").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::PRECONDITION_FAILED);
    // Conditional delete by identifier and by _id.
    let r = c
        .delete(&format!("Patient?identifier={system}|MRN-C1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        c.get(&format!("Patient/{}", first["id"].as_str().unwrap()))
            .send()
            .await
            .unwrap()
            .status(),
        410
    );
    let other = c.create(&patient("ById", "MRN-ID")).await;
    let r = c
        .delete(&format!("Patient?_id={}", other["id"].as_str().unwrap()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    // Criteria that match several resources delete none of them.
    let r = c.delete("Patient?name=Dup").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::PRECONDITION_FAILED);
    // Unsupported criteria are refused, not ignored.
    let r = c.delete("Patient?frobnicate=Dup").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn history_paging_since_and_search() {
    let server = Server::start().await;
    let c = server.client("system/*.cruds").await;
    for i in 0..7 {
        c.create(&patient("Paged", &format!("P-{i}"))).await;
    }
    let obs = json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"}});
    c.create(&obs).await;
    let mut url = c.fhir("Patient/_history?_count=3");
    let mut seen = 0;
    let mut pages = 0;
    loop {
        let page: Value = c
            .http
            .get(&url)
            .bearer_auth(&c.token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        seen += page["entry"].as_array().map_or(0, Vec::len);
        pages += 1;
        let next = page["link"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["relation"] == "next");
        match next {
            Some(n) => url = n["url"].as_str().unwrap().to_string(),
            None => break,
        }
    }
    assert_eq!(seen, 7);
    assert_eq!(pages, 3);
    let all = json(c.get("_history").send().await.unwrap()).await;
    assert_eq!(all["entry"].as_array().unwrap().len(), 8);
    let future = json(
        c.get("_history?_since=2999-01-01T00:00:00Z")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert!(future["entry"].as_array().unwrap().is_empty());
    let past = json(
        c.get("Patient/_history?_since=2000-01-01")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(past["entry"].as_array().unwrap().len(), 7);
    assert_eq!(
        c.get("_history?_since=yesterday")
            .send()
            .await
            .unwrap()
            .status(),
        400
    );

    let search = json(c.get("Patient?identifier=P-3").send().await.unwrap()).await;
    assert_eq!(search["type"], "searchset");
    assert_eq!(search["total"], 1);
    assert_eq!(
        search["entry"][0]["resource"]["identifier"][0]["value"],
        "P-3"
    );
    let both = json(c.get("Patient?identifier=P-3,P-4").send().await.unwrap()).await;
    assert_eq!(both["entry"].as_array().unwrap().len(), 2);
    let all = json(c.get("Patient").send().await.unwrap()).await;
    assert_eq!(all["total"], 7);
    let count = json(c.get("Patient?_summary=count").send().await.unwrap()).await;
    assert_eq!(count["total"], 7);
    assert!(count.get("entry").is_none());
}

#[tokio::test]
async fn negotiation_summary_elements_and_metadata() {
    let server = Server::start().await;
    let c = server.client("system/*.cruds").await;
    let created = c.create(&patient("Shape", "MRN-S")).await;
    let id = created["id"].as_str().unwrap();

    let r = c
        .get(&format!("Patient/{id}"))
        .header(ACCEPT, "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_ACCEPTABLE);
    assert_eq!(json(r).await["resourceType"], "OperationOutcome");
    assert_eq!(
        c.get(&format!("Patient/{id}?_format=text/turtle"))
            .send()
            .await
            .unwrap()
            .status(),
        406
    );
    assert_eq!(
        c.get(&format!("Patient/{id}?_format=json"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let r = c
        .get(&format!("Patient/{id}"))
        .header(ACCEPT, "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    let pretty = c
        .get(&format!("Patient/{id}?_pretty=true"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(pretty.contains("\n  "));
    let summary = json(
        c.get(&format!("Patient/{id}?_summary=true"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert!(summary.get("name").is_some());
    assert_eq!(summary["meta"]["tag"][0]["code"], "SUBSETTED");
    let elements = json(
        c.get(&format!("Patient/{id}?_elements=gender"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(elements["gender"], "female");
    assert!(elements.get("name").is_none());
    assert_eq!(elements["id"], id);
    assert_eq!(
        c.get(&format!("Patient/{id}?_summary=bogus"))
            .send()
            .await
            .unwrap()
            .status(),
        400
    );

    // The CapabilityStatement needs no token and says what the server does.
    let r = c.http.get(c.fhir("metadata")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let cs = json(r).await;
    assert_eq!(cs["resourceType"], "CapabilityStatement");
    assert_eq!(cs["fhirVersion"], "4.0.1");
    let resources = cs["rest"][0]["resource"].as_array().unwrap();
    assert!(resources.len() >= 145);
    let patient = resources.iter().find(|r| r["type"] == "Patient").unwrap();
    assert!(
        patient["interaction"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["code"] == "patch")
    );
    // No oauth-uris extension: its definition requires an authorize endpoint, which backend
    // services lack; the description names the token endpoint, discovery has the rest.
    let security = &cs["rest"][0]["security"];
    assert!(security.get("extension").is_none());
    assert!(
        security["description"]
            .as_str()
            .unwrap()
            .contains(&server.token_url())
    );

    // HTTP/2 is offered by ALPN.
    let r = c.get(&format!("Patient/{id}")).send().await.unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert!(r.headers().contains_key("x-request-id"));
    // And HTTP/1.1 for clients that do not offer h2.
    let ca = std::fs::read(server.data_dir.join("tls/ca.pem")).unwrap();
    let config = crate::support::client_tls(&ca);
    let http1 = reqwest::Client::builder()
        .tls_backend_preconfigured(config)
        .http1_only()
        .build()
        .unwrap();
    let r = http1
        .get(c.fhir(&format!("Patient/{id}")))
        .bearer_auth(&c.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.version(), reqwest::Version::HTTP_11);
}
