//! The operator's commands in domain terms: the client registration policy (what a
//! backend-services client may be granted, which keys it may have), client listing and
//! removal, and `audit verify` (the keyed chain, every record decrypting, every stored version
//! audited and genuine, every current pointer and client record genuine).

use std::collections::{HashMap, HashSet};

use fhirwall_audit::{EventKind, Outcome};
use fhirwall_crypto::Envelope;
use fhirwall_model::{TenantId, Timestamp};
use fhirwall_store::{
    AuthState, ClientRecord, CurrentQuery, HistoryQuery, ResourceKey, Store, StoredVersion,
};

use crate::indexing::Indexer;

use crate::integrity;

/// A refusal or failure of an operator command; the text is for the operator.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] fhirwall_store::StoreError),
    #[error("the tenant's keys are missing from the store")]
    MissingKeys,
}

fn invalid(message: impl Into<String>) -> AdminError {
    AdminError::Invalid(message.into())
}

/// A backend-services client to register.
#[derive(Debug, Clone)]
pub struct ClientRegistration {
    pub name: String,
    /// The client's public JWKS, as JSON text.
    pub jwks: Option<String>,
    /// An https URL serving the client's JWKS.
    pub jwks_uri: Option<String>,
    pub scope: String,
}

/// Registers a backend-services client of the default tenant; returns its id. The record is
/// tagged, so an edit of it outside the server (a wider scope, another key) is refused on use.
pub async fn client_add(
    store: &dyn AuthState,
    envelope: &Envelope,
    now: Timestamp,
    registration: ClientRegistration,
) -> Result<String, AdminError> {
    let scopes = fhirwall_auth::ScopeSet::parse(&registration.scope)
        .map_err(|e| invalid(format!("invalid scope: {e}")))?;
    if scopes.resource_scopes().next().is_none() {
        return Err(invalid(
            "the scope grants no resource access; give scopes such as system/*.rs",
        ));
    }
    if let Some(bad) = scopes
        .resource_scopes()
        .find(|s| s.context() != fhirwall_auth::ScopeContext::System)
    {
        return Err(invalid(format!(
            "backend-services clients take system/ scopes only, not {}",
            bad.as_str()
        )));
    }
    match (&registration.jwks, &registration.jwks_uri) {
        (Some(text), None) => {
            fhirwall_auth::validate_jwks(text)
                .map_err(|e| invalid(format!("invalid JWKS: {e}")))?;
        }
        (None, Some(uri)) => {
            if !uri.starts_with("https://") {
                return Err(invalid("jwks_uri must be an https:// URL"));
            }
        }
        _ => return Err(invalid("give exactly one of --jwks FILE or --jwks-uri URL")),
    }
    if registration.name.trim().is_empty() || registration.name.len() > 200 {
        return Err(invalid("the client name must be 1 to 200 characters"));
    }
    let tenant = TenantId::default_tenant();
    let key = envelope
        .integrity_key(tenant.as_str())
        .ok_or(AdminError::MissingKeys)?;
    let mut client = ClientRecord {
        tenant,
        client_id: uuid::Uuid::new_v4().to_string(),
        name: registration.name,
        jwks: registration.jwks,
        jwks_uri: registration.jwks_uri,
        scope: scopes.to_string(),
        created_unix: now.unix_seconds(),
        tag: None,
    };
    client.tag = Some(integrity::client_tag(&key, &client));
    let client_id = client.client_id.clone();
    store.add_client(client).await?;
    Ok(client_id)
}

/// The result of `audit verify`.
#[derive(Debug, PartialEq, Eq)]
pub enum Verification {
    Intact {
        records: u64,
    },
    Broken {
        seq: u64,
        reason: String,
    },
    /// A stored resource version whose audit record is not in the trail: records were removed
    /// (a write and its record always commit together).
    Unaudited {
        reference: String,
    },
    /// A stored row that is not what the server wrote, or a written version that is gone.
    Tampered {
        what: String,
    },
}

/// Walks the whole audit trail: every record in sequence, its keyed chain link, and that it
/// decrypts under its own context into a well-formed record. Then checks every stored version
/// against its tag and its write's record (which also catches records cut from the end of the
/// trail, where the chain alone cannot tell), that every audited write's version is still
/// there, that each resource's current pointer is genuine and names its newest version, and
/// that every client record is genuine.
pub async fn audit_verify(
    store: &dyn Store,
    envelope: &Envelope,
) -> Result<Verification, AdminError> {
    let default_tenant = TenantId::default_tenant();
    let chain_key = envelope
        .audit_chain_key(default_tenant.as_str())
        .ok_or(AdminError::MissingKeys)?;
    let mut verifier = fhirwall_audit::ChainVerifier::new(chain_key);
    let mut audited_writes: HashMap<TenantId, HashSet<String>> = HashMap::new();
    let mut after = 0u64;
    loop {
        let page = store.audit_scan(after, 1000).await?;
        if page.is_empty() {
            break;
        }
        for record in &page {
            if let Err(broken) =
                verifier.check(record.seq, &record.record_id, &record.sealed, &record.link)
            {
                return Ok(Verification::Broken {
                    seq: record.seq,
                    reason: broken.to_string(),
                });
            }
            let opened = envelope
                .open(
                    &fhirwall_crypto::AadContext::Audit {
                        tenant: record.tenant.as_str(),
                        record_id: &record.record_id,
                    },
                    &record.sealed,
                )
                .ok()
                .and_then(|p| serde_json::from_slice::<fhirwall_audit::AuditRecord>(&p).ok())
                .filter(|r| r.record_id == record.record_id);
            let Some(opened) = opened else {
                return Ok(Verification::Broken {
                    seq: record.seq,
                    reason: format!(
                        "record {}: it does not decrypt into a well-formed audit record",
                        record.seq
                    ),
                });
            };
            if opened.kind == EventKind::Rest
                && opened.outcome == Outcome::Success
                && opened.action.writes()
            {
                audited_writes
                    .entry(record.tenant.clone())
                    .or_default()
                    .extend(opened.entities.iter().cloned());
            }
            after = record.seq;
        }
    }
    let mut tenants: Vec<TenantId> = audited_writes.keys().cloned().collect();
    if !tenants.contains(&default_tenant) {
        tenants.push(default_tenant);
    }
    for tenant in &tenants {
        if let Some(found) =
            verify_tenant(store, envelope, tenant, audited_writes.get(tenant)).await?
        {
            return Ok(found);
        }
    }
    Ok(Verification::Intact {
        records: verifier.records_checked(),
    })
}

async fn verify_tenant(
    store: &dyn Store,
    envelope: &Envelope,
    tenant: &TenantId,
    audited: Option<&HashSet<String>>,
) -> Result<Option<Verification>, AdminError> {
    let key = envelope
        .integrity_key(tenant.as_str())
        .ok_or(AdminError::MissingKeys)?;
    let empty = HashSet::new();
    let audited = audited.unwrap_or(&empty);
    let mut seen: HashSet<String> = HashSet::new();
    let mut newest: HashMap<ResourceKey, u64> = HashMap::new();
    let mut before = None;
    loop {
        let versions = store
            .history(HistoryQuery {
                tenant: tenant.clone(),
                resource_type: None,
                id: None,
                since_micros: None,
                before_seq: before,
                limit: 1000,
            })
            .await?;
        let Some(last) = versions.last() else { break };
        before = Some(last.seq);
        for version in &versions {
            let reference = version.key.versioned_reference(version.version);
            if !integrity::version_is_genuine(&key, version) {
                return Ok(Some(Verification::Tampered {
                    what: format!("version {reference} is not what the server wrote"),
                }));
            }
            if !audited.contains(&reference) {
                return Ok(Some(Verification::Unaudited { reference }));
            }
            let slot = newest.entry(version.key.clone()).or_insert(version.version);
            *slot = (*slot).max(version.version);
            seen.insert(reference);
        }
    }
    if let Some(missing) = audited.iter().find(|r| !seen.contains(*r)) {
        return Ok(Some(Verification::Tampered {
            what: format!("version {missing} was written (its record says so) but is gone"),
        }));
    }
    let blind = envelope
        .blind_indexer(tenant.as_str())
        .ok_or(AdminError::MissingKeys)?;
    // The core parameters; references to this server are stored relative, so the index
    // does not depend on the address the server was reached by.
    let search = fhirwall_search::SearchIndex::core();
    let indexer = Indexer {
        blind: &blind,
        tenant,
        search,
        base_url: "",
    };
    for (resource, version) in &newest {
        let current = store.read_current(resource).await?;
        let genuine = current.as_ref().is_some_and(|c| {
            integrity::current_is_genuine(&key, c) && c.version.version == *version
        });
        let Some(current) = current.filter(|_| genuine) else {
            return Ok(Some(Verification::Tampered {
                what: format!(
                    "the current version of {} is not its newest ({version}) as the server left it",
                    resource.reference()
                ),
            }));
        };
        if let Some(problem) = check_searchable(store, envelope, &indexer, &current.version).await?
        {
            return Ok(Some(Verification::Tampered {
                what: format!("{}: {problem}", resource.reference()),
            }));
        }
    }
    for client in store.list_clients(tenant).await? {
        if !integrity::client_is_genuine(&key, &client) {
            return Ok(Some(Verification::Tampered {
                what: format!("client {} is not as registered", client.client_id),
            }));
        }
    }
    Ok(None)
}

/// Whether search sees a resource as its current version says: a live one by its id and by
/// each of its index terms, a deleted one not at all. The flags and terms search runs on carry
/// no tags of their own, so an edit of them (a live resource hidden, a term removed) shows
/// here.
async fn check_searchable(
    store: &dyn Store,
    envelope: &Envelope,
    indexer: &Indexer<'_>,
    current: &StoredVersion,
) -> Result<Option<&'static str>, AdminError> {
    let key = &current.key;
    let query = |terms: Vec<Vec<fhirwall_store::IndexTerm>>| {
        let mut clauses = vec![fhirwall_store::Clause::Ids(vec![key.id.clone()])];
        clauses.extend(terms.into_iter().map(fhirwall_store::Clause::Terms));
        CurrentQuery {
            tenant: key.tenant.clone(),
            resource_type: key.resource_type.clone(),
            clauses,
            after_seq: None,
            up_to_seq: None,
            limit: 1,
        }
    };
    let by_id = store.find_current(query(Vec::new())).await?;
    if current.is_deleted() {
        return Ok((!by_id.is_empty()).then_some("deleted, yet search finds it"));
    }
    if by_id.is_empty() {
        return Ok(Some("live, yet search does not find it"));
    }
    let Some(sealed) = current.sealed_body.as_deref() else {
        return Ok(Some("live, yet its current version has no body"));
    };
    let opened = envelope.open(
        &fhirwall_crypto::AadContext::Resource {
            tenant: key.tenant.as_str(),
            resource_type: key.resource_type.as_str(),
            id: key.id.as_str(),
            version: current.version,
        },
        sealed,
    );
    let Some(body) = opened
        .ok()
        .and_then(|plain| serde_json::from_slice::<serde_json::Value>(&plain).ok())
    else {
        return Ok(Some("its current version does not decrypt"));
    };
    for term in indexer.resource_terms(&key.resource_type, &body) {
        if store
            .find_current(query(vec![vec![term]]))
            .await?
            .is_empty()
        {
            return Ok(Some("an index term of its current version is missing"));
        }
    }
    Ok(None)
}
