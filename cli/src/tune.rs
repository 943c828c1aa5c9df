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
    /// GGUF model (default: SmolLM2-135M-Instruct Q4_1, fetched and verified on first use).
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
    let model = match &a.model {
        Some(m) if m.is_file() => m.clone(),
        Some(m) => bail!("model file {} does not exist", m.display()),
        None => upstream::default_model()?,
    };
    let text = match &a.text {
        Some(t) if t.is_file() => t.clone(),
        Some(t) => bail!("text file {} does not exist", t.display()),
        None => crate::text::calibration_text()?,
    };
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

struct Cleanup(PathBuf);
impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
