//! Row dequantization for the attention kernel (private fast paths).
//!
//! Each function turns one contiguous K or V row of `y.len()` elements into f32, bit-identical
//! to upstream's `to_float` of that type (`dequantize_row_*`, ggml-quants.c;
//! `ggml_fp16_to_fp32_row` / `ggml_bf16_to_fp32_row`, ggml.c). They live here rather than in
//! `crate::quant` so the attention kernel can pick SIMD variants and fuse them with its tile
//! packing; `tests/attn_diff.rs` checks them against upstream's `to_float` bit for bit.
use crate::quant::fp16::{bf16_to_f32, f16_to_f32};
use crate::simd::{self, Isa};
use crate::types::GgmlType;

/// `kvalues_iq4nl` (ggml-common.h): the non-linear 4-bit code book of IQ4_NL.
pub(crate) const KVALUES_IQ4NL: [i8; 16] = [
    -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
];

/// A row dequantizer: `x` holds at least `row_bytes(y.len())` bytes.
pub(crate) type DeqFn = fn(&[u8], &mut [f32]);

#[inline]
fn h(x: &[u8], i: usize) -> f32 {
    f16_to_f32(u16::from_le_bytes([x[i], x[i + 1]]))
}

/// Matches `ggml_fp16_to_fp32_row` (exact conversion).
fn f16_row(x: &[u8], y: &mut [f32]) {
    for (i, o) in y.iter_mut().enumerate() {
        *o = h(x, 2 * i);
    }
}

/// Matches `ggml_bf16_to_fp32_row`.
fn bf16_row(x: &[u8], y: &mut [f32]) {
    for (i, o) in y.iter_mut().enumerate() {
        *o = bf16_to_f32(u16::from_le_bytes([x[2 * i], x[2 * i + 1]]));
    }
}

fn f32_row(x: &[u8], y: &mut [f32]) {
    for (i, o) in y.iter_mut().enumerate() {
        *o = f32::from_le_bytes([x[4 * i], x[4 * i + 1], x[4 * i + 2], x[4 * i + 3]]);
    }
}

/// Matches `dequantize_row_q8_0`.
fn q8_0_row(x: &[u8], y: &mut [f32]) {
    for (b, out) in y.chunks_exact_mut(32).enumerate() {
        let blk = &x[b * 34..b * 34 + 34];
        let d = h(blk, 0);
        for j in 0..32 {
            out[j] = (blk[2 + j] as i8) as f32 * d;
        }
    }
}

/// Matches `dequantize_row_q4_0`.
fn q4_0_row(x: &[u8], y: &mut [f32]) {
    for (b, out) in y.chunks_exact_mut(32).enumerate() {
        let blk = &x[b * 18..b * 18 + 18];
        let d = h(blk, 0);
        for j in 0..16 {
            let q = blk[2 + j];
            out[j] = ((q & 0x0f) as i32 - 8) as f32 * d;
            out[j + 16] = ((q >> 4) as i32 - 8) as f32 * d;
        }
    }
}

/// Matches `dequantize_row_q4_1` (`x*d + m`: the C build contracts it into an FMA).
fn q4_1_row(x: &[u8], y: &mut [f32]) {
    for (b, out) in y.chunks_exact_mut(32).enumerate() {
        let blk = &x[b * 20..b * 20 + 20];
        let (d, m) = (h(blk, 0), h(blk, 2));
        for j in 0..16 {
            let q = blk[4 + j];
            out[j] = ((q & 0x0f) as f32).mul_add(d, m);
            out[j + 16] = ((q >> 4) as f32).mul_add(d, m);
        }
    }
}

/// Matches `dequantize_row_q5_0`.
fn q5_0_row(x: &[u8], y: &mut [f32]) {
    for (b, out) in y.chunks_exact_mut(32).enumerate() {
        let blk = &x[b * 22..b * 22 + 22];
        let d = h(blk, 0);
        let qh = u32::from_le_bytes([blk[2], blk[3], blk[4], blk[5]]);
        for j in 0..16 {
            let q = blk[6 + j];
            let h0 = (((qh >> j) << 4) & 0x10) as u8;
            let h1 = ((qh >> (j + 12)) & 0x10) as u8;
            out[j] = (((q & 0x0f) | h0) as i32 - 16) as f32 * d;
            out[j + 16] = (((q >> 4) | h1) as i32 - 16) as f32 * d;
        }
    }
}

/// Matches `dequantize_row_q5_1` (FMA-contracted like the C build).
fn q5_1_row(x: &[u8], y: &mut [f32]) {
    for (b, out) in y.chunks_exact_mut(32).enumerate() {
        let blk = &x[b * 24..b * 24 + 24];
        let (d, m) = (h(blk, 0), h(blk, 2));
        let qh = u32::from_le_bytes([blk[4], blk[5], blk[6], blk[7]]);
        for j in 0..16 {
            let q = blk[8 + j];
            let h0 = (((qh >> j) << 4) & 0x10) as u8;
            let h1 = ((qh >> (j + 12)) & 0x10) as u8;
            out[j] = (((q & 0x0f) | h0) as f32).mul_add(d, m);
            out[j + 16] = (((q >> 4) | h1) as f32).mul_add(d, m);
        }
    }
}

/// Matches `dequantize_row_iq4_nl`.
fn iq4_nl_row(x: &[u8], y: &mut [f32]) {
    for (b, out) in y.chunks_exact_mut(32).enumerate() {
        let blk = &x[b * 18..b * 18 + 18];
        let d = h(blk, 0);
        for j in 0..16 {
            let q = blk[2 + j];
            out[j] = d * KVALUES_IQ4NL[(q & 0x0f) as usize] as f32;
            out[j + 16] = d * KVALUES_IQ4NL[(q >> 4) as usize] as f32;
        }
    }
}

/// The scalar dequantizer of `ty` (None for types attention does not take as K/V).
pub(crate) fn scalar(ty: GgmlType) -> Option<DeqFn> {
    Some(match ty {
        GgmlType::F32 => f32_row,
        GgmlType::F16 => f16_row,
        GgmlType::BF16 => bf16_row,
        GgmlType::Q8_0 => q8_0_row,
        GgmlType::Q4_0 => q4_0_row,
        GgmlType::Q4_1 => q4_1_row,
        GgmlType::Q5_0 => q5_0_row,
        GgmlType::Q5_1 => q5_1_row,
        GgmlType::IQ4_NL => iq4_nl_row,
        GgmlType::Q8_1 => return None,
    })
}

#[cfg(target_arch = "x86_64")]
mod fast {
    use crate::simd::x86::attn as k;
    // SAFETY (all): only handed out by `select` when `simd::isa()` reports the features; the
    // callers pass `x` with at least row_bytes(y.len()) bytes (checked by the validation).
    pub fn f16_avx2(x: &[u8], y: &mut [f32]) {
        assert!(x.len() >= 2 * y.len());
        unsafe { k::f16_row_avx2(x.as_ptr(), y) }
    }
    pub fn f16_avx512(x: &[u8], y: &mut [f32]) {
        assert!(x.len() >= 2 * y.len());
        unsafe { k::f16_row_avx512(x.as_ptr(), y) }
    }
    pub fn q8_0_avx2(x: &[u8], y: &mut [f32]) {
        assert!(y.len() % 32 == 0 && x.len() >= y.len() / 32 * 34);
        unsafe { k::q8_0_row_avx2(x.as_ptr(), y) }
    }
    pub fn q8_0_avx512(x: &[u8], y: &mut [f32]) {
        assert!(y.len() % 32 == 0 && x.len() >= y.len() / 32 * 34);
        unsafe { k::q8_0_row_avx512(x.as_ptr(), y) }
    }
    pub fn q4_0_avx2(x: &[u8], y: &mut [f32]) {
        assert!(y.len() % 32 == 0 && x.len() >= y.len() / 32 * 18);
        unsafe { k::q4_0_row_avx2(x.as_ptr(), y) }
    }
    pub fn q4_0_avx512(x: &[u8], y: &mut [f32]) {
        assert!(y.len() % 32 == 0 && x.len() >= y.len() / 32 * 18);
        unsafe { k::q4_0_row_avx512(x.as_ptr(), y) }
    }
}

/// The fastest dequantizer of `ty` for the ISA this thread runs with.
pub(crate) fn select(ty: GgmlType) -> Option<DeqFn> {
    #[cfg(target_arch = "x86_64")]
    {
        let isa = simd::isa();
        let f: Option<DeqFn> = match (ty, isa) {
            (GgmlType::F16, Isa::Avx512) => Some(fast::f16_avx512),
            (GgmlType::F16, Isa::Avx2) => Some(fast::f16_avx2),
            (GgmlType::Q8_0, Isa::Avx512) => Some(fast::q8_0_avx512),
            (GgmlType::Q8_0, Isa::Avx2) => Some(fast::q8_0_avx2),
            (GgmlType::Q4_0, Isa::Avx512) => Some(fast::q4_0_avx512),
            (GgmlType::Q4_0, Isa::Avx2) => Some(fast::q4_0_avx2),
            _ => None,
        };
        if f.is_some() {
            return f;
        }
    }
    let _ = (simd::isa(), Isa::Scalar);
    scalar(ty)
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
