"""The maths of hf_tsv: small torch functions on tensors, no I/O, no Hub."""

from .baselines import iso_c, iso_cts, iso_cts_sizes, task_arithmetic, weight_average
from .svd import SVD_MODES, InputPrecision, batched_svd, polar_factor, top_k_svd
from .ties_merging import (
    TIES_MERGES,
    TiesModelStatistics,
    model_passes,
    ties,
    ties_merge_trimmed,
    ties_model_statistics,
)
from .tsv import (
    TaskFactors,
    singular_task_interference,
    tasks_rank,
    truncated_task_factors,
    tsv_merge,
    tsv_merge_factors,
)

__all__ = [
    "InputPrecision",
    "TIES_MERGES",
    "TaskFactors",
    "TiesModelStatistics",
    "SVD_MODES",
    "batched_svd",
    "top_k_svd",
    "iso_c",
    "iso_cts",
    "iso_cts_sizes",
    "model_passes",
    "polar_factor",
    "singular_task_interference",
    "task_arithmetic",
    "tasks_rank",
    "ties",
    "ties_merge_trimmed",
    "ties_model_statistics",
    "truncated_task_factors",
    "tsv_merge",
    "tsv_merge_factors",
    "weight_average",
]
