"""Model cards for hf-tsv outputs: a ``README.md`` rendered from ``hf_tsv/templates/model_card.md.j2`` through
huggingface_hub's :class:`~huggingface_hub.ModelCard`, plus the STI heatmap and ``sti_stats.json``.

Everything on the card comes from the files in the output folder (``merge_report.json`` read as a
:class:`~hf_tsv.report.MergeReport`, ``tsv_c.json``, ``config.json`` and an optional ``eval_results.json``:
:mod:`hf_tsv.card.folder`) and, for the license, from the parents' own cards (:mod:`hf_tsv.card.licenses`); the
template's variables are built in :mod:`hf_tsv.card.contexts`. Local inputs are named by their folder name
only: no local path ever reaches the card.

Example:
    >>> from hf_tsv.card import write_card
    >>> result = write_card("merged", repo_id="me/clip-tsv-merged")  # doctest: +SKIP
    >>> result.warnings, result.files  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..files import CARD_NAME, HEATMAP_NAME, STI_STATS_NAME
from ..io.output import write_file_atomic
from ..json_io import dumps_json
from ..secrets import normalize_token, redact
from ..sti_table import sti_heatmap_png
from .contexts import CardContext, expand_context, merge_context, tsvc_context
from .folder import MERGE, TSVC, folder_kind, load_eval_results, read_folder

__all__ = ["CardResult", "build_card", "folder_kind", "load_eval_results", "write_card"]

logger = logging.getLogger(__name__)

TEMPLATE_PATH = Path(__file__).resolve().parent.parent / "templates" / "model_card.md.j2"


@dataclass
class CardResult:
    """A written card: the :class:`~huggingface_hub.ModelCard`, the files written beside it and any warnings
    (e.g. parents that declare different licenses)."""

    folder: Path
    card: object  # huggingface_hub.ModelCard
    kind: str  # "merge", "tsv-c" or "expand"
    warnings: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        return str(self.card)


def _side_files(context: CardContext, title: str) -> dict[str, bytes]:
    """The STI heatmap and ``sti_stats.json`` of a TSV-M merge (the card's link to the heatmap goes when there is
    none to draw)."""
    if context.sti_keys is None:
        return {}
    files: dict[str, bytes] = {}
    png = sti_heatmap_png(context.sti_keys, f"STI per layer — {title}", layout=context.sti_layout)
    if png is None:
        context.template["sti"]["heatmap"] = None
    else:
        files[HEATMAP_NAME] = png
    files[STI_STATS_NAME] = dumps_json(context.sti_stats, STI_STATS_NAME).encode()
    return files


def _adapter_card(output) -> CardResult:
    """The card of a merge written as a LoRA adapter (``--output-format peft``; :mod:`hf_tsv.peft_output`)."""
    from huggingface_hub import ModelCard

    from ..files import ADAPTER_CONFIG_NAME
    from ..peft_output import card_text
    from .folder import read_json

    config = read_json(output.path / ADAPTER_CONFIG_NAME, "a PEFT adapter config")
    card = ModelCard(redact(card_text(output.report, config)), ignore_metadata_errors=True)
    return CardResult(output.path, card, MERGE, [], [CARD_NAME])


def build_card(folder: str | os.PathLike, *, repo_id: str | None = None, license: str | None = None,
               token: str | bool | None = None) -> tuple[CardResult, dict[str, bytes]]:
    """Render the card of an hf-tsv output folder without writing anything.

    Returns the :class:`CardResult` and the side files to write beside it (``{name: bytes}``: the heatmap
    and ``sti_stats.json`` for a TSV-M merge). ``repo_id`` names the model in the title and the usage snippet
    (default: the folder's name); ``license`` overrides the license inherited from the parents; ``token``
    reads private parents' cards (default: ``HF_TOKEN`` or the stored login).

    Raises:
        CardError: not an hf-tsv output folder, or one of its files cannot be read (naming it).
    """
    from huggingface_hub import ModelCard, ModelCardData

    folder = Path(folder)
    token = normalize_token(token)
    output = read_folder(folder)
    folder_name = folder.resolve().name
    title = repo_id.split("/")[-1] if repo_id else folder_name
    model_id = repo_id or folder_name
    local = repo_id is None
    if output.kind == MERGE and output.report.output is not None and output.report.output.format == "peft":
        return _adapter_card(output), {}
    if output.kind == MERGE:
        context = merge_context(output, title, model_id, local, token, license)
    elif output.kind == TSVC:
        context = tsvc_context(output, title, model_id, token, license)
    else:
        context = expand_context(output, title, model_id, local, token, license)
    side_files = _side_files(context, title)
    metadata = {k: v for k, v in context.metadata.items() if v is not None}
    card_data = ModelCardData(**metadata)
    card = ModelCard.from_template(card_data, template_path=str(TEMPLATE_PATH), warnings=context.warnings,
                                   **context.template)
    text = redact(str(card))
    if text != str(card):  # e.g. a --repo-id or --license typed with a token in it
        card = ModelCard(text, ignore_metadata_errors=True)
    for warning in context.warnings:
        logger.warning("model card of %s: %s", title, warning)
    return CardResult(folder, card, output.kind, context.warnings, [CARD_NAME, *side_files]), side_files


def write_card(folder: str | os.PathLike, *, repo_id: str | None = None, license: str | None = None,
               token: str | bool | None = None) -> CardResult:
    """Write (or refresh) ``README.md`` in an hf-tsv output folder, with ``sti_heatmap.png`` and
    ``sti_stats.json`` beside it for a TSV-M merge. See :func:`build_card` for the arguments."""
    result, side_files = build_card(folder, repo_id=repo_id, license=license, token=token)
    for name, data in side_files.items():
        write_file_atomic(result.folder / name, data)
    write_file_atomic(result.folder / CARD_NAME, result.text)
    return result
