"""`hf-tsv bench build --quick` and `bench run --quick` end to end, on the real offline data."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("datasets")

from hf_tsv.cli import main  # noqa: E402
from hf_tsv_bench import sources  # noqa: E402

SCHEMA_NAMES = {"zero-shot", "finetuned", "avg", "ta", "ties", "iso-c", "iso-cts", "tsv-m", "tsv-c"}


@pytest.fixture(scope="module")
def quick_bench(tmp_path_factory):
    problems = sources.check_sources()
    missing = [problems[s] for s in sources.TASK_SOURCES["pretraining"] if problems.get(s)]
    if missing:
        pytest.skip("benchmark pretraining data not installed: " + "; ".join(missing))
    for name in sources.TASK_NAMES:
        gone = [problems[s] for s in sources.TASK_SOURCES[name] if problems.get(s)]
        if gone:
            print(f"task {name} will be skipped: {'; '.join(gone)}")
    cache = tmp_path_factory.mktemp("bench-cache")
    assert main(["bench", "build", "--quick", "--cache", str(cache)]) == 0
    out = tmp_path_factory.mktemp("bench-out")
    assert main(["bench", "run", "--quick", "--cache", str(cache), "--out", str(out)]) == 0
    return cache / "quick", out


def test_quick_build_layout(quick_bench):
    folder, _ = quick_bench
    info = json.loads((folder / "build.json").read_text())
    spec = json.loads((folder / "tasks.json").read_text())
    tasks = [t["name"] for t in spec["tasks"]]
    assert tasks == list(info["tasks"]) and len(tasks) >= 2
    assert set(tasks) | set(info["skipped_tasks"]) == set(sources.TASK_NAMES)
    for name in tasks:
        assert (folder / "models" / name / "model.safetensors").is_file()
        assert (folder / "data" / name / "dataset_dict.json").is_file()
        sizes = info["tasks"][name]["sizes"]
        assert min(sizes.values()) > 0
    config = json.loads((folder / "models" / "base" / "config.json").read_text())
    assert config["architectures"] == ["CLIPVisionModelWithProjection"]
    assert (folder / "heads.safetensors").is_file()


def test_quick_build_is_cached(quick_bench, capsys):
    folder, _ = quick_bench
    before = (folder / "build.json").stat().st_mtime_ns
    assert main(["bench", "build", "--quick", "--cache", str(folder.parent)]) == 0
    assert "already built" in capsys.readouterr().out
    assert (folder / "build.json").stat().st_mtime_ns == before


def test_quick_results_schema_and_consistency(quick_bench):
    folder, out = quick_bench
    results = json.loads((out / "results.json").read_text())
    methods = results["methods"]
    assert set(methods) == SCHEMA_NAMES
    tasks = results["benchmark"]["tasks"]
    for name, entry in methods.items():
        assert set(entry) >= {"absolute", "normalized", "per_task", "alpha"}, name
        assert set(entry["per_task"]) == set(tasks), name
        assert 0.0 <= entry["absolute"] <= 100.0
        mean = sum(v["absolute"] for v in entry["per_task"].values()) / len(tasks)
        assert entry["absolute"] == pytest.approx(mean), name
    assert methods["finetuned"]["normalized"] == 100.0
    assert methods["avg"]["alpha"] is None and methods["zero-shot"]["alpha"] is None
    for name in ("ta", "ties", "iso-c", "iso-cts", "tsv-m"):
        assert methods[name]["alpha"] in methods[name]["alpha_grid"]
        best = max(s["mean_normalized_accuracy"] for s in methods[name]["sweep"])
        chosen = next(s for s in methods[name]["sweep"] if s["alpha"] == methods[name]["alpha"])
        assert chosen["mean_normalized_accuracy"] == best  # α chosen on validation, as documented
    # normalised accuracy is absolute accuracy over the fine-tuned model's, per task
    ft = methods["finetuned"]["per_task"]
    for entry in methods.values():
        for task, scores in entry["per_task"].items():
            if ft[task]["absolute"] > 0:
                assert scores["normalized"] == pytest.approx(100 * scores["absolute"] / ft[task]["absolute"])
    assert results["sti"]["total"] > 0 and results["sti"]["keys"]
    assert 0 < methods["tsv-c"]["stored_fraction"] < 1
    table = (out / "results.md").read_text()
    assert "| TSV-M |" in table and "| Zero-shot |" in table
    for png in ("normalized_accuracy.png", "per_task.png", "sti_per_layer.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # bench run is hf_tsv.compare: its comparison is written beside, and its rows are the results' rows
    comparison = json.loads((out / "compare.json").read_text())
    assert comparison["best"] == results["benchmark"]["best_method"]
    rows = {row["method"]: row for row in comparison["entries"]}
    assert set(rows) == SCHEMA_NAMES
    for name, entry in methods.items():
        assert rows[name]["test"]["absolute"] == entry["absolute"], name
        assert rows[name]["alpha"] == entry["alpha"], name


def test_bench_spec_works_with_hf_tsv_eval(quick_bench, tmp_path):
    """The built tasks.json is an ordinary task spec: `hf-tsv eval` reproduces the fine-tuned score."""
    folder, out = quick_bench
    results = json.loads((out / "results.json").read_text())
    task = results["benchmark"]["tasks"][0]
    spec = json.loads((folder / "tasks.json").read_text())
    spec["tasks"] = [t for t in spec["tasks"] if t["name"] == task]
    (folder / "one.json").write_text(json.dumps(spec))
    assert main(["eval", str(folder / "models" / task), "--tasks", str(folder / "one.json"),
                 "--json", str(tmp_path / "e.json")]) == 0
    got = json.loads((tmp_path / "e.json").read_text())["tasks"][task]["accuracy"]
    assert got == pytest.approx(results["methods"]["finetuned"]["per_task"][task]["absolute"])
