//! Fetches and caches a client's JWKS from its `jwks_uri` (HTTPS only, bounded in time and size, validated); it must not follow redirects, use proxies, rely on a process-wide TLS provider, or hold a lock across an await.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::JwkSet;
use reqwest::header::{ACCEPT, CACHE_CONTROL};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use crate::assertion::{AssertionError, validate_jwks};

/// Cache lifetime when the response has no `Cache-Control: max-age`.
pub const DEFAULT_TTL: Duration = Duration::from_secs(300);
/// Upper bound on any cache lifetime, whatever the server says.
pub const MAX_TTL: Duration = Duration::from_secs(24 * 60 * 60);
/// Whole-request timeout (connect, TLS, headers and body).
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest JWKS body accepted.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// A forced refresh within this long of the last fetch reuses that fetch, so
/// assertions with made-up `kid`s cannot turn us into a request amplifier
/// against the client's server.
pub const MIN_REFRESH_INTERVAL: Duration = Duration::from_secs(10);
/// Bound on cached URIs; there is one per registered client.
const MAX_CACHE_ENTRIES: usize = 4096;

/// Why a JWKS could not be fetched. Codes are stable, for audit records.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("invalid jwks_uri: {0}")]
    InvalidUri(&'static str),
    #[error("could not set up the HTTPS client: {0}")]
    Setup(String),
    #[error("JWKS request failed: {0}")]
    Http(#[from] reqwest::Error),
    #[error("JWKS endpoint answered HTTP {0}")]
    Status(u16),
    #[error("JWKS body exceeds {MAX_BODY_BYTES} bytes")]
    TooLarge,
    #[error("JWKS is not UTF-8")]
    NotUtf8,
    #[error(transparent)]
    InvalidJwks(#[from] AssertionError),
}

impl FetchError {
    /// A short snake_case code for audit records.
    pub fn code(&self) -> &'static str {
        match self {
            FetchError::InvalidUri(_) => "jwks_invalid_uri",
            FetchError::Setup(_) => "jwks_client_setup",
            FetchError::Http(e) if e.is_timeout() => "jwks_timeout",
            FetchError::Http(_) => "jwks_http_error",
            FetchError::Status(_) => "jwks_bad_status",
            FetchError::TooLarge => "jwks_too_large",
            FetchError::NotUtf8 | FetchError::InvalidJwks(_) => "jwks_invalid",
        }
    }
}

struct CacheEntry {
    jwks: JwkSet,
    fetched_at: Instant,
    expires_at: Instant,
}

/// Fetches client JWKS documents over HTTPS and caches them per URI.
pub struct JwksFetcher {
    client: reqwest::Client,
    cache: Mutex<HashMap<String, CacheEntry>>,
}

impl fmt::Debug for JwksFetcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwksFetcher").finish_non_exhaustive()
    }
}

impl JwksFetcher {
    /// Builds a fetcher trusting the platform's root CAs plus, if given, the
    /// certificates in `extra_root_ca_pem` (e.g. a private or test CA).
    pub fn new(extra_root_ca_pem: Option<&[u8]>) -> Result<Self, FetchError> {
        let setup = |e: &dyn fmt::Display| FetchError::Setup(e.to_string());
        let extra_roots = match extra_root_ca_pem {
            None => Vec::new(),
            Some(pem) => {
                let certs = CertificateDer::pem_slice_iter(pem)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| setup(&e))?;
                if certs.is_empty() {
                    return Err(FetchError::Setup("no certificate in extra CA PEM".into()));
                }
                certs
            }
        };
        // An explicit provider, so nothing depends on which crypto provider (if
        // any) the process installed as rustls' default.
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let verifier =
            rustls_platform_verifier::Verifier::new_with_extra_roots(extra_roots, provider.clone())
                .map_err(|e| setup(&e))?;
        let mut tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| setup(&e))?
            .dangerous() // only to plug in the platform verifier; verification stays on
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth();
        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .https_only(true)
            .redirect(reqwest::redirect::Policy::none())
            // Deterministic egress: the jwks_uri host is contacted directly.
            .no_proxy()
            .timeout(FETCH_TIMEOUT)
            .connect_timeout(FETCH_TIMEOUT)
            .build()
            .map_err(|e| setup(&e))?;
        Ok(JwksFetcher {
            client,
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// The JWKS at `uri`, from cache while fresh at `now`, else fetched.
    pub async fn get(&self, uri: &str, now: Instant) -> Result<JwkSet, FetchError> {
        if let Some(jwks) = self.cached(uri, |e| e.expires_at > now) {
            return Ok(jwks);
        }
        self.fetch_and_store(uri, now).await
    }

    /// Refetches the JWKS at `uri` (call once when a `kid` is unknown, to pick up
    /// key rotation). A copy fetched less than [`MIN_REFRESH_INTERVAL`] before
    /// `now` is returned instead of fetching again.
    pub async fn refresh(&self, uri: &str, now: Instant) -> Result<JwkSet, FetchError> {
        let recent = |e: &CacheEntry| {
            e.fetched_at
                .checked_add(MIN_REFRESH_INTERVAL)
                .is_some_and(|t| t > now)
        };
        if let Some(jwks) = self.cached(uri, recent) {
            return Ok(jwks);
        }
        self.fetch_and_store(uri, now).await
    }

    /// Drops any cached copy of `uri` (e.g. when a client's registration changes).
    pub fn forget(&self, uri: &str) {
        self.lock().remove(uri);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, CacheEntry>> {
        // A panic while holding the lock cannot leave a half-written entry
        // (inserts are single calls), so the poisoned map is still sound.
        self.cache.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn cached(&self, uri: &str, usable: impl Fn(&CacheEntry) -> bool) -> Option<JwkSet> {
        self.lock()
            .get(uri)
            .filter(|e| usable(e))
            .map(|e| e.jwks.clone())
    }

    async fn fetch_and_store(&self, uri: &str, now: Instant) -> Result<JwkSet, FetchError> {
        let (jwks, ttl) = self.fetch(uri).await?;
        let mut cache = self.lock();
        match ttl.and_then(|ttl| now.checked_add(ttl)) {
            Some(expires_at) => {
                if cache.len() >= MAX_CACHE_ENTRIES && !cache.contains_key(uri) {
                    cache.retain(|_, e| e.expires_at > now);
                    if cache.len() >= MAX_CACHE_ENTRIES {
                        cache.clear();
                    }
                }
                cache.insert(
                    uri.to_owned(),
                    CacheEntry {
                        jwks: jwks.clone(),
                        fetched_at: now,
                        expires_at,
                    },
                );
            }
            // The server asked us not to cache: drop any older copy too.
            None => {
                cache.remove(uri);
            }
        }
        Ok(jwks)
    }

    async fn fetch(&self, uri: &str) -> Result<(JwkSet, Option<Duration>), FetchError> {
        let url = check_uri(uri)?;
        let mut response = self
            .client
            .get(url)
            .header(ACCEPT, "application/jwk-set+json, application/json")
            .send()
            .await?;
        if response.status() != reqwest::StatusCode::OK {
            return Err(FetchError::Status(response.status().as_u16()));
        }
        if response
            .content_length()
            .is_some_and(|len| len > MAX_BODY_BYTES as u64)
        {
            return Err(FetchError::TooLarge);
        }
        let cache_control: Vec<&str> = response
            .headers()
            .get_all(CACHE_CONTROL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        let ttl = cache_lifetime(&cache_control.join(","));
        // Read chunk by chunk so a lying or absent Content-Length cannot make us buffer more.
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await? {
            if body.len() + chunk.len() > MAX_BODY_BYTES {
                return Err(FetchError::TooLarge);
            }
            body.extend_from_slice(&chunk);
        }
        let text = std::str::from_utf8(&body).map_err(|_| FetchError::NotUtf8)?;
        Ok((validate_jwks(text)?, ttl))
    }
}

fn check_uri(uri: &str) -> Result<reqwest::Url, FetchError> {
    let url = reqwest::Url::parse(uri).map_err(|_| FetchError::InvalidUri("not a URL"))?;
    if url.scheme() != "https" {
        return Err(FetchError::InvalidUri("scheme must be https"));
    }
    if url.host().is_none() {
        return Err(FetchError::InvalidUri("missing host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(FetchError::InvalidUri("credentials in URL are not allowed"));
    }
    Ok(url)
}

/// How long a response may be cached, from its (comma-joined) `Cache-Control`
/// value: `None` for `no-store`, `no-cache` or `max-age=0`; `max-age` capped at
/// [`MAX_TTL`]; [`DEFAULT_TTL`] when no `max-age` is given. An unparsable
/// `max-age` means "do not cache", erring towards fresher keys.
pub fn cache_lifetime(cache_control: &str) -> Option<Duration> {
    let mut max_age = None;
    for directive in cache_control.split(',').map(str::trim) {
        let (name, value) = match directive.split_once('=') {
            Some((n, v)) => (n.trim(), Some(v.trim().trim_matches('"'))),
            None => (directive, None),
        };
        if name.eq_ignore_ascii_case("no-store") || name.eq_ignore_ascii_case("no-cache") {
            return None;
        }
        if name.eq_ignore_ascii_case("max-age") {
            let secs = value
                .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                // Digits that overflow u64 are still "very long": cap them below.
                .map(|v| v.parse::<u64>().unwrap_or(u64::MAX))?;
            max_age = Some(secs);
        }
    }
    match max_age {
        None => Some(DEFAULT_TTL),
        Some(0) => None,
        Some(secs) => Some(Duration::from_secs(secs).min(MAX_TTL)),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;
    use crate::testkeys::TestClientKey;

    #[test]
    fn cache_lifetime_rules() {
        let secs = |s: u64| Some(Duration::from_secs(s));
        assert_eq!(cache_lifetime(""), Some(DEFAULT_TTL));
        assert_eq!(cache_lifetime("public"), Some(DEFAULT_TTL));
        assert_eq!(cache_lifetime("max-age=60"), secs(60));
        assert_eq!(cache_lifetime("public, MAX-AGE=120"), secs(120));
        assert_eq!(cache_lifetime("max-age=\"90\""), secs(90));
        assert_eq!(cache_lifetime("max-age=999999999"), Some(MAX_TTL));
        assert_eq!(
            cache_lifetime("max-age=99999999999999999999999"),
            Some(MAX_TTL)
        );
        assert_eq!(cache_lifetime("max-age=0"), None);
        assert_eq!(cache_lifetime("no-store"), None);
        assert_eq!(cache_lifetime("max-age=600, no-cache"), None);
        assert_eq!(cache_lifetime("No-Store, max-age=600"), None);
        assert_eq!(cache_lifetime("max-age=abc"), None);
        assert_eq!(cache_lifetime("max-age=-5"), None);
        assert_eq!(cache_lifetime("max-age"), None);
        assert_eq!(cache_lifetime("s-maxage=10"), Some(DEFAULT_TTL));
    }

    #[test]
    fn uri_checks() {
        assert!(check_uri("https://example.org/jwks").is_ok());
        for bad in [
            "http://example.org/jwks",
            "ftp://example.org/jwks",
            "example.org/jwks",
            "https://user:pw@example.org/jwks",
            "",
        ] {
            assert!(
                matches!(check_uri(bad), Err(FetchError::InvalidUri(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn extra_ca_must_contain_a_certificate() {
        assert!(matches!(
            JwksFetcher::new(Some(b"not a pem")),
            Err(FetchError::Setup(_))
        ));
    }

    /// What the test server answers, and how often it was asked.
    struct Reply {
        status: &'static str,
        headers: String,
        body: String,
    }

    struct TestServer {
        url: String,
        ca_pem: String,
        hits: Arc<AtomicUsize>,
        reply: Arc<Mutex<Reply>>,
    }

    impl TestServer {
        fn set_reply(&self, status: &'static str, headers: &str, body: String) {
            *self.reply.lock().unwrap() = Reply {
                status,
                headers: headers.to_owned(),
                body,
            };
        }

        fn hits(&self) -> usize {
            self.hits.load(Ordering::SeqCst)
        }
    }

    /// A minimal HTTPS/1.1 server on 127.0.0.1 with a certificate from a fresh test CA.
    async fn start_server() -> TestServer {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let leaf_key = KeyPair::generate().unwrap();
        let leaf_params = CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
        let leaf = leaf_params
            .signed_by(&leaf_key, &Issuer::from_params(&ca_params, &ca_key))
            .unwrap();

        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![leaf.der().clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der())),
            )
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let hits = Arc::new(AtomicUsize::new(0));
        let reply = Arc::new(Mutex::new(Reply {
            status: "200 OK",
            headers: String::new(),
            body: String::new(),
        }));
        let (server_hits, server_reply) = (hits.clone(), reply.clone());
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    continue;
                };
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                server_hits.fetch_add(1, Ordering::SeqCst);
                let response = {
                    let r = server_reply.lock().unwrap();
                    format!(
                        "HTTP/1.1 {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n{}\r\n{}",
                        r.status,
                        r.body.len(),
                        r.headers,
                        r.body
                    )
                };
                let _ = tls.write_all(response.as_bytes()).await;
                let _ = tls.shutdown().await;
            }
        });
        TestServer {
            url: format!("https://127.0.0.1:{port}/jwks"),
            ca_pem: ca_cert.pem(),
            hits,
            reply,
        }
    }

    fn jwks_body() -> String {
        TestClientKey::generate_es384("k1").unwrap().jwks_json()
    }

    fn fetcher(server: &TestServer) -> JwksFetcher {
        JwksFetcher::new(Some(server.ca_pem.as_bytes())).unwrap()
    }

    #[tokio::test]
    async fn fetches_and_caches_per_max_age() {
        let server = start_server().await;
        server.set_reply(
            "200 OK",
            "Cache-Control: public, max-age=60\r\n",
            jwks_body(),
        );
        let f = fetcher(&server);
        let t0 = Instant::now();
        let jwks = f.get(&server.url, t0).await.unwrap();
        assert_eq!(jwks.keys[0].common.key_id.as_deref(), Some("k1"));
        f.get(&server.url, t0 + Duration::from_secs(59))
            .await
            .unwrap();
        assert_eq!(server.hits(), 1, "served from cache");
        f.get(&server.url, t0 + Duration::from_secs(61))
            .await
            .unwrap();
        assert_eq!(server.hits(), 2, "refetched after max-age");
    }

    #[tokio::test]
    async fn default_ttl_and_no_store() {
        let server = start_server().await;
        server.set_reply("200 OK", "", jwks_body());
        let f = fetcher(&server);
        let t0 = Instant::now();
        f.get(&server.url, t0).await.unwrap();
        f.get(&server.url, t0 + Duration::from_secs(299))
            .await
            .unwrap();
        assert_eq!(server.hits(), 1);
        f.get(&server.url, t0 + Duration::from_secs(300))
            .await
            .unwrap();
        assert_eq!(server.hits(), 2);

        server.set_reply("200 OK", "Cache-Control: no-store\r\n", jwks_body());
        let t1 = t0 + Duration::from_secs(1000);
        f.get(&server.url, t1).await.unwrap();
        f.get(&server.url, t1).await.unwrap();
        assert_eq!(server.hits(), 4, "no-store is never cached");
    }

    #[tokio::test]
    async fn refresh_refetches_but_not_too_often() {
        let server = start_server().await;
        server.set_reply("200 OK", "Cache-Control: max-age=3600\r\n", jwks_body());
        let f = fetcher(&server);
        let t0 = Instant::now();
        f.get(&server.url, t0).await.unwrap();
        f.refresh(&server.url, t0 + Duration::from_secs(1))
            .await
            .unwrap();
        assert_eq!(server.hits(), 1, "refresh right after a fetch reuses it");
        // The client rotates its key; a later refresh picks it up and updates the cache.
        server.set_reply(
            "200 OK",
            "Cache-Control: max-age=3600\r\n",
            TestClientKey::generate_es384("k2").unwrap().jwks_json(),
        );
        let t1 = t0 + MIN_REFRESH_INTERVAL + Duration::from_secs(1);
        let jwks = f.refresh(&server.url, t1).await.unwrap();
        assert_eq!(jwks.keys[0].common.key_id.as_deref(), Some("k2"));
        let jwks = f.get(&server.url, t1).await.unwrap();
        assert_eq!(jwks.keys[0].common.key_id.as_deref(), Some("k2"));
        assert_eq!(server.hits(), 2);
    }

    #[tokio::test]
    async fn refuses_bad_responses() {
        let server = start_server().await;
        let f = fetcher(&server);
        let now = Instant::now();

        server.set_reply(
            "302 Found",
            "Location: https://127.0.0.1/\r\n",
            String::new(),
        );
        assert!(matches!(
            f.get(&server.url, now).await,
            Err(FetchError::Status(302))
        ));
        server.set_reply("404 Not Found", "", String::new());
        assert!(matches!(
            f.get(&server.url, now).await,
            Err(FetchError::Status(404))
        ));
        server.set_reply("200 OK", "", " ".repeat(MAX_BODY_BYTES + 1));
        assert!(matches!(
            f.get(&server.url, now).await,
            Err(FetchError::TooLarge)
        ));
        let mut jwk = TestClientKey::generate_es384("k").unwrap().public_jwk();
        jwk["d"] = serde_json::json!("AAAA");
        server.set_reply(
            "200 OK",
            "",
            serde_json::json!({ "keys": [jwk] }).to_string(),
        );
        let err = f.get(&server.url, now).await.unwrap_err();
        assert!(matches!(err, FetchError::InvalidJwks(_)));
        assert_eq!(err.code(), "jwks_invalid");
    }

    #[tokio::test]
    async fn untrusted_certificate_is_refused() {
        let server = start_server().await;
        server.set_reply("200 OK", "", jwks_body());
        let other_ca = start_server().await;
        let f = JwksFetcher::new(Some(other_ca.ca_pem.as_bytes())).unwrap();
        let err = f.get(&server.url, Instant::now()).await.unwrap_err();
        assert!(matches!(err, FetchError::Http(_)), "{err:?}");
        assert_eq!(server.hits(), 0);
    }

    #[tokio::test]
    async fn http_uri_is_refused_without_a_request() {
        let server = start_server().await;
        let f = fetcher(&server);
        assert!(matches!(
            f.get("http://127.0.0.1:1/jwks", Instant::now()).await,
            Err(FetchError::InvalidUri(_))
        ));
    }
}
