"""Exceptions raised by hf_tsv.

Every error that comes from bad input is a :class:`MergeInputError`; its message names the model, the file
and the key where the problem was first seen, and says what to do about it.
"""

from __future__ import annotations


class HFTSVError(Exception):
    """Base class of every error hf_tsv raises on purpose."""


class MergeInputError(HFTSVError, ValueError):
    """The inputs cannot be merged as given (mismatched checkpoints, missing files, bad options...)."""


class OutputExistsError(HFTSVError, FileExistsError):
    """The output folder exists and is not empty, and overwriting was not asked for."""


class CardError(HFTSVError, ValueError):
    """A model card cannot be written for this folder (not an hf-tsv output, or a malformed report file)."""


class ReportError(CardError):
    """A ``merge_report.json`` that hf-tsv cannot read: missing, not JSON, of another schema version, or with an
    entry missing or of the wrong type (the message names it). A :class:`CardError`, since the model card is
    where a report is read most (and where hf-tsv 0.1.0 raised CardError for it)."""


class PushError(HFTSVError, RuntimeError):
    """Publishing to the Hub failed. The message says which step failed and what was left on the Hub
    (a repository created by the failed push is deleted); it never contains the token."""


class TokenError(HFTSVError, ValueError):
    """A Hub token that cannot be used as given (empty, or with whitespace or control characters inside it).
    The message names where the token came from (``--token``, ``HF_TOKEN``) and never contains it."""


class OutputPathError(HFTSVError, ValueError):
    """The output path cannot be used: it is, contains or lies inside an input, lies below a file, or its folder
    is missing or not writable. Raised before any heavy work."""


class OutputWriteError(HFTSVError, OSError):
    """Writing an output failed (disk full, I/O error, a rename refused). Nothing was left at the target: a
    partial result is removed and an earlier output there is kept."""


class BenchmarkUnavailableError(HFTSVError, RuntimeError):
    """``hf-tsv bench`` was run where the offline benchmark is not available: it lives in the source checkout
    (``benchmarks/hf_tsv_bench``), not in the installed package. The message says how to get it."""


class DistributedMergeError(HFTSVError, RuntimeError):
    """A merge sharded over processes (torch.distributed) stopped because another process failed, died or timed
    out. The message names the process and its error; no output was left (every process raises it)."""
