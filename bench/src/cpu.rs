//! CPU accounting from /proc: how many cores the server process and the load generator each
//! used during a measured window, and how idle the whole machine was. On a machine where both
//! share two cores these say whether a row was bound by CPU or by waiting (disk syncs, locks).

use std::time::Instant;

use anyhow::{Context, Result, anyhow};

/// Clock ticks per second of /proc's CPU times.
fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|text| text.trim().parse::<f64>().ok())
        .filter(|ticks| *ticks > 0.0)
        .unwrap_or(100.0)
}

/// User + system CPU seconds of a process (all its threads), `self` for this one.
pub fn process_cpu_seconds(pid: &str, ticks: f64) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // The command name may hold spaces and parentheses: the fields start after the last ')'.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or_else(|| anyhow!("malformed /proc/{pid}/stat"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After ')': field 3 (state) is index 0, so utime (14) is 11 and stime (15) is 12.
    let field = |at: usize| -> Result<f64> {
        fields
            .get(at)
            .and_then(|v| v.parse::<f64>().ok())
            .ok_or_else(|| anyhow!("malformed /proc/{pid}/stat"))
    };
    Ok((field(11)? + field(12)?) / ticks)
}

/// Total and idle (idle + iowait) jiffies of the whole machine from /proc/stat.
fn machine_jiffies() -> Result<(f64, f64)> {
    let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let line = stat
        .lines()
        .find(|line| line.starts_with("cpu "))
        .ok_or_else(|| anyhow!("no cpu line in /proc/stat"))?;
    let values: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest times are inside user).
    let total: f64 = values.iter().take(8).sum();
    let idle = values.get(3).copied().unwrap_or(0.0) + values.get(4).copied().unwrap_or(0.0);
    Ok((total, idle))
}

/// One reading.
#[derive(Debug, Clone)]
pub struct CpuSample {
    at: Instant,
    server: Option<f64>,
    generator: f64,
    machine_total: f64,
    machine_idle: f64,
}

/// Cores used over a window.
#[derive(Debug, Clone, Copy)]
pub struct CpuUse {
    /// Cores the server process used (None when it is in-process or unknown).
    pub server_cores: Option<f64>,
    /// Cores this benchmark process used (including an in-process hello server).
    pub generator_cores: f64,
    /// Share of the machine's CPU time that was idle (iowait counted as idle), 0..=100.
    pub machine_idle_percent: f64,
    /// Cores busy with anything but the server and this process (other programs, kernel
    /// threads, steal): a figure well above zero means the row was measured on a shared machine.
    pub other_cores: f64,
}

/// Reads CPU times of the server (`server_pid`), this process and the machine.
#[derive(Debug, Clone)]
pub struct CpuMeter {
    server_pid: Option<u32>,
    ticks: f64,
    cores: f64,
}

impl CpuMeter {
    pub fn new(server_pid: Option<u32>) -> Self {
        CpuMeter {
            server_pid,
            ticks: clock_ticks(),
            cores: std::thread::available_parallelism().map_or(1.0, |n| n.get() as f64),
        }
    }

    pub fn sample(&self) -> Result<CpuSample> {
        let server = match self.server_pid {
            Some(pid) => Some(process_cpu_seconds(&pid.to_string(), self.ticks)?),
            None => None,
        };
        let (machine_total, machine_idle) = machine_jiffies()?;
        Ok(CpuSample {
            at: Instant::now(),
            server,
            generator: process_cpu_seconds("self", self.ticks)?,
            machine_total,
            machine_idle,
        })
    }

    /// Cores used between two samples.
    pub fn between(&self, start: &CpuSample, end: &CpuSample) -> CpuUse {
        let wall = end
            .at
            .saturating_duration_since(start.at)
            .as_secs_f64()
            .max(1e-9);
        let server_cores = match (start.server, end.server) {
            (Some(a), Some(b)) => Some((b - a) / wall),
            _ => None,
        };
        let total = (end.machine_total - start.machine_total).max(1e-9);
        let idle = end.machine_idle - start.machine_idle;
        let idle_share = (idle / total).clamp(0.0, 1.0);
        let generator_cores = (end.generator - start.generator) / wall;
        let busy_cores = (1.0 - idle_share) * self.cores;
        CpuUse {
            server_cores,
            generator_cores,
            machine_idle_percent: 100.0 * idle_share,
            other_cores: (busy_cores - generator_cores - server_cores.unwrap_or(0.0)).max(0.0),
        }
    }
}

/// Cores the machine keeps busy over `window` while this process sleeps: the background load
/// that every row will compete with.
pub fn background_cores(window: std::time::Duration) -> Result<f64> {
    let meter = CpuMeter::new(None);
    let start = meter.sample()?;
    std::thread::sleep(window);
    let end = meter.sample()?;
    let used = meter.between(&start, &end);
    Ok(used.other_cores + used.generator_cores)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;

    #[test]
    fn reads_own_cpu_time() {
        let meter = CpuMeter::new(Some(std::process::id()));
        let a = meter.sample().unwrap();
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_add(i * i);
        }
        std::hint::black_box(x);
        let b = meter.sample().unwrap();
        let used = meter.between(&a, &b);
        assert!(used.generator_cores >= 0.0);
        assert!(used.server_cores.unwrap() >= 0.0);
        assert!((0.0..=100.0).contains(&used.machine_idle_percent));
        assert!(used.other_cores >= 0.0);
    }
}
