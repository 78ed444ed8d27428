"""Secrets and publishing (issue 10, defects 1, 9 and 10): a Hub token never reaches a file hf_tsv writes or pushes,
stdout, stderr or a log, however it is given; a push uploads exactly the documented files, scrubbed; the Space
shows visitors only messages built for them and keeps its results within a disk cap.

Bad-input rows: the pytest ids SEC-01... (docs/bad-input.md)."""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import traceback
import zipfile
from pathlib import Path
from unittest import mock

import pytest
from hub_server import HubServer, hf_clients_pointed_at, running_hub
from huggingface_hub import HfApi

import hf_tsv
from hf_tsv.cli import main

# shaped like a real user access token: hf_ + 34 letters
TOKEN = "hf_SecretTokenOfTheseTestsAbcdefghij"
LOWERCASE_TOKEN = "hf_onlylowercaselettersinthistoken"  # not shaped like one: redacted by value only
WHITESPACE = [f" {TOKEN}\n", f"\t{TOKEN} ", f"{TOKEN}\r\n"]
INSIDE = "has whitespace, control or non-ASCII characters inside"


# ----------------------------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------------------------


def _with_members(name: str, data: bytes) -> dict[str, bytes]:
    """``{name: data}``, and each member of ``data`` as ``name!member`` when it is a zip (a wheel, a Space zip)."""
    found = {name: data}
    if zipfile.is_zipfile(io.BytesIO(data)):
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            found.update({f"{name}!{member}": archive.read(member) for member in archive.namelist()})
    return found


def _file_texts(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (a zip's members too), by path."""
    found = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink():
            found.update(_with_members(str(path), path.read_bytes()))
    return found


def _pushed_files(hub: HubServer, repo_id: str, repo_type: str = "model") -> dict[str, bytes]:
    """Every file of the latest commit of ``repo_id`` as the Hub serves it (a zip's members too), by path."""
    key = repo_id if repo_type == "model" else f"{repo_type}s/{repo_id}"
    found = {}
    for path in hub.repos[key].commits[-1].files:
        found.update(_with_members(path, hub.read_file(repo_id, path, repo_type=repo_type)))
    return found


def assert_token_nowhere(token: str, roots: list[Path], texts: list[str],
                         pushed: dict[str, bytes] | None = None) -> None:
    """No file under ``roots`` (zip members included), none of ``texts`` and none of the ``pushed`` files (by
    name, as :func:`_pushed_files` reads them from the Hub) holds ``token``."""
    needle = token.strip()
    for i, text in enumerate(texts):
        assert needle not in text, f"text {i} shows the token: {text[:300]!r}"
    for root in roots:
        files = _file_texts(root)
        assert files, f"nothing was written under {root}"
        leaks = [name for name, data in files.items() if needle.encode() in data]
        assert not leaks, f"the token is in {leaks}"
    if pushed is not None:
        assert pushed, "nothing was pushed"
        leaks = [name for name, data in pushed.items() if needle.encode() in data]
        assert not leaks, f"the token is in the pushed {leaks}"


def _exception_texts(exc: BaseException) -> list[str]:
    return [str(exc), repr(exc), "".join(traceback.format_exception(exc))]


@pytest.fixture
def hub(tmp_path):
    """A loopback Hub whose token is TOKEN; HF_TOKEN is not set (each test says how the token is given)."""
    with HubServer(tmp_path / "hub-storage", token=TOKEN) as server, \
            hf_clients_pointed_at(server.endpoint, tmp_path / "hf-home", token=None):
        yield server


def _hub_texts(hub: HubServer) -> list[str]:
    return ["\n".join(hub.log_lines), repr(hub.requests)]


def _inputs(tiny) -> list[str]:
    return [str(tiny["base"]), *map(str, tiny["tasks"][:2])]


# ----------------------------------------------------------------------------------------------------------------
# Tokens are normalised, or refused without being shown
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("given", WHITESPACE)
def test_a_token_with_whitespace_around_it_is_stripped(given):
    from hf_tsv.secrets import normalize_token

    assert normalize_token(given) == TOKEN
    assert normalize_token(None) is None and normalize_token(False) is False


@pytest.mark.parametrize("given, message", [
    pytest.param(f"{TOKEN[:10]} {TOKEN[10:]}", INSIDE, id="SEC-04"),
    pytest.param(f"{TOKEN[:10]}\n{TOKEN[10:]}", INSIDE, id="SEC-05"),
    pytest.param(f"{TOKEN[:10]}\x00{TOKEN[10:]}", INSIDE, id="SEC-06"),
    pytest.param(f"{TOKEN[:10]}é{TOKEN[10:]}", INSIDE, id="SEC-07"),
    pytest.param(" \n", "is empty", id="SEC-08"),
    pytest.param(12345678, "must be a string, not int", id="SEC-09"),
])
def test_a_token_that_cannot_be_one_is_refused_before_reading(given, message, tiny, tmp_path, capfd):
    """Python API and CLI: a TokenError (an HFTSVError) naming the problem, never the token; no output."""
    with pytest.raises(hf_tsv.HFTSVError, match=message) as refused:
        hf_tsv.merge(tiny["base"], tiny["tasks"][:2], token=given, output_dir=tmp_path / "api")
    texts = _exception_texts(refused.value)
    if isinstance(given, str):
        assert main(["merge", *_inputs(tiny), "-o", str(tmp_path / "cli"), "--token", given]) == 2
        captured = capfd.readouterr()
        assert f"hf-tsv merge: error: the token {message}" in captured.err and captured.err.count("\n") == 1
        texts += [captured.out, captured.err]
        assert_token_nowhere(TOKEN[10:], [], texts)
    assert not (tmp_path / "api").exists() and not (tmp_path / "cli").exists()


@pytest.mark.parametrize("variable", [pytest.param("HF_TOKEN", id="SEC-25"),
                                      pytest.param("HUGGING_FACE_HUB_TOKEN", id="SEC-26")])
def test_a_broken_hf_token_is_refused_before_any_download(variable, tiny, tmp_path, monkeypatch):
    """HF_TOKEN is read when a Hub model is resolved: a newline inside it is refused, naming the variable."""
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv(variable, f"{TOKEN[:10]}\n{TOKEN[10:]}")
    with mock.patch("hf_tsv.io.resolve._download") as download, \
            pytest.raises(hf_tsv.HFTSVError, match=f"{variable} {INSIDE}") as refused:
        hf_tsv.merge(tiny["base"], ["ns/ft-a", "ns/ft-b"])
    download.assert_not_called()
    assert_token_nowhere(TOKEN[10:], [], _exception_texts(refused.value))
    hf_tsv.merge(tiny["base"], tiny["tasks"][:2])  # local models only: HF_TOKEN is not needed, nor checked


# ----------------------------------------------------------------------------------------------------------------
# The CLI: abbreviations refused, the command recorded from the parsed arguments
# ----------------------------------------------------------------------------------------------------------------


def _parsers(parser):
    import argparse

    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _parsers(sub)


def test_every_parser_refuses_abbreviations():
    from hf_tsv.cli import build_parser

    parsers = list(_parsers(build_parser()))
    assert len(parsers) > 10 and all(p.allow_abbrev is False for p in parsers)


@pytest.mark.parametrize("args, shown", [
    pytest.param(["--tok", TOKEN], "unrecognized arguments: --tok and 1 value (not shown)", id="SEC-01"),
    pytest.param([f"--toke={TOKEN}"], "unrecognized arguments: --toke and 1 value (not shown)", id="SEC-02"),
    pytest.param(["--tok", f" {TOKEN}\n"], "unrecognized arguments: --tok and 1 value (not shown)", id="SEC-03"),
    pytest.param(["--alpha", TOKEN], "argument --alpha: expected a number or 'search', got '***'", id="SEC-10"),
])
def test_an_abbreviated_or_misplaced_token_is_refused_and_not_shown(args, shown, tiny, tmp_path, capfd):
    with pytest.raises(SystemExit) as refused:
        main(["merge", *_inputs(tiny), "-o", str(tmp_path / "out"), "--device", "cpu", *args])
    captured = capfd.readouterr()
    assert refused.value.code == 2 and shown in captured.err
    assert_token_nowhere(TOKEN, [], [captured.out, captured.err])
    assert not (tmp_path / "out").exists()


def test_recorded_command_is_rebuilt_from_the_parsed_arguments():
    from hf_tsv.cli import build_parser, recorded_command

    parser = build_parser()
    args = parser.parse_args(["merge", "/data/base", "ns/ft@v1", "./ft2", "--token", f" {TOKEN}\n", "-o", "/tmp/o",
                              "--alpha", "0.5", "--fuse-qkv", "--exclude", "fc2", "--method", "tsv-m"])
    assert recorded_command(parser, args) == ("hf-tsv merge /data/base ns/ft@v1 ./ft2 --fuse-qkv --exclude fc2 "
                                              "--token '***' -o /tmp/o --alpha 0.5")
    from hf_tsv.secrets import public_command

    assert public_command(recorded_command(parser, args), {"ns/ft"}) == (
        "hf-tsv merge base ns/ft@v1 ft2 --fuse-qkv --exclude fc2 --token '***' -o o --alpha 0.5")


# ----------------------------------------------------------------------------------------------------------------
# The scan: every file written or pushed, stdout, stderr and logs
# ----------------------------------------------------------------------------------------------------------------


def test_every_json_hf_tsv_writes_has_its_secrets_redacted(tiny, tmp_path, monkeypatch):
    """The one JSON writer (``hf_tsv.io.output.write_json``) redacts, whatever the payload: a token that reached a
    value (here through a folder named like a token, and the ``HF_TOKEN`` value inside a name) is never written,
    by ``plan --json``, ``compress``'s ``tsv_c.json`` or any other JSON file."""
    from hf_tsv.io.output import write_json

    monkeypatch.setenv("HF_TOKEN", LOWERCASE_TOKEN)
    write_json(tmp_path / "direct.json", {"note": f"made with {TOKEN}", "names": [f"x-{LOWERCASE_TOKEN}"]})
    assert json.loads((tmp_path / "direct.json").read_text()) == {"note": "made with ***", "names": ["x-***"]}
    named = tmp_path / TOKEN
    shutil.copytree(tiny["tasks"][0], named)
    assert main(["plan", tiny["base"], str(named), tiny["tasks"][1], "--json", str(tmp_path / "plan.json")]) == 0
    assert main(["compress", tiny["base"], str(named), tiny["tasks"][1], "-o", str(tmp_path / "tsvc")]) == 0
    for written in [tmp_path / "plan.json", tmp_path / "tsvc" / "tsv_c.json"]:
        text = written.read_text()
        assert TOKEN not in text and "***" in text, written.name


@pytest.mark.parametrize("how", [pytest.param("--token", id="SEC-18"), pytest.param("--token=", id="SEC-19"),
                                 pytest.param("whitespace", id="SEC-20"), pytest.param("HF_TOKEN", id="SEC-21")])
def test_cli_merge_writes_the_token_nowhere(how, tiny, tmp_path, capfd, caplog, monkeypatch):
    caplog.set_level(logging.DEBUG)
    out = tmp_path / "out"
    args = ["merge", *_inputs(tiny), "-o", str(out), "--device", "cpu"]
    if how == "--token":
        args += ["--token", TOKEN]
    elif how == "--token=":
        args += [f"--token={TOKEN}"]
    elif how == "whitespace":
        args += ["--token", f" {TOKEN}\n"]
    else:
        monkeypatch.setenv("HF_TOKEN", f" {TOKEN}\n")
    assert main(args) == 0
    assert main(["card", str(out), "--repo-id", "ns/card", "--token", f"{TOKEN}\n"]) == 0
    captured = capfd.readouterr()
    assert {"merge_report.json", "README.md", "sti_stats.json"} <= {p.name for p in out.iterdir()}
    report = json.loads((out / "merge_report.json").read_text())
    expected = "--token '***' " if how != "HF_TOKEN" else ""
    assert report["command"] == f"hf-tsv merge base task_00 task_01 {expected}-o out --device cpu"
    assert_token_nowhere(TOKEN, [tmp_path], [captured.out, captured.err, caplog.text])


def test_python_merge_and_push_write_the_token_nowhere(tiny, hub, tmp_path, capfd, caplog):
    """A command passed to the API with the token in it (even abbreviated), a token with a newline around it."""
    caplog.set_level(logging.DEBUG)
    command = f"hf-tsv merge {tiny['base']} x y --tok {TOKEN} --toke={TOKEN} note {TOKEN} {LOWERCASE_TOKEN}"
    with mock.patch.dict(os.environ, {"HF_TOKEN": LOWERCASE_TOKEN}):
        result = hf_tsv.merge(tiny["base"], tiny["tasks"][:2], output_dir=tmp_path / "out", device="cpu",
                              token=f"{TOKEN}\n", command=command)
        url = result.push_to_hub("hf-tsv-tester/api", private=True, token=f" {TOKEN}\n")
        memory = hf_tsv.merge(tiny["base"], tiny["tasks"][:2], device="cpu", token=f"{TOKEN}\n", command=command)
        memory.push_to_hub("hf-tsv-tester/api-memory", token=f"\t{TOKEN}")
    assert hub.repos["hf-tsv-tester/api"].private and url.repo_id == "hf-tsv-tester/api"
    pushed = json.loads(hub.read_file("hf-tsv-tester/api-memory", "merge_report.json"))
    assert pushed["command"] == "hf-tsv merge base x y --tok '***' '--toke=***' note '***' '***'"
    captured = capfd.readouterr()
    assert_token_nowhere(TOKEN, [tmp_path], [captured.out, captured.err, caplog.text, *_hub_texts(hub)])
    assert_token_nowhere(LOWERCASE_TOKEN, [tmp_path], [captured.out, captured.err, caplog.text])


@pytest.mark.parametrize("how", [pytest.param("--token", id="SEC-22"), pytest.param("whitespace", id="SEC-23"),
                                 pytest.param("HF_TOKEN", id="SEC-24")])
def test_cli_merge_push_to_hub_and_push_write_the_token_nowhere(how, tiny, hub, tmp_path, capfd, caplog,
                                                                 monkeypatch):
    caplog.set_level(logging.DEBUG)
    given = {"--token": ["--token", TOKEN], "whitespace": ["--token", f"\n{TOKEN}\n"], "HF_TOKEN": []}[how]
    if how == "HF_TOKEN":
        monkeypatch.setenv("HF_TOKEN", f" {TOKEN}\n")
    out = tmp_path / "out"
    assert main(["merge", *_inputs(tiny), "-o", str(out), "--device", "cpu", "--push-to-hub", "hf-tsv-tester/m",
                 "--private", *given]) == 0
    assert main(["push", str(out), "--repo-id", "hf-tsv-tester/p", *given]) == 0
    hub.fail_next_commit = True  # a failed push: its message, its cleanup
    assert main(["push", str(out), "--repo-id", "hf-tsv-tester/failed", *given]) == 2
    captured = capfd.readouterr()
    assert "could not commit" in captured.err and "was removed" in captured.err
    assert hub.repos["hf-tsv-tester/m"].private and len(hub.repos["hf-tsv-tester/p"].commits) == 1
    assert "hf-tsv-tester/failed" not in hub.repos
    report = json.loads(hub.read_file("hf-tsv-tester/m", "merge_report.json"))
    assert ("--token '***'" in report["command"]) == (how != "HF_TOKEN")
    assert_token_nowhere(TOKEN, [tmp_path], [captured.out, captured.err, caplog.text, *_hub_texts(hub)])


def test_merge_with_eval_writes_the_token_nowhere(tiny, tmp_path, capfd, caplog):
    pytest.importorskip("datasets")
    from space_helpers import make_eval_tasks

    caplog.set_level(logging.DEBUG)
    # three tasks for two fine-tuned models: absolute accuracy only (no fine-tuned reference that could be 0)
    spec = make_eval_tasks(tmp_path / "tasks", ["cars", "dtd", "eurosat"], examples=6, seed=3)
    out = tmp_path / "out"
    assert main(["merge", *_inputs(tiny), "-o", str(out), "--device", "cpu", "--token", f" {TOKEN}\n",
                 "--alpha", "0.5", "--eval", str(spec), "--threads", "1"]) == 0
    captured = capfd.readouterr()
    assert {"eval_results.json", "eval_results.md"} <= {p.name for p in out.iterdir()}
    assert_token_nowhere(TOKEN, [tmp_path], [captured.out, captured.err, caplog.text])


@pytest.mark.parametrize("wrong", [pytest.param("X", id="SEC-28")])
def test_hub_download_errors_do_not_show_the_token(wrong, tiny, hub, tmp_path, caplog):
    """Merging private Hub models: a token with a newline around it is stripped (it used to fail with `Illegal
    header value b'Bearer hf_…\\n'`, token included); a wrong token's failure does not show it."""
    caplog.set_level(logging.DEBUG)
    api = HfApi(token=TOKEN)
    for name, folder in [("base", tiny["base"]), ("ft0", tiny["tasks"][0]), ("ft1", tiny["tasks"][1])]:
        api.create_repo(f"hf-tsv-tester/{name}", private=True)
        api.upload_folder(repo_id=f"hf-tsv-tester/{name}", folder_path=folder)
    with mock.patch.dict(os.environ, {"HF_HUB_OFFLINE": "0"}):
        with pytest.raises(hf_tsv.MergeInputError, match="Hub download failed") as failed:
            hf_tsv.merge("hf-tsv-tester/base", ["hf-tsv-tester/ft0", "hf-tsv-tester/ft1"], token=TOKEN + wrong)
        result = hf_tsv.merge("hf-tsv-tester/base", ["hf-tsv-tester/ft0", "hf-tsv-tester/ft1"], device="cpu",
                              token=f"{TOKEN}\n")
        assert result.report.base.repo_id == "hf-tsv-tester/base"
    assert_token_nowhere(TOKEN, [], [*_exception_texts(failed.value), caplog.text, *_hub_texts(hub)])


def test_space_zip_and_messages_hold_no_token(tmp_path):
    """The Space's worker writes the card and the zip through the same functions: a command holding a token (as
    a visitor could type into a label) does not reach them."""
    from space_helpers import import_space

    import_space()
    import space_worker

    from hf_tsv.synthetic import make_checkpoints

    library = make_checkpoints(tmp_path / "library", preset="tiny", num_tasks=2, seed=4)
    job = space_worker.MergeJob(base=str(library["base"]), models=tuple(map(str, library["tasks"])), method="ta",
                                alpha=0.3, fuse_qkv=False, device="cpu", output=str(tmp_path / "jobs" / "m"),
                                zip=str(tmp_path / "jobs" / "m.zip"), command=f"hf-tsv merge base a b --tok {TOKEN}",
                                scrub=(str(tmp_path),))
    outcome = space_worker.outcome_of(job)
    assert outcome["ok"] and zipfile.is_zipfile(tmp_path / "jobs" / "m.zip")
    assert_token_nowhere(TOKEN, [tmp_path / "jobs"], [json.dumps(outcome)])


# ----------------------------------------------------------------------------------------------------------------
# Outputs added since: compare (and the merge it keeps), PEFT adapters, the Space deploy
# ----------------------------------------------------------------------------------------------------------------

# Each way a token reaches hf-tsv: --token on the command line, HF_TOKEN in the environment (the CLI, with a
# newline around it as pasted) and token= of the Python API (with a newline too; the API also gets a command that
# holds the token, as a caller could record it).
ROUTES = [pytest.param("--token", id="cli-token"), pytest.param("HF_TOKEN", id="cli-HF_TOKEN"),
          pytest.param("token=", id="python-token")]


def _given(how: str, monkeypatch) -> tuple[list[str], dict]:
    """The CLI arguments (``--token``, ``HF_TOKEN``: set here) or the Python keyword arguments (``token=``) that
    give TOKEN by route ``how``."""
    if how == "HF_TOKEN":
        monkeypatch.setenv("HF_TOKEN", f" {TOKEN}\n")
        return [], {}
    if how == "--token":
        return ["--token", TOKEN], {}
    return [], {"token": f"{TOKEN}\n", "command": f"hf-tsv x --token {TOKEN} --tok={TOKEN}"}


def _seen(captured, caplog, hub: HubServer) -> list[str]:
    """What a user or a server operator sees: stdout, stderr, the log records, the Hub's log and requests, and
    what the Hub keeps of Spaces (their SDK, hardware and variables)."""
    return [captured.out, captured.err, caplog.text, *_hub_texts(hub), repr(hub.spaces)]


def _assert_recorded_and_redacted(folder: Path, how: str) -> None:
    """The token given on the command line or in the API's command did reach the recorded command (so the scan
    that follows looks where it would show), as ``***``."""
    recorded = json.loads((folder / "merge_report.json").read_text())["command"]
    assert ("--token '***'" in recorded) == (how != "HF_TOKEN"), recorded


@pytest.fixture(scope="module")
def compare_inputs(tmp_path_factory) -> dict:
    """test_compare's tiny CLIP base, two fine-tunes and a task spec with validation splits (α is searched)."""
    pytest.importorskip("datasets")
    pytest.importorskip("evaluate")
    from test_compare import make_compare_inputs

    return make_compare_inputs(tmp_path_factory.mktemp("secrets-compare"))


@pytest.mark.parametrize("how", ROUTES)
def test_compare_keep_best_and_its_push_write_the_token_nowhere(how, compare_inputs, hub, tmp_path, capfd, caplog,
                                                                 monkeypatch):
    """compare.json, compare.md, the plots, the kept merge folder (its report and card) and a push of it: in the
    folder, in the Hub's storage and in what the Hub serves back."""
    caplog.set_level(logging.DEBUG)
    flags, kwargs = _given(how, monkeypatch)
    inputs = [str(compare_inputs["base"]), *map(str, compare_inputs["tasks"])]
    out, repo = tmp_path / "compared", "hf-tsv-tester/best"
    if how == "token=":
        hf_tsv.compare(inputs[0], inputs[1:], methods=["ta", "tsv-m"], evaluator=compare_inputs["spec"],
                       alpha_grid="0.5,1", output_dir=out, keep_best=True, progress=False, device="cpu", **kwargs)
    else:
        assert main(["compare", *inputs, "-o", str(out), "--methods", "ta,tsv-m", "--eval",
                     str(compare_inputs["spec"]), "--alpha-grid", "0.5,1", "--keep-best", "--device", "cpu",
                     *flags]) == 0
    kept = {"compare.json", "compare.md", "compare_normalized.png", "compare_sti_per_layer.png", "eval_results.json",
            "merge_report.json", "model.safetensors"}
    assert kept <= {p.name for p in out.iterdir()}
    _assert_recorded_and_redacted(out, how)
    assert_token_nowhere(TOKEN, [out], [])  # as compare left it: the push below writes the card there too
    if how == "token=":
        hf_tsv.push_to_hub(out, repo, token=kwargs["token"])
    else:
        assert main(["push", str(out), "--repo-id", repo, *flags]) == 0
    captured = capfd.readouterr()
    pushed = _pushed_files(hub, repo)
    assert {"compare.json", "compare.md", "README.md", "merge_report.json"} <= set(pushed)
    assert "## Comparison of merge methods" in (out / "README.md").read_text()
    assert_token_nowhere(TOKEN, [out, hub.root, tmp_path], _seen(captured, caplog, hub), pushed)


@pytest.fixture(scope="module")
def lora_adapters(tiny, tmp_path_factory) -> list[str]:
    """Two PEFT LoRA adapters of the tiny base (the first two of test_lora's)."""
    pytest.importorskip("peft")
    import torch
    from peft import LoraConfig, get_peft_model
    from test_lora import ADAPTERS, _clip

    folders = []
    for i, spec in enumerate(ADAPTERS[:2]):
        torch.manual_seed(100 + i)
        folder = tmp_path_factory.mktemp("secrets-lora") / f"lora_{i}"
        get_peft_model(_clip(tiny["base"]), LoraConfig(init_lora_weights=False, **spec)).save_pretrained(folder)
        folders.append(str(folder))
    return folders


@pytest.mark.parametrize("how", ROUTES)
def test_peft_adapter_output_and_its_push_write_the_token_nowhere(how, tiny, lora_adapters, hub, tmp_path, capfd,
                                                                   caplog, monkeypatch):
    """``--output-format peft``: the adapter folder (weights, adapter_config.json, its card, merge_report.json)
    and its push (``hf-tsv push``, ``merge --push-to-hub``, ``MergeResult.push_to_hub``)."""
    caplog.set_level(logging.DEBUG)
    flags, kwargs = _given(how, monkeypatch)
    out, repo = tmp_path / "adapter", "hf-tsv-tester/merged-lora"
    written = {"adapter_model.safetensors", "adapter_config.json", "README.md", "merge_report.json"}
    if how == "token=":
        result = hf_tsv.merge(tiny["base"], lora_adapters, output_dir=out, output_format="peft", device="cpu",
                              **kwargs)
        assert_token_nowhere(TOKEN, [out], [])  # as the merge left it: the push below rewrites the card
        result.push_to_hub(repo, token=kwargs["token"])
    else:
        assert main(["merge", str(tiny["base"]), *lora_adapters, "-o", str(out), "--output-format", "peft",
                     "--device", "cpu", *flags]) == 0
        assert_token_nowhere(TOKEN, [out], [])
        assert main(["push", str(out), "--repo-id", repo, *flags]) == 0
        assert main(["merge", str(tiny["base"]), *lora_adapters, "-o", str(tmp_path / "pushed"), "--output-format",
                     "peft", "--device", "cpu", "--push-to-hub", f"{repo}-too", *flags]) == 0
        assert_token_nowhere(TOKEN, [], [], _pushed_files(hub, f"{repo}-too"))
    captured = capfd.readouterr()
    assert written <= {p.name for p in out.iterdir()}
    _assert_recorded_and_redacted(out, how)
    pushed = _pushed_files(hub, repo)
    assert written <= set(pushed)
    assert_token_nowhere(TOKEN, [out, hub.root, tmp_path], _seen(captured, caplog, hub), pushed)


@pytest.mark.parametrize("how", ROUTES)
def test_space_deploy_writes_the_token_nowhere(how, tiny, hub, tmp_path, capfd, caplog, monkeypatch):
    """``hf-tsv space deploy`` / ``deploy_space``: every file of the deployed commit (the wheel's members too),
    its commit message, the Space's variables, the Hub's storage, stdout, stderr and the logs."""
    pytest.importorskip("gradio")
    pytest.importorskip("datasets")
    from space_helpers import make_eval_tasks

    caplog.set_level(logging.DEBUG)
    flags, kwargs = _given(how, monkeypatch)
    library = tmp_path / "library"
    shutil.copytree(tiny["base"], library / "base")
    shutil.copytree(tiny["tasks"][0], library / "cars")
    spec = make_eval_tasks(tmp_path / "eval", ["cars"], examples=4)
    space = "hf-tsv-tester/merge-space"
    message = f"Deploy with {TOKEN}"  # the token given, typed into the commit message too
    if how == "token=":
        hf_tsv.deploy_space(space, private=True, model_library=library, tasks=spec, token=kwargs["token"],
                            commit_message=message)
    else:
        assert main(["space", "deploy", space, "--private", "--model-library", str(library), "--tasks", str(spec),
                     "--commit-message", message, *flags]) == 0
    captured = capfd.readouterr()
    assert [c.message for c in hub.repos[f"spaces/{space}"].commits] == ["Deploy with ***"]
    pushed = _pushed_files(hub, space, repo_type="space")
    assert_token_nowhere(TOKEN, [hub.root, tmp_path], _seen(captured, caplog, hub), pushed)
    assert {"README.md", "app.py", "requirements.txt", "tasks.json", "model_library/cars/config.json"} <= set(pushed)
    assert any(name.startswith("wheels/") and "!hf_tsv/space_deploy.py" in name for name in pushed)
    assert hub.spaces[space]["variables"] == {"HF_TSV_MODEL_LIBRARY": "model_library",
                                              "HF_TSV_SPACE_TASKS": "tasks.json"}


# ----------------------------------------------------------------------------------------------------------------
# Push publishes exactly the documented files, scrubbed
# ----------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def merged(tiny, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("secrets") / "merged"
    hf_tsv.merge(tiny["base"], tiny["tasks"][:2], output_dir=out, device="cpu")
    return out


@pytest.fixture
def folder(merged, tmp_path) -> Path:
    return Path(shutil.copytree(merged, tmp_path / "clip-merged"))


def test_hub_doc_lists_exactly_what_a_push_uploads():
    from hf_tsv.hub import published_files_table

    doc = (Path(__file__).resolve().parents[1] / "docs" / "hub.md").read_text()
    assert published_files_table() in doc


@pytest.mark.parametrize("stray", [
    pytest.param("private_weights.safetensors", id="SEC-11"),
    pytest.param("model-extra.safetensors", id="SEC-12"),
    pytest.param("notes.txt", id="SEC-13"),
    pytest.param("sub/", id="SEC-14"),
    pytest.param("link.json", id="SEC-15"),
])
def test_push_uploads_only_the_documented_files(stray, folder, hub, tmp_path):
    if stray == "sub/":
        (folder / "sub").mkdir()
        (folder / "sub" / "model.safetensors").write_bytes(b"private")
    elif stray == "link.json":
        (tmp_path / "outside.json").write_text('{"private": true}')
        (folder / "eval_link.json").symlink_to(tmp_path / "outside.json")
        stray = "eval_link.json (a symbolic link)"
    else:
        (folder / stray).write_bytes(b"private")
    url = hf_tsv.push_to_hub(folder, "hf-tsv-tester/exact", token=TOKEN)
    (commit,) = hub.repos["hf-tsv-tester/exact"].commits
    assert sorted(commit.files) == ["README.md", "config.json", "merge_report.json", "model.safetensors",
                                    "sti_heatmap.png", "sti_stats.json"]
    assert url.files == tuple(sorted(commit.files))
    assert url.warnings[-1].startswith("not published (a push uploads only the files listed in hf-tsv's docs/hub.md")
    assert url.warnings[-1].endswith(stray)


@pytest.mark.parametrize("weights", [pytest.param("private_weights.safetensors", id="SEC-27")])
def test_push_refuses_a_folder_whose_only_weights_are_not_published(weights, folder, hub):
    (folder / "model.safetensors").rename(folder / weights)
    with pytest.raises(hf_tsv.PushError, match="has no config.json and safetensors weights"):
        hf_tsv.push_to_hub(folder, "hf-tsv-tester/none", token=TOKEN)
    assert hub.repos == {}


# A commit message typed by the user, holding the token given (by shape and, with HF_TOKEN, by value only)
MESSAGE = f"merged with --token {TOKEN} (HF_TOKEN={LOWERCASE_TOKEN})"
MESSAGE_AS_COMMITTED = "merged with --token *** (HF_TOKEN=***)"


@pytest.mark.parametrize("how", ["cli-push", "push_to_hub", "MergeResult.push_to_hub"])
def test_a_token_in_the_commit_message_is_not_committed(how, tiny, folder, hub, capfd, caplog, monkeypatch):
    """``hf-tsv push --commit-message``, ``hf_tsv.push_to_hub(commit_message=, commit_description=)`` and
    ``MergeResult.push_to_hub`` (what ``merge --push-to-hub`` calls): the Hub keeps the message with the token
    redacted, also as the title of a pull request."""
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("HF_TOKEN", LOWERCASE_TOKEN)
    repo = "hf-tsv-tester/message"
    if how == "cli-push":
        assert main(["push", str(folder), "--repo-id", repo, "--create-pr", "--commit-message", MESSAGE,
                     "--token", TOKEN]) == 0
    elif how == "push_to_hub":
        hf_tsv.push_to_hub(folder, repo, create_pr=True, commit_message=MESSAGE, commit_description=MESSAGE,
                           token=TOKEN)
    else:
        result = hf_tsv.merge(tiny["base"], tiny["tasks"][:2], device="cpu")  # in memory: saved to a temporary folder
        result.push_to_hub(repo, create_pr=True, commit_message=MESSAGE, token=TOKEN)
    (commit,) = hub.repos[repo].commits
    assert commit.is_pr and commit.message == MESSAGE_AS_COMMITTED
    assert commit.description in ("", MESSAGE_AS_COMMITTED)
    captured = capfd.readouterr()
    for token in (TOKEN, LOWERCASE_TOKEN):
        assert_token_nowhere(token, [hub.root], [*_seen(captured, caplog, hub), repr(hub.repos)])


def test_every_pushed_json_and_text_file_is_scrubbed(folder, hub, tmp_path):
    """Names and notes of merge_report.json, eval files, tsv_c.json: no secret, no local absolute path. Files
    with nothing to scrub go up byte for byte."""
    home = str(Path.home())
    report = json.loads((folder / "merge_report.json").read_text())
    report["notes"] = [f"read {tmp_path}/inputs/base/model.safetensors", f"token {TOKEN}", f"{home}/models/x"]
    report["models"][0]["name"] = f"{tmp_path}/task_00"
    (folder / "merge_report.json").write_text(json.dumps(report))
    evals = {"tasks": {"cars": {"absolute": 70.0}}, "dataset_ids": {"cars": f"imagefolder:{tmp_path}/cars"},
             "note": f"Bearer {LOWERCASE_TOKEN}"}
    (folder / "eval_results.json").write_text(json.dumps(evals))
    (folder / "eval_results.md").write_text(f"| cars | {tmp_path}/cars | {TOKEN} |\n")
    hf_tsv.push_to_hub(folder, "hf-tsv-tester/scrubbed", token=TOKEN)
    pushed = {name: hub.read_file("hf-tsv-tester/scrubbed", name)
              for name in hub.repos["hf-tsv-tester/scrubbed"].commits[-1].files}
    for name, data in pushed.items():
        for secret in (TOKEN, LOWERCASE_TOKEN, str(tmp_path), home + "/"):
            assert secret.encode() not in data, (name, secret)
    pushed_report = json.loads(pushed["merge_report.json"])
    assert pushed_report["notes"] == ["read model.safetensors", "token ***", "x"]
    assert pushed_report["models"][0]["name"] == "task_00"
    assert json.loads(pushed["eval_results.json"])["dataset_ids"]["cars"] == "imagefolder:cars"
    assert pushed["eval_results.md"] == b"| cars | cars | *** |\n"
    for name in ("config.json", "model.safetensors", "sti_stats.json", "README.md"):
        assert pushed[name] == (folder / name).read_bytes(), name


def test_files_written_locally_are_redacted(tiny, tmp_path):
    """merge_report.json (command and notes), tsv_c.json (which keeps its base's local path) and the card."""
    hf_tsv.compress(tiny["base"], tiny["tasks"][:2], tmp_path / "tsvc", device="cpu")
    index = json.loads((tmp_path / "tsvc" / "tsv_c.json").read_text())
    assert index["base"]["path"] == str(Path(tiny["base"]).resolve())
    result = hf_tsv.merge(tiny["base"], tiny["tasks"][:2], device="cpu",
                          command=f"hf-tsv merge {tiny['base']} a b --token {LOWERCASE_TOKEN}")
    result.report.notes.append(f"Authorization: Bearer {TOKEN}")
    result.save_pretrained(tmp_path / "saved")
    card = hf_tsv.write_card(tmp_path / "saved", repo_id="ns/x", license=f"other {TOKEN}")
    assert "Authorization: Bearer ***" in json.loads((tmp_path / "saved" / "merge_report.json").read_text())["notes"]
    assert_token_nowhere(TOKEN, [tmp_path / "saved"], [card.text])
    assert_token_nowhere(LOWERCASE_TOKEN, [tmp_path / "saved"], [card.text])


# ----------------------------------------------------------------------------------------------------------------
# Redaction itself
# ----------------------------------------------------------------------------------------------------------------


def test_redact_and_public_text():
    from hf_tsv.secrets import public_json, public_text, redact

    assert redact(f"a {TOKEN} b") == "a *** b"
    assert redact(f"Illegal header value b'Bearer {LOWERCASE_TOKEN}\\n'") == "Illegal header value b'Bearer ***\\n'"
    assert redact(f"x {LOWERCASE_TOKEN} y", [f" {LOWERCASE_TOKEN}\n"]) == "x *** y"
    names = "hf_tsv_version, hf_tsv.merge, HF_TSV_SPACE_TASKS, ns/hf_clip_vit_base_patch32, hf_SECRET123"
    assert redact(f"api_{TOKEN[3:]} and {names}") == f"*** and {names}"
    assert public_text("cannot read /srv/cache/models--ns--x/snapshots/ab12/model.safetensors (3 bytes)") == \
        "cannot read model.safetensors (3 bytes)"
    assert public_text("see https://huggingface.co/ns/x/tree/main, C:\\Users\\me\\ft and ~/.cache/x, r/T, 1/2") == \
        "see https://huggingface.co/ns/x/tree/main, ft and x, r/T, 1/2"
    data = {"command": "hf-tsv merge /a/base ns/ft -o /tmp/o", "models": [{"repo_id": "ns/ft"}],
            "notes": ["/home/me/x"]}
    assert public_json(data) == {"command": "hf-tsv merge base ns/ft -o o", "models": [{"repo_id": "ns/ft"}],
                                 "notes": ["x"]}
    assert public_json(public_json(data)) == public_json(data)


# ----------------------------------------------------------------------------------------------------------------
# The Space: messages built for visitors, a disk cap on kept results
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("weights", [pytest.param(b"abc", id="SEC-29")])
def test_space_errors_show_no_server_path(weights, tiny, tmp_path):
    """A visitor's Hub model that the worker cannot read: the message names the file, not where the server's Hub
    cache keeps it (nor any other server path)."""
    from space_helpers import import_space

    import_space()
    import space_worker

    with running_hub(tmp_path / "server") as hub_server:
        api = HfApi()
        api.create_repo("ns/broken")
        api.upload_file(path_or_fileobj=b"{}", path_in_repo="config.json", repo_id="ns/broken")
        api.upload_file(path_or_fileobj=weights, path_in_repo="model.safetensors", repo_id="ns/broken")
        assert hub_server.repos["ns/broken"]
        job = space_worker.StiJob(base="ns/broken", models=(str(tiny["tasks"][0]), str(tiny["tasks"][1])),
                                  fuse_qkv=False, device="cpu", scrub=(str(tmp_path / "workspace"),))
        outcome = space_worker.outcome_of(job)
    assert not outcome["ok"] and "ns/broken" in outcome["error"]
    for server_path in (str(tmp_path), "/tmp/", str(Path(tiny["base"]).parent)):
        assert server_path not in outcome["error"]


def test_space_keeps_results_within_the_disk_cap(tmp_path):
    """The oldest results of any session go first; results in use stay; when what is in use fills the cap, the
    new job is refused."""
    from space_helpers import import_space

    _, space_core = import_space()
    workspace = space_core.Workspace(tmp_path)
    jobs = []
    for i in range(3):
        job = workspace.session_dir(None) / f"merge-{i}"
        job.mkdir()
        (job / "model.safetensors").write_bytes(b"0" * 1000)
        os.utime(job, (1000 + i, 1000 + i))
        jobs.append(job)
    assert [size for _, size in workspace.results()] == [1000, 1000, 1000]
    assert workspace.make_room(3000) and all(j.exists() for j in jobs)
    with workspace.in_use(jobs[0] / "model.safetensors"):
        assert workspace.make_room(3000, reserve=1000)  # the oldest not in use goes: job 1
        assert [j.exists() for j in jobs] == [True, False, True]
        assert not workspace.make_room(1500, reserve=600, keep=[jobs[2]])  # job 0 in use, job 2 kept
        assert [j.exists() for j in jobs] == [True, False, True]
    assert workspace.make_room(1500, reserve=400)
    assert [j.exists() for j in jobs] == [False, False, True]
    workspace.close()


FAKE_WORKER = """
import json, sys
from pathlib import Path
job_file = Path(sys.stdin.readline().strip())
job = json.loads(job_file.read_text())
out = Path(job["output"])
out.mkdir(parents=True)
(out / "README.md").write_text("# merged")
(out / "model.safetensors").write_bytes(b"0" * SIZE)
Path(job["zip"]).write_bytes(b"0" * SIZE)
report = {"method": "ta", "num_tasks": 2, "alpha": 0.3, "base": {"name": "base", "source": "local"}, "models": [],
          "output": {"class": "CLIPVisionModel", "dtype": "float32"}, "options": {}}
job_file.with_name("result.json").write_text(json.dumps({"ok": True, "report": report, "card_warnings": []}))
"""


@pytest.mark.parametrize("case", [pytest.param("evict", id="SEC-16"), pytest.param("refuse", id="SEC-17")])
def test_space_merges_evict_old_results_or_are_refused(case, tmp_path):
    from gradio_client import Client
    from gradio_client.exceptions import AppError
    from space_helpers import import_space, running_space

    _, space_core = import_space()
    from hf_tsv.synthetic import make_checkpoints

    library = make_checkpoints(tmp_path / "library", preset="tiny", num_tasks=2, seed=6)
    size = Path(library["base"], "model.safetensors").stat().st_size
    script = tmp_path / "fake_worker.py"
    script.write_text(FAKE_WORKER.replace("SIZE", str(size)))
    # a merge reserves 2 model sizes (folder + zip); "evict" leaves room for one merge, "refuse" for none
    cap = 3 * size if case == "evict" else 1.5 * size
    settings = space_core.Settings(library=tmp_path / "library", max_results_gb=cap / 1e9)
    args = dict(base_library="base", base_hub="", models_library=["task_00", "task_01"], models_hub="",
                method="ta", alpha=0.3, fuse_qkv=False, device="cpu", evaluate=False, api_name="/merge")
    with running_space(settings, script=script, spares=0) as served:
        first, second = Client(served.url, verbose=False), Client(served.url, verbose=False)
        if case == "refuse":
            with pytest.raises(AppError, match=r"keeps at most .* GB of results \(HF_TSV_SPACE_MAX_RESULTS_GB\)"):
                first.predict(**args)
            assert not served.workspace.results()
            return
        first.predict(**args)
        (kept,) = served.workspace.results()
        second.predict(**args)
        (newer,) = served.workspace.results()
        assert newer[0] != kept[0] and not kept[0].exists()
        with pytest.raises(AppError, match="no merged model in this session yet \\(or it has expired\\)"):
            first.predict(repo_id="me/x", private=True, create_pr=False, token=TOKEN, api_name="/push")


def test_space_settings_read_the_results_cap():
    from space_helpers import import_space

    _, space_core = import_space()
    assert space_core.Settings.from_env({}).max_results_gb == 20.0
    assert space_core.Settings.from_env({"HF_TSV_SPACE_MAX_RESULTS_GB": "2.5"}).max_results_gb == 2.5
    with pytest.raises(ValueError, match="HF_TSV_SPACE_MAX_RESULTS_GB"):
        space_core.Settings.from_env({"HF_TSV_SPACE_MAX_RESULTS_GB": "lots"})
