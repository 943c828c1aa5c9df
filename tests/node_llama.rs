//! `libattnrot.so` in a prebuilt llama.cpp nobody here compiled: node-llama-cpp 3.22.1 with
//! its npm prebuilt `@node-llama-cpp/linux-x64` (llama.cpp v0.5.0, ggml 0.25.1, dynamic CPU
//! backends `libggml-cpu-<family>.so`, no OpenMP), driven by a JavaScript program on its public
//! API (`tests/hosts/node_llama.mjs`), installed by `scripts/fetch-npm-llama.sh` into the
//! attnrot cache (no download or build from GitHub: `--ignore-scripts`, `build: "never"`,
//! `NODE_LLAMA_CPP_SKIP_DOWNLOAD=true`).
//!
//! `node_llama_cpp_prebuilt`: for a q8_0 and a q4_0 K/V cache (node-llama-cpp's
//! `experimentalKvCacheKeyType`/`ValueType`; llama.cpp's rotation on, as by default), once
//! without and once with `GGML_BACKEND_PATH=libattnrot.so`:
//! * our backend is really active: its registration line (host ggml 0.25.1 commit 0ad4a86,
//!   found privately — node loads ggml `RTLD_LOCAL`), "loaded AttnRot backend", and more
//!   graph splits than stock in llama.cpp's debug log; the stock run has none of it;
//! * greedy text (64 tokens) identical, or else the difference is noise: teacher-forced logits
//!   over [`POSITIONS`] tokens of the Jargon File, mean KL divergence of ours vs stock within
//!   2x the rounding-noise floor (ours with another SIMD variant, `ATTNROT_ISA`, vs ours) +
//!   1e-4 — the rule of `tests/backend_e2e.rs`. The KLD ours vs stock is printed always.
//!
//! Threads: one (`maxThreads: 1`). The prebuilt's ggml thread pool (no OpenMP) spins, and on
//! this shared 2-core box two threads took 56 s for 64 tokens against 1.2 s with one.
//!
//! Needs node ≥ 20 and npm (registry reachable the first time): a failure in CI, a printed
//! skip elsewhere.
mod common;

use common::{
    assert_within_noise_floor, kld_logits, model, other_isa, print_host_summary, read_f32, require,
    run_host, try_script, HostRun,
};
use std::path::PathBuf;
use std::process::Command;

/// Teacher-forced positions whose logits are compared.
const POSITIONS: usize = 256;

struct Setup {
    install: PathBuf,
    model: PathBuf,
    text: PathBuf,
    tmp: PathBuf,
}

fn setup() -> Option<Setup> {
    let node = Command::new("node").arg("--version").output();
    let major = node
        .as_ref()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .trim()
                .trim_start_matches('v')
                .split('.')
                .next()
                .and_then(|m| m.parse::<u32>().ok())
        });
    if !require(
        major.is_some_and(|m| m >= 20),
        &format!("node >= 20 not found (node --version: {major:?})"),
    ) {
        return None;
    }
    let install = match try_script("fetch-npm-llama.sh", &["install"]) {
        Ok(p) => p,
        Err(e) => {
            let _ = require(false, &format!("node-llama-cpp not installable: {e}"));
            return None;
        }
    };
    let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("node-llama");
    std::fs::create_dir_all(&tmp).unwrap();
    let text = tmp.join("text.txt");
    // enough prose for POSITIONS tokens (~4 bytes a token)
    let prose = common::jargon_prose();
    let mut end = (POSITIONS * 16).min(prose.len());
    while !prose.is_char_boundary(end) {
        end -= 1;
    }
    std::fs::write(&text, &prose[..end]).unwrap();
    Some(Setup {
        install,
        model: model(),
        text,
        tmp,
    })
}

/// One run of the JavaScript program.
struct NodeRun {
    text: String,
    stderr: String,
    logits: PathBuf,
    n_vocab: usize,
}

impl Drop for NodeRun {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.logits);
    }
}

/// `splits = N` of llama.cpp's `sched_reserve: graph: …` lines.
fn splits(stderr: &str) -> Vec<usize> {
    stderr
        .lines()
        .filter(|l| l.contains("sched_reserve: graph:"))
        .filter_map(|l| l.split("splits = ").nth(1))
        .filter_map(|s| s.split(|c: char| !c.is_ascii_digit()).next())
        .filter_map(|s| s.parse().ok())
        .collect()
}

/// A JSON string field of the script's one-line report (the report is flat and produced by
/// `JSON.stringify`, so a small scanner does).
fn json_field(json: &str, key: &str) -> Option<String> {
    let start = json.find(&format!("\"{key}\":"))? + key.len() + 3;
    let rest = &json[start..];
    if let Some(body) = rest.strip_prefix('"') {
        let mut out = String::new();
        let mut it = body.chars();
        while let Some(c) = it.next() {
            match c {
                '"' => return Some(out),
                '\\' => match it.next()? {
                    'n' => out.push('\n'),
                    't' => out.push('\t'),
                    'r' => out.push('\r'),
                    'u' => {
                        let hex: String = it.by_ref().take(4).collect();
                        out.push(char::from_u32(u32::from_str_radix(&hex, 16).ok()?)?);
                    }
                    c => out.push(c),
                },
                c => out.push(c),
            }
        }
        None
    } else {
        Some(
            rest.split([',', '}'])
                .next()
                .unwrap_or("")
                .trim()
                .to_string(),
        )
    }
}

fn run_node(s: &Setup, ty: &str, ours: bool, env: &[(&str, &str)], tag: &str) -> NodeRun {
    let script = common::repo_root().join("tests/hosts/node_llama.mjs");
    let logits = s
        .tmp
        .join(format!("logits-{ty}-{tag}-{}.f32", std::process::id()));
    let mut cmd = Command::new("node");
    cmd.arg(&script)
        .arg(&s.install)
        .arg(&s.model)
        .args([ty, ty])
        .arg(&s.text)
        .arg(POSITIONS.to_string())
        .arg(&logits)
        .env("NODE_LLAMA_CPP_SKIP_DOWNLOAD", "true");
    let HostRun {
        stdout: out,
        stderr,
        tail,
    } = run_host(cmd, &format!("node node_llama.mjs {ty}/{ty}"), ours, env);
    let json = out
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("no report from node_llama.mjs:\n{out}\n{tail}"));
    let field = |k: &str| json_field(json, k).unwrap_or_else(|| panic!("no {k} in {json}"));
    assert_eq!(field("buildType"), "prebuilt", "not the npm prebuilt");
    let want_ty = match ty {
        "Q8_0" => "8",
        "Q4_0" => "2",
        _ => unreachable!(),
    };
    assert_eq!(field("kvCacheKeyType"), want_ty, "K cache type");
    assert_eq!(field("kvCacheValueType"), want_ty, "V cache type");
    // what ran, from llama.cpp's own log
    assert!(
        stderr.contains("load_backend: loaded CPU backend from")
            && stderr.contains("@node-llama-cpp/linux-x64/bins/linux-x64/libggml-cpu-"),
        "the prebuilt CPU backend was not loaded:\n{tail}"
    );
    assert!(
        stderr.contains("attn_rot_k = 1"),
        "llama.cpp's rotation is not on:\n{tail}"
    );
    let sp = splits(&stderr);
    assert!(!sp.is_empty(), "no sched_reserve line in the debug log");
    if ours {
        let reg = common::registration_line(&stderr, &tail);
        assert!(
            reg.contains("host ggml 0.25.1 commit 0ad4a86, backend API 2")
                && reg.contains("private ggml"),
            "unexpected registration: {reg}"
        );
        assert!(stderr.contains("loaded AttnRot backend from"));
        assert!(
            sp.iter().any(|&n| n > 1),
            "our backend loaded but claimed nothing (splits {sp:?})"
        );
    } else {
        assert!(!stderr.contains("AttnRot"), "the stock run saw AttnRot");
        assert!(sp.iter().all(|&n| n == 1), "stock splits {sp:?}");
    }
    NodeRun {
        text: field("text"),
        n_vocab: field("nVocab").parse().expect("nVocab"),
        stderr,
        logits,
    }
}

/// Mean KL divergence of `other` against `base` and the same-top-token share
/// ([`common::kld_logits`]) over the logits files of two runs.
fn kld(base: &NodeRun, other: &NodeRun) -> (f64, f64) {
    assert_eq!(base.n_vocab, other.n_vocab);
    let (a, b) = (read_f32(&base.logits), read_f32(&other.logits));
    kld_logits(&a, &b, base.n_vocab, POSITIONS)
}

#[test]
fn node_llama_cpp_prebuilt() {
    let Some(s) = setup() else { return };
    let force_floor = std::env::var("ATTNROT_NODE_FLOOR").is_ok_and(|v| v == "1");
    let mut report = Vec::new();
    for ty in ["Q8_0", "Q4_0"] {
        let stock = run_node(&s, ty, false, &[], "stock");
        let ours = run_node(&s, ty, true, &[], "ours");
        let variant = |r: &NodeRun| {
            r.stderr
                .lines()
                .find_map(|l| l.split("loaded CPU backend from ").nth(1))
                .and_then(|p| p.rsplit('/').next())
                .unwrap_or("?")
                .to_string()
        };
        let (k, same_top) = kld(&stock, &ours);
        let same = stock.text == ours.text;
        eprintln!(
            "{ty}: CPU backend {}; text {}; KLD ours vs stock {k:.3e}, same top token {same_top:.1} % ({POSITIONS} positions)\n  stock: {:?}\n  ours:  {:?}",
            variant(&ours),
            if same { "identical" } else { "DIFFERENT" },
            stock.text,
            ours.text
        );
        let floor = if !same || force_floor {
            let other = run_node(&s, ty, true, &[("ATTNROT_ISA", other_isa())], "variant");
            let (f, _) = kld(&ours, &other);
            assert_within_noise_floor(ty, k, f);
            Some(f)
        } else {
            None
        };
        assert!(k.is_finite() && k >= 0.0, "{ty}: KLD ours vs stock is {k}");
        report.push((ty, same, k, same_top, floor));
    }
    print_host_summary("node-llama-cpp 3.22.1 prebuilt, llama.cpp v0.5.0", &report);
}
