//! GGML_TYPE_Q5_1: 5-bit quants with f16 scale and min.
use super::BlockFormat;
use crate::types::GgmlType;

/// Mirrors ggml's `block_q5_1`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockQ5_1 {
    /// scale (f16 bits)
    pub d: [u8; 2],
    /// min (f16 bits)
    pub m: [u8; 2],
    /// 5th bits, little-endian u32
    pub qh: [u8; 4],
    /// low nibbles
    pub qs: [u8; 16],
}

// SAFETY: repr(C), byte arrays only (alignment 1, no padding, all bit patterns valid).
unsafe impl BlockFormat for BlockQ5_1 {
    const TYPE: GgmlType = GgmlType::Q5_1;
    const QK: usize = 32;
    type Dot = super::BlockQ8_1;

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
