//! x86 kernels (q4_0, q4_1, q5_0, q5_1, iq4_nl). Owned by the quant work; see the safe
//! wrappers in `crate::quant::{q4_0, q4_1, q5_0, q5_1, iq4_nl}` for contracts.
//!
//! Every kernel here reproduces, bit for bit, what the pinned ggml computes on x86 with
//! gcc -O3 -march=native (AVX-512): the reference quantizers' FMA-contracted
//! `x*id + c`, `vcvttps2dq` + low-byte truncation, and the vec_dots' per-block
//! `fma(dx*dy, (float)lane, acc)` over 8 float lanes followed by `hsum_float_8`.
//!
//! Speed (rows are often 4 blocks, so per-call work counts as much as per-block work):
//! * vec_dot: 4 blocks per iteration; the 8 f16 scales of 4 block pairs are loaded straight
//!   into one vector each side (`vmovd` + `vpinsrd`), converted with one `vcvtph2ps` and
//!   multiplied with one `vmulps` (F16C gives the same values as ggml's f16 table); the
//!   integer lane sums of all 4 blocks are independent of the accumulator, so the FMA chain
//!   (in ggml's block order) is the only serial dependency. Lane sums of `(u - c) * y` use
//!   `u*y - c*y` (two `vpdpbusd`, or two `vpmaddubsw` and one 16-bit subtract) instead of
//!   the sign trick: the same exact integers. The safe wrappers reach the kernels with
//!   a tail call and no stack frame ([`dot_kernel_fast`]).
//! * iq4_nl quantize: the nearest-value search is branch-free across 8 lanes (upstream's
//!   binary search mispredicts on every element); the weighted sums stay scalar and in
//!   upstream's order, two blocks interleaved.
//!
//! Callers guarantee: `x.len() == 32 * y.len()` for (de)quantization, equal block counts for
//! vec_dot, and that the CPU has the enabled features.
use crate::quant::fp16::f32_to_f16le;
use crate::quant::{BlockIq4Nl, BlockQ4_0, BlockQ4_1, BlockQ5_0, BlockQ5_1, BlockQ8_0, BlockQ8_1};
use crate::simd::Isa;
use core::arch::x86_64::*;
use std::sync::atomic::{AtomicU8, Ordering};

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

/// The first 32 bits of each of 4 blocks (`s` bytes apart) in the 4 lanes of a vector,
/// loaded straight into it (`vmovd` + 3 `vpinsrd` with memory operands: no GPRs).
///
/// # Safety
/// 4 blocks of at least 4 bytes at `p`; SSE4.1 (implied by AVX2 in every caller).
#[inline(always)]
unsafe fn dwords4(p: *const u8, s: usize) -> __m128i {
    // SAFETY: forwarded.
    unsafe {
        let r = |k: usize| (p.add(k * s) as *const i32).read_unaligned();
        let v = _mm_cvtsi32_si128(r(0));
        let v = _mm_insert_epi32::<1>(v, r(1));
        let v = _mm_insert_epi32::<2>(v, r(2));
        _mm_insert_epi32::<3>(v, r(3))
    }
}

/// `f16(x_k.d) * f16(y_k.d)` for 4 consecutive block pairs (`d` the first f16 of each block,
/// blocks `SX` / `SY` bytes long), AVX2 + F16C: each block's first 32 bits (its `d` and the
/// next half, converted too and then dropped) loaded into one vector ([`dwords4`]),
/// `vcvtph2ps`, `vmulps`. Same bits as ggml's table lookup + `vmulss`.
///
/// # Safety
/// 4 whole blocks at `px` and at `py`.
#[inline]
#[target_feature(enable = "avx2,f16c")]
unsafe fn d4_avx2<const SX: usize, const SY: usize>(px: *const u8, py: *const u8) -> __m256 {
    // SAFETY: forwarded.
    let (x, y) = unsafe {
        (
            _mm256_cvtph_ps(dwords4(px, SX)),
            _mm256_cvtph_ps(dwords4(py, SY)),
        )
    };
    // [d0 _ d1 _ d2 _ d3 _]: block k's product in lane 2k (see `splat_even`)
    _mm256_mul_ps(x, y)
}

/// [`d4_avx2`] plus the second f16 of each block: `(d_k, m_k = f16(x_k.m), s_k = f16(y_k.s))`.
/// Each block's two halves are one 32-bit load; a `vpermps` per side separates them.
///
/// # Safety
/// 4 whole blocks at `px` and at `py`.
#[inline]
#[target_feature(enable = "avx2,f16c")]
unsafe fn d4m_avx2<const SX: usize, const SY: usize>(
    px: *const u8,
    py: *const u8,
) -> (__m128, __m128, __m128) {
    // [d0 m0 d1 m1 d2 m2 d3 m3] -> [d0 d1 d2 d3 m0 m1 m2 m3]
    let sep = _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7);
    // SAFETY: forwarded.
    let (x, y) = unsafe {
        (
            _mm256_cvtph_ps(dwords4(px, SX)),
            _mm256_cvtph_ps(dwords4(py, SY)),
        )
    };
    let (x, y) = (
        _mm256_permutevar8x32_ps(x, sep),
        _mm256_permutevar8x32_ps(y, sep),
    );
    let d = _mm_mul_ps(_mm256_castps256_ps128(x), _mm256_castps256_ps128(y));
    (
        d,
        _mm256_extractf128_ps::<1>(x),
        _mm256_extractf128_ps::<1>(y),
    )
}

// (An AVX-512BW variant gathering the halves with masked 64-byte loads + `vpermw`/`vpermt2w`
// measured slower than the GPR assembly above; unmasked wide loads let LLVM reuse them for
// the quant bytes through GPRs and `vpinsrb`, far slower still.)

/// `f16(a) * f16(b)` for one block pair (the row's tail).
#[inline]
#[target_feature(enable = "f16c")]
fn d1(a: [u8; 2], b: [u8; 2]) -> f32 {
    let h = u16::from_le_bytes(a) as i32 | (u16::from_le_bytes(b) as i32) << 16;
    let v = _mm_cvtph_ps(_mm_cvtsi32_si128(h));
    _mm_cvtss_f32(_mm_mul_ss(v, _mm_movehdup_ps(v)))
}

/// Lane `K` of `v` broadcast to 8 lanes.
#[inline(always)]
fn splat<const K: i32>(v: __m128) -> __m256 {
    // SAFETY: AVX2 is enabled in every caller (all are `#[target_feature(enable = "avx2")]`).
    unsafe { _mm256_permutevar8x32_ps(_mm256_castps128_ps256(v), _mm256_set1_epi32(K)) }
}

/// Lane `2K` of `v` broadcast to 8 lanes (one `vpermps`).
#[inline(always)]
fn splat_even<const K: i32>(v: __m256) -> __m256 {
    // SAFETY: AVX2 is enabled in every caller (all are `#[target_feature(enable = "avx2")]`).
    unsafe { _mm256_permutevar8x32_ps(v, _mm256_set1_epi32(2 * K)) }
}

/// Lane `K` of `v` as a scalar.
#[inline(always)]
fn lane<const K: i32>(v: __m128) -> f32 {
    // SAFETY: SSE is baseline on x86-64.
    unsafe { _mm_cvtss_f32(_mm_permute_ps::<K>(v)) }
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
/// Built as `vbroadcasti128` (a pure load) + `vpsrlvd` (0 in the low half, 4 in the high
/// half; bits shifted in from the next byte are masked off) + `vpand`, instead of
/// `vpsrlw` + `vinserti128` (a shuffle-port µop) + `vpand`.
#[inline]
#[target_feature(enable = "avx2")]
fn nibbles_32(p: *const u8) -> __m256i {
    // SAFETY: 16 readable bytes at p (a block's qs).
    let t = unsafe { _mm256_broadcastsi128_si256(_mm_loadu_si128(p as *const __m128i)) };
    let b = _mm256_srlv_epi32(t, _mm256_setr_epi32(0, 0, 0, 0, 4, 4, 4, 4));
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

/// Runs `$step` for every block pair of `$x: &[$tx]`, `$y: &[$ty]` with `$d` = the broadcast
/// `f16(x.d) * f16(y.d)` (`$d4` computes 4 of them at once), 4 blocks per iteration: the
/// 4 integer parts do not depend on the accumulator, so the only serial dependency left is
/// the caller's FMA chain. `$k` is the block index modulo 4 (a constant in the unrolled body).
/// With `$m, $s` (the `_1` formats), `$d4` also returns the mins `f16(x.m)` and the sums
/// `f16(y.s)`, handed to `$step` as scalars.
macro_rules! blocks_d {
    ($x:expr, $y:expr, $tx:ty, $ty:ty, $d4:ident, |$k:ident, $bx:ident, $by:ident, $d:ident| $step:block) => {{
        let (xs, ys): (&[$tx], &[$ty]) = ($x, $y);
        let n = xs.len().min(ys.len());
        let (px, py) = (xs.as_ptr(), ys.as_ptr());
        let mut i = 0;
        while i + 4 <= n {
            // SAFETY: blocks i..i+4 exist in both rows.
            let (dd, x4, y4) = unsafe {
                (
                    $d4::<{ size_of::<$tx>() }, { size_of::<$ty>() }>(
                        px.add(i) as *const u8,
                        py.add(i) as *const u8,
                    ),
                    &*(px.add(i) as *const [$tx; 4]),
                    &*(py.add(i) as *const [$ty; 4]),
                )
            };
            blocks_d!(@one 0, x4, y4, splat_even::<0>(dd), $k, $bx, $by, $d, $step);
            blocks_d!(@one 1, x4, y4, splat_even::<1>(dd), $k, $bx, $by, $d, $step);
            blocks_d!(@one 2, x4, y4, splat_even::<2>(dd), $k, $bx, $by, $d, $step);
            blocks_d!(@one 3, x4, y4, splat_even::<3>(dd), $k, $bx, $by, $d, $step);
            i += 4;
        }
        while i < n {
            // SAFETY: i < n.
            let ($bx, $by) = unsafe { (&*px.add(i), &*py.add(i)) };
            #[allow(unused_variables)]
            let $k: usize = i & 3;
            let $d = _mm256_set1_ps(d1($bx.d, $by.d));
            $step
            i += 1;
        }
    }};
    ($x:expr, $y:expr, $tx:ty, $ty:ty, $d4:ident,
     |$k:ident, $bx:ident, $by:ident, $d:ident, $m:ident, $s:ident| $step:block) => {{
        let (xs, ys): (&[$tx], &[$ty]) = ($x, $y);
        let n = xs.len().min(ys.len());
        let (px, py) = (xs.as_ptr(), ys.as_ptr());
        let mut i = 0;
        while i + 4 <= n {
            // SAFETY: blocks i..i+4 exist in both rows.
            let ((dd, mm, ss), x4, y4) = unsafe {
                (
                    $d4::<{ size_of::<$tx>() }, { size_of::<$ty>() }>(
                        px.add(i) as *const u8,
                        py.add(i) as *const u8,
                    ),
                    &*(px.add(i) as *const [$tx; 4]),
                    &*(py.add(i) as *const [$ty; 4]),
                )
            };
            blocks_d!(@onem 0, x4, y4, dd, mm, ss, $k, $bx, $by, $d, $m, $s, $step);
            blocks_d!(@onem 1, x4, y4, dd, mm, ss, $k, $bx, $by, $d, $m, $s, $step);
            blocks_d!(@onem 2, x4, y4, dd, mm, ss, $k, $bx, $by, $d, $m, $s, $step);
            blocks_d!(@onem 3, x4, y4, dd, mm, ss, $k, $bx, $by, $d, $m, $s, $step);
            i += 4;
        }
        while i < n {
            // SAFETY: i < n.
            let ($bx, $by) = unsafe { (&*px.add(i), &*py.add(i)) };
            #[allow(unused_variables)]
            let $k: usize = i & 3;
            let $d = _mm256_set1_ps(d1($bx.d, $by.d));
            let ($m, $s) = (h2f($bx.m), h2f($by.s));
            $step
            i += 1;
        }
    }};
    (@one $kk:literal, $x4:ident, $y4:ident, $dv:expr, $k:ident, $bx:ident, $by:ident, $d:ident, $step:block) => {{
        #[allow(unused_variables)]
        let $k: usize = $kk;
        let ($bx, $by) = (&$x4[$kk], &$y4[$kk]);
        let $d = $dv;
        $step
    }};
    (@onem $kk:literal, $x4:ident, $y4:ident, $dd:ident, $mm:ident, $ss:ident,
     $k:ident, $bx:ident, $by:ident, $d:ident, $m:ident, $s:ident, $step:block) => {{
        #[allow(unused_variables)]
        let $k: usize = $kk;
        let ($bx, $by) = (&$x4[$kk], &$y4[$kk]);
        let ($d, $m, $s) = (splat::<$kk>($dd), lane::<$kk>($mm), lane::<$kk>($ss));
        $step
    }};
}

/// Whether the CPU has AVX-512 VNNI: 0 = not asked yet, 1 = no, 2 = yes.
static VNNI: AtomicU8 = AtomicU8::new(0);

/// Which vec_dot kernel the `Isa::Avx512` entries pick (also caches the answer for
/// [`dot_kernel_fast`]).
fn has_vnni() -> bool {
    match VNNI.load(Ordering::Relaxed) {
        2 => true,
        1 => false,
        _ => {
            let v = std::arch::is_x86_feature_detected!("avx512vnni");
            VNNI.store(1 + v as u8, Ordering::Relaxed);
            v
        }
    }
}

/// The vec_dot kernel family for this thread, decided without any call (see
/// [`crate::simd::isa_fast`]); `None` means "ask the full dispatch".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DotKernel {
    /// `vec_dot_*_avx2` (AVX2 machines, and AVX-512 ones without VNNI)
    Avx2,
    /// `vec_dot_*_vnni`
    Vnni,
}

/// See [`DotKernel`]. Only ever reports a kernel the CPU can run.
#[inline(always)]
pub fn dot_kernel_fast() -> Option<DotKernel> {
    match crate::simd::isa_fast()? {
        Isa::Avx2 => Some(DotKernel::Avx2),
        Isa::Avx512 => match VNNI.load(Ordering::Relaxed) {
            2 => Some(DotKernel::Vnni),
            1 => Some(DotKernel::Avx2),
            _ => None,
        },
        Isa::Scalar => None,
    }
}

/// Stamps out one vec_dot body three times: AVX2 (`vpmaddubsw` + `vpmaddwd`), AVX-512 VNNI
/// (`vpdpbusd`, what the reference uses where its helpers do) and the `Isa::Avx512` entry
/// that picks VNNI when the CPU has it. The integer lane sums are exact either way (no
/// saturation is possible for these operands), so all three give the same bits. (On this
/// machine, gathering the scales with AVX-512BW masked loads + `vpermw`/`vpermt2w` measured
/// slower than `vpinsrd`, and the unsigned-offset form for iq4_nl slower than the sign trick.)
macro_rules! dot_kernels {
    ($avx2:ident, $vnni:ident, $avx512:ident, $tx:ty, $ty:ty, |$x:ident, $y:ident| $body:block) => {
        #[doc = concat!("`", stringify!($avx2), "`: AVX2 + FMA + F16C.")]
        #[inline]
        #[target_feature(enable = "avx2,fma,f16c")]
        pub unsafe fn $avx2($x: &[$tx], $y: &[$ty]) -> f32 {
            #[allow(unused_imports)]
            use self::iq4_nl_lanes_avx2 as iq4_nl_lanes;
            #[allow(unused_imports)]
            use self::mul_sum_off_avx2 as mul_sum_off;
            #[allow(unused_imports)]
            use self::q5_1_values_avx2 as q5_1_values;
            #[allow(unused_imports)]
            use self::{d4_avx2 as d4, d4m_avx2 as d4m};
            #[allow(unused_imports)]
            use self::{mul_sum_i8_avx2 as mul_sum_i8, mul_sum_u8_avx2 as mul_sum_u8};
            $body
        }

        #[doc = concat!("`", stringify!($vnni), "`: AVX-512 VNNI/VL.")]
        #[inline]
        #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
        pub unsafe fn $vnni($x: &[$tx], $y: &[$ty]) -> f32 {
            #[allow(unused_imports)]
            use self::iq4_nl_lanes_vnni as iq4_nl_lanes;
            #[allow(unused_imports)]
            use self::mul_sum_off_vnni as mul_sum_off;
            #[allow(unused_imports)]
            use self::q5_1_values_bw as q5_1_values;
            #[allow(unused_imports)]
            use self::{d4_avx2 as d4, d4m_avx2 as d4m};
            #[allow(unused_imports)]
            use self::{mul_sum_i8_vnni as mul_sum_i8, mul_sum_u8_vnni as mul_sum_u8};
            $body
        }

        #[doc = concat!("`", stringify!($avx512), "`: the `Isa::Avx512` entry (VNNI if present).")]
        #[doc = ""]
        #[doc = "# Safety"]
        #[doc = "The CPU has AVX-512 F/BW/VL (`Isa::Avx512`)."]
        #[inline(always)]
        pub unsafe fn $avx512($x: &[$tx], $y: &[$ty]) -> f32 {
            // SAFETY: the caller guarantees AVX-512 F/BW/VL; VNNI is checked here. Not a
            // target_feature function itself, so it inlines into the safe wrapper and the
            // kernel is the only call.
            unsafe {
                if has_vnni() {
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

/// Lane sums of `(u - OFF) * y` for unsigned `u` (< 32) and signed `y`: `u*y` and `OFF*y`
/// products summed separately (`vpmaddubsw`, no saturation possible: |pair| <= 31*128*2)
/// and subtracted in 16 bits, then `vpmaddwd`. The same exact integers as ggml's sign trick
/// on `u - OFF`, one instruction fewer.
#[inline]
#[target_feature(enable = "avx2")]
fn mul_sum_off_avx2<const OFF: i8>(u: __m256i, y: __m256i) -> __m256 {
    let p = _mm256_maddubs_epi16(u, y);
    let c = _mm256_maddubs_epi16(_mm256_set1_epi8(OFF), y);
    _mm256_cvtepi32_ps(_mm256_madd_epi16(
        _mm256_sub_epi16(p, c),
        _mm256_set1_epi16(1),
    ))
}

/// [`mul_sum_off_avx2`] with two `vpdpbusd` (exact int32 lanes, subtracted).
#[inline]
#[target_feature(enable = "avx512vnni,avx512vl,avx2")]
fn mul_sum_off_vnni<const OFF: i8>(u: __m256i, y: __m256i) -> __m256 {
    let z = _mm256_setzero_si256();
    let p = _mm256_dpbusd_epi32(z, u, y);
    let c = _mm256_dpbusd_epi32(z, _mm256_set1_epi8(OFF), y);
    _mm256_cvtepi32_ps(_mm256_sub_epi32(p, c))
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
        blocks_d!(x, y, BlockQ4_0, BlockQ8_0, d4, |_k, bx, by, d| {
            // lanes of (q - 8) * y, exact integers as ggml's sign trick
            let qx = nibbles_32(bx.qs.as_ptr());
            // SAFETY: 32 readable bytes.
            let qy = unsafe { _mm256_loadu_si256(by.qs.as_ptr() as *const __m256i) };
            acc = _mm256_fmadd_ps(d, mul_sum_off::<8>(qx, qy), acc);
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
        blocks_d!(x, y, BlockQ5_0, BlockQ8_0, d4, |_k, bx, by, d| {
            // lanes of (q - 16) * y from the unsigned 5-bit values
            let qx = q5_1_values(&bx.qs, bx.qh);
            // SAFETY: 32 readable bytes.
            let qy = unsafe { _mm256_loadu_si256(by.qs.as_ptr() as *const __m256i) };
            acc = _mm256_fmadd_ps(d, mul_sum_off::<16>(qx, qy), acc);
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
    let n = nibbles_32(qs.as_ptr());
    _mm256_mask_add_epi8(n, u32::from_le_bytes(qh), n, _mm256_set1_epi8(0x10))
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
        blocks_d!(x, y, BlockQ4_1, BlockQ8_1, d4m, |_k, bx, by, d, m, s| {
            summs = m.mul_add(s, summs);
            let qx = nibbles_32(bx.qs.as_ptr());
            // SAFETY: 32 readable bytes.
            let qy = unsafe { _mm256_loadu_si256(by.qs.as_ptr() as *const __m256i) };
            acc = _mm256_fmadd_ps(d, mul_sum_u8(qx, qy), acc);
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
        blocks_d!(x, y, BlockQ5_1, BlockQ8_1, d4m, |_k, bx, by, d, m, s| {
            summs = m.mul_add(s, summs);
            let qx = q5_1_values(&bx.qs, bx.qh);
            // SAFETY: 32 readable bytes.
            let qy = unsafe { _mm256_loadu_si256(by.qs.as_ptr() as *const __m256i) };
            acc = _mm256_fmadd_ps(mul_sum_u8(qx, qy), d, acc);
        });
        hsum8(acc) + summs
    }
);

// ---------------------------------------------------------------------------------------
// iq4_nl
// ---------------------------------------------------------------------------------------

/// The 32 table values (`kvalues_iq4nl[idx]`, element order) of an iq4_nl block:
/// [`nibbles_32`] + one `vpshufb` with the table in both 128-bit lanes.
#[inline]
#[target_feature(enable = "avx2")]
fn iq4_nl_values(qs: &[u8; 16]) -> __m256i {
    // SAFETY: 16 readable bytes.
    let table = unsafe {
        _mm256_broadcastsi128_si256(_mm_loadu_si128(
            crate::quant::iq4_nl::KVALUES.as_ptr() as *const __m128i
        ))
    };
    _mm256_shuffle_epi8(table, nibbles_32(qs.as_ptr()))
}

/// Lane sums of `kvalues[idx] * y` for an iq4_nl block: ggml's sign trick
/// (`vpmaddubsw` could saturate on `value + 128`).
#[inline]
#[target_feature(enable = "avx2")]
fn iq4_nl_lanes_avx2(qs: &[u8; 16], qy: __m256i) -> __m256 {
    mul_sum_i8_avx2(iq4_nl_values(qs), qy)
}

/// [`iq4_nl_lanes_avx2`] with `vpdpbusd` (the sign trick as ggml; the unsigned-offset form
/// used for q4_0/q5_0 measured slower here).
#[inline]
#[target_feature(enable = "avx512vnni,avx512vl,avx2")]
fn iq4_nl_lanes_vnni(qs: &[u8; 16], qy: __m256i) -> __m256 {
    mul_sum_i8_vnni(iq4_nl_values(qs), qy)
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
        let n = x.len().min(y.len());
        // SAFETY: 2 * (n / 2) <= n <= both lengths.
        let (xp, yp) = unsafe { (x.get_unchecked(..n & !1), y.get_unchecked(..n & !1)) };
        blocks_d!(xp, yp, BlockIq4Nl, BlockQ8_0, d4, |k, bx, by, d| {
            // SAFETY: 32 readable bytes.
            let qy = unsafe { _mm256_loadu_si256(by.qs.as_ptr() as *const __m256i) };
            let s = iq4_nl_lanes(&bx.qs, qy);
            if k & 1 == 0 {
                acc1 = _mm256_fmadd_ps(d, s, acc1);
            } else {
                acc2 = _mm256_fmadd_ps(d, s, acc2);
            }
        });
        let sumf = hsum8(_mm256_add_ps(acc1, acc2));
        if n & 1 == 1 {
            // SAFETY: n >= 1 is within both lengths.
            let (bx, by) = unsafe { (x.get_unchecked(n - 1), y.get_unchecked(n - 1)) };
            return crate::quant::iq4_nl::tail_add(sumf, bx, by);
        }
        sumf
    }
);

// ---------------------------------------------------------------------------------------
// iq4_nl quantize
// ---------------------------------------------------------------------------------------

/// `best_index_int8(16, kvalues_iq4nl, al)` for 8 lanes, branch-free: `mu` = 1 + the number
/// of table values `v[1..15]` that `al` is not below (what the binary search converges to;
/// NaN counts as "not below" everywhere, giving 15 as upstream), then `mu - 1` if
/// `al - v[mu-1] < v[mu] - al` (same float expressions as upstream). Returns the index and
/// the table value `(float)v[index]`.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn iq4_nl_best_index(al: __m256, lo_tab: __m256, hi_tab: __m256) -> (__m256i, __m256) {
    let kv = &crate::quant::iq4_nl::KVALUES;
    let mut cnt = _mm256_set1_epi32(1);
    for &v in &kv[1..15] {
        let ge = _mm256_cmp_ps::<_CMP_NLT_UQ>(al, _mm256_set1_ps(v as f32));
        cnt = _mm256_sub_epi32(cnt, _mm256_castps_si256(ge));
    }
    let lookup = |i: __m256i| {
        let a = _mm256_permutevar8x32_ps(lo_tab, i);
        let b = _mm256_permutevar8x32_ps(hi_tab, i);
        _mm256_blendv_ps(a, b, _mm256_castsi256_ps(_mm256_slli_epi32::<28>(i)))
    };
    let mu1 = _mm256_sub_epi32(cnt, _mm256_set1_epi32(1));
    let (lo, hi) = (lookup(mu1), lookup(cnt));
    let take_lo = _mm256_cmp_ps::<_CMP_LT_OQ>(_mm256_sub_ps(al, lo), _mm256_sub_ps(hi, al));
    // take_lo is all-ones (-1) where the lower value wins
    let idx = _mm256_add_epi32(cnt, _mm256_castps_si256(take_lo));
    (idx, _mm256_blendv_ps(hi, lo, take_lo))
}

/// The vector part of one regular iq4_nl block (see `iq4_nl::quantize_block`): indices as
/// 32 bytes, and per element `q` and `q * (x*x)` for the serial sums.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn iq4_nl_prep(v: &[__m256; 4], id: f32, q: &mut [f32; 32], qw: &mut [f32; 32]) -> __m256i {
    let kv = &crate::quant::iq4_nl::KVALUES;
    let lo_tab = _mm256_setr_ps(
        kv[0] as f32,
        kv[1] as f32,
        kv[2] as f32,
        kv[3] as f32,
        kv[4] as f32,
        kv[5] as f32,
        kv[6] as f32,
        kv[7] as f32,
    );
    let hi_tab = _mm256_setr_ps(
        kv[8] as f32,
        kv[9] as f32,
        kv[10] as f32,
        kv[11] as f32,
        kv[12] as f32,
        kv[13] as f32,
        kv[14] as f32,
        kv[15] as f32,
    );
    let idv = _mm256_set1_ps(id);
    let mut idx = [_mm256_setzero_si256(); 4];
    for (i, x) in v.iter().enumerate() {
        let (ix, qv) = iq4_nl_best_index(_mm256_mul_ps(idv, *x), lo_tab, hi_tab);
        idx[i] = ix;
        // SAFETY: 8 floats at 8*i < 32.
        unsafe {
            _mm256_storeu_ps(q.as_mut_ptr().add(8 * i), qv);
            _mm256_storeu_ps(
                qw.as_mut_ptr().add(8 * i),
                _mm256_mul_ps(qv, _mm256_mul_ps(*x, *x)),
            );
        }
    }
    low_bytes_32(idx[0], idx[1], idx[2], idx[3])
}

/// Upstream's in-order sums `sumqx = fma(x, qw, sumqx)`, `sumq2 = fma(q, qw, sumq2)` of two
/// blocks at once (4 independent chains), and `d = sumqx/sumq2` (0 unless `sumq2 > 0`).
#[inline]
#[target_feature(enable = "avx2,fma")]
fn iq4_nl_sums2(
    xa: &[f32],
    qa: &[f32; 32],
    wa: &[f32; 32],
    xb: &[f32],
    qb: &[f32; 32],
    wb: &[f32; 32],
) -> (f32, f32) {
    let (xa, xb): (&[f32; 32], &[f32; 32]) = (xa.try_into().unwrap(), xb.try_into().unwrap());
    let (mut sa, mut s2a, mut sb, mut s2b) = (0f32, 0f32, 0f32, 0f32);
    for j in 0..32 {
        sa = xa[j].mul_add(wa[j], sa);
        s2a = qa[j].mul_add(wa[j], s2a);
        sb = xb[j].mul_add(wb[j], sb);
        s2b = qb[j].mul_add(wb[j], s2b);
    }
    let d = |s: f32, s2: f32| if s2 > 0.0 { s / s2 } else { 0.0 };
    (d(sa, s2a), d(sb, s2b))
}

/// `quantize_row_iq4_nl_ref` (= the CPU backend's `quantize_row_iq4_nl`), AVX2 + FMA (also
/// used on AVX-512 machines): index search vectorised, the weighted sums in upstream's
/// order, two blocks at a time. A block whose largest magnitude is below `GROUP_MAX_EPS`
/// repeats the previous indices (all zero before the first regular block), see `iq4_nl`.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn quantize_iq4_nl_avx2(x: &[f32], y: &mut [BlockIq4Nl]) {
    let n = (x.len() / 32).min(y.len());
    let mut l = _mm256_setzero_si256();
    let (mut q, mut qw) = ([[0f32; 32]; 2], [[0f32; 32]; 2]);
    let mut b = 0;
    while b < n {
        let nb = (n - b).min(2);
        let mut regular = [false; 2];
        let mut ls = [l; 2];
        for k in 0..nb {
            let xb = &x[(b + k) * 32..][..32];
            let v = load4(xb.as_ptr());
            let (amax, max) = amax_max_avx2(xb.as_ptr(), &v);
            if amax < crate::quant::iq4_nl::GROUP_MAX_EPS {
                ls[k] = l;
                continue;
            }
            let d = max / crate::quant::iq4_nl::KVALUES[0] as f32;
            l = iq4_nl_prep(&v, 1.0 / d, &mut q[k], &mut qw[k]);
            ls[k] = l;
            regular[k] = true;
        }
        let xa = &x[b * 32..][..32];
        let xb = if nb == 2 {
            &x[(b + 1) * 32..][..32]
        } else {
            xa
        };
        let (da, db) = iq4_nl_sums2(xa, &q[0], &qw[0], xb, &q[1], &qw[1]);
        for (k, dk) in [da, db].into_iter().enumerate().take(nb) {
            let yb = &mut y[b + k];
            yb.d = f32_to_f16le(if regular[k] { dk } else { 0.0 });
            // SAFETY: 16 writable bytes.
            unsafe {
                _mm_storeu_si128(
                    yb.qs.as_mut_ptr() as *mut __m128i,
                    pack_nibbles(ls[k], false),
                )
            };
        }
        b += nb;
    }
}
