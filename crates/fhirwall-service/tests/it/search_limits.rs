//! The bounds on a search's criteria: past 32 criteria or 64 comma-separated values a search
//! is the client's error (400), never a query the store chokes on (500). The limits are
//! `fhirwall_service::indexing::MAX_CRITERIA` and `MAX_ALTERNATIVES`.

use fhirwall_service::ErrorKind;
use fhirwall_service::indexing::{MAX_ALTERNATIVES, MAX_CRITERIA};

use crate::support::*;

/// A request's query parameters.
type Params = Vec<(String, String)>;

/// `n` identifier parameters, all naming the same patient's identifier (so each holds).
fn repeated_parameters(n: usize) -> Params {
    (0..n)
        .map(|_| ("identifier".to_string(), "urn:mrn|MRN-1".to_string()))
        .collect()
}

/// One identifier parameter with `n` values, the last the patient's.
fn alternatives(n: usize) -> Params {
    let mut values: Vec<String> = (1..n).map(|i| format!("urn:mrn|OTHER-{i}")).collect();
    values.push("urn:mrn|MRN-1".to_string());
    vec![("identifier".to_string(), values.join(","))]
}

#[tokio::test]
async fn searches_past_the_criteria_limits_are_invalid_not_internal() {
    assert_eq!(MAX_CRITERIA, 32);
    assert_eq!(MAX_ALTERNATIVES, 64);
    let app = App::new().await;
    app.create_patient("MRN-1").await;
    let cases: Vec<(&str, Params, Option<ErrorKind>)> = vec![
        ("one criterion", repeated_parameters(1), None),
        ("32 criteria", repeated_parameters(32), None),
        (
            "33 criteria",
            repeated_parameters(33),
            Some(ErrorKind::Invalid),
        ),
        (
            "40 criteria",
            repeated_parameters(40),
            Some(ErrorKind::Invalid),
        ),
        ("64 values", alternatives(64), None),
        ("65 values", alternatives(65), Some(ErrorKind::Invalid)),
        ("70 values", alternatives(70), Some(ErrorKind::Invalid)),
        (
            "40 criteria with _id",
            {
                let mut params = repeated_parameters(39);
                params.insert(0, ("_id".into(), "x".into()));
                params
            },
            Some(ErrorKind::Invalid),
        ),
    ];
    for (name, params, expected) in cases {
        let request =
            fhirwall_service::Request::new(fhirwall_service::Interaction::SearchType(patient()))
                .with_params(params);
        let result = app.handle(&admin(), request).await;
        match expected {
            None => {
                let bundle = body(&result.unwrap_or_else(|e| panic!("{name}: {e}")));
                assert_eq!(bundle["total"], 1, "{name}");
            }
            Some(kind) => {
                let error = result.err().unwrap_or_else(|| panic!("{name}: accepted"));
                assert_eq!(error.kind, kind, "{name}");
                assert_eq!(error.status(), 400, "{name}");
            }
        }
    }
}

#[tokio::test]
async fn conditions_past_the_criteria_limit_are_invalid_too() {
    let app = App::new().await;
    let pid = app.create_patient("MRN-1").await;
    let request =
        fhirwall_service::Request::new(fhirwall_service::Interaction::ConditionalDelete(patient()))
            .with_params(repeated_parameters(40));
    assert_eq!(
        refused(app.handle(&admin(), request).await),
        ErrorKind::Invalid
    );
    assert_eq!(app.handle(&admin(), read(&pid)).await.unwrap().status, 200);
}
