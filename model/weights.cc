#include "model/weights.h"

#include <set>

namespace ponder::model {
namespace {

constexpr size_t kMaxListed = 20;  // names shown in one error message

// "a, b, c" with at most kMaxListed names, then "and N more".
std::string JoinCapped(const std::vector<std::string>& names) {
  std::string out;
  for (size_t i = 0; i < names.size() && i < kMaxListed; ++i) {
    if (i) out += ", ";
    out += names[i];
  }
  if (names.size() > kMaxListed)
    out += " and " + std::to_string(names.size() - kMaxListed) + " more";
  return out;
}

std::string DescribeStore(const TensorStore& store) {
  const std::vector<std::string> paths = store.file_paths();
  if (paths.size() == 1) return paths[0];
  return "checkpoint of " + std::to_string(paths.size()) + " files (" + JoinCapped(paths) + ")";
}

// One expected tensor: where to bind it and the shape it must have.
struct Slot {
  TensorView* dest;
  std::vector<int64_t> shape;
};

void AddBlock(const Config& c, const std::string& prefix, BlockWeights* b,
              std::vector<std::pair<std::string, Slot>>* slots) {
  const int64_t d = c.n_embd, f = c.intermediate_size;
  auto add = [&](const std::string& suffix, TensorView* dest, std::vector<int64_t> shape) {
    slots->push_back({prefix + suffix, Slot{dest, std::move(shape)}});
  };
  add(".norm_1.weight", &b->norm_1, {d});
  add(".norm_2.weight", &b->norm_2, {d});
  add(".norm_3.weight", &b->norm_3, {d});
  add(".norm_4.weight", &b->norm_4, {d});
  add(".attn.Wqkv.weight", &b->wqkv, {3 * d, d});
  if (c.qk_bias) add(".attn.qk_bias", &b->qk_bias, {2, 1, c.n_heads, c.head_dim});
  add(".attn.proj.weight", &b->attn_proj, {d, d});
  add(".mlp.fc.weight", &b->mlp_fc, {2 * f, d});
  add(".mlp.proj.weight", &b->mlp_proj, {d, f});
}

// The index of the first NaN or infinity in `t`, or -1 (an exponent of all ones, read from
// the bits: no conversion).
int64_t FirstNonFinite(const TensorView& t) {
  const int64_t n = t.numel();
  if (t.dtype == DType::kF32) {
    const auto* p = static_cast<const uint32_t*>(t.data);
    for (int64_t i = 0; i < n; ++i) {
      if ((p[i] & 0x7f800000u) == 0x7f800000u) return i;
    }
    return -1;
  }
  const uint16_t mask = t.dtype == DType::kBF16 ? 0x7f80 : 0x7c00;
  const auto* p = static_cast<const uint16_t*>(t.data);
  for (int64_t i = 0; i < n; ++i) {
    if ((p[i] & mask) == mask) return i;
  }
  return -1;
}

}  // namespace

Result<Weights> BindWeights(const Config& config, const TensorStore& store) {
  const int64_t d = config.n_embd;
  Weights w;
  w.prelude.resize(static_cast<size_t>(config.n_layers_in_prelude));
  w.core.resize(static_cast<size_t>(config.n_layers_in_recurrent_block));
  w.coda.resize(static_cast<size_t>(config.n_layers_in_coda));

  // The slots point into w's vectors, which are not resized again below.
  std::vector<std::pair<std::string, Slot>> slots;
  slots.push_back({"transformer.wte.weight", Slot{&w.wte, {config.padded_vocab_size, d}}});
  for (size_t i = 0; i < w.prelude.size(); ++i) {
    AddBlock(config, "transformer.prelude." + std::to_string(i), &w.prelude[i], &slots);
  }
  for (size_t i = 0; i < w.core.size(); ++i) {
    AddBlock(config, "transformer.core_block." + std::to_string(i), &w.core[i], &slots);
  }
  for (size_t i = 0; i < w.coda.size(); ++i) {
    AddBlock(config, "transformer.coda." + std::to_string(i), &w.coda[i], &slots);
  }
  slots.push_back({"transformer.adapter.weight", Slot{&w.adapter, {d, 2 * d}}});
  slots.push_back({"transformer.ln_f.weight", Slot{&w.ln_f, {d}}});
  if (!config.tie_embeddings) {
    slots.push_back({"lm_head.weight", Slot{&w.lm_head, {config.padded_vocab_size, d}}});
  }

  std::set<std::string> expected;
  std::vector<std::string> missing;
  for (const auto& [name, slot] : slots) {
    expected.insert(name);
    if (store.Find(name) == nullptr) missing.push_back(name);
  }
  std::vector<std::string> unexpected;
  for (const auto& [name, view] : store.tensors()) {
    if (expected.count(name)) continue;
    if (name == "freqs_cis" || (config.tie_embeddings && name == "lm_head.weight")) {
      w.ignored.push_back(name);
    } else {
      unexpected.push_back(name);
    }
  }
  if (!missing.empty() || !unexpected.empty()) {
    std::string msg = DescribeStore(store) + ": tensors do not match the config:";
    if (!missing.empty()) {
      msg += " missing " + std::to_string(missing.size()) + ": " + JoinCapped(missing) + ";";
    }
    if (!unexpected.empty()) {
      msg +=
          " unexpected " + std::to_string(unexpected.size()) + ": " + JoinCapped(unexpected) + ";";
    }
    msg.pop_back();
    return InvalidArgument(msg);
  }

  // A stored copy of the tied head is unused, but it must still look like the embedding.
  if (config.tie_embeddings) {
    if (store.Find("lm_head.weight") != nullptr) {
      slots.push_back({"lm_head.weight", Slot{nullptr, {config.padded_vocab_size, d}}});
    }
  }

  std::vector<std::string> mismatches;
  for (const auto& [name, slot] : slots) {
    const TensorView* view = store.Find(name);
    if (view->shape != slot.shape) {
      mismatches.push_back(store.FileOf(name) + ": tensor '" + name + "' has shape " +
                           ShapeString(view->shape) + ", expected " + ShapeString(slot.shape));
      continue;
    }
    // A corrupted checkpoint (NaN or infinity in a weight) would decode as garbage. (A
    // stored copy of a tied head is never read.)
    if (const int64_t at = slot.dest != nullptr ? FirstNonFinite(*view) : -1; at >= 0) {
      mismatches.push_back(store.FileOf(name) + ": tensor '" + name +
                           "' holds a NaN or infinity (element " + std::to_string(at) + ")");
      continue;
    }
    if (slot.dest != nullptr) {
      *slot.dest = *view;
      w.weight_bytes += view->bytes();
    }
  }
  if (!mismatches.empty()) {
    std::string msg = mismatches[0];
    for (size_t i = 1; i < mismatches.size() && i < kMaxListed; ++i) msg += "; " + mismatches[i];
    if (mismatches.size() > kMaxListed) {
      msg += "; and " + std::to_string(mismatches.size() - kMaxListed) + " more";
    }
    return InvalidArgument(msg);
  }
  if (config.tie_embeddings) w.lm_head = w.wte;
  return w;
}

}  // namespace ponder::model
