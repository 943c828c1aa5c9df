//! `attnrot tune`: measure a model's queries on a calibration text (not the evaluation text)
//! and write the quality policy the backend reads from `ATTNROT_POLICY`.
//!
//! Runs stock `llama-perplexity` with our backend capturing (`ATTNROT_CAPTURE`, a q8_0 cache
//! so llama.cpp's rotation is on), then accumulates, per layer and K head, the second moment
//! `H = E[q·qᵀ]` of the queries that read that head (its GQA group) — in the rotated space
//! the cache is in, and un-rotated for runs with rotation off. `qᵀ·e` is a score's error
//! for a K error `e`, so `eᵀ·H·e` is the mean squared score error the backend minimizes.
use crate::upstream;
use anyhow::{bail, Context, Result};
use attnrot::capture::{self, Kind};
use attnrot::rotate::policy::{Fingerprint, PolicyData, DEFAULT_DAMPING};
use indicatif::{ProgressBar, ProgressStyle};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(clap::Args, Clone)]
pub struct Args {
    /// GGUF model, or `smollm2` / `gemma3` (fetched and verified on first use; default: smollm2,
    /// SmolLM2-135M-Instruct Q4_1).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Calibration text (default: the Debian Policy Manual; never the evaluation text).
    #[arg(long)]
    pub text: Option<PathBuf>,
    /// Chunks of --ctx tokens to run through the model.
    #[arg(long, default_value_t = 4)]
    pub chunks: usize,
    /// Context size (tokens per chunk).
    #[arg(long, default_value_t = 512)]
    pub ctx: usize,
    /// Threads for llama-perplexity.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Damping of the metrics (fraction of the mean diagonal added to it).
    #[arg(long, default_value_t = DEFAULT_DAMPING)]
    pub damping: f64,
    /// Capture size limit in MB.
    #[arg(long, default_value_t = 2048)]
    pub max_mb: u64,
    /// Where to write the policy (default: ~/.cache/attnrot/policy-<model file stem>.safetensors).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// The default policy file of `model`.
pub fn default_policy_path(model: &Path) -> Result<PathBuf> {
    let stem = model
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .context("model path without a file name")?;
    Ok(crate::text::cache_dir()?.join(format!("policy-{stem}.safetensors")))
}

/// Per layer and KV head: `Σ q·qᵀ` (f64) and the number of queries, rotated and plain.
struct Acc {
    d: usize,
    n_head_kv: usize,
    rot: Vec<f64>,
    plain: Vec<f64>,
    n: u64,
}

impl Acc {
    fn new(d: usize, n_head_kv: usize) -> Acc {
        Acc {
            d,
            n_head_kv,
            rot: vec![0.0; n_head_kv * d * d],
            plain: vec![0.0; n_head_kv * d * d],
            n: 0,
        }
    }

    fn add(m: &mut [f64], q: &[f32]) {
        let d = q.len();
        for i in 0..d {
            let qi = q[i] as f64;
            if qi == 0.0 {
                continue;
            }
            for (mij, qj) in m[i * d..(i + 1) * d].iter_mut().zip(q) {
                *mij += qi * *qj as f64;
            }
        }
    }

    fn finish(m: &[f64], n: u64) -> Vec<f32> {
        m.iter().map(|v| (v / n.max(1) as f64) as f32).collect()
    }
}

pub fn run(a: Args) -> Result<()> {
    if a.chunks == 0 {
        bail!("--chunks must be at least 1");
    }
    if !(a.damping.is_finite() && a.damping > 0.0) {
        bail!("--damping must be > 0");
    }
    let model = upstream::model(&a.model)?;
    let text = upstream::given_or(&a.text, "text", crate::text::calibration_text)?;
    let out = match &a.out {
        Some(o) => o.clone(),
        None => default_policy_path(&model)?,
    };
    let dir = crate::text::cache_dir()?.join(format!("tune-{}", std::process::id()));
    let _cleanup = Cleanup(dir.clone());
    let sa = crate::stats::Args {
        model: Some(model.clone()),
        text: Some(text.clone()),
        chunks: a.chunks,
        ctx: a.ctx,
        threads: a.threads,
        cache: "q8_0".into(),
        max_mb: a.max_mb,
        keep_capture: None,
        from_capture: None,
        layers: Vec::new(),
        max_queries: 0,
        json: None,
        chart: PathBuf::new(),
        no_chart: true,
        policy: None,
        no_policy: true,
    };
    let log = crate::stats::capture_run(&sa, &dir, &model, &text)?;
    if log.contains("capture limit of") {
        bail!(
            "the capture reached --max-mb {}: raise it or use fewer --chunks",
            a.max_mb
        );
    }
    let events = capture::read_manifest(&dir).map_err(anyhow::Error::msg)?;
    let qs: Vec<_> = events.iter().filter(|e| e.kind == Kind::Q).collect();
    if qs.is_empty() {
        bail!("the capture holds no queries (did the backend claim FLASH_ATTN_EXT?)");
    }
    let bar = ProgressBar::new(qs.len() as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} query tensors, ETA {eta}",
        )
        .unwrap(),
    );
    let mut acc: BTreeMap<u32, Acc> = BTreeMap::new();
    let mut kv = collect_kv_rows(&dir, &events)?;
    let mut row = Vec::new();
    for e in qs {
        let (data, _) = capture::read_event(&dir, e).map_err(anyhow::Error::msg)?;
        // Q: [n_seq, n_head, n_q, dk]
        let [n_seq, n_head, n_q, d] = e.shape[..] else {
            bail!("{}: a Q tensor of shape {:?}", e.file, e.shape);
        };
        if e.n_head_kv == 0 || n_head % e.n_head_kv != 0 || d != e.head_dim {
            bail!("{}: bad head layout", e.file);
        }
        let g = n_head / e.n_head_kv;
        let a = acc
            .entry(e.layer)
            .or_insert_with(|| Acc::new(d, e.n_head_kv));
        if a.d != d || a.n_head_kv != e.n_head_kv {
            bail!("layer {}: the head layout changes between events", e.layer);
        }
        for s in 0..n_seq {
            for h in 0..n_head {
                let kv = h / g;
                for t in 0..n_q {
                    let off = ((s * n_head + h) * n_q + t) * d;
                    let q = &data[off..off + d];
                    let mh = d * d;
                    // the captured space: rotated if llama.cpp rotated
                    let (same, other) = if e.rotated {
                        (&mut a.rot, &mut a.plain)
                    } else {
                        (&mut a.plain, &mut a.rot)
                    };
                    Acc::add(&mut same[kv * mh..(kv + 1) * mh], q);
                    // the other space: the normalized transform is its own inverse
                    row.clear();
                    row.extend_from_slice(q);
                    let n = if e.rotated {
                        e.rot_n
                    } else if d.is_multiple_of(64) {
                        attnrot::rotate::upstream_n_rot_k(d)
                    } else {
                        0
                    };
                    if n > 0 {
                        for c in row.chunks_exact_mut(n) {
                            attnrot::rotate::rotate_inplace(n, c)?;
                        }
                    }
                    Acc::add(&mut other[kv * mh..(kv + 1) * mh], &row);
                }
            }
        }
        a.n += (n_seq * n_q * g) as u64;
        bar.inc(1);
    }
    bar.finish_and_clear();
    let n_layer = acc.keys().max().map_or(0, |l| *l as usize + 1);
    if acc.len() != n_layer {
        bail!(
            "queries of {} of {n_layer} layers captured (capture limit too small?)",
            acc.len()
        );
    }
    let first = acc.values().next().context("no layers")?;
    let fingerprint = Fingerprint {
        n_layer,
        n_head_kv: first.n_head_kv,
        head_dim_k: first.d,
    };
    let rot: Vec<Vec<f32>> = acc.values().map(|a| Acc::finish(&a.rot, a.n)).collect();
    let plain: Vec<Vec<f32>> = acc.values().map(|a| Acc::finish(&a.plain, a.n)).collect();
    let (rotate_k, rotate_v) = rotation_choice(&mut kv, &rot, &plain, &fingerprint, a.damping)?;
    let queries: u64 = acc.values().map(|a| a.n).sum();
    let bytes = PolicyData {
        fingerprint: fingerprint.clone(),
        model: &model.file_name().unwrap_or_default().to_string_lossy(),
        calibration: serde_json::json!({
            "text": text.file_name().unwrap_or_default().to_string_lossy(),
            "chunks": a.chunks,
            "ctx": a.ctx,
            "queries_per_kv_head": queries / (n_layer * fingerprint.n_head_kv).max(1) as u64,
        }),
        damping: a.damping,
        rot: &rot,
        plain: &plain,
        rotate_k,
        rotate_v,
    }
    .to_bytes()
    .map_err(anyhow::Error::msg)?;
    // the backend must accept what we write
    attnrot::rotate::policy::Policy::from_bytes(&bytes)
        .map_err(|e| anyhow::anyhow!("the policy written does not load: {e}"))?;
    crate::eval::write_atomic(&out, &bytes)?;
    // what the metric sees: the share of the queries' energy along their mean direction
    println!(
        "model {} | calibration {} | {} chunks of {} | {} layers x {} KV heads of {}",
        model.file_name().unwrap_or_default().to_string_lossy(),
        text.file_name().unwrap_or_default().to_string_lossy(),
        a.chunks,
        a.ctx,
        n_layer,
        fingerprint.n_head_kv,
        fingerprint.head_dim_k
    );
    println!("wrote {} ({} bytes)", out.display(), bytes.len());
    println!(
        "use it: ATTNROT_POLICY={} GGML_BACKEND_PATH=…/libattnrot.so llama-… -ctk q4_0 -ctv q4_0",
        out.display()
    );
    Ok(())
}

/// K or V rows of one layer, as captured (rotated by llama.cpp or not) and in the other space.
struct Rows {
    width: usize,
    rot: Vec<f32>,
    plain: Vec<f32>,
}

/// Rows per layer and side used to choose the rotation.
const ROWS_PER_LAYER: usize = 256;

/// Up to [`ROWS_PER_LAYER`] K and V rows of every layer, in both spaces: `[layer][k, v]`.
fn collect_kv_rows(
    dir: &Path,
    events: &[capture::Event],
) -> Result<BTreeMap<u32, [Option<Rows>; 2]>> {
    let mut out: BTreeMap<u32, [Option<Rows>; 2]> = BTreeMap::new();
    for e in events.iter().filter(|e| e.kind != Kind::Q) {
        let side = usize::from(e.kind == Kind::V);
        let slot = &mut out.entry(e.layer).or_default()[side];
        if slot
            .as_ref()
            .is_some_and(|r| r.rot.len() / r.width >= ROWS_PER_LAYER)
        {
            continue;
        }
        let (data, _) = capture::read_event(dir, e).map_err(anyhow::Error::msg)?;
        let [n, width] = e.shape[..] else {
            bail!("{}: a K/V tensor of shape {:?}", e.file, e.shape);
        };
        let take = n.min(ROWS_PER_LAYER - slot.as_ref().map_or(0, |r| r.rot.len() / r.width));
        let r = slot.get_or_insert_with(|| Rows {
            width,
            rot: Vec::new(),
            plain: Vec::new(),
        });
        if r.width != width || e.rot_n == 0 || !width.is_multiple_of(e.rot_n) {
            bail!("{}: rows of {width} values, rotation {}", e.file, e.rot_n);
        }
        let x = &data[..take * width];
        let mut other = x.to_vec();
        for c in other.chunks_exact_mut(e.rot_n) {
            attnrot::rotate::rotate_inplace(e.rot_n, c)?;
        }
        let (rot, plain) = if e.rotated {
            (x.to_vec(), other)
        } else {
            (other, x.to_vec())
        };
        r.rot.extend_from_slice(&rot);
        r.plain.extend_from_slice(&plain);
    }
    Ok(out)
}

/// For every quantized cache type: rotate K if that lowers the score error of the quality
/// mode's K blocks (`eᵀ·H·e` with the layer's metric; the rotation is orthogonal, so both
/// spaces measure the same score error), rotate V if it lowers V's squared error. Ties keep
/// upstream's rule (rotate). Prints the measurements.
#[allow(clippy::type_complexity)]
fn rotation_choice(
    kv: &mut BTreeMap<u32, [Option<Rows>; 2]>,
    rot: &[Vec<f32>],
    plain: &[Vec<f32>],
    f: &Fingerprint,
    damping: f64,
) -> Result<(BTreeMap<String, bool>, BTreeMap<String, bool>)> {
    use attnrot::quant::best::{quantize_row_best, quantize_row_best_metric, HeadMetric};
    use attnrot::GgmlType;
    let d = f.head_dim_k;
    let metrics = |m: &[Vec<f32>]| -> Result<Vec<Vec<HeadMetric>>> {
        m.iter()
            .map(|l| {
                l.chunks_exact(d * d)
                    .map(|h| HeadMetric::new(h, d, damping))
                    .collect::<attnrot::Result<Vec<_>>>()
                    .map_err(anyhow::Error::from)
            })
            .collect()
    };
    let (m_rot, m_plain) = (metrics(rot)?, metrics(plain)?);
    let (mut rk, mut rv) = (BTreeMap::new(), BTreeMap::new());
    println!("rotation choice (quality mode, calibration rows; rotated / unrotated error):");
    println!(
        "{:<8} {:>16} {:>6} {:>16} {:>6}  {:<28} {:<28}",
        "type",
        "K score error",
        "rot K",
        "V sq. error",
        "rot V",
        "K per layer: min-max, off wins",
        "V per layer: same"
    );
    for ty in GgmlType::KV_QUANTIZED {
        let mut err = [[0f64; 2]; 2]; // [side][rot, plain]
                                      // per layer: rotated / unrotated error (the choice is per model; this shows whether a
                                      // per-layer choice would differ)
        let mut per_layer: [Vec<(u32, f64)>; 2] = [Vec::new(), Vec::new()];
        for (layer, sides) in kv.iter_mut() {
            let l = *layer as usize;
            let before = err;
            for (side, rows) in sides.iter().enumerate() {
                let Some(r) = rows else { continue };
                let bytes = ty.row_bytes(r.width)?;
                let mut q = vec![0u8; bytes];
                let mut y = vec![0f32; r.width];
                for (si, (xs, m)) in [(&r.rot, &m_rot), (&r.plain, &m_plain)]
                    .into_iter()
                    .enumerate()
                {
                    for x in xs.chunks_exact(r.width) {
                        if side == 0 {
                            quantize_row_best_metric(ty, x, &m[l], &mut q)?;
                        } else {
                            quantize_row_best(ty, x, None, &mut q)?;
                        }
                        attnrot::quant::format(ty)?.dequantize_row(&q, &mut y)?;
                        let e: Vec<f64> = x.iter().zip(&y).map(|(a, b)| (*a - *b) as f64).collect();
                        err[side][si] += if side == 0 {
                            e.chunks_exact(d)
                                .zip(&m[l])
                                .map(|(eh, hm)| hm.cost(eh))
                                .sum::<f64>()
                        } else {
                            e.iter().map(|v| v * v).sum::<f64>()
                        };
                    }
                }
            }
            for (side, pl) in per_layer.iter_mut().enumerate() {
                let (r, p) = (
                    err[side][0] - before[side][0],
                    err[side][1] - before[side][1],
                );
                if p > 0.0 {
                    pl.push((*layer, r / p));
                }
            }
        }
        let layers = |pl: &[(u32, f64)]| {
            let (lo, hi) = pl.iter().fold((f64::INFINITY, 0f64), |(a, b), &(_, x)| {
                (a.min(x), b.max(x))
            });
            let off: Vec<String> = pl
                .iter()
                .filter(|(_, x)| *x > 1.0)
                .map(|(l, _)| l.to_string())
                .collect();
            let off = if off.is_empty() {
                "none".to_string()
            } else {
                off.join(" ")
            };
            format!("{lo:.3}-{hi:.3}, off: {off}")
        };
        let k = err[0][0] <= err[0][1];
        let v = err[1][0] <= err[1][1];
        rk.insert(ty.name().to_string(), k);
        rv.insert(ty.name().to_string(), v);
        println!(
            "{:<8} {:>16.3} {:>6} {:>16.3} {:>6}  {:<28} {:<28}",
            ty.name(),
            err[0][0] / err[0][1],
            if k { "on" } else { "off" },
            err[1][0] / err[1][1],
            if v { "on" } else { "off" },
            layers(&per_layer[0]),
            layers(&per_layer[1])
        );
    }
    Ok((rk, rv))
}

struct Cleanup(PathBuf);
impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
