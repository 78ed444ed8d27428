"""BERT: ``BertModel`` checkpoints (``model_type`` ``bert``), sentence-transformers folders of them (such as
``all-MiniLM-L6-v2``) and the encoder of BERT task models (``BertForSequenceClassification``...).

Canonical keys drop the ``bert.`` prefix of the task models; a task head (``classifier.*``, ``cls.*``, ``qa_outputs``)
is refused, or left out with ``--drop-heads``. The pooler (``pooler.dense``) is merged when every model has it,
otherwise it is left out and the output is a ``BertModel`` without one (``add_pooling_layer=False``).

The SVD methods merge the linear layers of each layer (``attention.self.query``/``key``/``value``,
``attention.output.dense``, ``intermediate.dense``, ``output.dense``) and the pooler; the embeddings (word,
position, token type), the LayerNorms and the biases are averaged. STI tables name the layer types ``q_proj``,
``k_proj``, ``v_proj`` (``qkv_proj`` with ``--fuse-qkv``), ``o_proj``, ``fc1`` (intermediate) and ``fc2`` (output).

A merge keeps the base's tokenizer and sentence-transformers files (:attr:`BertAdapter.side_files`), so the output
loads with ``AutoTokenizer``/``AutoModel`` and, for a sentence-transformers base, as a ``SentenceTransformer``.
"""

from __future__ import annotations

import re
from typing import Any

from ..files import SENTENCE_TRANSFORMERS_FILES, SENTENCE_TRANSFORMERS_MODULES, TOKENIZER_FILES
from .base import TASK_FIELDS, Adapter, OutputModel

# module of a BERT layer → STI column (the names the default order of the columns knows)
LAYER_TYPES = {"attention.self.query": "q_proj", "attention.self.key": "k_proj", "attention.self.value": "v_proj",
               "attention.self.qkv": "qkv_proj", "attention.output.dense": "o_proj", "intermediate.dense": "fc1",
               "output.dense": "fc2"}
LAYER = re.compile(r"^encoder\.layer\.(?P<index>\d+)\.(?P<module>.+)\.weight$")
QKV = re.compile(r"^(?P<block>encoder\.layer\.\d+\.attention\.self\.)(?P<which>query|key|value)\.weight$")
FUSED_QKV = "qkv.weight"
POOLER_PREFIX = "pooler."
EMBEDDINGS_PREFIX = "embeddings."


class BertAdapter(Adapter):
    """BERT text encoders (``model_type`` ``bert``), merged into a ``BertModel``."""

    name = "bert"
    title = "BERT"
    description = "BERT text encoders"
    purpose = "turns a text into a sequence of token vectors (mean-pool them for a sentence embedding)"
    model_types = ("bert",)
    output_classes = ("BertModel",)
    # below the default: an adapter for a narrower family of BERT checkpoints, added as one more file, wins
    priority = -1
    architecture_fields = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                           "vocab_size", "max_position_embeddings", "type_vocab_size", "hidden_act",
                           "position_embedding_type")
    prefixes = ("bert.",)
    # a buffer (not a weight) that transformers 4 saved; transformers rebuilds it
    ignored = re.compile(r"^(bert\.)?embeddings\.position_ids$")
    heads = re.compile(r"^(classifier|cls|qa_outputs)\.")
    optional = re.compile(rf"^{re.escape(POOLER_PREFIX)}")
    pipeline_tag = "feature-extraction"
    tags = ("bert",)
    processor_class = "AutoTokenizer"
    side_files = (*TOKENIZER_FILES, *SENTENCE_TRANSFORMERS_FILES)
    qkv_key = QKV
    qkv_order = ("query", "key", "value")
    fused_qkv = FUSED_QKV
    example_import = ""
    example_inputs = 'processor(["A sentence to embed.", "Another one."], padding=True, return_tensors="pt")'

    def hub_metadata(self, files: frozenset[str]) -> tuple[str, tuple[str, ...]]:
        """``sentence-similarity`` (tagged ``sentence-transformers``) for a sentence-transformers folder."""
        if SENTENCE_TRANSFORMERS_MODULES in files:
            return "sentence-similarity", (*self.tags, "sentence-transformers")
        return self.pipeline_tag, tuple(self.tags)

    def is_matrix(self, canonical: str, shape: tuple[int, ...]) -> bool:
        """The linear layers' weights (and the pooler's); the embeddings are averaged like the LayerNorms."""
        return len(shape) == 2 and not canonical.startswith(EMBEDDINGS_PREFIX)

    def layer_and_type(self, key: str) -> tuple[str, str]:
        match = LAYER.match(self.canonical_key(key) or key)
        if match and match["module"] in LAYER_TYPES:
            return match["index"], LAYER_TYPES[match["module"]]
        return super().layer_and_type(key)

    def output_model(self, config: dict, keys: set[str]) -> OutputModel:
        from transformers import BertConfig, BertModel

        pooled = any(key.startswith(POOLER_PREFIX) for key in keys)
        bert_config = BertConfig.from_dict(self.config_fields(config, drop=TASK_FIELDS))
        return self.meta_output(BertModel, bert_config, **({} if pooled else {"add_pooling_layer": False}))

    def usage(self, config: dict, class_name: str, model_id: str, base_hub_id: str | None, local: bool,
              init_kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
        """The default snippet; a base that is not on the Hub left its tokenizer in the output folder."""
        pieces = super().usage(config, class_name, model_id, base_hub_id, local, init_kwargs)
        if not base_hub_id:
            pieces["processor"] = (f'AutoTokenizer.from_pretrained("{model_id}")  '
                                   "# the merge keeps the base's tokenizer files")
        return pieces

    def features(self, class_name: str, init_kwargs: dict[str, Any]) -> str:
        return ("(model(**inputs).last_hidden_state * inputs[\"attention_mask\"][..., None]).sum(1) / "
                "inputs[\"attention_mask\"].sum(1, keepdim=True)  # mean pooling")
