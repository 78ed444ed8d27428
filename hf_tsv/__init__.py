"""hf_tsv: Task Singular Vectors (TSV-C, TSV-M, STI) model merging for Hugging Face checkpoints.

Example:
    >>> import hf_tsv
    >>> result = hf_tsv.merge("base", ["ft_cars", "ft_dtd", "ft_eurosat"])  # doctest: +SKIP
    >>> result.save_pretrained("merged")  # doctest: +SKIP
"""

__version__ = "0.1.0"

from .errors import HFTSVError, MergeInputError, OutputExistsError  # noqa: E402
from .merge import MergeResult, STIReport, merge, plan, sti  # noqa: E402
from .methods import METHODS  # noqa: E402
from .tsvc import CompressResult, compress, expand  # noqa: E402

__all__ = ["METHODS", "CompressResult", "HFTSVError", "MergeInputError", "MergeResult", "OutputExistsError",
           "STIReport", "__version__", "compress", "expand", "merge", "plan", "sti"]
