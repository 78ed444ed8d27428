"""SigLIP: the vision tower alone (``SiglipVisionModel``) or whole ``SiglipModel``s.

* :class:`SiglipVisionAdapter` reads any SigLIP checkpoint and merges its vision tower (with its attention-pooling
  head, ``head.*``, part of the encoder rather than a task head); canonical keys drop ``vision_model.``, so
  ``SiglipVisionModel`` checkpoints saved by transformers 4 and 5 and ``SiglipModel`` checkpoints mix.
* :class:`SiglipAdapter` merges both towers of ``SiglipModel`` checkpoints (and the logit scale and bias) into a
  ``SiglipModel``; it is chosen when every input is one (``--architecture siglip-vision``: the vision tower alone).

The pooling head's ``attention.in_proj_weight`` is a q/k/v matrix fused by ``torch.nn.MultiheadAttention``: it is
merged as one matrix, as ``--fuse-qkv`` would stack it.
"""

from __future__ import annotations

import re
from typing import Any

from .base import Adapter, OutputModel, prefixed_fields

VISION_PREFIX = "vision_model."
VISION_FIELDS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "patch_size",
                 "image_size", "num_channels", "hidden_act", "vision_use_head")
TEXT_FIELDS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size",
               "max_position_embeddings", "hidden_act", "projection_size")
DEFAULT_IMAGE_SIZE = 224


def _image_processor(config: dict) -> str:
    size = int(config.get("image_size") or DEFAULT_IMAGE_SIZE)
    return f'SiglipImageProcessor(size={{"height": {size}, "width": {size}}})'


def _vision_config(config: dict) -> dict:
    """The vision config of a SigLIP ``config.json`` (a ``SiglipConfig``'s ``vision_config``), or the config itself."""
    return dict(config.get("vision_config") or {}) if config.get("model_type") == "siglip" else dict(config)


class SiglipVisionAdapter(Adapter):
    """The vision tower of any SigLIP checkpoint."""

    name = "siglip-vision"
    title = "SigLIP vision"
    description = "SigLIP image encoders"
    purpose = "turns an image into a feature vector"
    model_types = ("siglip", "siglip_vision_model")
    output_classes = ("SiglipVisionModel",)
    architecture_fields = VISION_FIELDS
    prefixes = (VISION_PREFIX,)
    ignored = re.compile(r"^(text_model\.|logit_scale$|logit_bias$)")
    pipeline_tag = "image-feature-extraction"
    tags = ("siglip",)
    processor_class = "SiglipImageProcessor"

    def architecture(self, config: dict) -> dict[str, Any]:
        return super().architecture(_vision_config(config))

    def output_model(self, config: dict, keys: set[str]) -> OutputModel:
        from transformers import SiglipVisionConfig, SiglipVisionModel

        vision = SiglipVisionConfig.from_dict(self.config_fields(_vision_config(config)))
        return self.meta_output(SiglipVisionModel, vision)

    def local_processor(self, config: dict) -> str:
        return _image_processor(_vision_config(config))


class SiglipAdapter(Adapter):
    """Whole ``SiglipModel`` checkpoints: both towers, the logit scale and bias."""

    name = "siglip"
    title = "SigLIP"
    description = "SigLIP models (image and text towers)"
    purpose = "embeds images and texts in one space"
    model_types = ("siglip",)
    architectures = ("SiglipModel",)
    output_classes = ("SiglipModel",)
    priority = 1  # preferred to the vision tower alone when every input is a SiglipModel
    stacks = {VISION_PREFIX: "vision", "text_model.": "text"}
    pipeline_tag = "zero-shot-image-classification"
    tags = ("siglip",)
    processor_class = "SiglipImageProcessor"

    def architecture(self, config: dict) -> dict[str, Any]:
        return {**prefixed_fields("vision_config.", config.get("vision_config") or {}, VISION_FIELDS),
                **prefixed_fields("text_config.", config.get("text_config") or {}, TEXT_FIELDS)}

    def output_model(self, config: dict, keys: set[str]) -> OutputModel:
        from transformers import SiglipConfig, SiglipModel

        return self.meta_output(SiglipModel, SiglipConfig.from_dict(self.config_fields(config)))

    def local_processor(self, config: dict) -> str:
        return _image_processor(_vision_config(config))

    def features(self, class_name: str, init_kwargs: dict[str, Any]) -> str:
        return "model.vision_model(**inputs).pooler_output  # the image embedding"
