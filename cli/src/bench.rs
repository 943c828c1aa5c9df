//! `attnrot bench`: prompt-processing and decode speed on a real model, stock llama.cpp vs
//! the same binary with `GGML_BACKEND_PATH=libattnrot.so`, rotation on/off, in one run.
//! Drives upstream's own `llama-bench -o json` and reports median and spread of its samples.
use crate::upstream;
use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use std::path::PathBuf;
use std::process::{Command, Stdio};

#[derive(clap::Args, Clone)]
pub struct Args {
    /// GGUF model, or `smollm2` / `gemma3` (fetched and verified on first use; default: smollm2,
    /// SmolLM2-135M-Instruct Q4_1).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Cache types (K=V).
    #[arg(long, value_delimiter = ',', default_value = "f16,q8_0,q4_0")]
    pub types: Vec<String>,
    /// Depths (tokens already in the cache).
    #[arg(long, value_delimiter = ',', default_value = "0,4096")]
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
    /// Repetitions per test.
    #[arg(long, default_value_t = 3)]
    pub reps: usize,
    /// Threads.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Rotation settings to run: on, off.
    #[arg(long, value_delimiter = ',', default_value = "on,off")]
    pub rotation: Vec<String>,
    /// Write the results as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Also measure what one graph split costs: decode at depth 0, stock vs the backend
    /// claiming only the Hadamard products (`ATTNROT_OPS=hadamard`: ~free nodes, 4 extra
    /// splits per layer), per extra split.
    #[arg(long)]
    pub split_cost: bool,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Sample {
    pub cache: String,
    pub rotation: bool,
    pub kernels: &'static str,
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

/// llama-bench arguments of one run: `-r 1`, flash attention on, `cache` as K and V.
fn bench_args(
    a: &Args,
    model: &std::path::Path,
    prompt: usize,
    depths: &str,
    cache: &str,
) -> Vec<String> {
    let model = model.to_string_lossy();
    let (prompt, gen, threads) = (prompt.to_string(), a.gen.to_string(), a.threads.to_string());
    [
        "-m", &model, "-p", &prompt, "-n", &gen, "-d", depths, "-r", "1", "-t", &threads, "-ctk",
        cache, "-ctv", cache, "-fa", "1",
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
fn llama_bench(
    bin: &std::path::Path,
    args: &[String],
    lib: Option<&std::path::Path>,
    env: &[(&str, &str)],
) -> Result<(BenchRows, Option<usize>)> {
    let mut cmd = Command::new(bin.join("llama-bench"));
    cmd.args(args).args(["-o", "json", "-v"]);
    cmd.env_remove("GGML_BACKEND_PATH")
        .env_remove("LLAMA_ATTN_ROT_DISABLE")
        .env_remove("ATTNROT_OPS");
    for (k, v) in env {
        cmd.env(k, v);
    }
    if let Some(lib) = lib {
        cmd.env("GGML_BACKEND_PATH", lib);
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
    let rows = parse_bench_json(&String::from_utf8_lossy(&out.stdout))?;
    Ok((rows, parse_tg_splits(&err)))
}

/// `--split-cost`: decode at depth 0 (q8_0 cache, rotation on), stock vs the backend with
/// only the Hadamard products claimed (`ATTNROT_OPS=hadamard`) and with everything; (time per
/// token difference) / (extra splits). The Hadamard products are a few hundred multiply-adds
/// per token either way, so the difference is what the extra splits cost (our faster product
/// makes it a slight underestimate). Runs alternate (`-r 1` each, order rotated every round,
/// max(reps, 5) rounds); the medians are compared and stock's own spread printed as the noise.
fn split_cost(
    a: &Args,
    bin: &std::path::Path,
    lib: &std::path::Path,
    model: &std::path::Path,
) -> Result<()> {
    let args = bench_args(a, model, 0, "0", "q8_0");
    type Side<'a> = (
        &'a str,
        Option<&'a std::path::Path>,
        Vec<(&'a str, &'a str)>,
    );
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
    let rounds = a.reps.max(5);
    for round in 0..rounds {
        for k in 0..3 {
            let i = (round + k) % 3;
            let (_, lib, env) = &sides[i];
            let (rows, sp) = llama_bench(bin, &args, *lib, env)?;
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

pub fn run(mut a: Args) -> Result<()> {
    if a.deep && !a.depths.contains(&16384) {
        a.depths.push(16384);
    }
    for t in &a.types {
        if ![
            "f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "iq4_nl",
        ]
        .contains(&t.as_str())
        {
            bail!("unknown cache type '{t}'");
        }
    }
    let mut rots = Vec::new();
    for r in &a.rotation {
        match r.as_str() {
            "on" => rots.push(true),
            "off" => rots.push(false),
            _ => bail!("--rotation takes on,off (got '{r}')"),
        }
    }
    let model = upstream::model(&a.model)?;
    let bin = upstream::upstream_bin()?;
    let lib = upstream::backend_lib()?;
    if a.reps == 0 {
        bail!("--reps must be at least 1");
    }
    // (cache, rotation) configurations. Per configuration the repetitions alternate stock and
    // attnrot (one `llama-bench -r 1` each, the side that goes first swapped every
    // repetition), so the drift of a shared machine hits both sides alike.
    let mut configs = Vec::new();
    for t in &a.types {
        let rr: Vec<bool> = if t == "f16" || t == "bf16" {
            vec![true]
        } else {
            rots.clone()
        };
        for rot in rr {
            configs.push((t.clone(), rot));
        }
    }
    let bar = ProgressBar::new((configs.len() * a.reps * 2) as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len}, ETA {eta} — {msg}",
        )
        .unwrap(),
    );
    let depths = a
        .depths
        .iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join(",");
    type Key = (String, bool, &'static str, String, usize);
    let mut acc: Vec<(Key, Vec<f64>, Option<usize>)> = Vec::new();
    for (t, rot) in &configs {
        for rep in 0..a.reps {
            let order = if rep % 2 == 0 {
                ["stock", "attnrot"]
            } else {
                ["attnrot", "stock"]
            };
            for kern in order {
                bar.set_message(format!(
                    "{t} rot {} {kern} (rep {}/{})",
                    if *rot { "on" } else { "off" },
                    rep + 1,
                    a.reps
                ));
                let args = bench_args(&a, &model, a.prompt, &depths, t);
                let env: Vec<(&str, &str)> = if *rot {
                    vec![]
                } else {
                    vec![("LLAMA_ATTN_ROT_DISABLE", "1")]
                };
                let (results, splits) = llama_bench(
                    &bin,
                    &args,
                    (kern == "attnrot").then_some(lib.as_path()),
                    &env,
                )
                .with_context(|| format!("{t}, rotation {rot}, {kern}"))?;
                for (test, depth, ts) in results {
                    let key: Key = (t.clone(), *rot, kern, test, depth);
                    match acc.iter_mut().find(|e| e.0 == key) {
                        Some(e) => e.1.extend(ts),
                        None => acc.push((key, ts, splits)),
                    }
                }
                bar.inc(1);
            }
        }
    }
    let rows: Vec<Sample> = acc
        .into_iter()
        .map(
            |((cache, rotation, kernels, test, depth), mut ts, splits)| {
                let (min, max) = spread(&ts);
                Sample {
                    cache,
                    rotation,
                    kernels,
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
    bar.finish_and_clear();
    println!(
        "llama-bench, {} threads, {} reps (stock and attnrot runs alternating), median tokens/s [min–max]; ratio = attnrot / stock",
        a.threads, a.reps
    );
    println!(
        "{:<7} {:>4} {:<7} {:>6} {:>24} {:>24} {:>7} {:>8}",
        "cache", "rot", "test", "depth", "stock t/s", "attnrot t/s", "ratio", "splits"
    );
    for s in rows.iter().filter(|s| s.kernels == "stock") {
        let o = rows.iter().find(|o| {
            o.kernels == "attnrot"
                && o.cache == s.cache
                && o.rotation == s.rotation
                && o.test == s.test
                && o.depth == s.depth
        });
        let fmt = |x: &Sample| format!("{:.1} [{:.1}–{:.1}]", x.median_ts, x.min_ts, x.max_ts);
        println!(
            "{:<7} {:>4} {:<7} {:>6} {:>24} {:>24} {:>7} {:>8}",
            s.cache,
            if s.cache == "f16" || s.cache == "bf16" {
                "-"
            } else if s.rotation {
                "on"
            } else {
                "off"
            },
            s.test,
            s.depth,
            fmt(s),
            o.map(fmt).unwrap_or_default(),
            o.map(|o| format!("{:.2}x", o.median_ts / s.median_ts))
                .unwrap_or_default(),
            match (s.splits_tg, o.and_then(|o| o.splits_tg)) {
                (Some(a), Some(b)) => format!("{a}→{b}"),
                _ => String::new(),
            }
        );
    }
    println!(
        "splits = graph splits of one decode step, stock→attnrot (llama.cpp's sched_reserve line)"
    );
    if a.split_cost {
        println!("what a graph split costs (decode, depth 0, q8_0 cache, rotation on):");
        split_cost(&a, &bin, &lib, &model)?;
    }
    if let Some(j) = &a.json {
        crate::eval::write_atomic(j, serde_json::to_string_pretty(&rows)?.as_bytes())?;
        println!("wrote {}", j.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
