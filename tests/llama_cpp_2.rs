//! `libattnrot.so` in a ggml 0.26.0 host (backend API 3): a Rust program on crates.io
//! `llama-cpp-2` 0.1.160 with its `dynamic-backends` feature (`tests/hosts/llama-cpp-2`,
//! public API only), which builds `llama-cpp-sys-2` 0.1.161's vendored llama.cpp the way the
//! crate does (CMake, `GGML_BACKEND_DL=ON`, `GGML_CPU_ALL_VARIANTS=ON`, shared libraries).
//! Built by `scripts/build-crate-host.sh` (cmake + libclang from PyPI, cached in the attnrot
//! cache).
//!
//! OPT-IN: the first build compiles libllama and 14 CPU variants of ggml-cpu (long on a small
//! machine), and needs PyPI and crates.io. `ATTNROT_TEST_GGML026=1` runs it; without it the
//! test prints why it did nothing (CI does not claim it).
//!
//! `llama_cpp_2_dynamic_backends`: for a q8_0 and a q4_0 K/V cache (rotation on, flash
//! attention `auto`, llama.cpp's defaults), once without and once with
//! `GGML_BACKEND_PATH=libattnrot.so`:
//! * our backend is really active: its registration line (host ggml 0.26.0, commit unknown,
//!   backend API 3), ggml's "loaded AttnRot backend", and more graph splits than stock; the
//!   stock run has none of it; both load the crate's best CPU variant;
//! * greedy text (64 tokens) identical, or else the difference is noise: teacher-forced logits
//!   over [`POSITIONS`] tokens of the Jargon File, mean KL divergence ours vs stock within 2x
//!   the rounding-noise floor (ours with another SIMD variant, `ATTNROT_ISA`, vs ours) + 1e-4,
//!   the rule of `tests/backend_e2e.rs` and `tests/node_llama.rs`. Printed always;
//!   `ATTNROT_GGML026_FLOOR=1` measures the floor also when the texts agree.
//! * an f16 cache (rotation off, flash attention `auto`): our backend registers and declines
//!   everything (one graph split), flash attention resolves as stock, text and logits are
//!   stock's bit for bit.
mod common;

use common::{
    assert_within_noise_floor, kld_logits, model, other_isa, print_host_summary, read_f32,
    run_host, try_script, HostRun,
};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Teacher-forced positions whose logits are compared.
const POSITIONS: usize = 256;
const OPT_IN: &str = "ATTNROT_TEST_GGML026";

struct Run {
    text: String,
    stderr: String,
    logits: Vec<f32>,
    n_vocab: usize,
}

/// `splits = N` of llama.cpp's `sched_reserve: graph…: splits = N` lines (`N / M` counts both).
fn splits(stderr: &str) -> Vec<usize> {
    stderr
        .lines()
        .filter(|l| l.contains("sched_reserve: graph"))
        .filter_map(|l| l.split("splits = ").nth(1))
        .flat_map(|s| {
            s.split(',')
                .next()
                .unwrap_or("")
                .split('/')
                .filter_map(|x| x.trim().parse().ok())
                .collect::<Vec<usize>>()
        })
        .collect()
}

/// How llama.cpp resolved flash attention (`-fa auto`, its default): this version logs
/// "resolve_fused_ops: Flash Attention enabled" / "… not supported, set to disabled", and a
/// quantized V cache forces it on ("enabling flash_attn since it is required …").
fn flash_attn(stderr: &str) -> &'static str {
    if stderr.contains("Flash Attention not supported, set to disabled") {
        "disabled"
    } else if stderr.contains("Flash Attention enabled")
        || stderr.contains("enabling flash_attn since it is required")
    {
        "enabled"
    } else {
        "?"
    }
}

/// The host's one-line text: its `\n` (newline) and `\\` (backslash) undone.
fn unescape(s: &str) -> String {
    let mut out = String::new();
    let mut it = s.chars();
    while let Some(c) = it.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match it.next() {
            Some('n') => out.push('\n'),
            Some(d) => out.push(d),
            None => out.push('\\'),
        }
    }
    out
}

fn run(host: &Path, model: &Path, textf: &Path, ty: &str, ours: bool, env: &[(&str, &str)]) -> Run {
    let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("llama-cpp-2");
    std::fs::create_dir_all(&tmp).unwrap();
    let logits = tmp.join(format!("logits-{ty}-{ours}-{}.f32", std::process::id()));
    let mut cmd = Command::new(host);
    cmd.arg(model)
        .arg(ty)
        .arg(textf)
        .arg(POSITIONS.to_string())
        .arg(&logits)
        .env("OMP_NUM_THREADS", "1");
    let HostRun {
        stdout,
        stderr,
        tail,
    } = run_host(cmd, &format!("attnrot-llama-cpp-2-host {ty}"), ours, env);
    let field = |k: &str| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .unwrap_or_else(|| panic!("no {k}= in the host's output:\n{stdout}"))
            .to_string()
    };
    // what ran, from ggml's and llama.cpp's own log
    assert!(
        stderr.contains("load_backend: loaded CPU backend from") && stderr.contains("libggml-cpu-"),
        "the crate's CPU variant was not loaded:\n{tail}"
    );
    // llama.cpp's rotation: on for a quantized cache (head size 64), off for f16
    let rot = if ty == "f16" {
        "n_rot_k = 0,"
    } else {
        "n_rot_k = 64,"
    };
    assert!(stderr.contains(rot), "no \"{rot}\" in the log:\n{tail}");
    assert_eq!(
        flash_attn(&stderr),
        "enabled",
        "flash attention not on (-fa auto):\n{tail}"
    );
    let sp = splits(&stderr);
    assert!(!sp.is_empty(), "no sched_reserve line in the log:\n{tail}");
    if ours {
        let reg = common::registration_line(&stderr, &tail);
        assert!(
            reg.contains("host ggml 0.26.0 commit unknown, backend API 3"),
            "unexpected registration: {reg}"
        );
        assert!(stderr.contains("loaded AttnRot backend from"), "{tail}");
        if ty == "f16" {
            // an f16 cache is left to the CPU on purpose (README): nothing claimed
            assert!(sp.iter().all(|&n| n == 1), "f16: splits {sp:?}");
        } else {
            assert!(
                sp.iter().any(|&n| n > 1),
                "our backend loaded but claimed nothing (splits {sp:?})"
            );
        }
    } else {
        assert!(!stderr.contains("AttnRot"), "the stock run saw AttnRot");
        assert!(sp.iter().all(|&n| n == 1), "stock splits {sp:?}");
    }
    let r = Run {
        text: unescape(&field("text")),
        n_vocab: field("n_vocab").parse().expect("n_vocab"),
        logits: read_f32(&logits),
        stderr,
    };
    let _ = std::fs::remove_file(&logits);
    r
}

#[test]
fn llama_cpp_2_dynamic_backends() {
    if std::env::var(OPT_IN).as_deref() != Ok("1") {
        eprintln!(
            "SKIPPED (opt-in): {OPT_IN}=1 runs the ggml 0.26.0 test (builds llama-cpp-2 0.1.160 \
             with dynamic backends via scripts/build-crate-host.sh: cmake + libclang from PyPI, \
             libllama and 14 CPU variants compiled the first time)"
        );
        return;
    }
    let host = try_script("build-crate-host.sh", &[]).unwrap_or_else(|e| panic!("{e}"));
    let model = model();
    let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("llama-cpp-2");
    std::fs::create_dir_all(&tmp).unwrap();
    let textf = tmp.join("text.txt");
    let prose = common::jargon_prose();
    let mut end = (POSITIONS * 16).min(prose.len());
    while !prose.is_char_boundary(end) {
        end -= 1;
    }
    std::fs::write(&textf, &prose[..end]).unwrap();
    let force_floor = std::env::var("ATTNROT_GGML026_FLOOR").is_ok_and(|v| v == "1");
    // an f16 cache: our backend registers and declines everything, the run is stock's exactly
    {
        let stock = run(&host, &model, &textf, "f16", false, &[]);
        let ours = run(&host, &model, &textf, "f16", true, &[]);
        let fa = |r: &Run| flash_attn(&r.stderr);
        eprintln!(
            "f16: declined: splits 1, flash attention (auto) {} stock / {} ours; text {}, logits {}",
            fa(&stock),
            fa(&ours),
            if stock.text == ours.text { "identical" } else { "DIFFERENT" },
            if stock.logits == ours.logits { "bit-identical" } else { "DIFFERENT" }
        );
        assert_eq!(
            fa(&stock),
            fa(&ours),
            "f16: -fa auto resolved differently with our backend"
        );
        assert_eq!(stock.text, ours.text, "f16: text");
        assert!(
            stock.logits == ours.logits,
            "f16: logits differ although nothing was claimed"
        );
    }
    let mut report = Vec::new();
    for ty in ["q8_0", "q4_0"] {
        let stock = run(&host, &model, &textf, ty, false, &[]);
        let ours = run(&host, &model, &textf, ty, true, &[]);
        assert_eq!(stock.n_vocab, ours.n_vocab);
        let variant = ours
            .stderr
            .lines()
            .find_map(|l| l.split("loaded CPU backend from ").nth(1))
            .and_then(|p| p.rsplit('/').next())
            .unwrap_or("?")
            .to_string();
        let (k, same_top) = kld_logits(&stock.logits, &ours.logits, stock.n_vocab, POSITIONS);
        let same = stock.text == ours.text;
        eprintln!(
            "{ty}: CPU backend {variant}; splits stock {:?} ours {:?}; text {}; KLD ours vs stock {k:.3e}, same top token {same_top:.1} % ({POSITIONS} positions)\n  stock: {:?}\n  ours:  {:?}",
            splits(&stock.stderr),
            splits(&ours.stderr),
            if same { "identical" } else { "DIFFERENT" },
            stock.text,
            ours.text
        );
        let floor = if !same || force_floor {
            let other = run(
                &host,
                &model,
                &textf,
                ty,
                true,
                &[("ATTNROT_ISA", other_isa())],
            );
            let (f, _) = kld_logits(&ours.logits, &other.logits, ours.n_vocab, POSITIONS);
            assert_within_noise_floor(ty, k, f);
            Some(f)
        } else {
            None
        };
        assert!(k.is_finite() && k >= 0.0, "{ty}: KLD ours vs stock is {k}");
        report.push((ty, same, k, same_top, floor));
    }
    print_host_summary("llama-cpp-2 0.1.160 dynamic-backends, ggml 0.26.0", &report);
}
