"""The benchmark's suites by name, for ``hf-tsv bench build|run --suite NAME``: ``image`` (the default: a small
CLIP vision encoder pretrained here) and ``text`` (the real pretrained all-MiniLM-L6-v2 on real-text tasks).

Example:
    >>> sorted(SUITES)
    ['image', 'text']
    >>> suite_build_dir("text", "/tmp/cache", quick=True).name
    'quick'
"""

from __future__ import annotations

import os
from pathlib import Path

from .build import BenchError

SUITES = {"image": "the default: a small CLIP vision encoder pretrained here on real images, 8 image tasks",
          "text": "the real pretrained all-MiniLM-L6-v2 (22M parameters), 8 real-text tasks"}
DEFAULT_SUITE = "image"


def _check(suite: str) -> str:
    if suite not in SUITES:
        raise BenchError(f"unknown benchmark suite {suite!r}; choose one of {', '.join(SUITES)} (--suite)")
    return suite


def suite_build_dir(suite: str, cache_dir: str | os.PathLike | None, quick: bool) -> Path:
    """The folder ``suite``'s build lives in (``<cache>/{full,quick}``; each suite has its own default cache)."""
    if _check(suite) == "text":
        from .text_suite import text_build_dir

        return text_build_dir(cache_dir, quick)
    from .build import build_dir

    return build_dir(cache_dir, quick)


def build_suite(suite: str, cache_dir: str | os.PathLike | None = None, *, quick: bool = False, seed: int = 0,
                force: bool = False) -> Path:
    """Build ``suite`` (cached: an identical build is reused unless ``force``); returns its folder."""
    if _check(suite) == "text":
        from .text_suite import build_text_benchmark

        return build_text_benchmark(cache_dir, quick=quick, seed=seed, force=force)
    from .build import build_benchmark

    return build_benchmark(cache_dir, quick=quick, seed=seed, force=force)


def run_suite(suite: str, cache_dir: str | os.PathLike | None = None, *, quick: bool = False,
              out_dir: str | os.PathLike | None = None) -> dict:
    """Run ``suite`` on its build (every method through :func:`hf_tsv.compare`); returns the results dict."""
    if _check(suite) == "text":
        from .text_suite import run_text_benchmark

        return run_text_benchmark(cache_dir, quick=quick, out_dir=out_dir)
    from .run import run_benchmark

    return run_benchmark(cache_dir, quick=quick, out_dir=out_dir)
