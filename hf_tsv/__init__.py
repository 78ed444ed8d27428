"""hf_tsv: Task Singular Vectors (TSV-C, TSV-M, STI) model merging for Hugging Face checkpoints.

Importing ``hf_tsv`` is cheap and has no side effects: the public names below are imported on first use (torch
with them), and nothing in the environment is changed. The ``hf-tsv`` command sets ``OMP_WAIT_POLICY=PASSIVE``
before torch loads; a Python program sharing busy cores can do the same before its first ``import torch``.

Example:
    >>> import hf_tsv
    >>> result = hf_tsv.merge("base", ["ft_cars", "ft_dtd", "ft_eurosat"])  # doctest: +SKIP
    >>> result.save_pretrained("merged")  # doctest: +SKIP
    >>> hf_tsv.push_to_hub("merged", "me/clip-tsv-merged")  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from typing import TYPE_CHECKING, Any

from .errors import (
    CardError,
    HFTSVError,
    MergeInputError,
    OutputExistsError,
    OutputPathError,
    OutputWriteError,
    PushError,
    ReportError,
    TokenError,
)

__version__ = "0.1.0"

# The public API that imports torch: each name and the module that defines it, imported on first use.
_LAZY_NAMES = {
    "write_card": "card",
    "compare": "compare", "iter_compare": "compare", "CompareResult": "compare_result",
    "MethodComparison": "compare_result",
    "PushResult": "hub", "push_to_hub": "hub",
    "LinearMerge": "merge", "MergeResult": "merge", "STIReport": "merge", "merge": "merge",
    "merge_linear": "merge", "plan": "merge", "sti": "merge",
    "METHODS": "methods",
    "deploy_space": "space_deploy",
    "MergeOptions": "options",
    "MergeReport": "report",
    "CompressResult": "tsvc", "compress": "tsvc", "expand": "tsvc",
}

if TYPE_CHECKING:  # what type checkers and IDEs see: the same names, imported eagerly
    from .card import write_card
    from .compare import compare, iter_compare
    from .compare_result import CompareResult, MethodComparison
    from .hub import PushResult, push_to_hub
    from .merge import LinearMerge, MergeResult, STIReport, merge, merge_linear, plan, sti
    from .methods import METHODS
    from .options import MergeOptions
    from .report import MergeReport
    from .space_deploy import deploy_space
    from .tsvc import CompressResult, compress, expand

__all__ = ["METHODS", "CardError", "CompareResult", "CompressResult", "HFTSVError", "LinearMerge", "MergeInputError",
           "MergeOptions",
           "MergeReport", "MergeResult", "OutputExistsError", "OutputPathError", "OutputWriteError", "PushError",
           "MethodComparison", "PushResult", "ReportError", "STIReport", "TokenError", "__version__", "compare",
           "compress", "deploy_space", "iter_compare",
           "expand", "merge", "merge_linear", "plan", "push_to_hub", "sti", "write_card"]


def __getattr__(name: str) -> Any:
    """A public name of :data:`_LAZY_NAMES` (imported now, then kept), or a submodule (``hf_tsv.engine``)."""
    if name in _LAZY_NAMES:
        value = getattr(importlib.import_module(f"{__name__}.{_LAZY_NAMES[name]}"), name)
        globals()[name] = value
        return value
    if not name.startswith("_") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY_NAMES))


class _Package(types.ModuleType):
    """This package's module type. Importing a submodule binds it as an attribute of its package, and the
    submodule ``hf_tsv.merge`` shares its name with the function ``hf_tsv.merge``: the function is kept."""

    def __setattr__(self, name: str, value: Any) -> None:
        if (_LAZY_NAMES.get(name) == name and isinstance(value, types.ModuleType)
                and value.__name__ == f"{__name__}.{name}"):
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
