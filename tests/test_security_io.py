"""Bad and hostile inputs on the reading side (issue 10: defects 2, 3, 7 parser parts, 11 TSV-C parts).

Every parametrised case is one row of docs/bad-input.md; its pytest id is the row id (IO-NN). Rows are grouped:
files that escape the model's folder, Hub downloads (exactly what is read, at one commit), malformed checkpoint
files, task specs, TSV-C folders.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from pathlib import Path

import pytest
import torch
from file_audit import opened_files, within
from safetensors.torch import save_file

import hf_tsv
from hf_tsv.cli import main
from hf_tsv.io.reader import CheckpointReader
from hf_tsv.io.resolve import resolve_model

SECRET = b"TOPSECRET-" * 123  # 1230 bytes outside every model: neither its bytes nor its size may ever be shown
INDEX = "model.safetensors.index.json"


def with_then_without(secret: Path):
    """Run the loop body twice: with the outside file present, then gone (a refusal must read the same)."""
    secret.write_bytes(SECRET)
    yield True
    secret.unlink()
    yield False


def cli(capsys, *args) -> tuple[int, str]:
    """Run ``hf-tsv ARGS`` in this process; return the exit code and stderr."""
    code = main([str(a) for a in args])
    return code, capsys.readouterr().err


def assert_one_line_error(code: int, err: str, *fragments: str) -> None:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def tensors_of(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def copy_model(src: str | Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def make_sharded(src: str | Path, dst: Path, extra: dict[str, str] | None = None) -> Path:
    """``src`` as two shards plus ``model.safetensors.index.json``; ``extra`` adds weight_map entries."""
    dst.mkdir(parents=True, exist_ok=True)
    shutil.copy(Path(src) / "config.json", dst / "config.json")
    state = tensors_of(Path(src))
    keys = sorted(state)
    half = len(keys) // 2
    names = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    weight_map = {}
    for name, part in zip(names, (keys[:half], keys[half:])):
        save_file({k: state[k].contiguous() for k in part}, str(dst / name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, name))
    weight_map.update(extra or {})
    (dst / INDEX).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return dst


# ----------------------------------------------------------------------------------------------------------------
# Files that lead outside the model's folder (defect 2)
# ----------------------------------------------------------------------------------------------------------------


def _index_naming(name_of_secret):
    """A sharded model whose index maps one more key, 'aaa.extra', to the name ``name_of_secret(model, secret)``."""
    def build(tiny, root: Path, secret: Path) -> tuple[Path, list[str]]:
        model = root / "bad"
        name = name_of_secret(model, secret)
        make_sharded(tiny["tasks"][1], model, extra={"aaa.extra": name})
        return model, [INDEX, "'aaa.extra'"]
    return build


def _linked_shard(model: Path, secret: Path) -> str:
    """A shard name inside the folder, but the shard is a symlink to the secret."""
    (model / "sub").mkdir(parents=True)
    (model / "sub" / "link.safetensors").symlink_to(secret)
    return "sub/link.safetensors"


def _symlinked(file_name: str, sharded: bool = False):
    """A model whose ``file_name`` is a symlink to the secret."""
    def build(tiny, root: Path, secret: Path) -> tuple[Path, list[str]]:
        model = (make_sharded(tiny["tasks"][1], root / "bad") if sharded else
                 copy_model(tiny["tasks"][1], root / "bad"))
        (model / file_name).unlink()
        (model / file_name).symlink_to(secret)
        return model, [file_name, "outside the model's folder"]
    return build


def _bin_index_absolute(tiny, root: Path, secret: Path) -> tuple[Path, list[str]]:
    """pytorch_model.bin shards whose index names the secret by its absolute path."""
    model = root / "bad"
    model.mkdir()
    shutil.copy(Path(tiny["tasks"][1]) / "config.json", model / "config.json")
    state = tensors_of(Path(tiny["tasks"][1]))
    torch.save(state, model / "pytorch_model-00001-of-00001.bin")
    weight_map = {**dict.fromkeys(state, "pytorch_model-00001-of-00001.bin"), "aaa.extra": str(secret)}
    (model / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": weight_map}))
    return model, ["pytorch_model.bin.index.json", "'aaa.extra'"]


def _snapshot_of_other_repo(tiny, root: Path, secret: Path) -> tuple[Path, list[str]]:
    """A Hub-cache snapshot whose weights link out of its own repository folder (``models--ns--mine``)."""
    snapshot = root / "hub" / "models--ns--mine" / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    shutil.copy(Path(tiny["tasks"][1]) / "config.json", snapshot / "config.json")
    (snapshot / "model.safetensors").symlink_to(os.path.relpath(secret, snapshot))
    return snapshot, ["model.safetensors", "outside the model's folder"]


ESCAPES = [
    pytest.param(_index_naming(lambda model, secret: str(secret)), id="IO-01"),  # an absolute path in the index
    pytest.param(_index_naming(lambda model, secret: os.path.relpath(secret, model)), id="IO-02"),  # ../..
    pytest.param(_index_naming(_linked_shard), id="IO-03"),  # a relative name, but the shard is a link out
    pytest.param(_symlinked("model.safetensors"), id="IO-04"),
    pytest.param(_symlinked("config.json"), id="IO-05"),
    pytest.param(_symlinked(INDEX, sharded=True), id="IO-06"),
    pytest.param(_bin_index_absolute, id="IO-07"),
    pytest.param(_snapshot_of_other_repo, id="IO-08"),
]


@pytest.mark.parametrize("build", ESCAPES)
def test_files_outside_the_model_are_never_opened(build, tiny, tmp_path, capsys):
    """`hf-tsv plan BASE BAD MODEL`: exit 2, one line naming the model, the file (and the index's key); the
    same message whether the outside file exists or not, with neither its bytes nor its size; never opened."""
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = outside / "secret.safetensors"
    models = tmp_path / "models"
    models.mkdir()
    model, fragments = build(tiny, models, secret)
    messages = []
    for _ in with_then_without(secret):
        with opened_files() as paths:
            code, err = cli(capsys, "plan", tiny["base"], model, tiny["tasks"][0])
        assert_one_line_error(code, err, f"model {model.name!r}", *fragments)
        assert "TOPSECRET" not in err and str(len(SECRET)) not in err
        assert not within(paths, outside), "a file outside the model was opened"
        messages.append(err)
    assert messages[0] == messages[1], "the message tells whether the outside file exists"


@pytest.mark.parametrize("build", [pytest.param(ESCAPES[0].values[0], id="IO-66"),
                                   pytest.param(ESCAPES[3].values[0], id="IO-67")])
def test_evaluation_loads_only_files_inside_the_model(build, tiny, tmp_path):
    """`load_vision_model(BAD)` (what `hf-tsv eval` and the Space's evaluation call) applies the same rule
    before transformers opens anything: the index's outside shard, or a weights link leading out, is refused."""
    from hf_tsv.evaluation import load_vision_model

    secret = tmp_path / "outside" / "secret.safetensors"
    secret.parent.mkdir()
    secret.write_bytes(Path(tiny["tasks"][0], "model.safetensors").read_bytes())  # a loadable outside file
    model, fragments = build(tiny, _mkdir(tmp_path / "models"), secret)
    with opened_files() as paths, pytest.raises(hf_tsv.MergeInputError) as info:
        load_vision_model(model)
    assert all(fragment in str(info.value) for fragment in fragments), str(info.value)
    assert not within(paths, secret.parent)


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True)
    return path


@pytest.mark.parametrize("layout", [pytest.param("snapshot", id="IO-09"), pytest.param("sharded", id="IO-10")])
def test_snapshots_and_sharded_folders_still_read(layout, tiny, tmp_path):
    """Works: a Hub-cache snapshot whose files link into its own repository's blobs (given as a local folder),
    and a sharded folder, read as before."""
    source = Path(tiny["tasks"][1])
    if layout == "snapshot":
        repo = tmp_path / "hub" / "models--ns--ok"
        folder = repo / "snapshots" / ("b" * 40)
        folder.mkdir(parents=True)
        (repo / "blobs").mkdir()
        for name in ("config.json", "model.safetensors"):
            shutil.copy(source / name, repo / "blobs" / name.replace(".", "-"))
            (folder / name).symlink_to(f"../../blobs/{name.replace('.', '-')}")
    else:
        folder = make_sharded(source, tmp_path / "sharded")
    expected = tensors_of(source)
    reader = CheckpointReader(folder, "ok")
    assert set(reader.infos) == set(expected)
    assert all(torch.equal(reader.get(k), v) for k, v in expected.items())


# ----------------------------------------------------------------------------------------------------------------
# Hub inputs: exactly the files the reader opens, at one commit (defect 3); the index rule holds there too
# ----------------------------------------------------------------------------------------------------------------

SPACES_APP = Path(__file__).resolve().parents[1] / "spaces_app"


def space_core_module():
    """spaces_app/space_core.py (imported as the Space imports it, without Gradio)."""
    import sys

    if str(SPACES_APP) not in sys.path:
        sys.path.insert(0, str(SPACES_APP))
    import space_core

    return space_core


def hub_repo(tiny, tmp_path: Path, kind: str, secret: Path | None = None) -> tuple[Path, set[str]]:
    """A folder to upload and the files the reader opens in it. ``extra``: model.safetensors with a stray
    top-level other.safetensors and extra/blob.safetensors; ``sharded``: an index and its two shards with a
    stray third shard; ``escape``: an index that also names ``secret`` by its absolute path."""
    source = Path(tiny["tasks"][1])
    folder = tmp_path / f"upload-{kind}"
    if kind == "extra":
        copy_model(source, folder)
        (folder / "extra").mkdir()
        for stray in ("other.safetensors", "extra/blob.safetensors"):
            shutil.copy(source / "model.safetensors", folder / stray)
        return folder, {"config.json", "model.safetensors"}
    make_sharded(source, folder, extra={"aaa.extra": str(secret)} if kind == "escape" else None)
    shutil.copy(folder / "model-00001-of-00002.safetensors", folder / "model-00003-of-00003.safetensors")
    shutil.copy(source / "model.safetensors", folder / "other.safetensors")
    return folder, {"config.json", INDEX, "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"}


def fetched(hub, repo_id: str) -> tuple[set[str], set[str]]:
    """The files of ``repo_id`` the client asked the test Hub for, and the revisions it asked them at."""
    files, revisions = set(), set()
    for request in hub.requests:
        prefix = f"/{repo_id}/resolve/"
        if request.path.startswith(prefix):
            revision, _, name = request.path[len(prefix):].partition("/")
            files.add(name)
            revisions.add(revision)
    return files, revisions


@pytest.fixture
def hub(tmp_path):
    """The loopback test Hub; huggingface_hub points at it, online (HF_HUB_OFFLINE=0), for the test's duration."""
    from hub_server import running_hub

    with running_hub(tmp_path / "hub") as server:
        yield server


def upload(hub, repo_id: str, folder: Path) -> str:
    from huggingface_hub import HfApi

    HfApi().create_repo(repo_id)
    HfApi().upload_folder(repo_id=repo_id, folder_path=str(folder))
    return hub.repos[repo_id].commits[-1].oid


@pytest.mark.parametrize("kind", [pytest.param("extra", id="IO-11"), pytest.param("sharded", id="IO-12")])
def test_hub_download_is_exactly_what_is_read(kind, hub, tiny, tmp_path):
    """`merge ns/x ...`: only config.json and the weights the reader opens are downloaded, all at the commit
    the revision resolved to; the merge equals the local one."""
    folder, expected = hub_repo(tiny, tmp_path, kind)
    sha = upload(hub, f"ns/{kind}", folder)
    hub.clear_requests()
    model = resolve_model(f"ns/{kind}@main")
    assert model.revision == sha
    files, revisions = fetched(hub, f"ns/{kind}")
    assert files == expected and revisions == {sha}
    snapshot = Path(model.reader.folder)
    on_disk = {str(p.relative_to(snapshot)) for p in snapshot.rglob("*") if not p.is_dir()}
    assert on_disk == expected
    assert all(torch.equal(model.reader.get(k), v) for k, v in tensors_of(Path(tiny["tasks"][1])).items())


@pytest.mark.parametrize("case", [pytest.param("escape", id="IO-13")])
def test_hub_index_naming_an_outside_file(case, hub, tiny, tmp_path, capsys):
    """A Hub repository whose index names a file of the server by absolute path: `hf-tsv plan` exits 2 naming
    the repo, the index and the key; the file is never opened and nothing but the named shards is fetched."""
    secret = tmp_path / "outside" / "secret.safetensors"
    secret.parent.mkdir()
    secret.write_bytes(SECRET)
    folder, expected = hub_repo(tiny, tmp_path, case, secret)
    upload(hub, "ns/escape", folder)
    with opened_files() as paths:
        code, err = cli(capsys, "plan", tiny["base"], "ns/escape", tiny["tasks"][0])
    assert_one_line_error(code, err, "model 'ns/escape'", INDEX, "'aaa.extra'", "not a file inside")
    assert "TOPSECRET" not in err and str(len(SECRET)) not in err
    assert not within(paths, secret.parent)
    assert fetched(hub, "ns/escape")[0] == expected


@pytest.mark.parametrize("kind", [pytest.param("extra", id="IO-14"), pytest.param("sharded", id="IO-15")])
def test_space_size_check_counts_what_the_worker_reads_at_that_commit(kind, hub, tiny, tmp_path):
    """The Space's size check counts exactly the files a worker reads (strays at any depth left out), at the
    commit it resolved; the worker is sent that commit, so a later push cannot slip in unchecked bytes."""
    space_core = space_core_module()
    folder, expected = hub_repo(tiny, tmp_path, kind)
    sha = upload(hub, f"ns/{kind}", folder)
    settings = space_core.Settings(hub_cache=tmp_path / "worker-cache", max_total_gb=1.0)
    ref = space_core.parse_hub_id(f"ns/{kind}")
    size = sum((folder / name).stat().st_size for name in expected)
    assert space_core.model_bytes(ref) == size
    (pinned,), total = space_core.pin_models([ref], settings)
    assert total == size and pinned.worker_ref == f"ns/{kind}@{sha}" and pinned.label == f"ns/{kind}"
    # a bigger model pushed to main after the check: the worker still reads the commit that was counted
    from huggingface_hub import HfApi

    HfApi().upload_file(repo_id=f"ns/{kind}", path_or_fileobj=b"x" * 10_000, path_in_repo="config.json")
    assert hub.repos[f"ns/{kind}"].commits[-1].oid != sha
    assert resolve_model(pinned.worker_ref).revision == sha


@pytest.mark.parametrize("case", [pytest.param("library-link", id="IO-16")])
def test_space_library_model_linking_outside(case, tiny, tmp_path):
    """A library model whose model.safetensors links out of its folder: refused by the size check, with the
    same message whether the target exists, and without its size."""
    space_core = space_core_module()
    library = tmp_path / "library"
    model = copy_model(tiny["tasks"][1], library / "evil")
    secret = tmp_path / "outside" / "secret.safetensors"
    secret.parent.mkdir()
    (model / "model.safetensors").unlink()
    (model / "model.safetensors").symlink_to(secret)
    settings = space_core.Settings(library=library)
    ref = space_core.parse_library_name("evil", settings)
    messages = []
    for _ in with_then_without(secret):
        with pytest.raises(space_core.SpaceError, match="evil.*outside the model's folder") as info:
            space_core.check_total_size([ref], settings)
        assert str(len(SECRET)) not in str(info.value) and str(library) not in str(info.value)
        messages.append(str(info.value))
    assert messages[0] == messages[1]


# ----------------------------------------------------------------------------------------------------------------
# Malformed checkpoint files (defect 7, parser parts): one line, exit 2, no traceback
# ----------------------------------------------------------------------------------------------------------------


def raw_safetensors(header: object, data: bytes = b"\0" * 8) -> bytes:
    """A safetensors file from any header (a JSON value, or raw bytes) and data."""
    body = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(body)) + body + data


def entry(dtype="F32", shape=(2,), offsets=(0, 8)) -> dict:
    return {"dtype": dtype, "shape": list(shape), "data_offsets": list(offsets)}


MALFORMED = [
    pytest.param("config.json", b"[1, 2]", "config.json holds a JSON list, not an object", id="IO-17"),
    pytest.param("config.json", b"\xff\xfe{", "config.json is not valid JSON", id="IO-18"),
    pytest.param("model.safetensors", raw_safetensors([entry()]), "header (a JSON list, not an object)",
                 id="IO-19"),
    pytest.param("model.safetensors", raw_safetensors({"w": "F32"}), "key 'w' is corrupt (its header entry is a "
                 "JSON str", id="IO-20"),
    pytest.param("model.safetensors", raw_safetensors({"w": {"dtype": "F32", "shape": [2]}}),
                 "'data_offsets' must be [begin, end]", id="IO-21"),
    pytest.param("model.safetensors", raw_safetensors({"w": entry(dtype="Q7")}), "unsupported dtype 'Q7'",
                 id="IO-22"),
    pytest.param("model.safetensors", raw_safetensors({"w": entry(dtype=["F32"])}), "unsupported dtype ['F32']",
                 id="IO-23"),
    pytest.param("model.safetensors", raw_safetensors({"w": entry(shape=(200,), offsets=(0, 800))}),
                 "data_offsets [0, 800] beyond the 8 bytes", id="IO-24"),
    pytest.param("model.safetensors", raw_safetensors({"w": entry(), "v": entry(offsets=(4, 12))}, b"\0" * 12),
                 "keys 'w' and 'v' overlap", id="IO-25"),
    pytest.param("model.safetensors", raw_safetensors({"w": entry(shape=(-2,))}), "'shape' must be a list of "
                 "non-negative integers", id="IO-26"),
    pytest.param("model.safetensors", raw_safetensors(b"[" * 50_000), "corrupt safetensors header (nested too "
                 "deeply)", id="IO-27"),
    pytest.param("model.safetensors", raw_safetensors(b"\xff\xfe{}"), "corrupt safetensors header", id="IO-28"),
    pytest.param(INDEX, json.dumps({"weight_map": ["model-1.safetensors"]}).encode(), f"{INDEX} is not a valid "
                 "shard index: it needs \"weight_map\"", id="IO-29"),
    pytest.param(INDEX, json.dumps({"weight_map": {"w": 5}}).encode(), "weight_map['w'] is int, not a shard file "
                 "name", id="IO-30"),
    pytest.param(INDEX, b"[]", f"{INDEX} is not a valid shard index", id="IO-31"),
]


@pytest.mark.parametrize(("name", "content", "fragment"), MALFORMED)
def test_malformed_checkpoint_files(name, content, fragment, tiny, tmp_path, capsys):
    """`hf-tsv plan BASE BAD MODEL` with one malformed file in BAD: exit 2, one line naming the model."""
    bad = copy_model(tiny["tasks"][1], tmp_path / "bad")
    if name == INDEX:
        (bad / "model.safetensors").unlink()
    (bad / name).write_bytes(content)
    code, err = cli(capsys, "plan", tiny["base"], bad, tiny["tasks"][0])
    assert_one_line_error(code, err, "model 'bad'", fragment)
    with pytest.raises(hf_tsv.MergeInputError, match="model 'bad'"):
        CheckpointReader(bad, "bad")


# ----------------------------------------------------------------------------------------------------------------
# Task specs (defect 7): one clear error naming the spec file, the task index and the key, before heavy work
# ----------------------------------------------------------------------------------------------------------------


def _saved_dataset(folder: Path, label_feature) -> None:
    """Two 8x8 images with labels of the given datasets feature, saved with ``save_to_disk``."""
    import datasets
    import numpy as np
    from PIL import Image

    images = [Image.fromarray(np.full((8, 8, 3), v, dtype=np.uint8)) for v in (0, 255)]
    labels = ["cat", "dog"] if getattr(label_feature, "dtype", None) == "string" else [0, 1]
    feats = datasets.Features({"image": datasets.Image(), "label": label_feature})
    datasets.Dataset.from_dict({"image": images, "label": labels}, features=feats).save_to_disk(str(folder))


def _spec(task_fields: dict, **top) -> dict:
    return {"tasks": [{"name": "pets", "dataset": "disk:data", **task_fields}], **top}


SPECS = [
    pytest.param("string", _spec({"class_names": ["cat", "dog"], "label_column": "label"}),
                 "tasks.json: tasks[0] (task 'pets'): 'label_column' 'label' of dataset 'data' holds strings",
                 id="IO-32"),
    pytest.param("classlabel", _spec({"image_column": "label"}),
                 "tasks.json: tasks[0] (task 'pets'): 'image_column' 'label' is also the label column", id="IO-33"),
    pytest.param(None, _spec({"finetuned_accuracy": {"test": 0}}),
                 "tasks.json: tasks[0]: 'finetuned_accuracy' of split 'test' is 0", id="IO-34"),
    pytest.param(None, _spec({"finetuned_accuracy": {"test": "96.5"}}),
                 "tasks.json: tasks[0]: 'finetuned_accuracy' of split 'test' is '96.5'", id="IO-35"),
    pytest.param(None, _spec({"finetuned_accuracy": [96.5]}),
                 "tasks.json: tasks[0]: 'finetuned_accuracy' maps split names to percentages", id="IO-36"),
    pytest.param(None, _spec({"split": 5}), "tasks.json: tasks[0]: 'split' must be a split name", id="IO-37"),
    pytest.param(None, _spec({"max_examples": "10"}), "tasks.json: tasks[0]: 'max_examples' must be a positive",
                 id="IO-38"),
    pytest.param(None, _spec({"templates": ["a photo of {0} {1}"]}),
                 "tasks.json: tasks[0]: 'templates' must be a non-empty list of strings, each with '{}'", id="IO-39"),
    pytest.param(None, _spec({"templates": ["a {} {x}"]}), "template 'a {} {x}' cannot be filled", id="IO-40"),
    pytest.param(None, _spec({"class_names": "cat,dog"}), "'class_names' must be a non-empty list", id="IO-41"),
    pytest.param(None, _spec({}, text_model=7), "tasks.json: 'text_model' must be a string", id="IO-42"),
    pytest.param(None, b"\xff\xfe\x00", "tasks.json: cannot be read as UTF-8", id="IO-43"),
]


@pytest.mark.parametrize(("labels", "spec", "fragment"), SPECS)
def test_bad_task_specs(labels, spec, fragment, tiny, tmp_path, capsys, monkeypatch):
    """`hf-tsv eval MODEL --tasks tasks.json`: exit 2, one line; raised before heads, processor or model load."""
    import datasets

    import hf_tsv.evaluation.runner as runner

    if labels is not None:
        feature = datasets.Value("string") if labels == "string" else datasets.ClassLabel(names=["cat", "dog"])
        _saved_dataset(tmp_path / "data", feature)
    path = tmp_path / "tasks.json"
    path.write_bytes(spec if isinstance(spec, bytes) else json.dumps(spec).encode())

    def heavy(*args, **kwargs):
        raise AssertionError("heavy work started before the spec was checked")

    monkeypatch.setattr(runner, "build_heads", heavy)
    monkeypatch.setattr(runner, "_processor_for", heavy)
    capsys.readouterr()  # the progress bars of save_to_disk
    code, err = cli(capsys, "eval", tiny["base"], "--tasks", path, "--device", "cpu")
    assert_one_line_error(code, err, fragment)


@pytest.mark.parametrize("case", [pytest.param("yaml-int-key", id="IO-44")])
def test_yaml_spec_with_non_string_keys(case, tmp_path):
    """A YAML spec whose keys are numbers is an EvalInputError naming the key (it was a TypeError)."""
    from hf_tsv.evaluation import load_tasks_spec
    from hf_tsv.evaluation.heads import EvalInputError

    path = tmp_path / "tasks.yaml"
    path.write_text("tasks:\n  - name: a\n    dataset: ns/a\n    1: x\n    two: y\n")
    with pytest.raises(EvalInputError, match=r"tasks.yaml: tasks\[0\]: unknown key '1'"):
        load_tasks_spec(path)


# ----------------------------------------------------------------------------------------------------------------
# TSV-C folders (defect 11): tasks chosen by name first, the base's fingerprint required, edited tsv_c.json
# ----------------------------------------------------------------------------------------------------------------

TASK_NAMES = ["alpha", "beta", "0"]  # the task named "0" is at index 2


@pytest.fixture(scope="module")
def compressed(tiny, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tsvc")
    tasks = [copy_model(src, root / name) for src, name in zip(tiny["tasks"], TASK_NAMES)]
    hf_tsv.compress(tiny["base"], tasks, root / "c", device="cpu")
    return root / "c"


def edited(compressed: Path, tmp_path: Path, edit) -> Path:
    """A copy of the TSV-C folder with tsv_c.json changed by ``edit(index) -> index``."""
    folder = Path(shutil.copytree(compressed, tmp_path / "edited"))
    index = json.loads((folder / "tsv_c.json").read_text())
    (folder / "tsv_c.json").write_text(json.dumps(edit(index)))
    return folder


@pytest.mark.parametrize(("task", "index"), [pytest.param("0", 2, id="IO-45"), pytest.param("#0", 0, id="IO-46"),
                                             pytest.param("beta", 1, id="IO-47")])
def test_expand_chooses_tasks_by_name_first(task, index, compressed, tiny, tmp_path, capsys):
    """`expand --task 0` rebuilds the task *named* "0"; "#0" (or a number naming no task) is an index."""
    code, err = cli(capsys, "expand", compressed, "--task", task, "-o", tmp_path / "out", "--device", "cpu")
    assert code == 0, err
    report = json.loads((tmp_path / "out" / "merge_report.json").read_text())
    assert report["task"]["name"] == TASK_NAMES[index]


def _drop(key):
    def edit(index):
        index.pop(key)
        return index
    return edit


def _set(path, value):
    def edit(index):
        target = index
        for part in path[:-1]:
            target = target[part]
        target[path[-1]] = value
        return index
    return edit


def _first_matrix_rank(value):
    def edit(index):
        name = next(u["name"] for u in index["units"] if u["matrix"])
        index["ranks"][name] = value
        return index
    return edit


def _base_without_fingerprint(index):
    index["base"].pop("fingerprint")
    return index


def _duplicate_names(index):
    for task in index["tasks"][:2]:
        task["name"] = "dup"
    return index


TSVC_EDITS = [
    pytest.param(_base_without_fingerprint, "0", "'base' has no 'fingerprint'", id="IO-48"),
    pytest.param(lambda index: [index], "0", "it holds a JSON list, not an object", id="IO-49"),
    pytest.param(_drop("units"), "0", "'units' must be a non-empty list", id="IO-50"),
    pytest.param(_set(["units", 0, "keys"], "embeddings.class_embedding"), "0", "units[0] must be", id="IO-51"),
    pytest.param(_set(["num_tasks"], "3"), "0", "'num_tasks' is '3', not the number of entries in 'tasks' (3)",
                 id="IO-52"),
    pytest.param(_set(["tasks", 0], "alpha"), "0", "'tasks' must be a non-empty list of objects", id="IO-53"),
    pytest.param(_first_matrix_rank(-1), "0", "is -1, not a rank", id="IO-54"),
    pytest.param(_first_matrix_rank("4"), "0", "is '4', not a rank", id="IO-55"),
    pytest.param(_first_matrix_rank(1), "0", "are not u", id="IO-56"),
    pytest.param(_set(["output_names", "extra.key"], "extra.key"), "0", "'output_names' must map exactly those keys",
                 id="IO-57"),
    pytest.param(_set(["base_keys"], ["x"]), "0", "'base_keys' must be an object", id="IO-58"),
    pytest.param(lambda index: index, "nope", "task named 'nope'", id="IO-59"),
    pytest.param(lambda index: index, "7", "task index 7 is out of range", id="IO-60"),
    pytest.param(_duplicate_names, "dup", "several tasks are named 'dup' (#0, #1)", id="IO-61"),
]


@pytest.mark.parametrize(("edit", "task", "fragment"), TSVC_EDITS)
def test_edited_tsvc_index(edit, task, fragment, compressed, tmp_path, capsys):
    """`hf-tsv expand EDITED --task T -o OUT`: exit 2, one line; nothing written."""
    folder = edited(compressed, tmp_path, edit)
    code, err = cli(capsys, "expand", folder, "--task", task, "-o", tmp_path / "out", "--device", "cpu")
    assert_one_line_error(code, err, fragment)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("what", [pytest.param("index-link", id="IO-62"), pytest.param("not-json", id="IO-63"),
                                  pytest.param("other-base", id="IO-64"), pytest.param("config-link", id="IO-65")])
def test_tsvc_folder_files_and_base(what, compressed, tiny, tmp_path, capsys):
    """tsv_c.json or config.json linking out of the TSV-C folder, tsv_c.json not JSON, or a --base other than
    the one compressed against: exit 2, one line; the outside file is never opened."""
    folder = Path(shutil.copytree(compressed, tmp_path / "c"))
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.json").write_bytes(SECRET)
    extra, fragment = [], {"index-link": "tsv_c.json is a link that leads outside",
                           "not-json": "tsv_c.json is not valid JSON",
                           "other-base": "is not the checkpoint these factors were computed against",
                           "config-link": "config.json is a link that leads outside"}[what]
    if what.endswith("-link"):
        name = "tsv_c.json" if what == "index-link" else "config.json"
        (folder / name).unlink()
        (folder / name).symlink_to(outside / "secret.json")
    elif what == "not-json":
        (folder / "tsv_c.json").write_text("{not json")
    else:
        extra = ["--base", tiny["tasks"][0]]
    with opened_files() as paths:
        code, err = cli(capsys, "expand", folder, "--task", "0", "-o", tmp_path / "out", "--device", "cpu", *extra)
    assert_one_line_error(code, err, fragment)
    assert "TOPSECRET" not in err and not within(paths, outside)
    assert not (tmp_path / "out").exists()
