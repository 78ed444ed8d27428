"""Singular Task Interference per layer: the one table (and heatmap) that the terminal, the model card, the Space
and the benchmark show.

:func:`sti_table` arranges per-key STI values into layers (rows, in depth order) and layer types (columns);
:class:`STITable` formats every number once (:func:`format_sti`) and lays the same cells out as plain text, as
Markdown or as rows for a data frame.

Example:
    >>> table = sti_table({"encoder.layers.0.mlp.fc1.weight": 0.25, "encoder.layers.0.mlp.fc2.weight": 0.5,
    ...                    "embeddings.position_embedding.weight": 0.125})
    >>> table.headers
    ['layer', 'fc1', 'fc2', 'layer total']
    >>> table.records()
    [['0', '0.25', '0.5', '0.75'], ['embeddings.position_embedding', '', '', '0.125']]
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Protocol

from .adapters.base import NOT_IN_A_LAYER, Adapter, natural_order

MISSING = "–"  # a layer type that a layer has no value for
OUTSIDE = NOT_IN_A_LAYER  # the "layer" of keys outside the numbered layers


class KeyLayout(Protocol):
    """How a checkpoint's keys fall into layers and layer types: what an architecture's adapter
    (:class:`hf_tsv.adapters.Adapter`) knows."""

    def layer_and_type(self, key: str) -> tuple[str, str]:
        """A key → (its layer, or :data:`OUTSIDE`; its layer type, or its name outside the layers)."""

    def type_order(self, kind: str) -> object:
        """The sort key of a layer type (the columns' order)."""


def layer_and_type(key: str, layout: KeyLayout | None = None) -> tuple[str, str]:
    """``encoder.layers.3.mlp.fc1.weight`` → ``("3", "fc1")``; keys outside layers → ``("-", name)``, as
    ``layout`` (default: the generic adapter's rules) names them.

    Example:
        >>> layer_and_type("encoder.layers.3.mlp.fc1.weight"), layer_and_type("visual_projection.weight")
        (('3', 'fc1'), ('-', 'visual_projection'))
    """
    return (layout or Adapter()).layer_and_type(key)


def format_sti(value: float | None) -> str:
    """An STI value as every table shows it: 4 significant digits (``–`` for none)."""
    return MISSING if value is None else f"{value:.4g}"


@dataclass(frozen=True)
class STIRow:
    """One layer: its STI per layer type and their sum."""

    layer: str
    values: dict[str, float]
    total: float


@dataclass(frozen=True)
class STITable:
    """STI per layer (``rows``, in depth order) and layer type (``types``, in the order of a transformer block),
    the keys outside the layers (``others``, by name) and the ``total`` over every key."""

    types: list[str]
    rows: list[STIRow]
    others: dict[str, float] = field(default_factory=dict)
    total: float = 0.0

    @property
    def headers(self) -> list[str]:
        """The column titles: ``layer``, the layer types, ``layer total``."""
        return ["layer", *self.types, "layer total"]

    def layer_cells(self) -> list[list[str]]:
        """Every layer row as formatted cells, under :attr:`headers`."""
        return [[row.layer, *(format_sti(row.values.get(t)) for t in self.types), format_sti(row.total)]
                for row in self.rows]

    def type_totals(self) -> list[str]:
        """The sum over the layers of each layer type, formatted."""
        return [format_sti(sum(row.values.get(t, 0.0) for row in self.rows)) for t in self.types]

    def other_cells(self) -> list[tuple[str, str]]:
        """The keys outside the layers as ``(name, formatted STI)``."""
        return [(name, format_sti(value)) for name, value in self.others.items()]

    def records(self) -> list[list[str]]:
        """Rows for a data frame under :attr:`headers`: the layers, then each key outside them with its value in
        the last column."""
        blank = [""] * len(self.types)
        return self.layer_cells() + [[name, *blank, value] for name, value in self.other_cells()]

    def text(self) -> str:
        """A plain-text table for the terminal, with the keys outside layers and the total below it."""
        width = max([10] + [len(t) for t in self.types])
        lines = ["  ".join(f"{cell:>{width}}" for cell in row) for row in [self.headers, *self.layer_cells()]]
        lines += [f"{name}: {value}" for name, value in self.other_cells()]
        lines.append(f"total STI (all matrix keys): {self.total:.6g}")
        return "\n".join(lines)

    def markdown(self) -> str:
        """A Markdown table with a row of per-type totals, then a list of the keys outside layers."""
        def line(cells: list[str]) -> str:
            return "| " + " | ".join(cells) + " |"

        lines = [line(self.headers), "|" + "---|" * len(self.headers)]
        lines += [line(cells) for cells in self.layer_cells()]
        lines.append(line(["**all layers**", *self.type_totals()]) + " |")
        others = [f"- `{name}`: {value}" for name, value in self.other_cells()]
        return "\n".join(lines + ([""] + others if others else []))


def sti_table(per_key: dict[str, float], total: float | None = None, layout: KeyLayout | None = None) -> STITable:
    """Arrange per-key STI into a :class:`STITable`. ``total`` defaults to the sum of ``per_key``; ``layout``
    (the checkpoints' adapter) names each key's layer and layer type and orders the types (default:
    the generic :class:`hf_tsv.adapters.Adapter`); layers are in depth order."""
    layout = layout or Adapter()
    rows: dict[str, dict[str, float]] = {}
    others: dict[str, float] = {}
    types: list[str] = []
    for key, value in per_key.items():
        layer, kind = layout.layer_and_type(key)
        if layer == OUTSIDE:
            others[kind] = value
            continue
        rows.setdefault(layer, {})[kind] = value
        if kind not in types:
            types.append(kind)
    types.sort(key=layout.type_order)
    ordered = sorted(rows, key=natural_order)
    return STITable(types, [STIRow(layer, rows[layer], sum(rows[layer].values())) for layer in ordered], others,
                    sum(per_key.values()) if total is None else total)


def sti_heatmap_png(per_key: dict[str, float], title: str = "Singular Task Interference",
                    layout: KeyLayout | None = None) -> bytes | None:
    """A PNG heatmap of STI with layers (depth) as rows and layer types as columns; None without layer keys."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    table = sti_table(per_key, layout=layout)
    types, layers = table.types, table.rows
    if not layers or not types:
        return None
    grid = np.full((len(layers), len(types)), np.nan)
    for i, row in enumerate(layers):
        for j, kind in enumerate(types):
            if kind in row.values:
                grid[i, j] = row.values[kind]
    fig = Figure(figsize=(1.2 * len(types) + 2.8, 0.38 * len(layers) + 1.9), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    image = ax.imshow(grid, aspect="auto", cmap="viridis", interpolation="nearest")
    ax.set_xticks(range(len(types)), labels=types)
    ax.set_yticks(range(len(layers)), labels=[row.layer for row in layers])
    ax.set_xlabel("layer type")
    ax.set_ylabel("layer (depth)")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, label="STI")
    if grid.size <= 300:
        for (i, j), value in np.ndenumerate(grid):
            if not np.isnan(value):
                color = "white" if image.norm(value) < 0.55 else "black"
                ax.text(j, i, f"{value:.3g}", ha="center", va="center", fontsize=7, color=color)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()
