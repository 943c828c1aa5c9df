//! The analysis behind `attnrot stats`: captured K/V/Q ([`attnrot::capture`]) → outlier
//! statistics, and the errors each candidate encoding of K and V causes in what attention
//! computes (scores `Q·Kᵀ` with the real Q, outputs `softmax(scale·QKᵀ)·V`, causal), against
//! f32.
use anyhow::{bail, Context, Result};
use attnrot::capture::{self, Event, Kind};
use attnrot::quant::best::HeadMetric;
use attnrot::quant::turbo::{SignedHadamard, TurboMse, TurboProd};
use attnrot::rotate::policy::Policy;
use attnrot::GgmlType;
use std::collections::BTreeMap;
use std::path::Path;

// ---------------------------------------------------------------------------------------
// Loading a capture
// ---------------------------------------------------------------------------------------

/// One FLASH_ATTN_EXT of a layer with the K/V it saw, all unrotated f32.
#[derive(Debug, Clone)]
pub struct Segment {
    /// Visible keys and values, `[n_keys, n_head_kv·dk]` / `[n_keys, n_head_kv·dv]`.
    pub k: Vec<f32>,
    pub v: Vec<f32>,
    pub n_keys: usize,
    /// Selected queries, `[n_head, n_sel, dk]`.
    pub q: Vec<f32>,
    pub n_sel: usize,
    /// For each selected query, the last key it sees (causal: keys `0..=pos`).
    pub pos: Vec<usize>,
}

/// A layer's captured data.
#[derive(Debug, Clone)]
pub struct Layer {
    pub layer: u32,
    pub dk: usize,
    pub dv: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub scale: f32,
    pub softcap: f32,
    /// The rotation llama.cpp had applied to the captured rows (undone on load).
    pub captured_rot: [usize; 3],
    pub cache_type: String,
    pub segments: Vec<Segment>,
}

/// Undo llama.cpp's rotation of captured rows: every `n`-chunk went through the normalized
/// Walsh–Hadamard transform, which is its own inverse.
fn unrotate(x: &mut [f32], n: usize) -> Result<()> {
    if n > 0 {
        attnrot::rotate::rotate_inplace(n, x)?;
    }
    Ok(())
}

/// `n` indices spread evenly over `0..total` (all of them if `n >= total`).
pub fn spread(total: usize, n: usize) -> Vec<usize> {
    if n >= total {
        return (0..total).collect();
    }
    (0..n).map(|i| ((2 * i + 1) * total) / (2 * n)).collect()
}

/// Load the capture in `dir`: for each layer in `layers` (all if empty), one [`Segment`] per
/// FLASH_ATTN_EXT, pairing it with the cache as the K/V events before it left it. Queries are
/// the rows of the ubatch the preceding K event wrote (one sequence, cache filled in order, as
/// `llama-perplexity -b <ctx>` runs); `max_queries` of them per segment, spread evenly.
pub fn load(dir: &Path, layers: &[u32], max_queries: usize) -> Result<Vec<Layer>> {
    let events = capture::read_manifest(dir).map_err(anyhow::Error::msg)?;
    if events.is_empty() {
        bail!(
            "the capture in {} is empty (did the backend claim SET_ROWS and FLASH_ATTN_EXT? an f16 cache needs ATTNROT_FA_ALL=1 and -fa on)",
            dir.display()
        );
    }
    let mut by_layer: BTreeMap<u32, Vec<&Event>> = BTreeMap::new();
    for e in &events {
        if layers.is_empty() || layers.contains(&e.layer) {
            by_layer.entry(e.layer).or_default().push(e);
        }
    }
    if by_layer.is_empty() {
        bail!("the capture has none of the layers {layers:?}");
    }
    let mut out = Vec::new();
    for (layer, evs) in by_layer {
        if let Some(l) = load_layer(dir, layer, &evs, max_queries)? {
            out.push(l);
        }
    }
    if out.is_empty() {
        bail!("the capture has no layer with K, V and Q events (capture limit too small?)");
    }
    Ok(out)
}

fn load_layer(dir: &Path, layer: u32, evs: &[&Event], max_queries: usize) -> Result<Option<Layer>> {
    let Some(q0) = evs.iter().find(|e| e.kind == Kind::Q) else {
        return Ok(None);
    };
    let (dk, dv, n_head_kv) = (q0.head_dim, q0.dv, q0.n_head_kv);
    let n_head = q0.shape[1];
    if dk == 0 || dv == 0 || n_head_kv == 0 || n_head % n_head_kv != 0 {
        bail!("layer {layer}: bad head layout in {}", q0.file);
    }
    let mut lay = Layer {
        layer,
        dk,
        dv,
        n_head,
        n_head_kv,
        scale: q0.scale,
        softcap: q0.softcap,
        captured_rot: [0; 3],
        cache_type: q0.cache_type.clone(),
        segments: Vec::new(),
    };
    // the cache image: row index -> row
    let mut kc: Vec<Option<Vec<f32>>> = Vec::new();
    let mut vc: Vec<Option<Vec<f32>>> = Vec::new();
    let mut last_k_idx: Option<Vec<i64>> = None;
    for e in evs {
        let (mut data, index) = capture::read_event(dir, e).map_err(anyhow::Error::msg)?;
        let rot = if e.rotated { e.rot_n } else { 0 };
        match e.kind {
            Kind::K | Kind::V => {
                let (cache, width) = if e.kind == Kind::K {
                    (&mut kc, n_head_kv * dk)
                } else {
                    (&mut vc, n_head_kv * dv)
                };
                if e.shape[1] != width {
                    bail!(
                        "layer {layer}: {} rows of {} values, the attention's layout needs {width}",
                        e.file,
                        e.shape[1]
                    );
                }
                unrotate(&mut data, rot).with_context(|| format!("unrotating {}", e.file))?;
                lay.captured_rot[if e.kind == Kind::K { 0 } else { 1 }] = rot;
                let index = index.unwrap_or_default();
                for (row, &i) in data.chunks_exact(width).zip(&index) {
                    let i = usize::try_from(i).context("negative cache index")?;
                    if cache.len() <= i {
                        cache.resize(i + 1, None);
                    }
                    cache[i] = Some(row.to_vec());
                }
                if e.kind == Kind::K {
                    last_k_idx = Some(index);
                }
            }
            Kind::Q => {
                if e.shape[0] != 1 {
                    bail!("layer {layer}: {} has {} sequences; stats needs one sequence per batch (llama-perplexity -b = -c)", e.file, e.shape[0]);
                }
                if e.head_dim != dk || e.shape[1] != n_head || e.shape[3] != dk {
                    bail!("layer {layer}: the head layout changes between events");
                }
                let n_q = e.shape[2];
                let Some(idx) = last_k_idx.take() else {
                    continue; // K event lost to the size limit
                };
                if idx.len() != n_q {
                    bail!(
                        "layer {layer}: {} has {n_q} queries but the last K write had {} rows",
                        e.file,
                        idx.len()
                    );
                }
                unrotate(&mut data, rot).with_context(|| format!("unrotating {}", e.file))?;
                lay.captured_rot[2] = rot;
                let n_keys = idx.iter().copied().max().unwrap_or(-1) + 1;
                let n_keys = n_keys as usize;
                let mut k = Vec::with_capacity(n_keys * n_head_kv * dk);
                let mut v = Vec::with_capacity(n_keys * n_head_kv * dv);
                let mut complete = true;
                for j in 0..n_keys {
                    match (
                        kc.get(j).and_then(|r| r.as_ref()),
                        vc.get(j).and_then(|r| r.as_ref()),
                    ) {
                        (Some(kr), Some(vr)) => {
                            k.extend_from_slice(kr);
                            v.extend_from_slice(vr);
                        }
                        _ => complete = false,
                    }
                }
                if !complete {
                    continue; // a K/V event lost to the size limit
                }
                let sel = spread(n_q, max_queries);
                let mut q = Vec::with_capacity(n_head * sel.len() * dk);
                for h in 0..n_head {
                    for &i in &sel {
                        let o = (h * n_q + i) * dk;
                        q.extend_from_slice(&data[o..o + dk]);
                    }
                }
                lay.segments.push(Segment {
                    k,
                    v,
                    n_keys,
                    n_sel: sel.len(),
                    pos: sel.iter().map(|&i| idx[i] as usize).collect(),
                    q,
                });
            }
        }
    }
    Ok((!lay.segments.is_empty()).then_some(lay))
}

// ---------------------------------------------------------------------------------------
// Outlier statistics
// ---------------------------------------------------------------------------------------

/// Outlier statistics of a matrix of rows (tokens) × channels.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Outliers {
    /// Largest |x| over the RMS of all values.
    pub max_over_rms: f64,
    /// Largest channel RMS over the median channel RMS (outlier channels).
    pub channel_rms_ratio: f64,
    /// Largest channel max|x| over the RMS of all values.
    pub channel_max_over_rms: f64,
    /// Kurtosis `E[x⁴]/E[x²]²` of all values (3 for a Gaussian).
    pub kurtosis: f64,
    /// Mean over channels of each channel's kurtosis about its mean.
    pub channel_kurtosis: f64,
    /// Mean over blocks of 32 of max|x| / RMS of the block (what a block format's scale sees).
    pub block_crest: f64,
}

pub fn outliers(x: &[f32], width: usize) -> Outliers {
    let rows = x.len() / width;
    if rows == 0 || width == 0 {
        return Outliers::default();
    }
    let (mut s2, mut s4, mut mx) = (0f64, 0f64, 0f64);
    for &v in x {
        let v = v as f64;
        s2 += v * v;
        s4 += v * v * v * v;
        mx = mx.max(v.abs());
    }
    let n = x.len() as f64;
    let rms = (s2 / n).sqrt().max(f64::MIN_POSITIVE);
    let mut ch_rms = Vec::with_capacity(width);
    let (mut ch_max, mut kurt_sum) = (0f64, 0f64);
    for c in 0..width {
        let col = || x.iter().skip(c).step_by(width).map(|&v| v as f64);
        let mean = col().sum::<f64>() / rows as f64;
        let (mut m2, mut m4, mut r2, mut cm) = (0f64, 0f64, 0f64, 0f64);
        for v in col() {
            let d = v - mean;
            m2 += d * d;
            m4 += d * d * d * d;
            r2 += v * v;
            cm = cm.max(v.abs());
        }
        ch_rms.push((r2 / rows as f64).sqrt());
        ch_max = ch_max.max(cm);
        let (m2, m4) = (m2 / rows as f64, m4 / rows as f64);
        kurt_sum += if m2 > 0.0 { m4 / (m2 * m2) } else { 0.0 };
    }
    let mut sorted = ch_rms.clone();
    sorted.sort_by(|a, b| a.total_cmp(b));
    let median = sorted[width / 2].max(f64::MIN_POSITIVE);
    let (mut crest, mut nb) = (0f64, 0usize);
    for b in x.chunks_exact(32) {
        let r = (b.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / 32.0).sqrt();
        if r > 0.0 {
            crest += b.iter().fold(0f64, |m, &v| m.max((v as f64).abs())) / r;
            nb += 1;
        }
    }
    Outliers {
        max_over_rms: mx / rms,
        channel_rms_ratio: sorted[width - 1] / median,
        channel_max_over_rms: ch_max / rms,
        kurtosis: s4 / n / (s2 / n).powi(2).max(f64::MIN_POSITIVE),
        channel_kurtosis: kurt_sum / width as f64,
        block_crest: if nb > 0 { crest / nb as f64 } else { 0.0 },
    }
}

// ---------------------------------------------------------------------------------------
// Candidate encodings
// ---------------------------------------------------------------------------------------

/// A quantizer for the ggml block formats: writes valid blocks of `ty` for the row `x`.
#[derive(Clone, Copy)]
pub struct Quantizer {
    pub name: &'static str,
    pub quantize: fn(GgmlType, &[f32], &mut [u8]) -> attnrot::Result<()>,
}

fn upstream_quantize(ty: GgmlType, x: &[f32], y: &mut [u8]) -> attnrot::Result<()> {
    attnrot::quant::format(ty)?.quantize_row(x, y)
}

fn quality_quantize(ty: GgmlType, x: &[f32], y: &mut [u8]) -> attnrot::Result<()> {
    attnrot::quant::best::quantize_row_best(ty, x, None, y)
}

/// Attnrot's quality mode without a policy (`quant::best`, error-minimizing, unweighted);
/// also the V side of the "quality + policy" candidates.
pub const QUALITY: Quantizer = Quantizer {
    name: "attnrot quality",
    quantize: quality_quantize,
};

/// The quantizers compared for every ggml format: upstream's (what ggml's CPU backend
/// stores) and [`QUALITY`].
pub const QUANTIZERS: &[Quantizer] = &[
    Quantizer {
        name: "upstream",
        quantize: upstream_quantize,
    },
    QUALITY,
];

/// The name of the quality mode with a policy in candidate names and families.
pub const POLICY_FAMILY: &str = "attnrot quality + policy";

/// The rotation applied before a ggml format (and undone after decoding).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Rot {
    /// No rotation.
    None,
    /// Normalized Walsh–Hadamard on chunks of upstream's size (attn-rot).
    Wht,
    /// Random signs, then the Walsh–Hadamard transform.
    WhtSigns,
}

impl Rot {
    pub fn name(self) -> &'static str {
        match self {
            Rot::None => "none",
            Rot::Wht => "wht",
            Rot::WhtSigns => "wht+signs",
        }
    }
}

/// How K or V rows are encoded.
#[derive(Clone, Copy)]
pub enum Codec {
    Ggml(GgmlType, Quantizer),
    /// K only: the quality mode with a policy, as the backend writes K (the score-error
    /// search with the policy's metric of the layer, in the candidate's rotation space).
    GgmlMetric(GgmlType),
    /// TurboQuant_mse at this many bits per coordinate, per head vector.
    TurboMse(u32),
    /// TurboQuant_mse at this many bits per coordinate plus one more bit for `d/2 − 16` of
    /// the `d` coordinates: with the f16 norm exactly half a bit per value more (q4_0's 4.5
    /// and q8_0's 8.5 bits at any head size ≥ 32; at head 64 a quarter of the coordinates).
    TurboMseHalf(u32),
    /// TurboQuant_prod (mse at bits − 1 plus 1-bit QJL), per head vector.
    TurboProd(u32),
}

impl Codec {
    /// Bits per stored value (scales, norms counted) for head size `d`.
    pub fn bits(&self, d: usize) -> f64 {
        match *self {
            Codec::Ggml(ty, _) | Codec::GgmlMetric(ty) => {
                ty.row_bytes(ty.block_size()).unwrap_or(0) as f64 * 8.0 / ty.block_size() as f64
            }
            Codec::TurboMse(b) => b as f64 + 16.0 / d as f64,
            Codec::TurboMseHalf(b) => {
                b as f64 + turbo_half_extra(d) as f64 / d as f64 + 16.0 / d as f64
            }
            Codec::TurboProd(b) => b as f64 + 32.0 / d as f64,
        }
    }
}

/// Coordinates of a head of `d` that [`Codec::TurboMseHalf`] gives one more bit: `d/2 − 16`,
/// so that with the 16-bit norm the head costs half a bit per value more (0 below d = 32).
pub fn turbo_half_extra(d: usize) -> usize {
    (d / 2).saturating_sub(16)
}

/// One candidate: how K and V are encoded.
#[derive(Clone)]
pub struct Candidate {
    pub name: String,
    /// Series for the chart and grouping: e.g. "upstream, rot wht", "TurboQuant_mse".
    pub family: String,
    pub rot: Rot,
    pub k: Codec,
    pub v: Codec,
}

/// Upstream's rotation size for a K head of `d` (for V: 64), or the largest power of two
/// dividing `d` when upstream would not rotate it (d not a multiple of 64).
pub fn rot_size(d: usize, is_k: bool) -> usize {
    if d.is_multiple_of(64) {
        if is_k {
            attnrot::rotate::upstream_n_rot_k(d)
        } else {
            attnrot::rotate::UPSTREAM_N_ROT_V
        }
    } else {
        1 << d.trailing_zeros()
    }
}

/// Seed of the random signs / TurboQuant rotations / QJL matrices (fixed: one encoder for
/// every layer and head, as a real cache would use).
pub const SEED: u64 = 0x5eed_a77e_0001;

/// The candidate list: every ggml format with every quantizer and rotation variant, then
/// TurboQuant_mse at 2, 3, 4 and 8 bits (and at 4.5 and 8.5 bits per value with the norm,
/// the bits of q4_0 and q8_0, see [`Codec::TurboMseHalf`]) and TurboQuant_prod (for K; V uses
/// _mse at the same bits) at 2, 3, 4 and 8 bits.
///
/// `with_policy`: also the quality mode as the backend runs it with a policy (K by the
/// score-error search with the policy's metric, V by the squared-error search), for every
/// quantized format with rotation none and Walsh–Hadamard (the spaces a policy has metrics
/// for), named "… (attnrot quality + policy)".
pub fn candidates(with_policy: bool) -> Vec<Candidate> {
    let mut v = Vec::new();
    for q in QUANTIZERS {
        for ty in GgmlType::KV {
            for rot in [Rot::None, Rot::Wht, Rot::WhtSigns] {
                v.push(Candidate {
                    name: format!("{} rot {} ({})", ty.name(), rot.name(), q.name),
                    family: format!("{}, rot {}", q.name, rot.name()),
                    rot,
                    k: Codec::Ggml(ty, *q),
                    v: Codec::Ggml(ty, *q),
                });
            }
        }
    }
    if with_policy {
        for ty in GgmlType::KV_QUANTIZED {
            for rot in [Rot::None, Rot::Wht] {
                v.push(Candidate {
                    name: format!("{} rot {} ({})", ty.name(), rot.name(), POLICY_FAMILY),
                    family: format!("{POLICY_FAMILY}, rot {}", rot.name()),
                    rot,
                    k: Codec::GgmlMetric(ty),
                    v: Codec::Ggml(ty, QUALITY),
                });
            }
        }
    }
    for b in [2u32, 3, 4, 8] {
        v.push(Candidate {
            name: format!("TurboQuant_mse {b}b"),
            family: "TurboQuant_mse".into(),
            rot: Rot::None,
            k: Codec::TurboMse(b),
            v: Codec::TurboMse(b),
        });
    }
    for b in [4u32, 8] {
        // d/2 − 16 of the coordinates at b+1 bits: with the norm b + 0.5 bits per value, the
        // bits of q4_0 / q8_0, at any head size
        v.push(Candidate {
            name: format!("TurboQuant_mse {b}.5b/value"),
            family: "TurboQuant_mse".into(),
            rot: Rot::None,
            k: Codec::TurboMseHalf(b),
            v: Codec::TurboMseHalf(b),
        });
    }
    for b in [2u32, 3, 4, 8] {
        v.push(Candidate {
            name: format!("TurboQuant_prod {b}b (V _mse {b}b)"),
            family: "TurboQuant_prod".into(),
            rot: Rot::None,
            k: Codec::TurboProd(b),
            v: Codec::TurboMse(b),
        });
    }
    v
}

/// Encode and decode rows of `width = heads·d` values with `codec` after rotation `rot`
/// (chunks of `rn`); returns the decoded rows in the original (unrotated) space. `metric`:
/// the K heads' metrics for [`Codec::GgmlMetric`] (in the space `rot` gives).
pub fn roundtrip(
    codec: &Codec,
    rot: Rot,
    x: &[f32],
    width: usize,
    d: usize,
    rn: usize,
    metric: Option<&[HeadMetric]>,
) -> Result<Vec<f32>> {
    let mut out = vec![0f32; x.len()];
    match *codec {
        Codec::Ggml(ty, _) | Codec::GgmlMetric(ty) => {
            let signs = match rot {
                Rot::WhtSigns => Some(SignedHadamard::new(rn, SEED)?),
                _ => None,
            };
            let fmt = attnrot::quant::format(ty)?;
            let mut buf = vec![0u8; ty.row_bytes(width)?];
            let mut tmp = vec![0f32; width];
            for (xr, or) in x.chunks_exact(width).zip(out.chunks_exact_mut(width)) {
                match (rot, &signs) {
                    (Rot::None, _) => tmp.copy_from_slice(xr),
                    (Rot::Wht, _) => attnrot::rotate::rotate(rn, xr, &mut tmp)?,
                    (Rot::WhtSigns, Some(s)) => {
                        for (a, b) in xr.chunks_exact(rn).zip(tmp.chunks_exact_mut(rn)) {
                            s.forward(a, b)?;
                        }
                    }
                    (Rot::WhtSigns, None) => unreachable!(),
                }
                match (codec, metric) {
                    (Codec::Ggml(_, q), _) => (q.quantize)(ty, &tmp, &mut buf)?,
                    (_, Some(m)) => {
                        attnrot::quant::best::quantize_row_best_metric(ty, &tmp, m, &mut buf)?
                    }
                    (_, None) => bail!("{}: no policy metric for this layer", ty.name()),
                }
                fmt.dequantize_row(&buf, &mut tmp)?;
                match (rot, &signs) {
                    (Rot::None, _) => or.copy_from_slice(&tmp),
                    (Rot::Wht, _) => attnrot::rotate::rotate(rn, &tmp, or)?,
                    (Rot::WhtSigns, Some(s)) => {
                        for (a, b) in tmp.chunks_exact(rn).zip(or.chunks_exact_mut(rn)) {
                            s.inverse(a, b)?;
                        }
                    }
                    (Rot::WhtSigns, None) => unreachable!(),
                }
            }
        }
        Codec::TurboMse(b) => {
            let e = TurboMse::new(d, b, SEED)?;
            for (xr, or) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
                e.roundtrip(xr, or)?;
            }
        }
        Codec::TurboMseHalf(b) => {
            let e = TurboMse::new_mixed(d, b, turbo_half_extra(d), SEED)?;
            for (xr, or) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
                e.roundtrip(xr, or)?;
            }
        }
        Codec::TurboProd(b) => {
            let e = TurboProd::new(d, b, SEED)?;
            for (xr, or) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
                e.roundtrip(xr, or)?;
            }
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------
// Attention errors
// ---------------------------------------------------------------------------------------

#[inline]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

/// Squared error sums of one layer and candidate (relative errors are `sqrt(err/ref)`).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Sums {
    pub k_err: f64,
    pub k_ref: f64,
    pub v_err: f64,
    pub v_ref: f64,
    pub s_err: f64,
    pub s_ref: f64,
    pub o_err: f64,
    pub o_ref: f64,
    /// Output error with only K encoded (V exact).
    pub ok_err: f64,
}

impl Sums {
    fn add(&mut self, o: &Sums) {
        self.k_err += o.k_err;
        self.k_ref += o.k_ref;
        self.v_err += o.v_err;
        self.v_ref += o.v_ref;
        self.s_err += o.s_err;
        self.s_ref += o.s_ref;
        self.o_err += o.o_err;
        self.o_ref += o.o_ref;
        self.ok_err += o.ok_err;
    }
    pub fn metrics(&self) -> Metrics {
        let r = |e: f64, r: f64| if r > 0.0 { (e / r).sqrt() } else { 0.0 };
        Metrics {
            k_rel_rmse: r(self.k_err, self.k_ref),
            v_rel_rmse: r(self.v_err, self.v_ref),
            score_rel_err: r(self.s_err, self.s_ref),
            out_rel_err: r(self.o_err, self.o_ref),
            out_k_only_rel_err: r(self.ok_err, self.o_ref),
        }
    }
}

/// Relative errors (root of summed squared errors over summed squares) of one layer.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Metrics {
    /// `‖K̂ − K‖ / ‖K‖` over all rows (root of the relative MSE).
    pub k_rel_rmse: f64,
    pub v_rel_rmse: f64,
    /// `‖Ŝ − S‖ / ‖S‖` over all causal (query, key) pairs of every head, `S = Q·Kᵀ`.
    pub score_rel_err: f64,
    /// `‖Ô − O‖ / ‖O‖`, `O = softmax(scale·S)·V` per query and head, K and V encoded.
    pub out_rel_err: f64,
    /// The same with only K encoded (V exact): K's share of the output error.
    pub out_k_only_rel_err: f64,
}

fn sq_err(a: &[f32], b: &[f32]) -> (f64, f64) {
    let mut e = 0f64;
    let mut r = 0f64;
    for (&x, &y) in a.iter().zip(b) {
        e += ((x - y) as f64).powi(2);
        r += (x as f64).powi(2);
    }
    (e, r)
}

/// Scores and softmax output of the selected queries of `seg` with keys `k` and values `v`,
/// accumulating squared differences against the reference `(s_ref, o_ref)` when given, or
/// returning the values. Scores and outputs per (head, query), keys `0..=pos`.
fn attend(
    lay: &Layer,
    seg: &Segment,
    k: &[f32],
    v: &[f32],
    s_out: &mut Vec<f32>,
    o_out: &mut Vec<f32>,
) {
    let (dk, dv, hk) = (lay.dk, lay.dv, lay.n_head_kv);
    let group = lay.n_head / hk;
    s_out.clear();
    o_out.clear();
    let mut p = vec![0f32; seg.n_keys];
    let mut o = vec![0f64; dv];
    for h in 0..lay.n_head {
        let kh = h / group;
        for (qi, &pos) in seg.pos.iter().enumerate() {
            let q = &seg.q[(h * seg.n_sel + qi) * dk..][..dk];
            let mut mx = f32::NEG_INFINITY;
            for j in 0..=pos {
                let s = dot(q, &k[(j * hk + kh) * dk..][..dk]);
                s_out.push(s);
                let l = if lay.softcap != 0.0 {
                    lay.softcap * (s * lay.scale / lay.softcap).tanh()
                } else {
                    s * lay.scale
                };
                p[j] = l;
                mx = mx.max(l);
            }
            let mut sum = 0f64;
            o.iter_mut().for_each(|x| *x = 0.0);
            for j in 0..=pos {
                let w = ((p[j] - mx) as f64).exp();
                sum += w;
                let vr = &v[(j * hk + kh) * dv..][..dv];
                for (a, &b) in o.iter_mut().zip(vr) {
                    *a += w * b as f64;
                }
            }
            o_out.extend(o.iter().map(|&x| (x / sum) as f32));
        }
    }
}

/// Reference scores and outputs of every segment of a layer (f32 K and V).
pub struct Reference {
    pub scores: Vec<Vec<f32>>,
    pub outputs: Vec<Vec<f32>>,
}

pub fn reference(lay: &Layer) -> Reference {
    let (mut scores, mut outputs) = (Vec::new(), Vec::new());
    for seg in &lay.segments {
        let (mut s, mut o) = (Vec::new(), Vec::new());
        attend(lay, seg, &seg.k, &seg.v, &mut s, &mut o);
        scores.push(s);
        outputs.push(o);
    }
    Reference { scores, outputs }
}

/// The errors of one candidate on one layer.
/// `policy` gives the K metrics of [`Codec::GgmlMetric`] candidates.
pub fn evaluate(
    lay: &Layer,
    reference: &Reference,
    c: &Candidate,
    policy: Option<&Policy>,
) -> Result<Metrics> {
    let metric = match (c.k, policy) {
        (Codec::GgmlMetric(_), Some(p)) => {
            let rotated = match c.rot {
                Rot::None => false,
                Rot::Wht => true,
                Rot::WhtSigns => bail!("the policy has no metrics for random signs"),
            };
            let m = p
                .k_metric(lay.layer as usize, rotated)
                .with_context(|| format!("the policy has no metrics for layer {}", lay.layer))?;
            if m.len() != lay.n_head_kv || m.iter().any(|h| h.dim() != lay.dk) {
                bail!(
                    "the policy's layer {} has {} heads of {}, the capture {} of {}: another model?",
                    lay.layer,
                    m.len(),
                    m.first().map_or(0, |h| h.dim()),
                    lay.n_head_kv,
                    lay.dk
                );
            }
            Some(m)
        }
        (Codec::GgmlMetric(_), None) => bail!("{} needs a policy", c.name),
        _ => None,
    };
    let mut total = Sums::default();
    let (wk, wv) = (lay.n_head_kv * lay.dk, lay.n_head_kv * lay.dv);
    let (mut s, mut o) = (Vec::new(), Vec::new());
    for (si, seg) in lay.segments.iter().enumerate() {
        let k = roundtrip(
            &c.k,
            c.rot,
            &seg.k,
            wk,
            lay.dk,
            rot_size(lay.dk, true),
            metric,
        )?;
        let v = roundtrip(
            &c.v,
            c.rot,
            &seg.v,
            wv,
            lay.dv,
            rot_size(lay.dv, false),
            None,
        )?;
        attend(lay, seg, &k, &v, &mut s, &mut o);
        let mut part = Sums::default();
        (part.k_err, part.k_ref) = sq_err(&seg.k, &k);
        (part.v_err, part.v_ref) = sq_err(&seg.v, &v);
        (part.s_err, part.s_ref) = sq_err(&reference.scores[si], &s);
        (part.o_err, part.o_ref) = sq_err(&reference.outputs[si], &o);
        attend(lay, seg, &k, &seg.v, &mut s, &mut o);
        (part.ok_err, _) = sq_err(&reference.outputs[si], &o);
        total.add(&part);
    }
    Ok(total.metrics())
}

/// Share of the reference encoding's error reduction over `base` that `x` gets:
/// `(base − x) / (base − reference)` (None when the reference does not improve on base).
pub fn share(base: f64, x: f64, reference: f64) -> Option<f64> {
    let gain = base - reference;
    (gain > 0.0).then(|| (base - x) / gain)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn gauss(rng: &mut rand::rngs::SmallRng) -> f32 {
        // Box-Muller
        let (u, v): (f64, f64) = (rng.random::<f64>().max(1e-300), rng.random());
        ((-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()) as f32
    }

    /// A synthetic layer: 4 query heads, 2 KV heads, head 64, 96 keys; K with one outlier
    /// channel per head (as real K has).
    fn synthetic(seed: u64) -> Layer {
        let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
        let (dk, hk, n) = (64usize, 2usize, 96usize);
        let mut k = vec![0f32; n * hk * dk];
        for (i, x) in k.iter_mut().enumerate() {
            *x = gauss(&mut rng) * if i % dk == 5 { 20.0 } else { 1.0 };
        }
        let v: Vec<f32> = (0..n * hk * dk).map(|_| gauss(&mut rng)).collect();
        let sel = spread(n, 24);
        let q: Vec<f32> = (0..4 * sel.len() * dk)
            .map(|_| gauss(&mut rng) * 0.5)
            .collect();
        Layer {
            layer: 0,
            dk,
            dv: dk,
            n_head: 4,
            n_head_kv: hk,
            scale: 1.0 / 8.0,
            softcap: 0.0,
            captured_rot: [0; 3],
            cache_type: "f16".into(),
            segments: vec![Segment {
                k,
                v,
                n_keys: n,
                n_sel: sel.len(),
                pos: sel,
                q,
            }],
        }
    }

    fn metrics(lay: &Layer, name: &str) -> Metrics {
        let r = reference(lay);
        let c = candidates(false)
            .into_iter()
            .find(|c| c.name == name)
            .unwrap();
        evaluate(lay, &r, &c, None).unwrap()
    }

    /// A policy for the synthetic layer from its own queries: `H = E[q·qᵀ]` per KV head, in
    /// the plain space and rotated (`R·H·R`, the normalized transform is symmetric).
    fn policy_for(lay: &Layer, n_head_kv: usize) -> Policy {
        let (d, seg) = (lay.dk, &lay.segments[0]);
        let group = lay.n_head / lay.n_head_kv;
        let mut plain = vec![0f32; n_head_kv * d * d];
        for kh in 0..n_head_kv.min(lay.n_head_kv) {
            for h in kh * group..(kh + 1) * group {
                for qi in 0..seg.n_sel {
                    let q = &seg.q[(h * seg.n_sel + qi) * d..][..d];
                    for i in 0..d {
                        for j in 0..d {
                            plain[kh * d * d + i * d + j] += q[i] * q[j];
                        }
                    }
                }
            }
        }
        for kh in lay.n_head_kv..n_head_kv {
            for i in 0..d {
                plain[kh * d * d + i * d + i] = 1.0; // heads the layer does not have
            }
        }
        let mut rot = plain.clone();
        for m in rot.chunks_exact_mut(d * d) {
            attnrot::rotate::rotate_inplace(d, m).unwrap(); // rows: H·R
            let mut t: Vec<f32> = (0..d * d).map(|k| m[(k % d) * d + k / d]).collect();
            attnrot::rotate::rotate_inplace(d, &mut t).unwrap(); // (R·H·R)ᵀ rows
            m.copy_from_slice(&t);
        }
        let data = attnrot::rotate::policy::PolicyData {
            fingerprint: attnrot::rotate::policy::Fingerprint {
                n_layer: 1,
                n_head_kv,
                head_dim_k: d,
            },
            model: "synthetic",
            calibration: serde_json::json!({}),
            damping: 0.01,
            rot: &[rot],
            plain: &[plain],
            rotate_k: Default::default(),
            rotate_v: Default::default(),
        };
        Policy::from_bytes(&data.to_bytes().unwrap()).unwrap()
    }

    #[test]
    fn policy_candidates_cut_the_score_error_and_need_a_matching_policy() {
        let lay = synthetic(4);
        let r = reference(&lay);
        let pol = policy_for(&lay, lay.n_head_kv);
        let cands = candidates(true);
        for rot in ["none", "wht"] {
            let find = |n: &str| cands.iter().find(|c| c.name == n).unwrap();
            let up = find(&format!("q4_0 rot {rot} (upstream)"));
            let pc = find(&format!("q4_0 rot {rot} ({POLICY_FAMILY})"));
            let (mu, mp) = (
                evaluate(&lay, &r, up, None).unwrap(),
                evaluate(&lay, &r, pc, Some(&pol)).unwrap(),
            );
            assert!(
                mp.score_rel_err < 0.9 * mu.score_rel_err,
                "rot {rot}: policy {} vs upstream {}",
                mp.score_rel_err,
                mu.score_rel_err
            );
            assert!(evaluate(&lay, &r, pc, None).is_err());
        }
        let pc = cands
            .iter()
            .find(|c| c.name == format!("q4_0 rot wht ({POLICY_FAMILY})"))
            .unwrap();
        let other = policy_for(&lay, lay.n_head_kv + 1);
        let e = evaluate(&lay, &r, pc, Some(&other)).unwrap_err();
        assert!(format!("{e:#}").contains("another model"), "{e:#}");
        assert!(candidates(false)
            .iter()
            .all(|c| !c.name.contains(POLICY_FAMILY)));
    }

    #[test]
    fn attention_math_matches_a_direct_computation() {
        let lay = synthetic(1);
        let seg = &lay.segments[0];
        let r = reference(&lay);
        // head 3 (KV head 1), selected query 5
        let (h, qi) = (3usize, 5usize);
        let pos = seg.pos[qi];
        let q = &seg.q[(h * seg.n_sel + qi) * 64..][..64];
        let s: Vec<f64> = (0..=pos)
            .map(|j| {
                (0..64)
                    .map(|c| q[c] as f64 * seg.k[(j * 2 + 1) * 64 + c] as f64)
                    .sum()
            })
            .collect();
        let m = s.iter().cloned().fold(f64::MIN, f64::max);
        let w: Vec<f64> = s.iter().map(|x| ((x - m) / 8.0).exp()).collect();
        let z: f64 = w.iter().sum();
        let o: Vec<f64> = (0..64)
            .map(|c| {
                (0..=pos)
                    .map(|j| w[j] * seg.v[(j * 2 + 1) * 64 + c] as f64)
                    .sum::<f64>()
                    / z
            })
            .collect();
        // offsets in the reference: scores of heads 0..h and queries before qi
        let before: usize = (0..h)
            .map(|_| seg.pos.iter().map(|p| p + 1).sum::<usize>())
            .sum::<usize>()
            + seg.pos[..qi].iter().map(|p| p + 1).sum::<usize>();
        for (j, &sj) in s.iter().enumerate() {
            assert!((r.scores[0][before + j] as f64 - sj).abs() < 1e-3 * (1.0 + sj.abs()));
        }
        let ob = (h * seg.n_sel + qi) * 64;
        for (c, &oc) in o.iter().enumerate() {
            assert!((r.outputs[0][ob + c] as f64 - oc).abs() < 1e-4, "{c}");
        }
    }

    #[test]
    fn known_orderings_on_synthetic_outlier_data() {
        let lay = synthetic(2);
        let f16 = metrics(&lay, "f16 rot none (upstream)");
        let q8 = metrics(&lay, "q8_0 rot none (upstream)");
        let q4 = metrics(&lay, "q4_0 rot none (upstream)");
        let q4r = metrics(&lay, "q4_0 rot wht (upstream)");
        let t2 = metrics(&lay, "TurboQuant_mse 2b");
        let t4 = metrics(&lay, "TurboQuant_mse 4b");
        for (a, b, what) in [
            (f16, q8, "f16<q8_0"),
            (q8, q4, "q8_0<q4_0"),
            (q4r, q4, "rotated q4_0<q4_0"),
            (t4, t2, "tq4<tq2"),
        ] {
            assert!(a.score_rel_err < b.score_rel_err, "{what}: {a:?} vs {b:?}");
            assert!(a.out_rel_err < b.out_rel_err, "{what}: {a:?} vs {b:?}");
            assert!(a.k_rel_rmse < b.k_rel_rmse, "{what}: {a:?} vs {b:?}");
        }
        // the rotation is undone exactly: rotation alone (f16 has ~1e-3 relative rounding)
        let f16r = metrics(&lay, "f16 rot wht (upstream)");
        assert!(f16r.k_rel_rmse < 2e-3, "{f16r:?}");
        // TurboQuant_mse 4b on rotated Gaussian-like vectors: relative RMSE ≈ sqrt(0.0095)
        assert!((t4.v_rel_rmse - 0.009497f64.sqrt()).abs() < 0.02, "{t4:?}");
    }

    /// The quality quantizer never has a larger K/V error than upstream's (it keeps
    /// upstream's block unless it finds a better one).
    #[test]
    fn quality_quantizer_is_never_worse_than_upstream() {
        let lay = synthetic(4);
        for ty in ["q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "iq4_nl"] {
            for rot in ["none", "wht"] {
                let u = metrics(&lay, &format!("{ty} rot {rot} (upstream)"));
                let q = metrics(&lay, &format!("{ty} rot {rot} (attnrot quality)"));
                assert!(q.k_rel_rmse <= u.k_rel_rmse, "{ty} {rot}: {q:?} vs {u:?}");
                assert!(q.v_rel_rmse <= u.v_rel_rmse, "{ty} {rot}: {q:?} vs {u:?}");
            }
        }
    }

    #[test]
    fn turbo_prod_scores_are_unbiased_where_mse_shrinks() {
        // the mean score error (not squared) of prod is near 0; mse at 1 bit shrinks scores
        let lay = synthetic(3);
        let seg = &lay.segments[0];
        let r = reference(&lay);
        let mut bias = [0f64; 2];
        for (i, codec) in [Codec::TurboProd(2), Codec::TurboMse(1)].iter().enumerate() {
            let k = roundtrip(codec, Rot::None, &seg.k, 128, 64, 64, None).unwrap();
            let (mut s, mut o) = (Vec::new(), Vec::new());
            attend(&lay, seg, &k, &seg.v, &mut s, &mut o);
            // regression slope of estimated on true scores
            let (mut xy, mut xx) = (0f64, 0f64);
            for (&a, &b) in r.scores[0].iter().zip(&s) {
                xy += a as f64 * b as f64;
                xx += (a as f64).powi(2);
            }
            bias[i] = xy / xx;
        }
        assert!((bias[0] - 1.0).abs() < 0.05, "prod slope {}", bias[0]);
        assert!(bias[1] < 0.9, "mse 1-bit slope {}", bias[1]);
    }

    #[test]
    fn matched_turboquant_has_the_bits_of_q4_0_and_q8_0_at_every_head_size() {
        for d in [32usize, 64, 128, 256, 512] {
            assert_eq!(Codec::TurboMseHalf(4).bits(d), 4.5, "d {d}");
            assert_eq!(Codec::TurboMseHalf(8).bits(d), 8.5, "d {d}");
            let e = TurboMse::new_mixed(d, 4, turbo_half_extra(d), SEED).unwrap();
            assert_eq!(e.bits_per_value(), 4.5, "d {d}");
        }
    }

    #[test]
    fn outlier_statistics() {
        let mut rng = rand::rngs::SmallRng::seed_from_u64(9);
        let g: Vec<f32> = (0..4096 * 64).map(|_| gauss(&mut rng)).collect();
        let o = outliers(&g, 64);
        assert!((o.kurtosis - 3.0).abs() < 0.1, "{o:?}");
        assert!((o.channel_kurtosis - 3.0).abs() < 0.2, "{o:?}");
        assert!(o.channel_rms_ratio < 1.1, "{o:?}");
        // one channel 20x: found, and the rotation spreads it
        let mut x = g.clone();
        for r in x.chunks_exact_mut(64) {
            r[7] *= 20.0;
        }
        let o = outliers(&x, 64);
        assert!(o.channel_rms_ratio > 15.0, "{o:?}");
        let mut y = x.clone();
        attnrot::rotate::rotate_inplace(64, &mut y).unwrap();
        let r = outliers(&y, 64);
        assert!(
            r.channel_rms_ratio < 1.5 && r.block_crest < o.block_crest,
            "{r:?} vs {o:?}"
        );
        assert_eq!(spread(10, 3), vec![1, 5, 8]);
        assert_eq!(spread(3, 10), vec![0, 1, 2]);
        assert_eq!(share(1.0, 0.2, 0.0), Some(0.8));
        assert_eq!(share(1.0, 0.2, 1.5), None);
    }
}
