//! The `fhirwall` program: wires configuration, keys, the chosen storage backend, the
//! application and the HTTPS edge together, and runs the operator commands by handing them to
//! the application. No domain logic lives here: policies (which scopes a client may hold, what
//! `audit verify` checks) are the application's (`fhirwall-service`).

pub mod config;
mod packages;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use fhirwall_crypto::{Envelope, FileKeyring, KeyProvider};
use fhirwall_service::{Clock, Service, ServiceConfig, ServiceParts, SystemClock};
use fhirwall_store::{ClientRecord, Store, TenantId};
use fhirwall_store_sqlite::SqliteStore;

pub use config::{Backend, ServeArgs, Settings};
pub use fhirwall_service::{ClientRegistration, Rotation as KeyRotation, Verification};

const DATABASE_FILE: &str = "fhirwall.db";

fn database_path(data_dir: &Path) -> PathBuf {
    data_dir.join(DATABASE_FILE)
}

/// Opens the configured backend: the one place that names a backend crate.
fn open_backend(backend: Backend, data_dir: &Path) -> anyhow::Result<Arc<dyn Store>> {
    match backend {
        Backend::Sqlite => Ok(Arc::new(SqliteStore::open(&database_path(data_dir))?)),
    }
}

/// Opens the store and unwraps its keys; with `create`, makes any key that is missing.
pub async fn open_secure_store(
    backend: Backend,
    data_dir: &Path,
    keyring_path: &Path,
    create: bool,
) -> anyhow::Result<(Arc<dyn Store>, Envelope)> {
    if !create && !keyring_path.exists() {
        bail!("no keyring at {}", keyring_path.display());
    }
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    let keyring = FileKeyring::open_or_create(keyring_path)?;
    let provider: Arc<dyn KeyProvider> = Arc::new(keyring);
    let store = open_backend(backend, data_dir)?;
    let mut envelope = Envelope::new(provider);
    fhirwall_service::bootstrap_keys(store.as_ref(), &mut envelope, create, SystemClock.now())
        .await
        .context("preparing the keys")?;
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
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);

    let (store, mut envelope) = open_secure_store(
        settings.backend,
        &settings.data_dir,
        &settings.keyring,
        true,
    )
    .await?;
    // Each start seals under a fresh data key, so this process's count of encryptions under
    // its key is the whole count; the server replaces it again after `data_key_rotate_after`.
    envelope.set_rotate_after(settings.data_key_rotate_after);
    fhirwall_service::start_new_data_key(store.as_ref(), &envelope, clock.now()).await?;
    let chain = fhirwall_service::audit_chain(&envelope, &TenantId::default_tenant())
        .context("the audit chain key is missing")?;
    store.start(chain)?;

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
        .token_signing_key(TenantId::DEFAULT)
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
    let mut config = ServiceConfig::new(base_url.clone());
    config.auth_failures_per_minute = settings.auth_failures_per_minute;
    config.search_max_count = settings.search_max_count;
    config.search_max_includes = settings.search_max_includes;
    config.referential_integrity = settings.referential_integrity;
    let service = Service::new(
        ServiceParts {
            store: store.clone(),
            envelope: Arc::new(envelope),
            tokens,
            fetcher,
            clock,
        },
        config,
    )
    .map_err(|e| anyhow::anyhow!("starting the application: {e}"))?;
    let mut package_profiles = Vec::new();
    for package in &settings.profile_packages {
        package_profiles.extend(packages::structure_definitions(package)?);
    }
    let profiles = service
        .load_profiles(package_profiles)
        .await
        .map_err(|e| anyhow::anyhow!("loading profiles: {e}"))?;
    tracing::info!(profiles, "profiles loaded");
    if service
        .load_search_parameters()
        .await
        .map_err(|e| anyhow::anyhow!("loading search parameters: {e}"))?
    {
        service.start_reindex();
    }
    let maintenance = {
        let service = service.clone();
        tokio::spawn(async move {
            let mut every_minute = tokio::time::interval(Duration::from_secs(60));
            loop {
                every_minute.tick().await;
                service.flush_failure_summaries();
            }
        })
    };
    let disk_watch = {
        let service = service.clone();
        let data_dir = settings.data_dir.clone();
        let reserve = settings.min_free_disk_bytes;
        service.set_storage_low(free_disk_bytes(&data_dir).is_some_and(|free| free < reserve));
        tokio::spawn(async move {
            let mut every_few_seconds = tokio::time::interval(Duration::from_secs(2));
            loop {
                every_few_seconds.tick().await;
                let free = free_disk_bytes(&data_dir);
                service.set_storage_low(free.is_some_and(|free| free < reserve));
            }
        })
    };

    println!("fhirwall listening on {base_url}/fhir");
    if let Some(ca) = &tls_files.dev_ca {
        println!("development CA certificate: {}", ca.display());
    }
    println!("keyring: {}", settings.keyring.display());
    tracing::info!(address = %addr, "serving");
    let edge = fhirwall_http::Edge::new(
        service.clone(),
        fhirwall_http::Limits {
            max_body_bytes: settings.max_body_bytes,
            max_json_depth: settings.max_json_depth,
            body_read_timeout: Duration::from_secs(settings.body_read_timeout_secs),
            max_header_bytes: settings.max_header_bytes,
        },
    );
    server
        .run(
            edge,
            shutdown_signal(),
            Duration::from_secs(settings.shutdown_grace_secs),
        )
        .await;
    maintenance.abort();
    disk_watch.abort();
    service.flush_failure_summaries();
    tracing::info!("stopping: committing what the writer holds");
    // Let the last summary records reach the writer before it stops.
    tokio::time::sleep(Duration::from_millis(50)).await;
    store.shutdown();
    drop(lock);
    Ok(())
}

/// The bytes an unprivileged writer can still use on the data directory's file system; None
/// when the system cannot say (then nothing is refused on its account).
fn free_disk_bytes(dir: &Path) -> Option<u64> {
    match rustix::fs::statvfs(dir) {
        Ok(stats) => Some(stats.f_bavail.saturating_mul(stats.f_frsize)),
        Err(error) => {
            tracing::warn!(error = %error, "cannot read the data directory's free space");
            None
        }
    }
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
    let (store, mut envelope) =
        open_secure_store(Backend::Sqlite, data_dir, keyring, false).await?;
    let rotation =
        fhirwall_service::rewrap_all(store.as_ref(), &mut envelope, &new_kek, SystemClock.now())
            .await?;
    drop(lock);
    Ok(Rotation {
        new_kek,
        rewrapped: rotation.rewrapped,
        new_data_key: rotation.new_data_key,
    })
}

fn open_admin_store(data_dir: &Path) -> anyhow::Result<Arc<dyn Store>> {
    if !data_dir.exists() {
        bail!("no data directory at {}", data_dir.display());
    }
    open_backend(Backend::Sqlite, data_dir)
}

/// `fhirwall client add`: registers a backend-services client; returns its id. It needs the
/// keyring: the record is tagged so that an edit outside the server is refused.
pub async fn client_add(
    data_dir: &Path,
    keyring: &Path,
    registration: ClientRegistration,
) -> anyhow::Result<String> {
    if !data_dir.exists() {
        bail!("no data directory at {}", data_dir.display());
    }
    let (store, envelope) = open_secure_store(Backend::Sqlite, data_dir, keyring, false).await?;
    Ok(
        fhirwall_service::client_add(store.as_ref(), &envelope, SystemClock.now(), registration)
            .await?,
    )
}

/// Reads a JWKS file for `client add`.
pub fn read_jwks_file(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

pub async fn client_list(data_dir: &Path) -> anyhow::Result<Vec<ClientRecord>> {
    Ok(open_admin_store(data_dir)?
        .list_clients(&TenantId::default_tenant())
        .await?)
}

pub async fn client_remove(data_dir: &Path, client_id: &str) -> anyhow::Result<bool> {
    Ok(open_admin_store(data_dir)?
        .remove_client(&TenantId::default_tenant(), client_id)
        .await?)
}

/// `fhirwall audit verify`: see [`fhirwall_service::audit_verify`].
pub async fn audit_verify(data_dir: &Path, keyring: &Path) -> anyhow::Result<Verification> {
    let (store, envelope) = open_secure_store(Backend::Sqlite, data_dir, keyring, false).await?;
    Ok(fhirwall_service::audit_verify(store.as_ref(), &envelope).await?)
}
