//! AVX2 kernels of `crate::attn` that read K/V rows straight from the cache (fused decode, f16
//! as well as q8_0/q4_0) and the register-blocked prefill tile kernels (QK and PV GEMMs, the K
//! tile transpose). Contracts (sizes, layouts, row bounds) are checked in the safe wrappers
//! (`attn::kernel`).
//!
//! Numbers: the fused kernels dequantize in registers exactly as upstream's `to_float` does
//! (`q·d`, `(q-8)·d`, exact f16) and sum in the same order as the AVX2 tile kernels on the
//! dequantized tile (`qk_rows_avx2`: 8 lanes over the head dimension, then
//! `((l0+l4)+(l1+l5))+((l2+l6)+(l3+l7))`; `pv`: one FMA chain per output element in `active`
//! order), so they are bit-identical to dequantize + tile kernel. The prefill GEMMs keep each
//! output element's FMA chain in the same order as before (over `d` for QK, over `active` for
//! PV): only the register blocking changed. The integer decode kernels for q4_0 (K: `qk_q4_avx2`,
//! V: `pv_i16_avx2`) give the same bits as their AVX-512 VNNI counterparts (exact integer
//! sums, the same float steps around them).
use super::attn::{
    fmt_row_bytes as row_bytes, k_rows8, prefetch_row as prefetch, q16_scale, qblock_bytes,
    store_rows8, whole_tile, FMT_F16, FMT_Q8_0,
};
use core::arch::x86_64::*;

const T: usize = 64;

/// Elements `16c .. 16c+16` of a row of format `F` at `p`, exactly dequantized, as two
/// vectors of 8 (for q8_0/q4_0, `c` even/odd = first/second half of block `c/2`).
#[inline(always)]
unsafe fn load16<const F: u8>(p: *const u8, c: usize) -> (__m256, __m256) {
    unsafe {
        match F {
            FMT_F16 => {
                let x = p.add(32 * c);
                (
                    _mm256_cvtph_ps(_mm_loadu_si128(x as *const __m128i)),
                    _mm256_cvtph_ps(_mm_loadu_si128(x.add(16) as *const __m128i)),
                )
            }
            FMT_Q8_0 => {
                let bp = p.add(34 * (c / 2));
                let h = (bp as *const u16).read_unaligned();
                let d = _mm256_set1_ps(_mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(h as i32))));
                let x = bp.add(2 + 16 * (c % 2));
                let a = _mm256_cvtepi8_epi32(_mm_loadl_epi64(x as *const __m128i));
                let b = _mm256_cvtepi8_epi32(_mm_loadl_epi64(x.add(8) as *const __m128i));
                (
                    _mm256_mul_ps(_mm256_cvtepi32_ps(a), d),
                    _mm256_mul_ps(_mm256_cvtepi32_ps(b), d),
                )
            }
            _ => {
                let bp = p.add(18 * (c / 2));
                let h = (bp as *const u16).read_unaligned();
                let d = _mm256_set1_ps(_mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(h as i32))));
                let x = _mm_loadu_si128(bp.add(2) as *const __m128i);
                // elements 0..16: low nibbles, 16..32: high nibbles of the 16 bytes
                let n = if c.is_multiple_of(2) {
                    _mm_and_si128(x, _mm_set1_epi8(0x0f))
                } else {
                    _mm_and_si128(_mm_srli_epi16::<4>(x), _mm_set1_epi8(0x0f))
                };
                let eight = _mm256_set1_epi32(8);
                let a = _mm256_sub_epi32(_mm256_cvtepu8_epi32(n), eight);
                let b = _mm256_sub_epi32(_mm256_cvtepu8_epi32(_mm_srli_si128::<8>(n)), eight);
                (
                    _mm256_mul_ps(_mm256_cvtepi32_ps(a), d),
                    _mm256_mul_ps(_mm256_cvtepi32_ps(b), d),
                )
            }
        }
    }
}

/// Lane `i` of the result = `((a_i[0]+a_i[4])+(a_i[1]+a_i[5]))+((a_i[2]+a_i[6])+(a_i[3]+a_i[7]))`
/// (the horizontal sum of `qk_rows_avx2`, bit for bit: float addition commutes).
#[inline(always)]
unsafe fn hsum8(a: &[__m256; 8]) -> __m256 {
    unsafe {
        // [c_i | c_{i+4}], c = low half + high half
        let x = |i: usize| {
            _mm256_add_ps(
                _mm256_permute2f128_ps::<0x20>(a[i], a[i + 4]),
                _mm256_permute2f128_ps::<0x31>(a[i], a[i + 4]),
            )
        };
        let h01 = _mm256_hadd_ps(x(0), x(1));
        let h23 = _mm256_hadd_ps(x(2), x(3));
        _mm256_hadd_ps(h01, h23)
    }
}

/// `s[m][t] = Σ_d q[m][d] · k_t[d]` for `t ∈ active`, `m < mp` (`mp % 4 == 0`), K rows of
/// format `F` at `k + t·nb1`; `dk % 16 == 0` (`% 32` for q8_0/q4_0). Bit-identical to
/// dequantizing the rows and calling `qk_rows_avx2`. 4 query rows × 2 K rows per pass (8
/// accumulators), the 8 sums of a pass reduced together (`hsum8`).
// a raw-pointer kernel: the safe wrapper attn::kernel::Kernels::qk_fused checks these together
#[allow(clippy::too_many_arguments)]
// index loops: r/j index the accumulators, the K registers and the row offsets together
#[allow(clippy::needless_range_loop)]
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn qk_fused_avx2<const F: u8>(
    q: *const f32,
    k: *const u8,
    nb1: usize,
    active: &[u8],
    s: *mut f32,
    mp: usize,
    dk: usize,
    pf: usize,
) {
    unsafe {
        let n16 = dk / 16;
        let lines = row_bytes::<F>(dk).div_ceil(64);
        let na = active.len();
        let mut buf = [0f32; 8];
        let mut i = 0;
        while i < na {
            let ts = [active[i] as usize, active[(i + 1).min(na - 1)] as usize];
            let kp = [k.add(ts[0] * nb1), k.add(ts[1] * nb1)];
            if pf != 0 {
                for p in kp {
                    prefetch(p.wrapping_add(pf * nb1), lines);
                }
            }
            let mut m = 0;
            while m < mp {
                // acc[2r + j]: query row m+r, K row j
                let mut acc = [_mm256_setzero_ps(); 8];
                for c in 0..n16 {
                    let k0 = load16::<F>(kp[0], c);
                    let k1 = load16::<F>(kp[1], c);
                    for r in 0..4 {
                        let qr = q.add((m + r) * dk + 16 * c);
                        let qa = _mm256_loadu_ps(qr);
                        acc[2 * r] = _mm256_fmadd_ps(qa, k0.0, acc[2 * r]);
                        acc[2 * r + 1] = _mm256_fmadd_ps(qa, k1.0, acc[2 * r + 1]);
                        let qb = _mm256_loadu_ps(qr.add(8));
                        acc[2 * r] = _mm256_fmadd_ps(qb, k0.1, acc[2 * r]);
                        acc[2 * r + 1] = _mm256_fmadd_ps(qb, k1.1, acc[2 * r + 1]);
                    }
                }
                _mm256_storeu_ps(buf.as_mut_ptr(), hsum8(&acc));
                for r in 0..4 {
                    for j in 0..2 {
                        *s.add((m + r) * T + ts[j]) = buf[2 * r + j];
                    }
                }
                m += 4;
            }
            i += 2;
        }
    }
}

/// Rows `m..m+R`, columns `16c .. 16(c+NC)` of `o += Σ_{t∈active} p[·][t] · v_t`.
// index loops: r indexes the accumulators and the row offsets of o and p together
#[allow(clippy::needless_range_loop)]
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn pv_fused_block<const F: u8, const R: usize, const NC: usize>(
    p: *const f32,
    v: *const u8,
    nb1: usize,
    active: &[u8],
    o: *mut f32,
    m: usize,
    c: usize,
    dvp: usize,
    pf: usize,
    lines: usize,
) {
    unsafe {
        let mut acc = [[[_mm256_setzero_ps(); 2]; NC]; R];
        for r in 0..R {
            for h in 0..NC {
                let op = o.add((m + r) * dvp + 16 * (c + h));
                acc[r][h] = [_mm256_loadu_ps(op), _mm256_loadu_ps(op.add(8))];
            }
        }
        for &t in active {
            let t = t as usize;
            let vp = v.add(t * nb1);
            if pf != 0 {
                prefetch(vp.wrapping_add(pf * nb1), lines);
            }
            let mut w = [_mm256_setzero_ps(); R];
            for r in 0..R {
                w[r] = _mm256_broadcast_ss(&*p.add((m + r) * T + t));
            }
            for h in 0..NC {
                let (a, b) = load16::<F>(vp, c + h);
                for r in 0..R {
                    acc[r][h][0] = _mm256_fmadd_ps(w[r], a, acc[r][h][0]);
                    acc[r][h][1] = _mm256_fmadd_ps(w[r], b, acc[r][h][1]);
                }
            }
        }
        for r in 0..R {
            for h in 0..NC {
                let op = o.add((m + r) * dvp + 16 * (c + h));
                _mm256_storeu_ps(op, acc[r][h][0]);
                _mm256_storeu_ps(op.add(8), acc[r][h][1]);
            }
        }
    }
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn pv_fused_rows<const F: u8, const R: usize>(
    p: *const f32,
    v: *const u8,
    nb1: usize,
    active: &[u8],
    o: *mut f32,
    m: usize,
    dvp: usize,
    dv: usize,
    pf: usize,
) {
    unsafe {
        let lines = row_bytes::<F>(dv).div_ceil(64);
        let n16 = dv / 16;
        let mut c = 0;
        // up to 3 query rows: 32 columns per pass over the rows (12 accumulators), halving
        // the passes, the row loads and the weight broadcasts
        while R <= 3 && c + 2 <= n16 {
            // the first pass over the rows prefetches the whole rows ahead
            let pf = if m == 0 && c == 0 { pf } else { 0 };
            pv_fused_block::<F, R, 2>(p, v, nb1, active, o, m, c, dvp, pf, lines);
            c += 2;
        }
        while c < n16 {
            let pf = if m == 0 && c == 0 { pf } else { 0 };
            pv_fused_block::<F, R, 1>(p, v, nb1, active, o, m, c, dvp, pf, lines);
            c += 1;
        }
    }
}

/// `o[m][:dv] += Σ_{t∈active} p[m][t] · v_t` for `m < mr` (any `mr ≥ 1`), V rows of format `F`
/// at `v + t·nb1`; `dv % 16 == 0` (`% 32` for q8_0/q4_0). One FMA chain per output element in
/// `active` order, as [`pv_tile_avx2`] on the dequantized tile; 4 query rows × 16 columns per
/// pass.
#[target_feature(enable = "avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
pub unsafe fn pv_fused_avx2<const F: u8>(
    p: *const f32,
    v: *const u8,
    nb1: usize,
    active: &[u8],
    o: *mut f32,
    mr: usize,
    dvp: usize,
    dv: usize,
    pf: usize,
) {
    unsafe {
        by_fours!(mr, |m, R| pv_fused_rows::<F, R>(
            p, v, nb1, active, o, m, dvp, dv, pf
        ));
    }
}

// ---------------------------------------------------------------- prefill tiles
//
// Register blocking for 16 ymm registers: R query rows (≤ 6) × 16 columns = 2R accumulators,
// 2 operand registers and 1 broadcast. Every output element is one FMA chain in the same order
// as the unblocked loops (over `d` for QK, over `active` for PV).

// index loops: r indexes the accumulators and the row offsets together
#[allow(clippy::needless_range_loop)]
#[inline(always)]
unsafe fn qk_tile_block<const R: usize>(
    q: *const f32,
    kt: *const f32,
    s: *mut f32,
    m: usize,
    c: usize,
    dk: usize,
) {
    unsafe {
        let mut acc = [[_mm256_setzero_ps(); 2]; R];
        for d in 0..dk {
            let kp = kt.add(d * T + 16 * c);
            let k0 = _mm256_loadu_ps(kp);
            let k1 = _mm256_loadu_ps(kp.add(8));
            for r in 0..R {
                let b = _mm256_broadcast_ss(&*q.add((m + r) * dk + d));
                acc[r][0] = _mm256_fmadd_ps(b, k0, acc[r][0]);
                acc[r][1] = _mm256_fmadd_ps(b, k1, acc[r][1]);
            }
        }
        for r in 0..R {
            let sp = s.add((m + r) * T + 16 * c);
            _mm256_storeu_ps(sp, acc[r][0]);
            _mm256_storeu_ps(sp.add(8), acc[r][1]);
        }
    }
}

/// `s[m][0..64] = Σ_d q[m][d] kt[d][0..64]`, `mp % 2 == 0` (the prefill QK GEMM; the same
/// numbers as `attn::qk_tile_avx512`, one FMA chain over `d` per element): 6 query rows × 16 columns per pass.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn qk_tile_avx2(q: *const f32, kt: *const f32, s: *mut f32, mp: usize, dk: usize) {
    unsafe {
        for c in 0..T / 16 {
            let mut m = 0;
            while m + 6 <= mp {
                qk_tile_block::<6>(q, kt, s, m, c, dk);
                m += 6;
            }
            match mp - m {
                4 => qk_tile_block::<4>(q, kt, s, m, c, dk),
                2 => qk_tile_block::<2>(q, kt, s, m, c, dk),
                _ => {}
            }
        }
    }
}

// index loops: r indexes the accumulators and the row offsets together
#[allow(clippy::needless_range_loop)]
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn pv_tile_block<const R: usize>(
    p: *const f32,
    vt: *const f32,
    o: *mut f32,
    m: usize,
    c: usize,
    dvp: usize,
    active: &[u8],
) {
    unsafe {
        let mut acc = [[_mm256_setzero_ps(); 2]; R];
        for r in 0..R {
            let op = o.add((m + r) * dvp + 16 * c);
            acc[r] = [_mm256_loadu_ps(op), _mm256_loadu_ps(op.add(8))];
        }
        for &t in active {
            let t = t as usize;
            let vp = vt.add(t * dvp + 16 * c);
            let v0 = _mm256_loadu_ps(vp);
            let v1 = _mm256_loadu_ps(vp.add(8));
            for r in 0..R {
                let b = _mm256_broadcast_ss(&*p.add((m + r) * T + t));
                acc[r][0] = _mm256_fmadd_ps(b, v0, acc[r][0]);
                acc[r][1] = _mm256_fmadd_ps(b, v1, acc[r][1]);
            }
        }
        for r in 0..R {
            let op = o.add((m + r) * dvp + 16 * c);
            _mm256_storeu_ps(op, acc[r][0]);
            _mm256_storeu_ps(op.add(8), acc[r][1]);
        }
    }
}

/// `o[m][:] += Σ_{t∈active} p[m][t] vt[t][:]`, `mp % 2 == 0`, `dvp % 16 == 0` (the prefill
/// PV GEMM; the same numbers as `attn::pv_tile_avx512`): 6 query rows × 16 columns per pass.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn pv_tile_avx2(
    p: *const f32,
    vt: *const f32,
    o: *mut f32,
    mp: usize,
    dvp: usize,
    active: &[u8],
) {
    unsafe {
        for c in 0..dvp / 16 {
            let mut m = 0;
            while m + 6 <= mp {
                pv_tile_block::<6>(p, vt, o, m, c, dvp, active);
                m += 6;
            }
            match mp - m {
                4 => pv_tile_block::<4>(p, vt, o, m, c, dvp, active),
                2 => pv_tile_block::<2>(p, vt, o, m, c, dvp, active),
                _ => {}
            }
        }
    }
}

/// `dst[d][t] = src[t][d]` for `t < 64`, `d < dk`: `src` `[64][dk]`, `dst` `[dk][64]`, 8×8
/// blocks in registers (the `dk % 8` last dimensions element by element).
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn transpose_tile_avx2(src: *const f32, dst: *mut f32, dk: usize) {
    unsafe {
        let nd = dk / 8;
        for tb in 0..T / 8 {
            for db in 0..nd {
                let mut r = [_mm256_setzero_ps(); 8];
                for (i, ri) in r.iter_mut().enumerate() {
                    *ri = _mm256_loadu_ps(src.add((8 * tb + i) * dk + 8 * db));
                }
                let t0 = _mm256_unpacklo_ps(r[0], r[1]);
                let t1 = _mm256_unpackhi_ps(r[0], r[1]);
                let t2 = _mm256_unpacklo_ps(r[2], r[3]);
                let t3 = _mm256_unpackhi_ps(r[2], r[3]);
                let t4 = _mm256_unpacklo_ps(r[4], r[5]);
                let t5 = _mm256_unpackhi_ps(r[4], r[5]);
                let t6 = _mm256_unpacklo_ps(r[6], r[7]);
                let t7 = _mm256_unpackhi_ps(r[6], r[7]);
                // s_c, 128-bit lane L: column 4L+c of rows 0..3 (s0..s3) / 4..7 (s4..s7)
                let s0 = _mm256_shuffle_ps::<0x44>(t0, t2);
                let s1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
                let s2 = _mm256_shuffle_ps::<0x44>(t1, t3);
                let s3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
                let s4 = _mm256_shuffle_ps::<0x44>(t4, t6);
                let s5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
                let s6 = _mm256_shuffle_ps::<0x44>(t5, t7);
                let s7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
                let out = [
                    _mm256_permute2f128_ps::<0x20>(s0, s4),
                    _mm256_permute2f128_ps::<0x20>(s1, s5),
                    _mm256_permute2f128_ps::<0x20>(s2, s6),
                    _mm256_permute2f128_ps::<0x20>(s3, s7),
                    _mm256_permute2f128_ps::<0x31>(s0, s4),
                    _mm256_permute2f128_ps::<0x31>(s1, s5),
                    _mm256_permute2f128_ps::<0x31>(s2, s6),
                    _mm256_permute2f128_ps::<0x31>(s3, s7),
                ];
                for (c, oc) in out.iter().enumerate() {
                    _mm256_storeu_ps(dst.add((8 * db + c) * T + 8 * tb), *oc);
                }
            }
        }
        for d in 8 * nd..dk {
            for t in 0..T {
                *dst.add(d * T + t) = *src.add(t * dk + d);
            }
        }
    }
}

// ---------------------------------------------------------------- quantized decode V

/// The 16 integer values `16h .. 16h+16` of block `g` of a q8_0/q4_0 row at `p`, as floats
/// (q4_0: `h = 0` the low nibbles, `h = 1` the high ones, minus 8).
#[inline(always)]
unsafe fn qvals16<const F: u8>(p: *const u8, g: usize, h: usize) -> (__m256, __m256) {
    unsafe {
        if F == FMT_Q8_0 {
            let x = p.add(34 * g + 2 + 16 * h);
            let a = _mm256_cvtepi8_epi32(_mm_loadl_epi64(x as *const __m128i));
            let b = _mm256_cvtepi8_epi32(_mm_loadl_epi64(x.add(8) as *const __m128i));
            (_mm256_cvtepi32_ps(a), _mm256_cvtepi32_ps(b))
        } else {
            let x = _mm_loadu_si128(p.add(18 * g + 2) as *const __m128i);
            let n = if h == 0 {
                _mm_and_si128(x, _mm_set1_epi8(0x0f))
            } else {
                _mm_and_si128(_mm_srli_epi16::<4>(x), _mm_set1_epi8(0x0f))
            };
            let eight = _mm256_set1_epi32(8);
            let a = _mm256_sub_epi32(_mm256_cvtepu8_epi32(n), eight);
            let b = _mm256_sub_epi32(_mm256_cvtepu8_epi32(_mm_srli_si128::<8>(n)), eight);
            (_mm256_cvtepi32_ps(a), _mm256_cvtepi32_ps(b))
        }
    }
}

/// Rows `m..m+R`, columns `32g + 16h .. +16` of `o += Σ_i w[g][·][i] · q_{t_i}`.
// index loops: r indexes the accumulators and the row offsets of o and w together
#[allow(clippy::needless_range_loop)]
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn pv_q_block<const F: u8, const R: usize>(
    w: *const f32,
    v: *const u8,
    nb1: usize,
    active: &[u8],
    o: *mut f32,
    m: usize,
    mr: usize,
    g: usize,
    h: usize,
    dvp: usize,
) {
    unsafe {
        let col = 32 * g + 16 * h;
        let mut acc = [[_mm256_setzero_ps(); 2]; R];
        for r in 0..R {
            let op = o.add((m + r) * dvp + col);
            acc[r] = [_mm256_loadu_ps(op), _mm256_loadu_ps(op.add(8))];
        }
        let wg = w.add((g * mr + m) * T);
        for (i, &t) in active.iter().enumerate() {
            let (a, b) = qvals16::<F>(v.add(t as usize * nb1), g, h);
            for r in 0..R {
                let x = _mm256_broadcast_ss(&*wg.add(r * T + i));
                acc[r][0] = _mm256_fmadd_ps(x, a, acc[r][0]);
                acc[r][1] = _mm256_fmadd_ps(x, b, acc[r][1]);
            }
        }
        for r in 0..R {
            let op = o.add((m + r) * dvp + col);
            _mm256_storeu_ps(op, acc[r][0]);
            _mm256_storeu_ps(op.add(8), acc[r][1]);
        }
    }
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn pv_q_rows<const F: u8, const R: usize>(
    w: *const f32,
    v: *const u8,
    nb1: usize,
    active: &[u8],
    o: *mut f32,
    m: usize,
    mr: usize,
    nb: usize,
    dvp: usize,
) {
    unsafe {
        for g in 0..nb {
            for h in 0..2 {
                pv_q_block::<F, R>(w, v, nb1, active, o, m, mr, g, h, dvp);
            }
        }
    }
}

/// `o[m][:dv] += Σ_i (p[m][t_i]·d_{t_i,b}) · q_{t_i}[:]` for `t_i = active[i]`, `m < mr` (≤ 16),
/// q8_0/q4_0 V rows (`dv % 32 == 0`) at `v + t·nb1`: the same numbers as `attn::pv_q_avx512`
/// (one `fma(p·d, q, o)` chain per element in `active` order). The weights `p·d` are formed
/// 8 rows at a time in `w` (`[dv/32][mr][64]` floats of scratch); then 4 query rows × 16
/// columns per pass, the integer values converted in registers.
#[target_feature(enable = "avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
pub unsafe fn pv_q_avx2<const F: u8>(
    p: *const f32,
    v: *const u8,
    nb1: usize,
    active: &[u8],
    w: *mut f32,
    o: *mut f32,
    mr: usize,
    dvp: usize,
    dv: usize,
    pf: usize,
) {
    unsafe {
        let nb = dv / 32;
        let bs = qblock_bytes::<F>();
        let lines = (nb * bs).div_ceil(64) + 1;
        let na = active.len();
        let mut i = 0;
        while i < na {
            // weights of 8 rows (the lanes past `n` repeat the last row; `i + 8 ≤ 64`, so
            // they stay inside the row of `w`, never read)
            let n = (na - i).min(8);
            let mut tsi = [0i32; 8];
            let mut rp = [v; 8];
            for j in 0..8 {
                let t = active[i + j.min(n - 1)] as usize;
                tsi[j] = t as i32;
                rp[j] = v.add(t * nb1);
            }
            if pf != 0 {
                // the weights touch every row of the tile first: prefetch whole rows from here
                for p in rp.iter().take(n) {
                    prefetch(p.wrapping_add(pf * nb1), lines);
                }
            }
            let t0 = tsi[0] as usize;
            let contiguous = n == 8 && tsi[7] - tsi[0] == 7;
            let tsv = _mm256_loadu_si256(tsi.as_ptr() as *const __m256i);
            for b in 0..nb {
                let mut hs = [0u16; 8];
                for j in 0..8 {
                    hs[j] = (rp[j].add(bs * b) as *const u16).read_unaligned();
                }
                let dvv = _mm256_cvtph_ps(_mm_loadu_si128(hs.as_ptr() as *const __m128i));
                for m in 0..mr {
                    let prow = p.add(m * T);
                    let pv = if contiguous {
                        _mm256_loadu_ps(prow.add(t0))
                    } else {
                        _mm256_i32gather_ps::<4>(prow, tsv)
                    };
                    _mm256_storeu_ps(w.add((b * mr + m) * T + i), _mm256_mul_ps(pv, dvv));
                }
            }
            i += n;
        }
        by_fours!(mr, |m, R| pv_q_rows::<F, R>(
            w, v, nb1, active, o, m, mr, nb, dvp
        ));
    }
}

// ---------------------------------------------------------------- q4_0 decode V, integer
//
// The AVX2 form of `attn::pv_i16_avx512` for q4_0 V (same weights, same integer sums, so the
// same bits):
// per block `b` and query row `m` the weights `w = p·d` become `W = rint(w·(32767/M))` with
// `M = P_m·D_b` (the row's largest probability in the tile times the block's largest |scale|);
// two V rows are interleaved as 16-bit pairs and `vpmaddwd` + `vpaddd` add
// `W_i·q_i + W_{i+1}·q_{i+1}` into 32-bit lanes (exact: |Σ| ≤ 64·32767·128 < 2³¹); the tile
// ends with `o = fma(float(Σ W·n − 8·Σ W), M/32767, o)`. Per instruction pair as many MACs as
// one FMA, but the nibbles are never converted to float (one widening per two rows and 16
// columns, shared by 4 query rows). Not used for q8_0: its float kernel (`pv_q_avx2`)
// converts V cheaply and measured faster than this one.

/// Horizontal maximum of 8 floats (no NaN: checked before).
#[inline(always)]
unsafe fn hmax8(x: __m256) -> f32 {
    unsafe {
        let m = _mm_max_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps::<1>(x));
        let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
        let m = _mm_max_ss(m, _mm_shuffle_ps::<0b01>(m, m));
        _mm_cvtss_f32(m)
    }
}

/// The f16 scales at byte `off` of 8 rows, as f32 (scalar loads assembled in two 64-bit
/// registers: no store-to-load forwarding stall).
#[inline(always)]
unsafe fn scales8(r: &[*const u8; 8], off: usize) -> __m256 {
    unsafe {
        let h = |j: usize| (r[j].add(off) as *const u16).read_unaligned() as u64;
        let lo = h(0) | h(1) << 16 | h(2) << 32 | h(3) << 48;
        let hi = h(4) | h(5) << 16 | h(6) << 32 | h(7) << 48;
        _mm256_cvtph_ps(_mm_set_epi64x(hi as i64, lo as i64))
    }
}

/// Lanes of `x` that are not finite (`|x| > f32::MAX` or NaN), as a mask.
#[inline(always)]
unsafe fn not_finite(x: __m256) -> __m256 {
    unsafe {
        let a = _mm256_andnot_ps(_mm256_set1_ps(-0.0), x);
        _mm256_cmp_ps::<_CMP_NLE_UQ>(a, _mm256_set1_ps(f32::MAX))
    }
}

/// The 16-bit weights of [`pv_i16_avx2`] (`wq`, `[nb][mr][64]`, zero past the active rows up
/// to the next multiple of 16), `sig = M/32767` and `sw = Σ W` per (block, row) of q4_0 V
/// rows: the numbers of `attn::pv_i16_avx512`'s weights, 8 rows at a time. `false` when a probability
/// or scale is not finite or `0 < M < 2⁻¹⁰⁰` (the float kernel then takes the tile).
// index loops: c indexes the groups' offsets, masks, scales and weights together
#[allow(clippy::needless_range_loop)]
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn weights_q16(
    p: *const f32,
    v: *const u8,
    nb1: usize,
    active: &[u8],
    mr: usize,
    nb: usize,
    wq: *mut i16,
    sig: *mut f32,
    sw: *mut i32,
    pf: usize,
) -> bool {
    unsafe {
        let bs = 18; // q4_0 block bytes
        let lines = (nb * bs).div_ceil(64) + 1;
        let na = active.len();
        // groups of 8 rows, an even number of them (an extra group has p = d = 0, so W = 0)
        let nc = na.div_ceil(8);
        let nce = nc.next_multiple_of(2);
        let mut rp = [[v; 8]; 8];
        // the rows' probabilities per (query row, group), 0 past the active rows; written for
        // every m < mr, c < nce before it is read (no 4 KiB memset per tile)
        let mut pv = [[core::mem::MaybeUninit::<__m256>::uninit(); 8]; 16];
        let mut pmx = [_mm256_setzero_ps(); 16];
        let mut bad = _mm256_setzero_ps();
        // a whole tile of consecutive rows (the usual decode tile): row pointers in
        // progression and plain loads of p, no column tables or lane masks (same numbers)
        let full = whole_tile(active);
        for c in 0..nc {
            let i = 8 * c;
            if full {
                for j in 0..8 {
                    rp[c][j] = v.add((i + j) * nb1);
                }
                if pf != 0 {
                    for r in rp[c] {
                        prefetch(r.wrapping_add(pf * nb1), lines);
                    }
                }
                for m in 0..mr {
                    let x = _mm256_loadu_ps(p.add(m * T + i));
                    bad = _mm256_or_ps(bad, not_finite(x));
                    pmx[m] = _mm256_max_ps(pmx[m], x);
                    pv[m][c].write(x);
                }
                continue;
            }
            let n = (na - i).min(8);
            let mut tsi = [0i32; 8];
            let mut mk = [0i32; 8];
            for j in 0..8 {
                let t = active[i + j.min(n - 1)] as usize;
                tsi[j] = t as i32;
                mk[j] = if j < n { -1 } else { 0 };
                rp[c][j] = v.add(t * nb1);
            }
            if pf != 0 {
                // the scales below touch every row of the tile first: prefetch whole rows
                for r in rp[c].iter().take(n) {
                    prefetch(r.wrapping_add(pf * nb1), lines);
                }
            }
            let km = _mm256_loadu_si256(mk.as_ptr() as *const __m256i);
            let contiguous = tsi[n - 1] - tsi[0] == n as i32 - 1;
            let tsv = _mm256_loadu_si256(tsi.as_ptr() as *const __m256i);
            for m in 0..mr {
                let prow = p.add(m * T);
                let x = if contiguous {
                    _mm256_maskload_ps(prow.add(tsi[0] as usize), km)
                } else {
                    _mm256_and_ps(_mm256_i32gather_ps::<4>(prow, tsv), _mm256_castsi256_ps(km))
                };
                bad = _mm256_or_ps(bad, not_finite(x));
                pmx[m] = _mm256_max_ps(pmx[m], x);
                pv[m][c].write(x);
            }
        }
        if nc < nce {
            for pm in pv.iter_mut().take(mr) {
                pm[nc].write(_mm256_setzero_ps());
            }
        }
        if _mm256_movemask_ps(bad) != 0 {
            return false;
        }
        let mut pmax = [0f32; 16];
        for m in 0..mr {
            pmax[m] = hmax8(pmx[m]);
        }
        let absm = _mm256_set1_ps(-0.0);
        for b in 0..nb {
            let mut dv = [_mm256_setzero_ps(); 8];
            let mut dmx = _mm256_setzero_ps();
            for c in 0..nc {
                let n = (na - 8 * c).min(8);
                let d = scales8(&rp[c], bs * b);
                // lanes past `n` (repeated rows): scale 0, as the masked AVX-512 loads
                let d = if n == 8 {
                    d
                } else {
                    let z = _mm256_cmpgt_epi32(
                        _mm256_set1_epi32(n as i32),
                        _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
                    );
                    _mm256_and_ps(d, _mm256_castsi256_ps(z))
                };
                bad = _mm256_or_ps(bad, not_finite(d));
                dv[c] = d;
                dmx = _mm256_max_ps(dmx, _mm256_andnot_ps(absm, d));
            }
            if _mm256_movemask_ps(bad) != 0 {
                return false;
            }
            // D_b: the largest block scale; |p·d| ≤ P_m·D_b = M
            let dmax = hmax8(dmx);
            for m in 0..mr {
                let row = b * mr + m;
                let wr = wq.add(row * T);
                let big = pmax[m] * dmax;
                if big == 0.0 {
                    for c in (0..nce).step_by(2) {
                        _mm256_storeu_si256(wr.add(8 * c) as *mut __m256i, _mm256_setzero_si256());
                    }
                    *sig.add(row) = 0.0;
                    *sw.add(row) = 0;
                    continue;
                }
                let Some((up, down)) = q16_scale(big) else {
                    return false;
                };
                let r = _mm256_set1_ps(up);
                let mut sum = _mm256_setzero_si256();
                for c in (0..nce).step_by(2) {
                    let w0 = _mm256_mul_ps(pv[m][c].assume_init(), dv[c]);
                    let w1 = _mm256_mul_ps(pv[m][c + 1].assume_init(), dv[c + 1]);
                    let q0 = _mm256_cvtps_epi32(_mm256_mul_ps(w0, r));
                    let q1 = _mm256_cvtps_epi32(_mm256_mul_ps(w1, r));
                    sum = _mm256_add_epi32(sum, _mm256_add_epi32(q0, q1));
                    // |W| ≤ 32767: the saturating pack is exact; 64-bit lanes back in order
                    let q16 = _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_packs_epi32(q0, q1));
                    _mm256_storeu_si256(wr.add(8 * c) as *mut __m256i, q16);
                }
                *sig.add(row) = down;
                *sw.add(row) = {
                    let s = _mm_add_epi32(
                        _mm256_castsi256_si128(sum),
                        _mm256_extracti128_si256::<1>(sum),
                    );
                    let s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
                    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b01>(s));
                    _mm_cvtsi128_si32(s)
                };
            }
        }
        true
    }
}

/// Elements `16h .. 16h+16` of block `g` of the q4_0 rows at `a` and `b` as 16-bit pairs
/// `(a_e, b_e)` of nibbles (0..15) in 32-bit lanes, elements in order.
#[inline(always)]
unsafe fn pairs8(a: *const u8, b: *const u8, g: usize, h: usize) -> [__m256i; 2] {
    unsafe {
        let x = _mm_loadu_si128(a.add(18 * g + 2) as *const __m128i);
        let y = _mm_loadu_si128(b.add(18 * g + 2) as *const __m128i);
        let z0 = _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(x, y));
        let z1 = _mm256_cvtepu8_epi16(_mm_unpackhi_epi8(x, y));
        if h == 0 {
            let m4 = _mm256_set1_epi16(0x0f);
            [_mm256_and_si256(z0, m4), _mm256_and_si256(z1, m4)]
        } else {
            [_mm256_srli_epi16::<4>(z0), _mm256_srli_epi16::<4>(z1)]
        }
    }
}

/// Rows `m..m+R`, columns `32g + 16h .. +16` of [`pv_i16_avx2`]: integer sums over the active
/// rows two at a time, then `o = fma(float(Σ), σ, o)`.
// index loops: r indexes the accumulators and the row offsets of o and wq together
#[allow(clippy::needless_range_loop)]
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn pv_i16_block<const R: usize>(
    wq: *const i16,
    sig: *const f32,
    sw: *const i32,
    v: *const u8,
    nb1: usize,
    active: &[u8],
    o: *mut f32,
    m: usize,
    mr: usize,
    g: usize,
    h: usize,
    dvp: usize,
) {
    unsafe {
        let na = active.len();
        let mut acc = [[_mm256_setzero_si256(); 2]; R];
        let wg = wq.add((g * mr + m) * T);
        let mut i = 0;
        while i < na {
            let t0 = active[i] as usize;
            // an odd last row pairs with itself; its partner's weight is 0
            let t1 = if i + 1 < na {
                active[i + 1] as usize
            } else {
                t0
            };
            let [x0, x1] = pairs8(v.add(t0 * nb1), v.add(t1 * nb1), g, h);
            for r in 0..R {
                let wp = _mm256_set1_epi32((wg.add(r * T + i) as *const i32).read_unaligned());
                acc[r][0] = _mm256_add_epi32(acc[r][0], _mm256_madd_epi16(x0, wp));
                acc[r][1] = _mm256_add_epi32(acc[r][1], _mm256_madd_epi16(x1, wp));
            }
            i += 2;
        }
        for r in 0..R {
            let idx = g * mr + m + r;
            // Σ W·(n − 8) = Σ W·n − 8·Σ W
            let off = _mm256_set1_epi32(8 * *sw.add(idx));
            let (a0, a1) = (
                _mm256_sub_epi32(acc[r][0], off),
                _mm256_sub_epi32(acc[r][1], off),
            );
            let s = _mm256_set1_ps(*sig.add(idx));
            let op = o.add((m + r) * dvp + 32 * g + 16 * h);
            let y0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(a0), s, _mm256_loadu_ps(op));
            let y1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(a1), s, _mm256_loadu_ps(op.add(8)));
            _mm256_storeu_ps(op, y0);
            _mm256_storeu_ps(op.add(8), y1);
        }
    }
}

/// `attn::pv_i16_avx512` for q4_0 V on AVX2, the same bits: `o[m][:dv] += Σ_i σ·W_i·q_i` with
/// `W = rint(p·d·32767/M)`, `σ = M/32767` per (32-element block, row) over the active rows.
/// Scratch: `wq` `[dv/32][mr][64]` i16, `sig`/`sw` `[dv/32][mr]`. 4 query rows × 16 columns
/// per pass (8 accumulators). Returns `false`, leaving `o` untouched, when the weights cannot
/// be scaled (a non-finite weight, or one below 2⁻¹⁰⁰): run [`pv_q_avx2`] then.
#[target_feature(enable = "avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
pub unsafe fn pv_i16_avx2(
    p: *const f32,
    v: *const u8,
    nb1: usize,
    active: &[u8],
    wq: *mut i16,
    sig: *mut f32,
    sw: *mut i32,
    o: *mut f32,
    mr: usize,
    dvp: usize,
    dv: usize,
    pf: usize,
) -> bool {
    unsafe {
        let nb = dv / 32;
        if !weights_q16(p, v, nb1, active, mr, nb, wq, sig, sw, pf) {
            return false;
        }
        by_fours!(mr, |m, R| {
            for g in 0..nb {
                for h in 0..2 {
                    pv_i16_block::<R>(wq, sig, sw, v, nb1, active, o, m, mr, g, h, dvp);
                }
            }
        });
        true
    }
}

// ---------------------------------------------------------------- q4_0 decode K, int8

/// Block `b` (bytes at `off`) of 8 q4_0 rows transposed: `out[c]` (`c < 4`) has in lane `j`
/// the low nibbles of bytes `4c..4c+4` of row `j` (elements `4c..4c+4`), `out[c + 4]` their
/// high nibbles (elements `16+4c..16+4c+4`).
#[inline(always)]
unsafe fn q4_cols(rp: &[*const u8; 8], off: usize) -> [__m256i; 8] {
    unsafe {
        let ld = |j: usize| _mm_loadu_si128(rp[j].add(off) as *const __m128i);
        // 128-bit lane L of z[k] holds row 4L + k: a 4×4 dword transpose per lane
        let z = [
            _mm256_set_m128i(ld(4), ld(0)),
            _mm256_set_m128i(ld(5), ld(1)),
            _mm256_set_m128i(ld(6), ld(2)),
            _mm256_set_m128i(ld(7), ld(3)),
        ];
        let t0 = _mm256_unpacklo_epi32(z[0], z[1]);
        let t1 = _mm256_unpackhi_epi32(z[0], z[1]);
        let t2 = _mm256_unpacklo_epi32(z[2], z[3]);
        let t3 = _mm256_unpackhi_epi32(z[2], z[3]);
        let x = [
            _mm256_unpacklo_epi64(t0, t2),
            _mm256_unpackhi_epi64(t0, t2),
            _mm256_unpacklo_epi64(t1, t3),
            _mm256_unpackhi_epi64(t1, t3),
        ];
        let m4 = _mm256_set1_epi8(0x0f);
        let hi = |v: __m256i| _mm256_and_si256(_mm256_srli_epi16::<4>(v), m4);
        [
            _mm256_and_si256(x[0], m4),
            _mm256_and_si256(x[1], m4),
            _mm256_and_si256(x[2], m4),
            _mm256_and_si256(x[3], m4),
            hi(x[0]),
            hi(x[1]),
            hi(x[2]),
            hi(x[3]),
        ]
    }
}

/// `Σ_c maddubs(kc[c], q dword c)` in 16-bit lanes: lane pair of row `j` = its block dot
/// against the 32 bytes at `q`, split in two 16-bit halves. Exact: each `maddubs` lane is at
/// most 2·15·128, the 8 summed at most 30720 < 2¹⁵.
#[inline(always)]
unsafe fn q4_dot16(kc: &[__m256i; 8], q: *const i8) -> __m256i {
    unsafe {
        let qr = q as *const i32;
        let t =
            |c: usize| _mm256_maddubs_epi16(kc[c], _mm256_set1_epi32(qr.add(c).read_unaligned()));
        let a = _mm256_add_epi16(_mm256_add_epi16(t(0), t(2)), _mm256_add_epi16(t(4), t(6)));
        let b = _mm256_add_epi16(_mm256_add_epi16(t(1), t(3)), _mm256_add_epi16(t(5), t(7)));
        _mm256_add_epi16(a, b)
    }
}

/// The AVX2 int8 decode K kernel for q4_0 (`attn::qk_i8_avx2` does q8_0) with the rows
/// transposed, as the VNNI kernel does: 8 K rows at a time, lane `j` = row `j`, so a block dot
/// is 8 `maddubs` summed in 16-bit lanes and one `madd` (two with `LO`, the second Q byte) — no
/// horizontal reduction. Numbers as `attn::qk_i8_avx512`: the exact integer block dot, then
/// `s = fma(float(dot − qc), dk·dq, s)` block by block (`LO`: `128·dot(q) + dot(lo) − qcc`,
/// scale `dk·dq/128`).
#[target_feature(enable = "avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
pub unsafe fn qk_q4_avx2<const LO: bool>(
    q8: *const i8,
    qd: *const f32,
    qc: *const i32,
    k: *const u8,
    nb1: usize,
    active: &[u8],
    s: *mut f32,
    mr: usize,
    dk: usize,
    pf: usize,
    lo: *const i8,
    qcc: *const i32,
) {
    unsafe {
        let nb = dk / 32;
        let lines = (nb * 18).div_ceil(64);
        let ones = _mm256_set1_epi16(1);
        let w128 = _mm256_set1_epi16(128);
        let na = active.len();
        let mut sacc = [_mm256_setzero_ps(); 16];
        let mut i = 0;
        while i < na {
            let (n, ts, rp) = k_rows8(k, nb1, active, i, pf, lines);
            for m in sacc.iter_mut().take(mr) {
                *m = _mm256_setzero_ps();
            }
            for b in 0..nb {
                let kc = q4_cols(&rp, 18 * b + 2);
                let mut h = [0u16; 8];
                for j in 0..8 {
                    h[j] = (rp[j].add(18 * b) as *const u16).read_unaligned();
                }
                let dkv = _mm256_cvtph_ps(_mm_loadu_si128(h.as_ptr() as *const __m128i));
                for (m, sm) in sacc.iter_mut().enumerate().take(mr) {
                    let dq = q4_dot16(&kc, q8.add(m * dk + 32 * b));
                    if LO {
                        // 128·dot(q) + dot(lo) − qcc (exact in i32), scale dk·dq/128
                        let dl = q4_dot16(&kc, lo.add(m * dk + 32 * b));
                        let dot = _mm256_add_epi32(
                            _mm256_madd_epi16(dq, w128),
                            _mm256_madd_epi16(dl, ones),
                        );
                        let comb = _mm256_sub_epi32(dot, _mm256_set1_epi32(*qcc.add(m * nb + b)));
                        let sc =
                            _mm256_mul_ps(dkv, _mm256_set1_ps(*qd.add(m * nb + b) * (1.0 / 128.0)));
                        *sm = _mm256_fmadd_ps(_mm256_cvtepi32_ps(comb), sc, *sm);
                    } else {
                        // Σ n·q − 8·Σq (`qc`)
                        let dot = _mm256_sub_epi32(
                            _mm256_madd_epi16(dq, ones),
                            _mm256_set1_epi32(*qc.add(m * nb + b)),
                        );
                        let sc = _mm256_mul_ps(dkv, _mm256_set1_ps(*qd.add(m * nb + b)));
                        *sm = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), sc, *sm);
                    }
                }
            }
            store_rows8(&sacc, mr, s, &ts, n);
            i += n;
        }
    }
}
