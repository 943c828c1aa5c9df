/*
 * attnrot.h — C API of attnrot: ggml KV-cache block formats, Walsh–Hadamard rotation and
 * flash attention over a quantized KV cache, over raw buffers. Needs no ggml.
 *
 * Link: -lattnrot (libattnrot.so / libattnrot.a from `cargo build --release`; the static
 * library also needs -lpthread -ldl -lm).
 *
 * Conventions (every function that returns attnrot_status):
 *   - ATTNROT_OK (0) is the only success; on any error nothing is written, except
 *     ATTNROT_E_INTERNAL, after which outputs may be partly written.
 *   - NULL for a required pointer is ATTNROT_E_NULL, even when the buffer would be empty.
 *   - float pointers must be aligned to alignof(float) (ATTNROT_E_ALIGNMENT); block
 *     buffers (void *) may have any alignment.
 *   - Counts are int64_t; negative counts, counts that are not a multiple of the format's
 *     block size, byte sizes that overflow or exceed PTRDIFF_MAX, and buffers smaller than
 *     needed are ATTNROT_E_LENGTH.
 *   - An output that overlaps an input is ATTNROT_E_OVERLAP (unless in-place is documented).
 *   - Type ids are the values of ggml's enum ggml_type (ATTNROT_TYPE_*). Unknown ids are
 *     ATTNROT_E_UNSUPPORTED.
 *   - Functions are thread-safe and keep no state between calls. (attnrot_flash_attn with
 *     n_threads > 1 runs on a process-wide pool of worker threads, one per core, started on
 *     its first use and kept, asleep between calls; no result depends on it.)
 *   - The caller guarantees what C cannot check: that each pointer points to as many bytes as
 *     the arguments say (a float buffer's size is implied by the counts; a block buffer's
 *     size is passed explicitly and checked).
 *
 * This header is checked against the library by the test suite (tests/capi_header.rs).
 */
#ifndef ATTNROT_H
#define ATTNROT_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- version ------------------------------------------------------------------------ */

#define ATTNROT_VERSION_MAJOR 0
#define ATTNROT_VERSION_MINOR 1
#define ATTNROT_VERSION_PATCH 0
/* major << 16 | minor << 8 | patch; compare with attnrot_version() at run time. */
#define ATTNROT_VERSION ((ATTNROT_VERSION_MAJOR << 16) | (ATTNROT_VERSION_MINOR << 8) | ATTNROT_VERSION_PATCH)

/* ---- status codes ------------------------------------------------------------------- */

typedef int32_t attnrot_status;

enum {
    ATTNROT_OK            = 0, /* success */
    ATTNROT_E_NULL        = 1, /* a required pointer was NULL */
    ATTNROT_E_LENGTH      = 2, /* bad count or buffer size (negative, not a block multiple, too small, overflow) */
    ATTNROT_E_ALIGNMENT   = 3, /* a float pointer is not aligned to alignof(float) */
    ATTNROT_E_UNSUPPORTED = 4, /* unknown type id, or operation not available for it (or not in this build) */
    ATTNROT_E_OVERLAP     = 5, /* an output buffer overlaps an input buffer */
    ATTNROT_E_INTERNAL    = 6, /* a bug inside attnrot (caught); outputs may be partly written */
    ATTNROT_E_INVALID     = 7  /* an argument value that is not a length is invalid */
};

/* ---- type ids (= enum ggml_type) ---------------------------------------------------- */

enum {
    ATTNROT_TYPE_F32    = 0,
    ATTNROT_TYPE_F16    = 1,
    ATTNROT_TYPE_Q4_0   = 2,
    ATTNROT_TYPE_Q4_1   = 3,
    ATTNROT_TYPE_Q5_0   = 6,
    ATTNROT_TYPE_Q5_1   = 7,
    ATTNROT_TYPE_Q8_0   = 8,
    ATTNROT_TYPE_Q8_1   = 9,
    ATTNROT_TYPE_IQ4_NL = 20,
    ATTNROT_TYPE_BF16   = 30
};

/* ---- version and status ------------------------------------------------------------- */

/* The library's version, major << 16 | minor << 8 | patch. */
uint32_t attnrot_version(void);
/* The library's version as a static string, e.g. "0.1.0". Never NULL. */
const char * attnrot_version_string(void);
/* A static description of a status code (unknown codes included). Never NULL. */
const char * attnrot_status_string(attnrot_status status);

/* ---- format queries ----------------------------------------------------------------- */

/* Elements per block (1 for f32/f16/bf16, 32 for the quantized formats). */
attnrot_status attnrot_type_block_size(int32_t type, int64_t * out_block_size);
/* Bytes per block (ggml_type_size). */
attnrot_status attnrot_type_size(int32_t type, size_t * out_type_size);
/* Bytes of a row of n elements (ggml_row_size); n a non-negative multiple of the block size. */
attnrot_status attnrot_row_size(int32_t type, int64_t n, size_t * out_row_size);
/* ggml's name of the type ("q4_0", ...), a static string. */
attnrot_status attnrot_type_name(int32_t type, const char ** out_name);
/* The type id of a ggml type name (ASCII case-insensitive). Unknown: ATTNROT_E_UNSUPPORTED. */
attnrot_status attnrot_type_from_name(const char * name, int32_t * out_type);
/* The type of attnrot_vec_dot's second operand for this type (ggml's vec_dot_type). */
attnrot_status attnrot_type_vec_dot_type(int32_t type, int32_t * out_type);

/* ---- rows (every type but f32) ------------------------------------------------------ */

/* Quantize n_rows contiguous rows of n_per_row floats from x into y, bytes identical to what
 * ggml's CPU backend stores (its from_float, used by SET_ROWS). y_size: size of y in bytes,
 * at least n_rows * attnrot_row_size(type, n_per_row). */
attnrot_status attnrot_quantize_rows(int32_t type, const float * x, int64_t n_rows, int64_t n_per_row, void * y, size_t y_size);
/* The same with upstream's reference quantizer (quantize_row_*_ref); differs for q8_0 on x86. */
attnrot_status attnrot_quantize_rows_ref(int32_t type, const float * x, int64_t n_rows, int64_t n_per_row, void * y, size_t y_size);
/* Dequantize n_rows rows of n_per_row elements from x (x_size bytes) into y
 * (n_rows * n_per_row floats), as ggml's to_float. */
attnrot_status attnrot_dequantize_rows(int32_t type, const void * x, size_t x_size, int64_t n_rows, int64_t n_per_row, float * y);
/* Dot product of n elements as ggml's CPU vec_dot: x of `type`, y of
 * attnrot_type_vec_dot_type(type). q8_1 has no vec_dot (ATTNROT_E_UNSUPPORTED).
 * x and y may alias each other; out_dot must not overlap either. */
attnrot_status attnrot_vec_dot(int32_t type, int64_t n, const void * x, size_t x_size, const void * y, size_t y_size, float * out_dot);

/* ---- rotation ----------------------------------------------------------------------- */

/* Normalized Walsh–Hadamard rotation: each of the n_rows rows of row_len floats is split into
 * row_len / n consecutive groups of n elements (n a power of two, at most 65536, dividing
 * row_len, else ATTNROT_E_LENGTH), and each group g becomes H_n g / sqrt(n), bit-identical to
 * ggml's CPU fast path for llama.cpp's Hadamard-hinted MUL_MAT (scale first, then
 * butterflies). The transform is its own inverse (up to rounding). x == y (in place) is
 * allowed; any other overlap is ATTNROT_E_OVERLAP. */
attnrot_status attnrot_rotate_rows(const float * x, float * y, int64_t n_rows, int64_t row_len, int64_t n);

/* ---- attention ---------------------------------------------------------------------- */

/* A zeroed struct plus the shape, the two types and scale is a valid start. */
typedef struct attnrot_attn_params {
    int64_t n_q;        /* query rows (tokens) per head */
    int64_t n_kv;       /* cached K/V rows per KV head */
    int64_t n_head;     /* query heads */
    int64_t n_head_kv;  /* K/V heads; must divide n_head (grouped-query attention) */
    int64_t head_dim_k; /* elements of a Q row and of a K row (> 0) */
    int64_t head_dim_v; /* elements of a V row and of an output row (> 0) */
    int32_t k_type;     /* ATTNROT_TYPE_* of the K cache */
    int32_t v_type;     /* ATTNROT_TYPE_* of the V cache */
    float   scale;      /* multiplies Q.K, usually 1/sqrt(head_dim_k) */
    float   max_bias;   /* ALiBi maximum bias, >= 0; 0 = no ALiBi; > 0 needs a mask */
    float   softcap;    /* logit soft-capping; 0 = off */
    int32_t mask_type;  /* ATTNROT_TYPE_F32 (0) or ATTNROT_TYPE_F16 (uint16_t IEEE half bits) */
    int32_t n_threads;  /* threads, 0..1024 (0 and 1: the calling thread only; n > 1: the
                           caller and n - 1 tasks on the worker pool, at most one per core
                           running at once); the result does not depend on it */
    uint32_t flags;     /* must be 0 */
} attnrot_attn_params;

/* Attention over a quantized KV cache with ggml's FLASH_ATTN_EXT semantics (online softmax,
 * grouped-query heads, ALiBi, soft-capping, sinks). Numerics: K/V rows dequantized exactly
 * as ggml's to_float; Q.K either in f32 or, for some K types (e.g. q8_0, q4_0), with Q
 * converted to K's vec_dot type as ggml's CPU backend does; f32 accumulation. Close to, not
 * guaranteed bit-identical with, ggml's CPU backend; independent of n_threads.
 * Row-major, contiguous layouts:
 *   q     n_head x n_q x head_dim_k floats
 *   k     n_head_kv x n_kv rows of head_dim_k elements of k_type (k_size bytes)
 *   v     n_head_kv x n_kv rows of head_dim_v elements of v_type (v_size bytes)
 *   mask  NULL, or n_q x n_kv values of mask_type added to the scaled scores (times the ALiBi
 *         slope), shared by all heads; -INFINITY hides a position. An f32 mask is rounded
 *         to f16 first, as ggml's CPU backend does with the f16 mask llama.cpp passes.
 *   sinks NULL, or n_head floats (one attention-sink logit per head)
 *   out   n_q x n_head x head_dim_v floats (ggml's FLASH_ATTN_EXT result layout)
 * out must not overlap any input. A row whose positions are all hidden (and no sink) is 0.
 * A non-finite scale/max_bias/softcap, a negative max_bias, max_bias > 0 without a mask,
 * n_head_kv not dividing n_head, n_threads outside 0..1024 or flags != 0 is
 * ATTNROT_E_INVALID; a mask_type other than f32/f16 is ATTNROT_E_UNSUPPORTED. */
attnrot_status attnrot_attention(const attnrot_attn_params * params, const float * q, const void * k, size_t k_size, const void * v, size_t v_size, const void * mask, const float * sinks, float * out);

/* ---- ggml-shaped entry points -------------------------------------------------------- */
/* Exactly ggml's ggml_to_float_t, ggml_from_float_t (ggml.h) and ggml_vec_dot_t
 * (ggml-cpu.h), so ggml-based code can put them in its own tables. They cannot return a
 * status: like ggml's own they trust the caller. On input they can see is wrong (NULL,
 * negative or non-block-multiple count, misaligned float pointer, overlapping buffers,
 * sizes that overflow, nrc != 1) they write nothing and return. vec_dot ignores bs, bx, by
 * (nrc is 1). k and n count elements. */

typedef void (*attnrot_to_float_t)(const void * x, float * y, int64_t k);
typedef void (*attnrot_from_float_t)(const float * x, void * y, int64_t k);
typedef void (*attnrot_vec_dot_t)(int n, float * s, size_t bs, const void * x, size_t bx, const void * y, size_t by, int nrc);

typedef struct attnrot_ggml_traits {
    attnrot_to_float_t   to_float;       /* ggml's type_traits[type].to_float */
    attnrot_from_float_t from_float;     /* ggml's CPU from_float (what the CPU backend stores) */
    attnrot_from_float_t from_float_ref; /* ggml's from_float_ref (quantize_row_*_ref) */
    attnrot_vec_dot_t    vec_dot;        /* ggml's CPU vec_dot; NULL where ggml has none (q8_1) */
    int32_t              vec_dot_type;   /* type of vec_dot's second operand */
    int32_t              block_size;     /* elements per block */
    size_t               type_size;      /* bytes per block */
} attnrot_ggml_traits;

/* The ggml-shaped functions of a type (every type but f32). */
attnrot_status attnrot_ggml_get_traits(int32_t type, attnrot_ggml_traits * out_traits);

void attnrot_ggml_f16_to_float(const void * x, float * y, int64_t k);
void attnrot_ggml_f16_from_float(const float * x, void * y, int64_t k);
void attnrot_ggml_f16_from_float_ref(const float * x, void * y, int64_t k);
void attnrot_ggml_f16_vec_dot(int n, float * s, size_t bs, const void * x, size_t bx, const void * y, size_t by, int nrc);

void attnrot_ggml_bf16_to_float(const void * x, float * y, int64_t k);
void attnrot_ggml_bf16_from_float(const float * x, void * y, int64_t k);
void attnrot_ggml_bf16_from_float_ref(const float * x, void * y, int64_t k);
void attnrot_ggml_bf16_vec_dot(int n, float * s, size_t bs, const void * x, size_t bx, const void * y, size_t by, int nrc);

void attnrot_ggml_q4_0_to_float(const void * x, float * y, int64_t k);
void attnrot_ggml_q4_0_from_float(const float * x, void * y, int64_t k);
void attnrot_ggml_q4_0_from_float_ref(const float * x, void * y, int64_t k);
void attnrot_ggml_q4_0_vec_dot(int n, float * s, size_t bs, const void * x, size_t bx, const void * y, size_t by, int nrc);

void attnrot_ggml_q4_1_to_float(const void * x, float * y, int64_t k);
void attnrot_ggml_q4_1_from_float(const float * x, void * y, int64_t k);
void attnrot_ggml_q4_1_from_float_ref(const float * x, void * y, int64_t k);
void attnrot_ggml_q4_1_vec_dot(int n, float * s, size_t bs, const void * x, size_t bx, const void * y, size_t by, int nrc);

void attnrot_ggml_q5_0_to_float(const void * x, float * y, int64_t k);
void attnrot_ggml_q5_0_from_float(const float * x, void * y, int64_t k);
void attnrot_ggml_q5_0_from_float_ref(const float * x, void * y, int64_t k);
void attnrot_ggml_q5_0_vec_dot(int n, float * s, size_t bs, const void * x, size_t bx, const void * y, size_t by, int nrc);

void attnrot_ggml_q5_1_to_float(const void * x, float * y, int64_t k);
void attnrot_ggml_q5_1_from_float(const float * x, void * y, int64_t k);
void attnrot_ggml_q5_1_from_float_ref(const float * x, void * y, int64_t k);
void attnrot_ggml_q5_1_vec_dot(int n, float * s, size_t bs, const void * x, size_t bx, const void * y, size_t by, int nrc);

void attnrot_ggml_q8_0_to_float(const void * x, float * y, int64_t k);
void attnrot_ggml_q8_0_from_float(const float * x, void * y, int64_t k);
void attnrot_ggml_q8_0_from_float_ref(const float * x, void * y, int64_t k);
void attnrot_ggml_q8_0_vec_dot(int n, float * s, size_t bs, const void * x, size_t bx, const void * y, size_t by, int nrc);

/* q8_1: ggml has no to_float and no vec_dot for it; to_float here is the inverse of from_float. */
void attnrot_ggml_q8_1_to_float(const void * x, float * y, int64_t k);
void attnrot_ggml_q8_1_from_float(const float * x, void * y, int64_t k);
void attnrot_ggml_q8_1_from_float_ref(const float * x, void * y, int64_t k);

void attnrot_ggml_iq4_nl_to_float(const void * x, float * y, int64_t k);
void attnrot_ggml_iq4_nl_from_float(const float * x, void * y, int64_t k);
void attnrot_ggml_iq4_nl_from_float_ref(const float * x, void * y, int64_t k);
void attnrot_ggml_iq4_nl_vec_dot(int n, float * s, size_t bs, const void * x, size_t bx, const void * y, size_t by, int nrc);

#ifdef __cplusplus
}
#endif

#endif /* ATTNROT_H */
