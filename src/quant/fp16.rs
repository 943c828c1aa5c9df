//! fp32 <-> f16 / bf16 conversions exactly as ggml converts (rounding and NaN included).
//!
//! Scalar functions here match ggml-base's `ggml_compute_fp32_to_fp16` /
//! `ggml_compute_fp16_to_fp32` (ggml-impl.h) bit for bit: round to nearest even, overflow to
//! ±Inf, every NaN canonicalised to 0x7E00 (sign kept). ggml's CPU backend converts rows
//! with F16C/AVX-512 instead, which keeps NaN payloads (quietened): see the row functions.

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
    let bits = sign | if two_w < denormalized_cutoff { denormalized.to_bits() } else { normalized.to_bits() };
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
    ((sign >> 16) | if shl1_w > 0xFF00_0000 { 0x7E00 } else { nonsign }) as u16
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
}
