"""hf_tsv: Task Singular Vectors (TSV-C, TSV-M, STI) model merging for Hugging Face checkpoints.

Example:
    >>> import hf_tsv
    >>> result = hf_tsv.merge("base", ["ft_cars", "ft_dtd", "ft_eurosat"])  # doctest: +SKIP
    >>> result.save_pretrained("merged")  # doctest: +SKIP
    >>> hf_tsv.push_to_hub("merged", "me/clip-tsv-merged")  # doctest: +SKIP
"""

__version__ = "0.1.0"

from .card import write_card  # noqa: E402
from .errors import CardError, HFTSVError, MergeInputError, OutputExistsError, PushError  # noqa: E402
from .hub import PushResult, push_to_hub  # noqa: E402
from .merge import MergeResult, STIReport, merge, plan, sti  # noqa: E402
from .methods import METHODS  # noqa: E402
from .tsvc import CompressResult, compress, expand  # noqa: E402

__all__ = ["METHODS", "CardError", "CompressResult", "HFTSVError", "MergeInputError", "MergeResult",
           "OutputExistsError", "PushError", "PushResult", "STIReport", "__version__", "compress", "expand", "merge",
           "plan", "push_to_hub", "sti", "write_card"]
