"""``--output-format peft``: a merge of LoRA adapters written as one PEFT LoRA adapter, equal to the merged model.

The method gives each matrix key's Δ as exact factors (its :attr:`~hf_tsv.methods.MergeMethod.low_rank_delta`:
TSV-M's U⊥·diag(σ̂)·V⊥ᵀ, task arithmetic's concatenated factors); α is shared evenly between them, columns that
carry nothing (σ = 0) are dropped, and the adapter is written with ``lora_alpha = r`` per module (so s = 1;
``rank_pattern``/``alpha_pattern`` for modules of another rank). ``PeftModel.from_pretrained(base, folder)``
loads it onto the base; its merged weights are θ₀ + α·Δ. See docs/lora.md.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import torch

from .core.lora import LowRankDelta
from .engine import MergePlan, is_lora, split_rows
from .errors import MergeInputError
from .files import ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME, CARD_NAME
from .io.lora import PEFT_PREFIX
from .io.output import write_file_atomic, write_json


def check_peft_inputs(plan: MergePlan) -> None:
    """Refuse, before any tensor is read, a merge that one LoRA adapter cannot hold: a fine-tune that is not a
    LoRA adapter (its task vector is full rank and changes biases and norms), or an adapter module on a key that
    is not merged as a matrix (``--exclude``, or a key the architecture averages)."""
    dense = [m.name for m in plan.models if not is_lora(m)]
    if dense:
        raise MergeInputError(f"--output-format peft (output_format='peft') needs every fine-tuned model to be a LoRA "
                              f"adapter, but {dense[0]!r} is a full checkpoint; write the full model "
                              "(--output-format model) to merge it")
    matrix_keys = {plan.raw_keys[0][key] for unit in plan.units if unit.is_matrix for key in unit.keys}
    for model in plan.models:
        outside = sorted(model.reader.touched_keys - matrix_keys)
        if outside:
            raise MergeInputError(f"--output-format peft: LoRA adapter {model.name!r} changes key {outside[0]!r}, "
                                  "which this merge averages instead of merging as a matrix (--exclude, or the "
                                  "architecture's rule); the merged adapter could not hold it: drop --exclude for "
                                  "it or write the full model (--output-format model)")


def balanced(delta: LowRankDelta, alpha: float) -> LowRankDelta | None:
    """α·ΔW as factors without the columns that carry nothing, α split evenly between B and A (each kept column
    of B and row of A get the same norm, √|α|·√(‖b_j‖·‖a_j‖)); None when nothing is left (ΔW = 0).

    Example:
        >>> d = LowRankDelta(torch.tensor([[2.0, 0.0]]), torch.tensor([[3.0], [1.0]]))
        >>> out = balanced(d, 0.5)
        >>> out.rank, round(out.dense().item(), 5), out.b.item() == out.a.item()
        (1, 3.0, True)
    """
    b, a = delta.b * delta.scale, delta.a
    norm_b, norm_a = b.norm(dim=0), a.norm(dim=1)
    keep = (norm_b > 0) & (norm_a > 0)
    if alpha == 0 or not bool(keep.any()):
        return None
    b, a, norm_b, norm_a = b[:, keep], a[keep], norm_b[keep], norm_a[keep]
    size = (abs(alpha) ** 0.5) * torch.sqrt(norm_b * norm_a)
    sign = 1.0 if alpha > 0 else -1.0
    return LowRankDelta(b * (sign * size / norm_b), a * (size / norm_a)[:, None])


def _module(saved_key: str) -> str:
    return saved_key.removesuffix(".weight")


def adapter_config(ranks: dict[str, int], base_model: str) -> dict:
    """The ``adapter_config.json`` of the merged adapter: ``lora_alpha = r`` for every module (s = 1)."""
    common = Counter(ranks.values()).most_common(1)[0][0]
    other = {module: rank for module, rank in ranks.items() if rank != common}
    return {"peft_type": "LORA", "task_type": None, "base_model_name_or_path": base_model, "r": common,
            "lora_alpha": common, "rank_pattern": other, "alpha_pattern": dict(other),
            "target_modules": sorted(ranks), "lora_dropout": 0.0, "bias": "none", "use_rslora": False,
            "use_dora": False, "fan_in_fan_out": False, "modules_to_save": None, "init_lora_weights": True,
            "inference_mode": True}


def collect(job, alpha: float) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    """Run the merge, keeping each matrix key's α·Δ as factors: (the adapter's tensors, module → rank)."""
    plan, layout = job.plan, job.layout
    tensors: dict[str, torch.Tensor] = {}
    ranks: dict[str, int] = {}
    for unit, _base, delta in job.deltas(low_rank=True):
        if not unit.is_matrix:
            continue  # every input is an adapter: its other keys are unchanged (check_peft_inputs)
        factors = balanced(delta, alpha)
        if factors is None:
            continue
        for canon, rows in split_rows(unit, plan, factors.b).items():
            saved = plan.output_names[canon]
            dtype = layout[saved][0]
            module = _module(saved)
            for name, tensor in (("lora_A", factors.a), ("lora_B", rows)):
                key = f"{PEFT_PREFIX}{module}.{name}.weight"
                tensors[key] = job.check_output(tensor.to(device="cpu", dtype=dtype).contiguous(), key)
            ranks[module] = factors.rank
    if not ranks:
        raise MergeInputError("--output-format peft: the merged delta is zero on every key (α = 0, or adapters with "
                              "no LoRA factors that the merge keeps); there is no adapter to write")
    return tensors, ranks


def card_text(report, config: dict) -> str:
    """The README of the merged adapter: PEFT metadata, what was merged and how to load it."""
    from .card.contexts import _yaml, method_facts

    facts = method_facts(report.method, report.method_description)
    hub_base = report.base.repo_id
    metadata = {"library_name": "peft", "base_model": hub_base, "tags": ["merge", "lora", "hf-tsv", *facts.tags]}
    metadata = {k: v for k, v in metadata.items() if v}
    models = "\n".join(f"- {m.repo_id or m.name}" for m in report.models)
    ranks = sorted({config["r"], *config["rank_pattern"].values()})
    base = hub_base or report.base.name
    return (f"---\n{_yaml(metadata)}\n---\n\n# LoRA adapter: {facts.label} merge of {report.num_tasks} adapters\n\n"
            f"{facts.description}, α = {report.alpha:g}, merged with hf-tsv into one LoRA adapter (rank "
            f"{'/'.join(str(r) for r in ranks)} per module, lora_alpha = r) that equals the merged model.\n\n"
            f"{facts.card_description}\n\nBase model: {base}\n\nMerged adapters:\n{models}\n\n"
            "## Use\n\n```python\nfrom peft import PeftModel\nfrom transformers import "
            f"{report.output.class_name}\n\nbase = {report.output.class_name}.from_pretrained(\"{base}\")\n"
            "model = PeftModel.from_pretrained(base, \"path/or/hub-id/of/this/adapter\")\n"
            "merged = model.merge_and_unload()  # the merged weights, as a plain model\n```\n\n"
            "merge_report.json records the options, the inputs and Singular Task Interference where computed.\n")


def write_adapter_files(folder: Path, tensors: dict[str, torch.Tensor], config: dict, report) -> None:
    """The adapter's files in ``folder`` (a scratch folder of the atomic output); the adapter is small (rank ≤ T·k
    per module), so its safetensors are serialised in memory."""
    from safetensors.torch import save

    write_file_atomic(folder / ADAPTER_WEIGHTS_NAME, save(tensors, metadata={"format": "pt"}))
    write_json(folder / ADAPTER_CONFIG_NAME, config)
    write_file_atomic(folder / CARD_NAME, card_text(report, config))
    report.save(folder)
