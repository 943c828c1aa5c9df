//! fp32 <-> f16 / bf16 conversions exactly as ggml converts (rounding and NaN included).
//!
//! Scalar functions here match ggml-base's `ggml_compute_fp32_to_fp16` /
//! `ggml_compute_fp16_to_fp32` (ggml-impl.h) bit for bit: round to nearest even, overflow to
//! ±Inf, every NaN canonicalised to 0x7E00 (sign kept). ggml's CPU backend converts rows
//! with F16C/AVX-512 instead, which keeps NaN payloads (quietened): see the row functions.
//!
//! # Row functions
//!
//! | function | semantics | upstream |
//! |---|---|---|
//! | [`f16_row_to_f32`] | exact; NaN keeps sign and payload, a signalling NaN is quietened | `ggml_fp16_to_fp32_row` (ggml.c) = `ggml_cpu_fp16_to_fp32` |
//! | [`f32_row_to_f16`] | round to nearest even, overflow to ±Inf, subnormals kept; NaN keeps sign and the top 10 payload bits, quietened (F16C `vcvtps2ph`) | `ggml_cpu_fp32_to_fp16` (ggml-cpu.c, the CPU `from_float` of F16) |
//! | [`f32_row_to_f16_ref`] | as above, but every NaN becomes `0x7E00 \| sign` | `ggml_fp32_to_fp16_row` (ggml.c, `from_float_ref`) |
//! | [`bf16_row_to_f32`] | exact (`bits << 16`) | `ggml_bf16_to_fp32_row` = `ggml_cpu_bf16_to_fp32` |
//! | [`f32_row_to_bf16`] | round to nearest even (no FTZ), NaN -> `(bits >> 16) \| 0x40` | `ggml_cpu_fp32_to_bf16` = `ggml_fp32_to_bf16_row_ref` |
//!
//! They accept any 16-bit storage type ([`Bits16`]: `u16`, `[u8; 2]`, [`BlockF16`],
//! [`BlockBf16`], `half::f16`, `half::bf16`), so a byte buffer viewed with
//! [`crate::quant::as_blocks`] works directly. They return an error if the two slices differ
//! in length. Every SIMD variant (scalar, AVX2+F16C, AVX-512) gives the same bits.
use super::{BlockBf16, BlockF16};
use crate::error::{Error, Result};
use crate::simd::{self, Isa};

/// f16 -> f32 (`ggml_compute_fp16_to_fp32`). Exact for every input (NaN payload kept).
#[inline]
pub fn f16_to_f32(h: u16) -> f32 {
    let w = (h as u32) << 16;
    let sign = w & 0x8000_0000;
    let two_w = w.wrapping_add(w);
    let exp_offset: u32 = 0xE0 << 23;
    let exp_scale = f32::from_bits(0x0780_0000); // 2^-112
    let normalized = f32::from_bits((two_w >> 4) + exp_offset) * exp_scale;
    let magic_mask: u32 = 126 << 23;
    let denormalized = f32::from_bits((two_w >> 17) | magic_mask) - 0.5;
    let denormalized_cutoff: u32 = 1 << 27;
    let bits = sign
        | if two_w < denormalized_cutoff {
            denormalized.to_bits()
        } else {
            normalized.to_bits()
        };
    f32::from_bits(bits)
}

/// f32 -> f16 (`ggml_compute_fp32_to_fp16`): round to nearest even; NaN -> 0x7E00 | sign.
#[inline]
pub fn f32_to_f16(f: f32) -> u16 {
    let scale_to_inf = f32::from_bits(0x7780_0000); // 2^112
    let scale_to_zero = f32::from_bits(0x0880_0000); // 2^-110
    let mut base = (f.abs() * scale_to_inf) * scale_to_zero;
    let w = f.to_bits();
    let shl1_w = w.wrapping_add(w);
    let sign = w & 0x8000_0000;
    let mut bias = shl1_w & 0xFF00_0000;
    if bias < 0x7100_0000 {
        bias = 0x7100_0000;
    }
    base += f32::from_bits((bias >> 1) + 0x0780_0000);
    let bits = base.to_bits();
    let exp_bits = (bits >> 13) & 0x0000_7C00;
    let mantissa_bits = bits & 0x0000_0FFF;
    let nonsign = exp_bits + mantissa_bits;
    ((sign >> 16)
        | if shl1_w > 0xFF00_0000 {
            0x7E00
        } else {
            nonsign
        }) as u16
}

/// f32 -> f16 the way F16C's `vcvtps2ph` (round to nearest even) does it, which is what
/// ggml's CPU backend uses on x86 with F16C: identical to [`f32_to_f16`] except that a NaN
/// keeps its sign and top payload bits and is quietened.
#[inline]
pub fn f32_to_f16_f16c(f: f32) -> u16 {
    let w = f.to_bits();
    if (w & 0x7fff_ffff) > 0x7f80_0000 {
        return (((w >> 16) & 0x8000) | 0x7e00 | ((w >> 13) & 0x03ff)) as u16;
    }
    f32_to_f16(f)
}

/// bf16 -> f32 (`ggml_compute_bf16_to_fp32`).
#[inline]
pub fn bf16_to_f32(h: u16) -> f32 {
    f32::from_bits((h as u32) << 16)
}

/// f32 -> bf16 (`ggml_compute_fp32_to_bf16`): round to nearest even, NaN quietened (bit 6 set).
#[inline]
pub fn f32_to_bf16(f: f32) -> u16 {
    let u = f.to_bits();
    if (u & 0x7fff_ffff) > 0x7f80_0000 {
        return ((u >> 16) | 64) as u16;
    }
    (u.wrapping_add(0x7fff + ((u >> 16) & 1)) >> 16) as u16
}

/// Little-endian f16 bytes -> f32.
#[inline]
pub fn f16le_to_f32(b: [u8; 2]) -> f32 {
    f16_to_f32(u16::from_le_bytes(b))
}

/// f32 -> little-endian f16 bytes (ggml-base rounding, see [`f32_to_f16`]).
#[inline]
pub fn f32_to_f16le(f: f32) -> [u8; 2] {
    f32_to_f16(f).to_le_bytes()
}

/// A 2-byte storage unit holding f16 or bf16 bits (little-endian in memory).
///
/// # Safety
/// Implementors are exactly 2 bytes, every bit pattern valid, and their in-memory bytes are
/// the little-endian bytes of [`Bits16::to_bits`] (the SIMD kernels read memory directly).
pub unsafe trait Bits16: Copy {
    fn to_bits(self) -> u16;
    fn from_bits(b: u16) -> Self;
}

// SAFETY (all impls): 2 bytes, every bit pattern valid; on little-endian targets the memory
// of a u16 is its little-endian bytes (the kernels that read memory exist only on x86-64).
unsafe impl Bits16 for u16 {
    #[inline(always)]
    fn to_bits(self) -> u16 {
        self
    }
    #[inline(always)]
    fn from_bits(b: u16) -> Self {
        b
    }
}
unsafe impl Bits16 for [u8; 2] {
    #[inline(always)]
    fn to_bits(self) -> u16 {
        u16::from_le_bytes(self)
    }
    #[inline(always)]
    fn from_bits(b: u16) -> Self {
        b.to_le_bytes()
    }
}
unsafe impl Bits16 for BlockF16 {
    #[inline(always)]
    fn to_bits(self) -> u16 {
        u16::from_le_bytes(self.bits)
    }
    #[inline(always)]
    fn from_bits(b: u16) -> Self {
        BlockF16 {
            bits: b.to_le_bytes(),
        }
    }
}
unsafe impl Bits16 for BlockBf16 {
    #[inline(always)]
    fn to_bits(self) -> u16 {
        u16::from_le_bytes(self.bits)
    }
    #[inline(always)]
    fn from_bits(b: u16) -> Self {
        BlockBf16 {
            bits: b.to_le_bytes(),
        }
    }
}
unsafe impl Bits16 for half::f16 {
    #[inline(always)]
    fn to_bits(self) -> u16 {
        half::f16::to_bits(self)
    }
    #[inline(always)]
    fn from_bits(b: u16) -> Self {
        half::f16::from_bits(b)
    }
}
unsafe impl Bits16 for half::bf16 {
    #[inline(always)]
    fn to_bits(self) -> u16 {
        half::bf16::to_bits(self)
    }
    #[inline(always)]
    fn from_bits(b: u16) -> Self {
        half::bf16::from_bits(b)
    }
}

fn same_len(a: usize, b: usize) -> Result<()> {
    if a != b {
        return Err(Error::BadShape(format!(
            "source has {a} elements, destination {b}"
        )));
    }
    Ok(())
}

/// f16 row -> f32 (exact, see the module table). Errors if the lengths differ.
pub fn f16_row_to_f32<T: Bits16>(src: &[T], dst: &mut [f32]) -> Result<()> {
    same_len(src.len(), dst.len())?;
    f16_to_f32_slice(src, dst);
    Ok(())
}

/// f32 row -> f16 the way ggml's CPU backend stores it (F16C rounding and NaN, see the module
/// table). Errors if the lengths differ.
pub fn f32_row_to_f16<T: Bits16>(src: &[f32], dst: &mut [T]) -> Result<()> {
    same_len(src.len(), dst.len())?;
    f32_to_f16_slice::<T, false>(src, dst);
    Ok(())
}

/// f32 row -> f16 the way ggml-base's `ggml_fp32_to_fp16_row` does it (NaN canonicalised).
/// Errors if the lengths differ.
pub fn f32_row_to_f16_ref<T: Bits16>(src: &[f32], dst: &mut [T]) -> Result<()> {
    same_len(src.len(), dst.len())?;
    f32_to_f16_slice::<T, true>(src, dst);
    Ok(())
}

/// bf16 row -> f32 (exact). Errors if the lengths differ.
pub fn bf16_row_to_f32<T: Bits16>(src: &[T], dst: &mut [f32]) -> Result<()> {
    same_len(src.len(), dst.len())?;
    bf16_to_f32_slice(src, dst);
    Ok(())
}

/// f32 row -> bf16 (`ggml_compute_fp32_to_bf16`, see the module table). Errors if the lengths differ.
pub fn f32_row_to_bf16<T: Bits16>(src: &[f32], dst: &mut [T]) -> Result<()> {
    same_len(src.len(), dst.len())?;
    f32_to_bf16_slice(src, dst);
    Ok(())
}

// Unchecked-length internals (process the common length), used by the block formats.
//
// Each has a fast path that reaches the kernel with a tail call and no stack frame (rows are
// often only 128 elements, where the per-call glue counts) and an out-of-line full dispatch
// for the rest (forced ISA, scalar).

macro_rules! row_dispatch {
    ($(#[$m:meta])* $name:ident, $slow:ident, <$($g:ident $(: $b:path)?),* $(; const $c:ident: bool)?>,
     $src:ident: &[$st:ty], $dst:ident: &mut [$dt:ty], $sp:ty, $dp:ty,
     $avx512:path, $avx2:path, |$i:ident, $o:ident| $scalar:expr) => {
        $(#[$m])*
        #[inline(always)]
        pub(crate) fn $name<$($g $(: $b)?),* $(, const $c: bool)?>($src: &[$st], $dst: &mut [$dt]) {
            #[cfg(target_arch = "x86_64")]
            {
                let n = $src.len().min($dst.len());
                let (s, d) = ($src.as_ptr() as $sp, $dst.as_mut_ptr() as $dp);
                match simd::isa_fast() {
                    // SAFETY: isa_fast() <= detected(); both pointers are valid for n elements.
                    Some(Isa::Avx512) => return unsafe { $avx512(s, d, n) },
                    // SAFETY: as above.
                    Some(Isa::Avx2) => return unsafe { $avx2(s, d, n) },
                    _ => {}
                }
            }
            $slow::<$($g),* $(, $c)?>($src, $dst)
        }

        #[cold]
        #[inline(never)]
        fn $slow<$($g $(: $b)?),* $(, const $c: bool)?>($src: &[$st], $dst: &mut [$dt]) {
            let n = $src.len().min($dst.len());
            #[cfg(target_arch = "x86_64")]
            {
                let (s, d) = ($src.as_ptr() as $sp, $dst.as_mut_ptr() as $dp);
                match simd::isa() {
                    // SAFETY: isa() <= detected(); both pointers are valid for n elements.
                    Isa::Avx512 => return unsafe { $avx512(s, d, n) },
                    // SAFETY: as above.
                    Isa::Avx2 => return unsafe { $avx2(s, d, n) },
                    Isa::Scalar => {}
                }
            }
            for ($o, $i) in $dst[..n].iter_mut().zip(&$src[..n]) {
                *$o = $scalar;
            }
        }
    };
}

row_dispatch!(
    f16_to_f32_slice, f16_to_f32_slow, <T: Bits16>,
    src: &[T], dst: &mut [f32], *const u16, *mut f32,
    crate::simd::x86::f16::f16_to_f32_avx512, crate::simd::x86::f16::f16_to_f32_avx2,
    |h, o| f16_to_f32(h.to_bits())
);

row_dispatch!(
    f32_to_f16_slice, f32_to_f16_slow, <T: Bits16; const CANON: bool>,
    src: &[f32], dst: &mut [T], *const f32, *mut u16,
    crate::simd::x86::f16::f32_to_f16_avx512::<CANON>,
    crate::simd::x86::f16::f32_to_f16_avx2::<CANON>,
    |f, o| T::from_bits(if CANON { f32_to_f16(*f) } else { f32_to_f16_f16c(*f) })
);

row_dispatch!(
    bf16_to_f32_slice, bf16_to_f32_slow, <T: Bits16>,
    src: &[T], dst: &mut [f32], *const u16, *mut f32,
    crate::simd::x86::f16::bf16_to_f32_avx512, crate::simd::x86::f16::bf16_to_f32_avx2,
    |h, o| bf16_to_f32(h.to_bits())
);

row_dispatch!(
    f32_to_bf16_slice, f32_to_bf16_slow, <T: Bits16>,
    src: &[f32], dst: &mut [T], *const f32, *mut u16,
    crate::simd::x86::f16::f32_to_bf16_avx512, crate::simd::x86::f16::f32_to_bf16_avx2,
    |f, o| T::from_bits(f32_to_bf16(*f))
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f16_roundtrip_all_finite() {
        for h in 0u16..=u16::MAX {
            let f = f16_to_f32(h);
            if f.is_nan() {
                continue;
            }
            assert_eq!(f32_to_f16(f), h, "h={h:#06x}");
            assert_eq!(half::f16::from_bits(h).to_f32().to_bits(), f.to_bits());
        }
    }

    #[test]
    fn f16_rounding_matches_ieee() {
        let mut s = 0x1234_5678u32;
        for _ in 0..1_000_000 {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            let f = f32::from_bits(s);
            if f.is_nan() {
                assert_eq!(f32_to_f16(f) & 0x7fff, 0x7e00);
                continue;
            }
            assert_eq!(f32_to_f16(f), half::f16::from_f32(f).to_bits(), "{f:e}");
        }
    }

    fn every_isa(mut f: impl FnMut(Isa)) {
        for isa in simd::available() {
            simd::with_isa(isa, || f(isa)).unwrap();
        }
    }

    /// Every f16 bit pattern, at every offset mod 32 (tails, masks), every ISA.
    #[test]
    fn f16_row_to_f32_exhaustive() {
        let all: Vec<u16> = (0..=u16::MAX).collect();
        let want: Vec<u32> = all.iter().map(|&h| f16_to_f32(h).to_bits()).collect();
        every_isa(|isa| {
            let mut out = vec![0f32; all.len()];
            f16_row_to_f32(&all, &mut out).unwrap();
            for (i, (o, w)) in out.iter().zip(&want).enumerate() {
                assert_eq!(o.to_bits(), *w, "{isa:?} h={:#06x}", all[i]);
            }
            for off in 0..33 {
                let n = 40 + off;
                let src = &all[0x7bf0 - off..0x7bf0 - off + n];
                let mut out = vec![0f32; n];
                f16_row_to_f32(src, &mut out).unwrap();
                for (o, h) in out.iter().zip(src) {
                    assert_eq!(o.to_bits(), f16_to_f32(*h).to_bits(), "{isa:?} tail n={n}");
                }
            }
        });
    }

    fn awkward_f32s() -> Vec<f32> {
        let mut v: Vec<f32> = vec![
            0.0,
            -0.0,
            1.0,
            -1.0,
            65504.0,
            65519.99,
            65520.0,
            -65520.0,
            1e9,
            f32::MAX,
            f32::MIN_POSITIVE,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            -f32::NAN,
            6e-8,
            2.9802322e-8,
            2.9802326e-8,
            5.9604645e-8,
        ];
        for b in [
            0x7f80_0001u32,
            0x7fc1_2345,
            0xffc0_0001,
            0xff80_2000,
            0x7fbf_ffff,
            0x0000_0001,
            0x8000_0001,
        ] {
            v.push(f32::from_bits(b));
        }
        let mut s = 0x9e37_79b9u32;
        for _ in 0..200_000 {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            v.push(f32::from_bits(s));
        }
        // every f16 value and its neighbours (ties for both formats)
        for h in (0..=u16::MAX).step_by(7) {
            let f = f16_to_f32(h);
            v.push(f);
            v.push(f32::from_bits(f.to_bits().wrapping_add(0x1000)));
            v.push(f32::from_bits(f.to_bits().wrapping_add(0x8000)));
        }
        v
    }

    #[test]
    fn f32_row_to_f16_matches_scalar_every_isa() {
        let src = awkward_f32s();
        every_isa(|isa| {
            for n in [src.len(), 1, 7, 8, 15, 17, 31, 33, 47] {
                let x = &src[src.len() - n..];
                let mut cpu = vec![0u16; n];
                let mut refr = vec![[0u8; 2]; n];
                f32_row_to_f16(x, &mut cpu).unwrap();
                f32_row_to_f16_ref(x, &mut refr).unwrap();
                for i in 0..n {
                    assert_eq!(
                        cpu[i],
                        f32_to_f16_f16c(x[i]),
                        "{isa:?} cpu {:#010x}",
                        x[i].to_bits()
                    );
                    assert_eq!(
                        u16::from_le_bytes(refr[i]),
                        f32_to_f16(x[i]),
                        "{isa:?} ref {:#010x}",
                        x[i].to_bits()
                    );
                }
            }
        });
    }

    #[test]
    fn bf16_rows_match_scalar_every_isa() {
        let src = awkward_f32s();
        let all: Vec<u16> = (0..=u16::MAX).collect();
        every_isa(|isa| {
            for n in [src.len(), 1, 7, 8, 15, 17, 31, 33] {
                let x = &src[src.len() - n..];
                let mut y = vec![half::bf16::ZERO; n];
                f32_row_to_bf16(x, &mut y).unwrap();
                for i in 0..n {
                    assert_eq!(
                        y[i].to_bits(),
                        f32_to_bf16(x[i]),
                        "{isa:?} {:#010x}",
                        x[i].to_bits()
                    );
                }
            }
            let mut out = vec![0f32; all.len() - 3];
            bf16_row_to_f32(&all[3..], &mut out).unwrap();
            for (o, h) in out.iter().zip(&all[3..]) {
                assert_eq!(o.to_bits(), (*h as u32) << 16, "{isa:?}");
            }
        });
    }

    /// The AVX-512 bf16 -> f32 kernel peels a masked head to align its stores: every
    /// destination offset in a 64-byte line, lengths around the head and the 16/32 steps.
    #[test]
    fn bf16_to_f32_every_alignment_and_length() {
        let src: Vec<u16> = (0..200u32)
            .map(|i| ((i * 0x9e37) ^ 0x3f80) as u16)
            .collect();
        let mut buf = vec![0f32; 256 + 16];
        every_isa(|isa| {
            for off in 0..16 {
                for n in (0..=70).chain([127, 128, 129, 160, 200 - 3]) {
                    buf.fill(-1.0);
                    bf16_row_to_f32(&src[3..3 + n], &mut buf[off..off + n]).unwrap();
                    for (j, o) in buf.iter().enumerate() {
                        let want = if j >= off && j < off + n {
                            f32::from_bits((src[3 + j - off] as u32) << 16).to_bits()
                        } else {
                            (-1f32).to_bits() // nothing written outside the row
                        };
                        assert_eq!(o.to_bits(), want, "{isa:?} off={off} n={n} j={j}");
                    }
                }
            }
        });
    }

    #[test]
    fn row_length_mismatch_is_an_error() {
        let mut out = [0f32; 3];
        assert!(f16_row_to_f32(&[0u16; 4], &mut out).is_err());
        assert!(bf16_row_to_f32(&[0u16; 2], &mut out).is_err());
        assert!(f32_row_to_f16(&[0f32; 2], &mut [0u16; 3]).is_err());
        assert!(f32_row_to_f16_ref(&[0f32; 2], &mut [0u16; 3]).is_err());
        assert!(f32_row_to_bf16(&[0f32; 2], &mut [0u16; 3]).is_err());
    }
}
