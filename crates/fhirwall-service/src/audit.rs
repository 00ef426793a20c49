//! Building, sealing and storing audit records. The detail of a request is built in one place
//! ([`AuditDetail::of_request`]) and completed by what the interaction learned (the versions it
//! touched, the patients they concern). A record that cannot be stored fails the request: no
//! audit, no data. Stored queries carry parameter names and keyed hashes of their values,
//! never the values (a search value may be a name, a birth date or an identifier).

use fhirwall_audit::{Action, AuditRecord, EventKind, Outcome};
use fhirwall_crypto::AadContext;
use fhirwall_model::{TenantId, Timestamp};
use fhirwall_store::SealedAudit;

use crate::{Caller, Request, Requester, Service, ServiceError};

/// Parameters whose values are controls, not data about anyone; their values are kept.
const CONTROL_PARAMS: &[&str] = &[
    "_count",
    "_summary",
    "_elements",
    "_format",
    "_pretty",
    "_cursor",
    "_total",
    "_sort",
    "_since",
    "mode",
];

/// The parts of an audit record that vary by interaction.
#[derive(Clone, Debug, Default)]
pub struct AuditDetail {
    pub subtype: &'static str,
    pub action: Option<Action>,
    pub entities: Vec<String>,
    pub patients: Vec<String>,
    /// The parameters, values replaced by keyed hashes (see [`redacted_query`]).
    pub params: Vec<(String, String)>,
    pub outcome_code: Option<&'static str>,
}

impl AuditDetail {
    /// What the request itself says: its interaction, the resource its path names, its
    /// parameters.
    pub fn of_request(request: &Request) -> Self {
        AuditDetail {
            subtype: request.interaction.subtype(),
            action: Some(request.interaction.action()),
            entities: request.interaction.entity().into_iter().collect(),
            patients: Vec::new(),
            params: request.params.clone(),
            outcome_code: None,
        }
    }

    /// A request whose address named no interaction.
    pub fn unrouted(params: &[(String, String)]) -> Self {
        AuditDetail {
            subtype: "unknown",
            action: Some(Action::Execute),
            params: params.to_vec(),
            ..AuditDetail::default()
        }
    }

    /// This detail (what the interaction learned) with the request's own parts filled in.
    pub fn completed_by(mut self, request: &AuditDetail) -> Self {
        if self.subtype.is_empty() {
            self.subtype = request.subtype;
        }
        if self.action.is_none() {
            self.action = request.action;
        }
        if self.entities.is_empty() {
            self.entities = request.entities.clone();
        }
        // A search paged by a cursor records the query the cursor carries, not the cursor.
        if self.params.is_empty() {
            self.params = request.params.clone();
        }
        self
    }
}

/// The query as the audit record keeps it: names as given, control values as given, every
/// other value as `#` and a keyed hash (the first 8 bytes of the tenant's blind-index MAC),
/// so an auditor holding the key can tell whether a given value was searched for, and a reader
/// of the trail learns nothing more.
pub(crate) fn redacted_query(
    service: &Service,
    tenant: &TenantId,
    params: &[(String, String)],
) -> Option<String> {
    if params.is_empty() {
        return None;
    }
    let blind = service.tenant_keys(tenant).ok().map(|keys| &keys.blind);
    let mut out = form_urlencoded::Serializer::new(String::new());
    for (name, value) in params {
        let name: String = name.chars().take(64).collect();
        if CONTROL_PARAMS.contains(&name.as_str()) {
            out.append_pair(&name, &value.chars().take(256).collect::<String>());
            continue;
        }
        let hashed = match blind {
            Some(blind) => {
                let term = blind.term(tenant.as_str(), "audit-query", &name, value);
                format!(
                    "#{}",
                    fhirwall_crypto::hex(term.get(..8).unwrap_or_default())
                )
            }
            None => "#".to_string(),
        };
        out.append_pair(&name, &hashed);
    }
    Some(out.finish())
}

pub(crate) fn record(
    service: &Service,
    who: &Requester,
    caller: Option<&Caller>,
    kind: EventKind,
    detail: AuditDetail,
    status: u16,
    now: Timestamp,
) -> AuditRecord {
    let tenant = caller.map_or_else(TenantId::default_tenant, |c| c.tenant.clone());
    record_for(
        service,
        who,
        &tenant,
        caller.map(|c| c.client_id.clone()),
        kind,
        detail,
        status,
        now,
    )
}

#[expect(
    clippy::too_many_arguments,
    reason = "every field of a record, named once"
)]
pub(crate) fn record_for(
    service: &Service,
    who: &Requester,
    tenant: &TenantId,
    client_id: Option<String>,
    kind: EventKind,
    detail: AuditDetail,
    status: u16,
    now: Timestamp,
) -> AuditRecord {
    let query = redacted_query(service, tenant, &detail.params);
    AuditRecord {
        record_id: uuid::Uuid::new_v4().to_string(),
        tenant: tenant.as_str().to_string(),
        kind,
        subtype: detail.subtype.to_string(),
        action: detail.action.unwrap_or(Action::Execute),
        recorded: now.to_fhir_instant(),
        outcome: Outcome::from_status(status),
        outcome_code: detail.outcome_code.map(str::to_string),
        http_status: status,
        client_id,
        user: None,
        source_address: who.source_address.clone(),
        request_id: who.request_id.clone(),
        entities: detail.entities,
        patients: detail.patients,
        query,
        repeated: None,
    }
}

/// Encrypts a record for storage, bound to its tenant and record id.
pub(crate) fn seal(
    service: &Service,
    record: &AuditRecord,
    now: Timestamp,
) -> Result<SealedAudit, ServiceError> {
    let plain = serde_json::to_vec(record).map_err(|_| ServiceError::internal())?;
    let sealed = service.inner.envelope.seal(
        &AadContext::Audit {
            tenant: &record.tenant,
            record_id: &record.record_id,
        },
        &plain,
    )?;
    crate::keys::rotate_data_key_if_due(service);
    let tenant = TenantId::parse(&record.tenant).map_err(|_| ServiceError::internal())?;
    Ok(SealedAudit {
        tenant,
        record_id: record.record_id.clone(),
        recorded_micros: now.micros(),
        sealed,
    })
}

/// Stores a record durably before the caller answers.
pub(crate) async fn append(
    service: &Service,
    record: &AuditRecord,
    now: Timestamp,
) -> Result<(), ServiceError> {
    let sealed = seal(service, record, now)?;
    service
        .inner
        .store
        .append_audit(sealed)
        .await
        .map_err(|error| {
            tracing::error!(error = %error, "audit record could not be stored; refusing the request");
            ServiceError::unavailable()
        })?;
    Ok(())
}

/// Opens a stored record.
pub(crate) fn open(
    service: &Service,
    stored: &fhirwall_store::StoredAudit,
) -> Result<AuditRecord, ServiceError> {
    let plain = service.inner.envelope.open(
        &AadContext::Audit {
            tenant: stored.tenant.as_str(),
            record_id: &stored.record_id,
        },
        &stored.sealed,
    )?;
    serde_json::from_slice(&plain).map_err(|error| {
        tracing::error!(error = %error, "stored audit record is unreadable");
        ServiceError::internal()
    })
}

/// The audit chain the store links records with: the tenant's keyed chain
/// (`fhirwall_audit::chain_link`), so someone without the keyring cannot recompute it.
struct KeyedChain(fhirwall_crypto::MacKey);

impl fhirwall_store::AuditChain for KeyedChain {
    fn link(&self, previous: &[u8], seq: u64, record_id: &str, sealed: &[u8]) -> Vec<u8> {
        // The store hands an empty link before the first record; the chain starts from its
        // genesis value there. A previous link of another length is stored data gone wrong:
        // it gets a link no verifier accepts.
        let previous: [u8; 32] = if previous.is_empty() {
            fhirwall_audit::GENESIS
        } else {
            match previous.try_into() {
                Ok(link) => link,
                Err(_) => return Vec::new(),
            }
        };
        fhirwall_audit::chain_link(&self.0, &previous, seq, record_id, sealed).to_vec()
    }
}

/// The chain a backend is started with; None when the tenant's chain key is missing.
pub fn audit_chain(
    envelope: &fhirwall_crypto::Envelope,
    tenant: &TenantId,
) -> Option<std::sync::Arc<dyn fhirwall_store::AuditChain>> {
    envelope.audit_chain_key(tenant.as_str()).map(|key| {
        std::sync::Arc::new(KeyedChain(key)) as std::sync::Arc<dyn fhirwall_store::AuditChain>
    })
}
