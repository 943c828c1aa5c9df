//! Known bugs of upstream llama.cpp that users of attnrot meet, pinned down against the stock
//! build (`scripts/build-upstream.sh`) so that the day upstream fixes one, this test fails and
//! says so (then update README.md "Known upstream issues" and this file).
//!
//! * `context_shift_with_quantized_k_and_rotation_off_crashes`: at the pin (0c1e57098) — and
//!   in v0.5.0 (0ad4a86, same code) — `llama_kv_cache::build_rope_shift` passes the K
//!   rotation matrix to `llama_mul_mat_hadamard` (src/llama-impl.h), which reads `rot->ne[0]`
//!   without a null check; with rotation off (`LLAMA_ATTN_ROT_DISABLE=1`, or a head size that
//!   is not a multiple of 64) the matrix is null, so the first context shift of a quantized K
//!   cache dies with SIGSEGV while *building* the shift graph. With our backend it crashes the
//!   same way: the graph is never built, so no backend sees it (`v050_…`: the same checks on
//!   v0.5.0's own llama-completion, `scripts/build-upstream.sh v0.5.0`). Controls: the same command
//!   with rotation on runs to the end, stock and with our backend (the shift path itself —
//!   dequantize, rotate back, RoPE, rotate, re-quantize — works with attnrot).
mod common;

use common::{cdylib, model, text, Build};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Output};

/// The command: 600 tokens in a 256-token context force a shift after ~250 tokens.
fn shift_args(model: &Path) -> Vec<String> {
    [
        "-m",
        model.to_str().unwrap(),
        "-c",
        "256",
        "-n",
        "600",
        "--context-shift",
        "--ignore-eos",
        "-ctk",
        "q8_0",
        "-ctv",
        "q8_0",
        "-t",
        "2",
        "--temp",
        "0",
        "-p",
        "The capital of France is",
        "-no-cnv",
        "-lv",
        "4",
    ]
    .map(String::from)
    .to_vec()
}

fn completion(bin: &Path, ours: bool, rot: bool, gdb: bool) -> Output {
    let prog = bin.join("llama-completion");
    let mut cmd = if gdb {
        let mut c = Command::new("gdb");
        c.args(["-q", "-batch", "-ex", "run", "-ex", "bt", "--args"])
            .arg(&prog);
        c
    } else {
        Command::new(&prog)
    };
    cmd.args(shift_args(&model()))
        .env_remove("GGML_BACKEND_PATH")
        .env_remove("LLAMA_ATTN_ROT_DISABLE")
        // see tests/backend_e2e.rs: spinning OpenMP workers on a shared 2-core box
        .env("OMP_WAIT_POLICY", "PASSIVE");
    if ours {
        cmd.env("GGML_BACKEND_PATH", cdylib());
    }
    if !rot {
        cmd.env("LLAMA_ATTN_ROT_DISABLE", "1");
    }
    let t0 = std::time::Instant::now();
    let o = cmd.output().expect("run llama-completion");
    eprintln!(
        "  [{:.1} s] {}{}{}llama-completion -c 256 -n 600 --context-shift -ctk q8_0 -ctv q8_0: {}",
        t0.elapsed().as_secs_f64(),
        if gdb { "gdb: " } else { "" },
        if ours {
            "GGML_BACKEND_PATH=libattnrot.so "
        } else {
            ""
        },
        if rot { "" } else { "LLAMA_ATTN_ROT_DISABLE=1 " },
        o.status
    );
    o
}

/// Our backend's WARN line for this build's ggml (INFO lines of backend loading are not shown
/// by v0.5.0's tools; see [`Build::active_line`]).
fn ours_active(o: &Output, build: Build) -> bool {
    String::from_utf8_lossy(&o.stderr).contains(&build.active_line())
}

#[test]
fn context_shift_with_quantized_k_and_rotation_off_crashes() {
    context_shift_crash(Build::Pin);
}

/// The same in llama.cpp v0.5.0 (`scripts/build-upstream.sh v0.5.0`): same code, same crash.
#[test]
fn v050_context_shift_with_quantized_k_and_rotation_off_crashes() {
    context_shift_crash(Build::V050);
}

fn context_shift_crash(build: Build) {
    let bin = build.bin();
    for ours in [false, true] {
        let who = format!(
            "[{}] {}",
            build.arg(),
            if ours { "with attnrot" } else { "stock" }
        );
        // control: rotation on, the shift works and the run completes
        let ok = completion(&bin, ours, true, false);
        assert!(
            ok.status.success(),
            "{who}, rotation on: context shift failed ({}):\n{}",
            ok.status,
            text(&ok)
        );
        assert!(
            String::from_utf8_lossy(&ok.stderr).contains("attn_rot_k = 1"),
            "{who}: rotation was not on in the control run"
        );
        assert_eq!(ours_active(&ok, build), ours, "{who}: backend active?");
        // the bug: rotation off, SIGSEGV at the first shift
        let bad = completion(&bin, ours, false, false);
        let out = String::from_utf8_lossy(&bad.stdout);
        assert_eq!(ours_active(&bad, build), ours, "{who}: backend active?");
        assert!(
            !bad.status.success(),
            "UPSTREAM FIXED? {who}: `LLAMA_ATTN_ROT_DISABLE=1 llama-completion -c 256 -n 600 \
             --context-shift --ignore-eos -ctk q8_0 -ctv q8_0` no longer crashes (null rotation \
             in llama_kv_cache::build_rope_shift). Update README.md 'Known upstream issues' and \
             tests/upstream_bugs.rs.\n{}",
            text(&bad)
        );
        assert_eq!(
            bad.status.signal(),
            Some(libc::SIGSEGV),
            "{who}: expected SIGSEGV, got {}:\n{}",
            bad.status,
            text(&bad)
        );
        // it dies at the shift (~250 tokens in), not at start-up
        let ok_out = String::from_utf8_lossy(&ok.stdout);
        assert!(
            out.len() > 400 && out.len() < ok_out.len(),
            "{who}: crashed after {} bytes of text (full run: {}); expected at the first shift",
            out.len(),
            ok_out.len()
        );
        eprintln!(
            "{who}: rotation on -> exit 0 ({} bytes of text); rotation off -> SIGSEGV after {} bytes (the first context shift)",
            ok_out.len(),
            out.len()
        );
    }
    // where: gdb's backtrace of the stock crash names build_rope_shift
    // (an extra check: without gdb the crash itself is still asserted above)
    if common::have("gdb") {
        let g = completion(&bin, false, false, true);
        let t = text(&g);
        let frame0 = t
            .lines()
            .find(|l| l.starts_with("#0"))
            .unwrap_or_else(|| panic!("no backtrace from gdb:\n{t}"));
        assert!(
            t.contains("SIGSEGV") && frame0.contains("llama_kv_cache::build_rope_shift"),
            "the crash is not in build_rope_shift any more: {frame0}\n{t}"
        );
        eprintln!(
            "[{}] stock crash site: {}",
            build.arg(),
            &frame0[..frame0.len().min(120)]
        );
    } else {
        eprintln!("gdb not found: the crash site (build_rope_shift) is not checked");
    }
}
