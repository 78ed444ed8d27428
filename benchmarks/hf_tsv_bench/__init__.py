"""Offline benchmark for model merging: real image data, a small CLIP model, training and evaluation.

Example:
    >>> from hf_tsv_bench import build_benchmark, run_benchmark
    >>> build_benchmark(quick=True)  # doctest: +SKIP
    >>> run_benchmark(quick=True)["methods"]["tsv-m"]  # doctest: +SKIP
"""

from .build import BenchError, BenchSettings, build_benchmark, default_cache_dir
from .run import run_benchmark
from .seeds import SeedSuite, build_seeds, parse_seeds, run_seeds, run_suite, seed_cache_dir

__all__ = ["BenchError", "BenchSettings", "build_benchmark", "default_cache_dir", "run_benchmark",
           "SeedSuite", "build_seeds", "parse_seeds", "run_seeds", "run_suite", "seed_cache_dir"]
