//! Fuzz target: `sluice::fuzzing::request_parse`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice::fuzzing::request_parse(data));
