//! GGML_TYPE_BF16: one bfloat16 per element.
use super::f16::reduce16_gcc;
use super::fp16::{bf16_to_f32, bf16_to_f32_slice, f32_to_bf16_slice};
use super::BlockFormat;
use crate::simd::{self, Isa};
use crate::types::GgmlType;

/// Mirrors ggml's `ggml_bf16_t`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockBf16 {
    /// bfloat16, little-endian bytes.
    pub bits: [u8; 2],
}

// SAFETY: repr(C), byte arrays only (alignment 1, no padding, all bit patterns valid).
unsafe impl BlockFormat for BlockBf16 {
    const TYPE: GgmlType = GgmlType::BF16;
    const QK: usize = 1;
    type Dot = super::BlockBf16;

    /// Matches `ggml_cpu_fp32_to_bf16` (ggml-cpu.c; scalar `GGML_FP32_TO_BF16` on x86).
    #[inline]
    fn quantize_row(x: &[f32], y: &mut [Self]) {
        f32_to_bf16_slice(x, y)
    }
    /// Matches `ggml_fp32_to_bf16_row_ref` (ggml.c): the same conversion.
    #[inline]
    fn quantize_row_ref(x: &[f32], y: &mut [Self]) {
        f32_to_bf16_slice(x, y)
    }
    /// Matches `ggml_bf16_to_fp32_row` (ggml.c), exact.
    #[inline]
    fn dequantize_row(x: &[Self], y: &mut [f32]) {
        bf16_to_f32_slice(x, y)
    }
    /// Matches `ggml_vec_dot_bf16` (ggml-cpu/vec.cpp) as built here (`__AVX512BF16__`), bit for
    /// bit under every ISA: the AVX-512 variant runs `vdpbf16ps` when the CPU has it, the
    /// others emulate it exactly (`dpbf16_step`). See `dot_bf16_scalar` for the order.
    ///
    /// The usual case reaches the kernel with a tail call and no stack frame; anything else
    /// (forced ISA, scalar, first call) goes through `vec_dot_dispatch`.
    #[inline]
    fn vec_dot(x: &[Self], y: &[Self]) -> f32 {
        #[cfg(target_arch = "x86_64")]
        {
            use crate::simd::x86::f16 as k;
            let n = x.len().min(y.len());
            let (px, py) = (x.as_ptr() as *const u16, y.as_ptr() as *const u16);
            match k::dot_bf16_fast() {
                // SAFETY: dot_bf16_fast only reports kernels the CPU can run; n elements each.
                Some(true) => return unsafe { k::dot_bf16_avx512bf16(px, py, n) },
                // SAFETY: as above.
                Some(false) => return unsafe { k::dot_bf16_avx2(px, py, n) },
                None => {}
            }
        }
        vec_dot_dispatch(x, y)
    }
}

/// The full ISA dispatch of `vec_dot` (forced ISAs, scalar, first call).
#[cold]
#[inline(never)]
fn vec_dot_dispatch(x: &[BlockBf16], y: &[BlockBf16]) -> f32 {
    let n = x.len().min(y.len());
    #[cfg(target_arch = "x86_64")]
    {
        use crate::simd::x86::f16 as k;
        let (px, py) = (x.as_ptr() as *const u16, y.as_ptr() as *const u16);
        match simd::isa() {
            // SAFETY: isa() <= detected() (and avx512bf16 checked); pointers valid for n.
            Isa::Avx512 if k::has_avx512bf16() => {
                return unsafe { k::dot_bf16_avx512bf16(px, py, n) }
            }
            // SAFETY: as above.
            Isa::Avx512 | Isa::Avx2 => return unsafe { k::dot_bf16_avx2(px, py, n) },
            Isa::Scalar => {}
        }
    }
    dot_bf16_scalar(&x[..n], &y[..n])
}

/// 2^-126 - 2^-151: an f32 result whose exact value is below this in magnitude rounds (with
/// unbounded exponent) below 2^-126, i.e. is tiny after rounding, and FTZ flushes it.
pub(crate) const DP_TINY_LIMIT: f64 = 33554431.0 * f64::from_bits((1023 - 151) << 52);

/// bf16 -> f32 with denormals-are-zero (sign kept).
#[inline(always)]
fn daz(h: u16) -> f32 {
    if h & 0x7f80 == 0 {
        f32::from_bits(((h & 0x8000) as u32) << 16)
    } else {
        bf16_to_f32(h)
    }
}

/// One FMA step of `vdpbf16ps` (Intel SDM: "FP32 FMA with DAZ in, FTZ out and RNE rounding",
/// MXCSR ignored): `acc + a*b` rounded once to f32, then flushed to ±0 if tiny after rounding.
///
/// Emulated in f64: `a*b` is exact (two 8-bit significands), and `acc + a*b` rounded to f64
/// and then to f32 equals the single rounding to f32 (two 24-bit operands, 53 >= 2*24 + 2).
/// Tininess is judged on the exact value: below 2^-126 - 2^-151 it rounds below 2^-126.
#[inline(always)]
pub(crate) fn dpbf16_step(acc: f32, a: u16, b: u16) -> f32 {
    let s = acc as f64 + daz(a) as f64 * daz(b) as f64;
    if s.abs() < DP_TINY_LIMIT {
        return if s.is_sign_negative() { -0.0 } else { 0.0 };
    }
    s as f32
}

/// Portable `ggml_vec_dot_bf16` with the AVX512-BF16 build's order: two accumulators `c1`,
/// `c2` of 16 lanes; per 64-element step lane `l` of `c1` does `vdpbf16ps` on elements
/// `(2l+1, 2l)` (odd first) and `c2` on `32+2l+1, 32+2l`; then
/// `sumf = 0.0f64 + reduce(c1) + reduce(c2)` (gcc's `_mm512_reduce_add_ps`), the `n % 64` tail
/// adds `(x*y) as f64` (plain f32 product, no DAZ), result rounded to f32.
fn dot_bf16_scalar(x: &[BlockBf16], y: &[BlockBf16]) -> f32 {
    let n = x.len();
    let np = n / 64 * 64;
    let mut c1 = [0f32; 16];
    let mut c2 = [0f32; 16];
    let b = |v: &BlockBf16| u16::from_le_bytes(v.bits);
    for (xs, ys) in x[..np].chunks_exact(64).zip(y[..np].chunks_exact(64)) {
        for l in 0..16 {
            for (c, o) in [(&mut c1, 0), (&mut c2, 32)] {
                let (e, od) = (o + 2 * l, o + 2 * l + 1);
                let t = dpbf16_step(c[l], b(&xs[od]), b(&ys[od]));
                c[l] = dpbf16_step(t, b(&xs[e]), b(&ys[e]));
            }
        }
    }
    let mut sumf = 0f64;
    sumf += reduce16_gcc(&c1) as f64;
    sumf += reduce16_gcc(&c2) as f64;
    for i in np..n {
        sumf += (bf16_to_f32(b(&x[i])) * bf16_to_f32(b(&y[i]))) as f64;
    }
    sumf as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(n: usize, seed: u32, tiny: bool) -> Vec<BlockBf16> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                let mut h = (s >> 16) as u16;
                if tiny {
                    // exponents near the bottom of the range: products underflow, sums hit FTZ
                    h = (h & 0x807f) | (((s & 0x7) as u16 + 0x3f) << 7);
                    if s & 0x100 != 0 {
                        h = (h & 0x807f) | ((s & 0x3) as u16) << 7;
                    }
                } else if h & 0x7f80 == 0x7f80 {
                    h &= 0xbfff; // keep finite
                }
                BlockBf16 {
                    bits: h.to_le_bytes(),
                }
            })
            .collect()
    }

    /// The emulation agrees with the hardware `vdpbf16ps` (when present) and the SIMD variants
    /// with the scalar one, on wide-range and underflow-heavy data, for lengths around 64.
    #[test]
    fn dot_variants_agree() {
        for tiny in [false, true] {
            for n in [0, 1, 31, 63, 64, 65, 128, 1000, 4096] {
                for seed in 0..8u32 {
                    let x = row(n, 0x1234_5678 ^ seed ^ (n as u32) << 8, tiny);
                    let y = row(n, 0x8765_4321 ^ seed ^ (n as u32) << 8, tiny);
                    let want = dot_bf16_scalar(&x, &y);
                    for isa in simd::available() {
                        let got = simd::with_isa(isa, || BlockBf16::vec_dot(&x, &y)).unwrap();
                        assert!(
                            got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()),
                            "n={n} tiny={tiny} {isa:?}: {got:e} vs {want:e}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn dp_step_edges() {
        // exactly representable just below 2^-126 (tiny after rounding) -> flushed
        let min = f32::MIN_POSITIVE;
        assert_eq!(dpbf16_step(min, 0xbf80, 0x0000).to_bits(), min.to_bits()); // -1 * 0 (+0)
        assert_eq!(dpbf16_step(0.0, 0x0040, 0x3f80), 0.0); // denormal input -> 0
        assert_eq!(
            dpbf16_step(-0.0, 0x8000, 0x3f80).to_bits(),
            (-0.0f32).to_bits()
        );
        assert_eq!(dpbf16_step(3.0, 0x3f80, 0x4000), 5.0);
    }
}
