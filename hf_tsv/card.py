"""Model cards for hf-tsv outputs: a ``README.md`` rendered from ``templates/model_card.md.j2`` through
huggingface_hub's :class:`~huggingface_hub.ModelCard`, plus the STI heatmap and ``sti_stats.json``.

Everything on the card comes from the files in the output folder (``merge_report.json``, ``tsv_c.json``,
``config.json`` and an optional ``eval_results.json``) and, for the license, from the parents' own cards.
Local inputs are named by their folder name only: no local path ever reaches the card.

Example:
    >>> from hf_tsv.card import write_card
    >>> result = write_card("merged", repo_id="me/clip-tsv-merged")  # doctest: +SKIP
    >>> result.warnings, result.files  # doctest: +SKIP
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from .adapters import Adapter, adapter_for_output
from .errors import CardError
from .files import CARD_NAME, HEATMAP_NAME, REPORT_NAME, STI_STATS_NAME, TSVC_INDEX_NAME
from .files import EVAL_RESULTS_NAME as EVAL_NAME
from .io.output import write_file_atomic
from .json_io import dumps_json
from .report import sti_table
from .secrets import normalize_token, path_name, public_json, redact
from .secrets import public_command as public_command  # re-exported: it was defined here before hf_tsv.secrets

logger = logging.getLogger(__name__)

TEMPLATE_PATH = Path(__file__).resolve().parent / "templates" / "model_card.md.j2"
COMMON_TAGS = ["hf-tsv", "task-singular-vectors"]  # then the architecture's own (its adapter's tags)


def _tsv_paper() -> dict:
    """The Task Singular Vectors paper (TSV-M's, and TSV-C's), as the card cites it."""
    from .methods import get_method

    tsv = get_method("tsv-m")
    return {"url": tsv.paper_url, "title": tsv.paper_title, "citation": tsv.citation}


def _method_context(name: str, report: dict) -> dict:
    """What the card says about the method that made a merge: from its registry entry
    (:mod:`hf_tsv.methods`), or, for a method this version does not know, from the report alone."""
    from .methods import METHODS

    method = METHODS.get(name)
    if method is None:
        return {"method_title": name, "method_label": name, "method_description": report.get("method_description")
                or name, "method_rule": "", "method_paper": None, "uses_alpha": True, "method_tags": [name]}
    paper = {"url": method.paper_url, "title": method.paper_title} if method.paper_url else None
    return {"method_title": method.title, "method_label": method.label, "method_description": method.description,
            "method_rule": method.card_description, "method_paper": paper, "uses_alpha": method.uses_alpha,
            "method_tags": list(method.tags)}


@dataclass
class CardResult:
    """A written card: the :class:`~huggingface_hub.ModelCard`, the files written beside it and any warnings
    (e.g. parents that declare different licenses)."""

    folder: Path
    card: object  # huggingface_hub.ModelCard
    kind: str  # "merge", "tsv-c" or "expand"
    warnings: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        return str(self.card)


@dataclass
class _Parent:
    role: str
    provenance: dict
    license: str | None = None
    license_name: str | None = None
    license_link: str | None = None
    license_note: str = ""

    @property
    def hub_id(self) -> str | None:
        return self.provenance.get("repo_id") if self.provenance.get("source") == "hub" else None

    @property
    def name(self) -> str:
        return self.hub_id or path_name(str(self.provenance.get("name") or "model"))

    @property
    def license_key(self) -> str | None:
        if not self.license:
            return None
        return f"other ({self.license_name})" if self.license == "other" and self.license_name else self.license


# ----------------------------------------------------------------------------------------------------------------
# Reading the folder
# ----------------------------------------------------------------------------------------------------------------


def _read_json(path: Path, what: str) -> dict:
    """A JSON file of the folder as the card may show it (:func:`hf_tsv.secrets.public_json`: no secret, local
    paths reduced to names)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CardError(f"{path.name} in {path.parent.name!r} could not be read as {what}: {exc}") from None
    if not isinstance(data, dict):
        raise CardError(f"{path.name} in {path.parent.name!r} is not a JSON object")
    return public_json(data)


def folder_kind(folder: Path) -> str:
    """``"tsv-c"`` (a ``tsv_c.json`` index), ``"expand"`` (a task rebuilt by ``hf-tsv expand``) or ``"merge"``."""
    if (folder / TSVC_INDEX_NAME).is_file():
        return "tsv-c"
    if (folder / REPORT_NAME).is_file():
        report = _read_json(folder / REPORT_NAME, "a merge report")
        return "expand" if report.get("method") == "tsv-c expand" else "merge"
    raise CardError(f"folder {folder.name!r} has neither {REPORT_NAME} nor {TSVC_INDEX_NAME}; "
                    "is it a folder written by `hf-tsv merge`, `compress` or `expand`?")


def load_eval_results(folder: Path) -> dict | None:
    """``eval_results.json`` checked against ``{"tasks": {task: {"absolute": %, "normalized": %}},
    "dataset_ids": {task: dataset id}}``; None when the file is absent."""
    path = folder / EVAL_NAME
    if not path.is_file():
        return None
    data = _read_json(path, "evaluation results")
    tasks = data.get("tasks")
    if not isinstance(tasks, dict) or not tasks:
        raise CardError(f'{EVAL_NAME}: expected {{"tasks": {{"<task>": {{"absolute": <accuracy %>, '
                        '"normalized": <%>}}}}}} with at least one task')
    for task, scores in tasks.items():
        if not isinstance(scores, dict) or not _is_number(scores.get("absolute")):
            raise CardError(f"{EVAL_NAME}: task {task!r} needs a numeric 'absolute' accuracy (in %)")
        if scores.get("normalized") is not None and not _is_number(scores["normalized"]):
            raise CardError(f"{EVAL_NAME}: task {task!r} has a non-numeric 'normalized' accuracy")
    dataset_ids = data.get("dataset_ids") or {}
    if not isinstance(dataset_ids, dict):
        raise CardError(f"{EVAL_NAME}: 'dataset_ids' must map task names to dataset ids")
    notes = {k: data[k] for k in ("split", "alpha", "alpha_selection") if data.get(k) is not None}
    return {"tasks": tasks, "dataset_ids": dataset_ids, **notes}


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# ----------------------------------------------------------------------------------------------------------------
# Public names (never a local path)
# ----------------------------------------------------------------------------------------------------------------


def _python_call(report: dict, parents: list[_Parent]) -> str:
    def ref(p: _Parent) -> str:
        rev = p.provenance.get("revision")
        return f"{p.hub_id}@{rev}" if p.hub_id and rev else p.name

    models = ", ".join(json.dumps(ref(p)) for p in parents[1:])
    args = [json.dumps(ref(parents[0])), f"[{models}]", f"method={json.dumps(report.get('method'))}"]
    if _method_context(str(report.get("method")), report)["uses_alpha"]:
        args.append(f"alpha={report.get('alpha')}")
    options = report.get("options", {})
    if options.get("fuse_qkv"):
        args.append("fuse_qkv=True")
    if options.get("svd") not in (None, "exact"):
        args.append(f"svd={json.dumps(options['svd'])}")
    if options.get("compute_dtype") not in (None, "float32"):
        args.append(f"compute_dtype={json.dumps(options['compute_dtype'])}")
    return "import hf_tsv\n\nresult = hf_tsv.merge(" + ", ".join(args) + ")"


def _md(text: str) -> str:
    """Text safe inside a markdown table cell."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def _endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT.rstrip("/")


def _parent_row(parent: _Parent, endpoint: str) -> dict:
    prov = parent.provenance
    if parent.hub_id:
        rev = prov.get("revision")
        model = f"[{parent.hub_id}]({endpoint}/{parent.hub_id})"
        revision = f"[`{rev[:12]}`]({endpoint}/{parent.hub_id}/tree/{rev})" if rev else "–"
    elif prov.get("source") == "local":
        model = f"`{_md(parent.name)}` (local folder)"
        revision = f"fingerprint `{prov['fingerprint']}`" if prov.get("fingerprint") else "–"
    else:
        model = f"`{_md(parent.name)}` (model passed in memory)"
        revision = "–"
    return {"role": parent.role, "model": model, "revision": revision, "license": _md(parent.license_key or "–")}


# ----------------------------------------------------------------------------------------------------------------
# Licenses
# ----------------------------------------------------------------------------------------------------------------


def _read_hub_license(parent: _Parent, token) -> None:
    from huggingface_hub import ModelCard, hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError, RemoteEntryNotFoundError

    try:
        path = hf_hub_download(parent.hub_id, CARD_NAME, revision=parent.provenance.get("revision"), token=token)
    except RemoteEntryNotFoundError:
        parent.license_note = "its repository has no README.md"
        return
    except LocalEntryNotFoundError:
        parent.license_note = "its README.md is not in the local cache (offline)"
        return
    except Exception as exc:  # noqa: BLE001 - any failure only means the license stays unknown
        parent.license_note = f"its README.md could not be downloaded ({type(exc).__name__})"
        return
    try:
        data = ModelCard.load(path, ignore_metadata_errors=True).data
    except Exception as exc:  # noqa: BLE001
        parent.license_note = f"its README.md could not be parsed ({type(exc).__name__})"
        return
    parent.license = data.get("license") or None
    if isinstance(parent.license, list):  # a few cards list several
        parent.license = ", ".join(map(str, parent.license))
    parent.license_name = data.get("license_name")
    parent.license_link = data.get("license_link")
    parent.license_note = "from its model card" if parent.license else "its model card declares no license"


def _resolve_licenses(parents: list[_Parent], token, override: str | None) -> tuple[dict, list[str], str]:
    """Card metadata for the license, warnings, and a sentence for the card's License section."""
    for parent in parents:
        if parent.hub_id:
            _read_hub_license(parent, token)
        elif parent.provenance.get("source") == "local":
            parent.license_note = "a local folder: its license is not recorded"
        else:
            parent.license_note = "a model passed in memory: its license is not recorded"
    declared = {p.license_key for p in parents if p.license_key}
    undeclared = [p for p in parents if not p.license_key]
    warnings: list[str] = []
    if len(declared) > 1:
        listing = "; ".join(f"{p.name}: {p.license_key or 'not declared'}" for p in parents)
        warnings.append(f"the parent models declare different licenses ({listing}); check that their terms allow "
                        "this merge and set the license of the result yourself (--license)")
    elif declared and undeclared:
        warnings.append(f"the license {next(iter(declared))!r} is inherited from the parents that declare one; "
                        f"no license could be read for {', '.join(p.name for p in undeclared)}")
    if override:
        meta = {"license": override}
        sentence = f"The publisher set the license to `{override}`."
    elif len(declared) == 1:
        source = next(p for p in parents if p.license_key)
        meta = {"license": source.license, "license_name": source.license_name, "license_link": source.license_link}
        sentence = f"`{source.license_key}`, inherited from the parent models."
    elif declared:
        meta = {"license": "other", "license_name": "mixed-parent-licenses"}
        sentence = "The parent models declare different licenses (listed above); no single license is inherited."
    else:
        meta = {}
        sentence = ("None of the parent models' licenses could be read, so none is declared here; "
                    "this repository inherits the terms of its parents (pass `--license` to declare one).")
    return {k: v for k, v in meta.items() if v}, warnings, sentence


# ----------------------------------------------------------------------------------------------------------------
# STI table and heatmap
# ----------------------------------------------------------------------------------------------------------------


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.4g}"


def sti_markdown_rows(per_key: dict[str, float], adapter: Adapter | None = None) -> dict:
    """The per-layer STI as table pieces: layer types, rows, per-type totals and the keys outside layers (cells
    named by the checkpoints' ``adapter``; default: the generic rules)."""
    types, rows = sti_table(per_key, adapter)
    layer_rows = [{"layer": layer, "cells": [_fmt(values.get(t)) for t in types], "total": _fmt(total)}
                  for layer, values, total in rows if layer != "-"]
    type_totals = [_fmt(sum(values.get(t, 0.0) for layer, values, _ in rows if layer != "-")) for t in types]
    others = [{"name": kind, "value": _fmt(value)} for layer, values, _ in rows if layer == "-"
              for kind, value in values.items()]
    return {"types": types, "rows": layer_rows, "type_totals": type_totals, "others": others}


def sti_heatmap_png(per_key: dict[str, float], title: str = "Singular Task Interference",
                    adapter: Adapter | None = None) -> bytes | None:
    """A PNG heatmap of STI with layers (depth) as rows and layer types as columns; None without layer keys."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    types, rows = sti_table(per_key, adapter)
    layers = [(layer, values) for layer, values, _ in rows if layer != "-"]
    if not layers or not types:
        return None
    grid = np.full((len(layers), len(types)), np.nan)
    for i, (_, values) in enumerate(layers):
        for j, kind in enumerate(types):
            if kind in values:
                grid[i, j] = values[kind]
    fig = Figure(figsize=(1.2 * len(types) + 2.8, 0.38 * len(layers) + 1.9), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    image = ax.imshow(grid, aspect="auto", cmap="viridis", interpolation="nearest")
    ax.set_xticks(range(len(types)), labels=types)
    ax.set_yticks(range(len(layers)), labels=[layer for layer, _ in layers])
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


# ----------------------------------------------------------------------------------------------------------------
# Contexts for the template
# ----------------------------------------------------------------------------------------------------------------


def _yaml(data: dict) -> str:
    import yaml

    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, default_flow_style=False).rstrip()


def _parent_ref(parent: _Parent) -> str:
    rev = parent.provenance.get("revision")
    if parent.hub_id:
        return f"{parent.hub_id}@{rev}" if rev else parent.hub_id
    return f"{parent.name} ({parent.provenance.get('source', 'local')})"


def _architecture(config: dict, output: dict | None, model_id: str, base: _Parent, local: bool
                  ) -> tuple[Adapter, dict]:
    """The adapter that wrote the folder (from its ``config.json``) and the card's usage snippet, from the report's
    ``output`` record (its class and ``init_kwargs``) when there is one, else from the config."""
    adapter = adapter_for_output(config)
    output = output or {}
    class_name = output.get("class") or adapter.usage_class(config)
    init_kwargs = output.get("init_kwargs") if isinstance(output.get("init_kwargs"), dict) else {}
    return adapter, adapter.usage(config, class_name, model_id, base.hub_id, local, init_kwargs)


def _evaluation_context(evals: dict | None, model_name: str):
    if not evals:
        return None, None
    from huggingface_hub import EvalResult

    rows, results = [], []
    absolute, normalized = [], []
    for task, scores in evals["tasks"].items():
        dataset = evals["dataset_ids"].get(task) or task
        norm = scores.get("normalized")
        absolute.append(float(scores["absolute"]))
        if norm is not None:
            normalized.append(float(norm))
        rows.append({"task": _md(task), "dataset": _md(dataset), "absolute": f"{scores['absolute']:.2f}",
                     "normalized": "–" if norm is None else f"{norm:.2f}"})
        results.append(EvalResult(task_type="image-classification", dataset_type=dataset, dataset_name=task,
                                  metric_type="accuracy", metric_name="accuracy (%)",
                                  metric_value=round(float(scores["absolute"]), 4)))
        if norm is not None:
            results.append(EvalResult(task_type="image-classification", dataset_type=dataset, dataset_name=task,
                                      metric_type="normalized_accuracy",
                                      metric_name="normalized accuracy (% of the fine-tuned model)",
                                      metric_value=round(float(norm), 4)))
    mean_norm = f"{sum(normalized) / len(normalized):.2f}" if len(normalized) == len(rows) else "–"
    context = {"rows": rows, "mean_absolute": f"{sum(absolute) / len(absolute):.2f}", "mean_normalized": mean_norm,
               "split": evals.get("split"), "alpha": evals.get("alpha"),
               "alpha_selection": evals.get("alpha_selection")}
    return context, results


def _merge_context(folder: Path, report: dict, config: dict, title: str, model_id: str, local: bool, token,
                   license: str | None) -> tuple[dict, dict, list[str], dict | None]:
    if not isinstance(report.get("base"), dict) or not isinstance(report.get("models"), list):
        raise CardError(f"{REPORT_NAME} in {folder.name!r} has no 'base'/'models' entries; was it written by hf-tsv?")
    method = str(report.get("method", "unknown"))
    about = _method_context(method, report)
    parents = [_Parent("base", report["base"])]
    parents += [_Parent(f"task {i + 1}", m) for i, m in enumerate(report["models"])]
    license_meta, warnings, license_sentence = _resolve_licenses(parents, token, license)
    hub_ids = [p.hub_id for p in parents if p.hub_id]
    endpoint = _endpoint()
    options = dict(report.get("options", {}))
    device = options.pop("device", None)
    configuration = {
        "base_model": _parent_ref(parents[0]),
        "models": [_parent_ref(p) for p in parents[1:]],
        "merge_method": method,
        "alpha": report.get("alpha") if about["uses_alpha"] else None,
        "k": report.get("k"),
        "options": options,
        "output": report.get("output"),
        "keys": report.get("keys"),
    }
    sti = report.get("sti")
    adapter, usage = _architecture(config, report.get("output"), model_id, parents[0], local)
    sti_context = None
    if isinstance(sti, dict) and isinstance(sti.get("keys"), dict):
        sti_context = {"total": _fmt(sti.get("total")), "k": sti.get("k"), "num_keys": len(sti["keys"]),
                       "heatmap": HEATMAP_NAME, **sti_markdown_rows(sti["keys"], adapter)}
    evals = load_eval_results(folder)
    evaluation, eval_results = _evaluation_context(evals, title)
    command = report.get("command")
    versions = report.get("versions") or {}
    reproduce = {
        "hf_tsv_version": report.get("hf_tsv_version") or versions.get("hf-tsv"),
        "versions": [{"name": k, "version": v} for k, v in versions.items()],
        "device": device, "compute_dtype": options.get("compute_dtype"), "svd": options.get("svd"),
        "output_dtype": (report.get("output") or {}).get("dtype"),
        "seconds": (report.get("timings") or {}).get("total_s"),
        "command": public_command(command, set(hub_ids)) if command else None,
        "python": None if command else _python_call(report, parents),
    }
    context = {
        "kind": "merge",
        "title": title,
        "method": method,
        **{k: v for k, v in about.items() if k != "method_tags"},
        "alpha": report.get("alpha"),
        "num_tasks": report.get("num_tasks", len(parents) - 1),
        "base": _parent_row(parents[0], endpoint),
        "models": [_parent_row(p, endpoint) for p in parents[1:]],
        "config_yaml": _yaml(configuration),
        "notes": report.get("notes") or [],
        "sti": sti_context,
        "evaluation": evaluation,
        "license_sentence": license_sentence,
        "usage": usage,
        "reproduce": reproduce,
    }
    metadata = {
        "base_model": hub_ids or None,
        "base_model_relation": "merge" if hub_ids else None,
        "tags": ["merge", *COMMON_TAGS, *adapter.tags, *about["method_tags"]],
        "library_name": "transformers",
        "pipeline_tag": adapter.pipeline_tag,
        **license_meta,
    }
    if eval_results:
        metadata.update(model_name=title, eval_results=eval_results)
    stats = {"k": sti.get("k"), "keys": sti["keys"], "total": sti.get("total")} if sti_context else None
    return context, metadata, warnings, stats


def _tsvc_context(folder: Path, index: dict, config: dict, title: str, model_id: str, token,
                  license: str | None) -> tuple[dict, dict, list[str]]:
    if not isinstance(index.get("base"), dict) or not isinstance(index.get("tasks"), list):
        raise CardError(f"{TSVC_INDEX_NAME} in {folder.name!r} has no 'base'/'tasks' entries")
    base = _Parent("base", {k: v for k, v in index["base"].items() if k != "path"})
    tasks = [_Parent(f"task {i}", t) for i, t in enumerate(index["tasks"])]
    parents = [base, *tasks]
    adapter, usage = _architecture(config, None, model_id, base, False)
    license_meta, warnings, license_sentence = _resolve_licenses(parents, token, license)
    endpoint = _endpoint()
    sizes = index.get("sizes") or {}
    stored, full = sizes.get("stored_bytes"), sizes.get("full_task_vectors_bytes")
    versions = index.get("versions") or {}
    context = {
        "kind": "tsv-c",
        "title": title,
        "paper": _tsv_paper(),
        "num_tasks": index.get("num_tasks", len(tasks)),
        "k": index.get("k"),
        "dtype": index.get("dtype"),
        "stored_mb": f"{stored / 1e6:.2f}" if stored else "?",
        "full_mb": f"{full / 1e6:.2f}" if full else "?",
        "percent": f"{100 * stored / full:.1f}" if stored and full else "?",
        "base": _parent_row(base, endpoint),
        "models": [_parent_row(p, endpoint) for p in tasks],
        "task_names": [p.name.split("/")[-1] for p in tasks],
        "model_id": model_id,
        "local_dir": model_id.split("/")[-1],
        "base_arg": "" if base.hub_id else f" --base path/to/{base.name}",
        "base_kwarg": "" if base.hub_id else f', base="path/to/{base.name}"',
        "usage": usage,
        "license_sentence": license_sentence,
        "reproduce": {"hf_tsv_version": versions.get("hf-tsv"),
                      "versions": [{"name": k, "version": v} for k, v in versions.items()],
                      "seconds": index.get("seconds")},
    }
    hub_ids = [p.hub_id for p in parents if p.hub_id]
    metadata = {"base_model": hub_ids or None,
                "tags": [*COMMON_TAGS, *adapter.tags, "tsv-c", "compressed-task-vectors"], **license_meta}
    return context, metadata, warnings


def _expand_context(folder: Path, report: dict, config: dict, title: str, model_id: str, local: bool, token,
                    license: str | None) -> tuple[dict, dict, list[str]]:
    base = _Parent("base", report.get("base") or {})
    task = _Parent("task", report.get("task") or {})
    license_meta, warnings, license_sentence = _resolve_licenses([base, task], token, license)
    adapter, usage = _architecture(config, None, model_id, base, local)
    endpoint = _endpoint()
    versions = report.get("versions") or {}
    context = {
        "kind": "expand",
        "title": title,
        "paper": _tsv_paper(),
        "k": report.get("k"),
        "base": _parent_row(base, endpoint),
        "task": _parent_row(task, endpoint),
        "license_sentence": license_sentence,
        "usage": usage,
        "reproduce": {"hf_tsv_version": versions.get("hf-tsv"),
                      "versions": [{"name": k, "version": v} for k, v in versions.items()]},
    }
    hub_ids = [p.hub_id for p in (task, base) if p.hub_id]
    metadata = {"base_model": hub_ids[:1] or None, "tags": [*COMMON_TAGS, *adapter.tags, "tsv-c"],
                "library_name": "transformers", "pipeline_tag": adapter.pipeline_tag, **license_meta}
    return context, metadata, warnings


# ----------------------------------------------------------------------------------------------------------------
# Entry points
# ----------------------------------------------------------------------------------------------------------------


def build_card(folder: str | os.PathLike, *, repo_id: str | None = None, license: str | None = None,
               token: str | bool | None = None) -> tuple[CardResult, dict[str, bytes]]:
    """Render the card of an hf-tsv output folder without writing anything.

    Returns the :class:`CardResult` and the side files to write beside it (``{name: bytes}``: the heatmap
    and ``sti_stats.json`` for a TSV-M merge). ``repo_id`` names the model in the title and the usage snippet
    (default: the folder's name); ``license`` overrides the license inherited from the parents; ``token``
    reads private parents' cards (default: ``HF_TOKEN`` or the stored login).
    """
    from huggingface_hub import ModelCard, ModelCardData

    folder = Path(folder)
    token = normalize_token(token)
    if not folder.is_dir():
        raise CardError(f"{folder.name!r} is not a folder")
    kind = folder_kind(folder)
    folder_name = folder.resolve().name
    title = repo_id.split("/")[-1] if repo_id else folder_name
    model_id = repo_id or folder_name
    local = repo_id is None
    config = _read_json(folder / "config.json", "a model config") if (folder / "config.json").is_file() else {}
    side_files: dict[str, bytes] = {}
    if kind == "merge":
        report = _read_json(folder / REPORT_NAME, "a merge report")
        context, metadata, warnings, stats = _merge_context(folder, report, config, title, model_id, local,
                                                                token, license)
        if stats is not None:
            png = sti_heatmap_png(stats["keys"], f"STI per layer — {title}", adapter_for_output(config))
            if png is None:
                context["sti"]["heatmap"] = None
            else:
                side_files[HEATMAP_NAME] = png
            side_files[STI_STATS_NAME] = dumps_json(stats, STI_STATS_NAME).encode()
    elif kind == "tsv-c":
        index = _read_json(folder / TSVC_INDEX_NAME, "a TSV-C index")
        context, metadata, warnings = _tsvc_context(folder, index, config, title, model_id, token, license)
    else:
        report = _read_json(folder / REPORT_NAME, "a merge report")
        context, metadata, warnings = _expand_context(folder, report, config, title, model_id, local, token,
                                                      license)
    metadata = {k: v for k, v in metadata.items() if v is not None}
    card_data = ModelCardData(**metadata)
    card = ModelCard.from_template(card_data, template_path=str(TEMPLATE_PATH), warnings=warnings, **context)
    text = redact(str(card))
    if text != str(card):  # e.g. a --repo-id or --license typed with a token in it
        card = ModelCard(text, ignore_metadata_errors=True)
    for warning in warnings:
        logger.warning("model card of %s: %s", title, warning)
    return CardResult(folder, card, kind, warnings, [CARD_NAME, *side_files]), side_files


def write_card(folder: str | os.PathLike, *, repo_id: str | None = None, license: str | None = None,
               token: str | bool | None = None) -> CardResult:
    """Write (or refresh) ``README.md`` in an hf-tsv output folder, with ``sti_heatmap.png`` and
    ``sti_stats.json`` beside it for a TSV-M merge. See :func:`build_card` for the arguments."""
    result, side_files = build_card(folder, repo_id=repo_id, license=license, token=token)
    for name, data in side_files.items():
        write_file_atomic(result.folder / name, data)
    write_file_atomic(result.folder / CARD_NAME, result.text)
    return result
