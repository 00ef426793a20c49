//! The load generator's HTTPS client: one TCP + TLS + HTTP/1.1 keep-alive connection per
//! [`Conn`], driven by hyper's low-level connection API so that each load task owns exactly one
//! connection (no pool, no hidden extra connections, no HTTP/2).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HOST};
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls::RootCertStore;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls_pki_types::pem::PemObject;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// `application/fhir+json`.
pub fn fhir_json() -> HeaderValue {
    HeaderValue::from_static("application/fhir+json")
}

/// Where to connect and whom to trust.
pub struct Target {
    addr: SocketAddr,
    server_name: ServerName<'static>,
    authority: HeaderValue,
    connector: TlsConnector,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target").field("addr", &self.addr).finish()
    }
}

/// A rustls client configuration on the aws-lc-rs provider trusting only `roots`, speaking
/// HTTP/1.1 only.
fn client_config(roots: Vec<CertificateDer<'static>>) -> Result<rustls::ClientConfig> {
    let mut store = RootCertStore::empty();
    for root in roots {
        store.add(root).context("adding a trusted certificate")?;
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_root_certificates(store)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Reads every certificate of a PEM file.
pub fn read_pem_certs(path: &std::path::Path) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .with_context(|| format!("reading {}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing {}", path.display()))?;
    if certs.is_empty() {
        bail!("{} holds no certificate", path.display());
    }
    Ok(certs)
}

impl Target {
    /// A target at `addr`, whose certificate must name the address's IP and chain to `roots`.
    pub fn new(addr: SocketAddr, roots: Vec<CertificateDer<'static>>) -> Result<Self> {
        let authority = HeaderValue::from_str(&addr.to_string())?;
        Ok(Target {
            addr,
            server_name: ServerName::IpAddress(addr.ip().into()),
            authority,
            connector: TlsConnector::from(Arc::new(client_config(roots)?)),
        })
    }

    /// A target from a base URL such as `https://127.0.0.1:8443/fhir`.
    pub fn from_url(base_url: &str, roots: Vec<CertificateDer<'static>>) -> Result<Self> {
        let rest = base_url
            .strip_prefix("https://")
            .ok_or_else(|| anyhow!("not an https URL: {base_url}"))?;
        let authority = rest.split('/').next().unwrap_or(rest);
        let addr: SocketAddr = authority
            .parse()
            .with_context(|| format!("the URL {base_url} does not name an IP address and port"))?;
        Self::new(addr, roots)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Opens one keep-alive connection (TCP_NODELAY, TLS handshake, HTTP/1.1).
    pub async fn connect(&self) -> Result<Conn> {
        let tcp = tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(self.addr))
            .await
            .context("TCP connect timed out")?
            .with_context(|| format!("connecting to {}", self.addr))?;
        tcp.set_nodelay(true)?;
        let tls = tokio::time::timeout(
            Duration::from_secs(10),
            self.connector.connect(self.server_name.clone(), tcp),
        )
        .await
        .context("TLS handshake timed out")?
        .context("TLS handshake")?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .context("HTTP/1.1 handshake")?;
        tokio::spawn(async move {
            // The connection ends when its sender is dropped or the peer closes: nothing to do.
            let _ = connection.await;
        });
        Ok(Conn {
            sender,
            authority: self.authority.clone(),
        })
    }
}

/// A complete response.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    /// The body's first bytes as text, for error messages.
    pub fn body_snippet(&self, max: usize) -> String {
        let text = String::from_utf8_lossy(&self.body);
        let mut snippet: String = text.chars().take(max).collect();
        if text.chars().count() > max {
            snippet.push('…');
        }
        snippet
    }
}

/// One open HTTP/1.1 connection.
pub struct Conn {
    sender: SendRequest<Full<Bytes>>,
    authority: HeaderValue,
}

impl Conn {
    /// Sends a request and reads the whole response body.
    pub async fn send(&mut self, mut request: Request<Full<Bytes>>) -> Result<Reply> {
        request.headers_mut().insert(HOST, self.authority.clone());
        self.sender.ready().await.context("connection not ready")?;
        let response = self
            .sender
            .send_request(request)
            .await
            .context("sending the request")?;
        let (parts, body) = response.into_parts();
        let body = body
            .collect()
            .await
            .context("reading the response body")?
            .to_bytes();
        Ok(Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }
}

/// A request for `path` (origin form) with optional bearer token and JSON body.
pub fn request(
    method: Method,
    path: Uri,
    authorization: Option<HeaderValue>,
    content_type: Option<HeaderValue>,
    body: Bytes,
) -> Result<Request<Full<Bytes>>> {
    let mut builder = Request::builder()
        .method(method)
        .uri(path)
        .header(ACCEPT, fhir_json());
    if let Some(value) = authorization {
        builder = builder.header(AUTHORIZATION, value);
    }
    if let Some(value) = content_type {
        builder = builder.header(CONTENT_TYPE, value);
    }
    Ok(builder.body(Full::new(body))?)
}
