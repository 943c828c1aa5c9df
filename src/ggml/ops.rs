//! What the backend claims (`supports_op`) and how it computes it (`graph_compute`).
//!
//! One function decides whether a node is ours ([`classify`]); `supports_op` answers with it
//! and `graph_compute` asks it again for every node before touching it, so the two can never
//! disagree. Every check mirrors what ggml's CPU backend would assert or assume for the op
//! (cited per op), plus what our kernels need (strides that are whole elements, power-of-two
//! transform sizes, implemented formats).
use super::sys;
use super::tensor as t;
use crate::GgmlType;

/// What a node is, for us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// NONE / VIEW / RESHAPE / PERMUTE / TRANSPOSE: nothing to compute.
    NoOp,
    /// `GGML_OP_SET_ROWS` into one of the KV formats.
    SetRows,
    /// `GGML_OP_MUL_MAT` hinted `GGML_HINT_SRC0_IS_HADAMARD`: a Walsh–Hadamard rotation.
    Hadamard,
    /// `GGML_OP_FLASH_ATTN_EXT`.
    FlashAttn,
}

/// KV formats SET_ROWS is claimed for: the ones whose `quantize_row` (the CPU backend's
/// `from_float`) is implemented in [`crate::quant`]. Grows as the formats land.
pub const SET_ROWS_TYPES: &[GgmlType] = &GgmlType::KV;

/// K/V types FLASH_ATTN_EXT is claimed for ([`crate::attn`]): the eight KV formats and f32.
pub const FLASH_ATTN_KV_TYPES: &[GgmlType] = &[
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::Q8_0,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::IQ4_NL,
];

/// Is `t` something the backend does? `Err` carries the reason it is refused.
pub fn classify(node: &sys::ggml_tensor) -> Result<Kind, &'static str> {
    if t::is_noop(node.op) {
        return Ok(Kind::NoOp);
    }
    match node.op {
        sys::ggml_op_GGML_OP_SET_ROWS => set_rows_ok(node).map(|_| Kind::SetRows),
        sys::ggml_op_GGML_OP_MUL_MAT => hadamard_ok(node).map(|_| Kind::Hadamard),
        sys::ggml_op_GGML_OP_FLASH_ATTN_EXT => flash_attn_ok(node).map(|_| Kind::FlashAttn),
        _ => Err("op not implemented"),
    }
}

fn src(node: &sys::ggml_tensor, i: usize) -> Result<&sys::ggml_tensor, &'static str> {
    let p = node.src[i];
    if p.is_null() {
        return Err("missing source");
    }
    // SAFETY: ggml keeps sources alive as long as the node.
    Ok(unsafe { &*p })
}

// ---------------------------------------------------------------------------------------
// SET_ROWS
// ---------------------------------------------------------------------------------------

/// The checks of `ggml_set_rows` (ggml.c) and `ggml_compute_forward_set_rows_impl`
/// (ggml-cpu/ops.cpp): dst = rows of `a` (src[2]) overwritten by rows of `b` (src[0], f32
/// or f16) at indices `c` (src[1], i32/i64), `b` broadcast over `c`'s dims 1 and 2.
fn set_rows_ok(dst: &sys::ggml_tensor) -> Result<(), &'static str> {
    let b = src(dst, 0)?;
    let c = src(dst, 1)?;
    let dty = t::ty(dst).ok_or("destination type not handled")?;
    if !SET_ROWS_TYPES.contains(&dty) {
        return Err("destination format not implemented");
    }
    let bty = match t::ty(b) {
        Some(GgmlType::F32) => GgmlType::F32,
        Some(GgmlType::F16) => GgmlType::F16,
        _ => return Err("source rows must be f32 or f16"),
    };
    let isz = t::index_size(c).ok_or("indices must be i32 or i64")?;
    let (dd, bd, cd) = (
        t::dims(dst).ok_or("bad dims")?,
        t::dims(b).ok_or("bad dims")?,
        t::dims(c).ok_or("bad dims")?,
    );
    if dd[0] != bd[0] || dd[2] != bd[2] || dd[3] != bd[3] || bd[1] != cd[0] || cd[3] != 1 {
        return Err("shape mismatch");
    }
    if cd[1] == 0 || cd[2] == 0 || bd[2] % cd[1] != 0 || bd[3] % cd[2] != 0 {
        return Err("indices do not broadcast");
    }
    if !t::rows_contiguous(dst, dty) || !t::rows_contiguous(b, bty) {
        return Err("rows not contiguous");
    }
    if c.nb[0] != isz {
        return Err("indices not contiguous");
    }
    Ok(())
}

/// # Safety
/// `dst` passed [`set_rows_ok`], its data and its sources' data are valid for their extents.
unsafe fn set_rows(dst: &sys::ggml_tensor) -> Result<(), String> {
    let b = src(dst, 0)?;
    let c = src(dst, 1)?;
    let dty = t::ty(dst).ok_or("type")?;
    let bty = t::ty(b).ok_or("type")?;
    let fmt = crate::quant::format(dty).map_err(|e| e.to_string())?;
    let isz = t::index_size(c).ok_or("index type")?;
    let [nc, nr, ne02, ne03] = t::dims(b).ok_or("dims")?;
    let [_, ne11, ne12, _] = t::dims(c).ok_or("dims")?;
    let ne1 = dst.ne[1];
    if dst.data.is_null() || b.data.is_null() || c.data.is_null() {
        return Err("tensor without data".into());
    }
    let row_bytes = dty.row_bytes(nc).map_err(|e| e.to_string())?;
    let (db, bb, cb) = (
        dst.data as *mut u8,
        b.data as *const u8,
        c.data as *const u8,
    );

    let index = |i: usize, i02: usize, i03: usize| -> i64 {
        let off = i * c.nb[0] + (i02 % ne11) * c.nb[1] + (i03 % ne12) * c.nb[2];
        // SAFETY: inside c's extent (shape checked); unaligned reads allowed.
        unsafe {
            if isz == 8 {
                std::ptr::read_unaligned(cb.add(off) as *const i64)
            } else {
                std::ptr::read_unaligned(cb.add(off) as *const i32) as i64
            }
        }
    };
    // Validate every index before writing anything (the CPU backend aborts mid-way instead).
    for i03 in 0..ne03 {
        for i02 in 0..ne02 {
            for i in 0..nr {
                let i1 = index(i, i02, i03);
                if i1 < 0 || i1 >= ne1 {
                    return Err(format!("SET_ROWS index {i1} out of range 0..{ne1}"));
                }
            }
        }
    }
    let mut row = vec![0f32; nc];
    for i03 in 0..ne03 {
        for i02 in 0..ne02 {
            for i in 0..nr {
                let i1 = index(i, i02, i03) as usize;
                // SAFETY: offsets inside the tensors' extents (shape and index checked).
                unsafe {
                    let s = bb.add(i * b.nb[1] + i02 * b.nb[2] + i03 * b.nb[3]);
                    let d = std::slice::from_raw_parts_mut(
                        db.add(i1 * dst.nb[1] + i02 * dst.nb[2] + i03 * dst.nb[3]),
                        row_bytes,
                    );
                    match bty {
                        GgmlType::F32 => {
                            std::ptr::copy_nonoverlapping(s, row.as_mut_ptr() as *mut u8, nc * 4);
                        }
                        _ if dty == GgmlType::F16 => {
                            // f16 -> f16 is a copy (ggml_compute_forward_set_rows_impl).
                            std::ptr::copy(s, d.as_mut_ptr(), row_bytes);
                            continue;
                        }
                        _ => {
                            for (j, o) in row.iter_mut().enumerate() {
                                let h = std::ptr::read_unaligned(s.add(2 * j) as *const u16);
                                *o = crate::quant::fp16::f16_to_f32(h);
                            }
                        }
                    }
                    fmt.quantize_row(&row, d).map_err(|e| e.to_string())?;
                }
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// MUL_MAT with GGML_HINT_SRC0_IS_HADAMARD
// ---------------------------------------------------------------------------------------

/// What the CPU backend accepts for the hinted product (`ggml_backend_cpu_device_supports_op`:
/// src0 f32, dst f32, src1 f32 or f16) and assumes in `ggml_compute_forward_fwht`
/// (ggml-cpu/ops.cpp: n = ne10 a power of two, src1 rows contiguous, dst rows contiguous;
/// src0 is never read, it is `H_n/√n` by the hint's contract), plus `ggml_mul_mat`'s shape
/// rule (dst = [ne01, ne11, ne12, ne13]) with a square src0.
fn hadamard_ok(dst: &sys::ggml_tensor) -> Result<(), &'static str> {
    if t::param_i32(dst, 1) != sys::ggml_op_hint_GGML_HINT_SRC0_IS_HADAMARD as i32 {
        return Err("MUL_MAT without the Hadamard hint");
    }
    let a = src(dst, 0)?;
    let x = src(dst, 1)?;
    if t::ty(a) != Some(GgmlType::F32) || t::ty(dst) != Some(GgmlType::F32) {
        return Err("Hadamard product must be f32 x -> f32");
    }
    let xty = match t::ty(x) {
        Some(ty @ (GgmlType::F32 | GgmlType::F16)) => ty,
        _ => return Err("Hadamard input must be f32 or f16"),
    };
    let (ad, xd, dd) = (
        t::dims(a).ok_or("bad dims")?,
        t::dims(x).ok_or("bad dims")?,
        t::dims(dst).ok_or("bad dims")?,
    );
    let n = xd[0];
    if crate::rotate::check_n(n).is_err() {
        return Err("transform size not a power of two in range");
    }
    if ad[0] != n || ad[1] != n || dd[0] != n || dd[1] != xd[1] || dd[2] != xd[2] || dd[3] != xd[3]
    {
        return Err("shape mismatch");
    }
    let es = xty.block_bytes();
    if x.nb[0] != es || dst.nb[0] != 4 {
        return Err("rows not contiguous");
    }
    if (1..4).any(|i| x.nb[i] % es != 0 || dst.nb[i] % 4 != 0) {
        return Err("strides not whole elements");
    }
    Ok(())
}

/// # Safety
/// `dst` passed [`hadamard_ok`]; data pointers valid for the tensors' extents.
unsafe fn hadamard(dst: &sys::ggml_tensor) -> Result<(), String> {
    let x = src(dst, 1)?;
    let xty = t::ty(x).ok_or("type")?;
    let [n, rows, ne12, ne13] = t::dims(x).ok_or("dims")?;
    if x.data.is_null() || dst.data.is_null() {
        return Err("tensor without data".into());
    }
    let es = xty.block_bytes();
    let (xs, ds) = (x.nb[1] / es, dst.nb[1] / 4);
    let src_len = (rows - 1) * xs + n;
    let dst_len = (rows - 1) * ds + n;
    for i13 in 0..ne13 {
        for i12 in 0..ne12 {
            // SAFETY: offsets inside the extents; the slices below do not outlive the call.
            unsafe {
                let sp = (x.data as *const u8).add(i12 * x.nb[2] + i13 * x.nb[3]);
                let dp = (dst.data as *mut u8).add(i12 * dst.nb[2] + i13 * dst.nb[3]) as *mut f32;
                let (s0, s1) = (sp as usize, sp as usize + src_len * es);
                let (d0, d1) = (dp as usize, dp as usize + dst_len * 4);
                let overlap = s0 < d1 && d0 < s1;
                let d = std::slice::from_raw_parts_mut(dp, dst_len);
                let r = if xty == GgmlType::F32 {
                    if overlap || sp as usize % 4 != 0 {
                        let mut tmp = vec![0f32; src_len];
                        std::ptr::copy(sp, tmp.as_mut_ptr() as *mut u8, src_len * 4);
                        crate::rotate::rotate_rows(n, n, rows, &tmp, xs, d, ds)
                    } else {
                        let s = std::slice::from_raw_parts(sp as *const f32, src_len);
                        crate::rotate::rotate_rows(n, n, rows, s, xs, d, ds)
                    }
                } else if overlap || sp as usize % 2 != 0 {
                    let mut tmp = vec![0u16; src_len];
                    std::ptr::copy(sp, tmp.as_mut_ptr() as *mut u8, src_len * 2);
                    crate::rotate::rotate_rows_f16(n, n, rows, &tmp, xs, d, ds)
                } else {
                    let s = std::slice::from_raw_parts(sp as *const u16, src_len);
                    crate::rotate::rotate_rows_f16(n, n, rows, s, xs, d, ds)
                };
                r.map_err(|e| e.to_string())?;
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// FLASH_ATTN_EXT
// ---------------------------------------------------------------------------------------

/// `ggml_flash_attn_ext` (ggml.c) plus the asserts of `ggml_compute_forward_flash_attn_ext_f16`
/// (ggml-cpu/ops.cpp) and what [`crate::attn::flash_attn_ext`] takes: q f32, K/V in
/// [`FLASH_ATTN_KV_TYPES`] with contiguous rows (any other strides: views into the cache),
/// optional contiguous f16 mask broadcast over heads/sequences, optional f32 sinks (one per
/// head), f32 output `[DV, n_head, n_q, n_seq]` with contiguous rows, finite op params
/// (`scale`, `max_bias` ≥ 0 needing a mask, `logit_softcap`), precision DEFAULT or F32.
fn flash_attn_ok(dst: &sys::ggml_tensor) -> Result<(), &'static str> {
    let q = src(dst, 0)?;
    let k = src(dst, 1)?;
    let v = src(dst, 2)?;
    if dst.src[5..].iter().any(|p| !p.is_null()) {
        return Err("unexpected extra sources");
    }
    if t::ty(q) != Some(GgmlType::F32) || t::ty(dst) != Some(GgmlType::F32) {
        return Err("q and dst must be f32");
    }
    let kty = t::ty(k)
        .filter(|ty| FLASH_ATTN_KV_TYPES.contains(ty))
        .ok_or("K type not implemented")?;
    let vty = t::ty(v)
        .filter(|ty| FLASH_ATTN_KV_TYPES.contains(ty))
        .ok_or("V type not implemented")?;
    let (qd, kd, vd, dd) = (
        t::dims(q).ok_or("bad dims")?,
        t::dims(k).ok_or("bad dims")?,
        t::dims(v).ok_or("bad dims")?,
        t::dims(dst).ok_or("bad dims")?,
    );
    let [dk, n_q, n_head, n_seq] = qd;
    if kd[0] != dk || vd[1] != kd[1] || dk == 0 || vd[0] == 0 {
        return Err("head sizes / KV lengths differ");
    }
    if kd[2] == 0 || vd[2] == 0 || n_head % kd[2] != 0 || n_head % vd[2] != 0 {
        return Err("query heads not a multiple of KV heads");
    }
    if kd[3] != n_seq || vd[3] != n_seq {
        return Err("sequence counts differ");
    }
    if dd != [vd[0], n_head, n_q, n_seq] {
        return Err("dst shape");
    }
    if !t::rows_contiguous(q, GgmlType::F32)
        || !t::rows_contiguous(k, kty)
        || !t::rows_contiguous(v, vty)
    {
        return Err("rows not contiguous");
    }
    if dst.nb[0] != 4 || dst.nb[0] > dst.nb[1] || dst.nb[1] > dst.nb[2] || dst.nb[2] > dst.nb[3] {
        return Err("dst layout");
    }
    if let Some(m) = opt_src(dst, 3) {
        let md = t::dims(m).ok_or("bad dims")?;
        if t::ty(m) != Some(GgmlType::F16) || !is_contiguous(m, GgmlType::F16) {
            return Err("mask must be contiguous f16");
        }
        if md[0] < kd[1]
            || md[1] < n_q
            || md[2] == 0
            || md[3] == 0
            || n_head % md[2] != 0
            || n_seq % md[3] != 0
        {
            return Err("mask shape");
        }
    }
    if let Some(sk) = opt_src(dst, 4) {
        if t::ty(sk) != Some(GgmlType::F32)
            || sk.ne[0] as usize != n_head
            || !is_contiguous(sk, GgmlType::F32)
        {
            return Err("sinks must be contiguous f32, one per head");
        }
    }
    let (scale, max_bias, softcap) = (
        t::param_f32(dst, 0),
        t::param_f32(dst, 1),
        t::param_f32(dst, 2),
    );
    if !scale.is_finite() || !max_bias.is_finite() || !softcap.is_finite() || max_bias < 0.0 {
        return Err("op params");
    }
    if max_bias > 0.0 && dst.src[3].is_null() {
        return Err("max_bias needs a mask");
    }
    let prec = t::param_i32(dst, 3);
    if prec != sys::ggml_prec_GGML_PREC_DEFAULT as i32
        && prec != sys::ggml_prec_GGML_PREC_F32 as i32
    {
        return Err("precision");
    }
    Ok(())
}

fn opt_src(node: &sys::ggml_tensor, i: usize) -> Option<&sys::ggml_tensor> {
    // SAFETY: as in `src`.
    (!node.src[i].is_null()).then(|| unsafe { &*node.src[i] })
}

/// `ggml_is_contiguous`: strides are exactly the packed ones (dims of size 1 ignored).
fn is_contiguous(x: &sys::ggml_tensor, ty: GgmlType) -> bool {
    let Some(d) = t::dims(x) else { return false };
    if x.nb[0] != ty.block_bytes() || d[0] % ty.block_size() != 0 {
        return false;
    }
    let mut next = ty.block_bytes() * (d[0] / ty.block_size());
    for i in 1..4 {
        if d[i] != 1 && x.nb[i] != next {
            return false;
        }
        next *= d[i];
    }
    true
}

/// A read-only [`crate::attn::Tensor`] over a ggml tensor's bytes.
///
/// # Safety
/// `x.data` valid for its extent.
unsafe fn attn_view<'a>(x: &'a sys::ggml_tensor) -> Result<crate::attn::Tensor<'a>, String> {
    let ty = t::ty(x).ok_or("type")?;
    let len = t::extent(x, ty).ok_or("extent")?;
    if x.data.is_null() && len > 0 {
        return Err("tensor without data".into());
    }
    let data: &[u8] = if len == 0 {
        &[]
    } else {
        // SAFETY: caller's contract.
        unsafe { std::slice::from_raw_parts(x.data as *const u8, len) }
    };
    Ok(crate::attn::Tensor {
        data,
        ty,
        ne: t::dims(x).ok_or("dims")?,
        nb: x.nb,
    })
}

/// # Safety
/// `dst` passed [`flash_attn_ok`]; data pointers valid for the tensors' extents; `dst` does
/// not overlap its sources.
unsafe fn flash_attn(dst: &sys::ggml_tensor, n_threads: usize) -> Result<(), String> {
    // SAFETY: caller's contract.
    unsafe {
        let q = attn_view(src(dst, 0)?)?;
        let k = attn_view(src(dst, 1)?)?;
        let v = attn_view(src(dst, 2)?)?;
        let mask = match opt_src(dst, 3) {
            Some(m) => Some(attn_view(m)?),
            None => None,
        };
        let sinks: Option<Vec<f32>> = opt_src(dst, 4).map(|sk| {
            let n = sk.ne[0] as usize;
            let mut out = vec![0f32; n];
            std::ptr::copy_nonoverlapping(sk.data as *const u8, out.as_mut_ptr() as *mut u8, n * 4);
            out
        });
        let prec = if t::param_i32(dst, 3) == sys::ggml_prec_GGML_PREC_F32 as i32 {
            crate::attn::Precision::F32
        } else {
            crate::attn::Precision::Default
        };
        let params = crate::attn::Params {
            scale: t::param_f32(dst, 0),
            max_bias: t::param_f32(dst, 1),
            logit_softcap: t::param_f32(dst, 2),
            precision: prec,
        };
        let len = t::extent(dst, GgmlType::F32).ok_or("extent")?;
        if dst.data.is_null() {
            return Err("tensor without data".into());
        }
        let mut out = crate::attn::TensorMut {
            data: std::slice::from_raw_parts_mut(dst.data as *mut u8, len),
            ne: t::dims(dst).ok_or("dims")?,
            nb: dst.nb,
        };
        crate::attn::flash_attn_ext(
            &q,
            &k,
            &v,
            mask.as_ref(),
            sinks.as_deref(),
            &params,
            &mut out,
            n_threads.max(1),
        )
        .map_err(|e| e.to_string())
    }
}

/// Compute one node. Re-checks [`classify`]; an unclaimed node is an error, never a guess.
///
/// # Safety
/// `node` must be a valid tensor of the host's ggml whose data (and its sources' data) is
/// allocated in host memory.
pub unsafe fn compute(node: *mut sys::ggml_tensor, n_threads: usize) -> Result<(), String> {
    // SAFETY: caller's contract.
    let node = unsafe { &*node };
    let kind = classify(node).map_err(|why| {
        format!(
            "node {:?} (op {}) reached graph_compute but is not supported: {why}",
            t::name(node),
            node.op
        )
    })?;
    if kind == Kind::NoOp || t::is_empty(node) {
        return Ok(());
    }
    // SAFETY: classified; caller's contract on data.
    unsafe {
        match kind {
            Kind::SetRows => set_rows(node),
            Kind::Hadamard => hadamard(node),
            Kind::FlashAttn => flash_attn(node, n_threads),
            Kind::NoOp => Ok(()),
        }
    }
}
