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
    // The body's own integrity is the AEAD's: its ciphertext ends in a GCM tag that no one
    // without the data key can make for another plaintext. Binding the row to that tag (and
    // the length) binds it to this ciphertext without hashing the whole body on every read.
    let sealed = version.sealed_body.as_deref().unwrap_or_default();
    let aead_tag = sealed
        .get(sealed.len().saturating_sub(16)..)
        .unwrap_or_default();
    IntegrityTag(key.mac(&[
        b"fhirwall-version/1",
        version.key.tenant.as_str().as_bytes(),
        version.key.resource_type.as_str().as_bytes(),
        version.key.id.as_str().as_bytes(),
        &version.version.to_be_bytes(),
        &version.last_updated_micros.to_be_bytes(),
        version.method.as_str().as_bytes(),
        &(sealed.len() as u64).to_be_bytes(),
        aead_tag,
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

fn same(expected: &IntegrityTag, stored: Option<&IntegrityTag>) -> bool {
    stored.is_some_and(|stored| fhirwall_crypto::constant_time_eq(&expected.0, &stored.0))
}

/// Whether a version row is what the server wrote.
pub(crate) fn version_is_genuine(key: &MacKey, version: &StoredVersion) -> bool {
    same(&version_tag(key, version), version.tag.as_ref())
}

/// Whether a current pointer and its version are what the server wrote.
pub(crate) fn current_is_genuine(key: &MacKey, current: &CurrentVersion) -> bool {
    version_is_genuine(key, &current.version)
        && same(
            &pointer_tag(key, &current.version.key, current.version.version),
            current.pointer_tag.as_ref(),
        )
}

pub(crate) fn client_is_genuine(key: &MacKey, client: &ClientRecord) -> bool {
    same(&client_tag(key, client), client.tag.as_ref())
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
