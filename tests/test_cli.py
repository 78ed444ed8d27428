"""Every CLI command end to end on tiny checkpoints: `hf_tsv.cli.main` in this process (its exit status, stdout and
stderr), and as a user runs it (a subprocess of `hf-tsv`) where the process is the point."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from conftest import load_state, max_rel_diff

import hf_tsv
from hf_tsv.cli import main

HF_TSV = shutil.which("hf-tsv") or ""


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    """``hf-tsv ARGS`` in a subprocess, as a user runs it (the console script, else ``python -m hf_tsv.cli``)."""
    cmd = [HF_TSV] if HF_TSV else [sys.executable, "-m", "hf_tsv.cli"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd + [str(a) for a in args], capture_output=True, text=True, env=env)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


@pytest.fixture
def cli(capsys):
    """``hf-tsv ARGS`` through :func:`hf_tsv.cli.main` in this process: its exit status (argparse's too), stdout
    and stderr. The torch thread count the command sets is put back afterwards."""

    def call(*args, code: int = 0) -> SimpleNamespace:
        threads = torch.get_num_threads()
        capsys.readouterr()
        try:
            returncode = main([str(a) for a in args])
        except SystemExit as exc:  # --help, --version and usage errors exit inside argparse
            returncode = exc.code
        finally:
            torch.set_num_threads(threads)
        out, err = capsys.readouterr()
        assert returncode == code, err
        return SimpleNamespace(returncode=returncode, stdout=out, stderr=err)

    return call


@pytest.mark.parametrize("command", ["merge", "sti", "compress", "expand", "plan", "example"])
def test_help(cli, command):
    out = cli(command, "--help").stdout
    assert out.startswith(f"usage: hf-tsv {command} [-h]")
    assert "options:" in out and "--help" in out


def test_merge_command_and_from_pretrained(tiny, tmp_path):
    """The one end-to-end run of the installed `hf-tsv` command (a subprocess): the other tests call main()."""
    from transformers import CLIPVisionModel

    out = run("merge", tiny["base"], *tiny["tasks"], "-o", tmp_path / "m", "--method", "tsv-m", "--alpha", "0.8",
              "--device", "cpu", "--fuse-qkv", "--exclude", "position_embedding", "--dtype", "bfloat16")
    assert "STI total" in out.stdout
    model = CLIPVisionModel.from_pretrained(str(tmp_path / "m"))
    assert model.dtype == torch.bfloat16
    report = json.loads((tmp_path / "m" / "merge_report.json").read_text())
    assert report["alpha"] == 0.8 and report["options"]["fuse_qkv"] is True
    assert report["command"].startswith("hf-tsv merge")
    api = hf_tsv.merge(tiny["base"], tiny["tasks"], alpha=0.8, fuse_qkv=True, exclude="position_embedding",
                       dtype="bfloat16").state_dict()
    assert all(torch.equal(api[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("method", ["ta", "ties", "avg", "iso-c", "iso-cts"])
def test_merge_baselines(cli, tiny, tmp_path, method):
    cli("merge", tiny["base"], *tiny["tasks"], "-o", tmp_path / method, "--method", method)
    assert json.loads((tmp_path / method / "merge_report.json").read_text())["method"] == method


def test_overwrite(cli, tiny, tmp_path):
    cli("merge", tiny["base"], *tiny["tasks"], "-o", tmp_path / "m")
    bad = cli("merge", tiny["base"], *tiny["tasks"], "-o", tmp_path / "m", "--method", "ta", code=2)
    assert bad.returncode == 2 and "--overwrite" in bad.stderr
    cli("merge", tiny["base"], *tiny["tasks"], "-o", tmp_path / "m", "--method", "ta", "--overwrite")
    assert json.loads((tmp_path / "m" / "merge_report.json").read_text())["method"] == "ta"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_sti_command_json(cli, tiny, tmp_path):
    out = cli("sti", tiny["base"], *tiny["tasks"], "--json", tmp_path / "sti.json")
    data = json.loads((tmp_path / "sti.json").read_text())
    assert data["k"] == "floor(r/T)"
    assert set(data["keys"]) == {k for k, v in load_state(tiny["base"]).items() if v.ndim == 2}
    assert data["total"] == pytest.approx(sum(data["keys"].values()))
    assert "fc1" in out.stdout and f"{data['total']:.6g}" in out.stdout


def test_compress_and_expand(cli, tiny, tmp_path):
    out = cli("compress", tiny["base"], *tiny["tasks"], "-o", tmp_path / "c")
    assert "TSV-C: 3 tasks" in out.stdout and "% of the" in out.stdout
    index = json.loads((tmp_path / "c" / "tsv_c.json").read_text())
    assert index["ranks"]["encoder.layers.0.mlp.fc1.weight"] == 32 // 3
    cli("expand", tmp_path / "c", "--task", "task_01", "-o", tmp_path / "e1")
    cli("expand", tmp_path / "c", "--task", "2", "-o", tmp_path / "e2")
    # expanded = base + the rank-k truncation of the task vector
    base, task = load_state(tiny["base"]), load_state(tiny["tasks"][1])
    rebuilt = load_state(tmp_path / "e1")
    key = "encoder.layers.1.mlp.fc2.weight"
    tau = (task[key] - base[key]).double()
    u, s, vh = torch.linalg.svd(tau)
    k = index["ranks"][key]
    truncated = base[key].double() + u[:, :k] @ torch.diag(s[:k]) @ vh[:k]
    assert max_rel_diff(rebuilt[key], truncated) < 1e-6
    assert torch.equal(rebuilt["post_layernorm.bias"], task["post_layernorm.bias"])


def test_compress_full_rank_fused_round_trip(cli, tiny, tmp_path):
    """rank fraction 1 keeps every triplet: expand gives the fine-tuned model back (fused q/k/v too)."""
    from transformers import CLIPVisionModel

    cli("compress", tiny["base"], *tiny["tasks"], "-o", tmp_path / "c", "--rank-fraction", "1.0", "--fuse-qkv")
    index = json.loads((tmp_path / "c" / "tsv_c.json").read_text())
    assert "encoder.layers.0.self_attn.qkv_proj.weight" in index["ranks"]
    cli("expand", tmp_path / "c", "--task", "task_00", "-o", tmp_path / "e")
    model = CLIPVisionModel.from_pretrained(str(tmp_path / "e"))
    original = load_state(tiny["tasks"][0])
    for key, value in model.state_dict().items():
        assert max_rel_diff(value, original[key]) < 1e-6, key


def test_plan_and_dry_run(cli, tiny, tmp_path):
    out = cli("plan", tiny["base"], *tiny["tasks"], "--fuse-qkv", "--json", tmp_path / "plan.json").stdout
    assert "matrix_units" in out and "estimated peak memory" in out
    assert json.loads((tmp_path / "plan.json").read_text())["keys"]["fused_qkv_groups"] == 2
    dry = cli("merge", tiny["base"], *tiny["tasks"], "-o", tmp_path / "never", "--dry-run").stdout
    assert "estimated time" in dry and not (tmp_path / "never").exists()


def test_example_command(cli, tmp_path):
    out = cli("example", "-o", tmp_path / "ex", "--num-tasks", "3").stdout
    assert "total STI" in out and "from_pretrained loads it" in out
    assert (tmp_path / "ex" / "merged" / "model.safetensors").is_file()


def test_recorded_command_has_no_local_paths(cli, tiny, tmp_path):
    cli("merge", tiny["base"], *tiny["tasks"], "-o", tmp_path / "m", "--exclude", "fc2")
    report = json.loads((tmp_path / "m" / "merge_report.json").read_text())
    # rebuilt from the parsed arguments, in the parser's order (issue 10: never from the raw command line)
    assert report["command"] == "hf-tsv merge base task_00 task_01 task_02 --exclude fc2 -o m"
    assert str(tmp_path) not in json.dumps(report)


@pytest.mark.parametrize("cpus,threads", [(None, 1), (1, 1), (2, 1), (3, 1), (8, 4), (64, 32)])
def test_default_threads_are_half_the_cpus(monkeypatch, cpus, threads):
    from hf_tsv.cli import default_threads

    monkeypatch.setattr(os, "cpu_count", lambda: cpus)
    assert default_threads() == threads


def test_threads_option(cli):
    proc = cli("merge", "a", "b", "c", "-o", "x", "--threads", "0", code=2)
    assert proc.returncode == 2 and "must be at least 1" in proc.stderr


def test_wait_policy_is_set_by_the_command_before_torch_loads():
    """The command sets OMP_WAIT_POLICY=PASSIVE (unless set) before torch loads; importing hf_tsv, or its CLI
    module, sets nothing (issue 12: no environment side effects at import; the CLI keeps its behaviour)."""
    code = ("import os, sys; import hf_tsv, hf_tsv.cli\n"
            "print(os.environ.get('OMP_WAIT_POLICY'), 'torch' in sys.modules)\n"
            "try:\n    hf_tsv.cli.main(['--version'])\nexcept SystemExit:\n    pass\n"
            "print(os.environ['OMP_WAIT_POLICY'], 'torch' in sys.modules)")
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.splitlines() == ["None False", "hf-tsv 0.1.0", "PASSIVE False"]
    env["OMP_WAIT_POLICY"] = "ACTIVE"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.splitlines() == ["ACTIVE False", "hf-tsv 0.1.0", "ACTIVE False"]


@pytest.mark.parametrize("call", ["merge", "sti", "plan", "compress"])
def test_unknown_svd_mode_is_refused_before_reading(call, tmp_path):
    args = {"compress": (str(tmp_path / "nowhere"), [str(tmp_path / "also-nowhere")], str(tmp_path / "out"))}
    with pytest.raises(hf_tsv.MergeInputError, match="unknown SVD mode 'approx'"):
        getattr(hf_tsv, call)(*args.get(call, (str(tmp_path / "nowhere"), [str(tmp_path / "a"), str(tmp_path / "b")])),
                              svd="approx")
