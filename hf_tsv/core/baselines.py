"""Baseline merges users compare TSV against. Pure torch; each returns the merged delta Δ before α.

``task_vectors`` is a tensor ``(T, ...)`` holding the T task vectors τ_t = θ_t − θ₀ of one key.
"""

from __future__ import annotations

import torch

from .svd import batched_svd, polar_factor


def weight_average(task_vectors: torch.Tensor) -> torch.Tensor:
    """Δ = mean_t τ_t, so θ₀ + Δ = mean_t θ_t (weight averaging / model soup).

    Example:
        >>> weight_average(torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
        tensor([2., 3.])
    """
    return task_vectors.mean(dim=0)


def task_arithmetic(task_vectors: torch.Tensor) -> torch.Tensor:
    """Δ = Σ_t τ_t; the merge is θ₀ + λ·Δ (Ilharco et al., 2023).

    Example:
        >>> task_arithmetic(torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
        tensor([4., 6.])
    """
    return task_vectors.sum(dim=0)


def ties(task_vectors: torch.Tensor, density: float = 0.2) -> torch.Tensor:
    """TIES-Merging (Yadav et al., 2023): trim, elect sign, disjoint mean.

    Per task keep the ``density`` fraction of entries with the largest |τ| (per tensor), elect each
    entry's sign as the sign of the sum of the trimmed vectors, and average the entries that agree with
    it (entries where no task agrees stay 0).

    Example:
        >>> ties(torch.tensor([[1.0, -4.0], [3.0, 2.0]]), density=1.0)
        tensor([ 2., -4.])
    """
    if not 0.0 < density <= 1.0:
        raise ValueError(f"density must be in (0, 1], got {density}")
    num_tasks = task_vectors.shape[0]
    flat = task_vectors.reshape(num_tasks, -1)
    keep = max(1, int(round(density * flat.shape[1])))
    if keep < flat.shape[1]:
        # The keep-th largest |τ| of each task is its threshold; ties at the threshold are kept.
        threshold = flat.abs().kthvalue(flat.shape[1] - keep + 1, dim=1, keepdim=True).values
        flat = torch.where(flat.abs() >= threshold, flat, torch.zeros_like(flat))
    sign = torch.sign(flat.sum(dim=0))
    agree = (torch.sign(flat) == sign) & (flat != 0)
    total = torch.where(agree, flat, torch.zeros_like(flat)).sum(dim=0)
    count = agree.sum(dim=0).clamp_min(1)
    return (total / count).reshape(task_vectors.shape[1:])


def iso_c(task_matrices: torch.Tensor, *, compute_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Iso-C (Marczak et al., 2025): the task-arithmetic sum with a flat (isotropic) spectrum.

    Δ_TA = Σ τ_t = U S Vᵀ, then Δ = mean(S)·U Vᵀ.

    Example:
        >>> d = iso_c(torch.randn(3, 6, 4, dtype=torch.float64), compute_dtype=torch.float64)
        >>> s = torch.linalg.svdvals(d); bool((s - s.mean()).abs().max() < 1e-9)
        True
    """
    delta_ta = task_matrices.to(compute_dtype).sum(dim=0)
    u, s, v = batched_svd(delta_ta, compute_dtype)
    return s.mean() * (u @ v.T)


def iso_cts(
    task_matrices: torch.Tensor,
    common_fraction: float = 0.8,
    *,
    compute_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Iso-CTS (Marczak et al., 2025): a common subspace plus task-specific directions, flat spectrum.

    The top ``common_fraction`` of Δ_TA's rank r form the common subspace; each task adds its top
    ⌊(r − k_c)/T⌋ directions of τ_t projected off that subspace. The concatenated left and right bases are
    orthogonalised by their polar factors (as in TSV-M) and every singular value is set to the mean of the
    kept ones.

    Example:
        >>> iso_cts(torch.randn(2, 8, 6)).shape
        torch.Size([8, 6])
    """
    if not 0.0 < common_fraction <= 1.0:
        raise ValueError(f"common_fraction must be in (0, 1], got {common_fraction}")
    tau = task_matrices.to(compute_dtype)
    num_tasks, m, n = tau.shape
    r = min(m, n)
    u, s, v = batched_svd(tau.sum(dim=0), compute_dtype)
    k_common = max(1, int(common_fraction * r))
    k_task = (r - k_common) // num_tasks
    u_parts, s_parts, v_parts = [u[:, :k_common]], [s[:k_common]], [v[:, :k_common]]
    if k_task > 0:
        u_c = u[:, :k_common]
        residual = tau - u_c @ (u_c.T @ tau)
        u_t, s_t, v_t = batched_svd(residual, compute_dtype)
        u_parts += list(u_t[..., :k_task])
        s_parts += list(s_t[..., :k_task])
        v_parts += list(v_t[..., :k_task])
    u_all = polar_factor(torch.cat(u_parts, dim=1))
    v_all = polar_factor(torch.cat(v_parts, dim=1))
    s_flat = torch.cat(s_parts).mean()
    return s_flat * (u_all @ v_all.T)
