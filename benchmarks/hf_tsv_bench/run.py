"""``hf-tsv bench run``: score zero-shot, fine-tuned, every merge method (α searched on validation) and
TSV-C retention on a built benchmark, and write ``results.json``, ``results.md`` and PNG plots."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import torch

from hf_tsv.evaluation import (
    EvalReport,
    PreparedTask,
    evaluate_model,
    load_metric,
    load_tasks_spec,
    load_vision_model,
    prepare_tasks,
    search_alpha,
)
from hf_tsv.evaluation.alpha import default_grid
from hf_tsv.io.output import write_json

from .build import BUILD_INFO, SPEC_NAME, BenchError, build_dir


def _entry(report: EvalReport, alpha=None, **extra) -> dict:
    return {"absolute": report.mean_accuracy, "normalized": report.mean_normalized_accuracy,
            "per_task": {t: {"absolute": v["accuracy"], "normalized": v.get("normalized_accuracy")}
                         for t, v in report.tasks.items()},
            "alpha": alpha, **extra}


def _own_task_reports(models: dict[str, str], prepared: list[PreparedTask], splits: tuple[str, ...],
                      metric) -> dict[str, EvalReport]:
    """Each task scored by its own model (fine-tuned, or rebuilt from TSV-C), every model loaded once."""
    tasks: dict[str, dict] = {split: {} for split in splits}
    for task in prepared:
        model = load_vision_model(models[task.name])
        for split in splits:
            tasks[split].update(evaluate_model(model, [task], split=split, metric=metric, progress=False).tasks)
    ids = {t.name: t.dataset_id for t in prepared}
    return {split: EvalReport(split, tasks[split], ids) for split in splits}


def run_benchmark(cache_dir: str | os.PathLike | None = None, *, quick: bool = False,
                  out_dir: str | os.PathLike | None = None, methods: tuple[str, ...] | None = None,
                  progress: bool = True) -> dict:
    """Evaluate every method (default: all of :data:`hf_tsv.METHODS`) on a benchmark made by
    :func:`hf_tsv_bench.build_benchmark`; returns the results dict (also written to ``out_dir/results.json``)."""
    from hf_tsv import METHODS, compress, expand, merge_linear

    folder = build_dir(cache_dir, quick)
    info_path = folder / BUILD_INFO
    if not info_path.is_file():
        raise BenchError(f"no benchmark built in {folder}; run `hf-tsv bench build{' --quick' if quick else ''}` "
                         "first")
    info = json.loads(info_path.read_text())
    out = Path(out_dir) if out_dir is not None else folder / "results"
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    timings: dict[str, float] = {}
    config = load_tasks_spec(folder / SPEC_NAME)
    base = str(folder / "models" / "base")
    finetuned = {t.name: str(folder / "models" / t.name) for t in config.tasks}
    prepared = prepare_tasks(config, base, splits=("validation", "test"), progress=progress)
    metric = load_metric()
    results: dict[str, dict] = {}

    t0 = time.perf_counter()
    own = _own_task_reports(finetuned, prepared, ("validation", "test"), metric)
    for split, report in own.items():
        for task in prepared:
            scores = report.tasks[task.name]
            task.finetuned_accuracy[split] = scores["accuracy"]
            scores["normalized_accuracy"] = 100.0 if scores["accuracy"] > 0 else None  # each model is its own reference
    results["finetuned"] = _entry(own["test"])
    results["finetuned"]["normalized"] = 100.0
    timings["finetuned_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    base_model = load_vision_model(base)
    results["zero-shot"] = _entry(evaluate_model(base_model, prepared, split="test", metric=metric, progress=False))
    timings["zero-shot_s"] = time.perf_counter() - t0

    models = [finetuned[t.name] for t in config.tasks]
    sti_keys = None
    for method in methods or tuple(METHODS):
        t0 = time.perf_counter()
        linear = merge_linear(base, models, method, device="cpu")
        grid = default_grid(method, quick=quick)
        search = search_alpha(linear, prepared, grid=grid, progress=progress)
        model = linear.to_model(search.best_alpha)
        test = evaluate_model(model, prepared, split="test", metric=metric, progress=False)
        extra = {"alpha_grid": grid, "validation_normalized": search.score(search.best_alpha)
                 if search.criterion == "normalized" else None,
                 "sweep": search.to_dict()["sweep"]}
        # SVD methods are also scored at their default α, which their papers use without a search
        default_alpha = METHODS[method].default_alpha if METHODS[method].uses_svd else None
        if linear.report.sti is not None:
            sti_keys = linear.report.sti.keys
        chosen = search.best_alpha if METHODS[method].uses_alpha else None  # averaging has no α
        results[method] = _entry(test, chosen, **extra)
        if default_alpha is not None:
            linear.load_into(model, default_alpha)
            results[method]["at_default_alpha"] = _entry(
                evaluate_model(model, prepared, split="test", metric=metric, progress=False), default_alpha)
        timings[f"{method}_s"] = time.perf_counter() - t0
        del linear, model

    t0 = time.perf_counter()
    import tempfile

    with tempfile.TemporaryDirectory(prefix="hf-tsv-bench-tsvc-") as tmp:
        packed = compress(base, models, Path(tmp) / "tsvc")
        rebuilt = {t.name: str(expand(Path(tmp) / "tsvc", t.name, Path(tmp) / f"task-{t.name}", base=base))
                   for t in config.tasks}
        tsvc = _own_task_reports(rebuilt, prepared, ("test",), metric)["test"]
        results["tsv-c"] = _entry(tsvc, None, stored_fraction=packed.factor_bytes / max(1, packed.task_vector_bytes))
    timings["tsv-c_s"] = time.perf_counter() - t0
    timings["total_s"] = time.perf_counter() - started

    payload = {
        "benchmark": {"quick": quick, "tasks": config.task_names(), "build": info,
                      "split": "test", "alpha_selection": "best mean normalised validation accuracy"},
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
    return payload
