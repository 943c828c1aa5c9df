//! The quality mode's cache writes: what a row costs in each write mode, one thread.
//!
//! SmolLM2's K/V row shape (3 KV heads × 64 values, rotated), Gaussian values with a few
//! outlier channels, and a synthetic score metric with one strong query direction (as real
//! queries have). Per format: the exact write (`quantize_row`, bit-identical to ggml's
//! `from_float`), the squared-error search (`quantize_row_best`, the quality mode's V rows)
//! and the score-error search (`quantize_row_best_metric`, its K rows with a policy).
//!
//! After criterion's groups a table gives µs per row and the write cost of one decoded
//! token of SmolLM2 (30 layers, one K and one V row each) in the quality mode with a policy;
//! compare it with the decode time per token (`attnrot bench`) for the mode's overhead.
//! `ATTNROT_BENCH_FORMATS=q4_0,q8_0` restricts the formats.
use attnrot::quant::best::{quantize_row_best, quantize_row_best_metric, HeadMetric};
use attnrot::quant::format;
use attnrot::GgmlType;
use criterion::Criterion;
use rand::{Rng, SeedableRng};
use std::hint::black_box;
use std::time::Instant;

const HEADS: usize = 3;
const D: usize = 64;
const ROWS: usize = 256;
const LAYERS: f64 = 30.0;

fn types() -> Vec<GgmlType> {
    let all = GgmlType::KV_QUANTIZED;
    match std::env::var("ATTNROT_BENCH_FORMATS") {
        Ok(s) => all
            .into_iter()
            .filter(|t| s.split(',').any(|n| n.trim() == t.name()))
            .collect(),
        Err(_) => all.to_vec(),
    }
}

fn data() -> (Vec<f32>, Vec<HeadMetric>) {
    let seed = 20261204;
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
    let mut gauss = move || {
        let (u, v): (f64, f64) = (rng.random::<f64>().max(1e-300), rng.random());
        ((-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()) as f32
    };
    let x: Vec<f32> = (0..ROWS * HEADS * D)
        .map(|i| gauss() * if i % 61 == 0 { 8.0 } else { 1.0 })
        .collect();
    let mu: Vec<f32> = (0..D).map(|_| gauss()).collect();
    let n2: f32 = mu.iter().map(|v| v * v).sum();
    let h: Vec<f32> = (0..D * D)
        .map(|k| f32::from(k / D == k % D) + 40.0 * mu[k / D] * mu[k % D] / n2)
        .collect();
    let m = HeadMetric::new(&h, D, 0.01).expect("metric");
    (x, vec![m; HEADS])
}

type Write<'a> = Box<dyn Fn(&[f32], &mut [u8]) + 'a>;

fn modes<'a>(ty: GgmlType, heads: &'a [HeadMetric]) -> Vec<(&'static str, Write<'a>)> {
    let fmt = format(ty).expect("format");
    vec![
        (
            "exact",
            Box::new(move |x, y| fmt.quantize_row(x, y).expect("quantize")),
        ),
        (
            "search",
            Box::new(move |x, y| quantize_row_best(ty, x, None, y).expect("search")),
        ),
        (
            "metric",
            Box::new(move |x, y| quantize_row_best_metric(ty, x, heads, y).expect("metric")),
        ),
    ]
}

fn main() {
    let (x, heads) = data();
    let w = HEADS * D;
    let mut c = Criterion::default().configure_from_args();
    for ty in types() {
        let mut y = vec![0u8; ty.row_bytes(w).expect("row")];
        let mut g = c.benchmark_group(format!("write/{}", ty.name()));
        for (name, f) in modes(ty, &heads) {
            g.bench_function(name, |b| {
                b.iter(|| {
                    for xr in x.chunks_exact(w) {
                        f(black_box(xr), &mut y);
                    }
                })
            });
        }
        g.finish();
    }
    println!("\nus per row of {HEADS}x{D} (min of 9 passes over {ROWS} rows), and the quality mode's write cost per SmolLM2 token ({LAYERS} layers: K metric + V search)");
    println!(
        "{:8} {:>8} {:>8} {:>8} {:>12}",
        "type", "exact", "search", "metric", "ms/token"
    );
    for ty in types() {
        let mut y = vec![0u8; ty.row_bytes(w).expect("row")];
        let us: Vec<f64> = modes(ty, &heads)
            .iter()
            .map(|(_, f)| {
                (0..9)
                    .map(|_| {
                        let t = Instant::now();
                        for xr in x.chunks_exact(w) {
                            f(black_box(xr), &mut y);
                        }
                        t.elapsed().as_secs_f64() * 1e6 / ROWS as f64
                    })
                    .fold(f64::INFINITY, f64::min)
            })
            .collect();
        println!(
            "{:8} {:>8.2} {:>8.2} {:>8.2} {:>12.3}",
            ty.name(),
            us[0],
            us[1],
            us[2],
            LAYERS * (us[1] + us[2]) / 1e3
        );
    }
}
