"""Atomic, streaming checkpoint output: a temporary folder renamed into place when complete, and
sharded safetensors written one tensor at a time."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch

from ..errors import MergeInputError, OutputExistsError
from .safetensors_format import SafetensorsFileWriter, TensorInfo

DEFAULT_MAX_SHARD_SIZE = "5GB"
_UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def parse_size(size: int | str) -> int:
    """Bytes from an int or a string like ``"5GB"`` / ``"500MiB"`` (transformers' convention).

    Example:
        >>> parse_size("2MB")
        2000000
    """
    if isinstance(size, int):
        return size
    match = re.fullmatch(r"\s*([0-9.]+)\s*([KMGT]?I?B)\s*", size.upper())
    if not match:
        raise MergeInputError(f"cannot read size {size!r}; write e.g. '5GB' or '500MiB'")
    return int(float(match.group(1)) * _UNITS[match.group(2)])


def check_output_dir(path: str | os.PathLike, overwrite: bool) -> Path:
    """Refuse early (before any heavy work) an output folder that exists and holds files."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"output {out} exists and is not a folder; choose another path")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise OutputExistsError(f"output folder {out} exists and is not empty; "
                                "pass --overwrite (overwrite=True) to replace it, or choose another path")
    return out


@contextlib.contextmanager
def atomic_output_dir(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; on success it replaces ``path``, on error it is removed.

    Example:
        >>> with atomic_output_dir("/tmp/merged", overwrite=True) as tmp:  # doctest: +SKIP
        ...     (tmp / "config.json").write_text("{}")
    """
    out = check_output_dir(path, overwrite).absolute()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{tmp.name.rsplit('-', 1)[-1]}"
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


class ShardedSafetensorsWriter:
    """Writes a transformers-style checkpoint (``model.safetensors`` or shards plus an index) whose layout
    is known in advance, one tensor at a time, so no model is ever held whole in memory.

    Example:
        >>> layout = {"w": (torch.float32, (4, 4))}
        >>> w = ShardedSafetensorsWriter("/tmp/out", layout)  # doctest: +SKIP
        >>> w.write("w", torch.eye(4)); w.close()  # doctest: +SKIP
    """

    def __init__(self, folder: str | os.PathLike, layout: dict[str, tuple[torch.dtype, tuple[int, ...]]],
                 max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE, file_stem: str = "model"):
        self.folder = Path(folder)
        self.index_name = f"{file_stem}.safetensors.index.json"
        limit = parse_size(max_shard_size)
        shards: list[dict] = [{}]
        size = 0
        for key, (dtype, shape) in layout.items():
            nbytes = TensorInfo(dtype, tuple(shape), self.folder).nbytes
            if shards[-1] and size + nbytes > limit:
                shards.append({})
                size = 0
            shards[-1][key] = (dtype, tuple(shape))
            size += nbytes
        self.total_size = sum(TensorInfo(d, tuple(s), self.folder).nbytes for d, s in layout.values())
        if len(shards) == 1:
            names = [f"{file_stem}.safetensors"]
        else:
            names = [f"{file_stem}-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
        self._writers = [SafetensorsFileWriter(self.folder / n, s) for n, s in zip(names, shards)]
        self.weight_map = {key: name for name, shard in zip(names, shards) for key in shard}
        self._writer_of = {key: w for w, shard in zip(self._writers, shards) for key in shard}

    def write(self, key: str, tensor: torch.Tensor) -> None:
        self._writer_of[key].write(key, tensor)

    def close(self) -> None:
        for w in self._writers:
            w.close()
        if len(self._writers) > 1:
            index = {"metadata": {"total_size": self.total_size}, "weight_map": self.weight_map}
            (self.folder / self.index_name).write_text(json.dumps(index, indent=2, sort_keys=True))
