//! A canary secret never shows: not in Debug output, not in errors, not in any log
//! line librdkafka writes even with every debug context on (captured through
//! `tracing`, where the backend sends librdkafka's logs). No broker is needed: the
//! client is pointed at a closed port and fails.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record as SpanRecord};
use tracing::{Event, Metadata, Subscriber};
use tributary_core::{Backend, ConsumerConfig, ProducerConfig, Record};
use tributary_kafka::{KafkaBackend, KafkaConfig, SaslMechanism, Secret, SecurityProtocol};

const CANARY: &str = "canary-Zq81-do-not-print";

/// Keeps the text of every event and span field.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<String>>);

struct Text<'a>(&'a mut String);

impl Visit for Text<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let _ = write!(self.0, "{}={value:?} ", field.name());
    }
}

impl Subscriber for Capture {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, span: &Attributes<'_>) -> Id {
        span.record(&mut Text(&mut self.0.lock().unwrap()));
        Id::from_u64(1)
    }
    fn record(&self, _: &Id, values: &SpanRecord<'_>) {
        values.record(&mut Text(&mut self.0.lock().unwrap()));
    }
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, event: &Event<'_>) {
        let mut text = self.0.lock().unwrap();
        event.record(&mut Text(&mut text));
        text.push('\n');
    }
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_secret_is_never_shown() {
    let capture = Capture::default();
    tracing::subscriber::set_global_default(capture.clone()).unwrap();

    // A closed port on this machine: every connection fails at once.
    let mut config = KafkaConfig::new("127.0.0.1:9");
    config.security_protocol = SecurityProtocol::SaslSsl;
    config.sasl_mechanism = SaslMechanism::ScramSha256;
    config.sasl_username = Some("app".into());
    config.sasl_password = Some(Secret::new(CANARY));
    config.ssl_key_password = Some(Secret::new(CANARY));
    config.delivery_timeout = Duration::from_secs(2);
    config.operation_timeout = Duration::from_secs(2);
    config.librdkafka.insert("debug".into(), "all".into());
    config.librdkafka.insert(
        "sasl.oauthbearer.config".into(),
        format!("principal=app secret={CANARY}"),
    );
    let backend = KafkaBackend::new(config).unwrap();

    let mut shown = format!("{backend:?} {:?}", backend.config());
    let producer = backend.producer(ProducerConfig::default()).await.unwrap();
    let sent = producer.send("any-topic", vec![Record::new("x")]).await;
    let err = sent.expect_err("no broker answers");
    write!(shown, "{err} {err:?} {}", err.error).unwrap();
    let consumer = backend.consumer(ConsumerConfig::broadcast("any-topic")).await;
    let Err(err) = consumer else {
        panic!("no broker answers, yet a consumer was made")
    };
    write!(shown, "{err} {err:?}").unwrap();
    let admin = backend.admin().await.unwrap();
    let err = admin.list_streams().await.expect_err("no broker answers");
    write!(shown, "{err} {err:?}").unwrap();
    drop(producer);
    tokio::time::sleep(Duration::from_millis(200)).await;

    assert!(!shown.contains(CANARY), "a secret in Debug or an error: {shown}");
    let logs = capture.0.lock().unwrap().clone();
    assert!(
        logs.contains("sasl.username") || logs.contains("Connect to"),
        "librdkafka's debug logs were captured (else this test proves nothing): {}",
        &logs[..logs.len().min(2000)]
    );
    assert!(!logs.contains(CANARY), "a secret in the logs");
}
