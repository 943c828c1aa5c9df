//! `attnrot check` end to end, on a small budget (256 random rows): every format and kernel
//! line is there and bit-exact, every speed ratio is a positive number, and bad arguments
//! fail with a message. Needs only the binary (the reference is linked in).
mod support;

use support::attnrot;

#[test]
fn small_check_lists_every_kernel_bit_exact() {
    let out = attnrot()
        .args(["check", "--rows", "256", "--seed", "7"])
        .output()
        .expect("run attnrot");
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "check failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("seed 7;"), "seed not printed");
    let mut kernels = 0;
    for ty in [
        "f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "iq4_nl",
    ] {
        let lines: Vec<&str> = stdout
            .lines()
            .filter(|l| l.split_whitespace().next() == Some(ty))
            .collect();
        assert_eq!(lines.len(), 4, "{ty}: {lines:#?}");
        for (l, k) in lines
            .iter()
            .zip(["quantize", "quantize_ref", "dequantize", "vec_dot"])
        {
            let w: Vec<&str> = l.split_whitespace().collect();
            assert!(w[1].starts_with(k), "{l}");
            assert_eq!(w[2], "yes", "{l}");
            kernels += 1;
            // quantize_ref has no speed column
            let last = w.last().unwrap();
            if k != "quantize_ref" {
                let r: f64 = last.trim_end_matches('x').parse().expect(l);
                assert!(r > 0.0 && r.is_finite(), "{l}");
            } else {
                assert_eq!(*last, "-", "{l}");
            }
        }
    }
    let rot = stdout.lines().filter(|l| l.starts_with("wht")).count();
    assert_eq!(rot, 7, "wht16..wht1024");
    assert_eq!(kernels, 32);
    assert!(stdout.contains("all kernels bit-exact with upstream"));
}

#[test]
fn check_refuses_bad_arguments() {
    for (args, want) in [
        (&["check", "--row", "33"][..], "multiple of 32"),
        (&["check", "--row", "0"][..], "multiple of 32"),
        (&["check", "--types", "q9_9"][..], "unknown KV type 'q9_9'"),
    ] {
        let out = attnrot().args(args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(
            err.contains(want),
            "{args:?}: stderr does not say '{want}':\n{err}"
        );
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
}
