"""CLIP: the vision tower alone (``CLIPVisionModel``, ``CLIPVisionModelWithProjection``) or whole ``CLIPModel``s.

* :class:`ClipVisionAdapter` reads any CLIP checkpoint and merges its vision tower. Canonical keys are the tower's
  keys without ``vision_model.`` (transformers 5 saves a bare ``CLIPVisionModel`` that way; transformers 4,
  ``CLIPVisionModelWithProjection`` and ``CLIPModel`` add the prefix), so these layouts mix in one merge. A text
  tower is ignored; ``visual_projection.weight`` is merged when every model has it (the output is then a
  ``CLIPVisionModelWithProjection``).
* :class:`ClipAdapter` merges both towers and both projections of ``CLIPModel`` checkpoints into a ``CLIPModel``.
  It is chosen when every input is a ``CLIPModel``; ``--architecture clip-vision`` merges their vision tower alone.
"""

from __future__ import annotations

import re
from typing import Any

from .base import Adapter, OutputModel, prefixed_fields

VISION_PREFIX = "vision_model."
PROJECTION_KEY = "visual_projection.weight"
# Fields of a tower's config that must agree for two checkpoints to be the same architecture.
VISION_FIELDS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "patch_size",
                 "image_size", "num_channels", "hidden_act")
TEXT_FIELDS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size",
               "max_position_embeddings", "hidden_act")
DEFAULT_IMAGE_SIZE = 224


def _image_processor(size: int) -> str:
    return (f'CLIPImageProcessor(size={{"shortest_edge": {size}}}, crop_size={{"height": {size}, '
            f'"width": {size}}})')


class ClipVisionAdapter(Adapter):
    """The vision tower of any CLIP checkpoint (today's CLIP behaviour, unchanged)."""

    name = "clip-vision"
    title = "CLIP vision"
    description = "CLIP image encoders"
    purpose = "turns an image into a feature vector"
    model_types = ("clip", "clip_vision_model")
    output_classes = ("CLIPVisionModel", "CLIPVisionModelWithProjection")
    architecture_fields = VISION_FIELDS
    prefixes = (VISION_PREFIX,)
    ignored = re.compile(r"^(text_model\.|text_projection\.|logit_scale$)")
    optional = re.compile(rf"^{re.escape(PROJECTION_KEY)}$")
    pipeline_tag = "image-feature-extraction"
    tags = ("clip",)
    processor_class = "CLIPImageProcessor"

    @staticmethod
    def vision_config(config: dict) -> dict:
        """The vision config of a CLIP ``config.json`` (a ``CLIPConfig``'s ``vision_config``, with the model's
        ``projection_dim``: the one ``visual_projection`` has, whatever default the saved vision config carries),
        or the config itself for a vision model."""
        if config.get("model_type") == "clip":
            vision = dict(config.get("vision_config") or {})
            vision["projection_dim"] = config.get("projection_dim", vision.get("projection_dim", 512))
            return vision
        return dict(config)

    def architecture(self, config: dict) -> dict[str, Any]:
        return super().architecture(self.vision_config(config))

    def output_model(self, config: dict, keys: set[str]) -> OutputModel:
        from transformers import CLIPVisionConfig, CLIPVisionModel, CLIPVisionModelWithProjection

        cls = CLIPVisionModelWithProjection if PROJECTION_KEY in keys else CLIPVisionModel
        return self.meta_output(cls, CLIPVisionConfig(**self.config_fields(self.vision_config(config))))

    def local_processor(self, config: dict) -> str:
        return _image_processor(int(self.vision_config(config).get("image_size") or DEFAULT_IMAGE_SIZE))

    def features(self, class_name: str, init_kwargs: dict[str, Any]) -> str:
        output = "image_embeds" if class_name == "CLIPVisionModelWithProjection" else "pooler_output"
        return f"model(**inputs).{output}"


class ClipAdapter(Adapter):
    """Whole ``CLIPModel`` checkpoints: both towers, both projections and the logit scale."""

    name = "clip"
    title = "CLIP"
    description = "CLIP models (image and text towers)"
    purpose = "embeds images and texts in one space"
    model_types = ("clip",)
    architectures = ("CLIPModel",)
    output_classes = ("CLIPModel",)
    priority = 1  # preferred to the vision tower alone when every input is a CLIPModel
    stacks = {VISION_PREFIX: "vision", "text_model.": "text"}
    pipeline_tag = "zero-shot-image-classification"
    tags = ("clip",)
    processor_class = "CLIPImageProcessor"

    def architecture(self, config: dict) -> dict[str, Any]:
        return {**prefixed_fields("vision_config.", config.get("vision_config") or {}, VISION_FIELDS),
                **prefixed_fields("text_config.", config.get("text_config") or {}, TEXT_FIELDS),
                **prefixed_fields("", config, ("projection_dim",))}

    def output_model(self, config: dict, keys: set[str]) -> OutputModel:
        from transformers import CLIPConfig, CLIPModel

        return self.meta_output(CLIPModel, CLIPConfig.from_dict(self.config_fields(config)))

    def local_processor(self, config: dict) -> str:
        return _image_processor(int((config.get("vision_config") or {}).get("image_size") or DEFAULT_IMAGE_SIZE))

    def features(self, class_name: str, init_kwargs: dict[str, Any]) -> str:
        return "model.visual_projection(model.vision_model(**inputs).pooler_output)  # the image embedding"
