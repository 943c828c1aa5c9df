//! x86 kernels (attn): the tile micro-kernels of `crate::attn`.
//! Contracts (sizes, layouts) are documented and checked in the safe wrappers
//! (`attn::kernel`, `attn::deq`).
use core::arch::x86_64::*;

// ---------------------------------------------------------------- tile GEMMs

const T: usize = 64;

/// `s[m][0..64] = Σ_d q[m][d] kt[d][0..64]`, `mp % 4 == 0`.
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

/// AVX2 variant of [`qk_tile_avx512`]: 4 rows × 32 columns per pass.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn qk_tile_avx2(q: *const f32, kt: *const f32, s: *mut f32, mp: usize, dk: usize) {
    unsafe {
        let mut m = 0;
        while m < mp {
            let q0 = q.add(m * dk);
            for half in 0..2 {
                let mut acc = [[_mm256_setzero_ps(); 4]; 3];
                let mut acc3 = [_mm256_setzero_ps(); 4];
                for d in 0..dk {
                    let kp = kt.add(d * T + 32 * half);
                    let k = [
                        _mm256_loadu_ps(kp),
                        _mm256_loadu_ps(kp.add(8)),
                        _mm256_loadu_ps(kp.add(16)),
                        _mm256_loadu_ps(kp.add(24)),
                    ];
                    for r in 0..3 {
                        let b = _mm256_set1_ps(*q0.add(r * dk + d));
                        for c in 0..4 {
                            acc[r][c] = _mm256_fmadd_ps(b, k[c], acc[r][c]);
                        }
                    }
                    let b = _mm256_set1_ps(*q0.add(3 * dk + d));
                    for c in 0..4 {
                        acc3[c] = _mm256_fmadd_ps(b, k[c], acc3[c]);
                    }
                }
                for r in 0..3 {
                    for c in 0..4 {
                        _mm256_storeu_ps(s.add((m + r) * T + 32 * half + 8 * c), acc[r][c]);
                    }
                }
                for c in 0..4 {
                    _mm256_storeu_ps(s.add((m + 3) * T + 32 * half + 8 * c), acc3[c]);
                }
            }
            m += 4;
        }
    }
}

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

#[inline(always)]
unsafe fn pv_block256<const NC: usize>(
    p: *const f32,
    vt: *const f32,
    o: *mut f32,
    m: usize,
    c0: usize,
    dvp: usize,
    active: &[u8],
) {
    unsafe {
        let mut acc = [[_mm256_setzero_ps(); NC]; 4];
        for r in 0..4 {
            for c in 0..NC {
                acc[r][c] = _mm256_loadu_ps(o.add((m + r) * dvp + c0 + 8 * c));
            }
        }
        for &t in active {
            let t = t as usize;
            let vp = vt.add(t * dvp + c0);
            let mut v = [_mm256_setzero_ps(); NC];
            for c in 0..NC {
                v[c] = _mm256_loadu_ps(vp.add(8 * c));
            }
            for r in 0..4 {
                let b = _mm256_set1_ps(*p.add((m + r) * T + t));
                for c in 0..NC {
                    acc[r][c] = _mm256_fmadd_ps(b, v[c], acc[r][c]);
                }
            }
        }
        for r in 0..4 {
            for c in 0..NC {
                _mm256_storeu_ps(o.add((m + r) * dvp + c0 + 8 * c), acc[r][c]);
            }
        }
    }
}

/// AVX2 variant of [`pv_tile_avx512`].
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
        let mut m = 0;
        while m < mp {
            let mut c0 = 0;
            while c0 + 24 <= dvp {
                pv_block256::<3>(p, vt, o, m, c0, dvp, active);
                c0 += 24;
            }
            match (dvp - c0) / 8 {
                2 => pv_block256::<2>(p, vt, o, m, c0, dvp, active),
                1 => pv_block256::<1>(p, vt, o, m, c0, dvp, active),
                _ => {}
            }
            m += 4;
        }
    }
}

// ---------------------------------------------------------------- softmax pieces

/// `s = mv == -inf ? -inf : s*scale + mv` over 64 lanes; returns the max.
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
    5.000_000_1e-1,
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
