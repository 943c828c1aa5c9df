//! The plain C API (`ffi/attnrot.h`): status codes, null/length checks, no panic across the boundary.
//!
//! Every `#[no_mangle]` function here is declared in `ffi/attnrot.h` with the same name,
//! parameter names and types; `tests/capi_header.rs` checks that (and compiles the header
//! with the system C and C++ compilers against the built library).
//!
//! Rules every entry point follows:
//! * It returns an [`attnrot_status`]; [`ATTNROT_OK`] is the only success.
//! * No panic crosses the boundary: the body runs under `catch_unwind`, a panic becomes
//!   [`ATTNROT_E_INTERNAL`] (a kernel that is not written yet panics with `todo!()`).
//! * Before any Rust slice is made from a C pointer: NULL is [`ATTNROT_E_NULL`], a `float*`
//!   not aligned to 4 bytes is [`ATTNROT_E_ALIGNMENT`], a negative count or a size that
//!   overflows (or exceeds `PTRDIFF_MAX` bytes, or wraps the address space) is
//!   [`ATTNROT_E_LENGTH`], an output that overlaps an input is [`ATTNROT_E_OVERLAP`] (except
//!   where in-place is documented). NULL is refused even for empty buffers.
//! * The caller promises only what C cannot check: that a pointer really points to as many
//!   bytes as the arguments say.
//!
//! The `attnrot_ggml_<fmt>_*` functions have exactly ggml's `ggml_to_float_t`,
//! `ggml_from_float_t` and `ggml_vec_dot_t` signatures, so they cannot return a status: they
//! trust the caller as ggml's own do, and on input they can see is wrong (NULL, negative or
//! non-block-multiple count, misaligned `float*`, overlap, size overflow, `nrc != 1`) they write
//! nothing and return. A panic inside them is caught and they return, having written
//! possibly part of the output.
#![allow(non_camel_case_types, clippy::missing_safety_doc)]

use crate::error::Error;
use crate::quant::{self, BlockFormat, FormatOps};
use crate::types::GgmlType;
use std::ffi::{c_char, c_int, c_void, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};

/// A status code (`attnrot_status` in C, a `int32_t`).
pub type attnrot_status = i32;

/// Success.
pub const ATTNROT_OK: attnrot_status = 0;
/// A required pointer was NULL.
pub const ATTNROT_E_NULL: attnrot_status = 1;
/// A count or buffer size is wrong: negative, not a multiple of the block size, too small
/// for what the other arguments need, or so large that the byte size overflows.
pub const ATTNROT_E_LENGTH: attnrot_status = 2;
/// A `float*` is not aligned to `alignof(float)` (4 bytes).
pub const ATTNROT_E_ALIGNMENT: attnrot_status = 3;
/// The type id is unknown, or the operation is not available for that type (or not
/// implemented in this build).
pub const ATTNROT_E_UNSUPPORTED: attnrot_status = 4;
/// An output buffer overlaps an input buffer (or another output).
pub const ATTNROT_E_OVERLAP: attnrot_status = 5;
/// A bug inside attnrot (a caught panic). Outputs may be partly written.
pub const ATTNROT_E_INTERNAL: attnrot_status = 6;
/// An argument value that is not a length is invalid (e.g. a head count that does not
/// divide another, a non-finite scale, an unknown name).
pub const ATTNROT_E_INVALID: attnrot_status = 7;

/// Type ids: the values of ggml's `enum ggml_type`.
pub const ATTNROT_TYPE_F32: i32 = GgmlType::F32 as i32;
pub const ATTNROT_TYPE_F16: i32 = GgmlType::F16 as i32;
pub const ATTNROT_TYPE_Q4_0: i32 = GgmlType::Q4_0 as i32;
pub const ATTNROT_TYPE_Q4_1: i32 = GgmlType::Q4_1 as i32;
pub const ATTNROT_TYPE_Q5_0: i32 = GgmlType::Q5_0 as i32;
pub const ATTNROT_TYPE_Q5_1: i32 = GgmlType::Q5_1 as i32;
pub const ATTNROT_TYPE_Q8_0: i32 = GgmlType::Q8_0 as i32;
pub const ATTNROT_TYPE_Q8_1: i32 = GgmlType::Q8_1 as i32;
pub const ATTNROT_TYPE_IQ4_NL: i32 = GgmlType::IQ4_NL as i32;
pub const ATTNROT_TYPE_BF16: i32 = GgmlType::BF16 as i32;

const fn parse_u32(s: &str) -> u32 {
    let b = s.as_bytes();
    let mut i = 0;
    let mut v = 0u32;
    while i < b.len() {
        assert!(b[i].is_ascii_digit());
        v = v * 10 + (b[i] - b'0') as u32;
        i += 1;
    }
    v
}

/// `ATTNROT_VERSION_MAJOR` (the crate's version).
pub const ATTNROT_VERSION_MAJOR: u32 = parse_u32(env!("CARGO_PKG_VERSION_MAJOR"));
/// `ATTNROT_VERSION_MINOR`.
pub const ATTNROT_VERSION_MINOR: u32 = parse_u32(env!("CARGO_PKG_VERSION_MINOR"));
/// `ATTNROT_VERSION_PATCH`.
pub const ATTNROT_VERSION_PATCH: u32 = parse_u32(env!("CARGO_PKG_VERSION_PATCH"));
/// `ATTNROT_VERSION`: `major << 16 | minor << 8 | patch`.
pub const ATTNROT_VERSION: u32 =
    (ATTNROT_VERSION_MAJOR << 16) | (ATTNROT_VERSION_MINOR << 8) | ATTNROT_VERSION_PATCH;
const VERSION_CSTR: &CStr =
    match CStr::from_bytes_with_nul(concat!(env!("CARGO_PKG_VERSION"), "\0").as_bytes()) {
        Ok(s) => s,
        Err(_) => panic!("version string"),
    };

// ---------------------------------------------------------------------------------------
// Boundary helpers
// ---------------------------------------------------------------------------------------

type R<T = ()> = Result<T, attnrot_status>;

/// Run `f`, turning a panic into `ATTNROT_E_INTERNAL`.
fn guard(f: impl FnOnce() -> R) -> attnrot_status {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => ATTNROT_OK,
        Ok(Err(s)) => s,
        Err(_) => ATTNROT_E_INTERNAL,
    }
}

fn status_of(e: Error) -> attnrot_status {
    match e {
        Error::NotBlockMultiple { .. }
        | Error::BufferTooSmall { .. }
        | Error::BadShape(_)
        | Error::Overflow => ATTNROT_E_LENGTH,
        Error::UnsupportedType(_) | Error::UnknownType(_) => ATTNROT_E_UNSUPPORTED,
        Error::BadParam(_) => ATTNROT_E_INVALID,
    }
}

fn ty_of(id: i32) -> R<GgmlType> {
    GgmlType::from_id(id as i64).ok_or(ATTNROT_E_UNSUPPORTED)
}

/// A C element count: negative is a bad length.
fn count(n: i64) -> R<usize> {
    usize::try_from(n).map_err(|_| ATTNROT_E_LENGTH)
}

/// A count of floats that one row holds: its byte size must be a possible object size
/// (so a row of `i64::MAX` floats is a bad length even when there are no rows).
fn f32_count(n: i64) -> R<usize> {
    let n = count(n)?;
    if n > isize::MAX as usize / 4 {
        return Err(ATTNROT_E_LENGTH);
    }
    Ok(n)
}

/// Checked product of counts.
fn mul(a: usize, b: usize) -> R<usize> {
    a.checked_mul(b).ok_or(ATTNROT_E_LENGTH)
}

/// A region `[p, p + bytes)` a C caller handed us, checked so that a Rust slice over it is
/// allowed to exist: non-NULL, aligned to `align`, at most `isize::MAX` bytes, not wrapping.
fn region(p: *const u8, bytes: usize, align: usize) -> R<(usize, usize)> {
    if p.is_null() {
        return Err(ATTNROT_E_NULL);
    }
    let a = p as usize;
    if !a.is_multiple_of(align) {
        return Err(ATTNROT_E_ALIGNMENT);
    }
    if bytes > isize::MAX as usize {
        return Err(ATTNROT_E_LENGTH);
    }
    let end = a.checked_add(bytes).ok_or(ATTNROT_E_LENGTH)?;
    Ok((a, end))
}

fn overlaps(a: (usize, usize), b: (usize, usize)) -> bool {
    a.0 < a.1 && b.0 < b.1 && a.0 < b.1 && b.0 < a.1
}

fn no_overlap(a: (usize, usize), b: (usize, usize)) -> R {
    if overlaps(a, b) {
        Err(ATTNROT_E_OVERLAP)
    } else {
        Ok(())
    }
}

/// Make a slice from a checked region. Caller: the C contract (the memory is there).
unsafe fn slice<'a, T>(p: *const T, n: usize) -> &'a [T] {
    // SAFETY: `region` checked non-null, alignment and size; the caller vouches for validity.
    unsafe { std::slice::from_raw_parts(p, n) }
}

unsafe fn slice_mut<'a, T>(p: *mut T, n: usize) -> &'a mut [T] {
    // SAFETY: as `slice`, and the region was checked not to overlap any other live slice.
    unsafe { std::slice::from_raw_parts_mut(p, n) }
}

fn out<T>(p: *mut T, v: T) -> R {
    if p.is_null() {
        return Err(ATTNROT_E_NULL);
    }
    if !(p as usize).is_multiple_of(std::mem::align_of::<T>()) {
        return Err(ATTNROT_E_ALIGNMENT);
    }
    // SAFETY: non-null, aligned; the caller vouches it points to a writable T.
    unsafe { p.write(v) };
    Ok(())
}

/// The operations of a row format (everything but f32).
fn ops_of(id: i32) -> R<&'static FormatOps> {
    quant::format(ty_of(id)?).map_err(status_of)
}

// ---------------------------------------------------------------------------------------
// Version and status
// ---------------------------------------------------------------------------------------

/// The library's version, `major << 16 | minor << 8 | patch` (compare with `ATTNROT_VERSION`).
#[no_mangle]
pub extern "C" fn attnrot_version() -> u32 {
    ATTNROT_VERSION
}

/// The library's version as a static NUL-terminated string, e.g. "0.1.0". Never NULL.
#[no_mangle]
pub extern "C" fn attnrot_version_string() -> *const c_char {
    VERSION_CSTR.as_ptr()
}

/// A static NUL-terminated description of a status code (unknown codes included). Never NULL.
#[no_mangle]
pub extern "C" fn attnrot_status_string(status: attnrot_status) -> *const c_char {
    let s: &'static CStr = match status {
        ATTNROT_OK => c"ok",
        ATTNROT_E_NULL => c"null pointer",
        ATTNROT_E_LENGTH => c"bad length",
        ATTNROT_E_ALIGNMENT => c"bad alignment",
        ATTNROT_E_UNSUPPORTED => c"unsupported format or operation",
        ATTNROT_E_OVERLAP => c"overlapping buffers",
        ATTNROT_E_INTERNAL => c"internal error",
        ATTNROT_E_INVALID => c"invalid argument",
        _ => c"unknown status",
    };
    s.as_ptr()
}

// ---------------------------------------------------------------------------------------
// Format queries
// ---------------------------------------------------------------------------------------

/// Elements per block of `type` (1 for f32/f16/bf16, 32 for the quantized formats).
#[no_mangle]
pub unsafe extern "C" fn attnrot_type_block_size(
    type_: i32,
    out_block_size: *mut i64,
) -> attnrot_status {
    guard(|| out(out_block_size, ty_of(type_)?.block_size() as i64))
}

/// Bytes per block of `type` (ggml's `ggml_type_size`).
#[no_mangle]
pub unsafe extern "C" fn attnrot_type_size(
    type_: i32,
    out_type_size: *mut usize,
) -> attnrot_status {
    guard(|| out(out_type_size, ty_of(type_)?.block_bytes()))
}

/// Bytes of one row of `n` elements of `type` (ggml's `ggml_row_size`); `n` must be a
/// non-negative multiple of the block size.
#[no_mangle]
pub unsafe extern "C" fn attnrot_row_size(
    type_: i32,
    n: i64,
    out_row_size: *mut usize,
) -> attnrot_status {
    guard(|| {
        let ty = ty_of(type_)?;
        let b = ty.row_bytes(count(n)?).map_err(status_of)?;
        if b > isize::MAX as usize {
            return Err(ATTNROT_E_LENGTH);
        }
        out(out_row_size, b)
    })
}

/// ggml's name of `type` ("q4_0", …) as a static NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn attnrot_type_name(
    type_: i32,
    out_name: *mut *const c_char,
) -> attnrot_status {
    guard(|| {
        let ty = ty_of(type_)?;
        let s: &'static CStr = match ty {
            GgmlType::F32 => c"f32",
            GgmlType::F16 => c"f16",
            GgmlType::Q4_0 => c"q4_0",
            GgmlType::Q4_1 => c"q4_1",
            GgmlType::Q5_0 => c"q5_0",
            GgmlType::Q5_1 => c"q5_1",
            GgmlType::Q8_0 => c"q8_0",
            GgmlType::Q8_1 => c"q8_1",
            GgmlType::IQ4_NL => c"iq4_nl",
            GgmlType::BF16 => c"bf16",
        };
        debug_assert_eq!(s.to_str().ok(), Some(ty.name()));
        out(out_name, s.as_ptr())
    })
}

/// The type id of a ggml type name (ASCII case-insensitive, NUL-terminated). Unknown names
/// are `ATTNROT_E_UNSUPPORTED`.
#[no_mangle]
pub unsafe extern "C" fn attnrot_type_from_name(
    name: *const c_char,
    out_type: *mut i32,
) -> attnrot_status {
    guard(|| {
        if name.is_null() {
            return Err(ATTNROT_E_NULL);
        }
        // SAFETY: the caller passes a NUL-terminated string.
        let s = unsafe { CStr::from_ptr(name) };
        let ty = s
            .to_str()
            .ok()
            .and_then(GgmlType::from_name)
            .ok_or(ATTNROT_E_UNSUPPORTED)?;
        out(out_type, ty as i32)
    })
}

/// The type `attnrot_vec_dot`'s second operand must have for `type` (ggml's `vec_dot_type`).
#[no_mangle]
pub unsafe extern "C" fn attnrot_type_vec_dot_type(
    type_: i32,
    out_type: *mut i32,
) -> attnrot_status {
    guard(|| out(out_type, ty_of(type_)?.vec_dot_type() as i32))
}

// ---------------------------------------------------------------------------------------
// Rows
// ---------------------------------------------------------------------------------------

fn quantize_impl(
    type_: i32,
    x: *const f32,
    n_rows: i64,
    n_per_row: i64,
    y: *mut c_void,
    y_size: usize,
    reference: bool,
) -> attnrot_status {
    guard(|| {
        let ops = ops_of(type_)?;
        let (rows, per) = (count(n_rows)?, f32_count(n_per_row)?);
        let row_bytes = ops.ty.row_bytes(per).map_err(status_of)?;
        let n = mul(rows, per)?;
        let xr = region(x.cast(), mul(n, 4)?, 4)?;
        let need = mul(rows, row_bytes)?;
        if y.is_null() {
            return Err(ATTNROT_E_NULL);
        }
        if y_size < need {
            return Err(ATTNROT_E_LENGTH);
        }
        let yr = region(y.cast_const().cast(), need, 1)?;
        no_overlap(xr, yr)?;
        // SAFETY: regions checked above; the caller vouches for the memory.
        let (xs, ys) = unsafe { (slice(x, n), slice_mut(y.cast::<u8>(), need)) };
        if n == 0 {
            return Ok(()); // nothing to do (and no loop over 2^62 empty rows)
        }
        // The rows are packed on both sides and `per` is a whole number of blocks
        // (`row_bytes` accepted it): where the format allows it, one call over all rows
        // writes the bytes of a call per row, without the per-call cost.
        let (per_call, bytes_per_call) = if ops.rows_batch() {
            (n, need)
        } else {
            (per, row_bytes)
        };
        for (xrow, yrow) in xs
            .chunks_exact(per_call)
            .zip(ys.chunks_exact_mut(bytes_per_call))
        {
            if reference {
                ops.quantize_row_ref(xrow, yrow)
            } else {
                ops.quantize_row(xrow, yrow)
            }
            .map_err(status_of)?;
        }
        Ok(())
    })
}

/// Quantize `n_rows` rows of `n_per_row` floats (`x`, contiguous) into `y` as ggml's CPU
/// backend stores them (its `from_float`, what SET_ROWS writes). `y_size` is the size of
/// `y` in bytes, at least `n_rows * attnrot_row_size(type, n_per_row)`.
#[no_mangle]
pub unsafe extern "C" fn attnrot_quantize_rows(
    type_: i32,
    x: *const f32,
    n_rows: i64,
    n_per_row: i64,
    y: *mut c_void,
    y_size: usize,
) -> attnrot_status {
    quantize_impl(type_, x, n_rows, n_per_row, y, y_size, false)
}

/// As `attnrot_quantize_rows`, with upstream's reference quantizer (`quantize_row_*_ref`).
#[no_mangle]
pub unsafe extern "C" fn attnrot_quantize_rows_ref(
    type_: i32,
    x: *const f32,
    n_rows: i64,
    n_per_row: i64,
    y: *mut c_void,
    y_size: usize,
) -> attnrot_status {
    quantize_impl(type_, x, n_rows, n_per_row, y, y_size, true)
}

/// Dequantize `n_rows` rows of `n_per_row` elements from `x` (`x_size` bytes, at least
/// `n_rows * attnrot_row_size(type, n_per_row)`) into `y` (`n_rows * n_per_row` floats).
#[no_mangle]
pub unsafe extern "C" fn attnrot_dequantize_rows(
    type_: i32,
    x: *const c_void,
    x_size: usize,
    n_rows: i64,
    n_per_row: i64,
    y: *mut f32,
) -> attnrot_status {
    guard(|| {
        let ops = ops_of(type_)?;
        let (rows, per) = (count(n_rows)?, f32_count(n_per_row)?);
        let row_bytes = ops.ty.row_bytes(per).map_err(status_of)?;
        let need = mul(rows, row_bytes)?;
        if x.is_null() {
            return Err(ATTNROT_E_NULL);
        }
        if x_size < need {
            return Err(ATTNROT_E_LENGTH);
        }
        let xr = region(x.cast(), need, 1)?;
        let n = mul(rows, per)?;
        let yr = region(y.cast_const().cast(), mul(n, 4)?, 4)?;
        no_overlap(xr, yr)?;
        // SAFETY: regions checked above.
        let (xs, ys) = unsafe { (slice(x.cast::<u8>(), need), slice_mut(y, n)) };
        if n == 0 {
            return Ok(()); // nothing to do (and no loop over 2^62 empty rows)
        }
        // one call over all rows (packed, and every format dequantizes block by block)
        ops.dequantize_row(xs, ys).map_err(status_of)
    })
}

/// Dot product of `n` elements, as ggml's CPU `vec_dot`: `x` of `type` (`x_size` bytes), `y`
/// of `attnrot_type_vec_dot_type(type)` (`y_size` bytes); result in `*out_dot`. q8_1 has no
/// `vec_dot` upstream and here (`ATTNROT_E_UNSUPPORTED`).
#[no_mangle]
pub unsafe extern "C" fn attnrot_vec_dot(
    type_: i32,
    n: i64,
    x: *const c_void,
    x_size: usize,
    y: *const c_void,
    y_size: usize,
    out_dot: *mut f32,
) -> attnrot_status {
    guard(|| {
        let ops = ops_of(type_)?;
        if ops.ty == GgmlType::Q8_1 {
            return Err(ATTNROT_E_UNSUPPORTED);
        }
        let n = count(n)?;
        let nx = ops.ty.row_bytes(n).map_err(status_of)?;
        let ny = ops.ty.vec_dot_type().row_bytes(n).map_err(status_of)?;
        if x.is_null() || y.is_null() || out_dot.is_null() {
            return Err(ATTNROT_E_NULL);
        }
        if x_size < nx || y_size < ny {
            return Err(ATTNROT_E_LENGTH);
        }
        region(x.cast(), nx, 1)?;
        region(y.cast(), ny, 1)?;
        let outr = region(out_dot.cast_const().cast(), 4, 4)?;
        // Inputs may alias each other (both are read-only); the output must not alias them.
        no_overlap(outr, region(x.cast(), nx, 1)?)?;
        no_overlap(outr, region(y.cast(), ny, 1)?)?;
        // SAFETY: regions checked above.
        let (xs, ys) = unsafe { (slice(x.cast::<u8>(), nx), slice(y.cast::<u8>(), ny)) };
        let d = ops.vec_dot(n, xs, ys).map_err(status_of)?;
        out(out_dot, d)
    })
}

// ---------------------------------------------------------------------------------------
// Rotation
// ---------------------------------------------------------------------------------------

/// Rotate each of `n_rows` rows of `row_len` floats by the normalized Walsh–Hadamard
/// transform of size `n` applied to each consecutive group of `n` elements (`n` a power of
/// two, at most 65536, dividing `row_len`; `row_len/n` groups per row): `y = H_n x / sqrt(n)`,
/// bit-identical to ggml's CPU fast path for llama.cpp's Hadamard-hinted MUL_MAT (scale
/// first, then butterflies; `attnrot::rotate`). The transform is its own inverse (up to
/// rounding). `x == y` (in place) is allowed; any other overlap is
/// `ATTNROT_E_OVERLAP`. A non-power-of-two `n`, or `n` not dividing `row_len`, is
/// `ATTNROT_E_LENGTH`.
#[no_mangle]
pub unsafe extern "C" fn attnrot_rotate_rows(
    x: *const f32,
    y: *mut f32,
    n_rows: i64,
    row_len: i64,
    n: i64,
) -> attnrot_status {
    guard(|| {
        let (rows, len, n) = (count(n_rows)?, f32_count(row_len)?, count(n)?);
        if n == 0 || !n.is_power_of_two() || n > crate::rotate::MAX_N || len % n != 0 {
            return Err(ATTNROT_E_LENGTH);
        }
        let total = mul(rows, len)?;
        let xr = region(x.cast(), mul(total, 4)?, 4)?;
        let yr = region(y.cast_const().cast(), mul(total, 4)?, 4)?;
        if x != y.cast_const() {
            no_overlap(xr, yr)?;
        }
        rotate_impl(x, y, total, n)
    })
}

fn rotate_impl(x: *const f32, y: *mut f32, total: usize, n: usize) -> R {
    if x == y.cast_const() {
        // SAFETY: region checked by the caller; one exclusive slice.
        let ys = unsafe { slice_mut(y, total) };
        crate::rotate::rotate_inplace(n, ys).map_err(status_of)
    } else {
        // SAFETY: regions checked by the caller, and checked not to overlap.
        let (xs, ys) = unsafe { (slice(x, total), slice_mut(y, total)) };
        crate::rotate::rotate(n, xs, ys).map_err(status_of)
    }
}

// ---------------------------------------------------------------------------------------
// Attention
// ---------------------------------------------------------------------------------------

/// Shape and parameters of one `attnrot_attention` call (`attnrot_attn_params` in C).
/// A zeroed struct plus the shape, the types and `scale` is a valid start.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct attnrot_attn_params {
    /// Query rows (tokens) per head.
    pub n_q: i64,
    /// Cached K/V rows per KV head.
    pub n_kv: i64,
    /// Query heads.
    pub n_head: i64,
    /// K/V heads; must divide `n_head` (grouped-query attention).
    pub n_head_kv: i64,
    /// Elements per K row and per Q row (DK).
    pub head_dim_k: i64,
    /// Elements per V row and per output row (DV).
    pub head_dim_v: i64,
    /// Type id of the K cache.
    pub k_type: i32,
    /// Type id of the V cache.
    pub v_type: i32,
    /// Multiplies Q·K (usually `1/sqrt(head_dim_k)`).
    pub scale: f32,
    /// ALiBi maximum bias; 0 turns ALiBi off (ggml's `max_bias`). Needs a mask.
    pub max_bias: f32,
    /// Logit soft-capping; 0 turns it off (ggml's `logit_softcap`).
    pub softcap: f32,
    /// Type of `mask`: `ATTNROT_TYPE_F32` (0) or `ATTNROT_TYPE_F16`.
    pub mask_type: i32,
    /// Threads (0 or 1: the calling thread only; n > 1: the caller and n − 1 tasks on the
    /// process-wide worker pool, [`crate::par::Pooled`]; at most 1024). The result does not
    /// depend on it.
    pub n_threads: i32,
    /// Must be 0.
    pub flags: u32,
}

/// Most threads `attnrot_attention` accepts.
const MAX_THREADS: i32 = 1024;

/// Attention over a quantized KV cache with ggml's FLASH_ATTN_EXT semantics
/// (`attnrot::attn::flash_attn_ext`: online softmax, grouped-query heads, ALiBi,
/// soft-capping, sinks; numerics as that function documents: K/V dequantized exactly, Q·K in
/// f32 or with Q converted to K's `vec_dot_type` like ggml, f32 accumulation).
/// Layouts (row-major, contiguous):
/// * `q`: `n_head × n_q × head_dim_k` floats;
/// * `k`: `n_head_kv × n_kv` rows of `head_dim_k` elements of `k_type` (`k_size` bytes);
/// * `v`: `n_head_kv × n_kv` rows of `head_dim_v` elements of `v_type` (`v_size` bytes);
/// * `mask`: NULL, or `n_q × n_kv` values of `mask_type` (f32, rounded to f16 as ggml's CPU
///   backend does for the f16 mask llama.cpp passes; or f16 bits) added to the scaled scores
///   (times the ALiBi slope), shared by all heads; `-INFINITY` hides a position;
/// * `sinks`: NULL, or `n_head` floats (one attention-sink logit per head);
/// * `out`: `n_q × n_head × head_dim_v` floats (ggml's FLASH_ATTN_EXT result layout).
#[no_mangle]
pub unsafe extern "C" fn attnrot_attention(
    params: *const attnrot_attn_params,
    q: *const f32,
    k: *const c_void,
    k_size: usize,
    v: *const c_void,
    v_size: usize,
    mask: *const c_void,
    sinks: *const f32,
    out: *mut f32,
) -> attnrot_status {
    guard(|| {
        region(params.cast(), std::mem::size_of::<attnrot_attn_params>(), 1)?;
        // SAFETY: non-null; read unaligned so that any address works.
        let p = unsafe { params.read_unaligned() };
        if p.flags != 0 || !(0..=MAX_THREADS).contains(&p.n_threads) {
            return Err(ATTNROT_E_INVALID);
        }
        let (kt, vt) = (ty_of(p.k_type)?, ty_of(p.v_type)?);
        let mask_bytes = match ty_of(p.mask_type)? {
            GgmlType::F32 => 4,
            GgmlType::F16 => 2,
            _ => return Err(ATTNROT_E_UNSUPPORTED),
        };
        let (nq, nkv, nh, nhkv, dk, dv) = (
            count(p.n_q)?,
            count(p.n_kv)?,
            count(p.n_head)?,
            count(p.n_head_kv)?,
            count(p.head_dim_k)?,
            count(p.head_dim_v)?,
        );
        if nhkv == 0 || nh % nhkv != 0 {
            return Err(ATTNROT_E_INVALID);
        }
        if !p.scale.is_finite()
            || !p.max_bias.is_finite()
            || !p.softcap.is_finite()
            || p.max_bias < 0.0
            || (p.max_bias > 0.0 && mask.is_null())
        {
            return Err(ATTNROT_E_INVALID);
        }
        if dk == 0 || dv == 0 {
            return Err(ATTNROT_E_LENGTH);
        }
        f32_count(p.head_dim_k)?;
        f32_count(p.head_dim_v)?;
        let k_row = kt.row_bytes(dk).map_err(status_of)?;
        let v_row = vt.row_bytes(dv).map_err(status_of)?;
        let k_need = mul(mul(nhkv, nkv)?, k_row)?;
        let v_need = mul(mul(nhkv, nkv)?, v_row)?;
        if q.is_null() || k.is_null() || v.is_null() || out.is_null() {
            return Err(ATTNROT_E_NULL);
        }
        if k_size < k_need || v_size < v_need {
            return Err(ATTNROT_E_LENGTH);
        }
        let n_qf = mul(mul(nh, nq)?, dk)?;
        let n_out = mul(mul(nq, nh)?, dv)?;
        // The mask's size only matters when there is a mask.
        let n_mask = if mask.is_null() { 0 } else { mul(nq, nkv)? };
        let qr = region(q.cast(), mul(n_qf, 4)?, 4)?;
        let kr = region(k.cast(), k_need, 1)?;
        let vr = region(v.cast(), v_need, 1)?;
        let or = region(out.cast_const().cast(), mul(n_out, 4)?, 4)?;
        let mr = if mask.is_null() {
            None
        } else {
            Some(region(mask.cast(), mul(n_mask, mask_bytes)?, mask_bytes)?)
        };
        let sr = if sinks.is_null() {
            None
        } else {
            Some(region(sinks.cast(), mul(nh, 4)?, 4)?)
        };
        for r in [Some(qr), Some(kr), Some(vr), mr, sr].into_iter().flatten() {
            no_overlap(or, r)?;
        }
        if n_out == 0 {
            return Ok(()); // no query rows or no heads: nothing to compute or write
        }
        use crate::attn::{self, Params, Precision, Tensor, TensorMut};
        // SAFETY: every region was checked above (non-null, aligned, sized, `out` disjoint
        // from the inputs); the caller vouches that the memory is there.
        let (qs, ks, vs, os) = unsafe {
            (
                slice(q, n_qf),
                slice(k.cast::<u8>(), k_need),
                slice(v.cast::<u8>(), v_need),
                slice_mut(out, n_out),
            )
        };
        let e = status_of;
        let qt = Tensor::from_f32(qs, [dk, nq, nh, 1]).map_err(e)?;
        let ktn = Tensor::contiguous(ks, kt, [dk, nkv, nhkv, 1]).map_err(e)?;
        let vtn = Tensor::contiguous(vs, vt, [dv, nkv, nhkv, 1]).map_err(e)?;
        let mut m16: Vec<u16> = Vec::new();
        let mt = if mask.is_null() {
            None
        } else if mask_bytes == 4 {
            // SAFETY: region checked above.
            let mf = unsafe { slice(mask.cast::<f32>(), n_mask) };
            m16.resize(n_mask, 0);
            crate::quant::fp16::f32_row_to_f16(mf, &mut m16).map_err(e)?;
            Some(Tensor::from_f16_bits(&m16, [nkv, nq, 1, 1]).map_err(e)?)
        } else {
            // SAFETY: region checked above.
            let mb = unsafe { slice(mask.cast::<u8>(), n_mask * 2) };
            Some(Tensor::contiguous(mb, GgmlType::F16, [nkv, nq, 1, 1]).map_err(e)?)
        };
        // SAFETY: region checked above.
        let st = if sinks.is_null() {
            None
        } else {
            Some(unsafe { slice(sinks, nh) })
        };
        let params = Params {
            scale: p.scale,
            max_bias: p.max_bias,
            logit_softcap: p.softcap,
            precision: Precision::Default,
        };
        let mut dst = TensorMut::from_f32(os, [dv, nh, nq, 1]).map_err(e)?;
        let threads = p.n_threads.max(1) as usize;
        attn::flash_attn_ext(&qt, &ktn, &vtn, mt.as_ref(), st, &params, &mut dst, threads)
            .map_err(e)
    })
}

// ---------------------------------------------------------------------------------------
// ggml-shaped entry points
// ---------------------------------------------------------------------------------------

/// `ggml_to_float_t`.
pub type attnrot_to_float_t = Option<unsafe extern "C" fn(x: *const c_void, y: *mut f32, k: i64)>;
/// `ggml_from_float_t`.
pub type attnrot_from_float_t = Option<unsafe extern "C" fn(x: *const f32, y: *mut c_void, k: i64)>;
/// `ggml_vec_dot_t`.
pub type attnrot_vec_dot_t = Option<
    unsafe extern "C" fn(
        n: c_int,
        s: *mut f32,
        bs: usize,
        x: *const c_void,
        bx: usize,
        y: *const c_void,
        by: usize,
        nrc: c_int,
    ),
>;

/// The ggml-shaped functions of one format (`attnrot_ggml_traits` in C).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct attnrot_ggml_traits {
    /// ggml's `type_traits[type].to_float`.
    pub to_float: attnrot_to_float_t,
    /// ggml's CPU `type_traits_cpu[type].from_float` (what the CPU backend stores).
    pub from_float: attnrot_from_float_t,
    /// ggml's `type_traits[type].from_float_ref` (`quantize_row_*_ref`).
    pub from_float_ref: attnrot_from_float_t,
    /// ggml's CPU `vec_dot`; NULL where ggml has none (q8_1).
    pub vec_dot: attnrot_vec_dot_t,
    /// The type of `vec_dot`'s second operand.
    pub vec_dot_type: i32,
    /// Elements per block.
    pub block_size: i32,
    /// Bytes per block.
    pub type_size: usize,
}

/// A float region ggml-style code hands us with only an element count.
fn g_region(p: *const u8, elems: i64, elem_bytes: usize, align: usize) -> Option<(usize, usize)> {
    let n = usize::try_from(elems).ok()?;
    region(p, n.checked_mul(elem_bytes)?, align).ok()
}

unsafe fn g_to_float<B: BlockFormat>(x: *const c_void, y: *mut f32, k: i64) {
    let ty = B::TYPE;
    let Ok(n) = usize::try_from(k) else { return };
    let Ok(nb) = ty.row_bytes(n) else { return };
    let (Ok(xr), Some(yr)) = (
        region(x.cast(), nb, 1),
        g_region(y.cast_const().cast(), k, 4, 4),
    ) else {
        return;
    };
    if overlaps(xr, yr) {
        return;
    }
    let _ = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: regions checked; ggml's contract says the memory is there.
        let (xs, ys) = unsafe { (slice(x.cast::<u8>(), nb), slice_mut(y, n)) };
        let _ = quant::format(ty).and_then(|o| o.dequantize_row(xs, ys));
    }));
}

unsafe fn g_from_float<B: BlockFormat>(x: *const f32, y: *mut c_void, k: i64, reference: bool) {
    let ty = B::TYPE;
    let Ok(n) = usize::try_from(k) else { return };
    let Ok(nb) = ty.row_bytes(n) else { return };
    let (Some(xr), Ok(yr)) = (
        g_region(x.cast(), k, 4, 4),
        region(y.cast_const().cast(), nb, 1),
    ) else {
        return;
    };
    if overlaps(xr, yr) {
        return;
    }
    let _ = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: as above.
        let (xs, ys) = unsafe { (slice(x, n), slice_mut(y.cast::<u8>(), nb)) };
        let _ = quant::format(ty).and_then(|o| {
            if reference {
                o.quantize_row_ref(xs, ys)
            } else {
                o.quantize_row(xs, ys)
            }
        });
    }));
}

#[allow(clippy::too_many_arguments)]
unsafe fn g_vec_dot<B: BlockFormat>(
    n: c_int,
    s: *mut f32,
    _bs: usize,
    x: *const c_void,
    _bx: usize,
    y: *const c_void,
    _by: usize,
    nrc: c_int,
) {
    let ty = B::TYPE;
    if nrc != 1 {
        return;
    }
    let Ok(n) = usize::try_from(n) else { return };
    let (Ok(nx), Ok(ny)) = (ty.row_bytes(n), ty.vec_dot_type().row_bytes(n)) else {
        return;
    };
    let (Ok(xr), Ok(yr), Ok(sr)) = (
        region(x.cast(), nx, 1),
        region(y.cast(), ny, 1),
        region(s.cast_const().cast(), 4, 4),
    ) else {
        return;
    };
    if overlaps(sr, xr) || overlaps(sr, yr) {
        return;
    }
    let _ = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: as above.
        let (xs, ys) = unsafe { (slice(x.cast::<u8>(), nx), slice(y.cast::<u8>(), ny)) };
        if let Ok(d) = quant::format(ty).and_then(|o| o.vec_dot(n, xs, ys)) {
            // SAFETY: checked non-null, aligned, not overlapping.
            unsafe { s.write(d) };
        }
    }));
}

macro_rules! ggml_traits_of {
    ($to:ident, $from:ident, $from_ref:ident, $dot:expr) => {
        attnrot_ggml_traits {
            to_float: Some($to),
            from_float: Some($from),
            from_float_ref: Some($from_ref),
            vec_dot: $dot,
            vec_dot_type: 0,
            block_size: 0,
            type_size: 0,
        }
    };
}

/// The ggml-shaped functions of `type` (all formats but f32), with their block geometry.
#[no_mangle]
pub unsafe extern "C" fn attnrot_ggml_get_traits(
    type_: i32,
    out_traits: *mut attnrot_ggml_traits,
) -> attnrot_status {
    guard(|| {
        let ty = ty_of(type_)?;
        let mut t = match ty {
            GgmlType::F32 => return Err(ATTNROT_E_UNSUPPORTED),
            GgmlType::F16 => ggml_traits_of!(
                attnrot_ggml_f16_to_float,
                attnrot_ggml_f16_from_float,
                attnrot_ggml_f16_from_float_ref,
                Some(attnrot_ggml_f16_vec_dot)
            ),
            GgmlType::BF16 => ggml_traits_of!(
                attnrot_ggml_bf16_to_float,
                attnrot_ggml_bf16_from_float,
                attnrot_ggml_bf16_from_float_ref,
                Some(attnrot_ggml_bf16_vec_dot)
            ),
            GgmlType::Q4_0 => ggml_traits_of!(
                attnrot_ggml_q4_0_to_float,
                attnrot_ggml_q4_0_from_float,
                attnrot_ggml_q4_0_from_float_ref,
                Some(attnrot_ggml_q4_0_vec_dot)
            ),
            GgmlType::Q4_1 => ggml_traits_of!(
                attnrot_ggml_q4_1_to_float,
                attnrot_ggml_q4_1_from_float,
                attnrot_ggml_q4_1_from_float_ref,
                Some(attnrot_ggml_q4_1_vec_dot)
            ),
            GgmlType::Q5_0 => ggml_traits_of!(
                attnrot_ggml_q5_0_to_float,
                attnrot_ggml_q5_0_from_float,
                attnrot_ggml_q5_0_from_float_ref,
                Some(attnrot_ggml_q5_0_vec_dot)
            ),
            GgmlType::Q5_1 => ggml_traits_of!(
                attnrot_ggml_q5_1_to_float,
                attnrot_ggml_q5_1_from_float,
                attnrot_ggml_q5_1_from_float_ref,
                Some(attnrot_ggml_q5_1_vec_dot)
            ),
            GgmlType::Q8_0 => ggml_traits_of!(
                attnrot_ggml_q8_0_to_float,
                attnrot_ggml_q8_0_from_float,
                attnrot_ggml_q8_0_from_float_ref,
                Some(attnrot_ggml_q8_0_vec_dot)
            ),
            GgmlType::Q8_1 => ggml_traits_of!(
                attnrot_ggml_q8_1_to_float,
                attnrot_ggml_q8_1_from_float,
                attnrot_ggml_q8_1_from_float_ref,
                None
            ),
            GgmlType::IQ4_NL => ggml_traits_of!(
                attnrot_ggml_iq4_nl_to_float,
                attnrot_ggml_iq4_nl_from_float,
                attnrot_ggml_iq4_nl_from_float_ref,
                Some(attnrot_ggml_iq4_nl_vec_dot)
            ),
        };
        t.vec_dot_type = ty.vec_dot_type() as i32;
        t.block_size = ty.block_size() as i32;
        t.type_size = ty.block_bytes();
        out(out_traits, t)
    })
}

// One set of four per format, written out so that each is a plain `#[no_mangle]` item the
// header check can see. Signatures: exactly ggml's typedefs.

/// `to_float` of f16 (ggml-shaped; trusts the caller, see the module docs).
#[no_mangle]
pub unsafe extern "C" fn attnrot_ggml_f16_to_float(x: *const c_void, y: *mut f32, k: i64) {
    unsafe { g_to_float::<quant::BlockF16>(x, y, k) }
}
/// CPU `from_float` of f16.
#[no_mangle]
pub unsafe extern "C" fn attnrot_ggml_f16_from_float(x: *const f32, y: *mut c_void, k: i64) {
    unsafe { g_from_float::<quant::BlockF16>(x, y, k, false) }
}
/// `from_float_ref` of f16.
#[no_mangle]
pub unsafe extern "C" fn attnrot_ggml_f16_from_float_ref(x: *const f32, y: *mut c_void, k: i64) {
    unsafe { g_from_float::<quant::BlockF16>(x, y, k, true) }
}
/// CPU `vec_dot` of f16 · f16.
#[no_mangle]
pub unsafe extern "C" fn attnrot_ggml_f16_vec_dot(
    n: c_int,
    s: *mut f32,
    bs: usize,
    x: *const c_void,
    bx: usize,
    y: *const c_void,
    by: usize,
    nrc: c_int,
) {
    unsafe { g_vec_dot::<quant::BlockF16>(n, s, bs, x, bx, y, by, nrc) }
}

/// `to_float` of bf16.
#[no_mangle]
pub unsafe extern "C" fn attnrot_ggml_bf16_to_float(x: *const c_void, y: *mut f32, k: i64) {
    unsafe { g_to_float::<quant::BlockBf16>(x, y, k) }
}
/// CPU `from_float` of bf16.
#[no_mangle]
pub unsafe extern "C" fn attnrot_ggml_bf16_from_float(x: *const f32, y: *mut c_void, k: i64) {
    unsafe { g_from_float::<quant::BlockBf16>(x, y, k, false) }
}
/// `from_float_ref` of bf16.
#[no_mangle]
pub unsafe extern "C" fn attnrot_ggml_bf16_from_float_ref(x: *const f32, y: *mut c_void, k: i64) {
    unsafe { g_from_float::<quant::BlockBf16>(x, y, k, true) }
}
/// CPU `vec_dot` of bf16 · bf16.
#[no_mangle]
pub unsafe extern "C" fn attnrot_ggml_bf16_vec_dot(
    n: c_int,
    s: *mut f32,
    bs: usize,
    x: *const c_void,
    bx: usize,
    y: *const c_void,
    by: usize,
    nrc: c_int,
) {
    unsafe { g_vec_dot::<quant::BlockBf16>(n, s, bs, x, bx, y, by, nrc) }
}

/// `to_float` of q4_0.
#[no_mangle]
pub unsafe extern "C" fn attnrot_ggml_q4_0_to_float(x: *const c_void, y: *mut f32, k: i64) {
    unsafe { g_to_float::<quant::BlockQ4_0>(x, y, k) }
}
/// CPU `from_float` of q4_0.
#[no_mangle]
pub unsafe extern "C" fn attnrot_ggml_q4_0_from_float(x: *const f32, y: *mut c_void, k: i64) {
    unsafe { g_from_float::<quant::BlockQ4_0>(x, y, k, false) }
}
/// `from_float_ref` of q4_0.
#[no_mangle]
pub unsafe extern "C" fn attnrot_ggml_q4_0_from_float_ref(x: *const f32, y: *mut c_void, k: i64) {
    unsafe { g_from_float::<quant::BlockQ4_0>(x, y, k, true) }
}
/// CPU `vec_dot` of q4_0 · q8_0.
#[no_mangle]
pub unsafe extern "C" fn attnrot_ggml_q4_0_vec_dot(
    n: c_int,
    s: *mut f32,
    bs: usize,
    x: *const c_void,
    bx: usize,
    y: *const c_void,
    by: usize,
    nrc: c_int,
) {
    unsafe { g_vec_dot::<quant::BlockQ4_0>(n, s, bs, x, bx, y, by, nrc) }
}

/// `to_float` of q4_1.
#[no_mangle]
pub unsafe extern "C" fn attnrot_ggml_q4_1_to_float(x: *const c_void, y: *mut f32, k: i64) {
    unsafe { g_to_float::<quant::BlockQ4_1>(x, y, k) }
}
/// CPU `from_float` of q4_1.
#[no_mangle]
pub unsafe extern "C" fn attnrot_ggml_q4_1_from_float(x: *const f32, y: *mut c_void, k: i64) {
    unsafe { g_from_float::<quant::BlockQ4_1>(x, y, k, false) }
}
/// `from_float_ref` of q4_1.
#[no_mangle]
pub unsafe extern "C" fn attnrot_ggml_q4_1_from_float_ref(x: *const f32, y: *mut c_void, k: i64) {
    unsafe { g_from_float::<quant::BlockQ4_1>(x, y, k, true) }
}
/// CPU `vec_dot` of q4_1 · q8_1.
#[no_mangle]
pub unsafe extern "C" fn attnrot_ggml_q4_1_vec_dot(
    n: c_int,
    s: *mut f32,
    bs: usize,
    x: *const c_void,
    bx: usize,
    y: *const c_void,
    by: usize,
    nrc: c_int,
) {
    unsafe { g_vec_dot::<quant::BlockQ4_1>(n, s, bs, x, bx, y, by, nrc) }
}

/// `to_float` of q5_0.
#[no_mangle]
pub unsafe extern "C" fn attnrot_ggml_q5_0_to_float(x: *const c_void, y: *mut f32, k: i64) {
    unsafe { g_to_float::<quant::BlockQ5_0>(x, y, k) }
}
/// CPU `from_float` of q5_0.
#[no_mangle]
pub unsafe extern "C" fn attnrot_ggml_q5_0_from_float(x: *const f32, y: *mut c_void, k: i64) {
    unsafe { g_from_float::<quant::BlockQ5_0>(x, y, k, false) }
}
/// `from_float_ref` of q5_0.
#[no_mangle]
pub unsafe extern "C" fn attnrot_ggml_q5_0_from_float_ref(x: *const f32, y: *mut c_void, k: i64) {
    unsafe { g_from_float::<quant::BlockQ5_0>(x, y, k, true) }
}
/// CPU `vec_dot` of q5_0 · q8_0.
#[no_mangle]
pub unsafe extern "C" fn attnrot_ggml_q5_0_vec_dot(
    n: c_int,
    s: *mut f32,
    bs: usize,
    x: *const c_void,
    bx: usize,
    y: *const c_void,
    by: usize,
    nrc: c_int,
) {
    unsafe { g_vec_dot::<quant::BlockQ5_0>(n, s, bs, x, bx, y, by, nrc) }
}

/// `to_float` of q5_1.
#[no_mangle]
pub unsafe extern "C" fn attnrot_ggml_q5_1_to_float(x: *const c_void, y: *mut f32, k: i64) {
    unsafe { g_to_float::<quant::BlockQ5_1>(x, y, k) }
}
/// CPU `from_float` of q5_1.
#[no_mangle]
pub unsafe extern "C" fn attnrot_ggml_q5_1_from_float(x: *const f32, y: *mut c_void, k: i64) {
    unsafe { g_from_float::<quant::BlockQ5_1>(x, y, k, false) }
}
/// `from_float_ref` of q5_1.
#[no_mangle]
pub unsafe extern "C" fn attnrot_ggml_q5_1_from_float_ref(x: *const f32, y: *mut c_void, k: i64) {
    unsafe { g_from_float::<quant::BlockQ5_1>(x, y, k, true) }
}
/// CPU `vec_dot` of q5_1 · q8_1.
#[no_mangle]
pub unsafe extern "C" fn attnrot_ggml_q5_1_vec_dot(
    n: c_int,
    s: *mut f32,
    bs: usize,
    x: *const c_void,
    bx: usize,
    y: *const c_void,
    by: usize,
    nrc: c_int,
) {
    unsafe { g_vec_dot::<quant::BlockQ5_1>(n, s, bs, x, bx, y, by, nrc) }
}

/// `to_float` of q8_0.
#[no_mangle]
pub unsafe extern "C" fn attnrot_ggml_q8_0_to_float(x: *const c_void, y: *mut f32, k: i64) {
    unsafe { g_to_float::<quant::BlockQ8_0>(x, y, k) }
}
/// CPU `from_float` of q8_0.
#[no_mangle]
pub unsafe extern "C" fn attnrot_ggml_q8_0_from_float(x: *const f32, y: *mut c_void, k: i64) {
    unsafe { g_from_float::<quant::BlockQ8_0>(x, y, k, false) }
}
/// `from_float_ref` of q8_0.
#[no_mangle]
pub unsafe extern "C" fn attnrot_ggml_q8_0_from_float_ref(x: *const f32, y: *mut c_void, k: i64) {
    unsafe { g_from_float::<quant::BlockQ8_0>(x, y, k, true) }
}
/// CPU `vec_dot` of q8_0 · q8_0.
#[no_mangle]
pub unsafe extern "C" fn attnrot_ggml_q8_0_vec_dot(
    n: c_int,
    s: *mut f32,
    bs: usize,
    x: *const c_void,
    bx: usize,
    y: *const c_void,
    by: usize,
    nrc: c_int,
) {
    unsafe { g_vec_dot::<quant::BlockQ8_0>(n, s, bs, x, bx, y, by, nrc) }
}

/// `to_float` of q8_1 (ggml has none; ours is the obvious inverse of `from_float`).
#[no_mangle]
pub unsafe extern "C" fn attnrot_ggml_q8_1_to_float(x: *const c_void, y: *mut f32, k: i64) {
    unsafe { g_to_float::<quant::BlockQ8_1>(x, y, k) }
}
/// CPU `from_float` of q8_1.
#[no_mangle]
pub unsafe extern "C" fn attnrot_ggml_q8_1_from_float(x: *const f32, y: *mut c_void, k: i64) {
    unsafe { g_from_float::<quant::BlockQ8_1>(x, y, k, false) }
}
/// `from_float_ref` of q8_1.
#[no_mangle]
pub unsafe extern "C" fn attnrot_ggml_q8_1_from_float_ref(x: *const f32, y: *mut c_void, k: i64) {
    unsafe { g_from_float::<quant::BlockQ8_1>(x, y, k, true) }
}

/// `to_float` of iq4_nl.
#[no_mangle]
pub unsafe extern "C" fn attnrot_ggml_iq4_nl_to_float(x: *const c_void, y: *mut f32, k: i64) {
    unsafe { g_to_float::<quant::BlockIq4Nl>(x, y, k) }
}
/// CPU `from_float` of iq4_nl.
#[no_mangle]
pub unsafe extern "C" fn attnrot_ggml_iq4_nl_from_float(x: *const f32, y: *mut c_void, k: i64) {
    unsafe { g_from_float::<quant::BlockIq4Nl>(x, y, k, false) }
}
/// `from_float_ref` of iq4_nl.
#[no_mangle]
pub unsafe extern "C" fn attnrot_ggml_iq4_nl_from_float_ref(x: *const f32, y: *mut c_void, k: i64) {
    unsafe { g_from_float::<quant::BlockIq4Nl>(x, y, k, true) }
}
/// CPU `vec_dot` of iq4_nl · q8_0.
#[no_mangle]
pub unsafe extern "C" fn attnrot_ggml_iq4_nl_vec_dot(
    n: c_int,
    s: *mut f32,
    bs: usize,
    x: *const c_void,
    bx: usize,
    y: *const c_void,
    by: usize,
    nrc: c_int,
) {
    unsafe { g_vec_dot::<quant::BlockIq4Nl>(n, s, bs, x, bx, y, by, nrc) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panics_become_internal() {
        assert_eq!(guard(|| panic!("boom")), ATTNROT_E_INTERNAL);
        assert_eq!(guard(|| Err(ATTNROT_E_OVERLAP)), ATTNROT_E_OVERLAP);
        assert_eq!(guard(|| Ok(())), ATTNROT_OK);
    }

    #[test]
    fn regions() {
        assert_eq!(region(std::ptr::null(), 0, 1), Err(ATTNROT_E_NULL));
        assert_eq!(region(8 as *const u8, 0, 4), Ok((8, 8)));
        assert_eq!(region(9 as *const u8, 4, 4), Err(ATTNROT_E_ALIGNMENT));
        assert_eq!(
            region(8 as *const u8, isize::MAX as usize + 1, 4),
            Err(ATTNROT_E_LENGTH)
        );
        assert_eq!(
            region((usize::MAX - 3) as *const u8, 8, 1),
            Err(ATTNROT_E_LENGTH)
        );
        assert!(overlaps((0, 8), (7, 9)));
        assert!(!overlaps((0, 8), (8, 9)));
        assert!(!overlaps((0, 0), (0, 9)), "empty ranges never overlap");
    }
}
