"""The maths of hf_tsv: small torch functions on tensors, no I/O, no Hub."""

from .baselines import iso_c, iso_cts, task_arithmetic, ties, weight_average
from .svd import SVD_MODES, batched_svd, polar_factor, top_k_svd
from .tsv import (
    TaskFactors,
    singular_task_interference,
    tasks_rank,
    truncated_task_factors,
    tsv_merge,
    tsv_merge_factors,
)

__all__ = [
    "TaskFactors",
    "SVD_MODES",
    "batched_svd",
    "top_k_svd",
    "iso_c",
    "iso_cts",
    "polar_factor",
    "singular_task_interference",
    "task_arithmetic",
    "tasks_rank",
    "ties",
    "truncated_task_factors",
    "tsv_merge",
    "tsv_merge_factors",
    "weight_average",
]
