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
    origin: str | None = field(default=None, compare=False)  # where it was defined ("tasks.json: tasks[0]"), for errors

    def where(self) -> str:
        """The task as error messages name it: the spec file and its index there, or its name."""
        return f"{self.origin} (task {self.name!r})" if self.origin else f"task {self.name!r}"

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


_TASK_FIELDS = {f for f in TaskSpec.__dataclass_fields__} - {"origin"}
_TOP_FIELDS = {"tasks", "text_model", "head_cache", "image_processor", "templates"}
_OPTIONAL_TEXT = ("validation_split", "config", "image_column", "label_column", "head", "revision")


def _exists(path: Path) -> bool:
    """``Path.exists`` that answers ``False`` for a name the file system refuses (NUL, too long)."""
    try:
        return path.exists()
    except (OSError, ValueError):
        return False


def _is_text(value: object) -> bool:
    return isinstance(value, str) and bool(value)


def _is_percentage(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value <= 100


def _check_templates(value: object, where: str) -> None:
    """Prompt templates: a non-empty list of strings, each filled by ``str.format`` with one class name."""
    if not isinstance(value, list) or not value or not all(isinstance(t, str) and "{}" in t for t in value):
        raise EvalInputError(f"{where}: 'templates' must be a non-empty list of strings, each with '{{}}' where the "
                             "class name goes")
    for template in value:
        try:
            template.format("class")
        except (IndexError, KeyError, ValueError):
            raise EvalInputError(f"{where}: template {template!r} cannot be filled with a class name; write "
                                 "exactly one '{}' (and '{{' / '}}' for literal braces)") from None


def _check_task_fields(raw: dict, where: str) -> None:
    """Every field of one task has the type and range it is used with (see :class:`TaskSpec`)."""
    if not _is_text(raw.get("split", "test")):
        raise EvalInputError(f"{where}: 'split' must be a split name (a string)")
    for key in _OPTIONAL_TEXT:
        if raw.get(key) is not None and not _is_text(raw[key]):
            raise EvalInputError(f"{where}: {key!r} must be a string (or left out)")
    if raw.get("image_column") is not None and raw.get("image_column") == raw.get("label_column"):
        raise EvalInputError(f"{where}: 'image_column' and 'label_column' are both {raw['image_column']!r}; the "
                             "image column holds the images, the label column the class indices")
    names = raw.get("class_names")
    if names is not None and (not isinstance(names, list) or not names or not all(_is_text(n) for n in names)):
        raise EvalInputError(f"{where}: 'class_names' must be a non-empty list of strings (class i is names[i])")
    if raw.get("templates") is not None:
        _check_templates(raw["templates"], where)
    limit = raw.get("max_examples")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise EvalInputError(f"{where}: 'max_examples' must be a positive integer, got {limit!r}")
    accuracy = raw.get("finetuned_accuracy", {})
    if not isinstance(accuracy, dict):
        raise EvalInputError(f"{where}: 'finetuned_accuracy' maps split names to percentages, e.g. "
                             '{"test": 96.5}')
    for split, value in accuracy.items():
        if not _is_percentage(value):
            raise EvalInputError(f"{where}: 'finetuned_accuracy' of split {split!r} is {value!r}; it must be the "
                                 "fine-tuned model's accuracy in percent, a number above 0 and at most 100")


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
    return str(candidate) if _exists(candidate) or value.endswith(".safetensors") else value


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
    try:
        text = path.read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise EvalInputError(f"{path.name}: cannot be read as UTF-8 text ({exc})") from None
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
    unknown = sorted(map(str, set(data) - _TOP_FIELDS))
    if unknown:
        raise EvalInputError(f"{source}: unknown key {unknown[0]!r}; allowed: {', '.join(sorted(_TOP_FIELDS))}")
    for key in ("text_model", "head_cache", "image_processor"):
        if data.get(key) is not None and not _is_text(data[key]):
            raise EvalInputError(f"{source}: {key!r} must be a string (or left out)")
    if data.get("templates") is not None:
        _check_templates(data["templates"], source)
    tasks, seen = [], set()
    for i, raw in enumerate(data["tasks"]):
        where = f"{source}: tasks[{i}]"
        if not isinstance(raw, dict):
            raise EvalInputError(f"{where}: each task must be an object with 'name' and 'dataset'")
        bad = sorted(map(str, set(raw) - _TASK_FIELDS))
        if bad:
            raise EvalInputError(f"{where}: unknown key {bad[0]!r}; allowed: {', '.join(sorted(_TASK_FIELDS))}")
        for key in ("name", "dataset"):
            if not _is_text(raw.get(key)):
                raise EvalInputError(f"{where}: {key!r} is required (a string)")
        if raw["name"] in seen:
            raise EvalInputError(f"{where}: task name {raw['name']!r} is used twice")
        seen.add(raw["name"])
        _check_task_fields(raw, where)
        spec = TaskSpec(**raw, origin=where)
        spec.dataset = _local(spec.dataset, root)
        spec.head = _local(spec.head, root)
        tasks.append(spec)
    templates = data.get("templates") or list(CLIP_TEMPLATES)
    return TasksConfig(tasks, text_model=_local(data.get("text_model"), root),
                       head_cache=_local(data.get("head_cache"), root),
                       image_processor=_local(data.get("image_processor"), root), templates=list(templates),
                       source=source)
