// int8 x int8 products for a few rows of activations: codecomplete_native::q8_gemv.
//
// Decoding reads every weight once per token and does little arithmetic with it. PyTorch's
// int8-weight kernel (_weight_int8pack_mm) converts each weight to a float and multiplies in
// floats; this one quantizes the few activation rows to int8 as well, one scale per block of
// 32 values (as llama.cpp's q8_0 does), and multiplies 32 int8 pairs per AVX2 instruction
// (vpmaddubsw), the products summed in int32 within a block and in float across blocks.
// Weights are int8 with one float scale per output row (model/quantize.py's rounding).
// The weights of a model larger than the CPU's caches stream from memory once a token:
// prefetching the rows two groups ahead read a 0.5B model's at 19-21 GB/s against 15-16
// without (2-core AMD EPYC, interleaved runs), and cost ~5% where they fit in L3. One row
// of activations (greedy decoding) reads each weight row start to end instead, so that
// the weights stream as one sequence rather than four rows side by side (as
// float_gemv.cpp found for float weights): on an AVX-512 AMD EPYC a token's int8 products
// of a 0.5B shape (493 MB) took 9.0-9.2 against 9.7-10.0 ms and 10.8-13.5 against
// 14.1-16.8 in two processes (both orders in each, alternating), and about the same
// (7.5-8.7) in a third, where memory read fastest. The sums are taken in the grouped
// order, so a row alone equals the same row among others to the bit. Several rows keep
// the grouped order, whose activations' signs serve four weight rows at once.
// Built and loaded by model/native.py; see there for when it is used.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace {

constexpr int64_t BLOCK = 32;    // activations share one scale per this many values
constexpr int64_t GROUP = 4;     // output rows computed together (independent sums)

// Each row of x [M, K] as int8 q [M, K] with one scale per block of 32 (s [M, K / 32]):
// the scale is the block's largest magnitude over 127, values rounded to nearest (even).
void quantize_rows(const float* x, int64_t M, int64_t K, int8_t* q, float* s) {
  const int64_t blocks = K / BLOCK;
  const __m256 sign_bit = _mm256_set1_ps(-0.f);
  for (int64_t m = 0; m < M; ++m) {
    for (int64_t b = 0; b < blocks; ++b) {
      const float* xb = x + m * K + b * BLOCK;
      __m256 v[4];
      __m256 amax = _mm256_setzero_ps();
      for (int i = 0; i < 4; ++i) {
        v[i] = _mm256_loadu_ps(xb + 8 * i);
        amax = _mm256_max_ps(amax, _mm256_andnot_ps(sign_bit, v[i]));
      }
      __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(amax), _mm256_extractf128_ps(amax, 1));
      m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
      m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
      const float scale = _mm_cvtss_f32(m4) / 127.f;
      const __m256 inverse = _mm256_set1_ps(scale > 0.f ? 1.f / scale : 0.f);
      s[m * blocks + b] = scale;
      __m256i i32[4];
      for (int i = 0; i < 4; ++i)     // cvtps rounds to nearest even, as nearbyint
        i32[i] = _mm256_cvtps_epi32(_mm256_mul_ps(v[i], inverse));
      // 32 int32 -> 32 int8; the packs interleave 128-bit lanes, the permute undoes it
      const __m256i i16 = _mm256_packs_epi32(i32[0], i32[1]);
      const __m256i i16b = _mm256_packs_epi32(i32[2], i32[3]);
      const __m256i i8 = _mm256_packs_epi16(i16, i16b);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(q + m * K + b * BLOCK),
                          _mm256_permutevar8x32_epi32(i8, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)));
    }
  }
}

// One block's contribution to a row's sum: int8 weights w times int8 activations, given
// as |x| (vpmaddubsw needs one unsigned operand; computed once per block for all rows)
// and x's signs, which move onto w. Pairs are summed in int16 (at most 2 * 127 * 127),
// then in int32 lanes, and scaled by the activations' block scale into float.
inline __m256 block_dot(__m256i w, __m256i x_abs, __m256i x, __m256 scale, __m256 acc) {
  const __m256i pairs = _mm256_maddubs_epi16(x_abs, _mm256_sign_epi8(w, x));
  const __m256i sums = _mm256_madd_epi16(pairs, _mm256_set1_epi16(1));
  return _mm256_fmadd_ps(_mm256_cvtepi32_ps(sums), scale, acc);
}

// The sum of a row's eight lanes in the order the grouped path's two hadds take, so
// that a row computed alone equals the same row computed among others, to the bit.
inline float lanes_sum(__m256 a) {
  __m128 lo = _mm256_castps256_ps128(a), hi = _mm256_extractf128_ps(a, 1);
  lo = _mm_hadd_ps(lo, lo);
  hi = _mm_hadd_ps(hi, hi);
  return _mm_cvtss_f32(_mm_add_ss(_mm_hadd_ps(lo, lo), _mm_hadd_ps(hi, hi)));
}

// One row of activations (quantized: xq, one scale per block in xs) times weight rows
// [n0, n1), each read start to end, the row GROUP on prefetched while inside this task;
// the blocks summed in the grouped path's order.
void one_row(const int8_t* W, const float* WS, const int8_t* xq, const float* xs,
             int64_t K, int64_t n0, int64_t n1, float* out) {
  const int64_t blocks = K / BLOCK;
  for (int64_t n = n0; n < n1; ++n) {
    const int8_t* wr = W + n * K;
    const int8_t* ahead = n + GROUP < n1 ? wr + GROUP * K : nullptr;
    __m256 acc = _mm256_setzero_ps();
    for (int64_t b = 0; b < blocks; ++b) {
      if (ahead != nullptr && (b & 1) == 0)     // a cache line: two blocks
        _mm_prefetch(reinterpret_cast<const char*>(ahead + b * BLOCK), _MM_HINT_T0);
      const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq + b * BLOCK));
      acc = block_dot(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(wr + b * BLOCK)),
                      _mm256_sign_epi8(xv, xv), xv, _mm256_set1_ps(xs[b]), acc);
    }
    out[n] = lanes_sum(acc) * WS[n];
  }
}

at::Tensor q8_gemv(const at::Tensor& x, const at::Tensor& w, const at::Tensor& w_scale) {
  TORCH_CHECK(x.dim() == 2 && w.dim() == 2 && x.size(1) == w.size(1),
              "q8_gemv: x [M, K] and w [N, K] expected");
  TORCH_CHECK(x.scalar_type() == at::kFloat && w.scalar_type() == at::kChar &&
                  w_scale.scalar_type() == at::kFloat && w_scale.numel() == w.size(0),
              "q8_gemv: float x, int8 w and one float scale per row of w expected");
  const int64_t M = x.size(0), K = x.size(1), N = w.size(0), blocks = K / BLOCK;
  TORCH_CHECK(K % BLOCK == 0, "q8_gemv: the inner size must be a multiple of 32");
  const at::Tensor xc = x.contiguous(), wc = w.contiguous(), sc = w_scale.contiguous();
  at::Tensor out = at::empty({M, N}, x.options());
  if (M == 0 || N == 0 || K == 0) return out.zero_();
  // the rounded rows, in buffers each thread keeps (no allocation per call)
  thread_local std::vector<int8_t> xq;
  thread_local std::vector<float> xs;
  xq.resize(M * K);
  xs.resize(M * blocks);
  quantize_rows(xc.data_ptr<float>(), M, K, xq.data(), xs.data());
  const int8_t* W = wc.data_ptr<int8_t>();
  const float* WS = sc.data_ptr<float>();
  const int8_t* XQ = xq.data();
  const float* XS = xs.data();
  float* O = out.data_ptr<float>();
  // a task is at least ~64k multiply-adds: smaller ones cost more to hand to a second
  // thread than they save
  const int64_t grain = std::max<int64_t>(1, (1 << 16) / (M * K * GROUP));
  if (M == 1) {
    at::parallel_for(0, (N + GROUP - 1) / GROUP, grain, [&](int64_t g0, int64_t g1) {
      one_row(W, WS, XQ, XS, K, g0 * GROUP, std::min(N, g1 * GROUP), O);
    });
    return out;
  }
  at::parallel_for(0, (N + GROUP - 1) / GROUP, grain, [&](int64_t g0, int64_t g1) {
    for (int64_t g = g0; g < g1; ++g) {
      const int64_t n = g * GROUP, rows = std::min<int64_t>(GROUP, N - n);
      const int8_t* wr[GROUP];
      for (int64_t r = 0; r < GROUP; ++r) wr[r] = W + (n + std::min(r, rows - 1)) * K;
      for (int64_t m = 0; m < M; ++m) {     // the group's weights stay in L1 across rows
        const int8_t* xr = XQ + m * K;
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        for (int64_t b = 0; b < blocks; ++b) {
          const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xr + b * BLOCK));
          const __m256i xa = _mm256_sign_epi8(xv, xv);
          const __m256 d = _mm256_set1_ps(XS[m * blocks + b]);
          const int64_t at = b * BLOCK;
          if ((b & 1) == 0 && g + 2 < g1) {   // the rows 2 groups on, a cache line a row
            const int8_t* ahead = wr[0] + 2 * GROUP * K + at;
            for (int64_t r = 0; r < GROUP; ++r)
              _mm_prefetch(reinterpret_cast<const char*>(ahead + r * K), _MM_HINT_T0);
          }
          a0 = block_dot(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(wr[0] + at)), xa, xv, d, a0);
          a1 = block_dot(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(wr[1] + at)), xa, xv, d, a1);
          a2 = block_dot(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(wr[2] + at)), xa, xv, d, a2);
          a3 = block_dot(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(wr[3] + at)), xa, xv, d, a3);
        }
        // the four rows' horizontal sums at once
        const __m256 h = _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3));
        float sums[GROUP];
        _mm_storeu_ps(sums, _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1)));
        for (int64_t r = 0; r < rows; ++r) O[m * N + n + r] = sums[r] * WS[n + r];
      }
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY(codecomplete_native, m) {
  m.def("q8_gemv(Tensor x, Tensor w, Tensor w_scale) -> Tensor");
}

TORCH_LIBRARY_IMPL(codecomplete_native, CPU, m) { m.impl("q8_gemv", &q8_gemv); }
