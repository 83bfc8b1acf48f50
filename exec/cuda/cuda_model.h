#pragma once

// The Huginn forward pass on an NVIDIA GPU: the Backend contract with bf16 (or f32)
// weights, f32 activations and f32 accumulation. Matrix products of a few rows run in the
// backend's own kernels (GemvKernel; MmaKernel on the tensor cores, off by default), larger
// ones in cuBLAS (inputs as two bf16 parts); own kernels for the embedding, RMSNorm, qk
// bias + RoPE, attention over the paged KV cache (pages in device memory), the gated MLP
// activation, the residual adds and the logit rules' values. bench/gpu/README.md has the
// design and the measurements. Built only when CUDA is found (CMake option PONDER_CUDA);
// no CUDA type appears in this header.
//
// Activations cross the contract as host rows (exec/backend.h): each call downloads its
// outputs, d floats per row, and uploads inputs the device does not already hold (the core
// state a CoreStep returned and the embeddings being iterated stay where they are;
// CoreSteps keeps the state on the device across its iterations). Keys and values never
// leave the device; with device signals on, neither do the logits of a check.

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
  // The steps run back to back on the device (one CUDA graph for all of them where a single
  // step would have one); only the last one's state comes to the host.
  void CoreSteps(std::span<const Chunk> chunks, std::span<const int64_t> iterations, int64_t steps,
                 const float* e, float* s) override;
  void Coda(std::span<const Chunk> chunks, const float* s, bool last_only, float* logits) override;
  // With device signals on, the rules' values are computed next to the logits (in double,
  // as the host computes them) and only they come back; LastLogits then copies the rows
  // asked for. Off (the default until a GPU run has checked the device path against the
  // host's), the logits come to the host, which computes as the CPU backend does.
  void CodaChecks(std::span<const Chunk> chunks, const float* s, std::span<const LogitCheck> checks,
                  double* values) override;
  void LastLogits(std::span<const size_t> which, float* logits) override;
  std::unique_ptr<LogitHistory> NewLogitHistory() override;
  // Set between requests, not inside one: a token's checks keep their history on one side.
  void set_device_signals(bool on);
  // cuBLAS chooses its kernels by shape, so a row's sums may depend on the batch size.
  void set_batch_invariant(bool) override {}
  bool batch_invariant() const override { return false; }
  PageMemory* page_memory() override;

  const DeviceInfo& device() const;
  // Bytes of weights held on the device.
  uint64_t device_weight_bytes() const;
  // Waits for the device to finish the work queued so far.
  void Synchronize();
  // Which kernel computes a product with bf16 weights, by its number of input rows: up to
  // `max_rows` of set_gemv (8 at most; default kGemvDefaultRows) the backend's GemvKernel
  // (CUDA cores); then up to `max_rows` of set_mma (32 at most; default kMmaDefaultRows) its
  // MmaKernel (tensor cores, each input as two bf16 parts); more rows, and every product
  // with f32 weights, cuBLAS (inputs as two bf16 parts). No path rounds the f32 inputs to
  // bf16. 0 turns a kernel off. `block_rows` (4 or 8) is the output rows each GemvKernel
  // block computes.
  void set_gemv(int64_t max_rows, int block_rows = 4);
  void set_mma(int64_t max_rows);
  // On an H200 GemvKernel is the fastest path up to 3 rows and cuBLAS from 4
  // (bench/gpu/README.md). MmaKernel stays off until a GPU run shows its tile design beating
  // cuBLAS (its first design did not).
  static constexpr int64_t kGemvDefaultRows = 3;
  static constexpr int64_t kMmaDefaultRows = 0;
  // Device time of CoreStep by stage (set_profile(true): an event after each kernel, which
  // slows the steps a little). TakeProfile returns the milliseconds per stage summed since
  // the last call, in first-seen order, with the number of CoreSteps in `steps`, and resets.
  void set_profile(bool on);
  // Decode core steps replay a CUDA graph of the step (or of CoreSteps' steps), whichever
  // kernels compute their products (on by default; profiling runs without).
  void set_graphs(bool on);
  // Whether graphs are on (a failed capture turns them off, with a message on stderr).
  bool graphs() const;
  // Programmatic dependent launch between the backend's kernels (off by default, until a
  // GPU run has measured it): each kernel is scheduled while the one before it runs and
  // waits for it before touching activations; MmaKernel loads its first weights meanwhile.
  void set_pdl(bool on);
  // The small kernels' lean forms (off by default, until a GPU run has checked and timed
  // them), each doing the same arithmetic in the same order: RoPE (with the qk bias and the
  // KV store) and attention in one kernel for calls whose every sequence has one new row
  // (decode), one launch fewer per layer; and norms that hold their row in registers (rows
  // up to 8192 wide), issuing every load at the start instead of one pass after each
  // reduction.
  void set_lean_kernels(bool on);
  std::vector<std::pair<std::string, double>> TakeProfile(int64_t* steps);
  // Milliseconds of one core iteration's matrix products alone (the adapter and each core
  // layer's four) for `rows` input rows, the median of `repeats` timed with device events.
  [[nodiscard]] Result<double> TimeCoreProducts(int64_t rows, int repeats);

 private:
  CudaModel(const model::Config& config, const model::Weights& weights);
  // Coda on the device; with `head`, ln_f + head of the selected rows too, whose logits it
  // returns (device memory, *rows rows of V) without waiting for them.
  const float* CodaOnDevice(std::span<const Chunk> chunks, const float* s, bool last_only,
                            bool head, int64_t* rows);
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Devices visible to this process (0 when there is no driver or no device).
int DeviceCount();

// Device-to-device copy bandwidth of `device` in bytes per second counting reads and
// writes (2 x bytes per copy), the median of `repeats` copies of `bytes`.
[[nodiscard]] Result<double> MeasureCopyBandwidth(int device, uint64_t bytes, int repeats);

}  // namespace ponder::exec::cuda
