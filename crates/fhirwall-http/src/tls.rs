//! TLS for the listener: rustls with the aws-lc-rs provider, TLS 1.2 and 1.3 with AEAD suites
//! only, and a development CA plus localhost certificate made on first start when the operator
//! configured none.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// A TLS setup failure, naming the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("TLS file {path}: {reason}")]
    File { path: String, reason: String },
    #[error("making the development certificate failed: {0}")]
    Generate(String),
    #[error("the TLS configuration was refused: {0}")]
    Config(String),
}

/// Where the certificate and key live.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert_chain: PathBuf,
    pub private_key: PathBuf,
    /// Set when the files are the development CA's: the CA certificate clients should trust.
    pub dev_ca: Option<PathBuf>,
}

fn file_err(path: &Path, reason: impl std::fmt::Display) -> TlsError {
    TlsError::File {
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), TlsError> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(|e| file_err(path, e))?;
    file.write_all(bytes).map_err(|e| file_err(path, e))?;
    file.sync_all().map_err(|e| file_err(path, e))
}

/// Ensures `<data_dir>/tls/` holds a development CA and a server certificate for localhost and
/// 127.0.0.1, creating them on first use. The CA's private key is discarded once it has signed:
/// nothing can issue further certificates under it.
pub fn ensure_dev_certificate(data_dir: &Path) -> Result<TlsFiles, TlsError> {
    let dir = data_dir.join("tls");
    let files = TlsFiles {
        cert_chain: dir.join("server.pem"),
        private_key: dir.join("server.key"),
        dev_ca: Some(dir.join("ca.pem")),
    };
    if files.cert_chain.exists() && files.private_key.exists() {
        return Ok(files);
    }
    std::fs::create_dir_all(&dir).map_err(|e| file_err(&dir, e))?;
    let generate = |e: rcgen::Error| TlsError::Generate(e.to_string());
    let ca_key = rcgen::KeyPair::generate().map_err(generate)?;
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(generate)?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Fhirwall development CA");
    ca_params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let ca_cert = ca_params.self_signed(&ca_key).map_err(generate)?;
    let issuer = rcgen::Issuer::from_params(&ca_params, &ca_key);
    let server_key = rcgen::KeyPair::generate().map_err(generate)?;
    let mut params = rcgen::CertificateParams::new(vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ])
    .map_err(generate)?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "localhost");
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let cert = params.signed_by(&server_key, &issuer).map_err(generate)?;
    let ca_path = dir.join("ca.pem");
    write_file(&ca_path, ca_cert.pem().as_bytes(), 0o644)?;
    write_file(
        &files.private_key,
        server_key.serialize_pem().as_bytes(),
        0o600,
    )?;
    let chain = format!("{}{}", cert.pem(), ca_cert.pem());
    write_file(&files.cert_chain, chain.as_bytes(), 0o644)?;
    Ok(files)
}

/// The rustls server configuration: TLS 1.3 and 1.2 only, the provider's AEAD suites only
/// (rustls implements no CBC or RC4 suites), ALPN for HTTP/2 and HTTP/1.1.
pub fn server_config(files: &TlsFiles) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert_chain)
        .map_err(|e| file_err(&files.cert_chain, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| file_err(&files.cert_chain, e))?;
    if certs.is_empty() {
        return Err(file_err(&files.cert_chain, "holds no certificate"));
    }
    let key = PrivateKeyDer::from_pem_file(&files.private_key)
        .map_err(|e| file_err(&files.private_key, e))?;
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    provider.cipher_suites.retain(|suite| {
        matches!(
            suite.suite(),
            rustls::CipherSuite::TLS13_AES_256_GCM_SHA384
                | rustls::CipherSuite::TLS13_AES_128_GCM_SHA256
                | rustls::CipherSuite::TLS13_CHACHA20_POLY1305_SHA256
                | rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384
                | rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
                | rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
                | rustls::CipherSuite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384
                | rustls::CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
                | rustls::CipherSuite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256
        )
    });
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
