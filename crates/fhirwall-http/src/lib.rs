//! The HTTPS edge: TLS listener, routing, content negotiation, authentication of every request,
//! the FHIR REST interactions and the token endpoint. Only this crate knows axum and hyper.
//! It must not touch SQL or raw key material: it seals and opens through `fhirwall-crypto`
//! and stores through the `fhirwall-store` interface.

mod audit_api;
mod audit_trail;
mod auth;
mod capability;
mod error;
mod fhir;
mod negotiate;
mod server;
mod state;
pub mod tls;

pub use server::{BoundServer, bind};
pub use state::{AppState, Clock, Limits};
