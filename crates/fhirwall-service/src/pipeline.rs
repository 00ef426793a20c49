//! The write pipeline, written once for create, update, patch, delete and the conditional
//! writes: [`write_loop`] reads the current version, checks `If-Match`, builds the new version,
//! and retries when another writer got there first; [`commit`] validates, stamps, computes
//! index terms and integrity tags, seals, builds the audit record and hands both to the store
//! in one write. Nothing is stored, sealed or audited as written unless it is valid.

use fhirwall_audit::{Action, EventKind};
use fhirwall_crypto::AadContext;
use fhirwall_model::{OperationOutcome, ResourceId, ResourceType, Timestamp};
use fhirwall_store::{Expect, Method, NoMatchGuard, StoredVersion, WriteConflict, WriteRequest};
use serde_json::{Map, Value};

use crate::audit::{self, AuditDetail};
use crate::indexing::Indexer;
use crate::{Call, Failed, ServiceError, integrity};

/// Attempts before a write gives up with 409 write-contention.
const WRITE_ATTEMPTS: usize = 8;
const WRITE_LOCK_STRIPES: usize = 512;

/// Writers of the same resource in this process queue on a stripe instead of racing each
/// other into optimistic retries. Per process: the store's version check is what decides
/// across processes.
pub(crate) struct WriteQueues {
    stripes: Vec<tokio::sync::Mutex<()>>,
    fallback: tokio::sync::Mutex<()>,
}

impl WriteQueues {
    pub fn new() -> Self {
        WriteQueues {
            stripes: (0..WRITE_LOCK_STRIPES)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
            fallback: tokio::sync::Mutex::new(()),
        }
    }

    async fn lock(
        &self,
        resource_type: &ResourceType,
        id: &ResourceId,
    ) -> tokio::sync::MutexGuard<'_, ()> {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for byte in resource_type
            .as_str()
            .bytes()
            .chain([b'/'])
            .chain(id.as_str().bytes())
        {
            hash = (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
        }
        let index = (hash % WRITE_LOCK_STRIPES as u64) as usize;
        self.stripes
            .get(index)
            .unwrap_or(&self.fallback)
            .lock()
            .await
    }
}

/// Everything needed to store one new version.
pub(crate) struct NewVersion {
    pub resource_type: ResourceType,
    pub id: ResourceId,
    pub version: u64,
    pub method: Method,
    pub expect: Expect,
    pub guard: Option<NoMatchGuard>,
    /// None for a delete.
    pub body: Option<Map<String, Value>>,
    /// Whether the version brings a resource into being: the first, or the first after a
    /// deletion (an un-delete is a create, answered and audited 201).
    pub creates: bool,
}

impl NewVersion {
    /// The next version after `current` (or the first), as `method` makes it.
    pub fn after(
        current: Option<&StoredVersion>,
        resource_type: &ResourceType,
        id: &ResourceId,
        method: Method,
        body: Option<Map<String, Value>>,
    ) -> Self {
        let (version, expect) = match current {
            None => (1, Expect::Absent),
            Some(row) => (row.version + 1, Expect::Current(row.version)),
        };
        NewVersion {
            resource_type: resource_type.clone(),
            id: id.clone(),
            version,
            method,
            expect,
            guard: None,
            creates: method != Method::Delete && current.is_none_or(StoredVersion::is_deleted),
            body,
        }
    }
}

/// A committed version.
pub(crate) struct Written {
    pub version: u64,
    /// Whether it brought the resource into being (see [`NewVersion::creates`]).
    pub created: bool,
    pub at: Timestamp,
    /// The stored plaintext (None for a delete).
    pub stored: Option<Vec<u8>>,
    /// What validation warned about, for `Prefer: return=OperationOutcome`.
    pub warnings: Vec<OperationOutcome>,
}

/// How a write loop ended without an error.
pub(crate) enum Outcome {
    Written(Written),
    /// The builder decided nothing needs writing (deleting what is absent).
    Unchanged,
    /// A conditional guard matched these resources at commit time.
    GuardMatched(Vec<ResourceId>),
}

/// The read-check-write loop: looks at the current version (or takes `known` for the first
/// attempt), checks `expected` (If-Match), lets `build` make the new version from it, and
/// commits only if nothing changed meanwhile.
pub(crate) async fn write_loop(
    call: &Call<'_>,
    resource_type: &ResourceType,
    id: &ResourceId,
    expected: Option<u64>,
    mut known: Option<Option<StoredVersion>>,
    mut build: impl FnMut(Option<&StoredVersion>) -> Result<Option<NewVersion>, Failed>,
) -> Result<Outcome, Failed> {
    let changed_since_if_match = || {
        ServiceError::precondition_failed("The resource has changed since the version in If-Match.")
    };
    let _queue = call.service.inner.writes.lock(resource_type, id).await;
    for _ in 0..WRITE_ATTEMPTS {
        let current = match known.take() {
            Some(known) => known,
            None => crate::reads::current_version(call, resource_type, id).await?,
        };
        if let Some(expected) = expected {
            match &current {
                Some(row) if row.version == expected && !row.is_deleted() => {}
                _ => return Err(changed_since_if_match().into()),
            }
        }
        let Some(new) = build(current.as_ref())? else {
            return Ok(Outcome::Unchanged);
        };
        match commit(call, new).await? {
            Ok(written) => return Ok(Outcome::Written(written)),
            Err(WriteConflict::VersionMismatch { .. }) if expected.is_some() => {
                return Err(changed_since_if_match().into());
            }
            Err(WriteConflict::VersionMismatch { .. }) => continue,
            Err(WriteConflict::GuardMatched { ids }) => return Ok(Outcome::GuardMatched(ids)),
        }
    }
    Err(ServiceError::write_contention().into())
}

/// The stored form of a version: resourceType, id and meta first, with the server's
/// versionId and lastUpdated.
/// The resources a transaction writes or deletes, for [`check_references`].
#[derive(Debug, Default)]
pub(crate) struct Pending {
    pub written: std::collections::HashSet<(ResourceType, ResourceId)>,
    pub deleted: std::collections::HashSet<(ResourceType, ResourceId)>,
}

/// At most this many distinct references of one resource are checked for existence.
const MAX_CHECKED_REFERENCES: usize = 200;

/// The relative references (`Type/id`, `Type/id/_history/n`) a resource body makes to
/// resources on this server, without duplicates. A Bundle resource's entries are documents
/// of their own and are not followed.
pub(crate) fn local_references(body: &Map<String, Value>) -> Vec<(ResourceType, ResourceId)> {
    fn walk(value: &Value, out: &mut Vec<(ResourceType, ResourceId)>) {
        match value {
            Value::Object(map) => {
                for (key, child) in map {
                    if key == "reference"
                        && let Value::String(text) = child
                    {
                        let mut parts = text.split('/');
                        if let (Some(t), Some(id)) = (parts.next(), parts.next())
                            && matches!(parts.next(), None | Some("_history"))
                            && let (Ok(t), Ok(id)) = (ResourceType::parse(t), ResourceId::parse(id))
                            && !out.contains(&(t.clone(), id.clone()))
                        {
                            out.push((t, id));
                        }
                    } else if key != "contained" {
                        walk(child, out);
                    }
                }
            }
            Value::Array(items) => {
                for item in items {
                    walk(item, out);
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    if body.get("resourceType").and_then(Value::as_str) == Some("Bundle") {
        return out;
    }
    for (key, value) in body {
        if key != "contained" {
            walk(value, &mut out);
        }
    }
    out
}

/// Refuses (422) a resource that refers to a resource of this server that does not exist,
/// unless the server is configured to allow it. Resources a transaction writes count as
/// existing; ones it deletes do not.
pub(crate) async fn check_references(
    call: &Call<'_>,
    references: &[(ResourceType, ResourceId)],
    pending: &Pending,
) -> Result<(), ServiceError> {
    if !call.service.inner.config.referential_integrity {
        return Ok(());
    }
    for (t, id) in references.iter().take(MAX_CHECKED_REFERENCES) {
        let key = (t.clone(), id.clone());
        if pending.deleted.contains(&key) {
            return Err(dangling(t, id, "is deleted by this transaction"));
        }
        if pending.written.contains(&key) {
            continue;
        }
        match crate::reads::current_version(call, t, id).await? {
            Some(row) if !row.is_deleted() => {}
            Some(_) => return Err(dangling(t, id, "has been deleted")),
            None => return Err(dangling(t, id, "does not exist")),
        }
    }
    Ok(())
}

fn dangling(t: &ResourceType, id: &ResourceId, why: &str) -> ServiceError {
    ServiceError::new(
        crate::ErrorKind::Unprocessable,
        fhirwall_model::IssueType::Processing,
        "reference-not-found",
        format!("The resource refers to {t}/{id}, which {why} on this server."),
    )
}

/// Rewrites `reference` values under `base` (`{base}/Patient/1`) to relative ones (`Patient/1`).
pub(crate) fn localize_references(value: &mut Value, base: &str) {
    match value {
        Value::Object(map) => {
            for (key, child) in map.iter_mut() {
                if key == "reference"
                    && let Value::String(text) = child
                    && let Some(rest) = text.strip_prefix(base).and_then(|r| r.strip_prefix('/'))
                    && rest.split('/').count() >= 2
                    && !rest.starts_with('_')
                    && !rest.starts_with('$')
                {
                    *text = rest.to_string();
                } else {
                    localize_references(child, base);
                }
            }
        }
        Value::Array(items) => {
            for item in items {
                localize_references(item, base);
            }
        }
        _ => {}
    }
}

fn stamp(
    mut map: Map<String, Value>,
    resource_type: &ResourceType,
    id: &ResourceId,
    version: u64,
    at: Timestamp,
) -> Value {
    let mut meta = match map.remove("meta") {
        Some(Value::Object(meta)) => meta,
        _ => Map::new(),
    };
    meta.shift_remove("versionId");
    meta.shift_remove("lastUpdated");
    let mut new_meta = Map::new();
    new_meta.insert("versionId".into(), Value::String(version.to_string()));
    new_meta.insert("lastUpdated".into(), Value::String(at.to_fhir_instant()));
    new_meta.extend(meta);
    let mut out = Map::with_capacity(map.len() + 3);
    out.insert(
        "resourceType".into(),
        Value::String(resource_type.as_str().into()),
    );
    out.insert("id".into(), Value::String(id.as_str().into()));
    out.insert("meta".into(), Value::Object(new_meta));
    for (k, v) in map {
        if k != "resourceType" && k != "id" {
            out.insert(k, v);
        }
    }
    Value::Object(out)
}

/// A version ready for the store: its write request (sealed version, tags, terms, audit
/// record), what the caller will be told, and the profile to make live once it commits.
pub(crate) struct Prepared {
    pub request: WriteRequest,
    pub written: Written,
    /// The patients the version concerns, for a transaction's own audit record.
    pub patients: Vec<String>,
    profile: Option<(ResourceId, Option<crate::profiles::PreparedProfile>)>,
    search_parameter: Option<SearchParameterChange>,
}

/// A SearchParameter written (its resource) or deleted (None), for the writes' index.
type SearchParameterChange = (ResourceId, u64, Option<Value>);

/// What is left of a [`Prepared`] version once its request went to the store.
pub(crate) struct AfterCommit {
    written: Written,
    profile: Option<(ResourceId, Option<crate::profiles::PreparedProfile>)>,
    search_parameter: Option<SearchParameterChange>,
}

impl AfterCommit {
    /// What follows a committed write: a StructureDefinition's profile goes live (or retires).
    pub fn committed(self, service: &crate::Service) -> Written {
        if let Some((id, profile)) = self.profile {
            let profiles = &service.inner.profiles;
            match profile {
                Some(profile) => profiles.register(id.as_str(), profile),
                None => profiles.unregister(id.as_str()),
            }
        }
        if let Some((id, version, resource)) = self.search_parameter {
            service
                .inner
                .search
                .committed(id.as_str(), version, resource);
        }
        self.written
    }
}

impl Prepared {
    /// The store's request, and what to do once it committed.
    pub fn split(self) -> (WriteRequest, AfterCommit) {
        (
            self.request,
            AfterCommit {
                written: self.written,
                profile: self.profile,
                search_parameter: self.search_parameter,
            },
        )
    }
}

/// Validates, stamps, seals and tags a version, builds its audit record, and hands both to the
/// store in one write. The version's `lastUpdated` and its audit record carry the request's one
/// clock reading.
pub(crate) async fn commit(
    call: &Call<'_>,
    new: NewVersion,
) -> Result<Result<Written, WriteConflict>, ServiceError> {
    let references = new.body.as_ref().map(local_references).unwrap_or_default();
    let ready = prepare(call, new)?;
    check_references(call, &references, &Pending::default()).await?;
    let (request, after) = ready.split();
    let outcome = call.service.inner.store.write(request).await?;
    Ok(outcome.map(|_| after.committed(call.service)))
}

/// Everything of [`commit`] but the store write: a transaction prepares each entry, then
/// stores them all at once.
pub(crate) fn prepare(call: &Call<'_>, new: NewVersion) -> Result<Prepared, ServiceError> {
    let service = call.service;
    if service.storage_low() {
        return Err(ServiceError::new(
            crate::ErrorKind::InsufficientStorage,
            fhirwall_model::IssueType::Exception,
            "insufficient-storage",
            "The server is low on storage and refuses writes until space is freed; retry later.",
        ));
    }
    let now = call.now;
    let keys = service.tenant_keys(call.tenant())?;
    let profiles = &service.inner.profiles;
    let is_structure_definition = new.resource_type.as_str() == "StructureDefinition";
    let is_search_parameter = new.resource_type.as_str() == "SearchParameter";
    let mut search_parameter: Option<SearchParameterChange> =
        (is_search_parameter && new.body.is_none()).then(|| (new.id.clone(), new.version, None));
    let mut profile = None;
    let mut warnings = Vec::new();
    let (stored, terms, patients) = match new.body {
        Some(mut map) => {
            // References to this server by its absolute URL are kept relative, as clients
            // mostly write them: what is stored (and indexed) then does not depend on the
            // address the server was reached by.
            for value in map.values_mut() {
                localize_references(value, service.fhir_base_ref());
            }
            let unstamped = Value::Object(map);
            warnings = profiles.check_write(&unstamped, new.method == Method::Patch, now)?;
            if is_structure_definition {
                profile = profiles.prepare_profile(&unstamped)?;
            }
            let Value::Object(map) = unstamped else {
                return Err(ServiceError::internal());
            };
            let value = stamp(map, &new.resource_type, &new.id, new.version, now);
            if is_search_parameter {
                service.inner.search.check(&value)?;
                search_parameter = Some((new.id.clone(), new.version, Some(value.clone())));
            }
            let search = service.write_index();
            let indexer = Indexer {
                blind: &keys.blind,
                tenant: call.tenant(),
                search: &search,
                base_url: service.fhir_base_ref(),
            };
            let terms = indexer.resource_terms(&new.resource_type, &value);
            let patients =
                fhirwall_model::patient_references(&new.resource_type, new.id.as_str(), &value);
            let bytes = serde_json::to_vec(&value).map_err(|_| ServiceError::internal())?;
            (Some(bytes), terms, patients)
        }
        None => (None, Vec::new(), Vec::new()),
    };
    let key = call.key(&new.resource_type, &new.id);
    let sealed = match &stored {
        Some(bytes) => Some(service.inner.envelope.seal(
            &AadContext::Resource {
                tenant: key.tenant.as_str(),
                resource_type: key.resource_type.as_str(),
                id: key.id.as_str(),
                version: new.version,
            },
            bytes,
        )?),
        None => None,
    };
    let mut version = StoredVersion {
        key,
        version: new.version,
        last_updated_micros: now.micros(),
        method: new.method,
        sealed_body: sealed,
        seq: 0,
        tag: None,
    };
    version.tag = Some(integrity::version_tag(&keys.integrity, &version));
    let pointer_tag = integrity::pointer_tag(&keys.integrity, &version.key, new.version);
    let status = if new.creates {
        201
    } else if new.method == Method::Delete {
        204
    } else {
        200
    };
    let mut detail = AuditDetail::of_request(call.request);
    detail.subtype = new.method.as_str();
    detail.action = Some(match new.method {
        Method::Create => Action::Create,
        Method::Update | Method::Patch => Action::Update,
        Method::Delete => Action::Delete,
    });
    detail.entities = vec![version.key.versioned_reference(new.version)];
    detail.patients = patients.clone();
    let record = audit::record(
        service,
        &call.caller.requester,
        Some(call.caller),
        EventKind::Rest,
        detail,
        status,
        now,
    );
    let audit = audit::seal(service, &record, now)?;
    Ok(Prepared {
        request: WriteRequest {
            version,
            pointer_tag,
            expect: new.expect,
            guard: new.guard,
            index_terms: terms,
            audit,
        },
        written: Written {
            version: new.version,
            created: new.creates,
            at: now,
            stored,
            warnings,
        },
        patients,
        profile: is_structure_definition.then(|| (new.id.clone(), profile)),
        search_parameter,
    })
}
