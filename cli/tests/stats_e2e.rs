//! `attnrot stats` end to end on the real model, on a tiny budget (one chunk, two layers, a
//! few queries): the capture through stock llama-perplexity + libattnrot.so, its format, the
//! analysis, and orderings that must hold on real K/V. Needs what `eval_e2e.rs` needs (stock
//! llama.cpp programs, the model, `libattnrot.so` next to the binary) and the calibration text.
mod support;

use std::path::PathBuf;
use support::{attnrot, fails_saying, run_json as run_ok, s};

fn tmp(name: &str) -> PathBuf {
    support::tmp("stats", name)
}

fn cand<'a>(v: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    v["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no candidate {name}"))
}

fn err(v: &serde_json::Value, name: &str, metric: &str) -> f64 {
    cand(v, name)["mean"][metric].as_f64().unwrap()
}

#[test]
fn tiny_stats_run_is_well_formed_and_ordered() {
    let (json, chart, cap) = (tmp("s.json"), tmp("s.png"), tmp("capture"));
    let args = [
        "stats",
        "--chunks",
        "1",
        "--layers",
        "0,7",
        "--max-queries",
        "16",
        "--keep-capture",
        s(&cap),
        "--json",
        s(&json),
        "--chart",
        s(&chart),
        // the candidate set must not depend on whether this machine has a tuned policy
        // (the "quality + policy" candidates have a unit test in kvstats)
        "--no-policy",
    ];
    let v = run_ok(&args);
    assert_eq!(v["cache"], "f16");
    assert_eq!(v["captured_rotated"]["k"], false);
    assert_eq!(v["head_dim"], 64);
    let layers = v["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 2);
    assert_eq!(layers[1]["layer"], 7);
    let cands = v["candidates"].as_array().unwrap();
    // 8 formats x 3 rotations x 2 quantizers, TurboQuant_mse 2/3/4/8 + 4.25/8.25, _prod 2/3/4/8
    assert_eq!(cands.len(), 8 * 3 * 2 + 6 + 4, "{cands:#?}");
    for c in cands {
        assert_eq!(c["per_layer"].as_array().unwrap().len(), 2);
        for m in [
            "k_rel_rmse",
            "v_rel_rmse",
            "score_rel_err",
            "out_rel_err",
            "out_k_only_rel_err",
        ] {
            let x = c["mean"][m].as_f64().unwrap();
            assert!(x.is_finite() && x > 0.0, "{} {m} = {x}", c["name"]);
        }
    }
    assert_eq!(cand(&v, "q4_0 rot none (upstream)")["bits_k"], 4.5);
    assert_eq!(cand(&v, "TurboQuant_mse 4.5b/value")["bits_k"], 4.5);
    assert_eq!(cand(&v, "TurboQuant_prod 4b (V _mse 4b)")["bits_k"], 4.5);
    // orderings that must hold on real K/V
    for m in ["score_rel_err", "out_rel_err", "k_rel_rmse"] {
        let e = |n| err(&v, n, m);
        assert!(
            e("f16 rot none (upstream)") < e("q8_0 rot none (upstream)"),
            "{m}"
        );
        assert!(
            e("q8_0 rot none (upstream)") < e("q4_0 rot none (upstream)"),
            "{m}"
        );
        assert!(
            e("q4_0 rot wht (upstream)") < e("q4_0 rot none (upstream)"),
            "{m}"
        );
        assert!(e("TurboQuant_mse 4b") < e("TurboQuant_mse 3b"), "{m}");
        assert!(e("TurboQuant_mse 3b") < e("TurboQuant_mse 2b"), "{m}");
        assert!(
            e("TurboQuant_mse 4.5b/value") < e("TurboQuant_mse 4b"),
            "{m}"
        );
    }
    for t in ["q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "iq4_nl"] {
        for r in ["none", "wht"] {
            let (u, q) = (
                err(&v, &format!("{t} rot {r} (upstream)"), "k_rel_rmse"),
                err(&v, &format!("{t} rot {r} (attnrot quality)"), "k_rel_rmse"),
            );
            assert!(q <= u, "{t} {r}: quality K error {q} > upstream {u}");
        }
    }
    let summary = v["summary"].as_array().unwrap();
    assert!(summary
        .iter()
        .any(|r| r["bits"] == 4.5 && r["metric"] == "output"));
    assert!(summary
        .iter()
        .any(|r| r["bits"] == 8.5 && r["metric"] == "score"));
    let png = std::fs::read(&chart).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");

    // the capture: one K, V and Q file per layer (30 layers, one chunk), loadable elsewhere
    let manifest = std::fs::read_to_string(cap.join("manifest.jsonl")).unwrap();
    let events: Vec<serde_json::Value> = manifest
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(events.len(), 30 * 3, "one chunk, no warm-up");
    for e in &events {
        let f = std::fs::read(cap.join(e["file"].as_str().unwrap())).unwrap();
        // safetensors: u64 header length, JSON header naming the tensors
        let n = u64::from_le_bytes(f[..8].try_into().unwrap()) as usize;
        let h: serde_json::Value = serde_json::from_slice(&f[8..8 + n]).unwrap();
        assert_eq!(h["data"]["dtype"], "F32");
        assert_eq!(h["data"]["shape"], e["shape"]);
        if e["kind"] == "q" {
            assert_eq!(e["shape"], serde_json::json!([1, 9, 512, 64]));
        } else {
            assert_eq!(e["shape"], serde_json::json!([512, 192]));
            assert_eq!(h["index"]["dtype"], "I64");
        }
    }

    // the same capture analysed again (layer 7 only): the same numbers
    let json2 = tmp("s2.json");
    let v2 = run_ok(&[
        "stats",
        "--from-capture",
        s(&cap),
        "--layers",
        "7",
        "--max-queries",
        "16",
        "--no-chart",
        "--json",
        s(&json2),
    ]);
    let c2 = v2["candidates"].as_array().unwrap();
    assert_eq!(c2.len(), cands.len());
    for (a, b) in c2.iter().zip(cands) {
        assert_eq!(a["name"], b["name"]);
        assert_eq!(a["per_layer"][0], b["per_layer"][1], "{}", a["name"]);
    }

    // a q8_0 cache: llama.cpp rotates K before the cache; the capture says so and the
    // analysis undoes it: layer 0's K does not depend on the cache, so its unrotated
    // statistics equal the f16 run's
    let json3 = tmp("s3.json");
    let v3 = run_ok(&[
        "stats",
        "--cache",
        "q8_0",
        "--chunks",
        "1",
        "--layers",
        "0",
        "--max-queries",
        "8",
        "--no-chart",
        "--json",
        s(&json3),
    ]);
    assert_eq!(v3["captured_rotated"]["k"], true);
    assert_eq!(v3["captured_rotated"]["v"], true);
    for side in ["k", "v", "k_rotated"] {
        for stat in ["max_over_rms", "channel_rms_ratio", "kurtosis"] {
            let (a, b) = (
                v["layers"][0][side][stat].as_f64().unwrap(),
                v3["layers"][0][side][stat].as_f64().unwrap(),
            );
            assert!(
                (a - b).abs() <= 1e-3 * a.abs(),
                "{side} {stat}: f16 {a} vs q8_0 {b}"
            );
        }
    }

    // the size limit: 3 MB hold layer 0 (K, V, Q: ~1.9 MB per layer and chunk) and layer 1's
    // K and V; the capture stops there, with one line in llama.cpp's log, and the analysis
    // takes the complete layer only
    let (json4, cap4) = (tmp("s4.json"), tmp("capture-limited"));
    let v4 = run_ok(&[
        "stats",
        "--chunks",
        "1",
        "--max-mb",
        "3",
        "--max-queries",
        "4",
        "--keep-capture",
        s(&cap4),
        "--no-chart",
        "--json",
        s(&json4),
    ]);
    let got: Vec<u64> = v4["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["layer"].as_u64().unwrap())
        .collect();
    assert_eq!(got, vec![0]);
    let manifest = std::fs::read_to_string(cap4.join("manifest.jsonl")).unwrap();
    assert_eq!(manifest.lines().count(), 5);
    let log = std::fs::read_to_string(cap4.join("llama-perplexity.log")).unwrap();
    assert_eq!(
        log.matches("capture limit of 3 MB reached").count(),
        1,
        "{log}"
    );
    let _ = std::fs::remove_dir_all(cap.parent().unwrap());
}

#[test]
fn bad_input_is_one_clear_line() {
    let json = tmp("bad.json");
    let cases: [(&[&str], &str); 4] = [
        (&["stats", "--cache", "q4_0"], "--cache must be f16 or q8_0"),
        (&["stats", "--chunks", "0"], "--chunks must be at least 1"),
        (
            &["stats", "--from-capture", "/nonexistent/capture"],
            "is not a capture directory",
        ),
        (
            &["stats", "--model", "/nonexistent/model.gguf"],
            "model file /nonexistent/model.gguf does not exist",
        ),
    ];
    for (args, want) in cases {
        let err = fails_saying(args, &json, want);
        assert!(!err.contains("panicked"), "{args:?}:\n{err}");
    }
    // an empty capture directory (a manifest, no events)
    let cap = tmp("empty-capture");
    std::fs::create_dir_all(&cap).unwrap();
    std::fs::write(cap.join("manifest.jsonl"), "").unwrap();
    let out = attnrot()
        .args(["stats", "--no-chart", "--from-capture"])
        .arg(&cap)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("is empty"), "{err}");
}
