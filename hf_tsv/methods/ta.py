"""Task arithmetic (Ilharco et al., ICLR 2023): θ₀ + λ·Σ_t τ_t. Definition: :func:`hf_tsv.core.task_arithmetic`."""

from __future__ import annotations

from .base import TASK_ARITHMETIC_GRID, TASK_ARITHMETIC_QUICK_GRID, AlphaRule, KeyContext, MergeMethod, MethodOptions


def _delta(task_vectors, opts: MethodOptions, key: KeyContext):
    from .. import core

    return core.task_arithmetic(task_vectors), None


def _low_rank_delta(task_vectors, opts: MethodOptions, key: KeyContext):
    """Σ_t ΔW_t of LoRA adapters as their concatenated factors (rank Σ_t r_t)."""
    from .. import core

    return core.concatenated_factors(key.factored), None


METHOD = MergeMethod(
    name="ta",
    title="task arithmetic",
    full_title="Task arithmetic",
    authors="Ilharco et al.",
    venue="ICLR",
    year=2023,
    paper_title="Editing Models with Task Arithmetic",
    paper_url="https://arxiv.org/abs/2212.04089",
    tags=("task-arithmetic",),
    card_description="θ = θ_0 + α · Σ_t τ_t, with task vectors τ_t = θ_t − θ_0.",
    alpha=AlphaRule(0.3, TASK_ARITHMETIC_GRID, TASK_ARITHMETIC_QUICK_GRID),
    delta=_delta,
    low_rank_delta=_low_rank_delta,
)
