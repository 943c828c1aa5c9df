//! GGML_TYPE_Q8_0: 32 int8 quants and an f16 scale.
use super::BlockFormat;
use crate::types::GgmlType;

/// Mirrors ggml's `block_q8_0`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockQ8_0 {
    /// scale (f16 bits, little-endian)
    pub d: [u8; 2],
    /// quants
    pub qs: [i8; 32],
}

// SAFETY: repr(C), byte arrays only (alignment 1, no padding, all bit patterns valid).
unsafe impl BlockFormat for BlockQ8_0 {
    const TYPE: GgmlType = GgmlType::Q8_0;
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
