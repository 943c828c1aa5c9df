//! Who runs the threads of a parallel kernel.
//!
//! The kernels split their work into pieces whose numbers never depend on the split; *which*
//! threads run the pieces is a [`Team`]. On its own the crate uses [`Scoped`] (scoped
//! `std` threads, started per call). Inside a ggml host the backend passes a team that runs on
//! the host CPU backend's own OpenMP workers instead (`ggml::team`): between the CPU splits of
//! a graph those workers are spinning, so handing them our work costs microseconds, while
//! extra threads of our own would compete with them for the cores.
use crate::simd;

/// A set of `size()` threads that run one closure together.
pub trait Team: Sync {
    /// How many threads [`Team::run`] uses (≥ 1).
    fn size(&self) -> usize;
    /// Call `f(t)` once for every `t` in `0..size()`, concurrently, each on a thread that
    /// sees the caller's forced ISA ([`simd::with_isa`]); return when all calls returned.
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn scoped_runs_every_member_once() {
        for n in [0, 1, 2, 5] {
            let t = Scoped::new(n);
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

    #[test]
    fn scoped_resumes_a_members_panic() {
        let r = std::panic::catch_unwind(|| {
            Scoped::new(3).run(&|i| {
                if i == 2 {
                    panic!("member 2");
                }
            })
        });
        assert!(r.is_err());
    }
}
