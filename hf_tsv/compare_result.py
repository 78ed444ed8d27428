"""What :func:`hf_tsv.compare` returns: one typed record per method (and per reference row), written and read as
JSON in one place, and the one Markdown table that ``compare.md``, the CLI and the model card show.

Example:
    >>> result = CompareResult.load("comparison")  # doctest: +SKIP
    >>> print(result.table())  # doctest: +SKIP
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .errors import ReportError
from .files import COMPARE_JSON_NAME, COMPARE_SCHEMA, COMPARE_TABLE_NAME

SCHEMA = COMPARE_SCHEMA
SCHEMA_VERSION = 1
# How the best method is chosen: on validation data only, so the test accuracies it is shown with stay unbiased.
BEST_CRITERION = "highest mean validation accuracy at its chosen α (normalised where every task has its reference)"
MEMORY_MEASURE = "peak resident memory (RSS) above the RSS when the method started, sampled every 10 ms"
# Reference rows (not merges): shown around the methods, as hf_tsv.METHODS orders those
REFERENCE_TITLES = {"zero-shot": "Zero-shot", "finetuned": "Fine-tuned (own task)",
                    "tsv-c": "TSV-C (own task, rank r/T)"}
REFERENCES_BEFORE = ("zero-shot", "finetuned")


@dataclass
class Scores:
    """Accuracy (%) on one split: per task absolute and normalised (÷ that task's fine-tuned model on the split,
    × 100; None without a reference), and their means."""

    split: str
    absolute: float
    normalized: float | None
    per_task: dict[str, dict]  # task -> {"absolute": %, "normalized": % | None, "examples": n}
    dataset_ids: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_report(cls, report) -> Scores:
        """From an :class:`~hf_tsv.evaluation.EvalReport`."""
        return cls(report.split, report.mean_accuracy, report.mean_normalized_accuracy,
                   {t: {"absolute": v["accuracy"], "normalized": v.get("normalized_accuracy"),
                        "examples": v.get("num_examples")} for t, v in report.tasks.items()},
                   dict(report.dataset_ids))

    @classmethod
    def from_dict(cls, data: dict) -> Scores:
        return cls(data["split"], data["absolute"], data.get("normalized"), dict(data["per_task"]),
                   dict(data.get("dataset_ids") or {}))


@dataclass
class MethodComparison:
    """One row of a comparison: a merge method at its α, or a reference (``kind="reference"``: zero-shot,
    fine-tuned, TSV-C). Accuracies in %; ``seconds`` covers the merge, the α search and the test scoring;
    ``peak_memory_bytes`` is measured as :data:`MEMORY_MEASURE` says."""

    method: str
    title: str
    kind: str = "method"  # "method" or "reference"
    alpha: float | None = None  # the α used (None: the method ignores α, or a reference)
    alpha_selection: str | None = None  # "validation" (searched), "default" (the method's) or "given"
    alpha_grid: list[float] | None = None
    criterion: str | None = None  # the α search's: "normalized" or "absolute" mean validation accuracy
    validation: float | None = None  # that mean at the chosen α (what chooses the best method)
    sweep: list[dict] = field(default_factory=list)  # per α: mean_accuracy, mean_normalized_accuracy (validation)
    test: Scores | None = None
    default_alpha: float | None = None  # an SVD method's paper α, also scored when α was searched
    at_default_alpha: Scores | None = None
    sti: dict | None = None  # TSV-M: {"total", "k", "keys", "per_layer"} (the inputs' interference)
    delta: dict | None = None  # statistics of the applied α·Δ (hf_tsv.core.delta_stats)
    seconds: float | None = None
    peak_memory_bytes: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. TSV-C's stored_fraction

    @property
    def label(self) -> str:
        return self.title

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> MethodComparison:
        data = dict(data)
        for key in ("test", "at_default_alpha"):
            if data.get(key) is not None:
                data[key] = Scores.from_dict(data[key])
        return cls(**data)


@dataclass
class CompareResult:
    """Every row of a comparison, the tasks, and the best method (chosen on validation, see
    :data:`BEST_CRITERION`). :meth:`save` writes ``compare.json``, ``compare.md`` and the plots."""

    entries: list[MethodComparison]
    tasks: list[str] = field(default_factory=list)
    base: str = ""
    models: list[str] = field(default_factory=list)
    best: str | None = None
    best_criterion: str = BEST_CRITERION
    memory_measure: str = MEMORY_MEASURE
    seconds: float | None = None
    kept: str | None = None  # the folder the best merge was written to (keep_best)

    def __getitem__(self, name: str) -> MethodComparison:
        for entry in self.entries:
            if entry.method == name:
                return entry
        raise KeyError(name)

    @property
    def methods(self) -> list[MethodComparison]:
        return [e for e in self.entries if e.kind == "method"]

    def to_dict(self) -> dict:
        return {"schema": SCHEMA, "schema_version": SCHEMA_VERSION, "tasks": self.tasks, "base": self.base,
                "models": self.models, "best": self.best, "best_criterion": self.best_criterion,
                "memory_measure": self.memory_measure, "seconds": self.seconds, "kept": self.kept,
                "entries": [e.to_dict() for e in self.entries]}

    @classmethod
    def from_dict(cls, data: object, source: str = COMPARE_JSON_NAME) -> CompareResult:
        if not isinstance(data, dict) or data.get("schema") != SCHEMA:
            raise ReportError(f"{source}: not an hf-tsv comparison (no \"schema\": \"{SCHEMA}\")")
        try:
            entries = [MethodComparison.from_dict(e) for e in data["entries"]]
            return cls(entries, list(data["tasks"]), data.get("base", ""), list(data.get("models", [])),
                       data.get("best"), data.get("best_criterion", BEST_CRITERION),
                       data.get("memory_measure", MEMORY_MEASURE), data.get("seconds"), data.get("kept"))
        except (KeyError, TypeError) as exc:
            raise ReportError(f"{source}: malformed comparison ({type(exc).__name__}: {exc})") from None

    @classmethod
    def load(cls, folder: str | os.PathLike) -> CompareResult:
        """Read ``compare.json`` from ``folder``."""
        from .card.folder import read_json

        path = Path(folder) / COMPARE_JSON_NAME
        return cls.from_dict(read_json(path, "comparison"), COMPARE_JSON_NAME)

    def table(self) -> str:
        """The comparison as Markdown (see :func:`compare_table`)."""
        return compare_table(self.to_dict())

    def save(self, directory: str | os.PathLike) -> list[Path]:
        """Write ``compare.json`` (:func:`hf_tsv.io.output.write_json`), ``compare.md`` and the plots
        (``compare_normalized.png``, ``compare_sti_per_layer.png`` when TSV-M ran) into ``directory`` (created
        if missing; each file written atomically). Returns the paths written."""
        from .io.output import write_file_atomic, write_json
        from .secrets import redact

        folder = Path(directory)
        folder.mkdir(parents=True, exist_ok=True)
        written = [write_json(folder / COMPARE_JSON_NAME, self.to_dict()),
                   write_file_atomic(folder / COMPARE_TABLE_NAME, redact(self.table()) + "\n")]
        from .compare_plots import write_compare_plots

        return written + write_compare_plots(self, folder)


def _fmt(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _seconds(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f}"


def _memory(value: int | None) -> str:
    return "–" if value is None else f"{value / 2**20:.0f}"


def compare_table(data: dict, *, note: bool = True) -> str:
    """The comparison table every edge shows (compare.md, the CLI, the model card), from the saved data alone:
    one row per method and reference, mean test accuracy (absolute, normalised), the validation score that
    chose α and the best method, α, STI, ‖α·Δ‖, time and memory, then the per-task normalised test accuracy.

    Example:
        >>> print(compare_table({"tasks": ["a"], "best": None, "entries": [{"method": "zero-shot",
        ...     "title": "Zero-shot", "kind": "reference", "test": {"absolute": 50.0, "normalized": 55.0,
        ...     "per_task": {"a": {"absolute": 50.0, "normalized": 55.0}}}}]}, note=False))
        | method | test acc. (%) | test norm. (%) | val. (%) | α | STI | ‖α·Δ‖ | time (s) | peak mem. (MiB) | a |
        |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|
        | Zero-shot | 50.0 | 55.0 | – | – | – | – | – | – | 55.0 |
    """
    tasks = data["tasks"]
    head = "| method | test acc. (%) | test norm. (%) | val. (%) | α | STI | ‖α·Δ‖ | time (s) | peak mem. (MiB) |"
    head += "".join(f" {t} |" for t in tasks)
    lines = [head, "|---|" + "---:|" * (8 + len(tasks))]
    for entry in data["entries"]:
        test = entry.get("test") or {}
        per_task = test.get("per_task", {})
        name = entry["title"] + (" **(best)**" if entry["method"] == data.get("best") else "")
        alpha = entry.get("alpha")
        sti = (entry.get("sti") or {}).get("total")
        norm = (entry.get("delta") or {}).get("frobenius_norm")
        cells = [name, _fmt(test.get("absolute")), _fmt(test.get("normalized")), _fmt(entry.get("validation")),
                 "–" if alpha is None else f"{alpha:.3g}", "–" if sti is None else f"{sti:.4g}",
                 "–" if norm is None else f"{norm:.3g}", _seconds(entry.get("seconds")),
                 _memory(entry.get("peak_memory_bytes"))]
        cells += [_fmt((per_task.get(t) or {}).get("normalized")) for t in tasks]
        lines.append("| " + " | ".join(cells) + " |")
    if note:
        lines.append("")
        lines.append(compare_note(data))
    return "\n".join(lines)


def compare_note(data: dict) -> str:
    """The sentence under the table: what the per-task columns are, and how the best method was chosen."""
    columns = ("Per-task columns: normalised test accuracy (÷ each task's own fine-tuned model). "
               if data["tasks"] else "")
    if not data.get("best"):
        return columns + "No method was scored on validation data, so none is marked best."
    return (columns + f"Best: {data['best']}, chosen by the {data.get('best_criterion', BEST_CRITERION)}; test "
            "accuracy never chooses.")
