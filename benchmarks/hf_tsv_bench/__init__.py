"""Offline benchmark for model merging, in two suites (:mod:`.suites`): ``image`` (real image data, a small CLIP
model pretrained here) and ``text`` (the real pretrained all-MiniLM-L6-v2 on real-text tasks, :mod:`.text_suite`),
each over one seed or several (:mod:`.seeds`: mean ± standard deviation).

Example:
    >>> from hf_tsv_bench import build_benchmark, run_benchmark
    >>> build_benchmark(quick=True)  # doctest: +SKIP
    >>> run_benchmark(quick=True)["methods"]["tsv-m"]  # doctest: +SKIP
"""

from . import seeds
from .build import BenchError, BenchSettings, build_benchmark, default_cache_dir
from .run import run_benchmark
from .seeds import SeedSuite, build_seeds, parse_seeds, run_seeds, seed_cache_dir
from .suites import SUITES, build_suite, run_suite, suite_build_dir

__all__ = ["SUITES", "BenchError", "BenchSettings", "SeedSuite", "build_benchmark", "build_seeds", "build_suite",
           "default_cache_dir", "parse_seeds", "run_benchmark", "run_seeds", "run_suite", "seed_cache_dir", "seeds",
           "suite_build_dir"]
