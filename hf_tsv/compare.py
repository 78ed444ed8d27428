"""Which method? Every merge method side by side on the user's own models: :func:`compare` and, one method at a
time as each finishes, :func:`iter_compare`.

Per method: the merged delta Δ once (:func:`hf_tsv.merge_linear`, which streams the inputs and holds θ₀ and Δ),
α searched on the validation splits (or each method's default), test accuracy at that α (and, for SVD methods,
at their paper α), STI where the method defines it, statistics of α·Δ, time and peak memory. One merge is held
at a time and freed before the next. The best method is chosen on validation scores only
(:data:`hf_tsv.compare_result.BEST_CRITERION`), never on test accuracy.

Example:
    >>> import hf_tsv
    >>> result = hf_tsv.compare("base", ["ft_a", "ft_b"], evaluator="tasks.json",  # doctest: +SKIP
    ...                         methods=["tsv-m", "ta"], output_dir="comparison")
    >>> print(result.table())  # doctest: +SKIP
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from .compare_result import REFERENCE_TITLES, CompareResult, MethodComparison, Scores
from .errors import MergeInputError
from .methods import METHODS, get_method
from .options import MergeOptions, check_model_references, check_output_options, option_label

ALPHA_MODES = ("search", "default")
QUICK_GRID = "quick"  # alpha_grid="quick": each method's coarse grid (the benchmark's --quick)


# ----------------------------------------------------------------------------------------------------------------
# Options: checked once, before any model is read
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CompareOptions:
    """What :func:`iter_compare` runs: the methods (each with its checked :class:`MergeOptions`), the α mode and
    the extra rows asked for."""

    methods: tuple[str, ...]
    merge_options: dict[str, MergeOptions]
    alpha: str
    tsvc: bool
    default_alpha_rows: bool


def parse_methods(methods: str | Sequence[str] | None) -> tuple[str, ...]:
    """``"tsv-m,ta"``, a list of names or None (every method of :data:`hf_tsv.METHODS`) → the names, checked:
    each known, none twice, at least one.

    Example:
        >>> parse_methods("tsv-m, ta")
        ('tsv-m', 'ta')
    """
    if methods is None:
        return tuple(METHODS)
    names = [m.strip() for m in methods.split(",")] if isinstance(methods, str) else list(methods)
    if not names or "" in names:
        raise MergeInputError("methods (--methods) is empty or has an empty name; name at least one of "
                              + ", ".join(METHODS))
    for name in names:
        if not isinstance(name, str) or name not in METHODS:
            raise MergeInputError(f"methods (--methods): unknown method {name!r}; choose from {', '.join(METHODS)}")
    seen = set()
    for name in names:
        if name in seen:
            raise MergeInputError(f"methods (--methods) names {name!r} twice; list each method once")
        seen.add(name)
    return tuple(names)


def check_compare_options(methods, alpha: str, alpha_grid, *, searching_possible: bool, tsvc: bool = False,
                          default_alpha_rows: bool = True, batch_size: int = 256, max_examples: int | None = None,
                          keep_best: bool = False, output_dir=None, **merge_options) -> CompareOptions:
    """Every option of a comparison checked, in one place, before any work: the comparison's own here, and each
    method's merge options by :class:`MergeOptions` (``searching_possible``: an evaluator was given)."""
    names = parse_methods(methods)
    if not isinstance(alpha, str) or alpha not in ALPHA_MODES:
        raise MergeInputError(f"alpha (--alpha) must be 'search' (on the validation splits) or 'default' (each "
                              f"method's own α), got {alpha!r}")
    if alpha_grid is not None and (alpha != "search" or not searching_possible):
        raise MergeInputError(f"{option_label('alpha_grid')} only applies to an α search, which needs an evaluator "
                              "(--eval TASKS_SPEC) and --alpha search; drop it")
    for flag, value in (("tsvc (--tsvc)", tsvc), ("default_alpha_rows", default_alpha_rows),
                        ("keep_best (--keep-best)", keep_best)):
        if not isinstance(value, bool):
            raise MergeInputError(f"{flag} must be True or False, got {value!r}")
    if tsvc and not searching_possible:
        raise MergeInputError("tsvc=True scores TSV-C retention and needs an evaluator (--eval TASKS_SPEC)")
    if keep_best and (output_dir is None or not searching_possible or alpha != "search"):
        raise MergeInputError("keep_best (--keep-best) keeps the method with the best validation score: it needs "
                              "an evaluator (--eval TASKS_SPEC), --alpha search and an output folder (-o DIR)")
    _check_positive(batch_size, "batch_size (--batch-size)")
    if max_examples is not None:
        _check_positive(max_examples, "max_examples (--max-examples)")
    checked = {}
    for name in names:
        grid = get_method(name).alpha_grid(quick=True) if alpha_grid == QUICK_GRID else alpha_grid
        checked[name] = MergeOptions.from_arguments(method=name, alpha_grid=grid, **merge_options)
    return CompareOptions(names, checked, alpha if searching_possible else "default", tsvc, default_alpha_rows)


def as_evaluator(evaluator, base, *, splits: tuple[str, ...], progress: bool, batch_size: int = 256,
                 max_examples: int | None = None):
    """An :class:`~hf_tsv.evaluation.evaluator.Evaluator` from what :func:`compare` accepts: one already, a
    :class:`~hf_tsv.evaluation.TasksConfig` or the path of a task spec (→ the CLIP evaluator, its image processor
    from ``base`` unless the spec names one), or None."""
    if evaluator is None:
        return None
    from .evaluation import TasksConfig
    from .evaluation.evaluator import Evaluator, TasksEvaluator

    if isinstance(evaluator, (TasksConfig, str, os.PathLike)):
        return TasksEvaluator.from_spec(evaluator, processor_from=base, splits=splits, progress=progress,
                                        batch_size=batch_size, max_examples=max_examples)
    if not isinstance(evaluator, Evaluator):
        raise MergeInputError(f"evaluator must be an Evaluator (task_names, load_model, predictions), a TasksConfig "
                              f"or the path of a task spec, got {type(evaluator).__name__}")
    if not list(evaluator.task_names):
        raise MergeInputError("the evaluator has no tasks (task_names is empty)")
    return evaluator


# ----------------------------------------------------------------------------------------------------------------
# Measuring: peak memory of one method
# ----------------------------------------------------------------------------------------------------------------


def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


class PeakMemory:
    """Peak RSS above the RSS at entry, sampled every ``interval`` s in a thread (Linux ``/proc``; None
    elsewhere). ``with PeakMemory() as peak: ...; peak.bytes``."""

    def __init__(self, interval: float = 0.01):
        self.interval = interval
        self.bytes: int | None = None
        self._stop = threading.Event()

    def __enter__(self) -> PeakMemory:
        self._start = _rss_bytes()
        self._peak = self._start
        if self._start is not None:
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            now = _rss_bytes()
            if now is not None and now > self._peak:
                self._peak = now

    def __exit__(self, *exc) -> None:
        if self._start is None:
            return
        self._stop.set()
        self._thread.join()
        self._sample_once()
        self.bytes = max(0, self._peak - self._start)

    def _sample_once(self) -> None:
        now = _rss_bytes()
        if now is not None and now > self._peak:
            self._peak = now


# ----------------------------------------------------------------------------------------------------------------
# Scoring
# ----------------------------------------------------------------------------------------------------------------


class _Scorer:
    """Scores models on the evaluator's tasks with the references known so far (split → task → fine-tuned %)."""

    def __init__(self, evaluator):
        from .evaluation import load_metric

        self.evaluator = evaluator
        self.metric = load_metric()
        self.references: dict[str, dict[str, float]] = {}
        for split, values in (getattr(evaluator, "spec_references", None) or {}).items():
            self.references[split] = dict(values)

    def report(self, model, split: str, tasks: Sequence[str] | None = None):
        from .evaluation.evaluator import score_predictions

        return score_predictions(self.evaluator, model, split, references=self.references.get(split),
                                 metric=self.metric, tasks=tasks)

    def criterion(self, split: str) -> str:
        refs = self.references.get(split, {})
        return "normalized" if all(refs.get(t) for t in self.evaluator.task_names) else "absolute"


def _own_task_scores(scorer: _Scorer, models: dict[str, object], splits: tuple[str, ...]) -> dict:
    """Each task scored by its own model (task → model reference), each model loaded once, freed after."""
    from .evaluation import EvalReport

    tasks: dict[str, dict] = {split: {} for split in splits}
    ids = {}
    for task, reference in models.items():
        model = scorer.evaluator.load_model(reference)
        for split in splits:
            report = scorer.report(model, split, tasks=[task])
            tasks[split].update(report.tasks)
            ids.update(report.dataset_ids)
        del model
    return {split: EvalReport(split, tasks[split], ids) for split in splits}


def _merge_reports(reports: list):
    """One report of the tasks of several single-split reports (in order)."""
    from .evaluation import EvalReport

    tasks, ids = {}, {}
    for report in reports:
        tasks.update(report.tasks)
        ids.update(report.dataset_ids)
    return EvalReport(reports[0].split, tasks, ids)


def _reference_rows(scorer: _Scorer, base, paired: dict[str, object], splits: tuple[str, ...],
                    on_step) -> Iterator[MethodComparison]:
    """Fine-tuned (each task by its own model; its accuracy becomes the task's reference) and zero-shot rows."""
    if paired:
        on_step("finetuned", "evaluate")
        with PeakMemory() as peak:
            started = time.perf_counter()
            own = _own_task_scores(scorer, paired, splits)
            for split, report in own.items():
                for task, scores in report.tasks.items():
                    if scores["accuracy"] > 0:  # a 0% reference normalises nothing: that task stays absolute
                        scorer.references.setdefault(split, {})[task] = scores["accuracy"]
                    # its own reference, exactly (100·a/a is not always 100.0 in floating point)
                    scores["normalized_accuracy"] = 100.0 if scores["accuracy"] > 0 else None
            test = Scores.from_report(own["test"])
            test.normalized = 100.0
            seconds = time.perf_counter() - started
        yield MethodComparison("finetuned", REFERENCE_TITLES["finetuned"], kind="reference", test=test,
                               seconds=seconds, peak_memory_bytes=peak.bytes)
    on_step("zero-shot", "evaluate")
    with PeakMemory() as peak:
        started = time.perf_counter()
        model = scorer.evaluator.load_model(base)
        test = Scores.from_report(scorer.report(model, "test"))
        del model
        seconds = time.perf_counter() - started
    yield MethodComparison("zero-shot", REFERENCE_TITLES["zero-shot"], kind="reference", test=test, seconds=seconds,
                           peak_memory_bytes=peak.bytes)


def _sti_record(report, layout) -> dict | None:
    sti = report.sti
    if sti is None:
        return None
    table = sti.table(layout)
    return {"total": sti.total, "k": sti.k, "keys": dict(sti.keys),
            "per_layer": {row.layer: row.total for row in table.rows} | dict(table.others)}


def _method_row(name: str, base, models: list, options: MergeOptions, alpha_mode: str, scorer: _Scorer | None,
                default_alpha_rows: bool, merge_kwargs: dict, on_step, progress: bool) -> MethodComparison:
    """One method: merge (Δ once), α, test scores, STI, Δ statistics, time and memory; the merge is freed."""
    from .adapters import get_adapter
    from .core.delta_stats import delta_statistics
    from .merge import merge_linear

    method = options.merge_method
    entry = MethodComparison(name, method.label)
    with PeakMemory() as peak:
        started = time.perf_counter()
        on_step(name, "merge")
        linear = merge_linear(base, models, name, **merge_kwargs)
        alpha = options.alpha if options.alpha is not None else method.default_alpha
        if scorer is not None and alpha_mode == "search":
            from .evaluation.alpha import sweep_alpha

            on_step(name, "alpha search")
            grid = list(options.search_grid)
            search, model = sweep_alpha(linear, lambda m: scorer.report(m, "validation"), grid,
                                        scorer.criterion("validation"), progress=progress)
            alpha = search.best_alpha
            entry.alpha_grid, entry.criterion = grid, search.criterion
            entry.validation = search.score(search.best_alpha)
            entry.sweep = search.to_dict()["sweep"]
            entry.alpha_selection = "validation"
        else:
            model = linear.to_model(1.0 if alpha is None else alpha)
            entry.alpha_selection = "default"
        if scorer is not None:
            on_step(name, "test")
            linear.load_into(model, 1.0 if alpha is None else alpha)
            entry.test = Scores.from_report(scorer.report(model, "test"))
            default = method.default_alpha if method.uses_svd else None
            if default_alpha_rows and default is not None and entry.alpha_selection == "validation":
                linear.load_into(model, default)
                entry.default_alpha = default
                entry.at_default_alpha = Scores.from_report(scorer.report(model, "test"))
        entry.seconds = time.perf_counter() - started
        del model
    entry.peak_memory_bytes = peak.bytes
    entry.alpha = alpha if method.uses_alpha else None
    layout = get_adapter(linear.report.output.architecture) if linear.report.output else None
    entry.sti = _sti_record(linear.report, layout)
    entry.delta = delta_statistics(linear.delta_state, 1.0 if alpha is None else alpha)
    del linear
    return entry


def _tsvc_row(scorer: _Scorer, base, models: list, tasks: Sequence[str], merge_kwargs: dict,
              on_step) -> MethodComparison:
    """TSV-C retention: each task rebuilt from its rank-r/T factors and scored by itself (on disk, one at a time)."""
    from .tsvc import compress, expand

    on_step("tsv-c", "compress")
    compress_kwargs = {k: v for k, v in merge_kwargs.items() if k in ("device", "compute_dtype", "svd", "fuse_qkv",
                                                                     "exclude", "allow_duplicates", "token",
                                                                     "architecture", "drop_heads")}
    with PeakMemory() as peak, tempfile.TemporaryDirectory(prefix="hf-tsv-compare-tsvc-") as tmp:
        started = time.perf_counter()
        packed = compress(base, models, Path(tmp) / "tsvc", **compress_kwargs)
        on_step("tsv-c", "evaluate")
        reports = []
        for i, task in enumerate(tasks):  # one rebuilt task on disk at a time
            rebuilt = expand(Path(tmp) / "tsvc", i, Path(tmp) / f"task-{i}", base=base)
            reports.append(_own_task_scores(scorer, {task: str(rebuilt)}, ("test",))["test"])
            shutil.rmtree(rebuilt)
        test = Scores.from_report(_merge_reports(reports))
        seconds = time.perf_counter() - started
    return MethodComparison("tsv-c", REFERENCE_TITLES["tsv-c"], kind="reference", test=test, seconds=seconds,
                            peak_memory_bytes=peak.bytes,
                            extra={"stored_fraction": packed.factor_bytes / max(1, packed.task_vector_bytes)})


# ----------------------------------------------------------------------------------------------------------------
# The API
# ----------------------------------------------------------------------------------------------------------------


def iter_compare(base, models, *, methods=None, evaluator=None, alpha: str = "search", alpha_grid=None,
                 tsvc: bool = False, default_alpha_rows: bool = True, batch_size: int = 256,
                 max_examples: int | None = None, progress: bool = True,
                 on_step: Callable[[str, str], None] | None = None, revision: str | None = None, token=None,
                 **merge_options) -> Iterator[MethodComparison]:
    """Yield one :class:`MethodComparison` as each row finishes: the fine-tuned and zero-shot references (with an
    evaluator), then each method in the order given, then TSV-C retention (``tsvc=True``). Everything is checked
    before the first model is read.

    Args:
        base, models: as :func:`hf_tsv.merge` (the fine-tuned models pair with the evaluator's tasks in order).
        methods: names (a list or ``"tsv-m,ta"``; default every method of :data:`hf_tsv.METHODS`).
        evaluator: an :class:`~hf_tsv.evaluation.evaluator.Evaluator`, a ``TasksConfig`` or a task-spec path (the
            CLIP evaluator), or None: no accuracy, each method at its default α (STI and Δ statistics only).
        alpha: ``"search"`` (on the evaluator's validation splits; without an evaluator the method's default is
            used) or ``"default"``.
        alpha_grid: the grid every method searches (default: each method's own), or ``"quick"`` (each method's
            coarse grid).
        tsvc: also score TSV-C retention (each task rebuilt from its factors; needs an evaluator).
        default_alpha_rows: after a search, also score SVD methods at their paper α (``at_default_alpha``).
        on_step: called with ``(row, step)`` as each step starts (``"merge"``, ``"alpha search"``, ``"test"``...).
        batch_size, max_examples: of the evaluator made from a task spec (forward-pass batch; examples per task
            and split).
        revision, token: of the base on the Hub, and for private models (as :func:`hf_tsv.merge`).
        merge_options: :func:`hf_tsv.merge_linear`'s options (``device``, ``fuse_qkv``, ``ties_density``...).

    Raises:
        MergeInputError: a bad option, method list or model reference (before any work).
        EvalInputError: a bad task spec or dataset.
    """
    merge_options.setdefault("device", "cpu")
    models = check_model_references(base, models, revision=revision)
    options = check_compare_options(methods, alpha, alpha_grid, searching_possible=evaluator is not None,
                                    tsvc=tsvc, default_alpha_rows=default_alpha_rows, batch_size=batch_size,
                                    max_examples=max_examples, **merge_options)
    step = on_step or (lambda row, name: None)
    splits = ("validation", "test") if options.alpha == "search" else ("test",)
    evaluator = as_evaluator(evaluator, base, splits=splits, progress=progress, batch_size=batch_size,
                             max_examples=max_examples)
    scorer = _Scorer(evaluator) if evaluator is not None else None
    tasks = list(evaluator.task_names) if evaluator is not None else []
    if scorer is not None:
        paired = dict(zip(tasks, models)) if len(tasks) == len(models) else {}
        if not paired and not all(scorer.references.get(s, {}).get(t) for s in splits for t in tasks):
            import warnings

            warnings.warn(f"{len(tasks)} tasks but {len(models)} fine-tuned models: normalised accuracy pairs task i "
                          "with model i, so only absolute accuracy is reported (and α is chosen on it)", stacklevel=2)
        yield from _reference_rows(scorer, base, paired, splits, step)
    reading = {"revision": revision, "token": token} if revision or token else {}
    for name in options.methods:
        yield _method_row(name, base, models, options.merge_options[name], options.alpha, scorer,
                          options.default_alpha_rows, {**merge_options, **reading}, step, progress)
    if options.tsvc:
        yield _tsvc_row(scorer, base, models, tasks, {**merge_options, **reading}, step)


def _refuse_in_process_group() -> None:
    """A comparison does not shard (only its merges would): in a process group of several processes every process
    would write the same output folder at once. Refused before any work."""
    from .distributed import current_shards

    shards = current_shards()
    if shards is not None:
        raise MergeInputError(f"compare does not shard over processes: each of the {shards.world_size} processes of "
                              "this process group would run it whole and write output_dir at once; run it in one "
                              "process (without torchrun or a process group)")


def _check_positive(value, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise MergeInputError(f"{name} must be a positive integer, got {value!r}")


def choose_best(entries: Sequence[MethodComparison]) -> str | None:
    """The method with the highest validation score at its chosen α (ties: the first listed); None when no
    method was scored on validation data. Test accuracy never chooses."""
    scored = [e for e in entries if e.kind == "method" and e.validation is not None]
    if not scored:
        return None
    return max(scored, key=lambda e: e.validation).method  # max keeps the first of equal scores


def compare(base, models, *, methods=None, evaluator=None, alpha: str = "search", alpha_grid=None,
            output_dir: str | os.PathLike | None = None, keep_best: bool = False, overwrite: bool = False,
            tsvc: bool = False, default_alpha_rows: bool = True, batch_size: int = 256,
            max_examples: int | None = None, progress: bool = True,
            on_result: Callable[[MethodComparison], None] | None = None,
            on_step: Callable[[str, str], None] | None = None, revision: str | None = None, token=None,
            command: str | None = None, **merge_options) -> CompareResult:
    """Run :func:`iter_compare` to the end and return a :class:`~hf_tsv.compare_result.CompareResult`; with
    ``output_dir``, write ``compare.json``, ``compare.md`` and the plots there (atomically, as a merge output).

    With ``keep_best``, ``output_dir`` becomes an ordinary merge output folder (as ``hf-tsv merge -o`` writes) of
    the best method (:func:`choose_best`: by validation score) at its α, with its ``eval_*`` files and the
    comparison files beside it, ready for ``hf-tsv push``: its model card shows the comparison table. The best
    merge is computed once more at the end (one merge in memory at a time, never two).

    Raises:
        MergeInputError: as :func:`iter_compare`; ``keep_best`` without ``output_dir``, or without an evaluator
            and α search (nothing to choose the best on).
        OutputExistsError, OutputPathError: ``output_dir`` cannot be written (checked before any work).

    Example:
        >>> result = hf_tsv.compare("base", ["ft_a", "ft_b"], evaluator="tasks.json",  # doctest: +SKIP
        ...                         output_dir="cmp", keep_best=True)
        >>> result.best  # doctest: +SKIP
        'tsv-m'
    """
    from .io.writer import atomic_output_dir, check_output_dir

    started = time.perf_counter()
    check_output_options(overwrite, "5GB")
    models = check_model_references(base, models, revision=revision)
    check_compare_options(methods, alpha, alpha_grid, searching_possible=evaluator is not None, tsvc=tsvc,
                          default_alpha_rows=default_alpha_rows, batch_size=batch_size, max_examples=max_examples,
                          keep_best=keep_best, output_dir=output_dir, **{"device": "cpu", **merge_options})
    if output_dir is not None:
        _refuse_in_process_group()
        check_output_dir(output_dir, overwrite, inputs=[base, *models])
    entries = []
    for entry in iter_compare(base, models, methods=methods, evaluator=evaluator, alpha=alpha, alpha_grid=alpha_grid,
                              tsvc=tsvc, default_alpha_rows=default_alpha_rows, batch_size=batch_size,
                              max_examples=max_examples, progress=progress, on_step=on_step, revision=revision,
                              token=token, **merge_options):
        entries.append(entry)
        if on_result is not None:
            on_result(entry)
    tasks = list(next((e.test.per_task for e in entries if e.test is not None), {}))
    result = CompareResult(entries, tasks, _public_name(base), [_public_name(m) for m in models],
                           best=choose_best(entries))
    result.seconds = time.perf_counter() - started
    if output_dir is None:
        return result
    with atomic_output_dir(output_dir, overwrite, inputs=[base, *models]) as tmp:
        if keep_best and result.best is not None:
            result.kept = Path(output_dir).name
            _write_best(tmp, base, models, result, merge_options, revision, token, command)
        result.save(tmp)
    return result


def _public_name(reference) -> str:
    if isinstance(reference, torch.nn.Module):
        return type(reference).__name__
    from .secrets import public_json

    return str(public_json({"name": os.fspath(reference)})["name"])


def _write_best(folder: Path, base, models: list, result: CompareResult, merge_options: dict, revision, token,
                command) -> None:
    """The best method's merge, at its α, written into ``folder`` as ``hf-tsv merge -o`` writes it, with the
    test scores (``eval_results.json``) and the sweep that chose α."""
    from .evaluation import EvalReport
    from .evaluation.folder import write_eval_files
    from .merge import merge_linear

    best = result[result.best]
    linear = merge_linear(base, models, best.method, **dict(merge_options, revision=revision, token=token,
                                                               command=command))
    alpha = 1.0 if best.alpha is None else best.alpha
    search = {"method": best.method, "criterion": f"mean {best.criterion} validation accuracy", "best_alpha": alpha,
              "sweep": best.sweep}
    merged = linear.at(alpha, alpha_search=search)
    del linear
    merged.write_files(folder)
    test = EvalReport("test", {t: {"accuracy": v["absolute"], "normalized_accuracy": v["normalized"],
                                   "num_examples": v.get("examples")} for t, v in best.test.per_task.items()},
                      best.test.dataset_ids)
    write_eval_files(folder, test, search)
