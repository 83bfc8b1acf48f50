#pragma once

// The Huginn forward pass on an NVIDIA GPU: the Backend contract with bf16 (or f32)
// weights, f32 activations and f32 accumulation. Matrix products of a few rows run in the
// backend's own kernel, larger ones in cuBLAS (inputs as two bf16 parts); own kernels for
// the embedding, RMSNorm, qk bias + RoPE, attention over the paged KV cache (pages in device
// memory), the gated MLP activation and the residual adds. bench/gpu/README.md has the
// design and the measurements. Built only when CUDA is found
// (CMake option PONDER_CUDA); no CUDA type appears in this header.
//
// Activations cross the contract as host rows (exec/backend.h): each call downloads its
// outputs, d floats per row, and uploads inputs the device does not already hold (the core
// state a CoreStep returned and the embeddings being iterated stay where they are). Keys and
// values never leave the device.

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "exec/backend.h"

namespace ponder::exec::cuda {

struct DeviceInfo {
  int ordinal = 0;
  std::string name;
  int sm_major = 0, sm_minor = 0;
  uint64_t memory_bytes = 0;
};

class CudaModel : public Backend {
 public:
  // Uploads the weights to device `device` stored as `weights_dtype` ("bf16" or "f32").
  // No device, a bad ordinal, an unknown dtype or too little device memory: an error.
  [[nodiscard]] static Result<std::unique_ptr<Backend>> Create(const model::Config& config,
                                                               const model::Weights& weights,
                                                               int device,
                                                               const std::string& weights_dtype);
  ~CudaModel() override;

  std::string name() const override { return "cuda"; }
  [[nodiscard]] Status Prelude(std::span<const Chunk> chunks, std::span<const int32_t> tokens,
                               float* e) override;
  void CoreStep(std::span<const Chunk> chunks, std::span<const int64_t> iterations, const float* e,
                float* s) override;
  void Coda(std::span<const Chunk> chunks, const float* s, bool last_only, float* logits) override;
  // cuBLAS chooses its kernels by shape, so a row's sums may depend on the batch size.
  void set_batch_invariant(bool) override {}
  bool batch_invariant() const override { return false; }
  PageMemory* page_memory() override;

  const DeviceInfo& device() const;
  // Bytes of weights held on the device.
  uint64_t device_weight_bytes() const;
  // Waits for the device to finish the work queued so far.
  void Synchronize();
  // Products of at most `max_rows` input rows (8 at most; default kGemvDefaultRows) with bf16
  // weights run in the backend's own kernel, whose f32 inputs are not rounded; the others, and all
  // with f32 weights, in cuBLAS. 0 sends every product to cuBLAS. `block_rows` (4 or 8) is
  // the output rows each block of that kernel computes.
  void set_gemv(int64_t max_rows, int block_rows = 4);
  // Up to 3 rows the backend's kernel is faster than cuBLAS on an H200, from 4 slower
  // (bench/gpu/README.md).
  static constexpr int64_t kGemvDefaultRows = 3;
  // Device time of CoreStep by stage (set_profile(true): an event after each kernel, which
  // slows the steps a little). TakeProfile returns the milliseconds per stage summed since
  // the last call, in first-seen order, with the number of CoreSteps in `steps`, and resets.
  void set_profile(bool on);
  // Decode core steps whose products all run in the backend's own kernel replay a CUDA
  // graph of the step (on by default; profiling runs without).
  void set_graphs(bool on);
  std::vector<std::pair<std::string, double>> TakeProfile(int64_t* steps);
  // Milliseconds of one core iteration's matrix products alone (the adapter and each core
  // layer's four) for `rows` input rows, the median of `repeats` timed with device events.
  [[nodiscard]] Result<double> TimeCoreProducts(int64_t rows, int repeats);

 private:
  CudaModel(const model::Config& config, const model::Weights& weights);
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Devices visible to this process (0 when there is no driver or no device).
int DeviceCount();

// Device-to-device copy bandwidth of `device` in bytes per second counting reads and
// writes (2 x bytes per copy), the median of `repeats` copies of `bytes`.
[[nodiscard]] Result<double> MeasureCopyBandwidth(int device, uint64_t bytes, int repeats);

}  // namespace ponder::exec::cuda
