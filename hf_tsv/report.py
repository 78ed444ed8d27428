"""The merge report: what hf-tsv records next to every merged (or expanded) model, as one typed object.

:class:`MergeReport` holds the method, α, every input with its provenance (:class:`InputRecord`), the options
(:class:`ReportOptions`), the STI per key (:class:`STIRecord`), timings, device, dtypes, library versions, the
command and any warnings. It is written and read as ``merge_report.json`` here and nowhere else
(:meth:`MergeReport.save` / :meth:`MergeReport.load`), and the card, the push, the CLI, the Space and the
benchmark render from it.

Schema: ``schema_version`` 1 is the layout hf-tsv 0.1.0 wrote (without the field, which is read as 1); later
files carry the field. A report of another schema version is refused with a :class:`~hf_tsv.errors.ReportError`
that says so, rather than read wrongly.

Example:
    >>> report = MergeReport.from_dict({"method": "ta", "alpha": 0.3, "base": {"name": "base", "source": "local"},
    ...                                 "models": [{"name": "ft", "source": "local"}], "versions": {"hf-tsv": "0.1.0"}})
    >>> report.alpha, report.base.name, report.to_dict()["schema_version"]
    (0.3, 'base', 1)
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import platform
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from .errors import MergeInputError, ReportError
from .files import REPORT_NAME
from .sti_table import STITable, sti_table

SCHEMA_VERSION = 1
EXPAND_METHOD = "tsv-c expand"  # the "method" of a report written by `hf-tsv expand`
SOURCES = ("local", "hub", "memory")


def library_versions() -> dict[str, str]:
    """The versions of Python and of the libraries a merge depends on ("not installed" for a missing one)."""
    versions = {"python": platform.python_version()}
    for dist in ("hf-tsv", "torch", "transformers", "safetensors", "huggingface_hub", "numpy"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = "not installed"
    return versions


def device_description(device) -> str:
    """``device`` (a ``torch.device``) as the report records it: the GPU's name, or the CPU and torch's threads."""
    import torch

    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads)"


# ----------------------------------------------------------------------------------------------------------------
# Reading JSON values with a clear error
# ----------------------------------------------------------------------------------------------------------------


class _Reader:
    """Typed access to one JSON object of a report; every wrong value is a :class:`ReportError` naming the file,
    the entry and what it should be."""

    def __init__(self, data: object, where: str, source: str):
        """``where``: the entry ``data`` is (``"sti"``, ``"models[0]"``; ``""`` for the whole file)."""
        if not isinstance(data, dict):
            shown = f"entry {where!r}" if where else "the report"
            raise self._error(source, shown, f"must be a JSON object, not {_json_type(data)}")
        self.data, self.where, self.source = data, where, source

    @staticmethod
    def _error(source: str, shown: str, problem: str) -> ReportError:
        return ReportError(f"{source}: {shown} {problem}; the file was not written by hf-tsv, or was edited since: "
                           "write it again with hf-tsv")

    def entry(self, key: str) -> str:
        """The path of ``key`` in the file (``sti.keys``)."""
        return f"{self.where}.{key}" if self.where else key

    def fail(self, key: str, problem: str) -> ReportError:
        return self._error(self.source, f"entry {self.entry(key)!r}", problem)

    def get(self, key: str, kind: str, required: bool = False) -> Any:
        """``data[key]`` checked to be of ``kind`` (text, number, integer, flag, object, list, texts); None when
        absent (or null) and not ``required``."""
        value = self.data.get(key)
        if value is None:
            if required:
                raise self.fail(key, "is missing")
            return None
        ok = {"text": lambda v: isinstance(v, str),
              "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v),
              "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
              "flag": lambda v: isinstance(v, bool),
              "object": lambda v: isinstance(v, dict),
              "list": lambda v: isinstance(v, list),
              "texts": lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v)}[kind](value)
        if not ok:
            wanted = {"texts": "a list of strings", "integer": "an integer", "object": "an object", "list": "a list",
                      "flag": "true or false"}.get(kind, f"a {kind}")
            raise self.fail(key, f"must be {wanted}, not {_json_type(value)}")
        return float(value) if kind == "number" else value

    def child(self, key: str, required: bool = False) -> _Reader | None:
        value = self.get(key, "object", required)
        return None if value is None else _Reader(value, self.entry(key), self.source)


def _json_type(value: object) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "true/false", type(None): "null"}.get(
        type(value), f"the {type(value).__name__} {value!r}"[:80])


def _drop_none(data: dict) -> dict:
    return {k: v for k, v in data.items() if v is not None}


# ----------------------------------------------------------------------------------------------------------------
# The parts of a report
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class InputRecord:
    """One input model as recorded: ``name`` (a folder name or Hub id, never a local path once published),
    ``source`` (``local``, ``hub`` or ``memory``), the Hub ``repo_id`` and the ``revision`` (commit) that was read,
    and the ``fingerprint`` of a local checkpoint's files."""

    name: str
    source: str
    repo_id: str | None = None
    revision: str | None = None
    fingerprint: str | None = None

    @property
    def hub_id(self) -> str | None:
        """The Hub repository of a Hub input, else None."""
        return self.repo_id if self.source == "hub" else None

    @property
    def display_name(self) -> str:
        """How the input is named in public: its Hub id, else the last component of its name."""
        from .secrets import path_name

        return self.hub_id or path_name(self.name or "model")

    @property
    def pinned_reference(self) -> str:
        """A reference that reads the same model again: ``repo_id@revision`` for a Hub input, else its name."""
        return f"{self.hub_id}@{self.revision}" if self.hub_id and self.revision else self.display_name

    def to_dict(self) -> dict:
        data: dict[str, Any] = {"name": self.name, "source": self.source}
        if self.repo_id is not None:
            data.update(repo_id=self.repo_id, revision=self.revision)
        if self.fingerprint is not None:
            data["fingerprint"] = self.fingerprint
        return data

    @classmethod
    def _read(cls, reader: _Reader) -> InputRecord:
        source = reader.get("source", "text", required=True)
        if source not in SOURCES:
            raise reader.fail("source", f"is {source!r}, not one of {', '.join(SOURCES)}")
        record = cls(reader.get("name", "text", required=True), source, reader.get("repo_id", "text"),
                     reader.get("revision", "text"), reader.get("fingerprint", "text"))
        if source == "hub" and record.repo_id is None:
            raise reader.fail("repo_id", "is missing for a Hub input")
        return record

    @classmethod
    def from_dict(cls, data: object, source: str = REPORT_NAME, where: str = "input") -> InputRecord:
        """An input from its JSON object (``ResolvedModel.provenance()``); other entries (a path) are ignored."""
        return cls._read(_Reader(data, where, source))


@dataclass
class ReportOptions:
    """The options a merge ran with: q/k/v fusion, the keys excluded from the SVD (averaged), the SVD ``compute_dtype``,
    the ``device`` (described: GPU name, or CPU and threads), the ``svd`` mode (TSV-M) and the ``parameters`` of
    the method (``ties_density``..., named as in :data:`hf_tsv.methods.PARAMETERS`) and how token ``embeddings``
    were merged (``--embeddings``; None where the architecture has none)."""

    fuse_qkv: bool = False
    excluded_keys: list[str] = field(default_factory=list)
    compute_dtype: str = "float32"
    device: str | None = None
    svd: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    embeddings: str | None = None

    _FIXED = ("fuse_qkv", "excluded_keys", "compute_dtype", "device", "svd", "embeddings")

    def to_dict(self) -> dict:
        data = {"fuse_qkv": self.fuse_qkv, "excluded_keys": self.excluded_keys, "compute_dtype": self.compute_dtype,
                "device": self.device, "svd": self.svd, "embeddings": self.embeddings}
        return {**_drop_none(data), **self.parameters}

    @classmethod
    def _read(cls, reader: _Reader) -> ReportOptions:
        parameters = {k: v for k, v in reader.data.items() if k not in cls._FIXED}
        for name, value in parameters.items():
            if not isinstance(value, (str, int, float, bool)) or isinstance(value, float) and not math.isfinite(value):
                raise reader.fail(name, f"must be a method parameter (a number or a string), not {_json_type(value)}")
        return cls(bool(reader.get("fuse_qkv", "flag")), reader.get("excluded_keys", "texts") or [],
                   reader.get("compute_dtype", "text") or "float32", reader.get("device", "text"),
                   reader.get("svd", "text"), parameters, reader.get("embeddings", "text"))


@dataclass
class STIRecord:
    """Singular Task Interference of a TSV-M merge: per matrix key (named as in the base checkpoint), the
    ``total`` and the rank rule ``k``."""

    keys: dict[str, float]
    total: float
    k: str = "floor(r/T)"

    def table(self, layout=None) -> STITable:
        """The per-layer table every edge shows (:func:`hf_tsv.sti_table.sti_table`), its cells named by
        ``layout`` (the adapter of the merged architecture; default: the generic rules)."""
        return sti_table(self.keys, self.total, layout)

    def to_dict(self) -> dict:
        return {"k": self.k, "total": self.total, "keys": self.keys}

    @classmethod
    def _read(cls, reader: _Reader) -> STIRecord:
        keys = reader.get("keys", "object", required=True)
        for key, value in keys.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise reader.fail("keys", f"holds {_json_type(value)} for {key!r}, not a number")
        total = reader.get("total", "number")
        return cls({k: float(v) for k, v in keys.items()}, sum(keys.values()) if total is None else total,
                   reader.get("k", "text") or "floor(r/T)")


@dataclass
class OutputRecord:
    """What was written: the transformers class that loads it, the architecture (adapter) that made it, its main
    dtype and what loading it needs beyond its config (``init_kwargs``); ``format`` ``"peft"`` for a LoRA adapter
    of that class (``--output-format peft``, see docs/lora.md; absent from the JSON for a full model)."""

    class_name: str
    dtype: str
    architecture: str | None = None
    init_kwargs: dict[str, Any] = field(default_factory=dict)
    format: str = "model"

    def to_dict(self) -> dict:
        data = _drop_none({"class": self.class_name, "architecture": self.architecture, "dtype": self.dtype,
                           "format": None if self.format == "model" else self.format})
        return {**data, "init_kwargs": self.init_kwargs} if self.init_kwargs else data

    @classmethod
    def _read(cls, reader: _Reader) -> OutputRecord:
        return cls(reader.get("class", "text", required=True), reader.get("dtype", "text", required=True),
                   reader.get("architecture", "text"), reader.get("init_kwargs", "object") or {},
                   reader.get("format", "text") or "model")


# ----------------------------------------------------------------------------------------------------------------
# The report
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class MergeReport:
    """Everything recorded about a merge (or, with ``method`` :data:`EXPAND_METHOD`, about a task rebuilt by
    ``hf-tsv expand``: then ``task`` names it, and the merge's fields are None).

    Optional parts are None (lists and dicts: empty) when a run has nothing to record there, and are then left
    out of the JSON, as hf-tsv 0.1.0 did.
    """

    method: str
    base: InputRecord
    models: list[InputRecord] | None = None
    versions: dict[str, str] = field(default_factory=dict)
    method_description: str | None = None
    alpha: float | None = None
    hf_tsv_version: str | None = None
    num_tasks: int | None = None
    task: InputRecord | None = None
    options: ReportOptions | None = None
    keys: dict[str, int] | None = None  # key counts: matrix_units, averaged_keys, fused_qkv_groups...
    notes: list[str] | None = None
    mixed_precision: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    k: str | None = None  # the rank rule of an SVD method ("floor(r/T)")
    output: OutputRecord | None = None
    command: str | None = None  # the command that made it, made public (no token, local paths as names)
    sti: STIRecord | None = None
    timings: dict[str, float] = field(default_factory=dict)
    alpha_search: dict[str, Any] | None = None  # the validation sweep that chose α (AlphaSearch.to_dict())
    schema_version: int = SCHEMA_VERSION

    @property
    def is_expand(self) -> bool:
        """Whether this is the report of a task rebuilt by ``hf-tsv expand`` rather than of a merge."""
        return self.method == EXPAND_METHOD

    @property
    def uses_alpha(self) -> bool:
        """Whether α scales the merge, as the method's registry entry says (weight averaging has none); a method
        this hf-tsv does not know (a report of another version) is taken to use it."""
        from .methods import METHODS

        method = METHODS.get(self.method)
        return True if method is None else method.uses_alpha

    @property
    def total_seconds(self) -> float | None:
        """How long the merge took, end to end (None when not recorded)."""
        return self.timings.get("total_s")

    @property
    def inputs(self) -> list[InputRecord]:
        """The base, then the fine-tuned models (or the rebuilt task)."""
        return [self.base, *(self.models or []), *([self.task] if self.task else [])]

    def with_alpha(self, alpha: float, alpha_search: dict | None = None) -> MergeReport:
        """A copy for the merge at ``alpha`` (chosen by ``alpha_search``, when given)."""
        return dataclasses.replace(copy.deepcopy(self), alpha=alpha,
                                   alpha_search=copy.deepcopy(alpha_search) if alpha_search else self.alpha_search)

    def to_dict(self) -> dict:
        """The JSON object of ``merge_report.json`` (parts with nothing to record left out)."""
        data: dict[str, Any] = {
            "schema_version": self.schema_version,
            "method": self.method,
            "method_description": self.method_description,
            "alpha": self.alpha,
            "hf_tsv_version": self.hf_tsv_version,
            "num_tasks": self.num_tasks,
            "task": self.task.to_dict() if self.task else None,
            "base": self.base.to_dict(),
            "models": [m.to_dict() for m in self.models] if self.models is not None else None,
            "options": self.options.to_dict() if self.options else None,
            "keys": self.keys,
            "notes": self.notes,
            "versions": self.versions,
            "mixed_precision": self.mixed_precision or None,
            "warnings": self.warnings or None,
            "k": self.k,
            "output": self.output.to_dict() if self.output else None,
            "command": self.command,
            "sti": self.sti.to_dict() if self.sti else None,
            "timings": self.timings or None,
            "alpha_search": self.alpha_search,
        }
        return copy.deepcopy(_drop_none(data))

    @classmethod
    def from_dict(cls, data: object, source: str = REPORT_NAME) -> MergeReport:
        """A report from its JSON object; ``source`` names it in errors.

        Raises:
            ReportError: another schema version, or an entry missing or of the wrong type (naming it).
        """
        reader = _Reader(copy.deepcopy(data), "", source)
        version = reader.data.get("schema_version", 1)
        if isinstance(version, bool) or version != SCHEMA_VERSION:
            from . import __version__

            raise ReportError(f"{source}: schema_version {version!r} is not the one hf-tsv {__version__} reads "
                              f"({SCHEMA_VERSION}); it was written by another hf-tsv version: read it with that "
                              "version (or upgrade hf-tsv), or merge again")
        method = reader.get("method", "text", required=True)
        base = InputRecord._read(reader.child("base", required=True))
        expand = method == EXPAND_METHOD
        models = reader.get("models", "list", required=not expand)
        task = reader.child("task", required=expand)

        def part(key: str, kind: type):
            child = reader.child(key)
            return None if child is None else kind._read(child)

        num_tasks = reader.get("num_tasks", "integer")
        return cls(
            method=method, base=base,
            models=None if models is None else [InputRecord.from_dict(m, source, f"models[{i}]")
                                                for i, m in enumerate(models)],
            versions=_texts_by_name(reader, "versions"),
            method_description=reader.get("method_description", "text"), alpha=reader.get("alpha", "number"),
            hf_tsv_version=reader.get("hf_tsv_version", "text"), num_tasks=num_tasks,
            task=None if task is None else InputRecord._read(task), options=part("options", ReportOptions),
            keys=_numbers_by_name(reader, "keys", "integer"), notes=reader.get("notes", "texts"),
            mixed_precision=reader.get("mixed_precision", "object") or {},
            warnings=reader.get("warnings", "texts") or [], k=reader.get("k", "text"),
            output=part("output", OutputRecord), command=reader.get("command", "text"), sti=part("sti", STIRecord),
            timings=_numbers_by_name(reader, "timings", "number") or {},
            alpha_search=reader.get("alpha_search", "object"))

    def public(self) -> MergeReport:
        """This report as it may be published (:func:`hf_tsv.secrets.public_json`: no secret, local paths reduced
        to their names, the command made public)."""
        from .secrets import public_json

        return MergeReport.from_dict(public_json(self.to_dict()))

    def save(self, folder: str | os.PathLike) -> Path:
        """Write ``merge_report.json`` into ``folder`` as published (:meth:`public`), atomically, in strict JSON."""
        from .io.output import write_json
        from .secrets import public_json

        return write_json(Path(folder) / REPORT_NAME, public_json(self.to_dict()))

    @classmethod
    def load(cls, folder: str | os.PathLike) -> MergeReport:
        """Read ``merge_report.json`` of an hf-tsv output folder (from inside the folder).

        Raises:
            ReportError: the file is missing, not JSON, or not a report of this schema (the message says which).
        """
        from .io.layout import find_member, model_root, parse_json, read_member

        folder = Path(folder)
        who = f"folder {folder.name!r}"
        source = f"{REPORT_NAME} in {folder.name!r}"
        try:
            path = find_member(folder, model_root(folder), REPORT_NAME, who)
            if path is None:
                raise ReportError(f"{who} has no {REPORT_NAME}; is it a folder written by `hf-tsv merge` or "
                                  "`hf-tsv expand`?")
            data = parse_json(read_member(path, who), who, REPORT_NAME)
        except MergeInputError as exc:
            raise ReportError(str(exc)) from None
        return cls.from_dict(data, source)


def _texts_by_name(reader: _Reader, key: str) -> dict[str, str]:
    values = reader.get(key, "object") or {}
    for name, value in values.items():
        if not isinstance(value, str):
            raise reader.fail(key, f"holds {_json_type(value)} for {name!r}, not a string")
    return values


def _numbers_by_name(reader: _Reader, key: str, kind: str) -> dict | None:
    values = reader.get(key, "object")
    if values is None:
        return None
    child = _Reader(values, reader.entry(key), reader.source)
    return {name: child.get(name, kind, required=True) for name in values}
