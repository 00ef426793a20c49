//! The token grant's rules (SMART Backend Services: `client_credentials` with a signed client
//! assertion) and the check of every bearer token: the token's signature and claims, the
//! client still registered and its record genuine. Failed authentications are audited, and
//! past a limit per source address and minute they are answered 429 and summarised in one
//! audit record, so a flood of bogus tokens cannot fill the disk with records.

use std::collections::HashMap;
use std::sync::Mutex;

use fhirwall_audit::{Action, EventKind};
use fhirwall_auth::{AccessClaims, AssertionError, ScopeSet};
use fhirwall_model::{IssueType, TenantId, Timestamp};
use fhirwall_store::ClientRecord;
use serde_json::{Value, json};

use crate::audit::{self, AuditDetail};
use crate::{Caller, ErrorKind, Requester, Service, ServiceError, integrity};

const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
const TOKEN_TTL_SECS: i64 = 300;
/// How long a client is trusted to be registered between checks of the store.
const CLIENT_RECHECK_SECS: i64 = 5;
const CACHE_LIMIT: usize = 100_000;

/// State this process keeps for authentication. With several nodes each keeps its own: the
/// caches only save work (a removed client is cut off within `CLIENT_RECHECK_SECS` on every
/// node), and the failure limits are per node.
#[derive(Default)]
pub(crate) struct LocalAuthState {
    /// Verified access tokens by SHA-256 of the token: ECDSA verification is the costliest
    /// step of a request, so each token is verified once.
    token_cache: Mutex<HashMap<[u8; 32], AccessClaims>>,
    /// When each client was last seen registered (unix seconds).
    client_seen: Mutex<HashMap<String, i64>>,
    /// Failed authentications per source address in the current minute.
    failures: Mutex<HashMap<String, FailureWindow>>,
}

#[derive(Debug, Clone, Copy)]
struct FailureWindow {
    minute: i64,
    count: u32,
    /// Failures past the limit, answered 429 without a record of their own.
    suppressed: u64,
}

/// What becomes of one failed authentication.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Disposition {
    /// Audited on its own.
    Record,
    /// Answered as usual, counted in the minute's summary record.
    Summarise,
    /// Answered 429, counted in the minute's summary record.
    Throttle,
}

/// A refusal at the token endpoint (RFC 6749 section 5.2).
#[derive(Debug, Clone)]
pub struct TokenFailure {
    pub status: u16,
    pub error: &'static str,
    pub description: String,
    /// Why, for the audit record and the log (never sent).
    pub audit_code: &'static str,
}

impl TokenFailure {
    pub fn new(
        status: u16,
        error: &'static str,
        description: impl Into<String>,
        audit_code: &'static str,
    ) -> Self {
        TokenFailure {
            status,
            error,
            description: description.into(),
            audit_code,
        }
    }
}

fn store_unavailable() -> TokenFailure {
    TokenFailure::new(503, "temporarily_unavailable", "Try again later.", "store")
}

/// RFC 6749 section 5.2: 400 unless the client authenticated with the Authorization header,
/// which backend-services clients never do (they use a client assertion). The caller learns
/// only that the assertion was refused; the log and the audit record say why.
fn invalid_client(audit_code: &'static str) -> TokenFailure {
    TokenFailure::new(
        400,
        "invalid_client",
        "The client assertion was not accepted.",
        audit_code,
    )
}

/// The fields of a token request's form.
#[derive(Debug, Default)]
pub struct TokenRequest {
    pub grant_type: Option<String>,
    pub client_assertion_type: Option<String>,
    pub client_assertion: Option<String>,
    pub scope: Option<String>,
}

impl TokenRequest {
    /// Reads the form's pairs; a parameter given twice is refused (RFC 6749 section 3.2).
    pub fn from_form(pairs: impl Iterator<Item = (String, String)>) -> Result<Self, TokenFailure> {
        let mut request = TokenRequest::default();
        for (key, value) in pairs {
            let slot = match key.as_str() {
                "grant_type" => &mut request.grant_type,
                "client_assertion_type" => &mut request.client_assertion_type,
                "client_assertion" => &mut request.client_assertion,
                "scope" => &mut request.scope,
                _ => continue,
            };
            if slot.is_some() {
                return Err(TokenFailure::new(
                    400,
                    "invalid_request",
                    format!("The parameter {key} appears more than once."),
                    "repeated-parameter",
                ));
            }
            *slot = Some(value);
        }
        Ok(request)
    }
}

/// A token endpoint answer: the JSON body of a success.
pub type TokenAnswer = Value;

impl Service {
    /// The token endpoint: checks the request, issues a token, audits the attempt either way.
    /// `request` is what the edge could read (a malformed form is already a failure).
    pub async fn token(
        &self,
        who: &Requester,
        request: Result<TokenRequest, TokenFailure>,
    ) -> Result<TokenAnswer, TokenFailure> {
        let now = self.now();
        let mut client = None;
        let result = match request {
            Ok(request) => self.issue_token(request, now, &mut client).await,
            Err(failure) => Err(failure),
        };
        let (status, audit_code) = match &result {
            Ok(_) => (200, None),
            Err(f) => (f.status, Some(f.audit_code)),
        };
        if audit_code.is_some() {
            match self.failure_disposition(who, now) {
                Disposition::Record => {}
                Disposition::Summarise => return result,
                Disposition::Throttle => {
                    tracing::warn!(request_id = %who.request_id, "failed authentications over the limit for this source; answered 429 without a record");
                    return Err(TokenFailure::new(
                        429,
                        "temporarily_unavailable",
                        "Too many failed attempts from this address; retry in a minute.",
                        "rate-limited",
                    ));
                }
            }
        }
        if let Some(code) = audit_code {
            tracing::info!(request_id = %who.request_id, reason = code, "token request refused");
        }
        let detail = AuditDetail {
            subtype: "login",
            action: Some(Action::Execute),
            outcome_code: audit_code,
            ..AuditDetail::default()
        };
        let (tenant, client_id) = match &client {
            Some(c) => (c.tenant.clone(), Some(c.client_id.clone())),
            None => (TenantId::default_tenant(), None),
        };
        let record = audit::record_for(
            self,
            who,
            &tenant,
            client_id,
            EventKind::Authentication,
            detail,
            status,
            now,
        );
        if audit::append(self, &record, now).await.is_err() {
            return Err(TokenFailure::new(
                503,
                "temporarily_unavailable",
                "The server cannot record this request now.",
                "audit-unavailable",
            ));
        }
        result
    }

    async fn issue_token(
        &self,
        request: TokenRequest,
        now: Timestamp,
        client_out: &mut Option<ClientRecord>,
    ) -> Result<TokenAnswer, TokenFailure> {
        match request.grant_type.as_deref() {
            Some("client_credentials") => {}
            Some(_) => {
                return Err(TokenFailure::new(
                    400,
                    "unsupported_grant_type",
                    "Only client_credentials is supported here.",
                    "unsupported-grant",
                ));
            }
            None => {
                return Err(TokenFailure::new(
                    400,
                    "invalid_request",
                    "grant_type is required.",
                    "missing-grant",
                ));
            }
        }
        if request.client_assertion_type.as_deref() != Some(ASSERTION_TYPE) {
            return Err(TokenFailure::new(
                400,
                "invalid_client",
                "client_assertion_type must be urn:ietf:params:oauth:client-assertion-type:jwt-bearer.",
                "bad-assertion-type",
            ));
        }
        let assertion = request
            .client_assertion
            .ok_or_else(|| invalid_client("missing-assertion"))?;
        let claimed =
            fhirwall_auth::peek_client_id(&assertion).map_err(|e| invalid_client(e.code()))?;
        let tenant = TenantId::default_tenant();
        let client = self
            .genuine_client(&tenant, &claimed)
            .await
            .map_err(|_| store_unavailable())?
            .ok_or_else(|| invalid_client("unknown-client"))?;
        *client_out = Some(client.clone());
        let now_unix = now.unix_seconds();
        let token_url = self.token_url();
        let inner = &self.inner;
        let verified = match (&client.jwks, &client.jwks_uri) {
            (Some(jwks), _) => {
                let keys =
                    fhirwall_auth::validate_jwks(jwks).map_err(|e| invalid_client(e.code()))?;
                fhirwall_auth::verify_client_assertion(
                    &assertion,
                    Some(&client.client_id),
                    &token_url,
                    &keys,
                    now_unix,
                )
            }
            (None, Some(uri)) => {
                // The fetcher's cache runs on the monotonic clock, which measures intervals
                // and is not the wall clock.
                let instant = std::time::Instant::now();
                let keys = inner
                    .fetcher
                    .get(uri, instant)
                    .await
                    .map_err(|e| invalid_client(e.code()))?;
                match fhirwall_auth::verify_client_assertion(
                    &assertion,
                    Some(&client.client_id),
                    &token_url,
                    &keys,
                    now_unix,
                ) {
                    Err(AssertionError::UnknownKey) => {
                        let keys = inner
                            .fetcher
                            .refresh(uri, instant)
                            .await
                            .map_err(|e| invalid_client(e.code()))?;
                        fhirwall_auth::verify_client_assertion(
                            &assertion,
                            Some(&client.client_id),
                            &token_url,
                            &keys,
                            now_unix,
                        )
                    }
                    other => other,
                }
            }
            (None, None) => return Err(invalid_client("client-without-keys")),
        };
        let claims = verified.map_err(|e| invalid_client(e.code()))?;
        let fresh = inner
            .store
            .use_jti(&client.client_id, &claims.jti, claims.exp, now_unix)
            .await
            .map_err(|_| store_unavailable())?;
        if !fresh {
            return Err(invalid_client("replayed-jti"));
        }
        let granted =
            ScopeSet::parse(&client.scope).map_err(|_| invalid_client("bad-registered-scope"))?;
        let scopes = match request.scope.as_deref().map(str::trim) {
            None | Some("") => granted.clone(),
            Some(requested) => {
                let requested = ScopeSet::parse(requested).map_err(|_| {
                    TokenFailure::new(
                        400,
                        "invalid_scope",
                        "The requested scope is malformed.",
                        "bad-scope",
                    )
                })?;
                requested.intersect_granted(&granted)
            }
        };
        if scopes.is_empty() {
            return Err(TokenFailure::new(
                400,
                "invalid_scope",
                "None of the requested scopes is granted to this client.",
                "scope-not-granted",
            ));
        }
        let issued = inner
            .tokens
            .issue(
                &client.client_id,
                client.tenant.as_str(),
                &scopes,
                now_unix,
                TOKEN_TTL_SECS,
            )
            .map_err(|_| {
                TokenFailure::new(500, "server_error", "Try again later.", "issue-failed")
            })?;
        Ok(json!({
            "access_token": issued.access_token,
            "token_type": "bearer",
            "expires_in": issued.expires_in,
            "scope": issued.scope,
        }))
    }

    /// A client record, if registered and genuine (its integrity tag checks).
    async fn genuine_client(
        &self,
        tenant: &TenantId,
        client_id: &str,
    ) -> Result<Option<ClientRecord>, ServiceError> {
        let Some(client) = self.inner.store.get_client(tenant, client_id).await? else {
            return Ok(None);
        };
        let keys = self.tenant_keys(tenant)?;
        if !integrity::client_is_genuine(&keys.integrity, &client) || client.tenant != *tenant {
            tracing::error!(
                "a client record failed its integrity tag (edited outside the server?); refusing it"
            );
            return Ok(None);
        }
        Ok(Some(client))
    }

    /// Checks the bearer token of a FHIR request (`authorization` is the header's value). A
    /// failure is audited and answers 401 (`bearer_error` set when a token was presented), or
    /// 429 past the failure limit of the source address.
    pub async fn authenticate(
        &self,
        who: &Requester,
        authorization: Option<&str>,
    ) -> Result<Caller, ServiceError> {
        let now = self.now();
        let token = authorization.and_then(|v| {
            let (scheme, rest) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
        });
        let now_unix = now.unix_seconds();
        let verified = match token {
            None => Err(("missing-token", None)),
            Some(token) => self
                .verify_cached(token, now_unix)
                .map_err(|code| (code, Some("invalid_token"))),
        };
        let accepted = match verified {
            Err(failure) => Err(failure),
            Ok(claims) => match TenantId::parse(&claims.tenant) {
                Err(_) => Err(("bad-tenant", Some("invalid_token"))),
                Ok(tenant) => {
                    if self
                        .client_still_registered(&tenant, &claims.client_id, now_unix)
                        .await?
                    {
                        Ok((tenant, claims))
                    } else {
                        Err(("client-removed", Some("invalid_token")))
                    }
                }
            },
        };
        let (code, bearer_error) = match accepted {
            Ok((tenant, claims)) => {
                return Ok(Caller {
                    requester: who.clone(),
                    tenant,
                    client_id: claims.client_id,
                    scopes: claims.scopes,
                });
            }
            Err(failure) => failure,
        };
        let disposition = self.failure_disposition(who, now);
        if disposition == Disposition::Throttle {
            tracing::warn!(request_id = %who.request_id, "failed authentications over the limit for this source; answered 429 without a record");
            return Err(ServiceError::new(
                ErrorKind::TooManyRequests,
                IssueType::Throttled,
                "too-many-failures",
                "Too many failed authentications from this address; retry in a minute.",
            ));
        }
        tracing::info!(request_id = %who.request_id, reason = code, "bearer token refused");
        let mut error = ServiceError::new(
            ErrorKind::Unauthenticated,
            IssueType::Login,
            "unauthenticated",
            "A valid bearer access token is required.",
        );
        error.bearer_error = bearer_error;
        if disposition == Disposition::Summarise {
            return Err(error);
        }
        let record = audit::record_for(
            self,
            who,
            &TenantId::default_tenant(),
            None,
            EventKind::Authentication,
            AuditDetail {
                subtype: "bearer",
                action: Some(Action::Execute),
                outcome_code: Some(code),
                ..AuditDetail::default()
            },
            401,
            now,
        );
        audit::append(self, &record, now).await?;
        Err(error)
    }

    /// Counts a failed authentication of `who`'s source and says what becomes of it: past the
    /// limit it is throttled (429) and only summarised; while storage is low it is answered as
    /// usual but only summarised too, so the space left goes to real work. The first failure
    /// of a new minute first writes the summary of the minute before, if any were suppressed.
    fn failure_disposition(&self, who: &Requester, now: Timestamp) -> Disposition {
        let source = who.source_address.clone().unwrap_or_default();
        let minute = now.unix_seconds().div_euclid(60);
        let limit = self.inner.config.auth_failures_per_minute;
        let mut summary = None;
        let over = {
            let Ok(mut failures) = self.inner.local.failures.lock() else {
                return Disposition::Record;
            };
            if failures.len() >= CACHE_LIMIT && !failures.contains_key(&source) {
                failures.retain(|_, w| w.minute == minute);
            }
            let window = failures.entry(source.clone()).or_insert(FailureWindow {
                minute,
                count: 0,
                suppressed: 0,
            });
            if window.minute != minute {
                if window.suppressed > 0 {
                    summary = Some(window.suppressed);
                }
                *window = FailureWindow {
                    minute,
                    count: 0,
                    suppressed: 0,
                };
            }
            window.count = window.count.saturating_add(1);
            let disposition = if window.count > limit {
                Disposition::Throttle
            } else if self.storage_low() {
                Disposition::Summarise
            } else {
                Disposition::Record
            };
            if disposition != Disposition::Record {
                window.suppressed += 1;
            }
            disposition
        };
        if let Some(suppressed) = summary {
            self.write_failure_summary(who, suppressed, now);
        }
        over
    }

    /// Writes, in the background, the one record that stands for `suppressed` failures.
    fn write_failure_summary(&self, who: &Requester, suppressed: u64, now: Timestamp) {
        let service = self.clone();
        let who = who.clone();
        tokio::spawn(async move {
            let mut record = audit::record_for(
                &service,
                &who,
                &TenantId::default_tenant(),
                None,
                EventKind::Authentication,
                AuditDetail {
                    subtype: "bearer",
                    action: Some(Action::Execute),
                    outcome_code: Some("rate-limited"),
                    ..AuditDetail::default()
                },
                429,
                now,
            );
            record.repeated = Some(suppressed);
            if let Err(error) = audit::append(&service, &record, now).await {
                tracing::error!(outcome = %error.outcome.code, "the summary of suppressed failed authentications could not be stored");
            }
        });
    }

    /// Writes the summaries of every minute that has ended with suppressed failures; the
    /// composition root calls this every minute.
    pub fn flush_failure_summaries(&self) {
        let now = self.now();
        let minute = now.unix_seconds().div_euclid(60);
        let ended: Vec<(String, u64)> = match self.inner.local.failures.lock() {
            Ok(mut failures) => {
                let ended = failures
                    .iter()
                    .filter(|(_, w)| w.minute < minute && w.suppressed > 0)
                    .map(|(source, w)| (source.clone(), w.suppressed))
                    .collect();
                failures.retain(|_, w| w.minute == minute);
                ended
            }
            Err(_) => Vec::new(),
        };
        for (source, suppressed) in ended {
            let who = Requester {
                request_id: uuid::Uuid::new_v4().simple().to_string(),
                source_address: Some(source).filter(|s| !s.is_empty()),
            };
            self.write_failure_summary(&who, suppressed, now);
        }
    }

    fn verify_cached(&self, token: &str, now: i64) -> Result<AccessClaims, &'static str> {
        let key = fhirwall_crypto::sha256(token.as_bytes());
        let local = &self.inner.local;
        if let Ok(cache) = local.token_cache.lock()
            && let Some(claims) = cache.get(&key)
            && claims.exp > now
        {
            return Ok(claims.clone());
        }
        let claims = self.inner.tokens.verify(token, now).map_err(|e| e.code())?;
        if let Ok(mut cache) = local.token_cache.lock() {
            if cache.len() >= CACHE_LIMIT {
                cache.retain(|_, c| c.exp > now);
                if cache.len() >= CACHE_LIMIT {
                    cache.clear();
                }
            }
            cache.insert(key, claims.clone());
        }
        Ok(claims)
    }

    /// Whether the token's client is still registered (and its record genuine), checked at
    /// most every few seconds per client, so `fhirwall client remove` cuts off tokens already
    /// issued within that time.
    async fn client_still_registered(
        &self,
        tenant: &TenantId,
        client_id: &str,
        now: i64,
    ) -> Result<bool, ServiceError> {
        let local = &self.inner.local;
        if let Ok(seen) = local.client_seen.lock()
            && seen
                .get(client_id)
                .is_some_and(|at| now - at < CLIENT_RECHECK_SECS)
        {
            return Ok(true);
        }
        let registered = self.genuine_client(tenant, client_id).await?.is_some();
        if let Ok(mut seen) = local.client_seen.lock() {
            if registered {
                if seen.len() >= CACHE_LIMIT {
                    seen.clear();
                }
                seen.insert(client_id.to_string(), now);
            } else {
                seen.remove(client_id);
            }
        }
        Ok(registered)
    }
}
