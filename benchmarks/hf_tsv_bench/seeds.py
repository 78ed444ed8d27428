"""A benchmark suite over several seeds: ``hf-tsv bench build|run --seeds 0,1,2``.

Each seed is a whole build of its own (other splits, pretraining and fine-tunes) in its own cache folder:
seed 0 in the cache itself (``--cache DIR``, else :func:`~hf_tsv_bench.build.default_cache_dir`), seed s > 0 in
the sibling folder ``<cache>-seed<s>`` (``~/.cache/hf_tsv/bench-seed1``, ``DIR-seed2``...). ``bench run
--seeds`` runs each seed into ``<out>/seed<s>/`` (the single-seed ``results.json`` format, unchanged) and
writes the aggregate into ``<out>``: ``results.json`` (every seed's payload kept whole under ``"seeds"``, the
mean ± sample standard deviation (n − 1) per method under ``"methods"``), ``results.md`` and
``normalized_accuracy.png`` (mean bars, ± std error bars, one point per seed).

The loop knows nothing of images: a suite is a :class:`SeedSuite` of callables (build one seed into a cache,
run one seed into a folder, read which seed a cache holds), so another suite plugs in the same way.

Example:
    >>> parse_seeds("0,1,2")
    (0, 1, 2)
    >>> seed_cache_dir("/c/bench", 2).as_posix()
    '/c/bench-seed2'
"""

from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from hf_tsv.io.output import write_file_atomic, write_json

from .build import BUILD_INFO, BenchError, default_cache_dir

SEED_SUFFIX = "-seed"
STD_NOTE = "sample standard deviation (n - 1) over seeds"


def parse_seeds(text: str) -> tuple[int, ...]:
    """``"0,1,2"`` → ``(0, 1, 2)``: distinct integers ≥ 0, in the order given; anything else is a BenchError.

    Example:
        >>> parse_seeds(" 2, 0 ")
        (2, 0)
    """
    parts = [p.strip() for p in str(text).split(",")]
    if not any(parts):
        raise BenchError("--seeds is empty: give a comma-separated list of seeds, e.g. --seeds 0,1,2")
    seeds = []
    for part in parts:
        if not part.isdigit():  # also refuses "", "-1", "1.5" and "x"
            raise BenchError(f"--seeds: {part!r} is not a seed; give integers >= 0 separated by commas, "
                             "e.g. --seeds 0,1,2")
        seeds.append(int(part))
    repeated = sorted({s for s in seeds if seeds.count(s) > 1})
    if repeated:
        raise BenchError(f"--seeds: seed {repeated[0]} is given twice; each seed is one build, list it once")
    return tuple(seeds)


def seed_cache_dir(cache: str | os.PathLike | None, seed: int) -> Path:
    """The cache folder of one seed: seed 0 → ``cache`` (default :func:`default_cache_dir`), seed s > 0 → the
    sibling ``<cache>-seed<s>``.

    Example:
        >>> seed_cache_dir("/c/bench", 0).as_posix(), seed_cache_dir("/c/bench", 1).as_posix()
        ('/c/bench', '/c/bench-seed1')
    """
    base = Path(cache).expanduser() if cache is not None else default_cache_dir()
    if seed == 0:
        return base
    base = base.absolute()
    if not base.name:
        raise BenchError(f"--cache {base} has no folder name to put '{SEED_SUFFIX}{seed}' after; give a folder")
    return base.with_name(f"{base.name}{SEED_SUFFIX}{seed}")


def mean_std(values: Sequence[float | None]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (n − 1) of ``values``; the std is None for fewer than 2 values, and
    both are None when a value is missing (a score that a seed could not compute).

    Example:
        >>> mean_std([1.0, 2.0, 3.0])
        (2.0, 1.0)
    """
    if not values or any(v is None for v in values):
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def _same_or_none(values: Iterable):
    distinct = set(values)
    return distinct.pop() if len(distinct) == 1 else None


def aggregate_entry(by_seed: Mapping[int, dict]) -> dict:
    """One method's entries (``{"absolute", "normalized", "per_task", "alpha"}``, one per seed) → the same keys
    as seed means, plus ``absolute_std``/``normalized_std`` (per task too), ``per_seed`` (each seed's absolute,
    normalised and α), ``alpha`` (the α when every seed chose the same one, else None) and ``at_default_alpha``
    aggregated alike when every seed has it."""
    entries = list(by_seed.values())
    out: dict = {}
    for key in ("absolute", "normalized"):
        out[key], out[f"{key}_std"] = mean_std([e.get(key) for e in entries])
    tasks = [t for t in entries[0].get("per_task", {}) if all(t in e.get("per_task", {}) for e in entries)]
    out["per_task"] = {}
    for task in tasks:
        scores = {}
        for key in ("absolute", "normalized"):
            scores[key], scores[f"{key}_std"] = mean_std([e["per_task"][task].get(key) for e in entries])
        out["per_task"][task] = scores
    out["alpha"] = _same_or_none(e.get("alpha") for e in entries)
    out["per_seed"] = {str(s): {"absolute": e.get("absolute"), "normalized": e.get("normalized"),
                                "alpha": e.get("alpha")} for s, e in by_seed.items()}
    defaults = {s: e["at_default_alpha"] for s, e in by_seed.items() if e.get("at_default_alpha")}
    if defaults and len(defaults) == len(by_seed):
        out["at_default_alpha"] = aggregate_entry(defaults)
    return out


def aggregate(payloads: Mapping[int, dict]) -> dict:
    """Single-seed ``results.json`` payloads, by seed → the aggregate payload: ``benchmark`` (seeds, the tasks
    every seed has), ``methods`` (:func:`aggregate_entry` of each method every seed scored, in the first seed's
    order) and ``seeds`` (every payload, whole)."""
    if not payloads:
        raise BenchError("no seed to aggregate")
    first = next(iter(payloads.values()))
    methods = [m for m in first["methods"] if all(m in p["methods"] for p in payloads.values())]
    tasks = [t for t in first["benchmark"].get("tasks", []) if all(t in p["benchmark"].get("tasks", [])
                                                                    for p in payloads.values())]
    benchmark = {k: v for k, v in first["benchmark"].items() if k != "build"}
    benchmark.update(seeds=list(payloads), tasks=tasks, std=STD_NOTE)
    return {"benchmark": benchmark,
            "methods": {m: aggregate_entry({s: p["methods"][m] for s, p in payloads.items()}) for m in methods},
            "seeds": {str(s): p for s, p in payloads.items()}}


def run_seeds(run_one: Callable[[int], dict], seeds: Sequence[int], out: str | os.PathLike | None = None,
              log: Callable[[str], object] = print) -> dict:
    """Call ``run_one(seed)`` (a single-seed results payload) for every seed, aggregate (:func:`aggregate`) and,
    given ``out``, write ``results.json``, ``results.md`` and ``normalized_accuracy.png`` there.

    Example:
        >>> fake = lambda s: {"benchmark": {"tasks": ["t"]}, "methods": {"m": {"absolute": 50.0 + s,
        ...     "normalized": 60.0 + 2 * s, "per_task": {"t": {"absolute": 50.0 + s}}, "alpha": 1.0}}}
        >>> run_seeds(fake, [0, 1, 2], log=lambda _: None)["methods"]["m"]["normalized_std"]
        2.0
    """
    payloads: dict[int, dict] = {}
    timings: dict[str, float] = {}
    started, cpu_started = time.perf_counter(), time.process_time()
    for seed in seeds:
        t0, c0 = time.perf_counter(), time.process_time()
        payloads[seed] = run_one(seed)
        timings[f"seed{seed}_s"] = round(time.perf_counter() - t0, 2)
        timings[f"seed{seed}_cpu_s"] = round(time.process_time() - c0, 2)
        log(f"seed {seed}: done in {timings[f'seed{seed}_s']:.0f} s")
    result = aggregate(payloads)
    result["timings"] = {**timings, "total_s": round(time.perf_counter() - started, 2),
                         "total_cpu_s": round(time.process_time() - cpu_started, 2)}
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "results.json", result)
        write_file_atomic(out / "results.md", seeds_table(result))
        write_seeds_plot(result, out / "normalized_accuracy.png")
    return result


def _pm(mean: float | None, std: float | None) -> str:
    if mean is None:
        return "–"
    return f"{mean:.1f}" if std is None else f"{mean:.1f} ± {std:.1f}"


def _seed_cell(values: dict) -> str:
    def one(v):
        return "–" if v is None else f"{v:.1f}"

    alpha = values.get("alpha")
    return f"{one(values['normalized'])} / {one(values['absolute'])}" + ("" if alpha is None else f" (α {alpha:.3g})")


def seeds_table(result: dict) -> str:
    """Markdown: method | norm. mean ± std | abs. mean ± std | per seed "norm. / abs. (α)" (α = 1 rows too),
    then the mean ± std absolute accuracy per task and method.

    Example:
        >>> entry = {"absolute": 50.0, "normalized": 60.0, "per_task": {}, "alpha": None}
        >>> res = aggregate({0: {"benchmark": {}, "methods": {"avg": entry}},
        ...                  1: {"benchmark": {}, "methods": {"avg": {**entry, "normalized": 62.0}}}})
        >>> seeds_table(res).splitlines()[2]
        '| Weight averaging | 61.0 ± 1.4 | 50.0 ± 0.0 | 60.0 / 50.0 | 62.0 / 50.0 |'
    """
    from .plots import _label, _methods

    seeds = [str(s) for s in result["benchmark"]["seeds"]]
    lines = ["| method | norm. acc. (%) mean ± std | abs. acc. (%) mean ± std | "
             + " | ".join(f"seed {s}: norm. / abs. (α)" for s in seeds) + " |",
             "|---|---:|---:|" + "---:|" * len(seeds)]
    for name in _methods(result):
        rows = [(_label(name), result["methods"][name])]
        default = result["methods"][name].get("at_default_alpha")
        if default:
            rows.append((f"{_label(name)} at α = {default['alpha']:g}", {**default, "per_seed": {
                s: {**v, "alpha": None} for s, v in default["per_seed"].items()}}))
        for label, entry in rows:
            cells = " | ".join(_seed_cell(entry["per_seed"][s]) for s in seeds)
            lines.append(f"| {label} | {_pm(entry['normalized'], entry['normalized_std'])} | "
                         f"{_pm(entry['absolute'], entry['absolute_std'])} | {cells} |")
    tasks = result["benchmark"].get("tasks", [])
    lines.append("")
    lines.append(f"Test split, mean over {len(tasks)} tasks; ± is the {STD_NOTE} {', '.join(seeds)}; α chosen "
                 "per seed on validation.")
    if tasks:
        lines += ["", "Absolute test accuracy (%) per task, mean ± std over the seeds:", "",
                  "| method | " + " | ".join(tasks) + " |", "|---|" + "---:|" * len(tasks)]
        for name in _methods(result):
            per_task = result["methods"][name]["per_task"]
            lines.append(f"| {_label(name)} | " + " | ".join(
                _pm(per_task[t]["absolute"], per_task[t]["absolute_std"]) if t in per_task else "–" for t in tasks)
                + " |")
    return "\n".join(lines) + "\n"


def write_seeds_plot(result: dict, path: str | os.PathLike) -> Path:
    """Mean normalised accuracy per method as bars, ± sample std as error bars, each seed as a point."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .plots import COMPRESSION_ROWS, REFERENCE_ROWS, _label, _methods

    methods = _methods(result)
    entries = result["methods"]
    seeds = [str(s) for s in result["benchmark"]["seeds"]]
    fig, ax = plt.subplots(figsize=(8, 3.8))
    xs = range(len(methods))
    means = [entries[m]["normalized"] or 0.0 for m in methods]
    stds = [entries[m]["normalized_std"] or 0.0 for m in methods]
    grey = {**REFERENCE_ROWS, **COMPRESSION_ROWS}
    colors = ["#d1495b" if m == "tsv-m" else "#999999" if m in grey else "#3b75af" for m in methods]
    ax.bar(xs, means, yerr=stds, capsize=4, color=colors, alpha=0.85, error_kw={"elinewidth": 1.2})
    for i, m in enumerate(methods):
        points = [entries[m]["per_seed"][s]["normalized"] for s in seeds]
        offsets = [(j - (len(seeds) - 1) / 2) * 0.12 for j in range(len(seeds))]
        ax.scatter([i + o for o in offsets], [p or 0.0 for p in points], s=12, color="black", zorder=3)
        ax.text(i, means[i] + stds[i] + 2.5, f"{means[i]:.1f}", ha="center", fontsize=8)
    ax.set_xticks(list(xs), [_label(m) for m in methods], rotation=30, fontsize=8, ha="right")
    ax.set_ylabel("normalised accuracy (%)")
    ax.set_ylim(0, max(110, max(m + s for m, s in zip(means, stds)) + 10))
    ax.set_title(f"Mean normalised test accuracy, seeds {', '.join(seeds)} (bars: mean ± sample std; "
                 "dots: seeds)", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


@dataclass(frozen=True)
class SeedSuite:
    """A benchmark suite as the seed loop sees it: ``build_one(seed, cache)`` builds (or reuses) one seed's
    build in ``cache``; ``run_one(seed, cache, out)`` runs it and returns its single-seed results payload;
    ``built_seed(cache)`` is the seed of the build in ``cache`` (None: nothing built); ``default_out(cache)``
    is where the aggregate goes without ``--out`` (given seed 0's cache); ``build_command`` is what to run to
    build it (for messages)."""

    build_one: Callable[[int, Path], object]
    run_one: Callable[[int, Path, Path], dict]
    built_seed: Callable[[Path], int | None]
    default_out: Callable[[Path], Path]
    build_command: str


def build_seeds(suite: SeedSuite, seeds: Sequence[int], cache: str | os.PathLike | None = None) -> list[Path]:
    """Build every seed into its own cache folder (:func:`seed_cache_dir`); a seed already built is reused."""
    folders = [seed_cache_dir(cache, seed) for seed in seeds]  # every folder name checked before any build
    return [suite.build_one(seed, folder) for seed, folder in zip(seeds, folders)]


def check_built(suite: SeedSuite, seeds: Sequence[int], cache: str | os.PathLike | None = None) -> dict[int, Path]:
    """Every seed's cache folder, after checking (before any run) that each holds a build of that seed."""
    folders = {seed: seed_cache_dir(cache, seed) for seed in seeds}
    listed = ",".join(map(str, seeds))
    for seed, folder in folders.items():
        found = suite.built_seed(folder)
        if found is None:
            raise BenchError(f"no benchmark of seed {seed} is built in {folder}; run `{suite.build_command} "
                             f"--seeds {listed}` (with the same --cache) first")
        if found != seed:
            raise BenchError(f"{folder} holds a build of seed {found}, not of seed {seed} (seed s > 0 is read "
                             f"from <cache>{SEED_SUFFIX}<s>); run `{suite.build_command} --seeds {listed}`, or "
                             "move that build")
    return folders


def run_suite(suite: SeedSuite, seeds: Sequence[int], cache: str | os.PathLike | None = None,
              out: str | os.PathLike | None = None, log: Callable[[str], object] = print) -> tuple[dict, Path]:
    """Run every seed of a built suite into ``<out>/seed<s>`` and write the aggregate into ``out`` (default
    ``suite.default_out(<seed 0's cache>)``); returns the aggregate and ``out``."""
    folders = check_built(suite, seeds, cache)
    out = Path(out) if out is not None else suite.default_out(seed_cache_dir(cache, 0))
    result = run_seeds(lambda seed: suite.run_one(seed, folders[seed], out / f"seed{seed}"), seeds, out, log)
    return result, out


def _named_suite(name: str, quick: bool, force: bool) -> SeedSuite:
    """A suite of :mod:`hf_tsv_bench.suites` (its build, run and build folder) as the seed loop sees it."""
    from . import suites

    def built_seed(cache: Path) -> int | None:
        info = suites.suite_build_dir(name, cache, quick) / BUILD_INFO
        return json.loads(info.read_text())["settings"]["seed"] if info.is_file() else None

    return SeedSuite(
        build_one=lambda seed, cache: suites.build_suite(name, cache, quick=quick, seed=seed, force=force),
        run_one=lambda seed, cache, out: suites.run_suite(name, cache, quick=quick, out_dir=out),
        built_seed=built_seed,
        default_out=lambda cache: suites.suite_build_dir(name, cache, quick) / "results-seeds",
        build_command="hf-tsv bench build" + ("" if name == suites.DEFAULT_SUITE else f" --suite {name}")
        + (" --quick" if quick else ""))


def image_suite(quick: bool = False, force: bool = False) -> SeedSuite:
    """The image benchmark (:func:`~hf_tsv_bench.build_benchmark`, :func:`~hf_tsv_bench.run_benchmark`)."""
    return _named_suite("image", quick, force)


def text_suite(quick: bool = False, force: bool = False) -> SeedSuite:
    """The text benchmark (:func:`~hf_tsv_bench.text_suite.build_text_benchmark`, its run); its default cache is
    :func:`~hf_tsv_bench.text_suite.default_text_cache_dir` (see :func:`suite_for_seeds`)."""
    return _named_suite("text", quick, force)


def suite_for_seeds(name: str, cache: str | os.PathLike | None, *, quick: bool = False,
                    force: bool = False) -> tuple[SeedSuite, Path]:
    """The suite ``name`` (``image`` or ``text``) for the seed loop, and seed 0's cache folder (``cache``, else
    that suite's default cache).

    Example:
        >>> suite, cache = suite_for_seeds("text", "/c/bench-text")
        >>> suite.build_command, cache.as_posix()
        ('hf-tsv bench build --suite text', '/c/bench-text')
    """
    from .suites import _check

    if _check(name) == "text":
        from .text_suite import default_text_cache_dir

        return text_suite(quick, force), Path(cache) if cache is not None else default_text_cache_dir()
    return image_suite(quick, force), Path(cache) if cache is not None else default_cache_dir()
