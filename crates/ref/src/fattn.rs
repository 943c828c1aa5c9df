//! Reference: FLASH_ATTN_EXT on upstream's CPU backend (a real ggml graph), and a float64
//! oracle with the same semantics.
//!
//! [`RefAttn`] builds `ggml_flash_attn_ext(q, k, v, mask, scale, max_bias, logit_softcap)`
//! (+ `ggml_flash_attn_ext_add_sinks`, `ggml_flash_attn_ext_set_prec`) over the caller's
//! buffers and computes it with `ggml_graph_plan` + `ggml_graph_compute` at a given thread
//! count (ggml makes its own short-lived threadpool per compute, as `ggml_graph_compute_with_ctx`
//! does). Inputs are attnrot [`Tensor`] views: the ggml tensors get the same `ne`, `nb` and data
//! pointer, which is exactly what `ggml_view_4d` + `ggml_permute` produce for llama.cpp's KV
//! cache views (`llama_kv_cache::get_k/get_v`, `build_attn_mha`).
use attnrot::attn::{Params, Precision, Tensor};
use attnrot::ggml::sys;
use attnrot::GgmlType;
use std::marker::PhantomData;

/// A FLASH_ATTN_EXT graph over borrowed inputs, ready to compute repeatedly.
pub struct RefAttn<'a> {
    ctx: *mut sys::ggml_context,
    graph: *mut sys::ggml_cgraph,
    n_threads: i32,
    work: Vec<u64>,
    out: Vec<f32>,
    pub out_ne: [usize; 4],
    _p: PhantomData<&'a [u8]>,
}

fn new_view(ctx: *mut sys::ggml_context, t: &Tensor) -> *mut sys::ggml_tensor {
    unsafe {
        let x = sys::ggml_new_tensor_4d(
            ctx,
            t.ty as sys::ggml_type,
            t.ne[0] as i64,
            t.ne[1] as i64,
            t.ne[2] as i64,
            t.ne[3] as i64,
        );
        (*x).nb = t.nb;
        (*x).data = t.data.as_ptr() as *mut _;
        x
    }
}

impl<'a> RefAttn<'a> {
    /// Build the graph. Panics on shapes upstream would reject (it aborts); validate first.
    pub fn new(
        q: &Tensor<'a>,
        k: &Tensor<'a>,
        v: &Tensor<'a>,
        mask: Option<&Tensor<'a>>,
        sinks: Option<&'a [f32]>,
        p: &Params,
        n_threads: usize,
    ) -> Self {
        crate::init();
        unsafe {
            let mem = 16 * sys::ggml_tensor_overhead() + sys::ggml_graph_overhead() + 4096;
            let ctx = sys::ggml_init(sys::ggml_init_params {
                mem_size: mem,
                mem_buffer: std::ptr::null_mut(),
                no_alloc: true,
            });
            assert!(!ctx.is_null());
            let tq = new_view(ctx, q);
            let tk = new_view(ctx, k);
            let tv = new_view(ctx, v);
            let tm = mask
                .map(|m| new_view(ctx, m))
                .unwrap_or(std::ptr::null_mut());
            let out =
                sys::ggml_flash_attn_ext(ctx, tq, tk, tv, tm, p.scale, p.max_bias, p.logit_softcap);
            if p.precision == Precision::F32 {
                sys::ggml_flash_attn_ext_set_prec(out, sys::ggml_prec_GGML_PREC_F32);
            }
            if let Some(s) = sinks {
                let ts = sys::ggml_new_tensor_4d(
                    ctx,
                    GgmlType::F32 as sys::ggml_type,
                    q.ne[2] as i64,
                    1,
                    1,
                    1,
                );
                assert!(s.len() >= q.ne[2]);
                (*ts).data = s.as_ptr() as *mut _;
                sys::ggml_flash_attn_ext_add_sinks(out, ts);
            }
            let ne = (*out).ne;
            let out_ne = [
                ne[0] as usize,
                ne[1] as usize,
                ne[2] as usize,
                ne[3] as usize,
            ];
            let mut buf = vec![0f32; out_ne.iter().product()];
            (*out).data = buf.as_mut_ptr() as *mut _;
            let graph = sys::ggml_new_graph(ctx);
            sys::ggml_build_forward_expand(graph, out);
            let plan = sys::ggml_graph_plan(graph, n_threads as i32, std::ptr::null_mut());
            let work = vec![0u64; plan.work_size.div_ceil(8) + 8];
            RefAttn {
                ctx,
                graph,
                n_threads: n_threads as i32,
                work,
                out: buf,
                out_ne,
                _p: PhantomData,
            }
        }
    }

    /// Run the graph; returns the output `[DV, n_head, n_q, n_seq]` (contiguous).
    pub fn compute(&mut self) -> &[f32] {
        unsafe {
            let mut plan = sys::ggml_graph_plan(self.graph, self.n_threads, std::ptr::null_mut());
            assert!(plan.work_size <= self.work.len() * 8);
            plan.work_data = self.work.as_mut_ptr() as *mut u8;
            let st = sys::ggml_graph_compute(self.graph, &mut plan);
            assert_eq!(
                st,
                sys::ggml_status_GGML_STATUS_SUCCESS,
                "ggml_graph_compute failed"
            );
        }
        &self.out
    }
}

impl Drop for RefAttn<'_> {
    fn drop(&mut self) {
        unsafe { sys::ggml_free(self.ctx) };
    }
}

/// One-shot upstream FLASH_ATTN_EXT.
pub fn flash_attn_ext(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    sinks: Option<&[f32]>,
    p: &Params,
    n_threads: usize,
) -> Vec<f32> {
    let mut r = RefAttn::new(q, k, v, mask, sinks, p, n_threads);
    r.compute().to_vec()
}

fn f32_at(b: &[u8], off: usize) -> f32 {
    f32::from_le_bytes(b[off..off + 4].try_into().unwrap())
}

/// Float64 oracle with FLASH_ATTN_EXT's semantics: K/V rows dequantized with upstream's
/// `to_float`, Q as given (f32, not converted to K's vec_dot type), exact softmax (sinks join
/// the denominator), mask entries with `slope·mask = -inf` skipped, ALiBi slopes computed as
/// upstream computes them. Output `[DV, n_head, n_q, n_seq]`, contiguous.
pub fn oracle(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    sinks: Option<&[f32]>,
    p: &Params,
) -> Vec<f64> {
    let [dk, n_q, n_head, n_seq] = q.ne;
    let n_kv = k.ne[1];
    let dv = v.ne[0];
    let rk2 = n_head / k.ne[2];
    let rv2 = n_head / v.ne[2];
    let krb = k.ty.row_bytes(dk).unwrap();
    let vrb = v.ty.row_bytes(dv).unwrap();
    let n_head_log2 = 1u32 << (n_head as f64).log2().floor() as u32;
    let m0 = 2f32.powf(-(p.max_bias) / n_head_log2 as f32);
    let m1 = 2f32.powf(-(p.max_bias / 2.0) / n_head_log2 as f32);
    let mut out = vec![0f64; dv * n_head * n_q * n_seq];
    // dequantize each (seq, kv head) once
    let deq = |t: &Tensor, rb: usize, d: usize, h: usize, s: usize| -> Vec<f32> {
        let mut all = Vec::with_capacity(n_kv * d);
        for j in 0..n_kv {
            let off = j * t.nb[1] + h * t.nb[2] + s * t.nb[3];
            all.extend(crate::dequantize_row(t.ty, &t.data[off..off + rb], d));
        }
        all
    };
    for s in 0..n_seq {
        for hk in 0..k.ne[2] {
            let kd = deq(k, krb, dk, hk, s);
            for h in (hk * rk2)..((hk + 1) * rk2) {
                let vd = deq(v, vrb, dv, h / rv2, s);
                let slope = if p.max_bias > 0.0 {
                    let hh = h as u32;
                    if hh < n_head_log2 {
                        m0.powf((hh + 1) as f32)
                    } else {
                        m1.powf((2 * (hh - n_head_log2) + 1) as f32)
                    }
                } else {
                    1.0
                } as f64;
                for i in 0..n_q {
                    let qoff = i * q.nb[1] + h * q.nb[2] + s * q.nb[3];
                    let qr: Vec<f64> = (0..dk)
                        .map(|d| f32_at(q.data, qoff + 4 * d) as f64)
                        .collect();
                    let mut sc: Vec<(usize, f64)> = Vec::new();
                    for j in 0..n_kv {
                        let mv = match mask {
                            Some(m) => {
                                let off = j * 2
                                    + i * m.nb[1]
                                    + (h % m.ne[2]) * m.nb[2]
                                    + (s % m.ne[3]) * m.nb[3];
                                let hv = attnrot::quant::fp16::f16_to_f32(u16::from_le_bytes([
                                    m.data[off],
                                    m.data[off + 1],
                                ])) as f64;
                                slope * hv
                            }
                            None => 0.0,
                        };
                        if mv == f64::NEG_INFINITY {
                            continue;
                        }
                        let dot: f64 = (0..dk).map(|d| qr[d] * kd[j * dk + d] as f64).sum();
                        let mut x = dot * p.scale as f64;
                        if p.logit_softcap != 0.0 {
                            let c = p.logit_softcap as f64;
                            x = c * (dot * (p.scale as f64 / c)).tanh();
                        }
                        sc.push((j, x + mv));
                    }
                    let sink = sinks.map(|sk| sk[h] as f64);
                    let mx = sc
                        .iter()
                        .map(|x| x.1)
                        .chain(sink)
                        .fold(f64::NEG_INFINITY, f64::max);
                    if mx == f64::NEG_INFINITY {
                        continue; // no live entry: zeros
                    }
                    let mut den = sink.map(|x| (x - mx).exp()).unwrap_or(0.0);
                    let o = &mut out[((s * n_q + i) * n_head + h) * dv..][..dv];
                    for &(j, x) in &sc {
                        let w = (x - mx).exp();
                        den += w;
                        for d in 0..dv {
                            o[d] += w * vd[j * dv + d] as f64;
                        }
                    }
                    for x in o.iter_mut() {
                        *x /= den;
                    }
                }
            }
        }
    }
    out
}

/// Normalised mean squared error `Σ(a-b)² / Σ b²` (test-backend-ops' `nmse`; b = reference).
pub fn nmse(a: &[f32], b: &[f64]) -> f64 {
    let mut num = 0.0;
    let mut den = 0.0;
    for (x, y) in a.iter().zip(b) {
        let d = *x as f64 - y;
        num += d * d;
        den += y * y;
    }
    if den == 0.0 {
        if num == 0.0 {
            0.0
        } else {
            f64::INFINITY
        }
    } else {
        num / den
    }
}
