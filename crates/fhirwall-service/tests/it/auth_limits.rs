//! Failed authentications per source address and minute: up to the limit each is answered 401
//! and audited; past it they are answered 429 with no record of their own, and the next minute
//! writes one summary record that counts them. Another address has its own count.

use std::time::Duration;

use fhirwall_audit::{AuditRecord, EventKind};
use fhirwall_service::{ErrorKind, ServiceConfig};

use crate::support::*;

async fn limited_app() -> App {
    let mut config = ServiceConfig::new(BASE_URL);
    config.auth_failures_per_minute = 3;
    App::with_config(config).await
}

/// Waits for the summary the service writes from a spawned task.
async fn summary_of(app: &App, address: &str) -> AuditRecord {
    for _ in 0..100 {
        let found = app
            .audit_records()
            .await
            .into_iter()
            .find(|r| r.repeated.is_some() && r.source_address.as_deref() == Some(address));
        if let Some(found) = found {
            return found;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no summary record for {address}");
}

#[tokio::test]
async fn failed_bearer_tokens_past_the_limit_are_answered_429_and_summarised() {
    let app = limited_app().await;
    let address = "198.51.100.7";
    let start = app.audit_count().await;

    for n in 1..=3 {
        let error = app
            .service
            .authenticate(&requester_from(address), Some("Bearer bogus"))
            .await
            .unwrap_err();
        assert_eq!(error.kind, ErrorKind::Unauthenticated, "failure {n}");
        assert_eq!(error.bearer_error, Some("invalid_token"));
        assert_eq!(app.audit_count().await, start + n, "failure {n} is audited");
    }
    let records = app.audit_records().await;
    for record in records.iter().skip(start) {
        assert_eq!(record.kind, EventKind::Authentication);
        assert_eq!(record.http_status, 401);
        assert_eq!(record.source_address.as_deref(), Some(address));
        assert_eq!(record.client_id, None);
        assert!(record.outcome_code.is_some());
        assert_eq!(record.repeated, None);
    }

    for n in 4..=5 {
        let error = app
            .service
            .authenticate(&requester_from(address), Some("Bearer bogus"))
            .await
            .unwrap_err();
        assert_eq!(error.kind, ErrorKind::TooManyRequests, "failure {n}");
        assert_eq!(error.status(), 429);
    }
    assert_eq!(app.audit_count().await, start + 3, "nothing past the limit");

    // Another address is not limited by this one's failures.
    let other = "198.51.100.8";
    let error = app
        .service
        .authenticate(&requester_from(other), Some("Bearer bogus"))
        .await
        .unwrap_err();
    assert_eq!(error.kind, ErrorKind::Unauthenticated);
    assert_eq!(app.audit_count().await, start + 4);

    app.clock.advance_secs(60);
    let error = app
        .service
        .authenticate(&requester_from(address), Some("Bearer bogus"))
        .await
        .unwrap_err();
    assert_eq!(error.kind, ErrorKind::Unauthenticated, "a new minute");
    let summary = summary_of(&app, address).await;
    assert_eq!(summary.repeated, Some(2));
    assert_eq!(summary.outcome_code.as_deref(), Some("rate-limited"));
    assert_eq!(summary.http_status, 429);
    assert_eq!(summary.kind, EventKind::Authentication);
    let records = app.audit_records().await;
    assert_eq!(records.len(), start + 6, "the new failure and the summary");
    assert_eq!(
        records.iter().filter(|r| r.repeated.is_some()).count(),
        1,
        "one summary"
    );
    // The other address suppressed nothing, so it has no summary.
    assert!(
        records
            .iter()
            .all(|r| r.repeated.is_none() || r.source_address.as_deref() == Some(address))
    );
}

#[tokio::test]
async fn a_missing_authorization_header_counts_as_a_failure() {
    let app = limited_app().await;
    let address = "203.0.113.5";
    let start = app.audit_count().await;
    for n in 1..=3 {
        let error = app
            .service
            .authenticate(&requester_from(address), None)
            .await
            .unwrap_err();
        assert_eq!(error.kind, ErrorKind::Unauthenticated, "failure {n}");
        assert_eq!(error.bearer_error, None, "no token was presented");
    }
    let records = app.audit_records().await;
    assert_eq!(records.len(), start + 3);
    assert_eq!(
        records.last().unwrap().outcome_code.as_deref(),
        Some("missing-token")
    );
    let error = app
        .service
        .authenticate(&requester_from(address), Some("Basic dXNlcjpwYXNz"))
        .await
        .unwrap_err();
    assert_eq!(error.kind, ErrorKind::TooManyRequests);
    assert_eq!(app.audit_count().await, start + 3);
}

#[tokio::test]
async fn failed_token_requests_count_against_the_same_limit() {
    let app = limited_app().await;
    let address = "203.0.113.9";
    let start = app.audit_count().await;
    for n in 1..=3 {
        let refusal = app
            .service
            .token(
                &requester_from(address),
                Ok(token_request("not.a.jwt".into(), None)),
            )
            .await
            .unwrap_err();
        assert_eq!(refusal.status, 400, "failure {n}");
    }
    let refusal = app
        .service
        .authenticate(&requester_from(address), Some("Bearer bogus"))
        .await
        .unwrap_err();
    assert_eq!(refusal.kind, ErrorKind::TooManyRequests);
    let refusal = app
        .service
        .token(
            &requester_from(address),
            Ok(token_request("not.a.jwt".into(), None)),
        )
        .await
        .unwrap_err();
    assert_eq!(refusal.status, 429);
    assert_eq!(refusal.audit_code, "rate-limited");
    assert_eq!(app.audit_count().await, start + 3);
}
