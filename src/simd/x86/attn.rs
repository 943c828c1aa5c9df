//! x86 kernels (attn): the tile micro-kernels of `crate::attn`.
//! Contracts (sizes, layouts) are documented and checked in the safe wrappers
//! (`attn::kernel`, `attn::deq`).
use core::arch::x86_64::*;

// ---------------------------------------------------------------- tile GEMMs

const T: usize = 64;

/// `s[m][0..64] = Σ_d q[m][d] kt[d][0..64]`, `mp % 4 == 0`.
// index loops: r/c index the accumulator tile, the K lanes and the pointer offsets together
#[allow(clippy::needless_range_loop)]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub unsafe fn qk_tile_avx512(q: *const f32, kt: *const f32, s: *mut f32, mp: usize, dk: usize) {
    unsafe {
        let mut m = 0;
        while m < mp {
            let mut acc = [[_mm512_setzero_ps(); 4]; 4];
            let q0 = q.add(m * dk);
            for d in 0..dk {
                let kp = kt.add(d * T);
                let k = [
                    _mm512_loadu_ps(kp),
                    _mm512_loadu_ps(kp.add(16)),
                    _mm512_loadu_ps(kp.add(32)),
                    _mm512_loadu_ps(kp.add(48)),
                ];
                for r in 0..4 {
                    let b = _mm512_set1_ps(*q0.add(r * dk + d));
                    for c in 0..4 {
                        acc[r][c] = _mm512_fmadd_ps(b, k[c], acc[r][c]);
                    }
                }
            }
            for r in 0..4 {
                for c in 0..4 {
                    _mm512_storeu_ps(s.add((m + r) * T + 16 * c), acc[r][c]);
                }
            }
            m += 4;
        }
    }
}

// index loops: r/c index the accumulator tile, the V lanes and the pointer offsets together
#[allow(clippy::needless_range_loop)]
#[inline(always)]
unsafe fn pv_block512<const NC: usize>(
    p: *const f32,
    vt: *const f32,
    o: *mut f32,
    m: usize,
    c0: usize,
    dvp: usize,
    active: &[u8],
) {
    unsafe {
        let mut acc = [[_mm512_setzero_ps(); NC]; 4];
        for r in 0..4 {
            for c in 0..NC {
                acc[r][c] = _mm512_loadu_ps(o.add((m + r) * dvp + c0 + 16 * c));
            }
        }
        for &t in active {
            let t = t as usize;
            let vp = vt.add(t * dvp + c0);
            let mut v = [_mm512_setzero_ps(); NC];
            for c in 0..NC {
                v[c] = _mm512_loadu_ps(vp.add(16 * c));
            }
            for r in 0..4 {
                let b = _mm512_set1_ps(*p.add((m + r) * T + t));
                for c in 0..NC {
                    acc[r][c] = _mm512_fmadd_ps(b, v[c], acc[r][c]);
                }
            }
        }
        for r in 0..4 {
            for c in 0..NC {
                _mm512_storeu_ps(o.add((m + r) * dvp + c0 + 16 * c), acc[r][c]);
            }
        }
    }
}

/// `o[m][:] += Σ_{t∈active} p[m][t] vt[t][:]`, `mp % 4 == 0`, `dvp % 16 == 0`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub unsafe fn pv_tile_avx512(
    p: *const f32,
    vt: *const f32,
    o: *mut f32,
    mp: usize,
    dvp: usize,
    active: &[u8],
) {
    unsafe {
        let mut m = 0;
        while m < mp {
            let mut c0 = 0;
            while c0 + 64 <= dvp {
                pv_block512::<4>(p, vt, o, m, c0, dvp, active);
                c0 += 64;
            }
            match (dvp - c0) / 16 {
                3 => pv_block512::<3>(p, vt, o, m, c0, dvp, active),
                2 => pv_block512::<2>(p, vt, o, m, c0, dvp, active),
                1 => pv_block512::<1>(p, vt, o, m, c0, dvp, active),
                _ => {}
            }
            m += 4;
        }
    }
}

// (the AVX2 tile GEMMs are in `attn_avx2`)

// ---------------------------------------------------------------- softmax pieces

/// `s = mv == -inf ? -inf : s*scale + mv` over 64 lanes; returns the max.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub unsafe fn scores_avx512(s: *mut f32, mv: *const f32, scale: f32) -> f32 {
    unsafe {
        let sc = _mm512_set1_ps(scale);
        let ninf = _mm512_set1_ps(f32::NEG_INFINITY);
        let mut mx = ninf;
        for c in 0..4 {
            let m = _mm512_loadu_ps(mv.add(16 * c));
            let x = _mm512_add_ps(_mm512_mul_ps(_mm512_loadu_ps(s.add(16 * c)), sc), m);
            let live = _mm512_cmp_ps_mask::<_CMP_NEQ_OQ>(m, ninf);
            let x = _mm512_mask_blend_ps(live, ninf, x);
            _mm512_storeu_ps(s.add(16 * c), x);
            mx = _mm512_max_ps(mx, x);
        }
        _mm512_reduce_max_ps(mx)
    }
}

/// AVX2 variant of [`scores_avx512`].
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn scores_avx2(s: *mut f32, mv: *const f32, scale: f32) -> f32 {
    unsafe {
        let sc = _mm256_set1_ps(scale);
        let ninf = _mm256_set1_ps(f32::NEG_INFINITY);
        let mut mx = ninf;
        for c in 0..8 {
            let m = _mm256_loadu_ps(mv.add(8 * c));
            let x = _mm256_add_ps(_mm256_mul_ps(_mm256_loadu_ps(s.add(8 * c)), sc), m);
            let live = _mm256_cmp_ps::<_CMP_NEQ_OQ>(m, ninf);
            let x = _mm256_blendv_ps(ninf, x, live);
            _mm256_storeu_ps(s.add(8 * c), x);
            mx = _mm256_max_ps(mx, x);
        }
        let mut buf = [0f32; 8];
        _mm256_storeu_ps(buf.as_mut_ptr(), mx);
        buf.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b))
    }
}

// expf: x = n·ln2 + r, |r| <= ln2/2, e^r by a degree-6 polynomial (Cephes `expf`
// coefficients), 2^n by scalef / exponent bits. Max error ~1.5 ulp; inputs below -103
// give exactly 0 (so masked scores contribute nothing).
const LOG2E: f32 = std::f32::consts::LOG2_E;
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
const P: [f32; 6] = [
    1.987_569_1e-4,
    1.398_2e-3,
    8.333_452e-3,
    4.166_579_6e-2,
    1.666_666_5e-1,
    5e-1, // Cephes' 5.0000001201e-1 rounds to exactly 0.5 in f32
];

#[inline(always)]
unsafe fn exp512(x: __m512) -> __m512 {
    unsafe {
        let dead = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(x, _mm512_set1_ps(-103.0));
        let x = _mm512_min_ps(x, _mm512_set1_ps(88.72));
        let x = _mm512_max_ps(x, _mm512_set1_ps(-103.0));
        let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm512_mul_ps(x, _mm512_set1_ps(LOG2E)),
        );
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_HI), x);
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_LO), r);
        let mut y = _mm512_set1_ps(P[0]);
        for c in &P[1..] {
            y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(*c));
        }
        let r2 = _mm512_mul_ps(r, r);
        let y = _mm512_fmadd_ps(y, r2, _mm512_add_ps(r, _mm512_set1_ps(1.0)));
        let y = _mm512_scalef_ps(y, n);
        _mm512_mask_blend_ps(dead, y, _mm512_setzero_ps())
    }
}

#[inline(always)]
unsafe fn exp256(x: __m256) -> __m256 {
    unsafe {
        let dead = _mm256_cmp_ps::<_CMP_LT_OQ>(x, _mm256_set1_ps(-87.0));
        let x = _mm256_min_ps(x, _mm256_set1_ps(88.0));
        let x = _mm256_max_ps(x, _mm256_set1_ps(-87.0));
        let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm256_mul_ps(x, _mm256_set1_ps(LOG2E)),
        );
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_HI), x);
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_LO), r);
        let mut y = _mm256_set1_ps(P[0]);
        for c in &P[1..] {
            y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(*c));
        }
        let r2 = _mm256_mul_ps(r, r);
        let y = _mm256_fmadd_ps(y, r2, _mm256_add_ps(r, _mm256_set1_ps(1.0)));
        // 2^n for n in [-126, 127]
        let e = _mm256_slli_epi32::<23>(_mm256_add_epi32(
            _mm256_cvtps_epi32(n),
            _mm256_set1_epi32(127),
        ));
        let y = _mm256_mul_ps(y, _mm256_castsi256_ps(e));
        _mm256_blendv_ps(y, _mm256_setzero_ps(), dead)
    }
}

/// `s = exp(s - mx)` over 64 lanes; returns the sum.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub unsafe fn exp_sum_avx512(s: *mut f32, mx: f32) -> f32 {
    unsafe {
        let m = _mm512_set1_ps(mx);
        let mut sum = _mm512_setzero_ps();
        for c in 0..4 {
            let e = exp512(_mm512_sub_ps(_mm512_loadu_ps(s.add(16 * c)), m));
            _mm512_storeu_ps(s.add(16 * c), e);
            sum = _mm512_add_ps(sum, e);
        }
        _mm512_reduce_add_ps(sum)
    }
}

/// AVX2 variant of [`exp_sum_avx512`].
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn exp_sum_avx2(s: *mut f32, mx: f32) -> f32 {
    unsafe {
        let m = _mm256_set1_ps(mx);
        let mut sum = _mm256_setzero_ps();
        for c in 0..8 {
            let e = exp256(_mm256_sub_ps(_mm256_loadu_ps(s.add(8 * c)), m));
            _mm256_storeu_ps(s.add(8 * c), e);
            sum = _mm256_add_ps(sum, e);
        }
        let mut buf = [0f32; 8];
        _mm256_storeu_ps(buf.as_mut_ptr(), sum);
        buf.iter().sum()
    }
}

// ---------------------------------------------------------------- tile masks and softmax

/// One mask row of a tile: `out[t] = slope·f16(src[t])` for `t < tl ≤ 64`, `-inf` for
/// `t ≥ tl`; returns the bitmasks of the columns `t < tl` that are live (`≠ -inf`, NaN
/// included) and hidden (`= -inf`). Lanes past `tl` are never read.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub unsafe fn mask_tile_avx512(src: *const u8, tl: usize, slope: f32, out: *mut f32) -> (u64, u64) {
    unsafe {
        let sl = _mm512_set1_ps(slope);
        let ninf = _mm512_set1_ps(f32::NEG_INFINITY);
        let (mut live, mut hid) = (0u64, 0u64);
        for c in 0..4 {
            let n = tl.saturating_sub(16 * c).min(16);
            let k = ((1u32 << n) - 1) as __mmask16;
            // masked-off lanes are not read (no fault past the row)
            let h = _mm256_maskz_loadu_epi16(k, src.wrapping_add(32 * c) as *const i16);
            let x = _mm512_mask_blend_ps(k, ninf, _mm512_mul_ps(_mm512_cvtph_ps(h), sl));
            _mm512_storeu_ps(out.add(16 * c), x);
            live |= (_mm512_mask_cmp_ps_mask::<_CMP_NEQ_UQ>(k, x, ninf) as u64) << (16 * c);
            hid |= (_mm512_mask_cmp_ps_mask::<_CMP_EQ_OQ>(k, x, ninf) as u64) << (16 * c);
        }
        (live, hid)
    }
}

/// AVX2 variant of [`mask_tile_avx512`].
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn mask_tile_avx2(src: *const u8, tl: usize, slope: f32, out: *mut f32) -> (u64, u64) {
    unsafe {
        let mut h = [0u16; T];
        core::ptr::copy_nonoverlapping(src, h.as_mut_ptr() as *mut u8, 2 * tl);
        let sl = _mm256_set1_ps(slope);
        let ninf = _mm256_set1_ps(f32::NEG_INFINITY);
        let (mut live, mut hid) = (0u64, 0u64);
        for c in 0..8 {
            let x = _mm256_mul_ps(
                _mm256_cvtph_ps(_mm_loadu_si128(h.as_ptr().add(8 * c) as *const __m128i)),
                sl,
            );
            let lv = _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_NEQ_UQ>(x, ninf)) as u64;
            let hd = _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_EQ_OQ>(x, ninf)) as u64;
            _mm256_storeu_ps(out.add(8 * c), x);
            live |= lv << (8 * c);
            hid |= hd << (8 * c);
        }
        let real = if tl >= 64 { u64::MAX } else { (1u64 << tl) - 1 };
        for t in tl..T {
            *out.add(t) = f32::NEG_INFINITY;
        }
        (live & real, hid & real)
    }
}

/// One tile's online-softmax step for the rows `0..mr` of `s` (`[mr][64]`), row `m` against
/// the mask row `mi[m]` of `mv`: the scores ([`scores_avx512`] / [`scores_softcap_avx512`]),
/// the running max `mrow[m]` and sum `srow[m]` updated, `s[m]` replaced by the probabilities
/// ([`exp_sum_avx512`]; zeros for a row with no live column), and `ms[m]` the factor row
/// `m`'s earlier output must be scaled by (exactly 1 when its max did not grow). One call per
/// tile instead of two per row; the same numbers as those kernels row by row.
macro_rules! softmax_tile {
    ($name:ident, $feat:literal, $scores:ident, $softcap:ident, $exp_sum:ident) => {
        #[target_feature(enable = $feat)]
        #[allow(clippy::too_many_arguments)]
        pub unsafe fn $name(
            s: *mut f32,
            mv: *const f32,
            mi: *const u32,
            mr: usize,
            scale: f32,
            softcap: f32,
            mrow: *mut f32,
            srow: *mut f32,
            ms: *mut f32,
        ) {
            unsafe {
                for m in 0..mr {
                    let sr = s.add(m * T);
                    let mvr = mv.add(*mi.add(m) as usize * T);
                    let tmax = if softcap != 0.0 {
                        $softcap(sr, mvr, scale, softcap)
                    } else {
                        $scores(sr, mvr, scale)
                    };
                    *ms.add(m) = 1.0;
                    if tmax == f32::NEG_INFINITY {
                        core::ptr::write_bytes(sr, 0, T);
                        continue;
                    }
                    let mold = *mrow.add(m);
                    let mnew = mold.max(tmax);
                    if mnew > mold {
                        let f = (mold - mnew).exp();
                        *ms.add(m) = f;
                        *srow.add(m) *= f;
                    }
                    *mrow.add(m) = mnew;
                    *srow.add(m) += $exp_sum(sr, mnew);
                }
            }
        }
    };
}

softmax_tile!(
    softmax_tile_avx512,
    "avx512f,avx512bw,avx512vl,avx2,fma,f16c",
    scores_avx512,
    scores_softcap_avx512,
    exp_sum_avx512
);
softmax_tile!(
    softmax_tile_avx2,
    "avx2,fma,f16c",
    scores_avx2,
    scores_softcap_avx2,
    exp_sum_avx2
);

// ---------------------------------------------------------------- decode (few rows)

/// Lane `i` of the result = horizontal sum of `v[i]`.
#[inline(always)]
unsafe fn hsum16(v: &[__m512; 16]) -> __m512 {
    unsafe {
        let mut w = [_mm512_setzero_ps(); 4];
        for (g, wg) in w.iter_mut().enumerate() {
            let b = 4 * g;
            let s01 = _mm512_add_ps(
                _mm512_unpacklo_ps(v[b], v[b + 1]),
                _mm512_unpackhi_ps(v[b], v[b + 1]),
            );
            let s23 = _mm512_add_ps(
                _mm512_unpacklo_ps(v[b + 2], v[b + 3]),
                _mm512_unpackhi_ps(v[b + 2], v[b + 3]),
            );
            // per 128-bit lane: [v_b, v_b+1, v_b+2, v_b+3] partial sums
            *wg = _mm512_add_ps(
                _mm512_shuffle_ps::<0b01_00_01_00>(s01, s23),
                _mm512_shuffle_ps::<0b11_10_11_10>(s01, s23),
            );
        }
        let p01 = _mm512_add_ps(
            _mm512_shuffle_f32x4::<0b10_00_10_00>(w[0], w[1]),
            _mm512_shuffle_f32x4::<0b11_01_11_01>(w[0], w[1]),
        );
        let p23 = _mm512_add_ps(
            _mm512_shuffle_f32x4::<0b10_00_10_00>(w[2], w[3]),
            _mm512_shuffle_f32x4::<0b11_01_11_01>(w[2], w[3]),
        );
        _mm512_add_ps(
            _mm512_shuffle_f32x4::<0b10_00_10_00>(p01, p23),
            _mm512_shuffle_f32x4::<0b11_01_11_01>(p01, p23),
        )
    }
}

/// `s[m][t] = Σ_d q[m][d] k[t][d]` for `t < 64`, K row-major `[64][dk]`, `mp % 4 == 0`.
// index loops: j indexes the K registers, the accumulators (4r+j) and the K row offsets together
#[allow(clippy::needless_range_loop)]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub unsafe fn qk_rows_avx512(q: *const f32, k: *const f32, s: *mut f32, mp: usize, dk: usize) {
    unsafe {
        let full = dk / 16;
        let tail = dk % 16;
        let tm: __mmask16 = ((1u32 << tail) - 1) as u16;
        let mut buf = [0f32; 16];
        let mut m = 0;
        while m < mp {
            let mut t0 = 0;
            while t0 < T {
                let mut acc = [_mm512_setzero_ps(); 16];
                for c in 0..full {
                    let mut kv = [_mm512_setzero_ps(); 4];
                    for j in 0..4 {
                        kv[j] = _mm512_loadu_ps(k.add((t0 + j) * dk + 16 * c));
                    }
                    for r in 0..4 {
                        let qv = _mm512_loadu_ps(q.add((m + r) * dk + 16 * c));
                        for j in 0..4 {
                            acc[4 * r + j] = _mm512_fmadd_ps(qv, kv[j], acc[4 * r + j]);
                        }
                    }
                }
                if tail != 0 {
                    let c = full;
                    let mut kv = [_mm512_setzero_ps(); 4];
                    for j in 0..4 {
                        kv[j] = _mm512_maskz_loadu_ps(tm, k.add((t0 + j) * dk + 16 * c));
                    }
                    for r in 0..4 {
                        let qv = _mm512_maskz_loadu_ps(tm, q.add((m + r) * dk + 16 * c));
                        for j in 0..4 {
                            acc[4 * r + j] = _mm512_fmadd_ps(qv, kv[j], acc[4 * r + j]);
                        }
                    }
                }
                _mm512_storeu_ps(buf.as_mut_ptr(), hsum16(&acc));
                for r in 0..4 {
                    for j in 0..4 {
                        *s.add((m + r) * T + t0 + j) = buf[4 * r + j];
                    }
                }
                t0 += 4;
            }
            m += 4;
        }
    }
}

/// AVX2 variant of [`qk_rows_avx512`] (one (m, t) pair at a time, 8-wide).
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn qk_rows_avx2(q: *const f32, k: *const f32, s: *mut f32, mp: usize, dk: usize) {
    unsafe {
        let full = dk / 8;
        for m in 0..mp {
            let qr = q.add(m * dk);
            for t in 0..T {
                let kr = k.add(t * dk);
                let mut acc = _mm256_setzero_ps();
                for c in 0..full {
                    acc = _mm256_fmadd_ps(
                        _mm256_loadu_ps(qr.add(8 * c)),
                        _mm256_loadu_ps(kr.add(8 * c)),
                        acc,
                    );
                }
                let mut buf = [0f32; 8];
                _mm256_storeu_ps(buf.as_mut_ptr(), acc);
                let mut sum = ((buf[0] + buf[4]) + (buf[1] + buf[5]))
                    + ((buf[2] + buf[6]) + (buf[3] + buf[7]));
                for d in 8 * full..dk {
                    sum = (*qr.add(d)).mul_add(*kr.add(d), sum);
                }
                *s.add(m * T + t) = sum;
            }
        }
    }
}

// ---------------------------------------------------------------- fused decode (quantized rows)
//
// The decode kernels below read K/V rows straight from the cache (f16, q8_0, q4_0) and
// dequantize in registers, exactly as upstream's `to_float` does (`q·d`, `(q-8)·d`, exact f16),
// so they compute bit for bit what `qk_rows_avx512` / `pv_tile_avx512` compute on dequantized
// tiles, without writing the tiles to memory. Rows are addressed as `base + t·nb1` for the
// tile offsets `t` in `active` (the caller checks every such row lies inside the buffer).

/// Row formats of the fused kernels (const-generic parameter `F`).
pub const FMT_F16: u8 = 0;
pub const FMT_Q8_0: u8 = 1;
pub const FMT_Q4_0: u8 = 2;

/// Bytes of one 32-element block of the quantized format `F` (q8_0: 34, q4_0: 18).
#[inline(always)]
pub(super) const fn qblock_bytes<const F: u8>() -> usize {
    if F == FMT_Q8_0 {
        34
    } else {
        18
    }
}

/// Bytes of a row of `d` elements in format `F`.
#[inline(always)]
pub(super) const fn fmt_row_bytes<const F: u8>(d: usize) -> usize {
    match F {
        FMT_F16 => 2 * d,
        _ => d / 32 * qblock_bytes::<F>(),
    }
}

/// Broadcast the f16 at `p` (a block scale) as f32, exactly.
#[inline(always)]
unsafe fn bcast_f16(p: *const u8) -> __m512 {
    unsafe {
        let h = (p as *const u16).read_unaligned();
        _mm512_broadcastss_ps(_mm_cvtph_ps(_mm_cvtsi32_si128(h as i32)))
    }
}

/// Elements `32g .. 32g+32` of the row at `p` (exactly dequantized), as two vectors.
#[inline(always)]
unsafe fn load32<const F: u8>(p: *const u8, g: usize) -> (__m512, __m512) {
    unsafe {
        match F {
            FMT_F16 => {
                let a = _mm256_loadu_si256(p.add(64 * g) as *const __m256i);
                let b = _mm256_loadu_si256(p.add(64 * g + 32) as *const __m256i);
                (_mm512_cvtph_ps(a), _mm512_cvtph_ps(b))
            }
            FMT_Q8_0 => {
                let bp = p.add(34 * g);
                let d = bcast_f16(bp);
                let a = _mm512_cvtepi8_epi32(_mm_loadu_si128(bp.add(2) as *const __m128i));
                let b = _mm512_cvtepi8_epi32(_mm_loadu_si128(bp.add(18) as *const __m128i));
                (
                    _mm512_mul_ps(_mm512_cvtepi32_ps(a), d),
                    _mm512_mul_ps(_mm512_cvtepi32_ps(b), d),
                )
            }
            _ => {
                let bp = p.add(18 * g);
                let d = bcast_f16(bp);
                let x = _mm512_cvtepu8_epi32(_mm_loadu_si128(bp.add(2) as *const __m128i));
                let eight = _mm512_set1_epi32(8);
                let lo = _mm512_sub_epi32(_mm512_and_si512(x, _mm512_set1_epi32(0x0f)), eight);
                let hi = _mm512_sub_epi32(_mm512_srli_epi32::<4>(x), eight);
                (
                    _mm512_mul_ps(_mm512_cvtepi32_ps(lo), d),
                    _mm512_mul_ps(_mm512_cvtepi32_ps(hi), d),
                )
            }
        }
    }
}

/// Elements `16c .. 16c+16` of an f16 row (the tail of head sizes ≡ 16 mod 32).
#[inline(always)]
unsafe fn load16_f16(p: *const u8, c: usize) -> __m512 {
    unsafe { _mm512_cvtph_ps(_mm256_loadu_si256(p.add(32 * c) as *const __m256i)) }
}

/// Hint the next rows of a stream into L2 (`lines` cache lines from `p`); `p` may point past
/// the buffer (prefetches never fault; the address is only computed). L2, not L1: a tile
/// ahead is more lines than L1's miss buffers hold, and prefetches into L1 compete for them
/// with the kernel's own loads (Zen 4, n_kv 32768: f16 decode ~45 % and q8_0 head 128 ~30 %
/// faster than ~32 KiB ahead into L1).
#[inline(always)]
pub(super) unsafe fn prefetch_row(p: *const u8, lines: usize) {
    unsafe {
        for l in 0..lines {
            _mm_prefetch::<_MM_HINT_T1>(p.wrapping_add(64 * l) as *const i8);
        }
    }
}

/// `s[m][t] = Σ_d q[m][d] · k_t[d]` for `t ∈ active`, `m < mp` (`mp % 4 == 0`), K rows of
/// format `F` at `k + t·nb1`; `dk % 16 == 0` (`% 32` for quantized formats). Same summation
/// order as [`qk_rows_avx512`] (16 lanes per (m, t) over the head dimension, then `hsum16`).
// a raw-pointer kernel: the safe wrapper attn::kernel::Kernels::qk_fused checks these together
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub unsafe fn qk_fused_avx512<const F: u8>(
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
        by_fours!(mp, |m, R| qk_fused_rows::<F, R>(
            q, k, nb1, active, s, m, dk, pf
        ));
    }
}

/// Query rows `m..m+R` of [`qk_fused_avx512`] (`R ≤ 4`; each row's sums do not depend on the
/// others).
// index loops: r/j index the accumulator tile, the K rows and the Q row offsets together
#[allow(clippy::needless_range_loop)]
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn qk_fused_rows<const F: u8, const R: usize>(
    q: *const f32,
    k: *const u8,
    nb1: usize,
    active: &[u8],
    s: *mut f32,
    m: usize,
    dk: usize,
    pf: usize,
) {
    unsafe {
        let n32 = dk / 32;
        let tail = !dk.is_multiple_of(32);
        let lines = fmt_row_bytes::<F>(dk).div_ceil(64);
        let na = active.len();
        let mut buf = [0f32; 16];
        let mut i = 0;
        while i < na {
            let ts = [
                active[i] as usize,
                active[(i + 1).min(na - 1)] as usize,
                active[(i + 2).min(na - 1)] as usize,
                active[(i + 3).min(na - 1)] as usize,
            ];
            let mut kp = [k; 4];
            for j in 0..4 {
                kp[j] = k.add(ts[j] * nb1);
            }
            if m == 0 && pf != 0 {
                for p in kp {
                    prefetch_row(p.wrapping_add(pf * nb1), lines);
                }
            }
            let mut acc = [_mm512_setzero_ps(); 16];
            for g in 0..n32 {
                let mut kv = [(_mm512_setzero_ps(), _mm512_setzero_ps()); 4];
                for j in 0..4 {
                    kv[j] = load32::<F>(kp[j], g);
                }
                for r in 0..R {
                    let qr = q.add((m + r) * dk + 32 * g);
                    let q0 = _mm512_loadu_ps(qr);
                    let q1 = _mm512_loadu_ps(qr.add(16));
                    for j in 0..4 {
                        acc[4 * r + j] = _mm512_fmadd_ps(q0, kv[j].0, acc[4 * r + j]);
                    }
                    for j in 0..4 {
                        acc[4 * r + j] = _mm512_fmadd_ps(q1, kv[j].1, acc[4 * r + j]);
                    }
                }
            }
            if tail {
                let mut kv = [_mm512_setzero_ps(); 4];
                for j in 0..4 {
                    kv[j] = load16_f16(kp[j], 2 * n32);
                }
                for r in 0..R {
                    let q0 = _mm512_loadu_ps(q.add((m + r) * dk + 32 * n32));
                    for j in 0..4 {
                        acc[4 * r + j] = _mm512_fmadd_ps(q0, kv[j], acc[4 * r + j]);
                    }
                }
            }
            let sums = hsum16(&acc);
            if i + 4 <= na && (1..4).all(|j| ts[j] == ts[0] + j) {
                // four adjacent columns: lane group r is row m+r's four scores
                let lanes = [
                    _mm512_extractf32x4_ps::<0>(sums),
                    _mm512_extractf32x4_ps::<1>(sums),
                    _mm512_extractf32x4_ps::<2>(sums),
                    _mm512_extractf32x4_ps::<3>(sums),
                ];
                for r in 0..R {
                    _mm_storeu_ps(s.add((m + r) * T + ts[0]), lanes[r]);
                }
            } else {
                _mm512_storeu_ps(buf.as_mut_ptr(), sums);
                for r in 0..R {
                    for j in 0..4 {
                        *s.add((m + r) * T + ts[j]) = buf[4 * r + j];
                    }
                }
            }
            i += 4;
        }
    }
}

/// Rows `m..m+R`, 32-column groups `g0..g0+NG` of `o += Σ_{t∈active} p[·][t] · v_t`.
// index loops: r/g/h index the accumulator tile, the V lanes and the pointer offsets together
#[allow(clippy::needless_range_loop)]
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn pv_fused_block<const F: u8, const R: usize, const NG: usize>(
    p: *const f32,
    v: *const u8,
    nb1: usize,
    active: &[u8],
    o: *mut f32,
    m: usize,
    g0: usize,
    dvp: usize,
    pf: usize,
) {
    unsafe {
        let lines = match F {
            FMT_F16 => 64 * NG * 2,
            FMT_Q8_0 => 34 * NG,
            _ => 18 * NG,
        }
        .div_ceil(64)
            + 1;
        let mut acc = [[[_mm512_setzero_ps(); 2]; NG]; R];
        for r in 0..R {
            for g in 0..NG {
                for h in 0..2 {
                    acc[r][g][h] = _mm512_loadu_ps(o.add((m + r) * dvp + 32 * (g0 + g) + 16 * h));
                }
            }
        }
        for &t in active {
            let t = t as usize;
            let vp = v.add(t * nb1);
            if pf != 0 {
                let gb = match F {
                    FMT_F16 => 64 * g0,
                    FMT_Q8_0 => 34 * g0,
                    _ => 18 * g0,
                };
                prefetch_row(vp.wrapping_add(pf * nb1 + gb), lines);
            }
            let mut vv = [(_mm512_setzero_ps(), _mm512_setzero_ps()); NG];
            for g in 0..NG {
                vv[g] = load32::<F>(vp, g0 + g);
            }
            for r in 0..R {
                let b = _mm512_set1_ps(*p.add((m + r) * T + t));
                for g in 0..NG {
                    acc[r][g][0] = _mm512_fmadd_ps(b, vv[g].0, acc[r][g][0]);
                    acc[r][g][1] = _mm512_fmadd_ps(b, vv[g].1, acc[r][g][1]);
                }
            }
        }
        for r in 0..R {
            for g in 0..NG {
                for h in 0..2 {
                    _mm512_storeu_ps(o.add((m + r) * dvp + 32 * (g0 + g) + 16 * h), acc[r][g][h]);
                }
            }
        }
    }
}

/// The 16-column f16 tail (column chunk `c`) of rows `m..m+R`.
// index loops: r indexes the accumulators and the row offsets of o and p together
#[allow(clippy::needless_range_loop)]
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn pv_fused_tail16<const R: usize>(
    p: *const f32,
    v: *const u8,
    nb1: usize,
    active: &[u8],
    o: *mut f32,
    m: usize,
    c: usize,
    dvp: usize,
) {
    unsafe {
        let mut acc = [_mm512_setzero_ps(); R];
        for r in 0..R {
            acc[r] = _mm512_loadu_ps(o.add((m + r) * dvp + 16 * c));
        }
        for &t in active {
            let t = t as usize;
            let x = load16_f16(v.add(t * nb1), c);
            for r in 0..R {
                acc[r] = _mm512_fmadd_ps(_mm512_set1_ps(*p.add((m + r) * T + t)), x, acc[r]);
            }
        }
        for r in 0..R {
            _mm512_storeu_ps(o.add((m + r) * dvp + 16 * c), acc[r]);
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
        let n32 = dv / 32;
        let pf = if m == 0 { pf } else { 0 };
        by_pairs!(n32, |g, NG| pv_fused_block::<F, R, NG>(
            p, v, nb1, active, o, m, g, dvp, pf
        ));
        if !dv.is_multiple_of(32) {
            pv_fused_tail16::<R>(p, v, nb1, active, o, m, 2 * n32, dvp);
        }
    }
}

/// `o[m][:dv] += Σ_{t∈active} p[m][t] · v_t` for `m < mr` (any `mr ≥ 1`), V rows of format `F`
/// at `v + t·nb1`; `dv % 16 == 0` (`% 32` for quantized formats). Same order as
/// [`pv_tile_avx512`] (per output element, FMAs in `active` order).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
pub unsafe fn pv_fused_avx512<const F: u8>(
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

// ---------------------------------------------------------------- int8 decode K (VNNI)
//
// q8_0/q4_0 K against Q quantized to q8_0 (as upstream converts Q to K's `vec_dot_type`):
// 16 K rows at a time, transposed at 4-byte granularity so that lane j of every vector is
// row j; `vpdpbusd` (K as unsigned bytes: q4_0 nibbles, q8_0 bytes ^ 0x80) against a
// broadcast 4-byte group of a Q row accumulates 16 row dot products at once, with no
// horizontal sums. Per 32-element block: `acc_int - off·Σq` is the exact integer block dot
// (off = 8 for q4_0 nibbles, 128 for the q8_0 bias), then `s = fma(float(dot), dk·dq, s)`.

/// The f16 block scales at byte `offs[j] + boff` of `base` for 16 rows, as f32 (scalar loads:
/// cheaper than a dword gather on Zen 4, measured).
#[inline(always)]
unsafe fn scales16(base: *const u8, offs: &[usize; 16], boff: usize) -> __m512 {
    unsafe { scales16_at(|j| base.add(offs[j] + boff)) }
}

/// The f16 scales at `at(j)` for 16 rows, as f32.
#[inline(always)]
unsafe fn scales16_at(at: impl Fn(usize) -> *const u8) -> __m512 {
    unsafe {
        let mut h = [0u16; 16];
        for (j, x) in h.iter_mut().enumerate() {
            *x = (at(j) as *const u16).read_unaligned();
        }
        _mm512_cvtph_ps(_mm256_loadu_si256(h.as_ptr() as *const __m256i))
    }
}

/// Rows `p[j] + off` (16 bytes each) → `out[c]`, lane j = dword c of row j.
#[inline(always)]
unsafe fn transpose16x4(p: &[*const u8; 16], off: usize) -> [__m512i; 4] {
    unsafe {
        let mut z = [_mm512_setzero_si512(); 4];
        for (k, zk) in z.iter_mut().enumerate() {
            let mut v = _mm512_castsi128_si512(_mm_loadu_si128(p[k].add(off) as *const __m128i));
            v = _mm512_inserti32x4::<1>(v, _mm_loadu_si128(p[k + 4].add(off) as *const __m128i));
            v = _mm512_inserti32x4::<2>(v, _mm_loadu_si128(p[k + 8].add(off) as *const __m128i));
            v = _mm512_inserti32x4::<3>(v, _mm_loadu_si128(p[k + 12].add(off) as *const __m128i));
            *zk = v;
        }
        // within each 128-bit lane L, z[k] holds row 4L+k: a 4×4 dword transpose per lane
        let t0 = _mm512_unpacklo_epi32(z[0], z[1]);
        let t1 = _mm512_unpackhi_epi32(z[0], z[1]);
        let t2 = _mm512_unpacklo_epi32(z[2], z[3]);
        let t3 = _mm512_unpackhi_epi32(z[2], z[3]);
        [
            _mm512_unpacklo_epi64(t0, t2),
            _mm512_unpackhi_epi64(t0, t2),
            _mm512_unpacklo_epi64(t1, t3),
            _mm512_unpackhi_epi64(t1, t3),
        ]
    }
}

/// `s[m][t] ≈ q[m]·k_t` for `t ∈ active`, `m < mr`, K rows (q8_0 or q4_0, `dk % 32 == 0`) at
/// `k + t·nb1`. `q8` `[mr][dk]` Q quantized to q8_0 (the quants, natural order), `qd`
/// `[mr][dk/32]` its block scales, `qc` `[mr][dk/32]` = off·Σ(quants of the block). Row byte
/// offsets are `t·nb1` (+ block offsets).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
pub unsafe fn qk_i8_avx512<const F: u8, const LO: bool>(
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
        let bs = qblock_bytes::<F>();
        let lines = (nb * bs).div_ceil(64);
        let na = active.len();
        let mut i = 0;
        while i < na {
            let n = (na - i).min(16);
            let mut ts = [0usize; 16];
            for (j, t) in ts.iter_mut().enumerate() {
                *t = active[i + j.min(n - 1)] as usize;
            }
            let mut rp = [k; 16];
            let mut offs = [0usize; 16];
            for j in 0..16 {
                rp[j] = k.add(ts[j] * nb1);
                offs[j] = ts[j] * nb1;
            }
            if pf != 0 {
                for p in rp.iter().take(n) {
                    prefetch_row(p.wrapping_add(pf * nb1), lines);
                }
            }
            let g = Rows16 {
                rp: &rp,
                offs: &offs,
                k,
                lo,
                qcc,
            };
            let mut sacc = [_mm512_setzero_ps(); 16];
            by_fours!(mr, |m, R| qk_i8_rows::<F, R, LO>(
                &g, q8, qd, qc, nb, dk, m, &mut sacc
            ));
            let contiguous = ts[n - 1] - ts[0] == n - 1;
            let mut buf = [0f32; 16];
            for (m, sm) in sacc.iter().enumerate().take(mr) {
                let row = s.add(m * T);
                if contiguous {
                    let km: __mmask16 = ((1u32 << n) - 1) as u16;
                    _mm512_mask_storeu_ps(row.add(ts[0]), km, *sm);
                } else {
                    _mm512_storeu_ps(buf.as_mut_ptr(), *sm);
                    for j in 0..n {
                        *row.add(ts[j]) = buf[j];
                    }
                }
            }
            i += n;
        }
    }
}

/// 16 rows of a tile: their pointers and byte offsets from `k`; the second Q byte and its
/// corrections (`LO`).
struct Rows16<'a> {
    rp: &'a [*const u8; 16],
    offs: &'a [usize; 16],
    k: *const u8,
    lo: *const i8,
    qcc: *const i32,
}

/// Query rows `m..m+R` of [`qk_i8_avx512`] against 16 K rows: per block, the rows transposed
/// once, two independent `vpdpbusd` chains per query row (the integer sum is the same in any
/// order), `s += float(dot − qc)·(dk·dq)`.
// index loops: r indexes the accumulators and the Q row offsets together
#[allow(clippy::needless_range_loop)]
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn qk_i8_rows<const F: u8, const R: usize, const LO: bool>(
    g: &Rows16,
    q8: *const i8,
    qd: *const f32,
    qc: *const i32,
    nb: usize,
    dk: usize,
    m: usize,
    sacc: &mut [__m512; 16],
) {
    unsafe {
        let bs = qblock_bytes::<F>();
        let m4 = _mm512_set1_epi8(0x0f);
        let bias = _mm512_set1_epi8(-128);
        let mut acc = [_mm512_setzero_ps(); R];
        for b in 0..nb {
            let kc: [__m512i; 8] = if F == FMT_Q8_0 {
                let lo = transpose16x4(g.rp, 34 * b + 2);
                let hi = transpose16x4(g.rp, 34 * b + 18);
                [
                    _mm512_xor_si512(lo[0], bias),
                    _mm512_xor_si512(lo[1], bias),
                    _mm512_xor_si512(lo[2], bias),
                    _mm512_xor_si512(lo[3], bias),
                    _mm512_xor_si512(hi[0], bias),
                    _mm512_xor_si512(hi[1], bias),
                    _mm512_xor_si512(hi[2], bias),
                    _mm512_xor_si512(hi[3], bias),
                ]
            } else {
                let x = transpose16x4(g.rp, 18 * b + 2);
                [
                    _mm512_and_si512(x[0], m4),
                    _mm512_and_si512(x[1], m4),
                    _mm512_and_si512(x[2], m4),
                    _mm512_and_si512(x[3], m4),
                    _mm512_and_si512(_mm512_srli_epi32::<4>(x[0]), m4),
                    _mm512_and_si512(_mm512_srli_epi32::<4>(x[1]), m4),
                    _mm512_and_si512(_mm512_srli_epi32::<4>(x[2]), m4),
                    _mm512_and_si512(_mm512_srli_epi32::<4>(x[3]), m4),
                ]
            };
            let dkv = scales16(g.k, g.offs, bs * b);
            let mut d0 = [_mm512_setzero_si512(); R];
            let mut d1 = [_mm512_setzero_si512(); R];
            for c in 0..4 {
                for r in 0..R {
                    let qr = q8.add((m + r) * dk + 32 * b) as *const i32;
                    d0[r] = _mm512_dpbusd_epi32(
                        d0[r],
                        kc[c],
                        _mm512_set1_epi32(qr.add(c).read_unaligned()),
                    );
                    d1[r] = _mm512_dpbusd_epi32(
                        d1[r],
                        kc[c + 4],
                        _mm512_set1_epi32(qr.add(c + 4).read_unaligned()),
                    );
                }
            }
            if LO {
                // 128·dot(q) + dot(lo) − qcc, exact in i32 (|·| < 2²⁸), scale dk·dq/128
                let mut e0 = [_mm512_setzero_si512(); R];
                let mut e1 = [_mm512_setzero_si512(); R];
                for c in 0..4 {
                    for r in 0..R {
                        let lr = g.lo.add((m + r) * dk + 32 * b) as *const i32;
                        e0[r] = _mm512_dpbusd_epi32(
                            e0[r],
                            kc[c],
                            _mm512_set1_epi32(lr.add(c).read_unaligned()),
                        );
                        e1[r] = _mm512_dpbusd_epi32(
                            e1[r],
                            kc[c + 4],
                            _mm512_set1_epi32(lr.add(c + 4).read_unaligned()),
                        );
                    }
                }
                for r in 0..R {
                    let hi = _mm512_slli_epi32::<7>(_mm512_add_epi32(d0[r], d1[r]));
                    let dot = _mm512_sub_epi32(
                        _mm512_add_epi32(hi, _mm512_add_epi32(e0[r], e1[r])),
                        _mm512_set1_epi32(*g.qcc.add((m + r) * nb + b)),
                    );
                    let sc = _mm512_mul_ps(
                        dkv,
                        _mm512_set1_ps(*qd.add((m + r) * nb + b) * (1.0 / 128.0)),
                    );
                    acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), sc, acc[r]);
                }
                continue;
            }
            for r in 0..R {
                let dot = _mm512_sub_epi32(
                    _mm512_add_epi32(d0[r], d1[r]),
                    _mm512_set1_epi32(*qc.add((m + r) * nb + b)),
                );
                let sc = _mm512_mul_ps(dkv, _mm512_set1_ps(*qd.add((m + r) * nb + b)));
                acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), sc, acc[r]);
            }
        }
        sacc[m..m + R].copy_from_slice(&acc);
    }
}

/// One step of the AVX2 int8 K kernels ([`qk_i8_avx2`], `attn_avx2::qk_q4_avx2`): the K rows
/// `active[i..]`, 8 at most — how many are real (`n`), their columns and row pointers (lanes
/// past `n` repeat the last row: computed, never stored) — with the real rows prefetched
/// `pf` rows ahead (`lines` cache lines each; `pf == 0`: off).
#[inline(always)]
pub(super) unsafe fn k_rows8(
    k: *const u8,
    nb1: usize,
    active: &[u8],
    i: usize,
    pf: usize,
    lines: usize,
) -> (usize, [usize; 8], [*const u8; 8]) {
    unsafe {
        let n = (active.len() - i).min(8);
        let mut ts = [0usize; 8];
        for (j, t) in ts.iter_mut().enumerate() {
            *t = active[i + j.min(n - 1)] as usize;
        }
        let mut rp = [k; 8];
        for j in 0..8 {
            rp[j] = k.add(ts[j] * nb1);
        }
        if pf != 0 {
            for p in rp.iter().take(n) {
                prefetch_row(p.wrapping_add(pf * nb1), lines);
            }
        }
        (n, ts, rp)
    }
}

/// The end of a [`k_rows8`] step: query row `m < mr`'s scores of the `n` real rows from
/// lane `j` of `sacc[m]` to `s[m][ts[j]]`.
#[inline(always)]
pub(super) unsafe fn store_rows8(
    sacc: &[__m256; 16],
    mr: usize,
    s: *mut f32,
    ts: &[usize; 8],
    n: usize,
) {
    unsafe {
        let mut buf = [0f32; 8];
        for (m, sm) in sacc.iter().enumerate().take(mr) {
            let row = s.add(m * T);
            _mm256_storeu_ps(buf.as_mut_ptr(), *sm);
            for j in 0..n {
                *row.add(ts[j]) = buf[j];
            }
        }
    }
}

/// AVX2 variant of [`qk_i8_avx512`] for q8_0 K (no VNNI), same numbers: 8 K rows at a time.
/// Per block and query row, `maddubs` + `madd` give each row's exact integer block dot in 8
/// lanes (|k| against sign(k)·q — products ≤ 128·127, pairs fit i16 — as upstream's AVX2
/// `vec_dot` does, so `qc` is not used); three `hadd` levels and a lane swap put row j's dot in
/// lane j, then `s = fma(float(dot), dk·dq, s)` block by block. q4_0 K on AVX2:
/// `attn_avx2::qk_q4_avx2`.
///
/// `LO` (`Precision::F32`): with the second Q byte `lo` (`[mr][dk]`, `Kernels::prep_q8_lo`)
/// the kernel works in 16 bits instead: per block, the 8 K rows widened to i16 once, per query
/// row `Q' = 128·q + lo` in i16 (|Q'| ≤ 128·128 + 127), and two `madd` per K row (products
/// |k·Q'| < 2²¹, pair sums exact in i32) give `128·dot(q,k) + dot(lo,k)` exactly, with no
/// offset correction (`qcc` is not needed) — what [`qk_i8_avx512`] forms as
/// `128·(dot + 128·Σq) + (dot_lo + 128·Σlo) − qcc`. Then, as there,
/// `s = fma(float(dot), dk·(dq·(1/128)), s)`: bit-identical scores. (Three vector ops per K
/// row and query row where `maddubs` for both bytes takes seven: 11–13 % faster than that
/// on Zen 4 for h128 decode, and faster than the f32 kernel.)
#[target_feature(enable = "avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
pub unsafe fn qk_i8_avx2<const LO: bool>(
    q8: *const i8,
    qd: *const f32,
    k: *const u8,
    nb1: usize,
    active: &[u8],
    s: *mut f32,
    mr: usize,
    dk: usize,
    pf: usize,
    lo: *const i8,
) {
    unsafe {
        let nb = dk / 32;
        let bs = qblock_bytes::<FMT_Q8_0>();
        let lines = (nb * bs).div_ceil(64);
        let ones = _mm256_set1_epi16(1);
        let na = active.len();
        let mut sacc = [_mm256_setzero_ps(); 16];
        let mut i = 0;
        while i < na {
            let (n, ts, rp) = k_rows8(k, nb1, active, i, pf, lines);
            for m in sacc.iter_mut().take(mr) {
                *m = _mm256_setzero_ps();
            }
            for b in 0..nb {
                let mut kx = [_mm256_setzero_si256(); 8];
                let mut ks = [_mm256_setzero_si256(); 8];
                // LO: the block's K values widened to i16 (row j: elements 0..16, 16..32)
                let mut kw = [[_mm256_setzero_si256(); 2]; 8];
                let mut h = [0u16; 8];
                for j in 0..8 {
                    let bp = rp[j].add(bs * b);
                    h[j] = (bp as *const u16).read_unaligned();
                    if LO {
                        kw[j][0] = _mm256_cvtepi8_epi16(_mm_loadu_si128(bp.add(2) as *const _));
                        kw[j][1] = _mm256_cvtepi8_epi16(_mm_loadu_si128(bp.add(18) as *const _));
                    } else {
                        let raw = _mm256_loadu_si256(bp.add(2) as *const __m256i);
                        kx[j] = _mm256_sign_epi8(raw, raw);
                        ks[j] = raw;
                    }
                }
                let dkv = _mm256_cvtph_ps(_mm_loadu_si128(h.as_ptr() as *const __m128i));
                for (m, sm) in sacc.iter_mut().enumerate().take(mr) {
                    let mut d = [_mm256_setzero_si256(); 8];
                    if LO {
                        // Q' = 128·q + lo in i16 (|Q'| ≤ 128·128 + 127), then `madd`: products
                        // |k·Q'| < 2²¹, pair sums exact in i32
                        let (qp, lp) = (q8.add(m * dk + 32 * b), lo.add(m * dk + 32 * b));
                        let wide = |o: usize| {
                            let q = _mm256_cvtepi8_epi16(_mm_loadu_si128(qp.add(o) as *const _));
                            let l = _mm256_cvtepi8_epi16(_mm_loadu_si128(lp.add(o) as *const _));
                            _mm256_add_epi16(_mm256_slli_epi16::<7>(q), l)
                        };
                        let (w0, w1) = (wide(0), wide(16));
                        for j in 0..8 {
                            d[j] = _mm256_add_epi32(
                                _mm256_madd_epi16(kw[j][0], w0),
                                _mm256_madd_epi16(kw[j][1], w1),
                            );
                        }
                    } else {
                        let qv = _mm256_loadu_si256(q8.add(m * dk + 32 * b) as *const __m256i);
                        for j in 0..8 {
                            let y = _mm256_sign_epi8(qv, ks[j]);
                            d[j] = _mm256_madd_epi16(_mm256_maddubs_epi16(kx[j], y), ones);
                        }
                    }
                    let h01 = _mm256_hadd_epi32(d[0], d[1]);
                    let h23 = _mm256_hadd_epi32(d[2], d[3]);
                    let h45 = _mm256_hadd_epi32(d[4], d[5]);
                    let h67 = _mm256_hadd_epi32(d[6], d[7]);
                    let h0123 = _mm256_hadd_epi32(h01, h23);
                    let h4567 = _mm256_hadd_epi32(h45, h67);
                    let dot = _mm256_add_epi32(
                        _mm256_permute2x128_si256::<0x20>(h0123, h4567),
                        _mm256_permute2x128_si256::<0x31>(h0123, h4567),
                    );
                    // exact already (`qc` holds the VNNI kernel's bias correction, not used)
                    let dq = *qd.add(m * nb + b);
                    let sc = _mm256_mul_ps(
                        dkv,
                        _mm256_set1_ps(if LO { dq * (1.0 / 128.0) } else { dq }),
                    );
                    *sm = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), sc, *sm);
                }
            }
            store_rows8(&sacc, mr, s, &ts, n);
            i += n;
        }
    }
}

// ---------------------------------------------------------------- quantized decode V
//
// q8_0/q4_0 V with the block scale folded into the weights: `w = p·d` for every (row, block,
// query row), computed 16 rows at a time; then `o += w · q` with the integer values `q`
// converted to float in registers (q4_0: `vpermps` from the table -8..7, no scaling).

/// The floats -8..7 (q4_0 nibble → value).
const Q4_TABLE: [f32; 16] = [
    -8.0, -7.0, -6.0, -5.0, -4.0, -3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0,
];

/// Integer values of block `g` of a q8_0/q4_0 row as floats (2 × 16).
#[inline(always)]
unsafe fn qvals32<const F: u8>(p: *const u8, g: usize, tab: __m512) -> (__m512, __m512) {
    unsafe {
        if F == FMT_Q8_0 {
            let bp = p.add(34 * g + 2);
            let a = _mm512_cvtepi8_epi32(_mm_loadu_si128(bp as *const __m128i));
            let b = _mm512_cvtepi8_epi32(_mm_loadu_si128(bp.add(16) as *const __m128i));
            (_mm512_cvtepi32_ps(a), _mm512_cvtepi32_ps(b))
        } else {
            let x = _mm512_cvtepu8_epi32(_mm_loadu_si128(p.add(18 * g + 2) as *const __m128i));
            (
                _mm512_permutexvar_ps(x, tab),
                _mm512_permutexvar_ps(_mm512_srli_epi32::<4>(x), tab),
            )
        }
    }
}

// index loops: r/g/h index the accumulator tile, the V lanes and the pointer offsets together
#[allow(clippy::needless_range_loop)]
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn pv_q_block<const F: u8, const R: usize, const NG: usize>(
    w: *const f32,
    v: *const u8,
    nb1: usize,
    active: &[u8],
    o: *mut f32,
    m: usize,
    mr: usize,
    g0: usize,
    dvp: usize,
    pf: usize,
) {
    unsafe {
        let tab = _mm512_loadu_ps(Q4_TABLE.as_ptr());
        let bs = qblock_bytes::<F>();
        let lines = (bs * NG).div_ceil(64) + 1;
        let mut acc = [[[_mm512_setzero_ps(); 2]; NG]; R];
        for r in 0..R {
            for g in 0..NG {
                for h in 0..2 {
                    acc[r][g][h] = _mm512_loadu_ps(o.add((m + r) * dvp + 32 * (g0 + g) + 16 * h));
                }
            }
        }
        for (i, &t) in active.iter().enumerate() {
            let vp = v.add(t as usize * nb1);
            if pf != 0 {
                prefetch_row(vp.wrapping_add(pf * nb1 + bs * g0), lines);
            }
            let mut vv = [(_mm512_setzero_ps(), _mm512_setzero_ps()); NG];
            for g in 0..NG {
                vv[g] = qvals32::<F>(vp, g0 + g, tab);
            }
            for r in 0..R {
                for g in 0..NG {
                    let b = _mm512_set1_ps(*w.add(((g0 + g) * mr + m + r) * T + i));
                    acc[r][g][0] = _mm512_fmadd_ps(b, vv[g].0, acc[r][g][0]);
                    acc[r][g][1] = _mm512_fmadd_ps(b, vv[g].1, acc[r][g][1]);
                }
            }
        }
        for r in 0..R {
            for g in 0..NG {
                for h in 0..2 {
                    _mm512_storeu_ps(o.add((m + r) * dvp + 32 * (g0 + g) + 16 * h), acc[r][g][h]);
                }
            }
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
    dvp: usize,
    nb: usize,
    pf: usize,
) {
    unsafe {
        let pf = if m == 0 { pf } else { 0 };
        by_pairs!(nb, |g, NG| pv_q_block::<F, R, NG>(
            w, v, nb1, active, o, m, mr, g, dvp, pf
        ));
    }
}

/// `o[m][:dv] += Σ_i p[m][t_i] · d_{t_i,b} · q_{t_i}[:]` for `t_i = active[i]`, `m < mr` (≤ 16),
/// V rows q8_0/q4_0 (`dv % 32 == 0`) at `v + t·nb1`; the weights `p·d` are formed in `w`
/// (`[dv/32][mr][64]` floats of scratch).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
pub unsafe fn pv_q_avx512<const F: u8>(
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
        weights_pd::<F>(p, v, nb1, active, w, mr, nb);
        by_fours!(mr, |m, R| pv_q_rows::<F, R>(
            w, v, nb1, active, o, m, mr, dvp, nb, pf
        ));
    }
}

/// Whether `active` is a whole tile of consecutive rows, `0..T` (the usual decode tile),
/// for which the integer V weights take the row offsets in progression and plain loads of p.
#[inline(always)]
pub(super) fn whole_tile(active: &[u8]) -> bool {
    active.iter().copied().eq(0..T as u8)
}

/// The columns `active[i..i + n]` (`1 ≤ n ≤ 16`) as 16 i32 lanes, lanes `≥ n` repeating the
/// last: built in registers (16 scalar stores read back as one vector stall on store
/// forwarding).
#[inline(always)]
unsafe fn cols16(active: &[u8], i: usize, n: usize) -> __m512i {
    unsafe {
        debug_assert!((1..=16).contains(&n) && i + n <= active.len());
        let k = ((1u32 << n) - 1) as __mmask16;
        let b = _mm_maskz_loadu_epi8(k, active.as_ptr().add(i) as *const i8);
        let last = _mm512_set1_epi32(active[i + n - 1] as i32);
        _mm512_mask_blend_epi32(k, last, _mm512_cvtepu8_epi32(b))
    }
}

/// The weights `w[b][m][i] = p[m][t_i] · d_{t_i,b}` (`t_i = active[i]`, `[nb][mr][64]`) of the
/// quantized decode V kernels, 16 rows at a time.
#[inline(always)]
unsafe fn weights_pd<const F: u8>(
    p: *const f32,
    v: *const u8,
    nb1: usize,
    active: &[u8],
    w: *mut f32,
    mr: usize,
    nb: usize,
) {
    unsafe {
        let bs = qblock_bytes::<F>();
        let na = active.len();
        let mut i = 0;
        while i < na {
            let n = (na - i).min(16);
            let mut offs = [0usize; 16];
            for j in 0..16 {
                offs[j] = active[i + j.min(n - 1)] as usize * nb1;
            }
            let first = active[i] as usize;
            let contiguous = active[i + n - 1] as usize - first == n - 1;
            let tsv = cols16(active, i, n);
            let km: __mmask16 = ((1u32 << n) - 1) as u16;
            for b in 0..nb {
                let dvv = scales16(v, &offs, bs * b);
                for m in 0..mr {
                    let prow = p.add(m * T);
                    let pv = if contiguous {
                        _mm512_maskz_loadu_ps(km, prow.add(first))
                    } else {
                        _mm512_i32gather_ps::<4>(tsv, prow)
                    };
                    _mm512_mask_storeu_ps(w.add((b * mr + m) * T + i), km, _mm512_mul_ps(pv, dvv));
                }
            }
            i += n;
        }
    }
}

// ---------------------------------------------------------------- quantized decode V, integer
//
// `o[m] += Σ_t p[m][t]·d_{t,b}·q_t[:]` accumulated in integers (AVX-512 VNNI): per block `b`
// and query row `m` the tile's weights `w = p·d` are quantized to 16 bits against their
// largest magnitude `M` (`W = rint(w·(32767/M))`), two V rows are interleaved as 16-bit pairs
// and `vpdpwssd` adds `W_i·q_i + W_{i+1}·q_{i+1}` into 32-bit lanes — exact, since
// |Σ| ≤ 64·32767·128 < 2³¹ — and the tile ends with `o = fma(float(Σ W·q), M/32767, o)`
// (q4_0: `Σ W·(n−8)` as `Σ W·n − 8·Σ W`). Two MACs per lane and instruction instead of one
// FMA, the V values never converted to float; the weights keep 15 bits (relative error
// ≤ 2⁻¹⁶ of the tile's largest weight, far below the cache's own rounding).

/// The scales of a (block, row)'s 16-bit weights for the bound `M = big > 0` of its |p·d|
/// (see [`weights_q16`]): `W = rint(w·up)`, `w ≈ W·down` with `up = 32767/M`, `down =
/// M/32767`. `None` (the float kernel takes the tile) when `M` is not finite or below 2⁻¹⁰⁰,
/// where `32767/M` could overflow. The one rule of both ISAs' integer V kernels.
#[inline(always)]
pub(super) fn q16_scale(big: f32) -> Option<(f32, f32)> {
    (big >= f32::from_bits(0x0d80_0000) && big <= f32::MAX).then(|| (32767.0 / big, big / 32767.0))
}

/// The 16-bit weights of [`pv_i16_avx512`] (`wq`, `[nb][mr][64]`, zero past the active rows up
/// to the next multiple of 16), `sig = M/32767` and (q4_0) `sw = Σ W` per (block, row), in one
/// pass with the weights in registers: `M = P_m·D_b`, the row's largest probability in the
/// tile times the block's largest |scale| (a bound on |p·d| without a reduction per block and
/// row), `w = p·d` (as [`weights_pd`]) and `W = rint(w·(32767/M))`. `false` when a probability
/// or scale is not finite or `0 < M < 2⁻¹⁰⁰` (the float kernel then takes the tile).
// index loops: c indexes the groups' offsets, masks, scales and weights together
#[allow(clippy::needless_range_loop)]
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn weights_q16<const F: u8>(
    p: *const f32,
    v: *const u8,
    nb1: usize,
    active: &[u8],
    mr: usize,
    nb: usize,
    wq: *mut i16,
    sig: *mut f32,
    sw: *mut i32,
) -> bool {
    unsafe {
        let bs = qblock_bytes::<F>();
        let na = active.len();
        let nc = na.div_ceil(16);
        let absm = _mm512_set1_epi32(0x7fff_ffff);
        let fmax = _mm512_set1_ps(f32::MAX);
        // per 16-row group: row offsets, the mask of real lanes, contiguous or gathered p
        let mut offs = [[0usize; 16]; 4];
        let mut tsv = [_mm512_setzero_si512(); 4];
        let mut km = [0u16; 4];
        let mut first = [0usize; 4];
        let mut contiguous = [true; 4];
        for c in 0..nc {
            let i = 16 * c;
            let n = (na - i).min(16);
            for j in 0..16 {
                offs[c][j] = active[i + j.min(n - 1)] as usize * nb1;
            }
            first[c] = active[i] as usize;
            contiguous[c] = active[i + n - 1] as usize - first[c] == n - 1;
            tsv[c] = cols16(active, i, n);
            km[c] = ((1u32 << n) - 1) as u16;
        }
        // the rows' probabilities (finite, ≥ 0) and their largest per query row: P_m
        let load_p = |m: usize, c: usize| {
            let prow = p.add(m * T);
            if contiguous[c] {
                _mm512_maskz_loadu_ps(km[c], prow.add(first[c]))
            } else {
                _mm512_maskz_mov_ps(km[c], _mm512_i32gather_ps::<4>(tsv[c], prow))
            }
        };
        let mut pmax = [0f32; 16];
        for m in 0..mr {
            let mut mx = _mm512_setzero_ps();
            for c in 0..nc {
                let x = load_p(m, c);
                // NaN compares false, so a NaN or ±Inf weight fails
                if _mm512_cmp_ps_mask::<_CMP_LE_OQ>(
                    _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(x), absm)),
                    fmax,
                ) != 0xffff
                {
                    return false;
                }
                mx = _mm512_max_ps(mx, x);
            }
            pmax[m] = _mm512_reduce_max_ps(mx);
        }
        for b in 0..nb {
            let mut dv = [_mm512_setzero_ps(); 4];
            let mut dmx = _mm512_setzero_ps();
            for c in 0..nc {
                dv[c] = _mm512_maskz_mov_ps(km[c], scales16(v, &offs[c], bs * b));
                let a = _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(dv[c]), absm));
                if _mm512_cmp_ps_mask::<_CMP_LE_OQ>(a, fmax) != 0xffff {
                    return false;
                }
                dmx = _mm512_max_ps(dmx, a);
            }
            // D_b: the largest block scale; |p·d| ≤ P_m·D_b = M
            let dmax = _mm512_reduce_max_ps(dmx);
            for m in 0..mr {
                let mut pm = [_mm512_setzero_ps(); 4];
                for c in 0..nc {
                    pm[c] = load_p(m, c);
                }
                let row = b * mr + m;
                let (wr, sr, swr) = (wq.add(row * T), sig.add(row), sw.add(row));
                if !weights_row16::<F>(&pm, &dv, nc, pmax[m] * dmax, wr, sr, swr) {
                    return false;
                }
            }
        }
        true
    }
}

/// One (block, query row) of the 16-bit V weights: `wr[16c..16c+16] = rint(p·d·(32767/M))`
/// for the column groups `c < nc` (`pm` the row's probabilities, `dv` the block scales, by
/// group), `*sr = M/32767`, `*sw = Σ W` (q4_0; 0 for q8_0) for the bound `M = big`; all
/// zero when `big == 0`. `false` when `big` cannot be scaled ([`q16_scale`]).
#[inline(always)]
unsafe fn weights_row16<const F: u8>(
    pm: &[__m512; 4],
    dv: &[__m512; 4],
    nc: usize,
    big: f32,
    wr: *mut i16,
    sr: *mut f32,
    swr: *mut i32,
) -> bool {
    unsafe {
        if big == 0.0 {
            for c in 0..nc {
                _mm256_storeu_si256(wr.add(16 * c) as *mut __m256i, _mm256_setzero_si256());
            }
            *sr = 0.0;
            *swr = 0;
            return true;
        }
        let Some((up, down)) = q16_scale(big) else {
            return false;
        };
        let r = _mm512_set1_ps(up);
        let mut sum = _mm512_setzero_si512();
        for c in 0..nc {
            let w = _mm512_mul_ps(pm[c], dv[c]);
            let q = _mm512_cvtps_epi32(_mm512_mul_ps(w, r));
            if F == FMT_Q4_0 {
                sum = _mm512_add_epi32(sum, q);
            }
            _mm256_storeu_si256(wr.add(16 * c) as *mut __m256i, _mm512_cvtepi32_epi16(q));
        }
        *sr = down;
        *swr = if F == FMT_Q4_0 {
            _mm512_reduce_add_epi32(sum)
        } else {
            0
        };
        true
    }
}

/// The largest magnitude of the 64 floats in `x`, as bits (the order of non-negative floats),
/// and whether all of them are finite (no magnitude's bits above `f32::MAX`'s).
#[inline(always)]
unsafe fn magnitude4(x: &[__m512; 4]) -> (__m512i, bool) {
    unsafe {
        let absm = _mm512_set1_epi32(0x7fff_ffff);
        let a0 = _mm512_and_si512(_mm512_castps_si512(x[0]), absm);
        let a1 = _mm512_and_si512(_mm512_castps_si512(x[1]), absm);
        let a2 = _mm512_and_si512(_mm512_castps_si512(x[2]), absm);
        let a3 = _mm512_and_si512(_mm512_castps_si512(x[3]), absm);
        let m = _mm512_max_epu32(_mm512_max_epu32(a0, a1), _mm512_max_epu32(a2, a3));
        let fmax = _mm512_set1_epi32(f32::MAX.to_bits() as i32);
        (m, _mm512_cmpgt_epu32_mask(m, fmax) == 0)
    }
}

/// [`weights_q16`] for a whole tile of consecutive rows (`active` = `0..T`, the usual decode
/// tile), with the same numbers: the row offsets an arithmetic progression and each query
/// row's probabilities four plain loads (no offset tables, lane masks or gathers), and the
/// finiteness of 64 values one unsigned max of their magnitudes' bits (above `f32::MAX`'s:
/// ±Inf or NaN). The same maxima as there: `P_m = max(0, max p)`, `D_b = max |d|`. (Only the
/// row offsets and plain loads as a branch inside [`weights_q16`], as the AVX2 kernel has it,
/// measured 4–9 % slower than this: its per-vector finiteness tests are most of the cost.)
// index loops: c indexes the scales and the weights' column groups together
#[allow(clippy::needless_range_loop)]
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn weights_q16_full<const F: u8>(
    p: *const f32,
    v: *const u8,
    nb1: usize,
    mr: usize,
    nb: usize,
    wq: *mut i16,
    sig: *mut f32,
    sw: *mut i32,
) -> bool {
    unsafe {
        let bs = qblock_bytes::<F>();
        let load_p = |m: usize, c: usize| _mm512_loadu_ps(p.add(m * T + 16 * c));
        let mut pmax = [0f32; 16];
        for m in 0..mr {
            let x = [load_p(m, 0), load_p(m, 1), load_p(m, 2), load_p(m, 3)];
            if !magnitude4(&x).1 {
                return false;
            }
            let mx = _mm512_max_ps(_mm512_max_ps(x[0], x[1]), _mm512_max_ps(x[2], x[3]));
            pmax[m] = _mm512_reduce_max_ps(mx).max(0.0);
        }
        for b in 0..nb {
            let base = v.add(bs * b);
            let mut dv = [_mm512_setzero_ps(); 4];
            for c in 0..4 {
                let rows = base.add(16 * c * nb1);
                dv[c] = scales16_at(|j| rows.add(j * nb1));
            }
            let (dm, finite) = magnitude4(&dv);
            if !finite {
                return false;
            }
            let dmax = f32::from_bits(_mm512_reduce_max_epu32(dm));
            for m in 0..mr {
                let pm = [load_p(m, 0), load_p(m, 1), load_p(m, 2), load_p(m, 3)];
                let row = b * mr + m;
                let (wr, sr, swr) = (wq.add(row * T), sig.add(row), sw.add(row));
                if !weights_row16::<F>(&pm, &dv, 4, pmax[m] * dmax, wr, sr, swr) {
                    return false;
                }
            }
        }
        true
    }
}

/// Block `g` of two q8_0/q4_0 rows as 16-bit pairs `(a_j, b_j)` in 32-bit lanes: q4_0 the
/// nibbles (0..15) of elements 0..15 and 16..31 in order; q8_0 the signed values of elements
/// `[0..8, 16..24]` and `[8..16, 24..32]` (the order `unpack` leaves; see [`unpair_q8`]).
#[inline(always)]
unsafe fn pairs16<const F: u8>(a: *const u8, b: *const u8, g: usize) -> [__m512i; 2] {
    unsafe {
        if F == FMT_Q8_0 {
            let x = _mm256_loadu_si256(a.add(34 * g + 2) as *const __m256i);
            let y = _mm256_loadu_si256(b.add(34 * g + 2) as *const __m256i);
            [
                _mm512_cvtepi8_epi16(_mm256_unpacklo_epi8(x, y)),
                _mm512_cvtepi8_epi16(_mm256_unpackhi_epi8(x, y)),
            ]
        } else {
            let x = _mm_loadu_si128(a.add(18 * g + 2) as *const __m128i);
            let y = _mm_loadu_si128(b.add(18 * g + 2) as *const __m128i);
            let z = _mm512_cvtepu8_epi16(_mm256_set_m128i(
                _mm_unpackhi_epi8(x, y),
                _mm_unpacklo_epi8(x, y),
            ));
            [
                _mm512_and_si512(z, _mm512_set1_epi16(0x0f)),
                _mm512_srli_epi16::<4>(z),
            ]
        }
    }
}

/// Elements 0..16 and 16..32 from the lanes [`pairs16`] gives q8_0 (`[0..8, 16..24]`,
/// `[8..16, 24..32]`).
#[inline(always)]
unsafe fn unpair_q8(lo: __m512i, hi: __m512i) -> (__m512i, __m512i) {
    unsafe {
        (
            _mm512_shuffle_i32x4::<0x44>(lo, hi),
            _mm512_shuffle_i32x4::<0xee>(lo, hi),
        )
    }
}

// index loops: r/g/h index the accumulator tile, the pairs and the pointer offsets together
#[allow(clippy::needless_range_loop)]
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn pv_i16_block<const F: u8, const R: usize, const NG: usize>(
    wq: *const i16,
    sig: *const f32,
    sw: *const i32,
    v: *const u8,
    nb1: usize,
    active: &[u8],
    o: *mut f32,
    m: usize,
    mr: usize,
    g0: usize,
    dvp: usize,
    pf: usize,
) {
    unsafe {
        let bs = qblock_bytes::<F>();
        let lines = (bs * NG).div_ceil(64) + 1;
        let na = active.len();
        let mut acc = [[[_mm512_setzero_si512(); 2]; NG]; R];
        let mut i = 0;
        while i < na {
            let t0 = active[i] as usize;
            let t1 = if i + 1 < na {
                active[i + 1] as usize
            } else {
                t0
            };
            let (a, b) = (v.add(t0 * nb1), v.add(t1 * nb1));
            if pf != 0 {
                prefetch_row(a.wrapping_add(pf * nb1 + bs * g0), lines);
                prefetch_row(b.wrapping_add(pf * nb1 + bs * g0), lines);
            }
            let mut vv = [[_mm512_setzero_si512(); 2]; NG];
            for g in 0..NG {
                vv[g] = pairs16::<F>(a, b, g0 + g);
            }
            for r in 0..R {
                for g in 0..NG {
                    let wp =
                        (wq.add(((g0 + g) * mr + m + r) * T + i) as *const i32).read_unaligned();
                    let wp = _mm512_set1_epi32(wp);
                    acc[r][g][0] = _mm512_dpwssd_epi32(acc[r][g][0], vv[g][0], wp);
                    acc[r][g][1] = _mm512_dpwssd_epi32(acc[r][g][1], vv[g][1], wp);
                }
            }
            i += 2;
        }
        for r in 0..R {
            for g in 0..NG {
                let idx = (g0 + g) * mr + m + r;
                let (a0, a1) = if F == FMT_Q8_0 {
                    unpair_q8(acc[r][g][0], acc[r][g][1])
                } else {
                    let off = _mm512_set1_epi32(8 * *sw.add(idx));
                    (
                        _mm512_sub_epi32(acc[r][g][0], off),
                        _mm512_sub_epi32(acc[r][g][1], off),
                    )
                };
                let s = _mm512_set1_ps(*sig.add(idx));
                let op = o.add((m + r) * dvp + 32 * (g0 + g));
                let x0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(a0), s, _mm512_loadu_ps(op));
                let x1 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(a1), s, _mm512_loadu_ps(op.add(16)));
                _mm512_storeu_ps(op, x0);
                _mm512_storeu_ps(op.add(16), x1);
            }
        }
    }
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn pv_i16_rows<const F: u8, const R: usize>(
    wq: *const i16,
    sig: *const f32,
    sw: *const i32,
    v: *const u8,
    nb1: usize,
    active: &[u8],
    o: *mut f32,
    m: usize,
    mr: usize,
    dvp: usize,
    nb: usize,
    pf: usize,
) {
    unsafe {
        let pf = if m == 0 { pf } else { 0 };
        by_pairs!(nb, |g, NG| pv_i16_block::<F, R, NG>(
            wq, sig, sw, v, nb1, active, o, m, mr, g, dvp, pf
        ));
    }
}

/// [`pv_q_avx512`] with the products in integers (see above): `o[m][:dv] += Σ_i σ·W_i·q_i`
/// with `W = rint(p·d·32767/M)`, `σ = M/32767` per (32-element block, row) over the active
/// rows. Scratch: `wq` `[dv/32][mr][64]` i16, `sig`/`sw` `[dv/32][mr]`.
/// Returns `false`, leaving `o` untouched, when the weights cannot be scaled (a non-finite
/// weight, or all below 2⁻¹⁰⁰): run [`pv_q_avx512`] then.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
pub unsafe fn pv_i16_avx512<const F: u8>(
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
        let ok = if whole_tile(active) {
            weights_q16_full::<F>(p, v, nb1, mr, nb, wq, sig, sw)
        } else {
            weights_q16::<F>(p, v, nb1, active, mr, nb, wq, sig, sw)
        };
        if !ok {
            return false;
        }
        by_fours!(mr, |m, R| pv_i16_rows::<F, R>(
            wq, sig, sw, v, nb1, active, o, m, mr, dvp, nb, pf
        ));
        true
    }
}

// ---------------------------------------------------------------- K tile transpose (prefill)

/// `dst[d][t] = src[t][d]` for `t < 64`, `d < dk`: `src` `[64][dk]`, `dst` `[dk][64]`,
/// 16×16 blocks in registers (the `dk % 16` last dimensions element by element).
// index loops: c picks the same column of the four rows of u (a register shuffle network)
#[allow(clippy::needless_range_loop)]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub unsafe fn transpose_tile_avx512(src: *const f32, dst: *mut f32, dk: usize) {
    unsafe {
        let nd = dk / 16;
        for tb in 0..T / 16 {
            for db in 0..nd {
                let mut r = [_mm512_setzero_ps(); 16];
                for (i, ri) in r.iter_mut().enumerate() {
                    *ri = _mm512_loadu_ps(src.add((16 * tb + i) * dk + 16 * db));
                }
                // u[k][c], 128-bit lane L: column 4L+c of rows 4k..4k+3
                let mut u = [[_mm512_setzero_ps(); 4]; 4];
                for k in 0..4 {
                    let t0 = _mm512_unpacklo_ps(r[4 * k], r[4 * k + 1]);
                    let t1 = _mm512_unpackhi_ps(r[4 * k], r[4 * k + 1]);
                    let t2 = _mm512_unpacklo_ps(r[4 * k + 2], r[4 * k + 3]);
                    let t3 = _mm512_unpackhi_ps(r[4 * k + 2], r[4 * k + 3]);
                    let (t0, t1, t2, t3) = (
                        _mm512_castps_pd(t0),
                        _mm512_castps_pd(t1),
                        _mm512_castps_pd(t2),
                        _mm512_castps_pd(t3),
                    );
                    u[k][0] = _mm512_castpd_ps(_mm512_unpacklo_pd(t0, t2));
                    u[k][1] = _mm512_castpd_ps(_mm512_unpackhi_pd(t0, t2));
                    u[k][2] = _mm512_castpd_ps(_mm512_unpacklo_pd(t1, t3));
                    u[k][3] = _mm512_castpd_ps(_mm512_unpackhi_pd(t1, t3));
                }
                for c in 0..4 {
                    // 4×4 transpose of 128-bit lanes: out[4L+c] lane k = u[k][c] lane L
                    let v0 = _mm512_shuffle_f32x4::<0b10_00_10_00>(u[0][c], u[1][c]);
                    let v1 = _mm512_shuffle_f32x4::<0b11_01_11_01>(u[0][c], u[1][c]);
                    let v2 = _mm512_shuffle_f32x4::<0b10_00_10_00>(u[2][c], u[3][c]);
                    let v3 = _mm512_shuffle_f32x4::<0b11_01_11_01>(u[2][c], u[3][c]);
                    let o = [
                        _mm512_shuffle_f32x4::<0b10_00_10_00>(v0, v2),
                        _mm512_shuffle_f32x4::<0b10_00_10_00>(v1, v3),
                        _mm512_shuffle_f32x4::<0b11_01_11_01>(v0, v2),
                        _mm512_shuffle_f32x4::<0b11_01_11_01>(v1, v3),
                    ];
                    for (l, ol) in o.iter().enumerate() {
                        let d = 16 * db + 4 * l + c;
                        _mm512_storeu_ps(dst.add(d * T + 16 * tb), *ol);
                    }
                }
            }
        }
        for d in 16 * nd..dk {
            for t in 0..T {
                *dst.add(d * T + t) = *src.add(t * dk + d);
            }
        }
    }
}

// ---------------------------------------------------------------- soft cap (tanh)

// tanh: |x| < 0.625: x + x·z·P(z), z = x² (Cephes `tanhf` polynomial); otherwise
// 1 - 2/(e^{2|x|} + 1) with the vector exp; |x| ≥ 9 gives ±1 exactly; sign restored.
const TANH_P: [f32; 5] = [
    -0.005_704_988_7,
    0.020_639_088,
    -0.053_739_715,
    0.133_314_42,
    -0.333_332_8,
];

#[inline(always)]
unsafe fn tanh512(x: __m512) -> __m512 {
    unsafe {
        let sign = _mm512_and_si512(_mm512_castps_si512(x), _mm512_set1_epi32(i32::MIN));
        let ax = _mm512_abs_ps(x);
        // large: 1 - 2/(exp(2|x|) + 1)
        let e = exp512(_mm512_min_ps(_mm512_add_ps(ax, ax), _mm512_set1_ps(18.0)));
        let one = _mm512_set1_ps(1.0);
        let big = _mm512_sub_ps(
            one,
            _mm512_div_ps(_mm512_set1_ps(2.0), _mm512_add_ps(e, one)),
        );
        // small: polynomial
        let z = _mm512_mul_ps(ax, ax);
        let mut p = _mm512_set1_ps(TANH_P[0]);
        for c in &TANH_P[1..] {
            p = _mm512_fmadd_ps(p, z, _mm512_set1_ps(*c));
        }
        let small = _mm512_fmadd_ps(_mm512_mul_ps(p, z), ax, ax);
        let is_small = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(ax, _mm512_set1_ps(0.625));
        let r = _mm512_mask_blend_ps(is_small, big, small);
        _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(r), sign))
    }
}

#[inline(always)]
unsafe fn tanh256(x: __m256) -> __m256 {
    unsafe {
        let sm = _mm256_castsi256_ps(_mm256_set1_epi32(i32::MIN));
        let sign = _mm256_and_ps(x, sm);
        let ax = _mm256_andnot_ps(sm, x);
        let e = exp256(_mm256_min_ps(_mm256_add_ps(ax, ax), _mm256_set1_ps(18.0)));
        let one = _mm256_set1_ps(1.0);
        let big = _mm256_sub_ps(
            one,
            _mm256_div_ps(_mm256_set1_ps(2.0), _mm256_add_ps(e, one)),
        );
        let z = _mm256_mul_ps(ax, ax);
        let mut p = _mm256_set1_ps(TANH_P[0]);
        for c in &TANH_P[1..] {
            p = _mm256_fmadd_ps(p, z, _mm256_set1_ps(*c));
        }
        let small = _mm256_fmadd_ps(_mm256_mul_ps(p, z), ax, ax);
        let is_small = _mm256_cmp_ps::<_CMP_LT_OQ>(ax, _mm256_set1_ps(0.625));
        let r = _mm256_blendv_ps(big, small, is_small);
        _mm256_or_ps(r, sign)
    }
}

/// `s = mv == -inf ? -inf : softcap·tanh(s·scale) + mv` over 64 lanes; returns the max.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub unsafe fn scores_softcap_avx512(s: *mut f32, mv: *const f32, scale: f32, softcap: f32) -> f32 {
    unsafe {
        let sc = _mm512_set1_ps(scale);
        let cap = _mm512_set1_ps(softcap);
        let ninf = _mm512_set1_ps(f32::NEG_INFINITY);
        let mut mx = ninf;
        for c in 0..4 {
            let m = _mm512_loadu_ps(mv.add(16 * c));
            let t = tanh512(_mm512_mul_ps(_mm512_loadu_ps(s.add(16 * c)), sc));
            let x = _mm512_add_ps(_mm512_mul_ps(cap, t), m);
            let live = _mm512_cmp_ps_mask::<_CMP_NEQ_OQ>(m, ninf);
            let x = _mm512_mask_blend_ps(live, ninf, x);
            _mm512_storeu_ps(s.add(16 * c), x);
            mx = _mm512_max_ps(mx, x);
        }
        _mm512_reduce_max_ps(mx)
    }
}

/// AVX2 variant of [`scores_softcap_avx512`].
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn scores_softcap_avx2(s: *mut f32, mv: *const f32, scale: f32, softcap: f32) -> f32 {
    unsafe {
        let sc = _mm256_set1_ps(scale);
        let cap = _mm256_set1_ps(softcap);
        let ninf = _mm256_set1_ps(f32::NEG_INFINITY);
        let mut mx = ninf;
        for c in 0..8 {
            let m = _mm256_loadu_ps(mv.add(8 * c));
            let t = tanh256(_mm256_mul_ps(_mm256_loadu_ps(s.add(8 * c)), sc));
            let x = _mm256_add_ps(_mm256_mul_ps(cap, t), m);
            let live = _mm256_cmp_ps::<_CMP_NEQ_OQ>(m, ninf);
            let x = _mm256_blendv_ps(ninf, x, live);
            _mm256_storeu_ps(s.add(8 * c), x);
            mx = _mm256_max_ps(mx, x);
        }
        let mut buf = [0f32; 8];
        _mm256_storeu_ps(buf.as_mut_ptr(), mx);
        buf.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b))
    }
}
