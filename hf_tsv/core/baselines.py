"""Baseline merges users compare TSV against. Pure torch; each returns the merged delta Δ before α.

``task_vectors`` is a tensor ``(T, ...)`` holding the T task vectors τ_t = θ_t − θ₀ of one key.
"""

from __future__ import annotations

import torch

from .svd import InputPrecision, batched_svd, polar_factor


def weight_average(task_vectors: torch.Tensor) -> torch.Tensor:
    """Δ = mean_t τ_t, so θ₀ + Δ = mean_t θ_t (weight averaging / model soup; α is not used).

    Example:
        >>> weight_average(torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
        tensor([2., 3.])
    """
    return task_vectors.mean(dim=0)


def task_arithmetic(task_vectors: torch.Tensor) -> torch.Tensor:
    """Δ = Σ_t τ_t; the merge is θ₀ + λ·Δ (Ilharco et al., 2023; λ's default and grid: :mod:`hf_tsv.methods.ta`).

    Example:
        >>> task_arithmetic(torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
        tensor([4., 6.])
    """
    return task_vectors.sum(dim=0)


def iso_c(
    task_matrices: torch.Tensor,
    *,
    compute_dtype: torch.dtype = torch.float32,
    precision: InputPrecision | None = None,
) -> torch.Tensor:
    """Iso-C (Marczak et al., ICML 2025): the task-arithmetic sum with a flat (isotropic) spectrum.

    Δ_TA = Σ_t τ_t = U S Vᵀ (r = min(m, n) triplets), then Δ = mean(S)·U Vᵀ, the mean over all r. Null
    triplets of Δ_TA (a rank-deficient sum; see :class:`~hf_tsv.core.svd.InputPrecision`) count as σ = 0 in
    the mean and are left out of U Vᵀ, where the authors' code would give LAPACK's arbitrary vectors the mean
    singular value. Non-matrix keys are averaged by the method binding. The merge is θ₀ + α·Δ (α's default and
    grid: :mod:`hf_tsv.methods.iso_c`).

    Example:
        >>> d = iso_c(torch.randn(3, 6, 4, dtype=torch.float64), compute_dtype=torch.float64)
        >>> s = torch.linalg.svdvals(d); bool((s - s.mean()).abs().max() < 1e-9)
        True
    """
    precision = precision or InputPrecision.of(task_matrices)
    num_tasks, m, n = task_matrices.shape
    u, s, v = batched_svd(task_matrices.to(compute_dtype).sum(dim=0), compute_dtype)
    keep = s > precision.null_tolerance(s[:1], (m, n), terms=num_tasks)
    return (s * keep).sum() / min(m, n) * (u[:, keep] @ v[:, keep].T)


def iso_cts_sizes(rank: int, num_tasks: int, common_fraction: float = 0.8) -> tuple[int, int]:
    """Iso-CTS's subspace sizes as the authors' code sets them: ``(k_c, s)``, the common size and the number of
    directions per task, with k_c + s·T = r exactly.

    k_c = ⌊common_fraction·r⌋; s = round((r − k_c)/T) (Python's round, half to even); then k_c = r − s·T. So
    every task gets the same share and the total is r. (If s·T would exceed r, possible only for fractions
    far below the default 0.8 with T > r, s is capped at ⌊r/T⌋; the authors' code would fail there.)

    Example:
        >>> iso_cts_sizes(64, 8), iso_cts_sizes(768, 20), iso_cts_sizes(32, 4)
        ((48, 2), (608, 8), (24, 2))
    """
    k_common = int(common_fraction * rank)
    per_task = min(round((rank - k_common) / num_tasks), rank // num_tasks)
    return rank - per_task * num_tasks, per_task


def iso_cts(
    task_matrices: torch.Tensor,
    common_fraction: float = 0.8,
    *,
    compute_dtype: torch.dtype = torch.float32,
    precision: InputPrecision | None = None,
) -> torch.Tensor:
    """Iso-CTS (Marczak et al., ICML 2025): a common subspace plus task-specific directions, flat spectrum.

    Δ_TA = Σ_t τ_t = U S Vᵀ, r = min(m, n), sizes (k_c, s) from :func:`iso_cts_sizes` (k_c + s·T = r). Common
    part: the top k_c triplets of Δ_TA. Task t: the top s triplets of τ_t − U_c U_cᵀ τ_t (τ_t with the common
    left subspace projected out). The concatenated left and right bases are orthogonalised by their polar
    factors and every singular value is set to the mean of the r kept ones: Δ = mean(σ)·U⊥ V⊥ᵀ. Null
    triplets (measured against Δ_TA's largest σ, see :class:`~hf_tsv.core.svd.InputPrecision`) count as
    σ = 0 and are left out of the bases, where the authors' code would keep LAPACK's arbitrary vectors. The
    merge is θ₀ + α·Δ (α: :mod:`hf_tsv.methods.iso_cts`); non-matrix keys are averaged by the binding.

    Example:
        >>> iso_cts(torch.randn(2, 8, 6)).shape
        torch.Size([8, 6])
    """
    if not 0.0 < common_fraction <= 1.0:
        raise ValueError(f"common_fraction must be in (0, 1], got {common_fraction}")
    precision = precision or InputPrecision.of(task_matrices)
    tau = task_matrices.to(compute_dtype)
    num_tasks, m, n = tau.shape
    r = min(m, n)
    k_common, per_task = iso_cts_sizes(r, num_tasks, common_fraction)
    u, s, v = batched_svd(tau.sum(dim=0), compute_dtype)
    tolerance = precision.null_tolerance(s[:1], (m, n), terms=num_tasks)
    u_parts, s_parts, v_parts = [u[:, :k_common]], [s[:k_common]], [v[:, :k_common]]
    if per_task > 0:
        u_c = u[:, :k_common]
        residual = tau - u_c @ (u_c.T @ tau)
        u_t, s_t, v_t = batched_svd(residual, compute_dtype)
        u_parts += list(u_t[..., :per_task])
        s_parts += list(s_t[..., :per_task])
        v_parts += list(v_t[..., :per_task])
    s_all = torch.cat(s_parts)
    keep = s_all > tolerance
    if not bool(keep.any()):  # Σ_t τ_t is null (e.g. a key no fine-tune changed)
        return tau.new_zeros((m, n))
    u_all = polar_factor(torch.cat(u_parts, dim=1)[:, keep])
    v_all = polar_factor(torch.cat(v_parts, dim=1)[:, keep])
    return (s_all * keep).sum() / r * (u_all @ v_all.T)
