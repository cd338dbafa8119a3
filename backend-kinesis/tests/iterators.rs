//! Expired shard iterators, against kinesis-local with a scripted layer under the AWS
//! SDK that expires iterators on cue (the emulator keeps them for five minutes): a
//! reader resumes right after the last record it delivered, with no gap and no
//! duplicate, both when iterators expire at random and when the application stops
//! polling for longer than an iterator lives. The layer also counts GetRecords calls:
//! never more than five per second on a shard.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_kinesis::config::SharedHttpClient;
use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpConnector,
};
use aws_smithy_runtime_api::client::orchestrator::{HttpRequest, HttpResponse};
use aws_smithy_runtime_api::client::result::ConnectorError;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::body::SdkBody;
use aws_smithy_types::byte_stream::ByteStream;
use serde_json::Value;
use tributary_conformance::drain;
use tributary_core::{Admin, Backend, ConsumerConfig, Producer, Record, StreamSpec};
use tributary_kinesis::KinesisBackend;

#[derive(Debug, Default)]
struct Expiry {
    /// When each iterator was handed out.
    issued: HashMap<String, Instant>,
    /// Iterators older than this are refused as expired.
    max_age: Option<Duration>,
    /// Every n-th GetRecords call is refused as expired.
    every: Option<usize>,
    get_records: Vec<Instant>,
    injected: usize,
}

/// The real HTTP client, with GetRecords refused as ExpiredIteratorException on cue.
#[derive(Clone, Debug)]
struct Expiring {
    inner: SharedHttpClient,
    state: Arc<Mutex<Expiry>>,
}

#[derive(Clone, Debug)]
struct ExpiringConnector {
    inner: SharedHttpConnector,
    state: Arc<Mutex<Expiry>>,
}

impl HttpClient for Expiring {
    fn http_connector(
        &self,
        settings: &HttpConnectorSettings,
        components: &RuntimeComponents,
    ) -> SharedHttpConnector {
        SharedHttpConnector::new(ExpiringConnector {
            inner: self.inner.http_connector(settings, components),
            state: self.state.clone(),
        })
    }
}

impl HttpConnector for ExpiringConnector {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        let target = request
            .headers()
            .get("x-amz-target")
            .unwrap_or_default()
            .to_string();
        let operation = target.rsplit('.').next().unwrap_or_default().to_string();
        if operation == "GetRecords" {
            let iterator = request
                .body()
                .bytes()
                .and_then(|b| serde_json::from_slice::<Value>(b).ok())
                .and_then(|v| v["ShardIterator"].as_str().map(str::to_string))
                .unwrap_or_default();
            let mut state = self.state.lock().expect("lock");
            state.get_records.push(Instant::now());
            let too_old = state
                .max_age
                .zip(state.issued.get(&iterator))
                .is_some_and(|(age, at)| at.elapsed() > age);
            let nth = state
                .every
                .is_some_and(|n| state.get_records.len().is_multiple_of(n));
            if too_old || nth {
                state.injected += 1;
                return HttpConnectorFuture::ready(Ok(common::json_response(
                    400,
                    serde_json::json!({"__type": "ExpiredIteratorException", "message": "Iterator expired (scripted)"}),
                )));
            }
        }
        let inner = self.inner.clone();
        let state = self.state.clone();
        HttpConnectorFuture::new(async move {
            let response = inner.call(request).await?;
            if operation != "GetRecords" && operation != "GetShardIterator" {
                return Ok(response);
            }
            // Note when each iterator was handed out.
            let status = response.status();
            let headers = response.headers().clone();
            let bytes = ByteStream::new(response.into_body())
                .collect()
                .await
                .map_err(|e| ConnectorError::other(e.into(), None))?
                .into_bytes();
            if let Ok(body) = serde_json::from_slice::<Value>(&bytes) {
                let mut state = state.lock().expect("lock");
                for field in ["ShardIterator", "NextShardIterator"] {
                    if let Some(it) = body[field].as_str() {
                        state.issued.insert(it.to_string(), Instant::now());
                    }
                }
            }
            let mut rebuilt = HttpResponse::new(status, SdkBody::from(bytes));
            *rebuilt.headers_mut() = headers;
            Ok(rebuilt)
        })
    }
}

fn setup(endpoint: &str, expiry: Expiry, per_read: u32) -> (KinesisBackend, Arc<Mutex<Expiry>>) {
    let real = aws_smithy_http_client::Builder::new().build_http();
    let state = Arc::new(Mutex::new(expiry));
    let layer = SharedHttpClient::new(Expiring {
        inner: real,
        state: state.clone(),
    });
    let mut config = common::local_config(endpoint);
    config.records_per_read = per_read;
    config.retry_base = Duration::from_millis(20);
    let backend = KinesisBackend::with_sdk_config(config, &common::sdk_config(Some(layer))).expect("backend");
    (backend, state)
}

async fn fresh_stream(backend: &KinesisBackend, name: &str) -> String {
    let stream = format!("{name}-{:08x}", fastrand::u32(..));
    backend
        .admin()
        .await
        .expect("admin")
        .create_stream(&StreamSpec::new(&stream).with_partitions(1))
        .await
        .expect("create");
    stream
}

fn values(from: usize, to: usize) -> Vec<String> {
    (from..to).map(|i| format!("v{i:04}")).collect()
}

async fn send(backend: &KinesisBackend, stream: &str, values: &[String]) {
    backend
        .kinesis_producer()
        .send(
            stream,
            values
                .iter()
                .map(|v| Record::new(v.clone()).with_key("k"))
                .collect(),
        )
        .await
        .expect("send");
}

fn texts(records: &[tributary_core::Received]) -> Vec<String> {
    records
        .iter()
        .map(|r| String::from_utf8_lossy(&r.value).into_owned())
        .collect()
}

/// At most five GetRecords calls in any second (one shard).
fn assert_rate(calls: &[Instant]) {
    for (i, start) in calls.iter().enumerate() {
        let in_window = calls[i..]
            .iter()
            .take_while(|t| **t - *start < Duration::from_secs(1))
            .count();
        assert!(in_window <= 5, "{in_window} GetRecords calls within one second");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_iterators_resume_after_the_last_delivered_record() {
    let Some(endpoint) = common::endpoint() else {
        return;
    };
    let (backend, state) = setup(
        &endpoint,
        Expiry {
            every: Some(3),
            ..Expiry::default()
        },
        20,
    );
    let stream = fresh_stream(&backend, "expiring").await;
    let mut reader = backend
        .consumer(ConsumerConfig::broadcast(&stream))
        .await
        .expect("reader");
    let all = values(0, 300);
    let mut got = Vec::new();
    for part in all.chunks(100) {
        send(&backend, &stream, part).await;
        got.extend(
            drain(&mut *reader, 100, Duration::from_secs(60))
                .await
                .expect("poll"),
        );
    }
    assert_eq!(texts(&got), all, "every record once, in order, across expiries");
    let state = state.lock().expect("lock");
    println!(
        "{} GetRecords calls, {} refused as expired",
        state.get_records.len(),
        state.injected
    );
    assert!(state.injected >= 5, "iterators expired {} times", state.injected);
    assert_rate(&state.get_records);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_paused_past_iterator_expiry_resumes_without_a_gap() {
    let Some(endpoint) = common::endpoint() else {
        return;
    };
    let (backend, state) = setup(
        &endpoint,
        Expiry {
            max_age: Some(Duration::from_secs(1)),
            ..Expiry::default()
        },
        10,
    );
    let stream = fresh_stream(&backend, "paused").await;
    let all = values(0, 200);
    send(&backend, &stream, &all).await;
    let mut reader = backend
        .consumer(ConsumerConfig::broadcast(&stream))
        .await
        .expect("reader");
    let mut got = drain(&mut *reader, 30, Duration::from_secs(60))
        .await
        .expect("poll");
    // The reader fills its queue, then waits holding an iterator that expires.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    got.extend(
        drain(&mut *reader, 170, Duration::from_secs(60))
            .await
            .expect("poll"),
    );
    assert_eq!(texts(&got), all, "every record once, in order, after the pause");
    let state = state.lock().expect("lock");
    println!(
        "{} GetRecords calls, {} refused as expired",
        state.get_records.len(),
        state.injected
    );
    assert!(state.injected >= 1, "the paused reader's iterator expired");
    assert_rate(&state.get_records);
}
