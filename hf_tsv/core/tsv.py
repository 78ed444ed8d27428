"""Task Singular Vectors: TSV-C truncation, TSV-M merging and Singular Task Interference (STI).

Pure torch functions on one matrix key: ``task_matrices`` is a tensor ``(T, m, n)`` holding the T task
matrices Δ_t = W_t − W_0 of that key. See ``method.md`` for the maths (arXiv 2412.00081).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from . import cpu_lapack
from .svd import DEFAULT_SVD_MODE, InputPrecision, polar_factor, top_k_svd


def tasks_rank(shape: tuple[int, int] | torch.Size, num_tasks: int) -> int:
    """k = ⌊min(m, n) / T⌋, the number of singular triplets each task keeps (0 when T > r).

    Example:
        >>> tasks_rank((768, 3072), 8)
        96
    """
    if num_tasks < 1:
        raise ValueError("num_tasks must be at least 1")
    return min(int(shape[-2]), int(shape[-1])) // num_tasks


@dataclass
class TaskFactors:
    """The top-k singular triplets of every task: ``u (T, m, k)``, ``s (T, k)``, ``v (T, n, k)``."""

    u: torch.Tensor
    s: torch.Tensor
    v: torch.Tensor

    @property
    def k(self) -> int:
        return self.s.shape[-1]

    def concatenated(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Û (m, T·k), σ̂ (T·k) and V̂ (n, T·k): task t's block occupies columns [t·k, (t+1)·k)."""
        num_tasks, m, k = self.u.shape
        n = self.v.shape[1]
        u_hat = self.u.permute(1, 0, 2).reshape(m, num_tasks * k)
        v_hat = self.v.permute(1, 0, 2).reshape(n, num_tasks * k)
        return u_hat, self.s.reshape(num_tasks * k), v_hat

    def reconstruct(self) -> torch.Tensor:
        """Each task's rank-k approximation U_k diag(σ_k) V_kᵀ, shape ``(T, m, n)``."""
        return (self.u * self.s[:, None, :]) @ self.v.mT


def truncated_task_factors(
    task_matrices: torch.Tensor,
    k: int | None = None,
    *,
    compute_dtype: torch.dtype = torch.float32,
    svd: str = DEFAULT_SVD_MODE,
    precision: InputPrecision | None = None,
) -> TaskFactors:
    """TSV-C: each task's top-k singular triplets (default k = ⌊r/T⌋), computed in one batched SVD.

    Null triplets (a task of rank < k) are returned as zero vectors; what is null depends on ``precision``,
    the inputs' precision (default: the dtype ``task_matrices`` come in), never on ``compute_dtype`` (see
    :class:`~hf_tsv.core.svd.InputPrecision`). ``svd`` picks how the triplets are computed (``"exact"``,
    ``"fast"`` or ``"lapack"``, see :func:`~hf_tsv.core.svd.top_k_svd`).

    Example:
        >>> f = truncated_task_factors(torch.randn(4, 12, 10))
        >>> f.u.shape, f.s.shape, f.v.shape
        (torch.Size([4, 12, 2]), torch.Size([4, 2]), torch.Size([4, 10, 2]))
    """
    if task_matrices.ndim != 3:
        raise ValueError(f"task_matrices must be (T, m, n), got shape {tuple(task_matrices.shape)}")
    num_tasks, m, n = task_matrices.shape
    k = tasks_rank((m, n), num_tasks) if k is None else int(k)
    if not 0 <= k <= min(m, n):
        raise ValueError(f"k must be in [0, {min(m, n)}], got {k}")
    if k == 0:
        z = task_matrices.new_zeros((), dtype=compute_dtype)
        return TaskFactors(z.expand(num_tasks, m, 0), z.expand(num_tasks, 0), z.expand(num_tasks, n, 0))
    precision = precision or InputPrecision.of(task_matrices)
    u, s, v = top_k_svd(task_matrices, k, mode=svd, compute_dtype=compute_dtype)
    # A task of rank < k has kept triplets with σ ≈ 0 whose vectors LAPACK picks arbitrarily; they are not
    # task directions, yet they would steer the polar step and STI. Zero them.
    null = s <= precision.null_tolerance(s[..., :1], (m, n))
    if bool(null.any()):
        keep = (~null).to(s.dtype)
        u, s, v = u * keep[:, None, :], s * keep, v * keep[:, None, :]
    return TaskFactors(u.contiguous(), s.contiguous(), v.contiguous())


def tsv_merge_factors(factors: TaskFactors, *, compact: bool = False, svd: str = DEFAULT_SVD_MODE) -> torch.Tensor:
    """TSV-M from truncated factors: Δ = U⊥ diag(σ̂) V⊥ᵀ with U⊥, V⊥ the polar factors of Û and V̂.

    The polar factor is taken of the compact (m, T·k) block. It equals the first T·k columns of the polar
    factor of the zero-padded (m, r) block of the paper whenever Û has full column rank; the padded slots
    carry σ = 0 and add nothing to Δ. With ``compact`` the null triplets (σ = 0: a task of rank below k, such as a
    LoRA adapter of rank r_t ≪ k) are dropped before the polar steps, by the same argument: the polar factors
    are then of an (m, Σ_t min(r_t, k)) block, not (m, T·k); the result is the same whenever the kept block has
    full column rank (used for tasks given as factors, where it is most of the cost). ``svd`` is the mode the
    factors were computed in; it picks the polar factors' SVD routine (:func:`~hf_tsv.core.svd.polar_factor`).
    """
    u_hat, s_hat, v_hat = _kept_columns(factors, compact)
    if u_hat.shape[1] == 0:
        return factors.u.new_zeros((factors.u.shape[1], factors.v.shape[1]))
    return (polar_factor(u_hat, mode=svd) * s_hat) @ polar_factor(v_hat, mode=svd).T


def _kept_columns(factors: TaskFactors, compact: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Û, σ̂, V̂ (:meth:`TaskFactors.concatenated`), without the σ = 0 columns when ``compact``."""
    u_hat, s_hat, v_hat = factors.concatenated()
    if compact:
        kept = s_hat != 0
        u_hat, s_hat, v_hat = u_hat[:, kept], s_hat[kept], v_hat[:, kept]
    return u_hat, s_hat, v_hat


def tsv_merge_low_rank(factors: TaskFactors, *, svd: str = DEFAULT_SVD_MODE):
    """TSV-M's Δ = U⊥ diag(σ̂) V⊥ᵀ as factors B = U⊥ diag(σ̂) (m×T·k at most), A = V⊥ᵀ: a
    :class:`~hf_tsv.core.lora.LowRankDelta` whose product is :func:`tsv_merge_factors` (what a LoRA adapter of the
    merge holds). Null triplets are dropped first (``compact`` of :func:`tsv_merge_factors`).

    Example:
        >>> f = truncated_task_factors(torch.randn(3, 9, 7, dtype=torch.float64), compute_dtype=torch.float64)
        >>> torch.allclose(tsv_merge_low_rank(f).dense(), tsv_merge_factors(f))
        True
    """
    from .lora import LowRankDelta

    u_hat, s_hat, v_hat = _kept_columns(factors, compact=True)
    if u_hat.shape[1] == 0:
        return LowRankDelta.zeros((factors.u.shape[1], factors.v.shape[1]), factors.u.dtype, factors.u.device)
    return LowRankDelta(polar_factor(u_hat, mode=svd) * s_hat, polar_factor(v_hat, mode=svd).T)


def tsv_merge(
    task_matrices: torch.Tensor,
    k: int | None = None,
    *,
    compute_dtype: torch.dtype = torch.float32,
    svd: str = DEFAULT_SVD_MODE,
    precision: InputPrecision | None = None,
) -> torch.Tensor:
    """TSV-M merged delta of one matrix key (before α): returns Δ in ``compute_dtype``, shape (m, n).

    Example:
        >>> tau = torch.randn(1, 6, 5, dtype=torch.float64)
        >>> torch.allclose(tsv_merge(tau, compute_dtype=torch.float64), tau[0])  # T = 1: the task itself
        True
    """
    factors = truncated_task_factors(task_matrices, k, compute_dtype=compute_dtype, svd=svd, precision=precision)
    return tsv_merge_factors(factors, svd=svd)


def singular_task_interference(factors: TaskFactors) -> float:
    """STI = Σ |(ÛᵀÛ − I) Σ̂ (V̂ᵀV̂ − I)| (entrywise L1) on the truncated, concatenated factors.

    Only cross-task blocks contribute: within a task the singular vectors are orthonormal. Null triplets (σ = 0,
    zeroed by :func:`truncated_task_factors`: a task of rank below k, such as a LoRA adapter) contribute nothing
    and are left out first, so adapters of rank r_t ≪ k cost Grams of Σ_t r_t columns, not T·k.

    Example:
        >>> singular_task_interference(truncated_task_factors(torch.randn(1, 8, 8)))  # one task: none
        0.0
    """
    if factors.k == 0:
        return 0.0
    u_hat, s_hat, v_hat = factors.concatenated()
    task = torch.arange(factors.s.shape[0], device=s_hat.device).repeat_interleave(factors.k)
    kept = s_hat != 0
    if not bool(kept.all()):
        u_hat, s_hat, v_hat, task = u_hat[:, kept], s_hat[kept], v_hat[:, kept], task[kept]
    # Within a task the vectors are orthonormal by construction, so the diagonal blocks of ÛᵀÛ − I and
    # V̂ᵀV̂ − I are exactly zero; setting them so drops the rounding noise of the SVD.
    same_task = task[:, None] == task[None, :]
    left = cpu_lapack.gram(u_hat).masked_fill(same_task, 0.0)
    right = cpu_lapack.gram(v_hat).masked_fill(same_task, 0.0)
    return float(((left * s_hat) @ right).abs().sum())
