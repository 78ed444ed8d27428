"""Sharded merge benchmark: ``hf-tsv merge`` in 1 process (1 thread) vs ``torchrun --nproc-per-node N`` (1 thread
each) on the B/32-shaped T = 8 set; reports wall and CPU time, the 1-minute load average and whether the two
``model.safetensors`` are byte-identical.

Example (generates the set on first use, ~3.3 GB, into --cache)::

    PYTHONPATH=$PWD:$PWD/benchmarks python benchmarks/bench_distributed.py --cache /work/dist-bench \\
        --json /work/dist-bench/result.json
"""

from __future__ import annotations

import argparse
import filecmp
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path


def _load() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0]) if Path("/proc/loadavg").exists() else float("nan")


def timed(command: list[str], env: dict) -> dict:
    """Run ``command``; its wall time, the CPU time of it and its children, and the load average around it."""
    before, load_before = resource.getrusage(resource.RUSAGE_CHILDREN), _load()
    start = time.perf_counter()
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "load_1min_before": load_before,
            "load_1min_after": _load()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=Path("dist-bench"), help="where the checkpoints live")
    parser.add_argument("--preset", default="vit-b-32")
    parser.add_argument("--num-tasks", type=int, default=8)
    parser.add_argument("--method", default="tsv-m")
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--json", type=Path, help="write the result here too")
    args = parser.parse_args(argv)

    from run import checkpoints  # benchmarks/run.py: generates (or reuses) the synthetic set

    ckpt = checkpoints(args.cache, args.preset, args.num_tasks, "noise", None)
    env = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE", TQDM_DISABLE="1")
    merge = ["-m", "hf_tsv", "merge", ckpt["base"], *ckpt["tasks"], "--method", args.method, "--overwrite"]
    out = args.cache / "bench-out"
    one, many = out / "one", out / f"nproc{args.nproc}"
    torchrun = [str(Path(sys.executable).with_name("torchrun")), f"--nproc-per-node={args.nproc}"]
    result = {"set": Path(ckpt["dir"]).name, "method": args.method, "cpus": os.cpu_count(),
              "single": timed([sys.executable, *merge, "-o", str(one), "--threads", "1"], env),
              "sharded": timed([*torchrun, *merge, "-o", str(many)], env)}
    result["nproc"] = args.nproc
    result["speedup_wall"] = round(result["single"]["wall_s"] / result["sharded"]["wall_s"], 2)
    result["identical_bytes"] = filecmp.cmp(one / "model.safetensors", many / "model.safetensors", shallow=False)
    for name, folder in (("single", one), ("sharded", many)):
        result[name]["merge_total_s"] = json.loads((folder / "merge_report.json").read_text())["timings"]["total_s"]
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    shutil.rmtree(out, ignore_errors=True)
    return 0 if result["identical_bytes"] else 1


if __name__ == "__main__":
    sys.exit(main())
