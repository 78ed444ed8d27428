"""TSV-C artifacts: every task's top-k singular triplets per matrix key (and its other keys whole), stored
as safetensors plus a JSON index; :func:`expand` rebuilds any one task's full checkpoint from them."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .core import truncated_task_factors
from .engine import Timer, build_plan, check_finite, iter_units, resolve_device
from .errors import MergeInputError
from .files import CONFIG_NAME
from .files import TSVC_FORMAT as FORMAT
from .files import TSVC_INDEX_NAME as INDEX_NAME
from .io.output import naming_file, write_json
from .io.reader import SafetensorsFiles
from .io.resolve import resolve_model
from .io.writer import DEFAULT_MAX_SHARD_SIZE, ShardedSafetensorsWriter, atomic_output_dir, check_output_dir
from .merge import OUTPUT_OVERFLOW_HINT, _set_config_dtype, _write_metadata
from .options import MergeOptions, check_model_references, check_output_options, finite_number
from .report import library_versions
from .secrets import redact_json


@dataclass
class CompressResult:
    """Where the artifact is and how big it is against the full task vectors."""

    folder: Path
    index: dict

    @property
    def factor_bytes(self) -> int:
        return self.index["sizes"]["stored_bytes"]

    @property
    def task_vector_bytes(self) -> int:
        return self.index["sizes"]["full_task_vectors_bytes"]

    def summary(self) -> str:
        ratio = self.factor_bytes / max(1, self.task_vector_bytes)
        return (f"TSV-C: {self.index['num_tasks']} tasks stored in {self.factor_bytes / 1e6:.2f} MB, "
                f"{100 * ratio:.1f}% of the {self.task_vector_bytes / 1e6:.2f} MB their full task vectors take")


def _rank(shape: tuple[int, int], num_tasks: int, rank_fraction: float | None) -> int:
    r = min(shape)
    if rank_fraction is None:
        return r // num_tasks
    return max(1, min(r, int(rank_fraction * r)))


def compress(base, models, output_dir: str | os.PathLike, *, rank_fraction: float | None = None,
             fuse_qkv: bool = False, exclude: str | None = None, device="auto", dtype=torch.float32,
             compute_dtype=torch.float32, svd: str = "exact", allow_duplicates: bool = False, overwrite: bool = False,
             max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE, token=None) -> CompressResult:
    """TSV-C: keep each task's top k = ⌊r/T⌋ singular triplets per matrix key (or ⌊rank_fraction·r⌋).

    Factors are stored in ``dtype`` (float32 by default); other keys' task vectors are stored whole. Options
    are checked as :func:`hf_tsv.merge` checks them (:class:`hf_tsv.options.MergeOptions`), before any work.

    Example:
        >>> res = hf_tsv.compress("base", ["ft_a", "ft_b", "ft_c"], "tsvc")  # doctest: +SKIP
        >>> print(res.summary())  # doctest: +SKIP
        >>> hf_tsv.expand("tsvc", task="ft_b", output_dir="ft_b_rebuilt")  # doctest: +SKIP
    """
    started = time.perf_counter()
    options = MergeOptions.from_arguments(fuse_qkv=fuse_qkv, exclude=exclude, device=device, dtype=dtype,
                                          compute_dtype=compute_dtype, svd=svd, allow_duplicates=allow_duplicates)
    check_output_options(overwrite, max_shard_size)
    store_dtype, compute_dtype = options.dtype or torch.float32, options.compute_dtype
    svd, dev = options.svd, options.device
    if rank_fraction is not None:
        rank_fraction = finite_number(rank_fraction, "rank_fraction")
        if not 0.0 < rank_fraction <= 1.0:
            raise MergeInputError(f"rank_fraction (--rank-fraction) must be in (0, 1], got {rank_fraction:g}")
    models = check_model_references(base, models, min_models=1)
    check_output_dir(output_dir, overwrite, inputs=[base, *models])
    plan = build_plan(base, models, fuse_qkv=options.fuse_qkv, exclude=options.exclude,
                      allow_duplicates=options.allow_duplicates, token=token, min_models=1)
    t_count = plan.num_tasks
    layout: dict[str, tuple[torch.dtype, tuple]] = {}
    ranks: dict[str, int] = {}
    for unit in plan.units:
        for t in range(t_count):
            if unit.is_matrix:
                m, n = unit.shape
                k = ranks.setdefault(unit.name, _rank((m, n), t_count, rank_fraction))
                layout[f"tasks.{t}.{unit.name}.u"] = (store_dtype, (m, k))
                layout[f"tasks.{t}.{unit.name}.s"] = (store_dtype, (k,))
                layout[f"tasks.{t}.{unit.name}.v"] = (store_dtype, (n, k))
            else:
                layout[f"tasks.{t}.{unit.name}.delta"] = (store_dtype, tuple(unit.shape))
    full_bytes = t_count * sum(i.nbytes for i in plan.base_infos.values())
    full_bytes = full_bytes * store_dtype.itemsize // plan.base_infos[plan.units[0].keys[0]].dtype.itemsize
    stored_bytes = sum(torch.empty((), dtype=d).element_size() * _numel(s) for d, s in layout.values())
    with atomic_output_dir(output_dir, overwrite, inputs=[plan.base, *plan.models]) as tmp:
        writer = ShardedSafetensorsWriter(tmp, layout, max_shard_size, file_stem="tsv_c")

        def write(name: str, tensor: torch.Tensor) -> None:
            stored = tensor.to("cpu", store_dtype)
            writer.write(name, check_finite(stored, f"the stored tensor {name!r}", OUTPUT_OVERFLOW_HINT))

        for item in iter_units(plan, dev, compute_dtype, Timer(), desc="TSV-C"):
            unit = item.unit
            if unit.is_matrix:
                f = truncated_task_factors(item.task_vectors, ranks[unit.name], compute_dtype=compute_dtype,
                                           svd=svd)
                for t in range(t_count):
                    for part, tensor in (("u", f.u[t]), ("s", f.s[t]), ("v", f.v[t])):
                        write(f"tasks.{t}.{unit.name}.{part}", tensor)
            else:
                for t in range(t_count):
                    write(f"tasks.{t}.{unit.name}.delta", item.task_vectors[t])
        writer.close()
        config = plan.output_config
        _set_config_dtype(config, plan.base_infos[plan.units[0].keys[0]].dtype)
        with naming_file(tmp / CONFIG_NAME):
            config.save_pretrained(str(tmp))
        index = {
            "format": FORMAT, "version": 1, "num_tasks": t_count,
            "k": "floor(r/T)" if rank_fraction is None else f"floor({rank_fraction}*r)",
            "ranks": ranks, "dtype": str(store_dtype).removeprefix("torch."),
            "base": {**plan.base.provenance(), **({"path": str(plan.base.reader.folder.resolve())}
                                                   if plan.base.source == "local" else {})},
            "tasks": [m.provenance() for m in plan.models],
            "units": [{"name": u.name, "keys": u.keys, "matrix": u.is_matrix} for u in plan.units],
            "output_names": plan.output_names,
            "base_keys": {k: plan.raw_keys[0][k] for k in plan.base_infos},
            "sizes": {"stored_bytes": stored_bytes, "full_task_vectors_bytes": full_bytes},
            "seconds": round(time.perf_counter() - started, 3),
            "versions": library_versions(),
        }
        if plan.warnings:
            index["warnings"] = plan.warnings
        write_json(tmp / INDEX_NAME, redact_json(index))  # keeps the base's path
    return CompressResult(Path(output_dir), index)


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _task_index(index: dict, task: str | int) -> int:
    names = [t["name"] for t in index["tasks"]]
    if isinstance(task, int) or str(task).isdigit():
        i = int(task)
        if not 0 <= i < len(names):
            raise MergeInputError(f"task index {i} is out of range; this artifact has tasks 0..{len(names) - 1}")
        return i
    matches = [i for i, n in enumerate(names) if n == task or n.split("/")[-1] == task]
    if len(matches) != 1:
        raise MergeInputError(f"no single task named {task!r}; tasks are: {', '.join(names)}")
    return matches[0]


def expand(compressed_dir: str | os.PathLike, task: str | int, output_dir: str | os.PathLike, *,
           base=None, overwrite: bool = False, device="auto",
           max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE, token=None) -> Path:
    """Rebuild one task's full checkpoint (θ₀ + U_k diag(σ_k) V_kᵀ; other keys θ₀ + τ) from a TSV-C folder.

    ``base`` defaults to the base recorded at compression (its Hub id and revision, or its local path).
    """
    dev = resolve_device(device)  # options first, before any file is read
    check_output_options(overwrite, max_shard_size)
    folder = Path(compressed_dir)
    index_path = folder / INDEX_NAME
    if not index_path.is_file():
        raise MergeInputError(f"{index_path} not found; is {folder} a folder written by `hf-tsv compress`?")
    index = json.loads(index_path.read_text())
    if index.get("format") != FORMAT:
        raise MergeInputError(f"{index_path}: format {index.get('format')!r} is not {FORMAT!r}")
    t = _task_index(index, task)
    check_output_dir(output_dir, overwrite, inputs=[folder, base])
    recorded = index["base"]
    if base is None:
        if recorded["source"] == "hub":
            base = f"{recorded['repo_id']}@{recorded['revision']}"
        elif recorded.get("path") and Path(recorded["path"]).is_dir():
            base = recorded["path"]
        else:
            raise MergeInputError(f"{index_path}: the base was a local folder that is gone; pass --base")
    resolved = resolve_model(base, token=token)
    if recorded.get("fingerprint") and resolved.fingerprint and resolved.fingerprint != recorded["fingerprint"]:
        raise MergeInputError(f"base {resolved.name!r} is not the checkpoint these factors were computed "
                              f"against (fingerprint {resolved.fingerprint} ≠ {recorded['fingerprint']})")
    base_reader = resolved.reader
    factors = SafetensorsFiles(folder, "tsv_c", f"TSV-C folder {folder}")
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(folder))
    output_names = index["output_names"]
    base_keys = index["base_keys"]
    layout = {}
    for canon, saved in output_names.items():
        info = base_reader.infos[base_keys[canon]]
        layout[saved] = (info.dtype, info.shape)
    with atomic_output_dir(output_dir, overwrite, inputs=[folder, resolved]) as tmp:
        writer = ShardedSafetensorsWriter(tmp, layout, max_shard_size)
        for unit in index["units"]:
            name = unit["name"]
            if unit["matrix"]:
                u, s, v = (factors.get(f"tasks.{t}.{name}.{p}").to(dev, torch.float32) for p in "usv")
                delta = (u * s) @ v.T
            else:
                delta = factors.get(f"tasks.{t}.{name}.delta").to(dev, torch.float32)
            keys = unit["keys"]
            base_parts = [base_reader.get(base_keys[k]).to(dev, torch.float32) for k in keys]
            sizes = [p.shape[0] for p in base_parts]
            merged = torch.cat(base_parts) + delta if len(keys) > 1 else base_parts[0] + delta
            parts = dict(zip(keys, torch.split(merged, sizes))) if len(keys) > 1 else {keys[0]: merged}
            for canon, tensor in parts.items():
                saved = output_names[canon]
                rebuilt = tensor.to("cpu", layout[saved][0])
                writer.write(saved, check_finite(rebuilt, f"the rebuilt tensor of key {saved!r}",
                                                 f"check the factors in {folder} (tsv_c*.safetensors)"))
        writer.close()
        report = {"method": "tsv-c expand", "task": index["tasks"][t], "base": resolved.provenance(),
                  "k": index["k"], "versions": library_versions()}
        _write_metadata(tmp, config, report)
    return Path(output_dir)
