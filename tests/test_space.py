"""The Gradio Space (spaces_app/): /sti, /merge (with evaluation on configured tasks) and /push through
gradio_client against tiny checkpoints in a model library, refusal of paths, limits, worker isolation, and
`python spaces_app/app.py` serving the app."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from unittest import mock

import pytest
import torch
from gradio_client import Client
from gradio_client.exceptions import AppError
from hub_server import running_hub
from safetensors.torch import load as load_safetensors
from space_helpers import SPACES_APP, free_port, import_space, make_eval_tasks, running_space, zip_contents

import hf_tsv
from hf_tsv.report import MergeReport
from hf_tsv.sti_table import sti_heatmap_png
from hf_tsv.synthetic import make_checkpoints

app, space_core = import_space()
TASKS = ["task_00", "task_01", "task_02"]
EVAL_TASKS = ["cars", "dtd", "eurosat"]  # evaluation task i is paired with fine-tuned model TASKS[i]
EVAL_MAX_EXAMPLES = 16  # of the 20 test images of each task
MERGED_FILES = {"README.md", "config.json", "eval_results.json", "eval_results.md", "merge_report.json",
                "model.safetensors", "sti_heatmap.png", "sti_stats.json"}


@pytest.fixture(scope="module")
def library(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("space") / "library"
    # fine-tuned models far enough from the base that their predictions (and so the evaluation) differ
    make_checkpoints(folder, preset="tiny", num_tasks=3, seed=5, relative_size=0.5)
    return folder


@pytest.fixture(scope="module")
def eval_spec(tmp_path_factory) -> Path:
    """The operator's task spec (HF_TSV_SPACE_TASKS): three tiny tasks on disk with random 32-d heads."""
    return make_eval_tasks(tmp_path_factory.mktemp("space-eval"), EVAL_TASKS, seed=11)


@pytest.fixture(scope="module")
def space(library, eval_spec):
    settings = space_core.Settings(library=library, threads=1, tasks=eval_spec, eval_max_examples=EVAL_MAX_EXAMPLES)
    # two workers started ahead: one for /sti, one for /merge
    with running_space(settings, spares=2) as served:
        yield served


@pytest.fixture(scope="module")
def client(space, tmp_path_factory):
    return Client(space.url, verbose=False, download_files=str(tmp_path_factory.mktemp("downloads")))


def library_args(base="base", models=TASKS, base_hub="", models_hub="") -> dict:
    return dict(base_library=base, base_hub=base_hub, models_library=list(models), models_hub=models_hub)


@pytest.fixture(scope="module")
def progress_seen():
    return []


@pytest.fixture(scope="module")
def merged(client, progress_seen):
    """One TSV-M merge (α = 0.8, evaluated on the configured tasks) in the client's session. ``progress_seen``
    records each progress event that reached the app from the worker, with what gr.Progress was tracking after
    it."""
    relay = app.ProgressMirror.__call__

    def recording(mirror, event):
        relay(mirror, event)
        tracked = [(it.desc, it.index, it.length) for it in getattr(mirror.progress, "iterables", [])]
        progress_seen.append((event, tracked))

    with mock.patch.object(app.ProgressMirror, "__call__", recording):
        return client.predict(**library_args(), method="tsv-m", alpha=0.8, fuse_qkv=False, device="cpu",
                              evaluate=True, api_name="/merge")


def test_sti_endpoint_gives_the_librarys_numbers(client, library):
    heatmap, table, raw, summary = client.predict(**library_args(), fuse_qkv=False, device="cpu", api_name="/sti")
    expected = hf_tsv.sti(library / "base", [library / t for t in TASKS], device="cpu")

    assert raw["keys"].keys() == expected.keys.keys() and len(raw["keys"]) == 13
    for key, value in expected.keys.items():
        assert raw["keys"][key] == pytest.approx(value, rel=1e-9, abs=1e-12), key
    assert raw["total"] == pytest.approx(expected.total, rel=1e-9) and raw["num_tasks"] == 3
    assert f"**Total STI: {expected.total:.4g}**" in summary

    assert table["headers"] == ["layer", "q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2", "layer total"]
    rows = {row[0]: row for row in table["data"]}
    assert set(rows) == {"0", "1", "embeddings.position_embedding"}
    assert rows["1"][4] == f"{expected.keys['encoder.layers.1.self_attn.out_proj.weight']:.4g}"
    layer0 = sum(v for k, v in expected.keys.items() if ".layers.0." in k)
    assert rows["0"][-1] == f"{layer0:.4g}"

    png = Path(heatmap).read_bytes()
    assert png == sti_heatmap_png(raw["keys"], "STI per layer — 3 models of base")


def test_merge_endpoint_gives_the_librarys_merge_card_and_download(merged, library):
    summary, heatmap, card, download, _ = merged
    files = zip_contents(download)
    assert {name.split("/", 1)[1] for name in files} == MERGED_FILES
    assert {name.split("/", 1)[0] for name in files} == {"hf-tsv-tsv-m-merge"}
    folder = "hf-tsv-tsv-m-merge/"

    expected = hf_tsv.merge(library / "base", [library / t for t in TASKS], alpha=0.8, device="cpu")
    weights = load_safetensors(files[folder + "model.safetensors"])
    reference = expected.state_dict()
    assert weights.keys() == reference.keys()
    assert all(torch.equal(weights[k], reference[k]) for k in reference)

    report = json.loads(files[folder + "merge_report.json"])
    assert report["method"] == "tsv-m" and report["alpha"] == 0.8 and report["num_tasks"] == 3
    assert report["sti"]["total"] == pytest.approx(expected.report.sti.total, rel=1e-9)
    assert [m["name"] for m in report["models"]] == TASKS
    assert report["command"] == "hf-tsv merge base task_00 task_01 task_02 --method tsv-m --alpha 0.8 -o " \
                                "hf-tsv-tsv-m-merge"
    assert Path(heatmap).read_bytes() == files[folder + "sti_heatmap.png"]

    assert "α = 0.8" in summary and f"{report['sti']['total']:.4g}" in summary
    for section in ("# hf-tsv-tsv-m-merge", "## Method", "## Merged models", "## Singular Task Interference (STI)",
                    "## Evaluation", "## Usage", "Scaling factor **α = 0.8**", "`task_02` (local folder)", "```yaml"):
        assert section in card, section
    for text in (card, files[folder + "README.md"].decode(), files[folder + "merge_report.json"].decode()):
        assert str(library) not in text and str(library.parent) not in text  # no server path leaks


def test_merge_progress_is_relayed_from_the_worker(merged, progress_seen):
    events = [event for event, _ in progress_seen]
    stages = [e["text"] for e in events if e["event"] == "stage"]
    assert stages == ["reading the models", "loading the evaluation tasks",
                      "evaluating the fine-tuned models (references of normalised accuracy)",
                      "evaluating the merged model", "writing the model card", "packing the download"]
    bars = [e for e in events if e["event"] == "bar" and e["desc"] == "tsv-m merge"]
    assert bars and bars[-1]["n"] == bars[-1]["total"] == 39 and bars[-1]["unit"] == "key"
    assert any(e["event"] == "close" and e["id"] == bars[-1]["id"] for e in events)
    # the mirrored tqdm bar was tracked by gr.Progress(track_tqdm=True), up to the last key
    tracked = [t for event, tracked in progress_seen if event is bars[-1] for t in tracked]
    assert ("tsv-m merge", 39, 39) in tracked


def test_merge_is_evaluated_on_the_configured_tasks(merged, library, eval_spec, tmp_path):
    """The evaluation shown and written by the Space is hf_tsv.evaluation's on the same merged weights, with task
    i normalised by fine-tuned model i; the card shows it."""
    import zipfile

    from hf_tsv.evaluation import (
        evaluate_model,
        fill_finetuned_references,
        load_tasks_spec,
        load_vision_model,
        prepare_tasks,
        projection_for,
    )

    summary, _, card, download, evaluation = merged
    with zipfile.ZipFile(download) as archive:
        archive.extractall(tmp_path)
    folder = tmp_path / "hf-tsv-tsv-m-merge"

    config = load_tasks_spec(eval_spec)
    prepared = prepare_tasks(config, None, max_examples=EVAL_MAX_EXAMPLES, progress=False)
    fill_finetuned_references([library / t for t in TASKS], prepared, config=config, progress=False)
    model = load_vision_model(folder)
    expected = evaluate_model(model, prepared, projection=projection_for(model, config), progress=False)

    results = json.loads((folder / "eval_results.json").read_text())
    assert results == json.loads(json.dumps(expected.to_eval_results()))
    assert list(results["tasks"]) == EVAL_TASKS and all(v["normalized"] is not None for v in results["tasks"].values())
    assert all(t["num_examples"] == EVAL_MAX_EXAMPLES for t in expected.tasks.values())
    assert (folder / "eval_results.md").read_text() == expected.table() + "\n"

    assert "### Evaluation" in evaluation and expected.table() in evaluation
    assert "cars ↔ `task_00`, dtd ↔ `task_01`, eurosat ↔ `task_02`" in evaluation
    assert f"mean accuracy **{expected.mean_accuracy:.2f} %**" in summary
    assert f"normalised **{expected.mean_normalized_accuracy:.2f} %**" in summary
    for task, scores in results["tasks"].items():
        assert f"| {task} | data_{task} | {scores['absolute']:.2f} | {scores['normalized']:.2f} |" in card
    assert "name: normalized accuracy (% of the fine-tuned model)" in card  # the card's model-index metadata
    assert str(eval_spec.parent) not in evaluation + card


def test_evaluation_without_pairs_or_that_fails_keeps_the_merge(library, eval_spec, tmp_path):
    """Two fine-tuned models for three tasks: absolute accuracy only. An evaluation that fails (heads of the
    wrong width, a dataset that went missing): the merge, card and zip are still made, and the message says why,
    without server paths."""
    import space_worker

    def job(name, spec, models=TASKS[:2]):
        return space_core.MergeJob(base=str(library / "base"), models=tuple(str(library / m) for m in models),
                                   method="ta", alpha=0.3, fuse_qkv=False, device="cpu",
                                   output=str(tmp_path / "out" / name), zip=str(tmp_path / "out" / f"{name}.zip"),
                                   command="hf-tsv merge", scrub=(str(library),),
                                   evaluate=space_core.EvaluationSettings(str(spec), 8))

    result = space_worker.run_merge(job("unpaired", eval_spec))
    evaluation = result["evaluation"]
    assert not evaluation["paired"] and evaluation["mean_normalized_accuracy"] is None
    assert all(v["normalized"] is None for v in evaluation["results"]["tasks"].values())
    shown = app.evaluation_markdown(evaluation, TASKS[:2], 8)
    assert "Absolute accuracy only" in shown and "2 fine-tuned models for the server's 3 tasks" in shown
    assert "| **mean** |" in shown and "## Evaluation" in (tmp_path / "out" / "unpaired" / "README.md").read_text()

    narrow = make_eval_tasks(tmp_path / "narrow", ["cars"], examples=4, head_dim=24)
    gone = make_eval_tasks(tmp_path / "gone", ["cars"], examples=4)
    import shutil

    shutil.rmtree(tmp_path / "gone" / "data_cars")
    for name, spec, message in (("narrow", narrow, "the model gives 32-d features but the head expects 24-d"),
                                ("gone", gone, "cannot load split 'test' of dataset 'data_cars'")):
        result = space_worker.run_merge(job(name, spec))
        error = result["evaluation"]["error"]
        assert message in error and str(tmp_path) not in error
        out = tmp_path / "out" / name
        assert not (out / "eval_results.json").exists() and not (out / "eval_results.md").exists()
        assert "No evaluation was run" in (out / "README.md").read_text()
        assert f"{name}/model.safetensors" in zip_contents(tmp_path / "out" / f"{name}.zip")
        assert "The evaluation failed:" in app.evaluation_markdown(result["evaluation"], TASKS[:2], 8)
        assert "evaluation: **failed**" in app.merge_summary(MergeReport.from_dict(result["report"]), 1, [],
                                                             result["evaluation"])


def test_push_uses_the_visitors_token_and_reaches_the_hub(client, merged, tmp_path, caplog):
    download = merged[3]
    # HF_TOKEN is set on the server (token_in_env): the Space must still refuse to push without the visitor's
    with running_hub(tmp_path / "hub", token_in_env=True) as hub:
        with pytest.raises(AppError, match="sign in with Hugging Face"):
            client.predict(repo_id="hf-tsv-tester/space-merge", private=True, create_pr=False, token="",
                           api_name="/push")
        assert "hf-tsv-tester/space-merge" not in hub.repos

        status, card = client.predict(repo_id="hf-tsv-tester/space-merge", private=True, create_pr=False,
                                      token=hub.token, api_name="/push")
        repo = hub.repos["hf-tsv-tester/space-merge"]
        (commit,) = repo.commits
        assert repo.private and not commit.is_pr and MERGED_FILES <= set(commit.files)
        assert hub.read_file("hf-tsv-tester/space-merge", "model.safetensors") == \
            zip_contents(download)["hf-tsv-tsv-m-merge/model.safetensors"]
        assert f"{hub.endpoint}/hf-tsv-tester/space-merge/commit/{commit.oid}" in status
        assert '.from_pretrained("hf-tsv-tester/space-merge")' in card and "# space-merge" in card

        # the sign-in path: a token handed over as gr.OAuthToken (what Client(oauth_token=...) sends)
        client.oauth_token = hub.token
        try:
            status, _ = client.predict(repo_id="hf-tsv-tester/space-merge-pr", private=False, create_pr=True,
                                       token="", api_name="/push")
        finally:
            client.oauth_token = None
        (pr,) = hub.repos["hf-tsv-tester/space-merge-pr"].commits
        assert pr.is_pr and not hub.repos["hf-tsv-tester/space-merge-pr"].private
        assert "pull request" in status and "/discussions/" in status

        with pytest.raises(AppError, match="not a repository id"):
            client.predict(repo_id="../etc", private=True, create_pr=False, token=hub.token, api_name="/push")
        with pytest.raises(AppError) as refused:
            client.predict(repo_id="other-user/space-merge", private=True, create_pr=False, token=hub.token + "x",
                           api_name="/push")
        assert hub.token not in str(refused.value) and "push to other-user/space-merge failed" in str(refused.value)
    assert hub.token not in status and hub.token not in caplog.text


@pytest.mark.parametrize("field", ["base_hub", "models_hub"])
def test_paths_are_refused(client, field):
    for bad in ["../../etc/passwd", "/etc/passwd", "~/.cache/huggingface/token", "./base", "base/../../etc",
                "C:\\Windows\\system.ini", "base/task_00/../../x", "..\\..\\etc"]:
        if field == "base_hub":
            args = library_args(base=None, base_hub=bad)
        else:
            args = library_args(models=["task_00"], models_hub=bad)
        with pytest.raises(AppError, match="is not a Hub id.*paths on the server are not accepted"):
            client.predict(**args, fuse_qkv=False, device="cpu", api_name="/sti")


def test_names_outside_the_library_are_refused(client, library):
    for bad in ["../../etc/passwd", str(library / "base"), "task_99"]:
        with pytest.raises(AppError, match="not in the list of choices|not a model of this server's library"):
            client.predict(**library_args(base=bad), fuse_qkv=False, device="cpu", api_name="/sti")
        with pytest.raises(AppError, match="not in the list of choices|not a model of this server's library"):
            client.predict(**library_args(models=["task_00", bad]), fuse_qkv=False, device="cpu", api_name="/sti")


def test_library_listing_keeps_to_the_library(tmp_path):
    library, outside = tmp_path / "library", tmp_path / "outside"
    for folder in (library / "base", library / "task", library / ".hidden", outside / "secret"):
        folder.mkdir(parents=True)
        (folder / "config.json").write_text("{}")
    (library / "no-config").mkdir()
    (library / "notes.txt").write_text("a file")
    (library / "escape").symlink_to(outside / "secret")
    (library / "up").symlink_to(tmp_path)
    (library / "alias").symlink_to(library / "base")
    assert list(space_core.library_models(library)) == ["alias", "base", "task"]

    settings = space_core.Settings(library=library)
    assert space_core.parse_library_name("base", settings).path == (library / "base").resolve()
    for bad in ["escape", "up", ".hidden", "no-config", "notes.txt", "../outside/secret", str(outside / "secret"),
                "base/", "", None, ["base"]]:
        with pytest.raises(space_core.SpaceError, match="not a model"):
            space_core.parse_library_name(bad, settings)
    with pytest.raises(space_core.SpaceError, match="no model library"):
        space_core.parse_library_name("base", space_core.Settings())


def test_hub_ids_are_checked():
    ref = space_core.parse_hub_id(" openai/clip-vit-base-patch32@refs/pr/3 ")
    assert (ref.repo_id, ref.revision, ref.worker_ref) == ("openai/clip-vit-base-patch32", "refs/pr/3",
                                                          "openai/clip-vit-base-patch32@refs/pr/3")
    for bad in ["clip", "a/b/c", "ns/name@", "ns/name@../x", "ns//name", "-ns/name", "ns/na me", "ns/name@a b"]:
        with pytest.raises(space_core.SpaceError, match="Hub id"):
            space_core.parse_hub_id(bad)


def test_limits_are_clear_messages(library, tmp_path):
    settings = space_core.Settings(library=library, max_models=2)
    resolve = space_core.resolve_inputs
    with pytest.raises(space_core.SpaceError, match="merges at most 2 at a time"):
        resolve("base", "", TASKS, "", settings)
    with pytest.raises(space_core.SpaceError, match="at least two"):
        resolve("base", "", ["task_00"], "", settings)
    with pytest.raises(space_core.SpaceError, match="given once; repeated: task_00"):
        resolve("base", "", ["task_00", "task_00"], "", settings)
    with pytest.raises(space_core.SpaceError, match="is the base model"):
        resolve("base", "", ["task_00", "base"], "", settings)
    with pytest.raises(space_core.SpaceError, match="not both"):
        resolve("base", "ns/base", ["task_00", "task_01"], "", settings)
    with pytest.raises(space_core.SpaceError, match="choose a base"):
        resolve(None, " ", ["task_00", "task_01"], "", settings)

    base, models = resolve("base", "", ["task_00"], "ns/ft-a", settings)
    assert [m.label for m in models] == ["task_00", "ns/ft-a"] and models[1].repo_id == "ns/ft-a"
    def read_bytes(model: str) -> int:  # what a worker reads: config.json and model.safetensors
        return sum((library / model / name).stat().st_size for name in ("config.json", "model.safetensors"))

    size = read_bytes("task_00")
    refs = [base, *models[:1]]
    assert space_core.check_total_size(refs, settings) == read_bytes("base") + size
    small = space_core.Settings(library=library, max_total_gb=1.5 * size / 1e9)
    with pytest.raises(space_core.SpaceError, match=r"limit of .* GB \(HF_TSV_SPACE_MAX_TOTAL_GB\)"):
        space_core.check_total_size(refs, small)

    # Hub models are sized from the Hub's file metadata, before any download
    from huggingface_hub import HfApi

    with running_hub(tmp_path / "hub"):
        HfApi().create_repo("hf-tsv-tester/ft-a")
        HfApi().upload_folder(repo_id="hf-tsv-tester/ft-a", folder_path=str(library / "task_00"))
        hub_ref = space_core.parse_hub_id("hf-tsv-tester/ft-a")
        assert space_core.model_bytes(hub_ref) == size
        with pytest.raises(space_core.SpaceError, match="limit of"):
            space_core.check_total_size([base, hub_ref], small)
        with pytest.raises(space_core.SpaceError, match="not found on the Hub"):
            space_core.model_bytes(space_core.parse_hub_id("hf-tsv-tester/missing"))
        with pytest.raises(space_core.SpaceError, match="no revision 'nope'"):
            space_core.model_bytes(space_core.parse_hub_id("hf-tsv-tester/ft-a@nope"))

        # what workers download stays in the Hub cache for later jobs, within HF_TSV_SPACE_MAX_CACHE_GB
        from huggingface_hub import hf_hub_download, scan_cache_dir

        cache = tmp_path / "worker-cache"
        hf_hub_download("hf-tsv-tester/ft-a", "model.safetensors", cache_dir=cache)
        assert space_core.prune_hub_cache(cache, 10 * size) == [] and len(scan_cache_dir(cache).repos) == 1
        assert space_core.prune_hub_cache(cache, size / 2) == ["hf-tsv-tester/ft-a"]
        assert not scan_cache_dir(cache).repos
    assert space_core.prune_hub_cache(tmp_path / "no-cache", 0) == []


def test_a_hub_id_without_network_is_a_clear_error(client):
    with pytest.raises(AppError, match="offline"):
        client.predict(**library_args(models=["task_00"], models_hub="someone/clip-ft"), fuse_qkv=False,
                       device="cpu", api_name="/sti")


def test_bad_options_are_refused_before_any_work(client):
    with pytest.raises(AppError, match="α must be above 0"):
        client.predict(**library_args(), method="ta", alpha=-1, fuse_qkv=False, device="cpu", evaluate=False,
                       api_name="/merge")
    with pytest.raises(AppError, match="&lt;img src=x onerror=alert") as markup:
        client.predict(**library_args(base=None, base_hub="<img src=x onerror=alert(1)>"), fuse_qkv=False,
                       device="cpu", api_name="/sti")
    assert "<img" not in str(markup.value)
    with pytest.raises(AppError, match="there is no merged model in this session"):
        Client(client.src, verbose=False).predict(repo_id="me/x", private=True, create_pr=False,
                                                  token="hf_" + "x" * 34, api_name="/push")


def _script(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "fake_worker.py"
    path.write_text(body)
    return path


def test_a_dying_worker_is_reported_and_the_server_keeps_serving(tmp_path, library):
    crash = _script(tmp_path, "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n")
    settings = space_core.Settings(library=library)
    with running_space(settings, script=crash, spares=0) as served:
        client = Client(served.url, verbose=False)
        with pytest.raises(AppError, match=r"no evaluation tasks are configured on this server \(HF_TSV_SPACE_TASKS"):
            client.predict(**library_args(), method="tsv-m", alpha=1.0, fuse_qkv=False, device="cpu", evaluate=True,
                           api_name="/merge")
        for _ in range(2):  # the server answers again after a worker died
            with pytest.raises(AppError, match=r"worker stopped unexpectedly \(out of memory\?\) \(killed by SIGKILL"):
                client.predict(**library_args(), fuse_qkv=False, device="cpu", api_name="/sti")
        session_dirs = list(served.workspace.root.glob("session-*"))
        assert session_dirs and not [job for d in session_dirs for job in d.iterdir()]  # failed jobs leave nothing
        assert not list(served.workspace.root.glob("worker-*"))  # nor do their workers

    sleeper = _script(tmp_path, "import time\ntime.sleep(60)\n")
    quick = space_core.Settings(timeout_s=1)
    workspace = space_core.Workspace(tmp_path)
    pool = space_core.WorkerPool(quick, workspace, script=sleeper, spares=0)
    started = time.monotonic()
    with pytest.raises(space_core.SpaceError, match="longer than this server's limit of 1 s"):
        pool.run(space_core.StiJob(base="base", models=("a", "b")), tmp_path / "job")
    assert time.monotonic() - started < 30
    workspace.close()
    assert not workspace.root.exists()


def test_app_script_serves_the_app(library, eval_spec, tmp_path):
    port = free_port()
    env = dict(os.environ, GRADIO_SERVER_NAME="127.0.0.1", GRADIO_SERVER_PORT=str(port),
               HF_TSV_MODEL_LIBRARY=str(library), HF_TSV_SPACE_SPARE_WORKERS="0", HF_TSV_SPACE_MAX_MODELS="5",
               HF_TSV_SPACE_TASKS=str(eval_spec), GRADIO_ANALYTICS_ENABLED="False")
    log_path = tmp_path / "app.log"
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen([sys.executable, str(SPACES_APP / "app.py")], cwd=tmp_path, env=env,
                                stdout=log_file, stderr=subprocess.STDOUT)
    try:
        info = None
        deadline = time.monotonic() + 90
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with opener.open(f"http://127.0.0.1:{port}/gradio_api/info", timeout=5) as response:
                    info = json.loads(response.read())
                break
            except OSError:
                time.sleep(0.5)
        assert info is not None, log_path.read_text()
        assert {"/sti", "/merge", "/push"} <= set(info["named_endpoints"])
        with opener.open(f"http://127.0.0.1:{port}/config", timeout=5) as response:
            config = response.read().decode()
        assert "At most 5 fine-tuned models" in config and "task_02" in config
        assert "Evaluate on the configured tasks" in config and "test split of cars, dtd, eurosat" in config
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    log = log_path.read_text()
    assert proc.returncode == 0, log
    (workspace,) = re.findall(r"temporary files go to (\S+)", log)
    assert not Path(workspace).exists()  # removed when the server stopped


def test_space_files_describe_the_space():
    readme = (SPACES_APP / "README.md").read_text()
    import gradio

    header = readme.split("---")[1]
    for line in ("sdk: gradio", f"sdk_version: {gradio.__version__}", "app_file: app.py", "hf_oauth: true",
                 "suggested_hardware: cpu-upgrade"):
        assert line in header, line
    requirements = (SPACES_APP / "requirements.txt").read_text()
    assert "hf-tsv space deploy" in requirements  # the folder's own file points at the deploy command


def test_settings_come_from_the_environment(library, eval_spec, tmp_path):
    settings = space_core.Settings.from_env({
        "HF_TSV_MODEL_LIBRARY": str(library), "HF_TSV_SPACE_MAX_MODELS": "4", "HF_TSV_SPACE_MAX_TOTAL_GB": "2.5",
        "HF_TSV_SPACE_CONCURRENCY": "2", "HF_TSV_SPACE_QUEUE_SIZE": "5", "HF_TSV_SPACE_TIMEOUT_S": "60",
        "HF_TSV_SPACE_THREADS": "3", "HF_TSV_SPACE_TASKS": str(eval_spec), "HF_TSV_SPACE_EVAL_MAX_EXAMPLES": "50",
        "HF_TSV_SPACE_SPARE_WORKERS": "0",
        "SYSTEM": "spaces", "SPACE_ID": "me/hf-tsv", "OAUTH_CLIENT_ID": "client-id"})
    assert (settings.library, settings.max_models, settings.max_total_gb, settings.concurrency) == (library, 4, 2.5, 2)
    assert (settings.queue_size, settings.timeout_s, settings.threads) == (5, 60, 3)
    assert (settings.tasks, settings.eval_max_examples) == (eval_spec.resolve(), 50)
    assert settings.spare_workers == 0 and settings.on_spaces
    defaults = space_core.Settings.from_env({"SYSTEM": "spaces", "SPACE_ID": "me/hf-tsv"})  # a Space without OAuth
    assert defaults.library is None and defaults.max_models == 8 and not defaults.on_spaces
    assert defaults.tasks is None and defaults.eval_max_examples == 1000
    headless = json.loads(eval_spec.read_text())
    headless["tasks"][0]["head"] = "missing.safetensors"
    (tmp_path / "headless.json").write_text(json.dumps(headless))
    (tmp_path / "broken.yaml").write_text("tasks: [")
    for bad in ({"HF_TSV_SPACE_MAX_MODELS": "many"}, {"HF_TSV_SPACE_MAX_MODELS": "1"},
                {"HF_TSV_MODEL_LIBRARY": str(tmp_path / "missing")}, {"HF_TSV_SPACE_TIMEOUT_S": "nan"},
                {"HF_TSV_SPACE_EVAL": "mod:fn"},  # the former evaluation hook: refused, not silently ignored
                {"HF_TSV_SPACE_TASKS": str(tmp_path / "missing.json")}, {"HF_TSV_SPACE_EVAL_MAX_EXAMPLES": "0"},
                {"HF_TSV_SPACE_TASKS": str(tmp_path / "headless.json")},
                {"HF_TSV_SPACE_TASKS": str(tmp_path / "broken.yaml")}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            space_core.Settings.from_env(bad)


def test_the_app_is_set_up_as_a_shared_service(space):
    import gradio as gr

    demo, settings = space.demo, space.demo.hf_tsv_settings
    (state,) = [b for b in demo.blocks.values() if isinstance(b, gr.State)]
    assert state.time_to_live == settings.result_ttl_s and state.delete_callback == space.workspace.delete_session
    assert demo._queue.max_size == settings.queue_size
    fns = {fn.api_name: fn for fn in demo.fns.values() if fn.api_name}
    assert {"sti", "merge", "push"} <= set(fns)
    assert fns["sti"].concurrency_id == fns["merge"].concurrency_id != fns["push"].concurrency_id
    assert fns["merge"].concurrency_limit == settings.concurrency == 1
    assert not any(isinstance(b, gr.LoginButton) for b in demo.blocks.values())  # no OAuth when run locally
    (evaluate,) = [b for b in demo.blocks.values() if isinstance(b, gr.Checkbox) and b.elem_id == "merge-evaluate"]
    assert evaluate.visible and evaluate.value is True and evaluate.label == "Evaluate on the configured tasks"
    assert "test split of cars, dtd, eurosat (at most 16 images each)" in evaluate.info

    # a session's folder goes when its state is deleted; nothing outside the workspace is ever removed
    sessions = [space.workspace.session_dir(None)]
    assert space.workspace.session_dir({"dir": str(sessions[0])}) == sessions[0]
    assert space.workspace.session_dir({"dir": "/tmp"}) != Path("/tmp")
    outside = space.workspace.root.parent / "not-the-workspace"
    outside.mkdir(exist_ok=True)
    space.workspace.delete_session({"dir": str(outside)})
    space.workspace.delete_session({"dir": str(space.workspace.root)})
    assert outside.is_dir() and space.workspace.root.is_dir()
    space.workspace.delete_session({"dir": str(sessions[0])})
    assert not sessions[0].exists()
    outside.rmdir()


def test_on_spaces_visitors_sign_in_with_hugging_face(library):
    import gradio as gr

    pytest.importorskip("itsdangerous", reason="gr.LoginButton needs gradio[oauth]")

    settings = space_core.Settings(library=library, on_spaces=True, spare_workers=0)
    oauth = dict(OAUTH_CLIENT_ID="client-id", OAUTH_CLIENT_SECRET="secret", OAUTH_SCOPES="openid profile write-repos",
                 OPENID_PROVIDER_URL="http://127.0.0.1:9")  # what a Space with hf_oauth: true is given
    with mock.patch.dict(os.environ, {"SYSTEM": "spaces", "SPACE_ID": "me/hf-tsv"}), \
            mock.patch.multiple("gradio.oauth", **oauth):
        demo = app.build_demo(settings)
    try:
        assert any(isinstance(b, gr.LoginButton) for b in demo.blocks.values())
        (token,) = [b for b in demo.blocks.values() if isinstance(b, gr.Textbox) and b.type == "password"]
        assert not token.visible  # the API may still pass a token; the page asks for sign-in
    finally:
        demo.hf_tsv_pool.close()
        demo.hf_tsv_workspace.close()


def test_worker_jobs_are_typed_and_round_trip_through_job_json():
    """The app hands the worker a StiJob or a MergeJob (job.json); the worker reads back the same object."""
    merge = space_core.MergeJob(base="base", models=("a", "b"), fuse_qkv=True, device="cpu", scrub=("/srv",),
                                output="/srv/out", zip="/srv/out.zip", method="ta", alpha=0.3, command="hf-tsv merge",
                                evaluate=space_core.EvaluationSettings("/srv/tasks.json", 8))
    sti = space_core.StiJob(base="base", models=("a", "b"), threads=2, memory_gb=4.0)
    for job in (merge, sti):
        again = space_core.job_from_json(space_core.job_to_json(job))
        assert again == job and type(again) is type(job)
