//! Access tokens issued by this server: compact JWTs (RFC 9068 `at+jwt`) signed ES384 with the server key; it must not store the key, track revocation, or accept any algorithm but ES384.

use std::fmt;

use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use aws_lc_rs::signature::{
    ECDSA_P384_SHA384_FIXED, ECDSA_P384_SHA384_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _,
    ParsedPublicKey,
};
use serde::Deserialize;
use serde_json::json;
use zeroize::Zeroizing;

use crate::jose;
use crate::scope::ScopeSet;

/// Leeway on our own tokens' `exp` / `iat`, for small clock differences between nodes.
pub const TOKEN_LEEWAY_SECS: i64 = 5;
/// Longest accepted token lifetime.
pub const MAX_TTL_SECS: i64 = 24 * 60 * 60;
/// RFC 9068 media type for JWT access tokens; it keeps them apart from any other JWT we may sign.
const ACCESS_TOKEN_TYP: &str = "at+jwt";
/// Bound on token size; long scope lists are the only thing that grows it.
const MAX_TOKEN_LEN: usize = 16 * 1024;
/// Random bytes in a `jti`.
const JTI_BYTES: usize = 16;

/// Why a token could not be issued or was refused. Codes are stable, for audit records.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("signing key is not an EC P-384 PKCS#8 private key")]
    InvalidKey,
    #[error("invalid issuer configuration: {0}")]
    InvalidConfig(&'static str),
    #[error("token lifetime must be between 1 second and 1 day")]
    InvalidTtl,
    #[error("cryptographic operation failed")]
    Crypto,
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    #[error("algorithm not allowed (only ES384)")]
    UnsupportedAlgorithm,
    #[error("token typ must be at+jwt")]
    UnsupportedType,
    #[error("token was signed by an unknown key")]
    UnknownKey,
    #[error("signature verification failed")]
    BadSignature,
    #[error("token issuer does not match")]
    WrongIssuer,
    #[error("token audience does not match")]
    WrongAudience,
    #[error("token expired")]
    Expired,
    #[error("token issued in the future")]
    NotYetValid,
}

impl TokenError {
    /// A short snake_case code for audit records.
    pub fn code(&self) -> &'static str {
        match self {
            TokenError::InvalidKey => "invalid_key",
            TokenError::InvalidConfig(_) => "invalid_config",
            TokenError::InvalidTtl => "invalid_ttl",
            TokenError::Crypto => "crypto_failure",
            TokenError::Malformed(_) => "malformed",
            TokenError::UnsupportedAlgorithm => "unsupported_alg",
            TokenError::UnsupportedType => "unsupported_typ",
            TokenError::UnknownKey => "unknown_kid",
            TokenError::BadSignature => "bad_signature",
            TokenError::WrongIssuer => "wrong_issuer",
            TokenError::WrongAudience => "wrong_audience",
            TokenError::Expired => "expired",
            TokenError::NotYetValid => "not_yet_valid",
        }
    }
}

/// A freshly issued token, shaped for the OAuth token response.
#[derive(Clone, PartialEq, Eq)]
pub struct IssuedToken {
    pub access_token: String,
    pub expires_in: i64,
    /// The granted scopes, space-separated.
    pub scope: String,
}

impl fmt::Debug for IssuedToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The access token is a bearer credential: never print it.
        f.debug_struct("IssuedToken")
            .field("access_token", &"[redacted]")
            .field("expires_in", &self.expires_in)
            .field("scope", &self.scope)
            .finish()
    }
}

/// The verified claims of one of our access tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessClaims {
    pub client_id: String,
    /// The tenant the client belongs to; every request the token makes stays inside it.
    pub tenant: String,
    pub scopes: ScopeSet,
    pub exp: i64,
    pub jti: String,
}

#[derive(Deserialize)]
struct RawAccessClaims {
    iss: String,
    sub: String,
    aud: String,
    iat: i64,
    exp: i64,
    jti: String,
    scope: String,
    client_id: String,
    tenant: String,
}

/// Generates a new EC P-384 server signing key as PKCS#8 DER (zeroized on drop).
pub fn generate_server_signing_key_pkcs8() -> Result<Zeroizing<Vec<u8>>, TokenError> {
    let key =
        EcdsaKeyPair::generate(&ECDSA_P384_SHA384_FIXED_SIGNING).map_err(|_| TokenError::Crypto)?;
    let der = key.to_pkcs8v1().map_err(|_| TokenError::Crypto)?;
    Ok(Zeroizing::new(der.as_ref().to_vec()))
}

/// Issues and verifies access tokens with the server's ES384 key.
pub struct TokenIssuer {
    signing_key: EcdsaKeyPair,
    verifying_key: ParsedPublicKey,
    kid: String,
    issuer_url: String,
    /// The base64url header is the same for every token, so it is built once.
    header_b64: String,
    public_jwk: serde_json::Value,
    rng: SystemRandom,
}

impl fmt::Debug for TokenIssuer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenIssuer")
            .field("kid", &self.kid)
            .field("issuer_url", &self.issuer_url)
            .finish_non_exhaustive()
    }
}

impl TokenIssuer {
    /// Loads the server key (EC P-384, PKCS#8 DER). `issuer_url` is used for both
    /// `iss` and `aud`: tokens are only meant for this server.
    pub fn from_pkcs8_der(der: &[u8], kid: String, issuer_url: String) -> Result<Self, TokenError> {
        if kid.is_empty() {
            return Err(TokenError::InvalidConfig("kid is empty"));
        }
        if issuer_url.is_empty() {
            return Err(TokenError::InvalidConfig("issuer_url is empty"));
        }
        let signing_key = EcdsaKeyPair::from_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, der)
            .map_err(|_| TokenError::InvalidKey)?;
        let point = signing_key.public_key().as_ref();
        let verifying_key = ParsedPublicKey::new(&ECDSA_P384_SHA384_FIXED, point)
            .map_err(|_| TokenError::InvalidKey)?;
        // Uncompressed SEC1 point: 0x04 || x (48 bytes) || y (48 bytes).
        let (x, y) = match (point.get(1..49), point.get(49..97)) {
            (Some(x), Some(y)) => (x, y),
            _ => return Err(TokenError::InvalidKey),
        };
        let public_jwk = json!({
            "kty": "EC",
            "crv": "P-384",
            "x": jose::b64url_encode(x),
            "y": jose::b64url_encode(y),
            "kid": kid,
            "alg": "ES384",
            "use": "sig",
        });
        let header = json!({ "alg": "ES384", "typ": ACCESS_TOKEN_TYP, "kid": kid });
        Ok(TokenIssuer {
            signing_key,
            verifying_key,
            header_b64: jose::b64url_encode(header.to_string()),
            kid,
            issuer_url,
            public_jwk,
            rng: SystemRandom::new(),
        })
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    pub fn issuer_url(&self) -> &str {
        &self.issuer_url
    }

    /// Issues a token for `client_id` of `tenant` carrying `scopes`, valid for `ttl_secs`.
    pub fn issue(
        &self,
        client_id: &str,
        tenant: &str,
        scopes: &ScopeSet,
        now_unix: i64,
        ttl_secs: i64,
    ) -> Result<IssuedToken, TokenError> {
        if !(1..=MAX_TTL_SECS).contains(&ttl_secs) {
            return Err(TokenError::InvalidTtl);
        }
        let exp = now_unix
            .checked_add(ttl_secs)
            .ok_or(TokenError::InvalidTtl)?;
        let mut jti = [0u8; JTI_BYTES];
        self.rng.fill(&mut jti).map_err(|_| TokenError::Crypto)?;
        let scope = scopes.to_string();
        let claims = json!({
            "iss": self.issuer_url,
            "sub": client_id,
            "aud": self.issuer_url,
            "iat": now_unix,
            "exp": exp,
            "jti": jose::b64url_encode(jti),
            "scope": scope,
            "client_id": client_id,
            "tenant": tenant,
        });
        let input = format!(
            "{}.{}",
            self.header_b64,
            jose::b64url_encode(claims.to_string())
        );
        let signature = self
            .signing_key
            .sign(&self.rng, input.as_bytes())
            .map_err(|_| TokenError::Crypto)?;
        Ok(IssuedToken {
            access_token: format!("{input}.{}", jose::b64url_encode(signature)),
            expires_in: ttl_secs,
            scope,
        })
    }

    /// Verifies one of our access tokens: ES384 only, our `kid`, `typ: at+jwt`,
    /// the signature, then `iss`, `aud`, `sub` = `client_id`, `exp` and `iat`.
    pub fn verify(&self, token: &str, now_unix: i64) -> Result<AccessClaims, TokenError> {
        let jws = jose::split(token, MAX_TOKEN_LEN).map_err(TokenError::Malformed)?;
        if jws.header.alg != "ES384" {
            return Err(TokenError::UnsupportedAlgorithm);
        }
        if jws.header.typ.as_deref() != Some(ACCESS_TOKEN_TYP) {
            return Err(TokenError::UnsupportedType);
        }
        if jws.header.kid.as_deref() != Some(self.kid.as_str()) {
            return Err(TokenError::UnknownKey);
        }
        self.verifying_key
            .verify_sig(jws.signing_input.as_bytes(), &jws.signature)
            .map_err(|_| TokenError::BadSignature)?;
        let raw: RawAccessClaims =
            jose::decode_payload(jws.payload_b64).map_err(TokenError::Malformed)?;
        if raw.iss != self.issuer_url {
            return Err(TokenError::WrongIssuer);
        }
        if raw.aud != self.issuer_url {
            return Err(TokenError::WrongAudience);
        }
        if raw.sub != raw.client_id {
            return Err(TokenError::Malformed("sub and client_id differ"));
        }
        if now_unix >= raw.exp.saturating_add(TOKEN_LEEWAY_SECS) {
            return Err(TokenError::Expired);
        }
        if raw.iat > now_unix.saturating_add(TOKEN_LEEWAY_SECS) {
            return Err(TokenError::NotYetValid);
        }
        let scopes = ScopeSet::parse(&raw.scope)
            .map_err(|_| TokenError::Malformed("scope claim does not parse"))?;
        Ok(AccessClaims {
            client_id: raw.client_id,
            tenant: raw.tenant,
            scopes,
            exp: raw.exp,
            jti: raw.jti,
        })
    }

    /// The JWKS to publish: only the public key (`kty`, `crv`, `x`, `y`, `kid`, `alg`, `use`).
    pub fn public_jwks(&self) -> serde_json::Value {
        json!({ "keys": [self.public_jwk] })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use serde_json::Value;

    use super::*;
    use crate::scope::Interaction;

    const ISSUER: &str = "https://fhir.example.org";
    const NOW: i64 = 1_750_000_000;

    fn issuer() -> TokenIssuer {
        let der = generate_server_signing_key_pkcs8().unwrap();
        TokenIssuer::from_pkcs8_der(&der, "server-1".into(), ISSUER.into()).unwrap()
    }

    fn scopes() -> ScopeSet {
        ScopeSet::parse("system/Patient.rs system/Observation.read").unwrap()
    }

    fn parts(token: &str) -> (Value, Value) {
        let p: Vec<&str> = token.split('.').collect();
        assert_eq!(p.len(), 3);
        let dec = |s: &str| serde_json::from_slice(&jose::b64url_decode(s).unwrap()).unwrap();
        (dec(p[0]), dec(p[1]))
    }

    /// Re-signs arbitrary header and claims with the issuer's key.
    fn resign(iss: &TokenIssuer, header: &Value, claims: &Value) -> String {
        let input = format!(
            "{}.{}",
            jose::b64url_encode(header.to_string()),
            jose::b64url_encode(claims.to_string())
        );
        let sig = iss.signing_key.sign(&iss.rng, input.as_bytes()).unwrap();
        format!("{input}.{}", jose::b64url_encode(sig))
    }

    #[test]
    fn issue_then_verify() {
        let iss = issuer();
        let t = iss
            .issue("client-1", "default", &scopes(), NOW, 300)
            .unwrap();
        assert_eq!(t.expires_in, 300);
        assert_eq!(t.scope, "system/Patient.rs system/Observation.read");
        let claims = iss.verify(&t.access_token, NOW + 10).unwrap();
        assert_eq!(claims.client_id, "client-1");
        assert_eq!(claims.exp, NOW + 300);
        assert_eq!(claims.scopes, scopes());
        assert!(
            claims
                .scopes
                .allows_system("Observation", Interaction::Search)
        );
    }

    #[test]
    fn claims_and_header_shape() {
        let iss = issuer();
        let t = iss
            .issue("client-1", "default", &scopes(), NOW, 300)
            .unwrap();
        let (header, claims) = parts(&t.access_token);
        assert_eq!(
            header,
            json!({"alg": "ES384", "typ": "at+jwt", "kid": "server-1"})
        );
        assert_eq!(claims["iss"], ISSUER);
        assert_eq!(claims["aud"], ISSUER);
        assert_eq!(claims["sub"], "client-1");
        assert_eq!(claims["client_id"], "client-1");
        assert_eq!(claims["iat"], NOW);
        assert_eq!(claims["exp"], NOW + 300);
        let jti = claims["jti"].as_str().unwrap();
        assert_eq!(jose::b64url_decode(jti).unwrap().len(), 16);
        let other = iss
            .issue("client-1", "default", &scopes(), NOW, 300)
            .unwrap();
        assert_ne!(parts(&other.access_token).1["jti"], claims["jti"]);
    }

    #[test]
    fn expiry() {
        let iss = issuer();
        let t = iss
            .issue("c", "default", &scopes(), NOW, 60)
            .unwrap()
            .access_token;
        assert!(iss.verify(&t, NOW + 64).is_ok());
        assert_eq!(iss.verify(&t, NOW + 65), Err(TokenError::Expired));
        assert_eq!(iss.verify(&t, NOW + 10_000), Err(TokenError::Expired));
        assert_eq!(iss.verify(&t, NOW - 6), Err(TokenError::NotYetValid));
    }

    #[test]
    fn ttl_bounds() {
        let iss = issuer();
        for ttl in [0, -1, MAX_TTL_SECS + 1] {
            assert_eq!(
                iss.issue("c", "default", &scopes(), NOW, ttl),
                Err(TokenError::InvalidTtl)
            );
        }
        assert_eq!(
            iss.issue("c", "default", &scopes(), i64::MAX, 10),
            Err(TokenError::InvalidTtl)
        );
    }

    #[test]
    fn other_issuer_key_is_refused() {
        let a = issuer();
        let b = issuer(); // same kid and issuer URL, different key
        let t = b
            .issue("c", "default", &scopes(), NOW, 60)
            .unwrap()
            .access_token;
        assert_eq!(a.verify(&t, NOW), Err(TokenError::BadSignature));
    }

    #[test]
    fn header_checks() {
        let iss = issuer();
        let t = iss
            .issue("c", "default", &scopes(), NOW, 60)
            .unwrap()
            .access_token;
        let (header, claims) = parts(&t);
        let with = |k: &str, v: Value| {
            let mut h = header.clone();
            h[k] = v;
            resign(&iss, &h, &claims)
        };
        assert_eq!(
            iss.verify(&with("alg", json!("ES256")), NOW),
            Err(TokenError::UnsupportedAlgorithm)
        );
        assert_eq!(
            iss.verify(&with("alg", json!("none")), NOW),
            Err(TokenError::UnsupportedAlgorithm)
        );
        assert_eq!(
            iss.verify(&with("typ", json!("JWT")), NOW),
            Err(TokenError::UnsupportedType)
        );
        assert_eq!(
            iss.verify(&with("kid", json!("server-0")), NOW),
            Err(TokenError::UnknownKey)
        );
        let unsigned = format!("{}.", t.rsplit_once('.').unwrap().0);
        assert_eq!(iss.verify(&unsigned, NOW), Err(TokenError::BadSignature));
    }

    #[test]
    fn claim_checks() {
        let iss = issuer();
        let t = iss
            .issue("c", "default", &scopes(), NOW, 60)
            .unwrap()
            .access_token;
        let (header, claims) = parts(&t);
        let with = |k: &str, v: Value| {
            let mut c = claims.clone();
            c[k] = v;
            resign(&iss, &header, &c)
        };
        assert_eq!(
            iss.verify(&with("iss", json!("https://other")), NOW),
            Err(TokenError::WrongIssuer)
        );
        assert_eq!(
            iss.verify(&with("aud", json!("https://other")), NOW),
            Err(TokenError::WrongAudience)
        );
        assert!(matches!(
            iss.verify(&with("sub", json!("someone")), NOW),
            Err(TokenError::Malformed(_))
        ));
        assert!(matches!(
            iss.verify(&with("scope", json!("system/Patient.sr")), NOW),
            Err(TokenError::Malformed(_))
        ));
        assert!(matches!(
            iss.verify(&with("exp", json!("later")), NOW),
            Err(TokenError::Malformed(_))
        ));
    }

    #[test]
    fn tampered_payload_is_refused() {
        let iss = issuer();
        let t = iss
            .issue("c", "default", &scopes(), NOW, 60)
            .unwrap()
            .access_token;
        let (_, mut claims) = parts(&t);
        claims["scope"] = json!("system/*.cruds");
        let p: Vec<&str> = t.split('.').collect();
        let forged = format!(
            "{}.{}.{}",
            p[0],
            jose::b64url_encode(claims.to_string()),
            p[2]
        );
        assert_eq!(iss.verify(&forged, NOW), Err(TokenError::BadSignature));
    }

    #[test]
    fn public_jwks_has_only_public_parts() {
        let iss = issuer();
        let jwks = iss.public_jwks();
        let keys = jwks["keys"].as_array().unwrap();
        assert_eq!(keys.len(), 1);
        let key = keys[0].as_object().unwrap();
        let mut members: Vec<&str> = key.keys().map(String::as_str).collect();
        members.sort_unstable();
        assert_eq!(members, ["alg", "crv", "kid", "kty", "use", "x", "y"]);
        assert!(!key.contains_key("d"));
        // It is also a JWKS our own client-key validation accepts.
        crate::assertion::validate_jwks(&jwks.to_string()).unwrap();
    }

    #[test]
    fn jsonwebtoken_verifies_our_tokens() {
        // Cross-check the token format against an independent JWT implementation.
        let iss = issuer();
        let t = iss
            .issue("c", "default", &scopes(), NOW, 60)
            .unwrap()
            .access_token;
        let jwk: jsonwebtoken::jwk::Jwk =
            serde_json::from_value(iss.public_jwks()["keys"][0].clone()).unwrap();
        let key = jsonwebtoken::DecodingKey::from_jwk(&jwk).unwrap();
        let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES384);
        validation.validate_exp = false;
        validation.set_audience(&[ISSUER]);
        let data = jsonwebtoken::decode::<Value>(&t, &key, &validation).unwrap();
        assert_eq!(data.claims["client_id"], "c");
    }

    #[test]
    fn rejects_bad_keys_and_config() {
        let der = generate_server_signing_key_pkcs8().unwrap();
        assert_eq!(
            TokenIssuer::from_pkcs8_der(b"junk", "k".into(), ISSUER.into()).unwrap_err(),
            TokenError::InvalidKey
        );
        assert!(matches!(
            TokenIssuer::from_pkcs8_der(&der, String::new(), ISSUER.into()),
            Err(TokenError::InvalidConfig(_))
        ));
        let p256 = EcdsaKeyPair::generate(&aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING)
            .unwrap()
            .to_pkcs8v1()
            .unwrap();
        assert_eq!(
            TokenIssuer::from_pkcs8_der(p256.as_ref(), "k".into(), ISSUER.into()).unwrap_err(),
            TokenError::InvalidKey
        );
    }

    #[test]
    fn debug_output_has_no_secrets() {
        let iss = issuer();
        let t = iss.issue("c", "default", &scopes(), NOW, 60).unwrap();
        let dbg = format!("{t:?} {iss:?}");
        assert!(!dbg.contains(&t.access_token));
        assert!(dbg.contains("server-1"));
    }
}
