//! Compact JWS plumbing shared by assertion and token verification: splitting, base64url and header parsing; it must not verify signatures or make trust decisions.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;

/// A compact JWS split into its parts. Nothing here is trusted yet.
pub(crate) struct CompactJws<'a> {
    /// `header.payload`: the bytes the signature covers.
    pub signing_input: &'a str,
    pub header: JoseHeader,
    pub payload_b64: &'a str,
    pub signature: Vec<u8>,
}

/// The JOSE header members we look at. Unknown members are ignored (they cannot
/// change our decisions: `jku`, `jwk`, `x5u` and friends are never used), but
/// `crit` is captured so that it can be refused.
#[derive(Deserialize)]
pub(crate) struct JoseHeader {
    pub alg: String,
    #[serde(default)]
    pub kid: Option<String>,
    #[serde(default)]
    pub typ: Option<String>,
    #[serde(default)]
    pub crit: Option<serde_json::Value>,
}

pub(crate) fn b64url_encode(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Strict base64url: no padding, no whitespace, canonical trailing bits.
pub(crate) fn b64url_decode(s: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(s).ok()
}

/// Splits and decodes a compact JWS; the error is a short reason for `Malformed`.
pub(crate) fn split(token: &str, max_len: usize) -> Result<CompactJws<'_>, &'static str> {
    // Bound the work done on attacker input before any decoding.
    if token.len() > max_len {
        return Err("token too long");
    }
    let (signing_input, signature_b64) = token.rsplit_once('.').ok_or("not a compact JWS")?;
    let (header_b64, payload_b64) = signing_input.split_once('.').ok_or("not a compact JWS")?;
    if payload_b64.contains('.') {
        // Five parts would be a JWE, which we never accept.
        return Err("not a compact JWS");
    }
    let header_json = b64url_decode(header_b64).ok_or("header is not base64url")?;
    // Duplicate members make serde fail, which stops ambiguous headers.
    let header: JoseHeader =
        from_json_object(&header_json).ok_or("header is not a valid JOSE header")?;
    if header.crit.is_some() {
        // RFC 7515 §4.1.11: we understand no extensions, so `crit` must be refused.
        return Err("crit header is not supported");
    }
    let signature = b64url_decode(signature_b64).ok_or("signature is not base64url")?;
    Ok(CompactJws {
        signing_input,
        header,
        payload_b64,
        signature,
    })
}

/// Decodes a base64url JSON payload into `T`.
pub(crate) fn decode_payload<T: serde::de::DeserializeOwned>(
    payload_b64: &str,
) -> Result<T, &'static str> {
    let json = b64url_decode(payload_b64).ok_or("payload is not base64url")?;
    from_json_object(&json).ok_or("payload is not a valid claims object")
}

/// Deserializes `T` from a JSON object only: derived struct deserializers would
/// otherwise also accept a JSON array, which is not a JOSE header or claims set.
fn from_json_object<T: serde::de::DeserializeOwned>(json: &[u8]) -> Option<T> {
    let first = json.iter().find(|b| !b.is_ascii_whitespace())?;
    if *first != b'{' {
        return None;
    }
    serde_json::from_slice(json).ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn token(header: &str) -> String {
        format!("{}.e30.AA", b64url_encode(header))
    }

    #[test]
    fn duplicate_header_members_are_refused() {
        assert!(split(&token(r#"{"alg":"ES384","alg":"none"}"#), 1024).is_err());
        assert!(split(&token(r#"{"alg":"ES384","kid":"a","kid":"b"}"#), 1024).is_err());
        assert!(split(&token(r#"{"alg":"ES384","kid":"a"}"#), 1024).is_ok());
    }

    #[test]
    fn header_must_be_an_object_with_string_alg() {
        assert!(split(&token(r#"["ES384"]"#), 1024).is_err());
        assert!(split(&token(r#"{"alg":384}"#), 1024).is_err());
        assert!(split(&token(r#"{"alg":"ES384","kid":5}"#), 1024).is_err());
    }

    #[test]
    fn padded_or_non_url_base64_is_refused() {
        assert!(b64url_decode("e30=").is_none());
        assert!(b64url_decode("a+b/").is_none());
        assert!(b64url_decode("a-b_").is_some());
    }
}
