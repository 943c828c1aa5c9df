//! Who runs the threads of a parallel kernel.
//!
//! The kernels split their work into pieces whose numbers never depend on the split; *which*
//! threads run the pieces is a [`Team`]. On its own (the Rust and C APIs) the crate uses
//! [`Pooled`]: the calling thread plus workers of a process-wide pool (a rayon pool of its
//! own) that stay between calls, so a decode step's call does not pay for starting threads
//! (~0.03 ms a call, a fifth of a 0.17 ms decode call). [`Scoped`] (`std` threads started per
//! call) remains for the backend's fallback below. Inside a ggml host the backend passes a team that runs on
//! the host CPU backend's own OpenMP workers instead (`ggml::team`): between the CPU splits of
//! a graph those workers are spinning, so handing them our work costs microseconds, while
//! extra threads of our own would compete with them for the cores.
use crate::simd;

/// A set of `size()` threads that run one closure together.
pub trait Team: Sync {
    /// How many threads [`Team::run`] uses (≥ 1).
    fn size(&self) -> usize;
    /// Call `f(t)` once for every `t` in `0..size()`, on up to `size()` threads at once,
    /// each seeing the caller's forced ISA ([`simd::with_isa`]); return when all calls
    /// returned. A team may run some members one after another, so members never wait for
    /// each other.
    /// A panic in any call is resumed on the caller after the others finished.
    fn run(&self, f: &(dyn Fn(usize) + Sync));
}

/// Scoped `std` threads started per [`Team::run`]: member 0 is the calling thread.
#[derive(Clone, Copy, Debug)]
pub struct Scoped(usize);

impl Scoped {
    /// A team of `n` threads (`n` = 0 counts as 1).
    pub fn new(n: usize) -> Self {
        Scoped(n.max(1))
    }
}

impl Team for Scoped {
    fn size(&self) -> usize {
        self.0
    }

    fn run(&self, f: &(dyn Fn(usize) + Sync)) {
        if self.0 == 1 {
            return f(0);
        }
        let isa = simd::isa();
        std::thread::scope(|s| {
            let handles: Vec<_> = (1..self.0)
                .map(|t| {
                    s.spawn(move || {
                        // The caller's ISA ran on this machine, so forcing it cannot fail.
                        simd::with_isa(isa, || f(t)).expect("the caller's ISA is available")
                    })
                })
                .collect();
            let first = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(0)));
            let mut panic = first.err();
            for h in handles {
                if let Err(p) = h.join() {
                    panic.get_or_insert(p);
                }
            }
            if let Some(p) = panic {
                std::panic::resume_unwind(p);
            }
        })
    }
}

/// The calling thread (member 0) and `n - 1` tasks on the crate's worker pool: a rayon
/// pool of one thread per core (`attnrot-N`), started on first use and kept, its workers
/// asleep between calls. The members pull their work from shared counters, so every piece
/// runs even when fewer workers are free than members (the kernels never wait for each
/// other inside `run`). In a child process forked after the pool started (its workers do not
/// exist there) the team runs as [`Scoped`] instead.
#[derive(Clone, Copy, Debug)]
pub struct Pooled(usize);

impl Pooled {
    /// A team of `n` threads (`n` = 0 counts as 1).
    pub fn new(n: usize) -> Self {
        Pooled(n.max(1))
    }
}

/// The pool and the process that started it (`None` if it could not be built).
fn pool() -> Option<&'static rayon::ThreadPool> {
    static POOL: std::sync::OnceLock<Option<(u32, rayon::ThreadPool)>> = std::sync::OnceLock::new();
    let (pid, p) = POOL
        .get_or_init(|| {
            let n = std::thread::available_parallelism().map_or(1, |n| n.get());
            rayon::ThreadPoolBuilder::new()
                .num_threads(n)
                .thread_name(|i| format!("attnrot-{i}"))
                .build()
                .ok()
                .map(|p| (std::process::id(), p))
        })
        .as_ref()?;
    (*pid == std::process::id()).then_some(p)
}

impl Team for Pooled {
    fn size(&self) -> usize {
        self.0
    }

    fn run(&self, f: &(dyn Fn(usize) + Sync)) {
        if self.0 == 1 {
            return f(0);
        }
        let Some(pool) = pool() else {
            return Scoped::new(self.0).run(f);
        };
        let isa = simd::isa();
        // A panic in a task or in f(0) is resumed here after every task finished.
        pool.in_place_scope(|s| {
            for t in 1..self.0 {
                s.spawn(move |_| {
                    // The caller's ISA ran on this machine, so forcing it cannot fail.
                    simd::with_isa(isa, || f(t)).expect("the caller's ISA is available")
                });
            }
            f(0);
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn teams(n: usize) -> [Box<dyn Team>; 2] {
        [Box::new(Scoped::new(n)), Box::new(Pooled::new(n))]
    }

    #[test]
    fn teams_run_every_member_once() {
        for n in [0, 1, 2, 5, 64] {
            for t in teams(n) {
                let seen: Vec<AtomicUsize> = (0..t.size()).map(|_| AtomicUsize::new(0)).collect();
                t.run(&|i| {
                    seen[i].fetch_add(1, Ordering::Relaxed);
                });
                assert!(
                    seen.iter().all(|s| s.load(Ordering::Relaxed) == 1),
                    "n = {n}"
                );
            }
        }
    }

    #[test]
    fn teams_resume_a_members_panic() {
        for t in teams(3) {
            for bad in [0, 2] {
                let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    t.run(&|i| {
                        if i == bad {
                            panic!("member {bad}");
                        }
                    })
                }));
                assert!(r.is_err(), "member {bad}'s panic was lost");
            }
            // and the team still works afterwards
            let n = AtomicUsize::new(0);
            t.run(&|_| {
                n.fetch_add(1, Ordering::Relaxed);
            });
            assert_eq!(n.load(Ordering::Relaxed), 3);
        }
    }

    /// Several threads using the pool at once (C programs calling from their own threads),
    /// and a member that runs a team itself: every member of every run, once.
    #[test]
    fn pooled_serves_concurrent_and_nested_callers() {
        let total = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..200 {
                        let seen: Vec<AtomicUsize> = (0..3).map(|_| AtomicUsize::new(0)).collect();
                        Pooled::new(3).run(&|i| {
                            seen[i].fetch_add(1, Ordering::Relaxed);
                            if i == 1 {
                                Pooled::new(2).run(&|_| {
                                    total.fetch_add(1, Ordering::Relaxed);
                                });
                            }
                        });
                        assert!(seen.iter().all(|s| s.load(Ordering::Relaxed) == 1));
                    }
                });
            }
        });
        assert_eq!(total.load(Ordering::Relaxed), 4 * 200 * 2);
    }

    #[test]
    fn teams_pass_the_callers_isa() {
        // the most basic ISA is forced on every machine; every member must see it
        let want = simd::Isa::Scalar;
        for t in teams(4) {
            let seen: Vec<std::sync::Mutex<Option<simd::Isa>>> =
                (0..4).map(|_| std::sync::Mutex::new(None)).collect();
            simd::with_isa(want, || {
                t.run(&|i| *seen[i].lock().unwrap() = Some(simd::isa()));
            })
            .unwrap();
            for s in &seen {
                assert_eq!(*s.lock().unwrap(), Some(want));
            }
        }
    }
}
