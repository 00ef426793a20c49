//! Full-stack tests: each starts the real `fhirwall` binary over real TLS on port 0 with a
//! fresh data directory, and talks to it as an outside client would.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod support;

mod audit;
mod auth;
mod bundles;
mod durability;
mod edge;
mod examples;
mod input;
mod reserve;
mod rest;
mod search;
mod tls;
mod validation;
mod xml;
