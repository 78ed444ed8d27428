"""Streaming checkpoint output: sharded safetensors written one tensor at a time, into the scratch folder of
:func:`~hf_tsv.io.output.atomic_output_dir` (re-exported here), renamed into place when complete."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from pathlib import Path

import torch

from ..errors import MergeInputError
from ..files import CONFIG_NAME
from .output import atomic_output_dir, check_output_dir, naming_file, write_file_atomic
from .safetensors_format import SafetensorsFileWriter, TensorInfo

__all__ = ["DEFAULT_MAX_SHARD_SIZE", "ShardedSafetensorsWriter", "atomic_output_dir", "check_output_dir", "parse_size",
           "save_config", "save_side_files", "set_config_dtype"]

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


class ShardedSafetensorsWriter:
    """Writes a transformers-style checkpoint (``model.safetensors`` or shards plus an index) whose layout
    is known in advance, one tensor at a time, so no model is ever held whole in memory.

    Example:
        >>> layout = {"w": (torch.float32, (4, 4))}
        >>> w = ShardedSafetensorsWriter("/tmp/out", layout)  # doctest: +SKIP
        >>> w.write("w", torch.eye(4)); w.close()  # doctest: +SKIP
    """

    def __init__(self, folder: str | os.PathLike, layout: dict[str, tuple[torch.dtype, tuple[int, ...]]],
                 max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE, file_stem: str = "model", *,
                 create: bool = True, keys: Iterable[str] | None = None):
        """``create`` and ``keys`` as :class:`~hf_tsv.io.safetensors_format.SafetensorsFileWriter` takes them: in a
        merge sharded over processes, the main process creates (and pre-sizes) every file and writes the index;
        each other process opens them (``create=False``) and writes its ``keys`` at their offsets."""
        self.folder = Path(folder)
        self._create = create
        keys = None if keys is None else set(keys)
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
        self._writers = [SafetensorsFileWriter(self.folder / n, s, create=create, keys=keys)
                         for n, s in zip(names, shards)]
        self.weight_map = {key: name for name, shard in zip(names, shards) for key in shard}
        self._writer_of = {key: w for w, shard in zip(self._writers, shards) for key in shard}

    def write(self, key: str, tensor: torch.Tensor) -> None:
        self._writer_of[key].write(key, tensor)

    def close(self) -> None:
        for w in self._writers:
            w.close()
        if len(self._writers) > 1 and self._create:
            index = {"metadata": {"total_size": self.total_size}, "weight_map": self.weight_map}
            write_file_atomic(self.folder / self.index_name, json.dumps(index, indent=2, sort_keys=True))


def set_config_dtype(config, dtype: torch.dtype) -> None:
    """Record ``dtype`` as the checkpoint's dtype in a transformers ``config`` (``dtype``, or ``torch_dtype`` in
    older transformers)."""
    setattr(config, "dtype" if hasattr(config, "dtype") else "torch_dtype", dtype)


def save_config(folder: str | os.PathLike, config) -> None:
    """Write ``config.json`` of a transformers ``config`` into ``folder`` (an OSError names the file)."""
    with naming_file(Path(folder) / CONFIG_NAME):
        config.save_pretrained(str(folder))


def save_side_files(folder: str | os.PathLike, files: dict[str, bytes]) -> None:
    """Write the base's side files (``{relative name: bytes}``, see :attr:`hf_tsv.adapters.base.Adapter.side_files`)
    into ``folder``, creating their sub-folders (``1_Pooling``)."""
    for name, data in files.items():
        path = Path(folder, *name.split("/"))
        with naming_file(path):
            path.parent.mkdir(exist_ok=True)
        write_file_atomic(path, data)
