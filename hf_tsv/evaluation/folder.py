"""Evaluate a model (a merged folder, a Hub id or a model in memory) on the tasks of a task spec: the one
implementation behind ``hf-tsv eval``, the Space's evaluation of a merge and the α search's references.

Example:
    >>> report = evaluate_folder("merged", "tasks.json", finetuned=["ft_a", "ft_b"])  # doctest: +SKIP
    >>> print(report.table()); write_eval_files("merged", report)  # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from ..files import ALPHA_SEARCH_NAME, EVAL_RESULTS_NAME, EVAL_TABLE_NAME
from ..io.output import write_file_atomic, write_json
from ..secrets import redact
from .alpha import AlphaSearch
from .heads import ClipTextEncoder, EvalInputError
from .runner import EvalReport, PreparedTask, evaluate_model, load_metric, load_vision_model, prepare_tasks
from .tasks import TasksConfig, load_tasks_spec

# The steps of :func:`evaluate_folder`, in order, as passed to its ``on_step``
STEPS = ("prepare", "references", "evaluate")


def projection_for(model: torch.nn.Module, config: TasksConfig) -> torch.Tensor | None:
    """The visual projection a bare ``CLIPVisionModel`` needs to meet text heads: the ``text_model``'s."""
    if type(model).__name__ != "CLIPVisionModel" or not config.text_model:
        return None
    return ClipTextEncoder(config.text_model).visual_projection


def check_pairing(models: Sequence, num_tasks: int) -> None:
    """Normalised accuracy pairs task i with fine-tuned model i: refuse lists of different lengths."""
    if len(models) != num_tasks:
        raise EvalInputError(f"{num_tasks} tasks but {len(models)} fine-tuned models: normalised accuracy pairs "
                             "task i with model i, so list the tasks in the order of the models (or give each "
                             "task 'finetuned_accuracy')")


def fill_finetuned_references(models: list, tasks: list[PreparedTask], *, batch_size: int = 256,
                              device: str | torch.device = "cpu", config: TasksConfig | None = None,
                              progress: bool = True) -> None:
    """Task i's reference accuracy is fine-tuned model i's own accuracy on each prepared split (kept where
    the task spec already gives it)."""
    check_pairing(models, len(tasks))
    metric = load_metric()
    for ref, task in zip(models, tasks):
        todo = [s for s in task.splits if s not in task.finetuned_accuracy]
        if not todo:
            continue
        model = load_vision_model(ref, device=device)
        projection = projection_for(model, config) if config else None
        for split in todo:
            report = evaluate_model(model, [task], split=split, batch_size=batch_size, projection=projection,
                                    metric=metric, progress=progress)
            task.finetuned_accuracy[split] = report.tasks[task.name]["accuracy"]
        del model


def evaluate_folder(model, tasks: TasksConfig | str | os.PathLike, *, finetuned: Sequence | None = None,
                    split: str = "test", processor_from=None, spec_references: bool = True, batch_size: int = 256,
                    max_examples: int | None = None, device: str | torch.device = "auto", progress: bool = True,
                    on_step: Callable[[str], None] | None = None) -> EvalReport:
    """Top-1 accuracy (and normalised accuracy, where a reference is known) of ``model`` on every task of a task
    spec, with the tasks' frozen heads.

    Args:
        model: a merged folder, a Hub id (``ns/name@rev``) or a transformers model.
        tasks: a :class:`TasksConfig` or the path of a task spec (JSON or YAML).
        finetuned: fine-tuned models, one per task in spec order: model i's own accuracy on task i is the
            reference of task i's normalised accuracy.
        split: ``"test"`` (each task's split), ``"validation"`` (its ``validation_split``) or a split name.
        processor_from: the model whose image processor is used when the spec names none (default ``model``;
            a merged folder saved without one can name its base here).
        spec_references: use the spec's ``finetuned_accuracy`` values (False when they describe other fine-tunes).
        on_step: called with each step of :data:`STEPS` as it starts (``"references"`` only with ``finetuned``).

    Raises:
        MergeInputError: a bad ``device``, before anything is read.
        EvalInputError: a bad spec, dataset, head, or a ``finetuned`` list that does not pair with the tasks.
    """
    from ..options import resolve_device

    device = resolve_device(device)  # options first, before the spec and the model are read
    config = tasks if isinstance(tasks, TasksConfig) else load_tasks_spec(tasks)
    if finetuned:
        check_pairing(finetuned, len(config.tasks))
    step = on_step or (lambda name: None)
    step("prepare")
    prepared = prepare_tasks(config, model if processor_from is None else processor_from, splits=(split,),
                             max_examples=max_examples, device=device, progress=progress)
    if not spec_references:
        for task in prepared:
            task.finetuned_accuracy.clear()
    if finetuned:
        step("references")
        fill_finetuned_references(list(finetuned), prepared, batch_size=batch_size, device=device, config=config,
                                  progress=progress)
    step("evaluate")
    loaded = load_vision_model(model, device=device)
    return evaluate_model(loaded, prepared, split=split, batch_size=batch_size,
                          projection=projection_for(loaded, config), progress=progress)


def write_eval_files(folder: str | os.PathLike, test: EvalReport, search: AlphaSearch | dict | None = None) -> None:
    """``eval_results.json`` (for the card), ``eval_results.md`` and, after a sweep, ``eval_alpha_search.json``
    (``search`` as an :class:`AlphaSearch` or its :meth:`~AlphaSearch.to_dict`)."""
    folder = Path(folder)
    payload = test.to_eval_results()
    sweep = search.to_dict() if isinstance(search, AlphaSearch) else search
    if sweep is not None:
        payload["alpha"] = sweep["best_alpha"]
        payload["alpha_selection"] = sweep["criterion"]
    write_json(folder / EVAL_RESULTS_NAME, payload)
    write_file_atomic(folder / EVAL_TABLE_NAME, redact(test.table()) + "\n")
    if sweep is not None:
        write_json(folder / ALPHA_SEARCH_NAME, sweep)
