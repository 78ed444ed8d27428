"""Small SVD helpers shared by the TSV methods and the SVD baselines. Pure torch, no I/O."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

COMPUTE_DTYPES = (torch.float32, torch.float64)


@dataclass(frozen=True)
class InputPrecision:
    """How precisely the task vectors of one key are known; it decides which singular directions are null.

    A task of rank below the kept count (a LoRA merged into its base, say) has singular triplets that carry
    nothing: LAPACK returns arbitrary vectors for them, and those vectors would still steer a polar factor
    (TSV-M, Iso-CTS) and STI, or get the mean singular value (Iso-C, Iso-CTS). A triplet is **null** when

        σ ≤ ε·(max(m, n)·σ_max + terms·rms(θ₀)·(√m + √n))

    with ε the machine epsilon of the precision τ = θ_t − θ₀ is exact in: the stored dtype, promoted to at least
    float32 (differences of half-precision weights are exact in float32).

    * ε·max(m, n)·σ_max is numpy's ``matrix_rank`` rule at that precision;
    * ε·rms(θ₀)·(√m + √n) is √12 times the spectral norm of a rounding of the weights at that precision
      (entries off by up to ε·|θ|/2): a fine-tune computed in float32 and stored (a merged LoRA, say) carries it,
      and its directions are noise that no float32 SVD resolves. ``terms`` counts the task vectors summed into
      the decomposed matrix (T for Σ_t τ_t). Half-precision rounding is larger, resolvable, and for a model
      trained in half precision part of the fine-tune, so it is kept.

    Both terms depend on the inputs only, never on the SVD's compute dtype, so float32 and float64 SVDs agree on
    which directions exist. The authors' code (and FusionBench) keep the arbitrary null vectors, so their result
    on a rank-deficient task depends on the LAPACK build; hf_tsv departs from it there. On full fine-tunes
    nothing is dropped: their smallest kept σ lies orders of magnitude above this threshold.

    Args:
        dtype: the coarsest dtype the key is stored in (base and fine-tunes).
        weight_rms: root mean square of the base weights θ₀ of the key (0 when unknown: first term only).

    Example:
        >>> p = InputPrecision(torch.bfloat16)  # τ of bfloat16 weights is exact in float32
        >>> float(p.null_tolerance(torch.tensor(1.0), (100, 10))) == 100 * torch.finfo(torch.float32).eps
        True
    """

    dtype: torch.dtype = torch.float32
    weight_rms: float = 0.0

    @property
    def eps(self) -> float:
        """Machine epsilon of the precision the task vectors are exact in."""
        return torch.finfo(torch.promote_types(self.dtype, torch.float32)).eps

    def null_tolerance(self, sigma_max: torch.Tensor, shape: tuple[int, int], terms: int = 1) -> torch.Tensor:
        """The σ at or below which a triplet of an ``shape`` matrix with largest singular value ``sigma_max``
        is null (elementwise over a batch of ``sigma_max``)."""
        m, n = int(shape[-2]), int(shape[-1])
        return self.eps * (max(m, n) * sigma_max + terms * self.weight_rms * (math.sqrt(m) + math.sqrt(n)))

    @classmethod
    def of(cls, tensor: torch.Tensor) -> InputPrecision:
        """The precision of task vectors given as they are stored (the default of the core functions)."""
        return cls(tensor.dtype if tensor.dtype.is_floating_point else torch.float32)


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
    a, norms, wide = _unit_norm_tall(matrices, compute_dtype)
    u, s, vh = torch.linalg.svd(a, full_matrices=False)
    v = vh.mT
    if wide:
        u, v = v, u
    return u, s * norms[..., None], v


def _unit_norm_tall(matrices: torch.Tensor, compute_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """The batch in ``compute_dtype``, each matrix divided by its Frobenius norm, transposed if wide (so m >= n).

    Returns the matrices, their norms and whether they were transposed.
    """
    check_compute_dtype(compute_dtype)
    a = matrices.to(compute_dtype)
    norms = torch.linalg.matrix_norm(a).clamp_min(torch.finfo(compute_dtype).tiny)
    a = a / norms[..., None, None]
    wide = a.shape[-2] < a.shape[-1]
    return (a.mT if wide else a), norms, wide


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


SVD_MODES = ("exact", "fast", "lapack")


def _top_eigenvectors(gram: torch.Tensor, k: int) -> torch.Tensor:
    """Eigenvectors of the k largest eigenvalues of symmetric ``(..., n, n)`` matrices, largest first.

    On CPU, LAPACK's MRRR driver (syevr, through SciPy) computes only those k, about twice as fast as a
    full eigendecomposition for k = n/T; elsewhere (or without SciPy) torch's full ``eigh`` is used.
    """
    n = gram.shape[-1]
    if gram.device.type == "cpu" and 0 < k < n:
        try:
            import scipy.linalg
            from threadpoolctl import threadpool_limits
        except ImportError:
            pass
        else:
            flat = gram.reshape(-1, n, n).numpy()
            out = torch.empty((flat.shape[0], n, k), dtype=gram.dtype)
            with threadpool_limits(torch.get_num_threads()):
                for i, g in enumerate(flat):
                    _, vecs = scipy.linalg.eigh(g, subset_by_index=[n - k, n - 1], driver="evr",
                                                overwrite_a=True, check_finite=False)
                    out[i] = torch.from_numpy(vecs[:, ::-1].copy())
            return out.reshape(*gram.shape[:-1], k)
    return torch.linalg.eigh(gram).eigenvectors[..., -k:].flip(-1)


def top_k_svd(
    matrices: torch.Tensor, k: int, *, mode: str = "exact", compute_dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-k singular triplets of a batch ``(..., m, n)``: ``U (..., m, k)``, ``S (..., k)``, ``V (..., n, k)``.

    Modes (``compute_dtype`` float32; float64 always takes the ``"lapack"`` route):

    * ``"lapack"`` — a full thin SVD per matrix (LAPACK gesdd on CPU), keeping k triplets. What the
      paper's code and FusionBench do; the reference.
    * ``"exact"`` (default) — the r×r Gram matrix (r = min(m, n)) in float32, its eigendecomposition in
      float64, then a Rayleigh-Ritz step on the matrix itself (a thin SVD of the m×k product ``A V``), so
      singular values come from the matrix, not squared ones. Measured closer to a float64 SVD than a float32
      SVD is, and 2-4x faster on CPU for rectangular matrices.
    * ``"fast"`` — as ``"exact"`` with a float32 eigendecomposition: faster again, as accurate as
      ``"exact"`` where the spectrum has a gap after k, less so where k falls in a flat part.

    Example:
        >>> a = torch.randn(2, 30, 12, dtype=torch.float64)
        >>> u, s, v = top_k_svd(a, 4, mode="exact")
        >>> torch.allclose(s, torch.linalg.svdvals(a)[..., :4].float(), rtol=1e-5)
        True
    """
    if mode not in SVD_MODES:
        raise ValueError(f"unknown SVD mode {mode!r}; choose one of {SVD_MODES}")
    if mode == "lapack" or compute_dtype == torch.float64:
        u, s, v = batched_svd(matrices, compute_dtype)
        return u[..., :k], s[..., :k], v[..., :k]
    a, norms, wide = _unit_norm_tall(matrices, compute_dtype)  # tall: the Gram matrix aᵀa is r×r
    eigh_dtype = torch.float64 if mode == "exact" else compute_dtype
    v_top = _top_eigenvectors((a.mT @ a).to(eigh_dtype), k).to(compute_dtype)
    u, s, wh = torch.linalg.svd(a @ v_top, full_matrices=False)
    v = v_top @ wh.mT
    if wide:
        u, v = v, u
    return u, s * norms[..., None], v
