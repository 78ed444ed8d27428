"""What a card is made from: the files of an hf-tsv output folder, checked and made public.

A folder is a merge (``merge_report.json``), a task rebuilt by ``hf-tsv expand`` (``merge_report.json`` of method
``tsv-c expand``) or TSV-C factors (``tsv_c.json``); it may hold ``config.json`` and ``eval_results.json``. Every
file is read from inside the folder, and what the card shows of it is public
(:func:`hf_tsv.secrets.public_json`: no secret, local paths reduced to their names).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import CardError, MergeInputError
from ..files import COMPARE_JSON_NAME, CONFIG_NAME, EVAL_RESULTS_NAME, REPORT_NAME, TSVC_INDEX_NAME
from ..report import MergeReport
from ..secrets import public_json

MERGE, EXPAND, TSVC = "merge", "expand", "tsv-c"  # the kinds of folder a card is written for


@dataclass
class EvalResults:
    """``eval_results.json``: per task the ``absolute`` accuracy and (optionally) the ``normalized`` one, in %,
    the dataset id of each task, and how α was chosen when it was."""

    tasks: dict[str, dict]
    dataset_ids: dict[str, str] = field(default_factory=dict)
    split: str | None = None
    alpha: float | None = None
    alpha_selection: str | None = None


@dataclass
class OutputFolder:
    """An hf-tsv output folder as the card reads it: its ``kind``, the report (a merge or an expand) or the TSV-C
    index, the model config and the evaluation results, all public."""

    path: Path
    kind: str
    report: MergeReport | None = None
    index: dict | None = None
    config: dict = field(default_factory=dict)
    evaluation: EvalResults | None = None
    comparison: dict | None = None  # compare.json (hf-tsv compare --keep-best), public


def read_json(path: Path, what: str) -> dict:
    """A JSON object file of the folder as the card may show it (:func:`hf_tsv.secrets.public_json`)."""
    from ..io.layout import find_member, model_root, read_member

    folder = path.parent
    try:
        member = find_member(folder, model_root(folder), path.name, f"folder {folder.name!r}")
        data = json.loads(read_member(member, f"folder {folder.name!r}")) if member else None
    except (MergeInputError, ValueError) as exc:
        raise CardError(f"{path.name} in {folder.name!r} could not be read as {what}: {exc}") from None
    if not isinstance(data, dict):
        raise CardError(f"{path.name} in {folder.name!r} is not a JSON object")
    return public_json(data)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def load_eval_results(folder: Path) -> EvalResults | None:
    """``eval_results.json`` checked against ``{"tasks": {task: {"absolute": %, "normalized": %}},
    "dataset_ids": {task: dataset id}}``; None when the file is absent."""
    path = folder / EVAL_RESULTS_NAME
    if not path.is_file():
        return None
    data = read_json(path, "evaluation results")
    tasks = data.get("tasks")
    if not isinstance(tasks, dict) or not tasks:
        raise CardError(f'{EVAL_RESULTS_NAME}: expected {{"tasks": {{"<task>": {{"absolute": <accuracy %>, '
                        '"normalized": <%>}}}}}} with at least one task')
    for task, scores in tasks.items():
        if not isinstance(scores, dict) or not _is_number(scores.get("absolute")):
            raise CardError(f"{EVAL_RESULTS_NAME}: task {task!r} needs a numeric 'absolute' accuracy (in %)")
        if scores.get("normalized") is not None and not _is_number(scores["normalized"]):
            raise CardError(f"{EVAL_RESULTS_NAME}: task {task!r} has a non-numeric 'normalized' accuracy")
    dataset_ids = data.get("dataset_ids") or {}
    if not isinstance(dataset_ids, dict):
        raise CardError(f"{EVAL_RESULTS_NAME}: 'dataset_ids' must map task names to dataset ids")
    return EvalResults(tasks, dataset_ids, data.get("split"), data.get("alpha"), data.get("alpha_selection"))


def read_folder(folder: Path) -> OutputFolder:
    """Read and check everything the card of ``folder`` is made from (nothing is written).

    Raises:
        CardError: not a folder, not an hf-tsv output, or a file that cannot be read (naming it).
    """
    if not folder.is_dir():
        raise CardError(f"{folder.name!r} is not a folder")
    if not (folder / TSVC_INDEX_NAME).is_file() and not (folder / REPORT_NAME).is_file():
        raise CardError(f"folder {folder.name!r} has neither {REPORT_NAME} nor {TSVC_INDEX_NAME}; "
                        "is it a folder written by `hf-tsv merge`, `compress` or `expand`?")
    config = read_json(folder / CONFIG_NAME, "a model config") if (folder / CONFIG_NAME).is_file() else {}
    if (folder / TSVC_INDEX_NAME).is_file():
        index = read_json(folder / TSVC_INDEX_NAME, "a TSV-C index")
        if not isinstance(index.get("base"), dict) or not isinstance(index.get("tasks"), list):
            raise CardError(f"{TSVC_INDEX_NAME} in {folder.name!r} has no 'base'/'tasks' entries")
        return OutputFolder(folder, TSVC, index=index, config=config)
    report = MergeReport.load(folder).public()
    if report.is_expand:
        return OutputFolder(folder, EXPAND, report=report, config=config)
    compared = folder / COMPARE_JSON_NAME
    comparison = read_json(compared, "a comparison") if compared.is_file() else None
    return OutputFolder(folder, MERGE, report=report, config=config, evaluation=load_eval_results(folder),
                        comparison=comparison)


def folder_kind(folder: str | Path) -> str:
    """``"tsv-c"`` (a ``tsv_c.json`` index), ``"expand"`` (a task rebuilt by ``hf-tsv expand``) or ``"merge"``."""
    return read_folder(Path(folder)).kind
