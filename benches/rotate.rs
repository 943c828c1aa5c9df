//! Walsh–Hadamard rotation: ours vs upstream, same data, same run, one thread each.
//!
//! Upstream = the pinned ggml's CPU backend computing llama.cpp's hinted MUL_MAT
//! (`GGML_HINT_SRC0_IS_HADAMARD` -> `ggml_compute_forward_fwht`), graph built once and
//! computed repeatedly (`ggml_backend_graph_compute`, 1 thread), so graph building is not
//! timed; each compute still pays ggml's per-call planning (`ggml_graph_plan` + a disposable
//! one-thread threadpool), a few µs. Ours = `attnrot::rotate::rotate` (out of place, like the
//! graph) with the ISA the dispatcher picks. 4096 rows of n = 64, 128, 256 (f32), plus f16
//! input and n = 1024 for reference. A ratio table (upstream time / ours) is printed at the
//! end from a separate timing loop (median of several repetitions).
use attnrot::rotate;
use attnrot_ref::rot::{HadamardGraph, Src};
use criterion::{criterion_group, BenchmarkId, Criterion, Throughput};
use std::hint::black_box;
use std::time::{Duration, Instant};

const ROWS: usize = 4096;

fn data(n: usize) -> Vec<f32> {
    let mut r = attnrot_ref::diff::rng(0x5eed_0000 + n as u64);
    (0..ROWS)
        .flat_map(|_| attnrot_ref::diff::random_row(&mut r, n))
        .collect()
}

fn cases() -> Vec<(usize, Src)> {
    vec![
        (64, Src::F32),
        (128, Src::F32),
        (256, Src::F32),
        (1024, Src::F32),
        (128, Src::F16),
    ]
}

fn label(n: usize, src: Src) -> String {
    format!("n={n} {}", if src == Src::F32 { "f32" } else { "f16" })
}

struct Case {
    n: usize,
    src: Src,
    x: Vec<f32>,
    xh: Vec<u16>,
    out: Vec<f32>,
    graph: HadamardGraph,
}

impl Case {
    fn new(n: usize, src: Src) -> Case {
        let x = data(n);
        let xh: Vec<u16> = x
            .iter()
            .map(|v| attnrot::quant::fp16::f32_to_f16(*v))
            .collect();
        let mut graph = HadamardGraph::new(n, n, ROWS, src, true, 1);
        match src {
            Src::F32 => graph.set_input(&x),
            Src::F16 => graph.set_input_f16(&xh),
        }
        let mut c = Case {
            n,
            src,
            out: vec![0f32; x.len()],
            x,
            xh,
            graph,
        };
        // same result, checked once here too (the test suite does it thoroughly)
        c.ours();
        c.graph.compute();
        assert!(c
            .out
            .iter()
            .zip(c.graph.output())
            .all(|(a, b)| a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())));
        c
    }
    fn ours(&mut self) {
        match self.src {
            Src::F32 => rotate::rotate(self.n, black_box(&self.x), &mut self.out).unwrap(),
            Src::F16 => rotate::rotate_f16(self.n, black_box(&self.xh), &mut self.out).unwrap(),
        }
        black_box(&self.out);
    }
    fn upstream(&mut self) {
        self.graph.compute();
        black_box(self.graph.output());
    }
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("rotate_4096_rows");
    g.warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
        .sample_size(20);
    for (n, src) in cases() {
        let mut case = Case::new(n, src);
        g.throughput(Throughput::Elements((n * ROWS) as u64));
        let l = label(n, src);
        g.bench_function(BenchmarkId::new("attnrot", &l), |b| b.iter(|| case.ours()));
        g.bench_function(BenchmarkId::new("upstream", &l), |b| {
            b.iter(|| case.upstream())
        });
    }
    g.finish();
}

fn median_time(reps: usize, iters: usize, mut f: impl FnMut()) -> f64 {
    let mut v: Vec<f64> = (0..reps)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..iters {
                f();
            }
            t.elapsed().as_secs_f64() / iters as f64
        })
        .collect();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn ratio_table() {
    println!();
    println!("rotate, {ROWS} rows, 1 thread each, ISA {} (ours) vs ggml CPU backend (reference flags: {})", attnrot::simd::isa().name(), attnrot_ref::ARCH_FLAGS);
    println!(
        "{:<14} {:>12} {:>12} {:>10} {:>14}",
        "case", "ours µs", "upstream µs", "speedup", "ours GB/s in"
    );
    for (n, src) in cases() {
        let mut case = Case::new(n, src);
        // interleave ours and upstream repetitions so drift from machine load hits both
        let mut to = Vec::new();
        let mut tu = Vec::new();
        for _ in 0..9 {
            to.push(median_time(1, 20, || case.ours()));
            tu.push(median_time(1, 20, || case.upstream()));
        }
        to.sort_by(|a, b| a.partial_cmp(b).unwrap());
        tu.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let (o, u) = (to[to.len() / 2], tu[tu.len() / 2]);
        let bytes = (n * ROWS * if src == Src::F32 { 4 } else { 2 }) as f64;
        println!(
            "{:<14} {:>12.1} {:>12.1} {:>9.2}x {:>14.2}",
            label(n, src),
            o * 1e6,
            u * 1e6,
            u / o,
            bytes / o / 1e9
        );
    }
}

criterion_group!(benches, bench);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    ratio_table();
}
