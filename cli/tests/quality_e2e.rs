//! The quality mode end to end through stock llama.cpp (the pinned build), on the real
//! model, with a policy written by `attnrot tune` (one chunk of the calibration text):
//!
//! * context shift (`llama-completion -c 256 --context-shift --keep -1 -n 600`, q4_0 cache):
//!   llama.cpp dequantizes our K blocks on the CPU, rotates back, applies RoPE, rotates and
//!   re-quantizes — it completes, shifts, and the text stays text;
//! * a session saved in quality mode is loaded again (same next tokens) and by stock
//!   llama.cpp without our backend;
//! * attention left to ggml's CPU backend (`ATTNROT_OPS=set_rows,hadamard`) reads our blocks:
//!   perplexity equal to our own attention's within its ±;
//! * bad policies (missing, not a policy, another model's): one log line, exact mode — the
//!   same text as the exact mode, no crash;
//! * a policy that turns rotation off for K and V computes exactly what the quality mode
//!   computes with llama.cpp's rotation disabled (`LLAMA_ATTN_ROT_DISABLE=1`): every Hadamard
//!   product of both sides is the identity;
//! * such a policy with one Hadamard product left to the CPU (Q's, via `ATTNROT_DECLINE`) would
//!   mix rotated and unrotated data: the backend drops it (one log line) and runs exact mode.
#[path = "../../tests/common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Mutex, OnceLock};

const PROMPT: &str = "The Jargon File is a glossary of hacker slang. Its entries";

/// One heavy program at a time (2 cores; the tests run on parallel threads).
fn heavy() -> std::sync::MutexGuard<'static, ()> {
    static M: Mutex<()> = Mutex::new(());
    M.lock().unwrap_or_else(|e| e.into_inner())
}

struct Env {
    bin: PathBuf,
    model: PathBuf,
    so: PathBuf,
    tmp: PathBuf,
    policy: PathBuf,
}

fn env() -> &'static Env {
    static E: OnceLock<Env> = OnceLock::new();
    E.get_or_init(|| {
        let _g = heavy();
        let bin = common::upstream_bin();
        let model = common::model();
        let so = common::cdylib();
        let tmp = std::env::temp_dir().join(format!("attnrot-quality-{}", std::process::id()));
        std::fs::create_dir_all(&tmp).unwrap();
        let policy = tmp.join("policy.safetensors");
        let out = Command::new(env!("CARGO_BIN_EXE_attnrot"))
            .args(["tune", "--chunks", "1", "--out"])
            .arg(&policy)
            .arg("--model")
            .arg(&model)
            .env("ATTNROT_UPSTREAM_BIN", &bin)
            .output()
            .expect("run attnrot tune");
        assert!(
            out.status.success(),
            "attnrot tune failed:\n{}",
            common::text(&out)
        );
        assert!(policy.is_file());
        Env {
            bin,
            model,
            so,
            tmp,
            policy,
        }
    })
}

/// How a run uses the backend.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode<'a> {
    Stock,
    Exact,
    Policy(&'a Path),
}

fn run(prog: &str, args: &[&str], mode: Mode, extra: &[(&str, &str)]) -> Output {
    let e = env();
    let mut c = Command::new(e.bin.join(prog));
    c.arg("-m").arg(&e.model).args(args);
    for v in [
        "GGML_BACKEND_PATH",
        "ATTNROT_POLICY",
        "ATTNROT_QUALITY",
        "ATTNROT_OPS",
        "ATTNROT_FA_ALL",
        "LLAMA_ATTN_ROT_DISABLE",
    ] {
        c.env_remove(v);
    }
    match mode {
        Mode::Stock => {}
        Mode::Exact => {
            c.env("GGML_BACKEND_PATH", &e.so);
        }
        Mode::Policy(p) => {
            c.env("GGML_BACKEND_PATH", &e.so).env("ATTNROT_POLICY", p);
        }
    }
    c.envs(extra.iter().copied());
    let _g = heavy();
    c.output().unwrap_or_else(|e| panic!("run {prog}: {e}"))
}

fn completion(extra_args: &[&str], mode: Mode, env: &[(&str, &str)]) -> (String, String) {
    let mut args = vec![
        "-p", PROMPT, "-t", "2", "--temp", "0", "-no-cnv", "-ctk", "q4_0", "-ctv", "q4_0", "-v",
    ];
    args.extend_from_slice(extra_args);
    let out = run("llama-completion", &args, mode, env);
    let log = common::text(&out);
    assert!(
        out.status.success(),
        "llama-completion {args:?} ({mode:?}) failed: {:?}\n{}",
        out.status,
        tail(&log, 30)
    );
    (String::from_utf8_lossy(&out.stdout).into_owned(), log)
}

fn tail(s: &str, n: usize) -> String {
    let v: Vec<&str> = s.lines().collect();
    v[v.len().saturating_sub(n)..].join("\n")
}

fn assert_quality_active(log: &str) {
    // the backend's init line (a warning, shown at every verbosity)
    assert!(
        log.contains(
            "QUALITY MODE: quantized cache K blocks by score error with the ATTNROT_POLICY metrics"
        ),
        "the quality mode is not active:\n{}",
        tail(log, 40)
    );
}

/// Is `s` still text: letters, spaces and punctuation, real words, no single token making
/// up most of it. (A small model's greedy decoding may loop over a sentence — stock's too;
/// what a broken cache gives is byte soup or one token over and over.)
fn assert_text(s: &str, what: &str) {
    let n = s.chars().count().max(1);
    let good = s
        .chars()
        .filter(|c| c.is_alphanumeric() || c.is_whitespace() || c.is_ascii_punctuation())
        .count();
    let words: Vec<&str> = s.split_whitespace().collect();
    let mut distinct = words.clone();
    distinct.sort_unstable();
    distinct.dedup();
    let top = distinct
        .iter()
        .map(|w| words.iter().filter(|x| *x == w).count())
        .max()
        .unwrap_or(0);
    assert!(
        good as f64 / n as f64 > 0.95 && distinct.len() >= 10 && top * 3 < words.len().max(1),
        "{what}: not text any more ({good}/{n} text chars, {} distinct words, top word {top} of {}):\n{s}",
        distinct.len(),
        words.len()
    );
}

#[test]
fn context_shift_in_quality_mode() {
    let e = env();
    let args = [
        "-c",
        "256",
        "-n",
        "600",
        "--context-shift",
        "--keep",
        "-1",
        "--ignore-eos",
    ];
    let (text, log) = completion(&args, Mode::Policy(&e.policy), &[]);
    assert_quality_active(&log);
    let shifts = log.matches("context full, swapping").count();
    assert!(shifts >= 2, "{shifts} context shifts:\n{}", tail(&log, 40));
    let generated = text.strip_prefix(PROMPT).unwrap_or(&text);
    assert!(
        generated.len() > 1500,
        "only {} bytes generated",
        generated.len()
    );
    // the text after the last shift is still text
    let last = &generated[generated.len() - 600..];
    let last = &last[last.find(char::is_whitespace).unwrap_or(0)..];
    assert_text(last, "after context shifts (quality mode)");
    eprintln!("{shifts} context shifts; last 600 bytes:\n{last}");
}

#[test]
fn session_round_trip_in_quality_mode() {
    let e = env();
    let session = e.tmp.join("session.bin");
    let _ = std::fs::remove_file(&session);
    let s = session.to_str().unwrap();
    let args = ["-n", "24", "--prompt-cache", s];
    let (first, log1) = completion(&args, Mode::Policy(&e.policy), &[]);
    assert_quality_active(&log1);
    assert!(
        session.is_file(),
        "no session file written:\n{}",
        tail(&log1, 30)
    );
    let (again, log2) = completion(&args, Mode::Policy(&e.policy), &[]);
    assert!(
        log2.contains("loaded a session"),
        "the session was not loaded:\n{}",
        tail(&log2, 30)
    );
    assert_eq!(first, again, "same next tokens after loading the session");
    // stock llama.cpp reads the blocks we wrote
    let ro = ["-n", "24", "--prompt-cache", s, "--prompt-cache-ro"];
    let (stock, log3) = completion(&ro, Mode::Stock, &[]);
    assert!(log3.contains("loaded a session"), "{}", tail(&log3, 30));
    assert!(
        !log3.contains("AttnRot"),
        "the stock run loaded our backend"
    );
    let generated = stock.strip_prefix(PROMPT).unwrap_or(&stock);
    assert!(
        generated.split_whitespace().count() >= 8,
        "stock continuation from our session: {stock:?}"
    );
    eprintln!("quality: {first:?}\nstock from our session: {stock:?}");
}

/// `llama-perplexity` on 48 KB of the Jargon File (`chunks` chunks of 256, q4_0 cache);
/// returns its "Final estimate" line.
fn final_ppl_line(mode: Mode, extra: &[(&str, &str)], chunks: &str) -> String {
    let e = env();
    let text = e.tmp.join("jargon.txt");
    if !text.is_file() {
        let t = common::jargon_prose();
        std::fs::write(&text, &t.as_bytes()[..48 * 1024]).unwrap();
    }
    let args = [
        "-f",
        text.to_str().unwrap(),
        "-c",
        "256",
        "--chunks",
        chunks,
        "-t",
        "2",
        "-ctk",
        "q4_0",
        "-ctv",
        "q4_0",
        "-fa",
        "on",
    ];
    let out = run("llama-perplexity", &args, mode, extra);
    let log = common::text(&out);
    assert!(out.status.success(), "{}", tail(&log, 30));
    if matches!(mode, Mode::Policy(_)) {
        assert_quality_active(&log);
    }
    log.lines()
        .find(|l| l.contains("Final estimate: PPL ="))
        .map(|l| l[l.find("Final").unwrap()..].to_string())
        .unwrap_or_else(|| panic!("no PPL in\n{}", tail(&log, 30)))
}

/// PPL and its ± from a "Final estimate" line.
fn ppl(mode: Mode, extra: &[(&str, &str)]) -> (f64, f64) {
    let l = final_ppl_line(mode, extra, "3");
    let v: Vec<f64> = l
        .split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .filter_map(|t| t.parse().ok())
        .collect();
    (v[v.len() - 2], v[v.len() - 1])
}

#[test]
fn cpu_attention_reads_quality_blocks() {
    let e = env();
    let (ours, ours_err) = ppl(Mode::Policy(&e.policy), &[]);
    let (cpu, cpu_err) = ppl(
        Mode::Policy(&e.policy),
        &[("ATTNROT_OPS", "set_rows,hadamard")],
    );
    let tol = ours_err.hypot(cpu_err);
    eprintln!(
        "PPL quality with our attention {ours} ± {ours_err}, with the CPU's {cpu} ± {cpu_err}"
    );
    assert!(
        (ours - cpu).abs() <= tol,
        "PPL with our attention {ours} vs the CPU's over the same blocks {cpu} (± {tol})"
    );
}

/// The tuned policy with rotation turned off for both sides of every quantized type.
fn rotation_off_policy() -> PathBuf {
    let e = env();
    let out = e.tmp.join("rotation-off.safetensors");
    let bytes = std::fs::read(&e.policy).unwrap();
    let (_, md) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let mut meta: serde_json::Value = serde_json::from_str(
        md.metadata()
            .as_ref()
            .unwrap()
            .get("attnrot_policy")
            .unwrap(),
    )
    .unwrap();
    let off: serde_json::Map<String, serde_json::Value> =
        ["q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "iq4_nl"]
            .iter()
            .map(|t| (t.to_string(), serde_json::Value::Bool(false)))
            .collect();
    meta["rotate_k"] = serde_json::Value::Object(off.clone());
    meta["rotate_v"] = serde_json::Value::Object(off);
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let tensors: Vec<(String, safetensors::tensor::TensorView)> = st
        .tensors()
        .into_iter()
        .map(|(n, v)| (n.to_string(), v))
        .collect();
    let md = std::collections::HashMap::from([("attnrot_policy".to_string(), meta.to_string())]);
    std::fs::write(&out, safetensors::serialize(tensors, Some(md)).unwrap()).unwrap();
    out
}

#[test]
fn rotation_off_policy_equals_llama_rotation_disabled() {
    let e = env();
    let off = rotation_off_policy();
    let policy_off = final_ppl_line(Mode::Policy(&off), &[], "2");
    let llama_off = final_ppl_line(
        Mode::Policy(&e.policy),
        &[("LLAMA_ATTN_ROT_DISABLE", "1")],
        "2",
    );
    let policy_on = final_ppl_line(Mode::Policy(&e.policy), &[], "2");
    eprintln!("rotation off by policy: {policy_off}\nby LLAMA_ATTN_ROT_DISABLE: {llama_off}\non: {policy_on}");
    assert_eq!(
        policy_off, llama_off,
        "identity Hadamard products != no products"
    );
    assert_ne!(policy_off, policy_on, "the policy did not change anything");
}

#[test]
fn hadamard_left_to_the_cpu_drops_a_rotation_off_policy() {
    let off = rotation_off_policy();
    let args = ["-n", "32"];
    let (exact, _) = completion(&args, Mode::Exact, &[]);
    let (text, log) = completion(&args, Mode::Policy(&off), &[("ATTNROT_DECLINE", "Qcur")]);
    assert!(
        log.contains("a Hadamard product stays on another backend"),
        "no log line about the declined Hadamard product:\n{}",
        tail(&log, 40)
    );
    assert_eq!(text, exact, "not the exact mode's text");
}

#[test]
fn bad_policies_fall_back_to_exact_mode() {
    let e = env();
    let args = ["-n", "32"];
    let (exact, _) = completion(&args, Mode::Exact, &[]);
    let garbage = e.tmp.join("garbage.safetensors");
    std::fs::write(&garbage, b"this is not a policy file").unwrap();
    // another model's policy: 3 KV heads of 64 -> 4 heads
    let other = e.tmp.join("other.safetensors");
    let d = 64;
    let eye: Vec<f32> = (0..4 * d * d)
        .map(|k| f32::from((k % (d * d)) / d == k % d))
        .collect();
    let m = vec![eye; 30];
    let bytes = attnrot::rotate::policy::PolicyData {
        fingerprint: attnrot::rotate::policy::Fingerprint {
            n_layer: 30,
            n_head_kv: 4,
            head_dim_k: d,
        },
        model: "another-model.gguf",
        calibration: serde_json::json!({}),
        damping: 0.01,
        rot: &m,
        plain: &m,
        rotate_k: Default::default(),
        rotate_v: Default::default(),
    }
    .to_bytes()
    .unwrap();
    std::fs::write(&other, bytes).unwrap();
    let missing = e.tmp.join("no-such-policy.safetensors");
    for (p, want) in [
        (&missing, "cannot read"),
        (&garbage, "not a safetensors file"),
        (&other, "the policy does not match this model"),
    ] {
        let (text, log) = completion(&args, Mode::Policy(p), &[]);
        let lines: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("ATTNROT_POLICY"))
            .collect();
        assert!(
            lines.iter().any(|l| l.contains(want)),
            "{}: no log line saying '{want}':\n{}",
            p.display(),
            tail(&log, 40)
        );
        assert_eq!(
            lines.iter().filter(|l| l.contains("exact mode")).count(),
            1,
            "{}: one line saying exact mode: {lines:#?}",
            p.display()
        );
        assert_eq!(text, exact, "{}: not the exact mode's text", p.display());
    }
}
