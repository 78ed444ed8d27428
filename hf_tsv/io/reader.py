"""Lazy checkpoint reading: tensors are read one key at a time from safetensors (single file or sharded)
or, only if no safetensors exist, from ``pytorch_model.bin`` through ``torch.load(weights_only=True)``.
Every file opened lies inside the model (see :mod:`.layout`)."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..errors import MergeInputError
from .layout import (
    CONFIG_NAME,
    WEIGHT_ENTRIES,
    find_member,
    inside,
    is_file,
    model_root,
    parse_json,
    parse_weight_map,
    read_member,
    shards_of,
    weight_entry,
)
from .safetensors_format import TensorInfo, read_header, read_tensor


def _weight_files(folder: Path, root: Path, single: str, who: str) -> tuple[Path, list[Path]]:
    """``(main file, files to read)``: ``single`` (e.g. ``model.safetensors``) if present, else its index
    ``{single}.index.json`` and the shards it names, each checked to be a file inside the model (see
    :mod:`.layout`)."""
    single_path = find_member(folder, root, single, who)
    if single_path is not None:
        return single_path, [single_path]
    index_name = f"{single}.index.json"
    index_path = find_member(folder, root, index_name, who)
    if index_path is None:
        raise MergeInputError(f"{who}: neither {single} nor {index_name} in {folder}")
    weight_map = parse_weight_map(read_member(index_path, who), who, index_name)
    files = []
    for name, key in shards_of(weight_map).items():
        path = inside(folder, root, name, who, named_by=index_name, key=key)
        if not is_file(path):
            raise MergeInputError(f"{who}: shard {name!r} named in {index_name} for key {key!r} is missing; "
                                  "re-download the checkpoint")
        files.append(path)
    return index_path, files


class SafetensorsFiles:
    """``{stem}.safetensors`` or ``{stem}-*-of-*.safetensors`` + ``{stem}.safetensors.index.json`` in a folder:
    headers parsed and validated up front, tensors read on demand with plain reads (mmap would count
    every touched page of all T + 1 files in the process's RSS). Every file opened lies inside ``root``
    (default: :func:`~.layout.model_root` of the folder)."""

    def __init__(self, folder: Path, stem: str, who: str, root: Path | None = None):
        folder = Path(folder)
        root = model_root(folder) if root is None else root
        self.main_file, files = _weight_files(folder, root, f"{stem}.safetensors", who)
        self.infos: dict[str, TensorInfo] = {}
        for file in files:
            self.infos.update(read_header(file, who))

    def get(self, key: str) -> torch.Tensor:
        return read_tensor(self.infos[key])


class TorchBinFiles:
    """``pytorch_model.bin`` (or its shards), loaded with ``weights_only=True`` and ``mmap=True`` so tensor
    bytes are paged in only when a key is used. Never unpickles arbitrary objects. Every file opened lies
    inside ``root``."""

    def __init__(self, folder: Path, who: str, root: Path):
        self.main_file, files = _weight_files(folder, root, "pytorch_model.bin", who)
        self.infos: dict[str, TensorInfo] = {}
        self._tensors: dict[str, torch.Tensor] = {}
        for file in files:
            if not is_file(file):
                raise MergeInputError(f"{who}: {file.name} in the model's folder is not a file")
            try:
                state = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
            except Exception as exc:  # noqa: BLE001 - torch raises many types for corrupt files
                raise MergeInputError(f"{who}: cannot read {file} with torch.load(weights_only=True): "
                                      f"{exc}") from exc
            if not isinstance(state, dict):
                raise MergeInputError(f"{who}: {file} holds a {type(state).__name__}, not a state dict of tensors")
            for key, t in state.items():
                if isinstance(t, torch.Tensor):
                    self.infos[key] = TensorInfo(t.dtype, tuple(t.shape), file)
                    self._tensors[key] = t

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
        self.root = model_root(self.folder)
        who = f"model {name!r}"
        self.config = self._read_config(who)
        entry = weight_entry(lambda file: os.path.lexists(self.folder / file))
        if entry is None:
            raise MergeInputError(f"{who}: no weights in {self.folder} (looked for {', '.join(WEIGHT_ENTRIES)})")
        if entry.startswith("model.safetensors"):
            self._files: SafetensorsFiles | TorchBinFiles = SafetensorsFiles(self.folder, "model", who, self.root)
        else:
            self._files = TorchBinFiles(self.folder, who, self.root)
        self.weights_file = self._files.main_file
        self.infos = self._files.infos

    def _read_config(self, who: str) -> dict:
        path = find_member(self.folder, self.root, CONFIG_NAME, who)
        if path is None:
            raise MergeInputError(f"{who}: {self.folder / CONFIG_NAME} not found; a transformers checkpoint folder "
                                  "needs config.json (save it with save_pretrained)")
        config = parse_json(read_member(path, who), who, CONFIG_NAME)
        if not isinstance(config, dict):
            raise MergeInputError(f"{who}: {CONFIG_NAME} holds a JSON {type(config).__name__}, not an object; "
                                  "re-save the model's config with save_pretrained")
        return config

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
