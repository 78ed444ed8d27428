"""The merge methods the engine can run, each a thin binding of a :mod:`hf_tsv.core` function.

A method gives the merged delta Δ of one key from the stacked task vectors ``(T, ...)``; the engine adds
α·Δ to the base. SVD methods treat matrix keys with their own rule and average the other keys;
elementwise methods use one rule for every key.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from . import core
from .errors import MergeInputError


@dataclass(frozen=True)
class MethodOptions:
    """Method parameters beyond α (all have the defaults of ``method.md``)."""

    compute_dtype: torch.dtype = torch.float32
    svd: str = "exact"  # how per-task top-k triplets are computed: exact, fast or lapack
    ties_density: float = 0.2
    iso_common_fraction: float = 0.8


@dataclass(frozen=True)
class Parameter:
    """What one method parameter (a field of :class:`MethodOptions` besides ``compute_dtype`` and ``svd``)
    accepts: a number in ``[low, high]`` (``low`` itself excluded when ``low_open``), or one of ``choices``.
    :class:`hf_tsv.options.MergeOptions` checks every parameter against its declaration, and the merge report
    records the parameters of the method that ran. A new parameter is one field above and one line below."""

    methods: tuple[str, ...]  # the methods that read it
    flag: str  # its command-line flag, named in error messages
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    choices: tuple[str, ...] | None = None


PARAMETERS: dict[str, Parameter] = {
    "ties_density": Parameter(("ties",), "--ties-density", low=0.0, high=1.0, low_open=True),
    "iso_common_fraction": Parameter(("iso-cts",), "--iso-common-fraction", low=0.0, high=1.0, low_open=True),
}


@dataclass(frozen=True)
class MergeMethod:
    name: str
    description: str
    default_alpha: float | None  # None: α is not used (weight averaging)
    uses_svd: bool
    delta: Callable[[torch.Tensor, MethodOptions], tuple[torch.Tensor, float | None]] = field(repr=False)

    def key_delta(self, task_vectors: torch.Tensor, is_matrix: bool, opts: MethodOptions):
        """Δ of one key (and its STI for TSV-M matrix keys, else None)."""
        if self.uses_svd and not is_matrix:
            return core.weight_average(task_vectors), None
        return self.delta(task_vectors, opts)


def _tsv_m(tau: torch.Tensor, opts: MethodOptions):
    factors = core.truncated_task_factors(tau, compute_dtype=opts.compute_dtype, svd=opts.svd)
    return core.tsv_merge_factors(factors), core.singular_task_interference(factors)


METHODS: dict[str, MergeMethod] = {
    m.name: m
    for m in [
        MergeMethod("tsv-m", "Task Singular Vectors: Merge (Gargiulo et al., CVPR 2025)", 1.0, True, _tsv_m),
        MergeMethod("ta", "Task arithmetic (Ilharco et al., ICLR 2023)", 0.3, False,
                    lambda tau, o: (core.task_arithmetic(tau), None)),
        MergeMethod("ties", "TIES-Merging (Yadav et al., NeurIPS 2023)", 0.3, False,
                    lambda tau, o: (core.ties(tau, o.ties_density), None)),
        MergeMethod("avg", "Weight averaging (Wortsman et al., ICML 2022)", None, False,
                    lambda tau, o: (core.weight_average(tau), None)),
        MergeMethod("iso-c", "Iso-C (Marczak et al., ICML 2025)", 1.0, True,
                    lambda tau, o: (core.iso_c(tau, compute_dtype=o.compute_dtype), None)),
        MergeMethod("iso-cts", "Iso-CTS (Marczak et al., ICML 2025)", 1.0, True,
                    lambda tau, o: (core.iso_cts(tau, o.iso_common_fraction, compute_dtype=o.compute_dtype),
                                    None)),
    ]
}


def get_method(name: str) -> MergeMethod:
    try:
        return METHODS[name]
    except KeyError:
        raise MergeInputError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}") from None


def resolve_alpha(method: MergeMethod, alpha: float | None) -> float:
    """α to use: the method's default when not given; 1.0 for averaging, which ignores α."""
    if method.default_alpha is None:
        return 1.0
    return method.default_alpha if alpha is None else float(alpha)
