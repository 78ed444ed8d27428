"""Publishing to the Hub (hf_tsv/hub.py, `hf-tsv push`, `merge --push-to-hub`) against the loopback test Hub."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch
from conftest import load_state
from hub_server import HubServer, running_hub
from huggingface_hub import CommitOperationAdd, HfApi, ModelCard, hf_hub_download

import hf_tsv
from hf_tsv.cli import main

PUSHED = ["README.md", "config.json", "eval_results.json", "merge_report.json", "model.safetensors",
          "sti_heatmap.png", "sti_stats.json"]
EVALS = {"tasks": {"cars": {"absolute": 70.0, "normalized": 90.0}}, "dataset_ids": {"cars": "tanganke/stanford_cars"}}


@pytest.fixture(scope="module")
def merged(tiny, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("push") / "merged"
    hf_tsv.merge(tiny["base"], tiny["tasks"], output_dir=out, device="cpu",
                 command=f"hf-tsv merge {tiny['base']} {' '.join(map(str, tiny['tasks']))} -o {out}")
    (out / "eval_results.json").write_text(json.dumps(EVALS))
    (out / "notes.txt").write_text("a stray local file that is not published")
    return out


@pytest.fixture
def folder(merged, tmp_path) -> Path:
    return Path(shutil.copytree(merged, tmp_path / "clip-merged"))


@pytest.fixture
def hub(tmp_path):
    with running_hub(tmp_path / "hub") as server:
        yield server


def _commit_requests(hub: HubServer) -> list:
    return [r for r in hub.requests if r.method == "POST" and "/commit/" in r.path]


def test_push_is_one_commit_with_every_file_and_loads_back(hub, folder):
    from transformers import CLIPVisionModel

    url = hf_tsv.push_to_hub(folder, "ns/clip-merged", private=True)
    repo = hub.repos["ns/clip-merged"]
    (commit,) = repo.commits
    assert sorted(commit.files) == PUSHED and len(_commit_requests(hub)) == 1
    assert repo.private and commit.private and not commit.is_pr and commit.revision == "main"
    assert url == f"{hub.endpoint}/ns/clip-merged/commit/{commit.oid}" == url.commit_url
    assert url.created_repo and url.files == tuple(PUSHED) and url.pr_url is None and not url.unchanged
    assert commit.message == "Upload tsv-m merge of 3 models (hf-tsv 0.1.0)"

    for name in PUSHED:  # what is on the Hub is what is in the folder (the card was written there first)
        if name != "merge_report.json":
            assert hub.read_file("ns/clip-merged", name) == (folder / name).read_bytes(), name
    card = ModelCard.load("ns/clip-merged")
    assert card.data.pipeline_tag == "image-feature-extraction" and len(card.data.eval_results) == 2
    assert '.from_pretrained("ns/clip-merged")' in card.text

    pushed_report = json.loads(hub.read_file("ns/clip-merged", "merge_report.json"))
    local_report = json.loads((folder / "merge_report.json").read_text())
    assert pushed_report["sti"] == local_report["sti"]
    assert pushed_report["command"] == "hf-tsv merge base task_00 task_01 task_02 -o merged"

    model = CLIPVisionModel.from_pretrained("ns/clip-merged")
    local = load_state(folder)
    assert model.state_dict().keys() == local.keys()
    assert all(torch.equal(tensor, local[key]) for key, tensor in model.state_dict().items())


def test_revision_and_create_pr_reach_the_server(hub, folder):
    api = HfApi()
    first = hf_tsv.push_to_hub(folder, "ns/branched", revision="dev", commit_message="to dev")
    repo = hub.repos["ns/branched"]
    assert first.revision == "dev" and repo.commits[-1].revision == "dev" and not repo.commits[-1].is_pr
    assert repo.refs["dev"] == first.oid != repo.refs["main"]
    assert "README.md" not in api.list_repo_files("ns/branched")  # main untouched

    (folder / "eval_results.json").write_text(json.dumps({"tasks": {"cars": {"absolute": 71.0}}}))
    pr = hf_tsv.push_to_hub(folder, "ns/branched", create_pr=True, revision="dev")
    commit = hub.repos["ns/branched"].commits[-1]
    assert (commit.is_pr, commit.revision, commit.requested_revision) == (True, "refs/pr/1", "dev")
    assert pr == pr.pr_url == f"{hub.endpoint}/ns/branched/discussions/1" and not pr.created_repo
    # the card shows the new evaluation; huggingface_hub leaves out files that are already there unchanged
    assert sorted(commit.files) == ["README.md", "eval_results.json"] and set(PUSHED) <= set(commit.snapshot)
    assert hub.repos["ns/branched"].refs["dev"] == first.oid
    commits = [r for r in _commit_requests(hub)]
    assert [r.path.rsplit("/", 1)[-1] for r in commits] == ["dev", "dev"]
    assert commits[-1].query.get("create_pr") == ["1"]
    assert json.loads(Path(hf_hub_download("ns/branched", "eval_results.json", revision="refs/pr/1")).read_text())[
        "tasks"]["cars"]["absolute"] == 71.0


def test_pushing_the_same_folder_again_makes_no_commit(hub, folder):
    hf_tsv.push_to_hub(folder, "ns/same")
    again = hf_tsv.push_to_hub(folder, "ns/same")
    assert again.unchanged and "no commit" in again.warnings[0]
    assert len(hub.repos["ns/same"].commits) == 1


def test_failed_commit_removes_the_repo_it_created(hub, folder):
    hub.fail_next_commit = True
    with pytest.raises(hf_tsv.PushError) as failure:
        hf_tsv.push_to_hub(folder, "ns/doomed", private=True)
    message = str(failure.value)
    assert "ns/doomed" not in hub.repos
    assert message.startswith("push to ns/doomed failed: could not commit 7 files")
    assert hub.fail_commit_message in message and "created by this push, was removed" in message
    assert "\n" not in message and hub.token not in message


def test_failed_commit_leaves_an_existing_repo_alone(hub, folder):
    api = HfApi()
    api.create_repo("ns/existing")
    api.create_commit("ns/existing", [CommitOperationAdd("keep.txt", b"keep")], commit_message="earlier work")
    hub.fail_next_commit = True
    with pytest.raises(hf_tsv.PushError, match="existed before this push and was left unchanged"):
        hf_tsv.push_to_hub(folder, "ns/existing")
    repo = hub.repos["ns/existing"]
    assert [c.message for c in repo.commits] == ["earlier work"]
    assert not any(r.method == "DELETE" for r in hub.requests)


def test_token_never_leaves_the_process(tmp_path, folder, caplog, capfd):
    caplog.set_level(logging.DEBUG)
    with running_hub(tmp_path / "hub", token_in_env=False) as hub:
        token = hub.token
        hub.fail_next_commit = True
        assert main(["push", str(folder), "--repo-id", "ns/secret", "--private", "--token", token]) == 2
        failed = capfd.readouterr()
        assert "hf-tsv push: error: push to ns/secret failed" in failed.err and "was removed" in failed.err
        assert main(["push", str(folder), "--repo-id", "ns/secret", "--private", "--token", token]) == 0
        with pytest.raises(hf_tsv.PushError) as denied:  # a wrong token: the error text does not echo it
            hf_tsv.push_to_hub(folder, "ns/other", token=token + "x")
        assert "ns/other" not in hub.repos and hub.repos["ns/secret"].private
        captured = capfd.readouterr()
        texts = [failed.out, failed.err, captured.out, captured.err, caplog.text, str(denied.value),
                 repr(denied.value), repr(denied.value.__cause__), "\n".join(hub.log_lines), repr(hub.requests)]
        assert "hf_tsv.hub" in caplog.text and "ns/secret" in captured.out
        assert not any(token in text for text in texts)
        files = [p for root in (folder, tmp_path / "hub") for p in root.rglob("*") if p.is_file()]
        assert files and not any(token.encode() in p.read_bytes() for p in files)


def test_merge_result_in_memory_pushes_through_a_temporary_folder(hub, tiny):
    from transformers import CLIPVisionModel

    result = hf_tsv.merge(tiny["base"], tiny["tasks"], method="ties", device="cpu")
    url = result.push_to_hub("ns/in-memory", create_pr=False)
    assert url.repo_id == "ns/in-memory" and result.folder is None
    (commit,) = hub.repos["ns/in-memory"].commits
    assert sorted(commit.files) == ["README.md", "config.json", "merge_report.json", "model.safetensors"]
    model = CLIPVisionModel.from_pretrained("ns/in-memory")
    assert all(torch.equal(t, result.state_dict()[k]) for k, t in model.state_dict().items())
    assert "# in-memory" in ModelCard.load("ns/in-memory").text


def test_cli_merge_push_to_hub_and_push(hub, tiny, tmp_path, capsys):
    out = tmp_path / "cli-merged"
    assert main(["merge", str(tiny["base"]), *map(str, tiny["tasks"]), "-o", str(out), "--device", "cpu",
                 "--push-to-hub", "ns/cli-merged", "--private"]) == 0
    printed = capsys.readouterr().out
    repo = hub.repos["ns/cli-merged"]
    assert repo.private and len(repo.commits) == 1
    assert f"pushed 6 files to ns/cli-merged (committed to main): {hub.endpoint}/ns/cli-merged/commit/" in printed
    report = json.loads(hub.read_file("ns/cli-merged", "merge_report.json"))
    # rebuilt from the parsed arguments, in the parser's order (issue 10: never from the raw command line)
    assert report["command"] == ("hf-tsv merge base task_00 task_01 task_02 -o cli-merged --push-to-hub "
                                 "ns/cli-merged --private --device cpu")
    readme = hub.read_file("ns/cli-merged", "README.md").decode()
    assert str(tmp_path) not in readme and str(Path(tiny["base"]).parent) not in readme

    assert main(["push", str(out), "--repo-id", "ns/cli-merged", "--revision", "exp", "--create-pr",
                 "--commit-message", "try a PR", "--license", "mit"]) == 0
    printed = capsys.readouterr().out.strip()
    commit = hub.repos["ns/cli-merged"].commits[-1]
    assert (commit.is_pr, commit.requested_revision, commit.message) == (True, "exp", "try a PR")
    assert printed.endswith(f"(opened a pull request): {hub.endpoint}/ns/cli-merged/discussions/1")
    assert "exp" in hub.repos["ns/cli-merged"].refs


def test_push_refuses_a_folder_without_weights(hub, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["push", str(tmp_path / "empty"), "--repo-id", "ns/x"]) == 2
    assert "has no config.json and safetensors weights" in capsys.readouterr().err
    assert hub.repos == {}


def _upload_parent(api: HfApi, repo_id: str, folder: str | Path, license: str | None) -> None:
    api.create_repo(repo_id)
    ops = [CommitOperationAdd(p.name, str(p)) for p in Path(folder).iterdir() if p.is_file()]
    if license:
        ops.append(CommitOperationAdd("README.md", f"---\nlicense: {license}\n---\n# {repo_id}\n".encode()))
    api.create_commit(repo_id, ops, commit_message="upload")


def test_hub_parents_give_base_model_links_and_license(hub, tiny, tmp_path):
    api = HfApi()
    for repo_id, folder, license in [("ns/base", tiny["base"], "mit"), ("ns/ft0", tiny["tasks"][0], "mit"),
                                     ("ns/ft1", tiny["tasks"][1], "mit"), ("ns/ft2", tiny["tasks"][2], "apache-2.0")]:
        _upload_parent(api, repo_id, folder, license)
    sha = hub.repos["ns/base"].refs["main"]

    hf_tsv.merge("ns/base", ["ns/ft0", "ns/ft1"], output_dir=tmp_path / "agree", device="cpu")
    agree = hf_tsv.write_card(tmp_path / "agree")
    data = ModelCard.load(tmp_path / "agree" / "README.md").data
    assert data.base_model == ["ns/base", "ns/ft0", "ns/ft1"] and data.base_model_relation == "merge"
    assert data.license == "mit" and agree.warnings == []
    assert f"[ns/base]({hub.endpoint}/ns/base) | [`{sha[:12]}`]({hub.endpoint}/ns/base/tree/{sha}) | mit" \
        in agree.text
    assert 'CLIPImageProcessor.from_pretrained("ns/base")' in agree.text

    hf_tsv.merge("ns/base", ["ns/ft0", "ns/ft2"], output_dir=tmp_path / "mixed", device="cpu")
    url = hf_tsv.push_to_hub(tmp_path / "mixed", "ns/mixed")
    assert len(url.warnings) == 1 and "declare different licenses" in url.warnings[0]
    assert "ns/ft2: apache-2.0" in url.warnings[0]
    card = ModelCard.load("ns/mixed")
    assert (card.data.license, card.data.license_name) == ("other", "mixed-parent-licenses")
    assert "> **Warning:** the parent models declare different licenses" in card.text


def test_tsvc_folder_pushes_and_expands_from_the_download(hub, tiny, tmp_path):
    from huggingface_hub import snapshot_download

    hf_tsv.compress(tiny["base"], tiny["tasks"], tmp_path / "tsvc", device="cpu")
    url = hf_tsv.push_to_hub(tmp_path / "tsvc", "ns/tiny-tsvc")
    (commit,) = hub.repos["ns/tiny-tsvc"].commits
    assert sorted(commit.files) == ["README.md", "config.json", "tsv_c.json", "tsv_c.safetensors"]
    assert commit.message == "Upload TSV-C factors of 3 tasks (hf-tsv 0.1.0)" and url.created_repo
    index = json.loads(hub.read_file("ns/tiny-tsvc", "tsv_c.json"))
    assert "path" not in index["base"] and "path" in json.loads((tmp_path / "tsvc" / "tsv_c.json").read_text())[
        "base"]
    assert "hf-tsv expand tiny-tsvc --task task_00" in hub.read_file("ns/tiny-tsvc", "README.md").decode()
    hf_tsv.expand(snapshot_download("ns/tiny-tsvc"), "task_01", tmp_path / "t1", base=tiny["base"], device="cpu")
    hf_tsv.expand(tmp_path / "tsvc", "task_01", tmp_path / "t1-local", device="cpu")
    assert all(torch.equal(v, load_state(tmp_path / "t1-local")[k]) for k, v in load_state(tmp_path / "t1").items())


@pytest.mark.parametrize("command", ["card", "push"])
def test_help(command, capsys):
    with pytest.raises(SystemExit) as done:
        main([command, "--help"])
    assert done.value.code == 0 and f"usage: hf-tsv {command}" in capsys.readouterr().out


def test_cli_merge_push_to_hub_without_output_folder(hub, tiny, capsys):
    assert main(["merge", str(tiny["base"]), *map(str, tiny["tasks"][:2]), "--method", "avg", "--device", "cpu",
                 "--push-to-hub", "ns/no-output"]) == 0
    assert "into memory" in capsys.readouterr().out
    (commit,) = hub.repos["ns/no-output"].commits
    assert sorted(commit.files) == ["README.md", "config.json", "merge_report.json", "model.safetensors"]
    assert not hub.repos["ns/no-output"].private
    assert "Weight averaging has no scaling factor α." in hub.read_file("ns/no-output", "README.md").decode()
