"""TSV-C artifacts: every task's top-k singular triplets per matrix key (and its other keys whole), stored
as safetensors plus a JSON index; :func:`expand` rebuilds any one task's full checkpoint from them."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .core import truncated_task_factors
from .core.svd import DEFAULT_SVD_MODE
from .distributed import current_shards, options_fixing_output, shard_units, step, write_sharded
from .engine import OUTPUT_OVERFLOW_HINT, Timer, build_plan, check_finite, iter_units, resolve_device
from .errors import MergeInputError
from .files import CONFIG_NAME
from .files import TSVC_FORMAT as FORMAT
from .files import TSVC_INDEX_NAME as INDEX_NAME
from .io.layout import find_member, model_root, parse_json, read_member
from .io.output import write_json
from .io.reader import SafetensorsFiles
from .io.resolve import resolve_model
from .io.writer import (
    DEFAULT_MAX_SHARD_SIZE,
    ShardedSafetensorsWriter,
    atomic_output_dir,
    check_output_dir,
    save_config,
    set_config_dtype,
)
from .options import MergeOptions, check_model_references, check_output_options, finite_number
from .report import EXPAND_METHOD, SOURCES, InputRecord, MergeReport, library_versions


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
             compute_dtype=torch.float32, svd: str = DEFAULT_SVD_MODE, allow_duplicates: bool = False,
             overwrite: bool = False, max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE, token=None,
             architecture: str | None = None, drop_heads: bool = False) -> CompressResult:
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
                                          compute_dtype=compute_dtype, svd=svd, allow_duplicates=allow_duplicates,
                                          architecture=architecture, drop_heads=drop_heads)
    check_output_options(overwrite, max_shard_size)
    store_dtype, compute_dtype = options.dtype or torch.float32, options.compute_dtype
    svd, dev = options.svd, options.device
    if rank_fraction is not None:
        rank_fraction = finite_number(rank_fraction, "rank_fraction")
        if not 0.0 < rank_fraction <= 1.0:
            raise MergeInputError(f"rank_fraction (--rank-fraction) must be in (0, 1], got {rank_fraction:g}")
    models = check_model_references(base, models, min_models=1)
    shards = current_shards()
    with step(shards, "in the preflight"):
        if shards is None or shards.is_main:
            check_output_dir(output_dir, overwrite, inputs=[base, *models])
        plan = build_plan(base, models, fuse_qkv=options.fuse_qkv, exclude=options.exclude,
                          allow_duplicates=options.allow_duplicates, token=token, min_models=1,
                          architecture=options.architecture, drop_heads=options.drop_heads)
    t_count = plan.num_tasks
    ranks: dict[str, int] = {}
    per_unit: dict[str, dict[str, tuple[torch.dtype, tuple]]] = {}  # unit name → its stored tensors' layout
    for unit in plan.units:
        per_unit[unit.name] = unit_layout = {}
        for t in range(t_count):
            if unit.is_matrix:
                m, n = unit.shape
                k = ranks.setdefault(unit.name, _rank((m, n), t_count, rank_fraction))
                unit_layout[f"tasks.{t}.{unit.name}.u"] = (store_dtype, (m, k))
                unit_layout[f"tasks.{t}.{unit.name}.s"] = (store_dtype, (k,))
                unit_layout[f"tasks.{t}.{unit.name}.v"] = (store_dtype, (n, k))
            else:
                unit_layout[f"tasks.{t}.{unit.name}.delta"] = (store_dtype, tuple(unit.shape))
    layout = {name: spec for unit_layout in per_unit.values() for name, spec in unit_layout.items()}
    full_bytes = t_count * sum(i.nbytes for i in plan.base_infos.values())
    full_bytes = full_bytes * store_dtype.itemsize // plan.base_infos[plan.units[0].keys[0]].dtype.itemsize
    stored_bytes = sum(torch.empty((), dtype=d).element_size() * _numel(s) for d, s in layout.values())
    if shards is not None:
        shards.check_same((layout, options_fixing_output(options), [(u.name, u.keys) for u in plan.units]),
                          "compression")
    mine = shard_units(plan.units, shards, t_count, uses_svd=True)  # this process's units (all in one process)

    def write_units(write_stored) -> None:
        def write(name: str, tensor: torch.Tensor) -> None:
            stored = tensor.to("cpu", store_dtype)
            write_stored(name, check_finite(stored, f"the stored tensor {name!r}", OUTPUT_OVERFLOW_HINT))

        for item in iter_units(plan, dev, compute_dtype, Timer(), mine, desc="TSV-C"):
            unit = item.unit
            if unit.is_matrix:
                f = truncated_task_factors(item.task_vectors, ranks[unit.name], compute_dtype=compute_dtype,
                                           svd=svd, precision=item.precision)
                for t in range(t_count):
                    for part, tensor in (("u", f.u[t]), ("s", f.s[t]), ("v", f.v[t])):
                        write(f"tasks.{t}.{unit.name}.{part}", tensor)
            else:
                for t in range(t_count):
                    write(f"tasks.{t}.{unit.name}.delta", item.task_vectors[t])

    def make_index() -> dict:
        index = {
            "format": FORMAT, "version": 1, "num_tasks": t_count,
            "k": "floor(r/T)" if rank_fraction is None else f"floor({rank_fraction}*r)",
            "ranks": ranks, "dtype": str(store_dtype).removeprefix("torch."),
            "base": {**plan.base.provenance(), "fingerprint": plan.base.content_fingerprint(),
                     **({"path": str(plan.base.reader.folder.resolve())} if plan.base.source == "local" else {})},
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
        return index

    written: list[dict] = []  # the index write_rest wrote

    def write_rest(folder: Path) -> None:
        config = plan.output_config
        set_config_dtype(config, plan.base_infos[plan.units[0].keys[0]].dtype)
        save_config(folder, config)
        written.append(make_index())
        write_json(folder / INDEX_NAME, written[0])  # keeps the base's path (secrets redacted by write_json)

    inputs = [plan.base, *plan.models]
    if shards is not None:
        keys = [name for unit in mine for name in per_unit[unit.name]]
        write_sharded(shards, output_dir, overwrite, inputs, layout, max_shard_size, "tsv_c", keys, write_units,
                      lambda: None, write_rest)
        return CompressResult(Path(output_dir), written[0] if written else make_index())
    with atomic_output_dir(output_dir, overwrite, inputs=inputs) as tmp:
        writer = ShardedSafetensorsWriter(tmp, layout, max_shard_size, file_stem="tsv_c")
        write_units(writer.write)
        writer.close()
        write_rest(tmp)
    return CompressResult(Path(output_dir), written[0])


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _task_index(index: dict, task: str | int) -> int:
    """The position of the task that ``task`` names. A string is a task *name* first: the name recorded in
    tsv_c.json, else its last ``/`` part (``ns/ft`` → ``ft``) when only one task has it. Only a string that names
    no task is read as an index, written ``N`` or ``#N``. An ``int`` is always an index.

    Example:
        >>> tasks = {"tasks": [{"name": "7"}, {"name": "ns/0"}, {"name": "dtd"}]}
        >>> _task_index(tasks, "0"), _task_index(tasks, "#0"), _task_index(tasks, 0), _task_index(tasks, "2")
        (1, 0, 0, 2)
    """
    names = [t["name"] for t in index["tasks"]]
    listing = ", ".join(f"#{i} {name!r}" for i, name in enumerate(names))
    if isinstance(task, bool) or not isinstance(task, (int, str)):
        raise MergeInputError(f"task must be a task name or an index, got {type(task).__name__}; tasks: {listing}")
    if isinstance(task, str):
        matches = ([i for i, n in enumerate(names) if n == task]
                   or [i for i, n in enumerate(names) if n.split("/")[-1] == task])
        if len(matches) == 1:
            return matches[0]
        if matches:
            raise MergeInputError(f"several tasks are named {task!r} ({', '.join(f'#{i}' for i in matches)}); "
                                  f"choose one by index, e.g. '#{matches[0]}'; tasks: {listing}")
        digits = task.removeprefix("#")
        if not (digits.isascii() and digits.isdigit()):
            raise MergeInputError(f"no task named {task!r}; tasks: {listing}")
        task = int(digits)
    if not 0 <= task < len(names):
        raise MergeInputError(f"task index {task} is out of range; this artifact has tasks {listing}")
    return task


def _index_problem(index: object) -> str | None:
    """What is wrong with a parsed tsv_c.json (a file edited or damaged since `compress` wrote it), or ``None``."""
    def is_text(value: object) -> bool:
        return isinstance(value, str) and bool(value)

    def text_map(value: object) -> bool:
        return isinstance(value, dict) and all(is_text(v) for v in value.values())

    if not isinstance(index, dict):
        return f"it holds a JSON {type(index).__name__}, not an object"
    if index.get("format") != FORMAT:
        return f"'format' is {index.get('format')!r}, not {FORMAT!r}"
    tasks, base, units = index.get("tasks"), index.get("base"), index.get("units")
    if not isinstance(tasks, list) or not tasks or not all(isinstance(t, dict) and is_text(t.get("name"))
                                                         for t in tasks):
        return "'tasks' must be a non-empty list of objects with a 'name'"
    for i, task in enumerate(tasks):
        if task.get("source") not in SOURCES or task["source"] == "hub" and not is_text(task.get("repo_id")):
            return f"tasks[{i}] must have 'source' local, hub or memory (and a Hub task its 'repo_id')"
    if index.get("num_tasks") != len(tasks):
        return f"'num_tasks' is {index.get('num_tasks')!r}, not the number of entries in 'tasks' ({len(tasks)})"
    if not isinstance(base, dict) or base.get("source") not in ("local", "hub", "memory"):
        return "'base' must be an object with 'source' local, hub or memory"
    if not is_text(base.get("fingerprint")):
        return "'base' has no 'fingerprint', so the base checkpoint cannot be checked"
    if base["source"] == "hub" and not (is_text(base.get("repo_id")) and is_text(base.get("revision"))):
        return "a Hub 'base' needs 'repo_id' and 'revision'"
    if not is_text(index.get("k")):
        return "'k' must be a string (the rank rule, e.g. 'floor(r/T)')"
    for key in ("output_names", "base_keys"):
        if not text_map(index.get(key)):
            return f"{key!r} must be an object of key names"
    ranks = index.get("ranks")
    if not isinstance(ranks, dict):
        return "'ranks' must be an object {matrix key: rank}"
    if not isinstance(units, list) or not units:
        return "'units' must be a non-empty list"
    for i, unit in enumerate(units):
        if not (isinstance(unit, dict) and is_text(unit.get("name")) and isinstance(unit.get("matrix"), bool)
                and isinstance(unit.get("keys"), list) and unit["keys"] and all(is_text(k) for k in unit["keys"])):
            return f"units[{i}] must be {{'name': str, 'keys': [str, ...], 'matrix': bool}}"
        missing = [k for k in unit["keys"] if k not in index["output_names"] or k not in index["base_keys"]]
        if missing:
            return f"units[{i}] key {missing[0]!r} is missing from 'output_names' or 'base_keys'"
        rank = ranks.get(unit["name"])
        if unit["matrix"] and (isinstance(rank, bool) or not isinstance(rank, int) or rank < 0):
            return f"ranks[{unit['name']!r}] is {rank!r}, not a rank (an integer >= 0)"
    keys = [k for unit in units for k in unit["keys"]]
    saved = list(index["output_names"].values())
    if len(set(keys)) != len(keys) or set(keys) != set(index["output_names"]) or len(set(saved)) != len(saved):
        return "'units' must name each key once, and 'output_names' must map exactly those keys to distinct names"
    return None


def load_index(folder: str | os.PathLike) -> dict:
    """Read and check a TSV-C folder's tsv_c.json (inside the folder, symlinks followed); one clear
    :class:`MergeInputError` for a file that is missing, not JSON, or edited into something `expand` cannot use."""
    folder = Path(folder)
    who = f"TSV-C folder {folder}"
    path = find_member(folder, model_root(folder), INDEX_NAME, who)
    if path is None:
        raise MergeInputError(f"{folder / INDEX_NAME} not found; is {folder} a folder written by `hf-tsv compress`?")
    index = parse_json(read_member(path, who), who, INDEX_NAME)
    problem = _index_problem(index)
    if problem:
        raise MergeInputError(f"{folder / INDEX_NAME} cannot be used: {problem}; the file was edited or damaged "
                              "since `hf-tsv compress` wrote it: compress again")
    return index


def _check_base(index: dict, resolved, index_path: Path) -> None:
    """Refuse a base other than the one the factors were computed against (by its recorded fingerprint)."""
    recorded = index["base"]["fingerprint"]
    actual = resolved.content_fingerprint()
    if actual != recorded:
        raise MergeInputError(f"base {resolved.name!r} is not the checkpoint these factors were computed against "
                              f"(fingerprint {actual} ≠ {recorded} recorded in {index_path}); pass the right --base")


def _factor_layout(index: dict, factors: SafetensorsFiles, base_infos: dict, t: int, source: str) -> None:
    """Check, from the headers alone, that task ``t``'s stored factors fit the base: per matrix unit u (m, k),
    s (k,), v (n, k) with k the recorded rank, else a delta of the base key's shape."""
    def shape(name: str) -> tuple[int, ...]:
        info = factors.infos.get(name)
        if info is None:
            raise MergeInputError(f"{source}: tensor {name!r} is missing from the factors; compress again")
        return tuple(info.shape)

    for unit in index["units"]:
        base_keys = [index["base_keys"][k] for k in unit["keys"]]
        missing = [k for k in base_keys if k not in base_infos]
        if missing:
            raise MergeInputError(f"{source}: the base has no key {missing[0]!r} (named in its 'base_keys')")
        shapes = [tuple(base_infos[k].shape) for k in base_keys]
        prefix = f"tasks.{t}.{unit['name']}"
        if not unit["matrix"]:
            if len(shapes) != 1 or shape(f"{prefix}.delta") != shapes[0]:
                raise MergeInputError(f"{source}: {prefix}.delta does not have the shape {shapes[0]} of the base key "
                                      f"{base_keys[0]!r}; compress again")
            continue
        if any(len(s) != 2 or s[1] != shapes[0][1] for s in shapes):
            raise MergeInputError(f"{source}: unit {unit['name']!r} groups keys that are not matrices of one width")
        m, n, k = sum(s[0] for s in shapes), shapes[0][1], index["ranks"][unit["name"]]
        expected = {"u": (m, k), "s": (k,), "v": (n, k)}
        if k > min(m, n) or any(shape(f"{prefix}.{p}") != want for p, want in expected.items()):
            raise MergeInputError(f"{source}: the factors of {unit['name']!r} are not u {expected['u']}, "
                                  f"s {expected['s']}, v {expected['v']} for rank {k} of a {m}x{n} matrix; "
                                  "compress again")


def expand(compressed_dir: str | os.PathLike, task: str | int, output_dir: str | os.PathLike, *,
           base=None, overwrite: bool = False, device="auto",
           max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE, token=None) -> Path:
    """Rebuild one task's full checkpoint (θ₀ + U_k diag(σ_k) V_kᵀ; other keys θ₀ + τ) from a TSV-C folder.

    ``task`` is a task name as recorded in tsv_c.json (names are matched first) or an index (an ``int``, or a
    string ``N``/``#N`` that names no task); see :func:`_task_index`. ``base`` defaults to the base recorded at
    compression (its Hub id and revision, or its local path); whichever is used must have the fingerprint
    recorded in tsv_c.json. Every file is read from inside ``compressed_dir`` and the base's folder.
    """
    dev = resolve_device(device)  # options first, before any file is read
    check_output_options(overwrite, max_shard_size)
    folder = Path(compressed_dir)
    index_path = folder / INDEX_NAME
    index = load_index(folder)
    t = _task_index(index, task)
    task_record = InputRecord.from_dict(index["tasks"][t], INDEX_NAME, f"tasks[{t}]")
    check_output_dir(output_dir, overwrite, inputs=[folder, base])
    recorded = index["base"]
    if base is None:
        if recorded["source"] == "hub":
            base = f"{recorded['repo_id']}@{recorded['revision']}"
        elif isinstance(recorded.get("path"), str) and Path(recorded["path"]).is_dir():
            base = recorded["path"]
        else:
            raise MergeInputError(f"{index_path}: the base was a local folder that is gone; pass --base")
    resolved = resolve_model(base, token=token)
    _check_base(index, resolved, index_path)
    base_reader = resolved.reader
    who = f"TSV-C folder {folder}"
    factors = SafetensorsFiles(folder, "tsv_c", who)
    _factor_layout(index, factors, base_reader.infos, t, who)
    config_path = find_member(folder, model_root(folder), CONFIG_NAME, who)
    if config_path is None:
        raise MergeInputError(f"{folder / CONFIG_NAME} not found; is {folder} a folder written by `hf-tsv compress`?")
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(str(folder))
    except (OSError, ValueError) as exc:
        raise MergeInputError(f"{who}: {CONFIG_NAME} is not a transformers config "
                              f"({str(exc).splitlines()[0][:200]}); compress again") from None
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
        save_config(tmp, config)
        MergeReport(EXPAND_METHOD, InputRecord.from_dict(resolved.provenance()),
                    task=task_record, k=index["k"], versions=library_versions()).save(tmp)
    return Path(output_dir)
