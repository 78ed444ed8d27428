"""``hf-tsv bench run``: score zero-shot, fine-tuned, every merge method (α searched on validation) and
TSV-C retention on a built benchmark, and write ``results.json``, ``results.md`` and PNG plots."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import torch

from hf_tsv.io.output import write_json

from .build import BUILD_INFO, SPEC_NAME, BenchError, build_dir


def _entry(scores, alpha=None, **extra) -> dict:
    """A row of ``results.json`` from a :class:`hf_tsv.compare_result.Scores` (test accuracy)."""
    return {"absolute": scores.absolute, "normalized": scores.normalized,
            "per_task": {t: {"absolute": v["absolute"], "normalized": v["normalized"]}
                         for t, v in scores.per_task.items()},
            "alpha": alpha, **extra}


def _results_row(row) -> dict:
    """A :class:`hf_tsv.MethodComparison` as ``results.json`` has always shown it (extended with memory and the
    merged delta's statistics)."""
    if row.kind == "reference":
        extra = {"stored_fraction": row.extra["stored_fraction"]} if "stored_fraction" in row.extra else {}
        return _entry(row.test, None, **extra)
    entry = _entry(row.test, row.alpha, alpha_grid=row.alpha_grid,
                   validation_normalized=row.validation if row.criterion == "normalized" else None,
                   sweep=row.sweep, peak_memory_bytes=row.peak_memory_bytes, delta=row.delta)
    if row.at_default_alpha is not None:
        entry["at_default_alpha"] = _entry(row.at_default_alpha, row.default_alpha)
    return entry


def run_benchmark(cache_dir: str | os.PathLike | None = None, *, quick: bool = False,
                  out_dir: str | os.PathLike | None = None, methods: tuple[str, ...] | None = None,
                  progress: bool = True) -> dict:
    """Evaluate every method (default: all of :data:`hf_tsv.METHODS`) on a benchmark made by
    :func:`hf_tsv_bench.build_benchmark`; returns the results dict (also written to ``out_dir/results.json``).
    It is :func:`hf_tsv.compare` with the build's task spec (α searched on validation, each method's quick grid
    with ``quick``, TSV-C retention), its rows written in the benchmark's format; ``compare.json``/``compare.md``
    and the comparison plots are written beside them."""
    from hf_tsv.evaluation import TasksEvaluator, load_tasks_spec

    folder = build_dir(cache_dir, quick)
    info_path = folder / BUILD_INFO
    if not info_path.is_file():
        raise BenchError(f"no benchmark built in {folder}; run `hf-tsv bench build{' --quick' if quick else ''}` "
                         "first")
    info = json.loads(info_path.read_text())
    out = Path(out_dir) if out_dir is not None else folder / "results"
    started = time.perf_counter()
    config = load_tasks_spec(folder / SPEC_NAME)
    base = str(folder / "models" / "base")
    models = [str(folder / "models" / t.name) for t in config.tasks]
    evaluator = TasksEvaluator.from_spec(config, processor_from=base, splits=("validation", "test"),
                                         progress=progress)
    return compare_results(base, models, evaluator, info=info, quick=quick, out=out, methods=methods,
                           progress=progress, started=started)


# The SVD mode of every benchmark run: the one all published tables were measured in (the previous default), so
# that they stay reproducible (its merged weights are bit-identical to before; STI agrees to ~1e-7);
# docs/benchmark.md gives the default mode's difference.
BENCHMARK_SVD_MODE = "exact"


def compare_results(base: str, models: list[str], evaluator, *, info: dict, quick: bool, out: Path,
                    methods: tuple[str, ...] | None = None, progress: bool = True,
                    started: float | None = None) -> dict:
    """A suite's run: :func:`hf_tsv.compare` of ``models`` (one per task of ``evaluator``, in order) on ``base``
    with α searched on validation (each method's quick grid with ``quick``) and TSV-C retention; writes
    ``results.json``/``results.md``/plots in the benchmark's format and ``compare.json``/``compare.md`` beside
    them into ``out``, and returns the results dict. ``info`` is the build's record, kept in the results."""
    from hf_tsv import METHODS, compare

    started = time.perf_counter() if started is None else started
    out.mkdir(parents=True, exist_ok=True)
    result = compare(base, models, methods=methods or tuple(METHODS), evaluator=evaluator, alpha="search",
                     alpha_grid="quick" if quick else None, tsvc=True, device="cpu", progress=progress,
                     svd=BENCHMARK_SVD_MODE)
    order = ["finetuned", "zero-shot", *[e.method for e in result.methods], "tsv-c"]
    results = {name: _results_row(result[name]) for name in order}
    results["finetuned"]["normalized"] = 100.0
    timings = {f"{name}_s": result[name].seconds for name in order}
    timings["total_s"] = time.perf_counter() - started
    sti_keys = next((row.sti["keys"] for row in reversed(result.methods) if row.sti), None)

    payload = {
        "benchmark": {"quick": quick, "tasks": list(evaluator.task_names), "build": info,
                      "split": "test", "alpha_selection": "best mean normalised validation accuracy",
                      "svd": BENCHMARK_SVD_MODE,
                      "best_method": result.best, "best_criterion": result.best_criterion,
                      "memory_measure": result.memory_measure},
        "methods": results,
        "sti": {"keys": sti_keys, "total": sum(sti_keys.values()) if sti_keys else None},
        "timings": {k: round(v, 2) for k, v in timings.items()},
        "machine": {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "platform": platform.platform(), "torch": torch.__version__},
    }
    write_json(out / "results.json", payload)
    from .plots import write_plots, write_table

    write_table(payload, out / "results.md")
    write_plots(payload, out)
    result.save(out)
    return payload
