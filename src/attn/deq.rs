//! Row dequantization for the attention kernel: thin glue that hands `crate::quant`'s typed
//! `BlockFormat::dequantize_row` (upstream's `to_float`, bit-exact, scalar/AVX2/AVX-512 by
//! `simd::isa()`) to the kernel as a plain function pointer.
//!
//! The decode path of `attn` does not dequantize rows at all for f16/q8_0/q4_0 K/V (fused
//! kernels in `simd::x86::attn`); these are used by the prefill tiles and the other formats.
use crate::quant::{
    as_blocks, BlockBf16, BlockF16, BlockFormat, BlockIq4Nl, BlockQ4_0, BlockQ4_1, BlockQ5_0,
    BlockQ5_1, BlockQ8_0,
};
use crate::types::GgmlType;

/// A row dequantizer: `x` holds at least `row_bytes(y.len())` bytes, `y.len()` is a multiple
/// of the format's block size (both guaranteed by the attention plan's validation).
pub(crate) type DeqFn = fn(&[u8], &mut [f32]);

/// `B::dequantize_row` over the first `y.len() / B::QK` blocks of `x`.
fn typed<B: BlockFormat>(x: &[u8], y: &mut [f32]) {
    let nb = y.len() / B::QK;
    let blocks = as_blocks::<B>(&x[..nb * std::mem::size_of::<B>()])
        .expect("a whole number of blocks by construction");
    B::dequantize_row(blocks, &mut y[..nb * B::QK]);
}

/// f32 "dequantization" (a copy of little-endian floats).
fn f32_row(x: &[u8], y: &mut [f32]) {
    for (o, b) in y.iter_mut().zip(x.chunks_exact(4)) {
        *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    }
}

/// The dequantizer of `ty` (None for types attention does not take as K/V). Each dispatches
/// on `simd::isa()` of the calling thread.
pub(crate) fn select(ty: GgmlType) -> Option<DeqFn> {
    Some(match ty {
        GgmlType::F32 => f32_row,
        GgmlType::F16 => typed::<BlockF16>,
        GgmlType::BF16 => typed::<BlockBf16>,
        GgmlType::Q8_0 => typed::<BlockQ8_0>,
        GgmlType::Q4_0 => typed::<BlockQ4_0>,
        GgmlType::Q4_1 => typed::<BlockQ4_1>,
        GgmlType::Q5_0 => typed::<BlockQ5_0>,
        GgmlType::Q5_1 => typed::<BlockQ5_1>,
        GgmlType::IQ4_NL => typed::<BlockIq4Nl>,
        GgmlType::Q8_1 => return None,
    })
}

/// Dequantize one row of type `ty` with the variant for the current ISA (for tests: compare
/// with upstream's `to_float`). Errors if `x` is too short or `ty` is not a K/V type.
pub fn dequantize_row(ty: GgmlType, x: &[u8], y: &mut [f32]) -> crate::Result<()> {
    let f = select(ty).ok_or(crate::Error::UnsupportedType(ty))?;
    let need = ty.row_bytes(y.len())?;
    if x.len() < need {
        return Err(crate::Error::BufferTooSmall {
            what: "row",
            need,
            have: x.len(),
        });
    }
    f(x, y);
    Ok(())
}
