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

/// A format whose blocks the search can choose.
trait Search: BlockFormat {
    /// The best block the search finds for `x` under weights `w` (finite `x` only), if any.
    fn search(x: &[f32; QK], w: &[f32; QK]) -> Option<Self>;
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
        if let Some(cand) = B::search(xb, wb) {
            // Replace upstream's block only by a strictly better one; an upstream block that
            // decodes to Inf/NaN (scale beyond f16) loses to any finite candidate.
            let (ec, eu) = (block_error(&cand, xb, wb), block_error(yb, xb, wb));
            if ec.is_finite() && (ec < eu || !eu.is_finite()) {
                *yb = cand;
            }
        }
    }
    Ok(())
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
}

impl Search for BlockQ4_0 {
    fn search(x: &[f32; QK], w: &[f32; QK]) -> Option<Self> {
        let (d, l) = search_sym(x, w, -8, 7)?;
        Some(BlockQ4_0 {
            d: f32_to_f16le(d),
            qs: pack4(&l.map(|v| (v + 8) as u8)),
        })
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
}

impl Search for BlockIq4Nl {
    fn search(x: &[f32; QK], w: &[f32; QK]) -> Option<Self> {
        let (d, l) = search_table(x, w)?;
        Some(BlockIq4Nl {
            d: f32_to_f16le(d),
            qs: pack4(&l),
        })
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
