"""DINOv2: ``Dinov2Model`` checkpoints, and the encoder of ``Dinov2ForImageClassification`` fine-tunes.

Canonical keys drop the ``dinov2.`` prefix of the task models and are named as the installed transformers names
them (transformers 4 names such as ``attention.attention.query`` are renamed on read). The SwiGLU MLP of the giant
models saved by transformers 4 (one fused ``mlp.weights_in``) is not renamed: re-save such a checkpoint with
transformers 5 first. A classification head (``classifier.*``) is task-specific: refused, or left out with
``--drop-heads``. ``embeddings.mask_token`` (one row, used only for masked pre-training) is averaged, not merged as
a matrix.
"""

from __future__ import annotations

from .base import TASK_FIELDS, Adapter, OutputModel

# transformers 4 names → transformers 5 names
LEGACY_NAMES = (
    (r"\.attention\.attention\.query\.", ".attention.q_proj."),
    (r"\.attention\.attention\.key\.", ".attention.k_proj."),
    (r"\.attention\.attention\.value\.", ".attention.v_proj."),
    (r"\.attention\.output\.dense\.", ".attention.o_proj."),
    (r"\.mlp\.weights_out\.", ".mlp.down_proj."),
)
MASK_TOKEN = "embeddings.mask_token"


class Dinov2Adapter(Adapter):
    """DINOv2 encoders (``model_type`` ``dinov2``)."""

    name = "dinov2"
    title = "DINOv2"
    description = "DINOv2 image encoders"
    purpose = "turns an image into a feature vector"
    model_types = ("dinov2",)
    output_classes = ("Dinov2Model",)
    architecture_fields = ("hidden_size", "mlp_ratio", "num_hidden_layers", "num_attention_heads", "patch_size",
                           "image_size", "num_channels", "hidden_act", "use_swiglu_ffn", "qkv_bias")
    prefixes = ("dinov2.",)
    renames = LEGACY_NAMES
    pipeline_tag = "image-feature-extraction"
    tags = ("dinov2",)
    processor_class = "BitImageProcessor"

    def is_matrix(self, canonical: str, shape: tuple[int, ...]) -> bool:
        return canonical != MASK_TOKEN and super().is_matrix(canonical, shape)

    def output_model(self, config: dict, keys: set[str]) -> OutputModel:
        from transformers import Dinov2Config, Dinov2Model

        return self.meta_output(Dinov2Model, Dinov2Config.from_dict(self.config_fields(config, drop=TASK_FIELDS)))

    def local_processor(self, config: dict) -> str:
        return ('BitImageProcessor(size={"shortest_edge": 256}, crop_size={"height": 224, "width": 224}, '
                "image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])  # DINOv2's preprocessing")
