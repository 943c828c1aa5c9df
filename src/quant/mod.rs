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
    if bytes.len() % sz != 0 {
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
    if bytes.len() % sz != 0 {
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

fn check_row<B: BlockFormat>(n: usize, bytes: usize) -> Result<usize> {
    let need = B::TYPE.row_bytes(n)?;
    if bytes < need {
        return Err(Error::BufferTooSmall {
            what: "row",
            need,
            have: bytes,
        });
    }
    Ok(need)
}

/// Type-erased operations of one format, for code that picks the format at run time.
#[derive(Clone, Copy)]
pub struct FormatOps {
    pub ty: GgmlType,
    quantize: fn(&[f32], &mut [u8]) -> Result<()>,
    quantize_ref: fn(&[f32], &mut [u8]) -> Result<()>,
    dequantize: fn(&[u8], &mut [f32]) -> Result<()>,
    /// `vec_dot` on rows already checked by [`FormatOps::vec_dot`] (exact lengths).
    vec_dot: fn(&[u8], &[u8]) -> f32,
    /// the `vec_dot_type` (`<B::Dot>::TYPE`)
    dot_ty: GgmlType,
    /// log2 of the block size of this format and of `vec_dot_type` (both powers of two)
    qk_shift: [u32; 2],
    /// bytes per block of this format and of `vec_dot_type`
    blk_bytes: [usize; 2],
}

impl FormatOps {
    /// The CPU backend's `from_float`: quantize `x` into `y` (exactly `row_bytes(x.len())` bytes used).
    pub fn quantize_row(&self, x: &[f32], y: &mut [u8]) -> Result<()> {
        (self.quantize)(x, y)
    }
    /// Upstream's `quantize_row_*_ref`.
    pub fn quantize_row_ref(&self, x: &[f32], y: &mut [u8]) -> Result<()> {
        (self.quantize_ref)(x, y)
    }
    /// Upstream's `to_float`: dequantize `y.len()` elements from `x`.
    pub fn dequantize_row(&self, x: &[u8], y: &mut [f32]) -> Result<()> {
        (self.dequantize)(x, y)
    }
    /// Upstream's CPU `vec_dot` over `n` elements: `x` in this format, `y` in `vec_dot_type`.
    ///
    /// The checks run inline in the caller and the indirect call goes straight to a
    /// frameless glue that tail-calls the kernel (rows are often only 4 blocks long).
    #[inline]
    pub fn vec_dot(&self, n: usize, x: &[u8], y: &[u8]) -> Result<f32> {
        // The checks of `row_bytes` with shifts; anything unusual goes the slow way, which
        // reports the exact error.
        let [sx, sy] = self.qk_shift;
        let [bx, by] = self.blk_bytes;
        if (n >> sx) << sx == n && (n >> sy) << sy == n {
            if let (Some(nx), Some(ny)) = ((n >> sx).checked_mul(bx), (n >> sy).checked_mul(by)) {
                if x.len() >= nx && y.len() >= ny {
                    return Ok((self.vec_dot)(&x[..nx], &y[..ny]));
                }
            }
        }
        self.vec_dot_checked(n, x, y)
    }

    #[cold]
    #[inline(never)]
    fn vec_dot_checked(&self, n: usize, x: &[u8], y: &[u8]) -> Result<f32> {
        let nx = check_row_ty(self.ty, n, x.len())?;
        let ny = check_row_ty(self.dot_ty, n, y.len())?;
        Ok((self.vec_dot)(&x[..nx], &y[..ny]))
    }
}

fn q_generic<B: BlockFormat>(x: &[f32], y: &mut [u8], reference: bool) -> Result<()> {
    let need = check_row::<B>(x.len(), y.len())?;
    let blocks = as_blocks_mut::<B>(&mut y[..need])?;
    if reference {
        B::quantize_row_ref(x, blocks)
    } else {
        B::quantize_row(x, blocks)
    }
    Ok(())
}

fn dq_generic<B: BlockFormat>(x: &[u8], y: &mut [f32]) -> Result<()> {
    let need = check_row::<B>(y.len(), x.len())?;
    B::dequantize_row(as_blocks::<B>(&x[..need])?, y);
    Ok(())
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

/// `x`, `y`: rows of exactly `n / QK` blocks each, checked by [`FormatOps::vec_dot`].
fn dot_generic<B: BlockFormat>(x: &[u8], y: &[u8]) -> f32 {
    // SAFETY: BlockFormat guarantees alignment 1, no padding, every bit pattern valid; the
    // lengths are whole numbers of blocks (row_bytes of the same n for both types).
    let (xb, yb) = unsafe {
        (
            std::slice::from_raw_parts(x.as_ptr() as *const B, x.len() / std::mem::size_of::<B>()),
            std::slice::from_raw_parts(
                y.as_ptr() as *const B::Dot,
                y.len() / std::mem::size_of::<B::Dot>(),
            ),
        )
    };
    B::vec_dot(xb, yb)
}

const fn ops<B: BlockFormat>() -> FormatOps {
    assert!(B::QK.is_power_of_two() && <B::Dot as BlockFormat>::QK.is_power_of_two());
    FormatOps {
        ty: B::TYPE,
        quantize: |x, y| q_generic::<B>(x, y, false),
        quantize_ref: |x, y| q_generic::<B>(x, y, true),
        dequantize: dq_generic::<B>,
        vec_dot: dot_generic::<B>,
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
