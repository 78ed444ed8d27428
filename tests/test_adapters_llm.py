"""The decoder-LLM adapter (hf_tsv/adapters/llm.py): tiny random ``*ForCausalLM`` checkpoints of every family
(Llama, Mistral, Qwen2, Qwen3, Gemma 2, Gemma 3 text; grouped-query attention throughout) and 3 low-rank
fine-tunes each, merged through the CLI, equal a float64 reference of TSV-M key by key; the output loads with
``AutoModelForCausalLM`` and generates. Then: ``--embeddings`` in each mode, tied embeddings written once, q/k/v
fusion with GQA shapes, STI tables per layer × (q, k, v, o, gate, up, down), the card's tag and snippet, the
tokenizer files kept, and the bad inputs (rows ``LLM-NN`` of docs/bad-input.md).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import copy_checkpoint, load_state, max_rel_diff
from test_adapters import assert_matches, sti_table_lines
from test_bad_input_table import assert_nothing_left, assert_one_line_error, run_cli
from test_reference_methods import TOLERANCE, ref_tsv_m, task_vectors

import hf_tsv
from hf_tsv.cli import main
from hf_tsv.synthetic import _perturb, _Perturbation

F64 = torch.float64
NUM_TASKS = 3
VOCAB = 64
# hidden 32, 4 query heads and 2 key/value heads of 8: q_proj is 32×32, k_proj and v_proj 16×32
TINY = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            head_dim=8, vocab_size=VOCAB, max_position_embeddings=64, bos_token_id=1, eos_token_id=2,
            pad_token_id=0)
# family → (model_type, causal-LM class, tie_word_embeddings): both kinds of embeddings among them
FAMILIES = {"llama": ("llama", "LlamaForCausalLM", True), "mistral": ("mistral", "MistralForCausalLM", False),
            "qwen2": ("qwen2", "Qwen2ForCausalLM", False), "qwen3": ("qwen3", "Qwen3ForCausalLM", True),
            "gemma2": ("gemma2", "Gemma2ForCausalLM", True), "gemma3": ("gemma3_text", "Gemma3ForCausalLM", True)}
EMBEDDINGS = ("model.embed_tokens.weight", "lm_head.weight")
PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
CHAT_TEMPLATE = "{% for m in messages %}{{ m['content'] }}{% endfor %}"


def _tokenizer(folder: Path) -> None:
    """A word-level tokenizer of :data:`VOCAB` tokens (``w3`` ... ``w63``) with a chat template, in ``folder``."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i for i in range(3, VOCAB)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>",
                                        pad_token="<pad>", unk_token="<pad>")
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(folder)


def make_llm_checkpoints(folder: Path, family: str, *, tie: bool | None = None, seed: int = 0,
                         num_tasks: int = NUM_TASKS) -> dict:
    """A tiny random base of ``family`` (saved by ``save_pretrained``, with a tokenizer) and ``num_tasks`` fine-tunes:
    each parameter plus a rank-⌊r/T⌋ perturbation with a little noise (a tied lm_head is perturbed once, with the
    embeddings it is)."""
    import transformers

    model_type, class_name, tied = FAMILIES[family]
    config = transformers.CONFIG_MAPPING[model_type](**TINY, tie_word_embeddings=tied if tie is None else tie)
    torch.manual_seed(seed)
    model = getattr(transformers, class_name)(config)
    model.save_pretrained(folder / "base")
    _tokenizer(folder / "base")
    base = {name: p.detach().clone() for name, p in model.named_parameters()}  # a tied lm_head is not listed
    spec = _Perturbation(0.05, "gapped", num_tasks, 8)
    tasks = []
    for t in range(num_tasks):
        with torch.no_grad():
            for i, (name, param) in enumerate(model.named_parameters()):
                gen = torch.Generator().manual_seed(seed * 1_000_003 + t * 10_007 + i + 1)
                param.copy_(base[name] + _perturb(base[name], spec, gen))
        model.save_pretrained(folder / f"task_{t:02d}")
        tasks.append(str(folder / f"task_{t:02d}"))
    return {"base": str(folder / "base"), "tasks": tasks}


@pytest.fixture(scope="module")
def llm(tmp_path_factory):
    """``llm(family)``: that family's tiny checkpoints, made once per module."""
    made: dict[str, dict] = {}

    def get(family: str) -> dict:
        if family not in made:
            made[family] = make_llm_checkpoints(tmp_path_factory.mktemp(family), family)
        return made[family]

    return get


def reference(paths: dict, embeddings: str = "average") -> dict[str, torch.Tensor]:
    """θ₀ + Δ in float64: TSV-M on the projections, the mean of the task vectors on norms and biases, and on the
    embeddings TSV-M (``tsv``), the mean (``average``) or nothing (``base``)."""
    theta0, taus = task_vectors(paths)

    def delta(key: str, tau: torch.Tensor) -> torch.Tensor:
        if key in EMBEDDINGS:
            return {"tsv": ref_tsv_m(tau), "average": tau.mean(0), "base": torch.zeros_like(tau[0])}[embeddings]
        return ref_tsv_m(tau) if tau.ndim == 3 else tau.mean(0)

    return {k: theta0[k].to(F64) + delta(k, tau) for k, tau in taus.items()}


def _merge(paths: dict, out: Path, *options: str) -> dict:
    assert main(["merge", paths["base"], *paths["tasks"], "-o", out, "--device", "cpu", *options]) == 0
    return json.loads((out / "merge_report.json").read_text())


# ---- every family, end to end -----------------------------------------------------------------------------------


@pytest.mark.parametrize("family", list(FAMILIES))
def test_llm_family_merges_end_to_end_and_generates(family, llm, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    paths, (model_type, class_name, tied) = llm(family), FAMILIES[family]
    out = tmp_path / "out"
    report = _merge(paths, out)
    assert report["output"]["class"] == class_name and report["output"]["architecture"] == "causal-lm"
    assert_matches(load_state(out), reference(paths), load_state(paths["base"]))
    assert ("lm_head.weight" in load_state(out)) is not tied  # a tied lm_head is the embeddings, written once
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(model).__name__ == class_name and model.config.model_type == model_type
    assert AutoTokenizer.from_pretrained(out).get_vocab()["w5"] == 5  # the base's tokenizer, kept
    with torch.no_grad():  # token ids: transformers gives some families their own tokenizer class for this one
        generated = model.generate(torch.tensor([[1, 5, 6]]), max_new_tokens=1, do_sample=False)
    assert generated.shape == (1, 4)
    if tied:
        assert torch.equal(model.lm_head.weight, model.model.embed_tokens.weight)


# ---- --embeddings, tied embeddings --------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["tsv", "average", "base"])
def test_embeddings_are_merged_as_the_option_says(mode, llm, tmp_path):
    """Mistral unties lm_head: both embedding keys follow --embeddings, everything else is merged as before."""
    paths = llm("mistral")
    out = tmp_path / "out"
    report = _merge(paths, out, "--embeddings", mode)
    base, merged = load_state(paths["base"]), load_state(out)
    assert_matches(merged, reference(paths, mode), base)
    assert report["options"]["embeddings"] == mode
    if mode == "base":
        assert all(torch.equal(merged[k], base[k]) for k in EMBEDDINGS)
        assert report["keys"]["kept_base_keys"] == 2
    assert report["keys"]["matrix_units"] == 14 + (2 if mode == "tsv" else 0)
    assert any(f"(--embeddings {mode})" in note for note in report["notes"])


@pytest.mark.parametrize("method", ["ties", "ta"])
def test_kept_embeddings_are_the_bases_whatever_the_method(method, llm):
    """TIES's model-wide trim (its statistics pass) and task arithmetic's sum leave the kept keys alone."""
    paths = llm("mistral")
    merged = hf_tsv.merge(paths["base"], paths["tasks"], method=method, embeddings="base", device="cpu").state_dict()
    base = load_state(paths["base"])
    assert all(torch.equal(merged[k], base[k]) for k in EMBEDDINGS)
    assert not torch.equal(merged["model.norm.weight"], base["model.norm.weight"])


def test_tied_embeddings_are_merged_and_written_once(llm, tmp_path):
    from safetensors import safe_open

    paths = llm("llama")
    out = tmp_path / "out"
    _merge(paths, out, "--embeddings", "tsv")
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert "lm_head.weight" not in f.keys() and "model.embed_tokens.weight" in f.keys()
    merged, expected = load_state(out)["model.embed_tokens.weight"], reference(paths, "tsv")
    assert max_rel_diff(merged - load_state(paths["base"])["model.embed_tokens.weight"],
                        expected["model.embed_tokens.weight"] - load_state(paths["base"])["model.embed_tokens.weight"]
                        ) <= TOLERANCE


def test_a_tied_merge_in_memory_builds_its_model(llm, tmp_path):
    """MergeResult.to_model and LinearMerge.to_model load weights that hold the tied embeddings once."""
    paths = llm("llama")
    result = hf_tsv.merge(paths["base"], paths["tasks"], device="cpu")
    assert "lm_head.weight" not in result.state_dict()
    model = result.to_model()
    assert torch.equal(model.lm_head.weight, result.state_dict()["model.embed_tokens.weight"])
    linear = hf_tsv.merge_linear(paths["base"], paths["tasks"], method="ta", device="cpu")
    model = linear.to_model(alpha=0.5)
    assert torch.equal(model.lm_head.weight, model.model.embed_tokens.weight)
    tsv = hf_tsv.merge(paths["base"], paths["tasks"], device="cpu", embeddings="tsv")
    assert tsv.report.options.embeddings == "tsv"
    assert 'embeddings="tsv"' in hf_tsv.write_card(tsv.save_pretrained(tmp_path / "out")).text  # the API call


def test_embeddings_option_reaches_plan_and_sti(llm, capsys):
    paths = llm("mistral")
    info = hf_tsv.plan(paths["base"], paths["tasks"], embeddings="base", device="cpu")
    assert info["keys"]["kept_base_keys"] == 2
    capsys.readouterr()
    assert main(["sti", paths["base"], *paths["tasks"], "--device", "cpu", "--embeddings", "tsv"]) == 0
    out = capsys.readouterr().out
    assert "lm_head" in out and "model.embed_tokens" in out


# ---- q/k/v fusion with grouped-query attention --------------------------------------------------------------------


def test_fused_qkv_with_gqa_matches_the_reference(llm, tmp_path):
    paths = llm("qwen2")  # q/k/v with biases, which stay averaged
    out = tmp_path / "out"
    report = _merge(paths, out, "--fuse-qkv")
    assert report["keys"]["fused_qkv_groups"] == TINY["num_hidden_layers"]
    theta0, taus = task_vectors(paths)
    merged = load_state(out)
    for layer in range(TINY["num_hidden_layers"]):
        names = [f"model.layers.{layer}.self_attn.{w}_proj.weight" for w in "qkv"]
        assert [merged[n].shape[0] for n in names] == [32, 16, 16]  # split back by each key's rows
        delta = ref_tsv_m(torch.cat([taus[n] for n in names], dim=1))  # q, k and v rows stacked, per task
        got = torch.cat([merged[n].to(F64) - theta0[n].to(F64) for n in names])
        assert max_rel_diff(got, delta) <= TOLERANCE
        bias = f"model.layers.{layer}.self_attn.k_proj.bias"
        assert max_rel_diff(merged[bias].to(F64) - theta0[bias].to(F64), taus[bias].mean(0)) <= TOLERANCE


# ---- STI tables, card, tokenizer files ---------------------------------------------------------------------------


@pytest.mark.parametrize("fuse, columns", [(False, PROJECTIONS), (True, ["qkv_proj", *PROJECTIONS[3:]])])
def test_llm_sti_table_has_a_row_per_layer_and_a_column_per_projection(fuse, columns, llm, capsys):
    paths = llm("gemma2")
    capsys.readouterr()
    assert main(["sti", paths["base"], *paths["tasks"], "--device", "cpu", *(["--fuse-qkv"] if fuse else [])]) == 0
    header, rows = sti_table_lines(capsys.readouterr().out)
    assert header == ["layer", *columns, "layer", "total"] and rows == ["0", "1"]


def test_llm_card_says_how_to_generate_and_the_tokenizer_is_kept(llm, tmp_path):
    paths = llm("llama")
    out = tmp_path / "out"
    _merge(paths, out)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json"):
        assert (out / name).read_bytes() == (Path(paths["base"]) / name).read_bytes(), name
    card = hf_tsv.write_card(out)
    assert card.card.data.pipeline_tag == "text-generation"
    assert "from transformers import AutoTokenizer, AutoModelForCausalLM" in card.text
    assert 'AutoModelForCausalLM.from_pretrained("out")' in card.text and "model.generate(" in card.text
    assert "LlamaForCausalLM" in card.text and "PIL" not in card.text


# ---- bad inputs --------------------------------------------------------------------------------------------------


def _added_tokens(paths: dict, tmp: Path) -> Path:
    """A fine-tune with 5 added tokens (resize_token_embeddings: its config and both embedding tensors grow)."""
    def grow(state: dict) -> None:
        for key in EMBEDDINGS:
            state[key] = torch.cat([state[key], torch.zeros(5, TINY["hidden_size"])])

    return copy_checkpoint(paths["tasks"][1], tmp / "bad", edit=grow, config_edit=lambda c: c.update(
        vocab_size=VOCAB + 5))


def _padded_embeddings(paths: dict, tmp: Path) -> Path:
    """Embeddings with 3 more rows than the config (and the base) say."""
    def grow(state: dict) -> None:
        state["model.embed_tokens.weight"] = torch.cat([state["model.embed_tokens.weight"],
                                                        torch.zeros(3, TINY["hidden_size"])])

    return copy_checkpoint(paths["tasks"][1], tmp / "bad", edit=grow)


def _tied(paths: dict, tmp: Path) -> Path:
    def drop_head(state: dict) -> None:
        state.pop("lm_head.weight")

    return copy_checkpoint(paths["tasks"][1], tmp / "bad", edit=drop_head,
                           config_edit=lambda c: c.update(tie_word_embeddings=True))


def _base_model_class(paths: dict, tmp: Path) -> Path:
    """A MistralModel (no lm_head): not a causal LM."""
    def drop_head(state: dict) -> None:
        state.pop("lm_head.weight")

    return copy_checkpoint(paths["tasks"][1], tmp / "bad", edit=drop_head,
                           config_edit=lambda c: c.update(architectures=["MistralModel"]))


BAD_FINE_TUNES = [
    pytest.param(_added_tokens, r"model 'bad' \(config\.json\): vocab_size is 69 but the base has 64; it has 5 added "
                 r"tokens beyond the base's 64; .*resize_token_embeddings", id="LLM-01"),
    pytest.param(_padded_embeddings, r"model 'bad' \(.*model\.safetensors\): key 'model\.embed_tokens\.weight' has "
                 r"shape \[67, 32\] but the base has \[64, 32\]; it has 3 added tokens", id="LLM-02"),
    pytest.param(_tied, r"model 'bad' \(config\.json\): tie_word_embeddings is True but the base has False; a model "
                 r"with lm_head tied", id="LLM-03"),
    pytest.param(_base_model_class, r"model 'bad' \(config\.json\): config\.json has model_type 'mistral' and "
                 r"architectures \['MistralModel'\]; hf_tsv's decoder LLM adapter .*reads .*MistralForCausalLM",
                 id="LLM-04"),
]


@pytest.mark.parametrize("make_bad, pattern", BAD_FINE_TUNES)
def test_bad_llm_fine_tune(make_bad, pattern, llm, tmp_path, capsys):
    paths = llm("mistral")
    bad = make_bad(paths, tmp_path)
    code, err = run_cli(["merge", paths["base"], paths["tasks"][0], bad, "-o", tmp_path / "out"], capsys)
    assert_one_line_error(code, err, pattern)
    assert_nothing_left(tmp_path)


@pytest.mark.parametrize("_row", [pytest.param(None, id="LLM-05")])
def test_unknown_embeddings_mode(_row, llm, tmp_path, capsys):
    paths = llm("mistral")
    with pytest.raises(SystemExit) as exit_info:  # argparse refuses it before anything runs
        main([str(a) for a in ["merge", paths["base"], *paths["tasks"], "-o", tmp_path / "out", "--embeddings",
                               "tied"]])
    assert exit_info.value.code == 2
    assert_one_line_error(2, capsys.readouterr().err, r"argument --embeddings: invalid choice: 'tied'")
    with pytest.raises(hf_tsv.MergeInputError, match=r"embeddings \(--embeddings\) must be one of tsv, average, base, "
                       r"got 'tied'"):
        hf_tsv.merge(paths["base"], paths["tasks"], output_dir=tmp_path / "out", embeddings="tied")
    assert_nothing_left(tmp_path)
