"""What the card template gets: one context (and the card's metadata) per kind of output folder.

Method facts come from the method registry (:func:`method_facts`); the pipeline tag and the usage snippet from
the output's model class (:func:`model_usage`, the one place an architecture's adapter will supply them); the
STI table from :mod:`hf_tsv.sti_table`; the license from :mod:`hf_tsv.card.licenses`. Nothing here reads a file:
everything comes from :class:`hf_tsv.card.folder.OutputFolder`, already public.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..adapters.base import DEFAULT_EMBEDDINGS
from ..errors import CardError, ReportError
from ..files import HEATMAP_NAME
from ..report import InputRecord, MergeReport, OutputRecord
from ..sti_table import format_sti
from .folder import EXPAND, MERGE, TSVC, EvalResults, OutputFolder
from .licenses import Parent, resolve_licenses

COMMON_TAGS = ["hf-tsv", "task-singular-vectors"]  # then the architecture's (its adapter's tags)


# ----------------------------------------------------------------------------------------------------------------
# Facts from elsewhere: the method registry and the model's architecture
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MethodFacts:
    """What the card says about a merge method, from its registry entry (:mod:`hf_tsv.methods`)."""

    title: str  # "TSV-M", "task arithmetic"
    label: str  # as a sentence starts with it
    description: str  # its full name and paper reference
    card_description: str  # the paragraph that defines the merge
    paper: dict | None  # {"url", "title"} of its paper
    tags: tuple[str, ...]  # its Hub tags


def method_facts(name: str, recorded_description: str | None = None) -> MethodFacts:
    """The card's facts about method ``name`` from the registry; a method this hf-tsv does not know (a report
    of another version) is shown by its name and the description its report recorded."""
    from ..methods import METHODS

    method = METHODS.get(name)
    if method is None:
        return MethodFacts(name, name, recorded_description or name, "", None, (name,))
    paper = {"url": method.paper_url, "title": method.paper_title} if method.paper_url else None
    return MethodFacts(method.title, method.label, method.description, method.card_description, paper,
                       tuple(method.tags))


def tsv_paper() -> dict:
    """The Task Singular Vectors paper (TSV-M's, and TSV-C's), as the TSV-C and expand cards cite it."""
    from ..methods import get_method

    tsv = get_method("tsv-m")
    return {"url": tsv.paper_url, "title": tsv.paper_title, "citation": tsv.citation}


@dataclass(frozen=True)
class ModelUsage:
    """How the card says to use the model, from the adapter of its architecture: the Hub ``pipeline_tag``, the
    architecture's ``tags`` and the usage snippet's pieces (``snippet``, see the template)."""

    pipeline_tag: str
    tags: tuple[str, ...]
    snippet: dict
    layout: object  # the adapter itself: it names the STI table's layers and layer types


def model_usage(config: dict, output: OutputRecord | None, base: InputRecord, model_id: str,
                local: bool, folder: Path | None = None) -> ModelUsage:
    """The pipeline tag, tags and usage snippet of a saved model: from the adapter whose output its ``config.json``
    names (:func:`hf_tsv.adapters.adapter_for_output`), the class and ``init_kwargs`` from the report's ``output``
    record when there is one; the Hub metadata may depend on the files of the ``folder`` (a sentence-transformers
    layout)."""
    from ..adapters import adapter_for_output

    adapter = adapter_for_output(config)
    class_name = output.class_name if output else adapter.usage_class(config)
    init_kwargs = output.init_kwargs if output else {}
    snippet = adapter.usage(config, class_name, model_id, base.hub_id, local, init_kwargs)
    files = frozenset(entry.name for entry in folder.iterdir()) if folder is not None else frozenset()
    pipeline_tag, tags = adapter.hub_metadata(files)
    return ModelUsage(pipeline_tag, tags, snippet, adapter)


# ----------------------------------------------------------------------------------------------------------------
# Pieces shared by the contexts
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class CardContext:
    """What one card is rendered from: the template's variables, the card's metadata, warnings for the publisher
    and, for a TSV-M merge, the STI to write beside the card."""

    template: dict
    metadata: dict
    warnings: list[str] = field(default_factory=list)
    sti_keys: dict[str, float] | None = None  # the per-key STI for the heatmap
    sti_layout: object = None  # the adapter that names the heatmap's rows and columns
    sti_stats: dict | None = None  # sti_stats.json: {"k", "keys", "total"}


def _md(text: str) -> str:
    """Text safe inside a markdown table cell."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def _endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT.rstrip("/")


def _parent_row(parent: Parent, endpoint: str) -> dict:
    record = parent.record
    if parent.hub_id:
        rev = record.revision
        model = f"[{parent.hub_id}]({endpoint}/{parent.hub_id})"
        revision = f"[`{rev[:12]}`]({endpoint}/{parent.hub_id}/tree/{rev})" if rev else "–"
    elif record.source == "local":
        model = f"`{_md(parent.name)}` (local folder)"
        revision = f"fingerprint `{record.fingerprint}`" if record.fingerprint else "–"
    else:
        model = f"`{_md(parent.name)}` (model passed in memory)"
        revision = "–"
    return {"role": parent.role, "model": model, "revision": revision, "license": _md(parent.license_key or "–")}


def _parent_ref(parent: Parent) -> str:
    rev = parent.record.revision
    if parent.hub_id:
        return f"{parent.hub_id}@{rev}" if rev else parent.hub_id
    return f"{parent.name} ({parent.record.source})"


def _versions(versions: dict[str, str]) -> list[dict]:
    return [{"name": k, "version": v} for k, v in versions.items()]


def _yaml(data: dict) -> str:
    import yaml

    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, default_flow_style=False).rstrip()


def _python_call(report: MergeReport) -> str:
    """The Python call equivalent to a merge made through the API (which records no command)."""
    models = ", ".join(json.dumps(m.pinned_reference) for m in report.models or [])
    args = [json.dumps(report.base.pinned_reference), f"[{models}]", f"method={json.dumps(report.method)}"]
    if report.uses_alpha:
        args.append(f"alpha={report.alpha}")
    options = report.options
    if options and options.fuse_qkv:
        args.append("fuse_qkv=True")
    if options and options.embeddings not in (None, DEFAULT_EMBEDDINGS):
        args.append(f"embeddings={json.dumps(options.embeddings)}")
    from ..core.svd import DEFAULT_SVD_MODE

    if options and options.svd not in (None, DEFAULT_SVD_MODE):
        args.append(f"svd={json.dumps(options.svd)}")
    if options and options.compute_dtype not in (None, "float32"):
        args.append(f"compute_dtype={json.dumps(options.compute_dtype)}")
    return "import hf_tsv\n\nresult = hf_tsv.merge(" + ", ".join(args) + ")"


def _evaluation_context(evals: EvalResults | None) -> tuple[dict | None, list]:
    """The template's evaluation table and the card's ``model-index`` results."""
    if not evals:
        return None, []
    from huggingface_hub import EvalResult

    rows, results = [], []
    absolute, normalized = [], []
    for task, scores in evals.tasks.items():
        dataset = evals.dataset_ids.get(task) or task
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
               "split": evals.split, "alpha": evals.alpha, "alpha_selection": evals.alpha_selection}
    return context, results


def _comparison_context(comparison: dict | None) -> dict | None:
    """The card's comparison section (``hf-tsv compare --keep-best``): the one comparison table
    (:func:`hf_tsv.compare_result.compare_table`), rendered from the saved ``compare.json``."""
    if not comparison:
        return None
    from ..compare_result import CompareResult

    try:
        result = CompareResult.from_dict(comparison)
    except ReportError as exc:
        raise CardError(str(exc)) from None
    return {"table": result.table(), "best": result.best}


# ----------------------------------------------------------------------------------------------------------------
# One context per kind of folder
# ----------------------------------------------------------------------------------------------------------------


def merge_context(folder: OutputFolder, title: str, model_id: str, local: bool, token,
                  license: str | None) -> CardContext:
    """The card of a merge."""
    report = folder.report
    parents = [Parent("base", report.base)] + [Parent(f"task {i + 1}", m) for i, m in enumerate(report.models)]
    licensing = resolve_licenses(parents, token, license)
    hub_ids = [p.hub_id for p in parents if p.hub_id]
    endpoint = _endpoint()
    facts = method_facts(report.method, report.method_description)
    recorded = report.options
    options = {k: v for k, v in recorded.to_dict().items() if k != "device"} if recorded else {}
    output = report.output.to_dict() if report.output else None
    configuration = {
        "base_model": _parent_ref(parents[0]),
        "models": [_parent_ref(p) for p in parents[1:]],
        "merge_method": report.method,
        "alpha": report.alpha if report.uses_alpha else None,
        "k": report.k,
        "options": options,
        "output": output,
        "keys": report.keys,
    }
    usage = model_usage(folder.config, report.output, report.base, model_id, local, folder.path)
    sti = report.sti
    sti_context = None
    if sti is not None:
        sti_context = {"total": format_sti(sti.total), "k": sti.k, "num_keys": len(sti.keys), "heatmap": HEATMAP_NAME,
                       "table": sti.table(usage.layout).markdown()}
    evaluation, eval_results = _evaluation_context(folder.evaluation)
    versions = report.versions
    reproduce = {
        "hf_tsv_version": report.hf_tsv_version or versions.get("hf-tsv"),
        "versions": _versions(versions),
        "device": recorded.device if recorded else None,
        "compute_dtype": recorded.compute_dtype if recorded else None, "svd": recorded.svd if recorded else None,
        "output_dtype": report.output.dtype if report.output else None,
        "seconds": report.total_seconds,
        "command": report.command,
        "python": None if report.command else _python_call(report),
    }
    template = {
        "kind": MERGE,
        "title": title,
        "method": report.method,
        "method_title": facts.title,
        "method_label": facts.label,
        "method_description": facts.description,
        "method_rule": facts.card_description,
        "method_paper": facts.paper,
        "alpha": report.alpha,
        "uses_alpha": report.uses_alpha,
        "num_tasks": report.num_tasks if report.num_tasks is not None else len(parents) - 1,
        "base": _parent_row(parents[0], endpoint),
        "models": [_parent_row(p, endpoint) for p in parents[1:]],
        "config_yaml": _yaml(configuration),
        "notes": report.notes or [],
        "sti": sti_context,
        "evaluation": evaluation,
        "comparison": _comparison_context(folder.comparison),
        "license_sentence": licensing.sentence,
        "usage": usage.snippet,
        "reproduce": reproduce,
    }
    metadata = {
        "base_model": hub_ids or None,
        "base_model_relation": "merge" if hub_ids else None,
        "tags": ["merge", *COMMON_TAGS, *usage.tags, *facts.tags],
        "library_name": "transformers",
        "pipeline_tag": usage.pipeline_tag,
        **licensing.metadata,
    }
    if eval_results:
        metadata.update(model_name=title, eval_results=eval_results)
    context = CardContext(template, metadata, licensing.warnings)
    if sti is not None:
        context.sti_keys = sti.keys
        context.sti_layout = usage.layout
        context.sti_stats = {"k": sti.k, "keys": sti.keys, "total": sti.total}
    return context


def tsvc_context(folder: OutputFolder, title: str, model_id: str, token, license: str | None) -> CardContext:
    """The card of TSV-C factors (``hf-tsv compress``)."""
    index = folder.index
    base = Parent("base", InputRecord.from_dict(index["base"], "tsv_c.json", "base"))
    tasks = [Parent(f"task {i}", InputRecord.from_dict(t, "tsv_c.json", f"tasks[{i}]"))
             for i, t in enumerate(index["tasks"])]
    parents = [base, *tasks]
    licensing = resolve_licenses(parents, token, license)
    usage = model_usage(folder.config, None, base.record, model_id, False)
    endpoint = _endpoint()
    sizes = index.get("sizes") or {}
    stored, full = sizes.get("stored_bytes"), sizes.get("full_task_vectors_bytes")
    versions = index.get("versions") or {}
    template = {
        "kind": TSVC,
        "title": title,
        "paper": tsv_paper(),
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
        "usage": usage.snippet,
        "license_sentence": licensing.sentence,
        "reproduce": {"hf_tsv_version": versions.get("hf-tsv"), "versions": _versions(versions),
                      "seconds": index.get("seconds")},
    }
    hub_ids = [p.hub_id for p in parents if p.hub_id]
    metadata = {"base_model": hub_ids or None,
                "tags": [*COMMON_TAGS, *usage.tags, "tsv-c", "compressed-task-vectors"], **licensing.metadata}
    return CardContext(template, metadata, licensing.warnings)


def expand_context(folder: OutputFolder, title: str, model_id: str, local: bool, token,
                   license: str | None) -> CardContext:
    """The card of a task rebuilt from TSV-C factors (``hf-tsv expand``)."""
    report = folder.report
    base, task = Parent("base", report.base), Parent("task", report.task)
    licensing = resolve_licenses([base, task], token, license)
    endpoint = _endpoint()
    usage = model_usage(folder.config, None, report.base, model_id, local, folder.path)
    template = {
        "kind": EXPAND,
        "title": title,
        "paper": tsv_paper(),
        "k": report.k,
        "base": _parent_row(base, endpoint),
        "task": _parent_row(task, endpoint),
        "license_sentence": licensing.sentence,
        "usage": usage.snippet,
        "reproduce": {"hf_tsv_version": report.versions.get("hf-tsv"), "versions": _versions(report.versions)},
    }
    hub_ids = [p.hub_id for p in (task, base) if p.hub_id]
    metadata = {"base_model": hub_ids[:1] or None, "tags": [*COMMON_TAGS, *usage.tags, "tsv-c"],
                "library_name": "transformers", "pipeline_tag": usage.pipeline_tag, **licensing.metadata}
    return CardContext(template, metadata, licensing.warnings)
