#![no_main]
//! Fuzz target `capi_quantize`: see fuzz/src/bodies.rs.
#[path = "../src/bodies.rs"]
mod bodies;

libfuzzer_sys::fuzz_target!(|data: &[u8]| bodies::capi_quantize(data));
