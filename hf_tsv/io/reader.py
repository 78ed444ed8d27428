"""Lazy checkpoint reading: tensors are read one key at a time from safetensors (single file or sharded)
or, only if no safetensors exist, from ``pytorch_model.bin`` through ``torch.load(weights_only=True)``."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..errors import MergeInputError
from .safetensors_format import TensorInfo, read_header, read_tensor


def _index_files(index_path: Path, who: str) -> list[Path]:
    try:
        weight_map = json.loads(index_path.read_text())["weight_map"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise MergeInputError(f"{who}: {index_path} is not a valid shard index ({exc})") from exc
    files = sorted({index_path.parent / name for name in weight_map.values()})
    for file in files:
        if not file.is_file():
            raise MergeInputError(f"{who}: shard {file} named in {index_path} is missing")
    return files


class SafetensorsFiles:
    """``{stem}.safetensors`` or ``{stem}-*-of-*.safetensors`` + ``{stem}.safetensors.index.json`` in a folder:
    headers parsed and validated up front, tensors read on demand with plain reads (mmap would count
    every touched page of all T + 1 files in the process's RSS)."""

    def __init__(self, folder: Path, stem: str, who: str):
        single, index = folder / f"{stem}.safetensors", folder / f"{stem}.safetensors.index.json"
        self.main_file = single if single.is_file() else index
        files = [single] if single.is_file() else _index_files(index, who)
        self.infos: dict[str, TensorInfo] = {}
        for file in files:
            self.infos.update(read_header(file, who))

    @staticmethod
    def present(folder: Path, stem: str) -> bool:
        return (folder / f"{stem}.safetensors").is_file() or (folder / f"{stem}.safetensors.index.json").is_file()

    def get(self, key: str) -> torch.Tensor:
        return read_tensor(self.infos[key])


class TorchBinFiles:
    """``pytorch_model.bin`` (or its shards), loaded with ``weights_only=True`` and ``mmap=True`` so tensor
    bytes are paged in only when a key is used. Never unpickles arbitrary objects."""

    def __init__(self, folder: Path, who: str):
        single, index = folder / "pytorch_model.bin", folder / "pytorch_model.bin.index.json"
        self.main_file = single if single.is_file() else index
        files = [single] if single.is_file() else _index_files(index, who)
        self.infos: dict[str, TensorInfo] = {}
        self._tensors: dict[str, torch.Tensor] = {}
        for file in files:
            try:
                state = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
            except Exception as exc:  # noqa: BLE001 - torch raises many types for corrupt files
                raise MergeInputError(f"{who}: cannot read {file} with torch.load(weights_only=True): "
                                      f"{exc}") from exc
            for key, t in state.items():
                if isinstance(t, torch.Tensor):
                    self.infos[key] = TensorInfo(t.dtype, tuple(t.shape), file)
                    self._tensors[key] = t

    @staticmethod
    def present(folder: Path) -> bool:
        return (folder / "pytorch_model.bin").is_file() or (folder / "pytorch_model.bin.index.json").is_file()

    def get(self, key: str) -> torch.Tensor:
        return self._tensors[key]


class CheckpointReader:
    """Reads a transformers checkpoint folder key by key; headers are parsed up front, tensors on demand.

    Example:
        >>> reader = CheckpointReader("path/to/clip-vit-b-32", name="base")  # doctest: +SKIP
        >>> reader.infos["post_layernorm.weight"].shape, reader.get("post_layernorm.weight").dtype  # doctest: +SKIP
    """

    def __init__(self, folder: str | Path, name: str):
        self.folder = Path(folder)
        self.name = name
        who = f"model {name!r}"
        self.config = self._read_config(who)
        if SafetensorsFiles.present(self.folder, "model"):
            self._files: SafetensorsFiles | TorchBinFiles = SafetensorsFiles(self.folder, "model", who)
        elif TorchBinFiles.present(self.folder):
            self._files = TorchBinFiles(self.folder, who)
        else:
            raise MergeInputError(f"{who}: no weights in {self.folder} (looked for model.safetensors, "
                                  "model.safetensors.index.json, pytorch_model.bin and its index)")
        self.weights_file = self._files.main_file
        self.infos = self._files.infos

    def _read_config(self, who: str) -> dict:
        path = self.folder / "config.json"
        if not path.is_file():
            raise MergeInputError(f"{who}: {path} not found; a transformers checkpoint folder needs "
                                  "config.json (save it with save_pretrained)")
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise MergeInputError(f"{who}: {path} is not valid JSON ({exc})") from exc

    def get(self, key: str) -> torch.Tensor:
        """Read one tensor (CPU)."""
        return self._files.get(key)


class InMemoryReader:
    """The same interface over a transformers model (or any ``nn.Module`` with a ``config``) in memory."""

    def __init__(self, model: torch.nn.Module, name: str):
        self.name = name
        self.folder = None
        self.weights_file = Path(f"<in-memory {type(model).__name__}>")
        config = getattr(model, "config", None)
        if config is None:
            raise MergeInputError(f"model {name!r}: in-memory models need a transformers config (.config)")
        self.config = config.to_dict()
        self._state = model.state_dict()
        self.infos = {k: TensorInfo(t.dtype, tuple(t.shape), self.weights_file) for k, t in self._state.items()}

    def get(self, key: str) -> torch.Tensor:
        return self._state[key].detach()
