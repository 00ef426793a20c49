//! SMART App Launch 2.x scopes (v1 and v2 syntax): parsing, permission checks and intersection; it must not enforce v2 query filters (a filtered scope grants nothing here) nor decide patient/user compartment membership.

use std::fmt;

/// A FHIR REST interaction, as named by the v2 permission letters `c r u d s`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Interaction {
    Create,
    Read,
    Update,
    Delete,
    Search,
}

impl Interaction {
    /// All interactions, in the canonical `cruds` order.
    pub const ALL: [Interaction; 5] = [
        Interaction::Create,
        Interaction::Read,
        Interaction::Update,
        Interaction::Delete,
        Interaction::Search,
    ];

    fn bit(self) -> u8 {
        match self {
            Interaction::Create => 1,
            Interaction::Read => 1 << 1,
            Interaction::Update => 1 << 2,
            Interaction::Delete => 1 << 3,
            Interaction::Search => 1 << 4,
        }
    }

    fn from_letter(c: char) -> Option<Self> {
        Some(match c {
            'c' => Interaction::Create,
            'r' => Interaction::Read,
            'u' => Interaction::Update,
            'd' => Interaction::Delete,
            's' => Interaction::Search,
            _ => return None,
        })
    }
}

/// The launch context a resource scope applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ScopeContext {
    Patient,
    User,
    System,
}

impl ScopeContext {
    fn from_prefix(s: &str) -> Option<Self> {
        match s {
            "patient" => Some(ScopeContext::Patient),
            "user" => Some(ScopeContext::User),
            "system" => Some(ScopeContext::System),
            _ => None,
        }
    }
}

/// A scope string that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid scope {scope:?}: {reason}")]
pub struct ScopeError {
    /// The offending scope token, truncated so a hostile request cannot bloat logs.
    pub scope: String,
    pub reason: &'static str,
}

impl ScopeError {
    fn new(scope: &str, reason: &'static str) -> Self {
        const MAX_ECHO: usize = 80;
        let scope = match scope.char_indices().nth(MAX_ECHO) {
            Some((cut, _)) => format!("{}...", scope.get(..cut).unwrap_or_default()),
            None => scope.to_owned(),
        };
        ScopeError { scope, reason }
    }
}

const ALL_PERMISSIONS: u8 = 0b1_1111;

/// One resource scope such as `system/Patient.rs` or `patient/*.read`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Scope {
    raw: String,
    context: ScopeContext,
    /// `None` means the wildcard `*`.
    resource_type: Option<String>,
    permissions: u8,
    filter: Option<String>,
}

impl Scope {
    /// Parses one resource scope token (`context/Type.permissions[?query]`).
    pub fn parse(token: &str) -> Result<Scope, ScopeError> {
        check_token_chars(token)?;
        let err = |reason| ScopeError::new(token, reason);
        let (prefix, rest) = token
            .split_once('/')
            .ok_or_else(|| err("missing context prefix"))?;
        let context =
            ScopeContext::from_prefix(prefix).ok_or_else(|| err("unknown context prefix"))?;
        let (body, filter) = match rest.split_once('?') {
            Some((_, "")) => return Err(err("empty query filter")),
            Some((body, query)) => (body, Some(query.to_owned())),
            None => (rest, None),
        };
        let (ty, perms) = body
            .split_once('.')
            .ok_or_else(|| err("missing '.' before permissions"))?;
        let resource_type = if ty == "*" {
            None
        } else if is_resource_type_name(ty) {
            Some(ty.to_owned())
        } else {
            return Err(err(
                "resource type must be '*' or a capitalised name of letters",
            ));
        };
        let (permissions, is_v1) = parse_permissions(perms).map_err(err)?;
        if is_v1 && filter.is_some() {
            // Query filters only exist in v2 syntax; a v1 scope with one is not a SMART scope.
            return Err(err("v1 permissions cannot carry a query filter"));
        }
        Ok(Scope {
            raw: token.to_owned(),
            context,
            resource_type,
            permissions,
            filter,
        })
    }

    /// The scope exactly as it was spelled by the client.
    pub fn as_str(&self) -> &str {
        &self.raw
    }

    pub fn context(&self) -> ScopeContext {
        self.context
    }

    /// The resource type, or `"*"` for all types.
    pub fn resource_type(&self) -> &str {
        self.resource_type.as_deref().unwrap_or("*")
    }

    /// The v2 query filter (text after `?`), if any.
    pub fn filter(&self) -> Option<&str> {
        self.filter.as_deref()
    }

    /// Whether the scope names this interaction, ignoring any filter.
    pub fn names(&self, interaction: Interaction) -> bool {
        self.permissions & interaction.bit() != 0
    }

    /// Whether this scope alone grants `interaction` on `resource_type` in `context`.
    /// A filtered scope grants nothing, because filters are not enforced yet and
    /// honouring the unfiltered part would over-grant.
    pub fn grants(
        &self,
        context: ScopeContext,
        resource_type: &str,
        interaction: Interaction,
    ) -> bool {
        self.filter.is_none()
            && self.context == context
            && self.covers_type(resource_type)
            && self.names(interaction)
    }

    fn covers_type(&self, resource_type: &str) -> bool {
        self.resource_type
            .as_deref()
            .is_none_or(|own| own == resource_type)
    }

    /// The same scope naming only `interactions`, in v2 syntax.
    fn narrowed(&self, interactions: &[Interaction]) -> Option<Scope> {
        let letters: String = [
            (Interaction::Create, 'c'),
            (Interaction::Read, 'r'),
            (Interaction::Update, 'u'),
            (Interaction::Delete, 'd'),
            (Interaction::Search, 's'),
        ]
        .iter()
        .filter(|(i, _)| interactions.contains(i))
        .map(|(_, c)| *c)
        .collect();
        let prefix = match self.context {
            ScopeContext::Patient => "patient",
            ScopeContext::User => "user",
            ScopeContext::System => "system",
        };
        let filter = self
            .filter
            .as_deref()
            .map(|f| format!("?{f}"))
            .unwrap_or_default();
        Scope::parse(&format!(
            "{prefix}/{}.{letters}{filter}",
            self.resource_type()
        ))
        .ok()
    }

    /// Whether `self` (a granted scope) covers `interaction` of `requested`.
    fn covers(&self, requested: &Scope, interaction: Interaction) -> bool {
        let type_ok = match &requested.resource_type {
            None => self.resource_type.is_none(),
            Some(ty) => self.covers_type(ty),
        };
        // An unfiltered grant covers any filter (a filter only narrows); a filtered
        // grant covers only the identical filter, since we cannot compare queries.
        let filter_ok = self.filter.is_none() || self.filter == requested.filter;
        self.context == requested.context && type_ok && filter_ok && self.names(interaction)
    }
}

fn is_resource_type_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_uppercase()) && chars.all(|c| c.is_ascii_alphabetic())
}

/// Returns the permission bits and whether the v1 syntax was used.
fn parse_permissions(s: &str) -> Result<(u8, bool), &'static str> {
    let v1 = match s {
        "read" => Some(Interaction::Read.bit() | Interaction::Search.bit()),
        "write" => {
            Some(Interaction::Create.bit() | Interaction::Update.bit() | Interaction::Delete.bit())
        }
        "*" => Some(ALL_PERMISSIONS),
        _ => None,
    };
    if let Some(bits) = v1 {
        return Ok((bits, true));
    }
    if s.is_empty() {
        return Err("empty permissions");
    }
    let mut bits = 0u8;
    let mut last_bit = 0u8;
    for c in s.chars() {
        let bit = Interaction::from_letter(c)
            .ok_or("permissions must be read, write, * or letters from cruds")?
            .bit();
        // Bits grow in cruds order, so a non-increasing bit means a repeat or misorder.
        if bit <= last_bit {
            return Err("permission letters must appear once each in the order c, r, u, d, s");
        }
        bits |= bit;
        last_bit = bit;
    }
    Ok((bits, false))
}

/// RFC 6749 §3.3 scope-token characters: printable ASCII except space, `"` and `\`.
fn check_token_chars(token: &str) -> Result<(), ScopeError> {
    let ok = token
        .bytes()
        .all(|b| matches!(b, 0x21 | 0x23..=0x5B | 0x5D..=0x7E));
    if ok {
        Ok(())
    } else {
        Err(ScopeError::new(token, "character not allowed in a scope"))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Entry {
    Resource(Scope),
    /// Non-resource scopes (`openid`, `launch/patient`, `offline_access`, ...), kept verbatim.
    Other(String),
}

impl Entry {
    fn as_str(&self) -> &str {
        match self {
            Entry::Resource(s) => s.as_str(),
            Entry::Other(s) => s,
        }
    }
}

/// A parsed, de-duplicated, order-preserving set of scopes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScopeSet {
    entries: Vec<Entry>,
}

impl ScopeSet {
    /// Parses a space-separated scope string. Empty tokens from repeated spaces
    /// are skipped; duplicates keep their first occurrence.
    pub fn parse(s: &str) -> Result<ScopeSet, ScopeError> {
        let mut set = ScopeSet::default();
        for token in s.split(' ').filter(|t| !t.is_empty()) {
            let entry = match token.split_once('/') {
                Some((prefix, _)) if ScopeContext::from_prefix(prefix).is_some() => {
                    Entry::Resource(Scope::parse(token)?)
                }
                _ => {
                    check_token_chars(token)?;
                    Entry::Other(token.to_owned())
                }
            };
            set.push(entry);
        }
        Ok(set)
    }

    fn push(&mut self, entry: Entry) {
        if !self.entries.iter().any(|e| e.as_str() == entry.as_str()) {
            self.entries.push(entry);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// The resource scopes, in order.
    pub fn resource_scopes(&self) -> impl Iterator<Item = &Scope> {
        self.entries.iter().filter_map(|e| match e {
            Entry::Resource(s) => Some(s),
            Entry::Other(_) => None,
        })
    }

    /// The non-resource scopes (`openid`, `launch`, ...), in order.
    pub fn other_scopes(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().filter_map(|e| match e {
            Entry::Resource(_) => None,
            Entry::Other(s) => Some(s.as_str()),
        })
    }

    /// Whether any scope grants `interaction` on `resource_type` in `context`.
    pub fn allows(
        &self,
        context: ScopeContext,
        resource_type: &str,
        interaction: Interaction,
    ) -> bool {
        self.resource_scopes()
            .any(|s| s.grants(context, resource_type, interaction))
    }

    /// Whether a `system/` scope grants `interaction` on `resource_type`
    /// (the only context a backend-services client can hold).
    pub fn allows_system(&self, resource_type: &str, interaction: Interaction) -> bool {
        self.allows(ScopeContext::System, resource_type, interaction)
    }

    /// The requested scopes (`self`) narrowed to what `granted` covers. A resource scope
    /// that is fully covered is kept as spelled; one that is partly covered is narrowed to
    /// a v2 scope naming only the covered interactions (`system/*.cruds` requested with
    /// `system/*.rs` granted gives `system/*.rs`); one not covered at all is dropped.
    /// Other scopes need an exact match.
    pub fn intersect_granted(&self, granted: &ScopeSet) -> ScopeSet {
        let mut entries: Vec<Entry> = Vec::new();
        for entry in &self.entries {
            let kept = match entry {
                Entry::Other(name) => granted
                    .other_scopes()
                    .any(|g| g == name)
                    .then(|| entry.clone()),
                Entry::Resource(req) => {
                    let named: Vec<Interaction> = Interaction::ALL
                        .iter()
                        .copied()
                        .filter(|i| req.names(*i))
                        .collect();
                    let covered: Vec<Interaction> = named
                        .iter()
                        .copied()
                        .filter(|i| granted.resource_scopes().any(|g| g.covers(req, *i)))
                        .collect();
                    if covered.len() == named.len() {
                        Some(entry.clone())
                    } else if covered.is_empty() {
                        None
                    } else {
                        req.narrowed(&covered).map(Entry::Resource)
                    }
                }
            };
            if let Some(kept) = kept
                && !entries.contains(&kept)
            {
                entries.push(kept);
            }
        }
        ScopeSet { entries }
    }
}

impl fmt::Display for ScopeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, entry) in self.entries.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            f.write_str(entry.as_str())?;
        }
        Ok(())
    }
}

impl std::str::FromStr for ScopeSet {
    type Err = ScopeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ScopeSet::parse(s)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::Interaction::*;
    use super::*;

    fn set(s: &str) -> ScopeSet {
        ScopeSet::parse(s).unwrap()
    }

    fn perms(scope: &str) -> Vec<Interaction> {
        let s = Scope::parse(scope).unwrap();
        Interaction::ALL
            .into_iter()
            .filter(|i| s.names(*i))
            .collect()
    }

    #[test]
    fn v1_permissions() {
        assert_eq!(perms("system/Patient.read"), [Read, Search]);
        assert_eq!(perms("system/Patient.write"), [Create, Update, Delete]);
        assert_eq!(perms("system/Patient.*"), Interaction::ALL);
    }

    #[test]
    fn v2_permissions() {
        assert_eq!(perms("system/Patient.rs"), [Read, Search]);
        assert_eq!(perms("system/*.cruds"), Interaction::ALL);
        assert_eq!(perms("patient/Observation.c"), [Create]);
        assert_eq!(perms("user/Encounter.ud"), [Update, Delete]);
        assert_eq!(perms("system/Patient.cs"), [Create, Search]);
    }

    #[test]
    fn contexts_and_types() {
        let s = Scope::parse("patient/Observation.rs").unwrap();
        assert_eq!(s.context(), ScopeContext::Patient);
        assert_eq!(s.resource_type(), "Observation");
        assert_eq!(Scope::parse("user/*.r").unwrap().resource_type(), "*");
        assert_eq!(
            Scope::parse("system/*.r").unwrap().context(),
            ScopeContext::System
        );
    }

    #[test]
    fn rejects_bad_permission_letters() {
        for bad in [
            "system/Patient.sr",
            "system/Patient.rr",
            "system/Patient.",
            "system/Patient.x",
            "system/Patient.R",
            "system/Patient.readwrite",
            "system/Patient.cruds*",
            "system/Patient.dc",
        ] {
            let err = ScopeSet::parse(bad).unwrap_err();
            assert_eq!(err.scope, bad);
        }
    }

    #[test]
    fn rejects_bad_resource_scopes() {
        for bad in [
            "system/patient.rs",
            "system/Pat1ent.rs",
            "system/Patient",
            "system/.rs",
            "system/Pat_ient.rs",
            "system/**.rs",
            "system/Patient.read?x=1",
            "system/Patient.rs?",
            "system/Patient/Observation.rs",
        ] {
            assert!(ScopeSet::parse(bad).is_err(), "{bad} should be rejected");
        }
        // Contexts are case-sensitive; an unknown prefix is treated as another scope.
        assert!(Scope::parse("System/Patient.rs").is_err());
        assert!(Scope::parse("Patient.rs").is_err());
    }

    #[test]
    fn error_names_the_bad_scope_among_good_ones() {
        let err = ScopeSet::parse("openid system/Patient.rs system/Observation.sr").unwrap_err();
        assert_eq!(err.scope, "system/Observation.sr");
        assert!(err.to_string().contains("system/Observation.sr"));
    }

    #[test]
    fn error_truncates_long_scopes() {
        let long = format!("system/{}.rs", "A".repeat(500));
        let bad = format!("{long}x");
        let err = ScopeSet::parse(&format!("{bad}?")).unwrap_err();
        assert!(err.scope.len() < 100);
    }

    #[test]
    fn rejects_control_and_quote_characters() {
        assert!(ScopeSet::parse("openid\tfhirUser").is_err());
        assert!(ScopeSet::parse("a\"b").is_err());
        assert!(ScopeSet::parse("a\\b").is_err());
        assert!(ScopeSet::parse("café").is_err());
    }

    #[test]
    fn other_scopes_are_kept_opaque() {
        let s =
            set("openid fhirUser launch launch/patient offline_access online_access system/*.rs");
        assert_eq!(
            s.other_scopes().collect::<Vec<_>>(),
            [
                "openid",
                "fhirUser",
                "launch",
                "launch/patient",
                "offline_access",
                "online_access"
            ]
        );
        assert_eq!(s.resource_scopes().count(), 1);
        let only_other = set("openid fhirUser launch/patient");
        assert!(!only_other.allows_system("openid", Read));
        assert!(!only_other.allows_system("Patient", Read));
    }

    #[test]
    fn empty_and_whitespace() {
        assert!(set("").is_empty());
        assert!(set("   ").is_empty());
        let s = set("  system/Patient.rs   openid ");
        assert_eq!(s.to_string(), "system/Patient.rs openid");
    }

    #[test]
    fn display_keeps_spelling_and_dedups() {
        let s = set("system/Patient.read openid system/Patient.read system/Observation.rs");
        assert_eq!(
            s.to_string(),
            "system/Patient.read openid system/Observation.rs"
        );
        assert_eq!(s.len(), 3);
        assert_eq!(set(&s.to_string()), s);
    }

    #[test]
    fn allows_system_checks_type_and_interaction() {
        let s = set("system/Patient.rs system/Observation.c");
        assert!(s.allows_system("Patient", Read));
        assert!(s.allows_system("Patient", Search));
        assert!(!s.allows_system("Patient", Create));
        assert!(s.allows_system("Observation", Create));
        assert!(!s.allows_system("Observation", Read));
        assert!(!s.allows_system("Encounter", Read));
    }

    #[test]
    fn allows_system_wildcard() {
        let s = set("system/*.read");
        assert!(s.allows_system("Anything", Read));
        assert!(s.allows_system("Anything", Search));
        assert!(!s.allows_system("Anything", Delete));
    }

    #[test]
    fn allows_system_ignores_other_contexts() {
        let s = set("patient/*.cruds user/Patient.*");
        for i in Interaction::ALL {
            assert!(!s.allows_system("Patient", i));
        }
        assert!(s.allows(ScopeContext::User, "Patient", Delete));
        assert!(s.allows(ScopeContext::Patient, "Observation", Create));
    }

    #[test]
    fn filtered_scope_parses_but_grants_nothing() {
        let s = set("system/Observation.rs?category=laboratory");
        let scope = s.resource_scopes().next().unwrap();
        assert_eq!(scope.filter(), Some("category=laboratory"));
        assert!(scope.names(Read));
        assert!(!s.allows_system("Observation", Read));
        assert!(!s.allows_system("Observation", Search));
        // An unfiltered scope alongside it still grants.
        let s = set("system/Observation.rs?category=laboratory system/Observation.r");
        assert!(s.allows_system("Observation", Read));
        assert!(!s.allows_system("Observation", Search));
    }

    #[test]
    fn filter_may_hold_urls_and_dots() {
        let raw = "patient/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory";
        let s = Scope::parse(raw).unwrap();
        assert_eq!(s.resource_type(), "Observation");
        assert_eq!(
            s.filter(),
            Some("category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory")
        );
        assert_eq!(set(raw).to_string(), raw);
    }

    #[test]
    fn intersect_wildcard_grant_covers_wildcard_request() {
        let got = set("system/*.rs").intersect_granted(&set("system/*.cruds"));
        assert_eq!(got.to_string(), "system/*.rs");
    }

    #[test]
    fn intersect_drops_uncovered_type() {
        let got = set("system/Patient.rs").intersect_granted(&set("system/Observation.rs"));
        assert!(got.is_empty());
    }

    #[test]
    fn intersect_narrows_to_covered_interactions() {
        let granted = set("system/Patient.r");
        assert_eq!(
            set("system/Patient.rs")
                .intersect_granted(&granted)
                .to_string(),
            "system/Patient.r"
        );
        assert_eq!(
            set("system/Patient.r")
                .intersect_granted(&granted)
                .to_string(),
            "system/Patient.r"
        );
    }

    #[test]
    fn intersect_combines_grants_per_interaction() {
        let got = set("system/Patient.rs").intersect_granted(&set("system/Patient.r system/*.s"));
        assert_eq!(got.to_string(), "system/Patient.rs");
    }

    #[test]
    fn intersect_specific_grant_does_not_cover_wildcard_request() {
        assert!(
            set("system/*.r")
                .intersect_granted(&set("system/Patient.r"))
                .is_empty()
        );
    }

    #[test]
    fn intersect_mixes_v1_and_v2() {
        let granted = set("system/*.read system/Patient.write");
        let got =
            set("system/Observation.rs system/Patient.cud system/Patient.read system/Patient.*")
                .intersect_granted(&granted);
        assert_eq!(
            got.to_string(),
            "system/Observation.rs system/Patient.cud system/Patient.read system/Patient.*"
        );
        let got = set("system/Observation.*").intersect_granted(&granted);
        assert_eq!(got.to_string(), "system/Observation.rs");
        let got = set("system/Observation.cud").intersect_granted(&granted);
        assert!(got.is_empty());
        let got = set("system/Observation.read").intersect_granted(&set("system/*.rs"));
        assert_eq!(got.to_string(), "system/Observation.read");
    }

    #[test]
    fn intersect_respects_context() {
        assert!(
            set("patient/Patient.r")
                .intersect_granted(&set("system/*.cruds"))
                .is_empty()
        );
        assert!(
            set("system/Patient.r")
                .intersect_granted(&set("user/*.cruds"))
                .is_empty()
        );
    }

    #[test]
    fn intersect_other_scopes_need_exact_match() {
        let got = set("openid launch/patient offline_access")
            .intersect_granted(&set("openid launch system/*.rs"));
        assert_eq!(got.to_string(), "openid");
    }

    #[test]
    fn intersect_filtered_requests() {
        let req = set("system/Observation.rs?category=laboratory");
        assert_eq!(
            req.intersect_granted(&set("system/Observation.rs")),
            req,
            "an unfiltered grant covers a narrower filtered request"
        );
        assert_eq!(
            req.intersect_granted(&set("system/Observation.rs?category=laboratory")),
            req
        );
        assert!(
            req.intersect_granted(&set("system/Observation.rs?category=vital-signs"))
                .is_empty()
        );
        // A filtered grant never covers an unfiltered request.
        assert!(
            set("system/Observation.r")
                .intersect_granted(&set("system/Observation.rs?category=laboratory"))
                .is_empty()
        );
    }

    #[test]
    fn intersect_with_empty() {
        assert!(set("system/*.rs").intersect_granted(&set("")).is_empty());
        assert!(set("").intersect_granted(&set("system/*.rs")).is_empty());
    }

    #[test]
    fn from_str_matches_parse() {
        let s: ScopeSet = "system/Patient.rs".parse().unwrap();
        assert_eq!(s, set("system/Patient.rs"));
    }
}
