//! Latency and throughput bookkeeping: each connection task keeps a [`Recorder`]; the run merges
//! them into a [`Summary`] with exact percentiles (sorted microsecond latencies: a 10-second run
//! at tens of thousands of requests per second is a few megabytes, so no histogram is needed).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Distinct error descriptions kept per task; the rest are counted as "(other errors)".
const MAX_ERROR_KINDS: usize = 16;

/// One connection task's measurements over the measured window.
#[derive(Debug)]
pub struct Recorder {
    start: Instant,
    latencies_us: Vec<u32>,
    /// Completed successes per whole second since `start`.
    per_second: Vec<u64>,
    errors: u64,
    warmup_errors: u64,
    /// Distinct error descriptions and how often each occurred.
    error_kinds: BTreeMap<String, u64>,
}

impl Recorder {
    /// Measurements count from `start`; requests sent before it are warm-up.
    pub fn new(start: Instant) -> Self {
        Recorder {
            start,
            latencies_us: Vec::new(),
            per_second: Vec::new(),
            errors: 0,
            warmup_errors: 0,
            error_kinds: BTreeMap::new(),
        }
    }

    /// Whether a request sent at `sent` is measured.
    pub fn measures(&self, sent: Instant) -> bool {
        sent >= self.start
    }

    /// A request sent at `sent` succeeded at `done`.
    pub fn success(&mut self, sent: Instant, done: Instant) {
        if !self.measures(sent) {
            return;
        }
        let micros = done.saturating_duration_since(sent).as_micros();
        self.latencies_us
            .push(u32::try_from(micros).unwrap_or(u32::MAX));
        let second = usize::try_from(done.saturating_duration_since(self.start).as_secs())
            .unwrap_or(usize::MAX);
        if second < 1 << 24 {
            if self.per_second.len() <= second {
                self.per_second.resize(second + 1, 0);
            }
            if let Some(slot) = self.per_second.get_mut(second) {
                *slot += 1;
            }
        }
    }

    /// A request sent at `sent` failed; `kind` says how (kept short by the caller).
    pub fn error(&mut self, sent: Instant, kind: String) {
        if self.measures(sent) {
            self.errors += 1;
        } else {
            self.warmup_errors += 1;
        }
        let kind =
            if self.error_kinds.len() >= MAX_ERROR_KINDS && !self.error_kinds.contains_key(&kind) {
                "(other errors)".to_string()
            } else {
                kind
            };
        *self.error_kinds.entry(kind).or_insert(0) += 1;
    }

    /// Successes recorded so far in the measured window.
    pub fn successes(&self) -> usize {
        self.latencies_us.len()
    }
}

/// The merged result of one measured window.
#[derive(Debug, Clone)]
pub struct Summary {
    pub requests: u64,
    pub errors: u64,
    pub warmup_errors: u64,
    pub seconds: f64,
    pub throughput: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    /// Successes in the slowest and fastest whole second of the window (None if under 2 s).
    pub slowest_second: Option<u64>,
    pub fastest_second: Option<u64>,
    pub error_kinds: BTreeMap<String, u64>,
}

/// The `q`-quantile (0..=1) of ascending `sorted`, nearest-rank; 0 when empty.
pub fn percentile(sorted: &[u32], q: f64) -> u32 {
    let n = sorted.len();
    if n == 0 {
        return 0;
    }
    let rank = ((q * n as f64).ceil() as usize).clamp(1, n);
    sorted.get(rank - 1).copied().unwrap_or(0)
}

fn ms(micros: u32) -> f64 {
    f64::from(micros) / 1000.0
}

/// Merges the recorders of one window of `window` length.
pub fn summarize(recorders: Vec<Recorder>, window: Duration) -> Summary {
    let mut latencies = Vec::new();
    let mut per_second: Vec<u64> = Vec::new();
    let mut errors = 0;
    let mut warmup_errors = 0;
    let mut error_kinds = BTreeMap::new();
    for recorder in recorders {
        latencies.extend_from_slice(&recorder.latencies_us);
        if per_second.len() < recorder.per_second.len() {
            per_second.resize(recorder.per_second.len(), 0);
        }
        for (total, count) in per_second.iter_mut().zip(&recorder.per_second) {
            *total += count;
        }
        errors += recorder.errors;
        warmup_errors += recorder.warmup_errors;
        for (kind, count) in recorder.error_kinds {
            *error_kinds.entry(kind).or_insert(0) += count;
        }
    }
    latencies.sort_unstable();
    let seconds = window.as_secs_f64();
    let requests = latencies.len() as u64;
    // Only whole seconds inside the window count: the last partial one would look like a dip.
    let whole = usize::try_from(window.as_secs()).unwrap_or(0);
    let full: Vec<u64> = per_second.iter().take(whole).copied().collect();
    let (slowest_second, fastest_second) = if whole >= 2 {
        let mut padded = full.clone();
        padded.resize(whole, 0);
        (padded.iter().copied().min(), padded.iter().copied().max())
    } else {
        (None, None)
    };
    Summary {
        requests,
        errors,
        warmup_errors,
        seconds,
        throughput: if seconds > 0.0 {
            requests as f64 / seconds
        } else {
            0.0
        },
        p50_ms: ms(percentile(&latencies, 0.50)),
        p99_ms: ms(percentile(&latencies, 0.99)),
        p999_ms: ms(percentile(&latencies, 0.999)),
        max_ms: ms(latencies.last().copied().unwrap_or(0)),
        slowest_second,
        fastest_second,
        error_kinds,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<u32> = (1..=100).collect();
        assert_eq!(percentile(&v, 0.5), 50);
        assert_eq!(percentile(&v, 0.99), 99);
        assert_eq!(percentile(&v, 1.0), 100);
        assert_eq!(percentile(&v, 0.0), 1);
        assert_eq!(percentile(&[], 0.5), 0);
        assert_eq!(percentile(&[7], 0.999), 7);
    }

    #[test]
    fn summary_ignores_warmup_and_counts_seconds() {
        let start = Instant::now();
        let mut r = Recorder::new(start + Duration::from_secs(1));
        // warm-up request: not measured
        r.success(start, start + Duration::from_millis(5));
        r.error(start, "warm".into());
        let t = start + Duration::from_secs(1);
        for i in 0..10 {
            let sent = t + Duration::from_millis(100 * i);
            r.success(sent, sent + Duration::from_millis(2));
        }
        let later = t + Duration::from_millis(1500);
        r.success(later, later + Duration::from_millis(4));
        r.error(later, "HTTP 500".into());
        let s = summarize(vec![r], Duration::from_secs(2));
        assert_eq!(s.requests, 11);
        assert_eq!(s.errors, 1);
        assert_eq!(s.warmup_errors, 1);
        assert!((s.p50_ms - 2.0).abs() < 0.01);
        assert!((s.max_ms - 4.0).abs() < 0.01);
        assert_eq!(s.fastest_second, Some(10));
        assert_eq!(s.slowest_second, Some(1));
        assert_eq!(s.error_kinds.len(), 2);
    }
}
