// ggml_plugin.cpp — plug attnrot's ggml-shaped entry points into ggml-based code.
//
// attnrot exports, per format, functions with exactly ggml's `ggml_to_float_t`,
// `ggml_from_float_t` and `ggml_vec_dot_t` signatures. This program (linked against the
// pinned upstream ggml and libattnrot):
//   1. fills a table typed with ggml's own typedefs from attnrot (by name and through
//      `attnrot_ggml_get_traits`), which only compiles because the signatures are ggml's;
//   2. checks each entry against ggml's own `type_traits` / `type_traits_cpu` on the same
//      inputs: quantized bytes, dequantized floats and dot products bit for bit;
//   3. plugs them into ggml graphs: ggml's MUL_MAT and GET_ROWS run on a quantized tensor
//      whose bytes attnrot wrote, and a ggml custom op dequantizes through the table; the
//      results must equal what attnrot's own vec_dot / to_float give.
//
// Build (tests/capi_examples.rs does this; LIB = the ref crate's vendor/.build/<key>):
//   c++ -O2 -std=c++17 -Iffi -I vendor/llama.cpp/ggml/include ffi/examples/ggml_plugin.cpp
//       -Ltarget/release -lattnrot -Wl,-rpath,$PWD/target/release
//       $LIB/libggml_ref_cxx.a $LIB/libggml_ref_c.a -lpthread -ldl -lm -o ggml_plugin
//   (one command)
#include "attnrot.h"
#include "ggml-cpu.h"
#include "ggml.h"

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

namespace {

// A table like ggml's type traits, typed with ggml's typedefs.
struct plugin_traits {
    ggml_to_float_t   to_float;
    ggml_from_float_t from_float;
    ggml_from_float_t from_float_ref;
    ggml_vec_dot_t    vec_dot;
    ggml_type         vec_dot_type;
};

struct format {
    const char *  name;
    ggml_type     type;
    plugin_traits by_name;  // the per-format symbols, assigned directly
};

// Direct assignment of the exported functions to ggml's function-pointer types.
const format FORMATS[] = {
    {"f16", GGML_TYPE_F16, {attnrot_ggml_f16_to_float, attnrot_ggml_f16_from_float, attnrot_ggml_f16_from_float_ref, attnrot_ggml_f16_vec_dot, GGML_TYPE_F16}},
    {"bf16", GGML_TYPE_BF16, {attnrot_ggml_bf16_to_float, attnrot_ggml_bf16_from_float, attnrot_ggml_bf16_from_float_ref, attnrot_ggml_bf16_vec_dot, GGML_TYPE_BF16}},
    {"q4_0", GGML_TYPE_Q4_0, {attnrot_ggml_q4_0_to_float, attnrot_ggml_q4_0_from_float, attnrot_ggml_q4_0_from_float_ref, attnrot_ggml_q4_0_vec_dot, GGML_TYPE_Q8_0}},
    {"q4_1", GGML_TYPE_Q4_1, {attnrot_ggml_q4_1_to_float, attnrot_ggml_q4_1_from_float, attnrot_ggml_q4_1_from_float_ref, attnrot_ggml_q4_1_vec_dot, GGML_TYPE_Q8_1}},
    {"q5_0", GGML_TYPE_Q5_0, {attnrot_ggml_q5_0_to_float, attnrot_ggml_q5_0_from_float, attnrot_ggml_q5_0_from_float_ref, attnrot_ggml_q5_0_vec_dot, GGML_TYPE_Q8_0}},
    {"q5_1", GGML_TYPE_Q5_1, {attnrot_ggml_q5_1_to_float, attnrot_ggml_q5_1_from_float, attnrot_ggml_q5_1_from_float_ref, attnrot_ggml_q5_1_vec_dot, GGML_TYPE_Q8_1}},
    {"q8_0", GGML_TYPE_Q8_0, {attnrot_ggml_q8_0_to_float, attnrot_ggml_q8_0_from_float, attnrot_ggml_q8_0_from_float_ref, attnrot_ggml_q8_0_vec_dot, GGML_TYPE_Q8_0}},
    {"q8_1", GGML_TYPE_Q8_1, {attnrot_ggml_q8_1_to_float, attnrot_ggml_q8_1_from_float, attnrot_ggml_q8_1_from_float_ref, nullptr, GGML_TYPE_Q8_1}},
    {"iq4_nl", GGML_TYPE_IQ4_NL, {attnrot_ggml_iq4_nl_to_float, attnrot_ggml_iq4_nl_from_float, attnrot_ggml_iq4_nl_from_float_ref, attnrot_ggml_iq4_nl_vec_dot, GGML_TYPE_Q8_0}},
};

int g_pass = 0, g_fail = 0;

void check(bool ok, const char * fmt, const char * what, const char * detail = "") {
    if (ok) {
        g_pass++;
    } else {
        g_fail++;
        std::fprintf(stderr, "FAIL %s: %s %s\n", fmt, what, detail);
    }
}

bool same_bits(const float * a, const float * b, size_t n) { return std::memcmp(a, b, n * sizeof(float)) == 0; }

// Rows like activations: gaussian with a random scale, some outlier channels, exact ties.
std::vector<float> make_rows(std::mt19937_64 & rng, size_t rows, size_t n) {
    std::normal_distribution<float> g(0.0f, 1.0f);
    std::uniform_real_distribution<float> e(-4.0f, 3.0f);
    std::vector<float> x(rows * n);
    for (size_t r = 0; r < rows; r++) {
        float s = std::pow(10.0f, e(rng));
        for (size_t i = 0; i < n; i++) {
            float v = g(rng) * s;
            if (r % 5 == 1 && i % 17 == 3) v *= 30.0f;
            if (r % 5 == 2) v = std::round(v * 4.0f / s) / 4.0f * s;  // ties
            if (r % 5 == 3 && i % 7 == 0) v = 0.0f;
            x[r * n + i] = v;
        }
    }
    return x;
}

void run_format(const format & f, std::mt19937_64 & rng) {
    const int64_t n = 256;
    const size_t rows = 64;
    const char * nm = f.name;

    // 1. the table from attnrot's getter equals the directly assigned symbols
    attnrot_ggml_traits at;
    check(attnrot_ggml_get_traits(f.type, &at) == ATTNROT_OK, nm, "attnrot_ggml_get_traits");
    plugin_traits t = {at.to_float, at.from_float, at.from_float_ref, at.vec_dot, (ggml_type)at.vec_dot_type};
    check(t.to_float == f.by_name.to_float && t.from_float == f.by_name.from_float && t.from_float_ref == f.by_name.from_float_ref &&
              t.vec_dot == f.by_name.vec_dot && t.vec_dot_type == f.by_name.vec_dot_type,
          nm, "getter == symbols");

    const ggml_type_traits * up = ggml_get_type_traits(f.type);
    const ggml_type_traits_cpu * upc = ggml_get_type_traits_cpu(f.type);
    check(t.vec_dot_type == upc->vec_dot_type, nm, "vec_dot_type");
    check((size_t)at.type_size == up->type_size && at.block_size == up->blck_size, nm, "block geometry");
    const size_t rb = ggml_row_size(f.type, n);

    std::vector<float> x = make_rows(rng, rows, n);
    // 2. bytes, floats and dots against ggml's own
    std::vector<uint8_t> ours(rows * rb), theirs(rows * rb);
    for (size_t r = 0; r < rows; r++) {
        t.from_float(&x[r * n], &ours[r * rb], n);
        upc->from_float(&x[r * n], &theirs[r * rb], n);
    }
    check(ours == theirs, nm, "from_float bytes == ggml CPU from_float");
    if (up->from_float_ref) {
        std::vector<uint8_t> o2(rows * rb), t2(rows * rb);
        for (size_t r = 0; r < rows; r++) {
            t.from_float_ref(&x[r * n], &o2[r * rb], n);
            up->from_float_ref(&x[r * n], &t2[r * rb], n);
        }
        check(o2 == t2, nm, "from_float_ref bytes == ggml from_float_ref");
    }
    if (up->to_float) {  // ggml has none for q8_1
        std::vector<float> yo(rows * n), yt(rows * n);
        t.to_float(ours.data(), yo.data(), (int64_t)(rows * n));
        up->to_float(ours.data(), yt.data(), (int64_t)(rows * n));
        check(same_bits(yo.data(), yt.data(), yo.size()), nm, "to_float == ggml to_float");
    }
    if (!t.vec_dot) {
        check(upc->vec_dot == nullptr, nm, "no vec_dot, like ggml");
        return;
    }
    const size_t rbd = ggml_row_size(t.vec_dot_type, n);
    const ggml_from_float_t q_from = ggml_get_type_traits_cpu(t.vec_dot_type)->from_float;
    std::vector<uint8_t> yq(rbd);
    size_t dot_mismatch = 0;
    for (size_t r = 0; r + 1 < rows; r++) {
        q_from(&x[(r + 1) * n], yq.data(), n);
        float so = NAN, st = NAN;
        t.vec_dot((int)n, &so, 0, &ours[r * rb], 0, yq.data(), 0, 1);
        upc->vec_dot((int)n, &st, 0, &ours[r * rb], 0, yq.data(), 0, 1);
        dot_mismatch += std::memcmp(&so, &st, sizeof so) != 0;
    }
    check(dot_mismatch == 0, nm, "vec_dot == ggml vec_dot");

    // 3. ggml graphs over bytes attnrot wrote
    const int64_t nk = 48, nq = 5;
    ggml_init_params ip = {64u * 1024 * 1024, nullptr, false};
    ggml_context * ctx = ggml_init(ip);
    ggml_tensor * k = ggml_new_tensor_2d(ctx, f.type, n, nk);
    ggml_tensor * q = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, n, nq);
    std::memcpy(k->data, ours.data(), (size_t)nk * rb);                   // attnrot's bytes
    std::memcpy(q->data, &x[(rows - nq) * n], (size_t)(nq * n) * sizeof(float));
    ggml_tensor * kq = ggml_mul_mat(ctx, k, q);  // [nk, nq]: ggml converts q and calls vec_dot
    ggml_tensor * idx = ggml_new_tensor_1d(ctx, GGML_TYPE_I32, nk);
    for (int64_t i = 0; i < nk; i++) ((int32_t *)idx->data)[i] = (int32_t)(nk - 1 - i);
    ggml_tensor * rows_f = ggml_get_rows(ctx, k, idx);  // ggml dequantizes with its to_float
    // a custom op that dequantizes through the plugged-in table
    ggml_tensor * dst0 = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, n, nk);
    ggml_custom2_op_t deq = [](ggml_tensor * dst, const ggml_tensor * a, const ggml_tensor * b, int ith, int nth, void * ud) {
        (void)a;
        const plugin_traits * tt = (const plugin_traits *)ud;
        for (int64_t r = ith; r < b->ne[1]; r += nth) {
            tt->to_float((const char *)b->data + r * b->nb[1], (float *)((char *)dst->data + r * dst->nb[1]), b->ne[0]);
        }
    };
    ggml_tensor * custom = ggml_map_custom2(ctx, dst0, k, deq, 2, &t);
    ggml_cgraph * gf = ggml_new_graph(ctx);
    ggml_build_forward_expand(gf, kq);
    ggml_build_forward_expand(gf, rows_f);
    ggml_build_forward_expand(gf, custom);
    check(ggml_graph_compute_with_ctx(ctx, gf, 2) == GGML_STATUS_SUCCESS, nm, "graph compute");

    // MUL_MAT vs attnrot's vec_dot on the same (ggml-converted) q rows
    size_t mm_mismatch = 0;
    for (int64_t j = 0; j < nq; j++) {
        // q converted by ggml's from_float of the vec_dot type, as MUL_MAT does
        q_from((const float *)q->data + j * n, yq.data(), n);
        for (int64_t i = 0; i < nk; i++) {
            float s = NAN;
            t.vec_dot((int)n, &s, 0, &ours[i * rb], 0, yq.data(), 0, 1);
            float g = ((const float *)kq->data)[j * nk + i];
            mm_mismatch += std::memcmp(&s, &g, sizeof s) != 0;
        }
    }
    char detail[64];
    std::snprintf(detail, sizeof detail, "(%zu of %lld differ)", mm_mismatch, (long long)(nk * nq));
    check(mm_mismatch == 0, nm, "ggml MUL_MAT == attnrot vec_dot", detail);
    if (up->to_float) {
        std::vector<float> yo((size_t)(nk * n));
        t.to_float(ours.data(), yo.data(), nk * n);
        size_t gr_mismatch = 0;
        for (int64_t i = 0; i < nk; i++) {
            gr_mismatch += !same_bits((const float *)rows_f->data + i * n, &yo[(nk - 1 - i) * n], (size_t)n);
        }
        check(gr_mismatch == 0, nm, "ggml GET_ROWS == attnrot to_float");
        check(same_bits((const float *)custom->data, yo.data(), yo.size()), nm, "custom op through the table == to_float");
    }
    ggml_free(ctx);
}

}  // namespace

int main() {
    ggml_cpu_init();
    std::printf("attnrot %s, ggml %s (%s)\n", attnrot_version_string(), ggml_version(), ggml_commit());
    std::mt19937_64 rng(20240611);
    for (const format & f : FORMATS) {
        int before = g_fail;
        run_format(f, rng);
        std::printf("%-7s %s\n", f.name, g_fail == before ? "ok" : "FAIL");
    }
    std::printf("ggml_plugin: %d checks passed, %d failed\n", g_pass, g_fail);
    std::printf(g_fail ? "ggml_plugin: FAILED\n" : "ggml_plugin: ok\n");
    return g_fail ? 1 : 0;
}
