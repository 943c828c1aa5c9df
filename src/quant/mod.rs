//! ggml KV-cache block formats, bit-identical to what ggml's CPU backend stores.
//!
//! One file per format (like `ggml-quants.c`), block structs mirroring the C structs (like
//! candle's `quantized/`), one trait for the type traits. Every block struct is `repr(C)`,
//! made of byte arrays only (alignment 1), so any `&[u8]` of the right length is a valid
//! slice of blocks ([`as_blocks`]).
//!
//! Per format:
//! * `quantize_row`: what the CPU backend's `from_float` writes on this machine (the
//!   function SET_ROWS uses to write the KV cache, and FLASH_ATTN_EXT uses for Q);
//! * `quantize_row_ref`: upstream's `quantize_row_*_ref` (they differ for q8_0 on x86);
//! * `dequantize_row`: upstream's `to_float`;
//! * `vec_dot`: upstream's CPU `vec_dot` against the format's `vec_dot_type`.
use crate::error::{Error, Result};
use crate::types::GgmlType;

pub mod best;
pub mod bf16;
pub mod f16;
pub mod fp16;
pub mod iq4_nl;
pub mod q4_0;
pub mod q4_1;
pub mod q5_0;
pub mod q5_1;
pub mod q8_0;
pub mod q8_1;
pub mod turbo;

pub use self::bf16::BlockBf16;
pub use self::f16::BlockF16;
pub use self::iq4_nl::BlockIq4Nl;
pub use self::q4_0::BlockQ4_0;
pub use self::q4_1::BlockQ4_1;
pub use self::q5_0::BlockQ5_0;
pub use self::q5_1::BlockQ5_1;
pub use self::q8_0::BlockQ8_0;
pub use self::q8_1::BlockQ8_1;

/// Elements per quantized block (`QK4_0` = `QK8_0` = … = 32).
pub const QK: usize = 32;

/// The type traits of one block format (ggml's `ggml_type_traits` + `ggml_type_traits_cpu`).
///
/// # Safety
/// Implementors must be `repr(C)`, of alignment 1, with no padding and no invalid bit
/// patterns, and `size_of::<Self>() == Self::TYPE.block_bytes()`.
pub unsafe trait BlockFormat: Copy + Send + Sync + 'static {
    const TYPE: GgmlType;
    /// Elements per block.
    const QK: usize;
    /// The block type `vec_dot` takes on its right-hand side (`vec_dot_type`).
    type Dot: BlockFormat;

    /// The CPU backend's `from_float` (what SET_ROWS stores). `x.len() == y.len() * QK`.
    fn quantize_row(x: &[f32], y: &mut [Self]);
    /// Upstream's `quantize_row_*_ref` (`from_float_ref`).
    fn quantize_row_ref(x: &[f32], y: &mut [Self]);
    /// Upstream's `to_float`. `y.len() == x.len() * QK`.
    fn dequantize_row(x: &[Self], y: &mut [f32]);
    /// Upstream's CPU `vec_dot` of a row of `Self` with a row of `Self::Dot`.
    fn vec_dot(x: &[Self], y: &[Self::Dot]) -> f32;
}

/// View a byte slice as blocks. Fails if the length is not a whole number of blocks.
pub fn as_blocks<B: BlockFormat>(bytes: &[u8]) -> Result<&[B]> {
    let sz = std::mem::size_of::<B>();
    if !bytes.len().is_multiple_of(sz) {
        return Err(Error::BadShape(format!(
            "{} bytes is not a whole number of {} blocks ({} bytes each)",
            bytes.len(),
            B::TYPE,
            sz
        )));
    }
    // SAFETY: BlockFormat guarantees alignment 1, no padding, every bit pattern valid.
    Ok(unsafe { std::slice::from_raw_parts(bytes.as_ptr() as *const B, bytes.len() / sz) })
}

/// Mutable variant of [`as_blocks`].
pub fn as_blocks_mut<B: BlockFormat>(bytes: &mut [u8]) -> Result<&mut [B]> {
    let sz = std::mem::size_of::<B>();
    if !bytes.len().is_multiple_of(sz) {
        return Err(Error::BadShape(format!(
            "{} bytes is not a whole number of {} blocks ({} bytes each)",
            bytes.len(),
            B::TYPE,
            sz
        )));
    }
    // SAFETY: as above; the borrow is unique.
    Ok(unsafe { std::slice::from_raw_parts_mut(bytes.as_mut_ptr() as *mut B, bytes.len() / sz) })
}

/// View blocks as bytes.
pub fn block_bytes<B: BlockFormat>(blocks: &[B]) -> &[u8] {
    // SAFETY: no padding, alignment 1.
    unsafe {
        std::slice::from_raw_parts(blocks.as_ptr() as *const u8, std::mem::size_of_val(blocks))
    }
}

/// `quantize_row` behind one indirect call: `x` (`nx` floats) into `y` (`ny` bytes); checks
/// the shape itself (block sizes are constants there) and returns `false`, writing nothing,
/// if `nx` is not a whole number of blocks or `y` is too small.
///
/// # Safety
/// `x` is valid for reading `nx` floats, `y` for writing `ny` bytes, and they do not overlap.
pub(crate) type QuantizeFn = unsafe fn(*const f32, usize, *mut u8, usize) -> bool;
/// `dequantize_row` behind one indirect call: `ny` floats from `x` (`nx` bytes); `false` if
/// `ny` is not a whole number of blocks or `x` is too short.
///
/// # Safety
/// `x` is valid for reading `nx` bytes, `y` for writing `ny` floats, no overlap.
pub(crate) type DequantizeFn = unsafe fn(*const u8, usize, *mut f32, usize) -> bool;
/// `vec_dot` behind one indirect call: `n` elements, `x` (`nx` bytes) in the format, `y`
/// (`ny` bytes) in its `vec_dot_type`; `None` if `n` is not a whole number of blocks or a
/// row is too short.
///
/// # Safety
/// `x` and `y` are valid for reading `nx` and `ny` bytes.
pub(crate) type VecDotFn = unsafe fn(usize, *const u8, usize, *const u8, usize) -> Option<f32>;

/// The row kernels of one format for one [`simd::slot`](crate::simd::slot).
#[derive(Clone, Copy)]
pub(crate) struct RowKernels {
    pub(crate) quantize: QuantizeFn,
    pub(crate) dequantize: DequantizeFn,
    pub(crate) vec_dot: VecDotFn,
}

/// Blocks of a row of `n` floats of `B` if `n` is a whole number of blocks and `bytes` hold them.
#[inline(always)]
pub(crate) fn row_blocks<B: BlockFormat>(n: usize, bytes: usize) -> Option<usize> {
    let nb = n / B::QK;
    // `nb <= bytes / size` (a shift or a multiply by a constant) rather than
    // `nb * size <= bytes`, which could overflow
    (nb * B::QK == n && nb <= bytes / std::mem::size_of::<B>()).then_some(nb)
}

/// Blocks of a `vec_dot` of `n` elements with rows of `nx` and `ny` bytes, if they fit.
#[inline(always)]
pub(crate) fn dot_blocks<B: BlockFormat>(n: usize, nx: usize, ny: usize) -> Option<usize> {
    // B::QK == <B::Dot>::QK (checked in `ops`)
    if std::mem::size_of::<B>() == std::mem::size_of::<B::Dot>() {
        // one bound for both rows
        row_blocks::<B>(n, nx.min(ny))
    } else {
        let nb = row_blocks::<B>(n, nx)?;
        (nb <= ny / std::mem::size_of::<B::Dot>()).then_some(nb)
    }
}

/// Type-erased operations of one format, for code that picks the format at run time.
///
/// Every call is one indirect call into a kernel table indexed by [`crate::simd::slot`]
/// (one relaxed load, no call), whose entry checks the shape with the format's constant
/// block sizes and runs the kernel: on x86 (every op of f16, bf16 and q8_0, `vec_dot` of
/// the others) the entry is the `#[target_feature]` kernel itself (`simd::x86::rows`), as
/// ggml's CPU backend calls its kernels through a function pointer; elsewhere it is the
/// format's `BlockFormat` method (its own dispatch inlined).
#[derive(Clone, Copy)]
pub struct FormatOps {
    pub ty: GgmlType,
    /// by [`crate::simd::slot`]
    k: [RowKernels; crate::simd::SLOTS],
    quantize_ref: QuantizeFn,
    /// the `vec_dot_type` (`<B::Dot>::TYPE`)
    dot_ty: GgmlType,
}

impl FormatOps {
    /// The kernels for this thread right now.
    #[inline(always)]
    fn kernels(&self) -> &RowKernels {
        &self.k[crate::simd::slot() & (crate::simd::SLOTS - 1)]
    }

    /// Whether one [`quantize_row`](Self::quantize_row) over several packed rows writes the
    /// bytes a call per row writes. True for every format but iq4_nl, whose all-zero block
    /// repeats the indices of the block before it in the same call (upstream's
    /// `quantize_row_iq4_nl_impl`; see `quant::iq4_nl`), so a row's first such block would
    /// take the previous row's indices instead of its own call's.
    pub fn rows_batch(&self) -> bool {
        self.ty != GgmlType::IQ4_NL
    }

    /// The CPU backend's `from_float`: quantize `x` into `y` (exactly `row_bytes(x.len())` bytes used).
    #[inline]
    pub fn quantize_row(&self, x: &[f32], y: &mut [u8]) -> Result<()> {
        // SAFETY: both regions come from live slices (a unique borrow for y).
        if unsafe { (self.kernels().quantize)(x.as_ptr(), x.len(), y.as_mut_ptr(), y.len()) } {
            return Ok(());
        }
        Err(self.row_error(self.ty, x.len(), y.len()))
    }
    /// Upstream's `quantize_row_*_ref`.
    #[inline]
    pub fn quantize_row_ref(&self, x: &[f32], y: &mut [u8]) -> Result<()> {
        // SAFETY: as in quantize_row.
        if unsafe { (self.quantize_ref)(x.as_ptr(), x.len(), y.as_mut_ptr(), y.len()) } {
            return Ok(());
        }
        Err(self.row_error(self.ty, x.len(), y.len()))
    }
    /// Upstream's `to_float`: dequantize `y.len()` elements from `x`.
    #[inline]
    pub fn dequantize_row(&self, x: &[u8], y: &mut [f32]) -> Result<()> {
        // SAFETY: as in quantize_row.
        if unsafe { (self.kernels().dequantize)(x.as_ptr(), x.len(), y.as_mut_ptr(), y.len()) } {
            return Ok(());
        }
        Err(self.row_error(self.ty, y.len(), x.len()))
    }
    /// Upstream's CPU `vec_dot` over `n` elements: `x` in this format, `y` in `vec_dot_type`.
    #[inline]
    pub fn vec_dot(&self, n: usize, x: &[u8], y: &[u8]) -> Result<f32> {
        // SAFETY: both regions come from live slices.
        match unsafe { (self.kernels().vec_dot)(n, x.as_ptr(), x.len(), y.as_ptr(), y.len()) } {
            Some(d) => Ok(d),
            None => Err(self.dot_error(n, x.len(), y.len())),
        }
    }

    /// The exact error for a row of `n` elements in a buffer of `bytes` (cold path).
    #[cold]
    #[inline(never)]
    fn row_error(&self, ty: GgmlType, n: usize, bytes: usize) -> Error {
        match check_row_ty(ty, n, bytes) {
            Err(e) => e,
            Ok(_) => Error::Overflow,
        }
    }

    /// The exact error of a refused `vec_dot` (cold path).
    #[cold]
    #[inline(never)]
    fn dot_error(&self, n: usize, nx: usize, ny: usize) -> Error {
        let e = check_row_ty(self.ty, n, nx).and_then(|_| check_row_ty(self.dot_ty, n, ny));
        e.err().unwrap_or(Error::BadShape(format!(
            "{} and {} rows of {n} differ in blocks",
            self.ty, self.dot_ty
        )))
    }
}

fn check_row_ty(ty: GgmlType, n: usize, bytes: usize) -> Result<usize> {
    let need = ty.row_bytes(n)?;
    if bytes < need {
        return Err(Error::BufferTooSmall {
            what: "row",
            need,
            have: bytes,
        });
    }
    Ok(need)
}

/// [`QuantizeFn`] of `B::quantize_row` (its own ISA dispatch).
///
/// # Safety
/// See [`QuantizeFn`].
unsafe fn q_glue<B: BlockFormat>(x: *const f32, nx: usize, y: *mut u8, ny: usize) -> bool {
    let Some(nb) = row_blocks::<B>(nx, ny) else {
        return false;
    };
    // SAFETY: caller (regions); nb blocks fit in y; BlockFormat blocks have alignment 1 and
    // no invalid bit patterns.
    B::quantize_row(unsafe { std::slice::from_raw_parts(x, nx) }, unsafe {
        std::slice::from_raw_parts_mut(y as *mut B, nb)
    });
    true
}

/// [`QuantizeFn`] of `B::quantize_row_ref`.
///
/// # Safety
/// See [`QuantizeFn`].
unsafe fn qr_glue<B: BlockFormat>(x: *const f32, nx: usize, y: *mut u8, ny: usize) -> bool {
    let Some(nb) = row_blocks::<B>(nx, ny) else {
        return false;
    };
    // SAFETY: as in q_glue.
    B::quantize_row_ref(unsafe { std::slice::from_raw_parts(x, nx) }, unsafe {
        std::slice::from_raw_parts_mut(y as *mut B, nb)
    });
    true
}

/// [`DequantizeFn`] of `B::dequantize_row`.
///
/// # Safety
/// See [`DequantizeFn`].
unsafe fn dq_glue<B: BlockFormat>(x: *const u8, nx: usize, y: *mut f32, ny: usize) -> bool {
    let Some(nb) = row_blocks::<B>(ny, nx) else {
        return false;
    };
    // SAFETY: caller (regions); nb blocks fit in x.
    B::dequantize_row(
        unsafe { std::slice::from_raw_parts(x as *const B, nb) },
        unsafe { std::slice::from_raw_parts_mut(y, ny) },
    );
    true
}

/// [`VecDotFn`] of `B::vec_dot`.
///
/// # Safety
/// See [`VecDotFn`].
unsafe fn dot_glue<B: BlockFormat>(
    n: usize,
    x: *const u8,
    nx: usize,
    y: *const u8,
    ny: usize,
) -> Option<f32> {
    let nb = dot_blocks::<B>(n, nx, ny)?;
    // SAFETY: caller (regions); nb blocks fit in both rows.
    let (xb, yb) = unsafe {
        (
            std::slice::from_raw_parts(x as *const B, nb),
            std::slice::from_raw_parts(y as *const B::Dot, nb),
        )
    };
    Some(B::vec_dot(xb, yb))
}

/// The kernels of `B` through its `BlockFormat` methods.
pub(crate) const fn glue<B: BlockFormat>() -> RowKernels {
    RowKernels {
        quantize: q_glue::<B>,
        dequantize: dq_glue::<B>,
        vec_dot: dot_glue::<B>,
    }
}

/// `B`'s operations: every slot through its `BlockFormat` methods, except the slots `fast`
/// names (slot, kernels).
const fn ops<B: BlockFormat>(fast: &[(usize, RowKernels)]) -> FormatOps {
    assert!(B::QK == <B::Dot as BlockFormat>::QK);
    let mut k = [glue::<B>(); crate::simd::SLOTS];
    let mut i = 0;
    while i < fast.len() {
        // slots 0 (ISA not known yet) and 1 (scalar) always take the full dispatch
        assert!(fast[i].0 >= 2);
        k[fast[i].0] = fast[i].1;
        i += 1;
    }
    FormatOps {
        ty: B::TYPE,
        k,
        quantize_ref: qr_glue::<B>,
        dot_ty: <B::Dot as BlockFormat>::TYPE,
    }
}

#[cfg(target_arch = "x86_64")]
use crate::simd::x86::rows as fast;

#[cfg(not(target_arch = "x86_64"))]
mod fast {
    pub(crate) const F16: &[(usize, super::RowKernels)] = &[];
    pub(crate) const BF16: &[(usize, super::RowKernels)] = &[];
    pub(crate) const Q8_0: &[(usize, super::RowKernels)] = &[];
    pub(crate) const Q4_0: &[(usize, super::RowKernels)] = &[];
    pub(crate) const Q4_1: &[(usize, super::RowKernels)] = &[];
    pub(crate) const Q5_0: &[(usize, super::RowKernels)] = &[];
    pub(crate) const Q5_1: &[(usize, super::RowKernels)] = &[];
    pub(crate) const IQ4_NL: &[(usize, super::RowKernels)] = &[];
}

static OPS: [FormatOps; 9] = [
    ops::<BlockF16>(fast::F16),
    ops::<BlockBf16>(fast::BF16),
    ops::<BlockQ8_0>(fast::Q8_0),
    ops::<BlockQ4_0>(fast::Q4_0),
    ops::<BlockQ4_1>(fast::Q4_1),
    ops::<BlockQ5_0>(fast::Q5_0),
    ops::<BlockQ5_1>(fast::Q5_1),
    ops::<BlockIq4Nl>(fast::IQ4_NL),
    ops::<BlockQ8_1>(&[]),
];

/// The operations of format `ty` (the eight KV formats and q8_1).
pub fn format(ty: GgmlType) -> Result<&'static FormatOps> {
    OPS.iter()
        .find(|o| o.ty == ty)
        .ok_or(Error::UnsupportedType(ty))
}
