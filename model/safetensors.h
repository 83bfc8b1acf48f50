#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "core/status.h"
#include "core/tensor.h"

namespace ponder::model {

// A safetensors file, read into memory the process owns (so that replacing or rewriting
// the file on disk while serving cannot change the weights in use). The header is validated on
// open: its length is bounded (kMaxHeaderBytes), it is JSON with an object per tensor, dtypes are
// F32/BF16/F16, every byte range lies inside the data section, ranges do not overlap, and
// each range's length equals shape x dtype size. Views stay valid while the file lives.
// A view's data may be unaligned for its dtype when the header length is not a multiple of
// the element size (the HF writer pads it to 8, so real checkpoints are aligned); readers
// on strict-alignment targets copy with memcpy.
class SafetensorsFile {
 public:
  static constexpr uint64_t kMaxHeaderBytes = 100ull << 20;  // 100 MiB, as the HF reader

  [[nodiscard]] static Result<std::unique_ptr<SafetensorsFile>> Open(const std::string& path);
  // The same checks on bytes in memory (copied); `name` stands for the path in messages.
  [[nodiscard]] static Result<std::unique_ptr<SafetensorsFile>> FromBytes(std::string_view bytes,
                                                                          const std::string& name);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::string& path() const { return path_; }
  const std::map<std::string, TensorView>& tensors() const { return tensors_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  uint64_t file_bytes() const { return size_; }

 private:
  SafetensorsFile() = default;
  [[nodiscard]] static Result<std::unique_ptr<SafetensorsFile>> Parse(
      std::unique_ptr<unsigned char[]> bytes, uint64_t size, const std::string& path);
  std::string path_;
  std::unique_ptr<unsigned char[]> bytes_;
  uint64_t size_ = 0;
  std::map<std::string, TensorView> tensors_;
  std::map<std::string, std::string> metadata_;
};

// All tensors of a checkpoint directory: `model.safetensors`, or the shards listed in
// `model.safetensors.index.json` (weight_map: tensor name -> shard file). A missing shard,
// a tensor listed in the index but absent from its shard, or a tensor stored twice is an
// error naming the file and the tensor. Tensors a shard holds but the index omits are kept.
class TensorStore {
 public:
  [[nodiscard]] static Result<TensorStore> OpenDir(const std::string& dir);
  [[nodiscard]] static Result<TensorStore> OpenFile(const std::string& path);

  // nullptr when absent.
  const TensorView* Find(const std::string& name) const;
  const std::map<std::string, TensorView>& tensors() const { return tensors_; }
  // Which file holds `name` (for error messages); empty when absent.
  std::string FileOf(const std::string& name) const;
  uint64_t loaded_bytes() const;
  // Paths of the loaded files, in opening order.
  std::vector<std::string> file_paths() const;

 private:
  std::vector<std::shared_ptr<SafetensorsFile>> files_;
  std::map<std::string, TensorView> tensors_;
  std::map<std::string, size_t> file_index_;
};

}  // namespace ponder::model
