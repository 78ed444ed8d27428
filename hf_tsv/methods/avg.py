"""Weight averaging (Wortsman et al., ICML 2022): θ = mean_t θ_t; α is not used.
Definition: :func:`hf_tsv.core.weight_average`."""

from __future__ import annotations

from .base import AlphaRule, KeyContext, MergeMethod, MethodOptions


def _delta(task_vectors, opts: MethodOptions, key: KeyContext):
    from .. import core

    return core.weight_average(task_vectors), None


METHOD = MergeMethod(
    name="avg",
    title="weight averaging",
    authors="Wortsman et al.",
    venue="ICML",
    year=2022,
    paper_title="Model soups: averaging weights of multiple fine-tuned models improves accuracy without increasing "
                "inference time",
    paper_url="https://arxiv.org/abs/2203.05482",
    tags=("weight-averaging",),
    card_description="θ = mean_t θ_t (α is not used).",
    alpha=AlphaRule(None, (1.0,)),
    delta=_delta,
)
