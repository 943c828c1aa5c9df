#![no_main]
//! Fuzz target `capi_dequantize`: see fuzz/src/bodies.rs.
#[path = "../src/bodies.rs"]
mod bodies;

libfuzzer_sys::fuzz_target!(|data: &[u8]| bodies::capi_dequantize(data));
