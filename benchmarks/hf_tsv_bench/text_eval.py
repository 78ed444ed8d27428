"""The text suite's evaluation: an :class:`hf_tsv.evaluation.evaluator.Evaluator` for MiniLM (BERT) encoders.

A model's prediction for a text is ``argmax(normalize(mean_pool(last_hidden_state)) @ head.T)`` with the task's
frozen zero-shot head (:mod:`.text_train`), for the base, a fine-tune and every merge alike. Each split is
tokenised once and batched by length (texts of similar length share a batch), so padding costs little.

Example:
    >>> evaluator = TextEvaluator.from_build("~/.cache/hf_tsv/bench-text/full")  # doctest: +SKIP
    >>> model = evaluator.load_model(".../models/base")  # doctest: +SKIP
    >>> predicted, true = evaluator.predictions(model, "section", "test")  # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from hf_tsv.evaluation.heads import EvalInputError, TaskHead

from .text_train import collate, sentence_embeddings, tokenize

SPLITS = ("train", "validation", "test")


class TextEvaluator:
    """Sentence encoders scored with frozen per-task heads on the texts of each task's splits.

    Args:
        tasks: task name → an object with ``validation`` and ``test`` splits (``texts``, ``labels``), e.g. a
            ``TextTask``.
        heads: task name → its frozen :class:`~hf_tsv.evaluation.heads.TaskHead` (logit scale included).
        tokenizer: the tokenizer (or its folder) every model shares (the base's).
        max_length, batch_size: of the forward passes.
    """

    splits = ("validation", "test")

    def __init__(self, tasks: Mapping, heads: Mapping[str, TaskHead], tokenizer, *, max_length: int = 64,
                 batch_size: int = 128):
        missing = [name for name in tasks if name not in heads]
        if missing:
            raise EvalInputError(f"no head for task(s) {', '.join(missing)}; the heads are {', '.join(heads)}")
        if isinstance(tokenizer, (str, os.PathLike)):
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(str(tokenizer), local_files_only=True)
        self.task_names = list(tasks)
        self.heads = {name: heads[name] for name in tasks}
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        # task -> split -> (batches of token ids in length order, the order, labels)
        self._batches: dict[str, dict[str, tuple[list[dict], np.ndarray, list[int]]]] = {}
        for name, task in tasks.items():
            self._batches[name] = {split: self._prepare(getattr(task, split), max_length) for split in self.splits}

    @classmethod
    def from_build(cls, folder: str | os.PathLike, *, batch_size: int = 128) -> TextEvaluator:
        """The evaluator of a built text benchmark: its tasks' data, heads and the base's tokenizer."""
        from .text_suite import load_build

        build = load_build(folder)
        return cls(build.tasks, build.heads, build.base, max_length=build.settings.max_length, batch_size=batch_size)

    def _prepare(self, split, max_length: int) -> tuple[list[dict], np.ndarray, list[int]]:
        ids = tokenize(self.tokenizer, split.texts, max_length)
        order = np.argsort([len(i) for i in ids], kind="stable")
        batches = [collate(self.tokenizer, [ids[i] for i in order[start:start + self.batch_size]])
                   for start in range(0, len(order), self.batch_size)]
        return batches, order, [int(v) for v in np.asarray(split.labels)]

    def load_model(self, reference: str | os.PathLike) -> torch.nn.Module:
        """A BERT folder (base, fine-tune or merge) as a module in eval mode; never runs remote code."""
        from transformers import AutoModel

        path = Path(reference)
        if not (path / "config.json").is_file():
            raise EvalInputError(f"{str(path)!r} is not a model folder (no config.json)")
        return AutoModel.from_pretrained(str(path), local_files_only=True).eval()

    @torch.no_grad()
    def predictions(self, model: torch.nn.Module, task: str, split: str) -> tuple[list[int], list[int]]:
        """``(predicted, true)`` class ids of ``task``'s ``split`` under ``model`` (in the split's order)."""
        try:
            batches, order, labels = self._batches[task][split]
        except KeyError:
            raise EvalInputError(f"no split {split!r} of task {task!r}; the tasks are {', '.join(self.task_names)} "
                                 f"with splits {', '.join(self.splits)}") from None
        was_training = model.training
        model.eval()
        head = self.heads[task].weight.float()
        try:
            sorted_predictions = torch.cat([(sentence_embeddings(model, b) @ head.T).argmax(-1) for b in batches])
        finally:
            model.train(was_training)
        predicted = np.empty(len(order), dtype=np.int64)
        predicted[order] = sorted_predictions.numpy()
        return predicted.tolist(), list(labels)

    def accuracy(self, model: torch.nn.Module, task: str, split: str) -> float:
        """Top-1 accuracy in % (a convenience for the build's log; runs score through hf_tsv.compare)."""
        predicted, true = self.predictions(model, task, split)
        return 100.0 * float(np.mean(np.asarray(predicted) == np.asarray(true)))
