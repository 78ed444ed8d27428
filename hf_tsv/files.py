"""The names of the files hf-tsv writes into an output folder, in one place: the writers, the card, the push and
the ``--overwrite`` check (which replaces only a folder holding nothing but these) all read them from here."""

from __future__ import annotations

import re

CONFIG_NAME = "config.json"
REPORT_NAME = "merge_report.json"  # merge and expand outputs; its schema marks a folder as an hf-tsv output
TSVC_INDEX_NAME = "tsv_c.json"  # TSV-C outputs; marks the folder by its "format"
TSVC_FORMAT = "hf-tsv/tsv-c"
EVAL_RESULTS_NAME = "eval_results.json"  # what the model card reads
EVAL_TABLE_NAME = "eval_results.md"
ALPHA_SEARCH_NAME = "eval_alpha_search.json"
CARD_NAME = "README.md"
HEATMAP_NAME = "sti_heatmap.png"
STI_STATS_NAME = "sti_stats.json"
COMPARE_JSON_NAME = "compare.json"  # hf-tsv compare: the comparison; its schema marks a comparison folder
COMPARE_TABLE_NAME = "compare.md"
COMPARE_SCHEMA = "hf-tsv/compare"
# Small files of the base's folder that a merge keeps (an adapter's ``side_files`` names which): its tokenizer, and
# the configuration of a sentence-transformers pipeline (``1_Pooling/config.json``: the one folder hf-tsv writes)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json",
                   "added_tokens.json")
SENTENCE_TRANSFORMERS_MODULES = "modules.json"  # the pipeline's modules: it marks a sentence-transformers folder
SENTENCE_TRANSFORMERS_FILES = (SENTENCE_TRANSFORMERS_MODULES, "sentence_bert_config.json",
                               "config_sentence_transformers.json", "1_Pooling/config.json")
SIDE_FILES = (*TOKENIZER_FILES, *SENTENCE_TRANSFORMERS_FILES)
SIDE_FOLDERS = tuple(sorted({name.split("/")[0] for name in SIDE_FILES if "/" in name}))

# every name above, the weights (``model`` or ``tsv_c``: single file, or shards and their index) and the other
# ``eval_*`` files the evaluation may add
OUTPUT_FILE = re.compile(
    r"(?:model|tsv_c)(?:-\d{5}-of-\d{5})?\.safetensors|(?:model|tsv_c)\.safetensors\.index\.json"
    r"|eval_[\w.-]*\.(?:json|md|csv|png)|compare(?:_[\w.-]*)?\.(?:json|md|png)|"
    + "|".join(re.escape(n) for n in (CONFIG_NAME, REPORT_NAME, TSVC_INDEX_NAME, EVAL_RESULTS_NAME, EVAL_TABLE_NAME,
                                      ALPHA_SEARCH_NAME, CARD_NAME, HEATMAP_NAME, STI_STATS_NAME, *SIDE_FILES)))


def is_output_file_name(name: str) -> bool:
    """Whether hf-tsv writes files of this name into its output folders.

    ``name`` is relative to the folder, ``/``-separated: the side files of :data:`SIDE_FOLDERS` lie one folder down.

    Example:
        >>> is_output_file_name("model-00001-of-00002.safetensors"), is_output_file_name("notes.txt")
        (True, False)
        >>> is_output_file_name("1_Pooling/config.json"), is_output_file_name("1_Pooling/model.safetensors")
        (True, False)
    """
    return OUTPUT_FILE.fullmatch(name) is not None
