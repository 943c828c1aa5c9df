//! Running real ggml graphs on the reference CPU backend (rotation, FLASH_ATTN_EXT, SET_ROWS).
