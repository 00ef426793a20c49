//! Fhirwall's benchmark harness: the closed-loop HTTPS load generator behind the
//! `fhirwall-bench` binary, its payloads (shared with the criterion benches), and the
//! hello-world TLS ceiling server.

// The load generator is an outside client with its own clock, not part of the server.
#![allow(clippy::disallowed_methods)]

pub mod auth;
pub mod client;
pub mod cpu;
pub mod hello;
pub mod load;
pub mod payloads;
pub mod report;
pub mod server;
pub mod stats;
