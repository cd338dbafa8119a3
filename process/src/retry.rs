//! When a failed handler runs again, and when the processor gives a record up.

use std::time::Duration;

use tributary_core::raw::backoff;

/// How often a record's handler runs before the processor gives the record up (to the
/// dead-letter stream, or by stopping), and the pauses between runs: exponential, with
/// full jitter, from `initial_backoff` up to `max_backoff`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Retry {
    /// Handler runs per record, at least 1 (1: no retry).
    pub attempts: u32,
    /// The ceiling of the first pause.
    pub initial_backoff: Duration,
    /// The ceiling of every pause.
    pub max_backoff: Duration,
}

impl Default for Retry {
    /// Three runs, pauses from 100 ms up to 10 s.
    fn default() -> Self {
        Self::new(3, Duration::from_millis(100), Duration::from_secs(10))
    }
}

impl Retry {
    /// `attempts` runs (0 counts as 1), pauses from `initial_backoff` up to `max_backoff`.
    pub fn new(attempts: u32, initial_backoff: Duration, max_backoff: Duration) -> Self {
        Self {
            attempts: attempts.max(1),
            initial_backoff,
            max_backoff,
        }
    }

    /// One run, no retry.
    pub fn never() -> Self {
        Self::new(1, Duration::ZERO, Duration::ZERO)
    }
}

/// What follows a failed run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Next {
    /// Run again after this pause.
    Again(Duration),
    /// Give the record up.
    GiveUp,
}

/// What follows the failure of run number `run` (1 for the first) of a record's handler.
pub(crate) fn after_failure(retry: &Retry, run: u32, retryable: bool) -> Next {
    if !retryable || run >= retry.attempts {
        return Next::GiveUp;
    }
    Next::Again(backoff(retry.initial_backoff, retry.max_backoff, run - 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_runs_its_attempts_with_growing_pauses_then_is_given_up() {
        let retry = Retry::new(3, Duration::from_millis(100), Duration::from_millis(150));
        for _ in 0..50 {
            match after_failure(&retry, 1, true) {
                Next::Again(p) => assert!(p <= Duration::from_millis(100)),
                Next::GiveUp => panic!("two runs left"),
            }
            match after_failure(&retry, 2, true) {
                Next::Again(p) => assert!(p <= Duration::from_millis(150), "capped"),
                Next::GiveUp => panic!("one run left"),
            }
        }
        assert_eq!(after_failure(&retry, 3, true), Next::GiveUp);
    }

    #[test]
    fn an_error_that_retrying_cannot_mend_is_given_up_at_once() {
        assert_eq!(after_failure(&Retry::default(), 1, false), Next::GiveUp);
        assert_eq!(after_failure(&Retry::never(), 1, true), Next::GiveUp);
        assert_eq!(Retry::new(0, Duration::ZERO, Duration::ZERO).attempts, 1);
    }
}
