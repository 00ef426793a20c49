//! Integrity tags: keyed MACs over what a stored row means (a version, the pointer that makes a
//! version current, a client registration), made here with the tenant's integrity key and
//! checked on every use and by `audit verify`. The AEAD already binds a body to its tenant,
//! type, id and version; the tags also cover what has no body or lies outside it (a deletion,
//! the method, the time, which version is current, a client's scopes and keys), so someone who
//! can write the database but not read the keyring cannot roll a resource back, forge a
//! deletion, or widen a client.

use fhirwall_crypto::MacKey;
use fhirwall_store::{ClientRecord, CurrentVersion, IntegrityTag, ResourceKey, StoredVersion};

use crate::ServiceError;

pub(crate) fn version_tag(key: &MacKey, version: &StoredVersion) -> IntegrityTag {
    let body_hash = version
        .sealed_body
        .as_deref()
        .map(fhirwall_crypto::sha256)
        .unwrap_or([0; 32]);
    IntegrityTag(key.mac(&[
        b"fhirwall-version/1",
        version.key.tenant.as_str().as_bytes(),
        version.key.resource_type.as_str().as_bytes(),
        version.key.id.as_str().as_bytes(),
        &version.version.to_be_bytes(),
        &version.last_updated_micros.to_be_bytes(),
        version.method.as_str().as_bytes(),
        &body_hash,
    ]))
}

pub(crate) fn pointer_tag(key: &MacKey, resource: &ResourceKey, version: u64) -> IntegrityTag {
    IntegrityTag(key.mac(&[
        b"fhirwall-current/1",
        resource.tenant.as_str().as_bytes(),
        resource.resource_type.as_str().as_bytes(),
        resource.id.as_str().as_bytes(),
        &version.to_be_bytes(),
    ]))
}

pub(crate) fn client_tag(key: &MacKey, client: &ClientRecord) -> IntegrityTag {
    let optional = |v: &Option<String>| match v {
        Some(s) => format!("1{s}"),
        None => "0".to_string(),
    };
    IntegrityTag(key.mac(&[
        b"fhirwall-client/1",
        client.tenant.as_str().as_bytes(),
        client.client_id.as_bytes(),
        client.name.as_bytes(),
        optional(&client.jwks).as_bytes(),
        optional(&client.jwks_uri).as_bytes(),
        client.scope.as_bytes(),
        &client.created_unix.to_be_bytes(),
    ]))
}

fn same(key: &MacKey, expected: &IntegrityTag, stored: Option<&IntegrityTag>) -> bool {
    // The comparison is constant-time; `verify` recomputes nothing, so compare via a MAC of
    // both to keep timing independent of where they differ.
    match stored {
        Some(stored) => key.mac(&[b"cmp", &expected.0]) == key.mac(&[b"cmp", &stored.0]),
        None => false,
    }
}

/// Whether a version row is what the server wrote.
pub(crate) fn version_is_genuine(key: &MacKey, version: &StoredVersion) -> bool {
    same(key, &version_tag(key, version), version.tag.as_ref())
}

/// Whether a current pointer and its version are what the server wrote.
pub(crate) fn current_is_genuine(key: &MacKey, current: &CurrentVersion) -> bool {
    version_is_genuine(key, &current.version)
        && same(
            key,
            &pointer_tag(key, &current.version.key, current.version.version),
            current.pointer_tag.as_ref(),
        )
}

pub(crate) fn client_is_genuine(key: &MacKey, client: &ClientRecord) -> bool {
    same(key, &client_tag(key, client), client.tag.as_ref())
}

/// The refusal when stored data fails its tag: the caller learns only the correlation id;
/// the log says which row (by sequence number, never by content).
pub(crate) fn tampered(what: &str, seq: u64) -> ServiceError {
    tracing::error!(
        row = what,
        seq,
        "stored data failed its integrity tag (edited outside the server?); refusing to use it"
    );
    ServiceError::internal()
}
