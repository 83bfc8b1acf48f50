#include "model/config.h"

#include <gtest/gtest.h>

#include <cmath>
#include <nlohmann/json.hpp>
#include <string>

#include "tests/model/test_files.h"

namespace ponder::model {
namespace {

using ::ponder::model::testing::TempDir;
using ::ponder::model::testing::WriteFile;

// config.json of tomg-group-umd/huginn-0125 (reference/huginn.md §1).
constexpr const char* kHuginnConfig = R"json({
  "activation_checkpoint_impl": "per-iteration",
  "architecture_class_name": "RecurrentGPT",
  "architectures": ["RavenForCausalLM"],
  "auto_map": {
    "AutoConfig": "raven_config_minimal.RavenConfig",
    "AutoModelForCausalLM": "raven_modeling_minimal.RavenForCausalLM"
  },
  "bias": false,
  "block_class_name": "SandwichBlock",
  "block_size": 4096,
  "bos_token_id": 65504,
  "effective_expected_depth": 132,
  "eos_token_id": 65505,
  "head_dim": 96,
  "init_orthogonal": false,
  "init_strategy": "takase",
  "init_values": {
    "embed_scale": 72.6636084983398,
    "embedding": 0.008703882797784892,
    "out_proj": 0.0005356869554443541,
    "std": 0.008703882797784892
  },
  "injection_type": "linear",
  "intermediate_size": 17920,
  "mean_backprop_depth": 8,
  "mean_recurrence": 32,
  "mlp_class_name": "GatedMLP",
  "model_type": "huginn_raven",
  "n_embd": 5280,
  "n_heads": 55,
  "n_layers": 8,
  "n_layers_in_coda": 2,
  "n_layers_in_prelude": 2,
  "n_layers_in_recurrent_block": 4,
  "nonlin_name": "SiLU",
  "norm_class_name": "RMSNorm_llama",
  "norm_eps": 1e-06,
  "num_key_value_heads": 55,
  "pad_token_id": 65509,
  "padded_vocab_size": 65536,
  "padding_multiple": 4096,
  "qk_bias": true,
  "rope_base": 50000,
  "sampling_scheme": "poisson-lognormal-filling",
  "state_init": "like-init",
  "tie_embeddings": true,
  "torch_dtype": "float32",
  "transformers_version": "4.47.1",
  "vocab_size": 65536
})json";

nlohmann::json Huginn() { return nlohmann::json::parse(kHuginnConfig); }

// Parses `j` and expects an error whose message contains every one of `needles`.
void ExpectError(const nlohmann::json& j, std::initializer_list<const char*> needles) {
  Result<Config> r = ParseConfig(j.dump(), "config.json");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
  for (const char* n : needles) {
    EXPECT_NE(r.status().message().find(n), std::string::npos)
        << "message: " << r.status().message() << "\nexpected to contain: " << n;
  }
}

TEST(ConfigTest, ParsesHuginn0125) {
  Result<Config> r = ParseConfig(kHuginnConfig, "config.json");
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  const Config& c = *r;
  EXPECT_EQ(c.model_type, "huginn_raven");
  EXPECT_EQ(c.n_embd, 5280);
  EXPECT_EQ(c.n_heads, 55);
  EXPECT_EQ(c.num_key_value_heads, 55);
  EXPECT_EQ(c.head_dim, 96);
  EXPECT_EQ(c.vocab_size, 65536);
  EXPECT_EQ(c.padded_vocab_size, 65536);
  EXPECT_EQ(c.n_layers, 8);
  EXPECT_EQ(c.n_layers_in_prelude, 2);
  EXPECT_EQ(c.n_layers_in_recurrent_block, 4);
  EXPECT_EQ(c.n_layers_in_coda, 2);
  EXPECT_EQ(c.intermediate_size, 17920);
  EXPECT_EQ(c.block_size, 4096);
  EXPECT_DOUBLE_EQ(c.rope_base, 50000.0);
  EXPECT_DOUBLE_EQ(c.norm_eps, 1e-6);
  EXPECT_FALSE(c.bias);
  EXPECT_TRUE(c.qk_bias);
  EXPECT_TRUE(c.tie_embeddings);
  EXPECT_EQ(c.mean_recurrence, 32);
  EXPECT_NEAR(c.init_std, 0.008703882797784892, 1e-15);
  EXPECT_NEAR(c.embed_scale, 72.6636084983398, 1e-12);
  EXPECT_EQ(c.bos_token_id, 65504);
  EXPECT_EQ(c.eos_token_id, 65505);
  EXPECT_EQ(c.pad_token_id, 65509);
}

TEST(ConfigTest, Huginn0125ParameterCounts) {
  Result<Config> r = ParseConfig(kHuginnConfig, "config.json");
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  // reference/huginn.md §1: one block 395,398,080; unique total (wte once) 3,564,976,800.
  EXPECT_EQ(r->BlockParams(), 395'398'080);
  EXPECT_EQ(r->UniqueParams(), 3'564'976'800);
  EXPECT_EQ(r->UnrolledParams(1), r->UniqueParams());
  // Each extra iteration repeats 4 core blocks and the adapter (55,756,800).
  EXPECT_EQ(r->UnrolledParams(32) - r->UniqueParams(), 31 * (4 * 395'398'080LL + 55'756'800LL));

  nlohmann::json j = Huginn();
  j["tie_embeddings"] = false;
  j["qk_bias"] = false;
  Result<Config> untied = ParseConfig(j.dump(), "config.json");
  ASSERT_TRUE(untied.ok()) << untied.status().ToString();
  EXPECT_EQ(untied->BlockParams(), 395'398'080 - 2 * 5280);
  EXPECT_EQ(untied->UniqueParams(), 3'564'976'800 + 346'030'080 - 8 * 2 * 5280);
}

TEST(ConfigTest, DefaultsForOptionalFields) {
  nlohmann::json j = Huginn();
  for (const char* k :
       {"num_key_value_heads", "head_dim", "padded_vocab_size", "n_layers", "rope_base", "norm_eps",
        "bias", "qk_bias", "tie_embeddings", "mean_recurrence", "init_values", "bos_token_id",
        "eos_token_id", "pad_token_id"}) {
    j.erase(k);
  }
  j["rope_settings"] = {{"rope_base", 10000.0}};
  j["vocab_size"] = 65000;
  Result<Config> r = ParseConfig(j.dump(), "config.json");
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->num_key_value_heads, 55);
  EXPECT_EQ(r->head_dim, 96);
  EXPECT_EQ(r->padded_vocab_size, 65000);
  EXPECT_EQ(r->n_layers, 8);
  EXPECT_DOUBLE_EQ(r->rope_base, 10000.0);
  EXPECT_DOUBLE_EQ(r->norm_eps, 1e-6);
  EXPECT_FALSE(r->bias);
  EXPECT_TRUE(r->qk_bias);
  EXPECT_TRUE(r->tie_embeddings);
  EXPECT_EQ(r->mean_recurrence, 32);
  EXPECT_DOUBLE_EQ(r->init_std, std::sqrt(2.0 / (5.0 * 5280)));
  EXPECT_DOUBLE_EQ(r->embed_scale, std::sqrt(5280.0));
  EXPECT_EQ(r->bos_token_id, -1);
  EXPECT_EQ(r->eos_token_id, -1);
  EXPECT_EQ(r->pad_token_id, -1);
}

TEST(ConfigTest, EosListTakesFirst) {
  nlohmann::json j = Huginn();
  j["eos_token_id"] = {65505, 65508};
  Result<Config> r = ParseConfig(j.dump(), "config.json");
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->eos_token_id, 65505);
}

TEST(ConfigTest, MissingRequiredField) {
  for (const char* field :
       {"n_embd", "n_heads", "n_layers_in_prelude", "n_layers_in_recurrent_block",
        "n_layers_in_coda", "intermediate_size", "vocab_size", "block_size", "model_type"}) {
    SCOPED_TRACE(field);
    nlohmann::json j = Huginn();
    j.erase(field);
    ExpectError(j, {"config.json", field, "missing"});
  }
}

TEST(ConfigTest, WrongTypeIsAnError) {
  nlohmann::json j = Huginn();
  j["n_embd"] = "5280";
  ExpectError(j, {"config.json", "n_embd", "expected an integer"});

  j = Huginn();
  j["n_heads"] = 55.5;
  ExpectError(j, {"config.json", "n_heads", "expected an integer"});

  j = Huginn();
  j["tie_embeddings"] = "yes";
  ExpectError(j, {"config.json", "tie_embeddings"});

  j = Huginn();
  j["rope_base"] = "50000";
  ExpectError(j, {"config.json", "rope_base", "expected a number"});

  j = Huginn();
  j["init_values"]["std"] = nlohmann::json::array();
  ExpectError(j, {"config.json", "init_values.std"});

  j = Huginn();
  j["model_type"] = 7;
  ExpectError(j, {"config.json", "model_type", "expected a string"});
}

TEST(ConfigTest, AnotherArchitectureVariantIsAnError) {
  for (const auto& [field, value] : {std::pair<const char*, const char*>{"injection_type", "add"},
                                     {"norm_class_name", "LayerNorm"},
                                     {"nonlin_name", "ReLU"},
                                     {"state_init", "zero"},
                                     {"block_class_name", "TransformerPreNormBlock"},
                                     {"mlp_class_name", "BaseMLP"}}) {
    SCOPED_TRACE(field);
    nlohmann::json j = Huginn();
    j[field] = value;
    ExpectError(j, {"config.json", field, value, "unsupported"});
  }
}

TEST(ConfigTest, SpecialTokensOutsideTheVocabularyAreAnError) {
  nlohmann::json j = Huginn();
  j["eos_token_id"] = 70000;
  ExpectError(j, {"config.json", "eos_token_id", "70000", "not a token id"});
  j = Huginn();
  j["bos_token_id"] = -2;
  ExpectError(j, {"config.json", "bos_token_id", "-2"});
}

TEST(ConfigTest, ContextBeyondTheLimitIsAnError) {
  nlohmann::json j = Huginn();
  j["block_size"] = 1000000000;
  ExpectError(j, {"config.json", "block_size", "1000000000", "more than"});
  j["block_size"] = kMaxBlockSize;
  EXPECT_TRUE(ParseConfig(j.dump(), "config.json").ok());
}

TEST(ConfigTest, NotDivisibleByHeads) {
  nlohmann::json j = Huginn();
  j["n_embd"] = 100;
  j["n_heads"] = 3;
  j["num_key_value_heads"] = 3;
  j.erase("head_dim");
  ExpectError(j, {"config.json: n_embd: 100 is not divisible by n_heads 3"});
}

TEST(ConfigTest, HeadDimMustMatch) {
  nlohmann::json j = Huginn();
  j["head_dim"] = 128;
  ExpectError(j, {"config.json", "head_dim", "128"});
}

TEST(ConfigTest, LayerCountMismatch) {
  nlohmann::json j = Huginn();
  j["n_layers"] = 9;
  ExpectError(j, {"config.json", "n_layers", "9", "8"});
}

TEST(ConfigTest, GroupedQueryAttentionRejected) {
  nlohmann::json j = Huginn();
  j["num_key_value_heads"] = 5;
  ExpectError(j, {"config.json", "num_key_value_heads", "5", "55", "unsupported"});
}

TEST(ConfigTest, BiasRejected) {
  nlohmann::json j = Huginn();
  j["bias"] = true;
  ExpectError(j, {"config.json", "bias", "unsupported"});
}

TEST(ConfigTest, PaddedVocabTooSmall) {
  nlohmann::json j = Huginn();
  j["padded_vocab_size"] = 1000;
  ExpectError(j, {"config.json", "padded_vocab_size", "1000"});
}

TEST(ConfigTest, ModelTypeMustBeHuginnRaven) {
  nlohmann::json j = Huginn();
  j["model_type"] = "llama";
  ExpectError(j, {"config.json", "model_type", "llama", "huginn_raven"});
}

TEST(ConfigTest, MalformedJson) {
  Result<Config> r = ParseConfig(R"({"model_type": "huginn_raven", "n_embd": })", "config.json");
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("config.json"), std::string::npos);
  EXPECT_NE(r.status().message().find("malformed JSON"), std::string::npos);
  // The parser's own message (position and reason) is kept.
  EXPECT_NE(r.status().message().find("parse error"), std::string::npos) << r.status().message();

  r = ParseConfig("[1, 2]", "config.json");
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("object"), std::string::npos);
}

TEST(ConfigTest, LoadConfigFromFile) {
  TempDir dir;
  const std::string path = dir.File("config.json");
  WriteFile(path, kHuginnConfig);
  Result<Config> r = LoadConfig(path);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->n_embd, 5280);

  nlohmann::json j = Huginn();
  j["n_embd"] = "wide";
  WriteFile(path, j.dump());
  r = LoadConfig(path);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find(path + ": n_embd"), std::string::npos)
      << r.status().message();

  r = LoadConfig(dir.File("absent.json"));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kNotFound);
  EXPECT_NE(r.status().message().find("absent.json"), std::string::npos);
}

}  // namespace
}  // namespace ponder::model
