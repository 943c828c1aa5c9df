//! GGML_TYPE_Q8_0: 32 int8 quants and an f16 scale.
//!
//! Two quantizers exist upstream and they differ on x86 (DESIGN.md):
//! * the CPU backend's `quantize_row_q8_0` (ggml-cpu/arch/x86/quants.c, AVX2 path, used on
//!   this machine): `d = amax/127`, `id = 127/amax`, round half to even, saturating packs,
//!   `d` stored with `GGML_CPU_FP32_TO_FP16`, which on x86 is ggml-base's software conversion
//!   (NaN -> `0x7E00 | sign`; simd-mappings.h maps only the `_COMPUTE_` macro to F16C);
//! * `quantize_row_q8_0_ref` (ggml-quants.c): `d = amax/127`, `id = 1/d`, `roundf` (half away
//!   from zero), C float->int8 conversion, `d` stored with ggml-base's fp16 conversion.
//!
//! Both are reproduced bit for bit, NaN/Inf/subnormal blocks included (see `cpu_block` and
//! `ref_block`); the SIMD kernels take a fast path for NaN-free blocks and fall back to these
//! scalar functions for blocks containing a NaN (whose result depends on the max order).
use super::fp16::{f16_to_f32, f32_to_f16};
use super::BlockFormat;
use crate::simd::{self, Isa};
use crate::types::GgmlType;

/// Mirrors ggml's `block_q8_0`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockQ8_0 {
    /// scale (f16 bits, little-endian)
    pub d: [u8; 2],
    /// quants
    pub qs: [i8; 32],
}

/// `_mm_max_ps(a, b)` on one lane: `a > b ? a : b` (the second operand if either is NaN).
#[inline(always)]
fn maxps(a: f32, b: f32) -> f32 {
    if a > b {
        a
    } else {
        b
    }
}

/// `_mm256_cvtps_epi32` on one (already integral) lane: NaN and out-of-range give `i32::MIN`.
#[inline(always)]
pub(crate) fn cvtps_epi32(v: f32) -> i32 {
    if (-2147483648.0..2147483648.0).contains(&v) {
        v as i32
    } else {
        i32::MIN
    }
}

/// C's `(int8_t)` of a float as gcc compiles it on x86 (`cvttss2si` then the low byte):
/// NaN and out-of-range give `i32::MIN`, whose low byte is 0.
#[inline(always)]
pub(crate) fn c_f32_to_i8(v: f32) -> i8 {
    cvtps_epi32(v.trunc()) as i8
}

/// The block maximum of `|x|` exactly as the x86 CPU path computes it (NaN order included):
/// 8 lanes `max(max(max(|x[l]|, |x[8+l]|), |x[16+l]|), |x[24+l]|)`, then high half vs low
/// half, then lanes 0,1 vs 2,3, then lane 0 vs lane 1.
#[inline]
pub(crate) fn amax_cpu(x: &[f32]) -> f32 {
    let mut m = [0f32; 8];
    for (l, o) in m.iter_mut().enumerate() {
        let mut v = x[l].abs();
        v = maxps(v, x[8 + l].abs());
        v = maxps(v, x[16 + l].abs());
        v = maxps(v, x[24 + l].abs());
        *o = v;
    }
    let q = [
        maxps(m[4], m[0]),
        maxps(m[5], m[1]),
        maxps(m[6], m[2]),
        maxps(m[7], m[3]),
    ];
    maxps(maxps(q[0], q[2]), maxps(q[1], q[3]))
}

/// One block as the x86 CPU backend's `quantize_row_q8_0` / `quantize_row_q8_1` compute it
/// (AVX2 path): returns `(d, qs, sum)` where `d = amax/127` (stored with [`f32_to_f16`]) and `sum`
/// is the wrapping sum of the 32 int32 lanes before the saturating packs (q8_1's `s`).
pub(crate) fn cpu_block(x: &[f32]) -> (f32, [i8; 32], i32) {
    let amax = amax_cpu(x);
    let d = amax / 127.0;
    let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
    let mut qs = [0i8; 32];
    let mut sum = 0i32;
    for (q, v) in qs.iter_mut().zip(x) {
        let i = cvtps_epi32((v * id).round_ties_even());
        sum = sum.wrapping_add(i);
        *q = i.clamp(-128, 127) as i8;
    }
    (d, qs, sum)
}

/// One block as `quantize_row_q8_0_ref` / `quantize_row_q8_1_ref` compute it: returns
/// `(d, qs)` with `amax` a sequential `MAX(amax, fabsf(v))`, `id = d ? 1/d : 0`,
/// `qs = (int8_t)roundf(x*id)`.
pub(crate) fn ref_block(x: &[f32]) -> (f32, [i8; 32]) {
    let mut amax = 0f32;
    for v in &x[..32] {
        amax = maxps(amax, v.abs());
    }
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let mut qs = [0i8; 32];
    for (q, v) in qs.iter_mut().zip(x) {
        *q = c_f32_to_i8((v * id).round());
    }
    (d, qs)
}

/// The x86 CPU `ggml_vec_dot_q8_0_q8_0` (AVX2 + AVX512-VNNI build) on one block pair: the
/// 8 int32 lanes of `dpbusd(|x|, sign(y, x))` (4 bytes each; `sign` negates with wrap-around,
/// so `y = -128` against a negative `x` contributes `+|x|*-128`, as upstream).
#[inline]
pub(crate) fn dot_lanes(x: &[i8; 32], y: &[i8; 32]) -> [i32; 8] {
    let mut lanes = [0i32; 8];
    for (k, o) in lanes.iter_mut().enumerate() {
        let mut s = 0i32;
        for j in 4 * k..4 * k + 4 {
            let ax = x[j].unsigned_abs() as i32;
            let sy = match x[j] {
                v if v < 0 => y[j].wrapping_neg(),
                0 => 0,
                _ => y[j],
            };
            s += ax * sy as i32;
        }
        *o = s;
    }
    lanes
}

/// `hsum_float_8` (x86 quants.c): `u[k] = v[4+k] + v[k]`, then `(u0+u2) + (u1+u3)`.
#[inline]
pub(crate) fn hsum_float_8(v: &[f32; 8]) -> f32 {
    let u = [v[4] + v[0], v[5] + v[1], v[6] + v[2], v[7] + v[3]];
    (u[0] + u[2]) + (u[1] + u[3])
}

fn quantize_scalar(x: &[f32], y: &mut [BlockQ8_0]) {
    for (b, xb) in y.iter_mut().zip(x.chunks_exact(32)) {
        let (d, qs, _) = cpu_block(xb);
        b.d = f32_to_f16(d).to_le_bytes();
        b.qs = qs;
    }
}

fn quantize_ref_scalar(x: &[f32], y: &mut [BlockQ8_0]) {
    for (b, xb) in y.iter_mut().zip(x.chunks_exact(32)) {
        let (d, qs) = ref_block(xb);
        b.d = f32_to_f16(d).to_le_bytes();
        b.qs = qs;
    }
}

fn dequantize_scalar(x: &[BlockQ8_0], y: &mut [f32]) {
    for (b, yb) in x.iter().zip(y.chunks_exact_mut(32)) {
        let d = f16_to_f32(u16::from_le_bytes(b.d));
        for (o, q) in yb.iter_mut().zip(&b.qs) {
            *o = *q as f32 * d;
        }
    }
}

fn dot_scalar(x: &[BlockQ8_0], y: &[BlockQ8_0]) -> f32 {
    let mut acc = [0f32; 8];
    for (bx, by) in x.iter().zip(y) {
        let d = f16_to_f32(u16::from_le_bytes(bx.d)) * f16_to_f32(u16::from_le_bytes(by.d));
        let lanes = dot_lanes(&bx.qs, &by.qs);
        for (a, l) in acc.iter_mut().zip(lanes) {
            *a = d.mul_add(l as f32, *a);
        }
    }
    hsum_float_8(&acc)
}

// SAFETY: repr(C), byte arrays only (alignment 1, no padding, all bit patterns valid).
unsafe impl BlockFormat for BlockQ8_0 {
    const TYPE: GgmlType = GgmlType::Q8_0;
    const QK: usize = 32;
    type Dot = super::BlockQ8_0;

    /// Matches the x86 `quantize_row_q8_0` (ggml-cpu/arch/x86/quants.c, AVX2 path).
    #[inline]
    fn quantize_row(x: &[f32], y: &mut [Self]) {
        let nb = y.len().min(x.len() / 32);
        #[cfg(target_arch = "x86_64")]
        {
            use crate::simd::x86::q8 as k;
            let (px, py) = (x.as_ptr(), y.as_mut_ptr() as *mut u8);
            match simd::isa_fast() {
                // SAFETY: isa_fast() <= detected(); x has nb*32 floats, y nb blocks.
                Some(Isa::Avx512) => return unsafe { k::quantize_q8_avx512::<false>(px, py, nb) },
                // SAFETY: as above.
                Some(Isa::Avx2) => return unsafe { k::quantize_q8_avx2::<false>(px, py, nb) },
                _ => {}
            }
        }
        quantize_dispatch(x, y)
    }
    /// Matches `quantize_row_q8_0_ref` (ggml-quants.c).
    fn quantize_row_ref(x: &[f32], y: &mut [Self]) {
        let nb = y.len().min(x.len() / 32);
        let (x, y) = (&x[..nb * 32], &mut y[..nb]);
        #[cfg(target_arch = "x86_64")]
        {
            use crate::simd::x86::q8 as k;
            let (px, py) = (x.as_ptr(), y.as_mut_ptr() as *mut u8);
            match simd::isa() {
                // SAFETY: as above.
                Isa::Avx512 => return unsafe { k::quantize_q8_ref_avx512::<false>(px, py, nb) },
                Isa::Avx2 => return unsafe { k::quantize_q8_ref_avx2::<false>(px, py, nb) },
                Isa::Scalar => {}
            }
        }
        quantize_ref_scalar(x, y)
    }
    /// Matches `dequantize_row_q8_0` (ggml-quants.c).
    #[inline]
    fn dequantize_row(x: &[Self], y: &mut [f32]) {
        let nb = x.len().min(y.len() / 32);
        #[cfg(target_arch = "x86_64")]
        {
            use crate::simd::x86::q8 as k;
            let (px, py) = (x.as_ptr() as *const u8, y.as_mut_ptr());
            match simd::isa_fast() {
                // SAFETY: x has nb blocks, y nb*32 floats.
                Some(Isa::Avx512) => {
                    return unsafe { k::dequantize_q8_avx512::<34, 2>(px, py, nb) }
                }
                // SAFETY: as above.
                Some(Isa::Avx2) => return unsafe { k::dequantize_q8_avx2::<34, 2>(px, py, nb) },
                _ => {}
            }
        }
        dequantize_dispatch(x, y)
    }
    /// Matches the x86 `ggml_vec_dot_q8_0_q8_0` as built here (AVX2 + AVX512-VNNI): per
    /// block `acc = fma(dx*dy, float(dpbusd lanes), acc)` on 8 lanes, then `hsum_float_8`.
    ///
    /// Rows are often 4 blocks, so the usual case reaches the kernel with a tail call and no
    /// stack frame; anything else (forced ISA, scalar, first call) goes through
    /// `vec_dot_dispatch`.
    #[inline]
    fn vec_dot(x: &[Self], y: &[Self]) -> f32 {
        #[cfg(target_arch = "x86_64")]
        {
            use crate::simd::x86::q8 as k;
            let nb = x.len().min(y.len());
            let (px, py) = (x.as_ptr() as *const u8, y.as_ptr() as *const u8);
            match k::dot_q8_0_fast() {
                // SAFETY: dot_q8_0_fast only reports kernels the CPU can run; nb blocks each.
                Some(true) => return unsafe { k::dot_q8_0_vnni(px, py, nb) },
                // SAFETY: as above.
                Some(false) => return unsafe { k::dot_q8_0_avx2(px, py, nb) },
                None => {}
            }
        }
        vec_dot_dispatch(x, y)
    }
}

/// The full ISA dispatch of `quantize_row` (forced ISAs, scalar).
#[cold]
#[inline(never)]
fn quantize_dispatch(x: &[f32], y: &mut [BlockQ8_0]) {
    let nb = y.len().min(x.len() / 32);
    let (x, y) = (&x[..nb * 32], &mut y[..nb]);
    #[cfg(target_arch = "x86_64")]
    {
        use crate::simd::x86::q8 as k;
        let (px, py) = (x.as_ptr(), y.as_mut_ptr() as *mut u8);
        match simd::isa() {
            // SAFETY: isa() <= detected(); x has nb*32 floats, y nb blocks.
            Isa::Avx512 => return unsafe { k::quantize_q8_avx512::<false>(px, py, nb) },
            // SAFETY: as above.
            Isa::Avx2 => return unsafe { k::quantize_q8_avx2::<false>(px, py, nb) },
            Isa::Scalar => {}
        }
    }
    quantize_scalar(x, y)
}

/// The full ISA dispatch of `dequantize_row` (forced ISAs, scalar).
#[cold]
#[inline(never)]
fn dequantize_dispatch(x: &[BlockQ8_0], y: &mut [f32]) {
    let nb = x.len().min(y.len() / 32);
    #[cfg(target_arch = "x86_64")]
    {
        use crate::simd::x86::q8 as k;
        let (px, py) = (x.as_ptr() as *const u8, y.as_mut_ptr());
        match simd::isa() {
            // SAFETY: x has nb blocks, y nb*32 floats.
            Isa::Avx512 => return unsafe { k::dequantize_q8_avx512::<34, 2>(px, py, nb) },
            // SAFETY: as above.
            Isa::Avx2 => return unsafe { k::dequantize_q8_avx2::<34, 2>(px, py, nb) },
            Isa::Scalar => {}
        }
    }
    dequantize_scalar(&x[..nb], &mut y[..nb * 32])
}

/// The full ISA dispatch of `vec_dot` (forced ISAs, scalar, first call).
#[cold]
#[inline(never)]
fn vec_dot_dispatch(x: &[BlockQ8_0], y: &[BlockQ8_0]) -> f32 {
    let nb = x.len().min(y.len());
    #[cfg(target_arch = "x86_64")]
    {
        use crate::simd::x86::q8 as k;
        let (px, py) = (x.as_ptr() as *const u8, y.as_ptr() as *const u8);
        match simd::isa() {
            // SAFETY: both hold nb blocks; isa() <= detected().
            Isa::Avx512 => return unsafe { k::dot_q8_0_avx512(px, py, nb) },
            // SAFETY: as above.
            Isa::Avx2 => return unsafe { k::dot_q8_0_avx2(px, py, nb) },
            Isa::Scalar => {}
        }
    }
    dot_scalar(&x[..nb], &y[..nb])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn c_conversion_like_gcc() {
        assert_eq!(c_f32_to_i8(f32::NAN), 0);
        assert_eq!(c_f32_to_i8(f32::INFINITY), 0);
        assert_eq!(c_f32_to_i8(130.0), -126);
        assert_eq!(c_f32_to_i8(-127.0), -127);
        assert_eq!(cvtps_epi32(f32::NAN), i32::MIN);
        assert_eq!(cvtps_epi32(3e9), i32::MIN);
    }

    fn blocks(seed: u32, nb: usize, with_min: bool) -> Vec<BlockQ8_0> {
        let mut s = seed;
        let mut next = move || {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            s
        };
        (0..nb)
            .map(|_| {
                let mut qs = [0i8; 32];
                for q in &mut qs {
                    *q = next() as i8;
                    if with_min && next() % 5 == 0 {
                        *q = -128;
                    }
                }
                let d = f32_to_f16((next() >> 9) as f32 * 1e-9);
                BlockQ8_0 {
                    d: d.to_le_bytes(),
                    qs,
                }
            })
            .collect()
    }

    /// SIMD dot products give the scalar bits, -128 quants (sign wrap-around) included.
    #[test]
    fn dot_variants_agree() {
        for nb in [0usize, 1, 2, 3, 4, 7, 32, 33] {
            for with_min in [false, true] {
                let x = blocks(0x1357 + nb as u32, nb, with_min);
                let y = blocks(0x2468 + nb as u32, nb, with_min);
                let want = dot_scalar(&x, &y);
                for isa in simd::available() {
                    let got = simd::with_isa(isa, || BlockQ8_0::vec_dot(&x, &y)).unwrap();
                    assert_eq!(
                        got.to_bits(),
                        want.to_bits(),
                        "nb={nb} min={with_min} {isa:?}"
                    );
                }
            }
        }
    }

    /// SIMD quantizers agree with the scalar ones on every block length, NaN blocks included.
    #[test]
    fn quantize_variants_agree() {
        let mut s = 0xdead_beefu32;
        let mut x: Vec<f32> = (0..32 * 64)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s as i32 as f32) * 1e-9
            })
            .collect();
        x[5] = f32::NAN;
        x[32 + 31] = f32::NAN;
        x[64 + 8] = f32::INFINITY;
        x[96..128].fill(0.0);
        x[128 + 3] = f32::from_bits(0xffc1_2345);
        for v in &mut x[160..192] {
            *v *= 1e-35;
        }
        let nb = x.len() / 32;
        let mut want = vec![
            BlockQ8_0 {
                d: [0; 2],
                qs: [0; 32]
            };
            nb
        ];
        let mut want_ref = want.clone();
        let mut want_deq = vec![0f32; x.len()];
        quantize_scalar(&x, &mut want);
        quantize_ref_scalar(&x, &mut want_ref);
        dequantize_scalar(&want, &mut want_deq);
        for isa in simd::available() {
            simd::with_isa(isa, || {
                let mut got = want.clone();
                got.iter_mut().for_each(|b| b.qs[0] = 99);
                let mut got_ref = got.clone();
                BlockQ8_0::quantize_row(&x, &mut got);
                BlockQ8_0::quantize_row_ref(&x, &mut got_ref);
                assert_eq!(got, want, "{isa:?}");
                assert_eq!(got_ref, want_ref, "{isa:?} ref");
                let mut deq = vec![0f32; x.len()];
                BlockQ8_0::dequantize_row(&want, &mut deq);
                assert!(
                    deq.iter()
                        .zip(&want_deq)
                        .all(|(a, b)| a.to_bits() == b.to_bits()),
                    "{isa:?} deq"
                );
            })
            .unwrap();
        }
    }
}
