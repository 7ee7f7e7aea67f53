//! Wall clocks for token expiry (simple-token TTL and JWT `exp`), injectable for tests.

use std::fmt::Debug;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;

/// A wall clock: time since the Unix epoch. JWT `exp` claims are Unix seconds, so the clock of
/// the auth store is a wall clock (simple tokens use the same clock for their TTL).
pub trait Clock: Send + Sync + Debug + 'static {
    /// Time since 1970-01-01T00:00:00Z.
    fn now(&self) -> Duration;
}

/// The system's real-time clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Duration {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
    }
}

/// A clock that moves only when told to (tests).
#[derive(Debug, Default)]
pub struct ManualClock {
    now: Mutex<Duration>,
}

impl ManualClock {
    /// A clock reading `now` since the epoch.
    pub fn new(now: Duration) -> Self {
        ManualClock {
            now: Mutex::new(now),
        }
    }

    /// Moves the clock forward by `d`.
    pub fn advance(&self, d: Duration) {
        let mut now = self.now.lock();
        *now += d;
    }

    /// Sets the clock.
    pub fn set(&self, now: Duration) {
        *self.now.lock() = now;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Duration {
        *self.now.lock()
    }
}
