//! The application's handle on one engine.

use std::sync::Arc;

use tributary_core::{
    Admin, Backend, Capabilities, Consumer, ConsumerConfig, ErrorKind, Layer, Layered, Producer,
    ProducerConfig, Result, StreamSpec, async_trait,
};

use tributary_core::raw::Named;

use crate::config::Config;

/// A connection to one engine. Cheap to clone; clones share the engine. Several
/// clients, of the same or different engines, can live in one process.
#[derive(Clone, Debug)]
pub struct Client {
    backend: Arc<dyn Backend>,
}

impl Client {
    /// Connects to the engine `config` describes. Opening a native engine reads its
    /// data directory (and recovers it after a crash) before this returns. Every error
    /// of the client's handles names the engine and the operation
    /// ([`Error::engine`](crate::Error::engine), [`Error::operation`](crate::Error::operation),
    /// and at the end of its message, such as `(kafka send)`).
    ///
    /// # Errors
    /// `InvalidConfig` for bad settings, or the engine's connection or open error.
    /// Cancel safe.
    pub async fn connect(config: Config) -> Result<Self> {
        let engine = config.backend_name();
        let backend = config
            .connect()
            .await
            .map_err(|e| e.in_operation(engine, "connect"))?;
        Ok(Self {
            backend: Arc::new(Named::new(engine, backend)),
        })
    }

    /// Connects to the engine a URL names, such as `memory://?partitions=4`.
    ///
    /// # Errors
    /// As [`Config::from_url`] and [`Client::connect`]. Cancel safe.
    pub async fn from_url(url: &str) -> Result<Self> {
        Self::connect(Config::from_url(url)?).await
    }

    /// Connects to the engine the environment names (`TRIBUTARY_URL` or
    /// `TRIBUTARY_CONFIG`).
    ///
    /// # Errors
    /// As [`Config::from_env`] and [`Client::connect`]. Cancel safe.
    pub async fn from_env() -> Result<Self> {
        Self::connect(Config::from_env()?).await
    }

    /// Wraps a backend built by hand (a mock, a layered backend, a custom engine), as
    /// it is: wrap it in [`raw::Named`](crate::raw::Named) for errors that name it.
    pub fn from_backend(backend: Arc<dyn Backend>) -> Self {
        Self { backend }
    }

    /// The engine's name, as URLs spell it (`kafka`, `kinesis`, `native`, `memory`), or
    /// what [`Backend::engine`] of a backend given to
    /// [`from_backend`](Client::from_backend) says (`custom` unless it says more).
    pub fn engine(&self) -> &'static str {
        self.backend.engine()
    }

    /// This client with every producer, consumer and admin handle wrapped by `layer`.
    pub fn with_layer(self, layer: impl Layer) -> Self {
        Self {
            backend: Arc::new(Layered::new(self.backend, layer)),
        }
    }

    /// The backend behind this client.
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    /// What the engine supports.
    pub fn capabilities(&self) -> Capabilities {
        self.backend.capabilities()
    }

    /// A producer with default settings.
    ///
    /// # Errors
    /// As [`Backend::producer`]. Cancel safe.
    pub async fn producer(&self) -> Result<Box<dyn Producer>> {
        self.backend.producer(ProducerConfig::default()).await
    }

    /// A producer with `config`'s settings (client id, batching of handed-over records).
    ///
    /// # Errors
    /// As [`Backend::producer`]: `InvalidConfig` for bad batching settings. Cancel safe.
    pub async fn producer_with(&self, config: ProducerConfig) -> Result<Box<dyn Producer>> {
        self.backend.producer(config).await
    }

    /// A consumer.
    ///
    /// # Errors
    /// As [`Backend::consumer`]. Cancel safe.
    pub async fn consumer(&self, config: ConsumerConfig) -> Result<Box<dyn Consumer>> {
        self.backend.consumer(config).await
    }

    /// An admin handle.
    ///
    /// # Errors
    /// As [`Backend::admin`]. Cancel safe.
    pub async fn admin(&self) -> Result<Box<dyn Admin>> {
        self.backend.admin().await
    }

    /// Creates the stream unless one of that name exists (whatever its settings).
    ///
    /// # Errors
    /// As [`Admin::create_stream`], except `AlreadyExists`. Not cancel safe.
    pub async fn ensure_stream(&self, spec: &StreamSpec) -> Result<()> {
        match self.admin().await?.create_stream(spec).await {
            Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(()),
            other => other,
        }
    }
}

/// A client is a backend too, so it can go wherever one is expected.
#[async_trait]
impl Backend for Client {
    fn capabilities(&self) -> Capabilities {
        self.backend.capabilities()
    }
    fn engine(&self) -> &'static str {
        self.backend.engine()
    }
    async fn producer(&self, config: ProducerConfig) -> Result<Box<dyn Producer>> {
        self.backend.producer(config).await
    }
    async fn consumer(&self, config: ConsumerConfig) -> Result<Box<dyn Consumer>> {
        self.backend.consumer(config).await
    }
    async fn admin(&self) -> Result<Box<dyn Admin>> {
        self.backend.admin().await
    }
}

#[cfg(all(test, feature = "mock"))]
mod tests {
    use super::*;

    /// Wrapping a mock asks it nothing; its engine is asked only when wanted.
    #[test]
    fn a_mock_backend_is_wrapped_without_expectations() {
        let client = Client::from_backend(Arc::new(crate::MockBackend::new()));
        drop(client.clone());
        let mut mock = crate::MockBackend::new();
        mock.expect_engine().return_const("memory");
        assert_eq!(Client::from_backend(Arc::new(mock)).engine(), "memory");
    }
}
