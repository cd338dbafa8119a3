//! Helpers shared by the native engine's integration tests.

use std::path::Path;

/// Copies a data directory without its lock: how a test reopens the state a crash left
/// while the engine that wrote it (forgotten, as after kill -9) still holds the lock in
/// this process.
pub(crate) fn copy_dir(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            std::fs::create_dir_all(&target).unwrap();
            copy_dir(&entry.path(), &target);
        } else if entry.file_name() != "LOCK" {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}
