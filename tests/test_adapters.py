"""Adapters (hf_tsv/adapters/): CLIP (vision tower or whole CLIPModel), SigLIP (vision tower or whole SiglipModel),
ViT and DINOv2 end to end — CLI merge equal to a float64 reference key by key, `hf-tsv sti` tables named by layer and
type, the model card, a push to the loopback Hub and a load back with ``AutoModel`` — plus task-specific heads,
checkpoints saved by transformers 4, mismatched architectures, and a new family added as one file.

Every checkpoint is a tiny random model generated here (``hf_tsv.synthetic.make_checkpoints`` with a config), with
the "gapped" spectrum, where float32 TSV-M is expected to match float64 (see tests/test_reference_methods.py).
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from conftest import copy_checkpoint, load_state, max_rel_diff
from hub_server import running_hub
from test_bad_input_table import assert_nothing_left, assert_one_line_error, run_cli
from test_reference_methods import TOLERANCE, ref_sti, ref_tsv_m, task_vectors

import hf_tsv
import hf_tsv.adapters
from hf_tsv.adapters import AdapterRegistry, adapter_names
from hf_tsv.cli import main
from hf_tsv.synthetic import make_checkpoints

ROOT = Path(__file__).resolve().parent.parent
F64 = torch.float64
VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=32,
              patch_size=8)
TEXT = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2, vocab_size=50,
            max_position_embeddings=16, bos_token_id=0, eos_token_id=1, pad_token_id=1)
DINOV2 = dict(hidden_size=32, mlp_ratio=2, num_hidden_layers=2, num_attention_heads=4, image_size=32, patch_size=8)


def _config(name: str, **overrides):
    import transformers

    if name == "CLIPConfig":
        return transformers.CLIPConfig(vision_config=VISION, text_config={**TEXT, **overrides}, projection_dim=8)
    if name == "SiglipConfig":
        return transformers.SiglipConfig(vision_config=VISION, text_config=TEXT)
    return getattr(transformers, name)(**{**(DINOV2 if name == "Dinov2Config" else VISION), **overrides})


@dataclass(frozen=True)
class Family:
    """One adapter's checkpoints and what its merge must look like."""

    config: str  # transformers config class of the inputs
    model_class: str  # of the inputs and the merged output
    pipeline_tag: str
    tag: str
    types: list[str]  # STI table columns, in order
    layers: list[str]  # STI table rows
    averaged: tuple[str, ...] = ()  # 2-D keys that are averaged, not merged as matrices
    config_overrides: dict = field(default_factory=dict)
    auto_class: bool = True  # AutoModel loads it as model_class (not so the vision model with projection)


ENCODER_TYPES = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]
TOWERS = ["text 0", "text 1", "vision 0", "vision 1"]
FAMILIES = {
    "clip-vision": Family("CLIPVisionConfig", "CLIPVisionModelWithProjection", "image-feature-extraction", "clip",
                          ENCODER_TYPES, ["0", "1"], auto_class=False),
    "clip": Family("CLIPConfig", "CLIPModel", "zero-shot-image-classification", "clip", ENCODER_TYPES, TOWERS),
    "siglip-vision": Family("SiglipVisionConfig", "SiglipVisionModel", "image-feature-extraction", "siglip",
                            ENCODER_TYPES, ["0", "1"]),
    "siglip": Family("SiglipConfig", "SiglipModel", "zero-shot-image-classification", "siglip", ENCODER_TYPES,
                     TOWERS),
    "vit": Family("ViTConfig", "ViTModel", "image-feature-extraction", "vit",
                  ["q_proj", "k_proj", "v_proj", "o_proj", "fc1", "fc2"], ["0", "1"]),
    "dinov2": Family("Dinov2Config", "Dinov2Model", "image-feature-extraction", "dinov2",
                     ["q_proj", "k_proj", "v_proj", "o_proj", "fc1", "fc2"], ["0", "1"],
                     averaged=("embeddings.mask_token",)),
}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> Callable[[str], dict]:
    """``checkpoints(family)``: a tiny base and 3 fine-tunes of that family (made once per module)."""
    made: dict[str, dict] = {}

    def get(name: str) -> dict:
        if name not in made:
            import transformers

            family = FAMILIES[name]
            made[name] = make_checkpoints(tmp_path_factory.mktemp(name), num_tasks=3, spectrum="gapped", seed=5,
                                          config=_config(family.config, **family.config_overrides),
                                          model_class=getattr(transformers, family.model_class))
        return made[name]

    return get


def reference_merge(paths: dict, method: str, averaged: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    """θ₀ + α·Δ in float64 for every key: TSV-M on the 2-D keys (but ``averaged``) and the mean of the task vectors
    on the others (α = 1), or task arithmetic (α = 0.3), from tests/test_reference_methods.py's definitions."""
    theta0, taus = task_vectors(paths)
    if method == "ta":
        return {k: theta0[k].to(F64) + 0.3 * tau.sum(0) for k, tau in taus.items()}
    return {k: theta0[k].to(F64) + (ref_tsv_m(tau) if tau.ndim == 3 and k not in averaged else tau.mean(0))
            for k, tau in taus.items()}


def assert_matches(merged: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], base: dict) -> None:
    """Every key's merged delta equals the reference delta (relative to its norm)."""
    assert merged.keys() == expected.keys()
    worst = {k: max_rel_diff(merged[k].to(F64) - base[k].to(F64), expected[k] - base[k].to(F64)) for k in expected}
    assert max(worst.values()) <= TOLERANCE, sorted(worst.items(), key=lambda kv: -kv[1])[:3]


def sti_table_lines(out: str) -> tuple[list[str], list[str]]:
    """The header cells and the row labels (``"0"``, ``"vision 1"``...) of the table `hf-tsv sti` printed; the
    lines with a colon (keys outside the layers, the total) are left out."""
    lines = [line.split() for line in out.splitlines() if line.strip() and ":" not in line]
    rows = [" ".join(words[:2]) if words[0] in ("text", "vision") else words[0] for words in lines[1:]]
    return lines[0], rows


# ---- every family, end to end -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(FAMILIES))
def test_family_merges_end_to_end(name, checkpoints, tmp_path, capsys):
    import transformers
    from huggingface_hub import ModelCard

    family, paths = FAMILIES[name], checkpoints(name)
    loader = transformers.AutoModel if family.auto_class else getattr(transformers, family.model_class)
    base = load_state(paths["base"])
    for method in ("tsv-m", "ta"):
        out = tmp_path / method
        assert main(["merge", paths["base"], *paths["tasks"], "-o", out, "--device", "cpu", "--method", method]) == 0
        report = json.loads((out / "merge_report.json").read_text())
        assert report["output"]["class"] == family.model_class and report["output"]["architecture"] == name
        assert_matches(load_state(out), reference_merge(paths, method, family.averaged), base)
    capsys.readouterr()

    assert main(["sti", paths["base"], *paths["tasks"], "--device", "cpu", "--json", tmp_path / "sti.json"]) == 0
    header, rows = sti_table_lines(capsys.readouterr().out)
    assert header == ["layer", *family.types, "layer", "total"] and rows == family.layers
    keys = json.loads((tmp_path / "sti.json").read_text())["keys"]
    _, taus = task_vectors(paths)
    assert set(keys) == {k for k, tau in taus.items() if tau.ndim == 3 and k not in family.averaged}  # 2-D keys
    worst = max(abs(value - ref_sti(taus[k])) / max(ref_sti(taus[k]), 1e-12) for k, value in keys.items())
    assert worst <= 1e-3

    repo = f"ns/{name}-merged"
    with running_hub(tmp_path / "hub"):
        hf_tsv.push_to_hub(tmp_path / "tsv-m", repo)
        card = ModelCard.load(repo)
        assert card.data.pipeline_tag == family.pipeline_tag
        assert card.data.tags == ["merge", "hf-tsv", "task-singular-vectors", family.tag, "tsv-m"]
        assert f'model = {family.model_class}.from_pretrained("{repo}").eval()' in card.text
        assert f"from transformers import {hf_tsv.adapters.get_adapter(name).processor_class}, " in card.text
        model = loader.from_pretrained(repo)
    assert type(model).__name__ == family.model_class
    local = load_state(tmp_path / "tsv-m")
    assert model.state_dict().keys() == local.keys()
    assert all(torch.equal(tensor, local[key]) for key, tensor in model.state_dict().items())


def test_the_registry_holds_one_adapter_per_family():
    assert adapter_names() == ["bert", "causal-lm", "clip", "clip-vision", "dinov2", "siglip", "siglip-vision",
                               "vit"]


def test_the_engine_names_no_architecture():
    source = (ROOT / "hf_tsv" / "engine.py").read_text(encoding="utf-8")
    for name in (r"\bclip", "siglip", r"\bvit\b", "dinov2", "vision_model", "text_model", r"q_proj", "projection"):
        assert not re.search(name, source, re.IGNORECASE), name


# ---- CLIP: both towers, or the vision tower ---------------------------------------------------------------------


def test_clip_models_merge_both_towers_or_the_vision_tower_alone(checkpoints):
    from transformers import CLIPModel, CLIPVisionModelWithProjection

    paths = checkpoints("clip")
    both = hf_tsv.merge(paths["base"], paths["tasks"], device="cpu")
    assert both.model_class is CLIPModel and both.report.keys["ignored_keys"] == 0
    assert {k for k in both.report.sti.keys if k.startswith("text_model.")}
    vision = hf_tsv.merge(paths["base"], paths["tasks"], device="cpu", architecture="clip-vision")
    assert vision.model_class is CLIPVisionModelWithProjection and vision.report.output.architecture == \
        "clip-vision"
    assert vision.report.keys["ignored_keys"] == sum(k.startswith(("text_model.", "text_projection.")) or
                                                        k == "logit_scale" for k in both.state_dict())
    full = both.state_dict()
    for key, tensor in vision.state_dict().items():  # per key, the same merge as inside the whole model
        torch.testing.assert_close(tensor, full[key], rtol=0, atol=0)
    assert isinstance(vision.to_model(), CLIPVisionModelWithProjection)


# ---- task-specific heads ----------------------------------------------------------------------------------------


def _classifier_fine_tunes(paths: dict, tmp: Path, prefix: str, head_width: int) -> list[Path]:
    """The fine-tunes of ``paths`` saved as ``*ForImageClassification`` (prefix, no pooler, a head of its own)."""
    folders = []
    for i, task in enumerate(paths["tasks"]):
        labels = 3 + i

        def edit(state, labels=labels):
            for key in [k for k in state if ".pooler." in k]:
                del state[key]
            state["classifier.weight"] = torch.randn(labels, head_width)
            state["classifier.bias"] = torch.zeros(labels)

        def config_edit(config, labels=labels):
            config["architectures"] = [config["architectures"][0].replace("Model", "ForImageClassification")]
            config["id2label"] = {str(j): f"class {j}" for j in range(labels)}
            config["label2id"] = {f"class {j}": j for j in range(labels)}

        folders.append(copy_checkpoint(task, tmp / f"cls_{i}", prefix=prefix, edit=edit, config_edit=config_edit))
    return folders


@pytest.mark.parametrize("name, prefix, head_width", [pytest.param("vit", "vit.", 32, id="ADP-09"),
                                                      pytest.param("dinov2", "dinov2.", 64, id="dinov2")])
def test_classification_heads_are_refused_or_dropped(name, prefix, head_width, checkpoints, tmp_path, capsys):
    from transformers import AutoModel

    paths = checkpoints(name)
    tuned = _classifier_fine_tunes(paths, tmp_path, prefix, head_width)
    code, err = run_cli(["merge", paths["base"], *tuned, "-o", tmp_path / "out", "--device", "cpu"], capsys)
    assert_one_line_error(code, err, r"model 'cls_0' \(.*model\.safetensors\): key 'classifier\.(weight|bias)' "
                          r"belongs to a task-specific head.*pass --drop-heads")
    assert_nothing_left(tmp_path)

    code, err = run_cli(["merge", paths["base"], *tuned, "-o", tmp_path / "out", "--device", "cpu",
                         "--drop-heads"], capsys)
    assert code == 0, err
    report = json.loads((tmp_path / "out" / "merge_report.json").read_text())
    assert "task-specific heads left out (--drop-heads): classifier.bias, classifier.weight" in report["notes"]
    plain = hf_tsv.merge(paths["base"], paths["tasks"], device="cpu").state_dict()
    merged = load_state(tmp_path / "out")
    assert not any("classifier" in k or "id2label" in k for k in merged)
    assert "id2label" not in json.loads((tmp_path / "out" / "config.json").read_text())
    for key, tensor in merged.items():  # the encoders merge as they do without the heads
        torch.testing.assert_close(tensor, plain[key], rtol=0, atol=0)
    if name == "vit":  # ViTForImageClassification has no pooler: the base's is left out, and loading says so
        assert report["output"]["init_kwargs"] == {"add_pooling_layer": False}
        assert any(n.startswith("pooler.dense.bias, pooler.dense.weight are not in every model; they are left out "
                                "and the output is a ViTModel (load it with add_pooling_layer=False)")
                   for n in report["notes"])
        card = hf_tsv.write_card(tmp_path / "out").text
        assert ".from_pretrained(\"out\", add_pooling_layer=False)" in card
        assert "model(**inputs).last_hidden_state[:, 0]" in card
        model = AutoModel.from_pretrained(tmp_path / "out", add_pooling_layer=False)
        assert model.pooler is None
        in_memory = hf_tsv.merge(paths["base"], tuned, device="cpu", drop_heads=True)
        assert in_memory.to_model().pooler is None
    else:
        model = AutoModel.from_pretrained(tmp_path / "out")
    assert model.state_dict().keys() == merged.keys()


# ---- checkpoints saved by transformers 4 ------------------------------------------------------------------------

LEGACY_NAMES = {  # transformers 5 name → transformers 4 name (what checkpoints on the Hub hold)
    "vit": [(r"^layers\.(\d+)\.", r"encoder.layer.\1."), (r"\.attention\.q_proj\.", ".attention.attention.query."),
            (r"\.attention\.k_proj\.", ".attention.attention.key."),
            (r"\.attention\.v_proj\.", ".attention.attention.value."),
            (r"\.attention\.o_proj\.", ".attention.output.dense."), (r"\.mlp\.fc1\.", ".intermediate.dense."),
            (r"\.mlp\.fc2\.", ".output.dense.")],
    "dinov2": [(r"\.attention\.q_proj\.", ".attention.attention.query."),
               (r"\.attention\.k_proj\.", ".attention.attention.key."),
               (r"\.attention\.v_proj\.", ".attention.attention.value."),
               (r"\.attention\.o_proj\.", ".attention.output.dense.")],
}


def _legacy(key: str, name: str) -> str:
    for pattern, replacement in LEGACY_NAMES[name]:
        key = re.sub(pattern, replacement, key)
    return key


def _save_legacy(src: str, dst: Path, name: str) -> Path:
    """A copy of checkpoint ``src`` with its keys as transformers 4 named them."""
    def rename(state: dict) -> None:
        renamed = {_legacy(k, name): v for k, v in state.items()}
        state.clear()
        state.update(renamed)

    return copy_checkpoint(src, dst, edit=rename)


@pytest.mark.parametrize("name", list(LEGACY_NAMES))
def test_checkpoints_saved_by_transformers_4_are_renamed(name, checkpoints, tmp_path, capsys):
    import transformers

    paths = checkpoints(name)
    model_class = getattr(transformers, FAMILIES[name].model_class)
    old = {"base": _save_legacy(paths["base"], tmp_path / "base", name),
           "tasks": [_save_legacy(task, tmp_path / f"old_{i}", name) for i, task in enumerate(paths["tasks"])]}
    assert any(".attention.attention.query." in k for k in load_state(old["base"]))
    loaded = model_class.from_pretrained(old["base"]).state_dict()  # transformers reads these names as the new ones
    assert all(torch.equal(loaded[k], v) for k, v in load_state(paths["base"]).items())

    new = hf_tsv.merge(paths["base"], paths["tasks"], device="cpu", fuse_qkv=True)
    legacy = hf_tsv.merge(old["base"], old["tasks"], output_dir=tmp_path / "out", device="cpu", fuse_qkv=True)
    assert legacy.state_dict().keys() == new.state_dict().keys()  # saved with the installed transformers' names
    assert all(torch.equal(legacy.state_dict()[k], v) for k, v in new.state_dict().items())
    assert list(legacy.report.sti.keys.values()) == list(new.report.sti.keys.values())
    assert main(["sti", old["base"], *old["tasks"], "--device", "cpu", "--fuse-qkv"]) == 0
    header, rows = sti_table_lines(capsys.readouterr().out)
    assert header == ["layer", "qkv_proj", "o_proj", "fc1", "fc2", "layer", "total"] and rows == ["0", "1"]
    assert type(transformers.AutoModel.from_pretrained(tmp_path / "out")) is model_class


# ---- mismatched architectures and bad options -------------------------------------------------------------------


def _other_family(checkpoints, name: str, tmp: Path) -> Path:
    return copy_checkpoint(checkpoints(name)["tasks"][0], tmp / "other")


@pytest.mark.parametrize("base, other, pattern", [
    pytest.param("vit", "dinov2", r"model 'other' \(config\.json\): config\.json has model_type 'dinov2'; "
                 r"hf_tsv's ViT adapter \(chosen by the base's config\) reads vit "
                 r"checkpoints; only fine-tunes of the same architecture merge", id="ADP-01"),
    pytest.param("clip", "siglip", r"model 'other' \(config\.json\): config\.json has model_type 'siglip'.*hf_tsv's "
                 r"CLIP vision adapter \(chosen by the base's config\) reads clip, clip_vision_model checkpoints",
                 id="ADP-02"),
])
def test_a_fine_tune_of_another_family(base, other, pattern, checkpoints, tmp_path, capsys):
    paths = checkpoints(base)
    code, err = run_cli(["merge", paths["base"], paths["tasks"][0], _other_family(checkpoints, other, tmp_path),
                         "-o", tmp_path / "out"], capsys)
    assert_one_line_error(code, err, pattern)
    assert_nothing_left(tmp_path)


@pytest.mark.parametrize("_row", [pytest.param(None, id="ADP-03")])
def test_a_base_no_adapter_reads(_row, tmp_path, capsys):
    from transformers import RobertaConfig, RobertaModel

    paths = make_checkpoints(tmp_path / "roberta", num_tasks=2, model_class=RobertaModel,
                             config=RobertaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                                  num_attention_heads=2, vocab_size=50, max_position_embeddings=16))
    code, err = run_cli(["merge", paths["base"], *paths["tasks"], "-o", tmp_path / "out"], capsys)
    assert_one_line_error(code, err, r"model 'base' \(config\.json\): config\.json has model_type 'roberta', which "
                          r"hf_tsv does not merge; it reads model_type bert, clip, "
                          r"clip_vision_model, dinov2, gemma2, gemma3_text, llama, mistral, qwen2, qwen3, siglip, "
                          r"siglip_vision_model, vit \(one adapter each in hf_tsv/adapters/\)")
    assert_nothing_left(tmp_path)


@pytest.mark.parametrize("_row", [pytest.param(None, id="ADP-04")])
def test_a_clip_fine_tune_with_another_text_tower(_row, checkpoints, tmp_path, capsys):
    paths = checkpoints("clip")
    deeper = make_checkpoints(tmp_path / "deeper", num_tasks=1, model_class=None,
                              config=_config("CLIPConfig", num_hidden_layers=3))["tasks"][0]
    other = Path(shutil.copytree(deeper, tmp_path / "other"))
    code, err = run_cli(["merge", paths["base"], paths["tasks"][0], other, "-o", tmp_path / "out"], capsys)
    assert_one_line_error(code, err, r"model 'other' \(config\.json\): text_config\.num_hidden_layers is 3 but the "
                          r"base has 2; only fine-tunes of the same architecture merge")
    assert_nothing_left(tmp_path)


@pytest.mark.parametrize("_row", [pytest.param(None, id="ADP-05")])
def test_unknown_architecture_is_refused_before_any_model_is_read(_row, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, err = run_cli(["merge", "someone/not-cached-base", "someone/a", "someone/b", "-o", tmp_path / "out",
                         "--architecture", "resnet"], capsys)
    assert_one_line_error(code, err, r"unknown architecture 'resnet' for architecture \(--architecture\); choose one "
                          r"of bert, causal-lm, clip, clip-vision, dinov2, siglip, siglip-vision, vit")
    assert_nothing_left(tmp_path)


@pytest.mark.parametrize("_row", [pytest.param(None, id="ADP-06")])
def test_an_architecture_that_does_not_read_the_inputs(_row, tiny, tmp_path, capsys):
    code, err = run_cli(["sti", tiny["base"], *tiny["tasks"], "--architecture", "clip"], capsys)
    assert_one_line_error(code, err, r"model 'base' \(config\.json\): config\.json has model_type "
                          r"'clip_vision_model'; hf_tsv's CLIP adapter "
                          r"\(--architecture clip\) reads clip checkpoints of CLIPModel")


@pytest.mark.parametrize("_row", [pytest.param(None, id="ADP-07")])
def test_drop_heads_must_be_a_bool(_row, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(hf_tsv.MergeInputError, match=r"drop_heads \(--drop-heads\) must be True or False, got str"):
        hf_tsv.merge("someone/not-cached-base", ["someone/a", "someone/b"], drop_heads="yes")


@pytest.mark.parametrize("_row", [pytest.param(None, id="ADP-08")])
def test_a_layout_hf_tsv_does_not_rename(_row, tmp_path, capsys):
    """DINOv2 giant checkpoints saved by transformers 4 fuse the SwiGLU gate and up projections in one key."""
    from transformers import Dinov2Model

    paths = make_checkpoints(tmp_path / "swiglu", num_tasks=2, model_class=Dinov2Model,
                             config=_config("Dinov2Config", use_swiglu_ffn=True))

    def fuse(state):
        for key in [k for k in state if ".mlp.gate_proj." in k]:
            up = key.replace("gate_proj", "up_proj")
            state[key.replace("gate_proj", "weights_in")] = torch.cat([state.pop(key), state.pop(up)])

    folders = [copy_checkpoint(p, tmp_path / Path(p).name, edit=fuse) for p in [paths["base"], *paths["tasks"]]]
    code, err = run_cli(["merge", *folders, "-o", tmp_path / "out"], capsys)
    assert_one_line_error(code, err, r"model 'base' \(.*\): key 'encoder\.layer\.0\.mlp\.weights_in\.(weight|bias)' "
                          r"is not part of a Dinov2Model; is this a DINOv2 checkpoint\? .*load the model with "
                          r"transformers and save it again")
    assert_nothing_left(tmp_path)


# ---- a new family is one file -----------------------------------------------------------------------------------


@pytest.fixture
def toy_adapter(tmp_path, monkeypatch) -> str:
    """tests/adapter_toy_bert.py dropped, as it is, into a folder of the adapters package's path; a fresh registry."""
    folder = tmp_path / "more_adapters"
    folder.mkdir()
    shutil.copy(ROOT / "tests" / "adapter_toy_bert.py", folder / "toy_bert.py")
    monkeypatch.setattr(hf_tsv.adapters, "__path__", [*hf_tsv.adapters.__path__, str(folder)])
    monkeypatch.setattr(hf_tsv.adapters, "ADAPTERS", AdapterRegistry())
    yield "toy-bert"
    sys.modules.pop("hf_tsv.adapters.toy_bert", None)


def test_an_adapter_is_one_file(toy_adapter, tmp_path, capsys):
    from transformers import AutoModel, BertConfig, BertModel

    assert toy_adapter in adapter_names()
    paths = make_checkpoints(tmp_path / "bert", num_tasks=3, spectrum="gapped", seed=3, model_class=BertModel,
                             config=BertConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                               num_attention_heads=2, vocab_size=50, max_position_embeddings=16))
    assert main(["merge", paths["base"], *paths["tasks"], "-o", tmp_path / "out", "--device", "cpu"]) == 0
    report = json.loads((tmp_path / "out" / "merge_report.json").read_text())
    assert report["output"] == {"class": "BertModel", "architecture": "toy-bert", "dtype": "float32"}
    assert_matches(load_state(tmp_path / "out"), reference_merge(paths, "tsv-m"), load_state(paths["base"]))
    assert type(AutoModel.from_pretrained(tmp_path / "out")) is BertModel
    capsys.readouterr()
    assert main(["sti", paths["base"], *paths["tasks"], "--device", "cpu", "--fuse-qkv"]) == 0
    header, rows = sti_table_lines(capsys.readouterr().out)
    assert header == ["layer", "qkv", "attn_out", "mlp_in", "mlp_out", "layer", "total"] and rows == ["0", "1"]
    card = hf_tsv.write_card(tmp_path / "out")
    assert "bert" in card.card.data.tags and "fine-tuned BERT text encoders" in card.text
