//! GGML_TYPE_F16: one IEEE half per element.
use super::BlockFormat;
use crate::types::GgmlType;

/// Mirrors ggml's `ggml_fp16_t`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockF16 {
    /// IEEE half, little-endian bytes.
    pub bits: [u8; 2],
}

// SAFETY: repr(C), byte arrays only (alignment 1, no padding, all bit patterns valid).
unsafe impl BlockFormat for BlockF16 {
    const TYPE: GgmlType = GgmlType::F16;
    const QK: usize = 1;
    type Dot = super::BlockF16;

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
