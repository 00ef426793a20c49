//! Search through the application: parameters of each type, chains and `_has`, includes,
//! sorting, totals, paging cursors (sealed per client, expiring, stable under writes),
//! compartments, system search, and the scope rules inside a search.

use fhirwall_model::ResourceType;
use fhirwall_service::{ErrorKind, Interaction, Request};
use serde_json::{Value, json};

use crate::support::*;

fn rtype(name: &str) -> ResourceType {
    ResourceType::parse(name).unwrap()
}

async fn create_any(app: &App, body: Value) -> String {
    let t = rtype(body["resourceType"].as_str().unwrap());
    let reply = app
        .handle(
            &admin(),
            Request::new(Interaction::Create(t)).with_body(body),
        )
        .await
        .unwrap();
    assert_eq!(
        reply.status,
        201,
        "{:?}",
        String::from_utf8_lossy(reply.body.as_deref().unwrap_or_default())
    );
    body_of(&reply)["id"].as_str().unwrap().to_string()
}

fn body_of(reply: &fhirwall_service::Reply) -> Value {
    body(reply)
}

async fn find(
    app: &App,
    caller: &fhirwall_service::Caller,
    t: &str,
    params: &[(&str, &str)],
) -> Value {
    let reply = app
        .handle(
            caller,
            Request::new(Interaction::SearchType(rtype(t))).with_params(pairs(params)),
        )
        .await
        .unwrap_or_else(|e| panic!("{t}?{params:?}: {e:?}"));
    assert_eq!(reply.status, 200);
    body(&reply)
}

/// The ids of the entries with `search.mode` `mode`, as `Type/id`, in order.
fn ids(bundle: &Value, mode: &str) -> Vec<String> {
    bundle["entry"]
        .as_array()
        .map(|entries| {
            entries
                .iter()
                .filter(|e| e["search"]["mode"] == mode)
                .map(|e| {
                    format!(
                        "{}/{}",
                        e["resource"]["resourceType"].as_str().unwrap(),
                        e["resource"]["id"].as_str().unwrap()
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn link(bundle: &Value, relation: &str) -> Option<String> {
    bundle["link"]
        .as_array()?
        .iter()
        .find(|l| l["relation"] == relation)
        .and_then(|l| l["url"].as_str())
        .map(str::to_string)
}

/// The `_cursor` value of a paging link.
fn cursor_of(url: &str) -> String {
    let query = url.split_once('?').unwrap().1;
    form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == "_cursor")
        .unwrap()
        .1
        .into_owned()
}

struct World {
    app: App,
    chalmers: String,
    muller: String,
    smith: String,
    practitioner: String,
    bp_chalmers: String,
    glucose_chalmers: String,
    bp_muller: String,
}

async fn world() -> World {
    let app = App::new().await;
    let practitioner = create_any(
        &app,
        json!({"resourceType": "Practitioner", "name": [{"family": "Careful", "given": ["Adam"]}]}),
    )
    .await;
    let chalmers = create_any(
        &app,
        json!({
            "resourceType": "Patient",
            "identifier": [{"system": "urn:mrn", "value": "M-1"}],
            "name": [{"family": "Chalmers", "given": ["Peter", "James"]}],
            "gender": "male",
            "birthDate": "1974-12-25",
            "generalPractitioner": [{"reference": format!("Practitioner/{practitioner}")}],
        }),
    )
    .await;
    let muller = create_any(
        &app,
        json!({
            "resourceType": "Patient",
            "identifier": [{"system": "urn:mrn", "value": "M-2"}],
            "name": [{"family": "Müller", "given": ["Anna"]}],
            "gender": "female",
            "birthDate": "1990-03",
        }),
    )
    .await;
    let smith = create_any(
        &app,
        json!({
            "resourceType": "Patient",
            "identifier": [{"system": "urn:mrn", "value": "M-3"}],
            "name": [{"family": "Smith", "given": ["Chal"]}],
            "gender": "female",
            "birthDate": "2001-07-04",
            "active": true,
        }),
    )
    .await;
    let observation = |patient: &str, code: &str, value: f64, unit: &str, date: &str| {
        json!({
            "resourceType": "Observation",
            "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
            "subject": {"reference": format!("Patient/{patient}")},
            "performer": [{"reference": format!("Practitioner/{practitioner}")}],
            "effectiveDateTime": date,
            "valueQuantity": {"value": value, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit},
        })
    };
    let bp_chalmers = create_any(
        &app,
        observation(&chalmers, "8480-6", 142.0, "mm[Hg]", "2024-05-01T10:00:00Z"),
    )
    .await;
    let glucose_chalmers = create_any(
        &app,
        observation(&chalmers, "2339-0", 95.0, "mg/dL", "2024-06-15T08:30:00Z"),
    )
    .await;
    let bp_muller = create_any(
        &app,
        observation(&muller, "8480-6", 118.0, "mm[Hg]", "2023-01-10T09:00:00Z"),
    )
    .await;
    World {
        app,
        chalmers,
        muller,
        smith,
        practitioner,
        bp_chalmers,
        glucose_chalmers,
        bp_muller,
    }
}

fn patients(ids: &[&String]) -> Vec<String> {
    ids.iter().map(|id| format!("Patient/{id}")).collect()
}

fn observations(ids: &[&String]) -> Vec<String> {
    ids.iter().map(|id| format!("Observation/{id}")).collect()
}

#[tokio::test]
async fn parameters_of_each_type_select_what_they_say() {
    let w = world().await;
    let a = admin();
    let p = |params: &[(&str, &str)]| {
        let app = &w.app;
        let a = &a;
        let params: Vec<(String, String)> = pairs(params);
        async move {
            let refs: Vec<(&str, &str)> = params
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            ids(&find(app, a, "Patient", &refs).await, "match")
        }
    };
    // string: starts-with, case and accents ignored; :exact; :contains
    assert_eq!(p(&[("family", "chal")]).await, patients(&[&w.chalmers]));
    assert_eq!(p(&[("family", "MULLER")]).await, patients(&[&w.muller]));
    assert_eq!(
        p(&[("name", "chal")]).await,
        patients(&[&w.chalmers, &w.smith])
    );
    assert_eq!(
        p(&[("family:exact", "Müller")]).await,
        patients(&[&w.muller])
    );
    assert!(p(&[("family:exact", "muller")]).await.is_empty());
    assert_eq!(
        p(&[("family:contains", "alme")]).await,
        patients(&[&w.chalmers])
    );
    // token, with and without system; OR with commas; :not
    assert_eq!(
        p(&[("gender", "female")]).await,
        patients(&[&w.muller, &w.smith])
    );
    assert_eq!(
        p(&[("gender", "http://hl7.org/fhir/administrative-gender|male")]).await,
        patients(&[&w.chalmers])
    );
    assert_eq!(
        p(&[("identifier", "urn:mrn|M-1,urn:mrn|M-3")]).await,
        patients(&[&w.chalmers, &w.smith])
    );
    assert_eq!(
        p(&[("gender:not", "female")]).await,
        patients(&[&w.chalmers])
    );
    // date: precision and prefixes
    assert_eq!(p(&[("birthdate", "1974")]).await, patients(&[&w.chalmers]));
    assert_eq!(
        p(&[("birthdate", "1974-12-25")]).await,
        patients(&[&w.chalmers])
    );
    assert_eq!(
        p(&[("birthdate", "ge1990-01-01")]).await,
        patients(&[&w.muller, &w.smith])
    );
    assert_eq!(
        p(&[("birthdate", "lt1990")]).await,
        patients(&[&w.chalmers])
    );
    assert_eq!(
        p(&[("birthdate", "ge1980"), ("birthdate", "le2000")]).await,
        patients(&[&w.muller]),
        "repeated parameters AND"
    );
    // :missing
    assert_eq!(
        p(&[("active:missing", "true")]).await,
        patients(&[&w.chalmers, &w.muller])
    );
    assert_eq!(
        p(&[("active:missing", "false")]).await,
        patients(&[&w.smith])
    );
    // reference, and _id with several values
    assert_eq!(
        p(&[(
            "general-practitioner",
            &format!("Practitioner/{}", w.practitioner)
        )])
        .await,
        patients(&[&w.chalmers])
    );
    assert_eq!(
        p(&[("_id", &format!("{},{}", w.smith, w.muller))]).await,
        patients(&[&w.muller, &w.smith])
    );

    let o = |params: &[(&str, &str)]| {
        let app = &w.app;
        let a = &a;
        let params: Vec<(String, String)> = pairs(params);
        async move {
            let refs: Vec<(&str, &str)> = params
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            ids(&find(app, a, "Observation", &refs).await, "match")
        }
    };
    assert_eq!(
        o(&[("subject", &format!("Patient/{}", w.chalmers))]).await,
        observations(&[&w.bp_chalmers, &w.glucose_chalmers])
    );
    assert_eq!(
        o(&[("patient", &w.muller)]).await,
        observations(&[&w.bp_muller]),
        "a bare id"
    );
    assert_eq!(
        o(&[("subject", &format!("{BASE_URL}/fhir/Patient/{}", w.muller))]).await,
        observations(&[&w.bp_muller]),
        "an absolute URL on this server"
    );
    assert_eq!(
        o(&[("code", "http://loinc.org|8480-6")]).await,
        observations(&[&w.bp_chalmers, &w.bp_muller])
    );
    assert_eq!(
        o(&[("value-quantity", "gt130|http://unitsofmeasure.org|mm[Hg]")]).await,
        observations(&[&w.bp_chalmers])
    );
    assert_eq!(
        o(&[("date", "2024")]).await,
        observations(&[&w.bp_chalmers, &w.glucose_chalmers])
    );
    assert_eq!(
        o(&[("date", "lt2024-01-01")]).await,
        observations(&[&w.bp_muller])
    );
    assert_eq!(
        o(&[("code-value-quantity", "http://loinc.org|8480-6$gt130")]).await,
        observations(&[&w.bp_chalmers]),
        "a composite holds on one element"
    );
}

#[tokio::test]
async fn chains_and_has_reach_across_types() {
    let w = world().await;
    let a = admin();
    let chained = find(
        &w.app,
        &a,
        "Observation",
        &[("subject:Patient.family", "chalmers")],
    )
    .await;
    assert_eq!(
        ids(&chained, "match"),
        observations(&[&w.bp_chalmers, &w.glucose_chalmers])
    );
    let untyped = find(
        &w.app,
        &a,
        "Observation",
        &[("patient.birthdate", "lt1980"), ("code", "8480-6")],
    )
    .await;
    assert_eq!(ids(&untyped, "match"), observations(&[&w.bp_chalmers]));
    let two_deep = find(
        &w.app,
        &a,
        "Observation",
        &[(
            "subject:Patient.general-practitioner:Practitioner.family",
            "careful",
        )],
    )
    .await;
    assert_eq!(
        ids(&two_deep, "match"),
        observations(&[&w.bp_chalmers, &w.glucose_chalmers])
    );
    let has = find(
        &w.app,
        &a,
        "Patient",
        &[("_has:Observation:patient:code", "8480-6")],
    )
    .await;
    assert_eq!(ids(&has, "match"), patients(&[&w.chalmers, &w.muller]));
    let has_value = find(
        &w.app,
        &a,
        "Patient",
        &[("_has:Observation:subject:value-quantity", "lt100||mg/dL")],
    )
    .await;
    assert_eq!(ids(&has_value, "match"), patients(&[&w.chalmers]));
    let none = find(
        &w.app,
        &a,
        "Observation",
        &[("subject:Patient.family", "nobody")],
    )
    .await;
    assert!(ids(&none, "match").is_empty());
}

#[tokio::test]
async fn includes_sorting_and_totals() {
    let w = world().await;
    let a = admin();
    // A _count above the cap is cut to it, and the self link shows what was applied.
    let capped = find(&w.app, &a, "Patient", &[("_count", "999999")]).await;
    let self_link = link(&capped, "self").unwrap();
    assert!(self_link.contains("_count=1000"), "{self_link}");
    let included = find(
        &w.app,
        &a,
        "Observation",
        &[
            ("code", "8480-6"),
            ("_include", "Observation:subject"),
            ("_include", "Observation:performer"),
        ],
    )
    .await;
    assert_eq!(
        ids(&included, "match"),
        observations(&[&w.bp_chalmers, &w.bp_muller])
    );
    let mut inc = ids(&included, "include");
    inc.sort();
    let mut expected = vec![
        format!("Patient/{}", w.chalmers),
        format!("Patient/{}", w.muller),
        format!("Practitioner/{}", w.practitioner),
    ];
    expected.sort();
    assert_eq!(inc, expected, "each included once");
    let rev = find(
        &w.app,
        &a,
        "Patient",
        &[
            ("family", "chalmers"),
            ("_revinclude", "Observation:subject"),
        ],
    )
    .await;
    assert_eq!(ids(&rev, "match"), patients(&[&w.chalmers]));
    assert_eq!(
        ids(&rev, "include"),
        observations(&[&w.bp_chalmers, &w.glucose_chalmers])
    );
    let iterate = find(
        &w.app,
        &a,
        "Observation",
        &[
            ("_id", &w.bp_chalmers),
            ("_include", "Observation:subject"),
            ("_include:iterate", "Patient:general-practitioner"),
        ],
    )
    .await;
    let mut inc = ids(&iterate, "include");
    inc.sort();
    let mut expected = vec![
        format!("Patient/{}", w.chalmers),
        format!("Practitioner/{}", w.practitioner),
    ];
    expected.sort();
    assert_eq!(inc, expected);

    let by_birth = find(&w.app, &a, "Patient", &[("_sort", "-birthdate")]).await;
    assert_eq!(
        ids(&by_birth, "match"),
        patients(&[&w.smith, &w.muller, &w.chalmers])
    );
    let by_two = find(&w.app, &a, "Patient", &[("_sort", "gender,family")]).await;
    assert_eq!(
        ids(&by_two, "match"),
        patients(&[&w.muller, &w.smith, &w.chalmers])
    );
    assert_eq!(by_two["total"], 3);
    let bad_sort = w.app.handle(&a, search(&[("_sort", "nonsense")])).await;
    assert_eq!(refused(bad_sort), ErrorKind::Invalid);

    let count = find(
        &w.app,
        &a,
        "Patient",
        &[("gender", "female"), ("_summary", "count")],
    )
    .await;
    assert_eq!(count["total"], 2);
    assert!(count.get("entry").is_none());
    let zero = find(&w.app, &a, "Patient", &[("_count", "0")]).await;
    assert_eq!(zero["total"], 3);
    let accurate = find(
        &w.app,
        &a,
        "Patient",
        &[("_count", "1"), ("_total", "accurate"), ("family", "chal")],
    )
    .await;
    assert_eq!(accurate["total"], 1);
    let none = find(&w.app, &a, "Patient", &[("_total", "none")]).await;
    assert!(none.get("total").is_none());
}

#[tokio::test]
async fn pages_are_sealed_for_their_client_and_stable_under_writes() {
    let app = App::new().await;
    let mut created = Vec::new();
    for n in 0..7 {
        created.push(app.create_patient(&format!("P-{n}")).await.to_string());
    }
    let a = admin();
    let first = find(&app, &a, "Patient", &[("identifier", "urn:mrn|P-0,urn:mrn|P-1,urn:mrn|P-2,urn:mrn|P-3,urn:mrn|P-4,urn:mrn|P-5,urn:mrn|P-6"), ("_count", "3")]).await;
    assert_eq!(ids(&first, "match").len(), 3);
    assert!(link(&first, "previous").is_none());
    let next = link(&first, "next").expect("a next link");
    assert!(
        !next.contains("P-0"),
        "the query is sealed in the cursor: {next}"
    );
    // A write after the first page: the updated patient is neither lost nor repeated.
    app.update_patient(&id(&created[4]), "P-4", "Changed").await;
    app.create_patient("P-0").await;
    async fn page(
        app: &App,
        cursor: &str,
        caller: &fhirwall_service::Caller,
    ) -> Result<fhirwall_service::Reply, fhirwall_service::ServiceError> {
        let request = Request::new(Interaction::SearchType(patient()))
            .with_params(vec![("_cursor".into(), cursor.to_string())]);
        app.handle(caller, request).await
    }
    let second = body(&page(&app, &cursor_of(&next), &a).await.unwrap());
    let third = body(
        &page(&app, &cursor_of(&link(&second, "next").unwrap()), &a)
            .await
            .unwrap(),
    );
    assert!(link(&third, "next").is_none());
    let mut all: Vec<String> = ids(&first, "match");
    all.extend(ids(&second, "match"));
    all.extend(ids(&third, "match"));
    let expected: Vec<String> = created.iter().map(|id| format!("Patient/{id}")).collect();
    let mut sorted = all.clone();
    sorted.sort();
    let mut expected_sorted = expected.clone();
    expected_sorted.sort();
    assert_eq!(sorted, expected_sorted, "every one of the snapshot, once");
    // previous goes back.
    let back = body(
        &page(&app, &cursor_of(&link(&second, "previous").unwrap()), &a)
            .await
            .unwrap(),
    );
    assert_eq!(ids(&back, "match"), ids(&first, "match"));
    // Another client cannot use the cursor.
    let other = caller("system/Patient.rs");
    assert_eq!(
        refused(page(&app, &cursor_of(&next), &other).await),
        ErrorKind::Invalid
    );
    // A forged or expired cursor is refused.
    assert_eq!(refused(page(&app, "AAAA", &a).await), ErrorKind::Invalid);
    app.clock.advance_secs(31 * 60);
    assert_eq!(
        refused(page(&app, &cursor_of(&next), &a).await),
        ErrorKind::Invalid
    );
}

#[tokio::test]
async fn compartments_and_system_search() {
    let w = world().await;
    let a = admin();
    let compartment = w
        .app
        .handle(
            &a,
            Request::new(Interaction::SearchCompartment(
                patient(),
                id(&w.chalmers),
                Some(rtype("Observation")),
            ))
            .with_params(pairs(&[("code", "8480-6")])),
        )
        .await
        .unwrap();
    assert_eq!(
        ids(&body(&compartment), "match"),
        observations(&[&w.bp_chalmers])
    );
    let everything = w
        .app
        .handle(
            &a,
            Request::new(Interaction::SearchCompartment(
                patient(),
                id(&w.muller),
                None,
            )),
        )
        .await
        .unwrap();
    let mut got = ids(&body(&everything), "match");
    got.sort();
    let mut expected = vec![
        format!("Patient/{}", w.muller),
        format!("Observation/{}", w.bp_muller),
    ];
    expected.sort();
    assert_eq!(got, expected);
    let system = w
        .app
        .handle(
            &a,
            Request::new(Interaction::SearchSystem).with_params(pairs(&[
                ("_type", "Patient,Practitioner"),
                ("_id", &format!("{},{}", w.smith, w.practitioner)),
            ])),
        )
        .await
        .unwrap();
    let mut got = ids(&body(&system), "match");
    got.sort();
    let mut expected = vec![
        format!("Patient/{}", w.smith),
        format!("Practitioner/{}", w.practitioner),
    ];
    expected.sort();
    assert_eq!(got, expected);
}

#[tokio::test]
async fn scopes_hold_inside_a_search() {
    let w = world().await;
    let observations_only = caller("system/Observation.rs");
    // A chain through Patient tells about patients: refused.
    let chained = w
        .app
        .handle(
            &observations_only,
            Request::new(Interaction::SearchType(rtype("Observation")))
                .with_params(pairs(&[("subject:Patient.family", "chalmers")])),
        )
        .await;
    assert_eq!(refused(chained), ErrorKind::Forbidden);
    let has = w
        .app
        .handle(
            &caller("system/Patient.rs"),
            search(&[("_has:Observation:patient:code", "8480-6")]),
        )
        .await;
    assert_eq!(refused(has), ErrorKind::Forbidden);
    let include = w
        .app
        .handle(
            &observations_only,
            Request::new(Interaction::SearchType(rtype("Observation")))
                .with_params(pairs(&[("_include", "Observation:subject:Patient")])),
        )
        .await;
    assert_eq!(refused(include), ErrorKind::Forbidden);
    // A wildcard include leaves out what the token may not read, and says so.
    let wildcard = find(
        &w.app,
        &observations_only,
        "Observation",
        &[("_include", "Observation:*"), ("code", "8480-6")],
    )
    .await;
    assert!(ids(&wildcard, "include").is_empty());
    assert!(wildcard.to_string().contains("not included"));
    let system = w
        .app
        .handle(
            &observations_only,
            Request::new(Interaction::SearchSystem).with_params(pairs(&[("_type", "Patient")])),
        )
        .await;
    assert_eq!(refused(system), ErrorKind::Forbidden);
    let _ = (&w.glucose_chalmers, &w.smith);
}

#[tokio::test]
async fn unknown_parameters_are_reported_or_refused() {
    let w = world().await;
    let a = admin();
    let lenient = find(
        &w.app,
        &a,
        "Patient",
        &[("family", "chal"), ("shoe-size", "42")],
    )
    .await;
    assert_eq!(ids(&lenient, "match"), patients(&[&w.chalmers]));
    let outcome = lenient["entry"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["search"]["mode"] == "outcome")
        .expect("an outcome entry");
    assert!(outcome.to_string().contains("shoe-size"));
    let self_link = link(&lenient, "self").unwrap();
    assert!(
        self_link.contains("family=chal") && !self_link.contains("shoe-size"),
        "{self_link}"
    );
    let mut strict = search(&[("family", "chal"), ("shoe-size", "42")]);
    strict.strict_handling = true;
    assert_eq!(refused(w.app.handle(&a, strict).await), ErrorKind::Invalid);
    // A malformed value of a known parameter is always the client's error.
    assert_eq!(
        refused(
            w.app
                .handle(&a, search(&[("birthdate", "yesterday")]))
                .await
        ),
        ErrorKind::Invalid
    );
    assert_eq!(
        refused(w.app.handle(&a, search(&[("gender:below", "x")])).await),
        ErrorKind::Invalid
    );
}

/// A `_has` whose linked resources are too many to list (over 1,000) probes each candidate
/// instead: same answer, no refusal.
#[tokio::test]
async fn has_with_many_linked_resources_probes_each_candidate() {
    let app = App::new().await;
    let a = admin();
    let mut patients = Vec::new();
    for n in 0..6 {
        let id = create_any(
            &app,
            json!({"resourceType": "Patient", "name": [{"family": format!("Many{n}")}]}),
        )
        .await;
        patients.push(id);
    }
    // 1,050 heart rates about the first four patients; the last two have none.
    for n in 0..1_050 {
        let subject = &patients[n % 4];
        create_any(
            &app,
            json!({
                "resourceType": "Observation",
                "status": "final",
                "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
                "subject": {"reference": format!("Patient/{subject}")},
                "valueQuantity": {"value": 60 + (n % 40), "system": "http://unitsofmeasure.org", "code": "/min"}
            }),
        )
        .await;
    }
    let found = find(
        &app,
        &a,
        "Patient",
        &[("_has:Observation:subject:code", "http://loinc.org|8867-4")],
    )
    .await;
    let mut got = ids(&found, "match");
    got.sort();
    let mut expected: Vec<String> = patients[..4]
        .iter()
        .map(|id| format!("Patient/{id}"))
        .collect();
    expected.sort();
    assert_eq!(got, expected);
    // With another criterion, and with a criterion on the linked side that no one meets.
    let one = find(
        &app,
        &a,
        "Patient",
        &[
            ("_has:Observation:subject:code", "8867-4"),
            ("family", "Many2"),
        ],
    )
    .await;
    assert_eq!(ids(&one, "match"), [format!("Patient/{}", patients[2])]);
    let none = find(
        &app,
        &a,
        "Patient",
        &[
            ("_has:Observation:subject:code", "8867-4"),
            ("family", "Many5"),
        ],
    )
    .await;
    assert!(ids(&none, "match").is_empty());
    let count = find(
        &app,
        &a,
        "Patient",
        &[
            ("_has:Observation:subject:code", "8867-4"),
            ("_summary", "count"),
        ],
    )
    .await;
    assert_eq!(count["total"], 4);
}

/// A chain whose inner criterion matches more targets than can be listed (over 1,000) tests
/// each candidate's reference instead: same answer, no refusal.
#[tokio::test]
async fn chains_through_many_targets_test_each_candidate() {
    let app = App::new().await;
    let a = admin();
    let mut shared = Vec::new();
    for _ in 0..1_010 {
        shared.push(
            create_any(
                &app,
                json!({"resourceType": "Patient", "name": [{"family": "Commonname"}]}),
            )
            .await,
        );
    }
    let rare = create_any(
        &app,
        json!({"resourceType": "Patient", "name": [{"family": "Rarename"}]}),
    )
    .await;
    let observation = |subject: &str| {
        json!({
            "resourceType": "Observation",
            "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
            "subject": {"reference": format!("Patient/{subject}")},
        })
    };
    let common_obs = create_any(&app, observation(&shared[7])).await;
    let rare_obs = create_any(&app, observation(&rare)).await;
    let found = find(
        &app,
        &a,
        "Observation",
        &[("subject:Patient.family", "commonname")],
    )
    .await;
    assert_eq!(ids(&found, "match"), [format!("Observation/{common_obs}")]);
    let none = find(
        &app,
        &a,
        "Observation",
        &[("subject:Patient.family", "commonname"), ("code", "0000-0")],
    )
    .await;
    assert!(ids(&none, "match").is_empty());
    let rare_found = find(
        &app,
        &a,
        "Observation",
        &[("subject:Patient.family", "rarename")],
    )
    .await;
    assert_eq!(
        ids(&rare_found, "match"),
        [format!("Observation/{rare_obs}")]
    );
}
