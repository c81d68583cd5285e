//! `cargo fuzz run wav`: see `voxd::fuzzing::wav` and docs/fuzzing.md.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| voxd::fuzzing::wav(data));
