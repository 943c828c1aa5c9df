/*
 * kv_attention.c — attnrot's C API without ggml: quantize a K/V cache, run attention over
 * it, and compare with plain float attention; then the same with llama.cpp's "attn-rot"
 * trick (rotate Q, K and V by a normalized Hadamard transform before quantizing, rotate the
 * output back), which makes 4-bit caches much more accurate when K has outlier channels.
 *
 * Build (from the repository root, after `cargo build --release`):
 *   cc -O2 -std=c11 -Wall -Wextra -Iffi ffi/examples/kv_attention.c \
 *      -Ltarget/release -lattnrot -Wl,-rpath,$PWD/target/release -lm -o kv_attention
 *   ./kv_attention            # all eight cache formats
 *   ./kv_attention q4_0       # one format
 * Exit status 0 when every format's error is within its bound (and rotation helps 4-bit
 * caches); tests/capi_examples.rs builds and runs it.
 */
#include "attnrot.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A small model-like shape: 8 query heads sharing 2 KV heads, head size 128, 300 cached
 * tokens, 4 new query tokens with a causal mask. */
enum { N_Q = 4, N_KV = 300, N_HEAD = 8, N_HEAD_KV = 2, D = 128 };

#define CHECK(call)                                                                                 \
    do {                                                                                            \
        attnrot_status st_ = (call);                                                                \
        if (st_ != ATTNROT_OK) {                                                                    \
            fprintf(stderr, "%s:%d: %s failed: %s\n", __FILE__, __LINE__, #call, attnrot_status_string(st_)); \
            exit(2);                                                                                \
        }                                                                                           \
    } while (0)

static uint64_t rng = 0x9E3779B97F4A7C15ull;
static float uniform(void) { /* [0, 1) */
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (float)(rng >> 40) / 16777216.0f;
}
static float gauss(void) {
    float u = uniform() + 1e-7f, v = uniform();
    return sqrtf(-2.0f * logf(u)) * cosf(6.2831853f * v);
}

static void * xmalloc(size_t n) {
    void * p = malloc(n ? n : 1);
    if (!p) {
        fprintf(stderr, "out of memory\n");
        exit(2);
    }
    return p;
}

/* Reference: float attention with the same layouts as attnrot_attention
 * (q: head x token x D; k, v: kv-head x position x D; out: token x head x D). */
static void float_attention(const float * q, const float * k, const float * v, const float * mask, float scale, float * out) {
    int h, i, j, d;
    float * s = (float *)xmalloc(sizeof(float) * N_KV);
    for (h = 0; h < N_HEAD; h++) {
        int hk = h / (N_HEAD / N_HEAD_KV);
        for (i = 0; i < N_Q; i++) {
            const float * qr = q + ((size_t)h * N_Q + i) * D;
            float mx = -INFINITY, sum = 0.0f;
            float * o = out + ((size_t)i * N_HEAD + h) * D;
            for (j = 0; j < N_KV; j++) {
                const float * kr = k + ((size_t)hk * N_KV + j) * D;
                float dot = 0.0f;
                if (mask[i * N_KV + j] == -INFINITY) {
                    s[j] = -INFINITY;
                    continue;
                }
                for (d = 0; d < D; d++) dot += qr[d] * kr[d];
                s[j] = dot * scale + mask[i * N_KV + j];
                if (s[j] > mx) mx = s[j];
            }
            for (d = 0; d < D; d++) o[d] = 0.0f;
            for (j = 0; j < N_KV; j++) {
                float w;
                if (s[j] == -INFINITY) continue;
                w = expf(s[j] - mx);
                sum += w;
                for (d = 0; d < D; d++) o[d] += w * v[((size_t)hk * N_KV + j) * D + d];
            }
            for (d = 0; d < D; d++) o[d] /= sum;
        }
    }
    free(s);
}

/* Relative RMS error of a vs the reference b. */
static double rel_rms(const float * a, const float * b, size_t n) {
    double e = 0.0, r = 0.0;
    size_t i;
    for (i = 0; i < n; i++) {
        e += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
        r += (double)b[i] * b[i];
    }
    return sqrt(e / r);
}

/* Quantize k and v (float caches) to `type`, run attnrot_attention, write out. */
static void quantized_attention(int32_t type, const float * q, const float * k, const float * v, const float * mask, float scale, float * out) {
    size_t row = 0;
    uint8_t *kq, *vq;
    attnrot_attn_params p;
    CHECK(attnrot_row_size(type, D, &row));
    kq = (uint8_t *)xmalloc(row * N_HEAD_KV * N_KV);
    vq = (uint8_t *)xmalloc(row * N_HEAD_KV * N_KV);
    /* what SET_ROWS would store in llama.cpp's KV cache */
    CHECK(attnrot_quantize_rows(type, k, N_HEAD_KV * N_KV, D, kq, row * N_HEAD_KV * N_KV));
    CHECK(attnrot_quantize_rows(type, v, N_HEAD_KV * N_KV, D, vq, row * N_HEAD_KV * N_KV));
    memset(&p, 0, sizeof p);
    p.n_q = N_Q;
    p.n_kv = N_KV;
    p.n_head = N_HEAD;
    p.n_head_kv = N_HEAD_KV;
    p.head_dim_k = D;
    p.head_dim_v = D;
    p.k_type = type;
    p.v_type = type;
    p.scale = scale;
    p.mask_type = ATTNROT_TYPE_F32;
    p.n_threads = 2;
    CHECK(attnrot_attention(&p, q, kq, row * N_HEAD_KV * N_KV, vq, row * N_HEAD_KV * N_KV, mask, NULL, out));
    free(kq);
    free(vq);
}

struct bound {
    const char * name;
    double plain; /* max relative RMS error without rotation */
    double rot;   /* ... with rotation */
};

/* Bounds for this (fixed, seeded) data, about 1.5x the errors measured when the example was
 * written: f16 0.0006, bf16 0.005, q8_0 0.033 / 0.008 (plain / rotated), q5_1 0.108 / 0.073,
 * q5_0 0.173 / 0.094, q4_1 0.258 / 0.171, q4_0 0.316 / 0.198, iq4_nl 0.286 / 0.165. */
static const struct bound BOUNDS[] = {
    {"f16", 2e-3, 2e-3},   {"bf16", 1e-2, 1e-2},  {"q8_0", 0.05, 0.015}, {"q5_1", 0.16, 0.11},
    {"q5_0", 0.26, 0.14},  {"q4_1", 0.38, 0.26},  {"q4_0", 0.45, 0.30},  {"iq4_nl", 0.42, 0.25},
};

int main(int argc, char ** argv) {
    const size_t nq = (size_t)N_HEAD * N_Q * D, nk = (size_t)N_HEAD_KV * N_KV * D, no = (size_t)N_Q * N_HEAD * D;
    float *q = (float *)xmalloc(nq * sizeof(float)), *k = (float *)xmalloc(nk * sizeof(float)), *v = (float *)xmalloc(nk * sizeof(float));
    float *qr = (float *)xmalloc(nq * sizeof(float)), *kr = (float *)xmalloc(nk * sizeof(float)), *vr = (float *)xmalloc(nk * sizeof(float));
    float *mask = (float *)xmalloc((size_t)N_Q * N_KV * sizeof(float));
    float *ref = (float *)xmalloc(no * sizeof(float)), *out = (float *)xmalloc(no * sizeof(float)), *outr = (float *)xmalloc(no * sizeof(float));
    const float scale = 1.0f / sqrtf((float)D);
    size_t i, t;
    int failures = 0, ran = 0;

    printf("attnrot %s (header %d.%d.%d)\n", attnrot_version_string(), ATTNROT_VERSION_MAJOR, ATTNROT_VERSION_MINOR, ATTNROT_VERSION_PATCH);
    if ((attnrot_version() >> 16) != ATTNROT_VERSION_MAJOR) {
        fprintf(stderr, "library major version differs from the header's\n");
        return 2;
    }

    /* Activations with a few outlier channels in K (as after RoPE in real models). */
    for (i = 0; i < nq; i++) q[i] = gauss();
    for (i = 0; i < nk; i++) {
        size_t d = i % D;
        k[i] = gauss() * (d == 3 || d == 77 ? 12.0f : d % 16 == 5 ? 3.0f : 1.0f);
        v[i] = gauss();
    }
    for (i = 0; i < (size_t)N_Q * N_KV; i++) {
        size_t qi = i / N_KV, j = i % N_KV;
        mask[i] = j > (size_t)(N_KV - N_Q) + qi ? -INFINITY : 0.0f; /* causal */
    }
    float_attention(q, k, v, mask, scale, ref);

    /* attn-rot: rotate every head row of Q, K and V by H_D/sqrt(D). Scores are unchanged
     * (H is orthogonal); the output comes back rotated and is rotated back. */
    CHECK(attnrot_rotate_rows(q, qr, N_HEAD * N_Q, D, D));
    CHECK(attnrot_rotate_rows(k, kr, N_HEAD_KV * N_KV, D, D));
    CHECK(attnrot_rotate_rows(v, vr, N_HEAD_KV * N_KV, D, D));

    printf("%-7s %14s %14s\n", "cache", "rel.err plain", "rel.err rot");
    for (t = 0; t < sizeof BOUNDS / sizeof BOUNDS[0]; t++) {
        int32_t type;
        double e_plain, e_rot;
        int ok;
        if (argc > 1 && strcmp(argv[1], BOUNDS[t].name) != 0) continue;
        CHECK(attnrot_type_from_name(BOUNDS[t].name, &type));
        quantized_attention(type, q, k, v, mask, scale, out);
        e_plain = rel_rms(out, ref, no);
        quantized_attention(type, qr, kr, vr, mask, scale, outr);
        CHECK(attnrot_rotate_rows(outr, outr, N_Q * N_HEAD, D, D)); /* in place */
        e_rot = rel_rms(outr, ref, no);
        ok = e_plain <= BOUNDS[t].plain && e_rot <= BOUNDS[t].rot;
        /* for quantized caches, rotation must clearly help on data with outlier channels */
        if (BOUNDS[t].plain >= 0.05 && !(e_rot < 0.8 * e_plain)) ok = 0;
        printf("%-7s %14.5f %14.5f  %s\n", BOUNDS[t].name, e_plain, e_rot, ok ? "ok" : "FAIL");
        failures += !ok;
        ran++;
    }
    if (ran == 0) {
        fprintf(stderr, "unknown format %s\n", argv[1]);
        return 2;
    }
    printf(failures ? "kv_attention: FAILED\n" : "kv_attention: ok\n");
    free(q); free(k); free(v); free(qr); free(kr); free(vr); free(mask); free(ref); free(out); free(outr);
    return failures ? 1 : 0;
}
