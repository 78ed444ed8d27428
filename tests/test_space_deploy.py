"""`hf-tsv space deploy` / `hf_tsv.deploy_space` (hf_tsv/space_deploy.py) against the loopback test Hub."""

from __future__ import annotations

import io
import logging
import shutil
import zipfile
from pathlib import Path

import gradio
import pytest
from hub_server import HubServer, running_hub
from huggingface_hub import RepoCard, SpaceCardData
from space_helpers import make_eval_tasks

import hf_tsv
from hf_tsv.cli import main

WHEEL = "wheels/hf_tsv-0.1.0-py3-none-any.whl"
APP = ["README.md", "app.py", "requirements.txt", "space_compare.py", "space_core.py", "space_worker.py", WHEEL]
CPU_INDEX = "--extra-index-url https://download.pytorch.org/whl/cpu"


@pytest.fixture
def hub(tmp_path):
    with running_hub(tmp_path / "hub") as server:
        yield server


@pytest.fixture
def library(tiny, tmp_path) -> Path:
    """A model library: the tiny base and one fine-tune, plus a stray file and a hidden folder left out."""
    folder = tmp_path / "library"
    shutil.copytree(tiny["base"], folder / "base")
    shutil.copytree(tiny["tasks"][0], folder / "cars")
    (folder / "notes.txt").write_text("not a checkpoint")
    (folder / ".cache").mkdir()
    return folder


def _space_file(hub: HubServer, space_id: str, path: str) -> bytes:
    return hub.read_file(space_id, path, repo_type="space")


def _card(hub: HubServer, space_id: str) -> SpaceCardData:
    card = RepoCard(_space_file(hub, space_id, "README.md").decode())
    return SpaceCardData(**card.data.to_dict())


def test_deploy_is_one_commit_with_the_app_its_readme_requirements_and_wheel(hub, library, tmp_path):
    spec = make_eval_tasks(tmp_path / "eval", ["cars"])
    result = hf_tsv.deploy_space("ns/merge-space", private=True, hardware="cpu-upgrade", model_library=library,
                                 tasks=spec)
    repo = hub.repos["spaces/ns/merge-space"]
    (commit,) = repo.commits
    library_files = sorted(f"model_library/{m}/{p.name}" for m in ("base", "cars") for p in (library / m).iterdir())
    assert sorted(commit.files) == sorted(APP + library_files + ["tasks.json"]) == sorted(result.files)
    assert repo.private and result.created_repo and result.warnings == ()
    assert result == f"{hub.endpoint}/spaces/ns/merge-space/commit/{commit.oid}"
    assert hub.spaces["ns/merge-space"] == {"sdk": "gradio", "hardware": "cpu-upgrade", "variables": {
        "HF_TSV_MODEL_LIBRARY": "model_library", "HF_TSV_SPACE_TASKS": "tasks.json"}}
    for name in ("app.py", "space_compare.py", "space_core.py", "space_worker.py"):
        assert _space_file(hub, "ns/merge-space", name) == (Path("spaces_app") / name).read_bytes()
    assert _space_file(hub, "ns/merge-space", "tasks.json") == spec.read_bytes()

    card = _card(hub, "ns/merge-space")
    assert (card.sdk, card.sdk_version, card.app_file) == ("gradio", gradio.__version__, "app.py")
    assert card.python_version and card.suggested_hardware == "cpu-upgrade"
    assert card.hf_oauth is True and card.hf_oauth_scopes == ["write-repos", "manage-repos"]

    wheel = zipfile.ZipFile(io.BytesIO(_space_file(hub, "ns/merge-space", WHEEL)))
    names = wheel.namelist()
    assert "hf_tsv/space_deploy.py" in names and "hf_tsv/templates/model_card.md.j2" in names
    assert not any(n.startswith(("tests/", "benchmarks/", "spaces_app/")) for n in names)


@pytest.mark.parametrize("hardware, cpu", [("cpu-basic", True), ("cpu-upgrade", True), ("t4-small", False),
                                           ("a10g-large", False)])
def test_requirements_ship_the_wheel_by_relative_path_and_pin_torch_for_the_hardware(hub, hardware, cpu):
    hf_tsv.deploy_space("ns/space", hardware=hardware)
    lines = [line for line in _space_file(hub, "ns/space", "requirements.txt").decode().splitlines()
             if line and not line.startswith("#")]
    assert f"./{WHEEL}[space,eval]" in lines and WHEEL in hub.repos["spaces/ns/space"].commits[0].files
    assert "torch==2.13.0" in lines and f"gradio[oauth]=={gradio.__version__}" in lines
    assert (CPU_INDEX in lines) is cpu
    if cpu:  # the CPU index comes before torch, so pip finds the CPU build
        assert lines.index(CPU_INDEX) < lines.index("torch==2.13.0")
    assert not any(line.startswith("hf-tsv") for line in lines)  # nothing asks PyPI for hf-tsv
    assert _card(hub, "ns/space").suggested_hardware == hardware


def test_redeploy_updates_the_space_and_sets_its_variables(hub, library):
    hf_tsv.deploy_space("ns/space", private=True)
    result = hf_tsv.deploy_space("ns/space", private=False, hardware="t4-small", model_library=library)
    repo = hub.repos["spaces/ns/space"]
    assert len(repo.commits) == 2 and repo.private and not result.created_repo
    assert hub.spaces["ns/space"]["variables"] == {"HF_TSV_MODEL_LIBRARY": "model_library"}
    assert any("visibility was left as it is" in w for w in result.warnings)
    assert any("hardware was left as it is" in w for w in result.warnings)
    assert CPU_INDEX not in _space_file(hub, "ns/space", "requirements.txt").decode()


def test_a_failed_commit_removes_the_space_this_call_created(hub):
    hub.fail_next_commit = True
    with pytest.raises(hf_tsv.PushError, match="created by this push, was removed") as info:
        hf_tsv.deploy_space("ns/space")
    assert "Injected failure" in str(info.value)
    assert "spaces/ns/space" not in hub.repos and "ns/space" not in hub.spaces


def test_a_failed_commit_leaves_an_existing_space_as_it_was(hub):
    hf_tsv.deploy_space("ns/space")
    hub.fail_next_commit = True
    with pytest.raises(hf_tsv.PushError, match="existed before this push and was left unchanged"):
        hf_tsv.deploy_space("ns/space", hardware="t4-small")
    assert len(hub.repos["spaces/ns/space"].commits) == 1


def test_no_token_in_any_pushed_file_or_output(tmp_path, library, capsys, caplog):
    with running_hub(tmp_path / "hub", token_in_env=False) as hub:
        caplog.set_level(logging.DEBUG)
        assert main(["space", "deploy", "ns/space", "--token", f"  {hub.token}\n", "--model-library",
                     str(library)]) == 0
        out, err = capsys.readouterr()
        assert out.startswith(f"pushed {len(APP) + 4} files to ns/space (committed to main): {hub.endpoint}")
        repo = hub.repos["spaces/ns/space"]
        pushed = [_space_file(hub, "ns/space", name) for name in repo.commits[0].files]
        wheel = zipfile.ZipFile(io.BytesIO(_space_file(hub, "ns/space", WHEEL)))
        pushed += [wheel.read(name) for name in wheel.namelist()]
        assert not any(hub.token.encode() in content for content in pushed)
        assert hub.token not in out + err + caplog.text + "\n".join(hub.log_lines)

        # a server that echoes the token in its error: hf-tsv's message and log lines still never show it
        # (httpx's own debug log of the response headers is the library's, left out here)
        caplog.clear()
        hub.fail_next_commit = True
        hub.fail_commit_message = f"rejected, token {hub.token}"
        assert main(["space", "deploy", "ns/other", "--token", hub.token]) == 2
        out, err = capsys.readouterr()
        assert len(err.strip().splitlines()) == 1 and "was removed" in err and "rejected, token ***" in err
        ours = [record.getMessage() for record in caplog.records if record.name.startswith("hf_tsv")]
        assert ours and hub.token not in out + err + "\n".join(ours)


def _missing(tmp: Path) -> list[str]:
    return ["--model-library", str(tmp / "nowhere")]


def _file_as_library(tmp: Path) -> list[str]:
    (tmp / "weights.bin").write_bytes(b"x")
    return ["--model-library", str(tmp / "weights.bin")]


def _empty_library(tmp: Path) -> list[str]:
    (tmp / "empty" / "not-a-model").mkdir(parents=True)
    return ["--model-library", str(tmp / "empty")]


def _tasks_suffix(tmp: Path) -> list[str]:
    (tmp / "tasks.txt").write_text("cars")
    return ["--tasks", str(tmp / "tasks.txt")]


def _tasks_invalid(tmp: Path) -> list[str]:
    (tmp / "tasks.json").write_text("{not json")
    return ["--tasks", str(tmp / "tasks.json")]


def _tasks_missing(tmp: Path) -> list[str]:
    return ["--tasks", str(tmp / "gone.yaml")]


BAD_INPUTS = [
    pytest.param("bad//id", lambda tmp: [], "'bad//id' is not a valid Space id", id="DEP-01"),
    pytest.param("ns/space", lambda tmp: ["--hardware", "h100-giant"],
                 "--hardware 'h100-giant' is not a Space hardware; use one of cpu-basic, cpu-upgrade", id="DEP-02"),
    pytest.param("ns/space", _missing, "--model-library 'nowhere' is not a folder", id="DEP-03"),
    pytest.param("ns/space", _file_as_library, "--model-library 'weights.bin' is not a folder", id="DEP-04"),
    pytest.param("ns/space", _empty_library, "--model-library 'empty' has no checkpoint sub-folder", id="DEP-05"),
    pytest.param("ns/space", _tasks_suffix, "--tasks 'tasks.txt' is not a task spec (.json, .yaml or .yml)",
                 id="DEP-06"),
    pytest.param("ns/space", _tasks_invalid, "--tasks 'tasks.json' cannot be used: tasks.json: not valid JSON",
                 id="DEP-07"),
    pytest.param("ns/space", _tasks_missing, "--tasks 'gone.yaml' cannot be used", id="DEP-08"),
]


@pytest.mark.parametrize("space_id, extra, message", BAD_INPUTS)
def test_bad_input_is_one_line_exit_2_and_nothing_sent(hub, tmp_path, capsys, space_id, extra, message):
    hub.clear_requests()
    assert main(["space", "deploy", space_id, *extra(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("hf-tsv space: error: ")
    assert message in err
    assert hub.requests == [] and hub.repos == {}


def test_unauthenticated_deploy_is_one_clear_line(tmp_path, capsys):
    with running_hub(tmp_path / "hub", token_in_env=False) as hub:
        assert main(["space", "deploy", "ns/space"]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and "could not create or access the repository" in err
        assert hub.repos == {}


@pytest.mark.slow
def test_the_deployed_snapshot_installs_and_serves(tmp_path):
    """The Space as the Hub would build it: its snapshot, a fresh virtual environment installed from the
    snapshot's own requirements.txt (torch pinned, the hf-tsv wheel shipped in the snapshot, everything else from
    the package index), app.py started from the snapshot with nothing of the checkout on sys.path, then /sti and
    /merge called with gradio_client."""
    import os
    import subprocess
    import sys
    import time
    import urllib.request

    from gradio_client import Client
    from huggingface_hub import snapshot_download
    from space_helpers import free_port

    from hf_tsv.synthetic import make_checkpoints

    library = tmp_path / "library"
    make_checkpoints(library, preset="tiny", num_tasks=2, seed=5, relative_size=0.5)
    with running_hub(tmp_path / "hub") as hub:
        hf_tsv.deploy_space("ns/space", model_library=library)
        variables = hub.spaces["ns/space"]["variables"]
        snapshot = Path(snapshot_download("ns/space", repo_type="space", local_dir=tmp_path / "snapshot"))

    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "HF_TSV_"))}  # no checkout on the path
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], env=env, check=True)
    python = venv / "bin" / "python"
    requirements = (snapshot / "requirements.txt").read_text().splitlines()
    assert requirements.index("torch==2.13.0") < next(i for i, line in enumerate(requirements)
                                                      if line.startswith("./wheels/"))
    # exactly as the Space's build runs it: pip install -r requirements.txt in the snapshot's folder (PyTorch's CPU
    # index, which it names, is not reachable from a test machine: pip warns and takes torch from PyPI's pin)
    install = subprocess.run([str(python), "-m", "pip", "install", "-q", "--retries", "1", "-r", "requirements.txt"],
                             cwd=snapshot, env=env, capture_output=True, text=True, timeout=1500)
    assert install.returncode == 0, install.stderr[-3000:]
    venv_site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                                    capture_output=True, text=True, check=True).stdout.strip())
    probe = "import hf_tsv, torch; print(hf_tsv.__file__); print(torch.__version__)"
    done = subprocess.run([str(python), "-s", "-c", probe],
                          cwd=snapshot, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    where, torch_version = done.stdout.split("\n")[:2]
    assert where.startswith(str(venv_site)) and torch_version.startswith("2.13.0")

    port = free_port()
    env.update(variables, GRADIO_SERVER_NAME="127.0.0.1", GRADIO_SERVER_PORT=str(port), HF_HUB_OFFLINE="1",
               HF_TSV_SPACE_THREADS="1", OMP_NUM_THREADS="1")
    log = (tmp_path / "app.log").open("w")
    server = subprocess.Popen([str(python), "-s", "app.py"], cwd=snapshot, env=env, stdout=log,
                              stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}/"
        for _ in range(360):
            try:
                urllib.request.urlopen(url, timeout=2)
                break
            except OSError:
                assert server.poll() is None, (tmp_path / "app.log").read_text()
                time.sleep(0.5)
        client = Client(url, verbose=False, download_files=str(tmp_path / "downloads"))
        models = sorted(p.name for p in library.iterdir() if p.is_dir() and p.name != "base")
        args = dict(base_library="base", base_hub="", models_library=models, models_hub="")
        _, _, raw, _ = client.predict(**args, fuse_qkv=False, device="cpu", api_name="/sti")
        expected = hf_tsv.sti(library / "base", [library / m for m in models], device="cpu")
        assert raw["total"] == pytest.approx(expected.total, rel=1e-9) and raw["num_tasks"] == len(models)
        summary, _, card, download, _ = client.predict(**args, method="tsv-m", alpha=0.8, fuse_qkv=False,
                                                       device="cpu", evaluate=False, api_name="/merge")
        with zipfile.ZipFile(download) as archive:  # the merged folder, as the visitor downloads it
            names = {name.split("/", 1)[1] for name in archive.namelist()}
        assert {"model.safetensors", "config.json", "merge_report.json"} <= names
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


def index_installs_of_hf_tsv(requirements: str) -> list[str]:
    """The lines of a requirements file that would make pip fetch hf-tsv from a package index (where it is not
    published): a requirement named hf-tsv without a URL or a local path."""
    from packaging.requirements import InvalidRequirement, Requirement
    from packaging.utils import canonicalize_name

    found = []
    for raw in requirements.splitlines():
        line = raw.split(" #")[0].strip()
        if not line or line.startswith(("#", "-")) or line.startswith(("./", "../", "/")):
            continue  # comments, pip options, local files (the shipped wheel)
        try:
            requirement = Requirement(line)
        except InvalidRequirement:
            continue
        if canonicalize_name(requirement.name) == "hf-tsv" and not requirement.url:
            found.append(line)
    return found


def test_the_app_folder_never_installs_hf_tsv_from_an_index():
    """spaces_app/requirements.txt (what a hand-copied folder would install) and the requirements that
    `hf-tsv space deploy` writes name no hf-tsv from PyPI; the folder's file says to deploy with the command."""
    from hf_tsv.space_deploy import SPACE_APP, requirements_text

    folder = (SPACE_APP / "requirements.txt").read_text()
    assert index_installs_of_hf_tsv(folder) == [] and "hf-tsv space deploy" in folder
    assert index_installs_of_hf_tsv("hf-tsv[space,eval]==0.1.0\n") == ["hf-tsv[space,eval]==0.1.0"]  # the old pin
    for hardware in ("cpu-basic", "t4-small"):
        written = requirements_text("hf_tsv-0.1.0-py3-none-any.whl", hardware, gradio.__version__)
        assert index_installs_of_hf_tsv(written) == [] and "./wheels/hf_tsv-0.1.0-py3-none-any.whl" in written


def test_the_app_without_hf_tsv_says_how_to_deploy(tmp_path):
    """A Space made by copying the folder (no hf-tsv installed) stops at start with one line naming the command."""
    import subprocess
    import sys

    from hf_tsv.space_deploy import SPACE_APP

    code = ("import runpy, sys; sys.modules['hf_tsv'] = None; "
            f"runpy.run_path({str(SPACE_APP / 'app.py')!r}, run_name='__main__')")
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "hf-tsv is not installed" in done.stderr
    assert "hf-tsv space deploy SPACE_ID" in done.stderr and "Traceback" not in done.stderr
