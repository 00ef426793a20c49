//! The `fhirwall` program: wires configuration, keys, the store and the HTTPS server together,
//! and carries the operator commands (clients, audit verification). No domain logic lives here.

pub mod config;
mod packages;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use fhirwall_crypto::{Envelope, FileKeyring, KeyProvider, WrappedDataKey};
use fhirwall_store::{ClientRecord, DEFAULT_TENANT, Store, StoredKey};
use fhirwall_store_sqlite::SqliteStore;

pub use config::{ServeArgs, Settings};

const DATABASE_FILE: &str = "fhirwall.db";
/// Keys every store holds from its first start. Data keys are made by `serve` (a fresh one at each
/// start) and by `keys rotate`.
const PURPOSES: &[&str] = &["audit-chain", "blind-index", "token-signing"];

/// A key as the store keeps it (the store never sees it unwrapped).
fn to_stored(key: &WrappedDataKey) -> StoredKey {
    StoredKey {
        key_id: key.key_id.clone(),
        purpose: key.purpose.clone(),
        tenant: key.tenant.clone(),
        kek_id: key.kek_id.clone(),
        wrapped: key.wrapped.clone(),
        created_unix: key.created_unix,
    }
}

fn to_wrapped(key: StoredKey) -> WrappedDataKey {
    WrappedDataKey {
        key_id: key.key_id,
        purpose: key.purpose,
        tenant: key.tenant,
        kek_id: key.kek_id,
        wrapped: key.wrapped,
        created_unix: key.created_unix,
    }
}

fn database_path(data_dir: &Path) -> PathBuf {
    data_dir.join(DATABASE_FILE)
}

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Opens the store and unwraps its keys; with `create`, makes any key that is missing.
pub async fn open_secure_store(
    data_dir: &Path,
    keyring_path: &Path,
    create: bool,
) -> anyhow::Result<(Arc<SqliteStore>, Envelope)> {
    if !create && !keyring_path.exists() {
        bail!("no keyring at {}", keyring_path.display());
    }
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    let keyring = FileKeyring::open_or_create(keyring_path)?;
    let provider: Arc<dyn KeyProvider> = Arc::new(keyring);
    let store = Arc::new(SqliteStore::open(&database_path(data_dir))?);
    let mut envelope = Envelope::new(provider);
    for key in store.load_keys().await? {
        envelope
            .load(&to_wrapped(key))
            .context("a stored data key does not unwrap with this keyring")?;
    }
    for purpose in PURPOSES {
        if envelope.has_key(purpose, DEFAULT_TENANT) {
            continue;
        }
        if !create {
            bail!("the store has no {purpose} key");
        }
        let key = envelope.create_key(purpose, DEFAULT_TENANT, now_unix())?;
        store.save_key(to_stored(&key)).await?;
    }
    Ok((store, envelope))
}

fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("FHIRWALL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// `fhirwall serve`.
pub async fn serve(settings: Settings) -> anyhow::Result<()> {
    init_logging(settings.log_json);
    create_private_dir(&settings.data_dir)?;
    let lock = lock_data_dir(&settings.data_dir)?;

    let (store, mut envelope) =
        open_secure_store(&settings.data_dir, &settings.keyring, true).await?;
    // Each start seals under a fresh data key, so this process's count of encryptions under
    // its key is the whole count; the server replaces it again after `data_key_rotate_after`.
    envelope.set_rotate_after(settings.data_key_rotate_after);
    let fresh = envelope.new_data_key(DEFAULT_TENANT, now_unix())?;
    store.save_key(to_stored(&fresh)).await?;
    envelope.activate_data_key(DEFAULT_TENANT, &fresh.key_id)?;
    let chain_key = envelope
        .audit_chain_key(DEFAULT_TENANT)
        .context("the audit chain key is missing")?;
    store.start_writer(Box::new(move |previous, seq, record_id, sealed| {
        fhirwall_audit::chain_link(&chain_key, previous, seq, record_id, sealed)
    }))?;

    let tls_files = match (&settings.tls_cert, &settings.tls_key) {
        (Some(cert), Some(key)) => fhirwall_http::tls::TlsFiles {
            cert_chain: cert.clone(),
            private_key: key.clone(),
            dev_ca: None,
        },
        _ => fhirwall_http::tls::ensure_dev_certificate(&settings.data_dir)?,
    };
    let tls = fhirwall_http::tls::server_config(&tls_files)?;
    let server = fhirwall_http::bind(settings.listen, tls)
        .await
        .with_context(|| format!("listening on {}", settings.listen))?;
    let addr = server.local_addr();
    let base_url = settings.public_url.clone().unwrap_or_else(|| {
        if addr.ip().is_unspecified() {
            format!("https://localhost:{}", addr.port())
        } else if addr.is_ipv6() {
            format!("https://[{}]:{}", addr.ip(), addr.port())
        } else {
            format!("https://{}:{}", addr.ip(), addr.port())
        }
    });
    let signing_key = envelope
        .token_signing_key(DEFAULT_TENANT)
        .context("the token signing key is missing")?;
    let tokens = fhirwall_auth::TokenIssuer::from_pkcs8_der(
        signing_key.expose(),
        "fhirwall-token-1".to_string(),
        base_url.clone(),
    )?;
    let extra_ca = match &settings.jwks_ca {
        Some(path) => {
            Some(std::fs::read(path).with_context(|| format!("reading {}", path.display()))?)
        }
        None => None,
    };
    let fetcher = fhirwall_auth::JwksFetcher::new(extra_ca.as_deref())?;
    let state = fhirwall_http::AppState::new(
        store.clone(),
        Arc::new(envelope),
        tokens,
        fetcher,
        base_url.clone(),
        DEFAULT_TENANT.to_string(),
        fhirwall_http::Limits {
            max_body_bytes: settings.max_body_bytes,
            max_json_depth: settings.max_json_depth,
            body_read_timeout: Duration::from_secs(settings.body_read_timeout_secs),
        },
        fhirwall_http::Clock,
    )
    .context("the blind-index key is missing")?;
    let mut package_profiles = Vec::new();
    for package in &settings.profile_packages {
        package_profiles.extend(packages::structure_definitions(package)?);
    }
    let profiles = state
        .load_profiles(package_profiles)
        .await
        .map_err(|e| anyhow::anyhow!("loading profiles: {e}"))?;
    tracing::info!(profiles, "profiles loaded");

    println!("fhirwall listening on {base_url}/fhir");
    if let Some(ca) = &tls_files.dev_ca {
        println!("development CA certificate: {}", ca.display());
    }
    println!("keyring: {}", settings.keyring.display());
    tracing::info!(address = %addr, "serving");
    server
        .run(
            state,
            shutdown_signal(),
            Duration::from_secs(settings.shutdown_grace_secs),
        )
        .await;
    tracing::info!("stopping: committing what the writer holds");
    store.shutdown();
    drop(lock);
    Ok(())
}

/// Creates the data directory readable by its owner only. The files in it are ciphertext, but
/// their sizes and times are metadata too. An existing directory that others can read is
/// reported, not changed: the operator chose it.
fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("creating {}", dir.display()))?;
    }
    let mode = std::fs::metadata(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        tracing::warn!(
            dir = %dir.display(),
            "the data directory is accessible to group or others; chmod 700 it"
        );
    }
    Ok(())
}

/// Holds the data directory for one process that writes it (a server or a key rotation).
fn lock_data_dir(data_dir: &Path) -> anyhow::Result<std::fs::File> {
    let lock_path = data_dir.join("fhirwall.lock");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .with_context(|| format!("opening {}", lock_path.display()))?;
    if lock.try_lock().is_err() {
        bail!(
            "a fhirwall server is using {}; stop it first",
            data_dir.display()
        );
    }
    Ok(lock)
}

/// What `keys rotate` did.
#[derive(Debug)]
pub struct Rotation {
    pub new_kek: String,
    pub rewrapped: usize,
    pub new_data_key: String,
}

/// `fhirwall keys rotate`: a new KEK becomes active and every stored key is re-wrapped under
/// it; a new data key becomes the tenant's active one for new writes. Old data keys stay, so
/// everything written before still decrypts (each ciphertext names its key). Runs with the
/// server stopped; the new data key is used from the next start.
pub async fn rotate_keys(data_dir: &Path, keyring: &Path) -> anyhow::Result<Rotation> {
    if !keyring.exists() {
        bail!("no keyring at {}", keyring.display());
    }
    let lock = lock_data_dir(data_dir)?;
    let new_kek = FileKeyring::add_active_kek(keyring)?;
    let (store, mut envelope) = open_secure_store(data_dir, keyring, false).await?;
    let mut rewrapped = 0;
    for key in store.load_keys().await? {
        if key.kek_id == new_kek {
            continue;
        }
        let wrapped = envelope.rewrap(&to_wrapped(key))?;
        if store.rewrap_key(to_stored(&wrapped)).await? {
            rewrapped += 1;
        }
    }
    let data_key = envelope.create_key("data", DEFAULT_TENANT, now_unix())?;
    let new_data_key = data_key.key_id.clone();
    store.save_key(to_stored(&data_key)).await?;
    drop(lock);
    Ok(Rotation {
        new_kek,
        rewrapped,
        new_data_key,
    })
}

fn open_admin_store(data_dir: &Path) -> anyhow::Result<SqliteStore> {
    if !data_dir.exists() {
        bail!("no data directory at {}", data_dir.display());
    }
    Ok(SqliteStore::open(&database_path(data_dir))?)
}

/// `fhirwall client add`: registers a backend-services client; returns its id.
pub async fn client_add(
    data_dir: &Path,
    name: &str,
    jwks_file: Option<&Path>,
    jwks_uri: Option<&str>,
    scope: &str,
) -> anyhow::Result<String> {
    let scopes =
        fhirwall_auth::ScopeSet::parse(scope).map_err(|e| anyhow::anyhow!("invalid scope: {e}"))?;
    if scopes.resource_scopes().next().is_none() {
        bail!("the scope grants no resource access; give scopes such as system/*.rs");
    }
    if let Some(bad) = scopes
        .resource_scopes()
        .find(|s| s.context() != fhirwall_auth::ScopeContext::System)
    {
        bail!(
            "backend-services clients take system/ scopes only, not {}",
            bad.as_str()
        );
    }
    let jwks = match (jwks_file, jwks_uri) {
        (Some(path), None) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            fhirwall_auth::validate_jwks(&text)
                .map_err(|e| anyhow::anyhow!("invalid JWKS: {e}"))?;
            Some(text)
        }
        (None, Some(uri)) => {
            if !uri.starts_with("https://") {
                bail!("jwks_uri must be an https:// URL");
            }
            None
        }
        _ => bail!("give exactly one of --jwks FILE or --jwks-uri URL"),
    };
    if name.trim().is_empty() || name.len() > 200 {
        bail!("the client name must be 1 to 200 characters");
    }
    let store = open_admin_store(data_dir)?;
    let client_id = uuid::Uuid::new_v4().to_string();
    store
        .add_client(ClientRecord {
            client_id: client_id.clone(),
            name: name.to_string(),
            jwks,
            jwks_uri: jwks_uri.map(str::to_string),
            scope: scopes.to_string(),
            created_unix: now_unix(),
        })
        .await?;
    Ok(client_id)
}

pub async fn client_list(data_dir: &Path) -> anyhow::Result<Vec<ClientRecord>> {
    Ok(open_admin_store(data_dir)?.list_clients().await?)
}

pub async fn client_remove(data_dir: &Path, client_id: &str) -> anyhow::Result<bool> {
    Ok(open_admin_store(data_dir)?.remove_client(client_id).await?)
}

/// The result of `audit verify`.
#[derive(Debug)]
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
}

/// Walks the whole audit trail: every record in sequence, its keyed chain link, and that it
/// decrypts under its own context into a well-formed record. Then checks that every stored
/// resource version has its write's record in the trail, which also catches records cut from
/// the end of the trail, where the chain alone cannot tell.
pub async fn audit_verify(data_dir: &Path, keyring: &Path) -> anyhow::Result<Verification> {
    let (store, envelope) = open_secure_store(data_dir, keyring, false).await?;
    let key = envelope
        .audit_chain_key(DEFAULT_TENANT)
        .context("the audit chain key is missing")?;
    let mut verifier = fhirwall_audit::ChainVerifier::new(key);
    let mut audited_writes = std::collections::HashSet::new();
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
            let plain = envelope.open(
                &fhirwall_crypto::AadContext::Audit {
                    tenant: &record.tenant,
                    record_id: &record.record_id,
                },
                &record.sealed,
            );
            let opened = plain
                .ok()
                .and_then(|p| serde_json::from_slice::<fhirwall_audit::AuditRecord>(&p).ok())
                .filter(|r| r.record_id == record.record_id);
            if let Some(opened) = &opened
                && opened.kind == fhirwall_audit::EventKind::Rest
                && opened.outcome == fhirwall_audit::Outcome::Success
                && matches!(opened.action.as_str(), "C" | "U" | "D")
            {
                audited_writes.extend(opened.entities.iter().cloned());
            }
            if opened.is_none() {
                return Ok(Verification::Broken {
                    seq: record.seq,
                    reason: format!(
                        "record {}: it does not decrypt into a well-formed audit record",
                        record.seq
                    ),
                });
            }
            after = record.seq;
        }
    }
    let mut before = None;
    loop {
        let versions = store
            .history(fhirwall_store::HistoryQuery {
                tenant: DEFAULT_TENANT.to_string(),
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
            let reference = format!(
                "{}/{}/_history/{}",
                version.resource_type, version.id, version.version
            );
            if !audited_writes.contains(&reference) {
                return Ok(Verification::Unaudited { reference });
            }
        }
    }
    Ok(Verification::Intact {
        records: verifier.records_checked(),
    })
}
