"""Shared fixtures: tiny CLIP checkpoints generated from configs (no downloads, HF_HUB_OFFLINE=1)."""

from __future__ import annotations

import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

# One thread: the CI machine has 2 cores, and 2 busy-waiting threads ran 5-10x slower here.
torch.set_num_threads(1)

from hf_tsv.synthetic import make_checkpoints  # noqa: E402

TINY = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=32,
            patch_size=8)


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> dict:
    """A tiny base and 3 fine-tunes (noise spectrum), as transformers 5 saves a CLIPVisionModel."""
    return make_checkpoints(tmp_path_factory.mktemp("tiny"), preset="tiny", num_tasks=3, seed=1)


@pytest.fixture(scope="session")
def tiny_gapped(tmp_path_factory) -> dict:
    return make_checkpoints(tmp_path_factory.mktemp("tiny_gapped"), preset="tiny", num_tasks=3,
                            spectrum="gapped", seed=2)


def load_state(folder: str | Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    state = {}
    for file in sorted(Path(folder).glob("*.safetensors")):
        state.update(load_file(str(file)))
    return state


def save_state(state: dict, config: dict, folder: Path, name: str = "model.safetensors") -> Path:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / name), metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def copy_checkpoint(src: str | Path, dst: Path, *, prefix: str = "", edit=None, config_edit=None) -> Path:
    """Copy a checkpoint, optionally renaming keys with ``prefix`` and editing the state/config."""
    state = {prefix + k: v for k, v in load_state(src).items()}
    config = json.loads((Path(src) / "config.json").read_text())
    if edit:
        edit(state)
    if config_edit:
        config_edit(config)
    return save_state(state, config, dst)


def max_rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))
