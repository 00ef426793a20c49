//! FHIR R4 search semantics as pure functions over JSON trees: which parameters each resource
//! type has (the core package's SearchParameters, plus ones registered at run time), the index
//! keys a resource carries, the parsing of a query parameter into a [`Criterion`], the exact
//! check of a criterion against a resource, and sort keys. It must not do I/O, read a clock,
//! hold keys or know a store: the service turns [`Key`]s into blind terms and plans.
//!
//! The contract with the service: a criterion's [`Plan`] names keys whose postings are a
//! superset of the matches (never missing one); when [`Criterion::plan_is_exact`] is false the
//! service confirms every candidate with [`Criterion::matches`] on the decrypted resource.

mod engine;
mod values;

pub use engine::{Criterion, SearchIndex};

/// What extraction needs to know about the server.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    /// The FHIR base URL (`https://host:port/fhir`): absolute references under it are local.
    pub base_url: &'a str,
}

/// The type of a search parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ParamKind {
    Number,
    Date,
    String,
    Token,
    Reference,
    Composite,
    Quantity,
    Uri,
    Special,
}

impl ParamKind {
    /// The FHIR code (`token`, `date`, ...).
    pub fn code(self) -> &'static str {
        match self {
            ParamKind::Number => "number",
            ParamKind::Date => "date",
            ParamKind::String => "string",
            ParamKind::Token => "token",
            ParamKind::Reference => "reference",
            ParamKind::Composite => "composite",
            ParamKind::Quantity => "quantity",
            ParamKind::Uri => "uri",
            ParamKind::Special => "special",
        }
    }
}

/// One index entry: a domain (the service MACs tenant, resource type, domain and value into a
/// blind term) and a normalised value. Neither is ever stored in the clear.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key {
    pub domain: String,
    pub value: String,
}

/// Which resources may match: an index plan over [`Key`]s.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Resources carrying at least one of these keys (an empty list matches nothing).
    AnyOf(Vec<Key>),
    /// Resources every one of these plans admits.
    All(Vec<Plan>),
    /// No index narrows this criterion: every resource of the type is a candidate.
    Everything,
    /// `_id`: resources with one of these ids (exact; the store has the column).
    Ids(Vec<String>),
    /// `_lastUpdated`: resources whose last update falls in one of these windows (exact; the
    /// store keeps the instant as server metadata, in the clear).
    LastUpdated(Vec<Window>),
}

/// Milliseconds since 1970 (UTC), both ends inclusive; `None` is unbounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub from: Option<i64>,
    pub to: Option<i64>,
}

/// A parameter as the CapabilityStatement lists it.
#[derive(Debug, Clone)]
pub struct ParamInfo {
    pub name: String,
    pub kind: ParamKind,
    /// The SearchParameter's canonical url.
    pub definition: String,
    /// The modifiers this server applies for it (`missing`, `exact`, ...).
    pub modifiers: Vec<&'static str>,
    /// For reference parameters: the types a reference may point to.
    pub targets: Vec<String>,
}

/// Why a query parameter cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueryError {
    /// The type has no parameter of this name (or chain link): a lenient search leaves it out
    /// and reports it; a strict one answers 400.
    UnknownParameter(String),
    /// The parameter exists but the modifier or value is malformed or not supported here: always
    /// a 400. The message says what to fix; it must not echo patient data beyond the parameter
    /// name.
    Invalid(String),
}

/// A criterion the service must resolve across types before it can plan this one.
#[derive(Debug, Clone)]
pub enum Link<'c> {
    /// `param.chain`: the resources of `target_types` that `inner` selects (ask
    /// [`Criterion::for_type`] for each type's form); this criterion holds for resources whose
    /// `param` refers to one of them ([`SearchIndex::reference_keys`]).
    Chain {
        param: &'c str,
        target_types: &'c [String],
        inner: &'c Criterion,
    },
    /// `_has:Type:param:...`: resources of `source_type` that `inner` selects; this criterion
    /// holds for resources that one of them refers to by `param` ([`SearchIndex::references`]).
    Has {
        source_type: &'c str,
        param: &'c str,
        inner: &'c Criterion,
    },
    /// `_list=id`: resources that the List `list_id` names in its entries.
    List { list_id: &'c str },
}

/// A value a resource sorts by.
#[derive(Debug, Clone, PartialEq, PartialOrd)]
pub enum SortKey {
    Number(f64),
    /// Milliseconds since 1970 (UTC) of the start (ascending) or end (descending) of a date.
    Instant(i64),
    /// The normalised string (or token code, or reference).
    Text(String),
}
