//! Reference: the Walsh–Hadamard rotation on upstream's CPU backend (a real ggml graph).
//!
//! llama.cpp rotates Q/K/V with `llama_mul_mat_hadamard` (src/llama-impl.h): the activation
//! is reshaped (or `ggml_cont_2d`'d) to `[n, nelements/n]`, multiplied by the `n×n` Hadamard
//! matrix with `ggml_mul_mat(ctx, rot, x)`, the node gets `ggml_mul_mat_set_hint(res,
//! GGML_HINT_SRC0_IS_HADAMARD)` (op param 1 = 1), and the result is reshaped back. On the CPU
//! backend `ggml_compute_forward_mul_mat` (ggml-cpu.c) then skips the matrix product and runs
//! `ggml_compute_forward_fwht` (ops.cpp) on every `n`-chunk; src0 is never read there.
//!
//! [`HadamardGraph`] builds exactly that graph once (optionally without the hint: a plain
//! dense MUL_MAT with the same matrix) and computes it as often as asked on a CPU backend
//! (`ggml_backend_cpu_init`, `use_ref` off), so benches time the kernel, not graph building.
use attnrot::ggml::sys;
use std::ptr;

/// The `n×n` orthonormal Walsh–Hadamard matrix (Sylvester order) as llama.cpp fills it
/// (`ggml_gen_hadamard`, src/llama-kv-cache.cpp): entry (0,0) is `(float)(1.0 / sqrtf(n))`
/// (double division), then the block doubling `[[A, A], [A, -A]]`. Row-major, `n*n` floats.
pub fn hadamard_matrix(n: usize) -> Vec<f32> {
    assert!(n.is_power_of_two(), "n = {n} is not a power of two");
    let mut h = vec![0f32; n * n];
    h[0] = (1.0f64 / ((n as f32).sqrt() as f64)) as f32;
    let mut s = 1;
    while s < n {
        for i in 0..s {
            for j in 0..s {
                let v = h[i * n + j];
                h[(i + s) * n + j] = v;
                h[i * n + j + s] = v;
                h[(i + s) * n + j + s] = -v;
            }
        }
        s *= 2;
    }
    h
}

/// Element type of the activation (src1 of the hinted MUL_MAT).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Src {
    F32,
    F16,
}

/// A built graph `reshape_4d(mul_mat(H, reshape_2d(x, n, len/n)), ...)` on one CPU backend.
pub struct HadamardGraph {
    ctx: *mut sys::ggml_context,
    backend: sys::ggml_backend_t,
    graph: *mut sys::ggml_cgraph,
    x: *mut sys::ggml_tensor,
    out: *mut sys::ggml_tensor,
    n: usize,
    len: usize,
    src: Src,
}

impl HadamardGraph {
    /// `rows` rows of `row_len` elements (a multiple of `n`), rotated by the `n×n` Hadamard
    /// matrix chunk by chunk, as llama.cpp does. `hinted = false` gives the same MUL_MAT
    /// without `GGML_HINT_SRC0_IS_HADAMARD` (a dense product with the matrix; F32 only).
    pub fn new(
        n: usize,
        row_len: usize,
        rows: usize,
        src: Src,
        hinted: bool,
        threads: usize,
    ) -> Self {
        assert!(n.is_power_of_two() && n > 0, "n = {n}");
        assert!(
            row_len.is_multiple_of(n) && row_len > 0 && rows > 0,
            "row_len {row_len} rows {rows} n {n}"
        );
        assert!(
            hinted || src == Src::F32,
            "the CPU backend has no dense F32 x F16 MUL_MAT"
        );
        crate::init();
        let len = row_len * rows;
        let esz = match src {
            Src::F32 => 4,
            Src::F16 => 2,
        };
        unsafe {
            let mem = 16 * sys::ggml_tensor_overhead()
                + sys::ggml_graph_overhead()
                + n * n * 4
                + len * (esz + 4)
                + 4096;
            let ctx = sys::ggml_init(sys::ggml_init_params {
                mem_size: mem,
                mem_buffer: ptr::null_mut(),
                no_alloc: false,
            });
            assert!(!ctx.is_null(), "ggml_init failed");
            let h = sys::ggml_new_tensor_2d(ctx, sys::ggml_type_GGML_TYPE_F32, n as i64, n as i64);
            ptr::copy_nonoverlapping(hadamard_matrix(n).as_ptr(), (*h).data as *mut f32, n * n);
            let ty = match src {
                Src::F32 => sys::ggml_type_GGML_TYPE_F32,
                Src::F16 => sys::ggml_type_GGML_TYPE_F16,
            };
            let x = sys::ggml_new_tensor_2d(ctx, ty, row_len as i64, rows as i64);
            // llama_mul_mat_hadamard: x is contiguous, so reshape (not cont) to [n, nel/n].
            let x2 = sys::ggml_reshape_2d(ctx, x, n as i64, (len / n) as i64);
            let mm = sys::ggml_mul_mat(ctx, h, x2);
            if hinted {
                sys::ggml_mul_mat_set_hint(mm, sys::ggml_op_hint_GGML_HINT_SRC0_IS_HADAMARD);
            }
            let out = sys::ggml_reshape_4d(ctx, mm, row_len as i64, rows as i64, 1, 1);
            let graph = sys::ggml_new_graph(ctx);
            sys::ggml_build_forward_expand(graph, out);
            let backend = sys::ggml_backend_cpu_init();
            assert!(!backend.is_null(), "ggml_backend_cpu_init failed");
            sys::ggml_backend_cpu_set_n_threads(backend, threads.max(1) as i32);
            HadamardGraph {
                ctx,
                backend,
                graph,
                x,
                out,
                n,
                len,
                src,
            }
        }
    }

    pub fn n(&self) -> usize {
        self.n
    }

    /// Copy f32 input into the graph's src1.
    pub fn set_input(&mut self, x: &[f32]) {
        assert_eq!(self.src, Src::F32);
        assert_eq!(x.len(), self.len);
        unsafe { ptr::copy_nonoverlapping(x.as_ptr(), (*self.x).data as *mut f32, self.len) };
    }

    /// Copy f16 input (raw bits) into the graph's src1.
    pub fn set_input_f16(&mut self, x: &[u16]) {
        assert_eq!(self.src, Src::F16);
        assert_eq!(x.len(), self.len);
        unsafe { ptr::copy_nonoverlapping(x.as_ptr(), (*self.x).data as *mut u16, self.len) };
    }

    /// Run the graph on the CPU backend.
    pub fn compute(&mut self) {
        let st = unsafe { sys::ggml_backend_graph_compute(self.backend, self.graph) };
        assert_eq!(
            st,
            sys::ggml_status_GGML_STATUS_SUCCESS,
            "ggml_backend_graph_compute failed"
        );
    }

    /// The result of the last [`compute`](Self::compute).
    pub fn output(&self) -> &[f32] {
        unsafe { std::slice::from_raw_parts((*self.out).data as *const f32, self.len) }
    }
}

impl Drop for HadamardGraph {
    fn drop(&mut self) {
        unsafe {
            sys::ggml_backend_free(self.backend);
            sys::ggml_free(self.ctx);
        }
    }
}

/// Upstream's hinted MUL_MAT (the CPU fast path `ggml_compute_forward_fwht`) on f32 `x`,
/// `x.len()` a multiple of `n`; one thread.
pub fn hadamard_mul_mat(n: usize, x: &[f32]) -> Vec<f32> {
    let mut g = HadamardGraph::new(n, n, x.len() / n, Src::F32, true, 1);
    g.set_input(x);
    g.compute();
    g.output().to_vec()
}

/// Upstream's hinted MUL_MAT on f16 `x` (raw bits); one thread.
pub fn hadamard_mul_mat_f16(n: usize, x: &[u16]) -> Vec<f32> {
    let mut g = HadamardGraph::new(n, n, x.len() / n, Src::F16, true, 1);
    g.set_input_f16(x);
    g.compute();
    g.output().to_vec()
}

/// The same MUL_MAT without the hint: ggml's dense f32 matrix product with the matrix of
/// [`hadamard_matrix`]; one thread.
pub fn dense_mul_mat(n: usize, x: &[f32]) -> Vec<f32> {
    let mut g = HadamardGraph::new(n, n, x.len() / n, Src::F32, false, 1);
    g.set_input(x);
    g.compute();
    g.output().to_vec()
}

/// Dense product in f64: `y[c*n + i] = Σ_k H[i][k] x[c*n + k]` with exact `±1/√n` entries.
pub fn dense_f64(n: usize, x: &[f32]) -> Vec<f64> {
    assert!(n.is_power_of_two() && x.len().is_multiple_of(n));
    let s = 1.0 / (n as f64).sqrt();
    let mut y = vec![0f64; x.len()];
    for (xc, yc) in x.chunks_exact(n).zip(y.chunks_exact_mut(n)) {
        for (i, yi) in yc.iter_mut().enumerate() {
            let mut acc = 0f64;
            for (k, xk) in xc.iter().enumerate() {
                let v = *xk as f64;
                if (i & k).count_ones() % 2 == 0 {
                    acc += v
                } else {
                    acc -= v
                }
            }
            *yi = acc * s;
        }
    }
    y
}

/// The same product in f64 by the fast transform (Sylvester order, so equal to
/// [`dense_f64`] up to f64 rounding: relative error ≲ log2(n)·2⁻⁵³). For big batches.
pub fn fwht_f64(n: usize, x: &[f32]) -> Vec<f64> {
    assert!(n.is_power_of_two() && x.len().is_multiple_of(n));
    let s = 1.0 / (n as f64).sqrt();
    let mut y: Vec<f64> = x.iter().map(|v| *v as f64).collect();
    for c in y.chunks_exact_mut(n) {
        let mut len = 1;
        while len < n {
            for i in (0..n).step_by(2 * len) {
                for j in i..i + len {
                    let (u, v) = (c[j], c[j + len]);
                    c[j] = u + v;
                    c[j + len] = u - v;
                }
            }
            len *= 2;
        }
        c.iter_mut().for_each(|v| *v *= s);
    }
    y
}
