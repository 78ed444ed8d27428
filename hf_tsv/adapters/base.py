"""What an adapter is: everything the engine, the STI tables and the model card need to know about one family of
checkpoints, so that none of them names an architecture.

An adapter reads configs and key names only (no tensor, no torch at import). Its answers:

* **which checkpoints** it reads: :attr:`Adapter.model_types` (``config.json``'s ``model_type``) and, where a
  ``model_type`` covers several classes, :attr:`Adapter.architectures` (``config.json``'s ``architectures``);
* **which config fields** must agree between the base and every fine-tune (:meth:`Adapter.architecture`);
* **canonical keys** (:meth:`Adapter.canonical_key`): a checkpoint's key without the prefixes that differ between
  layouts (``vision_model.``, ``vit.``...) and with older transformers' names renamed to the installed ones; the
  keys of parts it does not merge (a text tower) are ignored, and task-specific heads (``classifier.*``) are
  refused or dropped (:meth:`Adapter.is_head`);
* **matrix keys** merged by the SVD methods (:meth:`Adapter.is_matrix`; the other keys are averaged), their q/k/v
  fusion groups (:meth:`Adapter.qkv_groups`) and their STI table cell (:meth:`Adapter.layer_and_type`);
* **the output**: the transformers class and config the merge is saved as (:meth:`Adapter.output_model`), and what
  a model card says about it (:attr:`Adapter.pipeline_tag`, :attr:`Adapter.tags`, :meth:`Adapter.usage`).

A new family is one file in ``hf_tsv/adapters/`` that defines a subclass with a :attr:`Adapter.name`; the registry
(:mod:`hf_tsv.adapters`) finds it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, ClassVar

# config.json entries that describe the file, not the architecture
CONFIG_BOOKKEEPING = ("architectures", "model_type", "transformers_version", "torch_dtype", "dtype")
# config.json entries of one task's head (labels), left out of a merged encoder's config
TASK_FIELDS = ("id2label", "label2id", "num_labels", "problem_type", "finetuning_task")
# A layer of an encoder: ``[stack.][encoder.]layer[s].N.[...].TYPE.weight`` (stack: a tower such as vision_model.)
LAYER = re.compile(r"^(?P<stack>.*?)(?:encoder\.)?layers?\.(?P<index>\d+)\.(?:.*\.)?(?P<type>[^.]+)\.weight$")
QKV = re.compile(r"^(?P<block>.*\.)(?P<which>[qkv])_proj\.weight$")
FUSED_QKV = "qkv_proj.weight"
# STI table columns, in this order first (others follow alphabetically)
TYPE_ORDER = ("q_proj", "k_proj", "v_proj", "qkv_proj", "out_proj", "o_proj", "fc1", "fc2", "gate_proj", "up_proj",
              "down_proj")
NOT_IN_A_LAYER = "-"
# How the keys an adapter calls token embeddings (:attr:`Adapter.embeddings`) are merged (``--embeddings``; checked
# by hf_tsv.options.MergeOptions): as matrices by the method, like the norms and biases, or kept from the base
EMBEDDING_MODES = ("tsv", "average", "base")
DEFAULT_EMBEDDINGS = "average"


@dataclass(frozen=True)
class OutputModel:
    """The merged model as transformers saves it: its class, config, canonical key → saved key, and the keyword
    arguments ``from_pretrained`` (and the class) need beyond the config (e.g. ``add_pooling_layer=False``)."""

    model_class: type
    config: Any
    names: dict[str, str]
    init_kwargs: dict[str, Any] = field(default_factory=dict)


def natural_order(label: str) -> list:
    """Sort key that puts ``"text 2"`` before ``"text 10"``.

    Example:
        >>> sorted(["10", "2", "vision 1", "text 3"], key=natural_order)
        ['2', '10', 'text 3', 'vision 1']
    """
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", label)]


def prefixed_fields(prefix: str, config: dict, names: tuple[str, ...]) -> dict[str, Any]:
    """The fields ``names`` of ``config`` that it has, each named ``prefix + name``.

    Example:
        >>> prefixed_fields("text_config.", {"hidden_size": 8, "other": 1}, ("hidden_size", "vocab_size"))
        {'text_config.hidden_size': 8}
    """
    return {f"{prefix}{name}": config[name] for name in names if name in config}


def python_kwargs(kwargs: dict[str, Any]) -> str:
    """``{"add_pooling_layer": False}`` → ``", add_pooling_layer=False"`` (for a snippet's call)."""
    return "".join(f", {name}={value!r}" for name, value in kwargs.items())


class Adapter:
    """The rules of one checkpoint family. Subclasses set the class attributes and implement
    :meth:`output_model`; the defaults suit encoders laid out as transformers lays out CLIP and ViT.

    The base class itself is the *generic* adapter the card and the STI tables fall back on for an output whose
    family is not registered: it names layers with :data:`LAYER` and merges every 2-D tensor.

    Example:
        >>> generic = Adapter()
        >>> generic.layer_and_type("encoder.layers.3.mlp.fc1.weight")
        ('3', 'fc1')
        >>> generic.layer_and_type("embeddings.position_embedding.weight")
        ('-', 'embeddings.position_embedding')
    """

    name: ClassVar[str] = ""  # the registry's name, and the value of --architecture; empty: not registered
    title: ClassVar[str] = "generic"  # in messages: "hf_tsv's {title} adapter"
    description: ClassVar[str] = "models"  # on cards: "a merge of 3 fine-tuned {description}"
    purpose: ClassVar[str] = "turns an input into a feature vector"  # on cards: "It is a `Class` that {purpose}"
    model_types: ClassVar[tuple[str, ...]] = ()
    architectures: ClassVar[tuple[str, ...]] = ()  # accepted config "architectures" (empty: any)
    output_classes: ClassVar[tuple[str, ...]] = ()  # the transformers classes it saves merges as
    priority: ClassVar[int] = 0  # among adapters that read every input, the highest priority is chosen
    architecture_fields: ClassVar[tuple[str, ...]] = ()  # config fields that base and fine-tunes must share
    prefixes: ClassVar[tuple[str, ...]] = ()  # stripped from a key (the first that matches)
    renames: ClassVar[tuple[tuple[str, str], ...]] = ()  # (regex, replacement) applied in order after that
    ignored: ClassVar[re.Pattern | None] = None  # raw keys of parts this adapter does not merge
    heads: ClassVar[re.Pattern | None] = re.compile(r"^classifier\.")  # task-specific heads (canonical keys)
    optional: ClassVar[re.Pattern | None] = None  # merged only when every input has them, else left out
    # token embeddings and output projections (canonical keys): merged as --embeddings says (tsv, average, base)
    embeddings: ClassVar[re.Pattern | None] = None
    stacks: ClassVar[dict[str, str]] = {}  # canonical prefix of a tower → its label in STI tables
    qkv_key: ClassVar[re.Pattern] = QKV  # a q/k/v projection (groups: "block", its block's prefix; "which")
    qkv_order: ClassVar[tuple[str, ...]] = ("q", "k", "v")  # the "which" of each, in the order they are stacked
    fused_qkv: ClassVar[str] = FUSED_QKV  # the fused group's name after the block's prefix
    pipeline_tag: ClassVar[str] = "feature-extraction"
    tags: ClassVar[tuple[str, ...]] = ()
    processor_class: ClassVar[str] = "AutoImageProcessor"
    # small files of the base's folder (tokenizer, pipeline configs; ``/``-separated names, at most one folder deep)
    # that a merge copies into its output, when the base has them
    side_files: ClassVar[tuple[str, ...]] = ()
    # the usage snippet's import of its example input, and the Python that turns that input into ``inputs``
    example_import: ClassVar[str] = "from PIL import Image"
    example_inputs: ClassVar[str] = 'processor(images=Image.open("image.jpg"), return_tensors="pt")'

    # ---- which checkpoints ---------------------------------------------------------------------------------------

    def accepts(self, config: dict) -> bool:
        """Whether this adapter reads a checkpoint with this ``config.json``."""
        if config.get("model_type") not in self.model_types:
            return False
        declared = config.get("architectures") or []
        return not self.architectures or not declared or any(a in self.architectures for a in declared)

    def reads(self) -> str:
        """What it reads, for messages: ``"clip checkpoints of CLIPModel"``."""
        what = f"{', '.join(self.model_types)} checkpoints"
        return f"{what} of {', '.join(self.architectures)}" if self.architectures else what

    def architecture(self, config: dict) -> dict[str, Any]:
        """The fields of ``config`` that must agree between the base and every fine-tune (those it has)."""
        return {name: config[name] for name in self.architecture_fields if name in config}

    # ---- keys -------------------------------------------------------------------------------------------------

    def canonical_key(self, key: str) -> str | None:
        """The key as the merge names it, or None for a key of a part that is not merged."""
        if self.ignored is not None and self.ignored.match(key):
            return None
        for prefix in self.prefixes:
            if key.startswith(prefix):
                key = key[len(prefix):]
                break
        for pattern, replacement in self.renames:
            key = re.sub(pattern, replacement, key)
        return key

    def is_head(self, canonical: str) -> bool:
        """Whether a canonical key belongs to a task-specific head (never merged)."""
        return self.heads is not None and self.heads.match(canonical) is not None

    def is_optional(self, canonical: str) -> bool:
        """Whether a key is merged only when every input has it (otherwise left out of the output)."""
        return self.optional is not None and self.optional.match(canonical) is not None

    def is_embedding(self, canonical: str) -> bool:
        """Whether a key is a token embedding or output projection, merged as ``--embeddings`` says
        (:attr:`embeddings`; the generic adapter has none).

        Example:
            >>> Adapter().is_embedding("embed_tokens.weight")
            False
        """
        return self.embeddings is not None and self.embeddings.match(canonical) is not None

    def mismatch_hint(self, name: str, value: Any, base_value: Any) -> str | None:
        """What to do when a fine-tune's config field or canonical key ``name`` differs from the base's (``value``
        and ``base_value``: config values, or tensor shapes as lists); None: the engine's own words suffice."""
        return None

    def is_matrix(self, canonical: str, shape: tuple[int, ...]) -> bool:
        """Whether the SVD methods merge this key as a matrix (every 2-D tensor here); others are averaged."""
        return len(shape) == 2

    def qkv_groups(self, keys: list[str]) -> dict[str, list[str]]:
        """``{block + fused_qkv: [q, k, v]}`` for every attention block that has all three projections: keys
        matching :attr:`qkv_key` (groups ``block``, the block's prefix, and ``which``), stacked in
        :attr:`qkv_order`."""
        found: dict[str, dict[str, str]] = {}
        for key in keys:
            match = self.qkv_key.match(key)
            if match:
                found.setdefault(match["block"] + self.fused_qkv, {})[match["which"]] = key
        return {name: [parts[w] for w in self.qkv_order] for name, parts in found.items()
                if len(parts) == len(self.qkv_order)}

    def spelled(self, raw: str, canonical: str, name: str) -> str:
        """``name`` (a fused group's canonical name) as the checkpoint whose key ``raw`` is ``canonical`` would
        spell it: with that key's prefix, when renaming left the rest alone."""
        return raw[: len(raw) - len(canonical)] + name if raw.endswith(canonical) else name

    def layer_and_type(self, key: str) -> tuple[str, str]:
        """A key's STI table cell: ``(layer, layer type)``, or ``("-", name)`` for a key outside the layers.

        ``key`` may be spelled as any input spells it (it is canonicalised first)."""
        canonical = self.canonical_key(key) or key
        match = LAYER.match(canonical)
        if match is None:
            return NOT_IN_A_LAYER, canonical.removesuffix(".weight")
        stack = match["stack"]
        label = self.stacks.get(stack, stack.rstrip("."))
        return (f"{label} {match['index']}" if label else match["index"]), match["type"]

    def type_order(self, kind: str) -> tuple[int, str]:
        """Sort key of an STI table column."""
        return (TYPE_ORDER.index(kind) if kind in TYPE_ORDER else len(TYPE_ORDER), kind)

    # ---- the output -------------------------------------------------------------------------------------------

    def output_model(self, config: dict, keys: set[str]) -> OutputModel:
        """The class and config the merge of checkpoints with base ``config`` and canonical ``keys`` is saved as."""
        raise NotImplementedError(f"the {self.title} adapter does not write models")

    def meta_output(self, model_class: type, config: Any, **init_kwargs: Any) -> OutputModel:
        """:class:`OutputModel` of ``model_class(config, **init_kwargs)``, its saved names read from an instance on
        the meta device, so the output loads with ``from_pretrained`` in the installed transformers."""
        import torch

        config.architectures = [model_class.__name__]
        with torch.device("meta"):
            model = model_class(config, **init_kwargs)
        names = {self.canonical_key(saved): saved for saved in model.state_dict()}
        return OutputModel(model_class, config, names, dict(init_kwargs))

    @staticmethod
    def config_fields(config: dict, drop: tuple[str, ...] = ()) -> dict:
        """``config`` without its bookkeeping entries (and ``drop``), to build the output's config from."""
        return {k: v for k, v in config.items() if k not in CONFIG_BOOKKEEPING and k not in drop}

    def local_processor(self, config: dict) -> str:
        """Python that builds the image processor when the base is not on the Hub."""
        return f"{self.processor_class}()  # set it up as the base model was trained"

    def features(self, class_name: str, init_kwargs: dict[str, Any]) -> str:
        """Python that computes the features from ``model`` and ``inputs`` in the card's usage snippet."""
        return "model(**inputs).pooler_output"

    def hub_metadata(self, files: frozenset[str]) -> tuple[str, tuple[str, ...]]:
        """The card's ``pipeline_tag`` and architecture ``tags`` for an output folder holding ``files`` (top-level
        names): :attr:`pipeline_tag` and :attr:`tags` here, whatever the folder holds."""
        return self.pipeline_tag, tuple(self.tags)

    def usage_class(self, config: dict) -> str:
        """The class a usage snippet loads a saved output with: the one its ``config.json`` names (``architectures``),
        else this adapter's first output class (``AutoModel`` for the generic adapter).

        Example:
            >>> Adapter().usage_class({"architectures": ["ViTModel"]}), Adapter().usage_class({})
            ('ViTModel', 'AutoModel')
        """
        declared = config.get("architectures") or [*self.output_classes, "AutoModel"]
        return str(declared[0])

    def usage(self, config: dict, class_name: str, model_id: str, base_hub_id: str | None, local: bool,
              init_kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
        """The card's usage snippet pieces (see ``templates/model_card.md.j2``)."""
        init_kwargs = init_kwargs or {}
        if base_hub_id:
            processor = f'{self.processor_class}.from_pretrained("{base_hub_id}")  # the base model\'s preprocessing'
        else:
            processor = self.local_processor(config)
        return {"model_id": model_id, "class_name": class_name, "processor_class": self.processor_class,
                "processor": processor, "features": self.features(class_name, init_kwargs),
                "load_args": python_kwargs(init_kwargs), "local": local, "description": self.description,
                "purpose": self.purpose, "example_import": self.example_import, "inputs": self.example_inputs}
