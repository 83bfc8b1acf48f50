#include "model/weights.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <limits>
#include <string>
#include <vector>

#include "tests/model/test_files.h"

namespace ponder::model {
namespace {

using ::ponder::model::testing::MakeTensor;
using ::ponder::model::testing::TempDir;
using ::ponder::model::testing::TensorSpec;
using ::ponder::model::testing::TinyCheckpointTensors;
using ::ponder::model::testing::TinyConfigJson;
using ::ponder::model::testing::WriteFile;
using ::ponder::model::testing::WriteSafetensors;

Config TinyConfig(bool tied = true, bool qk_bias = true) {
  Result<Config> c = ParseConfig(TinyConfigJson(tied, qk_bias), "config.json");
  EXPECT_TRUE(c.ok()) << c.status().ToString();
  return c.ok() ? *c : Config{};
}

void ExpectContains(const Status& s, const std::string& needle) {
  EXPECT_NE(s.message().find(needle), std::string::npos)
      << "message: " << s.message() << "\nexpected to contain: " << needle;
}

// Writes `tensors` as dir/model.safetensors and binds them against `config`.
Result<Weights> Bind(const TempDir& dir, const std::vector<TensorSpec>& tensors,
                     const Config& config, Result<TensorStore>* store) {
  WriteSafetensors(dir.File("model.safetensors"), tensors);
  *store = TensorStore::OpenDir(dir.path());
  if (!store->ok()) return store->status();
  return BindWeights(config, **store);
}

std::vector<TensorSpec> Without(std::vector<TensorSpec> v, const std::string& name) {
  std::erase_if(v, [&](const TensorSpec& t) { return t.name == name; });
  return v;
}

TEST(WeightsTest, BindsCompleteTinyCheckpoint) {
  TempDir dir;
  const Config c = TinyConfig();
  const std::vector<TensorSpec> tensors = TinyCheckpointTensors(c);
  Result<TensorStore> store = NotFound("unset");
  Result<Weights> w = Bind(dir, tensors, c, &store);
  ASSERT_TRUE(w.ok()) << w.status().ToString();

  ASSERT_EQ(w->prelude.size(), 1u);
  ASSERT_EQ(w->core.size(), 2u);
  ASSERT_EQ(w->coda.size(), 1u);
  EXPECT_EQ(w->wte.shape, (std::vector<int64_t>{20, 8}));
  EXPECT_EQ(w->adapter.shape, (std::vector<int64_t>{8, 16}));
  EXPECT_EQ(w->ln_f.shape, (std::vector<int64_t>{8}));
  EXPECT_EQ(w->lm_head.data, w->wte.data);  // tied
  EXPECT_EQ(w->core[1].wqkv.shape, (std::vector<int64_t>{24, 8}));
  EXPECT_EQ(w->core[1].qk_bias.shape, (std::vector<int64_t>{2, 1, 2, 4}));
  EXPECT_EQ(w->coda[0].mlp_fc.shape, (std::vector<int64_t>{24, 8}));
  EXPECT_EQ(w->coda[0].mlp_proj.shape, (std::vector<int64_t>{8, 12}));
  EXPECT_EQ(w->prelude[0].attn_proj.shape, (std::vector<int64_t>{8, 8}));
  EXPECT_FLOAT_EQ(w->wte.At(5), 0.05f);
  EXPECT_FLOAT_EQ(w->prelude[0].norm_3.At(7), 1.0f);
  EXPECT_EQ(w->core[0].wqkv.data, store->Find("transformer.core_block.0.attn.Wqkv.weight")->data);
  EXPECT_TRUE(w->ignored.empty());

  // Every stored parameter is used once, and it is exactly the config's unique count.
  EXPECT_EQ(w->weight_bytes, static_cast<uint64_t>(c.UniqueParams()) * 4u);
}

TEST(WeightsTest, WithoutQkBias) {
  TempDir dir;
  const Config c = TinyConfig(/*tied=*/true, /*qk_bias=*/false);
  Result<TensorStore> store = NotFound("unset");
  Result<Weights> w = Bind(dir, TinyCheckpointTensors(c), c, &store);
  ASSERT_TRUE(w.ok()) << w.status().ToString();
  EXPECT_TRUE(w->core[0].qk_bias.empty());
  EXPECT_EQ(w->weight_bytes, static_cast<uint64_t>(c.UniqueParams()) * 4u);
}

TEST(WeightsTest, MissingTensor) {
  TempDir dir;
  const Config c = TinyConfig();
  auto tensors = Without(TinyCheckpointTensors(c), "transformer.core_block.1.mlp.fc.weight");
  tensors = Without(tensors, "transformer.ln_f.weight");
  Result<TensorStore> store = NotFound("unset");
  Result<Weights> w = Bind(dir, tensors, c, &store);
  ASSERT_FALSE(w.ok());
  ExpectContains(w.status(), dir.File("model.safetensors"));
  ExpectContains(w.status(), "missing 2");
  ExpectContains(w.status(), "transformer.core_block.1.mlp.fc.weight");
  ExpectContains(w.status(), "transformer.ln_f.weight");
}

TEST(WeightsTest, UnexpectedTensor) {
  TempDir dir;
  const Config c = TinyConfig();
  auto tensors = TinyCheckpointTensors(c);
  tensors.push_back(MakeTensor("transformer.core_block.2.norm_1.weight", "F32", {8}));
  Result<TensorStore> store = NotFound("unset");
  Result<Weights> w = Bind(dir, tensors, c, &store);
  ASSERT_FALSE(w.ok());
  ExpectContains(w.status(), dir.File("model.safetensors"));
  ExpectContains(w.status(), "unexpected 1");
  ExpectContains(w.status(), "transformer.core_block.2.norm_1.weight");
}

TEST(WeightsTest, ManyProblemsAreCapped) {
  TempDir dir;
  const Config c = TinyConfig();
  auto tensors = TinyCheckpointTensors(c);
  for (int i = 0; i < 30; ++i) {
    tensors.push_back(MakeTensor("extra." + std::to_string(i), "F32", {1}));
  }
  Result<TensorStore> store = NotFound("unset");
  Result<Weights> w = Bind(dir, tensors, c, &store);
  ASSERT_FALSE(w.ok());
  ExpectContains(w.status(), "unexpected 30");
  ExpectContains(w.status(), "and 10 more");
}

TEST(WeightsTest, ShapeMismatch) {
  TempDir dir;
  const Config c = TinyConfig();
  auto tensors = Without(TinyCheckpointTensors(c), "transformer.coda.0.attn.qk_bias");
  tensors.push_back(MakeTensor("transformer.coda.0.attn.qk_bias", "F32", {2, 2, 4}));
  Result<TensorStore> store = NotFound("unset");
  Result<Weights> w = Bind(dir, tensors, c, &store);
  ASSERT_FALSE(w.ok());
  ExpectContains(w.status(), dir.File("model.safetensors"));
  ExpectContains(w.status(), "'transformer.coda.0.attn.qk_bias'");
  ExpectContains(w.status(), "[2, 2, 4]");
  ExpectContains(w.status(), "expected [2, 1, 2, 4]");

  // The embedding must have padded_vocab_size rows, not vocab_size.
  TempDir dir2;
  tensors = Without(TinyCheckpointTensors(c), "transformer.wte.weight");
  tensors.push_back(MakeTensor("transformer.wte.weight", "F32", {16, 8}));
  w = Bind(dir2, tensors, c, &store);
  ASSERT_FALSE(w.ok());
  ExpectContains(w.status(), "'transformer.wte.weight' has shape [16, 8], expected [20, 8]");
}

TEST(WeightsTest, NonFiniteWeightsAreAnErrorNamingTheTensor) {
  const Config c = TinyConfig();
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float inf = std::numeric_limits<float>::infinity();
  for (const char* dtype : {"F32", "BF16", "F16"}) {
    for (const float bad : {nan, inf, -inf}) {
      SCOPED_TRACE(std::string(dtype) + " " + std::to_string(bad));
      TempDir dir;
      auto tensors = Without(TinyCheckpointTensors(c), "transformer.coda.0.attn.Wqkv.weight");
      TensorSpec t = MakeTensor("transformer.coda.0.attn.Wqkv.weight", dtype, {24, 8}, 0.0f, 0.01f);
      // Element 5 is the bad value.
      TensorSpec one = MakeTensor("x", dtype, {1}, bad);
      const size_t size = one.bytes.size();
      t.bytes.replace(5 * size, size, one.bytes);
      tensors.push_back(t);
      Result<TensorStore> store = NotFound("unset");
      Result<Weights> w = Bind(dir, tensors, c, &store);
      ASSERT_FALSE(w.ok());
      ExpectContains(w.status(), dir.File("model.safetensors"));
      ExpectContains(w.status(), "'transformer.coda.0.attn.Wqkv.weight' holds a NaN or infinity");
      ExpectContains(w.status(), "element 5");
    }
  }
}

TEST(WeightsTest, TiedCopyAndFreqsCisIgnored) {
  TempDir dir;
  const Config c = TinyConfig();
  auto tensors = TinyCheckpointTensors(c);
  tensors.push_back(MakeTensor("lm_head.weight", "F32", {20, 8}, 3.0f));
  tensors.push_back(MakeTensor("freqs_cis", "F32", {1, 32, 1, 2, 2}));
  Result<TensorStore> store = NotFound("unset");
  Result<Weights> w = Bind(dir, tensors, c, &store);
  ASSERT_TRUE(w.ok()) << w.status().ToString();
  std::vector<std::string> ignored = w->ignored;
  std::sort(ignored.begin(), ignored.end());
  EXPECT_EQ(ignored, (std::vector<std::string>{"freqs_cis", "lm_head.weight"}));
  EXPECT_EQ(w->lm_head.data, w->wte.data);  // the stored copy is not used
  EXPECT_EQ(w->weight_bytes, static_cast<uint64_t>(c.UniqueParams()) * 4u);

  // A stored copy that cannot be the tied embedding is still an error.
  TempDir dir2;
  tensors = TinyCheckpointTensors(c);
  tensors.push_back(MakeTensor("lm_head.weight", "F32", {16, 8}));
  w = Bind(dir2, tensors, c, &store);
  ASSERT_FALSE(w.ok());
  ExpectContains(w.status(), "'lm_head.weight'");
}

TEST(WeightsTest, UntiedRequiresLmHead) {
  const Config c = TinyConfig(/*tied=*/false);
  {
    TempDir dir;
    Result<TensorStore> store = NotFound("unset");
    Result<Weights> w = Bind(dir, TinyCheckpointTensors(c), c, &store);
    ASSERT_TRUE(w.ok()) << w.status().ToString();
    EXPECT_NE(w->lm_head.data, w->wte.data);
    EXPECT_FLOAT_EQ(w->lm_head.At(0), 0.5f);
    EXPECT_EQ(w->weight_bytes, static_cast<uint64_t>(c.UniqueParams()) * 4u);
  }
  {
    TempDir dir;
    Result<TensorStore> store = NotFound("unset");
    Result<Weights> w = Bind(dir, Without(TinyCheckpointTensors(c), "lm_head.weight"), c, &store);
    ASSERT_FALSE(w.ok());
    ExpectContains(w.status(), "missing 1");
    ExpectContains(w.status(), "lm_head.weight");
    ExpectContains(w.status(), dir.File("model.safetensors"));
  }
}

TEST(WeightsTest, BindsAcrossShards) {
  TempDir dir;
  const Config c = TinyConfig();
  const auto tensors = TinyCheckpointTensors(c);
  const size_t half = tensors.size() / 2;
  const std::vector<TensorSpec> first(tensors.begin(), tensors.begin() + half);
  const std::vector<TensorSpec> second(tensors.begin() + half, tensors.end());
  WriteSafetensors(dir.File("a.safetensors"), first);
  WriteSafetensors(dir.File("b.safetensors"), second);
  nlohmann::json map = nlohmann::json::object();
  for (const auto& t : first) map[t.name] = "a.safetensors";
  for (const auto& t : second) map[t.name] = "b.safetensors";
  WriteFile(dir.File("model.safetensors.index.json"), nlohmann::json{{"weight_map", map}}.dump());
  Result<TensorStore> store = TensorStore::OpenDir(dir.path());
  ASSERT_TRUE(store.ok()) << store.status().ToString();
  Result<Weights> w = BindWeights(c, *store);
  ASSERT_TRUE(w.ok()) << w.status().ToString();
  EXPECT_EQ(w->weight_bytes, static_cast<uint64_t>(c.UniqueParams()) * 4u);

  // Shape errors name the shard that holds the tensor.
  auto bad = second;
  bad.back() = MakeTensor(bad.back().name, "F32", {3});
  w = NotFound("unmapped before rewriting");
  store = NotFound("unmapped before rewriting");
  WriteSafetensors(dir.File("b.safetensors"), bad);
  store = TensorStore::OpenDir(dir.path());
  ASSERT_TRUE(store.ok()) << store.status().ToString();
  w = BindWeights(c, *store);
  ASSERT_FALSE(w.ok());
  ExpectContains(w.status(), dir.File("b.safetensors"));
  ExpectContains(w.status(), "'" + bad.back().name + "'");
}

}  // namespace
}  // namespace ponder::model
