#include "model/safetensors.h"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "tests/model/test_files.h"

namespace ponder::model {
namespace {

using ::ponder::model::testing::BuildHeader;
using ::ponder::model::testing::BuildSafetensors;
using ::ponder::model::testing::MakeTensor;
using ::ponder::model::testing::RawSafetensors;
using ::ponder::model::testing::TempDir;
using ::ponder::model::testing::TensorSpec;
using ::ponder::model::testing::WriteFile;
using ::ponder::model::testing::WriteSafetensors;
using Json = nlohmann::json;

void ExpectContains(const Status& s, const std::string& needle) {
  EXPECT_NE(s.message().find(needle), std::string::npos)
      << "message: " << s.message() << "\nexpected to contain: " << needle;
}

// Writes `bytes` as dir/bad.safetensors and opens it; expects failure naming the file and
// `needles`. Returns the error's code.
StatusCode OpenExpectingError(const TempDir& dir, const std::string& bytes,
                              std::initializer_list<std::string> needles) {
  const std::string path = dir.File("bad.safetensors");
  WriteFile(path, bytes);
  Result<std::unique_ptr<SafetensorsFile>> r = SafetensorsFile::Open(path);
  EXPECT_FALSE(r.ok());
  if (r.ok()) return StatusCode::kOk;
  ExpectContains(r.status(), path);
  for (const std::string& n : needles) ExpectContains(r.status(), n);
  return r.status().code();
}

// A header for one tensor with the given fields, as raw JSON.
std::string OneTensorHeader(const std::string& name, const std::string& dtype, const Json& shape,
                            const Json& offsets) {
  Json h = {{name, {{"dtype", dtype}, {"shape", shape}, {"data_offsets", offsets}}}};
  return h.dump();
}

TEST(SafetensorsTest, ReadsF32Bf16F16) {
  TempDir dir;
  const std::string path = dir.File("model.safetensors");
  const std::vector<TensorSpec> specs = {
      MakeTensor("a", "F32", {2, 3}, 0.5f, 0.25f),
      MakeTensor("b", "BF16", {4}, -1.0f, 0.5f),
      MakeTensor("c", "F16", {1, 2, 2}, 2.0f, -0.125f),
      MakeTensor("empty", "F32", {0, 5}),
  };
  WriteFile(path, BuildSafetensors(specs, Json{{"format", "pt"}}));

  Result<std::unique_ptr<SafetensorsFile>> r = SafetensorsFile::Open(path);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  const SafetensorsFile& f = **r;
  EXPECT_EQ(f.path(), path);
  ASSERT_EQ(f.tensors().size(), 4u);
  EXPECT_EQ(f.metadata().at("format"), "pt");

  const TensorView& a = f.tensors().at("a");
  EXPECT_EQ(a.dtype, DType::kF32);
  EXPECT_EQ(a.shape, (std::vector<int64_t>{2, 3}));
  for (int64_t i = 0; i < 6; ++i) EXPECT_FLOAT_EQ(a.At(i), 0.5f + 0.25f * i);

  const TensorView& b = f.tensors().at("b");
  EXPECT_EQ(b.dtype, DType::kBF16);
  EXPECT_EQ(b.shape, (std::vector<int64_t>{4}));
  for (int64_t i = 0; i < 4; ++i) EXPECT_FLOAT_EQ(b.At(i), -1.0f + 0.5f * i);

  const TensorView& c = f.tensors().at("c");
  EXPECT_EQ(c.dtype, DType::kF16);
  EXPECT_EQ(c.shape, (std::vector<int64_t>{1, 2, 2}));
  EXPECT_EQ(c.bytes(), 8u);
  for (int64_t i = 0; i < 4; ++i) EXPECT_FLOAT_EQ(c.At(i), 2.0f - 0.125f * i);

  EXPECT_EQ(f.tensors().at("empty").numel(), 0);

  Result<TensorStore> store = TensorStore::OpenDir(dir.path());
  ASSERT_TRUE(store.ok()) << store.status().ToString();
  ASSERT_NE(store->Find("b"), nullptr);
  EXPECT_FLOAT_EQ(store->Find("b")->At(3), 0.5f);
  EXPECT_EQ(store->Find("zzz"), nullptr);
  EXPECT_EQ(store->FileOf("a"), path);
  EXPECT_EQ(store->FileOf("zzz"), "");
  EXPECT_EQ(store->loaded_bytes(), f.file_bytes());
}

TEST(SafetensorsTest, OpenFileStore) {
  TempDir dir;
  const std::string path = dir.File("weights.safetensors");
  WriteSafetensors(path, {MakeTensor("x", "F32", {2}, 7.0f, 1.0f)});
  Result<TensorStore> store = TensorStore::OpenFile(path);
  ASSERT_TRUE(store.ok()) << store.status().ToString();
  ASSERT_NE(store->Find("x"), nullptr);
  EXPECT_FLOAT_EQ(store->Find("x")->At(1), 8.0f);
  EXPECT_EQ(store->FileOf("x"), path);
}

TEST(SafetensorsTest, FileShorterThanHeaderLength) {
  TempDir dir;
  StatusCode code = OpenExpectingError(dir, "", {"too short"});
  EXPECT_EQ(code, StatusCode::kDataLoss);
  OpenExpectingError(dir, std::string(7, '\0'), {"7 bytes"});
}

TEST(SafetensorsTest, HeaderLengthLargerThanFile) {
  TempDir dir;
  const std::string header = OneTensorHeader("t", "F32", {1}, {0, 4});
  StatusCode code = OpenExpectingError(dir, RawSafetensors(header, "abcd", header.size() + 100),
                                       {"header length", "past the end"});
  EXPECT_EQ(code, StatusCode::kDataLoss);
}

TEST(SafetensorsTest, OversizedHeaderLength) {
  TempDir dir;
  const std::string header = OneTensorHeader("t", "F32", {1}, {0, 4});
  OpenExpectingError(dir, RawSafetensors(header, "abcd", SafetensorsFile::kMaxHeaderBytes + 1),
                     {"exceeds the limit"});
  OpenExpectingError(dir, RawSafetensors(header, "abcd", UINT64_MAX - 1), {"exceeds the limit"});
}

TEST(SafetensorsTest, DataSectionShorterThanOffsets) {
  TempDir dir;
  std::string data;
  const std::string header = BuildHeader({MakeTensor("big", "F32", {16})}, &data);
  data.resize(data.size() - 4);  // truncated file
  StatusCode code =
      OpenExpectingError(dir, RawSafetensors(header, data), {"'big'", "data section"});
  EXPECT_EQ(code, StatusCode::kDataLoss);
}

TEST(SafetensorsTest, OffsetsOutOfBounds) {
  TempDir dir;
  OpenExpectingError(dir, RawSafetensors(OneTensorHeader("w", "F32", {2}, {100, 108}), "12345678"),
                     {"'w'", "data_offsets"});
  OpenExpectingError(dir, RawSafetensors(OneTensorHeader("w", "F32", {0}, {8, 4}), "12345678"),
                     {"'w'", "begin greater than end"});
  OpenExpectingError(dir, RawSafetensors(OneTensorHeader("w", "F32", {1}, {-4, 0}), "12345678"),
                     {"'w'", "data_offsets"});
  OpenExpectingError(dir, RawSafetensors(OneTensorHeader("w", "F32", {1}, {0}), "12345678"),
                     {"'w'", "data_offsets"});
}

TEST(SafetensorsTest, OverlappingOffsets) {
  TempDir dir;
  Json h = {{"first", {{"dtype", "F32"}, {"shape", {2}}, {"data_offsets", {0, 8}}}},
            {"second", {{"dtype", "F32"}, {"shape", {2}}, {"data_offsets", {4, 12}}}}};
  OpenExpectingError(dir, RawSafetensors(h.dump(), std::string(12, '\0')),
                     {"'first'", "'second'", "overlap"});
}

TEST(SafetensorsTest, ByteLengthMustMatchShape) {
  TempDir dir;
  OpenExpectingError(dir, RawSafetensors(OneTensorHeader("m", "BF16", {3}, {0, 8}), "12345678"),
                     {"'m'", "byte length 8", "[3]", "BF16", "6 bytes"});
}

TEST(SafetensorsTest, BadShape) {
  TempDir dir;
  OpenExpectingError(dir, RawSafetensors(OneTensorHeader("s", "F32", {-1}, {0, 0}), ""),
                     {"'s'", "shape"});
  OpenExpectingError(
      dir, RawSafetensors(OneTensorHeader("s", "F32", {1LL << 40, 1LL << 40}, {0, 0}), ""),
      {"'s'", "overflows"});
  OpenExpectingError(dir, RawSafetensors(OneTensorHeader("s", "F32", "2", {0, 8}), "12345678"),
                     {"'s'", "shape"});
}

TEST(SafetensorsTest, UnsupportedDtype) {
  TempDir dir;
  OpenExpectingError(dir, RawSafetensors(OneTensorHeader("ids", "I64", {1}, {0, 8}), "12345678"),
                     {"'ids'", "unsupported dtype I64"});
  OpenExpectingError(dir, RawSafetensors(OneTensorHeader("d", "F64", {1}, {0, 8}), "12345678"),
                     {"'d'", "unsupported dtype F64"});
}

TEST(SafetensorsTest, MalformedHeaderJson) {
  TempDir dir;
  OpenExpectingError(dir, RawSafetensors(R"({"t": {"dtype": "F32", )", ""),
                     {"malformed header JSON", "parse error"});
}

TEST(SafetensorsTest, HeaderNotAnObject) {
  TempDir dir;
  OpenExpectingError(dir, RawSafetensors("[1, 2, 3]", ""), {"not a JSON object"});
  OpenExpectingError(dir, RawSafetensors(R"({"t": 5})", ""), {"'t'", "not a JSON object"});
  OpenExpectingError(dir, RawSafetensors(R"({"__metadata__": {"k": 1}})", ""), {"__metadata__"});
}

TEST(SafetensorsTest, MissingFile) {
  TempDir dir;
  Result<std::unique_ptr<SafetensorsFile>> r = SafetensorsFile::Open(dir.File("nope.safetensors"));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kNotFound);
  ExpectContains(r.status(), "nope.safetensors");

  Result<TensorStore> store = TensorStore::OpenDir(dir.path());
  ASSERT_FALSE(store.ok());
  EXPECT_EQ(store.status().code(), StatusCode::kNotFound);
  ExpectContains(store.status(), dir.File("model.safetensors"));
}

// Writes two shards and an index mapping each tensor to its shard.
void WriteShardedCheckpoint(const TempDir& dir, const Json& weight_map) {
  WriteSafetensors(dir.File("model-00001-of-00002.safetensors"),
                   {MakeTensor("a", "F32", {2}, 1.0f, 1.0f), MakeTensor("b", "BF16", {3}, 5.0f)});
  WriteSafetensors(dir.File("model-00002-of-00002.safetensors"),
                   {MakeTensor("c", "F16", {2, 2}, -2.0f, 1.0f)});
  Json index = {{"metadata", {{"total_size", 30}}}, {"weight_map", weight_map}};
  WriteFile(dir.File("model.safetensors.index.json"), index.dump(2));
}

TEST(SafetensorsTest, ShardedDirectory) {
  TempDir dir;
  WriteShardedCheckpoint(dir, {{"a", "model-00001-of-00002.safetensors"},
                               {"b", "model-00001-of-00002.safetensors"},
                               {"c", "model-00002-of-00002.safetensors"}});
  Result<TensorStore> store = TensorStore::OpenDir(dir.path());
  ASSERT_TRUE(store.ok()) << store.status().ToString();
  EXPECT_EQ(store->tensors().size(), 3u);
  EXPECT_FLOAT_EQ(store->Find("a")->At(1), 2.0f);
  EXPECT_FLOAT_EQ(store->Find("b")->At(2), 5.0f);
  EXPECT_FLOAT_EQ(store->Find("c")->At(3), 1.0f);
  EXPECT_EQ(store->FileOf("a"), dir.File("model-00001-of-00002.safetensors"));
  EXPECT_EQ(store->FileOf("c"), dir.File("model-00002-of-00002.safetensors"));
  EXPECT_EQ(store->file_paths().size(), 2u);
}

TEST(SafetensorsTest, MissingShard) {
  TempDir dir;
  WriteShardedCheckpoint(dir, {{"a", "model-00001-of-00002.safetensors"},
                               {"b", "model-00001-of-00002.safetensors"},
                               {"c", "model-00002-of-00002.safetensors"},
                               {"d", "model-00003-of-00002.safetensors"}});
  Result<TensorStore> store = TensorStore::OpenDir(dir.path());
  ASSERT_FALSE(store.ok());
  EXPECT_EQ(store.status().code(), StatusCode::kNotFound);
  ExpectContains(store.status(), "model-00003-of-00002.safetensors");
  ExpectContains(store.status(), "'d'");
}

TEST(SafetensorsTest, TensorListedButAbsentFromShard) {
  TempDir dir;
  WriteShardedCheckpoint(dir, {{"a", "model-00001-of-00002.safetensors"},
                               {"b", "model-00001-of-00002.safetensors"},
                               {"c", "model-00002-of-00002.safetensors"},
                               {"ghost", "model-00002-of-00002.safetensors"}});
  Result<TensorStore> store = TensorStore::OpenDir(dir.path());
  ASSERT_FALSE(store.ok());
  ExpectContains(store.status(), "'ghost'");
  ExpectContains(store.status(), "model-00002-of-00002.safetensors");
  ExpectContains(store.status(), "absent");

  // Listed under the wrong shard: present, but not where the index says.
  TempDir dir2;
  WriteShardedCheckpoint(dir2, {{"a", "model-00002-of-00002.safetensors"},
                                {"b", "model-00001-of-00002.safetensors"},
                                {"c", "model-00002-of-00002.safetensors"}});
  store = TensorStore::OpenDir(dir2.path());
  ASSERT_FALSE(store.ok());
  ExpectContains(store.status(), "'a'");
  ExpectContains(store.status(), "model-00002-of-00002.safetensors");
}

TEST(SafetensorsTest, DuplicateTensorAcrossShards) {
  TempDir dir;
  WriteSafetensors(dir.File("s1.safetensors"), {MakeTensor("w", "F32", {2})});
  WriteSafetensors(dir.File("s2.safetensors"),
                   {MakeTensor("w", "F32", {2}), MakeTensor("v", "F32", {1})});
  Json index = {{"weight_map", {{"w", "s1.safetensors"}, {"v", "s2.safetensors"}}}};
  WriteFile(dir.File("model.safetensors.index.json"), index.dump());
  Result<TensorStore> store = TensorStore::OpenDir(dir.path());
  ASSERT_FALSE(store.ok());
  ExpectContains(store.status(), "'w'");
  ExpectContains(store.status(), "stored twice");
  ExpectContains(store.status(), dir.File("s1.safetensors"));
  ExpectContains(store.status(), dir.File("s2.safetensors"));
}

TEST(SafetensorsTest, BadIndex) {
  TempDir dir;
  WriteFile(dir.File("model.safetensors.index.json"), "{\"weight_map\": ");
  Result<TensorStore> store = TensorStore::OpenDir(dir.path());
  ASSERT_FALSE(store.ok());
  ExpectContains(store.status(), "model.safetensors.index.json");
  ExpectContains(store.status(), "malformed JSON");

  WriteFile(dir.File("model.safetensors.index.json"), R"({"metadata": {}})");
  store = TensorStore::OpenDir(dir.path());
  ASSERT_FALSE(store.ok());
  ExpectContains(store.status(), "weight_map");

  WriteFile(dir.File("model.safetensors.index.json"),
            R"({"weight_map": {"w": "../outside.safetensors"}})");
  store = TensorStore::OpenDir(dir.path());
  ASSERT_FALSE(store.ok());
  ExpectContains(store.status(), "'../outside.safetensors'");
}

TEST(SafetensorsTest, ShardErrorsNameTheShard) {
  TempDir dir;
  WriteSafetensors(dir.File("s1.safetensors"), {MakeTensor("w", "F32", {2})});
  WriteFile(dir.File("s2.safetensors"),
            RawSafetensors(OneTensorHeader("v", "I64", {1}, {0, 8}), "12345678"));
  Json index = {{"weight_map", {{"w", "s1.safetensors"}, {"v", "s2.safetensors"}}}};
  WriteFile(dir.File("model.safetensors.index.json"), index.dump());
  Result<TensorStore> store = TensorStore::OpenDir(dir.path());
  ASSERT_FALSE(store.ok());
  ExpectContains(store.status(), dir.File("s2.safetensors"));
  ExpectContains(store.status(), "'v'");
  ExpectContains(store.status(), "I64");
}

}  // namespace
}  // namespace ponder::model
