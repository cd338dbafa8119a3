//! SASL/SCRAM against the real broker's SASL listener (TRIBUTARY_TEST_KAFKA_SASL,
//! `host:port:user:password`, printed by `scripts/kafka start`): the right password
//! produces, consumes and commits; a wrong one fails without showing it, as
//! `InvalidConfig` "authentication failed" for producers and consumers (the admin
//! client sees only the transport failure: librdkafka reports the reason through an
//! event queue the admin client does not serve).

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

use std::time::Duration;

use tributary_core::{Backend, ConsumerConfig, ConsumerExt, ErrorKind, ProducerConfig, Record, StreamSpec};
use tributary_kafka::{KafkaBackend, KafkaConfig, SaslMechanism, Secret, SecurityProtocol};

struct Listener {
    bootstrap: String,
    user: String,
    password: String,
}

fn listener() -> Option<Listener> {
    let spec = tributary_conformance::server_from_env("TRIBUTARY_TEST_KAFKA_SASL", "scripts/kafka start")?;
    let mut parts = spec.splitn(4, ':');
    let (host, port, user, password) = (
        parts.next().unwrap(),
        parts.next().unwrap(),
        parts.next().unwrap(),
        parts.next().unwrap(),
    );
    Some(Listener {
        bootstrap: format!("{host}:{port}"),
        user: user.to_string(),
        password: password.to_string(),
    })
}

fn config(l: &Listener, mechanism: SaslMechanism, password: &str) -> KafkaConfig {
    let mut c = KafkaConfig::new(&l.bootstrap);
    c.security_protocol = SecurityProtocol::SaslPlaintext;
    c.allow_sasl_plaintext = true;
    c.sasl_mechanism = mechanism;
    c.sasl_username = Some(l.user.clone());
    c.sasl_password = Some(Secret::new(password));
    c.operation_timeout = Duration::from_secs(5);
    c.session_timeout = Duration::from_secs(6);
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_authenticates_and_a_wrong_password_is_refused_unseen() {
    let Some(l) = listener() else { return };
    for mechanism in [SaslMechanism::ScramSha256, SaslMechanism::ScramSha512] {
        let backend = KafkaBackend::new(config(&l, mechanism, &l.password)).unwrap();
        let topic = format!("sasl-{:x}", fastrand::u64(..));
        let admin = backend.admin().await.unwrap();
        admin
            .create_stream(&StreamSpec::new(&topic).with_partitions(2))
            .await
            .unwrap();
        let producer = backend.producer(ProducerConfig::default()).await.unwrap();
        let sent: Vec<Record> = (0..10)
            .map(|i| Record::new(format!("v{i}")).with_key(format!("k{i}")))
            .collect();
        producer.send(&topic, sent).await.unwrap();
        producer.close().await.unwrap();
        let mut consumer = backend
            .consumer(ConsumerConfig::group(&topic, "sasl-group"))
            .await
            .unwrap();
        let mut got = Vec::new();
        let until = std::time::Instant::now() + Duration::from_secs(30);
        while got.len() < 10 && std::time::Instant::now() < until {
            got.extend(consumer.poll(100, Duration::from_millis(500)).await.unwrap());
        }
        assert_eq!(got.len(), 10, "{mechanism:?}: read back over SASL");
        consumer.ack_all(&got).unwrap();
        consumer.commit().await.unwrap();
        consumer.close().await.unwrap();
        admin.delete_stream(&topic).await.unwrap();
    }

    let wrong = "wrong-canary-password-4d1e";
    let backend = KafkaBackend::new(config(&l, SaslMechanism::ScramSha256, wrong)).unwrap();
    let err = backend
        .admin()
        .await
        .unwrap()
        .list_streams()
        .await
        .expect_err("a wrong password is refused");
    let shown = format!("{err} {err:?}");
    assert!(!shown.contains(wrong), "the password shows: {shown}");
    assert!(
        matches!(
            err.kind(),
            ErrorKind::InvalidConfig | ErrorKind::Unavailable | ErrorKind::Timeout
        ),
        "{shown}"
    );
    eprintln!("admin, wrong password: {err}");
    let producer = backend.producer(ProducerConfig::default()).await.unwrap();
    let err = producer.send("any", vec![Record::new("x")]).await.unwrap_err();
    eprintln!("producer, wrong password: {}", err.error);
    assert_eq!(err.kind(), ErrorKind::InvalidConfig, "{}", err.error);
    assert!(
        err.error.to_string().contains("authentication failed"),
        "{}",
        err.error
    );
    assert!(!format!("{:?}", err.error).contains(wrong));
    let Err(err) = backend.consumer(ConsumerConfig::broadcast("any")).await else {
        panic!("a consumer with a wrong password")
    };
    eprintln!("consumer, wrong password: {err}");
    assert_eq!(err.kind(), ErrorKind::InvalidConfig, "{err}");
    assert!(!format!("{err:?}").contains(wrong));
}
