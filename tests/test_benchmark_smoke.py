"""Smoke test of the benchmark harness: `benchmarks/run.py --smoke` on tiny shapes, FusionBench skipped."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RUN = REPO / "benchmarks" / "run.py"


def test_benchmark_smoke(tmp_path):
    out = tmp_path / "bench"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    proc = subprocess.run([sys.executable, str(RUN), "--smoke", "--skip-fusionbench", "--out", str(out)],
                          capture_output=True, text=True, env=env, cwd=str(REPO), timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    results = json.loads((out / "results.json").read_text())
    meta = results["meta"]
    assert meta["smoke"] is True and meta["fusionbench"] is False
    assert any("skipped" in n for n in meta["notes"])
    assert set(meta["suite_seconds"]) == {"side_by_side", "scaling"}

    sbs = results["side_by_side"]
    assert sbs["num_tasks"] == 3 and sbs["repeats"] == 1
    assert "fusionbench" not in sbs["tools"]
    for spectrum, entry in sbs["spectra"].items():
        assert entry["reference"]["wall_s"] > 0
        assert entry["num_matrix_keys"] > 0
        assert set(entry["tools"]) == {"exact", "fast"}, spectrum
        for tool, t in entry["tools"].items():
            assert len(t["runs"]) == 1
            run = t["runs"][0]
            assert run["wall_s"] > 0 and run["cpu_s"] > 0 and run["peak_rss_bytes"] > 2**20
            assert "compute_s" in run["internal"]
            assert "speedup_vs_fusionbench" not in t
            acc = t["accuracy"]
            for field in ("max", "attn_max", "mlp_max"):
                assert 0 <= acc["vs_f64"][field] < 1e-3, (spectrum, tool, field, acc)
            assert acc["vs_f64_unrounded"]["max"] < 1e-3
            assert acc["vs_fusionbench_max"] is None
            assert acc["non_matrix_max"] < 1e-6  # non-matrix keys are plain averages in both runs
    assert results["targets"] == []

    scaling = results["scaling"]
    points = scaling["vs_tasks"]["points"]
    assert sorted(p["num_tasks"] for p in points) == [2, 3]
    assert all(p["wall_s"] > 0 and p["peak_rss_bytes"] > 0 for p in points)
    assert scaling["vs_size"]["points"]

    md = (out / "results.md").read_text()
    assert "## Side by side" in md and "## Scaling with T" in md and "hf_tsv --svd exact" in md
    assert sorted(results["plots"]) == ["scaling_size.png", "scaling_tasks.png", "side_by_side.png"]
    for name in results["plots"]:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_side_by_side_takes_a_subset_of_modes_and_spectra():
    sys.path.insert(0, str(REPO / "benchmarks"))
    import pytest

    import run

    args = run.parse_args(["--suite", "side-by-side", "--modes", "fast", "--spectra", "noise,gapped"])
    assert args.modes == ("fast",) and args.spectra == ("noise", "gapped")
    for bad in (["--modes", "magic"], ["--spectra", ""], ["--modes", "fast,exactly"]):
        with pytest.raises(SystemExit):
            run.parse_args(bad)


def test_accuracy_spectra_reports_every_mode_and_the_refinement(tmp_path):
    """`benchmarks/accuracy_spectra.py` on tiny shapes: one row per ratio, every variant measured, and the
    refinement visible where it matters (σ_1/σ_k = 256: the unrefined fast mode is far off, the refined one not)."""
    out = tmp_path / "spectra.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "accuracy_spectra.py"), "--size", "64",
                           "--tasks", "4", "--seeds", "1", "--json", str(out)],
                          capture_output=True, text=True, env=env, cwd=str(REPO), timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert [row["ratio"] for row in rows] == [4, 8, 12, 16, 32, 64, 256]
    steepest = rows[-1]["error"]
    assert steepest["fast"] <= 2 * steepest["lapack"] < steepest["fast, not refined"]


def test_accuracy_spectra_refuses_sizes_without_two_kept_triplets():
    for bad in (["--size", "4", "--tasks", "4"], ["--tasks", "0"], ["--seeds", "0"]):
        proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "accuracy_spectra.py"), *bad],
                              capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)},
                              cwd=str(REPO), timeout=120)
        assert proc.returncode == 2 and "at least 2 kept triplets" in proc.stderr, proc.stderr
