#include "telemetry/cost_model.h"

#include <algorithm>
#include <string>

namespace ponder::telemetry {

Status ModelDims::Validate() const {
  struct Field {
    const char* name;
    int64_t value;
    int64_t min;
  } fields[] = {
      {"n_embd", n_embd, 1},
      {"n_heads", n_heads, 1},
      {"n_kv_heads", n_kv_heads, 1},
      {"head_dim", head_dim, 1},
      {"intermediate_size", intermediate_size, 1},
      {"padded_vocab_size", padded_vocab_size, 1},
      {"n_prelude", n_prelude, 0},
      {"n_core", n_core, 0},
      {"n_coda", n_coda, 0},
  };
  for (const Field& f : fields) {
    if (f.value < f.min) {
      return InvalidArgument("cost model: " + std::string(f.name) + " must be >= " +
                             std::to_string(f.min) + ", got " + std::to_string(f.value));
    }
  }
  if (!(weight_bytes_per_param > 0) || !(kv_bytes_per_value > 0)) {
    return InvalidArgument("cost model: bytes per parameter and per cached value must be > 0");
  }
  return Status::Ok();
}

Result<CostModel> CostModel::Create(const ModelDims& dims) {
  PONDER_RETURN_IF_ERROR(dims.Validate());
  return CostModel(dims);
}

double CostModel::LayerFlops(int64_t position, int64_t rows) const {
  const double d = dims_.n_embd, h = dims_.n_heads, hkv = dims_.n_kv_heads, hd = dims_.head_dim,
               f = dims_.intermediate_size;
  const double per_row = 2.0 * d * (h + 2.0 * hkv) * hd  // q, k, v
                         + 2.0 * h * hd * d              // output projection
                         + 6.0 * d * f;                  // gated MLP
  // Sum of the rows' contexts: row t (0-based) sits at position + t and sees position + t + 1.
  const double r = static_cast<double>(rows);
  const double contexts = r * static_cast<double>(position) + r * (r + 1.0) / 2.0;
  return r * per_row + 4.0 * h * hd * contexts;
}

double CostModel::LayerWeightBytes() const {
  const double d = dims_.n_embd, h = dims_.n_heads, hkv = dims_.n_kv_heads, hd = dims_.head_dim,
               f = dims_.intermediate_size;
  double params = (h + 2.0 * hkv) * hd * d  // Wqkv
                  + h * hd * d              // attn proj
                  + 3.0 * d * f             // mlp fc [2f, d] + proj [d, f]
                  + 4.0 * d;                // norm_1..norm_4
  if (dims_.qk_bias) params += (h + hkv) * hd;
  return params * dims_.weight_bytes_per_param;
}

double CostModel::LayerKvBytes(int64_t context) const {
  return 2.0 * static_cast<double>(context) * static_cast<double>(dims_.n_kv_heads) *
         static_cast<double>(dims_.head_dim) * dims_.kv_bytes_per_value;
}

Cost CostModel::Embedding() const {
  return {0.0, static_cast<double>(dims_.n_embd) * dims_.weight_bytes_per_param, 0.0};
}

Cost CostModel::Layer(int64_t context) const {
  return {LayerFlops(context - 1, 1), LayerWeightBytes(), LayerKvBytes(context)};
}

Cost CostModel::Prelude(int64_t context) const {
  return Layer(context) * static_cast<double>(dims_.n_prelude);
}

Cost CostModel::CoreIteration(int64_t context) const {
  const double d = dims_.n_embd;
  const Cost adapter{4.0 * d * d, 2.0 * d * d * dims_.weight_bytes_per_param, 0.0};
  return adapter + Layer(context) * static_cast<double>(dims_.n_core);
}

Cost CostModel::Coda(int64_t context) const {
  const Cost ln_f{0.0, static_cast<double>(dims_.n_embd) * dims_.weight_bytes_per_param, 0.0};
  return ln_f + Layer(context) * static_cast<double>(dims_.n_coda);
}

Cost CostModel::Head() const {
  const double d = dims_.n_embd, v = dims_.padded_vocab_size;
  return {2.0 * d * v, (v * d + d) * dims_.weight_bytes_per_param, 0.0};
}

Cost CostModel::LatentCheck() const { return {4.0 * static_cast<double>(dims_.n_embd), 0.0, 0.0}; }

Cost CostModel::Token(int64_t context, int64_t steps) const {
  PassWork pass;
  pass.position = context - 1;
  pass.rows = 1;
  pass.steps = steps;
  return Pass(pass);
}

Cost CostModel::Pass(const PassWork& pass, Cost* checks, PhaseCost* phases) const {
  const double d = dims_.n_embd;
  const double b = dims_.weight_bytes_per_param;
  const double rows = static_cast<double>(pass.rows);
  const double steps = static_cast<double>(pass.steps);
  const double layer_flops = LayerFlops(pass.position, pass.rows);
  const double layer_bytes = LayerWeightBytes();
  const double layer_kv = LayerKvBytes(pass.position + pass.rows);
  auto layers = [&](int64_t n) {
    const double k = static_cast<double>(n);
    return Cost{k * layer_flops, k * layer_bytes, k * layer_kv};
  };
  const Cost embedding = Embedding() * rows;
  const Cost prelude = layers(dims_.n_prelude);
  const Cost core = (Cost{rows * 4.0 * d * d, 2.0 * d * d * b, 0.0} + layers(dims_.n_core)) * steps;
  const Cost coda_head = Cost{0.0, d * b, 0.0} + layers(dims_.n_coda) + Head();
  if (checks != nullptr) {
    const int64_t extra =
        std::max<int64_t>(0, pass.logit_checks - (pass.output_from_check ? 1 : 0));
    *checks = coda_head * static_cast<double>(extra) +
              LatentCheck() * static_cast<double>(pass.latent_checks);
  }
  if (phases != nullptr) *phases = PhaseCost{embedding + prelude, core, coda_head};
  return embedding + prelude + core + coda_head;
}

RequestCost CostModel::Request(std::span<const PassWork> passes) const {
  RequestCost out;
  for (size_t i = 0; i < passes.size(); ++i) {
    Cost checks;
    PhaseCost phases;
    const Cost c = Pass(passes[i], &checks, &phases);
    (i == 0 ? out.prefill : out.decode) += c;
    out.checks += checks;
    out.phases += phases;
    ++out.passes;
    out.rows += passes[i].rows;
    out.steps += passes[i].steps;
  }
  return out;
}

std::vector<PassWork> CostModel::FixedPasses(int64_t prompt_rows, int64_t prompt_steps,
                                             std::span<const int64_t> decode_steps) {
  std::vector<PassWork> passes;
  passes.reserve(decode_steps.size() + 1);
  PassWork prefill;
  prefill.position = 0;
  prefill.rows = prompt_rows;
  prefill.steps = prompt_steps;
  passes.push_back(prefill);
  for (size_t i = 0; i < decode_steps.size(); ++i) {
    PassWork p;
    p.position = prompt_rows + static_cast<int64_t>(i);
    p.rows = 1;
    p.steps = decode_steps[i];
    passes.push_back(p);
  }
  return passes;
}

}  // namespace ponder::telemetry
