//! Small facts about a `ggml_tensor`, computed from the struct layout of the pinned headers
//! (so `libattnrot.so` needs no ggml function for them).
use super::sys;
use crate::GgmlType;

/// Ops that compute nothing: ggml's CPU backend skips them (`ggml_op_is_empty`, ggml-impl.h).
pub fn is_noop(op: sys::ggml_op) -> bool {
    matches!(
        op,
        sys::ggml_op_GGML_OP_NONE
            | sys::ggml_op_GGML_OP_RESHAPE
            | sys::ggml_op_GGML_OP_VIEW
            | sys::ggml_op_GGML_OP_PERMUTE
            | sys::ggml_op_GGML_OP_TRANSPOSE
    )
}

/// The attnrot type of a tensor, if it is one we know.
pub fn ty(t: &sys::ggml_tensor) -> Option<GgmlType> {
    GgmlType::from_id(t.type_ as i64)
}

/// `op_params` as i32 (`ggml_get_op_params_i32`).
pub fn param_i32(t: &sys::ggml_tensor, i: usize) -> i32 {
    t.op_params[i]
}

/// `op_params` as f32 (`ggml_get_op_params_f32`).
pub fn param_f32(t: &sys::ggml_tensor, i: usize) -> f32 {
    f32::from_bits(t.op_params[i] as u32)
}

/// `ggml_is_empty`: some dimension is 0.
pub fn is_empty(t: &sys::ggml_tensor) -> bool {
    t.ne.contains(&0)
}

/// Non-negative dimensions as usize (ggml never has negative ones; refuse if it did).
pub fn dims(t: &sys::ggml_tensor) -> Option<[usize; 4]> {
    let mut d = [0usize; 4];
    for (o, &n) in d.iter_mut().zip(t.ne.iter()) {
        *o = usize::try_from(n).ok()?;
    }
    Some(d)
}

/// Size in bytes of one element of the index types SET_ROWS takes (I32, I64).
pub fn index_size(t: &sys::ggml_tensor) -> Option<usize> {
    match t.type_ {
        sys::ggml_type_GGML_TYPE_I32 => Some(4),
        sys::ggml_type_GGML_TYPE_I64 => Some(8),
        _ => None,
    }
}

/// The first-dimension stride equals the element (block) size: rows are contiguous.
pub fn rows_contiguous(t: &sys::ggml_tensor, ty: GgmlType) -> bool {
    t.nb[0] == ty.block_bytes()
        && t.ne[0] >= 0
        && (t.ne[0] as usize).is_multiple_of(ty.block_size())
}

/// Byte extent touched by the tensor: `sum((ne[i]-1)*nb[i]) + row bytes` (0 if empty).
pub fn extent(t: &sys::ggml_tensor, ty: GgmlType) -> Option<usize> {
    if is_empty(t) {
        return Some(0);
    }
    let d = dims(t)?;
    let mut e = ty.row_bytes(d[0]).ok()?;
    for (&n, &nb) in d.iter().zip(t.nb.iter()).skip(1) {
        e = e.checked_add((n - 1).checked_mul(nb)?)?;
    }
    Some(e)
}

/// The tensor's name (for log lines).
pub fn name(t: &sys::ggml_tensor) -> String {
    let bytes: Vec<u8> = t
        .name
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// A zeroed tensor (for tests and for building descriptions without ggml).
pub fn zeroed() -> sys::ggml_tensor {
    // SAFETY: ggml_tensor is plain data (integers, arrays, raw pointers): all-zero is valid.
    unsafe { std::mem::zeroed() }
}
