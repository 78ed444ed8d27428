"""The merge methods: one module per method in this package, and the registry they fill.

Each module defines ``METHOD = MergeMethod(...)`` (:class:`~hf_tsv.methods.base.MergeMethod`) with everything
known about its method: name, titles, paper, model-card text and Hub tags, α default and α search grid
(:class:`AlphaRule`, per options), its parameters (:class:`Parameter`: range or choices; their command-line
flags follow from their names) and its binding to the pure :mod:`hf_tsv.core` function that defines it.
Importing this package imports every module in it (except ``base`` and names starting with ``_``) and
registers its ``METHOD``; the CLI (``--method`` choices, parameter flags, help), :class:`hf_tsv.MergeOptions`,
the model card, the α search, the Space and the benchmark all read :data:`METHODS` and :data:`PARAMETERS`.

**Adding a method is adding one file** here, e.g. ``hf_tsv/methods/my_method.py``::

    from .base import AlphaRule, MergeMethod, Parameter, TSV_GRID

    def _delta(task_vectors, opts, key):          # (T, ...) task vectors → (Δ, STI or None)
        from .. import core
        return opts.my_scale * core.weight_average(task_vectors), None

    METHOD = MergeMethod(
        name="my-method", title="my method", card_description="θ = θ_0 + α · my_scale · mean_t τ_t.",
        alpha=AlphaRule(1.0, TSV_GRID), parameters=(Parameter("my_scale", 1.0, "the scale", low=0.0),),
        delta=_delta)

Then ``hf-tsv merge … --method my-method --my-scale 2`` and ``hf_tsv.merge(…, method="my-method",
my_scale=2)`` work. A method defined outside this package is added with :func:`register` (or
:func:`register_module` for a module that defines ``METHOD``), e.g. by a plugin at import time.
"""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType

from .base import (
    DEFAULT_METHOD,
    METHODS,
    PARAMETERS,
    TASK_ARITHMETIC_GRID,
    TSV_GRID,
    AlphaRule,
    KeyContext,
    MergeMethod,
    MethodOptions,
    Parameter,
    Scan,
    describe_alpha,
    describe_grid,
    get_method,
    register,
    reserve_names,
    resolve_alpha,
    unregister,
)

INFRASTRUCTURE = ("base",)  # modules of this package that define no method


def register_module(module: ModuleType) -> MergeMethod:
    """Register the ``METHOD`` a module defines (what this package does for each of its modules)."""
    method = getattr(module, "METHOD", None)
    if not isinstance(method, MergeMethod):
        raise TypeError(f"module {module.__name__} defines no METHOD = MergeMethod(...)")
    return register(method)


def method_modules() -> list[str]:
    """The names of this package's method modules: every module but :data:`INFRASTRUCTURE` and ``_private``."""
    return [m.name for m in pkgutil.iter_modules(__path__)
            if m.name not in INFRASTRUCTURE and not m.name.startswith("_")]


for _name in method_modules():
    register_module(importlib.import_module(f"{__name__}.{_name}"))

__all__ = ["DEFAULT_METHOD", "METHODS", "PARAMETERS", "TASK_ARITHMETIC_GRID", "TSV_GRID", "AlphaRule", "KeyContext",
           "MergeMethod", "MethodOptions", "Parameter", "Scan", "describe_alpha", "describe_grid", "get_method",
           "method_modules", "register", "register_module", "reserve_names", "resolve_alpha", "unregister"]
