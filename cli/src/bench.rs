//! `attnrot bench`: prompt-processing and decode speed on a real model, stock llama.cpp vs
//! the same binary with `GGML_BACKEND_PATH=libattnrot.so` in exact mode and in the quality
//! mode, rotation on/off, in one run. Drives upstream's own `llama-bench -o json` and reports
//! median and spread of its samples. With no options it is a few minutes' run (quantized
//! caches at depth 4096); `--full` is the long sweep.
use crate::upstream;
use anyhow::{bail, Context, Result};
use indicatif::style::ProgressTracker;
use indicatif::{HumanDuration, ProgressState};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(clap::Args, Clone)]
pub struct Args {
    /// GGUF model, or `smollm2` / `gemma3` (fetched and verified on first use; default: smollm2,
    /// SmolLM2-135M-Instruct Q4_1).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Cache types (K=V) [default: q8_0,q4_0; with --full: f16,q8_0,q4_0].
    #[arg(long, value_delimiter = ',')]
    pub types: Vec<String>,
    /// Depths (tokens already in the cache) [default: 4096; with --full: 0,4096].
    #[arg(long, value_delimiter = ',')]
    pub depths: Vec<usize>,
    /// Add depth 16384.
    #[arg(long)]
    pub deep: bool,
    /// Prompt tokens (pp test).
    #[arg(long, default_value_t = 512)]
    pub prompt: usize,
    /// Generated tokens (tg test).
    #[arg(long, default_value_t = 128)]
    pub gen: usize,
    /// Repetitions: llama-bench runs per kernels and configuration, the kernels' runs
    /// alternating [default: 1; with --full: 3].
    #[arg(long)]
    pub reps: Option<usize>,
    /// Samples per llama-bench run (its `-r`: the depth is filled once per run, the samples
    /// follow one another) [default: 2; with --full: 1].
    #[arg(long)]
    pub samples: Option<usize>,
    /// Threads.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Rotation settings to run: on, off [default: on; with --full: on,off].
    #[arg(long, value_delimiter = ',')]
    pub rotation: Vec<String>,
    /// Kernels to compare: stock (upstream's CPU backend), attnrot (our backend, exact mode),
    /// quality (our backend with ATTNROT_QUALITY=1; quantized caches only).
    #[arg(long, value_delimiter = ',', default_value = "stock,attnrot,quality")]
    pub kernels: Vec<String>,
    /// Quality policy for the `quality` runs (default: the model's policy in ~/.cache/attnrot
    /// if `attnrot tune` wrote one, else the squared-error search alone).
    #[arg(long)]
    pub policy: Option<PathBuf>,
    /// Quality runs without a policy even if the model has one.
    #[arg(long, conflicts_with = "policy")]
    pub no_policy: bool,
    /// The long sweep (about an hour on 2 cores with the quality rows): f16 as well, depths 0
    /// and 4096, rotation on and off, 3 alternating repetitions of one sample each; options
    /// given explicitly still win. Without it the run takes under 10 minutes on a quiet 2-core
    /// machine: q8_0 and q4_0 at depth 4096, rotation on, one run of 2 samples per kernels.
    #[arg(long)]
    pub full: bool,
    /// Write the results as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Also measure what one graph split costs: decode at depth 0, stock vs the backend
    /// claiming only the Hadamard products (`ATTNROT_OPS=hadamard`: ~free nodes, 4 extra
    /// splits per layer), per extra split.
    #[arg(long)]
    pub split_cost: bool,
}

/// What one `attnrot bench` run measures: the options, with the defaults of the quick run or
/// of `--full` filled in where none was given.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub types: Vec<String>,
    pub depths: Vec<usize>,
    pub reps: usize,
    pub samples: usize,
    pub rotations: Vec<bool>,
    /// stock, attnrot, quality (in this order of first run)
    pub kernels: Vec<String>,
}

impl Plan {
    pub fn of(a: &Args) -> Result<Plan> {
        let or = |given: &[String], quick: &str, full: &str| -> Vec<String> {
            if !given.is_empty() {
                return given.to_vec();
            }
            let d = if a.full { full } else { quick };
            d.split(',').map(str::to_string).collect()
        };
        let types = or(&a.types, "q8_0,q4_0", "f16,q8_0,q4_0");
        for t in &types {
            if !crate::eval::KV_TYPES.contains(&t.as_str()) {
                bail!(
                    "unknown cache type '{t}' (one of {})",
                    crate::eval::KV_TYPES.join(", ")
                );
            }
        }
        let mut depths = if !a.depths.is_empty() {
            a.depths.clone()
        } else if a.full {
            vec![0, 4096]
        } else {
            vec![4096]
        };
        if a.deep && !depths.contains(&16384) {
            depths.push(16384);
        }
        let mut rotations = Vec::new();
        for r in or(&a.rotation, "on", "on,off") {
            match r.as_str() {
                "on" => rotations.push(true),
                "off" => rotations.push(false),
                _ => bail!("--rotation takes on,off (got '{r}')"),
            }
        }
        let kernels = crate::eval::parse_kernels(&a.kernels)?;
        let reps = a.reps.unwrap_or(if a.full { 3 } else { 1 });
        if reps == 0 {
            bail!("--reps must be at least 1");
        }
        let samples = a.samples.unwrap_or(if a.full { 1 } else { 2 });
        if samples == 0 {
            bail!("--samples must be at least 1");
        }
        Ok(Plan {
            types,
            depths,
            reps,
            samples,
            rotations,
            kernels,
        })
    }

    /// The (cache, rotation, kernels) configurations in run order: rotation and the quality
    /// mode only where they change something (a quantized cache).
    pub fn configs(&self) -> Vec<(String, bool, Vec<String>)> {
        let mut v = Vec::new();
        for t in &self.types {
            let q = crate::eval::quantized(t);
            let rots = if q {
                self.rotations.clone()
            } else {
                vec![true]
            };
            let kernels: Vec<String> = self
                .kernels
                .iter()
                .filter(|k| q || k.as_str() != "quality")
                .cloned()
                .collect();
            for rot in rots {
                v.push((t.clone(), rot, kernels.clone()));
            }
        }
        v
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Sample {
    pub cache: String,
    pub rotation: bool,
    /// stock, attnrot or quality
    pub kernels: String,
    /// The cache-write mode: `stock` (upstream's CPU backend), `exact` (attnrot, bit-exact
    /// with upstream) or `quality` (attnrot with `ATTNROT_QUALITY=1`), as in `attnrot eval`.
    pub mode: &'static str,
    /// The quality runs' policy file (ATTNROT_POLICY), if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    pub test: String,
    pub depth: usize,
    pub median_ts: f64,
    pub min_ts: f64,
    pub max_ts: f64,
    /// Graph splits of the decode (tg) graph, from llama.cpp's `sched_reserve` log line.
    pub splits_tg: Option<usize>,
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    }
}

/// (min, max) of samples.
fn spread(v: &[f64]) -> (f64, f64) {
    let lo = v.iter().cloned().fold(f64::INFINITY, f64::min);
    let hi = v.iter().cloned().fold(0.0, f64::max);
    (lo, hi)
}

/// llama-bench arguments of one run: `-r samples`, flash attention on, `cache` as K and V.
fn bench_args(
    a: &Args,
    model: &Path,
    prompt: usize,
    depths: &str,
    cache: &str,
    samples: usize,
) -> Vec<String> {
    let model = model.to_string_lossy();
    let (prompt, gen, threads) = (prompt.to_string(), a.gen.to_string(), a.threads.to_string());
    let samples = samples.to_string();
    [
        "-m", &model, "-p", &prompt, "-n", &gen, "-d", depths, "-r", &samples, "-t", &threads,
        "-ctk", cache, "-ctv", cache, "-fa", "1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// `(test, depth, samples_ts)` rows of one llama-bench run.
pub type BenchRows = Vec<(String, usize, Vec<f64>)>;

/// Parse `llama-bench -o json` output into (test, depth, samples_ts).
pub fn parse_bench_json(s: &str) -> Result<BenchRows> {
    let start = s.find('[').context("llama-bench printed no JSON array")?;
    let v: serde_json::Value =
        serde_json::from_str(&s[start..]).context("llama-bench JSON does not parse")?;
    let arr = v.as_array().context("llama-bench JSON is not an array")?;
    let mut out = Vec::new();
    for t in arr {
        let np = t["n_prompt"].as_u64().context("no n_prompt")?;
        let ng = t["n_gen"].as_u64().context("no n_gen")?;
        let nd = t["n_depth"].as_u64().context("no n_depth")? as usize;
        let ts: Vec<f64> = t["samples_ts"]
            .as_array()
            .context("no samples_ts")?
            .iter()
            .map(|x| x.as_f64().context("samples_ts not numbers"))
            .collect::<Result<_>>()?;
        if ts.is_empty() {
            bail!("llama-bench reported no samples");
        }
        let test = if ng == 0 {
            format!("pp{np}")
        } else if np == 0 {
            format!("tg{ng}")
        } else {
            format!("pp{np}+tg{ng}")
        };
        out.push((test, nd, ts));
    }
    Ok(out)
}

/// Splits of the decode graph from the last `sched_reserve: graph…: … splits = N[ / M] …`
/// line llama.cpp logged (llama-context.cpp: `M` is the tg graph when pp and tg differ).
pub fn parse_tg_splits(log: &str) -> Option<usize> {
    let line = log
        .lines()
        .rev()
        .find(|l| l.contains("sched_reserve: graph"))?;
    let rest = &line[line.find("splits = ")? + "splits = ".len()..];
    let field = rest.split(',').next()?;
    field.split('/').next_back()?.trim().parse().ok()
}

/// One llama-bench run: `(test, depth, samples_ts)` rows and the decode graph's splits.
/// Checks that our backend loaded exactly when `lib` is given.
/// `quality`: run in the quality mode, with this policy if any (our backend only).
fn llama_bench(
    bin: &Path,
    args: &[String],
    lib: Option<&Path>,
    env: &[(&str, &str)],
    quality: Option<Option<&Path>>,
) -> Result<(BenchRows, Option<usize>)> {
    let mut cmd = Command::new(bin.join("llama-bench"));
    cmd.args(args).args(["-o", "json", "-v"]);
    cmd.env_remove("GGML_BACKEND_PATH")
        .env_remove("LLAMA_ATTN_ROT_DISABLE")
        .env_remove("ATTNROT_OPS")
        .env_remove("ATTNROT_QUALITY")
        .env_remove("ATTNROT_POLICY");
    for (k, v) in env {
        cmd.env(k, v);
    }
    if let Some(lib) = lib {
        cmd.env("GGML_BACKEND_PATH", lib);
    }
    if let Some(policy) = quality {
        crate::eval::quality_env(&mut cmd, policy);
    }
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .context("cannot run llama-bench")?;
    let err = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        let tail: Vec<&str> = err.lines().rev().take(12).collect();
        bail!(
            "llama-bench failed ({}):\n{}",
            args.join(" "),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    let loaded = err.contains(crate::upstream::LOADED_LINE);
    if lib.is_some() != loaded {
        bail!(
            "llama-bench run: attnrot backend loaded = {loaded}, expected {}",
            lib.is_some()
        );
    }
    if let Some(policy) = quality {
        crate::eval::check_policy_loaded(&err, policy)?;
    }
    let rows = parse_bench_json(&String::from_utf8_lossy(&out.stdout))?;
    Ok((rows, parse_tg_splits(&err)))
}

/// `--split-cost`: decode at depth 0 (q8_0 cache, rotation on), stock vs the backend with
/// only the Hadamard products claimed (`ATTNROT_OPS=hadamard`) and with everything; (time per
/// token difference) / (extra splits). The Hadamard products are a few hundred multiply-adds
/// per token either way, so the difference is what the extra splits cost (our faster product
/// makes it a slight underestimate). Runs alternate (`-r 1` each, order rotated every round,
/// max(reps, 5) rounds); the medians are compared and stock's own spread printed as the noise.
fn split_cost(a: &Args, reps: usize, bin: &Path, lib: &Path, model: &Path) -> Result<()> {
    let args = bench_args(a, model, 0, "0", "q8_0", 1);
    type Side<'a> = (&'a str, Option<&'a Path>, Vec<(&'a str, &'a str)>);
    let sides: [Side; 3] = [
        ("stock", None, vec![]),
        (
            "attnrot, hadamard only",
            Some(lib),
            vec![("ATTNROT_OPS", "hadamard")],
        ),
        ("attnrot", Some(lib), vec![]),
    ];
    let mut ts: [Vec<f64>; 3] = Default::default();
    let mut splits = [0usize; 3];
    let rounds = reps.max(5);
    for round in 0..rounds {
        for k in 0..3 {
            let i = (round + k) % 3;
            let (_, lib, env) = &sides[i];
            let (rows, sp) = llama_bench(bin, &args, *lib, env, None)?;
            let r = rows
                .into_iter()
                .next()
                .context("llama-bench gave no rows")?;
            ts[i].extend(r.2);
            splits[i] = sp.context("no `sched_reserve: graph` line in llama-bench -v output")?;
        }
    }
    let mut med = [0f64; 3];
    let mut lohi = [(0f64, 0f64); 3];
    for i in 0..3 {
        med[i] = median(&mut ts[i].clone());
        lohi[i] = spread(&ts[i]);
        let (lo, hi) = lohi[i];
        println!(
            "  {:<24} tg{} {:>8.1} t/s [{lo:.1}–{hi:.1}]  {:>4} splits/token",
            sides[i].0, a.gen, med[i], splits[i]
        );
    }
    let extra = splits[1].saturating_sub(splits[0]);
    if extra == 0 {
        println!("  no extra splits with ATTNROT_OPS=hadamard: nothing to measure");
        return Ok(());
    }
    let us = (1.0 / med[1] - 1.0 / med[0]) * 1e6 / extra as f64;
    // stock's own spread: its slowest vs fastest run, per extra split
    let (lo, hi) = lohi[0];
    let noise = (1.0 / lo - 1.0 / hi) * 1e6 / extra as f64;
    let all_extra = splits[2].saturating_sub(splits[0]);
    println!(
        "  cost per extra split: {us:.1} µs (stock's own min–max spread: {noise:.1} µs per split); \
         {all_extra} extra splits/token with all claims = {:.2} ms/token at that price",
        us.max(0.0) * all_extra as f64 / 1e3
    );
    Ok(())
}

/// Rough seconds of one llama-bench run (SmolLM2, 2 threads, this kind of machine): the
/// progress bar weighs the runs by it, so its ETA holds although a stock run with a
/// quantized cache at depth 4096 takes several times as long as ours. Only the ratios
/// between runs matter (the ETA scales them by the measured pace).
pub fn est_seconds(
    kernels: &str,
    cache: &str,
    depths: &[usize],
    prompt: usize,
    gen: usize,
    samples: usize,
) -> f64 {
    // seconds per token at context position c: a + b·c, for prompt batches and for decode
    let (b_pp, b_tg) = match (kernels, crate::eval::quantized(cache), cache) {
        // an f16/bf16 cache is the CPU backend's on both sides
        (_, false, _) => (8e-7, 3.4e-6),
        ("stock", true, "q8_0") => (4e-6, 6e-6),
        ("stock", true, _) => (7.5e-6, 9e-6),
        _ => (5.5e-7, 1.8e-6),
    };
    // the quality mode's cache writes (the score-error search), per token of a prompt (two
    // threads write) and of decode (one row a layer)
    let (w_pp, w_tg) = if kernels == "quality" && crate::eval::quantized(cache) {
        (15e-3, 30e-3)
    } else {
        (0.0, 0.0)
    };
    let (a_pp, a_tg) = (1.0 / 300.0 + w_pp, 1.0 / 120.0 + w_tg);
    let pp = |from: f64, n: f64| n * (a_pp + b_pp * (from + n / 2.0));
    let tg = |from: f64, n: f64| n * (a_tg + b_tg * (from + n / 2.0));
    let (prompt, gen, samples) = (prompt as f64, gen as f64, samples as f64);
    let mut s = 2.0; // loading the model, contexts
    for &d in depths {
        let d = d as f64;
        // the depth is filled once per llama-bench run (its later tests restore the state)
        s += pp(0.0, d);
        if prompt > 0.0 {
            s += pp(0.0, prompt) + samples * pp(d, prompt); // warmup, test
        }
        if gen > 0.0 {
            s += tg(0.0, 1.0) + samples * tg(d, gen);
        }
    }
    s
}

pub fn run(a: Args) -> Result<()> {
    let plan = Plan::of(&a)?;
    let model = upstream::model(&a.model)?;
    let bin = upstream::upstream_bin()?;
    let lib = upstream::backend_lib()?;
    let configs = plan.configs();
    let any_quality = configs.iter().any(|c| c.2.iter().any(|k| k == "quality"));
    let policy = crate::eval::quality_policy(&a.policy, a.no_policy, &model, any_quality)?;
    // Per configuration the repetitions alternate the kernels (one `llama-bench -r 1` each,
    // the order rotated every repetition), so the drift of a shared machine hits all alike.
    let runs: Vec<(usize, usize, usize)> = configs
        .iter()
        .enumerate()
        .flat_map(|(c, cfg)| {
            let n = cfg.2.len();
            (0..plan.reps).flat_map(move |rep| (0..n).map(move |k| (c, rep, (rep + k) % n)))
        })
        .collect();
    let est: Vec<f64> = runs
        .iter()
        .map(|&(c, _, k)| {
            let (t, _, kern) = &configs[c];
            est_seconds(&kern[k], t, &plan.depths, a.prompt, a.gen, plan.samples)
        })
        .collect();
    let bar = crate::eval::progress_bar(est.iter().map(|s| (s * 1e3) as u64).sum(), "{percent}%");
    let eta = Eta::default();
    bar.set_style(bar.style().with_key("eta", eta.clone()));
    let depths = plan
        .depths
        .iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let policy_name = policy.as_ref().map(|p| p.display().to_string());
    type Key = (String, bool, String, String, usize);
    let mut acc: Vec<(Key, Vec<f64>, Option<usize>)> = Vec::new();
    for (i, &(c, rep, k)) in runs.iter().enumerate() {
        eta.start((est[i] * 1e3) as u64, bar.elapsed());
        let (t, rot, kernels) = &configs[c];
        let kern = kernels[k].as_str();
        bar.set_message(format!(
            "run {}/{}: {t} rot {} {kern} (rep {}/{})",
            i + 1,
            runs.len(),
            if *rot { "on" } else { "off" },
            rep + 1,
            plan.reps
        ));
        let args = bench_args(&a, &model, a.prompt, &depths, t, plan.samples);
        let env: Vec<(&str, &str)> = if *rot {
            vec![]
        } else {
            vec![("LLAMA_ATTN_ROT_DISABLE", "1")]
        };
        let (results, splits) = llama_bench(
            &bin,
            &args,
            (kern != "stock").then_some(lib.as_path()),
            &env,
            (kern == "quality").then_some(policy.as_deref()),
        )
        .with_context(|| format!("{t}, rotation {rot}, {kern}"))?;
        for (test, depth, ts) in results {
            let key: Key = (t.clone(), *rot, kern.to_string(), test, depth);
            match acc.iter_mut().find(|e| e.0 == key) {
                Some(e) => e.1.extend(ts),
                None => acc.push((key, ts, splits)),
            }
        }
        bar.inc((est[i] * 1e3) as u64);
    }
    bar.finish_and_clear();
    let mut rows: Vec<Sample> = acc
        .into_iter()
        .map(
            |((cache, rotation, kernels, test, depth), mut ts, splits)| {
                let (min, max) = spread(&ts);
                let mode = crate::eval::mode_of(&kernels);
                Sample {
                    cache,
                    rotation,
                    policy: policy_name.clone().filter(|_| mode == "quality"),
                    kernels,
                    mode,
                    test,
                    depth,
                    median_ts: median(&mut ts),
                    min_ts: min,
                    max_ts: max,
                    splits_tg: splits,
                }
            },
        )
        .collect();
    sort_rows(&mut rows, &plan.kernels);
    println!(
        "llama-bench, {} threads, {} rep(s) of {} sample(s) ({} runs alternating), median tokens/s [min–max]",
        a.threads,
        plan.reps,
        plan.samples,
        plan.kernels.join(", ")
    );
    print_table(&rows);
    println!("splits = graph splits of one decode step (llama.cpp's sched_reserve line)");
    if any_quality {
        println!(
            "quality = our backend with ATTNROT_QUALITY=1, {}",
            match &policy {
                Some(p) => format!("policy {}", p.display()),
                None => "no policy (squared-error search only)".into(),
            }
        );
        let tg = format!("tg{}", a.gen);
        let q = quality_vs_exact(&rows, &tg);
        if !q.is_empty() {
            println!(
                "quality / exact mode, decode ({tg}): {} (goal: within 5 %, ≥ 0.95x, at depth 4096)",
                q.iter()
                    .map(|(c, rot, d, r)| format!(
                        "{c} rot {} depth {d} {r:.2}x",
                        if *rot { "on" } else { "off" }
                    ))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
    if a.split_cost {
        println!("what a graph split costs (decode, depth 0, q8_0 cache, rotation on):");
        split_cost(&a, plan.reps, &bin, &lib, &model)?;
    }
    if let Some(j) = &a.json {
        crate::eval::write_atomic(j, serde_json::to_string_pretty(&rows)?.as_bytes())?;
        println!("wrote {}", j.display());
    }
    Ok(())
}

/// The ETA of a bar whose units are expected milliseconds of work: the expected time left,
/// scaled by the pace of the runs done (their real over their expected time; 1 before the
/// first ends), less what the current run has taken so far (but never below what the runs
/// after it need).
#[derive(Clone, Default)]
struct Eta(Arc<Mutex<(Duration, u64)>>);

impl Eta {
    /// A run of `expected` units starts at `elapsed` (the bar's).
    fn start(&self, expected: u64, elapsed: Duration) {
        *self.0.lock().unwrap() = (elapsed, expected);
    }

    /// Seconds left: `pos` of `len` units done, `elapsed` now.
    fn left(&self, pos: u64, len: u64, elapsed: Duration) -> f64 {
        let (started, current) = *self.0.lock().unwrap();
        let pace = if pos > 0 {
            started.as_secs_f64() * 1e3 / pos as f64
        } else {
            1.0
        };
        let rest = len.saturating_sub(pos) as f64 * pace / 1e3;
        let after = len.saturating_sub(pos + current) as f64 * pace / 1e3;
        (rest - elapsed.saturating_sub(started).as_secs_f64()).max(after)
    }
}

impl ProgressTracker for Eta {
    fn clone_box(&self) -> Box<dyn ProgressTracker> {
        Box::new(self.clone())
    }
    fn tick(&mut self, _: &ProgressState, _: Instant) {}
    fn reset(&mut self, _: &ProgressState, _: Instant) {}
    fn write(&self, state: &ProgressState, w: &mut dyn std::fmt::Write) {
        let left = self.left(state.pos(), state.len().unwrap_or(0), state.elapsed());
        let _ = write!(w, "{:#}", HumanDuration(Duration::from_secs_f64(left)));
    }
}

/// Rows grouped by (cache, rotation, test, depth) in first-seen order, the kernels in `order`
/// within a group.
fn sort_rows(rows: &mut [Sample], order: &[String]) {
    let mut groups: Vec<(String, bool, String, usize)> = Vec::new();
    for r in rows.iter() {
        let g = (r.cache.clone(), r.rotation, r.test.clone(), r.depth);
        if !groups.contains(&g) {
            groups.push(g);
        }
    }
    rows.sort_by_key(|r| {
        let g = (r.cache.clone(), r.rotation, r.test.clone(), r.depth);
        (
            groups.iter().position(|x| *x == g),
            order.iter().position(|k| *k == r.kernels),
        )
    });
}

/// The row of the same cache, rotation, test and depth with other `kernels`.
fn twin<'a>(rows: &'a [Sample], s: &Sample, kernels: &str) -> Option<&'a Sample> {
    rows.iter().find(|o| {
        o.kernels == kernels
            && o.cache == s.cache
            && o.rotation == s.rotation
            && o.test == s.test
            && o.depth == s.depth
    })
}

/// (cache, rotation, depth, quality median / exact median) of every `test` row that has both.
pub fn quality_vs_exact(rows: &[Sample], test: &str) -> Vec<(String, bool, usize, f64)> {
    rows.iter()
        .filter(|q| q.kernels == "quality" && q.test == test)
        .filter_map(|q| {
            let e = twin(rows, q, "attnrot")?;
            Some((
                q.cache.clone(),
                q.rotation,
                q.depth,
                q.median_ts / e.median_ts,
            ))
        })
        .collect()
}

/// One row per (cache, rotation, test, depth, kernels), with the ratios to stock's and to
/// the exact mode's median.
pub fn print_table(rows: &[Sample]) {
    println!(
        "{:<7} {:>4} {:<7} {:>6} {:<8} {:>24} {:>8} {:>8} {:>6}",
        "cache", "rot", "test", "depth", "kernels", "t/s", "vs stock", "vs exact", "splits"
    );
    let ratio = |s: &Sample, k: &str| {
        twin(rows, s, k)
            .filter(|o| o.kernels != s.kernels)
            .map(|o| format!("{:.2}x", s.median_ts / o.median_ts))
            .unwrap_or_else(|| "-".into())
    };
    for s in rows {
        println!(
            "{:<7} {:>4} {:<7} {:>6} {:<8} {:>24} {:>8} {:>8} {:>6}",
            s.cache,
            if !crate::eval::quantized(&s.cache) {
                "-"
            } else if s.rotation {
                "on"
            } else {
                "off"
            },
            s.test,
            s.depth,
            s.kernels,
            format!("{:.1} [{:.1}–{:.1}]", s.median_ts, s.min_ts, s.max_ts),
            ratio(s, "stock"),
            if s.kernels == "quality" {
                ratio(s, "attnrot")
            } else {
                "-".into()
            },
            s.splits_tg.map(|n| n.to_string()).unwrap_or_default()
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

    fn plan(args: &[&str]) -> Result<Plan> {
        Plan::of(&T::parse_from(std::iter::once("x").chain(args.iter().copied())).a)
    }

    #[test]
    fn quick_default_full_and_explicit_plans() {
        let q = plan(&[]).unwrap();
        assert_eq!(q.types, ["q8_0", "q4_0"]);
        assert_eq!(q.depths, [4096]);
        assert_eq!(
            (q.reps, q.samples, q.rotations.as_slice()),
            (1, 2, &[true][..])
        );
        assert_eq!(q.kernels, ["stock", "attnrot", "quality"]);
        let f = plan(&["--full"]).unwrap();
        assert_eq!(f.types, ["f16", "q8_0", "q4_0"]);
        assert_eq!(f.depths, [0, 4096]);
        assert_eq!(
            (f.reps, f.samples, f.rotations.as_slice()),
            (3, 1, &[true, false][..])
        );
        // explicit options win over either set of defaults (the README's commands)
        let e = plan(&["--full", "--depths", "0", "--reps", "7"]).unwrap();
        assert_eq!((e.depths.as_slice(), e.reps), (&[0][..], 7));
        assert_eq!(e.rotations, [true, false]);
        let d = plan(&["--deep", "--types", "q4_0", "--kernels", "stock,quality"]).unwrap();
        assert_eq!(d.depths, [4096, 16384]);
        assert_eq!(d.kernels, ["stock", "quality"]);
        for bad in [
            &["--types", "q3_k"][..],
            &["--kernels", "cuda"],
            &["--rotation", "maybe"],
            &["--reps", "0"],
            &["--samples", "0"],
        ] {
            assert!(plan(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn quality_only_for_quantized_caches() {
        let c = plan(&["--full"]).unwrap().configs();
        // f16: rotation changes nothing; q8_0, q4_0: on and off
        assert_eq!(c.len(), 5);
        assert_eq!(
            c[0],
            ("f16".into(), true, vec!["stock".into(), "attnrot".into()])
        );
        assert!(c[1..].iter().all(|c| c.2.len() == 3 && c.2[2] == "quality"));
        assert_eq!(
            est_seconds("stock", "f16", &[4096], 512, 128, 1),
            est_seconds("attnrot", "f16", &[4096], 512, 128, 1)
        );
        // the progress weights: stock's quantized attention at depth is the long pole
        assert!(
            est_seconds("stock", "q4_0", &[4096], 512, 128, 1)
                > 2.0 * est_seconds("attnrot", "q4_0", &[4096], 512, 128, 1)
        );
    }

    #[test]
    fn eta_follows_the_pace_of_the_runs_done() {
        let s = Duration::from_secs;
        let e = Eta::default();
        // nothing done yet: the expectation itself (100 s), less the current run's time
        e.start(40_000, s(0));
        assert_eq!(e.left(0, 100_000, s(10)), 90.0);
        // the current run overran its 40 s: the 60 s after it remain
        assert_eq!(e.left(0, 100_000, s(50)), 60.0);
        // the first run (40 expected) took 80 s: twice the expectation for the rest
        e.start(60_000, s(80));
        assert_eq!(e.left(40_000, 100_000, s(80)), 120.0);
        assert_eq!(e.left(100_000, 100_000, s(200)), 0.0);
    }

    fn sample(cache: &str, kernels: &str, test: &str, ts: f64) -> Sample {
        Sample {
            cache: cache.into(),
            rotation: true,
            kernels: kernels.into(),
            mode: crate::eval::mode_of(kernels),
            policy: None,
            test: test.into(),
            depth: 4096,
            median_ts: ts,
            min_ts: ts,
            max_ts: ts,
            splits_tg: Some(1),
        }
    }

    #[test]
    fn rows_grouped_and_quality_ratio() {
        let order: Vec<String> = ["stock", "attnrot", "quality"].map(String::from).into();
        let mut rows = vec![
            sample("q4_0", "quality", "pp512", 100.0),
            sample("q4_0", "quality", "tg128", 60.0),
            sample("q4_0", "stock", "pp512", 20.0),
            sample("q4_0", "stock", "tg128", 20.0),
            sample("q4_0", "attnrot", "pp512", 200.0),
            sample("q4_0", "attnrot", "tg128", 75.0),
        ];
        sort_rows(&mut rows, &order);
        let got: Vec<(&str, &str)> = rows
            .iter()
            .map(|r| (r.test.as_str(), r.kernels.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("pp512", "stock"),
                ("pp512", "attnrot"),
                ("pp512", "quality"),
                ("tg128", "stock"),
                ("tg128", "attnrot"),
                ("tg128", "quality")
            ]
        );
        assert_eq!(rows[2].mode, "quality");
        let q = quality_vs_exact(&rows, "tg128");
        assert_eq!(q.len(), 1);
        assert_eq!((q[0].0.as_str(), q[0].2), ("q4_0", 4096));
        assert!((q[0].3 - 0.8).abs() < 1e-12);
        let j = serde_json::to_value(&rows[5]).unwrap();
        assert_eq!(
            (j["kernels"].as_str(), j["mode"].as_str()),
            (Some("quality"), Some("quality"))
        );
    }

    #[test]
    fn parses_llama_bench_json() {
        let s = r#"[
  {"n_prompt": 512, "n_gen": 0, "n_depth": 4096, "avg_ts": 50.0, "samples_ns": [1, 2], "samples_ts": [ 49.0, 51.0 ]},
  {"n_prompt": 0, "n_gen": 128, "n_depth": 0, "avg_ts": 30.0, "samples_ns": [1], "samples_ts": [ 30.5 ]}
]"#;
        let v = parse_bench_json(s).unwrap();
        assert_eq!(v[0].0, "pp512");
        assert_eq!(v[0].1, 4096);
        assert_eq!(v[1].0, "tg128");
        assert_eq!(median(&mut v[0].2.clone()), 50.0);
        assert!(parse_bench_json("garbage").is_err());
        assert!(parse_bench_json(r#"[{"n_prompt": 1}]"#).is_err());
    }

    #[test]
    fn parses_splits_line() {
        let same = "x\n0.00.185.344 I sched_reserve: graph: nodes = 1296, splits = 181, input objects = 4, input tensors = 8\n";
        assert_eq!(parse_tg_splits(same), Some(181));
        let diff = "sched_reserve: graph (pp bs=512, tg bs=1): nodes = 1300 / 1296, splits = 185 / 181, input objects = 4\n";
        assert_eq!(parse_tg_splits(diff), Some(181));
        assert_eq!(parse_tg_splits("no such line"), None);
    }
}
