"""The benchmark's Markdown table and PNG plots, from ``results.json`` alone."""

from __future__ import annotations

from pathlib import Path

# The rows that are not merge methods; the merge methods sit between them, as hf_tsv.METHODS lists them.
REFERENCE_ROWS = {"zero-shot": "Zero-shot", "finetuned": "Fine-tuned (own task)"}
COMPRESSION_ROWS = {"tsv-c": "TSV-C (own task, rank r/T)"}


def _order() -> list[str]:
    from hf_tsv.methods import METHODS

    return [*REFERENCE_ROWS, *METHODS, *COMPRESSION_ROWS]


def _label(name: str) -> str:
    from hf_tsv.methods import METHODS

    method = METHODS.get(name)
    return method.label if method else {**REFERENCE_ROWS, **COMPRESSION_ROWS}.get(name, name)


def _methods(payload: dict) -> list[str]:
    present = payload["methods"]
    order = _order()
    return [m for m in order if m in present] + [m for m in present if m not in order]


def _fmt(value) -> str:
    return "–" if value is None else f"{value:.1f}"


def _alpha(entry: dict) -> str:
    alpha = entry.get("alpha")
    return "–" if alpha is None else f"{alpha:.3g}"


def write_table(payload: dict, path: str | Path) -> str:
    """Method × (mean absolute, mean normalised, α, per-task absolute) as Markdown."""
    tasks = payload["benchmark"]["tasks"]
    head = "| method | abs. acc. (%) | norm. acc. (%) | α | " + " | ".join(tasks) + " |"
    lines = [head, "|---|---:|---:|---:|" + "---:|" * len(tasks)]
    for name in _methods(payload):
        entry = payload["methods"][name]
        per_task = " | ".join(_fmt(entry["per_task"].get(t, {}).get("absolute")) for t in tasks)
        lines.append(f"| {_label(name)} | {_fmt(entry['absolute'])} | {_fmt(entry['normalized'])} | "
                     f"{_alpha(entry)} | {per_task} |")
        default = entry.get("at_default_alpha")
        if default:
            per_task = " | ".join(_fmt(default["per_task"].get(t, {}).get("absolute")) for t in tasks)
            lines.append(f"| {_label(name)} at α = {default['alpha']:g} | {_fmt(default['absolute'])} | "
                         f"{_fmt(default['normalized'])} | {default['alpha']:g} | {per_task} |")
    text = "\n".join(lines) + "\n"
    Path(path).write_text(text)
    return text


def write_plots(payload: dict, out: str | Path) -> list[Path]:
    """``normalized_accuracy.png`` (per method), ``per_task.png`` (absolute, per task and method) and
    ``sti_per_layer.png`` (TSV-M's interference by layer and weight type)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    written = []
    methods = _methods(payload)
    entries = payload["methods"]

    fig, ax = plt.subplots(figsize=(8, 3.6))
    values = [entries[m]["normalized"] or 0.0 for m in methods]
    bars = ax.bar([_label(m) for m in methods], values,
                  color=["#999999" if m in {**REFERENCE_ROWS, **COMPRESSION_ROWS} else "#3b75af" for m in methods])
    bars[methods.index("tsv-m")].set_color("#d1495b") if "tsv-m" in methods else None
    for bar, v in zip(bars, values):
        ax.text(bar.get_x() + bar.get_width() / 2, v + 1, f"{v:.1f}", ha="center", fontsize=8)
    ax.set_ylabel("normalised accuracy (%)")
    ax.set_ylim(0, max(110, max(values) + 10))
    ax.set_title(f"Mean normalised test accuracy over {len(payload['benchmark']['tasks'])} tasks")
    ax.tick_params(axis="x", rotation=30, labelsize=8)
    fig.tight_layout()
    written.append(out / "normalized_accuracy.png")
    fig.savefig(written[-1], dpi=120)
    plt.close(fig)

    tasks = payload["benchmark"]["tasks"]
    fig, ax = plt.subplots(figsize=(max(8, 1.2 * len(tasks)), 3.8))
    width = 0.8 / len(methods)
    for i, m in enumerate(methods):
        xs = [j + (i - len(methods) / 2 + 0.5) * width for j in range(len(tasks))]
        ax.bar(xs, [entries[m]["per_task"].get(t, {}).get("absolute") or 0.0 for t in tasks], width,
               label=_label(m))
    ax.set_xticks(range(len(tasks)), tasks, rotation=20, fontsize=8)
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(0, 105)
    ax.legend(fontsize=7, ncol=3)
    ax.set_title("Per-task test accuracy")
    fig.tight_layout()
    written.append(out / "per_task.png")
    fig.savefig(written[-1], dpi=120)
    plt.close(fig)

    sti = (payload.get("sti") or {}).get("keys")
    if sti:
        from hf_tsv.sti_table import sti_heatmap_png

        png = sti_heatmap_png(sti, title="TSV-M Singular Task Interference per layer")
        if png:
            written.append(out / "sti_per_layer.png")
            written[-1].write_bytes(png)
    return written
