"""Which files of a checkpoint the reader opens, and the rule that keeps every one of them inside the model.

One list serves three callers, so they never disagree: the reader (local folders and Hub snapshots), the Hub
download (which fetches exactly these files at one commit, nothing else) and the Space's size check (which
counts exactly these files).

The rule: a file is opened only if its real location (symlinks followed) lies inside the model's *root*: the
model's folder, or for a Hub snapshot (``…/models--ns--name/snapshots/<sha>/``, whose files are symlinks into
``../../blobs/``) that repository's own cache folder ``models--ns--name``. An index names its shards by relative
``/``-separated names without ``..``; anything else is refused with a message that says nothing about the
file outside (not whether it exists, nor its size or bytes).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

from ..errors import MergeInputError
from ..files import ADAPTER_CONFIG_NAME, ADAPTER_FILES, CONFIG_NAME

# What the reader looks for, in order of preference: the first that exists is the one read.
WEIGHT_ENTRIES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                  "pytorch_model.bin.index.json")
INDEX_SUFFIX = ".index.json"
HUB_REPO_PREFIX = "models--"
SIDE_FILE_MAX_BYTES = 32 * 2**20  # a side file (tokenizer, pipeline config) larger than this is no side file


def model_root(folder: str | os.PathLike) -> Path:
    """The folder whose inside a model's files must resolve to: the folder itself (symlinks followed), or for a
    Hub cache snapshot, its repository's cache folder ``models--ns--name`` (the snapshot links into its blobs).

    Example:
        >>> str(model_root("/cache/hub/models--ns--name/snapshots/0123abcd"))
        '/cache/hub/models--ns--name'
    """
    real = Path(os.path.realpath(folder))
    if real.parent.name == "snapshots" and real.parent.parent.name.startswith(HUB_REPO_PREFIX):
        return real.parent.parent
    return real


def is_index(name: str) -> bool:
    """``True`` for a shard index such as ``model.safetensors.index.json``."""
    return name.endswith(INDEX_SUFFIX)


def weight_entry(has_file: Callable[[str], bool]) -> str | None:
    """The weights file the reader starts from (see :data:`WEIGHT_ENTRIES`), or ``None`` when there is none."""
    return next((name for name in WEIGHT_ENTRIES if has_file(name)), None)


def is_member_name(name: object) -> bool:
    """Whether ``name`` may name a file of a model: a non-empty relative ``/``-separated path whose parts are
    neither empty, ``.`` nor ``..`` (no absolute path, no backslash, no NUL)."""
    if not isinstance(name, str) or not name or "\0" in name or "\\" in name or name.startswith("/"):
        return False
    return all(part not in ("", ".", "..") for part in name.split("/"))


def _shown(text: object, limit: int = 200) -> str:
    """``repr`` of a name taken from a file, cut to ``limit`` characters for a one-line message."""
    shown = repr(text)
    return shown if len(shown) <= limit else shown[:limit] + "…"


def _outside(who: str, name: object, named_by: str | None, key: str | None) -> MergeInputError:
    """The one refusal for a file that is not inside the model; it is the same whatever lies outside."""
    if named_by is None:
        return MergeInputError(f"{who}: {name} is a link that leads outside the model's folder; hf_tsv reads only "
                               "files inside a model's folder (put the file itself there)")
    return MergeInputError(f"{who}: {named_by} names {_shown(name)} for key {_shown(key)}, which is not a file "
                           "inside the model's folder; an index must name its shards by relative paths inside the "
                           "folder (no absolute path, no '..', no link leading out)")


def inside(folder: Path, root: Path, name: str, who: str, *, named_by: str | None = None,
           key: str | None = None) -> Path:
    """``folder / name`` if it is a member name whose real location is inside ``root`` (already real);
    otherwise :class:`MergeInputError`, naming ``named_by`` (the index that gave the name) and ``key``.

    Example:
        >>> inside(Path("/m"), Path("/m"), "/etc/passwd", "model 'm'", named_by="model.safetensors.index.json",
        ...        key="w")  # doctest: +IGNORE_EXCEPTION_DETAIL
        Traceback (most recent call last):
        hf_tsv.errors.MergeInputError: model 'm': model.safetensors.index.json names '/etc/passwd' for key 'w' ...
    """
    if not is_member_name(name):
        raise _outside(who, name, named_by, key)
    path = folder / name
    try:
        real = Path(os.path.realpath(path))
    except (OSError, ValueError):
        raise _outside(who, name, named_by, key) from None
    if not real.is_relative_to(root):
        raise _outside(who, name, named_by, key)
    return path


def is_file(path: Path) -> bool:
    """``Path.is_file`` that answers ``False`` where the file system refuses the name (too long, say)."""
    try:
        return path.is_file()
    except (OSError, ValueError):
        return False


def find_member(folder: Path, root: Path, name: str, who: str) -> Path | None:
    """``folder / name`` if it exists (as a file or a link), checked by :func:`inside`; ``None`` if absent."""
    if not os.path.lexists(folder / name):
        return None
    return inside(folder, root, name, who)


def read_member(path: Path, who: str) -> bytes:
    """The bytes of a model's file already checked by :func:`inside`."""
    if not is_file(path):
        raise MergeInputError(f"{who}: {path.name} in the model's folder is not a file")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise MergeInputError(f"{who}: cannot read {path.name} ({exc.strerror or type(exc).__name__})") from None


def parse_json(data: bytes | str, who: str, what: str) -> object:
    """JSON from a model's file; any decoding problem is a :class:`MergeInputError` naming ``what``."""
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError, huge ints, deep nesting
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc).splitlines()[0][:200]
        raise MergeInputError(f"{who}: {what} is not valid JSON ({reason}); re-download or re-save it") from None


def parse_weight_map(data: bytes | str, who: str, index_name: str) -> dict[str, str]:
    """The ``weight_map`` of a shard index (key → shard file name), checked: an object of strings.

    Example:
        >>> parse_weight_map('{"weight_map": {"w": "model-1.safetensors"}}', "model 'm'", "i.json")
        {'w': 'model-1.safetensors'}
    """
    index = parse_json(data, who, index_name)
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise MergeInputError(f"{who}: {index_name} is not a valid shard index: it needs \"weight_map\", a non-empty "
                              "object {tensor name: shard file name}; re-download or re-save the checkpoint")
    for key, value in weight_map.items():
        if not isinstance(value, str):
            raise MergeInputError(f"{who}: {index_name} is not a valid shard index: weight_map[{key!r}] is "
                                  f"{type(value).__name__}, not a shard file name")
    return weight_map


def shards_of(weight_map: dict[str, str]) -> dict[str, str]:
    """Each shard file name of a weight map with the first key (in sorted order) that names it."""
    shards: dict[str, str] = {}
    for key in sorted(weight_map):
        shards.setdefault(weight_map[key], key)
    return dict(sorted(shards.items()))


def files_to_read(has_file: Callable[[str], bool], read_index: Callable[[str], bytes], who: str) -> list[str]:
    """The names of the files the reader opens, in order: ``config.json`` (if present), the weights entry and,
    for an index, each shard it names that is present (by a valid member name). An index that cannot be parsed
    yields no shard: the reader reports it. Used to download and to size exactly what is read.

    Example:
        >>> files = {"config.json", "model.safetensors", "other.safetensors", "extra/blob.safetensors"}
        >>> files_to_read(files.__contains__, None, "model 'm'")
        ['config.json', 'model.safetensors']
        >>> files_to_read({"adapter_config.json", "adapter_model.safetensors", "README.md"}.__contains__, None, "m")
        ['adapter_config.json', 'adapter_model.safetensors']
    """
    if has_file(ADAPTER_CONFIG_NAME) and not has_file(CONFIG_NAME):  # a PEFT adapter (hf_tsv.io.lora)
        return [name for name in ADAPTER_FILES if has_file(name)]
    names = [CONFIG_NAME] if has_file(CONFIG_NAME) else []
    entry = weight_entry(has_file)
    if entry is None:
        return names
    names.append(entry)
    if is_index(entry):
        try:
            weight_map = parse_weight_map(read_index(entry), who, entry)
        except MergeInputError:
            return names
        names += [name for name in shards_of(weight_map) if is_member_name(name) and has_file(name)]
    return names


def read_side_files(folder: str | os.PathLike, names: tuple[str, ...], who: str) -> dict[str, bytes]:
    """The bytes of those of ``names`` (an adapter's side files: tokenizer, pipeline configs) that the model's
    ``folder`` holds, each checked by :func:`inside` (a link leading out of the model is refused). A side file
    larger than :data:`SIDE_FILE_MAX_BYTES` is refused, naming it.

    Example:
        >>> read_side_files("/nonexistent-model", ("vocab.txt",), "base 'm'")
        {}
    """
    folder = Path(folder)
    root = model_root(folder)
    found: dict[str, bytes] = {}
    for name in names:
        path = find_member(folder, root, name, who)
        if path is None:
            continue
        if is_file(path) and path.stat().st_size > SIDE_FILE_MAX_BYTES:
            raise MergeInputError(f"{who}: {name} is {path.stat().st_size} bytes, more than the "
                                  f"{SIDE_FILE_MAX_BYTES} bytes a tokenizer or pipeline file may have; move it out "
                                  "of the base's folder (it is copied into the output)")
        found[name] = read_member(path, who)
    return found
