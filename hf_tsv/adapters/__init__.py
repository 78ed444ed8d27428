"""The adapter registry: every checkpoint family hf_tsv merges, one file each in this folder.

A module here that defines a subclass of :class:`~hf_tsv.adapters.base.Adapter` with a non-empty ``name`` adds
that family: :data:`ADAPTERS` finds it the first time it is asked (importing each module of this package), so
adding an architecture is adding one file. The engine asks :func:`choose_adapter` which adapter reads its inputs;
cards and STI tables ask :func:`adapter_for_output` which one wrote an output folder, or :func:`get_adapter` by
the name a report records.

Example:
    >>> from hf_tsv.adapters import ADAPTERS
    >>> "clip-vision" in ADAPTERS.names()
    True
    >>> ADAPTERS.get("clip-vision").accepts({"model_type": "clip_vision_model"})
    True
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from collections.abc import Sequence

from ..errors import MergeInputError
from .base import Adapter, OutputModel

__all__ = ["ADAPTERS", "Adapter", "AdapterRegistry", "OutputModel", "adapter_for_output", "adapter_names",
           "choose_adapter", "get_adapter"]

BASE_MODULE = "base"


class AdapterRegistry:
    """The adapters defined in the modules of this package, found on first use."""

    def __init__(self) -> None:
        self._adapters: dict[str, Adapter] | None = None

    def _load(self) -> dict[str, Adapter]:
        if self._adapters is None:
            found: dict[str, Adapter] = {}
            for module_info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
                if module_info.name == BASE_MODULE or module_info.name.startswith("_"):
                    continue
                module = importlib.import_module(f"{__name__}.{module_info.name}")
                for _, cls in inspect.getmembers(module, inspect.isclass):
                    if issubclass(cls, Adapter) and cls.__module__ == module.__name__ and cls.name:
                        if cls.name in found:
                            raise RuntimeError(f"two adapters are named {cls.name!r}: {type(found[cls.name])} and "
                                               f"{cls} (hf_tsv/adapters/{module_info.name}.py)")
                        found[cls.name] = cls()
            self._adapters = found
        return self._adapters

    def names(self) -> list[str]:
        """Every registered adapter's name, sorted."""
        return sorted(self._load())

    def get(self, name: str) -> Adapter:
        """The adapter called ``name``; :class:`MergeInputError` listing the names when there is none."""
        adapters = self._load()
        if name not in adapters:
            raise MergeInputError(f"unknown architecture {name!r} for architecture (--architecture); choose one of "
                                  f"{', '.join(self.names())}")
        return adapters[name]

    def by_priority(self) -> list[Adapter]:
        """Every adapter, the highest :attr:`~Adapter.priority` first (then by name)."""
        return sorted(self._load().values(), key=lambda a: (-a.priority, a.name))


ADAPTERS = AdapterRegistry()


def adapter_names() -> list[str]:
    """The names ``--architecture`` accepts (every registered adapter's)."""
    return ADAPTERS.names()


def get_adapter(name: str) -> Adapter:
    """The adapter called ``name`` (:class:`MergeInputError`, listing the names, when there is none)."""
    return ADAPTERS.get(name)


def _config_description(config: dict, adapter: Adapter | None = None) -> str:
    """What ``config.json`` says, for a refusal: its ``model_type``, and its ``architectures`` too when the model type
    is one that ``adapter`` reads (so those are what it refuses)."""
    model_type, architectures = config.get("model_type"), config.get("architectures")
    shown = f" and architectures {architectures!r}" if adapter and model_type in adapter.model_types else ""
    return f"config.json has model_type {model_type!r}{shown}"


def choose_adapter(configs: Sequence[tuple[str, dict]], name: str | None = None) -> Adapter:
    """The adapter that reads every input: ``configs`` are ``(who, config.json)`` for the base first, then each
    fine-tune, ``who`` naming the model and file in messages. With ``name`` (``--architecture``) that adapter, else
    the highest-priority adapter that reads them all (a full CLIPModel merge when every input is a CLIPModel, the
    vision tower when some input is a vision model alone).

    Raises:
        MergeInputError: no adapter reads the base, or the one that reads the base does not read a fine-tune;
            the message names that model's config.json and what the adapter reads.
    """
    base_who, base_config = configs[0]
    if name is not None:
        candidates = [ADAPTERS.get(name)]
        chosen_by = f"--architecture {name}"
    else:
        candidates = [a for a in ADAPTERS.by_priority() if a.accepts(base_config)]
        chosen_by = "chosen by the base's config"
        if not candidates:
            known = sorted({t for a in ADAPTERS.by_priority() for t in a.model_types})
            raise MergeInputError(f"{base_who}: {_config_description(base_config)}, which hf_tsv does not merge; "
                                  f"it reads model_type {', '.join(known)} (one adapter each in hf_tsv/adapters/)")
    for adapter in candidates:
        if all(adapter.accepts(config) for _, config in configs):
            return adapter
    adapter = candidates[-1]  # the most permissive of those that read the base
    who, config = next((w, c) for w, c in configs if not adapter.accepts(c))
    raise MergeInputError(f"{who}: {_config_description(config, adapter)}; hf_tsv's {adapter.title} adapter "
                          f"({chosen_by}) "
                          f"reads {adapter.reads()}; only fine-tunes of the same architecture merge")


def adapter_for_output(config: dict) -> Adapter:
    """The adapter whose output class a saved ``config.json`` names (its ``architectures``), else the first that
    reads its ``model_type``, else the generic :class:`Adapter` (for cards and STI tables of any folder).

    Example:
        >>> adapter_for_output({"model_type": "clip", "architectures": ["CLIPModel"]}).name
        'clip'
        >>> adapter_for_output({}).name
        ''
    """
    declared = config.get("architectures") or []
    adapters = ADAPTERS.by_priority()
    for adapter in adapters:
        if any(a in adapter.output_classes for a in declared):
            return adapter
    return next((a for a in adapters if a.accepts(config)), Adapter())
