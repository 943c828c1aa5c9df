//! The threads the backend's kernels run on: the host CPU backend's OpenMP team.
//!
//! llama.cpp's CPU backend (built with OpenMP, upstream's default) runs each of its graph
//! splits in `#pragma omp parallel`, which GCC compiles to `GOMP_parallel`. Between two such
//! regions libgomp keeps the worker threads of the calling thread's pool and, unless
//! `OMP_WAIT_POLICY=passive`, lets them spin for a while before they sleep. Our splits run
//! between the CPU's, on the same (calling) thread, so those workers are spinning while we
//! compute. Threads of our own would then fight them for the cores; measured on SmolLM2 with a
//! q8_0 cache at depth 4096 (2 cores, default OpenMP policy), a scoped second thread per
//! attention node made decode *slower* than stock (31.5 vs 35.5 t/s), while one thread gave
//! 47 t/s. Calling `GOMP_parallel` ourselves hands the work to those same spinning workers.
//!
//! libgomp is looked up with `RTLD_NOLOAD`: only if the host already loaded it (through
//! `libggml-cpu*.so`) — we never bring an OpenMP runtime into a process. Without it (a ggml
//! built without OpenMP, or a plain C program) the backend falls back to scoped threads,
//! and only for work large enough to be worth a thread start.
use crate::par::{Scoped, Team};
use crate::simd;
use std::any::Any;
use std::ffi::{c_uint, c_void, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

/// `void GOMP_parallel(void (*fn)(void *), void *data, unsigned num_threads, unsigned flags)`
/// (libgomp's entry point for `#pragma omp parallel`; also provided by LLVM's libomp).
type GompParallel =
    unsafe extern "C" fn(unsafe extern "C" fn(*mut c_void), *mut c_void, c_uint, c_uint);

/// libgomp's `GOMP_parallel`, if the host process already loaded an OpenMP runtime.
fn gomp_parallel() -> Option<GompParallel> {
    static P: OnceLock<Option<usize>> = OnceLock::new();
    let p = *P.get_or_init(|| {
        if std::env::var("ATTNROT_NO_OPENMP").is_ok_and(|v| v == "1") {
            return None;
        }
        let libs: [&CStr; 3] = [c"libgomp.so.1", c"libomp.so.5", c"libomp.so"];
        libs.iter().find_map(|lib| {
            // SAFETY: dlopen with RTLD_NOLOAD only returns a handle to an already-loaded
            // library (and bumps its refcount, which we keep: it stays loaded anyway).
            let h = unsafe { libc::dlopen(lib.as_ptr(), libc::RTLD_NOW | libc::RTLD_NOLOAD) };
            if h.is_null() {
                return None;
            }
            // SAFETY: dlsym on a valid handle with a valid C string.
            let s = unsafe { libc::dlsym(h, c"GOMP_parallel".as_ptr()) };
            (!s.is_null()).then_some(s as usize)
        })
    });
    // SAFETY: the symbol has the libgomp ABI signature above.
    p.map(|p| unsafe { std::mem::transmute::<usize, GompParallel>(p) })
}

/// Is the host's OpenMP team available to the backend?
pub fn have_openmp() -> bool {
    gomp_parallel().is_some()
}

/// A team for `n` threads: the host's OpenMP workers if there are any, else scoped threads.
pub fn team(n: usize) -> BackendTeam {
    match gomp_parallel() {
        Some(p) if n > 1 => BackendTeam::Gomp(p, n),
        _ => BackendTeam::Scoped(Scoped::new(n)),
    }
}

/// See [`team`].
pub enum BackendTeam {
    Gomp(GompParallel, usize),
    Scoped(Scoped),
}

struct Ctx<'a> {
    f: &'a (dyn Fn(usize) + Sync),
    n: usize,
    next: AtomicUsize,
    isa: simd::Isa,
    panic: Mutex<Option<Box<dyn Any + Send>>>,
}

/// One OpenMP thread of the region: takes the next member index, runs it with the caller's
/// ISA, keeps a panic for the caller (no unwinding through libgomp's C frames).
unsafe extern "C" fn member(data: *mut c_void) {
    // SAFETY: `data` is the `Ctx` that `run` keeps alive until GOMP_parallel returns.
    let ctx = unsafe { &*(data as *const Ctx) };
    loop {
        let t = ctx.next.fetch_add(1, Ordering::Relaxed);
        if t >= ctx.n {
            return;
        }
        let r = catch_unwind(AssertUnwindSafe(|| {
            simd::with_isa(ctx.isa, || (ctx.f)(t)).expect("the caller's ISA is available")
        }));
        if let Err(p) = r {
            let mut slot = ctx.panic.lock().unwrap_or_else(|e| e.into_inner());
            slot.get_or_insert(p);
        }
    }
}

impl Team for BackendTeam {
    fn size(&self) -> usize {
        match self {
            BackendTeam::Gomp(_, n) => *n,
            BackendTeam::Scoped(s) => s.size(),
        }
    }

    fn run(&self, f: &(dyn Fn(usize) + Sync)) {
        let (par, n) = match self {
            BackendTeam::Scoped(s) => return s.run(f),
            BackendTeam::Gomp(p, n) => (*p, *n),
        };
        let ctx = Ctx {
            f,
            n,
            next: AtomicUsize::new(0),
            isa: simd::isa(),
            panic: Mutex::new(None),
        };
        // SAFETY: `member` only reads `ctx`, which outlives the call; GOMP_parallel returns
        // after every thread of the region finished. Each thread loops over member indices,
        // so all `n` run even if the runtime grants fewer threads.
        unsafe { par(member, &ctx as *const Ctx as *mut c_void, n as c_uint, 0) };
        if let Some(p) = ctx.panic.into_inner().unwrap_or_else(|e| e.into_inner()) {
            std::panic::resume_unwind(p);
        }
    }
}
