"""PEFT LoRA adapters as merge inputs: a folder (or Hub snapshot) holding ``adapter_config.json`` and
``adapter_model.safetensors``, read and checked up front, its task matrices given as factors (ΔW = s·B·A).

An adapter has no weights of its own: :meth:`LoraAdapterReader.attach_base` gives it the base's config and keys, and
:meth:`LoraAdapterReader.map_modules` maps each LoRA module (``base_model.model.<module>.lora_A[.<name>].weight``)
onto the base key ``<module>.weight`` as the merge's adapter (CLIP, BERT...) spells it. What it cannot merge
exactly is refused here, naming the file and the key or setting: other PEFT types (IA3, LoHa...), DoRA, LoRA
biases, ``fan_in_fan_out``, ``modules_to_save``, trainable tokens, LoRA on embeddings or convolutions. See docs/lora.md.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..core.lora import LowRankDelta
from ..errors import MergeInputError
from ..files import ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME, CONFIG_NAME
from .layout import find_member, model_root, parse_json, read_member
from .safetensors_format import TensorInfo, read_header, read_tensor

if TYPE_CHECKING:
    from ..adapters import Adapter

PEFT_PREFIX = "base_model.model."
LORA_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<which>[AB])(?:\.[^.]+)?\.weight$")
# settings whose non-default value changes what ΔW is, or adds weights that are not LoRA matrices
_REFUSED_SETTINGS = {
    "use_dora": "DoRA rescales each column of W₀ + ΔW by a learnt magnitude, which is not a task matrix ΔW",
    "fan_in_fan_out": "its weights are stored transposed (GPT-2 style Conv1D layers)",
    "lora_bias": "it trains biases of the LoRA B layers",
    "layer_replication": "it duplicates layers of the base",
    "trainable_token_indices": "it trains selected token embeddings",
    "use_qalora": "QA-LoRA pools the input dimension",
}


def is_adapter_folder(has_file) -> bool:
    """Whether a folder (given by its ``has_file(name)``) is a PEFT adapter: ``adapter_config.json`` without
    ``config.json``.

    Example:
        >>> is_adapter_folder({"adapter_config.json", "adapter_model.safetensors"}.__contains__)
        True
    """
    return has_file(ADAPTER_CONFIG_NAME) and not has_file(CONFIG_NAME)


def _number(config: dict, name: str, who: str, default=None) -> float:
    value = config.get(name, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise MergeInputError(f"{who}: {ADAPTER_CONFIG_NAME} sets {name} to {value!r}; it must be a positive number")
    return float(value)


def _pattern(config: dict, name: str, who: str) -> dict[str, float]:
    pattern = config.get(name) or {}
    if not isinstance(pattern, dict):
        raise MergeInputError(f"{who}: {ADAPTER_CONFIG_NAME} sets {name} to a {type(pattern).__name__}, not an "
                              "object of module pattern → number")
    return {str(key): _number(pattern, key, who) for key in pattern}


def _matching(pattern: dict[str, float], module: str) -> float | None:
    """PEFT's rule (``get_pattern_key``): the first pattern key that matches the end of the module name."""
    for key, value in pattern.items():
        try:
            if re.match(rf"(.*\.)?({key})$", module):
                return value
        except re.error:
            continue
    return None


class LoraAdapterReader:
    """A PEFT LoRA adapter folder, checked when constructed (config and safetensors header; no tensor read).

    Before :meth:`attach_base`, :attr:`infos` are the adapter's own tensors; afterwards the base's keys (an adapter
    changes the base at those keys, by ΔW, or by nothing where it has no module). :meth:`low_rank` gives ΔW of a
    base key as factors.

    Example:
        >>> reader = LoraAdapterReader("my-lora", name="my-lora")  # doctest: +SKIP
        >>> reader.rank_of, reader.base_model  # doctest: +SKIP
    """

    def __init__(self, folder: str | Path, name: str):
        self.folder = Path(folder)
        self.name = name
        self.root = model_root(self.folder)
        self.who = who = f"LoRA adapter {name!r}"
        config_path = find_member(self.folder, self.root, ADAPTER_CONFIG_NAME, who)
        if config_path is None:
            raise MergeInputError(f"{who}: {self.folder / ADAPTER_CONFIG_NAME} not found")
        config = parse_json(read_member(config_path, who), who, ADAPTER_CONFIG_NAME)
        if not isinstance(config, dict):
            raise MergeInputError(f"{who}: {ADAPTER_CONFIG_NAME} holds a JSON {type(config).__name__}, not an object")
        self.adapter_config = config
        self.config_file = config_path
        self._check_config(config, who)
        self.use_rslora = bool(config.get("use_rslora", False))
        self.lora_alpha = _number(config, "lora_alpha", who, default=8)
        self.alpha_pattern = _pattern(config, "alpha_pattern", who)
        _pattern(config, "rank_pattern", who)  # checked; each module's rank is the shape of its factors
        base = config.get("base_model_name_or_path")
        self.base_model: str | None = base if isinstance(base, str) and base else None
        weights = find_member(self.folder, self.root, ADAPTER_WEIGHTS_NAME, who)
        if weights is None:
            raise MergeInputError(f"{who}: {self.folder / ADAPTER_WEIGHTS_NAME} not found (an adapter_model.bin is not "
                                  "read: load the adapter with PEFT and save_pretrained it again, which writes "
                                  "safetensors)")
        self.weights_file = weights
        self.tensors: dict[str, TensorInfo] = read_header(weights, who)
        self.modules = self._pair_factors(who)
        self.infos: dict[str, TensorInfo] = dict(self.tensors)
        self.config: dict = {}
        self._by_base_key: dict[str, str] = {}  # base raw key → module

    @staticmethod
    def _check_config(config: dict, who: str) -> None:
        where = f"{who}: {ADAPTER_CONFIG_NAME}"
        peft_type = config.get("peft_type")
        if peft_type != "LORA":
            raise MergeInputError(f"{where} has peft_type {peft_type!r}; only LoRA adapters (peft_type 'LORA') are "
                                  "merged (IA3, LoHa, LoKr, prefix tuning... are not task matrices ΔW = s·B·A)")
        for name, why in _REFUSED_SETTINGS.items():
            if config.get(name) not in (None, False, [], {}):
                raise MergeInputError(f"{where} sets {name} = {config[name]!r}: not supported, as {why}; merge "
                                      "a plain LoRA adapter")
        if config.get("bias", "none") != "none":
            raise MergeInputError(f"{where} sets bias = {config['bias']!r}: the adapter trained biases of the base, "
                                  "which hf-tsv does not merge from adapters; only bias = 'none' is supported")
        if config.get("modules_to_save"):
            raise MergeInputError(f"{where} sets modules_to_save = {config['modules_to_save']!r}: those modules were "
                                  "trained in full (often a task head) and are not LoRA factors; merge the adapter "
                                  "without them, or merge it into its base with PEFT (merge_and_unload) and pass "
                                  "that folder as a fine-tuned model")

    def _pair_factors(self, who: str) -> dict[str, dict[str, str]]:
        """module → {"A": key, "B": key}, every key of the file accounted for."""
        modules: dict[str, dict[str, str]] = {}
        for key, info in self.tensors.items():
            match = LORA_KEY.match(key)
            if match is None:
                raise MergeInputError(f"{who} ({ADAPTER_WEIGHTS_NAME}): key {key!r} is not a LoRA factor (lora_A / "
                                      "lora_B of a linear layer); DoRA magnitudes, LoRA on embeddings and full "
                                      "modules are not merged")
            if len(info.shape) != 2:
                raise MergeInputError(f"{who} ({ADAPTER_WEIGHTS_NAME}): key {key!r} has shape {list(info.shape)}; "
                                      "only LoRA of linear layers (2-D factors) is merged, not of convolutions")
            pair = modules.setdefault(match["module"], {})
            if match["which"] in pair:
                raise MergeInputError(f"{who} ({ADAPTER_WEIGHTS_NAME}): keys {pair[match['which']]!r} and {key!r} "
                                      "are one factor; the file holds two adapters, save one of them")
            pair[match["which"]] = key
        if not modules:
            raise MergeInputError(f"{who} ({ADAPTER_WEIGHTS_NAME}) holds no LoRA factors")
        for module, pair in modules.items():
            if set(pair) != {"A", "B"}:
                have = next(iter(pair.values()))
                raise MergeInputError(f"{who} ({ADAPTER_WEIGHTS_NAME}): key {have!r} has no lora_"
                                      f"{'B' if 'A' in pair else 'A'} partner; the file is incomplete")
            rank_a, rank_b = self.tensors[pair["A"]].shape[0], self.tensors[pair["B"]].shape[1]
            if rank_a != rank_b or rank_a == 0:
                raise MergeInputError(f"{who} ({ADAPTER_WEIGHTS_NAME}): module {module!r} has lora_A of rank {rank_a} "
                                      f"but lora_B of rank {rank_b}; the file is corrupt")
        return modules

    # -- binding to the base -------------------------------------------------------------------------------

    def attach_base(self, base_config: dict, base_infos: dict[str, TensorInfo]) -> None:
        """Take the base's config and keys (an adapter changes the base's tensors, it has none of its own)."""
        self.config = dict(base_config)
        self.infos = dict(base_infos)

    def map_modules(self, adapter: Adapter, base_raw: dict[str, str]) -> list[str]:
        """Map each LoRA module to the base key it changes (``base_raw``: canonical key → the base's key), checking
        that ΔW's shape is that key's. Returns the base keys, in the adapter's order."""
        self._by_base_key = {}
        for module, pair in self.modules.items():
            canonical = adapter.canonical_key(f"{module}.weight")
            raw = base_raw.get(canonical) if canonical is not None else None
            if raw is None:
                raise MergeInputError(f"{self.who} ({ADAPTER_WEIGHTS_NAME}): key {pair['A']!r} changes module "
                                      f"{module!r}, which the base has no weight for; is this an adapter of that "
                                      f"base? (the base is read as {adapter.title})")
            m, n = self.tensors[pair["B"]].shape[0], self.tensors[pair["A"]].shape[1]
            if tuple(self.infos[raw].shape) != (m, n):
                raise MergeInputError(f"{self.who} ({ADAPTER_WEIGHTS_NAME}): module {module!r} gives ΔW of shape "
                                      f"{[m, n]} but the base key {raw!r} has shape {list(self.infos[raw].shape)}; is "
                                      "this an adapter of that base?")
            self._by_base_key[raw] = module
        return list(self._by_base_key)

    # -- reading -------------------------------------------------------------------------------------------

    def scale_of(self, module: str) -> float:
        """s = lora_alpha / r (rsLoRA: lora_alpha / √r), with the module's alpha_pattern entry if any; r is the
        rank its factors have (rank_pattern's entry, as PEFT built them)."""
        rank = self.tensors[self.modules[module]["A"]].shape[0]
        alpha = _matching(self.alpha_pattern, module)
        alpha = self.lora_alpha if alpha is None else alpha
        return alpha / (math.sqrt(rank) if self.use_rslora else rank)

    @property
    def rank_of(self) -> dict[str, int]:
        """module → its rank."""
        return {module: self.tensors[pair["A"]].shape[0] for module, pair in self.modules.items()}

    def factor_bytes(self, key: str) -> int:
        """Bytes of the factors (A and B) that reading base key ``key`` reads: 0 where the adapter has no module."""
        module = self._by_base_key.get(key)
        if module is None:
            return 0
        return sum(self.tensors[self.modules[module][name]].nbytes for name in ("A", "B"))

    def low_rank(self, key: str) -> LowRankDelta | None:
        """ΔW of base key ``key`` as factors, or None where the adapter leaves the base as it is."""
        module = self._by_base_key.get(key)
        if module is None:
            return None
        pair = self.modules[module]
        b, a = read_tensor(self.tensors[pair["B"]]), read_tensor(self.tensors[pair["A"]])
        for name, tensor in (("B", b), ("A", a)):
            if not bool(torch.isfinite(tensor).all()):
                raise MergeInputError(f"{self.who} ({ADAPTER_WEIGHTS_NAME}): key {pair[name]!r} contains NaN or inf "
                                      "values; every input must be finite")
        return LowRankDelta(b, a, self.scale_of(module))

    def get(self, key: str) -> torch.Tensor:
        """What the adapter adds to the base at ``key``: ΔW formed (zeros where it has no module). Used only to
        compare two inputs' content."""
        delta = self.low_rank(key)
        if delta is None:
            return torch.zeros(self.infos[key].shape, dtype=torch.float32)
        return delta.dense(torch.float32)

    @property
    def touched_keys(self) -> set[str]:
        """The base keys the adapter changes (after :meth:`map_modules`)."""
        return set(self._by_base_key)
