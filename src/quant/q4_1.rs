//! GGML_TYPE_Q4_1: 4-bit quants with f16 scale and min.
use super::fp16::{f16le_to_f32, f32_to_f16le};
use super::q4_0::{cvtt_i32, hsum8, lanes_u8, min_max, nibbles};
use super::{BlockFormat, BlockQ8_1};
use crate::simd::{self, Isa};
use crate::types::GgmlType;

/// Mirrors ggml's `block_q4_1`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockQ4_1 {
    /// scale (f16 bits)
    pub d: [u8; 2],
    /// min (f16 bits)
    pub m: [u8; 2],
    /// nibbles
    pub qs: [u8; 16],
}

/// Matches `quantize_row_q4_1_ref` (ggml-quants.c) as compiled for the CPU backend: gcc
/// contracts `(x - min)*id + 0.5f` into `fma(x - min, id, 0.5f)` and converts with
/// `vcvttps2dq` + low byte.
fn quantize_scalar(x: &[f32], y: &mut [BlockQ4_1]) {
    for (xb, yb) in x.chunks_exact(32).zip(y.iter_mut()) {
        let (min, max) = min_max(xb);
        let d = (max - min) / 15.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        yb.d = f32_to_f16le(d);
        yb.m = f32_to_f16le(min);
        for j in 0..16 {
            let xi0 = (cvtt_i32((xb[j] - min).mul_add(id, 0.5)) as i8).min(15) as u8;
            let xi1 = (cvtt_i32((xb[j + 16] - min).mul_add(id, 0.5)) as i8).min(15) as u8;
            yb.qs[j] = xi0 | (xi1 << 4);
        }
    }
}

/// Matches `dequantize_row_q4_1` (ggml-quants.c); gcc contracts `x*d + m` into one FMA.
fn dequantize_scalar(x: &[BlockQ4_1], y: &mut [f32]) {
    for (xb, yb) in x.iter().zip(y.chunks_exact_mut(32)) {
        let d = f16le_to_f32(xb.d);
        let m = f16le_to_f32(xb.m);
        for (o, q) in yb.iter_mut().zip(nibbles(&xb.qs)) {
            *o = (q as f32).mul_add(d, m);
        }
    }
}

/// Matches the AVX2 path of `ggml_vec_dot_q4_1_q8_1` (arch/x86/quants.c): lanes as for
/// q4_0 (unsigned x signed), `fma(dx*dy, lane, acc)`, and `summs = fma(m, s, summs)` per
/// block (gcc contracts it), result `hsum_float_8(acc) + summs`.
#[inline(never)] // keeps the SIMD dispatch in `vec_dot` free of its frame
fn vec_dot_scalar(x: &[BlockQ4_1], y: &[BlockQ8_1]) -> f32 {
    let mut acc = [0f32; 8];
    let mut summs = 0f32;
    for (bx, by) in x.iter().zip(y) {
        let d = f16le_to_f32(bx.d) * f16le_to_f32(by.d);
        summs = f16le_to_f32(bx.m).mul_add(f16le_to_f32(by.s), summs);
        let s = lanes_u8(&nibbles(&bx.qs), &by.qs);
        for k in 0..8 {
            acc[k] = d.mul_add(s[k] as f32, acc[k]);
        }
    }
    hsum8(acc) + summs
}

/// The full ISA dispatch of `vec_dot` (forced ISAs, first call).
#[inline(never)]
fn vec_dot_dispatch(x: &[BlockQ4_1], y: &[<BlockQ4_1 as BlockFormat>::Dot]) -> f32 {
    match simd::isa() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: isa() never reports more than the CPU has.
        Isa::Avx512 => unsafe { crate::simd::x86::q4::vec_dot_q4_1_avx512(x, y) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        Isa::Avx2 => unsafe { crate::simd::x86::q4::vec_dot_q4_1_avx2(x, y) },
        _ => vec_dot_scalar(x, y),
    }
}

// SAFETY: repr(C), byte arrays only (alignment 1, no padding, all bit patterns valid).
unsafe impl BlockFormat for BlockQ4_1 {
    const TYPE: GgmlType = GgmlType::Q4_1;
    const QK: usize = 32;
    type Dot = super::BlockQ8_1;

    /// The CPU backend's `quantize_row_q4_1` calls `quantize_row_q4_1_ref`.
    fn quantize_row(x: &[f32], y: &mut [Self]) {
        Self::quantize_row_ref(x, y)
    }
    fn quantize_row_ref(x: &[f32], y: &mut [Self]) {
        debug_assert_eq!(x.len(), y.len() * 32);
        match simd::isa() {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: isa() never reports more than the CPU has.
            Isa::Avx512 | Isa::Avx2 => unsafe { crate::simd::x86::q4::quantize_q4_1_avx2(x, y) },
            _ => quantize_scalar(x, y),
        }
    }
    fn dequantize_row(x: &[Self], y: &mut [f32]) {
        debug_assert_eq!(x.len() * 32, y.len());
        match simd::isa() {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: isa() never reports more than the CPU has.
            Isa::Avx512 => unsafe { crate::simd::x86::q4::dequantize_q4_1_avx512(x, y) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above.
            Isa::Avx2 => unsafe { crate::simd::x86::q4::dequantize_q4_1_avx2(x, y) },
            _ => dequantize_scalar(x, y),
        }
    }
    #[inline]
    fn vec_dot(x: &[Self], y: &[Self::Dot]) -> f32 {
        debug_assert_eq!(x.len(), y.len());
        // Fast path without any call before the kernel (a tail call, no stack frame): rows
        // are often 4 blocks, where the per-call glue is a noticeable share of the time.
        #[cfg(target_arch = "x86_64")]
        {
            use crate::simd::x86::q4::{dot_kernel_fast, DotKernel};
            match dot_kernel_fast() {
                // SAFETY: dot_kernel_fast only reports kernels the CPU can run.
                Some(DotKernel::Vnni) => {
                    return unsafe { crate::simd::x86::q4::vec_dot_q4_1_vnni(x, y) }
                }
                // SAFETY: as above.
                Some(DotKernel::Avx2) => {
                    return unsafe { crate::simd::x86::q4::vec_dot_q4_1_avx2(x, y) }
                }
                None => {}
            }
        }
        vec_dot_dispatch(x, y)
    }
}
