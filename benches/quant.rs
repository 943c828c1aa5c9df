//! KV block formats: ours vs upstream, same data, same run, one thread.
//!
//! For each of the eight KV formats (f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1, iq4_nl), on
//! 4096 rows x 128 floats, as the backends call them:
//! * quantize: `attnrot::quant::format(ty).quantize_row` vs the CPU backend's `from_float`,
//!   as each SET_ROWS writes a batch to consecutive cache slots: ours one call for all rows
//!   (one row at a time for iq4_nl, `FormatOps::rows_batch`), upstream's one call per row;
//! * dequantize: `dequantize_row` vs upstream's `to_float` (both on upstream's bytes), row
//!   by row;
//!   upstream's `from_float` and `to_float` are called through their raw pointers, fetched
//!   once (as ggml calls them), like `vec_dot` below;
//! * vec_dot: `vec_dot` vs the CPU backend's `vec_dot` (row i of the format against row i of
//!   other data in `vec_dot_type`, both quantized by upstream). Upstream is called through
//!   its raw `ggml_vec_dot_t` pointer (fetched once, as ggml's CPU backend does); ours twice:
//!   through the typed `BlockFormat::vec_dot` (the kernel) and through the type-erased
//!   `FormatOps::vec_dot` (length checks + an indirect call per row).
//!
//! Criterion groups give the detailed statistics; a ratio table (upstream time / ours, > 1
//! means we are faster) follows from a separate timing loop (median of interleaved
//! repetitions). A format whose kernels are not implemented yet (they panic) is skipped with
//! a note. `ATTNROT_BENCH_FORMATS=f16,q8_0` restricts the formats; criterion's own filter
//! argument restricts the criterion groups.
use attnrot::ggml::sys;
use attnrot::quant::{
    as_blocks, format, BlockBf16, BlockF16, BlockFormat, BlockIq4Nl, BlockQ4_0, BlockQ4_1,
    BlockQ5_0, BlockQ5_1, BlockQ8_0, FormatOps,
};
use attnrot::GgmlType;
use criterion::{BenchmarkId, Criterion, Throughput};
use std::hint::black_box;
use std::time::{Duration, Instant};

const ROWS: usize = 4096;
const N: usize = 128;

struct Fmt {
    ty: GgmlType,
    ops: &'static FormatOps,
    /// ROWS x N input floats
    x: Vec<f32>,
    /// upstream's CPU quantization of `x` (input of dequantize and left side of vec_dot)
    q_up: Vec<u8>,
    /// right side of vec_dot: other data in `vec_dot_type`, quantized by upstream
    y_dot: Vec<u8>,
    out_q: Vec<u8>,
    out_f: Vec<f32>,
    rb: usize,
    rb_dot: usize,
    /// upstream's CPU `vec_dot` (raw function pointer)
    up_dot: unsafe extern "C" fn(
        i32,
        *mut f32,
        usize,
        *const std::ffi::c_void,
        usize,
        *const std::ffi::c_void,
        usize,
        i32,
    ),
    /// upstream's CPU `from_float` and `to_float` (raw function pointers)
    up_from: unsafe extern "C" fn(*const f32, *mut std::ffi::c_void, i64),
    up_to: unsafe extern "C" fn(*const std::ffi::c_void, *mut f32, i64),
    /// ours: every row through the typed `BlockFormat::vec_dot`
    typed_dot: fn(&Fmt) -> f32,
    /// whether ours matched upstream bit for bit on this data (quantize, dequantize, vec_dot
    /// typed, vec_dot via FormatOps)
    exact: [bool; 4],
}

/// Sum over all rows of the typed `B::vec_dot` (monomorphised: no indirect call per row).
fn typed_rows<B: BlockFormat>(f: &Fmt) -> f32 {
    (0..ROWS).map(|r| typed_row::<B>(f, r)).sum()
}

#[inline(always)]
fn typed_row<B: BlockFormat>(f: &Fmt, r: usize) -> f32 {
    let x = as_blocks::<B>(&f.q_up[r * f.rb..][..f.rb]).unwrap();
    let y = as_blocks::<B::Dot>(&f.y_dot[r * f.rb_dot..][..f.rb_dot]).unwrap();
    B::vec_dot(x, y)
}

/// All rows, and one row, through the typed `BlockFormat::vec_dot` of a format.
type TypedDot = (fn(&Fmt) -> f32, fn(&Fmt, usize) -> f32);

fn typed_dot_fn(ty: GgmlType) -> TypedDot {
    match ty {
        GgmlType::F16 => (typed_rows::<BlockF16>, typed_row::<BlockF16>),
        GgmlType::BF16 => (typed_rows::<BlockBf16>, typed_row::<BlockBf16>),
        GgmlType::Q8_0 => (typed_rows::<BlockQ8_0>, typed_row::<BlockQ8_0>),
        GgmlType::Q4_0 => (typed_rows::<BlockQ4_0>, typed_row::<BlockQ4_0>),
        GgmlType::Q4_1 => (typed_rows::<BlockQ4_1>, typed_row::<BlockQ4_1>),
        GgmlType::Q5_0 => (typed_rows::<BlockQ5_0>, typed_row::<BlockQ5_0>),
        GgmlType::Q5_1 => (typed_rows::<BlockQ5_1>, typed_row::<BlockQ5_1>),
        GgmlType::IQ4_NL => (typed_rows::<BlockIq4Nl>, typed_row::<BlockIq4Nl>),
        _ => panic!("{ty}: not a KV format"),
    }
}

fn data(seed: u64) -> Vec<f32> {
    let mut r = attnrot_ref::diff::rng(seed);
    (0..ROWS)
        .flat_map(|_| attnrot_ref::diff::random_row(&mut r, N))
        .collect()
}

impl Fmt {
    fn new(ty: GgmlType) -> Result<Fmt, String> {
        let ops = format(ty).map_err(|e| e.to_string())?;
        let x = data(0x5eed_0000 + ty as u64);
        let yf = data(0x5eed_1000 + ty as u64);
        let rb = ty.row_bytes(N).unwrap();
        let dt = ty.vec_dot_type();
        let rb_dot = dt.row_bytes(N).unwrap();
        let mut q_up = vec![0u8; ROWS * rb];
        let mut y_dot = vec![0u8; ROWS * rb_dot];
        for r in 0..ROWS {
            attnrot_ref::quantize_row_cpu_into(ty, &x[r * N..][..N], &mut q_up[r * rb..][..rb]);
            attnrot_ref::quantize_row_cpu_into(
                dt,
                &yf[r * N..][..N],
                &mut y_dot[r * rb_dot..][..rb_dot],
            );
        }
        // SAFETY: ggml's CPU type traits are static and valid for every type.
        let up_dot = unsafe { (*sys::ggml_get_type_traits_cpu(ty as sys::ggml_type)).vec_dot }
            .ok_or("upstream has no vec_dot")?;
        // SAFETY: as above.
        let up_from = unsafe { (*sys::ggml_get_type_traits_cpu(ty as sys::ggml_type)).from_float }
            .ok_or("upstream has no from_float")?;
        // SAFETY: as above.
        let up_to = unsafe { (*sys::ggml_get_type_traits(ty as sys::ggml_type)).to_float }
            .ok_or("upstream has no to_float")?;
        let (typed_dot, typed_one) = typed_dot_fn(ty);
        let mut f = Fmt {
            ty,
            ops,
            up_dot,
            up_from,
            up_to,
            typed_dot,
            x,
            q_up,
            y_dot,
            out_q: vec![0u8; ROWS * rb],
            out_f: vec![0f32; ROWS * N],
            rb,
            rb_dot,
            exact: [false; 4],
        };
        // Probe ours (a format still being written panics with todo!()), quietly.
        let hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        let probe = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            f.quant_ours();
            f.deq_ours();
            f.dot_ours(true) + f.dot_ours(false)
        }));
        std::panic::set_hook(hook);
        if let Err(e) = probe {
            let msg = e
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| e.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "panic".into());
            return Err(format!("ours panics ({msg})"));
        }
        // upstream leaves the qs of leading all-tiny iq4_nl blocks uninitialised: mask them
        f.exact[0] = (0..ROWS).all(|r| {
            let (xr, a, b) = (
                &f.x[r * N..][..N],
                &f.out_q[r * rb..][..rb],
                &f.q_up[r * rb..][..rb],
            );
            attnrot_ref::diff::mask_undefined(ty, xr, a.to_vec())
                == attnrot_ref::diff::mask_undefined(ty, xr, b.to_vec())
        });
        let mut up_f = vec![0f32; ROWS * N];
        for r in 0..ROWS {
            attnrot_ref::dequantize_row_into(ty, &f.q_up[r * rb..][..rb], &mut up_f[r * N..][..N]);
        }
        f.deq_ours();
        f.exact[1] = f
            .out_f
            .iter()
            .zip(&up_f)
            .all(|(a, b)| a.to_bits() == b.to_bits());
        let same = |a: f32, b: f32| a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan());
        f.exact[2] = (0..ROWS).all(|r| same(typed_one(&f, r), up_row_dot(&f, r)));
        f.exact[3] = (0..ROWS).all(|r| same(ops_row_dot(&f, r), up_row_dot(&f, r)));
        Ok(f)
    }

    fn quant_ours(&mut self) {
        if self.ops.rows_batch() {
            // SET_ROWS's call for a run of consecutive cache slots (`ggml::ops::set_rows`)
            self.ops.quantize_row(&self.x, &mut self.out_q).unwrap();
            return;
        }
        for r in 0..ROWS {
            self.ops
                .quantize_row(
                    &self.x[r * N..][..N],
                    &mut self.out_q[r * self.rb..][..self.rb],
                )
                .unwrap();
        }
    }
    fn quant_up(&mut self) {
        for r in 0..ROWS {
            let (x, y) = (
                &self.x[r * N..][..N],
                &mut self.out_q[r * self.rb..][..self.rb],
            );
            // SAFETY: x holds N floats, y one row of N elements of the format.
            unsafe { (self.up_from)(x.as_ptr(), y.as_mut_ptr().cast(), N as i64) };
        }
    }
    fn deq_ours(&mut self) {
        for r in 0..ROWS {
            self.ops
                .dequantize_row(
                    &self.q_up[r * self.rb..][..self.rb],
                    &mut self.out_f[r * N..][..N],
                )
                .unwrap();
        }
    }
    fn deq_up(&mut self) {
        for r in 0..ROWS {
            let (x, y) = (
                &self.q_up[r * self.rb..][..self.rb],
                &mut self.out_f[r * N..][..N],
            );
            // SAFETY: x holds one row of N elements of the format, y N floats.
            unsafe { (self.up_to)(x.as_ptr().cast(), y.as_mut_ptr(), N as i64) };
        }
    }
    /// All rows through ours: the typed `BlockFormat::vec_dot` or `FormatOps::vec_dot`.
    fn dot_ours(&self, typed: bool) -> f32 {
        if typed {
            (self.typed_dot)(self)
        } else {
            (0..ROWS).map(|r| ops_row_dot(self, r)).sum()
        }
    }
    fn dot_up(&self) -> f32 {
        (0..ROWS).map(|r| up_row_dot(self, r)).sum()
    }
}

#[inline(always)]
fn ops_row_dot(f: &Fmt, r: usize) -> f32 {
    let x = &f.q_up[r * f.rb..][..f.rb];
    let y = &f.y_dot[r * f.rb_dot..][..f.rb_dot];
    f.ops.vec_dot(N, x, y).unwrap()
}

/// Upstream's vec_dot on row r, as ggml's CPU backend calls it (raw pointer, nrc = 1).
#[inline(always)]
fn up_row_dot(f: &Fmt, r: usize) -> f32 {
    let x = &f.q_up[r * f.rb..][..f.rb];
    let y = &f.y_dot[r * f.rb_dot..][..f.rb_dot];
    let mut s = 0f32;
    // SAFETY: x and y hold N elements of the format and of its vec_dot_type.
    unsafe {
        (f.up_dot)(
            N as i32,
            &mut s,
            0,
            x.as_ptr().cast(),
            0,
            y.as_ptr().cast(),
            0,
            1,
        )
    };
    s
}

const OPS: [&str; 4] = ["quantize", "dequantize", "vec_dot", "vec_dot_formatops"];

fn run_op(f: &mut Fmt, op: usize, ours: bool) {
    match (op, ours) {
        (0, true) => f.quant_ours(),
        (0, false) => f.quant_up(),
        (1, true) => f.deq_ours(),
        (1, false) => f.deq_up(),
        (2, true) => {
            black_box(f.dot_ours(true));
        }
        (3, true) => {
            black_box(f.dot_ours(false));
        }
        _ => {
            black_box(f.dot_up());
        }
    }
}

fn criterion_groups(c: &mut Criterion, fmts: &mut [Fmt]) {
    for (op, name) in OPS.iter().enumerate() {
        let mut g = c.benchmark_group(*name);
        g.throughput(Throughput::Elements((ROWS * N) as u64));
        for f in fmts.iter_mut() {
            let ty = f.ty;
            g.bench_function(BenchmarkId::new("ours", ty), |b| {
                b.iter(|| run_op(f, op, true))
            });
            if op != 3 {
                g.bench_function(BenchmarkId::new("upstream", ty), |b| {
                    b.iter(|| run_op(f, op, false))
                });
            }
        }
        g.finish();
    }
}

/// Median time of one pass (ROWS rows), ours and upstream interleaved.
fn time_pair(f: &mut Fmt, op: usize) -> (Duration, Duration) {
    for _ in 0..3 {
        run_op(f, op, true);
        run_op(f, op, false);
    }
    let reps = 31;
    let (mut a, mut b) = (Vec::with_capacity(reps), Vec::with_capacity(reps));
    for _ in 0..reps {
        let t = Instant::now();
        run_op(f, op, true);
        a.push(t.elapsed());
        let t = Instant::now();
        run_op(f, op, false);
        b.push(t.elapsed());
    }
    a.sort();
    b.sort();
    (a[reps / 2], b[reps / 2])
}

fn main() {
    attnrot_ref::init();
    let only: Option<Vec<String>> = std::env::var("ATTNROT_BENCH_FORMATS").ok().map(|s| {
        s.split(',')
            .map(|t| t.trim().to_ascii_lowercase())
            .collect()
    });
    let mut fmts = Vec::new();
    let mut skipped = Vec::new();
    for ty in GgmlType::KV {
        if only
            .as_ref()
            .is_some_and(|o| !o.iter().any(|n| n == ty.name()))
        {
            continue;
        }
        match Fmt::new(ty) {
            Ok(f) => fmts.push(f),
            Err(e) => {
                eprintln!("quant bench: skipping {ty}: {e}");
                skipped.push((ty, e));
            }
        }
    }
    eprintln!(
        "quant bench: {ROWS} rows x {N} floats, ISA {}, upstream CPU features {:?}",
        attnrot::simd::isa().name(),
        attnrot_ref::cpu_features()
    );

    let mut c = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
        .configure_from_args();
    criterion_groups(&mut c, &mut fmts);
    c.final_summary();

    println!();
    println!("ratio = upstream time / our time (> 1: ours faster); median of 31 interleaved passes of {ROWS} rows x {N}");
    println!("dot: ours through the typed BlockFormat::vec_dot; dot(ops): through FormatOps::vec_dot; upstream through its raw vec_dot pointer");
    println!(
        "{:<8} {:>9} {:>9} {:>6}   {:>9} {:>9} {:>6}   {:>9} {:>9} {:>6}   {:>9} {:>9} {:>6}",
        "format",
        "quant us",
        "up us",
        "ratio",
        "deq us",
        "up us",
        "ratio",
        "dot us",
        "up us",
        "ratio",
        "dot(ops)",
        "up us",
        "ratio"
    );
    for f in fmts.iter_mut() {
        let mut line = format!("{:<8}", f.ty.name());
        for op in 0..4 {
            let (ours, up) = time_pair(f, op);
            let ratio = up.as_secs_f64() / ours.as_secs_f64();
            let mark = if f.exact[op] { " " } else { "*" };
            line += &format!(
                " {:>9.1} {:>9.1} {:>5.2}{mark}  ",
                ours.as_secs_f64() * 1e6,
                up.as_secs_f64() * 1e6,
                ratio
            );
        }
        println!("{line}");
    }
    if fmts.iter().any(|f| f.exact.iter().any(|e| !e)) {
        println!("* = ours differed from upstream bitwise on this data (see tests/quant_diff.rs)");
    }
    for (ty, e) in skipped {
        println!("{:<8} skipped: {e}", ty.name());
    }
}
