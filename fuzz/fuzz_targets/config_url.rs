//! Arbitrary text as a backend URL or TOML config: an error or a config, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = tributary::Config::from_url(text);
    let _ = tributary::Config::from_toml_str(text);
});
