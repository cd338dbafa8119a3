//! Deadlines from caller-given timeouts, which may be too large to add to "now".

use std::time::Duration;

use tokio::time::Instant;

/// The instant `timeout` from now, or a far-future instant for timeouts too large to
/// add (`Duration::MAX` means "wait as long as it takes").
pub fn deadline_after(timeout: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(timeout)
        .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 24 * 3600))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn huge_timeouts_become_a_far_future_instant() {
        let now = Instant::now();
        assert_eq!(
            deadline_after(Duration::from_secs(5)),
            now + Duration::from_secs(5)
        );
        assert!(deadline_after(Duration::MAX) > now + Duration::from_secs(50 * 365 * 24 * 3600));
    }
}
