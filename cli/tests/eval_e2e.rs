//! `attnrot eval` end to end on the real model (two chunks, two cache types), and its
//! bad-input behaviour. Needs the stock llama.cpp programs (built on first use by
//! scripts/build-upstream.sh), the model (scripts/fetch-model.sh) and the evaluation text,
//! and `libattnrot.so` next to the `attnrot` binary (`cargo build --release` puts it there;
//! scripts/test.sh does that before the tests).
mod support;

use std::path::PathBuf;
use support::{attnrot, fails_saying, run_json, s};

fn tmp(name: &str) -> PathBuf {
    support::tmp("eval", name)
}

#[test]
fn short_eval_numbers_hang_together() {
    let json = tmp("eval.json");
    let chart = tmp("eval.png");
    let v = run_json(&[
        "eval",
        "--chunks",
        "2",
        "--ctx",
        "512",
        "--types",
        "f16,q4_0",
        "--json",
        s(&json),
        "--chart",
        s(&chart),
    ]);
    let rows = v["rows"].as_array().unwrap();
    assert_eq!(v["base"], "exact");
    // f16: 1 rotation setting x 2 kernels (stock, attnrot); q4_0: 2 x 3 (stock, attnrot, quality)
    assert_eq!(rows.len(), 8, "{rows:#?}");
    let get = |t: &str, rot: bool, k: &str| {
        rows.iter()
            .find(|r| r["type_k"] == t && (t == "f16" || r["rotation"] == rot) && r["kernels"] == k)
            .unwrap_or_else(|| panic!("no row {t} {rot} {k}"))
    };
    let f = |r: &serde_json::Value, k: &str| r[k].as_f64().unwrap_or_else(|| panic!("{k} in {r}"));
    // f16 cache, attnrot kernels vs the exact f16 base run: the same computation, KLD 0
    let f16a = get("f16", true, "attnrot");
    assert!(
        f(f16a, "kld_mean").abs() < 1e-5,
        "f16 vs itself KLD {}",
        f(f16a, "kld_mean")
    );
    assert!((f(f16a, "same_top") - 100.0).abs() < 1e-9);
    assert_eq!(get("q4_0", true, "quality")["mode"], "quality");
    assert_eq!(get("q4_0", true, "attnrot")["mode"], "exact");
    for k in ["stock", "attnrot", "quality"] {
        let on = get("q4_0", true, k);
        let off = get("q4_0", false, k);
        assert!(
            f(on, "kld_mean") < f(off, "kld_mean"),
            "{k}: rotated q4_0 KLD {} is not below unrotated {}",
            f(on, "kld_mean"),
            f(off, "kld_mean")
        );
    }
    // stock vs attnrot (exact) kernels: same perplexity within the runs' own error
    for (t, rot) in [("f16", true), ("q4_0", true), ("q4_0", false)] {
        let s = get(t, rot, "stock");
        let a = get(t, rot, "attnrot");
        let tol = f(s, "ppl_err").hypot(f(a, "ppl_err"));
        assert!(
            (f(s, "ppl") - f(a, "ppl")).abs() <= tol,
            "{t} rot {rot}: PPL stock {} vs attnrot {} (± {tol})",
            f(s, "ppl"),
            f(a, "ppl")
        );
        assert!(f(a, "tokens_per_s") > 0.0);
    }
    // the quality mode is not worse than exact beyond the runs' own error
    for rot in [true, false] {
        let e = get("q4_0", rot, "attnrot");
        let q = get("q4_0", rot, "quality");
        let tol = f(e, "kld_err").hypot(f(q, "kld_err"));
        assert!(
            f(q, "kld_mean") <= f(e, "kld_mean") + tol,
            "q4_0 rot {rot}: quality KLD {} vs exact {} (± {tol})",
            f(q, "kld_mean"),
            f(e, "kld_mean")
        );
    }
    // stock's f16 kernel (f16 V accumulator) differs from exact only by rounding: far below
    // the q4_0 cache's error
    assert!(
        f(get("f16", true, "stock"), "kld_mean") < f(get("q4_0", true, "stock"), "kld_mean") / 5.0
    );
    let png = std::fs::read(&chart).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
}

#[test]
fn bad_input_is_one_clear_line_and_no_output_file() {
    let json = tmp("bad.json");
    let cases: [(&[&str], &str); 4] = [
        (
            &["eval", "--model", "/nonexistent/model.gguf"],
            "model file /nonexistent/model.gguf does not exist",
        ),
        (&["eval", "--types", "q3_k"], "unknown cache type 'q3_k'"),
        (
            &[
                "eval",
                "--text",
                "/nonexistent/text.txt",
                "--model",
                "/etc/hostname",
            ],
            "text file /nonexistent/text.txt does not exist",
        ),
        (&["eval", "--chunks", "0"], "--chunks must be at least 1"),
    ];
    for (args, want) in cases {
        let err = fails_saying(args, &json, want);
        assert!(
            !err.contains("stack backtrace"),
            "{args:?} printed a backtrace:\n{err}"
        );
    }
    // a corrupt model: llama-perplexity fails, we report it and write nothing
    let bad = tmp("corrupt.gguf");
    std::fs::write(&bad, b"GGUF this is not a model").unwrap();
    let out = attnrot()
        .args([
            "eval",
            "--chunks",
            "1",
            "--types",
            "f16",
            "--kernels",
            "stock",
            "--no-chart",
            "--model",
        ])
        .arg(&bad)
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("attnrot: error:"), "{err}");
    assert!(!json.exists());
    // too little text for the chunks asked
    let short = tmp("short.txt");
    std::fs::write(&short, "Only a few words of English prose here.").unwrap();
    let out = attnrot()
        .args([
            "eval",
            "--chunks",
            "4",
            "--types",
            "f16",
            "--kernels",
            "stock",
            "--no-chart",
            "--text",
        ])
        .arg(&short)
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("too short"), "{err}");
    assert!(!json.exists());
}
