//! Ambiguous writes, from a scripted Kinesis under the AWS SDK: PutRecords applies every
//! entry and then answers 500, resets the connection, or answers only after the
//! client's attempt timeout. A caller must see success or `Indeterminate`, never an
//! error that hands back as plainly unsent a record that was written; copies in the
//! stream are bounded by the ambiguous answers each record went through, and counted;
//! each key's first copies keep send order. A blackout of ambiguous answers longer than
//! the delivery timeout makes sends give up: `Indeterminate`, every record handed back.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_kinesis::config::SharedHttpClient;
use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpConnector,
};
use aws_smithy_runtime_api::client::orchestrator::HttpRequest;
use aws_smithy_runtime_api::client::result::ConnectorError;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use serde_json::{Value, json};
use tributary_core::{ErrorKind, Producer, Record};
use tributary_kinesis::{KinesisBackend, KinesisConfig};

/// Longer than the producer's attempt timeout (`request_timeout` below).
const LATE: Duration = Duration::from_millis(400);

/// How the scripted server answers a PutRecords it has applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Answer {
    Normal,
    ServerError,
    ConnectionReset,
    Late,
}

#[derive(Debug, Default)]
struct Server {
    /// Every value written, in order (one shard).
    log: Vec<String>,
    /// Per value, the ambiguous answers to calls that wrote it.
    ambiguous: HashMap<String, u32>,
    /// Calls answered each way.
    answers: BTreeMap<String, usize>,
    /// Every call answers ambiguously while set.
    blackout: bool,
    next_sequence: u128,
}

#[derive(Clone, Debug, Default)]
struct ScriptedKinesis {
    server: Arc<Mutex<Server>>,
}

impl ScriptedKinesis {
    fn put_records(&self, body: &Value) -> HttpConnectorFuture {
        let mut server = self.server.lock().expect("server lock");
        let answer = if server.blackout {
            [Answer::ServerError, Answer::ConnectionReset, Answer::Late][fastrand::usize(..3)]
        } else {
            match fastrand::u8(..20) {
                0..=9 => Answer::Normal,
                10..=12 => Answer::ServerError,
                13..=15 => Answer::ConnectionReset,
                _ => Answer::Late,
            }
        };
        *server.answers.entry(format!("{answer:?}")).or_default() += 1;
        let mut results = Vec::new();
        // Applied first, whatever the answer.
        for entry in body["Records"].as_array().cloned().unwrap_or_default() {
            let data = aws_smithy_types::base64::decode(entry["Data"].as_str().unwrap_or_default())
                .expect("base64 data");
            let value = String::from_utf8(data).expect("text values");
            server.next_sequence += 1;
            let sequence = 49_000_000_000_000_000_000u128 + server.next_sequence;
            if answer != Answer::Normal {
                *server.ambiguous.entry(value.clone()).or_default() += 1;
            }
            server.log.push(value);
            results.push(json!({"SequenceNumber": sequence.to_string(), "ShardId": "shardId-000000000000"}));
        }
        let ok = common::json_response(200, json!({"FailedRecordCount": 0, "Records": results}));
        match answer {
            Answer::Normal => HttpConnectorFuture::ready(Ok(ok)),
            Answer::ServerError => HttpConnectorFuture::ready(Ok(common::json_response(
                500,
                json!({"__type": "InternalFailure", "message": "scripted failure after applying"}),
            ))),
            Answer::ConnectionReset => {
                HttpConnectorFuture::ready(Err(ConnectorError::io(Box::new(std::io::Error::new(
                    std::io::ErrorKind::ConnectionReset,
                    "scripted reset after applying",
                )))))
            }
            Answer::Late => HttpConnectorFuture::new(async move {
                tokio::time::sleep(LATE).await;
                Ok(ok)
            }),
        }
    }
}

impl HttpConnector for ScriptedKinesis {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        let (operation, body) = common::operation_of(&request);
        let shards = json!({"Shards": [{
            "ShardId": "shardId-000000000000",
            "HashKeyRange": {"StartingHashKey": "0", "EndingHashKey": u128::MAX.to_string()},
            "SequenceNumberRange": {"StartingSequenceNumber": "1"},
        }]});
        match operation.as_str() {
            "ListShards" => HttpConnectorFuture::ready(Ok(common::json_response(200, shards))),
            "PutRecords" => self.put_records(&body),
            other => HttpConnectorFuture::ready(Ok(common::json_response(
                400,
                json!({"__type": "UnknownOperationException", "message": format!("{other:?}")}),
            ))),
        }
    }
}

impl HttpClient for ScriptedKinesis {
    fn http_connector(&self, _: &HttpConnectorSettings, _: &RuntimeComponents) -> SharedHttpConnector {
        SharedHttpConnector::new(self.clone())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn written_records_are_never_handed_back_as_unsent() {
    let seed = fastrand::u64(..);
    fastrand::seed(seed);
    let scripted = ScriptedKinesis::default();
    let mut config = KinesisConfig::local("us-east-1", "http://kinesis.scripted.invalid");
    config.retry_base = Duration::from_millis(2);
    config.retry_max = Duration::from_millis(20);
    config.request_timeout = Duration::from_millis(100);
    config.delivery_timeout = Duration::from_secs(2);
    let backend = KinesisBackend::with_sdk_config(
        config,
        &common::sdk_config(Some(SharedHttpClient::new(scripted.clone()))),
    )
    .expect("backend");
    let producer = backend.kinesis_producer();
    let mut sent_per_key: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let (mut delivered, mut indeterminate, mut gave_up) = (Vec::new(), Vec::new(), 0);
    for batch in 0..40 {
        // The last batches go out during a blackout longer than the delivery timeout.
        scripted.server.lock().expect("server lock").blackout = batch >= 36;
        let values: Vec<String> = (0..50)
            .map(|i| format!("b{batch:02}-k{}-{i:02}", i % 10))
            .collect();
        for v in &values {
            let key = v.split('-').nth(1).unwrap_or_default().to_string();
            sent_per_key.entry(key).or_default().push(v.clone());
        }
        let records = values
            .iter()
            .map(|v| Record::new(v.clone()).with_key(v.split('-').nth(1).unwrap_or_default().to_string()))
            .collect();
        match producer.send("ambiguous", records).await {
            Ok(deliveries) => {
                assert_eq!(deliveries.len(), values.len());
                delivered.extend(values);
            }
            Err(e) => {
                let written: Vec<String> = {
                    let server = scripted.server.lock().expect("server lock");
                    e.unsent
                        .iter()
                        .map(|r| String::from_utf8(r.value.to_vec()).expect("text"))
                        .filter(|v| server.log.contains(v))
                        .collect()
                };
                assert!(
                    written.is_empty() || e.kind() == ErrorKind::Indeterminate,
                    "seed {seed}: batch {batch} handed back {} written records as {:?}: {}",
                    written.len(),
                    e.kind(),
                    e.error
                );
                gave_up += 1;
                delivered.extend(e.delivered.iter().map(|(i, _)| values[*i].clone()));
                indeterminate.extend(
                    e.unsent
                        .iter()
                        .map(|r| String::from_utf8(r.value.to_vec()).expect("text")),
                );
            }
        }
    }
    let server = scripted.server.lock().expect("server lock");
    let mut copies: HashMap<&str, u32> = HashMap::new();
    for v in &server.log {
        *copies.entry(v.as_str()).or_default() += 1;
    }
    for v in &delivered {
        assert!(
            copies.contains_key(v.as_str()),
            "seed {seed}: delivered {v} is not in the stream"
        );
    }
    let mut extra = 0;
    for (v, n) in &copies {
        let bound = 1 + server.ambiguous.get(*v).copied().unwrap_or(0);
        assert!(
            *n <= bound,
            "seed {seed}: {v} written {n} times, after {} ambiguous answers",
            bound - 1
        );
        extra += n - 1;
    }
    // Per key, the first copies in send order.
    let mut first: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut seen = std::collections::HashSet::new();
    for v in &server.log {
        if seen.insert(v.as_str()) {
            let key = v.split('-').nth(1).unwrap_or_default().to_string();
            first.entry(key).or_default().push(v.clone());
        }
    }
    for (key, sent) in &sent_per_key {
        let landed = first.get(key).cloned().unwrap_or_default();
        let written: Vec<String> = sent
            .iter()
            .filter(|v| copies.contains_key(v.as_str()))
            .cloned()
            .collect();
        assert_eq!(landed, written, "seed {seed}: key {key} in send order");
    }
    let ambiguous_calls: usize = server
        .answers
        .iter()
        .filter(|(k, _)| k.as_str() != "Normal")
        .map(|(_, n)| n)
        .sum();
    println!(
        "ambiguous writes: answers {:?}; {} delivered, {} Indeterminate in {gave_up} sends that gave up; {} copies in the stream, {extra} extra (each within its ambiguous answers), seed {seed}",
        server.answers,
        delivered.len(),
        indeterminate.len(),
        server.log.len()
    );
    assert!(
        ambiguous_calls >= 20,
        "seed {seed}: the script answered ambiguously {ambiguous_calls} times"
    );
    assert!(gave_up > 0, "seed {seed}: the blackout made sends give up");
    assert!(
        extra > 0,
        "seed {seed}: written records were sent again after an ambiguous answer"
    );
}
