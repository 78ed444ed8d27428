"""`hf-tsv bench build|run --seeds`: seed lists, per-seed cache folders, the mean ± std aggregation, the CLI
wiring (with fake suites, fast) and, slow-marked, two real `--quick` seeds end to end."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

pytest.importorskip("datasets")

from hf_tsv.cli import main  # noqa: E402
from hf_tsv_bench import seeds as seeds_mod  # noqa: E402
from hf_tsv_bench.build import BenchError  # noqa: E402
from hf_tsv_bench.seeds import (  # noqa: E402
    SeedSuite,
    aggregate_entry,
    mean_std,
    parse_seeds,
    run_seeds,
    seed_cache_dir,
)


def _entry(absolute, normalized, alpha=None, per_task=None, default=None) -> dict:
    entry = {"absolute": absolute, "normalized": normalized, "alpha": alpha,
             "per_task": per_task or {"a": {"absolute": absolute, "normalized": normalized}}}
    if default is not None:
        entry["at_default_alpha"] = default
    return entry


def _payload(seed: int) -> dict:
    """A single-seed results payload with known numbers: TSV-M 60/70/80 normalised over seeds 0/1/2."""
    return {"benchmark": {"tasks": ["a", "b"], "split": "test", "build": {"settings": {"seed": seed}}},
            "methods": {
                "zero-shot": _entry(20.0 + seed, 30.0, per_task={"a": {"absolute": 20.0 + seed, "normalized": 30.0},
                                                                 "b": {"absolute": 20.0 + seed, "normalized": 30.0}}),
                "tsv-m": _entry(50.0 + seed, 60.0 + 10 * seed, alpha=[1.3, 1.3, 1.4][seed],
                                per_task={"a": {"absolute": 40.0 + 2 * seed, "normalized": 50.0},
                                          "b": {"absolute": 60.0, "normalized": 70.0 + 20 * seed}},
                                default=_entry(45.0, 55.0 + seed, alpha=1.0))},
            "timings": {"total_s": 1.0}}


# --- maths ------------------------------------------------------------------------------------------------------

def test_mean_and_sample_std_on_known_values():
    mean, std = mean_std([2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0])
    assert mean == 5.0
    assert std == pytest.approx(math.sqrt(32 / 7))  # n - 1 = 7 (the population std would be 2.0)
    assert mean_std([3.0]) == (3.0, None)  # one seed has no spread
    assert mean_std([1.0, None]) == (None, None)  # a seed without the score: no mean either


def test_aggregate_entry_means_stds_per_task_and_alphas():
    got = aggregate_entry({s: _payload(s)["methods"]["tsv-m"] for s in (0, 1, 2)})
    assert got["normalized"] == pytest.approx(70.0) and got["normalized_std"] == pytest.approx(10.0)
    assert got["absolute"] == pytest.approx(51.0) and got["absolute_std"] == pytest.approx(1.0)
    assert got["per_task"]["a"]["absolute"] == pytest.approx(42.0)
    assert got["per_task"]["a"]["absolute_std"] == pytest.approx(2.0)
    assert got["per_task"]["b"]["normalized"] == pytest.approx(90.0)
    assert got["per_task"]["b"]["normalized_std"] == pytest.approx(20.0)
    assert got["per_seed"] == {"0": {"absolute": 50.0, "normalized": 60.0, "alpha": 1.3},
                               "1": {"absolute": 51.0, "normalized": 70.0, "alpha": 1.3},
                               "2": {"absolute": 52.0, "normalized": 80.0, "alpha": 1.4}}
    assert got["alpha"] is None  # the seeds chose different α
    assert got["at_default_alpha"]["alpha"] == 1.0  # ... and the same α = 1 for the default rows
    assert got["at_default_alpha"]["normalized"] == pytest.approx(56.0)


def test_run_seeds_writes_the_aggregate_and_keeps_every_seed(tmp_path):
    calls = []
    result = run_seeds(lambda s: calls.append(s) or _payload(s), [0, 1, 2], tmp_path / "agg", log=lambda _: None)
    assert calls == [0, 1, 2]
    saved = json.loads((tmp_path / "agg" / "results.json").read_text())
    assert saved["seeds"] == {str(s): _payload(s) for s in (0, 1, 2)}  # every seed, whole
    assert saved["benchmark"]["seeds"] == [0, 1, 2] and saved["benchmark"]["tasks"] == ["a", "b"]
    assert saved["methods"]["tsv-m"]["normalized"] == pytest.approx(70.0)
    assert saved["methods"] == json.loads(json.dumps(result["methods"]))
    assert {"seed0_s", "seed0_cpu_s", "total_s", "total_cpu_s"} <= set(saved["timings"])
    table = (tmp_path / "agg" / "results.md").read_text()
    assert "| TSV-M | 70.0 ± 10.0 | 51.0 ± 1.0 | 60.0 / 50.0 (α 1.3) | 70.0 / 51.0 (α 1.3) | 80.0 / 52.0 (α 1.4) |" \
        in table
    assert "| TSV-M at α = 1 | 56.0 ± 1.0 | 45.0 ± 0.0 | 55.0 / 45.0 | 56.0 / 45.0 | 57.0 / 45.0 |" in table
    assert "sample standard deviation (n - 1)" in table
    assert "| TSV-M | 42.0 ± 2.0 | 60.0 ± 0.0 |" in table  # per task: a, b
    assert (tmp_path / "agg" / "normalized_accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --- seed lists and cache folders --------------------------------------------------------------------------------

def test_parse_seeds_keeps_the_order_given():
    assert parse_seeds("0,1,2") == (0, 1, 2)
    assert parse_seeds(" 3 , 0") == (3, 0)
    assert parse_seeds("7") == (7,)


def test_per_seed_cache_folders(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TSV_BENCH_CACHE", str(tmp_path / "bench"))
    assert seed_cache_dir(None, 0) == tmp_path / "bench"  # seed 0: the default cache itself
    assert seed_cache_dir(None, 2) == tmp_path / "bench-seed2"
    assert seed_cache_dir(tmp_path / "mine", 0) == tmp_path / "mine"  # --cache DIR: DIR and DIR-seed<s>
    assert seed_cache_dir(tmp_path / "mine", 1) == tmp_path / "mine-seed1"
    assert seed_cache_dir(str(tmp_path / "mine") + "/", 1) == tmp_path / "mine-seed1"


# --- the CLI, with a fake suite -----------------------------------------------------------------------------------

def _fake_build(cache: Path, seed: int) -> None:
    (cache / "full").mkdir(parents=True)
    (cache / "full" / "build.json").write_text(json.dumps({"settings": {"seed": seed}}))


@pytest.fixture
def fake_suite(monkeypatch, tmp_path):
    """`bench build|run --seeds` with the image suite's cache layout but no training: build_one writes a
    build.json, run_one returns :func:`_payload`. Records the calls."""
    calls = []
    real = seeds_mod.image_suite

    def suite(quick=False, force=False):
        image = real(quick=quick, force=force)

        def build_one(seed: int, cache: Path) -> None:
            calls.append(("build", seed, cache))
            if tmp_path in cache.parents:  # a test that fails never writes outside its folder
                _fake_build(cache, seed)

        return SeedSuite(build_one=build_one,
                         run_one=lambda s, c, o: calls.append(("run", s, c, o)) or _payload(s),
                         built_seed=image.built_seed, default_out=image.default_out,
                         build_command=image.build_command)

    monkeypatch.setattr(seeds_mod, "image_suite", suite)
    return calls


def test_cli_builds_each_seed_in_its_folder_then_reports_mean_and_std(fake_suite, tmp_path, capsys):
    cache = tmp_path / "bench"
    assert main(["bench", "build", "--seeds", "0,2", "--cache", str(cache)]) == 0
    assert fake_suite == [("build", 0, cache), ("build", 2, tmp_path / "bench-seed2")]
    assert main(["bench", "run", "--seeds", "0,2", "--cache", str(cache)]) == 0
    out = cache / "full" / "results-seeds"
    assert fake_suite[2:] == [("run", 0, cache, out / "seed0"), ("run", 2, tmp_path / "bench-seed2", out / "seed2")]
    printed = capsys.readouterr().out
    assert "| TSV-M | 70.0 ± 14.1 | 51.0 ± 1.4 |" in printed and str(out) in printed
    assert json.loads((out / "results.json").read_text())["benchmark"]["seeds"] == [0, 2]


def _one_line_error(capsys, prefix: str) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(prefix), err
    return err


@pytest.mark.parametrize(("argv", "fragment"), [
    pytest.param(["build", "--seeds", ""], "--seeds is empty", id="SDS-01"),
    pytest.param(["run", "--seeds", "0,x"], "'x' is not a seed", id="SDS-02"),
    pytest.param(["build", "--seeds=-1"], "'-1' is not a seed", id="SDS-03"),
    pytest.param(["run", "--seeds", "0,1,1"], "seed 1 is given twice", id="SDS-04"),
    pytest.param(["build", "--seed", "1", "--seeds", "0,1"], "not allowed with argument", id="SDS-05"),
])
def test_bad_seed_lists_are_refused_before_any_work(fake_suite, tmp_path, capsys, argv, fragment):
    cache = tmp_path / "bench"
    try:
        code = main(["bench", *argv, "--cache", str(cache)])
    except SystemExit as exc:  # argparse refuses while parsing
        code = exc.code
    assert code == 2
    assert fragment in _one_line_error(capsys, "hf-tsv bench")
    assert fake_suite == [] and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("built", "fragment"), [
    pytest.param({0: 0}, "no benchmark of seed 1 is built in", id="SDS-06"),
    pytest.param({0: 0, 1: 0}, "holds a build of seed 0, not of seed 1", id="SDS-07"),
])
def test_run_refuses_a_seed_that_is_not_built_before_running_any(fake_suite, tmp_path, capsys, built, fragment):
    cache = tmp_path / "bench"
    for seed, content in built.items():
        _fake_build(seed_cache_dir(cache, seed), content)
    before = sorted(tmp_path.rglob("*"))
    assert main(["bench", "run", "--seeds", "0,1", "--cache", str(cache)]) == 2
    err = _one_line_error(capsys, "hf-tsv bench: error: ")
    assert fragment in err and str(tmp_path / "bench-seed1") in err and "hf-tsv bench build --seeds 0,1" in err
    assert fake_suite == [] and sorted(tmp_path.rglob("*")) == before  # no seed ran, no output folder


@pytest.mark.parametrize("step", [pytest.param("build", id="SDS-08")])
def test_a_cache_without_a_folder_name_has_no_sibling(fake_suite, capsys, step):
    assert main(["bench", step, "--seeds", "0,1", "--cache", "/"]) == 2
    assert "has no folder name" in _one_line_error(capsys, "hf-tsv bench: error: ")
    assert fake_suite == []


def test_seed_cache_dir_of_the_root_is_a_bench_error():
    with pytest.raises(BenchError, match="no folder name"):
        seed_cache_dir("/", 1)


# --- two real --quick seeds ---------------------------------------------------------------------------------------

@pytest.mark.slow
def test_two_quick_seeds_end_to_end(tmp_path, capsys):
    from hf_tsv_bench import sources

    problems = sources.check_sources()
    if any(problems.get(s) for s in sources.TASK_SOURCES["pretraining"]):
        pytest.skip("benchmark pretraining data not installed")
    cache, out = tmp_path / "bench", tmp_path / "out"
    assert main(["bench", "build", "--quick", "--seeds", "0,1", "--cache", str(cache)]) == 0
    assert main(["bench", "run", "--quick", "--seeds", "0,1", "--cache", str(cache), "--out", str(out)]) == 0
    agg = json.loads((out / "results.json").read_text())
    for seed in (0, 1):
        one = json.loads((out / f"seed{seed}" / "results.json").read_text())
        assert one["benchmark"]["build"]["settings"]["seed"] == seed
        assert agg["seeds"][str(seed)] == one
    tsvm = agg["methods"]["tsv-m"]
    values = [agg["seeds"][s]["methods"]["tsv-m"]["normalized"] for s in ("0", "1")]
    assert tsvm["normalized"] == pytest.approx(sum(values) / 2)
    assert tsvm["normalized_std"] == pytest.approx(abs(values[0] - values[1]) / math.sqrt(2))
    assert values[0] != values[1]  # two seeds are two different builds
    assert "| TSV-M |" in capsys.readouterr().out


def test_one_seed_still_builds_in_the_cache_itself(monkeypatch, tmp_path):
    """`bench build --seed N` (without --seeds) is one build of seed N in --cache, as before --seeds existed."""
    from hf_tsv_bench import build

    calls = []  # the image suite's builder, as hf_tsv_bench.suites.build_suite calls it
    monkeypatch.setattr(build, "build_benchmark", lambda *a, **k: calls.append((a, k)))
    assert main(["bench", "build", "--seed", "3", "--cache", str(tmp_path / "c")]) == 0
    assert calls == [((str(tmp_path / "c"),), {"quick": False, "seed": 3, "force": False})]
