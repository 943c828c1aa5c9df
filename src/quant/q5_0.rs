//! GGML_TYPE_Q5_0: 5-bit quants with an f16 scale, zero point 16.
use super::BlockFormat;
use crate::types::GgmlType;

/// Mirrors ggml's `block_q5_0`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockQ5_0 {
    /// scale (f16 bits)
    pub d: [u8; 2],
    /// 5th bits, little-endian u32
    pub qh: [u8; 4],
    /// low nibbles
    pub qs: [u8; 16],
}

// SAFETY: repr(C), byte arrays only (alignment 1, no padding, all bit patterns valid).
unsafe impl BlockFormat for BlockQ5_0 {
    const TYPE: GgmlType = GgmlType::Q5_0;
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
