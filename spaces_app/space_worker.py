"""One STI analysis, merge or comparison (with its optional evaluation) of the hf-tsv Space, in a process of its own.

Started by ``space_core.WorkerPool`` as ``python space_worker.py --wait``: it imports torch and transformers,
then reads the path of its job file from stdin (``python space_worker.py JOB.json`` runs a job directly).
Progress goes to stdout, one JSON object a line: ``{"event": "bar", "id", "desc", "n", "total", "unit"}`` for
each update of a progress bar of hf_tsv or huggingface_hub (their tqdm bars are relayed), ``{"event":
"close", "id"}`` when one ends, ``{"event": "stage", "text", "fraction"}`` between steps and, in a comparison,
``{"event": "step", "row", "step"}`` as a method's step starts and ``{"event": "row", "row": {...}}`` (a
:class:`hf_tsv.compare_result.MethodComparison` as a dict) as each method finishes. Anything else
printed goes to stderr, which the server keeps in a log. The result goes to ``result.json`` beside the job
file: ``{"ok": true, ...}`` or ``{"ok": false, "error": "<message for the visitor>"}``. A worker that is
killed (e.g. out of memory) writes none. An evaluation that fails does not fail the merge: the result holds
``"evaluation": {"error": "<message for the visitor>"}`` and the folder has no ``eval_results.*`` files.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import traceback
import zipfile
from pathlib import Path

from space_core import CompareJob, MergeJob, StiJob, job_from_json, visitor_message

_LOCK = threading.Lock()
_CHANNEL = None


def emit(**event) -> None:
    if _CHANNEL is None:
        return
    line = json.dumps(event) + "\n"
    with _LOCK:
        _CHANNEL.write(line)
        _CHANNEL.flush()


class _Null:
    def write(self, text):
        return len(text)

    def flush(self):
        pass


def install_progress_relay() -> None:
    """Make every tqdm bar created from now on (hf_tsv's and huggingface_hub's) report to the channel.

    Runs before hf_tsv and huggingface_hub are imported, since they bind ``tqdm.auto.tqdm`` at import."""
    import tqdm.auto
    import tqdm.std

    class RelayTqdm(tqdm.std.tqdm):
        def __init__(self, *args, **kwargs):
            kwargs["file"] = _Null()
            kwargs.setdefault("mininterval", 0.2)
            super().__init__(*args, **kwargs)
            self._relay_last = 0.0
            self._relay_send()

        def _relay_send(self) -> None:
            if not getattr(self, "disable", False):
                self._relay_last = time.monotonic()
                emit(event="bar", id=id(self), desc=self.desc or "", n=self.n, total=self.total,
                     unit=self.unit or "it")

        def update(self, n=1):
            shown = super().update(n)
            if time.monotonic() - self._relay_last >= 0.2 or (self.total and self.n >= self.total):
                self._relay_send()
            return shown

        def close(self):
            if not getattr(self, "disable", True) and hasattr(self, "_relay_last"):
                self._relay_send()
                emit(event="close", id=id(self))
            super().close()

    tqdm.auto.tqdm = RelayTqdm
    tqdm.auto.trange = lambda *args, **kwargs: RelayTqdm(range(*args), **kwargs)


def _limit_memory(gigabytes: float | None) -> None:
    if not gigabytes:
        return
    import resource

    limit = int(gigabytes * 1e9)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _scrub(message: str, server_paths: list[str]) -> str:
    """A message for the visitor: no server path (those of the job named relative to it, any other by its last
    component) and no token."""
    return visitor_message(message, server_paths)


def _zip_folder(folder: Path, target: Path) -> None:
    """The merged folder as a zip (weights stored, small files compressed), named after the folder."""
    tmp = target.with_name(target.name + ".partial")
    with zipfile.ZipFile(tmp, "w") as archive:
        for path in sorted(folder.iterdir()):
            if path.is_file():
                method = zipfile.ZIP_STORED if path.suffix == ".safetensors" else zipfile.ZIP_DEFLATED
                archive.write(path, f"{folder.name}/{path.name}", compress_type=method)
    os.replace(tmp, target)


def run_sti(job: StiJob) -> dict:
    import hf_tsv

    emit(event="stage", text="reading the models", fraction=0.0)
    report = hf_tsv.sti(job.base, list(job.models), fuse_qkv=job.fuse_qkv, device=job.device, token=False)
    return {"keys": report.keys, "total": report.total, "num_tasks": report.num_tasks, "fuse_qkv": report.fuse_qkv,
            "k": "floor(r/T)"}


def _spec_paths(config) -> list[str]:
    """The server paths a task spec names (its datasets, heads, processor...), kept out of visitors' messages."""
    values = [config.image_processor, config.text_model, config.head_cache]
    for task in config.tasks:
        values.append(task.head)
        if isinstance(task.dataset, str):
            values.append(task.dataset.split(":", 1)[1] if task.dataset.startswith(("disk:", "imagefolder:"))
                          else task.dataset)
    return [v for v in values if v and Path(v).is_absolute()]


# what the visitor sees at each step of hf_tsv.evaluation.evaluate_folder
EVALUATION_STAGES = {"prepare": ("loading the evaluation tasks", 0.6),
                     "references": ("evaluating the fine-tuned models (references of normalised accuracy)", 0.7),
                     "evaluate": ("evaluating the merged model", 0.8)}


def evaluate_merged(out: Path, job: MergeJob) -> dict:
    """Accuracy of the merged folder ``out`` on the test split of every task of the operator's spec
    (``job.evaluate``); writes ``eval_results.json`` (which the card reads) and ``eval_results.md`` into ``out``.

    With as many tasks as fine-tuned models, task i is paired with fine-tuned model i (in the order of
    ``job.models``), whose own accuracy on it is the reference of the normalised accuracy; otherwise the
    accuracy is absolute only. The spec's ``finetuned_accuracy`` values are not used: they describe the
    operator's fine-tuned models, not the visitor's."""
    from hf_tsv.evaluation import evaluate_folder, load_tasks_spec, write_eval_files

    settings = job.evaluate
    config = load_tasks_spec(settings.tasks)
    paired = len(config.tasks) == len(job.models)

    def stage(step: str) -> None:
        text, fraction = EVALUATION_STAGES[step]
        emit(event="stage", text=text, fraction=fraction)

    # the image processor: the spec's, else the base model's (a merged folder has none)
    report = evaluate_folder(out, config, finetuned=list(job.models) if paired else None, processor_from=job.base,
                             spec_references=False, max_examples=settings.max_examples, device=job.device,
                             on_step=stage)
    write_eval_files(out, report)
    return {"table": report.table(), "results": report.to_eval_results(), "paired": paired,
            "mean_accuracy": report.mean_accuracy, "mean_normalized_accuracy": report.mean_normalized_accuracy}


def _evaluation_failed(out: Path, exc: BaseException, job: MergeJob) -> dict:
    """What the visitor is told when the evaluation fails; the merge is kept, without evaluation files."""
    from hf_tsv.errors import HFTSVError
    from hf_tsv.files import EVAL_RESULTS_NAME, EVAL_TABLE_NAME

    for name in (EVAL_RESULTS_NAME, EVAL_TABLE_NAME):
        (out / name).unlink(missing_ok=True)
    if isinstance(exc, HFTSVError):
        return {"error": _scrub(str(exc), _job_secrets(job))}
    if isinstance(exc, MemoryError):
        return {"error": "the worker ran out of memory while evaluating (HF_TSV_SPACE_WORKER_MEMORY_GB, "
                         "HF_TSV_SPACE_EVAL_MAX_EXAMPLES)"}
    traceback.print_exc()
    return {"error": f"an internal error ({type(exc).__name__}); the server log has the details"}


def run_merge(job: MergeJob) -> dict:
    """Merge, evaluate (when asked), write the card and zip the folder; the result for ``result.json`` (the
    report as :meth:`hf_tsv.report.MergeReport.to_dict`)."""
    import hf_tsv
    from hf_tsv.card import write_card

    out = Path(job.output)
    emit(event="stage", text="reading the models", fraction=0.0)
    result = hf_tsv.merge(job.base, list(job.models), method=job.method, alpha=job.alpha, fuse_qkv=job.fuse_qkv,
                          device=job.device, output_dir=out, command=job.command, token=False)
    report = result.report
    del result
    evaluation = None
    if job.evaluate is not None:
        try:
            evaluation = evaluate_merged(out, job)
        except Exception as exc:  # noqa: BLE001 - the merge is kept; the visitor is told why there is no evaluation
            evaluation = _evaluation_failed(out, exc, job)
    if job.comparison is not None:  # the comparison this merge was chosen from: its card shows the table
        copy_comparison(Path(job.comparison), out)
    emit(event="stage", text="writing the model card", fraction=0.9)
    card = write_card(out, token=False)
    emit(event="stage", text="packing the download", fraction=0.95)
    _zip_folder(out, Path(job.zip))
    return {"report": report.to_dict(), "card_warnings": list(card.warnings), "evaluation": evaluation}


def copy_comparison(source: Path, out: Path) -> list[str]:
    """Copy a comparison's files (``compare.json``, ``compare.md``, ``compare_*.png``) from ``source`` into the
    merged folder ``out``; returns their names."""
    import shutil

    from hf_tsv.compare_plots import NORMALIZED_PLOT, STI_PLOT
    from hf_tsv.files import COMPARE_JSON_NAME, COMPARE_TABLE_NAME

    copied = []
    for name in (COMPARE_JSON_NAME, COMPARE_TABLE_NAME, NORMALIZED_PLOT, STI_PLOT):
        if (source / name).is_file():
            shutil.copyfile(source / name, out / name)
            copied.append(name)
    return copied


def compare_evaluator(job: CompareJob):
    """The operator's tasks (test split, at most ``max_examples`` images each) as an evaluator of
    :func:`hf_tsv.iter_compare`, without the spec's ``finetuned_accuracy`` values: they describe the operator's
    fine-tuned models, not the visitor's (normalised accuracy pairs task i with the visitor's model i)."""
    import torch

    from hf_tsv.evaluation.evaluator import TasksEvaluator

    class VisitorTasks(TasksEvaluator):
        spec_references: dict = {}  # overrides the spec's references (see above)

    emit(event="stage", text=EVALUATION_STAGES["prepare"][0], fraction=0.0)
    device = "cuda" if job.device == "cuda" or (job.device == "auto" and torch.cuda.is_available()) else "cpu"
    return VisitorTasks.from_spec(job.evaluate.tasks, processor_from=job.base, splits=("test",),
                                  max_examples=job.evaluate.max_examples, device=device)


# what the visitor sees as each step of a comparison row starts (hf_tsv.iter_compare's on_step)
COMPARE_STEPS = {"merge": "merging", "test": "scoring on the test splits", "evaluate": "scoring",
                 "alpha search": "searching α", "compress": "compressing"}


def run_compare(job: CompareJob) -> dict:
    """Every chosen method side by side (:func:`hf_tsv.iter_compare`, each at its default α), one ``row`` event
    as each finishes; ``compare.json``, ``compare.md`` and the plots written to ``job.output``."""
    import hf_tsv
    from hf_tsv.compare_result import CompareResult

    evaluator = compare_evaluator(job) if job.evaluate is not None else None

    def step(row: str, name: str) -> None:
        emit(event="step", row=row, step=name)
        emit(event="stage", text=f"{row}: {COMPARE_STEPS.get(name, name)}", fraction=0.0)

    entries = []
    for entry in hf_tsv.iter_compare(job.base, list(job.models), methods=list(job.methods), evaluator=evaluator,
                                     alpha="default", fuse_qkv=job.fuse_qkv, device=job.device, on_step=step):
        entries.append(entry)
        emit(event="row", row=entry.to_dict())
    tasks = list(evaluator.task_names) if evaluator is not None else []
    result = CompareResult(entries, tasks, job.labels[0] if job.labels else "", list(job.labels[1:]))
    result.save(job.output)
    return {"comparison": result.to_dict()}


def _job_secrets(job: StiJob) -> list[str]:
    """The server paths a job's messages must not show: the job's own, and those of its task spec."""
    secrets = list(job.scrub)
    settings = getattr(job, "evaluate", None)
    if settings is not None:
        spec = Path(settings.tasks)
        secrets.append(str(spec.parent))
        try:
            from hf_tsv.evaluation import load_tasks_spec

            secrets += _spec_paths(load_tasks_spec(spec))
        except Exception:  # noqa: BLE001 - the spec itself failed: its folder is scrubbed above
            pass
    return secrets


def outcome_of(job: StiJob) -> dict:
    """Run ``job``; the result for ``result.json``: ``{"ok": true, ...}``, or ``{"ok": false, "error": message}``
    with a message built for the visitor (an hf_tsv error without server paths or tokens; anything else without
    details, which go to the log)."""
    from hf_tsv.errors import HFTSVError

    run = run_merge if isinstance(job, MergeJob) else run_compare if isinstance(job, CompareJob) else run_sti
    try:
        return {"ok": True, **run(job)}
    except HFTSVError as exc:
        return {"ok": False, "error": _scrub(str(exc), _job_secrets(job))}
    except MemoryError:
        return {"ok": False, "error": "the worker ran out of memory (HF_TSV_SPACE_WORKER_MEMORY_GB); try fewer "
                                      "or smaller models"}
    except Exception as exc:  # noqa: BLE001 - reported to the visitor without details, logged in full
        traceback.print_exc()
        return {"ok": False, "internal": True,
                "error": f"the job failed with an internal error ({type(exc).__name__}); the server log has "
                         "the details"}


def _warm_up() -> None:
    """Import what every job needs, while the worker waits for one (a spare worker does this ahead of time)."""
    import matplotlib.figure  # noqa: F401 - the STI heatmap of the card
    import scipy.linalg  # noqa: F401 - hf_tsv's eigendecompositions
    from transformers import CLIPVisionConfig, CLIPVisionModel  # noqa: F401 - the slowest import

    import hf_tsv  # noqa: F401 - torch, safetensors, huggingface_hub
    import hf_tsv.card  # noqa: F401
    import hf_tsv.compare  # noqa: F401 - the Compare tab

    if os.environ.get("HF_TSV_SPACE_WORKER_EVAL") == "1":  # evaluation tasks are configured (HF_TSV_SPACE_TASKS)
        import datasets  # noqa: F401
        import evaluate  # noqa: F401

        import hf_tsv.evaluation  # noqa: F401


def main(argv: list[str]) -> int:
    """``space_worker.py JOB.json`` runs that job; ``space_worker.py --wait`` warms up, then reads the job
    file's path from stdin (an empty stdin: the server went away, exit)."""
    global _CHANNEL
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as hf_tsv sets it; torch may be imported first here
    # stdout carries progress only: keep a copy of it for the channel and send fd 1 to stderr (the log)
    _CHANNEL = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    install_progress_relay()
    threads = os.environ.get("OMP_NUM_THREADS")
    if threads and threads.isdigit():
        import torch

        torch.set_num_threads(int(threads))
    _warm_up()
    if argv[1:] == ["--wait"]:
        line = sys.stdin.readline().strip()
        if not line:
            return 0
        job_file = Path(line)
    else:
        job_file = Path(argv[1])
    job = job_from_json(job_file.read_text())
    _limit_memory(job.memory_gb)
    if job.threads:
        import torch

        torch.set_num_threads(int(job.threads))
    outcome = outcome_of(job)
    tmp = job_file.with_name("result.json.partial")
    tmp.write_text(json.dumps(outcome))
    os.replace(tmp, job_file.with_name("result.json"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
