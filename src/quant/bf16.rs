//! GGML_TYPE_BF16: one bfloat16 per element.
use super::BlockFormat;
use crate::types::GgmlType;

/// Mirrors ggml's `ggml_bf16_t`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockBf16 {
    /// bfloat16, little-endian bytes.
    pub bits: [u8; 2],
}

// SAFETY: repr(C), byte arrays only (alignment 1, no padding, all bit patterns valid).
unsafe impl BlockFormat for BlockBf16 {
    const TYPE: GgmlType = GgmlType::BF16;
    const QK: usize = 1;
    type Dot = super::BlockBf16;

    fn quantize_row(_x: &[f32], _y: &mut [Self]) {
        todo!()
    }
    fn quantize_row_ref(_x: &[f32], _y: &mut [Self]) {
        todo!()
    }
    fn dequantize_row(_x: &[Self], _y: &mut [f32]) {
        todo!()
    }
    fn vec_dot(_x: &[Self], _y: &[Self::Dot]) -> f32 {
        todo!()
    }
}

/// 2^-126 - 2^-151: an f32 result whose exact value is below this in magnitude rounds (with
/// unbounded exponent) below 2^-126, i.e. is tiny after rounding, and FTZ flushes it.
pub(crate) const DP_TINY_LIMIT: f64 = 33554431.0 * f64::from_bits((1023 - 151) << 52);
