//! The `FormatOps` kernel-table entries (every op of f16, bf16 and q8_0, and `vec_dot` of
//! the 4/5-bit formats): each one is a `#[target_feature]` function that checks the row shape (with the format's constant block
//! sizes) and runs the kernel inlined, so a type-erased row call is one indirect call, as
//! ggml's CPU backend calls its kernels through a function pointer. Slots as
//! [`crate::simd::slot`]: 2 = AVX2, 3 = AVX-512, 4 = AVX-512 with VNNI and BF16. Entries not
//! listed here (slots 0 and 1, the slot-3 `vec_dot`s whose kernel depends on VNNI or BF16,
//! quantize / dequantize of the 4/5-bit formats) go through the format's `BlockFormat` methods (`quant::glue`).
//!
//! Contract of every entry (`quant::QuantizeFn` etc.): the caller passes regions of live
//! slices, and picks the entry with `simd::slot()`, which only names ISAs the CPU has.
use super::{f16, q4, q8};
use crate::quant::{
    dot_blocks, glue, row_blocks, BlockBf16, BlockF16, BlockFormat, BlockIq4Nl, BlockQ4_0,
    BlockQ4_1, BlockQ5_0, BlockQ5_1, BlockQ8_0, RowKernels,
};

/// Entries for (slot, kernels).
type Table = &'static [(usize, RowKernels)];

/// A `quant::QuantizeFn`: `$feat` covers the kernel's `#[target_feature]`s (so it inlines),
/// `$b` is the block type whose constant sizes check the shape.
macro_rules! quantize_entry {
    ($name:ident, $feat:literal, $b:ty, |$x:ident, $y:ident, $nb:ident| $body:expr) => {
        /// # Safety
        /// `x` valid for `nx` floats, `y` for `ny` bytes, no overlap; the CPU has the features.
        #[target_feature(enable = $feat)]
        unsafe fn $name($x: *const f32, nx: usize, $y: *mut u8, ny: usize) -> bool {
            let Some($nb) = row_blocks::<$b>(nx, ny) else {
                return false;
            };
            // SAFETY: the regions hold nb blocks / nb * QK floats; features per the caller.
            unsafe { $body };
            true
        }
    };
}

/// A `quant::DequantizeFn` (as [`quantize_entry`]).
macro_rules! dequantize_entry {
    ($name:ident, $feat:literal, $b:ty, |$x:ident, $y:ident, $nb:ident| $body:expr) => {
        /// # Safety
        /// `x` valid for `nx` bytes, `y` for `ny` floats, no overlap; the CPU has the features.
        #[target_feature(enable = $feat)]
        unsafe fn $name($x: *const u8, nx: usize, $y: *mut f32, ny: usize) -> bool {
            let Some($nb) = row_blocks::<$b>(ny, nx) else {
                return false;
            };
            // SAFETY: as in quantize_entry.
            unsafe { $body };
            true
        }
    };
}

/// A `quant::VecDotFn` (as [`quantize_entry`]).
macro_rules! dot_entry {
    ($name:ident, $feat:literal, $b:ty, |$x:ident, $y:ident, $nb:ident| $body:expr) => {
        /// # Safety
        /// `x`, `y` valid for `nx`, `ny` bytes; the CPU has the features.
        #[target_feature(enable = $feat)]
        unsafe fn $name(
            n: usize,
            $x: *const u8,
            nx: usize,
            $y: *const u8,
            ny: usize,
        ) -> Option<f32> {
            let $nb = dot_blocks::<$b>(n, nx, ny)?;
            // SAFETY: as in quantize_entry.
            Some(unsafe { $body })
        }
    };
}

quantize_entry!(f16_q_avx2, "avx2,fma,f16c", BlockF16, |x, y, nb| {
    f16::f32_to_f16_avx2::<false>(x, y.cast(), nb)
});
quantize_entry!(
    f16_q_avx512,
    "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c",
    BlockF16,
    |x, y, nb| f16::f32_to_f16_avx512::<false>(x, y.cast(), nb)
);
dequantize_entry!(f16_dq_avx2, "avx2,fma,f16c", BlockF16, |x, y, nb| {
    f16::f16_to_f32_avx2(x.cast(), y, nb)
});
dequantize_entry!(
    f16_dq_avx512,
    "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c",
    BlockF16,
    |x, y, nb| f16::f16_to_f32_avx512(x.cast(), y, nb)
);
dot_entry!(f16_dot_avx2, "avx2,fma,f16c", BlockF16, |x, y, nb| {
    f16::dot_f16_avx2(x.cast(), y.cast(), nb)
});
// the AVX2 kernel (same bits) also on AVX-512: 8 x 256-bit accumulators measured faster
// than 4 x 512-bit ones on Zen 4 (see `f16::dot_f16_avx2`)
dot_entry!(
    f16_dot_avx512,
    "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c",
    BlockF16,
    |x, y, nb| f16::dot_f16_avx2(x.cast(), y.cast(), nb)
);

quantize_entry!(bf16_q_avx2, "avx2,fma,f16c", BlockBf16, |x, y, nb| {
    f16::f32_to_bf16_avx2(x, y.cast(), nb)
});
quantize_entry!(
    bf16_q_avx512,
    "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c",
    BlockBf16,
    |x, y, nb| f16::f32_to_bf16_avx512(x, y.cast(), nb)
);
dequantize_entry!(bf16_dq_avx2, "avx2,fma,f16c", BlockBf16, |x, y, nb| {
    f16::bf16_to_f32_avx2(x.cast(), y, nb)
});
dequantize_entry!(
    bf16_dq_avx512,
    "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c",
    BlockBf16,
    |x, y, nb| f16::bf16_to_f32_avx512(x.cast(), y, nb)
);
dot_entry!(bf16_dot_avx2, "avx2,fma,f16c", BlockBf16, |x, y, nb| {
    f16::dot_bf16_avx2(x.cast(), y.cast(), nb)
});
dot_entry!(
    bf16_dot_avx512bf16,
    "avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,avx2,fma,f16c",
    BlockBf16,
    |x, y, nb| f16::dot_bf16_avx512bf16(x.cast(), y.cast(), nb)
);

quantize_entry!(q8_0_q_avx2, "avx2,fma,f16c", BlockQ8_0, |x, y, nb| {
    q8::quantize_q8_avx2::<false>(x, y, nb)
});
quantize_entry!(
    q8_0_q_avx512,
    "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c",
    BlockQ8_0,
    |x, y, nb| q8::quantize_q8_avx512::<false>(x, y, nb)
);
dequantize_entry!(q8_0_dq_avx2, "avx2,fma,f16c", BlockQ8_0, |x, y, nb| {
    q8::dequantize_q8_avx2::<34, 2>(x, y, nb)
});
dequantize_entry!(
    q8_0_dq_avx512,
    "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c",
    BlockQ8_0,
    |x, y, nb| q8::dequantize_q8_avx512::<34, 2>(x, y, nb)
);
dot_entry!(q8_0_dot_avx2, "avx2,fma,f16c", BlockQ8_0, |x, y, nb| {
    q8::dot_q8_0_avx2(x, y, nb)
});
dot_entry!(
    q8_0_dot_vnni,
    "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c",
    BlockQ8_0,
    |x, y, nb| q8::dot_q8_0_vnni(x, y, nb)
);

/// f16: every op has one kernel per ISA.
pub(crate) const F16: Table = &[
    (
        2,
        RowKernels {
            quantize: f16_q_avx2,
            dequantize: f16_dq_avx2,
            vec_dot: f16_dot_avx2,
        },
    ),
    (
        3,
        RowKernels {
            quantize: f16_q_avx512,
            dequantize: f16_dq_avx512,
            vec_dot: f16_dot_avx512,
        },
    ),
    (
        4,
        RowKernels {
            quantize: f16_q_avx512,
            dequantize: f16_dq_avx512,
            vec_dot: f16_dot_avx512,
        },
    ),
];

/// bf16: `vec_dot` with AVX512-BF16 in slot 4; slot 3 asks at run time (`BlockBf16::vec_dot`).
pub(crate) const BF16: Table = &[
    (
        2,
        RowKernels {
            quantize: bf16_q_avx2,
            dequantize: bf16_dq_avx2,
            vec_dot: bf16_dot_avx2,
        },
    ),
    (
        3,
        RowKernels {
            quantize: bf16_q_avx512,
            dequantize: bf16_dq_avx512,
            vec_dot: glue::<BlockBf16>().vec_dot,
        },
    ),
    (
        4,
        RowKernels {
            quantize: bf16_q_avx512,
            dequantize: bf16_dq_avx512,
            vec_dot: bf16_dot_avx512bf16,
        },
    ),
];

/// q8_0: `vec_dot` with AVX512-VNNI in slot 4; slot 3 asks at run time (`BlockQ8_0::vec_dot`).
pub(crate) const Q8_0: Table = &[
    (
        2,
        RowKernels {
            quantize: q8_0_q_avx2,
            dequantize: q8_0_dq_avx2,
            vec_dot: q8_0_dot_avx2,
        },
    ),
    (
        3,
        RowKernels {
            quantize: q8_0_q_avx512,
            dequantize: q8_0_dq_avx512,
            vec_dot: glue::<BlockQ8_0>().vec_dot,
        },
    ),
    (
        4,
        RowKernels {
            quantize: q8_0_q_avx512,
            dequantize: q8_0_dq_avx512,
            vec_dot: q8_0_dot_vnni,
        },
    ),
];

/// `vec_dot` entries of a 4/5-bit format whose kernels take block slices: AVX2 (slot 2) and
/// AVX-512 VNNI (slot 4); quantize and dequantize (already well ahead of upstream) and slot 3
/// go through `BlockFormat`.
macro_rules! dot_slices {
    ($table:ident, $b:ty, $avx2:ident = $kavx2:path, $vnni:ident = $kvnni:path) => {
        dot_entry!($avx2, "avx2,fma,f16c", $b, |x, y, nb| $kavx2(
            core::slice::from_raw_parts(x as *const $b, nb),
            core::slice::from_raw_parts(y as *const <$b as BlockFormat>::Dot, nb)
        ));
        dot_entry!(
            $vnni,
            "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c",
            $b,
            |x, y, nb| $kvnni(
                core::slice::from_raw_parts(x as *const $b, nb),
                core::slice::from_raw_parts(y as *const <$b as BlockFormat>::Dot, nb)
            )
        );

        #[doc = concat!("`", stringify!($b), "`: direct `vec_dot` kernels in slots 2 and 4.")]
        pub(crate) const $table: Table = &[
            (
                2,
                RowKernels {
                    vec_dot: $avx2,
                    ..glue::<$b>()
                },
            ),
            (
                4,
                RowKernels {
                    vec_dot: $vnni,
                    ..glue::<$b>()
                },
            ),
        ];
    };
}

dot_slices!(
    Q4_0,
    BlockQ4_0,
    q4_0_dot_avx2 = q4::vec_dot_q4_0_avx2,
    q4_0_dot_vnni = q4::vec_dot_q4_0_vnni
);
dot_slices!(
    Q4_1,
    BlockQ4_1,
    q4_1_dot_avx2 = q4::vec_dot_q4_1_avx2,
    q4_1_dot_vnni = q4::vec_dot_q4_1_vnni
);
dot_slices!(
    Q5_0,
    BlockQ5_0,
    q5_0_dot_avx2 = q4::vec_dot_q5_0_avx2,
    q5_0_dot_vnni = q4::vec_dot_q5_0_vnni
);
dot_slices!(
    Q5_1,
    BlockQ5_1,
    q5_1_dot_avx2 = q4::vec_dot_q5_1_avx2,
    q5_1_dot_vnni = q4::vec_dot_q5_1_vnni
);
dot_slices!(
    IQ4_NL,
    BlockIq4Nl,
    iq4_nl_dot_avx2 = q4::vec_dot_iq4_nl_avx2,
    iq4_nl_dot_vnni = q4::vec_dot_iq4_nl_vnni
);
