"""Decoder LLMs: ``*ForCausalLM`` checkpoints of Llama, Mistral, Qwen2, Qwen3, Gemma 2 and Gemma 3 (its text-only
``gemma3_text`` model, ``Gemma3ForCausalLM``), merged into the base's class.

The SVD methods merge the attention projections (``q_proj``, ``k_proj``, ``v_proj``, ``o_proj``) and the MLP's
(``gate_proj``, ``up_proj``, ``down_proj``) of every layer; ``--fuse-qkv`` stacks q, k and v along their rows, so
grouped-query attention (k and v with fewer rows than q) fuses as it is and splits back by each key's rows. The
norms (``input_layernorm``, ``q_norm``...) and biases (Qwen2's q/k/v) are averaged. The token embeddings and
``lm_head`` (:attr:`LlamaFamilyAdapter.embeddings`) are merged as ``--embeddings`` says: averaged (default), merged as
matrices by the method (``tsv``) or kept from the base (``base``). A model whose config ties ``lm_head`` to the
embeddings (``tie_word_embeddings``) saves the embeddings once, and so does its merge.

Every input must keep the base's vocabulary: a fine-tune with added tokens is refused, its count named. STI tables
name the layers ``0``, ``1``... and the columns ``q_proj`` ... ``down_proj``. A merge keeps the base's tokenizer,
chat template and generation config, so the output loads with ``AutoTokenizer``/``AutoModelForCausalLM``.
"""

from __future__ import annotations

import re
from typing import Any

from ..files import LLM_TOKENIZER_FILES, TOKENIZER_FILES
from .base import TASK_FIELDS, Adapter, OutputModel

# model_type → the causal-LM class it is merged into (transformers' own names)
CAUSAL_LM_CLASSES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM",
                     "qwen3": "Qwen3ForCausalLM", "gemma2": "Gemma2ForCausalLM", "gemma3_text": "Gemma3ForCausalLM"}
EMBEDDINGS = re.compile(r"^(model\.embed_tokens|lm_head)\.weight$")
LM_HEAD = "lm_head.weight"
VOCAB_SIZE = "vocab_size"


def vocab_hint(value: int, base_value: int, what: str) -> str:
    """What a refusal of a fine-tune whose vocabulary differs from the base's says (``what``: where it differs).

    Example:
        >>> vocab_hint(32005, 32000, "it").split(";")[0]
        "it has 5 added tokens beyond the base's 32000"
    """
    difference = value - base_value
    counted = (f"{difference} added tokens beyond the base's {base_value}" if difference > 0
               else f"{-difference} fewer tokens than the base's {base_value}")
    return (f"{what} has {counted}; hf-tsv merges only fine-tunes that keep the base's vocabulary (resize the "
            f"fine-tune's embeddings to {base_value} tokens with resize_token_embeddings and save it again, or leave "
            "it out)")


class LlamaFamilyAdapter(Adapter):
    """Llama-family decoder LLMs (``*ForCausalLM``), merged into the base's causal-LM class."""

    name = "causal-lm"
    title = "decoder LLM"
    description = "decoder language models"
    purpose = "generates text"
    model_types = tuple(CAUSAL_LM_CLASSES)
    architectures = tuple(CAUSAL_LM_CLASSES.values())
    output_classes = architectures
    architecture_fields = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                           "num_key_value_heads", "head_dim", VOCAB_SIZE, "tie_word_embeddings", "hidden_act",
                           "hidden_activation", "attention_bias", "mlp_bias")
    heads = None  # lm_head is the model's own output, merged (see --embeddings); there is no task head
    embeddings = EMBEDDINGS
    stacks = {"model.": ""}  # model.layers.3.… → layer "3"
    pipeline_tag = "text-generation"
    tags = ("text-generation", "causal-lm")
    processor_class = "AutoTokenizer"
    side_files = (*TOKENIZER_FILES, *LLM_TOKENIZER_FILES)
    example_import = ""
    example_inputs = 'processor("The capital of France is", return_tensors="pt")'

    def mismatch_hint(self, name: str, value: Any, base_value: Any) -> str | None:
        """Added tokens, counted: in ``config.json``'s ``vocab_size`` or the rows of the embeddings."""
        if name == VOCAB_SIZE:
            return vocab_hint(int(value), int(base_value), "it")
        if self.is_embedding(name) and value[1:] == base_value[1:]:
            return vocab_hint(value[0], base_value[0], "it")
        if name == "tie_word_embeddings":
            return ("a model with lm_head tied to its embeddings and one with its own lm_head do not merge; merge "
                    "fine-tunes that tie it as the base does")
        return None

    def output_model(self, config: dict, keys: set[str]) -> OutputModel:
        import transformers

        model_type = config["model_type"]
        model_class = getattr(transformers, CAUSAL_LM_CLASSES[model_type])
        llm_config = transformers.CONFIG_MAPPING[model_type].from_dict(self.config_fields(config, drop=TASK_FIELDS))
        output = self.meta_output(model_class, llm_config)
        if LM_HEAD in keys or not getattr(llm_config, "tie_word_embeddings", False):
            return output
        # tied: lm_head is the embeddings' tensor, which transformers saves (and the merge writes) once
        names = {canonical: saved for canonical, saved in output.names.items() if canonical != LM_HEAD}
        return OutputModel(output.model_class, output.config, names, output.init_kwargs)

    def usage(self, config: dict, class_name: str, model_id: str, base_hub_id: str | None, local: bool,
              init_kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
        """Generation with ``AutoModelForCausalLM`` and the tokenizer the merge keeps (or the base's on the Hub)."""
        pieces = super().usage(config, class_name, model_id, base_hub_id, local, init_kwargs)
        pieces["loader_class"] = "AutoModelForCausalLM"
        if not base_hub_id:
            pieces["processor"] = (f'AutoTokenizer.from_pretrained("{model_id}")  '
                                   "# the merge keeps the base's tokenizer files")
        pieces["result_name"] = "text"
        return pieces

    def features(self, class_name: str, init_kwargs: dict[str, Any]) -> str:
        return "processor.decode(model.generate(**inputs, max_new_tokens=20)[0], skip_special_tokens=True)"
