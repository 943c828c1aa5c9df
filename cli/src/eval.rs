//! `attnrot eval`: does rotation make a quantized KV cache as good as f16, and are the
//! attnrot kernels as good as upstream's? Drives upstream's own `llama-perplexity` (stock,
//! and with `GGML_BACKEND_PATH=libattnrot.so`), with rotation on and off, against the
//! logits of an f16-cache run, and reports PPL, mean/p99 KL divergence, same-top-token %
//! and tokens/s as a table, JSON and a PNG chart.
use crate::ppl::{self, KldStats};
use crate::upstream;
use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

#[derive(clap::Args, Clone)]
pub struct Args {
    /// GGUF model, or `smollm2` / `gemma3` (fetched and verified on first use; default: smollm2,
    /// SmolLM2-135M-Instruct Q4_1).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Plain-text file to evaluate on (default: the Jargon File from Debian's jargon-text).
    #[arg(long)]
    pub text: Option<PathBuf>,
    /// Cache types: K=V names, or K/V pairs like q8_0/q4_0.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "f16,q8_0,q5_1,q5_0,q4_1,q4_0,iq4_nl,q8_0/q4_0"
    )]
    pub types: Vec<String>,
    /// Context size (tokens per chunk).
    #[arg(long, default_value_t = 512)]
    pub ctx: usize,
    /// Also evaluate at context 2048 (slower).
    #[arg(long)]
    pub long: bool,
    /// Chunks of --ctx tokens to evaluate (the default keeps the whole run well under 10
    /// minutes on 2 cores).
    #[arg(long, default_value_t = 4)]
    pub chunks: usize,
    /// Threads for llama-perplexity.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Kernels to compare: stock (upstream's CPU backend), attnrot (our backend, exact mode:
    /// bit-exact cache writes), quality (our backend with ATTNROT_QUALITY=1).
    #[arg(long, value_delimiter = ',', default_value = "stock,attnrot,quality")]
    pub kernels: Vec<String>,
    /// The f16-cache run KLD is measured against: `exact` = our backend over an f16 cache
    /// (f32 accumulation of V), `stock` = stock llama.cpp's f16 cache (its CPU kernel
    /// accumulates V in f16, ~0.004 KLD from exact on SmolLM2).
    #[arg(long, default_value = "exact", value_parser = ["exact", "stock"])]
    pub base: String,
    /// Quality policy for the `quality` runs (`attnrot tune` writes one; default: the model's
    /// policy in ~/.cache/attnrot if it exists, else the squared-error search alone).
    #[arg(long)]
    pub policy: Option<PathBuf>,
    /// Quality runs without a policy even if the model has one.
    #[arg(long, conflicts_with = "policy")]
    pub no_policy: bool,
    /// Write the results as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write a PNG chart (KLD by type, rotation on/off, stock vs attnrot) to this file.
    #[arg(long, default_value = "attnrot-eval.png")]
    pub chart: PathBuf,
    /// Do not write a chart.
    #[arg(long)]
    pub no_chart: bool,
}

/// One cache configuration.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Config {
    pub type_k: String,
    pub type_v: String,
    pub rotation: bool,
    /// stock, attnrot or quality
    pub kernels: String,
    /// The cache-write mode: `stock` (upstream's CPU backend), `exact` (attnrot, bit-exact
    /// with upstream) or `quality` (attnrot with `ATTNROT_QUALITY=1`).
    pub mode: String,
    pub ctx: usize,
}

impl Config {
    pub fn label(&self) -> String {
        if self.type_k == self.type_v {
            self.type_k.clone()
        } else {
            format!("{}/{}", self.type_k, self.type_v)
        }
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Row {
    #[serde(flatten)]
    pub config: Config,
    #[serde(flatten)]
    pub stats: KldStats,
    pub tokens_per_s: f64,
    pub seconds: f64,
}

/// The KV cache types upstream's `-ctk`/`-ctv` take that our backend serves.
pub const KV_TYPES: [&str; 8] = [
    "f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "iq4_nl",
];

fn parse_type_pair(s: &str) -> Result<(String, String)> {
    let s = s.trim().to_ascii_lowercase();
    let (k, v) = match s.split_once('/') {
        Some((k, v)) => (k.to_string(), v.to_string()),
        None => (s.clone(), s.clone()),
    };
    for t in [&k, &v] {
        if !KV_TYPES.contains(&t.as_str()) {
            bail!(
                "unknown cache type '{t}' (one of {}; K/V pairs as k/v)",
                KV_TYPES.join(", ")
            );
        }
    }
    Ok((k, v))
}

/// The `mode` field of a `--kernels` value.
pub fn mode_of(kernels: &str) -> &'static str {
    match kernels {
        "attnrot" => "exact",
        "quality" => "quality",
        _ => "stock",
    }
}

/// Is `t` a quantized cache type (where rotation and the quality mode change something)?
pub fn quantized(t: &str) -> bool {
    !matches!(t, "f16" | "bf16" | "f32")
}

/// `--kernels` of eval and bench: stock, attnrot, quality; at least one.
pub fn parse_kernels(given: &[String]) -> Result<Vec<String>> {
    let mut kernels = Vec::new();
    for k in given {
        match k.as_str() {
            "stock" | "attnrot" | "quality" => kernels.push(k.clone()),
            _ => bail!("unknown --kernels value '{k}' (stock, attnrot, quality)"),
        }
    }
    if kernels.is_empty() {
        bail!("--kernels is empty");
    }
    Ok(kernels)
}

/// The configurations `args` asks for, in run order.
pub fn configs(a: &Args) -> Result<Vec<Config>> {
    let kernels = parse_kernels(&a.kernels)?;
    let mut ctxs = vec![a.ctx];
    if a.long && a.ctx != 2048 {
        ctxs.push(2048);
    }
    let mut v = Vec::new();
    for &ctx in &ctxs {
        for t in &a.types {
            let (k, vv) = parse_type_pair(t)?;
            let rots: &[bool] = if quantized(&k) || quantized(&vv) {
                &[false, true]
            } else {
                &[true]
            };
            for &rotation in rots {
                for kern in &kernels {
                    // The quality mode only changes quantized cache writes.
                    if kern == "quality" && !(quantized(&k) || quantized(&vv)) {
                        continue;
                    }
                    v.push(Config {
                        type_k: k.clone(),
                        type_v: vv.clone(),
                        rotation,
                        kernels: kern.clone(),
                        mode: mode_of(kern).to_string(),
                        ctx,
                    });
                }
            }
        }
    }
    Ok(v)
}

struct Tools {
    perplexity: PathBuf,
    lib: Option<PathBuf>,
    /// ATTNROT_POLICY of the quality runs
    policy: Option<PathBuf>,
}

fn run_perplexity(
    tools: &Tools,
    model: &Path,
    base: &Path,
    cfg: &Config,
    a: &Args,
    chunks: usize,
) -> Result<(String, f64)> {
    let mut cmd = Command::new(&tools.perplexity);
    cmd.args(["-m"]).arg(model);
    cmd.args(["--kl-divergence-base"])
        .arg(base)
        .arg("--kl-divergence");
    cmd.args([
        "-c",
        &cfg.ctx.to_string(),
        "--chunks",
        &chunks.to_string(),
        "-t",
        &a.threads.to_string(),
    ]);
    cmd.args([
        "-ctk",
        &cfg.type_k,
        "-ctv",
        &cfg.type_v,
        "-fa",
        "on",
        // ggml's loader then logs which backends it loaded, checked below
        "-v",
    ]);
    if !cfg.rotation {
        cmd.env("LLAMA_ATTN_ROT_DISABLE", "1");
    }
    backend_env(&mut cmd, tools, &cfg.kernels)?;
    let t = Instant::now();
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {}", tools.perplexity.display()))?;
    let secs = t.elapsed().as_secs_f64();
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        let tail: Vec<&str> = log.lines().rev().take(15).collect();
        bail!(
            "llama-perplexity failed for {cfg:?}:\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    let loaded = log.contains(crate::upstream::LOADED_LINE);
    if cfg.kernels != "stock" && !loaded {
        bail!("llama-perplexity ran without the attnrot backend (GGML_BACKEND_PATH was ignored?) for {cfg:?}");
    }
    if cfg.kernels == "quality" {
        check_policy_loaded(&log, tools.policy.as_deref()).with_context(|| format!("{cfg:?}"))?;
    }
    if cfg.kernels == "stock" && loaded {
        bail!("the stock run loaded the attnrot backend (GGML_BACKEND_DIR or a copy next to llama-perplexity?)");
    }
    Ok((log, secs))
}

/// The quality policy of the `quality` runs (`--policy`, `--no-policy`): the given file, none,
/// or by default the model's policy in ~/.cache/attnrot (`attnrot tune` writes it) if it
/// exists. When `announce`, says on stderr which one the quality runs use.
pub fn quality_policy(
    policy: &Option<PathBuf>,
    no_policy: bool,
    model: &Path,
    announce: bool,
) -> Result<Option<PathBuf>> {
    let policy = match (policy, no_policy) {
        (Some(p), _) if !p.is_file() => bail!("policy file {} does not exist", p.display()),
        (Some(p), _) => Some(p.clone()),
        (None, true) => None,
        (None, false) => Some(crate::tune::default_policy_path(model)?).filter(|p| p.is_file()),
    };
    if announce {
        match &policy {
            Some(p) => eprintln!("attnrot: quality runs use the policy {}", p.display()),
            None => eprintln!(
                "attnrot: quality runs without a policy (squared-error search only); `attnrot tune` writes one"
            ),
        }
    }
    Ok(policy)
}

/// The environment of a quality run: `ATTNROT_QUALITY=1`, and `ATTNROT_POLICY` when there is
/// a policy.
pub fn quality_env(cmd: &mut Command, policy: Option<&Path>) {
    cmd.env("ATTNROT_QUALITY", "1");
    if let Some(p) = policy {
        cmd.env("ATTNROT_POLICY", p);
    }
}

/// Checks a quality run's log (llama.cpp at `-v`): with a policy, the backend must have
/// loaded it and found it matches the model (else it ran in exact mode).
pub fn check_policy_loaded(log: &str, policy: Option<&Path>) -> Result<()> {
    if policy.is_some() {
        if !log.contains("quality policy for") {
            bail!("the quality run did not load its policy (ATTNROT_POLICY)");
        }
        if log.contains("the policy does not match this model") {
            bail!("the policy does not match the model");
        }
    }
    Ok(())
}

/// The progress bar of the real-model commands: elapsed time, bar, `count` (an indicatif
/// template piece such as `{pos}/{len} runs` or `{percent}%`), ETA and a message.
pub fn progress_bar(len: u64, count: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template(&format!(
            "{{spinner}} [{{elapsed_precise}}] {{bar:30}} {count}, ETA {{eta}} — {{msg}}"
        ))
        .unwrap(),
    );
    // elapsed time and spinner move during long runs too
    bar.enable_steady_tick(std::time::Duration::from_secs(1));
    bar
}

/// The environment of a run with `kernels` (stock, attnrot, quality): our backend or not,
/// the quality switch, nothing inherited that would change either.
fn backend_env(cmd: &mut Command, tools: &Tools, kernels: &str) -> Result<()> {
    cmd.env_remove("GGML_BACKEND_PATH")
        .env_remove("ATTNROT_FA_ALL")
        .env_remove("ATTNROT_OPS")
        .env_remove("ATTNROT_QUALITY")
        .env_remove("ATTNROT_POLICY");
    if kernels != "stock" {
        cmd.env(
            "GGML_BACKEND_PATH",
            tools.lib.as_ref().context("no libattnrot.so")?,
        );
        // These runs use an explicit `-fa on`, so the backend may take the f16/bf16 caches'
        // writes and attention too (by default it leaves them to the CPU, for `-fa auto`):
        // the f16 rows then measure our kernels, not stock's twice.
        cmd.env("ATTNROT_FA_ALL", "1");
    }
    if kernels == "quality" {
        quality_env(cmd, tools.policy.as_deref());
    }
    Ok(())
}

/// Write `bytes` to `path` atomically (no half-written output on failure).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

pub fn run(a: Args) -> Result<()> {
    let cfgs = configs(&a)?;
    if a.chunks == 0 {
        bail!("--chunks must be at least 1");
    }
    if a.ctx < 16 {
        bail!("--ctx must be at least 16");
    }
    let model = upstream::model(&a.model)?;
    let text = upstream::given_or(&a.text, "text", crate::text::default_text)?;
    let bin = upstream::upstream_bin()?;
    let lib = if a.base == "exact" || cfgs.iter().any(|c| c.kernels != "stock") {
        Some(upstream::backend_lib()?)
    } else {
        None
    };
    let policy = quality_policy(
        &a.policy,
        a.no_policy,
        &model,
        cfgs.iter().any(|c| c.kernels == "quality"),
    )?;
    let tools = Tools {
        perplexity: bin.join("llama-perplexity"),
        lib,
        policy,
    };

    let work = crate::text::cache_dir()?.join(format!("eval-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let _cleanup = Cleanup(work.clone());

    let mut rows: Vec<Row> = Vec::new();
    let bar = progress_bar(cfgs.len() as u64 + 1, "{pos}/{len} runs");
    let ctxs: Vec<usize> = {
        let mut c: Vec<usize> = cfgs.iter().map(|c| c.ctx).collect();
        c.dedup();
        c
    };
    for ctx in ctxs {
        // f16 base logits for this context
        bar.set_message(format!("f16 base logits ({}), ctx {ctx}", a.base));
        let base = work.join(format!("base-{ctx}.kld"));
        let mut cmd = Command::new(&tools.perplexity);
        cmd.arg("-m")
            .arg(&model)
            .arg("-f")
            .arg(&text)
            .arg("--kl-divergence-base")
            .arg(&base);
        cmd.args([
            "-c",
            &ctx.to_string(),
            "--chunks",
            &a.chunks.to_string(),
            "-t",
            &a.threads.to_string(),
        ]);
        cmd.args(["-ctk", "f16", "-ctv", "f16", "-fa", "on", "-v"]);
        cmd.env_remove("LLAMA_ATTN_ROT_DISABLE");
        let base_kernels = if a.base == "exact" {
            "attnrot"
        } else {
            "stock"
        };
        backend_env(&mut cmd, &tools, base_kernels)?;
        let out = cmd
            .stdin(Stdio::null())
            .output()
            .context("cannot run llama-perplexity")?;
        let log = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        // llama-perplexity can exit 0 after an error: a finished base run prints its estimate
        if !out.status.success() || !base.exists() || !log.contains("Final estimate: PPL") {
            if log.contains("you need at least") || log.contains("not enough for a context") {
                bail!(
                    "the text {} is too short for {} chunks of {ctx} tokens: use fewer --chunks or a longer --text",
                    text.display(),
                    a.chunks
                );
            }
            let tail: Vec<&str> = log.lines().rev().take(15).collect();
            bail!(
                "the f16 base run failed:\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        if (a.base == "exact") != log.contains(crate::upstream::LOADED_LINE) {
            bail!(
                "the f16 base run ({} base) {} the attnrot backend",
                a.base,
                if a.base == "exact" {
                    "did not load"
                } else {
                    "loaded"
                }
            );
        }
        let got_chunks = log.lines().find_map(|l| {
            l.split("calculating perplexity over ")
                .nth(1)
                .and_then(|r| r.split(' ').next())
                .and_then(|n| n.parse::<usize>().ok())
        });
        if let Some(g) = got_chunks {
            if g < a.chunks {
                bail!("the text has only {g} chunks of {ctx} tokens, {} asked: use fewer --chunks or a longer --text", a.chunks);
            }
        }
        bar.inc(1);
        for cfg in cfgs.iter().filter(|c| c.ctx == ctx) {
            bar.set_message(format!(
                "{} rot {} {} ctx {}",
                cfg.label(),
                if cfg.rotation { "on" } else { "off" },
                cfg.kernels,
                cfg.ctx
            ));
            let (log, secs) = run_perplexity(&tools, &model, &base, cfg, &a, a.chunks)?;
            let stats = ppl::parse_kld(&log)?;
            let tps = ppl::parse_prompt_tps(&log)?;
            rows.push(Row {
                config: cfg.clone(),
                stats,
                tokens_per_s: tps,
                seconds: secs,
            });
            bar.inc(1);
        }
    }
    bar.finish_and_clear();

    print_table(&rows, &model, &text, &a);
    if let Some(j) = &a.json {
        let doc = serde_json::json!({
            "model": model.display().to_string(),
            "text": text.display().to_string(),
            "chunks": a.chunks,
            "threads": a.threads,
            "base": a.base,
            "policy": tools.policy.as_ref().map(|p| p.display().to_string()),
            "rows": rows,
        });
        write_atomic(j, serde_json::to_string_pretty(&doc)?.as_bytes())?;
        println!("wrote {}", j.display());
    }
    if !a.no_chart {
        crate::chart::kld_chart(&rows, &a.chart)?;
        println!("wrote {}", a.chart.display());
    }
    Ok(())
}

struct Cleanup(PathBuf);
impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn print_table(rows: &[Row], model: &Path, text: &Path, a: &Args) {
    println!(
        "model {} | text {} | {} chunks | {} threads | KLD vs the {} f16-cache run",
        model.file_name().unwrap_or_default().to_string_lossy(),
        text.file_name().unwrap_or_default().to_string_lossy(),
        a.chunks,
        a.threads,
        a.base
    );
    println!(
        "{:<12} {:>4} {:>5} {:<8} {:>18} {:>20} {:>9} {:>15} {:>8}",
        "cache K/V", "ctx", "rot", "kernels", "PPL", "mean KLD", "KLD p99", "same top %", "t/s"
    );
    // -0.000000: a KLD of -1e-9 is the base run's own logits, print it as 0
    let z = |v: f64| if v.abs() < 5e-7 { 0.0 } else { v };
    for r in rows {
        let c = &r.config;
        let s = &r.stats;
        println!(
            "{:<12} {:>4} {:>5} {:<8} {:>9.4} ± {:<6.4} {:>9.6} ± {:<8.6} {:>9.5} {:>7.3} ± {:<5.3} {:>8.1}",
            c.label(),
            c.ctx,
            if c.type_k == "f16" && c.type_v == "f16" { "-" } else if c.rotation { "on" } else { "off" },
            c.kernels,
            s.ppl,
            s.ppl_err,
            z(s.kld_mean),
            s.kld_err,
            s.kld_p99,
            s.same_top,
            s.same_top_err,
            r.tokens_per_s
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        a: Args,
    }

    #[test]
    fn default_configs() {
        let t = T::parse_from(["x"]);
        let c = configs(&t.a).unwrap();
        // f16: 1 rotation setting x 2 kernels (quality changes nothing there); 7 quantized
        // entries x 2 rotation settings x 3 kernels
        assert_eq!(c.len(), 2 + 7 * 6);
        assert!(c
            .iter()
            .all(|c| c.kernels != "quality" || c.type_k != "f16"));
        assert!(c
            .iter()
            .any(|c| c.type_k == "q4_0" && c.kernels == "quality" && c.mode == "quality"));
        assert!(c.iter().any(|c| c.type_k == "q8_0"
            && c.type_v == "q4_0"
            && c.rotation
            && c.kernels == "attnrot"));
    }

    #[test]
    fn bad_types_are_errors() {
        let t = T::parse_from(["x", "--types", "q3_k"]);
        assert!(configs(&t.a)
            .unwrap_err()
            .to_string()
            .contains("unknown cache type"));
        let t = T::parse_from(["x", "--kernels", "cuda"]);
        assert!(configs(&t.a).is_err());
    }
}
