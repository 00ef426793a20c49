//! The HTTPS edge: TLS listener, routing, content negotiation, authentication of every request,
//! the FHIR REST interactions and the token endpoint. Only this crate knows axum and hyper.
//! It must not touch SQL or raw key material: it seals and opens through `fhirwall-crypto`
//! and stores through the `fhirwall-store` interface.

// Refusals carry a whole OperationOutcome (several issues for a validation failure); they are
// built once per failed request, so their size does not matter.
#![allow(clippy::result_large_err)]

mod audit_api;
mod audit_trail;
mod auth;
mod capability;
mod error;
mod fhir;
mod formats;
mod negotiate;
mod server;
mod state;
pub mod tls;
mod validation;

pub use server::{BoundServer, bind};
pub use state::{AppState, Clock, Limits};
