//! Integration tests of fhirwall-xml: the spec's examples round-trip, hand-written XML maps to hand-written JSON, and hostile or malformed documents are refused; they must not need the network.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod cases;
mod fuzz;
mod refusals;
mod round_trip;
