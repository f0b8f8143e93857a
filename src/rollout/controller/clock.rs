//! The controller's one clock: tokio's monotonic clock, anchored to the wall-clock time read
//! once at start.
//!
//! Promotion timers are wall-clock milliseconds (they are persisted and must stay meaningful
//! across a restart), but they advance with `tokio::time::Instant`, so tests drive them with
//! `tokio::time::pause()` and timers set for a deadline fire exactly at it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

#[derive(Debug, Clone, Copy)]
pub struct Clock {
    origin: Instant,
    /// Wall-clock milliseconds at `origin`.
    origin_ms: u64,
}

impl Clock {
    /// Reads the wall clock once and ties it to tokio's clock now.
    pub fn start() -> Clock {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        Clock::at(wall)
    }

    /// A clock whose current time is `wall_ms` (tests pick a round origin).
    pub fn at(wall_ms: u64) -> Clock {
        Clock {
            origin: Instant::now(),
            origin_ms: wall_ms,
        }
    }

    /// Wall-clock milliseconds now, advancing with tokio's clock.
    pub fn now_ms(&self) -> u64 {
        self.origin_ms + self.origin.elapsed().as_millis() as u64
    }

    /// The tokio instant at which [`Clock::now_ms`] reaches `ms` (now or earlier: `origin`).
    pub fn instant_at(&self, ms: u64) -> Instant {
        self.origin + Duration::from_millis(ms.saturating_sub(self.origin_ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn follows_tokio_time_and_maps_deadlines_back() {
        let c = Clock::at(1_000_000);
        assert_eq!(c.now_ms(), 1_000_000);
        tokio::time::advance(Duration::from_millis(1500)).await;
        assert_eq!(c.now_ms(), 1_001_500);
        let at = c.instant_at(1_003_000);
        tokio::time::sleep_until(at).await;
        assert_eq!(c.now_ms(), 1_003_000);
        assert_eq!(
            c.instant_at(5),
            c.origin,
            "a deadline before start is due at once"
        );
    }
}
