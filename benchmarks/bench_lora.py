"""TSV-M of LoRA adapters: the factored path (exact top-k triplets from QRs of B and Aᵀ, polar factors of the kept
Σ r_t columns) against forming each adapter's ΔW densely and running the dense TSV-M path on it.

The layer stack is synthetic: ``--layers`` layers × (q, k, v, o) of ``--dim``×``--dim`` (default 4 × 4 × 4096²),
``--tasks`` adapters of rank ``--rank`` each (default 8 × 16), factors drawn at random (B ~ N(0, 1/m), A ~ N(0, 1/n),
lora_alpha = 2r). The factored path runs on every key; the dense path on ``--dense-keys`` of them (default 1: it
takes minutes per 4096² key on one thread) and is extrapolated to the stack. Each dense key's merge is also
compared with the factored one (max |difference| / max |Δ|), in float32, and with a float64 dense reference.

    OMP_NUM_THREADS=1 PYTHONPATH=$PWD python benchmarks/bench_lora.py                 # the issue's setting
    OMP_NUM_THREADS=1 PYTHONPATH=$PWD python benchmarks/bench_lora.py --dim 1024 --dense-keys 16 --json out.json

Reports wall and CPU seconds and the 1-minute load average (the machine may be shared).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402

from hf_tsv.core import (  # noqa: E402
    InputPrecision,
    LowRankDelta,
    singular_task_interference,
    task_factors,
    truncated_task_factors,
    tsv_merge_factors,
)
from hf_tsv.core.svd import DEFAULT_SVD_MODE  # noqa: E402


def _load() -> float:
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


class Clock:
    """Wall and CPU seconds of a block."""

    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu


def adapters(dim: int, rank: int, tasks: int, seed: int) -> list[LowRankDelta]:
    gen = torch.Generator().manual_seed(seed)
    return [LowRankDelta(torch.randn(dim, rank, generator=gen) / dim ** 0.5,
                         torch.randn(rank, dim, generator=gen) / dim ** 0.5, 2.0) for _ in range(tasks)]


def factored_merge(deltas: list[LowRankDelta], dim: int) -> torch.Tensor:
    """What hf-tsv runs for a key whose tasks are all adapters (no T×m×n storage): the merge and its STI."""
    shape = torch.zeros(()).expand(len(deltas), dim, dim)
    factors = task_factors(shape, deltas, precision=InputPrecision(torch.float32))
    singular_task_interference(factors)
    return tsv_merge_factors(factors, compact=True)


def dense_merge(deltas: list[LowRankDelta], compute_dtype=torch.float32, svd: str = DEFAULT_SVD_MODE,
                sti: bool = True) -> torch.Tensor:
    """Form every ΔW, then the dense TSV-M path with its STI (what merging the adapters' merge_and_unload
    checkpoints runs)."""
    stack = torch.stack([d.dense() for d in deltas])
    factors = truncated_task_factors(stack.to(compute_dtype), compute_dtype=compute_dtype, svd=svd,
                                     precision=InputPrecision(torch.float32))
    if sti:
        singular_task_interference(factors)
    return tsv_merge_factors(factors, svd=svd)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=4096)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--tasks", type=int, default=8)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--dense-keys", type=int, default=1)
    parser.add_argument("--float64-check", action="store_true", help="also a float64 dense reference per dense key")
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    keys = [f"layers.{i}.{p}_proj" for i in range(args.layers) for p in "qkvo"]
    result = {"dim": args.dim, "keys": len(keys), "tasks": args.tasks, "rank": args.rank,
              "threads": torch.get_num_threads(), "load_before": _load(), "factored": {}, "dense": {}}
    total = Clock()
    with total:
        for i, key in enumerate(keys):
            deltas = adapters(args.dim, args.rank, args.tasks, seed=i)
            with Clock() as c:
                merged = factored_merge(deltas, args.dim)
            result["factored"][key] = {"wall_s": round(c.wall, 3), "cpu_s": round(c.cpu, 3)}
            if i < args.dense_keys:
                with Clock() as d:
                    dense = dense_merge(deltas)
                size = float(dense.abs().max())
                entry = {"wall_s": round(d.wall, 3), "cpu_s": round(d.cpu, 3),
                         "max_rel_diff_vs_factored": float((dense - merged).abs().max()) / size}
                if args.float64_check:
                    ref = dense_merge([x.to(torch.float64) for x in deltas], torch.float64, "lapack", sti=False)
                    entry["factored_max_rel_err_vs_float64"] = float((merged.double() - ref).abs().max()) / size
                    entry["dense_max_rel_err_vs_float64"] = float((dense.double() - ref).abs().max()) / size
                result["dense"][key] = entry
                del dense
            print(key, result["factored"][key], result["dense"].get(key, ""), flush=True)
    fact = result["factored"].values()
    dense = result["dense"].values()
    summary = {"factored_wall_s": round(sum(x["wall_s"] for x in fact), 3),
               "factored_cpu_s": round(sum(x["cpu_s"] for x in fact), 3),
               "load_after": _load(), "total_wall_s": round(total.wall, 3)}
    if dense:
        per_key = sum(x["wall_s"] for x in dense) / len(dense)
        per_key_cpu = sum(x["cpu_s"] for x in dense) / len(dense)
        summary.update(dense_wall_s_per_key=round(per_key, 3), dense_cpu_s_per_key=round(per_key_cpu, 3),
                       dense_wall_s_stack_extrapolated=round(per_key * len(keys), 1),
                       speedup_wall=round(per_key * len(keys) / max(summary["factored_wall_s"], 1e-9), 1))
    result["summary"] = summary
    print(json.dumps(summary, indent=2))
    if args.json:
        with open(args.json, "w") as f:  # a benchmark's own result file, not a user output
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
