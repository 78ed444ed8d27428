"""Evaluation of CLIP vision encoders with frozen per-task heads, and α selection on validation data.

It sits above the merge API (it calls :func:`hf_tsv.merge_linear`; nothing below it imports it).
:func:`evaluate_folder` is the one way a model (a merged folder, a Hub id) is evaluated on a task spec.

Example:
    >>> from hf_tsv.evaluation import evaluate_folder, write_eval_files
    >>> report = evaluate_folder("merged", "tasks.json", finetuned=["ft_a", "ft_b"])  # doctest: +SKIP
    >>> print(report.table())  # doctest: +SKIP
"""

from .alpha import DEFAULT_GRIDS, AlphaSearch, default_grid, parse_grid, pick_best, search_alpha, sweep_alpha
from .data import Normalizer, PreparedSplit, load_split, prepare_split
from .evaluator import Evaluator, TasksEvaluator, score_predictions
from .folder import evaluate_folder, fill_finetuned_references, projection_for, write_eval_files
from .heads import CLIP_TEMPLATES, ClipTextEncoder, EvalInputError, TaskHead, load_heads, save_heads, text_head
from .runner import (
                     EvalReport,
                     ImageFeatures,
                     PreparedTask,
                     build_heads,
                     evaluate_model,
                     load_metric,
                     load_vision_model,
                     predict,
                     prepare_tasks,
)
from .tasks import TasksConfig, TaskSpec, load_tasks_spec, parse_tasks_spec

__all__ = ["CLIP_TEMPLATES", "DEFAULT_GRIDS", "AlphaSearch", "ClipTextEncoder", "EvalInputError", "EvalReport",
           "Evaluator", "TasksEvaluator", "score_predictions", "sweep_alpha",
           "ImageFeatures", "Normalizer", "PreparedSplit", "PreparedTask", "TaskHead", "TaskSpec", "TasksConfig",
           "build_heads", "default_grid", "evaluate_folder", "evaluate_model", "fill_finetuned_references",
           "load_heads", "load_metric", "load_split",
           "load_tasks_spec", "load_vision_model", "parse_grid", "parse_tasks_spec", "pick_best", "predict",
           "prepare_split", "prepare_tasks", "projection_for", "save_heads", "search_alpha", "text_head",
           "write_eval_files"]
