//! Integration tests of the application layer: each builds a real `Service` over a fresh
//! SQLite store and keyring with a manual clock, and calls it as the HTTP edge would, without
//! HTTP. One test binary for the crate; the harness is `support`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod support;

mod auth_limits;
mod bundles;
mod clock;
mod conditional;
mod crud;
mod scopes;
mod search;
mod search_limits;
mod tampering;
mod token;
