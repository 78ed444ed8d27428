"""What the installed package is: the benchmark stays outside it (found in a checkout only)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def python(code: str, *, pythonpath: Path | str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    """``python -c code`` with only ``pythonpath`` added to the import path (not the pytest one), from ``cwd``."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", **(env or {}), "PYTHONPATH": str(pythonpath)}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=str(cwd),
                          timeout=300)


def test_checkout_finds_the_benchmark_without_putting_its_scripts_on_the_path(tmp_path):
    code = ("import sys; from hf_tsv.cli import benchmark_package; bench = benchmark_package(); "
            "print(bench.__file__); print(bench.build_benchmark.__module__); "
            "import importlib.util; print(importlib.util.find_spec('run_fusionbench'))")
    proc = python(code, pythonpath=REPO, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    init, module, scripts = proc.stdout.split()
    assert Path(init) == REPO / "benchmarks" / "hf_tsv_bench" / "__init__.py"
    assert module == "hf_tsv_bench.build"
    assert scripts == "None"  # benchmarks/ itself is not on sys.path: its scripts shadow no module


@pytest.mark.parametrize("step", [pytest.param("build", id="LAY-01"), pytest.param("run", id="LAY-02")])
def test_bench_from_an_installed_package_says_where_the_benchmark_is(tmp_path, step):
    """An installed wheel has hf_tsv without benchmarks/ beside it: `hf-tsv bench` exits 2 with one line."""
    site = tmp_path / "site-packages"
    shutil.copytree(REPO / "hf_tsv", site / "hf_tsv", ignore=shutil.ignore_patterns("__pycache__"))
    cache = tmp_path / "cache"
    argv = ["bench", step, "--quick", "--cache", str(cache)]
    code = f"import sys; from hf_tsv.cli import main; sys.exit(main({argv!r}))"
    proc = python(code, pythonpath=site, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("hf-tsv bench: error: ")
    assert "not part of the installed hf-tsv package" in proc.stderr and "bash dev.sh bench" in proc.stderr
    assert not cache.exists()
