//! Fuzz target: `sluice::fuzzing::usage_tap`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice::fuzzing::usage_tap(data));
