"""A rough time estimate for the plan: SVD work modelled as m·n·min(m, n) per decomposition, calibrated by
timing one SVD on this machine, plus reading every input once."""

from __future__ import annotations

import time

import torch

READ_BYTES_PER_SECOND = 1.0e9


def _svd_cost(m: int, n: int) -> float:
    return float(m) * n * min(m, n)


def seconds_per_svd_cost(size: int = 384, repeats: int = 3) -> float:
    a = torch.randn(size, size)
    torch.linalg.svd(a, full_matrices=False)  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        torch.linalg.svd(a, full_matrices=False)
    return (time.perf_counter() - start) / repeats / _svd_cost(size, size)


def estimate_seconds(plan, uses_svd: bool) -> float:
    t = plan.num_tasks
    cost = 0.0
    if uses_svd:
        for unit in plan.units:
            if unit.is_matrix:
                m, n = unit.shape
                k_total = t * (min(m, n) // t)
                cost += t * _svd_cost(m, n) + _svd_cost(m, k_total) + _svd_cost(n, k_total)
    read_bytes = sum(info.nbytes for info in plan.base_infos.values()) * (t + 1)
    return round(cost * seconds_per_svd_cost() + read_bytes / READ_BYTES_PER_SECOND, 1)
