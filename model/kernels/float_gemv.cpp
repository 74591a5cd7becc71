// Float weights times a few rows of activations: codecomplete_native::float_gemv.
//
// A model served without int8 (`--quantize none`) decodes one row of activations (or a
// beam's few) against every bf16 or fp32 weight matrix: a stream of the weights from
// memory with two flops per weight read. PyTorch's one-row bf16 product read a 0.5B
// model's weights at 28-30 GB/s on a 2-core AVX-512 AMD EPYC; oneDNN's prepacked copy
// reads them at 40-46 but costs the weights' size in memory again and cannot enter a
// compiled decode step. This kernel reads the model's own row-major weight [N, K] in
// place, row after row (one stream), each weight multiplied into up to four activation
// rows while in a register: 44-49 GB/s there. bf16 times bf16 on a CPU with AVX-512 BF16
// takes 32 pairs an instruction (vdpbf16ps); otherwise (AVX2) a bf16 weight becomes a float
// by a widening move and a shift, and activations are floats. Sums are in float, rounded
// once to the activations' dtype. The next rows a thread will read are prefetched.
// Built and loaded by model/native.py; model/inference.py measures it against PyTorch's
// forms of the same product and uses it where it is fastest, for up to 8 rows.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <torch/library.h>

#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

namespace {

constexpr int64_t GROUP = 4;     // weight rows a task step covers; the next group is prefetched
constexpr int64_t MR_MAX = 4;    // activation rows multiplied per pass over a weight row

inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }

inline __m256 load8(const c10::BFloat16* p) {
  const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}

inline void prefetch(const void* p) {
  _mm_prefetch(reinterpret_cast<const char*>(p), _MM_HINT_T0);
}

// One weight row w [K] times MR activation rows X [MR, K] (float): sums[m * GROUP].
// Rows are read one after another, start to end: the weights stream from memory as one
// sequence. Reading a group's four rows side by side (four streams 2 KB apart) read a
// 0.5B model's at 36-39 GB/s against 43-46 this way (2-core AVX-512 AMD EPYC).
template <int MR, typename W>
void row_avx2(const W* w, const float* X, int64_t K, const W* ahead, float* sums) {
  constexpr int64_t STEP = 16;
  const int64_t full = K / STEP * STEP;
  __m256 acc[MR][2];
  for (auto& a : acc) a[0] = a[1] = _mm256_setzero_ps();
  for (int64_t k = 0; k < full; k += STEP) {
    if (ahead != nullptr && (k * sizeof(W)) % 64 == 0) prefetch(ahead + k);
    const __m256 w0 = load8(w + k), w1 = load8(w + k + 8);
    for (int m = 0; m < MR; ++m) {
      acc[m][0] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(X + m * K + k), acc[m][0]);
      acc[m][1] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(X + m * K + k + 8), acc[m][1]);
    }
  }
  for (int m = 0; m < MR; ++m) {
    float s = hsum(_mm256_add_ps(acc[m][0], acc[m][1]));
    for (int64_t k = full; k < K; ++k) s += static_cast<float>(w[k]) * X[m * K + k];
    sums[m * GROUP] = s;
  }
}

// The same for bf16 weights and bf16 activations on a CPU with AVX-512 BF16: 32 pairs a
// instruction (vdpbf16ps), products exact and summed in float.
// Compilers older than these lack AVX-512 BF16's intrinsics or its CPU test: they build
// the AVX2 path alone rather than fail to build every kernel.
#ifndef CODECOMPLETE_BF16_DOT
#if defined(__clang__)
#define CODECOMPLETE_BF16_DOT (__clang_major__ >= 12)
#elif defined(__GNUC__)
#define CODECOMPLETE_BF16_DOT (__GNUC__ >= 11)
#else
#define CODECOMPLETE_BF16_DOT 0
#endif
#endif

#if CODECOMPLETE_BF16_DOT
template <int MR>
__attribute__((target("avx512f,avx512bw,avx512bf16")))
void row_bf16(const c10::BFloat16* w, const c10::BFloat16* X, int64_t K,
              const c10::BFloat16* ahead, float* sums) {
  constexpr int64_t STEP = 64;
  const int64_t full = K / STEP * STEP;
  __m512 acc[MR][2];
  for (auto& a : acc) a[0] = a[1] = _mm512_setzero_ps();
  for (int64_t k = 0; k < full; k += STEP) {
    if (ahead != nullptr) prefetch(ahead + k), prefetch(ahead + k + 32);
    const __m512i w0 = _mm512_loadu_si512(w + k), w1 = _mm512_loadu_si512(w + k + 32);
    for (int m = 0; m < MR; ++m) {
      const __m512i x0 = _mm512_loadu_si512(X + m * K + k);
      const __m512i x1 = _mm512_loadu_si512(X + m * K + k + 32);
      acc[m][0] = _mm512_dpbf16_ps(acc[m][0], (__m512bh)w0, (__m512bh)x0);
      acc[m][1] = _mm512_dpbf16_ps(acc[m][1], (__m512bh)w1, (__m512bh)x1);
    }
  }
  for (int m = 0; m < MR; ++m) {
    float s = _mm512_reduce_add_ps(_mm512_add_ps(acc[m][0], acc[m][1]));
    for (int64_t k = full; k < K; ++k)
      s += static_cast<float>(w[k]) * static_cast<float>(X[m * K + k]);
    sums[m * GROUP] = s;
  }
}

#endif

// One weight row times activation rows X (float, or bf16 for the AVX-512 BF16 path), MR_MAX
// at a time.
template <typename W, typename A>
void row(const W* w, const A* X, int64_t M, int64_t K, const W* ahead, float* sums) {
  for (int64_t m0 = 0; m0 < M; m0 += MR_MAX) {
    const int64_t mr = std::min(MR_MAX, M - m0);
    const A* x = X + m0 * K;
    float* s = sums + m0 * GROUP;
    if constexpr (std::is_same_v<A, c10::BFloat16>) {
#if CODECOMPLETE_BF16_DOT
      if (mr == 1) row_bf16<1>(w, x, K, ahead, s);
      else if (mr == 2) row_bf16<2>(w, x, K, ahead, s);
      else if (mr == 3) row_bf16<3>(w, x, K, ahead, s);
      else row_bf16<4>(w, x, K, ahead, s);
#else
      static_assert(!std::is_same_v<A, A>, "bf16 activations are for the AVX-512 BF16 path");
#endif
    } else {
      if (mr == 1) row_avx2<1>(w, x, K, ahead, s);
      else if (mr == 2) row_avx2<2>(w, x, K, ahead, s);
      else if (mr == 3) row_avx2<3>(w, x, K, ahead, s);
      else row_avx2<4>(w, x, K, ahead, s);
    }
    ahead = nullptr;                 // prefetched once, by the first pass
  }
}

// out [M, N] = X [M, K] times Wt [N, K] transposed, rounded to O.
template <typename W, typename A, typename O>
void gemv(const A* X, const W* Wt, O* out, int64_t M, int64_t K, int64_t N) {
  // a task is at least ~64k multiply-adds: smaller ones cost more to hand to a second
  // thread than they save
  const int64_t groups = (N + GROUP - 1) / GROUP;
  const int64_t grain = std::max<int64_t>(1, (1 << 16) / (M * K * GROUP));
  at::parallel_for(0, groups, grain, [&](int64_t g0, int64_t g1) {
    std::vector<float> sums(M * GROUP);
    for (int64_t g = g0; g < g1; ++g) {
      const int64_t n = g * GROUP, rows = std::min<int64_t>(GROUP, N - n);
      const bool next = g + 1 < g1 && n + 2 * GROUP <= N;   // the next group is whole
      for (int64_t r = 0; r < rows; ++r)
        row(Wt + (n + r) * K, X, M, K, next ? Wt + (n + GROUP + r) * K : nullptr,
            sums.data() + r);
      for (int64_t m = 0; m < M; ++m)
        for (int64_t r = 0; r < rows; ++r)
          out[m * N + n + r] = static_cast<O>(sums[m * GROUP + r]);
    }
  });
}

#if CODECOMPLETE_BF16_DOT
bool has_bf16_dot() {
  static const bool yes = __builtin_cpu_supports("avx512bf16");
  return yes;
}
#endif

at::Tensor float_gemv(const at::Tensor& x, const at::Tensor& w) {
  TORCH_CHECK(x.dim() == 2 && w.dim() == 2 && x.size(1) == w.size(1),
              "float_gemv: x [M, K] and w [N, K] expected");
  const auto xt = x.scalar_type(), wt = w.scalar_type();
  TORCH_CHECK((xt == at::kFloat || xt == at::kBFloat16) &&
                  (wt == at::kFloat || wt == at::kBFloat16),
              "float_gemv: float32 or bfloat16 x and w expected");
  TORCH_CHECK(x.device().is_cpu() && w.device().is_cpu(), "float_gemv: CPU tensors expected");
  const int64_t M = x.size(0), K = x.size(1), N = w.size(0);
  at::Tensor out = at::empty({M, N}, x.options());
  if (M == 0 || N == 0) return out;
  if (K == 0) return out.zero_();
  const at::Tensor wc = w.contiguous();
#if CODECOMPLETE_BF16_DOT
  if (wt == at::kBFloat16 && xt == at::kBFloat16 && has_bf16_dot()) {
    const at::Tensor xc = x.contiguous();
    gemv(xc.data_ptr<c10::BFloat16>(), wc.data_ptr<c10::BFloat16>(),
         out.data_ptr<c10::BFloat16>(), M, K, N);
    return out;
  }
#endif
  const at::Tensor xf = x.to(at::kFloat).contiguous();
  const float* X = xf.data_ptr<float>();
  if (wt == at::kBFloat16) {
    const auto* W = wc.data_ptr<c10::BFloat16>();
    if (xt == at::kBFloat16) gemv(X, W, out.data_ptr<c10::BFloat16>(), M, K, N);
    else gemv(X, W, out.data_ptr<float>(), M, K, N);
  } else {
    const float* W = wc.data_ptr<float>();
    if (xt == at::kBFloat16) gemv(X, W, out.data_ptr<c10::BFloat16>(), M, K, N);
    else gemv(X, W, out.data_ptr<float>(), M, K, N);
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(codecomplete_native, m) {
  m.def("float_gemv(Tensor x, Tensor w) -> Tensor");
}

TORCH_LIBRARY_IMPL(codecomplete_native, CPU, m) { m.impl("float_gemv", &float_gemv); }
