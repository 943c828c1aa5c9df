/*
 * api_check.c — compiled as C11 and as C++11 against ffi/attnrot.h by tests/capi_header.rs,
 * linked against libattnrot (shared and static), and run.
 *
 * - every function of the header is assigned to a pointer of its prototype's exact type and
 *   called at least once (so a missing export fails the link);
 * - every constant is checked at compile time;
 * - status codes for bad arguments are checked at run time, and that nothing is written;
 * - results of the status API and of the ggml-shaped entry points agree byte for byte;
 * - struct layouts are printed ("layout NAME OFFSET") for the Rust side to compare.
 * A kernel not implemented yet in this build may answer ATTNROT_E_INTERNAL (rows) or
 * ATTNROT_E_UNSUPPORTED (rotation, attention); that is reported, not failed.
 * Prints "api_check: ok (N checks)" and exits 0 when every check passes.
 */
#include "attnrot.h"

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef __cplusplus
#define STATIC_ASSERT(c, m) static_assert(c, m)
#else
#define STATIC_ASSERT(c, m) _Static_assert(c, m)
#endif

STATIC_ASSERT(sizeof(attnrot_status) == 4, "attnrot_status is int32_t");
STATIC_ASSERT(ATTNROT_OK == 0, "ok");
STATIC_ASSERT(ATTNROT_E_NULL == 1, "null");
STATIC_ASSERT(ATTNROT_E_LENGTH == 2, "length");
STATIC_ASSERT(ATTNROT_E_ALIGNMENT == 3, "alignment");
STATIC_ASSERT(ATTNROT_E_UNSUPPORTED == 4, "unsupported");
STATIC_ASSERT(ATTNROT_E_OVERLAP == 5, "overlap");
STATIC_ASSERT(ATTNROT_E_INTERNAL == 6, "internal");
STATIC_ASSERT(ATTNROT_E_INVALID == 7, "invalid");
/* enum ggml_type values */
STATIC_ASSERT(ATTNROT_TYPE_F32 == 0, "f32");
STATIC_ASSERT(ATTNROT_TYPE_F16 == 1, "f16");
STATIC_ASSERT(ATTNROT_TYPE_Q4_0 == 2, "q4_0");
STATIC_ASSERT(ATTNROT_TYPE_Q4_1 == 3, "q4_1");
STATIC_ASSERT(ATTNROT_TYPE_Q5_0 == 6, "q5_0");
STATIC_ASSERT(ATTNROT_TYPE_Q5_1 == 7, "q5_1");
STATIC_ASSERT(ATTNROT_TYPE_Q8_0 == 8, "q8_0");
STATIC_ASSERT(ATTNROT_TYPE_Q8_1 == 9, "q8_1");
STATIC_ASSERT(ATTNROT_TYPE_IQ4_NL == 20, "iq4_nl");
STATIC_ASSERT(ATTNROT_TYPE_BF16 == 30, "bf16");
STATIC_ASSERT(ATTNROT_VERSION == ((ATTNROT_VERSION_MAJOR << 16) | (ATTNROT_VERSION_MINOR << 8) | ATTNROT_VERSION_PATCH), "version");

static int passed = 0, failed = 0;

#define CHECK(cond)                                                                  \
    do {                                                                             \
        if (cond) {                                                                  \
            passed++;                                                                \
        } else {                                                                     \
            failed++;                                                                \
            fprintf(stderr, "api_check.c:%d: check failed: %s\n", __LINE__, #cond);  \
        }                                                                            \
    } while (0)

#define CHECK_STATUS(call, want)                                                                  \
    do {                                                                                          \
        attnrot_status got_ = (call);                                                             \
        if (got_ == (want)) {                                                                     \
            passed++;                                                                             \
        } else {                                                                                  \
            failed++;                                                                             \
            fprintf(stderr, "api_check.c:%d: %s returned %d (%s), want %d (%s)\n", __LINE__, #call, \
                    (int)got_, attnrot_status_string(got_), (int)(want), attnrot_status_string(want)); \
        }                                                                                         \
    } while (0)

/* Exact prototypes: a drifted declaration fails to compile (C: incompatible pointer types
 * under -Werror; C++: error). */
typedef uint32_t (*fn_version)(void);
typedef const char * (*fn_version_string)(void);
typedef const char * (*fn_status_string)(attnrot_status);
typedef attnrot_status (*fn_block_size)(int32_t, int64_t *);
typedef attnrot_status (*fn_type_size)(int32_t, size_t *);
typedef attnrot_status (*fn_row_size)(int32_t, int64_t, size_t *);
typedef attnrot_status (*fn_type_name)(int32_t, const char **);
typedef attnrot_status (*fn_from_name)(const char *, int32_t *);
typedef attnrot_status (*fn_vec_dot_type)(int32_t, int32_t *);
typedef attnrot_status (*fn_quantize)(int32_t, const float *, int64_t, int64_t, void *, size_t);
typedef attnrot_status (*fn_dequantize)(int32_t, const void *, size_t, int64_t, int64_t, float *);
typedef attnrot_status (*fn_vec_dot)(int32_t, int64_t, const void *, size_t, const void *, size_t, float *);
typedef attnrot_status (*fn_rotate)(const float *, float *, int64_t, int64_t, int64_t);
typedef attnrot_status (*fn_attention)(const attnrot_attn_params *, const float *, const void *, size_t, const void *, size_t,
                                       const void *, const float *, float *);
typedef attnrot_status (*fn_get_traits)(int32_t, attnrot_ggml_traits *);
/* ggml's own typedefs, spelled as in ggml.h / ggml-cpu.h (minus GGML_RESTRICT). */
typedef void (*ggml_to_float_like)(const void * x, float * y, int64_t k);
typedef void (*ggml_from_float_like)(const float * x, void * y, int64_t k);
typedef void (*ggml_vec_dot_like)(int n, float * s, size_t bs, const void * x, size_t bx, const void * y, size_t by, int nrc);

static const fn_version p_version = attnrot_version;
static const fn_version_string p_version_string = attnrot_version_string;
static const fn_status_string p_status_string = attnrot_status_string;
static const fn_block_size p_block_size = attnrot_type_block_size;
static const fn_type_size p_type_size = attnrot_type_size;
static const fn_row_size p_row_size = attnrot_row_size;
static const fn_type_name p_type_name = attnrot_type_name;
static const fn_from_name p_from_name = attnrot_type_from_name;
static const fn_vec_dot_type p_vec_dot_type = attnrot_type_vec_dot_type;
static const fn_quantize p_quantize = attnrot_quantize_rows;
static const fn_quantize p_quantize_ref = attnrot_quantize_rows_ref;
static const fn_dequantize p_dequantize = attnrot_dequantize_rows;
static const fn_vec_dot p_vec_dot = attnrot_vec_dot;
static const fn_rotate p_rotate = attnrot_rotate_rows;
static const fn_attention p_attention = attnrot_attention;
static const fn_get_traits p_get_traits = attnrot_ggml_get_traits;

struct ggml_fns {
    int32_t type;
    ggml_to_float_like to_float;
    ggml_from_float_like from_float;
    ggml_from_float_like from_float_ref;
    ggml_vec_dot_like vec_dot; /* NULL for q8_1 */
};

static const struct ggml_fns GGML_FNS[] = {
    {ATTNROT_TYPE_F16, attnrot_ggml_f16_to_float, attnrot_ggml_f16_from_float, attnrot_ggml_f16_from_float_ref, attnrot_ggml_f16_vec_dot},
    {ATTNROT_TYPE_BF16, attnrot_ggml_bf16_to_float, attnrot_ggml_bf16_from_float, attnrot_ggml_bf16_from_float_ref, attnrot_ggml_bf16_vec_dot},
    {ATTNROT_TYPE_Q4_0, attnrot_ggml_q4_0_to_float, attnrot_ggml_q4_0_from_float, attnrot_ggml_q4_0_from_float_ref, attnrot_ggml_q4_0_vec_dot},
    {ATTNROT_TYPE_Q4_1, attnrot_ggml_q4_1_to_float, attnrot_ggml_q4_1_from_float, attnrot_ggml_q4_1_from_float_ref, attnrot_ggml_q4_1_vec_dot},
    {ATTNROT_TYPE_Q5_0, attnrot_ggml_q5_0_to_float, attnrot_ggml_q5_0_from_float, attnrot_ggml_q5_0_from_float_ref, attnrot_ggml_q5_0_vec_dot},
    {ATTNROT_TYPE_Q5_1, attnrot_ggml_q5_1_to_float, attnrot_ggml_q5_1_from_float, attnrot_ggml_q5_1_from_float_ref, attnrot_ggml_q5_1_vec_dot},
    {ATTNROT_TYPE_Q8_0, attnrot_ggml_q8_0_to_float, attnrot_ggml_q8_0_from_float, attnrot_ggml_q8_0_from_float_ref, attnrot_ggml_q8_0_vec_dot},
    {ATTNROT_TYPE_Q8_1, attnrot_ggml_q8_1_to_float, attnrot_ggml_q8_1_from_float, attnrot_ggml_q8_1_from_float_ref, NULL},
    {ATTNROT_TYPE_IQ4_NL, attnrot_ggml_iq4_nl_to_float, attnrot_ggml_iq4_nl_from_float, attnrot_ggml_iq4_nl_from_float_ref, attnrot_ggml_iq4_nl_vec_dot},
};
#define N_FORMATS (sizeof(GGML_FNS) / sizeof(GGML_FNS[0]))

static const char * const NAMES[] = {"f16", "bf16", "q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "q8_1", "iq4_nl"};
static const int64_t BLOCK[] = {1, 1, 32, 32, 32, 32, 32, 32, 32};
static const size_t TYPE_SIZE[] = {2, 2, 18, 20, 22, 24, 34, 36, 18};

static uint32_t rng_state = 12345u;
static float frand(void) { /* uniform in [-1, 1) */
    rng_state = rng_state * 1664525u + 1013904223u;
    return (float)((rng_state >> 8) & 0xffffff) / 8388608.0f - 1.0f;
}

static int all_bytes(const unsigned char * p, size_t n, unsigned char v) {
    size_t i;
    for (i = 0; i < n; i++) {
        if (p[i] != v) return 0;
    }
    return 1;
}

static void print_layout(void) {
    printf("layout sizeof attnrot_attn_params %zu\n", sizeof(attnrot_attn_params));
#define OFF(S, F) printf("layout " #S "." #F " %zu\n", offsetof(S, F))
    OFF(attnrot_attn_params, n_q);
    OFF(attnrot_attn_params, n_kv);
    OFF(attnrot_attn_params, n_head);
    OFF(attnrot_attn_params, n_head_kv);
    OFF(attnrot_attn_params, head_dim_k);
    OFF(attnrot_attn_params, head_dim_v);
    OFF(attnrot_attn_params, k_type);
    OFF(attnrot_attn_params, v_type);
    OFF(attnrot_attn_params, scale);
    OFF(attnrot_attn_params, max_bias);
    OFF(attnrot_attn_params, softcap);
    OFF(attnrot_attn_params, mask_type);
    OFF(attnrot_attn_params, n_threads);
    OFF(attnrot_attn_params, flags);
    printf("layout sizeof attnrot_ggml_traits %zu\n", sizeof(attnrot_ggml_traits));
    OFF(attnrot_ggml_traits, to_float);
    OFF(attnrot_ggml_traits, from_float);
    OFF(attnrot_ggml_traits, from_float_ref);
    OFF(attnrot_ggml_traits, vec_dot);
    OFF(attnrot_ggml_traits, vec_dot_type);
    OFF(attnrot_ggml_traits, block_size);
    OFF(attnrot_ggml_traits, type_size);
#undef OFF
}

static void check_version(void) {
    int code;
    CHECK(p_version() == ATTNROT_VERSION);
    CHECK(p_version_string() != NULL);
    {
        char want[32];
        snprintf(want, sizeof want, "%d.%d.%d", ATTNROT_VERSION_MAJOR, ATTNROT_VERSION_MINOR, ATTNROT_VERSION_PATCH);
        CHECK(strcmp(p_version_string(), want) == 0);
    }
    for (code = -2; code <= 9; code++) {
        const char * s = p_status_string(code);
        CHECK(s != NULL && s[0] != '\0');
    }
    CHECK(strcmp(p_status_string(ATTNROT_OK), "ok") == 0);
}

static void check_queries(void) {
    size_t i;
    int64_t bs = -1;
    size_t sz = 0;
    int32_t t = -1;
    const char * name = NULL;
    for (i = 0; i < N_FORMATS; i++) {
        int32_t ty = GGML_FNS[i].type;
        CHECK_STATUS(p_block_size(ty, &bs), ATTNROT_OK);
        CHECK(bs == BLOCK[i]);
        CHECK_STATUS(p_type_size(ty, &sz), ATTNROT_OK);
        CHECK(sz == TYPE_SIZE[i]);
        CHECK_STATUS(p_row_size(ty, 256, &sz), ATTNROT_OK);
        CHECK(sz == (size_t)(256 / BLOCK[i]) * TYPE_SIZE[i]);
        CHECK_STATUS(p_type_name(ty, &name), ATTNROT_OK);
        CHECK(name != NULL && strcmp(name, NAMES[i]) == 0);
        CHECK_STATUS(p_from_name(NAMES[i], &t), ATTNROT_OK);
        CHECK(t == ty);
        CHECK_STATUS(p_vec_dot_type(ty, &t), ATTNROT_OK);
    }
    CHECK_STATUS(p_vec_dot_type(ATTNROT_TYPE_Q4_1, &t), ATTNROT_OK);
    CHECK(t == ATTNROT_TYPE_Q8_1);
    CHECK_STATUS(p_vec_dot_type(ATTNROT_TYPE_Q4_0, &t), ATTNROT_OK);
    CHECK(t == ATTNROT_TYPE_Q8_0);
    CHECK_STATUS(p_from_name("Q4_0", &t), ATTNROT_OK);
    CHECK(t == ATTNROT_TYPE_Q4_0);
    CHECK_STATUS(p_from_name("f32", &t), ATTNROT_OK);
    CHECK(t == ATTNROT_TYPE_F32);
    /* bad arguments */
    CHECK_STATUS(p_block_size(5, &bs), ATTNROT_E_UNSUPPORTED);
    CHECK_STATUS(p_block_size(-1, &bs), ATTNROT_E_UNSUPPORTED);
    CHECK_STATUS(p_block_size(ATTNROT_TYPE_Q4_0, NULL), ATTNROT_E_NULL);
    CHECK_STATUS(p_type_size(INT32_MAX, &sz), ATTNROT_E_UNSUPPORTED);
    CHECK_STATUS(p_type_name(ATTNROT_TYPE_Q4_0, NULL), ATTNROT_E_NULL);
    CHECK_STATUS(p_from_name("q4_2", &t), ATTNROT_E_UNSUPPORTED);
    CHECK_STATUS(p_from_name("", &t), ATTNROT_E_UNSUPPORTED);
    CHECK_STATUS(p_from_name(NULL, &t), ATTNROT_E_NULL);
    CHECK_STATUS(p_from_name("q4_0", NULL), ATTNROT_E_NULL);
    CHECK_STATUS(p_row_size(ATTNROT_TYPE_Q4_0, 33, &sz), ATTNROT_E_LENGTH);
    CHECK_STATUS(p_row_size(ATTNROT_TYPE_Q4_0, -32, &sz), ATTNROT_E_LENGTH);
    CHECK_STATUS(p_row_size(ATTNROT_TYPE_F32, INT64_MAX, &sz), ATTNROT_E_LENGTH); /* bytes overflow */
    CHECK_STATUS(p_row_size(ATTNROT_TYPE_Q4_0, 32, NULL), ATTNROT_E_NULL);
}

enum { ROWS = 3, N = 256 };

/* One format: status API vs ggml-shaped entry points, error statuses, nothing written on error. */
static void check_format(size_t i, int * implemented) {
    const struct ggml_fns * g = &GGML_FNS[i];
    int32_t ty = g->type;
    float x[ROWS * N], y[ROWS * N], y2[ROWS * N];
    unsigned char q[ROWS * N * 4], q2[ROWS * N * 4], qd[ROWS * N * 4];
    size_t row = 0, rowd = 0, j;
    int32_t dt = -1;
    attnrot_status st;
    attnrot_ggml_traits tr;

    for (j = 0; j < (size_t)(ROWS * N); j++) x[j] = frand() * (1.0f + (float)(j % 7));
    CHECK_STATUS(p_row_size(ty, N, &row), ATTNROT_OK);
    CHECK_STATUS(p_vec_dot_type(ty, &dt), ATTNROT_OK);
    CHECK_STATUS(p_row_size(dt, N, &rowd), ATTNROT_OK);

    CHECK_STATUS(p_get_traits(ty, &tr), ATTNROT_OK);
    CHECK(tr.to_float == g->to_float);
    CHECK(tr.from_float == g->from_float);
    CHECK(tr.from_float_ref == g->from_float_ref);
    CHECK(tr.vec_dot == g->vec_dot);
    CHECK(tr.vec_dot_type == dt);
    CHECK(tr.block_size == BLOCK[i]);
    CHECK(tr.type_size == TYPE_SIZE[i]);

    memset(q, 0xAB, sizeof q);
    st = p_quantize(ty, x, ROWS, N, q, sizeof q);
    CHECK(st == ATTNROT_OK || st == ATTNROT_E_INTERNAL);
    *implemented = st == ATTNROT_OK;
    if (st == ATTNROT_OK) {
        float amax = 0.0f, err = 0.0f;
        CHECK(all_bytes(q + ROWS * row, sizeof q - ROWS * row, 0xAB)); /* nothing past the rows */
        /* ggml-shaped from_float, row by row, gives the same bytes */
        memset(q2, 0xCD, sizeof q2);
        for (j = 0; j < ROWS; j++) g->from_float(x + j * N, q2 + j * row, N);
        CHECK(memcmp(q, q2, ROWS * row) == 0);
        CHECK_STATUS(p_dequantize(ty, q, ROWS * row, ROWS, N, y), ATTNROT_OK);
        for (j = 0; j < ROWS; j++) g->to_float(q + j * row, y2 + j * N, N);
        CHECK(memcmp(y, y2, sizeof y) == 0);
        for (j = 0; j < (size_t)(ROWS * N); j++) {
            if (fabsf(x[j]) > amax) amax = fabsf(x[j]);
            if (fabsf(x[j] - y[j]) > err) err = fabsf(x[j] - y[j]);
        }
        CHECK(err <= 0.25f * amax); /* a plausible round trip; exactness is tested in Rust */
        st = p_quantize_ref(ty, x, ROWS, N, q2, sizeof q2);
        CHECK(st == ATTNROT_OK || st == ATTNROT_E_INTERNAL);
        if (st == ATTNROT_OK) {
            memset(qd, 0, sizeof qd);
            for (j = 0; j < ROWS; j++) g->from_float_ref(x + j * N, qd + j * row, N);
            CHECK(memcmp(q2, qd, ROWS * row) == 0);
        }
        /* dot of row 0 with row 1 quantized to the vec_dot type */
        if (g->vec_dot != NULL) {
            float d1 = -1.0f, d2 = -2.0f;
            st = p_quantize(dt, x + N, 1, N, qd, sizeof qd);
            CHECK(st == ATTNROT_OK || st == ATTNROT_E_INTERNAL);
            if (st == ATTNROT_OK) {
                st = p_vec_dot(ty, N, q, row, qd, rowd, &d1);
                CHECK(st == ATTNROT_OK || st == ATTNROT_E_INTERNAL);
                if (st == ATTNROT_OK) {
                    g->vec_dot(N, &d2, 0, q, 0, qd, 0, 1);
                    CHECK(memcmp(&d1, &d2, sizeof d1) == 0);
                    CHECK(isfinite(d1));
                }
            }
        } else {
            float d = 0.0f;
            CHECK_STATUS(p_vec_dot(ty, N, q, row, q, row, &d), ATTNROT_E_UNSUPPORTED);
        }
    }

    /* errors: nothing is written */
    memset(q2, 0x5A, sizeof q2);
    CHECK_STATUS(p_quantize(ty, NULL, ROWS, N, q2, sizeof q2), ATTNROT_E_NULL);
    CHECK_STATUS(p_quantize(ty, x, ROWS, N, NULL, sizeof q2), ATTNROT_E_NULL);
    CHECK_STATUS(p_quantize(ty, x, ROWS, N, q2, ROWS * row - 1), ATTNROT_E_LENGTH);
    CHECK_STATUS(p_quantize(ty, x, -1, N, q2, sizeof q2), ATTNROT_E_LENGTH);
    CHECK_STATUS(p_quantize(ty, x, ROWS, -N, q2, sizeof q2), ATTNROT_E_LENGTH);
    CHECK_STATUS(p_quantize(ty, x, INT64_MAX, N, q2, sizeof q2), ATTNROT_E_LENGTH);
    CHECK_STATUS(p_quantize(ty, x, INT64_MAX / 64, 64, q2, SIZE_MAX), ATTNROT_E_LENGTH); /* floats overflow */
    if (BLOCK[i] > 1) CHECK_STATUS(p_quantize(ty, x, 1, 33, q2, sizeof q2), ATTNROT_E_LENGTH);
    CHECK_STATUS(p_quantize(ty, x, 1, N, (void *)x, sizeof x), ATTNROT_E_OVERLAP);
    CHECK_STATUS(p_quantize(ty, x, 1, N, (unsigned char *)x + 100, sizeof x - 100), ATTNROT_E_OVERLAP);
    CHECK(all_bytes(q2, sizeof q2, 0x5A));
    CHECK_STATUS(p_dequantize(ty, q2, ROWS * row - 1, ROWS, N, y), ATTNROT_E_LENGTH);
    CHECK_STATUS(p_dequantize(ty, NULL, sizeof q2, ROWS, N, y), ATTNROT_E_NULL);
    CHECK_STATUS(p_dequantize(ty, q2, sizeof q2, ROWS, N, NULL), ATTNROT_E_NULL);
    CHECK_STATUS(p_dequantize(ty, y, sizeof y, 1, N, y), ATTNROT_E_OVERLAP);
    CHECK_STATUS(p_vec_dot(ty, N, q2, row, q2, rowd, NULL), ty == ATTNROT_TYPE_Q8_1 ? ATTNROT_E_UNSUPPORTED : ATTNROT_E_NULL);
    CHECK(all_bytes(q2, sizeof q2, 0x5A));

    /* ggml-shaped functions on bad input write nothing */
    memset(y2, 0x77, sizeof y2);
    memset(q2, 0x5A, sizeof q2);
    g->to_float(NULL, y2, N);
    g->to_float(q2, NULL, N);
    g->to_float(q2, y2, -N);
    if (BLOCK[i] > 1) g->to_float(q2, y2, 33);
    g->from_float(NULL, q2, N);
    g->from_float(x, NULL, N);
    g->from_float(x, q2, -1);
    g->from_float(x, q2, INT64_MAX);
    g->from_float(x, (void *)x, N); /* overlap */
    g->from_float_ref(x, q2, INT64_MIN);
    if (g->vec_dot != NULL) {
        float d = 42.0f;
        g->vec_dot(N, &d, 0, q2, 0, q2, 0, 2); /* nrc != 1 */
        g->vec_dot(-N, &d, 0, q2, 0, q2, 0, 1);
        g->vec_dot(N, NULL, 0, q2, 0, q2, 0, 1);
        g->vec_dot(N, &d, 0, NULL, 0, q2, 0, 1);
        CHECK(d == 42.0f);
    }
    CHECK(all_bytes((const unsigned char *)y2, sizeof y2, 0x77));
    CHECK(all_bytes(q2, sizeof q2, 0x5A));
}

static void check_unsupported(void) {
    float x[64] = {0}, y[64];
    unsigned char q[256];
    attnrot_ggml_traits tr;
    CHECK_STATUS(p_quantize(ATTNROT_TYPE_F32, x, 1, 64, q, sizeof q), ATTNROT_E_UNSUPPORTED);
    CHECK_STATUS(p_quantize(4, x, 1, 64, q, sizeof q), ATTNROT_E_UNSUPPORTED);
    CHECK_STATUS(p_dequantize(-7, q, sizeof q, 1, 64, y), ATTNROT_E_UNSUPPORTED);
    CHECK_STATUS(p_get_traits(ATTNROT_TYPE_F32, &tr), ATTNROT_E_UNSUPPORTED);
    CHECK_STATUS(p_get_traits(ATTNROT_TYPE_Q4_0, NULL), ATTNROT_E_NULL);
}

static int check_rotate(void) {
    float x[4 * 128], y[4 * 128], z[4 * 128];
    size_t j;
    attnrot_status st;
    for (j = 0; j < 4 * 128; j++) x[j] = frand();
    CHECK_STATUS(p_rotate(x, y, 4, 128, 48), ATTNROT_E_LENGTH);  /* not a power of two */
    CHECK_STATUS(p_rotate(x, y, 4, 100, 64), ATTNROT_E_LENGTH);  /* does not divide */
    CHECK_STATUS(p_rotate(x, y, 4, 128, 0), ATTNROT_E_LENGTH);
    CHECK_STATUS(p_rotate(x, y, -4, 128, 64), ATTNROT_E_LENGTH);
    CHECK_STATUS(p_rotate(NULL, y, 4, 128, 64), ATTNROT_E_NULL);
    CHECK_STATUS(p_rotate(x, x + 1, 4, 128, 64), ATTNROT_E_OVERLAP);
    st = p_rotate(x, y, 4, 128, 64);
    CHECK(st == ATTNROT_OK || st == ATTNROT_E_UNSUPPORTED);
    if (st != ATTNROT_OK) return 0;
    /* self-inverse, norm-preserving, in place allowed */
    memcpy(z, y, sizeof z);
    CHECK_STATUS(p_rotate(z, z, 4, 128, 64), ATTNROT_OK);
    {
        float e = 0.0f, nx = 0.0f, ny = 0.0f;
        for (j = 0; j < 4 * 128; j++) {
            if (fabsf(z[j] - x[j]) > e) e = fabsf(z[j] - x[j]);
            nx += x[j] * x[j];
            ny += y[j] * y[j];
        }
        CHECK(e < 1e-5f);
        CHECK(fabsf(nx - ny) < 1e-3f * nx);
    }
    return 1;
}

static int check_attention(void) {
    attnrot_attn_params p;
    float q[2 * 4 * 64], mask[2 * 32], sinks[4], out[2 * 4 * 64];
    unsigned char k[2 * 32 * 68], v[2 * 32 * 68];
    attnrot_status st;
    size_t j;
    memset(&p, 0, sizeof p);
    p.n_q = 2;
    p.n_kv = 32;
    p.n_head = 4;
    p.n_head_kv = 2;
    p.head_dim_k = 64;
    p.head_dim_v = 64;
    p.k_type = ATTNROT_TYPE_Q8_0;
    p.v_type = ATTNROT_TYPE_Q8_0;
    p.scale = 0.125f;
    for (j = 0; j < sizeof q / sizeof q[0]; j++) q[j] = frand();
    for (j = 0; j < sizeof mask / sizeof mask[0]; j++) mask[j] = 0.0f;
    for (j = 0; j < 4; j++) sinks[j] = 0.5f;
    memset(k, 0, sizeof k);
    memset(v, 0, sizeof v);
    CHECK_STATUS(p_attention(NULL, q, k, sizeof k, v, sizeof v, mask, sinks, out), ATTNROT_E_NULL);
    CHECK_STATUS(p_attention(&p, q, k, sizeof k - 1, v, sizeof v, mask, sinks, out), ATTNROT_E_LENGTH);
    CHECK_STATUS(p_attention(&p, q, k, sizeof k, v, sizeof v, mask, sinks, q), ATTNROT_E_OVERLAP);
    CHECK_STATUS(p_attention(&p, q, k, sizeof k, v, sizeof v, mask, sinks, NULL), ATTNROT_E_NULL);
    p.n_head_kv = 3;
    CHECK_STATUS(p_attention(&p, q, k, sizeof k, v, sizeof v, mask, sinks, out), ATTNROT_E_INVALID);
    p.n_head_kv = 2;
    p.scale = NAN;
    CHECK_STATUS(p_attention(&p, q, k, sizeof k, v, sizeof v, mask, sinks, out), ATTNROT_E_INVALID);
    p.scale = 0.125f;
    p.flags = 1;
    CHECK_STATUS(p_attention(&p, q, k, sizeof k, v, sizeof v, mask, sinks, out), ATTNROT_E_INVALID);
    p.flags = 0;
    p.k_type = 5;
    CHECK_STATUS(p_attention(&p, q, k, sizeof k, v, sizeof v, mask, sinks, out), ATTNROT_E_UNSUPPORTED);
    p.k_type = ATTNROT_TYPE_Q8_0;
    p.head_dim_k = 48;
    CHECK_STATUS(p_attention(&p, q, k, sizeof k, v, sizeof v, mask, sinks, out), ATTNROT_E_LENGTH);
    p.head_dim_k = 64;
    p.n_kv = INT64_MAX;
    CHECK_STATUS(p_attention(&p, q, k, sizeof k, v, sizeof v, mask, sinks, out), ATTNROT_E_LENGTH);
    p.n_kv = 32;
    st = p_attention(&p, q, k, sizeof k, v, sizeof v, mask, sinks, out);
    CHECK(st == ATTNROT_OK || st == ATTNROT_E_UNSUPPORTED || st == ATTNROT_E_INTERNAL);
    if (st != ATTNROT_OK) return 0;
    /* all-zero V: the output is zero */
    for (j = 0; j < sizeof out / sizeof out[0]; j++) CHECK(out[j] == 0.0f);
    return 1;
}

int main(void) {
    size_t i;
    int implemented = 0, n_impl = 0, rot, attn;
    print_layout();
    check_version();
    check_queries();
    for (i = 0; i < N_FORMATS; i++) {
        check_format(i, &implemented);
        n_impl += implemented;
        printf("format %s: %s\n", NAMES[i], implemented ? "implemented" : "not implemented in this build (ATTNROT_E_INTERNAL)");
    }
    check_unsupported();
    rot = check_rotate();
    attn = check_attention();
    printf("rotation: %s\nattention: %s\n", rot ? "implemented" : "not implemented in this build",
           attn ? "implemented" : "not implemented in this build");
    printf("api_check: %d/%d formats implemented; %d checks passed, %d failed\n", n_impl, (int)N_FORMATS, passed, failed);
    if (failed == 0) {
        printf("api_check: ok (%d checks)\n", passed);
        return 0;
    }
    printf("api_check: FAILED\n");
    return 1;
}
