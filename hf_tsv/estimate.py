"""A rough time estimate for a plan: one merge of random task matrices of the most common matrix shape is
timed on this machine, and every key's cost is scaled from it by m·n·min(m, n); reading the inputs is
added at disk speed."""

from __future__ import annotations

import time

import torch

READ_BYTES_PER_SECOND = 0.5e9


def _cost(shape) -> float:
    m, n = shape
    return float(m) * n * min(m, n)


def estimate_seconds(plan, method, options) -> float:
    """Seconds the merge of ``plan`` with ``method`` (a :class:`~hf_tsv.methods.MergeMethod`) and ``options``
    (:class:`~hf_tsv.methods.MethodOptions`) should take on this machine."""
    t = plan.num_tasks
    reads = 1 + method.model_pass_reads(options)  # TIES over the whole model reads every input 3-5 more times
    read_bytes = sum(plan.base_infos[key].nbytes * (1 if unit.from_base else t + 1)  # kept keys: the base's only
                     for unit in plan.units for key in unit.keys)
    read = reads * read_bytes / READ_BYTES_PER_SECOND
    matrices = [u for u in plan.units if u.is_matrix]
    if not method.uses_svd or not matrices:
        return round(read, 1)
    shapes = [tuple(u.shape) for u in matrices]
    probe = max(set(shapes), key=shapes.count)
    tau = torch.randn(t, *probe) * 1e-3
    method.key_delta(tau[:, :8, :8], True, options)  # warm-up
    start = time.perf_counter()
    method.key_delta(tau, True, options)
    per_cost = (time.perf_counter() - start) / _cost(probe)
    return round(read + per_cost * sum(_cost(u.shape) for u in matrices), 1)


# Reading, subtracting and writing one entry of one input, in the units of _cost (multiply-adds): a rough weight
# that keeps averaged keys (biases, norms, embeddings) from counting as free when keys are balanced over processes.
READ_COST_PER_ENTRY = 64.0


def unit_cost(shape, is_matrix: bool, num_tasks: int, uses_svd: bool) -> float:
    """The relative cost of merging one unit (a key or fused q/k/v group) of ``shape``: its T task matrices'
    SVD work (m·n·min(m, n) each) when the method runs SVDs on matrices, plus reading its T + 1 inputs. Used to
    balance a sharded merge over processes (:func:`hf_tsv.distributed.assign_units`).

    Example:
        >>> unit_cost((3072, 768), True, 8, True) / unit_cost((768, 768), True, 8, True) > 3.9
        True
    """
    numel = 1
    for d in shape:
        numel *= d
    work = num_tasks * _cost(shape) if uses_svd and is_matrix and len(shape) == 2 else 0.0
    return work + READ_COST_PER_ENTRY * numel * (num_tasks + 1)
