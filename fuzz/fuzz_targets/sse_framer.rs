//! Fuzz target: `sluice::fuzzing::sse_framer`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice::fuzzing::sse_framer(data));
