"""Model cards (hf_tsv/card/, `hf-tsv card`): metadata, STI and evaluation sections, no local paths."""

from __future__ import annotations

import json
import shlex
import shutil
from pathlib import Path

import pytest
from huggingface_hub import ModelCard

import hf_tsv
from hf_tsv.cli import main
from hf_tsv.secrets import public_command
from hf_tsv.sti_table import sti_table

EVALS = {"tasks": {"cars": {"absolute": 61.234, "normalized": 80.5}, "dtd": {"absolute": 50.0, "normalized": 90.25}},
         "dataset_ids": {"cars": "tanganke/stanford_cars", "dtd": "tanganke/dtd"}}


@pytest.fixture(scope="module")
def merged(tiny, tmp_path_factory) -> Path:
    """A TSV-M merge of the tiny checkpoints whose recorded command holds absolute local paths (as typed)."""
    out = tmp_path_factory.mktemp("card") / "merged"
    command = shlex.join(["hf-tsv", "merge", str(tiny["base"]), *map(str, tiny["tasks"]), "-o", str(out),
                          "--token", "***"])
    hf_tsv.merge(tiny["base"], tiny["tasks"], output_dir=out, device="cpu", command=command)
    return out


@pytest.fixture
def folder(merged, tmp_path) -> Path:
    return Path(shutil.copytree(merged, tmp_path / "clip-merged"))


def _local_paths(tiny, *more) -> list[str]:
    paths = [str(Path(tiny["base"]).resolve().parent), *map(str, more)]
    return [p for p in paths if len(p) > 8]


def test_card_metadata_parses_back(folder, tiny):
    result = hf_tsv.write_card(folder, repo_id="ns/clip-merged")
    assert result.kind == "merge" and result.warnings == []
    assert result.files == ["README.md", "sti_heatmap.png", "sti_stats.json"]
    card = ModelCard.load(folder / "README.md")
    data = card.data.to_dict()
    assert data["library_name"] == "transformers"
    assert data["pipeline_tag"] == "image-feature-extraction"
    assert data["tags"] == ["merge", "hf-tsv", "task-singular-vectors", "clip", "tsv-m"]
    assert "base_model" not in data and "license" not in data  # local parents: no Hub ids, no readable license
    assert "model-index" not in data
    text = card.text
    assert "# clip-merged" in text and "https://arxiv.org/abs/2412.00081" in text and "α = 1.0" in text
    assert '.from_pretrained("ns/clip-merged")' in text
    for name in ("base", "task_00", "task_01", "task_02"):
        assert f"`{name}` (local folder)" in text
    assert "No evaluation was run for this model." in text
    assert "```yaml\nbase_model: base (local)\nmodels:\n- task_00 (local)" in text
    assert str(folder) not in text


def test_sti_section_heatmap_and_stats_match_the_report(folder):
    hf_tsv.write_card(folder)
    report = json.loads((folder / "merge_report.json").read_text())
    stats = json.loads((folder / "sti_stats.json").read_text())
    assert stats == {"k": report["sti"]["k"], "keys": report["sti"]["keys"], "total": report["sti"]["total"]}
    text = (folder / "README.md").read_text()
    assert f"**Total STI: {report['sti']['total']:.4g}** over {len(report['sti']['keys'])} matrix keys" in text
    assert sti_table(report["sti"]["keys"]).types == ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]
    keys = report["sti"]["keys"]
    for layer in ("0", "1"):
        cells = [f"{keys[f'encoder.layers.{layer}.{part}.weight']:.4g}" for part in
                 ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj", "mlp.fc1",
                  "mlp.fc2")]
        row_total = sum(v for k, v in keys.items() if f"layers.{layer}." in k)
        assert f"| {layer} | {' | '.join(cells)} | {row_total:.4g} |" in text
    assert f"- `embeddings.position_embedding`: {keys['embeddings.position_embedding.weight']:.4g}" in text
    assert "![STI per layer (rows) and layer type (columns)](sti_heatmap.png)" in text
    png = (folder / "sti_heatmap.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 5000
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert width > height > 100  # 6 layer types wide, 2 layers high


def test_evaluation_table_and_model_index(folder):
    (folder / "eval_results.json").write_text(json.dumps(EVALS))
    hf_tsv.write_card(folder, repo_id="ns/clip-merged")
    card = ModelCard.load(folder / "README.md")
    assert card.data.model_name == "clip-merged"
    results = {(r.dataset_name, r.metric_type): r for r in card.data.eval_results}
    assert len(results) == 4
    assert results["cars", "accuracy"].metric_value == pytest.approx(61.234)
    assert results["cars", "accuracy"].dataset_type == "tanganke/stanford_cars"
    assert results["dtd", "normalized_accuracy"].metric_value == pytest.approx(90.25)
    assert all(r.task_type == "image-classification" for r in results.values())
    assert "| cars | tanganke/stanford_cars | 61.23 | 80.50 |" in card.text
    assert "| dtd | tanganke/dtd | 50.00 | 90.25 |" in card.text
    assert "| **mean** | | **55.62** | **85.38** |" in card.text
    assert "No evaluation was run" not in card.text


def test_malformed_eval_results_is_a_clear_error(folder):
    (folder / "eval_results.json").write_text(json.dumps({"tasks": {"cars": {"normalized": 3}}}))
    with pytest.raises(hf_tsv.CardError, match="numeric 'absolute'"):
        hf_tsv.write_card(folder)
    assert not (folder / "README.md").exists()


def test_no_local_path_reaches_the_card(folder, tiny, tmp_path):
    text = hf_tsv.write_card(folder).text
    for path in _local_paths(tiny, tmp_path, folder):
        assert path not in text
    assert "hf-tsv merge base task_00 task_01 task_02 -o merged --token '***'" in text


def test_public_command_keeps_hub_ids_and_option_values():
    command = ("hf-tsv merge /data/base me/ft-a@v2 ./rel/ft-b -o=/tmp/x/out --exclude 'a/b' "
               "--push-to-hub ns/name --alpha 0.5")
    assert public_command(command, {"me/ft-a"}) == (
        "hf-tsv merge base me/ft-a@v2 ft-b -o=out --exclude a/b --push-to-hub ns/name --alpha 0.5")


def test_python_api_merge_card_shows_the_equivalent_call(tiny, tmp_path):
    hf_tsv.merge(tiny["base"], tiny["tasks"][:2], method="ta", alpha=0.4, output_dir=tmp_path / "ta", device="cpu")
    text = hf_tsv.write_card(tmp_path / "ta").text
    assert 'hf_tsv.merge("base", ["task_00", "task_01"], method="ta", alpha=0.4)' in text
    assert "STI is computed during TSV-M merges" in text and "Scaling factor **α = 0.4**" in text
    assert ModelCard.load(tmp_path / "ta" / "README.md").data.tags[-1] == "task-arithmetic"
    assert not (tmp_path / "ta" / "sti_heatmap.png").exists()
    for path in _local_paths(tiny, tmp_path):
        assert path not in text


def test_tsvc_card_explains_expand(tiny, tmp_path):
    hf_tsv.compress(tiny["base"], tiny["tasks"], tmp_path / "tsvc", device="cpu")
    result = hf_tsv.write_card(tmp_path / "tsvc", repo_id="ns/tiny-tsvc")
    assert result.kind == "tsv-c" and result.files == ["README.md"]
    card = ModelCard.load(tmp_path / "tsvc" / "README.md")
    assert "tsv-c" in card.data.tags and card.data.library_name is None
    assert "hf download ns/tiny-tsvc --local-dir tiny-tsvc" in card.text
    assert "hf-tsv expand tiny-tsvc --task task_00 -o task_00-rebuilt --base path/to/base" in card.text
    assert "task_00, task_01, task_02" in card.text
    for path in _local_paths(tiny, tmp_path):  # tsv_c.json records the base's path: not on the card
        assert path not in card.text


def test_expanded_task_card(tiny, tmp_path):
    hf_tsv.compress(tiny["base"], tiny["tasks"], tmp_path / "tsvc", device="cpu")
    hf_tsv.expand(tmp_path / "tsvc", "task_01", tmp_path / "t1", device="cpu")
    result = hf_tsv.write_card(tmp_path / "t1")
    assert result.kind == "expand" and "`task_01` (local folder)" in result.text
    assert "rebuilt by `hf-tsv expand`" in result.text


def test_card_command_writes_and_prints(folder, capsys):
    (folder / "eval_results.json").write_text(json.dumps(EVALS))
    assert main(["card", str(folder), "--repo-id", "ns/from-cli", "--license", "apache-2.0"]) == 0
    out, err = capsys.readouterr()
    written = (folder / "README.md").read_text()
    assert out.strip() == written.strip()
    assert "wrote README.md, sti_heatmap.png, sti_stats.json" in err
    card = ModelCard.load(folder / "README.md")
    assert card.data.license == "apache-2.0" and len(card.data.eval_results) == 4
    assert "The publisher set the license to `apache-2.0`." in written


def test_card_command_rejects_a_foreign_folder(tmp_path, capsys):
    (tmp_path / "stuff").mkdir()
    assert main(["card", str(tmp_path / "stuff")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("hf-tsv card: error: folder 'stuff' has neither merge_report.json")
    assert "\n" not in err
