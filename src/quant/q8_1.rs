//! GGML_TYPE_Q8_1: the vec_dot type of q4_1/q5_1 (scale and scaled sum).
use super::BlockFormat;
use crate::types::GgmlType;

/// Mirrors ggml's `block_q8_1`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockQ8_1 {
    /// scale (f16 bits)
    pub d: [u8; 2],
    /// d * sum(qs) (f16 bits)
    pub s: [u8; 2],
    /// quants
    pub qs: [i8; 32],
}

// SAFETY: repr(C), byte arrays only (alignment 1, no padding, all bit patterns valid).
unsafe impl BlockFormat for BlockQ8_1 {
    const TYPE: GgmlType = GgmlType::Q8_1;
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
