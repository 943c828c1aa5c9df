//! Tile micro-kernels of the attention driver, with scalar fallbacks and the ISA dispatch.
//!
//! Layouts (all f32, row-major, `T` = [`TILE_KV`] = 64 KV rows per tile):
//! * `q`  `[mp][dk]`   query rows (virtual rows: query row × head of a GQA group)
//! * `kt` `[dk][T]`    the K tile, dequantized and transposed
//! * `s`  `[mp][T]`    scores, then probabilities
//! * `vt` `[T][dvp]`   the V tile, dequantized, rows padded with zeros to `dvp` (multiple of 16)
//! * `o`  `[mp][dvp]`  the output accumulator
use crate::simd::Isa;
use crate::types::GgmlType;

/// A K/V row format the fused decode kernels read directly (no dequantized tile).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fused {
    F16,
    Q8_0,
    Q4_0,
}

impl Fused {
    /// The quantized fused formats (q8_0, q4_0) of the int8 K and quantized V kernels.
    fn quantized(ty: GgmlType) -> Option<Fused> {
        match ty {
            GgmlType::Q8_0 => Some(Fused::Q8_0),
            GgmlType::Q4_0 => Some(Fused::Q4_0),
            _ => None,
        }
    }

    /// Bytes of a row of `d` elements (`usize::MAX` when `d` is not a whole number of
    /// blocks: no row then fits a buffer).
    fn row_bytes(self, d: usize) -> usize {
        ty_of(self).row_bytes(d).unwrap_or(usize::MAX)
    }
}

/// Checks that every `t ∈ active` is a tile column and rows `base + t·nb1` of `row` bytes lie
/// inside `len` bytes.
fn rows_inside(len: usize, base: usize, nb1: usize, active: &[u8], row: usize) -> bool {
    let tmax = active.iter().copied().max().unwrap_or(0) as usize;
    tmax < TILE_KV
        && active.len() <= TILE_KV
        && tmax
            .checked_mul(nb1)
            .and_then(|x| x.checked_add(base))
            .and_then(|x| x.checked_add(row))
            .is_some_and(|end| end <= len)
}

/// KV rows per tile.
pub(crate) const TILE_KV: usize = 64;

/// Scratch of the quantized decode V kernel ([`Kernels::pv_q`]) for up to `mr` rows and `nb`
/// 32-element blocks: the weights `p·d` (`w`), their 16-bit quantization (`wq`), its scale
/// (`sig`) and sum (`sum`) per (block, row).
pub(crate) struct WeightScratch {
    pub w: Vec<f32>,
    pub wq: Vec<i16>,
    pub sig: Vec<f32>,
    pub sum: Vec<i32>,
}

impl WeightScratch {
    pub fn new(mr: usize, nb: usize) -> Self {
        WeightScratch {
            w: vec![0.0; nb * mr * TILE_KV],
            wq: vec![0; nb * mr * TILE_KV],
            sig: vec![0.0; nb * mr],
            sum: vec![0; nb * mr],
        }
    }
}

/// The kernels one attention call runs with, chosen once from the caller's ISA so every
/// worker thread computes with the same code (bit-identical results for any thread count).
#[derive(Clone, Copy)]
pub(crate) struct Kernels {
    pub isa: Isa,
    /// AVX-512 VNNI on top of `Isa::Avx512`: the int8 decode K kernel.
    vnni: bool,
}

impl Kernels {
    pub fn new(isa: Isa) -> Self {
        #[cfg(target_arch = "x86_64")]
        let vnni = isa == Isa::Avx512 && std::arch::is_x86_feature_detected!("avx512vnni");
        #[cfg(not(target_arch = "x86_64"))]
        let vnni = false;
        Kernels { isa, vnni }
    }

    /// Whether decode K of format `f` (`dk` elements) goes through [`Kernels::qk_i8`] (Q
    /// quantized to q8_0 like upstream's `vec_dot_type`, integer block dots).
    pub fn int8_k(&self, f: Option<Fused>, dk: usize) -> bool {
        let isa_ok = self.vnni || (cfg!(target_arch = "x86_64") && self.isa >= Isa::Avx2);
        isa_ok && matches!(f, Some(Fused::Q8_0 | Fused::Q4_0)) && dk.is_multiple_of(32)
    }

    /// The format of the quantized decode V kernel ([`Kernels::pv_q`]) for V rows of `ty`
    /// (`dv` elements), if this ISA has it (AVX-512, AVX2; q8_0/q4_0, `dv % 32 == 0`).
    pub fn pv_q_fmt(&self, ty: GgmlType, dv: usize) -> Option<Fused> {
        let isa_ok = cfg!(target_arch = "x86_64") && self.isa >= Isa::Avx2;
        Fused::quantized(ty).filter(|_| isa_ok && dv.is_multiple_of(32))
    }

    /// Whether [`Kernels::pv_q`] with `int16` sums V of format `f` in integers (16-bit
    /// weights, exact `vpdpwssd` sums on AVX-512 VNNI; `vpmaddwd` + `vpaddd` on AVX2 for q4_0
    /// only — the same numbers on both). AVX-512 without VNNI keeps the float kernel, and so
    /// does AVX2 q8_0: its float kernel converts V cheaply and measured 4–5 % faster in
    /// decode at n_kv 4096 and h64 n_kv 32768, equal at h128 n_kv 32768 (`benches/attn.rs`,
    /// Zen 4, one thread).
    pub fn int16_v(&self, f: Fused) -> bool {
        self.vnni || (cfg!(target_arch = "x86_64") && self.isa == Isa::Avx2 && f == Fused::Q4_0)
    }

    /// The format of the int8 decode K kernel for K rows of `ty` (`dk` elements), if this ISA
    /// has it: VNNI on AVX-512, `maddubs` on AVX2 ([`Kernels::qk_i8`]).
    pub fn int8_fmt(&self, ty: GgmlType, dk: usize) -> Option<Fused> {
        Fused::quantized(ty).filter(|&f| self.int8_k(Some(f), dk))
    }

    /// Quantizes `mr` Q rows (`[mr][dk]`) for [`Kernels::qk_i8`]: the quants (`q8`,
    /// `[mr][dk]`), block scales (`qd`) and `off·Σ quants` per block (`qc`, off = 8 for q4_0 K,
    /// 128 for q8_0 K). The quantization is the CPU backend's q8_0 `from_float` (what upstream
    /// applies to Q before its `vec_dot`).
    #[allow(clippy::too_many_arguments)]
    pub fn prep_q8(
        &self,
        f: Fused,
        q: &[f32],
        mr: usize,
        dk: usize,
        q8: &mut [i8],
        qd: &mut [f32],
        qc: &mut [i32],
    ) {
        use crate::quant::{BlockFormat, BlockQ8_0};
        let nb = dk / 32;
        let off = if f == Fused::Q8_0 { 128 } else { 8 };
        let mut blocks = [BlockQ8_0 {
            d: [0; 2],
            qs: [0; 32],
        }; 32];
        for m in 0..mr {
            let mut b0 = 0;
            while b0 < nb {
                let n = (nb - b0).min(blocks.len());
                let x = &q[m * dk + 32 * b0..m * dk + 32 * (b0 + n)];
                BlockQ8_0::quantize_row(x, &mut blocks[..n]);
                for (j, blk) in blocks[..n].iter().enumerate() {
                    let b = b0 + j;
                    qd[m * nb + b] = crate::quant::fp16::f16le_to_f32(blk.d);
                    let mut sum = 0i32;
                    for (o, &v) in q8[m * dk + 32 * b..m * dk + 32 * b + 32]
                        .iter_mut()
                        .zip(&blk.qs)
                    {
                        *o = v;
                        sum += v as i32;
                    }
                    qc[m * nb + b] = off * sum;
                }
                b0 += n;
            }
        }
    }

    /// The second byte of Q for [`Kernels::qk_i8`] under `Precision::F32` (after
    /// [`Kernels::prep_q8`]): `lo = clamp(rint((x − d·q)·128/d), ±127)` per element, so
    /// `x ≈ d·(q + lo/128)` to 2⁻⁸·d ≈ 2⁻¹⁵ of the block's largest |x| (the residual stays
    /// below 0.6·d although `q` was rounded with the unrounded scale), and per block
    /// `qcc = 128·qc + off·Σ lo` (the offset correction of the combined dot
    /// `128·dot(q) + dot(lo)`).
    #[allow(clippy::too_many_arguments)]
    pub fn prep_q8_lo(
        &self,
        f: Fused,
        q: &[f32],
        mr: usize,
        dk: usize,
        q8: &[i8],
        qd: &[f32],
        qc: &[i32],
        lo: &mut [i8],
        qcc: &mut [i32],
    ) {
        let nb = dk / 32;
        let off = if f == Fused::Q8_0 { 128 } else { 8 };
        for m in 0..mr {
            for b in 0..nb {
                let d = qd[m * nb + b];
                let r = if d == 0.0 { 0.0 } else { 128.0 / d };
                let mut sum = 0i32;
                for i in m * dk + 32 * b..m * dk + 32 * b + 32 {
                    let x = ((q[i] - d * q8[i] as f32) * r).clamp(-127.0, 127.0);
                    // round half to even without a libm call: exact for |x| < 2²² (here ≤ 127)
                    const MAGIC: f32 = 12_582_912.0; // 1.5·2²³
                    let l = ((x + MAGIC) - MAGIC) as i8;
                    lo[i] = l;
                    sum += l as i32;
                }
                qcc[m * nb + b] = 128 * qc[m * nb + b] + off * sum;
            }
        }
    }

    /// Whether `Precision::F32` decode of K format `f` runs [`Kernels::qk_i8`] with the second
    /// Q byte of [`Kernels::prep_q8_lo`]: q4_0 and q8_0 (AVX-512 VNNI or AVX2), faster than
    /// the f32 kernel on Zen 4 (`benches/attn.rs`, n_kv 4096–32768: q4_0 ~10 %, q8_0 7–12 %
    /// once the prefetch kept the loads fed — before that, q8_0 waited on memory either way;
    /// q8_0 on AVX2, 1 thread: 15–23 %).
    pub fn int8_k_lo(&self, f: Fused) -> bool {
        self.int8_k(Some(f), 32)
    }

    /// `s[m][t] ≈ q[m]·k_t` for `t ∈ active`, `m < mr` (≤ 16) from [`Kernels::prep_q8`]'s
    /// quantized Q and q8_0/q4_0 K rows at byte `base + t·nb1` of `k` (exact integer block
    /// dots, then `fma(float(dot), dk·dq, s)` block by block).
    #[allow(clippy::too_many_arguments)]
    pub fn qk_i8(
        &self,
        f: Fused,
        q8: &[i8],
        qd: &[f32],
        qc: &[i32],
        k: &[u8],
        base: usize,
        nb1: usize,
        active: &[u8],
        s: &mut [f32],
        mr: usize,
        dk: usize,
        pf: usize,
        lo: Option<(&[i8], &[i32])>,
    ) {
        let nb = dk / 32;
        assert!(self.int8_k(Some(f), dk) && mr <= 16);
        assert!(q8.len() >= mr * dk && qd.len() >= mr * nb && qc.len() >= mr * nb);
        if let Some((l, c)) = lo {
            assert!(l.len() >= mr * dk && c.len() >= mr * nb);
        }
        assert!(s.len() >= mr * TILE_KV);
        assert!(rows_inside(k.len(), base, nb1, active, f.row_bytes(dk)));
        if active.is_empty() {
            return;
        }
        #[cfg(target_arch = "x86_64")]
        {
            use crate::simd::x86::attn as x;
            use crate::simd::x86::attn_avx2 as y;
            let kp = k[base..].as_ptr();
            let (q8p, qdp, qcp, sp) = (q8.as_ptr(), qd.as_ptr(), qc.as_ptr(), s.as_mut_ptr());
            // SAFETY: sizes and row bounds asserted above; `vnni` was detected at run time
            // together with `Isa::Avx512`, else `int8_k` required `Isa::Avx2`, which `simd`
            // checked when the ISA was chosen.
            unsafe {
                if let Some((l, c)) = lo {
                    let (lp, cp) = (l.as_ptr(), c.as_ptr());
                    return match (f, self.vnni) {
                        (Fused::Q8_0, true) => x::qk_i8_avx512::<{ x::FMT_Q8_0 }, true>(
                            q8p, qdp, qcp, kp, nb1, active, sp, mr, dk, pf, lp, cp,
                        ),
                        (_, true) => x::qk_i8_avx512::<{ x::FMT_Q4_0 }, true>(
                            q8p, qdp, qcp, kp, nb1, active, sp, mr, dk, pf, lp, cp,
                        ),
                        (Fused::Q8_0, false) => {
                            x::qk_i8_avx2::<true>(q8p, qdp, kp, nb1, active, sp, mr, dk, pf, lp)
                        }
                        (_, false) => y::qk_q4_avx2::<true>(
                            q8p, qdp, qcp, kp, nb1, active, sp, mr, dk, pf, lp, cp,
                        ),
                    };
                }
                let (lp, cp) = (std::ptr::null(), std::ptr::null());
                match (f, self.vnni) {
                    (Fused::Q8_0, true) => x::qk_i8_avx512::<{ x::FMT_Q8_0 }, false>(
                        q8p, qdp, qcp, kp, nb1, active, sp, mr, dk, pf, lp, cp,
                    ),
                    (_, true) => x::qk_i8_avx512::<{ x::FMT_Q4_0 }, false>(
                        q8p, qdp, qcp, kp, nb1, active, sp, mr, dk, pf, lp, cp,
                    ),
                    (Fused::Q8_0, false) => {
                        x::qk_i8_avx2::<false>(q8p, qdp, kp, nb1, active, sp, mr, dk, pf, lp)
                    }
                    (_, false) => y::qk_q4_avx2::<false>(
                        q8p, qdp, qcp, kp, nb1, active, sp, mr, dk, pf, lp, cp,
                    ),
                }
            }
        }
    }

    /// `s[m][t] = Σ_d q[m][d] · kt[d][t]` for `m < mp` (`mp` a multiple of 4).
    pub fn qk(&self, q: &[f32], kt: &[f32], s: &mut [f32], mp: usize, dk: usize) {
        assert!(
            mp.is_multiple_of(4)
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
                    crate::simd::x86::attn_avx2::qk_tile_avx2(
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

    /// The fused decode format for rows of `d` elements of type `ty`, if this ISA has kernels
    /// for it (AVX-512 and AVX2: f16 with `d % 16 == 0`, q8_0, q4_0).
    pub fn fused(&self, ty: GgmlType, d: usize) -> Option<Fused> {
        let f = match Fused::quantized(ty) {
            Some(q) if d.is_multiple_of(32) => q,
            None if ty == GgmlType::F16 && d.is_multiple_of(16) => Fused::F16,
            _ => return None,
        };
        match self.isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 | Isa::Avx2 => Some(f),
            _ => None,
        }
    }

    /// `s[m][t] = Σ_d q[m][d] · k_t[d]` for `t ∈ active`, `m < mp` (any `mp ≥ 1` on AVX-512; on
    /// AVX2 `q` and `s` must hold `mp` rounded up to 4 rows, the extra ones written), where row
    /// `k_t` (format `f`, `dk` elements) starts at byte `base + t·nb1` of `k`. Bit-identical to
    /// dequantizing the rows and calling [`Kernels::qk_rows`] (which also fills the other
    /// columns). `pf`: prefetch distance in rows (0 = none).
    #[allow(clippy::too_many_arguments)]
    pub fn qk_fused(
        &self,
        f: Fused,
        q: &[f32],
        k: &[u8],
        base: usize,
        nb1: usize,
        active: &[u8],
        s: &mut [f32],
        mp: usize,
        dk: usize,
        pf: usize,
    ) {
        // the AVX2 kernel runs query rows in fours: its padding rows must be there
        let rows = if self.isa == Isa::Avx512 {
            mp
        } else {
            mp.div_ceil(4) * 4
        };
        assert!(mp >= 1 && q.len() >= rows * dk && s.len() >= rows * TILE_KV);
        assert!(self.fused(ty_of(f), dk) == Some(f));
        assert!(rows_inside(k.len(), base, nb1, active, f.row_bytes(dk)));
        if active.is_empty() {
            return;
        }
        #[cfg(target_arch = "x86_64")]
        {
            use crate::simd::x86::attn as x;
            let kp = k[base..].as_ptr();
            let (qp, sp) = (q.as_ptr(), s.as_mut_ptr());
            use crate::simd::x86::attn_avx2 as y;
            // SAFETY: sizes and row bounds asserted above; `fused` only answers for Avx512
            // and Avx2, which `simd` checked when the ISA was chosen.
            unsafe {
                match (f, self.isa) {
                    (Fused::F16, Isa::Avx512) => {
                        x::qk_fused_avx512::<{ x::FMT_F16 }>(qp, kp, nb1, active, sp, mp, dk, pf)
                    }
                    (Fused::Q8_0, Isa::Avx512) => {
                        x::qk_fused_avx512::<{ x::FMT_Q8_0 }>(qp, kp, nb1, active, sp, mp, dk, pf)
                    }
                    (Fused::Q4_0, Isa::Avx512) => {
                        x::qk_fused_avx512::<{ x::FMT_Q4_0 }>(qp, kp, nb1, active, sp, mp, dk, pf)
                    }
                    (Fused::F16, _) => {
                        y::qk_fused_avx2::<{ x::FMT_F16 }>(qp, kp, nb1, active, sp, mp, dk, pf)
                    }
                    (Fused::Q8_0, _) => {
                        y::qk_fused_avx2::<{ x::FMT_Q8_0 }>(qp, kp, nb1, active, sp, mp, dk, pf)
                    }
                    (Fused::Q4_0, _) => {
                        y::qk_fused_avx2::<{ x::FMT_Q4_0 }>(qp, kp, nb1, active, sp, mp, dk, pf)
                    }
                }
            }
        }
    }

    /// `o[m][:dv] += Σ_{t∈active} p[m][t] · v_t` for `m < mr`, row `v_t` (format `f`) at byte
    /// `base + t·nb1` of `v`. Bit-identical to dequantizing the rows and calling
    /// [`Kernels::pv`] (for the rows `m < mr`).
    #[allow(clippy::too_many_arguments)]
    pub fn pv_fused(
        &self,
        f: Fused,
        p: &[f32],
        v: &[u8],
        base: usize,
        nb1: usize,
        active: &[u8],
        o: &mut [f32],
        mr: usize,
        dvp: usize,
        dv: usize,
        pf: usize,
    ) {
        assert!(
            dv <= dvp && dvp.is_multiple_of(16) && p.len() >= mr * TILE_KV && o.len() >= mr * dvp
        );
        assert!(self.fused(ty_of(f), dv) == Some(f));
        assert!(rows_inside(v.len(), base, nb1, active, f.row_bytes(dv)));
        if active.is_empty() {
            return;
        }
        #[cfg(target_arch = "x86_64")]
        {
            use crate::simd::x86::attn as x;
            let vp = v[base..].as_ptr();
            let (pp, op) = (p.as_ptr(), o.as_mut_ptr());
            use crate::simd::x86::attn_avx2 as y;
            // SAFETY: as in `qk_fused`.
            unsafe {
                match (f, self.isa) {
                    (Fused::F16, Isa::Avx512) => x::pv_fused_avx512::<{ x::FMT_F16 }>(
                        pp, vp, nb1, active, op, mr, dvp, dv, pf,
                    ),
                    (Fused::Q8_0, Isa::Avx512) => x::pv_fused_avx512::<{ x::FMT_Q8_0 }>(
                        pp, vp, nb1, active, op, mr, dvp, dv, pf,
                    ),
                    (Fused::Q4_0, Isa::Avx512) => x::pv_fused_avx512::<{ x::FMT_Q4_0 }>(
                        pp, vp, nb1, active, op, mr, dvp, dv, pf,
                    ),
                    (Fused::F16, _) => {
                        y::pv_fused_avx2::<{ x::FMT_F16 }>(pp, vp, nb1, active, op, mr, dvp, dv, pf)
                    }
                    (Fused::Q8_0, _) => y::pv_fused_avx2::<{ x::FMT_Q8_0 }>(
                        pp, vp, nb1, active, op, mr, dvp, dv, pf,
                    ),
                    (Fused::Q4_0, _) => y::pv_fused_avx2::<{ x::FMT_Q4_0 }>(
                        pp, vp, nb1, active, op, mr, dvp, dv, pf,
                    ),
                }
            }
        }
    }

    /// `o[m][:dv] += Σ_{t∈active} (p[m][t]·d_{t,b}) · q_t[:]` for `m < mr` (≤ 16): q8_0/q4_0
    /// V rows at byte `base + t·nb1` of `v` with the block scales `d` folded into the weights
    /// (formed in the scratch `w`, `[dv/32][mr][TILE_KV]`), the integer values `q` exact.
    /// Other formats: [`Kernels::pv_fused`].
    #[allow(clippy::too_many_arguments)]
    pub fn pv_q(
        &self,
        f: Fused,
        p: &[f32],
        v: &[u8],
        base: usize,
        nb1: usize,
        active: &[u8],
        ws: &mut WeightScratch,
        o: &mut [f32],
        mr: usize,
        dvp: usize,
        dv: usize,
        pf: usize,
        int16: bool,
    ) {
        assert!(self.pv_q_fmt(ty_of(f), dv) == Some(f));
        assert!(dv <= dvp && dvp.is_multiple_of(16) && mr <= 16);
        let nbm = dv / 32 * mr;
        assert!(p.len() >= mr * TILE_KV && o.len() >= mr * dvp);
        assert!(
            ws.w.len() >= nbm * TILE_KV
                && ws.wq.len() >= nbm * TILE_KV
                && ws.sig.len() >= nbm
                && ws.sum.len() >= nbm
        );

        assert!(rows_inside(v.len(), base, nb1, active, f.row_bytes(dv)));
        if active.is_empty() {
            return;
        }
        #[cfg(target_arch = "x86_64")]
        {
            use crate::simd::x86::attn as x;
            use crate::simd::x86::attn_avx2 as y;
            let vp = v[base..].as_ptr();
            let (pp, wp, op) = (p.as_ptr(), ws.w.as_mut_ptr(), o.as_mut_ptr());
            let (wqp, sgp, swp) = (ws.wq.as_mut_ptr(), ws.sig.as_mut_ptr(), ws.sum.as_mut_ptr());
            // SAFETY: sizes, indices and row bounds asserted above; `pv_q_fmt` only answers
            // for Avx512 / Avx2, which `simd` checked when the ISA was chosen; `vnni` was
            // detected with Avx512.
            unsafe {
                if int16
                    && self.int16_v(f)
                    && match (f, self.vnni) {
                        (Fused::Q8_0, true) => x::pv_i16_avx512::<{ x::FMT_Q8_0 }>(
                            pp, vp, nb1, active, wqp, sgp, swp, op, mr, dvp, dv, pf,
                        ),
                        (_, true) => x::pv_i16_avx512::<{ x::FMT_Q4_0 }>(
                            pp, vp, nb1, active, wqp, sgp, swp, op, mr, dvp, dv, pf,
                        ),
                        // AVX2: q4_0 only (`int16_v`)
                        (_, false) => {
                            y::pv_i16_avx2(pp, vp, nb1, active, wqp, sgp, swp, op, mr, dvp, dv, pf)
                        }
                    }
                {
                    return;
                }
                match (f, self.isa) {
                    (Fused::Q8_0, Isa::Avx512) => x::pv_q_avx512::<{ x::FMT_Q8_0 }>(
                        pp, vp, nb1, active, wp, op, mr, dvp, dv, pf,
                    ),
                    (_, Isa::Avx512) => x::pv_q_avx512::<{ x::FMT_Q4_0 }>(
                        pp, vp, nb1, active, wp, op, mr, dvp, dv, pf,
                    ),
                    (Fused::Q8_0, _) => y::pv_q_avx2::<{ x::FMT_Q8_0 }>(
                        pp, vp, nb1, active, wp, op, mr, dvp, dv, pf,
                    ),
                    _ => y::pv_q_avx2::<{ x::FMT_Q4_0 }>(
                        pp, vp, nb1, active, wp, op, mr, dvp, dv, pf,
                    ),
                }
            }
        }
    }

    /// `s[m][t] = Σ_d q[m][d] · k[t][d]` with K row-major `[T][dk]` (the decode path: few
    /// rows, no transposed packing). `mp` a multiple of 4.
    pub fn qk_rows(&self, q: &[f32], k: &[f32], s: &mut [f32], mp: usize, dk: usize) {
        assert!(
            mp.is_multiple_of(4)
                && q.len() >= mp * dk
                && k.len() >= dk * TILE_KV
                && s.len() >= mp * TILE_KV
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

    /// `kt[d][t] = k[t][d]` for the `[TILE_KV][dk]` tile `k` (the prefill K tile).
    pub fn transpose(&self, k: &[f32], kt: &mut [f32], dk: usize) {
        assert!(k.len() >= TILE_KV * dk && kt.len() >= TILE_KV * dk);
        #[cfg(target_arch = "x86_64")]
        match self.isa {
            // SAFETY: sizes asserted above; the ISA was checked by `simd` when chosen.
            Isa::Avx512 => {
                return unsafe {
                    crate::simd::x86::attn::transpose_tile_avx512(k.as_ptr(), kt.as_mut_ptr(), dk)
                }
            }
            Isa::Avx2 => {
                return unsafe {
                    crate::simd::x86::attn_avx2::transpose_tile_avx2(
                        k.as_ptr(),
                        kt.as_mut_ptr(),
                        dk,
                    )
                }
            }
            Isa::Scalar => {}
        }
        for (t, row) in k.chunks_exact(dk).take(TILE_KV).enumerate() {
            for (d, &x) in row.iter().enumerate() {
                kt[d * TILE_KV + t] = x;
            }
        }
    }

    /// `o[m][:] += Σ_{t in active} p[m][t] · vt[t][:]` for `m < mp` (`mp` a multiple of 4,
    /// `dvp` a multiple of 16).
    pub fn pv(&self, p: &[f32], vt: &[f32], o: &mut [f32], mp: usize, dvp: usize, active: &[u8]) {
        assert!(mp.is_multiple_of(4) && dvp.is_multiple_of(16));
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
                    crate::simd::x86::attn_avx2::pv_tile_avx2(
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

    /// One mask row of a tile: `out[t] = slope·mask[t]` for the `tl = src.len()/2` f16 values
    /// of `src` (`tl ≤ TILE_KV`), `-inf` for `t ≥ tl`; returns the bitmasks of the columns
    /// `t < tl` that are live (`≠ -inf`, NaN included) and hidden (`= -inf`).
    pub fn mask_tile(&self, src: &[u8], slope: f32, out: &mut [f32]) -> (u64, u64) {
        let tl = src.len() / 2;
        assert!(tl <= TILE_KV && out.len() >= TILE_KV);
        #[cfg(target_arch = "x86_64")]
        {
            use crate::simd::x86::attn::{mask_tile_avx2, mask_tile_avx512};
            let f = match self.isa {
                Isa::Avx512 => Some(mask_tile_avx512 as unsafe fn(_, _, _, _) -> _),
                Isa::Avx2 => Some(mask_tile_avx2 as unsafe fn(_, _, _, _) -> _),
                Isa::Scalar => None,
            };
            if let Some(f) = f {
                // SAFETY: `src` holds `tl` f16 values, `out` TILE_KV floats; the ISA was
                // detected by `simd::isa()`.
                return unsafe { f(src.as_ptr(), tl, slope, out.as_mut_ptr()) };
            }
        }
        let (mut live, mut hid) = (0u64, 0u64);
        for (t, (h, x)) in src.chunks_exact(2).zip(out.iter_mut()).enumerate() {
            let v = slope * half::f16::from_bits(u16::from_le_bytes([h[0], h[1]])).to_f32();
            *x = v;
            live |= u64::from(v != f32::NEG_INFINITY) << t;
            hid |= u64::from(v == f32::NEG_INFINITY) << t;
        }
        out[tl..TILE_KV].fill(f32::NEG_INFINITY);
        (live, hid)
    }

    /// One tile's online-softmax step for the rows `0..mr` of `s` (`[mr][TILE_KV]`), row `m`
    /// against the mask row `mi[m]` of `mv`: [`Kernels::scores`], the running max `mrow[m]`
    /// and sum `srow[m]` updated, `s[m]` replaced by the probabilities ([`Kernels::exp_sum`];
    /// zeros for a row with no live column); `ms[m]` is the factor row `m`'s earlier output
    /// must be scaled by (exactly 1 when its max did not grow).
    #[allow(clippy::too_many_arguments)]
    pub fn softmax(
        &self,
        s: &mut [f32],
        mv: &[f32],
        mi: &[u32],
        scale: f32,
        softcap: f32,
        mrow: &mut [f32],
        srow: &mut [f32],
        ms: &mut [f32],
    ) {
        let mr = mi.len();
        assert!(s.len() >= mr * TILE_KV && mrow.len() >= mr && srow.len() >= mr);
        assert!(ms.len() >= mr && mi.iter().all(|&i| (i as usize + 1) * TILE_KV <= mv.len()));
        #[cfg(target_arch = "x86_64")]
        {
            use crate::simd::x86::attn::{softmax_tile_avx2, softmax_tile_avx512};
            let f = match self.isa {
                Isa::Avx512 => Some(softmax_tile_avx512 as unsafe fn(_, _, _, _, _, _, _, _, _)),
                Isa::Avx2 => Some(softmax_tile_avx2 as unsafe fn(_, _, _, _, _, _, _, _, _)),
                Isa::Scalar => None,
            };
            if let Some(f) = f {
                // SAFETY: sizes checked above; the ISA was detected by `simd::isa()`.
                unsafe {
                    f(
                        s.as_mut_ptr(),
                        mv.as_ptr(),
                        mi.as_ptr(),
                        mr,
                        scale,
                        softcap,
                        mrow.as_mut_ptr(),
                        srow.as_mut_ptr(),
                        ms.as_mut_ptr(),
                    )
                };
                return;
            }
        }
        for (m, &i) in mi.iter().enumerate() {
            let i = i as usize;
            let srow_m = &mut s[m * TILE_KV..(m + 1) * TILE_KV];
            let tmax = self.scores(srow_m, &mv[i * TILE_KV..(i + 1) * TILE_KV], scale, softcap);
            ms[m] = 1.0;
            if tmax == f32::NEG_INFINITY {
                srow_m.fill(0.0);
                continue;
            }
            let mold = mrow[m];
            let mnew = mold.max(tmax);
            if mnew > mold {
                ms[m] = (mold - mnew).exp();
                srow[m] *= ms[m];
            }
            mrow[m] = mnew;
            srow[m] += self.exp_sum(srow_m, mnew);
        }
    }

    /// Scores of one row: `s[t] = mv[t] == -inf ? -inf : f(s[t]) + mv[t]` with
    /// `f(x) = x·scale` or, with a soft cap, `softcap·tanh(x·scale)`; returns the row max.
    /// The SIMD variants compute tanh with a polynomial (|x| < 0.625) or from the vector exp
    /// (absolute error below 2.5e-7; the scalar variant uses libm's `tanhf`).
    pub fn scores(&self, s: &mut [f32], mv: &[f32], scale: f32, softcap: f32) -> f32 {
        assert!(s.len() == TILE_KV && mv.len() == TILE_KV);
        if softcap != 0.0 {
            #[cfg(target_arch = "x86_64")]
            match self.isa {
                // SAFETY: both rows have TILE_KV elements.
                Isa::Avx512 => {
                    return unsafe {
                        crate::simd::x86::attn::scores_softcap_avx512(
                            s.as_mut_ptr(),
                            mv.as_ptr(),
                            scale,
                            softcap,
                        )
                    }
                }
                Isa::Avx2 => {
                    return unsafe {
                        crate::simd::x86::attn::scores_softcap_avx2(
                            s.as_mut_ptr(),
                            mv.as_ptr(),
                            scale,
                            softcap,
                        )
                    }
                }
                Isa::Scalar => {}
            }
        } else {
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

fn ty_of(f: Fused) -> GgmlType {
    match f {
        Fused::F16 => GgmlType::F16,
        Fused::Q8_0 => GgmlType::Q8_0,
        Fused::Q4_0 => GgmlType::Q4_0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attn::deq;
    use crate::simd;

    fn lcg(s: &mut u64) -> u32 {
        *s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (*s >> 33) as u32
    }

    /// The fused decode kernels compute bit for bit what dequantize + `qk_rows` / `pv` do.
    #[test]
    fn fused_equals_dequantized_tiles() {
        let mut seed = 0x5eed_u64;
        for isa in simd::available() {
            let kn = Kernels::new(isa);
            for ty in [GgmlType::F16, GgmlType::Q8_0, GgmlType::Q4_0] {
                for d in [32usize, 48, 64, 96, 128, 256] {
                    let Some(f) = kn.fused(ty, d) else { continue };
                    let rb = ty.row_bytes(d).unwrap();
                    let nb1 = rb + 2 * (lcg(&mut seed) as usize % 40);
                    // rows from real quantization of random floats
                    let mut data = vec![0u8; TILE_KV * nb1];
                    for t in 0..TILE_KV {
                        let x: Vec<f32> = (0..d)
                            .map(|_| (lcg(&mut seed) as f32 / u32::MAX as f32 - 0.5) * 4.0)
                            .collect();
                        crate::quant::format(ty)
                            .unwrap()
                            .quantize_row(&x, &mut data[t * nb1..t * nb1 + rb])
                            .unwrap();
                    }
                    let deq = deq::select(ty).unwrap();
                    let mut tile = vec![0f32; TILE_KV * d];
                    for t in 0..TILE_KV {
                        deq(&data[t * nb1..], &mut tile[t * d..(t + 1) * d]);
                    }
                    let active: Vec<u8> = (0..TILE_KV as u8)
                        .filter(|_| !lcg(&mut seed).is_multiple_of(5))
                        .collect();
                    for mp in [4usize, 8, 12] {
                        let q: Vec<f32> = (0..mp * d)
                            .map(|_| lcg(&mut seed) as f32 / u32::MAX as f32 - 0.5)
                            .collect();
                        let mut s0 = vec![0f32; mp * TILE_KV];
                        let mut s1 = vec![0f32; mp * TILE_KV];
                        simd::with_isa(isa, || kn.qk_rows(&q, &tile, &mut s0, mp, d)).unwrap();
                        simd::with_isa(isa, || {
                            kn.qk_fused(f, &q, &data, 0, nb1, &active, &mut s1, mp, d, 4)
                        })
                        .unwrap();
                        for m in 0..mp {
                            for &t in &active {
                                let i = m * TILE_KV + t as usize;
                                assert_eq!(s0[i].to_bits(), s1[i].to_bits(), "{ty} d={d} qk");
                            }
                        }
                        // V: the same rows as V, dvp = d rounded up to 16
                        let dvp = d.div_ceil(16) * 16;
                        let mut vt = vec![0f32; TILE_KV * dvp];
                        for t in 0..TILE_KV {
                            vt[t * dvp..t * dvp + d].copy_from_slice(&tile[t * d..(t + 1) * d]);
                        }
                        let o0: Vec<f32> = (0..mp * dvp).map(|i| (i % 7) as f32 * 0.25).collect();
                        let (mut oa, mut ob) = (o0.clone(), o0);
                        for mr in 1..=mp {
                            simd::with_isa(isa, || kn.pv(&s1, &vt, &mut oa, mp, dvp, &active))
                                .unwrap();
                            simd::with_isa(isa, || {
                                kn.pv_fused(f, &s1, &data, 0, nb1, &active, &mut ob, mr, dvp, d, 3)
                            })
                            .unwrap();
                            for i in 0..mr * dvp {
                                assert_eq!(oa[i].to_bits(), ob[i].to_bits(), "{ty} d={d} pv");
                            }
                            ob[..].copy_from_slice(&oa);
                        }
                    }
                }
            }
        }
    }

    /// The int8 K kernels (AVX-512 VNNI, AVX2) compute exactly `Σ_b fma(float(Σ k_q·q_q),
    /// dk·dq, ·)` per row.
    #[test]
    fn int8_k_exact_integer_dots() {
        let mut ran = 0;
        for isa in simd::available() {
            let kn = Kernels::new(isa);
            if !kn.int8_k(Some(Fused::Q8_0), 32) {
                eprintln!("int8_k_exact_integer_dots: no int8 K kernel for {isa:?}");
                continue;
            }
            ran += 1;
            simd::with_isa(isa, || int8_k_exact_for(&kn)).unwrap();
        }
        #[cfg(target_arch = "x86_64")]
        if simd::available().contains(&Isa::Avx2) {
            assert!(ran > 0, "AVX2 is available but no int8 K kernel ran");
        }
    }

    fn int8_k_exact_for(kn: &Kernels) {
        let mut seed = 0x1e8_u64;
        for (ty, f) in [(GgmlType::Q8_0, Fused::Q8_0), (GgmlType::Q4_0, Fused::Q4_0)] {
            for d in [32usize, 64, 128, 256] {
                let rb = ty.row_bytes(d).unwrap();
                let nb1 = rb + lcg(&mut seed) as usize % 50;
                let mut data = vec![0u8; TILE_KV * nb1];
                let mut deqd = vec![0f32; TILE_KV * d];
                for t in 0..TILE_KV {
                    let x: Vec<f32> = (0..d)
                        .map(|_| (lcg(&mut seed) as f32 / u32::MAX as f32 - 0.5) * 4.0)
                        .collect();
                    crate::quant::format(ty)
                        .unwrap()
                        .quantize_row(&x, &mut data[t * nb1..t * nb1 + rb])
                        .unwrap();
                    deq::select(ty).unwrap()(&data[t * nb1..], &mut deqd[t * d..(t + 1) * d]);
                }
                for (na, step) in [(64usize, 1usize), (37, 1), (20, 3), (5, 7)] {
                    let active: Vec<u8> = (0..na).map(|i| ((i * step) % TILE_KV) as u8).collect();
                    for mr in [1usize, 3, 4, 7, 12] {
                        let q: Vec<f32> = (0..mr * d)
                            .map(|_| lcg(&mut seed) as f32 / u32::MAX as f32 - 0.5)
                            .collect();
                        let nb = d / 32;
                        let (mut q8, mut qd, mut qc) =
                            (vec![0i8; mr * d], vec![0f32; mr * nb], vec![0i32; mr * nb]);
                        kn.prep_q8(f, &q, mr, d, &mut q8, &mut qd, &mut qc);
                        let mut s = vec![f32::NAN; mr * TILE_KV];
                        kn.qk_i8(
                            f, &q8, &qd, &qc, &data, 0, nb1, &active, &mut s, mr, d, 2, None,
                        );
                        // the second Q byte (Precision::F32): 128·dot(q) + dot(lo), scale /128
                        let (mut lo, mut qcc) = (vec![0i8; mr * d], vec![0i32; mr * nb]);
                        let mut s_lo = vec![f32::NAN; mr * TILE_KV];
                        {
                            kn.prep_q8_lo(f, &q, mr, d, &q8, &qd, &qc, &mut lo, &mut qcc);
                            let l = Some((&lo[..], &qcc[..]));
                            kn.qk_i8(
                                f, &q8, &qd, &qc, &data, 0, nb1, &active, &mut s_lo, mr, d, 2, l,
                            );
                        }
                        for m in 0..mr {
                            for &t in &active {
                                let t = t as usize;
                                let mut acc = 0f32;
                                let mut acc_lo = 0f32;
                                for b in 0..nb {
                                    let row = &data[t * nb1..];
                                    let bs = rb / nb;
                                    let dk = crate::quant::fp16::f16le_to_f32([
                                        row[bs * b],
                                        row[bs * b + 1],
                                    ]);
                                    // integer values of K: dequantized / d (exact)
                                    let mut dot = 0i32;
                                    let mut dot_lo = 0i32;
                                    for i in 0..32 {
                                        let kv = deqd[t * d + 32 * b + i];
                                        let ki = if dk == 0.0 {
                                            if ty == GgmlType::Q8_0 {
                                                row[bs * b + 2 + i] as i8 as i32
                                            } else {
                                                let by = row[bs * b + 2 + i % 16];
                                                (if i < 16 { by & 15 } else { by >> 4 }) as i32 - 8
                                            }
                                        } else {
                                            (kv / dk) as i32
                                        };
                                        dot += ki * q8[m * d + 32 * b + i] as i32;
                                        dot_lo += ki * lo[m * d + 32 * b + i] as i32;
                                    }
                                    acc = (dot as f32).mul_add(dk * qd[m * nb + b], acc);
                                    let sc = dk * (qd[m * nb + b] * (1.0 / 128.0));
                                    acc_lo = ((128 * dot + dot_lo) as f32).mul_add(sc, acc_lo);
                                }
                                let got = s[m * TILE_KV + t];
                                assert_eq!(
                                    got.to_bits(),
                                    acc.to_bits(),
                                    "{ty} {:?} d={d} m={m} t={t}",
                                    kn.isa
                                );
                                {
                                    let got = s_lo[m * TILE_KV + t];
                                    assert_eq!(got.to_bits(), acc_lo.to_bits(), "lo {ty} d={d}");
                                    // and q·k to ~2⁻¹⁵ (the exact dot of Q with the row)
                                    let exact: f32 =
                                        (0..d).map(|i| q[m * d + i] * deqd[t * d + i]).sum();
                                    let qmax = q[m * d..(m + 1) * d]
                                        .iter()
                                        .fold(0f32, |a, x| a.max(x.abs()));
                                    let kabs: f32 =
                                        deqd[t * d..(t + 1) * d].iter().map(|x| x.abs()).sum();
                                    assert!(
                                        (got - exact).abs() <= 4e-5 * qmax * kabs + 1e-6,
                                        "lo {ty} d={d}: {got} vs {exact}"
                                    );
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    /// The quantized V kernel computes `fma(p·d, q, o)` per element, in `active` order, or with
    /// AVX-512 VNNI (or AVX2 for q4_0) the 16-bit integer weights of `pv_i16_avx512` /
    /// `pv_i16_avx2`
    /// (scale `max p · max |d|`, exact integer sums, one fma).
    #[test]
    fn pv_q_scaled_weights() {
        let mut ran = 0;
        for isa in simd::available() {
            let kn = Kernels::new(isa);
            if kn.pv_q_fmt(GgmlType::Q8_0, 32).is_none() {
                eprintln!("pv_q_scaled_weights: no quantized V kernel for {isa:?}");
                continue;
            }
            ran += 1;
            simd::with_isa(isa, || pv_q_scaled_weights_for(&kn)).unwrap();
        }
        #[cfg(target_arch = "x86_64")]
        if simd::available().contains(&Isa::Avx2) {
            assert!(ran > 0, "AVX2 is available but no quantized V kernel ran");
        }
    }

    /// A non-finite probability or V block scale in a tile (the whole-tile weights of the
    /// integer kernels check 64 at once, the others lane by lane) sends the tile to the float
    /// kernel: the same bits as asking for the float kernel, every ISA.
    #[test]
    fn pv_q_non_finite_tiles_take_the_float_kernel() {
        let mut seed = 0x5eed_u64;
        for isa in simd::available() {
            let kn = Kernels::new(isa);
            for (ty, f) in [(GgmlType::Q8_0, Fused::Q8_0), (GgmlType::Q4_0, Fused::Q4_0)] {
                let d = 64;
                if kn.pv_q_fmt(ty, d) != Some(f) {
                    continue;
                }
                let rb = ty.row_bytes(d).unwrap();
                let nb1 = rb + 6;
                let bs = rb / (d / 32);
                for (bad, active) in [
                    (0usize, (0..64u8).collect::<Vec<u8>>()),
                    (1, (0..64u8).collect()),
                    (2, (0..64u8).collect()),
                    (0, (0..40u8).map(|t| t + 3).collect()),
                    (1, (0..40u8).map(|t| t + 3).collect()),
                ] {
                    let mut data = vec![0u8; TILE_KV * nb1];
                    for t in 0..TILE_KV {
                        let x: Vec<f32> = (0..d)
                            .map(|_| lcg(&mut seed) as f32 / u32::MAX as f32 - 0.5)
                            .collect();
                        crate::quant::format(ty)
                            .unwrap()
                            .quantize_row(&x, &mut data[t * nb1..t * nb1 + rb])
                            .unwrap();
                    }
                    let mr = 3;
                    let mut p: Vec<f32> = (0..mr * TILE_KV)
                        .map(|_| lcg(&mut seed) as f32 / u32::MAX as f32)
                        .collect();
                    let t = active[active.len() / 2] as usize;
                    match bad {
                        // a NaN probability, an infinite V scale (f16 0x7c00) in block 1
                        0 => p[TILE_KV + t] = f32::NAN,
                        1 => data[t * nb1 + bs..t * nb1 + bs + 2].copy_from_slice(&[0, 0x7c]),
                        _ => p[2 * TILE_KV + t] = f32::INFINITY,
                    }
                    let run = |int16: bool| {
                        let mut o = vec![0.5f32; mr * d];
                        let mut ws = WeightScratch::new(mr, d / 32);
                        simd::with_isa(isa, || {
                            kn.pv_q(
                                f, &p, &data, 0, nb1, &active, &mut ws, &mut o, mr, d, d, 1, int16,
                            )
                        })
                        .unwrap();
                        o
                    };
                    let (a, b) = (run(true), run(false));
                    assert!(
                        a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()),
                        "{isa:?} {ty} case {bad}, {} active rows",
                        active.len()
                    );
                    assert!(a.iter().any(|x| !x.is_finite()), "{isa:?} {ty} case {bad}");
                }
            }
        }
    }

    fn pv_q_scaled_weights_for(kn: &Kernels) {
        let mut seed = 0x7e_u64;
        for (ty, f) in [(GgmlType::Q8_0, Fused::Q8_0), (GgmlType::Q4_0, Fused::Q4_0)] {
            for d in [32usize, 64, 96, 128, 256] {
                if kn.pv_q_fmt(ty, d) != Some(f) {
                    continue;
                }
                let rb = ty.row_bytes(d).unwrap();
                let nb1 = rb + lcg(&mut seed) as usize % 50;
                let mut data = vec![0u8; TILE_KV * nb1];
                let mut deqd = vec![0f32; TILE_KV * d];
                for t in 0..TILE_KV {
                    let x: Vec<f32> = (0..d)
                        .map(|_| (lcg(&mut seed) as f32 / u32::MAX as f32 - 0.5) * 4.0)
                        .collect();
                    crate::quant::format(ty)
                        .unwrap()
                        .quantize_row(&x, &mut data[t * nb1..t * nb1 + rb])
                        .unwrap();
                    deq::select(ty).unwrap()(&data[t * nb1..], &mut deqd[t * d..(t + 1) * d]);
                }
                let nb = d / 32;
                let bs = rb / nb;
                for (na, step) in [(64usize, 1usize), (37, 1), (20, 3), (5, 7)] {
                    let active: Vec<u8> = (0..na).map(|i| ((i * step) % TILE_KV) as u8).collect();
                    // (query rows, int16 asked, probability scale): 0 gives all-zero
                    // weights, 1e-35 weights below 2⁻¹⁰⁰ (the integer kernel refuses the tile)
                    for (mr, int16, ps) in [
                        (1usize, true, 1f32),
                        (3, true, 1.0),
                        (4, false, 1.0),
                        (6, true, 1.0),
                        (9, true, 1.0),
                        (3, false, 1.0),
                        (4, true, 0.0),
                        (5, true, 1e-35),
                    ] {
                        let p: Vec<f32> = (0..mr * TILE_KV)
                            .map(|_| ps * (lcg(&mut seed) as f32 / u32::MAX as f32))
                            .collect();
                        let dvp = d;
                        let mut o: Vec<f32> = (0..mr * dvp).map(|i| (i % 5) as f32).collect();
                        let mut want = o.clone();
                        let mut ws = WeightScratch::new(mr, nb);
                        kn.pv_q(
                            f, &p, &data, 0, nb1, &active, &mut ws, &mut o, mr, dvp, d, 1, int16,
                        );
                        let scale = |row: &[u8], b: usize| {
                            crate::quant::fp16::f16le_to_f32([row[bs * b], row[bs * b + 1]])
                        };
                        let qv = |row: &[u8], c: usize| {
                            let (b, i) = (c / 32, c % 32);
                            if ty == GgmlType::Q8_0 {
                                row[bs * b + 2 + i] as i8 as i32
                            } else {
                                let by = row[bs * b + 2 + i % 16];
                                (if i < 16 { by & 15 } else { by >> 4 }) as i32 - 8
                            }
                        };
                        let _ = &deqd;
                        // the integer kernel's scale M = max p · max |d| per (block, row):
                        // it takes the tile unless some 0 < M < 2⁻¹⁰⁰
                        let big = |m: usize, b: usize| {
                            let pmax = active
                                .iter()
                                .fold(0f32, |a, &t| a.max(p[m * TILE_KV + t as usize]));
                            let dmax = active.iter().fold(0f32, |a, &t| {
                                a.max(scale(&data[t as usize * nb1..], b).abs())
                            });
                            pmax * dmax
                        };
                        let tiny = (0..mr).any(|m| {
                            (0..nb).any(|b| big(m, b) > 0.0 && big(m, b) < 2f32.powi(-100))
                        });
                        assert_eq!(tiny, ps == 1e-35, "{ty} d={d} mr={mr}");
                        for m in 0..mr {
                            if kn.int16_v(f) && int16 && !tiny {
                                // 16-bit weights per (block, row), integer sums, one fma
                                for b in 0..nb {
                                    let w: Vec<f32> = active
                                        .iter()
                                        .map(|&t| {
                                            let t = t as usize;
                                            p[m * TILE_KV + t] * scale(&data[t * nb1..], b)
                                        })
                                        .collect();
                                    let big = big(m, b);
                                    let r = 32767.0 / big;
                                    let wq: Vec<i32> = w
                                        .iter()
                                        .map(|x| (x * r).round_ties_even() as i32)
                                        .collect();
                                    for c in 32 * b..32 * b + 32 {
                                        let acc: i32 = active
                                            .iter()
                                            .zip(&wq)
                                            .map(|(&t, wi)| wi * qv(&data[t as usize * nb1..], c))
                                            .sum();
                                        want[m * dvp + c] =
                                            (acc as f32).mul_add(big / 32767.0, want[m * dvp + c]);
                                    }
                                }
                                continue;
                            }
                            for &t in &active {
                                let t = t as usize;
                                let row = &data[t * nb1..];
                                for c in 0..d {
                                    let wv = p[m * TILE_KV + t] * scale(row, c / 32);
                                    want[m * dvp + c] =
                                        wv.mul_add(qv(row, c) as f32, want[m * dvp + c]);
                                }
                            }
                        }
                        for i in 0..mr * dvp {
                            assert_eq!(
                                o[i].to_bits(),
                                want[i].to_bits(),
                                "{ty} d={d} mr={mr} i={i}"
                            );
                        }
                    }
                }
            }
        }
    }

    /// The prefill tile GEMMs give the same bits on every ISA (one FMA chain per element, over
    /// `d` for QK and over `active` for PV, whatever the register blocking).
    #[test]
    fn tile_gemms_same_bits_on_every_isa() {
        let mut seed = 0x9e_u64;
        let mut rnd = |n: usize| -> Vec<f32> {
            (0..n)
                .map(|_| lcg(&mut seed) as f32 / u32::MAX as f32 - 0.5)
                .collect()
        };
        let scalar = Kernels::new(Isa::Scalar);
        for (mp, dk, dvp) in [
            (4usize, 64usize, 64usize),
            (8, 40, 48),
            (12, 80, 80),
            (28, 128, 128),
            (64, 64, 144),
        ] {
            let q = rnd(mp * dk);
            let kt = rnd(dk * TILE_KV);
            let p = rnd(mp * TILE_KV);
            let vt = rnd(TILE_KV * dvp);
            let o0 = rnd(mp * dvp);
            let active: Vec<u8> = (0..TILE_KV as u8).filter(|t| t % 7 != 3).collect();
            let mut s0 = vec![0f32; mp * TILE_KV];
            scalar.qk(&q, &kt, &mut s0, mp, dk);
            let mut oa = o0.clone();
            scalar.pv(&p, &vt, &mut oa, mp, dvp, &active);
            for isa in simd::available() {
                let kn = Kernels::new(isa);
                let mut s1 = vec![f32::NAN; mp * TILE_KV];
                kn.qk(&q, &kt, &mut s1, mp, dk);
                let mut ob = o0.clone();
                kn.pv(&p, &vt, &mut ob, mp, dvp, &active);
                for (i, (a, b)) in s0.iter().zip(&s1).enumerate() {
                    assert_eq!(a.to_bits(), b.to_bits(), "{isa:?} qk mp={mp} dk={dk} i={i}");
                }
                for (i, (a, b)) in oa.iter().zip(&ob).enumerate() {
                    assert_eq!(
                        a.to_bits(),
                        b.to_bits(),
                        "{isa:?} pv mp={mp} dvp={dvp} i={i}"
                    );
                }
            }
        }
    }

    #[test]
    fn transpose_tile() {
        for isa in simd::available() {
            let kn = Kernels::new(isa);
            for dk in [1usize, 8, 16, 40, 64, 72, 128, 576] {
                let k: Vec<f32> = (0..TILE_KV * dk).map(|i| i as f32).collect();
                let mut kt = vec![f32::NAN; TILE_KV * dk];
                kn.transpose(&k, &mut kt, dk);
                for t in 0..TILE_KV {
                    for d in 0..dk {
                        assert_eq!(kt[d * TILE_KV + t], k[t * dk + d], "{isa:?} dk={dk}");
                    }
                }
            }
        }
    }

    /// The vector soft cap (tanh) against f64, on a sweep of magnitudes, masks and signs.
    #[test]
    fn softcap_scores() {
        for isa in simd::available() {
            let kn = Kernels::new(isa);
            let mut seed = 0x7a_u64;
            for round in 0..200 {
                let e = (round % 20) as f32 - 14.0; // magnitudes 2^-14 .. 2^5
                let mut s: Vec<f32> = (0..TILE_KV)
                    .map(|_| (lcg(&mut seed) as f32 / u32::MAX as f32 - 0.5) * 2f32.powf(e + 1.0))
                    .collect();
                if round == 7 {
                    s[3] = 0.0;
                    s[4] = -0.0;
                    s[5] = 1e30;
                    s[6] = -1e30;
                }
                let mv: Vec<f32> = (0..TILE_KV)
                    .map(|t| {
                        if t % 9 == 4 {
                            f32::NEG_INFINITY
                        } else {
                            -(t as f32) * 0.01
                        }
                    })
                    .collect();
                let (scale, cap) = (0.7f32, 30.0f32);
                let want: Vec<f64> = s
                    .iter()
                    .zip(&mv)
                    .map(|(&x, &m)| {
                        if m == f32::NEG_INFINITY {
                            f64::NEG_INFINITY
                        } else {
                            cap as f64 * ((x * scale) as f64).tanh() + m as f64
                        }
                    })
                    .collect();
                let mut got = s.clone();
                let mx = kn.scores(&mut got, &mv, scale, cap);
                let mut wmx = f32::NEG_INFINITY;
                for t in 0..TILE_KV {
                    if want[t] == f64::NEG_INFINITY {
                        assert_eq!(got[t], f32::NEG_INFINITY);
                        continue;
                    }
                    let err = (got[t] as f64 - want[t]).abs();
                    assert!(
                        err <= cap as f64 * 2.5e-7 + (want[t].abs() * 1.2e-7),
                        "{isa:?} x={} got {} want {} err {err:e}",
                        s[t],
                        got[t],
                        want[t]
                    );
                    wmx = wmx.max(got[t]);
                }
                assert_eq!(mx, wmx);
            }
        }
    }

    /// `mask_tile` on every ISA against a scalar model: f16 values incl. ±Inf, NaN, ±0 and
    /// subnormals, every tile length edge, slopes 1, 0.25 and 0 (0·-inf = NaN: live).
    #[test]
    fn mask_tile_bits() {
        let mut seed = 0x3a5c_u64;
        let special = [
            0xfc00u16, 0x7c00, 0x7e00, 0xfe01, 0x0000, 0x8000, 0x0001, 0x83ff,
        ];
        for isa in simd::available() {
            let kn = Kernels::new(isa);
            for tl in [0usize, 1, 7, 8, 15, 16, 17, 31, 33, 48, 63, 64] {
                for slope in [1.0f32, 0.25, 0.0] {
                    for round in 0..20 {
                        let h: Vec<u16> = (0..tl)
                            .map(|i| match (lcg(&mut seed) as usize + i + round) % 4 {
                                0 => special[lcg(&mut seed) as usize % special.len()],
                                1 => 0xfc00, // -inf: the causal mask
                                _ => lcg(&mut seed) as u16,
                            })
                            .collect();
                        let src: Vec<u8> = h.iter().flat_map(|x| x.to_le_bytes()).collect();
                        let mut out = vec![1.5f32; TILE_KV];
                        let (live, hid) = kn.mask_tile(&src, slope, &mut out);
                        let (mut wl, mut wh) = (0u64, 0u64);
                        for t in 0..TILE_KV {
                            let want = if t < tl {
                                slope * half::f16::from_bits(h[t]).to_f32()
                            } else {
                                f32::NEG_INFINITY
                            };
                            let ok = want.to_bits() == out[t].to_bits()
                                || (want.is_nan() && out[t].is_nan());
                            assert!(ok, "{isa:?} tl={tl} t={t}: {} vs {want}", out[t]);
                            if t < tl {
                                wl |= u64::from(want != f32::NEG_INFINITY) << t;
                                wh |= u64::from(want == f32::NEG_INFINITY) << t;
                            }
                        }
                        assert_eq!((live, hid), (wl, wh), "{isa:?} tl={tl} slope={slope}");
                    }
                }
            }
        }
    }

    /// `softmax` (one call per tile) on every ISA computes bit for bit what `scores` and
    /// `exp_sum` row by row do, with shared mask rows, rows fully masked, soft cap on and off.
    #[test]
    fn softmax_tile_equals_rows() {
        let mut seed = 0x50f7_u64;
        for isa in simd::available() {
            let kn = Kernels::new(isa);
            for mr in [1usize, 3, 4, 9] {
                for softcap in [0.0f32, 20.0] {
                    let mut s: Vec<f32> = (0..mr * TILE_KV)
                        .map(|_| (lcg(&mut seed) as f32 / u32::MAX as f32 - 0.5) * 16.0)
                        .collect();
                    let mut mv = vec![0f32; mr * TILE_KV];
                    for (i, x) in mv.iter_mut().enumerate() {
                        let r = i / TILE_KV;
                        *x = if r == 1 || lcg(&mut seed).is_multiple_of(5) {
                            f32::NEG_INFINITY
                        } else {
                            -((lcg(&mut seed) % 100) as f32) * 0.05
                        };
                    }
                    // row m reads mask row mi[m]: pairs share one, row 1 is all -inf
                    let mi: Vec<u32> = (0..mr as u32)
                        .map(|m| if m >= 2 { m & !1 } else { m })
                        .collect();
                    let mut mrow: Vec<f32> = (0..mr)
                        .map(|m| if m % 2 == 0 { f32::NEG_INFINITY } else { 1.0 })
                        .collect();
                    let mut srow: Vec<f32> = (0..mr).map(|m| m as f32).collect();
                    let (mut s2, mut m2, mut s2row) = (s.clone(), mrow.clone(), srow.clone());
                    let mut ms = vec![f32::NAN; mr];
                    kn.softmax(
                        &mut s, &mv, &mi, 0.125, softcap, &mut mrow, &mut srow, &mut ms,
                    );
                    for m in 0..mr {
                        let i = mi[m] as usize;
                        let row = &mut s2[m * TILE_KV..(m + 1) * TILE_KV];
                        let tmax =
                            kn.scores(row, &mv[i * TILE_KV..(i + 1) * TILE_KV], 0.125, softcap);
                        let mut f = 1.0f32;
                        if tmax == f32::NEG_INFINITY {
                            row.fill(0.0);
                        } else {
                            let mnew = m2[m].max(tmax);
                            if mnew > m2[m] {
                                f = (m2[m] - mnew).exp();
                                s2row[m] *= f;
                            }
                            m2[m] = mnew;
                            s2row[m] += kn.exp_sum(row, mnew);
                        }
                        assert_eq!(ms[m].to_bits(), f.to_bits(), "{isa:?} mr={mr} m={m}");
                        assert_eq!(mrow[m].to_bits(), m2[m].to_bits(), "{isa:?} m={m}");
                        assert_eq!(srow[m].to_bits(), s2row[m].to_bits(), "{isa:?} m={m}");
                    }
                    let same = s.iter().zip(&s2).all(|(a, b)| a.to_bits() == b.to_bits());
                    assert!(
                        same,
                        "{isa:?} mr={mr} softcap={softcap}: probabilities differ"
                    );
                    assert!(mr == 1 || s[TILE_KV..2 * TILE_KV].iter().all(|&x| x == 0.0));
                }
            }
        }
    }
}
