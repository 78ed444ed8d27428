"""A toy adapter for BERT text encoders, written as a new family would be: this one file, dropped into
``hf_tsv/adapters/``, is all hf_tsv needs (``tests/test_adapters.py::test_an_adapter_is_one_file`` adds it that way,
by putting its folder on the adapters package's path).

BERT names its layers ``encoder.layer.N.attention.self.query``..., three linear layers end in ``dense``, and its
task models (``BertForSequenceClassification``) prefix the encoder with ``bert.`` and add a ``classifier`` head: so
this adapter names the STI columns itself, groups ``query``/``key``/``value`` for ``--fuse-qkv``, and strips
``bert.``; the default rules do the rest (heads refused or dropped, the pooler merged when every input has it).
"""

from __future__ import annotations

import re
from typing import Any

from hf_tsv.adapters.base import TASK_FIELDS, Adapter, OutputModel

# module of a layer → STI column
LAYER_TYPES = {"attention.self.query": "query", "attention.self.key": "key", "attention.self.value": "value",
               "attention.self.qkv": "qkv", "attention.output.dense": "attn_out", "intermediate.dense": "mlp_in",
               "output.dense": "mlp_out"}
LAYER = re.compile(r"^encoder\.layer\.(?P<index>\d+)\.(?P<module>.+)\.weight$")
QKV = re.compile(r"^(?P<block>.*\.attention\.self\.)(?P<which>query|key|value)\.weight$")
POOLER = "pooler."


class ToyBertAdapter(Adapter):
    """BERT encoders (``model_type`` ``bert``), merged into a ``BertModel``."""

    name = "toy-bert"
    title = "toy BERT"
    description = "BERT text encoders"
    purpose = "turns a text into feature vectors"
    model_types = ("bert",)
    output_classes = ("BertModel",)
    architecture_fields = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                           "vocab_size")
    prefixes = ("bert.",)
    optional = re.compile(rf"^{re.escape(POOLER)}")
    tags = ("bert",)
    processor_class = "AutoTokenizer"

    def layer_and_type(self, key: str) -> tuple[str, str]:
        match = LAYER.match(self.canonical_key(key) or key)
        if match and match["module"] in LAYER_TYPES:
            return match["index"], LAYER_TYPES[match["module"]]
        return super().layer_and_type(key)

    def type_order(self, kind: str) -> tuple[int, str]:
        order = list(LAYER_TYPES.values())
        return (order.index(kind) if kind in order else len(order), kind)

    def qkv_groups(self, keys: list[str]) -> dict[str, list[str]]:
        found: dict[str, dict[str, str]] = {}
        for key in keys:
            match = QKV.match(key)
            if match:
                found.setdefault(match["block"] + "qkv.weight", {})[match["which"]] = key
        return {name: [p["query"], p["key"], p["value"]] for name, p in found.items() if len(p) == 3}

    def output_model(self, config: dict, keys: set[str]) -> OutputModel:
        from transformers import BertConfig, BertModel

        pooled = any(key.startswith(POOLER) for key in keys)
        bert = BertConfig.from_dict(self.config_fields(config, drop=TASK_FIELDS))
        return self.meta_output(BertModel, bert, **({} if pooled else {"add_pooling_layer": False}))

    def features(self, class_name: str, init_kwargs: dict[str, Any]) -> str:
        return "model(**inputs).last_hidden_state"
