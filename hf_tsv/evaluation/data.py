"""Loading a task's split as a ``datasets.Dataset`` and turning it into uint8 pixel tensors once.

Images are resized and cropped by the model's image processor once and kept as uint8 (a quarter of the
float size); each batch is rescaled and normalised on the fly, so an α sweep never re-decodes an image.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .heads import EvalInputError
from .tasks import TaskSpec


def load_split(task: TaskSpec, split: str):
    """``task``'s ``split`` as a ``datasets.Dataset`` (Hub id, ``imagefolder:DIR``, ``disk:DIR`` or in memory)."""
    import datasets

    source = task.dataset
    try:
        if isinstance(source, (datasets.Dataset, datasets.DatasetDict)):
            data = source
        elif source.startswith("disk:"):
            data = datasets.load_from_disk(source[len("disk:"):])
        elif source.startswith("imagefolder:"):
            data = datasets.load_dataset("imagefolder", data_dir=source[len("imagefolder:"):], split=split)
        else:
            data = datasets.load_dataset(source, task.config, split=split, revision=task.revision)
    except EvalInputError:
        raise
    except Exception as exc:  # noqa: BLE001 - datasets raises many types
        raise EvalInputError(f"task {task.name!r}: cannot load split {split!r} of dataset {task.dataset_id()!r} "
                             f"({type(exc).__name__}: {exc})") from exc
    if isinstance(data, datasets.DatasetDict):
        if split not in data:
            raise EvalInputError(f"task {task.name!r}: dataset {task.dataset_id()!r} has no split {split!r} "
                                 f"(it has {', '.join(data)})")
        data = data[split]
    return data


def _columns(task: TaskSpec, data) -> tuple[str, str, list[str]]:
    """The image column, the label column and the class names of a loaded split, each checked against its
    feature type (images in an ``Image`` column, integer labels), before any image is decoded."""
    import datasets

    feats = data.features
    where, dataset = task.where(), repr(task.dataset_id())
    image_col = task.image_column or next((k for k, v in feats.items() if isinstance(v, datasets.Image)), None)
    label_col = task.label_column or next((k for k, v in feats.items() if isinstance(v, datasets.ClassLabel)), None)
    for what, col in (("image", image_col), ("label", label_col)):
        if col is None or col not in feats:
            raise EvalInputError(f"{where}: dataset {dataset} has no {what} column "
                                 f"{'' if col is None else repr(col) + ' '}(columns: {', '.join(feats)}); set "
                                 f"'{what}_column' in the task spec")
    if image_col == label_col:
        raise EvalInputError(f"{where}: 'image_column' {image_col!r} is also the label column of dataset {dataset}; "
                             "set 'image_column' to the column that holds the images")
    if not isinstance(feats[image_col], datasets.Image):
        raise EvalInputError(f"{where}: 'image_column' {image_col!r} of dataset {dataset} holds "
                             f"{_feature_kind(feats[image_col])}, not images; set 'image_column' to its Image column")
    label_feat = feats[label_col]
    integer = isinstance(label_feat, datasets.Value) and label_feat.dtype.startswith(("int", "uint"))
    if not (isinstance(label_feat, datasets.ClassLabel) or integer):
        raise EvalInputError(f"{where}: 'label_column' {label_col!r} of dataset {dataset} holds "
                             f"{_feature_kind(label_feat)}; labels must be integer class indices into "
                             "'class_names' (or a ClassLabel column, which carries its names)")
    names = task.class_names
    if names is None:
        if not isinstance(label_feat, datasets.ClassLabel):
            raise EvalInputError(f"{where}: column {label_col!r} is not a ClassLabel; give 'class_names' in the task "
                                 "spec")
        names = list(label_feat.names)
    return image_col, label_col, names


def _feature_kind(feature) -> str:
    """How a datasets feature reads in a message: ``strings``, ``int64 values``, ``a ClassLabel``..."""
    dtype = getattr(feature, "dtype", None)
    if type(feature).__name__ == "Value" and dtype is not None:
        return "strings" if dtype in ("string", "large_string") else f"{dtype} values"
    return f"a {type(feature).__name__}"


@dataclass
class CheckedSplit:
    """A split whose columns and labels are checked, before any image is decoded."""

    data: object  # datasets.Dataset, limited to max_examples
    image_column: str
    labels: torch.Tensor
    class_names: list[str]


def check_split(task: TaskSpec, split: str, *, max_examples: int | None = None) -> CheckedSplit:
    """Load ``split`` of ``task`` and check its columns and labels (cheap: no image is decoded)."""
    data = load_split(task, split)
    image_col, label_col, names = _columns(task, data)
    limit = max_examples or task.max_examples
    if limit is not None and limit < len(data):
        data = data.select(range(limit))
    if len(data) == 0:
        raise EvalInputError(f"{task.where()}: split {split!r} of {task.dataset_id()!r} is empty")
    labels = torch.tensor(np.asarray(data[label_col]), dtype=torch.int64)
    if int(labels.min()) < 0 or int(labels.max()) >= len(names):
        raise EvalInputError(f"{task.where()}: labels of split {split!r} run from {int(labels.min())} to "
                             f"{int(labels.max())} but there are {len(names)} class names")
    return CheckedSplit(data, image_col, labels, names)


@dataclass
class PreparedSplit:
    """One split as uint8 pixels (N, 3, H, W) and int64 labels (N,)."""

    pixels: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class Normalizer:
    """The rescale/normalise part of an image processor, applied per batch."""

    mean: torch.Tensor
    std: torch.Tensor
    rescale: float

    @classmethod
    def from_processor(cls, processor) -> Normalizer:
        mean = torch.tensor(processor.image_mean if processor.do_normalize else [0.0, 0.0, 0.0])
        std = torch.tensor(processor.image_std if processor.do_normalize else [1.0, 1.0, 1.0])
        rescale = float(processor.rescale_factor) if processor.do_rescale else 1.0
        return cls(mean.view(1, -1, 1, 1), std.view(1, -1, 1, 1), rescale)

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        x = pixels.float() * self.rescale
        return (x - self.mean.to(x.device)) / self.std.to(x.device)


def prepare_split(task: TaskSpec, split: str, processor, *, max_examples: int | None = None,
                  batch_size: int = 256, checked: CheckedSplit | None = None) -> tuple[PreparedSplit, list[str]]:
    """Decode, resize and crop ``split`` once with ``processor`` (normalisation is left for each batch);
    ``checked`` is the split's :func:`check_split`, when it was done earlier."""
    checked = checked or check_split(task, split, max_examples=max_examples)
    data, image_col = checked.data, checked.image_column
    chunks = []
    for start in range(0, len(data), batch_size):
        images = [img.convert("RGB") for img in data[start:start + batch_size][image_col]]
        out = processor(images=images, do_rescale=False, do_normalize=False, return_tensors="pt")
        chunks.append(out["pixel_values"].round().clamp(0, 255).to(torch.uint8))
    return PreparedSplit(torch.cat(chunks), checked.labels), checked.class_names
