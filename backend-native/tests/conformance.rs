//! The whole conformance suite against the native engine, each scenario in its own
//! data directory; `reopen` closes the engine and opens the directory again.

use std::sync::{Arc, Mutex};

use tributary_conformance::Harness;
use tributary_core::{Backend, Result, async_trait};
use tributary_native::{NativeBackend, NativeConfig};

struct NativeHarness {
    dir: tempfile::TempDir,
    open: Mutex<Option<NativeBackend>>,
}

impl NativeHarness {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("a temporary directory"),
            open: Mutex::new(None),
        }
    }

    fn config(&self) -> NativeConfig {
        let mut config = NativeConfig::at(self.dir.path());
        config.partitions = 2;
        config
    }
}

#[async_trait]
impl Harness for NativeHarness {
    async fn connect(&self) -> Result<Arc<dyn Backend>> {
        let backend = NativeBackend::open(self.config())?;
        *self.open.lock().expect("harness lock") = Some(backend.clone());
        Ok(Arc::new(backend))
    }

    async fn reopen(&self, backend: Arc<dyn Backend>) -> Result<Option<Arc<dyn Backend>>> {
        drop(backend);
        if let Some(old) = self.open.lock().expect("harness lock").take() {
            old.close()?;
        }
        self.connect().await.map(Some)
    }
}

tributary_conformance::suite!(NativeHarness::new());
