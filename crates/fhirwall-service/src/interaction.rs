//! What a caller asks for, as typed values: the FHIR interaction with its resource type and
//! id, the query parameters, the preconditions and preferences, and the body already turned
//! into FHIR JSON by the edge. And what the service answers: a [`Reply`].
//! Protocol details (headers, media types, percent-encoding) stay at the edge.

use fhirwall_audit::Action;
use fhirwall_auth::Interaction as Permission;
use fhirwall_model::{ResourceId, ResourceType, Timestamp};
use serde_json::Value;

use crate::{ErrorKind, ServiceError};

/// A FHIR RESTful interaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Interaction {
    Read(ResourceType, ResourceId),
    /// The version as given in the path; a version that is not a positive number is not found.
    Vread(ResourceType, ResourceId, String),
    Create(ResourceType),
    Update(ResourceType, ResourceId),
    Patch(ResourceType, ResourceId),
    Delete(ResourceType, ResourceId),
    SearchType(ResourceType),
    /// `GET /fhir` (`_type` names the types).
    SearchSystem,
    /// `GET /fhir/Patient/ID/Type` (None: `*`, every type of the compartment).
    SearchCompartment(ResourceType, ResourceId, Option<ResourceType>),
    ConditionalUpdate(ResourceType),
    ConditionalDelete(ResourceType),
    HistoryType(ResourceType),
    HistoryInstance(ResourceType, ResourceId),
    HistorySystem,
    /// `$validate` at type level (None) or instance level.
    Validate(ResourceType, Option<ResourceId>),
    /// A batch or transaction Bundle posted to the base.
    Bundle,
    /// `$reindex` at system level: POST starts the job (`start`), GET tells its progress.
    Reindex {
        start: bool,
    },
}

impl Interaction {
    /// The restful-interaction code the audit record carries.
    pub fn subtype(&self) -> &'static str {
        match self {
            Interaction::Read(..) => "read",
            Interaction::Vread(..) => "vread",
            Interaction::Create(..) => "create",
            Interaction::Update(..) | Interaction::ConditionalUpdate(..) => "update",
            Interaction::Patch(..) => "patch",
            Interaction::Delete(..) | Interaction::ConditionalDelete(..) => "delete",
            Interaction::SearchType(..) | Interaction::SearchCompartment(..) => "search-type",
            Interaction::SearchSystem => "search-system",
            Interaction::HistoryType(..) => "history-type",
            Interaction::HistoryInstance(..) => "history-instance",
            Interaction::HistorySystem => "history-system",
            Interaction::Validate(..) => "validate",
            Interaction::Bundle => "batch",
            Interaction::Reindex { .. } => "operation",
        }
    }

    pub fn action(&self) -> Action {
        match self {
            Interaction::Create(..) => Action::Create,
            Interaction::Update(..)
            | Interaction::Patch(..)
            | Interaction::ConditionalUpdate(..) => Action::Update,
            Interaction::Delete(..) | Interaction::ConditionalDelete(..) => Action::Delete,
            Interaction::SearchType(..)
            | Interaction::SearchSystem
            | Interaction::SearchCompartment(..)
            | Interaction::HistoryType(..)
            | Interaction::HistorySystem
            | Interaction::Validate(..)
            | Interaction::Reindex { .. }
            | Interaction::Bundle => Action::Execute,
            Interaction::Read(..) | Interaction::Vread(..) | Interaction::HistoryInstance(..) => {
                Action::Read
            }
        }
    }

    pub fn resource_type(&self) -> Option<&ResourceType> {
        match self {
            Interaction::Read(t, _)
            | Interaction::Vread(t, _, _)
            | Interaction::Create(t)
            | Interaction::Update(t, _)
            | Interaction::Patch(t, _)
            | Interaction::Delete(t, _)
            | Interaction::SearchType(t)
            | Interaction::ConditionalUpdate(t)
            | Interaction::ConditionalDelete(t)
            | Interaction::HistoryType(t)
            | Interaction::HistoryInstance(t, _)
            | Interaction::Validate(t, _) => Some(t),
            Interaction::SearchCompartment(_, _, t) => t.as_ref(),
            Interaction::HistorySystem
            | Interaction::Bundle
            | Interaction::SearchSystem
            | Interaction::Reindex { .. } => None,
        }
    }

    /// The resource the path names, as the audit record's entity.
    pub fn entity(&self) -> Option<String> {
        match self {
            Interaction::Read(t, id)
            | Interaction::Validate(t, Some(id))
            | Interaction::Update(t, id)
            | Interaction::Patch(t, id)
            | Interaction::Delete(t, id)
            | Interaction::HistoryInstance(t, id)
            | Interaction::SearchCompartment(t, id, _) => Some(format!("{t}/{id}")),
            Interaction::Vread(t, id, vid) => Some(format!("{t}/{id}/_history/{vid}")),
            _ => None,
        }
    }

    /// The SMART permissions the interaction needs before it looks at any data.
    pub fn permissions(&self, conditional_create: bool) -> Vec<Permission> {
        match self {
            Interaction::Read(..) | Interaction::Vread(..) | Interaction::HistoryInstance(..) => {
                vec![Permission::Read]
            }
            Interaction::Create(..) if conditional_create => {
                vec![Permission::Create, Permission::Search]
            }
            Interaction::Create(..) => vec![Permission::Create],
            Interaction::Update(..) => vec![Permission::Update],
            // A patch is computed from the current content, and whether it applies (a `test`
            // op, a path that must exist) tells what that content is: it needs read rights.
            Interaction::Patch(..) => vec![Permission::Update, Permission::Read],
            Interaction::Delete(..) => vec![Permission::Delete],
            Interaction::SearchType(..)
            | Interaction::HistoryType(..)
            | Interaction::HistorySystem => vec![Permission::Search],
            Interaction::ConditionalUpdate(..) => vec![Permission::Update, Permission::Search],
            Interaction::ConditionalDelete(..) => vec![Permission::Delete, Permission::Search],
            // Validating a proposed resource reads nothing stored; asking about an existing
            // one (mode update or delete) tells whether it exists.
            Interaction::Validate(_, None) => vec![Permission::Create],
            Interaction::Validate(_, Some(_)) => vec![Permission::Read],
            // The search checks each type it covers (a compartment's `*` or `_type`).
            Interaction::SearchSystem | Interaction::SearchCompartment(_, _, None) => Vec::new(),
            Interaction::SearchCompartment(_, _, Some(_)) => vec![Permission::Search],
            // Each entry is checked as the request it stands for.
            Interaction::Bundle => Vec::new(),
            // Reindexing reads and rewrites the index of every type: it takes full rights.
            Interaction::Reindex { start: true } => {
                vec![Permission::Read, Permission::Update]
            }
            Interaction::Reindex { start: false } => vec![Permission::Read],
        }
    }
}

/// `Prefer: return=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReturnPreference {
    Minimal,
    #[default]
    Representation,
    OperationOutcome,
}

/// The preconditions a request carries (HTTP conditional headers, or a Bundle entry's).
#[derive(Debug, Clone, Default)]
pub struct Conditions {
    /// `If-Match`, as given.
    pub if_match: Option<String>,
    /// `If-None-Match` on a read, as given.
    pub if_none_match: Option<String>,
    pub if_modified_since: Option<Timestamp>,
    /// `If-None-Exist` on a create: a query string, with or without `Type?`.
    pub if_none_exist: Option<String>,
}

/// One request to the service.
#[derive(Debug, Clone)]
pub struct Request {
    pub interaction: Interaction,
    /// The query parameters, decoded, in order.
    pub params: Vec<(String, String)>,
    pub conditions: Conditions,
    pub return_preference: ReturnPreference,
    /// Whether the client stated `Prefer: return=` at all. A transaction or batch answers
    /// each entry with its resource only when asked to (the response alone otherwise), since
    /// a large Bundle would otherwise come back whole.
    pub return_stated: bool,
    /// `Prefer: handling=strict`: an unsupported search parameter is an error, not ignored.
    pub strict_handling: bool,
    /// The body as FHIR JSON (a resource, a JSON Patch document, or `$validate`'s input).
    pub body: Option<Value>,
}

impl Request {
    pub fn new(interaction: Interaction) -> Self {
        Request {
            interaction,
            params: Vec::new(),
            conditions: Conditions::default(),
            return_preference: ReturnPreference::default(),
            return_stated: false,
            strict_handling: false,
            body: None,
        }
    }

    pub fn with_body(mut self, body: Value) -> Self {
        self.body = Some(body);
        self
    }

    pub fn with_params(mut self, params: Vec<(String, String)>) -> Self {
        self.params = params;
        self
    }

    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Where the answer's resource lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// The full URL of the version (`.../Patient/1/_history/2`).
    pub url: String,
    /// Whether the request created it (then it is also the `Location`).
    pub created: bool,
}

/// A successful answer.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    /// Compact FHIR JSON, or nothing.
    pub body: Option<Vec<u8>>,
    /// The version and time of the resource the answer is about (ETag, Last-Modified).
    pub version: Option<(u64, Timestamp)>,
    pub location: Option<Location>,
}

impl Reply {
    pub fn status(status: u16) -> Self {
        Reply {
            status,
            body: None,
            version: None,
            location: None,
        }
    }

    pub fn json(status: u16, body: Vec<u8>) -> Self {
        Reply {
            status,
            body: Some(body),
            version: None,
            location: None,
        }
    }
}

fn parse_type(name: &str) -> Result<ResourceType, ServiceError> {
    ResourceType::parse(name).map_err(|_| {
        ServiceError::new(
            ErrorKind::NotFound,
            fhirwall_model::IssueType::NotSupported,
            "unknown-resource-type",
            "The path does not name a FHIR R4 resource type.",
        )
    })
}

fn parse_id(id: &str) -> Result<ResourceId, ServiceError> {
    ResourceId::parse(id).map_err(|_| {
        ServiceError::invalid(
            "invalid-id",
            "A resource id is 1 to 64 characters of A-Z, a-z, 0-9, '-' and '.'.",
        )
    })
}

impl Interaction {
    /// The interaction a method and the path's segments below the FHIR base ask for: the one
    /// routing rule, for HTTP requests and for Bundle entries alike.
    pub fn route(method: &str, segs: &[&str]) -> Result<Interaction, ServiceError> {
        route(method, segs)
    }
}

fn route(method: &str, segs: &[&str]) -> Result<Interaction, ServiceError> {
    let operation_not_supported =
        || ServiceError::not_supported("This operation is not supported by this server.");
    let interaction = match segs {
        [] if method == "POST" => Interaction::Bundle,
        [] if method == "GET" => Interaction::SearchSystem,
        [] => return Err(ServiceError::method_not_allowed()),
        ["_search"] if method == "POST" => Interaction::SearchSystem,
        ["$reindex"] if method == "POST" => Interaction::Reindex { start: true },
        ["$reindex"] if method == "GET" => Interaction::Reindex { start: false },
        ["$reindex"] => return Err(ServiceError::method_not_allowed()),
        ["_history"] if method == "GET" => Interaction::HistorySystem,
        ["_history"] | [_, "_history"] if method != "GET" => {
            return Err(ServiceError::method_not_allowed());
        }
        [t] if t.starts_with('$') || t.starts_with('_') => return Err(operation_not_supported()),
        [t] => {
            let t = parse_type(t)?;
            match method {
                "GET" => Interaction::SearchType(t),
                "POST" => Interaction::Create(t),
                "PUT" => Interaction::ConditionalUpdate(t),
                "DELETE" => Interaction::ConditionalDelete(t),
                _ => return Err(ServiceError::method_not_allowed()),
            }
        }
        [t, "_history"] => Interaction::HistoryType(parse_type(t)?),
        [t, "$validate"] if method == "POST" => Interaction::Validate(parse_type(t)?, None),
        [t, id, "$validate"] if method == "POST" || method == "GET" => {
            Interaction::Validate(parse_type(t)?, Some(parse_id(id)?))
        }
        [_, "$validate"] | [_, _, "$validate"] => return Err(ServiceError::method_not_allowed()),
        // The edge has added the form body's parameters to the query's.
        [t, "_search"] if method == "POST" => Interaction::SearchType(parse_type(t)?),
        [_, "_search"] => return Err(ServiceError::method_not_allowed()),
        [t, id] => {
            let t = parse_type(t)?;
            if id.starts_with('$') {
                return Err(operation_not_supported());
            }
            let id = parse_id(id)?;
            match method {
                "GET" => Interaction::Read(t, id),
                "PUT" => Interaction::Update(t, id),
                "PATCH" => Interaction::Patch(t, id),
                "DELETE" => Interaction::Delete(t, id),
                _ => return Err(ServiceError::method_not_allowed()),
            }
        }
        [t, id, "_history"] if method == "GET" => {
            Interaction::HistoryInstance(parse_type(t)?, parse_id(id)?)
        }
        [t, id, "_history", vid] if method == "GET" => {
            Interaction::Vread(parse_type(t)?, parse_id(id)?, (*vid).to_string())
        }
        [_, _, "_history", ..] => return Err(ServiceError::method_not_allowed()),
        [c, id, t] if method == "GET" && !t.starts_with('$') && !t.starts_with('_') => {
            let compartment = parse_type(c)?;
            let id = parse_id(id)?;
            let t = if *t == "*" {
                None
            } else {
                Some(parse_type(t)?)
            };
            Interaction::SearchCompartment(compartment, id, t)
        }
        _ => return Err(ServiceError::not_found("There is nothing at this address.")),
    };
    Ok(interaction)
}
