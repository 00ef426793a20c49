//! Validation issues and the bounded collector that gathers them; it must never put an instance's values (possible patient data) into a message.

/// How bad an issue is; `Error` and `Fatal` make a resource invalid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    Fatal,
    Error,
    Warning,
    Information,
}

impl Severity {
    /// The FHIR `IssueSeverity` code.
    pub fn code(self) -> &'static str {
        match self {
            Severity::Fatal => "fatal",
            Severity::Error => "error",
            Severity::Warning => "warning",
            Severity::Information => "information",
        }
    }

    /// Whether an issue of this severity makes the resource invalid.
    pub fn is_error(self) -> bool {
        matches!(self, Severity::Fatal | Severity::Error)
    }
}

/// The FHIR `IssueType` of an issue. The HTTP layer maps these onto its own outcome type; the
/// validator keeps its own list because it needs codes (`code-invalid`, `extension`) the
/// server's general outcome type does not carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IssueCode {
    /// The JSON does not have the shape FHIR JSON defines (unknown element, wrong JSON type,
    /// array where a single value belongs, null, empty value, no resourceType). Only the base
    /// pass uses it, never a profile, so a caller can answer 400 for it and 422 for the rest.
    Structure,
    /// A required element or slice is missing.
    Required,
    /// A value is not allowed (format, fixed value, pattern, narrative content).
    Value,
    /// An invariant (FHIRPath constraint) failed.
    Invariant,
    /// A code is not in the value set of a required binding.
    CodeInvalid,
    /// Something is wrong that no narrower code describes (references, profiles).
    Invalid,
    /// An extension could not be accepted, such as a modifier extension the server does not know.
    Extension,
    /// The validator cannot check what was asked (an unknown profile).
    NotSupported,
    /// A rule of the business domain failed.
    BusinessRule,
    /// Validation stopped early because of the amount of issues or work.
    TooCostly,
    /// Advice only.
    Informational,
}

impl IssueCode {
    /// The FHIR `IssueType` code.
    pub fn code(self) -> &'static str {
        match self {
            IssueCode::Structure => "structure",
            IssueCode::Required => "required",
            IssueCode::Value => "value",
            IssueCode::Invariant => "invariant",
            IssueCode::CodeInvalid => "code-invalid",
            IssueCode::Invalid => "invalid",
            IssueCode::Extension => "extension",
            IssueCode::NotSupported => "not-supported",
            IssueCode::BusinessRule => "business-rule",
            IssueCode::TooCostly => "too-costly",
            IssueCode::Informational => "informational",
        }
    }
}

/// One finding about one element of the validated resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    pub severity: Severity,
    pub code: IssueCode,
    /// A stable machine id of the rule that failed (`unknown-element`, `cardinality-min`).
    pub rule: &'static str,
    /// The JSON-shaped FHIRPath of the element: `Patient.name[0].given[1]`,
    /// `Observation.valueQuantity.value`.
    pub expression: String,
    /// A sentence naming the element and the rule; never the offending value.
    pub message: String,
    /// The key of the failed constraint (`pat-1`, `dom-3`), when the rule is an invariant.
    pub constraint_key: Option<String>,
}

/// The result of one validation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    pub issues: Vec<Issue>,
}

impl Outcome {
    /// Whether no issue is an error or fatal.
    pub fn is_valid(&self) -> bool {
        !self.issues.iter().any(|issue| issue.severity.is_error())
    }

    /// The issues that make the resource invalid.
    pub fn errors(&self) -> impl Iterator<Item = &Issue> {
        self.issues.iter().filter(|issue| issue.severity.is_error())
    }
}

/// How many errors, and separately how many warnings and notes, one validation keeps before
/// it summarises the rest in one issue.
pub(crate) const MAX_ISSUES: usize = 100;

/// Collects issues, drops exact repeats (the base pass and a profile pass can find the same
/// fault in the same words) and stops growing at [`MAX_ISSUES`] of each kind.
/// Walkers stop early once the errors are full (the resource is invalid whatever follows), but
/// never because of warnings: a large valid Bundle may carry many warnings and must still pass.
#[derive(Debug, Default)]
pub(crate) struct IssueSink {
    issues: Vec<Issue>,
    errors: usize,
    others: usize,
    dropped: usize,
}

impl IssueSink {
    pub(crate) fn push(&mut self, issue: Issue) {
        if self.issues.iter().any(|known| {
            known.rule == issue.rule
                && known.expression == issue.expression
                && known.constraint_key == issue.constraint_key
                && known.message == issue.message
        }) {
            return;
        }
        let count = if issue.severity.is_error() {
            &mut self.errors
        } else {
            &mut self.others
        };
        if *count >= MAX_ISSUES {
            self.dropped += 1;
            return;
        }
        *count += 1;
        self.issues.push(issue);
    }

    /// Whether the errors are full, so walkers can stop doing work nobody will see.
    pub(crate) fn is_full(&self) -> bool {
        self.errors >= MAX_ISSUES
    }

    pub(crate) fn error_count(&self) -> usize {
        self.errors
    }

    pub(crate) fn len(&self) -> usize {
        self.issues.len()
    }

    /// Removes issues pushed after `mark`, for trial validations (slice matching by profile).
    pub(crate) fn truncate(&mut self, mark: usize) {
        for issue in self.issues.get(mark..).unwrap_or_default() {
            if issue.severity.is_error() {
                self.errors = self.errors.saturating_sub(1);
            } else {
                self.others = self.others.saturating_sub(1);
            }
        }
        self.issues.truncate(mark);
    }

    pub(crate) fn finish(mut self, root: &str) -> Outcome {
        if self.dropped > 0 || self.is_full() {
            let severity = if self.errors > 0 {
                Severity::Error
            } else {
                Severity::Warning
            };
            self.issues.push(Issue {
                severity,
                code: IssueCode::TooCostly,
                rule: "too-many-issues",
                expression: root.to_owned(),
                message: format!(
                    "Validation stopped listing issues after {MAX_ISSUES} of a kind; the resource has more."
                ),
                constraint_key: None,
            });
        }
        Outcome {
            issues: self.issues,
        }
    }
}
