"""TSV-M, Task Singular Vectors: Merge (Gargiulo et al., CVPR 2025): the method hf_tsv is built around.

Its definition is the docstring of :func:`hf_tsv.core.tsv_merge`; ``method.md`` has the maths.
"""

from __future__ import annotations

from .base import TSV_GRID, TSV_QUICK_GRID, AlphaRule, KeyContext, MergeMethod, MethodOptions


def _factors(task_vectors, opts: MethodOptions, key: KeyContext):
    from .. import core

    return core.task_factors(task_vectors, key.factored, compute_dtype=opts.compute_dtype, svd=opts.svd,
                             precision=key.precision)


def _delta(task_vectors, opts: MethodOptions, key: KeyContext):
    from .. import core

    factors = _factors(task_vectors, opts, key)
    # adapters (rank r_t ≪ k): polar factors of their Σ r_t kept columns only (same Δ, see tsv_merge_factors)
    return (core.tsv_merge_factors(factors, compact=bool(key.factored), svd=opts.svd),
            core.singular_task_interference(factors))


def _low_rank_delta(task_vectors, opts: MethodOptions, key: KeyContext):
    """Δ = U⊥ diag(σ̂) V⊥ᵀ as B = U⊥ diag(σ̂), A = V⊥ᵀ (rank T·k at most)."""
    from .. import core

    factors = _factors(task_vectors, opts, key)
    return core.tsv_merge_low_rank(factors, svd=opts.svd), core.singular_task_interference(factors)


METHOD = MergeMethod(
    name="tsv-m",
    title="TSV-M",
    full_title="Task Singular Vectors: Merge",
    expansion="Task Singular Vectors",
    authors="Gargiulo et al.",
    venue="CVPR",
    year=2025,
    paper_title="Task Singular Vectors: Reducing Task Interference in Model Merging",
    paper_url="https://arxiv.org/abs/2412.00081",
    tags=("tsv-m",),
    card_description=(
        "For every weight matrix, each task matrix Δ_t = W_t − W_0 is reduced to its top k = ⌊r/T⌋ singular "
        "triplets (r = min(m, n), T tasks). The singular vectors of all tasks are concatenated and replaced by "
        "their closest orthogonal matrices (polar factors), which removes the interference between tasks, and "
        "the merged weight is W_0 + α · U⊥ diag(σ) V⊥ᵀ. Biases, LayerNorms, the class embedding and the patch "
        "convolution are averaged."),
    alpha=AlphaRule(1.0, TSV_GRID, TSV_QUICK_GRID),
    uses_svd=True,
    task_rank="floor(r/T)",
    reports_sti=True,
    delta=_delta,
    factored_tasks=True,
    low_rank_delta=_low_rank_delta,
)
