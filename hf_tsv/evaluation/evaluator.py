"""What :func:`hf_tsv.compare` needs from an evaluation: load a model, predict a task's split. Scores are made
from those predictions in one place (:func:`score_predictions`, the shipped ``task_accuracy`` metric), so every
evaluator is scored the same way.

:class:`TasksEvaluator` is the image implementation: CLIP vision encoders with the frozen heads of a task spec
(:mod:`hf_tsv.evaluation.tasks`), exactly as ``hf-tsv eval`` and ``merge --alpha search`` score them.

Example:
    >>> evaluator = TasksEvaluator.from_spec("tasks.json", processor_from="base")  # doctest: +SKIP
    >>> model = evaluator.load_model("merged")  # doctest: +SKIP
    >>> predicted, true = evaluator.predictions(model, evaluator.task_names[0], "test")  # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Protocol, runtime_checkable

import torch

from .heads import EvalInputError
from .runner import EvalReport, ImageFeatures, PreparedTask, load_metric, load_vision_model, predict, prepare_tasks
from .tasks import TasksConfig, load_tasks_spec


@runtime_checkable
class Evaluator(Protocol):
    """Any evaluation :func:`hf_tsv.compare` can score: tasks by name, a way to load a model and the predicted
    and true class ids of a task's split (``"validation"`` chooses α, ``"test"`` is reported). Optional
    attributes: ``splits`` (the splits it can predict; default both) and ``dataset_ids`` (task → public dataset
    name, for cards).

    Example:
        >>> class Constant:
        ...     task_names = ["t"]
        ...     def load_model(self, reference): return torch.nn.Linear(1, 1)
        ...     def predictions(self, model, task, split): return [0, 1], [0, 0]
        >>> isinstance(Constant(), Evaluator)
        True
    """

    task_names: Sequence[str]

    def load_model(self, reference: str | os.PathLike) -> torch.nn.Module:
        """A base, fine-tuned or merged model (folder or Hub id) as a module in eval mode."""

    def predictions(self, model: torch.nn.Module, task: str, split: str) -> tuple[Sequence[int], Sequence[int]]:
        """``(predicted, true)`` class ids of ``task``'s ``split`` under ``model``."""


def score_predictions(evaluator: Evaluator, model: torch.nn.Module, split: str, *,
                      references: Mapping[str, float] | None = None, metric=None,
                      tasks: Sequence[str] | None = None) -> EvalReport:
    """Top-1 accuracy of ``model`` on every task (or ``tasks``) of ``evaluator`` on ``split``, through the
    ``task_accuracy`` metric; normalised accuracy where ``references`` gives the task's fine-tuned accuracy on
    that split (``100 · accuracy / reference``).

    Example:
        >>> report = score_predictions(evaluator, model, "test", references={"mnist": 99.0})  # doctest: +SKIP
        >>> report.mean_accuracy  # doctest: +SKIP
    """
    metric = metric or load_metric()
    references = references or {}
    results: dict[str, dict] = {}
    was_training = model.training
    model.eval()
    try:
        for task in tasks or evaluator.task_names:
            predicted, true = evaluator.predictions(model, task, split)
            predicted, true = _as_ids(predicted), _as_ids(true)
            if len(predicted) != len(true) or not true:
                raise EvalInputError(f"task {task!r} ({split}): the evaluator gave {len(predicted)} predictions for "
                                     f"{len(true)} labels; it must give one prediction per example, and at least one")
            scores = metric.compute(predictions=predicted, references=true, finetuned_accuracy=references.get(task))
            results[task] = {"accuracy": scores["accuracy"],
                             "normalized_accuracy": scores.get("normalized_accuracy"), "num_examples": len(true)}
    finally:
        model.train(was_training)
    return EvalReport(split, results, dict(getattr(evaluator, "dataset_ids", {}) or {}))


def _as_ids(values) -> list[int]:
    return values.tolist() if isinstance(values, torch.Tensor) else [int(v) for v in values]


class TasksEvaluator:
    """CLIP vision encoders scored with the frozen heads of a task spec; each task's splits are decoded once.

    Args:
        prepared: the tasks as :func:`~hf_tsv.evaluation.prepare_tasks` made them.
        config: their spec (its ``text_model`` gives a bare ``CLIPVisionModel`` its projection).
        batch_size, device: of the forward passes.

    Example:
        >>> ev = TasksEvaluator.from_spec("tasks.json", processor_from="base", splits=("test",))  # doctest: +SKIP
        >>> ev.task_names  # doctest: +SKIP
        ['mnist', 'svhn']
    """

    def __init__(self, prepared: list[PreparedTask], config: TasksConfig | None = None, *, batch_size: int = 256,
                 device: str | torch.device = "cpu"):
        self.prepared = {task.name: task for task in prepared}
        self.task_names = [task.name for task in prepared]
        self.dataset_ids = {task.name: task.dataset_id for task in prepared}
        self.config = config
        self.batch_size = batch_size
        self.device = device
        self._projections: dict[str, torch.Tensor | None] = {}  # the text model's projection, once

    @classmethod
    def from_spec(cls, spec: TasksConfig | str | os.PathLike, *, processor_from=None,
                  splits: tuple[str, ...] = ("validation", "test"), max_examples: int | None = None,
                  batch_size: int = 256, device: str | torch.device = "cpu", progress: bool = True) -> TasksEvaluator:
        """Read (a path) and prepare a task spec: heads built, images decoded. ``processor_from`` is the model
        whose image processor is used when the spec names none (usually the base)."""
        config = spec if isinstance(spec, TasksConfig) else load_tasks_spec(spec)
        prepared = prepare_tasks(config, processor_from, splits=splits, max_examples=max_examples, device=device,
                                 progress=progress)
        return cls(prepared, config, batch_size=batch_size, device=device)

    @property
    def splits(self) -> tuple[str, ...]:
        """The splits every task has prepared."""
        names = [set(task.splits) for task in self.prepared.values()]
        return tuple(s for s in ("validation", "test") if all(s in n for n in names))

    @property
    def spec_references(self) -> dict[str, dict[str, float]]:
        """split → task → the fine-tuned accuracy the spec states (``finetuned_accuracy``)."""
        found: dict[str, dict[str, float]] = {}
        for task in self.prepared.values():
            for split, value in task.finetuned_accuracy.items():
                found.setdefault(split, {})[task.name] = value
        return found

    def load_model(self, reference) -> torch.nn.Module:
        return load_vision_model(reference, device=self.device)

    def _projection(self, model: torch.nn.Module) -> torch.Tensor | None:
        if self.config is None:
            return None
        if type(model).__name__ != "CLIPVisionModel" or not self.config.text_model:
            return None
        if "bare" not in self._projections:  # the text model's projection, read once
            from .folder import projection_for

            self._projections["bare"] = projection_for(model, self.config)
        return self._projections["bare"]

    def predictions(self, model: torch.nn.Module, task: str, split: str) -> tuple[list[int], list[int]]:
        try:
            prepared = self.prepared[task]
        except KeyError:
            raise EvalInputError(f"no task {task!r}; the tasks are {', '.join(self.task_names)}") from None
        if split not in prepared.splits:
            raise EvalInputError(f"task {task!r} has no prepared split {split!r}")
        features = ImageFeatures(model, self._projection(model))
        predicted = predict(features, prepared, split, batch_size=self.batch_size)
        return predicted.tolist(), prepared.splits[split].labels.tolist()
