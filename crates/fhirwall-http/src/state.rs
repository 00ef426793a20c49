//! What every handler shares: the application, the edge's limits, and the request's
//! correlation id.

use std::time::Duration;

use fhirwall_service::Service;

/// Limits on what a request may carry.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_body_bytes: usize,
    pub max_json_depth: usize,
    /// How long a request body may take to arrive.
    pub body_read_timeout: Duration,
    /// The request line and headers together (HTTP/1.1), or the header list (HTTP/2): past it
    /// a request gets 431 on either protocol.
    pub max_header_bytes: usize,
}

/// What every handler shares: the application and the edge's limits. Cheap to clone.
#[derive(Clone)]
pub struct Edge {
    pub(crate) service: Service,
    pub(crate) limits: Limits,
}

impl Edge {
    pub fn new(service: Service, limits: Limits) -> Self {
        Edge { service, limits }
    }
}

/// The correlation id of a request, generated here for every request.
#[derive(Clone, Debug)]
pub(crate) struct RequestId(pub String);
