//! FLASH_ATTN_EXT: ours vs upstream's CPU backend (in-process ggml graph), same inputs, same
//! thread count (`ATTNROT_BENCH_THREADS`, default: all cores), one run.
//!
//! * decode (1 query row) at n_kv 4096 and 32768, (a) head 64, 9 query / 3 KV heads
//!   (SmolLM2-135M) and (b) head 128, 32 / 8 heads; K/V f16, q8_0, q4_0;
//! * prefill 512 queries × 4096 KV (shape (a), causal mask);
//! * a memory-bandwidth probe (streaming read) on 1 thread and on all threads, and each
//!   decode case's effective GB/s of K/V read (every cache row once) on 1 thread and on all
//!   threads, as a share of the probe with the same number of threads — ours and upstream's.
//!
//! Before the criterion groups, a summary pass times each case (median of a few runs) and
//! prints `ours`, `upstream`, the ratio and the bandwidth figures. `ATTNROT_BENCH_SUMMARY_ONLY=1`
//! skips the criterion groups; `ATTNROT_BENCH_FILTER=sub1,sub2` keeps only the cases whose
//! label contains one of the substrings (e.g. `kv=32768`); `ATTNROT_BENCH_CPUTIME=1` times
//! with the process CPU clock (use with `ATTNROT_BENCH_THREADS=1` on a loaded machine: time
//! slices lost to other processes do not count); `ATTNROT_BENCH_OURS_ONLY=1` skips upstream and
//! `ATTNROT_BENCH_NO_PROBE=1` the bandwidth probe (quick runs, profiling).
//! Every case runs with `GGML_PREC_F32`, as llama.cpp's graphs set it (upstream's CPU backend
//! ignores it); `ATTNROT_BENCH_PREC=default` measures `GGML_PREC_DEFAULT` instead.
use attnrot::attn::{self, Params, Tensor};
use attnrot::quant::fp16::f32_to_f16;
use attnrot::GgmlType;
use attnrot_ref::fattn::RefAttn;
use criterion::{criterion_group, Criterion};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::hint::black_box;
use std::time::{Duration, Instant};

fn threads() -> usize {
    std::env::var("ATTNROT_BENCH_THREADS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        })
}

struct Shape {
    name: &'static str,
    d: usize,
    n_head: usize,
    n_head_kv: usize,
}

const SMOL: Shape = Shape {
    name: "h64x9/3",
    d: 64,
    n_head: 9,
    n_head_kv: 3,
};
const BIG: Shape = Shape {
    name: "h128x32/8",
    d: 128,
    n_head: 32,
    n_head_kv: 8,
};

/// Owned inputs laid out like llama.cpp's KV cache views.
struct Case {
    label: String,
    ty: GgmlType,
    d: usize,
    n_q: usize,
    n_head: usize,
    n_head_kv: usize,
    n_kv: usize,
    q: Vec<f32>,
    k: Vec<u8>,
    v: Vec<u8>,
    mask: Option<Vec<u16>>,
    params: Params,
}

impl Case {
    fn new(sh: &Shape, ty: GgmlType, n_kv: usize, n_q: usize) -> Case {
        let mut r = SmallRng::seed_from_u64(42);
        let d = sh.d;
        let rs = ty.row_bytes(d).unwrap();
        let mut q = vec![0f32; d * sh.n_head * n_q];
        q.iter_mut().for_each(|x| *x = r.random_range(-1.0..1.0));
        // quantize one pool of random rows with upstream's from_float and tile it
        let pool: Vec<u8> = (0..256)
            .flat_map(|_| {
                let x: Vec<f32> = (0..d).map(|_| r.random_range(-1.0f32..1.0)).collect();
                attnrot_ref::quantize_row_cpu(ty, &x)
            })
            .collect();
        let n_rows = n_kv * sh.n_head_kv;
        let mut k = Vec::with_capacity(n_rows * rs);
        while k.len() < n_rows * rs {
            let take = (n_rows * rs - k.len()).min(pool.len());
            k.extend_from_slice(&pool[..take]);
        }
        let mut v = k.clone();
        v.rotate_left(rs * 7);
        let mask = (n_q > 1).then(|| {
            let mut m = vec![0u16; n_kv * n_q];
            for i in 0..n_q {
                let pos = n_kv - n_q + i;
                for j in pos + 1..n_kv {
                    m[i * n_kv + j] = f32_to_f16(f32::NEG_INFINITY);
                }
            }
            m
        });
        let label = label(sh, ty, n_kv, n_q);
        Case {
            label,
            ty,
            d,
            n_q,
            n_head: sh.n_head,
            n_head_kv: sh.n_head_kv,
            n_kv,
            q,
            k,
            v,
            mask,
            params: Params {
                precision: bench_precision(),
                ..Params::new(1.0 / (d as f32).sqrt())
            },
        }
    }

    fn tensors(&self) -> (Tensor<'_>, Tensor<'_>, Tensor<'_>, Option<Tensor<'_>>) {
        let (d, h, hk) = (self.d, self.n_head, self.n_head_kv);
        let rs = self.ty.row_bytes(d).unwrap();
        let qb =
            unsafe { std::slice::from_raw_parts(self.q.as_ptr() as *const u8, self.q.len() * 4) };
        // Q [d, n_head, n_q] permuted (0, 2, 1, 3); K/V cache views (get_k + permute)
        let q = Tensor {
            data: qb,
            ty: GgmlType::F32,
            ne: [d, self.n_q, h, 1],
            nb: [4, 4 * d * h, 4 * d, 4 * d * h * self.n_q],
        };
        let kv_nb = [self.ty.block_bytes(), rs * hk, rs, rs * hk * self.n_kv];
        let k = Tensor {
            data: &self.k,
            ty: self.ty,
            ne: [d, self.n_kv, hk, 1],
            nb: kv_nb,
        };
        let v = Tensor {
            data: &self.v,
            ty: self.ty,
            ne: [d, self.n_kv, hk, 1],
            nb: kv_nb,
        };
        let m = self
            .mask
            .as_ref()
            .map(|m| Tensor::from_f16_bits(m, [self.n_kv, self.n_q, 1, 1]).unwrap());
        (q, k, v, m)
    }

    fn kv_bytes(&self) -> usize {
        self.k.len() + self.v.len()
    }
}

/// `ATTNROT_BENCH_CPUTIME=1`: time the summary with the process CPU clock instead of the wall
/// clock, so time slices lost to other processes on a loaded machine do not count (meaningful
/// with `ATTNROT_BENCH_THREADS=1`, where both sides compute on the calling thread).
/// The op precision of every case: `GGML_PREC_F32`, what llama.cpp sets on each
/// FLASH_ATTN_EXT (so the path its decode takes), or `ATTNROT_BENCH_PREC=default`.
fn bench_precision() -> attn::Precision {
    match std::env::var("ATTNROT_BENCH_PREC").as_deref() {
        Ok("default") => attn::Precision::Default,
        _ => attn::Precision::F32,
    }
}

fn cputime() -> bool {
    std::env::var("ATTNROT_BENCH_CPUTIME").is_ok_and(|v| v == "1")
}

fn process_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid clock id and a valid out pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn median_time(mut f: impl FnMut(), min_runs: usize, budget: Duration) -> Duration {
    f(); // warm-up
    let mut ts = Vec::new();
    let start = Instant::now();
    let cpu = cputime();
    while ts.len() < min_runs || (start.elapsed() < budget && ts.len() < 200) {
        if cpu {
            let t = process_cpu();
            f();
            ts.push(process_cpu() - t);
        } else {
            let t = Instant::now();
            f();
            ts.push(t.elapsed());
        }
    }
    ts.sort();
    ts[ts.len() / 2]
}

/// Multi-threaded streaming read of a buffer far larger than the caches: GB/s. (The loop
/// vectorizes with baseline SSE2 loads; built for AVX2 it read no faster on Zen 4, 25.6 vs
/// 26.0 GB/s on one thread, so the probe does not flatter the shares below.)
fn bandwidth_probe(nt: usize) -> f64 {
    let n = 256usize << 20; // 256 MiB per probe
    let buf: Vec<u64> = (0..n / 8).map(|i| i as u64).collect();
    let per = buf.len() / nt;
    let run = || {
        std::thread::scope(|s| {
            let hs: Vec<_> = buf
                .chunks(per)
                .map(|c| {
                    s.spawn(move || {
                        let mut acc = [0u64; 8];
                        for ch in c.chunks_exact(8) {
                            for i in 0..8 {
                                acc[i] = acc[i].wrapping_add(ch[i]);
                            }
                        }
                        acc.iter().fold(0u64, |a, b| a ^ b)
                    })
                })
                .collect();
            hs.into_iter()
                .map(|h| h.join().unwrap())
                .fold(0, |a, b| a ^ b)
        })
    };
    let t = median_time(
        || {
            black_box(run());
        },
        5,
        Duration::from_secs(2),
    );
    n as f64 / t.as_secs_f64() / 1e9
}

fn cases() -> Vec<(Case, bool)> {
    let mut specs: Vec<(&Shape, GgmlType, usize, usize)> = Vec::new();
    for sh in [&SMOL, &BIG] {
        for n_kv in [4096, 32768] {
            for ty in [GgmlType::F16, GgmlType::Q8_0, GgmlType::Q4_0] {
                specs.push((sh, ty, n_kv, 1));
            }
        }
    }
    for ty in [GgmlType::F16, GgmlType::Q8_0, GgmlType::Q4_0] {
        specs.push((&SMOL, ty, 4096, 512));
    }
    // `ATTNROT_BENCH_FILTER=a,b`: only cases whose label contains one of the substrings
    if let Ok(f) = std::env::var("ATTNROT_BENCH_FILTER") {
        let pats: Vec<&str> = f.split(',').filter(|p| !p.is_empty()).collect();
        specs.retain(|&(sh, ty, n_kv, n_q)| {
            let l = label(sh, ty, n_kv, n_q);
            pats.iter().any(|p| l.contains(p))
        });
    }
    specs
        .into_iter()
        .map(|(sh, ty, n_kv, n_q)| (Case::new(sh, ty, n_kv, n_q), n_q == 1))
        .collect()
}

fn label(sh: &Shape, ty: GgmlType, n_kv: usize, n_q: usize) -> String {
    format!("{} {} kv={} q={}", sh.name, ty, n_kv, n_q)
}

fn ours_only() -> bool {
    std::env::var("ATTNROT_BENCH_OURS_ONLY").is_ok_and(|v| v == "1")
}

/// The thread counts the summary runs: 1 and all cores (`ATTNROT_BENCH_THREADS` if set), so
/// each decode case is reported against the bandwidth one thread and the whole machine reach.
fn summary_threads() -> Vec<usize> {
    let nt = threads();
    if std::env::var("ATTNROT_BENCH_THREADS").is_ok() || nt == 1 {
        vec![nt]
    } else {
        vec![1, nt]
    }
}

fn summary() {
    attnrot_ref::init();
    let nts = summary_threads();
    // `ATTNROT_BENCH_NO_PROBE=1`: skip the bandwidth probe (profiling the kernels)
    let bws: Vec<f64> = nts
        .iter()
        .map(|&nt| {
            if std::env::var("ATTNROT_BENCH_NO_PROBE").is_ok_and(|v| v == "1") {
                f64::NAN
            } else {
                bandwidth_probe(nt)
            }
        })
        .collect();
    eprintln!(
        "\n== attn bench: threads {nts:?} (ours and upstream alike), isa {:?}, upstream features {:?}, {} clock",
        attnrot::simd::isa(),
        attnrot_ref::cpu_features(),
        if cputime() { "process CPU" } else { "wall" }
    );
    for (nt, bw) in nts.iter().zip(&bws) {
        eprintln!("== memory-bandwidth probe (streaming read, {nt} threads): {bw:.1} GB/s");
    }
    eprintln!(
        "{:<34} {:>3} {:>11} {:>11} {:>8} {:>10} {:>8} {:>10} {:>8}",
        "case", "thr", "ours", "upstream", "speedup", "KV GB/s", "% of bw", "up GB/s", "% of bw"
    );
    for (c, decode) in cases() {
        let (q, k, v, m) = c.tensors();
        let budget = Duration::from_millis(if decode { 1500 } else { 3000 });
        for (&nt, &bw) in nts.iter().zip(&bws) {
            let ours = median_time(
                || {
                    black_box(attn::attend(&q, &k, &v, m.as_ref(), None, &c.params, nt).unwrap());
                },
                3,
                budget,
            );
            // `ATTNROT_BENCH_OURS_ONLY=1`: skip upstream (quick iterations; ratio shows as NaN)
            let upt = if ours_only() {
                Duration::ZERO
            } else {
                let mut up = RefAttn::new(&q, &k, &v, m.as_ref(), None, &c.params, nt);
                median_time(
                    || {
                        black_box(up.compute());
                    },
                    3,
                    budget,
                )
            };
            // bytes of K and V the decode reads (each row once), over the time, over the
            // bandwidth the same number of threads reaches
            let share = |t: Duration| {
                let gbs = c.kv_bytes() as f64 / t.as_secs_f64() / 1e9;
                if decode && t > Duration::ZERO {
                    (format!("{gbs:.1}"), format!("{:.0}%", 100.0 * gbs / bw))
                } else {
                    ("-".into(), "-".into())
                }
            };
            let ((g, pct), (ug, upct)) = (share(ours), share(upt));
            eprintln!(
                "{:<34} {:>3} {:>9.3}ms {:>9.3}ms {:>7.2}x {:>10} {:>8} {:>10} {:>8}",
                c.label,
                nt,
                ours.as_secs_f64() * 1e3,
                upt.as_secs_f64() * 1e3,
                upt.as_secs_f64() / ours.as_secs_f64(),
                g,
                pct,
                ug,
                upct
            );
        }
    }
    eprintln!();
}

fn bench(cr: &mut Criterion) {
    let nt = threads();
    for (c, decode) in cases() {
        let (q, k, v, m) = c.tensors();
        let mut g = cr.benchmark_group(format!(
            "attn {}",
            if decode { "decode" } else { "prefill" }
        ));
        g.sample_size(10);
        g.warm_up_time(Duration::from_millis(300));
        g.measurement_time(Duration::from_secs(if decode { 2 } else { 4 }));
        g.bench_function(format!("ours {}", c.label), |b| {
            b.iter(|| attn::attend(&q, &k, &v, m.as_ref(), None, &c.params, nt).unwrap())
        });
        let mut up = RefAttn::new(&q, &k, &v, m.as_ref(), None, &c.params, nt);
        g.bench_function(format!("upstream {}", c.label), |b| {
            b.iter(|| {
                black_box(up.compute());
            })
        });
        g.finish();
    }
}

criterion_group!(benches, bench);

fn main() {
    summary();
    if std::env::var("ATTNROT_BENCH_SUMMARY_ONLY")
        .map(|v| v == "1")
        .unwrap_or(false)
    {
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
