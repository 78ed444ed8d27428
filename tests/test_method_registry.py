"""The MergeMethod registry: one file per method, every fact about a method stated once (in its file), and a
method added from one file (tests/toy_method.py) works through the Python API, the CLI, the card and α search."""

from __future__ import annotations

import json
import re
import types
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import load_state, max_rel_diff

import hf_tsv
from hf_tsv.cli import main
from hf_tsv.errors import MergeInputError
from hf_tsv.methods import (
    METHODS,
    PARAMETERS,
    AlphaRule,
    MergeMethod,
    MethodOptions,
    Parameter,
    get_method,
    method_modules,
    register,
    register_module,
    unregister,
)

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "hf_tsv" / "methods"


@pytest.fixture
def toy():
    """tests/toy_method.py registered for one test, and removed after it."""
    import toy_method

    method = register_module(toy_method)
    try:
        yield method
    finally:
        unregister(method.name)
    assert "toy" not in METHODS and "toy_scale" not in PARAMETERS


# --------------------------------------------------------------------------------------------------------------
# One file per method, each fact once
# --------------------------------------------------------------------------------------------------------------

def test_every_module_of_the_package_is_one_registered_method():
    files = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem not in ("__init__", "base"))
    assert sorted(method_modules()) == files
    defined = {}
    for name in files:
        module = __import__(f"hf_tsv.methods.{name}", fromlist=["METHOD"])
        defined[module.METHOD.name] = name
        assert METHODS[module.METHOD.name] is module.METHOD
        assert module.METHOD.delta.__module__ == module.__name__  # its core binding lives in its file
    assert set(defined) == set(METHODS) == {"avg", "ta", "ties", "iso-c", "iso-cts", "tsv-m"}
    assert list(METHODS) == ["avg", "ta", "ties", "iso-c", "iso-cts", "tsv-m"]  # the order of their papers


def _source_files() -> list[Path]:
    """Every file of the package and the Space that could restate a method fact, except the `evaluate` metric
    module, a standalone script that cites the TSV paper for its normalised accuracy (BibTeX)."""
    metrics = ROOT / "hf_tsv" / "evaluation" / "metrics"
    return [*(p for p in (ROOT / "hf_tsv").rglob("*.py") if metrics not in p.parents),
            *(ROOT / "hf_tsv" / "templates").glob("*"), *(ROOT / "spaces_app").glob("*.py")]


@pytest.mark.parametrize("name", ["avg", "ta", "ties", "iso-c", "iso-cts", "tsv-m"])
def test_each_method_fact_is_written_in_one_file_of_hf_tsv_methods(name):
    method = METHODS[name]
    texts = {path: path.read_text(encoding="utf-8") for path in _source_files()}
    facts = {"paper_url": method.paper_url, "paper_title": method.paper_title[:40],  # 40: within a source line
             "card_description": method.card_description[:40]}
    for what, fact in facts.items():
        holders = [path.relative_to(ROOT).as_posix() for path, text in texts.items() if fact in text]
        assert len(holders) == 1 and holders[0].startswith("hf_tsv/methods/"), (name, what, holders)


def test_no_edge_keeps_a_table_of_methods():
    """The edges that used to restate method facts read them from the registry (names of the old tables)."""
    restated = re.compile(r"METHOD_(TAGS|TITLES|RULES|LABELS)|DEFAULT_ALPHA\b|QUICK_GRIDS|MERGE_METHODS|"
                          r"PAPER_URL\s*=")
    for path in [*(ROOT / "hf_tsv" / "card").glob("*.py"), ROOT / "hf_tsv" / "report.py", ROOT / "hf_tsv" / "cli.py",
                 ROOT / "hf_tsv" / "bench" / "run.py", ROOT / "hf_tsv" / "bench" / "plots.py",
                 ROOT / "spaces_app" / "app.py", ROOT / "hf_tsv" / "merge.py",
                 ROOT / "hf_tsv" / "evaluation" / "alpha.py"]:
        if path.exists():
            assert not restated.search(path.read_text(encoding="utf-8")), path


def test_method_facts_as_the_edges_read_them():
    tsv, ta, ties, avg = METHODS["tsv-m"], METHODS["ta"], METHODS["ties"], METHODS["avg"]
    assert tsv.description == "Task Singular Vectors: Merge (Gargiulo et al., CVPR 2025)"
    assert ta.description == "Task arithmetic (Ilharco et al., ICLR 2023)" and ta.label == "Task arithmetic"
    assert (tsv.default_alpha, ta.default_alpha, ties.default_alpha, avg.default_alpha) == (1.0, 0.3, 1.0, None)
    assert ties.alpha_grid(MethodOptions(ties_merge="sum")) == ta.alpha_grid() == [i / 30 for i in range(1, 31)]
    assert tsv.alpha_grid(quick=True) == [0.5, 1.0, 1.5, 2.0] and avg.alpha_grid(quick=True) == [1.0]
    assert not avg.uses_alpha and tsv.reports_sti and tsv.task_rank == "floor(r/T)"
    assert PARAMETERS["ties_density"].methods == ("ties",) and PARAMETERS["ties_density"].flag == "--ties-density"


# --------------------------------------------------------------------------------------------------------------
# A method added from one file
# --------------------------------------------------------------------------------------------------------------

def _mean_of_tasks(tasks) -> dict[str, torch.Tensor]:
    states = [load_state(t) for t in tasks]
    return {k: torch.stack([s[k].float() for s in states]).mean(0) for k in states[0]}


def test_a_method_from_one_file_merges_through_the_python_api(tiny, toy):
    assert list(METHODS)[-1] == "toy" and PARAMETERS["toy_scale"].methods == ("toy",)
    result = hf_tsv.merge(tiny["base"], tiny["tasks"], method="toy", toy_scale=2.0, device="cpu")
    report = result.report
    assert report.alpha == 0.5 and report.options.parameters["toy_scale"] == 2.0  # its default α, its parameter
    assert report.method_description == "Toy merge (Tester et al., PyTest 2031)"
    merged, mean = result.state_dict(), _mean_of_tasks(tiny["tasks"])  # 0.5 · 2 · mean τ: the average
    assert max(max_rel_diff(merged[k].float(), mean[k]) for k in mean) < 1e-6
    with pytest.raises(MergeInputError, match=r"toy_scale \(--toy-scale\) must be in \(0, 10\], got 11"):
        hf_tsv.merge(tiny["base"], tiny["tasks"], method="toy", toy_scale=11)


def test_a_method_from_one_file_merges_through_the_cli_and_gets_a_card(tiny, toy, tmp_path, capsys):
    with pytest.raises(SystemExit) as done:
        main(["merge", "--help"])
    assert done.value.code == 0
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--toy-scale TOY_SCALE Toy merge: how many mean task vectors to add; in (0, 10] (default 1)" in help_text
    assert "toy: Toy merge (Tester et al., PyTest 2031)" in help_text
    assert "toy 0.5)" in help_text and "toy [0.25, 0.5, 1])" in help_text  # α default and grid

    out = tmp_path / "toy"
    assert main(["merge", tiny["base"], *tiny["tasks"], "--method", "toy", "--toy-scale", "2", "--device", "cpu",
                 "-o", out]) == 0
    report = json.loads((out / "merge_report.json").read_text())
    assert report["method"] == "toy" and report["options"]["toy_scale"] == 2.0
    assert "--method toy --toy-scale 2.0" in report["command"]
    merged, mean = load_state(out), _mean_of_tasks(tiny["tasks"])
    assert max(max_rel_diff(merged[k].float(), mean[k]) for k in mean) < 1e-6

    card = hf_tsv.write_card(out)
    assert card.card.data.tags[-1] == "toy-merge"
    for text in ("a **toy merge** merge", "[A Toy Merge for Registry Tests](https://example.org/toy-merge)",
                 METHODS["toy"].card_description, "Scaling factor **α = 0.5**"):
        assert text in card.text, text


def test_a_method_from_one_file_gets_its_alpha_grid_searched(tiny, toy, monkeypatch):
    from hf_tsv.evaluation import alpha as alpha_search
    from hf_tsv.options import MergeOptions

    assert MergeOptions(method="toy").search_grid == (0.25, 0.5, 1.0)
    assert alpha_search.default_grid("toy", quick=True) == [0.5]
    linear = hf_tsv.merge_linear(tiny["base"], tiny["tasks"], method="toy", device="cpu")
    assert linear.alpha_grid == [0.25, 0.5, 1.0]
    scores = iter([60.0, 90.0, 70.0])  # one validation score per α, in grid order

    def fake_evaluation(model, tasks, **kwargs):
        score = next(scores)
        return types.SimpleNamespace(mean_accuracy=score, mean_normalized_accuracy=score)

    monkeypatch.setattr(alpha_search, "load_metric", lambda: None)
    monkeypatch.setattr(alpha_search, "evaluate_model", fake_evaluation)
    search = alpha_search.search_alpha(linear, [], progress=False)
    assert search.grid == [0.25, 0.5, 1.0] and list(search.validation) == search.grid and search.best_alpha == 0.5


def test_a_method_from_one_file_in_the_space_and_benchmark_tables(toy):
    from hf_tsv_bench.plots import write_table

    entry = {"absolute": 50.0, "normalized": 60.0, "alpha": 0.5, "per_task": {"t": {"absolute": 50.0}}}
    payload = {"benchmark": {"tasks": ["t"]}, "methods": {"toy": entry, "tsv-m": entry, "zero-shot": entry}}
    table = write_table(payload, Path("/dev/null"))
    rows = [line.split("|")[1].strip() for line in table.splitlines()[2:]]
    assert rows == ["Zero-shot", "TSV-M", "Toy merge"]


# --------------------------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------------------------

def _toy(**changes) -> MergeMethod:
    import toy_method

    return replace(toy_method.METHOD, **changes)


SCALE = Parameter("toy_scale", 1.0, "scale", low=0.0)


@pytest.mark.parametrize("call, error, fragment", [
    pytest.param(lambda: MethodOptions(tie_density=0.3), MergeInputError,
                 "unknown method parameter 'tie_density'; the method parameters are ties_density", id="MR-01"),
    pytest.param(lambda: register(_toy(name="ta")), ValueError, "merge method 'ta' is already registered",
                 id="MR-03"),
    pytest.param(lambda: register(_toy(name="toy2", alpha=(AlphaRule(1.0, (1.0,), when=("toy_scale", "x")),))),
                 ValueError, "alpha must be an AlphaRule, or a tuple of them whose last has no 'when'", id="MR-04"),
    pytest.param(lambda: register(_toy(name="toy2", alpha=(AlphaRule(1.0, (1.0,), when=("ties_merge", "sum")),
                                                            AlphaRule(1.0, (1.0,))))),
                 ValueError, "when=('ties_merge', 'sum') must name one of its own parameters", id="MR-05"),
    pytest.param(lambda: register(_toy(name="toy2", alpha=AlphaRule(1.0, ()))), ValueError,
                 "every α grid needs at least one finite number", id="MR-06"),
    pytest.param(lambda: register(_toy(name="toy2", parameters=(replace(SCALE, name="svd"),))), ValueError,
                 "parameter name 'svd' must be a Python identifier and not the name of an option every merge has",
                 id="MR-07"),
    pytest.param(lambda: register(_toy(name="toy2", parameters=(replace(SCALE, name="device"),))), ValueError,
                 "parameter name 'device' must be a Python identifier and not the name of an option every merge has "
                 "(allow_duplicates, alpha, alpha_grid, architecture, compute_dtype, device, drop_heads, dtype, "
                 "embeddings, exclude, fuse_qkv, method, method_options, output_format,",
                 id="MR-11"),
    pytest.param(lambda: register(_toy(name="toy2", parameters=(replace(SCALE, name="ties_density"),))),
                 ValueError, "parameter 'ties_density' is declared differently by ties", id="MR-08"),
    pytest.param(lambda: register(_toy(name="Toy 2")), ValueError, "its name must be a non-empty lower-case string",
                 id="MR-09"),
    pytest.param(lambda: register_module(types.ModuleType("not_a_method")), TypeError,
                 "module not_a_method defines no METHOD = MergeMethod(...)", id="MR-10"),
])
def test_bad_method_definitions_and_parameters_are_refused(toy, call, error, fragment):
    before = dict(METHODS)
    with pytest.raises(error) as raised:
        call()
    assert fragment in str(raised.value)
    assert METHODS == before  # nothing was registered


@pytest.mark.parametrize("_row", [pytest.param(None, id="MR-02")])
def test_a_new_method_parameter_out_of_its_range_is_refused_by_the_cli(_row, toy, tmp_path, capsys):
    """Declared in the method's file, checked by MergeOptions before any model is read (these do not exist)."""
    code = main(["merge", tmp_path / "base", tmp_path / "a", tmp_path / "b", "--method", "toy", "--toy-scale", "0",
                 "-o", tmp_path / "out"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "hf-tsv merge: error: toy_scale (--toy-scale) must be in (0, 10], got 0" in err
    assert list(tmp_path.iterdir()) == []


def test_an_unknown_method_names_the_registered_ones():
    with pytest.raises(MergeInputError, match="unknown method 'nope'; choose one of avg, ta, ties, iso-c, "
                                              "iso-cts, tsv-m"):
        get_method("nope")
