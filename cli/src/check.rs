//! `attnrot check`: fresh random data (and adversarial rows) through every kernel, ours vs
//! the pinned upstream compiled into this binary; one line per format and kernel with
//! bit-exact yes/no, worst error and speed ratio (upstream time / our time). Each speed is
//! timed on the path the backend takes: quantize as SET_ROWS writes a prefill batch (see
//! `check_format`), dequantize and `vec_dot` row by row.
use anyhow::{bail, Result};
use attnrot::ggml::sys;
use attnrot::quant::format;
use attnrot::simd;
use attnrot::GgmlType;
use attnrot_ref::diff;
use std::time::Instant;

#[derive(clap::Args)]
pub struct Args {
    /// Random seed (default: from the clock; printed). Also read from ATTNROT_SEED.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Random rows of `--row` floats per format.
    #[arg(long, default_value_t = 4096)]
    pub rows: usize,
    /// Row length (multiple of 32).
    #[arg(long, default_value_t = 128)]
    pub row: usize,
    /// Formats to check (default: the eight KV formats).
    #[arg(long, value_delimiter = ',')]
    pub types: Vec<String>,
}

/// One output line.
struct Line {
    what: String,
    kernel: &'static str,
    exact: Option<bool>,
    detail: String,
    ratio: Option<f64>,
}

fn print(l: &Line) {
    let ex = match l.exact {
        Some(true) => "yes",
        Some(false) => "NO",
        None => "n/a",
    };
    let r = l
        .ratio
        .map(|r| format!("{r:5.2}x"))
        .unwrap_or_else(|| "   - ".into());
    println!(
        "{:<8} {:<14} {:<9} {:<40} {}",
        l.what, l.kernel, ex, l.detail, r
    );
}

/// Timed runs per side of each speed ratio (even: each side gets each buffer as often).
const REPS: usize = 12;

/// Medians of `reps` timings each of `ours` and `up` (seconds), run alternately so that a
/// slow spell of a shared machine lands on both sides rather than on one. Each call gets one
/// of the two `bufs` (its output), and the sides swap them every run: where a buffer sits
/// relative to the input (4 KiB aliasing, pages) moved a streaming kernel's time by ~6 %,
/// which without the swap would count for one side only.
fn time_pair<B>(
    reps: usize,
    bufs: &mut [B; 2],
    mut ours: impl FnMut(&mut B),
    mut up: impl FnMut(&mut B),
) -> (f64, f64) {
    let [b0, b1] = bufs;
    ours(b0);
    up(b1);
    let once = |f: &mut dyn FnMut(&mut B), b: &mut B| {
        let t = Instant::now();
        f(b);
        t.elapsed().as_secs_f64()
    };
    let (mut a, mut b) = (Vec::with_capacity(reps), Vec::with_capacity(reps));
    for r in 0..reps {
        let (mine, theirs) = if r.is_multiple_of(2) {
            (&mut *b0, &mut *b1)
        } else {
            (&mut *b1, &mut *b0)
        };
        a.push(once(&mut ours, mine));
        b.push(once(&mut up, theirs));
    }
    // the mean of the middle two: with an even count, one run of each buffer placement
    // when the times fall in two groups
    let median = |mut v: Vec<f64>| {
        v.sort_by(|x, y| x.total_cmp(y));
        let m = v.len() / 2;
        if v.len().is_multiple_of(2) {
            (v[m - 1] + v[m]) / 2.0
        } else {
            v[m]
        }
    };
    (median(a), median(b))
}

fn bits_eq(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

fn check_format(
    ty: GgmlType,
    rows: &[(String, Vec<f32>)],
    bench: &[f32],
    row: usize,
) -> Result<Vec<Line>> {
    let ops = format(ty)?;
    let dty = ty.vec_dot_type();
    let dops = format(dty)?;
    let rb = ty.row_bytes(row)?;
    let n_bench = bench.len() / row;
    let (traits, cpu) = unsafe {
        (
            &*sys::ggml_get_type_traits(ty as sys::ggml_type),
            &*sys::ggml_get_type_traits_cpu(ty as sys::ggml_type),
        )
    };
    let up_from = cpu.from_float.unwrap();
    let up_to = traits.to_float.unwrap();
    let up_dot = cpu.vec_dot.unwrap();

    let mut lines = Vec::new();
    // --- quantize (CPU from_float) and quantize_ref
    let (mut q_bad, mut qr_bad, mut dq_bad, mut dot_bad) = (0usize, 0usize, 0usize, 0usize);
    let mut dq_worst = 0f64;
    let mut dot_worst = 0f64;
    for (_, x) in rows {
        let n = x.len();
        let mut ours = vec![0u8; ty.row_bytes(n)?];
        ops.quantize_row(x, &mut ours)?;
        let up = attnrot_ref::quantize_row_cpu(ty, x);
        // bytes upstream leaves uninitialised (iq4_nl, see diff::mask_undefined) are not compared
        q_bad +=
            (diff::mask_undefined(ty, x, ours) != diff::mask_undefined(ty, x, up.clone())) as usize;
        let mut ours_r = vec![0u8; up.len()];
        ops.quantize_row_ref(x, &mut ours_r)?;
        qr_bad += (diff::mask_undefined(ty, x, ours_r)
            != diff::mask_undefined(ty, x, attnrot_ref::quantize_row_ref(ty, x)))
            as usize;
        let mut d = vec![0f32; n];
        ops.dequantize_row(&up, &mut d)?;
        let ud = attnrot_ref::dequantize_row(ty, &up, n);
        if !bits_eq(&d, &ud) {
            dq_bad += 1;
            for (a, b) in d.iter().zip(&ud) {
                let e = (*a as f64 - *b as f64).abs();
                if e.is_finite() {
                    dq_worst = dq_worst.max(e);
                }
            }
        }
        let xf: Vec<f32> = x
            .iter()
            .map(|v| if v.is_finite() { *v } else { 0.5 })
            .collect();
        let yf: Vec<f32> = xf.iter().rev().copied().collect();
        let xq = attnrot_ref::quantize_row_cpu(ty, &xf);
        let yq = attnrot_ref::quantize_row_cpu(dty, &yf);
        let a = ops.vec_dot(n, &xq, &yq)?;
        let b = attnrot_ref::vec_dot(ty, n, &xq, &yq);
        if a.to_bits() != b.to_bits() {
            dot_bad += 1;
            dot_worst = dot_worst.max((a as f64 - b as f64).abs() / (b as f64).abs().max(1.0));
        }
    }
    let nrows = rows.len();

    // --- speed on the bench block (n_bench rows of `row`)
    // (both sides walk the rows with `chunks_exact`: every row has `row` elements)
    let mut qbufs = [vec![0u8; rb * n_bench], vec![0u8; rb * n_bench]];
    // Quantize is timed as each backend's SET_ROWS writes n_bench packed rows to consecutive
    // cache slots (a prefill batch): ours one `from_float` call per run of such rows
    // (`ggml::ops::set_rows`, where `FormatOps::rows_batch` allows it), upstream's one call
    // per row (`ggml_compute_forward_set_rows_f32`).
    let per_call = if ops.rows_batch() { n_bench } else { 1 };
    let (t_ours_q, t_up_q) = time_pair(
        REPS,
        &mut qbufs,
        |qbuf| {
            for (x, y) in bench
                .chunks_exact(row * per_call)
                .zip(qbuf.chunks_exact_mut(rb * per_call))
            {
                ops.quantize_row(x, y).unwrap();
            }
        },
        |qbuf| {
            for (x, y) in bench.chunks_exact(row).zip(qbuf.chunks_exact_mut(rb)) {
                unsafe { up_from(x.as_ptr(), y.as_mut_ptr().cast(), row as i64) };
            }
        },
    );
    // the timed calls wrote the same rows, whole runs on our side (the last run of each
    // side filled one of the buffers): the same bytes?
    let [qbuf, qbuf2] = &qbufs;
    let batch_bad = bench
        .chunks_exact(row)
        .zip(qbuf.chunks_exact(rb).zip(qbuf2.chunks_exact(rb)))
        .filter(|(x, (a, b))| {
            diff::mask_undefined(ty, x, a.to_vec()) != diff::mask_undefined(ty, x, b.to_vec())
        })
        .count();
    let mut fbufs = [vec![0f32; bench.len()], vec![0f32; bench.len()]];
    let (t_ours_dq, t_up_dq) = time_pair(
        REPS,
        &mut fbufs,
        |fbuf| {
            for (x, y) in qbuf.chunks_exact(rb).zip(fbuf.chunks_exact_mut(row)) {
                ops.dequantize_row(x, y).unwrap();
            }
        },
        |fbuf| {
            for (x, y) in qbuf.chunks_exact(rb).zip(fbuf.chunks_exact_mut(row)) {
                unsafe { up_to(x.as_ptr().cast(), y.as_mut_ptr(), row as i64) };
            }
        },
    );
    let drb = dty.row_bytes(row)?;
    let mut ybuf = vec![0u8; drb * n_bench];
    for (x, y) in bench.chunks(row).zip(ybuf.chunks_mut(drb)) {
        dops.quantize_row(x, y)?;
    }
    let (mut sink, mut sink_up) = (0f32, 0f32);
    let (t_ours_dot, t_up_dot) = time_pair(
        REPS,
        &mut [(), ()],
        |_| {
            for (x, y) in qbuf.chunks_exact(rb).zip(ybuf.chunks_exact(drb)) {
                sink += ops.vec_dot(row, x, y).unwrap();
            }
        },
        |_| {
            for (x, y) in qbuf.chunks_exact(rb).zip(ybuf.chunks_exact(drb)) {
                let mut s = 0f32;
                unsafe {
                    up_dot(
                        row as i32,
                        &mut s,
                        0,
                        x.as_ptr().cast(),
                        0,
                        y.as_ptr().cast(),
                        0,
                        1,
                    )
                };
                sink_up += s;
            }
        },
    );
    std::hint::black_box((sink, sink_up));

    let name = ty.name().to_string();
    lines.push(Line {
        what: name.clone(),
        kernel: "quantize",
        exact: Some(q_bad == 0 && batch_bad == 0),
        detail: if batch_bad == 0 {
            format!("{q_bad}/{nrows} rows differ from CPU from_float")
        } else {
            format!("{q_bad}/{nrows} rows, {batch_bad}/{n_bench} of a batch differ")
        },
        ratio: Some(t_up_q / t_ours_q),
    });
    lines.push(Line {
        what: name.clone(),
        kernel: "quantize_ref",
        exact: Some(qr_bad == 0),
        detail: format!("{qr_bad}/{nrows} rows differ from _ref"),
        ratio: None,
    });
    lines.push(Line {
        what: name.clone(),
        kernel: "dequantize",
        exact: Some(dq_bad == 0),
        detail: format!("{dq_bad}/{nrows} rows differ, worst abs {dq_worst:.1e}"),
        ratio: Some(t_up_dq / t_ours_dq),
    });
    lines.push(Line {
        what: name,
        kernel: format_dot_name(dty),
        exact: Some(dot_bad == 0),
        detail: format!("{dot_bad}/{nrows} differ, worst rel {dot_worst:.1e}"),
        ratio: Some(t_up_dot / t_ours_dot),
    });
    Ok(lines)
}

/// Rotation lines: for every power of two n in 16..=1024, ours vs upstream's hinted MUL_MAT
/// graph on the CPU backend (bit-exact), worst relative error vs the exact (f64) transform,
/// speed ratio on 4096 rows x 128 (one thread each; upstream's graph is built once).
fn check_rotation(seed: u64) -> Result<Vec<Line>> {
    use attnrot_ref::rot::{fwht_f64, HadamardGraph, Src};
    let mut lines = Vec::new();
    let mut n = 16;
    while n <= 1024 {
        let row_len = n.max(128);
        let rows = 4096 * 128 / row_len;
        let mut x: Vec<f32> = diff::random_rows(seed ^ n as u64, rows, row_len)
            .into_iter()
            .flat_map(|(_, r)| r)
            .collect();
        // plus the adversarial rows that keep values finite and NaN-free
        for (_, r) in diff::adversarial(row_len) {
            if r.iter().all(|v| v.is_finite()) {
                x.extend(r);
            }
        }
        let total_rows = x.len() / row_len;
        let mut g = HadamardGraph::new(n, row_len, total_rows, Src::F32, true, 1);
        g.set_input(&x);
        g.compute();
        let up = g.output().to_vec();
        let mut ours = vec![0f32; x.len()];
        attnrot::rotate::rotate(n, &x, &mut ours)?;
        let bad = ours
            .chunks(n)
            .zip(up.chunks(n))
            .filter(|(a, b)| !bits_eq(a, b))
            .count();
        let exact = fwht_f64(n, &x);
        let mut worst = 0f64;
        for (o, e) in ours.chunks(n).zip(exact.chunks(n)) {
            // chunks whose exact result leaves f32's range overflow in both (bit-exact) kernels
            let norm = e.iter().map(|v| v * v).sum::<f64>().sqrt();
            // and chunks of (near-)subnormals, where f32 itself has no relative precision
            if norm > 1e-30 && norm.is_finite() && e.iter().all(|v| v.abs() <= f32::MAX as f64) {
                let err = o
                    .iter()
                    .zip(e)
                    .map(|(a, b)| (*a as f64 - b).powi(2))
                    .sum::<f64>()
                    .sqrt();
                worst = worst.max(err / norm);
            }
        }
        let (t_ours, t_up) = time_pair(
            REPS,
            // (upstream writes its graph's own output tensor: nothing to swap)
            &mut [(), ()],
            |_| attnrot::rotate::rotate(n, &x, &mut ours).unwrap(),
            |_| g.compute(),
        );
        lines.push(Line {
            what: format!("wht{n}"),
            kernel: "rotate",
            exact: Some(bad == 0),
            detail: format!("{bad}/{} chunks differ, worst rel {worst:.1e}", x.len() / n),
            ratio: Some(t_up / t_ours),
        });
        n *= 2;
    }
    Ok(lines)
}

fn format_dot_name(dty: GgmlType) -> &'static str {
    match dty {
        GgmlType::Q8_0 => "vec_dot·q8_0",
        GgmlType::Q8_1 => "vec_dot·q8_1",
        GgmlType::F16 => "vec_dot·f16",
        GgmlType::BF16 => "vec_dot·bf16",
        _ => "vec_dot",
    }
}

pub fn run(a: Args) -> Result<()> {
    if a.row == 0 || !a.row.is_multiple_of(32) {
        bail!("--row must be a positive multiple of 32 (got {})", a.row);
    }
    let types: Vec<GgmlType> = if a.types.is_empty() {
        GgmlType::KV.to_vec()
    } else {
        a.types
            .iter()
            .map(|s| {
                GgmlType::from_name(s).filter(|t| GgmlType::KV.contains(t)).ok_or_else(|| {
                    anyhow::anyhow!("unknown KV type '{s}' (one of f16,bf16,q8_0,q4_0,q4_1,q5_0,q5_1,iq4_nl)")
                })
            })
            .collect::<Result<_>>()?
    };
    if let Some(s) = a.seed {
        std::env::set_var("ATTNROT_SEED", s.to_string());
    }
    attnrot_ref::init();
    let seed = diff::seed("check");
    println!(
        "attnrot {} vs upstream ggml {} ({}), reference built with {}",
        env!("CARGO_PKG_VERSION"),
        attnrot_ref::version(),
        attnrot_ref::commit(),
        attnrot_ref::ARCH_FLAGS
    );
    println!(
        "ours: {} kernels (detected {}); upstream CPU features {:?}; seed {seed}; {} random rows x {} + adversarial rows",
        simd::global().name(),
        simd::detected().name(),
        attnrot_ref::cpu_features(),
        a.rows,
        a.row
    );
    println!();
    println!(
        "{:<8} {:<14} {:<9} {:<40} speed (upstream/ours)",
        "format", "kernel", "bit-exact", "worst error"
    );
    let mut rows = diff::adversarial(a.row);
    rows.extend(diff::random_rows(seed, a.rows, a.row));
    let bench: Vec<f32> = rows
        .iter()
        .skip(rows.len() - a.rows)
        .flat_map(|(_, r)| r.iter().copied())
        .collect();
    let mut all_exact = true;
    for ty in types {
        match check_format(ty, &rows, &bench, a.row) {
            Ok(lines) => {
                for l in &lines {
                    all_exact &= l.exact != Some(false);
                    print(l);
                }
            }
            Err(e) => {
                all_exact = false;
                println!("{:<8} error: {e}", ty.name());
            }
        }
    }
    match check_rotation(seed) {
        Ok(lines) => {
            for l in &lines {
                all_exact &= l.exact != Some(false);
                print(l);
            }
        }
        Err(e) => {
            all_exact = false;
            println!("rotate   error: {e}");
        }
    }
    println!();
    if all_exact {
        println!("all kernels bit-exact with upstream");
        Ok(())
    } else {
        bail!("some kernels are not bit-exact with upstream (see the lines marked NO)")
    }
}
