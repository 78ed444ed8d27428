"""The Space's Compare tab (spaces_app/): /compare streams one table row per method as each finishes (a typed
CompareJob in a worker, hf_tsv.iter_compare's numbers), evaluates only on the operator's tasks, and /keep merges
the chosen method (its card holds the comparison) for the existing /push with the visitor's token. Bad inputs are
visitor messages (rows SPC-01..)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from gradio_client import Client
from gradio_client.exceptions import AppError
from hub_server import running_hub
from space_helpers import import_space, make_eval_tasks, running_space, zip_contents

import hf_tsv
from hf_tsv.synthetic import make_checkpoints

app, space_core = import_space()
TASKS = ["task_00", "task_01", "task_02"]
EVAL_TASKS = ["cars", "dtd", "eurosat"]
METHODS = ["tsv-m", "ta", "ties"]


@pytest.fixture(scope="module")
def library(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("space-compare") / "library"
    make_checkpoints(folder, preset="tiny", num_tasks=3, seed=5, relative_size=0.5)
    # a model of another width: its merge fails in the worker (SPC-07)
    make_checkpoints(folder / "wide", preset="tiny", num_tasks=2, seed=6, config_overrides={"hidden_size": 48})
    (folder / "wide" / "task_00").rename(folder / "wide_ft")
    return folder


@pytest.fixture(scope="module")
def eval_spec(tmp_path_factory) -> Path:
    return make_eval_tasks(tmp_path_factory.mktemp("space-compare-eval"), EVAL_TASKS, seed=11)


@pytest.fixture(scope="module")
def plain(library):
    """A Space without evaluation tasks (STI and merged-weight statistics only); two workers ahead."""
    with running_space(space_core.Settings(library=library, threads=1), spares=2) as served:
        yield served


@pytest.fixture(scope="module")
def client(plain, tmp_path_factory):
    return Client(plain.url, verbose=False, download_files=str(tmp_path_factory.mktemp("downloads")))


def compare_args(methods=METHODS, evaluate=False, models=TASKS, base="base", base_hub="") -> dict:
    return dict(base_library=base, base_hub=base_hub, models_library=list(models), models_hub="",
                methods=list(methods), fuse_qkv=False, device="cpu", evaluate=evaluate)


def stream(client: Client, **args) -> list[tuple]:
    """Every update /compare yields, in order."""
    job = client.submit(**args, api_name="/compare")
    job.result()
    return [tuple(update) for update in job.outputs()]


def table_rows(table: str) -> list[str]:
    """The first cell of each row of the comparison table."""
    return [line.split(" | ")[0].lstrip("| ") for line in table.splitlines()[2:] if line.startswith("| ")]


@pytest.fixture(scope="module")
def compared(client):
    return stream(client, **compare_args())


def test_compare_fills_in_one_row_per_method_as_each_finishes(compared, library):
    tables = [update[1] for update in compared if isinstance(update[1], str)]  # the others: progress only
    seen = [table_rows(t) for t in tables]
    # the table grows one method at a time, in the order of hf_tsv.METHODS
    assert [rows for i, rows in enumerate(seen) if i == 0 or rows != seen[i - 1]] == [
        [], ["Task arithmetic"], ["Task arithmetic", "TIES"], ["Task arithmetic", "TIES", "TSV-M"]]
    progress = compared[-1][0]
    assert progress.count("✅") == 3 and "TIES" in progress and "waiting" not in progress
    assert any("⏳ **TSV-M (Task Singular Vectors)**: merge" in update[0] and "✅ **TIES**" in update[0]
               for update in compared)

    expected = {e.method: e for e in hf_tsv.iter_compare(library / "base", [library / t for t in TASKS],
                                                         methods=METHODS, alpha="default", progress=False)}
    final = tables[-1]
    assert f"| TSV-M | – | – | – | 1 | {expected['tsv-m'].sti['total']:.4g} | " \
           f"{expected['tsv-m'].delta['frobenius_norm']:.3g} |" in final
    assert f"| Task arithmetic | – | – | – | 0.3 | – | {expected['ta'].delta['frobenius_norm']:.3g} |" in final
    accuracy, sti, choice = compared[-1][2:5]
    assert accuracy["value"] is None and not accuracy["visible"]  # no evaluation tasks here: no accuracy plot
    assert Path(sti).read_bytes().startswith(b"\x89PNG")
    assert choice["value"] == "ta" and [value for _, value in choice["choices"]] == ["ta", "ties", "tsv-m"]


def test_keep_merges_the_chosen_method_and_push_sends_it_with_the_comparison(client, compared, library, tmp_path,
                                                                             caplog):
    note, _, _, _, _, download, *_ = client.predict(choice="ta", api_name="/keep")
    files = zip_contents(download)
    folder = "hf-tsv-ta-merge/"
    assert {folder + n for n in ("compare.json", "compare.md", "compare_sti_per_layer.png", "model.safetensors",
                                 "README.md")} <= set(files)
    report = json.loads(files[folder + "merge_report.json"])
    assert report["method"] == "ta" and report["alpha"] == 0.3  # the α it was compared at
    card = files[folder + "README.md"].decode()
    assert "| Task arithmetic | – | – | – | 0.3 |" in card and str(library) not in card
    assert "Task arithmetic merge of 3 models" in note and "Push to Hub" in note

    with running_hub(tmp_path / "hub", token_in_env=True) as hub:
        status, _ = client.predict(repo_id="hf-tsv-tester/compared", private=True, create_pr=False,
                                   token=hub.token, api_name="/push")
        (commit,) = hub.repos["hf-tsv-tester/compared"].commits
        assert {"compare.json", "compare.md", "model.safetensors"} <= set(commit.files)
        assert hub.read_file("hf-tsv-tester/compared", "model.safetensors") == files[folder + "model.safetensors"]
    assert hub.token not in status and hub.token not in caplog.text


def test_compare_evaluates_on_the_operators_tasks(library, eval_spec, tmp_path):
    """With HF_TSV_SPACE_TASKS: the references first (each task by its paired fine-tuned model, then the base),
    then each method, with the test accuracies of hf_tsv.iter_compare on the same tasks."""
    from hf_tsv.evaluation.evaluator import TasksEvaluator

    settings = space_core.Settings(library=library, threads=1, tasks=eval_spec, eval_max_examples=16)
    with running_space(settings, spares=1, env={"HF_TSV_SPACE_WORKER_EVAL": "1"}) as served:
        updates = stream(Client(served.url, verbose=False, download_files=str(tmp_path)),
                         **compare_args(methods=["ta", "tsv-m"], evaluate=True))
    final = updates[-1][1]
    assert table_rows(final) == ["Fine-tuned (own task)", "Zero-shot", "Task arithmetic", "TSV-M"]
    evaluator = TasksEvaluator.from_spec(eval_spec, processor_from=library / "base", splits=("test",),
                                         max_examples=16, progress=False)
    expected = {e.method: e for e in hf_tsv.iter_compare(library / "base", [library / t for t in TASKS],
                                                         methods=["tsv-m", "ta"], evaluator=evaluator,
                                                         alpha="default", progress=False)}
    for title, name in (("TSV-M", "tsv-m"), ("Task arithmetic", "ta"), ("Zero-shot", "zero-shot")):
        test = expected[name].test
        assert f"| {title} | {test.absolute:.1f} | {test.normalized:.1f} |" in final, name
    assert " cars | dtd | eurosat |" in final.splitlines()[0]
    accuracy = updates[-1][2]
    assert accuracy["visible"] and Path(accuracy["value"]).read_bytes().startswith(b"\x89PNG")


def test_compare_jobs_are_typed_and_round_trip():
    job = space_core.CompareJob(base="base", models=("a", "b"), device="cpu", methods=("tsv-m", "ta"),
                                output="/srv/cmp", labels=("base", "a", "b"), scrub=("/srv",),
                                evaluate=space_core.EvaluationSettings("/srv/tasks.json", 8))
    again = space_core.job_from_json(space_core.job_to_json(job))
    assert again == job and type(again) is space_core.CompareJob
    keep = space_core.MergeJob(base="base", models=("a", "b"), output="/srv/o", method="ta", comparison="/srv/cmp")
    assert space_core.job_from_json(space_core.job_to_json(keep)) == keep


def test_the_view_follows_worker_events():
    view = app.CompareView(["tsv-m", "ta"], ["zero-shot"])
    assert not view.follow({"event": "step", "row": "zero-shot", "step": "evaluate"})
    assert not view.follow({"event": "row", "row": {"method": "elsewhere"}})  # not a row of this comparison
    assert view.follow({"event": "row", "row": {"method": "ta", "title": "Task arithmetic", "seconds": 1.5}})
    assert view.finished == ["ta"]
    assert view.progress_markdown().splitlines() == ["- ⏳ **Zero-shot**: evaluate",
                                                     "- · **TSV-M (Task Singular Vectors)**: waiting",
                                                     "- ✅ **Task arithmetic**: done in 1.5 s"]


BAD_COMPARES = [
    pytest.param(compare_args(methods=[]), "tick at least one method to compare", id="SPC-01"),
    pytest.param(compare_args(methods=["tsv-m", "magic"]), "'magic'.* is not in the list of choices", id="SPC-02"),
    pytest.param(compare_args(evaluate=True), r"no evaluation tasks are configured on this server", id="SPC-03"),
    pytest.param(compare_args(base=None, base_hub="../../etc/passwd"), "is not a Hub id", id="SPC-04"),
    pytest.param(compare_args(models=["task_00"]), "at least two fine-tuned models", id="SPC-05"),
]


@pytest.mark.parametrize("args, message", BAD_COMPARES)
def test_bad_compare_inputs_are_visitor_messages(client, plain, args, message):
    before = sorted(p.name for d in plain.workspace.root.glob("session-*") for p in d.iterdir())
    with pytest.raises(AppError, match=message):
        client.predict(**args, api_name="/compare")
    after = sorted(p.name for d in plain.workspace.root.glob("session-*") for p in d.iterdir())
    assert after == before  # refused before any job folder was made


@pytest.mark.parametrize("choice, message, fresh", [
    pytest.param("ta", "there is no comparison in this session", True, id="SPC-06"),
    pytest.param("iso-c", r"unknown method 'iso-c'; choose one of ta, ties, tsv-m", False, id="SPC-08"),
])
def test_keeping_needs_a_compared_method(client, compared, choice, message, fresh):
    with pytest.raises(AppError, match=message):
        (Client(client.src, verbose=False) if fresh else client).predict(choice=choice, api_name="/keep")


@pytest.mark.parametrize("models", [pytest.param(["task_00", "wide_ft"], id="SPC-07")])
def test_a_failing_comparison_is_a_visitor_message_without_server_paths(client, plain, library, models):
    """A fine-tuned model of another width fails in the worker; the visitor reads hf_tsv's reason."""
    with pytest.raises(AppError) as refused:
        client.predict(**compare_args(models=models), api_name="/compare")
    message = str(refused.value)
    assert "wide_ft" in message and str(library) not in message and str(plain.workspace.root) not in message
    assert "internal error" not in message
