"""Iso-C (Marczak et al., ICML 2025): the task-arithmetic sum with a flat spectrum. Definition:
:func:`hf_tsv.core.iso_c`."""

from __future__ import annotations

from .base import TSV_GRID, TSV_QUICK_GRID, AlphaRule, KeyContext, MergeMethod, MethodOptions

PAPER_TITLE = "No Task Left Behind: Isotropic Model Merging with Common and Task-Specific Subspaces"
PAPER_URL = "https://arxiv.org/abs/2502.04959"  # shared with Iso-CTS, the paper's second method


def _delta(task_vectors, opts: MethodOptions, key: KeyContext):
    from .. import core

    return core.iso_c(task_vectors, compute_dtype=opts.compute_dtype, precision=key.precision), None


METHOD = MergeMethod(
    name="iso-c",
    title="Iso-C",
    authors="Marczak et al.",
    venue="ICML",
    year=2025,
    paper_title=PAPER_TITLE,
    paper_url=PAPER_URL,
    tags=("iso-c",),
    card_description=(
        "The summed task matrix Σ_t τ_t of every weight matrix is given a flat spectrum (its mean singular "
        "value times U Vᵀ); θ = θ_0 + α · that. Other parameters are averaged."),
    alpha=AlphaRule(1.0, TSV_GRID, TSV_QUICK_GRID),
    uses_svd=True,
    delta=_delta,
)
