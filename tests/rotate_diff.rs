//! Differential tests of the Walsh–Hadamard rotation against the pinned upstream, same
//! inputs, same process, for every SIMD variant this CPU can run.
//!
//! * bit-identical to upstream's hinted MUL_MAT (`GGML_HINT_SRC0_IS_HADAMARD`, i.e.
//!   `ggml_compute_forward_fwht`) computed by a real graph on ggml's CPU backend, for
//!   n = 1 .. 1024 (powers of two), f32 and f16 input, several row counts and row lengths;
//! * within 1e-6 (relative to the chunk's norm) of the exact product with `H_n/√n` in f64;
//! * in place == out of place == strided rows; rotating twice ≈ identity;
//! * adversarial rows (zeros, outliers, NaN, ±Inf, subnormals, f32::MAX, …);
//! * bad sizes return errors; the rotation plan follows upstream's rule table.
//!
//! Seeded (`ATTNROT_SEED` repeats a run; the seed is printed).
use attnrot::quant::fp16::{f16_to_f32, f32_to_f16};
use attnrot::rotate::{self, RotationPlan};
use attnrot::simd::{self, Isa};
use attnrot::{Error, GgmlType};
use attnrot_ref::diff;
use attnrot_ref::rot::{self as uprot, HadamardGraph, Src};
use rand::Rng;

const NS: [usize; 11] = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024];

fn first_bit_diff(a: &[f32], b: &[f32]) -> Option<(usize, f32, f32)> {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .position(|(x, y)| x.to_bits() != y.to_bits())
        .map(|i| (i, a[i], b[i]))
}

/// How many different NaNs can meet inside this input chunk: its distinct (quieted) NaN
/// payloads, plus x86's default NaN if `inf - inf` can happen (an infinity in the input or a
/// value large enough to overflow in the sums).
fn nan_sources(chunk: &[f32]) -> usize {
    let mut set: Vec<u32> = chunk
        .iter()
        .filter(|v| v.is_nan())
        .map(|v| v.to_bits() | 0x0040_0000)
        .collect();
    if chunk.iter().any(|v| v.is_infinite() || v.abs() > 1e36) {
        set.push(0xffc0_0000);
    }
    set.sort_unstable();
    set.dedup();
    set.len()
}

/// Compare ours with upstream chunk by chunk: bit-identical, except that in a chunk where
/// two different NaNs can meet (see `nan_sources`) a NaN output may carry another payload
/// (x86 picks by operand position; upstream's operand order is GCC's choice). Returns a
/// description of the first mismatch, and counts the chunks compared that way in `relaxed`.
fn mismatch(n: usize, x: &[f32], ours: &[f32], up: &[f32], relaxed: &mut usize) -> Option<String> {
    assert_eq!(ours.len(), up.len());
    for (c, ((xc, oc), uc)) in x
        .chunks_exact(n)
        .zip(ours.chunks_exact(n))
        .zip(up.chunks_exact(n))
        .enumerate()
    {
        let Some((i, a, b)) = first_bit_diff(oc, uc) else {
            continue;
        };
        if nan_sources(xc) >= 2 {
            *relaxed += 1;
            let bad = oc
                .iter()
                .zip(uc)
                .position(|(a, b)| a.to_bits() != b.to_bits() && !(a.is_nan() && b.is_nan()));
            if let Some(j) = bad {
                return Some(format!(
                    "chunk {c} element {j}: ours {:e} ({:#010x}) upstream {:e} ({:#010x})",
                    oc[j],
                    oc[j].to_bits(),
                    uc[j],
                    uc[j].to_bits()
                ));
            }
            continue;
        }
        return Some(format!(
            "chunk {c} element {i}: ours {a:e} ({:#010x}) upstream {b:e} ({:#010x})",
            a.to_bits(),
            b.to_bits()
        ));
    }
    None
}

/// Upstream's result: the hinted MUL_MAT graph on the CPU backend (one thread).
fn upstream(n: usize, row_len: usize, rows: usize, x: &[f32]) -> Vec<f32> {
    let mut g = HadamardGraph::new(n, row_len, rows, Src::F32, true, 1);
    g.set_input(x);
    g.compute();
    g.output().to_vec()
}

fn upstream_f16(n: usize, row_len: usize, rows: usize, x: &[u16]) -> Vec<f32> {
    let mut g = HadamardGraph::new(n, row_len, rows, Src::F16, true, 1);
    g.set_input_f16(x);
    g.compute();
    g.output().to_vec()
}

/// Ours, forced to `isa`: out of place, in place and strided rows must all agree bitwise
/// with `up`. Returns the out-of-place result.
fn check_ours(
    isa: Isa,
    n: usize,
    row_len: usize,
    rows: usize,
    x: &[f32],
    up: &[f32],
    what: &str,
) -> Vec<f32> {
    simd::with_isa(isa, || {
        let mut out = vec![f32::from_bits(0x7fa5_a5a5); x.len()];
        rotate::rotate(n, x, &mut out).unwrap();
        let mut relaxed = 0;
        if let Some(m) = mismatch(n, x, &out, up, &mut relaxed) {
            panic!("{what} {isa:?} n={n} row_len={row_len} rows={rows}: {m}");
        }
        let mut inp = x.to_vec();
        rotate::rotate_inplace(n, &mut inp).unwrap();
        assert!(
            first_bit_diff(&inp, &out).is_none(),
            "{what} {isa:?} n={n}: in place differs from out of place"
        );
        // strided: rows at stride row_len + n + 3 in both buffers
        let st = row_len + n + 3;
        let mut xs = vec![0f32; rows * st];
        for r in 0..rows {
            xs[r * st..][..row_len].copy_from_slice(&x[r * row_len..][..row_len]);
        }
        let mut ds = vec![-7f32; rows * st];
        rotate::rotate_rows(n, row_len, rows, &xs, st, &mut ds, st).unwrap();
        for r in 0..rows {
            assert!(
                first_bit_diff(&ds[r * st..][..row_len], &out[r * row_len..][..row_len]).is_none(),
                "{what} {isa:?} n={n}: strided row {r} differs from contiguous"
            );
            assert!(
                ds[r * st + row_len..(r + 1) * st]
                    .iter()
                    .all(|v| *v == -7.0),
                "gap written"
            );
        }
        out
    })
    .expect("ISA listed by simd::available()")
}

/// Worst |ours - exact| / ||chunk||₂ over the finite chunks (exact = f64 product).
fn worst_rel_to_exact(n: usize, x: &[f32], ours: &[f32]) -> f64 {
    let exact = uprot::fwht_f64(n, x);
    let mut worst = 0f64;
    for ((xc, oc), ec) in x
        .chunks_exact(n)
        .zip(ours.chunks_exact(n))
        .zip(exact.chunks_exact(n))
    {
        if !xc.iter().all(|v| v.is_finite()) {
            continue;
        }
        let norm = xc
            .iter()
            .map(|v| (*v as f64) * (*v as f64))
            .sum::<f64>()
            .sqrt();
        if !norm.is_finite() || ec.iter().any(|e| e.abs() >= f32::MAX as f64) {
            continue; // the exact result is not representable in f32
        }
        for (o, e) in oc.iter().zip(ec) {
            let err = (*o as f64 - e).abs();
            if norm == 0.0 {
                assert_eq!(err, 0.0, "zero chunk gave non-zero output");
            } else if norm > 1e-30 {
                // (below ~1e-30 the f32 scale step itself underflows into subnormals)
                worst = worst.max(err / norm);
            }
        }
    }
    worst
}

fn row_lens(n: usize) -> Vec<usize> {
    let mut v = vec![n, 2 * n];
    for h in [64, 128, 256] {
        if h % n == 0 && !v.contains(&h) {
            v.push(h);
        }
    }
    v
}

#[test]
fn random_rows_bit_exact_and_accurate() {
    let seed = diff::seed("rotate_diff random");
    let mut r = diff::rng(seed);
    let isas = simd::available();
    eprintln!(
        "ISAs: {isas:?}; reference cpu features {:?}",
        attnrot_ref::cpu_features()
    );
    let mut cases = 0;
    let mut elems = 0usize;
    let mut worst = 0f64;
    for n in NS {
        for rows in [1usize, 3, 64, 4096] {
            for row_len in row_lens(n) {
                if n < 16 && rows == 4096 && row_len > 64 {
                    continue;
                }
                let x: Vec<f32> = (0..rows)
                    .flat_map(|_| diff::random_row(&mut r, row_len))
                    .collect();
                let up = upstream(n, row_len, rows, &x);
                for &isa in &isas {
                    let ours = check_ours(isa, n, row_len, rows, &x, &up, "random");
                    if isa == isas[0] {
                        let w = worst_rel_to_exact(n, &x, &ours);
                        assert!(w <= 1e-6, "n={n} rows={rows} row_len={row_len}: {w:e} relative to the exact product");
                        worst = worst.max(w);
                    }
                }
                cases += 1;
                elems += x.len();
            }
        }
    }
    eprintln!("{cases} cases, {elems} elements per ISA, bit-identical to upstream; worst error vs exact f64 product {worst:.3e} of the chunk norm");
    assert!(cases >= 80);
}

#[test]
fn f16_input_bit_exact() {
    let seed = diff::seed("rotate_diff f16");
    let mut r = diff::rng(seed);
    let mut relaxed = 0;
    for n in NS {
        for rows in [1usize, 3, 64, 1024] {
            let row_len = n.max(64);
            let mut x: Vec<u16> = (0..rows)
                .flat_map(|_| diff::random_row(&mut r, row_len))
                .map(f32_to_f16)
                .collect();
            if rows == 3 {
                // raw half patterns: subnormals, ±0, ±Inf, quiet and signalling NaNs, max
                let special = [
                    0x0001u16, 0x8001, 0x03ff, 0x0000, 0x8000, 0x7c00, 0xfc00, 0x7bff, 0xfbff,
                    0x7e00, 0x7c01, 0xfd23, 0x0400,
                ];
                for (i, v) in x.iter_mut().enumerate().take(row_len) {
                    *v = special[i % special.len()];
                }
                for v in x.iter_mut().skip(row_len).take(row_len) {
                    *v = r.random::<u16>() & 0x7bff | (r.random::<u16>() & 0x8000);
                }
            }
            let up = upstream_f16(n, row_len, rows, &x);
            let xf: Vec<f32> = x.iter().map(|h| f16_to_f32(*h)).collect();
            for isa in simd::available() {
                let ours = simd::with_isa(isa, || {
                    let mut o = vec![0f32; x.len()];
                    rotate::rotate_f16(n, &x, &mut o).unwrap();
                    o
                })
                .unwrap();
                if let Some(m) = mismatch(n, &xf, &ours, &up, &mut relaxed) {
                    panic!("f16 {isa:?} n={n} rows={rows}: {m}");
                }
                // the f16 path equals converting first, then the f32 path
                let via = simd::with_isa(isa, || {
                    let mut o = vec![0f32; x.len()];
                    rotate::rotate(n, &xf, &mut o).unwrap();
                    o
                })
                .unwrap();
                if let Some(m) = mismatch(n, &xf, &ours, &via, &mut relaxed) {
                    panic!("f16 {isa:?} n={n}: f16 path != convert + f32 path: {m}");
                }
                // strided f16 rows
                let st = row_len + 5;
                let mut xs = vec![0u16; rows * st];
                for rr in 0..rows {
                    xs[rr * st..][..row_len].copy_from_slice(&x[rr * row_len..][..row_len]);
                }
                let mut ds = vec![0f32; rows * row_len];
                simd::with_isa(isa, || {
                    rotate::rotate_rows_f16(n, row_len, rows, &xs, st, &mut ds, row_len).unwrap()
                })
                .unwrap();
                assert!(
                    first_bit_diff(&ds, &ours).is_none(),
                    "f16 strided {isa:?} n={n}"
                );
            }
        }
    }
    eprintln!("f16: {relaxed} chunks with several NaN sources compared NaN-for-NaN, all others bit-identical");
}

/// Extra adversarial rows for the rotation, on top of `diff::adversarial_rows`.
fn extra_rows(len: usize) -> Vec<(String, Vec<f32>)> {
    let mut v = Vec::new();
    v.push((
        "huge outlier 1e30".to_string(),
        (0..len)
            .map(|i| if i == len / 3 { 1e30 } else { 1e-3 * i as f32 })
            .collect(),
    ));
    v.push((
        "outlier near overflow".to_string(),
        (0..len)
            .map(|i| if i % 7 == 0 { 3e38 } else { 1.0 })
            .collect(),
    ));
    v.push((
        "all subnormal".to_string(),
        (0..len)
            .map(|i| f32::from_bits(1 + (i as u32 % 0x7f_ffff)))
            .collect(),
    ));
    v.push((
        "max subnormal".to_string(),
        vec![f32::from_bits(0x007f_ffff); len],
    ));
    v.push((
        "min positive subnormal".to_string(),
        vec![f32::from_bits(1); len],
    ));
    v.push((
        "one nan".to_string(),
        (0..len)
            .map(|i| if i == 0 { f32::NAN } else { 0.0 })
            .collect(),
    ));
    v.push((
        "+inf and -inf".to_string(),
        (0..len)
            .map(|i| {
                if i % 2 == 0 {
                    f32::INFINITY
                } else {
                    f32::NEG_INFINITY
                }
            })
            .collect(),
    ));
    v.push((
        "signed zeros".to_string(),
        (0..len)
            .map(|i| if i % 3 == 0 { -0.0 } else { 0.0 })
            .collect(),
    ));
    v.push((
        "two nan payloads".to_string(),
        (0..len)
            .map(|i| {
                if i % 5 == 1 {
                    f32::from_bits(0x7fc0_1234)
                } else if i % 7 == 2 {
                    f32::from_bits(0xffc5_4321)
                } else {
                    i as f32
                }
            })
            .collect(),
    ));
    v.push((
        "nan payloads and inf".to_string(),
        (0..len)
            .map(|i| {
                if i % 6 == 1 {
                    f32::from_bits(0x7fd0_0001)
                } else if i % 4 == 2 {
                    f32::INFINITY
                } else if i % 4 == 3 {
                    f32::NEG_INFINITY
                } else {
                    1.0
                }
            })
            .collect(),
    ));
    v.push((
        "basis vector".to_string(),
        (0..len)
            .map(|i| if i == len - 1 { 1.0 } else { 0.0 })
            .collect(),
    ));
    v
}

#[test]
fn adversarial_rows_bit_exact() {
    let mut total = 0;
    let mut relaxed = 0;
    for n in NS {
        let len = n.max(32);
        let mut rows = diff::adversarial(len);
        rows.extend(extra_rows(len));
        let x: Vec<f32> = rows.iter().flat_map(|(_, v)| v.iter().copied()).collect();
        let up = upstream(n, len, rows.len(), &x);
        for isa in simd::available() {
            let ours = simd::with_isa(isa, || {
                let mut o = vec![0f32; x.len()];
                rotate::rotate(n, &x, &mut o).unwrap();
                let mut ip = x.clone();
                rotate::rotate_inplace(n, &mut ip).unwrap();
                assert!(
                    first_bit_diff(&o, &ip).is_none(),
                    "in place != out of place"
                );
                o
            })
            .unwrap();
            for (ri, (name, row)) in rows.iter().enumerate() {
                let a = &ours[ri * len..][..len];
                let b = &up[ri * len..][..len];
                if let Some(m) = mismatch(n, row, a, b, &mut relaxed) {
                    panic!("adversarial '{name}' {isa:?} n={n}: {m}");
                }
            }
            total += rows.len();
        }
        let w = worst_rel_to_exact(n, &x, &up);
        // (rows whose exact result leaves the f32 range are skipped there)
        assert!(w <= 1e-6, "n={n}: adversarial finite rows {w:e} from exact");
    }
    eprintln!("{total} adversarial rows checked; {relaxed} chunks with several NaN sources compared NaN-for-NaN, all others bit-identical");
}

#[test]
fn involution_and_dense_products() {
    let seed = diff::seed("rotate_diff involution");
    let mut r = diff::rng(seed);
    for n in NS {
        let rows = 16;
        let x: Vec<f32> = (0..rows)
            .flat_map(|_| diff::random_row(&mut r, n))
            .collect();
        // the f64 fast transform is the dense product with the matrix llama.cpp builds
        let h = uprot::hadamard_matrix(n);
        let exact = uprot::dense_f64(n, &x);
        let fast = uprot::fwht_f64(n, &x);
        for c in 0..rows {
            for i in 0..n {
                let mut acc = 0f64;
                for k in 0..n {
                    acc += h[i * n + k] as f64 * x[c * n + k] as f64;
                }
                let e = exact[c * n + i];
                let tol = 1e-6 * e.abs().max(1e-30)
                    + 1e-12 * x[c * n..][..n].iter().map(|v| v.abs() as f64).sum::<f64>();
                assert!(
                    (acc - e).abs() <= tol,
                    "ggml_gen_hadamard matrix vs (-1)^popcount(i&j): n={n}"
                );
                assert!(
                    (fast[c * n + i] - e).abs() <= 1e-12 * e.abs().max(1e-300) + 1e-300,
                    "fwht_f64 vs dense_f64 n={n}"
                );
            }
        }
        // ggml's dense (unhinted) MUL_MAT with that matrix agrees closely with ours
        let dense_up = uprot::dense_mul_mat(n, &x);
        for isa in simd::available() {
            simd::with_isa(isa, || {
                let mut y = vec![0f32; x.len()];
                rotate::rotate(n, &x, &mut y).unwrap();
                for c in 0..rows {
                    let xc = &x[c * n..][..n];
                    let norm = xc.iter().map(|v| (*v as f64).powi(2)).sum::<f64>().sqrt();
                    for i in 0..n {
                        let d = (y[c * n + i] as f64 - dense_up[c * n + i] as f64).abs();
                        assert!(
                            d <= 1e-5 * norm,
                            "n={n} {isa:?}: ours vs ggml dense MUL_MAT {d:e} (norm {norm:e})"
                        );
                    }
                }
                // twice = identity (H is symmetric and orthonormal)
                let mut z = y.clone();
                rotate::rotate_inplace(n, &mut z).unwrap();
                for c in 0..rows {
                    let xc = &x[c * n..][..n];
                    let norm = xc.iter().map(|v| (*v as f64).powi(2)).sum::<f64>().sqrt();
                    for i in 0..n {
                        let d = (z[c * n + i] as f64 - xc[i] as f64).abs();
                        assert!(
                            d <= 1e-6 * norm,
                            "n={n} {isa:?}: R(R(x)) != x: {d:e} (norm {norm:e})"
                        );
                    }
                }
            })
            .unwrap();
        }
    }
}

#[test]
fn bad_input_is_an_error() {
    let x = vec![1f32; 96];
    let mut y = vec![0f32; 96];
    for n in [0usize, 3, 48, 96, rotate::MAX_N * 2] {
        assert!(
            matches!(rotate::rotate(n, &x, &mut y), Err(Error::BadParam(_))),
            "n={n}"
        );
        assert!(rotate::rotate_inplace(n, &mut y).is_err());
        assert!(rotate::rotate_f16(n, &[0u16; 96], &mut y).is_err());
    }
    assert!(matches!(
        rotate::rotate(64, &x, &mut y),
        Err(Error::BadShape(_))
    )); // 96 % 64
    assert!(matches!(
        rotate::rotate(32, &x, &mut y[..64]),
        Err(Error::BadShape(_))
    ));
    assert!(rotate::rotate_inplace(64, &mut y).is_err());
    assert!(rotate::rotate_f16(64, &[0u16; 96], &mut y).is_err());
    assert!(rotate::rotate_f16(32, &[0u16; 64], &mut y).is_err());
    // rows: bad row length, stride smaller than the row, buffers too small
    assert!(rotate::rotate_rows(32, 48, 2, &x, 48, &mut y, 48).is_err());
    assert!(rotate::rotate_rows(32, 32, 2, &x, 16, &mut y, 32).is_err());
    assert!(matches!(
        rotate::rotate_rows(32, 32, 3, &x, 40, &mut y, 32),
        Err(Error::BufferTooSmall { .. })
    ));
    assert!(matches!(
        rotate::rotate_rows(32, 32, 3, &x, 32, &mut y, 40),
        Err(Error::BufferTooSmall { .. })
    ));
    assert!(rotate::rotate_rows(32, 32, usize::MAX, &x, 32, &mut y, 32).is_err());
    assert!(rotate::rotate_rows_f16(32, 32, 4, &[0u16; 96], 32, &mut y, 32).is_err());
    // empty input is fine
    rotate::rotate(64, &[], &mut []).unwrap();
    rotate::rotate_rows(64, 64, 0, &[], 64, &mut [], 64).unwrap();
}

/// Upstream's decision, encoded from the pinned source (src/llama-kv-cache.cpp: the
/// `llama_kv_cache` constructor's `attn_rot_k` / `attn_rot_v`, `build_input_k_rot`,
/// `build_input_v_rot`). The reference build holds only ggml, not libllama, so this table is
/// written from reading that code, independently of `upstream_plan`'s implementation.
#[test]
fn plan_follows_upstream_rule_table() {
    use GgmlType::*;
    // (head_k, head_v, type_k, type_v) -> (k, v)
    type PlanRow = (
        usize,
        usize,
        GgmlType,
        GgmlType,
        Option<usize>,
        Option<usize>,
    );
    let table: &[PlanRow] = &[
        (64, 64, Q4_0, Q4_0, Some(64), Some(64)),
        (128, 128, Q8_0, Q8_0, Some(128), Some(64)),
        (256, 256, Q4_1, Q5_0, Some(256), Some(64)),
        (512, 512, IQ4_NL, Q5_1, Some(512), Some(64)),
        (1024, 1024, Q8_0, Q8_0, Some(1024), Some(64)), // no cap on n_rot_k
        (192, 128, Q8_0, Q8_0, Some(64), Some(64)),     // 192 = 64*3
        (320, 320, Q4_0, Q4_0, Some(64), Some(64)),
        (384, 384, Q4_0, Q4_0, Some(128), Some(64)),
        (576, 512, Q8_0, Q8_0, Some(64), Some(64)),
        (96, 96, Q4_0, Q4_0, None, None), // not a multiple of 64
        (80, 128, Q4_0, Q4_0, None, Some(64)),
        (128, 80, Q4_0, Q4_0, Some(128), None),
        (32, 32, Q8_0, Q8_0, None, None),
        (0, 0, Q8_0, Q8_0, None, None),
        (128, 128, F16, F16, None, None), // unquantized caches never rotate
        (128, 128, BF16, BF16, None, None),
        (128, 128, F32, F32, None, None),
        (128, 128, F16, Q8_0, None, Some(64)),
        (128, 128, Q4_0, F16, Some(128), None),
        (128, 128, Q8_1, Q8_1, Some(128), Some(64)),
    ];
    for &(hk, hv, tk, tv, k, v) in table {
        assert_eq!(
            rotate::upstream_plan(hk, hv, tk, tv),
            RotationPlan { k, v },
            "head_k {hk} head_v {hv} {tk}/{tv}"
        );
        assert_eq!(
            rotate::upstream_plan_with(hk, hv, tk, tv, false),
            RotationPlan { k, v }
        );
        assert_eq!(
            rotate::upstream_plan_with(hk, hv, tk, tv, true),
            RotationPlan::NONE
        );
    }
    for (h, nrot) in [
        (0usize, 0usize),
        (32, 64),
        (96, 64),
        (1 << 63, 1 << 63),
        (64, 64),
        (128, 128),
        (192, 64),
        (256, 256),
        (448, 64),
        (640, 128),
        (2048, 2048),
    ] {
        assert_eq!(rotate::upstream_n_rot_k(h), nrot, "head {h}");
    }
    // per-layer head sizes: differing sizes make n_embd_head_*_all = -1 (no rotation)
    assert_eq!(
        rotate::upstream_plan_layers(&[128; 4], Some(&[128; 4]), Q4_0, Q4_0),
        RotationPlan {
            k: Some(128),
            v: Some(64)
        }
    );
    assert_eq!(
        rotate::upstream_plan_layers(&[128, 256], Some(&[128, 128]), Q4_0, Q4_0),
        RotationPlan {
            k: None,
            v: Some(64)
        }
    );
    assert_eq!(
        rotate::upstream_plan_layers(&[576; 2], None, Q8_0, Q8_0),
        RotationPlan {
            k: Some(64),
            v: None
        }
    );
    assert_eq!(
        rotate::upstream_plan_layers(&[], Some(&[]), Q8_0, Q8_0),
        RotationPlan::NONE
    );
    // LLAMA_ATTN_ROT_DISABLE: set and atoi(value) != 0
    for (val, dis) in [
        (None, false),
        (Some("1"), true),
        (Some("0"), false),
        (Some(""), false),
        (Some("yes"), false),
        (Some(" 2"), true),
        (Some("-1"), true),
        (Some("00"), false),
        (Some("1abc"), true),
        (Some("+0"), false),
    ] {
        assert_eq!(rotate::attn_rot_disable_value(val), dis, "{val:?}");
    }
}
