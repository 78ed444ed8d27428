"""Training for the text suite: zero-shot heads from the frozen pretrained MiniLM, and one fine-tune of the whole
encoder per task with that task's head frozen (the TSV paper's protocol, on text).

* :func:`zero_shot_heads` fills each of a few prompt templates with every class description, embeds them with the
  FROZEN pretrained MiniLM (mean pooling), L2-normalises, averages over the templates, normalises again and scales
  by a fixed logit scale (:func:`hf_tsv.evaluation.heads.text_head`, the CLIP recipe). The heads are made before
  any fine-tuning and shared by every method.
* :func:`finetune_text` trains a copy of the whole ``BertModel`` (embeddings included) with cross-entropy on
  ``normalize(mean_pool(hidden)) @ head.T`` through the image suite's loop (:func:`.train.optimise`: AdamW, the
  warm-up + cosine schedule, batches from a seeded generator). The head never moves, so the task vector is the
  encoder's weight difference alone.
* :func:`save_text_model` writes a fine-tune as a sentence-transformers folder (the base's tokenizer and pipeline
  files copied beside the weights), which ``hf-tsv merge`` reads with the BERT adapter.

Example:
    >>> heads = zero_shot_heads(MiniLMTextEncoder(), tasks, TEXT_TEMPLATES, 50.0)  # doctest: +SKIP
    >>> tuned = finetune_text(base, tokenizer, heads["section"], task.train, steps=200)  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from hf_tsv.evaluation.heads import TaskHead, text_head
from hf_tsv.files import SIDE_FILES

from .text import mean_pool
from .train import head_matrix, optimise

# Prompts a class description is embedded in; the head averages them (CLIP's recipe, worded for text).
TEXT_TEMPLATES = ("{}.", "This text is about {}.", "A description of {}.", "Category: {}.")


def zero_shot_heads(encode: Callable[[list[str]], torch.Tensor], tasks: Mapping, templates: Sequence[str],
                    logit_scale: float) -> dict[str, TaskHead]:
    """One frozen head per task (``TextTask``): its class descriptions × ``templates`` embedded by ``encode``
    (the frozen pretrained encoder), normalised, averaged over templates, normalised again, × ``logit_scale``.
    The head's rows are named by the task's class names.

    Example:
        >>> enc = lambda texts: torch.stack([torch.tensor([len(t), 1.0]) for t in texts])
        >>> task = type("T", (), {"class_names": ("a", "b"), "class_descriptions": ("x", "yy")})()
        >>> zero_shot_heads(enc, {"t": task}, ["{}"], 2.0)["t"].weight.norm(dim=-1)
        tensor([2., 2.])
    """
    heads = {}
    for name, task in tasks.items():
        head = text_head(encode, list(task.class_descriptions), list(templates), logit_scale)
        heads[name] = TaskHead(head.weight, list(task.class_names))
    return heads


def tokenize(tokenizer, texts: Sequence[str], max_length: int) -> list[list[int]]:
    """Token ids of each text (special tokens added, truncated to ``max_length``), unpadded: batches are padded
    to their own longest text (:func:`collate`), which keeps short texts cheap."""
    return tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]


def collate(tokenizer, ids: Sequence[Sequence[int]]) -> dict[str, torch.Tensor]:
    """A padded batch (``input_ids``, ``attention_mask``) of token id lists."""
    return tokenizer.pad({"input_ids": [list(i) for i in ids]}, padding=True, return_tensors="pt")


def sentence_embeddings(model: torch.nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """L2-normalised mean-pooled sentence embeddings ``(N, D)`` of a padded batch (sentence-transformers'
    ``Transformer → Pooling(mean) → Normalize`` pipeline of all-MiniLM-L6-v2)."""
    hidden = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    return F.normalize(mean_pool(hidden, batch["attention_mask"]).float(), dim=-1)


def finetune_text(model: torch.nn.Module, tokenizer, head, split, *, steps: int = 200, batch_size: int = 32,
                  lr: float = 5e-5, weight_decay: float = 0.01, warmup: int | None = None, seed: int = 0,
                  max_length: int = 64, grad_clip: float | None = 1.0, history: list | None = None,
                  log_every: int = 0, log: Callable[[str], None] | None = print) -> torch.nn.Module:
    """Fine-tune a copy of the whole encoder ``model`` on ``split`` (``TextSplit``: texts, int labels) with the
    FROZEN ``head`` ``(C, D)`` (a tensor or ``TaskHead``, logit scale included). The input model is untouched;
    the copy comes back in eval mode; per-step losses are appended to ``history`` if given.

    Example:
        >>> tuned = finetune_text(base, tokenizer, heads["section"], task.train, steps=200)  # doctest: +SKIP
    """
    head = head_matrix(head)
    labels = torch.as_tensor(np.asarray(split.labels), dtype=torch.long)
    if len(split.texts) != len(labels) or len(labels) == 0:
        raise ValueError(f"need one label per text and at least one text, got {len(split.texts)} texts and "
                         f"{len(labels)} labels")
    if int(labels.max()) >= head.shape[0] or int(labels.min()) < 0:
        raise ValueError(f"labels must lie in [0, {head.shape[0]}) for a head of {head.shape[0]} classes")
    ids = tokenize(tokenizer, split.texts, max_length)
    tuned = copy.deepcopy(model).train()
    tuned.requires_grad_(True)
    warmup = max(1, steps // 10) if warmup is None else warmup

    def batch_loss(index: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        batch = collate(tokenizer, [ids[i] for i in index.tolist()])
        return F.cross_entropy(sentence_embeddings(tuned, batch) @ head.T, labels[index])

    with torch.random.fork_rng(devices=[]):  # dropout draws from the global generator: seed it, then restore it
        torch.manual_seed(seed)
        optimise(tuned, batch_loss, len(labels), steps=steps, batch_size=batch_size, lr=lr,
                 weight_decay=weight_decay, warmup=warmup, seed=seed, grad_clip=grad_clip, history=history,
                 log_every=log_every, log=log, what="finetune")
    return tuned.eval()


def side_files(base_folder: str | Path) -> list[str]:
    """The base folder's tokenizer and sentence-transformers files (:data:`hf_tsv.files.SIDE_FILES`) it has."""
    return [name for name in SIDE_FILES if (Path(base_folder) / name).is_file()]


def save_text_model(model: torch.nn.Module, folder: str | Path, base_folder: str | Path) -> Path:
    """Save ``model`` (a ``BertModel``) to ``folder`` with the base folder's tokenizer and sentence-transformers
    files, so it loads with ``AutoModel``/``AutoTokenizer`` and as a ``SentenceTransformer``, like the base.

    Example:
        >>> save_text_model(tuned, "build/models/section", minilm_path())  # doctest: +SKIP
    """
    folder = Path(folder)
    model.config.architectures = [type(model).__name__]
    model.save_pretrained(folder)
    for name in side_files(base_folder):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(Path(base_folder) / name, folder / name)
    return folder
