"""Small SVD helpers shared by the TSV methods and the SVD baselines. Pure torch, no I/O."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from . import cpu_lapack

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


def polar_factor(a: torch.Tensor, *, mode: str = "exact") -> torch.Tensor:
    """The orthogonal polar factor ``P Qᵀ`` of ``a = P S Qᵀ`` (the nearest matrix with orthonormal columns).

    Stable for rank-deficient input, unlike whitening ``a (aᵀa)^-1/2``. Works on batches ``(..., m, p)``.
    With ``mode="fast"`` the SVD runs through SciPy's LAPACK on CPU (:mod:`~hf_tsv.core.cpu_lapack`): the same
    algorithm (gesdd), measured ~20% faster than torch's here; other modes use ``torch.linalg.svd``.

    Example:
        >>> q = polar_factor(torch.randn(8, 3, dtype=torch.float64))
        >>> torch.allclose(q.T @ q, torch.eye(3, dtype=torch.float64))
        True
    """
    if a.shape[-2] < a.shape[-1]:
        return polar_factor(a.mT, mode=mode).mT
    if mode != "fast":
        p, _, qh = torch.linalg.svd(a, full_matrices=False)
        return p @ qh
    if a.ndim == 2 and a.dtype == torch.float32 and a.shape[0] >= _TALL * a.shape[1]:
        q = polar_factor_from_gram(a)
        if q is not None:
            return q
    p, _, qh = cpu_lapack.thin_svd(a)
    return p @ qh


# How much taller than wide a float32 block must be for the fast mode to take its polar factor from its Gram
# matrix: a 3072×768 block 150 ms against 250 ms for the SVD; a square one is faster by SVD (88 ms against ~100).
_TALL = 2
# Condition number of a block up to which a·G^{-1/2} is applied in float32: the product then loses at most ~κ·ε.
_WELL_CONDITIONED = 10.0


def polar_factor_from_gram(a: torch.Tensor) -> torch.Tensor | None:
    """The polar factor of a float32 m×p block ``a`` as ``a (aᵀa)^{-1/2}``, or ``None`` when ``a`` is numerically
    rank-deficient at float32 precision (the caller then takes the SVD route, which is defined there).

    G = aᵀa is formed in float64, where the products of float32 entries are exact, and decomposed in float64, so
    G's small eigenvalues σ_min(a)² are resolved: the result is the polar factor of ``a`` as stored, as an SVD of
    ``a`` in float64 would give it (closer than a float32 SVD). ``a`` counts as rank-deficient when

        λ_min(G) ≤ max((p·ε₃₂)², p·ε₆₄)·λ_max(G),

    numpy's ``matrix_rank`` rule on ``a`` itself (below it σ_min(a) is rounding noise of ``a``), never below what
    float64 resolves. The product a·G^{-1/2} runs in float32 when κ(a) ≤ 10, else in float64.

    Example:
        >>> a = torch.randn(12, 4)
        >>> torch.allclose(polar_factor_from_gram(a), polar_factor(a), atol=1e-5)
        True
        >>> a[:, 1] = a[:, 0]  # dependent columns: no Gram route
        >>> polar_factor_from_gram(a) is None
        True
    """
    p = a.shape[-1]
    if p == 0:
        return a
    values, vectors = cpu_lapack.symmetric_eigh(cpu_lapack.gram(a.to(torch.float64)))
    smallest, largest = float(values[0]), float(values[-1])
    relative = max((p * torch.finfo(torch.float32).eps) ** 2, p * torch.finfo(torch.float64).eps)
    if not largest > 0 or smallest <= relative * largest:
        return None
    inverse_sqrt = (vectors * values.rsqrt()) @ vectors.T
    if (largest / smallest) ** 0.5 <= _WELL_CONDITIONED:
        return a @ inverse_sqrt.to(torch.float32)
    return (a.to(torch.float64) @ inverse_sqrt).to(torch.float32)


SVD_MODES = ("exact", "fast", "lapack")
DEFAULT_SVD_MODE = "fast"

# σ_1/σ_k of a task above which the Gram modes refine its top k (:func:`_refine_top_k`). Measured on T = 8 random
# 768×768 tasks with geometric spectra (benchmarks/accuracy_spectra.py, median of 2 seeds): unrefined, the fast
# mode's error against float64 is 0.69× a float32 SVD's (FusionBench's) at σ_1/σ_k = 4, 1.04× at 8, 1.41× at 12,
# 1.99× at 16, 10.8× at 64 and ~3000× at 256; refined, 0.56-0.74× from 16 to 256. The benchmark sets stay below
# it (σ_1/σ_k ≤ 10.4 on the synthetic ones, ≤ 11.2 on the real MiniLM fine-tunes), so their merges are unchanged.
STEEP_SPECTRUM = 12.0


def _refine_top_k(a: torch.Tensor, gram: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-k triplets of one tall matrix ``a`` from its Gram matrix ``gram``, refined by one step of subspace iteration.

    The eigenvectors of aᵀa are accurate to ε·σ_1²/gap, so a direction with σ_i ≪ σ_1 picks up rounding of the large
    ones; a float32 SVD of ``a`` is accurate to ε·σ_1/gap. One step on ``a`` itself (V ← orth(aᵀ·orth(a·V)), then
    the Rayleigh-Ritz SVD of a·V) damps that by (σ_j/σ_i)², and p = max(8, ⌈k/4⌉) more vectors than k hold the
    directions just past the kth, which a step damps least. Costs a second top-(k+p) eigenproblem, two more
    products with ``a`` and two thin QRs; the Gram modes take it only for steep spectra (:data:`STEEP_SPECTRUM`).
    """
    q = min(a.shape[-1], k + max(8, -(-k // 4)))
    start = cpu_lapack.top_eigenvectors(gram, q).to(a.dtype)
    y = torch.linalg.qr(a @ start).Q
    v = torch.linalg.qr(a.mT @ y).Q
    u, s, wh = torch.linalg.svd(a @ v, full_matrices=False)
    return u[:, :k], s[:k], v @ wh[:k].mT


def top_k_svd(
    matrices: torch.Tensor, k: int, *, mode: str = DEFAULT_SVD_MODE, compute_dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-k singular triplets of a batch ``(..., m, n)``: ``U (..., m, k)``, ``S (..., k)``, ``V (..., n, k)``.

    Modes (``compute_dtype`` float32; float64 always takes the ``"lapack"`` route):

    * ``"lapack"`` — a full thin SVD per matrix (LAPACK gesdd on CPU), keeping k triplets. What the
      paper's code and FusionBench do; the reference.
    * ``"exact"`` — the r×r Gram matrix (r = min(m, n)) in float32, its top-k eigenvectors in float64, then a
      Rayleigh-Ritz step on the matrix itself (a thin SVD of the m×k product ``A V``), so singular values come
      from the matrix, not squared ones. Measured closer to a float64 SVD than a float32 SVD is, and 2-4x
      faster on CPU for rectangular matrices. The previous default.
    * ``"fast"`` (default, :data:`DEFAULT_SVD_MODE`) — as ``"exact"`` with a float32 eigensolver and the Gram
      matrices by BLAS ``syrk`` (:mod:`~hf_tsv.core.cpu_lapack`): faster again; as accurate as ``"exact"`` where
      the spectrum has a gap after k, less so where k falls in a flat part, and there still closer to float64
      than FusionBench's float32 SVDs (docs/benchmark.md).

    Both Gram modes refine a task whose kept spectrum is steep (σ_1/σ_k > :data:`STEEP_SPECTRUM`) by one step of
    subspace iteration on the matrix itself: a Gram matrix squares the condition, and without the step their error
    grows with σ_1/σ_k past a float32 SVD's (docs/methods.md, "Steep spectra"). Below that ratio nothing changes.

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
    gram = (a.mT @ a).to(torch.float64) if mode == "exact" else cpu_lapack.gram(a)
    v_top = cpu_lapack.top_eigenvectors(gram, k).to(compute_dtype)
    u, s, wh = torch.linalg.svd(a @ v_top, full_matrices=False)  # batched: faster than SciPy's loop here
    v = v_top @ wh.mT
    # A steep kept spectrum: the Gram matrix squared its condition, so the small kept directions carry rounding of
    # the large ones; one step of subspace iteration on the matrix itself removes it (:func:`_refine_top_k`).
    for index in (s[..., 0] > STEEP_SPECTRUM * s[..., -1]).nonzero().tolist():
        index = tuple(index)
        u[index], s[index], v[index] = _refine_top_k(a[index], gram[index], k)
    if wide:
        u, v = v, u
    return u, s * norms[..., None], v
