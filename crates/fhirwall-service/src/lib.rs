//! The application: every FHIR interaction as a function over typed inputs (a [`Caller`] and a
//! [`Request`]) that returns a [`Reply`] or a [`ServiceError`]; the write pipeline written once
//! (validate, stamp, index terms, seal, integrity tags, audit record, store); reads, history,
//! conditional logic, `$validate`, the profile registry, data-key rotation, the token grant's
//! rules, and the operator's commands. It knows nothing of HTTP: the edge (`fhirwall-http`)
//! maps requests to these calls and errors to answers, and a transaction entry or a bulk job
//! reaches the same functions.
//!
//! Every interaction is audited here: a write commits with its record, a read returns only
//! after its record is durable, and a refusal leaves a record too.

// Refusals carry a whole OperationOutcome (several issues for a validation failure); they are
// built once per failed request, so their size does not matter.
#![allow(clippy::result_large_err)]

mod admin;
mod audit;
mod audit_api;
mod bundle;
mod bundles;
mod caller;
mod capability;
mod clock;
mod error;
pub mod indexing;
mod integrity;
mod interaction;
mod keys;
mod pipeline;
mod profiles;
mod reads;
mod references;
mod search;
mod search_params;
mod tokens;
mod validate_op;
mod writes;

use std::collections::HashMap;
use std::sync::Arc;

use fhirwall_auth::{JwksFetcher, TokenIssuer};
use fhirwall_crypto::Envelope;
use fhirwall_model::{ResourceId, ResourceType, TenantId, Timestamp};
use fhirwall_store::{ResourceKey, Store};

pub use admin::{AdminError, ClientRegistration, Verification, audit_verify, client_add};
pub use audit::{AuditDetail, audit_chain};
pub use caller::{Caller, Requester};
pub use clock::{Clock, ManualClock, SystemClock};
pub use error::{ErrorKind, ServiceError};
pub use interaction::{Conditions, Interaction, Location, Reply, Request, ReturnPreference};
pub use keys::{
    KeyError, Rotation, bootstrap_keys, rewrap_all, start_new_data_key, stored_key, wrapped_key,
};
pub use tokens::{TokenAnswer, TokenFailure, TokenRequest};

/// The parts of the service that differ by deployment.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    /// The public origin (`https://host:port`), without a trailing slash.
    pub base_url: String,
    /// Failed authentications per source address and minute before the rest are answered
    /// 429 and summarised in one audit record per minute.
    pub auth_failures_per_minute: u32,
    /// The largest page a search answers (`_count` above it is lowered to it).
    pub search_max_count: usize,
    /// The most resources `_include` and `_revinclude` add to one page.
    pub search_max_includes: usize,
    /// Whether a write that refers to a resource of this server that does not exist is
    /// refused (422).
    pub referential_integrity: bool,
}

impl ServiceConfig {
    pub fn new(base_url: impl Into<String>) -> Self {
        ServiceConfig {
            base_url: base_url.into(),
            auth_failures_per_minute: 60,
            search_max_count: 1_000,
            search_max_includes: 1_000,
            referential_integrity: true,
        }
    }
}

/// The keys the service uses for one tenant, unwrapped once at start-up.
struct TenantKeys {
    blind: fhirwall_crypto::BlindIndexer,
    integrity: fhirwall_crypto::MacKey,
}

/// The application. Cheap to clone (everything is behind `Arc`).
#[derive(Clone)]
pub struct Service {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn Store>,
    envelope: Arc<Envelope>,
    tokens: TokenIssuer,
    fetcher: JwksFetcher,
    config: ServiceConfig,
    clock: Arc<dyn Clock>,
    keys: HashMap<TenantId, TenantKeys>,
    /// Per-process state; see ARCHITECTURE.md, "State held by one process".
    local: tokens::LocalAuthState,
    writes: pipeline::WriteQueues,
    rotating: std::sync::atomic::AtomicBool,
    /// Set while the store's disk is below its reserve (the composition root watches it).
    storage_low: std::sync::atomic::AtomicBool,
    profiles: profiles::Profiles,
    /// The search parameters in force (the core's, and those registered through the API).
    search: search_params::SearchParameters,
    /// `{base_url}/fhir`.
    fhir_base: String,
}

/// What the service needs at start-up.
pub struct ServiceParts {
    pub store: Arc<dyn Store>,
    pub envelope: Arc<Envelope>,
    pub tokens: TokenIssuer,
    pub fetcher: JwksFetcher,
    pub clock: Arc<dyn Clock>,
}

impl Service {
    /// Builds the service over a started store. Fails when a tenant's keys are missing.
    pub fn new(parts: ServiceParts, config: ServiceConfig) -> Result<Self, ServiceError> {
        let mut keys = HashMap::new();
        let tenant = TenantId::default_tenant();
        let (Some(blind), Some(integrity)) = (
            parts.envelope.blind_indexer(tenant.as_str()),
            parts.envelope.integrity_key(tenant.as_str()),
        ) else {
            tracing::error!("the tenant's blind-index or audit-chain key is missing");
            return Err(ServiceError::internal());
        };
        keys.insert(tenant, TenantKeys { blind, integrity });
        Ok(Service {
            inner: Arc::new(Inner {
                store: parts.store,
                envelope: parts.envelope,
                tokens: parts.tokens,
                fetcher: parts.fetcher,
                clock: parts.clock,
                keys,
                local: tokens::LocalAuthState::default(),
                writes: pipeline::WriteQueues::new(),
                rotating: std::sync::atomic::AtomicBool::new(false),
                storage_low: std::sync::atomic::AtomicBool::new(false),
                profiles: profiles::Profiles::new(),
                search: search_params::SearchParameters::new()?,
                fhir_base: format!("{}/fhir", config.base_url),
                config,
            }),
        })
    }

    /// Says whether the store's disk is below its reserve. While it is, writes are refused
    /// (507) and failed authentications are not audited one by one (only summarised), so
    /// the space left goes to the audit records of real work.
    pub fn set_storage_low(&self, low: bool) {
        let was = self
            .inner
            .storage_low
            .swap(low, std::sync::atomic::Ordering::SeqCst);
        if was != low {
            if low {
                tracing::warn!("storage below its reserve: refusing writes until space is freed");
            } else {
                tracing::info!("storage above its reserve again: accepting writes");
            }
        }
    }

    pub(crate) fn storage_low(&self) -> bool {
        self.inner
            .storage_low
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The clock's reading; read once per request and passed down.
    pub fn now(&self) -> Timestamp {
        self.inner.clock.now()
    }

    pub fn fhir_base(&self) -> String {
        self.inner.fhir_base.clone()
    }

    pub(crate) fn fhir_base_ref(&self) -> &str {
        &self.inner.fhir_base
    }

    /// The search parameters searches use.
    pub(crate) fn search_index(&self) -> Arc<fhirwall_search::SearchIndex> {
        self.inner.search.active()
    }

    /// The search parameters writes index with (those of searches, and any registered since
    /// the last reindex).
    pub(crate) fn write_index(&self) -> Arc<fhirwall_search::SearchIndex> {
        self.inner.search.writes()
    }

    pub fn base_url(&self) -> &str {
        &self.inner.config.base_url
    }

    pub fn token_url(&self) -> String {
        format!("{}/auth/token", self.inner.config.base_url)
    }

    /// The public JWKS of the token-signing key.
    pub fn public_jwks(&self) -> serde_json::Value {
        self.inner.tokens.public_jwks()
    }

    /// The CapabilityStatement: what this server really implements.
    pub fn capability_statement(&self) -> serde_json::Value {
        capability::capability_statement(self)
    }

    /// The SMART configuration document.
    pub fn smart_configuration(&self) -> serde_json::Value {
        capability::smart_configuration(self)
    }

    fn tenant_keys(&self, tenant: &TenantId) -> Result<&TenantKeys, ServiceError> {
        self.inner.keys.get(tenant).ok_or_else(|| {
            tracing::error!("a request names a tenant this server holds no keys for");
            ServiceError::internal()
        })
    }

    /// Serves one FHIR interaction for an authenticated caller: checks its scopes, runs it,
    /// and audits it (a write commits with its record; anything else returns only after its
    /// record is durable, success or refusal).
    pub async fn handle(&self, caller: &Caller, request: Request) -> Result<Reply, ServiceError> {
        let now = self.now();
        let call = Call {
            service: self,
            caller,
            now,
            request: &request,
        };
        let base = audit::AuditDetail::of_request(&request);
        let result = match check_scopes(caller, &request) {
            Err(error) => Err(Failed::from(error)),
            Ok(()) => call.run().await,
        };
        match result {
            Ok(done) => {
                if let Some(detail) = done.audit {
                    let detail = detail.completed_by(&base);
                    self.audit_rest(&call, detail, done.reply.status, None)
                        .await?;
                }
                Ok(done.reply)
            }
            Err(failed) => {
                let detail = failed.detail.completed_by(&base);
                self.audit_rest(
                    &call,
                    detail,
                    failed.error.status(),
                    Some(failed.error.outcome.code),
                )
                .await?;
                Err(failed.error)
            }
        }
    }

    /// Whether the caller's scopes allow the request at all (checked again by `handle`): the
    /// edge asks before it reads a body.
    pub fn permitted(&self, caller: &Caller, request: &Request) -> Result<(), ServiceError> {
        check_scopes(caller, request)
    }

    /// Audits a request the edge refused after authentication (an unknown address, a format
    /// the caller cannot take, an unreadable body) and gives the refusal back.
    pub async fn refuse(
        &self,
        caller: &Caller,
        interaction: Option<&Interaction>,
        query: &[(String, String)],
        error: ServiceError,
    ) -> ServiceError {
        let now = self.now();
        let mut detail = match interaction {
            Some(interaction) => {
                let mut request = Request::new(interaction.clone());
                request.params = query.to_vec();
                audit::AuditDetail::of_request(&request)
            }
            None => audit::AuditDetail::unrouted(query),
        };
        detail.outcome_code = Some(error.outcome.code);
        let record = audit::record(
            self,
            &caller.requester,
            Some(caller),
            fhirwall_audit::EventKind::Rest,
            detail,
            error.status(),
            now,
        );
        match audit::append(self, &record, now).await {
            Ok(()) => error,
            Err(unavailable) => unavailable,
        }
    }

    async fn audit_rest(
        &self,
        call: &Call<'_>,
        mut detail: audit::AuditDetail,
        status: u16,
        outcome_code: Option<&'static str>,
    ) -> Result<(), ServiceError> {
        detail.outcome_code = outcome_code;
        let record = audit::record(
            self,
            &call.caller.requester,
            Some(call.caller),
            fhirwall_audit::EventKind::Rest,
            detail,
            status,
            call.now,
        );
        audit::append(self, &record, call.now).await
    }

    /// Makes profiles live before serving: those given (a package loaded at start-up) and
    /// every profile stored through the API. Returns how many were registered.
    pub async fn load_profiles(&self, given: Vec<serde_json::Value>) -> Result<usize, String> {
        profiles::load(self, given).await
    }
}

/// The SMART permissions the request needs, checked before anything is read.
pub(crate) fn check_scopes(caller: &Caller, request: &Request) -> Result<(), ServiceError> {
    let interaction = &request.interaction;
    let conditional_create = request.conditions.if_none_exist.is_some();
    let type_name = interaction
        .resource_type()
        .map_or("*", ResourceType::as_str);
    for permission in interaction.permissions(conditional_create) {
        // The audit trail holds every client's activity: reaching it needs a scope that names
        // AuditEvent itself, never one implied by `*`. Validating a proposed AuditEvent reads
        // nothing of it.
        let explicit =
            type_name == "AuditEvent" && !matches!(interaction, Interaction::Validate(_, None));
        let allowed = if explicit {
            caller.may_explicitly(type_name, permission)
        } else {
            caller.may(type_name, permission)
        };
        if !allowed {
            return Err(ServiceError::forbidden(format!(
                "The access token's scopes do not allow {} on {type_name}{}.",
                interaction.subtype(),
                if explicit {
                    " (the audit trail needs a scope naming AuditEvent, such as system/AuditEvent.rs)"
                } else {
                    ""
                }
            )));
        }
    }
    Ok(())
}

/// One interaction being served: who asks, when (the one clock reading of the request), and
/// what.
pub(crate) struct Call<'a> {
    pub service: &'a Service,
    pub caller: &'a Caller,
    pub now: Timestamp,
    pub request: &'a Request,
}

impl Call<'_> {
    pub fn tenant(&self) -> &TenantId {
        &self.caller.tenant
    }

    pub fn param(&self, name: &str) -> Option<&str> {
        self.request.param(name)
    }

    pub fn key(&self, resource_type: &ResourceType, id: &ResourceId) -> ResourceKey {
        ResourceKey {
            tenant: self.caller.tenant.clone(),
            resource_type: resource_type.clone(),
            id: id.clone(),
        }
    }

    async fn run(&self) -> Result<Done, Failed> {
        let request = self.request;
        // The server's own trail is read-only; validating a proposed AuditEvent is not a
        // write, so `$validate` goes the common way.
        let is_audit_event = request
            .interaction
            .resource_type()
            .map(ResourceType::as_str)
            == Some("AuditEvent");
        if is_audit_event && !matches!(request.interaction, Interaction::Validate(..)) {
            return audit_api::audit_event_api(self).await;
        }
        match &request.interaction {
            Interaction::Read(t, id) => reads::read(self, t, id).await,
            Interaction::Vread(t, id, vid) => reads::vread(self, t, id, vid).await,
            Interaction::Create(t) => writes::create(self, t).await,
            Interaction::Update(t, id) => writes::update(self, t, id).await,
            Interaction::Patch(t, id) => writes::patch(self, t, id).await,
            Interaction::Delete(t, id) => writes::delete(self, t, id, None).await,
            Interaction::ConditionalUpdate(t) => writes::conditional_update(self, t).await,
            Interaction::ConditionalDelete(t) => writes::conditional_delete(self, t).await,
            Interaction::SearchType(t) => search::search(self, search::Target::Type(t)).await,
            Interaction::SearchSystem => search::search(self, search::Target::System).await,
            Interaction::Reindex { start } => {
                let params = &self.service.inner.search;
                let started = *start && self.service.start_reindex();
                if *start && !started {
                    return Err(ServiceError::new(
                        ErrorKind::Conflict,
                        fhirwall_model::IssueType::Conflict,
                        "reindex-running",
                        "A reindex is already running; GET $reindex tells its progress.",
                    )
                    .into());
                }
                let body =
                    serde_json::to_vec(&params.status()).map_err(|_| ServiceError::internal())?;
                let mut reply = Reply::json(if *start { 202 } else { 200 }, body);
                if *start {
                    reply.location = Some(Location {
                        url: format!("{}/$reindex", self.service.fhir_base()),
                        created: false,
                    });
                }
                Ok(Done::audited(reply, audit::AuditDetail::default()))
            }
            Interaction::SearchCompartment(c, id, t) => {
                search::search(
                    self,
                    search::Target::Compartment {
                        compartment: c,
                        id,
                        resource_type: t.as_ref(),
                    },
                )
                .await
            }
            Interaction::HistoryType(t) => bundles::history(self, Some(t), None).await,
            Interaction::HistoryInstance(t, id) => bundles::history(self, Some(t), Some(id)).await,
            Interaction::HistorySystem => bundles::history(self, None, None).await,
            Interaction::Validate(t, id) => validate_op::validate(self, t, id.as_ref()).await,
            Interaction::Bundle => bundle::system_bundle(self).await,
        }
    }
}

/// A successful answer and what its audit record must say. `audit` is None when the record
/// already committed with the write.
pub(crate) struct Done {
    pub reply: Reply,
    pub audit: Option<audit::AuditDetail>,
}

impl Done {
    pub fn audited(reply: Reply, detail: audit::AuditDetail) -> Self {
        Done {
            reply,
            audit: Some(detail),
        }
    }

    /// A write whose audit record committed with it.
    pub fn committed(reply: Reply) -> Self {
        Done { reply, audit: None }
    }
}

/// A refusal and what is known about what it touched.
pub(crate) struct Failed {
    pub error: ServiceError,
    pub detail: audit::AuditDetail,
}

impl From<ServiceError> for Failed {
    fn from(error: ServiceError) -> Self {
        Failed {
            error,
            detail: audit::AuditDetail::default(),
        }
    }
}

impl From<fhirwall_store::StoreError> for Failed {
    fn from(error: fhirwall_store::StoreError) -> Self {
        Failed::from(ServiceError::from(error))
    }
}

impl From<fhirwall_crypto::CryptoError> for Failed {
    fn from(error: fhirwall_crypto::CryptoError) -> Self {
        Failed::from(ServiceError::from(error))
    }
}
