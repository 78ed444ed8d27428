"""The merge report (hf_tsv/report.py): one typed object, written and read as merge_report.json in one place; the
layout of hf-tsv 0.1.0 (schema version 1) still loads, and another schema is refused with a clear error."""

from __future__ import annotations

import copy
import json
import os
import shutil
from pathlib import Path

import pytest

import hf_tsv
from hf_tsv.cli import main
from hf_tsv.errors import ReportError
from hf_tsv.io.output import is_hftsv_output
from hf_tsv.report import SCHEMA_VERSION, InputRecord, MergeReport, STIRecord
from hf_tsv.secrets import public_json

VERSIONS = {"python": "3.12.3", "hf-tsv": "0.1.0", "torch": "2.13.0", "transformers": "5.0.0",
            "safetensors": "0.6.2", "huggingface_hub": "1.0.0", "numpy": "2.3.0"}
KEYS = {"matrix_units": 13, "averaged_keys": 26, "fused_qkv_groups": 0, "excluded_keys": 0, "ignored_keys": 0,
        "total_keys": 39}
BASE = {"name": "base", "source": "local", "fingerprint": "sha256:3f33bd4518add9a1"}
HUB_MODEL = {"name": "ns/ft-a", "source": "hub", "repo_id": "ns/ft-a", "revision": "0123456789abcdef" * 2 + "01234567"}
LOCAL_MODEL = {"name": "task_01", "source": "local", "fingerprint": "sha256:f81593d1f85ab937"}

# merge_report.json as hf-tsv 0.1.0 wrote it (no schema_version): a TSV-M merge with STI and a recorded command,
# a TIES merge (its parameters in "options", no "k") and a task rebuilt by `hf-tsv expand`
V010_TSVM = {
    "method": "tsv-m", "method_description": "Task Singular Vectors: Merge (Gargiulo et al., CVPR 2025)",
    "alpha": 1.0, "hf_tsv_version": "0.1.0", "num_tasks": 2, "base": BASE, "models": [HUB_MODEL, LOCAL_MODEL],
    "options": {"fuse_qkv": False, "excluded_keys": [], "compute_dtype": "float32",
                "device": "cpu (x86_64, 1 torch threads)", "svd": "exact"},
    "keys": KEYS, "notes": [], "versions": VERSIONS,
    "warnings": ["mixed precision: the base is float32 but fine-tuned models 'task_01' (bfloat16) are narrower"],
    "mixed_precision": {"base_dtype": "float32", "models": {"task_01": ["bfloat16"]}, "rounded_keys": 39,
                        "task_vectors": "each fine-tune minus the base rounded to that fine-tune's dtype"},
    "k": "floor(r/T)", "output": {"class": "CLIPVisionModel", "dtype": "float32"},
    "command": "hf-tsv merge base ns/ft-a task_01 -o merged",
    "sti": {"k": "floor(r/T)", "total": 0.75, "keys": {"encoder.layers.0.mlp.fc1.weight": 0.25,
                                                       "encoder.layers.0.mlp.fc2.weight": 0.5}},
    "timings": {"preflight_s": 0.0125, "compute_s": 0.03, "write_s": 0.001, "total_s": 0.0666},
}
V010_TIES = {
    "method": "ties", "method_description": "TIES-Merging (Yadav et al., NeurIPS 2023)", "alpha": 1.0,
    "hf_tsv_version": "0.1.0", "num_tasks": 2, "base": BASE, "models": [LOCAL_MODEL, LOCAL_MODEL],
    "options": {"fuse_qkv": False, "excluded_keys": [], "compute_dtype": "float32", "device": "cpu (x86_64, 1 "
                "torch threads)", "ties_density": 0.5, "ties_merge": "mean", "ties_scope": "model"},
    "keys": KEYS, "notes": ["visual_projection.weight is not in every model"], "versions": VERSIONS,
    "output": {"class": "CLIPVisionModel", "dtype": "float32"},
    "timings": {"preflight_s": 0.01, "model_pass_s": 0.02, "total_s": 0.05},
}
V010_EXPAND = {"method": "tsv-c expand", "task": LOCAL_MODEL, "base": BASE, "k": "floor(r/T)", "versions": VERSIONS}


@pytest.fixture(scope="module")
def merged(tiny, tmp_path_factory) -> tuple[hf_tsv.MergeResult, Path]:
    out = tmp_path_factory.mktemp("report") / "merged"
    result = hf_tsv.merge(tiny["base"], tiny["tasks"], output_dir=out, device="cpu",
                          command=f"hf-tsv merge {tiny['base']} {' '.join(map(str, tiny['tasks']))} -o {out}")
    return result, out


def _folder_with_report(folder: Path, report: object) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "merge_report.json").write_text(json.dumps(report) if not isinstance(report, str) else report)
    return folder


# ----------------------------------------------------------------------------------------------------------------
# One object, one schema
# ----------------------------------------------------------------------------------------------------------------


def test_a_merge_report_round_trips_through_json(merged):
    result, folder = merged
    report = result.report
    assert isinstance(report, MergeReport) and isinstance(report.sti, STIRecord)
    assert MergeReport.from_dict(json.loads(json.dumps(report.to_dict()))) == report
    saved = json.loads((folder / "merge_report.json").read_text())
    assert saved == public_json(report.to_dict())  # what is written is the published form
    assert MergeReport.load(folder) == report.public() == report  # its command was made public when recorded
    assert report.base == InputRecord("base", "local", fingerprint=report.base.fingerprint)
    assert report.sti.total == pytest.approx(sum(report.sti.keys.values()))
    assert report.command.startswith("hf-tsv merge base task_00 task_01 task_02 -o merged")


def test_the_schema_version_is_written(merged):
    _, folder = merged
    saved = json.loads((folder / "merge_report.json").read_text())
    assert SCHEMA_VERSION == 1 and saved["schema_version"] == 1 and next(iter(saved)) == "schema_version"


def test_a_changed_report_is_saved_as_published(merged, tmp_path):
    report = copy.deepcopy(merged[0].report)
    report.notes.append("read from /home/someone/models/base")
    report.save(tmp_path)
    assert MergeReport.load(tmp_path).notes[-1] == "read from base"


@pytest.mark.parametrize("layout", [V010_TSVM, V010_TIES, V010_EXPAND], ids=["tsv-m", "ties", "expand"])
def test_a_0_1_0_report_loads_with_its_layout_unchanged(layout, tmp_path):
    folder = _folder_with_report(tmp_path / "old", layout)
    report = MergeReport.load(folder)
    assert report.schema_version == 1 and report.method == layout["method"]
    assert report.to_dict() == {"schema_version": 1, **layout}  # nothing lost, nothing renamed
    assert is_hftsv_output(folder)  # --overwrite still knows the folder as an hf-tsv output


def test_a_0_1_0_report_is_read_by_attribute():
    report = MergeReport.from_dict(V010_TSVM)
    assert (report.alpha, report.num_tasks, report.total_seconds) == (1.0, 2, 0.0666)
    assert [m.pinned_reference for m in report.models] == [f"ns/ft-a@{HUB_MODEL['revision']}", "task_01"]
    assert report.options.svd == "exact" and report.options.parameters == {}
    assert report.sti.table().types == ["fc1", "fc2"] and report.output.class_name == "CLIPVisionModel"
    ties = MergeReport.from_dict(V010_TIES)
    assert ties.options.parameters == {"ties_density": 0.5, "ties_merge": "mean", "ties_scope": "model"}
    expand = MergeReport.from_dict(V010_EXPAND)
    assert expand.is_expand and expand.task.name == "task_01" and expand.models is None


def test_an_iso_c_report_of_0_1_0_drops_only_its_null_k():
    """0.1.0 wrote ``"k": null`` for Iso-C/Iso-CTS merges; a null carries nothing, so it is not written again."""
    iso = {**V010_TIES, "method": "iso-c", "options": {k: v for k, v in V010_TIES["options"].items()
                                                       if not k.startswith("ties")}, "k": None}
    assert MergeReport.from_dict(iso).to_dict() == {"schema_version": 1, **{k: v for k, v in iso.items() if k != "k"}}


def test_the_card_of_a_0_1_0_folder_is_the_same(merged, tmp_path):
    _, folder = merged
    old = Path(shutil.copytree(folder, tmp_path / "merged"))
    report = json.loads((old / "merge_report.json").read_text())
    del report["schema_version"]
    (old / "merge_report.json").write_text(json.dumps(report))
    from hf_tsv.card import build_card

    assert build_card(old)[0].text == build_card(folder)[0].text


def test_linear_merge_reports_say_which_alpha(tiny):
    linear = hf_tsv.merge_linear(tiny["base"], tiny["tasks"], method="ta")
    at = linear.at(0.5, alpha_search={"best_alpha": 0.5})
    assert at.report.alpha == 0.5 and at.report.alpha_search == {"best_alpha": 0.5}
    assert linear.report.alpha == 0.3 and linear.report.alpha_search is None  # the linear merge's own is unchanged
    assert MergeReport.from_dict(at.report.to_dict()) == at.report


# ----------------------------------------------------------------------------------------------------------------
# Reports hf-tsv cannot read: one clear error, naming the file and the entry
# ----------------------------------------------------------------------------------------------------------------


def _v010(**changes) -> dict:
    data = copy.deepcopy(V010_TSVM)
    for key, value in changes.items():
        if value is None:
            del data[key]
        else:
            data[key] = value
    return data


BAD_REPORTS = [
    pytest.param({**V010_TSVM, "schema_version": 2}, "schema_version 2 is not the one hf-tsv 0.1.0 reads (1)",
                 id="RPT-01"),
    pytest.param({**V010_TSVM, "schema_version": "1"}, "schema_version '1' is not the one hf-tsv 0.1.0 reads",
                 id="RPT-02"),
    pytest.param('{"method": "tsv-m", ', "merge_report.json is not valid JSON", id="RPT-03"),
    pytest.param(_v010(base=None), "merge_report.json in 'out': entry 'base' is missing; the file was not written by "
                 "hf-tsv, or was edited since", id="RPT-04"),
    pytest.param(_v010(models=[{"name": "x", "source": "ftp"}]), "entry 'models[0].source' is 'ftp', not one of "
                 "local, hub, memory", id="RPT-05"),
    pytest.param(_v010(sti={"k": "floor(r/T)", "total": 1.0, "keys": {"w": "big"}}),
                 "entry 'sti.keys' holds a string for 'w', not a number", id="RPT-06"),
    pytest.param(_v010(alpha="1.0"), "entry 'alpha' must be a number, not a string", id="RPT-07"),
    pytest.param([V010_TSVM], "the report must be a JSON object, not a list", id="RPT-08"),
]


@pytest.mark.parametrize("content, message", BAD_REPORTS)
def test_a_report_that_cannot_be_read_is_refused_by_name(content, message, tmp_path, capsys):
    folder = _folder_with_report(tmp_path / "out", content)
    assert main(["card", str(folder)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("hf-tsv card: error: ") and message in err and err.count("\n") == 1
    assert sorted(p.name for p in folder.iterdir()) == ["merge_report.json"]  # no card written
    with pytest.raises(ReportError, match="merge_report.json"):
        MergeReport.load(folder)


@pytest.mark.parametrize("row", [pytest.param("RPT-09", id="RPT-09")])
def test_a_report_linked_from_outside_the_folder_is_not_read(row, merged, tmp_path, capsys):
    _, folder = merged
    out = Path(shutil.copytree(folder, tmp_path / "out"))
    outside = tmp_path / "elsewhere.json"
    shutil.move(out / "merge_report.json", outside)
    os.symlink(outside, out / "merge_report.json")
    before = sorted(p.name for p in out.iterdir())
    assert main(["card", str(out)]) == 2
    err = capsys.readouterr().err
    assert "merge_report.json is a link that leads outside the model's folder" in err and err.count("\n") == 1
    assert sorted(p.name for p in out.iterdir()) == before


@pytest.mark.parametrize("row", [pytest.param("RPT-10", id="RPT-10")])
def test_expand_refuses_a_task_without_a_source_before_writing(row, tiny, tmp_path, capsys):
    hf_tsv.compress(tiny["base"], tiny["tasks"], tmp_path / "tsvc", device="cpu")
    index = json.loads((tmp_path / "tsvc" / "tsv_c.json").read_text())
    del index["tasks"][1]["source"]
    (tmp_path / "tsvc" / "tsv_c.json").write_text(json.dumps(index))
    assert main(["expand", str(tmp_path / "tsvc"), "--task", "task_01", "-o", str(tmp_path / "t1")]) == 2
    err = capsys.readouterr().err
    assert "tsv_c.json cannot be used: tasks[1] must have 'source' local, hub or memory" in err
    assert not (tmp_path / "t1").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["tsvc"]


@pytest.mark.parametrize("row", [pytest.param("RPT-11", id="RPT-11")])
def test_eval_refuses_unpaired_finetuned_models_before_reading_data(row, tiny, tmp_path, capsys):
    spec = tmp_path / "tasks.json"
    spec.write_text(json.dumps({"tasks": [{"name": "a", "dataset": "disk:missing_a"},
                                          {"name": "b", "dataset": "disk:missing_b"}]}))
    code = main(["eval", str(tiny["base"]), "--tasks", str(spec), "--finetuned", str(tiny["tasks"][0])])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "2 tasks but 1 fine-tuned models: normalised accuracy pairs task i with model i" in err


# ----------------------------------------------------------------------------------------------------------------
# The STI table: one arrangement, three layouts of the same cells
# ----------------------------------------------------------------------------------------------------------------


def test_one_sti_table_for_the_terminal_the_card_and_the_space():
    from hf_tsv.sti_table import sti_table

    keys = {f"encoder.layers.{i}.mlp.fc1.weight": 0.1 * (i + 1) for i in (10, 9, 2)}
    keys["encoder.layers.2.self_attn.q_proj.weight"] = 0.123456
    keys["visual_projection.weight"] = 0.5
    table = sti_table(keys)
    assert table.headers == ["layer", "q_proj", "fc1", "layer total"]
    assert [row.layer for row in table.rows] == ["2", "9", "10"]  # depth order, not text order
    cells = table.layer_cells()
    assert cells == [["2", "0.1235", "0.3", "0.4235"], ["9", "–", "1", "1"], ["10", "–", "1.1", "1.1"]]
    assert table.records() == [*cells, ["visual_projection", "", "", "0.5"]]
    markdown = table.markdown().splitlines()
    assert markdown[2:5] == [f"| {' | '.join(row)} |" for row in cells]
    assert markdown[5] == "| **all layers** | 0.1235 | 2.4 | |" and markdown[-1] == "- `visual_projection`: 0.5"
    text = table.text().splitlines()
    assert text[2].split() == cells[1] and "visual_projection: 0.5" in text
    assert text[-1] == f"total STI (all matrix keys): {sum(keys.values()):.6g}"


def test_the_sti_table_takes_the_architectures_key_layout():
    from hf_tsv.sti_table import OUTSIDE, sti_table

    class Towers:
        def layer_and_type(self, key: str) -> tuple[str, str]:
            tower, _, rest = key.partition("/")
            return (f"{tower}.{rest[0]}", rest[2:]) if rest else (OUTSIDE, key)

        def type_order(self, kind: str) -> int:
            return len(kind)  # not the generic (block, then alphabetical) order

    table = sti_table({"text/1.up": 1.0, "text/0.down": 2.0, "logit_scale": 3.0}, layout=Towers())
    assert [row.layer for row in table.rows] == ["text.0", "text.1"] and table.types == ["up", "down"]
    assert table.others == {"logit_scale": 3.0} and table.total == 6.0
