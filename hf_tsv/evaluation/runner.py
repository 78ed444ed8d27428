"""Scoring a vision encoder on prepared tasks with frozen heads, through the shipped `evaluate` metric."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..io.output import write_json
from ..progress import library_bars_off_main, progress_bar
from .data import Normalizer, PreparedSplit, check_split, prepare_split
from .heads import ClipTextEncoder, EvalInputError, TaskHead, _as_tensor, load_heads, save_heads, text_head
from .tasks import TasksConfig, TaskSpec

if TYPE_CHECKING:
    from tqdm.auto import tqdm

METRIC_DIR = Path(__file__).parent / "metrics" / "task_accuracy"


def load_metric():
    """The ``task_accuracy`` evaluate module shipped in this package (loads offline).

    Example:
        >>> load_metric().compute(predictions=[0, 1, 1], references=[0, 1, 0])["accuracy"]  # doctest: +ELLIPSIS
        66.66...
    """
    import evaluate

    return evaluate.load(str(METRIC_DIR))


@dataclass
class PreparedTask:
    """A task ready to score: its head, normaliser and prepared splits."""

    name: str
    head: TaskHead
    normalizer: Normalizer
    splits: dict[str, PreparedSplit]
    dataset_id: str
    finetuned_accuracy: dict[str, float] = field(default_factory=dict)


def load_vision_model(reference, *, device: str | torch.device = "cpu", revision: str | None = None):
    """A CLIP vision encoder from a folder or Hub id (``ns/name@rev``): CLIPVisionModelWithProjection,
    CLIPVisionModel or a full CLIPModel, as its config says. ``trust_remote_code`` is never enabled. The model
    is resolved as merge inputs are (:func:`~hf_tsv.io.resolve.resolve_model`: a Hub revision pinned to one commit,
    only the files the reader opens downloaded, every file checked to lie inside the model) before transformers
    loads that folder."""
    if isinstance(reference, torch.nn.Module):
        return reference.to(device).eval()
    from transformers import AutoConfig, CLIPModel, CLIPVisionModel, CLIPVisionModelWithProjection

    from ..io.resolve import resolve_model

    resolved = resolve_model(reference, revision=revision)
    folder = str(resolved.reader.folder)
    try:
        config = AutoConfig.from_pretrained(folder)
    except Exception as exc:  # noqa: BLE001
        raise EvalInputError(f"model {resolved.name!r}: cannot read its config.json ({type(exc).__name__}: "
                             f"{exc})") from exc
    arch = (getattr(config, "architectures", None) or [""])[0]
    classes = {"CLIPModel": CLIPModel, "CLIPVisionModelWithProjection": CLIPVisionModelWithProjection,
               "CLIPVisionModel": CLIPVisionModel}
    if arch not in classes:
        arch = "CLIPModel" if config.model_type == "clip" else "CLIPVisionModel"
    with library_bars_off_main():
        return classes[arch].from_pretrained(folder).to(device).eval()


class ImageFeatures:
    """``pixel_values -> image embeddings`` for any CLIP vision model; ``projection`` (D, H) maps a bare
    ``CLIPVisionModel``'s pooled output into the heads' space (e.g. the CLIP checkpoint's visual projection)."""

    def __init__(self, model: torch.nn.Module, projection: torch.Tensor | None = None):
        self.model = model
        self.projection = projection
        self.kind = type(model).__name__

    @torch.no_grad()
    def __call__(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if self.kind == "CLIPModel":
            return _as_tensor(self.model.get_image_features(pixel_values=pixel_values), "image_embeds")
        out = self.model(pixel_values=pixel_values)
        if getattr(out, "image_embeds", None) is not None:
            return out.image_embeds
        pooled = out.pooler_output
        if self.projection is not None:
            return pooled @ self.projection.to(pooled.device, pooled.dtype).T
        return pooled


def _device_of(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def predict(features: ImageFeatures, task: PreparedTask, split: str, *, batch_size: int = 256,
            progress: tqdm | None = None) -> torch.Tensor:
    """Predicted class ids of ``task``'s ``split``."""
    data = task.splits[split]
    device = _device_of(features.model)
    dtype = next(features.model.parameters()).dtype
    preds = []
    for start in range(0, len(data), batch_size):
        pixels = task.normalizer(data.pixels[start:start + batch_size].to(device)).to(dtype)
        embeds = features(pixels)
        if embeds.shape[-1] != task.head.weight.shape[1]:
            raise EvalInputError(f"task {task.name!r}: the model gives {embeds.shape[-1]}-d features but the head "
                                 f"expects {task.head.weight.shape[1]}-d; a CLIPVisionModel needs the projection of "
                                 "its CLIP checkpoint ('text_model' in the task spec)")
        preds.append(task.head.logits(embeds).argmax(dim=-1).cpu())
        if progress is not None:
            progress.update(len(pixels))
    return torch.cat(preds)


@dataclass
class EvalReport:
    """Per-task accuracy (%), absolute and normalised (÷ the task's fine-tuned model), and their means."""

    split: str
    tasks: dict[str, dict]  # task -> {"accuracy": %, "normalized_accuracy": % | None, "num_examples": n}
    dataset_ids: dict[str, str] = field(default_factory=dict)

    @property
    def mean_accuracy(self) -> float:
        return sum(t["accuracy"] for t in self.tasks.values()) / len(self.tasks)

    @property
    def mean_normalized_accuracy(self) -> float | None:
        values = [t.get("normalized_accuracy") for t in self.tasks.values()]
        return None if any(v is None for v in values) else sum(values) / len(values)

    def to_dict(self) -> dict:
        return {"split": self.split, "mean_accuracy": self.mean_accuracy,
                "mean_normalized_accuracy": self.mean_normalized_accuracy, "tasks": self.tasks,
                "dataset_ids": self.dataset_ids}

    def to_eval_results(self) -> dict:
        """The ``eval_results.json`` a model card reads (accuracies in %)."""
        return {"split": self.split,
                "tasks": {t: {"absolute": round(v["accuracy"], 4),
                              "normalized": None if v.get("normalized_accuracy") is None
                              else round(v["normalized_accuracy"], 4)} for t, v in self.tasks.items()},
                "dataset_ids": self.dataset_ids}

    def table(self) -> str:
        """A Markdown table: task, examples, accuracy, normalised accuracy."""
        lines = [f"| task ({self.split}) | examples | accuracy (%) | normalized (%) |", "|---|---:|---:|---:|"]
        for name, v in self.tasks.items():
            norm = v.get("normalized_accuracy")
            lines.append(f"| {name} | {v['num_examples']} | {v['accuracy']:.2f} | "
                         f"{'–' if norm is None else f'{norm:.2f}'} |")
        mean_norm = self.mean_normalized_accuracy
        lines.append(f"| **mean** | | **{self.mean_accuracy:.2f}** | "
                     f"**{'–' if mean_norm is None else f'{mean_norm:.2f}'}** |")
        return "\n".join(lines)

    def save_json(self, path: str | os.PathLike) -> Path:
        """Write :meth:`to_dict` to ``path`` atomically (see :func:`hf_tsv.io.output.write_file_atomic`)."""
        return write_json(path, self.to_dict())


def evaluate_model(model, tasks: list[PreparedTask], *, split: str = "test", batch_size: int = 256,
                   projection: torch.Tensor | None = None, metric=None, progress: bool = True) -> EvalReport:
    """Top-1 accuracy of ``model`` on every task's ``split`` with the tasks' frozen heads. Normalised
    accuracy is reported where the task knows its fine-tuned model's accuracy on that split.

    Example:
        >>> prepared = prepare_tasks(load_tasks_spec("tasks.json"), "merged")  # doctest: +SKIP
        >>> print(evaluate_model(load_vision_model("merged"), prepared).table())  # doctest: +SKIP
    """
    metric = metric or load_metric()
    features = ImageFeatures(model, projection)
    was_training = model.training
    model.eval()
    total = sum(len(t.splits[split]) for t in tasks if split in t.splits)
    results: dict[str, dict] = {}
    with progress_bar(total=total, desc=f"evaluating ({split})", unit="img", leave=False, show=progress) as bar:
        for task in tasks:
            if split not in task.splits:
                raise EvalInputError(f"task {task.name!r} has no prepared split {split!r}")
            preds = predict(features, task, split, batch_size=batch_size, progress=bar)
            labels = task.splits[split].labels
            reference = task.finetuned_accuracy.get(split)
            scores = metric.compute(predictions=preds.tolist(), references=labels.tolist(),
                                    finetuned_accuracy=reference)
            results[task.name] = {"accuracy": scores["accuracy"],
                                  "normalized_accuracy": scores.get("normalized_accuracy"),
                                  "num_examples": len(labels)}
    model.train(was_training)
    return EvalReport(split, results, {t.name: t.dataset_id for t in tasks})


def _processor_for(config: TasksConfig, model_ref):
    from transformers import CLIPImageProcessor

    candidates = [config.image_processor, config.text_model]
    if isinstance(model_ref, (str, os.PathLike)):
        candidates.append(str(model_ref))
    for ref in candidates:
        if not ref:
            continue
        from ..io.resolve import split_revision

        name, rev = split_revision(str(ref), None)
        try:
            return CLIPImageProcessor.from_pretrained(name, revision=rev)
        except Exception:  # noqa: BLE001 - try the next candidate
            continue
    raise EvalInputError(f"{config.source}: no image processor found; set 'image_processor' in the task spec to "
                         "a CLIP checkpoint (folder or Hub id) with a preprocessor_config.json")


def build_heads(config: TasksConfig, *, device: str | torch.device = "cpu") -> dict[str, TaskHead]:
    """Every task's frozen head: its own head file, else the text tower of ``text_model`` (cached in
    ``head_cache`` when set, and reused while the class names still match)."""
    heads: dict[str, TaskHead] = {}
    need_text = []
    for task in config.tasks:
        if task.head:
            loaded = load_heads(task.head)
            if task.name not in loaded:
                raise EvalInputError(f"task {task.name!r}: head file {Path(task.head).name!r} has no tensor named "
                                     f"{task.name!r} (it has {', '.join(loaded)})")
            heads[task.name] = loaded[task.name]
        else:
            need_text.append(task)
    if not need_text:
        return heads
    cached = load_heads(config.head_cache) if config.head_cache and Path(config.head_cache).is_file() else {}
    missing = []
    for task in need_text:
        names = task.class_names or _class_names(task)
        hit = cached.get(task.name)
        if hit is not None and hit.class_names == names:
            heads[task.name] = hit
        else:
            missing.append((task, names))
    if missing:
        if not config.text_model:
            raise EvalInputError(f"{config.source}: task {missing[0][0].name!r} has no 'head' file and the spec names "
                                 "no 'text_model' to build zero-shot heads from")
        encoder = ClipTextEncoder(config.text_model, device=device)
        for task, names in missing:
            heads[task.name] = text_head(encoder, names, task.templates or config.templates, encoder.logit_scale)
        if config.head_cache:
            save_heads(config.head_cache, {**cached, **{t.name: heads[t.name] for t, _ in missing}})
    return heads


def _class_names(task: TaskSpec) -> list[str]:
    import datasets

    from .data import load_split

    data = load_split(task, task.split)
    col = task.label_column or next((k for k, v in data.features.items() if isinstance(v, datasets.ClassLabel)), None)
    if col is None or not isinstance(data.features.get(col), datasets.ClassLabel):
        raise EvalInputError(f"task {task.name!r}: no ClassLabel column to take class names from; give 'class_names'")
    return list(data.features[col].names)


def prepare_tasks(config: TasksConfig, model_ref=None, *, splits: tuple[str, ...] = ("test",),
                  max_examples: int | None = None, device: str | torch.device = "cpu",
                  progress: bool = True) -> list[PreparedTask]:
    """Load heads and data for every task of ``config`` (``"validation"`` in ``splits`` means each task's
    ``validation_split``); images are decoded and resized once."""
    if "validation" in splits:
        for task in config.tasks:
            if task.validation_split is None:
                raise EvalInputError(f"task {task.name!r} has no 'validation_split' in {config.source}; α search "
                                     "selects on validation data, never on the test split")
    def source(task: TaskSpec, split: str) -> str:
        return task.validation_split if split == "validation" else (task.split if split == "test" else split)

    # every task's columns and labels are checked before heads are built or any image is decoded
    checked = {(task.name, split): check_split(task, source(task, split), max_examples=max_examples)
               for task in config.tasks for split in splits}
    processor = _processor_for(config, model_ref)
    normalizer = Normalizer.from_processor(processor)
    heads = build_heads(config, device=device)
    prepared = []
    for task in progress_bar(config.tasks, desc="loading tasks", unit="task", leave=False, show=progress):
        splits_data = {}
        for split in splits:
            data, names = prepare_split(task, source(task, split), processor, checked=checked[task.name, split])
            if len(names) != len(heads[task.name].class_names):
                raise EvalInputError(f"task {task.name!r}: the dataset has {len(names)} classes but its head has "
                                     f"{len(heads[task.name].class_names)} rows")
            splits_data[split] = data
        prepared.append(PreparedTask(task.name, heads[task.name], normalizer, splits_data, task.dataset_id(),
                                     dict(task.finetuned_accuracy)))
    return prepared
