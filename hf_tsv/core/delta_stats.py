"""Cheap statistics of a merged delta Δ (pure torch, no I/O): how large it is and how many directions carry it.

Example:
    >>> import torch
    >>> stats = delta_statistics({"w": torch.eye(4), "b": torch.zeros(4)}, alpha=0.5)
    >>> stats["frobenius_norm"], stats["matrix_keys"], round(stats["mean_stable_rank"], 3)
    (1.0, 1, 4.0)
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

POWER_ITERATIONS = 30  # for the spectral norm of each matrix key (a lower bound that converges from below)


def spectral_norm_estimate(matrix: torch.Tensor, iterations: int = POWER_ITERATIONS) -> float:
    """The largest singular value of ``matrix``, by power iteration on ``MᵀM`` from a fixed start (so it is
    deterministic); exact for a matrix whose top singular value is well separated, never above the true value.

    Example:
        >>> spectral_norm_estimate(torch.diag(torch.tensor([3.0, 1.0])))
        3.0
    """
    m = matrix.double()
    vector = torch.ones(m.shape[1], dtype=torch.float64) / m.shape[1] ** 0.5
    norm = 0.0
    for _ in range(iterations):
        image = m @ vector
        norm = float(image.norm())
        if norm == 0.0:
            return 0.0
        vector = m.T @ image
        vector = vector / vector.norm().clamp_min(1e-300)
    return float((m @ vector).norm())


def delta_statistics(delta: Mapping[str, torch.Tensor], alpha: float = 1.0) -> dict[str, float | int]:
    """Statistics of the applied delta α·Δ over every key of ``delta``:

    * ``frobenius_norm``: ‖α·Δ‖ over all keys together (how far the merge moves the base);
    * ``matrix_keys``: how many keys are 2-D;
    * ``mean_stable_rank``: the mean over 2-D keys of ‖Δ‖²_F / ‖Δ‖²_2 (α-free; how many directions carry the
      update; an all-zero key counts 0). The spectral norm is :func:`spectral_norm_estimate`'s.
    """
    squares = 0.0
    ranks = []
    for tensor in delta.values():
        t = tensor.double()
        fro2 = float((t * t).sum())
        squares += fro2
        if t.ndim == 2:
            top = spectral_norm_estimate(t)
            ranks.append(fro2 / top**2 if top > 0 else 0.0)
    return {"frobenius_norm": abs(alpha) * squares**0.5, "matrix_keys": len(ranks),
            "mean_stable_rank": sum(ranks) / len(ranks) if ranks else 0.0}
