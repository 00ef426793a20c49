//! The syntax of `Reference.reference` (references.html): which forms exist and what type each names; it must not resolve anything or read other resources.

use fhirwall_definitions::Definitions;

use crate::primitive::{is_valid_id, is_valid_oid, is_valid_uuid_urn};

/// A parsed `Reference.reference`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ReferenceForm<'r> {
    /// `#id`: a contained resource. An empty id (`#`) is the containing resource itself.
    Local(&'r str),
    /// `Type/id` or `Type/id/_history/vid`.
    Relative { resource_type: &'r str },
    /// `http(s)://server/base/Type/id`: the type when the tail of the URL has that shape.
    Absolute { resource_type: Option<&'r str> },
    /// `urn:uuid:...` or `urn:oid:...`: only meaningful inside a Bundle (or Parameters).
    Urn,
    /// `Type?search`: a conditional reference, only meaningful inside a transaction.
    Conditional { resource_type: &'r str },
}

/// Why a reference was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReferenceSyntaxError {
    Malformed,
    UnknownType,
}

/// Parses a reference string into its form.
pub(crate) fn parse_reference<'r>(
    defs: &Definitions,
    reference: &'r str,
) -> Result<ReferenceForm<'r>, ReferenceSyntaxError> {
    if reference.chars().any(char::is_whitespace) || reference.is_empty() {
        return Err(ReferenceSyntaxError::Malformed);
    }
    if let Some(id) = reference.strip_prefix('#') {
        return if id.is_empty() || is_valid_id(id) {
            Ok(ReferenceForm::Local(id))
        } else {
            Err(ReferenceSyntaxError::Malformed)
        };
    }
    if reference.starts_with("urn:") {
        return if is_valid_uuid_urn(reference) || is_valid_oid(reference) {
            Ok(ReferenceForm::Urn)
        } else {
            Err(ReferenceSyntaxError::Malformed)
        };
    }
    if let Some((scheme, rest)) = reference.split_once("://") {
        let scheme_is_valid = !scheme.is_empty()
            && scheme
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'-' || b == b'.');
        if !scheme_is_valid || rest.is_empty() {
            return Err(ReferenceSyntaxError::Malformed);
        }
        let path = rest.split(['?', '#']).next().unwrap_or(rest);
        return Ok(ReferenceForm::Absolute {
            resource_type: type_of_url_tail(defs, path),
        });
    }
    if let Some((resource_type, _query)) = reference.split_once('?') {
        if !is_type_name(resource_type) {
            return Err(ReferenceSyntaxError::Malformed);
        }
        if !is_concrete_resource_type(defs, resource_type) {
            return Err(ReferenceSyntaxError::UnknownType);
        }
        return Ok(ReferenceForm::Conditional { resource_type });
    }
    let mut parts = reference.split('/');
    let (Some(resource_type), Some(id)) = (parts.next(), parts.next()) else {
        return Err(ReferenceSyntaxError::Malformed);
    };
    let history = match (parts.next(), parts.next(), parts.next()) {
        (None, _, _) => None,
        (Some("_history"), Some(version), None) => Some(version),
        _ => return Err(ReferenceSyntaxError::Malformed),
    };
    if !is_type_name(resource_type)
        || !is_valid_id(id)
        || history.is_some_and(|version| !is_valid_id(version))
    {
        return Err(ReferenceSyntaxError::Malformed);
    }
    if !is_concrete_resource_type(defs, resource_type) {
        return Err(ReferenceSyntaxError::UnknownType);
    }
    Ok(ReferenceForm::Relative { resource_type })
}

fn is_type_name(text: &str) -> bool {
    text.bytes().next().is_some_and(|b| b.is_ascii_uppercase())
        && text.bytes().all(|b| b.is_ascii_alphanumeric())
}

fn is_concrete_resource_type(defs: &Definitions, name: &str) -> bool {
    defs.resource_types()
        .binary_search_by(|known| known.as_str().cmp(name))
        .is_ok()
}

/// The resource type of an absolute URL that ends in `Type/id` or `Type/id/_history/vid`.
fn type_of_url_tail<'r>(defs: &Definitions, path: &'r str) -> Option<&'r str> {
    let mut segments = path.rsplit('/');
    let last = segments.next()?;
    let before = segments.next()?;
    let candidate = if before == "_history" {
        let _id = segments.next()?;
        segments.next()?
    } else {
        let _ = last;
        before
    };
    is_concrete_resource_type(defs, candidate).then_some(candidate)
}

/// The resource type a `targetProfile` URL stands for: a core resource definition by name, or
/// the type of a known profile. `None` when it cannot be told (the target is then unchecked).
pub(crate) fn target_type_of_profile<'d>(
    defs: &'d Definitions,
    profile_url: &'d str,
    registered_type: Option<&'d str>,
) -> Option<&'d str> {
    if let Some(name) = profile_url.strip_prefix("http://hl7.org/fhir/StructureDefinition/")
        && defs.is_resource_type(name)
    {
        return Some(name);
    }
    registered_type
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;

    #[test]
    fn reference_forms() {
        let defs = Definitions::core();
        assert_eq!(
            parse_reference(defs, "Patient/123"),
            Ok(ReferenceForm::Relative {
                resource_type: "Patient"
            })
        );
        assert_eq!(
            parse_reference(defs, "Patient/123/_history/2"),
            Ok(ReferenceForm::Relative {
                resource_type: "Patient"
            })
        );
        assert_eq!(
            parse_reference(defs, "#med1"),
            Ok(ReferenceForm::Local("med1"))
        );
        assert_eq!(parse_reference(defs, "#"), Ok(ReferenceForm::Local("")));
        assert_eq!(
            parse_reference(defs, "http://example.org/fhir/Patient/1"),
            Ok(ReferenceForm::Absolute {
                resource_type: Some("Patient")
            })
        );
        assert_eq!(
            parse_reference(defs, "http://example.org/fhir/Patient/1/_history/3"),
            Ok(ReferenceForm::Absolute {
                resource_type: Some("Patient")
            })
        );
        assert_eq!(
            parse_reference(defs, "https://example.org/some/thing"),
            Ok(ReferenceForm::Absolute {
                resource_type: None
            })
        );
        assert_eq!(
            parse_reference(defs, "urn:uuid:a76d9bbf-f293-4fb7-ad4c-2851cac77162"),
            Ok(ReferenceForm::Urn)
        );
        assert_eq!(
            parse_reference(defs, "Patient?identifier=x|1"),
            Ok(ReferenceForm::Conditional {
                resource_type: "Patient"
            })
        );
        for bad in [
            "Patient",
            "Patient/",
            "Patient/a b",
            "patient/1",
            "Patient/1/2",
            "urn:x:1",
        ] {
            assert!(parse_reference(defs, bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse_reference(defs, "Foo/1"),
            Err(ReferenceSyntaxError::UnknownType)
        );
    }
}
