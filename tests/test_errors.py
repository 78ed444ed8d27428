"""Bad inputs: each gives a clear error naming the model, file and key, and leaves no partial output."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import copy_checkpoint

import hf_tsv
from hf_tsv.errors import MergeInputError, OutputExistsError


def assert_no_output(parent: Path, name: str = "out") -> None:
    assert not (parent / name).exists()
    assert not [p for p in parent.iterdir() if ".tmp-" in p.name], "a temporary folder was left behind"


def test_mismatched_shape(tiny, tmp_path):
    def grow(state):
        state["embeddings.position_embedding.weight"] = torch.zeros(18, 32)

    bad = copy_checkpoint(tiny["tasks"][1], tmp_path / "bad", edit=grow)
    with pytest.raises(MergeInputError, match=r"model 'bad' .*model\.safetensors.*position_embedding.*\[18, 32\]"):
        hf_tsv.merge(tiny["base"], [tiny["tasks"][0], bad], output_dir=tmp_path / "out")
    assert_no_output(tmp_path)


def test_missing_key(tiny, tmp_path):
    bad = copy_checkpoint(tiny["tasks"][1], tmp_path / "bad", edit=lambda s: s.pop("encoder.layers.1.mlp.fc1.bias"))
    with pytest.raises(MergeInputError, match=r"model 'bad'.*encoder\.layers\.1\.mlp\.fc1\.bias.*missing"):
        hf_tsv.merge(tiny["base"], [tiny["tasks"][0], bad], output_dir=tmp_path / "out")
    assert_no_output(tmp_path)


def test_different_architecture(tiny, tmp_path):
    bad = copy_checkpoint(tiny["tasks"][1], tmp_path / "vit", config_edit=lambda c: c.update(model_type="vit"))
    with pytest.raises(MergeInputError, match=r"model 'vit'.*config\.json.*model_type 'vit'"):
        hf_tsv.merge(tiny["base"], [tiny["tasks"][0], bad])
    wider = copy_checkpoint(tiny["tasks"][1], tmp_path / "wide", config_edit=lambda c: c.update(num_hidden_layers=3))
    with pytest.raises(MergeInputError, match=r"num_hidden_layers is 3 but the base has 2"):
        hf_tsv.merge(tiny["base"], [tiny["tasks"][0], wider])


def test_truncated_safetensors(tiny, tmp_path):
    bad = copy_checkpoint(tiny["tasks"][1], tmp_path / "cut")
    weights = bad / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) - 1000])
    with pytest.raises(MergeInputError, match=r"model 'cut'.*model\.safetensors is truncated"):
        hf_tsv.merge(tiny["base"], [tiny["tasks"][0], bad], output_dir=tmp_path / "out")
    weights.write_bytes(data[:4])
    with pytest.raises(MergeInputError, match="truncated"):
        hf_tsv.sti(tiny["base"], [tiny["tasks"][0], bad])
    assert_no_output(tmp_path)


def test_nan_in_a_task(tiny, tmp_path):
    def poison(state):
        state["encoder.layers.1.mlp.fc2.weight"][3, 4] = float("nan")

    bad = copy_checkpoint(tiny["tasks"][2], tmp_path / "nan", edit=poison)
    with pytest.raises(MergeInputError, match=r"model 'nan'.*encoder\.layers\.1\.mlp\.fc2\.weight.*NaN"):
        hf_tsv.merge(tiny["base"], [tiny["tasks"][0], bad], output_dir=tmp_path / "out")
    assert_no_output(tmp_path)


def test_non_float_tensor(tiny, tmp_path):
    def to_int(state):
        state["post_layernorm.bias"] = state["post_layernorm.bias"].to(torch.int32)

    bad = copy_checkpoint(tiny["tasks"][0], tmp_path / "int", edit=to_int)
    with pytest.raises(MergeInputError, match=r"post_layernorm\.bias.*torch\.int32"):
        hf_tsv.merge(tiny["base"], [bad, tiny["tasks"][1]])


def test_single_model_missing_folder_and_bad_options(tiny, tmp_path):
    with pytest.raises(MergeInputError, match="at least 2"):
        hf_tsv.merge(tiny["base"], [tiny["tasks"][0]])
    with pytest.raises(MergeInputError, match="config.json"):
        hf_tsv.merge(tiny["base"], [tiny["tasks"][0], tmp_path])
    with pytest.raises(MergeInputError, match="not a valid Hub id"):
        hf_tsv.merge(tiny["base"], [tiny["tasks"][0], str(tmp_path / "no" / "such" / "dir")])
    with pytest.raises(MergeInputError, match="Hub download failed.*HF_HUB_OFFLINE"):
        hf_tsv.merge(tiny["base"], [tiny["tasks"][0], "someone/not-cached-model"])
    with pytest.raises(MergeInputError, match="unknown method"):
        hf_tsv.merge(tiny["base"], tiny["tasks"], method="slerp")
    with pytest.raises(MergeInputError, match="regular expression"):
        hf_tsv.merge(tiny["base"], tiny["tasks"], exclude="fc[")


def test_existing_output_is_kept(tiny, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    with pytest.raises(OutputExistsError, match="--overwrite"):
        hf_tsv.merge(tiny["base"], tiny["tasks"], output_dir=out)
    assert (out / "precious.txt").read_text() == "keep me"
    # --overwrite replaces only an earlier hf-tsv output (issue 10, defect 5), never a folder of other files
    with pytest.raises(OutputExistsError, match="not an hf-tsv output"):
        hf_tsv.merge(tiny["base"], tiny["tasks"], output_dir=out, overwrite=True)
    assert (out / "precious.txt").read_text() == "keep me"
    # a failing overwrite leaves the old folder as it was
    earlier = tmp_path / "earlier"
    hf_tsv.merge(tiny["base"], tiny["tasks"], output_dir=earlier)
    before = {p.name: p.read_bytes() for p in earlier.iterdir()}
    bad = copy_checkpoint(tiny["tasks"][2], tmp_path / "nan",
                          edit=lambda s: s["post_layernorm.weight"].fill_(float("inf")))
    with pytest.raises(MergeInputError, match="NaN or inf"):
        hf_tsv.merge(tiny["base"], [tiny["tasks"][0], bad], output_dir=earlier, overwrite=True)
    assert {p.name: p.read_bytes() for p in earlier.iterdir()} == before


def test_cli_errors_are_one_line_and_exit_nonzero(tiny, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "hf_tsv.cli", "merge", tiny["base"], tiny["tasks"][0], "-o", str(tmp_path / "o")]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "at least 2" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = subprocess.run(cmd[:4] + ["--method", "nope"], capture_output=True, text=True, env=env)
    assert proc.returncode == 2 and "invalid choice" in proc.stderr
    assert_no_output(tmp_path, "o")
