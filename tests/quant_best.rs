//! The quality mode's quantizers (`attnrot::quant::best`) against the pinned upstream, same
//! inputs, same process, for every SIMD variant this CPU can run:
//!
//! * every block it writes is a valid block of the type: upstream's `to_float` decodes it to
//!   exactly what ours decodes;
//! * no block has a larger squared error than the CPU backend's own block (unweighted and
//!   with random weights), and blocks holding NaN/Inf are the CPU backend's bytes;
//! * on random rows the total error is clearly lower than upstream's (figures printed).
//!
//! Random rows with a printed seed (`ATTNROT_SEED` repeats a run), Gaussian rows, and the
//! adversarial and special-value rows of `attnrot_ref::diff`.
use attnrot::quant::best::quantize_row_best;
use attnrot::simd;
use attnrot::GgmlType;
use attnrot_ref::diff;
use rand::Rng;

const ROW: usize = 256;

fn sse(x: &[f32], y: &[f32], w: &[f32]) -> f64 {
    x.iter()
        .zip(y)
        .zip(w)
        .map(|((a, b), w)| *w as f64 * (*a as f64 - *b as f64).powi(2))
        .sum()
}

fn gaussian_rows(seed: u64, count: usize, n: usize) -> Vec<(String, Vec<f32>)> {
    let mut r = diff::rng(seed ^ 0x6a05);
    (0..count)
        .map(|i| {
            let x = (0..n)
                .map(|_| {
                    let (u, v): (f64, f64) = (r.random_range(1e-12..1.0), r.random());
                    ((-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()) as f32
                })
                .collect();
            (format!("gaussian row {i} (seed {seed})"), x)
        })
        .collect()
}

struct Totals {
    ours: f64,
    upstream: f64,
    replaced: usize,
    blocks: usize,
}

/// Check one row of `ty` (weights `w`); add the squared errors of its finite blocks to `t`.
fn check_row(ty: GgmlType, name: &str, x: &[f32], w: Option<&[f32]>, t: &mut Totals) {
    let n = x.len();
    let up = attnrot_ref::quantize_row_cpu(ty, x);
    let mut ours = vec![0u8; up.len()];
    quantize_row_best(ty, x, w, &mut ours).unwrap_or_else(|e| panic!("{ty} {name}: {e}"));
    // a valid block: upstream decodes it to what we decode
    let dq_ref = attnrot_ref::dequantize_row(ty, &ours, n);
    let mut dq_ours = vec![0f32; n];
    attnrot::quant::format(ty)
        .unwrap()
        .dequantize_row(&ours, &mut dq_ours)
        .unwrap();
    for (i, (a, b)) in dq_ref.iter().zip(&dq_ours).enumerate() {
        assert!(
            a.to_bits() == b.to_bits(),
            "{ty} {name}: element {i} decodes to {a} upstream, {b} ours"
        );
    }
    let dq_up = attnrot_ref::dequantize_row(ty, &up, n);
    let ones = vec![1f32; n];
    let w = w.unwrap_or(&ones);
    let bs = ty.block_bytes();
    // the bytes upstream leaves undefined (iq4_nl's skipped leading blocks) are not compared
    let (ours_m, up_m) = (
        diff::mask_undefined(ty, x, ours.clone()),
        diff::mask_undefined(ty, x, up.clone()),
    );
    for b in 0..n / 32 {
        let r = b * 32..(b + 1) * 32;
        let xb = &x[r.clone()];
        let (ob, ub) = (&ours[b * bs..(b + 1) * bs], &up[b * bs..(b + 1) * bs]);
        if !xb.iter().all(|v| v.is_finite()) {
            assert_eq!(
                &ours_m[b * bs..(b + 1) * bs],
                &up_m[b * bs..(b + 1) * bs],
                "{ty} {name}: block {b} holds NaN/Inf and must be upstream's bytes"
            );
            continue;
        }
        let (eo, eu) = (
            sse(xb, &dq_ours[r.clone()], &w[r.clone()]),
            sse(xb, &dq_up[r.clone()], &w[r]),
        );
        if !eu.is_finite() {
            // upstream's scale overflows f16 (values near f32 max): ours is upstream's block
            // or one that decodes to finite values
            assert!(
                ob == ub || eo.is_finite(),
                "{ty} {name}: block {b} replaced by a non-finite one"
            );
            continue;
        }
        assert!(
            eo <= eu,
            "{ty} {name}: block {b} error {eo:e} is larger than upstream's {eu:e}"
        );
        t.ours += eo;
        t.upstream += eu;
        t.blocks += 1;
        t.replaced += usize::from(ob != ub);
    }
}

fn run(ty: GgmlType) {
    let seed = diff::seed(&format!("quant_best {ty}"));
    let mut rows = diff::adversarial(ROW);
    rows.extend(diff::special_rows(seed, 32, ROW));
    rows.extend(diff::random_rows(seed, 512, ROW));
    let gauss = gaussian_rows(seed, 256, ROW);
    let mut wr = diff::rng(seed ^ 0x3e19);
    let weights: Vec<Vec<f32>> = (0..64)
        .map(|_| (0..ROW).map(|_| wr.random_range(0.0..4.0f32)).collect())
        .collect();
    for isa in simd::available() {
        simd::with_isa(isa, || {
            let mut all = Totals {
                ours: 0.0,
                upstream: 0.0,
                replaced: 0,
                blocks: 0,
            };
            for (name, x) in &rows {
                check_row(ty, name, x, None, &mut all);
            }
            for (i, w) in weights.iter().enumerate() {
                let (name, x) = &rows[rows.len() - 1 - i];
                check_row(ty, &format!("{name}, weighted"), x, Some(w), &mut all);
            }
            let mut g = Totals {
                ours: 0.0,
                upstream: 0.0,
                replaced: 0,
                blocks: 0,
            };
            for (name, x) in &gauss {
                check_row(ty, name, x, None, &mut g);
            }
            eprintln!(
                "{ty:>7} {:>6}: all rows {} blocks, {} replaced, error ours/upstream {:.3}; gaussian rows error ours/upstream {:.3}",
                isa.name(),
                all.blocks,
                all.replaced,
                all.ours / all.upstream,
                g.ours / g.upstream
            );
            // The search must pay: >= 8 % less squared error than upstream on Gaussian rows
            // (measured 11-24 % depending on the format).
            assert!(
                g.ours < 0.92 * g.upstream,
                "{ty} {isa:?}: gaussian error ours {} vs upstream {}",
                g.ours,
                g.upstream
            );
        })
        .expect("ISA listed as available");
    }
}

#[test]
fn q8_0() {
    run(GgmlType::Q8_0)
}
#[test]
fn q4_0() {
    run(GgmlType::Q4_0)
}
#[test]
fn q4_1() {
    run(GgmlType::Q4_1)
}
#[test]
fn q5_0() {
    run(GgmlType::Q5_0)
}
#[test]
fn q5_1() {
    run(GgmlType::Q5_1)
}
#[test]
fn iq4_nl() {
    run(GgmlType::IQ4_NL)
}

#[test]
fn unquantized_types_are_the_cpu_backends_bytes() {
    let seed = diff::seed("quant_best f16/bf16");
    for (name, x) in diff::random_rows(seed, 16, ROW) {
        for ty in [GgmlType::F16, GgmlType::BF16] {
            let up = attnrot_ref::quantize_row_cpu(ty, &x);
            let mut ours = vec![0u8; up.len()];
            quantize_row_best(ty, &x, None, &mut ours).unwrap();
            assert_eq!(ours, up, "{ty} {name}");
        }
    }
}
