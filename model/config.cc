#include "model/config.h"

#include <cmath>
#include <limits>
#include <nlohmann/json.hpp>

#include "core/file.h"

namespace ponder::model {
namespace {

using Json = nlohmann::json;

// Reads fields of one JSON object by name; every error names the source file and the field.
class FieldReader {
 public:
  FieldReader(const Json& obj, const std::string& source, std::string prefix = "")
      : obj_(obj), source_(source), prefix_(std::move(prefix)) {}

  Status Error(const std::string& field, const std::string& reason) const {
    return InvalidArgument(source_ + ": " + prefix_ + field + ": " + reason);
  }

  bool Has(const std::string& field) const {
    auto it = obj_.find(field);
    return it != obj_.end() && !it->is_null();
  }

  // An integer field. A float with an integral value (e.g. 4096.0) is accepted.
  Status Int(const std::string& field, bool required, int64_t* out) const {
    if (!Has(field)) {
      return required ? Error(field, "required field is missing") : Status::Ok();
    }
    return ToInt(field, obj_.at(field), out);
  }

  Status ToInt(const std::string& field, const Json& v, int64_t* out) const {
    if (v.is_number_integer() && !v.is_number_unsigned()) {
      *out = v.get<int64_t>();
      return Status::Ok();
    }
    if (v.is_number_unsigned()) {
      const uint64_t u = v.get<uint64_t>();
      if (u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
        return Error(field, "value " + std::to_string(u) + " is too large");
      }
      *out = static_cast<int64_t>(u);
      return Status::Ok();
    }
    if (v.is_number_float()) {
      const double d = v.get<double>();
      if (std::isfinite(d) && d == std::floor(d) && std::fabs(d) < 9.0e15) {
        *out = static_cast<int64_t>(d);
        return Status::Ok();
      }
      return Error(field, "expected an integer, got " + v.dump());
    }
    return Error(field, std::string("expected an integer, got ") + v.type_name() + " " + v.dump());
  }

  Status Number(const std::string& field, double* out) const {
    if (!Has(field)) return Status::Ok();
    const Json& v = obj_.at(field);
    if (!v.is_number()) {
      return Error(field, std::string("expected a number, got ") + v.type_name() + " " + v.dump());
    }
    *out = v.get<double>();
    if (!std::isfinite(*out)) return Error(field, "value is not finite");
    return Status::Ok();
  }

  Status Bool(const std::string& field, bool* out) const {
    if (!Has(field)) return Status::Ok();
    const Json& v = obj_.at(field);
    if (!v.is_boolean()) {
      return Error(field,
                   std::string("expected true or false, got ") + v.type_name() + " " + v.dump());
    }
    *out = v.get<bool>();
    return Status::Ok();
  }

  Status String(const std::string& field, bool required, std::string* out) const {
    if (!Has(field)) {
      return required ? Error(field, "required field is missing") : Status::Ok();
    }
    const Json& v = obj_.at(field);
    if (!v.is_string()) {
      return Error(field, std::string("expected a string, got ") + v.type_name() + " " + v.dump());
    }
    *out = v.get<std::string>();
    return Status::Ok();
  }

  // A token id: an integer, or a list of integers of which the first is taken (HF allows
  // several eos ids).
  Status TokenId(const std::string& field, int64_t* out) const {
    if (!Has(field)) return Status::Ok();
    const Json& v = obj_.at(field);
    if (v.is_array()) {
      if (v.empty()) return Status::Ok();
      return ToInt(field + "[0]", v.front(), out);
    }
    return ToInt(field, v, out);
  }

 private:
  const Json& obj_;
  const std::string& source_;
  std::string prefix_;
};

Status Validate(const Config& c, const FieldReader& r, bool has_n_layers, int64_t n_layers) {
  auto positive = [&](const char* name, int64_t v) -> Status {
    if (v <= 0) return r.Error(name, std::to_string(v) + " must be positive");
    return Status::Ok();
  };
  PONDER_RETURN_IF_ERROR(positive("n_embd", c.n_embd));
  PONDER_RETURN_IF_ERROR(positive("n_heads", c.n_heads));
  PONDER_RETURN_IF_ERROR(positive("intermediate_size", c.intermediate_size));
  PONDER_RETURN_IF_ERROR(positive("vocab_size", c.vocab_size));
  PONDER_RETURN_IF_ERROR(positive("block_size", c.block_size));
  // The context sizes tables the runtime allocates up front (RoPE, attention scratch); no
  // model of the family comes near this (Huginn-0125: 4096).
  if (c.block_size > kMaxBlockSize) {
    return r.Error("block_size", std::to_string(c.block_size) + " is more than " +
                                     std::to_string(kMaxBlockSize) + " positions");
  }
  PONDER_RETURN_IF_ERROR(positive("n_layers_in_recurrent_block", c.n_layers_in_recurrent_block));
  // The coda and prelude are never empty in this family, but nothing in the forward pass
  // needs them to be; only negative counts are nonsense.
  if (c.n_layers_in_prelude < 0) {
    return r.Error("n_layers_in_prelude", std::to_string(c.n_layers_in_prelude) + " is negative");
  }
  if (c.n_layers_in_coda < 0) {
    return r.Error("n_layers_in_coda", std::to_string(c.n_layers_in_coda) + " is negative");
  }
  if (c.n_embd % c.n_heads != 0) {
    return r.Error("n_embd", std::to_string(c.n_embd) + " is not divisible by n_heads " +
                                 std::to_string(c.n_heads));
  }
  if (c.num_key_value_heads != c.n_heads) {
    return r.Error("num_key_value_heads", std::to_string(c.num_key_value_heads) +
                                              " differs from n_heads " + std::to_string(c.n_heads) +
                                              " (grouped-query attention is unsupported)");
  }
  if (c.head_dim != c.n_embd / c.n_heads) {
    return r.Error("head_dim", std::to_string(c.head_dim) + " is not n_embd / n_heads = " +
                                   std::to_string(c.n_embd / c.n_heads));
  }
  if (c.padded_vocab_size < c.vocab_size) {
    return r.Error("padded_vocab_size", std::to_string(c.padded_vocab_size) +
                                            " is smaller than vocab_size " +
                                            std::to_string(c.vocab_size));
  }
  const int64_t sum = c.n_layers_in_prelude + c.n_layers_in_recurrent_block + c.n_layers_in_coda;
  if (has_n_layers && n_layers != sum) {
    return r.Error("n_layers", std::to_string(n_layers) +
                                   " differs from n_layers_in_prelude + "
                                   "n_layers_in_recurrent_block + n_layers_in_coda = " +
                                   std::to_string(sum));
  }
  if (c.bias) return r.Error("bias", "true is unsupported (Huginn linears have no bias)");
  if (c.rope_base <= 0) return r.Error("rope_base", "must be positive");
  if (c.norm_eps < 0) return r.Error("norm_eps", "must not be negative");
  if (c.mean_recurrence <= 0) {
    return r.Error("mean_recurrence", std::to_string(c.mean_recurrence) + " must be positive");
  }
  // Special tokens: absent (-1) or a token of the vocabulary.
  for (const auto& [name, id] : {std::pair<const char*, int64_t>{"bos_token_id", c.bos_token_id},
                                 {"eos_token_id", c.eos_token_id},
                                 {"pad_token_id", c.pad_token_id}}) {
    if (id < -1 || id >= c.padded_vocab_size) {
      return r.Error(name, std::to_string(id) + " is not a token id (vocabulary of " +
                               std::to_string(c.padded_vocab_size) + ")");
    }
  }
  return Status::Ok();
}

// The architecture variants the forward pass implements (Huginn-0125's). A config naming
// another is refused rather than run as this one; an absent field means this one.
Status CheckArchitecture(const FieldReader& r) {
  static constexpr std::pair<const char*, const char*> kImplemented[] = {
      {"injection_type", "linear"},         {"block_class_name", "SandwichBlock"},
      {"mlp_class_name", "GatedMLP"},       {"nonlin_name", "SiLU"},
      {"norm_class_name", "RMSNorm_llama"}, {"state_init", "like-init"}};
  for (const auto& [field, value] : kImplemented) {
    std::string v = value;
    PONDER_RETURN_IF_ERROR(r.String(field, false, &v));
    if (v != value) {
      return r.Error(field,
                     "\"" + v + "\" is unsupported (this runtime implements \"" + value + "\")");
    }
  }
  return Status::Ok();
}

}  // namespace

int64_t Config::BlockParams() const {
  const int64_t d = n_embd, f = intermediate_size;
  return 4 * d                    // norm_1..norm_4
         + 3 * d * d              // Wqkv
         + (qk_bias ? 2 * d : 0)  // qk_bias [2, 1, h, hd]
         + d * d                  // attn.proj
         + 2 * f * d              // mlp.fc
         + d * f;                 // mlp.proj
}

int64_t Config::UniqueParams() const {
  const int64_t d = n_embd;
  const int64_t embed = padded_vocab_size * d;
  const int64_t head = tie_embeddings ? 0 : padded_vocab_size * d;
  const int64_t adapter = 2 * d * d;
  const int64_t blocks = n_layers_in_prelude + n_layers_in_recurrent_block + n_layers_in_coda;
  return embed + head + adapter + d + blocks * BlockParams();
}

int64_t Config::UnrolledParams(int64_t r) const {
  if (r < 1) r = 1;
  const int64_t adapter = 2 * n_embd * n_embd;
  return UniqueParams() + (r - 1) * (n_layers_in_recurrent_block * BlockParams() + adapter);
}

Result<Config> ParseConfig(const std::string& json_text, const std::string& source) {
  Json j;
  try {
    j = Json::parse(json_text);
  } catch (const Json::exception& e) {
    return InvalidArgument(source + ": malformed JSON: " + e.what());
  }
  if (!j.is_object()) {
    return InvalidArgument(source + ": expected a JSON object at top level, got " + j.type_name());
  }
  const FieldReader r(j, source);
  Config c;
  PONDER_RETURN_IF_ERROR(r.String("model_type", true, &c.model_type));
  if (c.model_type != "huginn_raven") {
    return r.Error("model_type", "\"" + c.model_type + "\" is not \"huginn_raven\"");
  }
  PONDER_RETURN_IF_ERROR(r.Int("n_embd", true, &c.n_embd));
  PONDER_RETURN_IF_ERROR(r.Int("n_heads", true, &c.n_heads));
  PONDER_RETURN_IF_ERROR(r.Int("n_layers_in_prelude", true, &c.n_layers_in_prelude));
  PONDER_RETURN_IF_ERROR(
      r.Int("n_layers_in_recurrent_block", true, &c.n_layers_in_recurrent_block));
  PONDER_RETURN_IF_ERROR(r.Int("n_layers_in_coda", true, &c.n_layers_in_coda));
  PONDER_RETURN_IF_ERROR(r.Int("intermediate_size", true, &c.intermediate_size));
  PONDER_RETURN_IF_ERROR(r.Int("vocab_size", true, &c.vocab_size));
  PONDER_RETURN_IF_ERROR(r.Int("block_size", true, &c.block_size));

  // Checked before the defaults below divide by it.
  if (c.n_heads <= 0) return r.Error("n_heads", std::to_string(c.n_heads) + " must be positive");

  c.num_key_value_heads = c.n_heads;
  PONDER_RETURN_IF_ERROR(r.Int("num_key_value_heads", false, &c.num_key_value_heads));
  c.head_dim = c.n_embd / c.n_heads;
  PONDER_RETURN_IF_ERROR(r.Int("head_dim", false, &c.head_dim));
  c.padded_vocab_size = c.vocab_size;
  PONDER_RETURN_IF_ERROR(r.Int("padded_vocab_size", false, &c.padded_vocab_size));
  c.n_layers = c.n_layers_in_prelude + c.n_layers_in_recurrent_block + c.n_layers_in_coda;
  const bool has_n_layers = r.Has("n_layers");
  int64_t n_layers = c.n_layers;
  PONDER_RETURN_IF_ERROR(r.Int("n_layers", false, &n_layers));

  if (r.Has("rope_base")) {
    PONDER_RETURN_IF_ERROR(r.Number("rope_base", &c.rope_base));
  } else if (r.Has("rope_settings")) {
    const Json& rs = j.at("rope_settings");
    if (!rs.is_object()) {
      return r.Error("rope_settings", std::string("expected an object, got ") + rs.type_name());
    }
    PONDER_RETURN_IF_ERROR(
        FieldReader(rs, source, "rope_settings.").Number("rope_base", &c.rope_base));
  }
  PONDER_RETURN_IF_ERROR(r.Number("norm_eps", &c.norm_eps));
  PONDER_RETURN_IF_ERROR(r.Bool("bias", &c.bias));
  PONDER_RETURN_IF_ERROR(r.Bool("qk_bias", &c.qk_bias));
  PONDER_RETURN_IF_ERROR(r.Bool("tie_embeddings", &c.tie_embeddings));
  PONDER_RETURN_IF_ERROR(r.Int("mean_recurrence", false, &c.mean_recurrence));

  c.init_std = c.n_embd > 0 ? std::sqrt(2.0 / (5.0 * static_cast<double>(c.n_embd))) : 0.0;
  c.embed_scale = c.n_embd > 0 ? std::sqrt(static_cast<double>(c.n_embd)) : 0.0;
  if (r.Has("init_values")) {
    const Json& iv = j.at("init_values");
    if (!iv.is_object()) {
      return r.Error("init_values", std::string("expected an object, got ") + iv.type_name());
    }
    const FieldReader ir(iv, source, "init_values.");
    PONDER_RETURN_IF_ERROR(ir.Number("std", &c.init_std));
    PONDER_RETURN_IF_ERROR(ir.Number("embed_scale", &c.embed_scale));
  }
  PONDER_RETURN_IF_ERROR(r.TokenId("bos_token_id", &c.bos_token_id));
  PONDER_RETURN_IF_ERROR(r.TokenId("eos_token_id", &c.eos_token_id));
  PONDER_RETURN_IF_ERROR(r.TokenId("pad_token_id", &c.pad_token_id));

  PONDER_RETURN_IF_ERROR(CheckArchitecture(r));
  PONDER_RETURN_IF_ERROR(Validate(c, r, has_n_layers, n_layers));
  return c;
}

Result<Config> LoadConfig(const std::string& path) {
  PONDER_ASSIGN_OR_RETURN(const std::string text, ReadTextFile(path, "the config file"));
  return ParseConfig(text, path);
}

}  // namespace ponder::model
