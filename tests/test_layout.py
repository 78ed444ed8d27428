"""What the installed package is and costs: importing it or asking the CLI for help loads no torch and changes
no environment variable; the benchmark stays outside it (found in a checkout only)."""

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


HEAVY = ("torch", "transformers", "huggingface_hub", "numpy")
HELP = "from hf_tsv.cli import main\ntry:\n    main({argv!r})\nexcept SystemExit as exc:\n    assert exc.code == 0\n"


@pytest.mark.parametrize("code", [
    pytest.param("import hf_tsv\n", id="import-hf_tsv"),
    pytest.param("from hf_tsv import HFTSVError, MergeInputError, __version__\n", id="import-errors"),
    pytest.param(HELP.format(argv=["--help"]), id="hf-tsv-help"),
    pytest.param(HELP.format(argv=["--version"]), id="hf-tsv-version"),
])
def test_light_paths_load_no_torch(code, tmp_path):
    proc = python(code + f"import sys; print([m for m in {HEAVY!r} if m in sys.modules])", pythonpath=REPO,
                  cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == "[]"


def test_import_changes_no_environment_variable(tmp_path):
    code = "import os; before = dict(os.environ); import hf_tsv; print(dict(os.environ) == before)"
    env = {"OMP_WAIT_POLICY": ""}  # emptied below: the variable is unset in the child
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=str(tmp_path),
                          env={k: v for k, v in {**os.environ, **env, "PYTHONPATH": str(REPO)}.items()
                               if k not in env})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["True"]


def test_public_api_loads_on_first_use(tmp_path):
    """Every public name resolves; the function hf_tsv.merge stays the function when the submodule of the same
    name is imported first (as the eager package had it), and submodules are reachable as attributes."""
    code = ("import inspect, sys; import hf_tsv.merge; import hf_tsv\n"
            "print(inspect.isfunction(hf_tsv.merge), hf_tsv.merge.__module__)\n"
            "print(sorted(n for n in hf_tsv.__all__ if getattr(hf_tsv, n, None) is None))\n"
            "print(hf_tsv.engine.__name__, 'merge_linear' in dir(hf_tsv))\n"
            "from hf_tsv import merge, compress; print(merge is hf_tsv.merge, compress.__module__)")
    proc = python(code, pythonpath=REPO, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["True hf_tsv.merge", "[]", "hf_tsv.engine True", "True hf_tsv.tsvc"]


def test_unknown_attribute_is_an_attribute_error():
    import hf_tsv

    with pytest.raises(AttributeError, match="has no attribute 'nothing_here'"):
        hf_tsv.nothing_here  # noqa: B018
