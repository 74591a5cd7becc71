// One decoded token's attention over a float32 KV cache: codecomplete_native::decode_attention.
//
// A decode step attends from one position over every cached one: per layer a few thousand
// dot products of 32-64 floats. Written as PyTorch operations (two batched products and a
// softmax), each is a library call with its own threading and a product shaped [2, 32] x
// [32, L] that matrix libraries are not built for; on a 2-core AMD EPYC they took ~0.1 ms
// a layer of the shipped model's ~1 ms step. Here it is one pass per K/V head: the scores
// of eight positions at a time (their dot products reduced together), a softmax with a
// vectorised exp, the values' weighted sum; the query heads that share a K/V head (GQA)
// read its keys and values while they are in cache.
// Built and loaded by model/native.py (with q8_gemv.cpp); model/decode_step.py calls it.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace {

constexpr int64_t LANES = 8;             // floats in an AVX2 register
constexpr int64_t MAX_D = 256;           // head sizes up to this (accumulators on the stack)
constexpr int64_t PARALLEL_MACS = 1 << 16;   // below this a call stays on one thread

// e^x for x <= 0 (scores less their maximum), Cephes' single-precision polynomial after
// x = n ln2 + r: relative error ~1e-7 against std::exp; below -87 (e^x < 1.7e-38) it
// returns e^-87 rather than a denormal, which no softmax weight can tell apart from 0.
inline __m256 exp_nonpositive(__m256 x) {
  x = _mm256_max_ps(x, _mm256_set1_ps(-87.0f));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  p = _mm256_fmadd_ps(_mm256_mul_ps(p, r), r, _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  const __m256i e = _mm256_slli_epi32(
      _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

// Lane i of the result is the sum of a[i]'s eight lanes.
inline __m256 sum_each(const __m256* a) {
  const __m256 u0 = _mm256_hadd_ps(_mm256_hadd_ps(a[0], a[1]), _mm256_hadd_ps(a[2], a[3]));
  const __m256 u1 = _mm256_hadd_ps(_mm256_hadd_ps(a[4], a[5]), _mm256_hadd_ps(a[6], a[7]));
  return _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31));
}

inline float sum_lanes(__m256 a) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}

// Eight keys or values as floats: a float32 cache as it is, a bfloat16 one widened (its
// bits are a float32's upper half).
inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
inline __m256 load8(const c10::BFloat16* p) {
  const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

// One query row q [D] over keys/values k, v (row stride `stride`) of positions 0..L-1:
// out [D] = softmax(q k^T * scale) v. `s` is scratch for L scores.
template <typename T>
void attend_row(const float* q, const T* k, const T* v, int64_t stride, int64_t L,
                int64_t D, float scale, float* s, float* out) {
  const int64_t chunks = D / LANES;
  int64_t j = 0;
  for (; j + LANES <= L; j += LANES) {
    __m256 acc[LANES];
    for (int64_t t = 0; t < LANES; ++t) acc[t] = _mm256_setzero_ps();
    for (int64_t c = 0; c < chunks; ++c) {
      const __m256 qv = _mm256_loadu_ps(q + c * LANES);
      for (int64_t t = 0; t < LANES; ++t)
        acc[t] = _mm256_fmadd_ps(qv, load8(k + (j + t) * stride + c * LANES), acc[t]);
    }
    _mm256_storeu_ps(s + j, _mm256_mul_ps(sum_each(acc), _mm256_set1_ps(scale)));
  }
  for (; j < L; ++j) {
    __m256 acc = _mm256_setzero_ps();
    for (int64_t c = 0; c < chunks; ++c)
      acc = _mm256_fmadd_ps(_mm256_loadu_ps(q + c * LANES),
                            load8(k + j * stride + c * LANES), acc);
    s[j] = sum_lanes(acc) * scale;
  }
  float top = -INFINITY;
  for (int64_t i = 0; i < L; ++i) top = std::max(top, s[i]);
  const __m256 top_v = _mm256_set1_ps(top);
  __m256 total_v = _mm256_setzero_ps();
  j = 0;
  for (; j + LANES <= L; j += LANES) {
    const __m256 e = exp_nonpositive(_mm256_sub_ps(_mm256_loadu_ps(s + j), top_v));
    _mm256_storeu_ps(s + j, e);
    total_v = _mm256_add_ps(total_v, e);
  }
  float total = sum_lanes(total_v);
  for (; j < L; ++j) {
    s[j] = std::exp(s[j] - top);
    total += s[j];
  }
  // the weighted sum of values, two positions at a time into two sets of sums
  __m256 a0[MAX_D / LANES], a1[MAX_D / LANES];
  for (int64_t c = 0; c < chunks; ++c) a0[c] = a1[c] = _mm256_setzero_ps();
  j = 0;
  for (; j + 2 <= L; j += 2) {
    const __m256 p0 = _mm256_set1_ps(s[j]), p1 = _mm256_set1_ps(s[j + 1]);
    const T* v0 = v + j * stride;
    const T* v1 = v0 + stride;
    for (int64_t c = 0; c < chunks; ++c) {
      a0[c] = _mm256_fmadd_ps(p0, load8(v0 + c * LANES), a0[c]);
      a1[c] = _mm256_fmadd_ps(p1, load8(v1 + c * LANES), a1[c]);
    }
  }
  if (j < L) {
    const __m256 p0 = _mm256_set1_ps(s[j]);
    for (int64_t c = 0; c < chunks; ++c)
      a0[c] = _mm256_fmadd_ps(p0, load8(v + j * stride + c * LANES), a0[c]);
  }
  const __m256 inverse = _mm256_set1_ps(1.f / total);
  for (int64_t c = 0; c < chunks; ++c)
    _mm256_storeu_ps(out + c * LANES, _mm256_mul_ps(_mm256_add_ps(a0[c], a1[c]), inverse));
}

// Every query row of q [Hkv, G, D] over its K/V head's first L positions, into out; the
// heads split over PyTorch's threads when the call is large enough to pay for it.
template <typename T>
void attend_heads(const at::Tensor& q, const T* K, const T* V, int64_t head_stride,
                  int64_t stride, int64_t L, at::Tensor& out) {
  const int64_t H = q.size(0), G = q.size(1), D = q.size(2);
  const float* Q = q.data_ptr<float>();
  float* O = out.data_ptr<float>();
  const float scale = 1.f / std::sqrt(static_cast<float>(D));
  auto heads = [&](int64_t h0, int64_t h1) {
    thread_local std::vector<float> scores;
    scores.resize(L);
    for (int64_t h = h0; h < h1; ++h)
      for (int64_t g = 0; g < G; ++g)
        attend_row(Q + (h * G + g) * D, K + h * head_stride, V + h * head_stride, stride, L, D,
                   scale, scores.data(), O + (h * G + g) * D);
  };
  if (H * G * L * D < PARALLEL_MACS)
    heads(0, H);
  else
    at::parallel_for(0, H, 1, heads);
}

// q [Hkv, G, D] float32: the G query heads of each K/V head; k, v [Hkv, capacity, D],
// float32 or bfloat16 (the last dimension contiguous, e.g. a layer's cache buffer); `pos` [1] int64: the query's
// position, which sees positions 0..pos. Returns [Hkv, G, D] float32.
at::Tensor decode_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                            const at::Tensor& pos) {
  TORCH_CHECK(q.dim() == 3 && k.dim() == 3 && v.dim() == 3,
              "decode_attention: q must be [kv_heads, rows, head_dim], k and v "
              "[kv_heads, capacity, head_dim]");
  TORCH_CHECK(q.scalar_type() == at::kFloat && k.scalar_type() == v.scalar_type() &&
                  (k.scalar_type() == at::kFloat || k.scalar_type() == at::kBFloat16),
              "decode_attention: q must be float32, k and v both float32 or both bfloat16");
  const int64_t H = k.size(0), G = q.size(1), D = q.size(2), capacity = k.size(1);
  TORCH_CHECK(q.size(0) == H && v.size(0) == H && k.size(2) == D && v.size(2) == D &&
                  v.size(1) == capacity,
              "decode_attention: q, k and v disagree in heads or head size");
  TORCH_CHECK(D % LANES == 0 && D <= MAX_D,
              "decode_attention: the head size must be a multiple of 8, at most 256 (got ", D, ")");
  TORCH_CHECK(k.stride(2) == 1 && v.stride(2) == 1 && k.stride(1) == v.stride(1) &&
                  k.stride(0) == v.stride(0),
              "decode_attention: k and v must have the same strides, the last one 1");
  TORCH_CHECK(pos.numel() == 1 && pos.scalar_type() == at::kLong,
              "decode_attention: pos must be one int64 position");
  const int64_t L = pos.item<int64_t>() + 1;
  TORCH_CHECK(L >= 1 && L <= capacity, "decode_attention: position ", L - 1,
              " is outside the cache of ", capacity);
  const at::Tensor qc = q.contiguous();
  at::Tensor out = at::empty({H, G, D}, q.options());
  if (k.scalar_type() == at::kFloat)
    attend_heads(qc, k.data_ptr<float>(), v.data_ptr<float>(), k.stride(0), k.stride(1), L, out);
  else
    attend_heads(qc, k.data_ptr<c10::BFloat16>(), v.data_ptr<c10::BFloat16>(), k.stride(0),
                 k.stride(1), L, out);
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(codecomplete_native, m) {
  m.def("decode_attention(Tensor q, Tensor k, Tensor v, Tensor pos) -> Tensor");
}

TORCH_LIBRARY_IMPL(codecomplete_native, CPU, m) { m.impl("decode_attention", &decode_attention); }
