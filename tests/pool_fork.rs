//! The worker pool of the Rust and C APIs (`par::Pooled`) in a process that forks after the
//! pool started, as a prefork server or Python's `multiprocessing` (fork start method) does:
//! the child has none of the pool's threads, and a team that handed work to them would wait
//! forever. The child must compute the same attention (the team falls back to scoped
//! threads there). Its own binary: one test, so no other test thread runs at the fork.
use attnrot::attn::{self, Params, Precision, Tensor};
use attnrot::par::{Pooled, Team};
use attnrot::GgmlType;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// A decode-shaped attention (q8_0 K/V, 4 query / 2 KV heads, 2048 rows) on `threads`.
fn attention(threads: usize) -> Vec<f32> {
    let (d, nkv, nq, nh, nhkv) = (64usize, 2048usize, 1usize, 4usize, 2usize);
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut rnd = |n: usize| -> Vec<f32> {
        (0..n)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 40) as f32 / (1u64 << 23) as f32 - 1.0
            })
            .collect()
    };
    let q = rnd(d * nq * nh);
    let quant = |x: &[f32]| {
        let f = attnrot::quant::format(GgmlType::Q8_0).unwrap();
        let mut b = vec![0u8; GgmlType::Q8_0.row_bytes(x.len()).unwrap()];
        f.quantize_row(x, &mut b).unwrap();
        b
    };
    let (k, v) = (quant(&rnd(d * nkv * nhkv)), quant(&rnd(d * nkv * nhkv)));
    let qt = Tensor::from_f32(&q, [d, nq, nh, 1]).unwrap();
    let kt = Tensor::contiguous(&k, GgmlType::Q8_0, [d, nkv, nhkv, 1]).unwrap();
    let vt = Tensor::contiguous(&v, GgmlType::Q8_0, [d, nkv, nhkv, 1]).unwrap();
    let p = Params {
        scale: 0.125,
        max_bias: 0.0,
        logit_softcap: 0.0,
        precision: Precision::F32,
    };
    attn::attend(&qt, &kt, &vt, None, None, &p, threads).unwrap()
}

#[test]
fn a_forked_child_computes_with_the_pool_started() {
    // start the pool in the parent, and use it
    let n = AtomicUsize::new(0);
    Pooled::new(2).run(&|_| {
        n.fetch_add(1, Ordering::Relaxed);
    });
    assert_eq!(n.load(Ordering::Relaxed), 2);
    let want = attention(2);
    assert_eq!(want, attention(1), "the result depends on the thread count");

    // SAFETY: the child only computes and exits through `_exit`; no other test runs here.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        let m = AtomicUsize::new(0);
        Pooled::new(3).run(&|_| {
            m.fetch_add(1, Ordering::Relaxed);
        });
        let ok = m.load(Ordering::Relaxed) == 3 && attention(2) == want;
        // SAFETY: ends the child without running the parent's exit handlers twice.
        unsafe { libc::_exit(if ok { 0 } else { 3 }) };
    }
    let t0 = Instant::now();
    let mut status = 0;
    loop {
        // SAFETY: waits for our own child, without blocking.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        assert!(r >= 0, "waitpid failed");
        if r == pid {
            break;
        }
        if t0.elapsed() > Duration::from_secs(60) {
            // SAFETY: our own child.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            panic!("the forked child hung in attention on 2 threads (waited 60 s)");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "child status {status:#x} (exit 3: a member did not run or the result differs)"
    );
}
