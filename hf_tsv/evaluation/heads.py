"""Frozen classification heads: one (C, D) matrix per task, applied to L2-normalised image embeddings.

Heads come from a text tower (class names × prompt templates, the CLIP zero-shot recipe) or from a saved
matrix, and are cached as safetensors (class names in the file's metadata), so every model evaluated on a
task, merged or fine-tuned, is scored with the same head.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import HFTSVError

CLIP_TEMPLATES = ["a photo of a {}.", "a good photo of a {}.", "a photo of the {}.", "itap of a {}."]


class EvalInputError(HFTSVError):
    """A task spec, dataset, head or model that evaluation cannot use (the message says what to change)."""


@dataclass
class TaskHead:
    """A frozen head: ``logits = normalize(image_embeds) @ weight.T`` (the logit scale is in ``weight``)."""

    weight: torch.Tensor  # (num_classes, embed_dim)
    class_names: list[str]

    def __post_init__(self):
        if self.weight.ndim != 2 or self.weight.shape[0] != len(self.class_names):
            raise EvalInputError(f"a head needs a (num_classes, dim) matrix with one row per class name; got "
                                 f"shape {list(self.weight.shape)} for {len(self.class_names)} class names")

    def logits(self, image_embeds: torch.Tensor) -> torch.Tensor:
        feats = torch.nn.functional.normalize(image_embeds.float(), dim=-1)
        return feats @ self.weight.to(feats.device, torch.float32).T


def text_head(encode_texts: Callable[[list[str]], torch.Tensor], class_names: Sequence[str],
              templates: Sequence[str], logit_scale: float = 100.0) -> TaskHead:
    """The zero-shot head of the CLIP recipe: every template filled with every class name and encoded, each
    embedding L2-normalised, averaged per class, normalised again, and scaled by ``logit_scale``.

    Example:
        >>> enc = lambda texts: torch.stack([torch.tensor([len(t), 1.0]) for t in texts])
        >>> text_head(enc, ["cat", "tiger"], ["a {}."]).weight.shape
        torch.Size([2, 2])
    """
    if not class_names:
        raise EvalInputError("a text head needs at least one class name")
    if not templates or any("{}" not in t for t in templates):
        raise EvalInputError(f"prompt templates must each contain '{{}}' for the class name; got {list(templates)}")
    rows = []
    with torch.no_grad():
        for name in class_names:
            emb = encode_texts([t.format(name) for t in templates]).float()
            emb = torch.nn.functional.normalize(emb, dim=-1).mean(dim=0)
            rows.append(torch.nn.functional.normalize(emb, dim=0))
    return TaskHead(torch.stack(rows) * float(logit_scale), list(class_names))


def save_heads(path: str | os.PathLike, heads: dict[str, TaskHead]) -> Path:
    """Write heads to one safetensors file (tensor per task, class names in the metadata), atomically."""
    from safetensors.torch import save

    from ..io.output import write_file_atomic

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    names = json.dumps({t: h.class_names for t, h in heads.items()})
    data = save({task: h.weight.float().contiguous().cpu() for task, h in heads.items()},
                metadata={"format": "pt", "hf_tsv_class_names": names})
    return write_file_atomic(path, data)


def load_heads(path: str | os.PathLike) -> dict[str, TaskHead]:
    """Read heads written by :func:`save_heads` (or any safetensors file of (C, D) matrices with class names
    in the ``hf_tsv_class_names`` metadata)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise EvalInputError(f"head file {str(path)!r} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            names = json.loads(meta.get("hf_tsv_class_names", "{}"))
            heads = {}
            for task in f.keys():
                if task not in names:
                    raise EvalInputError(f"{path.name}: head {task!r} has no class names in the "
                                         "'hf_tsv_class_names' metadata; write it with hf_tsv.evaluation.save_heads")
                heads[task] = TaskHead(f.get_tensor(task), list(names[task]))
    except EvalInputError:
        raise
    except Exception as exc:  # noqa: BLE001 - safetensors raises several types for a bad file
        raise EvalInputError(f"{path.name}: not a readable safetensors head file ({exc})") from exc
    return heads


class ClipTextEncoder:
    """The text tower of a full CLIP checkpoint (``CLIPModel``: folder or Hub id) as ``encode(texts)``, with
    its logit scale and visual projection (to score ``CLIPVisionModel`` outputs, which lack it).

    Example:
        >>> enc = ClipTextEncoder("openai/clip-vit-base-patch32")  # doctest: +SKIP
        >>> head = text_head(enc, ["cat", "dog"], CLIP_TEMPLATES, enc.logit_scale)  # doctest: +SKIP
    """

    def __init__(self, reference: str, *, device: str | torch.device = "cpu", batch_size: int = 256,
                 revision: str | None = None):
        from transformers import AutoTokenizer, CLIPModel

        from ..io.resolve import split_revision
        from ..progress import library_bars_off_main

        ref, rev = split_revision(str(reference), revision)
        try:
            with library_bars_off_main():
                self.model = CLIPModel.from_pretrained(ref, revision=rev).to(device).eval()
                self.tokenizer = AutoTokenizer.from_pretrained(ref, revision=rev)
        except Exception as exc:  # noqa: BLE001 - many causes, one message
            raise EvalInputError(f"cannot load a CLIP text tower from {ref!r}: a full CLIPModel checkpoint with "
                                 f"its tokenizer is needed for text heads ({type(exc).__name__}: {exc})") from exc
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.logit_scale = float(self.model.logit_scale.detach().exp())

    @property
    def visual_projection(self) -> torch.Tensor:
        return self.model.visual_projection.weight.detach().cpu()

    @torch.no_grad()
    def __call__(self, texts: list[str]) -> torch.Tensor:
        out = []
        for i in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(texts[i:i + self.batch_size], padding=True, truncation=True, return_tensors="pt")
            feats = self.model.get_text_features(**{k: v.to(self.device) for k, v in batch.items()})
            out.append(_as_tensor(feats, "text_embeds").cpu())
        return torch.cat(out)


def _as_tensor(output, attribute: str) -> torch.Tensor:
    """transformers 4 returns features as a tensor, transformers 5 may return a model output."""
    if isinstance(output, torch.Tensor):
        return output
    for name in (attribute, "pooler_output"):
        value = getattr(output, name, None)
        if isinstance(value, torch.Tensor):
            return value
    raise EvalInputError(f"unexpected output type {type(output).__name__} from the model")
