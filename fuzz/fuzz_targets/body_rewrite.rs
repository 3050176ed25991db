//! Fuzz target: `sluice::fuzzing::body_rewrite`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice::fuzzing::body_rewrite(data));
