//! The harness: a real `Service` over a fresh SQLite store and file keyring in a temporary
//! directory, wired as `fhirwall serve` wires it but with a `ManualClock`, plus builders for
//! callers and requests and a reader of the decrypted audit trail. It must not reach into the
//! service's internals: everything goes through its public API or the store's traits.

use std::path::PathBuf;
use std::sync::Arc;

use fhirwall_audit::AuditRecord;
use fhirwall_auth::ScopeSet;
use fhirwall_auth::testkeys::TestClientKey;
use fhirwall_crypto::{AadContext, Envelope, FileKeyring, KeyProvider};
use fhirwall_model::{ResourceId, ResourceType, TenantId, Timestamp};
use fhirwall_service::{
    Caller, ClientRegistration, ErrorKind, Interaction, ManualClock, Reply, Request, Requester,
    Service, ServiceConfig, ServiceError, ServiceParts, TokenRequest,
};
use fhirwall_store::{AuditTrail, Store};
use fhirwall_store_sqlite::SqliteStore;
use serde_json::{Value, json};

/// The public origin every test service has.
pub const BASE_URL: &str = "https://fhir.test";
/// 2023-11-14T22:13:20Z: where every test's clock starts.
pub const START_UNIX: i64 = 1_700_000_000;
pub const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// A fresh temporary directory, removed when the last handle to it goes.
#[derive(Debug)]
pub struct DataDir(PathBuf);

impl DataDir {
    pub fn fresh() -> Arc<Self> {
        let dir = std::env::temp_dir().join(format!(
            "fhirwall-service-it-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Arc::new(DataDir(dir))
    }

    /// The database file the real server uses inside its data directory.
    pub fn database(&self) -> PathBuf {
        self.0.join("fhirwall.db")
    }

    pub fn keyring(&self) -> PathBuf {
        self.0.join("keyring.json")
    }
}

impl Drop for DataDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running service and what a test needs beside it.
pub struct App {
    pub service: Service,
    pub store: Arc<SqliteStore>,
    /// The same envelope the service seals with, to open audit records.
    pub envelope: Arc<Envelope>,
    pub clock: ManualClock,
    pub dir: Arc<DataDir>,
}

impl App {
    /// A service over a fresh directory, its clock at [`START_UNIX`].
    pub async fn new() -> App {
        App::with_config(ServiceConfig::new(BASE_URL)).await
    }

    pub async fn with_config(config: ServiceConfig) -> App {
        let clock = ManualClock::at(Timestamp::from_unix_seconds(START_UNIX));
        App::open(DataDir::fresh(), clock, config).await
    }

    /// A service over `dir` (new or used before): the keyring, the store, its keys (made
    /// when missing), a fresh data key, the started store with the audit chain, the token
    /// issuer, then the service, in the order `fhirwall serve` follows.
    pub async fn open(dir: Arc<DataDir>, clock: ManualClock, config: ServiceConfig) -> App {
        let keyring = FileKeyring::open_or_create(&dir.keyring()).unwrap();
        let provider: Arc<dyn KeyProvider> = Arc::new(keyring);
        let mut envelope = Envelope::new(provider);
        let store = Arc::new(SqliteStore::open(&dir.database()).unwrap());
        let now = fhirwall_service::Clock::now(&clock);
        fhirwall_service::bootstrap_keys(store.as_ref(), &mut envelope, true, now)
            .await
            .unwrap();
        fhirwall_service::start_new_data_key(store.as_ref(), &envelope, now)
            .await
            .unwrap();
        store
            .start(fhirwall_service::audit_chain(&envelope, &TenantId::default_tenant()).unwrap())
            .unwrap();
        let signing_key = envelope.token_signing_key(TenantId::DEFAULT).unwrap();
        let tokens = fhirwall_auth::TokenIssuer::from_pkcs8_der(
            signing_key.expose(),
            "fhirwall-token-1".to_string(),
            config.base_url.clone(),
        )
        .unwrap();
        let fetcher = fhirwall_auth::JwksFetcher::new(None).unwrap();
        let envelope = Arc::new(envelope);
        let service = Service::new(
            ServiceParts {
                store: store.clone(),
                envelope: envelope.clone(),
                tokens,
                fetcher,
                clock: Arc::new(clock.clone()),
            },
            config,
        )
        .unwrap();
        App {
            service,
            store,
            envelope,
            clock,
            dir,
        }
    }

    /// Shuts the store down (everything pending committed, writes refused from now on) and
    /// gives back the directory and the clock, so the database can be edited while no server
    /// runs and a new service opened over it with [`App::open`].
    pub fn close(self) -> (Arc<DataDir>, ManualClock) {
        self.store.shutdown();
        (self.dir, self.clock)
    }

    /// Runs one interaction.
    pub async fn handle(&self, caller: &Caller, request: Request) -> Result<Reply, ServiceError> {
        self.service.handle(caller, request).await
    }

    /// Creates a Patient with the full-access caller; returns its id.
    pub async fn create_patient(&self, mrn: &str) -> ResourceId {
        let reply = self
            .handle(&admin(), create(patient_body(mrn)))
            .await
            .unwrap();
        assert_eq!(reply.status, 201);
        ResourceId::parse(body(&reply)["id"].as_str().unwrap()).unwrap()
    }

    /// Updates a Patient to a new family name with the full-access caller; returns the reply.
    pub async fn update_patient(&self, id: &ResourceId, mrn: &str, family: &str) -> Reply {
        let mut patient = patient_body(mrn);
        patient["id"] = json!(id.as_str());
        patient["name"][0]["family"] = json!(family);
        self.handle(&admin(), update(id, patient)).await.unwrap()
    }

    /// Every audit record, oldest first, decrypted with the service's own envelope.
    pub async fn audit_records(&self) -> Vec<AuditRecord> {
        let mut records = Vec::new();
        let mut after = 0;
        loop {
            let page = self.store.audit_scan(after, 500).await.unwrap();
            let Some(last) = page.last() else { break };
            after = last.seq;
            for stored in &page {
                let plain = self
                    .envelope
                    .open(
                        &AadContext::Audit {
                            tenant: stored.tenant.as_str(),
                            record_id: &stored.record_id,
                        },
                        &stored.sealed,
                    )
                    .unwrap();
                records.push(serde_json::from_slice(&plain).unwrap());
            }
        }
        records
    }

    pub async fn audit_count(&self) -> usize {
        self.audit_records().await.len()
    }

    /// The entries of a resource's history, newest first, read by the full-access caller.
    pub async fn history_entries(&self, id: &ResourceId) -> Vec<Value> {
        let reply = self
            .handle(
                &admin(),
                Request::new(Interaction::HistoryInstance(patient(), id.clone())),
            )
            .await
            .unwrap();
        body(&reply)["entry"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// How many versions of every resource the store holds.
    pub async fn version_count(&self) -> usize {
        let reply = self
            .handle(&admin(), Request::new(Interaction::HistorySystem))
            .await
            .unwrap();
        body(&reply)["entry"].as_array().map_or(0, Vec::len)
    }

    /// Registers a backend-services client with `key`'s JWKS and `scope`; returns its id.
    pub async fn add_client(&self, key: &TestClientKey, scope: &str) -> String {
        fhirwall_service::client_add(
            self.store.as_ref(),
            &self.envelope,
            self.service.now(),
            ClientRegistration {
                name: "test client".into(),
                jwks: Some(key.jwks_json()),
                jwks_uri: None,
                scope: scope.into(),
            },
        )
        .await
        .unwrap()
    }

    /// A client assertion `key` signs for `client_id` at the clock's time.
    pub fn assertion(&self, key: &TestClientKey, client_id: &str, jti: &str) -> String {
        key.sign_assertion(
            client_id,
            &self.service.token_url(),
            self.service.now().unix_seconds(),
            jti,
        )
        .unwrap()
    }

    /// A token request with a fresh assertion `key` signs for `client_id`.
    pub fn token_request(
        &self,
        key: &TestClientKey,
        client_id: &str,
        jti: &str,
        scope: Option<&str>,
    ) -> TokenRequest {
        token_request(self.assertion(key, client_id, jti), scope)
    }
}

/// The form of a client-credentials token request with `assertion`.
pub fn token_request(assertion: String, scope: Option<&str>) -> TokenRequest {
    TokenRequest {
        grant_type: Some("client_credentials".into()),
        client_assertion_type: Some(ASSERTION_TYPE.into()),
        client_assertion: Some(assertion),
        scope: scope.map(str::to_string),
    }
}

/// A requester from one address, with a fresh correlation id.
pub fn requester_from(address: &str) -> Requester {
    Requester {
        request_id: uuid::Uuid::new_v4().simple().to_string(),
        source_address: Some(address.to_string()),
    }
}

/// An authenticated caller holding `scopes`, as the edge builds it from a token.
pub fn caller(scopes: &str) -> Caller {
    Caller {
        requester: requester_from("192.0.2.1"),
        tenant: TenantId::default_tenant(),
        client_id: format!("client-{}", scopes.replace(['/', '*', ' '], "_")),
        scopes: ScopeSet::parse(scopes).unwrap(),
    }
}

/// A caller allowed everything on every type except the audit trail.
pub fn admin() -> Caller {
    caller("system/*.cruds")
}

/// A caller allowed to read and search the audit trail.
pub fn auditor() -> Caller {
    caller("system/AuditEvent.rs")
}

pub fn patient() -> ResourceType {
    ResourceType::parse("Patient").unwrap()
}

pub fn audit_event() -> ResourceType {
    ResourceType::parse("AuditEvent").unwrap()
}

pub fn id(value: &str) -> ResourceId {
    ResourceId::parse(value).unwrap()
}

/// A valid R4 Patient with one medical record number.
pub fn patient_body(mrn: &str) -> Value {
    json!({
        "resourceType": "Patient",
        "identifier": [{"system": "urn:mrn", "value": mrn}],
        "name": [{"family": "Doe", "given": ["Ann"]}],
    })
}

pub fn create(body: Value) -> Request {
    Request::new(Interaction::Create(patient())).with_body(body)
}

pub fn update(id: &ResourceId, body: Value) -> Request {
    Request::new(Interaction::Update(patient(), id.clone())).with_body(body)
}

pub fn read(id: &ResourceId) -> Request {
    Request::new(Interaction::Read(patient(), id.clone()))
}

pub fn patch(id: &ResourceId, operations: Value) -> Request {
    Request::new(Interaction::Patch(patient(), id.clone())).with_body(operations)
}

pub fn delete(id: &ResourceId) -> Request {
    Request::new(Interaction::Delete(patient(), id.clone()))
}

/// A Patient search with these parameters.
pub fn search(params: &[(&str, &str)]) -> Request {
    Request::new(Interaction::SearchType(patient())).with_params(pairs(params))
}

pub fn pairs(params: &[(&str, &str)]) -> Vec<(String, String)> {
    params
        .iter()
        .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
        .collect()
}

/// The reply's body as JSON.
pub fn body(reply: &Reply) -> Value {
    serde_json::from_slice(reply.body.as_deref().expect("the reply has a body")).unwrap()
}

/// The kind of a refusal, failing the test on success.
pub fn refused(result: Result<Reply, ServiceError>) -> ErrorKind {
    match result {
        Ok(reply) => panic!("expected a refusal, got status {}", reply.status),
        Err(error) => error.kind,
    }
}
