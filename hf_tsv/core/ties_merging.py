"""TIES-Merging (Yadav et al., NeurIPS 2023) as its reference code computes it, cut into small tensor functions so
the engine can compute the model-wide version exactly while streaming one key at a time.

The reference is ``src/utils/merge_utils.py`` of github.com/prateeky2806/ties-merging (``topk_values_mask``,
``resolve_sign``/``resolve_zero_signs``, ``disjoint_merge``); FusionBench's ``ties_merging_utils.py`` is a copy.
Per task t, over the task's parameters flattened into d entries — the **whole model** (scope ``"model"``, the
reference: every merged key) or one key (scope ``"tensor"``):

1. **Trim**: keep the entries with |τ| ≥ θ_t, where θ_t is the (d − ⌊d·K⌋)-th smallest |τ| of the task (1-based;
   the reference's ``kthvalue(d - int(d * K))`` with ``>=``). So the top ⌊d·K⌋ + 1 entries survive — one more
   than ⌊d·K⌋, as in the reference — and more where |τ| ties with θ_t; at K = 1 everything does. K is the
   density (0.2: "top 20%").
2. **Elect**: γ = sign(Σ_t τ̂_t) per entry; where that sum is exactly 0, the **majority sign** sign(Σ γ), the
   sum running over every entry of the scope.
3. **Disjoint merge**: per entry, the τ̂_t that agree with γ (τ̂_t > 0 where γ > 0, else τ̂_t < 0: the reference's
   ``where(γ > 0, τ̂ > 0, τ̂ < 0)``, so an entry whose γ is still 0 keeps the negative ones): their mean
   (``"mean"``, the paper's) or their sum (``"sum"``, FusionBench's default).

The merge is θ₀ + λ·that; the method's defaults (K, scope, merge, λ and its search grid) are declared in
:mod:`hf_tsv.methods.ties`. Model scope, exactly and with bounded memory: θ_t is found by a radix select on the
bit patterns of |τ| (non-negative IEEE floats order like their bit patterns read as integers): one streaming
pass per 16-bit digit counts, per task, the entries of each digit value among those matching the digits chosen
so far (2 passes for float32, 4 for float64, 2¹⁶ counters per task), a further pass counts the elected signs
for the majority sign, and the merge pass applies :func:`ties_merge_trimmed` key by key.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

TIES_MERGES = ("mean", "sum")
RADIX_DIGIT_BITS = 16
_DIGIT_MASK = (1 << RADIX_DIGIT_BITS) - 1
_BITS = {torch.float32: (torch.int32, 31), torch.float64: (torch.int64, 63)}  # int view, bits of |x|


def check_density(density: float) -> float:
    """TIES keeps a fraction in (0, 1] of each task's entries."""
    if not 0.0 < density <= 1.0:
        raise ValueError(f"density must be in (0, 1], got {density}")
    return density


def threshold_rank(numel: int, density: float) -> int:
    """The 1-based rank, among |τ| sorted ascending, of the trimming threshold: d − ⌊d·K⌋, computed as the
    reference does (``int(d * K)``); 0 means keep everything. Entries ≥ that threshold are the top ⌊d·K⌋ + 1.

    Example:
        >>> threshold_rank(10, 0.2), threshold_rank(3, 0.2), threshold_rank(5, 1.0)
        (8, 3, 0)
    """
    return numel - int(numel * check_density(density))


def model_passes(dtype: torch.dtype) -> int:
    """How many streaming passes :func:`ties_model_statistics` makes over task vectors of ``dtype``: one per
    16-bit digit and one for the majority sign (3 for float32, 5 for float64), before the merge pass."""
    return len(radix_shifts(dtype)) + 1


def magnitude_bits(values: torch.Tensor) -> torch.Tensor:
    """The bit patterns of |values| as integers (int32 for float32, int64 for float64): they sort like |values|.

    Example:
        >>> bits = magnitude_bits(torch.tensor([0.5, -2.0, 1.0]))
        >>> bits.argsort().tolist()
        [0, 2, 1]
    """
    int_dtype, _ = _BITS[values.dtype]
    return values.abs().contiguous().view(int_dtype)


def radix_shifts(dtype: torch.dtype) -> tuple[int, ...]:
    """The right shifts of the 16-bit digits of |x|'s bit pattern, most significant first.

    Example:
        >>> radix_shifts(torch.float32), radix_shifts(torch.float64)
        ((16, 0), (48, 32, 16, 0))
    """
    _, bits = _BITS[dtype]
    top = (bits - 1) // RADIX_DIGIT_BITS * RADIX_DIGIT_BITS
    return tuple(range(top, -1, -RADIX_DIGIT_BITS))


def update_radix_histogram(histogram: torch.Tensor, task_vectors: torch.Tensor, prefix: torch.Tensor,
                           shift: int) -> None:
    """Add one key's counts to ``histogram`` (T, 2¹⁶): for each task t, how many entries have each value of the
    digit ``(bits >> shift) & 0xFFFF`` among those whose higher digits equal ``prefix[t]`` (all of them in the
    first pass). Works one task at a time, so the extra memory is a few copies of one task's key.
    """
    num_tasks = task_vectors.shape[0]
    first_digit = shift == radix_shifts(task_vectors.dtype)[0]
    for t in range(num_tasks):
        bits = magnitude_bits(task_vectors[t].reshape(-1))
        if not first_digit:
            bits = bits[(bits >> (shift + RADIX_DIGIT_BITS)) == prefix[t]]
        digits = (bits >> shift) & _DIGIT_MASK
        histogram[t] += torch.bincount(digits, minlength=histogram.shape[1])


def select_radix_digit(histogram: torch.Tensor, rank: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For each task, the digit value holding its ``rank``-th smallest entry (1-based) and that entry's rank
    among the entries with this digit.

    Example:
        >>> select_radix_digit(torch.tensor([[2, 0, 3, 1]]), torch.tensor([4]))
        (tensor([2]), tensor([2]))
    """
    cumulative = histogram.cumsum(dim=1)
    digit = torch.searchsorted(cumulative, rank[:, None]).squeeze(1)
    below = torch.where(digit > 0, cumulative.gather(1, (digit - 1).clamp_min(0)[:, None]).squeeze(1), 0)
    return digit, rank - below


def bits_to_magnitude(bits: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Inverse of :func:`magnitude_bits` for a tensor of bit patterns held as int64."""
    int_dtype, _ = _BITS[dtype]
    return bits.to(int_dtype).view(dtype)


def trim(task_vectors: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """τ̂_t: the entries of task t with |τ| ≥ ``thresholds[t]``, the others 0.

    Example:
        >>> trim(torch.tensor([[0.5, -2.0], [1.0, 0.1]]), torch.tensor([1.0, 0.1]))
        tensor([[ 0.0000, -2.0000],
                [ 1.0000,  0.1000]])
    """
    shape = (-1,) + (1,) * (task_vectors.ndim - 1)
    return task_vectors * (task_vectors.abs() >= thresholds.to(task_vectors).reshape(shape))


def elect_sign(trimmed: torch.Tensor) -> torch.Tensor:
    """γ = sign(Σ_t τ̂_t) per entry (0 where the sum is exactly 0)."""
    return torch.sign(trimmed.sum(dim=0))


def sign_total(elected: torch.Tensor) -> int:
    """Σ γ over the entries, exactly (an integer): its sign is the majority sign."""
    return int((elected > 0).sum()) - int((elected < 0).sum())


def majority_sign(total: int) -> int:
    """sign(Σ γ) as -1, 0 or 1."""
    return (total > 0) - (total < 0)


def disjoint_merge(trimmed: torch.Tensor, elected: torch.Tensor, majority: int, merge: str = "mean") -> torch.Tensor:
    """The mean (or sum) of the τ̂_t that agree with γ, where γ = 0 is replaced by ``majority`` (-1, 0 or 1) first.

    Example:
        >>> t = torch.tensor([[0.5, -0.5], [-0.5, 0.5], [1.0, 0.0]])
        >>> disjoint_merge(t, torch.tensor([1.0, 0.0]), majority=-1)
        tensor([ 0.7500, -0.5000])
    """
    if merge not in TIES_MERGES:
        raise ValueError(f"merge must be one of {TIES_MERGES}, got {merge!r}")
    elected = torch.where(elected == 0, elected.new_tensor(float(majority)), elected)
    agree = torch.where(elected > 0, trimmed > 0, trimmed < 0)
    total = (trimmed * agree).sum(dim=0)
    if merge == "sum":
        return total
    return total / agree.sum(dim=0).clamp_min(1)


def ties_merge_trimmed(task_vectors: torch.Tensor, thresholds: torch.Tensor, majority: int,
                       merge: str = "mean") -> torch.Tensor:
    """TIES's Δ of one key given each task's trimming threshold and the scope's majority sign."""
    trimmed = trim(task_vectors, thresholds)
    return disjoint_merge(trimmed, elect_sign(trimmed), majority, merge)


def tensor_thresholds(task_vectors: torch.Tensor, density: float) -> torch.Tensor:
    """Each task's trimming threshold over this tensor alone: the reference's rule on its d entries.

    Example:
        >>> tensor_thresholds(torch.tensor([[0.1, -0.4, 0.3, 0.2, 0.0]]), 0.4)  # keeps |τ| ≥ 0.2: 3 entries
        tensor([0.2000])
    """
    flat = task_vectors.reshape(task_vectors.shape[0], -1).abs()
    rank = threshold_rank(flat.shape[1], density)
    if rank == 0:
        return flat.new_zeros(flat.shape[0])
    return flat.kthvalue(rank, dim=1).values


def ties(task_vectors: torch.Tensor, density: float = 0.2, merge: str = "mean") -> torch.Tensor:
    """TIES with the tensor as its whole scope (``ties_scope="tensor"``): trimming thresholds and majority sign
    from this tensor alone. Returns Δ before λ.

    Example:
        >>> ties(torch.tensor([[1.0, -4.0], [3.0, 2.0]]), density=1.0)
        tensor([ 2., -4.])
    """
    trimmed = trim(task_vectors, tensor_thresholds(task_vectors, density))
    elected = elect_sign(trimmed)
    return disjoint_merge(trimmed, elected, majority_sign(sign_total(elected)), merge)


@dataclass(frozen=True)
class TiesModelStatistics:
    """What the model-scope trim and sign election need from the whole model: each task's threshold, the
    majority sign, and how many entries a task has."""

    thresholds: torch.Tensor  # (T,), in the task vectors' dtype
    majority: int  # -1, 0 or 1
    numel: int


def ties_model_statistics(scan: Callable[[], Iterable[torch.Tensor]], density: float = 0.2,
                          all_reduce: Callable[[torch.Tensor], None] | None = None) -> TiesModelStatistics:
    """Exact model-wide TIES thresholds and majority sign from streaming passes over the keys.

    ``scan()`` must yield every key's stacked task vectors ``(T, ...)``, in the same order and values on every
    call. It is called once per 16-bit digit of |τ| (2 times for float32, 4 for float64) and once more for
    the majority sign; memory is 2¹⁶ counters per task plus a few copies of one key.

    Sharded over processes (torch.distributed), each process's ``scan()`` yields its own share of the keys
    and ``all_reduce`` sums an integer tensor in place over the processes: the entry count, each digit's
    histogram and the sign total are sums of integers, so every process gets the exact statistics of the
    whole model. It must be given on every process or on none; each must yield at least one key.

    Example:
        >>> keys = [torch.tensor([[0.3, -0.1], [0.2, 0.0]]), torch.tensor([[-0.5], [0.4]])]
        >>> stats = ties_model_statistics(lambda: keys, density=0.34)  # d = 3: the top ⌊3·0.34⌋ + 1 = 2 entries
        >>> [round(x, 6) for x in stats.thresholds.tolist()], stats.majority
        ([0.3, 0.2], 0)
    """
    check_density(density)
    shifts: tuple[int, ...] = ()
    histogram = prefix = None
    numel = 0
    for task_vectors in scan():  # the first digit; also learns T, the dtype and d
        if histogram is None:
            shifts = radix_shifts(task_vectors.dtype)
            dtype, device, num_tasks = task_vectors.dtype, task_vectors.device, task_vectors.shape[0]
            histogram = torch.zeros((num_tasks, 1 << RADIX_DIGIT_BITS), dtype=torch.int64, device=device)
            prefix = torch.zeros(num_tasks, dtype=torch.int64, device=device)
        numel += task_vectors[0].numel()
        update_radix_histogram(histogram, task_vectors, prefix, shifts[0])
    if histogram is None:
        raise ValueError("scan() yielded no keys")
    reduce = all_reduce or (lambda tensor: None)
    count = torch.tensor([numel], dtype=torch.int64, device=device)
    reduce(count)
    numel = int(count.item())
    reduce(histogram)
    rank = threshold_rank(numel, density)
    if rank == 0:
        thresholds = torch.zeros(num_tasks, dtype=dtype, device=device)
    else:
        ranks = torch.full((num_tasks,), rank, dtype=torch.int64, device=device)
        prefix, ranks = select_radix_digit(histogram, ranks)
        for shift in shifts[1:]:
            histogram.zero_()
            for task_vectors in scan():
                update_radix_histogram(histogram, task_vectors, prefix, shift)
            reduce(histogram)
            digit, ranks = select_radix_digit(histogram, ranks)
            prefix = (prefix << RADIX_DIGIT_BITS) | digit
        thresholds = bits_to_magnitude(prefix, dtype)
    total = torch.tensor([sum(sign_total(elect_sign(trim(task_vectors, thresholds))) for task_vectors in scan())],
                         dtype=torch.int64, device=device)
    reduce(total)
    total = int(total.item())
    return TiesModelStatistics(thresholds, majority_sign(total), numel)
