"""TSV-M's error against float64 on task matrices whose kept spectrum falls steeply, for the SVD modes: the figures
behind ``hf_tsv.core.svd.STEEP_SPECTRUM`` and docs/methods.md ("Steep spectra").

T random n×n task matrices with geometric singular values, σ_1/σ_k = RATIO (k = n/T), are merged by TSV-M with
each mode; the error is ‖Δ − Δ₆₄‖/‖Δ₆₄‖ against the same merge in float64 (``--svd-dtype float64``). ``lapack`` is a
float32 LAPACK SVD per task, what the paper's code and FusionBench run. The Gram modes are run as they are and with
the steep-spectrum refinement switched off. Times are CPU seconds of the top-k step for the T tasks (one thread).

    OMP_NUM_THREADS=1 PYTHONPATH=$PWD python benchmarks/accuracy_spectra.py [--size 768] [--tasks 8] [--seeds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

from hf_tsv.core import svd  # noqa: E402
from hf_tsv.core.tsv import truncated_task_factors, tsv_merge_factors  # noqa: E402

RATIOS = (4, 8, 12, 16, 32, 64, 256)
VARIANTS = ("lapack", "fast", "fast, not refined", "exact", "exact, not refined")


def steep_tasks(num_tasks: int, n: int, ratio: float, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    k = n // num_tasks
    out = []
    for _ in range(num_tasks):
        left = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64)).Q
        right = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64)).Q
        sigma = ratio ** (-torch.arange(n, dtype=torch.float64) / (k - 1))
        out.append((left * sigma) @ right.T * 1e-3)
    return torch.stack(out)


def run_variant(name: str, tau32: torch.Tensor) -> tuple[torch.Tensor, float]:
    mode = name.split(",")[0]
    threshold = svd.STEEP_SPECTRUM
    svd.STEEP_SPECTRUM = float("inf") if "not refined" in name else threshold
    try:
        start = time.process_time()
        factors = truncated_task_factors(tau32, svd=mode)
        seconds = time.process_time() - start
        return tsv_merge_factors(factors, svd=mode), seconds
    finally:
        svd.STEEP_SPECTRUM = threshold


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=768)
    parser.add_argument("--tasks", type=int, default=8)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args(argv)
    if args.tasks < 1 or args.size // args.tasks < 2 or args.seeds < 1:
        parser.error(f"need --tasks ≥ 1, --seeds ≥ 1 and at least 2 kept triplets per task (--size ≥ 2·--tasks); "
                     f"got --size {args.size} --tasks {args.tasks} --seeds {args.seeds}")
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    rows = []
    for ratio in RATIOS:
        errors: dict[str, list[float]] = {v: [] for v in VARIANTS}
        seconds: dict[str, list[float]] = {v: [] for v in VARIANTS}
        for seed in range(args.seeds):
            tau = steep_tasks(args.tasks, args.size, ratio, seed)
            reference = tsv_merge_factors(truncated_task_factors(tau, compute_dtype=torch.float64, svd="lapack"),
                                          svd="lapack")
            for variant in VARIANTS:
                delta, cpu = run_variant(variant, tau.float())
                errors[variant].append(float((delta.double() - reference).norm() / reference.norm()))
                seconds[variant].append(cpu)
        rows.append({"ratio": ratio, "error": {v: statistics.median(e) for v, e in errors.items()},
                     "top_k_cpu_s": {v: statistics.median(s) for v, s in seconds.items()}})
    print(f"T = {args.tasks} tasks of {args.size}×{args.size}, k = {args.size // args.tasks}, median of "
          f"{args.seeds} seeds; error vs float64, and (in brackets) as a multiple of lapack's; top-k CPU seconds\n")
    print("| σ_1/σ_k | " + " | ".join(VARIANTS) + " |")
    print("|---" * (len(VARIANTS) + 1) + "|")
    for row in rows:
        base = row["error"]["lapack"]
        cells = [f"{row['error'][v]:.2e} ({row['error'][v] / base:.2f}×), {row['top_k_cpu_s'][v]:.2f} s"
                 for v in VARIANTS]
        print(f"| {row['ratio']} | " + " | ".join(cells) + " |")
    if args.json:
        with open(args.json, "w") as f:  # a benchmark's own result file
            json.dump({"size": args.size, "tasks": args.tasks, "seeds": args.seeds, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
