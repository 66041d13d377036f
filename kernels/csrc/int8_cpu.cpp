// 8-bit products on a CPU for decoding (batch 1 and small batches), compiled on first use by kernels/int8_cpu.py.
// The definition is kernels/int8_torch.py: each row of the input becomes whole numbers (spike counts as they are,
// real values quantized per row), the products with the int8 codes are summed exactly in int32, and the sum is
// scaled in fp32 in the reference's order. Exact sums make the results equal to the reference to the bit whatever
// the thread count, the order of the sums, the other rows of a batch or the kernel (dense or event-driven).
//
// Both kernels multiply pairs of 16-bit integers into 32-bit sums, one instruction per 32 pairs with AVX-512
// VNNI (vpdpwssd), vpmaddwd + vpaddd with AVX-512BW or AVX2, and plain loops elsewhere; the build is for the CPU
// it runs on (-march=native), so the preprocessor picks the widest form it has.
//   dense (int8_linear): codes output-major [out, in]; each output is a dot product of its contiguous codes row
//     with the integer row, eight independent sums at a time (a tile of outputs x rows) to hide the latency.
//   event-driven (int8_sparse_linear): codes input-major [in, out]; only the rows of the inputs that are nonzero
//     in some row of the batch are read, two at a time: the codes of inputs a and b for the same outputs are
//     interleaved into 16-bit pairs and multiplied by the pair of counts (c_a, c_b), so one instruction does the
//     work of two rows. Each thread owns a contiguous slice of the outputs and streams its part of every active
//     row, asking for the rows of the pairs ahead before it needs them (scattered rows defeat the hardware
//     prefetcher).
// Threads are torch's own (at::parallel_for, torch.set_num_threads).
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <optional>
#include <vector>

#if defined(__AVX512BW__) || defined(__AVX2__)
#include <immintrin.h>
#endif

namespace {

constexpr float kQmax = 127.f;
// A row's sum of |value| times the largest code must stay below 2^31 for the int32 sums to be exact.
constexpr int64_t kMaxRowMagnitude = (int64_t(1) << 31) / 127 - 1;

// ---- vectors of 16-bit pairs --------------------------------------------------------------------------------------
// kLanes 16-bit values per vector (kLanes / 2 int32 sums). load_codes sign-extends kLanes int8 codes.
#if defined(__AVX512BW__)
constexpr int64_t kLanes = 32;
using Vec = __m512i;
inline Vec zero() { return _mm512_setzero_si512(); }
inline Vec load_codes(const int8_t* p) { return _mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i*)p)); }
inline Vec load_values(const int16_t* p) { return _mm512_loadu_si512(p); }
inline Vec broadcast(int32_t pair) { return _mm512_set1_epi32(pair); }
inline Vec load_sums(const int32_t* p) { return _mm512_loadu_si512(p); }
inline void store_sums(int32_t* p, Vec v) { _mm512_storeu_si512(p, v); }
inline Vec pairs_low(Vec a, Vec b) { return _mm512_unpacklo_epi16(a, b); }
inline Vec pairs_high(Vec a, Vec b) { return _mm512_unpackhi_epi16(a, b); }
inline int32_t total(Vec v) { return _mm512_reduce_add_epi32(v); }
#if defined(__AVX512VNNI__)
inline Vec madd(Vec acc, Vec a, Vec b) { return _mm512_dpwssd_epi32(acc, a, b); }
#else
inline Vec madd(Vec acc, Vec a, Vec b) { return _mm512_add_epi32(acc, _mm512_madd_epi16(a, b)); }
#endif
#elif defined(__AVX2__)
constexpr int64_t kLanes = 16;
using Vec = __m256i;
inline Vec zero() { return _mm256_setzero_si256(); }
inline Vec load_codes(const int8_t* p) { return _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i*)p)); }
inline Vec load_values(const int16_t* p) { return _mm256_loadu_si256((const __m256i*)p); }
inline Vec broadcast(int32_t pair) { return _mm256_set1_epi32(pair); }
inline Vec load_sums(const int32_t* p) { return _mm256_loadu_si256((const __m256i*)p); }
inline void store_sums(int32_t* p, Vec v) { _mm256_storeu_si256((__m256i*)p, v); }
inline Vec pairs_low(Vec a, Vec b) { return _mm256_unpacklo_epi16(a, b); }
inline Vec pairs_high(Vec a, Vec b) { return _mm256_unpackhi_epi16(a, b); }
inline int32_t total(Vec v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
  return _mm_cvtsi128_si32(s);
}
#if defined(__AVXVNNI__)
inline Vec madd(Vec acc, Vec a, Vec b) { return _mm256_dpwssd_avx_epi32(acc, a, b); }
#else
inline Vec madd(Vec acc, Vec a, Vec b) { return _mm256_add_epi32(acc, _mm256_madd_epi16(a, b)); }
#endif
#else
// No vector instructions known here: one "vector" is one pair, which the loops below handle like any other.
constexpr int64_t kLanes = 2;
struct Vec {
  int32_t lo, hi;  // two 16-bit values (codes or counts), or one int32 sum in lo
};
inline Vec zero() { return {0, 0}; }
inline Vec load_codes(const int8_t* p) { return {p[0], p[1]}; }
inline Vec load_values(const int16_t* p) { return {p[0], p[1]}; }
inline Vec broadcast(int32_t pair) { return {int16_t(pair & 0xffff), int16_t(uint32_t(pair) >> 16)}; }
inline Vec load_sums(const int32_t* p) { return {p[0], 0}; }
inline void store_sums(int32_t* p, Vec v) { p[0] = v.lo; }
inline Vec pairs_low(Vec a, Vec b) { return {a.lo, b.lo}; }
inline Vec pairs_high(Vec a, Vec b) { return {a.hi, b.hi}; }
inline int32_t total(Vec v) { return v.lo; }
inline Vec madd(Vec acc, Vec a, Vec b) { return {acc.lo + a.lo * b.lo + a.hi * b.hi, 0}; }
#endif
// The int32 sums of one vector of pairs: kLanes / 2 (a vector's worth of outputs in the event-driven kernel is two
// vectors of sums: pairs_low's and pairs_high's).
constexpr int64_t kSums = kLanes / 2 > 0 ? kLanes / 2 : 1;

// pairs_low/pairs_high interleave within 128-bit lanes (8 16-bit values): the low vector holds values 0-3 of each
// lane, the high one values 4-7. Position p of a block of kLanes sums (low vector first) holds this output.
inline int64_t output_of_position(int64_t p) {
#if defined(__AVX512BW__) || defined(__AVX2__)
  const int64_t half = p / kSums, lane = p % kSums;
  return 8 * (lane / 4) + 4 * half + lane % 4;
#else
  return p / kSums;  // the scalar "vector" is one pair: a block is two outputs, the low sum's and the high one's
#endif
}

struct PositionTable {
  int64_t output[kLanes];
  PositionTable() {
    for (int64_t p = 0; p < kLanes; ++p) output[p] = output_of_position(p);
  }
  int64_t operator[](int64_t p) const { return output[p]; }
};
const PositionTable kOutputOfPosition;

// ---- the integer rows ---------------------------------------------------------------------------------------------

// Each row of the input as whole numbers, zero-padded to a multiple of kLanes, and its scale (empty for counts).
struct IntegerRows {
  int64_t rows = 0, width = 0, stride = 0;
  std::vector<int16_t> values;  // [rows, stride]
  std::vector<float> scale;     // [rows], real-valued rows only
  const int16_t* row(int64_t m) const { return values.data() + m * stride; }
};

// Real values: sx = max|x| / 127, q = round(x / sx) half to even, as torch.round; a row that is all zeros gets
// scale 0, a row with a value that is not finite gets scale NaN (its outputs are NaN) and codes 0.
IntegerRows quantized_rows(const float* x, int64_t rows, int64_t width) {
  IntegerRows r{rows, width, (width + kLanes - 1) / kLanes * kLanes, {}, {}};
  r.values.assign(rows * r.stride, 0);
  r.scale.resize(rows);
  for (int64_t m = 0; m < rows; ++m) {
    const float* row = x + m * width;
    float amax = 0.f;
    bool finite = true;
    for (int64_t i = 0; i < width; ++i) {
      finite &= std::isfinite(row[i]);
      amax = std::max(amax, std::fabs(row[i]));
    }
    if (!finite) {
      r.scale[m] = std::numeric_limits<float>::quiet_NaN();
      continue;
    }
    const float s = amax / kQmax;
    r.scale[m] = s;
    const float div = s > 0.f ? s : 1.f;
    int16_t* q = r.values.data() + m * r.stride;
    for (int64_t i = 0; i < width; ++i)  // (the clamp only matters where s underflowed to a subnormal)
      q[i] = int16_t(std::min(kQmax, std::max(-kQmax, std::nearbyint(row[i] / div))));
  }
  return r;
}

// Spike counts: whole numbers, used as they are (checked: whole, and small enough for exact int32 sums). The
// check is a pass of its own, without a branch per value.
IntegerRows count_rows(const float* x, int64_t rows, int64_t width) {
  IntegerRows r{rows, width, (width + kLanes - 1) / kLanes * kLanes, {}, {}};
  r.values.assign(rows * r.stride, 0);
  for (int64_t m = 0; m < rows; ++m) {
    const float* row = x + m * width;
    bool whole = true;
    double magnitude = 0.0;  // exact in double (a float's sum of whole numbers rounds past 2^24, below the limit)
    for (int64_t i = 0; i < width; ++i) {
      whole &= (row[i] == std::nearbyint(row[i])) & (std::fabs(row[i]) <= 32767.f);
      magnitude += std::fabs(row[i]);
    }
    TORCH_CHECK(whole, "int8 counts products take whole-number inputs (spike counts) of at most 32767");
    TORCH_CHECK(magnitude <= double(kMaxRowMagnitude), "int8 counts products: a row's counts add up to more than ",
                kMaxRowMagnitude, ", beyond exact int32 sums");
    int16_t* q = r.values.data() + m * r.stride;
    for (int64_t i = 0; i < width; ++i) q[i] = int16_t(row[i]);
  }
  return r;
}

// x [..., in]: every leading dimension is a row (a traced step then needs no reshape around the call).
IntegerRows integer_rows(const at::Tensor& x, bool counts) {
  TORCH_CHECK(x.scalar_type() == at::kFloat && x.dim() >= 1 && x.is_contiguous(),
              "x must be contiguous fp32 [..., in]");
  const int64_t width = x.size(-1), rows = width > 0 ? x.numel() / width : 0;
  const float* xs = x.data_ptr<float>();
  return counts ? count_rows(xs, rows, width) : quantized_rows(xs, rows, width);
}

// The output [..., out] of x [..., in].
at::Tensor output_for(const at::Tensor& x, int64_t out) {
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  shape.back() = out;
  return at::empty(shape, x.options());
}

// y = float(sum) · sx · scale (real-valued rows) or float(sum) · scale (counts): the reference's order.
inline float scaled(int32_t sum, const IntegerRows& r, int64_t m, float scale) {
  return r.scale.empty() ? float(sum) * scale : float(sum) * r.scale[m] * scale;
}

void check_weight(const at::Tensor& codes, const at::Tensor& scales, int64_t out) {
  TORCH_CHECK(codes.scalar_type() == at::kChar && codes.dim() == 2 && codes.is_contiguous(),
              "int8 products take contiguous int8 codes [2 dims]");
  TORCH_CHECK(scales.scalar_type() == at::kFloat && scales.numel() == out && scales.is_contiguous(),
              "int8 products take contiguous fp32 scales, one per output");
}

// ---- dense: codes output-major ------------------------------------------------------------------------------------

// Sums of NO consecutive outputs (codes rows) times NR integer rows: NO x NR independent sums, so that the
// multiply-adds' latency overlaps. The codes row's last partial vector is copied out zero-padded (the integer
// rows are padded already): no read past the end of the weight. While a tile is summed, the next tile's codes are
// requested a cache line at a time (into every cache level): with the hardware prefetcher alone one thread read
// 9.3 GB/s from main memory, with this 12 GB/s (fp32 F.linear: 14 GB/s, fbgemm's int8: 11.7 GB/s; 2-core Xeon VM).
// Further ahead measured no better, and a non-temporal hint (0) slower than none.

template <int NO, int NR>
void dense_tile(const int8_t* codes, int64_t in, const IntegerRows& r, int64_t m0, int32_t* sums /* [NO][NR] */) {
  Vec acc[NO][NR];
  for (int o = 0; o < NO; ++o)
    for (int j = 0; j < NR; ++j) acc[o][j] = zero();
  // w[o]: output o's codes for the inputs from i on
  auto step = [&](const int8_t* const* w, int64_t i) {
    for (int o = 0; o < NO; ++o) {
      const Vec c = load_codes(w[o]);
      for (int j = 0; j < NR; ++j) acc[o][j] = madd(acc[o][j], c, load_values(r.row(m0 + j) + i));
    }
  };
  const int64_t whole = in / kLanes * kLanes;
  const int8_t* w[NO];
  const int64_t next_tile = NO * in;
  for (int64_t i = 0; i < whole; i += kLanes) {
    for (int o = 0; o < NO; ++o) w[o] = codes + o * in + i;
    if (i % 64 == 0)  // (a prefetch past the end of the weight is harmless: it never faults)
      for (int o = 0; o < NO; ++o) __builtin_prefetch(w[o] + next_tile, 0, 3);
    step(w, i);
  }
  if (whole < in) {
    int8_t tail[NO][kLanes] = {};
    for (int o = 0; o < NO; ++o) {
      std::memcpy(tail[o], codes + o * in + whole, in - whole);
      w[o] = tail[o];
    }
    step(w, whole);
  }
  for (int o = 0; o < NO; ++o)
    for (int j = 0; j < NR; ++j) sums[o * NR + j] = total(acc[o][j]);
}

template <int NO, int NR>
void dense_outputs(const int8_t* codes, int64_t in, const IntegerRows& r, int64_t m0, int64_t o0, int64_t o1,
                   const float* scales, float* y, int64_t out) {
  int32_t sums[NO * NR];
  int64_t o = o0;
  for (; o + NO <= o1; o += NO) {
    dense_tile<NO, NR>(codes + o * in, in, r, m0, sums);
    for (int k = 0; k < NO; ++k)
      for (int j = 0; j < NR; ++j) y[(m0 + j) * out + o + k] = scaled(sums[k * NR + j], r, m0 + j, scales[o + k]);
  }
  for (; o < o1; ++o) {
    dense_tile<1, NR>(codes + o * in, in, r, m0, sums);
    for (int j = 0; j < NR; ++j) y[(m0 + j) * out + o] = scaled(sums[j], r, m0 + j, scales[o]);
  }
}

void dense(const IntegerRows& r, const at::Tensor& codes, const at::Tensor& scales, float* y) {
  const int64_t in = r.width, out = codes.size(0);
  const int8_t* w = codes.data_ptr<int8_t>();
  const float* so = scales.data_ptr<float>();
  // each thread a contiguous range of outputs (of codes rows), every row of the batch against it
  at::parallel_for(0, out, 64, [&](int64_t begin, int64_t end) {
    int64_t m = 0;
    for (; m + 4 <= r.rows; m += 4) dense_outputs<2, 4>(w, in, r, m, begin, end, so, y, out);
    for (; m < r.rows; ++m) dense_outputs<4, 1>(w, in, r, m, begin, end, so, y, out);
  });
}

// ---- event-driven: codes input-major ------------------------------------------------------------------------------

// The batch's active inputs (nonzero in some row), in pairs, and each row's pair of values for each pair of inputs
// packed as one int32 (a in the low 16 bits, b in the high ones); an odd last input is paired with itself at value 0.
struct ActivePairs {
  std::vector<int64_t> a, b;
  std::vector<int32_t> values;  // [pairs, rows]
};

// The batch's active inputs (nonzero in some row), in order: a row at a time, so that the compiler vectorizes it.
std::vector<int64_t> active_inputs(const IntegerRows& r) {
  std::vector<uint8_t> any(r.width, 0);
  for (int64_t m = 0; m < r.rows; ++m) {
    const int16_t* row = r.row(m);
    for (int64_t i = 0; i < r.width; ++i) any[i] |= row[i] != 0;
  }
  std::vector<int64_t> active;
  active.reserve(r.width);
  for (int64_t i = 0; i < r.width; ++i)
    if (any[i]) active.push_back(i);
  return active;
}

ActivePairs active_pairs(const IntegerRows& r, const std::vector<int64_t>& active) {
  ActivePairs p;
  p.a.reserve(active.size() / 2 + 1);
  p.b.reserve(active.size() / 2 + 1);
  p.values.reserve((active.size() / 2 + 1) * r.rows);
  for (size_t k = 0; k < active.size(); k += 2) {
    const int64_t a = active[k];
    const bool alone = k + 1 == active.size();
    const int64_t b = alone ? a : active[k + 1];
    p.a.push_back(a);
    p.b.push_back(b);
    for (int64_t m = 0; m < r.rows; ++m) {
      const uint16_t va = uint16_t(r.row(m)[a]), vb = alone ? 0 : uint16_t(r.row(m)[b]);
      p.values.push_back(int32_t(uint32_t(va) | uint32_t(vb) << 16));
    }
  }
  return p;
}

// The weight rows of the pair of inputs kPrefetchAhead pairs on are requested from memory while this one is summed:
// the active rows are scattered, so the hardware prefetcher cannot guess them, and waiting for each in turn
// measured at half the bandwidth of the dense kernel.
constexpr size_t kPrefetchAhead = 2;

inline void prefetch_rows(const ActivePairs& p, size_t k, const int8_t* codes_t, int64_t out, int64_t o0,
                          int64_t width) {
  if (k >= p.a.size()) return;
  const int8_t* wa = codes_t + p.a[k] * out + o0;
  const int8_t* wb = codes_t + p.b[k] * out + o0;
  for (int64_t j = 0; j < width; j += 64) {
    __builtin_prefetch(wa + j, 0, 3);
    __builtin_prefetch(wb + j, 0, 3);
  }
}

// Outputs [o0, o0 + width) of every row: sums[m][block] in the pairs' permuted order (output_of_position).
void event_slice(const ActivePairs& p, const int8_t* codes_t, int64_t out, int64_t o0, int64_t width, int64_t rows,
                 std::vector<int32_t>& sums) {
  const int64_t blocks = (width + kLanes - 1) / kLanes, padded = blocks * kLanes;
  sums.assign(rows * padded, 0);
  const int64_t whole = width / kLanes;
  int8_t tail_a[kLanes], tail_b[kLanes];
  for (size_t k = 0; k < kPrefetchAhead; ++k) prefetch_rows(p, k, codes_t, out, o0, width);
  for (size_t k = 0; k < p.a.size(); ++k) {
    prefetch_rows(p, k + kPrefetchAhead, codes_t, out, o0, width);
    const int8_t* wa = codes_t + p.a[k] * out + o0;
    const int8_t* wb = codes_t + p.b[k] * out + o0;
    const int32_t* values = p.values.data() + k * rows;
    auto block = [&](const int8_t* ca, const int8_t* cb, int64_t blk) {
      const Vec va = load_codes(ca), vb = load_codes(cb);
      const Vec low = pairs_low(va, vb), high = pairs_high(va, vb);
      for (int64_t m = 0; m < rows; ++m) {
        if (values[m] == 0) continue;  // neither input active in this row
        const Vec c = broadcast(values[m]);
        int32_t* s = sums.data() + m * padded + blk * kLanes;
        store_sums(s, madd(load_sums(s), low, c));
        store_sums(s + kSums, madd(load_sums(s + kSums), high, c));
      }
    };
    for (int64_t blk = 0; blk < whole; ++blk) block(wa + blk * kLanes, wb + blk * kLanes, blk);
    if (whole < blocks) {
      std::memset(tail_a, 0, sizeof tail_a);
      std::memset(tail_b, 0, sizeof tail_b);
      std::memcpy(tail_a, wa + whole * kLanes, width - whole * kLanes);
      std::memcpy(tail_b, wb + whole * kLanes, width - whole * kLanes);
      block(tail_a, tail_b, whole);
    }
  }
}

void event_driven(const IntegerRows& r, const ActivePairs& p, const at::Tensor& codes_t, const at::Tensor& scales,
                  float* y) {
  const int64_t out = codes_t.size(1), rows = r.rows;
  const int8_t* w = codes_t.data_ptr<int8_t>();
  const float* so = scales.data_ptr<float>();
  // Each thread one contiguous slice of the outputs, a multiple of 64 (short strided slices measured slower).
  const int64_t threads = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), (out + 63) / 64));
  const int64_t slice = ((out + threads - 1) / threads + 63) / 64 * 64;
  at::parallel_for(0, threads, 1, [&](int64_t begin, int64_t end) {
    std::vector<int32_t> sums;
    for (int64_t part = begin; part < end; ++part) {
      const int64_t o0 = part * slice, width = std::min(slice, out - o0);
      if (width <= 0) continue;
      event_slice(p, w, out, o0, width, rows, sums);
      const int64_t padded = (width + kLanes - 1) / kLanes * kLanes;
      for (int64_t m = 0; m < rows; ++m)
        for (int64_t block = 0; block < padded; block += kLanes)
          for (int64_t pos = 0; pos < kLanes; ++pos) {
            const int64_t o = block + kOutputOfPosition[pos];
            if (o < width) y[m * out + o0 + o] = scaled(sums[m * padded + block + pos], r, m, so[o0 + o]);
          }
    }
  });
}

// ---- the operators ------------------------------------------------------------------------------------------------

// x [..., in] times output-major codes [out, in]: every weight read.
at::Tensor int8_linear(const at::Tensor& x, const at::Tensor& codes, const at::Tensor& scales, bool counts) {
  const IntegerRows r = integer_rows(x, counts);
  check_weight(codes, scales, codes.size(0));
  TORCH_CHECK(codes.size(1) == r.width, "codes [out, in] must match x [M, in]");
  at::Tensor y = output_for(x, codes.size(0));
  dense(r, codes, scales, y.data_ptr<float>());
  return y;
}

// x [..., in] times input-major codes_t [in, out], reading only the rows of the batch's active inputs; when the
// fraction of active inputs exceeds max_density and the output-major codes are given, the dense kernel runs
// instead (the same bits: both sum exactly).
at::Tensor int8_sparse_linear(const at::Tensor& x, const at::Tensor& codes_t, const at::Tensor& scales, bool counts,
                              double max_density, const std::optional<at::Tensor>& codes) {
  const IntegerRows r = integer_rows(x, counts);
  check_weight(codes_t, scales, codes_t.size(1));
  TORCH_CHECK(codes_t.size(0) == r.width, "codes_t [in, out] must match x [M, in]");
  if (codes.has_value()) {  // checked at every call, whichever kernel this one runs
    check_weight(*codes, scales, codes_t.size(1));
    TORCH_CHECK(codes->size(0) == codes_t.size(1) && codes->size(1) == r.width,
                "codes [out, in] must be codes_t [in, out] transposed");
  }
  at::Tensor y = output_for(x, codes_t.size(1));
  const std::vector<int64_t> active = active_inputs(r);
  if (codes.has_value() && double(active.size()) > max_density * double(r.width)) {
    dense(r, *codes, scales, y.data_ptr<float>());
  } else {  // (the pairs are made only here: above the crossover they would be thrown away)
    event_driven(r, active_pairs(r, active), codes_t, scales, y.data_ptr<float>());
  }
  return y;
}

// How many of torch's threads a parallel loop of these kernels runs on (at most the loop's length), for a test: the
// loop is OpenMP inside ATen's headers, so a build without -fopenmp would run every kernel on one thread, silently.
int64_t parallel_threads(int64_t length) {
  std::vector<char> seen(at::get_num_threads(), 0);
  at::parallel_for(0, length, 1, [&](int64_t, int64_t) { seen[at::get_thread_num()] = 1; });
  return std::count(seen.begin(), seen.end(), 1);
}

}  // namespace

// Defined, then implemented for CPU tensors: a traced step records each call as one node.
TORCH_LIBRARY(spikegpt_cpu, m) {
  m.def("int8_linear(Tensor x, Tensor codes, Tensor scales, bool counts) -> Tensor");
  m.def("int8_sparse_linear(Tensor x, Tensor codes_t, Tensor scales, bool counts, float max_density, Tensor? codes)"
        " -> Tensor");
  m.def("parallel_threads(int length) -> int", &parallel_threads);
}

TORCH_LIBRARY_IMPL(spikegpt_cpu, CPU, m) {
  m.impl("int8_linear", &int8_linear);
  m.impl("int8_sparse_linear", &int8_sparse_linear);
}
