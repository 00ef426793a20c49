//! Building, sealing and storing the audit record of a request. A record that cannot be stored
//! fails the request: no audit, no data.

use fhirwall_audit::{AuditRecord, EventKind, Outcome};
use fhirwall_crypto::AadContext;
use fhirwall_store::SealedAudit;

use crate::error::ApiError;
use crate::state::AppState;

/// Who is asking, as far as the request shows.
#[derive(Clone, Debug)]
pub(crate) struct Requester {
    pub request_id: String,
    pub source_address: Option<String>,
    pub client_id: Option<String>,
}

/// The parts of an audit record that vary by interaction.
#[derive(Clone, Debug, Default)]
pub(crate) struct AuditDetail {
    pub subtype: &'static str,
    pub action: &'static str,
    pub entities: Vec<String>,
    pub patients: Vec<String>,
    pub query: Option<String>,
}

pub(crate) fn format_instant(micros: i64) -> String {
    let nanos = i128::from(micros) * 1000;
    let time = time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    time.format(&format).unwrap_or_default()
}

pub(crate) fn record(
    state: &AppState,
    who: &Requester,
    kind: EventKind,
    detail: AuditDetail,
    status: u16,
    outcome_code: Option<&str>,
) -> AuditRecord {
    AuditRecord {
        record_id: uuid::Uuid::new_v4().to_string(),
        tenant: state.inner.tenant.clone(),
        kind,
        subtype: detail.subtype.to_string(),
        action: detail.action.to_string(),
        recorded: format_instant(state.inner.clock.now_micros()),
        outcome: Outcome::from_status(status),
        outcome_code: outcome_code.map(str::to_string),
        http_status: status,
        client_id: who.client_id.clone(),
        user: None,
        source_address: who.source_address.clone(),
        request_id: who.request_id.clone(),
        entities: detail.entities,
        patients: detail.patients,
        query: detail.query,
    }
}

/// Encrypts a record for storage, bound to its tenant and record id.
pub(crate) fn seal(state: &AppState, record: &AuditRecord) -> Result<SealedAudit, ApiError> {
    let plain = serde_json::to_vec(record).map_err(|_| ApiError::internal())?;
    let sealed = state.inner.envelope.seal(
        &AadContext::Audit {
            tenant: &record.tenant,
            record_id: &record.record_id,
        },
        &plain,
    )?;
    state.rotate_data_key_if_due();
    Ok(SealedAudit {
        tenant: record.tenant.clone(),
        record_id: record.record_id.clone(),
        recorded_micros: state.inner.clock.now_micros(),
        sealed,
    })
}

/// Stores a record durably before the caller answers.
pub(crate) async fn append(state: &AppState, record: &AuditRecord) -> Result<(), ApiError> {
    let sealed = seal(state, record)?;
    state.inner.store.append_audit(sealed).await.map_err(|error| {
        tracing::error!(error = %error, "audit record could not be stored; refusing the request");
        ApiError::unavailable()
    })?;
    Ok(())
}

/// Opens a stored record.
pub(crate) fn open(
    state: &AppState,
    stored: &fhirwall_store::StoredAudit,
) -> Result<AuditRecord, ApiError> {
    let plain = state.inner.envelope.open(
        &AadContext::Audit {
            tenant: &stored.tenant,
            record_id: &stored.record_id,
        },
        &stored.sealed,
    )?;
    serde_json::from_slice(&plain).map_err(|error| {
        tracing::error!(error = %error, "stored audit record is unreadable");
        ApiError::internal()
    })
}
