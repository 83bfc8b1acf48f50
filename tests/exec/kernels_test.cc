#include "exec/cpu/kernels.h"

#include <gtest/gtest.h>

#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "core/dtype.h"

namespace ponder::exec::cpu {
namespace {

// A weight tensor with its own storage, filled with values exactly representable in dtype.
struct OwnedTensor {
  std::vector<float> f32;
  std::vector<uint16_t> u16;
  TensorView view;
};

OwnedTensor RandomTensor(DType dtype, std::vector<int64_t> shape, uint32_t seed) {
  OwnedTensor t;
  t.view.dtype = dtype;
  t.view.shape = std::move(shape);
  const int64_t n = t.view.numel();
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  if (dtype == DType::kF32) {
    t.f32.resize(n);
    for (float& v : t.f32) v = dist(rng);
    t.view.data = t.f32.data();
  } else {
    t.u16.resize(n);
    for (uint16_t& v : t.u16)
      v = dtype == DType::kBF16 ? F32ToBf16(dist(rng)) : F32ToF16(dist(rng));
    t.view.data = t.u16.data();
  }
  return t;
}

std::vector<float> RandomVector(int64_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

// Relative L2 distance over the [n, cols] blocks of a and b with row stride ld.
double RelativeL2(const float* a, const float* b, int64_t n, int64_t cols, int64_t ld) {
  double num = 0.0, den = 0.0;
  for (int64_t j = 0; j < n; ++j) {
    for (int64_t c = 0; c < cols; ++c) {
      const double d = static_cast<double>(a[j * ld + c]) - b[j * ld + c];
      num += d * d;
      den += static_cast<double>(b[j * ld + c]) * b[j * ld + c];
    }
  }
  return den == 0.0 ? std::sqrt(num) : std::sqrt(num / den);
}

constexpr float kSentinel = 12345.0f;
constexpr double kTolerance = 1e-5;

// Runs Linear on strided x/y and checks it against LinearReference, and that the padding
// columns of y were not written.
void CheckLinear(DType dtype, int64_t n, int64_t in, int64_t out, ThreadPool* pool, bool strided) {
  SCOPED_TRACE("dtype=" + std::string(DTypeName(dtype)) + " n=" + std::to_string(n) +
               " in=" + std::to_string(in) + " out=" + std::to_string(out) +
               (strided ? " strided" : " dense") + (pool ? " pool" : " inline"));
  const OwnedTensor w =
      RandomTensor(dtype, {out, in}, static_cast<uint32_t>(n * 7 + in * 131 + out));
  const int64_t ldx = strided ? in + 3 : in;
  const int64_t ldy = strided ? out + 5 : out;
  const std::vector<float> x = RandomVector(n * ldx, static_cast<uint32_t>(in + out));
  std::vector<float> y(n * ldy, kSentinel);
  std::vector<float> ref(n * ldy, kSentinel);
  Linear(x.data(), n, ldx, w.view, y.data(), ldy, pool);
  LinearReference(x.data(), n, ldx, w.view, ref.data(), ldy);
  EXPECT_LE(RelativeL2(y.data(), ref.data(), n, out, ldy), kTolerance);
  for (int64_t j = 0; j < n; ++j) {
    for (int64_t c = out; c < ldy; ++c) ASSERT_EQ(y[j * ldy + c], kSentinel) << j << "," << c;
  }
}

class LinearTest : public ::testing::TestWithParam<std::tuple<DType, bool>> {
 protected:
  ThreadPool* pool() { return std::get<1>(GetParam()) ? &pool_ : nullptr; }
  DType dtype() const { return std::get<0>(GetParam()); }

 private:
  ThreadPool pool_{2};
};

TEST_P(LinearTest, MatchesReferenceOnShapeGrid) {
  for (int64_t n : {1, 2, 3, 5, 8, 17, 64, 65}) {
    for (int64_t in : {1, 15, 16, 33, 257}) {
      for (int64_t out : {1, 3, 7, 64, 130}) {
        CheckLinear(dtype(), n, in, out, pool(), /*strided=*/true);
      }
    }
  }
}

TEST_P(LinearTest, MatchesReferenceDense) {
  for (int64_t n : {1, 4, 9}) CheckLinear(dtype(), n, 128, 384, pool(), /*strided=*/false);
}

// Large enough to be split across threads and, for the largest batches, to span several
// L2 row blocks or GEMM weight tiles.
TEST_P(LinearTest, MatchesReferenceAboveParallelThreshold) {
  for (int64_t n : {1, 2, 6, 8, 9, 33, 70}) CheckLinear(dtype(), n, 1100, 301, pool(), true);
}

TEST_P(LinearTest, LinearRowsMatchesSliceOfFullProduct) {
  const int64_t n = 3, in = 33, out = 64, begin = 5, end = 60;
  const OwnedTensor w = RandomTensor(dtype(), {out, in}, 7);
  const std::vector<float> x = RandomVector(n * in, 8);
  std::vector<float> full(n * out);
  LinearReference(x.data(), n, in, w.view, full.data(), out);
  for (int64_t batch : {n, int64_t{1}}) {
    const int64_t ldy = end - begin + 2;
    std::vector<float> y(batch * ldy, kSentinel);
    LinearRows(x.data(), batch, in, w.view, begin, end, y.data(), ldy, pool());
    for (int64_t j = 0; j < batch; ++j) {
      for (int64_t r = begin; r < end; ++r) {
        EXPECT_NEAR(y[j * ldy + r - begin], full[j * out + r],
                    1e-5 * (1.0 + std::fabs(full[j * out + r])));
      }
      EXPECT_EQ(y[j * ldy + end - begin], kSentinel);
    }
  }
}

TEST_P(LinearTest, LinearRowsAboveParallelThreshold) {
  const int64_t in = 1024, out = 400, begin = 37, end = 399;
  const OwnedTensor w = RandomTensor(dtype(), {out, in}, 9);
  for (int64_t n : {1, 12, 80}) {
    const std::vector<float> x = RandomVector(n * in, 10);
    std::vector<float> full(n * out);
    LinearReference(x.data(), n, in, w.view, full.data(), out);
    std::vector<float> y(n * out, kSentinel);
    // Written into the matching columns of a full-width output.
    LinearRows(x.data(), n, in, w.view, begin, end, y.data() + begin, out, pool());
    for (int64_t j = 0; j < n; ++j) {
      for (int64_t r = 0; r < out; ++r) {
        if (r < begin || r >= end) {
          ASSERT_EQ(y[j * out + r], kSentinel);
        }
      }
    }
    EXPECT_LE(RelativeL2(y.data() + begin, full.data() + begin, n, end - begin, out), kTolerance)
        << "n=" << n;
  }
}

INSTANTIATE_TEST_SUITE_P(AllDtypes, LinearTest,
                         ::testing::Combine(::testing::Values(DType::kF32, DType::kBF16,
                                                              DType::kF16),
                                            ::testing::Bool()),
                         [](const ::testing::TestParamInfo<LinearTest::ParamType>& info) {
                           return std::string(DTypeName(std::get<0>(info.param))) +
                                  (std::get<1>(info.param) ? "_Pool2" : "_NoPool");
                         });

// The packed outer-product kernel: against the reference on a grid of shapes (column tails,
// row tails, strides, threads), padding columns of y untouched, and every row bitwise the
// same whatever the batch it is computed in.
TEST_P(LinearTest, PackedMatchesReferenceAndIsBatchInvariant) {
  for (int64_t in : {1, 7, 128, 300}) {
    for (int64_t out : {1, 5, 16, 70, 257}) {
      SCOPED_TRACE("in=" + std::to_string(in) + " out=" + std::to_string(out));
      const OwnedTensor w = RandomTensor(dtype(), {out, in}, static_cast<uint32_t>(in * 31 + out));
      const PackedLinear packed = PackLinear(w.view);
      EXPECT_EQ(packed.out, out);
      EXPECT_EQ(packed.in, in);
      const int64_t n = 13, ldx = in + 3, ldy = out + 5;
      const std::vector<float> x = RandomVector(n * ldx, static_cast<uint32_t>(in + 7 * out));
      std::vector<float> y(n * ldy, kSentinel), ref(n * ldy, kSentinel);
      LinearPacked(x.data(), n, ldx, packed, y.data(), ldy, pool());
      LinearReference(x.data(), n, ldx, w.view, ref.data(), ldy);
      EXPECT_LE(RelativeL2(y.data(), ref.data(), n, out, ldy), kTolerance);
      for (int64_t j = 0; j < n; ++j) {
        for (int64_t c = out; c < ldy; ++c) ASSERT_EQ(y[j * ldy + c], kSentinel) << j << "," << c;
      }
      // Row j alone, and rows [j, n) together, give the bits of the 13-row call.
      for (int64_t j = 0; j < n; ++j) {
        std::vector<float> one(ldy, kSentinel), tail((n - j) * ldy, kSentinel);
        LinearPacked(x.data() + j * ldx, 1, ldx, packed, one.data(), ldy, pool());
        LinearPacked(x.data() + j * ldx, n - j, ldx, packed, tail.data(), ldy, pool());
        ASSERT_EQ(std::memcmp(one.data(), y.data() + j * ldy, out * sizeof(float)), 0) << j;
        ASSERT_EQ(std::memcmp(tail.data(), y.data() + j * ldy, out * sizeof(float)), 0) << j;
      }
    }
  }
}

TEST(LinearTest, EmptyInnerDimensionGivesZeros) {
  const OwnedTensor w = RandomTensor(DType::kF32, {4, 0}, 1);
  float x = 1.0f;
  std::vector<float> y(4, kSentinel);
  Linear(&x, 1, 0, w.view, y.data(), 4, nullptr);
  for (float v : y) EXPECT_EQ(v, 0.0f);
}

class RmsNormTest : public ::testing::TestWithParam<DType> {};

TEST_P(RmsNormTest, MatchesNaiveLoop) {
  const double eps = 1e-6;
  for (int64_t d : {1, 15, 16, 33, 257, 5280}) {
    const int64_t n = 3;
    const OwnedTensor w = RandomTensor(GetParam(), {d}, static_cast<uint32_t>(d));
    const std::vector<float> x = RandomVector(n * d, static_cast<uint32_t>(d + 1));
    std::vector<float> out(n * d, kSentinel);
    RmsNorm(x.data(), n, d, w.view, eps, out.data());
    std::vector<float> expect(n * d);
    for (int64_t i = 0; i < n; ++i) {
      double ss = 0.0;
      for (int64_t k = 0; k < d; ++k) ss += static_cast<double>(x[i * d + k]) * x[i * d + k];
      const double scale = 1.0 / std::sqrt(ss / d + eps);
      for (int64_t k = 0; k < d; ++k) {
        expect[i * d + k] = static_cast<float>(x[i * d + k] * scale * w.view.At(k));
      }
    }
    EXPECT_LE(RelativeL2(out.data(), expect.data(), n, d, d), kTolerance) << "d=" << d;
    // In place gives the same result.
    std::vector<float> inplace = x;
    RmsNorm(inplace.data(), n, d, w.view, eps, inplace.data());
    EXPECT_EQ(inplace, out) << "d=" << d;
  }
}

TEST_P(RmsNormTest, UnitWeightNormalisesToUnitRms) {
  const int64_t d = 100;
  std::vector<float> ones_f32(d, 1.0f);
  std::vector<uint16_t> ones_u16(d, GetParam() == DType::kBF16 ? F32ToBf16(1.0f) : F32ToF16(1.0f));
  TensorView w;
  w.dtype = GetParam();
  w.shape = {d};
  w.data = GetParam() == DType::kF32 ? static_cast<const void*>(ones_f32.data())
                                     : static_cast<const void*>(ones_u16.data());
  std::vector<float> x(d);
  for (int64_t k = 0; k < d; ++k) x[k] = static_cast<float>(k % 7) - 3.0f;
  std::vector<float> out(d);
  RmsNorm(x.data(), 1, d, w, 0.0, out.data());
  double ss = 0.0;
  for (float v : out) ss += static_cast<double>(v) * v;
  EXPECT_NEAR(ss / d, 1.0, 1e-5);
}

INSTANTIATE_TEST_SUITE_P(AllDtypes, RmsNormTest,
                         ::testing::Values(DType::kF32, DType::kBF16, DType::kF16),
                         [](const ::testing::TestParamInfo<DType>& info) {
                           return std::string(DTypeName(info.param));
                         });

TensorView View16(DType dtype, const std::vector<uint16_t>& v) {
  TensorView t;
  t.dtype = dtype;
  t.shape = {static_cast<int64_t>(v.size())};
  t.data = v.data();
  return t;
}

uint32_t Bits(float f) {
  uint32_t b;
  std::memcpy(&b, &f, 4);
  return b;
}

TEST(ToF32Test, Bf16SpecialValues) {
  const float inf = std::numeric_limits<float>::infinity();
  const std::vector<uint16_t> h = {0x0000, 0x8000, 0x3f80, 0xbf80, 0x7f80, 0xff80,
                                   0x0001, 0x807f, 0x7f7f, 0x4049, 0x7fc0};
  std::vector<float> out(h.size(), kSentinel);
  ToF32(View16(DType::kBF16, h), 0, static_cast<int64_t>(h.size()), out.data());
  EXPECT_EQ(Bits(out[0]), 0x00000000u);
  EXPECT_EQ(Bits(out[1]), 0x80000000u);  // -0
  EXPECT_EQ(out[2], 1.0f);
  EXPECT_EQ(out[3], -1.0f);
  EXPECT_EQ(out[4], inf);
  EXPECT_EQ(out[5], -inf);
  EXPECT_EQ(Bits(out[6]), 0x00010000u);       // subnormal
  EXPECT_EQ(Bits(out[7]), 0x807f0000u);       // negative subnormal
  EXPECT_EQ(out[8], 3.3895313892515355e38f);  // largest finite bf16
  EXPECT_EQ(out[9], 3.140625f);
  EXPECT_TRUE(std::isnan(out[10]));
}

TEST(ToF32Test, F16SpecialValues) {
  const float inf = std::numeric_limits<float>::infinity();
  const std::vector<uint16_t> h = {0x0000, 0x8000, 0x3c00, 0xc000, 0x7c00, 0xfc00,
                                   0x0001, 0x03ff, 0x8001, 0x7bff, 0x0400, 0x7e00};
  std::vector<float> out(h.size(), kSentinel);
  ToF32(View16(DType::kF16, h), 0, static_cast<int64_t>(h.size()), out.data());
  EXPECT_EQ(Bits(out[0]), 0x00000000u);
  EXPECT_EQ(Bits(out[1]), 0x80000000u);
  EXPECT_EQ(out[2], 1.0f);
  EXPECT_EQ(out[3], -2.0f);
  EXPECT_EQ(out[4], inf);
  EXPECT_EQ(out[5], -inf);
  EXPECT_EQ(out[6], std::ldexp(1.0f, -24));     // smallest subnormal
  EXPECT_EQ(out[7], std::ldexp(1023.0f, -24));  // largest subnormal
  EXPECT_EQ(out[8], -std::ldexp(1.0f, -24));
  EXPECT_EQ(out[9], 65504.0f);                // largest finite
  EXPECT_EQ(out[10], std::ldexp(1.0f, -14));  // smallest normal
  EXPECT_TRUE(std::isnan(out[11]));
}

// Every 16-bit pattern, through the vector body and the tail, against the scalar
// conversions of core/dtype.h.
TEST(ToF32Test, AllPatternsMatchScalarConversion) {
  std::vector<uint16_t> h(65536 + 5);
  for (size_t i = 0; i < h.size(); ++i) h[i] = static_cast<uint16_t>(i);
  for (DType dtype : {DType::kBF16, DType::kF16}) {
    const int64_t offset = 3, count = 65536;
    std::vector<float> out(count + 1, kSentinel);
    ToF32(View16(dtype, h), offset, count, out.data());
    EXPECT_EQ(out[count], kSentinel);
    for (int64_t i = 0; i < count; ++i) {
      const uint16_t bits = h[offset + i];
      const float expect = dtype == DType::kBF16 ? Bf16ToF32(bits) : F16ToF32(bits);
      if (std::isnan(expect)) {
        ASSERT_TRUE(std::isnan(out[i])) << DTypeName(dtype) << " " << bits;
      } else {
        ASSERT_EQ(Bits(out[i]), Bits(expect)) << DTypeName(dtype) << " " << bits;
      }
    }
  }
}

TEST(ToF32Test, F32IsCopiedWithOffset) {
  const std::vector<float> v = RandomVector(40, 3);
  TensorView t;
  t.dtype = DType::kF32;
  t.shape = {5, 8};
  t.data = v.data();
  std::vector<float> out(20, kSentinel);
  ToF32(t, 11, 19, out.data());
  for (int i = 0; i < 19; ++i) EXPECT_EQ(out[i], v[11 + i]);
  EXPECT_EQ(out[19], kSentinel);
}

TEST(ThreadPoolTest, ParallelForCoversEachIndexOnce) {
  ThreadPool pool(2);
  EXPECT_EQ(pool.threads(), 2);
  for (int64_t n : {1, 7, 1000}) {
    for (int64_t grain : {1, 16, 5000}) {
      std::vector<std::atomic<int>> hits(n);
      pool.ParallelFor(n, grain, [&](int64_t b, int64_t e) {
        ASSERT_LE(0, b);
        ASSERT_LT(b, e);
        ASSERT_LE(e, n);
        for (int64_t i = b; i < e; ++i) hits[i].fetch_add(1);
      });
      for (int64_t i = 0; i < n; ++i) ASSERT_EQ(hits[i].load(), 1) << n << " " << grain << " " << i;
    }
  }
}

TEST(ThreadPoolTest, DefaultUsesAtLeastOneThread) {
  ThreadPool pool;
  EXPECT_GE(pool.threads(), 1);
  int64_t total = 0;
  pool.ParallelFor(10, 100, [&](int64_t b, int64_t e) { total += e - b; });  // inline: n <= grain
  EXPECT_EQ(total, 10);
}

}  // namespace
}  // namespace ponder::exec::cpu
