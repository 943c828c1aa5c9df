//! GGML_TYPE_Q4_0: 4-bit quants with an f16 scale, zero point 8.
use super::BlockFormat;
use crate::types::GgmlType;

/// Mirrors ggml's `block_q4_0`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockQ4_0 {
    /// scale (f16 bits)
    pub d: [u8; 2],
    /// nibbles: element j in the low nibble of qs[j], element j+16 in the high one
    pub qs: [u8; 16],
}

// SAFETY: repr(C), byte arrays only (alignment 1, no padding, all bit patterns valid).
unsafe impl BlockFormat for BlockQ4_0 {
    const TYPE: GgmlType = GgmlType::Q4_0;
    const QK: usize = 32;
    type Dot = super::BlockQ8_0;

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
