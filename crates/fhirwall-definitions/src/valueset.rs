//! Expanded value sets of the required bindings: membership of a (system, code) pair; it must not fetch anything.

use std::collections::{HashMap, HashSet};

use serde_json::Value;

/// What the codes of a value set the server knows say about one code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Membership {
    Member,
    NotMember,
    /// The value set (or the code's system) is not enumerable here (UCUM, MIME types, a value
    /// set from a package the server does not hold): accept without judging.
    Unknown,
}

/// The codes of one value set.
#[derive(Debug, Clone, Default)]
pub struct ValueSetCodes {
    pub url: String,
    codes: HashMap<String, HashSet<String>>,
    open_systems: HashSet<String>,
    /// Part of the value set could not be expanded: a code not found is `Unknown`, not refused.
    incomplete: bool,
}

impl ValueSetCodes {
    /// Every (system, code) the expansion holds.
    pub fn codes(&self) -> impl Iterator<Item = (&str, &str)> {
        self.codes
            .iter()
            .flat_map(|(system, codes)| codes.iter().map(move |c| (system.as_str(), c.as_str())))
    }

    /// Whether part of the value set could not be expanded.
    pub fn is_incomplete(&self) -> bool {
        self.incomplete || !self.open_systems.is_empty()
    }

    /// Reads the generated form `{url, include: [{system, code: [...]}], openSystems, incomplete}`.
    pub fn from_generated(value: &Value) -> Option<Self> {
        let url = value.get("url")?.as_str()?.to_owned();
        let mut codes: HashMap<String, HashSet<String>> = HashMap::new();
        for group in value.get("include")?.as_array()? {
            let system = group.get("system")?.as_str()?.to_owned();
            let entry = codes.entry(system).or_default();
            for code in group.get("code")?.as_array()? {
                entry.insert(code.as_str()?.to_owned());
            }
        }
        let open_systems = value
            .get("openSystems")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        let incomplete = value.get("incomplete").and_then(Value::as_bool) == Some(true)
            || value.get("unknown").and_then(Value::as_bool) == Some(true);
        Some(Self {
            url,
            codes,
            open_systems,
            incomplete,
        })
    }

    /// Membership of a coded value. `system` None is the `code` data type: a code alone,
    /// matched against every system of the value set.
    pub fn contains(&self, system: Option<&str>, code: &str) -> Membership {
        match system {
            Some(system) => {
                if self.open_systems.contains(system) {
                    return Membership::Unknown;
                }
                if self.codes.get(system).is_some_and(|c| c.contains(code)) {
                    return Membership::Member;
                }
            }
            None => {
                if self.codes.values().any(|c| c.contains(code)) {
                    return Membership::Member;
                }
                if !self.open_systems.is_empty() {
                    return Membership::Unknown;
                }
            }
        }
        if self.incomplete {
            Membership::Unknown
        } else {
            Membership::NotMember
        }
    }

    /// The systems whose codes are open (any code accepted), such as `urn:ietf:bcp:13`.
    pub fn open_systems(&self) -> impl Iterator<Item = &str> {
        self.open_systems.iter().map(String::as_str)
    }

    /// A few allowed codes, for error messages (sorted, at most `limit`).
    pub fn sample_codes(&self, limit: usize) -> Vec<&str> {
        let mut all: Vec<&str> = self
            .codes
            .values()
            .flat_map(|c| c.iter().map(String::as_str))
            .collect();
        all.sort_unstable();
        all.dedup();
        all.truncate(limit);
        all
    }

    /// Whether the value set holds exactly the codes listed (nothing open, nothing unexpanded).
    pub fn is_closed(&self) -> bool {
        !self.incomplete && self.open_systems.is_empty()
    }
}
