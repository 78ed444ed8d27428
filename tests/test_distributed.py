"""Sharded merges on torch.distributed: 2 gloo processes on tiny checkpoints give the bytes of a 1-process run
(TSV-M, task arithmetic, TIES over the whole model, Iso-C; STI; TSV-C; the α search with its evaluation, from Python
and from the CLI), and a failing process leaves no output and one clear error. The processes run every scenario in
one group (one start-up: importing torch takes seconds)."""

from __future__ import annotations

import contextlib
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


SEARCH_GRID = "0.1:1.3:0.2"  # 7 values (4 scored by process 0, 3 by process 1); the best score is a tie across both


@pytest.fixture(scope="module")
def eval_set(tmp_path_factory) -> dict:
    """3 fine-tunes far from their base (so α matters) and a task spec on disk: task t's labels are fine-tune t's
    predictions through a prototype head; 16 validation and 16 test images per task."""
    import datasets
    from test_evaluation import _dataset, _images, _labelled_by, _prototype_head, _save_processor

    from hf_tsv.evaluation import load_vision_model, save_heads
    from hf_tsv.synthetic import make_checkpoints

    root = tmp_path_factory.mktemp("eval")
    paths = make_checkpoints(root / "models", preset="tiny", num_tasks=3, relative_size=0.3, seed=5)
    _save_processor(Path(paths["base"]))
    heads, tasks = {}, []
    for t, finetuned in enumerate(paths["tasks"]):
        model = load_vision_model(finetuned)
        head = heads[f"task{t}"] = _prototype_head(model, _images(4, seed=30 + t))
        images = _images(32, seed=20 + t)
        labels = _labelled_by(model, head, images)
        datasets.DatasetDict({"validation": _dataset(images[:16], labels[:16], head.class_names),
                              "test": _dataset(images[16:], labels[16:], head.class_names)}
                             ).save_to_disk(str(root / f"data{t}"))
        tasks.append({"name": f"task{t}", "dataset": f"disk:data{t}", "validation_split": "validation",
                      "head": "heads.safetensors"})
    save_heads(root / "heads.safetensors", heads)
    (root / "tasks.json").write_text(json.dumps({"image_processor": paths["base"], "tasks": tasks}))
    return {**paths, "spec": str(root / "tasks.json")}


def _search_argv(eval_set: dict, output: Path) -> list[str]:
    return ["merge", eval_set["base"], *eval_set["tasks"], "-o", str(output), "--alpha", "search", "--alpha-grid",
            SEARCH_GRID, "--eval", eval_set["spec"]]


HUB_ENV = ("HF_ENDPOINT", "HF_HOME", "HF_HUB_CACHE", "HF_HUB_OFFLINE", "HF_HUB_DISABLE_TELEMETRY", "HF_TOKEN",
           "NO_PROXY", "no_proxy")


def _hub_env() -> dict[str, str]:
    """What :func:`running_hub` exported, for the spawned processes to reach the same loopback Hub."""
    import os

    return {name: os.environ[name] for name in HUB_ENV if name in os.environ}


def _fail_first_commits(hub, count: int) -> None:
    """The loopback Hub rejects the next ``count`` commits (500), whoever sends them."""
    left = [count]

    def take():
        if left[0] == 0:
            return None
        left[0] -= 1
        return hub.fail_commit_status, hub.fail_commit_message

    hub.take_commit_failure = take


def _pushed(hub, repo_id: str) -> dict:
    """What the Hub saw of ``repo_id``: the commit requests sent, the commits made and every file of the last one
    (none when the repository is gone)."""
    requests = sum(1 for r in hub.requests if r.method == "POST" and f"/{repo_id}/commit/" in r.path)
    repo = hub.repos.get(repo_id)
    commits = repo.commits if repo is not None else ()
    files = {name: hub.read_file(repo_id, name) for name in commits[-1].snapshot} if commits else {}
    return {"commit_requests": requests, "commits": len(commits), "files": files}


def _repo_requests(hub) -> dict[str, int]:
    """How many repositories the clients asked to create and to delete (the paths do not name them)."""
    return {kind: sum(1 for r in hub.requests if r.path.endswith(f"/repos/{kind}")) for kind in ("create", "delete")}


PUSH_REPOS = ("ns/sharded-push", "ns/cli-sharded-push", "ns/cli-search-push", "ns/sharded-push-fails",
              "ns/cli-sharded-push-fails")


@pytest.fixture(scope="module")
def sharded(tiny, eval_set, tmp_path_factory):
    """One 2-process gloo group runs every scenario; returns the folders, the per-rank results and what the loopback
    Hub received from the pushes."""
    from hub_server import running_hub

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
        dict(name="search", kind="alpha_search",
             kwargs=dict(_search_kwargs(eval_set), output_dir=str(two / "search"))),
        dict(name="fixed-alpha", kind="alpha_search",
             kwargs=dict(_search_kwargs(eval_set), grid=None, alpha=0.9, output_dir=str(two / "fixed-alpha"))),
        dict(name="search-fails", kind="alpha_search", fail_evaluation=1,
             kwargs=dict(_search_kwargs(eval_set), output_dir=str(fail / "search"))),
        dict(name="search-mismatch", kind="alpha_search", rank1_kwargs=dict(grid="0.1,0.2"),
             kwargs=dict(_search_kwargs(eval_set), output_dir=str(fail / "search-mismatch"))),
        dict(name="cli-search", kind="cli", argv=_search_argv(eval_set, two / "cli-search")),
        dict(name="compare", kind="compare", kwargs=dict(common, methods="ta", output_dir=str(fail / "compare"))),
        # the Hub rejects the first 2 commits: these two pushes fail, the next two succeed
        dict(name="push-fails", kind="merge_push", repo_id="ns/sharded-push-fails",
             kwargs=dict(common, method="tsv-m", output_dir=str(two / "push-fails"))),
        dict(name="cli-push-fails", kind="cli",
             argv=["merge", *_tiny_argv(tiny), "-o", str(two / "cli-push-fails"), "--push-to-hub",
                   "ns/cli-sharded-push-fails"]),
        dict(name="push", kind="merge_push", repo_id="ns/sharded-push",
             kwargs=dict(common, method="tsv-m", output_dir=str(two / "push"))),
        dict(name="cli-push", kind="cli",
             argv=["merge", *_tiny_argv(tiny), "--push-to-hub", "ns/cli-sharded-push"]),  # in memory: no -o
        dict(name="cli-search-push", kind="cli",
             argv=[*_search_argv(eval_set, two / "cli-search-push"), "--push-to-hub", "ns/cli-search-push"]),
    ]
    (root / "results").mkdir()
    with running_hub(root / "hub") as hub:
        _fail_first_commits(hub, 2)
        assert run_group(scenarios, root / "results", timeout_s=60, env=_hub_env()) == [0, 0]
        pushed = {repo_id: _pushed(hub, repo_id) for repo_id in PUSH_REPOS}
        repo_requests = _repo_requests(hub)
    return {"two": two, "fail": fail, "results": root / "results", "pushed": pushed, "repo_requests": repo_requests}


def _tiny_argv(tiny) -> list[str]:
    return [str(tiny["base"]), *map(str, tiny["tasks"])]


def _search_kwargs(eval_set: dict) -> dict:
    return dict(base=eval_set["base"], models=eval_set["tasks"], spec=eval_set["spec"], grid=SEARCH_GRID,
                progress=False)


@contextlib.contextmanager
def one_torch_thread():
    """Run the body with one torch thread (as each process of the group has), restoring the count after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def single(tiny, tmp_path_factory):
    """The same merges in this one process, with one torch thread (as each of the 2 processes has)."""
    root = tmp_path_factory.mktemp("single")
    with one_torch_thread():
        for m in METHODS:
            hf_tsv.merge(tiny["base"], tiny["tasks"], method=m, output_dir=root / m)
        hf_tsv.merge(tiny["base"], tiny["tasks"], method="tsv-m", output_dir=root / "tsv-m-shards",
                     max_shard_size="20KB")
        hf_tsv.compress(tiny["base"], tiny["tasks"], root / "compress")
        sti = hf_tsv.sti(tiny["base"], tiny["tasks"])
        memory = hf_tsv.merge(tiny["base"], tiny["tasks"], method="tsv-m").state_dict()
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


@pytest.mark.parametrize("scenario, what, rank", [
    pytest.param("mismatch", "merge", 0, id="DST-01"),  # process 1 asks for float16 output, process 0 the base's
    pytest.param("mismatch", "merge", 1, id="mismatch-1"),
    pytest.param("search-mismatch", "α search", 0, id="DST-06"),  # process 1 searches another α grid
    pytest.param("search-mismatch", "α search", 1, id="search-mismatch-1"),
])
def test_processes_given_different_arguments_are_refused(sharded, scenario, what, rank):
    """Processes given other options (or, for an α search, other search arguments: checked after the tasks are
    prepared) all refuse before any merging, and leave nothing."""
    record = _result(sharded["results"], scenario, rank)
    assert not record["ok"] and record["type"] == "MergeInputError"
    assert record["message"].startswith(f"process 1 of 2 planned a different {what} than process 0")
    assert not (sharded["fail"] / scenario).exists()


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


@pytest.fixture(scope="module")
def single_search(eval_set, tmp_path_factory):
    """The α search with its evaluation in this one process (one torch thread), from Python and from the CLI."""
    from hf_tsv.cli import main
    from hf_tsv.evaluation import load_tasks_spec
    from hf_tsv.evaluation.select import merge_with_alpha_search

    root = tmp_path_factory.mktemp("single_search")
    with one_torch_thread():
        kwargs = _search_kwargs(eval_set)
        config = load_tasks_spec(kwargs.pop("spec"))
        result, search, test = merge_with_alpha_search(kwargs.pop("base"), kwargs.pop("models"), config,
                                                       output_dir=root / "search", **kwargs)
        fixed = merge_with_alpha_search(eval_set["base"], eval_set["tasks"], config, alpha=0.9, progress=False,
                                        output_dir=root / "fixed-alpha")[2]
        assert main([*_search_argv(eval_set, root / "cli-search"), "--threads", "1"]) == 0
    return {"root": root, "alpha": result.report.alpha, "search": search.to_dict(), "test": test.to_dict(),
            "fixed": fixed.to_dict()}


def test_alpha_search_sharded_equals_one_process(sharded, single_search):
    """Each process scores half the α grid and half the tasks: every process ends with the α, validation sweep
    (same values, same order) and test scores of one process, and the files written are byte-identical."""
    sweep = single_search["search"]["sweep"]
    scores = [s["mean_normalized_accuracy"] for s in sweep]
    assert len(set(scores)) > 2, "α must change the scores for this to test"
    best = [s["alpha"] for s in sweep if s["mean_normalized_accuracy"] == max(scores)]
    assert len(best) > 1 and single_search["alpha"] == min(best), "a tie at the best, broken to the smaller α"
    for rank in (0, 1):
        record = _result(sharded["results"], "search", rank)
        assert record["ok"], record.get("traceback")
        assert record["alpha"] == single_search["alpha"]
        assert record["search"] == single_search["search"]
        assert record["test"] == single_search["test"]
    two, one = sharded["two"] / "search", single_search["root"] / "search"
    assert {"model.safetensors", "eval_results.json", "eval_alpha_search.json"} <= set(_files(two))
    assert _files(two) == _files(one)
    assert _report(two) == _report(one)


def test_eval_at_a_fixed_alpha_sharded_equals_one_process(sharded, single_search):
    """`--eval` with a fixed α: no sweep, the test evaluation shared by task; the scores and files of one process."""
    for rank in (0, 1):
        record = _result(sharded["results"], "fixed-alpha", rank)
        assert record["ok"], record.get("traceback")
        assert record["alpha"] == 0.9 and record["search"] is None and record["test"] == single_search["fixed"]
    two, one = sharded["two"] / "fixed-alpha", single_search["root"] / "fixed-alpha"
    assert _files(two) == _files(one) and "eval_alpha_search.json" not in _files(two)


def test_cli_alpha_search_under_two_processes_equals_one_process(sharded, single_search):
    """`torchrun --nproc-per-node 2 -m hf_tsv merge … --alpha search --eval SPEC` (the CLI in a 2-process group):
    exit 0 on both processes, the files of `hf-tsv merge … --threads 1`; the report differs in timings, device and
    the recorded command (which has --threads 1) only."""
    assert [_result(sharded["results"], "cli-search", rank)["code"] for rank in (0, 1)] == [0, 0]
    two, one = sharded["two"] / "cli-search", single_search["root"] / "cli-search"
    assert _files(two) == _files(one)
    reports = [_report(two), _report(one)]
    for report in reports:
        report.pop("command")
    assert reports[0] == reports[1] and reports[0]["alpha"] == single_search["alpha"]


def test_a_process_failing_in_the_alpha_search_leaves_no_output(sharded):
    """Process 1 raises while scoring its α values: process 0 raises DistributedMergeError naming it; no output."""
    first, second = (_result(sharded["results"], "search-fails", rank) for rank in (0, 1))
    assert not first["ok"] and first["type"] == "DistributedMergeError"
    assert first["message"] == ("process 1 of 2 failed while searching α: RuntimeError: injected evaluation "
                                "failure; no output was written")
    assert not second["ok"] and second["message"] == "injected evaluation failure"
    assert _leftovers(sharded["fail"]) == [] and not (sharded["fail"] / "search").exists()


@pytest.fixture(scope="module")
def single_push(tiny, tmp_path_factory) -> dict:
    """The push scenario's merge and push in this one process (one torch thread), to the same repository id of
    another loopback Hub: what the Hub holds after a 1-process push."""
    from hub_server import running_hub

    root = tmp_path_factory.mktemp("single_push")
    with one_torch_thread(), running_hub(root / "hub") as hub:
        hf_tsv.merge(tiny["base"], tiny["tasks"], method="tsv-m", output_dir=root / "push").push_to_hub(
            "ns/sharded-push")
        return _pushed(hub, "ns/sharded-push")


def _without_run_details(files: dict) -> dict:
    """The pushed files, the report without its timings and device (as :func:`_report`), the card without them
    either (its device and merge time lines)."""
    files = dict(files)
    report = json.loads(files.pop("merge_report.json"))
    report.pop("timings")
    report["options"].pop("device")
    import re

    card = files.pop("README.md").decode().replace(" × 2 processes (gloo) |", " |")
    card = re.sub(r"\| merge time \| [0-9.]+ s \|", "| merge time | … |", card)
    return {**files, "merge_report.json": report, "README.md": card}


def test_a_sharded_merge_is_pushed_once_by_the_main_process(sharded, single_push):
    """`result.push_to_hub` on both processes of a sharded merge: one repository creation, one commit, whose files
    are a 1-process push's (the report but for timings and device); both processes return the same URL."""
    pushed = sharded["pushed"]["ns/sharded-push"]
    assert (pushed["commits"], pushed["commit_requests"]) == (1, 1)
    assert sharded["repo_requests"] == {"create": len(PUSH_REPOS), "delete": 2}  # one per push; the failed removed
    assert single_push["commits"] == 1
    assert _without_run_details(pushed["files"]) == _without_run_details(single_push["files"])
    records = [_result(sharded["results"], "push", rank) for rank in (0, 1)]
    assert all(r["ok"] for r in records), records
    assert records[0]["url"] == records[1]["url"]
    assert records[0]["files"] == sorted(set(pushed["files"]) - {".gitattributes"})  # the Hub made that one


def test_cli_push_under_two_processes_is_one_commit(sharded, single_push):
    """`torchrun --nproc-per-node 2 -m hf_tsv merge … --push-to-hub` (no -o: the merge held in memory): exit 0 on
    both processes, one commit with the weights of a 1-process push."""
    assert [_result(sharded["results"], "cli-push", rank)["code"] for rank in (0, 1)] == [0, 0]
    pushed = sharded["pushed"]["ns/cli-sharded-push"]
    assert (pushed["commits"], pushed["commit_requests"]) == (1, 1)
    assert set(pushed["files"]) == set(single_push["files"])
    assert pushed["files"]["model.safetensors"] == single_push["files"]["model.safetensors"]


def test_cli_alpha_search_push_under_two_processes_is_one_commit(sharded):
    """`torchrun … -m hf_tsv merge … --alpha search --eval SPEC --push-to-hub`: one commit, with the folder's files
    (weights and evaluation byte for byte)."""
    assert [_result(sharded["results"], "cli-search-push", rank)["code"] for rank in (0, 1)] == [0, 0]
    pushed = sharded["pushed"]["ns/cli-search-push"]
    assert (pushed["commits"], pushed["commit_requests"]) == (1, 1)
    folder = sharded["two"] / "cli-search-push"
    for name in ("model.safetensors", "eval_results.json", "eval_alpha_search.json"):
        assert pushed["files"][name] == (folder / name).read_bytes(), name


def test_a_failed_sharded_push_leaves_no_repository_and_fails_every_process(sharded):
    """The Hub rejects the commit: process 0 raises its PushError (the repository it created is removed), process 1
    a DistributedMergeError quoting it; the CLI exits 2 on both processes. Nothing is left on the Hub."""
    first, second = (_result(sharded["results"], "push-fails", rank) for rank in (0, 1))
    assert not first["ok"] and first["type"] == "PushError"
    assert first["message"].startswith("push to ns/sharded-push-fails failed: could not commit")
    assert "created by this push, was removed" in first["message"]
    assert not second["ok"] and second["type"] == "DistributedMergeError"
    assert second["message"] == f"process 0 of 2 failed while pushing to the Hub: {first['message']}"
    assert [_result(sharded["results"], "cli-push-fails", rank)["code"] for rank in (0, 1)] == [2, 2]
    for repo_id in ("ns/sharded-push-fails", "ns/cli-sharded-push-fails"):
        assert sharded["pushed"][repo_id] == {"commit_requests": 1, "commits": 0, "files": {}}


BENCH = "the benchmark cache and results"
UNSHARDED_WRITERS = [  # (argv, what it would write): every process would run it whole and write it at once
    pytest.param(["compare", "BASE", "FT1", "FT2", "-o", "OUT"], "the -o folder", id="DST-07"),
    pytest.param(["card", "OUT"], "the card files in OUT", id="DST-08"),
    pytest.param(["push", "OUT", "--repo-id", "ns/x"], "the Hub repository", id="push"),
    pytest.param(["space", "deploy", "ns/space"], "the Space", id="space-deploy"),
    pytest.param(["bench", "run", "--quick", "--cache", "OUT/c"], BENCH, id="bench-run"),
    pytest.param(["bench", "build", "--quick", "--cache", "OUT/c"], BENCH, id="bench-build"),
    pytest.param(["expand", "TSVC", "--task", "0", "-o", "OUT"], "the -o folder", id="expand"),
    pytest.param(["example", "-o", "OUT"], "the -o folder", id="example"),
    pytest.param(["eval", "MODEL", "--tasks", "SPEC", "--json", "OUT/eval.json"], "the --json file", id="eval-json"),
    pytest.param(["plan", "BASE", "FT1", "FT2", "--json", "OUT/plan.json"], "the --json file", id="plan-json"),
]


@pytest.fixture
def under_torchrun(monkeypatch):
    """The environment torchrun gives process ``rank`` of 2 (no process group is started: the commands refused here
    do not start one); the torch thread count the CLI sets is restored after."""
    threads = torch.get_num_threads()

    def enter(rank: int) -> None:
        for name, value in dict(WORLD_SIZE="2", RANK=str(rank), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                                MASTER_PORT="1").items():
            monkeypatch.setenv(name, value)

    yield enter
    torch.set_num_threads(threads)


@pytest.mark.parametrize(("argv", "target"), UNSHARDED_WRITERS)
def test_unsharded_commands_that_write_are_refused_under_torchrun(tmp_path, capsys, under_torchrun, argv, target):
    """`torchrun --nproc-per-node 2 -m hf_tsv compare …` (and card, push, space deploy, bench, expand, example, eval
    and plan with --json): every process exits 2 before any work (its inputs need not exist), process 0 with one
    line, the others silent; nothing is written."""
    from hf_tsv.cli import main

    argv = [a.replace("OUT", str(tmp_path / "out")) for a in argv]
    for rank in (0, 1):
        under_torchrun(rank)
        assert main(argv) == 2
        err = capsys.readouterr().err
        if rank == 0:
            assert err == (f"hf-tsv {argv[0]}: error: {argv[0]} does not shard over processes: each of the 2 "
                           f"processes torchrun started would run it whole and write {target} at once; run it in "
                           "one process (without torchrun)\n")
        else:
            assert err == ""
    assert list(tmp_path.iterdir()) == []


def test_read_only_commands_still_run_under_torchrun(tiny, capsys, under_torchrun):
    """`plan` without --json only reads and prints: each process may run it."""
    from hf_tsv.cli import main

    under_torchrun(0)
    assert main(["plan", str(tiny["base"]), *map(str, tiny["tasks"])]) == 0
    assert "plan: tsv-m over 3 models" in capsys.readouterr().out


@pytest.mark.parametrize("rank", [0, 1])
def test_compare_is_refused_in_a_process_group(sharded, rank):
    """`hf_tsv.compare(..., output_dir=...)` on both processes of a group: refused on each before any work."""
    record = _result(sharded["results"], "compare", rank)
    assert not record["ok"] and record["type"] == "MergeInputError"
    assert record["message"] == ("compare does not shard over processes: each of the 2 processes of this process "
                                 "group would run it whole and write output_dir at once; run it in one process "
                                 "(without torchrun or a process group)")
    assert not (sharded["fail"] / "compare").exists()


BAR_UNITS = ("key/s", "img/s", "α/s", "task/s", "it/s")  # what every tqdm bar of hf_tsv shows as it starts


def test_only_the_main_process_draws_progress_bars(sharded):
    """Every scenario (merges, STI, TSV-C, the α search and the CLI) runs with bars on: process 0's stderr has them,
    process 1's has none (nor a bar's carriage returns)."""
    first, second = ((sharded["results"] / f"stderr.rank{rank}.txt").read_text(errors="replace") for rank in (0, 1))
    assert "merge:" in first and "key/s" in first, "process 0 draws its bars (the capture works)"
    assert not [unit for unit in BAR_UNITS if unit in second] and "%|" not in second and "\r" not in second, second


class _Exited(Exception):
    """``os._exit`` called (replaced in the test so that pytest's process goes on)."""


@pytest.mark.parametrize("world_size", ["2", "1"])
def test_the_program_ends_with_os_exit_under_torchrun(monkeypatch, capsys, tmp_path, world_size):
    """`python -m hf_tsv` (and the hf-tsv script) under torchrun ends with os._exit(status) after flushing its
    streams, so that no C++ static destructor runs after the process group is stopped (one aborted ~1 run in 35:
    `terminate called without an active exception`); in one process it exits as usual (SystemExit)."""
    from hf_tsv import cli

    exits: list[int] = []

    def fake_exit(status: int):
        exits.append(status)
        raise _Exited

    monkeypatch.setattr(cli.os, "_exit", fake_exit)
    monkeypatch.setenv("WORLD_SIZE", world_size)
    monkeypatch.setenv("RANK", "0")
    threads = torch.get_num_threads()
    argv = ["compare", "BASE", "FT1", "-o", str(tmp_path / "out")]  # refused under torchrun, a missing input else
    try:
        with pytest.raises(_Exited if world_size == "2" else SystemExit) as ended:
            cli.run_as_program(argv)
    finally:
        torch.set_num_threads(threads)
    assert "error:" in capsys.readouterr().err  # the line was written before the process ended
    assert exits == ([2] if world_size == "2" else []) and (world_size == "2" or ended.value.code == 2)


@pytest.mark.slow
def test_torchrun_ends_without_the_interpreter_exit(tiny, tmp_path):
    """A real `torchrun --nproc-per-node 2 -m hf_tsv merge`: exit 0, the bytes of one process, and neither process
    ran its exit handlers (an atexit probe installed by sitecustomize writes nothing): the processes ended with
    os._exit, after which no static destructor can abort them."""
    import os
    import shutil
    import subprocess
    import sys

    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    probe = tmp_path / "probe"
    probe.mkdir()
    (probe / "sitecustomize.py").write_text(
        "import atexit, os\n"
        "if os.environ.get('RANK') is not None:\n"
        "    atexit.register(lambda: open(os.path.join(os.environ['PROBE_DIR'], 'atexit.' + os.environ['RANK']), "
        "'w').close())\n")
    root = Path(__file__).resolve().parent.parent
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(probe), str(root), os.environ.get("PYTHONPATH", "")]),
               PROBE_DIR=str(probe), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    argv = ["merge", str(tiny["base"]), *map(str, tiny["tasks"]), "-o"]
    done = subprocess.run([torchrun, "--nproc-per-node", "2", "-m", "hf_tsv", *argv, str(tmp_path / "two")],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(p.name for p in probe.iterdir()) == ["sitecustomize.py"], "an exit handler ran"
    one = subprocess.run([sys.executable, "-m", "hf_tsv", *argv, str(tmp_path / "one"), "--threads", "1"], env=env,
                         capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    assert _sha(tmp_path / "two" / "model.safetensors") == _sha(tmp_path / "one" / "model.safetensors")


@pytest.mark.parametrize("rank, shown", [(0, True), (1, False)])
def test_warnings_are_printed_by_the_main_process_only(rank, shown, under_torchrun, capsys):
    """Every process of a sharded run holds the same report warnings: only process 0 prints them, so they show once."""
    from hf_tsv import cli

    under_torchrun(rank)
    cli._print_warnings(["the fine-tunes disagree on a key"])
    assert ("warning: the fine-tunes disagree on a key" in capsys.readouterr().err) is shown
