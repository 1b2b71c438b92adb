#include "ultramem/io/safetensors.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>

#include "src/io/atomic_file.h"

namespace um::io {

using json = nlohmann::json;

static const char* st_dtype(DType t) {
  switch (t) {
    case DType::f32: return "F32";
    case DType::f64: return "F64";
    case DType::bf16: return "BF16";
    case DType::f16: return "F16";
    case DType::i32: return "I32";
    case DType::i64: return "I64";
    case DType::u16: return "U16";
    case DType::u32: return "U32";
  }
  return "?";
}

static bool parse_st_dtype(const std::string& s, DType* out) {
  for (DType t : {DType::f32, DType::f64, DType::bf16, DType::f16, DType::i32, DType::i64, DType::u16, DType::u32})
    if (s == st_dtype(t)) {
      *out = t;
      return true;
    }
  return false;
}

void save_safetensors(const std::string& path, const std::vector<NamedTensor>& tensors,
                      const std::map<std::string, std::string>& metadata) {
  json header = json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  uint64_t offset = 0;
  for (const auto& nt : tensors) {
    uint64_t bytes = nt.tensor.nbytes();
    header[nt.name] = {{"dtype", st_dtype(nt.tensor.dtype())},
                       {"shape", nt.tensor.shape().vec()},
                       {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  std::string h = header.dump();
  h.append((8 - h.size() % 8) % 8, ' ');  // the format pads the header to 8 bytes with spaces
  AtomicFile file(path);
  uint64_t n = h.size();
  file.write(&n, 8);
  file.write(h.data(), h.size());
  for (const auto& nt : tensors) {
    Tensor host = nt.tensor.device().is_cpu() ? nt.tensor : nt.tensor.to(Device::cpu());
    file.write(host.data(), host.nbytes());
  }
  file.commit();
}

SafetensorsReader::SafetensorsReader(const std::string& path) : path_(path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(path, "a readable safetensors file", std::strerror(errno));
  in.seekg(0, std::ios::end);
  uint64_t file_size = uint64_t(in.tellg());
  in.seekg(0);
  uint64_t n = 0;
  if (file_size < 8 || !in.read(reinterpret_cast<char*>(&n), 8))
    throw Error(path, "an 8-byte header length", detail::concat(file_size, " bytes in the file"));
  if (n > file_size - 8 || n > (uint64_t(100) << 20))
    throw Error(path, detail::concat("a header length within the file's ", file_size, " bytes (and under 100 MiB)"),
                std::to_string(n));
  std::string h(n, '\0');
  in.read(h.data(), std::streamsize(n));
  json header;
  try {
    header = json::parse(h);
  } catch (const json::exception& e) {
    throw Error(path, "a JSON safetensors header", e.what());
  }
  if (!header.is_object()) throw Error(path, "a JSON object header", header.type_name());
  data_start_ = 8 + n;
  uint64_t data_bytes = file_size - data_start_;
  std::vector<std::pair<uint64_t, uint64_t>> ranges;
  for (auto it = header.begin(); it != header.end(); ++it) {
    const std::string where = path + ": tensor \"" + it.key() + "\"";
    if (it.key() == "__metadata__") {
      if (!it.value().is_object()) throw Error(where, "an object of strings", it.value().type_name());
      for (auto m = it.value().begin(); m != it.value().end(); ++m)
        if (m.value().is_string()) metadata_[m.key()] = m.value().get<std::string>();
      continue;
    }
    const json& e = it.value();
    if (!e.is_object() || !e.contains("dtype") || !e.contains("shape") || !e.contains("data_offsets"))
      throw Error(where, "an object with dtype, shape and data_offsets", e.dump());
    Entry entry;
    if (!e["dtype"].is_string() || !parse_st_dtype(e["dtype"].get<std::string>(), &entry.dtype))
      throw Error(where, "a dtype among F32 F64 BF16 F16 I32 I64 U16 U32", e["dtype"].dump());
    const json& shape = e["shape"];
    if (!shape.is_array() || shape.size() > size_t(Shape::kMaxDims))
      throw Error(where, "a shape of at most 5 dimensions", shape.dump());
    std::vector<int64_t> dims;
    uint64_t count = 1;
    for (const json& d : shape) {
      if (!d.is_number_unsigned() || d.get<uint64_t>() > (uint64_t(1) << 40))
        throw Error(where, "non-negative dimensions below 2^40", shape.dump());
      dims.push_back(d.get<int64_t>());
      count *= d.get<uint64_t>();
      if (count > (uint64_t(1) << 44)) throw Error(where, "a tensor below 2^44 elements", shape.dump());
    }
    entry.shape = Shape(dims);
    const json& off = e["data_offsets"];
    if (!off.is_array() || off.size() != 2 || !off[0].is_number_unsigned() || !off[1].is_number_unsigned())
      throw Error(where, "data_offsets [begin, end] of non-negative integers", off.dump());
    entry.begin = off[0].get<uint64_t>();
    entry.end = off[1].get<uint64_t>();
    if (entry.begin > entry.end || entry.end > data_bytes)
      throw Error(where, detail::concat("a byte range inside the ", data_bytes, "-byte data section"), off.dump());
    if (entry.end - entry.begin != count * dtype_size(entry.dtype))
      throw Error(where, detail::concat(count * dtype_size(entry.dtype), " bytes for shape ", entry.shape.str()),
                  detail::concat(entry.end - entry.begin, " bytes"));
    ranges.push_back({entry.begin, entry.end});
    entries_[it.key()] = entry;
  }
  std::sort(ranges.begin(), ranges.end());
  for (size_t i = 1; i < ranges.size(); ++i)
    if (ranges[i].first < ranges[i - 1].second)
      throw Error(path, "tensors with disjoint byte ranges", detail::concat("an overlap at byte ", ranges[i].first));
}

void SafetensorsReader::read_into(const std::string& name, const Tensor& dst) const {
  auto it = entries_.find(name);
  if (it == entries_.end()) throw Error(path_, "a tensor named \"" + name + "\"", "none (missing from the file)");
  const Entry& e = it->second;
  if (e.shape != dst.shape() || e.dtype != dst.dtype())
    throw Error(path_ + ": tensor \"" + name + "\"", std::string(dtype_name(dst.dtype())) + " " + dst.shape().str(),
                std::string(dtype_name(e.dtype)) + " " + e.shape.str());
  std::ifstream in(path_, std::ios::binary);
  in.seekg(std::streamoff(data_start_ + e.begin));
  Tensor host = dst.device().is_cpu() ? dst : Tensor::empty(dst.shape(), dst.dtype(), Device::cpu());
  if (!in.read(static_cast<char*>(host.data()), std::streamsize(e.end - e.begin)))
    throw Error(path_ + ": tensor \"" + name + "\"", "its bytes to be readable", "a short read");
  if (!dst.device().is_cpu()) dst.copy_from(host);
}

}  // namespace um::io
