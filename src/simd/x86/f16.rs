//! x86 kernels for f16 / bf16 rows: conversions and dot products.
//!
//! Contracts (the safe wrappers in `crate::quant::fp16`, `quant::f16` and `quant::bf16` uphold
//! them): every pointer is valid for `n` elements (unaligned is fine), the CPU has the
//! features named in `#[target_feature]`. Semantics of each kernel are documented on the safe
//! wrapper; here only the instruction-level order is described where it matters for bits.
use core::arch::x86_64::*;
use std::sync::atomic::{AtomicU8, Ordering};

use crate::simd::Isa;

use crate::quant::bf16::DP_TINY_LIMIT as TINY_LIMIT;
use crate::quant::fp16::{f16_to_f32, f32_to_bf16, f32_to_f16, f32_to_f16_f16c};

// ---------------------------------------------------------------------------------------------
// f16 -> f32 (exact; F16C `vcvtph2ps`)
// ---------------------------------------------------------------------------------------------

/// f16 -> f32 for `n` elements with F16C, 8 lanes at a time.
#[inline]
#[target_feature(enable = "avx2,f16c")]
pub unsafe fn f16_to_f32_avx2(src: *const u16, dst: *mut f32, n: usize) {
    let mut i = 0;
    unsafe {
        while i + 16 <= n {
            let a = _mm_loadu_si128(src.add(i) as *const __m128i);
            let b = _mm_loadu_si128(src.add(i + 8) as *const __m128i);
            _mm256_storeu_ps(dst.add(i), _mm256_cvtph_ps(a));
            _mm256_storeu_ps(dst.add(i + 8), _mm256_cvtph_ps(b));
            i += 16;
        }
        if i + 8 <= n {
            let a = _mm_loadu_si128(src.add(i) as *const __m128i);
            _mm256_storeu_ps(dst.add(i), _mm256_cvtph_ps(a));
            i += 8;
        }
        while i < n {
            *dst.add(i) = f16_to_f32(src.add(i).read_unaligned());
            i += 1;
        }
    }
}

/// f16 -> f32 for `n` elements with AVX-512, 16 lanes at a time, masked tail.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c")]
pub unsafe fn f16_to_f32_avx512(src: *const u16, dst: *mut f32, n: usize) {
    let mut i = 0;
    unsafe {
        while i + 32 <= n {
            let a = _mm256_loadu_si256(src.add(i) as *const __m256i);
            let b = _mm256_loadu_si256(src.add(i + 16) as *const __m256i);
            _mm512_storeu_ps(dst.add(i), _mm512_cvtph_ps(a));
            _mm512_storeu_ps(dst.add(i + 16), _mm512_cvtph_ps(b));
            i += 32;
        }
        if i + 16 <= n {
            let a = _mm256_loadu_si256(src.add(i) as *const __m256i);
            _mm512_storeu_ps(dst.add(i), _mm512_cvtph_ps(a));
            i += 16;
        }
        if i < n {
            let k: __mmask16 = ((1u32 << (n - i)) - 1) as __mmask16;
            let a = _mm256_maskz_loadu_epi16(k, src.add(i) as *const i16);
            _mm512_mask_storeu_ps(dst.add(i), k, _mm512_cvtph_ps(a));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// f32 -> f16 (`vcvtps2ph`, round to nearest even). CANON: NaN -> 0x7E00 | sign (ggml-base).
// ---------------------------------------------------------------------------------------------

#[inline]
#[target_feature(enable = "avx2,f16c")]
fn cvt8_f16<const CANON: bool>(v: __m256) -> __m128i {
    let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(v);
    if CANON {
        let m = _mm256_castps_si256(_mm256_cmp_ps::<_CMP_UNORD_Q>(v, v));
        let m16 = _mm_packs_epi32(_mm256_castsi256_si128(m), _mm256_extracti128_si256::<1>(m));
        let canon = _mm_or_si128(
            _mm_and_si128(h, _mm_set1_epi16(0x8000u16 as i16)),
            _mm_set1_epi16(0x7e00),
        );
        _mm_blendv_epi8(h, canon, m16)
    } else {
        // register form of `vcvtps2ph` (see `cvt16_f16`)
        let mut h = h;
        // SAFETY: an empty asm block that only claims to modify a register.
        unsafe {
            core::arch::asm!("/* {0} */", inout(xmm_reg) h, options(pure, nomem, nostack, preserves_flags))
        };
        h
    }
}

/// f32 -> f16 for `n` elements with F16C. `CANON = false`: F16C semantics (NaN keeps sign and
/// top payload bits, quietened). `CANON = true`: ggml-base semantics (NaN -> 0x7E00 | sign).
#[inline]
#[target_feature(enable = "avx2,f16c")]
pub unsafe fn f32_to_f16_avx2<const CANON: bool>(src: *const f32, dst: *mut u16, n: usize) {
    let mut i = 0;
    unsafe {
        while i + 16 <= n {
            let a = cvt8_f16::<CANON>(_mm256_loadu_ps(src.add(i)));
            let b = cvt8_f16::<CANON>(_mm256_loadu_ps(src.add(i + 8)));
            _mm_storeu_si128(dst.add(i) as *mut __m128i, a);
            _mm_storeu_si128(dst.add(i + 8) as *mut __m128i, b);
            i += 16;
        }
        if i + 8 <= n {
            let a = cvt8_f16::<CANON>(_mm256_loadu_ps(src.add(i)));
            _mm_storeu_si128(dst.add(i) as *mut __m128i, a);
            i += 8;
        }
        while i < n {
            let f = *src.add(i);
            let h = if CANON {
                f32_to_f16(f)
            } else {
                f32_to_f16_f16c(f)
            };
            dst.add(i).write_unaligned(h);
            i += 1;
        }
    }
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c")]
fn cvt16_f16<const CANON: bool>(v: __m512) -> __m256i {
    let h = _mm512_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(v);
    if CANON {
        let k = _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(v, v);
        let canon = _mm256_or_si256(
            _mm256_and_si256(h, _mm256_set1_epi16(0x8000u16 as i16)),
            _mm256_set1_epi16(0x7e00),
        );
        _mm256_mask_blend_epi16(k, h, canon)
    } else {
        // Keep `vcvtps2ph` in its register form: LLVM would fold the following store into
        // `vcvtps2ph m256, zmm`, which is several times slower on Intel cores.
        let mut h = h;
        // SAFETY: an empty asm block that only claims to modify a register.
        unsafe {
            core::arch::asm!("/* {0} */", inout(ymm_reg) h, options(pure, nomem, nostack, preserves_flags))
        };
        h
    }
}

/// AVX-512 variant of [`f32_to_f16_avx2`] (same semantics), masked tail.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c")]
pub unsafe fn f32_to_f16_avx512<const CANON: bool>(src: *const f32, dst: *mut u16, n: usize) {
    let mut i = 0;
    unsafe {
        while i + 32 <= n {
            let a = cvt16_f16::<CANON>(_mm512_loadu_ps(src.add(i)));
            let b = cvt16_f16::<CANON>(_mm512_loadu_ps(src.add(i + 16)));
            _mm256_storeu_si256(dst.add(i) as *mut __m256i, a);
            _mm256_storeu_si256(dst.add(i + 16) as *mut __m256i, b);
            i += 32;
        }
        if i + 16 <= n {
            let a = cvt16_f16::<CANON>(_mm512_loadu_ps(src.add(i)));
            _mm256_storeu_si256(dst.add(i) as *mut __m256i, a);
            i += 16;
        }
        if i < n {
            let k: __mmask16 = ((1u32 << (n - i)) - 1) as __mmask16;
            let a = cvt16_f16::<CANON>(_mm512_maskz_loadu_ps(k, src.add(i)));
            _mm256_mask_storeu_epi16(dst.add(i) as *mut i16, k, a);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// bf16 <-> f32
// ---------------------------------------------------------------------------------------------

/// bf16 -> f32 (`bits << 16`), 8 lanes at a time.
#[inline]
#[target_feature(enable = "avx2")]
pub unsafe fn bf16_to_f32_avx2(src: *const u16, dst: *mut f32, n: usize) {
    let mut i = 0;
    unsafe {
        while i + 8 <= n {
            let a = _mm_loadu_si128(src.add(i) as *const __m128i);
            let w = _mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(a));
            _mm256_storeu_si256(dst.add(i) as *mut __m256i, w);
            i += 8;
        }
        while i < n {
            *dst.add(i) = f32::from_bits((src.add(i).read_unaligned() as u32) << 16);
            i += 1;
        }
    }
}

/// bf16 -> f32, 16 lanes at a time, masked head and tail: the head (up to 15 elements)
/// brings `dst` to a 64-byte boundary, so the full-width stores (the bottleneck: twice the
/// bytes of the loads) never split a cache line, whatever the caller's alignment.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub unsafe fn bf16_to_f32_avx512(src: *const u16, dst: *mut f32, n: usize) {
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    unsafe fn masked(src: *const u16, dst: *mut f32, k: __mmask16) {
        unsafe {
            let a = _mm256_maskz_loadu_epi16(k, src as *const i16);
            _mm512_mask_storeu_epi32(
                dst as *mut i32,
                k,
                _mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(a)),
            );
        }
    }
    let mut i = (16 - (dst as usize % 64) / 4) % 16;
    unsafe {
        if i >= n {
            // fewer elements than the head: one masked pass (n < 16)
            if n > 0 {
                masked(src, dst, ((1u32 << n) - 1) as __mmask16);
            }
            return;
        }
        if i > 0 {
            masked(src, dst, ((1u32 << i) - 1) as __mmask16);
        }
        while i + 32 <= n {
            let a = _mm512_loadu_si512(src.add(i) as *const __m512i);
            let lo = _mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(_mm512_castsi512_si256(a)));
            let hi =
                _mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(_mm512_extracti64x4_epi64::<1>(a)));
            _mm512_storeu_si512(dst.add(i) as *mut __m512i, lo);
            _mm512_storeu_si512(dst.add(i + 16) as *mut __m512i, hi);
            i += 32;
        }
        while i + 16 <= n {
            let a = _mm256_loadu_si256(src.add(i) as *const __m256i);
            _mm512_storeu_si512(
                dst.add(i) as *mut __m512i,
                _mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(a)),
            );
            i += 16;
        }
        if i < n {
            masked(src.add(i), dst.add(i), ((1u32 << (n - i)) - 1) as __mmask16);
        }
    }
}

/// `ggml_compute_fp32_to_bf16` on 8 lanes, result in the low 16 bits of each 32-bit lane.
#[inline]
#[target_feature(enable = "avx2")]
fn bf16_round8(v: __m256) -> __m256i {
    let u = _mm256_castps_si256(v);
    let lsb = _mm256_and_si256(_mm256_srli_epi32::<16>(u), _mm256_set1_epi32(1));
    let r = _mm256_srli_epi32::<16>(_mm256_add_epi32(
        u,
        _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7fff)),
    ));
    let nan_v = _mm256_or_si256(_mm256_srli_epi32::<16>(u), _mm256_set1_epi32(64));
    let abs = _mm256_and_si256(u, _mm256_set1_epi32(0x7fff_ffff));
    let is_nan = _mm256_cmpgt_epi32(abs, _mm256_set1_epi32(0x7f80_0000));
    _mm256_blendv_epi8(r, nan_v, is_nan)
}

/// f32 -> bf16 (`ggml_compute_fp32_to_bf16`: round to nearest even, NaN -> `(bits >> 16) | 64`).
#[inline]
#[target_feature(enable = "avx2")]
pub unsafe fn f32_to_bf16_avx2(src: *const f32, dst: *mut u16, n: usize) {
    let mut i = 0;
    unsafe {
        while i + 16 <= n {
            let a = bf16_round8(_mm256_loadu_ps(src.add(i)));
            let b = bf16_round8(_mm256_loadu_ps(src.add(i + 8)));
            // packus works per 128-bit lane: [a0..3 b0..3 | a4..7 b4..7] -> fix with a permute
            let p = _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_packus_epi32(a, b));
            _mm256_storeu_si256(dst.add(i) as *mut __m256i, p);
            i += 16;
        }
        while i < n {
            dst.add(i).write_unaligned(f32_to_bf16(*src.add(i)));
            i += 1;
        }
    }
}

/// AVX-512 variant of [`f32_to_bf16_avx2`] (same semantics), masked tail.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub unsafe fn f32_to_bf16_avx512(src: *const f32, dst: *mut u16, n: usize) {
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    fn round16(v: __m512) -> __m256i {
        let u = _mm512_castps_si512(v);
        let lsb = _mm512_and_si512(_mm512_srli_epi32::<16>(u), _mm512_set1_epi32(1));
        let r = _mm512_srli_epi32::<16>(_mm512_add_epi32(
            u,
            _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff)),
        ));
        let nan_v = _mm512_or_si512(_mm512_srli_epi32::<16>(u), _mm512_set1_epi32(64));
        let abs = _mm512_and_si512(u, _mm512_set1_epi32(0x7fff_ffff));
        let k = _mm512_cmpgt_epi32_mask(abs, _mm512_set1_epi32(0x7f80_0000));
        _mm512_cvtepi32_epi16(_mm512_mask_blend_epi32(k, r, nan_v))
    }
    let mut i = 0;
    unsafe {
        while i + 16 <= n {
            _mm256_storeu_si256(
                dst.add(i) as *mut __m256i,
                round16(_mm512_loadu_ps(src.add(i))),
            );
            i += 16;
        }
        if i < n {
            let k: __mmask16 = ((1u32 << (n - i)) - 1) as __mmask16;
            let a = round16(_mm512_maskz_loadu_ps(k, src.add(i)));
            _mm256_mask_storeu_epi16(dst.add(i) as *mut i16, k, a);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Dot products
// ---------------------------------------------------------------------------------------------

/// gcc's `_mm512_reduce_add_ps` order on the 16 lanes `lo` (0..8) and `hi` (8..16):
/// `t[j] = hi[j] + lo[j]`, then `u[k] = t[4+k] + t[k]`, then `(u0+u2) + (u1+u3)`.
#[inline]
#[target_feature(enable = "avx2")]
fn reduce16_gcc(lo: __m256, hi: __m256) -> f32 {
    let t = _mm256_add_ps(hi, lo);
    let u = _mm_add_ps(_mm256_extractf128_ps::<1>(t), _mm256_castps256_ps128(t));
    let v = _mm_add_ps(u, _mm_movehl_ps(u, u));
    _mm_cvtss_f32(_mm_add_ss(v, _mm_movehdup_ps(v)))
}

#[inline]
#[target_feature(enable = "avx512f")]
fn reduce512_gcc(v: __m512) -> f32 {
    let lo = _mm512_castps512_ps256(v);
    let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v)));
    reduce16_gcc(lo, hi)
}

/// Upstream's `sumf` of two reductions when no element is left over, rounded to f32:
/// `(f32)(((f64)0 + (f64)r1) + (f64)r2)` (as `ggml_vec_dot_bf16` accumulates its two
/// `_mm512_reduce_add_ps` results), computed in f32 as `(r1 + r2) + 0`, the same bits and
/// two additions instead of two widenings, two f64 additions and a narrowing on the
/// critical path of every row:
/// * `(f64)r1 + (f64)r2` rounded to f64 and then to f32 equals `r1 + r2` rounded once to
///   f32 (a single operation on f32 inputs evaluated in a format with >= 2·24 + 2
///   significand bits rounds innocuously twice); adding `(f64)0` first only turns a `-0`
///   `r1` into `+0`, which changes the sum only when both are `-0` (`+0` instead of `-0`):
///   exactly what the final `+ 0` does (`x + 0 = x` for every other `x`, and an exact-zero
///   sum of non-zero terms is already `+0`);
/// * a NaN stays a NaN (which payload survives when both terms are NaNs is no more pinned
///   down here than in the reduction steps before it: LLVM may swap an addition's operands).
#[inline(always)]
fn sum2_f64_as_f32(r1: f32, r2: f32) -> f32 {
    (r1 + r2) + 0.0
}

/// `ggml_vec_dot_f16` as built with AVX-512F (no AVX512-FP16): 4 accumulators of 16 lanes,
/// `acc[j] = fma(x, y, acc[j])` over 64-element steps, then `(a0+a2) + (a1+a3)`, gcc's
/// `_mm512_reduce_add_ps`, widened to f64; the `n % 64` leftovers are added in f64 as f32
/// products; the result is rounded to f32. Each 16-lane accumulator is held as two 8-lane
/// halves (the same bits): on Zen 4 this measured faster than 512-bit vectors (the 512-bit
/// variant was ~10% slower per 128-element row), so it serves the AVX-512 level too.
#[inline]
#[target_feature(enable = "avx2,f16c,fma")]
pub unsafe fn dot_f16_avx2(x: *const u16, y: *const u16, n: usize) -> f32 {
    let np = n & !63;
    let mut a = [_mm256_setzero_ps(); 8];
    let mut i = 0;
    unsafe {
        while i < np {
            for (j, acc) in a.iter_mut().enumerate() {
                let vx = _mm256_cvtph_ps(_mm_loadu_si128(x.add(i + 8 * j) as *const __m128i));
                let vy = _mm256_cvtph_ps(_mm_loadu_si128(y.add(i + 8 * j) as *const __m128i));
                *acc = _mm256_fmadd_ps(vx, vy, *acc);
            }
            i += 64;
        }
        // a[2j], a[2j+1] = low and high halves of the 512-bit accumulator j
        let lo = _mm256_add_ps(_mm256_add_ps(a[0], a[4]), _mm256_add_ps(a[2], a[6]));
        let hi = _mm256_add_ps(_mm256_add_ps(a[1], a[5]), _mm256_add_ps(a[3], a[7]));
        let r = reduce16_gcc(lo, hi);
        if i == n {
            // (f32)(f64)r == r: the round trip is exact (and keeps a quiet NaN's payload;
            // an addition never returns a signalling NaN)
            return r;
        }
        let mut sumf = r as f64;
        while i < n {
            let p = f16_to_f32(x.add(i).read_unaligned()) * f16_to_f32(y.add(i).read_unaligned());
            sumf += p as f64;
            i += 1;
        }
        sumf as f32
    }
}

/// Whether the CPU has AVX512-BF16: 0 = not asked yet, 1 = no, 2 = yes.
static BF16: AtomicU8 = AtomicU8::new(0);

/// Whether the CPU has AVX512-BF16 (detected once, cached for [`dot_bf16_fast`]).
pub fn has_avx512bf16() -> bool {
    match BF16.load(Ordering::Relaxed) {
        2 => true,
        1 => false,
        _ => {
            let v = std::arch::is_x86_feature_detected!("avx512bf16");
            BF16.store(1 + v as u8, Ordering::Relaxed);
            v
        }
    }
}

/// Which bf16 vec_dot kernel to run, decided without any call (see
/// [`crate::simd::isa_fast`]): `Some(true)` = [`dot_bf16_avx512bf16`], `Some(false)` =
/// [`dot_bf16_avx2`], `None` = ask the full dispatch (forced ISA, scalar, first call).
/// Only ever reports a kernel the CPU can run.
#[inline(always)]
pub fn dot_bf16_fast() -> Option<bool> {
    match crate::simd::isa_fast()? {
        Isa::Avx2 => Some(false),
        Isa::Avx512 => match BF16.load(Ordering::Relaxed) {
            2 => Some(true),
            1 => Some(false),
            _ => None,
        },
        Isa::Scalar => None,
    }
}

/// `ggml_vec_dot_bf16` as built with AVX512-BF16: two `vdpbf16ps` accumulators over
/// 64-element steps, each reduced with gcc's `_mm512_reduce_add_ps` and added in f64; the
/// `n % 64` leftovers are added in f64 as f32 products.
#[inline]
#[target_feature(enable = "avx512f,avx512bf16")]
pub unsafe fn dot_bf16_avx512bf16(x: *const u16, y: *const u16, n: usize) -> f32 {
    let mut c1 = _mm512_setzero_ps();
    let mut c2 = _mm512_setzero_ps();
    let mut i = 0;
    unsafe {
        while i + 64 <= n {
            let x0: __m512bh = core::mem::transmute(_mm512_loadu_si512(x.add(i) as *const __m512i));
            let y0: __m512bh = core::mem::transmute(_mm512_loadu_si512(y.add(i) as *const __m512i));
            let x1: __m512bh =
                core::mem::transmute(_mm512_loadu_si512(x.add(i + 32) as *const __m512i));
            let y1: __m512bh =
                core::mem::transmute(_mm512_loadu_si512(y.add(i + 32) as *const __m512i));
            c1 = _mm512_dpbf16_ps(c1, x0, y0);
            c2 = _mm512_dpbf16_ps(c2, x1, y1);
            i += 64;
        }
        let (r1, r2) = (reduce512_gcc(c1), reduce512_gcc(c2));
        if i == n {
            return sum2_f64_as_f32(r1, r2);
        }
        let mut sumf = 0f64;
        sumf += r1 as f64;
        sumf += r2 as f64;
        while i < n {
            let p = f32::from_bits((x.add(i).read_unaligned() as u32) << 16)
                * f32::from_bits((y.add(i).read_unaligned() as u32) << 16);
            sumf += p as f64;
            i += 1;
        }
        sumf as f32
    }
}

/// One `vdpbf16ps` accumulation step on 4 lanes, emulated in f64 (see
/// `quant::bf16::dpbf16_step` for the argument): `a`, `b` = bf16 inputs already widened to f32
/// with denormals zeroed; returns `ftz(round_f32(acc + a*b))`.
#[inline]
#[target_feature(enable = "avx2")]
fn dp_step4(acc: __m128, a: __m128, b: __m128) -> __m128 {
    // a*b is exact in f64 (two 8-bit significands); acc + a*b in f64 then to f32 is correctly
    // rounded (53 >= 2*24 + 2); FTZ: flush when |s| < 2^-126 - 2^-151.
    let acc_d = _mm256_cvtps_pd(acc);
    let p = _mm256_mul_pd(_mm256_cvtps_pd(a), _mm256_cvtps_pd(b));
    let s = _mm256_add_pd(acc_d, p);
    let abs = _mm256_and_pd(
        s,
        _mm256_castsi256_pd(_mm256_set1_epi64x(0x7fff_ffff_ffff_ffff)),
    );
    let tiny = _mm256_cmp_pd::<_CMP_LT_OQ>(abs, _mm256_set1_pd(TINY_LIMIT));
    let sign = _mm256_and_pd(s, _mm256_castsi256_pd(_mm256_set1_epi64x(i64::MIN)));
    let s = _mm256_blendv_pd(s, sign, tiny);
    _mm256_cvtpd_ps(s)
}

/// Zero bf16-widened f32 lanes whose exponent field is 0 (DAZ), keeping the sign.
#[inline]
#[target_feature(enable = "avx2")]
fn daz4(v: __m128i) -> __m128 {
    let e = _mm_and_si128(v, _mm_set1_epi32(0x7f80_0000));
    let z = _mm_cmpeq_epi32(e, _mm_setzero_si128());
    _mm_castsi128_ps(_mm_blendv_epi8(
        v,
        _mm_and_si128(v, _mm_set1_epi32(i32::MIN)),
        z,
    ))
}

/// [`dot_bf16_avx512bf16`] without the BF16 extension: the same bits, each `vdpbf16ps` lane
/// (odd pair element first, then even; DAZ in, FTZ out, RNE) emulated in f64.
#[inline]
#[target_feature(enable = "avx2,fma")]
pub unsafe fn dot_bf16_avx2(x: *const u16, y: *const u16, n: usize) -> f32 {
    // c[k] holds lanes 4k..4k+4 of the 16-lane accumulators c1 (k = 0..4) and c2 (k = 4..8).
    let mut c = [_mm_setzero_ps(); 8];
    let mut i = 0;
    unsafe {
        while i + 64 <= n {
            for (k, acc) in c.iter_mut().enumerate() {
                // accumulator lanes 4k'..4k'+4 cover bf16 elements 8k'..8k'+8 of its 32-element half
                let off = i + if k < 4 { 8 * k } else { 32 + 8 * (k - 4) };
                let vx = _mm_loadu_si128(x.add(off) as *const __m128i);
                let vy = _mm_loadu_si128(y.add(off) as *const __m128i);
                let x_even = daz4(_mm_slli_epi32::<16>(vx));
                let y_even = daz4(_mm_slli_epi32::<16>(vy));
                let x_odd = daz4(_mm_and_si128(vx, _mm_set1_epi32(0xffff_0000u32 as i32)));
                let y_odd = daz4(_mm_and_si128(vy, _mm_set1_epi32(0xffff_0000u32 as i32)));
                *acc = dp_step4(*acc, x_odd, y_odd);
                *acc = dp_step4(*acc, x_even, y_even);
            }
            i += 64;
        }
        let c1lo = _mm256_set_m128(c[1], c[0]);
        let c1hi = _mm256_set_m128(c[3], c[2]);
        let c2lo = _mm256_set_m128(c[5], c[4]);
        let c2hi = _mm256_set_m128(c[7], c[6]);
        let (r1, r2) = (reduce16_gcc(c1lo, c1hi), reduce16_gcc(c2lo, c2hi));
        if i == n {
            return sum2_f64_as_f32(r1, r2);
        }
        let mut sumf = 0f64;
        sumf += r1 as f64;
        sumf += r2 as f64;
        while i < n {
            let p = f32::from_bits((x.add(i).read_unaligned() as u32) << 16)
                * f32::from_bits((y.add(i).read_unaligned() as u32) << 16);
            sumf += p as f64;
            i += 1;
        }
        sumf as f32
    }
}
