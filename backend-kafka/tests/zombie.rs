//! A group member that stops polling past `max_poll_interval` while another takes its
//! partitions, then comes back, on the broker named by TRIBUTARY_TEST_KAFKA: its commit
//! is refused, it delivers nothing it no longer owns, and no partition is held by two
//! members committing at once (see `tributary_conformance::zombie`).

use std::time::Duration;

use tributary_kafka::{KafkaBackend, KafkaConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_paused_past_its_poll_interval_is_fenced() {
    let Some(bootstrap) = tributary_conformance::server_from_env(
        "TRIBUTARY_TEST_KAFKA",
        "start a broker with scripts/kafka start",
    ) else {
        return;
    };
    let mut config = KafkaConfig::new(bootstrap);
    // The broker's minimum session; librdkafka leaves the group when poll is not called
    // for max_poll_interval (it must be at least the session timeout).
    config.session_timeout = Duration::from_secs(6);
    config.max_poll_interval = Duration::from_secs(7);
    config.metadata_refresh = Duration::from_millis(500);
    let backend = KafkaBackend::new(config).expect("the backend");
    let name = format!(
        "zombie-{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("a clock after 1970")
            .as_millis()
    );
    let summary = tributary_conformance::zombie::paused_member_is_fenced(
        &backend,
        &name,
        Duration::from_secs(10),
        Duration::from_secs(30),
    )
    .await
    .expect("the scenario");
    println!("kafka zombie: {summary:?}");
}
