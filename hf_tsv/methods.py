"""The merge methods the engine can run, each a thin binding of a :mod:`hf_tsv.core` function, whose docstring is
the method's definition; its α default and α search grid are here.

A method gives the merged delta Δ of one key from the stacked task vectors ``(T, ...)``; the engine adds
α·Δ to the base. SVD methods treat matrix keys with their own rule and average the other keys;
elementwise methods use one rule for every key. A method may first need a pass over the whole model
(TIES trims each task over all its parameters): ``MergeMethod.statistics`` runs it on a ``scan`` of every key's
task vectors, and each key's Δ then gets its result in :class:`KeyContext`.

Defaults (α, then the grid ``--alpha search`` scores): TSV-M, Iso-C, Iso-CTS 1.0 over 0.1…3.0 (the TSV paper's
grid); task arithmetic 0.3 over 1/30…1; TIES 1.0 over 0.1…3.0 for its disjoint mean (the paper's; λ ≈ 1), 0.3
over 1/30…1 for FusionBench's sum; averaging ignores α.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch

from . import core
from .errors import MergeInputError

TIES_SCOPES = ("model", "tensor")
SVD_GRID = tuple(round(0.1 * i, 2) for i in range(1, 31))  # 0.1, 0.2, …, 3.0: the TSV paper's grid
TA_GRID = tuple(i / 30 for i in range(1, 31))  # 1/30, 2/30, …, 1: task arithmetic's


@dataclass(frozen=True)
class MethodOptions:
    """Method parameters beyond α (all have the defaults of ``method.md``). They are checked, against
    :data:`PARAMETERS`, where every option is: in :class:`hf_tsv.options.MergeOptions`."""

    compute_dtype: torch.dtype = torch.float32
    svd: str = "exact"  # how per-task top-k triplets are computed: exact, fast or lapack
    ties_density: float = 0.2  # TIES: the fraction K of each task's entries kept
    iso_common_fraction: float = 0.8  # Iso-CTS: the common subspace's share of r, before the size rule
    ties_merge: str = "mean"  # TIES: "mean" of the agreeing entries (the paper) or their "sum" (FusionBench)
    ties_scope: str = "model"  # TIES: trim over the whole "model" (the reference) or each "tensor" alone


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
    "ties_merge": Parameter(("ties",), "--ties-merge", choices=core.TIES_MERGES),
    "ties_scope": Parameter(("ties",), "--ties-scope", choices=TIES_SCOPES),
    "iso_common_fraction": Parameter(("iso-cts",), "--iso-common-fraction", low=0.0, high=1.0, low_open=True),
}


@dataclass(frozen=True)
class KeyContext:
    """What a method may use besides one key's task vectors."""

    precision: core.InputPrecision = core.InputPrecision()  # decides the null singular directions
    statistics: object | None = None  # what the method's model-wide pass found (TIES: thresholds, majority sign)


Scan = Callable[[], Iterable[torch.Tensor]]  # every key's stacked task vectors, one fresh pass per call
AlphaDefaults = tuple[float | None, tuple[float, ...]]  # (α used when none is given, α grid of --alpha search)


@dataclass(frozen=True)
class MergeMethod:
    """One merge method. Its definition is the docstring of its :mod:`hf_tsv.core` function; α defaults and the
    α search grid are here (``alpha_defaults``; a default of None means the method ignores α)."""

    name: str
    description: str
    uses_svd: bool
    delta: Callable[[torch.Tensor, MethodOptions, KeyContext], tuple[torch.Tensor, float | None]] = field(repr=False)
    alpha_defaults: Callable[[MethodOptions], AlphaDefaults] = field(repr=False)
    # A pass over the whole model before merging (TIES's model scope); returns KeyContext.statistics, or None.
    model_statistics: Callable[[Scan, MethodOptions], object | None] | None = field(default=None, repr=False)
    # How many times that pass reads every input (for the time estimate).
    model_pass_reads: Callable[[MethodOptions], int] = field(default=lambda opts: 0, repr=False)

    @property
    def default_alpha(self) -> float | None:
        """α with the default options (None: α is not used)."""
        return self.alpha_defaults(MethodOptions())[0]

    def alpha_grid(self, opts: MethodOptions | None = None) -> list[float]:
        """The α values ``--alpha search`` scores for this method (and these options)."""
        return list(self.alpha_defaults(opts or MethodOptions())[1])

    def statistics(self, scan: Scan, opts: MethodOptions) -> object | None:
        """Run the model-wide pass this method needs with ``opts`` (None when it needs none)."""
        return None if self.model_statistics is None else self.model_statistics(scan, opts)

    def key_delta(self, task_vectors: torch.Tensor, is_matrix: bool, opts: MethodOptions,
                  context: KeyContext | None = None):
        """Δ of one key (and its STI for TSV-M matrix keys, else None)."""
        if self.uses_svd and not is_matrix:
            return core.weight_average(task_vectors), None
        return self.delta(task_vectors, opts, context or KeyContext())


def _fixed(alpha: float | None, grid: tuple[float, ...]) -> Callable[[MethodOptions], AlphaDefaults]:
    return lambda opts: (alpha, grid)


def _tsv_m(tau: torch.Tensor, opts: MethodOptions, key: KeyContext):
    factors = core.truncated_task_factors(tau, compute_dtype=opts.compute_dtype, svd=opts.svd,
                                          precision=key.precision)
    return core.tsv_merge_factors(factors), core.singular_task_interference(factors)


def _ties(tau: torch.Tensor, opts: MethodOptions, key: KeyContext):
    if opts.ties_scope == "tensor":
        return core.ties(tau, opts.ties_density, opts.ties_merge), None
    stats = key.statistics
    if not isinstance(stats, core.TiesModelStatistics):
        raise ValueError("TIES over the whole model needs its model-wide statistics (MergeMethod.statistics)")
    return core.ties_merge_trimmed(tau, stats.thresholds, stats.majority, opts.ties_merge), None


def _ties_statistics(scan: Scan, opts: MethodOptions) -> core.TiesModelStatistics | None:
    return core.ties_model_statistics(scan, opts.ties_density) if opts.ties_scope == "model" else None


# TIES: λ ≈ 1 for the paper's disjoint mean (grid 0.1…3.0, like TSV-M); FusionBench's sum uses λ = 0.3 and the
# task-arithmetic grid.
TIES_ALPHA: dict[str, AlphaDefaults] = {"mean": (1.0, SVD_GRID), "sum": (0.3, TA_GRID)}

METHODS: dict[str, MergeMethod] = {
    m.name: m
    for m in [
        MergeMethod("tsv-m", "Task Singular Vectors: Merge (Gargiulo et al., CVPR 2025)", True, _tsv_m,
                    _fixed(1.0, SVD_GRID)),
        MergeMethod("ta", "Task arithmetic (Ilharco et al., ICLR 2023)", False,
                    lambda tau, o, key: (core.task_arithmetic(tau), None), _fixed(0.3, TA_GRID)),
        MergeMethod("ties", "TIES-Merging (Yadav et al., NeurIPS 2023)", False, _ties,
                    lambda o: TIES_ALPHA[o.ties_merge], _ties_statistics,
                    lambda o: core.model_passes(o.compute_dtype) if o.ties_scope == "model" else 0),
        MergeMethod("avg", "Weight averaging (Wortsman et al., ICML 2022)", False,
                    lambda tau, o, key: (core.weight_average(tau), None), _fixed(None, (1.0,))),
        MergeMethod("iso-c", "Iso-C (Marczak et al., ICML 2025)", True,
                    lambda tau, o, key: (core.iso_c(tau, compute_dtype=o.compute_dtype, precision=key.precision),
                                         None), _fixed(1.0, SVD_GRID)),
        MergeMethod("iso-cts", "Iso-CTS (Marczak et al., ICML 2025)", True,
                    lambda tau, o, key: (core.iso_cts(tau, o.iso_common_fraction, compute_dtype=o.compute_dtype,
                                                      precision=key.precision), None), _fixed(1.0, SVD_GRID)),
    ]
}


def get_method(name: str) -> MergeMethod:
    try:
        return METHODS[name]
    except KeyError:
        raise MergeInputError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}") from None


def resolve_alpha(method: MergeMethod, alpha: float | None, opts: MethodOptions | None = None) -> float:
    """α to use: the method's default (for ``opts``) when not given; 1.0 for averaging, which ignores α."""
    default = method.alpha_defaults(opts or MethodOptions())[0]
    if default is None:
        return 1.0
    return default if alpha is None else float(alpha)
