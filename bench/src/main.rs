//! `fhirwall-bench`: starts a fresh Fhirwall server, drives closed-loop HTTPS load against it
//! (`run`), against an in-process hello-world TLS server (`hello`, the ceiling), or fills it with
//! many resources and reports its memory and disk use (`fill`).

// The load generator is an outside client with its own clock, not part of the server.
#![allow(clippy::disallowed_methods)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use fhirwall_bench::auth::{Credentials, SCOPE, TokenCell, generate_key, spawn_refresher};
use fhirwall_bench::client::{Target, read_pem_certs};
use fhirwall_bench::cpu::CpuMeter;
use fhirwall_bench::hello::HelloServer;
use fhirwall_bench::load::{Op, PhaseResult, Until, Workload, run_phase};
use fhirwall_bench::payloads::{Observations, Patients, size_range};
use fhirwall_bench::report::{filesystem_of, machine_header, mib, table_header, table_row};
use fhirwall_bench::server::{ServerProcess, dir_size, tail};
use fhirwall_bench::stats::Summary;

#[derive(Parser)]
#[command(
    name = "fhirwall-bench",
    about = "Closed-loop HTTPS load generator for the Fhirwall FHIR server."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start a fresh server and measure each op at each connection count (plus the ceiling).
    Run(RunArgs),
    /// Measure only the in-process hello-world TLS server: the machine's ceiling.
    Hello(HelloArgs),
    /// Create many resources, then report the server's resident memory and data size.
    Fill(FillArgs),
    /// Print one sample Patient and Observation body and their sizes.
    Payloads,
}

#[derive(Args)]
struct ServerArgs {
    /// The server binary (default: `fhirwall` beside this binary, else target/release/fhirwall).
    #[arg(long)]
    server_bin: Option<PathBuf>,
    /// Where to make the temporary working directory (data dir, logs); default: the system's
    /// temporary directory. Put it on the disk you want to measure: a tmpfs hides fsync costs.
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Keep the working directory afterwards.
    #[arg(long)]
    keep_data: bool,
    /// Serve this existing data directory (filled before, say by `fill --keep-data`) instead of
    /// a fresh one; it is left as it is afterwards. Search rows then read their pool from it.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// The server's log filter (FHIRWALL_LOG); `info` logs every request.
    #[arg(long, default_value = "warn")]
    server_log: String,
    /// Seconds between access-token renewals (tokens live 300 s).
    #[arg(long, default_value_t = 240)]
    token_refresh_secs: u64,
}

#[derive(Args)]
struct LoadArgs {
    /// Measured seconds per row.
    #[arg(long, default_value_t = 10)]
    duration_secs: u64,
    /// Unmeasured seconds before each row, on the same connections.
    #[arg(long, default_value_t = 2)]
    warmup_secs: u64,
    /// Connection counts, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "1,64")]
    connections: Vec<usize>,
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    server: ServerArgs,
    #[command(flatten)]
    load: LoadArgs,
    /// Ops, comma separated: create-patient, create-observation, read-patient, read-patient-xml,
    /// transaction-N, search-family, search-subject, search-code-date, search-include,
    /// search-chain, search-has.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "create-patient,create-observation,read-patient"
    )]
    ops: Vec<String>,
    /// Patients created before the rows, read by read-patient and referenced by Observations.
    #[arg(long, default_value_t = 1000)]
    pool_size: u64,
    /// Observations created about each pool patient before search rows that read them.
    #[arg(long, default_value_t = 10)]
    observations_per_pool_patient: u64,
    /// Skip the hello-world TLS ceiling rows.
    #[arg(long)]
    no_ceiling: bool,
}

#[derive(Args)]
struct HelloArgs {
    #[command(flatten)]
    load: LoadArgs,
}

#[derive(Args)]
struct FillArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// Resources to create.
    #[arg(long)]
    count: u64,
    /// Concurrent connections.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Observations per Patient (0: Patients only). Observations reference 1,000 patients
    /// created first.
    #[arg(long, default_value_t = 0)]
    observations_per_patient: u64,
    /// Create the resources in transaction Bundles of this many entries instead: one Patient
    /// and Observations about it (by `urn:uuid`), as a synthetic population is loaded.
    #[arg(long, conflicts_with = "observations_per_patient")]
    transaction_size: Option<u64>,
    /// Seconds between progress lines.
    #[arg(long, default_value_t = 10)]
    progress_secs: u64,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let result = runtime.block_on(async {
        match cli.command {
            Command::Run(args) => cmd_run(args).await,
            Command::Hello(args) => cmd_hello(args).await,
            Command::Fill(args) => cmd_fill(args).await,
            Command::Payloads => cmd_payloads(),
        }
    });
    runtime.shutdown_timeout(Duration::from_secs(2));
    result
}

/// The temporary directory of one benchmark, removed on drop unless kept.
struct WorkDir {
    path: PathBuf,
    keep: bool,
}

impl WorkDir {
    fn create(parent: Option<&Path>, keep: bool) -> Result<Self> {
        let parent = parent.map_or_else(std::env::temp_dir, Path::to_path_buf);
        let stamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        let path = parent.join(format!("fhirwall-bench-{}-{stamp}", std::process::id()));
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(WorkDir { path, keep })
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if self.keep {
            println!("kept the working directory {}", self.path.display());
        } else if let Err(e) = std::fs::remove_dir_all(&self.path) {
            eprintln!("warning: could not remove {}: {e}", self.path.display());
        }
    }
}

fn server_bin(flag: Option<&Path>) -> Result<PathBuf> {
    if let Some(path) = flag {
        return Ok(path.to_path_buf());
    }
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join("fhirwall")));
    let candidates = beside
        .into_iter()
        .chain([PathBuf::from("target/release/fhirwall")]);
    for candidate in candidates {
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!(
        "no server binary found beside this one nor at target/release/fhirwall: \
         build it with `cargo build --release -p fhirwall` or pass --server-bin"
    )
}

fn server_version(bin: &Path) -> String {
    std::process::Command::new(bin)
        .arg("--version")
        .output()
        .ok()
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_string())
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "unknown version".into())
}

/// Prints the machine header and the load already on the machine.
fn print_header() {
    for line in machine_header() {
        println!("{line}");
    }
    match fhirwall_bench::cpu::background_cores(Duration::from_secs(2)) {
        Ok(busy) => {
            let warning = if busy > 0.2 {
                "  WARNING: other work is running; figures will be low and noisy"
            } else {
                ""
            };
            println!("before:   {busy:.2} cores busy over 2 s before the start{warning}");
        }
        Err(e) => println!("before:   background load unknown: {e:#}"),
    }
}

fn print_payload_sizes(patients: &Patients, observations: &Observations) {
    let (p_min, p_max) = size_range(Patients::VARIANTS, |seq| patients.body(seq));
    let (o_min, o_max) = size_range(60, |seq| {
        observations.body(seq, "0195f3c2-8e6b-7a1d-9c4e-2f6a8b0c1d3e")
    });
    println!(
        "payloads: Patient {p_min}-{p_max} bytes ({} variants, identifiers unique per request), \
         Observation {o_min}-{o_max} bytes (6 vital signs)",
        Patients::VARIANTS
    );
}

/// A started server with a registered client and a renewed token.
struct Session {
    server: ServerProcess,
    target: Arc<Target>,
    token: Arc<TokenCell>,
    refresher: tokio::task::JoinHandle<()>,
}

impl Session {
    /// One GET with the session's token, on a connection of its own.
    async fn get(&self, path: &str) -> Result<fhirwall_bench::client::Reply> {
        let mut conn = self.target.connect().await?;
        let req = fhirwall_bench::client::request(
            http::Method::GET,
            http::Uri::try_from(path)?,
            Some(self.token.get()),
            None,
            bytes::Bytes::new(),
        )?;
        conn.send(req).await
    }

    async fn start(args: &ServerArgs, work: &WorkDir) -> Result<Session> {
        let bin = server_bin(args.server_bin.as_deref())?;
        let data_dir = args
            .data_dir
            .clone()
            .unwrap_or_else(|| work.path.join("data"));
        let fs = filesystem_of(&work.path)
            .map(|(mount, fstype)| format!("{fstype} at {mount}"))
            .unwrap_or_else(|| "unknown file system".into());
        let built = std::fs::metadata(&bin)
            .and_then(|m| m.modified())
            .map(|t| {
                time::OffsetDateTime::from(t)
                    .format(&time::format_description::well_known::Rfc3339)
                    .unwrap_or_default()
            })
            .unwrap_or_default();
        println!(
            "server:   {} ({}, built {built})",
            bin.display(),
            server_version(&bin)
        );
        println!("data dir: {} ({fs})", data_dir.display());
        let server = ServerProcess::start(
            &bin,
            &data_dir,
            &work.path.join("server-stderr.log"),
            &args.server_log,
        )?;
        let key = generate_key()?;
        let jwks = work.path.join("bench-jwks.json");
        std::fs::write(&jwks, key.jwks_json())?;
        let client_id = server.register_client("bench", &jwks, SCOPE)?;
        let target = Arc::new(Target::from_url(
            &server.base_url,
            read_pem_certs(&server.ca_pem)?,
        )?);
        let credentials = Arc::new(Credentials::new(key, client_id, server.token_url()));
        let token = Arc::new(TokenCell::new(credentials.fetch(&target).await?));
        let refresher = spawn_refresher(
            credentials,
            target.clone(),
            token.clone(),
            Duration::from_secs(args.token_refresh_secs.max(1)),
        );
        println!(
            "server:   {} (pid {}), client registered, token obtained",
            server.base_url,
            server.pid().unwrap_or(0)
        );
        Ok(Session {
            server,
            target,
            token,
            refresher,
        })
    }

    fn check_alive(&mut self) -> Result<()> {
        if !self.server.is_running() {
            bail!(
                "the server exited; its stderr ends with:\n{}",
                tail(&self.server.stderr_text(), 20)
            );
        }
        Ok(())
    }

    /// Stops the server; returns lines saying how it went, its token renewals and what it
    /// logged.
    fn finish(mut self) -> Result<Vec<String>> {
        self.refresher.abort();
        let mut lines = vec![format!(
            "token renewals during the run: {}",
            self.token.refreshes()
        )];
        let how = self.server.stop(Duration::from_secs(30))?;
        lines.push(format!("server stop: {how}"));
        let log = self.server.stderr_text();
        let count = log.lines().count();
        if count == 0 {
            lines.push("server stderr: empty".into());
        } else {
            lines.push(format!("server stderr: {count} lines; the last ones:"));
            lines.push(tail(&log, 15));
        }
        Ok(lines)
    }
}

/// Creates `count` patients over 64 connections and returns their ids.
async fn create_pool(
    session: &Session,
    patients: &Arc<Patients>,
    observations: &Arc<Observations>,
    seq: &Arc<AtomicU64>,
    count: u64,
) -> Result<Arc<Vec<String>>> {
    let work = Arc::new(Workload::new(
        Op::CreatePatient,
        session.target.clone(),
        Some(session.token.clone()),
        patients.clone(),
        observations.clone(),
        Arc::new(Vec::new()),
        seq.clone(),
    )?);
    let result = run_phase(work, 64, Until::Count(count), true, None).await?;
    println!(
        "pool:     {} patients created in {:.1} s ({:.0}/s, {} errors)",
        result.ids.len(),
        result.elapsed.as_secs_f64(),
        result.ids.len() as f64 / result.elapsed.as_secs_f64().max(1e-9),
        result.summary.errors
    );
    print_errors("pool", &result.summary);
    if result.ids.is_empty() {
        bail!("no pool patient could be created");
    }
    Ok(Arc::new(result.ids))
}

/// Observations about the pool's patients, for the searches to find.
async fn create_observations(
    session: &Session,
    patients: &Arc<Patients>,
    observations: &Arc<Observations>,
    seq: &Arc<AtomicU64>,
    pool: &Arc<Vec<String>>,
    count: u64,
) -> Result<()> {
    let work = Arc::new(Workload::new(
        Op::CreateObservation,
        session.target.clone(),
        Some(session.token.clone()),
        patients.clone(),
        observations.clone(),
        pool.clone(),
        seq.clone(),
    )?);
    let result = run_phase(work, 64, Until::Count(count), false, None).await?;
    println!(
        "pool:     {} observations created in {:.1} s ({:.0}/s, {} errors)",
        result.summary.requests,
        result.elapsed.as_secs_f64(),
        result.summary.requests as f64 / result.elapsed.as_secs_f64().max(1e-9),
        result.summary.errors
    );
    print_errors("observations", &result.summary);
    Ok(())
}

/// The first `count` Patients of the store (their ids and MRNs), read by one search.
async fn read_pool(session: &Session, count: u64) -> Result<(Vec<String>, Vec<String>)> {
    let path = format!("/fhir/Patient?_count={count}&_elements=identifier");
    let reply = session.get(&path).await?;
    if !reply.status.is_success() {
        bail!(
            "reading the pool: {} {}",
            reply.status,
            reply.body_snippet(300)
        );
    }
    let body: serde_json::Value = serde_json::from_slice(&reply.body)?;
    let mut ids = Vec::new();
    let mut mrns = Vec::new();
    for entry in body
        .get("entry")
        .and_then(|e| e.as_array())
        .into_iter()
        .flatten()
    {
        let Some(id) = entry.pointer("/resource/id").and_then(|v| v.as_str()) else {
            continue;
        };
        let mrn = entry
            .pointer("/resource/identifier/0/value")
            .and_then(|v| v.as_str())
            .unwrap_or_default();
        ids.push(id.to_string());
        mrns.push(mrn.to_string());
    }
    if ids.is_empty() {
        bail!("the store holds no Patient to search for");
    }
    println!("pool:     {} patients read back by search", ids.len());
    Ok((ids, mrns))
}

/// One request of a search op, to show what a row's answers hold (a search that finds
/// nothing would be fast for the wrong reason).
async fn probe_search(
    session: &Session,
    patients: &Arc<Patients>,
    observations: &Arc<Observations>,
    seq: &Arc<AtomicU64>,
    pool: &Arc<Vec<String>>,
    mrns: &Arc<Vec<String>>,
    search: fhirwall_bench::load::SearchOp,
) -> Result<()> {
    let work = Workload::new(
        Op::Search(search),
        session.target.clone(),
        Some(session.token.clone()),
        patients.clone(),
        observations.clone(),
        pool.clone(),
        seq.clone(),
    )?
    .with_mrns(mrns.clone());
    let path = work.search_path(search, 1);
    let reply = session.get(&path).await?;
    let body: serde_json::Value = serde_json::from_slice(&reply.body).unwrap_or_default();
    let entries = body.get("entry").and_then(|e| e.as_array());
    let matches = entries.map_or(0, |e| {
        e.iter()
            .filter(|e| e.pointer("/search/mode").and_then(|m| m.as_str()) == Some("match"))
            .count()
    });
    let entries = entries.map_or(0, Vec::len);
    println!(
        "probe:    {} -> {} ({} entries, {} matches{}) {}",
        Op::Search(search).name(),
        reply.status,
        entries,
        matches,
        body.get("total")
            .and_then(|t| t.as_u64())
            .map(|t| format!(", total {t}"))
            .unwrap_or_default(),
        path
    );
    if !reply.status.is_success() || matches == 0 {
        bail!(
            "the probe of {} found nothing: {}",
            Op::Search(search).name(),
            reply.body_snippet(300)
        );
    }
    Ok(())
}

fn print_errors(label: &str, summary: &Summary) {
    if summary.error_kinds.is_empty() {
        return;
    }
    println!(
        "  errors in {label} ({} measured, {} during warm-up):",
        summary.errors, summary.warmup_errors
    );
    for (kind, count) in &summary.error_kinds {
        println!("    {count:>7} x {kind}");
    }
}

async fn measure(
    work: Workload,
    connections: usize,
    load: &LoadArgs,
    meter: CpuMeter,
) -> Result<PhaseResult> {
    run_phase(
        Arc::new(work),
        connections,
        Until::Time {
            warmup: Duration::from_secs(load.warmup_secs),
            measure: Duration::from_secs(load.duration_secs.max(1)),
        },
        false,
        Some(meter),
    )
    .await
}

/// The hello-world ceiling rows.
async fn ceiling_rows(
    load: &LoadArgs,
    patients: &Arc<Patients>,
    observations: &Arc<Observations>,
    seq: &Arc<AtomicU64>,
    errors: &mut Vec<(String, Summary)>,
) -> Result<()> {
    let hello = HelloServer::start(2)?;
    let target = Arc::new(Target::new(hello.addr, vec![hello.cert.clone()])?);
    for &connections in &load.connections {
        let work = Workload::new(
            Op::Hello,
            target.clone(),
            None,
            patients.clone(),
            observations.clone(),
            Arc::new(Vec::new()),
            seq.clone(),
        )?;
        let result = measure(work, connections, load, CpuMeter::new(None)).await?;
        println!(
            "{}",
            table_row(
                &Op::Hello.name(),
                connections,
                &result.summary,
                result.cpu.as_ref()
            )
        );
        errors.push((
            format!("{} x{connections}", Op::Hello.name()),
            result.summary,
        ));
    }
    drop(hello);
    Ok(())
}

async fn cmd_run(args: RunArgs) -> Result<()> {
    let ops = args
        .ops
        .iter()
        .map(|op| Op::parse(op))
        .collect::<Result<Vec<_>>>()?;
    if ops.contains(&Op::Hello) {
        bail!(
            "the ceiling is added by default (or use the hello subcommand); --ops takes server ops"
        );
    }
    print_header();
    let patients = Arc::new(Patients::new()?);
    let observations = Arc::new(Observations::new()?);
    print_payload_sizes(&patients, &observations);
    println!(
        "load:     closed loop, HTTP/1.1 keep-alive over TLS, one connection per task; \
         {} s warm-up + {} s measured per row",
        args.load.warmup_secs, args.load.duration_secs
    );
    let work_dir = WorkDir::create(args.server.work_dir.as_deref(), args.server.keep_data)?;
    let mut session = Session::start(&args.server, &work_dir).await?;
    let seq = Arc::new(AtomicU64::new(0));
    let reuse = args.server.data_dir.is_some();
    let pool = if reuse || !ops.iter().any(Op::needs_pool) {
        Arc::new(Vec::new())
    } else {
        create_pool(
            &session,
            &patients,
            &observations,
            &seq,
            args.pool_size.max(1),
        )
        .await?
    };
    // Searches look for the pool's patients by id and by MRN: read both back.
    let (pool, mrns) = if ops.iter().any(|op| matches!(op, Op::Search(_))) || reuse {
        let (ids, mrns) = read_pool(&session, args.pool_size.clamp(1, 1000)).await?;
        (Arc::new(ids), Arc::new(mrns))
    } else {
        (pool, Arc::new(Vec::new()))
    };
    if !reuse && ops.iter().any(Op::needs_observations) {
        create_observations(
            &session,
            &patients,
            &observations,
            &seq,
            &pool,
            pool.len() as u64 * args.observations_per_pool_patient,
        )
        .await?;
    }
    for op in &ops {
        if let Op::Search(search) = op {
            probe_search(
                &session,
                &patients,
                &observations,
                &seq,
                &pool,
                &mrns,
                *search,
            )
            .await?;
        }
    }

    println!();
    println!("{}", table_header());
    let mut summaries = Vec::new();
    for &op in &ops {
        for &connections in &args.load.connections {
            session.check_alive()?;
            let work = Workload::new(
                op,
                session.target.clone(),
                Some(session.token.clone()),
                patients.clone(),
                observations.clone(),
                pool.clone(),
                seq.clone(),
            )?
            .with_mrns(mrns.clone());
            let meter = CpuMeter::new(session.server.pid());
            let result = measure(work, connections, &args.load, meter).await?;
            println!(
                "{}",
                table_row(
                    &op.name(),
                    connections,
                    &result.summary,
                    result.cpu.as_ref()
                )
            );
            summaries.push((format!("{} x{connections}", op.name()), result.summary));
        }
    }
    session.check_alive()?;
    let memory = session.server.memory_kib().ok();
    let data_size = dir_size(&session.server.data_dir).ok();
    let bodies_sent = seq.load(Ordering::Relaxed);
    // The server stops before the ceiling rows so that nothing else competes for the cores.
    let finish_lines = session.finish()?;
    if !args.no_ceiling {
        ceiling_rows(&args.load, &patients, &observations, &seq, &mut summaries).await?;
    }
    println!();
    print_legend();
    for (label, summary) in &summaries {
        print_errors(label, summary);
    }
    if let Some((rss, peak)) = memory {
        println!(
            "server memory after the rows: VmRSS {} (peak VmHWM {})",
            mib(rss * 1024),
            mib(peak * 1024)
        );
    }
    if let Some((apparent, allocated)) = data_size {
        println!(
            "data dir after the rows: {} apparent, {} allocated, after {} requests to the server",
            mib(apparent),
            mib(allocated),
            bodies_sent
        );
    }
    for line in finish_lines {
        println!("{line}");
    }
    drop(work_dir);
    Ok(())
}

fn print_legend() {
    for line in [
        "requests, req/s: successful requests (201 for creates, 200 for reads) in the measured window;",
        "p50/p99/p99.9/max: their latency from sending to the last body byte;",
        "worst 1s: successful requests in the slowest whole second of the window;",
        "srv cpu, gen cpu: cores used by the server process and by this load generator (with the",
        "  in-process hello server on ceiling rows); other: cores busy with anything else (other",
        "  programs, kernel threads, steal: well above 0 means a shared, noisy machine);",
        "idle%: machine CPU idle, iowait included.",
    ] {
        println!("{line}");
    }
}

async fn cmd_hello(args: HelloArgs) -> Result<()> {
    print_header();
    let patients = Arc::new(Patients::new()?);
    let observations = Arc::new(Observations::new()?);
    let seq = Arc::new(AtomicU64::new(0));
    println!(
        "load:     closed loop, HTTP/1.1 keep-alive over TLS against an in-process hello-world \
         server (2 worker threads); {} s warm-up + {} s measured per row",
        args.load.warmup_secs, args.load.duration_secs
    );
    println!();
    println!("{}", table_header());
    let mut summaries = Vec::new();
    ceiling_rows(&args.load, &patients, &observations, &seq, &mut summaries).await?;
    println!();
    print_legend();
    for (label, summary) in &summaries {
        print_errors(label, summary);
    }
    Ok(())
}

async fn cmd_fill(args: FillArgs) -> Result<()> {
    print_header();
    let patients = Arc::new(Patients::new()?);
    let observations = Arc::new(Observations::new()?);
    print_payload_sizes(&patients, &observations);
    let work_dir = WorkDir::create(args.server.work_dir.as_deref(), args.server.keep_data)?;
    let mut session = Session::start(&args.server, &work_dir).await?;
    let seq = Arc::new(AtomicU64::new(0));
    let (op, pool) = if let Some(n) = args.transaction_size {
        if !(1..=1000).contains(&n) {
            bail!("--transaction-size takes 1 to 1000 entries");
        }
        (Op::Transaction(n), Arc::new(Vec::new()))
    } else if args.observations_per_patient > 0 {
        let pool = create_pool(&session, &patients, &observations, &seq, 1000).await?;
        (Op::Mixed(args.observations_per_patient), pool)
    } else {
        (Op::CreatePatient, Arc::new(Vec::new()))
    };
    // A transaction of n entries creates n resources.
    let per_request = match op {
        Op::Transaction(n) => n,
        _ => 1,
    };
    let requests = args.count.div_ceil(per_request);
    let (rss0, _) = session.server.memory_kib()?;
    println!(
        "fill:     {} resources ({}) over {} connections; server VmRSS before: {}",
        args.count,
        op.name(),
        args.connections,
        mib(rss0 * 1024)
    );
    let work = Arc::new(Workload::new(
        op,
        session.target.clone(),
        Some(session.token.clone()),
        patients.clone(),
        observations.clone(),
        pool,
        seq.clone(),
    )?);

    // Progress: count, recent rate and memory every few seconds, so a long fill shows trends.
    let progress = {
        let work = work.clone();
        let pid = session.server.pid().unwrap_or(0);
        let every = Duration::from_secs(args.progress_secs.max(1));
        let total = args.count;
        tokio::spawn(async move {
            let start = Instant::now();
            let mut last = (start, 0u64);
            loop {
                tokio::time::sleep(every).await;
                let now = Instant::now();
                let done = work.completed.load(Ordering::Relaxed) * per_request;
                let failed = work.failed.load(Ordering::Relaxed);
                let rate = (done - last.1.min(done)) as f64
                    / now
                        .saturating_duration_since(last.0)
                        .as_secs_f64()
                        .max(1e-9);
                let rss = fhirwall_bench::server::process_memory_kib(pid)
                    .map(|(rss, _)| mib(rss * 1024))
                    .unwrap_or_else(|_| "?".into());
                println!(
                    "  {:>6.0} s  {done:>9}/{total} created  {failed} errors  {rate:>7.0}/s  VmRSS {rss}",
                    now.saturating_duration_since(start).as_secs_f64()
                );
                last = (now, done);
            }
        })
    };
    let meter = CpuMeter::new(session.server.pid());
    let result = run_phase(
        work,
        args.connections,
        Until::Count(requests),
        false,
        Some(meter),
    )
    .await;
    progress.abort();
    let result = result?;
    session.check_alive()?;
    let s = &result.summary;
    println!();
    println!(
        "created {} resources in {:.1} s: {:.0}/s, {} errors, latency p50 {:.2} ms, p99 {:.2} ms, \
         p99.9 {:.2} ms, max {:.2} ms",
        s.requests,
        result.elapsed.as_secs_f64(),
        s.requests as f64 / result.elapsed.as_secs_f64().max(1e-9),
        s.errors,
        s.p50_ms,
        s.p99_ms,
        s.p999_ms,
        s.max_ms
    );
    if let Some(cpu) = &result.cpu {
        println!(
            "CPU during the fill: server {:.2} cores, load generator {:.2} cores, machine {:.0}% idle",
            cpu.server_cores.unwrap_or(0.0),
            cpu.generator_cores,
            cpu.machine_idle_percent
        );
    }
    print_errors("fill", s);
    let (rss, peak) = session.server.memory_kib()?;
    println!(
        "server memory right after: VmRSS {} (peak VmHWM {})",
        mib(rss * 1024),
        mib(peak * 1024)
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (rss_idle, _) = session.server.memory_kib()?;
    println!(
        "server memory after 5 s idle: VmRSS {}",
        mib(rss_idle * 1024)
    );
    let (apparent, allocated) = dir_size(&session.server.data_dir)?;
    let total = seq.load(Ordering::Relaxed).max(1);
    println!(
        "data dir: {} apparent, {} allocated ({:.0} bytes allocated per resource created)",
        mib(apparent),
        mib(allocated),
        allocated as f64 / total as f64
    );
    for line in session.finish()? {
        println!("{line}");
    }
    drop(work_dir);
    Ok(())
}

fn cmd_payloads() -> Result<()> {
    let patients = Patients::new()?;
    let observations = Observations::new()?;
    let patient = patients.body(1);
    let observation = observations.body(1, "0195f3c2-8e6b-7a1d-9c4e-2f6a8b0c1d3e");
    let pretty = |bytes: &[u8]| -> Result<String> {
        let value: serde_json::Value = serde_json::from_slice(bytes)?;
        Ok(serde_json::to_string_pretty(&value)?)
    };
    println!("{}", pretty(&patient)?);
    println!("{}", pretty(&observation)?);
    print_payload_sizes(&patients, &observations);
    Ok(())
}
