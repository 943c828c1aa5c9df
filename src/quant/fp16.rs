//! fp32 <-> f16 / bf16 conversions exactly as ggml converts (rounding and NaN included).
