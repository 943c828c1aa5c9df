//! GGML_TYPE_F16: one IEEE half per element.
use super::fp16::{f16_to_f32, f16_to_f32_slice, f32_to_f16_slice};
use super::BlockFormat;
use crate::simd::{self, Isa};
use crate::types::GgmlType;

/// Mirrors ggml's `ggml_fp16_t`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockF16 {
    /// IEEE half, little-endian bytes.
    pub bits: [u8; 2],
}

// SAFETY: repr(C), byte arrays only (alignment 1, no padding, all bit patterns valid).
unsafe impl BlockFormat for BlockF16 {
    const TYPE: GgmlType = GgmlType::F16;
    const QK: usize = 1;
    type Dot = super::BlockF16;

    /// Matches `ggml_cpu_fp32_to_fp16` (ggml-cpu.c): F16C rounding, NaN payload kept.
    #[inline]
    fn quantize_row(x: &[f32], y: &mut [Self]) {
        f32_to_f16_slice::<_, false>(x, y)
    }
    /// Matches `ggml_fp32_to_fp16_row` (ggml.c): NaN -> 0x7E00 | sign.
    #[inline]
    fn quantize_row_ref(x: &[f32], y: &mut [Self]) {
        f32_to_f16_slice::<_, true>(x, y)
    }
    /// Matches `ggml_fp16_to_fp32_row` (ggml.c), exact.
    #[inline]
    fn dequantize_row(x: &[Self], y: &mut [f32]) {
        f16_to_f32_slice(x, y)
    }
    /// Matches `ggml_vec_dot_f16` (ggml-cpu/vec.cpp) as built with AVX-512F on this machine,
    /// bit for bit under every ISA; see `dot_f16_scalar` for the order.
    ///
    /// The usual case reaches the kernel with a tail call and no stack frame; anything else
    /// (forced ISA, scalar) goes through `vec_dot_dispatch`.
    #[inline]
    fn vec_dot(x: &[Self], y: &[Self]) -> f32 {
        #[cfg(target_arch = "x86_64")]
        {
            use crate::simd::x86::f16 as k;
            let n = x.len().min(y.len());
            let (px, py) = (x.as_ptr() as *const u16, y.as_ptr() as *const u16);
            // (one kernel for both levels: see `dot_f16_avx2`)
            if let Some(Isa::Avx512 | Isa::Avx2) = simd::isa_fast() {
                // SAFETY: isa_fast() <= detected(); both pointers valid for n elements.
                return unsafe { k::dot_f16_avx2(px, py, n) };
            }
        }
        vec_dot_dispatch(x, y)
    }
}

/// The full ISA dispatch of `vec_dot` (forced ISAs, scalar).
#[cold]
#[inline(never)]
fn vec_dot_dispatch(x: &[BlockF16], y: &[BlockF16]) -> f32 {
    let n = x.len().min(y.len());
    #[cfg(target_arch = "x86_64")]
    {
        use crate::simd::x86::f16 as k;
        let (px, py) = (x.as_ptr() as *const u16, y.as_ptr() as *const u16);
        if let Isa::Avx512 | Isa::Avx2 = simd::isa() {
            // SAFETY: isa() <= detected(); both pointers valid for n elements.
            return unsafe { k::dot_f16_avx2(px, py, n) };
        }
    }
    dot_f16_scalar(&x[..n], &y[..n])
}

/// Portable `ggml_vec_dot_f16` with the AVX-512 build's order: 64 f32 accumulator lanes
/// (4 vectors of 16), lane `l` of step `s` gets `fma(x[64s+l], y[64s+l], acc[l])`; then
/// vectors `(a0+a2) + (a1+a3)`, then gcc's `_mm512_reduce_add_ps` (halves, quarters, pairs),
/// widened to f64; the `n % 64` tail adds `(x*y) as f64` one by one; result rounded to f32.
fn dot_f16_scalar(x: &[BlockF16], y: &[BlockF16]) -> f32 {
    let n = x.len();
    let np = n & !63;
    let mut acc = [0f32; 64];
    for (xs, ys) in x[..np].chunks_exact(64).zip(y[..np].chunks_exact(64)) {
        for l in 0..64 {
            let a = f16_to_f32(u16::from_le_bytes(xs[l].bits));
            let b = f16_to_f32(u16::from_le_bytes(ys[l].bits));
            acc[l] = a.mul_add(b, acc[l]);
        }
    }
    let mut v = [0f32; 16];
    for (l, o) in v.iter_mut().enumerate() {
        *o = (acc[l] + acc[32 + l]) + (acc[16 + l] + acc[48 + l]);
    }
    let mut sumf = reduce16_gcc(&v) as f64;
    for i in np..n {
        let p =
            f16_to_f32(u16::from_le_bytes(x[i].bits)) * f16_to_f32(u16::from_le_bytes(y[i].bits));
        sumf += p as f64;
    }
    sumf as f32
}

/// gcc's `_mm512_reduce_add_ps` (avx512fintrin.h): `t[j] = v[8+j] + v[j]`,
/// `u[k] = t[4+k] + t[k]`, then `(u0 + u2) + (u1 + u3)`.
pub(crate) fn reduce16_gcc(v: &[f32; 16]) -> f32 {
    let mut t = [0f32; 8];
    for j in 0..8 {
        t[j] = v[8 + j] + v[j];
    }
    let mut u = [0f32; 4];
    for k in 0..4 {
        u[k] = t[4 + k] + t[k];
    }
    (u[0] + u[2]) + (u[1] + u[3])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::fp16::f32_to_f16;

    fn row(n: usize, seed: u32) -> Vec<BlockF16> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                let f = ((s >> 8) as f32 / (1u32 << 24) as f32 - 0.5) * 8.0;
                BlockF16 {
                    bits: f32_to_f16(f).to_le_bytes(),
                }
            })
            .collect()
    }

    /// The SIMD variants give the scalar variant's bits for every length around the steps.
    #[test]
    fn dot_variants_agree() {
        for n in [0, 1, 15, 16, 63, 64, 65, 127, 128, 200, 1024, 1031] {
            let x = row(n, 0x1234_5678 ^ n as u32);
            let y = row(n, 0x8765_4321 ^ n as u32);
            let want = dot_f16_scalar(&x, &y);
            for isa in simd::available() {
                let got = simd::with_isa(isa, || BlockF16::vec_dot(&x, &y)).unwrap();
                assert_eq!(got.to_bits(), want.to_bits(), "n={n} {isa:?}");
            }
        }
    }
}
