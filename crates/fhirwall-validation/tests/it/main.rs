//! Integration tests of fhirwall-validation: the specification's examples must pass, a corpus of broken resources must fail with the expected issue; tests only, they must not time anything.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod broken;
mod clock;
mod examples;
mod robustness;
mod support;
mod us_core;
