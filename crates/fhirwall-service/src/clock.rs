//! The one door for time: every reading of the wall clock in the server goes through a
//! [`Clock`], read once per request, so a version's `lastUpdated`, its audit record and its
//! token checks agree, and tests can set the time. Nothing else may read the system clock
//! (clippy's `disallowed-methods` in `clippy.toml` enforces it).

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use fhirwall_model::Timestamp;

/// A source of the current time.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> Timestamp;
}

/// The system's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    #[expect(
        clippy::disallowed_methods,
        reason = "the one place that reads the wall clock"
    )]
    fn now(&self) -> Timestamp {
        let now = time::OffsetDateTime::now_utc();
        let micros = i64::try_from(now.unix_timestamp_nanos() / 1000).unwrap_or(i64::MAX);
        Timestamp::from_micros(micros)
    }
}

/// A clock that says what it is told: for tests and replays.
#[derive(Debug, Clone)]
pub struct ManualClock {
    micros: Arc<AtomicI64>,
}

impl ManualClock {
    pub fn at(start: Timestamp) -> Self {
        ManualClock {
            micros: Arc::new(AtomicI64::new(start.micros())),
        }
    }

    pub fn set(&self, to: Timestamp) {
        self.micros.store(to.micros(), Ordering::SeqCst);
    }

    pub fn advance_secs(&self, secs: i64) {
        self.micros
            .fetch_add(secs.saturating_mul(1_000_000), Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        Timestamp::from_micros(self.micros.load(Ordering::SeqCst))
    }
}
