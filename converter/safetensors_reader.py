"""Reads safetensors files into float32 numpy arrays, bfloat16 included, without torch.

The format is an 8-byte header length, a JSON header and raw little-endian tensors; numpy has
no bfloat16, so those are widened by shifting their bits into the top half of a float32.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np

from converter.errors import ConversionError

_DTYPES = {"F32": np.float32, "F16": np.float16, "F64": np.float64, "BF16": np.uint16}


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    data = np.memmap(path, dtype=np.uint8, mode="r")
    if data.size < 8:
        raise ConversionError(f"{path} is too short to be a safetensors file")
    (header_length,) = struct.unpack("<Q", bytes(data[:8]))
    if header_length > data.size - 8:
        raise ConversionError(f"{path} is truncated (header says {header_length} bytes)")
    try:
        header = json.loads(bytes(data[8 : 8 + header_length]))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ConversionError(f"{path} has an unreadable safetensors header: {error}") from error
    body = data[8 + header_length :]
    tensors = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        dtype = _DTYPES.get(entry["dtype"])
        if dtype is None:
            raise ConversionError(f"{path}: tensor {name} has unsupported dtype {entry['dtype']}")
        start, end = entry["data_offsets"]
        if end > body.size:
            raise ConversionError(f"{path} is truncated (tensor {name} ends past the file)")
        raw = np.frombuffer(body[start:end], dtype=dtype).reshape(entry["shape"])
        if entry["dtype"] == "BF16":
            raw = (raw.astype(np.uint32) << 16).view(np.float32)
        tensors[name] = raw.astype(np.float32)
    return tensors
