//! `attnrot bench` end to end on the real model, as short as llama-bench allows (depth 0,
//! 32 prompt and 8 generated tokens, one sample): the stock / exact / quality rows, their
//! JSON, and bad input. Speed is not asserted (it lives in benchmarks). Needs what
//! `eval_e2e.rs` needs: the stock llama.cpp programs, the model and `libattnrot.so` next to
//! the `attnrot` binary.
mod support;

use std::path::PathBuf;
use support::{fails_saying, run_json_stdout, s};

fn tmp(name: &str) -> PathBuf {
    support::tmp("bench", name)
}

const SHORT: [&str; 10] = [
    "bench",
    "--types",
    "q4_0",
    "--depths",
    "0",
    "--prompt",
    "32",
    "--gen",
    "8",
    "--samples=1",
];

#[test]
fn short_bench_has_stock_exact_and_quality_rows() {
    let json = tmp("bench.json");
    let (v, stdout) = run_json_stdout(&[&SHORT[..], &["--json", s(&json)]].concat());
    let rows = v.as_array().unwrap();
    // pp32 and tg8, each stock / attnrot / quality
    assert_eq!(rows.len(), 6, "{rows:#?}");
    for (r, (test, kernels, mode)) in rows.iter().zip([
        ("pp32", "stock", "stock"),
        ("pp32", "attnrot", "exact"),
        ("pp32", "quality", "quality"),
        ("tg8", "stock", "stock"),
        ("tg8", "attnrot", "exact"),
        ("tg8", "quality", "quality"),
    ]) {
        assert_eq!(
            (
                r["test"].as_str(),
                r["kernels"].as_str(),
                r["mode"].as_str()
            ),
            (Some(test), Some(kernels), Some(mode)),
            "{r}"
        );
        assert_eq!(r["cache"], "q4_0");
        assert_eq!(r["rotation"], true);
        assert!(r["median_ts"].as_f64().unwrap() > 0.0, "{r}");
        // our backend adds graph splits; stock has one
        let splits = r["splits_tg"].as_u64().unwrap();
        assert_eq!(splits == 1, kernels == "stock", "{r}");
    }
    assert!(stdout.contains("quality / exact mode, decode (tg8): q4_0 rot on depth 0"));
}

#[test]
fn bad_input_is_one_clear_line_and_no_output_file() {
    let json = tmp("bad.json");
    let not_a_policy = tmp("not-a-policy.safetensors");
    std::fs::write(&not_a_policy, b"not a policy").unwrap();
    let not_a_policy = not_a_policy.to_str().unwrap();
    let cases: [(&[&str], &str); 5] = [
        (&["--kernels", "cuda"], "unknown --kernels value 'cuda'"),
        (&["--types", "q3_k"], "unknown cache type 'q3_k'"),
        (&["--reps", "0"], "--reps must be at least 1"),
        (
            &["--policy", "/nonexistent/policy.safetensors"],
            "policy file /nonexistent/policy.safetensors does not exist",
        ),
        // the backend refuses it and stays in exact mode: not a quality measurement
        (
            &["--kernels", "quality", "--policy", not_a_policy],
            "did not load its policy",
        ),
    ];
    for (args, want) in cases {
        fails_saying(&[&SHORT[..], args].concat(), &json, want);
    }
}
