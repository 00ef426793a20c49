//! The search parameters in force, and the online reindex that brings new ones into force.
//!
//! Two indexes are kept. Writes index every resource with the core parameters and every
//! SearchParameter resource stored through the API (`writes`), from the moment it commits. A
//! search uses `active`, which gains a new parameter only when a reindex has gone over every
//! stored resource with it: until then a search on it would miss the resources written
//! before, so the parameter is reported as unsupported instead. A reindex (`$reindex`, or by
//! itself at start-up when the index was built by an older release) walks the current
//! resources in commit order, recomputes their terms and replaces them in batches; reads and
//! writes go on meanwhile (a version written during the walk carries its own new terms, and
//! the store skips a batch item whose version is no longer current).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};

use fhirwall_model::{ResourceType, TenantId, Timestamp};
use fhirwall_search::SearchIndex;
use fhirwall_store::{CurrentQuery, Reindexed};
use serde_json::{Value, json};

use crate::indexing::Indexer;
use crate::{Service, ServiceError};

/// Bumped when the index keys of the search crate change meaning: a database indexed by an
/// older generation is reindexed at start-up.
const GENERATION: &str = "search-3";
/// The setting that records what the stored index was built for.
const SETTING: &str = "search-index";
/// Resources per reindex batch (one commit each).
const BATCH: usize = 500;

/// The state of the reindex job, as `GET $reindex` reports it.
#[derive(Debug, Clone, Default)]
struct Job {
    running: bool,
    started: Option<Timestamp>,
    finished: Option<Timestamp>,
    processed: u64,
    replaced: u64,
    error: Option<String>,
}

pub(crate) struct SearchParameters {
    /// The SearchParameter resources stored through the API, by id: (version, resource).
    custom: RwLock<BTreeMap<String, (u64, Value)>>,
    writes: RwLock<Arc<SearchIndex>>,
    active: RwLock<Arc<SearchIndex>>,
    job: Mutex<Job>,
}

fn read<T: Clone>(lock: &RwLock<T>) -> T {
    match lock.read() {
        Ok(v) => v.clone(),
        Err(poisoned) => poisoned.into_inner().clone(),
    }
}

fn write<T>(lock: &RwLock<T>, value: T) {
    match lock.write() {
        Ok(mut v) => *v = value,
        Err(poisoned) => *poisoned.into_inner() = value,
    }
}

fn build(custom: &BTreeMap<String, (u64, Value)>) -> Result<SearchIndex, ServiceError> {
    let resources: Vec<Value> = custom.values().map(|(_, v)| v.clone()).collect();
    SearchIndex::core().with_custom(&resources).map_err(|e| {
        tracing::error!(?e, "stored SearchParameters do not build an index");
        ServiceError::internal()
    })
}

/// What an index was built for: the generation and each custom parameter's id and version.
fn fingerprint(custom: &BTreeMap<String, (u64, Value)>) -> String {
    let mut out = GENERATION.to_string();
    for (id, (version, _)) in custom {
        out.push_str(&format!(" {id}@{version}"));
    }
    out
}

impl SearchParameters {
    pub(crate) fn new() -> Result<Self, ServiceError> {
        let core = Arc::new(build(&BTreeMap::new())?);
        Ok(SearchParameters {
            custom: RwLock::new(BTreeMap::new()),
            writes: RwLock::new(core.clone()),
            active: RwLock::new(core),
            job: Mutex::new(Job::default()),
        })
    }

    pub(crate) fn active(&self) -> Arc<SearchIndex> {
        read(&self.active)
    }

    pub(crate) fn writes(&self) -> Arc<SearchIndex> {
        read(&self.writes)
    }

    /// Checks a SearchParameter resource before it is stored: it must make a valid index.
    pub(crate) fn check(&self, resource: &Value) -> Result<(), ServiceError> {
        let mut custom = read(&self.custom);
        let id = resource
            .get("id")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        custom.insert(id, (0, resource.clone()));
        let resources: Vec<Value> = custom.values().map(|(_, v)| v.clone()).collect();
        SearchIndex::core()
            .with_custom(&resources)
            .map(|_| ())
            .map_err(|e| {
                let message = match e {
                    fhirwall_search::QueryError::Invalid(m)
                    | fhirwall_search::QueryError::UnknownParameter(m) => m,
                };
                ServiceError::new(
                    crate::ErrorKind::Unprocessable,
                    fhirwall_model::IssueType::Processing,
                    "invalid-search-parameter",
                    format!("This SearchParameter cannot be used for search: {message}"),
                )
            })
    }

    /// A SearchParameter committed (Some) or deleted (None): writes index with it from now on.
    pub(crate) fn committed(&self, id: &str, version: u64, resource: Option<Value>) {
        let mut custom = read(&self.custom);
        match resource {
            Some(resource) => {
                custom.insert(id.to_string(), (version, resource));
            }
            None => {
                custom.remove(id);
            }
        }
        match build(&custom) {
            Ok(index) => {
                write(&self.custom, custom);
                write(&self.writes, Arc::new(index));
            }
            Err(_) => tracing::error!("a committed SearchParameter does not build an index"),
        }
    }

    /// The job's state as a Parameters resource.
    pub(crate) fn status(&self) -> Value {
        let job = match self.job.lock() {
            Ok(j) => j.clone(),
            Err(p) => p.into_inner().clone(),
        };
        let status = if job.running {
            "running"
        } else if job.error.is_some() {
            "failed"
        } else if job.finished.is_some() {
            "completed"
        } else {
            "idle"
        };
        let mut parameter = vec![
            json!({"name": "status", "valueCode": status}),
            json!({"name": "processed", "valueInteger": job.processed}),
            json!({"name": "replaced", "valueInteger": job.replaced}),
        ];
        if let Some(t) = job.started {
            parameter.push(json!({"name": "started", "valueInstant": t.to_fhir_instant()}));
        }
        if let Some(t) = job.finished {
            parameter.push(json!({"name": "finished", "valueInstant": t.to_fhir_instant()}));
        }
        if let Some(e) = &job.error {
            parameter.push(json!({"name": "error", "valueString": e}));
        }
        let pending: Vec<String> = {
            let custom = read(&self.custom);
            let active = self.active();
            custom
                .values()
                .filter_map(|(_, v)| v.get("code").and_then(Value::as_str))
                .filter(|code| {
                    !fhirwall_model::generated::RESOURCE_TYPES
                        .iter()
                        .any(|t| active.params(t.name).iter().any(|p| p.name == *code))
                })
                .map(str::to_string)
                .collect()
        };
        for code in pending {
            parameter.push(json!({"name": "pending", "valueCode": code}));
        }
        json!({"resourceType": "Parameters", "parameter": parameter})
    }
}

impl Service {
    /// Loads the SearchParameters stored through the API and decides whether the stored index
    /// is current. Returns true when a reindex is needed (the caller starts it with
    /// [`Service::start_reindex`]); searches meanwhile use every parameter the writes use.
    pub async fn load_search_parameters(&self) -> Result<bool, String> {
        let params = &self.inner.search;
        let tenant = TenantId::default_tenant();
        let t = ResourceType::parse("SearchParameter").map_err(|e| e.to_string())?;
        let mut custom = BTreeMap::new();
        let mut after = None;
        loop {
            let rows = self
                .inner
                .store
                .find_current(CurrentQuery {
                    tenant: tenant.clone(),
                    resource_type: t.clone(),
                    clauses: Vec::new(),
                    after_seq: after,
                    up_to_seq: None,
                    limit: BATCH,
                })
                .await
                .map_err(|e| format!("cannot list stored SearchParameters: {e}"))?;
            let done = rows.len() < BATCH;
            for row in rows {
                after = Some(row.seq);
                let plain = crate::reads::open_row(self, &row)
                    .map_err(|e| format!("cannot open SearchParameter/{}: {e}", row.key.id))?;
                let value: Value = serde_json::from_slice(&plain)
                    .map_err(|_| format!("SearchParameter/{} is not JSON", row.key.id))?;
                custom.insert(row.key.id.as_str().to_string(), (row.version, value));
            }
            if done {
                break;
            }
        }
        let index = Arc::new(build(&custom).map_err(|e| e.to_string())?);
        let wanted = fingerprint(&custom);
        write(&params.custom, custom);
        write(&params.writes, index.clone());
        write(&params.active, index);
        let stored = self
            .inner
            .store
            .read_setting(SETTING)
            .await
            .map_err(|e| e.to_string())?;
        if stored.as_deref() == Some(wanted.as_str()) {
            return Ok(false);
        }
        let empty = self
            .inner
            .store
            .last_seq()
            .await
            .map_err(|e| e.to_string())?
            == 0;
        if empty {
            self.inner
                .store
                .write_setting(SETTING.into(), wanted)
                .await
                .map_err(|e| e.to_string())?;
            return Ok(false);
        }
        tracing::warn!(
            "the search index was built for other search parameters; a reindex is needed and starts now"
        );
        Ok(true)
    }

    /// Starts a reindex in the background unless one runs. Returns false when one was running.
    pub fn start_reindex(&self) -> bool {
        let params = &self.inner.search;
        {
            let mut job = match params.job.lock() {
                Ok(j) => j,
                Err(p) => p.into_inner(),
            };
            if job.running {
                return false;
            }
            *job = Job {
                running: true,
                started: Some(self.now()),
                ..Job::default()
            };
        }
        let service = self.clone();
        tokio::spawn(async move {
            let result = service.reindex_all().await;
            let params = &service.inner.search;
            let mut job = match params.job.lock() {
                Ok(j) => j,
                Err(p) => p.into_inner(),
            };
            job.running = false;
            job.finished = Some(service.now());
            if let Err(e) = result {
                tracing::error!(error = %e, "the reindex failed");
                job.error = Some("the reindex failed; the server log says why".into());
            }
        });
        true
    }

    async fn reindex_all(&self) -> Result<(), ServiceError> {
        let params = &self.inner.search;
        let custom = read(&params.custom);
        let fingerprint = fingerprint(&custom);
        let index = params.writes();
        let tenant = TenantId::default_tenant();
        let keys = self.tenant_keys(&tenant)?;
        let indexer = Indexer {
            blind: &keys.blind,
            tenant: &tenant,
            search: &index,
            base_url: self.fhir_base_ref(),
        };
        for info in fhirwall_model::generated::RESOURCE_TYPES {
            let Ok(t) = ResourceType::parse(info.name) else {
                continue;
            };
            let mut after = None;
            loop {
                let rows = self
                    .inner
                    .store
                    .find_current(CurrentQuery {
                        tenant: tenant.clone(),
                        resource_type: t.clone(),
                        clauses: Vec::new(),
                        after_seq: after,
                        up_to_seq: None,
                        limit: BATCH,
                    })
                    .await?;
                let done = rows.len() < BATCH;
                let mut items = Vec::with_capacity(rows.len());
                for row in rows {
                    after = Some(row.seq);
                    if !crate::integrity::version_is_genuine(&keys.integrity, &row) {
                        return Err(crate::integrity::tampered("reindexed version", row.seq));
                    }
                    let plain = crate::reads::open_row(self, &row)?;
                    let value: Value =
                        serde_json::from_slice(&plain).map_err(|_| ServiceError::internal())?;
                    items.push(Reindexed {
                        key: row.key.clone(),
                        version: row.version,
                        terms: indexer.resource_terms(&t, &value),
                    });
                }
                let count = items.len() as u64;
                let replaced = if items.is_empty() {
                    0
                } else {
                    self.inner.store.reindex(items).await?
                };
                if let Ok(mut job) = params.job.lock() {
                    job.processed += count;
                    job.replaced += replaced;
                }
                if done {
                    break;
                }
            }
        }
        // Only the parameters the walk indexed come into force; one registered meanwhile waits
        // for the next reindex.
        write(&params.active, index);
        self.inner
            .store
            .write_setting(SETTING.into(), fingerprint)
            .await?;
        Ok(())
    }
}
