"""``hf-tsv bench build``: data, a pretrained small CLIP vision encoder, text heads and one fine-tuned model
per task, made once, deterministically, and cached.

Layout of a built benchmark (``<cache>/full`` or ``<cache>/quick``)::

    build.json                 settings, sizes, timings, versions, tasks skipped and why
    tasks.json                 the task spec (usable with `hf-tsv eval` and `hf-tsv merge --eval`)
    heads.safetensors          frozen zero-shot heads (MiniLM text embeddings of class prompts)
    data/<task>/               datasets.DatasetDict (train/validation/test; image + ClassLabel)
    models/base/               the pretrained CLIPVisionModelWithProjection (+ preprocessor_config.json)
    models/<task>/             its fine-tune on <task>, with the task's head frozen
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from hf_tsv.errors import HFTSVError
from hf_tsv.io.output import write_json

BUILD_INFO = "build.json"
SPEC_NAME = "tasks.json"
HEADS_NAME = "heads.safetensors"


class BenchError(HFTSVError):
    """The benchmark cannot be built or run as asked (the message says what to install or run)."""


@dataclass(frozen=True)
class BenchSettings:
    """Everything that decides a build's content (its hash names the build)."""

    quick: bool
    seed: int = 0
    pool_images: int | None = None  # pretraining pool size cap (None: the sources' default)
    max_train: int | None = None  # per-task caps (None: the sources' defaults)
    max_eval: int | None = None
    # a CLIPVisionModelWithProjection on 32x32 images: 8x8 patches (16 tokens), hidden 128, 384-d projection
    patch_size: int = 8
    hidden_size: int = 128
    num_layers: int = 4
    pretrain_steps: int = 1500
    pretrain_batch: int = 128
    pretrain_lr: float = 1e-3
    pretrain_logit_scale: float = 50.0  # scale of the cosine logits of the locked-text pretraining loss
    head_logit_scale: float = 100.0  # scale of the tasks' frozen zero-shot heads (CLIP's)
    finetune_steps: int = 200
    finetune_batch: int = 64
    finetune_lr: float = 3e-4

    @classmethod
    def preset(cls, quick: bool, seed: int = 0) -> BenchSettings:
        """The full benchmark, or the reduced one CI runs (smaller pool and splits, 2 layers, fewer steps)."""
        if quick:
            return cls(quick=True, seed=seed, pool_images=1500, max_train=200, max_eval=80, num_layers=2,
                       pretrain_steps=200, pretrain_batch=64, finetune_steps=40, finetune_batch=32)
        return cls(quick=False, seed=seed)

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]


def default_cache_dir() -> Path:
    """``$HF_TSV_BENCH_CACHE``, else ``~/.cache/hf_tsv/bench``."""
    env = os.environ.get("HF_TSV_BENCH_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "hf_tsv" / "bench"


def build_dir(cache_dir: str | os.PathLike | None, quick: bool) -> Path:
    return Path(cache_dir or default_cache_dir()) / ("quick" if quick else "full")


def _to_dataset(split) -> object:
    import datasets

    feats = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=split.class_names)})
    return datasets.Dataset.from_dict({"image": list(split.images), "label": split.labels.tolist()},
                                      features=feats)


def _versions() -> dict:
    from hf_tsv.report import library_versions

    return library_versions()


def build_benchmark(cache_dir: str | os.PathLike | None = None, *, quick: bool = False, seed: int = 0,
                    force: bool = False, log=print, settings: BenchSettings | None = None) -> Path:
    """Build the benchmark into ``<cache_dir>/{full,quick}`` (atomically) unless an identical build is there.

    Example:
        >>> folder = build_benchmark(quick=True)  # doctest: +SKIP
        >>> run_benchmark(quick=True)["methods"]["tsv-m"]["normalized"]  # doctest: +SKIP
    """
    import datasets

    from hf_tsv.evaluation.heads import save_heads, text_head
    from hf_tsv.io.writer import atomic_output_dir

    from . import sources, train
    from .text import MiniLMTextEncoder

    settings = settings or BenchSettings.preset(quick, seed)
    folder = build_dir(cache_dir, quick)
    info_path = folder / BUILD_INFO
    if info_path.is_file() and not force:
        info = json.loads(info_path.read_text())
        if info.get("settings_digest") == settings.digest():
            log(f"benchmark already built in {folder} (settings {settings.digest()}); use --force to rebuild")
            return folder
    problems = sources.check_sources()
    pretrain_missing = [problems[s] for s in sources.TASK_SOURCES["pretraining"] if problems.get(s)]
    if pretrain_missing:
        raise BenchError("the pretraining data is not installed: " + "; ".join(pretrain_missing))
    tasks, skipped = [], {}
    for name in sources.TASK_NAMES:
        missing = [problems[s] for s in sources.TASK_SOURCES[name] if problems.get(s)]
        if missing:
            skipped[name] = "; ".join(missing)
            log(f"skipping task {name!r}: {skipped[name]}")
        else:
            tasks.append(name)
    if len(tasks) < 2:
        raise BenchError(f"only {len(tasks)} task(s) have their data installed; merging needs at least 2 "
                         f"({'; '.join(skipped.values())})")

    timings: dict[str, float] = {}
    started = time.perf_counter()
    with atomic_output_dir(folder, overwrite=True) as tmp:
        t0 = time.perf_counter()
        pool = sources.pretraining_data(seed=settings.seed, max_images=settings.pool_images)
        task_data = {n: sources.task_data(n, seed=settings.seed, max_train=settings.max_train,
                                          max_eval=settings.max_eval) for n in tasks}
        datasets.disable_progress_bars()  # one bar per split and task would bury the build's own log
        try:
            for name, data in task_data.items():
                datasets.DatasetDict({"train": _to_dataset(data.train), "validation": _to_dataset(data.validation),
                                      "test": _to_dataset(data.test)}).save_to_disk(str(tmp / "data" / name))
        finally:
            datasets.enable_progress_bars()
        timings["data_s"] = time.perf_counter() - t0
        log(f"data: pretraining pool {len(pool)} images, {len(tasks)} tasks ({timings['data_s']:.1f} s)")

        t0 = time.perf_counter()
        encoder = MiniLMTextEncoder()
        pool_head = text_head(encoder.encode, pool.class_names, sources.PRETRAIN_TEMPLATES, 1.0)
        heads = {n: text_head(encoder.encode, d.train.class_names, d.templates, settings.head_logit_scale)
                 for n, d in task_data.items()}
        save_heads(tmp / HEADS_NAME, heads)
        timings["heads_s"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        config = train.bench_vision_config(num_hidden_layers=settings.num_layers, patch_size=settings.patch_size,
                                           hidden_size=settings.hidden_size,
                                           intermediate_size=4 * settings.hidden_size)
        base = train.pretrain(pool, pool_head.weight, steps=settings.pretrain_steps,
                              batch_size=settings.pretrain_batch, lr=settings.pretrain_lr, seed=settings.seed,
                              logit_scale=settings.pretrain_logit_scale, config=config,
                              log_every=max(1, settings.pretrain_steps // 10), log=log)
        timings["pretrain_s"] = time.perf_counter() - t0
        _save_model(base, tmp / "models" / "base", train)
        log(f"pretrained the base encoder in {timings['pretrain_s']:.1f} s")

        finetune_s = {}
        for i, (name, data) in enumerate(task_data.items()):
            t0 = time.perf_counter()
            tuned = train.finetune(base, heads[name], data.train, steps=settings.finetune_steps,
                                   batch_size=settings.finetune_batch, lr=settings.finetune_lr,
                                   seed=settings.seed + 100 + i, log=None)
            _save_model(tuned, tmp / "models" / name, train)
            finetune_s[name] = time.perf_counter() - t0
            log(f"fine-tuned on {name} in {finetune_s[name]:.1f} s")
            del tuned
        timings["finetune_s"] = sum(finetune_s.values())

        spec = {"image_processor": "models/base",
                "tasks": [{"name": n, "dataset": f"disk:data/{n}", "split": "test", "validation_split": "validation",
                           "head": HEADS_NAME} for n in tasks]}
        write_json(tmp / SPEC_NAME, spec)
        timings["total_s"] = time.perf_counter() - started
        info = {
            "settings": asdict(settings), "settings_digest": settings.digest(),
            "tasks": {n: {"description": d.description, "source": d.source, "classes": d.train.class_names,
                          "templates": d.templates,
                          "sizes": {"train": len(d.train), "validation": len(d.validation), "test": len(d.test)}}
                      for n, d in task_data.items()},
            "skipped_tasks": skipped,
            "pretraining": {"images": len(pool), "classes": len(pool.class_names)},
            "timings": {k: round(v, 2) for k, v in timings.items()},
            "finetune_seconds": {k: round(v, 2) for k, v in finetune_s.items()},
            "torch_threads": torch.get_num_threads(), "versions": _versions(),
        }
        write_json(tmp / BUILD_INFO, info)
    log(f"benchmark built in {folder} in {timings['total_s']:.1f} s")
    return folder


def _save_model(model, folder: Path, train) -> None:
    model.config.architectures = [type(model).__name__]
    model.save_pretrained(folder)
    train.image_processor().save_pretrained(folder)
