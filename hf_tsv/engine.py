"""The streaming engine: preflight (headers and configs only), then one key group at a time across the base
and all T models → one core function → written out and freed. It never holds T whole models."""

from __future__ import annotations

import hashlib
import math
import os
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .adapters import Adapter, OutputModel, choose_adapter
from .core.lora import LowRankDelta, stack_rows
from .core.svd import InputPrecision
from .errors import MergeInputError
from .files import CONFIG_NAME
from .io.layout import read_side_files
from .io.lora import LoraAdapterReader
from .io.resolve import ResolvedModel, resolve_model
from .io.safetensors_format import TensorInfo
from .options import check_model_references, resolve_device  # noqa: F401 - resolve_device: used from here too
from .progress import progress_bar

# What each --embeddings mode does to the keys an adapter calls token embeddings (a plan's note says it)
EMBEDDING_RULES = {"tsv": "merged as matrices by the method",
                   "average": "merged like the norms and biases (which the SVD methods average)",
                   "base": "kept from the base"}
PROCESS_BASELINE_BYTES = 600 * 2**20  # python + torch + transformers, measured ~0.5-0.6 GB RSS


@dataclass
class Unit:
    """Keys processed together: one matrix key, a fused q/k/v group, one averaged key, or one key kept from the
    base (``from_base``: token embeddings with ``--embeddings base``; the fine-tunes' tensors are never read)."""

    name: str  # canonical name (a fused group: the name its adapter gives it)
    keys: list[str]  # canonical keys, stacked along rows when there are several
    is_matrix: bool
    shape: tuple[int, ...]  # of the (stacked) matrix
    from_base: bool = False

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


@dataclass
class MergePlan:
    """Everything the preflight learnt: inputs, the adapter that reads them, key classes, units, output model and
    estimates."""

    base: ResolvedModel
    models: list[ResolvedModel]
    units: list[Unit]
    raw_keys: list[dict[str, str]]  # per input (base first): canonical key → key in that checkpoint
    adapter: Adapter
    output: OutputModel  # the class, config and saved key names of the merged model
    base_infos: dict[str, TensorInfo]  # canonical key → base tensor info
    excluded: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    fuse_qkv: bool = False
    warnings: list[str] = field(default_factory=list)  # what was merged although doubtful (allow_duplicates)
    mixed_precision: dict = field(default_factory=dict)  # fine-tunes less precise than the base (see base_rounding)
    side_files: dict[str, bytes] = field(default_factory=dict)  # the base's files the output keeps (its tokenizer)

    @property
    def output_class(self) -> type:
        return self.output.model_class

    @property
    def output_config(self):
        return self.output.config

    @property
    def output_names(self) -> dict[str, str]:
        """Canonical key → key in the saved output."""
        return self.output.names

    @property
    def num_tasks(self) -> int:
        return len(self.models)

    @property
    def adapter_rank(self) -> int:
        """The largest LoRA rank among the fine-tunes that are adapters (1 when none is): what the estimates of a
        merge from factors assume for every task."""
        return max((max(m.reader.rank_of.values(), default=1) for m in self.models if is_lora(m)), default=1)

    def counts(self) -> dict[str, int]:
        c = Counter("base" if u.from_base else "matrix" if u.is_matrix else "averaged" for u in self.units)
        counts = {"matrix_units": c["matrix"], "averaged_keys": c["averaged"],
                  "fused_qkv_groups": sum(len(u.keys) == 3 for u in self.units if u.is_matrix),
                  "excluded_keys": len(self.excluded), "ignored_keys": len(self.ignored),
                  "total_keys": sum(len(u.keys) for u in self.units)}
        if c["base"]:  # only with --embeddings base, so the counts of every other merge read as before
            counts["kept_base_keys"] = c["base"]
        return counts

    def base_key(self, unit: Unit) -> str:
        """The unit's name as the base checkpoint spells it (with the prefix the base's keys have, if any)."""
        first = self.raw_keys[0][unit.keys[0]]
        if len(unit.keys) == 1:
            return first
        return self.adapter.spelled(first, unit.keys[0], unit.name)

    def readers(self):
        return [self.base.reader] + [m.reader for m in self.models]

    @property
    def inputs(self) -> list[ResolvedModel]:
        """The base, then the fine-tuned models (the order of :attr:`raw_keys`)."""
        return [self.base, *self.models]

    def estimate_peak_bytes(self, factored_tasks: bool = False) -> int:
        """Peak RSS estimate: process baseline + the costliest unit's working set (:meth:`unit_peak_bytes`).
        ``factored_tasks``: the method merges LoRA adapters from their factors (its
        :attr:`~hf_tsv.methods.MergeMethod.factored_tasks`, TSV-M)."""
        return PROCESS_BASELINE_BYTES + max((self.unit_peak_bytes(u, factored_tasks) for u in self.units),
                                            default=0)

    def unit_peak_bytes(self, unit: Unit, factored_tasks: bool = False) -> int:
        """One unit's working set: a matrix unit's T+1 tensors as read, their fp32 copies, the task vectors and
        the batched SVD's factors and workspace; an averaged key's tensors as read, its task vectors, the base,
        the mean and the merged tensor; a key kept from the base, the base as read, in fp32 and merged.

        A LoRA adapter's tensors are its factors, never read at the key's size: its task vector is formed in place
        (no copy as read, none in fp32). A matrix unit whose tasks are all adapters, merged by a method with
        ``factored_tasks``, never forms them: :func:`hf_tsv.estimate.factored_matrix_bytes`.
        """
        from .estimate import factored_matrix_bytes

        t = self.num_tasks
        adapters = sum(is_lora(m) for m in self.models)
        itemsize = max(self.base_infos[k].nbytes // max(1, _numel(self.base_infos[k].shape)) for k in unit.keys)
        if unit.from_base:
            return unit.numel * (itemsize + 4 * 2)
        read = unit.numel * (t + 1 - adapters) * itemsize
        if not unit.is_matrix:
            return read + unit.numel * 4 * (t + 4)
        if factored_tasks and adapters == t and len(unit.shape) == 2:
            return factored_matrix_bytes(unit.shape, t, itemsize, self.adapter_rank)
        return read + unit.numel * 4 * (3 * t + 6 - adapters)


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


@dataclass
class _InputKeys:
    """One input's keys as the adapter sees them."""

    infos: dict[str, TensorInfo]  # canonical key → tensor info
    raw: dict[str, str]  # canonical key → key in the checkpoint
    ignored: list[str]  # keys of parts the adapter does not merge
    heads: dict[str, str]  # canonical → raw key of a task-specific head


def _where(model: ResolvedModel, file: object = None) -> str:
    return f"model {model.name!r} ({file or model.reader.weights_file})"


def _input_keys(model: ResolvedModel, adapter: Adapter) -> _InputKeys:
    keys = _InputKeys({}, {}, [], {})
    for key, info in model.reader.infos.items():
        canon = adapter.canonical_key(key)
        if canon is None:
            keys.ignored.append(key)
            continue
        if canon in keys.raw or canon in keys.heads:
            first = keys.raw.get(canon) or keys.heads[canon]
            raise MergeInputError(f"{_where(model)}: keys {first!r} and {key!r} are the same "
                                  f"{adapter.title} key; the checkpoint mixes two layouts")
        if adapter.is_head(canon):
            keys.heads[canon] = key
        else:
            keys.infos[canon], keys.raw[canon] = info, key
    return keys


def _drop_heads(inputs: list[ResolvedModel], per_input: list[_InputKeys], drop: bool, notes: list[str]) -> None:
    """Refuse task-specific heads (they differ between tasks), or with ``drop`` leave them out with a note."""
    dropped: list[str] = []
    for model, keys in zip(inputs, per_input):
        if keys.heads and not drop:
            raw = next(iter(keys.heads.values()))
            raise MergeInputError(f"{_where(model, model.reader.infos[raw].file)}: key {raw!r} belongs to a "
                                  f"task-specific head, which differs between tasks and is not merged; pass "
                                  "--drop-heads (drop_heads=True) to merge the rest and leave the heads out")
        dropped += [name for name in keys.heads if name not in dropped]
        keys.ignored += keys.heads.values()
    if dropped:
        notes.append(f"task-specific heads left out (--drop-heads): {', '.join(sorted(dropped))}")


def _optional_keys(per_input: list[_InputKeys], adapter: Adapter) -> list[str]:
    """Leave out the optional keys (an adapter's :attr:`~hf_tsv.adapters.Adapter.optional`) that some input lacks;
    return them."""
    optional = sorted({k for keys in per_input for k in keys.infos if adapter.is_optional(k)})
    missing = [k for k in optional if not all(k in keys.infos for keys in per_input)]
    for keys in per_input:
        for key in missing:
            keys.infos.pop(key, None)
            keys.raw.pop(key, None)
    return missing


def build_plan(base, models, *, fuse_qkv: bool = False, exclude: str | None = None, allow_duplicates: bool = False,
               revision: str | None = None, token=None, min_models: int = 2, architecture: str | None = None,
               drop_heads: bool = False, embeddings: str = "average") -> MergePlan:
    """Preflight: resolve every reference, read configs and headers only, and refuse anything that cannot
    be merged, naming the model, the file and the key. ``exclude`` is a regular expression already checked
    by :class:`~hf_tsv.options.MergeOptions`. A model given twice (or the base given as a fine-tune) is
    refused unless ``allow_duplicates``, which records a warning in :attr:`MergePlan.warnings` instead.
    The adapter is the one named by ``architecture``, else the one that reads every input's config
    (:func:`~hf_tsv.adapters.choose_adapter`); task-specific heads are refused unless ``drop_heads``. The keys
    the adapter calls token embeddings (:meth:`~hf_tsv.adapters.Adapter.is_embedding`) are merged as matrices with
    ``embeddings="tsv"``, averaged with ``"average"`` and kept from the base with ``"base"`` (checked by
    :class:`~hf_tsv.options.MergeOptions`).

    Example:
        >>> plan = build_plan("base", ["ft_a", "ft_b"])  # doctest: +SKIP
        >>> plan.counts()  # doctest: +SKIP
    """
    models = check_model_references(base, models, min_models, revision)
    exclude_re = re.compile(exclude) if exclude else None
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
    inputs = [resolved_base, *resolved]
    _attach_adapters(resolved_base, resolved)

    adapter = choose_adapter([(_where(m, CONFIG_NAME), m.reader.config) for m in inputs], architecture)
    base_architecture = adapter.architecture(resolved_base.reader.config)
    for r in resolved:
        fields = adapter.architecture(r.reader.config)
        for fld, value in fields.items():
            if fld in base_architecture and value != base_architecture[fld]:
                hint = (adapter.mismatch_hint(fld, value, base_architecture[fld])
                        or "only fine-tunes of the same architecture merge")
                raise MergeInputError(f"{_where(r, CONFIG_NAME)}: {fld} is {value!r} but the base has "
                                      f"{base_architecture[fld]!r}; {hint}")

    per_input = [_input_keys(m, adapter) for m in inputs]
    notes: list[str] = []
    lora_warnings = _map_adapters(resolved_base, resolved, adapter, per_input[0].raw)
    warnings = _refuse_duplicates(inputs, allow_duplicates) + lora_warnings
    _drop_heads(inputs, per_input, drop_heads, notes)
    left_out = _optional_keys(per_input, adapter)
    base_keys, model_keys = per_input[0], per_input[1:]
    base_infos, base_raw = base_keys.infos, base_keys.raw
    for key, info in base_infos.items():
        if not info.dtype.is_floating_point:
            raise MergeInputError(f"{_where(resolved_base, info.file)}: key {base_raw[key]!r} has dtype "
                                  f"{info.dtype}; only floating-point tensors can be merged")
    for r, keys in zip(resolved, model_keys):
        infos, raw = keys.infos, keys.raw
        for key, info in base_infos.items():
            if key not in infos:
                raise MergeInputError(f"{_where(r)}: key {base_raw[key]!r} of the base is missing")
            other = infos[key]
            if other.shape != info.shape:
                hint = adapter.mismatch_hint(key, list(other.shape), list(info.shape))
                raise MergeInputError(f"{_where(r, other.file)}: key {raw[key]!r} has shape {list(other.shape)} "
                                      f"but the base has {list(info.shape)}{'; ' + hint if hint else ''}")
            if not other.dtype.is_floating_point:
                raise MergeInputError(f"{_where(r, other.file)}: key {raw[key]!r} has dtype {other.dtype}; "
                                      "only floating-point tensors can be merged")
        extra = sorted(set(infos) - set(base_infos))
        if extra:
            raise MergeInputError(f"{_where(r)}: key {raw[extra[0]]!r} is not in the base "
                                  f"({len(extra)} extra keys); is this a fine-tune of that base?")

    mixed_precision, warning = _mixed_precision(base_infos, resolved, [k.infos for k in model_keys])
    if warning:
        warnings.append(warning)

    output = adapter.output_model(resolved_base.reader.config, set(base_infos))
    output_class = output.model_class
    if left_out:
        what = f"{left_out[0]} is" if len(left_out) == 1 else f"{', '.join(left_out)} are"
        notes.append(f"{what} not in every model; {'it is' if len(left_out) == 1 else 'they are'} left out and "
                     f"the output is a {output_class.__name__}{_init_note(output)}")
    layout_hint = (f"is this a {adapter.title} checkpoint? (--architecture chooses another adapter; a layout that "
                   "an older transformers saved and hf_tsv does not rename is read once you load the model with "
                   "transformers and save it again)")
    not_in_output = sorted(set(base_infos) - set(output.names))
    if not_in_output:
        raise MergeInputError(f"{_where(resolved_base)}: key {base_raw[not_in_output[0]]!r} is not part of a "
                              f"{output_class.__name__}; {layout_hint}")
    missing_out = sorted(set(output.names) - set(base_infos))
    if missing_out:
        raise MergeInputError(f"{_where(resolved_base)}: key {missing_out[0]!r} that {output_class.__name__} "
                              f"needs is missing; {layout_hint}")

    excluded = sorted(k for k in base_infos if exclude_re and exclude_re.search(k))
    from_base = {k for k in base_infos if embeddings == "base" and adapter.is_embedding(k)}
    matrix_keys = [k for k in base_infos if k not in excluded and adapter.is_matrix(k, base_infos[k].shape)
                   and (embeddings == "tsv" or not adapter.is_embedding(k))]
    groups = adapter.qkv_groups(matrix_keys) if fuse_qkv else {}
    grouped = {k for keys in groups.values() for k in keys}
    first_of_group = {keys[0]: (name, keys) for name, keys in groups.items()}
    units = []
    for key in output.names:  # the output model's order
        if key in first_of_group:
            name, keys = first_of_group[key]
            rows = sum(base_infos[k].shape[0] for k in keys)
            units.append(Unit(name, keys, True, (rows, base_infos[key].shape[1])))
        elif key not in grouped:
            units.append(Unit(key, [key], key in matrix_keys, base_infos[key].shape, key in from_base))
    embedding_keys = sorted(k for k in base_infos if adapter.is_embedding(k))
    if embedding_keys:
        notes.append(f"token embeddings {', '.join(embedding_keys)}: {EMBEDDING_RULES[embeddings]} "
                     f"(--embeddings {embeddings})")
    ignored_all = sorted({k for keys in per_input for k in keys.ignored})
    notes += _adapter_notes(resolved, units, base_raw)
    return MergePlan(resolved_base, resolved, units, [keys.raw for keys in per_input], adapter, output, base_infos,
                     excluded, ignored_all, notes, fuse_qkv, warnings, mixed_precision,
                     _side_files(resolved_base, adapter))


def is_lora(model: ResolvedModel) -> bool:
    """Whether an input is a PEFT LoRA adapter (its task matrices come as factors)."""
    return isinstance(model.reader, LoraAdapterReader)


def _attach_adapters(base: ResolvedModel, models: list[ResolvedModel]) -> None:
    """Give every LoRA adapter among ``models`` the base's config and keys; refuse an adapter as the base."""
    if is_lora(base):
        raise MergeInputError(f"the base {base.name!r} is a LoRA adapter ({base.reader.weights_file.name}); pass "
                              "the full model it was trained on as the base, and the adapters as fine-tuned models")
    for model in models:
        if is_lora(model):
            model.reader.attach_base(base.reader.config, base.reader.infos)


def _base_names(base: ResolvedModel) -> set[str]:
    """What an adapter's base_model_name_or_path may say for this base: its Hub id or its folder's name."""
    names = {base.name.lower()}
    if base.hub_id:
        names.add(base.hub_id.lower())
    if base.reader.folder is not None:
        names.add(Path(base.reader.folder).name.lower())
    return names


def _map_adapters(base: ResolvedModel, models: list[ResolvedModel], adapter: Adapter,
                  base_raw: dict[str, str]) -> list[str]:
    """Map each LoRA adapter's modules onto the base's keys (refusing a module the base lacks or a shape that
    differs); return a warning per adapter whose config names another base (its shapes fit, so it is merged)."""
    warnings = []
    for model in models:
        if not is_lora(model):
            continue
        model.reader.map_modules(adapter, base_raw)
        named = model.reader.base_model
        if named and {named.lower(), Path(named).name.lower()}.isdisjoint(_base_names(base)):
            warnings.append(f"LoRA adapter {model.name!r} (adapter_config.json) names base_model_name_or_path "
                            f"{named!r} but the base is {base.name!r}; every module's shape fits the base, so it is "
                            "merged: check that this is the base it was trained on")
    return warnings


def _adapter_notes(models: list[ResolvedModel], units: list[Unit], base_raw: dict[str, str]) -> list[str]:
    """One note per LoRA adapter that leaves some matrix keys unchanged (its task matrix is 0 there)."""
    matrix_keys = [base_raw[key] for unit in units if unit.is_matrix for key in unit.keys]
    notes = []
    for model in models:
        if not is_lora(model):
            continue
        untouched = [key for key in matrix_keys if key not in model.reader.touched_keys]
        if untouched:
            notes.append(f"LoRA adapter {model.name!r} changes {len(matrix_keys) - len(untouched)} of "
                         f"{len(matrix_keys)} matrix keys; its task matrix is 0 on the other {len(untouched)} "
                         f"(e.g. {untouched[0]!r})")
    return notes


def _side_files(base: ResolvedModel, adapter: Adapter) -> dict[str, bytes]:
    """The adapter's side files that the base's folder holds (none for an in-memory base)."""
    folder = getattr(base.reader, "folder", None)
    if not adapter.side_files or folder is None:
        return {}
    return read_side_files(folder, adapter.side_files, f"model {base.name!r}")


def _init_note(output: OutputModel) -> str:
    """What loading the output needs beyond its config, for a note: ``" (load it with add_pooling_layer=False)"``."""
    if not output.init_kwargs:
        return ""
    return f" (load it with {', '.join(f'{k}={v!r}' for k, v in output.init_kwargs.items())})"


def _content_digest(model: ResolvedModel) -> str:
    """A cheap identity of a checkpoint's content: the fingerprint of its files (sampled blocks), or for an
    in-memory model a hash of every key, dtype, shape and first values. Equal digests are confirmed by
    :func:`_same_weights` before two models are called identical."""
    if model.reader.folder is not None:
        return model.content_fingerprint()
    digest = hashlib.sha256()
    for key in sorted(model.reader.infos):
        tensor = model.reader.get(key)
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)};".encode())
        digest.update(tensor.detach().reshape(-1)[:64].cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return "sha256:" + digest.hexdigest()[:16]


def _same_weights(a: ResolvedModel, b: ResolvedModel) -> bool:
    """Whether two checkpoints hold the same tensors (keys, dtypes, shapes, values), compared key by key."""
    infos_a, infos_b = a.reader.infos, b.reader.infos
    if infos_a.keys() != infos_b.keys():
        return False
    if any((i.dtype, i.shape) != (infos_b[k].dtype, infos_b[k].shape) for k, i in infos_a.items()):
        return False
    return all(torch.equal(a.reader.get(k), b.reader.get(k)) for k in infos_a)


def _sameness(a: ResolvedModel, b: ResolvedModel, digests: dict[int, str]) -> str | None:
    """How two resolved inputs are one checkpoint (the same Hub commit, the same folder after symlinks,
    identical weights), or None when they differ."""
    if a.hub_id and a.hub_id == b.hub_id and a.revision == b.revision:
        return f"the same Hub commit {a.revision}"
    folder_a, folder_b = a.reader.folder, b.reader.folder
    if folder_a is not None and folder_b is not None and os.path.realpath(folder_a) == os.path.realpath(folder_b):
        return "the same folder"
    for model in (a, b):
        if id(model) not in digests:
            digests[id(model)] = _content_digest(model)
    if digests[id(a)] == digests[id(b)] and _same_weights(a, b):
        return "identical weights"
    return None


def _refuse_duplicates(inputs: list[ResolvedModel], allow: bool) -> list[str]:
    """Refuse a fine-tuned model given twice, or the base given as a fine-tuned model (a zero task vector),
    found by Hub commit, real folder path or content; with ``allow``, return warnings instead."""
    found = []
    digests: dict[int, str] = {}
    for j in range(1, len(inputs)):
        for i in range(j):
            how = _sameness(inputs[i], inputs[j], digests)
            if how is None:
                continue
            if i == 0:
                what = f"fine-tuned model {inputs[j].name!r} is the base itself ({how}): its task vector is zero"
            else:
                what = (f"fine-tuned models {inputs[i].name!r} and {inputs[j].name!r} are one checkpoint ({how}): "
                        "that task would count twice")
            if not allow:
                raise MergeInputError(f"{what}; give each model once, or pass --allow-duplicates "
                                      "(allow_duplicates=True) to merge it anyway")
            found.append(f"{what}; merged anyway (allow_duplicates)")
            break
    return found


def base_rounding(base_dtype: torch.dtype, model_dtype: torch.dtype) -> torch.dtype | None:
    """The dtype to round the base to before subtracting it from a fine-tune stored in ``model_dtype``: that
    dtype when it is narrower than the base's (bf16/fp16 fine-tunes of an fp32 base), else None. Otherwise the
    base's rounding error (~4e-3 relative in bf16) would enter every task vector as noise.

    Example:
        >>> base_rounding(torch.float32, torch.bfloat16)
        torch.bfloat16
        >>> base_rounding(torch.bfloat16, torch.float32) is None
        True
    """
    if model_dtype != base_dtype and model_dtype.itemsize < base_dtype.itemsize:
        return model_dtype
    return None


def _mixed_precision(base_infos: dict[str, TensorInfo], models: list[ResolvedModel],
                     per_model: list[dict[str, TensorInfo]]) -> tuple[dict, str | None]:
    """What the report records, and the warning, when some fine-tunes are stored in a narrower dtype than
    the base (else ``({}, None)``)."""
    rounded: dict[str, set[str]] = {}
    base_dtypes: set[str] = set()
    count = 0
    for model, infos in zip(models, per_model):
        for key, base_info in base_infos.items():
            dtype = base_rounding(base_info.dtype, infos[key].dtype)
            if dtype is not None:
                rounded.setdefault(model.name, set()).add(str(dtype).removeprefix("torch."))
                base_dtypes.add(str(base_info.dtype).removeprefix("torch."))
                count += 1
    if not rounded:
        return {}, None
    names = ", ".join(f"{name!r} ({'/'.join(sorted(d))})" for name, d in rounded.items())
    base = "/".join(sorted(base_dtypes))
    record = {"base_dtype": base, "models": {name: sorted(d) for name, d in rounded.items()}, "rounded_keys": count,
              "task_vectors": "each fine-tune minus the base rounded to that fine-tune's dtype"}
    return record, (f"mixed precision: the base is {base} but fine-tuned models {names} are narrower; their task "
                    "vectors were taken against the base rounded to their dtype, so the base's extra precision does "
                    "not enter them as noise")


# What the output check says to do when a merged (or stored) tensor is not finite although every input was
OUTPUT_OVERFLOW_HINT = ("the inputs' magnitudes or alpha are too large for this precision; check the inputs, or use "
                        "a smaller alpha, a wider --dtype or --svd-dtype float64")


def all_finite(tensor: torch.Tensor) -> bool:
    """Whether every element of ``tensor`` is finite. A sum decides first: one pass, no temporary (~50× faster
    than ``isfinite(...).all()`` on a 3072×768 float32 matrix here); it is finite only when every element is
    (a NaN or an inf makes it NaN or inf). Only when it is not (a NaN, an inf, or finite values whose sum
    overflows) are the elements tested one by one.

    Example:
        >>> all_finite(torch.full((4,), 3e38)), all_finite(torch.tensor([1.0, float("nan")]))
        (True, False)
    """
    if not tensor.is_floating_point():
        return True
    wide = torch.float64 if tensor.dtype == torch.float64 else torch.float32
    return math.isfinite(float(tensor.sum(dtype=wide))) or bool(torch.isfinite(tensor).all())


def check_finite(value, what: str, hint: str):
    """``value`` (a tensor or a number) unchanged when all of it is finite; else a :class:`MergeInputError`
    saying that ``what`` contains NaN or inf values, and ``hint`` (what to do)."""
    finite = math.isfinite(value) if isinstance(value, (int, float)) else all_finite(value)
    if not finite:
        raise MergeInputError(f"{what} contains NaN or inf values; {hint}")
    return value


@dataclass
class UnitTensors:
    unit: Unit
    base: torch.Tensor  # (stacked) base tensor in compute dtype on the device
    task_vectors: torch.Tensor  # (T, *shape) in compute dtype on the device
    precision: InputPrecision  # how precisely the inputs give the task vectors (storage dtype, base size)
    # per task: its task matrix as factors (a LoRA adapter) or None (a dense fine-tune); () when no task is factored.
    # Where ``iter_units`` was told not to form them, a factored task's slot of task_vectors holds zeros.
    factored: tuple[LowRankDelta | None, ...] = ()


class Timer:
    def __init__(self):
        self.totals: dict[str, float] = Counter()

    def add(self, name: str, start: float) -> float:
        now = time.perf_counter()
        self.totals[name] += now - start
        return now


def _read_input(plan: MergePlan, index: int, key: str, device: torch.device, compute_dtype: torch.dtype
                ) -> torch.Tensor:
    """Input ``index``'s (0: the base) tensor of canonical ``key`` in ``compute_dtype``, checked finite."""
    model = plan.inputs[index]
    raw = plan.raw_keys[index][key]
    tensor = model.reader.get(raw).to(device=device, dtype=compute_dtype)
    return check_finite(tensor, f"model {model.name!r} ({model.reader.infos[raw].file}): key {raw!r}",
                        "every input must be finite; repair or re-download that checkpoint")


def _rows(parts: list[torch.Tensor]) -> torch.Tensor:
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)


def _low_rank(plan: MergePlan, index: int, unit: Unit, device: torch.device, compute_dtype: torch.dtype
              ) -> LowRankDelta:
    """LoRA input ``index``'s task matrix of a matrix unit as factors (rows stacked for a fused unit; rank 0 where
    the adapter leaves a key as it is)."""
    model = plan.inputs[index]
    parts = []
    for key in unit.keys:
        delta = model.reader.low_rank(plan.raw_keys[index][key])
        shape = tuple(plan.base_infos[key].shape)
        parts.append(LowRankDelta.zeros(shape, compute_dtype, device) if delta is None
                     else delta.to(compute_dtype, device))
    return stack_rows(parts)


def iter_units(plan: MergePlan, device: torch.device, compute_dtype: torch.dtype, timer: Timer,
               units: list[Unit] | None = None, desc: str = "merging", form_factored: bool = True
               ) -> Iterator[UnitTensors]:
    """Yield each unit's base tensor and stacked task vectors, reading only that unit's keys. Every tensor
    read, the base's included, and every task vector must be finite (the error names the model, file and
    key). A fine-tune stored narrower than the base is taken against the base rounded to its dtype
    (:func:`base_rounding`). A LoRA adapter's task matrix of a matrix unit comes as factors too
    (:attr:`UnitTensors.factored`), and is formed as ΔW in ``task_vectors`` only with ``form_factored``; its
    other keys' task vectors are ΔW formed (zeros where it has no module)."""
    units = plan.units if units is None else units
    readers = plan.readers()
    for unit in progress_bar(units, desc=desc, unit="key", leave=False):
        start = time.perf_counter()
        base_parts = [_read_input(plan, 0, key, device, compute_dtype) for key in unit.keys]
        base = _rows(base_parts)
        references: dict[tuple, torch.Tensor] = {(None,) * len(unit.keys): base}
        # every task an adapter, none formed: the dense slots are never read, so they take no memory
        # (a key kept from the base, --embeddings base: no task is read)
        models = [] if unit.from_base else plan.models
        factors_only = (unit.is_matrix and not form_factored and not unit.from_base
                        and all(is_lora(m) for m in plan.models))
        task_vectors = (torch.zeros((), device=device, dtype=compute_dtype).expand(len(models), *unit.shape)
                        if factors_only else
                        torch.empty((len(models), *unit.shape), device=device, dtype=compute_dtype))
        factored: list[LowRankDelta | None] = [None] * plan.num_tasks
        for t, model in enumerate(models):
            if is_lora(model):
                factors = _low_rank(plan, t + 1, unit, device, compute_dtype) if len(unit.shape) == 2 else None
                if unit.is_matrix and not form_factored:
                    factored[t] = factors
                    if not factors_only:
                        task_vectors[t].zero_()
                elif factors is None:
                    task_vectors[t].zero_()
                else:
                    torch.matmul(factors.b * factors.scale, factors.a, out=task_vectors[t])
                    check_finite(task_vectors[t], f"the task matrix of LoRA adapter {model.name!r} at {unit.name!r}",
                                 "it overflows this precision; use --svd-dtype float64 (compute_dtype=torch.float64)")
                continue
            infos = [model.reader.infos[plan.raw_keys[t + 1][key]] for key in unit.keys]
            rounding = tuple(base_rounding(plan.base_infos[key].dtype, info.dtype)
                             for key, info in zip(unit.keys, infos))
            if rounding not in references:
                references[rounding] = _rows([part if dtype is None else part.to(dtype).to(compute_dtype)
                                              for part, dtype in zip(base_parts, rounding)])
            tuned = _rows([_read_input(plan, t + 1, key, device, compute_dtype) for key in unit.keys])
            torch.sub(tuned, references[rounding], out=task_vectors[t])
            del tuned
            check_finite(task_vectors[t], f"the task vector of model {model.name!r} at {unit.name!r} (in "
                         f"{str(compute_dtype).removeprefix('torch.')})",
                         "it overflows this precision; use --svd-dtype float64 (compute_dtype=torch.float64)")
        del references, base_parts
        stored = [reader.infos[raw[key]].dtype for reader, raw in zip(readers, plan.raw_keys) for key in unit.keys]
        coarsest = max(stored, key=lambda d: torch.finfo(d).eps)
        precision = InputPrecision(coarsest, float(base.norm()) / max(1, base.numel()) ** 0.5)
        timer.add("read_s", start)
        yield UnitTensors(unit, base, task_vectors, precision,
                          tuple(factored) if any(f is not None for f in factored) else ())


class TaskVectorScan:
    """A callable that streams ``units``' task vectors ``(T, ...)`` once per call, in the plan's order: what a
    method's model-wide pass (TIES's exact global trim) reads before the merge. Each call re-reads the inputs.

    In a sharded merge (``all_reduce`` given: it becomes an attribute the method's pass uses) an error while
    reading is kept in :attr:`error` instead of raised, and the pass goes on with what it has (at least one zero
    key per call) so that every process still makes the same collectives; the caller raises it afterwards.
    """

    def __init__(self, plan: MergePlan, device: torch.device, compute_dtype: torch.dtype, timer: Timer,
                 desc: str = "model pass", units: list[Unit] | None = None,
                 all_reduce: Callable[[torch.Tensor], None] | None = None):
        self.plan, self.device, self.compute_dtype, self.timer, self.desc = plan, device, compute_dtype, timer, desc
        self.units = units
        self.error: Exception | None = None
        if all_reduce is not None:
            self.all_reduce = all_reduce

    def __call__(self) -> Iterator[torch.Tensor]:
        holds_errors = hasattr(self, "all_reduce")
        yielded = False
        if self.error is None:
            try:
                for item in iter_units(self.plan, self.device, self.compute_dtype, self.timer, self.units,
                                       desc=self.desc):
                    yielded = True
                    yield item.task_vectors
                return
            except Exception as exc:
                if not holds_errors:
                    raise
                self.error = exc
        if not yielded:
            yield torch.zeros((self.plan.num_tasks, 1), dtype=self.compute_dtype, device=self.device)


def task_vector_scan(plan: MergePlan, device: torch.device, compute_dtype: torch.dtype, timer: Timer,
                     desc: str = "model pass", units: list[Unit] | None = None,
                     all_reduce: Callable[[torch.Tensor], None] | None = None) -> TaskVectorScan:
    """A :class:`TaskVectorScan` of ``units`` (default: every unit of the plan the method merges; the keys kept from
    the base are not merged, so not scanned)."""
    if units is None:
        units = [u for u in plan.units if not u.from_base]
    return TaskVectorScan(plan, device, compute_dtype, timer, desc, units, all_reduce)


def split_rows(unit: Unit, plan: MergePlan, tensor: torch.Tensor) -> dict[str, torch.Tensor]:
    """Undo the row stacking of a fused unit: canonical key → tensor."""
    if len(unit.keys) == 1:
        return {unit.keys[0]: tensor}
    sizes = [plan.base_infos[k].shape[0] for k in unit.keys]
    return dict(zip(unit.keys, torch.split(tensor, sizes, dim=0)))
