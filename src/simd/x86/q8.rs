//! x86 kernels for q8_0 / q8_1 (quantize, dequantize, q8_0 dot product).
//!
//! Blocks are addressed as raw bytes: q8_0 = `d` (2 bytes) + 32 quants (stride 34);
//! q8_1 = `d` + `s` (2 bytes each) + 32 quants (stride 36). `Q81` selects the layout and
//! whether `s` is written. Contracts: `x` holds `nb * 32` floats, `y` `nb` blocks, the CPU has
//! the `#[target_feature]` features. Semantics are those of the scalar functions in
//! `crate::quant::q8_0` (the kernels fall back to them for blocks containing a NaN, whose
//! result depends on the order of the max reduction).
use core::arch::x86_64::*;

use crate::quant::fp16::f32_to_f16;
use crate::quant::q8_0::{cpu_block, ref_block};
use std::sync::atomic::{AtomicU8, Ordering};

#[inline(always)]
const fn layout(q81: bool) -> (usize, usize) {
    if q81 {
        (36, 4)
    } else {
        (34, 2)
    }
}

/// Store a block computed by the scalar fallback.
#[inline(always)]
unsafe fn store_scalar(y: *mut u8, qoff: usize, d: u16, s: Option<u16>, qs: &[i8; 32]) {
    unsafe {
        (y as *mut [u8; 2]).write_unaligned(d.to_le_bytes());
        if let Some(s) = s {
            (y.add(2) as *mut [u8; 2]).write_unaligned(s.to_le_bytes());
        }
        core::ptr::copy_nonoverlapping(qs.as_ptr() as *const u8, y.add(qoff), 32);
    }
}

/// f32 -> f16 of a block scale the way the x86 CPU quantizers store it: `GGML_CPU_FP32_TO_FP16`,
/// which on x86 is ggml-impl.h's `GGML_COMPUTE_FP32_TO_FP16` (simd-mappings.h defines only
/// the `_COMPUTE_` variant for F16C), i.e. [`f32_to_f16`]. F16C's `vcvtps2ph` rounds every
/// non-NaN the same way, so it is used here; a NaN becomes `0x7E00 | sign` as in ggml
/// (F16C would keep the payload's top bits).
#[inline]
#[target_feature(enable = "avx2,f16c")]
fn f16c1(v: f32) -> u16 {
    let h = _mm_extract_epi16::<0>(_mm_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm_set_ss(v))) as u16;
    if v.is_nan() {
        (h & 0x8000) | 0x7e00
    } else {
        h
    }
}

/// Wrapping horizontal sum of 8 int32 lanes.
#[inline]
#[target_feature(enable = "avx2")]
fn hsum_i32_8(a: __m256i) -> i32 {
    let s = _mm_add_epi32(_mm256_castsi256_si128(a), _mm256_extracti128_si256::<1>(a));
    let s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b10_11_00_01>(s));
    _mm_cvtsi128_si32(s)
}

// ---------------------------------------------------------------------------------------------
// CPU from_float (x86 `quantize_row_q8_0` / `quantize_row_q8_1`, AVX2 path)
// ---------------------------------------------------------------------------------------------

/// The x86 CPU quantizer, same instruction sequence as upstream's AVX2 path (so NaN blocks
/// need no fallback here).
#[inline]
#[target_feature(enable = "avx2,f16c")]
pub unsafe fn quantize_q8_avx2<const Q81: bool>(x: *const f32, y: *mut u8, nb: usize) {
    let (stride, qoff) = layout(Q81);
    let sign = _mm256_set1_ps(-0.0);
    let perm = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    for b in 0..nb {
        unsafe {
            let xp = x.add(32 * b);
            let yp = y.add(stride * b);
            let mut v0 = _mm256_loadu_ps(xp);
            let mut v1 = _mm256_loadu_ps(xp.add(8));
            let mut v2 = _mm256_loadu_ps(xp.add(16));
            let mut v3 = _mm256_loadu_ps(xp.add(24));
            let mut m = _mm256_andnot_ps(sign, v0);
            m = _mm256_max_ps(m, _mm256_andnot_ps(sign, v1));
            m = _mm256_max_ps(m, _mm256_andnot_ps(sign, v2));
            m = _mm256_max_ps(m, _mm256_andnot_ps(sign, v3));
            let mut m4 = _mm_max_ps(_mm256_extractf128_ps::<1>(m), _mm256_castps256_ps128(m));
            m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
            m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
            let amax = _mm_cvtss_f32(m4);
            let d = amax / 127.0;
            let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
            let mul = _mm256_set1_ps(id);
            v0 = _mm256_round_ps::<_MM_FROUND_TO_NEAREST_INT>(_mm256_mul_ps(v0, mul));
            v1 = _mm256_round_ps::<_MM_FROUND_TO_NEAREST_INT>(_mm256_mul_ps(v1, mul));
            v2 = _mm256_round_ps::<_MM_FROUND_TO_NEAREST_INT>(_mm256_mul_ps(v2, mul));
            v3 = _mm256_round_ps::<_MM_FROUND_TO_NEAREST_INT>(_mm256_mul_ps(v3, mul));
            let i0 = _mm256_cvtps_epi32(v0);
            let i1 = _mm256_cvtps_epi32(v1);
            let i2 = _mm256_cvtps_epi32(v2);
            let i3 = _mm256_cvtps_epi32(v3);
            (yp as *mut [u8; 2]).write_unaligned(f16c1(d).to_le_bytes());
            if Q81 {
                let sum = hsum_i32_8(_mm256_add_epi32(
                    _mm256_add_epi32(i0, i1),
                    _mm256_add_epi32(i2, i3),
                ));
                (yp.add(2) as *mut [u8; 2]).write_unaligned(f16c1(d * sum as f32).to_le_bytes());
            }
            let p = _mm256_packs_epi16(_mm256_packs_epi32(i0, i1), _mm256_packs_epi32(i2, i3));
            _mm256_storeu_si256(
                yp.add(qoff) as *mut __m256i,
                _mm256_permutevar8x32_epi32(p, perm),
            );
        }
    }
}

/// One block of the x86 CPU quantizer with 512-bit vectors: a NaN-free block takes any max
/// order (the max is then order-independent), a block with a NaN uses the scalar emulation of
/// upstream's order.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,f16c")]
unsafe fn quantize_q8_block512<const Q81: bool>(xp: *const f32, yp: *mut u8) {
    let (_, qoff) = layout(Q81);
    unsafe {
        let v0 = _mm512_loadu_ps(xp);
        let v1 = _mm512_loadu_ps(xp.add(16));
        let nan =
            _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(v0, v0) | _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(v1, v1);
        if nan != 0 {
            let (d, qs, sum) = cpu_block(core::slice::from_raw_parts(xp, 32));
            let s = if Q81 {
                Some(f32_to_f16(d * sum as f32))
            } else {
                None
            };
            store_scalar(yp, qoff, f32_to_f16(d), s, &qs);
            return;
        }
        let amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v0), _mm512_abs_ps(v1)));
        let d = amax / 127.0;
        let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
        let mul = _mm512_set1_ps(id);
        let i0 = _mm512_cvt_roundps_epi32::<RNE>(_mm512_mul_ps(v0, mul));
        let i1 = _mm512_cvt_roundps_epi32::<RNE>(_mm512_mul_ps(v1, mul));
        (yp as *mut [u8; 2]).write_unaligned(f16c1(d).to_le_bytes());
        if Q81 {
            let sum = _mm512_reduce_add_epi32(_mm512_add_epi32(i0, i1));
            (yp.add(2) as *mut [u8; 2]).write_unaligned(f16c1(d * sum as f32).to_le_bytes());
        }
        _mm_storeu_si128(yp.add(qoff) as *mut __m128i, _mm512_cvtsepi32_epi8(i0));
        _mm_storeu_si128(yp.add(qoff + 16) as *mut __m128i, _mm512_cvtsepi32_epi8(i1));
    }
}

const RNE: i32 = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;

/// The x86 CPU quantizer with 512-bit vectors, four blocks at a time when none holds a NaN:
/// the four maxima are reduced together (transposed), and `d = amax/127`, `id = 127/amax`
/// and the f16 scales are computed for the four blocks in one vector each (the same IEEE
/// operations as upstream's scalar ones, so the same bits).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,f16c")]
pub unsafe fn quantize_q8_avx512<const Q81: bool>(x: *const f32, y: *mut u8, nb: usize) {
    let (stride, qoff) = layout(Q81);
    let mut b = 0;
    while b + 4 <= nb {
        unsafe {
            let xp = x.add(32 * b);
            let yp = y.add(stride * b);
            let mut v = [_mm512_setzero_ps(); 8];
            let mut nan: __mmask16 = 0;
            for (k, vk) in v.iter_mut().enumerate() {
                *vk = _mm512_loadu_ps(xp.add(16 * k));
                nan |= _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(*vk, *vk);
            }
            if nan != 0 {
                for k in 0..4 {
                    quantize_q8_block512::<Q81>(xp.add(32 * k), yp.add(stride * k));
                }
                b += 4;
                continue;
            }
            let a: [__m512; 4] = core::array::from_fn(|k| {
                _mm512_max_ps(_mm512_abs_ps(v[2 * k]), _mm512_abs_ps(v[2 * k + 1]))
            });
            // [A 8 lanes | B 8 lanes], [C | D]
            let t01 = _mm512_max_ps(
                _mm512_shuffle_f32x4::<0b01_00_01_00>(a[0], a[1]),
                _mm512_shuffle_f32x4::<0b11_10_11_10>(a[0], a[1]),
            );
            let t23 = _mm512_max_ps(
                _mm512_shuffle_f32x4::<0b01_00_01_00>(a[2], a[3]),
                _mm512_shuffle_f32x4::<0b11_10_11_10>(a[2], a[3]),
            );
            // [A 4 | B 4 | C 4 | D 4]
            let mut u = _mm512_max_ps(
                _mm512_shuffle_f32x4::<0b10_00_10_00>(t01, t23),
                _mm512_shuffle_f32x4::<0b11_01_11_01>(t01, t23),
            );
            u = _mm512_max_ps(u, _mm512_permute_ps::<0b01_00_11_10>(u));
            u = _mm512_max_ps(u, _mm512_permute_ps::<0b10_11_00_01>(u));
            let amax = _mm512_castps512_ps128(_mm512_permutexvar_ps(
                _mm512_setr_epi32(0, 4, 8, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0),
                u,
            ));
            let c127 = _mm_set1_ps(127.0);
            let d = _mm_div_ps(amax, c127);
            let id = _mm_and_ps(
                _mm_div_ps(c127, amax),
                _mm_cmp_ps::<_CMP_NEQ_UQ>(amax, _mm_setzero_ps()),
            );
            let dh = _mm_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(d);
            let mut ids = [0f32; 4];
            _mm_storeu_ps(ids.as_mut_ptr(), id);
            let mut dbits = [0u16; 8];
            _mm_storeu_si128(dbits.as_mut_ptr() as *mut __m128i, dh);
            let mut sums = [0i32; 4];
            for k in 0..4 {
                let yk = yp.add(stride * k);
                let mul = _mm512_set1_ps(ids[k]);
                let i0 = _mm512_cvt_roundps_epi32::<RNE>(_mm512_mul_ps(v[2 * k], mul));
                let i1 = _mm512_cvt_roundps_epi32::<RNE>(_mm512_mul_ps(v[2 * k + 1], mul));
                (yk as *mut [u8; 2]).write_unaligned(dbits[k].to_le_bytes());
                if Q81 {
                    sums[k] = _mm512_reduce_add_epi32(_mm512_add_epi32(i0, i1));
                }
                _mm_storeu_si128(yk.add(qoff) as *mut __m128i, _mm512_cvtsepi32_epi8(i0));
                _mm_storeu_si128(yk.add(qoff + 16) as *mut __m128i, _mm512_cvtsepi32_epi8(i1));
            }
            if Q81 {
                let sf = _mm_mul_ps(
                    d,
                    _mm_cvtepi32_ps(_mm_loadu_si128(sums.as_ptr() as *const __m128i)),
                );
                let mut sbits = [0u16; 8];
                _mm_storeu_si128(
                    sbits.as_mut_ptr() as *mut __m128i,
                    _mm_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(sf),
                );
                for (k, bits) in sbits[..4].iter().enumerate() {
                    (yp.add(stride * k + 2) as *mut [u8; 2]).write_unaligned(bits.to_le_bytes());
                }
            }
        }
        b += 4;
    }
    while b < nb {
        unsafe { quantize_q8_block512::<Q81>(x.add(32 * b), y.add(stride * b)) };
        b += 1;
    }
}

// ---------------------------------------------------------------------------------------------
// from_float_ref (`quantize_row_q8_0_ref` / `quantize_row_q8_1_ref`)
// ---------------------------------------------------------------------------------------------

/// `roundf` (half away from zero) on 8 lanes: `t = trunc(v)`, `+copysign(1, v)` if
/// `|v - t| >= 0.5` (exact: `v - t` is exact for finite `v`).
#[inline]
#[target_feature(enable = "avx2")]
fn roundf8(v: __m256) -> __m256 {
    let t = _mm256_round_ps::<{ _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC }>(v);
    let f = _mm256_andnot_ps(_mm256_set1_ps(-0.0), _mm256_sub_ps(v, t));
    let up = _mm256_cmp_ps::<_CMP_GE_OQ>(f, _mm256_set1_ps(0.5));
    let one = _mm256_or_ps(_mm256_and_ps(v, _mm256_set1_ps(-0.0)), _mm256_set1_ps(1.0));
    _mm256_add_ps(t, _mm256_and_ps(up, one))
}

/// The `_ref` quantizer on 256-bit vectors (NaN blocks: scalar fallback).
#[target_feature(enable = "avx2,f16c")]
pub unsafe fn quantize_q8_ref_avx2<const Q81: bool>(x: *const f32, y: *mut u8, nb: usize) {
    let (stride, qoff) = layout(Q81);
    let sign = _mm256_set1_ps(-0.0);
    let ff = _mm256_set1_epi32(0xff);
    let perm = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    for b in 0..nb {
        unsafe {
            let xp = x.add(32 * b);
            let yp = y.add(stride * b);
            let v = [
                _mm256_loadu_ps(xp),
                _mm256_loadu_ps(xp.add(8)),
                _mm256_loadu_ps(xp.add(16)),
                _mm256_loadu_ps(xp.add(24)),
            ];
            let un = _mm256_or_ps(
                _mm256_or_ps(
                    _mm256_cmp_ps::<_CMP_UNORD_Q>(v[0], v[0]),
                    _mm256_cmp_ps::<_CMP_UNORD_Q>(v[1], v[1]),
                ),
                _mm256_or_ps(
                    _mm256_cmp_ps::<_CMP_UNORD_Q>(v[2], v[2]),
                    _mm256_cmp_ps::<_CMP_UNORD_Q>(v[3], v[3]),
                ),
            );
            if _mm256_movemask_ps(un) != 0 {
                let (d, qs) = ref_block(core::slice::from_raw_parts(xp, 32));
                let s =
                    Q81.then(|| f32_to_f16(qs.iter().map(|&q| q as i32).sum::<i32>() as f32 * d));
                store_scalar(yp, qoff, f32_to_f16(d), s, &qs);
                continue;
            }
            let m = _mm256_max_ps(
                _mm256_max_ps(_mm256_andnot_ps(sign, v[0]), _mm256_andnot_ps(sign, v[1])),
                _mm256_max_ps(_mm256_andnot_ps(sign, v[2]), _mm256_andnot_ps(sign, v[3])),
            );
            let mut m4 = _mm_max_ps(_mm256_extractf128_ps::<1>(m), _mm256_castps256_ps128(m));
            m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
            m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
            let amax = _mm_cvtss_f32(m4);
            let d = amax / 127.0;
            let id = _mm256_set1_ps(if d != 0.0 { 1.0 / d } else { 0.0 });
            let mut i = [_mm256_setzero_si256(); 4];
            for k in 0..4 {
                i[k] = _mm256_cvttps_epi32(roundf8(_mm256_mul_ps(v[k], id)));
            }
            (yp as *mut [u8; 2]).write_unaligned(f32_to_f16(d).to_le_bytes());
            if Q81 {
                // sum of the stored int8 values (sign-extended low bytes)
                let se = |a: __m256i| _mm256_srai_epi32::<24>(_mm256_slli_epi32::<24>(a));
                let sum = hsum_i32_8(_mm256_add_epi32(
                    _mm256_add_epi32(se(i[0]), se(i[1])),
                    _mm256_add_epi32(se(i[2]), se(i[3])),
                ));
                (yp.add(2) as *mut [u8; 2])
                    .write_unaligned(f32_to_f16(sum as f32 * d).to_le_bytes());
            }
            // C's (int8_t) keeps the low byte: mask, then the unsigned packs are exact
            let lo = _mm256_packus_epi32(_mm256_and_si256(i[0], ff), _mm256_and_si256(i[1], ff));
            let hi = _mm256_packus_epi32(_mm256_and_si256(i[2], ff), _mm256_and_si256(i[3], ff));
            let p = _mm256_permutevar8x32_epi32(_mm256_packus_epi16(lo, hi), perm);
            _mm256_storeu_si256(yp.add(qoff) as *mut __m256i, p);
        }
    }
}

/// The `_ref` quantizer on 512-bit vectors (NaN blocks: scalar fallback).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,f16c")]
pub unsafe fn quantize_q8_ref_avx512<const Q81: bool>(x: *const f32, y: *mut u8, nb: usize) {
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn roundf16(v: __m512) -> __m512 {
        let t = _mm512_roundscale_ps::<{ _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC }>(v);
        let f = _mm512_abs_ps(_mm512_sub_ps(v, t));
        let up = _mm512_cmp_ps_mask::<_CMP_GE_OQ>(f, _mm512_set1_ps(0.5));
        let one = _mm512_castsi512_ps(_mm512_or_si512(
            _mm512_and_si512(_mm512_castps_si512(v), _mm512_set1_epi32(i32::MIN)),
            _mm512_set1_epi32(0x3f80_0000),
        ));
        _mm512_mask_add_ps(t, up, t, one)
    }
    let (stride, qoff) = layout(Q81);
    for b in 0..nb {
        unsafe {
            let xp = x.add(32 * b);
            let yp = y.add(stride * b);
            let v0 = _mm512_loadu_ps(xp);
            let v1 = _mm512_loadu_ps(xp.add(16));
            let nan = _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(v0, v0)
                | _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(v1, v1);
            if nan != 0 {
                let (d, qs) = ref_block(core::slice::from_raw_parts(xp, 32));
                let s =
                    Q81.then(|| f32_to_f16(qs.iter().map(|&q| q as i32).sum::<i32>() as f32 * d));
                store_scalar(yp, qoff, f32_to_f16(d), s, &qs);
                continue;
            }
            let amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v0), _mm512_abs_ps(v1)));
            let d = amax / 127.0;
            let id = _mm512_set1_ps(if d != 0.0 { 1.0 / d } else { 0.0 });
            let i0 = _mm512_cvttps_epi32(roundf16(_mm512_mul_ps(v0, id)));
            let i1 = _mm512_cvttps_epi32(roundf16(_mm512_mul_ps(v1, id)));
            (yp as *mut [u8; 2]).write_unaligned(f32_to_f16(d).to_le_bytes());
            let q0 = _mm512_cvtepi32_epi8(i0);
            let q1 = _mm512_cvtepi32_epi8(i1);
            if Q81 {
                let sum = _mm512_reduce_add_epi32(_mm512_add_epi32(
                    _mm512_cvtepi8_epi32(q0),
                    _mm512_cvtepi8_epi32(q1),
                ));
                (yp.add(2) as *mut [u8; 2])
                    .write_unaligned(f32_to_f16(sum as f32 * d).to_le_bytes());
            }
            _mm_storeu_si128(yp.add(qoff) as *mut __m128i, q0);
            _mm_storeu_si128(yp.add(qoff + 16) as *mut __m128i, q1);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// to_float (`dequantize_row_q8_0`; q8_1 the same on its layout)
// ---------------------------------------------------------------------------------------------

/// `y[j] = qs[j] * d` per block (one rounding; `d` converted exactly with F16C).
#[inline]
#[target_feature(enable = "avx2,f16c")]
pub unsafe fn dequantize_q8_avx2<const STRIDE: usize, const QOFF: usize>(
    x: *const u8,
    y: *mut f32,
    nb: usize,
) {
    for b in 0..nb {
        unsafe {
            let xp = x.add(STRIDE * b);
            let yp = y.add(32 * b);
            let h = (xp as *const u16).read_unaligned();
            let d = _mm256_broadcastss_ps(_mm_cvtph_ps(_mm_cvtsi32_si128(h as i32)));
            let q = _mm256_loadu_si256(xp.add(QOFF) as *const __m256i);
            let q0 = _mm256_castsi256_si128(q);
            let q1 = _mm256_extracti128_si256::<1>(q);
            let f0 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q0));
            let f1 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_unpackhi_epi64(q0, q0)));
            let f2 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q1));
            let f3 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_unpackhi_epi64(q1, q1)));
            _mm256_storeu_ps(yp, _mm256_mul_ps(f0, d));
            _mm256_storeu_ps(yp.add(8), _mm256_mul_ps(f1, d));
            _mm256_storeu_ps(yp.add(16), _mm256_mul_ps(f2, d));
            _mm256_storeu_ps(yp.add(24), _mm256_mul_ps(f3, d));
        }
    }
}

/// AVX-512 variant of [`dequantize_q8_avx2`].
#[inline]
#[target_feature(enable = "avx512f,avx2,f16c")]
pub unsafe fn dequantize_q8_avx512<const STRIDE: usize, const QOFF: usize>(
    x: *const u8,
    y: *mut f32,
    nb: usize,
) {
    for b in 0..nb {
        unsafe {
            let xp = x.add(STRIDE * b);
            let yp = y.add(32 * b);
            let h = (xp as *const u16).read_unaligned();
            let d = _mm512_broadcastss_ps(_mm_cvtph_ps(_mm_cvtsi32_si128(h as i32)));
            let q0 = _mm_loadu_si128(xp.add(QOFF) as *const __m128i);
            let q1 = _mm_loadu_si128(xp.add(QOFF + 16) as *const __m128i);
            _mm512_storeu_ps(
                yp,
                _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q0)), d),
            );
            _mm512_storeu_ps(
                yp.add(16),
                _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q1)), d),
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// vec_dot q8_0 x q8_0 (x86 `ggml_vec_dot_q8_0_q8_0`, AVX2 + AVX512-VNNI build)
// ---------------------------------------------------------------------------------------------

/// The first 32 bits of each of 4 q8_0 blocks (34 bytes apart: `d` and the first two
/// quants) in the 4 lanes of a vector, loaded straight into it (`vmovd` + 3 `vpinsrd` with
/// memory operands: no GPRs).
///
/// # Safety
/// 4 whole q8_0 blocks at `p`; SSE4.1 (implied by AVX2 in every caller).
#[inline(always)]
unsafe fn dwords4(p: *const u8) -> __m128i {
    // SAFETY: forwarded.
    unsafe {
        let r = |k: usize| (p.add(34 * k) as *const i32).read_unaligned();
        let v = _mm_cvtsi32_si128(r(0));
        let v = _mm_insert_epi32::<1>(v, r(1));
        let v = _mm_insert_epi32::<2>(v, r(2));
        _mm_insert_epi32::<3>(v, r(3))
    }
}

/// `f16(x_k.d) * f16(y_k.d)` of 4 consecutive block pairs in lanes `2k` (the odd lanes hold
/// products of quant bytes read as f16, unused): one `vcvtph2ps` per side and one `vmulps`,
/// the same IEEE product of exactly converted scales as upstream's table lookups + `vmulss`.
///
/// # Safety
/// 4 whole q8_0 blocks at `px` and at `py`.
#[inline]
#[target_feature(enable = "avx2,f16c")]
unsafe fn d4(px: *const u8, py: *const u8) -> __m256 {
    // SAFETY: forwarded.
    unsafe { _mm256_mul_ps(_mm256_cvtph_ps(dwords4(px)), _mm256_cvtph_ps(dwords4(py))) }
}

/// Lane `2K` of `v` broadcast to 8 lanes (one `vpermps`).
#[inline]
#[target_feature(enable = "avx2")]
fn splat_even<const K: i32>(v: __m256) -> __m256 {
    _mm256_permutevar8x32_ps(v, _mm256_set1_epi32(2 * K))
}

/// `dx * dy` of one block pair, both scales converted with F16C, broadcast.
#[inline]
#[target_feature(enable = "avx2,f16c")]
fn scale_product(xd: u16, yd: u16) -> __m256 {
    let f = _mm_cvtph_ps(_mm_cvtsi32_si128((xd as u32 | (yd as u32) << 16) as i32));
    _mm256_broadcastss_ps(_mm_mul_ss(f, _mm_movehdup_ps(f)))
}

/// 8 exact int32 lanes `sum_{4k..4k+4} |x| * sign(y, x)` without VNNI (the 16-bit `maddubs`
/// would saturate where `dpbusd` does not).
#[inline]
#[target_feature(enable = "avx2")]
fn dot_lanes_avx2(qx: __m256i, qy: __m256i) -> __m256i {
    let ax = _mm256_sign_epi8(qx, qx);
    let sy = _mm256_sign_epi8(qy, qx);
    let lo = _mm256_madd_epi16(
        _mm256_cvtepu8_epi16(_mm256_castsi256_si128(ax)),
        _mm256_cvtepi8_epi16(_mm256_castsi256_si128(sy)),
    );
    let hi = _mm256_madd_epi16(
        _mm256_cvtepu8_epi16(_mm256_extracti128_si256::<1>(ax)),
        _mm256_cvtepi8_epi16(_mm256_extracti128_si256::<1>(sy)),
    );
    // hadd: [g0 g1 g4 g5 | g2 g3 g6 g7] -> qwords 0,2,1,3
    _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_hadd_epi32(lo, hi))
}

/// The same lanes with `vpdpbusd` (upstream's `__AVX512VNNI__ && __AVX512VL__` helper).
#[inline]
#[target_feature(enable = "avx512vnni,avx512vl,avx2")]
fn dot_lanes_vnni(qx: __m256i, qy: __m256i) -> __m256i {
    _mm256_dpbusd_epi32(
        _mm256_setzero_si256(),
        _mm256_sign_epi8(qx, qx),
        _mm256_sign_epi8(qy, qx),
    )
}

/// ggml's `hsum_float_8`: `(hi + lo)`, then lanes `0+2`, `1+3`, then the two.
#[inline]
#[target_feature(enable = "avx2")]
fn hsum8(x: __m256) -> f32 {
    let mut r = _mm_add_ps(_mm256_extractf128_ps::<1>(x), _mm256_castps256_ps128(x));
    r = _mm_add_ps(r, _mm_movehl_ps(r, r));
    r = _mm_add_ss(r, _mm_movehdup_ps(r));
    _mm_cvtss_f32(r)
}

/// One vec_dot body, stamped out for the AVX2 and the VNNI lane sums: 4 blocks per
/// iteration, their 4 scale products from one [`d4`], their integer lane sums independent of
/// the accumulator, so the FMA chain (in upstream's block order) is the only serial
/// dependency.
macro_rules! dot_q8_0_body {
    ($x:ident, $y:ident, $nb:ident, $lanes:ident) => {{
        let mut acc = _mm256_setzero_ps();
        let mut b = 0;
        // SAFETY (whole body): blocks 0..nb exist in both rows.
        unsafe {
            while b + 4 <= $nb {
                let (xp, yp) = ($x.add(34 * b), $y.add(34 * b));
                let dd = d4(xp, yp);
                let q: [__m256; 4] = core::array::from_fn(|k| {
                    let qx = _mm256_loadu_si256(xp.add(34 * k + 2) as *const __m256i);
                    let qy = _mm256_loadu_si256(yp.add(34 * k + 2) as *const __m256i);
                    _mm256_cvtepi32_ps($lanes(qx, qy))
                });
                acc = _mm256_fmadd_ps(splat_even::<0>(dd), q[0], acc);
                acc = _mm256_fmadd_ps(splat_even::<1>(dd), q[1], acc);
                acc = _mm256_fmadd_ps(splat_even::<2>(dd), q[2], acc);
                acc = _mm256_fmadd_ps(splat_even::<3>(dd), q[3], acc);
                b += 4;
            }
            while b < $nb {
                let (xp, yp) = ($x.add(34 * b), $y.add(34 * b));
                let d = scale_product(
                    (xp as *const u16).read_unaligned(),
                    (yp as *const u16).read_unaligned(),
                );
                let qx = _mm256_loadu_si256(xp.add(2) as *const __m256i);
                let qy = _mm256_loadu_si256(yp.add(2) as *const __m256i);
                acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps($lanes(qx, qy)), acc);
                b += 1;
            }
        }
        hsum8(acc)
    }};
}

/// [`dot_q8_0_vnni`]'s bits without VNNI.
///
/// # Safety
/// `x`, `y` hold `nb` q8_0 blocks; AVX2 + FMA + F16C.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q8_0_avx2(x: *const u8, y: *const u8, nb: usize) -> f32 {
    dot_q8_0_body!(x, y, nb, dot_lanes_avx2)
}

/// x86 `ggml_vec_dot_q8_0_q8_0` as built here (AVX2 + AVX512-VNNI): per block
/// `acc = fma(dx*dy, float(dpbusd lanes), acc)` on 8 lanes, then `hsum_float_8`.
///
/// # Safety
/// `x`, `y` hold `nb` q8_0 blocks; AVX-512 F/VL/VNNI + AVX2 + FMA + F16C.
#[inline]
#[target_feature(enable = "avx512f,avx512vl,avx512vnni,avx2,fma,f16c")]
pub unsafe fn dot_q8_0_vnni(x: *const u8, y: *const u8, nb: usize) -> f32 {
    dot_q8_0_body!(x, y, nb, dot_lanes_vnni)
}

/// Whether the CPU has AVX-512 VNNI + VL: 0 = not asked yet, 1 = no, 2 = yes.
static VNNI: AtomicU8 = AtomicU8::new(0);

/// Whether the CPU has AVX-512 VNNI + VL (detected once, cached for [`dot_q8_0_fast`]).
pub fn has_vnni() -> bool {
    match VNNI.load(Ordering::Relaxed) {
        2 => true,
        1 => false,
        _ => {
            let v = std::arch::is_x86_feature_detected!("avx512vnni")
                && std::arch::is_x86_feature_detected!("avx512vl");
            VNNI.store(1 + v as u8, Ordering::Relaxed);
            v
        }
    }
}

/// Which q8_0 vec_dot kernel to run, decided without any call (see
/// [`crate::simd::isa_fast`]): `Some(true)` = [`dot_q8_0_vnni`], `Some(false)` =
/// [`dot_q8_0_avx2`], `None` = ask the full dispatch (forced ISA, scalar, first call).
/// Only ever reports a kernel the CPU can run.
#[inline(always)]
pub fn dot_q8_0_fast() -> Option<bool> {
    match crate::simd::isa_fast()? {
        crate::simd::Isa::Avx2 => Some(false),
        crate::simd::Isa::Avx512 => match VNNI.load(Ordering::Relaxed) {
            2 => Some(true),
            1 => Some(false),
            _ => None,
        },
        crate::simd::Isa::Scalar => None,
    }
}

/// The `Isa::Avx512` entry: [`dot_q8_0_vnni`] when the CPU has VNNI, else [`dot_q8_0_avx2`].
///
/// # Safety
/// `x`, `y` hold `nb` q8_0 blocks; the CPU has AVX-512 F (and AVX2 + FMA + F16C).
pub unsafe fn dot_q8_0_avx512(x: *const u8, y: *const u8, nb: usize) -> f32 {
    // SAFETY: forwarded; VNNI checked.
    unsafe {
        if has_vnni() {
            dot_q8_0_vnni(x, y, nb)
        } else {
            dot_q8_0_avx2(x, y, nb)
        }
    }
}
