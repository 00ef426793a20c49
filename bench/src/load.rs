//! The closed-loop load: N tasks, each owning one keep-alive connection and sending its next
//! request as soon as the previous answer is read. A phase runs for a duration (after a warm-up
//! that is not measured) or until a number of requests has been issued.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http::header::LOCATION;
use http::{Method, Request, StatusCode, Uri};
use http_body_util::Full;
use tokio::task::JoinSet;

use crate::auth::TokenCell;
use crate::client::{Conn, Reply, Target, fhir_json, request};
use crate::cpu::{CpuMeter, CpuUse};
use crate::payloads::{Observations, Patients};
use crate::stats::{Recorder, Summary, summarize};

/// What each request does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// POST /fhir/Patient with a ~3 KB US Core-like Patient.
    CreatePatient,
    /// POST /fhir/Observation with a ~1.5 KB vital sign about a pool patient.
    CreateObservation,
    /// GET /fhir/Patient/{id} of a pool patient.
    ReadPatient,
    /// The same read, answered as FHIR XML (`Accept: application/fhir+xml`).
    ReadPatientXml,
    /// Creates: one Patient, then `n` Observations about pool patients, and again.
    Mixed(u64),
    /// POST /fhir with a transaction Bundle of `n` entries: one new Patient (`urn:uuid`
    /// fullUrl) and `n - 1` Observations whose subject is that `urn:uuid`.
    Transaction(u64),
    /// A search (GET, 200 with a searchset Bundle) over the pool and its Observations.
    Search(SearchOp),
    /// GET / on the hello-world ceiling server.
    Hello,
}

/// The searches the harness times. The pool's Patients have 12 family names and each pool
/// patient has Observations of six vital signs over 2025 (`--observations-per-pool-patient`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SearchOp {
    /// `Patient?family=F&_count=20`: a string prefix on a name (about 1/12 of the Patients).
    PatientFamily,
    /// `Observation?subject=Patient/ID`: a reference, one pool patient's Observations.
    ObservationSubject,
    /// `Observation?code=http://loinc.org|8867-4&date=ge2025-06-01&_count=20`: a token and a
    /// date range together.
    ObservationCodeDate,
    /// `Observation?subject=Patient/ID&_include=Observation:subject`: a reference with the
    /// Patient included.
    ObservationInclude,
    /// `Observation?subject.family=F&code=...|8867-4&_count=20`: a chain into Patient.
    ObservationChain,
    /// `Patient?_has:Observation:subject:code=...|8867-4&family=F&_count=20`: reverse chaining.
    PatientHas,
    /// `Observation?subject:Patient.identifier=MRN`: a chain to one patient.
    ObservationChainIdentifier,
}

impl SearchOp {
    const ALL: [(SearchOp, &'static str); 7] = [
        (SearchOp::PatientFamily, "search-family"),
        (SearchOp::ObservationSubject, "search-subject"),
        (SearchOp::ObservationCodeDate, "search-code-date"),
        (SearchOp::ObservationInclude, "search-include"),
        (SearchOp::ObservationChain, "search-chain"),
        (SearchOp::PatientHas, "search-has"),
        (SearchOp::ObservationChainIdentifier, "search-chain-id"),
    ];

    fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(op, _)| *op == self)
            .map_or("search", |(_, name)| name)
    }
}

/// Family names the pool's Patients have (`payloads::FAMILY`).
const FAMILIES: &[&str] = crate::payloads::FAMILY;
/// Heart rate: the first vital sign of the payloads.
const HEART_RATE: &str = "http://loinc.org%7C8867-4";

impl Op {
    pub fn name(&self) -> String {
        match self {
            Op::CreatePatient => "create-patient".into(),
            Op::CreateObservation => "create-observation".into(),
            Op::ReadPatient => "read-patient".into(),
            Op::ReadPatientXml => "read-patient-xml".into(),
            Op::Mixed(n) => format!("create-mixed(1:{n})"),
            Op::Transaction(n) => format!("transaction-{n}"),
            Op::Search(search) => search.name().into(),
            Op::Hello => "hello-tls (ceiling)".into(),
        }
    }

    pub fn parse(text: &str) -> Result<Op> {
        Ok(match text.trim() {
            "create-patient" => Op::CreatePatient,
            "create-observation" => Op::CreateObservation,
            "read-patient" => Op::ReadPatient,
            "read-patient-xml" => Op::ReadPatientXml,
            "hello" => Op::Hello,
            other if other.starts_with("search-") => SearchOp::ALL
                .iter()
                .find(|(_, name)| *name == other)
                .map(|(op, _)| Op::Search(*op))
                .with_context(|| {
                    format!(
                        "unknown search op {other:?}: expected one of {}",
                        SearchOp::ALL.map(|(_, n)| n).join(", ")
                    )
                })?,
            other => match other
                .strip_prefix("transaction-")
                .and_then(|n| n.parse::<u64>().ok())
            {
                Some(n) if (1..=1000).contains(&n) => Op::Transaction(n),
                _ => bail!(
                    "unknown op {other:?}: expected create-patient, create-observation, read-patient, read-patient-xml, transaction-N (N entries, 1 to 1000) or hello"
                ),
            },
        })
    }

    /// Whether the op needs patients created beforehand.
    pub fn needs_pool(&self) -> bool {
        match self {
            Op::CreateObservation | Op::ReadPatient | Op::ReadPatientXml | Op::Search(_) => true,
            Op::Mixed(n) => *n > 0,
            Op::CreatePatient | Op::Transaction(_) | Op::Hello => false,
        }
    }

    /// Whether the op needs Observations about the pool created beforehand.
    pub fn needs_observations(&self) -> bool {
        matches!(self, Op::Search(s) if *s != SearchOp::PatientFamily)
    }
}

/// Everything a load task needs to build requests.
pub struct Workload {
    pub op: Op,
    pub target: Arc<Target>,
    pub token: Option<Arc<TokenCell>>,
    pub patients: Arc<Patients>,
    pub observations: Arc<Observations>,
    /// Ids of patients created beforehand (reads and Observation subjects).
    pub pool: Arc<Vec<String>>,
    /// The MRNs of the pool's patients, by position (for searches by identifier).
    pub mrns: Arc<Vec<String>>,
    read_paths: Vec<Uri>,
    /// The sequence number of the next body, unique over the whole benchmark process.
    pub seq: Arc<AtomicU64>,
    /// Answers of the expected status so far.
    pub completed: AtomicU64,
    /// Other answers and transport errors so far.
    pub failed: AtomicU64,
}

impl Workload {
    pub fn new(
        op: Op,
        target: Arc<Target>,
        token: Option<Arc<TokenCell>>,
        patients: Arc<Patients>,
        observations: Arc<Observations>,
        pool: Arc<Vec<String>>,
        seq: Arc<AtomicU64>,
    ) -> Result<Self> {
        let read_paths = pool
            .iter()
            .map(|id| Uri::try_from(format!("/fhir/Patient/{id}")))
            .collect::<Result<Vec<_>, _>>()
            .context("a pool patient id is not a valid path segment")?;
        if op.needs_pool() && pool.is_empty() {
            bail!("{} needs patients created beforehand", op.name());
        }
        Ok(Workload {
            op,
            target,
            token,
            patients,
            observations,
            pool,
            mrns: Arc::new(Vec::new()),
            read_paths,
            seq,
            completed: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        })
    }

    /// The same workload, with the MRNs of its pool's patients.
    pub fn with_mrns(mut self, mrns: Arc<Vec<String>>) -> Self {
        self.mrns = mrns;
        self
    }

    fn pool_index(&self, seq: u64) -> usize {
        // Spread consecutive requests over the pool rather than walking it in order.
        let len = self.pool.len().max(1) as u64;
        usize::try_from(seq.wrapping_mul(0x9e37_79b9_7f4a_7c15) % len).unwrap_or(0)
    }

    fn create(
        &self,
        path: &'static str,
        body: Vec<u8>,
    ) -> Result<(Request<Full<Bytes>>, StatusCode)> {
        let req = request(
            Method::POST,
            Uri::from_static(path),
            self.token.as_ref().map(|t| t.get()),
            Some(fhir_json()),
            Bytes::from(body),
        )?;
        Ok((req, StatusCode::CREATED))
    }

    fn create_observation(&self, seq: u64) -> Result<(Request<Full<Bytes>>, StatusCode)> {
        let subject = self
            .pool
            .get(self.pool_index(seq))
            .map(String::as_str)
            .unwrap_or_default();
        self.create("/fhir/Observation", self.observations.body(seq, subject))
    }

    /// A transaction Bundle of `n` entries: a Patient and Observations about it by `urn:uuid`.
    fn transaction(&self, seq: u64, n: u64) -> Result<Vec<u8>> {
        let patient_urn = format!("urn:uuid:00000000-0000-4000-8000-{seq:012}");
        let mut entries = Vec::with_capacity(usize::try_from(n).unwrap_or(0));
        let patient: serde_json::Value = serde_json::from_slice(&self.patients.body(seq))?;
        entries.push(serde_json::json!({
            "fullUrl": patient_urn, "resource": patient,
            "request": {"method": "POST", "url": "Patient"},
        }));
        for i in 1..n {
            let body = self.observations.body(seq * 1000 + i, "__SUBJECT__");
            let text = String::from_utf8_lossy(&body).replace("Patient/__SUBJECT__", &patient_urn);
            let observation: serde_json::Value = serde_json::from_str(&text)?;
            entries.push(serde_json::json!({
                "fullUrl": format!("urn:uuid:00000000-0000-4000-9000-{:012}", seq * 1000 + i),
                "resource": observation,
                "request": {"method": "POST", "url": "Observation"},
            }));
        }
        Ok(serde_json::to_vec(&serde_json::json!({
            "resourceType": "Bundle", "type": "transaction", "entry": entries,
        }))?)
    }

    /// The path and query of search number `seq`.
    pub fn search_path(&self, search: SearchOp, seq: u64) -> String {
        let family = FAMILIES
            .get(usize::try_from(seq % FAMILIES.len() as u64).unwrap_or(0))
            .copied()
            .unwrap_or("Shaw");
        let patient = self
            .pool
            .get(self.pool_index(seq))
            .map(String::as_str)
            .unwrap_or("none");
        let mrn = self
            .mrns
            .get(self.pool_index(seq))
            .map(String::as_str)
            .unwrap_or("none");
        match search {
            SearchOp::ObservationChainIdentifier => format!(
                "/fhir/Observation?subject:Patient.identifier=http://hospital.example.org/fhir/sid/mrn%7C{mrn}"
            ),
            SearchOp::PatientFamily => format!("/fhir/Patient?family={family}&_count=20"),
            SearchOp::ObservationSubject => format!("/fhir/Observation?subject=Patient/{patient}"),
            SearchOp::ObservationCodeDate => {
                format!("/fhir/Observation?code={HEART_RATE}&date=ge2025-06-01&_count=20")
            }
            SearchOp::ObservationInclude => {
                format!("/fhir/Observation?subject=Patient/{patient}&_include=Observation:subject")
            }
            SearchOp::ObservationChain => format!(
                "/fhir/Observation?subject:Patient.family={family}&code={HEART_RATE}&_count=20"
            ),
            SearchOp::PatientHas => format!(
                "/fhir/Patient?_has:Observation:subject:code={HEART_RATE}&family={family}&_count=20"
            ),
        }
    }

    /// Request number `seq` and the status that counts as success.
    fn request(&self, seq: u64) -> Result<(Request<Full<Bytes>>, StatusCode)> {
        match self.op {
            Op::CreatePatient => self.create("/fhir/Patient", self.patients.body(seq)),
            Op::CreateObservation => self.create_observation(seq),
            Op::Mixed(n) => {
                if seq.is_multiple_of(n + 1) {
                    self.create("/fhir/Patient", self.patients.body(seq))
                } else {
                    self.create_observation(seq)
                }
            }
            Op::Transaction(n) => {
                let req = request(
                    Method::POST,
                    Uri::from_static("/fhir"),
                    self.token.as_ref().map(|t| t.get()),
                    Some(fhir_json()),
                    Bytes::from(self.transaction(seq, n)?),
                )?;
                Ok((req, StatusCode::OK))
            }
            Op::ReadPatient | Op::ReadPatientXml => {
                let path = self
                    .read_paths
                    .get(self.pool_index(seq))
                    .cloned()
                    .unwrap_or_else(|| Uri::from_static("/fhir/Patient/none"));
                let mut req = request(
                    Method::GET,
                    path,
                    self.token.as_ref().map(|t| t.get()),
                    None,
                    Bytes::new(),
                )?;
                if self.op == Op::ReadPatientXml {
                    req.headers_mut().insert(
                        http::header::ACCEPT,
                        http::HeaderValue::from_static("application/fhir+xml"),
                    );
                }
                Ok((req, StatusCode::OK))
            }
            Op::Search(search) => {
                let req = request(
                    Method::GET,
                    Uri::try_from(self.search_path(search, seq))?,
                    self.token.as_ref().map(|t| t.get()),
                    None,
                    Bytes::new(),
                )?;
                Ok((req, StatusCode::OK))
            }
            Op::Hello => {
                let req = request(Method::GET, Uri::from_static("/"), None, None, Bytes::new())?;
                Ok((req, StatusCode::OK))
            }
        }
    }
}

/// How long a phase lasts.
#[derive(Debug, Clone, Copy)]
pub enum Until {
    /// Warm up, then measure for the duration.
    Time { warmup: Duration, measure: Duration },
    /// Issue this many requests (errors included), all measured.
    Count(u64),
}

/// What a phase produced.
#[derive(Debug)]
pub struct PhaseResult {
    pub summary: Summary,
    /// With `collect_ids`: the ids from the `Location` of every successful create.
    pub ids: Vec<String>,
    /// From the start of measurement to the last answer.
    pub elapsed: Duration,
    /// CPU use over the measured window, when a meter was given.
    pub cpu: Option<CpuUse>,
}

/// The id in `https://host/fhir/Type/ID/_history/1`.
pub fn id_from_location(location: &str) -> Option<String> {
    let (_, path) = location.split_once("/fhir/")?;
    let id = path.split('/').nth(1)?;
    (!id.is_empty()).then(|| id.to_string())
}

/// A short description of a failed answer, with digits folded so that errors differing only in
/// ids or counts are counted together.
fn describe_reply(reply: &Reply) -> String {
    let snippet: String = reply
        .body_snippet(160)
        .chars()
        .map(|c| if c.is_ascii_digit() { '#' } else { c })
        .collect();
    format!("HTTP {}: {snippet}", reply.status.as_u16())
}

fn describe_error(error: &anyhow::Error) -> String {
    let text = format!("{error:#}");
    let mut short: String = text.chars().take(160).collect();
    if text.chars().count() > 160 {
        short.push('…');
    }
    short
}

/// How long a task keeps trying to reconnect before it stops.
const RECONNECT_GIVE_UP: Duration = Duration::from_secs(30);

struct TaskPlan {
    measure_start: Instant,
    deadline: Option<Instant>,
    limit: Option<u64>,
    issued: Arc<AtomicU64>,
    collect_ids: bool,
}

async fn run_task(work: Arc<Workload>, mut conn: Conn, plan: TaskPlan) -> (Recorder, Vec<String>) {
    let mut recorder = Recorder::new(plan.measure_start);
    let mut ids = Vec::new();
    loop {
        if plan.deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        if plan
            .limit
            .is_some_and(|limit| plan.issued.fetch_add(1, Ordering::Relaxed) >= limit)
        {
            break;
        }
        let seq = work.seq.fetch_add(1, Ordering::Relaxed);
        let sent = Instant::now();
        let (req, expected) = match work.request(seq) {
            Ok(pair) => pair,
            Err(e) => {
                recorder.error(
                    sent,
                    format!("building the request: {}", describe_error(&e)),
                );
                work.failed.fetch_add(1, Ordering::Relaxed);
                continue;
            }
        };
        match conn.send(req).await {
            Ok(reply) if reply.status == expected => {
                recorder.success(sent, Instant::now());
                work.completed.fetch_add(1, Ordering::Relaxed);
                if plan.collect_ids
                    && let Some(id) = reply
                        .headers
                        .get(LOCATION)
                        .and_then(|v| v.to_str().ok())
                        .and_then(id_from_location)
                {
                    ids.push(id);
                }
            }
            Ok(reply) => {
                recorder.error(sent, describe_reply(&reply));
                work.failed.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                recorder.error(sent, describe_error(&e));
                work.failed.fetch_add(1, Ordering::Relaxed);
                // The connection may be gone: open another, unless the phase is over or the
                // server has been unreachable for longer than RECONNECT_GIVE_UP.
                let give_up = Instant::now() + RECONNECT_GIVE_UP;
                loop {
                    if plan.deadline.is_some_and(|d| Instant::now() >= d) {
                        return (recorder, ids);
                    }
                    if Instant::now() >= give_up {
                        recorder.error(
                            Instant::now(),
                            "gave up: the server was unreachable for 30 s".into(),
                        );
                        return (recorder, ids);
                    }
                    match work.target.connect().await {
                        Ok(fresh) => {
                            conn = fresh;
                            break;
                        }
                        Err(e) => {
                            recorder.error(
                                Instant::now(),
                                format!("reconnecting: {}", describe_error(&e)),
                            );
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                }
            }
        }
    }
    (recorder, ids)
}

/// Opens `connections` connections, then runs the phase on them; with a `meter`, also measures
/// CPU use over the measured window.
pub async fn run_phase(
    work: Arc<Workload>,
    connections: usize,
    until: Until,
    collect_ids: bool,
    meter: Option<CpuMeter>,
) -> Result<PhaseResult> {
    let mut opening = JoinSet::new();
    for _ in 0..connections.max(1) {
        let target = work.target.clone();
        opening.spawn(async move { target.connect().await });
    }
    let mut conns = Vec::with_capacity(connections);
    while let Some(joined) = opening.join_next().await {
        conns.push(joined.context("a connecting task panicked")??);
    }

    let begin = Instant::now();
    let (measure_start, deadline, limit, window) = match until {
        Until::Time { warmup, measure } => (
            begin + warmup,
            Some(begin + warmup + measure),
            None,
            Some(measure),
        ),
        Until::Count(n) => (begin, None, Some(n), None),
    };
    let sampler = meter.map(|meter| {
        tokio::spawn(async move {
            tokio::time::sleep_until(tokio::time::Instant::from_std(measure_start)).await;
            let start = meter.sample().ok();
            let end = match deadline {
                Some(deadline) => {
                    tokio::time::sleep_until(tokio::time::Instant::from_std(deadline)).await;
                    meter.sample().ok()
                }
                None => None,
            };
            (meter, start, end)
        })
    });
    let issued = Arc::new(AtomicU64::new(0));
    let mut tasks = JoinSet::new();
    for conn in conns {
        let plan = TaskPlan {
            measure_start,
            deadline,
            limit,
            issued: issued.clone(),
            collect_ids,
        };
        tasks.spawn(run_task(work.clone(), conn, plan));
    }
    let mut recorders = Vec::with_capacity(connections);
    let mut ids = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        let (recorder, mut task_ids) = joined.context("a load task panicked")?;
        recorders.push(recorder);
        ids.append(&mut task_ids);
    }
    let elapsed = Instant::now().saturating_duration_since(measure_start);
    let cpu = match sampler {
        Some(sampler) => {
            let (meter, start, end) = sampler.await.context("the CPU sampler panicked")?;
            let end = match end {
                Some(end) => Some(end),
                None => meter.sample().ok(),
            };
            match (start, end) {
                (Some(start), Some(end)) => Some(meter.between(&start, &end)),
                _ => None,
            }
        }
        None => None,
    };
    let summary = summarize(recorders, window.unwrap_or(elapsed));
    Ok(PhaseResult {
        summary,
        ids,
        elapsed,
        cpu,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;

    #[test]
    fn location_ids() {
        assert_eq!(
            id_from_location("https://127.0.0.1:1/fhir/Patient/abc-1/_history/1").as_deref(),
            Some("abc-1")
        );
        assert_eq!(
            id_from_location("https://127.0.0.1:1/fhir/Patient/x").as_deref(),
            Some("x")
        );
        assert_eq!(id_from_location("https://127.0.0.1:1/other"), None);
    }

    #[test]
    fn ops_parse_and_name() {
        assert_eq!(Op::parse("read-patient").unwrap(), Op::ReadPatient);
        assert!(Op::parse("delete-all").is_err());
        assert!(Op::ReadPatient.needs_pool());
        assert_eq!(Op::parse("read-patient-xml").unwrap(), Op::ReadPatientXml);
        assert!(Op::ReadPatientXml.needs_pool());
        assert!(!Op::CreatePatient.needs_pool());
        assert!(!Op::Mixed(0).needs_pool());
        assert!(Op::Mixed(3).needs_pool());
    }
}
