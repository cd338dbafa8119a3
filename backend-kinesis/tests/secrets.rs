//! Canary credentials never show in Debug output or errors: the backend, its clients,
//! and the errors of calls that fail (against an endpoint where nothing listens, so no
//! server is needed).

use std::time::Duration;

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_kinesis::config::{Credentials, SharedCredentialsProvider};
use tributary_core::{Admin, Backend, ConsumerConfig, Producer, Record, StreamSpec};
use tributary_kinesis::{KinesisBackend, KinesisConfig};

const CANARY_KEY: &str = "AKIACANARY7QX2Z";
const CANARY_SECRET: &str = "canary-secret-9f3b1c7e";
const CANARY_TOKEN: &str = "canary-session-token-55d1";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_credentials_never_appear_in_debug_or_errors() {
    let credentials = Credentials::new(
        CANARY_KEY,
        CANARY_SECRET,
        Some(CANARY_TOKEN.into()),
        None,
        "canary",
    );
    let sdk = SdkConfig::builder()
        .region(Region::new("us-east-1"))
        .credentials_provider(SharedCredentialsProvider::new(credentials))
        .behavior_version(BehaviorVersion::latest())
        .build();
    let mut config = KinesisConfig::local("us-east-1", "http://127.0.0.1:9");
    config.delivery_timeout = Duration::from_millis(300);
    config.request_timeout = Duration::from_secs(2);
    let backend = KinesisBackend::with_sdk_config(config, &sdk).expect("backend");
    let mut seen = vec![format!("{backend:?}"), format!("{:?}", backend.sdk_client())];
    let admin = backend.admin().await.expect("admin");
    let err = admin
        .create_stream(&StreamSpec::new("canary").with_partitions(1))
        .await
        .expect_err("nothing listens");
    seen.push(format!("{err} {err:?}"));
    let producer = backend.producer(Default::default()).await.expect("producer");
    let err = producer
        .send("canary", vec![Record::new("x")])
        .await
        .expect_err("nothing listens");
    seen.push(format!("{err} {err:?}"));
    let err = backend
        .consumer(ConsumerConfig::broadcast("canary"))
        .await
        .err()
        .expect("nothing listens");
    seen.push(format!("{err} {err:?}"));
    for text in &seen {
        for canary in [CANARY_SECRET, CANARY_TOKEN] {
            assert!(!text.contains(canary), "a secret leaked: {text}");
        }
    }
    assert!(seen.iter().skip(2).all(|t| !t.is_empty()), "errors were produced");
}
