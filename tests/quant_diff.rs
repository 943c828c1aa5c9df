//! Differential tests of the eight KV block formats (and q8_1) against the pinned upstream,
//! same inputs, same process, for every SIMD variant this CPU can run.
//!
//! * quantize: bytes identical to the CPU backend's `from_float` AND to `quantize_row_*_ref`;
//! * dequantize: bit-identical to `to_float`;
//! * vec_dot: bit-identical to the CPU backend's `vec_dot` (see `DOT_EXACT` for exceptions).
//!
//! 1,000,000 random blocks per format and ISA (seed printed; `ATTNROT_SEED` repeats a run),
//! plus the adversarial rows of `attnrot_ref::diff::adversarial_rows` and 256 rows of blocks
//! with special values at random places (`diff::special_rows`).
use attnrot::simd::{self, Isa};
use attnrot::GgmlType;
use attnrot_ref::diff;

const ROW: usize = 1024;
const BLOCKS: usize = 1_000_000;
/// Rows of [`diff::special_rows`] (NaN payloads, ±inf, f16 overflow, subnormals at random
/// positions of every block) on top of the random ones.
const SPECIAL_ROWS: usize = 256;

/// Formats whose `vec_dot` we require bit-identical to upstream on this build.
fn dot_exact(_ty: GgmlType) -> bool {
    true
}

fn run(ty: GgmlType) {
    let seed = diff::seed(&format!("quant_diff {ty}"));
    let rows_needed = BLOCKS.div_ceil(ROW / ty.block_size());
    let mut rows = diff::adversarial(ROW);
    rows.extend(diff::adversarial(32));
    rows.extend(diff::special_rows(seed, SPECIAL_ROWS, ROW));
    rows.extend(diff::random_rows(seed, rows_needed, ROW));
    for isa in simd::available() {
        let rep = diff::compare_format(ty, isa, &rows, dot_exact(ty));
        eprintln!(
            "{ty:>7} {:>6}: {} rows, {} blocks; quantize(cpu) mismatches {}, quantize(ref) {}, dequantize {}, vec_dot {} (worst rel {:.3e})",
            isa.name(),
            rep.rows,
            rep.blocks,
            rep.quantize_cpu_mismatch.len(),
            rep.quantize_ref_mismatch.len(),
            rep.dequantize_mismatch.len(),
            rep.dot_mismatch.len(),
            rep.dot_worst_rel
        );
        rep.assert_exact(&format!("{ty} {isa:?}"));
        assert!(rep.blocks >= BLOCKS, "only {} blocks checked", rep.blocks);
    }
    assert!(simd::available().contains(&Isa::Scalar));
}

#[test]
fn f16() {
    run(GgmlType::F16)
}
#[test]
fn bf16() {
    run(GgmlType::BF16)
}
#[test]
fn q8_0() {
    run(GgmlType::Q8_0)
}
#[test]
fn q8_1() {
    run(GgmlType::Q8_1)
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
