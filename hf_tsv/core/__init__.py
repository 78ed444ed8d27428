"""The maths of hf_tsv: small torch functions on tensors, no I/O, no Hub."""

from .baselines import iso_c, iso_cts, iso_cts_sizes, task_arithmetic, weight_average
from .lora import LowRankDelta, concatenated_factors, low_rank_top_k, stack_rows, task_factors
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
    tsv_merge_low_rank,
)

__all__ = [
    "InputPrecision",
    "LowRankDelta",
    "concatenated_factors",
    "low_rank_top_k",
    "stack_rows",
    "task_factors",
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
    "tsv_merge_low_rank",
    "weight_average",
]
