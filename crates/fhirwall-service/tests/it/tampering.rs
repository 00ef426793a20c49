//! Someone who can write the database file but not read the keyring: each case edits the SQLite
//! database while no server runs, opens a new service over it, and checks that a read refuses
//! what the server did not write (500, never the old data) and that `audit verify` names the
//! damage. An untouched store, closed and reopened the same way, verifies intact.

use fhirwall_auth::testkeys::TestClientKey;
use fhirwall_model::ResourceId;
use fhirwall_service::{ErrorKind, ServiceConfig, Verification};

use crate::support::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Intact,
    Broken,
    Unaudited,
    Tampered,
}

fn verdict(verification: &Verification) -> Verdict {
    match verification {
        Verification::Intact { .. } => Verdict::Intact,
        Verification::Broken { .. } => Verdict::Broken,
        Verification::Unaudited { .. } => Verdict::Unaudited,
        Verification::Tampered { .. } => Verdict::Tampered,
    }
}

/// What the edits work on: a Patient at version 2 (family Doe, then Roe) and a client.
struct Setup {
    app: App,
    pid: ResourceId,
    client_id: String,
    key: TestClientKey,
}

async fn setup() -> Setup {
    let app = App::new().await;
    let pid = app.create_patient("MRN-1").await;
    app.clock.advance_secs(1);
    assert_eq!(app.update_patient(&pid, "MRN-1", "Roe").await.status, 200);
    let key = TestClientKey::generate_es384("client-key-1").unwrap();
    let client_id = app.add_client(&key, "system/Patient.rs").await;
    Setup {
        app,
        pid,
        client_id,
        key,
    }
}

/// Closes the setup's service, runs `sql` (with `{pid}` and `{client}` filled in) on its
/// database, and opens a new service over the same directory and keyring.
async fn edit_and_reopen(setup: Setup, sql: &str) -> (App, ResourceId, String, TestClientKey) {
    let Setup {
        app,
        pid,
        client_id,
        key,
    } = setup;
    let (dir, clock) = app.close();
    if !sql.is_empty() {
        let conn = rusqlite::Connection::open(dir.database()).unwrap();
        let sql = sql
            .replace("{pid}", pid.as_str())
            .replace("{client}", &client_id);
        conn.execute_batch(&sql).unwrap();
        let changed = conn.changes();
        assert!(changed > 0, "the edit changed nothing: {sql}");
    }
    let app = App::open(dir, clock, ServiceConfig::new(BASE_URL)).await;
    (app, pid, client_id, key)
}

struct Case {
    name: &'static str,
    sql: &'static str,
    verdict: Verdict,
    /// What reading the Patient gives: None for version 2 as written.
    read: Option<ErrorKind>,
}

const CASES: &[Case] = &[
    Case {
        name: "untouched",
        sql: "",
        verdict: Verdict::Intact,
        read: None,
    },
    Case {
        name: "current pointer rolled back to version 1",
        sql: "UPDATE resource_current SET version = 1, \
              seq = (SELECT seq FROM resource_versions WHERE id = '{pid}' AND version = 1) \
              WHERE id = '{pid}';",
        verdict: Verdict::Tampered,
        read: Some(ErrorKind::Internal),
    },
    Case {
        name: "client scope widened",
        sql: "UPDATE clients SET scope = 'system/*.cruds' WHERE client_id = '{client}';",
        verdict: Verdict::Tampered,
        read: None,
    },
    Case {
        name: "client key replaced",
        sql: "UPDATE clients SET jwks = replace(jwks, '\"x\":\"', '\"x\":\"A') \
              WHERE client_id = '{client}';",
        verdict: Verdict::Tampered,
        read: None,
    },
    Case {
        name: "version 1 removed",
        sql: "DELETE FROM resource_versions WHERE id = '{pid}' AND version = 1;",
        verdict: Verdict::Tampered,
        read: None,
    },
    Case {
        name: "version 2 re-dated",
        sql: "UPDATE resource_versions SET last_updated = last_updated - 1000000 \
              WHERE id = '{pid}' AND version = 2;",
        verdict: Verdict::Tampered,
        read: Some(ErrorKind::Internal),
    },
    Case {
        name: "version 2 turned into a deletion",
        sql: "UPDATE resource_versions SET method = 'delete', body = NULL \
              WHERE id = '{pid}' AND version = 2; \
              UPDATE resource_current SET deleted = 1 WHERE id = '{pid}';",
        verdict: Verdict::Tampered,
        read: Some(ErrorKind::Internal),
    },
    Case {
        name: "version 2 given version 1's body",
        sql: "UPDATE resource_versions SET body = \
              (SELECT body FROM resource_versions WHERE id = '{pid}' AND version = 1) \
              WHERE id = '{pid}' AND version = 2;",
        verdict: Verdict::Tampered,
        read: Some(ErrorKind::Internal),
    },
    Case {
        name: "the first audit record removed",
        sql: "DELETE FROM audit_log WHERE seq = 1;",
        verdict: Verdict::Broken,
        read: None,
    },
    Case {
        name: "the last audit record cut off",
        sql: "DELETE FROM audit_log WHERE seq = (SELECT max(seq) FROM audit_log);",
        verdict: Verdict::Unaudited,
        read: None,
    },
];

#[tokio::test]
async fn edits_behind_the_servers_back_are_refused_on_use_and_named_by_verify() {
    for case in CASES {
        let (app, pid, _, _) = edit_and_reopen(setup().await, case.sql).await;
        let verification = fhirwall_service::audit_verify(app.store.as_ref(), &app.envelope)
            .await
            .unwrap();
        assert_eq!(
            verdict(&verification),
            case.verdict,
            "{}: {verification:?}",
            case.name
        );
        let read_back = app.handle(&admin(), read(&pid)).await;
        match case.read {
            None => {
                let patient = body(&read_back.unwrap_or_else(|e| panic!("{}: {e}", case.name)));
                assert_eq!(patient["meta"]["versionId"], "2", "{}", case.name);
                assert_eq!(patient["name"][0]["family"], "Roe", "{}", case.name);
            }
            Some(kind) => {
                let error = read_back
                    .err()
                    .unwrap_or_else(|| panic!("{}: the read was answered", case.name));
                assert_eq!(error.kind, kind, "{}", case.name);
                assert_eq!(error.outcome.code, "internal-error", "{}", case.name);
            }
        }
    }
}

#[tokio::test]
async fn verify_says_what_was_tampered_with() {
    let (app, pid, _, _) = edit_and_reopen(setup().await, CASES[1].sql).await;
    let Verification::Tampered { what } =
        fhirwall_service::audit_verify(app.store.as_ref(), &app.envelope)
            .await
            .unwrap()
    else {
        panic!("not tampered")
    };
    assert!(what.contains(&format!("Patient/{pid}")), "{what}");
    assert!(what.contains("current"), "{what}");
    drop(app);

    let (app, _, client_id, _) = edit_and_reopen(setup().await, CASES[2].sql).await;
    let Verification::Tampered { what } =
        fhirwall_service::audit_verify(app.store.as_ref(), &app.envelope)
            .await
            .unwrap()
    else {
        panic!("not tampered")
    };
    assert!(what.contains(&format!("client {client_id}")), "{what}");
}

#[tokio::test]
async fn a_client_whose_record_was_edited_gets_no_token() {
    let (app, _, client_id, key) = edit_and_reopen(setup().await, CASES[2].sql).await;
    let request = app.token_request(&key, &client_id, "jti-after-edit", None);
    let refusal = app
        .service
        .token(&requester_from("192.0.2.9"), Ok(request))
        .await
        .unwrap_err();
    assert_eq!(refusal.error, "invalid_client");
    assert_eq!(refusal.audit_code, "unknown-client");
}

#[tokio::test]
async fn a_client_left_alone_still_gets_a_token_after_reopening() {
    let (app, _, client_id, key) = edit_and_reopen(setup().await, "").await;
    let request = app.token_request(&key, &client_id, "jti-untouched", None);
    let answer = app
        .service
        .token(&requester_from("192.0.2.9"), Ok(request))
        .await
        .unwrap();
    assert_eq!(answer["scope"], "system/Patient.rs");
}

/// A search reads current versions through the store's plan, which checks each version's tag
/// but not the pointer's: after a rollback of `resource_current` it serves version 1 as current.
#[tokio::test]
async fn a_search_refuses_a_rolled_back_current_pointer() {
    let (app, _, _, _) = edit_and_reopen(setup().await, CASES[1].sql).await;
    let result = app
        .handle(&admin(), search(&[("identifier", "urn:mrn|MRN-1")]))
        .await;
    match result {
        Ok(reply) => panic!("served: {}", body(&reply)),
        Err(error) => assert_eq!(error.kind, ErrorKind::Internal),
    }
}

/// The same hole brings a deleted resource back into search results (by `_id`, or a search of
/// the whole type).
#[tokio::test]
async fn a_search_does_not_revive_a_deleted_resource() {
    let setup = setup().await;
    setup
        .app
        .handle(&admin(), delete(&setup.pid))
        .await
        .unwrap();
    let (app, pid, _, _) = edit_and_reopen(
        setup,
        "UPDATE resource_current SET version = 2, deleted = 0, \
         seq = (SELECT seq FROM resource_versions WHERE id = '{pid}' AND version = 2) \
         WHERE id = '{pid}';",
    )
    .await;
    assert_eq!(
        refused(app.handle(&admin(), read(&pid)).await),
        ErrorKind::Internal
    );
    // The deletion removed its identifier terms; a search by _id or of the whole type still
    // walks the current pointers.
    for params in [vec![], vec![("_id", pid.as_str())]] {
        match app.handle(&admin(), search(&params)).await {
            Ok(reply) => {
                let bundle = body(&reply);
                assert_eq!(
                    bundle["total"], 0,
                    "a deleted resource was served: {bundle}"
                );
            }
            Err(error) => assert_eq!(error.kind, ErrorKind::Internal),
        }
    }
}

/// `resource_current.deleted` is what searches filter on, and no tag covers it: set on a live
/// resource, it hides the resource from every search while reads still serve it.
#[tokio::test]
async fn a_live_resource_hidden_from_search_is_named_by_verify() {
    let (app, pid, _, _) = edit_and_reopen(
        setup().await,
        "UPDATE resource_current SET deleted = 1 WHERE id = '{pid}';",
    )
    .await;
    assert_eq!(app.handle(&admin(), read(&pid)).await.unwrap().status, 200);
    let found = body(
        &app.handle(&admin(), search(&[("_id", pid.as_str())]))
            .await
            .unwrap(),
    );
    let verification = fhirwall_service::audit_verify(app.store.as_ref(), &app.envelope)
        .await
        .unwrap();
    assert_eq!(found["total"], 0, "hidden from search");
    assert_eq!(
        verdict(&verification),
        Verdict::Tampered,
        "{verification:?}"
    );
}

/// Index terms carry no tag either: a removed term hides a resource from identifier searches
/// and conditional writes (a conditional create would then make a duplicate); verify
/// recomputes each live resource's terms and names the missing one.
#[tokio::test]
async fn a_removed_index_term_is_named_by_verify() {
    let (app, pid, _, _) = edit_and_reopen(
        setup().await,
        "DELETE FROM search_index WHERE rid = (SELECT rid FROM resource_current WHERE id = '{pid}');",
    )
    .await;
    assert!(!pid.as_str().is_empty());
    let verification = fhirwall_service::audit_verify(app.store.as_ref(), &app.envelope)
        .await
        .unwrap();
    assert_eq!(
        verdict(&verification),
        Verdict::Tampered,
        "{verification:?}"
    );
}
