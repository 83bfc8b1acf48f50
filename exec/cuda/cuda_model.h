#pragma once

// The Huginn forward pass on an NVIDIA GPU: the Backend contract with cuBLAS for the
// matrix products (bf16 or f32 weights, f32 accumulation) and own kernels for the
// embedding, RMSNorm, qk bias + RoPE, attention over the paged KV cache (pages in device
// memory), the gated MLP activation and the residual adds. Built only when CUDA is found
// (CMake option PONDER_CUDA); no CUDA type appears in this header.
//
// Activations cross the contract as host rows (exec/backend.h): each call uploads its
// inputs and downloads its outputs, d floats per row. Keys and values never leave the
// device.

#include <cstdint>
#include <memory>
#include <string>

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
