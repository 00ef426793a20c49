//! Verification of SMART Backend Services client assertions (RFC 7523 `private_key_jwt`, RFC 8725) and validation of client JWKS; it must not track `jti` replay, fetch keys, read the clock, or ever build an HMAC key.

use std::collections::HashSet;

use aws_lc_rs::signature::{
    ECDSA_P384_SHA384_FIXED, ParsedPublicKey, RSA_PKCS1_2048_8192_SHA384, RsaPublicKeyComponents,
};
use jsonwebtoken::jwk::{
    AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm, KeyOperations, PublicKeyUse,
};
use serde::Deserialize;

use crate::jose;

/// Clock skew tolerated on `exp`, `nbf` and `iat`, in seconds.
pub const CLOCK_SKEW_SECS: i64 = 60;
/// SMART: an assertion's `exp` is at most five minutes in the future.
pub const MAX_LIFETIME_SECS: i64 = 300;
/// Longest accepted `jti`, in characters.
pub const MAX_JTI_CHARS: usize = 255;
/// Bound on assertion size; real ones are about 1 KiB (RS384 with a 4096-bit key).
const MAX_ASSERTION_LEN: usize = 16 * 1024;
/// Bound on a registered JWKS document and its key count.
const MAX_JWKS_LEN: usize = 64 * 1024;
const MAX_JWKS_KEYS: usize = 32;
/// Members that only private or symmetric JWKs carry (RFC 7518 §6).
const PRIVATE_MEMBERS: [&str; 8] = ["d", "p", "q", "dp", "dq", "qi", "oth", "k"];

/// The verified claims of a client assertion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssertionClaims {
    /// The client id (`iss` and `sub` are equal).
    pub iss: String,
    pub sub: String,
    /// The audience value that matched: the token endpoint URL.
    pub aud: String,
    pub exp: i64,
    /// For the caller's replay check: must not have been seen before `exp`.
    pub jti: String,
    pub iat: Option<i64>,
}

/// Why an assertion or JWKS was refused. Variants and their [`code`](Self::code)s
/// are stable: they end up in audit records.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AssertionError {
    #[error("malformed assertion: {0}")]
    Malformed(&'static str),
    #[error("algorithm not allowed (only RS384 and ES384)")]
    UnsupportedAlgorithm,
    #[error("header typ must be JWT")]
    UnsupportedType,
    #[error("header kid is missing")]
    MissingKeyId,
    #[error("no key with that kid")]
    UnknownKey,
    #[error("more than one key with that kid")]
    AmbiguousKey,
    #[error("the key with that kid does not fit the algorithm or is not a signing key")]
    KeyMismatch,
    #[error("signature verification failed")]
    BadSignature,
    #[error("required claim missing: {0}")]
    MissingClaim(&'static str),
    #[error("iss and sub must both equal the client id")]
    WrongIssuer,
    #[error("aud does not name the token endpoint")]
    WrongAudience,
    #[error("assertion expired")]
    Expired,
    #[error("assertion exp is more than five minutes ahead")]
    ExpiryTooFar,
    #[error("assertion is not yet valid (nbf or iat in the future)")]
    NotYetValid,
    #[error("jti is missing or empty")]
    MissingJti,
    #[error("jti is longer than 255 characters")]
    JtiTooLong,
    #[error("invalid JWKS: {0}")]
    InvalidJwks(&'static str),
}

impl AssertionError {
    /// A short snake_case code for audit records.
    pub fn code(&self) -> &'static str {
        match self {
            AssertionError::Malformed(_) => "malformed",
            AssertionError::UnsupportedAlgorithm => "unsupported_alg",
            AssertionError::UnsupportedType => "unsupported_typ",
            AssertionError::MissingKeyId => "missing_kid",
            AssertionError::UnknownKey => "unknown_kid",
            AssertionError::AmbiguousKey => "ambiguous_kid",
            AssertionError::KeyMismatch => "key_mismatch",
            AssertionError::BadSignature => "bad_signature",
            AssertionError::MissingClaim(_) => "missing_claim",
            AssertionError::WrongIssuer => "wrong_issuer",
            AssertionError::WrongAudience => "wrong_audience",
            AssertionError::Expired => "expired",
            AssertionError::ExpiryTooFar => "expiry_too_far",
            AssertionError::NotYetValid => "not_yet_valid",
            AssertionError::MissingJti => "missing_jti",
            AssertionError::JtiTooLong => "jti_too_long",
            AssertionError::InvalidJwks(_) => "invalid_jwks",
        }
    }
}

/// The only algorithms SMART Backend Services allows. Anything else, `none` and
/// HS* included, never gets past [`Alg::from_header`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Alg {
    Rs384,
    Es384,
}

impl Alg {
    fn from_header(alg: &str) -> Result<Self, AssertionError> {
        match alg {
            "RS384" => Ok(Alg::Rs384),
            "ES384" => Ok(Alg::Es384),
            _ => Err(AssertionError::UnsupportedAlgorithm),
        }
    }

    fn key_algorithm(self) -> KeyAlgorithm {
        match self {
            Alg::Rs384 => KeyAlgorithm::RS384,
            Alg::Es384 => KeyAlgorithm::ES384,
        }
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
struct RawClaims {
    #[serde(default)]
    iss: Option<String>,
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    aud: Option<Audience>,
    #[serde(default)]
    exp: Option<i64>,
    #[serde(default)]
    nbf: Option<i64>,
    #[serde(default)]
    iat: Option<i64>,
    #[serde(default)]
    jti: Option<String>,
}

/// Reads the `iss` claim WITHOUT verifying anything, so the caller can look up
/// the client's keys. The result is attacker-controlled: use it only as a lookup
/// key, then call [`verify_client_assertion`] with it as `expected_client_id`.
pub fn peek_client_id(assertion: &str) -> Result<String, AssertionError> {
    #[derive(Deserialize)]
    struct IssOnly {
        #[serde(default)]
        iss: Option<String>,
    }
    let jws = jose::split(assertion, MAX_ASSERTION_LEN).map_err(AssertionError::Malformed)?;
    let claims: IssOnly =
        jose::decode_payload(jws.payload_b64).map_err(AssertionError::Malformed)?;
    claims
        .iss
        .filter(|iss| !iss.is_empty())
        .ok_or(AssertionError::MissingClaim("iss"))
}

/// Verifies a client assertion against the client's registered keys.
///
/// Checks, in order: JWS shape, `alg` in {RS384, ES384}, `typ` (if present) is
/// `JWT`, `kid` names exactly one key that fits the algorithm, the signature,
/// then the claims (`iss` = `sub` = client id, `aud`, `exp`, `nbf`, `iat`, `jti`).
/// `jti` replay is NOT checked here: the caller must record the returned `jti`
/// until `exp` and refuse reuse.
pub fn verify_client_assertion(
    assertion: &str,
    expected_client_id: Option<&str>,
    token_endpoint_url: &str,
    keys: &JwkSet,
    now_unix: i64,
) -> Result<AssertionClaims, AssertionError> {
    let jws = jose::split(assertion, MAX_ASSERTION_LEN).map_err(AssertionError::Malformed)?;
    let alg = Alg::from_header(&jws.header.alg)?;
    if let Some(typ) = &jws.header.typ
        && !typ.eq_ignore_ascii_case("JWT")
    {
        return Err(AssertionError::UnsupportedType);
    }
    let kid = jws
        .header
        .kid
        .as_deref()
        .filter(|k| !k.is_empty())
        .ok_or(AssertionError::MissingKeyId)?;
    let key = public_key_for(select_key(keys, kid)?, alg)?;
    key.verify_sig(jws.signing_input.as_bytes(), &jws.signature)
        .map_err(|_| AssertionError::BadSignature)?;
    // Claims are parsed only once the signature is known good.
    let raw: RawClaims =
        jose::decode_payload(jws.payload_b64).map_err(AssertionError::Malformed)?;
    check_claims(raw, expected_client_id, token_endpoint_url, now_unix)
}

fn select_key<'a>(keys: &'a JwkSet, kid: &str) -> Result<&'a Jwk, AssertionError> {
    let mut matching = keys
        .keys
        .iter()
        .filter(|k| k.common.key_id.as_deref() == Some(kid));
    let key = matching.next().ok_or(AssertionError::UnknownKey)?;
    if matching.next().is_some() {
        return Err(AssertionError::AmbiguousKey);
    }
    Ok(key)
}

/// Builds the verification key for `alg` from `jwk`, refusing keys whose type,
/// curve, `alg`, `use` or `key_ops` do not fit. Only RSA and EC P-384 public keys
/// can come out of here, so no algorithm confusion is possible.
fn public_key_for(jwk: &Jwk, alg: Alg) -> Result<ParsedPublicKey, AssertionError> {
    let common = &jwk.common;
    let use_ok = common
        .public_key_use
        .as_ref()
        .is_none_or(|u| *u == PublicKeyUse::Signature);
    let ops_ok = common
        .key_operations
        .as_ref()
        .is_none_or(|ops| ops.contains(&KeyOperations::Verify));
    let alg_ok = common
        .key_algorithm
        .is_none_or(|a| a == alg.key_algorithm());
    if !(use_ok && ops_ok && alg_ok) {
        return Err(AssertionError::KeyMismatch);
    }
    match (alg, &jwk.algorithm) {
        (Alg::Rs384, AlgorithmParameters::RSA(p)) => rsa_key(&p.n, &p.e),
        (Alg::Es384, AlgorithmParameters::EllipticCurve(p)) if p.curve == EllipticCurve::P384 => {
            ec_p384_key(&p.x, &p.y)
        }
        _ => None,
    }
    .ok_or(AssertionError::KeyMismatch)
}

fn rsa_key(n_b64: &str, e_b64: &str) -> Option<ParsedPublicKey> {
    let n = jose::b64url_decode(n_b64)?;
    let e = jose::b64url_decode(e_b64)?;
    // Enforce the 2048..=8192-bit range up front rather than trusting each verifier.
    let bits = modulus_bits(&n);
    if !(2048..=8192).contains(&bits) {
        return None;
    }
    RsaPublicKeyComponents { n: &n, e: &e }
        .to_parsed_public_key(&RSA_PKCS1_2048_8192_SHA384)
        .ok()
}

fn modulus_bits(n: &[u8]) -> usize {
    let Some(start) = n.iter().position(|b| *b != 0) else {
        return 0;
    };
    let significant = n.get(start..).unwrap_or_default();
    let lead = significant
        .first()
        .map_or(0, |b| 8 - b.leading_zeros() as usize);
    significant.len().saturating_sub(1) * 8 + lead
}

fn ec_p384_key(x_b64: &str, y_b64: &str) -> Option<ParsedPublicKey> {
    let x = jose::b64url_decode(x_b64)?;
    let y = jose::b64url_decode(y_b64)?;
    if x.len() != 48 || y.len() != 48 {
        return None;
    }
    let mut point = Vec::with_capacity(97);
    point.push(0x04); // uncompressed SEC1 point
    point.extend_from_slice(&x);
    point.extend_from_slice(&y);
    // Parsing checks the point is on the curve.
    ParsedPublicKey::new(&ECDSA_P384_SHA384_FIXED, point).ok()
}

fn check_claims(
    raw: RawClaims,
    expected_client_id: Option<&str>,
    token_endpoint_url: &str,
    now: i64,
) -> Result<AssertionClaims, AssertionError> {
    let iss = raw.iss.ok_or(AssertionError::MissingClaim("iss"))?;
    let sub = raw.sub.ok_or(AssertionError::MissingClaim("sub"))?;
    if iss.is_empty() || iss != sub || expected_client_id.is_some_and(|id| id != iss) {
        return Err(AssertionError::WrongIssuer);
    }
    let aud_ok = match raw.aud.ok_or(AssertionError::MissingClaim("aud"))? {
        Audience::One(aud) => aud == token_endpoint_url,
        Audience::Many(auds) => auds.iter().any(|a| a == token_endpoint_url),
    };
    if !aud_ok {
        return Err(AssertionError::WrongAudience);
    }
    let exp = raw.exp.ok_or(AssertionError::MissingClaim("exp"))?;
    if exp <= now.saturating_sub(CLOCK_SKEW_SECS) {
        return Err(AssertionError::Expired);
    }
    if exp > now.saturating_add(MAX_LIFETIME_SECS + CLOCK_SKEW_SECS) {
        return Err(AssertionError::ExpiryTooFar);
    }
    let latest_start = now.saturating_add(CLOCK_SKEW_SECS);
    if raw.nbf.is_some_and(|t| t > latest_start) || raw.iat.is_some_and(|t| t > latest_start) {
        return Err(AssertionError::NotYetValid);
    }
    let jti = raw
        .jti
        .filter(|j| !j.is_empty())
        .ok_or(AssertionError::MissingJti)?;
    if jti.chars().count() > MAX_JTI_CHARS {
        return Err(AssertionError::JtiTooLong);
    }
    Ok(AssertionClaims {
        iss,
        sub,
        aud: token_endpoint_url.to_owned(),
        exp,
        jti,
        iat: raw.iat,
    })
}

/// Validates a client's JWKS (at registration and after each fetch): at least
/// one key, every key with a unique `kid`, public keys only (no `d`, `p`, `q`,
/// `dp`, `dq`, `qi`, `oth` or `k`), no `kty: oct`, and RSA / EC P-384 keys that
/// actually parse (RSA 2048..=8192 bits, EC points on the curve). Keys of other
/// types are kept but can never verify an assertion.
pub fn validate_jwks(jwks_json: &str) -> Result<JwkSet, AssertionError> {
    use AssertionError::InvalidJwks;
    if jwks_json.len() > MAX_JWKS_LEN {
        return Err(InvalidJwks("document too large"));
    }
    let value: serde_json::Value =
        serde_json::from_str(jwks_json).map_err(|_| InvalidJwks("not JSON"))?;
    let keys = value
        .get("keys")
        .and_then(|k| k.as_array())
        .ok_or(InvalidJwks("missing keys array"))?;
    if keys.is_empty() {
        return Err(InvalidJwks("no keys"));
    }
    if keys.len() > MAX_JWKS_KEYS {
        return Err(InvalidJwks("too many keys"));
    }
    let mut kids = HashSet::new();
    for key in keys {
        let key = key.as_object().ok_or(InvalidJwks("key is not an object"))?;
        let kid = key
            .get("kid")
            .and_then(|k| k.as_str())
            .filter(|k| !k.is_empty())
            .ok_or(InvalidJwks("every key needs a non-empty kid"))?;
        if !kids.insert(kid) {
            return Err(InvalidJwks("duplicate kid"));
        }
        if PRIVATE_MEMBERS.iter().any(|m| key.contains_key(*m)) {
            return Err(InvalidJwks(
                "private or symmetric key material is not allowed",
            ));
        }
        match key.get("kty").and_then(|k| k.as_str()) {
            None => return Err(InvalidJwks("every key needs a kty")),
            Some("oct") => return Err(InvalidJwks("symmetric keys are not allowed")),
            Some(_) => {}
        }
    }
    let set: JwkSet =
        serde_json::from_value(value).map_err(|_| InvalidJwks("not a valid JWK set"))?;
    for jwk in &set.keys {
        let usable = match &jwk.algorithm {
            AlgorithmParameters::RSA(p) => rsa_key(&p.n, &p.e).is_some(),
            AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P384 => {
                ec_p384_key(&p.x, &p.y).is_some()
            }
            // A key that claims RSA or EC but did not parse as one is broken.
            AlgorithmParameters::Other(other) => !matches!(
                other.fields.get("kty").and_then(|k| k.as_str()),
                Some("RSA" | "EC")
            ),
            _ => true,
        };
        if !usable {
            return Err(InvalidJwks("malformed RSA or EC key"));
        }
    }
    Ok(set)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::testkeys::{TestClientKey, hmac_token, unsigned_token};

    const CLIENT: &str = "client-1";
    const TOKEN_URL: &str = "https://fhir.example.org/auth/token";
    const NOW: i64 = 1_750_000_000;

    fn es_key() -> TestClientKey {
        TestClientKey::generate_es384("es-key").unwrap()
    }

    fn rs_key() -> TestClientKey {
        TestClientKey::generate_rs384("rs-key").unwrap()
    }

    fn jwks(keys: &[&TestClientKey]) -> JwkSet {
        let doc = json!({ "keys": keys.iter().map(|k| k.public_jwk()).collect::<Vec<_>>() });
        validate_jwks(&doc.to_string()).unwrap()
    }

    fn verify(token: &str, keys: &JwkSet) -> Result<AssertionClaims, AssertionError> {
        verify_client_assertion(token, Some(CLIENT), TOKEN_URL, keys, NOW)
    }

    fn claims() -> Value {
        TestClientKey::assertion_claims(CLIENT, TOKEN_URL, NOW, "jti-1")
    }

    /// Signs `claims` with the key's own header after applying `edit`.
    fn signed_with_claims(key: &TestClientKey, edit: impl FnOnce(&mut Value)) -> String {
        let mut c = claims();
        edit(&mut c);
        key.sign_with(&key.assertion_header(), &c).unwrap()
    }

    fn signed_with_header(key: &TestClientKey, edit: impl FnOnce(&mut Value)) -> String {
        let mut h = key.assertion_header();
        edit(&mut h);
        key.sign_with(&h, &claims()).unwrap()
    }

    #[test]
    fn valid_es384() {
        let key = es_key();
        let token = key.sign_assertion(CLIENT, TOKEN_URL, NOW, "jti-1").unwrap();
        let got = verify(&token, &jwks(&[&key])).unwrap();
        assert_eq!(got.iss, CLIENT);
        assert_eq!(got.sub, CLIENT);
        assert_eq!(got.aud, TOKEN_URL);
        assert_eq!(got.jti, "jti-1");
        assert_eq!(got.exp, NOW + 240);
        assert_eq!(got.iat, Some(NOW));
    }

    #[test]
    fn valid_rs384_among_several_keys() {
        let (rs, es) = (rs_key(), es_key());
        let token = rs.sign_assertion(CLIENT, TOKEN_URL, NOW, "jti-2").unwrap();
        let got = verify(&token, &jwks(&[&es, &rs])).unwrap();
        assert_eq!(got.jti, "jti-2");
    }

    #[test]
    fn expected_client_id_is_optional() {
        let key = es_key();
        let token = key.sign_assertion(CLIENT, TOKEN_URL, NOW, "j").unwrap();
        let got = verify_client_assertion(&token, None, TOKEN_URL, &jwks(&[&key]), NOW).unwrap();
        assert_eq!(got.iss, CLIENT);
        let err = verify_client_assertion(&token, Some("other"), TOKEN_URL, &jwks(&[&key]), NOW)
            .unwrap_err();
        assert_eq!(err, AssertionError::WrongIssuer);
    }

    #[test]
    fn expiry_window() {
        let key = es_key();
        let keys = jwks(&[&key]);
        let with_exp = |exp: i64| signed_with_claims(&key, |c| c["exp"] = json!(exp));
        assert!(verify(&with_exp(NOW - 30), &keys).is_ok(), "within skew");
        assert_eq!(
            verify(&with_exp(NOW - 60), &keys),
            Err(AssertionError::Expired)
        );
        assert_eq!(
            verify(&with_exp(NOW - 3600), &keys),
            Err(AssertionError::Expired)
        );
        assert!(verify(&with_exp(NOW + 360), &keys).is_ok(), "5 min + skew");
        assert_eq!(
            verify(&with_exp(NOW + 361), &keys),
            Err(AssertionError::ExpiryTooFar)
        );
        assert_eq!(
            verify(&with_exp(NOW + 86_400), &keys),
            Err(AssertionError::ExpiryTooFar)
        );
    }

    #[test]
    fn exp_must_be_an_integer() {
        let key = es_key();
        let keys = jwks(&[&key]);
        let t = signed_with_claims(&key, |c| c["exp"] = json!("soon"));
        assert!(matches!(
            verify(&t, &keys),
            Err(AssertionError::Malformed(_))
        ));
        let t = signed_with_claims(&key, |c| {
            c.as_object_mut().unwrap().remove("exp");
        });
        assert_eq!(verify(&t, &keys), Err(AssertionError::MissingClaim("exp")));
    }

    #[test]
    fn nbf_and_iat_in_future() {
        let key = es_key();
        let keys = jwks(&[&key]);
        let t = signed_with_claims(&key, |c| c["nbf"] = json!(NOW + 61));
        assert_eq!(verify(&t, &keys), Err(AssertionError::NotYetValid));
        let t = signed_with_claims(&key, |c| c["iat"] = json!(NOW + 61));
        assert_eq!(verify(&t, &keys), Err(AssertionError::NotYetValid));
        let t = signed_with_claims(&key, |c| c["nbf"] = json!(NOW + 60));
        assert!(verify(&t, &keys).is_ok());
    }

    #[test]
    fn audience() {
        let key = es_key();
        let keys = jwks(&[&key]);
        let t = signed_with_claims(&key, |c| c["aud"] = json!("https://evil.example/token"));
        assert_eq!(verify(&t, &keys), Err(AssertionError::WrongAudience));
        let t = signed_with_claims(&key, |c| c["aud"] = json!(["https://x", TOKEN_URL]));
        assert_eq!(verify(&t, &keys).unwrap().aud, TOKEN_URL);
        let t = signed_with_claims(&key, |c| c["aud"] = json!(["https://x"]));
        assert_eq!(verify(&t, &keys), Err(AssertionError::WrongAudience));
        let t = signed_with_claims(&key, |c| {
            c.as_object_mut().unwrap().remove("aud");
        });
        assert_eq!(verify(&t, &keys), Err(AssertionError::MissingClaim("aud")));
    }

    #[test]
    fn issuer_and_subject() {
        let key = es_key();
        let keys = jwks(&[&key]);
        let t = signed_with_claims(&key, |c| c["sub"] = json!("someone-else"));
        assert_eq!(verify(&t, &keys), Err(AssertionError::WrongIssuer));
        let t = signed_with_claims(&key, |c| {
            c["iss"] = json!("other");
            c["sub"] = json!("other");
        });
        assert_eq!(verify(&t, &keys), Err(AssertionError::WrongIssuer));
        let t = signed_with_claims(&key, |c| {
            c.as_object_mut().unwrap().remove("sub");
        });
        assert_eq!(verify(&t, &keys), Err(AssertionError::MissingClaim("sub")));
    }

    #[test]
    fn jti_rules() {
        let key = es_key();
        let keys = jwks(&[&key]);
        let t = signed_with_claims(&key, |c| {
            c.as_object_mut().unwrap().remove("jti");
        });
        assert_eq!(verify(&t, &keys), Err(AssertionError::MissingJti));
        let t = signed_with_claims(&key, |c| c["jti"] = json!(""));
        assert_eq!(verify(&t, &keys), Err(AssertionError::MissingJti));
        let t = signed_with_claims(&key, |c| c["jti"] = json!("j".repeat(255)));
        assert!(verify(&t, &keys).is_ok());
        let t = signed_with_claims(&key, |c| c["jti"] = json!("j".repeat(256)));
        assert_eq!(verify(&t, &keys), Err(AssertionError::JtiTooLong));
    }

    #[test]
    fn unknown_missing_and_ambiguous_kid() {
        let key = es_key();
        let keys = jwks(&[&key]);
        let t = signed_with_header(&key, |h| h["kid"] = json!("nope"));
        assert_eq!(verify(&t, &keys), Err(AssertionError::UnknownKey));
        let t = signed_with_header(&key, |h| {
            h.as_object_mut().unwrap().remove("kid");
        });
        assert_eq!(verify(&t, &keys), Err(AssertionError::MissingKeyId));
        // validate_jwks refuses duplicate kids, but a hand-built set must still be safe.
        let twice = JwkSet {
            keys: vec![keys.keys[0].clone(), keys.keys[0].clone()],
        };
        let t = key.sign_assertion(CLIENT, TOKEN_URL, NOW, "j").unwrap();
        assert_eq!(verify(&t, &twice), Err(AssertionError::AmbiguousKey));
    }

    #[test]
    fn alg_none_is_refused() {
        let key = es_key();
        let keys = jwks(&[&key]);
        for alg in ["none", "None", "NONE"] {
            let t = unsigned_token(&json!({"alg": alg, "kid": "es-key"}), &claims());
            assert_eq!(verify(&t, &keys), Err(AssertionError::UnsupportedAlgorithm));
        }
        let t = unsigned_token(&json!({"kid": "es-key"}), &claims());
        assert!(matches!(
            verify(&t, &keys),
            Err(AssertionError::Malformed(_))
        ));
    }

    #[test]
    fn hs384_with_public_key_as_secret_is_refused() {
        let key = rs_key();
        let keys = jwks(&[&key]);
        let header = json!({"alg": "HS384", "typ": "JWT", "kid": "rs-key"});
        for secret in [key.public_key_bytes(), key.jwks_json().into_bytes()] {
            let t = hmac_token(&secret, &header, &claims());
            assert_eq!(verify(&t, &keys), Err(AssertionError::UnsupportedAlgorithm));
        }
    }

    #[test]
    fn other_algorithms_are_refused() {
        let (rs, es) = (rs_key(), es_key());
        let keys = jwks(&[&rs, &es]);
        for (key, alg) in [
            (&rs, "RS256"),
            (&rs, "RS512"),
            (&rs, "PS384"),
            (&es, "ES256"),
            (&es, "ES512"),
            (&es, "EdDSA"),
        ] {
            let t = signed_with_header(key, |h| h["alg"] = json!(alg));
            assert_eq!(
                verify(&t, &keys),
                Err(AssertionError::UnsupportedAlgorithm),
                "{alg}"
            );
        }
    }

    #[test]
    fn kty_must_fit_alg() {
        let (rs, es) = (rs_key(), es_key());
        let keys = jwks(&[&rs, &es]);
        // ES384 header pointing at the RSA key, and RS384 pointing at the EC key.
        let t = signed_with_header(&es, |h| h["kid"] = json!("rs-key"));
        assert_eq!(verify(&t, &keys), Err(AssertionError::KeyMismatch));
        let t = signed_with_header(&rs, |h| h["kid"] = json!("es-key"));
        assert_eq!(verify(&t, &keys), Err(AssertionError::KeyMismatch));
    }

    #[test]
    fn jwk_alg_use_and_key_ops_must_fit() {
        let key = es_key();
        let token = key.sign_assertion(CLIENT, TOKEN_URL, NOW, "j").unwrap();
        let with = |member: &str, value: Value| {
            let mut jwk = key.public_jwk();
            jwk[member] = value;
            validate_jwks(&json!({ "keys": [jwk] }).to_string()).unwrap()
        };
        assert_eq!(
            verify(&token, &with("alg", json!("ES256"))),
            Err(AssertionError::KeyMismatch)
        );
        assert_eq!(
            verify(&token, &with("use", json!("enc"))),
            Err(AssertionError::KeyMismatch)
        );
        assert_eq!(
            verify(&token, &with("key_ops", json!(["encrypt"]))),
            Err(AssertionError::KeyMismatch)
        );
        assert!(verify(&token, &with("key_ops", json!(["verify"]))).is_ok());
        let mut jwk = key.public_jwk();
        jwk.as_object_mut().unwrap().remove("alg");
        jwk.as_object_mut().unwrap().remove("use");
        let keys = validate_jwks(&json!({ "keys": [jwk] }).to_string()).unwrap();
        assert!(verify(&token, &keys).is_ok(), "alg and use are optional");
    }

    #[test]
    fn ec_key_on_wrong_curve_is_refused() {
        let key = es_key();
        let mut jwk = key.public_jwk();
        jwk["crv"] = json!("P-256");
        jwk.as_object_mut().unwrap().remove("alg");
        let keys = validate_jwks(&json!({ "keys": [jwk] }).to_string()).unwrap();
        let token = key.sign_assertion(CLIENT, TOKEN_URL, NOW, "j").unwrap();
        assert_eq!(verify(&token, &keys), Err(AssertionError::KeyMismatch));
    }

    #[test]
    fn tampered_payload_fails_signature() {
        for key in [es_key(), rs_key()] {
            let keys = jwks(&[&key]);
            let token = key.sign_assertion(CLIENT, TOKEN_URL, NOW, "j").unwrap();
            let parts: Vec<&str> = token.split('.').collect();
            let mut c = claims();
            c["jti"] = json!("other");
            let forged = format!(
                "{}.{}.{}",
                parts[0],
                jose::b64url_encode(c.to_string()),
                parts[2]
            );
            assert_eq!(verify(&forged, &keys), Err(AssertionError::BadSignature));
        }
    }

    #[test]
    fn signature_from_another_key_fails() {
        let (a, b) = (es_key(), TestClientKey::generate_es384("es-key").unwrap());
        let token = b.sign_assertion(CLIENT, TOKEN_URL, NOW, "j").unwrap();
        assert_eq!(
            verify(&token, &jwks(&[&a])),
            Err(AssertionError::BadSignature)
        );
    }

    #[test]
    fn typ_and_crit_headers() {
        let key = es_key();
        let keys = jwks(&[&key]);
        let t = signed_with_header(&key, |h| h["typ"] = json!("at+jwt"));
        assert_eq!(verify(&t, &keys), Err(AssertionError::UnsupportedType));
        let t = signed_with_header(&key, |h| {
            h.as_object_mut().unwrap().remove("typ");
        });
        assert!(verify(&t, &keys).is_ok(), "typ is optional");
        let t = signed_with_header(&key, |h| h["crit"] = json!(["exp"]));
        assert!(matches!(
            verify(&t, &keys),
            Err(AssertionError::Malformed(_))
        ));
    }

    #[test]
    fn malformed_tokens() {
        let keys = jwks(&[&es_key()]);
        for bad in [
            "",
            "abc",
            "a.b",
            "a.b.c.d.e",
            "!!!.e30.AA",
            "e30.e30.AA",
            "eyJhbGciOiJFUzM4NCJ9.e30.A=",
        ] {
            assert!(
                matches!(verify(bad, &keys), Err(AssertionError::Malformed(_))),
                "{bad:?}"
            );
        }
        let huge = format!("a.{}.b", "a".repeat(MAX_ASSERTION_LEN));
        assert!(matches!(
            verify(&huge, &keys),
            Err(AssertionError::Malformed(_))
        ));
    }

    #[test]
    fn jsonwebtoken_signed_es384_is_accepted() {
        // Cross-check our JWS handling against an independent signer.
        let key = es_key();
        let enc = jsonwebtoken::EncodingKey::from_ec_der(&key.pkcs8_der().unwrap());
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES384);
        header.kid = Some("es-key".into());
        let token = jsonwebtoken::encode(&header, &claims(), &enc).unwrap();
        assert!(verify(&token, &jwks(&[&key])).is_ok());
    }

    #[test]
    fn peek_reads_unverified_iss() {
        let key = es_key();
        let token = key.sign_assertion(CLIENT, TOKEN_URL, NOW, "j").unwrap();
        assert_eq!(peek_client_id(&token).unwrap(), CLIENT);
        let t = unsigned_token(&json!({"alg": "none"}), &json!({"sub": "x"}));
        assert_eq!(peek_client_id(&t), Err(AssertionError::MissingClaim("iss")));
        assert!(matches!(
            peek_client_id("nonsense"),
            Err(AssertionError::Malformed(_))
        ));
    }

    #[test]
    fn codes_are_distinct() {
        let all = [
            AssertionError::Malformed(""),
            AssertionError::UnsupportedAlgorithm,
            AssertionError::UnsupportedType,
            AssertionError::MissingKeyId,
            AssertionError::UnknownKey,
            AssertionError::AmbiguousKey,
            AssertionError::KeyMismatch,
            AssertionError::BadSignature,
            AssertionError::MissingClaim(""),
            AssertionError::WrongIssuer,
            AssertionError::WrongAudience,
            AssertionError::Expired,
            AssertionError::ExpiryTooFar,
            AssertionError::NotYetValid,
            AssertionError::MissingJti,
            AssertionError::JtiTooLong,
            AssertionError::InvalidJwks(""),
        ];
        let codes: HashSet<_> = all.iter().map(AssertionError::code).collect();
        assert_eq!(codes.len(), all.len());
    }

    #[test]
    fn validate_jwks_accepts_public_keys() {
        let (rs, es) = (rs_key(), es_key());
        let set = jwks(&[&rs, &es]);
        assert_eq!(set.keys.len(), 2);
        assert_eq!(validate_jwks(&rs.jwks_json()).unwrap().keys.len(), 1);
    }

    #[test]
    fn validate_jwks_refusals() {
        let es = es_key();
        let good = es.public_jwk();
        let with = |member: &str, value: Value| {
            let mut jwk = good.clone();
            jwk[member] = value;
            json!({ "keys": [jwk] }).to_string()
        };
        let refused = |doc: &str| matches!(validate_jwks(doc), Err(AssertionError::InvalidJwks(_)));
        assert!(refused("not json"));
        assert!(refused("{}"));
        assert!(refused(r#"{"keys": []}"#));
        assert!(refused(r#"{"keys": {}}"#));
        assert!(refused(r#"{"keys": [1]}"#));
        for private in PRIVATE_MEMBERS {
            assert!(refused(&with(private, json!("AAAA"))), "{private}");
        }
        assert!(refused(
            &json!({"keys": [{"kty": "oct", "kid": "h", "k": "c2VjcmV0"}]}).to_string()
        ));
        assert!(refused(
            &json!({"keys": [{"kty": "oct", "kid": "h"}]}).to_string()
        ));
        let mut no_kid = good.clone();
        no_kid.as_object_mut().unwrap().remove("kid");
        assert!(refused(&json!({ "keys": [no_kid] }).to_string()));
        assert!(refused(&with("kid", json!(""))));
        assert!(refused(&with("kid", json!(7))));
        assert!(refused(&json!({ "keys": [good, good] }).to_string()));
        // Broken key material.
        assert!(refused(&with("x", json!("AAAA"))));
        assert!(refused(&with("y", json!(jose::b64url_encode([7u8; 48])))));
        let mut no_kty = good.clone();
        no_kty.as_object_mut().unwrap().remove("kty");
        assert!(refused(&json!({ "keys": [no_kty] }).to_string()));
        let too_many: Vec<Value> = (0..=MAX_JWKS_KEYS)
            .map(|i| {
                let mut k = good.clone();
                k["kid"] = json!(format!("k{i}"));
                k
            })
            .collect();
        assert!(refused(&json!({ "keys": too_many }).to_string()));
    }

    #[test]
    fn validate_jwks_refuses_small_rsa_and_broken_rsa() {
        let rs = rs_key();
        let mut jwk = rs.public_jwk();
        jwk["n"] = json!(jose::b64url_encode([0xffu8; 128])); // 1024-bit
        assert!(validate_jwks(&json!({ "keys": [jwk] }).to_string()).is_err());
        let mut jwk = rs.public_jwk();
        jwk.as_object_mut().unwrap().remove("n");
        assert!(validate_jwks(&json!({ "keys": [jwk] }).to_string()).is_err());
    }

    #[test]
    fn modulus_bit_count() {
        assert_eq!(modulus_bits(&[]), 0);
        assert_eq!(modulus_bits(&[0, 0]), 0);
        assert_eq!(modulus_bits(&[0, 1]), 1);
        assert_eq!(modulus_bits(&[0x80, 0]), 16);
        assert_eq!(modulus_bits(&[0, 0x7f, 0]), 15);
    }
}
