"""Property-based tests of the parsers that read what users and Hub repositories hand us: the safetensors header,
the shard index (with the files it names) and the task spec, on random and mutated inputs.

The only outcomes allowed: a correct read or an ``HFTSVError``. No other exception, no hang (each example has a
deadline), and no file opened outside the model's folder (seen through Python's audit hooks). Bounded: a few
hundred examples in all, well under 30 s together, so they run in the default suite.
"""

from __future__ import annotations

import json
import struct
from datetime import timedelta
from pathlib import Path

import pytest
import torch
from file_audit import opened_files, within
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hf_tsv.errors import HFTSVError
from hf_tsv.evaluation import load_tasks_spec
from hf_tsv.evaluation.tasks import TasksConfig
from hf_tsv.io.reader import CheckpointReader
from hf_tsv.io.safetensors_format import DTYPES, read_header, read_tensor

FUZZ = settings(max_examples=150, deadline=timedelta(seconds=3), database=None, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow])
SECRET = b"TOPSECRET-" * 50

# JSON values of any shape (what an edited or hostile file may hold)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


def safetensors_bytes(tensors: dict[str, torch.Tensor]) -> bytes:
    from safetensors.torch import save

    return save({k: v.contiguous() for k, v in tensors.items()}, metadata={"format": "pt"})


VALID = safetensors_bytes({"a": torch.arange(6, dtype=torch.float32).reshape(2, 3),
                           "b": torch.ones(4, dtype=torch.bfloat16), "c": torch.zeros(0, 5)})


@pytest.fixture(scope="module")
def place(tmp_path_factory) -> dict[str, Path]:
    """A model folder the examples overwrite, and beside it a folder that must never be read."""
    root = tmp_path_factory.mktemp("fuzz")
    model, outside = root / "model", root / "outside"
    model.mkdir()
    outside.mkdir()
    (outside / "secret.safetensors").write_bytes(SECRET)
    (outside / "valid.safetensors").write_bytes(VALID)
    return {"model": model, "outside": outside}


def clear(folder: Path) -> None:
    """Empty the model folder between examples (its entries are files and links)."""
    for entry in folder.iterdir():
        entry.unlink()


def check_read(path: Path, outside: Path) -> None:
    """Parse ``path``; a success must describe tensors that lie inside the file and read back whole."""
    with opened_files() as paths:
        try:
            infos = read_header(path, "model 'fuzz'")
        except HFTSVError:
            infos = None
    assert not within(paths, outside)
    if infos is None:
        return
    size = path.stat().st_size
    for info in infos.values():
        assert info.file == path and 8 <= info.offset and info.offset + info.nbytes <= size
        assert tuple(read_tensor(info).shape) == info.shape


# -- the safetensors header -------------------------------------------------------------------------------------


@FUZZ
@given(data=st.binary(max_size=300))
def test_random_bytes_as_safetensors(place, data):
    path = place["model"] / "random.safetensors"
    path.write_bytes(data)
    check_read(path, place["outside"])


MUTATIONS = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, len(VALID) - 1), st.integers(1, 255)),
    st.tuples(st.just("truncate"), st.integers(0, len(VALID) - 1), st.just(0)),
    st.tuples(st.just("length"), st.integers(0, 2**64 - 1), st.just(0)),
    st.tuples(st.just("insert"), st.integers(0, len(VALID)), st.integers(0, 255)),
)


def mutate(data: bytes, mutation: tuple[str, int, int]) -> bytes:
    """One mutation; positions are taken modulo the (possibly already shortened) length."""
    kind, where, value = mutation
    if kind in ("flip", "truncate", "insert") and not data:
        return data
    if kind in ("flip", "truncate"):
        where %= len(data)
    if kind == "flip":
        return data[:where] + bytes([data[where] ^ value]) + data[where + 1:]
    if kind == "truncate":
        return data[:where]
    if kind == "length":
        return struct.pack("<Q", where) + data[8:]
    return data[:where] + bytes([value]) + data[where:]


@FUZZ
@given(mutations=st.lists(MUTATIONS, min_size=1, max_size=3))
def test_mutated_safetensors(place, mutations):
    data = VALID
    for mutation in mutations:
        data = mutate(data, mutation)
    path = place["model"] / "mutated.safetensors"
    path.write_bytes(data)
    check_read(path, place["outside"])


ENTRY = st.fixed_dictionaries(
    {},
    optional={
        "dtype": st.sampled_from([*DTYPES, "F99", "", "f32"]) | JSON,
        "shape": st.lists(st.integers(-3, 6), max_size=3) | JSON,
        "data_offsets": st.lists(st.integers(-4, 80), min_size=0, max_size=3) | JSON,
    },
)


@FUZZ
@given(header=st.dictionaries(st.text(max_size=6), ENTRY | JSON, max_size=4), data_size=st.integers(0, 96))
def test_structured_random_headers(place, header, data_size):
    """Headers built from plausible and implausible entries: dtype, shape and offsets of any value."""
    body = json.dumps(header).encode()
    path = place["model"] / "structured.safetensors"
    path.write_bytes(struct.pack("<Q", len(body)) + body + b"\x01" * data_size)
    check_read(path, place["outside"])


# -- the shard index and the files it names ---------------------------------------------------------------------

SHARD_NAMES = st.sampled_from([
    "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors", "missing.safetensors",
    "link.safetensors", "../outside/secret.safetensors", "../outside/valid.safetensors", "sub/../x", "./x", "",
    "/", "a//b", "\x00", "a\\b", "x" * 300,
]) | st.text(max_size=20)


@FUZZ
@given(weight_map=st.dictionaries(st.text(max_size=6), SHARD_NAMES | JSON, max_size=5),
       absolute=st.booleans(), wrap=st.sampled_from(["object", "list", "bare", "no-map"]))
def test_random_shard_indexes(place, weight_map, absolute, wrap):
    """An index of random entries (names inside, outside by '..', absolute or through a link, or not names at
    all): a reader, or a MergeInputError; nothing outside the folder opened."""
    model, outside = place["model"], place["outside"]
    clear(model)
    (model / "config.json").write_text('{"model_type": "clip_vision_model"}')
    (model / "model-00001-of-00002.safetensors").write_bytes(VALID)
    (model / "model-00002-of-00002.safetensors").write_bytes(safetensors_bytes({"d": torch.ones(3)}))
    (model / "link.safetensors").symlink_to(outside / "valid.safetensors")
    if absolute and weight_map:
        weight_map[next(iter(weight_map))] = str(outside / "valid.safetensors")
    index = {"object": {"weight_map": weight_map}, "list": [weight_map], "bare": weight_map,
             "no-map": {"metadata": weight_map}}[wrap]
    (model / "model.safetensors.index.json").write_text(json.dumps(index))
    with opened_files() as paths:
        try:
            reader = CheckpointReader(model, "fuzz")
        except HFTSVError:
            reader = None
    assert not within(paths, outside)
    if reader is not None:
        assert all(Path(info.file).parent == model for info in reader.infos.values())


@FUZZ
@given(config=JSON, raw=st.none() | st.binary(max_size=40))
def test_random_config_json(place, config, raw):
    model = place["model"]
    clear(model)
    (model / "config.json").write_bytes(raw if raw is not None else json.dumps(config).encode())
    (model / "model.safetensors").write_bytes(VALID)
    try:
        reader = CheckpointReader(model, "fuzz")
    except HFTSVError:
        return
    assert isinstance(reader.config, dict) and set(reader.infos) == {"a", "b", "c"}


# -- the task spec ----------------------------------------------------------------------------------------------

VALID_SPEC = {
    "text_model": "openai/clip-vit-base-patch32", "templates": ["a photo of a {}."],
    "tasks": [{"name": "mnist", "dataset": "ylecun/mnist", "split": "test", "validation_split": "train[:200]",
               "class_names": ["0", "1"], "finetuned_accuracy": {"test": 99.1}, "max_examples": 10},
              {"name": "mine", "dataset": "imagefolder:data/mine", "head": "heads/mine.safetensors"}],
}
TASK_KEYS = sorted({k for task in VALID_SPEC["tasks"] for k in task} | {"config", "image_column", "label_column",
                                                                        "revision", "origin", "bogus"})


@st.composite
def mutated_specs(draw) -> object:
    """The valid spec with a few fields replaced by random JSON, removed, or added."""
    spec = json.loads(json.dumps(VALID_SPEC))
    for _ in range(draw(st.integers(1, 3))):
        tasks = spec.get("tasks")
        in_task = isinstance(tasks, list) and len(tasks) == 2 and all(isinstance(t, dict) for t in tasks)
        target = tasks[draw(st.integers(0, 1))] if in_task and draw(st.booleans()) else spec
        key = draw(st.sampled_from(sorted(target) + TASK_KEYS + ["tasks", "head_cache", "image_processor"]))
        if draw(st.integers(0, 4)) == 0:
            target.pop(key, None)
        else:
            target[key] = draw(JSON)
    return spec


@FUZZ
@given(spec=mutated_specs() | JSON, yaml=st.booleans())
def test_task_spec_loader(tmp_path_factory, spec, yaml):
    """Random and mutated task specs (JSON or YAML): a TasksConfig whose fields have their declared types, or an
    HFTSVError."""
    folder = tmp_path_factory.getbasetemp() / "fuzz-specs"
    folder.mkdir(exist_ok=True)
    path = folder / ("tasks.yaml" if yaml else "tasks.json")
    if yaml:
        import yaml as pyyaml

        path.write_text(pyyaml.safe_dump(spec))
    else:
        path.write_text(json.dumps(spec))
    try:
        config = load_tasks_spec(path)
    except HFTSVError:
        return
    assert isinstance(config, TasksConfig) and config.tasks
    for task in config.tasks:
        assert isinstance(task.name, str) and isinstance(task.dataset, str) and isinstance(task.split, str)
        assert all(isinstance(v, (int, float)) and 0 < v <= 100 for v in task.finetuned_accuracy.values())
        assert task.max_examples is None or (isinstance(task.max_examples, int) and task.max_examples > 0)
        assert task.templates is None or all(t.format("x") for t in task.templates)


@FUZZ
@given(text=st.binary(max_size=200), yaml=st.booleans())
def test_task_spec_random_bytes(tmp_path_factory, text, yaml):
    folder = tmp_path_factory.getbasetemp() / "fuzz-spec-bytes"
    folder.mkdir(exist_ok=True)
    path = folder / ("tasks.yml" if yaml else "tasks.json")
    path.write_bytes(text)
    try:
        assert isinstance(load_tasks_spec(path), TasksConfig)
    except HFTSVError:
        pass
