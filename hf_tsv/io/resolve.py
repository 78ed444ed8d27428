"""Model references: a local folder, a Hub id (``ns/name`` or ``ns/name@revision``) or an in-memory model."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import MergeInputError
from ..secrets import describe_exception, known_secrets, normalize_token, resolve_token, safe_cause
from .layout import files_to_read
from .lora import LoraAdapterReader, is_adapter_folder
from .reader import CheckpointReader, InMemoryReader


def open_folder(folder: Path, name: str) -> CheckpointReader | LoraAdapterReader:
    """The reader of a checkpoint folder, or of a PEFT LoRA adapter folder (see :mod:`.lora`)."""
    if is_adapter_folder(lambda file: os.path.lexists(folder / file)):
        return LoraAdapterReader(folder, name)
    return CheckpointReader(folder, name)


@dataclass
class ResolvedModel:
    """A model ready to read, with the provenance that goes into reports and cards.

    ``hub_id``/``revision`` are set for Hub models (revision = the resolved commit sha). Local folders are
    recorded by folder name and a fingerprint of their headers, never by their full path.
    """

    name: str
    reader: CheckpointReader | InMemoryReader | LoraAdapterReader
    hub_id: str | None = None
    revision: str | None = None
    fingerprint: str | None = None
    extra: dict = field(default_factory=dict)

    @property
    def source(self) -> str:
        return "hub" if self.hub_id else ("memory" if self.reader.folder is None else "local")

    def provenance(self) -> dict:
        info = {"name": self.name, "source": self.source}
        if self.hub_id:
            info.update(repo_id=self.hub_id, revision=self.revision)
        if self.fingerprint:
            info["fingerprint"] = self.fingerprint
        return info

    def content_fingerprint(self) -> str | None:
        """The fingerprint of the checkpoint's files (see :func:`_fingerprint`), computed for a Hub model too;
        ``None`` for an in-memory model."""
        if self.fingerprint is None and isinstance(self.reader, (CheckpointReader, LoraAdapterReader)):
            return _fingerprint(self.reader)
        return self.fingerprint


def _fingerprint(reader: CheckpointReader | LoraAdapterReader, sample_bytes: int = 1 << 16) -> str:
    """A cheap identity of a local checkpoint: sha256 over its tensor names, dtypes and shapes, and for each
    weight file its size and three sampled 64 KiB blocks (start, middle, end), so two fine-tunes of one
    base differ while multi-GB files are not read whole."""
    digest = hashlib.sha256()
    infos = getattr(reader, "tensors", reader.infos)  # an adapter's own tensors, not the base keys it changes
    for key in sorted(infos):
        info = infos[key]
        digest.update(f"{key}|{info.dtype}|{info.shape};".encode())
    files = {info.file for info in infos.values()} | {getattr(reader, "config_file", None)} - {None}
    for file in sorted(files):
        size = file.stat().st_size
        digest.update(f"{file.name}:{size};".encode())
        with open(file, "rb") as f:
            for offset in sorted({0, max(0, size // 2 - sample_bytes // 2), max(0, size - sample_bytes)}):
                f.seek(offset)
                digest.update(f.read(sample_bytes))
    return "sha256:" + digest.hexdigest()[:16]


def split_revision(reference: str, revision: str | None) -> tuple[str, str | None]:
    """``"ns/name@rev"`` → ``("ns/name", "rev")``; an explicit ``revision`` wins."""
    if "@" in reference and not os.path.exists(reference):
        reference, _, rev = reference.partition("@")
        return reference, revision or rev
    return reference, revision


def _download(repo_id: str, revision: str | None, token: str | bool | None) -> Path:
    """Download exactly the files the reader will open (:func:`~.layout.files_to_read`), all at one commit (the
    revision is resolved first), and return that commit's snapshot folder. Offline (HF_HUB_OFFLINE=1): the
    cached snapshot of the revision, as it is."""
    from huggingface_hub import HfApi, constants, hf_hub_download, snapshot_download
    from huggingface_hub.file_download import repo_folder_name

    from ..progress import library_bars_off_main

    if constants.is_offline_mode():
        return Path(snapshot_download(repo_id, revision=revision, token=token, local_files_only=True))
    info = HfApi().model_info(repo_id, revision=revision, token=token)
    commit = info.sha

    def fetch(name: str) -> Path:
        with library_bars_off_main():  # every process of a sharded merge resolves its inputs: one bar is enough
            return Path(hf_hub_download(repo_id, name, revision=commit, token=token))

    present = {sibling.rfilename for sibling in info.siblings or ()}
    for name in files_to_read(present.__contains__, lambda index: fetch(index).read_bytes(), f"model {repo_id!r}"):
        fetch(name)  # the index, fetched already, comes from the cache
    return Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=repo_id, repo_type="model") / "snapshots" / commit


def resolve_model(reference, *, name: str | None = None, revision: str | None = None,
                  token: str | bool | None = None) -> ResolvedModel:
    """Turn a reference into a :class:`ResolvedModel`. A Hub id's revision is resolved to one commit and exactly
    the files the reader opens are downloaded at it (unless HF_HUB_OFFLINE=1: the cached snapshot); every file
    read must lie inside the model's folder (see :mod:`hf_tsv.io.layout`).

    Example:
        >>> resolve_model("openai/clip-vit-base-patch32@main").revision  # doctest: +SKIP
        '3d74acf9a28c67741b2f4f2ea7635f0aaf6f0268'
    """
    token = normalize_token(token)  # stripped; refused (before anything is read) if it cannot be a token
    if isinstance(reference, torch.nn.Module):
        label = name or Path(getattr(getattr(reference, "config", None), "name_or_path", "") or "model").name
        return ResolvedModel(label or "model", InMemoryReader(reference, label or "model"))
    if not isinstance(reference, (str, os.PathLike)):
        raise MergeInputError(f"cannot use {type(reference).__name__} as a model; pass a folder, a Hub id "
                              "or a transformers model")
    ref, rev = split_revision(os.fspath(reference), revision)
    path = Path(ref).expanduser()
    if path.is_dir():
        label = name or path.resolve().name
        reader = open_folder(path, label)
        return ResolvedModel(label, reader, fingerprint=_fingerprint(reader))
    if path.exists():
        raise MergeInputError(f"model {ref!r} is a file; pass the checkpoint folder that holds config.json")
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(ref)
    except HFValidationError:
        raise MergeInputError(f"model {ref!r}: no such local folder, and not a valid Hub id "
                              "(expected a folder path or 'namespace/name')") from None
    token = resolve_token(token)  # and HF_TOKEN checked, now that the Hub will be asked
    try:
        folder = _download(ref, rev, token)
    except Exception as exc:  # noqa: BLE001 - huggingface_hub raises many types; all mean the same here
        offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
        hint = ("HF_HUB_OFFLINE is set and it is not in the local cache" if offline
                else "check the id, the revision, your token and the network")
        secrets = known_secrets(token)
        raise MergeInputError(f"model {ref!r}: no local folder of that name and the Hub download failed "
                              f"({hint}): {describe_exception(exc, secrets)}") from safe_cause(exc, secrets)
    label = name or ref
    return ResolvedModel(label, open_folder(folder, label), hub_id=ref, revision=folder.name)
