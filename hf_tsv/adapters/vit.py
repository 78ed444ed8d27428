"""ViT: ``ViTModel`` checkpoints, and the encoder of ``ViTForImageClassification`` fine-tunes.

Canonical keys drop the ``vit.`` prefix of the task models and are named as the installed transformers names them:
checkpoints saved by transformers 4 (``encoder.layer.N.attention.attention.query``...) are renamed on read, as
transformers itself renames them when it loads one. A classification head (``classifier.*``) is task-specific:
refused, or left out with ``--drop-heads``. The pooler (``pooler.dense``, which ``ViTForImageClassification``
lacks) is merged when every model has it; otherwise it is left out and the output is a ``ViTModel`` without a
pooler (``from_pretrained(..., add_pooling_layer=False)``).
"""

from __future__ import annotations

import re
from typing import Any

from .base import TASK_FIELDS, Adapter, OutputModel

# transformers 4 names → transformers 5 names, in this order (the layer prefix first)
LEGACY_NAMES = (
    (r"^encoder\.layer\.(\d+)\.", r"layers.\1."),
    (r"\.attention\.attention\.query\.", ".attention.q_proj."),
    (r"\.attention\.attention\.key\.", ".attention.k_proj."),
    (r"\.attention\.attention\.value\.", ".attention.v_proj."),
    (r"\.attention\.output\.dense\.", ".attention.o_proj."),
    (r"\.intermediate\.dense\.", ".mlp.fc1."),
    (r"\.output\.dense\.", ".mlp.fc2."),
)
POOLER_PREFIX = "pooler."
DEFAULT_IMAGE_SIZE = 224


class ViTAdapter(Adapter):
    """ViT encoders (``model_type`` ``vit``)."""

    name = "vit"
    title = "ViT"
    description = "ViT image encoders"
    purpose = "turns an image into a feature vector"
    model_types = ("vit",)
    output_classes = ("ViTModel",)
    architecture_fields = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                           "patch_size", "image_size", "num_channels", "hidden_act", "qkv_bias")
    prefixes = ("vit.",)
    renames = LEGACY_NAMES
    heads = re.compile(r"^(classifier|decoder)\.")
    optional = re.compile(rf"^{re.escape(POOLER_PREFIX)}")
    pipeline_tag = "image-feature-extraction"
    tags = ("vit",)
    processor_class = "ViTImageProcessor"

    def output_model(self, config: dict, keys: set[str]) -> OutputModel:
        from transformers import ViTConfig, ViTModel

        pooled = any(key.startswith(POOLER_PREFIX) for key in keys)
        vit_config = ViTConfig.from_dict(self.config_fields(config, drop=TASK_FIELDS))
        return self.meta_output(ViTModel, vit_config, **({} if pooled else {"add_pooling_layer": False}))

    def local_processor(self, config: dict) -> str:
        size = int(config.get("image_size") or DEFAULT_IMAGE_SIZE)
        return f'ViTImageProcessor(size={{"height": {size}, "width": {size}}})'

    def features(self, class_name: str, init_kwargs: dict[str, Any]) -> str:
        if init_kwargs.get("add_pooling_layer") is False:
            return "model(**inputs).last_hidden_state[:, 0]  # the [CLS] token"
        return "model(**inputs).pooler_output"
