//! GGML_TYPE_IQ4_NL: 4-bit indices into a fixed non-linear table, f16 scale.
use super::BlockFormat;
use crate::types::GgmlType;

/// Mirrors ggml's `block_iq4_nl`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockIq4Nl {
    /// scale (f16 bits)
    pub d: [u8; 2],
    /// indices into the non-linear table kvalues_iq4nl
    pub qs: [u8; 16],
}

// SAFETY: repr(C), byte arrays only (alignment 1, no padding, all bit patterns valid).
unsafe impl BlockFormat for BlockIq4Nl {
    const TYPE: GgmlType = GgmlType::IQ4_NL;
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
