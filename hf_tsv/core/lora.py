"""Low-rank task matrices (LoRA adapters): ΔW = s·B·A kept as its factors, its top-k singular triplets computed
exactly without forming ΔW, and TSV's per-task triplets from a mix of dense and factored tasks. Pure torch, no I/O.

For B (m×r) and A (r×n): B = Q_B R_B and Aᵀ = Q_A R_A (thin QRs), so ΔW = Q_B (s·R_B R_Aᵀ) Q_Aᵀ and the SVD of
the small core C = s·R_B R_Aᵀ = U_c Σ V_cᵀ gives ΔW = (Q_B U_c) Σ (Q_A V_c)ᵀ: an exact SVD in O((m + n)·r²).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .svd import DEFAULT_SVD_MODE, InputPrecision, check_compute_dtype
from .tsv import TaskFactors, tasks_rank, truncated_task_factors


@dataclass(frozen=True)
class LowRankDelta:
    """A task matrix held as factors: ΔW = ``scale`` · ``b`` @ ``a`` with ``b`` (m×r) and ``a`` (r×n); r may be 0
    (ΔW = 0: a module the adapter does not touch).

    Example:
        >>> d = LowRankDelta(torch.ones(3, 1), torch.ones(1, 2), scale=2.0)
        >>> d.shape, d.rank, d.dense().tolist()
        ((3, 2), 1, [[2.0, 2.0], [2.0, 2.0], [2.0, 2.0]])
    """

    b: torch.Tensor
    a: torch.Tensor
    scale: float = 1.0

    def __post_init__(self) -> None:
        if self.b.ndim != 2 or self.a.ndim != 2 or self.b.shape[1] != self.a.shape[0]:
            raise ValueError(f"LowRankDelta needs b (m, r) and a (r, n), got {tuple(self.b.shape)} and "
                             f"{tuple(self.a.shape)}")

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.b.shape[0]), int(self.a.shape[1])

    @property
    def rank(self) -> int:
        return int(self.a.shape[0])

    @classmethod
    def zeros(cls, shape: tuple[int, int], dtype: torch.dtype = torch.float32, device=None) -> LowRankDelta:
        """The zero matrix of ``shape`` as rank-0 factors."""
        return cls(torch.zeros(shape[0], 0, dtype=dtype, device=device),
                   torch.zeros(0, shape[1], dtype=dtype, device=device))

    def dense(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """ΔW formed explicitly (m×n), in ``dtype`` (default: the factors')."""
        dtype = dtype or self.b.dtype
        return (self.b.to(dtype) * self.scale) @ self.a.to(dtype)

    def to(self, dtype: torch.dtype, device=None) -> LowRankDelta:
        return LowRankDelta(self.b.to(dtype=dtype, device=device), self.a.to(dtype=dtype, device=device), self.scale)

    def scaled(self, factor: float) -> LowRankDelta:
        """factor · ΔW, with the scale folded into ``b`` (so ``scale`` is 1)."""
        return LowRankDelta(self.b * (self.scale * factor), self.a, 1.0)


def stack_rows(parts: Sequence[LowRankDelta]) -> LowRankDelta:
    """The row-stacked matrix [ΔW_1; ΔW_2; …] (a fused q/k/v group) as factors: B = blockdiag(s_i·B_i),
    A = [A_1; A_2; …].

    Example:
        >>> d = stack_rows([LowRankDelta(torch.ones(2, 1), torch.ones(1, 3)), LowRankDelta.zeros((4, 3))])
        >>> d.shape, d.rank, torch.equal(d.dense()[:2], torch.ones(2, 3)), bool(d.dense()[2:].eq(0).all())
        ((6, 3), 1, True, True)
    """
    if len(parts) == 1:
        return parts[0]
    widths = {p.shape[1] for p in parts}
    if len(widths) != 1:
        raise ValueError(f"row-stacked matrices need one number of columns, got {sorted(widths)}")
    b = torch.block_diag(*[p.b * p.scale for p in parts])
    return LowRankDelta(b, torch.cat([p.a for p in parts], dim=0))


def low_rank_top_k(delta: LowRankDelta, k: int, *, compute_dtype: torch.dtype = torch.float32
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The top-k singular triplets of ΔW = s·B·A, exactly, without forming ΔW: ``U (m, k)``, ``S (k)``,
    ``V (n, k)``, in ``compute_dtype``. Where ΔW has fewer than k triplets (rank r < k, or k > min(m, n) is
    impossible) the missing ones are zero columns with σ = 0. Works for r > min(m, n) too (the QRs are then
    square). Cost O((m + n)·r²) for the QRs plus an SVD of at most r×r.

    Example:
        >>> b, a = torch.randn(50, 4, dtype=torch.float64), torch.randn(4, 40, dtype=torch.float64)
        >>> u, s, v = low_rank_top_k(LowRankDelta(b, a, 0.5), 3, compute_dtype=torch.float64)
        >>> torch.allclose(s, torch.linalg.svdvals(0.5 * b @ a)[:3])
        True
    """
    check_compute_dtype(compute_dtype)
    m, n = delta.shape
    if not 0 <= k <= min(m, n):
        raise ValueError(f"k must be in [0, {min(m, n)}], got {k}")
    u = torch.zeros(m, k, dtype=compute_dtype, device=delta.b.device)
    s = torch.zeros(k, dtype=compute_dtype, device=delta.b.device)
    v = torch.zeros(n, k, dtype=compute_dtype, device=delta.b.device)
    if k == 0 or delta.rank == 0:
        return u, s, v
    q_b, r_b = torch.linalg.qr(delta.b.to(compute_dtype))  # (m, p), (p, r), p = min(m, r)
    q_a, r_a = torch.linalg.qr(delta.a.to(compute_dtype).T)  # (n, q), (q, r)
    core = (r_b * delta.scale) @ r_a.T  # (p, q)
    u_c, s_c, vh_c = torch.linalg.svd(core, full_matrices=False)
    kept = min(k, s_c.shape[0])
    u[:, :kept] = q_b @ u_c[:, :kept]
    s[:kept] = s_c[:kept]
    v[:, :kept] = q_a @ vh_c[:kept].T
    return u, s, v


def task_factors(task_matrices: torch.Tensor, factored: Sequence[LowRankDelta | None] | None = None,
                 k: int | None = None, *, compute_dtype: torch.dtype = torch.float32, svd: str = DEFAULT_SVD_MODE,
                 precision: InputPrecision | None = None) -> TaskFactors:
    """TSV's per-task top-k triplets (:func:`~hf_tsv.core.truncated_task_factors`) where some tasks are given as
    factors: task t is ``factored[t]`` when that is not None (its slot of ``task_matrices`` is then ignored), else
    the dense ``task_matrices[t]``. k defaults to ⌊r/T⌋ over all T tasks. A factored task's triplets come from
    :func:`low_rank_top_k`, and its null ones (σ ≤ ε·max(m, n)·σ₁, ε of ``precision``'s dtype: the factors are
    exact, so the weight-rounding term does not apply) are zeroed as for dense tasks. Equal, up to rounding, to
    the triplets of the dense ΔW.

    Example:
        >>> lora = LowRankDelta(torch.randn(8, 2, dtype=torch.float64), torch.randn(2, 6, dtype=torch.float64))
        >>> tasks = torch.stack([torch.randn(8, 6, dtype=torch.float64), lora.dense()])
        >>> mixed = task_factors(tasks, [None, lora], compute_dtype=torch.float64)
        >>> dense = truncated_task_factors(tasks, compute_dtype=torch.float64)
        >>> torch.allclose(mixed.reconstruct(), dense.reconstruct())
        True
    """
    num_tasks, m, n = task_matrices.shape
    factored = list(factored or [None] * num_tasks)
    if len(factored) != num_tasks:
        raise ValueError(f"factored needs one entry per task ({num_tasks}), got {len(factored)}")
    k = tasks_rank((m, n), num_tasks) if k is None else int(k)
    dense = [t for t, f in enumerate(factored) if f is None]
    if len(dense) == num_tasks:
        return truncated_task_factors(task_matrices, k, compute_dtype=compute_dtype, svd=svd, precision=precision)
    precision = precision or InputPrecision.of(task_matrices)
    exact = InputPrecision(precision.dtype)
    u = torch.zeros(num_tasks, m, k, dtype=compute_dtype, device=task_matrices.device)
    s = torch.zeros(num_tasks, k, dtype=compute_dtype, device=task_matrices.device)
    v = torch.zeros(num_tasks, n, k, dtype=compute_dtype, device=task_matrices.device)
    if dense:
        part = truncated_task_factors(task_matrices[dense], k, compute_dtype=compute_dtype, svd=svd,
                                      precision=precision)
        u[dense], s[dense], v[dense] = part.u, part.s, part.v
    for t, delta in enumerate(factored):
        if delta is None or k == 0:
            continue
        u_t, s_t, v_t = low_rank_top_k(delta, k, compute_dtype=compute_dtype)
        keep = (s_t > exact.null_tolerance(s_t[:1], (m, n))).to(compute_dtype)
        u[t], s[t], v[t] = u_t * keep, s_t * keep, v_t * keep
    return TaskFactors(u, s, v)


def concatenated_factors(deltas: Sequence[LowRankDelta]) -> LowRankDelta:
    """Σ_t ΔW_t as one pair of factors, B = [s_1·B_1, …, s_T·B_T] and A = [A_1; …; A_T] (rank Σ r_t): task
    arithmetic of adapters, exactly.

    Example:
        >>> parts = [LowRankDelta(torch.randn(5, 2), torch.randn(2, 4), 0.5) for _ in range(3)]
        >>> total = concatenated_factors(parts)
        >>> total.rank, torch.allclose(total.dense(), sum(p.dense() for p in parts), atol=1e-6)
        (6, True)
    """
    return LowRankDelta(torch.cat([d.b * d.scale for d in deltas], dim=1), torch.cat([d.a for d in deltas], dim=0))
