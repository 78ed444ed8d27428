"""CPU kernels through NumPy/SciPy (OpenBLAS + LAPACK) where they beat torch's for TSV's shapes. Pure, no I/O.

Measured on one core of this project's machine (AMD EPYC, torch 2.13 CPU wheel, SciPy's OpenBLAS), for the
shapes of a ViT-B/32 merge with T = 8 (``python benchmarks/micro_linalg.py``):

* the Gram matrix ``aᵀa`` of a 768×768 (3072×768) float32 matrix: 4.6 (16) ms with NumPy, which calls BLAS
  ``syrk`` for ``x.T @ x`` (half the flops of a product), against 9.0 (33.5) ms with ``torch.matmul``;
* the thin SVD of a 768×768 (3072×768) float32 matrix: 79 (215) ms with SciPy's ``gesdd`` against 97 (233) ms;
* the top 96 eigenvectors of a 768×768 symmetric matrix: 23 ms with LAPACK's MRRR driver (``syevr``, only
  those vectors) against 40 ms for torch's full ``eigh``.

Every function takes and returns torch tensors; off the CPU, in other dtypes, or without SciPy it uses torch.
BLAS/LAPACK run with torch's thread count (``torch.get_num_threads()``), so ``--threads`` means one thing.
"""

from __future__ import annotations

import functools
from contextlib import contextmanager, nullcontext

import torch

_DTYPES = (torch.float32, torch.float64)


def _scipy_linalg():
    """``(scipy.linalg, the process's threadpoolctl.ThreadpoolController)``, or None when either is missing."""
    try:
        import scipy.linalg
        import threadpoolctl  # noqa: F401 - the controller's; its absence means torch's kernels
    except ImportError:
        return None
    return scipy.linalg, _controller()


@functools.cache
def _controller():
    """One controller for the process: it finds the loaded BLAS/OpenMP libraries once (scipy.linalg has loaded its
    OpenBLAS by then). ``threadpool_limits(n)`` searches them on every call (1.6 ms in a small process, more in a
    merge's, which has loaded transformers) against 0.02 ms for the controller's ``limit``; a B/32 merge makes
    ~900 such calls."""
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


def on_cpu_lapack(*tensors: torch.Tensor) -> bool:
    """Whether these tensors take the NumPy/SciPy kernels: on the CPU, float32 or float64, SciPy importable."""
    return (all(t.device.type == "cpu" and t.dtype in _DTYPES and not t.requires_grad for t in tensors)
            and _scipy_linalg() is not None)


@contextmanager
def torch_threads():
    """OpenBLAS (NumPy/SciPy) limited to torch's thread count for the duration; a no-op without SciPy."""
    found = _scipy_linalg()
    with (found[1].limit(limits=torch.get_num_threads()) if found else nullcontext()):
        yield


def gram(a: torch.Tensor) -> torch.Tensor:
    """``aᵀa`` of a batch ``(..., m, n)``: ``(..., n, n)``, symmetric, in ``a``'s dtype.

    Example:
        >>> a = torch.randn(3, 7, 4, dtype=torch.float64)
        >>> torch.allclose(gram(a), a.mT @ a)
        True
    """
    if not on_cpu_lapack(a) or a.ndim < 2 or a.numel() == 0:
        return a.mT @ a
    m, n = a.shape[-2:]
    flat = a.reshape(-1, m, n)
    out = torch.empty((flat.shape[0], n, n), dtype=a.dtype)
    with torch_threads():
        for i, matrix in enumerate(flat):
            x = matrix.numpy()
            out[i] = torch.from_numpy(x.T @ x)  # NumPy hands x.T @ x to BLAS syrk
    return out.reshape(*a.shape[:-2], n, n)


def thin_svd(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``U, S, Vᴴ`` of the thin SVD of a batch ``(..., m, n)`` (as ``torch.linalg.svd(a, full_matrices=False)``).

    Example:
        >>> a = torch.randn(5, 3, dtype=torch.float64)
        >>> u, s, vh = thin_svd(a)
        >>> torch.allclose((u * s) @ vh, a)
        True
    """
    if not on_cpu_lapack(a) or a.numel() == 0:
        return torch.linalg.svd(a, full_matrices=False)
    scipy_linalg, _ = _scipy_linalg()
    m, n = a.shape[-2:]
    flat = a.reshape(-1, m, n)
    r = min(m, n)
    u = torch.empty((flat.shape[0], m, r), dtype=a.dtype)
    s = torch.empty((flat.shape[0], r), dtype=a.dtype)
    vh = torch.empty((flat.shape[0], r, n), dtype=a.dtype)
    with torch_threads():
        for i, matrix in enumerate(flat):
            ui, si, vhi = scipy_linalg.svd(matrix.numpy(), full_matrices=False, lapack_driver="gesdd",
                                           check_finite=False)
            u[i], s[i], vh[i] = torch.from_numpy(ui), torch.from_numpy(si), torch.from_numpy(vhi)
    batch = a.shape[:-2]
    return u.reshape(*batch, m, r), s.reshape(*batch, r), vh.reshape(*batch, r, n)


def top_eigenvectors(symmetric: torch.Tensor, k: int) -> torch.Tensor:
    """Eigenvectors of the k largest eigenvalues of symmetric ``(..., n, n)`` matrices, largest first.

    On CPU, LAPACK's MRRR driver (``syevr``) computes only those k, about twice as fast as a full
    eigendecomposition for k = n/T; elsewhere torch's full ``eigh``.

    Example:
        >>> g = torch.diag(torch.tensor([1.0, 3.0, 2.0], dtype=torch.float64))
        >>> top_eigenvectors(g, 2).abs()
        tensor([[0., 0.],
                [1., 0.],
                [0., 1.]], dtype=torch.float64)
    """
    n = symmetric.shape[-1]
    if on_cpu_lapack(symmetric) and 0 < k < n and symmetric.numel() > 0:
        scipy_linalg, _ = _scipy_linalg()
        flat = symmetric.reshape(-1, n, n).numpy()
        out = torch.empty((flat.shape[0], n, k), dtype=symmetric.dtype)
        with torch_threads():
            for i, g in enumerate(flat):
                _, vecs = scipy_linalg.eigh(g, subset_by_index=[n - k, n - 1], driver="evr",
                                            check_finite=False)
                out[i] = torch.from_numpy(vecs[:, ::-1].copy())
        return out.reshape(*symmetric.shape[:-1], k)
    return torch.linalg.eigh(symmetric).eigenvectors[..., -k:].flip(-1)


def symmetric_eigh(symmetric: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues (ascending) and eigenvectors of one symmetric matrix; on CPU through LAPACK's
    divide-and-conquer driver (``syevd``), measured ~10% faster than torch's for n = 768 in float64.

    Example:
        >>> values, vectors = symmetric_eigh(torch.diag(torch.tensor([2.0, 1.0], dtype=torch.float64)))
        >>> values
        tensor([1., 2.], dtype=torch.float64)
    """
    if on_cpu_lapack(symmetric) and symmetric.ndim == 2:
        scipy_linalg, _ = _scipy_linalg()
        with torch_threads():
            values, vectors = scipy_linalg.eigh(symmetric.numpy(), driver="evd", check_finite=False)
        return torch.from_numpy(values), torch.from_numpy(vectors)
    result = torch.linalg.eigh(symmetric)
    return result.eigenvalues, result.eigenvectors
