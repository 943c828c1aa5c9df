#![no_main]
//! Fuzz target `capi_rotate`: see fuzz/src/bodies.rs.
#[path = "../src/bodies.rs"]
mod bodies;

libfuzzer_sys::fuzz_target!(|data: &[u8]| bodies::capi_rotate(data));
