//! GGML_TYPE_Q4_0: 4-bit quants with an f16 scale, zero point 8.
//!
//! Also home of the scalar helpers shared by the 4/5-bit formats (q4_0, q4_1, q5_0, q5_1,
//! iq4_nl): x86 float->int truncation, the AVX2 horizontal sum, the min/max scans and the
//! sign-trick int8 products. They reproduce, operation by operation, what the reference
//! (gcc -O3 -march=native, `-ffp-contract=fast`) executes on x86-64.
use super::fp16::{f16le_to_f32, f32_to_f16le};
use super::{BlockFormat, BlockQ8_0};
use crate::simd::{self, Isa};
use crate::types::GgmlType;

/// Mirrors ggml's `block_q4_0`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockQ4_0 {
    /// scale (f16 bits)
    pub d: [u8; 2],
    /// nibbles: element j in the low nibble of `qs[j]`, element j+16 in the high one
    pub qs: [u8; 16],
}

// ---------------------------------------------------------------------------------------
// Shared scalar helpers
// ---------------------------------------------------------------------------------------

/// `cvttss2si` / `cvttps2dq`: truncate toward zero; NaN and out-of-range give `i32::MIN`.
///
/// The reference converts `(int8_t)(float)` / `(uint8_t)(float)` with `vcvttps2dq` and then
/// keeps the low byte, so callers take `as i8` / `as u8` of this.
#[inline(always)]
pub(crate) fn cvtt_i32(v: f32) -> i32 {
    if (-2_147_483_648.0..2_147_483_648.0).contains(&v) {
        v as i32
    } else {
        i32::MIN
    }
}

/// ggml's `hsum_float_8` (arch/x86/quants.c): `(hi + lo)`, then `[0]+[2]`, `[1]+[3]`, then the two.
#[inline(always)]
pub(crate) fn hsum8(a: [f32; 8]) -> f32 {
    let t = [a[4] + a[0], a[5] + a[1], a[6] + a[2], a[7] + a[3]];
    (t[0] + t[2]) + (t[1] + t[3])
}

/// The `amax`/`max` scan of `quantize_row_q4_0_ref` / `_q5_0_ref` / iq4_nl: the first
/// element of largest magnitude (NaN never wins; `max` stays `+0.0` if all are zero).
#[inline(always)]
pub(crate) fn amax_max(x: &[f32]) -> (f32, f32) {
    let mut amax = 0f32;
    let mut max = 0f32;
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    (amax, max)
}

/// The `min`/`max` scan of `quantize_row_q4_1_ref` / `_q5_1_ref` (starts at ±FLT_MAX).
#[inline(always)]
pub(crate) fn min_max(x: &[f32]) -> (f32, f32) {
    let mut min = f32::MAX;
    let mut max = -f32::MAX;
    for &v in x {
        if v < min {
            min = v;
        }
        if v > max {
            max = v;
        }
    }
    (min, max)
}

/// One byte product of `_mm256_maddubs_epi16(_mm256_sign_epi8(x, x), _mm256_sign_epi8(y, x))`
/// (ggml's `mul_sum_i8_pairs_float`), wrapping exactly like the instructions do.
#[inline(always)]
pub(crate) fn sign_mul(x: i8, y: i8) -> i32 {
    let sy = if x < 0 {
        y.wrapping_neg()
    } else if x == 0 {
        0
    } else {
        y
    };
    x.unsigned_abs() as i32 * sy as i32
}

/// Integer lane sums of a signed x signed block product: lane k = sum of bytes 4k..4k+3.
#[inline(always)]
pub(crate) fn lanes_i8(qx: &[i8; 32], qy: &[i8; 32]) -> [i32; 8] {
    let mut s = [0i32; 8];
    for (k, sk) in s.iter_mut().enumerate() {
        *sk = (0..4).map(|i| sign_mul(qx[4 * k + i], qy[4 * k + i])).sum();
    }
    s
}

/// Integer lane sums of an unsigned x signed block product (`mul_sum_us8_pairs_float`).
#[inline(always)]
pub(crate) fn lanes_u8(qx: &[u8; 32], qy: &[i8; 32]) -> [i32; 8] {
    let mut s = [0i32; 8];
    for (k, sk) in s.iter_mut().enumerate() {
        *sk = (0..4)
            .map(|i| qx[4 * k + i] as i32 * qy[4 * k + i] as i32)
            .sum();
    }
    s
}

/// Unpack 16 nibble bytes into 32 values: low nibbles first, then high nibbles.
#[inline(always)]
pub(crate) fn nibbles(qs: &[u8; 16]) -> [u8; 32] {
    let mut q = [0u8; 32];
    for j in 0..16 {
        q[j] = qs[j] & 0x0f;
        q[j + 16] = qs[j] >> 4;
    }
    q
}

// ---------------------------------------------------------------------------------------
// q4_0
// ---------------------------------------------------------------------------------------

/// Matches `quantize_row_q4_0_ref` (ggml-quants.c) as compiled for the CPU backend: gcc
/// contracts `x*id + 8.5f` into one FMA and converts with `vcvttps2dq` + low byte.
fn quantize_scalar(x: &[f32], y: &mut [BlockQ4_0]) {
    for (xb, yb) in x.chunks_exact(32).zip(y.iter_mut()) {
        let (_, max) = amax_max(xb);
        let d = max / -8.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        yb.d = f32_to_f16le(d);
        for j in 0..16 {
            let xi0 = (cvtt_i32(xb[j].mul_add(id, 8.5)) as i8).min(15) as u8;
            let xi1 = (cvtt_i32(xb[j + 16].mul_add(id, 8.5)) as i8).min(15) as u8;
            yb.qs[j] = xi0 | (xi1 << 4);
        }
    }
}

/// Matches `dequantize_row_q4_0` (ggml-quants.c).
fn dequantize_scalar(x: &[BlockQ4_0], y: &mut [f32]) {
    for (xb, yb) in x.iter().zip(y.chunks_exact_mut(32)) {
        let d = f16le_to_f32(xb.d);
        for j in 0..16 {
            yb[j] = ((xb.qs[j] & 0x0f) as i32 - 8) as f32 * d;
            yb[j + 16] = ((xb.qs[j] >> 4) as i32 - 8) as f32 * d;
        }
    }
}

/// Matches the `__AVX2__` path of `ggml_vec_dot_q4_0_q8_0` (ggml-cpu/arch/x86/quants.c),
/// which is the one built with -march=native on AVX-512 machines: per block, 8 int32 lanes
/// (4 products each) converted to float and accumulated with `fma(dx*dy, lane, acc)`, then
/// `hsum_float_8`.
#[inline(never)] // keeps the SIMD dispatch in `vec_dot` free of its frame
fn vec_dot_scalar(x: &[BlockQ4_0], y: &[BlockQ8_0]) -> f32 {
    let mut acc = [0f32; 8];
    for (bx, by) in x.iter().zip(y) {
        let d = f16le_to_f32(bx.d) * f16le_to_f32(by.d);
        let q = nibbles(&bx.qs).map(|v| v as i8 - 8);
        let s = lanes_i8(&q, &by.qs);
        for k in 0..8 {
            acc[k] = d.mul_add(s[k] as f32, acc[k]);
        }
    }
    hsum8(acc)
}

/// The full ISA dispatch of `vec_dot` (forced ISAs, first call).
#[inline(never)]
fn vec_dot_dispatch(x: &[BlockQ4_0], y: &[<BlockQ4_0 as BlockFormat>::Dot]) -> f32 {
    match simd::isa() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: isa() never reports more than the CPU has.
        Isa::Avx512 => unsafe { crate::simd::x86::q4::vec_dot_q4_0_avx512(x, y) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        Isa::Avx2 => unsafe { crate::simd::x86::q4::vec_dot_q4_0_avx2(x, y) },
        _ => vec_dot_scalar(x, y),
    }
}

// SAFETY: repr(C), byte arrays only (alignment 1, no padding, all bit patterns valid).
unsafe impl BlockFormat for BlockQ4_0 {
    const TYPE: GgmlType = GgmlType::Q4_0;
    const QK: usize = 32;
    type Dot = super::BlockQ8_0;

    /// The CPU backend's `quantize_row_q4_0` calls `quantize_row_q4_0_ref`.
    fn quantize_row(x: &[f32], y: &mut [Self]) {
        Self::quantize_row_ref(x, y)
    }
    fn quantize_row_ref(x: &[f32], y: &mut [Self]) {
        debug_assert_eq!(x.len(), y.len() * 32);
        match simd::isa() {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: isa() never reports more than the CPU has.
            Isa::Avx512 => unsafe { crate::simd::x86::q4::quantize_q4_0_avx512(x, y) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above.
            Isa::Avx2 => unsafe { crate::simd::x86::q4::quantize_q4_0_avx2(x, y) },
            _ => quantize_scalar(x, y),
        }
    }
    fn dequantize_row(x: &[Self], y: &mut [f32]) {
        debug_assert_eq!(x.len() * 32, y.len());
        match simd::isa() {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: isa() never reports more than the CPU has.
            Isa::Avx512 => unsafe { crate::simd::x86::q4::dequantize_q4_0_avx512(x, y) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above.
            Isa::Avx2 => unsafe { crate::simd::x86::q4::dequantize_q4_0_avx2(x, y) },
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
                    return unsafe { crate::simd::x86::q4::vec_dot_q4_0_vnni(x, y) }
                }
                // SAFETY: as above.
                Some(DotKernel::Avx2) => {
                    return unsafe { crate::simd::x86::q4::vec_dot_q4_0_avx2(x, y) }
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
    fn cvtt_matches_x86() {
        assert_eq!(cvtt_i32(f32::NAN), i32::MIN);
        assert_eq!(cvtt_i32(f32::INFINITY), i32::MIN);
        assert_eq!(cvtt_i32(3e9), i32::MIN);
        assert_eq!(cvtt_i32(-2_147_483_648.0), i32::MIN);
        assert_eq!(cvtt_i32(-7.9), -7);
        assert_eq!(cvtt_i32(15.99), 15);
    }

    /// `FormatOps`' length checks (in each kernel-table entry, every ISA) give the same
    /// answers and errors as `row_bytes` + the buffer checks they replace.
    #[test]
    fn format_ops_checks() {
        use crate::error::Error;
        use crate::quant::format;
        let need = |ty: GgmlType, n: usize, have: usize| -> crate::error::Result<usize> {
            let need = ty.row_bytes(n)?;
            if have < need {
                return Err(Error::BufferTooSmall {
                    what: "row",
                    need,
                    have,
                });
            }
            Ok(need)
        };
        let ns = [
            0usize,
            1,
            31,
            32,
            33,
            64,
            96,
            128,
            160,
            usize::MAX,
            usize::MAX - 31,
        ];
        for isa in crate::simd::available() {
            crate::simd::with_isa(isa, || {
                for ty in GgmlType::KV.into_iter().chain([GgmlType::Q8_1]) {
                    let ops = format(ty).unwrap();
                    let dt = ty.vec_dot_type();
                    let x = vec![0x11u8; ty.row_bytes(128).unwrap() + 5];
                    let y = vec![0x22u8; dt.row_bytes(128).unwrap() + 3];
                    for n in ns {
                        if ty != GgmlType::Q8_1 {
                            let got = ops.vec_dot(n, &x, &y);
                            let want =
                                need(ty, n, x.len()).and_then(|nx| Ok((nx, need(dt, n, y.len())?)));
                            match (got, want) {
                                (Ok(a), Ok((nx, ny))) => {
                                    let b = ops.vec_dot(n, &x[..nx], &y[..ny]).unwrap();
                                    assert_eq!(a.to_bits(), b.to_bits(), "{ty} n={n}");
                                }
                                (Err(a), Err(b)) => {
                                    assert_eq!(a.to_string(), b.to_string(), "{ty} n={n}")
                                }
                                (a, b) => panic!("{ty} {isa:?} n={n}: {a:?} vs {b:?}"),
                            }
                        }
                        // quantize / dequantize: rows of up to 160 floats, buffers short and long
                        if n > 160 {
                            continue;
                        }
                        let f = vec![0.25f32; n];
                        for bytes in [0, 1, 33, 34, 35, 255, 256, 257, 1000] {
                            let mut q = vec![0u8; bytes];
                            let got = ops.quantize_row(&f, &mut q);
                            let want = need(ty, n, bytes);
                            assert_eq!(
                                got.map_err(|e| e.to_string()),
                                want.as_ref().map(|_| ()).map_err(|e| e.to_string()),
                                "{ty} {isa:?} quantize n={n} bytes={bytes}"
                            );
                            let got = ops.quantize_row_ref(&f, &mut q);
                            assert_eq!(
                                got.map_err(|e| e.to_string()),
                                want.as_ref().map(|_| ()).map_err(|e| e.to_string()),
                                "{ty} {isa:?} quantize_ref n={n} bytes={bytes}"
                            );
                            if ty == GgmlType::Q8_1 {
                                continue; // no to_float upstream; ours exists, same checks
                            }
                            let mut d = vec![0f32; n];
                            let got = ops.dequantize_row(&q, &mut d);
                            assert_eq!(
                                got.map_err(|e| e.to_string()),
                                want.as_ref().map(|_| ()).map_err(|e| e.to_string()),
                                "{ty} {isa:?} dequantize n={n} bytes={bytes}"
                            );
                        }
                    }
                }
            })
            .unwrap();
        }
    }

    #[test]
    fn roundtrip_small() {
        let x: Vec<f32> = (0..64).map(|i| (i as f32 - 30.0) * 0.25).collect();
        let mut q = vec![
            BlockQ4_0 {
                d: [0; 2],
                qs: [0; 16]
            };
            2
        ];
        quantize_scalar(&x, &mut q);
        let mut y = vec![0f32; 64];
        dequantize_scalar(&q, &mut y);
        for (a, b) in x.iter().zip(&y) {
            assert!((a - b).abs() <= 0.6, "{a} {b}");
        }
    }
}
