//! What the Kinesis tests share: a backend on the emulator named by
//! TRIBUTARY_TEST_KINESIS, with the emulator's dummy credentials.

#![allow(dead_code, reason = "each test file uses a different part")]

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_kinesis::config::{Credentials, SharedCredentialsProvider, SharedHttpClient};
use std::sync::Arc;
use std::time::Duration;

use tributary_conformance::{Expected, Harness, Timing};
use tributary_core::{Backend, Result, async_trait};
use tributary_kinesis::{KinesisBackend, KinesisConfig, LeaseStoreKind, ReaderKind};

/// The emulator's endpoint; `None` (a skip) outside CI when unset.
pub(crate) fn endpoint() -> Option<String> {
    tributary_conformance::server_from_env(
        "TRIBUTARY_TEST_KINESIS",
        "start kinesis-local with scripts/kinesis start",
    )
}

/// An SDK config with fixed test credentials, optionally on a scripted HTTP client.
pub(crate) fn sdk_config(http: Option<SharedHttpClient>) -> SdkConfig {
    let credentials = Credentials::new("test", "test", None, None, "tributary-tests");
    let mut builder = SdkConfig::builder()
        .region(Region::new("us-east-1"))
        .credentials_provider(SharedCredentialsProvider::new(credentials))
        .behavior_version(BehaviorVersion::latest());
    if let Some(http) = http {
        builder = builder.http_client(http);
    }
    builder.build()
}

/// The DynamoDB-compatible server for lease tables; `None` (a skip) outside CI when
/// unset.
pub(crate) fn dynamodb_endpoint() -> Option<String> {
    tributary_conformance::server_from_env(
        "TRIBUTARY_TEST_DYNAMODB",
        "start dynalite with scripts/dynamodb start",
    )
}

/// How long a group member's lease lasts in the tests.
pub(crate) const FAILOVER: Duration = Duration::from_secs(2);

/// Settings for the emulator: quick shard discovery, bounded waits, short leases kept
/// on the DynamoDB-compatible server when one is named (else in memory).
pub(crate) fn local_config(endpoint: &str) -> KinesisConfig {
    let mut config = KinesisConfig::local("us-east-1", endpoint);
    match std::env::var("TRIBUTARY_TEST_DYNAMODB") {
        Ok(dynamodb) if !dynamodb.is_empty() => config.dynamodb_endpoint = Some(dynamodb),
        _ => config.leases = LeaseStoreKind::Memory,
    }
    config.failover = FAILOVER;
    config.shard_refresh = std::time::Duration::from_secs(1);
    config.operation_timeout = std::time::Duration::from_secs(60);
    config.delivery_timeout = std::time::Duration::from_secs(60);
    config
}

/// A backend on the emulator.
pub(crate) fn backend(config: KinesisConfig) -> Result<KinesisBackend> {
    KinesisBackend::with_sdk_config(config, &sdk_config(None))
}

/// The conformance harness: every scenario on the emulator, with one kind of reader.
pub(crate) struct KinesisHarness {
    /// The emulator, when one is named.
    pub endpoint: Option<String>,
    /// Polling or enhanced fan-out.
    pub reader: ReaderKind,
    /// Headers and event times in the envelope.
    pub headers_envelope: bool,
    /// Where group members keep leases.
    pub leases: LeaseStoreKind,
    /// What the suite is pinned to.
    pub expected: Expected,
}

impl KinesisHarness {
    /// A harness on TRIBUTARY_TEST_KINESIS.
    pub(crate) fn new(
        reader: ReaderKind,
        headers_envelope: bool,
        leases: LeaseStoreKind,
        expected: Expected,
    ) -> Self {
        Self {
            expected,
            leases,
            endpoint: std::env::var("TRIBUTARY_TEST_KINESIS")
                .ok()
                .filter(|e| !e.is_empty()),
            reader,
            headers_envelope,
        }
    }
}

#[async_trait]
impl Harness for KinesisHarness {
    fn expected(&self) -> Expected {
        self.expected
    }

    fn unavailable(&self) -> Option<String> {
        let dynamodb = std::env::var("TRIBUTARY_TEST_DYNAMODB").is_ok_and(|e| !e.is_empty());
        match self.endpoint {
            None => Some(
                "TRIBUTARY_TEST_KINESIS is not set (start kinesis-local with scripts/kinesis start)".into(),
            ),
            Some(_) if self.leases == LeaseStoreKind::Dynamodb && !dynamodb => {
                Some("TRIBUTARY_TEST_DYNAMODB is not set (start dynalite with scripts/dynamodb start)".into())
            }
            Some(_) => None,
        }
    }

    async fn connect(&self) -> Result<Arc<dyn Backend>> {
        let mut config = local_config(self.endpoint.as_deref().unwrap_or_default());
        config.reader = self.reader;
        config.headers_envelope = self.headers_envelope;
        config.leases = self.leases;
        Ok(Arc::new(backend(config)?))
    }

    async fn reopen(&self, backend: Arc<dyn Backend>) -> Result<Option<Arc<dyn Backend>>> {
        drop(backend);
        self.connect().await.map(Some)
    }

    fn timing(&self) -> Timing {
        Timing {
            settle: Duration::from_secs(60),
            quiet: Duration::from_secs(1),
            poll: Duration::from_millis(100),
            // A lease expires after FAILOVER unrenewed; members look every half of it.
            failover: FAILOVER * 2,
        }
    }
}

/// A Kinesis-style JSON answer, for scripted HTTP layers under the SDK.
pub(crate) fn json_response(
    status: u16,
    body: serde_json::Value,
) -> aws_smithy_runtime_api::client::orchestrator::HttpResponse {
    let mut response = aws_smithy_runtime_api::client::orchestrator::HttpResponse::new(
        aws_smithy_runtime_api::http::StatusCode::try_from(status).expect("a valid status"),
        aws_smithy_types::body::SdkBody::from(body.to_string()),
    );
    response
        .headers_mut()
        .insert("content-type", "application/x-amz-json-1.1");
    response
}

/// The operation a request to Kinesis names (`PutRecords`, ...) and its JSON body
/// (`Null` when it has none), for the scripted layers.
pub(crate) fn operation_of(
    request: &aws_smithy_runtime_api::client::orchestrator::HttpRequest,
) -> (String, serde_json::Value) {
    let target = request.headers().get("x-amz-target").unwrap_or_default();
    let operation = target.rsplit('.').next().unwrap_or_default().to_string();
    let body = request
        .body()
        .bytes()
        .and_then(|b| serde_json::from_slice(b).ok())
        .unwrap_or(serde_json::Value::Null);
    (operation, body)
}
