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
//! * a grid of trial scales around the max-based one, on both ends of the level range;
//! * for each, nearest levels, then alternating least-squares refits of the scale (and min)
//!   and re-rounding with the f16-rounded parameters;
//! * upstream's own block is always a candidate: a block is replaced only when the search
//!   found a strictly smaller error, so no block is ever worse than upstream's (with the
//!   same weights), and a block with NaN/Inf stays upstream's.
//!
//! The output is a valid block of the requested type: upstream's `to_float` (and every
//! other reader — ggml's CPU attention, context shift, session files) decodes it as usual.
//! f16/bf16 have no choice to make and are stored as the CPU backend stores them.
use super::fp16::{f16le_to_f32, f32_to_f16le};
use super::iq4_nl::{best_index, KVALUES};
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
        GgmlType::Q8_0 => improve::<BlockQ8_0>(x, w, y),
        GgmlType::Q4_0 => improve::<BlockQ4_0>(x, w, y),
        GgmlType::Q5_0 => improve::<BlockQ5_0>(x, w, y),
        GgmlType::Q4_1 => improve::<BlockQ4_1>(x, w, y),
        GgmlType::Q5_1 => improve::<BlockQ5_1>(x, w, y),
        GgmlType::IQ4_NL => improve::<BlockIq4Nl>(x, w, y),
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
    /// upper Cholesky factor `U` of `H⁻¹` (`H⁻¹ = UᵀU`), row-major `d×d`
    u: Vec<f64>,
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
        Ok(HeadMetric { d, h: hd, u })
    }

    /// Values per head.
    pub fn dim(&self) -> usize {
        self.d
    }

    /// `eᵀ·H·e`.
    pub fn cost(&self, e: &[f64]) -> f64 {
        let d = self.d;
        (0..d)
            .map(|i| e[i] * (0..d).map(|j| self.h[i * d + j] * e[j]).sum::<f64>())
            .sum()
    }
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
/// squared error. Per head, the candidates are upstream's blocks, the squared-error search's
/// blocks, and levels rounded one value at a time with the error carried to the values not
/// yet rounded through `H⁻¹`'s Cholesky factor (the optimal-brain-quantization update
/// of GPTQ, arXiv 2210.17323, here with `H` from the queries) on the search's scales; the
/// one with the smallest `eᵀ·H·e` is stored, so no head costs more than upstream's blocks
/// under the metric. Heads with NaN/Inf keep upstream's blocks.
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
        GgmlType::Q8_0 => improve_metric::<BlockQ8_0>(x, heads, y),
        GgmlType::Q4_0 => improve_metric::<BlockQ4_0>(x, heads, y),
        GgmlType::Q5_0 => improve_metric::<BlockQ5_0>(x, heads, y),
        GgmlType::Q4_1 => improve_metric::<BlockQ4_1>(x, heads, y),
        GgmlType::Q5_1 => improve_metric::<BlockQ5_1>(x, heads, y),
        GgmlType::IQ4_NL => improve_metric::<BlockIq4Nl>(x, heads, y),
        _ => Ok(()),
    }
}

fn improve_metric<B: Search>(x: &[f32], heads: &[HeadMetric], y: &mut [u8]) -> Result<()> {
    let blocks = as_blocks_mut::<B>(y)?;
    let d = heads[0].d;
    let nb = d / QK;
    let ones = [1f32; QK];
    let mut e = vec![0f64; d];
    let mut w = vec![0f64; d];
    let mut dq = vec![0f32; d];
    for ((xh, yh), m) in x
        .chunks_exact(d)
        .zip(blocks.chunks_exact_mut(nb))
        .zip(heads)
    {
        if !xh.iter().all(|v| v.is_finite()) {
            continue;
        }
        let mut cost_of = |bs: &[B], e: &mut [f64]| -> f64 {
            B::dequantize_row(bs, &mut dq);
            for ((ei, xi), qi) in e.iter_mut().zip(xh).zip(&dq) {
                *ei = *xi as f64 - *qi as f64;
            }
            m.cost(e)
        };
        let mut best: Vec<B> = yh.to_vec();
        let mut best_cost = cost_of(&best, &mut e);
        if !best_cost.is_finite() {
            best_cost = f64::INFINITY;
        }
        // the squared-error search's blocks
        let mut mse: Vec<B> = yh.to_vec();
        for (xb, b) in xh.chunks_exact(QK).zip(mse.iter_mut()) {
            search_into(b, xb.try_into().expect("QK"), &ones);
        }
        // error-feedback rounding on the grids of both candidates
        for grids_from in [mse.clone(), yh.to_vec()] {
            let grids: Vec<Grid> = grids_from.iter().map(|b| b.grid()).collect();
            let mut cand = grids_from;
            for (i, wi) in w.iter_mut().enumerate() {
                *wi = xh[i] as f64;
            }
            let mut lv = vec![[0u8; QK]; nb];
            for i in 0..d {
                let (idx, val) = grids[i / QK].nearest(w[i] as f32);
                lv[i / QK][i % QK] = idx;
                let err = (w[i] - val as f64) / m.u[i * d + i];
                let ui = &m.u[i * d..(i + 1) * d];
                for j in i + 1..d {
                    w[j] -= err * ui[j];
                }
            }
            for ((c, g), l) in cand.iter_mut().zip(&grids).zip(&lv) {
                *c = B::from_levels(g, l);
            }
            let c = cost_of(&cand, &mut e);
            if c < best_cost {
                best_cost = c;
                best = cand;
            }
        }
        let c = cost_of(&mse, &mut e);
        if c < best_cost {
            best = mse;
        }
        yh.copy_from_slice(&best);
    }
    Ok(())
}

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
    /// The index of the representable value nearest to `v`, and that value.
    #[inline]
    fn nearest(&self, v: f32) -> (u8, f32) {
        match *self {
            Grid::Sym { d, lo, hi } => {
                if d == 0.0 {
                    return ((-lo) as u8, 0.0);
                }
                let l = ((v / d).round() as i32).clamp(lo, hi);
                ((l - lo) as u8, d * l as f32)
            }
            Grid::Affine { d, m, nmax } => {
                if d == 0.0 {
                    return (0, m);
                }
                let l = (((v - m) / d).round() as i32).clamp(0, nmax);
                (l as u8, (l as f32).mul_add(d, m))
            }
            Grid::Table { d } => {
                if d == 0.0 {
                    return (0, 0.0);
                }
                let i = best_index(v / d);
                (i, d * KVALUES[i as usize] as f32)
            }
        }
    }
}

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

/// Trial levels for the signed extreme of a block with levels `lo..=hi`: near `lo`
/// (upstream's choice for q4_0/q5_0) and near `hi`, in tenths.
fn sym_trials(lo: i32, hi: i32) -> impl Iterator<Item = f32> {
    let span = ((hi - lo) as f32 / 8.0).clamp(1.0, 3.0);
    let steps = (span * 10.0) as i32;
    (-5..=steps).flat_map(move |k| {
        let t = k as f32 / 10.0;
        [lo as f32 + t, hi as f32 - t]
    })
}

/// Symmetric levels `lo..=hi` times one scale (q8_0, q4_0, q5_0): the best `(d, levels)`.
fn search_sym(x: &[f32; QK], w: &[f32; QK], lo: i32, hi: i32) -> Option<(f32, [i8; QK])> {
    let (amax, max) = super::q4_0::amax_max(x);
    if amax == 0.0 {
        return None;
    }
    let quant = |d: f32, l: &mut [i8; QK]| {
        let id = 1.0 / d;
        for (li, xi) in l.iter_mut().zip(x) {
            *li = ((xi * id).round() as i32).clamp(lo, hi) as i8;
        }
    };
    let err = |d: f32, l: &[i8; QK]| -> f64 {
        let mut e = 0f64;
        for ((xi, li), wi) in x.iter().zip(l).zip(w) {
            let r = (*xi - d * *li as f32) as f64;
            e += *wi as f64 * r * r;
        }
        e
    };
    let mut best: Option<(f64, f32, [i8; QK])> = None;
    let mut l = [0i8; QK];
    for t in sym_trials(lo, hi) {
        if t == 0.0 {
            continue;
        }
        // value = d·level: the trial maps the signed extreme `max` to level `t`.
        let Some(mut d) = f16_round(max / t) else {
            continue;
        };
        quant(d, &mut l);
        for _ in 0..3 {
            let (mut sxl, mut sll) = (0f64, 0f64);
            for ((xi, li), wi) in x.iter().zip(&l).zip(w) {
                let lf = *li as f64;
                sxl += *wi as f64 * *xi as f64 * lf;
                sll += *wi as f64 * lf * lf;
            }
            if sll <= 0.0 {
                break;
            }
            let Some(d2) = f16_round((sxl / sll) as f32) else {
                break;
            };
            if d2 == d {
                break;
            }
            d = d2;
            quant(d, &mut l);
        }
        let e = err(d, &l);
        if best.as_ref().is_none_or(|b| e < b.0) {
            best = Some((e, d, l));
        }
    }
    best.map(|(_, d, l)| (d, l))
}

/// Affine levels `0..=nmax` (q4_1, q5_1): value = `d·level + m`; the best `(d, m, levels)`.
fn search_affine(x: &[f32; QK], w: &[f32; QK], nmax: i32) -> Option<(f32, f32, [u8; QK])> {
    let (min, max) = super::q4_0::min_max(x);
    if max <= min {
        return None;
    }
    let quant = |d: f32, m: f32, l: &mut [u8; QK]| {
        let id = 1.0 / d;
        for (li, xi) in l.iter_mut().zip(x) {
            *li = (((xi - m) * id).round() as i32).clamp(0, nmax) as u8;
        }
    };
    let err = |d: f32, m: f32, l: &[u8; QK]| -> f64 {
        let mut e = 0f64;
        for ((xi, li), wi) in x.iter().zip(l).zip(w) {
            let r = (*xi - (*li as f32).mul_add(d, m)) as f64;
            e += *wi as f64 * r * r;
        }
        e
    };
    let range = max - min;
    let mut best: Option<(f64, f32, f32, [u8; QK])> = None;
    let mut l = [0u8; QK];
    for k in -15..=5 {
        let steps = nmax as f32 + k as f32 / 10.0;
        let (Some(d0), Some(m0)) = (f16_round(range / steps), Some(min)) else {
            continue;
        };
        let m0 = f16le_to_f32(f32_to_f16le(m0));
        if !m0.is_finite() {
            continue;
        }
        let (mut d, mut m) = (d0, m0);
        quant(d, m, &mut l);
        for _ in 0..3 {
            let (mut sw, mut sl, mut sll, mut sx, mut sxl) = (0f64, 0f64, 0f64, 0f64, 0f64);
            for ((xi, li), wi) in x.iter().zip(&l).zip(w) {
                let (wf, lf, xf) = (*wi as f64, *li as f64, *xi as f64);
                sw += wf;
                sl += wf * lf;
                sll += wf * lf * lf;
                sx += wf * xf;
                sxl += wf * xf * lf;
            }
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
        let e = err(d, m, &l);
        if best.as_ref().is_none_or(|b| e < b.0) {
            best = Some((e, d, m, l));
        }
    }
    best.map(|(_, d, m, l)| (d, m, l))
}

/// iq4_nl's table times one scale: the best `(d, indices)`.
fn search_table(x: &[f32; QK], w: &[f32; QK]) -> Option<(f32, [u8; QK])> {
    let (amax, max) = super::q4_0::amax_max(x);
    if amax < super::iq4_nl::GROUP_MAX_EPS {
        return None;
    }
    let quant = |d: f32, l: &mut [u8; QK]| {
        let id = 1.0 / d;
        for (li, xi) in l.iter_mut().zip(x) {
            *li = best_index(xi * id);
        }
    };
    let err = |d: f32, l: &[u8; QK]| -> f64 {
        let mut e = 0f64;
        for ((xi, li), wi) in x.iter().zip(l).zip(w) {
            let r = (*xi - d * KVALUES[*li as usize] as f32) as f64;
            e += *wi as f64 * r * r;
        }
        e
    };
    let (lo, hi) = (KVALUES[0] as f32, KVALUES[15] as f32);
    let mut best: Option<(f64, f32, [u8; QK])> = None;
    let mut l = [0u8; QK];
    for k in -10..=10 {
        for end in [lo, hi] {
            let t = end + k as f32 * if end < 0.0 { 1.0 } else { -1.0 };
            let Some(mut d) = f16_round(max / t) else {
                continue;
            };
            quant(d, &mut l);
            for _ in 0..3 {
                let (mut sxq, mut sqq) = (0f64, 0f64);
                for ((xi, li), wi) in x.iter().zip(&l).zip(w) {
                    let q = KVALUES[*li as usize] as f64;
                    sxq += *wi as f64 * *xi as f64 * q;
                    sqq += *wi as f64 * q * q;
                }
                if sqq <= 0.0 {
                    break;
                }
                let Some(d2) = f16_round((sxq / sqq) as f32) else {
                    break;
                };
                if d2 == d {
                    break;
                }
                d = d2;
                quant(d, &mut l);
            }
            let e = err(d, &l);
            if best.as_ref().is_none_or(|b| e < b.0) {
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
    fn search(x: &[f32; QK], w: &[f32; QK]) -> Option<Self> {
        let (d, l) = search_sym(x, w, -127, 127)?;
        Some(BlockQ8_0 {
            d: f32_to_f16le(d),
            qs: l,
        })
    }
    fn grid(&self) -> Grid {
        let d = f16le_to_f32(self.d);
        Grid::Sym {
            d,
            lo: -127,
            hi: 127,
        }
    }
    fn from_levels(g: &Grid, l: &[u8; QK]) -> Self {
        BlockQ8_0 {
            d: f32_to_f16le(grid_d(g)),
            qs: l.map(|i| (i as i32 - 127) as i8),
        }
    }
}

impl Search for BlockQ4_0 {
    fn search(x: &[f32; QK], w: &[f32; QK]) -> Option<Self> {
        let (d, l) = search_sym(x, w, -8, 7)?;
        Some(BlockQ4_0 {
            d: f32_to_f16le(d),
            qs: pack4(&l.map(|v| (v + 8) as u8)),
        })
    }
    fn grid(&self) -> Grid {
        let d = f16le_to_f32(self.d);
        Grid::Sym { d, lo: -8, hi: 7 }
    }
    fn from_levels(g: &Grid, l: &[u8; QK]) -> Self {
        BlockQ4_0 {
            d: f32_to_f16le(grid_d(g)),
            qs: pack4(l),
        }
    }
}

impl Search for BlockQ5_0 {
    fn search(x: &[f32; QK], w: &[f32; QK]) -> Option<Self> {
        let (d, l) = search_sym(x, w, -16, 15)?;
        let u = l.map(|v| (v + 16) as u8);
        Some(BlockQ5_0 {
            d: f32_to_f16le(d),
            qh: high_bits(&u),
            qs: pack4(&u),
        })
    }
    fn grid(&self) -> Grid {
        let d = f16le_to_f32(self.d);
        Grid::Sym { d, lo: -16, hi: 15 }
    }
    fn from_levels(g: &Grid, l: &[u8; QK]) -> Self {
        BlockQ5_0 {
            d: f32_to_f16le(grid_d(g)),
            qh: high_bits(l),
            qs: pack4(l),
        }
    }
}

impl Search for BlockQ4_1 {
    fn search(x: &[f32; QK], w: &[f32; QK]) -> Option<Self> {
        let (d, m, l) = search_affine(x, w, 15)?;
        Some(BlockQ4_1 {
            d: f32_to_f16le(d),
            m: f32_to_f16le(m),
            qs: pack4(&l),
        })
    }
    fn grid(&self) -> Grid {
        let (d, m) = (f16le_to_f32(self.d), f16le_to_f32(self.m));
        Grid::Affine { d, m, nmax: 15 }
    }
    fn from_levels(g: &Grid, l: &[u8; QK]) -> Self {
        BlockQ4_1 {
            d: f32_to_f16le(grid_d(g)),
            m: f32_to_f16le(grid_m(g)),
            qs: pack4(l),
        }
    }
}

impl Search for BlockQ5_1 {
    fn search(x: &[f32; QK], w: &[f32; QK]) -> Option<Self> {
        let (d, m, l) = search_affine(x, w, 31)?;
        Some(BlockQ5_1 {
            d: f32_to_f16le(d),
            m: f32_to_f16le(m),
            qh: high_bits(&l),
            qs: pack4(&l),
        })
    }
    fn grid(&self) -> Grid {
        let (d, m) = (f16le_to_f32(self.d), f16le_to_f32(self.m));
        Grid::Affine { d, m, nmax: 31 }
    }
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
    fn search(x: &[f32; QK], w: &[f32; QK]) -> Option<Self> {
        let (d, l) = search_table(x, w)?;
        Some(BlockIq4Nl {
            d: f32_to_f16le(d),
            qs: pack4(&l),
        })
    }
    fn grid(&self) -> Grid {
        Grid::Table {
            d: f16le_to_f32(self.d),
        }
    }
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
        for ty in [
            GgmlType::Q8_0,
            GgmlType::Q4_0,
            GgmlType::Q4_1,
            GgmlType::Q5_0,
            GgmlType::Q5_1,
            GgmlType::IQ4_NL,
        ] {
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
