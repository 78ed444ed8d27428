"""Merge with α chosen on validation data, and write the evaluation next to the merged weights."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch

from ..distributed import Shards, current_shards, gather_in_order, my_share, step
from ..methods import DEFAULT_METHOD
from .alpha import search_alpha
from .folder import fill_finetuned_references, projection_for, write_eval_files
from .runner import EvalReport, PreparedTask, evaluate_model, prepare_tasks
from .tasks import TasksConfig


def merge_with_alpha_search(base, models: list, config: TasksConfig, *, method: str = DEFAULT_METHOD,
                            grid: list[float] | None = None, alpha: float | None = None,
                            output_dir: str | os.PathLike | None = None, overwrite: bool = False,
                            batch_size: int = 256, device: str | torch.device = "cpu", max_examples: int | None = None,
                            progress: bool = True, revision: str | None = None, token=None, command: str | None = None,
                            **merge_options):
    """Compute the merge's Δ once, sweep α on every task's validation split, keep the best mean normalised
    accuracy, and report test accuracy at that α. With ``alpha`` given instead, no sweep: that α is evaluated
    on the test splits only (no validation split needed). Returns ``(MergeResult, AlphaSearch | None,
    EvalReport)``; with ``output_dir`` the merge and its ``eval_*`` files are written there (atomically).
    ``merge_options`` are :func:`hf_tsv.merge_linear`'s options (``fuse_qkv``, ``dtype``, ``ties_density``...);
    they, ``grid`` and ``alpha`` are checked (:class:`hf_tsv.options.MergeOptions`) before any work.

    Inside an initialised process group of several processes (``torchrun … -m hf_tsv merge … --alpha search``),
    every process calls it with the same arguments and the work is shared: Δ as :func:`hf_tsv.merge_linear`
    shards it, the α grid round robin, the fine-tuned references and the test evaluation by task; the scores are
    gathered in order, so α, the scores and the written bytes are those of one process (docs/distributed.md).

    Example:
        >>> cfg = load_tasks_spec("tasks.json")  # doctest: +SKIP
        >>> result, search, test = merge_with_alpha_search("base", ["ft_a", "ft_b"], cfg,  # doctest: +SKIP
        ...                                                method="tsv-m", output_dir="merged")
    """
    from .. import MergeResult, merge_linear
    from ..io.writer import atomic_output_dir, check_output_dir
    from ..options import MergeOptions, check_model_references

    options = MergeOptions.from_arguments(method=method, alpha=alpha, alpha_grid=grid, device=device,
                                          **merge_options)
    models = check_model_references(base, models)
    device, grid = options.device, options.alpha_grid
    shards = current_shards()
    searching = alpha is None
    splits = ("validation", "test") if searching else ("test",)
    with step(shards, "in the preflight"):
        if output_dir is not None and (shards is None or shards.is_main):
            check_output_dir(output_dir, overwrite, inputs=[base, *models])
        prepared = prepare_tasks(config, base, splits=splits, max_examples=max_examples, device=device,
                                 progress=progress)
    if shards is not None:  # the shares of the grid and of the tasks fit together only if every process has them
        shards.check_same((grid, alpha, batch_size, [(t.name, t.dataset_id, {s: len(d) for s, d in t.splits.items()},
                                                      t.finetuned_accuracy) for t in prepared]), "α search")
    if len(models) == len(prepared):
        _fill_references(models, prepared, shards, batch_size=batch_size, device=device, config=config,
                         progress=progress)
    elif not all(t.finetuned_accuracy.get(s) for t in prepared for s in splits):
        warnings.warn(f"{len(prepared)} tasks but {len(models)} fine-tuned models: normalised accuracy pairs task i "
                      "with model i, so only absolute accuracy is reported (and α is chosen on it)", stacklevel=2)
    linear = merge_linear(base, models, method, device=device, revision=revision, token=token, command=command,
                          **merge_options)
    model = linear.to_model(1.0 if searching else alpha).to(device)
    projection = projection_for(model, config)
    search = None
    if searching:
        search = search_alpha(linear, prepared, grid=grid, batch_size=batch_size, device=device,
                              projection=projection, progress=progress, shards=shards)
        alpha = search.best_alpha
        linear.load_into(model, alpha)
    test = _evaluate(model, prepared, shards, split="test", batch_size=batch_size, projection=projection,
                     progress=progress)
    result = linear.at(alpha, alpha_search=search.to_dict() if search else None)
    if output_dir is not None:
        with step(shards, "while writing the output"):
            if shards is None or shards.is_main:  # every process holds the same weights: one writes them
                with atomic_output_dir(output_dir, overwrite, inputs=result.inputs) as tmp:
                    result.write_files(tmp)
                    write_eval_files(tmp, test, search)
        result = MergeResult(result.report, result.config, result.model_class, folder=Path(output_dir),
                             inputs=result.inputs)
    return result, search, test


def _task_costs(tasks: list[PreparedTask], splits: tuple[str, ...]) -> list[float]:
    """Each task's number of examples in ``splits`` (what evaluating it costs), to share tasks over processes."""
    return [float(sum(len(t.splits[s]) for s in splits if s in t.splits)) for t in tasks]


def _fill_references(models: list, tasks: list[PreparedTask], shards: Shards | None, **kwargs) -> None:
    """:func:`fill_finetuned_references`, task i (with model i) on one process each, gathered on every process."""
    mine = my_share(_task_costs(tasks, ("validation", "test")), shards)
    with step(shards, "while scoring the fine-tuned models"):
        fill_finetuned_references([models[i] for i in mine], [tasks[i] for i in mine], **kwargs)
    found = gather_in_order(shards, {tasks[i].name: tasks[i].finetuned_accuracy for i in mine},
                            [t.name for t in tasks])
    for task in tasks:
        task.finetuned_accuracy = found[task.name]


def _evaluate(model, tasks: list[PreparedTask], shards: Shards | None, *, split: str, **kwargs) -> EvalReport:
    """:func:`evaluate_model` with the tasks shared over the processes (each task on one), gathered in task order
    on every process: per task the numbers one process computes."""
    mine = [tasks[i] for i in my_share(_task_costs(tasks, (split,)), shards)]
    with step(shards, f"while evaluating ({split})"):
        part = evaluate_model(model, mine, split=split, **kwargs)
    scores = gather_in_order(shards, part.tasks, [t.name for t in tasks])
    return EvalReport(split, scores, {t.name: t.dataset_id for t in tasks})
