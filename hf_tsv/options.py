"""Every option of a merge, checked once, before any model is resolved, downloaded or read.

:class:`MergeOptions` is what :func:`hf_tsv.merge`, :func:`hf_tsv.merge_linear`, :func:`hf_tsv.sti`,
:func:`hf_tsv.plan`, :func:`hf_tsv.compress`, the α search of :mod:`hf_tsv.evaluation`, the CLI and the Space
worker build from their arguments. Constructing one normalises and checks every field (types, ranges,
finiteness, device, dtypes) and raises :class:`~hf_tsv.errors.MergeInputError`, naming the option as Python
and as the command line spell it, for anything wrong. Method parameters (``ties_density``...) live in the
nested :class:`~hf_tsv.methods.MethodOptions` and are checked against their declarations, which each method
makes in its module of :mod:`hf_tsv.methods` (collected in :data:`hf_tsv.methods.PARAMETERS`).
"""

from __future__ import annotations

import math
import numbers
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from typing import Any

import torch

from .adapters.base import DEFAULT_EMBEDDINGS, EMBEDDING_MODES
from .core.svd import COMPUTE_DTYPES, SVD_MODES
from .errors import MergeInputError
from .io.writer import parse_size
from .methods import (
    DEFAULT_METHOD,
    METHODS,
    PARAMETERS,
    MergeMethod,
    MethodOptions,
    Parameter,
    get_method,
    reserve_names,
    resolve_alpha,
)

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
          "bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float64": torch.float64, "fp64": torch.float64}
DEVICE_TYPES = ("cpu", "cuda", "mps")  # devices that hold real tensors ("meta" holds none)
MAX_GRID_SIZE = 1000  # α values one search may try

# How the command line spells each option (method parameters declare their own flags)
FLAGS = {"method": "--method", "alpha": "--alpha", "alpha_grid": "--alpha-grid", "fuse_qkv": "--fuse-qkv",
         "exclude": "--exclude", "device": "--device", "dtype": "--dtype", "compute_dtype": "--svd-dtype",
         "svd": "--svd", "allow_duplicates": "--allow-duplicates", "overwrite": "--overwrite",
         "max_shard_size": "--max-shard-size", "revision": "--revision", "architecture": "--architecture",
         "drop_heads": "--drop-heads", "output_format": "--output-format",
         "embeddings": "--embeddings"}


def option_label(name: str) -> str:
    """``"alpha"`` → ``"alpha (--alpha)"``: an option as the Python API and the command line call it."""
    flag = PARAMETERS[name].flag if name in PARAMETERS else FLAGS.get(name)
    return f"{name} ({flag})" if flag else name


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _refuse(name: str, expected: str, value: Any) -> MergeInputError:
    return MergeInputError(f"{option_label(name)} must be {expected}, got {type(value).__name__} {_shown(value)}")


def finite_number(value: Any, name: str) -> float:
    """``value`` as a float, refusing non-numbers (strings and bools too), NaN and ±inf."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise _refuse(name, "a number", value)
    number = float(value)
    if not math.isfinite(number):
        raise MergeInputError(f"{option_label(name)} must be a finite number, got {number}")
    return number


def check_flag(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise _refuse(name, "True or False", value)
    return value


def as_dtype(value: str | torch.dtype | None, name: str = "dtype") -> torch.dtype | None:
    """``"bf16"``/``"bfloat16"``/``torch.bfloat16`` → ``torch.bfloat16``; None stays None.

    Example:
        >>> as_dtype("bf16")
        torch.bfloat16
    """
    if value is None:
        return None
    if isinstance(value, torch.dtype):
        if value not in DTYPES.values():
            raise MergeInputError(f"{option_label(name)}: {value} is not a floating-point dtype; choose one of "
                                  f"{', '.join(DTYPES)}")
        return value
    if not isinstance(value, str):
        raise _refuse(name, f"a dtype name ({', '.join(DTYPES)}) or a torch.dtype", value)
    try:
        return DTYPES[value.lower().removeprefix("torch.")]
    except KeyError:
        raise MergeInputError(f"{option_label(name)}: unknown dtype {_shown(value)}; choose one of "
                              f"{', '.join(DTYPES)}") from None


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``"auto"`` (or None) → CUDA when available, else CPU; otherwise ``cpu``, ``cuda``, ``cuda:N`` or ``mps``,
    refusing devices that do not exist here and ones that hold no data (``meta``).

    Example:
        >>> resolve_device("cpu")
        device(type='cpu')
    """
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not isinstance(device, (str, torch.device)):
        raise _refuse("device", "a device name such as 'auto', 'cpu' or 'cuda:0'", device)
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        dev = None
    if dev is None or dev.type not in DEVICE_TYPES:
        raise MergeInputError(f"{option_label('device')}: cannot compute on {_shown(str(device))}; use auto, cpu, "
                              "cuda, cuda:N or mps")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise MergeInputError(f"{option_label('device')}: {str(dev)!r} was asked for but torch sees no CUDA "
                                  "GPU; use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise MergeInputError(f"{option_label('device')}: {str(dev)!r} does not exist; torch sees "
                                  f"{torch.cuda.device_count()} CUDA GPU(s) (cuda:0...)")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise MergeInputError(f"{option_label('device')}: 'mps' was asked for but it is not available; "
                              "use --device cpu")
    return dev


def parse_alpha_grid(grid: str | Iterable[float]) -> tuple[float, ...]:
    """An α grid: ``"0.1,0.5,1"``, ``"0.1:3.0:0.1"`` (start:stop:step, inclusive) or a list of numbers, every
    value finite, at most :data:`MAX_GRID_SIZE` of them.

    Example:
        >>> parse_alpha_grid("0.5:1.5:0.5")
        (0.5, 1.0, 1.5)
    """
    name = "alpha_grid"
    how = "write comma-separated values (0.1,0.5,1) or start:stop:step (0.1:3.0:0.1)"
    if isinstance(grid, str):
        try:
            parts = [float(x) for x in grid.split(":" if ":" in grid else ",") if x.strip()]
        except ValueError:
            raise MergeInputError(f"{option_label(name)} {_shown(grid)}: {how}") from None
        if any(not math.isfinite(x) for x in parts):
            raise MergeInputError(f"{option_label(name)} {_shown(grid)}: every value must be a finite number")
        if ":" in grid:
            if len(parts) != 3 or parts[2] <= 0 or parts[1] < parts[0]:
                raise MergeInputError(f"{option_label(name)} {_shown(grid)}: {how}, with step > 0 and "
                                      "stop >= start")
            start, stop, step = parts
            count = int(round((stop - start) / step)) + 1
            if count > MAX_GRID_SIZE:
                raise MergeInputError(f"{option_label(name)} {_shown(grid)} has {count} values; at most "
                                      f"{MAX_GRID_SIZE} (use a larger step)")
            parts = [round(start + i * step, 10) for i in range(count)]
        values = parts
    elif isinstance(grid, Iterable) and not isinstance(grid, (bytes, dict)):
        values = [finite_number(x, name) for x in grid]
    else:
        raise _refuse(name, "a string such as '0.1:3.0:0.1' or a list of numbers", grid)
    if not values:
        raise MergeInputError(f"{option_label(name)} is empty; {how}")
    if len(values) > MAX_GRID_SIZE:
        raise MergeInputError(f"{option_label(name)} has {len(values)} values; at most {MAX_GRID_SIZE}")
    return tuple(values)


def _check_exclude(exclude: Any) -> str | None:
    if exclude is None:
        return None
    if not isinstance(exclude, str):
        raise _refuse("exclude", "a regular expression (a string) or None", exclude)
    try:
        re.compile(exclude)
    except re.error as exc:
        raise MergeInputError(f"{option_label('exclude')} {_shown(exclude)} is not a valid regular expression: "
                              f"{exc}") from None
    return exclude or None


def _check_architecture(architecture: Any) -> str | None:
    """An adapter's name (see :mod:`hf_tsv.adapters`), or None to choose it from the inputs' configs."""
    if architecture is None:
        return None
    if not isinstance(architecture, str):
        raise _refuse("architecture", "an adapter's name (a string) or None", architecture)
    from .adapters import get_adapter

    get_adapter(architecture)  # refuses an unknown name, listing the known ones
    return architecture


OUTPUT_FORMATS = ("model", "peft")


def _check_output_format(output_format: Any, method: MergeMethod) -> str:
    """``"model"`` or ``"peft"``; ``"peft"`` only with a method whose Δ factorises exactly (its
    :attr:`~hf_tsv.methods.MergeMethod.writes_adapters`)."""
    if not isinstance(output_format, str) or output_format not in OUTPUT_FORMATS:
        raise MergeInputError(f"{option_label('output_format')} must be one of {', '.join(OUTPUT_FORMATS)}, got "
                              f"{_shown(output_format)}")
    if output_format == "peft" and not method.writes_adapters:
        able = ", ".join(name for name, m in METHODS.items() if m.writes_adapters)
        raise MergeInputError(f"{option_label('output_format')} peft writes the merge as one LoRA adapter, which only "
                              f"methods whose merged delta factorises exactly can ({able}); method {method.name!r} "
                              "cannot: write the full model (--output-format model)")
    return output_format


def check_parameter(name: str, value: Any, spec: Parameter) -> Any:
    """A method parameter checked against its declaration (a number within its range, or one of its choices).

    Example:
        >>> check_parameter("ties_density", 0.5, PARAMETERS["ties_density"])
        0.5
    """
    if spec.choices is not None:
        if not isinstance(value, str) or value not in spec.choices:
            raise MergeInputError(f"{option_label(name)} must be one of {', '.join(spec.choices)}, got "
                                  f"{_shown(value)}")
        return value
    number = finite_number(value, name)
    too_low = spec.low is not None and (number <= spec.low if spec.low_open else number < spec.low)
    too_high = spec.high is not None and number > spec.high
    if too_low or too_high:
        low = "-inf" if spec.low is None else f"{spec.low:g}"
        high = "inf" if spec.high is None else f"{spec.high:g}"
        bracket = "(" if spec.low_open else "["
        raise MergeInputError(f"{option_label(name)} must be in {bracket}{low}, {high}], got {number:g}")
    return number


def _check_method_options(options: Any) -> MethodOptions:
    if not isinstance(options, MethodOptions):
        raise _refuse("method_options", "a MethodOptions", options)
    compute_dtype = as_dtype(options.compute_dtype, "compute_dtype")
    if compute_dtype not in COMPUTE_DTYPES:
        raise MergeInputError(f"{option_label('compute_dtype')} must be float32 or float64 (SVDs in half "
                              f"precision are not stable), got {str(compute_dtype).removeprefix('torch.')}")
    svd = options.svd
    if not isinstance(svd, str) or svd not in SVD_MODES:
        raise MergeInputError(f"unknown SVD mode {_shown(svd)} for {option_label('svd')}; choose one of "
                              f"{', '.join(SVD_MODES)}")
    checked = {name: check_parameter(name, getattr(options, name), spec) for name, spec in PARAMETERS.items()}
    return options.replace(compute_dtype=compute_dtype, svd=svd, **checked)


@dataclass(frozen=True)
class MergeOptions:
    """Every option of a merge, normalised and checked when constructed.

    Fields take the forms the Python API accepts (``dtype="bf16"``, ``device="cuda:0"``, ``alpha_grid=
    "0.1:3:0.1"``...) and hold normalised values afterwards (a ``torch.dtype``, a resolved ``torch.device``,
    a tuple of floats). Anything wrong raises :class:`~hf_tsv.errors.MergeInputError` naming the option.

    Example:
        >>> opts = MergeOptions.from_arguments(method="ties", alpha=0.5, ties_density=0.3, device="cpu")
        >>> opts.effective_alpha, opts.method_options.ties_density, opts.device
        (0.5, 0.3, device(type='cpu'))
        >>> MergeOptions(alpha=float("nan"))
        Traceback (most recent call last):
        ...
        hf_tsv.errors.MergeInputError: alpha (--alpha) must be a finite number, got nan
    """

    method: str = DEFAULT_METHOD
    alpha: float | None = None  # None: the method's default (or, for an α search, chosen on validation data)
    alpha_grid: tuple[float, ...] | None = None  # the α search's values (None: the method's default grid)
    fuse_qkv: bool = False
    exclude: str | None = None  # matrix keys matching this regular expression are averaged
    device: torch.device = "auto"  # resolved on construction: "auto" becomes cuda or cpu
    dtype: torch.dtype | None = None  # output dtype (None: the base's)
    method_options: MethodOptions = field(default_factory=MethodOptions)  # compute dtype, SVD mode, parameters
    allow_duplicates: bool = False  # merge a model given twice (or the base given as a fine-tune), with a warning
    architecture: str | None = None  # the adapter (hf_tsv.adapters) to read the inputs with; None: from their configs
    drop_heads: bool = False  # leave task-specific heads (classifier.*) out instead of refusing them
    output_format: str = "model"  # "model": the merged model; "peft": one LoRA adapter of it (docs/lora.md)
    embeddings: str = DEFAULT_EMBEDDINGS  # token embeddings: "tsv" (the method), "average" or "base" (kept)

    def __post_init__(self) -> None:
        def set_(name: str, value: Any) -> None:
            object.__setattr__(self, name, value)

        if not isinstance(self.method, str) or self.method not in METHODS:
            raise MergeInputError(f"unknown method {_shown(self.method)} for {option_label('method')}; choose "
                                  f"one of {', '.join(METHODS)}")
        if self.alpha is not None:
            set_("alpha", finite_number(self.alpha, "alpha"))
        if self.alpha_grid is not None:
            set_("alpha_grid", parse_alpha_grid(self.alpha_grid))
            if self.alpha is not None:
                raise MergeInputError(f"{option_label('alpha_grid')} is the grid of an α search; it cannot be "
                                      "combined with a fixed alpha (use --alpha search, or alpha=None)")
        set_("fuse_qkv", check_flag(self.fuse_qkv, "fuse_qkv"))
        set_("exclude", _check_exclude(self.exclude))
        set_("device", resolve_device(self.device))
        set_("dtype", as_dtype(self.dtype, "dtype"))
        set_("method_options", _check_method_options(self.method_options))
        set_("allow_duplicates", check_flag(self.allow_duplicates, "allow_duplicates"))
        set_("architecture", _check_architecture(self.architecture))
        set_("drop_heads", check_flag(self.drop_heads, "drop_heads"))
        set_("output_format", _check_output_format(self.output_format, self.merge_method))
        if not isinstance(self.embeddings, str) or self.embeddings not in EMBEDDING_MODES:
            raise MergeInputError(f"{option_label('embeddings')} must be one of {', '.join(EMBEDDING_MODES)}, got "
                                  f"{_shown(self.embeddings)}")

    @classmethod
    def argument_names(cls) -> tuple[str, ...]:
        """The keyword arguments :meth:`from_arguments` takes: the fields, with ``method_options`` spelt out."""
        own = [f.name for f in fields(cls) if f.name != "method_options"]
        return tuple(own + list(MethodOptions.names()))

    @classmethod
    def from_arguments(cls, **arguments: Any) -> MergeOptions:
        """Options from the flat keyword arguments of the Python API (``compute_dtype``, ``svd`` and the method
        parameters such as ``ties_density`` go into :attr:`method_options`); an unknown name is refused."""
        known = cls.argument_names()
        unknown = sorted(set(arguments) - set(known))
        if unknown:
            raise MergeInputError(f"unknown option {unknown[0]!r}; the options are {', '.join(known)}")
        nested_names = set(MethodOptions.names())
        nested = {k: v for k, v in arguments.items() if k in nested_names}
        own = {k: v for k, v in arguments.items() if k not in nested_names}
        return cls(**own, method_options=MethodOptions(**nested))

    @property
    def merge_method(self) -> MergeMethod:
        return get_method(self.method)

    @property
    def effective_alpha(self) -> float:
        """α as the merge uses it: the given one, else the method's default (1.0 for averaging, which ignores α)."""
        return resolve_alpha(self.merge_method, self.alpha, self.method_options)

    @property
    def search_grid(self) -> tuple[float, ...]:
        """The α values an α search scores: the given grid, else the method's own (for these options)."""
        return self.alpha_grid or tuple(self.merge_method.alpha_grid(self.method_options))

    @property
    def compute_dtype(self) -> torch.dtype:
        return self.method_options.compute_dtype

    @property
    def svd(self) -> str:
        return self.method_options.svd

    @property
    def merge_fuses_qkv(self) -> bool:
        """Whether a merge stacks q/k/v: asked for, and the method decomposes matrices (others act per entry)."""
        return self.fuse_qkv and self.merge_method.uses_svd

    def method_parameters(self) -> dict[str, Any]:
        """The parameters the chosen method reads, by name (what the merge report records)."""
        return {name: getattr(self.method_options, name) for name, spec in PARAMETERS.items()
                if self.method in spec.methods}


reserve_names(f.name for f in fields(MergeOptions))  # method parameters share the keyword arguments of these


def _check_reference(reference: Any, what: str) -> None:
    if isinstance(reference, torch.nn.Module):
        return
    if not isinstance(reference, (str, os.PathLike)):
        raise MergeInputError(f"{what} must be a local folder, a Hub id ('namespace/name') or a transformers model, "
                              f"got {type(reference).__name__} {_shown(reference)}")
    if not os.fspath(reference).strip():
        raise MergeInputError(f"{what} is an empty string; give a local folder or a Hub id ('namespace/name')")


def check_output_options(overwrite: Any, max_shard_size: Any) -> None:
    """The output options of :func:`hf_tsv.merge`, :func:`hf_tsv.compress` and :func:`hf_tsv.expand`:
    ``overwrite`` a bool (a string such as ``"False"`` would be true), ``max_shard_size`` a positive number of
    bytes or a size such as ``"5GB"``.

    Example:
        >>> check_output_options(False, "2GB")
    """
    check_flag(overwrite, "overwrite")
    if isinstance(max_shard_size, bool) or not isinstance(max_shard_size, (int, str)):
        raise _refuse("max_shard_size", "a number of bytes or a size such as '5GB'", max_shard_size)
    if parse_size(max_shard_size) < 1:
        raise MergeInputError(f"{option_label('max_shard_size')} must be at least 1 byte, got "
                              f"{_shown(max_shard_size)}")


def check_model_references(base: Any, models: Any, min_models: int = 2, revision: Any = None) -> list:
    """The fine-tuned models as a list, after checking that ``base`` and each model is a folder path, a Hub id or
    an in-memory model, that there are at least ``min_models`` of them, and that ``revision`` (the base's) is a
    string or None, before anything is resolved.

    Example:
        >>> check_model_references("base", "ft_a", min_models=1)
        ['ft_a']
    """
    if revision is not None and (not isinstance(revision, str) or not revision.strip()):
        raise _refuse("revision", "a branch, tag or commit (a non-empty string) or None", revision)
    _check_reference(base, "base")
    if isinstance(models, (str, os.PathLike, torch.nn.Module)):
        models = [models]
    if not isinstance(models, (list, tuple)):
        raise MergeInputError(f"models must be a list of local folders, Hub ids or transformers models, got "
                              f"{type(models).__name__} {_shown(models)}")
    for i, model in enumerate(models):
        _check_reference(model, f"models[{i}]")
    if len(models) < min_models:
        raise MergeInputError(f"got {len(models)} fine-tuned model(s); this needs at least {min_models} "
                              "besides the base")
    return list(models)
