//! x86 kernels of the normalized fast Walsh–Hadamard transform (see `crate::rotate`).
//!
//! Contract shared by every kernel here: `n` is a power of two (≥ 8 for AVX2, ≥ 16 for
//! AVX-512); `src` holds `chunks * n` elements, `dst` room for `chunks * n` f32; `src` may
//! equal `dst` (in place) but must not otherwise overlap it. Each `n`-chunk `x` becomes
//! `H_n · (x · s)` with `s = 1/sqrt(n)` in f32, computed with exactly the float operations of
//! `ggml_compute_forward_fwht` (ggml-cpu/ops.cpp): first `x[j] * s`, then the radix-2 stages
//! `len = 1, 2, 4, …, n/2` in that order, each pair `(u, v) = (x[i+j], x[i+j+len])` becoming
//! `(u + v, u - v)`, every result rounded once. Stages are register-blocked here (the
//! small strides inside a vector, the next ones across registers, the large ones in radix-4
//! passes over memory), which reorders work but not the value any element goes through.
//!
//! Inside a vector a stage is one shuffle `p` (the partner lanes) and one FMA
//! `x * sign + p`, `sign = +1` on the lower lane of a pair and `-1` on the upper one: lower
//! `u*1 + v = u + v`, upper `v*(-1) + u = u - v`, exact products and one rounding each, so
//! the same values as the plain add/sub. Across registers and in the memory passes `u - v`
//! is written as upstream's SIMD stages write it, `fma(v, -1, u)` (LLVM may emit a `vsubps`).
//!
//! NaN payloads: when two *different* NaNs meet in one add/sub, x86 returns one of them by
//! operand position, and which register holds which operand is the compiler's choice (GCC
//! for upstream, LLVM here). Outputs are then NaN in the same places but may carry the other
//! input's payload. With at most one NaN payload in a chunk (the usual case) results are
//! bit-identical, NaN bits included.
use core::arch::x86_64::*;

// ---------------------------------------------------------------------------------------
// AVX-512 (16 lanes)
// ---------------------------------------------------------------------------------------

/// Loads 16 inputs as f32 (f32 as is, f16 via `vcvtph2ps`, exact like `ggml_fp16_to_fp32`).
trait Load512 {
    unsafe fn load16(p: *const Self, i: usize) -> __m512;
}

impl Load512 for f32 {
    #[inline(always)]
    unsafe fn load16(p: *const f32, i: usize) -> __m512 {
        unsafe { _mm512_loadu_ps(p.add(i)) }
    }
}

impl Load512 for u16 {
    #[inline(always)]
    unsafe fn load16(p: *const u16, i: usize) -> __m512 {
        unsafe { _mm512_cvtph_ps(_mm256_loadu_si256(p.add(i) as *const __m256i)) }
    }
}

/// Stages len = 1, 2, 4, 8 inside one vector of 16.
#[inline]
#[target_feature(enable = "avx512f,fma")]
fn inreg16(x: __m512) -> __m512 {
    // x * sign + partner: lower lane of a pair u*1 + v = u + v, upper lane v*(-1) + u = u - v
    let (p, m) = (1.0f32, -1.0f32);
    let s1 = _mm512_setr_ps(p, m, p, m, p, m, p, m, p, m, p, m, p, m, p, m);
    let s2 = _mm512_setr_ps(p, p, m, m, p, p, m, m, p, p, m, m, p, p, m, m);
    let s4 = _mm512_setr_ps(p, p, p, p, m, m, m, m, p, p, p, p, m, m, m, m);
    let s8 = _mm512_setr_ps(p, p, p, p, p, p, p, p, m, m, m, m, m, m, m, m);
    let x = _mm512_fmadd_ps(x, s1, _mm512_permute_ps::<0b10_11_00_01>(x));
    let x = _mm512_fmadd_ps(x, s2, _mm512_permute_ps::<0b01_00_11_10>(x));
    let x = _mm512_fmadd_ps(x, s4, _mm512_shuffle_f32x4::<0b10_11_00_01>(x, x));
    _mm512_fmadd_ps(x, s8, _mm512_shuffle_f32x4::<0b01_00_11_10>(x, x))
}

/// One chunk of `16*K` elements entirely in registers: load+scale, stages 1 .. 8*K, store.
#[inline]
#[target_feature(enable = "avx512f,f16c")]
unsafe fn block512<T: Load512, const K: usize>(src: *const T, dst: *mut f32, scale: __m512) {
    let mut r = [_mm512_setzero_ps(); K];
    for (k, rk) in r.iter_mut().enumerate() {
        *rk = _mm512_mul_ps(unsafe { T::load16(src, 16 * k) }, scale);
    }
    for rk in r.iter_mut() {
        *rk = inreg16(*rk);
    }
    let mut h = 1;
    while h < K {
        let mut i = 0;
        while i < K {
            for j in i..i + h {
                let (u, v) = (r[j], r[j + h]);
                r[j] = _mm512_add_ps(u, v);
                r[j + h] = _mm512_fmadd_ps(v, _mm512_set1_ps(-1.0), u);
            }
            i += 2 * h;
        }
        h *= 2;
    }
    for (k, rk) in r.iter().enumerate() {
        unsafe { _mm512_storeu_ps(dst.add(16 * k), *rk) };
    }
}

/// The stages `len = from, 2*from, …, n/2` over memory (len a multiple of 16), two at a
/// time (radix 4) while possible.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn passes512(p: *mut f32, n: usize, from: usize) {
    let mut len = from;
    while len < n {
        if 4 * len <= n {
            let mut i = 0;
            while i < n {
                let mut j = i;
                while j < i + len {
                    unsafe {
                        let a = _mm512_loadu_ps(p.add(j));
                        let b = _mm512_loadu_ps(p.add(j + len));
                        let c = _mm512_loadu_ps(p.add(j + 2 * len));
                        let d = _mm512_loadu_ps(p.add(j + 3 * len));
                        let (a, b) = (
                            _mm512_add_ps(a, b),
                            _mm512_fmadd_ps(b, _mm512_set1_ps(-1.0), a),
                        );
                        let (c, d) = (
                            _mm512_add_ps(c, d),
                            _mm512_fmadd_ps(d, _mm512_set1_ps(-1.0), c),
                        );
                        _mm512_storeu_ps(p.add(j), _mm512_add_ps(a, c));
                        _mm512_storeu_ps(
                            p.add(j + 2 * len),
                            _mm512_fmadd_ps(c, _mm512_set1_ps(-1.0), a),
                        );
                        _mm512_storeu_ps(p.add(j + len), _mm512_add_ps(b, d));
                        _mm512_storeu_ps(
                            p.add(j + 3 * len),
                            _mm512_fmadd_ps(d, _mm512_set1_ps(-1.0), b),
                        );
                    }
                    j += 16;
                }
                i += 4 * len;
            }
            len *= 4;
        } else {
            let mut i = 0;
            while i < n {
                let mut j = i;
                while j < i + len {
                    unsafe {
                        let a = _mm512_loadu_ps(p.add(j));
                        let b = _mm512_loadu_ps(p.add(j + len));
                        _mm512_storeu_ps(p.add(j), _mm512_add_ps(a, b));
                        _mm512_storeu_ps(
                            p.add(j + len),
                            _mm512_fmadd_ps(b, _mm512_set1_ps(-1.0), a),
                        );
                    }
                    j += 16;
                }
                i += 2 * len;
            }
            len *= 2;
        }
    }
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,f16c")]
unsafe fn fwht512<T: Load512>(n: usize, chunks: usize, src: *const T, dst: *mut f32) {
    debug_assert!(n.is_power_of_two() && n >= 16);
    let scale = _mm512_set1_ps(1.0f32 / (n as f32).sqrt());
    for c in 0..chunks {
        let (sp, dp) = unsafe { (src.add(c * n), dst.add(c * n)) };
        unsafe {
            match n {
                16 => block512::<T, 1>(sp, dp, scale),
                32 => block512::<T, 2>(sp, dp, scale),
                64 => block512::<T, 4>(sp, dp, scale),
                128 => block512::<T, 8>(sp, dp, scale),
                256 => block512::<T, 16>(sp, dp, scale),
                _ => {
                    let mut b = 0;
                    while b < n {
                        block512::<T, 16>(sp.add(b), dp.add(b), scale);
                        b += 256;
                    }
                    passes512(dp, n, 256);
                }
            }
        }
    }
}

/// AVX-512 transform of `chunks` f32 chunks of `n` (≥ 16) elements. See the module contract.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")]
pub unsafe fn fwht_f32_avx512(n: usize, chunks: usize, src: *const f32, dst: *mut f32) {
    unsafe { fwht512::<f32>(n, chunks, src, dst) }
}

/// AVX-512 transform of `chunks` f16 chunks (raw bits) of `n` (≥ 16) elements into f32.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")]
pub unsafe fn fwht_f16_avx512(n: usize, chunks: usize, src: *const u16, dst: *mut f32) {
    unsafe { fwht512::<u16>(n, chunks, src, dst) }
}

// ---------------------------------------------------------------------------------------
// AVX2 (8 lanes)
// ---------------------------------------------------------------------------------------

trait Load256 {
    unsafe fn load8(p: *const Self, i: usize) -> __m256;
}

impl Load256 for f32 {
    #[inline(always)]
    unsafe fn load8(p: *const f32, i: usize) -> __m256 {
        unsafe { _mm256_loadu_ps(p.add(i)) }
    }
}

impl Load256 for u16 {
    #[inline(always)]
    unsafe fn load8(p: *const u16, i: usize) -> __m256 {
        unsafe { _mm256_cvtph_ps(_mm_loadu_si128(p.add(i) as *const __m128i)) }
    }
}

/// Stages len = 1, 2, 4 inside one vector of 8.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn inreg8(x: __m256) -> __m256 {
    let (p, m) = (1.0f32, -1.0f32);
    let s1 = _mm256_setr_ps(p, m, p, m, p, m, p, m);
    let s2 = _mm256_setr_ps(p, p, m, m, p, p, m, m);
    let s4 = _mm256_setr_ps(p, p, p, p, m, m, m, m);
    let x = _mm256_fmadd_ps(x, s1, _mm256_permute_ps::<0b10_11_00_01>(x));
    let x = _mm256_fmadd_ps(x, s2, _mm256_permute_ps::<0b01_00_11_10>(x));
    _mm256_fmadd_ps(x, s4, _mm256_permute2f128_ps::<0x01>(x, x))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn block256<T: Load256, const K: usize>(src: *const T, dst: *mut f32, scale: __m256) {
    let mut r = [_mm256_setzero_ps(); K];
    for (k, rk) in r.iter_mut().enumerate() {
        *rk = _mm256_mul_ps(unsafe { T::load8(src, 8 * k) }, scale);
    }
    for rk in r.iter_mut() {
        *rk = inreg8(*rk);
    }
    let mut h = 1;
    while h < K {
        let mut i = 0;
        while i < K {
            for j in i..i + h {
                let (u, v) = (r[j], r[j + h]);
                r[j] = _mm256_add_ps(u, v);
                r[j + h] = if h == 1 {
                    _mm256_sub_ps(u, v)
                } else {
                    _mm256_fmadd_ps(v, _mm256_set1_ps(-1.0), u)
                };
            }
            i += 2 * h;
        }
        h *= 2;
    }
    for (k, rk) in r.iter().enumerate() {
        unsafe { _mm256_storeu_ps(dst.add(8 * k), *rk) };
    }
}

#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn passes256(p: *mut f32, n: usize, from: usize) {
    let mut len = from;
    while len < n {
        if 4 * len <= n {
            let mut i = 0;
            while i < n {
                let mut j = i;
                while j < i + len {
                    unsafe {
                        let a = _mm256_loadu_ps(p.add(j));
                        let b = _mm256_loadu_ps(p.add(j + len));
                        let c = _mm256_loadu_ps(p.add(j + 2 * len));
                        let d = _mm256_loadu_ps(p.add(j + 3 * len));
                        let (a, b) = (
                            _mm256_add_ps(a, b),
                            _mm256_fmadd_ps(b, _mm256_set1_ps(-1.0), a),
                        );
                        let (c, d) = (
                            _mm256_add_ps(c, d),
                            _mm256_fmadd_ps(d, _mm256_set1_ps(-1.0), c),
                        );
                        _mm256_storeu_ps(p.add(j), _mm256_add_ps(a, c));
                        _mm256_storeu_ps(
                            p.add(j + 2 * len),
                            _mm256_fmadd_ps(c, _mm256_set1_ps(-1.0), a),
                        );
                        _mm256_storeu_ps(p.add(j + len), _mm256_add_ps(b, d));
                        _mm256_storeu_ps(
                            p.add(j + 3 * len),
                            _mm256_fmadd_ps(d, _mm256_set1_ps(-1.0), b),
                        );
                    }
                    j += 8;
                }
                i += 4 * len;
            }
            len *= 4;
        } else {
            let mut i = 0;
            while i < n {
                let mut j = i;
                while j < i + len {
                    unsafe {
                        let a = _mm256_loadu_ps(p.add(j));
                        let b = _mm256_loadu_ps(p.add(j + len));
                        _mm256_storeu_ps(p.add(j), _mm256_add_ps(a, b));
                        _mm256_storeu_ps(
                            p.add(j + len),
                            _mm256_fmadd_ps(b, _mm256_set1_ps(-1.0), a),
                        );
                    }
                    j += 8;
                }
                i += 2 * len;
            }
            len *= 2;
        }
    }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn fwht256<T: Load256>(n: usize, chunks: usize, src: *const T, dst: *mut f32) {
    debug_assert!(n.is_power_of_two() && n >= 8);
    let scale = _mm256_set1_ps(1.0f32 / (n as f32).sqrt());
    for c in 0..chunks {
        let (sp, dp) = unsafe { (src.add(c * n), dst.add(c * n)) };
        unsafe {
            match n {
                8 => block256::<T, 1>(sp, dp, scale),
                16 => block256::<T, 2>(sp, dp, scale),
                32 => block256::<T, 4>(sp, dp, scale),
                64 => block256::<T, 8>(sp, dp, scale),
                _ => {
                    let mut b = 0;
                    while b < n {
                        block256::<T, 8>(sp.add(b), dp.add(b), scale);
                        b += 64;
                    }
                    passes256(dp, n, 64);
                }
            }
        }
    }
}

/// AVX2 transform of `chunks` f32 chunks of `n` (≥ 8) elements. See the module contract.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn fwht_f32_avx2(n: usize, chunks: usize, src: *const f32, dst: *mut f32) {
    unsafe { fwht256::<f32>(n, chunks, src, dst) }
}

/// AVX2 transform of `chunks` f16 chunks (raw bits) of `n` (≥ 8) elements into f32.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn fwht_f16_avx2(n: usize, chunks: usize, src: *const u16, dst: *mut f32) {
    unsafe { fwht256::<u16>(n, chunks, src, dst) }
}
