"""Evaluation layer: frozen heads, the shipped evaluate metric, α search and the eval CLI (all offline)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

datasets = pytest.importorskip("datasets")
pytest.importorskip("evaluate")

from PIL import Image  # noqa: E402

from hf_tsv import merge_linear  # noqa: E402
from hf_tsv.cli import main  # noqa: E402
from hf_tsv.evaluation import (  # noqa: E402
    EvalInputError,
    TaskHead,
    TasksConfig,
    TaskSpec,
    evaluate_model,
    load_heads,
    load_metric,
    load_tasks_spec,
    load_vision_model,
    parse_tasks_spec,
    pick_best,
    prepare_tasks,
    save_heads,
    search_alpha,
    text_head,
)
from hf_tsv.synthetic import make_checkpoints  # noqa: E402

CLASSES = ["cat", "dog", "car", "tree"]


def _images(n: int, seed: int, size: int = 32) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(n)]


def _dataset(images, labels, names) -> datasets.Dataset:
    feats = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=names)})
    return datasets.Dataset.from_dict({"image": images, "label": list(labels)}, features=feats)


def _save_processor(folder: Path, size: int = 32) -> None:
    from transformers import CLIPImageProcessor

    CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size}).save_pretrained(folder)


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory) -> Path:
    """A tiny random CLIPModel with a word-level tokenizer and an image processor, saved to a folder."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    from transformers import CLIPConfig, CLIPModel, PreTrainedTokenizerFast

    folder = tmp_path_factory.mktemp("tiny_clip")
    words = ["<pad>", "<unk>", "<s>", "</s>", "a", "photo", "of", "the", ".", *CLASSES]
    tok = Tokenizer(WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", bos_token="<s>",
                                   eos_token="</s>")
    fast.save_pretrained(folder)
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config=dict(vocab_size=len(words), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=16, eos_token_id=3, pad_token_id=0,
                         bos_token_id=2),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           image_size=32, patch_size=8),
        projection_dim=24)
    CLIPModel(config).eval().save_pretrained(folder)
    _save_processor(folder)
    return folder


def test_metric_module_loads_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_EVALUATE_OFFLINE", "1")
    metric = load_metric()
    out = metric.compute(predictions=[0, 1, 2, 2], references=[0, 1, 1, 2], finetuned_accuracy=80.0)
    assert out["accuracy"] == pytest.approx(75.0)
    assert out["normalized_accuracy"] == pytest.approx(75.0 / 80.0 * 100)
    assert "normalized_accuracy" not in metric.compute(predictions=[1], references=[1])


def test_text_head_matches_clip_recipe():
    table = {"a x": [1.0, 0.0], "the x": [0.0, 2.0], "a y": [0.0, 1.0], "the y": [0.0, 5.0]}
    head = text_head(lambda texts: torch.tensor([table[t] for t in texts]), ["x", "y"], ["a {}", "the {}"], 10.0)
    s = 2 ** -0.5
    assert torch.allclose(head.weight, torch.tensor([[10 * s, 10 * s], [0.0, 10.0]]))
    with pytest.raises(EvalInputError, match="contain"):
        text_head(lambda t: torch.ones(len(t), 2), ["x"], ["no placeholder"])


def test_heads_round_trip(tmp_path):
    heads = {"a": TaskHead(torch.randn(3, 5), ["p", "q", "r"]), "b": TaskHead(torch.randn(2, 5), ["u", "v"])}
    save_heads(tmp_path / "heads.safetensors", heads)
    back = load_heads(tmp_path / "heads.safetensors")
    assert back.keys() == heads.keys()
    for k in heads:
        assert torch.equal(back[k].weight, heads[k].weight) and back[k].class_names == heads[k].class_names


@pytest.mark.parametrize("as_vision_only", [False, True])
def test_eval_matches_direct_clip_computation(tiny_clip, tmp_path, as_vision_only):
    """Zero-shot accuracy from text heads equals argmax of CLIPModel's own logits_per_image."""
    from transformers import AutoTokenizer, CLIPImageProcessor, CLIPModel, CLIPVisionModel

    images = _images(24, seed=3)
    labels = [i % len(CLASSES) for i in range(24)]
    template = "a photo of the {} ."
    config = TasksConfig([TaskSpec("toy", _dataset(images, labels, CLASSES), templates=[template])],
                         text_model=str(tiny_clip), head_cache=str(tmp_path / "heads.safetensors"))
    prepared = prepare_tasks(config, None, progress=False)
    clip = CLIPModel.from_pretrained(tiny_clip).eval()
    if as_vision_only:
        vision_dir = tmp_path / "vision"
        CLIPVisionModel.from_pretrained(tiny_clip).save_pretrained(vision_dir)
        from hf_tsv.evaluation import projection_for

        model = load_vision_model(vision_dir)
        assert type(model).__name__ == "CLIPVisionModel"
        report = evaluate_model(model, prepared, projection=projection_for(model, config), progress=False)
    else:
        report = evaluate_model(load_vision_model(tiny_clip), prepared, progress=False)
    tok = AutoTokenizer.from_pretrained(tiny_clip)
    proc = CLIPImageProcessor.from_pretrained(tiny_clip)
    with torch.no_grad():
        out = clip(**tok([template.format(c) for c in CLASSES], padding=True, return_tensors="pt"),
                   pixel_values=proc(images=images, return_tensors="pt")["pixel_values"])
    expected = 100.0 * float((out.logits_per_image.argmax(-1) == torch.tensor(labels)).float().mean())
    assert report.tasks["toy"]["accuracy"] == pytest.approx(expected, abs=1e-9)
    assert report.tasks["toy"]["num_examples"] == 24
    assert (tmp_path / "heads.safetensors").is_file()  # the text heads were cached
    assert load_heads(tmp_path / "heads.safetensors")["toy"].class_names == CLASSES


def test_pick_best_prefers_the_smaller_alpha_on_ties():
    assert pick_best({0.3: 50.0, 0.6: 70.0, 0.9: 70.0}) == 0.6


@pytest.fixture(scope="module")
def strong_tasks(tmp_path_factory) -> dict:
    """Tiny CLIPVisionModels whose fine-tunes move the features a lot (so α matters)."""
    out = tmp_path_factory.mktemp("strong")
    paths = make_checkpoints(out, preset="tiny", num_tasks=2, relative_size=0.3, seed=5)
    for folder in [paths["base"], *paths["tasks"]]:
        _save_processor(Path(folder))
    return paths


def _features(model, images) -> torch.Tensor:
    from transformers import CLIPImageProcessor

    pixels = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})(
        images=images, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        return model(pixel_values=pixels).pooler_output


def _prototype_head(model, anchors, scale: float = 50.0) -> TaskHead:
    """A head whose rows are the centred features of ``anchors`` under ``model`` (so classes are balanced)."""
    feats = torch.nn.functional.normalize(_features(model, anchors), dim=-1)
    rows = torch.nn.functional.normalize(feats - feats.mean(0), dim=-1) * scale
    return TaskHead(rows, [f"c{i}" for i in range(len(anchors))])


def _labelled_by(model, head: TaskHead, images) -> list[int]:
    labels = head.logits(_features(model, images)).argmax(-1).tolist()
    assert len(set(labels)) >= 3, "degenerate labelling: the test would not test anything"
    return labels


def test_alpha_search_finds_the_alpha_that_labelled_the_data(strong_tasks, tmp_path):
    linear = merge_linear(strong_tasks["base"], strong_tasks["tasks"], method="ta", device="cpu")
    truth = 0.6
    head = _prototype_head(linear.to_model(truth), _images(6, seed=8))
    images = _images(60, seed=7)
    labels = _labelled_by(linear.to_model(truth), head, images)
    save_heads(tmp_path / "h.safetensors", {"toy": head})
    spec = TaskSpec("toy", _dataset(images, labels, head.class_names), split="validation",
                    validation_split="validation", head=str(tmp_path / "h.safetensors"))
    prepared = prepare_tasks(TasksConfig([spec]), strong_tasks["base"], splits=("validation",), progress=False)
    grid = [0.2, 0.4, 0.6, 0.8, 1.0]
    search = search_alpha(linear, prepared, grid=grid, progress=False)
    assert search.best_alpha == truth
    assert search.validation[truth].mean_accuracy == 100.0
    assert search.criterion == "absolute"  # no fine-tuned reference was given
    assert max(search.score(a) for a in grid if a != truth) < 100.0


def test_cli_merge_alpha_search_and_eval(strong_tasks, tmp_path, capsys):
    """End to end: datasets on disk, heads in a file, `merge --alpha search --eval` then `eval`."""
    torch.manual_seed(2)
    heads, tasks = {}, []
    for t, ft in enumerate(strong_tasks["tasks"]):
        head = _prototype_head(load_vision_model(ft), _images(4, seed=30 + t))
        heads[f"task{t}"] = head
        images = _images(40, seed=20 + t)
        labels = _labelled_by(load_vision_model(ft), head, images)  # the fine-tune is right by construction
        ds = datasets.DatasetDict({"validation": _dataset(images[:20], labels[:20], head.class_names),
                                   "test": _dataset(images[20:], labels[20:], head.class_names)})
        ds.save_to_disk(str(tmp_path / f"data{t}"))
        tasks.append({"name": f"task{t}", "dataset": f"disk:data{t}", "validation_split": "validation",
                      "head": "heads.safetensors"})
    save_heads(tmp_path / "heads.safetensors", heads)
    (tmp_path / "tasks.json").write_text(json.dumps({"image_processor": strong_tasks["base"], "tasks": tasks}))
    out = tmp_path / "merged"
    code = main(["merge", strong_tasks["base"], *strong_tasks["tasks"], "-o", str(out), "--method", "ta",
                 "--alpha", "search", "--alpha-grid", "0.25:1:0.25", "--eval", str(tmp_path / "tasks.json"),
                 "--threads", "1"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "<- best" in printed
    results = json.loads((out / "eval_results.json").read_text())
    sweep = json.loads((out / "eval_alpha_search.json").read_text())
    report = json.loads((out / "merge_report.json").read_text())
    assert report["alpha"] == results["alpha"] == sweep["best_alpha"]
    best = max(s["mean_normalized_accuracy"] for s in sweep["sweep"])
    assert [s["alpha"] for s in sweep["sweep"]] == [0.25, 0.5, 0.75, 1.0]
    assert min(s["alpha"] for s in sweep["sweep"] if s["mean_normalized_accuracy"] == best) == sweep["best_alpha"]
    # the fine-tunes define the labels, so their reference accuracy is 100% and normalised = absolute
    for scores in results["tasks"].values():
        assert scores["normalized"] == pytest.approx(scores["absolute"])
    # the card shows the evaluation
    from hf_tsv.card import build_card

    card_text = build_card(out)[0].text
    assert "task0" in card_text and "No evaluation was run" not in card_text
    assert f"at α = {results['alpha']} chosen by the mean normalized validation accuracy" in card_text
    # `hf-tsv eval` on the written merge reproduces the test accuracies
    code = main(["eval", str(out), "--tasks", str(tmp_path / "tasks.json"), "--json", str(tmp_path / "e.json"),
                 "--finetuned", *strong_tasks["tasks"]])
    assert code == 0
    again = json.loads((tmp_path / "e.json").read_text())
    for name, scores in results["tasks"].items():
        assert again["tasks"][name]["accuracy"] == pytest.approx(scores["absolute"], abs=1e-3)
        assert again["tasks"][name]["normalized_accuracy"] == pytest.approx(100.0 * scores["absolute"] / 100.0,
                                                                            abs=1e-3)


def test_spec_errors_name_the_file_and_key(tmp_path):
    bad = tmp_path / "spec.json"
    bad.write_text(json.dumps({"tasks": [{"name": "a", "dataset": "x", "colour": 1}]}))
    with pytest.raises(EvalInputError, match=r"spec.json: tasks\[0\]: unknown key 'colour'"):
        load_tasks_spec(bad)
    with pytest.raises(EvalInputError, match="'dataset' is required"):
        parse_tasks_spec({"tasks": [{"name": "a"}]})
    with pytest.raises(EvalInputError, match="used twice"):
        parse_tasks_spec({"tasks": [{"name": "a", "dataset": "x"}, {"name": "a", "dataset": "y"}]})
    cfg = parse_tasks_spec({"tasks": [{"name": "a", "dataset": "disk:d"}]}, root=tmp_path)
    assert cfg.tasks[0].dataset == f"disk:{tmp_path / 'd'}"
    with pytest.raises(EvalInputError, match="no 'validation_split'"):
        prepare_tasks(TasksConfig([TaskSpec("a", _dataset(_images(2, 0), [0, 1], ["p", "q"]),
                                            head=str(tmp_path / "none.safetensors"))]),
                      None, splits=("validation",), progress=False)


def test_cli_merge_eval_at_a_fixed_alpha_needs_no_validation_split(strong_tasks, tmp_path, capsys):
    head = _prototype_head(load_vision_model(strong_tasks["tasks"][0]), _images(4, seed=40))
    images = _images(20, seed=41)
    labels = _labelled_by(load_vision_model(strong_tasks["tasks"][0]), head, images)
    datasets.DatasetDict({"test": _dataset(images, labels, head.class_names)}).save_to_disk(str(tmp_path / "d"))
    save_heads(tmp_path / "h.safetensors", {"only": head})
    (tmp_path / "t.json").write_text(json.dumps({"image_processor": strong_tasks["base"], "tasks": [
        {"name": "only", "dataset": "disk:d", "head": "h.safetensors"}]}))
    out = tmp_path / "m"
    with pytest.warns(UserWarning, match="only absolute accuracy"):  # 1 task for 2 models: nothing to pair
        assert main(["merge", strong_tasks["base"], *strong_tasks["tasks"], "-o", str(out), "--method", "ta",
                     "--alpha", "0.7", "--eval", str(tmp_path / "t.json"), "--threads", "1"]) == 0
    assert "at α=0.7;" in capsys.readouterr().out
    results = json.loads((out / "eval_results.json").read_text())
    assert "alpha_selection" not in results and not (out / "eval_alpha_search.json").exists()
    assert json.loads((out / "merge_report.json").read_text())["alpha"] == 0.7
    assert results["tasks"]["only"]["normalized"] is None
    expected = evaluate_model(load_vision_model(out), prepare_tasks(load_tasks_spec(tmp_path / "t.json"), None,
                                                                    progress=False), progress=False)
    assert results["tasks"]["only"]["absolute"] == pytest.approx(expected.tasks["only"]["accuracy"], abs=1e-3)
