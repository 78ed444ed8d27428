"""Decoder-LLM merges at scale, on synthetic Llama-shaped checkpoints written tensor by tensor (never a whole model
in memory):

* ``plan``: a Llama-3.2-1B-shaped base and fine-tunes (hidden 2048, 16 layers, 32 heads / 8 key-value heads,
  intermediate 8192, vocab 128256, tied embeddings, bf16) as sparse files (header, a few real tensors, holes of
  zeros: ~2.5 GB each on paper, kilobytes on disk), then ``hf-tsv plan`` on them (it reads headers only).
* ``merge``: a Llama-shaped base and 4 fine-tunes (base + a low-rank-plus-noise task vector per tensor), then
  ``hf-tsv merge`` under ``/usr/bin/time``: peak RSS against the sum of the inputs, and ``plan``'s estimates
  against what was measured. Writes ``results-{plan,merge}-EMBEDDINGS.json`` in the work folder.

    OMP_NUM_THREADS=1 PYTHONPATH=$PWD python benchmarks/bench_llm.py plan --work /work/llm-bench/plan
    OMP_NUM_THREADS=1 PYTHONPATH=$PWD python benchmarks/bench_llm.py merge --work /work/llm-bench/merge --layers 8

Runs with one torch thread; every figure comes with the 1-minute load average it was measured under.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from hf_tsv.io.safetensors_format import SafetensorsFileWriter  # noqa: E402
from hf_tsv.io.writer import ShardedSafetensorsWriter  # noqa: E402

# Llama-3.2-1B's shape (its config.json, less the RoPE scaling details that do not change a single tensor)
LLAMA_3_2_1B = dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                    num_key_value_heads=8, head_dim=64, vocab_size=128256, tie_word_embeddings=True,
                    max_position_embeddings=131072, rope_theta=500000.0, rms_norm_eps=1e-5)
# TinyLlama-1.1B's shape (untied, 4 key-value heads), its depth chosen by --layers: the merge benchmark's model
TINYLLAMA = dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
                 num_key_value_heads=4, head_dim=64, vocab_size=32000, tie_word_embeddings=False,
                 max_position_embeddings=2048, rms_norm_eps=1e-5)
TASK_RANK = 16  # rank of each synthetic task matrix's signal
TASK_SIZE = 0.01  # ‖τ‖ / ‖θ₀‖ per tensor


def llama_config(fields: dict):
    from transformers import LlamaConfig

    config = LlamaConfig(**fields)
    config.architectures = ["LlamaForCausalLM"]
    config.dtype = torch.bfloat16
    return config


def llama_layout(config) -> dict[str, tuple[torch.dtype, tuple[int, ...]]]:
    """Key → (bf16, shape) of ``LlamaForCausalLM(config)`` as ``save_pretrained`` writes it (a tied lm_head left
    out), read from an instance on the meta device."""
    from transformers import LlamaForCausalLM

    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    tied = {"lm_head.weight"} if config.tie_word_embeddings else set()
    return {k: (torch.bfloat16, tuple(v.shape)) for k, v in model.state_dict().items() if k not in tied}


def base_tensor(key: str, shape: tuple[int, ...], index: int) -> torch.Tensor:
    """The synthetic base's tensor (float32): N(0, 0.02²) matrices, norms near one; the same for the same key."""
    gen = torch.Generator().manual_seed(index)
    if len(shape) == 1:
        return 1.0 + 0.02 * torch.randn(shape, generator=gen)
    return 0.02 * torch.randn(shape, generator=gen)


def task_vector(base: torch.Tensor, task: int, index: int) -> torch.Tensor:
    """Fine-tune ``task``'s task vector of one tensor: rank-:data:`TASK_RANK` signal plus 10% noise for a matrix,
    noise for a norm, scaled to :data:`TASK_SIZE` of the base's norm."""
    gen = torch.Generator().manual_seed(1_000_003 * (task + 1) + index)
    if base.ndim == 2:
        m, n = base.shape
        signal = torch.randn(m, TASK_RANK, generator=gen) @ torch.randn(TASK_RANK, n, generator=gen)
        signal += 0.1 * signal.norm() / (m * n) ** 0.5 * torch.randn(m, n, generator=gen)
    else:
        signal = torch.randn(base.shape, generator=gen)
    return signal * (TASK_SIZE * float(base.norm()) / float(signal.norm()))


def write_model(folder: Path, config, task: int | None) -> None:
    """The base (``task`` None) or fine-tune ``task``, one tensor at a time through hf-tsv's own writer."""
    folder.mkdir(parents=True, exist_ok=True)
    layout = llama_layout(config)
    writer = ShardedSafetensorsWriter(folder, layout, max_shard_size="100GB")
    for index, (key, (dtype, shape)) in enumerate(layout.items()):
        tensor = base_tensor(key, shape, index)
        if task is not None:
            tensor += task_vector(tensor, task, index)
        writer.write(key, tensor.to(dtype))
        del tensor
    writer.close()
    config.save_pretrained(folder)


class SparseFileWriter(SafetensorsFileWriter):
    """A safetensors file whose tensors left unwritten stay holes of zeros (the file is pre-sized)."""

    def leave_zero(self, key: str) -> None:
        self._pending.discard(key)


def write_sparse_model(folder: Path, config, seed: int) -> None:
    """``hf-tsv plan``'s input: the real header, random 1-D tensors (so that no two inputs read as one checkpoint),
    every matrix a hole."""
    folder.mkdir(parents=True, exist_ok=True)
    layout = llama_layout(config)
    writer = SparseFileWriter(folder / "model.safetensors", layout)
    gen = torch.Generator().manual_seed(seed)
    for key, (dtype, shape) in layout.items():
        if len(shape) == 1:
            writer.write(key, (1.0 + 0.02 * torch.randn(shape, generator=gen)).to(dtype))
        else:
            writer.leave_zero(key)
    writer.close()
    config.save_pretrained(folder)


def load_average() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def hf_tsv_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "hf_tsv.cli", *map(str, args)]


def run_plan(base: Path, tasks: list[Path], *extra: str) -> dict:
    """``hf-tsv plan --json``'s result, with the seconds it took and the load average."""
    out = base.parent / "plan.json"
    load, start = load_average(), time.perf_counter()
    subprocess.run(hf_tsv_command("plan", base, *tasks, "--threads", "1", "--json", out,
                                  *extra), check=True)
    info = json.loads(out.read_text())
    info["plan_wall_s"], info["load_average_1min"] = round(time.perf_counter() - start, 2), load
    return info


def folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.glob("*.safetensors"))


def bench_plan(work: Path, num_tasks: int, embeddings: str) -> dict:
    config = llama_config(LLAMA_3_2_1B)
    folders = [work / "base", *(work / f"task_{t}" for t in range(num_tasks))]
    for seed, folder in enumerate(folders):
        if not (folder / "config.json").exists():
            write_sparse_model(folder, config, seed)
    info = run_plan(folders[0], folders[1:], "--embeddings", embeddings)
    info["disk_bytes_per_input"] = (folders[0] / "model.safetensors").stat().st_blocks * 512
    return info


def bench_merge(work: Path, layers: int, num_tasks: int, method: str, embeddings: str) -> dict:
    config = llama_config({**TINYLLAMA, "num_hidden_layers": layers})
    folders = [work / "base", *(work / f"task_{t}" for t in range(num_tasks))]
    start = time.perf_counter()
    for task, folder in zip([None, *range(num_tasks)], folders):
        if not (folder / "config.json").exists():
            write_model(folder, config, task)
    generated_s = time.perf_counter() - start
    plan = run_plan(folders[0], folders[1:], "--method", method, "--embeddings", embeddings)
    out = work / "merged"
    shutil.rmtree(out, ignore_errors=True)
    command = ["/usr/bin/time", "-f", "%e %U %S %M", *hf_tsv_command(
        "merge", folders[0], *folders[1:], "-o", out, "--device", "cpu", "--threads", "1", "--method", method,
        "--embeddings", embeddings)]
    load_before = load_average()
    done = subprocess.run(command, check=True, capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
    wall, user, system, peak_kib = done.stderr.strip().splitlines()[-1].split()
    inputs = sum(folder_bytes(f) for f in folders)
    result = {
        "shape": {**TINYLLAMA, "num_hidden_layers": layers}, "num_tasks": num_tasks, "method": method,
        "embeddings": embeddings,
        "parameters": plan["model_bytes"] // 2, "input_bytes_each": folder_bytes(folders[0]), "input_bytes_sum": inputs,
        "peak_rss_bytes": int(peak_kib) * 1024, "peak_rss_over_inputs": round(int(peak_kib) * 1024 / inputs, 4),
        "estimated_peak_memory_bytes": plan["estimated_peak_memory_bytes"],
        "estimated_seconds": plan["estimated_seconds"], "wall_s": float(wall), "cpu_s": float(user) + float(system),
        "load_average_1min": {"before": load_before, "after": load_average(), "plan": plan["load_average_1min"]},
        "generation_s": round(generated_s, 1), "command": " ".join(map(str, command[4:])),
    }
    shutil.rmtree(out, ignore_errors=True)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=["plan", "merge"])
    parser.add_argument("--work", type=Path, required=True, help="where the synthetic checkpoints go")
    parser.add_argument("--layers", type=int, default=8, help="merge: decoder layers of the TinyLlama shape")
    parser.add_argument("--num-tasks", type=int, default=4)
    parser.add_argument("--method", default="tsv-m")
    parser.add_argument("--embeddings", default="average", choices=["tsv", "average", "base"])
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    args.work.mkdir(parents=True, exist_ok=True)
    if args.what == "plan":
        result = bench_plan(args.work, max(2, args.num_tasks), args.embeddings)
    else:
        result = bench_merge(args.work, args.layers, args.num_tasks, args.method, args.embeddings)
    (args.work / f"results-{args.what}-{args.embeddings}.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
