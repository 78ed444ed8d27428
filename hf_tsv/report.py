"""Facts recorded next to every output: inputs, options, STI, timings and library versions."""

from __future__ import annotations

import platform
from collections import defaultdict
from importlib import metadata

import torch

from .adapters.base import NOT_IN_A_LAYER, Adapter, natural_order


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for dist in ("hf-tsv", "torch", "transformers", "safetensors", "huggingface_hub", "numpy"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = "not installed"
    return versions


def device_description(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads)"


def layer_and_type(key: str, adapter: Adapter | None = None) -> tuple[str, str]:
    """``encoder.layers.3.mlp.fc1.weight`` → ``("3", "fc1")``; keys outside layers → ``("-", name)``. The
    ``adapter`` of the checkpoints names the cells (a tower, older key names); default: the generic rules."""
    return (adapter or Adapter()).layer_and_type(key)


def sti_table(per_key: dict[str, float], adapter: Adapter | None = None
              ) -> tuple[list[str], list[tuple[str, dict[str, float], float]]]:
    """Per-layer STI: the layer types (columns) and rows ``(layer, {type: sti}, row total)``, layers in depth
    order (per tower), then the keys outside layers in a row ``"-"``."""
    adapter = adapter or Adapter()
    rows: dict[str, dict[str, float]] = defaultdict(dict)
    types: list[str] = []
    for key, value in per_key.items():
        layer, kind = adapter.layer_and_type(key)
        rows[layer][kind] = value
        if layer != NOT_IN_A_LAYER and kind not in types:
            types.append(kind)
    types.sort(key=adapter.type_order)
    ordered = sorted((k for k in rows if k != NOT_IN_A_LAYER), key=natural_order)
    ordered += [NOT_IN_A_LAYER] if NOT_IN_A_LAYER in rows else []
    return types, [(layer, rows[layer], sum(rows[layer].values())) for layer in ordered]


def format_sti_table(per_key: dict[str, float], total: float, adapter: Adapter | None = None) -> str:
    """A plain-text per-layer table for the terminal."""
    types, rows = sti_table(per_key, adapter)
    width = max([10] + [len(t) for t in types])
    lines = ["  ".join(f"{h:>{width}}" for h in ["layer"] + types + ["layer total"])]
    for layer, values, row_total in rows:
        if layer != "-":
            cells = [layer] + [f"{values[t]:.4g}" if t in values else "-" for t in types] + [f"{row_total:.4g}"]
            lines.append("  ".join(f"{c:>{width}}" for c in cells))
    for layer, values, _ in rows:
        if layer == "-":
            lines.extend(f"{kind}: {value:.4g}" for kind, value in values.items())
    lines.append(f"total STI (all matrix keys): {total:.6g}")
    return "\n".join(lines)
