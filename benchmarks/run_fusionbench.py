"""Run FusionBench's TSV-M (Task Singular Vector Merging) on CLIPVisionModel folders and time it.

Runs inside the FusionBench virtualenv made by ``benchmarks/fusionbench_env.sh`` (default
``benchmarks/.fb-venv``); it never imports hf_tsv, so its numbers are FusionBench's own.

    benchmarks/.fb-venv/bin/python benchmarks/run_fusionbench.py \\
        --base DIR --tasks DIR1 DIR2 ... --out merged.safetensors --json stats.json \\
        [--threads 1] [--alpha 1.0] [--exclude-keys KEY ...] [--mode state-dict|algorithm]

Each DIR holds a transformers CLIPVisionModel (config.json + model.safetensors).

``--mode state-dict`` (default) follows ``TaskSingularVectorMerging.run`` step by step on plain state dicts
read with safetensors, calling FusionBench's own functions:

1. base = load(base); for each task in order: ft = load(task); tv = ``state_dict_sub(ft, base)``; drop ft
   (FusionBench also holds one fine-tuned model at a time besides the task vectors).
2. merged_tv = ``TSVM_utils.compute_and_sum_svd_mem_reduction(tvs, exclude_keys, accelerator=device)``
   under ``torch.no_grad()``.
3. merged_tv = ``state_dict_mul(merged_tv, alpha)`` (FusionBench's config default is ``alpha: 1``).
4. merged = ``state_dict_add(merged_tv, base)``; saved with safetensors.

``--mode algorithm`` instead runs the real ``TaskSingularVectorMerging(alpha, exclude_keys).run(pool)`` on a
``CLIPVisionModelPool`` built from the folders (models loaded by ``CLIPVisionModel.from_pretrained``), and saves
the returned model's ``state_dict()``. Loading then happens inside the timed merge; use it to check that the
state-dict mode matches FusionBench bit for bit.

Timing: ``merge_seconds`` covers steps 1 (subtractions only), 2, 3 and 4 (not the loads nor the save);
``load_seconds`` the safetensors reads; ``total_seconds`` the whole script from its first line, imports and
save included. CPU seconds and peak RSS come from ``resource.getrusage(RUSAGE_SELF)``.
"""

from __future__ import annotations

import time

_T_START = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import resource  # noqa: E402
import sys  # noqa: E402
from contextlib import nullcontext, redirect_stdout  # noqa: E402
from pathlib import Path  # noqa: E402


def _parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base", required=True, help="pretrained CLIPVisionModel folder")
    p.add_argument("--tasks", required=True, nargs="+", help="fine-tuned CLIPVisionModel folders, in order")
    p.add_argument("--out", required=True, help="merged state dict, written as .safetensors")
    p.add_argument("--json", required=True, help="timing and environment report, written as JSON")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    p.add_argument("--alpha", type=float, default=1.0, help="scale of the merged task vector (default 1.0)")
    p.add_argument("--exclude-keys", nargs="*", default=[],
                   help="exact keys FusionBench should average instead of merging by SVD (default none)")
    p.add_argument("--mode", choices=("state-dict", "algorithm"), default="state-dict")
    p.add_argument("--device", default="cpu", help="device FusionBench computes the SVDs on (default cpu)")
    p.add_argument("--verbose", action="store_true", help="let FusionBench print its per-key progress")
    args = p.parse_args(argv)
    if args.threads < 1:
        p.error("--threads must be >= 1")
    return args


ARGS = _parse_args()
# Thread pools are sized when torch loads its OpenMP/MKL runtime, so set them before importing torch.
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_var] = str(ARGS.threads)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # no busy-waiting workers inflating CPU seconds
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

torch.set_num_threads(ARGS.threads)
try:
    torch.set_num_interop_threads(1)
except RuntimeError:
    pass

_T0 = time.perf_counter()
from fusion_bench.method.task_singular_vector.utils.TSVM_utils import (  # noqa: E402
    compute_and_sum_svd_mem_reduction,
)
from fusion_bench.utils.state_dict_arithmetic import (  # noqa: E402
    state_dict_add,
    state_dict_mul,
    state_dict_sub,
)

IMPORT_SECONDS = time.perf_counter() - _T0


def _current_rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


RSS_AFTER_IMPORT = _current_rss_bytes()  # baseline: torch + fusion_bench (lightning, transformers, ...) loaded


def _weights_file(folder: str) -> Path:
    path = Path(folder) / "model.safetensors"
    if not path.is_file():
        sys.exit(f"error: {path} not found (expected a CLIPVisionModel folder with model.safetensors)")
    return path


def _load(folder: str) -> dict:
    """Read a state dict into process memory.

    safetensors' load_file only maps the file (pages arrive lazily, on first use); cloning here makes the
    read happen inside the timed load, as FusionBench's from_pretrained would, and not inside the merge.
    """
    mapped = load_file(str(_weights_file(folder)))
    return {key: mapped.pop(key).clone() for key in list(mapped)}


def _steal_seconds() -> float | None:
    """System-wide CPU time stolen by the hypervisor so far (all cores), from /proc/stat."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
        return int(fields[8]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def _cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _peak_rss_bytes() -> int:
    # ru_maxrss is in kilobytes on Linux, bytes on macOS.
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(r) if sys.platform == "darwin" else int(r) * 1024


def _quiet():
    return nullcontext() if ARGS.verbose else redirect_stdout(open(os.devnull, "w"))


class _Phases:
    """Accumulates wall and CPU seconds per named phase."""

    def __init__(self):
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}

    def __call__(self, name: str):
        phases = self

        class _Timer:
            def __enter__(self):
                self.t, self.c = time.perf_counter(), _cpu_seconds()

            def __exit__(self, *exc):
                phases.wall[name] = phases.wall.get(name, 0.0) + time.perf_counter() - self.t
                phases.cpu[name] = phases.cpu.get(name, 0.0) + _cpu_seconds() - self.c

        return _Timer()


def merge_state_dicts(base_dir: str, task_dirs: list[str]) -> tuple[dict, dict]:
    """FusionBench's TaskSingularVectorMerging.run, replayed on safetensors state dicts."""
    phase = _Phases()
    with phase("load"):
        base = _load(base_dir)

    task_vectors = []
    for folder in task_dirs:
        with phase("load"):
            finetuned = _load(folder)
        with phase("task_vectors"):
            task_vectors.append(state_dict_sub(finetuned, base))
            del finetuned

    with phase("tsvm"), torch.no_grad(), _quiet():
        merged_tv = compute_and_sum_svd_mem_reduction(
            task_vectors, exclude_keys=list(ARGS.exclude_keys), accelerator=ARGS.device,
            return_single_task_models=False,
        )
    del task_vectors

    with phase("scale_and_add"):
        merged_tv = state_dict_mul(state_dict=merged_tv, scalar=ARGS.alpha)
        merged = state_dict_add(merged_tv, base)
        del merged_tv

    merge_phases = ("task_vectors", "tsvm", "scale_and_add")
    timings = {
        "merge_seconds": sum(phase.wall[k] for k in merge_phases),
        "merge_cpu_seconds": sum(phase.cpu[k] for k in merge_phases),
        "load_seconds": phase.wall["load"],
        "load_cpu_seconds": phase.cpu["load"],
        "phase_seconds": phase.wall,
        "phase_cpu_seconds": phase.cpu,
    }
    return merged, timings


def merge_with_algorithm(base_dir: str, task_dirs: list[str]) -> tuple[dict, dict]:
    """The real TaskSingularVectorMerging.run on a CLIPVisionModelPool (loads happen inside)."""
    import lightning as L
    from fusion_bench.method.task_singular_vector import TaskSingularVectorMerging
    from fusion_bench.modelpool import CLIPVisionModelPool

    for folder in [base_dir, *task_dirs]:
        _weights_file(folder)
    models = {"_pretrained_": str(Path(base_dir).resolve())}
    models.update({f"task_{i:02d}": str(Path(d).resolve()) for i, d in enumerate(task_dirs)})
    pool = CLIPVisionModelPool(models=models)
    algorithm = TaskSingularVectorMerging(alpha=ARGS.alpha, exclude_keys=list(ARGS.exclude_keys) or None)
    accelerator = "cuda" if str(ARGS.device).startswith("cuda") else "cpu"
    fabric = L.Fabric(accelerator=accelerator, devices=1)
    fabric.launch()
    algorithm.fabric = fabric
    t, c = time.perf_counter(), _cpu_seconds()
    with _quiet():
        model = algorithm.run(pool)
    merge_seconds = time.perf_counter() - t
    merge_cpu_seconds = _cpu_seconds() - c
    merged = {k: v.detach() for k, v in model.state_dict().items()}
    return merged, {"merge_seconds": merge_seconds, "merge_cpu_seconds": merge_cpu_seconds,
                    "load_seconds": None, "load_cpu_seconds": None,
                    "note": "algorithm mode: the merge timings include loading the models"}


def main() -> int:
    from importlib.metadata import version

    steal_before = _steal_seconds()
    if ARGS.mode == "state-dict":
        merged, timings = merge_state_dicts(ARGS.base, ARGS.tasks)
    else:
        merged, timings = merge_with_algorithm(ARGS.base, ARGS.tasks)
    steal_after = _steal_seconds()
    peak_after_merge = _peak_rss_bytes()

    with safe_open(str(_weights_file(ARGS.base)), framework="pt") as f:
        base_keys = set(f.keys())
    missing = sorted(base_keys - set(merged))
    extra = sorted(set(merged) - base_keys)

    t = time.perf_counter()
    out = Path(ARGS.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in merged.items()}, str(out),
              metadata={"format": "pt", "merged_by": f"fusion-bench {version('fusion-bench')} TSV-M"})
    save_seconds = time.perf_counter() - t

    two_d = [k for k, v in merged.items() if v.ndim == 2 and k not in ARGS.exclude_keys]
    stats = {
        "tool": "fusion-bench",
        "fusion_bench_version": version("fusion-bench"),
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "mode": ARGS.mode,
        "method": "fusion_bench.method.task_singular_vector.utils.TSVM_utils.compute_and_sum_svd_mem_reduction",
        "device": ARGS.device,
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                               "OMP_WAIT_POLICY", "OPENBLAS_CORETYPE")},
        "mkl_available": torch.backends.mkl.is_available(),
        "num_tasks": len(ARGS.tasks),
        "alpha": ARGS.alpha,
        "exclude_keys": list(ARGS.exclude_keys),
        "base": str(ARGS.base),
        "tasks": [str(t) for t in ARGS.tasks],
        "out": str(out),
        "num_keys": len(merged),
        "num_svd_keys": len(two_d),
        "num_averaged_keys": len(merged) - len(two_d),
        "missing_base_keys": missing,
        "extra_keys": extra,
        "dtypes": sorted({str(v.dtype) for v in merged.values()}),
        **{k: v for k, v in timings.items()},
        "system_steal_seconds_during_merge": (None if steal_before is None or steal_after is None
                                              else steal_after - steal_before),
        "import_seconds": IMPORT_SECONDS,
        "save_seconds": save_seconds,
        "total_seconds": time.perf_counter() - _T_START,
        "cpu_seconds": _cpu_seconds(),
        "peak_rss_bytes": _peak_rss_bytes(),
        "peak_rss_bytes_after_merge": peak_after_merge,
        "rss_after_import_bytes": RSS_AFTER_IMPORT,
    }
    Path(ARGS.json).parent.mkdir(parents=True, exist_ok=True)
    Path(ARGS.json).write_text(json.dumps(stats, indent=2) + "\n")
    print(f"fusion-bench {stats['fusion_bench_version']} TSV-M ({ARGS.mode}), T={len(ARGS.tasks)}, "
          f"threads={stats['threads']}: merge {stats['merge_seconds']:.2f} s, total {stats['total_seconds']:.2f} s, "
          f"CPU {stats['cpu_seconds']:.2f} s, peak RSS {stats['peak_rss_bytes'] / 2**30:.2f} GiB -> {out}")
    if missing or extra:
        print(f"warning: merged keys differ from the base: missing {missing}, extra {extra}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
