//! The one mapping from failures to HTTP: an OperationOutcome with a stable code and the
//! request's correlation id. Internal detail goes to the log, never to the client.

use axum::response::{IntoResponse, Response};
use fhirwall_model::{IssueType, OperationOutcome};
use http::{HeaderValue, StatusCode, header};

/// An error answer.
#[derive(Debug)]
pub(crate) struct ApiError {
    pub status: StatusCode,
    pub outcome: OperationOutcome,
    /// Extra headers (WWW-Authenticate for 401s).
    pub www_authenticate: Option<String>,
}

impl ApiError {
    pub fn new(
        status: StatusCode,
        issue: IssueType,
        code: &'static str,
        message: impl Into<String>,
    ) -> Self {
        ApiError {
            status,
            outcome: OperationOutcome::error(issue, code, message),
            www_authenticate: None,
        }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, IssueType::Invalid, code, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            IssueType::NotFound,
            "not-found",
            message,
        )
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            IssueType::Forbidden,
            "insufficient-scope",
            message,
        )
    }

    /// A failure of ours: the client learns only the correlation id.
    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            IssueType::Exception,
            "internal-error",
            "The server could not complete the request; quote the correlation id to the operator.",
        )
    }

    pub fn unavailable() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            IssueType::Exception,
            "unavailable",
            "The server is not accepting this request now; retry later.",
        )
    }

    pub fn with_expression(mut self, expression: impl Into<String>) -> Self {
        self.outcome = self.outcome.with_expression(expression);
        self
    }

    pub fn into_response_with(self, request_id: &str) -> Response {
        let body = self.outcome.to_json(request_id);
        let mut response =
            (self.status, crate::negotiate::fhir_json_bytes(&body, false)).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(crate::negotiate::FHIR_JSON),
        );
        if let Some(challenge) = self.www_authenticate
            && let Ok(value) = HeaderValue::from_str(&challenge)
        {
            headers.insert(header::WWW_AUTHENTICATE, value);
        }
        response
    }
}

impl From<fhirwall_store::StoreError> for ApiError {
    fn from(error: fhirwall_store::StoreError) -> Self {
        tracing::error!(error = %error, "store failure");
        match error {
            fhirwall_store::StoreError::Closed => ApiError::unavailable(),
            _ => ApiError::internal(),
        }
    }
}

impl From<fhirwall_crypto::CryptoError> for ApiError {
    fn from(error: fhirwall_crypto::CryptoError) -> Self {
        tracing::error!(error = %error, "crypto failure");
        ApiError::internal()
    }
}
