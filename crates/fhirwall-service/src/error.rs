//! Domain errors: what went wrong, as a kind (which FHIR names by an HTTP status, since
//! transaction responses carry one) and an OperationOutcome for the caller. Internal detail
//! goes to the log beside the correlation id, never into the outcome.

use fhirwall_model::{IssueType, OperationOutcome};

/// What kind of refusal or failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    Invalid,
    Unauthenticated,
    Forbidden,
    NotFound,
    MethodNotAllowed,
    NotAcceptable,
    Timeout,
    Conflict,
    Gone,
    PreconditionFailed,
    TooLarge,
    UnsupportedMediaType,
    Unprocessable,
    TooManyRequests,
    HeadersTooLarge,
    Internal,
    /// The store's disk is below its reserve: writes wait until space is freed.
    InsufficientStorage,
    Unavailable,
}

impl ErrorKind {
    /// The status FHIR gives this kind, in answers and in Bundle entry responses.
    pub fn status(self) -> u16 {
        match self {
            ErrorKind::Invalid => 400,
            ErrorKind::Unauthenticated => 401,
            ErrorKind::Forbidden => 403,
            ErrorKind::NotFound => 404,
            ErrorKind::MethodNotAllowed => 405,
            ErrorKind::NotAcceptable => 406,
            ErrorKind::Timeout => 408,
            ErrorKind::Conflict => 409,
            ErrorKind::Gone => 410,
            ErrorKind::PreconditionFailed => 412,
            ErrorKind::TooLarge => 413,
            ErrorKind::UnsupportedMediaType => 415,
            ErrorKind::Unprocessable => 422,
            ErrorKind::TooManyRequests => 429,
            ErrorKind::HeadersTooLarge => 431,
            ErrorKind::Internal => 500,
            ErrorKind::InsufficientStorage => 507,
            ErrorKind::Unavailable => 503,
        }
    }
}

/// A refusal or failure, with the OperationOutcome the caller receives.
#[derive(Debug, Clone)]
pub struct ServiceError {
    pub kind: ErrorKind,
    pub outcome: OperationOutcome,
    /// For 401s: the `error` of the bearer challenge (RFC 6750), when a token was presented.
    pub bearer_error: Option<&'static str>,
}

impl ServiceError {
    pub fn new(
        kind: ErrorKind,
        issue: IssueType,
        code: &'static str,
        message: impl Into<String>,
    ) -> Self {
        ServiceError {
            kind,
            outcome: OperationOutcome::error(issue, code, message),
            bearer_error: None,
        }
    }

    pub fn invalid(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Invalid, IssueType::Invalid, code, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(
            ErrorKind::NotFound,
            IssueType::NotFound,
            "not-found",
            message,
        )
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(
            ErrorKind::Forbidden,
            IssueType::Forbidden,
            "insufficient-scope",
            message,
        )
    }

    pub fn gone(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Gone, IssueType::Deleted, "deleted", message)
    }

    pub fn precondition_failed(message: impl Into<String>) -> Self {
        Self::new(
            ErrorKind::PreconditionFailed,
            IssueType::Conflict,
            "precondition-failed",
            message,
        )
    }

    pub fn not_supported(message: impl Into<String>) -> Self {
        Self::new(
            ErrorKind::NotFound,
            IssueType::NotSupported,
            "not-supported",
            message,
        )
    }

    pub fn method_not_allowed() -> Self {
        Self::new(
            ErrorKind::MethodNotAllowed,
            IssueType::NotSupported,
            "method-not-allowed",
            "This interaction is not supported at this address.",
        )
    }

    pub fn write_contention() -> Self {
        Self::new(
            ErrorKind::Conflict,
            IssueType::Conflict,
            "write-contention",
            "The resource is being changed by others; retry.",
        )
    }

    /// A failure of ours: the caller learns only the correlation id.
    pub fn internal() -> Self {
        Self::new(
            ErrorKind::Internal,
            IssueType::Exception,
            "internal-error",
            "The server could not complete the request; quote the correlation id to the operator.",
        )
    }

    pub fn unavailable() -> Self {
        Self::new(
            ErrorKind::Unavailable,
            IssueType::Exception,
            "unavailable",
            "The server is not accepting this request now; retry later.",
        )
    }

    pub fn with_expression(mut self, expression: impl Into<String>) -> Self {
        self.outcome = self.outcome.with_expression(expression);
        self
    }

    pub fn with_kind(mut self, kind: ErrorKind) -> Self {
        self.kind = kind;
        self
    }

    pub fn status(&self) -> u16 {
        self.kind.status()
    }
}

impl std::fmt::Display for ServiceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.outcome.code, self.kind.status())
    }
}

impl std::error::Error for ServiceError {}

impl From<fhirwall_store::StoreError> for ServiceError {
    fn from(error: fhirwall_store::StoreError) -> Self {
        tracing::error!(error = %error, "store failure");
        match error {
            fhirwall_store::StoreError::Closed => ServiceError::unavailable(),
            _ => ServiceError::internal(),
        }
    }
}

impl From<fhirwall_crypto::CryptoError> for ServiceError {
    fn from(error: fhirwall_crypto::CryptoError) -> Self {
        tracing::error!(error = %error, "crypto failure");
        ServiceError::internal()
    }
}
