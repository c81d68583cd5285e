//! `cargo fuzz run session`: see `voxd::fuzzing::session` and docs/fuzzing.md.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| voxd::fuzzing::session(data));
