//! Client-side helpers for tests and benchmarks: generate RS384/ES384 client keys, publish their JWKS and sign (also deliberately broken) assertions; it must never be enabled in production builds (feature `test-keys`), and it keeps private keys in plain memory.

use std::fmt;

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{
    ECDSA_P384_SHA384_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _, RSA_PKCS1_SHA384, RsaKeyPair,
    RsaPublicKeyComponents,
};
use serde_json::{Value, json};

use crate::jose::b64url_encode;

/// Failures of the test helpers (all come from aws-lc-rs or JSON encoding).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TestKeyError {
    #[error("key generation failed")]
    KeyGeneration,
    #[error("signing failed")]
    Signing,
    #[error("key export failed")]
    Export,
}

enum KeyKind {
    Rs384(RsaKeyPair),
    Es384(EcdsaKeyPair),
}

/// A client's signing key pair, acting as a SMART backend-services client.
pub struct TestClientKey {
    kid: String,
    key: KeyKind,
}

impl fmt::Debug for TestClientKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestClientKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg())
            .finish_non_exhaustive()
    }
}

impl TestClientKey {
    /// A fresh EC P-384 key for ES384.
    pub fn generate_es384(kid: impl Into<String>) -> Result<Self, TestKeyError> {
        let key = EcdsaKeyPair::generate(&ECDSA_P384_SHA384_FIXED_SIGNING)
            .map_err(|_| TestKeyError::KeyGeneration)?;
        Ok(TestClientKey {
            kid: kid.into(),
            key: KeyKind::Es384(key),
        })
    }

    /// A fresh RSA 2048 key for RS384.
    pub fn generate_rs384(kid: impl Into<String>) -> Result<Self, TestKeyError> {
        let key =
            RsaKeyPair::generate(KeySize::Rsa2048).map_err(|_| TestKeyError::KeyGeneration)?;
        Ok(TestClientKey {
            kid: kid.into(),
            key: KeyKind::Rs384(key),
        })
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// `"RS384"` or `"ES384"`.
    pub fn alg(&self) -> &'static str {
        match self.key {
            KeyKind::Rs384(_) => "RS384",
            KeyKind::Es384(_) => "ES384",
        }
    }

    /// The public JWK (with `kid`, `alg` and `use: sig`).
    pub fn public_jwk(&self) -> Value {
        match &self.key {
            KeyKind::Rs384(key) => {
                let parts = RsaPublicKeyComponents::<Vec<u8>>::from(key.public_key());
                json!({
                    "kty": "RSA",
                    "kid": self.kid,
                    "alg": "RS384",
                    "use": "sig",
                    "n": b64url_encode(&parts.n),
                    "e": b64url_encode(&parts.e),
                })
            }
            KeyKind::Es384(key) => {
                // Uncompressed SEC1 point: 0x04 || x (48 bytes) || y (48 bytes).
                let point = key.public_key().as_ref();
                let x = point.get(1..49).unwrap_or_default();
                let y = point.get(49..97).unwrap_or_default();
                json!({
                    "kty": "EC",
                    "crv": "P-384",
                    "kid": self.kid,
                    "alg": "ES384",
                    "use": "sig",
                    "x": b64url_encode(x),
                    "y": b64url_encode(y),
                })
            }
        }
    }

    /// `{"keys":[public_jwk]}` as a string, as served from a `jwks_uri`.
    pub fn jwks_json(&self) -> String {
        json!({ "keys": [self.public_jwk()] }).to_string()
    }

    /// Raw public key bytes (PKCS#1 DER for RSA, SEC1 point for EC), e.g. to
    /// play an HMAC-with-public-key confusion attack.
    pub fn public_key_bytes(&self) -> Vec<u8> {
        match &self.key {
            KeyKind::Rs384(key) => key.public_key().as_ref().to_vec(),
            KeyKind::Es384(key) => key.public_key().as_ref().to_vec(),
        }
    }

    /// The private key as PKCS#8 DER, for cross-checks with other JWT libraries.
    pub fn pkcs8_der(&self) -> Result<Vec<u8>, TestKeyError> {
        match &self.key {
            KeyKind::Rs384(key) => key
                .as_der()
                .map(|d| d.as_ref().to_vec())
                .map_err(|_| TestKeyError::Export),
            KeyKind::Es384(key) => key
                .to_pkcs8v1()
                .map(|d| d.as_ref().to_vec())
                .map_err(|_| TestKeyError::Export),
        }
    }

    /// The header a well-behaved client sends: `alg`, `typ: JWT`, `kid`.
    pub fn assertion_header(&self) -> Value {
        json!({ "alg": self.alg(), "typ": "JWT", "kid": self.kid })
    }

    /// Claims a well-behaved client sends: `iat = now`, `exp = now + 240`.
    pub fn assertion_claims(client_id: &str, token_url: &str, now_unix: i64, jti: &str) -> Value {
        json!({
            "iss": client_id,
            "sub": client_id,
            "aud": token_url,
            "iat": now_unix,
            "exp": now_unix + 240,
            "jti": jti,
        })
    }

    /// A valid client assertion.
    pub fn sign_assertion(
        &self,
        client_id: &str,
        token_url: &str,
        now_unix: i64,
        jti: &str,
    ) -> Result<String, TestKeyError> {
        let claims = Self::assertion_claims(client_id, token_url, now_unix, jti);
        self.sign_with(&self.assertion_header(), &claims)
    }

    /// Signs arbitrary header and claims with this key's own algorithm, whatever
    /// the header's `alg` says (for negative tests).
    pub fn sign_with(&self, header: &Value, claims: &Value) -> Result<String, TestKeyError> {
        let input = signing_input(header, claims);
        let rng = SystemRandom::new();
        let signature = match &self.key {
            KeyKind::Rs384(key) => {
                let mut sig = vec![0; key.public_modulus_len()];
                key.sign(&RSA_PKCS1_SHA384, &rng, input.as_bytes(), &mut sig)
                    .map_err(|_| TestKeyError::Signing)?;
                sig
            }
            KeyKind::Es384(key) => key
                .sign(&rng, input.as_bytes())
                .map_err(|_| TestKeyError::Signing)?
                .as_ref()
                .to_vec(),
        };
        Ok(format!("{input}.{}", b64url_encode(signature)))
    }
}

fn signing_input(header: &Value, claims: &Value) -> String {
    format!(
        "{}.{}",
        b64url_encode(header.to_string()),
        b64url_encode(claims.to_string())
    )
}

/// A token with an empty signature, as an `alg: none` attacker would send.
pub fn unsigned_token(header: &Value, claims: &Value) -> String {
    format!("{}.", signing_input(header, claims))
}

/// An HMAC-SHA384 token keyed with `secret`, for algorithm-confusion tests.
pub fn hmac_token(secret: &[u8], header: &Value, claims: &Value) -> String {
    let input = signing_input(header, claims);
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA384, secret);
    let tag = aws_lc_rs::hmac::sign(&key, input.as_bytes());
    format!("{input}.{}", b64url_encode(tag))
}
