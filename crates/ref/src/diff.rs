//! Differential harness shared by the tests and `attnrot check`: seeded random rows,
//! adversarial rows, and ours-vs-upstream comparisons of one block format.
use attnrot::quant::format;
use attnrot::simd::{self, Isa};
use attnrot::GgmlType;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// The seed for a run: `ATTNROT_SEED` if set, else from the clock. Printed either way.
pub fn seed(what: &str) -> u64 {
    let s = match std::env::var("ATTNROT_SEED") {
        Ok(v) => v
            .trim()
            .parse()
            .expect("ATTNROT_SEED must be an unsigned integer"),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x5eed),
    };
    eprintln!("[{what}] seed = {s} (set ATTNROT_SEED={s} to repeat)");
    s
}

pub fn rng(seed: u64) -> SmallRng {
    SmallRng::seed_from_u64(seed)
}

/// A random row of `n` values: a mix of scales (1e-6 .. 1e4), gaussian-ish, with
/// occasional outlier channels, exact zeros and repeated values, like activations.
pub fn random_row(r: &mut SmallRng, n: usize) -> Vec<f32> {
    let scale = 10f32.powf(r.random_range(-6.0..4.0));
    let kind = r.random_range(0..8);
    (0..n)
        .map(|i| {
            let g: f32 = (0..4).map(|_| r.random::<f32>()).sum::<f32>() - 2.0;
            let v = g * scale;
            match kind {
                0 if i % 17 == 3 => v * 100.0,                 // outlier channels
                1 if r.random_range(0..4) == 0 => 0.0,         // sparse
                2 => (v * 4.0).round() / 4.0 * scale.max(1.0), // many exact ties
                3 => v.abs(),                                  // one-signed
                4 => -v.abs(),
                _ => v,
            }
        })
        .collect()
}

/// Adversarial rows of `n` values (`n` a multiple of 32), each named.
pub fn adversarial_rows(n: usize) -> Vec<(&'static str, Vec<f32>)> {
    let mut v: Vec<(&'static str, Vec<f32>)> = Vec::new();
    let ramp = |i: usize| (i as f32 - n as f32 / 2.0) / n as f32;
    v.push(("zeros", vec![0.0; n]));
    v.push(("negative zeros", vec![-0.0; n]));
    v.push(("constant 1", vec![1.0; n]));
    v.push(("constant -3.5", vec![-3.5; n]));
    v.push(("constant 1e-3", vec![1e-3; n]));
    v.push((
        "one outlier 1e4x",
        (0..n).map(|i| if i == 5 { 1e4 } else { ramp(i) }).collect(),
    ));
    v.push((
        "one negative outlier 1e4x",
        (0..n)
            .map(|i| if i == 7 { -1e4 } else { ramp(i) })
            .collect(),
    ));
    v.push((
        "nan",
        (0..n)
            .map(|i| if i % 32 == 3 { f32::NAN } else { ramp(i) })
            .collect(),
    ));
    v.push((
        "nan payload",
        (0..n)
            .map(|i| {
                if i % 32 == 9 {
                    f32::from_bits(0xffc1_2345)
                } else {
                    ramp(i)
                }
            })
            .collect(),
    ));
    // A NaN in the last quarter of a block survives the x86 quantizers' max-reduction lane
    // order (an earlier one is dropped by `maxps`), so it reaches the f16 scale with its payload.
    v.push((
        "nan full payload, late lane",
        (0..n)
            .map(|i| match i % 32 {
                27 => f32::from_bits(0xffff_ffff),
                _ => 0.5,
            })
            .collect(),
    ));
    v.push((
        "signalling nan and -nan payloads",
        (0..n)
            .map(|i| match i % 32 {
                3 => f32::from_bits(0xff80_0001),
                19 => f32::from_bits(0xffc0_0f00),
                30 => f32::from_bits(0x7f80_0001),
                _ => ramp(i),
            })
            .collect(),
    ));
    v.push((
        "inf then nan",
        (0..n)
            .map(|i| match i % 32 {
                25 => f32::INFINITY,
                29 => f32::from_bits(0x7fc1_2345),
                _ => ramp(i),
            })
            .collect(),
    ));
    v.push((
        "+inf",
        (0..n)
            .map(|i| if i % 32 == 1 { f32::INFINITY } else { ramp(i) })
            .collect(),
    ));
    v.push((
        "-inf",
        (0..n)
            .map(|i| {
                if i % 32 == 2 {
                    f32::NEG_INFINITY
                } else {
                    ramp(i)
                }
            })
            .collect(),
    ));
    v.push((
        "subnormals",
        (0..n)
            .map(|i| f32::from_bits(1 + i as u32 * 977) * if i % 2 == 0 { 1.0 } else { -1.0 })
            .collect(),
    ));
    v.push((
        "tiny normals",
        (0..n)
            .map(|i| f32::MIN_POSITIVE * (1.0 + i as f32))
            .collect(),
    ));
    v.push((
        "f16 subnormal range",
        (0..n).map(|i| 6.0e-8 * (i as f32 - 7.0)).collect(),
    ));
    v.push((
        "rounding ties .5",
        (0..n).map(|i| (i % 32) as f32 - 15.5).collect(),
    ));
    v.push((
        "rounding ties q8",
        (0..n)
            .map(|i| {
                if i % 32 == 0 {
                    127.0
                } else {
                    (i % 32) as f32 + 0.5
                }
            })
            .collect(),
    ));
    v.push((
        "rounding ties q4",
        (0..n)
            .map(|i| {
                if i % 32 == 0 {
                    -8.0
                } else {
                    (i % 9) as f32 - 3.5
                }
            })
            .collect(),
    ));
    v.push((
        "f16 ties",
        (0..n)
            .map(|i| 1.0 + (2 * i + 1) as f32 * 2f32.powi(-11))
            .collect(),
    ));
    v.push((
        "above f16 max",
        (0..n).map(|i| 70000.0 + i as f32 * 1000.0).collect(),
    ));
    v.push((
        "mixed above f16 max",
        (0..n)
            .map(|i| if i % 2 == 0 { 1e6 } else { -2.5e5 })
            .collect(),
    ));
    v.push((
        "f32 max",
        (0..n)
            .map(|i| if i % 3 == 0 { f32::MAX } else { -1.0 })
            .collect(),
    ));
    v.push((
        "all negative",
        (0..n).map(|i| -1.0 - i as f32 * 0.37).collect(),
    ));
    v.push((
        "all positive",
        (0..n).map(|i| 1.0 + i as f32 * 0.37).collect(),
    ));
    v.push((
        "alternating",
        (0..n)
            .map(|i| if i % 2 == 0 { 1.0 } else { -1.0 })
            .collect(),
    ));
    v
}

/// The result of comparing one format on a set of rows.
#[derive(Debug, Default, Clone)]
pub struct FormatReport {
    pub rows: usize,
    pub blocks: usize,
    /// Rows whose quantized bytes differ from the CPU backend's `from_float`.
    pub quantize_cpu_mismatch: Vec<String>,
    /// Rows whose bytes differ from upstream's `quantize_row_*_ref`.
    pub quantize_ref_mismatch: Vec<String>,
    /// Rows whose dequantized floats differ bitwise from upstream's `to_float`.
    pub dequantize_mismatch: Vec<String>,
    /// Rows whose `vec_dot` differs bitwise from upstream's.
    pub dot_mismatch: Vec<String>,
    /// Worst |ours - upstream| / max(1, |upstream|) over the dot products.
    pub dot_worst_rel: f64,
}

impl FormatReport {
    /// Panic with the first mismatches (up to 5 per kernel) unless quantize (CPU and ref),
    /// dequantize and vec_dot all matched upstream; `what` names the format and ISA.
    pub fn assert_exact(&self, what: &str) {
        let show = |v: &Vec<String>| v.iter().take(5).cloned().collect::<Vec<_>>().join("\n  ");
        for (kernel, v) in [
            ("quantize vs CPU from_float", &self.quantize_cpu_mismatch),
            ("quantize vs _ref", &self.quantize_ref_mismatch),
            ("dequantize", &self.dequantize_mismatch),
            ("vec_dot", &self.dot_mismatch),
        ] {
            assert!(v.is_empty(), "{what} {kernel}:\n  {}", show(v));
        }
    }

    pub fn exact(&self) -> bool {
        self.quantize_cpu_mismatch.is_empty()
            && self.quantize_ref_mismatch.is_empty()
            && self.dequantize_mismatch.is_empty()
    }
}

fn same_f32_bits(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

fn first_diff_bytes(a: &[u8], b: &[u8]) -> String {
    let i = a
        .iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .unwrap_or(a.len().min(b.len()));
    format!(
        "first differing byte {i}: ours {:?} upstream {:?}",
        a.get(i),
        b.get(i)
    )
}

/// Zero the bytes upstream leaves undefined, in ours and upstream's alike (only those).
///
/// iq4_nl: `quantize_row_iq4_nl_impl` skips a block whose largest magnitude is below
/// `GROUP_MAX_EPS` (1e-15) but still packs its index buffer `L` into `qs`; `L` is an
/// uninitialised array in `quantize_row_iq4_nl_ref`'s frame, so for such blocks before the
/// first regular block of a row upstream writes stack garbage (two upstream calls on the
/// same row differ). Later such blocks repeat the previous block's indices (deterministic,
/// still compared). `d` is compared everywhere.
pub fn mask_undefined(ty: GgmlType, x: &[f32], mut q: Vec<u8>) -> Vec<u8> {
    if ty == GgmlType::IQ4_NL {
        for (b, xb) in x.chunks_exact(32).enumerate() {
            let amax = xb
                .iter()
                .fold(0f32, |a, v| if v.abs() > a { v.abs() } else { a });
            if amax >= 1e-15 {
                break;
            }
            q[b * 18 + 2..b * 18 + 18].fill(0);
        }
    }
    q
}

/// Compare ours (forced to `isa`) with upstream on `rows` for format `ty`.
/// `dot_exact` says whether `vec_dot` must match bitwise (else only the bound is reported).
pub fn compare_format(
    ty: GgmlType,
    isa: Isa,
    rows: &[(String, Vec<f32>)],
    dot_exact: bool,
) -> FormatReport {
    crate::init();
    let ops = format(ty).expect("format");
    let dot_ty = ty.vec_dot_type();
    let mut rep = FormatReport::default();
    simd::with_isa(isa, || {
        for (name, x) in rows {
            let n = x.len();
            rep.rows += 1;
            rep.blocks += n / ty.block_size();
            let nb = ty.row_bytes(n).unwrap();
            let mut ours = vec![0u8; nb];
            ops.quantize_row(x, &mut ours).unwrap();
            let up = crate::quantize_row_cpu(ty, x);
            let (ours_m, up_m) = (
                mask_undefined(ty, x, ours),
                mask_undefined(ty, x, up.clone()),
            );
            if ours_m != up_m {
                rep.quantize_cpu_mismatch
                    .push(format!("{name}: {}", first_diff_bytes(&ours_m, &up_m)));
            }
            let mut ours_ref = vec![0u8; nb];
            ops.quantize_row_ref(x, &mut ours_ref).unwrap();
            let up_ref = crate::quantize_row_ref(ty, x);
            let (ours_ref, up_ref) = (
                mask_undefined(ty, x, ours_ref),
                mask_undefined(ty, x, up_ref),
            );
            if ours_ref != up_ref {
                rep.quantize_ref_mismatch
                    .push(format!("{name}: {}", first_diff_bytes(&ours_ref, &up_ref)));
            }
            // dequantize upstream's bytes with both (q8_1 has no to_float upstream)
            if crate::has_to_float(ty) {
                let mut deq = vec![0f32; n];
                ops.dequantize_row(&up, &mut deq).unwrap();
                let up_deq = crate::dequantize_row(ty, &up, n);
                if !same_f32_bits(&deq, &up_deq) {
                    let i = deq
                        .iter()
                        .zip(&up_deq)
                        .position(|(a, b)| a.to_bits() != b.to_bits())
                        .unwrap();
                    rep.dequantize_mismatch.push(format!(
                        "{name}: element {i}: ours {} upstream {}",
                        deq[i], up_deq[i]
                    ));
                }
            }
            // dot against the row reversed, quantized to vec_dot_type by upstream's CPU from_float
            let yf: Vec<f32> = x
                .iter()
                .rev()
                .map(|v| if v.is_finite() { *v } else { 1.0 })
                .collect();
            let xf: Vec<f32> = x
                .iter()
                .map(|v| if v.is_finite() { *v } else { 0.5 })
                .collect();
            if !crate::has_vec_dot(ty) {
                continue; // e.g. q8_1: only ever the right-hand side of a dot product upstream
            }
            let xq = crate::quantize_row_cpu(ty, &xf);
            let yq = crate::quantize_row_cpu(dot_ty, &yf);
            let ours_dot = ops.vec_dot(n, &xq, &yq).unwrap();
            let up_dot = crate::vec_dot(ty, n, &xq, &yq);
            if ours_dot.to_bits() != up_dot.to_bits() && !(ours_dot.is_nan() && up_dot.is_nan()) {
                let rel =
                    ((ours_dot as f64 - up_dot as f64).abs()) / (up_dot as f64).abs().max(1.0);
                if rel.is_finite() {
                    rep.dot_worst_rel = rep.dot_worst_rel.max(rel);
                } else {
                    rep.dot_worst_rel = f64::INFINITY;
                }
                if dot_exact {
                    rep.dot_mismatch
                        .push(format!("{name}: ours {ours_dot} upstream {up_dot}"));
                }
            }
        }
    })
    .expect("ISA not available on this CPU");
    rep
}

/// `count` seeded random rows of `n` elements, named by index.
pub fn random_rows(seed: u64, count: usize, n: usize) -> Vec<(String, Vec<f32>)> {
    let mut r = rng(seed);
    (0..count)
        .map(|i| {
            (
                format!("random row {i} (seed {seed})"),
                random_row(&mut r, n),
            )
        })
        .collect()
}

/// `count` seeded rows of `n` elements where every 32-block holds 0–3 special values at
/// random positions: NaNs with random sign and payload (quiet and signalling), ±inf, values
/// above the f16 range, f32 subnormals, over a random row. Named by index.
pub fn special_rows(seed: u64, count: usize, n: usize) -> Vec<(String, Vec<f32>)> {
    let mut r = rng(seed ^ 0x005e_ed0f_5bec_1a15);
    (0..count)
        .map(|i| {
            let mut x = random_row(&mut r, n);
            for b in 0..n / 32 {
                for _ in 0..r.random_range(0..4) {
                    let j = b * 32 + r.random_range(0..32);
                    let sign = if r.random::<bool>() {
                        0x8000_0000u32
                    } else {
                        0
                    };
                    x[j] = match r.random_range(0..5) {
                        0 | 1 => {
                            // NaN: exponent all ones, non-zero mantissa
                            let m = r.random_range(1u32..0x0080_0000);
                            f32::from_bits(sign | 0x7f80_0000 | m)
                        }
                        2 => f32::from_bits(sign | 0x7f80_0000),
                        3 => f32::from_bits(sign) + if sign == 0 { 1e6 } else { -7e4 },
                        _ => f32::from_bits(sign | r.random_range(1u32..0x0080_0000)),
                    };
                }
            }
            (format!("special row {i} (seed {seed})"), x)
        })
        .collect()
}

/// The adversarial rows, owned and named.
pub fn adversarial(n: usize) -> Vec<(String, Vec<f32>)> {
    adversarial_rows(n)
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
}
