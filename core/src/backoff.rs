//! The one backoff rule of the workspace: exponential, capped, with jitter, counting
//! retries from zero.

use std::time::Duration;

/// The longest pause before retry number `retry` (0 before the first retry):
/// `initial · 2^retry`, capped at `max`, without overflow for any `retry`.
pub fn backoff_ceiling(initial: Duration, max: Duration, retry: u32) -> Duration {
    let factor = 1u32.checked_shl(retry.min(31)).unwrap_or(u32::MAX);
    initial.saturating_mul(factor).min(max)
}

/// The pause before retry number `retry` (0 before the first retry): uniformly random
/// in `[0, backoff_ceiling(initial, max, retry)]` ("full jitter"), so that clients
/// that failed together do not retry together.
pub fn backoff(initial: Duration, max: Duration, retry: u32) -> Duration {
    let ceiling = backoff_ceiling(initial, max, retry);
    let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
    Duration::from_nanos(fastrand::u64(0..=nanos))
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn the_ceiling_doubles_from_the_initial_pause_up_to_the_cap() {
        let ms = Duration::from_millis;
        let ceilings: Vec<Duration> = (0..6).map(|r| backoff_ceiling(ms(100), ms(1000), r)).collect();
        assert_eq!(ceilings, [ms(100), ms(200), ms(400), ms(800), ms(1000), ms(1000)]);
        assert_eq!(backoff_ceiling(ms(100), ms(1000), u32::MAX), ms(1000));
        assert_eq!(backoff_ceiling(Duration::MAX, Duration::MAX, 40), Duration::MAX);
    }

    #[test]
    fn pauses_stay_under_the_ceiling_and_spread() {
        let (initial, max) = (Duration::from_millis(100), Duration::from_secs(2));
        for retry in 0..40 {
            assert!(backoff(initial, max, retry) <= backoff_ceiling(initial, max, retry));
        }
        let pauses: HashSet<Duration> = (0..50).map(|_| backoff(initial, max, 3)).collect();
        assert!(pauses.len() > 25, "jitter spreads the pauses: {pauses:?}");
        assert_eq!(backoff(Duration::ZERO, max, 5), Duration::ZERO);
    }
}
