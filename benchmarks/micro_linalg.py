"""Per-kernel and per-layer CPU times of TSV-M's linear algebra on one thread, for the shapes of a ViT-B/32 merge
with T = 8 (the figures quoted in hf_tsv/core/cpu_lapack.py and docs/benchmark.md "Where the time goes").

    OMP_NUM_THREADS=1 PYTHONPATH=$PWD python benchmarks/micro_linalg.py [--mode fast|exact|lapack] [--json FILE]

Kernels: the Gram matrix aᵀa (torch matmul vs NumPy's syrk), the thin SVD (torch vs SciPy gesdd), the top-k
eigenvectors (SciPy syevr subset vs torch's full eigh). Layer: ``truncated_task_factors`` (each task's top-k),
``tsv_merge_factors`` (polar factors and Δ) and STI on random 8×m×n stacks of the four 768² attention matrices
and the two MLP matrices of one layer. Times are CPU seconds (``time.process_time``), the best of 3.
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

from hf_tsv.core import cpu_lapack  # noqa: E402
from hf_tsv.core.tsv import singular_task_interference, truncated_task_factors, tsv_merge_factors  # noqa: E402

LAYER_SHAPES = [(768, 768)] * 4 + [(3072, 768), (768, 3072)]


def best_cpu_seconds(function, repeats: int = 3) -> float:
    function()
    best = float("inf")
    for _ in range(repeats):
        start = time.process_time()
        function()
        best = min(best, time.process_time() - start)
    return best


def kernels() -> dict:
    out = {}
    for m in (768, 3072):
        a = torch.randn(m, 768)
        g = (a.mT @ a) / m
        out[f"gram {m}x768: torch"] = best_cpu_seconds(lambda a=a: a.mT @ a)
        out[f"gram {m}x768: syrk"] = best_cpu_seconds(lambda a=a: cpu_lapack.gram(a))
        out[f"svd {m}x768: torch"] = best_cpu_seconds(lambda a=a: torch.linalg.svd(a, full_matrices=False))
        out[f"svd {m}x768: gesdd"] = best_cpu_seconds(lambda a=a: cpu_lapack.thin_svd(a))
    out["top 96 eigenvectors 768: syevr"] = best_cpu_seconds(lambda: cpu_lapack.top_eigenvectors(g, 96))
    out["eigh 768: torch (all)"] = best_cpu_seconds(lambda: torch.linalg.eigh(g))
    return out


def layer(mode: str) -> dict:
    gen = torch.Generator().manual_seed(0)
    totals = {"top_k": 0.0, "merge": 0.0, "sti": 0.0}
    for m, n in LAYER_SHAPES:
        stack = torch.randn(8, m, n, generator=gen) * 1e-3
        factors = truncated_task_factors(stack, svd=mode)
        totals["top_k"] += best_cpu_seconds(lambda s=stack: truncated_task_factors(s, svd=mode))
        totals["merge"] += best_cpu_seconds(lambda f=factors: tsv_merge_factors(f, svd=mode))
        totals["sti"] += best_cpu_seconds(lambda f=factors: singular_task_interference(f))
    totals["layer"] = sum(totals.values())
    return totals


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", default="fast", choices=["fast", "exact", "lapack"])
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args(argv)
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    result = {"threads": torch.get_num_threads(), "load_1min": os.getloadavg()[0],
              "kernels_s": kernels(), f"layer_{args.mode}_s": layer(args.mode)}
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w") as f:  # a benchmark's own result file
            f.write(text + "\n")


if __name__ == "__main__":
    main()
