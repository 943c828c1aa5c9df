//! Row lengths the main differential test (`quant_diff`, rows of 1 and 32 blocks) does not
//! reach: the 4/5-bit kernels work 4 blocks at a time (vec_dot) and 2 at a time (iq4_nl
//! quantize), with tails of 1..3 blocks, and iq4_nl's vec_dot pairs blocks with a scalar
//! tail. Every length from 1 to 13 blocks, random and adversarial rows, every ISA this CPU
//! can run, bit for bit against the pinned upstream in the same process (seed printed;
//! `ATTNROT_SEED` repeats a run).
use attnrot::simd;
use attnrot::GgmlType;
use attnrot_ref::diff;

fn run(ty: GgmlType) {
    let seed = diff::seed(&format!("quant_tails {ty}"));
    let mut rows = Vec::new();
    for nb in 1..=13usize {
        let n = 32 * nb;
        rows.extend(diff::random_rows(seed ^ nb as u64, 24, n));
        rows.extend(diff::adversarial(n));
        // leading all-tiny blocks (iq4_nl keeps the previous indices), then regular ones
        let mut r = diff::random_rows(seed ^ 0x77 ^ nb as u64, 1, n).remove(0).1;
        for v in r.iter_mut().take(32 * (nb / 2)) {
            *v *= 1e-17;
        }
        rows.push((format!("tiny-lead {nb}"), r));
    }
    for isa in simd::available() {
        let rep = diff::compare_format(ty, isa, &rows, true);
        eprintln!(
            "{ty:>7} {:>6}: {} rows, {} blocks; mismatches: quantize(cpu) {}, quantize(ref) {}, dequantize {}, vec_dot {}",
            isa.name(),
            rep.rows,
            rep.blocks,
            rep.quantize_cpu_mismatch.len(),
            rep.quantize_ref_mismatch.len(),
            rep.dequantize_mismatch.len(),
            rep.dot_mismatch.len()
        );
        rep.assert_exact(&format!("{ty} {isa:?}"));
    }
}

#[test]
fn q4_0_tails() {
    run(GgmlType::Q4_0)
}
#[test]
fn q4_1_tails() {
    run(GgmlType::Q4_1)
}
#[test]
fn q5_0_tails() {
    run(GgmlType::Q5_0)
}
#[test]
fn q5_1_tails() {
    run(GgmlType::Q5_1)
}
#[test]
fn iq4_nl_tails() {
    run(GgmlType::IQ4_NL)
}

/// f16 and bf16 `vec_dot` sums whose every product is a negative number below f32's normal
/// range: `vdpbf16ps` (and its AVX2 emulation) flushes each to `-0`, so both halves of the
/// bf16 accumulator reduce to `-0` and upstream's `(0.0 + r1) + r2` in f64 gives `+0`
/// (which the kernels' f32 shortcut `(r1 + r2) + 0` must reproduce); positive tiny
/// products (`+0`), mixed signs and lengths with a tail after the 64-element steps
/// alongside. `compare_format` dots a row with itself reversed, so a row whose halves have
/// opposite signs makes every product negative.
#[test]
fn f16_bf16_signed_zero_sums() {
    let mut rows = Vec::new();
    for n in [64usize, 128, 96, 1024] {
        let h = n / 2;
        for (name, lo, hi) in [
            ("negative tiny products", 1e-30f32, -1e-30f32),
            ("positive tiny products", 1e-30, 1e-30),
            ("negative zero products", 0.0, -0.0),
            ("cancelling products", 1.0, -1.0),
        ] {
            let r: Vec<f32> = (0..n).map(|i| if i < h { lo } else { hi }).collect();
            rows.push((format!("{name} {n}"), r));
        }
    }
    for ty in [GgmlType::F16, GgmlType::BF16] {
        for isa in simd::available() {
            let rep = diff::compare_format(ty, isa, &rows, true);
            assert_eq!(rep.rows, rows.len());
            rep.assert_exact(&format!("{ty} {isa:?} signed-zero sums"));
        }
    }
}
