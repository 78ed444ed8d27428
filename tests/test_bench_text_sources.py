"""Tests of hf_tsv_bench.text_sources: the real-text tasks of the text benchmark suite.

Two halves.  The pipeline (parsing, de-duplication, labels, splits, errors) runs on small generated Debian-style
files in a temporary folder, so it is tested everywhere.  The real data (Debian's package index, wordnet-base,
fortunes) is checked when installed and skipped with the apt-get line when not.  The parsers and the file readers
are fuzzed with hypothesis: garbage gives records or an HFTSVError, never another exception.  About 15 s in all.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import re
import shutil
import subprocess
from datetime import timedelta

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hf_tsv.errors import HFTSVError
from hf_tsv_bench import text_sources as T
from hf_tsv_bench.sources import SourceUnavailable

FUZZ = settings(max_examples=30, deadline=timedelta(seconds=5), database=None, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

# --------------------------------------------------------------------------------------------------------------
# generated sources: 6 sections / interfaces, WordNet glosses in 6 lexicographer files, 6 fortune categories
# --------------------------------------------------------------------------------------------------------------

SECTIONS = ["admin", "games", "mail", "math", "sound", "video"]
INTERFACES = ["commandline", "daemon", "graphical", "text-mode", "web", "shell"]
LEXFILES = {"noun.animal": 5, "noun.artifact": 6, "noun.food": 13, "noun.person": 18, "noun.plant": 20,
            "noun.time": 28}
FORTUNE_FILES = ["art", "computers", "drugs", "education", "food", "kids"]
PER_CLASS = 40


def word(n: int) -> str:
    """A distinct lower-case word for every n (digits vanish in normalised text, so they cannot tell texts apart)."""
    letters = ""
    n += 26 * 26
    while n:
        n, r = divmod(n, 26)
        letters += chr(ord("a") + r)
    return letters


def packages_text() -> str:
    """A Packages file: per section/interface PER_CLASS packages, plus the cases the loader must handle."""
    stanzas = []
    for c, (section, interface) in enumerate(zip(SECTIONS, INTERFACES)):
        for i in range(PER_CLASS):
            tags = f"interface::{interface}, role::program"
            if interface == "graphical" and i % 2:
                tags = "interface::x11, interface::graphical, role::program"  # synonyms: still one class
            stanzas.append(f"Package: pkg-{section}-{i}\nVersion: 1.0\nSection: contrib/{section}\n"
                           f"Description: {word(1000 * c + i)} tool for {section} jobs\n"
                           f"Tag: {tags.replace(', role', ',' + chr(10) + ' role')}\n")
    stanzas += [
        # the same summary (up to case, digits and a parenthesised part) under two sections: ambiguous, dropped
        "Package: clash-a\nSection: games\nDescription: Clashing words here\nTag: interface::web\n",
        "Package: clash-b\nSection: mail\nDescription: clashing words HERE 2 (docs)\nTag: interface::web\n",
        # two interfaces: ambiguous for the interface task
        "Package: twoface\nSection: admin\nDescription: zzq two faced tool\nTag: interface::web, interface::daemon\n",
        # the package name in the summary, to be removed
        "Package: leakname\nSection: video\nDescription: leakname - player of moving pictures\n",
        "Package: shorty\nSection: games\nDescription: Transitional 2.0\nTag: interface::web\n",  # one word: dropped
        "Package: broken stanza\nDescription: a name with a space is skipped\n",
        "Section: games\nDescription: no package field\n",
        "Package: nodesc\nSection: games\n",
    ]
    return "\n".join(stanzas)


def wordnet_text() -> str:
    lines = ["  1 This software and database is being provided to you, the LICENSEE, by", "  2 Princeton University"]
    for c, (name, number) in enumerate(LEXFILES.items()):
        for i in range(PER_CLASS):
            offset = f"{10_000_000 + 1000 * c + i:08d}"
            lines.append(f"{offset} {number:02d} n 01 {word(i)} 0 000 | a {word(5000 + 1000 * c + i)} kind of "
                         f"{name.split('.')[1]} thing; \"an example {word(i)}\"")
    return "\n".join(lines) + "\n"


def fortune_text(category: str, c: int) -> str:
    quotes = [f"On {category}: {word(7000 + 1000 * c + i)} is what\n   {word(i)} says." for i in range(PER_CLASS)]
    quotes.append("x " * 150)  # longer than MAX_TEXT_CHARS: dropped
    return "\n%\n".join(quotes) + "\n%\n"


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """Generated sources in tmp_path, and the loader pointed at them (caches cleared before and after)."""
    apt, wordnet, fortunes = tmp_path / "lists", tmp_path / "wordnet", tmp_path / "fortunes"
    for folder in (apt, wordnet, fortunes):
        folder.mkdir()
    (apt / "deb.example.org_debian_dists_testing_main_binary-amd64_Packages").write_text(packages_text())
    (apt / "deb.example.org_debian_dists_testing_InRelease").write_text("Origin: Example\nSuite: testing\n")
    (wordnet / "data.noun").write_text(wordnet_text())
    for c, category in enumerate(FORTUNE_FILES):
        (fortunes / category).write_text(fortune_text(category, c))
    monkeypatch.setattr(T, "APT_LISTS_DIR", apt)
    monkeypatch.setattr(T, "WORDNET_DIR", wordnet)
    monkeypatch.setattr(T, "FORTUNES_DIR", fortunes)
    monkeypatch.setattr(T, "MIN_CLASS_ITEMS", 10)
    fortune_task = T._BY_NAME["fortune-category"]
    monkeypatch.setitem(T._BY_NAME, "fortune-category", T._TaskDef(
        fortune_task.name, fortune_task.source, fortune_task.kind,
        {c: fortune_task.classes[c] for c in FORTUNE_FILES}))
    T.clear_caches()
    yield {"apt": apt, "wordnet": wordnet, "fortunes": fortunes}
    T.clear_caches()


FAKE_TASKS = ["debian-section", "debian-interface", "wordnet-supersense", "fortune-category"]


def all_texts(task: T.TextTask) -> dict[str, list[str]]:
    return {name: list(getattr(task, name).texts) for name in ("train", "validation", "test")}


# --------------------------------------------------------------------------------------------------------------
# the registry
# --------------------------------------------------------------------------------------------------------------


def test_eight_tasks_with_distinct_label_sets_of_5_to_20_described_classes():
    assert len(T.TEXT_TASKS) == 8 and len(set(T.TEXT_TASKS)) == 8
    label_sets = set()
    for task in T._TASKS:
        assert 5 <= len(task.classes) <= 20, task.name
        assert all(d.strip() and len(d) <= 40 for d in task.classes.values()), task.name
        assert task.source in T._SOURCES
        label_sets.add(frozenset(task.classes))
    assert len(label_sets) == 8


# --------------------------------------------------------------------------------------------------------------
# the pipeline, on generated files
# --------------------------------------------------------------------------------------------------------------


def test_generated_sources_give_labelled_disjoint_capped_splits(fake):
    tasks = T.load_text_tasks(seed=0, tasks=FAKE_TASKS)
    assert list(tasks) == FAKE_TASKS
    section = tasks["debian-section"]
    assert section.class_names == tuple(SECTIONS)
    assert section.class_descriptions[section.class_names.index("games")] == "game"
    extra = {"debian-section": 2, "debian-interface": 1}  # twoface + leakname; the clash pair, both web: one kept
    for task in tasks.values():
        texts = all_texts(task)
        assert sum(map(len, texts.values())) == 6 * PER_CLASS + extra.get(task.name, 0), task.name
        norms = {name: {T.normalise_text(t) for t in split} for name, split in texts.items()}
        assert not norms["train"] & norms["validation"] and not norms["train"] & norms["test"]
        assert not norms["validation"] & norms["test"]
        for split in (task.train, task.validation, task.test):
            assert split.labels.dtype == np.int64 and len(split.labels) == len(split.texts) == len(split.keys)
            assert set(split.labels.tolist()) == set(range(len(task.class_names)))
            assert all(0 < len(t) <= T.MAX_TEXT_CHARS for t in split.texts)
    texts = [t for split in all_texts(section).values() for t in split]
    assert not any("lashing words" in t for t in texts)  # same normalised text, two labels: dropped
    assert "player of moving pictures" in texts  # the package name stripped from "leakname - player of ..."
    assert not any("leakname" in t for t in texts)
    assert not any(t.startswith("Transitional") for t in texts)
    interface = tasks["debian-interface"]
    keys = {k for split in (interface.train, interface.validation, interface.test) for k in split.keys}
    assert "apt:twoface" not in keys and "apt:pkg-mail-1" in keys  # graphical + x11 count as one interface
    wordnet = tasks["wordnet-supersense"]
    assert not any("an example" in t for s in all_texts(wordnet).values() for t in s)  # examples left out
    assert wordnet.class_names == tuple(LEXFILES)


def test_a_split_is_the_same_for_a_seed_and_differs_between_seeds(fake):
    first = T.load_text_tasks(seed=3, tasks=FAKE_TASKS)
    T.clear_caches()
    again = T.load_text_tasks(seed=3, tasks=FAKE_TASKS)
    other = T.load_text_tasks(seed=4, tasks=FAKE_TASKS)
    for name in FAKE_TASKS:
        assert all_texts(first[name]) == all_texts(again[name])
        assert np.array_equal(first[name].test.labels, again[name].test.labels)
        assert all_texts(first[name])["test"] != all_texts(other[name])["test"]


def fingerprint(tasks: dict[str, T.TextTask]) -> str:
    digest = hashlib.sha256()
    for name, task in tasks.items():
        digest.update(repr((name, task.class_names, task.class_descriptions)).encode())
        for split in (task.train, task.validation, task.test):
            digest.update("\x00".join(split.texts).encode() + split.labels.astype("<i8").tobytes())
    return digest.hexdigest()[:16]


def test_a_seed_gives_the_same_split_in_every_process(fake):
    """Pinned: the splits of the generated sources for seed 0.  It changes if anything process-dependent (Python's
    hash(), set order) or a numpy RNG change creeps in; change it only on purpose, and say so in the commit."""
    assert fingerprint(T.load_text_tasks(seed=0, tasks=FAKE_TASKS)) == "694705bf1e01535c"


def test_classes_are_capped_and_too_small_ones_left_out(fake, monkeypatch):
    monkeypatch.setattr(T, "_POOL", 6 * 20)  # 20 texts per class at most
    monkeypatch.setattr(T, "MIN_CLASS_ITEMS", PER_CLASS + 1)  # no class is big enough
    with pytest.raises(SourceUnavailable, match="only 0 classes"):
        T.load_text_tasks(tasks=["wordnet-supersense"])
    monkeypatch.setattr(T, "MIN_CLASS_ITEMS", 10)
    T.clear_caches()
    task = T.load_text_tasks(tasks=["wordnet-supersense"])["wordnet-supersense"]
    counts = sum(np.bincount(s.labels, minlength=6) for s in (task.train, task.validation, task.test))
    assert counts.tolist() == [20] * 6


def test_quick_splits_are_small(fake, monkeypatch):
    monkeypatch.setattr(T, "QUICK_SIZES", (30, 12, 18))
    task = T.load_text_tasks(seed=0, quick=True, tasks=["fortune-category"])["fortune-category"]
    assert (len(task.train), len(task.validation), len(task.test)) == (30, 12, 18)
    assert set(task.validation.labels.tolist()) == set(range(6))


# --------------------------------------------------------------------------------------------------------------
# bad input (rows TXD-xx)
# --------------------------------------------------------------------------------------------------------------


def _no_packages_index(paths):
    for entry in paths["apt"].iterdir():
        entry.unlink()


def _no_wordnet(paths):
    (paths["wordnet"] / "data.noun").unlink()


def _no_fortune_file(paths):
    (paths["fortunes"] / "food").unlink()


@pytest.mark.parametrize(
    ("damage", "task", "message"),
    [
        pytest.param(_no_packages_index, "debian-use", "install it with: apt-get update", id="TXD-01"),
        pytest.param(_no_wordnet, "wordnet-supersense", "install it with: apt-get install -y wordnet-base",
                     id="TXD-02"),
        pytest.param(_no_fortune_file, "fortune-category", "install it with: apt-get install -y fortunes fortunes-min",
                     id="TXD-03"),
    ],
)
def test_a_missing_source_names_the_apt_line(fake, damage, task, message):
    damage(fake)
    assert message in T.check_text_sources()[task]
    with pytest.raises(SourceUnavailable, match=re.escape(message)):
        T.load_text_tasks(tasks=[task])


def test_every_source_is_checked_before_any_file_is_parsed(fake, monkeypatch):
    _no_fortune_file(fake)

    def must_not_parse(task):
        raise AssertionError(f"parsed {task.name} before finding the missing fortunes")

    monkeypatch.setattr(T, "_candidates", must_not_parse)
    with pytest.raises(SourceUnavailable, match="fortunes"):
        T.load_text_tasks()


@pytest.mark.parametrize("tasks", [pytest.param(["debian-section", "no-such-task"], id="TXD-04")])
def test_an_unknown_task_name_is_refused_before_anything_is_read(fake, monkeypatch, tasks):
    monkeypatch.setattr(T, "_require", lambda source: pytest.fail("read a source for an unknown task"))
    with pytest.raises(HFTSVError, match="'no-such-task'.*the tasks are debian-section, debian-use"):
        T.load_text_tasks(tasks=tasks)


def _can_read_lz4() -> bool:
    return T.APT_HELPER.is_file() or shutil.which("apt-helper") is not None or _has_module("lz4")


def _has_module(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        pytest.param("Packages.lz4", b"\x04\x22\x4d\x18 not really lz4", "cannot be read", id="TXD-05"),
        pytest.param("Packages.gz", b"\x1f\x8b\x08\x00 truncated gzip", "cannot be read", id="TXD-06"),
        pytest.param("Packages", b"Origin: Foreign\nLabel: not a Packages file\n\nPackage: a\n", "only 0 classes",
                     id="TXD-07"),
    ],
)
def test_a_damaged_or_foreign_packages_file_says_refresh_the_index(fake, name, content, message):
    if name.endswith(".lz4") and not _can_read_lz4():
        pytest.skip("neither apt-helper nor Python's lz4 is here to read an lz4 file")
    _no_packages_index(fake)
    (fake["apt"] / f"deb.example.org_debian_dists_testing_main_binary-amd64_{name}").write_bytes(content)
    with pytest.raises(SourceUnavailable, match=f"{message}.*apt-get update"):
        T.load_text_tasks(tasks=["debian-field"])


# --------------------------------------------------------------------------------------------------------------
# fuzzing: parsers and readers on garbage
# --------------------------------------------------------------------------------------------------------------

VALID_PACKAGES = packages_text()[:3000]
VALID_WORDNET = wordnet_text()[:3000]


def mutate(data: st.DataObject, text: str) -> str:
    """``text`` cut, with a random slice replaced by random text."""
    cut = data.draw(st.integers(0, len(text)))
    start = data.draw(st.integers(0, cut))
    return text[:start] + data.draw(st.text(max_size=40)) + text[start:cut]


@FUZZ
@given(data=st.data())
def test_parsers_return_records_on_any_text(data):
    for parse, valid in ((T.parse_packages, VALID_PACKAGES), (T.parse_wordnet_data, VALID_WORDNET),
                         (T.parse_fortunes, fortune_text("art", 0))):
        text = data.draw(st.one_of(st.text(max_size=300), st.just(mutate(data, valid))))
        records = parse(text)
        assert isinstance(records, list)
    for pkg in T.parse_packages(mutate(data, VALID_PACKAGES)):
        assert pkg.name and " " not in pkg.name and pkg.summary and all("::" in t for t in pkg.tags)
    for gloss in T.parse_wordnet_data(mutate(data, VALID_WORDNET)):
        assert gloss.offset.isdigit() and gloss.gloss and isinstance(gloss.lexfile, int)


@FUZZ
@given(data=st.data())
def test_readers_raise_only_hftsv_errors_on_damaged_files(fake, data):
    suffix = data.draw(st.sampled_from(["", ".gz", ".lz4"]))
    raw = packages_text().encode()
    if suffix == ".gz":
        raw = gzip.compress(raw)
    elif suffix == ".lz4":
        lz4 = shutil.which("lz4")
        raw = subprocess.run([lz4, "-c", "-q"], input=raw, capture_output=True, check=True).stdout if lz4 else b""
    cut = data.draw(st.integers(0, len(raw)))
    damaged = raw[:cut] + data.draw(st.binary(max_size=64))
    _no_packages_index(fake)
    (fake["apt"] / f"deb.example.org_debian_dists_testing_main_binary-amd64_Packages{suffix}").write_bytes(damaged)
    (fake["wordnet"] / "data.noun").write_bytes(mutate(data, wordnet_text()).encode("utf-8", "surrogatepass"))
    T.clear_caches()
    for task in ("debian-section", "wordnet-supersense"):
        try:
            loaded = T.load_text_tasks(tasks=[task])[task]
        except HFTSVError:
            continue
        assert len(loaded.class_names) >= T.MIN_CLASSES


# --------------------------------------------------------------------------------------------------------------
# the real data (skipped with the apt-get line when not installed)
# --------------------------------------------------------------------------------------------------------------


def _skip_unless_installed() -> None:
    problems = [p for p in T.check_text_sources().values() if p is not None]
    if problems:
        pytest.skip("; ".join(dict.fromkeys(problems)))


@pytest.fixture(scope="module")
def real():
    _skip_unless_installed()
    T.clear_caches()
    return {"full": T.load_text_tasks(seed=0), "quick": T.load_text_tasks(seed=0, quick=True),
            "quick1": T.load_text_tasks(seed=1, quick=True)}


def test_real_tasks_have_5_to_20_classes_disjoint_capped_splits(real):
    for name, task in real["full"].items():
        assert 5 <= len(task.class_names) <= 20, name
        assert len(task.class_descriptions) == len(task.class_names)
        assert len(task.train) <= 2000 and len(task.validation) <= 400 and len(task.test) <= 800, name
        assert len(task.train) >= 400, name
        norms = [{T.normalise_text(t) for t in s.texts} for s in (task.train, task.validation, task.test)]
        assert sum(map(len, norms)) == len(task.train) + len(task.validation) + len(task.test), name
        cap = math.ceil(T._POOL / len(task.class_names))
        counts = sum(np.bincount(s.labels, minlength=len(task.class_names))
                     for s in (task.train, task.validation, task.test))
        assert counts.max() <= cap and counts.min() >= T.MIN_CLASS_ITEMS * 0.5, (name, counts)
        for split in (task.train, task.validation, task.test):
            assert set(split.labels.tolist()) == set(range(len(task.class_names))), name
            assert all(0 < len(t) <= T.MAX_TEXT_CHARS for t in split.texts), name
            for key, text in zip(split.keys, split.texts):
                if key.startswith("apt:"):
                    assert key[4:].lower() not in re.findall(r"[\w.+-]+", text.lower()), (key, text)


def test_real_quick_splits_are_small_and_seeds_differ(real):
    assert list(real["quick"]) == list(T.TEXT_TASKS)
    for name, task in real["quick"].items():
        assert (len(task.train), len(task.validation), len(task.test)) == T.QUICK_SIZES, name
        assert task.test.texts != real["quick1"][name].test.texts, name


def test_provenance_records_versions_files_and_counts(real):
    info = T.text_sources_info()
    assert info["sources"]["wordnet-base"]["packages"]["wordnet-base"]
    assert info["sources"]["fortunes"]["packages"]["fortunes"]
    for source in info["sources"].values():
        assert source["problem"] is None and source["files"]
        assert all(re.fullmatch(r"[0-9a-f]{64}", digest) for digest in source["files"].values())
    assert info["sources"]["apt-index"]["release"].get("suite")
    for name, task in real["full"].items():
        counts = info["tasks"][name]
        assert counts["classes"] == len(task.class_names)
        assert counts["pool"] >= len(task.train) + len(task.validation) + len(task.test)
        assert max(counts["pool_per_class"].values()) <= math.ceil(T._POOL / len(task.class_names))
        assert list(counts["pool_per_class"]) == list(task.class_names)


def test_real_loads_are_deterministic(real):
    T.clear_caches()  # parse the files again: one task of each source
    again = T.load_text_tasks(seed=0, quick=True, tasks=["debian-field", "wordnet-supersense", "fortune-category"])
    for name in again:
        task = real["quick"][name]
        assert all_texts(task) == all_texts(again[name]), name
        assert np.array_equal(task.train.labels, again[name].train.labels)
