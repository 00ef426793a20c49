//! What the benchmark prints: the machine header (date, cores, CPU model, memory, kernel, the
//! file system of the data directory) and the result table.

use std::path::Path;

use crate::cpu::CpuUse;
use crate::stats::Summary;

/// The first value of `key` in a `key : value` file such as /proc/cpuinfo.
fn proc_field(file: &str, key: &str) -> Option<String> {
    let text = std::fs::read_to_string(file).ok()?;
    text.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        (name.trim() == key).then(|| value.trim().to_string())
    })
}

/// The mount point and file-system type holding `path`, from /proc/mounts.
pub fn filesystem_of(path: &Path) -> Option<(String, String)> {
    let path = path.canonicalize().ok()?;
    let mounts = std::fs::read_to_string("/proc/mounts").ok()?;
    mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let _device = fields.next()?;
            let mount = fields.next()?;
            let fstype = fields.next()?;
            path.starts_with(mount)
                .then(|| (mount.to_string(), fstype.to_string()))
        })
        .max_by_key(|(mount, _)| mount.len())
}

/// The current UTC time, RFC 3339.
pub fn now_utc() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| "unknown".into())
}

/// The header lines describing the machine.
pub fn machine_header() -> Vec<String> {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let cpu = proc_field("/proc/cpuinfo", "model name").unwrap_or_else(|| "unknown CPU".into());
    let memory = proc_field("/proc/meminfo", "MemTotal").unwrap_or_else(|| "unknown".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into());
    vec![
        format!("date:     {}", now_utc()),
        format!("machine:  nproc {cores}, CPU {cpu}, memory {memory}, Linux {kernel}"),
        format!(
            "note:     the load generator runs on the same {cores} cores as the server: the figures \
             are what server + client together achieve, a lower bound for the server alone"
        ),
    ]
}

/// The table's column titles.
pub fn table_header() -> String {
    format!(
        "{:<22} {:>5} {:>9} {:>7} {:>9} {:>8} {:>8} {:>9} {:>8} {:>9} {:>7} {:>7} {:>5} {:>5}",
        "op",
        "conns",
        "requests",
        "errors",
        "req/s",
        "p50 ms",
        "p99 ms",
        "p99.9 ms",
        "max ms",
        "worst 1s",
        "srv cpu",
        "gen cpu",
        "other",
        "idle%"
    )
}

/// One table row.
pub fn table_row(op: &str, connections: usize, s: &Summary, cpu: Option<&CpuUse>) -> String {
    let worst = s
        .slowest_second
        .map_or_else(|| "-".to_string(), |n| n.to_string());
    let server = cpu
        .and_then(|c| c.server_cores)
        .map_or_else(|| "-".to_string(), |v| format!("{v:.2}"));
    let generator = cpu.map_or_else(|| "-".to_string(), |c| format!("{:.2}", c.generator_cores));
    let other = cpu.map_or_else(|| "-".to_string(), |c| format!("{:.2}", c.other_cores));
    let idle = cpu.map_or_else(
        || "-".to_string(),
        |c| format!("{:.0}", c.machine_idle_percent),
    );
    format!(
        "{:<22} {:>5} {:>9} {:>7} {:>9.0} {:>8.2} {:>8.2} {:>9.2} {:>8.2} {:>9} {:>7} {:>7} {:>5} {:>5}",
        op,
        connections,
        s.requests,
        s.errors,
        s.throughput,
        s.p50_ms,
        s.p99_ms,
        s.p999_ms,
        s.max_ms,
        worst,
        server,
        generator,
        other,
        idle
    )
}

/// Bytes as MiB with one decimal.
pub fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;

    #[test]
    fn header_and_row_line_up() {
        let s = crate::stats::summarize(Vec::new(), std::time::Duration::from_secs(10));
        assert_eq!(
            table_header().len(),
            table_row("create-patient", 64, &s, None).len()
        );
        assert!(machine_header().len() >= 3);
    }

    #[test]
    fn root_is_mounted() {
        assert!(filesystem_of(Path::new("/")).is_some());
    }
}
