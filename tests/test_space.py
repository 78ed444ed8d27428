"""The Gradio Space (spaces_app/): /sti, /merge and /push through gradio_client against tiny checkpoints in a model
library, refusal of paths, limits, worker isolation, and `python spaces_app/app.py` serving the app."""

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
from space_helpers import SPACES_APP, TOY_EVAL, free_port, import_space, running_space, worker_env, zip_contents

import hf_tsv
from hf_tsv.card import sti_heatmap_png
from hf_tsv.synthetic import make_checkpoints

app, space_core = import_space()
TASKS = ["task_00", "task_01", "task_02"]
MERGED_FILES = {"README.md", "config.json", "eval_results.json", "merge_report.json", "model.safetensors",
                "sti_heatmap.png", "sti_stats.json"}


@pytest.fixture(scope="module")
def library(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("space") / "library"
    make_checkpoints(folder, preset="tiny", num_tasks=3, seed=5)
    return folder


@pytest.fixture(scope="module")
def space(library):
    settings = space_core.Settings(library=library, threads=1, eval_hook="space_helpers:toy_eval",
                                   eval_label="Toy evaluation")
    # two workers started ahead: one for /sti, one for /merge
    with running_space(settings, spares=2, env=worker_env()) as served:
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
    """One TSV-M merge (α = 0.8, with the toy evaluation) in the client's session. ``progress_seen`` records each
    progress event that reached the app from the worker, with what gr.Progress was tracking after it."""
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
    summary, heatmap, card, download = merged
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
    assert report["sti"]["total"] == pytest.approx(expected.report["sti"]["total"], rel=1e-9)
    assert [m["name"] for m in report["models"]] == TASKS
    assert report["command"] == "hf-tsv merge base task_00 task_01 task_02 --method tsv-m --alpha 0.8 -o " \
                                "hf-tsv-tsv-m-merge"
    assert json.loads(files[folder + "eval_results.json"]) == TOY_EVAL
    assert Path(heatmap).read_bytes() == files[folder + "sti_heatmap.png"]

    assert "α = 0.8" in summary and f"{report['sti']['total']:.4g}" in summary
    for section in ("# hf-tsv-tsv-m-merge", "## Method", "## Merged models", "## Singular Task Interference (STI)",
                    "## Evaluation", "## Usage", "Scaling factor **α = 0.8**", "| toy-cars | tanganke/stanford_cars "
                    "| 61.25 | 87.50 |", "`task_02` (local folder)", "```yaml"):
        assert section in card, section
    for text in (card, files[folder + "README.md"].decode(), files[folder + "merge_report.json"].decode()):
        assert str(library) not in text and str(library.parent) not in text  # no server path leaks


def test_merge_progress_is_relayed_from_the_worker(merged, progress_seen):
    events = [event for event, _ in progress_seen]
    stages = [e["text"] for e in events if e["event"] == "stage"]
    assert stages == ["reading the models", "evaluating the merged model", "writing the model card",
                      "packing the download"]
    bars = [e for e in events if e["event"] == "bar" and e["desc"] == "tsv-m merge"]
    assert bars and bars[-1]["n"] == bars[-1]["total"] == 39 and bars[-1]["unit"] == "key"
    assert any(e["event"] == "close" and e["id"] == bars[-1]["id"] for e in events)
    # the mirrored tqdm bar was tracked by gr.Progress(track_tqdm=True), up to the last key
    tracked = [t for event, tracked in progress_seen if event is bars[-1] for t in tracked]
    assert ("tsv-m merge", 39, 39) in tracked


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
    size = (library / "base" / "model.safetensors").stat().st_size
    refs = [base, *models[:1]]
    assert space_core.check_total_size(refs, settings) == 2 * size
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
        pool.run({"kind": "sti"}, tmp_path / "job")
    assert time.monotonic() - started < 30
    workspace.close()
    assert not workspace.root.exists()


def test_app_script_serves_the_app(library, tmp_path):
    port = free_port()
    env = dict(os.environ, GRADIO_SERVER_NAME="127.0.0.1", GRADIO_SERVER_PORT=str(port),
               HF_TSV_MODEL_LIBRARY=str(library), HF_TSV_SPACE_SPARE_WORKERS="0", HF_TSV_SPACE_MAX_MODELS="5",
               GRADIO_ANALYTICS_ENABLED="False")
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
    assert "hf-tsv" in requirements and "torch==" in requirements


def test_settings_come_from_the_environment(library, tmp_path):
    settings = space_core.Settings.from_env({
        "HF_TSV_MODEL_LIBRARY": str(library), "HF_TSV_SPACE_MAX_MODELS": "4", "HF_TSV_SPACE_MAX_TOTAL_GB": "2.5",
        "HF_TSV_SPACE_CONCURRENCY": "2", "HF_TSV_SPACE_QUEUE_SIZE": "5", "HF_TSV_SPACE_TIMEOUT_S": "60",
        "HF_TSV_SPACE_THREADS": "3", "HF_TSV_SPACE_EVAL": "mod:fn", "HF_TSV_SPACE_SPARE_WORKERS": "0",
        "SYSTEM": "spaces", "SPACE_ID": "me/hf-tsv", "OAUTH_CLIENT_ID": "client-id"})
    assert (settings.library, settings.max_models, settings.max_total_gb, settings.concurrency) == (library, 4, 2.5, 2)
    assert (settings.queue_size, settings.timeout_s, settings.threads, settings.eval_hook) == (5, 60, 3, "mod:fn")
    assert settings.spare_workers == 0 and settings.on_spaces
    defaults = space_core.Settings.from_env({"SYSTEM": "spaces", "SPACE_ID": "me/hf-tsv"})  # a Space without OAuth
    assert defaults.library is None and defaults.max_models == 8 and not defaults.on_spaces
    for bad in ({"HF_TSV_SPACE_MAX_MODELS": "many"}, {"HF_TSV_SPACE_MAX_MODELS": "1"},
                {"HF_TSV_MODEL_LIBRARY": str(tmp_path / "missing")}, {"HF_TSV_SPACE_EVAL": "no-colon"},
                {"HF_TSV_SPACE_TIMEOUT_S": "nan"}):
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
