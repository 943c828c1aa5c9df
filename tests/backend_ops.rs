//! The ggml backend (`libattnrot.so`) under upstream's own test suite.
//!
//! * `cdylib_has_no_ggml`: the .so neither contains nor links any ggml symbol (a C program
//!   without ggml loads it for the plain C API); it exports the two backend entry points.
//! * `test_backend_ops_*`: stock `test-backend-ops test -b AttnRot -o <OP>` of the pinned tree,
//!   built with upstream's CMake by `scripts/build-upstream.sh` (first time on a fresh machine:
//!   about 30 minutes on 2 cores; cached afterwards), with `GGML_BACKEND_PATH` pointing at our
//!   .so. `v050_test_backend_ops` runs the same checks with v0.5.0's own test-backend-ops
//!   (`scripts/build-upstream.sh v0.5.0`, ggml 0.25.1) on the default subsets. `g026_*`
//!   (opt-in, `ATTNROT_TEST_GGML026=1`): the same in ggml 0.26.0, with the pin's
//!   test-backend-ops source compiled against the libraries `llama-cpp-sys-2` 0.1.161 builds
//!   (`scripts/build-crate-host.sh`; the crate's tree has no tests). test-backend-ops compares every case our device claims with the CPU backend.
//!   Its own verdict is not enough (it prints "1/1 backends passed OK" when `-b` names a device
//!   that never loaded), so the output is parsed: our device must have been initialised, every
//!   case counted as passed / claimed / total, claimed > 0, passed == claimed, and the cases we
//!   are meant to claim (per [`attnrot::ggml::ops`]) must not be reported "not supported".
//!
//! Not skipped when the tools are missing: building upstream is part of the test.
mod common;

use common::{cdylib, Build};
use std::process::Command;

/// `ATTNROT_FA_ALL`: also claim FLASH_ATTN_EXT with an unquantized V ([`attnrot::ggml::ops`]).
const FA_ALL: &str = attnrot::ggml::ops::FA_ALL_ENV;

#[test]
fn cdylib_has_no_ggml() {
    let so = cdylib();
    let nm = |args: &[&str]| -> String {
        let out = Command::new("nm")
            .args(args)
            .arg(&so)
            .output()
            .expect("run nm (binutils)");
        assert!(
            out.status.success(),
            "nm failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let undefined = nm(&["-D", "--undefined-only"]);
    let bad: Vec<&str> = undefined
        .lines()
        .filter(|l| l.contains("ggml") || l.contains("gguf"))
        .collect();
    assert!(
        bad.is_empty(),
        "libattnrot.so needs ggml symbols at link time: {bad:?}"
    );
    let defined = nm(&["-D", "--defined-only"]);
    let names: Vec<&str> = defined
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2))
        .collect();
    for want in ["ggml_backend_init", "ggml_backend_score"] {
        assert!(
            names.contains(&want),
            "libattnrot.so does not export {want}"
        );
    }
    // No ggml code inside: no exported ggml_* besides the two entry points.
    let extra: Vec<&&str> = names
        .iter()
        .filter(|n| {
            n.starts_with("ggml_")
                && !n.starts_with("ggml_backend_init")
                && **n != "ggml_backend_score"
        })
        .collect();
    assert!(
        extra.is_empty(),
        "libattnrot.so exports ggml symbols: {extra:?}"
    );
}

/// One test case line of test-backend-ops: `  OP(vars): OK | FAIL | not supported [...]`.
#[derive(Debug, PartialEq)]
struct Case {
    op: String,
    vars: String,
    status: Status,
}

#[derive(Debug, PartialEq, Clone, Copy)]
enum Status {
    Ok,
    Fail,
    NotSupported,
    /// `support` mode: claimed, not run.
    Supported,
}

#[derive(Debug, Default)]
struct Report {
    device_loaded: bool,
    cases: Vec<Case>,
    summary: Option<(usize, usize)>,
    backend_ok: Option<bool>,
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars().peekable();
    while let Some(c) = it.next() {
        if c == '\u{1b}' {
            // ESC [ ... letter
            for d in it.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn parse(stdout: &str, device: &str) -> Report {
    let mut r = Report::default();
    let mut in_ours = false;
    for raw in stdout.lines() {
        let line = strip_ansi(raw);
        if let Some(rest) = line.strip_prefix("Backend ") {
            // "Backend 2/2: AttnRot" starts a device section; "  Backend AttnRot: OK" ends ours.
            if let Some((_, name)) = rest.split_once(": ") {
                if rest
                    .split_once('/')
                    .is_some_and(|(a, _)| a.chars().all(|c| c.is_ascii_digit()))
                {
                    in_ours = name.trim() == device;
                }
            }
            continue;
        }
        if !in_ours {
            continue;
        }
        let t = line.trim();
        if t.starts_with("Device description:") {
            r.device_loaded = true;
        } else if let Some(rest) = t.strip_prefix("Backend ") {
            if let Some((name, st)) = rest.split_once(": ") {
                if name == device {
                    r.backend_ok = Some(st.trim() == "OK");
                }
            }
        } else if let Some((a, b)) = t
            .strip_suffix(" tests passed")
            .and_then(|s| s.split_once('/'))
        {
            if let (Ok(a), Ok(b)) = (a.parse(), b.parse()) {
                r.summary = Some((a, b));
            }
        } else if let Some(open) = t.find('(') {
            // OP(vars): STATUS — vars may contain "): " only at the end.
            let op = &t[..open];
            if op.is_empty()
                || !op
                    .chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
            {
                continue;
            }
            let Some(close) = t.rfind("): ") else {
                continue;
            };
            let vars = t[open + 1..close].to_string();
            let st = t[close + 3..].trim();
            let status = if st.starts_with("not supported") || st == "NOT SUPPORTED" {
                Status::NotSupported
            } else if st == "SUPPORTED" {
                Status::Supported
            } else if st.starts_with("not supported") {
                Status::NotSupported
            } else if st.ends_with("OK") {
                Status::Ok
            } else if st.ends_with("FAIL") {
                Status::Fail
            } else {
                continue;
            };
            r.cases.push(Case {
                op: op.to_string(),
                vars,
                status,
            });
        }
    }
    r
}

#[test]
fn parser_reads_test_backend_ops_output() {
    let sample = "Testing 2 devices\n\nBackend 1/2: CPU\n  Skipping\nBackend 2/2: AttnRot\n  Device description: x\n  Device memory: 0 MB (0 MB free)\n\n  SET_ROWS(type_src=f32,type_dst=q4_0,type_idx=i64,ne=[256,5,1,3],nr23=[1,1],r=1,v=0): \u{1b}[1;32mOK\u{1b}[0m\n  SET_ROWS(type_src=f32,type_dst=q8_0,type_idx=i64,ne=[256,5,1,3],nr23=[1,1],r=1,v=0): not supported [AttnRot] \n  SET_ROWS(type_src=f32,type_dst=q5_0,type_idx=i64,ne=[256,5,1,3],nr23=[1,1],r=1,v=0): [SET_ROWS] NMSE = 1.0 > 0.1 \u{1b}[1;31mFAIL\u{1b}[0m\n  2/2 tests passed\n  Backend AttnRot: \u{1b}[1;32mOK\u{1b}[0m\n2/2 backends passed\n\u{1b}[1;32mOK\u{1b}[0m\n";
    let r = parse(sample, "AttnRot");
    assert!(r.device_loaded);
    assert_eq!(r.cases.len(), 3);
    assert_eq!(r.cases[0].status, Status::Ok);
    assert_eq!(r.cases[1].status, Status::NotSupported);
    assert_eq!(r.cases[2].status, Status::Fail);
    assert_eq!(
        r.cases[0].vars,
        "type_src=f32,type_dst=q4_0,type_idx=i64,ne=[256,5,1,3],nr23=[1,1],r=1,v=0"
    );
    assert_eq!(r.summary, Some((2, 2)));
    assert_eq!(r.backend_ok, Some(true));
    // The trap: our device never loaded, the tool still says OK.
    let r = parse(
        "Testing 1 devices\n\nBackend 1/1: CPU\n  Skipping\n1/1 backends passed\nOK\n",
        "AttnRot",
    );
    assert!(!r.device_loaded && r.cases.is_empty() && r.summary.is_none());
}

fn var<'a>(vars: &'a str, key: &str) -> Option<&'a str> {
    // vars look like "a=1,b=[1,2],c=x": split on commas outside brackets.
    let mut depth = 0;
    let mut start = 0;
    let bytes = vars.as_bytes();
    for i in 0..=bytes.len() {
        let c = if i < bytes.len() { bytes[i] } else { b',' };
        match c {
            b'[' => depth += 1,
            b']' => depth -= 1,
            b',' if depth == 0 => {
                let item = &vars[start..i];
                if let Some((k, v)) = item.split_once('=') {
                    if k == key {
                        return Some(v);
                    }
                }
                start = i + 1;
            }
            _ => {}
        }
    }
    None
}

/// `test-backend-ops support -b AttnRot -o <op>`: which of all the op's cases we claim (no
/// computation). Returns (claimed, total) and checks the claim rule on every case.
fn support_ops(build: Build, op: &str, must_claim: &dyn Fn(&str) -> bool) -> (usize, usize) {
    support_ops_env(build, op, &[], must_claim)
}

/// `test-backend-ops support -b AttnRot -o <op>` with extra environment variables, parsed;
/// panics unless our device loaded.
fn support_report(build: Build, op: &str, env: &[(&str, &str)]) -> Report {
    let so = cdylib();
    let bin = build.bin();
    let out = Command::new(bin.join("test-backend-ops"))
        .args(["support", "-b", "AttnRot", "-o", op])
        .env("GGML_BACKEND_PATH", &so)
        .env_remove(FA_ALL)
        .envs(env.iter().copied())
        .current_dir(&bin)
        .output()
        .expect("run test-backend-ops support");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let r = parse(&stdout, "AttnRot");
    assert!(
        r.device_loaded,
        "AttnRot not loaded:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    r
}

/// [`support_ops`] with extra environment variables for the tool (e.g. `ATTNROT_FA_ALL=1`).
fn support_ops_env(
    build: Build,
    op: &str,
    env: &[(&str, &str)],
    must_claim: &dyn Fn(&str) -> bool,
) -> (usize, usize) {
    let r = support_report(build, op, env);
    let total = r.cases.len();
    let claimed = r
        .cases
        .iter()
        .filter(|c| c.status == Status::Supported)
        .count();
    let refused: Vec<&Case> = r
        .cases
        .iter()
        .filter(|c| c.status == Status::NotSupported && must_claim(&c.vars))
        .collect();
    assert!(
        refused.is_empty(),
        "{op} cases we implement were refused: {refused:#?}"
    );
    eprintln!(
        "[{}] test-backend-ops support -o {op} {env:?}: AttnRot claims {claimed} of {total} cases",
        build.arg()
    );
    (claimed, total)
}

/// Run `test-backend-ops test -b AttnRot -o <op> [-p <filter>]`, check it, print counts.
fn run_ops(build: Build, op: &str, params: Option<&str>, must_claim: impl Fn(&str) -> bool) {
    run_ops_env(build, op, params, &[], must_claim);
}

/// [`run_ops`] with extra environment variables for the tool.
fn run_ops_env(
    build: Build,
    op: &str,
    params: Option<&str>,
    env: &[(&str, &str)],
    must_claim: impl Fn(&str) -> bool,
) -> Report {
    let so = cdylib();
    let bin = build.bin();
    let mut cmd = Command::new(bin.join("test-backend-ops"));
    cmd.args(["test", "-b", "AttnRot", "-o", op])
        .env("GGML_BACKEND_PATH", &so)
        .env_remove(FA_ALL)
        .envs(env.iter().copied())
        .current_dir(&bin);
    if let Some(p) = params {
        cmd.args(["-p", p]);
    }
    eprintln!("running: GGML_BACKEND_PATH={} {:?}", so.display(), cmd);
    let t0 = std::time::Instant::now();
    let out = cmd.output().expect("run test-backend-ops");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let r = parse(&stdout, "AttnRot");
    let total = r.cases.len();
    let claimed = r
        .cases
        .iter()
        .filter(|c| c.status != Status::NotSupported)
        .count();
    let passed = r.cases.iter().filter(|c| c.status == Status::Ok).count();
    eprintln!(
        "[{}] test-backend-ops -o {op}: {passed} passed / {claimed} claimed / {total} total ({:.1} s)",
        build.arg(),
        t0.elapsed().as_secs_f64()
    );
    let dump = || format!("--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}");
    assert!(
        r.device_loaded,
        "our device AttnRot was not loaded/initialised by test-backend-ops\n{}",
        dump()
    );
    let registered = format!("backend AttnRot registered ({}", build.host_ggml());
    assert!(
        stderr.contains(&registered) || stdout.contains(&registered),
        "no registration log line '{registered}' from libattnrot.so\n{}",
        dump()
    );
    assert!(total > 0, "no {op} cases ran\n{}", dump());
    assert!(
        claimed > 0,
        "AttnRot claimed none of the {total} {op} cases\n{}",
        dump()
    );
    let failed: Vec<&Case> = r
        .cases
        .iter()
        .filter(|c| c.status == Status::Fail)
        .collect();
    assert!(
        failed.is_empty(),
        "{} {op} cases failed: {failed:#?}\n{}",
        failed.len(),
        dump()
    );
    assert_eq!(
        r.summary,
        Some((claimed, claimed)),
        "summary line disagrees with the cases\n{}",
        dump()
    );
    assert_eq!(
        r.backend_ok,
        Some(true),
        "test-backend-ops did not report our backend OK\n{}",
        dump()
    );
    assert!(
        out.status.success(),
        "test-backend-ops exited with {}\n{}",
        out.status,
        dump()
    );
    let refused: Vec<&Case> = r
        .cases
        .iter()
        .filter(|c| c.status == Status::NotSupported && must_claim(&c.vars))
        .collect();
    assert!(
        refused.is_empty(),
        "cases we implement were refused: {refused:#?}"
    );
    r
}

/// SET_ROWS: claimed for the quantized formats by default, for all eight with
/// `ATTNROT_FA_ALL=1` (f16/bf16 caches go with their attention, see
/// [`attnrot::ggml::ops::set_rows_claims_type`]); every case run with `ATTNROT_FA_ALL=1`, so
/// all eight formats are computed and compared.
#[test]
fn test_backend_ops_set_rows() {
    set_rows(Build::Pin);
}

/// [`test_backend_ops_set_rows`] with v0.5.0's test-backend-ops.
#[test]
fn v050_test_backend_ops_set_rows() {
    set_rows(Build::V050);
}

/// [`test_backend_ops_set_rows`] in ggml 0.26.0 (opt-in, [`Build::G026`]).
#[test]
fn g026_test_backend_ops_set_rows() {
    set_rows(Build::G026);
}

fn set_rows(build: Build) {
    if !build.opted_in() {
        return;
    }
    let must = |fa_all: bool| {
        move |vars: &str| {
            let dst = var(vars, "type_dst").and_then(attnrot::GgmlType::from_name);
            dst.is_some_and(|t| attnrot::ggml::ops::set_rows_claims_type(t, fa_all))
                && matches!(var(vars, "type_src"), Some("f32" | "f16"))
        }
    };
    let (claimed_default, total) = support_ops_env(build, "SET_ROWS", &[], &must(false));
    let (claimed_all, _) = support_ops_env(build, "SET_ROWS", &[(FA_ALL, "1")], &must(true));
    eprintln!(
        "SET_ROWS claimed: {claimed_default} of {total} by default (quantized caches), {claimed_all} with {FA_ALL}=1 (all eight formats)"
    );
    assert!(claimed_default > 0 && claimed_all > claimed_default);
    // By default nothing unquantized is claimed.
    let r = support_report(build, "SET_ROWS", &[]);
    let unquantized: Vec<&Case> = r
        .cases
        .iter()
        .filter(|c| {
            c.status == Status::Supported
                && !var(&c.vars, "type_dst")
                    .and_then(attnrot::GgmlType::from_name)
                    .is_some_and(|t| t.is_quantized())
        })
        .collect();
    assert!(
        unquantized.is_empty(),
        "claimed by default: {unquantized:#?}"
    );
    run_ops_env(build, "SET_ROWS", None, &[(FA_ALL, "1")], must(true));
}

#[test]
fn test_backend_ops_mul_mat_hadamard() {
    mul_mat_hadamard(Build::Pin);
}

/// [`test_backend_ops_mul_mat_hadamard`] with v0.5.0's test-backend-ops.
#[test]
fn v050_test_backend_ops_mul_mat_hadamard() {
    mul_mat_hadamard(Build::V050);
}

/// [`test_backend_ops_mul_mat_hadamard`] in ggml 0.26.0 (opt-in, [`Build::G026`]).
#[test]
fn g026_test_backend_ops_mul_mat_hadamard() {
    mul_mat_hadamard(Build::G026);
}

fn mul_mat_hadamard(build: Build) {
    if !build.opted_in() {
        return;
    }
    // Every hinted product upstream tests is a power-of-two size we rotate.
    let (claimed, total) = support_ops(build, "MUL_MAT_HADAMARD", &|_| true);
    assert_eq!(claimed, total);
    // The 16384/8192 cases take ~35 s on the CPU reference (a dense product): ATTNROT_OPS_ALL=1.
    let filter = (!all()).then_some("m=(32|64|128|256|512|1024|2048),");
    run_ops(build, "MUL_MAT_HADAMARD", filter, |_| true);
    // Plain MUL_MAT stays on the CPU backend.
    let (claimed, total) = support_ops(build, "MUL_MAT", &|_| false);
    assert!(total > 0);
    assert_eq!(claimed, 0, "AttnRot must not claim un-hinted MUL_MAT");
}

/// The K/V type pairs FLASH_ATTN_EXT is claimed for, under the default policy (`fa_all` =
/// false: quantized V only) or with `ATTNROT_FA_ALL=1`.
fn fa_must_claim(vars: &str, fa_all: bool) -> bool {
    let ty = |key| var(vars, key).and_then(attnrot::GgmlType::from_name);
    match (ty("type_K"), ty("type_V")) {
        (Some(k), Some(v)) => attnrot::ggml::ops::fa_claims_types(k, v, fa_all),
        _ => false,
    }
}

/// `ATTNROT_OPS_ALL=1`: run every case of every op (several minutes on 2 cores).
fn all() -> bool {
    std::env::var_os("ATTNROT_OPS_ALL").is_some_and(|v| v != "0")
}

/// All FLASH_ATTN_EXT cases in support mode, twice: with the default policy (unquantized V
/// left to the CPU so that llama.cpp's `-fa auto` keeps flash attention, see
/// [`attnrot::ggml::ops::fa_claims_unquantized_v`]) and with `ATTNROT_FA_ALL=1` (every K/V
/// pair we implement: 5,300 of 5,308). Then, with `ATTNROT_FA_ALL=1` so the f16-V kernels are
/// checked too, a computed subset of ~330 cases (~25 s): SmolLM2's shape (head size 64, GQA
/// 4:1) at kv=512 with one, three and 75 query rows in every K/V type pair upstream lists,
/// plus upstream's hand-picked odd head sizes (65/67/72), mixed K/V types, sinks, ALiBi and
/// softcap cases. `ATTNROT_OPS_ALL=1` computes all of them (~390 s of CPU reference alone).
#[test]
fn test_backend_ops_flash_attn_ext() {
    flash_attn_ext(Build::Pin);
}

/// [`test_backend_ops_flash_attn_ext`] and [`test_backend_ops_flash_attn_ext_default_policy`]
/// with v0.5.0's test-backend-ops.
#[test]
fn v050_test_backend_ops_flash_attn_ext() {
    flash_attn_ext(Build::V050);
    flash_attn_ext_default_policy(Build::V050);
}

/// The FLASH_ATTN_EXT checks in ggml 0.26.0 (opt-in, [`Build::G026`]).
#[test]
fn g026_test_backend_ops_flash_attn_ext() {
    flash_attn_ext(Build::G026);
    flash_attn_ext_default_policy(Build::G026);
}

fn flash_attn_ext(build: Build) {
    if !build.opted_in() {
        return;
    }
    let (claimed_default, total) =
        support_ops_env(build, "FLASH_ATTN_EXT", &[], &|v| fa_must_claim(v, false));
    let (claimed_all, total_all) =
        support_ops_env(build, "FLASH_ATTN_EXT", &[(FA_ALL, "1")], &|v| {
            fa_must_claim(v, true)
        });
    eprintln!(
        "FLASH_ATTN_EXT claimed: {claimed_default} of {total} by default (quantized V), {claimed_all} of {total_all} with {FA_ALL}=1"
    );
    assert_eq!(total, total_all);
    assert!(claimed_default > 0 && claimed_all > claimed_default && total > claimed_all / 2);
    let filter = (!all()).then_some(
        r"^hsk=64,hsv=64,nh=4,nr23=\[4,1\],kv=512,nb=(1|3|75),|^hsk=(72|65|64),hsv=(64|67|72),nh=4,nr23=\[1,1\],kv=(256|113|17|128|96),nb=(2|75),",
    );
    run_ops_env(build, "FLASH_ATTN_EXT", filter, &[(FA_ALL, "1")], |v| {
        fa_must_claim(v, true)
    });
}

/// The default policy claims no FLASH_ATTN_EXT case with an unquantized V, and every case with
/// a quantized V that `ATTNROT_FA_ALL=1` claims (computed: only the quantized-V part of the
/// subset, ~15 s).
#[test]
fn test_backend_ops_flash_attn_ext_default_policy() {
    flash_attn_ext_default_policy(Build::Pin);
}

fn flash_attn_ext_default_policy(build: Build) {
    if !build.opted_in() {
        return;
    }
    let filter = r"^hsk=64,hsv=64,nh=4,nr23=\[4,1\],kv=512,nb=(1|3),";
    let r = run_ops_env(build, "FLASH_ATTN_EXT", Some(filter), &[], |v| {
        fa_must_claim(v, false)
    });
    let ran: Vec<&Case> = r
        .cases
        .iter()
        .filter(|c| c.status != Status::NotSupported)
        .collect();
    let unquantized_v: Vec<&&Case> = ran
        .iter()
        .filter(|c| !fa_must_claim(&c.vars, false))
        .collect();
    eprintln!(
        "default policy: {} of {} FLASH_ATTN_EXT cases claimed (all with a quantized V)",
        ran.len(),
        r.cases.len()
    );
    assert!(
        unquantized_v.is_empty(),
        "claimed by default although V is not quantized: {unquantized_v:#?}"
    );
    assert!(
        ran.len() < r.cases.len(),
        "the subset has f16-V cases left to the CPU"
    );
}
