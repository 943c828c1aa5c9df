//! Normalized Walsh–Hadamard rotation (fast transform) and upstream's rotation plan.
//!
//! # What upstream computes
//! llama.cpp rotates with `llama_mul_mat_hadamard` (src/llama-impl.h): a tensor is viewed as
//! `[n, nelements/n]` (reshaped, or `ggml_cont_2d`'d if not contiguous), multiplied by the
//! `n×n` Sylvester-ordered Hadamard matrix `H_n/√n` (`ggml_gen_hadamard`,
//! src/llama-kv-cache.cpp) with `ggml_mul_mat` hinted `GGML_HINT_SRC0_IS_HADAMARD`, and
//! reshaped back. So every consecutive `n`-chunk of a row (of the flattened tensor) is
//! rotated on its own; a row of `head_size` elements is `head_size / n` chunks. On the CPU
//! backend the hinted product runs `ggml_compute_forward_fwht` (ggml-cpu/ops.cpp), which
//! never reads the matrix: `y = x * (1.0f / sqrtf(n))` in f32 (f16 input converted exactly
//! first), then radix-2 butterflies `(u, v) -> (u + v, u - v)` for `len = 1, 2, …, n/2`.
//!
//! # What we compute
//! The same float operations per element, so results are bit-identical to upstream's CPU
//! backend for every ISA (the kernels only reorder work: register-blocked stages, radix-4
//! passes). The one thing left open is which payload a NaN result carries when two
//! *different* NaNs meet in one addition (e.g. two NaN inputs with different payloads, or a
//! NaN input and an `inf - inf`): x86 picks by operand position, and upstream's choice
//! there depends on how GCC allocated registers per loop. Then the output is NaN in the same
//! places, possibly with the other payload; the tests check exactly that.
//!
//! # Functions
//! * [`rotate`], [`rotate_inplace`], [`rotate_f16`]: contiguous chunks (`len % n == 0`).
//! * [`rotate_rows`], [`rotate_rows_f16`]: `rows` rows of `row_len` (a multiple of `n`)
//!   elements at arbitrary row strides (in elements), as a strided ggml tensor has.
//! * [`upstream_plan`] and friends: when llama.cpp rotates K and V, and with which `n`.
pub mod policy;

use crate::simd::{self, Isa};
use crate::{Error, GgmlType, Result};

/// Largest transform size accepted (upstream accepts any power of two; this bounds work).
pub const MAX_N: usize = 1 << 16;

/// Check `n`: a power of two in `1..=MAX_N`.
pub fn check_n(n: usize) -> Result<()> {
    if n == 0 || !n.is_power_of_two() || n > MAX_N {
        return Err(Error::BadParam(format!(
            "rotation size n = {n} is not a power of two in 1..={MAX_N}"
        )));
    }
    Ok(())
}

/// The scale upstream applies before the butterflies: `1.0f / sqrtf((float)n)`.
#[inline]
pub fn scale(n: usize) -> f32 {
    1.0f32 / (n as f32).sqrt()
}

fn check_len(n: usize, len: usize, what: &str) -> Result<()> {
    if !len.is_multiple_of(n) {
        return Err(Error::BadShape(format!(
            "{what} length {len} is not a multiple of the rotation size {n}"
        )));
    }
    Ok(())
}

/// Rotate every `n`-chunk of `src` into `dst` (`dst.len() == src.len()`, a multiple of `n`).
pub fn rotate(n: usize, src: &[f32], dst: &mut [f32]) -> Result<()> {
    check_n(n)?;
    check_len(n, src.len(), "source")?;
    if dst.len() != src.len() {
        return Err(Error::BadShape(format!(
            "destination length {} != source length {}",
            dst.len(),
            src.len()
        )));
    }
    // SAFETY: lengths checked, `src` and `dst` are distinct borrows.
    unsafe { run_f32(n, src.len() / n, src.as_ptr(), dst.as_mut_ptr()) };
    Ok(())
}

/// Rotate every `n`-chunk of `x` in place.
pub fn rotate_inplace(n: usize, x: &mut [f32]) -> Result<()> {
    check_n(n)?;
    check_len(n, x.len(), "data")?;
    let p = x.as_mut_ptr();
    // SAFETY: length checked; the kernels allow src == dst.
    unsafe { run_f32(n, x.len() / n, p, p) };
    Ok(())
}

/// Rotate every `n`-chunk of the f16 (raw IEEE half bits) `src` into f32 `dst`, as upstream
/// does for an F16 src1 (`ggml_fp16_to_fp32` then the f32 transform).
pub fn rotate_f16(n: usize, src: &[u16], dst: &mut [f32]) -> Result<()> {
    check_n(n)?;
    check_len(n, src.len(), "source")?;
    if dst.len() != src.len() {
        return Err(Error::BadShape(format!(
            "destination length {} != source length {}",
            dst.len(),
            src.len()
        )));
    }
    // SAFETY: lengths checked.
    unsafe { run_f16(n, src.len() / n, src.as_ptr(), dst.as_mut_ptr()) };
    Ok(())
}

fn check_rows(
    n: usize,
    row_len: usize,
    rows: usize,
    stride: usize,
    have: usize,
    what: &'static str,
) -> Result<()> {
    check_len(n, row_len, "row")?;
    if rows == 0 {
        return Ok(());
    }
    if stride < row_len {
        return Err(Error::BadShape(format!(
            "{what} row stride {stride} < row length {row_len}"
        )));
    }
    let need = (rows - 1)
        .checked_mul(stride)
        .and_then(|v| v.checked_add(row_len))
        .ok_or(Error::Overflow)?;
    if have < need {
        return Err(Error::BufferTooSmall { what, need, have });
    }
    Ok(())
}

/// Rotate `rows` rows of `row_len` elements (a multiple of `n`): row `r` is read from
/// `src[r*src_stride..][..row_len]` and written to `dst[r*dst_stride..][..row_len]`.
/// Elements of `dst` between rows are left alone.
pub fn rotate_rows(
    n: usize,
    row_len: usize,
    rows: usize,
    src: &[f32],
    src_stride: usize,
    dst: &mut [f32],
    dst_stride: usize,
) -> Result<()> {
    check_n(n)?;
    check_rows(n, row_len, rows, src_stride, src.len(), "source")?;
    check_rows(n, row_len, rows, dst_stride, dst.len(), "destination")?;
    if src_stride == row_len && dst_stride == row_len {
        let len = rows * row_len;
        return rotate(n, &src[..len], &mut dst[..len]);
    }
    for r in 0..rows {
        let s = &src[r * src_stride..][..row_len];
        let d = &mut dst[r * dst_stride..][..row_len];
        // SAFETY: bounds checked above.
        unsafe { run_f32(n, row_len / n, s.as_ptr(), d.as_mut_ptr()) };
    }
    Ok(())
}

/// [`rotate_rows`] for f16 (raw bits) input.
pub fn rotate_rows_f16(
    n: usize,
    row_len: usize,
    rows: usize,
    src: &[u16],
    src_stride: usize,
    dst: &mut [f32],
    dst_stride: usize,
) -> Result<()> {
    check_n(n)?;
    check_rows(n, row_len, rows, src_stride, src.len(), "source")?;
    check_rows(n, row_len, rows, dst_stride, dst.len(), "destination")?;
    for r in 0..rows {
        let s = &src[r * src_stride..][..row_len];
        let d = &mut dst[r * dst_stride..][..row_len];
        // SAFETY: bounds checked above.
        unsafe { run_f16(n, row_len / n, s.as_ptr(), d.as_mut_ptr()) };
    }
    Ok(())
}

/// Dispatch on the current ISA. `src` may equal `dst`; otherwise no overlap.
/// SAFETY: `src` readable and `dst` writable for `chunks * n` elements; `n` checked.
unsafe fn run_f32(n: usize, chunks: usize, src: *const f32, dst: *mut f32) {
    match simd::isa() {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 if n >= 16 => unsafe { simd::x86::fwht::fwht_f32_avx512(n, chunks, src, dst) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 | Isa::Avx2 if n >= 8 => unsafe {
            simd::x86::fwht::fwht_f32_avx2(n, chunks, src, dst)
        },
        _ => {
            for c in 0..chunks {
                // SAFETY: per the contract; element-wise read-before-write makes src == dst fine.
                unsafe {
                    let s = src.add(c * n);
                    let d = dst.add(c * n);
                    scalar_chunk(n, |j| *s.add(j), d);
                }
            }
        }
    }
}

/// SAFETY: as [`run_f32`] (src and dst never alias here: different element types).
unsafe fn run_f16(n: usize, chunks: usize, src: *const u16, dst: *mut f32) {
    match simd::isa() {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 if n >= 16 => unsafe { simd::x86::fwht::fwht_f16_avx512(n, chunks, src, dst) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 | Isa::Avx2 if n >= 8 => unsafe {
            simd::x86::fwht::fwht_f16_avx2(n, chunks, src, dst)
        },
        _ => {
            for c in 0..chunks {
                // SAFETY: per the contract.
                unsafe {
                    let s = src.add(c * n);
                    let d = dst.add(c * n);
                    scalar_chunk(n, |j| crate::quant::fp16::f16_to_f32(*s.add(j)), d);
                }
            }
        }
    }
}

/// Portable transform of one chunk: `d[j] = load(j) * scale`, then the stages
/// `len = 1 .. n/2` in order (matches `ggml_compute_forward_fwht`, ggml-cpu/ops.cpp).
/// SAFETY: `d` writable for `n` elements; `load(j)` is called once per `j`, before `d[j]`
/// is written, so it may read the same memory.
#[inline]
unsafe fn scalar_chunk(n: usize, load: impl Fn(usize) -> f32, d: *mut f32) {
    let s = scale(n);
    for j in 0..n {
        let v = load(j);
        unsafe { *d.add(j) = v * s };
    }
    // SAFETY: `d` is valid for `n` elements and no other reference to it is live.
    let d = unsafe { std::slice::from_raw_parts_mut(d, n) };
    let mut len = 1;
    while len < n {
        for blk in d.chunks_exact_mut(2 * len) {
            let (lo, hi) = blk.split_at_mut(len);
            for (u, v) in lo.iter_mut().zip(hi.iter_mut()) {
                let (a, b) = (*u, *v);
                *u = a + b;
                *v = a - b;
            }
        }
        len *= 2;
    }
}

// ---------------------------------------------------------------------------------------
// Rotation plans
// ---------------------------------------------------------------------------------------

/// Which rotations llama.cpp applies around attention: `k = Some(n)` means Q and K are
/// rotated by `H_n` (chunks of `n` of every head) before K is stored and Q meets K;
/// `v = Some(n)` means V is rotated before it is stored and the attention output is rotated
/// back with the same matrix (`H_n` is its own inverse).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RotationPlan {
    pub k: Option<usize>,
    pub v: Option<usize>,
}

impl RotationPlan {
    pub const NONE: RotationPlan = RotationPlan { k: None, v: None };
}

/// Upstream's `ggml_is_quantized` for the types attnrot knows (`F32`, `F16`, `BF16`: no).
pub fn is_quantized(ty: GgmlType) -> bool {
    ty.is_quantized()
}

/// Upstream's K rotation size for head size `head_k` (a positive multiple of 64): the
/// largest power of two dividing it, no upper cap (0 for `head_k = 0`). Matches `llama_kv_cache::build_input_k_rot`
/// (src/llama-kv-cache.cpp): `nrot = 64; do nrot *= 2; while (head % nrot == 0); nrot /= 2`.
pub fn upstream_n_rot_k(head_k: usize) -> usize {
    if head_k == 0 {
        return 0; // upstream never asks (no rotation); its loop would not terminate
    }
    // same result as upstream's do-while for every head_k > 0, without overflow
    let mut nrot = 64usize;
    while nrot <= head_k / 2 && head_k.is_multiple_of(nrot * 2) {
        nrot *= 2;
    }
    nrot
}

/// Upstream's V rotation size: always 64 (`llama_kv_cache::build_input_v_rot`; the loop that
/// would pick the largest power of two is commented out upstream on purpose).
pub const UPSTREAM_N_ROT_V: usize = 64;

/// llama.cpp's decision for one KV cache whose layers all have K head size `head_k` and V
/// head size `head_v`, ignoring the environment (see [`upstream_plan_env`]). Matches the
/// `llama_kv_cache` constructor (src/llama-kv-cache.cpp):
/// `attn_rot_k = !disable && n_embd_head_k_all > 0 && ggml_is_quantized(type_k) &&
/// n_embd_head_k % 64 == 0`, the same for V with `type_v`, then the sizes of
/// `build_input_k_rot` / `build_input_v_rot`. Not modelled: the forced K rotation for the
/// DeepSeek-3.2/4, GLM-DSA and dots3-note lightning indexers, and MLA caches (no V rotation
/// there since `n_embd_head_v_all` stays 0) — see [`upstream_plan_layers`].
pub fn upstream_plan(
    head_k: usize,
    head_v: usize,
    type_k: GgmlType,
    type_v: GgmlType,
) -> RotationPlan {
    let k = (head_k > 0 && is_quantized(type_k) && head_k.is_multiple_of(64))
        .then(|| upstream_n_rot_k(head_k));
    let v = (head_v > 0 && is_quantized(type_v) && head_v.is_multiple_of(64))
        .then_some(UPSTREAM_N_ROT_V);
    RotationPlan { k, v }
}

/// [`upstream_plan`] with per-layer head sizes, as the constructor sees them: a head size
/// that differs between layers makes `n_embd_head_*_all = -1` (no rotation of that side);
/// `heads_v = None` is an MLA cache (V not tracked, so never rotated).
pub fn upstream_plan_layers(
    heads_k: &[usize],
    heads_v: Option<&[usize]>,
    type_k: GgmlType,
    type_v: GgmlType,
) -> RotationPlan {
    fn all(h: &[usize]) -> usize {
        match h.split_first() {
            Some((f, rest)) if rest.iter().all(|x| x == f) => *f,
            _ => 0,
        }
    }
    let hk = all(heads_k);
    let hv = heads_v.map(all).unwrap_or(0);
    upstream_plan(hk, hv, type_k, type_v)
}

/// C `atoi`: optional leading whitespace, optional sign, decimal digits; anything else stops
/// the parse (no digits = 0). Overflow saturates (upstream's behaviour there is undefined).
fn c_atoi(s: &str) -> i64 {
    let t = s.trim_start_matches([' ', '\t', '\n', '\r', '\x0b', '\x0c']);
    let (neg, t) = match t.as_bytes().first() {
        Some(b'-') => (true, &t[1..]),
        Some(b'+') => (false, &t[1..]),
        _ => (false, t),
    };
    let mut v: i64 = 0;
    for b in t.bytes() {
        if !b.is_ascii_digit() {
            break;
        }
        v = v.saturating_mul(10).saturating_add((b - b'0') as i64);
    }
    if neg {
        -v
    } else {
        v
    }
}

/// Whether a value of `LLAMA_ATTN_ROT_DISABLE` disables rotation: upstream tests
/// `atoi(value) != 0` when the variable is set (so "1" and "-2" disable; "0", "", "yes" don't).
pub fn attn_rot_disable_value(value: Option<&str>) -> bool {
    value.map(|v| c_atoi(v) != 0).unwrap_or(false)
}

/// Whether the process environment disables rotation (`LLAMA_ATTN_ROT_DISABLE`).
pub fn attn_rot_disabled_by_env() -> bool {
    attn_rot_disable_value(std::env::var("LLAMA_ATTN_ROT_DISABLE").ok().as_deref())
}

/// [`upstream_plan`], then no rotation at all if `disabled` (see [`attn_rot_disabled_by_env`]).
pub fn upstream_plan_with(
    head_k: usize,
    head_v: usize,
    type_k: GgmlType,
    type_v: GgmlType,
    disabled: bool,
) -> RotationPlan {
    if disabled {
        RotationPlan::NONE
    } else {
        upstream_plan(head_k, head_v, type_k, type_v)
    }
}

/// [`upstream_plan`] honouring `LLAMA_ATTN_ROT_DISABLE` from the environment.
pub fn upstream_plan_env(
    head_k: usize,
    head_v: usize,
    type_k: GgmlType,
    type_v: GgmlType,
) -> RotationPlan {
    upstream_plan_with(head_k, head_v, type_k, type_v, attn_rot_disabled_by_env())
}
