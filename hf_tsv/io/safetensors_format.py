"""The safetensors file layout, read and written directly so headers can be checked without loading
tensors and outputs can be written one tensor at a time.

Format: 8-byte little-endian header length N, N bytes of JSON ``{key: {"dtype", "shape",
"data_offsets": [begin, end]}, "__metadata__": {...}}``, then the tensor bytes.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import MergeInputError
from .output import naming_file

DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}
if hasattr(torch, "float8_e4m3fn"):
    DTYPES["F8_E4M3"] = torch.float8_e4m3fn
    DTYPES["F8_E5M2"] = torch.float8_e5m2
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
MAX_HEADER_BYTES = 100 * 1024 * 1024


@dataclass(frozen=True)
class TensorInfo:
    """Where a tensor lives and what it is, known from a header alone."""

    dtype: torch.dtype
    shape: tuple[int, ...]
    file: Path
    offset: int = -1  # where the tensor's bytes start in ``file`` (safetensors only)

    @property
    def nbytes(self) -> int:
        count = 1
        for d in self.shape:
            count *= d
        return count * torch.empty((), dtype=self.dtype).element_size()


def _is_count(value: object) -> bool:
    """A JSON non-negative integer (``true``/``false`` are not numbers here)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _entry_info(path: Path, who: str, key: str, entry: object, data_start: int, data_size: int) -> TensorInfo:
    """One header entry ``{"dtype", "shape", "data_offsets"}`` checked against the file's data size."""
    def corrupt(problem: str) -> MergeInputError:
        return MergeInputError(f"{who}: {path} key {key!r} is corrupt ({problem}); re-download or re-save it")

    if not isinstance(entry, dict):
        raise corrupt(f"its header entry is a JSON {type(entry).__name__}, not an object")
    dtype_name = entry.get("dtype")
    dtype = DTYPES.get(dtype_name) if isinstance(dtype_name, str) else None
    if dtype is None:
        raise MergeInputError(f"{who}: {path} key {key!r} has unsupported dtype {dtype_name!r} "
                              f"(supported: {', '.join(DTYPES)})")
    shape, offsets = entry.get("shape"), entry.get("data_offsets")
    if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
        raise corrupt("'shape' must be a list of non-negative integers")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_count(o) for o in offsets):
        raise corrupt("'data_offsets' must be [begin, end], two non-negative integers")
    begin, end = offsets
    if begin > end:
        raise corrupt(f"data_offsets [{begin}, {end}] end before they begin")
    if end > data_size:
        raise MergeInputError(f"{who}: {path} is truncated or corrupt: key {key!r} has data_offsets [{begin}, {end}] "
                              f"beyond the {data_size} bytes of tensor data; re-download or re-save it")
    info = TensorInfo(dtype, tuple(shape), path, data_start + begin)
    if end - begin != info.nbytes:
        raise corrupt("offsets do not match its shape")
    return info


def read_header(path: Path, who: str) -> dict[str, TensorInfo]:
    """Parse and validate a safetensors header; raise a clear error for a truncated or corrupt file: every
    entry must be ``{"dtype", "shape", "data_offsets"}`` of known dtype, with offsets inside the data, matching
    the shape, not overlapping, and ending where the file ends."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                raise MergeInputError(f"{who}: {path} is truncated or not a safetensors file ({size} bytes)")
            (header_len,) = struct.unpack("<Q", raw)
            if header_len > min(MAX_HEADER_BYTES, size - 8):
                raise MergeInputError(f"{who}: {path} is truncated or not a safetensors file (header claims "
                                      f"{header_len} bytes, file has {size}); re-download or re-save it")
            header_bytes = f.read(header_len)
    except OSError as exc:
        raise MergeInputError(f"{who}: cannot read {path} ({exc.strerror or type(exc).__name__})") from None
    try:
        header = json.loads(header_bytes)
    except (ValueError, RecursionError) as exc:  # bad JSON or UTF-8, huge integers, deep nesting
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc).splitlines()[0][:200]
        raise MergeInputError(f"{who}: {path} has a corrupt safetensors header ({reason})") from None
    if not isinstance(header, dict):
        raise MergeInputError(f"{who}: {path} has a corrupt safetensors header (a JSON {type(header).__name__}, "
                              "not an object); re-download or re-save it")
    if not isinstance(header.pop("__metadata__", {}), dict):
        raise MergeInputError(f"{who}: {path} has a corrupt safetensors header ('__metadata__' is not an object)")
    data_start, data_size = 8 + header_len, size - 8 - header_len
    infos = {key: _entry_info(path, who, key, entry, data_start, data_size) for key, entry in header.items()}
    spans = sorted((info.offset, info.offset + info.nbytes, key) for key, info in infos.items())
    for (_, end, first), (begin, _, second) in zip(spans, spans[1:]):
        if begin < end:
            raise MergeInputError(f"{who}: {path} is corrupt: the bytes of keys {first!r} and {second!r} overlap; "
                                  "re-download or re-save it")
    data_end = max((end for _, end, _ in spans), default=data_start)
    if size != data_end:
        raise MergeInputError(
            f"{who}: {path} is truncated or corrupt: the header describes {data_end} bytes "
            f"but the file has {size}; re-download or re-save it")
    return infos


def read_tensor(info: TensorInfo) -> torch.Tensor:
    """Read one tensor's bytes with a plain file read (no mmap, so untouched files add nothing to RSS)."""
    buffer = bytearray(info.nbytes)
    with open(info.file, "rb") as f:
        f.seek(info.offset)
        if f.readinto(buffer) != info.nbytes:
            raise MergeInputError(f"{info.file} ended early while reading a tensor; the file is truncated")
    if not buffer:
        return torch.empty(info.shape, dtype=info.dtype)
    return torch.frombuffer(buffer, dtype=info.dtype).reshape(info.shape)


class SafetensorsFileWriter:
    """Writes one safetensors file whose keys, dtypes and shapes are known in advance, one tensor at a
    time, in any order. Nothing is held in memory beyond the tensor being written.

    Example:
        >>> w = SafetensorsFileWriter("/tmp/x.safetensors", {"a": (torch.float32, (2, 2))})  # doctest: +SKIP
        >>> w.write("a", torch.zeros(2, 2)); w.close()  # doctest: +SKIP
    """

    def __init__(self, path: str | os.PathLike, layout: dict[str, tuple[torch.dtype, tuple[int, ...]]],
                 metadata: dict[str, str] | None = None, *, create: bool = True, keys: Iterable[str] | None = None):
        """``create``: write the header and pre-size the file; else open the file another process of a sharded
        merge created from the same layout (its header must be this layout's) and write tensors into it.
        ``keys``: the keys this writer must write before :meth:`close` (default: all of them)."""
        self.path = Path(path)
        self._create = create
        self._layout = layout
        header: dict = {"__metadata__": dict(metadata or {"format": "pt"})}
        offset = 0
        self._offsets: dict[str, int] = {}
        for key, (dtype, shape) in layout.items():
            nbytes = TensorInfo(dtype, tuple(shape), self.path).nbytes
            header[key] = {"dtype": DTYPE_NAMES[dtype], "shape": list(shape),
                           "data_offsets": [offset, offset + nbytes]}
            self._offsets[key] = offset
            offset += nbytes
        encoded = json.dumps(header, separators=(",", ":")).encode()
        encoded += b" " * (-len(encoded) % 8)  # keep tensor data 8-byte aligned, as safetensors does
        self._data_start = 8 + len(encoded)
        head = struct.pack("<Q", len(encoded)) + encoded
        with naming_file(self.path):  # a failed write (disk full...) names this file
            if create:
                self._file = open(self.path, "wb")
                self._file.write(head)
                self._file.truncate(self._data_start + offset)
            else:
                self._file = open(self.path, "r+b")
                if self._file.read(len(head)) != head or os.path.getsize(self.path) != self._data_start + offset:
                    self._file.close()
                    raise RuntimeError(f"{self.path} was not created from this layout; the processes of a sharded "
                                       "merge must plan the same output")
        self._pending = set(layout) if keys is None else set(layout).intersection(keys)

    def write(self, key: str, tensor: torch.Tensor) -> None:
        dtype, shape = self._layout[key]
        if tensor.dtype != dtype or tuple(tensor.shape) != tuple(shape):
            raise ValueError(f"{key}: expected {dtype} {tuple(shape)}, got {tensor.dtype} {tuple(tensor.shape)}")
        data = tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy()
        with naming_file(self.path):
            self._file.seek(self._data_start + self._offsets[key])
            self._file.write(memoryview(data))
        self._pending.discard(key)

    def close(self) -> None:
        if self._pending:
            self._file.close()
            raise RuntimeError(f"{self.path}: {len(self._pending)} tensors were never written, "
                               f"e.g. {sorted(self._pending)[0]!r}")
        with naming_file(self.path):
            if not self._create:  # another process renames the folder into place: its bytes must be on disk
                self._file.flush()
                os.fsync(self._file.fileno())
            self._file.close()
