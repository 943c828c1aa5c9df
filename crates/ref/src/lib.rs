//! The pinned upstream ggml (ggml-base + ggml-cpu), compiled in-process by this crate's
//! build script, and safe helpers to run it as the reference for differential tests,
//! benches and `attnrot check`. Linked only into those hosts, never into `libattnrot.so`.
use attnrot::ggml::sys;
use attnrot::GgmlType;
use std::ffi::CStr;
use std::sync::Once;

pub mod diff;
pub mod fattn;
pub mod rot;
pub mod setrows;

/// Compiler flags the reference was built with (mirrors a default `GGML_NATIVE=ON` build).
pub const ARCH_FLAGS: &str = env!("ATTNROT_REF_ARCH_FLAGS");
/// The unpacked upstream tree the reference was built from.
pub const TREE: &str = env!("ATTNROT_REF_TREE");
/// Directory holding the reference static libraries (`libggml_ref_c.a`, `libggml_ref_cxx.a`),
/// for tests that link C/C++ programs against the same upstream build.
pub const LIB_DIR: &str = env!("ATTNROT_REF_LIB_DIR");

static INIT: Once = Once::new();

/// Initialise ggml's CPU tables (fp16 table, feature detection). Idempotent.
pub fn init() {
    INIT.call_once(|| unsafe {
        // ggml_cpu_init is idempotent upstream; a throwaway context initialises ggml-base tables.
        let ctx = sys::ggml_init(sys::ggml_init_params {
            mem_size: 1024,
            mem_buffer: std::ptr::null_mut(),
            no_alloc: true,
        });
        sys::ggml_free(ctx);
        sys::ggml_cpu_init();
    });
}

/// ggml's version string (`ggml_version()`), e.g. "0.25.3".
pub fn version() -> String {
    unsafe {
        CStr::from_ptr(sys::ggml_version())
            .to_string_lossy()
            .into_owned()
    }
}

/// ggml's commit string (`ggml_commit()`).
pub fn commit() -> String {
    unsafe {
        CStr::from_ptr(sys::ggml_commit())
            .to_string_lossy()
            .into_owned()
    }
}

/// Which x86 features the reference's CPU backend was compiled with.
pub fn cpu_features() -> Vec<&'static str> {
    let mut v = Vec::new();
    unsafe {
        if sys::ggml_cpu_has_avx2() != 0 {
            v.push("avx2")
        }
        if sys::ggml_cpu_has_fma() != 0 {
            v.push("fma")
        }
        if sys::ggml_cpu_has_f16c() != 0 {
            v.push("f16c")
        }
        if sys::ggml_cpu_has_avx512() != 0 {
            v.push("avx512")
        }
        if sys::ggml_cpu_has_avx512_vnni() != 0 {
            v.push("avx512_vnni")
        }
        if sys::ggml_cpu_has_avx512_bf16() != 0 {
            v.push("avx512_bf16")
        }
        if sys::ggml_cpu_has_amx_int8() != 0 {
            v.push("amx_int8")
        }
    }
    v
}

fn traits(ty: GgmlType) -> &'static sys::ggml_type_traits {
    init();
    unsafe { &*sys::ggml_get_type_traits(ty as sys::ggml_type) }
}

fn cpu_traits(ty: GgmlType) -> &'static sys::ggml_type_traits_cpu {
    init();
    unsafe { &*sys::ggml_get_type_traits_cpu(ty as sys::ggml_type) }
}

/// Upstream's block size and bytes per block for `ty`.
pub fn block_size_bytes(ty: GgmlType) -> (usize, usize) {
    let t = traits(ty);
    (t.blck_size as usize, t.type_size)
}

fn row_bytes(ty: GgmlType, n: usize) -> usize {
    let (b, s) = block_size_bytes(ty);
    assert!(
        n.is_multiple_of(b),
        "{n} is not a multiple of {ty}'s block size {b}"
    );
    n / b * s
}

/// What the CPU backend's `from_float` (used by SET_ROWS and for Q in attention) writes.
pub fn quantize_row_cpu(ty: GgmlType, x: &[f32]) -> Vec<u8> {
    let mut y = vec![0u8; row_bytes(ty, x.len())];
    let f = cpu_traits(ty)
        .from_float
        .unwrap_or_else(|| panic!("{ty}: no CPU from_float"));
    unsafe { f(x.as_ptr(), y.as_mut_ptr().cast(), x.len() as i64) };
    y
}

/// [`quantize_row_cpu`] into a caller's buffer (no allocation; for benches).
/// `y` must hold at least the row's bytes.
pub fn quantize_row_cpu_into(ty: GgmlType, x: &[f32], y: &mut [u8]) {
    assert!(
        y.len() >= row_bytes(ty, x.len()),
        "{ty}: output buffer too small"
    );
    let f = cpu_traits(ty)
        .from_float
        .unwrap_or_else(|| panic!("{ty}: no CPU from_float"));
    unsafe { f(x.as_ptr(), y.as_mut_ptr().cast(), x.len() as i64) };
}

/// [`dequantize_row`] into a caller's buffer (no allocation; for benches): `y.len()` elements.
pub fn dequantize_row_into(ty: GgmlType, x: &[u8], y: &mut [f32]) {
    assert!(
        x.len() >= row_bytes(ty, y.len()),
        "{ty}: input row too short"
    );
    let f = traits(ty)
        .to_float
        .unwrap_or_else(|| panic!("{ty}: no to_float"));
    unsafe { f(x.as_ptr().cast(), y.as_mut_ptr(), y.len() as i64) };
}

/// Upstream's `quantize_row_*_ref` (`from_float_ref`).
pub fn quantize_row_ref(ty: GgmlType, x: &[f32]) -> Vec<u8> {
    let mut y = vec![0u8; row_bytes(ty, x.len())];
    let f = traits(ty)
        .from_float_ref
        .unwrap_or_else(|| panic!("{ty}: no from_float_ref"));
    unsafe { f(x.as_ptr(), y.as_mut_ptr().cast(), x.len() as i64) };
    y
}

/// Upstream's `to_float`.
pub fn dequantize_row(ty: GgmlType, x: &[u8], n: usize) -> Vec<f32> {
    assert_eq!(x.len(), row_bytes(ty, n));
    let mut y = vec![0f32; n];
    let f = traits(ty)
        .to_float
        .unwrap_or_else(|| panic!("{ty}: no to_float"));
    unsafe { f(x.as_ptr().cast(), y.as_mut_ptr(), n as i64) };
    y
}

/// Upstream's CPU `vec_dot` of `n` elements: `x` of type `ty`, `y` of `ty.vec_dot_type()`.
pub fn vec_dot(ty: GgmlType, n: usize, x: &[u8], y: &[u8]) -> f32 {
    let t = cpu_traits(ty);
    assert_eq!(
        t.vec_dot_type,
        ty.vec_dot_type() as sys::ggml_type,
        "vec_dot_type of {ty}"
    );
    assert_eq!(x.len(), row_bytes(ty, n));
    assert_eq!(y.len(), row_bytes(ty.vec_dot_type(), n));
    let f = t.vec_dot.unwrap_or_else(|| panic!("{ty}: no vec_dot"));
    let mut s = 0f32;
    unsafe {
        f(
            n as i32,
            &mut s,
            0,
            x.as_ptr().cast(),
            0,
            y.as_ptr().cast(),
            0,
            1,
        )
    };
    s
}

/// Whether upstream has a `to_float` for `ty` (q8_1 has none).
pub fn has_to_float(ty: GgmlType) -> bool {
    traits(ty).to_float.is_some()
}

/// Whether upstream's CPU backend has a `vec_dot` for `ty` (q8_1 has none).
pub fn has_vec_dot(ty: GgmlType) -> bool {
    cpu_traits(ty).vec_dot.is_some()
}
