"""Evaluation of CLIP vision encoders with frozen per-task heads, and α selection on validation data.

Example:
    >>> from hf_tsv.evaluation import load_tasks_spec, prepare_tasks, evaluate_model, load_vision_model
    >>> cfg = load_tasks_spec("tasks.json")  # doctest: +SKIP
    >>> report = evaluate_model(load_vision_model("merged"), prepare_tasks(cfg, "merged"))  # doctest: +SKIP
    >>> print(report.table())  # doctest: +SKIP
"""

from .alpha import DEFAULT_GRIDS, AlphaSearch, default_grid, parse_grid, pick_best, search_alpha
from .data import Normalizer, PreparedSplit, load_split, prepare_split
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
           "ImageFeatures", "Normalizer", "PreparedSplit", "PreparedTask", "TaskHead", "TaskSpec", "TasksConfig",
           "build_heads", "default_grid", "evaluate_model", "load_heads", "load_metric", "load_split",
           "load_tasks_spec", "load_vision_model", "parse_grid", "parse_tasks_spec", "pick_best", "predict",
           "prepare_split", "prepare_tasks", "save_heads", "search_alpha", "text_head"]
