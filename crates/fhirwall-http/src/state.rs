//! What every handler shares: the store, the envelope, the token issuer, limits and the clock.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use fhirwall_auth::{AccessClaims, JwksFetcher, TokenIssuer};
use fhirwall_crypto::{BlindIndexer, Envelope};
use fhirwall_store::Store;

/// The one door for time, so tests and benchmarks could substitute it.
#[derive(Clone, Copy, Debug, Default)]
pub struct Clock;

impl Clock {
    /// Microseconds since the Unix epoch, truncated to milliseconds (FHIR instants carry ms).
    pub fn now_micros(&self) -> i64 {
        let now = time::OffsetDateTime::now_utc();
        let micros = now.unix_timestamp_nanos() / 1000;
        i64::try_from(micros - micros % 1000).unwrap_or(i64::MAX)
    }

    pub fn now_unix(&self) -> i64 {
        time::OffsetDateTime::now_utc().unix_timestamp()
    }
}

/// Limits on what a request may carry.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_body_bytes: usize,
    pub max_json_depth: usize,
    /// How long a request body may take to arrive.
    pub body_read_timeout: std::time::Duration,
}

/// Shared state. Cheap to clone (everything is behind `Arc`).
#[derive(Clone)]
pub struct AppState {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub store: Arc<dyn Store>,
    pub envelope: Arc<Envelope>,
    pub tokens: TokenIssuer,
    pub fetcher: JwksFetcher,
    pub base_url: String,
    pub tenant: String,
    pub limits: Limits,
    pub clock: Clock,
    pub blind: BlindIndexer,
    /// Verified access tokens by SHA-256 of the token: ECDSA verification is the costliest
    /// step of a request, so each token is verified once.
    pub token_cache: Mutex<HashMap<[u8; 32], AccessClaims>>,
    /// When each client was last seen registered (unix seconds).
    pub client_seen: Mutex<HashMap<String, i64>>,
    /// Writers of the same resource queue here instead of racing each other into optimistic
    /// retries. The store's version check still guards correctness across processes.
    pub write_locks: Vec<tokio::sync::Mutex<()>>,
    /// Set while a data-key rotation is being persisted.
    pub rotating: std::sync::atomic::AtomicBool,
    pub fallback_lock: tokio::sync::Mutex<()>,
    /// The validator every write passes, with the profiles the server holds.
    pub validation: Arc<crate::validation::Validation>,
}

const WRITE_LOCK_STRIPES: usize = 512;

impl AppState {
    /// The lock stripe of one resource.
    pub(crate) async fn lock_resource(
        &self,
        resource_type: &str,
        id: &str,
    ) -> tokio::sync::MutexGuard<'_, ()> {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for byte in resource_type.bytes().chain([b'/']).chain(id.bytes()) {
            hash = (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
        }
        let index = (hash % WRITE_LOCK_STRIPES as u64) as usize;
        self.inner
            .write_locks
            .get(index)
            .unwrap_or(&self.inner.fallback_lock)
            .lock()
            .await
    }

    /// Builds the state. `base_url` is the public origin (`https://host:port`), without a
    /// trailing slash.
    #[expect(
        clippy::too_many_arguments,
        reason = "wiring the state once at start-up"
    )]
    pub fn new(
        store: Arc<dyn Store>,
        envelope: Arc<Envelope>,
        tokens: TokenIssuer,
        fetcher: JwksFetcher,
        base_url: String,
        tenant: String,
        limits: Limits,
        clock: Clock,
    ) -> Option<Self> {
        let blind = envelope.blind_indexer(&tenant)?;
        Some(AppState {
            inner: Arc::new(Inner {
                store,
                envelope,
                tokens,
                fetcher,
                base_url,
                tenant,
                limits,
                clock,
                blind,
                token_cache: Mutex::new(HashMap::new()),
                client_seen: Mutex::new(HashMap::new()),
                write_locks: (0..WRITE_LOCK_STRIPES)
                    .map(|_| tokio::sync::Mutex::new(()))
                    .collect(),
                fallback_lock: tokio::sync::Mutex::new(()),
                rotating: std::sync::atomic::AtomicBool::new(false),
                validation: Arc::new(crate::validation::Validation::new()),
            }),
        })
    }

    /// Makes profiles live before serving: those given (a package loaded at start-up) and every
    /// profile stored through the API. Returns how many were registered; a profile that cannot
    /// be used is named in the error.
    pub async fn load_profiles(&self, given: Vec<serde_json::Value>) -> Result<usize, String> {
        let validation = &self.inner.validation;
        let mut count = 0;
        for sd in given {
            let url = sd
                .get("url")
                .and_then(serde_json::Value::as_str)
                .unwrap_or("(no url)")
                .to_owned();
            let prepared = validation
                .prepare_profile(&sd)
                .map_err(|e| format!("profile {url}: {}", e.outcome.message))?;
            if let Some(prepared) = prepared {
                validation.register(&format!("package:{url}"), prepared);
                count += 1;
            }
        }
        let stored = self
            .inner
            .store
            .find_current(fhirwall_store::CurrentQuery {
                tenant: self.inner.tenant.clone(),
                resource_type: "StructureDefinition".into(),
                id: None,
                terms: Vec::new(),
                after_seq: None,
                limit: 1_000_000,
            })
            .await
            .map_err(|e| format!("cannot list stored StructureDefinitions: {e}"))?;
        for row in stored {
            if row.is_deleted() {
                continue;
            }
            let plain = self
                .open_version(&row)
                .map_err(|e| format!("cannot open StructureDefinition/{}: {e}", row.id))?;
            let sd: serde_json::Value = serde_json::from_slice(&plain)
                .map_err(|_| format!("StructureDefinition/{} is not JSON", row.id))?;
            // A stored profile that no longer builds is skipped, not fatal: it was valid
            // when written, and the server must still start.
            match validation.prepare_profile(&sd) {
                Ok(Some(prepared)) => {
                    validation.register(&row.id, prepared);
                    count += 1;
                }
                Ok(None) => {}
                Err(_) => tracing::warn!("a stored profile could not be loaded; skipped"),
            }
        }
        Ok(count)
    }

    /// The plaintext of a stored version, its associated data rebuilt from the row. A row
    /// without a body (a delete) is an error: callers open only versions that have one.
    pub(crate) fn open_version(
        &self,
        row: &fhirwall_store::StoredVersion,
    ) -> Result<Vec<u8>, fhirwall_crypto::CryptoError> {
        let sealed = row.sealed_body.as_deref().unwrap_or_default();
        self.inner.envelope.open(
            &fhirwall_crypto::AadContext::Resource {
                tenant: &row.tenant,
                resource_type: &row.resource_type,
                id: &row.id,
                version: row.version,
            },
            sealed,
        )
    }

    pub(crate) fn fhir_base(&self) -> String {
        format!("{}/fhir", self.inner.base_url)
    }

    pub(crate) fn token_url(&self) -> String {
        format!("{}/auth/token", self.inner.base_url)
    }

    /// When the tenant's data key has sealed enough, makes a new one in the background:
    /// persisted first, activated after, so no ciphertext ever names a key a crash could lose.
    pub(crate) fn rotate_data_key_if_due(&self) {
        use std::sync::atomic::Ordering;
        let inner = &self.inner;
        if !inner.envelope.rotation_due(&inner.tenant)
            || inner.rotating.swap(true, Ordering::SeqCst)
        {
            return;
        }
        let state = self.clone();
        tokio::spawn(async move {
            let inner = &state.inner;
            let result = async {
                let key = inner
                    .envelope
                    .new_data_key(&inner.tenant, inner.clock.now_unix())
                    .map_err(|e| e.to_string())?;
                inner
                    .store
                    .save_key(fhirwall_store::StoredKey {
                        key_id: key.key_id.clone(),
                        purpose: key.purpose.clone(),
                        tenant: key.tenant.clone(),
                        kek_id: key.kek_id.clone(),
                        wrapped: key.wrapped.clone(),
                        created_unix: key.created_unix,
                    })
                    .await
                    .map_err(|e| e.to_string())?;
                inner
                    .envelope
                    .activate_data_key(&inner.tenant, &key.key_id)
                    .map_err(|e| e.to_string())
            }
            .await;
            match result {
                Ok(()) => tracing::info!("data key rotated"),
                Err(error) => {
                    tracing::error!(error = %error, "data key rotation failed; will retry")
                }
            }
            inner.rotating.store(false, Ordering::SeqCst);
        });
    }
}
