// 8-bit products on a CPU for decoding (batch 1 and small batches), compiled on first use by kernels/int8_cpu.py.
// The definition is kernels/int8_torch.py: every sum is an exact int32 sum, so results equal the reference to the
// bit whatever the thread count, the order of the sums or the other rows of a batch; the fp32 multiplications at
// the end round in the reference's order. Written as plain loops that the compiler vectorizes for the machine it
// is built on (-O3 -march=native); threads are torch's own (at::parallel_for, torch.set_num_threads).
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace {

// int8 weights times int16 inputs: compilers turn this into one multiply-add of 16-bit pairs per 32 weights
// (vpdpwssd with AVX512-VNNI, vpmaddwd otherwise); int8 x int8 has no such instruction.
int32_t dot(const int8_t* __restrict w, const int16_t* __restrict x, int64_t n) {
  int32_t acc = 0;
  for (int64_t i = 0; i < n; ++i) acc += int16_t(w[i]) * x[i];
  return acc;
}

void check_weight(const at::Tensor& codes, const at::Tensor& scales, int64_t out) {
  TORCH_CHECK(codes.scalar_type() == at::kChar && codes.dim() == 2 && codes.is_contiguous(),
              "int8 products take contiguous int8 codes [2 dims]");
  TORCH_CHECK(scales.scalar_type() == at::kFloat && scales.numel() == out && scales.is_contiguous(),
              "int8 products take contiguous fp32 scales, one per output");
}

// Real-valued rows x [M, in] times output-major codes [out, in]: each row quantized to int8 with its own scale.
at::Tensor int8_linear(const at::Tensor& x, const at::Tensor& codes, const at::Tensor& scales) {
  TORCH_CHECK(x.scalar_type() == at::kFloat && x.dim() == 2 && x.is_contiguous(), "x must be contiguous fp32 [M, in]");
  const int64_t m_rows = x.size(0), in = x.size(1), out = codes.size(0);
  check_weight(codes, scales, out);
  TORCH_CHECK(codes.size(1) == in, "codes [out, in] must match x [M, in]");
  std::vector<int16_t> q(m_rows * in);
  std::vector<float> sx(m_rows);
  const float* xs = x.data_ptr<float>();
  for (int64_t m = 0; m < m_rows; ++m) {
    const float* row = xs + m * in;
    float amax = 0.f;
    for (int64_t i = 0; i < in; ++i) amax = std::max(amax, std::fabs(row[i]));
    const float s = amax / 127.f;
    sx[m] = s;
    const float div = s > 0.f ? s : 1.f;
    for (int64_t i = 0; i < in; ++i) {
      const float r = std::nearbyint(row[i] / div);  // half to even, as torch.round
      q[m * in + i] = int16_t(std::min(127.f, std::max(-127.f, r)));
    }
  }
  at::Tensor y = at::empty({m_rows, out}, x.options());
  float* ys = y.data_ptr<float>();
  const int8_t* w = codes.data_ptr<int8_t>();
  const float* so = scales.data_ptr<float>();
  at::parallel_for(0, out, 16, [&](int64_t begin, int64_t end) {
    for (int64_t o = begin; o < end; ++o) {
      const int8_t* row = w + o * in;
      for (int64_t m = 0; m < m_rows; ++m) {
        const int32_t acc = dot(row, q.data() + m * in, in);
        ys[m * out + o] = float(acc) * sx[m] * so[o];
      }
    }
  });
  return y;
}

// Spike counts [M, in] (whole numbers in fp32) times input-major codes_t [in, out]: only the weight rows of the
// inputs that are nonzero in some row of the batch are read, each once for the whole batch.
at::Tensor int8_counts_linear(const at::Tensor& counts, const at::Tensor& codes_t, const at::Tensor& scales) {
  TORCH_CHECK(counts.scalar_type() == at::kFloat && counts.dim() == 2 && counts.is_contiguous(),
              "counts must be contiguous fp32 [M, in]");
  const int64_t m_rows = counts.size(0), in = counts.size(1), out = codes_t.size(1);
  check_weight(codes_t, scales, out);
  TORCH_CHECK(codes_t.size(0) == in, "codes_t [in, out] must match counts [M, in]");
  // The batch's active inputs (the union) and each row's count for them, gathered once.
  const float* cs = counts.data_ptr<float>();
  std::vector<int64_t> active;
  std::vector<int32_t> active_counts;  // [n_active, M]
  for (int64_t i = 0; i < in; ++i) {
    bool any = false;
    for (int64_t m = 0; m < m_rows; ++m) any |= cs[m * in + i] != 0.f;
    if (!any) continue;
    active.push_back(i);
    for (int64_t m = 0; m < m_rows; ++m) {
      const float c = cs[m * in + i];
      TORCH_CHECK(c == std::nearbyint(c) && std::fabs(c) <= 65535.f,
                  "int8 counts products take whole-number inputs (spike counts)");
      active_counts.push_back(int32_t(c));
    }
  }
  at::Tensor y = at::empty({m_rows, out}, counts.options());
  float* ys = y.data_ptr<float>();
  const int8_t* w = codes_t.data_ptr<int8_t>();
  const float* so = scales.data_ptr<float>();
  const int64_t n_active = int64_t(active.size());
  // Each thread owns one contiguous slice of the outputs and streams its part of every active row: long
  // contiguous reads, which the hardware prefetches (short strided slices measured several times slower).
  const int64_t threads = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), (out + 63) / 64));
  const int64_t slice = ((out + threads - 1) / threads + 63) / 64 * 64;
  at::parallel_for(0, threads, 1, [&](int64_t begin, int64_t end) {
    for (int64_t part = begin; part < end; ++part) {
      const int64_t o0 = part * slice, width = std::min(slice, out - o0);
      if (width <= 0) continue;
      std::vector<int32_t> acc(m_rows * width, 0);
      for (int64_t a = 0; a < n_active; ++a) {
        const int8_t* __restrict row = w + active[a] * out + o0;
        for (int64_t m = 0; m < m_rows; ++m) {
          const int32_t c = active_counts[a * m_rows + m];
          if (c == 0) continue;
          int32_t* __restrict dst = acc.data() + m * width;
          for (int64_t j = 0; j < width; ++j) dst[j] += c * int32_t(row[j]);
        }
      }
      for (int64_t m = 0; m < m_rows; ++m)
        for (int64_t j = 0; j < width; ++j) ys[m * out + o0 + j] = float(acc[m * width + j]) * so[o0 + j];
    }
  });
  return y;
}

}  // namespace

TORCH_LIBRARY(spikegpt_cpu, m) {
  m.def("int8_linear(Tensor x, Tensor codes, Tensor scales) -> Tensor", &int8_linear);
  m.def("int8_counts_linear(Tensor counts, Tensor codes_t, Tensor scales) -> Tensor", &int8_counts_linear);
}
