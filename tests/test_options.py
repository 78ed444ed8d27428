"""Options are checked once, before any model is resolved (issue 10: defects 4, 7, 8 and 11).

Bad-input rows OPT-xx: every bad option gives a one-line error (exit 2) or an ``HFTSVError`` naming the option,
before any download — the models of the option rows are Hub ids that are not cached (HF_HUB_OFFLINE=1), so
resolving them first would fail differently. Also: finiteness of every input and output tensor, duplicate
models, fine-tunes stored narrower than the base, and strict JSON.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import copy_checkpoint, load_state

import hf_tsv
from hf_tsv.cli import main
from hf_tsv.errors import HFTSVError, MergeInputError

UNCACHED = ["ns/never-downloaded-base", "ns/never-downloaded-a", "ns/never-downloaded-b"]


def strict_json(path: Path):
    """Parse JSON as strict parsers do: NaN and Infinity are not JSON."""
    def refuse(constant):
        raise AssertionError(f"{path.name} holds {constant}, which is not JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


def run_cli(args: list, capsys) -> tuple[int, str]:
    """``hf-tsv ARGS`` in this process: (exit code, stderr). The CLI sets torch's thread count; it is restored."""
    threads = torch.get_num_threads()
    try:
        code = main([str(a) for a in args])
    except SystemExit as exc:  # argparse
        code = exc.code
    finally:
        torch.set_num_threads(threads)
    return code, capsys.readouterr().err


def assert_one_line_error(code: int, err: str, pattern: str) -> None:
    import re

    assert code == 2, err
    lines = [line.split("\r")[-1] for line in err.split("\n")]  # progress bars redraw with \r
    lines = [line for line in lines if line.strip() and not line.startswith("note:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert re.search(pattern, lines[0]), lines[0]


def nothing_left(folder: Path, name: str = "out") -> None:
    assert not (folder / name).exists()
    assert not [p for p in folder.iterdir() if ".tmp-" in p.name], "a temporary folder was left behind"


# --------------------------------------------------------------------------------------------------------------
# The command line: every option checked before any model is resolved
# --------------------------------------------------------------------------------------------------------------

MERGE = ["merge", *UNCACHED, "-o", "{out}"]

CLI_OPTION_ROWS = [
    pytest.param([*MERGE, "--alpha", "nan"], r"alpha \(--alpha\) must be a finite number, got nan", id="OPT-01"),
    pytest.param([*MERGE, "--alpha", "inf"], r"alpha \(--alpha\) must be a finite number, got inf", id="OPT-02"),
    pytest.param([*MERGE, "--alpha=-inf"], r"must be a finite number, got -inf", id="OPT-03"),
    pytest.param([*MERGE, "--alpha", "search", "--alpha-grid", "nan,inf", "--eval", "{missing_spec}"],
                 r"--alpha-grid\) 'nan,inf': every value must be a finite number", id="OPT-04"),
    pytest.param([*MERGE, "--alpha", "search", "--alpha-grid", "0:inf:1", "--eval", "{missing_spec}"],
                 r"--alpha-grid\) '0:inf:1': every value must be a finite number", id="OPT-05"),
    pytest.param([*MERGE, "--alpha-grid", "0.1,0.5"], r"--alpha-grid only applies with --alpha search", id="OPT-06"),
    pytest.param([*MERGE, "--alpha", "0.5", "--alpha-grid", "0.1,0.5", "--eval", "{missing_spec}"],
                 r"--alpha-grid only applies with --alpha search", id="OPT-07"),
    pytest.param([*MERGE, "--method", "ties", "--ties-density", "1.5"],
                 r"ties_density \(--ties-density\) must be in \(0, 1\], got 1.5", id="OPT-08"),
    pytest.param([*MERGE, "--method", "ties", "--ties-density", "0"], r"--ties-density\) must be in \(0, 1\]",
                 id="OPT-09"),
    pytest.param([*MERGE, "--method", "ties", "--ties-density", "nan"],
                 r"--ties-density\) must be a finite number", id="OPT-10"),
    pytest.param([*MERGE, "--method", "iso-cts", "--iso-common-fraction", "1.5"],
                 r"iso_common_fraction \(--iso-common-fraction\) must be in \(0, 1\]", id="OPT-11"),
    pytest.param([*MERGE, "--device", "bogus"], r"device \(--device\): cannot compute on 'bogus'", id="OPT-12"),
    pytest.param([*MERGE, "--device", "meta"], r"device \(--device\): cannot compute on 'meta'", id="OPT-13"),
    pytest.param([*MERGE, "--device", "cuda:99"], r"device \(--device\): 'cuda:99'", id="OPT-14"),
    pytest.param(["sti", *UNCACHED, "--device", "bogus"], r"cannot compute on 'bogus'", id="OPT-15"),
    pytest.param(["compress", *UNCACHED, "-o", "{out}", "--device", "meta"], r"cannot compute on 'meta'",
                 id="OPT-16"),
    pytest.param([*MERGE, "--dry-run", "--alpha", "nan"], r"alpha \(--alpha\) must be a finite number", id="OPT-17"),
    pytest.param(["plan", *UNCACHED, "--exclude", "fc["], r"exclude \(--exclude\) 'fc\[' is not a valid regular",
                 id="OPT-18"),
    pytest.param(["example", "-o", "{out}", "--preset", "bogus"], r"unknown preset 'bogus' \(--preset\)",
                 id="OPT-19"),
    pytest.param(["example", "-o", "{out}", "--num-tasks", "1"], r"--num-tasks must be at least 2", id="OPT-20"),
    pytest.param(["eval", UNCACHED[0], "--tasks", "{missing_spec}", "--device", "bogus"],
                 r"cannot compute on 'bogus'", id="OPT-60"),
    pytest.param(["expand", "{missing_spec}", "--task", "0", "-o", "{out}", "--device", "meta"],
                 r"cannot compute on 'meta'", id="OPT-61"),
]


@pytest.mark.parametrize("args, pattern", CLI_OPTION_ROWS)
def test_cli_refuses_bad_options_before_any_model_is_resolved(args, pattern, tmp_path, capsys):
    values = {"out": tmp_path / "out", "missing_spec": tmp_path / "no-such-spec.json"}
    code, err = run_cli([str(a).format(**values) for a in args], capsys)
    assert_one_line_error(code, err, pattern)
    assert "Hub download failed" not in err and "no-such-spec" not in err
    nothing_left(tmp_path)


# --------------------------------------------------------------------------------------------------------------
# The Python API: HFTSVError subclasses for wrong types and values, never bare ValueError/TypeError
# --------------------------------------------------------------------------------------------------------------

def _search(models=UNCACHED[1:], **kwargs):
    from hf_tsv.evaluation.select import merge_with_alpha_search

    return merge_with_alpha_search(UNCACHED[0], models, None, **kwargs)


API_ROWS = [
    pytest.param(lambda: hf_tsv.merge(UNCACHED[0], UNCACHED[1:], exclude=123),
                 r"exclude \(--exclude\) must be a regular expression \(a string\) or None, got int 123", id="OPT-21"),
    pytest.param(lambda: hf_tsv.merge(UNCACHED[0], None), r"models must be a list .* got NoneType None",
                 id="OPT-22"),
    pytest.param(lambda: hf_tsv.merge(None, UNCACHED[1:]), r"base must be a local folder, a Hub id .* got NoneType",
                 id="OPT-23"),
    pytest.param(lambda: hf_tsv.merge(UNCACHED[0], [UNCACHED[1], 123]), r"models\[1\] must be a local folder",
                 id="OPT-24"),
    pytest.param(lambda: hf_tsv.merge("", UNCACHED[1:]), r"base is an empty string", id="OPT-25"),
    pytest.param(lambda: hf_tsv.merge(UNCACHED[0], UNCACHED[1:], alpha="abc"),
                 r"alpha \(--alpha\) must be a number, got str 'abc'", id="OPT-26"),
    pytest.param(lambda: hf_tsv.merge(UNCACHED[0], UNCACHED[1:], alpha=True), r"alpha \(--alpha\) must be a number",
                 id="OPT-27"),
    pytest.param(lambda: hf_tsv.merge(UNCACHED[0], UNCACHED[1:], alpha=float("nan")),
                 r"must be a finite number, got nan", id="OPT-28"),
    pytest.param(lambda: hf_tsv.merge(UNCACHED[0], UNCACHED[1:], fuse_qkv="yes"),
                 r"fuse_qkv \(--fuse-qkv\) must be True or False", id="OPT-29"),
    pytest.param(lambda: hf_tsv.merge(UNCACHED[0], UNCACHED[1:], dtype="int8"), r"dtype \(--dtype\): unknown dtype",
                 id="OPT-30"),
    pytest.param(lambda: hf_tsv.merge(UNCACHED[0], UNCACHED[1:], dtype=torch.int32),
                 r"torch.int32 is not a floating-point dtype", id="OPT-31"),
    pytest.param(lambda: hf_tsv.merge(UNCACHED[0], UNCACHED[1:], compute_dtype=torch.float16),
                 r"compute_dtype \(--svd-dtype\) must be float32 or float64", id="OPT-32"),
    pytest.param(lambda: hf_tsv.sti(UNCACHED[0], UNCACHED[1:], compute_dtype="float16"),
                 r"compute_dtype \(--svd-dtype\) must be float32 or float64", id="OPT-33"),
    pytest.param(lambda: hf_tsv.compress(UNCACHED[0], UNCACHED[1:], "never", compute_dtype=torch.bfloat16),
                 r"compute_dtype \(--svd-dtype\) must be float32 or float64", id="OPT-34"),
    pytest.param(lambda: hf_tsv.sti(UNCACHED[0], UNCACHED[1:], device="bogus"), r"cannot compute on 'bogus'",
                 id="OPT-35"),
    pytest.param(lambda: hf_tsv.merge(UNCACHED[0], UNCACHED[1:], device=0),
                 r"device \(--device\) must be a device name", id="OPT-36"),
    pytest.param(lambda: hf_tsv.merge(UNCACHED[0], UNCACHED[1:], method=["tsv-m"]), r"unknown method \['tsv-m'\]",
                 id="OPT-37"),
    pytest.param(lambda: hf_tsv.merge(UNCACHED[0], UNCACHED[1:], svd=None), r"unknown SVD mode None", id="OPT-38"),
    pytest.param(lambda: hf_tsv.merge(UNCACHED[0], UNCACHED[1:], method="ties", ties_density="0.5"),
                 r"ties_density \(--ties-density\) must be a number, got str '0.5'", id="OPT-39"),
    pytest.param(lambda: hf_tsv.merge_linear(UNCACHED[0], UNCACHED[1:], method="iso-cts", iso_common_fraction=2),
                 r"iso_common_fraction \(--iso-common-fraction\) must be in \(0, 1\], got 2", id="OPT-40"),
    pytest.param(lambda: hf_tsv.merge(UNCACHED[0], UNCACHED[1:], ties_dentisy=0.3),
                 r"unknown option 'ties_dentisy'; the options are .*ties_density", id="OPT-41"),
    pytest.param(lambda: hf_tsv.plan(UNCACHED[0], UNCACHED[1:], alpha=float("inf")),
                 r"alpha \(--alpha\) must be a finite number, got inf", id="OPT-42"),
    pytest.param(lambda: hf_tsv.compress(UNCACHED[0], UNCACHED[1:], "never", rank_fraction="abc"),
                 r"rank_fraction must be a number, got str 'abc'", id="OPT-43"),
    pytest.param(lambda: hf_tsv.compress(UNCACHED[0], UNCACHED[1:], "never", rank_fraction=float("nan")),
                 r"rank_fraction must be a finite number", id="OPT-44"),
    pytest.param(lambda: hf_tsv.merge(UNCACHED[0], UNCACHED[1:], allow_duplicates="no"),
                 r"allow_duplicates \(--allow-duplicates\) must be True or False", id="OPT-45"),
    pytest.param(lambda: _search(grid=[0.5, float("nan")]), r"alpha_grid \(--alpha-grid\) must be a finite number",
                 id="OPT-46"),
    pytest.param(lambda: _search(alpha=0.5, grid=[0.1, 0.5]), r"alpha_grid \(--alpha-grid\) is the grid of an α "
                 "search; it cannot be combined with a fixed alpha", id="OPT-47"),
    pytest.param(lambda: _search(grid="0:1e9:1e-3"), r"has 1000000000001 values; at most 1000", id="OPT-48"),
    pytest.param(lambda: _search(models=None), r"models must be a list", id="OPT-49"),
    pytest.param(lambda: hf_tsv.merge(UNCACHED[0], UNCACHED[1:], output_dir="never", overwrite="False"),
                 r"overwrite \(--overwrite\) must be True or False, got str 'False'", id="OPT-63"),
    pytest.param(lambda: hf_tsv.merge(UNCACHED[0], UNCACHED[1:], output_dir="never", max_shard_size=1.5),
                 r"max_shard_size \(--max-shard-size\) must be a number of bytes", id="OPT-64"),
    pytest.param(lambda: hf_tsv.compress(UNCACHED[0], UNCACHED[1:], "never", max_shard_size="5XB"),
                 r"cannot read size '5XB'", id="OPT-65"),
    pytest.param(lambda: hf_tsv.merge(UNCACHED[0], UNCACHED[1:], output_dir="never", max_shard_size=0),
                 r"max_shard_size \(--max-shard-size\) must be at least 1 byte", id="OPT-66"),
    pytest.param(lambda: hf_tsv.plan(UNCACHED[0], UNCACHED[1:], revision=3),
                 r"revision \(--revision\) must be a branch, tag or commit", id="OPT-67"),
]


@pytest.mark.parametrize("call, pattern", API_ROWS)
def test_python_api_raises_hftsv_errors_before_resolving(call, pattern):
    with pytest.raises(HFTSVError, match=pattern) as info:
        call()
    assert type(info.value) is MergeInputError  # an HFTSVError subclass, never a bare ValueError/TypeError
    assert "Hub download failed" not in str(info.value)


@pytest.mark.parametrize("bad, pattern", [
    (dict(device="bogus"), r"cannot compute on 'bogus'"),
    (dict(device="meta"), r"cannot compute on 'meta'"),
    (dict(compute_dtype=torch.float16), r"compute_dtype \(--svd-dtype\) must be float32 or float64"),
    (dict(exclude=123), r"exclude \(--exclude\) must be a regular expression"),
    (dict(fuse_qkv="yes"), r"fuse_qkv \(--fuse-qkv\) must be True or False"),
    (dict(svd="approx"), r"unknown SVD mode 'approx'"),
])
@pytest.mark.parametrize("entry", ["merge", "merge_linear", "sti", "plan", "compress", "alpha search"])
def test_every_entry_point_checks_options_identically(entry, bad, pattern):
    from hf_tsv.evaluation.select import merge_with_alpha_search

    calls = {
        "merge": lambda: hf_tsv.merge(UNCACHED[0], UNCACHED[1:], **bad),
        "merge_linear": lambda: hf_tsv.merge_linear(UNCACHED[0], UNCACHED[1:], **bad),
        "sti": lambda: hf_tsv.sti(UNCACHED[0], UNCACHED[1:], **bad),
        "plan": lambda: hf_tsv.plan(UNCACHED[0], UNCACHED[1:], **bad),
        "compress": lambda: hf_tsv.compress(UNCACHED[0], UNCACHED[1:], "never", **bad),
        "alpha search": lambda: merge_with_alpha_search(UNCACHED[0], UNCACHED[1:], None, **bad),
    }
    with pytest.raises(MergeInputError, match=pattern):
        calls[entry]()


def test_the_space_worker_refuses_bad_options_before_resolving(tmp_path):
    """The Space's worker goes through the same API: a job with a bad device fails with the option's message."""
    sys.path.insert(0, str(Path(__file__).parent.parent / "spaces_app"))
    try:
        import space_worker
    finally:
        sys.path.pop(0)
    job = space_worker.MergeJob(base=UNCACHED[0], models=tuple(UNCACHED[1:]), method="tsv-m", alpha=float("nan"),
                                fuse_qkv=False, device="cpu", output=str(tmp_path / "out"), command="hf-tsv merge")
    with pytest.raises(MergeInputError, match="finite number"):
        space_worker.run_merge(job)
    with pytest.raises(MergeInputError, match="cannot compute on 'meta'"):
        space_worker.run_sti(space_worker.StiJob(base=job.base, models=job.models, fuse_qkv=False, device="meta"))


# --------------------------------------------------------------------------------------------------------------
# MergeOptions itself
# --------------------------------------------------------------------------------------------------------------

def test_merge_options_normalise_and_record_method_parameters():
    from hf_tsv.methods import PARAMETERS, MethodOptions
    from hf_tsv.options import MergeOptions

    assert hf_tsv.MergeOptions is MergeOptions
    opts = MergeOptions.from_arguments(method="ties", alpha=1, ties_density=0.5, dtype="bf16", compute_dtype="fp64",
                                       device="cpu", alpha_grid=None)
    assert opts.alpha == 1.0 and isinstance(opts.alpha, float)
    assert opts.dtype == torch.bfloat16 and opts.compute_dtype == torch.float64
    assert opts.device == torch.device("cpu")
    assert opts.method_parameters() == {"ties_density": 0.5, "ties_merge": "mean", "ties_scope": "model"}
    assert MergeOptions(method="tsv-m").method_parameters() == {}
    assert MergeOptions(method="avg", alpha=5).effective_alpha == 1.0
    assert MergeOptions(method="ta").effective_alpha == 0.3
    assert MergeOptions(method="ties").effective_alpha == 1.0  # the disjoint mean's λ ≈ 1
    assert MergeOptions.from_arguments(method="ties", ties_merge="sum").effective_alpha == 0.3
    assert MergeOptions(alpha_grid="0.5:1.5:0.5").alpha_grid == (0.5, 1.0, 1.5)
    with pytest.raises(MergeInputError):
        MergeOptions(method_options=MethodOptions(ties_density=-1))
    with pytest.raises(dataclasses.FrozenInstanceError):
        opts.alpha = 2.0
    # every method parameter is an option of MethodOptions, declared by the methods that read it
    assert set(MethodOptions().parameters) == set(PARAMETERS)
    for name, spec in PARAMETERS.items():
        assert spec.flag.startswith("--") and spec.methods and all(m in hf_tsv.METHODS for m in spec.methods), name


def test_report_records_the_method_parameters_used(tiny):
    ties = hf_tsv.merge(tiny["base"], tiny["tasks"], method="ties", ties_density=0.5).report
    assert ties.options.parameters["ties_density"] == 0.5 and "iso_common_fraction" not in ties.options.parameters
    iso = hf_tsv.merge(tiny["base"], tiny["tasks"], method="iso-cts", iso_common_fraction=0.5).report
    assert iso.options.parameters["iso_common_fraction"] == 0.5 and "ties_density" not in iso.options.parameters


# --------------------------------------------------------------------------------------------------------------
# Defect 4: non-finite numbers in inputs and outputs, and strict JSON
# --------------------------------------------------------------------------------------------------------------

def _poisoned(src: str, folder: Path, value: float, key: str = "encoder.layers.0.mlp.fc1.weight") -> Path:
    def poison(state):
        state[key].view(-1)[5] = value

    return copy_checkpoint(src, folder, edit=poison)


@pytest.mark.parametrize("call", [
    pytest.param("merge", id="OPT-50"),
    pytest.param("sti", id="OPT-51"),
    pytest.param("compress", id="OPT-52"),
])
def test_nan_in_the_base_names_the_base_and_key(call, tiny, tmp_path):
    base = _poisoned(tiny["base"], tmp_path / "nan_base", float("nan"))
    calls = {"merge": lambda: hf_tsv.merge(base, tiny["tasks"], output_dir=tmp_path / "out"),
             "sti": lambda: hf_tsv.sti(base, tiny["tasks"]),
             "compress": lambda: hf_tsv.compress(base, tiny["tasks"], tmp_path / "out")}
    with pytest.raises(MergeInputError, match=r"model 'nan_base' \(.*model\.safetensors\): key "
                       r"'encoder\.layers\.0\.mlp\.fc1\.weight' contains NaN or inf values"):
        calls[call]()
    nothing_left(tmp_path)


@pytest.mark.parametrize("_row", [pytest.param(None, id="OPT-68")])
def test_inf_in_the_base_on_the_command_line(_row, tiny, tmp_path, capsys):
    base = _poisoned(tiny["base"], tmp_path / "inf_base", float("inf"), key="post_layernorm.weight")
    code, err = run_cli(["merge", base, *tiny["tasks"], "-o", tmp_path / "out"], capsys)
    assert_one_line_error(code, err, r"model 'inf_base' .*key 'post_layernorm\.weight' contains NaN or inf values")
    nothing_left(tmp_path)


@pytest.mark.parametrize("method", [pytest.param("tsv-m", id="OPT-53"), pytest.param("iso-c", id="OPT-54")])
def test_huge_finite_inputs_fail_at_the_output_check(method, tiny, tmp_path, capsys):
    """Inputs ×1e37 are finite, but their SVDs overflow float32: the output check refuses to write NaN."""
    def scale(state):
        for value in state.values():
            value.mul_(1e37)

    base, *tasks = (copy_checkpoint(p, tmp_path / Path(p).name, edit=scale) for p in [tiny["base"], *tiny["tasks"]])
    code, err = run_cli(["merge", base, *tasks, "-o", tmp_path / "out", "--method", method], capsys)
    assert_one_line_error(code, err, r"the merged tensor of key '.*' \(float32\) contains NaN or inf values.*"
                          r"--svd-dtype float64")
    nothing_left(tmp_path)
    with pytest.raises(MergeInputError, match=r"the STI of key .* contains NaN or inf values"):
        hf_tsv.sti(base, tasks)


@pytest.mark.parametrize("_row", [pytest.param(None, id="OPT-69")])
def test_output_dtype_overflow_is_refused(_row, tiny, tmp_path):
    """θ₀ + α·Δ finite in float32 but beyond float16's range: refused, not written as inf."""
    with pytest.raises(MergeInputError, match=r"merged tensor of key .*\(float16\) contains NaN or inf values"):
        hf_tsv.merge(tiny["base"], tiny["tasks"], alpha=1e12, dtype="float16", output_dir=tmp_path / "out")
    nothing_left(tmp_path)


@pytest.mark.parametrize("part", [pytest.param("u", id="OPT-62")])
def test_expand_refuses_non_finite_factors(part, tiny, tmp_path):
    """An edited TSV-C folder whose factors hold NaN: the rebuilt tensor is checked before it is written."""
    from safetensors.torch import load_file, save_file

    hf_tsv.compress(tiny["base"], tiny["tasks"], tmp_path / "c")
    factors = load_file(str(tmp_path / "c" / "tsv_c.safetensors"))
    key = f"tasks.1.encoder.layers.0.mlp.fc1.weight.{part}"
    factors[key].view(-1)[0] = float("nan")
    save_file(factors, str(tmp_path / "c" / "tsv_c.safetensors"))
    with pytest.raises(MergeInputError, match=r"the rebuilt tensor of key 'encoder\.layers\.0\.mlp\.fc1\.weight' "
                       r"contains NaN or inf values"):
        hf_tsv.expand(tmp_path / "c", "task_01", tmp_path / "out")
    nothing_left(tmp_path)


@pytest.mark.parametrize("_row", [pytest.param(None, id="OPT-72")])
def test_linear_merge_refuses_non_finite_alpha(_row, tiny):
    linear = hf_tsv.merge_linear(tiny["base"], tiny["tasks"], method="ta")
    with pytest.raises(MergeInputError, match="finite"):
        linear.at(float("nan"))
    with pytest.raises(MergeInputError, match="must be a number"):
        linear.state_dict("0.5")


def test_every_json_written_is_strict(tiny, tmp_path, capsys):
    from hf_tsv.io.output import write_json
    from hf_tsv.json_io import dumps_json

    with pytest.raises(MergeInputError, match=r"cannot write report\.json: sti\.keys\['a\.b'\] is nan"):
        write_json(tmp_path / "report.json", {"sti": {"keys": {"a.b": float("nan")}}})
    assert not (tmp_path / "report.json").exists()
    with pytest.raises(MergeInputError, match=r"grid\[1\] is inf"):
        dumps_json({"grid": [1.0, math.inf]})
    with pytest.raises(MergeInputError, match="JSON has no NaN"):
        hf_tsv.STIReport({"k": float("nan")}, float("nan"), 2).to_json(tmp_path / "sti.json")
    assert run_cli(["merge", tiny["base"], *tiny["tasks"], "-o", tmp_path / "m"], capsys)[0] == 0
    assert run_cli(["sti", tiny["base"], *tiny["tasks"], "--json", tmp_path / "sti.json"], capsys)[0] == 0
    assert run_cli(["plan", tiny["base"], *tiny["tasks"], "--json", tmp_path / "plan.json"], capsys)[0] == 0
    for path in [tmp_path / "m" / "merge_report.json", tmp_path / "sti.json", tmp_path / "plan.json"]:
        strict_json(path)


# --------------------------------------------------------------------------------------------------------------
# Defect 8: the same model twice, the base as a fine-tune, mixed precision
# --------------------------------------------------------------------------------------------------------------

DUPLICATE_ROWS = [
    pytest.param(lambda ck, tmp: [ck["tasks"][0], ck["tasks"][0]],
                 r"fine-tuned models 'task_00#0' and 'task_00#1' are one checkpoint \(the same folder\)", id="OPT-55"),
    pytest.param(lambda ck, tmp: [ck["tasks"][0], ck["base"]],
                 r"fine-tuned model 'base' is the base itself \(the same folder\): its task vector is zero",
                 id="OPT-56"),
    pytest.param(lambda ck, tmp: [ck["tasks"][1], _symlink(ck["tasks"][1], tmp / "alias")],
                 r"are one checkpoint \(the same folder\)", id="OPT-57"),
    pytest.param(lambda ck, tmp: [ck["tasks"][0], copy_checkpoint(ck["tasks"][0], tmp / "copy")],
                 r"fine-tuned models 'task_00' and 'copy' are one checkpoint \(identical weights\)", id="OPT-58"),
    pytest.param(lambda ck, tmp: [ck["tasks"][0], copy_checkpoint(ck["base"], tmp / "base_copy")],
                 r"fine-tuned model 'base_copy' is the base itself \(identical weights\)", id="OPT-59"),
]


def _symlink(target: str, link: Path) -> Path:
    link.symlink_to(Path(target).resolve(), target_is_directory=True)
    return link


@pytest.mark.parametrize("models, pattern", DUPLICATE_ROWS)
def test_duplicate_models_are_refused(models, pattern, tiny, tmp_path, capsys):
    refs = models(tiny, tmp_path)
    code, err = run_cli(["merge", tiny["base"], *refs, "-o", tmp_path / "out"], capsys)
    assert_one_line_error(code, err, pattern + r".*pass --allow-duplicates")
    nothing_left(tmp_path)
    with pytest.raises(MergeInputError, match=pattern):
        hf_tsv.sti(tiny["base"], refs)


def test_allow_duplicates_merges_with_a_warning_in_the_report(tiny, tmp_path, capsys):
    code, err = run_cli(["merge", tiny["base"], tiny["tasks"][0], tiny["tasks"][0], "-o", tmp_path / "out",
                         "--allow-duplicates"], capsys)
    assert code == 0, err
    assert "warning: fine-tuned models 'task_00#0' and 'task_00#1' are one checkpoint" in err
    report = strict_json(tmp_path / "out" / "merge_report.json")
    assert report["warnings"] == ["fine-tuned models 'task_00#0' and 'task_00#1' are one checkpoint (the same "
                                  "folder): that task would count twice; merged anyway (allow_duplicates)"]
    in_memory = hf_tsv.merge(tiny["base"], [tiny["tasks"][0], tiny["tasks"][0]], allow_duplicates=True)
    assert in_memory.report.warnings == report["warnings"]


def test_different_fine_tunes_with_equal_fingerprints_are_not_duplicates(tiny, tmp_path, monkeypatch):
    """The sampled fingerprint is only a first filter: models are called identical when every tensor is."""
    from hf_tsv import engine

    monkeypatch.setattr(engine, "_content_digest", lambda model: "sha256:always-the-same")
    hf_tsv.plan(tiny["base"], tiny["tasks"])  # no error: their weights differ


@pytest.mark.parametrize("_row", [pytest.param(None, id="OPT-71")])
def test_in_memory_model_given_twice_is_refused(_row, tiny):
    from transformers import CLIPVisionModel

    model = CLIPVisionModel.from_pretrained(tiny["tasks"][0])
    with pytest.raises(MergeInputError, match=r"'model_0' and 'model_1' are one checkpoint \(identical weights\)"):
        hf_tsv.plan(tiny["base"], [model, model])


@pytest.fixture
def hub_models(tiny, tmp_path):
    """The loopback test Hub (online for the test's duration: running_hub sets and restores HF_HUB_OFFLINE)."""
    from hub_server import running_hub
    from huggingface_hub import HfApi

    with running_hub(tmp_path / "hub") as hub:
        api = HfApi()
        for name, folder in [("base", tiny["base"]), ("ft0", tiny["tasks"][0]), ("ft1", tiny["tasks"][1])]:
            api.create_repo(f"ns/{name}")
            api.upload_folder(repo_id=f"ns/{name}", folder_path=folder)
        yield hub


@pytest.mark.parametrize("_row", [pytest.param(None, id="OPT-70")])
def test_hub_id_and_its_main_revision_are_one_model(_row, hub_models):
    sha = hub_models.repos["ns/ft0"].commits[-1].oid
    with pytest.raises(MergeInputError, match=rf"one checkpoint \(the same Hub commit {sha}\)"):
        hf_tsv.plan("ns/base", ["ns/ft0", "ns/ft0@main", "ns/ft1"])
    with pytest.raises(MergeInputError, match=r"is the base itself \(the same Hub commit"):
        hf_tsv.plan("ns/base", ["ns/ft0", "ns/base@main"])


def _bf16_fine_tunes(tiny, tmp_path) -> list[Path]:
    def to_bf16(state):
        for key in state:
            state[key] = state[key].to(torch.bfloat16)

    return [copy_checkpoint(t, tmp_path / Path(t).name, edit=to_bf16,
                            config_edit=lambda c: c.update(dtype="bfloat16", torch_dtype="bfloat16"))
            for t in tiny["tasks"]]


def test_mixed_precision_task_vectors_subtract_the_rounded_base(tiny, tmp_path):
    """fp32 base, bf16 fine-tunes trained from the bf16-rounded base: τ = ft − bf16(base) is exactly each
    fine-tune's own update, where ft − base would add the base's rounding error (here twice the update)."""
    from hf_tsv.engine import Timer, build_plan, iter_units

    base = load_state(tiny["base"])
    updates = [{k: v - base[k] for k, v in load_state(t).items()} for t in tiny["tasks"]]

    def trained_in_bf16(update):
        def edit(state):
            for key in state:
                state[key] = (base[key].to(torch.bfloat16).float() + update[key]).to(torch.bfloat16)
        return edit

    tasks = [copy_checkpoint(t, tmp_path / Path(t).name, edit=trained_in_bf16(u),
                             config_edit=lambda c: c.update(dtype="bfloat16", torch_dtype="bfloat16"))
             for t, u in zip(tiny["tasks"], updates)]
    plan = build_plan(tiny["base"], tasks)
    assert plan.mixed_precision["models"] == {"task_00": ["bfloat16"], "task_01": ["bfloat16"],
                                              "task_02": ["bfloat16"]}
    tuned = [load_state(t) for t in tasks]
    naive_error = update_norm = 0.0
    for item in iter_units(plan, torch.device("cpu"), torch.float32, Timer()):
        key = item.unit.keys[0]
        for t in range(3):
            own_update = tuned[t][key].float() - base[key].to(torch.bfloat16).float()
            assert torch.equal(item.task_vectors[t], own_update), key
            naive = tuned[t][key].float() - base[key]
            naive_error += float((naive - own_update).norm() ** 2)
            update_norm += float(own_update.norm() ** 2)
    assert (naive_error / update_norm) ** 0.5 > 1.0  # what subtracting the fp32 base would have cost


def test_mixed_precision_is_warned_and_recorded(tiny, tmp_path, capsys):
    tasks = _bf16_fine_tunes(tiny, tmp_path)
    code, err = run_cli(["merge", tiny["base"], *tasks, "-o", tmp_path / "out", "--method", "ta"], capsys)
    assert code == 0, err
    assert "warning: mixed precision: the base is float32 but fine-tuned models 'task_00' (bfloat16)" in err
    report = strict_json(tmp_path / "out" / "merge_report.json")
    rule = "each fine-tune minus the base rounded to that fine-tune's dtype"
    assert report["mixed_precision"]["task_vectors"] == rule
    assert report["mixed_precision"]["rounded_keys"] == 3 * len(load_state(tiny["base"]))
    assert any(w.startswith("mixed precision") for w in report["warnings"])
    same_precision = hf_tsv.merge(tiny["base"], tiny["tasks"], method="ta").report
    assert "mixed_precision" not in same_precision.to_dict() and "warnings" not in same_precision.to_dict()


def test_cli_bad_options_print_one_line_without_traceback(tmp_path):
    """The real command, in a subprocess: one line on stderr, exit 2."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "hf_tsv.cli", "merge", *UNCACHED, "-o", str(tmp_path / "o"),
                           "--method", "ties", "--ties-density", "7"], capture_output=True, text=True, env=env)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "--ties-density" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_method_parameter_another_method_ignores_is_noted(tiny, capsys):
    code, err = run_cli(["merge", tiny["base"], *tiny["tasks"], "--dry-run", "--ties-density", "0.3"], capsys)
    assert code == 0 and "note: --ties-density only applies to --method ties; tsv-m ignores it" in err
    code, err = run_cli(["merge", tiny["base"], *tiny["tasks"], "--dry-run", "--method", "ties", "--ties-density",
                         "0.3"], capsys)
    assert code == 0 and "note:" not in err


@pytest.mark.parametrize("values, finite", [
    ([3e38] * 1000, True),  # finite, but the float32 sum overflows: the elementwise test decides
    ([1.0, float("nan"), 2.0], False),
    ([float("inf"), 1.0], False),
    ([float("inf"), -float("inf")], False),
    ([1e300, 1e300], True),
])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_finiteness_check_is_exact_whatever_the_sum_does(values, finite, dtype):
    from hf_tsv.engine import all_finite

    tensor = torch.tensor(values, dtype=torch.float64).to(dtype)
    expected = bool(torch.isfinite(tensor).all())
    assert all_finite(tensor) is expected
    if dtype == torch.float64:
        assert expected is finite
