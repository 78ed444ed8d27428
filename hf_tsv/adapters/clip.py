"""Key rules for CLIP vision encoders (CLIPVisionModel, CLIPVisionModelWithProjection, CLIPModel).

Canonical keys are the vision tower's keys without the ``vision_model.`` prefix (transformers 5 saves a bare
CLIPVisionModel that way; transformers 4, CLIPVisionModelWithProjection and CLIPModel add the prefix). The
text tower of a CLIPModel is ignored; ``visual_projection.weight`` is merged when every model has it.
"""

from __future__ import annotations

import re

import torch

from ..errors import MergeInputError

MODEL_TYPES = ("clip", "clip_vision_model")
PREFIX = "vision_model."
PROJECTION_KEY = "visual_projection.weight"
IGNORED = re.compile(r"^(text_model\.|text_projection\.|logit_scale$)")
QKV = re.compile(r"^(?P<layer>.*\.self_attn\.)(?P<which>[qkv])_proj\.weight$")
# Fields that must agree for two checkpoints to be the same architecture.
ARCHITECTURE_FIELDS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                       "patch_size", "image_size", "num_channels", "hidden_act")


class ClipVisionAdapter:
    """Normalises, classifies and groups the keys of CLIP vision checkpoints."""

    name = "clip-vision"

    @staticmethod
    def vision_config(config: dict, who: str) -> dict:
        """The vision config dict of a CLIP checkpoint's config.json; refuse other architectures."""
        model_type = config.get("model_type")
        if model_type not in MODEL_TYPES:
            raise MergeInputError(f"{who}: config.json has model_type {model_type!r}; hf_tsv's CLIP adapter "
                                  f"reads {', '.join(MODEL_TYPES)} checkpoints")
        if model_type == "clip":
            vision = dict(config.get("vision_config") or {})
            vision.setdefault("projection_dim", config.get("projection_dim", 512))
            return vision
        return dict(config)

    @staticmethod
    def canonical_key(key: str) -> str | None:
        """``vision_model.encoder...`` → ``encoder...``; text-tower keys → None (not merged)."""
        if IGNORED.match(key):
            return None
        return key[len(PREFIX):] if key.startswith(PREFIX) else key

    @staticmethod
    def is_matrix(key: str, shape: tuple[int, ...]) -> bool:
        """2-D tensors are matrix keys: the linear weights, the position embedding and the projection."""
        return len(shape) == 2

    @staticmethod
    def qkv_groups(keys: list[str]) -> dict[str, list[str]]:
        """``{"...self_attn.qkv_proj.weight": [q, k, v]}`` for every layer that has all three."""
        found: dict[str, dict[str, str]] = {}
        for key in keys:
            match = QKV.match(key)
            if match:
                found.setdefault(match["layer"] + "qkv_proj.weight", {})[match["which"]] = key
        return {name: [parts[w] for w in "qkv"] for name, parts in found.items() if len(parts) == 3}

    @staticmethod
    def output_model(vision_config: dict, with_projection: bool) -> tuple[type, object, dict[str, str]]:
        """The transformers class and config of the merged model, and canonical key → saved key.

        The saved names are whatever the installed transformers' class itself uses, read from a model built
        on the meta device, so output loads with ``from_pretrained`` in that version.
        """
        from transformers import CLIPVisionConfig, CLIPVisionModel, CLIPVisionModelWithProjection

        cls = CLIPVisionModelWithProjection if with_projection else CLIPVisionModel
        fields = {k: v for k, v in vision_config.items()
                  if k not in ("architectures", "model_type", "transformers_version", "torch_dtype", "dtype")}
        config = CLIPVisionConfig(**fields)
        config.architectures = [cls.__name__]
        with torch.device("meta"):
            model = cls(config)
        names = {}
        for saved in model.state_dict():
            names[ClipVisionAdapter.canonical_key(saved)] = saved
        return cls, config, names


ADAPTERS = {"clip-vision": ClipVisionAdapter}
