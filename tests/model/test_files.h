#pragma once

// Helpers that write checkpoint files for the model tests into temporary directories.

#include <stdlib.h>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include "core/dtype.h"
#include "model/config.h"

namespace ponder::model::testing {

// A fresh directory under the system temp dir, removed with its contents on destruction.
class TempDir {
 public:
  TempDir() {
    std::string tmpl = (std::filesystem::temp_directory_path() / "ponder_model_XXXXXX").string();
    if (mkdtemp(tmpl.data()) != nullptr) path_ = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    if (!path_.empty()) std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  const std::string& path() const { return path_; }
  std::string File(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

inline void WriteFile(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

// Little-endian encodings of values in each stored dtype.
inline std::string F32Bytes(const std::vector<float>& v) {
  std::string s(v.size() * 4, '\0');
  if (!v.empty()) std::memcpy(s.data(), v.data(), s.size());
  return s;
}
inline std::string U16Bytes(const std::vector<uint16_t>& v) {
  std::string s(v.size() * 2, '\0');
  if (!v.empty()) std::memcpy(s.data(), v.data(), s.size());
  return s;
}
inline std::string Bf16Bytes(const std::vector<float>& v) {
  std::vector<uint16_t> h;
  for (float f : v) h.push_back(F32ToBf16(f));
  return U16Bytes(h);
}
inline std::string F16Bytes(const std::vector<float>& v) {
  std::vector<uint16_t> h;
  for (float f : v) h.push_back(F32ToF16(f));
  return U16Bytes(h);
}

// One tensor to store. `dtype` is the safetensors spelling and is written as given, so
// unsupported dtypes can be written too.
struct TensorSpec {
  std::string name;
  std::string dtype;
  std::vector<int64_t> shape;
  std::string bytes;
};

// A tensor of `shape` in `dtype` ("F32", "BF16", "F16") whose element i is `start + i * step`.
inline TensorSpec MakeTensor(const std::string& name, const std::string& dtype,
                             std::vector<int64_t> shape, float start = 0.0f, float step = 0.0f) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  std::vector<float> v(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) v[static_cast<size_t>(i)] = start + static_cast<float>(i) * step;
  std::string bytes = dtype == "BF16" ? Bf16Bytes(v) : dtype == "F16" ? F16Bytes(v) : F32Bytes(v);
  return {name, dtype, std::move(shape), std::move(bytes)};
}

// The safetensors layout: u64 LE header length, header JSON, data.
inline std::string RawSafetensors(const std::string& header, const std::string& data,
                                  uint64_t header_len_override = UINT64_MAX) {
  const uint64_t n = header_len_override == UINT64_MAX ? header.size() : header_len_override;
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i)
    out[static_cast<size_t>(i)] = static_cast<char>((n >> (8 * i)) & 0xff);
  return out + header + data;
}

// The header a well-formed file for `tensors` would have (contiguous, in the given order),
// padded with spaces to a multiple of 8 bytes as the HF writer does. `data` receives the
// concatenated tensor bytes.
inline std::string BuildHeader(const std::vector<TensorSpec>& tensors, std::string* data,
                               const nlohmann::json& metadata = nullptr) {
  nlohmann::json header = nlohmann::json::object();
  data->clear();
  for (const TensorSpec& t : tensors) {
    const uint64_t begin = data->size();
    *data += t.bytes;
    header[t.name] = {{"dtype", t.dtype},
                      {"shape", t.shape},
                      {"data_offsets", {begin, static_cast<uint64_t>(data->size())}}};
  }
  if (!metadata.is_null()) header["__metadata__"] = metadata;
  std::string text = header.dump();
  while (text.size() % 8 != 0) text += ' ';
  return text;
}

inline std::string BuildSafetensors(const std::vector<TensorSpec>& tensors,
                                    const nlohmann::json& metadata = nullptr) {
  std::string data;
  const std::string header = BuildHeader(tensors, &data, metadata);
  return RawSafetensors(header, data);
}

inline void WriteSafetensors(const std::string& path, const std::vector<TensorSpec>& tensors) {
  WriteFile(path, BuildSafetensors(tensors));
}

// A small config in the Huginn layout: d=8, 2 heads, 1+2+1 blocks, f=12, vocab 16 padded
// to 20.
inline std::string TinyConfigJson(bool tie_embeddings = true, bool qk_bias = true) {
  nlohmann::json j = {{"model_type", "huginn_raven"},
                      {"n_embd", 8},
                      {"n_heads", 2},
                      {"num_key_value_heads", 2},
                      {"head_dim", 4},
                      {"n_layers", 4},
                      {"n_layers_in_prelude", 1},
                      {"n_layers_in_recurrent_block", 2},
                      {"n_layers_in_coda", 1},
                      {"intermediate_size", 12},
                      {"vocab_size", 16},
                      {"padded_vocab_size", 20},
                      {"block_size", 32},
                      {"rope_base", 10000},
                      {"qk_bias", qk_bias},
                      {"tie_embeddings", tie_embeddings},
                      {"bias", false}};
  return j.dump();
}

// Every tensor BindWeights expects for `c` (F32, small ramps so values are distinct).
inline std::vector<TensorSpec> TinyCheckpointTensors(const Config& c) {
  const int64_t d = c.n_embd, f = c.intermediate_size, v = c.padded_vocab_size;
  std::vector<TensorSpec> out;
  out.push_back(MakeTensor("transformer.wte.weight", "F32", {v, d}, 0.0f, 0.01f));
  auto block = [&](const std::string& prefix) {
    for (int n = 1; n <= 4; ++n) {
      out.push_back(
          MakeTensor(prefix + ".norm_" + std::to_string(n) + ".weight", "F32", {d}, 1.0f));
    }
    out.push_back(MakeTensor(prefix + ".attn.Wqkv.weight", "F32", {3 * d, d}, 0.0f, 0.001f));
    if (c.qk_bias) {
      out.push_back(MakeTensor(prefix + ".attn.qk_bias", "F32", {2, 1, c.n_heads, c.head_dim}));
    }
    out.push_back(MakeTensor(prefix + ".attn.proj.weight", "F32", {d, d}, 0.0f, 0.001f));
    out.push_back(MakeTensor(prefix + ".mlp.fc.weight", "F32", {2 * f, d}, 0.0f, 0.001f));
    out.push_back(MakeTensor(prefix + ".mlp.proj.weight", "F32", {d, f}, 0.0f, 0.001f));
  };
  for (int64_t i = 0; i < c.n_layers_in_prelude; ++i)
    block("transformer.prelude." + std::to_string(i));
  for (int64_t i = 0; i < c.n_layers_in_recurrent_block; ++i) {
    block("transformer.core_block." + std::to_string(i));
  }
  for (int64_t i = 0; i < c.n_layers_in_coda; ++i) block("transformer.coda." + std::to_string(i));
  out.push_back(MakeTensor("transformer.adapter.weight", "F32", {d, 2 * d}, 0.0f, 0.001f));
  out.push_back(MakeTensor("transformer.ln_f.weight", "F32", {d}, 1.0f));
  if (!c.tie_embeddings) out.push_back(MakeTensor("lm_head.weight", "F32", {v, d}, 0.5f, 0.01f));
  return out;
}

}  // namespace ponder::model::testing
