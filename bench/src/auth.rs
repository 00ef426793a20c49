//! SMART backend-services authorization for the load: an ES384 client key, signed client
//! assertions, the token request, and a background task that renews the access token every
//! four minutes (tokens live 300 s) so that runs of any length keep working.

use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use fhirwall_auth::testkeys::TestClientKey;
use http::{HeaderValue, Method, StatusCode, Uri};
use tokio::task::JoinHandle;

use crate::client::{Target, request};

/// The scope the benchmark client registers and requests.
pub const SCOPE: &str = "system/*.cruds";

/// A registered client and its private key.
pub struct Credentials {
    key: TestClientKey,
    client_id: String,
    token_url: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("client_id", &self.client_id)
            .finish()
    }
}

/// A fresh ES384 key to register; its public JWKS goes into a file for `fhirwall client add`.
pub fn generate_key() -> Result<TestClientKey> {
    TestClientKey::generate_es384("bench-key")
        .map_err(|e| anyhow!("generating the client key: {e}"))
}

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn form_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

impl Credentials {
    pub fn new(key: TestClientKey, client_id: String, token_url: String) -> Self {
        Credentials {
            key,
            client_id,
            token_url,
        }
    }

    /// Asks the server for an access token; returns the `Authorization` header value.
    pub async fn fetch(&self, target: &Target) -> Result<HeaderValue> {
        let jti = uuid::Uuid::new_v4().to_string();
        let assertion = self
            .key
            .sign_assertion(&self.client_id, &self.token_url, now_unix(), &jti)
            .map_err(|e| anyhow!("signing the client assertion: {e}"))?;
        let body = format!(
            "grant_type=client_credentials\
             &client_assertion_type=urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer\
             &client_assertion={}&scope={}",
            form_encode(&assertion),
            form_encode(SCOPE)
        );
        let path: Uri = "/auth/token".parse()?;
        let req = request(
            Method::POST,
            path,
            None,
            Some(HeaderValue::from_static(
                "application/x-www-form-urlencoded",
            )),
            Bytes::from(body),
        )?;
        let mut conn = target.connect().await?;
        let reply = conn.send(req).await?;
        if reply.status != StatusCode::OK {
            bail!(
                "the token request answered {}: {}",
                reply.status,
                reply.body_snippet(300)
            );
        }
        let answer: serde_json::Value =
            serde_json::from_slice(&reply.body).context("the token answer is not JSON")?;
        let token = answer
            .get("access_token")
            .and_then(|t| t.as_str())
            .ok_or_else(|| anyhow!("the token answer has no access_token"))?;
        Ok(HeaderValue::from_str(&format!("Bearer {token}"))?)
    }
}

/// The current `Authorization` header value, shared by every load task.
#[derive(Debug)]
pub struct TokenCell {
    value: RwLock<HeaderValue>,
    refreshes: std::sync::atomic::AtomicU64,
}

impl TokenCell {
    pub fn new(value: HeaderValue) -> Self {
        TokenCell {
            value: RwLock::new(value),
            refreshes: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// The header value to send now.
    pub fn get(&self) -> HeaderValue {
        match self.value.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn set(&self, value: HeaderValue) {
        match self.value.write() {
            Ok(mut guard) => *guard = value,
            Err(poisoned) => *poisoned.into_inner() = value,
        }
        self.refreshes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// How many times the token was renewed.
    pub fn refreshes(&self) -> u64 {
        self.refreshes.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Renews the token every `every` (retrying every 5 s on failure) until aborted.
pub fn spawn_refresher(
    credentials: Arc<Credentials>,
    target: Arc<Target>,
    cell: Arc<TokenCell>,
    every: Duration,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut wait = every;
        loop {
            tokio::time::sleep(wait).await;
            match credentials.fetch(&target).await {
                Ok(value) => {
                    cell.set(value);
                    wait = every;
                }
                Err(e) => {
                    eprintln!("warning: token renewal failed, retrying in 5 s: {e:#}");
                    wait = Duration::from_secs(5);
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;

    #[test]
    fn form_encoding_escapes_reserved_characters() {
        assert_eq!(form_encode("system/*.cruds"), "system%2F%2A.cruds");
        assert_eq!(form_encode("a.b-c_d~e"), "a.b-c_d~e");
    }
}
