//! The whole conformance suite against the native engine in each durability mode,
//! each scenario in its own data directory; `reopen` closes the engine and opens the
//! directory again.

use std::sync::{Arc, Mutex};

use tributary_conformance::{Expected, Harness};
use tributary_core::{Backend, Capabilities, Result, async_trait};
use tributary_native::{Durability, NativeBackend, NativeConfig};

struct NativeHarness {
    dir: tempfile::TempDir,
    durability: Durability,
    open: Mutex<Option<NativeBackend>>,
}

impl NativeHarness {
    fn new(durability: Durability) -> Self {
        Self {
            dir: tempfile::tempdir().expect("a temporary directory"),
            durability,
            open: Mutex::new(None),
        }
    }

    fn config(&self) -> NativeConfig {
        let mut config = NativeConfig::at(self.dir.path());
        config.partitions = 2;
        config.durability = self.durability;
        config
    }
}

#[async_trait]
impl Harness for NativeHarness {
    /// Every mode runs everything; records up to the default 1 MiB.
    fn expected(&self) -> Expected {
        Expected {
            capabilities: Capabilities::durable_log(1024 * 1024),
            skips: &[],
            handoffs_redeliver: false,
        }
    }

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

mod page_cache {
    tributary_conformance::suite!(super::NativeHarness::new(super::Durability::PageCache));
}

mod memory {
    tributary_conformance::suite!(super::NativeHarness::new(super::Durability::Memory));
}

mod group_commit {
    tributary_conformance::suite!(super::NativeHarness::new(super::Durability::GroupCommit));
}

mod sync {
    tributary_conformance::suite!(super::NativeHarness::new(super::Durability::Sync));
}
