//! Tile micro-kernels of the attention driver, with scalar fallbacks and the ISA dispatch.
//!
//! Layouts (all f32, row-major, `T` = [`TILE_KV`] = 64 KV rows per tile):
//! * `q`  `[mp][dk]`   query rows (virtual rows: query row × head of a GQA group)
//! * `kt` `[dk][T]`    the K tile, dequantized and transposed
//! * `s`  `[mp][T]`    scores, then probabilities
//! * `vt` `[T][dvp]`   the V tile, dequantized, rows padded with zeros to `dvp` (multiple of 16)
//! * `o`  `[mp][dvp]`  the output accumulator
use crate::simd::Isa;

/// KV rows per tile.
pub(crate) const TILE_KV: usize = 64;

/// The kernels one attention call runs with, chosen once from the caller's ISA so every
/// worker thread computes with the same code (bit-identical results for any thread count).
#[derive(Clone, Copy)]
pub(crate) struct Kernels {
    pub isa: Isa,
}

impl Kernels {
    pub fn new(isa: Isa) -> Self {
        Kernels { isa }
    }

    /// `s[m][t] = Σ_d q[m][d] · kt[d][t]` for `m < mp` (`mp` a multiple of 4).
    pub fn qk(&self, q: &[f32], kt: &[f32], s: &mut [f32], mp: usize, dk: usize) {
        assert!(
            mp % 4 == 0
                && q.len() >= mp * dk
                && kt.len() >= dk * TILE_KV
                && s.len() >= mp * TILE_KV
        );
        #[cfg(target_arch = "x86_64")]
        match self.isa {
            // SAFETY: sizes asserted above; the ISA was checked by `simd` when chosen.
            Isa::Avx512 => {
                return unsafe {
                    crate::simd::x86::attn::qk_tile_avx512(
                        q.as_ptr(),
                        kt.as_ptr(),
                        s.as_mut_ptr(),
                        mp,
                        dk,
                    )
                }
            }
            Isa::Avx2 => {
                return unsafe {
                    crate::simd::x86::attn::qk_tile_avx2(
                        q.as_ptr(),
                        kt.as_ptr(),
                        s.as_mut_ptr(),
                        mp,
                        dk,
                    )
                }
            }
            Isa::Scalar => {}
        }
        for m in 0..mp {
            let srow = &mut s[m * TILE_KV..(m + 1) * TILE_KV];
            srow.fill(0.0);
            for d in 0..dk {
                let qv = q[m * dk + d];
                let krow = &kt[d * TILE_KV..(d + 1) * TILE_KV];
                for t in 0..TILE_KV {
                    srow[t] = qv.mul_add(krow[t], srow[t]);
                }
            }
        }
    }

    /// `s[m][t] = Σ_d q[m][d] · k[t][d]` with K row-major `[T][dk]` (the decode path: few
    /// rows, no transposed packing). `mp` a multiple of 4.
    pub fn qk_rows(&self, q: &[f32], k: &[f32], s: &mut [f32], mp: usize, dk: usize) {
        assert!(
            mp % 4 == 0 && q.len() >= mp * dk && k.len() >= dk * TILE_KV && s.len() >= mp * TILE_KV
        );
        #[cfg(target_arch = "x86_64")]
        match self.isa {
            // SAFETY: sizes asserted above; the ISA was checked by `simd` when chosen.
            Isa::Avx512 => {
                return unsafe {
                    crate::simd::x86::attn::qk_rows_avx512(
                        q.as_ptr(),
                        k.as_ptr(),
                        s.as_mut_ptr(),
                        mp,
                        dk,
                    )
                }
            }
            Isa::Avx2 => {
                return unsafe {
                    crate::simd::x86::attn::qk_rows_avx2(
                        q.as_ptr(),
                        k.as_ptr(),
                        s.as_mut_ptr(),
                        mp,
                        dk,
                    )
                }
            }
            Isa::Scalar => {}
        }
        for m in 0..mp {
            for t in 0..TILE_KV {
                let mut acc = 0.0f32;
                for d in 0..dk {
                    acc = q[m * dk + d].mul_add(k[t * dk + d], acc);
                }
                s[m * TILE_KV + t] = acc;
            }
        }
    }

    /// `o[m][:] += Σ_{t in active} p[m][t] · vt[t][:]` for `m < mp` (`mp` a multiple of 4,
    /// `dvp` a multiple of 16).
    pub fn pv(&self, p: &[f32], vt: &[f32], o: &mut [f32], mp: usize, dvp: usize, active: &[u8]) {
        assert!(mp % 4 == 0 && dvp % 16 == 0);
        assert!(p.len() >= mp * TILE_KV && vt.len() >= TILE_KV * dvp && o.len() >= mp * dvp);
        assert!(active.iter().all(|&t| (t as usize) < TILE_KV));
        #[cfg(target_arch = "x86_64")]
        match self.isa {
            // SAFETY: sizes and indices asserted above; ISA checked when chosen.
            Isa::Avx512 => {
                return unsafe {
                    crate::simd::x86::attn::pv_tile_avx512(
                        p.as_ptr(),
                        vt.as_ptr(),
                        o.as_mut_ptr(),
                        mp,
                        dvp,
                        active,
                    )
                }
            }
            Isa::Avx2 => {
                return unsafe {
                    crate::simd::x86::attn::pv_tile_avx2(
                        p.as_ptr(),
                        vt.as_ptr(),
                        o.as_mut_ptr(),
                        mp,
                        dvp,
                        active,
                    )
                }
            }
            Isa::Scalar => {}
        }
        for m in 0..mp {
            let orow = &mut o[m * dvp..(m + 1) * dvp];
            for &t in active {
                let t = t as usize;
                let pv = p[m * TILE_KV + t];
                let vrow = &vt[t * dvp..(t + 1) * dvp];
                for c in 0..dvp {
                    orow[c] = pv.mul_add(vrow[c], orow[c]);
                }
            }
        }
    }

    /// Scores of one row: `s[t] = mv[t] == -inf ? -inf : f(s[t]) + mv[t]` with
    /// `f(x) = x·scale` or, with a soft cap, `softcap·tanh(x·scale)`; returns the row max.
    pub fn scores(&self, s: &mut [f32], mv: &[f32], scale: f32, softcap: f32) -> f32 {
        assert!(s.len() == TILE_KV && mv.len() == TILE_KV);
        if softcap == 0.0 {
            #[cfg(target_arch = "x86_64")]
            match self.isa {
                // SAFETY: both rows have TILE_KV elements.
                Isa::Avx512 => {
                    return unsafe {
                        crate::simd::x86::attn::scores_avx512(s.as_mut_ptr(), mv.as_ptr(), scale)
                    }
                }
                Isa::Avx2 => {
                    return unsafe {
                        crate::simd::x86::attn::scores_avx2(s.as_mut_ptr(), mv.as_ptr(), scale)
                    }
                }
                Isa::Scalar => {}
            }
        }
        let mut mx = f32::NEG_INFINITY;
        for (x, &m) in s.iter_mut().zip(mv) {
            if m == f32::NEG_INFINITY {
                *x = f32::NEG_INFINITY;
                continue;
            }
            let mut v = *x * scale;
            if softcap != 0.0 {
                v = softcap * v.tanh();
            }
            v += m;
            *x = v;
            mx = mx.max(v);
        }
        mx
    }

    /// `s[t] = exp(s[t] - mx)` in place; returns the sum of the row.
    pub fn exp_sum(&self, s: &mut [f32], mx: f32) -> f32 {
        assert!(s.len() == TILE_KV);
        #[cfg(target_arch = "x86_64")]
        match self.isa {
            // SAFETY: the row has TILE_KV elements.
            Isa::Avx512 => {
                return unsafe { crate::simd::x86::attn::exp_sum_avx512(s.as_mut_ptr(), mx) }
            }
            Isa::Avx2 => {
                return unsafe { crate::simd::x86::attn::exp_sum_avx2(s.as_mut_ptr(), mx) }
            }
            Isa::Scalar => {}
        }
        let mut sum = 0.0f32;
        for x in s.iter_mut() {
            *x = (*x - mx).exp();
            sum += *x;
        }
        sum
    }
}
