"""Iso-CTS (Marczak et al., ICML 2025): Iso-C's common subspace plus each task's own directions. Definition:
:func:`hf_tsv.core.iso_cts`."""

from __future__ import annotations

from .base import TSV_GRID, TSV_QUICK_GRID, AlphaRule, KeyContext, MergeMethod, MethodOptions, Parameter
from .iso_c import PAPER_TITLE, PAPER_URL

COMMON_FRACTION = Parameter("iso_common_fraction", 0.8, "the common subspace's share of r, before the size rule",
                            low=0.0, high=1.0, low_open=True)


def _delta(task_vectors, opts: MethodOptions, key: KeyContext):
    from .. import core

    return core.iso_cts(task_vectors, opts.iso_common_fraction, compute_dtype=opts.compute_dtype,
                        precision=key.precision), None


METHOD = MergeMethod(
    name="iso-cts",
    title="Iso-CTS",
    authors="Marczak et al.",
    venue="ICML",
    year=2025,
    paper_title=PAPER_TITLE,
    paper_url=PAPER_URL,
    tags=("iso-cts",),
    card_description=(
        "The top directions of Σ_t τ_t plus each task's own top directions outside that subspace are "
        "orthogonalised as in TSV-M and given a flat spectrum; θ = θ_0 + α · that. Other parameters are "
        "averaged."),
    alpha=AlphaRule(1.0, TSV_GRID, TSV_QUICK_GRID),
    uses_svd=True,
    parameters=(COMMON_FRACTION,),
    delta=_delta,
)
