//! OperationOutcome: the one shape every error and informational answer takes.

use serde_json::{Value, json};

/// FHIR IssueType codes used by the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IssueType {
    Invalid,
    Structure,
    Required,
    Value,
    Invariant,
    CodeInvalid,
    BusinessRule,
    Extension,
    TooCostly,
    Security,
    Login,
    Forbidden,
    Processing,
    NotSupported,
    Duplicate,
    MultipleMatches,
    NotFound,
    Deleted,
    TooLong,
    Conflict,
    Exception,
    Throttled,
    Timeout,
    Informational,
}

impl IssueType {
    pub fn code(self) -> &'static str {
        match self {
            IssueType::Invalid => "invalid",
            IssueType::Structure => "structure",
            IssueType::Required => "required",
            IssueType::Value => "value",
            IssueType::Invariant => "invariant",
            IssueType::CodeInvalid => "code-invalid",
            IssueType::BusinessRule => "business-rule",
            IssueType::Extension => "extension",
            IssueType::TooCostly => "too-costly",
            IssueType::Security => "security",
            IssueType::Login => "login",
            IssueType::Forbidden => "forbidden",
            IssueType::Processing => "processing",
            IssueType::NotSupported => "not-supported",
            IssueType::Duplicate => "duplicate",
            IssueType::MultipleMatches => "multiple-matches",
            IssueType::NotFound => "not-found",
            IssueType::Deleted => "deleted",
            IssueType::TooLong => "too-long",
            IssueType::Conflict => "conflict",
            IssueType::Exception => "exception",
            IssueType::Throttled => "throttled",
            IssueType::Timeout => "timeout",
            IssueType::Informational => "informational",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IssueSeverity {
    Fatal,
    Error,
    Warning,
    Information,
}

impl IssueSeverity {
    pub fn code(self) -> &'static str {
        match self {
            IssueSeverity::Fatal => "fatal",
            IssueSeverity::Error => "error",
            IssueSeverity::Warning => "warning",
            IssueSeverity::Information => "information",
        }
    }
}

/// The code system of Fhirwall's stable error codes (`issue.details.coding`).
pub const ERROR_CODE_SYSTEM: &str = "https://fhirwall.dev/fhir/CodeSystem/error";
/// The extension that carries the request's correlation id.
pub const CORRELATION_ID_EXTENSION: &str =
    "https://fhirwall.dev/fhir/StructureDefinition/correlation-id";

/// An outcome: its first issue (a stable code, a FHIR issue type, a sentence for people, and
/// optionally the FHIRPath of the element at fault) and any further issues (validation reports
/// one issue per problem).
#[derive(Debug, Clone)]
pub struct OperationOutcome {
    pub severity: IssueSeverity,
    pub issue_type: IssueType,
    pub code: &'static str,
    pub message: String,
    pub expression: Option<String>,
    pub more: Vec<OperationOutcome>,
}

impl OperationOutcome {
    pub fn error(issue_type: IssueType, code: &'static str, message: impl Into<String>) -> Self {
        OperationOutcome {
            severity: IssueSeverity::Error,
            issue_type,
            code,
            message: message.into(),
            expression: None,
            more: Vec::new(),
        }
    }

    /// An outcome of several issues; the first one leads. None when `issues` is empty.
    pub fn from_issues(issues: Vec<OperationOutcome>) -> Option<Self> {
        let mut issues = issues.into_iter();
        let mut first = issues.next()?;
        first.more.extend(issues.map(|mut issue| {
            issue.more.clear();
            issue
        }));
        Some(first)
    }

    pub fn information(code: &'static str, message: impl Into<String>) -> Self {
        OperationOutcome {
            severity: IssueSeverity::Information,
            issue_type: IssueType::Informational,
            code,
            message: message.into(),
            expression: None,
            more: Vec::new(),
        }
    }

    pub fn with_expression(mut self, expression: impl Into<String>) -> Self {
        self.expression = Some(expression.into());
        self
    }

    /// The resource, stamped with the correlation id of the request that produced it.
    pub fn to_json(&self, correlation_id: &str) -> Value {
        let issues: Vec<Value> = std::iter::once(self)
            .chain(self.more.iter())
            .map(|issue| issue.issue_json(correlation_id))
            .collect();
        json!({
            "resourceType": "OperationOutcome",
            "extension": [{"url": CORRELATION_ID_EXTENSION, "valueString": correlation_id}],
            "issue": issues,
        })
    }

    fn issue_json(&self, correlation_id: &str) -> Value {
        let mut issue = json!({
            "severity": self.severity.code(),
            "code": self.issue_type.code(),
            "details": {
                "coding": [{"system": ERROR_CODE_SYSTEM, "code": self.code}],
                "text": self.message,
            },
            "diagnostics": format!("correlation id {correlation_id}"),
        });
        if let Some(expression) = &self.expression {
            put(&mut issue, "expression", json!([expression]));
        }
        issue
    }
}

/// Sets `key` on a JSON object (a no-op on anything else).
fn put(value: &mut Value, key: &str, new: Value) {
    if let Some(map) = value.as_object_mut() {
        map.insert(key.to_string(), new);
    }
}
