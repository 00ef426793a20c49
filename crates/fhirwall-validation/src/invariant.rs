//! The seam between the walkers and FHIRPath: which constraints are checked natively, and evaluation of the others with parsed expressions cached by text; it must not report issues itself.

use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::sync::{Arc, RwLock};

use fhirwall_definitions::{Definitions, Fnv1a};
use fhirwall_fhirpath::{Context, DateTimeValue, Expression, Item};
use serde_json::Value;

use crate::model::DefinitionsModel;

/// Constraints the walkers check in Rust, so their FHIRPath is never evaluated: they hold on
/// almost every element (ele-1, ext-1), need the whole resource (dom-3), or are not
/// expressible in FHIRPath at all (txt-1 and txt-2 use `htmlChecks()`).
pub(crate) const NATIVE_CONSTRAINTS: &[&str] = &[
    "ele-1", "ext-1", "dom-2", "dom-3", "dom-4", "dom-5", "dom-6", "txt-1", "txt-2", "ref-1",
];

/// Whether a constraint key is one the walkers check natively.
pub(crate) fn is_native(key: &str) -> bool {
    NATIVE_CONSTRAINTS.contains(&key)
}

/// How invariants are checked by this build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvariantSupport {
    /// Only the natively checked constraints (ele-1, ext-1, dom-2..dom-6, txt-1, txt-2,
    /// ref-1); other constraints are skipped and reported as one information issue.
    NativeOnly,
    /// Every other constraint with a FHIRPath expression is evaluated.
    FhirPath,
}

/// The node a constraint is evaluated on.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Focus<'j> {
    /// A complex element, backbone element or resource.
    Element(&'j Value),
    /// A primitive: its JSON value and its `_name` object (id and extensions), either absent.
    Primitive {
        value: Option<&'j Value>,
        extension: Option<&'j Value>,
    },
}

/// Where a constraint is evaluated: the focus and its type, `%resource` (the resource that
/// holds the element), `%rootResource` (its container, for contained resources) and the
/// instant of the request, when the caller gave one.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConstraintSite<'j> {
    pub(crate) focus: Focus<'j>,
    pub(crate) focus_type: &'j str,
    pub(crate) resource: &'j Value,
    pub(crate) root_resource: &'j Value,
    pub(crate) now: Option<DateTimeValue>,
}

/// The result of one evaluation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    Pass,
    Fail,
    /// The engine could not evaluate the expression (it does not parse, or evaluation hit an
    /// error); the constraint is neither passed nor failed.
    NotEvaluated,
}

/// (address, length) of an expression's text -> the text and its parsed form.
type ParsedCache =
    HashMap<(usize, usize), (Arc<str>, Option<Expression>), BuildHasherDefault<Fnv1a>>;

/// Evaluates constraint expressions, parsing each distinct text once.
pub(crate) struct ConstraintEngine {
    model: DefinitionsModel,
    /// Parsed expressions keyed by where their source text lives (address and length): the
    /// texts belong to StructureDefinitions that outlive a validation, so the address is a key
    /// that costs nothing to hash, unlike the text. A hit is confirmed by comparing the text,
    /// since a retired profile's memory may be reused. None for text the engine cannot parse.
    parsed: RwLock<ParsedCache>,
}

impl std::fmt::Debug for ConstraintEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConstraintEngine").finish_non_exhaustive()
    }
}

impl ConstraintEngine {
    pub(crate) fn new(defs: &'static Definitions) -> Self {
        ConstraintEngine {
            model: DefinitionsModel::new(defs),
            parsed: RwLock::new(HashMap::default()),
        }
    }

    pub(crate) fn support(&self) -> InvariantSupport {
        InvariantSupport::FhirPath
    }

    /// The parsed form of `source`, parsing it on first use.
    fn expression(&self, source: &str) -> Option<Expression> {
        let key = (source.as_ptr() as usize, source.len());
        {
            let cache = self
                .parsed
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some((text, known)) = cache.get(&key)
                && **text == *source
            {
                return known.clone();
            }
        }
        let parsed = fhirwall_fhirpath::parse(source).ok();
        let mut cache = self
            .parsed
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        cache.insert(key, (Arc::from(source), parsed.clone()));
        parsed
    }

    /// Evaluates `expression` at `site`.
    pub(crate) fn evaluate(&self, expression: &str, site: &ConstraintSite<'_>) -> Verdict {
        let Some(parsed) = self.expression(expression) else {
            return Verdict::NotEvaluated;
        };
        let mut context =
            Context::new(&self.model, site.resource).with_root_resource(site.root_resource);
        match site.now {
            Some(now) => context = context.with_now(now),
            // now() would be empty, and an empty result fails: the resource would be refused
            // for the caller's missing clock, not for its content.
            None if parsed.reads_clock() => return Verdict::NotEvaluated,
            None => {}
        }
        let focus = match site.focus {
            Focus::Element(value) => {
                if value.get("resourceType").is_some() {
                    Item::resource(value)
                } else {
                    Item::node(value, site.focus_type)
                }
            }
            Focus::Primitive { value, extension } => {
                Item::primitive(value, extension, site.focus_type)
            }
        };
        match fhirwall_fhirpath::evaluate(&parsed, &context, focus) {
            // The HL7 validator's reading: a single true (or a non-empty collection that is not
            // a single false) passes, empty fails. The core invariants were written against
            // that engine, whose string functions and `is` answer false on empty input; ours
            // does the same by default, so bdl-8 and ras-2 hold on data they do not apply to.
            Ok(result) if fhirwall_fhirpath::passes(&result) => Verdict::Pass,
            Ok(_) => Verdict::Fail,
            Err(_) => Verdict::NotEvaluated,
        }
    }
}
