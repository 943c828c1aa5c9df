//! The backend's thread team on a real OpenMP runtime (`ggml::team`): the same libgomp the
//! host's CPU backend uses (installed with gcc; CI has it). This binary loads libgomp first,
//! as `libggml-cpu.so` does in a llama.cpp process, so the backend finds it with
//! `RTLD_NOLOAD`. Checks: every member runs once, panics come back to the caller, the forced
//! ISA reaches the OpenMP threads, and attention on the team is bit-identical to one thread.
use attnrot::attn::{self, Params, Precision, Tensor, TensorMut};
use attnrot::ggml::team::{self, BackendTeam};
use attnrot::par::{Scoped, Team};
use attnrot::simd::{self, Isa};
use attnrot::GgmlType;
use rand::{Rng, SeedableRng};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Once;

fn load_libgomp() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: dlopen with a valid C string; the handle is kept for the process.
        let h =
            unsafe { libc::dlopen(c"libgomp.so.1".as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
        assert!(
            !h.is_null(),
            "libgomp.so.1 not found: it comes with gcc (Debian: libgomp1), which the build needs"
        );
    });
    assert!(
        team::have_openmp(),
        "libgomp is loaded but the backend did not find GOMP_parallel"
    );
}

#[test]
fn members_run_once_on_openmp_threads() {
    load_libgomp();
    for n in [2usize, 3, 8] {
        let t = team::team(n);
        assert!(
            matches!(t, BackendTeam::Gomp(..)),
            "team({n}) is not the OpenMP team"
        );
        assert_eq!(t.size(), n);
        let seen: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
        t.run(&|i| {
            seen[i].fetch_add(1, Ordering::Relaxed);
        });
        let counts: Vec<usize> = seen.iter().map(|s| s.load(Ordering::Relaxed)).collect();
        assert!(counts.iter().all(|&c| c == 1), "n = {n}: {counts:?}");
    }
    // A team of one is just the caller.
    assert!(matches!(team::team(1), BackendTeam::Scoped(_)));
}

#[test]
fn member_panic_reaches_the_caller() {
    load_libgomp();
    let r = std::panic::catch_unwind(|| {
        team::team(2).run(&|i| {
            if i == 1 {
                panic!("member 1 fails (intentional: checks that the panic reaches the caller)");
            }
        })
    });
    let p = r.expect_err("the panic was lost");
    let msg = p.downcast_ref::<&str>().copied().unwrap_or("");
    assert_eq!(
        msg,
        "member 1 fails (intentional: checks that the panic reaches the caller)"
    );
    // The team still works afterwards.
    let n = AtomicUsize::new(0);
    team::team(2).run(&|_| {
        n.fetch_add(1, Ordering::Relaxed);
    });
    assert_eq!(n.load(Ordering::Relaxed), 2);
}

#[test]
fn forced_isa_reaches_openmp_threads() {
    load_libgomp();
    let ok = AtomicUsize::new(0);
    simd::with_isa(Isa::Scalar, || {
        team::team(2).run(&|_| {
            if simd::isa() == Isa::Scalar {
                ok.fetch_add(1, Ordering::Relaxed);
            }
        })
    })
    .unwrap();
    assert_eq!(ok.load(Ordering::Relaxed), 2);
}

fn quantized(ty: GgmlType, x: &[f32], row: usize) -> Vec<u8> {
    let f = attnrot::quant::format(ty).unwrap();
    let rb = ty.row_bytes(row).unwrap();
    let mut out = vec![0u8; rb * (x.len() / row)];
    for (src, dst) in x.chunks(row).zip(out.chunks_mut(rb)) {
        f.quantize_row(src, dst).unwrap();
    }
    out
}

/// Attention on the OpenMP team (decode with split KV chunks, and prefill) gives exactly the
/// bits of one thread.
#[test]
fn attention_on_the_team_matches_one_thread() {
    load_libgomp();
    let seed: u64 = std::env::var("ATTNROT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::rng().random());
    println!("omp_team attention seed {seed} (ATTNROT_SEED={seed} repeats it)");
    let mut r = rand::rngs::SmallRng::seed_from_u64(seed);
    let (d, n_head, n_kv_head, n_kv) = (64usize, 9usize, 3usize, 4096usize);
    for (n_q, ty) in [
        (1usize, GgmlType::Q8_0),
        (1, GgmlType::Q4_0),
        (37, GgmlType::Q8_0),
    ] {
        let qv: Vec<f32> = (0..d * n_q * n_head)
            .map(|_| r.random_range(-1.0..1.0))
            .collect();
        let kv: Vec<f32> = (0..d * n_kv * n_kv_head)
            .map(|_| r.random_range(-1.0..1.0))
            .collect();
        let vv: Vec<f32> = (0..d * n_kv * n_kv_head)
            .map(|_| r.random_range(-1.0..1.0))
            .collect();
        let (kq, vq) = (quantized(ty, &kv, d), quantized(ty, &vv, d));
        let q = Tensor::from_f32(&qv, [d, n_q, n_head, 1]).unwrap();
        let k = Tensor::contiguous(&kq, ty, [d, n_kv, n_kv_head, 1]).unwrap();
        let v = Tensor::contiguous(&vq, ty, [d, n_kv, n_kv_head, 1]).unwrap();
        let mut p = Params::new(0.125);
        p.precision = Precision::Default;
        let run = |t: &dyn Team| {
            let mut out = vec![0f32; d * n_head * n_q];
            let mut dst = TensorMut::from_f32(&mut out, [d, n_head, n_q, 1]).unwrap();
            attn::flash_attn_ext_team(&q, &k, &v, None, None, &p, &mut dst, t).unwrap();
            out
        };
        let one = run(&Scoped::new(1));
        assert!(one.iter().all(|x| x.is_finite()));
        for n in [2, 3] {
            let got = run(&team::team(n));
            let same = one
                .iter()
                .zip(&got)
                .all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(
                same,
                "{ty} n_q={n_q}: OpenMP team of {n} differs from one thread"
            );
        }
    }
}
