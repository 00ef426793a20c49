//! SMART Backend Services authorization primitives: scopes, client assertions, access tokens and client JWKS fetching; it must not do HTTP routing, persistence or replay tracking (callers own those).
//!
//! - [`scope`]: SMART App Launch 2.x scope parsing and checks (v1 and v2 syntax).
//! - [`assertion`]: verification of `private_key_jwt` client assertions (RFC 7523, RFC 8725).
//! - [`token`]: ES384 access tokens issued and verified by this server.
//! - [`jwks_fetch`]: fetching and caching a client's JWKS from its `jwks_uri`.
//! - `testkeys` (feature `test-keys`): client-side key and assertion helpers for tests.

pub mod assertion;
mod jose;
pub mod jwks_fetch;
pub mod scope;
#[cfg(any(test, feature = "test-keys"))]
pub mod testkeys;
pub mod token;

pub use assertion::{
    AssertionClaims, AssertionError, peek_client_id, validate_jwks, verify_client_assertion,
};
pub use jwks_fetch::{FetchError, JwksFetcher};
pub use scope::{Interaction, Scope, ScopeContext, ScopeError, ScopeSet};
pub use token::{
    AccessClaims, IssuedToken, TokenError, TokenIssuer, generate_server_signing_key_pkcs8,
};
