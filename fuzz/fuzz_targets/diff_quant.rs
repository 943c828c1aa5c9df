#![no_main]
//! Fuzz target `diff_quant`: see fuzz/src/bodies.rs.
#[path = "../src/bodies.rs"]
mod bodies;

libfuzzer_sys::fuzz_target!(|data: &[u8]| bodies::diff_quant(data));
