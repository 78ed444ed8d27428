"""Synthetic checkpoints for examples, tests and benchmarks: CLIP vision models by default, or any transformers
model given its config and class.

A randomly initialised :class:`~transformers.CLIPVisionModel` (or ``model_class(config)``) is the base; each
"fine-tuned" model adds a perturbation of about ``relative_size`` (default 1e-3) of each weight's norm. Two spectra
are offered:

* ``"noise"``: a few strong directions plus a Gaussian noise bulk. k = floor(r/T) falls inside the flat
  bulk, where TSV-M is ill-conditioned (like real fine-tuning, see ``method.md``).
* ``"gapped"``: each task matrix has rank exactly k = floor(r/T) plus noise 1e-4 times smaller, so its
  spectrum has a clear gap at k and the kept singular vectors are well defined.

Example:
    >>> from hf_tsv.synthetic import make_checkpoints
    >>> paths = make_checkpoints("/tmp/tsv-example", preset="tiny", num_tasks=3)  # doctest: +SKIP
    >>> paths["base"], paths["tasks"][0]  # doctest: +SKIP
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import MergeInputError
from .io.output import write_json

PRESETS: dict[str, dict] = {
    "tiny": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                 image_size=32, patch_size=8),
    "small": dict(hidden_size=128, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
                  image_size=32, patch_size=4),
    "vit-b-32": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                     image_size=224, patch_size=32),
    "vit-b-16": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                     image_size=224, patch_size=16),
    "vit-l-14": dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                     image_size=224, patch_size=14),
}
SPECTRA = ("noise", "gapped")


@dataclass(frozen=True)
class _Perturbation:
    relative_size: float
    spectrum: str
    num_tasks: int
    signal_rank: int


def _perturb(weight: torch.Tensor, spec: _Perturbation, gen: torch.Generator) -> torch.Tensor:
    """Return a perturbation of ``weight`` whose Frobenius norm is ``relative_size * ||weight||``."""
    w = weight.float()
    scale = spec.relative_size * float(w.norm())
    if w.ndim != 2:
        noise = torch.randn(w.shape, generator=gen)
        return noise * (scale / max(float(noise.norm()), 1e-30))
    m, n = w.shape
    r = min(m, n)
    if spec.spectrum == "gapped":
        rank = max(1, r // spec.num_tasks)
        noise_share = 1e-4
    else:
        rank = min(spec.signal_rank, r)
        noise_share = 0.5
    left = torch.randn(m, rank, generator=gen)
    right = torch.randn(rank, n, generator=gen)
    # Decaying strengths make the top singular values distinct.
    strengths = torch.linspace(1.0, 0.5, rank)
    signal = (left * strengths) @ right
    signal = signal / signal.norm()
    noise = torch.randn(m, n, generator=gen)
    noise = noise / noise.norm()
    delta = (1 - noise_share) * signal + noise_share * noise
    return delta * (scale / float(delta.norm()))


def _save(state: dict[str, torch.Tensor], config, folder: Path) -> None:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "model.safetensors"),
              metadata={"format": "pt"})
    config.save_pretrained(str(folder))


def make_checkpoints(
    out_dir: str | os.PathLike,
    *,
    preset: str = "tiny",
    num_tasks: int = 3,
    spectrum: str = "noise",
    relative_size: float = 1e-3,
    signal_rank: int = 8,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    config_overrides: dict | None = None,
    config=None,
    model_class: type | None = None,
) -> dict:
    """Write a base and ``num_tasks`` fine-tuned CLIPVisionModel folders under ``out_dir``; with ``config`` (a
    transformers config) and ``model_class`` (default: ``AutoModel``'s class for it), models of that architecture
    instead of the ``preset``.

    Models are generated one at a time, so memory stays near two models whatever ``num_tasks`` is.
    Returns ``{"base": path, "tasks": [paths...]}``; the folders are ``base/`` and ``task_00/``... .

    Example:
        >>> from transformers import ViTConfig, ViTModel
        >>> vit = ViTConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        ...                 image_size=16, patch_size=8)
        >>> paths = make_checkpoints("/tmp/tsv-vit", config=vit, model_class=ViTModel)  # doctest: +SKIP
    """
    if preset not in PRESETS:
        raise MergeInputError(f"unknown preset {preset!r} (--preset); choose one of {', '.join(sorted(PRESETS))}")
    if spectrum not in SPECTRA:
        raise MergeInputError(f"unknown spectrum {spectrum!r}; choose one of {', '.join(SPECTRA)}")
    if isinstance(num_tasks, bool) or not isinstance(num_tasks, int) or num_tasks < 1:
        raise MergeInputError(f"num_tasks (--num-tasks) must be a whole number of at least 1, got {num_tasks!r}")
    out = Path(out_dir)
    if config is None:
        from transformers import CLIPVisionConfig, CLIPVisionModel

        config = CLIPVisionConfig(**{**PRESETS[preset], **(config_overrides or {})})
        model_class = CLIPVisionModel
    elif model_class is None:
        from transformers import AutoModel

        with torch.device("meta"):
            model_class = type(AutoModel.from_config(config))
    config.architectures = [model_class.__name__]
    torch.manual_seed(seed)
    base_state = {k: v.detach().to(dtype).contiguous() for k, v in model_class(config).state_dict().items()}
    _save(base_state, config, out / "base")
    spec = _Perturbation(relative_size, spectrum, num_tasks, signal_rank)
    tasks = []
    for t in range(num_tasks):
        state = {}
        for i, (key, w) in enumerate(base_state.items()):
            gen = torch.Generator().manual_seed(seed * 1_000_003 + t * 10_007 + i + 1)
            state[key] = (w.float() + _perturb(w, spec, gen)).to(dtype)
        folder = out / f"task_{t:02d}"
        _save(state, config, folder)
        tasks.append(str(folder))
        del state
    info = {"preset": preset, "num_tasks": num_tasks, "spectrum": spectrum, "relative_size": relative_size,
            "signal_rank": signal_rank, "seed": seed, "dtype": str(dtype).removeprefix("torch.")}
    write_json(out / "synthetic.json", info)
    return {"base": str(out / "base"), "tasks": tasks}
