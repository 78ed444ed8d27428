"""Rough estimates for a plan. Time: one merge of random task matrices of the most common matrix shape is timed
on this machine, and every key's cost is scaled from it by m·n·min(m, n); reading the inputs is added at disk
speed. Memory: :func:`factored_matrix_bytes`, the working set of a matrix key whose tasks are all LoRA adapters
merged from their factors (the rest of the memory model is :meth:`hf_tsv.engine.MergePlan.unit_peak_bytes`)."""

from __future__ import annotations

import time

import torch

READ_BYTES_PER_SECOND = 0.5e9


def _cost(shape) -> float:
    m, n = shape
    return float(m) * n * min(m, n)


def _read_bytes(plan, unit) -> int:
    """Bytes one pass reads for ``unit``: the base's tensors, and each fine-tune's (a dense one: the base's size; a
    LoRA adapter: its factors there, if any). A key kept from the base reads the base only."""
    from .engine import is_lora

    total = 0
    for key in unit.keys:
        size = plan.base_infos[key].nbytes
        total += size
        if not unit.from_base:
            total += sum(model.reader.factor_bytes(raw[key]) if is_lora(model) else size
                         for model, raw in zip(plan.models, plan.raw_keys[1:]))
    return total


def _kept_columns(shape, num_tasks: int, rank: int) -> int:
    """Σ_t min(r_t, k): the columns of Û and V̂ that rank-``rank`` adapters leave after their null triplets are
    dropped (k = ⌊min(m, n)/T⌋)."""
    return num_tasks * min(int(rank), min(int(d) for d in shape) // max(1, num_tasks))


def _factored_cost(shape, num_tasks: int, rank: int) -> float:
    """The cost of a matrix key whose tasks are all rank-``rank`` adapters, merged from their factors: forming Δ
    from the Σ r_t kept columns (m·n·T·r, the bulk), their polar factors and STI's Gram matrices, all on those
    columns ((m + n + T·r)·(T·r)²)."""
    m, n = shape
    used = _kept_columns(shape, num_tasks, rank)
    return float(m) * n * used + float(m + n + used) * used * used


def _probe_seconds(method, options, shape, num_tasks: int, rank: int | None) -> float:
    """Seconds of one key's merge of ``shape`` on random task matrices (``rank`` None), or on random rank-``rank``
    adapters given as factors, after a warm-up on an 8×8 key."""
    from .core.lora import LowRankDelta
    from .methods.base import KeyContext

    def run(m: int, n: int) -> float:
        if rank is None:
            tau, context = torch.randn(num_tasks, m, n) * 1e-3, None
        else:
            tau = torch.zeros(()).expand(num_tasks, m, n)  # never read: every task comes as factors
            context = KeyContext(factored=tuple(LowRankDelta(torch.randn(m, rank) * 1e-3, torch.randn(rank, n))
                                                for _ in range(num_tasks)))
        start = time.perf_counter()
        method.key_delta(tau, True, options, context)
        return time.perf_counter() - start

    run(8, 8)
    return run(*shape)


def estimate_seconds(plan, method, options) -> float:
    """Seconds the merge of ``plan`` with ``method`` (a :class:`~hf_tsv.methods.MergeMethod`) and ``options``
    (:class:`~hf_tsv.methods.MethodOptions`) should take on this machine. Where every task is a LoRA adapter and
    the method merges from factors (``factored_tasks``, TSV-M), the probe is that path and keys scale by
    :func:`_factored_cost`; a method that forms each ΔW is timed as on dense task matrices."""
    from .engine import is_lora

    t = plan.num_tasks
    reads = 1 + method.model_pass_reads(options)  # TIES over the whole model reads every input 3-5 more times
    read = reads * sum(_read_bytes(plan, unit) for unit in plan.units) / READ_BYTES_PER_SECOND
    matrices = [u for u in plan.units if u.is_matrix]
    if not method.uses_svd or not matrices:
        return round(read, 1)
    shapes = [tuple(u.shape) for u in matrices]
    probe = max(set(shapes), key=shapes.count)
    if method.factored_tasks and t and all(is_lora(m) for m in plan.models):
        rank = plan.adapter_rank
        per_cost = _probe_seconds(method, options, probe, t, rank) / _factored_cost(probe, t, rank)
        return round(read + per_cost * sum(_factored_cost(u.shape, t, rank) for u in matrices), 1)
    per_cost = _probe_seconds(method, options, probe, t, None) / _cost(probe)
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


FLOAT32_BYTES = 4


def factored_matrix_bytes(shape, num_tasks: int, itemsize: int, rank: int | None = None) -> int:
    """The working set of one m×n matrix key whose T tasks are all LoRA adapters, merged from their factors
    (a method with ``factored_tasks``, TSV-M; :func:`hf_tsv.core.task_factors`): the base as read and in float32,
    each task's top-k triplets U (T, m, k) and V (T, n, k) and their concatenation Û (m, T·k), V̂ (n, T·k), Δ and
    the merged tensor, and STI's Gram matrices on the Σ r_t kept columns (the null triplets are left out; all T·k
    when ``rank`` is not given). The adapters' factors and the polar step on the kept columns are small beside
    these; no T×m×n task matrix is ever formed.

    Example:
        >>> dense = 1024 * 1024 * ((8 + 1) * 4 + 4 * (3 * 8 + 6))  # the dense model for T = 8, float32
        >>> factored_matrix_bytes((1024, 1024), 8, 4, rank=16) < factored_matrix_bytes((1024, 1024), 8, 4) < dense / 2
        True
    """
    m, n = (int(d) for d in shape)
    kept = num_tasks * (min(m, n) // num_tasks)  # T·k columns of Û and V̂
    used = kept if rank is None else _kept_columns(shape, num_tasks, rank)
    numel = m * n
    return (numel * (itemsize + FLOAT32_BYTES * 3)  # base (as read, float32), Δ, merged
            + 2 * 2 * (m + n) * kept * FLOAT32_BYTES  # U, V and Û, V̂
            + 4 * used * used * FLOAT32_BYTES)  # STI: ÛᵀÛ, V̂ᵀV̂ and their product, on the kept columns
