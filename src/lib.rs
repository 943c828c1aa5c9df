//! attnrot: Walsh–Hadamard-rotated, quantized KV-cache kernels with ggml's semantics.
//!
//! * [`quant`]: the ggml KV-cache block formats, bit-identical to ggml's CPU backend.
//! * [`rotate`]: normalized fast Walsh–Hadamard transform and upstream's rotation plan.
//! * [`attn`]: flash attention over quantized K/V with `GGML_OP_FLASH_ATTN_EXT` semantics.
//! * [`simd`]: the only place with `core::arch`; runtime ISA detection cached once.
//! * [`ggml`]: bindgen'd ggml structs (pinned headers) and the ggml backend (`libattnrot.so`).
//! * [`capi`]: the plain C API (`ffi/attnrot.h`).
#![deny(unsafe_op_in_unsafe_fn)]

pub mod attn;
pub mod capi;
pub mod capture;
pub mod error;
pub mod ggml;
pub mod par;
pub mod quant;
pub mod rotate;
pub mod simd;
pub mod types;

pub use error::{Error, Result};
pub use types::GgmlType;
