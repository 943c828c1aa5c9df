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
}

/// KV formats SET_ROWS is claimed for: the ones whose `quantize_row` (the CPU backend's
/// `from_float`) is implemented in [`crate::quant`]. Grows as the formats land.
pub const SET_ROWS_TYPES: &[GgmlType] = &[
    GgmlType::F16,
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

/// Compute one node. Re-checks [`classify`]; an unclaimed node is an error, never a guess.
///
/// # Safety
/// `node` must be a valid tensor of the host's ggml whose data (and its sources' data) is
/// allocated in host memory.
pub unsafe fn compute(node: *mut sys::ggml_tensor) -> Result<(), String> {
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
            Kind::NoOp => Ok(()),
        }
    }
}
