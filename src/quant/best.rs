//! Error-minimizing quantizers for the quality mode: the same ggml blocks, better chosen.
//!
//! Upstream's quantizers derive a block's scale from its largest value (q4_0: `d = max / -8`,
//! `quantize_row_q4_0_ref`; q4_1: `d = (max - min) / 15`, `quantize_row_q4_1_ref`; iq4_nl:
//! one least-squares step after `d = max / -127`, `quantize_row_iq4_nl_impl` with
//! `ntry = -1`). Here every block searches its scale (and min, for q4_1/q5_1) for the
//! smallest weighted squared error `Σ w·(x − x̂)²` of the values *as stored* (f16-rounded
//! scale and min, decoded by the format's `to_float`), in the spirit of ggml's
//! `make_qx_quants` / `make_qkx2_quants` / iq4_nl's `ntry` search (own code):
//!
//! * a few trial scales that put the block's extreme at or near either end of the level
//!   range;
//! * for each, nearest levels, then alternating least-squares refits of the scale (and min)
//!   and re-rounding with the f16-rounded parameters;
//! * upstream's own block is always a candidate: a block is replaced only when the search
//!   found a strictly smaller error, so no block is ever worse than upstream's (with the
//!   same weights), and a block with NaN/Inf stays upstream's.
//!
//! The search runs on every cache write of the quality mode, so it is built for speed: f32
//! arithmetic over fixed 32-value blocks in loops that vectorize, compiled for AVX2 and
//! AVX-512 as well as the baseline (the same bytes on every ISA), ~1 µs a block
//! (`cargo bench --bench quality`).
//!
//! The output is a valid block of the requested type: upstream's `to_float` (and every
//! other reader — ggml's CPU attention, context shift, session files) decodes it as usual.
//! f16/bf16 have no choice to make and are stored as the CPU backend stores them.
use super::fp16::{f16le_to_f32, f32_to_f16le};
use super::iq4_nl::KVALUES;
use super::{
    as_blocks_mut, BlockFormat, BlockIq4Nl, BlockQ4_0, BlockQ4_1, BlockQ5_0, BlockQ5_1, BlockQ8_0,
    QK,
};
use crate::error::{Error, Result};
use crate::types::GgmlType;

/// Quantize `x` into `y` (a row of `ty`) with the error-minimizing search. `w`, if given,
/// weights each element's squared error (`w.len() == x.len()`, finite, ≥ 0); `None` weighs
/// all alike. Exactly the bytes of `ty.row_bytes(x.len())` are written.
pub fn quantize_row_best(ty: GgmlType, x: &[f32], w: Option<&[f32]>, y: &mut [u8]) -> Result<()> {
    if let Some(w) = w {
        if w.len() != x.len() {
            return Err(Error::BadShape(format!(
                "{} weights for a row of {} values",
                w.len(),
                x.len()
            )));
        }
        if w.iter().any(|v| !(v.is_finite() && *v >= 0.0)) {
            return Err(Error::BadShape(
                "weights must be finite and >= 0".to_string(),
            ));
        }
    }
    // Upstream's blocks first: validates the row and is every block's first candidate.
    super::format(ty)?.quantize_row(x, y)?;
    let need = ty.row_bytes(x.len())?;
    let y = &mut y[..need];
    match ty {
        GgmlType::Q8_0 => improve_isa::<BlockQ8_0>(x, w, y),
        GgmlType::Q4_0 => improve_isa::<BlockQ4_0>(x, w, y),
        GgmlType::Q5_0 => improve_isa::<BlockQ5_0>(x, w, y),
        GgmlType::Q4_1 => improve_isa::<BlockQ4_1>(x, w, y),
        GgmlType::Q5_1 => improve_isa::<BlockQ5_1>(x, w, y),
        GgmlType::IQ4_NL => improve_isa::<BlockIq4Nl>(x, w, y),
        _ => Ok(()),
    }
}

/// The error metric of one K head: `cost(e) = eᵀ·H·e` for the error `e = x − x̂` of the
/// head's `d` values, with `H = E[q·qᵀ]` over the queries that read this head (its GQA group)
/// in the space the cache is in. `qᵀe` is the error of a score, so `cost` is the mean squared
/// score error over those queries. Real queries share a large mean direction (60 % of their
/// energy on SmolLM2), so errors along it cost far more than errors across it.
#[derive(Clone, Debug)]
pub struct HeadMetric {
    d: usize,
    /// `H` (damped), row-major `d×d`
    h: Vec<f64>,
    /// `H` in f32, for the write path
    hf: Vec<f32>,
    /// upper Cholesky factor `U` of `H⁻¹` (`H⁻¹ = UᵀU`), row-major `d×d`, f32
    uf: Vec<f32>,
    /// `1/Uᵢᵢ`
    uinv: Vec<f32>,
}

impl HeadMetric {
    /// From `H` (row-major `d×d`, symmetric positive semi-definite; any positive scale)
    /// and a damping: `H + damping·mean(diag H)·I` is used, which also makes it invertible.
    /// `d` must be a multiple of 32 (whole blocks).
    pub fn new(h: &[f32], d: usize, damping: f64) -> Result<Self> {
        if d == 0 || !d.is_multiple_of(QK) || h.len() != d * d {
            return Err(Error::BadShape(format!(
                "a {} value metric for a head of {d} (need d·d, d a multiple of {QK})",
                h.len()
            )));
        }
        if h.iter().any(|v| !v.is_finite()) || !(damping.is_finite() && damping > 0.0) {
            return Err(Error::BadShape(
                "metric not finite or damping not > 0".into(),
            ));
        }
        let mut hd: Vec<f64> = h.iter().map(|&v| v as f64).collect();
        // symmetrize, damp
        for i in 0..d {
            for j in 0..i {
                let m = 0.5 * (hd[i * d + j] + hd[j * d + i]);
                hd[i * d + j] = m;
                hd[j * d + i] = m;
            }
        }
        let mean_diag = (0..d).map(|i| hd[i * d + i]).sum::<f64>() / d as f64;
        if mean_diag.is_nan() || mean_diag <= 0.0 {
            return Err(Error::BadShape("metric with a zero diagonal".into()));
        }
        for i in 0..d {
            hd[i * d + i] += damping * mean_diag;
        }
        let l = cholesky(&hd, d).ok_or(Error::BadShape("metric not positive definite".into()))?;
        // H⁻¹ = L⁻ᵀ·L⁻¹: invert L (lower), then multiply.
        let mut li = vec![0f64; d * d];
        for c in 0..d {
            for i in c..d {
                let mut s = if i == c { 1.0 } else { 0.0 };
                for k in c..i {
                    s -= l[i * d + k] * li[k * d + c];
                }
                li[i * d + c] = s / l[i * d + i];
            }
        }
        let mut hinv = vec![0f64; d * d];
        for i in 0..d {
            for j in 0..d {
                let s: f64 = (i.max(j)..d).map(|k| li[k * d + i] * li[k * d + j]).sum();
                hinv[i * d + j] = s;
            }
        }
        let lh = cholesky(&hinv, d).ok_or(Error::BadShape("metric ill-conditioned".into()))?;
        let mut u = vec![0f64; d * d];
        for i in 0..d {
            for j in i..d {
                u[i * d + j] = lh[j * d + i];
            }
        }
        let hf = hd.iter().map(|&v| v as f32).collect();
        let uf: Vec<f32> = u.iter().map(|&v| v as f32).collect();
        let uinv = (0..d).map(|i| (1.0 / u[i * d + i]) as f32).collect();
        Ok(HeadMetric {
            d,
            h: hd,
            hf,
            uf,
            uinv,
        })
    }

    /// Values per head.
    pub fn dim(&self) -> usize {
        self.d
    }

    /// `eᵀ·H·e`, in f64.
    pub fn cost(&self, e: &[f64]) -> f64 {
        let d = self.d;
        self.h
            .chunks_exact(d)
            .zip(e)
            .map(|(row, ei)| ei * dot_f64(row, e))
            .sum()
    }

    /// `eᵀ·H·e` from f32 errors: each `(H·e)_i` in f32 lanes, the sum in f64.
    #[inline(always)]
    fn cost_f32(&self, e: &[f32]) -> f64 {
        let mut total = 0f64;
        for (row, &ei) in self.hf.chunks_exact(self.d).zip(e) {
            total += ei as f64 * dot_f32(row, e) as f64;
        }
        total
    }

    /// [`Self::cost`] of the blocks `q` for the head values `x`.
    fn cost_of<B: BlockFormat>(&self, x: &[f32], q: &[B]) -> f64 {
        let mut dq = vec![0f32; self.d];
        B::dequantize_row(q, &mut dq);
        let e: Vec<f64> = x
            .iter()
            .zip(&dq)
            .map(|(a, b)| *a as f64 - *b as f64)
            .collect();
        self.cost(&e)
    }

    /// Round the block at `base` of the feedback values `w` on grid `g`, one value at a
    /// time, carrying each value's error to the rest of the block through `U` (OBQ/GPTQ).
    /// Returns the block's share of `eᵀ·H·e` (`Σ errᵢ²`, errors scaled by `1/Uᵢᵢ`), the
    /// level indices and the scaled errors (for [`Self::carry`]).
    #[inline(always)]
    fn round_block(&self, g: &Grid, base: usize, w: &[f32]) -> (f32, [u8; QK], [f32; QK]) {
        let d = self.d;
        let mut t: [f32; QK] = w[base..base + QK].try_into().expect("QK");
        let mut lf = [0f32; QK];
        let mut errs = [0f32; QK];
        let mut c = 0f32;
        for i in 0..QK {
            let (idx, val) = g.nearest(t[i]);
            lf[i] = idx;
            let err = (t[i] - val) * self.uinv[base + i];
            errs[i] = err;
            c += err * err;
            let row = &self.uf[(base + i) * d + base..(base + i) * d + base + QK];
            for (tj, uj) in t[i + 1..].iter_mut().zip(&row[i + 1..]) {
                *tj -= err * uj;
            }
        }
        let mut l = [0u8; QK];
        for (li, f) in l.iter_mut().zip(&lf) {
            *li = *f as u8;
        }
        (c, l, errs)
    }

    /// Carry a rounded block's scaled errors to the values after it.
    #[inline(always)]
    fn carry(&self, base: usize, errs: &[f32; QK], w: &mut [f32]) {
        let d = self.d;
        let rest = base + QK;
        for (i, err) in errs.iter().enumerate() {
            let row = &self.uf[(base + i) * d + rest..(base + i + 1) * d];
            for (wj, uj) in w[rest..].iter_mut().zip(row) {
                *wj -= err * uj;
            }
        }
    }
}

/// Dot product in 8 f64 lanes (vectorizes).
fn dot_f64(a: &[f64], b: &[f64]) -> f64 {
    let mut acc = [0f64; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f64 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for k in 0..8 {
            acc[k] += x[k] * y[k];
        }
    }
    acc.iter().sum::<f64>() + tail
}

/// Dot product in 16 f32 lanes (vectorizes); `a.len()` a multiple of 16.
#[inline(always)]
fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    for (x, y) in a.chunks_exact(16).zip(b.chunks_exact(16)) {
        for k in 0..16 {
            acc[k] += x[k] * y[k];
        }
    }
    let mut n = 8;
    while n > 0 {
        for k in 0..n {
            acc[k] += acc[k + n];
        }
        n /= 2;
    }
    acc[0]
}

/// Lower Cholesky factor of a symmetric positive definite `d×d` matrix, if it is one.
fn cholesky(a: &[f64], d: usize) -> Option<Vec<f64>> {
    let mut l = vec![0f64; d * d];
    for i in 0..d {
        for j in 0..=i {
            let s = a[i * d + j] - (0..j).map(|k| l[i * d + k] * l[j * d + k]).sum::<f64>();
            if i == j {
                if s.is_nan() || s <= 0.0 {
                    return None;
                }
                l[i * d + i] = s.sqrt();
            } else {
                l[i * d + j] = s / l[j * d + j];
            }
        }
    }
    Some(l)
}

/// [`quantize_row_best`] for a row of K heads (`x.len() == heads.len() · d`), each head
/// chosen for the smallest score error under its [`HeadMetric`] instead of the smallest
/// squared error. Per head, the values are rounded one at a time with each error carried to
/// the values not yet rounded through `H⁻¹`'s Cholesky factor (the optimal-brain-quantization
/// update of GPTQ, arXiv 2210.17323, here with `H` from the queries); each block's scale
/// (and min) is the better, by that rounding's own cost, of upstream's and the squared-error
/// search's on the values the feedback leaves for the block. The result replaces upstream's
/// blocks only if its `eᵀ·H·e` is smaller, so no head costs more than upstream's blocks under
/// the metric. Heads with NaN/Inf keep upstream's blocks.
pub fn quantize_row_best_metric(
    ty: GgmlType,
    x: &[f32],
    heads: &[HeadMetric],
    y: &mut [u8],
) -> Result<()> {
    let d = heads.first().map_or(0, |h| h.d);
    if heads.is_empty() || heads.iter().any(|h| h.d != d) || x.len() != d * heads.len() {
        return Err(Error::BadShape(format!(
            "a row of {} values for {} head metrics of {d}",
            x.len(),
            heads.len()
        )));
    }
    super::format(ty)?.quantize_row(x, y)?;
    let need = ty.row_bytes(x.len())?;
    let y = &mut y[..need];
    match ty {
        GgmlType::Q8_0 => improve_metric_isa::<BlockQ8_0>(x, heads, y),
        GgmlType::Q4_0 => improve_metric_isa::<BlockQ4_0>(x, heads, y),
        GgmlType::Q5_0 => improve_metric_isa::<BlockQ5_0>(x, heads, y),
        GgmlType::Q4_1 => improve_metric_isa::<BlockQ4_1>(x, heads, y),
        GgmlType::Q5_1 => improve_metric_isa::<BlockQ5_1>(x, heads, y),
        GgmlType::IQ4_NL => improve_metric_isa::<BlockIq4Nl>(x, heads, y),
        _ => Ok(()),
    }
}

#[inline(always)]
fn improve_metric<B: Search>(x: &[f32], heads: &[HeadMetric], y: &mut [u8]) -> Result<()> {
    let blocks = as_blocks_mut::<B>(y)?;
    let d = heads[0].d;
    let nb = d / QK;
    let mut w = vec![0f32; d];
    let mut e = vec![0f32; d];
    let mut dq = vec![0f32; d];
    let mut cand: Vec<B> = Vec::with_capacity(nb);
    for ((xh, yh), m) in x
        .chunks_exact(d)
        .zip(blocks.chunks_exact_mut(nb))
        .zip(heads)
    {
        if !xh.iter().all(|v| v.is_finite()) {
            continue;
        }
        // Error-feedback rounding, block by block: each block's grid is the better (by the
        // rounding's own cost) of upstream's and the squared-error search's on the values
        // the feedback has left for it.
        w.copy_from_slice(xh);
        cand.clear();
        let mut c_new = 0f64;
        for (b, up) in yh.iter().enumerate() {
            let base = b * QK;
            let wb: &[f32; QK] = w[base..base + QK].try_into().expect("QK");
            let mut best: Option<(f32, B, [f32; QK])> = None;
            let searched = B::search(wb, &ONES);
            for g in std::iter::once(up.grid()).chain(searched.map(|s| s.grid())) {
                let (c, l, errs) = m.round_block(&g, base, &w);
                if c.is_finite() && best.as_ref().is_none_or(|bb| c < bb.0) {
                    best = Some((c, B::from_levels(&g, &l), errs));
                }
            }
            let Some((c, blk, errs)) = best else {
                c_new = f64::INFINITY;
                cand.push(*up);
                continue;
            };
            c_new += c as f64;
            m.carry(base, &errs, &mut w);
            cand.push(blk);
        }
        // Store the rounding's blocks if their score error is below upstream's. The rounding's
        // own cost is `Σ errᵢ²` (= `eᵀ·H·e` for its blocks); a near tie is decided in f64.
        B::dequantize_row(yh, &mut dq);
        for ((ei, xi), qi) in e.iter_mut().zip(xh).zip(&dq) {
            *ei = xi - qi;
        }
        let c_up = m.cost_f32(&e);
        let better = if !c_up.is_finite() {
            c_new.is_finite()
        } else if c_new < (1.0 - 1e-3) * c_up {
            true
        } else if c_new > (1.0 + 1e-3) * c_up {
            false
        } else {
            m.cost_of::<B>(xh, &cand) < m.cost_of::<B>(xh, yh)
        };
        if better {
            yh.copy_from_slice(&cand);
        }
    }
    Ok(())
}

/// Unit weights.
const ONES: [f32; QK] = [1.0; QK];

/// `$name<B>($args)`: `$kernel::<B>` compiled for the CPU's vector units — AVX-512 and
/// AVX2 builds of the same generic code, chosen by [`crate::simd::isa`]. The arithmetic is
/// the same on every ISA (no fused multiply-adds the scalar code does not have, fixed
/// summation order), so are the bytes (tested).
macro_rules! isa_dispatch {
    ($(#[$m:meta])* fn $name:ident => $kernel:ident($($a:ident: $t:ty),*)) => {
        $(#[$m])*
        fn $name<B: Search>($($a: $t),*) -> Result<()> {
            #[cfg(target_arch = "x86_64")]
            {
                use crate::simd::Isa;
                #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")]
                fn avx512<B: Search>($($a: $t),*) -> Result<()> {
                    $kernel::<B>($($a),*)
                }
                #[target_feature(enable = "avx2,fma,f16c")]
                fn avx2<B: Search>($($a: $t),*) -> Result<()> {
                    $kernel::<B>($($a),*)
                }
                match crate::simd::isa() {
                    // SAFETY: the ISA was detected on this CPU (`simd::isa` never exceeds it).
                    Isa::Avx512 => return unsafe { avx512::<B>($($a),*) },
                    Isa::Avx2 => return unsafe { avx2::<B>($($a),*) },
                    Isa::Scalar => {}
                }
            }
            $kernel::<B>($($a),*)
        }
    };
}

isa_dispatch!(
    /// [`improve_metric`] for the CPU's vector units.
    fn improve_metric_isa => improve_metric(x: &[f32], heads: &[HeadMetric], y: &mut [u8])
);
isa_dispatch!(
    /// [`improve`] for the CPU's vector units.
    fn improve_isa => improve(x: &[f32], w: Option<&[f32]>, y: &mut [u8])
);

/// A format whose blocks the search can choose.
trait Search: BlockFormat {
    /// The best block the search finds for `x` under weights `w` (finite `x` only), if any.
    fn search(x: &[f32; QK], w: &[f32; QK]) -> Option<Self>;
    /// The values this block's stored parameters can represent.
    fn grid(&self) -> Grid;
    /// The block with the parameters of `g` and level indices `l` (from [`Grid::nearest`]).
    fn from_levels(g: &Grid, l: &[u8; QK]) -> Self;
}

/// The representable values of one block: what its stored parameters allow.
#[derive(Clone, Copy, Debug)]
enum Grid {
    /// `d·(i + lo)` for indices `i` in `0..=hi-lo` (q8_0, q4_0, q5_0)
    Sym { d: f32, lo: i32, hi: i32 },
    /// `fma(i, d, m)` for `i` in `0..=nmax` (q4_1, q5_1)
    Affine { d: f32, m: f32, nmax: i32 },
    /// `d·KVALUES[i]` (iq4_nl)
    Table { d: f32 },
}

impl Grid {
    /// The index of the representable value nearest to `v` (as an f32: the caller converts
    /// a block's indices at once, off the rounding's dependency chain), and that value.
    #[inline(always)]
    fn nearest(&self, v: f32) -> (f32, f32) {
        match *self {
            Grid::Sym { d, lo, hi } => {
                if d == 0.0 {
                    return (-lo as f32, 0.0);
                }
                let l = rint((v * (1.0 / d)).clamp(lo as f32, hi as f32));
                (l - lo as f32, d * l)
            }
            Grid::Affine { d, m, nmax } => {
                if d == 0.0 {
                    return (0.0, m);
                }
                let l = rint(((v - m) * (1.0 / d)).clamp(0.0, nmax as f32));
                (l, l.mul_add(d, m))
            }
            Grid::Table { d } => {
                if d == 0.0 {
                    return (0.0, 0.0);
                }
                let i = table_index(v * (1.0 / d));
                (i as f32, d * KVALUES[i as usize] as f32)
            }
        }
    }
}

#[inline(always)]
fn improve<B: Search>(x: &[f32], w: Option<&[f32]>, y: &mut [u8]) -> Result<()> {
    let blocks = as_blocks_mut::<B>(y)?;
    let ones = [1f32; QK];
    for (i, (xb, yb)) in x.chunks_exact(QK).zip(blocks.iter_mut()).enumerate() {
        let xb: &[f32; QK] = xb.try_into().expect("chunks of QK");
        if !xb.iter().all(|v| v.is_finite()) {
            continue;
        }
        let wb: &[f32; QK] = match w {
            Some(w) => w[i * QK..(i + 1) * QK].try_into().expect("QK weights"),
            None => &ones,
        };
        search_into(yb, xb, wb);
    }
    Ok(())
}

/// Replace `b` (upstream's block) by the search's block for `x` if that is strictly better
/// under weights `w`; an upstream block that decodes to Inf/NaN (scale beyond f16) loses to
/// any finite candidate.
#[inline(always)]
fn search_into<B: Search>(b: &mut B, x: &[f32; QK], w: &[f32; QK]) {
    if let Some(cand) = B::search(x, w) {
        let (ec, eu) = (block_error(&cand, x, w), block_error(b, x, w));
        if ec.is_finite() && (ec < eu || !eu.is_finite()) {
            *b = cand;
        }
    }
}

/// `Σ w·(x − to_float(b))²` in f64, decoded by the format's own `to_float`.
pub(crate) fn block_error<B: BlockFormat>(b: &B, x: &[f32; QK], w: &[f32; QK]) -> f64 {
    let mut dq = [0f32; QK];
    B::dequantize_row(std::slice::from_ref(b), &mut dq);
    weighted_sse(x, &dq, w)
}

fn weighted_sse(x: &[f32], xq: &[f32], w: &[f32]) -> f64 {
    x.iter()
        .zip(xq)
        .zip(w)
        .map(|((a, b), w)| {
            let e = *a as f64 - *b as f64;
            *w as f64 * e * e
        })
        .sum()
}

/// f16 round trip of a scale; `None` if it does not survive as a finite non-zero value.
#[inline]
fn f16_round(v: f32) -> Option<f32> {
    let r = f16le_to_f32(f32_to_f16le(v));
    (r.is_finite() && r != 0.0).then_some(r)
}

/// Round to the nearest integer (ties to even) for `|v| < 2²²`, in plain SSE2 arithmetic
/// so the loops around it vectorize (`f32::round` is a library call on baseline x86-64).
#[inline(always)]
fn rint(v: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0; // 1.5·2²³
    (v + MAGIC) - MAGIC
}

/// `[f(0), …, f(31)]` (a plain loop: `array::from_fn` is not inlined into the
/// `target_feature` kernels).
#[inline(always)]
#[allow(clippy::needless_range_loop)] // the index is the argument
fn terms(f: impl Fn(usize) -> f32) -> [f32; QK] {
    let mut t = [0f32; QK];
    for i in 0..QK {
        t[i] = f(i);
    }
    t
}

/// Sum of 32 values, pairwise (vectorizes).
#[inline(always)]
fn hsum(mut t: [f32; QK]) -> f32 {
    let mut n = QK / 2;
    while n > 0 {
        for i in 0..n {
            t[i] += t[i + n];
        }
        n /= 2;
    }
    t[0]
}

/// Trials of the scale searches: where the block's extreme lands, as a level offset from
/// the end of the range (negative: beyond it, clipping the extreme). Each trial is then
/// refined by least-squares refits, so a coarse set finds what a fine one does (measured on
/// real K/V rows with `examples`-style sweeps: 8 trials keep ~99 % of 48's gain).
const TRIALS: [f32; 3] = [-0.5, 0.0, 0.5];
/// Least-squares refits per trial.
const REFITS: usize = 2;

/// Symmetric levels `lo..=hi` times one scale (q8_0, q4_0, q5_0): the best `(d, levels)`.
#[inline(always)]
fn search_sym(x: &[f32; QK], w: &[f32; QK], lo: i32, hi: i32) -> Option<(f32, [i8; QK])> {
    let (amax, max) = super::q4_0::amax_max(x);
    if amax == 0.0 {
        return None;
    }
    let (lof, hif) = (lo as f32, hi as f32);
    let quant = |d: f32, l: &mut [f32; QK]| {
        let id = 1.0 / d;
        for (li, xi) in l.iter_mut().zip(x) {
            *li = rint((xi * id).clamp(lof, hif));
        }
    };
    let mut best: Option<(f32, f32, [f32; QK])> = None;
    let mut l = [0f32; QK];
    // value = d·level: the trial maps the signed extreme `max` to level `t`, at either end
    for t in TRIALS
        .iter()
        .flat_map(|o| [lof + o, hif - o])
        .filter(|t| *t != 0.0)
    {
        let Some(mut d) = f16_round(max / t) else {
            continue;
        };
        quant(d, &mut l);
        for _ in 0..REFITS {
            let sxl = hsum(terms(|i| w[i] * x[i] * l[i]));
            let sll = hsum(terms(|i| w[i] * l[i] * l[i]));
            if sll <= 0.0 {
                break;
            }
            let Some(d2) = f16_round(sxl / sll) else {
                break;
            };
            if d2 == d {
                break;
            }
            d = d2;
            quant(d, &mut l);
        }
        let e = hsum(terms(|i| {
            let r = x[i] - d * l[i];
            w[i] * r * r
        }));
        if e.is_finite() && best.as_ref().is_none_or(|b| e < b.0) {
            best = Some((e, d, l));
        }
    }
    best.map(|(_, d, l)| (d, l.map(|v| v as i8)))
}

/// Affine levels `0..=nmax` (q4_1, q5_1): value = `d·level + m`; the best `(d, m, levels)`.
#[inline(always)]
fn search_affine(x: &[f32; QK], w: &[f32; QK], nmax: i32) -> Option<(f32, f32, [u8; QK])> {
    let (min, max) = super::q4_0::min_max(x);
    if max <= min {
        return None;
    }
    let nf = nmax as f32;
    let quant = |d: f32, m: f32, l: &mut [f32; QK]| {
        let id = 1.0 / d;
        for (li, xi) in l.iter_mut().zip(x) {
            *li = rint(((xi - m) * id).clamp(0.0, nf));
        }
    };
    let range = max - min;
    let m0 = f16le_to_f32(f32_to_f16le(min));
    if !m0.is_finite() {
        return None;
    }
    let mut best: Option<(f32, f32, f32, [f32; QK])> = None;
    let mut l = [0f32; QK];
    for o in TRIALS {
        // the range spans `nmax − o` steps: o > 0 clips both ends a little
        let Some(d0) = f16_round(range / (nf - o)) else {
            continue;
        };
        let (mut d, mut m) = (d0, m0);
        quant(d, m, &mut l);
        for _ in 0..REFITS {
            let sw = hsum(*w);
            let sl = hsum(terms(|i| w[i] * l[i]));
            let sll = hsum(terms(|i| w[i] * l[i] * l[i]));
            let sx = hsum(terms(|i| w[i] * x[i]));
            let sxl = hsum(terms(|i| w[i] * x[i] * l[i]));
            let (sw, sl, sll, sx, sxl) = (sw as f64, sl as f64, sll as f64, sx as f64, sxl as f64);
            let det = sw * sll - sl * sl;
            if det <= 0.0 {
                break;
            }
            let d2 = ((sw * sxl - sl * sx) / det) as f32;
            let m2 = ((sll * sx - sl * sxl) / det) as f32;
            let (Some(d2), m2) = (f16_round(d2), f16le_to_f32(f32_to_f16le(m2))) else {
                break;
            };
            if d2 <= 0.0 || !m2.is_finite() || (d2 == d && m2 == m) {
                break;
            }
            (d, m) = (d2, m2);
            quant(d, m, &mut l);
        }
        let e = hsum(terms(|i| {
            let r = x[i] - l[i].mul_add(d, m);
            w[i] * r * r
        }));
        if e.is_finite() && best.as_ref().is_none_or(|b| e < b.0) {
            best = Some((e, d, m, l));
        }
    }
    best.map(|(_, d, m, l)| (d, m, l.map(|v| v as u8)))
}

/// The midpoints between iq4_nl's neighbouring table values.
const KMIDS: [f32; 15] = {
    let mut m = [0f32; 15];
    let mut i = 0;
    while i < 15 {
        m[i] = (KVALUES[i] as f32 + KVALUES[i + 1] as f32) * 0.5;
        i += 1;
    }
    m
};

/// The index of the table value nearest to `v` (ties up, as `best_index`), without
/// branches so the block loops vectorize; any finite `v`.
#[inline(always)]
fn table_index(v: f32) -> u8 {
    KMIDS.iter().map(|m| u8::from(v >= *m)).sum()
}

/// iq4_nl's table times one scale: the best `(d, indices)`.
#[inline(always)]
fn search_table(x: &[f32; QK], w: &[f32; QK]) -> Option<(f32, [u8; QK])> {
    let (amax, max) = super::q4_0::amax_max(x);
    if amax < super::iq4_nl::GROUP_MAX_EPS {
        return None;
    }
    let quant = |d: f32, l: &mut [u8; QK]| {
        let id = 1.0 / d;
        for (li, xi) in l.iter_mut().zip(x) {
            *li = table_index(xi * id);
        }
    };
    let (lo, hi) = (KVALUES[0] as f32, KVALUES[15] as f32);
    let mut best: Option<(f32, f32, [u8; QK])> = None;
    let mut l = [0u8; QK];
    // the table's steps near its ends are ~14 apart: trials in steps of a few units
    for o in TRIALS {
        for t in [lo + 6.0 * o, hi - 6.0 * o] {
            let Some(mut d) = f16_round(max / t) else {
                continue;
            };
            quant(d, &mut l);
            for _ in 0..REFITS {
                let q: [f32; QK] = terms(|i| KVALUES[l[i] as usize] as f32);
                let sxq = hsum(terms(|i| w[i] * x[i] * q[i]));
                let sqq = hsum(terms(|i| w[i] * q[i] * q[i]));
                if sqq <= 0.0 {
                    break;
                }
                let Some(d2) = f16_round(sxq / sqq) else {
                    break;
                };
                if d2 == d {
                    break;
                }
                d = d2;
                quant(d, &mut l);
            }
            let e = hsum(terms(|i| {
                let r = x[i] - d * KVALUES[l[i] as usize] as f32;
                w[i] * r * r
            }));
            if e.is_finite() && best.as_ref().is_none_or(|b| e < b.0) {
                best = Some((e, d, l));
            }
        }
    }
    best.map(|(_, d, l)| (d, l))
}

/// Pack 32 values of 4 bits: element j in the low nibble of byte j, j+16 in the high one.
fn pack4(v: &[u8; QK]) -> [u8; 16] {
    std::array::from_fn(|j| (v[j] & 0x0f) | ((v[j + 16] & 0x0f) << 4))
}

/// The 5th bits of 32 values of 5 bits, little-endian (`qh` of q5_0/q5_1).
fn high_bits(v: &[u8; QK]) -> [u8; 4] {
    let h = v
        .iter()
        .enumerate()
        .fold(0u32, |h, (j, q)| h | ((((q >> 4) & 1) as u32) << j));
    h.to_le_bytes()
}

impl Search for BlockQ8_0 {
    #[inline(always)]
    fn search(x: &[f32; QK], w: &[f32; QK]) -> Option<Self> {
        let (d, l) = search_sym(x, w, -127, 127)?;
        Some(BlockQ8_0 {
            d: f32_to_f16le(d),
            qs: l,
        })
    }
    #[inline(always)]
    fn grid(&self) -> Grid {
        let d = f16le_to_f32(self.d);
        Grid::Sym {
            d,
            lo: -127,
            hi: 127,
        }
    }
    #[inline(always)]
    fn from_levels(g: &Grid, l: &[u8; QK]) -> Self {
        BlockQ8_0 {
            d: f32_to_f16le(grid_d(g)),
            qs: l.map(|i| (i as i32 - 127) as i8),
        }
    }
}

impl Search for BlockQ4_0 {
    #[inline(always)]
    fn search(x: &[f32; QK], w: &[f32; QK]) -> Option<Self> {
        let (d, l) = search_sym(x, w, -8, 7)?;
        Some(BlockQ4_0 {
            d: f32_to_f16le(d),
            qs: pack4(&l.map(|v| (v + 8) as u8)),
        })
    }
    #[inline(always)]
    fn grid(&self) -> Grid {
        let d = f16le_to_f32(self.d);
        Grid::Sym { d, lo: -8, hi: 7 }
    }
    #[inline(always)]
    fn from_levels(g: &Grid, l: &[u8; QK]) -> Self {
        BlockQ4_0 {
            d: f32_to_f16le(grid_d(g)),
            qs: pack4(l),
        }
    }
}

impl Search for BlockQ5_0 {
    #[inline(always)]
    fn search(x: &[f32; QK], w: &[f32; QK]) -> Option<Self> {
        let (d, l) = search_sym(x, w, -16, 15)?;
        let u = l.map(|v| (v + 16) as u8);
        Some(BlockQ5_0 {
            d: f32_to_f16le(d),
            qh: high_bits(&u),
            qs: pack4(&u),
        })
    }
    #[inline(always)]
    fn grid(&self) -> Grid {
        let d = f16le_to_f32(self.d);
        Grid::Sym { d, lo: -16, hi: 15 }
    }
    #[inline(always)]
    fn from_levels(g: &Grid, l: &[u8; QK]) -> Self {
        BlockQ5_0 {
            d: f32_to_f16le(grid_d(g)),
            qh: high_bits(l),
            qs: pack4(l),
        }
    }
}

impl Search for BlockQ4_1 {
    #[inline(always)]
    fn search(x: &[f32; QK], w: &[f32; QK]) -> Option<Self> {
        let (d, m, l) = search_affine(x, w, 15)?;
        Some(BlockQ4_1 {
            d: f32_to_f16le(d),
            m: f32_to_f16le(m),
            qs: pack4(&l),
        })
    }
    #[inline(always)]
    fn grid(&self) -> Grid {
        let (d, m) = (f16le_to_f32(self.d), f16le_to_f32(self.m));
        Grid::Affine { d, m, nmax: 15 }
    }
    #[inline(always)]
    fn from_levels(g: &Grid, l: &[u8; QK]) -> Self {
        BlockQ4_1 {
            d: f32_to_f16le(grid_d(g)),
            m: f32_to_f16le(grid_m(g)),
            qs: pack4(l),
        }
    }
}

impl Search for BlockQ5_1 {
    #[inline(always)]
    fn search(x: &[f32; QK], w: &[f32; QK]) -> Option<Self> {
        let (d, m, l) = search_affine(x, w, 31)?;
        Some(BlockQ5_1 {
            d: f32_to_f16le(d),
            m: f32_to_f16le(m),
            qh: high_bits(&l),
            qs: pack4(&l),
        })
    }
    #[inline(always)]
    fn grid(&self) -> Grid {
        let (d, m) = (f16le_to_f32(self.d), f16le_to_f32(self.m));
        Grid::Affine { d, m, nmax: 31 }
    }
    #[inline(always)]
    fn from_levels(g: &Grid, l: &[u8; QK]) -> Self {
        BlockQ5_1 {
            d: f32_to_f16le(grid_d(g)),
            m: f32_to_f16le(grid_m(g)),
            qh: high_bits(l),
            qs: pack4(l),
        }
    }
}

impl Search for BlockIq4Nl {
    #[inline(always)]
    fn search(x: &[f32; QK], w: &[f32; QK]) -> Option<Self> {
        let (d, l) = search_table(x, w)?;
        Some(BlockIq4Nl {
            d: f32_to_f16le(d),
            qs: pack4(&l),
        })
    }
    #[inline(always)]
    fn grid(&self) -> Grid {
        Grid::Table {
            d: f16le_to_f32(self.d),
        }
    }
    #[inline(always)]
    fn from_levels(g: &Grid, l: &[u8; QK]) -> Self {
        BlockIq4Nl {
            d: f32_to_f16le(grid_d(g)),
            qs: pack4(l),
        }
    }
}

/// The scale of a grid (already an f16 value: the round trip is exact).
fn grid_d(g: &Grid) -> f32 {
    match *g {
        Grid::Sym { d, .. } | Grid::Affine { d, .. } | Grid::Table { d } => d,
    }
}

/// The min of an affine grid (0 for the others).
fn grid_m(g: &Grid) -> f32 {
    match *g {
        Grid::Affine { m, .. } => m,
        _ => 0.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gauss(seed: u64, n: usize) -> Vec<f32> {
        // Box–Muller over a small LCG: enough for a unit test.
        let mut s = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let mut next = || {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 11) as f64 + 0.5) / (1u64 << 53) as f64
        };
        (0..n)
            .map(|_| {
                let (u, v) = (next(), next());
                ((-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()) as f32
            })
            .collect()
    }

    fn row_sse(ty: GgmlType, x: &[f32], q: &[u8]) -> f64 {
        let mut y = vec![0f32; x.len()];
        crate::quant::format(ty)
            .unwrap()
            .dequantize_row(q, &mut y)
            .unwrap();
        weighted_sse(x, &y, &vec![1.0; x.len()])
    }

    #[test]
    fn lower_error_than_upstream_on_gaussian_rows() {
        let x = gauss(7, 32 * 512);
        for ty in GgmlType::KV_QUANTIZED {
            let n = ty.row_bytes(x.len()).unwrap();
            let (mut a, mut b) = (vec![0u8; n], vec![0u8; n]);
            crate::quant::format(ty)
                .unwrap()
                .quantize_row(&x, &mut a)
                .unwrap();
            quantize_row_best(ty, &x, None, &mut b).unwrap();
            let (ea, eb) = (row_sse(ty, &x, &a), row_sse(ty, &x, &b));
            eprintln!("{ty}: squared error best/upstream = {:.3}", eb / ea);
            assert!(eb < 0.97 * ea, "{ty}: best {eb} vs upstream {ea}");
        }
    }

    #[test]
    fn metric_rounding_lowers_the_score_error() {
        // H = I + 40·μμᵀ/|μ|²: one strong query direction, as real queries have.
        let d = 64;
        let mu = gauss(3, d);
        let n2: f32 = mu.iter().map(|v| v * v).sum();
        let h: Vec<f32> = (0..d * d)
            .map(|k| {
                let (i, j) = (k / d, k % d);
                f32::from(i == j) + 40.0 * mu[i] * mu[j] / n2
            })
            .collect();
        let m = HeadMetric::new(&h, d, 0.01).unwrap();
        let heads = vec![m.clone(); 3];
        let x = gauss(11, d * 3 * 200);
        for ty in [
            GgmlType::Q4_0,
            GgmlType::Q4_1,
            GgmlType::IQ4_NL,
            GgmlType::Q8_0,
        ] {
            let n = ty.row_bytes(d * 3).unwrap();
            let (mut tot_up, mut tot_mse, mut tot_m) = (0.0, 0.0, 0.0);
            for row in x.chunks_exact(d * 3) {
                let (mut a, mut b, mut c) = (vec![0u8; n], vec![0u8; n], vec![0u8; n]);
                crate::quant::format(ty)
                    .unwrap()
                    .quantize_row(row, &mut a)
                    .unwrap();
                quantize_row_best(ty, row, None, &mut b).unwrap();
                quantize_row_best_metric(ty, row, &heads, &mut c).unwrap();
                let cost = |q: &[u8]| -> Vec<f64> {
                    let mut y = vec![0f32; d * 3];
                    crate::quant::format(ty)
                        .unwrap()
                        .dequantize_row(q, &mut y)
                        .unwrap();
                    (0..3)
                        .map(|hh| {
                            let e: Vec<f64> = (0..d)
                                .map(|i| (row[hh * d + i] - y[hh * d + i]) as f64)
                                .collect();
                            m.cost(&e)
                        })
                        .collect()
                };
                let (ca, cb, cc) = (cost(&a), cost(&b), cost(&c));
                for hh in 0..3 {
                    assert!(
                        cc[hh] <= ca[hh],
                        "{ty}: head {hh} {} > upstream {}",
                        cc[hh],
                        ca[hh]
                    );
                }
                tot_up += ca.iter().sum::<f64>();
                tot_mse += cb.iter().sum::<f64>();
                tot_m += cc.iter().sum::<f64>();
            }
            eprintln!(
                "{ty}: score error vs upstream: squared-error search {:.3}, metric {:.3}",
                tot_mse / tot_up,
                tot_m / tot_up
            );
            assert!(
                tot_m < 0.8 * tot_mse,
                "{ty}: metric {tot_m} vs mse search {tot_mse}"
            );
        }
    }

    #[test]
    fn bad_metrics_are_errors() {
        assert!(HeadMetric::new(&[1.0; 48 * 48], 48, 0.01).is_err());
        assert!(HeadMetric::new(&[1.0; 64 * 63], 64, 0.01).is_err());
        assert!(HeadMetric::new(&[f32::NAN; 32 * 32], 32, 0.01).is_err());
        assert!(HeadMetric::new(&[0.0; 32 * 32], 32, 0.01).is_err());
        let eye: Vec<f32> = (0..32 * 32).map(|k| f32::from(k / 32 == k % 32)).collect();
        let m = HeadMetric::new(&eye, 32, 0.01).unwrap();
        let mut y = [0u8; 36];
        assert!(quantize_row_best_metric(
            GgmlType::Q4_0,
            &[1.0; 64],
            std::slice::from_ref(&m),
            &mut y
        )
        .is_err());
        assert!(
            quantize_row_best_metric(GgmlType::Q4_0, &[1.0; 64], &[m.clone(), m], &mut y).is_ok()
        );
    }

    #[test]
    fn bad_weights_are_errors() {
        let x = [1f32; 32];
        let mut y = [0u8; 18];
        assert!(quantize_row_best(GgmlType::Q4_0, &x, Some(&[1.0; 31]), &mut y).is_err());
        let mut w = [1f32; 32];
        w[3] = -1.0;
        assert!(quantize_row_best(GgmlType::Q4_0, &x, Some(&w), &mut y).is_err());
        w[3] = f32::NAN;
        assert!(quantize_row_best(GgmlType::Q4_0, &x, Some(&w), &mut y).is_err());
        assert!(quantize_row_best(GgmlType::Q4_0, &x[..31], None, &mut y).is_err());
        assert!(quantize_row_best(GgmlType::Q4_0, &x, None, &mut y[..17]).is_err());
    }
}
#[cfg(test)]
mod isa_tests {
    use super::*;
    use crate::simd::{available, with_isa};

    #[test]
    fn same_bytes_on_every_isa() {
        let x: Vec<f32> = (0..64 * 3 * 64)
            .map(|i| ((i as f32 * 0.7311).sin() * 3.0 + (i % 7) as f32 * 0.1).powi(3))
            .collect();
        for ty in GgmlType::KV_QUANTIZED {
            let n = ty.row_bytes(x.len()).unwrap();
            // a metric with a strong direction, as real queries have
            let d = 64;
            let h: Vec<f32> = (0..d * d)
                .map(|k| {
                    let (i, j) = (k / d, k % d);
                    f32::from(i == j) + 5.0 * (i as f32 * 0.3).cos() * (j as f32 * 0.3).cos()
                })
                .collect();
            let heads = vec![HeadMetric::new(&h, d, 0.01).unwrap(); 3];
            let run = |isa| {
                with_isa(isa, || {
                    let mut y = vec![0u8; n];
                    quantize_row_best(ty, &x, None, &mut y).unwrap();
                    let mut z = vec![0u8; n];
                    for (xr, zr) in x
                        .chunks_exact(3 * d)
                        .zip(z.chunks_exact_mut(ty.row_bytes(3 * d).unwrap()))
                    {
                        quantize_row_best_metric(ty, xr, &heads, zr).unwrap();
                    }
                    [y, z].concat()
                })
                .unwrap()
            };
            let base = run(crate::simd::Isa::Scalar);
            for isa in available() {
                let y = run(isa);
                let first = base.iter().zip(&y).position(|(a, b)| a != b);
                assert!(
                    first.is_none(),
                    "{ty} {isa:?}: first differing byte {first:?}"
                );
            }
        }
    }
}
