//! `cargo fuzz run client_message`: see `voxd::fuzzing::client_message` and docs/fuzzing.md.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| voxd::fuzzing::client_message(data));
