"""TIES-Merging (Yadav et al., NeurIPS 2023) as its reference code computes it: trim, elect sign, disjoint merge.
Definition: :mod:`hf_tsv.core.ties_merging`. Over the whole model (its default scope) it needs a model-wide pass
first (:meth:`~hf_tsv.methods.MergeMethod.statistics`)."""

from __future__ import annotations

from .base import (
    TASK_ARITHMETIC_GRID,
    TASK_ARITHMETIC_QUICK_GRID,
    TSV_GRID,
    TSV_QUICK_GRID,
    AlphaRule,
    KeyContext,
    MergeMethod,
    MethodOptions,
    Parameter,
    Scan,
)

DENSITY = Parameter("ties_density", 0.2, "fraction K of each task's entries kept", low=0.0, high=1.0,
                    low_open=True)
MERGE = Parameter("ties_merge", "mean", "mean of the agreeing entries (the paper's) or their sum (FusionBench's)",
                  choices=("mean", "sum"))
SCOPE = Parameter("ties_scope", "model", "trim each task's top entries over the whole model (the reference code's) "
                  "or per tensor", choices=("model", "tensor"))


def _delta(task_vectors, opts: MethodOptions, key: KeyContext):
    from .. import core

    if opts.ties_scope == "tensor":
        return core.ties(task_vectors, opts.ties_density, opts.ties_merge), None
    stats = key.statistics
    if not isinstance(stats, core.TiesModelStatistics):
        raise ValueError("TIES over the whole model needs its model-wide statistics (MergeMethod.statistics)")
    return core.ties_merge_trimmed(task_vectors, stats.thresholds, stats.majority, opts.ties_merge), None


def _statistics(scan: Scan, opts: MethodOptions):
    from .. import core

    if opts.ties_scope != "model":
        return None
    return core.ties_model_statistics(scan, opts.ties_density, getattr(scan, "all_reduce", None))


def _model_pass_reads(opts: MethodOptions) -> int:
    from .. import core

    return core.model_passes(opts.compute_dtype) if opts.ties_scope == "model" else 0


METHOD = MergeMethod(
    name="ties",
    title="TIES",
    full_title="TIES-Merging",
    authors="Yadav et al.",
    venue="NeurIPS",
    year=2023,
    paper_title="TIES-Merging: Resolving Interference When Merging Models",
    paper_url="https://arxiv.org/abs/2306.01708",
    tags=("ties-merging",),
    card_description=(
        f"Each task vector is trimmed to its largest entries (the top {DENSITY.default:.0%} over the whole model, "
        "as the reference "
        "code does, unless the report says ties_scope tensor), a sign is elected per entry (the sign of the "
        "sum; the majority sign where that is 0) and the agreeing entries are averaged (disjoint mean; summed "
        "with ties_merge sum); θ = θ_0 + α · that."),
    # λ ≈ 1 for the paper's disjoint mean (with room on both sides); FusionBench's sum uses task arithmetic's.
    alpha=(AlphaRule(0.3, TASK_ARITHMETIC_GRID, TASK_ARITHMETIC_QUICK_GRID, when=("ties_merge", "sum")),
           AlphaRule(1.0, TSV_GRID, TSV_QUICK_GRID)),
    parameters=(DENSITY, MERGE, SCOPE),
    model_statistics=_statistics,
    model_pass_reads=_model_pass_reads,
    shards_model_pass=True,
    delta=_delta,
)
