"""The streaming engine: preflight (headers and configs only), then one key group at a time across the base
and all T models → one core function → written out and freed. It never holds T whole models."""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from .adapters.clip import ARCHITECTURE_FIELDS, PROJECTION_KEY, ClipVisionAdapter
from .core.svd import InputPrecision
from .errors import MergeInputError
from .io.resolve import ResolvedModel, resolve_model
from .io.safetensors_format import TensorInfo

PROCESS_BASELINE_BYTES = 600 * 2**20  # python + torch + transformers, measured ~0.5-0.6 GB RSS


@dataclass
class Unit:
    """Keys processed together: one matrix key, a fused q/k/v group, or one averaged key."""

    name: str  # canonical name (fused groups: ...self_attn.qkv_proj.weight)
    keys: list[str]  # canonical keys, stacked along rows when there are several
    is_matrix: bool
    shape: tuple[int, ...]  # of the (stacked) matrix

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


@dataclass
class MergePlan:
    """Everything the preflight learnt: inputs, key classes, units, output model and estimates."""

    base: ResolvedModel
    models: list[ResolvedModel]
    units: list[Unit]
    raw_keys: list[dict[str, str]]  # per input (base first): canonical key → key in that checkpoint
    output_class: type
    output_config: object
    output_names: dict[str, str]  # canonical key → key in the saved output
    base_infos: dict[str, TensorInfo]  # canonical key → base tensor info
    excluded: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    fuse_qkv: bool = False

    @property
    def num_tasks(self) -> int:
        return len(self.models)

    def counts(self) -> dict[str, int]:
        c = Counter("matrix" if u.is_matrix else "averaged" for u in self.units)
        return {"matrix_units": c["matrix"], "averaged_keys": c["averaged"],
                "fused_qkv_groups": sum(len(u.keys) == 3 for u in self.units if u.is_matrix),
                "excluded_keys": len(self.excluded), "ignored_keys": len(self.ignored),
                "total_keys": sum(len(u.keys) for u in self.units)}

    def base_key(self, unit: Unit) -> str:
        """The unit's name as the base checkpoint spells it (keeps its ``vision_model.`` prefix, if any)."""
        first = self.raw_keys[0][unit.keys[0]]
        if len(unit.keys) == 1:
            return first
        return first[: len(first) - len("q_proj.weight")] + "qkv_proj.weight"

    def readers(self):
        return [self.base.reader] + [m.reader for m in self.models]

    def estimate_peak_bytes(self) -> int:
        """Peak RSS estimate: process baseline + the largest unit's T+1 tensors as read, their fp32 copies,
        the task vectors and the batched SVD's factors and workspace."""
        largest = max((u for u in self.units), key=lambda u: u.numel, default=None)
        if largest is None:
            return PROCESS_BASELINE_BYTES
        t = self.num_tasks
        itemsize = max(self.base_infos[k].nbytes // max(1, _numel(self.base_infos[k].shape))
                       for k in largest.keys)
        per_copy = largest.numel
        return PROCESS_BASELINE_BYTES + per_copy * ((t + 1) * itemsize + 4 * (3 * t + 6))


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _canonical_infos(model: ResolvedModel) -> tuple[dict[str, TensorInfo], dict[str, str], list[str]]:
    infos, raw, ignored = {}, {}, []
    for key, info in model.reader.infos.items():
        canon = ClipVisionAdapter.canonical_key(key)
        if canon is None:
            ignored.append(key)
            continue
        if canon in raw:
            raise MergeInputError(f"model {model.name!r} ({model.reader.weights_file}): keys {raw[canon]!r} and "
                                  f"{key!r} are the same vision key; the checkpoint mixes two layouts")
        infos[canon], raw[canon] = info, key
    return infos, raw, ignored


def build_plan(base, models, *, fuse_qkv: bool = False, exclude: str | None = None,
               revision: str | None = None, token=None, min_models: int = 2) -> MergePlan:
    """Preflight: resolve every reference, read configs and headers only, and refuse anything that cannot
    be merged, naming the model, the file and the key.

    Example:
        >>> plan = build_plan("base", ["ft_a", "ft_b"])  # doctest: +SKIP
        >>> plan.counts()  # doctest: +SKIP
    """
    if isinstance(models, (str, torch.nn.Module)):
        models = [models]
    models = list(models)
    if len(models) < min_models:
        raise MergeInputError(f"got {len(models)} fine-tuned model(s); this needs at least {min_models} "
                              "besides the base")
    try:
        exclude_re = re.compile(exclude) if exclude else None
    except re.error as exc:
        raise MergeInputError(f"--exclude {exclude!r} is not a valid regular expression: {exc}") from None
    resolved_base = resolve_model(base, name="base" if isinstance(base, torch.nn.Module) else None,
                                  revision=revision, token=token)
    resolved = []
    for i, m in enumerate(models):
        resolved.append(resolve_model(m, name=f"model_{i}" if isinstance(m, torch.nn.Module) else None,
                                      token=token))
    names = Counter(r.name for r in resolved)
    for i, r in enumerate(resolved):  # make display names unique (two folders both called "checkpoint")
        if names[r.name] > 1:
            r.name = f"{r.name}#{i}"

    def where(model: ResolvedModel, file: object = None) -> str:
        return f"model {model.name!r} ({file or model.reader.weights_file})"

    base_vision = ClipVisionAdapter.vision_config(resolved_base.reader.config, where(resolved_base, "config.json"))
    for r in resolved:
        vision = ClipVisionAdapter.vision_config(r.reader.config, where(r, "config.json"))
        for fld in ARCHITECTURE_FIELDS:
            if fld in base_vision and fld in vision and vision[fld] != base_vision[fld]:
                raise MergeInputError(f"{where(r, 'config.json')}: {fld} is {vision[fld]!r} but the base has "
                                      f"{base_vision[fld]!r}; only fine-tunes of the same architecture merge")

    base_infos, base_raw, ignored = _canonical_infos(resolved_base)
    per_model = [_canonical_infos(r) for r in resolved]
    notes = []
    with_projection = PROJECTION_KEY in base_infos and all(PROJECTION_KEY in i for i, _, _ in per_model)
    if not with_projection and (PROJECTION_KEY in base_infos or any(PROJECTION_KEY in i for i, _, _ in per_model)):
        notes.append(f"{PROJECTION_KEY} is not in every model; it is left out and the output is a "
                     "CLIPVisionModel")
        base_infos.pop(PROJECTION_KEY, None)
        base_raw.pop(PROJECTION_KEY, None)
        for infos, raw, _ in per_model:
            infos.pop(PROJECTION_KEY, None)
            raw.pop(PROJECTION_KEY, None)
    for key, info in base_infos.items():
        if not info.dtype.is_floating_point:
            raise MergeInputError(f"{where(resolved_base, info.file)}: key {base_raw[key]!r} has dtype "
                                  f"{info.dtype}; only floating-point tensors can be merged")
    for r, (infos, raw, _) in zip(resolved, per_model):
        for key, info in base_infos.items():
            if key not in infos:
                raise MergeInputError(f"{where(r)}: key {base_raw[key]!r} of the base is missing")
            other = infos[key]
            if other.shape != info.shape:
                raise MergeInputError(f"{where(r, other.file)}: key {raw[key]!r} has shape {list(other.shape)} "
                                      f"but the base has {list(info.shape)}")
            if not other.dtype.is_floating_point:
                raise MergeInputError(f"{where(r, other.file)}: key {raw[key]!r} has dtype {other.dtype}; "
                                      "only floating-point tensors can be merged")
        extra = sorted(set(infos) - set(base_infos))
        if extra:
            raise MergeInputError(f"{where(r)}: key {raw[extra[0]]!r} is not in the base "
                                  f"({len(extra)} extra keys); is this a fine-tune of that base?")

    output_class, output_config, output_names = ClipVisionAdapter.output_model(base_vision, with_projection)
    missing_out = sorted(set(output_names) - set(base_infos))
    if missing_out:
        raise MergeInputError(f"{where(resolved_base)}: key {missing_out[0]!r} that {output_class.__name__} "
                              "needs is missing")
    not_in_output = sorted(set(base_infos) - set(output_names))
    if not_in_output:
        raise MergeInputError(f"{where(resolved_base)}: key {base_raw[not_in_output[0]]!r} is not part of a "
                              f"{output_class.__name__}; is this a CLIP vision checkpoint?")

    excluded = sorted(k for k in base_infos if exclude_re and exclude_re.search(k))
    matrix_keys = [k for k in base_infos
                   if k not in excluded and ClipVisionAdapter.is_matrix(k, base_infos[k].shape)]
    groups = ClipVisionAdapter.qkv_groups(matrix_keys) if fuse_qkv else {}
    grouped = {k for keys in groups.values() for k in keys}
    first_of_group = {keys[0]: (name, keys) for name, keys in groups.items()}
    units = []
    for key in output_names:  # the output model's order
        if key in first_of_group:
            name, keys = first_of_group[key]
            rows = sum(base_infos[k].shape[0] for k in keys)
            units.append(Unit(name, keys, True, (rows, base_infos[key].shape[1])))
        elif key not in grouped:
            units.append(Unit(key, [key], key in matrix_keys, base_infos[key].shape))
    ignored_all = sorted(set(ignored) | {k for _, _, ign in per_model for k in ign})
    return MergePlan(resolved_base, resolved, units, [base_raw] + [raw for _, raw, _ in per_model],
                     output_class, output_config, output_names, base_infos, excluded, ignored_all, notes,
                     fuse_qkv)


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``"auto"`` → CUDA when available, else CPU."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise MergeInputError("device 'cuda' was asked for but torch sees no CUDA GPU; use --device cpu")
    return dev


@dataclass
class UnitTensors:
    unit: Unit
    base: torch.Tensor  # (stacked) base tensor in compute dtype on the device
    task_vectors: torch.Tensor  # (T, *shape) in compute dtype on the device
    precision: InputPrecision  # how precisely the inputs give the task vectors (storage dtype, base size)


class Timer:
    def __init__(self):
        self.totals: dict[str, float] = Counter()

    def add(self, name: str, start: float) -> float:
        now = time.perf_counter()
        self.totals[name] += now - start
        return now


def iter_units(plan: MergePlan, device: torch.device, compute_dtype: torch.dtype, timer: Timer,
               units: list[Unit] | None = None, desc: str = "merging") -> Iterator[UnitTensors]:
    """Yield each unit's base tensor and stacked task vectors, reading only that unit's keys, and checking
    every task tensor for NaN/inf (the error names the model, file and key)."""
    readers = plan.readers()
    units = plan.units if units is None else units
    for unit in tqdm(units, desc=desc, unit="key", leave=False):
        start = time.perf_counter()
        per_input = []
        stored = []
        for i, reader in enumerate(readers):
            parts = []
            for key in unit.keys:
                raw = plan.raw_keys[i][key]
                stored.append(reader.infos[raw].dtype)
                t = reader.get(raw).to(device=device, dtype=compute_dtype)
                if i > 0 and not bool(torch.isfinite(t).all()):
                    model = plan.models[i - 1]
                    raise MergeInputError(f"model {model.name!r} ({reader.infos[raw].file}): key {raw!r} "
                                          "contains NaN or inf values")
                parts.append(t)
            per_input.append(parts[0] if len(parts) == 1 else torch.cat(parts, dim=0))
        base = per_input[0]
        task_vectors = torch.stack([t - base for t in per_input[1:]])
        del per_input
        coarsest = max(stored, key=lambda d: torch.finfo(d).eps)
        precision = InputPrecision(coarsest, float(base.norm()) / max(1, base.numel()) ** 0.5)
        timer.add("read_s", start)
        yield UnitTensors(unit, base, task_vectors, precision)


def task_vector_scan(plan: MergePlan, device: torch.device, compute_dtype: torch.dtype, timer: Timer,
                     desc: str = "model pass") -> Callable[[], Iterator[torch.Tensor]]:
    """A callable that streams every unit's task vectors ``(T, ...)`` once per call, in the plan's order: what
    a method's model-wide pass (TIES's exact global trim) reads before the merge. Each call re-reads the inputs."""
    def scan() -> Iterator[torch.Tensor]:
        for item in iter_units(plan, device, compute_dtype, timer, desc=desc):
            yield item.task_vectors
    return scan


def split_rows(unit: Unit, plan: MergePlan, tensor: torch.Tensor) -> dict[str, torch.Tensor]:
    """Undo the row stacking of a fused unit: canonical key → tensor."""
    if len(unit.keys) == 1:
        return {unit.keys[0]: tensor}
    sizes = [plan.base_infos[k].shape[0] for k in unit.keys]
    return dict(zip(unit.keys, torch.split(tensor, sizes, dim=0)))
