"""Reading .safetensors files with plain reads, tensor by tensor.

The `safetensors` package memory-maps the file: every tensor read stays in the process's resident
memory as mapped file pages until the file is closed, so reading the 2.9 GB UNet of the fp16 release
cost 2.9 GB of file pages on top of the 2.9 GB it was read into. Plain reads into freshly allocated
tensors leave only the tensors. The format is an 8-byte little-endian header length, a JSON header
of {key: {dtype, shape, data_offsets}} and the tensors' bytes after it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Callable, Optional

import torch

DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
_MAX_HEADER = 100 * 1024 * 1024


class SafetensorsError(ValueError):
    """The file is not a well-formed safetensors file; the message says what is wrong."""


def read_header(path: Path) -> tuple[dict[str, dict], int]:
    """({key: {"dtype", "shape", "data_offsets"}}, offset of the data) of a safetensors file, checked:
    every dtype known, every tensor's byte range inside the file and of its shape's size."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise SafetensorsError(f"{size} bytes, shorter than the 8-byte header length")
        n = int.from_bytes(head, "little")
        if n > min(_MAX_HEADER, size - 8):
            raise SafetensorsError(f"header length {n} does not fit the file of {size} bytes")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise SafetensorsError(f"the header is not JSON ({e})") from None
    if not isinstance(header, dict):
        raise SafetensorsError("the header is not a JSON object")
    header.pop("__metadata__", None)
    data = size - 8 - n
    for key, info in header.items():
        try:
            dtype = DTYPES[info["dtype"]]
            start, end = (int(v) for v in info["data_offsets"])
            count = math.prod(int(d) for d in info["shape"])
        except (KeyError, TypeError, ValueError):
            raise SafetensorsError(f"tensor {key!r} has a malformed entry {info!r}") from None
        if not 0 <= start <= end <= data or end - start != count * dtype.itemsize:
            raise SafetensorsError(
                f"tensor {key!r} ({info['dtype']} {info['shape']}) claims bytes {start}..{end} of {data}: the file is "
                "truncated or damaged"
            )
    return header, 8 + n


def read_tensors(path: Path, keep: Optional[Callable[[str], bool]] = None) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file (those whose key `keep` accepts), each read into its own
    CPU tensor in file order."""
    header, base = read_header(path)
    chosen = sorted((info["data_offsets"][0], key) for key, info in header.items() if keep is None or keep(key))
    out = {}
    with open(path, "rb", buffering=0) as f:
        for start, key in chosen:
            info = header[key]
            tensor = torch.empty(info["shape"], dtype=DTYPES[info["dtype"]])
            view = memoryview(tensor.reshape(-1).view(torch.uint8).numpy())
            f.seek(base + start)
            done = 0
            while done < len(view):
                got = f.readinto(view[done:])
                if not got:
                    raise SafetensorsError(f"tensor {key!r} ends past the end of the file")
                done += got
            out[key] = tensor
    return out
