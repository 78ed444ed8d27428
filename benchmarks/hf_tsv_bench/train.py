"""Training for the offline benchmark: a small CLIP vision encoder, pretrained against a frozen text encoder,
then fine-tuned once per task with that task's frozen zero-shot head.

* :func:`pretrain` builds a ``CLIPVisionModelWithProjection`` from scratch (:func:`bench_vision_config`) and
  trains it "locked-text" style: the cosine between its ``image_embeds`` and the frozen MiniLM embedding of
  each image's caption, scaled, is the logit of a cross-entropy over the pool's classes. Because the text
  side never moves, a zero-shot head for any new class names is one call to the text encoder.
* :func:`finetune` trains a copy of the whole vision encoder (projection included) on one task while the
  task's zero-shot head stays fixed, as the TSV paper does; the task vector is the weight difference.

Everything is deterministic for a seed (model init from ``torch.manual_seed``, batches and augmentation from
a ``torch.Generator``) and runs on CPU by default; callers should keep torch at one thread on small machines.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

IMAGE_SIZE = 32
# CLIP's normalisation constants, so the benchmark's pixels look like any CLIP checkpoint's.
IMAGE_MEAN = (0.48145466, 0.4578275, 0.40821073)
IMAGE_STD = (0.26862954, 0.26130258, 0.27577711)
TEXT_DIM = 384  # MiniLM-L6's embedding size: the projection dimension of the vision encoder


def bench_vision_config(quick: bool = False, **overrides):
    """The benchmark's vision architecture: a 4-layer ViT (width 128, 4 heads) on 32x32 images, 384-d projection.

    Patches are 8x8 (a 4x4 grid + CLS): on one CPU core a training step costs ~3.3x less than with 4x4 patches,
    and in the pilot (benchmarks/bench_pilot.py) 1,500 pretraining steps with 8x8 patches gave a better base,
    better fine-tunes and better merges than 600 steps with 4x4 patches in half the time. ``quick`` halves the
    depth (2 layers) for the fast smoke build; ``overrides`` replace any field (e.g. ``patch_size=4``).
    """
    from transformers import CLIPVisionConfig

    fields = dict(image_size=IMAGE_SIZE, patch_size=8, num_channels=3, hidden_size=128, intermediate_size=512,
                  num_hidden_layers=2 if quick else 4, num_attention_heads=4, projection_dim=TEXT_DIM)
    fields.update(overrides)
    return CLIPVisionConfig(**fields)


def build_model(config=None, seed: int = 0):
    """A freshly initialised ``CLIPVisionModelWithProjection`` (init drawn from ``torch.manual_seed(seed)``)."""
    from transformers import CLIPVisionModelWithProjection

    config = config if config is not None else bench_vision_config()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPVisionModelWithProjection(config)
    return model


# ----------------------------------------------------------------------------------------------- pixels


def _normalise(x: torch.Tensor) -> torch.Tensor:
    """``(N, 3, H, W)`` floats in [0, 1] -> CLIP-normalised pixels."""
    mean = torch.tensor(IMAGE_MEAN, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGE_STD, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def _as_unit_float(images) -> torch.Tensor:
    """uint8 ``(N, H, W, 3)`` (numpy or torch) -> float32 ``(N, 3, H, W)`` in [0, 1]."""
    x = torch.as_tensor(np.asarray(images) if not isinstance(images, torch.Tensor) else images)
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"expected uint8 images shaped (N, H, W, 3), got {tuple(x.shape)}")
    if x.dtype != torch.uint8:
        raise ValueError(f"expected uint8 images, got {x.dtype}")
    return x.permute(0, 3, 1, 2).to(torch.float32) / 255.0


def pixel_values(images) -> torch.Tensor:
    """uint8 RGB ``(N, 32, 32, 3)`` -> the model's float32 ``pixel_values`` ``(N, 3, 32, 32)``.

    Identical to what :func:`image_processor` gives for the same images as 32x32 PIL images.
    """
    return _normalise(_as_unit_float(images)).contiguous()


def image_processor():
    """A transformers CLIP image processor that reproduces :func:`pixel_values` for 32x32 RGB images.

    The PIL-backed class is used when the installed transformers has one (transformers 5 names the
    torchvision-backed one ``CLIPImageProcessor`` and falls back to PIL with a warning when torchvision is
    absent); either way it saves as ``"image_processor_type": "CLIPImageProcessor"``.
    """
    try:
        from transformers import CLIPImageProcessorPil as cls
    except ImportError:  # transformers 4: CLIPImageProcessor is the PIL/numpy one
        from transformers import CLIPImageProcessor as cls
    return cls(size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
               do_resize=True, do_center_crop=True, do_rescale=True, rescale_factor=1 / 255, do_normalize=True,
               image_mean=list(IMAGE_MEAN), image_std=list(IMAGE_STD), do_convert_rgb=True)


# ----------------------------------------------------------------------------------------- augmentation


@dataclass(frozen=True)
class Augment:
    """Light augmentation of a batch of uint8 images: shifted crops, optional flips, colour jitter."""

    pad: int = 3  # random crop of the image padded by this many pixels (edge replication) on each side
    hflip: bool = False  # only where a mirrored image keeps its label (not digits, letters, text)
    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.2

    def __call__(self, images: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """uint8 ``(N, H, W, 3)`` tensor -> augmented, normalised ``pixel_values``."""
        x = _as_unit_float(images)
        n, _, h, w = x.shape
        if self.pad > 0:
            p = self.pad
            padded = F.pad(x, (p, p, p, p), mode="replicate")
            dy = torch.randint(0, 2 * p + 1, (n,), generator=gen)
            dx = torch.randint(0, 2 * p + 1, (n,), generator=gen)
            rows = (dy.view(n, 1) + torch.arange(h).view(1, h)).view(n, 1, h, 1).expand(n, 3, h, w + 2 * p)
            x = padded.gather(2, rows)
            cols = (dx.view(n, 1) + torch.arange(w).view(1, w)).view(n, 1, 1, w).expand(n, 3, h, w)
            x = x.gather(3, cols)
        if self.hflip:
            flip = torch.rand(n, generator=gen) < 0.5
            x = torch.where(flip.view(n, 1, 1, 1), x.flip(-1), x)
        if self.brightness > 0:
            x = x * _factors(n, self.brightness, gen)
        if self.contrast > 0:
            mean = x.mean(dim=(1, 2, 3), keepdim=True)
            x = (x - mean) * _factors(n, self.contrast, gen) + mean
        if self.saturation > 0:
            grey = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])
            x = (x - grey) * _factors(n, self.saturation, gen) + grey
        return _normalise(x.clamp(0.0, 1.0)).contiguous()


def _factors(n: int, strength: float, gen: torch.Generator) -> torch.Tensor:
    return (1.0 + (torch.rand(n, generator=gen) * 2 - 1) * strength).view(n, 1, 1, 1)


NO_AUGMENT = Augment(pad=0, hflip=False, brightness=0.0, contrast=0.0, saturation=0.0)

# ------------------------------------------------------------------------------------------- training


def _images_labels(data) -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.as_tensor(np.ascontiguousarray(data.images))
    labels = torch.as_tensor(np.asarray(data.labels), dtype=torch.long)
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"{images.shape[0]} images but {labels.shape[0]} labels")
    if images.shape[0] == 0:
        raise ValueError("no training images")
    return images, labels


def _batches(n: int, batch_size: int, steps: int, gen: torch.Generator):
    """``steps`` index batches drawn epoch by epoch from seeded permutations (a last short batch is topped up
    from the next permutation, so every batch has ``min(batch_size, n)`` items)."""
    batch_size = min(batch_size, n)
    order = torch.randperm(n, generator=gen)
    at = 0
    for _ in range(steps):
        if at + batch_size > n:
            rest = order[at:]
            order = torch.randperm(n, generator=gen)
            take = batch_size - len(rest)
            yield torch.cat([rest, order[:take]])
            at = take
        else:
            yield order[at:at + batch_size]
            at += batch_size


def cosine_schedule(step: int, steps: int, warmup: int, min_ratio: float = 0.0) -> float:
    """Linear warm-up to 1 over ``warmup`` steps, then a cosine decay to ``min_ratio`` at ``steps``."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def adamw_cosine(model: torch.nn.Module, *, lr: float, weight_decay: float, steps: int, warmup: int):
    """AdamW over ``model``'s trainable parameters (no weight decay on biases, norms and embeddings) and the
    :func:`cosine_schedule` driving its learning rate; returns ``(optimiser, scheduler)``, stepped once per step.

    Example:
        >>> optimiser, scheduler = adamw_cosine(torch.nn.Linear(2, 2), lr=1e-3, weight_decay=0.1, steps=10, warmup=1)
        >>> [group["weight_decay"] for group in optimiser.param_groups]
        [0.1, 0.0]
    """
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (decay if param.ndim >= 2 and "embedding" not in name else no_decay).append(param)
    optimiser = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.98), eps=1e-6)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda s: cosine_schedule(s, steps, warmup))
    return optimiser, scheduler


def head_matrix(head) -> torch.Tensor:
    """A head's ``(C, D)`` matrix: a tensor, or an object holding it as ``.weight`` (``TaskHead``)."""
    weight = getattr(head, "weight", head)
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"a head must be a (C, D) tensor or have one as .weight, got {type(head).__name__}")
    return weight.detach().to(torch.float32)


def _unit_head(head, logit_scale: float | None) -> torch.Tensor:
    head = head_matrix(head)
    return head if logit_scale is None else F.normalize(head, dim=-1) * logit_scale


def optimise(model: torch.nn.Module, batch_loss: Callable[[torch.Tensor, torch.Generator], torch.Tensor], n: int, *,
             steps: int, batch_size: int, lr: float, weight_decay: float, warmup: int, seed: int,
             grad_clip: float | None, history: list | None = None, log_every: int = 0,
             log: Callable[[str], None] | None = None, what: str = "train") -> torch.nn.Module:
    """The benchmark's one optimisation loop (image pretraining and fine-tuning, text fine-tuning): ``steps``
    steps of :func:`adamw_cosine` on ``model``; step ``i`` draws its example indices from ``n`` examples with
    :func:`_batches` and a generator seeded with ``seed``, and minimises ``batch_loss(indices, generator)`` (the
    same generator, for augmentation), gradients clipped to norm ``grad_clip`` if set. Per-step losses are
    appended to ``history``; every ``log_every`` steps ``log`` gets a line (``what``, the smoothed loss, the
    learning rate). Returns ``model``, trained in place.

    Example:
        >>> layer, x, y = torch.nn.Linear(2, 1), torch.randn(8, 2), torch.randn(8, 1)
        >>> loss = lambda index, gen: F.mse_loss(layer(x[index]), y[index])
        >>> optimise(layer, loss, 8, steps=3, batch_size=4, lr=0.1, weight_decay=0.0, warmup=1, seed=0,
        ...          grad_clip=1.0) is layer
        True
    """
    optimiser, scheduler = adamw_cosine(model, lr=lr, weight_decay=weight_decay, steps=steps, warmup=warmup)
    gen = torch.Generator().manual_seed(seed)
    started = time.perf_counter()
    running = None
    for step, index in enumerate(_batches(n, batch_size, steps, gen)):
        loss = batch_loss(index, gen)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimiser.step()
        scheduler.step()
        value = float(loss.detach())
        running = value if running is None else 0.9 * running + 0.1 * value
        if history is not None:
            history.append(value)
        if log is not None and log_every and ((step + 1) % log_every == 0 or step + 1 == steps):
            log(f"{what} step {step + 1}/{steps}  loss {running:.4f}  lr {scheduler.get_last_lr()[0]:.2e}  "
                f"{time.perf_counter() - started:.1f}s")
    return model


def _fit(model, head: torch.Tensor, images: torch.Tensor, labels: torch.Tensor, *, augment: Augment, device,
         **loop):
    """:func:`optimise` on ``model`` (moved to ``device``) with the cross-entropy of ``normalize(image_embeds) @
    head.T`` on augmented images; ``loop``: :func:`optimise`'s keyword arguments. Returns the model in eval mode."""
    device = torch.device(device)
    model.to(device).train()
    head = head.to(device)

    def batch_loss(index: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        x = augment(images[index], gen).to(device)
        y = labels[index].to(device)
        embeds = model(pixel_values=x).image_embeds
        return F.cross_entropy(F.normalize(embeds, dim=-1) @ head.T, y)

    return optimise(model, batch_loss, len(labels), **loop).eval()


def pretrain(pool, class_embeddings: torch.Tensor, *, steps: int = 1500, batch_size: int = 128, lr: float = 1e-3,
             seed: int = 0, weight_decay: float = 0.05, warmup: int | None = None, logit_scale: float = 50.0,
             config=None, augment: Augment | None = None, device: str | torch.device = "cpu",
             grad_clip: float | None = 1.0, history: list | None = None, log_every: int = 0,
             log: Callable[[str], None] | None = print):
    """Train a ``CLIPVisionModelWithProjection`` from scratch against frozen text embeddings ("locked text").

    ``class_embeddings`` ``(C, 384)`` are the text embeddings of ``pool.class_names`` (e.g. the prompt-averaged
    MiniLM embeddings); the loss is the cross-entropy of ``logit_scale * cos(image_embeds, text)`` over the
    classes. Returns the trained model in eval mode; per-step losses are appended to ``history`` if given.
    """
    images, labels = _images_labels(pool)
    class_embeddings = head_matrix(class_embeddings)
    if class_embeddings.ndim != 2 or class_embeddings.shape[0] != len(pool.class_names):
        raise ValueError(f"class_embeddings must be (C={len(pool.class_names)}, D), got "
                         f"{tuple(class_embeddings.shape)}")
    config = config if config is not None else bench_vision_config(projection_dim=class_embeddings.shape[1])
    if config.projection_dim != class_embeddings.shape[1]:
        raise ValueError(f"projection_dim {config.projection_dim} != text dim {class_embeddings.shape[1]}")
    model = build_model(config, seed)
    head = _unit_head(class_embeddings, logit_scale)
    warmup = max(1, steps // 20) if warmup is None else warmup
    return _fit(model, head, images, labels, steps=steps, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
                warmup=warmup, seed=seed + 1, augment=augment or Augment(), device=device, grad_clip=grad_clip,
                history=history, log_every=log_every, log=log, what="pretrain")


def finetune(model, head, train, *, steps: int = 200, batch_size: int = 64, lr: float = 3e-4,
             seed: int = 0, weight_decay: float = 0.1, warmup: int | None = None, augment: Augment | None = None,
             device: str | torch.device = "cpu", grad_clip: float | None = 1.0, history: list | None = None,
             log_every: int = 0, log: Callable[[str], None] | None = print):
    """Fine-tune a copy of the whole vision encoder on ``train`` with a FROZEN head ``(C, D)`` (a tensor or a
    ``TaskHead``; logits are
    ``normalize(image_embeds) @ head.T``, the head already carrying its logit scale). AdamW, warm-up + cosine
    schedule, augmentation. The input model is left untouched; the fine-tuned copy is returned in eval mode.
    """
    images, labels = _images_labels(train)
    head = head_matrix(head)
    if head.ndim != 2 or head.shape[0] != len(train.class_names):
        raise ValueError(f"head must be (C={len(train.class_names)}, D), got {tuple(head.shape)}")
    tuned = copy.deepcopy(model)
    tuned.requires_grad_(True)
    warmup = max(1, steps // 10) if warmup is None else warmup
    return _fit(tuned, _unit_head(head, None), images, labels, steps=steps, batch_size=batch_size, lr=lr,
                weight_decay=weight_decay, warmup=warmup, seed=seed, augment=augment or Augment(), device=device,
                grad_clip=grad_clip, history=history, log_every=log_every, log=log, what="finetune")


# ----------------------------------------------------------------------------------------- evaluation


@torch.no_grad()
def embed(model, images, *, batch_size: int = 256, device: str | torch.device | None = None) -> torch.Tensor:
    """L2-normalised ``image_embeds`` ``(N, D)`` of uint8 images (no augmentation)."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = []
    for start in range(0, len(images), batch_size):
        x = pixel_values(images[start:start + batch_size]).to(device)
        out.append(F.normalize(model(pixel_values=x).image_embeds.float(), dim=-1).cpu())
    model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, model.config.projection_dim)


def predict(model, head, images, *, batch_size: int = 256, device=None) -> torch.Tensor:
    """Predicted class indices: argmax of ``normalize(image_embeds) @ head.T``."""
    return (embed(model, images, batch_size=batch_size, device=device) @ head_matrix(head).cpu().T).argmax(-1)


def accuracy(model, head, data, batch_size: int = 256, device=None) -> float:
    """Top-1 accuracy of ``model`` with ``head`` on ``data`` (a ``LabeledImages``)."""
    labels = torch.as_tensor(np.asarray(data.labels), dtype=torch.long)
    if len(labels) == 0:
        return float("nan")
    return float((predict(model, head, data.images, batch_size=batch_size, device=device) == labels)
                 .float().mean())
