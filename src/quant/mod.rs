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

/// Type-erased operations of one format, for code that picks the format at run time.
#[derive(Clone, Copy)]
pub struct FormatOps {
    pub ty: GgmlType,
    /// Kernels on rows already checked by the `FormatOps` methods: a block count and raw
    /// pointers to exactly that many blocks (the checks run inline in the caller; the
    /// indirect call goes to a glue that tail-calls the format's kernel).
    quantize: unsafe fn(&[f32], *mut u8, usize),
    quantize_ref: unsafe fn(&[f32], *mut u8, usize),
    dequantize: unsafe fn(*const u8, usize, &mut [f32]),
    vec_dot: unsafe fn(usize, *const u8, *const u8) -> f32,
    /// the `vec_dot_type` (`<B::Dot>::TYPE`)
    dot_ty: GgmlType,
    /// log2 of the block size of this format and of `vec_dot_type` (both powers of two)
    qk_shift: [u32; 2],
    /// bytes per block of this format and of `vec_dot_type`
    blk_bytes: [usize; 2],
}

impl FormatOps {
    /// Blocks and bytes of a row of `n` elements of this format (`i = 0`) or of its
    /// `vec_dot_type` (`i = 1`), if `n` is a whole number of blocks and the size fits.
    #[inline(always)]
    fn blocks(&self, i: usize, n: usize) -> Option<(usize, usize)> {
        let s = self.qk_shift[i];
        let nb = n >> s;
        if nb << s != n {
            return None;
        }
        nb.checked_mul(self.blk_bytes[i]).map(|bytes| (nb, bytes))
    }

    /// The CPU backend's `from_float`: quantize `x` into `y` (exactly `row_bytes(x.len())` bytes used).
    #[inline]
    pub fn quantize_row(&self, x: &[f32], y: &mut [u8]) -> Result<()> {
        match self.blocks(0, x.len()) {
            // SAFETY: y holds at least nb blocks (checked), x exactly nb * QK floats.
            Some((nb, bytes)) if y.len() >= bytes => unsafe {
                (self.quantize)(x, y.as_mut_ptr(), nb)
            },
            _ => return Err(self.row_error(self.ty, x.len(), y.len())),
        }
        Ok(())
    }
    /// Upstream's `quantize_row_*_ref`.
    #[inline]
    pub fn quantize_row_ref(&self, x: &[f32], y: &mut [u8]) -> Result<()> {
        match self.blocks(0, x.len()) {
            // SAFETY: as in quantize_row.
            Some((nb, bytes)) if y.len() >= bytes => unsafe {
                (self.quantize_ref)(x, y.as_mut_ptr(), nb)
            },
            _ => return Err(self.row_error(self.ty, x.len(), y.len())),
        }
        Ok(())
    }
    /// Upstream's `to_float`: dequantize `y.len()` elements from `x`.
    #[inline]
    pub fn dequantize_row(&self, x: &[u8], y: &mut [f32]) -> Result<()> {
        match self.blocks(0, y.len()) {
            // SAFETY: x holds at least nb blocks (checked), y exactly nb * QK floats.
            Some((nb, bytes)) if x.len() >= bytes => unsafe {
                (self.dequantize)(x.as_ptr(), nb, y)
            },
            _ => return Err(self.row_error(self.ty, y.len(), x.len())),
        }
        Ok(())
    }
    /// Upstream's CPU `vec_dot` over `n` elements: `x` in this format, `y` in `vec_dot_type`.
    #[inline]
    pub fn vec_dot(&self, n: usize, x: &[u8], y: &[u8]) -> Result<f32> {
        if let (Some((nb, bx)), Some((nby, by))) = (self.blocks(0, n), self.blocks(1, n)) {
            if x.len() >= bx && y.len() >= by && nb == nby {
                // SAFETY: both rows hold nb blocks (checked).
                return Ok(unsafe { (self.vec_dot)(nb, x.as_ptr(), y.as_ptr()) });
            }
        }
        let e =
            check_row_ty(self.ty, n, x.len()).and_then(|_| check_row_ty(self.dot_ty, n, y.len()));
        Err(e.err().unwrap_or(Error::BadShape(format!(
            "{} and {} rows of {n} differ in blocks",
            self.ty, self.dot_ty
        ))))
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

/// # Safety
/// `y` points to `nb` writable blocks of `B`, `x.len() == nb * B::QK`.
unsafe fn q_glue<B: BlockFormat>(x: &[f32], y: *mut u8, nb: usize) {
    // SAFETY: caller; BlockFormat blocks have alignment 1 and no invalid bit patterns.
    B::quantize_row(x, unsafe {
        std::slice::from_raw_parts_mut(y as *mut B, nb)
    })
}

/// # Safety
/// As [`q_glue`].
unsafe fn qr_glue<B: BlockFormat>(x: &[f32], y: *mut u8, nb: usize) {
    // SAFETY: caller.
    B::quantize_row_ref(x, unsafe {
        std::slice::from_raw_parts_mut(y as *mut B, nb)
    })
}

/// # Safety
/// `x` points to `nb` readable blocks of `B`, `y.len() == nb * B::QK`.
unsafe fn dq_glue<B: BlockFormat>(x: *const u8, nb: usize, y: &mut [f32]) {
    // SAFETY: caller.
    B::dequantize_row(unsafe { std::slice::from_raw_parts(x as *const B, nb) }, y)
}

/// # Safety
/// `x` and `y` point to `nb` readable blocks of `B` and `B::Dot`.
unsafe fn dot_glue<B: BlockFormat>(nb: usize, x: *const u8, y: *const u8) -> f32 {
    // SAFETY: caller.
    let (xb, yb) = unsafe {
        (
            std::slice::from_raw_parts(x as *const B, nb),
            std::slice::from_raw_parts(y as *const B::Dot, nb),
        )
    };
    B::vec_dot(xb, yb)
}

const fn ops<B: BlockFormat>() -> FormatOps {
    assert!(B::QK.is_power_of_two() && <B::Dot as BlockFormat>::QK.is_power_of_two());
    FormatOps {
        ty: B::TYPE,
        quantize: q_glue::<B>,
        quantize_ref: qr_glue::<B>,
        dequantize: dq_glue::<B>,
        vec_dot: dot_glue::<B>,
        dot_ty: <B::Dot as BlockFormat>::TYPE,
        qk_shift: [
            B::QK.trailing_zeros(),
            <B::Dot as BlockFormat>::QK.trailing_zeros(),
        ],
        blk_bytes: [std::mem::size_of::<B>(), std::mem::size_of::<B::Dot>()],
    }
}

static OPS: [FormatOps; 9] = [
    ops::<BlockF16>(),
    ops::<BlockBf16>(),
    ops::<BlockQ8_0>(),
    ops::<BlockQ4_0>(),
    ops::<BlockQ4_1>(),
    ops::<BlockQ5_0>(),
    ops::<BlockQ5_1>(),
    ops::<BlockIq4Nl>(),
    ops::<BlockQ8_1>(),
];

/// The operations of format `ty` (the eight KV formats and q8_1).
pub fn format(ty: GgmlType) -> Result<&'static FormatOps> {
    OPS.iter()
        .find(|o| o.ty == ty)
        .ok_or(Error::UnsupportedType(ty))
}
