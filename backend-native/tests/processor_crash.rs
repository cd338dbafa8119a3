//! The processor killed with SIGKILL and started again on one data directory: nothing
//! lost, nothing a commit covered handled again (`tributary_conformance::crash`).

use std::path::Path;
use std::sync::Arc;

use tributary_core::{Backend, Result};
use tributary_native::{NativeBackend, NativeConfig};

fn connect(scratch: &Path) -> Result<Arc<dyn Backend>> {
    Ok(Arc::new(NativeBackend::open(NativeConfig::at(
        scratch.join("data"),
    ))?))
}

#[test]
fn processor_killed_and_restarted_loses_nothing() {
    tributary_conformance::crash::processor_killed_and_restarted_loses_nothing(connect);
}
