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

// Keys and values of consecutive positions: `length` rows `stride` elements apart.
template <typename T>
struct Segment {
  const T* k;
  const T* v;
  int64_t stride;
  int64_t length;
};

// s[j] = q . k_j * scale for the segment's positions.
template <typename T>
void score(const float* q, const Segment<T>& seg, int64_t D, float scale, float* s) {
  const int64_t chunks = D / LANES, L = seg.length, stride = seg.stride;
  const T* k = seg.k;
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
}

// s[0..L) -> e^(s - max s), returning their sum: softmax's weights before dividing.
float softmax_weights(float* s, int64_t L) {
  float top = -INFINITY;
  for (int64_t i = 0; i < L; ++i) top = std::max(top, s[i]);
  const __m256 top_v = _mm256_set1_ps(top);
  __m256 total_v = _mm256_setzero_ps();
  int64_t j = 0;
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
  return total;
}

// a0 + a1 += sum_j p[j] v_j over the segment, two positions at a time into two sets of
// sums (independent chains).
template <typename T>
void accumulate(const float* p, const Segment<T>& seg, int64_t D, __m256* a0, __m256* a1) {
  const int64_t chunks = D / LANES, L = seg.length, stride = seg.stride;
  int64_t j = 0;
  for (; j + 2 <= L; j += 2) {
    const __m256 p0 = _mm256_set1_ps(p[j]), p1 = _mm256_set1_ps(p[j + 1]);
    const T* v0 = seg.v + j * stride;
    const T* v1 = v0 + stride;
    for (int64_t c = 0; c < chunks; ++c) {
      a0[c] = _mm256_fmadd_ps(p0, load8(v0 + c * LANES), a0[c]);
      a1[c] = _mm256_fmadd_ps(p1, load8(v1 + c * LANES), a1[c]);
    }
  }
  if (j < L) {
    const __m256 p0 = _mm256_set1_ps(p[j]);
    for (int64_t c = 0; c < chunks; ++c)
      a0[c] = _mm256_fmadd_ps(p0, load8(seg.v + j * stride + c * LANES), a0[c]);
  }
}

// One query row q [D] over the positions of two segments (the second may be empty):
// out [D] = softmax(q k^T * scale) v, one softmax over both. `s` holds both's scores.
template <typename T>
void attend_row(const float* q, const Segment<T>& first, const Segment<T>& second, int64_t D,
                float scale, float* s, float* out) {
  score(q, first, D, scale, s);
  score(q, second, D, scale, s + first.length);
  const float total = softmax_weights(s, first.length + second.length);
  const int64_t chunks = D / LANES;
  __m256 a0[MAX_D / LANES], a1[MAX_D / LANES];
  for (int64_t c = 0; c < chunks; ++c) a0[c] = a1[c] = _mm256_setzero_ps();
  accumulate(s, first, D, a0, a1);
  accumulate(s + first.length, second, D, a0, a1);
  const __m256 inverse = _mm256_set1_ps(1.f / total);
  for (int64_t c = 0; c < chunks; ++c)
    _mm256_storeu_ps(out + c * LANES, _mm256_mul_ps(_mm256_add_ps(a0[c], a1[c]), inverse));
}

// Where each query row looks: the shared segment's first `shared` positions of k, v
// [Hkv, capacity, D], and (with own_k) its batch row's own positions 0..limit of own_k,
// own_v [B, Hkv, room, D], the limit of query row r being limits[r % P]; without own_k
// the limit is in the shared segment (positions 0..limits[r % P]).
struct Layout {
  int64_t B, H, R, D;
  int64_t shared;                 // -1: the limit is in the shared segment
  const int64_t* limits;
  int64_t P;
};

template <typename T>
void attend_all(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                const at::Tensor* own_k, const at::Tensor* own_v, const Layout& lay,
                at::Tensor& out) {
  const int64_t B = lay.B, H = lay.H, R = lay.R, D = lay.D;
  const float* Q = q.data_ptr<float>();
  float* O = out.data_ptr<float>();
  const T* K = k.data_ptr<T>();
  const T* V = v.data_ptr<T>();
  const float scale = 1.f / std::sqrt(static_cast<float>(D));
  int64_t longest = 0;
  for (int64_t i = 0; i < lay.P; ++i) longest = std::max(longest, lay.limits[i] + 1);
  const int64_t span = (lay.shared < 0 ? 0 : lay.shared) + longest;
  auto units = [&](int64_t u0, int64_t u1) {
    thread_local std::vector<float> scores;
    scores.resize(span);
    for (int64_t u = u0; u < u1; ++u) {
      const int64_t b = u / H, h = u % H;
      for (int64_t r = 0; r < R; ++r) {
        const int64_t limit = lay.limits[r % lay.P] + 1;
        Segment<T> first{K + h * k.stride(0), V + h * k.stride(0), k.stride(1),
                         lay.shared < 0 ? limit : lay.shared};
        Segment<T> second{nullptr, nullptr, 0, 0};
        if (own_k != nullptr)
          second = {own_k->data_ptr<T>() + b * own_k->stride(0) + h * own_k->stride(1),
                    own_v->data_ptr<T>() + b * own_k->stride(0) + h * own_k->stride(1),
                    own_k->stride(2), limit};
        const int64_t row = (u * R + r) * D;
        attend_row(Q + row, first, second, D, scale, scores.data(), O + row);
      }
    }
  };
  if (B * H * R * span * D < PARALLEL_MACS)
    units(0, B * H);
  else
    at::parallel_for(0, B * H, 1, units);
}

void check_float_kv(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                    const char* op) {
  TORCH_CHECK(q.scalar_type() == at::kFloat && k.scalar_type() == v.scalar_type() &&
                  (k.scalar_type() == at::kFloat || k.scalar_type() == at::kBFloat16),
              op, ": q must be float32, k and v both float32 or both bfloat16");
  TORCH_CHECK(k.stride(-1) == 1 && v.stride(-1) == 1 && k.strides() == v.strides(),
              op, ": k and v must have the same strides, the last one 1");
  const int64_t D = q.size(-1);
  TORCH_CHECK(D % LANES == 0 && D <= MAX_D,
              op, ": the head size must be a multiple of 8, at most 256 (got ", D, ")");
}

const int64_t* checked_positions(const at::Tensor& pos, int64_t rows, int64_t lowest,
                                 int64_t capacity, const char* op) {
  TORCH_CHECK(pos.dim() == 1 && pos.scalar_type() == at::kLong && pos.is_contiguous() &&
                  pos.numel() >= 1 && rows % pos.numel() == 0,
              op, ": positions must be int64, one or one per query row of a head");
  const int64_t* p = pos.data_ptr<int64_t>();
  for (int64_t i = 0; i < pos.numel(); ++i)
    TORCH_CHECK(p[i] >= lowest && p[i] < capacity, op, ": position ", p[i],
                " is outside the cache of ", capacity);
  return p;
}

// q [Hkv, R, D] float32: the query rows of each K/V head (its G query heads, times the
// positions of a draft); k, v [Hkv, capacity, D], float32 or bfloat16 (the last dimension
// contiguous, e.g. a layer's cache buffer); `pos` [P] int64: query row r sees positions
// 0..pos[r % P]. Returns [Hkv, R, D] float32.
at::Tensor decode_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                            const at::Tensor& pos) {
  const char* op = "decode_attention";
  TORCH_CHECK(q.dim() == 3 && k.dim() == 3 && v.dim() == 3,
              op, ": q must be [kv_heads, rows, head_dim], k and v "
              "[kv_heads, capacity, head_dim]");
  const int64_t H = k.size(0), R = q.size(1), D = q.size(2);
  TORCH_CHECK(q.size(0) == H && v.sizes() == k.sizes() && k.size(2) == D,
              op, ": q, k and v disagree in heads or head size");
  check_float_kv(q, k, v, op);
  const int64_t* limits = checked_positions(pos, R, 0, k.size(1), op);
  const at::Tensor qc = q.contiguous();
  at::Tensor out = at::empty({H, R, D}, q.options());
  const Layout lay{1, H, R, D, -1, limits, pos.numel()};
  if (k.scalar_type() == at::kFloat)
    attend_all<float>(qc, k, v, nullptr, nullptr, lay, out);
  else
    attend_all<c10::BFloat16>(qc, k, v, nullptr, nullptr, lay, out);
  return out;
}

// Rows continuing one shared prefix (beams, scored names): q [B, Hkv, R, D] float32 sees
// the first `prefix` positions of k, v [Hkv, capacity, D] and its row's own positions
// 0..own[r % P] of own_k, own_v [B, Hkv, room, D] (same dtype as k). Returns
// [B, Hkv, R, D] float32.
at::Tensor branch_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                            const at::Tensor& prefix, const at::Tensor& own_k,
                            const at::Tensor& own_v, const at::Tensor& own) {
  const char* op = "branch_attention";
  TORCH_CHECK(q.dim() == 4 && k.dim() == 3 && own_k.dim() == 4,
              op, ": q must be [rows, kv_heads, queries, head_dim], k and v "
              "[kv_heads, capacity, head_dim], own_k and own_v [rows, kv_heads, room, head_dim]");
  const int64_t B = q.size(0), H = q.size(1), R = q.size(2), D = q.size(3);
  TORCH_CHECK(k.size(0) == H && v.sizes() == k.sizes() && k.size(2) == D &&
                  own_k.size(0) == B && own_k.size(1) == H && own_k.size(3) == D &&
                  own_v.sizes() == own_k.sizes() && own_k.scalar_type() == k.scalar_type(),
              op, ": q, k, v, own_k and own_v disagree in rows, heads, head size or dtype");
  check_float_kv(q, k, v, op);
  check_float_kv(q, own_k, own_v, op);
  TORCH_CHECK(prefix.numel() == 1 && prefix.scalar_type() == at::kLong,
              op, ": prefix must be one int64 length");
  const int64_t shared = prefix.item<int64_t>();
  TORCH_CHECK(shared >= 0 && shared <= k.size(1), op, ": a prefix of ", shared,
              " is outside the cache of ", k.size(1));
  const int64_t* limits = checked_positions(own, R, shared > 0 ? -1 : 0, own_k.size(2), op);
  const at::Tensor qc = q.contiguous();
  at::Tensor out = at::empty({B, H, R, D}, q.options());
  const Layout lay{B, H, R, D, shared, limits, own.numel()};
  if (k.scalar_type() == at::kFloat)
    attend_all<float>(qc, k, v, &own_k, &own_v, lay, out);
  else
    attend_all<c10::BFloat16>(qc, k, v, &own_k, &own_v, lay, out);
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(codecomplete_native, m) {
  m.def("decode_attention(Tensor q, Tensor k, Tensor v, Tensor pos) -> Tensor");
  m.def("branch_attention(Tensor q, Tensor k, Tensor v, Tensor prefix, Tensor own_k, "
        "Tensor own_v, Tensor own) -> Tensor");
}

TORCH_LIBRARY_IMPL(codecomplete_native, CPU, m) {
  m.impl("decode_attention", &decode_attention);
  m.impl("branch_attention", &branch_attention);
}
