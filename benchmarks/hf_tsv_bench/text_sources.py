"""Real English text that installs offline, for the text benchmark suite (8 classification tasks).

Three Debian sources, read where apt and dpkg put them; nothing is downloaded at run time and nothing is written:

* **Debian's package index** (``apt-get update``; ``/var/lib/apt/lists/*_dists_<suite>_main_binary-<arch>_Packages``,
  lz4-compressed by default): about 63,000 stanzas, each with a one-line English summary (``Description``), a
  ``Section`` and debtags (``Tag: use::editing, works-with::text, ...``).  Six tasks: the section and five debtags
  facets.  The package's own name is removed from its summary.
* **WordNet 3.0 glosses** (``wordnet-base``: ``/usr/share/wordnet/data.noun``): the definition of a noun synset ->
  its lexicographer file ("supersense": noun.animal, noun.artifact, ...).
* **Quotations** (``fortunes``: ``/usr/share/games/fortunes/<category>``): a short quotation -> the file it is in.

The 8 tasks (``TEXT_TASKS``) and their classes are fixed lists (``_TASKS``); a class with fewer than
``MIN_CLASS_ITEMS`` texts after de-duplication is left out (and listed by ``text_sources_info()``).  An item is used
only when its label is unambiguous: a package with exactly one value of the task's debtags facet (``interface::x11``
counts as ``interface::graphical``), a synset's one lexicographer file, a quotation found in one category only.

Every text is whitespace-collapsed and at most ``MAX_TEXT_CHARS`` characters (cut at a word boundary; quotations
longer than that are dropped instead).  Near-duplicates are removed before splitting: texts with the same
*normalised* form (lower case, no parenthesised part, letters only) count as one, and one whose copies carry
different labels is dropped altogether, so no text is shared between a task's splits.  Each class keeps at most
``ceil(3200 / classes)`` texts (a seed-independent choice, by a CRC of the normalised text); then a seeded split,
stratified by class (60/15/25 %, ``sources.SPLIT_FRACTIONS``), capped per split at ``FULL_SIZES`` (2,000 / 400 / 800)
or, with ``quick=True``, at ``QUICK_SIZES`` (150 / 60 / 100), class proportions kept.  The same seed gives the same
texts in the same order on every run (no use of Python's ``hash()``).

A missing source raises :class:`~hf_tsv_bench.sources.SourceUnavailable` whose message holds the apt-get line that
installs it; ``check_text_sources()`` reports every task without raising.

Example:
    >>> tasks = load_text_tasks(seed=0, quick=True, tasks=["fortune-category"])  # doctest: +SKIP
    >>> task = tasks["fortune-category"]; task.class_names[:3], len(task.train.texts)  # doctest: +SKIP
    (('art', 'computers', 'drugs'), 150)
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import importlib.util
import lzma
import math
import re
import shutil
import subprocess
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hf_tsv.errors import HFTSVError

from .sources import SourceUnavailable, _rng, _stable_cap, _stratified_split, _stratified_take

__all__ = [
    "TextSplit",
    "TextTask",
    "TEXT_TASKS",
    "FULL_SIZES",
    "QUICK_SIZES",
    "MAX_TEXT_CHARS",
    "MIN_CLASS_ITEMS",
    "DebPackage",
    "WordNetGloss",
    "load_text_tasks",
    "text_sources_info",
    "check_text_sources",
    "parse_packages",
    "parse_wordnet_data",
    "parse_fortunes",
    "normalise_text",
]

# Where Debian puts the data.  Read at call time, so a test can point them elsewhere.
APT_LISTS_DIR = Path("/var/lib/apt/lists")
APT_HELPER = Path("/usr/lib/apt/apt-helper")
WORDNET_DIR = Path("/usr/share/wordnet")
FORTUNES_DIR = Path("/usr/share/games/fortunes")

MAX_TEXT_CHARS = 200
MIN_CLASS_ITEMS = 25
MIN_CLASSES = 5
FULL_SIZES = (2000, 400, 800)  # train / validation / test, at most
QUICK_SIZES = (150, 60, 100)
_POOL = 3200  # texts per task before the split, at most (balanced over the classes)
_MAX_INDEX_BYTES = 1 << 30  # a decompressed Packages file larger than this is not an apt index

# source id -> (what it is, the line that installs it, the Debian packages whose versions are recorded)
_SOURCES: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "apt-index": ("Debian's package index (/var/lib/apt/lists)", "apt-get update", ()),
    "wordnet-base": ("WordNet 3.0 (/usr/share/wordnet)", "apt-get install -y wordnet-base", ("wordnet-base",)),
    "fortunes": (
        "fortune quotations (/usr/share/games/fortunes)",
        "apt-get install -y fortunes fortunes-min",
        ("fortunes", "fortunes-min"),
    ),
}


# --------------------------------------------------------------------------------------------------------------
# public data classes
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TextSplit:
    """Texts with integer labels in ``[0, num_classes)``; ``keys`` names where each text came from
    ("apt:vim", "wordnet:02084071", "fortune:food#12"), for bookkeeping."""

    texts: tuple[str, ...]
    labels: np.ndarray
    keys: tuple[str, ...] = field(default=(), compare=False, repr=False)

    def __len__(self) -> int:
        return len(self.texts)


@dataclass(frozen=True)
class TextTask:
    """One text classification task: short label ids, a plain-English phrase per class, and its three splits."""

    name: str
    class_names: tuple[str, ...]
    class_descriptions: tuple[str, ...]
    train: TextSplit
    validation: TextSplit
    test: TextSplit
    source: str


@dataclass(frozen=True)
class DebPackage:
    """One stanza of a Packages file: name, section (without "contrib/"), one-line summary, debtags."""

    name: str
    section: str
    summary: str
    tags: tuple[str, ...]


@dataclass(frozen=True)
class WordNetGloss:
    """One synset of a WordNet data file: offset, lexicographer file number, definition (examples left out)."""

    offset: str
    lexfile: int
    gloss: str


@dataclass(frozen=True)
class _TaskDef:
    name: str
    source: str  # a key of _SOURCES
    kind: str  # "section", "facet", "wordnet", "fortune"
    classes: dict[str, str]  # label id -> plain-English description, in class order
    facet: str = ""  # debtags facet for kind "facet"
    synonyms: dict[str, str] = field(default_factory=dict)  # facet value -> the class it counts as


_TASKS: tuple[_TaskDef, ...] = (
    _TaskDef(
        "debian-section",
        "apt-index",
        "section",
        {
            "admin": "system administration",
            "database": "database",
            "editors": "text editor",
            "electronics": "electronics",
            "fonts": "font",
            "games": "game",
            "graphics": "graphics",
            "hamradio": "amateur radio",
            "mail": "email",
            "math": "mathematics",
            "net": "networking",
            "science": "science",
            "sound": "sound and music",
            "text": "text processing",
            "video": "video",
            "web": "web",
        },
    ),
    _TaskDef(
        "debian-use",
        "apt-index",
        "facet",
        {
            "gameplaying": "game playing",
            "converting": "file conversion",
            "checking": "checking and validation",
            "editing": "editing",
            "monitor": "monitoring",
            "configuring": "configuration",
            "viewing": "viewing",
            "playing": "media playback",
            "searching": "searching",
            "downloading": "downloading",
            "login": "login and authentication",
            "timekeeping": "time keeping",
            "organizing": "organizing",
            "storing": "data storage",
            "scanning": "scanning",
            "chatting": "chatting",
            "compressing": "compression",
            "typesetting": "typesetting",
        },
        facet="use",
    ),
    _TaskDef(
        "debian-works-with",
        "apt-index",
        "facet",
        {
            "text": "plain text",
            "audio": "audio",
            "mail": "email messages",
            "db": "databases",
            "file": "files",
            "software:source": "source code",
            "network-traffic": "network traffic",
            "software:running": "running programs",
            "archive": "archives",
            "dictionary": "dictionaries",
            "software:package": "software packages",
            "image": "images",
            "video": "video",
            "logfile": "log files",
            "semantic-data": "semantic data",
            "font": "fonts",
            "pim": "personal information",
            "3dmodel": "3D models",
        },
        facet="works-with",
    ),
    _TaskDef(
        "debian-implemented-in",
        "apt-index",
        "facet",
        {
            "perl": "Perl",
            "c": "C",
            "c++": "C++",
            "python": "Python",
            "lisp": "Lisp",
            "java": "Java",
            "ocaml": "OCaml",
            "shell": "shell script",
            "r": "R",
            "objc": "Objective-C",
            "ruby": "Ruby",
            "php": "PHP",
            "haskell": "Haskell",
            "ecmascript": "JavaScript",
        },
        facet="implemented-in",
    ),
    _TaskDef(
        "debian-field",
        "apt-index",
        "facet",
        {
            "mathematics": "mathematics",
            "finance": "finance",
            "geography": "geography",
            "statistics": "statistics",
            "linguistics": "linguistics",
            "electronics": "electronics",
            "arts": "the arts",
            "chemistry": "chemistry",
            "astronomy": "astronomy",
            "physics": "physics",
            "medicine": "medicine",
            "biology": "biology",
        },
        facet="field",
    ),
    _TaskDef(
        "debian-interface",
        "apt-index",
        "facet",
        {
            "graphical": "graphical desktop",
            "commandline": "command-line",
            "daemon": "background service",
            "text-mode": "full-screen text-mode",
            "web": "web-based",
            "shell": "interactive shell",
        },
        facet="interface",
        synonyms={"x11": "graphical"},
    ),
    _TaskDef(
        "wordnet-supersense",
        "wordnet-base",
        "wordnet",
        {
            "noun.act": "action",
            "noun.animal": "animal",
            "noun.artifact": "man-made object",
            "noun.body": "body part",
            "noun.cognition": "mental process or knowledge",
            "noun.communication": "communication",
            "noun.event": "event",
            "noun.feeling": "feeling",
            "noun.food": "food",
            "noun.group": "group",
            "noun.location": "place",
            "noun.person": "person",
            "noun.plant": "plant",
            "noun.possession": "possession",
            "noun.quantity": "quantity or unit",
            "noun.state": "state or condition",
            "noun.substance": "substance",
            "noun.time": "time period",
        },
    ),
    _TaskDef(
        "fortune-category",
        "fortunes",
        "fortune",
        {
            "art": "art",
            "computers": "computers",
            "drugs": "drugs",
            "education": "education",
            "food": "food",
            "kids": "children",
            "law": "law",
            "love": "love",
            "medicine": "medicine",
            "men-women": "men and women",
            "pets": "pets",
            "politics": "politics",
            "science": "science",
            "sports": "sports",
            "work": "work",
        },
    ),
)
_BY_NAME = {t.name: t for t in _TASKS}
TEXT_TASKS: tuple[str, ...] = tuple(t.name for t in _TASKS)

# WordNet's lexicographer files of nouns, by number (lexnames(5WN)).
_NOUN_LEXFILES = (
    "noun.Tops noun.act noun.animal noun.artifact noun.attribute noun.body noun.cognition noun.communication "
    "noun.event noun.feeling noun.food noun.group noun.location noun.motive noun.object noun.person "
    "noun.phenomenon noun.plant noun.possession noun.process noun.quantity noun.relation noun.shape noun.state "
    "noun.substance noun.time"
).split()
_FIRST_NOUN_LEXFILE = 3


# --------------------------------------------------------------------------------------------------------------
# text helpers
# --------------------------------------------------------------------------------------------------------------


def normalise_text(text: str) -> str:
    """The form two texts must share to count as near-duplicates: lower case, no parenthesised part, letters only.

    >>> normalise_text("Python 3 module for X (documentation)")
    'python module for x'
    """
    text = re.sub(r"\([^()]*\)", " ", text.lower())
    return " ".join(re.findall(r"[^\W\d_]+", text))


def _squash(text: str) -> str:
    return " ".join(text.split())


def _shorten(text: str, limit: int = MAX_TEXT_CHARS) -> str:
    """``text`` cut at the last word boundary within ``limit`` characters.

    >>> _shorten("one two three", 9)
    'one two'
    """
    if len(text) <= limit:
        return text
    cut = text[: limit + 1].rsplit(" ", 1)[0] if " " in text[: limit + 1] else text[:limit]
    return cut.rstrip(" ,;:-")


def _strip_name(summary: str, name: str) -> str:
    """The summary without the package's own name (which would often give the label away).

    >>> _strip_name("vim-tiny - Vi IMproved, compact version", "vim-tiny")
    'Vi IMproved, compact version'
    """
    pattern = r"(?<![\w.+-])" + re.escape(name) + r"(?![\w+-])"
    out = re.sub(pattern, " ", summary, flags=re.IGNORECASE)
    return _squash(out).strip(" -:,;")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------------------------
# parsers (pure: text in, records out; a malformed record is skipped, never an exception)
# --------------------------------------------------------------------------------------------------------------


def parse_packages(text: str) -> list[DebPackage]:
    """The stanzas of a Debian Packages file that have a name and a summary; other stanzas are skipped.

    >>> parse_packages("Package: a\\nSection: contrib/games\\nDescription: A game\\nTag: use::gameplaying,\\n x::y\\n")
    [DebPackage(name='a', section='games', summary='A game', tags=('use::gameplaying', 'x::y'))]
    """
    out: list[DebPackage] = []
    fields: dict[str, str] = {}
    last = ""

    def flush() -> None:
        name, summary = fields.get("Package", "").strip(), _squash(fields.get("Description", ""))
        if name and summary and " " not in name:
            tags = tuple(t for t in (x.strip() for x in fields.get("Tag", "").split(",")) if "::" in t)
            section = fields.get("Section", "").strip().rsplit("/", 1)[-1]
            out.append(DebPackage(name, section, summary, tags))

    for line in text.split("\n"):
        if not line.strip():
            if fields:
                flush()
            fields, last = {}, ""
        elif line[0] in " \t":
            if last == "Tag":  # only the tags are read past their first line; a summary is one line
                fields["Tag"] += " " + line.strip()
        else:
            key, sep, value = line.partition(":")
            last = key if sep else ""
            if sep and key in ("Package", "Section", "Description", "Tag"):
                fields[key] = value.strip()
    if fields:
        flush()
    return out


def parse_wordnet_data(text: str) -> list[WordNetGloss]:
    """The synsets of a WordNet ``data.*`` file: offset, lexicographer file, definition (the gloss up to its first
    quoted example); the licence header and malformed lines are skipped.

    >>> parse_wordnet_data('02084071 05 n 01 dog 0 000 | a domestic canine; "the dog barked"\\n')
    [WordNetGloss(offset='02084071', lexfile=5, gloss='a domestic canine')]
    """
    out: list[WordNetGloss] = []
    for line in text.split("\n"):
        head, sep, gloss = line.partition(" | ")
        parts = head.split(" ", 3)
        if not sep or len(parts) < 3 or not (parts[0].isascii() and parts[0].isdigit()):
            continue
        if not (parts[1].isascii() and parts[1].isdigit()):
            continue
        definition = _squash(re.split(r';\s*"', gloss, maxsplit=1)[0]).strip(" ;")
        if definition:
            out.append(WordNetGloss(parts[0], int(parts[1]), definition))
    return out


def parse_fortunes(text: str) -> list[str]:
    """The quotations of a fortune file (separated by lines holding only "%"), whitespace-collapsed; empty entries
    and entries with undecodable bytes (U+FFFD) are skipped.

    >>> parse_fortunes("Eat well.\\n%\\nSleep\\n   well.\\n%\\n")
    ['Eat well.', 'Sleep well.']
    """
    entries = re.split(r"^%[ \t\r]*$", text, flags=re.MULTILINE)
    return [q for q in (_squash(e) for e in entries) if q and "\ufffd" not in q]


# --------------------------------------------------------------------------------------------------------------
# reading the files
# --------------------------------------------------------------------------------------------------------------


def _packages_file() -> Path | None:
    """The Packages file of the main suite (e.g. bookworm, not bookworm-updates), first by name; None if none."""
    found = [
        p
        for p in sorted(APT_LISTS_DIR.glob("*_dists_*_main_binary-*_Packages*"))
        if p.is_file() and p.suffix in ("", ".lz4", ".gz", ".xz")
    ]
    if not found:
        return None

    def suite(p: Path) -> str:
        return p.name.split("_dists_", 1)[1].split("_", 1)[0]

    return sorted(found, key=lambda p: ("-" in suite(p), p.name))[0]


def _release_file(packages: Path) -> Path:
    return packages.with_name(packages.name.split("_main_binary-", 1)[0] + "_InRelease")


def _decompress_lz4(path: Path) -> bytes:
    if importlib.util.find_spec("lz4") is not None:
        import lz4.frame

        return lz4.frame.decompress(path.read_bytes())
    helper = APT_HELPER if APT_HELPER.is_file() else shutil.which("apt-helper")
    if helper is None:
        raise SourceUnavailable(
            f"{path} is lz4-compressed and neither Python's lz4 nor apt's apt-helper is here to read it "
            "(pip install lz4)"
        )
    done = subprocess.run([str(helper), "cat-file", str(path)], capture_output=True, timeout=300, check=False)
    if done.returncode != 0:
        why = done.stderr.decode("utf-8", "replace").strip().splitlines()
        raise HFTSVError(f"apt-helper cat-file failed ({why[-1] if why else f'exit {done.returncode}'})")
    return done.stdout


def _read_packages_bytes(path: Path) -> bytes:
    """The decompressed bytes of a Packages file; a damaged file raises SourceUnavailable (re-run apt-get update)."""
    try:
        if path.suffix == ".lz4":
            raw = _decompress_lz4(path)
        elif path.suffix == ".gz":
            with gzip.open(path, "rb") as fh:
                raw = fh.read(_MAX_INDEX_BYTES + 1)
        elif path.suffix == ".xz":
            with lzma.open(path, "rb") as fh:
                raw = fh.read(_MAX_INDEX_BYTES + 1)
        else:
            raw = path.read_bytes()
    except SourceUnavailable:
        raise
    except (OSError, EOFError, RuntimeError, ValueError, lzma.LZMAError, HFTSVError, subprocess.SubprocessError) as exc:
        raise SourceUnavailable(
            f"Debian's package index {path} cannot be read ({exc}); refresh it with: apt-get update"
        ) from exc
    if len(raw) > _MAX_INDEX_BYTES:
        raise SourceUnavailable(f"{path} decompresses to over 1 GiB: not a Packages file; refresh it: apt-get update")
    return raw


@functools.lru_cache(maxsize=2)
def _packages(path: str, stamp: tuple[int, int]) -> tuple[DebPackage, ...]:
    del stamp  # part of the cache key only: a changed file is read again
    return tuple(parse_packages(_read_packages_bytes(Path(path)).decode("utf-8", "replace")))


def _stamp(path: Path) -> tuple[int, int]:
    st = path.stat()
    return (st.st_mtime_ns, st.st_size)


def _source_files(source: str) -> list[Path]:
    """The files a source reads (that exist); [] when the source is not installed."""
    if source == "apt-index":
        found = _packages_file()
        return [] if found is None else [found]
    if source == "wordnet-base":
        path = WORDNET_DIR / "data.noun"
        return [path] if path.is_file() else []
    task = _BY_NAME["fortune-category"]
    paths = [FORTUNES_DIR / name for name in task.classes]
    return paths if all(p.is_file() for p in paths) else []


def _source_problem(source: str) -> str | None:
    if _source_files(source):
        return None
    what, install, _packages_ = _SOURCES[source]
    if source == "apt-index":
        where = f"no *_main_binary-*_Packages* file in {APT_LISTS_DIR}"
    elif source == "wordnet-base":
        where = f"{WORDNET_DIR / 'data.noun'} not found"
    else:
        missing = [n for n in _BY_NAME["fortune-category"].classes if not (FORTUNES_DIR / n).is_file()]
        where = f"{', '.join(str(FORTUNES_DIR / n) for n in missing[:3])}{' ...' if len(missing) > 3 else ''} not found"
    return f"{what}: {where}; install it with: {install}"


def _require(source: str) -> list[Path]:
    problem = _source_problem(source)
    if problem is not None:
        raise SourceUnavailable(problem)
    return _source_files(source)


# --------------------------------------------------------------------------------------------------------------
# task catalogues: (key, text, class id) of every candidate item, before de-duplication
# --------------------------------------------------------------------------------------------------------------


def _facet_values(tags: Iterable[str], facet: str, synonyms: dict[str, str]) -> set[str]:
    prefix = facet + "::"
    values = {t[len(prefix) :] for t in tags if t.startswith(prefix)}
    return {synonyms.get(v, v) for v in values}


def _debian_items(task: _TaskDef) -> list[tuple[str, str, str]]:
    path = _require("apt-index")[0]
    items = []
    for pkg in _packages(str(path), _stamp(path)):
        if task.kind == "section":
            label = pkg.section
        else:
            values = _facet_values(pkg.tags, task.facet, task.synonyms)
            label = values.pop() if len(values) == 1 else ""
        if label in task.classes:
            items.append((f"apt:{pkg.name}", _shorten(_strip_name(pkg.summary, pkg.name)), label))
    return items


@functools.lru_cache(maxsize=2)
def _wordnet(path: str, stamp: tuple[int, int]) -> tuple[WordNetGloss, ...]:
    del stamp
    return tuple(parse_wordnet_data(Path(path).read_bytes().decode("utf-8", "replace")))


def _wordnet_items(task: _TaskDef) -> list[tuple[str, str, str]]:
    path = _require("wordnet-base")[0]
    items = []
    for synset in _wordnet(str(path), _stamp(path)):
        number = synset.lexfile - _FIRST_NOUN_LEXFILE
        label = _NOUN_LEXFILES[number] if 0 <= number < len(_NOUN_LEXFILES) else ""
        if label in task.classes:
            items.append((f"wordnet:{synset.offset}", _shorten(synset.gloss), label))
    return items


def _fortune_items(task: _TaskDef) -> list[tuple[str, str, str]]:
    paths = _require("fortunes")
    items = []
    for path in paths:
        quotes = parse_fortunes(path.read_bytes().decode("utf-8", "replace"))
        short = ((i, q) for i, q in enumerate(quotes) if len(q) <= MAX_TEXT_CHARS)  # long ones are dropped, not cut
        items.extend((f"fortune:{path.name}#{i}", q, path.name) for i, q in short)
    return items


def _candidates(task: _TaskDef) -> list[tuple[str, str, str]]:
    if task.kind == "wordnet":
        return _wordnet_items(task)
    if task.kind == "fortune":
        return _fortune_items(task)
    return _debian_items(task)


# --------------------------------------------------------------------------------------------------------------
# pools and splits
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Pool:
    """A task's texts after de-duplication and the per-class cap, in a fixed order (seed-independent)."""

    class_names: tuple[str, ...]
    texts: tuple[str, ...]
    keys: tuple[str, ...]
    labels: np.ndarray
    available: dict[str, int]  # texts per class after de-duplication, before the cap (every class of the task)


def _deduplicate(items: Sequence[tuple[str, str, str]]) -> list[tuple[str, str, str, str]]:
    """(norm, key, text, label) of the first item of each normalised text whose copies all agree on the label."""
    first: dict[str, tuple[str, str, str, str]] = {}
    labels: dict[str, set[str]] = {}
    for key, text, label in items:
        norm = normalise_text(text)
        if len(norm.split()) < 2:  # "dummy", "transitional": nothing to classify
            continue
        first.setdefault(norm, (norm, key, text, label))
        labels.setdefault(norm, set()).add(label)
    return [row for norm, row in first.items() if len(labels[norm]) == 1]


def _build_pool(task: _TaskDef) -> _Pool:
    rows = _deduplicate(_candidates(task))
    by_class: dict[str, list[tuple[str, str, str, str]]] = {c: [] for c in task.classes}
    for row in rows:
        by_class[row[3]].append(row)
    available = {c: len(v) for c, v in by_class.items()}
    kept = [c for c in task.classes if available[c] >= MIN_CLASS_ITEMS]
    if len(kept) < MIN_CLASSES:
        what, install, _ = _SOURCES[task.source]
        raise SourceUnavailable(
            f"task {task.name!r}: {what} gives only {len(kept)} classes with at least {MIN_CLASS_ITEMS} usable texts "
            f"(needs {MIN_CLASSES}); the files look damaged or foreign; reinstall with: {install}"
        )
    cap = math.ceil(_POOL / len(kept))
    texts: list[str] = []
    keys: list[str] = []
    labels: list[int] = []
    for number, name in enumerate(kept):
        members = by_class[name]
        for i in _stable_cap([m[0] for m in members], cap):
            texts.append(members[i][2])
            keys.append(members[i][1])
            labels.append(number)
    return _Pool(tuple(kept), tuple(texts), tuple(keys), np.asarray(labels, dtype=np.int64), available)


def _split(pool: _Pool, index: np.ndarray) -> TextSplit:
    return TextSplit(
        texts=tuple(pool.texts[i] for i in index.tolist()),
        labels=pool.labels[index].astype(np.int64),
        keys=tuple(pool.keys[i] for i in index.tolist()),
    )


def _task(task: _TaskDef, seed: int, quick: bool) -> TextTask:
    pool = _build_pool(task)
    sizes = QUICK_SIZES if quick else FULL_SIZES
    parts = _stratified_split(pool.labels, _rng(seed, task.name, "split"))
    splits = []
    for which, (part, cap) in enumerate(zip(parts, sizes)):
        chosen = _stratified_take(pool.labels[part], cap, _rng(seed, task.name, "cap", which))
        splits.append(_split(pool, part[chosen]))
    what = _SOURCES[task.source][0]
    detail = {
        "section": "the Section field",
        "facet": f"the debtags facet {task.facet}::",
        "wordnet": "noun glosses by lexicographer file (data.noun)",
        "fortune": "the quotation's file",
    }[task.kind]
    return TextTask(
        name=task.name,
        class_names=pool.class_names,
        class_descriptions=tuple(task.classes[c] for c in pool.class_names),
        train=splits[0],
        validation=splits[1],
        test=splits[2],
        source=f"{what}, {_files_in_words(_source_files(task.source))}: {detail}",
    )


def _files_in_words(paths: Sequence[Path]) -> str:
    """"data.noun" for one file, "15 files (art, computers, ...)" for several.

    >>> _files_in_words([Path("/a/art"), Path("/a/food"), Path("/a/law"), Path("/a/love")])
    '4 files (art, food, law, ...)'
    """
    if len(paths) == 1:
        return paths[0].name
    names = [p.name for p in paths]
    return f"{len(names)} files ({', '.join(names[:3])}{', ...' if len(names) > 3 else ''})"


def _task_defs(tasks: Sequence[str] | None) -> list[_TaskDef]:
    names = list(TEXT_TASKS if tasks is None else tasks)
    unknown = [n for n in names if n not in _BY_NAME]
    if unknown:
        raise HFTSVError(f"unknown text task(s) {', '.join(map(repr, unknown))}; the tasks are {', '.join(TEXT_TASKS)}")
    return [_BY_NAME[n] for n in names]


# --------------------------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------------------------


def load_text_tasks(seed: int = 0, *, quick: bool = False, tasks: Sequence[str] | None = None) -> dict[str, TextTask]:
    """The text tasks (all of ``TEXT_TASKS``, or ``tasks``), split for ``seed``, in the order asked.

    Every source is checked before any file is parsed; a missing one raises ``SourceUnavailable`` with the
    apt-get line that installs it, an unknown task name an ``HFTSVError``.

    >>> sorted(load_text_tasks(quick=True, tasks=["debian-interface"]))  # doctest: +SKIP
    ['debian-interface']
    """
    defs = _task_defs(tasks)
    for source in dict.fromkeys(d.source for d in defs):
        _require(source)
    return {d.name: _task(d, int(seed), bool(quick)) for d in defs}


def check_text_sources() -> dict[str, str | None]:
    """Every text task -> None when its source is here, else a message naming the missing files and the apt line."""
    return {t.name: _source_problem(t.source) for t in _TASKS}


def _dpkg_version(package: str) -> str | None:
    dpkg = shutil.which("dpkg-query")
    if dpkg is None:
        return None
    done = subprocess.run(
        [dpkg, "-W", "-f=${Version}", package], capture_output=True, text=True, timeout=60, check=False
    )
    version = done.stdout.strip() if done.returncode == 0 else ""
    return version or None


def _release_info(packages: Path) -> dict[str, str]:
    """Origin, suite, version and date of the index, from the InRelease file beside it (when there)."""
    release = _release_file(packages)
    if not release.is_file():
        return {}
    info = {}
    with open(release, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            key, sep, value = line.partition(":")
            if sep and key in ("Origin", "Suite", "Codename", "Version", "Date"):
                info.setdefault(key.lower(), value.strip())
            if line.startswith(("MD5Sum:", "SHA256:")):
                break
    return info


def text_sources_info() -> dict:
    """Provenance of the text suite: per source, the Debian package versions (dpkg), the files read with their
    sha256, and per task the texts per class after de-duplication (before the cap) and the classes left out.

    Sources that are missing are reported with their problem instead.  Takes a few seconds (it parses everything).
    """
    start = time.perf_counter()
    sources: dict[str, dict] = {}
    for source, (what, install, packages) in _SOURCES.items():
        problem = _source_problem(source)
        entry: dict = {"what": what, "install": install, "problem": problem}
        entry["packages"] = {p: _dpkg_version(p) for p in packages}
        if problem is None:
            files = _source_files(source)
            entry["files"] = {str(p): _sha256(p) for p in files}
            if source == "apt-index":
                entry["release"] = _release_info(files[0])
        sources[source] = entry
    tasks: dict[str, dict] = {}
    for task in _TASKS:
        if sources[task.source]["problem"] is not None:
            continue
        pool = _build_pool(task)
        per_class = {c: int((pool.labels == i).sum()) for i, c in enumerate(pool.class_names)}
        tasks[task.name] = {
            "classes": len(pool.class_names),
            "pool": len(pool.texts),
            "pool_per_class": per_class,
            "available_per_class": dict(pool.available),
            "left_out_classes": [c for c in task.classes if c not in pool.class_names],
        }
    return {"sources": sources, "tasks": tasks, "seconds": round(time.perf_counter() - start, 2)}
