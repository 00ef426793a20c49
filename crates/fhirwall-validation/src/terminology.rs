//! Binding checks against the expanded value sets the core definitions carry: whether a code, Coding, CodeableConcept or Quantity is in a value set; it must not fetch value sets or call a terminology server.

use fhirwall_definitions::{Definitions, Membership};
use serde_json::Value;

/// The result of checking one bound value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum BindingCheck {
    /// In the value set, or not judgeable here (value set or code system not enumerable).
    Accepted,
    /// No code in the value set.
    NotInValueSet,
    /// A CodeableConcept (or Coding) without any code to check.
    NoCode,
}

/// How many allowed codes a message lists.
const SAMPLE_CODES: usize = 8;

/// Checks a bound value of `type_name` against the value set at `value_set_url`. Values of
/// types that carry no code (or a value set the definitions do not hold) are accepted.
pub(crate) fn check_binding(
    defs: &Definitions,
    value_set_url: &str,
    type_name: &str,
    value: &Value,
) -> BindingCheck {
    let Some(value_set) = defs.value_set(value_set_url) else {
        return BindingCheck::Accepted;
    };
    let judge = |system: Option<&str>, code: &str| value_set.contains(system, code);
    match type_name {
        "code" | "string" | "uri" | "url" | "canonical" | "id" | "markdown" => {
            match value.as_str() {
                Some(code) => verdict(judge(None, code)),
                None => BindingCheck::Accepted,
            }
        }
        "Coding" | "Quantity" | "Age" | "Duration" | "Distance" | "Count" | "SimpleQuantity"
        | "MoneyQuantity" => coding_verdict(value, &judge, type_name == "Coding"),
        "CodeableConcept" => {
            let codings = value
                .get("coding")
                .and_then(Value::as_array)
                .map(Vec::as_slice)
                .unwrap_or_default();
            let mut any_code = false;
            for coding in codings {
                match coding_verdict(coding, &judge, true) {
                    BindingCheck::Accepted => return BindingCheck::Accepted,
                    BindingCheck::NotInValueSet => any_code = true,
                    BindingCheck::NoCode => {}
                }
            }
            if any_code {
                BindingCheck::NotInValueSet
            } else {
                BindingCheck::NoCode
            }
        }
        _ => BindingCheck::Accepted,
    }
}

fn coding_verdict(
    coding: &Value,
    judge: &impl Fn(Option<&str>, &str) -> Membership,
    code_required: bool,
) -> BindingCheck {
    let Some(code) = coding.get("code").and_then(Value::as_str) else {
        return if code_required {
            BindingCheck::NoCode
        } else {
            // A Quantity without a code (a unit only) is not a coded value.
            BindingCheck::Accepted
        };
    };
    let system = coding.get("system").and_then(Value::as_str);
    verdict(judge(system, code))
}

fn verdict(membership: Membership) -> BindingCheck {
    match membership {
        Membership::Member | Membership::Unknown => BindingCheck::Accepted,
        Membership::NotMember => BindingCheck::NotInValueSet,
    }
}

/// "(allowed: a, b, c)" or "(allowed include: a, b, ... )" for a message; codes of a value set
/// are not patient data.
pub(crate) fn allowed_codes_phrase(defs: &Definitions, value_set_url: &str) -> String {
    let Some(value_set) = defs.value_set(value_set_url) else {
        return String::new();
    };
    let samples = value_set.sample_codes(SAMPLE_CODES + 1);
    if samples.is_empty() {
        return String::new();
    }
    let shown: Vec<&str> = samples.iter().take(SAMPLE_CODES).copied().collect();
    if samples.len() > SAMPLE_CODES {
        format!(" (allowed include: {}, ...)", shown.join(", "))
    } else {
        format!(" (allowed: {})", shown.join(", "))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;
    use serde_json::json;

    const GENDER: &str = "http://hl7.org/fhir/ValueSet/administrative-gender";

    #[test]
    fn codes_codings_and_concepts() {
        let defs = Definitions::core();
        assert_eq!(
            check_binding(defs, GENDER, "code", &json!("female")),
            BindingCheck::Accepted
        );
        assert_eq!(
            check_binding(defs, GENDER, "code", &json!("woman")),
            BindingCheck::NotInValueSet
        );
        let coding = json!({"system": "http://hl7.org/fhir/administrative-gender", "code": "male"});
        assert_eq!(
            check_binding(defs, GENDER, "Coding", &coding),
            BindingCheck::Accepted
        );
        let wrong_system = json!({"system": "http://example.org", "code": "male"});
        assert_eq!(
            check_binding(defs, GENDER, "Coding", &wrong_system),
            BindingCheck::NotInValueSet
        );
        let concept = json!({"coding": [wrong_system, coding]});
        assert_eq!(
            check_binding(defs, GENDER, "CodeableConcept", &concept),
            BindingCheck::Accepted
        );
        assert_eq!(
            check_binding(defs, GENDER, "CodeableConcept", &json!({"text": "x"})),
            BindingCheck::NoCode
        );
        assert_eq!(
            allowed_codes_phrase(defs, GENDER),
            " (allowed: female, male, other, unknown)"
        );
    }
}
