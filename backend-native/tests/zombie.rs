//! A group member that stops polling past the session timeout while another takes its
//! partitions, then comes back: its commit is refused, it delivers nothing it no longer
//! owns, and no partition is held by two members committing at once (see
//! `tributary_conformance::zombie`).

use std::time::Duration;

use tributary_native::{NativeBackend, NativeConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_paused_past_its_session_timeout_is_fenced() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut config = NativeConfig::at(dir.path());
    config.session_timeout = Duration::from_millis(500);
    let backend = NativeBackend::open(config).expect("the engine");
    let summary = tributary_conformance::zombie::paused_member_is_fenced(
        &backend,
        "zombie",
        Duration::from_secs(1),
        Duration::from_secs(10),
    )
    .await
    .expect("the scenario");
    println!("native zombie: {summary:?}");
}
