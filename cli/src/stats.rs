//! `attnrot stats`: real K/V, measured. Runs stock `llama-perplexity` with our backend and
//! `ATTNROT_CAPTURE` on a calibration text (not the evaluation text), then measures on the
//! captured rows: outlier statistics before/after rotation, and for every candidate encoding
//! (the 8 ggml formats × rotation none / Walsh–Hadamard / Walsh–Hadamard with random signs,
//! TurboQuant_mse and _prod, and — with a policy from `attnrot tune` — the quality mode as the
//! backend runs it, K by the policy's score metric) the errors of K, V, the scores `Q·Kᵀ` and
//! the attention output.
use crate::kvstats::{self, Candidate, Layer, Metrics, Outliers};
use crate::upstream;
use anyhow::{bail, Context, Result};
use attnrot::rotate::policy::Policy;
use indicatif::{ProgressBar, ProgressStyle};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

#[derive(clap::Args, Clone)]
pub struct Args {
    /// GGUF model, or `smollm2` / `gemma3` (fetched and verified on first use; default: smollm2,
    /// SmolLM2-135M-Instruct Q4_1).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Calibration text (default: the Debian Policy Manual from Debian's debian-policy; not
    /// the Jargon File `eval` uses).
    #[arg(long)]
    pub text: Option<PathBuf>,
    /// Chunks of --ctx tokens to run through the model.
    #[arg(long, default_value_t = 2)]
    pub chunks: usize,
    /// Context size (tokens per chunk; also the batch size, so one chunk is one sequence).
    #[arg(long, default_value_t = 512)]
    pub ctx: usize,
    /// Threads (llama-perplexity and the analysis).
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// KV cache of the capture run: f16 (unrotated rows; the backend takes the f16 cache with
    /// ATTNROT_FA_ALL=1 -fa on) or q8_0 (rows rotated by llama.cpp, un-rotated for the analysis).
    #[arg(long, default_value = "f16")]
    pub cache: String,
    /// Capture size limit in MB (ATTNROT_CAPTURE_MAX_MB).
    #[arg(long, default_value_t = 512)]
    pub max_mb: u64,
    /// Keep the capture in this directory (default: a temporary one, removed at the end).
    #[arg(long)]
    pub keep_capture: Option<PathBuf>,
    /// Analyse an existing capture directory instead of running llama.cpp.
    #[arg(long, conflicts_with = "keep_capture")]
    pub from_capture: Option<PathBuf>,
    /// Layers to analyse (default: all).
    #[arg(long, value_delimiter = ',')]
    pub layers: Vec<u32>,
    /// Queries per layer and chunk used for the score/output errors (spread over the chunk).
    #[arg(long, default_value_t = 128)]
    pub max_queries: usize,
    /// Write the results as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write a PNG chart (errors vs bits per value) to this file.
    #[arg(long, default_value = "attnrot-stats.png")]
    pub chart: PathBuf,
    /// Do not write a chart.
    #[arg(long)]
    pub no_chart: bool,
    /// Quality policy (`attnrot tune`) for the "attnrot quality + policy" candidates: K written
    /// as the backend writes it with that policy (default: the model's policy in
    /// ~/.cache/attnrot if it exists). Measure on another text than the policy was tuned on
    /// (e.g. `--text` the Jargon File) for an out-of-sample figure.
    #[arg(long)]
    pub policy: Option<PathBuf>,
    /// No policy candidates even if the model has a policy.
    #[arg(long, conflicts_with = "policy")]
    pub no_policy: bool,
}

/// One candidate's results: mean over layers, and per layer.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CandidateResult {
    pub name: String,
    pub family: String,
    pub rotation: kvstats::Rot,
    pub bits_k: f64,
    pub bits_v: f64,
    /// Mean over layers of each layer's relative errors.
    pub mean: Metrics,
    pub per_layer: Vec<Metrics>,
}

/// Outlier statistics of one layer.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LayerStats {
    pub layer: u32,
    pub k: Outliers,
    pub k_rotated: Outliers,
    pub v: Outliers,
    pub v_rotated: Outliers,
}

/// One line of the summary: at matched bits, the share of TurboQuant's error reduction over
/// the unrotated cache that a rotated ggml cache gets.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ShareRow {
    pub bits: f64,
    pub base: String,
    pub candidate: String,
    pub turboquant: String,
    pub metric: String,
    pub base_err: f64,
    pub candidate_err: f64,
    pub turboquant_err: f64,
    /// `(base − candidate) / (base − turboquant)`; None if TurboQuant is not better than base.
    pub share: Option<f64>,
}

fn check_args(a: &Args) -> Result<()> {
    if a.chunks == 0 {
        bail!("--chunks must be at least 1");
    }
    if a.ctx < 16 {
        bail!("--ctx must be at least 16");
    }
    if a.max_queries == 0 {
        bail!("--max-queries must be at least 1");
    }
    if !matches!(a.cache.as_str(), "f16" | "q8_0") {
        bail!("--cache must be f16 or q8_0 (got '{}')", a.cache);
    }
    // checked here too, so a bad path fails before anything runs (also with --from-capture)
    upstream::check_model(&a.model)?;
    upstream::given_or(&a.text, "text", || Ok(PathBuf::new()))?;
    if let Some(d) = &a.from_capture {
        if !d.join(attnrot::capture::MANIFEST).is_file() {
            bail!(
                "{} is not a capture directory (no {})",
                d.display(),
                attnrot::capture::MANIFEST
            );
        }
    }
    Ok(())
}

/// Run llama-perplexity with the backend capturing into `dir`.
pub(crate) fn capture_run(a: &Args, dir: &Path, model: &Path, text: &Path) -> Result<String> {
    let bin = upstream::upstream_bin()?;
    let lib = upstream::backend_lib()?;
    std::fs::create_dir_all(dir)?;
    let log_path = dir.join("llama-perplexity.log");
    let log_file = std::fs::File::create(&log_path)?;
    let mut cmd = Command::new(bin.join("llama-perplexity"));
    cmd.arg("-m").arg(model).arg("-f").arg(text);
    let ctx = a.ctx.to_string();
    cmd.args([
        "-c",
        &ctx,
        "-b",
        &ctx,
        "--chunks",
        &a.chunks.to_string(),
        "-t",
        &a.threads.to_string(),
        "-ctk",
        &a.cache,
        "-ctv",
        &a.cache,
        "-fa",
        "on",
        // the warm-up decode would add a 2-token segment of no text
        "--no-warmup",
        "-v",
    ]);
    cmd.env_remove("LLAMA_ATTN_ROT_DISABLE")
        .env_remove("ATTNROT_OPS")
        .env("GGML_BACKEND_PATH", &lib)
        .env("ATTNROT_FA_ALL", "1")
        .env(attnrot::capture::CAPTURE_ENV, dir)
        .env(attnrot::capture::CAPTURE_MAX_MB_ENV, a.max_mb.to_string());
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(log_file.try_clone()?)
        .stderr(log_file)
        .spawn()
        .context("cannot run llama-perplexity")?;
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] capturing: {msg}").unwrap(),
    );
    let manifest = dir.join(attnrot::capture::MANIFEST);
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        let events = std::fs::read_to_string(&manifest)
            .map(|t| t.lines().count())
            .unwrap_or(0);
        let mb = dir_size(dir) as f64 / (1 << 20) as f64;
        bar.set_message(format!(
            "llama-perplexity, {} chunk(s) of {}: {events} tensors, {mb:.0} MB",
            a.chunks, a.ctx
        ));
        bar.tick();
        std::thread::sleep(Duration::from_millis(200));
    };
    bar.finish_and_clear();
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    let tail = || {
        let t: Vec<&str> = log.lines().rev().take(15).collect();
        t.into_iter().rev().collect::<Vec<_>>().join("\n")
    };
    if !status.success() || !log.contains("Final estimate: PPL") {
        if log.contains("you need at least") || log.contains("not enough for a context") {
            bail!(
                "the text {} is too short for {} chunks of {} tokens: use fewer --chunks or a longer --text",
                text.display(),
                a.chunks,
                a.ctx
            );
        }
        bail!("llama-perplexity failed:\n{}", tail());
    }
    if !log.contains(upstream::LOADED_LINE) {
        bail!("llama-perplexity ran without the attnrot backend (GGML_BACKEND_PATH ignored?)");
    }
    Ok(log)
}

fn dir_size(d: &Path) -> u64 {
    std::fs::read_dir(d)
        .map(|r| {
            r.filter_map(|e| e.ok()?.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

struct Cleanup(Option<PathBuf>);
impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(p) = &self.0 {
            let _ = std::fs::remove_dir_all(p);
        }
    }
}

pub fn run(a: Args) -> Result<()> {
    check_args(&a)?;
    let (dir, model, text, _cleanup) = match &a.from_capture {
        Some(d) => (d.clone(), None, None, Cleanup(None)),
        None => {
            let model = upstream::model(&a.model)?;
            let text = upstream::given_or(&a.text, "text", crate::text::calibration_text)?;
            let (dir, cleanup) = match &a.keep_capture {
                Some(d) => (d.clone(), Cleanup(None)),
                None => {
                    let d = crate::text::cache_dir()?.join(format!("stats-{}", std::process::id()));
                    (d.clone(), Cleanup(Some(d)))
                }
            };
            let log = capture_run(&a, &dir, &model, &text)?;
            if log.contains("capture limit of") {
                eprintln!("attnrot: the capture reached --max-mb {}: later chunks are partly missing (only complete layers are analysed)", a.max_mb);
            }
            (dir, Some(model), Some(text), cleanup)
        }
    };

    // the policy of the "quality + policy" candidates: given, or the model's default
    // with --from-capture, --model (a path or a name) only locates the default policy
    let policy_model = match (&model, &a.model) {
        (Some(m), _) => Some(m.clone()),
        (None, Some(_)) if a.policy.is_none() && !a.no_policy => Some(upstream::model(&a.model)?),
        _ => None,
    };
    let policy_path = match (&a.policy, policy_model.as_ref()) {
        (Some(p), _) if !p.is_file() => bail!("policy file {} does not exist", p.display()),
        (Some(p), _) => Some(p.clone()),
        (None, Some(m)) if !a.no_policy => {
            Some(crate::tune::default_policy_path(m)?).filter(|p| p.is_file())
        }
        (None, _) => None,
    };
    let policy = match &policy_path {
        Some(p) => {
            let pol = Policy::load(p)
                .map_err(anyhow::Error::msg)
                .with_context(|| format!("reading the policy {}", p.display()))?;
            eprintln!(
                "attnrot: \"{}\" candidates use the policy {}",
                kvstats::POLICY_FAMILY,
                p.display()
            );
            Some(pol)
        }
        None => None,
    };
    let cands = kvstats::candidates(policy.is_some());
    let layers = kvstats::load(&dir, &a.layers, a.max_queries)?;
    let bar = ProgressBar::new(layers.len() as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} layers, ETA {eta} — analysing",
        )
        .unwrap(),
    );
    let results = analyse(&layers, &cands, policy.as_ref(), a.threads.max(1), &bar)?;
    bar.finish_and_clear();

    let (layer_stats, per_cand) = results;
    let rows: Vec<CandidateResult> = cands
        .iter()
        .enumerate()
        .map(|(ci, c)| {
            let per_layer: Vec<Metrics> = per_cand.iter().map(|l| l[ci]).collect();
            let n = per_layer.len() as f64;
            let mean = Metrics {
                k_rel_rmse: per_layer.iter().map(|m| m.k_rel_rmse).sum::<f64>() / n,
                v_rel_rmse: per_layer.iter().map(|m| m.v_rel_rmse).sum::<f64>() / n,
                score_rel_err: per_layer.iter().map(|m| m.score_rel_err).sum::<f64>() / n,
                out_rel_err: per_layer.iter().map(|m| m.out_rel_err).sum::<f64>() / n,
                out_k_only_rel_err: per_layer.iter().map(|m| m.out_k_only_rel_err).sum::<f64>() / n,
            };
            CandidateResult {
                name: c.name.clone(),
                family: c.family.clone(),
                rotation: c.rot,
                bits_k: c.k.bits(layers[0].dk),
                bits_v: c.v.bits(layers[0].dv),
                mean,
                per_layer,
            }
        })
        .collect();
    let summary = summary(&rows);

    let l0 = &layers[0];
    let segs: usize = layers.iter().map(|l| l.segments.len()).sum();
    println!(
        "model {} | text {} | capture {} ({} cache, rows rotated by llama.cpp: K {} V {}) | {} layers, {} chunk-layers, ≤{} queries each | head {}, {} query / {} KV heads",
        model.as_ref().map_or("-".into(), |m| m.file_name().unwrap_or_default().to_string_lossy().to_string()),
        text.as_ref().map_or("-".into(), |t| t.file_name().unwrap_or_default().to_string_lossy().to_string()),
        dir.display(),
        l0.cache_type,
        if l0.captured_rot[0] > 0 { "yes (undone)" } else { "no" },
        if l0.captured_rot[1] > 0 { "yes (undone)" } else { "no" },
        layers.len(),
        segs,
        a.max_queries,
        l0.dk,
        l0.n_head,
        l0.n_head_kv
    );
    print_outliers(&layer_stats);
    print_candidates(&rows);
    print_summary(&summary);

    if let Some(j) = &a.json {
        let doc = serde_json::json!({
            "model": model.as_ref().map(|m| m.display().to_string()),
            "text": text.as_ref().map(|t| t.display().to_string()),
            "chunks": a.chunks,
            "ctx": a.ctx,
            "cache": l0.cache_type,
            "captured_rotated": {"k": l0.captured_rot[0] > 0, "v": l0.captured_rot[1] > 0, "q": l0.captured_rot[2] > 0},
            "head_dim": l0.dk,
            "n_head": l0.n_head,
            "n_head_kv": l0.n_head_kv,
            "max_queries": a.max_queries,
            "layers": layer_stats,
            "candidates": rows,
            "summary": summary,
        });
        crate::eval::write_atomic(j, serde_json::to_string_pretty(&doc)?.as_bytes())?;
        println!("wrote {}", j.display());
    }
    if !a.no_chart {
        crate::chart::stats_chart(&rows, &a.chart)?;
        println!("wrote {}", a.chart.display());
    }
    Ok(())
}

type Analysis = (Vec<LayerStats>, Vec<Vec<Metrics>>);

/// Outliers and every candidate's metrics per layer, layers spread over `threads` threads.
fn analyse(
    layers: &[Layer],
    cands: &[Candidate],
    policy: Option<&Policy>,
    threads: usize,
    bar: &ProgressBar,
) -> Result<Analysis> {
    let one = |lay: &Layer| -> Result<(LayerStats, Vec<Metrics>)> {
        let stats = layer_outliers(lay)?;
        let r = kvstats::reference(lay);
        let m = cands
            .iter()
            .map(|c| {
                kvstats::evaluate(lay, &r, c, policy)
                    .with_context(|| format!("{} on layer {}", c.name, lay.layer))
            })
            .collect::<Result<Vec<_>>>()?;
        bar.inc(1);
        Ok((stats, m))
    };
    let next = std::sync::atomic::AtomicUsize::new(0);
    type Slot = std::sync::Mutex<Option<Result<(LayerStats, Vec<Metrics>)>>>;
    let slots: Vec<Slot> = layers.iter().map(|_| std::sync::Mutex::new(None)).collect();
    std::thread::scope(|s| {
        for _ in 0..threads.min(layers.len()) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= layers.len() {
                    break;
                }
                let r = one(&layers[i]);
                *slots[i].lock().unwrap() = Some(r);
            });
        }
    });
    let mut st = Vec::new();
    let mut ms = Vec::new();
    for s in slots {
        let (a, b) = s.into_inner().unwrap().context("layer not analysed")??;
        st.push(a);
        ms.push(b);
    }
    Ok((st, ms))
}

fn layer_outliers(lay: &Layer) -> Result<LayerStats> {
    let (wk, wv) = (lay.n_head_kv * lay.dk, lay.n_head_kv * lay.dv);
    let k: Vec<f32> = lay
        .segments
        .iter()
        .flat_map(|s| s.k.iter().copied())
        .collect();
    let v: Vec<f32> = lay
        .segments
        .iter()
        .flat_map(|s| s.v.iter().copied())
        .collect();
    let mut kr = k.clone();
    attnrot::rotate::rotate_inplace(kvstats::rot_size(lay.dk, true), &mut kr)?;
    let mut vr = v.clone();
    attnrot::rotate::rotate_inplace(kvstats::rot_size(lay.dv, false), &mut vr)?;
    Ok(LayerStats {
        layer: lay.layer,
        k: kvstats::outliers(&k, wk),
        k_rotated: kvstats::outliers(&kr, wk),
        v: kvstats::outliers(&v, wv),
        v_rotated: kvstats::outliers(&vr, wv),
    })
}

/// The matched-bits comparisons: q4_0 (4.5 bits) against TurboQuant at 4 bits (_mse 4b =
/// 4 + 16/d bits per value, 4.25 at head 64; _mse 4.5b/value = 4.5 at any head size; _prod
/// 4b = 4 + 32/d per K value, 4.5 at head 64), q8_0
/// (8.5) against TurboQuant at 8 bits; for every quantizer and rotation variant other than
/// the unrotated upstream base.
pub fn summary(rows: &[CandidateResult]) -> Vec<ShareRow> {
    let find = |n: &str| rows.iter().find(|r| r.name == n);
    let mut out = Vec::new();
    for (ty, tb) in [("q4_0", 4u32), ("q8_0", 8)] {
        let Some(base) = find(&format!("{ty} rot none (upstream)")) else {
            continue;
        };
        for tq in [
            format!("TurboQuant_mse {tb}b"),
            format!("TurboQuant_mse {tb}.5b/value"),
            format!("TurboQuant_prod {tb}b (V _mse {tb}b)"),
        ] {
            let Some(t) = find(&tq) else { continue };
            let prefix = format!("{ty} rot ");
            for c in rows
                .iter()
                .filter(|r| r.name.starts_with(&prefix) && r.name != base.name)
            {
                for (metric, f) in [
                    (
                        "score",
                        (|m: &Metrics| m.score_rel_err) as fn(&Metrics) -> f64,
                    ),
                    ("output", |m: &Metrics| m.out_rel_err),
                ] {
                    let (b, x, r) = (f(&base.mean), f(&c.mean), f(&t.mean));
                    out.push(ShareRow {
                        bits: base.bits_k,
                        base: base.name.clone(),
                        candidate: c.name.clone(),
                        turboquant: t.name.clone(),
                        metric: metric.into(),
                        base_err: b,
                        candidate_err: x,
                        turboquant_err: r,
                        share: kvstats::share(b, x, r),
                    });
                }
            }
        }
    }
    out
}

fn print_outliers(st: &[LayerStats]) {
    println!();
    println!("Outliers per layer (unrotated → Walsh–Hadamard rotated): max|x|/RMS, channel RMS max/median, kurtosis (Gaussian 3), mean block-of-32 max/RMS");
    println!("{:>5}  {:<44} {:<44}", "layer", "K", "V");
    let f = |a: &Outliers, b: &Outliers| {
        format!(
            "{:5.1}→{:<4.1} {:5.1}→{:<4.1} {:5.1}→{:<4.1} {:4.2}→{:<4.2}",
            a.max_over_rms,
            b.max_over_rms,
            a.channel_rms_ratio,
            b.channel_rms_ratio,
            a.kurtosis,
            b.kurtosis,
            a.block_crest,
            b.block_crest
        )
    };
    for s in st {
        println!(
            "{:>5}  {:<44} {:<44}",
            s.layer,
            f(&s.k, &s.k_rotated),
            f(&s.v, &s.v_rotated)
        );
    }
}

fn print_candidates(rows: &[CandidateResult]) {
    println!();
    println!("Errors vs f32 (mean over layers of each layer's relative error; scores Q·Kᵀ with the real Q; output softmax(scale·QKᵀ)·V, causal)");
    println!(
        "{:<40} {:>6} {:>6} {:>10} {:>10} {:>10} {:>10} {:>10}",
        "encoding (K and V)",
        "bits K",
        "bits V",
        "K rRMSE",
        "V rRMSE",
        "score err",
        "output err",
        "out, K only"
    );
    let mut sorted: Vec<&CandidateResult> = rows.iter().collect();
    sorted.sort_by(|a, b| {
        b.bits_k
            .total_cmp(&a.bits_k)
            .then(a.mean.out_rel_err.total_cmp(&b.mean.out_rel_err))
    });
    for r in sorted {
        println!(
            "{:<40} {:>6.2} {:>6.2} {:>10.3e} {:>10.3e} {:>10.3e} {:>10.3e} {:>10.3e}",
            r.name,
            r.bits_k,
            r.bits_v,
            r.mean.k_rel_rmse,
            r.mean.v_rel_rmse,
            r.mean.score_rel_err,
            r.mean.out_rel_err,
            r.mean.out_k_only_rel_err
        );
    }
}

fn print_summary(s: &[ShareRow]) {
    println!();
    println!("Share of TurboQuant's error reduction over the unrotated upstream cache, at matched bits: (unrotated − candidate) / (unrotated − TurboQuant); > 100 % = better than TurboQuant, n/a = TurboQuant no better than unrotated");
    println!(
        "{:<5} {:<34} {:<31} {:>10} {:>10} {:>10} {:>7} {:>10} {:>10} {:>10} {:>7}",
        "bits",
        "candidate",
        "TurboQuant",
        "score: unrot",
        "cand.",
        "TQ",
        "share",
        "out: unrot",
        "cand.",
        "TQ",
        "share"
    );
    let pct = |x: Option<f64>| x.map_or("n/a".to_string(), |s| format!("{:.0} %", s * 100.0));
    for pair in s.chunks(2) {
        let (a, b) = (&pair[0], pair.get(1).unwrap_or(&pair[0]));
        println!(
            "{:<5.2} {:<34} {:<31} {:>10.3e} {:>10.3e} {:>10.3e} {:>7} {:>10.3e} {:>10.3e} {:>10.3e} {:>7}",
            a.bits,
            a.candidate,
            a.turboquant,
            a.base_err,
            a.candidate_err,
            a.turboquant_err,
            pct(a.share),
            b.base_err,
            b.candidate_err,
            b.turboquant_err,
            pct(b.share)
        );
    }
}
