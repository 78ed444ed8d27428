"""Sharded merges on torch.distributed: 2 gloo processes on tiny checkpoints give the bytes of a 1-process run
(TSV-M, task arithmetic, TIES over the whole model, Iso-C; STI; TSV-C), and a failing process leaves no output
and one clear error. The processes run every scenario in one group (one start-up: importing torch takes seconds)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from distributed_worker import run_group

import hf_tsv
from hf_tsv.distributed import Shards, assign_units

METHODS = ("tsv-m", "ta", "ties", "iso-c")


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _files(folder: Path) -> dict[str, str]:
    """Every file's sha256 but the report's, which is compared as JSON."""
    return {p.name: _sha(p) for p in sorted(folder.iterdir()) if p.name != "merge_report.json"}


def _report(folder: Path) -> dict:
    """The merge report without what may differ between runs: timings, and the device (it names the processes)."""
    report = json.loads((folder / "merge_report.json").read_text())
    report.pop("timings")
    report["options"].pop("device")
    return report


def _result(out: Path, name: str, rank: int) -> dict:
    return json.loads((out / f"{name}.rank{rank}.json").read_text())


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if "hf-tsv" in p.name)


@pytest.fixture(scope="module")
def sharded(tiny, tmp_path_factory):
    """One 2-process gloo group runs every scenario; returns the folders and the per-rank results."""
    root = tmp_path_factory.mktemp("dist")
    two, fail = root / "two", root / "fail"
    two.mkdir()
    fail.mkdir()
    common = dict(base=tiny["base"], models=tiny["tasks"])
    scenarios = [dict(name=m, kind="merge", kwargs=dict(common, method=m, output_dir=str(two / m)))
                 for m in METHODS]
    scenarios += [
        dict(name="tsv-m-shards", kind="merge",
             kwargs=dict(common, method="tsv-m", output_dir=str(two / "tsv-m-shards"), max_shard_size="20KB")),
        dict(name="memory", kind="merge_memory", kwargs=dict(common, method="tsv-m")),
        dict(name="sti", kind="sti", kwargs=common),
        dict(name="compress", kind="compress", kwargs=dict(common, output_dir=str(two / "compress"))),
        dict(name="raises", kind="merge", fail=(1, "raise"),
             kwargs=dict(common, method="tsv-m", output_dir=str(fail / "merged"))),
        dict(name="after-failure", kind="merge", kwargs=dict(common, method="ta", output_dir=str(two / "after"))),
        dict(name="mismatch", kind="merge", rank1_kwargs=dict(dtype="float16"),
             kwargs=dict(common, method="ta", output_dir=str(fail / "mismatch"))),
        dict(name="peft", kind="merge",
             kwargs=dict(common, method="ta", output_format="peft", output_dir=str(fail / "peft"))),
    ]
    (root / "results").mkdir()
    assert run_group(scenarios, root / "results", timeout_s=60) == [0, 0]
    return {"two": two, "fail": fail, "results": root / "results"}


@pytest.fixture(scope="module")
def single(tiny, tmp_path_factory):
    """The same merges in this one process, with one torch thread (as each of the 2 processes has)."""
    root = tmp_path_factory.mktemp("single")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for m in METHODS:
            hf_tsv.merge(tiny["base"], tiny["tasks"], method=m, output_dir=root / m)
        hf_tsv.merge(tiny["base"], tiny["tasks"], method="tsv-m", output_dir=root / "tsv-m-shards",
                     max_shard_size="20KB")
        hf_tsv.compress(tiny["base"], tiny["tasks"], root / "compress")
        sti = hf_tsv.sti(tiny["base"], tiny["tasks"])
        memory = hf_tsv.merge(tiny["base"], tiny["tasks"], method="tsv-m").state_dict()
    finally:
        torch.set_num_threads(threads)
    return {"root": root, "sti": sti, "memory": memory}


@pytest.mark.parametrize("method", [*METHODS, "tsv-m-shards"])
def test_two_processes_write_the_bytes_of_one(sharded, single, method):
    """Weights and config byte for byte, the report but for timings and device; TIES's model-wide trim included
    (its thresholds are summed over the processes)."""
    two, one = sharded["two"] / method, single["root"] / method
    assert all(_result(sharded["results"], method, rank)["ok"] for rank in (0, 1))
    assert _files(two) == _files(one)
    assert _report(two) == _report(one)
    device = json.loads((two / "merge_report.json").read_text())["options"]["device"]
    assert device.endswith("× 2 processes (gloo)")


def test_sharded_output_has_several_files_and_one_index(sharded):
    names = sorted(p.name for p in (sharded["two"] / "tsv-m-shards").iterdir())
    assert "model.safetensors.index.json" in names and sum(n.endswith(".safetensors") for n in names) > 1


def test_in_memory_merge_gives_every_process_the_whole_result(sharded, single):
    expected = single["memory"]
    for rank in (0, 1):
        record = _result(sharded["results"], "memory", rank)
        assert record["keys"] == list(expected)
        assert record["sums"] == [float(t.double().sum()) for t in expected.values()]


def test_sti_sharded_equals_one_process(sharded, single):
    for rank in (0, 1):
        record = _result(sharded["results"], "sti", rank)
        assert list(record["keys"].items()) == list(single["sti"].keys.items())  # same values, same order
        assert record["total"] == single["sti"].total


def test_compress_sharded_equals_one_process(sharded, single):
    two, one = sharded["two"] / "compress", single["root"] / "compress"
    assert _sha(two / "tsv_c.safetensors") == _sha(one / "tsv_c.safetensors")
    index_two, index_one = (json.loads((f / "tsv_c.json").read_text()) for f in (two, one))
    index_two.pop("seconds"), index_one.pop("seconds")
    assert index_two == index_one


def test_a_process_that_raises_leaves_no_output_and_one_message(sharded):
    """Process 1 raises during the merge: process 0 raises DistributedMergeError naming it, process 1 its own
    error; no output folder, no scratch folder; the group still works for the next merge."""
    first, second = (_result(sharded["results"], "raises", rank) for rank in (0, 1))
    assert not first["ok"] and first["type"] == "DistributedMergeError"
    assert first["message"] == ("process 1 of 2 failed while merging: RuntimeError: injected failure; no output "
                                "was written")
    assert not second["ok"] and second["message"] == "injected failure"
    assert _leftovers(sharded["fail"]) == [] and not (sharded["fail"] / "merged").exists()
    assert _result(sharded["results"], "after-failure", 0)["ok"]


@pytest.mark.slow
def test_a_killed_process_leaves_no_output(tiny, tmp_path):
    """Process 1 dies outright (os._exit) mid-merge: process 0 sees the closed connection, raises one line and
    removes the scratch folder."""
    out = tmp_path / "results"
    out.mkdir()
    scenario = dict(name="killed", kind="merge", fail=(1, "exit"),
                    kwargs=dict(base=tiny["base"], models=tiny["tasks"], method="tsv-m",
                                output_dir=str(tmp_path / "merged")))
    codes = run_group([scenario], out, timeout_s=30, join_s=240)
    assert codes == [0, 3]
    record = _result(out, "killed", 0)
    assert record["type"] == "DistributedMergeError" and "another process stopped or timed out" in record["message"]
    assert "\n" not in record["message"]
    assert _leftovers(tmp_path) == [] and not (tmp_path / "merged").exists()


def test_units_are_balanced_by_cost():
    """Longest processing time first: the big unit alone on one process, the small ones on the other."""
    assert assign_units([1.0, 9.0, 2.0, 3.0, 2.0], 2) == [1, 0, 1, 1, 1]
    assert assign_units([], 3) == []
    assert Shards(1, 2, "gloo").describe() == "2 processes (gloo)" and not Shards(1, 2, "gloo").is_main


@pytest.mark.parametrize("rank", [pytest.param(0, id="DST-01"), 1])
def test_processes_given_different_options_are_refused(sharded, rank):
    """Process 1 asks for float16 output, process 0 for the base's dtype: both refuse before any merging."""
    record = _result(sharded["results"], "mismatch", rank)
    assert not record["ok"] and record["type"] == "MergeInputError"
    assert record["message"].startswith("process 1 of 2 planned a different merge than process 0")
    assert not (sharded["fail"] / "mismatch").exists()


@pytest.mark.parametrize("rank", [pytest.param(0, id="DST-05"), 1])
def test_an_adapter_output_is_refused_in_a_sharded_merge(sharded, rank):
    """--output-format peft writes one adapter from every key's factors: it runs in one process only."""
    record = _result(sharded["results"], "peft", rank)
    assert not record["ok"] and record["type"] == "MergeInputError"
    assert "runs in one process; start it without torchrun" in record["message"]
    assert not (sharded["fail"] / "peft").exists()


@pytest.mark.parametrize("value", [pytest.param("0", id="DST-02"), pytest.param("soon", id="DST-03")])
def test_bad_dist_timeout_is_refused_in_one_line(tiny, tmp_path, capsys, value):
    from hf_tsv.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["merge", tiny["base"], *tiny["tasks"], "-o", str(tmp_path / "out"), "--dist-timeout", value])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "--dist-timeout" in err and len(err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("case", [pytest.param("search", id="DST-04")])
def test_alpha_search_under_torchrun_is_refused_before_the_group_starts(case, tiny, tmp_path, capsys, monkeypatch):
    """--alpha search / --eval would evaluate and write on every process: refused, in one line, before any work."""
    from hf_tsv.cli import main

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    spec = tmp_path / "tasks.json"
    code = main(["merge", tiny["base"], *tiny["tasks"], "-o", str(tmp_path / "out"), "--alpha", "search",
                 "--eval", str(spec)])
    err = capsys.readouterr().err
    assert code == 2 and "--alpha search and --eval do not run under torchrun" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "out").exists()
