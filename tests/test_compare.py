"""`hf-tsv compare` / hf_tsv.compare: every method side by side, on tiny CLIP checkpoints and a tiny task spec."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

datasets = pytest.importorskip("datasets")
pytest.importorskip("evaluate")

from conftest import load_state  # noqa: E402
from test_bad_input_table import assert_nothing_left, assert_one_line_error, run_cli  # noqa: E402
from test_evaluation import _dataset, _images, _labelled_by, _prototype_head, _save_processor  # noqa: E402

import hf_tsv  # noqa: E402
from hf_tsv.cli import main  # noqa: E402
from hf_tsv.compare import choose_best  # noqa: E402
from hf_tsv.compare_result import CompareResult, MethodComparison, Scores  # noqa: E402
from hf_tsv.core.delta_stats import delta_statistics  # noqa: E402
from hf_tsv.errors import MergeInputError  # noqa: E402
from hf_tsv.evaluation import load_tasks_spec, load_vision_model, save_heads  # noqa: E402
from hf_tsv.evaluation.evaluator import Evaluator  # noqa: E402
from hf_tsv.synthetic import make_checkpoints  # noqa: E402


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    return make_compare_inputs(tmp_path_factory.mktemp("compare"))


def make_compare_inputs(root: Path) -> dict:
    """Two tiny CLIPVisionModels whose fine-tunes move the features a lot, and a task spec on disk whose labels
    each fine-tune gets right by construction (so α and the method matter): ``{"base", "tasks", "spec"}``."""
    paths = make_checkpoints(root / "models", preset="tiny", num_tasks=2, relative_size=0.3, seed=5)
    for folder in [paths["base"], *paths["tasks"]]:
        _save_processor(Path(folder))
    torch.manual_seed(2)
    heads, tasks = {}, []
    for t, ft in enumerate(paths["tasks"]):
        head = _prototype_head(load_vision_model(ft), _images(4, seed=30 + t))
        heads[f"task{t}"] = head
        images = _images(40, seed=20 + t)
        labels = _labelled_by(load_vision_model(ft), head, images)
        ds = datasets.DatasetDict({"validation": _dataset(images[:20], labels[:20], head.class_names),
                                   "test": _dataset(images[20:], labels[20:], head.class_names)})
        ds.save_to_disk(str(root / f"data{t}"))
        tasks.append({"name": f"task{t}", "dataset": f"disk:data{t}", "validation_split": "validation",
                      "head": "heads.safetensors"})
    save_heads(root / "heads.safetensors", heads)
    (root / "tasks.json").write_text(json.dumps({"image_processor": paths["base"], "tasks": tasks}))
    return {"base": paths["base"], "tasks": paths["tasks"], "spec": root / "tasks.json"}


GRID = "0.25:1:0.25"


@pytest.fixture(scope="module")
def compared(setup, tmp_path_factory) -> tuple[CompareResult, Path]:
    """`compare` with evaluation, two methods, keeping the best merge."""
    out = tmp_path_factory.mktemp("cmp") / "best"
    steps = []
    result = hf_tsv.compare(setup["base"], setup["tasks"], methods=["ta", "tsv-m"], evaluator=setup["spec"],
                            alpha_grid=GRID, output_dir=out, keep_best=True, progress=False,
                            on_step=lambda row, step: steps.append((row, step)))
    result.steps = steps
    return result, out


def test_compare_scores_as_merge_alpha_search_does(setup, compared):
    """One scoring path: compare's α, validation sweep and test accuracies are those of `merge --alpha search`."""
    from hf_tsv.evaluation.select import merge_with_alpha_search

    result, _ = compared
    assert [e.method for e in result.entries] == ["finetuned", "zero-shot", "ta", "tsv-m"]
    config = load_tasks_spec(setup["spec"])
    for name in ("ta", "tsv-m"):
        _, search, test = merge_with_alpha_search(setup["base"], setup["tasks"], config, method=name, grid=GRID,
                                                  progress=False)
        entry = result[name]
        assert entry.alpha == search.best_alpha and entry.alpha_selection == "validation"
        assert entry.sweep == search.to_dict()["sweep"]
        assert entry.test.absolute == test.mean_accuracy and entry.test.normalized == test.mean_normalized_accuracy
        assert entry.validation == search.score(search.best_alpha)
    finetuned = result["finetuned"]
    assert finetuned.test.normalized == 100.0 and finetuned.test.absolute == 100.0  # labels made by the fine-tunes
    assert result["zero-shot"].test.normalized == result["zero-shot"].test.absolute
    assert result["tsv-m"].sti["total"] > 0 and result["tsv-m"].sti["per_layer"]
    assert result["ta"].sti is None
    assert result["tsv-m"].default_alpha == 1.0 and result["tsv-m"].at_default_alpha is not None
    for entry in result.methods:
        assert entry.seconds > 0 and entry.delta["frobenius_norm"] > 0 and entry.delta["matrix_keys"] > 0
    # per-method progress is observable: each method's steps, in order
    assert [s for r, s in result.steps if r == "tsv-m"] == ["merge", "alpha search", "test"]


def test_best_is_chosen_on_validation_never_on_test():
    def row(name, validation, test):
        return MethodComparison(name, name, validation=validation,
                                test=Scores("test", test, test, {"t": {"absolute": test, "normalized": test}}))

    entries = [row("ta", 80.0, 99.0), row("tsv-m", 90.0, 50.0), row("avg", 70.0, 100.0)]
    assert choose_best(entries) == "tsv-m"
    assert choose_best([row("ta", None, 99.0)]) is None
    assert choose_best([row("ta", 90.0, 1.0), row("tsv-m", 90.0, 2.0)]) == "ta"  # a tie keeps the first listed


def test_keep_best_is_an_ordinary_merge_folder_with_the_table_in_its_card(setup, compared, tmp_path):
    from hub_server import running_hub

    from hf_tsv.card import build_card

    result, out = compared
    best = result[result.best]
    assert result.best == choose_best(result.entries) and result.kept == out.name
    report = json.loads((out / "merge_report.json").read_text())
    assert report["method"] == best.method and report["alpha"] == best.alpha
    merged = hf_tsv.merge(setup["base"], setup["tasks"], method=best.method, alpha=best.alpha, device="cpu")
    kept = load_state(out)
    for key, tensor in merged.state_dict().items():
        assert torch.allclose(kept[key], tensor, atol=1e-6), key
    evals = json.loads((out / "eval_results.json").read_text())
    assert evals["alpha"] == best.alpha
    assert {t: v["absolute"] for t, v in evals["tasks"].items()} == pytest.approx(
        {t: v["absolute"] for t, v in best.test.per_task.items()}, abs=1e-4)
    saved = CompareResult.load(out)
    assert saved.to_dict() == json.loads(json.dumps(result.to_dict()))
    card = build_card(out)[0].text
    assert "## Comparison of merge methods" in card and result.table().splitlines()[0] in card
    assert "**(best)**" in card
    with running_hub(tmp_path / "hub") as hub:
        hf_tsv.push_to_hub(out, "ns/best-merge")
        (commit,) = hub.repos["ns/best-merge"].commits
    assert {"compare.json", "compare.md", "model.safetensors", "merge_report.json", "README.md"} <= set(commit.files)
    # the kept folder is an hf-tsv output: --overwrite may replace it
    assert main(["merge", setup["base"], *setup["tasks"], "-o", out, "--overwrite", "--device", "cpu"]) == 0


class _StubEvaluator:
    """An Evaluator that is not CLIP: it knows which model it loaded and predicts 6 examples of class 0, getting 5
    right with a fine-tuned model, 2 with the base and 3 with anything else (a merge)."""

    def __init__(self, base, finetuned):
        self.task_names = ["a", "b"]
        self.correct = {str(base): 2, **{str(f): 5 for f in finetuned}}

    def load_model(self, reference):
        model = load_vision_model(reference)
        model.stub_reference = str(reference)
        return model

    def predictions(self, model, task, split):
        right = self.correct.get(getattr(model, "stub_reference", None), 3)
        return [0] * right + [1] * (6 - right), [0] * 6


def test_evaluator_stub_is_scored_through_the_one_metric(setup):
    stub = _StubEvaluator(setup["base"], setup["tasks"])
    assert isinstance(stub, Evaluator)
    rows = list(hf_tsv.iter_compare(setup["base"], setup["tasks"], methods="avg,tsv-m", evaluator=stub,
                                    alpha_grid=[0.5, 1.0], progress=False))
    assert [r.method for r in rows] == ["finetuned", "zero-shot", "avg", "tsv-m"]
    own = 100.0 * 5 / 6
    assert rows[0].test.absolute == own
    # each fine-tune is its own reference: exactly 100 (the metric's 100·a/a gives 99.99999999999999 here)
    assert rows[0].test.normalized == 100.0 and rows[0].test.per_task["a"]["normalized"] == 100.0
    assert rows[1].test.normalized == 100.0 * (100.0 * 2 / 6) / own  # normalised by the fine-tune's accuracy
    for row in rows[2:]:
        assert row.test.absolute == 50.0 and row.test.normalized == 100.0 * 50.0 / own
        assert row.validation == 100.0 * 50.0 / own and row.criterion == "normalized"
    assert rows[3].alpha == 0.5  # equal scores: the smaller α
    assert rows[2].alpha is None  # averaging has no α


def test_without_evaluator_sti_and_weight_statistics_only(setup, tmp_path, capsys):
    out = tmp_path / "cmp"
    code = main(["compare", setup["base"], *setup["tasks"], "-o", out, "--methods", "tsv-m,ta", "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    data = json.loads((out / "compare.json").read_text())
    assert [e["method"] for e in data["entries"]] == ["tsv-m", "ta"] and data["best"] is None
    tsvm, ta = data["entries"]
    assert tsvm["test"] is None and tsvm["alpha"] == 1.0 and ta["alpha"] == 0.3
    assert tsvm["alpha_selection"] == "default" and tsvm["sti"]["total"] > 0
    assert (out / "compare.md").read_text().startswith("| method |")
    assert (out / "compare_sti_per_layer.png").read_bytes()[:4] == b"\x89PNG"
    assert "| TSV-M |" in capsys.readouterr().out
    code, err = run_cli(["compare", setup["base"], *setup["tasks"], "-o", out, "--methods", "ta"], capsys)
    assert_one_line_error(code, err, "exists and is not empty; pass --overwrite")
    assert main(["compare", setup["base"], *setup["tasks"], "-o", out, "--methods", "ta", "--overwrite"]) == 0
    assert [e["method"] for e in json.loads((out / "compare.json").read_text())["entries"]] == ["ta"]


def test_delta_statistics():
    rank_one = torch.outer(torch.arange(1.0, 5.0), torch.ones(3))
    stats = delta_statistics({"w": rank_one, "b": torch.ones(2)}, alpha=2.0)
    assert stats["matrix_keys"] == 1
    assert stats["mean_stable_rank"] == pytest.approx(1.0)
    assert stats["frobenius_norm"] == pytest.approx(2.0 * (float(rank_one.pow(2).sum()) + 2.0) ** 0.5)
    assert delta_statistics({"w": torch.eye(5)})["mean_stable_rank"] == pytest.approx(5.0)


def test_peak_memory_sees_an_allocation():
    """In a fresh process: a long test session's allocator may hand back pages it already holds, which raise no
    RSS (the measure is "RSS above the start", documented as such in docs/compare.md)."""
    import subprocess
    import sys

    code = ("import time, torch\n"
            "from hf_tsv.compare import PeakMemory\n"
            "with PeakMemory() as peak:\n"
            "    block = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched\n"
            "    block += 1\n"
            "    time.sleep(0.05)\n"
            "    del block\n"
            "print(peak.bytes)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    measured = done.stdout.strip().splitlines()[-1]
    if measured == "None":
        pytest.skip("no /proc on this system")
    assert int(measured) >= 48 * 2**20


def _fail_if_merged(monkeypatch):
    import sys

    merge_module = sys.modules["hf_tsv.merge"]  # the module (hf_tsv.merge is the function)

    def refuse(*args, **kwargs):
        raise AssertionError("bad input must be refused before any merge")

    monkeypatch.setattr(merge_module, "merge_linear", refuse)


BAD_CLI = [
    pytest.param(["--methods", "tsv-m,nope"], "unknown method 'nope'", id="CMP-01"),
    pytest.param(["--methods", "ta,ta"], "names 'ta' twice", id="CMP-02"),
    pytest.param(["--methods", ""], "empty", id="CMP-03"),
    pytest.param(["--keep-best"], "needs an evaluator", id="CMP-04"),
    pytest.param(["--alpha-grid", "0.1,0.5"], "only applies to an α search", id="CMP-05"),
    pytest.param(["--tsvc"], "needs an evaluator", id="CMP-06"),
    pytest.param(["--eval", "missing.json", "--alpha-grid", "1:0:0.1"], "stop >= start", id="CMP-07"),
    pytest.param(["--ties-density", "2"], "ties_density", id="CMP-08"),
    pytest.param(["--eval", "missing.json"], "does not exist", id="CMP-09"),
    pytest.param(["--eval", "SPEC", "--alpha", "default", "--keep-best"], "needs an evaluator", id="CMP-10"),
]


@pytest.mark.parametrize("extra, pattern", BAD_CLI)
def test_bad_cli_input(extra, pattern, setup, tmp_path, capsys, monkeypatch):
    _fail_if_merged(monkeypatch)
    extra = [str(setup["spec"]) if a == "SPEC" else a for a in extra]
    code, err = run_cli(["compare", setup["base"], *setup["tasks"], "-o", tmp_path / "out", *extra], capsys)
    assert_one_line_error(code, err, pattern)
    assert_nothing_left(tmp_path)


@pytest.mark.parametrize("where, pattern", [
    pytest.param("inside", "lies inside input", id="CMP-11"),
    pytest.param("foreign", "is not an hf-tsv output", id="CMP-12"),
])
def test_bad_output_folder(where, pattern, setup, tmp_path, capsys, monkeypatch):
    _fail_if_merged(monkeypatch)
    if where == "inside":
        out = Path(setup["base"]) / "comparison"
    else:
        out = tmp_path / "out"
        out.mkdir()
        (out / "mine.txt").write_text("keep me")
    code, err = run_cli(["compare", setup["base"], *setup["tasks"], "-o", out, "--overwrite"], capsys)
    assert_one_line_error(code, err, pattern)
    assert not (Path(setup["base"]) / "comparison").exists()
    if where == "foreign":
        assert (out / "mine.txt").read_text() == "keep me"


@pytest.mark.parametrize("kwargs, pattern", [
    pytest.param({"evaluator": 42}, "evaluator must be an Evaluator", id="CMP-13"),
    pytest.param({"alpha": "sometimes"}, "'search'", id="CMP-14"),
    pytest.param({"methods": []}, "empty", id="CMP-15"),
    pytest.param({"keep_best": "yes", "evaluator": "SPEC", "output_dir": "OUT"}, "must be True or False",
                 id="CMP-16"),
    pytest.param({"evaluator": "SPEC", "max_examples": 0}, r"max_examples \(--max-examples\) must be a positive",
                 id="CMP-17"),
    pytest.param({"evaluator": "SPEC", "batch_size": 0}, r"batch_size \(--batch-size\) must be a positive",
                 id="CMP-18"),
])
def test_bad_python_input(kwargs, pattern, setup, tmp_path, monkeypatch):
    _fail_if_merged(monkeypatch)
    values = {"SPEC": setup["spec"], "OUT": tmp_path / "out"}
    kwargs = {k: values.get(v, v) if isinstance(v, str) else v for k, v in kwargs.items()}
    with pytest.raises(MergeInputError, match=pattern):
        hf_tsv.compare(setup["base"], setup["tasks"], progress=False, **kwargs)
    assert_nothing_left(tmp_path)


def test_tsvc_retention_row(setup, tmp_path):
    """TSV-C: each task rebuilt from its factors and scored by itself, as `expand` + `eval` would."""
    from hf_tsv.evaluation import evaluate_folder

    rows = list(hf_tsv.iter_compare(setup["base"], setup["tasks"], methods=["avg"], evaluator=setup["spec"],
                                    alpha="default", tsvc=True, progress=False))
    assert [r.method for r in rows] == ["finetuned", "zero-shot", "avg", "tsv-c"]
    tsvc = rows[-1]
    assert tsvc.kind == "reference" and 0 < tsvc.extra["stored_fraction"] < 1
    hf_tsv.compress(setup["base"], setup["tasks"], tmp_path / "c", device="cpu")
    for i, task in enumerate(["task0", "task1"]):
        rebuilt = hf_tsv.expand(tmp_path / "c", i, tmp_path / f"t{i}", base=setup["base"], device="cpu")
        direct = evaluate_folder(rebuilt, setup["spec"], processor_from=setup["base"], progress=False, device="cpu")
        assert tsvc.test.per_task[task]["absolute"] == direct.tasks[task]["accuracy"]
        own = rows[0].test.per_task[task]["absolute"]
        assert tsvc.test.per_task[task]["normalized"] == pytest.approx(100 * direct.tasks[task]["accuracy"] / own)
