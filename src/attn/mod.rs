//! Flash attention over a quantized KV cache with ggml's FLASH_ATTN_EXT semantics.
