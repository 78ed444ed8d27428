"""The bad-input table of docs/bad-input.md: every row is a test whose pytest id is the row's id, and every such
test is a row. The rows that were already handled before the security review (ids ``ERR-``) are tested here, through
the CLI in-process: exit status 2, one line on stderr that names the problem, and nothing left on disk."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from conftest import copy_checkpoint

from hf_tsv.cli import main

ROOT = Path(__file__).resolve().parent.parent
TABLE = ROOT / "docs" / "bad-input.md"
ROW_ID = re.compile(r"^\|\s*([A-Z]{2,4}-\d{2})\s*\|", re.MULTILINE)
TEST_ID = re.compile(r"""id=["']([A-Z]{2,4}-\d{2})["']""")


def documented_ids() -> list[str]:
    return ROW_ID.findall(TABLE.read_text(encoding="utf-8"))


def ids_in_tests() -> set[str]:
    return {i for f in (ROOT / "tests").glob("test_*.py") for i in TEST_ID.findall(f.read_text(encoding="utf-8"))}


def test_every_row_has_a_test_and_every_test_a_row():
    rows = documented_ids()
    assert rows, f"{TABLE} has no rows"
    duplicated = sorted({r for r in rows if rows.count(r) > 1})
    assert not duplicated, f"row ids used twice in {TABLE.name}: {duplicated}"
    tests = ids_in_tests()
    assert sorted(set(rows) - tests) == [], "rows of docs/bad-input.md without a test"
    assert sorted(tests - set(rows)) == [], "bad-input tests without a row in docs/bad-input.md"


def _set(state: dict, key: str, value: torch.Tensor) -> None:
    state[key] = value


def _bad_model(kind: str, tiny: dict, tmp: Path) -> Path:
    """A broken copy of a tiny fine-tune, named ``bad``."""
    src, dst = tiny["tasks"][1], tmp / "bad"
    if kind == "shape":
        return copy_checkpoint(src, dst, edit=lambda s: _set(s, "embeddings.position_embedding.weight",
                                                           torch.zeros(18, 32)))
    if kind == "missing-key":
        return copy_checkpoint(src, dst, edit=lambda s: s.pop("encoder.layers.1.mlp.fc1.bias"))
    if kind == "extra-key":
        return copy_checkpoint(src, dst, edit=lambda s: _set(s, "encoder.layers.9.mlp.fc1.bias", torch.zeros(64)))
    if kind == "model-type":
        return copy_checkpoint(src, dst, config_edit=lambda c: c.update(model_type="vit"))
    if kind == "layers":
        return copy_checkpoint(src, dst, config_edit=lambda c: c.update(num_hidden_layers=3))
    if kind == "truncated":
        copy_checkpoint(src, dst)
        data = (dst / "model.safetensors").read_bytes()
        (dst / "model.safetensors").write_bytes(data[:-1000])
        return dst
    if kind == "nan":
        return copy_checkpoint(src, dst, edit=lambda s: s["encoder.layers.1.mlp.fc2.weight"].__setitem__(
            (3, 4), float("nan")))
    if kind == "int":
        return copy_checkpoint(src, dst, edit=lambda s: _set(s, "post_layernorm.bias",
                                                           s["post_layernorm.bias"].to(torch.int32)))
    if kind == "no-config":
        dst.mkdir()
        return dst
    raise AssertionError(kind)


MODEL_ROWS = [
    pytest.param("shape", r"model 'bad' \(.*model\.safetensors\): key 'embeddings\.position_embedding\.weight' has "
                 r"shape \[18, 32\] but the base has", id="ERR-01"),
    pytest.param("missing-key", r"model 'bad'.*key 'encoder\.layers\.1\.mlp\.fc1\.bias' of the base is missing",
                 id="ERR-02"),
    pytest.param("extra-key", r"model 'bad'.*'encoder\.layers\.9\.mlp\.fc1\.bias' is not in the base", id="ERR-03"),
    pytest.param("model-type", r"model 'bad' \(config\.json\): config\.json has model_type 'vit'; hf_tsv's CLIP",
                 id="ERR-04"),
    pytest.param("layers", r"model 'bad' \(config\.json\): num_hidden_layers is 3 but the base has 2", id="ERR-05"),
    pytest.param("truncated", r"model 'bad'.*model\.safetensors is truncated", id="ERR-06"),
    pytest.param("nan", r"model 'bad'.*key 'encoder\.layers\.1\.mlp\.fc2\.weight' contains NaN or inf", id="ERR-07"),
    pytest.param("int", r"key 'post_layernorm\.bias' has dtype torch\.int32; only floating-point", id="ERR-08"),
    pytest.param("no-config", r"model 'bad'.*config\.json not found", id="ERR-09"),
]


def run_cli(argv: list, capsys) -> tuple[int, str]:
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


def assert_one_line_error(code: int, err: str, pattern: str) -> None:
    assert code == 2, err
    assert err.strip() and "\n" not in err.strip(), f"expected one line, got:\n{err}"
    assert "Traceback" not in err
    assert re.search(pattern, err), err


def assert_nothing_left(parent: Path, name: str = "out") -> None:
    assert not (parent / name).exists()
    assert not [p.name for p in parent.iterdir() if ".tmp-" in p.name], "a temporary folder was left behind"


@pytest.mark.parametrize("kind, pattern", MODEL_ROWS)
def test_bad_fine_tune(kind, pattern, tiny, tmp_path, capsys):
    bad = _bad_model(kind, tiny, tmp_path)
    code, err = run_cli(["merge", tiny["base"], tiny["tasks"][0], bad, "-o", tmp_path / "out"], capsys)
    assert_one_line_error(code, err, pattern)
    assert_nothing_left(tmp_path)


@pytest.mark.parametrize("_row", [pytest.param(None, id="ERR-10")])
def test_unknown_method(_row, tiny, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:  # argparse refuses it before anything runs
        main([str(a) for a in ["merge", tiny["base"], *tiny["tasks"], "-o", tmp_path / "out", "--method", "slerp"]])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert_one_line_error(2, err, r"^hf-tsv merge: error: argument --method: invalid choice: 'slerp'")
    assert_nothing_left(tmp_path)


@pytest.mark.parametrize("_row", [pytest.param(None, id="ERR-11")])
def test_bad_exclude_regex(_row, tiny, tmp_path, capsys):
    code, err = run_cli(["merge", tiny["base"], *tiny["tasks"], "-o", tmp_path / "out", "--exclude", "fc["], capsys)
    assert_one_line_error(code, err, r"exclude \(--exclude\) 'fc\[' is not a valid regular expression")
    assert_nothing_left(tmp_path)


@pytest.mark.parametrize("models, pattern", [
    pytest.param("one", r"got 1 fine-tuned model\(s\); this needs at least 2", id="ERR-12"),
    pytest.param("no-such-dir", r"no such local folder, and not a valid Hub id", id="ERR-13"),
    pytest.param("not-cached", r"model 'someone/not-cached-model': .*Hub download failed \(HF_HUB_OFFLINE is set",
                 id="ERR-14"),
])
def test_bad_model_reference(models, pattern, tiny, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    refs = {"one": [tiny["tasks"][0]],
            "no-such-dir": [tiny["tasks"][0], tmp_path / "no" / "such" / "dir"],
            "not-cached": [tiny["tasks"][0], "someone/not-cached-model"]}[models]
    code, err = run_cli(["merge", tiny["base"], *refs, "-o", tmp_path / "out"], capsys)
    assert_one_line_error(code, err, pattern)
    assert_nothing_left(tmp_path)


@pytest.mark.parametrize("_row", [pytest.param(None, id="ERR-15")])
def test_existing_output_without_overwrite(_row, tiny, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    code, err = run_cli(["merge", tiny["base"], *tiny["tasks"], "-o", out], capsys)
    assert_one_line_error(code, err, r"exists and is not empty.*--overwrite")
    assert (out / "precious.txt").read_text() == "keep me"
    assert sorted(p.name for p in out.iterdir()) == ["precious.txt"]

