//! x86-64 kernels. Every function here is `unsafe` with `#[target_feature]`; callers in
//! the safe modules check [`super::isa()`] first.
#![allow(clippy::missing_safety_doc)]

pub mod attn;
pub mod attn_avx2;
pub mod f16;
pub mod fwht;
pub mod q4;
pub mod q8;
pub mod rows;
