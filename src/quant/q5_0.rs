//! GGML_TYPE_Q5_0: 5-bit quants with an f16 scale, zero point 16.
use super::fp16::{f16le_to_f32, f32_to_f16le};
use super::q4_0::{amax_max, cvtt_i32, hsum8, lanes_i8, nibbles};
use super::{BlockFormat, BlockQ8_0};
use crate::simd::{self, Isa};
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

/// The 32 unsigned 5-bit values of a block (element order).
#[inline(always)]
pub(crate) fn values5(qs: &[u8; 16], qh: [u8; 4]) -> [u8; 32] {
    let h = u32::from_le_bytes(qh);
    let mut q = nibbles(qs);
    for (j, v) in q.iter_mut().enumerate() {
        *v |= (((h >> j) & 1) as u8) << 4;
    }
    q
}

/// Matches `quantize_row_q5_0_ref` (ggml-quants.c) as compiled for the CPU backend: gcc
/// contracts `x*id + 16.5f` into one FMA and converts with `vcvttps2dq` + low byte.
fn quantize_scalar(x: &[f32], y: &mut [BlockQ5_0]) {
    for (xb, yb) in x.chunks_exact(32).zip(y.iter_mut()) {
        let (_, max) = amax_max(xb);
        let d = max / -16.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        yb.d = f32_to_f16le(d);
        let mut qh = 0u32;
        for j in 0..16 {
            let xi0 = (cvtt_i32(xb[j].mul_add(id, 16.5)) as i8).min(31) as u8;
            let xi1 = (cvtt_i32(xb[j + 16].mul_add(id, 16.5)) as i8).min(31) as u8;
            yb.qs[j] = (xi0 & 0x0f) | ((xi1 & 0x0f) << 4);
            qh |= (((xi0 & 0x10) >> 4) as u32) << j;
            qh |= (((xi1 & 0x10) >> 4) as u32) << (j + 16);
        }
        yb.qh = qh.to_le_bytes();
    }
}

/// Matches `dequantize_row_q5_0` (ggml-quants.c).
fn dequantize_scalar(x: &[BlockQ5_0], y: &mut [f32]) {
    for (xb, yb) in x.iter().zip(y.chunks_exact_mut(32)) {
        let d = f16le_to_f32(xb.d);
        for (o, q) in yb.iter_mut().zip(values5(&xb.qs, xb.qh)) {
            *o = (q as i32 - 16) as f32 * d;
        }
    }
}

/// Matches the `__AVX2__` path of `ggml_vec_dot_q5_0_q8_0` (see `q4_0`'s vec_dot).
#[inline(never)] // keeps the SIMD dispatch in `vec_dot` free of its frame
fn vec_dot_scalar(x: &[BlockQ5_0], y: &[BlockQ8_0]) -> f32 {
    let mut acc = [0f32; 8];
    for (bx, by) in x.iter().zip(y) {
        let d = f16le_to_f32(bx.d) * f16le_to_f32(by.d);
        let q = values5(&bx.qs, bx.qh).map(|v| v as i8 - 16);
        let s = lanes_i8(&q, &by.qs);
        for k in 0..8 {
            acc[k] = d.mul_add(s[k] as f32, acc[k]);
        }
    }
    hsum8(acc)
}

/// The full ISA dispatch of `vec_dot` (forced ISAs, first call).
#[inline(never)]
fn vec_dot_dispatch(x: &[BlockQ5_0], y: &[<BlockQ5_0 as BlockFormat>::Dot]) -> f32 {
    match simd::isa() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: isa() never reports more than the CPU has.
        Isa::Avx512 => unsafe { crate::simd::x86::q4::vec_dot_q5_0_avx512(x, y) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        Isa::Avx2 => unsafe { crate::simd::x86::q4::vec_dot_q5_0_avx2(x, y) },
        _ => vec_dot_scalar(x, y),
    }
}

// SAFETY: repr(C), byte arrays only (alignment 1, no padding, all bit patterns valid).
unsafe impl BlockFormat for BlockQ5_0 {
    const TYPE: GgmlType = GgmlType::Q5_0;
    const QK: usize = 32;
    type Dot = super::BlockQ8_0;

    /// The CPU backend's `quantize_row_q5_0` calls `quantize_row_q5_0_ref`.
    fn quantize_row(x: &[f32], y: &mut [Self]) {
        Self::quantize_row_ref(x, y)
    }
    fn quantize_row_ref(x: &[f32], y: &mut [Self]) {
        debug_assert_eq!(x.len(), y.len() * 32);
        match simd::isa() {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: isa() never reports more than the CPU has.
            Isa::Avx512 | Isa::Avx2 => unsafe { crate::simd::x86::q4::quantize_q5_0_avx2(x, y) },
            _ => quantize_scalar(x, y),
        }
    }
    fn dequantize_row(x: &[Self], y: &mut [f32]) {
        debug_assert_eq!(x.len() * 32, y.len());
        match simd::isa() {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: isa() never reports more than the CPU has.
            Isa::Avx512 => unsafe { crate::simd::x86::q4::dequantize_q5_0_avx512(x, y) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above.
            Isa::Avx2 => unsafe { crate::simd::x86::q4::dequantize_q5_0_avx2(x, y) },
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
                    return unsafe { crate::simd::x86::q4::vec_dot_q5_0_vnni(x, y) }
                }
                // SAFETY: as above.
                Some(DotKernel::Avx2) => {
                    return unsafe { crate::simd::x86::q4::vec_dot_q5_0_avx2(x, y) }
                }
                None => {}
            }
        }
        vec_dot_dispatch(x, y)
    }
}
