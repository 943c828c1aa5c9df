//! x86 kernels (q4_0, q4_1, q5_0, q5_1, iq4_nl). Owned by the quant work; see the safe
//! wrappers in `crate::quant::{q4_0, q4_1, q5_0, q5_1, iq4_nl}` for contracts.
//!
//! Every kernel here reproduces, bit for bit, what the pinned ggml computes on x86 with
//! gcc -O3 -march=native (AVX-512): the reference quantizers' FMA-contracted
//! `x*id + c`, `vcvttps2dq` + low-byte truncation, and the vec_dots' per-block
//! `fma(dx*dy, (float)lane, acc)` over 8 float lanes followed by `hsum_float_8`.
//!
//! Callers guarantee: `x.len() == 32 * y.len()` for (de)quantization, equal block counts for
//! vec_dot, and that the CPU has the enabled features.
use crate::quant::fp16::f32_to_f16le;
use crate::quant::{BlockIq4Nl, BlockQ4_0, BlockQ4_1, BlockQ5_0, BlockQ5_1, BlockQ8_0, BlockQ8_1};
use core::arch::x86_64::*;

// ---------------------------------------------------------------------------------------
// Shared helpers
// ---------------------------------------------------------------------------------------

/// f16 bits (little-endian bytes) -> f32 with F16C (exact; NaN payload kept, quietened —
/// the same bits as ggml's scalar conversion and its CPU table).
#[inline]
#[target_feature(enable = "f16c")]
fn h2f(h: [u8; 2]) -> f32 {
    _mm_cvtss_f32(_mm_cvtph_ps(
        _mm_cvtsi32_si128(u16::from_le_bytes(h) as i32),
    ))
}

/// Eight f16 bit patterns as one vector, assembled in general-purpose registers.
/// (Inserting them one by one let LLVM pick the dot accumulator as the untouched source of
/// `vpinsrw`, a false dependency that serialised the whole dot loop; `vmovq` writes the
/// full register.)
#[inline]
#[target_feature(enable = "avx2")]
fn pack_u16x8(h: &[u16; 8]) -> __m128i {
    let lo = h[0] as u64 | (h[1] as u64) << 16 | (h[2] as u64) << 32 | (h[3] as u64) << 48;
    let hi = h[4] as u64 | (h[5] as u64) << 16 | (h[6] as u64) << 32 | (h[7] as u64) << 48;
    // black_box keeps LLVM from turning this back into a chain of `vpinsrw` on an undef reg.
    let (lo, hi) = (core::hint::black_box(lo), core::hint::black_box(hi));
    _mm_unpacklo_epi64(_mm_cvtsi64_si128(lo as i64), _mm_cvtsi64_si128(hi as i64))
}

/// `f16(a[i]) * f16(b[i])` for 8 pairs of f16 (F16C; exact conversions, one rounding each).
#[inline]
#[target_feature(enable = "avx2,f16c")]
fn mul_f16x8(a: &[u16; 8], b: &[u16; 8]) -> [f32; 8] {
    let x = _mm256_cvtph_ps(pack_u16x8(a));
    let y = _mm256_cvtph_ps(pack_u16x8(b));
    let mut out = [0f32; 8];
    // SAFETY: 32 writable bytes.
    unsafe { _mm256_storeu_ps(out.as_mut_ptr(), _mm256_mul_ps(x, y)) };
    out
}

/// f16 -> f32 for 8 values (F16C).
#[inline]
#[target_feature(enable = "avx2,f16c")]
fn f16x8(a: &[u16; 8]) -> [f32; 8] {
    let mut out = [0f32; 8];
    // SAFETY: 32 writable bytes.
    unsafe { _mm256_storeu_ps(out.as_mut_ptr(), _mm256_cvtph_ps(pack_u16x8(a))) };
    out
}

/// ggml's `hsum_float_8`.
#[inline]
#[target_feature(enable = "avx2")]
fn hsum8(x: __m256) -> f32 {
    let mut r = _mm_add_ps(_mm256_extractf128_ps::<1>(x), _mm256_castps256_ps128(x));
    r = _mm_add_ps(r, _mm_movehl_ps(r, r));
    r = _mm_add_ss(r, _mm_movehdup_ps(r));
    _mm_cvtss_f32(r)
}

/// Low byte of each of 32 int32 (4 vectors of 8, element order kept) as 32 bytes.
#[inline]
#[target_feature(enable = "avx2")]
fn low_bytes_32(a: __m256i, b: __m256i, c: __m256i, d: __m256i) -> __m256i {
    let m = _mm256_set1_epi32(0xff);
    let ab = _mm256_packus_epi32(_mm256_and_si256(a, m), _mm256_and_si256(b, m));
    let cd = _mm256_packus_epi32(_mm256_and_si256(c, m), _mm256_and_si256(d, m));
    let abcd = _mm256_packus_epi16(ab, cd);
    // lane 0: a0..3 b0..3 c0..3 d0..3, lane 1: a4..7 b4..7 c4..7 d4..7 (dwords)
    _mm256_permutevar8x32_epi32(abcd, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7))
}

/// amax / max of one block of 32 floats (see `q4_0::amax_max`): the magnitude max ignoring
/// NaN, and the first element with that magnitude (`+0.0` if the block is all zero).
#[inline]
#[target_feature(enable = "avx2")]
fn amax_max_avx2(p: *const f32, v: &[__m256; 4]) -> (f32, f32) {
    let absm = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fff_ffff));
    let a = [
        _mm256_and_ps(v[0], absm),
        _mm256_and_ps(v[1], absm),
        _mm256_and_ps(v[2], absm),
        _mm256_and_ps(v[3], absm),
    ];
    // maxps returns the second operand when the first is NaN: NaN lanes never win.
    let mut m = _mm256_max_ps(a[0], _mm256_setzero_ps());
    m = _mm256_max_ps(a[1], m);
    m = _mm256_max_ps(a[2], m);
    m = _mm256_max_ps(a[3], m);
    let mut h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps::<1>(m));
    h = _mm_max_ps(h, _mm_movehl_ps(h, h));
    h = _mm_max_ss(h, _mm_movehdup_ps(h));
    let amax = _mm_cvtss_f32(h);
    if amax == 0.0 {
        return (0.0, 0.0);
    }
    let b = _mm256_set1_ps(amax);
    let mut mask = 0u32;
    for (i, ai) in a.iter().enumerate() {
        mask |= (_mm256_movemask_ps(_mm256_cmp_ps::<_CMP_EQ_OQ>(*ai, b)) as u32) << (8 * i);
    }
    // SAFETY: mask != 0 (amax is one of the magnitudes), index < 32.
    (amax, unsafe { *p.add(mask.trailing_zeros() as usize) })
}

/// min / max of one block (see `q4_0::min_max`), each the first element equal to it.
#[inline]
#[target_feature(enable = "avx2")]
fn min_max_avx2(p: *const f32, v: &[__m256; 4]) -> (f32, f32) {
    // minps/maxps return the second operand when the first is NaN.
    let mut mn = _mm256_min_ps(v[0], _mm256_set1_ps(f32::MAX));
    let mut mx = _mm256_max_ps(v[0], _mm256_set1_ps(-f32::MAX));
    for vi in &v[1..] {
        mn = _mm256_min_ps(*vi, mn);
        mx = _mm256_max_ps(*vi, mx);
    }
    let mut hn = _mm_min_ps(_mm256_castps256_ps128(mn), _mm256_extractf128_ps::<1>(mn));
    hn = _mm_min_ps(hn, _mm_movehl_ps(hn, hn));
    hn = _mm_min_ss(hn, _mm_movehdup_ps(hn));
    let mut hx = _mm_max_ps(_mm256_castps256_ps128(mx), _mm256_extractf128_ps::<1>(mx));
    hx = _mm_max_ps(hx, _mm_movehl_ps(hx, hx));
    hx = _mm_max_ss(hx, _mm_movehdup_ps(hx));
    let (min, max) = (_mm_cvtss_f32(hn), _mm_cvtss_f32(hx));
    let (bn, bx) = (_mm256_set1_ps(min), _mm256_set1_ps(max));
    let (mut mkn, mut mkx) = (0u32, 0u32);
    for (i, vi) in v.iter().enumerate() {
        mkn |= (_mm256_movemask_ps(_mm256_cmp_ps::<_CMP_EQ_OQ>(*vi, bn)) as u32) << (8 * i);
        mkx |= (_mm256_movemask_ps(_mm256_cmp_ps::<_CMP_EQ_OQ>(*vi, bx)) as u32) << (8 * i);
    }
    // No element equal: the block is all NaN and the scan keeps its ±FLT_MAX start values.
    // SAFETY: indices < 32.
    let min = if mkn != 0 {
        unsafe { *p.add(mkn.trailing_zeros() as usize) }
    } else {
        min
    };
    let max = if mkx != 0 {
        unsafe { *p.add(mkx.trailing_zeros() as usize) }
    } else {
        max
    };
    (min, max)
}

#[inline]
#[target_feature(enable = "avx2")]
fn load4(p: *const f32) -> [__m256; 4] {
    // SAFETY: the caller passes a block of 32 floats.
    unsafe {
        [
            _mm256_loadu_ps(p),
            _mm256_loadu_ps(p.add(8)),
            _mm256_loadu_ps(p.add(16)),
            _mm256_loadu_ps(p.add(24)),
        ]
    }
}

/// `low byte of cvtt(fma(v - sub, id, add))` for a block, as 32 bytes in element order.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn quant_bytes_avx2(v: &[__m256; 4], sub: Option<f32>, id: f32, add: f32) -> __m256i {
    let idv = _mm256_set1_ps(id);
    let addv = _mm256_set1_ps(add);
    let f = |x: __m256| {
        let x = match sub {
            Some(s) => _mm256_sub_ps(x, _mm256_set1_ps(s)),
            None => x,
        };
        _mm256_cvttps_epi32(_mm256_fmadd_ps(x, idv, addv))
    };
    low_bytes_32(f(v[0]), f(v[1]), f(v[2]), f(v[3]))
}

/// Pack 32 bytes (element order) into 16 nibble bytes: `lo | (hi << 4)` keeping 8 bits,
/// as C's `(uint8_t)(xi0 | xi1 << 4)`.
#[inline]
#[target_feature(enable = "avx2")]
fn pack_nibbles(b: __m256i, lo_mask: bool) -> __m128i {
    let lo = _mm256_castsi256_si128(b);
    let hi = _mm256_extracti128_si256::<1>(b);
    let lo = if lo_mask {
        _mm_and_si128(lo, _mm_set1_epi8(0x0f))
    } else {
        lo
    };
    _mm_or_si128(
        lo,
        _mm_and_si128(_mm_slli_epi16::<4>(hi), _mm_set1_epi8(0xf0u8 as i8)),
    )
}

/// Bit 4 of each of 32 bytes as a u32 (element j -> bit j): the q5 `qh` word.
#[inline]
#[target_feature(enable = "avx2")]
fn bit4_mask(b: __m256i) -> u32 {
    _mm256_movemask_epi8(_mm256_slli_epi16::<3>(b)) as u32
}

/// Unpack 16 nibble bytes to 32 bytes (low nibbles, then high nibbles): ggml's `bytes_from_nibbles_32`.
#[inline]
#[target_feature(enable = "avx2")]
fn nibbles_32(p: *const u8) -> __m256i {
    // SAFETY: 16 readable bytes at p (a block's qs).
    let t = unsafe { _mm_loadu_si128(p as *const __m128i) };
    let b = _mm256_set_m128i(_mm_srli_epi16::<4>(t), t);
    _mm256_and_si256(b, _mm256_set1_epi8(0x0f))
}

/// 32 bits to 32 bytes: 0xFF where the bit is set (ggml's `bytes_from_bits_32`).
#[inline]
#[target_feature(enable = "avx2")]
fn bytes_from_bits(qh: [u8; 4]) -> __m256i {
    let x = _mm256_set1_epi32(u32::from_le_bytes(qh) as i32);
    let shuf = _mm256_set_epi64x(
        0x0303030303030303,
        0x0202020202020202,
        0x0101010101010101,
        0,
    );
    let b = _mm256_shuffle_epi8(x, shuf);
    let b = _mm256_or_si256(b, _mm256_set1_epi64x(0x7fbfdfeff7fbfdfe));
    _mm256_cmpeq_epi8(b, _mm256_set1_epi64x(-1))
}

/// Runs `$step` for every block pair with `$d = f16(x.$xd) * f16(y.$yd)` (and optionally
/// `$m = f16(x.$xm)`, `$s = f16(y.$ys)`), converting the scales eight blocks at a time.
macro_rules! for_blocks {
    ($x:expr, $y:expr, $xd:ident, $yd:ident, |$i:ident, $bx:ident, $by:ident, $d:ident| $step:block) => {{
        let (xs, ys) = ($x, $y);
        let n = xs.len().min(ys.len());
        let full = n / 8 * 8;
        let mut c = 0;
        while c < full {
            let cx: &[_; 8] = xs[c..c + 8].try_into().unwrap();
            let cy: &[_; 8] = ys[c..c + 8].try_into().unwrap();
            let (mut hx, mut hy) = ([0u16; 8], [0u16; 8]);
            for k in 0..8 {
                hx[k] = u16::from_le_bytes(cx[k].$xd);
                hy[k] = u16::from_le_bytes(cy[k].$yd);
            }
            let dd = mul_f16x8(&hx, &hy);
            for k in 0..8 {
                #[allow(unused_variables)]
                let ($i, $bx, $by, $d) = (c + k, &cx[k], &cy[k], dd[k]);
                $step
            }
            c += 8;
        }
        if full < n {
            let (mut hx, mut hy) = ([0u16; 8], [0u16; 8]);
            for k in 0..n - full {
                hx[k] = u16::from_le_bytes(xs[full + k].$xd);
                hy[k] = u16::from_le_bytes(ys[full + k].$yd);
            }
            let dd = mul_f16x8(&hx, &hy);
            for k in 0..n - full {
                #[allow(unused_variables)]
                let ($i, $bx, $by, $d) = (full + k, &xs[full + k], &ys[full + k], dd[k]);
                $step
            }
        }
    }};
    ($x:expr, $y:expr, $xd:ident, $yd:ident, $xm:ident, $ys:ident,
     |$i:ident, $bx:ident, $by:ident, $d:ident, $m:ident, $s:ident| $step:block) => {{
        let (xs, ys) = ($x, $y);
        let n = xs.len().min(ys.len());
        let full = n / 8 * 8;
        let mut c = 0;
        while c < full {
            let cx: &[_; 8] = xs[c..c + 8].try_into().unwrap();
            let cy: &[_; 8] = ys[c..c + 8].try_into().unwrap();
            let (mut hx, mut hy, mut hm, mut hs) = ([0u16; 8], [0u16; 8], [0u16; 8], [0u16; 8]);
            for k in 0..8 {
                hx[k] = u16::from_le_bytes(cx[k].$xd);
                hy[k] = u16::from_le_bytes(cy[k].$yd);
                hm[k] = u16::from_le_bytes(cx[k].$xm);
                hs[k] = u16::from_le_bytes(cy[k].$ys);
            }
            let (dd, mm, ss) = (mul_f16x8(&hx, &hy), f16x8(&hm), f16x8(&hs));
            for k in 0..8 {
                #[allow(unused_variables)]
                let ($i, $bx, $by, $d, $m, $s) = (c + k, &cx[k], &cy[k], dd[k], mm[k], ss[k]);
                $step
            }
            c += 8;
        }
        if full < n {
            let (mut hx, mut hy, mut hm, mut hs) = ([0u16; 8], [0u16; 8], [0u16; 8], [0u16; 8]);
            for k in 0..n - full {
                hx[k] = u16::from_le_bytes(xs[full + k].$xd);
                hy[k] = u16::from_le_bytes(ys[full + k].$yd);
                hm[k] = u16::from_le_bytes(xs[full + k].$xm);
                hs[k] = u16::from_le_bytes(ys[full + k].$ys);
            }
            let (dd, mm, ss) = (mul_f16x8(&hx, &hy), f16x8(&hm), f16x8(&hs));
            for k in 0..n - full {
                #[allow(unused_variables)]
                let ($i, $bx, $by, $d, $m, $s) =
                    (full + k, &xs[full + k], &ys[full + k], dd[k], mm[k], ss[k]);
                $step
            }
        }
    }};
}

/// Stamps out one vec_dot body three times: AVX2 (`vpmaddubsw` + `vpmaddwd`), AVX-512 VNNI
/// (`vpdpbusd`, what the reference uses where its helpers do) and the `Isa::Avx512` entry
/// that picks VNNI when the CPU has it. The integer lane sums are exact either way (no
/// saturation is possible for these operands), so all three give the same bits.
macro_rules! dot_kernels {
    ($avx2:ident, $vnni:ident, $avx512:ident, $tx:ty, $ty:ty, |$x:ident, $y:ident| $body:block) => {
        #[doc = concat!("`", stringify!($avx2), "`: AVX2 + FMA + F16C.")]
        #[target_feature(enable = "avx2,fma,f16c")]
        pub unsafe fn $avx2($x: &[$tx], $y: &[$ty]) -> f32 {
            #[allow(unused_imports)]
            use self::{mul_sum_i8_avx2 as mul_sum_i8, mul_sum_u8_avx2 as mul_sum_u8};
            #[allow(unused_imports)]
            use self::{q5_0_values_avx2 as q5_0_values, q5_1_values_avx2 as q5_1_values};
            $body
        }

        #[doc = concat!("`", stringify!($vnni), "`: AVX-512 VNNI/VL.")]
        #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
        pub unsafe fn $vnni($x: &[$tx], $y: &[$ty]) -> f32 {
            #[allow(unused_imports)]
            use self::{mul_sum_i8_vnni as mul_sum_i8, mul_sum_u8_vnni as mul_sum_u8};
            #[allow(unused_imports)]
            use self::{q5_0_values_bw as q5_0_values, q5_1_values_bw as q5_1_values};
            $body
        }

        #[doc = concat!("`", stringify!($avx512), "`: the `Isa::Avx512` entry (VNNI if present).")]
        #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
        pub unsafe fn $avx512($x: &[$tx], $y: &[$ty]) -> f32 {
            // SAFETY: the caller guarantees AVX-512 F/BW/VL; VNNI is checked here.
            unsafe {
                if std::arch::is_x86_feature_detected!("avx512vnni") {
                    $vnni($x, $y)
                } else {
                    $avx2($x, $y)
                }
            }
        }
    };
}

/// signed x signed bytes -> 8 float lanes of 4-product sums (`mul_sum_i8_pairs_float`).
#[inline]
#[target_feature(enable = "avx2")]
fn mul_sum_i8_avx2(x: __m256i, y: __m256i) -> __m256 {
    let ax = _mm256_sign_epi8(x, x);
    let sy = _mm256_sign_epi8(y, x);
    mul_sum_u8_avx2(ax, sy)
}

/// unsigned x signed bytes -> 8 float lanes of 4-product sums (`mul_sum_us8_pairs_float`).
#[inline]
#[target_feature(enable = "avx2")]
fn mul_sum_u8_avx2(ax: __m256i, sy: __m256i) -> __m256 {
    let dot = _mm256_maddubs_epi16(ax, sy);
    _mm256_cvtepi32_ps(_mm256_madd_epi16(dot, _mm256_set1_epi16(1)))
}

/// [`mul_sum_i8_avx2`] with `vpdpbusd` (ggml's `__AVX512VNNI__ && __AVX512VL__` helper).
#[inline]
#[target_feature(enable = "avx512vnni,avx512vl,avx2")]
fn mul_sum_i8_vnni(x: __m256i, y: __m256i) -> __m256 {
    let ax = _mm256_sign_epi8(x, x);
    let sy = _mm256_sign_epi8(y, x);
    mul_sum_u8_vnni(ax, sy)
}

/// [`mul_sum_u8_avx2`] with `vpdpbusd`.
#[inline]
#[target_feature(enable = "avx512vnni,avx512vl,avx2")]
fn mul_sum_u8_vnni(ax: __m256i, sy: __m256i) -> __m256 {
    _mm256_cvtepi32_ps(_mm256_dpbusd_epi32(_mm256_setzero_si256(), ax, sy))
}

#[inline]
#[target_feature(enable = "avx2")]
fn store_i8x8_scaled(out: *mut f32, q: __m128i, d: __m256) {
    // SAFETY: 8 writable floats at out.
    unsafe {
        _mm256_storeu_ps(
            out,
            _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q)), d),
        )
    }
}

#[inline]
#[target_feature(enable = "avx2,fma")]
fn store_u8x8_fma(out: *mut f32, q: __m128i, d: __m256, m: __m256) {
    // SAFETY: 8 writable floats at out.
    unsafe {
        _mm256_storeu_ps(
            out,
            _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(q)), d, m),
        )
    }
}

// ---------------------------------------------------------------------------------------
// q4_0
// ---------------------------------------------------------------------------------------

/// `quantize_row_q4_0_ref`, AVX2.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn quantize_q4_0_avx2(x: &[f32], y: &mut [BlockQ4_0]) {
    for (xb, yb) in x.chunks_exact(32).zip(y.iter_mut()) {
        let v = load4(xb.as_ptr());
        let (_, max) = amax_max_avx2(xb.as_ptr(), &v);
        let d = max / -8.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        yb.d = f32_to_f16le(d);
        let b = quant_bytes_avx2(&v, None, id, 8.5);
        let b = _mm256_min_epi8(b, _mm256_set1_epi8(15));
        // SAFETY: 16 writable bytes.
        unsafe { _mm_storeu_si128(yb.qs.as_mut_ptr() as *mut __m128i, pack_nibbles(b, false)) };
    }
}

/// `quantize_row_q4_0_ref`, AVX-512 (same bytes).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub unsafe fn quantize_q4_0_avx512(x: &[f32], y: &mut [BlockQ4_0]) {
    // SAFETY: same contract.
    unsafe { quantize_q4_0_avx2(x, y) }
}

/// `dequantize_row_q4_0`, AVX2.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dequantize_q4_0_avx2(x: &[BlockQ4_0], y: &mut [f32]) {
    for (xb, yb) in x.iter().zip(y.chunks_exact_mut(32)) {
        let d = _mm256_set1_ps(h2f(xb.d));
        let b = _mm256_sub_epi8(nibbles_32(xb.qs.as_ptr()), _mm256_set1_epi8(8));
        let lo = _mm256_castsi256_si128(b);
        let hi = _mm256_extracti128_si256::<1>(b);
        let o = yb.as_mut_ptr();
        // SAFETY: 32 writable floats.
        unsafe {
            store_i8x8_scaled(o, lo, d);
            store_i8x8_scaled(o.add(8), _mm_srli_si128::<8>(lo), d);
            store_i8x8_scaled(o.add(16), hi, d);
            store_i8x8_scaled(o.add(24), _mm_srli_si128::<8>(hi), d);
        }
    }
}

/// `dequantize_row_q4_0`, AVX-512.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub unsafe fn dequantize_q4_0_avx512(x: &[BlockQ4_0], y: &mut [f32]) {
    for (xb, yb) in x.iter().zip(y.chunks_exact_mut(32)) {
        let d = _mm512_set1_ps(h2f(xb.d));
        let b = _mm256_sub_epi8(nibbles_32(xb.qs.as_ptr()), _mm256_set1_epi8(8));
        let o = yb.as_mut_ptr();
        let lo = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_castsi256_si128(b)));
        let hi = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_extracti128_si256::<1>(b)));
        // SAFETY: 32 writable floats.
        unsafe {
            _mm512_storeu_ps(o, _mm512_mul_ps(lo, d));
            _mm512_storeu_ps(o.add(16), _mm512_mul_ps(hi, d));
        }
    }
}

dot_kernels!(
    vec_dot_q4_0_avx2,
    vec_dot_q4_0_vnni,
    vec_dot_q4_0_avx512,
    BlockQ4_0,
    BlockQ8_0,
    |x, y| {
        // `ggml_vec_dot_q4_0_q8_0`, `__AVX2__` path.
        let mut acc = _mm256_setzero_ps();
        for_blocks!(x, y, d, d, |_i, bx, by, d| {
            let qx = _mm256_sub_epi8(nibbles_32(bx.qs.as_ptr()), _mm256_set1_epi8(8));
            // SAFETY: 32 readable bytes.
            let qy = unsafe { _mm256_loadu_si256(by.qs.as_ptr() as *const __m256i) };
            acc = _mm256_fmadd_ps(_mm256_set1_ps(d), mul_sum_i8(qx, qy), acc);
        });
        hsum8(acc)
    }
);

// ---------------------------------------------------------------------------------------
// q5_0
// ---------------------------------------------------------------------------------------

/// The 32 signed values (`q - 16`) of a q5_0 block, as ggml's AVX2 vec_dot builds them.
#[inline]
#[target_feature(enable = "avx2")]
fn q5_0_values_avx2(b: &BlockQ5_0) -> __m256i {
    let hi = _mm256_andnot_si256(bytes_from_bits(b.qh), _mm256_set1_epi8(0xf0u8 as i8));
    _mm256_or_si256(nibbles_32(b.qs.as_ptr()), hi)
}

/// [`q5_0_values_avx2`] with an AVX-512BW byte mask.
#[inline]
#[target_feature(enable = "avx512bw,avx512vl,avx2")]
fn q5_0_values_bw(b: &BlockQ5_0) -> __m256i {
    let hi = _mm256_maskz_mov_epi8(!u32::from_le_bytes(b.qh), _mm256_set1_epi8(0xf0u8 as i8));
    _mm256_or_si256(nibbles_32(b.qs.as_ptr()), hi)
}

/// `quantize_row_q5_0_ref`, AVX2 (also used on AVX-512 machines).
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn quantize_q5_0_avx2(x: &[f32], y: &mut [BlockQ5_0]) {
    for (xb, yb) in x.chunks_exact(32).zip(y.iter_mut()) {
        let v = load4(xb.as_ptr());
        let (_, max) = amax_max_avx2(xb.as_ptr(), &v);
        let d = max / -16.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        yb.d = f32_to_f16le(d);
        let b = quant_bytes_avx2(&v, None, id, 16.5);
        let b = _mm256_min_epi8(b, _mm256_set1_epi8(31));
        yb.qh = bit4_mask(b).to_le_bytes();
        // SAFETY: 16 writable bytes.
        unsafe { _mm_storeu_si128(yb.qs.as_mut_ptr() as *mut __m128i, pack_nibbles(b, true)) };
    }
}

/// `dequantize_row_q5_0`, AVX2.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dequantize_q5_0_avx2(x: &[BlockQ5_0], y: &mut [f32]) {
    for (xb, yb) in x.iter().zip(y.chunks_exact_mut(32)) {
        let d = _mm256_set1_ps(h2f(xb.d));
        let b = q5_0_values_avx2(xb);
        let lo = _mm256_castsi256_si128(b);
        let hi = _mm256_extracti128_si256::<1>(b);
        let o = yb.as_mut_ptr();
        // SAFETY: 32 writable floats.
        unsafe {
            store_i8x8_scaled(o, lo, d);
            store_i8x8_scaled(o.add(8), _mm_srli_si128::<8>(lo), d);
            store_i8x8_scaled(o.add(16), hi, d);
            store_i8x8_scaled(o.add(24), _mm_srli_si128::<8>(hi), d);
        }
    }
}

/// `dequantize_row_q5_0`, AVX-512.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub unsafe fn dequantize_q5_0_avx512(x: &[BlockQ5_0], y: &mut [f32]) {
    for (xb, yb) in x.iter().zip(y.chunks_exact_mut(32)) {
        let d = _mm512_set1_ps(h2f(xb.d));
        let hi5 = _mm256_maskz_mov_epi8(!u32::from_le_bytes(xb.qh), _mm256_set1_epi8(0xf0u8 as i8));
        let b = _mm256_or_si256(nibbles_32(xb.qs.as_ptr()), hi5);
        let o = yb.as_mut_ptr();
        let lo = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_castsi256_si128(b)));
        let hi = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_extracti128_si256::<1>(b)));
        // SAFETY: 32 writable floats.
        unsafe {
            _mm512_storeu_ps(o, _mm512_mul_ps(lo, d));
            _mm512_storeu_ps(o.add(16), _mm512_mul_ps(hi, d));
        }
    }
}

dot_kernels!(
    vec_dot_q5_0_avx2,
    vec_dot_q5_0_vnni,
    vec_dot_q5_0_avx512,
    BlockQ5_0,
    BlockQ8_0,
    |x, y| {
        // `ggml_vec_dot_q5_0_q8_0`, `__AVX2__` path.
        let mut acc = _mm256_setzero_ps();
        for_blocks!(x, y, d, d, |_i, bx, by, d| {
            let qx = q5_0_values(bx);
            // SAFETY: 32 readable bytes.
            let qy = unsafe { _mm256_loadu_si256(by.qs.as_ptr() as *const __m256i) };
            acc = _mm256_fmadd_ps(_mm256_set1_ps(d), mul_sum_i8(qx, qy), acc);
        });
        hsum8(acc)
    }
);

// ---------------------------------------------------------------------------------------
// q4_1 / q5_1
// ---------------------------------------------------------------------------------------

/// `quantize_row_q4_1_ref`, AVX2 (also used on AVX-512 machines).
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn quantize_q4_1_avx2(x: &[f32], y: &mut [BlockQ4_1]) {
    for (xb, yb) in x.chunks_exact(32).zip(y.iter_mut()) {
        let v = load4(xb.as_ptr());
        let (min, max) = min_max_avx2(xb.as_ptr(), &v);
        let d = (max - min) / 15.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        yb.d = f32_to_f16le(d);
        yb.m = f32_to_f16le(min);
        let b = quant_bytes_avx2(&v, Some(min), id, 0.5);
        let b = _mm256_min_epi8(b, _mm256_set1_epi8(15));
        // SAFETY: 16 writable bytes.
        unsafe { _mm_storeu_si128(yb.qs.as_mut_ptr() as *mut __m128i, pack_nibbles(b, false)) };
    }
}

/// `quantize_row_q5_1_ref`, AVX2 (also used on AVX-512 machines).
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn quantize_q5_1_avx2(x: &[f32], y: &mut [BlockQ5_1]) {
    for (xb, yb) in x.chunks_exact(32).zip(y.iter_mut()) {
        let v = load4(xb.as_ptr());
        let (min, max) = min_max_avx2(xb.as_ptr(), &v);
        let d = (max - min) / 31.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        yb.d = f32_to_f16le(d);
        yb.m = f32_to_f16le(min);
        let b = quant_bytes_avx2(&v, Some(min), id, 0.5);
        yb.qh = bit4_mask(b).to_le_bytes();
        // SAFETY: 16 writable bytes.
        unsafe { _mm_storeu_si128(yb.qs.as_mut_ptr() as *mut __m128i, pack_nibbles(b, true)) };
    }
}

/// The 32 unsigned 5-bit values of a q5_1 block (as ggml's AVX2 vec_dot builds them).
#[inline]
#[target_feature(enable = "avx2")]
fn q5_1_values_avx2(qs: &[u8; 16], qh: [u8; 4]) -> __m256i {
    let hi = _mm256_and_si256(bytes_from_bits(qh), _mm256_set1_epi8(0x10));
    _mm256_or_si256(nibbles_32(qs.as_ptr()), hi)
}

/// [`q5_1_values_avx2`] with an AVX-512BW byte mask.
#[inline]
#[target_feature(enable = "avx512bw,avx512vl,avx2")]
fn q5_1_values_bw(qs: &[u8; 16], qh: [u8; 4]) -> __m256i {
    let hi = _mm256_maskz_mov_epi8(u32::from_le_bytes(qh), _mm256_set1_epi8(0x10));
    _mm256_or_si256(nibbles_32(qs.as_ptr()), hi)
}

#[inline]
#[target_feature(enable = "avx2,fma")]
fn store_u8x32_fma(o: *mut f32, b: __m256i, d: __m256, m: __m256) {
    let lo = _mm256_castsi256_si128(b);
    let hi = _mm256_extracti128_si256::<1>(b);
    // SAFETY: 32 writable floats.
    unsafe {
        store_u8x8_fma(o, lo, d, m);
        store_u8x8_fma(o.add(8), _mm_srli_si128::<8>(lo), d, m);
        store_u8x8_fma(o.add(16), hi, d, m);
        store_u8x8_fma(o.add(24), _mm_srli_si128::<8>(hi), d, m);
    }
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
fn store_u8x32_fma_512(o: *mut f32, b: __m256i, d: __m512, m: __m512) {
    let lo = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm256_castsi256_si128(b)));
    let hi = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm256_extracti128_si256::<1>(b)));
    // SAFETY: 32 writable floats.
    unsafe {
        _mm512_storeu_ps(o, _mm512_fmadd_ps(lo, d, m));
        _mm512_storeu_ps(o.add(16), _mm512_fmadd_ps(hi, d, m));
    }
}

/// `dequantize_row_q4_1` (`fma(q, d, m)`), AVX2.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dequantize_q4_1_avx2(x: &[BlockQ4_1], y: &mut [f32]) {
    for (xb, yb) in x.iter().zip(y.chunks_exact_mut(32)) {
        let d = _mm256_set1_ps(h2f(xb.d));
        let m = _mm256_set1_ps(h2f(xb.m));
        store_u8x32_fma(yb.as_mut_ptr(), nibbles_32(xb.qs.as_ptr()), d, m);
    }
}

/// `dequantize_row_q4_1`, AVX-512.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub unsafe fn dequantize_q4_1_avx512(x: &[BlockQ4_1], y: &mut [f32]) {
    for (xb, yb) in x.iter().zip(y.chunks_exact_mut(32)) {
        let d = _mm512_set1_ps(h2f(xb.d));
        let m = _mm512_set1_ps(h2f(xb.m));
        store_u8x32_fma_512(yb.as_mut_ptr(), nibbles_32(xb.qs.as_ptr()), d, m);
    }
}

/// `dequantize_row_q5_1` (`fma(q, d, m)`), AVX2.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dequantize_q5_1_avx2(x: &[BlockQ5_1], y: &mut [f32]) {
    for (xb, yb) in x.iter().zip(y.chunks_exact_mut(32)) {
        let d = _mm256_set1_ps(h2f(xb.d));
        let m = _mm256_set1_ps(h2f(xb.m));
        store_u8x32_fma(yb.as_mut_ptr(), q5_1_values_avx2(&xb.qs, xb.qh), d, m);
    }
}

/// `dequantize_row_q5_1`, AVX-512.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub unsafe fn dequantize_q5_1_avx512(x: &[BlockQ5_1], y: &mut [f32]) {
    for (xb, yb) in x.iter().zip(y.chunks_exact_mut(32)) {
        let d = _mm512_set1_ps(h2f(xb.d));
        let m = _mm512_set1_ps(h2f(xb.m));
        let hi = _mm256_maskz_mov_epi8(u32::from_le_bytes(xb.qh), _mm256_set1_epi8(0x10));
        let b = _mm256_or_si256(nibbles_32(xb.qs.as_ptr()), hi);
        store_u8x32_fma_512(yb.as_mut_ptr(), b, d, m);
    }
}

dot_kernels!(
    vec_dot_q4_1_avx2,
    vec_dot_q4_1_vnni,
    vec_dot_q4_1_avx512,
    BlockQ4_1,
    BlockQ8_1,
    |x, y| {
        // `ggml_vec_dot_q4_1_q8_1`, AVX2 path: `summs = fma(m, s, summs)` (gcc contracts it).
        let mut acc = _mm256_setzero_ps();
        let mut summs = 0f32;
        for_blocks!(x, y, d, d, m, s, |_i, bx, by, d, m, s| {
            summs = m.mul_add(s, summs);
            let qx = nibbles_32(bx.qs.as_ptr());
            // SAFETY: 32 readable bytes.
            let qy = unsafe { _mm256_loadu_si256(by.qs.as_ptr() as *const __m256i) };
            acc = _mm256_fmadd_ps(_mm256_set1_ps(d), mul_sum_u8(qx, qy), acc);
        });
        hsum8(acc) + summs
    }
);

dot_kernels!(
    vec_dot_q5_1_avx2,
    vec_dot_q5_1_vnni,
    vec_dot_q5_1_avx512,
    BlockQ5_1,
    BlockQ8_1,
    |x, y| {
        // `ggml_vec_dot_q5_1_q8_1`, AVX2 path.
        let mut acc = _mm256_setzero_ps();
        let mut summs = 0f32;
        for_blocks!(x, y, d, d, m, s, |_i, bx, by, d, m, s| {
            summs = m.mul_add(s, summs);
            let qx = q5_1_values(&bx.qs, bx.qh);
            // SAFETY: 32 readable bytes.
            let qy = unsafe { _mm256_loadu_si256(by.qs.as_ptr() as *const __m256i) };
            acc = _mm256_fmadd_ps(mul_sum_u8(qx, qy), _mm256_set1_ps(d), acc);
        });
        hsum8(acc) + summs
    }
);

// ---------------------------------------------------------------------------------------
// iq4_nl
// ---------------------------------------------------------------------------------------

/// The 32 table values (`kvalues_iq4nl[idx]`, element order) of an iq4_nl block.
#[inline]
#[target_feature(enable = "avx2")]
fn iq4_nl_values(qs: &[u8; 16]) -> __m256i {
    // SAFETY: 16 readable bytes each.
    let table =
        unsafe { _mm_loadu_si128(crate::quant::iq4_nl::KVALUES.as_ptr() as *const __m128i) };
    let t = unsafe { _mm_loadu_si128(qs.as_ptr() as *const __m128i) };
    let m4 = _mm_set1_epi8(0x0f);
    let lo = _mm_shuffle_epi8(table, _mm_and_si128(t, m4));
    let hi = _mm_shuffle_epi8(table, _mm_and_si128(_mm_srli_epi16::<4>(t), m4));
    _mm256_set_m128i(hi, lo)
}

/// `dequantize_row_iq4_nl`, AVX2.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dequantize_iq4_nl_avx2(x: &[BlockIq4Nl], y: &mut [f32]) {
    for (xb, yb) in x.iter().zip(y.chunks_exact_mut(32)) {
        let d = _mm256_set1_ps(h2f(xb.d));
        let b = iq4_nl_values(&xb.qs);
        let lo = _mm256_castsi256_si128(b);
        let hi = _mm256_extracti128_si256::<1>(b);
        let o = yb.as_mut_ptr();
        // SAFETY: 32 writable floats.
        unsafe {
            store_i8x8_scaled(o, lo, d);
            store_i8x8_scaled(o.add(8), _mm_srli_si128::<8>(lo), d);
            store_i8x8_scaled(o.add(16), hi, d);
            store_i8x8_scaled(o.add(24), _mm_srli_si128::<8>(hi), d);
        }
    }
}

/// `dequantize_row_iq4_nl`, AVX-512.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub unsafe fn dequantize_iq4_nl_avx512(x: &[BlockIq4Nl], y: &mut [f32]) {
    for (xb, yb) in x.iter().zip(y.chunks_exact_mut(32)) {
        let d = _mm512_set1_ps(h2f(xb.d));
        let b = iq4_nl_values(&xb.qs);
        let o = yb.as_mut_ptr();
        let lo = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_castsi256_si128(b)));
        let hi = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_extracti128_si256::<1>(b)));
        // SAFETY: 32 writable floats.
        unsafe {
            _mm512_storeu_ps(o, _mm512_mul_ps(d, lo));
            _mm512_storeu_ps(o.add(16), _mm512_mul_ps(d, hi));
        }
    }
}

dot_kernels!(
    vec_dot_iq4_nl_avx2,
    vec_dot_iq4_nl_vnni,
    vec_dot_iq4_nl_avx512,
    BlockIq4Nl,
    BlockQ8_0,
    |x, y| {
        // `ggml_vec_dot_iq4_nl_q8_0`, `__AVX2__` path: even blocks into acc1, odd into acc2,
        // an odd last block in the scalar tail (`sumf += d * sumi`, not contracted).
        let mut acc1 = _mm256_setzero_ps();
        let mut acc2 = _mm256_setzero_ps();
        let pairs = x.len().min(y.len()) / 2;
        for_blocks!(&x[..2 * pairs], &y[..2 * pairs], d, d, |i, bx, by, d| {
            let q = iq4_nl_values(&bx.qs);
            // SAFETY: 32 readable bytes.
            let qy = unsafe { _mm256_loadu_si256(by.qs.as_ptr() as *const __m256i) };
            if i & 1 == 0 {
                acc1 = _mm256_fmadd_ps(_mm256_set1_ps(d), mul_sum_i8(q, qy), acc1);
            } else {
                acc2 = _mm256_fmadd_ps(_mm256_set1_ps(d), mul_sum_i8(q, qy), acc2);
            }
        });
        let mut sumf = hsum8(_mm256_add_ps(acc1, acc2));
        for (bx, by) in x.iter().zip(y).skip(2 * pairs) {
            sumf += crate::quant::iq4_nl::tail_block(bx, by);
        }
        sumf
    }
);
