"""Evaluation tasks: where the images and labels come from, and the frozen head that scores them.

A task spec is a JSON or YAML file (or the same structure in Python)::

    {
      "text_model": "openai/clip-vit-base-patch32",   # CLIPModel whose text tower makes the heads (optional)
      "head_cache": "heads.safetensors",               # cache for those heads (optional)
      "image_processor": "openai/clip-vit-base-patch32",  # optional; default: the evaluated model's folder
      "templates": ["a photo of a {}."],               # default prompt templates (optional)
      "tasks": [
        {"name": "mnist", "dataset": "ylecun/mnist", "split": "test", "validation_split": "train[:2000]"},
        {"name": "mine", "dataset": "imagefolder:data/mine", "split": "test", "validation_split": "validation",
         "head": "heads/mine.safetensors", "finetuned_accuracy": {"validation": 97.1, "test": 96.5}}
      ]
    }

``dataset`` is a Hub dataset id (``config`` picks a configuration), ``imagefolder:DIR`` (class sub-folders,
``load_dataset("imagefolder")``) or ``disk:DIR`` (``Dataset.save_to_disk`` output; a ``DatasetDict``'s splits
are named by ``split``). Relative paths are relative to the spec file. The image column is the first
``Image`` feature and the label column the first ``ClassLabel`` unless ``image_column``/``label_column`` say.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .heads import CLIP_TEMPLATES, EvalInputError

DATASET_PREFIXES = ("imagefolder:", "disk:")


@dataclass
class TaskSpec:
    """One evaluation task. ``dataset`` is a string (see the module docstring) or an in-memory
    ``datasets.Dataset``/``DatasetDict``.

    Example:
        >>> TaskSpec("digits", "disk:bench/digits", validation_split="validation").split
        'test'
    """

    name: str
    dataset: Any
    split: str = "test"
    validation_split: str | None = None
    config: str | None = None
    image_column: str | None = None
    label_column: str | None = None
    class_names: list[str] | None = None
    templates: list[str] | None = None
    head: str | None = None  # safetensors file with a (C, D) matrix named after the task
    finetuned_accuracy: dict[str, float] = field(default_factory=dict)  # split -> % of the task's fine-tuned model
    max_examples: int | None = None
    revision: str | None = None

    def dataset_id(self) -> str:
        """A public name for cards and reports (a Hub id, or the folder name of a local dataset)."""
        if isinstance(self.dataset, str):
            for prefix in DATASET_PREFIXES:
                if self.dataset.startswith(prefix):
                    return Path(self.dataset[len(prefix):]).name
            return self.dataset
        return self.name


@dataclass
class TasksConfig:
    """A parsed task spec: the tasks and the shared head/processor settings."""

    tasks: list[TaskSpec]
    text_model: str | None = None
    head_cache: str | None = None
    image_processor: str | None = None
    templates: list[str] = field(default_factory=lambda: list(CLIP_TEMPLATES))
    source: str = "<memory>"

    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]


_TASK_FIELDS = {f for f in TaskSpec.__dataclass_fields__}
_TOP_FIELDS = {"tasks", "text_model", "head_cache", "image_processor", "templates"}


def _local(value: str | None, root: Path) -> str | None:
    """Make a spec-relative path absolute; Hub ids are left alone."""
    if value is None:
        return None
    for prefix in DATASET_PREFIXES:
        if value.startswith(prefix):
            path = Path(value[len(prefix):]).expanduser()
            return prefix + str(path if path.is_absolute() else root / path)
    path = Path(value).expanduser()
    candidate = path if path.is_absolute() else root / path
    return str(candidate) if candidate.exists() or value.endswith(".safetensors") else value


def load_tasks_spec(path: str | os.PathLike) -> TasksConfig:
    """Read a task spec (JSON, or YAML when the name ends in .yaml/.yml) and check every field.

    Example:
        >>> cfg = load_tasks_spec("tasks.json")  # doctest: +SKIP
        >>> cfg.task_names()  # doctest: +SKIP
        ['mnist', 'digits']
    """
    path = Path(path)
    if not path.is_file():
        raise EvalInputError(f"task spec {str(path)!r} does not exist")
    text = path.read_text()
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as exc:  # noqa: BLE001 - json and yaml errors
        raise EvalInputError(f"{path.name}: not valid {'YAML' if path.suffix in ('.yaml', '.yml') else 'JSON'} "
                             f"({exc})") from exc
    return parse_tasks_spec(data, root=path.parent, source=path.name)


def parse_tasks_spec(data: dict, *, root: str | os.PathLike = ".", source: str = "<memory>") -> TasksConfig:
    """The spec as a Python dict (see the module docstring); relative paths resolve against ``root``."""
    root = Path(root)
    if not isinstance(data, dict) or not isinstance(data.get("tasks"), list) or not data["tasks"]:
        raise EvalInputError(f'{source}: expected {{"tasks": [{{"name": ..., "dataset": ...}}, ...]}} with at '
                             "least one task")
    unknown = set(data) - _TOP_FIELDS
    if unknown:
        raise EvalInputError(f"{source}: unknown key {sorted(unknown)[0]!r}; allowed: {', '.join(sorted(_TOP_FIELDS))}")
    tasks, seen = [], set()
    for i, raw in enumerate(data["tasks"]):
        where = f"{source}: tasks[{i}]"
        if not isinstance(raw, dict):
            raise EvalInputError(f"{where}: each task must be an object with 'name' and 'dataset'")
        bad = set(raw) - _TASK_FIELDS
        if bad:
            raise EvalInputError(f"{where}: unknown key {sorted(bad)[0]!r}; allowed: {', '.join(sorted(_TASK_FIELDS))}")
        for key in ("name", "dataset"):
            if not isinstance(raw.get(key), str) or not raw[key]:
                raise EvalInputError(f"{where}: {key!r} is required (a string)")
        if raw["name"] in seen:
            raise EvalInputError(f"{where}: task name {raw['name']!r} is used twice")
        seen.add(raw["name"])
        spec = TaskSpec(**raw)
        spec.dataset = _local(spec.dataset, root)
        spec.head = _local(spec.head, root)
        if not isinstance(spec.finetuned_accuracy, dict):
            raise EvalInputError(f"{where}: 'finetuned_accuracy' maps split names to percentages")
        tasks.append(spec)
    templates = data.get("templates") or list(CLIP_TEMPLATES)
    return TasksConfig(tasks, text_model=_local(data.get("text_model"), root),
                       head_cache=_local(data.get("head_cache"), root),
                       image_processor=_local(data.get("image_processor"), root), templates=list(templates),
                       source=source)
