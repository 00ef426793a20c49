//! A FHIRPath (N1, as FHIR R4 uses it) engine over borrowed `serde_json` trees, with the FHIR
//! additions (extension(), resolve(), memberOf(), %resource...). It must not do I/O, read the
//! system clock (the caller gives the instant of `now()`), print or log (`trace()` is a no-op
//! because values are patient data), or panic on any input.
//!
//! ```
//! use fhirwall_fhirpath::{parse, evaluate, passes, Child, Context, Item, Model};
//! # struct NoModel;
//! # impl Model for NoModel {
//! #     fn child(&self, _: &str, _: &str) -> Option<Child<'_>> { None }
//! #     fn base_type(&self, _: &str) -> Option<&str> { None }
//! #     fn is_resource_type(&self, _: &str) -> bool { false }
//! #     fn is_primitive(&self, _: &str) -> bool { false }
//! # }
//! let patient = serde_json::json!({"resourceType": "Patient", "active": true});
//! let expr = parse("active = true").unwrap();
//! let ctx = Context::new(&NoModel, &patient);
//! // Without a model that knows Patient, navigation falls back to plain JSON lookup.
//! let result = evaluate(&expr, &ctx, Item::untyped(&patient)).unwrap();
//! assert!(passes(&result));
//! ```
//!
//! Semantics follow the HL7 Java validator where the specification leaves room: arguments of
//! functions that do not iterate are evaluated against the function's input collection; `as`
//! on a collection filters instead of failing; `matches()` must match the whole string; a FHIR
//! primitive also `is` its System type (`answer is Boolean` holds for a FHIR `boolean`). Two
//! deviations that R4's own invariants need are on by default and can be turned off with
//! [`Context::with_strict_spec`].

mod ast;
mod decimal;
mod eval;
mod functions;
mod navigate;
mod parser;
mod quantity;
mod temporal;
mod value;

use std::fmt;
use std::sync::Arc;

use serde_json::Value;

pub use ast::TypeSpec;
pub use decimal::Decimal;
pub use parser::{MAX_DEPTH, ParseError};
pub use quantity::Quantity;
pub use temporal::{
    DateTimeValue, Precision, TimeValue, is_fhir_date, is_fhir_date_time, is_fhir_instant,
    is_fhir_time,
};
pub use value::{Collection, Item, Node, Stub, SystemValue};

/// What the engine needs to know about FHIR types. Type names are the FHIR type codes the
/// StructureDefinitions use ("string", "dateTime", "HumanName", "Quantity", "Patient",
/// "Resource"), except backbone elements, which are named by their element path
/// ("Patient.contact", "Questionnaire.item"; contentReference already resolved by the model).
pub trait Model: Send + Sync {
    /// The element `name` (JSON name without `[x]`, e.g. "value" for value[x]) of a value of
    /// type `parent_type`: its possible types (several only for a choice element). None when
    /// there is no such element.
    fn child(&self, parent_type: &str, name: &str) -> Option<Child<'_>>;
    /// The type this one derives from: "Patient"->"DomainResource"->"Resource",
    /// "Age"->"Quantity", "code"->"string", "Patient.contact" -> "BackboneElement" -> "Element";
    /// None at a root.
    fn base_type(&self, type_name: &str) -> Option<&str>;
    /// Whether `name` is a resource type (concrete or abstract: Resource, DomainResource).
    fn is_resource_type(&self, name: &str) -> bool;
    /// Whether `type_name` is a FHIR primitive type (string, boolean, code, dateTime, ...).
    fn is_primitive(&self, type_name: &str) -> bool;
}

/// An element as the model describes it.
#[derive(Clone, Copy, Debug)]
pub struct Child<'a> {
    /// The element's type codes, in the order the definition lists them. System types may be
    /// given as `http://hl7.org/fhirpath/System.String`.
    pub types: &'a [String],
    /// Whether the element is a choice (`value[x]`), whose JSON names carry the type.
    pub is_choice: bool,
}

/// A parsed expression, cheap to clone and share between threads.
#[derive(Clone)]
pub struct Expression {
    inner: Arc<Parsed>,
}

struct Parsed {
    source: String,
    root: ast::Expr,
    reads_clock: bool,
}

impl Expression {
    /// The text the expression was parsed from.
    pub fn source(&self) -> &str {
        &self.inner.source
    }

    /// Whether the expression calls `now()`, `today()` or `timeOfDay()`, which are empty unless
    /// the context has an instant ([`Context::with_now`]). A caller without one can leave such
    /// an expression unevaluated rather than read an empty result as an answer.
    pub fn reads_clock(&self) -> bool {
        self.inner.reads_clock
    }
}

impl fmt::Debug for Expression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Expression")
            .field(&self.inner.source)
            .finish()
    }
}

impl fmt::Display for Expression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.inner.source)
    }
}

/// Parses a FHIRPath expression. Unknown functions and wrong argument counts are syntax
/// errors, so a definition can be checked once when it is loaded.
pub fn parse(source: &str) -> Result<Expression, ParseError> {
    let root = parser::parse_expr(source)?;
    let reads_clock = root.reads_clock();
    Ok(Expression {
        inner: Arc::new(Parsed {
            source: source.to_owned(),
            root,
            reads_clock,
        }),
    })
}

/// Why an evaluation failed. Messages name operators, functions and types, never data values
/// (except a computed regular expression, which comes from the data only when the expression
/// builds one from it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EvalError {
    #[error("{what} expects a single item but got {count}")]
    NotSingleton { what: String, count: usize },
    #[error("{function}() cannot use an input of type {found}")]
    InputType {
        function: &'static str,
        found: String,
    },
    #[error("{function}(): {reason}")]
    Argument {
        function: &'static str,
        reason: String,
    },
    #[error("operator '{op}' cannot combine {left} and {right}")]
    OperandTypes {
        op: &'static str,
        left: String,
        right: String,
    },
    #[error("invalid regular expression {pattern:?}: {reason}")]
    Regex { pattern: String, reason: String },
    #[error("unknown variable %{0}")]
    UnknownVariable(String),
    #[error("{0} produced more than {max} items", max = eval::MAX_ITEMS)]
    TooManyItems(&'static str),
}

/// How `resolve()` turns references into resources, when the caller knows more than the
/// resource at hand (a store, a transaction Bundle being processed...).
pub trait Resolver<'a> {
    /// What `reference` (the text of `Reference.reference`, or a canonical/uri value) points to.
    fn resolve(&self, reference: &'a str) -> Resolution<'a>;
}

/// A [`Resolver`]'s answer.
#[derive(Debug, Clone)]
pub enum Resolution<'a> {
    /// The resource (or a stub of it).
    Found(Item<'a>),
    /// The reference points to nothing that can be found: resolve() yields no item for it.
    NotFound,
    /// Use the built-in rules (contained resources, the Bundle, a stub from the reference text).
    Builtin,
}

/// Terminology and profile checks the engine cannot do itself. `None` means "unknown", which
/// evaluates to an empty collection.
pub trait Hooks: Send + Sync {
    /// `memberOf(valueSet)`: whether a code, Coding or CodeableConcept is in the value set.
    fn member_of(&self, _item: &Item<'_>, _value_set: &str) -> Option<bool> {
        None
    }
    /// `conformsTo(profile)`: whether the item conforms to the profile.
    fn conforms_to(&self, _item: &Item<'_>, _profile: &str) -> Option<bool> {
        None
    }
}

/// Everything an evaluation can see besides its focus.
pub struct Context<'a> {
    model: &'a dyn Model,
    resource: &'a Value,
    root_resource: &'a Value,
    context: Option<Item<'a>>,
    bundle: Option<&'a Value>,
    variables: Vec<(String, Collection<'a>)>,
    resolver: Option<&'a dyn Resolver<'a>>,
    hooks: Option<&'a dyn Hooks>,
    now: Option<DateTimeValue>,
    hl7_compat: bool,
}

impl<'a> Context<'a> {
    /// A context whose `%resource` and `%rootResource` are `resource`.
    pub fn new(model: &'a dyn Model, resource: &'a Value) -> Self {
        Context {
            model,
            resource,
            root_resource: resource,
            context: None,
            bundle: None,
            variables: Vec::new(),
            resolver: None,
            hooks: None,
            now: None,
            hl7_compat: true,
        }
    }

    /// Sets `%rootResource`: the container of a contained `%resource`.
    pub fn with_root_resource(mut self, root: &'a Value) -> Self {
        self.root_resource = root;
        self
    }

    /// Sets `%context` (by default the focus the evaluation starts from).
    pub fn with_context(mut self, context: Item<'a>) -> Self {
        self.context = Some(context);
        self
    }

    /// The Bundle whose entries `resolve()` searches (by default `%rootResource` when it is a
    /// Bundle).
    pub fn with_bundle(mut self, bundle: &'a Value) -> Self {
        self.bundle = Some(bundle);
        self
    }

    /// Defines `%name` (without the `%`). Overrides the built-in constants of the same name.
    pub fn with_variable(mut self, name: impl Into<String>, value: Collection<'a>) -> Self {
        self.variables.push((name.into(), value));
        self
    }

    /// Lets `resolve()` consult the caller first.
    pub fn with_resolver(mut self, resolver: &'a dyn Resolver<'a>) -> Self {
        self.resolver = Some(resolver);
        self
    }

    /// Answers `memberOf()` and `conformsTo()`.
    pub fn with_hooks(mut self, hooks: &'a dyn Hooks) -> Self {
        self.hooks = Some(hooks);
        self
    }

    /// Sets the instant `now()` returns; `today()` and `timeOfDay()` are its date and time of
    /// day. Without one the three are empty: the engine has no clock of its own, so that the
    /// caller reads its clock once per request and every expression of the request sees the
    /// same instant.
    pub fn with_now(mut self, now: DateTimeValue) -> Self {
        self.now = Some(now);
        self
    }

    /// [`Context::with_now`] from milliseconds since the Unix epoch; the instant is in UTC, so
    /// `today()` is the UTC date.
    pub fn with_now_unix_millis(self, millis: i64) -> Self {
        self.with_now(DateTimeValue::from_unix_millis(millis))
    }

    /// Turns off the two behaviours of the HL7 Java engine that R4's invariants rely on and
    /// that differ from the FHIRPath specification (both on by default):
    /// - `startsWith()`, `endsWith()`, `contains()` and `matches()` on an empty input are
    ///   `false` rather than empty (`ref-1` on a Reference without `reference`, `bdl-8` on an
    ///   entry without `fullUrl`);
    /// - `is` / `is()` on an empty input is `false` rather than empty (`ras-2` on a prediction
    ///   without a probability).
    pub fn with_strict_spec(mut self) -> Self {
        self.hl7_compat = false;
        self
    }

    pub fn model(&self) -> &'a dyn Model {
        self.model
    }

    pub fn resource(&self) -> &'a Value {
        self.resource
    }

    pub fn root_resource(&self) -> &'a Value {
        self.root_resource
    }
}

/// Evaluates `expr` with `focus` as its input (and `$this`).
pub fn evaluate<'a>(
    expr: &Expression,
    ctx: &Context<'a>,
    focus: Item<'a>,
) -> Result<Collection<'a>, EvalError> {
    evaluate_collection(expr, ctx, vec![focus])
}

/// Evaluates `expr` with a whole collection as its input.
pub fn evaluate_collection<'a>(
    expr: &Expression,
    ctx: &Context<'a>,
    focus: Collection<'a>,
) -> Result<Collection<'a>, EvalError> {
    eval::Evaluator::new(ctx, &focus).run(&expr.inner.root)
}

/// Invariant semantics of the HL7 Java validator: the result passes only if it is a single
/// true, or a non-empty collection that is not a single false. Empty or false fails.
pub fn passes(result: &[Item<'_>]) -> bool {
    match result {
        [] => false,
        [single] => single.as_bool() != Some(false),
        _ => true,
    }
}

#[cfg(test)]
mod tests;
