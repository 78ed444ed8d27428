"""The Compare tab's view of a running comparison, without any Gradio: it follows the worker's events (a method's
step starting, a method's row finished) and renders what the visitor sees after each: progress per method, the
one comparison table of hf_tsv (:func:`hf_tsv.compare_result.compare_table`) and the plots.

Example:
    >>> view = CompareView(["tsv-m", "ta"])
    >>> view.follow({"event": "step", "row": "tsv-m", "step": "merge"})
    False
    >>> print(view.progress_markdown())  # doctest: +NORMALIZE_WHITESPACE
    - ⏳ **TSV-M (Task Singular Vectors)**: merge
    - · **Task arithmetic**: waiting
"""

from __future__ import annotations

import html
from pathlib import Path


def method_label(name: str) -> str:
    """A method as the menus name it (:data:`hf_tsv.METHODS`): "TSV-M (Task Singular Vectors)"; a reference row
    (zero-shot, fine-tuned) by its title of :data:`hf_tsv.compare_result.REFERENCE_TITLES`."""
    from hf_tsv.compare_result import REFERENCE_TITLES
    from hf_tsv.methods import METHODS

    method = METHODS.get(name)
    if method is None:
        return REFERENCE_TITLES.get(name, name)
    return f"{method.label} ({method.expansion})" if method.expansion else method.label


class CompareView:
    """What the Compare tab shows of one comparison of ``methods`` (with ``references``: the reference rows an
    evaluation adds first, e.g. ``["finetuned", "zero-shot"]``)."""

    def __init__(self, methods: list[str], references: list[str] | tuple[str, ...] = ()):
        self.order = [*references, *methods]
        self.methods = list(methods)
        self.rows: dict[str, dict] = {}  # name -> MethodComparison.to_dict(), as each finishes
        self.steps: dict[str, str] = {}  # name -> the step it is running

    def follow(self, event: dict) -> bool:
        """Take one worker event; True when a row finished (the table and plots change)."""
        kind = event.get("event")
        if kind == "step" and event.get("row") in self.order:
            self.steps[event["row"]] = str(event.get("step") or "")
        elif kind == "row" and isinstance(event.get("row"), dict) and event["row"].get("method") in self.order:
            self.rows[event["row"]["method"]] = event["row"]
            return True
        return False

    @property
    def finished(self) -> list[str]:
        """The methods (not the reference rows) that have a row, in the visitor's order."""
        return [name for name in self.methods if name in self.rows]

    def progress_markdown(self) -> str:
        """One line per row: done (with its time), running (its step) or waiting."""
        lines = []
        for name in self.order:
            title = html.escape(method_label(name))
            row = self.rows.get(name)
            if row is not None:
                seconds = row.get("seconds")
                lines.append(f"- ✅ **{title}**: done" + (f" in {seconds:.1f} s" if seconds is not None else ""))
            elif name in self.steps:
                lines.append(f"- ⏳ **{title}**: {html.escape(self.steps[name])}")
            else:
                lines.append(f"- · **{title}**: waiting")
        return "\n".join(lines)

    def data(self) -> dict:
        """The rows finished so far as :meth:`hf_tsv.compare_result.CompareResult.to_dict` lays them out."""
        entries = [self.rows[name] for name in self.order if name in self.rows]
        tasks = next((list(e["test"]["per_task"]) for e in entries if e.get("test")), [])
        return {"tasks": tasks, "best": None, "entries": entries}

    def table_markdown(self) -> str:
        """The comparison table of hf_tsv (one row per finished row), or a placeholder."""
        from hf_tsv.compare_result import compare_table

        data = self.data()
        if not data["entries"]:
            return "*The table fills in as each method finishes.*"
        return compare_table(data, note=False)

    def write_plots(self, folder: str | Path) -> tuple[str | None, str | None]:
        """The plots of the rows so far, written into ``folder`` (a new one per update: a browser keeps an image
        by its name); returns (accuracy plot, STI per layer plot), each None when there is none yet."""
        from hf_tsv.compare_plots import NORMALIZED_PLOT, STI_PLOT, write_compare_plots
        from hf_tsv.compare_result import CompareResult

        data = self.data()
        if not data["entries"]:
            return None, None
        result = CompareResult.from_dict({"schema": _schema(), **data})
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        written = {path.name: str(path) for path in write_compare_plots(result, folder)}
        return written.get(NORMALIZED_PLOT), written.get(STI_PLOT)


def _schema() -> str:
    from hf_tsv.compare_result import SCHEMA

    return SCHEMA
