#include "model/safetensors.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <new>
#include <nlohmann/json.hpp>

#include "core/file.h"

namespace ponder::model {
namespace {

using Json = nlohmann::json;

std::string Quote(const std::string& s) { return "'" + s + "'"; }

Status TensorError(const std::string& path, const std::string& name, const std::string& what) {
  return InvalidArgument(path + ": tensor " + Quote(name) + ": " + what);
}

// Closes a file descriptor on scope exit.
struct FdCloser {
  int fd;
  ~FdCloser() {
    if (fd >= 0) ::close(fd);
  }
};

bool ParseDType(const std::string& s, DType* out) {
  if (s == "F32") {
    *out = DType::kF32;
  } else if (s == "BF16") {
    *out = DType::kBF16;
  } else if (s == "F16") {
    *out = DType::kF16;
  } else {
    return false;
  }
  return true;
}

// A non-negative integer that fits in uint64 (JSON numbers of the header).
bool AsUnsigned(const Json& v, uint64_t* out) {
  if (v.is_number_unsigned()) {
    *out = v.get<uint64_t>();
    return true;
  }
  if (v.is_number_integer()) {
    const int64_t i = v.get<int64_t>();
    if (i < 0) return false;
    *out = static_cast<uint64_t>(i);
    return true;
  }
  return false;
}

struct Range {
  uint64_t begin, end;
  const std::string* name;
};

}  // namespace

SafetensorsFile::~SafetensorsFile() = default;

Result<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Open(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    const int err = errno;
    const std::string msg = path + ": cannot open: " + std::strerror(err);
    return err == ENOENT ? NotFound(msg) : InvalidArgument(msg);
  }
  FdCloser closer{fd};
  struct stat st;
  if (::fstat(fd, &st) != 0)
    return InvalidArgument(path + ": fstat failed: " + std::strerror(errno));
  if (!S_ISREG(st.st_mode)) return InvalidArgument(path + ": not a regular file");
  const uint64_t size = static_cast<uint64_t>(st.st_size);
  // The bytes are read into memory the process owns: a file replaced or rewritten on disk
  // while the model serves cannot change or take away the weights in use.
  std::unique_ptr<unsigned char[]> bytes(new (std::nothrow) unsigned char[size]);
  if (bytes == nullptr) {
    return ResourceExhausted(path + ": cannot allocate " + std::to_string(size) + " bytes");
  }
  uint64_t got = 0;
  while (got < size) {
    const ssize_t n = ::read(fd, bytes.get() + got, std::min<uint64_t>(size - got, 1ull << 30));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return InvalidArgument(path + ": read failed: " + std::strerror(errno));
    if (n == 0) {
      return DataLoss(path + ": the file shrank while it was read (" + std::to_string(got) +
                      " of " + std::to_string(size) + " bytes)");
    }
    got += static_cast<uint64_t>(n);
  }
  return Parse(std::move(bytes), size, path);
}

Result<std::unique_ptr<SafetensorsFile>> SafetensorsFile::FromBytes(std::string_view bytes,
                                                                    const std::string& name) {
  std::unique_ptr<unsigned char[]> copy(new unsigned char[bytes.size()]);
  if (!bytes.empty()) std::memcpy(copy.get(), bytes.data(), bytes.size());
  return Parse(std::move(copy), bytes.size(), name);
}

Result<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Parse(
    std::unique_ptr<unsigned char[]> bytes, uint64_t size, const std::string& path) {
  if (size < 8) {
    return DataLoss(path + ": file is " + std::to_string(size) +
                    " bytes, too short for the 8-byte header length");
  }
  std::unique_ptr<SafetensorsFile> file(new SafetensorsFile());
  file->path_ = path;
  file->bytes_ = std::move(bytes);
  file->size_ = size;
  const unsigned char* base = file->bytes_.get();

  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | base[i];  // little-endian
  if (header_len > kMaxHeaderBytes) {
    return InvalidArgument(path + ": header length " + std::to_string(header_len) +
                           " exceeds the limit of " + std::to_string(kMaxHeaderBytes) + " bytes");
  }
  if (header_len > size - 8) {
    return DataLoss(path + ": header length " + std::to_string(header_len) +
                    " runs past the end of the file (" + std::to_string(size) + " bytes)");
  }
  const uint64_t data_size = size - 8 - header_len;
  const unsigned char* data = base + 8 + header_len;

  Json header;
  try {
    header = Json::parse(base + 8, base + 8 + header_len);
  } catch (const Json::exception& e) {
    return InvalidArgument(path + ": malformed header JSON: " + e.what());
  }
  if (!header.is_object()) {
    return InvalidArgument(path + ": header is not a JSON object but " +
                           std::string(header.type_name()));
  }

  std::vector<Range> ranges;
  for (auto it = header.begin(); it != header.end(); ++it) {
    const std::string& name = it.key();
    const Json& entry = it.value();
    if (name == "__metadata__") {
      if (!entry.is_object()) return InvalidArgument(path + ": __metadata__ is not an object");
      for (auto m = entry.begin(); m != entry.end(); ++m) {
        if (!m.value().is_string()) {
          return InvalidArgument(path + ": __metadata__." + m.key() + " is not a string");
        }
        file->metadata_[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    if (!entry.is_object()) return TensorError(path, name, "entry is not a JSON object");

    auto dtype_it = entry.find("dtype");
    if (dtype_it == entry.end() || !dtype_it->is_string()) {
      return TensorError(path, name, "missing or non-string dtype");
    }
    TensorView view;
    const std::string dtype_name = dtype_it->get<std::string>();
    if (!ParseDType(dtype_name, &view.dtype)) {
      return TensorError(path, name,
                         "unsupported dtype " + dtype_name + " (supported: F32, BF16, F16)");
    }

    auto shape_it = entry.find("shape");
    if (shape_it == entry.end() || !shape_it->is_array()) {
      return TensorError(path, name, "missing or non-array shape");
    }
    uint64_t numel = 1;
    for (const Json& d : *shape_it) {
      uint64_t dim = 0;
      if (!AsUnsigned(d, &dim) || dim > static_cast<uint64_t>(INT64_MAX)) {
        return TensorError(path, name,
                           "shape entry " + d.dump() + " is not a non-negative integer");
      }
      if (__builtin_mul_overflow(numel, dim, &numel)) {
        return TensorError(path, name, "shape " + shape_it->dump() + " overflows");
      }
      view.shape.push_back(static_cast<int64_t>(dim));
    }
    uint64_t expected_bytes = 0;
    if (__builtin_mul_overflow(numel, static_cast<uint64_t>(DTypeSize(view.dtype)),
                               &expected_bytes) ||
        numel > static_cast<uint64_t>(INT64_MAX)) {
      return TensorError(path, name, "shape " + shape_it->dump() + " overflows");
    }

    auto off_it = entry.find("data_offsets");
    uint64_t begin = 0, end = 0;
    if (off_it == entry.end() || !off_it->is_array() || off_it->size() != 2 ||
        !AsUnsigned((*off_it)[0], &begin) || !AsUnsigned((*off_it)[1], &end)) {
      return TensorError(path, name, "data_offsets must be [begin, end] non-negative integers");
    }
    if (begin > end) {
      return TensorError(path, name,
                         "data_offsets " + off_it->dump() + " has begin greater than end");
    }
    if (end > data_size) {
      return Status(StatusCode::kDataLoss, path + ": tensor " + Quote(name) + ": data_offsets " +
                                               off_it->dump() + " run past the data section (" +
                                               std::to_string(data_size) +
                                               " bytes; file truncated?)");
    }
    if (end - begin != expected_bytes) {
      return TensorError(path, name,
                         "byte length " + std::to_string(end - begin) + " does not match shape " +
                             ShapeString(view.shape) + " x " + DTypeName(view.dtype) + " = " +
                             std::to_string(expected_bytes) + " bytes");
    }
    view.data = data + begin;
    auto [slot, inserted] = file->tensors_.emplace(name, std::move(view));
    ranges.push_back({begin, end, &slot->first});
  }

  // Overlap check: sort by start; empty tensors occupy no bytes and cannot overlap.
  std::erase_if(ranges, [](const Range& r) { return r.begin == r.end; });
  std::sort(ranges.begin(), ranges.end(),
            [](const Range& a, const Range& b) { return a.begin < b.begin; });
  for (size_t i = 1; i < ranges.size(); ++i) {
    if (ranges[i].begin < ranges[i - 1].end) {
      return InvalidArgument(
          path + ": tensor " + Quote(*ranges[i].name) + " bytes [" +
          std::to_string(ranges[i].begin) + ", " + std::to_string(ranges[i].end) +
          ") overlap tensor " + Quote(*ranges[i - 1].name) + " bytes [" +
          std::to_string(ranges[i - 1].begin) + ", " + std::to_string(ranges[i - 1].end) + ")");
    }
  }
  return file;
}

const TensorView* TensorStore::Find(const std::string& name) const {
  auto it = tensors_.find(name);
  return it == tensors_.end() ? nullptr : &it->second;
}

std::string TensorStore::FileOf(const std::string& name) const {
  auto it = file_index_.find(name);
  return it == file_index_.end() ? std::string() : files_[it->second]->path();
}

uint64_t TensorStore::loaded_bytes() const {
  uint64_t total = 0;
  for (const auto& f : files_) total += f->file_bytes();
  return total;
}

std::vector<std::string> TensorStore::file_paths() const {
  std::vector<std::string> paths;
  for (const auto& f : files_) paths.push_back(f->path());
  return paths;
}

Result<TensorStore> TensorStore::OpenFile(const std::string& path) {
  PONDER_ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsFile> file, SafetensorsFile::Open(path));
  TensorStore store;
  store.tensors_ = file->tensors();
  for (const auto& [name, view] : store.tensors_) store.file_index_[name] = 0;
  store.files_.push_back(std::move(file));
  return store;
}

Result<TensorStore> TensorStore::OpenDir(const std::string& dir) {
  namespace fs = std::filesystem;
  const fs::path index_path = fs::path(dir) / "model.safetensors.index.json";
  std::error_code ec;
  if (!fs::exists(index_path, ec)) {
    const fs::path single = fs::path(dir) / "model.safetensors";
    if (!fs::exists(single, ec)) {
      return NotFound(single.string() + ": no such file (and no " + index_path.string() + ")");
    }
    return OpenFile(single.string());
  }

  const std::string index_name = index_path.string();
  PONDER_ASSIGN_OR_RETURN(const std::string text, ReadTextFile(index_name, "the shard index"));
  Json index;
  try {
    index = Json::parse(text);
  } catch (const Json::exception& e) {
    return InvalidArgument(index_name + ": malformed JSON: " + e.what());
  }
  if (!index.is_object()) return InvalidArgument(index_name + ": not a JSON object");
  auto wm = index.find("weight_map");
  if (wm == index.end() || !wm->is_object()) {
    return InvalidArgument(index_name + ": weight_map is missing or not an object");
  }

  // Shards in first-seen order, each with one tensor that needs it (for error messages).
  std::vector<std::string> shards;
  std::map<std::string, std::string> first_user;
  for (auto it = wm->begin(); it != wm->end(); ++it) {
    if (!it.value().is_string()) {
      return InvalidArgument(index_name + ": weight_map." + it.key() + " is not a string");
    }
    const std::string shard = it.value().get<std::string>();
    const fs::path rel(shard);
    bool escapes = rel.empty() || rel.is_absolute();
    for (const auto& part : rel) escapes = escapes || part == "..";
    if (escapes) {
      return InvalidArgument(index_name + ": weight_map." + it.key() + ": shard " + Quote(shard) +
                             " is not a file name inside the checkpoint directory");
    }
    if (first_user.emplace(shard, it.key()).second) shards.push_back(shard);
  }

  TensorStore store;
  std::map<std::string, size_t> shard_index;
  for (const std::string& shard : shards) {
    const std::string shard_path = (fs::path(dir) / shard).string();
    if (!fs::exists(shard_path, ec)) {
      return NotFound(shard_path + ": shard file not found (listed in " + index_name +
                      " for tensor " + Quote(first_user[shard]) + ")");
    }
    PONDER_ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsFile> file,
                            SafetensorsFile::Open(shard_path));
    const size_t idx = store.files_.size();
    shard_index[shard] = idx;
    for (const auto& [name, view] : file->tensors()) {
      auto [it, inserted] = store.tensors_.emplace(name, view);
      if (!inserted) {
        return InvalidArgument("tensor " + Quote(name) + " is stored twice: in " +
                               store.files_[store.file_index_[name]]->path() + " and in " +
                               shard_path);
      }
      store.file_index_[name] = idx;
    }
    store.files_.push_back(std::move(file));
  }

  for (auto it = wm->begin(); it != wm->end(); ++it) {
    const std::string shard = it.value().get<std::string>();
    auto where = store.file_index_.find(it.key());
    if (where == store.file_index_.end() || where->second != shard_index[shard]) {
      const std::string shard_path = (fs::path(dir) / shard).string();
      return DataLoss(shard_path + ": tensor " + Quote(it.key()) + " listed in " + index_name +
                      " is absent from this shard");
    }
  }
  return store;
}

}  // namespace ponder::model
