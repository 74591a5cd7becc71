// int8 x int8 products for a few rows of activations: codecomplete_native::q8_gemv.
//
// Decoding reads every weight once per token and does little arithmetic with it. PyTorch's
// int8-weight kernel (_weight_int8pack_mm) converts each weight to a float and multiplies in
// floats; this one quantizes the few activation rows to int8 as well, one scale per block of
// 32 values (as llama.cpp's q8_0 does), and multiplies 32 int8 pairs per AVX2 instruction
// (vpmaddubsw), the products summed in int32 within a block and in float across blocks.
// Weights are int8 with one float scale per output row (model/quantize.py's rounding).
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

// Each row of x [M, K] as int8 q [M, K] with one scale per block of 32 (s [M, K / 32]).
void quantize_rows(const float* x, int64_t M, int64_t K, int8_t* q, float* s) {
  const int64_t blocks = K / BLOCK;
  for (int64_t m = 0; m < M; ++m) {
    for (int64_t b = 0; b < blocks; ++b) {
      const float* xb = x + m * K + b * BLOCK;
      float amax = 0.f;
      for (int64_t i = 0; i < BLOCK; ++i) amax = std::max(amax, std::fabs(xb[i]));
      const float scale = amax / 127.f;
      const float inverse = scale > 0.f ? 1.f / scale : 0.f;
      s[m * blocks + b] = scale;
      for (int64_t i = 0; i < BLOCK; ++i)
        q[m * K + b * BLOCK + i] = static_cast<int8_t>(std::nearbyint(xb[i] * inverse));
    }
  }
}

// One block's contribution to a row's sum: int8 weights w times int8 activations x, summed
// in int32 lanes (|w| * sign(x, w): vpmaddubsw needs one unsigned operand), times the
// activations' scale.
inline __m256 block_dot(__m256i w, __m256i x, __m256 scale, __m256 acc) {
  const __m256i pairs = _mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(x, w));
  const __m256i sums = _mm256_madd_epi16(pairs, _mm256_set1_epi16(1));
  return _mm256_fmadd_ps(_mm256_cvtepi32_ps(sums), scale, acc);
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
  std::vector<int8_t> xq(M * K);
  std::vector<float> xs(M * blocks);
  quantize_rows(xc.data_ptr<float>(), M, K, xq.data(), xs.data());
  const int8_t* W = wc.data_ptr<int8_t>();
  const float* WS = sc.data_ptr<float>();
  const int8_t* XQ = xq.data();
  const float* XS = xs.data();
  float* O = out.data_ptr<float>();
  // a task is at least ~64k multiply-adds: fewer cost more in threading than they save
  const int64_t grain = std::max<int64_t>(1, 65536 / (K * GROUP));
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
          const __m256 d = _mm256_set1_ps(XS[m * blocks + b]);
          const int64_t at = b * BLOCK;
          a0 = block_dot(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(wr[0] + at)), xv, d, a0);
          a1 = block_dot(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(wr[1] + at)), xv, d, a1);
          a2 = block_dot(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(wr[2] + at)), xv, d, a2);
          a3 = block_dot(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(wr[3] + at)), xv, d, a3);
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
