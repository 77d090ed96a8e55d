//! Warnings that can repeat at the rate of the input (a flood of junk, a full
//! disk, a client over the connection limit) are logged at most once per
//! interval, saying how many were not shown; the counters count every one.

use std::time::{Duration, Instant};

/// One kind of repeated warning.
#[derive(Debug)]
pub struct RateLog {
    every: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl RateLog {
    /// At most one line per `every`.
    pub const fn new(every: Duration) -> Self {
        Self {
            every,
            last: None,
            suppressed: 0,
        }
    }

    /// Records one occurrence. When a line is due it returns how many were
    /// not shown since the last one; otherwise `None` (log nothing).
    pub fn due(&mut self) -> Option<u64> {
        if self.last.is_some_and(|t| t.elapsed() < self.every) {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(Instant::now());
        Some(std::mem::take(&mut self.suppressed))
    }
}

/// `" (N more since the last warning)"`, or nothing when N is 0.
pub fn more(n: u64) -> String {
    if n == 0 {
        String::new()
    } else {
        format!(" ({n} more since the last warning)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_with_the_count_of_the_rest() {
        let mut l = RateLog::new(Duration::from_secs(3600));
        assert_eq!(l.due(), Some(0));
        assert_eq!(l.due(), None);
        assert_eq!(l.due(), None);
        l.last = Some(Instant::now() - Duration::from_secs(3601));
        assert_eq!(l.due(), Some(2));
        assert_eq!(more(2), " (2 more since the last warning)");
        assert_eq!(more(0), "");
    }
}
