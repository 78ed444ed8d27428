"""hf_tsv: Task Singular Vectors (TSV-C, TSV-M, STI) model merging for Hugging Face checkpoints.

Example:
    >>> import hf_tsv
    >>> result = hf_tsv.merge("base", ["ft_cars", "ft_dtd", "ft_eurosat"])  # doctest: +SKIP
    >>> result.save_pretrained("merged")  # doctest: +SKIP
    >>> hf_tsv.push_to_hub("merged", "me/clip-tsv-merged")  # doctest: +SKIP
"""

import os as _os
import sys as _sys

__version__ = "0.1.0"

# OpenMP reads OMP_WAIT_POLICY once, when torch loads, so it is set here, before this package imports torch:
# busy-waiting threads ran 2-10x slower on this project's 2-core machine when another process held a core.
# Only a default: an explicit setting, or a torch that is already loaded, is left alone.
if "torch" not in _sys.modules:
    _os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from .card import write_card  # noqa: E402
from .errors import (  # noqa: E402
    CardError,
    HFTSVError,
    MergeInputError,
    OutputExistsError,
    OutputPathError,
    OutputWriteError,
    PushError,
    ReportError,
    TokenError,
)
from .hub import PushResult, push_to_hub  # noqa: E402
from .merge import LinearMerge, MergeResult, STIReport, merge, merge_linear, plan, sti  # noqa: E402
from .methods import METHODS  # noqa: E402
from .options import MergeOptions  # noqa: E402
from .report import MergeReport  # noqa: E402
from .tsvc import CompressResult, compress, expand  # noqa: E402

__all__ = ["METHODS", "CardError", "CompressResult", "HFTSVError", "LinearMerge", "MergeInputError", "MergeOptions",
           "MergeReport", "MergeResult", "OutputExistsError", "OutputPathError", "OutputWriteError", "PushError",
           "PushResult", "ReportError", "STIReport", "TokenError", "__version__", "compress", "expand", "merge",
           "merge_linear", "plan", "push_to_hub", "sti", "write_card"]
