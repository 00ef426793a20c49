//! Search: type, system (`_type`) and Patient-compartment searches as searchset Bundles.
//!
//! A search runs in three steps. Criteria that reach other types (chains, `_has`, `_list`) are
//! resolved first, each into an exact clause (the reference terms of the matching targets, or
//! ids). Every criterion's plan then becomes store clauses over blind terms, which select a
//! superset of the matches; each candidate is decrypted and, unless every plan is exact,
//! confirmed by the criterion's own test. Finally the page is cut (commit order, or `_sort`),
//! included resources are added, and the links are written: `next` and `previous` carry a
//! cursor sealed for the client it was issued to, which fixes the snapshot the search started
//! from, so a page never shows a resource twice or a change made after the first page.
//!
//! Nothing is accepted and then not applied: a parameter the server does not know is left out
//! of the self link and reported in an OperationOutcome entry (or refused with `Prefer:
//! handling=strict`); a control parameter that cannot be honoured is a 400.

use std::collections::{BTreeSet, HashSet};

use base64::Engine as _;
use fhirwall_auth::Interaction as Permission;
use fhirwall_model::{IssueSeverity, IssueType, OperationOutcome, ResourceId, ResourceType};
use fhirwall_search::{Criterion, Link, SearchIndex, SortKey};
use fhirwall_store::{Clause, CurrentQuery, StoredVersion};
use serde_json::{Value, json};

use crate::audit::AuditDetail;
use crate::indexing::{Criteria, CriteriaMode, Indexer, shown};
use crate::reads::{Shape, check_version, current_version, open_version, parse_stored};
use crate::{Call, Done, Failed, Reply, ServiceError};

const DEFAULT_PAGE: usize = 50;
/// Candidates one page may decrypt and test before it answers with what it found (a shorter
/// page and a `next` link that continues after the last one tested).
const MAX_SCANNED_PER_PAGE: usize = 5_000;
/// Matches a sorted search, or an accurate total that needs confirmation, may hold.
const MAX_SORTED: usize = 10_000;
/// Targets a chain or `_has` may resolve to before it asks to be narrowed.
const MAX_LINKED: usize = 1_000;
/// How deep `:iterate` follows includes.
const MAX_ITERATE: usize = 4;
/// Previous-page positions a cursor remembers.
const MAX_BACK: usize = 32;
/// How long a paging cursor lives.
const CURSOR_SECONDS: i64 = 30 * 60;

/// One resource the search will answer with, opened.
struct Hit {
    row: StoredVersion,
    plain: Vec<u8>,
    parsed: Value,
}

/// What one resource type contributes to a search.
struct TypeSearch {
    resource_type: ResourceType,
    criteria: Criteria,
    /// Clauses the search adds besides the criteria (a compartment).
    extra: Vec<Clause>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Total {
    /// Not asked: given when it costs nothing extra.
    Default,
    None,
    Estimate,
    Accurate,
}

#[derive(Debug, Clone)]
struct SortBy {
    param: String,
    descending: bool,
}

#[derive(Debug, Clone)]
struct Include {
    source: String,
    param: String,
    target: Option<String>,
    iterate: bool,
}

/// Where a page starts.
#[derive(Debug, Clone, Copy, Default)]
struct Position {
    /// Commit order: after this sequence number.
    after_seq: Option<u64>,
    /// `_sort`: after this many matches.
    offset: usize,
}

/// The state a paging link carries, sealed: the query as applied, the snapshot and where the
/// page starts, and the starts of the pages before it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct CursorState {
    /// The search's path below the base (`/Patient`, ``, `/Patient/1/Observation`).
    path: String,
    params: Vec<(String, String)>,
    snapshot: u64,
    after_seq: Option<u64>,
    offset: usize,
    back: Vec<(Option<u64>, usize)>,
    expires: i64,
}

/// The search's scope: one type, several (system search), or a patient's compartment.
pub(crate) enum Target<'a> {
    Type(&'a ResourceType),
    System,
    Compartment {
        compartment: &'a ResourceType,
        id: &'a ResourceId,
        resource_type: Option<&'a ResourceType>,
    },
}

pub(crate) fn search_index(call: &Call<'_>) -> std::sync::Arc<SearchIndex> {
    call.service.search_index()
}

pub(crate) fn indexer<'a>(
    call: &'a Call<'_>,
    search: &'a SearchIndex,
) -> Result<Indexer<'a>, ServiceError> {
    Ok(Indexer {
        blind: &call.service.tenant_keys(call.tenant())?.blind,
        tenant: call.tenant(),
        search,
        base_url: call.service.fhir_base_ref(),
    })
}

pub(crate) async fn search(call: &Call<'_>, target: Target<'_>) -> Result<Done, Failed> {
    let search = search_index(call);
    let indexer = indexer(call, &search)?;
    let path = target_path(&target);
    // A paging link replays the query it was issued for, from its snapshot.
    let (params, cursor) = match call.param("_cursor") {
        Some(token) => {
            let state = open_cursor(call, token)?;
            if state.path != path {
                return Err(ServiceError::invalid(
                    "invalid-cursor",
                    "This paging link belongs to another search.",
                )
                .into());
            }
            (state.params.clone(), Some(state))
        }
        None => (call.request.params.clone(), None),
    };
    let mode = if call.request.strict_handling {
        CriteriaMode::StrictSearch
    } else {
        CriteriaMode::LenientSearch
    };
    let controls = Controls::parse(call, &params)?;
    let types = target_types(call, &target, &params)?;
    let criteria_params: Vec<(String, String)> = params
        .iter()
        .filter(|(k, _)| k != "_cursor")
        .cloned()
        .collect();
    let mut searches = Vec::new();
    let mut ignored: BTreeSet<String> = BTreeSet::new();
    let mut applied: Option<Vec<(String, String)>> = None;
    for resource_type in &types {
        let criteria = indexer.criteria(resource_type, &criteria_params, mode)?;
        ignored.extend(criteria.ignored.iter().cloned());
        if applied.is_none() {
            applied = Some(criteria.applied.clone());
        }
        let extra = match &target {
            Target::Compartment {
                compartment, id, ..
            } => match compartment_clause(&indexer, &search, resource_type, compartment, id) {
                Some(clause) => vec![clause],
                None => continue,
            },
            _ => Vec::new(),
        };
        searches.push(TypeSearch {
            resource_type: resource_type.clone(),
            criteria,
            extra,
        });
    }
    // On several types a parameter must be known to all of them; one some types lack is not
    // applied to any (and reported), rather than narrowing only some.
    if types.len() > 1 && !ignored.is_empty() {
        for s in &mut searches {
            let keep: Vec<usize> = s
                .criteria
                .applied
                .iter()
                .enumerate()
                .filter(|(_, (k, _))| !ignored.contains(k))
                .map(|(n, _)| n)
                .collect();
            s.criteria.criteria = keep
                .iter()
                .filter_map(|&n| s.criteria.criteria.get(n).cloned())
                .collect();
            s.criteria.applied = keep
                .iter()
                .filter_map(|&n| s.criteria.applied.get(n).cloned())
                .collect();
        }
    }
    for s in &searches {
        check_linked_scopes(call, &s.criteria)?;
    }
    controls.check(call, &search, &types)?;
    let snapshot = match &cursor {
        Some(state) => state.snapshot,
        None => call.service.inner.store.last_seq().await?,
    };
    // Resolve chains, `_has` and `_list` into clauses.
    let mut prepared = Vec::new();
    for s in searches {
        let mut clauses = s.extra.clone();
        let mut deferred = Vec::new();
        let mut possible = true;
        for criterion in &s.criteria.criteria {
            match resolve(
                call,
                &indexer,
                &s.resource_type,
                criterion,
                snapshot,
                0,
                &mut deferred,
            )
            .await?
            {
                Some(mut more) => clauses.append(&mut more),
                None => possible = false,
            }
        }
        if possible {
            prepared.push(Prepared::new(
                s.resource_type,
                clauses,
                &s.criteria.criteria,
                !s.extra.is_empty(),
                deferred,
            ));
        }
    }
    let position = cursor
        .as_ref()
        .map(|c| Position {
            after_seq: c.after_seq,
            offset: c.offset,
        })
        .unwrap_or_default();
    let back = cursor.as_ref().map(|c| c.back.clone()).unwrap_or_default();

    let ctx = indexer.context();
    let count = controls.count;
    let mut total: Option<usize> = None;
    let (page, next): (Vec<Hit>, Option<Position>) = if controls.summary_count || count == 0 {
        total = Some(count_all(call, &search, &prepared, snapshot, &ctx).await?);
        (Vec::new(), None)
    } else if !controls.sort.is_empty() {
        let all = all_matches(call, &search, &prepared, snapshot, &ctx).await?;
        let all = sort_hits(&search, &controls.sort, all)?;
        total = Some(all.len());
        let start = position.offset.min(all.len());
        let end = start.saturating_add(count).min(all.len());
        let next = (end < all.len()).then_some(Position {
            after_seq: None,
            offset: end,
        });
        let page: Vec<Hit> = all.into_iter().skip(start).take(end - start).collect();
        (page, next)
    } else {
        let (page, next) =
            page_in_commit_order(call, &search, &prepared, snapshot, position, count, &ctx).await?;
        if position.after_seq.is_none() && next.is_none() {
            total = Some(page.len());
        }
        (page, next)
    };
    match controls.total {
        Total::None => total = None,
        Total::Accurate if total.is_none() => {
            total = Some(count_all(call, &search, &prepared, snapshot, &ctx).await?);
        }
        Total::Estimate if total.is_none() => {
            let mut estimate = 0usize;
            for p in &prepared {
                estimate = estimate.saturating_add(
                    usize::try_from(
                        call.service
                            .inner
                            .store
                            .count_current(p.query(call, snapshot, None, 0))
                            .await?,
                    )
                    .unwrap_or(usize::MAX),
                );
            }
            total = Some(estimate);
        }
        _ => {}
    }

    // Included resources.
    let mut warnings = Vec::new();
    let included = includes(
        call,
        &search,
        &controls,
        &page,
        snapshot,
        &ctx,
        &mut warnings,
    )
    .await?;

    // The Bundle.
    let base = call.service.fhir_base();
    let applied = applied.unwrap_or_default();
    let mut self_params: Vec<(String, String)> = applied.clone();
    // Controls as applied: a `_count` above the configured cap shows the cap.
    self_params.extend(
        params
            .iter()
            .filter(|(k, _)| is_control(k) && k != "_cursor")
            .map(|(k, v)| match k.as_str() {
                "_count" => (k.clone(), controls.count.to_string()),
                _ => (k.clone(), v.clone()),
            }),
    );
    let mut links = Vec::new();
    let state = |after: Position, back: Vec<(Option<u64>, usize)>| CursorState {
        path: path.clone(),
        params: self_params.clone(),
        snapshot,
        after_seq: after.after_seq,
        offset: after.offset,
        back,
        expires: call.now.unix_seconds().saturating_add(CURSOR_SECONDS),
    };
    let self_url = match &cursor {
        Some(_) => format!(
            "{base}{path}?_cursor={}",
            seal_cursor(call, &state(position, back.clone()))?
        ),
        None => plain_link(&base, &path, &self_params),
    };
    links.push(json!({"relation": "self", "url": self_url}));
    if let Some(next) = next {
        let mut next_back = back.clone();
        next_back.push((position.after_seq, position.offset));
        if next_back.len() > MAX_BACK {
            next_back.remove(0);
        }
        links.push(json!({"relation": "next", "url": format!(
            "{base}{path}?_cursor={}", seal_cursor(call, &state(next, next_back))?
        )}));
    }
    if cursor.is_some() {
        let mut prev_back = back.clone();
        if let Some((after_seq, offset)) = prev_back.pop() {
            let previous = Position { after_seq, offset };
            links.push(json!({"relation": "previous", "url": format!(
                "{base}{path}?_cursor={}", seal_cursor(call, &state(previous, prev_back))?
            )}));
        }
    }

    let mut entries = Vec::new();
    if !ignored.is_empty() {
        let names: Vec<String> = ignored.iter().map(|n| shown(n)).collect();
        warnings.push(format!(
            "These parameters are not supported here and were not applied: {}.",
            names.join(", ")
        ));
    }
    for message in &warnings {
        let outcome = OperationOutcome {
            severity: IssueSeverity::Warning,
            issue_type: IssueType::NotSupported,
            code: "search-parameter-ignored",
            message: message.clone(),
            expression: None,
            more: Vec::new(),
        };
        let entry = json!({
            "resource": outcome.to_json(&call.caller.requester.request_id),
            "search": {"mode": "outcome"},
        });
        entries.push(serde_json::to_vec(&entry).map_err(|_| ServiceError::internal())?);
    }
    let mut detail = AuditDetail::default();
    for (hit, mode) in page
        .iter()
        .map(|h| (h, "match"))
        .chain(included.iter().map(|h| (h, "include")))
    {
        let rtype = &hit.row.key.resource_type;
        detail.patients.extend(fhirwall_model::patient_references(
            rtype,
            hit.row.key.id.as_str(),
            &hit.parsed,
        ));
        detail
            .entities
            .push(hit.row.key.versioned_reference(hit.row.version));
        // The resource goes in as the stored (canonical JSON) bytes, or as the shape
        // `_summary` or `_elements` makes of them: no parse and write again per entry.
        let rendered = if controls.shape.is_whole() {
            None
        } else {
            Some(
                controls
                    .shape
                    .render(rtype, hit.plain.clone(), Some(hit.parsed.clone()))?,
            )
        };
        let full_url = serde_json::to_string(&format!("{base}/{rtype}/{}", hit.row.key.id))
            .map_err(|_| ServiceError::internal())?;
        let resource = rendered.as_deref().unwrap_or(&hit.plain);
        let mut entry = Vec::with_capacity(resource.len() + full_url.len() + 64);
        entry.extend_from_slice(b"{\"fullUrl\":");
        entry.extend_from_slice(full_url.as_bytes());
        entry.extend_from_slice(b",\"resource\":");
        entry.extend_from_slice(resource);
        entry.extend_from_slice(b",\"search\":{\"mode\":\"");
        entry.extend_from_slice(mode.as_bytes());
        entry.extend_from_slice(b"\"}}");
        entries.push(entry);
    }
    detail.patients.sort();
    detail.patients.dedup();
    if cursor.is_some() {
        detail.params = params.clone();
    }
    let mut bundle = serde_json::Map::new();
    bundle.insert("resourceType".into(), json!("Bundle"));
    bundle.insert("id".into(), json!(uuid::Uuid::new_v4().to_string()));
    bundle.insert("type".into(), json!("searchset"));
    if let Some(total) = total {
        bundle.insert("total".into(), json!(total));
    }
    bundle.insert("link".into(), Value::Array(links));
    let mut body =
        serde_json::to_vec(&Value::Object(bundle)).map_err(|_| ServiceError::internal())?;
    if !entries.is_empty() && body.last() == Some(&b'}') {
        // `entry` is the last member: spliced in before the closing brace.
        body.pop();
        body.extend_from_slice(b",\"entry\":[");
        for (n, entry) in entries.iter().enumerate() {
            if n > 0 {
                body.push(b',');
            }
            body.extend_from_slice(entry);
        }
        body.extend_from_slice(b"]}");
    }
    Ok(Done::audited(Reply::json(200, body), detail))
}

fn is_control(name: &str) -> bool {
    matches!(
        name,
        "_count"
            | "_sort"
            | "_total"
            | "_summary"
            | "_elements"
            | "_include"
            | "_revinclude"
            | "_cursor"
            | "_type"
    ) || name.starts_with("_include:")
        || name.starts_with("_revinclude:")
}

fn target_path(target: &Target<'_>) -> String {
    match target {
        Target::Type(t) => format!("/{t}"),
        Target::System => String::new(),
        Target::Compartment {
            compartment,
            id,
            resource_type: Some(t),
        } => format!("/{compartment}/{id}/{t}"),
        Target::Compartment {
            compartment, id, ..
        } => format!("/{compartment}/{id}/*"),
    }
}

fn plain_link(base: &str, path: &str, params: &[(String, String)]) -> String {
    let mut serializer = form_urlencoded::Serializer::new(String::new());
    for (k, v) in params {
        serializer.append_pair(k, v);
    }
    let query = serializer.finish();
    if query.is_empty() {
        format!("{base}{path}")
    } else {
        format!("{base}{path}?{query}")
    }
}

/// The types a search covers, each one the caller may search.
fn target_types(
    call: &Call<'_>,
    target: &Target<'_>,
    params: &[(String, String)],
) -> Result<Vec<ResourceType>, ServiceError> {
    let may = |t: &str| {
        if t == "AuditEvent" {
            call.caller.may_explicitly(t, Permission::Search)
        } else {
            call.caller.may(t, Permission::Search)
        }
    };
    let refuse = |t: &str| {
        ServiceError::forbidden(format!(
            "The access token's scopes do not allow search on {t}."
        ))
    };
    let listed = |value: &str| -> Result<Vec<ResourceType>, ServiceError> {
        let mut out = Vec::new();
        for name in value.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            let t = ResourceType::parse(name).map_err(|_| {
                ServiceError::invalid(
                    "invalid-type",
                    format!(
                        "_type names '{}', which is not a resource type.",
                        shown(name)
                    ),
                )
            })?;
            if !out.contains(&t) {
                out.push(t);
            }
        }
        Ok(out)
    };
    let type_param = params
        .iter()
        .filter(|(k, _)| k == "_type")
        .map(|(_, v)| v.as_str())
        .collect::<Vec<_>>()
        .join(",");
    match target {
        Target::Type(t) => {
            if !type_param.is_empty() {
                return Err(ServiceError::invalid(
                    "invalid-search",
                    "_type applies to system-level searches; this search names its type in the path.",
                ));
            }
            Ok(vec![(*t).clone()])
        }
        Target::System => {
            let types = if type_param.is_empty() {
                // Every type the caller may search, AuditEvent only when named.
                fhirwall_model::generated::RESOURCE_TYPES
                    .iter()
                    .filter(|info| info.name != "AuditEvent" && may(info.name))
                    .filter_map(|info| ResourceType::parse(info.name).ok())
                    .collect()
            } else {
                let types = listed(&type_param)?;
                if let Some(denied) = types.iter().find(|t| !may(t.as_str())) {
                    return Err(refuse(denied.as_str()));
                }
                types
            };
            if types.is_empty() {
                return Err(refuse("any resource type"));
            }
            Ok(types)
        }
        Target::Compartment {
            compartment,
            resource_type,
            ..
        } => {
            if compartment.as_str() != "Patient" {
                return Err(ServiceError::not_supported(
                    "This server searches the Patient compartment only.",
                ));
            }
            let in_compartment = |name: &str| {
                fhirwall_model::generated::resource_type_info(name)
                    .is_some_and(|info| !info.patient_compartment_params.is_empty())
            };
            match resource_type {
                Some(t) => {
                    if !in_compartment(t.as_str()) {
                        return Err(ServiceError::invalid(
                            "not-in-compartment",
                            format!("{t} resources are not in the Patient compartment."),
                        ));
                    }
                    if !may(t.as_str()) {
                        return Err(refuse(t.as_str()));
                    }
                    Ok(vec![(*t).clone()])
                }
                None => {
                    let mut types: Vec<ResourceType> = if type_param.is_empty() {
                        fhirwall_model::generated::RESOURCE_TYPES
                            .iter()
                            .filter(|info| {
                                info.name != "AuditEvent"
                                    && !info.patient_compartment_params.is_empty()
                                    && may(info.name)
                            })
                            .filter_map(|info| ResourceType::parse(info.name).ok())
                            .collect()
                    } else {
                        listed(&type_param)?
                    };
                    types.retain(|t| in_compartment(t.as_str()));
                    if let Some(denied) = types.iter().find(|t| !may(t.as_str())) {
                        return Err(refuse(denied.as_str()));
                    }
                    Ok(types)
                }
            }
        }
    }
}

/// The clause that keeps a type's resources to a patient's compartment: any of the type's
/// compartment parameters refers to the patient (the Patient itself is in its own).
fn compartment_clause(
    indexer: &Indexer<'_>,
    search: &SearchIndex,
    resource_type: &ResourceType,
    compartment: &ResourceType,
    id: &ResourceId,
) -> Option<Clause> {
    let info = resource_type.info()?;
    let mut terms = Vec::new();
    for param in info.patient_compartment_params {
        for key in search.reference_keys(
            resource_type.as_str(),
            param,
            compartment.as_str(),
            id.as_str(),
        ) {
            terms.push(indexer.term(resource_type, &key));
        }
    }
    if resource_type == compartment {
        return Some(Clause::Ids(vec![id.clone()]));
    }
    if terms.is_empty() {
        return None;
    }
    terms.sort();
    terms.dedup();
    Some(Clause::Terms(terms))
}

/// The types a criterion reaches must be searchable by the caller: a token never learns of
/// a type it may not read, not even through a filter.
fn check_linked_scopes(call: &Call<'_>, criteria: &Criteria) -> Result<(), ServiceError> {
    for t in criteria.linked_types() {
        let allowed = if t == "AuditEvent" {
            call.caller.may_explicitly(&t, Permission::Search)
        } else {
            call.caller.may(&t, Permission::Search)
        };
        if !allowed {
            return Err(ServiceError::forbidden(format!(
                "The search reaches {t} (a chain, _has or _list), which the access token's scopes do not allow."
            )));
        }
    }
    Ok(())
}

/// The parsed control parameters.
struct Controls {
    count: usize,
    sort: Vec<SortBy>,
    total: Total,
    summary_count: bool,
    shape: Shape,
    includes: Vec<Include>,
    revincludes: Vec<Include>,
}

impl Controls {
    fn parse(call: &Call<'_>, params: &[(String, String)]) -> Result<Controls, ServiceError> {
        let max = call.service.inner.config.search_max_count;
        let one = |name: &str| -> Result<Option<&str>, ServiceError> {
            let mut values = params
                .iter()
                .filter(|(k, _)| k == name)
                .map(|(_, v)| v.as_str());
            let first = values.next();
            if values.next().is_some() {
                return Err(ServiceError::invalid(
                    "invalid-search",
                    format!("{name} may be given once."),
                ));
            }
            Ok(first)
        };
        let count = match one("_count")? {
            None => DEFAULT_PAGE.min(max),
            Some(v) => v.trim().parse::<usize>().map(|n| n.min(max)).map_err(|_| {
                ServiceError::invalid("invalid-count", "_count must be a non-negative integer.")
            })?,
        };
        let mut sort = Vec::new();
        if let Some(v) = one("_sort")? {
            for part in v.split(',').map(str::trim) {
                if part.is_empty() {
                    return Err(ServiceError::invalid(
                        "invalid-sort",
                        "_sort takes a comma-separated list of parameter names, each optionally prefixed with '-'.",
                    ));
                }
                let (param, descending) = match part.strip_prefix('-') {
                    Some(p) => (p, true),
                    None => (part, false),
                };
                sort.push(SortBy {
                    param: param.to_string(),
                    descending,
                });
            }
        }
        let total = match one("_total")? {
            None => Total::Default,
            Some("none") => Total::None,
            Some("estimate") => Total::Estimate,
            Some("accurate") => Total::Accurate,
            Some(_) => {
                return Err(ServiceError::invalid(
                    "invalid-total",
                    "_total must be none, estimate or accurate.",
                ));
            }
        };
        let shape = Shape::of(one("_summary")?, one("_elements")?)?;
        let summary_count = shape.summary == Some(fhirwall_model::Summary::Count);
        let mut includes = Vec::new();
        let mut revincludes = Vec::new();
        for (name, value) in params {
            let (list, iterate) = match name.as_str() {
                "_include" => (&mut includes, false),
                "_include:iterate" | "_include:recurse" => (&mut includes, true),
                "_revinclude" => (&mut revincludes, false),
                "_revinclude:iterate" | "_revinclude:recurse" => (&mut revincludes, true),
                n if n.starts_with("_include:") || n.starts_with("_revinclude:") => {
                    return Err(ServiceError::invalid(
                        "invalid-include",
                        format!("{} is not a modifier of _include; use :iterate.", shown(n)),
                    ));
                }
                _ => continue,
            };
            list.push(Include::parse(value, iterate)?);
        }
        Ok(Controls {
            count,
            sort,
            total,
            summary_count,
            shape,
            includes,
            revincludes,
        })
    }

    /// Checks what the controls name against the types searched and the caller's scopes.
    fn check(
        &self,
        call: &Call<'_>,
        search: &SearchIndex,
        types: &[ResourceType],
    ) -> Result<(), ServiceError> {
        for sort in &self.sort {
            if matches!(sort.param.as_str(), "_id" | "_lastUpdated") {
                continue;
            }
            for t in types {
                let known = search
                    .params(t.as_str())
                    .into_iter()
                    .any(|p| p.name == sort.param);
                if !known {
                    return Err(ServiceError::invalid(
                        "invalid-sort",
                        format!(
                            "_sort names '{}', which is not a search parameter of {t}.",
                            shown(&sort.param)
                        ),
                    ));
                }
            }
        }
        for include in self.includes.iter().chain(&self.revincludes) {
            if ResourceType::parse(&include.source).is_err() {
                return Err(ServiceError::invalid(
                    "invalid-include",
                    format!(
                        "'{}' in _include or _revinclude is not a resource type.",
                        shown(&include.source)
                    ),
                ));
            }
            if include.param != "*" {
                let params = search.params(&include.source);
                let Some(param) = params.iter().find(|p| p.name == include.param) else {
                    return Err(ServiceError::invalid(
                        "invalid-include",
                        format!(
                            "{} has no search parameter '{}'.",
                            shown(&include.source),
                            shown(&include.param)
                        ),
                    ));
                };
                if param.kind != fhirwall_search::ParamKind::Reference {
                    return Err(ServiceError::invalid(
                        "invalid-include",
                        format!(
                            "{}:{} is not a reference parameter.",
                            shown(&include.source),
                            shown(&include.param)
                        ),
                    ));
                }
            }
        }
        for include in &self.includes {
            if let Some(target) = &include.target
                && !may_read(call, target)
            {
                return Err(ServiceError::forbidden(format!(
                    "_include of {} needs read access to it, which the access token's scopes do not allow.",
                    shown(target)
                )));
            }
        }
        for include in &self.revincludes {
            if !may_read(call, &include.source) {
                return Err(ServiceError::forbidden(format!(
                    "_revinclude of {} needs read access to it, which the access token's scopes do not allow.",
                    shown(&include.source)
                )));
            }
        }
        Ok(())
    }
}

fn may_read(call: &Call<'_>, resource_type: &str) -> bool {
    if resource_type == "AuditEvent" {
        call.caller.may_explicitly(resource_type, Permission::Read)
    } else {
        call.caller.may(resource_type, Permission::Read)
    }
}

impl Include {
    fn parse(value: &str, iterate: bool) -> Result<Include, ServiceError> {
        let bad = || {
            ServiceError::invalid(
                "invalid-include",
                "_include and _revinclude take SourceType:parameter[:TargetType], or *.",
            )
        };
        let mut parts = value.split(':');
        let source = parts.next().filter(|s| !s.is_empty()).ok_or_else(bad)?;
        if source == "*" {
            return Ok(Include {
                source: "*".into(),
                param: "*".into(),
                target: None,
                iterate,
            });
        }
        let param = parts.next().filter(|s| !s.is_empty()).ok_or_else(bad)?;
        let target = parts.next().map(str::to_string);
        if parts.next().is_some() {
            return Err(bad());
        }
        if let Some(t) = &target
            && ResourceType::parse(t).is_err()
        {
            return Err(bad());
        }
        Ok(Include {
            source: source.to_string(),
            param: param.to_string(),
            target,
            iterate,
        })
    }

    fn applies_to(&self, resource_type: &str) -> bool {
        self.source == "*" || self.source == resource_type
    }
}

/// One type's search, ready to run: its clauses and the criteria each candidate must pass.
#[derive(Clone)]
struct Prepared {
    resource_type: ResourceType,
    clauses: Vec<Clause>,
    /// `_has` criteria whose linked resources were too many to list: each candidate is
    /// probed for one instead (see [`probe`]).
    deferred: Vec<Deferred>,
    /// The criteria a current candidate must pass (those whose plan is not exact).
    confirm: Vec<Criterion>,
    /// Every criterion, when each can be tested on a resource alone (no chain, `_has`,
    /// `_list` or compartment): then a resource changed since the snapshot is tested in the
    /// version it had then. `None`: such resources are left out of later pages.
    snapshot_test: Option<Vec<Criterion>>,
}

impl Prepared {
    fn new(
        resource_type: ResourceType,
        clauses: Vec<Clause>,
        criteria: &[Criterion],
        extra: bool,
        deferred: Vec<Deferred>,
    ) -> Prepared {
        let confirm = criteria
            .iter()
            .filter(|c| c.link().is_none() && !c.plan_is_exact())
            .cloned()
            .collect();
        let snapshot_test =
            (!extra && criteria.iter().all(|c| c.link().is_none())).then(|| criteria.to_vec());
        Prepared {
            resource_type,
            clauses,
            deferred,
            confirm,
            snapshot_test,
        }
    }
}

/// A link left to each candidate because it reaches more resources than can be listed.
#[derive(Clone)]
enum Deferred {
    /// `_has`: the source resources' search (type, clauses, criteria); one of them must
    /// point at the candidate through `param`.
    Has {
        source: Box<Prepared>,
        param: String,
        snapshot: u64,
    },
    /// A chain: the candidate's `param` must point at a resource that one of the targets'
    /// searches matches.
    Chain {
        param: String,
        targets: Vec<Prepared>,
        snapshot: u64,
    },
}

/// Whether a `source` resource refers to `target_type`/`id` through the deferred parameter
/// and matches the `_has` criteria: one store query on the reference's postings.
fn probe<'a>(
    call: &'a Call<'_>,
    search: &'a SearchIndex,
    deferred: &'a Deferred,
    candidate: (&'a ResourceType, &'a ResourceId, &'a Value),
    ctx: &'a fhirwall_search::Context<'_>,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<bool, ServiceError>> + Send + 'a>> {
    Box::pin(async move {
        let (target_type, id, parsed) = candidate;
        let (source, deferred_param, snapshot) = match deferred {
            Deferred::Has {
                source,
                param,
                snapshot,
            } => (source, param, *snapshot),
            Deferred::Chain {
                param,
                targets,
                snapshot,
            } => {
                // The candidate's references through `param`, each tested by id against the
                // search of its type.
                let refs = search
                    .references(target_type.as_str(), param, None, parsed, ctx)
                    .unwrap_or_default();
                for (ref_type, ref_id) in refs {
                    let Ok(ref_id) = ResourceId::parse(&ref_id) else {
                        continue;
                    };
                    for target in targets
                        .iter()
                        .filter(|t| t.resource_type.as_str() == ref_type)
                    {
                        let mut by_id = target.clone();
                        by_id.clauses.push(Clause::Ids(vec![ref_id.clone()]));
                        let (hits, _) =
                            type_page(call, search, &by_id, *snapshot, None, 0, ctx).await?;
                        if !hits.is_empty() {
                            return Ok(true);
                        }
                    }
                }
                return Ok(false);
            }
        };
        let indexer = indexer(call, search)?;
        let source_type = &source.resource_type;
        let terms: Vec<_> = search
            .reference_keys(
                source_type.as_str(),
                deferred_param,
                target_type.as_str(),
                id.as_str(),
            )
            .iter()
            .map(|key| indexer.term(source_type, key))
            .collect();
        if terms.is_empty() {
            return Ok(false);
        }
        let mut source = (**source).clone();
        source.clauses.push(Clause::Terms(terms));
        if source.confirm.is_empty() && source.deferred.is_empty() {
            // An exact plan: a current candidate (its pointer checked) is a match; nothing
            // needs opening.
            let (rows, _) = candidates(call, &source, snapshot, None, 4).await?;
            for candidate in rows.into_iter().filter(|c| c.current) {
                if still_current(call, &candidate.row).await? {
                    return Ok(true);
                }
            }
        }
        let (hits, _) = type_page(call, search, &source, snapshot, None, 0, ctx).await?;
        Ok(!hits.is_empty())
    })
}

impl Prepared {
    fn query(
        &self,
        call: &Call<'_>,
        snapshot: u64,
        after_seq: Option<u64>,
        limit: usize,
    ) -> CurrentQuery {
        CurrentQuery {
            tenant: call.tenant().clone(),
            resource_type: self.resource_type.clone(),
            clauses: self.clauses.clone(),
            after_seq,
            // `u64::MAX`: no snapshot (a condition looks at what is current now).
            up_to_seq: (snapshot != u64::MAX).then_some(snapshot),
            limit,
        }
    }
}

/// What a condition (`If-None-Exist`, a conditional update or delete or reference) matches:
/// at most `limit` current resources, every criterion applied exactly.
pub(crate) async fn find_matches(
    call: &Call<'_>,
    resource_type: &ResourceType,
    criteria: &Criteria,
    limit: usize,
) -> Result<Vec<StoredVersion>, ServiceError> {
    let search = search_index(call);
    let indexer = indexer(call, &search)?;
    check_linked_scopes(call, criteria)?;
    let mut clauses = Vec::new();
    let mut deferred = Vec::new();
    for criterion in &criteria.criteria {
        match resolve(
            call,
            &indexer,
            resource_type,
            criterion,
            u64::MAX,
            0,
            &mut deferred,
        )
        .await?
        {
            Some(mut more) => clauses.append(&mut more),
            None => return Ok(Vec::new()),
        }
    }
    let prepared = Prepared::new(
        resource_type.clone(),
        clauses,
        &criteria.criteria,
        false,
        deferred,
    );
    let (hits, stopped) = type_page(
        call,
        &search,
        &prepared,
        u64::MAX,
        None,
        limit.saturating_sub(1),
        &indexer.context(),
    )
    .await?;
    if stopped.is_some() {
        return Err(ServiceError::invalid(
            "invalid-condition",
            "The condition is too broad to decide; give more selective criteria (an identifier, say).",
        ));
    }
    Ok(hits.into_iter().take(limit).map(|h| h.row).collect())
}

/// Checks a candidate through its current pointer and the pointer's integrity tag (a read
/// the store answers from its cache): a pointer moved back to an older version, or to a live
/// version over a deletion, is refused, not served. `false`: it changed since the plan ran
/// (a concurrent write), and the newer state decides on the next search.
async fn still_current(call: &Call<'_>, row: &StoredVersion) -> Result<bool, ServiceError> {
    check_version(call, row)?;
    match current_version(call, &row.key.resource_type, &row.key.id).await? {
        Some(current) if current.version == row.version => Ok(true),
        Some(current) if current.version > row.version => Ok(false),
        _ => Err(crate::integrity::tampered("search match", row.seq)),
    }
}

/// Opens a candidate and tests it: a current version against the criteria its plan does not
/// decide, a version from the snapshot against all of them.
async fn confirm(
    call: &Call<'_>,
    search: &SearchIndex,
    prepared: &Prepared,
    candidate: Candidate,
    ctx: &fhirwall_search::Context<'_>,
) -> Result<Option<Hit>, ServiceError> {
    let Candidate { row, current } = candidate;
    let tests = if current {
        if !still_current(call, &row).await? {
            return Ok(None);
        }
        &prepared.confirm
    } else {
        check_version(call, &row)?;
        match &prepared.snapshot_test {
            Some(all) => all,
            None => return Ok(None),
        }
    };
    let plain = open_version(call, &row)?;
    let parsed = parse_stored(&plain)?;
    if !tests.iter().all(|c| c.matches(search, &parsed, ctx)) {
        return Ok(None);
    }
    for deferred in &prepared.deferred {
        let candidate = (&row.key.resource_type, &row.key.id, &parsed);
        if !probe(call, search, deferred, candidate, ctx).await? {
            return Ok(None);
        }
    }
    Ok(Some(Hit { row, plain, parsed }))
}

/// A row that may match: a current version, or the version a resource changed since the
/// snapshot had then.
struct Candidate {
    row: StoredVersion,
    current: bool,
}

/// The next `batch` candidates of a type after `after_seq`, in commit order, and whether
/// there are no more.
async fn candidates(
    call: &Call<'_>,
    prepared: &Prepared,
    snapshot: u64,
    after_seq: Option<u64>,
    batch: usize,
) -> Result<(Vec<Candidate>, bool), ServiceError> {
    let store = &call.service.inner.store;
    let current = store
        .find_current(prepared.query(call, snapshot, after_seq, batch))
        .await?;
    let mut exhausted = current.len() < batch;
    let mut rows: Vec<Candidate> = current
        .into_iter()
        .map(|row| Candidate { row, current: true })
        .collect();
    if snapshot != u64::MAX && prepared.snapshot_test.is_some() {
        let older = store
            .versions_at(
                call.tenant(),
                &prepared.resource_type,
                snapshot,
                after_seq,
                batch,
            )
            .await?;
        exhausted = exhausted && older.len() < batch;
        rows.extend(older.into_iter().map(|row| Candidate {
            row,
            current: false,
        }));
        rows.sort_by_key(|c| c.row.seq);
        if rows.len() > batch {
            rows.truncate(batch);
            exhausted = false;
        }
    }
    Ok((rows, exhausted))
}

/// Up to `want` + 1 matches of one type after `after_seq`, in commit order. Also says where
/// it stopped when it hit the scan bound before finding them (`Some(last seq tested)`).
async fn type_page(
    call: &Call<'_>,
    search: &SearchIndex,
    prepared: &Prepared,
    snapshot: u64,
    mut after_seq: Option<u64>,
    want: usize,
    ctx: &fhirwall_search::Context<'_>,
) -> Result<(Vec<Hit>, Option<u64>), ServiceError> {
    let mut hits = Vec::new();
    let mut scanned = 0usize;
    // The first batch is what the page needs (most candidates of a keyed plan match); each
    // further one doubles, so a plan that admits many non-matches costs few store queries.
    let mut batch = want + 1;
    loop {
        let (rows, exhausted) = candidates(call, prepared, snapshot, after_seq, batch).await?;
        batch = (batch * 2).min(1_000);
        for row in rows {
            after_seq = Some(row.row.seq);
            scanned += 1;
            if let Some(hit) = confirm(call, search, prepared, row, ctx).await? {
                hits.push(hit);
                if hits.len() > want {
                    tracing::debug!(scanned, hits = hits.len(), "search page of one type");
                    return Ok((hits, None));
                }
            }
        }
        if exhausted {
            tracing::debug!(scanned, hits = hits.len(), "search page of one type (all)");
            return Ok((hits, None));
        }
        if scanned >= MAX_SCANNED_PER_PAGE {
            return Ok((hits, after_seq));
        }
    }
}

/// One page in commit order across the searched types.
async fn page_in_commit_order(
    call: &Call<'_>,
    search: &SearchIndex,
    prepared: &[Prepared],
    snapshot: u64,
    position: Position,
    count: usize,
    ctx: &fhirwall_search::Context<'_>,
) -> Result<(Vec<Hit>, Option<Position>), ServiceError> {
    let mut all = Vec::new();
    // The lowest place a type stopped at without finishing: nothing beyond it is certain.
    let mut bound: Option<u64> = None;
    for p in prepared {
        let (hits, stopped) =
            type_page(call, search, p, snapshot, position.after_seq, count, ctx).await?;
        if let Some(stop) = stopped {
            bound = Some(bound.map_or(stop, |b| b.min(stop)));
        }
        all.extend(hits);
    }
    all.sort_by_key(|h| h.row.seq);
    if let Some(bound) = bound {
        all.retain(|h| h.row.seq <= bound);
    }
    let more = all.len() > count;
    all.truncate(count);
    let next = if more {
        all.last().map(|h| Position {
            after_seq: Some(h.row.seq),
            offset: 0,
        })
    } else {
        // A short page: the next one continues after the last candidate tested.
        bound.map(|bound| Position {
            after_seq: Some(bound),
            offset: 0,
        })
    };
    Ok((all, next))
}

/// Every match of the searched types (for `_sort`), bounded.
async fn all_matches(
    call: &Call<'_>,
    search: &SearchIndex,
    prepared: &[Prepared],
    snapshot: u64,
    ctx: &fhirwall_search::Context<'_>,
) -> Result<Vec<Hit>, ServiceError> {
    let mut all = Vec::new();
    for p in prepared {
        let mut after_seq = None;
        loop {
            let (rows, exhausted) = candidates(call, p, snapshot, after_seq, 1_000).await?;
            for row in rows {
                after_seq = Some(row.row.seq);
                if let Some(hit) = confirm(call, search, p, row, ctx).await? {
                    all.push(hit);
                    if all.len() > MAX_SORTED {
                        return Err(too_many());
                    }
                }
            }
            if exhausted {
                break;
            }
        }
    }
    Ok(all)
}

fn too_many() -> ServiceError {
    ServiceError::invalid(
        "too-many-matches",
        format!(
            "The search matches more than {MAX_SORTED} resources, too many to sort or count exactly; narrow it, or leave out _sort or _total=accurate."
        ),
    )
}

/// How many resources match: counted by the store when every plan is exact, else by testing
/// each candidate.
async fn count_all(
    call: &Call<'_>,
    search: &SearchIndex,
    prepared: &[Prepared],
    snapshot: u64,
    ctx: &fhirwall_search::Context<'_>,
) -> Result<usize, ServiceError> {
    let mut total = 0usize;
    for p in prepared {
        if p.confirm.is_empty()
            && p.deferred.is_empty()
            && (snapshot == u64::MAX || p.snapshot_test.is_none())
        {
            let n = call
                .service
                .inner
                .store
                .count_current(p.query(call, snapshot, None, 0))
                .await?;
            total = total.saturating_add(usize::try_from(n).unwrap_or(usize::MAX));
        } else {
            let mut after_seq = None;
            let mut scanned = 0usize;
            loop {
                let (rows, exhausted) = candidates(call, p, snapshot, after_seq, 1_000).await?;
                for row in rows {
                    after_seq = Some(row.row.seq);
                    scanned += 1;
                    if confirm(call, search, p, row, ctx).await?.is_some() {
                        total += 1;
                    }
                }
                if exhausted {
                    break;
                }
                if scanned > MAX_SORTED * 10 {
                    return Err(too_many());
                }
            }
        }
    }
    Ok(total)
}

fn sort_hits(
    search: &SearchIndex,
    sort: &[SortBy],
    hits: Vec<Hit>,
) -> Result<Vec<Hit>, ServiceError> {
    let mut keyed: Vec<(Vec<Option<SortKey>>, Hit)> = Vec::with_capacity(hits.len());
    for hit in hits {
        let mut keys = Vec::with_capacity(sort.len());
        for by in sort {
            let key = match by.param.as_str() {
                "_id" => Some(SortKey::Text(hit.row.key.id.as_str().to_string())),
                "_lastUpdated" => Some(SortKey::Instant(hit.row.last_updated_micros / 1000)),
                param => search
                    .sort_key(
                        hit.row.key.resource_type.as_str(),
                        param,
                        by.descending,
                        &hit.parsed,
                    )
                    .map_err(|_| {
                        ServiceError::invalid(
                            "invalid-sort",
                            format!("The server cannot sort by '{}'.", shown(param)),
                        )
                    })?,
            };
            keys.push(key);
        }
        keyed.push((keys, hit));
    }
    // A stable sort: ties keep commit order.
    keyed.sort_by(|(a, _), (b, _)| {
        for ((ka, kb), by) in a.iter().zip(b).zip(sort) {
            // Resources without a value sort last either way.
            let order = match (ka, kb) {
                (None, None) => std::cmp::Ordering::Equal,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (Some(_), None) => std::cmp::Ordering::Less,
                (Some(x), Some(y)) => {
                    let o = x.partial_cmp(y).unwrap_or(std::cmp::Ordering::Equal);
                    if by.descending { o.reverse() } else { o }
                }
            };
            if order != std::cmp::Ordering::Equal {
                return order;
            }
        }
        std::cmp::Ordering::Equal
    });
    Ok(keyed.into_iter().map(|(_, hit)| hit).collect())
}

/// A criterion as store clauses: its own plan, or for a chain, `_has` or `_list`, the
/// clause its resolved targets give. `None`: it can match nothing.
/// The future of [`resolve`], boxed because it recurses.
type Resolving<'a> = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<Option<Vec<Clause>>, ServiceError>> + Send + 'a>,
>;

fn resolve<'a>(
    call: &'a Call<'_>,
    indexer: &'a Indexer<'_>,
    resource_type: &'a ResourceType,
    criterion: &'a Criterion,
    snapshot: u64,
    depth: usize,
    deferred: &'a mut Vec<Deferred>,
) -> Resolving<'a> {
    Box::pin(async move {
        let search = indexer.search;
        if depth > 8 {
            return Err(ServiceError::invalid(
                "invalid-search",
                "Chains and _has nest at most 8 deep.",
            ));
        }
        let Some(link) = criterion.link() else {
            return Ok(indexer.clauses(resource_type, &criterion.plan()));
        };
        match link {
            Link::Chain {
                param,
                target_types,
                inner,
            } => {
                let mut terms = Vec::new();
                let mut targets = Vec::new();
                let mut overflow = false;
                for target in target_types {
                    let Ok(target) = ResourceType::parse(target) else {
                        continue;
                    };
                    let inner = inner.for_type(target.as_str());
                    let Some(inner) = inner else { continue };
                    let Some(target_search) =
                        linked_search(call, indexer, &target, &inner, snapshot, depth).await?
                    else {
                        continue;
                    };
                    // More targets than can be listed: each candidate's reference is tested
                    // instead (see `probe`).
                    let (found, _) =
                        candidates(call, &target_search, snapshot, None, MAX_LINKED + 1).await?;
                    let (hits, stopped) = if overflow || found.len() > MAX_LINKED {
                        (Vec::new(), Some(0))
                    } else {
                        type_page(
                            call,
                            search,
                            &target_search,
                            snapshot,
                            None,
                            MAX_LINKED,
                            &indexer.context(),
                        )
                        .await?
                    };
                    targets.push(target_search);
                    if hits.len() > MAX_LINKED || stopped.is_some() {
                        overflow = true;
                        continue;
                    }
                    for id in hits.into_iter().map(|h| h.row.key.id) {
                        for key in search.reference_keys(
                            resource_type.as_str(),
                            param,
                            target.as_str(),
                            id.as_str(),
                        ) {
                            terms.push(indexer.term(resource_type, &key));
                        }
                    }
                }
                if overflow {
                    deferred.push(Deferred::Chain {
                        param: param.to_string(),
                        targets,
                        snapshot,
                    });
                    return Ok(Some(Vec::new()));
                }
                if terms.is_empty() {
                    return Ok(None);
                }
                terms.sort();
                terms.dedup();
                Ok(Some(vec![Clause::Terms(terms)]))
            }
            Link::Has {
                source_type,
                param,
                inner,
            } => {
                let source = ResourceType::parse(source_type).map_err(|_| {
                    ServiceError::invalid("invalid-search", "_has names an unknown resource type.")
                })?;
                let Some(source_search) =
                    linked_search(call, indexer, &source, inner, snapshot, depth).await?
                else {
                    return Ok(None);
                };
                // More candidates than can be listed (counted before any is opened), or more
                // matches: each candidate of the searched type is probed instead.
                let (candidates_found, _) =
                    candidates(call, &source_search, snapshot, None, MAX_LINKED + 1).await?;
                let (hits, stopped) = if candidates_found.len() > MAX_LINKED {
                    (Vec::new(), Some(0))
                } else {
                    type_page(
                        call,
                        search,
                        &source_search,
                        snapshot,
                        None,
                        MAX_LINKED,
                        &indexer.context(),
                    )
                    .await?
                };
                if hits.len() > MAX_LINKED || stopped.is_some() {
                    // Too many to list: each candidate is probed for one instead.
                    deferred.push(Deferred::Has {
                        source: Box::new(source_search),
                        param: param.to_string(),
                        snapshot,
                    });
                    return Ok(Some(Vec::new()));
                }
                let mut ids = BTreeSet::new();
                for hit in &hits {
                    let refs = search
                        .references(
                            source.as_str(),
                            param,
                            Some(resource_type.as_str()),
                            &hit.parsed,
                            &indexer.context(),
                        )
                        .map_err(|_| {
                            ServiceError::invalid(
                                "invalid-search",
                                "_has names a parameter that is not a reference.",
                            )
                        })?;
                    for (t, id) in refs {
                        if t == resource_type.as_str()
                            && let Ok(id) = ResourceId::parse(&id)
                        {
                            ids.insert(id);
                        }
                    }
                }
                if ids.is_empty() {
                    return Ok(None);
                }
                Ok(Some(vec![Clause::Ids(ids.into_iter().collect())]))
            }
            Link::List { list_id } => {
                let list_type =
                    ResourceType::parse("List").map_err(|_| ServiceError::internal())?;
                let Ok(id) = ResourceId::parse(list_id) else {
                    return Ok(None);
                };
                let Some(row) = current_version(call, &list_type, &id).await? else {
                    return Ok(None);
                };
                if row.is_deleted() {
                    return Ok(None);
                }
                let parsed = parse_stored(&open_version(call, &row)?)?;
                let prefix = format!("{resource_type}/");
                let ids: BTreeSet<ResourceId> = parsed
                    .get("entry")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(|e| e.pointer("/item/reference").and_then(Value::as_str))
                    .filter_map(|r| r.strip_prefix(&prefix))
                    .filter_map(|id| ResourceId::parse(id).ok())
                    .collect();
                if ids.is_empty() {
                    return Ok(None);
                }
                Ok(Some(vec![Clause::Ids(ids.into_iter().collect())]))
            }
        }
    })
}

/// The search of a linked type for a criterion (None: nothing can match).
async fn linked_search(
    call: &Call<'_>,
    indexer: &Indexer<'_>,
    resource_type: &ResourceType,
    criterion: &Criterion,
    snapshot: u64,
    depth: usize,
) -> Result<Option<Prepared>, ServiceError> {
    let mut deferred = Vec::new();
    let Some(clauses) = resolve(
        call,
        indexer,
        resource_type,
        criterion,
        snapshot,
        depth + 1,
        &mut deferred,
    )
    .await?
    else {
        return Ok(None);
    };
    Ok(Some(Prepared::new(
        resource_type.clone(),
        clauses,
        std::slice::from_ref(criterion),
        false,
        deferred,
    )))
}

/// `_include` and `_revinclude` (with `:iterate`), bounded by the configured cap; a cap that
/// cuts something off says so in a warning.
async fn includes(
    call: &Call<'_>,
    search: &SearchIndex,
    controls: &Controls,
    page: &[Hit],
    snapshot: u64,
    ctx: &fhirwall_search::Context<'_>,
    warnings: &mut Vec<String>,
) -> Result<Vec<Hit>, ServiceError> {
    if controls.includes.is_empty() && controls.revincludes.is_empty() {
        return Ok(Vec::new());
    }
    let cap = call.service.inner.config.search_max_includes;
    let mut seen: HashSet<(String, String)> = page
        .iter()
        .map(|h| {
            (
                h.row.key.resource_type.as_str().to_string(),
                h.row.key.id.as_str().to_string(),
            )
        })
        .collect();
    let mut included: Vec<Hit> = Vec::new();
    let mut frontier: Vec<usize> = Vec::new(); // indexes into included, for :iterate
    let mut capped = false;
    let mut skipped_types: BTreeSet<String> = BTreeSet::new();
    for round in 0..=MAX_ITERATE {
        let sources: Vec<&Hit> = if round == 0 {
            page.iter().collect()
        } else {
            frontier.iter().filter_map(|&n| included.get(n)).collect()
        };
        if sources.is_empty() {
            break;
        }
        let mut found: Vec<Hit> = Vec::new();
        // _include: what the sources refer to.
        for include in controls.includes.iter().filter(|i| round == 0 || i.iterate) {
            for source in &sources {
                let source_type = source.row.key.resource_type.as_str();
                if !include.applies_to(source_type) {
                    continue;
                }
                let refs = search
                    .references(
                        source_type,
                        &include.param,
                        include.target.as_deref(),
                        &source.parsed,
                        ctx,
                    )
                    .unwrap_or_default();
                for (t, id) in refs {
                    if seen.contains(&(t.clone(), id.clone())) {
                        continue;
                    }
                    if !may_read(call, &t) {
                        skipped_types.insert(t);
                        continue;
                    }
                    if included.len() + found.len() >= cap {
                        capped = true;
                        break;
                    }
                    let (Ok(rt), Ok(rid)) = (ResourceType::parse(&t), ResourceId::parse(&id))
                    else {
                        continue;
                    };
                    seen.insert((t, id));
                    let Some(row) = current_version(call, &rt, &rid).await? else {
                        continue;
                    };
                    if row.is_deleted() || row.seq > snapshot {
                        continue;
                    }
                    let plain = open_version(call, &row)?;
                    let parsed = parse_stored(&plain)?;
                    found.push(Hit { row, plain, parsed });
                }
            }
        }
        // _revinclude: what refers to the sources.
        for include in controls
            .revincludes
            .iter()
            .filter(|i| round == 0 || i.iterate)
        {
            let Ok(source_type) = ResourceType::parse(&include.source) else {
                continue;
            };
            let params: Vec<String> = if include.param == "*" {
                search
                    .params(source_type.as_str())
                    .into_iter()
                    .filter(|p| p.kind == fhirwall_search::ParamKind::Reference)
                    .map(|p| p.name)
                    .collect()
            } else {
                vec![include.param.clone()]
            };
            let indexer = indexer(call, search)?;
            let mut terms = Vec::new();
            for target in &sources {
                for param in &params {
                    for key in search.reference_keys(
                        source_type.as_str(),
                        param,
                        target.row.key.resource_type.as_str(),
                        target.row.key.id.as_str(),
                    ) {
                        terms.push(indexer.term(&source_type, &key));
                    }
                }
            }
            if terms.is_empty() {
                continue;
            }
            terms.sort();
            terms.dedup();
            let room = cap.saturating_sub(included.len() + found.len());
            let rows = call
                .service
                .inner
                .store
                .find_current(CurrentQuery {
                    tenant: call.tenant().clone(),
                    resource_type: source_type.clone(),
                    clauses: vec![Clause::Terms(terms)],
                    after_seq: None,
                    up_to_seq: Some(snapshot),
                    limit: room + 1,
                })
                .await?;
            if rows.len() > room {
                capped = true;
            }
            for row in rows.into_iter().take(room) {
                let key = (
                    row.key.resource_type.as_str().to_string(),
                    row.key.id.as_str().to_string(),
                );
                if seen.contains(&key) || !still_current(call, &row).await? {
                    continue;
                }
                let plain = open_version(call, &row)?;
                let parsed = parse_stored(&plain)?;
                // The terms are exact for references, but a reference to a version or an
                // absolute URL elsewhere shares nothing with another: confirm the link.
                let refers = sources.iter().any(|s| {
                    search
                        .references(
                            source_type.as_str(),
                            &include.param,
                            Some(s.row.key.resource_type.as_str()),
                            &parsed,
                            ctx,
                        )
                        .unwrap_or_default()
                        .iter()
                        .any(|(t, id)| {
                            t == s.row.key.resource_type.as_str() && id == s.row.key.id.as_str()
                        })
                });
                if refers {
                    seen.insert(key);
                    found.push(Hit { row, plain, parsed });
                }
            }
        }
        let start = included.len();
        included.extend(found);
        frontier = (start..included.len()).collect();
        if capped {
            break;
        }
    }
    if capped {
        warnings.push(format!(
            "Included resources were limited to {cap}; some references of this page were not followed."
        ));
    }
    if !skipped_types.is_empty() {
        warnings.push(format!(
            "Resources of {} were not included: the access token's scopes do not allow reading them.",
            skipped_types.into_iter().collect::<Vec<_>>().join(", ")
        ));
    }
    Ok(included)
}

/// Seals a cursor for the calling client.
fn seal_cursor(call: &Call<'_>, state: &CursorState) -> Result<String, ServiceError> {
    let plain = serde_json::to_vec(state).map_err(|_| ServiceError::internal())?;
    let sealed = call.service.inner.envelope.seal(
        &fhirwall_crypto::AadContext::Cursor {
            tenant: call.tenant().as_str(),
            client_id: &call.caller.client_id,
        },
        &plain,
    )?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sealed))
}

/// Opens a cursor: it must be this client's, and alive.
fn open_cursor(call: &Call<'_>, token: &str) -> Result<CursorState, ServiceError> {
    let invalid = || {
        ServiceError::invalid(
            "invalid-cursor",
            "This paging link is not valid for this client, or has expired; run the search again.",
        )
    };
    if token.len() > 16 * 1024 {
        return Err(invalid());
    }
    let sealed = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| invalid())?;
    let plain = call
        .service
        .inner
        .envelope
        .open(
            &fhirwall_crypto::AadContext::Cursor {
                tenant: call.tenant().as_str(),
                client_id: &call.caller.client_id,
            },
            &sealed,
        )
        .map_err(|_| {
            tracing::info!(
                request_id = %call.caller.requester.request_id,
                "a paging cursor did not open for this client"
            );
            invalid()
        })?;
    let state: CursorState = serde_json::from_slice(&plain).map_err(|_| invalid())?;
    if state.expires < call.now.unix_seconds() {
        return Err(invalid());
    }
    Ok(state)
}
