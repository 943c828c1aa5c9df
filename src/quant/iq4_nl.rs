//! GGML_TYPE_IQ4_NL: 4-bit indices into a fixed non-linear table, f16 scale.
//!
//! Upstream quirk (reproduced where it is deterministic): `quantize_row_iq4_nl_impl` leaves
//! the index buffer `L` untouched for a block whose largest magnitude is below
//! `GROUP_MAX_EPS` (1e-15) and still packs it into `qs` (with `d = 0`). `L` lives in the
//! caller's frame for the whole row, so such a block repeats the indices of the previous
//! block of the row; before any regular block upstream packs uninitialised stack bytes
//! (they differ between two calls with the same input). We start each row with `L = 0`,
//! i.e. `qs = 0` there. The dequantized values are 0 either way (`d = 0`).
use super::fp16::{f16le_to_f32, f32_to_f16le};
use super::q4_0::{amax_max, hsum8, lanes_i8};
use super::{BlockFormat, BlockQ8_0};
use crate::simd::{self, Isa};
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

/// ggml's `kvalues_iq4nl` (ggml-common.h).
pub const KVALUES: [i8; 16] = [
    -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
];

/// `GROUP_MAX_EPS` (ggml-quants.c).
pub(crate) const GROUP_MAX_EPS: f32 = 1e-15;

/// Matches `best_index_int8(16, kvalues_iq4nl, x)` (ggml-quants.c), NaN included (-> 15).
#[inline(always)]
pub(crate) fn best_index(x: f32) -> u8 {
    if x <= KVALUES[0] as f32 {
        return 0;
    }
    if x >= KVALUES[15] as f32 {
        return 15;
    }
    let (mut ml, mut mu) = (0usize, 15usize);
    while mu - ml > 1 {
        let mav = (ml + mu) / 2;
        if x < KVALUES[mav] as f32 {
            mu = mav;
        } else {
            ml = mav;
        }
    }
    if x - (KVALUES[mu - 1] as f32) < KVALUES[mu] as f32 - x {
        (mu - 1) as u8
    } else {
        mu as u8
    }
}

/// One block of `quantize_row_iq4_nl_impl(QK4_NL, 32, …, quant_weights = NULL, ntry = -1)`
/// as gcc compiles it: `weight = x*x`, `sumqx = fma(x, q*w, sumqx)`,
/// `sumq2 = fma(q, q*w, sumq2)`. Updates `l` only for a regular block; returns `d`.
#[inline(always)]
pub(crate) fn quantize_block(xb: &[f32], l: &mut [u8; 32]) -> f32 {
    let (amax, max) = amax_max(xb);
    if amax < GROUP_MAX_EPS {
        return 0.0;
    }
    let d = max / KVALUES[0] as f32;
    let id = 1.0 / d;
    let (mut sumqx, mut sumq2) = (0f32, 0f32);
    for j in 0..32 {
        let x = xb[j];
        let li = best_index(id * x);
        l[j] = li;
        let q = KVALUES[li as usize] as f32;
        let qw = q * (x * x);
        sumqx = x.mul_add(qw, sumqx);
        sumq2 = q.mul_add(qw, sumq2);
    }
    if sumq2 > 0.0 {
        sumqx / sumq2
    } else {
        0.0
    }
}

/// Matches `quantize_row_iq4_nl_ref` (ggml-quants.c), which the CPU's `quantize_row_iq4_nl` calls.
fn quantize_scalar(x: &[f32], y: &mut [BlockIq4Nl]) {
    let mut l = [0u8; 32];
    for (xb, yb) in x.chunks_exact(32).zip(y.iter_mut()) {
        let d = quantize_block(xb, &mut l);
        yb.d = f32_to_f16le(d);
        for j in 0..16 {
            yb.qs[j] = l[j] | (l[j + 16] << 4);
        }
    }
}

/// Matches `dequantize_row_iq4_nl` (ggml-quants.c).
fn dequantize_scalar(x: &[BlockIq4Nl], y: &mut [f32]) {
    for (xb, yb) in x.iter().zip(y.chunks_exact_mut(32)) {
        let d = f16le_to_f32(xb.d);
        for j in 0..16 {
            yb[j] = d * KVALUES[(xb.qs[j] & 0x0f) as usize] as f32;
            yb[j + 16] = d * KVALUES[(xb.qs[j] >> 4) as usize] as f32;
        }
    }
}

/// Matches the `__AVX2__` path of `ggml_vec_dot_iq4_nl_q8_0` (arch/x86/quants.c): blocks in
/// pairs into two accumulators (`fma(dy*dx, lane, acc)`), `hsum_float_8(acc1 + acc2)`, then
/// an odd last block as `sumf += d * (float)sumi` (not contracted by gcc there).
#[inline(never)] // keeps the SIMD dispatch in `vec_dot` free of its frame
fn vec_dot_scalar(x: &[BlockIq4Nl], y: &[BlockQ8_0]) -> f32 {
    let mut acc = [[0f32; 8]; 2];
    let pairs = x.len() / 2;
    for (ib, (bx, by)) in x.iter().zip(y).take(2 * pairs).enumerate() {
        let d = f16le_to_f32(by.d) * f16le_to_f32(bx.d);
        let mut q = [0i8; 32];
        for j in 0..16 {
            q[j] = KVALUES[(bx.qs[j] & 0x0f) as usize];
            q[j + 16] = KVALUES[(bx.qs[j] >> 4) as usize];
        }
        let s = lanes_i8(&q, &by.qs);
        let a = &mut acc[ib & 1];
        for k in 0..8 {
            a[k] = d.mul_add(s[k] as f32, a[k]);
        }
    }
    let mut sumf = hsum8(std::array::from_fn(|k| acc[0][k] + acc[1][k]));
    for (bx, by) in x.iter().zip(y).skip(2 * pairs) {
        sumf += tail_block(bx, by);
    }
    sumf
}

/// `sumf + d * (sumi1 + sumi2)`: ggml's scalar tail loop for the last (odd) block. Out of
/// line and taking `sumf`, so the SIMD kernels end with a tail call and need no stack frame.
#[inline(never)]
pub(crate) fn tail_add(sumf: f32, bx: &BlockIq4Nl, by: &BlockQ8_0) -> f32 {
    sumf + tail_block(bx, by)
}

/// `d * (sumi1 + sumi2)` of ggml's scalar tail loop for one block.
#[inline]
pub(crate) fn tail_block(bx: &BlockIq4Nl, by: &BlockQ8_0) -> f32 {
    let d = f16le_to_f32(by.d) * f16le_to_f32(bx.d);
    let mut sumi = 0i32;
    for j in 0..16 {
        sumi += by.qs[j] as i32 * KVALUES[(bx.qs[j] & 0x0f) as usize] as i32;
        sumi += by.qs[j + 16] as i32 * KVALUES[(bx.qs[j] >> 4) as usize] as i32;
    }
    d * sumi as f32
}

/// The full ISA dispatch of `vec_dot` (forced ISAs, first call).
#[inline(never)]
fn vec_dot_dispatch(x: &[BlockIq4Nl], y: &[<BlockIq4Nl as BlockFormat>::Dot]) -> f32 {
    match simd::isa() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: isa() never reports more than the CPU has.
        Isa::Avx512 => unsafe { crate::simd::x86::q4::vec_dot_iq4_nl_avx512(x, y) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        Isa::Avx2 => unsafe { crate::simd::x86::q4::vec_dot_iq4_nl_avx2(x, y) },
        _ => vec_dot_scalar(x, y),
    }
}

// SAFETY: repr(C), byte arrays only (alignment 1, no padding, all bit patterns valid).
unsafe impl BlockFormat for BlockIq4Nl {
    const TYPE: GgmlType = GgmlType::IQ4_NL;
    const QK: usize = 32;
    type Dot = super::BlockQ8_0;

    /// The CPU backend's `quantize_row_iq4_nl` calls `quantize_row_iq4_nl_ref`.
    fn quantize_row(x: &[f32], y: &mut [Self]) {
        Self::quantize_row_ref(x, y)
    }
    fn quantize_row_ref(x: &[f32], y: &mut [Self]) {
        debug_assert_eq!(x.len(), y.len() * 32);
        match simd::isa() {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: isa() never reports more than the CPU has.
            Isa::Avx512 | Isa::Avx2 => unsafe { crate::simd::x86::q4::quantize_iq4_nl_avx2(x, y) },
            _ => quantize_scalar(x, y),
        }
    }
    fn dequantize_row(x: &[Self], y: &mut [f32]) {
        debug_assert_eq!(x.len() * 32, y.len());
        match simd::isa() {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: isa() never reports more than the CPU has.
            Isa::Avx512 => unsafe { crate::simd::x86::q4::dequantize_iq4_nl_avx512(x, y) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above.
            Isa::Avx2 => unsafe { crate::simd::x86::q4::dequantize_iq4_nl_avx2(x, y) },
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
                    return unsafe { crate::simd::x86::q4::vec_dot_iq4_nl_vnni(x, y) }
                }
                // SAFETY: as above.
                Some(DotKernel::Avx2) => {
                    return unsafe { crate::simd::x86::q4::vec_dot_iq4_nl_avx2(x, y) }
                }
                None => {}
            }
        }
        vec_dot_dispatch(x, y)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn best_index_is_nearest() {
        assert_eq!(best_index(f32::NAN), 15);
        assert_eq!(best_index(-1000.0), 0);
        assert_eq!(best_index(1000.0), 15);
        for i in -1300..1300 {
            let x = i as f32 * 0.1;
            let b = best_index(x) as usize;
            let best = KVALUES
                .iter()
                .map(|&v| (v as f32 - x).abs())
                .fold(f32::INFINITY, f32::min);
            assert_eq!((KVALUES[b] as f32 - x).abs(), best, "x={x}");
        }
    }
}
