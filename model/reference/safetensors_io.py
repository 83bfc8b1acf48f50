"""Minimal reader and writer for the safetensors file format.

Layout: an 8-byte little-endian unsigned header length N, then N bytes of JSON
(name -> {"dtype", "shape", "data_offsets": [begin, end]}, plus an optional
"__metadata__" map of strings), padded with spaces to a multiple of 8, then the raw
little-endian tensor bytes. Offsets are relative to the start of the data section.
"""

import json
import struct

import numpy as np
import torch

# dtype name -> (numpy storage dtype, torch dtype)
_DTYPES = {
    "F64": (np.float64, torch.float64),
    "F32": (np.float32, torch.float32),
    "F16": (np.float16, torch.float16),
    "BF16": (np.uint16, torch.bfloat16),  # raw bits; converted below
    "I64": (np.int64, torch.int64),
    "I32": (np.int32, torch.int32),
    "I16": (np.int16, torch.int16),
    "I8": (np.int8, torch.int8),
    "U8": (np.uint8, torch.uint8),
    "BOOL": (np.bool_, torch.bool),
}
_TORCH_TO_NAME = {v[1]: k for k, v in _DTYPES.items()}


def _tensor_bytes(t: torch.Tensor) -> bytes:
    t = t.detach().cpu().contiguous()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().astype("<i2").tobytes()
    arr = t.numpy()
    return arr.astype(arr.dtype.newbyteorder("<")).tobytes()


def save_file(tensors, path, metadata=None):
    """Writes `tensors` (name -> torch.Tensor) to `path`. Data are laid out in name order."""
    header = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    blobs = []
    offset = 0
    for name in sorted(tensors):
        t = tensors[name]
        if t.dtype not in _TORCH_TO_NAME:
            raise ValueError(f"unsupported dtype {t.dtype} for {name}")
        data = _tensor_bytes(t)
        header[name] = {
            "dtype": _TORCH_TO_NAME[t.dtype],
            "shape": list(t.shape),
            "data_offsets": [offset, offset + len(data)],
        }
        blobs.append(data)
        offset += len(data)
    hjson = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hjson += b" " * ((8 - len(hjson) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hjson)))
        f.write(hjson)
        for b in blobs:
            f.write(b)


def read_header(path):
    """Returns (header dict without __metadata__, metadata dict, data section start)."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n).decode("utf-8"))
    metadata = header.pop("__metadata__", {}) or {}
    return header, metadata, 8 + n


def load_file(path, dtype=None):
    """Reads every tensor of `path` into name -> torch.Tensor.

    With `dtype` (e.g. torch.float32) floating tensors are converted to it; otherwise
    they keep their stored dtype (BF16 becomes torch.bfloat16)."""
    header, _, start = read_header(path)
    with open(path, "rb") as f:
        f.seek(start)
        data = f.read()
    out = {}
    for name, info in header.items():
        code = info["dtype"]
        if code not in _DTYPES:
            raise ValueError(f"{path}: unsupported dtype {code} for {name}")
        np_dtype, torch_dtype = _DTYPES[code]
        b, e = info["data_offsets"]
        shape = tuple(info["shape"])
        arr = np.frombuffer(data[b:e], dtype=np.dtype(np_dtype).newbyteorder("<"))
        count = int(np.prod(shape)) if shape else 1
        if arr.size != count:
            raise ValueError(f"{path}: {name} has {arr.size} elements, shape says {count}")
        if code == "BF16":
            f32 = (arr.astype(np.uint32) << 16).view(np.float32)
            t = torch.from_numpy(f32.copy()).reshape(shape)
            t = t if dtype is not None else t.to(torch.bfloat16)
        else:
            t = torch.from_numpy(arr.astype(arr.dtype.newbyteorder("="))).reshape(shape).clone()
        if dtype is not None and t.is_floating_point():
            t = t.to(dtype)
        out[name] = t
    return out
