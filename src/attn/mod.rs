//! Flash attention over a quantized KV cache with ggml's `GGML_OP_FLASH_ATTN_EXT` semantics.
//!
//! Matches `ggml_flash_attn_ext` (ggml.c) and `ggml_compute_forward_flash_attn_ext_f16`
//! (ggml-cpu/ops.cpp) of the pinned ggml:
//!
//! * `q`    f32 `[DK, n_q, n_head, n_seq]` (rows contiguous; any strides otherwise),
//! * `k`    `[DK, n_kv, n_head_kv, n_seq]` in any KV type (f16, bf16, q8_0, q4_0, q4_1, q5_0,
//!   q5_1, iq4_nl, and f32), `v` `[DV, n_kv, n_head_v, n_seq]` likewise, independently;
//!   both may be non-contiguous views into a cache exactly as llama.cpp passes them
//!   (`llama_kv_cache::get_k` + `ggml_permute(0, 2, 1, 3)`),
//! * `mask` f16 `[≥ n_kv, ≥ n_q, n_head / b2, n_seq / b3]` (broadcast over heads/sequences),
//! * `sinks` f32 `[n_head]`,
//! * output f32 `[DV, n_head, n_q, n_seq]` (note the permuted layout, like upstream).
//!
//! For every query row: `s_j = scale·(q·k_j)` (or `softcap·tanh(scale/softcap·q·k_j)`), plus
//! `slope·mask_j` (ALiBi slope from `max_bias`, 1 otherwise); entries whose `slope·mask` is
//! `-inf` are skipped; output `Σ softmax(s)_j v_j` with the optional sink logit joining the
//! softmax denominator; a row with no live entry (and no sink) gives zeros.
//!
//! Numerics: upstream converts Q to K's `vec_dot_type` (f16, or q8_0/q8_1) and accumulates f16
//! V in an f16 vector. Here K/V values are exact (bit-identical to upstream's `to_float`) and
//! all accumulation is f32; Q stays f32, except in one case: decode (few query rows per KV
//! head) with q8_0/q4_0 K on AVX-512 VNNI or AVX2 and `Precision::Default`, where Q is
//! quantized to q8_0 exactly as upstream does (the CPU backend's `from_float`) and K·Q is
//! computed as exact integer block dots (`vpdpbusd`, or `maddubs` on AVX2), like upstream's
//! `vec_dot` (both ISAs give the same numbers). `Precision::F32` (what llama.cpp sets on every
//! FLASH_ATTN_EXT) keeps Q exact to ~2⁻¹⁵ of each block's largest value there, with a second
//! byte per Q element (`128·dot(q) + dot(lo)`, exact integers, the same numbers on both ISAs;
//! faster than the f32 kernel: q4_0 ~10 %, q8_0 7–12 % on AVX-512 VNNI, 15–23 % on AVX2),
//! elsewhere in f32. q8_0/q4_0 V in decode folds the block scale into the softmax weight (`(p·d)·q`
//! instead of `p·(q·d)`: one rounding moved); on AVX-512 VNNI those weights are rounded to 15
//! bits per tile, block and row (`vpdpwssd` sums of two rows at a time, exact in i32, one fma
//! per tile): NMSE vs an f64 oracle ~2e-9, against upstream's ~5e-6 (`tests/attn_diff.rs`).
//!
//! Work is split over (sequence, KV-head group, block of query rows) and, when there is only
//! one block of query rows and the KV is long, over fixed KV chunks of [`SPLIT_CHUNK`] rows
//! whose partial results are combined in chunk order. The split depends on shapes only,
//! never on the thread count, so the result is bit-identical for any `n_threads`. Decode
//! runs the KV-head groups of a chunk together, tile by tile (one pass over the cache rows
//! of a chunk, whose KV heads are adjacent in llama.cpp's cache), with fused kernels that
//! read f16/q8_0/q4_0 rows straight from the cache (AVX-512 and AVX2).
use crate::error::{Error, Result};
use crate::simd;
use crate::types::GgmlType;
use std::sync::atomic::{AtomicUsize, Ordering};

pub mod deq;
mod kernel;

use kernel::{Fused, Kernels, TILE_KV};

/// The bitmask of columns `0..n` (`n ≤ 64`).
fn low_bits(n: usize) -> u64 {
    if n >= 64 {
        u64::MAX
    } else {
        (1u64 << n) - 1
    }
}

/// 0, 1, …, TILE_KV - 1 (the active columns of a tile without masked columns).
const IOTA: [u8; TILE_KV] = {
    let mut a = [0u8; TILE_KV];
    let mut i = 0;
    while i < TILE_KV {
        a[i] = i as u8;
        i += 1;
    }
    a
};

/// KV rows per chunk of the split-KV (flash-decoding) path.
pub const SPLIT_CHUNK: usize = 512;
/// Target number of virtual rows (query rows × heads of a GQA group) per work item.
const TILE_M: usize = 64;
/// Work items with fewer (padded) virtual rows than this use row-major K tiles and dot
/// products (decode); others transpose K tiles for an outer-product GEMM (prefill).
const ROWMAJOR_BELOW: usize = 16;

/// `GGML_PREC_DEFAULT` / `GGML_PREC_F32` (`ggml_flash_attn_ext_set_prec`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    #[default]
    Default,
    F32,
}

/// The op parameters of FLASH_ATTN_EXT.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Params {
    /// Multiplies `q·k` (usually `1/sqrt(DK)`).
    pub scale: f32,
    /// ALiBi maximum bias (0 = off). Needs a mask.
    pub max_bias: f32,
    /// Logit soft cap (0 = off).
    pub logit_softcap: f32,
    pub precision: Precision,
}

impl Params {
    pub fn new(scale: f32) -> Self {
        Params {
            scale,
            max_bias: 0.0,
            logit_softcap: 0.0,
            precision: Precision::Default,
        }
    }
}

/// A ggml-style strided 4-D tensor over bytes: `ne` elements, `nb` byte strides (`nb[0]` =
/// bytes of one element/block, like ggml), element `(i0,i1,i2,i3)` of row `(i1,i2,i3)` at byte
/// `i1*nb[1] + i2*nb[2] + i3*nb[3]` (+ its place inside the contiguous row).
#[derive(Debug, Clone, Copy)]
pub struct Tensor<'a> {
    pub data: &'a [u8],
    pub ty: GgmlType,
    pub ne: [usize; 4],
    pub nb: [usize; 4],
}

/// Contiguous strides of a `ty` tensor of shape `ne` (`ggml_new_tensor`'s), or an error.
pub fn contiguous_strides(ty: GgmlType, ne: [usize; 4]) -> Result<[usize; 4]> {
    let row = ty.row_bytes(ne[0])?;
    let nb1 = row;
    let nb2 = nb1.checked_mul(ne[1]).ok_or(Error::Overflow)?;
    let nb3 = nb2.checked_mul(ne[2]).ok_or(Error::Overflow)?;
    Ok([ty.block_bytes(), nb1, nb2, nb3])
}

impl<'a> Tensor<'a> {
    /// A contiguous tensor (ggml's default layout).
    pub fn contiguous(data: &'a [u8], ty: GgmlType, ne: [usize; 4]) -> Result<Self> {
        Ok(Tensor {
            data,
            ty,
            ne,
            nb: contiguous_strides(ty, ne)?,
        })
    }

    /// A contiguous f32 tensor over a float slice.
    pub fn from_f32(data: &'a [f32], ne: [usize; 4]) -> Result<Self> {
        Self::contiguous(f32_bytes(data), GgmlType::F32, ne)
    }

    /// A contiguous f16 tensor over raw half bits (e.g. a mask).
    pub fn from_f16_bits(data: &'a [u16], ne: [usize; 4]) -> Result<Self> {
        // SAFETY: u16 has no padding; reading it as bytes is always valid.
        let b = unsafe {
            std::slice::from_raw_parts(data.as_ptr() as *const u8, std::mem::size_of_val(data))
        };
        Self::contiguous(b, GgmlType::F16, ne)
    }
}

/// The output: f32 `[DV, n_head, n_q, n_seq]`, strides in bytes (`nb[0]` must be 4).
#[derive(Debug)]
pub struct TensorMut<'a> {
    pub data: &'a mut [u8],
    pub ne: [usize; 4],
    pub nb: [usize; 4],
}

impl<'a> TensorMut<'a> {
    pub fn from_f32(data: &'a mut [f32], ne: [usize; 4]) -> Result<Self> {
        let nb = contiguous_strides(GgmlType::F32, ne)?;
        // SAFETY: f32 has no invalid bit patterns; the borrow is unique.
        let b = unsafe {
            std::slice::from_raw_parts_mut(
                data.as_mut_ptr() as *mut u8,
                std::mem::size_of_val(data),
            )
        };
        Ok(TensorMut { data: b, ne, nb })
    }
}

fn f32_bytes(x: &[f32]) -> &[u8] {
    // SAFETY: f32 has no padding.
    unsafe { std::slice::from_raw_parts(x.as_ptr() as *const u8, std::mem::size_of_val(x)) }
}

fn bad(s: impl Into<String>) -> Error {
    Error::BadShape(s.into())
}

/// Checks that every row of `t` lies inside its slice and rows are contiguous. Returns the row bytes.
fn check_tensor(
    what: &str,
    t: &Tensor,
    ne: [usize; 4],
    nb: [usize; 4],
    ty: GgmlType,
    len: usize,
) -> Result<usize> {
    let _ = t;
    let row = ty.row_bytes(ne[0]).map_err(|_| {
        bad(format!(
            "{what}: ne[0] = {} is not a multiple of {ty}'s block size {}",
            ne[0],
            ty.block_size()
        ))
    })?;
    if nb[0] != ty.block_bytes() {
        return Err(bad(format!(
            "{what}: rows must be contiguous (nb[0] = {}, {ty} needs {})",
            nb[0],
            ty.block_bytes()
        )));
    }
    if ne.contains(&0) {
        return Ok(row);
    }
    let mut end = row;
    for i in 1..4 {
        end = (ne[i] - 1)
            .checked_mul(nb[i])
            .and_then(|x| x.checked_add(end))
            .ok_or(Error::Overflow)?;
    }
    if end > len {
        return Err(Error::BufferTooSmall {
            what: leak_name(what),
            need: end,
            have: len,
        });
    }
    Ok(row)
}

fn leak_name(what: &str) -> &'static str {
    match what {
        "q" => "q",
        "k" => "k",
        "v" => "v",
        "mask" => "mask",
        "dst" => "dst",
        _ => "tensor",
    }
}

/// Everything the workers need, validated.
struct Plan<'a> {
    q: Tensor<'a>,
    k: Tensor<'a>,
    v: Tensor<'a>,
    mask: Option<Tensor<'a>>,
    sinks: Option<&'a [f32]>,
    dk: usize,
    dv: usize,
    dvp: usize,
    n_kv: usize,
    n_q: usize,
    n_head: usize,
    n_seq: usize,
    /// Query heads per work item (a GQA group when K and V have the same head count).
    g: usize,
    /// Query rows per work item.
    r: usize,
    n_groups: usize,
    n_qblocks: usize,
    n_chunks: usize,
    chunk: usize,
    scale: f32,
    softcap: f32,
    max_bias: f32,
    precision: Precision,
    m0: f32,
    m1: f32,
    n_head_log2: u32,
    dst_nb: [usize; 4],
}

/// Validates shapes, types, strides and bounds (upstream's asserts plus buffer checks).
// the tensors and destination layout of one ggml_flash_attn_ext node, as the callers hold them
#[allow(clippy::too_many_arguments)]
fn plan<'a>(
    q: &Tensor<'a>,
    k: &Tensor<'a>,
    v: &Tensor<'a>,
    mask: Option<&Tensor<'a>>,
    sinks: Option<&'a [f32]>,
    p: &Params,
    dst_ne: [usize; 4],
    dst_nb: [usize; 4],
    dst_len: usize,
) -> Result<Plan<'a>> {
    if q.ty != GgmlType::F32 {
        return Err(Error::UnsupportedType(q.ty));
    }
    for t in [k.ty, v.ty] {
        if deq::select(t).is_none() {
            return Err(Error::UnsupportedType(t));
        }
    }
    let [dk, n_q, n_head, n_seq] = q.ne;
    let [dk2, n_kv, n_head_k, n_seq_k] = k.ne;
    let [dv, n_kv_v, n_head_v, n_seq_v] = v.ne;
    if dk2 != dk {
        return Err(bad(format!("K head size {dk2} != Q head size {dk}")));
    }
    if n_kv_v != n_kv {
        return Err(bad(format!("V has {n_kv_v} rows, K has {n_kv}")));
    }
    if dk == 0 || dv == 0 {
        return Err(bad("head size 0"));
    }
    // n_head == 0 too: an attention without query heads is rejected, not divided by
    if n_head == 0
        || n_head_k == 0
        || n_head_v == 0
        || n_head % n_head_k != 0
        || n_head % n_head_v != 0
    {
        return Err(bad(format!(
            "query heads {n_head} must be a multiple of K heads {n_head_k} and V heads {n_head_v}"
        )));
    }
    if n_seq_k != n_seq || n_seq_v != n_seq {
        return Err(bad(format!(
            "sequences differ: q {n_seq}, k {n_seq_k}, v {n_seq_v}"
        )));
    }
    if !p.scale.is_finite()
        || !p.max_bias.is_finite()
        || !p.logit_softcap.is_finite()
        || p.max_bias < 0.0
    {
        return Err(Error::BadParam(format!(
            "scale {}, max_bias {}, logit_softcap {}",
            p.scale, p.max_bias, p.logit_softcap
        )));
    }
    if p.max_bias > 0.0 && mask.is_none() {
        return Err(Error::BadParam("max_bias > 0 needs a mask".into()));
    }
    check_tensor("q", q, q.ne, q.nb, GgmlType::F32, q.data.len())?;
    check_tensor("k", k, k.ne, k.nb, k.ty, k.data.len())?;
    check_tensor("v", v, v.ne, v.nb, v.ty, v.data.len())?;
    if let Some(m) = mask {
        if m.ty != GgmlType::F16 {
            return Err(Error::UnsupportedType(m.ty));
        }
        if m.ne[0] < n_kv {
            return Err(bad(format!("mask has {} columns, n_kv is {n_kv}", m.ne[0])));
        }
        if m.ne[1] < n_q {
            return Err(bad(format!("mask has {} rows, n_q is {n_q}", m.ne[1])));
        }
        if m.ne[2] == 0 || m.ne[3] == 0 || n_head % m.ne[2] != 0 || n_seq % m.ne[3] != 0 {
            return Err(bad(format!(
                "mask dims 2,3 ({}, {}) must divide ({n_head}, {n_seq})",
                m.ne[2], m.ne[3]
            )));
        }
        check_tensor("mask", m, m.ne, m.nb, GgmlType::F16, m.data.len())?;
    }
    if let Some(s) = sinks {
        if s.len() < n_head {
            return Err(bad(format!(
                "sinks has {} values, need one per head ({n_head})",
                s.len()
            )));
        }
    }
    if dst_ne != [dv, n_head, n_q, n_seq] {
        return Err(bad(format!(
            "dst shape {dst_ne:?}, expected {:?}",
            [dv, n_head, n_q, n_seq]
        )));
    }
    // dst rows must not overlap: concurrent workers write disjoint rows.
    if dst_nb[0] != 4
        || dst_nb[1] < dv * 4
        || dst_nb[2] < n_head.saturating_mul(dst_nb[1])
        || dst_nb[3] < n_q.saturating_mul(dst_nb[2])
    {
        return Err(bad(format!(
            "dst strides {dst_nb:?} overlap or are not f32 rows"
        )));
    }
    let dtmp = Tensor {
        data: &[],
        ty: GgmlType::F32,
        ne: dst_ne,
        nb: dst_nb,
    };
    check_tensor("dst", &dtmp, dst_ne, dst_nb, GgmlType::F32, dst_len)?;

    let (g, n_groups) = if n_head_k == n_head_v {
        (n_head / n_head_k, n_head_k)
    } else {
        (1, n_head)
    };
    let r = (TILE_M / g).max(1).min(n_q.max(1));
    let n_qblocks = n_q.div_ceil(r);
    let (n_chunks, chunk) = if n_qblocks == 1 && n_kv >= 2 * SPLIT_CHUNK {
        (n_kv.div_ceil(SPLIT_CHUNK), SPLIT_CHUNK)
    } else {
        (1, n_kv.max(1))
    };

    let mut scale = p.scale;
    if p.logit_softcap != 0.0 {
        scale /= p.logit_softcap;
    }
    let n_head_log2 = if n_head == 0 {
        1
    } else {
        1u32 << (n_head as f64).log2().floor() as u32
    };
    let m0 = 2f32.powf(-(p.max_bias) / n_head_log2 as f32);
    let m1 = 2f32.powf(-(p.max_bias / 2.0) / n_head_log2 as f32);
    Ok(Plan {
        q: *q,
        k: *k,
        v: *v,
        mask: mask.copied(),
        sinks,
        dk,
        dv,
        dvp: dv.div_ceil(16) * 16,
        n_kv,
        n_q,
        n_head,
        n_seq,
        g,
        r,
        n_groups,
        n_qblocks,
        n_chunks,
        chunk,
        scale,
        softcap: p.logit_softcap,
        max_bias: p.max_bias,
        precision: p.precision,
        m0,
        m1,
        n_head_log2,
        dst_nb,
    })
}

impl Plan<'_> {
    /// ALiBi slope of head `h` (as `ggml_compute_forward_flash_attn_ext_f16_one_chunk`).
    fn slope(&self, h: usize) -> f32 {
        if self.max_bias > 0.0 {
            let h = h as u32;
            if h < self.n_head_log2 {
                self.m0.powf((h + 1) as f32)
            } else {
                self.m1.powf((2 * (h - self.n_head_log2) + 1) as f32)
            }
        } else {
            1.0
        }
    }

    /// Query heads of group `gi`.
    fn heads(&self, gi: usize) -> std::ops::Range<usize> {
        gi * self.g..(gi + 1) * self.g
    }
}

/// One virtual row of a work item.
#[derive(Clone, Copy)]
struct VRow {
    head: usize,
    iq1: usize,
    slope: f32,
    /// Byte offset of this row's mask row, if masked.
    mask_off: Option<usize>,
}

/// Per-worker scratch.
struct Scratch {
    q: Vec<f32>,
    o: Vec<f32>,
    mrow: Vec<f32>,
    srow: Vec<f32>,
    rows: Vec<VRow>,
    /// Q quantized for the int8 decode K kernel: quants, block scales, offset sums.
    q8: Vec<i8>,
    qd: Vec<f32>,
    qc: Vec<i32>,
    /// The second Q byte and combined corrections (`Precision::F32`, [`Kernels::prep_q8_lo`]).
    q8lo: Vec<i8>,
    qcc: Vec<i32>,
    /// The item (sequence, KV-head group, query block) whose Q rows `q` and quantization hold.
    qkey: Option<(usize, usize, usize)>,
}

/// Per-worker tile buffers (used within one tile step of one item). `kt`, `kr` and `vt` (the
/// dequantized K and V tiles) start empty and get their size, zeroed, on first use: the fused
/// decode kernels read the cache directly and never need them, and allocating and zeroing
/// them per call cost ~1.5 % of a decode call at n_kv 4096.
struct TileBufs {
    kt: Vec<f32>,
    s: Vec<f32>,
    vt: Vec<f32>,
    mv: Vec<f32>,
    /// The mask row (of `mv`) of each query row.
    mi: Vec<u32>,
    /// Per row: the factor the softmax step scaled the row's earlier sums by.
    ms: Vec<f32>,
    kr: Vec<f32>,
    /// Weights of the quantized decode V kernel.
    w: kernel::WeightScratch,
    /// One dequantized V row (the finiteness check of partly masked columns).
    vrow: Vec<f32>,
}

/// `v` with at least `n` elements (new ones zero).
fn sized(v: &mut Vec<f32>, n: usize) {
    if v.len() < n {
        v.resize(n, 0.0);
    }
}

/// The (M, S, O) state of one work item after a KV range.
struct Partial {
    m: Vec<f32>,
    s: Vec<f32>,
    o: Vec<f32>,
}

struct Item {
    iq3: usize,
    gi: usize,
    qb: usize,
    chunk: usize,
}

#[derive(Clone, Copy)]
struct DstPtr(*mut u8);
// SAFETY: workers write disjoint rows (validated non-overlapping strides; each (head, row,
// seq) is finalized by exactly one item).
unsafe impl Send for DstPtr {}
unsafe impl Sync for DstPtr {}

fn read_f32(b: &[u8], off: usize) -> f32 {
    f32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

impl Plan<'_> {
    fn vrows(&self, it: &Item, out: &mut Vec<VRow>) {
        out.clear();
        let q0 = it.qb * self.r;
        let q1 = (q0 + self.r).min(self.n_q);
        for iq1 in q0..q1 {
            for head in self.heads(it.gi) {
                let mask_off = self.mask.as_ref().map(|m| {
                    iq1 * m.nb[1] + (head % m.ne[2]) * m.nb[2] + (it.iq3 % m.ne[3]) * m.nb[3]
                });
                out.push(VRow {
                    head,
                    iq1,
                    slope: self.slope(head),
                    mask_off,
                });
            }
        }
    }

    fn scratch(&self) -> Scratch {
        let mmax = (self.r * self.g).div_ceil(4) * 4;
        Scratch {
            q: vec![0.0; mmax * self.dk],
            o: vec![0.0; mmax * self.dvp],
            mrow: vec![0.0; mmax],
            srow: vec![0.0; mmax],
            rows: Vec::with_capacity(mmax),
            q8: vec![0; mmax * self.dk],
            qd: vec![0.0; mmax * self.dk.div_ceil(32)],
            qc: vec![0; mmax * self.dk.div_ceil(32)],
            qkey: None,
            q8lo: vec![0; mmax * self.dk],
            qcc: vec![0; mmax * self.dk.div_ceil(32)],
        }
    }

    fn tile_bufs(&self) -> TileBufs {
        let mmax = (self.r * self.g).div_ceil(4) * 4;
        TileBufs {
            kt: Vec::new(),
            s: vec![0.0; mmax * TILE_KV],
            vt: Vec::new(),
            mv: vec![0.0; mmax * TILE_KV],
            mi: vec![0; mmax],
            ms: vec![1.0; mmax],
            kr: Vec::new(),
            w: kernel::WeightScratch::new(mmax, self.dv.div_ceil(32)),
            vrow: vec![0.0; self.dv],
        }
    }

    /// Runs work items `its` (same sequence, query block and KV chunk; consecutive KV-head
    /// groups) over their KV range, tile by tile across the items, so that the rows of all
    /// their KV heads at a position (adjacent in llama.cpp's cache) are read together. Leaves
    /// each item's (M, S, O) and rows in its scratch. The numbers of each item do not depend
    /// on which other items run with it.
    // the per-call kernel choices and buffers are all distinct; a struct would only wrap them
    #[allow(clippy::too_many_arguments)]
    fn run_items(
        &self,
        kn: &Kernels,
        deq_k: deq::DeqFn,
        deq_v: deq::DeqFn,
        fused: (Option<Fused>, Option<Fused>),
        its: &[Item],
        scs: &mut [Scratch],
        tb: &mut TileBufs,
    ) {
        let (dk, dvp) = (self.dk, self.dvp);
        let krow_bytes = self.k.ty.row_bytes(dk).unwrap_or(0);
        let vrow_bytes = self.v.ty.row_bytes(self.dv).unwrap_or(0);
        // the int8 decode K kernel's format (q8_0/q4_0 K on AVX2 / AVX-512 VNNI)
        let kq = kn.int8_fmt(self.k.ty, dk);
        // the quantized decode V kernel's format (q8_0/q4_0 V on AVX2 / AVX-512)
        let vq = kn.pv_q_fmt(self.v.ty, self.dv);
        // prefetch distances of the fused decode kernels (rows ahead in each stream)
        let (pf_k, pf_v) = (prefetch_rows(self.k.nb[1]), prefetch_rows(self.v.nb[1]));
        let mut ctx = Vec::with_capacity(its.len());
        for (it, sc) in its.iter().zip(scs.iter_mut()) {
            let mut rows = std::mem::take(&mut sc.rows);
            self.vrows(it, &mut rows);
            let m_real = rows.len();
            let mp = m_real.div_ceil(4) * 4;
            let decode = mp < ROWMAJOR_BELOW;
            // Precision::F32 keeps Q exact to ~2⁻¹⁵ with a second byte where the ISA has it
            let exact_q = self.precision == Precision::F32;
            let int8_k = decode && kq.is_some_and(|f| !exact_q || kn.int8_k_lo(f));
            // Q rows and their quantization: once per (sequence, group, query block) in this
            // worker — the next KV chunk of the same group finds them in the same scratch
            let key = (it.iq3, it.gi, it.qb);
            let fresh = sc.qkey != Some(key);
            sc.qkey = Some(key);
            if fresh {
                // Q rows (f32, contiguous within a row), padded rows zero.
                for (m, vr) in rows.iter().enumerate() {
                    let off =
                        vr.iq1 * self.q.nb[1] + vr.head * self.q.nb[2] + it.iq3 * self.q.nb[3];
                    for d in 0..dk {
                        sc.q[m * dk + d] = read_f32(self.q.data, off + 4 * d);
                    }
                }
                sc.q[m_real * dk..mp * dk].fill(0.0);
            }
            if let (true, true, Some(f)) = (fresh, int8_k, kq) {
                kn.prep_q8(f, &sc.q, m_real, dk, &mut sc.q8, &mut sc.qd, &mut sc.qc);
                if exact_q {
                    kn.prep_q8_lo(
                        f,
                        &sc.q,
                        m_real,
                        dk,
                        &sc.q8,
                        &sc.qd,
                        &sc.qc,
                        &mut sc.q8lo,
                        &mut sc.qcc,
                    );
                }
            }
            sc.o[..mp * dvp].fill(0.0);
            sc.mrow[..mp].fill(f32::NEG_INFINITY);
            sc.srow[..mp].fill(0.0);
            // K/V heads of this group (all heads of a group share them).
            let h0 = rows.first().map(|r| r.head).unwrap_or(0);
            let ik2 = h0 / (self.n_head / self.k.ne[2]);
            let iv2 = h0 / (self.n_head / self.v.ne[2]);
            let kbase = ik2 * self.k.nb[2] + it.iq3 * self.k.nb[3];
            let vbase = iv2 * self.v.nb[2] + it.iq3 * self.v.nb[3];

            ctx.push((rows, m_real, mp, decode, int8_k, kbase, vbase));
        }
        let c0 = its[0].chunk * self.chunk;
        let c1 = (c0 + self.chunk).min(self.n_kv);
        let mut active: Vec<u8> = Vec::with_capacity(TILE_KV);
        let mut t0 = c0;
        while t0 < c1 {
            let tl = (c1 - t0).min(TILE_KV);
            for (cx, sc) in ctx.iter().zip(scs.iter_mut()) {
                let (rows, m_real, mp, decode, int8_k, kbase, vbase) =
                    (&cx.0, cx.1, cx.2, cx.3, cx.4, cx.5, cx.6);
                // mask values (slope·mask), -inf for masked and for columns past the tile; row
                // m reads mask row mi[m] (the heads of a GQA group under a broadcast mask share
                // one). Bit t: column t is live for some row / hidden (-inf) from some row.
                let (mut col_live, mut col_hidden) = (0u64, 0u64);
                let mut nomask_row = None;
                for (m, vr) in rows.iter().enumerate() {
                    let mv = &mut tb.mv[m * TILE_KV..(m + 1) * TILE_KV];
                    match (vr.mask_off, self.mask.as_ref()) {
                        (Some(off), Some(mk)) => {
                            let same = m.checked_sub(1).filter(|&p| {
                                rows[p].mask_off == vr.mask_off
                                    && rows[p].slope.to_bits() == vr.slope.to_bits()
                            });
                            if let Some(p) = same {
                                tb.mi[m] = tb.mi[p];
                                continue;
                            }
                            let src = off + 2 * t0;
                            let (l, h) = kn.mask_tile(&mk.data[src..src + 2 * tl], vr.slope, mv);
                            col_live |= l;
                            col_hidden |= h;
                            tb.mi[m] = m as u32;
                        }
                        _ => {
                            if let Some(p) = nomask_row {
                                tb.mi[m] = p;
                                continue;
                            }
                            mv[..tl].fill(0.0);
                            mv[tl..].fill(f32::NEG_INFINITY);
                            col_live |= low_bits(tl);
                            tb.mi[m] = m as u32;
                            nomask_row = Some(m as u32);
                        }
                    }
                }
                let any_hidden = col_hidden != 0;
                active.clear();
                if col_live == low_bits(tl) {
                    active.extend_from_slice(&IOTA[..tl]);
                } else {
                    let mut b = col_live;
                    while b != 0 {
                        active.push(b.trailing_zeros() as u8);
                        b &= b - 1;
                    }
                }
                if active.is_empty() {
                    continue;
                }
                if let (true, Some(f)) = (int8_k, kq) {
                    // decode, q8_0/q4_0 K: integer dots against the quantized Q
                    kn.qk_i8(
                        f,
                        &sc.q8,
                        &sc.qd,
                        &sc.qc,
                        self.k.data,
                        kbase + t0 * self.k.nb[1],
                        self.k.nb[1],
                        &active,
                        &mut tb.s,
                        m_real,
                        dk,
                        pf_k,
                        (self.precision == Precision::F32).then_some((&sc.q8lo[..], &sc.qcc[..])),
                    );
                } else if let (true, Some(f)) = (decode, fused.0) {
                    // decode, K read straight from the cache
                    kn.qk_fused(
                        f,
                        &sc.q,
                        self.k.data,
                        kbase + t0 * self.k.nb[1],
                        self.k.nb[1],
                        &active,
                        &mut tb.s,
                        m_real,
                        dk,
                        pf_k,
                    );
                    // the padding rows (a tiled V pass reads them): no weight
                    tb.s[m_real * TILE_KV..mp * TILE_KV].fill(0.0);
                } else if decode {
                    // few rows (decode): K tile row-major, dot products
                    sized(&mut tb.kt, dk * TILE_KV);
                    for &t in &active {
                        let t = t as usize;
                        let off = kbase + (t0 + t) * self.k.nb[1];
                        deq_k(
                            &self.k.data[off..off + krow_bytes],
                            &mut tb.kt[t * dk..(t + 1) * dk],
                        );
                    }
                    kn.qk_rows(&sc.q, &tb.kt, &mut tb.s, mp, dk);
                } else {
                    // K tile, transposed, for the outer-product tile GEMM (rows of inactive
                    // columns keep stale values: their scores are -inf whatever they hold)
                    sized(&mut tb.kr, TILE_KV * dk);
                    sized(&mut tb.kt, dk * TILE_KV);
                    for &t in &active {
                        let t = t as usize;
                        let off = kbase + (t0 + t) * self.k.nb[1];
                        deq_k(
                            &self.k.data[off..off + krow_bytes],
                            &mut tb.kr[t * dk..(t + 1) * dk],
                        );
                    }
                    kn.transpose(&tb.kr, &mut tb.kt, dk);
                    kn.qk(&sc.q, &tb.kt, &mut tb.s, mp, dk);
                }
                // online softmax; a row whose max grew rescales its earlier output
                kn.softmax(
                    &mut tb.s,
                    &tb.mv,
                    &tb.mi[..m_real],
                    self.scale,
                    self.softcap,
                    &mut sc.mrow,
                    &mut sc.srow,
                    &mut tb.ms,
                );
                for (m, &f) in tb.ms[..m_real].iter().enumerate() {
                    if f != 1.0 {
                        for x in &mut sc.o[m * dvp..(m + 1) * dvp] {
                            *x *= f;
                        }
                    }
                }
                // A V row that some rows see and others do not: upstream skips a masked
                // position without reading its row, a tile kernel multiplies it by p = 0, which
                // a NaN/Inf in the row turns into NaN. Such rows (only if not all finite) leave
                // the tile and are added below, for the rows that see them.
                let tiled_v = !(decode && (vq.is_some() || fused.1.is_some()));
                if tiled_v {
                    // V tile (dequantized rows of the active columns)
                    sized(&mut tb.vt, TILE_KV * dvp);
                    for &t in &active {
                        let t = t as usize;
                        let off = vbase + (t0 + t) * self.v.nb[1];
                        deq_v(
                            &self.v.data[off..off + vrow_bytes],
                            &mut tb.vt[t * dvp..t * dvp + self.dv],
                        );
                    }
                }
                let mut odd: Vec<(u8, Vec<f32>)> = Vec::new();
                for &t in active.iter().filter(|_| any_hidden) {
                    let tu = t as usize;
                    if col_hidden >> tu & 1 == 0 {
                        continue;
                    }
                    let row: &[f32] = if tiled_v {
                        &tb.vt[tu * dvp..tu * dvp + self.dv]
                    } else {
                        let off = vbase + (t0 + tu) * self.v.nb[1];
                        deq_v(&self.v.data[off..off + vrow_bytes], &mut tb.vrow);
                        &tb.vrow
                    };
                    if !row.iter().all(|x| x.is_finite()) {
                        odd.push((t, row.to_vec()));
                    }
                }
                if !odd.is_empty() {
                    active.retain(|t| !odd.iter().any(|(o, _)| o == t));
                }
                if active.is_empty() {
                    // only odd rows in this tile
                } else if let (true, Some(f)) = (decode, vq) {
                    kn.pv_q(
                        f,
                        &tb.s,
                        self.v.data,
                        vbase + t0 * self.v.nb[1],
                        self.v.nb[1],
                        &active,
                        &mut tb.w,
                        &mut sc.o,
                        m_real,
                        dvp,
                        self.dv,
                        pf_v,
                        true,
                    );
                } else if let (true, Some(f)) = (decode, fused.1) {
                    kn.pv_fused(
                        f,
                        &tb.s,
                        self.v.data,
                        vbase + t0 * self.v.nb[1],
                        self.v.nb[1],
                        &active,
                        &mut sc.o,
                        m_real,
                        dvp,
                        self.dv,
                        pf_v,
                    );
                } else {
                    // the V tile was dequantized above
                    kn.pv(&tb.s, &tb.vt, &mut sc.o, mp, dvp, &active);
                }
                for (t, row) in &odd {
                    let t = *t as usize;
                    for m in 0..m_real {
                        if tb.mv[tb.mi[m] as usize * TILE_KV + t] == f32::NEG_INFINITY {
                            continue;
                        }
                        let p = tb.s[m * TILE_KV + t];
                        for (o, v) in sc.o[m * dvp..m * dvp + self.dv].iter_mut().zip(row) {
                            *o = p.mul_add(*v, *o);
                        }
                    }
                }
            }
            t0 += TILE_KV;
        }
        for (cx, sc) in ctx.into_iter().zip(scs.iter_mut()) {
            sc.rows = cx.0;
        }
    }

    /// Sinks, normalisation and the store of one item's rows.
    fn finish(&self, it: &Item, rows: &[VRow], mrow: &[f32], srow: &[f32], o: &[f32], dst: DstPtr) {
        let dvp = self.dvp;
        let mut buf = vec![0f32; self.dv];
        for (m, vr) in rows.iter().enumerate() {
            let mut mx = mrow[m];
            let mut s = srow[m];
            buf.copy_from_slice(&o[m * dvp..m * dvp + self.dv]);
            if let Some(sk) = self.sinks {
                let x = sk[vr.head];
                if x > mx {
                    let ms = (mx - x).exp();
                    for b in buf.iter_mut() {
                        *b *= ms;
                    }
                    s = s * ms + 1.0;
                    mx = x;
                } else {
                    s += (x - mx).exp();
                }
            }
            let _ = mx;
            let inv = if s == 0.0 { 0.0 } else { 1.0 / s };
            let off = vr.head * self.dst_nb[1] + vr.iq1 * self.dst_nb[2] + it.iq3 * self.dst_nb[3];
            for (d, b) in buf.iter().enumerate() {
                let bytes = (b * inv).to_le_bytes();
                // SAFETY: bounds validated in `plan`; rows of distinct (head, iq1, iq3) are
                // disjoint and each is written by exactly one item.
                unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), dst.0.add(off + 4 * d), 4) };
            }
        }
    }
}

/// Default prefetch distance of the fused decode kernels: one tile ([`TILE_KV`] rows) ahead,
/// into L2 ([`crate::simd`]'s `prefetch_row`), at most [`prefetch_cap`] bytes of the cache stream
/// (the row stride counts all KV heads of a position) and at least [`PREFETCH_MIN`] rows.
/// Measured on Zen 4 (`benches/attn.rs`, n_kv 32768, 1 thread, 3 runs each): 64 rows ahead
/// into L2 against 16–128 rows ~32 KiB ahead into L1 made f16 head 128 with 8 KV heads
/// 17.2 → 9.6 ms, q8_0 13.1 → 9.2 ms, f16 head 64 2.2 → 1.6 ms; 32 rows were slower than 64,
/// 128 no faster.
const PREFETCH_ROWS: usize = TILE_KV;
/// The most a stream is prefetched ahead when the L2 size is unknown, in bytes (a quarter of a
/// 1 MiB L2); see [`prefetch_cap`].
const PREFETCH_BYTES: usize = 256 << 10;
const PREFETCH_MIN: usize = 8;

/// The most one stream (K or V) is prefetched ahead: a quarter of this CPU's L2 (Linux sysfs,
/// read once), so that both streams stay within half of it; [`PREFETCH_BYTES`] if unknown.
fn prefetch_cap() -> usize {
    static CAP: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CAP.get_or_init(|| {
        l2_bytes()
            .map(|b| (b / 4).clamp(16 << 10, 1 << 20))
            .unwrap_or(PREFETCH_BYTES)
    })
}

/// The L2 size of cpu0 from sysfs (`cache/index*/level` = 2, data or unified), if readable.
fn l2_bytes() -> Option<usize> {
    let dir = std::path::Path::new("/sys/devices/system/cpu/cpu0/cache");
    for e in std::fs::read_dir(dir).ok()?.flatten() {
        let read = |f: &str| std::fs::read_to_string(e.path().join(f)).ok();
        let level = read("level")?;
        let ty = read("type")?;
        if level.trim() != "2" || ty.trim() == "Instruction" {
            continue;
        }
        return parse_cache_size(&read("size")?);
    }
    None
}

/// A sysfs cache size (`1024K`, `2M`, `512`) in bytes.
fn parse_cache_size(s: &str) -> Option<usize> {
    let s = s.trim();
    let (num, mult) = if let Some(n) = s.strip_suffix('K') {
        (n, 1 << 10)
    } else if let Some(n) = s.strip_suffix('M') {
        (n, 1 << 20)
    } else {
        (s, 1)
    };
    num.parse::<usize>().ok()?.checked_mul(mult)
}

/// Prefetch distance in rows of the fused decode kernels for a cache row stride of `nb1`
/// bytes (0 = off): from [`PREFETCH_ROWS`] and [`PREFETCH_BYTES`], or `ATTNROT_PF` rows when
/// set (read once; for tuning on other machines).
fn prefetch_rows(nb1: usize) -> usize {
    static PF: AtomicUsize = AtomicUsize::new(usize::MAX - 1);
    let mut v = PF.load(Ordering::Relaxed);
    if v == usize::MAX - 1 {
        // usize::MAX: not set
        v = std::env::var("ATTNROT_PF")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(usize::MAX);
        PF.store(v, Ordering::Relaxed);
    }
    if v != usize::MAX {
        return v;
    }
    (prefetch_cap() / nb1.max(1)).clamp(PREFETCH_MIN, PREFETCH_ROWS)
}

/// FLASH_ATTN_EXT on ggml-style tensors. `n_threads` ≥ 1 (the result does not depend on it);
/// the threads are the caller and workers of a pool kept between calls ([`crate::par::Pooled`]).
#[allow(clippy::too_many_arguments)]
pub fn flash_attn_ext(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    sinks: Option<&[f32]>,
    params: &Params,
    dst: &mut TensorMut,
    n_threads: usize,
) -> Result<()> {
    if n_threads == 0 {
        return Err(Error::BadParam("n_threads must be at least 1".into()));
    }
    let team = crate::par::Pooled::new(n_threads);
    flash_attn_ext_team(q, k, v, mask, sinks, params, dst, &team)
}

/// [`flash_attn_ext`] on the threads of `team` (the result does not depend on the team). With
/// a single batch of work, or a team of one, everything runs on the calling thread.
#[allow(clippy::too_many_arguments)]
pub fn flash_attn_ext_team(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    sinks: Option<&[f32]>,
    params: &Params,
    dst: &mut TensorMut,
    team: &dyn crate::par::Team,
) -> Result<()> {
    let n_threads = team.size().max(1);
    let pl = plan(q, k, v, mask, sinks, params, dst.ne, dst.nb, dst.data.len())?;
    let isa = simd::isa();
    let kn = Kernels::new(isa);
    let deq_k = deq::select(k.ty).ok_or(Error::UnsupportedType(k.ty))?;
    let deq_v = deq::select(v.ty).ok_or(Error::UnsupportedType(v.ty))?;
    let fused = (kn.fused(k.ty, pl.dk), kn.fused(v.ty, pl.dv));
    if pl.n_q == 0 || pl.n_head == 0 || pl.n_seq == 0 {
        return Ok(());
    }
    // Work items, KV chunk before KV-head group: the items of one chunk read the same cache
    // rows (llama.cpp's cache interleaves the KV heads of a position), so consecutive items
    // find them in the caches. Index: `((iq3·n_qblocks + qb)·n_chunks + chunk)·n_groups + gi`.
    let mut items = Vec::new();
    for iq3 in 0..pl.n_seq {
        for qb in 0..pl.n_qblocks {
            for chunk in 0..pl.n_chunks {
                for gi in 0..pl.n_groups {
                    items.push(Item { iq3, gi, qb, chunk });
                }
            }
        }
    }
    let dptr = DstPtr(dst.data.as_mut_ptr());
    let next = AtomicUsize::new(0);
    let split = pl.n_chunks > 1;
    let n_items = items.len();
    // Batches of consecutive items (KV-head groups of one chunk) run together, tile by tile
    // (decode only: there the KV rows are the traffic). Enough batches for the threads; the
    // batching changes the order of memory reads, never an item's numbers.
    let units = pl.n_seq * pl.n_qblocks * pl.n_chunks;
    let gb = if (pl.r * pl.g).div_ceil(4) * 4 < ROWMAJOR_BELOW {
        let per_unit = (4 * n_threads).div_ceil(units).clamp(1, pl.n_groups);
        pl.n_groups.div_ceil(per_unit)
    } else {
        1
    };
    let mut batches = Vec::new();
    for u in 0..units {
        let mut g0 = 0;
        while g0 < pl.n_groups {
            let g1 = (g0 + gb).min(pl.n_groups);
            batches.push((u * pl.n_groups + g0, u * pl.n_groups + g1));
            g0 = g1;
        }
    }
    let n_batches = batches.len();
    // Partials of split items, by item index (only used when split).
    let worker = || -> Vec<(usize, Partial)> {
        let mut scs: Vec<Scratch> = (0..gb).map(|_| pl.scratch()).collect();
        let mut tb = pl.tile_bufs();
        let mut parts = Vec::new();
        loop {
            let bi = next.fetch_add(1, Ordering::Relaxed);
            if bi >= n_batches {
                break;
            }
            let (i0, i1) = batches[bi];
            let its = &items[i0..i1];
            pl.run_items(&kn, deq_k, deq_v, fused, its, &mut scs[..i1 - i0], &mut tb);
            for (k, (it, sc)) in its.iter().zip(&scs).enumerate() {
                let m = sc.rows.len();
                if split {
                    let dvp = pl.dvp;
                    parts.push((
                        i0 + k,
                        Partial {
                            m: sc.mrow[..m].to_vec(),
                            s: sc.srow[..m].to_vec(),
                            o: sc.o[..m * dvp].to_vec(),
                        },
                    ));
                } else {
                    pl.finish(it, &sc.rows, &sc.mrow, &sc.srow, &sc.o, dptr);
                }
            }
        }
        parts
    };
    let mut parts: Vec<Option<Partial>> =
        (0..if split { n_items } else { 0 }).map(|_| None).collect();
    if n_threads == 1 || n_batches == 1 {
        for (i, p) in worker() {
            parts[i] = Some(p);
        }
    } else {
        let shared = std::sync::Mutex::new(&mut parts);
        team.run(&|_| {
            let mine = worker();
            if !mine.is_empty() {
                let mut ps = shared.lock().unwrap_or_else(|e| e.into_inner());
                for (i, p) in mine {
                    ps[i] = Some(p);
                }
            }
        });
    }
    if split {
        // Combine the chunks of each item group in chunk order (deterministic).
        let dvp = pl.dvp;
        let mut rows = Vec::new();
        for (i0, it) in items.iter().enumerate() {
            if it.chunk != 0 {
                continue;
            }
            pl.vrows(it, &mut rows);
            let m_real = rows.len();
            let mut mf = vec![f32::NEG_INFINITY; m_real];
            let mut sf = vec![0f32; m_real];
            let mut of = vec![0f32; m_real * dvp];
            for c in 0..pl.n_chunks {
                let p = parts[i0 + c * pl.n_groups]
                    .as_ref()
                    .expect("every chunk computed");
                for m in 0..m_real {
                    if p.s[m] == 0.0 {
                        continue;
                    }
                    let mnew = mf[m].max(p.m[m]);
                    let so = (mf[m] - mnew).exp();
                    let sn = (p.m[m] - mnew).exp();
                    for d in 0..dvp {
                        of[m * dvp + d] = of[m * dvp + d] * so + p.o[m * dvp + d] * sn;
                    }
                    sf[m] = sf[m] * so + p.s[m] * sn;
                    mf[m] = mnew;
                }
            }
            pl.finish(it, &rows, &mf, &sf, &of, dptr);
        }
    }
    let _ = (pl.n_kv, pl.dk);
    Ok(())
}

/// Convenience: contiguous Q `[DK, n_q, n_head, n_seq]` f32, K/V contiguous in their types,
/// optional contiguous f16 mask `[mask_cols, mask_rows, 1, 1]`-style tensor; returns the output
/// `[DV, n_head, n_q, n_seq]` as a Vec.
#[allow(clippy::too_many_arguments)]
pub fn attend(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    sinks: Option<&[f32]>,
    params: &Params,
    n_threads: usize,
) -> Result<Vec<f32>> {
    let ne = [v.ne[0], q.ne[2], q.ne[1], q.ne[3]];
    let n = ne
        .iter()
        .try_fold(1usize, |a, &b| a.checked_mul(b))
        .ok_or(Error::Overflow)?;
    let mut out = vec![0f32; n];
    let mut dst = TensorMut::from_f32(&mut out, ne)?;
    flash_attn_ext(q, k, v, mask, sinks, params, &mut dst, n_threads)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_sizes() {
        assert_eq!(parse_cache_size("1024K\n"), Some(1 << 20));
        assert_eq!(parse_cache_size("2M"), Some(2 << 20));
        assert_eq!(parse_cache_size("512"), Some(512));
        assert_eq!(parse_cache_size("K"), None);
        assert_eq!(parse_cache_size("lots"), None);
        // whatever sysfs says, the cap stays in its bounds
        assert!((16 << 10..=1 << 20).contains(&prefetch_cap()));
        assert!(
            (PREFETCH_MIN..=PREFETCH_ROWS).contains(&prefetch_rows(1 << 30))
                || std::env::var("ATTNROT_PF").is_ok()
        );
    }
}
