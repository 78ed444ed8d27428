"""The comparison's PNG plots, from a :class:`~hf_tsv.compare_result.CompareResult` alone: normalised test accuracy
per method and task, and STI per layer (TSV-M)."""

from __future__ import annotations

from pathlib import Path

NORMALIZED_PLOT = "compare_normalized.png"
STI_PLOT = "compare_sti_per_layer.png"


def write_compare_plots(result, folder: str | Path) -> list[Path]:
    """Write :data:`NORMALIZED_PLOT` (grouped bars: one group per task plus the mean, one bar per row with test
    scores; absolute accuracy where no reference exists) and :data:`STI_PLOT` (when a row has STI) into
    ``folder``; returns the paths written (none when matplotlib is missing)."""
    try:
        import matplotlib
    except ImportError:
        return []
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .io.output import write_file_atomic

    folder = Path(folder)
    written: list[Path] = []
    rows = [e for e in result.entries if e.test is not None]
    if rows and result.tasks:
        normalized = all(e.test.normalized is not None for e in rows)
        key = "normalized" if normalized else "absolute"
        groups = [*result.tasks, "mean"]
        fig, ax = plt.subplots(figsize=(max(8, 1.1 * len(groups)), 3.8))
        width = 0.8 / len(rows)
        for i, entry in enumerate(rows):
            values = [(entry.test.per_task.get(t) or {}).get(key) or 0.0 for t in result.tasks]
            values.append((entry.test.normalized if normalized else entry.test.absolute) or 0.0)
            xs = [j + (i - len(rows) / 2 + 0.5) * width for j in range(len(groups))]
            ax.bar(xs, values, width, label=entry.title + (" (best)" if entry.method == result.best else ""))
        ax.set_xticks(range(len(groups)), groups, rotation=20, fontsize=8)
        ax.set_ylabel(f"{key} test accuracy (%)")
        ax.set_ylim(0, 110)
        ax.legend(fontsize=7, ncol=3)
        ax.set_title(f"{key.capitalize()} test accuracy per task and method")
        fig.tight_layout()
        import io

        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=120)
        plt.close(fig)
        written.append(write_file_atomic(folder / NORMALIZED_PLOT, buffer.getvalue()))
    sti = next((e.sti for e in result.entries if e.sti), None)
    if sti:
        from .sti_table import sti_heatmap_png

        png = sti_heatmap_png(sti["keys"], title="Singular Task Interference per layer")
        if png:
            written.append(write_file_atomic(folder / STI_PLOT, png))
    return written
