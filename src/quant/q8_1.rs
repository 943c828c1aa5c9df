//! GGML_TYPE_Q8_1: the vec_dot type of q4_1/q5_1 (scale and scaled sum).
//!
//! Upstream has `from_float` (x86 `quantize_row_q8_1`) and `from_float_ref`
//! (`quantize_row_q8_1_ref`) for this type, but no `to_float` and no CPU `vec_dot`: it only
//! ever appears as the right-hand side of q4_1/q5_1 dot products. Our `dequantize_row` and
//! `vec_dot` are therefore our own definitions (documented on each), not upstream's.
use super::fp16::{f16_to_f32, f32_to_f16};
use super::q8_0::{cpu_block, ref_block};
use super::BlockFormat;
use crate::simd::{self, Isa};
use crate::types::GgmlType;

/// Mirrors ggml's `block_q8_1`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockQ8_1 {
    /// scale (f16 bits)
    pub d: [u8; 2],
    /// d * sum(qs) (f16 bits)
    pub s: [u8; 2],
    /// quants
    pub qs: [i8; 32],
}

fn quantize_scalar(x: &[f32], y: &mut [BlockQ8_1]) {
    for (b, xb) in y.iter_mut().zip(x.chunks_exact(32)) {
        let (d, qs, sum) = cpu_block(xb);
        b.d = f32_to_f16(d).to_le_bytes();
        b.s = f32_to_f16(d * sum as f32).to_le_bytes();
        b.qs = qs;
    }
}

fn quantize_ref_scalar(x: &[f32], y: &mut [BlockQ8_1]) {
    for (b, xb) in y.iter_mut().zip(x.chunks_exact(32)) {
        let (d, qs) = ref_block(xb);
        let sum: i32 = qs.iter().map(|&q| q as i32).sum();
        b.d = f32_to_f16(d).to_le_bytes();
        b.s = f32_to_f16(sum as f32 * d).to_le_bytes();
        b.qs = qs;
    }
}

fn dequantize_scalar(x: &[BlockQ8_1], y: &mut [f32]) {
    for (b, yb) in x.iter().zip(y.chunks_exact_mut(32)) {
        let d = f16_to_f32(u16::from_le_bytes(b.d));
        for (o, q) in yb.iter_mut().zip(&b.qs) {
            *o = *q as f32 * d;
        }
    }
}

// SAFETY: repr(C), byte arrays only (alignment 1, no padding, all bit patterns valid).
unsafe impl BlockFormat for BlockQ8_1 {
    const TYPE: GgmlType = GgmlType::Q8_1;
    const QK: usize = 32;
    type Dot = super::BlockQ8_1;

    /// Matches the x86 `quantize_row_q8_1` (ggml-cpu/arch/x86/quants.c, AVX2 path): as q8_0's
    /// CPU path, plus `s = fp16(d * (wrapping sum of the int32 quants before saturation))`; both halves
    /// stored with ggml-base's conversion (`GGML_CPU_FP32_TO_FP16` on x86).
    fn quantize_row(x: &[f32], y: &mut [Self]) {
        let nb = y.len().min(x.len() / 32);
        let (x, y) = (&x[..nb * 32], &mut y[..nb]);
        #[cfg(target_arch = "x86_64")]
        {
            use crate::simd::x86::q8 as k;
            let (px, py) = (x.as_ptr(), y.as_mut_ptr() as *mut u8);
            match simd::isa() {
                // SAFETY: isa() <= detected(); x has nb*32 floats, y nb blocks.
                Isa::Avx512 => return unsafe { k::quantize_q8_avx512::<true>(px, py, nb) },
                Isa::Avx2 => return unsafe { k::quantize_q8_avx2::<true>(px, py, nb) },
                Isa::Scalar => {}
            }
        }
        quantize_scalar(x, y)
    }
    /// Matches `quantize_row_q8_1_ref` (ggml-quants.c): as q8_0's `_ref`, plus
    /// `s = fp16((sum of the stored int8 quants) * d)`.
    fn quantize_row_ref(x: &[f32], y: &mut [Self]) {
        let nb = y.len().min(x.len() / 32);
        let (x, y) = (&x[..nb * 32], &mut y[..nb]);
        #[cfg(target_arch = "x86_64")]
        {
            use crate::simd::x86::q8 as k;
            let (px, py) = (x.as_ptr(), y.as_mut_ptr() as *mut u8);
            match simd::isa() {
                // SAFETY: as above.
                Isa::Avx512 => return unsafe { k::quantize_q8_ref_avx512::<true>(px, py, nb) },
                Isa::Avx2 => return unsafe { k::quantize_q8_ref_avx2::<true>(px, py, nb) },
                Isa::Scalar => {}
            }
        }
        quantize_ref_scalar(x, y)
    }
    /// Not upstream (q8_1 has no `to_float`): `y[j] = qs[j] * d`, like `dequantize_row_q8_0`;
    /// `s` is ignored.
    fn dequantize_row(x: &[Self], y: &mut [f32]) {
        let nb = x.len().min(y.len() / 32);
        #[cfg(target_arch = "x86_64")]
        {
            use crate::simd::x86::q8 as k;
            let (px, py) = (x.as_ptr() as *const u8, y.as_mut_ptr());
            match simd::isa() {
                // SAFETY: x has nb blocks, y nb*32 floats.
                Isa::Avx512 => return unsafe { k::dequantize_q8_avx512::<36, 4>(px, py, nb) },
                Isa::Avx2 => return unsafe { k::dequantize_q8_avx2::<36, 4>(px, py, nb) },
                Isa::Scalar => {}
            }
        }
        dequantize_scalar(&x[..nb], &mut y[..nb * 32])
    }
    /// Not upstream (no CPU `vec_dot` for q8_1 x q8_1): the generic q8_0 formula,
    /// `sum_b (int dot of the quants) * (dx * dy)` accumulated in f32 block by block, the same
    /// on every ISA.
    fn vec_dot(x: &[Self], y: &[Self]) -> f32 {
        let mut sumf = 0f32;
        for (bx, by) in x.iter().zip(y) {
            let sumi: i32 = bx
                .qs
                .iter()
                .zip(&by.qs)
                .map(|(&a, &b)| a as i32 * b as i32)
                .sum();
            let d = f16_to_f32(u16::from_le_bytes(bx.d)) * f16_to_f32(u16::from_le_bytes(by.d));
            sumf += sumi as f32 * d;
        }
        sumf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variants_agree() {
        let mut s = 0x0bad_f00du32;
        let mut x: Vec<f32> = (0..32 * 40)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s as i32 as f32) * 1e-7
            })
            .collect();
        x[31] = f32::NAN;
        x[40] = f32::NEG_INFINITY;
        x[64..96].fill(0.0);
        for v in &mut x[96..128] {
            *v *= 1e-35;
        }
        let nb = x.len() / 32;
        let zero = BlockQ8_1 {
            d: [0; 2],
            s: [0; 2],
            qs: [0; 32],
        };
        let (mut want, mut want_ref) = (vec![zero; nb], vec![zero; nb]);
        quantize_scalar(&x, &mut want);
        quantize_ref_scalar(&x, &mut want_ref);
        let mut want_deq = vec![0f32; x.len()];
        dequantize_scalar(&want, &mut want_deq);
        for isa in simd::available() {
            simd::with_isa(isa, || {
                let (mut got, mut got_ref) = (vec![zero; nb], vec![zero; nb]);
                BlockQ8_1::quantize_row(&x, &mut got);
                BlockQ8_1::quantize_row_ref(&x, &mut got_ref);
                assert_eq!(got, want, "{isa:?}");
                assert_eq!(got_ref, want_ref, "{isa:?} ref");
                let mut deq = vec![0f32; x.len()];
                BlockQ8_1::dequantize_row(&want, &mut deq);
                assert!(
                    deq.iter()
                        .zip(&want_deq)
                        .all(|(a, b)| a.to_bits() == b.to_bits()),
                    "{isa:?}"
                );
            })
            .unwrap();
        }
    }
}
