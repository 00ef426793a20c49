//! Integration tests of fhirwall-fhirpath against the FHIR R4 core and examples packages; they
//! must only read the packages, and skip when the packages are absent.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod corpus;
mod model;
