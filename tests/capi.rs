//! The C API called from Rust, argument by argument: statuses for every kind of bad input
//! (NULL, negative, overflowing, non-block-multiple, too small, misaligned, overlapping,
//! unknown type), nothing written on error, panics turned into `ATTNROT_E_INTERNAL`, and the
//! results equal to the Rust API's (`attnrot::quant::format`) byte for byte, for the status
//! functions and the ggml-shaped ones alike. Seeded (seed printed; `ATTNROT_SEED` repeats).
use attnrot::capi::*;
use attnrot::quant::format;
use attnrot::GgmlType;
use attnrot_ref::diff;
use std::ffi::{c_void, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr::{null, null_mut};

const ROW_FORMATS: [GgmlType; 9] = [
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::Q8_1,
    GgmlType::IQ4_NL,
];

/// The Rust API's answer, or None if it panics (a kernel not written yet).
fn rust<T>(f: impl FnOnce() -> T) -> Option<T> {
    catch_unwind(AssertUnwindSafe(f)).ok()
}

/// A float buffer whose pointer is deliberately misaligned by one byte.
struct Misaligned {
    buf: Vec<u8>,
}
impl Misaligned {
    fn new(n: usize) -> Self {
        Misaligned {
            buf: vec![0u8; n * 4 + 8],
        }
    }
    fn ptr(&mut self) -> *mut f32 {
        let p = self.buf.as_mut_ptr();
        let off = if (p as usize + 1).is_multiple_of(4) {
            2
        } else {
            1
        };
        p.wrapping_add(off).cast()
    }
}

#[test]
fn version_and_status_strings() {
    assert_eq!(attnrot_version(), ATTNROT_VERSION);
    for s in -3..12 {
        let p = attnrot_status_string(s);
        assert!(!p.is_null());
        assert!(!unsafe { CStr::from_ptr(p) }.to_bytes().is_empty());
    }
}

#[test]
fn queries() {
    unsafe {
        for ty in GgmlType::ALL {
            let id = ty as i32;
            let mut b = 0i64;
            assert_eq!(attnrot_type_block_size(id, &mut b), ATTNROT_OK);
            assert_eq!(b as usize, ty.block_size());
            let mut s = 0usize;
            assert_eq!(attnrot_type_size(id, &mut s), ATTNROT_OK);
            assert_eq!(s, ty.block_bytes());
            assert_eq!(attnrot_row_size(id, 64, &mut s), ATTNROT_OK);
            assert_eq!(s, ty.row_bytes(64).unwrap());
            let mut name = null();
            assert_eq!(attnrot_type_name(id, &mut name), ATTNROT_OK);
            assert_eq!(CStr::from_ptr(name).to_str().unwrap(), ty.name());
            let mut back = -1;
            assert_eq!(attnrot_type_from_name(name, &mut back), ATTNROT_OK);
            assert_eq!(back, id);
            let upper = std::ffi::CString::new(ty.name().to_ascii_uppercase()).unwrap();
            assert_eq!(
                attnrot_type_from_name(upper.as_ptr(), &mut back),
                ATTNROT_OK
            );
            assert_eq!(back, id);
            assert_eq!(attnrot_type_vec_dot_type(id, &mut back), ATTNROT_OK);
            assert_eq!(back, ty.vec_dot_type() as i32);
            // misaligned outputs
            let mut raw = [0u8; 16];
            let mis = raw
                .as_mut_ptr()
                .wrapping_add(if (raw.as_ptr() as usize).is_multiple_of(8) {
                    1
                } else {
                    0
                });
            assert_eq!(attnrot_type_block_size(id, mis.cast()), ATTNROT_E_ALIGNMENT);
            assert_eq!(attnrot_type_size(id, mis.cast()), ATTNROT_E_ALIGNMENT);
            assert_eq!(attnrot_type_block_size(id, null_mut()), ATTNROT_E_NULL);
            assert_eq!(attnrot_type_name(id, null_mut()), ATTNROT_E_NULL);
            assert_eq!(attnrot_type_vec_dot_type(id, null_mut()), ATTNROT_E_NULL);
        }
        for bad in [i32::MIN, -1, 4, 5, 10, 19, 21, 29, 31, 39, i32::MAX] {
            let mut b = 7i64;
            assert_eq!(
                attnrot_type_block_size(bad, &mut b),
                ATTNROT_E_UNSUPPORTED,
                "id {bad}"
            );
            assert_eq!(b, 7, "written on error");
            let mut p = null();
            assert_eq!(attnrot_type_name(bad, &mut p), ATTNROT_E_UNSUPPORTED);
            assert!(p.is_null());
        }
        let mut t = -1;
        for bad in [
            &b"q4_2\0"[..],
            b"\0",
            b"q4_0 \0",
            b"\xff\xfe\0",
            b"f16\xc3\0",
        ] {
            assert_eq!(
                attnrot_type_from_name(bad.as_ptr().cast(), &mut t),
                ATTNROT_E_UNSUPPORTED
            );
        }
        assert_eq!(t, -1);
        assert_eq!(attnrot_type_from_name(null(), &mut t), ATTNROT_E_NULL);
        let mut s = 0usize;
        assert_eq!(
            attnrot_row_size(GgmlType::Q4_0 as i32, 31, &mut s),
            ATTNROT_E_LENGTH
        );
        assert_eq!(
            attnrot_row_size(GgmlType::Q4_0 as i32, -32, &mut s),
            ATTNROT_E_LENGTH
        );
        assert_eq!(
            attnrot_row_size(GgmlType::Q4_0 as i32, i64::MIN, &mut s),
            ATTNROT_E_LENGTH
        );
        assert_eq!(
            attnrot_row_size(GgmlType::F32 as i32, i64::MAX, &mut s),
            ATTNROT_E_LENGTH
        );
        assert_eq!(
            attnrot_row_size(GgmlType::Q8_1 as i32, i64::MAX / 32 * 32, &mut s),
            ATTNROT_E_LENGTH
        );
        assert_eq!(
            attnrot_row_size(GgmlType::F16 as i32, 0, &mut s),
            ATTNROT_OK
        );
        assert_eq!(s, 0);
    }
}

/// Quantize, dequantize and dot through the C API equal the Rust API, for every format.
#[test]
fn rows_match_rust_api() {
    let seed = diff::seed("capi rows");
    let mut r = diff::rng(seed);
    let (rows, n) = (5usize, 256usize);
    let mut x: Vec<f32> = (0..rows)
        .flat_map(|_| diff::random_row(&mut r, n))
        .collect();
    for (_, adv) in diff::adversarial_rows(n).into_iter().take(8) {
        x.extend(adv);
    }
    let rows = x.len() / n;
    for ty in ROW_FORMATS {
        let id = ty as i32;
        let ops = format(ty).unwrap();
        let rb = ty.row_bytes(n).unwrap();
        for reference in [false, true] {
            let mut want = vec![0u8; rb * rows];
            let w = rust(|| {
                for i in 0..rows {
                    let y = &mut want[i * rb..(i + 1) * rb];
                    let xs = &x[i * n..(i + 1) * n];
                    if reference {
                        ops.quantize_row_ref(xs, y)
                    } else {
                        ops.quantize_row(xs, y)
                    }
                    .unwrap();
                }
            });
            let mut got = vec![0xEEu8; rb * rows + 7];
            let st = unsafe {
                let f = if reference {
                    attnrot_quantize_rows_ref
                } else {
                    attnrot_quantize_rows
                };
                f(
                    id,
                    x.as_ptr(),
                    rows as i64,
                    n as i64,
                    got.as_mut_ptr().cast(),
                    got.len(),
                )
            };
            match w {
                None => assert_eq!(
                    st, ATTNROT_E_INTERNAL,
                    "{ty} ref={reference}: the Rust API panics, C must say internal"
                ),
                Some(()) => {
                    assert_eq!(st, ATTNROT_OK, "{ty} ref={reference}");
                    assert_eq!(
                        &got[..rb * rows],
                        &want[..],
                        "{ty} ref={reference}: bytes differ"
                    );
                    assert!(
                        got[rb * rows..].iter().all(|&b| b == 0xEE),
                        "{ty}: wrote past the rows"
                    );
                    // ggml-shaped
                    let mut traits = std::mem::MaybeUninit::<attnrot_ggml_traits>::uninit();
                    assert_eq!(
                        unsafe { attnrot_ggml_get_traits(id, traits.as_mut_ptr()) },
                        ATTNROT_OK
                    );
                    let t = unsafe { traits.assume_init() };
                    let f = if reference {
                        t.from_float_ref
                    } else {
                        t.from_float
                    }
                    .unwrap();
                    let mut g = vec![0u8; rb * rows];
                    for i in 0..rows {
                        unsafe {
                            f(
                                x[i * n..].as_ptr(),
                                g[i * rb..].as_mut_ptr().cast(),
                                n as i64,
                            )
                        };
                    }
                    assert_eq!(g, want, "{ty}: ggml-shaped from_float differs");
                }
            }
        }
        // dequantize some valid bytes (quantized if we can, else random bytes: every bit
        // pattern is a valid block)
        let mut q = vec![0u8; rb * rows];
        let filled = rust(|| ops.quantize_row(&x, &mut q).unwrap()).is_some();
        if !filled {
            for (i, b) in q.iter_mut().enumerate() {
                *b = (i as u8).wrapping_mul(37).wrapping_add(11);
            }
        }
        let mut want = vec![0f32; rows * n];
        let w = rust(|| ops.dequantize_row(&q, &mut want).unwrap());
        let mut got = vec![f32::from_bits(0x7fc0_dead); rows * n];
        let st = unsafe {
            attnrot_dequantize_rows(
                id,
                q.as_ptr().cast(),
                q.len(),
                rows as i64,
                n as i64,
                got.as_mut_ptr(),
            )
        };
        match w {
            None => assert_eq!(st, ATTNROT_E_INTERNAL, "{ty} dequantize"),
            Some(()) => {
                assert_eq!(st, ATTNROT_OK, "{ty} dequantize");
                let (a, b): (Vec<u32>, Vec<u32>) = (
                    got.iter().map(|v| v.to_bits()).collect(),
                    want.iter().map(|v| v.to_bits()).collect(),
                );
                assert_eq!(a, b, "{ty} dequantize differs");
                let mut traits = std::mem::MaybeUninit::<attnrot_ggml_traits>::uninit();
                assert_eq!(
                    unsafe { attnrot_ggml_get_traits(id, traits.as_mut_ptr()) },
                    ATTNROT_OK
                );
                let t = unsafe { traits.assume_init() };
                let mut g = vec![0f32; rows * n];
                unsafe {
                    t.to_float.unwrap()(q.as_ptr().cast(), g.as_mut_ptr(), (rows * n) as i64)
                };
                assert_eq!(
                    g.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    b,
                    "{ty}: ggml-shaped to_float differs"
                );
            }
        }
        // vec_dot of row 0 with row 1 in the vec_dot type
        let dt = ty.vec_dot_type();
        let drb = dt.row_bytes(n).unwrap();
        let mut yq = vec![0u8; drb];
        let have_y = rust(|| {
            format(dt)
                .unwrap()
                .quantize_row(&x[n..2 * n], &mut yq)
                .unwrap()
        })
        .is_some();
        if !have_y {
            yq.iter_mut()
                .enumerate()
                .for_each(|(i, b)| *b = (i as u8).wrapping_mul(13));
        }
        let mut d = f32::NAN;
        let st = unsafe {
            attnrot_vec_dot(
                id,
                n as i64,
                q.as_ptr().cast(),
                rb,
                yq.as_ptr().cast(),
                drb,
                &mut d,
            )
        };
        if ty == GgmlType::Q8_1 {
            assert_eq!(st, ATTNROT_E_UNSUPPORTED);
            continue;
        }
        match rust(|| ops.vec_dot(n, &q[..rb], &yq).unwrap()) {
            None => assert_eq!(st, ATTNROT_E_INTERNAL, "{ty} vec_dot"),
            Some(want) => {
                assert_eq!(st, ATTNROT_OK, "{ty} vec_dot");
                assert_eq!(d.to_bits(), want.to_bits(), "{ty} vec_dot");
                let mut traits = std::mem::MaybeUninit::<attnrot_ggml_traits>::uninit();
                assert_eq!(
                    unsafe { attnrot_ggml_get_traits(id, traits.as_mut_ptr()) },
                    ATTNROT_OK
                );
                let t = unsafe { traits.assume_init() };
                let mut s = f32::NAN;
                unsafe {
                    t.vec_dot.unwrap()(
                        n as i32,
                        &mut s,
                        0,
                        q.as_ptr().cast(),
                        0,
                        yq.as_ptr().cast(),
                        0,
                        1,
                    )
                };
                assert_eq!(
                    s.to_bits(),
                    want.to_bits(),
                    "{ty}: ggml-shaped vec_dot differs"
                );
            }
        }
    }
}

/// Bad arguments of the row functions: the right status, nothing written.
#[test]
fn rows_bad_arguments() {
    let n = 64usize;
    let x = vec![0.5f32; 4 * n];
    for ty in ROW_FORMATS {
        let id = ty as i32;
        let rb = ty.row_bytes(n).unwrap();
        let mut y = vec![0x5Au8; 4 * rb];
        let yl = y.len();
        let yp: *mut c_void = y.as_mut_ptr().cast();
        unsafe {
            let q = attnrot_quantize_rows;
            assert_eq!(q(id, null(), 4, n as i64, yp, yl), ATTNROT_E_NULL);
            assert_eq!(
                q(id, x.as_ptr(), 4, n as i64, null_mut(), yl),
                ATTNROT_E_NULL
            );
            assert_eq!(
                q(id, null(), 0, 0, yp, yl),
                ATTNROT_E_NULL,
                "NULL refused even when empty"
            );
            assert_eq!(
                q(id, x.as_ptr(), 4, n as i64, yp, 4 * rb - 1),
                ATTNROT_E_LENGTH
            );
            assert_eq!(q(id, x.as_ptr(), -1, n as i64, yp, yl), ATTNROT_E_LENGTH);
            assert_eq!(q(id, x.as_ptr(), 1, -(n as i64), yp, yl), ATTNROT_E_LENGTH);
            assert_eq!(
                q(id, x.as_ptr(), i64::MIN, n as i64, yp, yl),
                ATTNROT_E_LENGTH
            );
            assert_eq!(
                q(id, x.as_ptr(), i64::MAX, n as i64, yp, usize::MAX),
                ATTNROT_E_LENGTH
            );
            assert_eq!(
                q(id, x.as_ptr(), 1 << 40, 1 << 22, yp, usize::MAX),
                ATTNROT_E_LENGTH
            );
            // floats fit in usize but exceed isize::MAX bytes
            assert_eq!(
                q(id, x.as_ptr(), 1, (1i64 << 61) + 64 * 1024, yp, usize::MAX),
                ATTNROT_E_LENGTH
            );
            if ty.block_size() > 1 {
                assert_eq!(q(id, x.as_ptr(), 1, 48, yp, yl), ATTNROT_E_LENGTH);
            }
            let mut mis = Misaligned::new(4 * n);
            assert_eq!(q(id, mis.ptr(), 4, n as i64, yp, yl), ATTNROT_E_ALIGNMENT);
            // overlap: y inside x, x inside y, partial
            let mut buf = vec![0f32; 8 * n];
            let bp = buf.as_mut_ptr();
            assert_eq!(q(id, bp, 1, n as i64, bp.cast(), rb), ATTNROT_E_OVERLAP);
            assert_eq!(
                q(id, bp.add(1), 1, n as i64, bp.cast(), 8 * n * 4),
                ATTNROT_E_OVERLAP
            );
            // only the bytes actually written count: y_size beyond them may cover x
            let st = q(id, bp.add(n), 1, n as i64, bp.cast(), 8 * n * 4);
            assert!(st == ATTNROT_OK || st == ATTNROT_E_INTERNAL, "{st}");
            assert_eq!(
                q(id, bp, 1, n as i64, bp.add(n - 1).cast(), rb),
                ATTNROT_E_OVERLAP
            );
            // adjacent is fine
            let st = q(id, bp, 1, n as i64, bp.add(n).cast(), rb);
            assert!(
                st == ATTNROT_OK || st == ATTNROT_E_INTERNAL,
                "adjacent buffers: {st}"
            );
            // a pointer near the top of the address space: wraps
            let top = (usize::MAX - 8) as *mut c_void;
            assert_eq!(q(id, x.as_ptr(), 1, n as i64, top, rb), ATTNROT_E_LENGTH);
            assert!(y.iter().all(|&b| b == 0x5A), "{ty}: written on error");

            let mut out = vec![1.25f32; 4 * n];
            let op = out.as_mut_ptr();
            let d = attnrot_dequantize_rows;
            let yc: *const c_void = y.as_ptr().cast();
            assert_eq!(d(id, null(), yl, 4, n as i64, op), ATTNROT_E_NULL);
            assert_eq!(d(id, yc, yl, 4, n as i64, null_mut()), ATTNROT_E_NULL);
            assert_eq!(d(id, yc, yl - 1, 4, n as i64, op), ATTNROT_E_LENGTH);
            assert_eq!(d(id, yc, yl, 4, -(n as i64), op), ATTNROT_E_LENGTH);
            assert_eq!(d(id, yc, usize::MAX, i64::MAX, 32, op), ATTNROT_E_LENGTH);
            assert_eq!(d(id, yc, yl, 4, n as i64, mis.ptr()), ATTNROT_E_ALIGNMENT);
            assert_eq!(
                d(
                    id,
                    op.cast_const().cast(),
                    4 * n * 4,
                    1,
                    n as i64,
                    op.add(3)
                ),
                ATTNROT_E_OVERLAP
            );
            assert!(out.iter().all(|&v| v == 1.25), "{ty}: written on error");

            let v = attnrot_vec_dot;
            let mut s = 9.0f32;
            let dt = ty.vec_dot_type().row_bytes(n).unwrap();
            let want_null = if ty == GgmlType::Q8_1 {
                ATTNROT_E_UNSUPPORTED
            } else {
                ATTNROT_E_NULL
            };
            assert_eq!(v(id, n as i64, null(), rb, yc, dt, &mut s), want_null);
            assert_eq!(v(id, n as i64, yc, rb, yc, dt, null_mut()), want_null);
            if ty != GgmlType::Q8_1 {
                assert_eq!(
                    v(id, n as i64, yc, rb - 1, yc, dt, &mut s),
                    ATTNROT_E_LENGTH
                );
                assert_eq!(
                    v(id, n as i64, yc, rb, yc, dt - 1, &mut s),
                    ATTNROT_E_LENGTH
                );
                assert_eq!(v(id, -1, yc, rb, yc, dt, &mut s), ATTNROT_E_LENGTH);
                assert_eq!(
                    v(id, n as i64, yc, rb, yc, dt, mis.ptr()),
                    ATTNROT_E_ALIGNMENT
                );
                // the output inside an input
                let mut big = vec![0f32; 4 * rb];
                let bp = big.as_mut_ptr();
                assert_eq!(
                    v(id, n as i64, bp.cast_const().cast(), rb, yc, dt, bp.add(1)),
                    ATTNROT_E_OVERLAP
                );
                // the two inputs may alias
                let st = v(id, n as i64, yc, rb, yc, dt, &mut s);
                assert!(st == ATTNROT_OK || st == ATTNROT_E_INTERNAL || ty.vec_dot_type() != ty);
            }
        }
        // f32 and unknown types have no row functions
        for bad in [GgmlType::F32 as i32, 4, 99, -1] {
            let mut y = vec![0u8; 1024];
            let mut t = std::mem::MaybeUninit::<attnrot_ggml_traits>::uninit();
            unsafe {
                assert_eq!(
                    attnrot_quantize_rows(bad, x.as_ptr(), 1, 64, y.as_mut_ptr().cast(), 1024),
                    ATTNROT_E_UNSUPPORTED
                );
                assert_eq!(
                    attnrot_ggml_get_traits(bad, t.as_mut_ptr()),
                    ATTNROT_E_UNSUPPORTED
                );
            }
            assert!(y.iter().all(|&b| b == 0));
        }
    }
}

/// The ggml-shaped functions write nothing on input they can see is wrong.
#[test]
fn ggml_shaped_bad_input_writes_nothing() {
    let n = 64usize;
    let x = vec![0.5f32; 2 * n];
    for ty in ROW_FORMATS {
        let mut t = std::mem::MaybeUninit::<attnrot_ggml_traits>::uninit();
        assert_eq!(
            unsafe { attnrot_ggml_get_traits(ty as i32, t.as_mut_ptr()) },
            ATTNROT_OK
        );
        let t = unsafe { t.assume_init() };
        assert_eq!(t.vec_dot.is_none(), ty == GgmlType::Q8_1);
        assert_eq!(t.vec_dot_type, ty.vec_dot_type() as i32);
        assert_eq!(t.block_size as usize, ty.block_size());
        assert_eq!(t.type_size, ty.block_bytes());
        let rb = ty.row_bytes(n).unwrap();
        let mut y = vec![0x33u8; 4 * rb];
        let mut f = vec![7.0f32; 2 * n];
        let mut mis = Misaligned::new(2 * n);
        let (ff, tf) = (t.from_float.unwrap(), t.to_float.unwrap());
        unsafe {
            for k in [-1i64, -32, i64::MIN, i64::MAX, (1 << 62) + 32 * 1024, 33, 1] {
                if k > 0 && k % ty.block_size() as i64 == 0 && k < 1 << 20 {
                    continue;
                }
                ff(x.as_ptr(), y.as_mut_ptr().cast(), k);
                tf(y.as_ptr().cast(), f.as_mut_ptr(), k);
            }
            ff(null(), y.as_mut_ptr().cast(), n as i64);
            ff(x.as_ptr(), null_mut(), n as i64);
            ff(mis.ptr(), y.as_mut_ptr().cast(), n as i64);
            tf(null(), f.as_mut_ptr(), n as i64);
            tf(y.as_ptr().cast(), null_mut(), n as i64);
            tf(y.as_ptr().cast(), mis.ptr(), n as i64);
            // overlap
            tf(f.as_ptr().cast(), f.as_mut_ptr().add(1), n as i64);
            ff(f.as_ptr(), f.as_mut_ptr().add(2).cast(), n as i64);
            if let Some(vd) = t.vec_dot {
                let mut s = 3.0f32;
                vd(
                    n as i32,
                    &mut s,
                    0,
                    y.as_ptr().cast(),
                    0,
                    y.as_ptr().cast(),
                    0,
                    2,
                );
                vd(
                    n as i32,
                    &mut s,
                    0,
                    y.as_ptr().cast(),
                    0,
                    y.as_ptr().cast(),
                    0,
                    0,
                );
                vd(
                    -32,
                    &mut s,
                    0,
                    y.as_ptr().cast(),
                    0,
                    y.as_ptr().cast(),
                    0,
                    1,
                );
                vd(
                    n as i32,
                    null_mut(),
                    0,
                    y.as_ptr().cast(),
                    0,
                    y.as_ptr().cast(),
                    0,
                    1,
                );
                vd(n as i32, &mut s, 0, null(), 0, y.as_ptr().cast(), 0, 1);
                vd(
                    n as i32,
                    mis.ptr(),
                    0,
                    y.as_ptr().cast(),
                    0,
                    y.as_ptr().cast(),
                    0,
                    1,
                );
                let sp: *mut f32 = y.as_mut_ptr().add(4).cast();
                if (sp as usize).is_multiple_of(4) {
                    vd(
                        n as i32,
                        sp,
                        0,
                        y.as_ptr().cast(),
                        0,
                        y.as_ptr().cast(),
                        0,
                        1,
                    );
                }
                if ty.block_size() > 1 {
                    vd(33, &mut s, 0, y.as_ptr().cast(), 0, y.as_ptr().cast(), 0, 1);
                }
                assert_eq!(s, 3.0);
            }
        }
        assert!(y.iter().all(|&b| b == 0x33), "{ty}: written");
        assert!(f.iter().all(|&v| v == 7.0), "{ty}: written");
    }
}

#[test]
fn rotate_arguments() {
    let n = 64usize;
    let x: Vec<f32> = (0..4 * n).map(|i| (i as f32 * 0.37).sin()).collect();
    let mut y = vec![0f32; 4 * n];
    unsafe {
        let r = attnrot_rotate_rows;
        assert_eq!(r(null(), y.as_mut_ptr(), 4, n as i64, 64), ATTNROT_E_NULL);
        assert_eq!(r(x.as_ptr(), null_mut(), 4, n as i64, 64), ATTNROT_E_NULL);
        for (rows, len, h) in [
            (4, 64, 48),
            (4, 64, 0),
            (4, 64, -64),
            (4, 96, 64),
            (-1, 64, 64),
            (4, 64, 128),
            (i64::MAX, 64, 64),
        ] {
            assert_eq!(
                r(x.as_ptr(), y.as_mut_ptr(), rows, len, h),
                ATTNROT_E_LENGTH,
                "rows {rows} len {len} n {h}"
            );
        }
        let mut mis = Misaligned::new(4 * n);
        assert_eq!(
            r(x.as_ptr(), mis.ptr(), 4, n as i64, 64),
            ATTNROT_E_ALIGNMENT
        );
        let mut buf = vec![0f32; 8 * n];
        let bp = buf.as_mut_ptr();
        assert_eq!(r(bp, bp.add(1), 4, n as i64, 64), ATTNROT_E_OVERLAP);
        assert!(y.iter().all(|&v| v == 0.0));
        let st = r(x.as_ptr(), y.as_mut_ptr(), 4, n as i64, 64);
        assert!(st == ATTNROT_OK || st == ATTNROT_E_UNSUPPORTED, "{st}");
        if st == ATTNROT_OK {
            // H/sqrt(n) is orthogonal and self-inverse; in place allowed
            let mut z = y.clone();
            assert_eq!(r(z.as_ptr(), z.as_mut_ptr(), 4, n as i64, 64), ATTNROT_OK);
            for (a, b) in z.iter().zip(&x) {
                assert!((a - b).abs() < 1e-5, "{a} vs {b}");
            }
            // first element of each group is the scaled sum
            let s: f32 = x[..64].iter().sum::<f32>() / 8.0;
            assert!((y[0] - s).abs() < 1e-4);
        } else {
            eprintln!("attnrot_rotate_rows: not implemented in this build (ATTNROT_E_UNSUPPORTED)");
        }
    }
}

fn attn_params() -> attnrot_attn_params {
    attnrot_attn_params {
        n_q: 3,
        n_kv: 64,
        n_head: 4,
        n_head_kv: 2,
        head_dim_k: 64,
        head_dim_v: 64,
        k_type: GgmlType::Q8_0 as i32,
        v_type: GgmlType::Q4_0 as i32,
        scale: 0.125,
        max_bias: 0.0,
        softcap: 0.0,
        mask_type: GgmlType::F32 as i32,
        n_threads: 0,
        flags: 0,
    }
}

#[test]
fn attention_arguments() {
    let p = attn_params();
    let q = vec![0.1f32; 4 * 3 * 64];
    let k = vec![0u8; 2 * 64 * 68];
    let v = vec![0u8; 2 * 64 * 36];
    let mask = vec![0f32; 3 * 64];
    let sinks = [0f32; 4];
    let mut out = vec![5.0f32; 3 * 4 * 64];
    let call = |p: &attnrot_attn_params,
                q: *const f32,
                ks: usize,
                vs: usize,
                m: *const f32,
                o: *mut f32| unsafe {
        attnrot_attention(
            p,
            q,
            k.as_ptr().cast(),
            ks,
            v.as_ptr().cast(),
            vs,
            m.cast(),
            sinks.as_ptr(),
            o,
        )
    };
    let op = out.as_mut_ptr();
    assert_eq!(
        unsafe {
            attnrot_attention(
                null(),
                q.as_ptr(),
                k.as_ptr().cast(),
                k.len(),
                v.as_ptr().cast(),
                v.len(),
                null(),
                null(),
                op,
            )
        },
        ATTNROT_E_NULL
    );
    assert_eq!(
        call(&p, null(), k.len(), v.len(), mask.as_ptr(), op),
        ATTNROT_E_NULL
    );
    assert_eq!(
        call(&p, q.as_ptr(), k.len(), v.len(), mask.as_ptr(), null_mut()),
        ATTNROT_E_NULL
    );
    assert_eq!(
        call(&p, q.as_ptr(), k.len() - 1, v.len(), mask.as_ptr(), op),
        ATTNROT_E_LENGTH
    );
    assert_eq!(
        call(&p, q.as_ptr(), k.len(), v.len() - 1, mask.as_ptr(), op),
        ATTNROT_E_LENGTH
    );
    assert_eq!(
        call(
            &p,
            q.as_ptr(),
            k.len(),
            v.len(),
            mask.as_ptr(),
            q.as_ptr().cast_mut()
        ),
        ATTNROT_E_OVERLAP
    );
    assert_eq!(
        call(&p, q.as_ptr(), k.len(), v.len(), op, op),
        ATTNROT_E_OVERLAP
    );
    let mut mis = Misaligned::new(3 * 4 * 64);
    assert_eq!(
        call(&p, q.as_ptr(), k.len(), v.len(), mask.as_ptr(), mis.ptr()),
        ATTNROT_E_ALIGNMENT
    );
    let bad: Vec<(attnrot_attn_params, i32)> = vec![
        (attnrot_attn_params { n_head_kv: 3, ..p }, ATTNROT_E_INVALID),
        (attnrot_attn_params { n_head_kv: 0, ..p }, ATTNROT_E_INVALID),
        (attnrot_attn_params { n_q: -1, ..p }, ATTNROT_E_LENGTH),
        (
            attnrot_attn_params {
                n_kv: i64::MAX,
                ..p
            },
            ATTNROT_E_LENGTH,
        ),
        (
            attnrot_attn_params {
                n_head: i64::MAX - 1,
                n_head_kv: 1,
                ..p
            },
            ATTNROT_E_LENGTH,
        ),
        (
            attnrot_attn_params {
                head_dim_k: 40,
                ..p
            },
            ATTNROT_E_LENGTH,
        ),
        (
            attnrot_attn_params {
                head_dim_v: i64::MIN,
                ..p
            },
            ATTNROT_E_LENGTH,
        ),
        (
            attnrot_attn_params { k_type: 4, ..p },
            ATTNROT_E_UNSUPPORTED,
        ),
        (
            attnrot_attn_params { v_type: -9, ..p },
            ATTNROT_E_UNSUPPORTED,
        ),
        (
            attnrot_attn_params {
                scale: f32::NAN,
                ..p
            },
            ATTNROT_E_INVALID,
        ),
        (
            attnrot_attn_params {
                softcap: f32::INFINITY,
                ..p
            },
            ATTNROT_E_INVALID,
        ),
        (
            attnrot_attn_params {
                max_bias: -1.0,
                ..p
            },
            ATTNROT_E_INVALID,
        ),
        (attnrot_attn_params { flags: 2, ..p }, ATTNROT_E_INVALID),
        (
            attnrot_attn_params { n_threads: -1, ..p },
            ATTNROT_E_INVALID,
        ),
        (
            attnrot_attn_params {
                n_threads: 100_000,
                ..p
            },
            ATTNROT_E_INVALID,
        ),
        (
            attnrot_attn_params {
                mask_type: GgmlType::Q8_0 as i32,
                ..p
            },
            ATTNROT_E_UNSUPPORTED,
        ),
        (
            attnrot_attn_params { mask_type: 77, ..p },
            ATTNROT_E_UNSUPPORTED,
        ),
        (attnrot_attn_params { head_dim_k: 0, ..p }, ATTNROT_E_LENGTH),
    ];
    for (bp, want) in bad {
        assert_eq!(
            call(&bp, q.as_ptr(), k.len(), v.len(), mask.as_ptr(), op),
            want,
            "{bp:?}"
        );
    }
    assert!(out.iter().all(|&v| v == 5.0), "written on error");
    // params read unaligned: a copy at an odd address is fine
    let mut raw = vec![0u8; std::mem::size_of::<attnrot_attn_params>() + 1];
    let pp = raw
        .as_mut_ptr()
        .wrapping_add(1)
        .cast::<attnrot_attn_params>();
    unsafe { pp.write_unaligned(attnrot_attn_params { flags: 2, ..p }) };
    assert_eq!(
        unsafe {
            attnrot_attention(
                pp,
                q.as_ptr(),
                k.as_ptr().cast(),
                k.len(),
                v.as_ptr().cast(),
                v.len(),
                null(),
                null(),
                op,
            )
        },
        ATTNROT_E_INVALID
    );
    // ALiBi needs a mask
    let alibi = attnrot_attn_params { max_bias: 8.0, ..p };
    assert_eq!(
        call(&alibi, q.as_ptr(), k.len(), v.len(), null(), op),
        ATTNROT_E_INVALID
    );
    assert!(out.iter().all(|&v| v == 5.0), "written on error");
    assert_eq!(
        call(&p, q.as_ptr(), k.len(), v.len(), mask.as_ptr(), op),
        ATTNROT_OK
    );
    // zero V: zero output
    assert!(out.iter().all(|&v| v == 0.0));
}

/// Rotation through the C API is the Rust API's, bit for bit, out of place and in place.
#[test]
fn rotate_matches_rust_api() {
    let seed = diff::seed("capi rotate");
    let mut r = diff::rng(seed);
    for (rows, len, n) in [
        (3usize, 128usize, 64usize),
        (2, 256, 256),
        (5, 96, 32),
        (1, 64, 1),
        (0, 64, 64),
    ] {
        let x: Vec<f32> = (0..rows)
            .flat_map(|_| diff::random_row(&mut r, len))
            .collect();
        let mut want = vec![0f32; rows * len];
        attnrot::rotate::rotate(n, &x, &mut want).unwrap();
        let mut got = vec![f32::NAN; rows * len];
        let st = unsafe {
            attnrot_rotate_rows(
                x.as_ptr(),
                got.as_mut_ptr(),
                rows as i64,
                len as i64,
                n as i64,
            )
        };
        assert_eq!(st, ATTNROT_OK);
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&got), bits(&want), "rows {rows} len {len} n {n}");
        let mut inplace = x.clone();
        let p = inplace.as_mut_ptr();
        assert_eq!(
            unsafe { attnrot_rotate_rows(p, p, rows as i64, len as i64, n as i64) },
            ATTNROT_OK
        );
        assert_eq!(bits(&inplace), bits(&want));
    }
    let x = vec![1f32; 1 << 17];
    let mut y = vec![0f32; 1 << 17];
    assert_eq!(
        unsafe { attnrot_rotate_rows(x.as_ptr(), y.as_mut_ptr(), 1, 1 << 17, 1 << 17) },
        ATTNROT_E_LENGTH
    );
}

/// Naive attention in f64 over dequantized K/V, for checking the C API independently.
fn naive_attention(
    p: &attnrot_attn_params,
    q: &[f32],
    kf: &[f32],
    vf: &[f32],
    mask: Option<&[f32]>,
    sinks: Option<&[f32]>,
) -> Vec<f32> {
    let (nq, nkv, nh, nhkv, dk, dv) = (
        p.n_q as usize,
        p.n_kv as usize,
        p.n_head as usize,
        p.n_head_kv as usize,
        p.head_dim_k as usize,
        p.head_dim_v as usize,
    );
    let mut out = vec![0f32; nq * nh * dv];
    let n_head_log2 = 1usize << (usize::BITS - 1 - nh.leading_zeros());
    let m0 = 2f64.powf(-(p.max_bias as f64) / n_head_log2 as f64);
    let m1 = 2f64.powf(-(p.max_bias as f64) / 2.0 / n_head_log2 as f64);
    for h in 0..nh {
        let hk = h / (nh / nhkv);
        let slope = if p.max_bias > 0.0 {
            if h < n_head_log2 {
                m0.powi(h as i32 + 1)
            } else {
                m1.powi(2 * (h - n_head_log2) as i32 + 1)
            }
        } else {
            1.0
        };
        for i in 0..nq {
            let qrow = &q[(h * nq + i) * dk..][..dk];
            let mut s = vec![f64::NEG_INFINITY; nkv];
            for (j, sj) in s.iter_mut().enumerate() {
                let mv = mask.map(|m| slope * m[i * nkv + j] as f64).unwrap_or(0.0);
                if mv == f64::NEG_INFINITY {
                    continue;
                }
                let krow = &kf[(hk * nkv + j) * dk..][..dk];
                let mut d: f64 = qrow
                    .iter()
                    .zip(krow)
                    .map(|(a, b)| *a as f64 * *b as f64)
                    .sum();
                d *= p.scale as f64;
                if p.softcap != 0.0 {
                    d = p.softcap as f64 * (d / p.softcap as f64).tanh();
                }
                *sj = d + mv;
            }
            let mut mx = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            if let Some(sk) = sinks {
                mx = mx.max(sk[h] as f64);
            }
            let mut den = 0.0;
            let mut acc = vec![0f64; dv];
            for (j, sj) in s.iter().enumerate() {
                if *sj == f64::NEG_INFINITY {
                    continue;
                }
                let w = (sj - mx).exp();
                den += w;
                for (a, b) in acc.iter_mut().zip(&vf[(hk * nkv + j) * dv..][..dv]) {
                    *a += w * *b as f64;
                }
            }
            if let Some(sk) = sinks {
                den += (sk[h] as f64 - mx).exp();
            }
            for d in 0..dv {
                out[(i * nh + h) * dv + d] = if den == 0.0 {
                    0.0
                } else {
                    (acc[d] / den) as f32
                };
            }
        }
    }
    out
}

struct AttnCase {
    kt: GgmlType,
    vt: GgmlType,
    nq: usize,
    nkv: usize,
    nh: usize,
    nhkv: usize,
    dk: usize,
    dv: usize,
    max_bias: f32,
    softcap: f32,
    mask: bool,
    sinks: bool,
}

/// Attention through the C API: equal to the Rust API bit for bit, and close to naive f64
/// attention over the dequantized cache (f16-rounded mask), for several shapes and options.
#[test]
fn attention_matches_rust_api_and_naive() {
    use attnrot::attn::{self, Params, Tensor};
    use rand::Rng;
    let seed = diff::seed("capi attention");
    let mut r = diff::rng(seed);
    let c = |kt, vt, nq, nkv, nh, nhkv, dk, dv| AttnCase {
        kt,
        vt,
        nq,
        nkv,
        nh,
        nhkv,
        dk,
        dv,
        max_bias: 0.0,
        softcap: 0.0,
        mask: true,
        sinks: false,
    };
    let cases = [
        c(GgmlType::Q8_0, GgmlType::Q8_0, 1, 37, 4, 2, 64, 64),
        AttnCase {
            sinks: true,
            ..c(GgmlType::Q4_0, GgmlType::Q4_0, 5, 100, 6, 3, 128, 64)
        },
        AttnCase {
            max_bias: 8.0,
            ..c(GgmlType::F16, GgmlType::Q5_1, 3, 64, 2, 2, 64, 32)
        },
        AttnCase {
            softcap: 30.0,
            mask: false,
            sinks: true,
            ..c(GgmlType::IQ4_NL, GgmlType::BF16, 2, 600, 4, 1, 64, 64)
        },
        c(GgmlType::Q5_0, GgmlType::Q4_1, 4, 70, 8, 2, 64, 64),
    ];
    for AttnCase {
        kt,
        vt,
        nq,
        nkv,
        nh,
        nhkv,
        dk,
        dv,
        max_bias,
        softcap,
        mask: with_mask,
        sinks: with_sinks,
    } in cases
    {
        let p = attnrot_attn_params {
            n_q: nq as i64,
            n_kv: nkv as i64,
            n_head: nh as i64,
            n_head_kv: nhkv as i64,
            head_dim_k: dk as i64,
            head_dim_v: dv as i64,
            k_type: kt as i32,
            v_type: vt as i32,
            scale: 1.0 / (dk as f32).sqrt(),
            max_bias,
            softcap,
            mask_type: GgmlType::F32 as i32,
            n_threads: 2,
            flags: 0,
        };
        let mut rnd =
            |n: usize| -> Vec<f32> { (0..n).map(|_| r.random_range(-1.0f32..1.0)).collect() };
        let q = rnd(nh * nq * dk);
        let kf0 = rnd(nhkv * nkv * dk);
        let vf0 = rnd(nhkv * nkv * dv);
        let sinks = rnd(nh);
        let (kb, vb) = (kt.row_bytes(dk).unwrap(), vt.row_bytes(dv).unwrap());
        let mut k = vec![0u8; nhkv * nkv * kb];
        let mut v = vec![0u8; nhkv * nkv * vb];
        let mut kf = vec![0f32; kf0.len()];
        let mut vf = vec![0f32; vf0.len()];
        // Skip formats whose kernels are not in this build yet.
        let ok = rust(|| {
            for j in 0..nhkv * nkv {
                format(kt)
                    .unwrap()
                    .quantize_row(&kf0[j * dk..][..dk], &mut k[j * kb..][..kb])
                    .unwrap();
                format(vt)
                    .unwrap()
                    .quantize_row(&vf0[j * dv..][..dv], &mut v[j * vb..][..vb])
                    .unwrap();
            }
            format(kt).unwrap().dequantize_row(&k, &mut kf).unwrap();
            format(vt).unwrap().dequantize_row(&v, &mut vf).unwrap();
        });
        if ok.is_none() {
            eprintln!("skip {kt}/{vt}: format not implemented in this build");
            continue;
        }
        // causal mask with a hidden prefix for row 0, values that are not f16-exact
        let mask: Vec<f32> = (0..nq * nkv)
            .map(|ij| {
                let (i, j) = (ij / nkv, ij % nkv);
                if j > nkv - nq + i || (i == 0 && j < 3) {
                    f32::NEG_INFINITY
                } else {
                    -0.1 * (j % 5) as f32 - 0.0123
                }
            })
            .collect();
        let mp: *const c_void = if with_mask {
            mask.as_ptr().cast()
        } else {
            null()
        };
        let sp = if with_sinks { sinks.as_ptr() } else { null() };
        let mut out = vec![f32::NAN; nq * nh * dv];
        let (kp, vp) = (k.as_ptr().cast(), v.as_ptr().cast());
        let st = unsafe {
            attnrot_attention(
                &p,
                q.as_ptr(),
                kp,
                k.len(),
                vp,
                v.len(),
                mp,
                sp,
                out.as_mut_ptr(),
            )
        };
        assert_eq!(st, ATTNROT_OK, "{kt}/{vt}");
        // Rust API
        let mut m16 = vec![0u16; mask.len()];
        attnrot::quant::fp16::f32_row_to_f16(&mask, &mut m16).unwrap();
        let mt = Tensor::from_f16_bits(&m16, [nkv, nq, 1, 1]).unwrap();
        let want = attn::attend(
            &Tensor::from_f32(&q, [dk, nq, nh, 1]).unwrap(),
            &Tensor::contiguous(&k, kt, [dk, nkv, nhkv, 1]).unwrap(),
            &Tensor::contiguous(&v, vt, [dv, nkv, nhkv, 1]).unwrap(),
            if with_mask { Some(&mt) } else { None },
            if with_sinks { Some(&sinks[..]) } else { None },
            &Params {
                scale: p.scale,
                max_bias,
                logit_softcap: softcap,
                precision: Default::default(),
            },
            1,
        )
        .unwrap();
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        assert_eq!(
            bits(&out),
            bits(&want),
            "{kt}/{vt}: C API differs from the Rust API"
        );
        // an f16 mask gives the same
        let p16 = attnrot_attn_params {
            mask_type: GgmlType::F16 as i32,
            ..p
        };
        let mut out16 = vec![f32::NAN; out.len()];
        let mp16: *const c_void = if with_mask {
            m16.as_ptr().cast()
        } else {
            null()
        };
        let st = unsafe {
            attnrot_attention(
                &p16,
                q.as_ptr(),
                kp,
                k.len(),
                vp,
                v.len(),
                mp16,
                sp,
                out16.as_mut_ptr(),
            )
        };
        assert_eq!(st, ATTNROT_OK);
        assert_eq!(bits(&out16), bits(&out));
        // naive f64
        let mr: Vec<f32> = m16
            .iter()
            .map(|&h| attnrot::quant::fp16::f16_to_f32(h))
            .collect();
        // Two well-defined semantics: Q in f32, or Q converted to K's vec_dot type first
        // (ggml's CPU backend). The output must match one of them to float rounding, and
        // both loosely (the Q conversion error).
        let dt = kt.vec_dot_type();
        let mut qq = vec![0u8; dt.row_bytes(q.len()).unwrap()];
        let mut q_conv = vec![0f32; q.len()];
        format(dt).unwrap().quantize_row(&q, &mut qq).unwrap();
        format(dt)
            .unwrap()
            .dequantize_row(&qq, &mut q_conv)
            .unwrap();
        let worst_vs = |qx: &[f32]| {
            let naive = naive_attention(
                &p,
                qx,
                &kf,
                &vf,
                if with_mask { Some(&mr) } else { None },
                if with_sinks { Some(&sinks) } else { None },
            );
            out.iter()
                .zip(&naive)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max)
        };
        let (w_f32, w_conv) = (worst_vs(&q), worst_vs(&q_conv));
        eprintln!(
            "{kt}/{vt} nq {nq} nkv {nkv} heads {nh}/{nhkv} dk {dk} dv {dv} bias {max_bias} softcap {softcap}: max |C - naive| = {w_f32:.2e} (Q f32), {w_conv:.2e} (Q as {dt})"
        );
        assert!(w_f32.min(w_conv) < 1e-4, "{kt}/{vt}: {w_f32} / {w_conv}");
        assert!(w_f32.max(w_conv) < 5e-3, "{kt}/{vt}: {w_f32} / {w_conv}");
    }
}
