//! Bodies of the C API fuzz targets, shared by the cargo-fuzz binaries (`fuzz/fuzz_targets/`)
//! and the corpus replay in the normal test suite (`tests/capi_fuzz_corpus.rs`, which
//! includes this file with `#[path]`). Depends only on `attnrot` and `attnrot_ref`.
//!
//! Each body decodes its arguments from the fuzz input, calls C entry points through their
//! `extern "C"` definitions with real buffers, and checks:
//! * nothing crashes or reads/writes out of bounds (ASan when run by cargo-fuzz);
//! * the status is a known code, never `ATTNROT_E_INTERNAL`;
//! * an independent oracle for "are these arguments valid": valid ⇒ `ATTNROT_OK`, invalid ⇒
//!   an error and nothing written (outputs hold a sentinel);
//! * outputs agree with the Rust API (and, in `diff_quant`, with upstream ggml).
//!
//! The harness honours the one thing the C contract leaves to callers: a pointer points to
//! as many bytes as the arguments say. So it calls with counts that either fit its real
//! buffers or cannot be satisfied by any buffer (byte sizes above `isize::MAX`, overflow),
//! never counts that are plausible but larger than its buffers.
#![allow(clippy::missing_safety_doc, dead_code)]

use attnrot::capi::*;
use attnrot::quant::format;
use attnrot::GgmlType;
use std::ffi::{c_void, CStr};
use std::ptr::{null, null_mut};

/// Reads fuzz bytes as arguments; zeros when exhausted.
pub struct Input<'a> {
    d: &'a [u8],
}

impl<'a> Input<'a> {
    pub fn new(d: &'a [u8]) -> Self {
        Input { d }
    }
    pub fn u8(&mut self) -> u8 {
        match self.d.split_first() {
            Some((b, r)) => {
                self.d = r;
                *b
            }
            None => 0,
        }
    }
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }
    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }
    pub fn u64(&mut self) -> u64 {
        (self.u32() as u64) | ((self.u32() as u64) << 32)
    }
    pub fn bool(&mut self) -> bool {
        self.u8() & 1 == 1
    }
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.d)
    }
    pub fn take(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.d.len());
        let (a, b) = self.d.split_at(n);
        self.d = b;
        a
    }
    /// A count: mostly small and block-friendly, sometimes adversarial.
    pub fn count(&mut self, small_max: i64) -> i64 {
        let sel = self.u8();
        match sel % 16 {
            0 => 0,
            1 => -1 - (self.u8() as i64),
            2 => i64::MAX - (self.u8() as i64),
            3 => i64::MIN + (self.u8() as i64),
            4 => (1i64 << (40 + self.u8() % 23)) + 32 * (self.u8() as i64),
            5 => 32 * (1 + (self.u8() as i64 % 8)) + (self.u8() as i64 % 3) - 1, // 31/32/33-ish
            6 => self.u64() as i64,
            _ => (self.u16() as i64) % (small_max + 1),
        }
    }
    /// A type id: usually one of ggml's, sometimes anything.
    pub fn type_id(&mut self) -> i32 {
        let s = self.u8();
        if s < 224 {
            GgmlType::ALL[s as usize % GgmlType::ALL.len()] as i32
        } else {
            match s % 4 {
                0 => self.u32() as i32,
                1 => -1,
                2 => 4,
                _ => 31,
            }
        }
    }
    /// Floats: raw bits (NaN, inf, subnormals included) or tame values.
    pub fn floats(&mut self, n: usize) -> Vec<f32> {
        let raw = self.bool();
        (0..n)
            .map(|i| {
                if raw {
                    f32::from_bits(self.u32())
                } else {
                    let b = self.u8();
                    (b as f32 - 128.0) * 0.03 * (1 + i % 3) as f32
                }
            })
            .collect()
    }
}

/// Size in bytes a C call would touch, or None when no buffer could hold it (the call must
/// then fail without touching memory).
fn bytes(elems: i64, per: usize) -> Option<usize> {
    let n = usize::try_from(elems).ok()?;
    let b = n.checked_mul(per)?;
    (b <= isize::MAX as usize).then_some(b)
}

/// Whether two byte ranges share a byte (empty ranges never do).
fn overlap(a: usize, alen: usize, b: usize, blen: usize) -> bool {
    alen > 0 && blen > 0 && a < b + blen && b < a + alen
}

fn status_ok(st: attnrot_status) {
    assert!(
        (ATTNROT_OK..=ATTNROT_E_INVALID).contains(&st),
        "unknown status {st}"
    );
    assert_ne!(st, ATTNROT_E_INTERNAL, "internal error (a caught panic)");
}

/// A buffer with room on both sides, so pointers can be misaligned or overlap on purpose.
struct Arena {
    buf: Vec<u8>,
}

impl Arena {
    fn new(len: usize, fill: u8) -> Self {
        // 16-aligned start via a Vec<u128>-sized allocation would be nicer; a Vec<u8> of
        // len + 64 and an aligned offset is enough.
        Arena {
            buf: vec![fill; len + 64],
        }
    }
    fn base(&mut self) -> *mut u8 {
        let p = self.buf.as_mut_ptr();
        p.wrapping_add((16 - (p as usize) % 16) % 16)
    }
}

fn row_formats() -> &'static [GgmlType] {
    &[
        GgmlType::F16,
        GgmlType::BF16,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
        GgmlType::Q8_1,
        GgmlType::IQ4_NL,
    ]
}

fn row_format(id: i32) -> Option<GgmlType> {
    GgmlType::from_id(id as i64).filter(|t| *t != GgmlType::F32)
}

// ---------------------------------------------------------------------------------------

/// Format queries and the traits getter.
pub fn capi_queries(data: &[u8]) {
    let mut inp = Input::new(data);
    let id = inp.type_id();
    let n = inp.count(4096);
    let known = GgmlType::from_id(id as i64);
    unsafe {
        let mut b = -7i64;
        let st = attnrot_type_block_size(id, &mut b);
        status_ok(st);
        assert_eq!(st == ATTNROT_OK, known.is_some());
        if let Some(t) = known {
            assert_eq!(b as usize, t.block_size());
        } else {
            assert_eq!(b, -7);
        }
        let mut s = 12345usize;
        let st = attnrot_type_size(id, &mut s);
        assert_eq!(st == ATTNROT_OK, known.is_some());
        let st = attnrot_row_size(id, n, &mut s);
        status_ok(st);
        let want = known.and_then(|t| {
            let nn = usize::try_from(n).ok()?;
            let rb = t.row_bytes(nn).ok()?;
            (rb <= isize::MAX as usize).then_some(rb)
        });
        assert_eq!(
            st == ATTNROT_OK,
            want.is_some(),
            "row_size({id}, {n}) = {st}"
        );
        if let Some(w) = want {
            assert_eq!(s, w);
        }
        let mut name = null();
        let st = attnrot_type_name(id, &mut name);
        assert_eq!(st == ATTNROT_OK, known.is_some());
        if st == ATTNROT_OK {
            let mut back = -1;
            assert_eq!(attnrot_type_from_name(name, &mut back), ATTNROT_OK);
            assert_eq!(back, id);
        }
        let mut t = -1;
        let st = attnrot_type_vec_dot_type(id, &mut t);
        assert_eq!(st == ATTNROT_OK, known.is_some());
        let mut tr = std::mem::MaybeUninit::<attnrot_ggml_traits>::uninit();
        let st = attnrot_ggml_get_traits(id, tr.as_mut_ptr());
        assert_eq!(st == ATTNROT_OK, row_format(id).is_some());
        // names: arbitrary bytes, NUL-terminated
        let mut name: Vec<u8> = inp
            .take(24)
            .iter()
            .map(|&c| if c == 0 { b'_' } else { c })
            .collect();
        let want = std::str::from_utf8(&name)
            .ok()
            .and_then(GgmlType::from_name);
        name.push(0);
        let mut t = -1;
        let st = attnrot_type_from_name(name.as_ptr().cast(), &mut t);
        status_ok(st);
        assert_eq!(st == ATTNROT_OK, want.is_some());
        let _ = CStr::from_ptr(attnrot_status_string(inp.u32() as i32));
    }
}

/// `attnrot_quantize_rows` and `attnrot_quantize_rows_ref`.
pub fn capi_quantize(data: &[u8]) {
    let mut inp = Input::new(data);
    let id = inp.type_id();
    let reference = inp.bool();
    let n_rows = inp.count(8);
    let n_per_row = inp.count(512);
    let x_off = (inp.u8() % 8) as usize; // bytes: misaligned when not a multiple of 4
    let layout = inp.u8() % 4; // 0: separate, 1: y inside x's arena, 2: NULL x, 3: NULL y
    let size_sel = inp.u8();
    let ty = row_format(id);
    let x_bytes = bytes(n_rows, 1).and_then(|r| bytes(n_per_row, 4).and_then(|p| r.checked_mul(p)));
    let x_bytes = x_bytes.filter(|b| *b <= isize::MAX as usize);
    let need = ty.and_then(|t| {
        let rb = t.row_bytes(usize::try_from(n_per_row).ok()?).ok()?;
        usize::try_from(n_rows).ok()?.checked_mul(rb)
    });
    // Only satisfiable calls when the float side is plausible.
    const CAP: usize = 1 << 16;
    if let Some(xb) = x_bytes {
        if xb > CAP {
            // plausible but too big to back with memory: only call if the call is sure to
            // fail before touching x (unknown type or bad n_per_row)
            if need.is_some() {
                return;
            }
        }
    }
    let xb = x_bytes.unwrap_or(0).min(CAP);
    let mut xa = Arena::new(xb + 8, 0);
    let x = xa.base().wrapping_add(x_off);
    // fill x with fuzz floats
    let vals = inp.floats(xb / 4);
    for (i, v) in vals.iter().enumerate() {
        unsafe { x.add(i * 4).cast::<[u8; 4]>().write(v.to_le_bytes()) };
    }
    let real_y = need.unwrap_or(64).min(CAP) + 64;
    let mut ya = Arena::new(real_y, 0xA5);
    let y_size = match size_sel % 4 {
        0 => need.unwrap_or(0).min(real_y),
        1 => need.unwrap_or(1).saturating_sub(1).min(real_y),
        2 => real_y,
        _ => (inp.u32() as usize) % (real_y + 1),
    };
    let (xp, yp): (*const f32, *mut c_void) = match layout {
        1 => (
            x.cast(),
            x.wrapping_add(inp.u8() as usize % (xb.max(1))).cast(),
        ),
        2 => (null(), ya.base().cast()),
        3 => (x.cast(), null_mut()),
        _ => (x.cast(), ya.base().cast()),
    };
    // the oracle
    let valid = ty.is_some()
        && x_bytes.is_some()
        && need.is_some_and(|nd| y_size >= nd)
        && layout != 2
        && layout != 3
        && x_off.is_multiple_of(4)
        && (layout != 1 || {
            let (x0, x1) = (xp as usize, xp as usize + x_bytes.unwrap());
            let (y0, y1) = (yp as usize, yp as usize + need.unwrap());
            !(x0 < x1 && y0 < y1 && x0 < y1 && y0 < x1)
        });
    let yb_before: Vec<u8> = ya.buf.clone();
    let xb_before: Vec<u8> = xa.buf.clone();
    let st = unsafe {
        if reference {
            attnrot_quantize_rows_ref(id, xp, n_rows, n_per_row, yp, y_size)
        } else {
            attnrot_quantize_rows(id, xp, n_rows, n_per_row, yp, y_size)
        }
    };
    status_ok(st);
    assert_eq!(st == ATTNROT_OK, valid, "quantize(type {id}, rows {n_rows}, n {n_per_row}, off {x_off}, layout {layout}, y_size {y_size}) = {st}");
    if st != ATTNROT_OK {
        assert!(
            ya.buf == yb_before && xa.buf == xb_before,
            "written on error"
        );
        return;
    }
    // same bytes as the Rust API, nothing past `need`
    let t = ty.unwrap();
    let (rows, per) = (n_rows as usize, n_per_row as usize);
    let rb = t.row_bytes(per).unwrap();
    let ops = format(t).unwrap();
    let mut want = vec![0u8; rows * rb];
    if per == 0 {
        return; // empty rows: nothing written (checked above)
    }
    for r in 0..rows {
        let xs = &vals[r * per..(r + 1) * per];
        let w = &mut want[r * rb..(r + 1) * rb];
        if reference {
            ops.quantize_row_ref(xs, w)
        } else {
            ops.quantize_row(xs, w)
        }
        .unwrap();
    }
    let got = unsafe { std::slice::from_raw_parts(yp.cast::<u8>(), rows * rb) };
    // iq4_nl leaves some bytes undefined upstream (see attnrot_ref::diff::mask_undefined);
    // ours is deterministic, so compare everything.
    assert!(got == &want[..], "C API bytes differ from the Rust API");
    if layout == 0 {
        let start = ya.base() as usize - ya.buf.as_ptr() as usize;
        assert!(
            ya.buf[start + rows * rb..].iter().all(|&b| b == 0xA5),
            "wrote past the rows"
        );
    }
}

/// `attnrot_dequantize_rows` on arbitrary block bytes.
pub fn capi_dequantize(data: &[u8]) {
    let mut inp = Input::new(data);
    let id = inp.type_id();
    let n_rows = inp.count(8);
    let n_per_row = inp.count(512);
    let y_off = (inp.u8() % 8) as usize;
    let layout = inp.u8() % 4;
    let size_sel = inp.u8();
    let ty = row_format(id);
    let need = ty.and_then(|t| {
        let rb = t.row_bytes(usize::try_from(n_per_row).ok()?).ok()?;
        usize::try_from(n_rows).ok()?.checked_mul(rb)
    });
    let y_bytes = bytes(n_rows, 1)
        .and_then(|r| bytes(n_per_row, 4).and_then(|p| r.checked_mul(p)))
        .filter(|b| *b <= isize::MAX as usize);
    const CAP: usize = 1 << 16;
    if y_bytes.is_some_and(|b| b > CAP) && need.is_some() {
        return; // plausible float count larger than any buffer we back it with
    }
    let real_x = need.unwrap_or(64).min(CAP) + 64;
    let mut xa = Arena::new(real_x, 0);
    let src = inp.rest();
    for (i, b) in xa.buf.iter_mut().enumerate() {
        *b = src.get(i % src.len().max(1)).copied().unwrap_or(0) ^ (i as u8).wrapping_mul(0x9d);
    }
    let x_size = match size_sel % 4 {
        0 => need.unwrap_or(0).min(real_x),
        1 => need.unwrap_or(1).saturating_sub(1).min(real_x),
        2 => real_x,
        _ => (size_sel as usize * 131) % (real_x + 1),
    };
    let yb = y_bytes.unwrap_or(0).min(CAP);
    let mut ya = Arena::new(yb + 8, 0x5C);
    let y = ya.base().wrapping_add(y_off);
    let (xp, yp): (*const c_void, *mut f32) = match layout {
        1 => (y.cast_const().cast(), y.cast()), // overlap (when anything is touched)
        2 => (null(), y.cast()),
        3 => (xa.base().cast_const().cast(), null_mut()),
        _ => (xa.base().cast_const().cast(), y.cast()),
    };
    let valid = ty.is_some()
        && need.is_some_and(|nd| x_size >= nd)
        && y_bytes.is_some()
        && layout != 2
        && layout != 3
        && y_off.is_multiple_of(4)
        && (layout != 1 || need == Some(0) || y_bytes == Some(0));
    if layout == 1 && valid {
        return; // both empty: nothing to check
    }
    let before = (xa.buf.clone(), ya.buf.clone());
    let st = unsafe { attnrot_dequantize_rows(id, xp, x_size, n_rows, n_per_row, yp) };
    status_ok(st);
    assert_eq!(st == ATTNROT_OK, valid, "dequantize(type {id}, rows {n_rows}, n {n_per_row}, off {y_off}, layout {layout}, x_size {x_size}) = {st}");
    if st != ATTNROT_OK {
        assert!(before.0 == xa.buf && before.1 == ya.buf, "written on error");
        return;
    }
    let t = ty.unwrap();
    let n = n_rows as usize * n_per_row as usize;
    let mut want = vec![0f32; n];
    let xs = unsafe { std::slice::from_raw_parts(xp.cast::<u8>(), need.unwrap()) };
    let rb = t.row_bytes(n_per_row as usize).unwrap();
    if n == 0 {
        return;
    }
    for r in 0..n_rows as usize {
        format(t)
            .unwrap()
            .dequantize_row(
                &xs[r * rb..(r + 1) * rb],
                &mut want[r * n_per_row as usize..][..n_per_row as usize],
            )
            .unwrap();
    }
    let got = unsafe { std::slice::from_raw_parts(yp, n) };
    assert!(
        got.iter()
            .zip(&want)
            .all(|(a, b)| a.to_bits() == b.to_bits()),
        "C API floats differ from the Rust API"
    );
    let used = (y as usize - ya.buf.as_ptr() as usize) + n * 4;
    assert!(ya.buf[used..].iter().all(|&b| b == 0x5C), "wrote past y");
}

/// `attnrot_vec_dot` on arbitrary block bytes.
pub fn capi_vec_dot(data: &[u8]) {
    let mut inp = Input::new(data);
    let id = inp.type_id();
    let n = inp.count(1024);
    let s_off = (inp.u8() % 8) as usize;
    let layout = inp.u8() % 5;
    let size_sel = inp.u8();
    let ty = row_format(id);
    let nx = ty.and_then(|t| t.row_bytes(usize::try_from(n).ok()?).ok());
    let ny = ty.and_then(|t| t.vec_dot_type().row_bytes(usize::try_from(n).ok()?).ok());
    const CAP: usize = 1 << 16;
    let real = nx.unwrap_or(64).max(ny.unwrap_or(64)).min(CAP) + 64;
    let mut a = Arena::new(2 * real + 16, 0);
    let src = inp.rest();
    for (i, b) in a.buf.iter_mut().enumerate() {
        *b = src.get(i % src.len().max(1)).copied().unwrap_or(0) ^ (i as u8).wrapping_mul(0x3b);
    }
    let base = a.base();
    let xp = base;
    let yp = base.wrapping_add(real);
    let (x_size, y_size) = match size_sel % 4 {
        0 => (nx.unwrap_or(0).min(real), ny.unwrap_or(0).min(real)),
        1 => (
            nx.unwrap_or(1).saturating_sub(1).min(real),
            ny.unwrap_or(0).min(real),
        ),
        2 => (real, real),
        _ => (real, ny.unwrap_or(1).saturating_sub(1).min(real)),
    };
    let mut sbuf = [0u8; 16];
    let sp_local = sbuf
        .as_mut_ptr()
        .wrapping_add((4 - (sbuf.as_ptr() as usize) % 4) % 4 + s_off);
    let (xq, yq, sp): (*const c_void, *const c_void, *mut f32) = match layout {
        1 => (null(), yp.cast_const().cast(), sp_local.cast()),
        2 => (xp.cast_const().cast(), yp.cast_const().cast(), null_mut()),
        3 => (
            xp.cast_const().cast(),
            xp.cast_const().cast(),
            sp_local.cast(),
        ), // x and y alias: allowed
        4 => (
            xp.cast_const().cast(),
            yp.cast_const().cast(),
            xp.wrapping_add(4 * (s_off / 4)).cast(),
        ), // s inside x
        _ => (
            xp.cast_const().cast(),
            yp.cast_const().cast(),
            sp_local.cast(),
        ),
    };
    if nx.is_some_and(|v| v > CAP) || ny.is_some_and(|v| v > CAP) {
        return;
    }
    let valid = ty.is_some_and(|t| t != GgmlType::Q8_1)
        && nx.is_some_and(|v| x_size >= v)
        && ny.is_some_and(|v| y_size >= v)
        && layout != 1
        && layout != 2
        && (sp as usize).is_multiple_of(4)
        && !overlap(sp as usize, 4, xq as usize, nx.unwrap_or(0))
        && !overlap(sp as usize, 4, yq as usize, ny.unwrap_or(0));
    let before = (a.buf.clone(), sbuf);
    let st = unsafe { attnrot_vec_dot(id, n, xq, x_size, yq, y_size, sp) };
    status_ok(st);
    assert_eq!(
        st == ATTNROT_OK,
        valid,
        "vec_dot(type {id}, n {n}, layout {layout}, sizes {x_size}/{y_size}, s {sp:?}) = {st}"
    );
    if st != ATTNROT_OK {
        assert!(before.0 == a.buf && before.1 == sbuf, "written on error");
        return;
    }
    let t = ty.unwrap();
    let (xs, ys) = unsafe {
        (
            std::slice::from_raw_parts(xq.cast::<u8>(), nx.unwrap()),
            std::slice::from_raw_parts(yq.cast::<u8>(), ny.unwrap()),
        )
    };
    let want = format(t).unwrap().vec_dot(n as usize, xs, ys).unwrap();
    let got = unsafe { sp.read() };
    assert!(got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()));
}

/// `attnrot_rotate_rows`.
pub fn capi_rotate(data: &[u8]) {
    let mut inp = Input::new(data);
    let n_rows = inp.count(8);
    let row_len = inp.count(1024);
    let n = match inp.u8() % 8 {
        0 => inp.count(2048),
        k => 1i64 << (k + inp.u8() % 4),
    };
    let layout = inp.u8() % 5; // 0 separate, 1 in place, 2 partial overlap, 3 NULL, 4 misaligned
    let total = bytes(n_rows, 1)
        .and_then(|r| bytes(row_len, 4).and_then(|p| r.checked_mul(p)))
        .filter(|b| *b <= isize::MAX as usize);
    const CAP: usize = 1 << 16;
    let shape_ok = usize::try_from(n).is_ok_and(|n| n > 0 && n.is_power_of_two() && n <= 65536)
        && usize::try_from(row_len).is_ok_and(|l| l % n as usize == 0)
        && n_rows >= 0;
    if total.is_some_and(|t| t > CAP) && shape_ok {
        return;
    }
    let tb = total.unwrap_or(0).min(CAP);
    let vals = inp.floats(tb / 4);
    let mut xa = Arena::new(2 * tb + 16, 0);
    let x = xa.base();
    for (i, v) in vals.iter().enumerate() {
        unsafe { x.add(i * 4).cast::<f32>().write(*v) };
    }
    let mut ya = Arena::new(tb + 16, 0x77);
    let (xp, yp): (*const f32, *mut f32) = match layout {
        1 => (x.cast(), x.cast()),
        2 => (x.cast(), x.wrapping_add(4).cast()),
        3 => (null(), ya.base().cast()),
        4 => (x.cast(), ya.base().wrapping_add(2).cast()),
        _ => (x.cast(), ya.base().cast()),
    };
    let valid = shape_ok
        && total.is_some()
        && layout != 3
        && layout != 4
        && (layout != 2 || !overlap(xp as usize, tb, yp as usize, tb));
    let before = (xa.buf.clone(), ya.buf.clone());
    let st = unsafe { attnrot_rotate_rows(xp, yp, n_rows, row_len, n) };
    status_ok(st);
    assert_eq!(
        st == ATTNROT_OK,
        valid,
        "rotate(rows {n_rows}, len {row_len}, n {n}, layout {layout}) = {st}"
    );
    if st != ATTNROT_OK {
        assert!(before.0 == xa.buf && before.1 == ya.buf, "written on error");
        return;
    }
    let mut want = vec![0f32; vals.len()];
    attnrot::rotate::rotate(n as usize, &vals, &mut want).unwrap();
    let got = unsafe { std::slice::from_raw_parts(yp.cast_const(), vals.len()) };
    // bit-identical except the documented NaN-payload freedom
    assert!(got
        .iter()
        .zip(&want)
        .all(|(a, b)| a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())));
}

/// `attnrot_attention` with small shapes and arbitrary cache bytes.
pub fn capi_attention(data: &[u8]) {
    let mut inp = Input::new(data);
    let kv_types = [
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
    let pick = |s: u8| {
        if s < 250 {
            kv_types[s as usize % kv_types.len()] as i32
        } else {
            s as i32 * 7
        }
    };
    let small = |inp: &mut Input, max: u8| -> i64 {
        let s = inp.u8();
        if s >= 250 {
            [-1, i64::MAX, i64::MIN, 1 << 40, 0, 33][(s - 250) as usize]
        } else {
            (s % (max + 1)) as i64
        }
    };
    let mut p = attnrot_attn_params {
        n_q: small(&mut inp, 4),
        n_kv: small(&mut inp, 80),
        n_head: small(&mut inp, 8),
        n_head_kv: small(&mut inp, 4),
        head_dim_k: small(&mut inp, 4).saturating_mul(32),
        head_dim_v: small(&mut inp, 4).saturating_mul(32),
        k_type: pick(inp.u8()),
        v_type: pick(inp.u8()),
        scale: 0.125,
        max_bias: 0.0,
        softcap: 0.0,
        mask_type: if inp.bool() {
            GgmlType::F16 as i32
        } else {
            GgmlType::F32 as i32
        },
        n_threads: (inp.u8() % 4) as i32,
        flags: 0,
    };
    let opts = inp.u8();
    if opts & 1 != 0 {
        p.max_bias = (inp.u8() % 16) as f32;
    }
    if opts & 2 != 0 {
        p.softcap = (inp.u8() % 50) as f32;
    }
    if opts & 4 != 0 {
        p.scale = f32::from_bits(inp.u32());
    }
    if opts & 8 != 0 {
        p.flags = inp.u8() as u32;
    }
    if opts & 16 != 0 {
        p.mask_type = inp.u8() as i32;
    }
    if opts & 32 != 0 {
        p.n_threads = inp.u32() as i32;
    }
    let with_mask = opts & 64 == 0;
    let with_sinks = opts & 128 != 0;
    // the oracle
    let cnt = |v: i64| usize::try_from(v).ok();
    let shape = (|| {
        let (nq, nkv, nh, nhkv, dk, dv) = (
            cnt(p.n_q)?,
            cnt(p.n_kv)?,
            cnt(p.n_head)?,
            cnt(p.n_head_kv)?,
            cnt(p.head_dim_k)?,
            cnt(p.head_dim_v)?,
        );
        let kt = GgmlType::from_id(p.k_type as i64)?;
        let vt = GgmlType::from_id(p.v_type as i64)?;
        let krow = kt.row_bytes(dk).ok()?;
        let vrow = vt.row_bytes(dv).ok()?;
        Some((nq, nkv, nh, nhkv, dk, dv, kt, vt, krow, vrow))
    })();
    let Some((nq, nkv, nh, nhkv, dk, dv, kt, vt, krow, vrow)) = shape else {
        // bad counts or types: must fail, and we can pass small real buffers
        let buf = vec![0f32; 64];
        let mut out = vec![1.5f32; 64];
        let st = unsafe {
            attnrot_attention(
                &p,
                buf.as_ptr(),
                buf.as_ptr().cast(),
                256,
                buf.as_ptr().cast(),
                256,
                null(),
                null(),
                out.as_mut_ptr(),
            )
        };
        status_ok(st);
        assert_ne!(st, ATTNROT_OK);
        assert!(out.iter().all(|&v| v == 1.5));
        return;
    };
    let mask_ok = p.mask_type == GgmlType::F32 as i32 || p.mask_type == GgmlType::F16 as i32;
    // mirrors attn::plan's `max_bias > 0.0 && mask.is_none()`; clippy's rewrite differs for NaN
    #[allow(clippy::nonminimal_bool)]
    let valid = p.flags == 0
        && (0..=1024).contains(&p.n_threads)
        && mask_ok
        && nhkv > 0
        && nh % nhkv == 0
        && p.scale.is_finite()
        && dk > 0
        && dv > 0
        && dk <= isize::MAX as usize / 4
        && dv <= isize::MAX as usize / 4
        && !(p.max_bias > 0.0 && !with_mask);
    // Sizes: an overflow must fail before anything is read; plausible but big ones are
    // skipped (the harness cannot back them with memory).
    let mulc = |a: usize, b: usize, c: usize| a.checked_mul(b).and_then(|v| v.checked_mul(c));
    let lens = [
        dk.checked_mul(4).and_then(|d| mulc(nh, nq, d)),
        dv.checked_mul(4).and_then(|d| mulc(nq, nh, d)),
        // the mask and sinks sizes only count when they are passed
        if with_mask {
            mulc(
                nq,
                nkv,
                if p.mask_type == GgmlType::F16 as i32 {
                    2
                } else {
                    4
                },
            )
        } else {
            Some(0)
        },
        mulc(nhkv, nkv, krow),
        mulc(nhkv, nkv, vrow),
        if with_sinks { mulc(nh, 4, 1) } else { Some(0) },
    ];
    if lens.iter().any(|l| l.is_none()) {
        // the same optional pointers as the oracle assumed (the overflow may be theirs)
        let buf = vec![0f32; 64];
        let mut out = vec![1.5f32; 64];
        let st = unsafe {
            attnrot_attention(
                &p,
                buf.as_ptr(),
                buf.as_ptr().cast(),
                256,
                buf.as_ptr().cast(),
                256,
                if with_mask {
                    buf.as_ptr().cast()
                } else {
                    null()
                },
                if with_sinks { buf.as_ptr() } else { null() },
                out.as_mut_ptr(),
            )
        };
        status_ok(st);
        assert_ne!(st, ATTNROT_OK);
        assert!(out.iter().all(|&v| v == 1.5));
        return;
    }
    if lens.iter().any(|l| l.unwrap() > 1 << 18) {
        return;
    }
    let q = inp.floats(nh * nq * dk);
    let src = inp.rest();
    let fill = |len: usize, salt: u8| -> Vec<u8> {
        (0..len)
            .map(|i| {
                src.get(i % src.len().max(1)).copied().unwrap_or(0) ^ (i as u8).wrapping_mul(salt)
            })
            .collect()
    };
    let k = fill(nhkv * nkv * krow, 0x1f);
    let v = fill(nhkv * nkv * vrow, 0x2d);
    let mask_f: Vec<f32> = (0..if with_mask { nq * nkv } else { 0 })
        .map(|i| {
            if i % 7 == 3 {
                f32::NEG_INFINITY
            } else {
                -((i % 5) as f32) * 0.25
            }
        })
        .collect();
    let mut mask16 = vec![0u16; mask_f.len()];
    attnrot::quant::fp16::f32_row_to_f16(&mask_f, &mut mask16).unwrap();
    let mp: *const c_void = if !with_mask {
        null()
    } else if p.mask_type == GgmlType::F16 as i32 {
        mask16.as_ptr().cast()
    } else {
        mask_f.as_ptr().cast()
    };
    let sinks: Vec<f32> = (0..if with_sinks { nh } else { 0 })
        .map(|h| h as f32 * 0.5 - 1.0)
        .collect();
    let sp = if with_sinks { sinks.as_ptr() } else { null() };
    let mut out = vec![2.5f32; nq * nh * dv + 1];
    let st = unsafe {
        attnrot_attention(
            &p,
            q.as_ptr(),
            k.as_ptr().cast(),
            k.len(),
            v.as_ptr().cast(),
            v.len(),
            mp,
            sp,
            out.as_mut_ptr(),
        )
    };
    status_ok(st);
    assert_eq!(
        st == ATTNROT_OK,
        valid,
        "attention({p:?}, mask {with_mask}, sinks {with_sinks}) = {st}"
    );
    assert_eq!(out[nq * nh * dv], 2.5, "wrote past out");
    if st != ATTNROT_OK {
        assert!(out.iter().all(|&v| v == 2.5), "written on error");
        return;
    }
    if want_empty(nq, nh, dv) {
        return; // nothing computed (attnrot::attn::attend itself panics on n_head == 0: reported)
    }
    // Same as the Rust API.
    use attnrot::attn::{self, Params, Tensor};
    let mt = with_mask.then(|| Tensor::from_f16_bits(&mask16, [nkv, nq, 1, 1]).unwrap());
    let want = attn::attend(
        &Tensor::from_f32(&q, [dk, nq, nh, 1]).unwrap(),
        &Tensor::contiguous(&k, kt, [dk, nkv, nhkv, 1]).unwrap(),
        &Tensor::contiguous(&v, vt, [dv, nkv, nhkv, 1]).unwrap(),
        mt.as_ref(),
        if with_sinks { Some(&sinks[..]) } else { None },
        &Params {
            scale: p.scale,
            max_bias: p.max_bias,
            logit_softcap: p.softcap,
            precision: Default::default(),
        },
        1,
    )
    .unwrap();
    assert!(
        out[..want.len()]
            .iter()
            .zip(&want)
            .all(|(a, b)| a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())),
        "C API differs from the Rust API (threads {})",
        p.n_threads
    );
}

fn want_empty(nq: usize, nh: usize, dv: usize) -> bool {
    nq == 0 || nh == 0 || dv == 0
}

/// The ggml-shaped entry points (no status): never crash, write nothing on bad input,
/// agree with the status API on good input.
pub fn capi_ggml(data: &[u8]) {
    let mut inp = Input::new(data);
    let t = row_formats()[inp.u8() as usize % row_formats().len()];
    let mut tr = std::mem::MaybeUninit::<attnrot_ggml_traits>::uninit();
    assert_eq!(
        unsafe { attnrot_ggml_get_traits(t as i32, tr.as_mut_ptr()) },
        ATTNROT_OK
    );
    let tr = unsafe { tr.assume_init() };
    let which = inp.u8() % 4;
    let k = inp.count(1024);
    let off = (inp.u8() % 8) as usize;
    let layout = inp.u8() % 4; // 0 separate, 1 overlap, 2 NULL in, 3 NULL out
    let nrc = if inp.u8().is_multiple_of(8) {
        inp.u8() as i32 - 1
    } else {
        1
    };
    let bs = t.block_size();
    let kk = usize::try_from(k).ok();
    let fb = kk
        .and_then(|v| v.checked_mul(4))
        .filter(|b| *b <= isize::MAX as usize);
    let qb = kk
        .and_then(|v| t.row_bytes(v).ok())
        .filter(|b| *b <= isize::MAX as usize);
    let qdb = kk
        .and_then(|v| t.vec_dot_type().row_bytes(v).ok())
        .filter(|b| *b <= isize::MAX as usize);
    const CAP: usize = 1 << 16;
    let plausible = kk.is_some_and(|v| v % bs == 0) && fb.is_some() && qb.is_some();
    if plausible && fb.unwrap() > CAP {
        return;
    }
    let fbytes = fb.unwrap_or(0).min(CAP);
    let qbytes = qb.unwrap_or(0).max(qdb.unwrap_or(0)).min(CAP);
    let vals = inp.floats(fbytes / 4);
    let src = inp.rest();
    let mut fa = Arena::new(fbytes + qbytes + 16, 0);
    let mut qa = Arena::new(qbytes + 16, 0);
    for (i, b) in qa.buf.iter_mut().enumerate() {
        *b = src.get(i % src.len().max(1)).copied().unwrap_or(0) ^ (i as u8).wrapping_mul(0x61);
    }
    let f = fa.base().wrapping_add(off);
    for (i, v) in vals.iter().enumerate() {
        unsafe { f.add(i * 4).cast::<[u8; 4]>().write(v.to_le_bytes()) };
    }
    let q = qa.base();
    let aligned = off.is_multiple_of(4);
    let before = (fa.buf.clone(), qa.buf.clone());
    let good_shape = plausible && layout == 0 && aligned;
    match which {
        0 | 1 => {
            // from_float / from_float_ref: f -> q (overlap: q inside f's arena)
            let func = if which == 0 {
                tr.from_float
            } else {
                tr.from_float_ref
            }
            .unwrap();
            let (xp, yp): (*const f32, *mut c_void) = match layout {
                1 => (f.cast(), f.cast()),
                2 => (null(), q.cast()),
                3 => (f.cast(), null_mut()),
                _ => (f.cast(), q.cast()),
            };
            unsafe { func(xp, yp, k) };
            if good_shape {
                let mut want = vec![0u8; qb.unwrap()];
                let o = format(t).unwrap();
                if which == 0 {
                    o.quantize_row(&vals, &mut want)
                } else {
                    o.quantize_row_ref(&vals, &mut want)
                }
                .unwrap();
                assert!(
                    qa.buf[(q as usize - qa.buf.as_ptr() as usize)..][..want.len()] == want[..]
                );
            } else if !(layout == 1 && plausible && aligned && fbytes == 0) {
                assert!(
                    before.0 == fa.buf && before.1 == qa.buf,
                    "from_float wrote on bad input"
                );
            }
        }
        2 => {
            let func = tr.to_float.unwrap();
            let (xp, yp): (*const c_void, *mut f32) = match layout {
                1 => (f.cast_const().cast(), f.cast()),
                2 => (null(), f.cast()),
                3 => (q.cast_const().cast(), null_mut()),
                _ => (q.cast_const().cast(), f.cast()),
            };
            unsafe { func(xp, yp, k) };
            if good_shape {
                let mut want = vec![0f32; kk.unwrap()];
                let qs = &before.1[(q as usize - qa.buf.as_ptr() as usize)..][..qb.unwrap()];
                format(t).unwrap().dequantize_row(qs, &mut want).unwrap();
                let got = unsafe { std::slice::from_raw_parts(f.cast::<f32>(), want.len()) };
                assert!(got
                    .iter()
                    .zip(&want)
                    .all(|(a, b)| a.to_bits() == b.to_bits()));
            } else if !(layout == 1 && plausible && aligned && fbytes == 0) {
                assert!(
                    before.0 == fa.buf && before.1 == qa.buf,
                    "to_float wrote on bad input"
                );
            }
        }
        _ => {
            let Some(func) = tr.vec_dot else { return };
            let n = i32::try_from(k).unwrap_or(-1);
            let mut s = [7.0f32; 2];
            let (xp, yp, sp): (*const c_void, *const c_void, *mut f32) = match layout {
                1 => (q.cast_const().cast(), q.cast_const().cast(), q.cast()), // s inside x
                2 => (null(), q.cast_const().cast(), s.as_mut_ptr()),
                3 => (q.cast_const().cast(), q.cast_const().cast(), null_mut()),
                _ => (q.cast_const().cast(), q.cast_const().cast(), s.as_mut_ptr()),
            };
            // Always safe: a valid (n, nrc) reads qb and qdb bytes, both within `qbytes`.
            let qdb_ok = qdb.is_some_and(|v| v <= qbytes);
            assert!(!plausible || qdb_ok || n < 0 || (n as i64) != k);
            unsafe { func(n, sp, 0, xp, 0, yp, 0, nrc) };
            let ok = layout == 0 && nrc == 1 && n as i64 == k && plausible && qdb_ok;
            if ok {
                let xs = &before.1[(q as usize - qa.buf.as_ptr() as usize)..];
                let want = format(t)
                    .unwrap()
                    .vec_dot(n as usize, &xs[..qb.unwrap()], &xs[..qdb.unwrap()])
                    .unwrap();
                assert!(s[0].to_bits() == want.to_bits() || (s[0].is_nan() && want.is_nan()));
            } else if !(layout == 1 && plausible && qb == Some(0)) {
                assert!(
                    s == [7.0, 7.0] && before.1 == qa.buf,
                    "vec_dot wrote on bad input"
                );
            }
        }
    }
}

/// The bytes upstream leaves undefined, zeroed (as `attnrot_ref::diff::mask_undefined`):
/// iq4_nl blocks with max |x| < 1e-15 before the first regular block of a row get stack
/// garbage in `qs` upstream (`quantize_row_iq4_nl_impl` packs an uninitialised index buffer).
fn mask_undefined(t: GgmlType, x: &[f32], mut q: Vec<u8>) -> Vec<u8> {
    if t == GgmlType::IQ4_NL {
        for (b, xb) in x.chunks_exact(32).enumerate() {
            let amax = xb
                .iter()
                .fold(0f32, |a, v| if v.abs() > a { v.abs() } else { a });
            if amax >= 1e-15 {
                break;
            }
            q[b * 18 + 2..b * 18 + 18].fill(0);
        }
    }
    q
}

/// Differential: our bytes and floats (through the C API) vs upstream ggml's, same input.
pub fn diff_quant(data: &[u8]) {
    let mut inp = Input::new(data);
    let t = row_formats()[inp.u8() as usize % row_formats().len()];
    let blocks = 1 + (inp.u8() % 8) as usize;
    let n = blocks * t.block_size().max(32);
    let x = inp.floats(n);
    let raw = inp.rest();
    let rb = t.row_bytes(n).unwrap();
    for isa in attnrot::simd::available() {
        attnrot::simd::with_isa(isa, || {
            // quantize: CPU from_float and the reference
            let mut ours = vec![0u8; rb];
            assert_eq!(
                unsafe {
                    attnrot_quantize_rows(
                        t as i32,
                        x.as_ptr(),
                        1,
                        n as i64,
                        ours.as_mut_ptr().cast(),
                        rb,
                    )
                },
                ATTNROT_OK
            );
            let up = attnrot_ref::quantize_row_cpu(t, &x);
            let mask = |q: Vec<u8>| mask_undefined(t, &x, q);
            let first_diff = |a: &[u8], b: &[u8]| {
                let i = a.iter().zip(b).position(|(p, q)| p != q).unwrap_or(0);
                let blk = i / t.block_bytes();
                let bs = t.block_size().max(32);
                let bits: Vec<String> = x[(blk * bs).min(x.len())..((blk + 1) * bs).min(x.len())]
                    .iter()
                    .map(|v| format!("{:08x}", v.to_bits()))
                    .collect();
                format!(
                    "byte {i} (block {blk}): ours {:?} ggml {:?}; block input bits [{}]",
                    a.get(i),
                    b.get(i),
                    bits.join(" ")
                )
            };
            // Every block compared, NaN blocks included: the q8_0/q8_1 scale of a block whose
            // max|x| reduction ends in a NaN is stored the way ggml-base converts (0x7E00 |
            // sign), as upstream's CPU quantizers do (an earlier fuzz finding, fixed).
            assert!(
                mask(ours.clone()) == mask(up.clone()),
                "{t} {isa:?}: quantize differs from ggml's CPU from_float: {}",
                first_diff(&ours, &up)
            );
            let mut ours_ref = vec![0u8; rb];
            assert_eq!(
                unsafe {
                    attnrot_quantize_rows_ref(
                        t as i32,
                        x.as_ptr(),
                        1,
                        n as i64,
                        ours_ref.as_mut_ptr().cast(),
                        rb,
                    )
                },
                ATTNROT_OK
            );
            let up_ref = attnrot_ref::quantize_row_ref(t, &x);
            assert!(
                mask(ours_ref.clone()) == mask(up_ref.clone()),
                "{t} {isa:?}: quantize_ref differs from ggml's _ref: {}",
                first_diff(&ours_ref, &up_ref)
            );
            // dequantize: upstream's bytes and raw fuzz bytes
            if attnrot_ref::has_to_float(t) {
                let mut rawq = up.clone();
                for (i, b) in rawq.iter_mut().enumerate() {
                    if let Some(r) = raw.get(i) {
                        *b = *r;
                    }
                }
                for q in [&up, &rawq] {
                    let mut deq = vec![0f32; n];
                    assert_eq!(
                        unsafe {
                            attnrot_dequantize_rows(
                                t as i32,
                                q.as_ptr().cast(),
                                rb,
                                1,
                                n as i64,
                                deq.as_mut_ptr(),
                            )
                        },
                        ATTNROT_OK
                    );
                    let upd = attnrot_ref::dequantize_row(t, q, n);
                    for (i, (a, b)) in deq.iter().zip(&upd).enumerate() {
                        assert!(
                            a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()),
                            "{t} {isa:?}: dequantize element {i}: ours {a} ggml {b}"
                        );
                    }
                }
            }
            // vec_dot: upstream-quantized operands (finite inputs)
            if attnrot_ref::has_vec_dot(t) {
                let xf: Vec<f32> = x
                    .iter()
                    .map(|v| if v.is_finite() { *v } else { 0.5 })
                    .collect();
                let yf: Vec<f32> = xf.iter().rev().map(|v| v * 0.75 - 0.1).collect();
                let dt = t.vec_dot_type();
                let xq = attnrot_ref::quantize_row_cpu(t, &xf);
                let yq = attnrot_ref::quantize_row_cpu(dt, &yf);
                let mut d = 0f32;
                let st = unsafe {
                    attnrot_vec_dot(
                        t as i32,
                        n as i64,
                        xq.as_ptr().cast(),
                        xq.len(),
                        yq.as_ptr().cast(),
                        yq.len(),
                        &mut d,
                    )
                };
                assert_eq!(st, ATTNROT_OK);
                let u = attnrot_ref::vec_dot(t, n, &xq, &yq);
                assert!(
                    d.to_bits() == u.to_bits() || (d.is_nan() && u.is_nan()),
                    "{t} {isa:?}: vec_dot ours {d} ggml {u}"
                );
            }
        });
    }
}

/// A fuzz body: takes the raw fuzzer input.
pub type Body = fn(&[u8]);

/// Every body by target name (for the corpus replay).
pub const TARGETS: &[(&str, Body)] = &[
    ("capi_queries", capi_queries),
    ("capi_quantize", capi_quantize),
    ("capi_dequantize", capi_dequantize),
    ("capi_vec_dot", capi_vec_dot),
    ("capi_rotate", capi_rotate),
    ("capi_attention", capi_attention),
    ("capi_ggml", capi_ggml),
    ("diff_quant", diff_quant),
];
