"""End-to-end checks of the test Hub (tests/hub_server.py) with the real huggingface_hub and transformers clients."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import huggingface_hub
import pytest
import torch
from hub_server import HubServer, running_hub
from huggingface_hub import (
    CommitOperationAdd,
    CommitOperationDelete,
    HfApi,
    get_hf_file_metadata,
    hf_hub_download,
    hf_hub_url,
    snapshot_download,
)
from huggingface_hub import constants as hf_constants
from huggingface_hub.errors import (
    HfHubHTTPError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

README = "---\nlicense: apache-2.0\ntags:\n- model-merging\n---\n# Tiny merged CLIP\n"


@pytest.fixture
def hub(tmp_path: Path):
    with running_hub(tmp_path) as server:
        yield server


@pytest.fixture(scope="module")
def tiny_clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import CLIPVisionConfig, CLIPVisionModel

    config = CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=32, patch_size=8
    )
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny-clip")
    CLIPVisionModel(config).save_pretrained(folder)
    (folder / "README.md").write_text(README)
    return folder


def _commit_requests(hub: HubServer) -> list:
    return [r for r in hub.requests if r.method == "POST" and "/commit/" in r.path]


def test_clients_are_pointed_at_the_server_and_restored(tmp_path: Path):
    before = (hf_constants.ENDPOINT, huggingface_hub.hf_api.api.endpoint, hf_constants.HF_HUB_CACHE)
    with running_hub(tmp_path) as hub:
        assert hub.endpoint.startswith("http://127.0.0.1:")
        assert hf_constants.ENDPOINT == huggingface_hub.hf_api.api.endpoint == hub.endpoint
        assert os.environ["HF_ENDPOINT"] == hub.endpoint
        assert os.environ["HF_HUB_OFFLINE"] == "0" and not hf_constants.is_offline_mode()
        assert Path(hf_constants.HF_HUB_CACHE).is_relative_to(tmp_path)
        assert hf_hub_url("a/b", "c.json").startswith(hub.endpoint)
        assert HfApi().whoami()["name"] == hub.username
    assert (hf_constants.ENDPOINT, huggingface_hub.hf_api.api.endpoint, hf_constants.HF_HUB_CACHE) == before


def test_writes_need_a_valid_token(hub: HubServer):
    with pytest.raises(HfHubHTTPError) as anonymous:
        HfApi(token=False).create_repo("ns/anon")
    assert anonymous.value.response.status_code == 401
    with pytest.raises(HfHubHTTPError, match="Invalid user token"):
        HfApi(token="hf_not_the_right_one").whoami()
    assert hub.repos == {}


def test_create_repo_records_private_flag_and_conflicts(hub: HubServer):
    api = HfApi()
    url = api.create_repo("ns/secret", private=True)
    assert url.repo_id == "ns/secret" and url.startswith(hub.endpoint)
    api.create_repo("ns/open")
    assert hub.repos["ns/secret"].private is True
    assert hub.repos["ns/open"].private is False

    with pytest.raises(HfHubHTTPError) as conflict:
        api.create_repo("ns/secret")
    assert conflict.value.response.status_code == 409
    assert api.create_repo("ns/secret", exist_ok=True).repo_id == "ns/secret"
    assert api.create_repo("mine").repo_id == f"{hub.username}/mine"  # no namespace: the token's user


def test_upload_folder_then_download_with_hub_and_transformers(hub: HubServer, tiny_clip_dir: Path):
    from transformers import CLIPVisionModel

    api = HfApi()
    api.create_repo("ns/tiny-clip", private=True)
    info = api.upload_folder(repo_id="ns/tiny-clip", folder_path=tiny_clip_dir, commit_message="Upload merged")

    (commit,) = hub.repos["ns/tiny-clip"].commits  # the three files arrive in ONE commit
    assert sorted(commit.files) == ["README.md", "config.json", "model.safetensors"]
    assert (commit.oid, commit.revision, commit.message) == (info.oid, "main", "Upload merged")
    assert commit.private and not commit.is_pr
    assert len(_commit_requests(hub)) == 1

    model_info = api.model_info("ns/tiny-clip", files_metadata=True)
    assert model_info.sha == info.oid and model_info.private
    sizes = {s.rfilename: s.size for s in model_info.siblings}
    assert sizes["model.safetensors"] == (tiny_clip_dir / "model.safetensors").stat().st_size
    assert set(sizes) == {".gitattributes", "README.md", "config.json", "model.safetensors"}

    config_path = hf_hub_download("ns/tiny-clip", "config.json")
    assert json.loads(Path(config_path).read_text()) == json.loads((tiny_clip_dir / "config.json").read_text())
    snapshot = Path(snapshot_download("ns/tiny-clip"))
    assert snapshot.name == info.oid
    for name in ("README.md", "config.json", "model.safetensors"):
        assert (snapshot / name).read_bytes() == (tiny_clip_dir / name).read_bytes()

    loaded = CLIPVisionModel.from_pretrained("ns/tiny-clip")
    expected = CLIPVisionModel.from_pretrained(tiny_clip_dir).state_dict()
    assert loaded.state_dict().keys() == expected.keys()
    assert all(torch.equal(tensor, expected[key]) for key, tensor in loaded.state_dict().items())
    assert hub.read_file("ns/tiny-clip", "model.safetensors") == (tiny_clip_dir / "model.safetensors").read_bytes()


def test_create_commit_several_files_and_file_metadata(hub: HubServer):
    api = HfApi()
    api.create_repo("ns/plain")
    weights = os.urandom(3 * 1024 * 1024)  # a few MB of binary data still goes as a "regular" file
    info = api.create_commit(
        "ns/plain",
        [
            CommitOperationAdd("README.md", README.encode()),
            CommitOperationAdd("config.json", b'{"a": 1}'),
            CommitOperationAdd("weights/model.safetensors", weights),
        ],
        commit_message="three files",
        commit_description="one commit",
    )
    (commit,) = hub.repos["ns/plain"].commits
    assert commit.files == ("README.md", "config.json", "weights/model.safetensors")
    assert commit.description == "one commit"

    meta = get_hf_file_metadata(hf_hub_url("ns/plain", "weights/model.safetensors"))
    assert (meta.commit_hash, meta.size) == (info.oid, len(weights))
    assert meta.etag == huggingface_hub.utils.sha.git_hash(weights)
    assert Path(hf_hub_download("ns/plain", "weights/model.safetensors")).read_bytes() == weights
    with pytest.raises(RemoteEntryNotFoundError):
        hf_hub_download("ns/plain", "missing.json")

    api.create_commit("ns/plain", [CommitOperationDelete("config.json")], commit_message="drop config")
    assert hub.repos["ns/plain"].commits[-1].deleted == ("config.json",)
    assert "config.json" not in hub.repos["ns/plain"].commits[-1].snapshot


def test_create_pr_reaches_the_server_as_a_pull_request(hub: HubServer, tmp_path: Path):
    api = HfApi()
    api.create_repo("ns/pr")
    base = api.create_commit("ns/pr", [CommitOperationAdd("config.json", b"{}")], commit_message="base")

    info = api.create_commit(
        "ns/pr", [CommitOperationAdd("config.json", b'{"v": 2}')], commit_message="proposal", create_pr=True
    )
    assert info.pr_num == 1 and info.pr_revision == "refs/pr/1"
    assert info.pr_url == f"{hub.endpoint}/ns/pr/discussions/1"
    commit = hub.repos["ns/pr"].commits[-1]
    assert (commit.is_pr, commit.pr_num, commit.revision, commit.requested_revision) == (True, 1, "refs/pr/1", "main")
    assert hub.repos["ns/pr"].refs["main"] == base.oid  # main is untouched
    assert Path(hf_hub_download("ns/pr", "config.json", revision="refs/pr/1")).read_bytes() == b'{"v": 2}'
    assert Path(hf_hub_download("ns/pr", "config.json")).read_bytes() == b"{}"

    # upload_folder(create_pr=True) goes another way: it opens a draft PR first, then commits to refs/pr/N.
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "notes.md").write_text("hello")
    folder_info = api.upload_folder(repo_id="ns/pr", folder_path=folder, create_pr=True, commit_message="via folder")
    assert folder_info.pr_revision == "refs/pr/2"
    assert hub.repos["ns/pr"].commits[-1].is_pr and hub.repos["ns/pr"].commits[-1].revision == "refs/pr/2"
    assert [d.is_pull_request for d in hub.repos["ns/pr"].discussions] == [True, True]


def test_commit_to_a_branch_with_revision(hub: HubServer):
    api = HfApi()
    api.create_repo("ns/branchy")
    with pytest.raises(RevisionNotFoundError):
        api.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id="ns/branchy", revision="dev")
    api.create_branch("ns/branchy", branch="dev")
    info = api.upload_file(path_or_fileobj=b"dev only", path_in_repo="x.txt", repo_id="ns/branchy", revision="dev")

    commit = hub.repos["ns/branchy"].commits[-1]
    assert (commit.revision, commit.is_pr, commit.oid) == ("dev", False, info.oid)
    assert hub.repos["ns/branchy"].refs["dev"] == info.oid != hub.repos["ns/branchy"].refs["main"]
    assert Path(hf_hub_download("ns/branchy", "x.txt", revision="dev")).read_bytes() == b"dev only"
    with pytest.raises(RemoteEntryNotFoundError):
        hf_hub_download("ns/branchy", "x.txt")
    assert [b.name for b in api.list_repo_refs("ns/branchy").branches] == ["dev", "main"]


def test_injected_commit_failure_raises_and_changes_nothing(hub: HubServer):
    api = HfApi()
    api.create_repo("ns/fragile")
    head = hub.repos["ns/fragile"].refs["main"]

    hub.fail_next_commit = True
    with pytest.raises(HfHubHTTPError) as failure:
        api.create_commit("ns/fragile", [CommitOperationAdd("a.txt", b"a")], commit_message="doomed")
    assert failure.value.response.status_code == 500
    assert hub.fail_commit_message in str(failure.value)
    assert hub.repos["ns/fragile"].commits == () and hub.repos["ns/fragile"].refs["main"] == head
    assert hub.fail_next_commit is False  # one-shot

    api.create_commit("ns/fragile", [CommitOperationAdd("a.txt", b"a")], commit_message="works again")
    assert [c.message for c in hub.repos["ns/fragile"].commits] == ["works again"]


def test_upload_folder_retries_a_5xx_commit_but_not_a_4xx(hub: HubServer, tmp_path: Path):
    # With hf_xet installed, upload_folder commits through a pipeline that retries 5xx answers (after 1 s):
    # a one-shot 500 is recovered from; a 4xx fails at once.
    (tmp_path / "a.txt").write_text("a")
    api = HfApi()
    api.create_repo("ns/fragile-folder")
    hub.fail_next_commit, hub.fail_commit_status = True, 422
    with pytest.raises(HfHubHTTPError, match="rejected this commit") as failure:
        api.upload_folder(repo_id="ns/fragile-folder", folder_path=tmp_path, allow_patterns="a.txt")
    assert failure.value.response.status_code == 422
    assert hub.repos["ns/fragile-folder"].commits == ()

    hub.fail_next_commit, hub.fail_commit_status = True, 500
    api.upload_folder(repo_id="ns/fragile-folder", folder_path=tmp_path, allow_patterns="a.txt")
    assert [r.status for r in _commit_requests(hub)] == [422, 500, 200]
    assert len(hub.repos["ns/fragile-folder"].commits) == 1


def test_upload_folder_without_xet_fails_on_the_first_5xx(tmp_path: Path):
    (tmp_path / "a.txt").write_text("a")
    with running_hub(tmp_path / "hub", disable_xet=True) as hub:
        HfApi().create_repo("ns/no-xet")
        hub.fail_next_commit = True
        with pytest.raises(HfHubHTTPError, match="rejected this commit"):
            HfApi().upload_folder(repo_id="ns/no-xet", folder_path=tmp_path, allow_patterns="a.txt")
        assert [r.status for r in _commit_requests(hub)] == [500]


def test_delete_repo(hub: HubServer):
    api = HfApi()
    api.create_repo("ns/gone")
    api.delete_repo("ns/gone")
    assert "ns/gone" not in hub.repos
    with pytest.raises(RepositoryNotFoundError):
        api.model_info("ns/gone")
    with pytest.raises(RepositoryNotFoundError):
        api.delete_repo("ns/gone")
    api.delete_repo("ns/gone", missing_ok=True)
    assert api.create_repo("ns/gone").repo_id == "ns/gone"  # the name can be reused


def test_private_repo_needs_the_token_to_read(tmp_path: Path):
    with running_hub(tmp_path, token_in_env=False) as hub:
        assert "HF_TOKEN" not in os.environ
        owner = HfApi(token=hub.token)
        owner.create_repo("ns/private", private=True)
        owner.upload_file(path_or_fileobj=b"{}", path_in_repo="config.json", repo_id="ns/private")
        with pytest.raises(RepositoryNotFoundError):
            HfApi().model_info("ns/private")
        with pytest.raises(RepositoryNotFoundError):
            hf_hub_download("ns/private", "config.json")
        assert Path(hf_hub_download("ns/private", "config.json", token=hub.token)).read_bytes() == b"{}"
        assert [r.authenticated for r in hub.requests if r.path == "/api/models/ns/private"] == [False]


def test_token_never_recorded_or_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture, capfd):
    caplog.set_level(logging.DEBUG)
    with running_hub(tmp_path) as hub:
        api = HfApi()
        api.whoami()
        api.create_repo("ns/t", private=True)
        hub.fail_next_commit = True
        with pytest.raises(HfHubHTTPError):
            api.create_commit("ns/t", [CommitOperationAdd("a.txt", b"a")], commit_message="fails")
        api.create_commit("ns/t", [CommitOperationAdd("a.txt", b"a")], commit_message="ok", create_pr=True)
        hf_hub_download("ns/t", "a.txt", revision="refs/pr/1")
        with pytest.raises(HfHubHTTPError):
            HfApi(token=hub.token + "x").whoami()  # a wrong token is not kept either

        token = hub.token
        assert hub.requests and hub.log_lines
        assert all(r.authenticated for r in hub.requests[:-1]) and not hub.requests[-1].authenticated
        assert token not in repr(hub.requests) and token not in repr(hub.repos)
        assert token not in "\n".join(hub.log_lines)
        assert "hub_server" in caplog.text and token not in caplog.text
        captured = capfd.readouterr()
        assert token not in captured.out and token not in captured.err
        stored = [p.read_bytes() for p in (tmp_path / "hub-storage").rglob("*") if p.is_file()]
        assert stored and not any(token.encode() in content for content in stored)
