"""Small SVD helpers shared by the TSV methods and the SVD baselines. Pure torch, no I/O."""

from __future__ import annotations

import torch

COMPUTE_DTYPES = (torch.float32, torch.float64)


def check_compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """SVDs run in float32 or float64 only; half precision has no stable LAPACK/cuSOLVER path."""
    if dtype not in COMPUTE_DTYPES:
        raise ValueError(f"compute dtype must be torch.float32 or torch.float64, not {dtype}")
    return dtype


def batched_svd(
    matrices: torch.Tensor, compute_dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Thin SVD of a batch ``(..., m, n)``: returns ``U (..., m, r)``, ``S (..., r)``, ``V (..., n, r)``.

    Runs in ``compute_dtype`` whatever the input dtype. Each matrix is divided by its Frobenius norm
    before the decomposition and the singular values are scaled back afterwards: task matrices are ~1e-3
    of the weights, and unit-scale inputs keep LAPACK away from tiny magnitudes. Wide matrices are
    decomposed through their transpose (much faster with LAPACK's gesdd on CPU); the result is the same.

    Example:
        >>> u, s, v = batched_svd(torch.randn(4, 6, 9))
        >>> u.shape, s.shape, v.shape
        (torch.Size([4, 6, 6]), torch.Size([4, 6]), torch.Size([4, 9, 6]))
    """
    check_compute_dtype(compute_dtype)
    a = matrices.to(compute_dtype)
    norms = torch.linalg.matrix_norm(a).clamp_min(torch.finfo(compute_dtype).tiny)
    a = a / norms[..., None, None]
    wide = a.shape[-2] < a.shape[-1]
    if wide:
        v, s, uh = torch.linalg.svd(a.mT, full_matrices=False)
        u = uh.mT
    else:
        u, s, vh = torch.linalg.svd(a, full_matrices=False)
        v = vh.mT
    return u, s * norms[..., None], v


def polar_factor(a: torch.Tensor) -> torch.Tensor:
    """The orthogonal polar factor ``P Qᵀ`` of ``a = P S Qᵀ`` (the nearest matrix with orthonormal columns).

    Stable for rank-deficient input, unlike whitening ``a (aᵀa)^-1/2``. Works on batches ``(..., m, p)``.

    Example:
        >>> q = polar_factor(torch.randn(8, 3, dtype=torch.float64))
        >>> torch.allclose(q.T @ q, torch.eye(3, dtype=torch.float64))
        True
    """
    if a.shape[-2] < a.shape[-1]:
        return polar_factor(a.mT).mT
    p, _, qh = torch.linalg.svd(a, full_matrices=False)
    return p @ qh
