//! The HTTPS edge: TLS listener, routing, content negotiation, limits, and the mapping of each
//! request to one call of the application (`fhirwall-service`) and of its reply or error to an
//! HTTP answer. Only this crate knows axum and hyper. It must hold no domain logic: no
//! interaction, no write pipeline, no token rule; it seals, stores and audits nothing itself.

mod auth;
mod error;
mod fhir;
mod formats;
mod negotiate;
mod server;
mod state;
pub mod tls;

pub use server::{BoundServer, bind};
pub use state::{Edge, Limits};
