//! Configuration: defaults, then an optional TOML file, then `FHIRWALL_*` environment variables,
//! then flags. Unknown TOML keys and unknown `FHIRWALL_*` variables stop start-up by name.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::Deserialize;

/// The `serve` flags; each can also come from the environment (clap reads `FHIRWALL_*`).
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// A TOML configuration file.
    #[arg(long, env = "FHIRWALL_CONFIG")]
    pub config: Option<PathBuf>,
    /// Where data, the development TLS files and (by default) the keyring live.
    #[arg(long, env = "FHIRWALL_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// The address to listen on (port 0 picks a free port).
    #[arg(long, env = "FHIRWALL_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// The public origin clients use, e.g. https://fhir.example.org (default: from --listen).
    #[arg(long, env = "FHIRWALL_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// PEM certificate chain; with --tls-key replaces the development certificate.
    #[arg(long, env = "FHIRWALL_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of the certificate.
    #[arg(long, env = "FHIRWALL_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// The keyring file of key-encryption keys (default: <data-dir>/keyring.json). Keep it on
    /// another volume than the data in production.
    #[arg(long, env = "FHIRWALL_KEYRING")]
    pub keyring: Option<PathBuf>,
    /// Largest request body accepted, in bytes.
    #[arg(long, env = "FHIRWALL_MAX_BODY_BYTES")]
    pub max_body_bytes: Option<usize>,
    /// Deepest JSON nesting accepted (at most 120).
    #[arg(long, env = "FHIRWALL_MAX_JSON_DEPTH")]
    pub max_json_depth: Option<usize>,
    /// Largest request head accepted, in bytes: the request line and headers (HTTP/1.1) or
    /// the header list (HTTP/2); past it, 431 on either.
    #[arg(long, env = "FHIRWALL_MAX_HEADER_BYTES")]
    pub max_header_bytes: Option<usize>,
    /// Failed authentications per source address and minute that are each audited; past it
    /// they get 429 and one summary record per minute.
    #[arg(long, env = "FHIRWALL_AUTH_FAILURES_PER_MINUTE")]
    pub auth_failures_per_minute: Option<u32>,
    /// Free disk space the data directory keeps in reserve, in bytes: below it writes are
    /// refused (507) and failed authentications are only summarised.
    #[arg(long, env = "FHIRWALL_MIN_FREE_DISK_BYTES")]
    pub min_free_disk_bytes: Option<u64>,
    /// The largest page a search answers (default 1000; `_count` above it is lowered).
    #[arg(long, env = "FHIRWALL_SEARCH_MAX_COUNT")]
    pub search_max_count: Option<usize>,
    /// The most resources `_include` and `_revinclude` add to one search page (default 1000).
    #[arg(long, env = "FHIRWALL_SEARCH_MAX_INCLUDES")]
    pub search_max_includes: Option<usize>,
    /// Whether writes that refer to a resource of this server that does not exist are
    /// refused with 422 (default true).
    #[arg(long, env = "FHIRWALL_REFERENTIAL_INTEGRITY")]
    pub referential_integrity: Option<bool>,
    /// The storage backend: `sqlite` (the embedded default, in the data directory).
    #[arg(long, env = "FHIRWALL_DATABASE")]
    pub database: Option<String>,
    /// `text` or `json` log lines on standard error.
    #[arg(long, env = "FHIRWALL_LOG_FORMAT")]
    pub log_format: Option<String>,
    /// An extra CA certificate (PEM) trusted when fetching clients' jwks_uri.
    #[arg(long, env = "FHIRWALL_JWKS_CA")]
    pub jwks_ca: Option<PathBuf>,
    /// Seconds in-flight requests get to finish on shutdown.
    #[arg(long, env = "FHIRWALL_SHUTDOWN_GRACE_SECS")]
    pub shutdown_grace_secs: Option<u64>,
    /// Seconds a request body may take to arrive (slower clients get 408).
    #[arg(long, env = "FHIRWALL_BODY_READ_TIMEOUT_SECS")]
    pub body_read_timeout_secs: Option<u64>,
    /// Encryptions after which a data key is replaced (default 2^30, well below AES-GCM's
    /// 2^32 limit for random nonces).
    #[arg(long, env = "FHIRWALL_DATA_KEY_ROTATE_AFTER")]
    pub data_key_rotate_after: Option<u64>,
    /// Profiles to hold from start-up: a FHIR package (.tgz), or a JSON file with a
    /// StructureDefinition, a Bundle or an array of them. Repeatable; comma-separated in the
    /// environment.
    #[arg(
        long = "profile-package",
        env = "FHIRWALL_PROFILE_PACKAGES",
        value_delimiter = ','
    )]
    pub profile_packages: Vec<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    data_dir: Option<PathBuf>,
    listen: Option<SocketAddr>,
    public_url: Option<String>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    keyring: Option<PathBuf>,
    max_body_bytes: Option<usize>,
    max_json_depth: Option<usize>,
    max_header_bytes: Option<usize>,
    auth_failures_per_minute: Option<u32>,
    min_free_disk_bytes: Option<u64>,
    search_max_count: Option<usize>,
    search_max_includes: Option<usize>,
    referential_integrity: Option<bool>,
    database: Option<String>,
    log_format: Option<String>,
    jwks_ca: Option<PathBuf>,
    shutdown_grace_secs: Option<u64>,
    data_key_rotate_after: Option<u64>,
    body_read_timeout_secs: Option<u64>,
    profile_packages: Option<Vec<PathBuf>>,
}

/// Which storage backend serves: a second one is one more variant and one match arm in
/// `open_backend`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// The embedded SQLite store in the data directory.
    Sqlite,
}

/// The settled configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub public_url: Option<String>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub keyring: PathBuf,
    pub max_body_bytes: usize,
    pub max_json_depth: usize,
    pub max_header_bytes: usize,
    pub auth_failures_per_minute: u32,
    pub min_free_disk_bytes: u64,
    pub search_max_count: usize,
    pub search_max_includes: usize,
    pub referential_integrity: bool,
    pub backend: Backend,
    pub log_json: bool,
    pub jwks_ca: Option<PathBuf>,
    pub shutdown_grace_secs: u64,
    pub data_key_rotate_after: u64,
    pub body_read_timeout_secs: u64,
    pub profile_packages: Vec<PathBuf>,
}

const KNOWN_ENV: &[&str] = &[
    "FHIRWALL_CONFIG",
    "FHIRWALL_DATA_DIR",
    "FHIRWALL_LISTEN",
    "FHIRWALL_PUBLIC_URL",
    "FHIRWALL_TLS_CERT",
    "FHIRWALL_TLS_KEY",
    "FHIRWALL_KEYRING",
    "FHIRWALL_MAX_BODY_BYTES",
    "FHIRWALL_MAX_JSON_DEPTH",
    "FHIRWALL_MAX_HEADER_BYTES",
    "FHIRWALL_AUTH_FAILURES_PER_MINUTE",
    "FHIRWALL_DATABASE",
    "FHIRWALL_MIN_FREE_DISK_BYTES",
    "FHIRWALL_LOG_FORMAT",
    "FHIRWALL_JWKS_CA",
    "FHIRWALL_SHUTDOWN_GRACE_SECS",
    "FHIRWALL_DATA_KEY_ROTATE_AFTER",
    "FHIRWALL_BODY_READ_TIMEOUT_SECS",
    "FHIRWALL_PROFILE_PACKAGES",
    "FHIRWALL_LOG",
];

/// Refuses `FHIRWALL_*` variables this version does not know: a typo must not silently fall
/// back to a default.
pub fn check_environment() -> anyhow::Result<()> {
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if name.starts_with("FHIRWALL_") && !KNOWN_ENV.contains(&name.as_ref()) {
            bail!(
                "unknown environment variable {name}; known ones are {}",
                KNOWN_ENV.join(", ")
            );
        }
    }
    Ok(())
}

fn read_file_config(path: &Path) -> anyhow::Result<FileConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading configuration file {}", path.display()))?;
    toml::from_str(&text)
        .map_err(|e| anyhow::anyhow!("configuration file {}: {}", path.display(), e.message()))
}

impl Settings {
    pub fn resolve(args: ServeArgs) -> anyhow::Result<Self> {
        check_environment()?;
        let file = match &args.config {
            Some(path) => read_file_config(path)?,
            None => FileConfig::default(),
        };
        let data_dir = args
            .data_dir
            .or(file.data_dir)
            .unwrap_or_else(|| PathBuf::from("./fhirwall-data"));
        let listen = args
            .listen
            .or(file.listen)
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8443)));
        let keyring = args
            .keyring
            .or(file.keyring)
            .unwrap_or_else(|| data_dir.join("keyring.json"));
        let max_json_depth = args.max_json_depth.or(file.max_json_depth).unwrap_or(64);
        if max_json_depth == 0 || max_json_depth > 120 {
            bail!("max_json_depth must be between 1 and 120");
        }
        let max_body_bytes = args
            .max_body_bytes
            .or(file.max_body_bytes)
            .unwrap_or(16 * 1024 * 1024);
        if max_body_bytes < 1024 {
            bail!("max_body_bytes must be at least 1024");
        }
        let max_header_bytes = args
            .max_header_bytes
            .or(file.max_header_bytes)
            .unwrap_or(32 * 1024);
        if !(8192..=1024 * 1024).contains(&max_header_bytes) {
            bail!("max_header_bytes must be between 8192 and 1048576");
        }
        let auth_failures_per_minute = args
            .auth_failures_per_minute
            .or(file.auth_failures_per_minute)
            .unwrap_or(60);
        if auth_failures_per_minute == 0 {
            bail!("auth_failures_per_minute must be at least 1");
        }
        let min_free_disk_bytes = args
            .min_free_disk_bytes
            .or(file.min_free_disk_bytes)
            .unwrap_or(256 * 1024 * 1024);
        let search_max_count = args
            .search_max_count
            .or(file.search_max_count)
            .unwrap_or(1_000);
        if !(1..=10_000).contains(&search_max_count) {
            bail!("search_max_count must be between 1 and 10000");
        }
        let search_max_includes = args
            .search_max_includes
            .or(file.search_max_includes)
            .unwrap_or(1_000);
        if search_max_includes > 10_000 {
            bail!("search_max_includes must be at most 10000");
        }
        let referential_integrity = args
            .referential_integrity
            .or(file.referential_integrity)
            .unwrap_or(true);
        let backend = match args.database.or(file.database).as_deref() {
            None | Some("sqlite") => Backend::Sqlite,
            Some(other) => bail!(
                "database must be sqlite (the embedded store), not {}",
                other.chars().take(40).collect::<String>()
            ),
        };
        let log_format = args
            .log_format
            .or(file.log_format)
            .unwrap_or_else(|| "text".into());
        let log_json = match log_format.as_str() {
            "json" => true,
            "text" => false,
            other => bail!("log_format must be text or json, not {other}"),
        };
        let tls_cert = args.tls_cert.or(file.tls_cert);
        let tls_key = args.tls_key.or(file.tls_key);
        if tls_cert.is_some() != tls_key.is_some() {
            bail!("tls_cert and tls_key must be given together");
        }
        let public_url = args.public_url.or(file.public_url);
        if let Some(url) = &public_url
            && (!url.starts_with("https://") || url.ends_with('/'))
        {
            bail!("public_url must be an https:// origin without a trailing slash");
        }
        let data_key_rotate_after = args
            .data_key_rotate_after
            .or(file.data_key_rotate_after)
            .unwrap_or(fhirwall_crypto::DEFAULT_ROTATE_AFTER);
        if data_key_rotate_after == 0
            || data_key_rotate_after > fhirwall_crypto::DEFAULT_ROTATE_AFTER * 2
        {
            bail!("data_key_rotate_after must be between 1 and 2^31");
        }
        let body_read_timeout_secs = args
            .body_read_timeout_secs
            .or(file.body_read_timeout_secs)
            .unwrap_or(60);
        if body_read_timeout_secs == 0 {
            bail!("body_read_timeout_secs must be at least 1");
        }
        Ok(Settings {
            body_read_timeout_secs,
            data_key_rotate_after,
            profile_packages: if args.profile_packages.is_empty() {
                file.profile_packages.unwrap_or_default()
            } else {
                args.profile_packages
            },
            data_dir,
            listen,
            public_url,
            tls_cert,
            tls_key,
            keyring,
            max_body_bytes,
            max_json_depth,
            max_header_bytes,
            auth_failures_per_minute,
            min_free_disk_bytes,
            search_max_count,
            search_max_includes,
            referential_integrity,
            backend,
            log_json,
            jwks_ca: args.jwks_ca.or(file.jwks_ca),
            shutdown_grace_secs: args
                .shutdown_grace_secs
                .or(file.shutdown_grace_secs)
                .unwrap_or(30),
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    #[test]
    fn unknown_toml_key_is_named() {
        let err = toml::from_str::<FileConfig>("listen = \"127.0.0.1:1\"\nlisten_adress = 3\n")
            .unwrap_err();
        assert!(err.message().contains("listen_adress"), "{}", err.message());
    }
}
