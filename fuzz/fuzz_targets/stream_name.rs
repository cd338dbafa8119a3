//! Arbitrary stream names: a name the validator accepts is one path component that
//! stays inside the data root.
#![no_main]

use std::path::{Component, Path};

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(name) = std::str::from_utf8(data) else { return };
    if tributary_core::raw::validate_stream_name(name).is_err() {
        return;
    }
    let root = Path::new("/data/streams");
    let joined = root.join(name);
    let components: Vec<Component> = Path::new(name).components().collect();
    assert_eq!(components.len(), 1, "{name:?} is one component");
    assert!(matches!(components[0], Component::Normal(_)), "{name:?} is a plain name");
    assert!(joined.starts_with(root) && joined.parent() == Some(root), "{name:?} stays inside");
});
