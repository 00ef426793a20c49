//! Starting servers, registering clients, getting tokens: what every test needs.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use fhirwall_auth::testkeys::TestClientKey;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE};
use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_fhirwall");

pub fn fresh_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("fhirwall-it-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The test plays an outside client, with its own clock.
#[allow(clippy::disallowed_methods)]
pub fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// A running server process.
pub struct Server {
    child: Option<Child>,
    pub data_dir: PathBuf,
    pub origin: String,
    pub http: reqwest::Client,
    owns_dir: bool,
}

/// A TLS client configuration trusting only the CA certificates in `ca_pem`.
pub fn client_tls(ca_pem: &[u8]) -> rustls::ClientConfig {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem) {
        roots.add(cert.unwrap()).unwrap();
    }
    rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth()
}

/// A test CA and a certificate for 127.0.0.1 it signed.
pub struct TestPki {
    pub ca_pem: String,
    pub cert: rcgen::Certificate,
    pub key: rcgen::KeyPair,
}

pub fn test_pki() -> TestPki {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Fhirwall test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::from_params(&ca_params, &ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    TestPki {
        ca_pem: ca.pem(),
        cert,
        key,
    }
}

/// Asserts that every id names a readable Patient.
pub async fn assert_patients_readable(c: &Client, ids: &[String]) {
    for id in ids {
        let status = c
            .get(&format!("Patient/{id}"))
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 200, "Patient/{id} is not readable");
    }
}

pub fn http_client(ca_pem: &[u8]) -> reqwest::Client {
    let mut config = client_tls(ca_pem);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    reqwest::Client::builder()
        .tls_backend_preconfigured(config)
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

impl Server {
    pub async fn start() -> Server {
        let dir = fresh_dir();
        let mut server = Server::start_in(&dir, &[]).await;
        server.owns_dir = true;
        server
    }

    /// Starts a server on a fresh data directory, removed when it is dropped, with extra flags.
    pub async fn start_with(extra: &[&str]) -> Server {
        let dir = fresh_dir();
        let mut server = Server::start_in(&dir, extra).await;
        server.owns_dir = true;
        server
    }

    /// Starts a server on an existing data directory (a restart) with extra flags.
    pub async fn start_in(dir: &Path, extra: &[&str]) -> Server {
        Server::start_logging(dir, extra, "warn", None).await
    }

    /// Starts a server whose log lines (at `filter`) go to `log_file` when given.
    pub async fn start_logging(
        dir: &Path,
        extra: &[&str],
        filter: &str,
        log_file: Option<&Path>,
    ) -> Server {
        let stderr = match log_file {
            Some(path) => Stdio::from(std::fs::File::create(path).unwrap()),
            None => Stdio::inherit(),
        };
        let mut child = Command::new(BIN)
            .args(["serve", "--data-dir"])
            .arg(dir)
            .args(["--listen", "127.0.0.1:0"])
            .args(extra)
            .env("FHIRWALL_LOG", filter)
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            while reader.read_line(&mut line).unwrap_or(0) > 0 {
                if let Some(rest) = line.trim().strip_prefix("fhirwall listening on ") {
                    let _ = tx.send(rest.trim_end_matches("/fhir").to_string());
                }
                line.clear();
            }
        });
        let origin = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("the server did not report its address");
        let ca = std::fs::read(dir.join("tls/ca.pem")).unwrap_or_default();
        Server {
            child: Some(child),
            data_dir: dir.to_path_buf(),
            origin,
            http: http_client(&ca),
            owns_dir: false,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.origin)
    }

    pub fn token_url(&self) -> String {
        format!("{}/auth/token", self.origin)
    }

    /// `fhirwall client add`; returns the client id.
    pub fn register(&self, key: &TestClientKey, scope: &str) -> String {
        let jwks = self
            .data_dir
            .join(format!("jwks-{}.json", uuid::Uuid::new_v4().simple()));
        std::fs::write(&jwks, key.jwks_json()).unwrap();
        let out = Command::new(BIN)
            .args(["client", "add", "--data-dir"])
            .arg(&self.data_dir)
            .args(["--name", "test client", "--jwks"])
            .arg(&jwks)
            .args(["--scope", scope])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "client add failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    pub async fn token_response(&self, assertion: &str, scope: Option<&str>) -> reqwest::Response {
        let mut form = vec![
            ("grant_type", "client_credentials".to_string()),
            (
                "client_assertion_type",
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer".to_string(),
            ),
            ("client_assertion", assertion.to_string()),
        ];
        if let Some(scope) = scope {
            form.push(("scope", scope.to_string()));
        }
        let body = form
            .iter()
            .map(|(k, v)| format!("{k}={}", urlencode(v)))
            .collect::<Vec<_>>()
            .join("&");
        self.http
            .post(self.token_url())
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .unwrap()
    }

    /// A client with `scope` and a fresh access token for it.
    pub async fn client(&self, scope: &str) -> Client {
        let key = TestClientKey::generate_es384("k1").unwrap();
        let id = self.register(&key, scope);
        let assertion = key
            .sign_assertion(
                &id,
                &self.token_url(),
                now_unix(),
                &uuid::Uuid::new_v4().to_string(),
            )
            .unwrap();
        let response = self.token_response(&assertion, Some(scope)).await;
        assert_eq!(response.status(), 200, "token request failed");
        let body: Value = response.json().await.unwrap();
        Client {
            http: self.http.clone(),
            origin: self.origin.clone(),
            token: body["access_token"].as_str().unwrap().to_string(),
            client_id: id,
        }
    }

    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// SIGTERM and wait; returns whether the process exited successfully.
    pub fn terminate(&mut self) -> bool {
        let Some(mut child) = self.child.take() else {
            return false;
        };
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        child.wait().unwrap().success()
    }

    pub fn audit_verify(&self) -> (bool, String) {
        let out = Command::new(BIN)
            .args(["audit", "verify", "--data-dir"])
            .arg(&self.data_dir)
            .output()
            .unwrap();
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
        if self.owns_dir {
            let _ = std::fs::remove_dir_all(&self.data_dir);
        }
    }
}

pub fn urlencode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// An authenticated client of a server.
#[derive(Clone)]
pub struct Client {
    pub http: reqwest::Client,
    pub origin: String,
    pub token: String,
    pub client_id: String,
}

impl Client {
    pub fn fhir(&self, path: &str) -> String {
        format!("{}/fhir/{path}", self.origin)
    }

    pub fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.http
            .get(self.fhir(path))
            .header(AUTHORIZATION, format!("Bearer {}", self.token))
    }

    pub fn delete(&self, path: &str) -> reqwest::RequestBuilder {
        self.http
            .delete(self.fhir(path))
            .header(AUTHORIZATION, format!("Bearer {}", self.token))
    }

    pub fn send_json(
        &self,
        method: reqwest::Method,
        path: &str,
        body: &Value,
    ) -> reqwest::RequestBuilder {
        self.http
            .request(method, self.fhir(path))
            .header(AUTHORIZATION, format!("Bearer {}", self.token))
            .header(CONTENT_TYPE, "application/fhir+json")
            .body(serde_json::to_vec(body).unwrap())
    }

    pub fn post(&self, path: &str, body: &Value) -> reqwest::RequestBuilder {
        self.send_json(reqwest::Method::POST, path, body)
    }

    pub fn put(&self, path: &str, body: &Value) -> reqwest::RequestBuilder {
        self.send_json(reqwest::Method::PUT, path, body)
    }

    /// Creates a resource and returns its body as stored.
    pub async fn create(&self, body: &Value) -> Value {
        let rtype = body["resourceType"].as_str().unwrap();
        let response = self.post(rtype, body).send().await.unwrap();
        assert_eq!(response.status(), 201);
        response.json().await.unwrap()
    }
}

pub fn patient(family: &str, mrn: &str) -> Value {
    serde_json::json!({
        "resourceType": "Patient",
        "identifier": [{"system": "urn:oid:1.2.36.146.595.217.0.1", "value": mrn}],
        "name": [{"family": family, "given": ["Testa"]}],
        "gender": "female",
        "birthDate": "1974-12-25",
        "telecom": [{"system": "phone", "value": "555-0142"}],
        "address": [{"line": ["1 Example Street"], "city": "Springfield", "postalCode": "90210"}]
    })
}

/// How many resource versions the server holds (system history), to show a refusal stored
/// nothing.
pub async fn stored_versions(c: &Client) -> usize {
    let h = json(c.get("_history?_count=1000").send().await.unwrap()).await;
    h["entry"].as_array().map_or(0, Vec::len)
}

pub async fn json(response: reqwest::Response) -> Value {
    response.json().await.unwrap()
}
