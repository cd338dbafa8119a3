//! Arbitrary bytes as a segment index: never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 8 {
        return;
    }
    let base = u64::from_le_bytes(data[..8].try_into().expect("8 bytes"));
    let _ = tributary_native::raw::check_index(&data[8..], base);
});
