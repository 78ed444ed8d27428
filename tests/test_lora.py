"""LoRA adapters as merge inputs and ``--output-format peft`` (docs/lora.md), against float64 dense references."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

import hf_tsv
from hf_tsv.core import LowRankDelta, low_rank_top_k, task_factors, truncated_task_factors, tsv_merge
from hf_tsv.core.lora import stack_rows

peft = pytest.importorskip("peft")

# Three adapters of the tiny CLIP base: different ranks, one rsLoRA, one with rank_pattern/alpha_pattern; they
# touch different modules (a module missing from an adapter is ΔW = 0 for that task).
ADAPTERS = [dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "fc1"]),
            dict(r=2, lora_alpha=4, use_rslora=True, target_modules=["q_proj", "k_proj", "out_proj"]),
            dict(r=3, lora_alpha=6, rank_pattern={"fc2": 5}, alpha_pattern={"fc2": 2},
                 target_modules=["q_proj", "fc2"])]
TOL = 2e-5  # max |difference| / max |Δ| of float32 factored merges vs the float64 dense reference


def _clip(folder, dtype=torch.float32):
    from transformers import CLIPVisionModel

    return CLIPVisionModel.from_pretrained(folder, dtype=dtype)


@pytest.fixture(scope="module")
def loras(tiny, tmp_path_factory) -> dict:
    """The tiny base, 3 PEFT adapters, each adapter's ΔW in float64 as PEFT merges it, and dense copies."""
    from peft import LoraConfig, get_peft_model

    out = tmp_path_factory.mktemp("loras")
    base_state = {k: v.double() for k, v in _clip(tiny["base"]).state_dict().items()}
    folders, deltas, dense = [], [], []
    for i, spec in enumerate(ADAPTERS):
        torch.manual_seed(100 + i)
        model = get_peft_model(_clip(tiny["base"]), LoraConfig(init_lora_weights=False, **spec))
        folder = out / f"lora_{i}"
        model.save_pretrained(folder)
        folders.append(str(folder))
        loaded = peft.PeftModel.from_pretrained(_clip(tiny["base"], torch.float64), folder).merge_and_unload()
        deltas.append({k: v - base_state[k] for k, v in loaded.state_dict().items()})
        merged32 = peft.PeftModel.from_pretrained(_clip(tiny["base"]), folder).merge_and_unload()
        merged32.save_pretrained(out / f"dense_{i}")
        dense.append(str(out / f"dense_{i}"))
    return {"base": tiny["base"], "adapters": folders, "deltas": deltas, "base_state": base_state, "dense": dense}


def _reference(loras, method: str, alpha: float) -> dict[str, torch.Tensor]:
    """θ₀ + α·Δ in float64 from the dense ΔW of each adapter (formed by PEFT), matrix keys by the core's dense path."""
    out = {}
    for key, base in loras["base_state"].items():
        tau = torch.stack([d[key] for d in loras["deltas"]])
        if method != "tsv-m" or tau.ndim != 3:
            delta = tau.sum(0) if method == "ta" else tau.mean(0)
        else:
            delta = tsv_merge(tau, compute_dtype=torch.float64)
        out[key] = base + alpha * delta
    return out


def _max_rel(state: dict, reference: dict) -> float:
    """max |state − reference| over every key."""
    return max(float((state[k].double() - reference[k]).abs().max()) for k in reference)


# ----------------------------------------------------------------------------------------------------------------
# core
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("m, n, r, k, deficient", [(40, 30, 4, 3, False), (20, 50, 6, 6, False),
                                                   (30, 30, 5, 5, True), (6, 9, 12, 6, False)],
                         ids=["tall", "wide", "rank-deficient", "r-above-min"])
def test_low_rank_top_k_equals_float64_svd(m, n, r, k, deficient):
    gen = torch.Generator().manual_seed(m * n + r)
    b = torch.randn(m, r, generator=gen, dtype=torch.float64)
    a = torch.randn(r, n, generator=gen, dtype=torch.float64)
    if deficient:  # two equal columns of B: rank r - 1
        b[:, 1] = b[:, 0]
    delta = LowRankDelta(b, a, scale=0.7)
    dense = delta.dense()
    u_ref, s_ref, vh_ref = torch.linalg.svd(dense)
    for dtype, tol in ((torch.float64, 1e-10), (torch.float32, 1e-5)):
        u, s, v = low_rank_top_k(delta, k, compute_dtype=dtype)
        assert torch.allclose(s.double(), s_ref[:k], atol=tol * float(s_ref[0]))
        truncated = (u_ref[:, :k] * s_ref[:k]) @ vh_ref[:k]
        assert float(((u * s) @ v.T).double().sub(truncated).abs().max()) <= tol * float(s_ref[0])


def test_factored_tasks_give_the_dense_triplets_and_merge():
    gen = torch.Generator().manual_seed(3)
    lora = [LowRankDelta(torch.randn(24, r, generator=gen, dtype=torch.float64),
                         torch.randn(r, 16, generator=gen, dtype=torch.float64), 2.0 / r) for r in (3, 7)]
    lora[0].b[:, 2] = lora[0].b[:, 1]  # rank 2 with 3 factors: its third triplet is rounding noise
    dense = torch.randn(24, 16, generator=gen, dtype=torch.float64)
    tasks = torch.stack([dense, lora[0].dense(), lora[1].dense()])
    reference = truncated_task_factors(tasks, compute_dtype=torch.float64)
    mixed = task_factors(torch.stack([dense, torch.zeros_like(dense), torch.zeros_like(dense)]), [None, *lora],
                         compute_dtype=torch.float64)
    assert torch.allclose(mixed.reconstruct(), reference.reconstruct(), atol=1e-10)
    assert torch.allclose(mixed.s, reference.s, atol=1e-10)
    # rank 2 < k = 5: the null triplets are zero (the third one too, σ ≈ 1e-16 before), as the dense route's
    assert bool((mixed.s[1, 2:] == 0).all()) and bool((reference.s[1, 2:] == 0).all())


def test_stack_rows_is_the_fused_matrix():
    parts = [LowRankDelta(torch.randn(3, 2), torch.randn(2, 5), 0.5), LowRankDelta.zeros((4, 5)),
             LowRankDelta(torch.randn(2, 1), torch.randn(1, 5), 3.0)]
    assert torch.allclose(stack_rows(parts).dense(), torch.cat([p.dense() for p in parts]), atol=1e-6)


# ----------------------------------------------------------------------------------------------------------------
# merging adapters
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method, alpha", [("tsv-m", 1.0), ("ta", 0.5), ("avg", None)])
def test_adapters_merge_as_their_dense_task_matrices(loras, method, alpha):
    result = hf_tsv.merge(loras["base"], loras["adapters"], method=method, alpha=alpha)
    reference = _reference(loras, "avg" if method == "avg" else method, 1.0 if alpha is None else alpha)
    size = max(float(torch.stack([d[k] for d in loras["deltas"]]).abs().max()) for k in reference)
    state = result.state_dict()
    assert set(state) == set(reference)
    assert _max_rel(state, reference) <= TOL * size
    notes = " ".join(result.report.notes)
    assert "LoRA adapter 'lora_2' changes 4 of 13 matrix keys; its task matrix is 0 on the other 9" in notes


def test_factored_merge_equals_merge_of_dense_fine_tunes(loras):
    """A task given as factors merges as the same task given densely (PEFT's merge_and_unload checkpoints), also
    mixed in one merge."""
    dense = hf_tsv.merge(loras["base"], loras["dense"]).state_dict()
    factored = hf_tsv.merge(loras["base"], loras["adapters"]).state_dict()
    mixed = hf_tsv.merge(loras["base"], [loras["dense"][0], *loras["adapters"][1:]]).state_dict()
    for other in (factored, mixed):
        assert max(float((other[k] - v).abs().max()) for k, v in dense.items()) < 1e-5


def test_fused_qkv_and_named_adapter_keys(loras, tmp_path):
    """--fuse-qkv stacks each adapter's q/k/v factors (blockdiag B, stacked A), as the dense path stacks ΔW; keys
    saved with the adapter's name (``lora_A.default.weight``) read the same."""
    named = Path(_edited(loras["adapters"][1], tmp_path / "named"))
    state = load_state_adapter(named)
    from safetensors.torch import save_file

    save_file({k.replace(".weight", ".default.weight"): v for k, v in state.items()},
              str(named / "adapter_model.safetensors"))
    adapters = [loras["adapters"][0], str(named), loras["adapters"][2]]
    factored = hf_tsv.merge(loras["base"], adapters, fuse_qkv=True).state_dict()
    dense = hf_tsv.merge(loras["base"], loras["dense"], fuse_qkv=True).state_dict()
    unfused = hf_tsv.merge(loras["base"], loras["dense"]).state_dict()
    assert max(float((factored[k] - v).abs().max()) for k, v in dense.items()) < 1e-5
    assert max(float((unfused[k] - v).abs().max()) for k, v in dense.items()) > 1e-4  # fusing changes the merge


@pytest.mark.parametrize("method", ["ties", "iso-c", "iso-cts"])
def test_dense_methods_form_each_adapter_delta(loras, method):
    """Methods that need ΔW densely get it formed per key: the same merge as of the merge_and_unload checkpoints."""
    factored = hf_tsv.merge(loras["base"], loras["adapters"], method=method).state_dict()
    dense = hf_tsv.merge(loras["base"], loras["dense"], method=method).state_dict()
    assert max(float((factored[k] - v).abs().max()) for k, v in dense.items()) < 1e-4


def test_benchmark_paths_agree():
    """benchmarks/bench_lora.py times two paths that compute the same merge."""
    from bench_lora import adapters, dense_merge, factored_merge

    deltas = adapters(64, 4, 8, seed=0)
    merged, dense = factored_merge(deltas, 64), dense_merge(deltas)
    assert float((merged - dense).abs().max()) <= 1e-5 * float(dense.abs().max())


def test_unformed_adapter_slots_hold_zeros(loras):
    """With form_factored=False an adapter's dense slot is zeros (KeyContext.factored holds its factors), also
    beside a dense fine-tune; formed, it is ΔW."""
    from hf_tsv.engine import Timer, build_plan, iter_units

    plan = build_plan(loras["base"], [loras["dense"][0], loras["adapters"][1]])
    unit = next(u for u in plan.units if u.is_matrix and u.name.endswith("layers.0.self_attn.q_proj.weight"))
    lazy = next(iter_units(plan, torch.device("cpu"), torch.float32, Timer(), units=[unit], form_factored=False))
    formed = next(iter_units(plan, torch.device("cpu"), torch.float32, Timer(), units=[unit]))
    assert lazy.factored[0] is None and lazy.factored[1] is not None
    assert bool((lazy.task_vectors[1] == 0).all()) and torch.equal(lazy.task_vectors[0], formed.task_vectors[0])
    assert torch.allclose(formed.task_vectors[1], lazy.factored[1].dense(), atol=1e-7)


# What the plan's memory estimate is checked on: one 1024×1024 key per matrix (q, k, v, o, fc1, fc2 of one layer),
# 8 rank-4 adapters; the unit's working set, measured as the peak RSS a merge adds once the same code paths ran,
# and the merge's wall time.
PEAK_PROBE = """
import ctypes, json, sys, time
import torch
from peft import LoraConfig, get_peft_model
from transformers import CLIPVisionModel
import hf_tsv
from hf_tsv.engine import PROCESS_BASELINE_BYTES, build_plan
from hf_tsv.synthetic import make_checkpoints

torch.set_num_threads(1)
work, tasks = sys.argv[1], 8

def inputs(name, hidden):
    shape = dict(hidden_size=hidden, intermediate_size=hidden, num_hidden_layers=1, num_attention_heads=4,
                 image_size=32, patch_size=16)
    dense = make_checkpoints(f"{work}/{name}", num_tasks=tasks, config_overrides=shape, seed=3)
    adapters = []
    for i in range(tasks):
        torch.manual_seed(i)
        lora = LoraConfig(r=4, lora_alpha=8, init_lora_weights=False,
                          target_modules=["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"])
        get_peft_model(CLIPVisionModel.from_pretrained(dense["base"]), lora).save_pretrained(f"{work}/{name}-{i}")
        adapters.append(f"{work}/{name}-{i}")
    return dense, adapters

def rss(field):
    return next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith(field))

small, small_adapters = inputs("small", 32)
dense, adapters = inputs("big", 1024)
hf_tsv.merge(small["base"], small_adapters, device="cpu", output_dir=f"{work}/warm-up")
ctypes.CDLL("libc.so.6").malloc_trim(0)  # the heap's freed memory goes back: the merge's own allocations count
before = rss("VmRSS:")
open("/proc/self/clear_refs", "w").write("5")  # VmHWM := VmRSS
start = time.perf_counter()
hf_tsv.merge(dense["base"], adapters, device="cpu", output_dir=f"{work}/merged")
seconds = time.perf_counter() - start
measured = rss("VmHWM:") - before
# after the merge: plan's timing probe leaves freed memory in the heap, which the merge would reuse unseen
planned = hf_tsv.plan(dense["base"], adapters, device="cpu")
estimate = planned["estimated_peak_memory_bytes"]
dense_estimate = build_plan(dense["base"], dense["tasks"]).estimate_peak_bytes()  # no timing probe: quicker
print(json.dumps({"measured": measured, "estimate": estimate - PROCESS_BASELINE_BYTES,
                  "dense_estimate": dense_estimate - PROCESS_BASELINE_BYTES, "seconds": seconds,
                  "estimated_seconds": planned["estimated_seconds"]}))
"""


def test_plan_estimates_the_memory_and_time_of_a_factored_adapter_merge(tmp_path):
    """``hf-tsv plan`` for TSV-M of 8 adapters follows the factored path (docs/lora.md, "Memory and time"): the
    estimated working set is no smaller than the measured one and at most 1.6× it, and under half the estimate for
    8 dense fine-tunes of the same shapes (T task matrices formed, as the plan assumed for adapters before); the
    estimated time is within 4× of the merge's wall time."""
    import os
    import subprocess
    import sys

    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("measuring a peak needs Linux's /proc/self/clear_refs")
    # tensors above 1 MiB always mmapped (glibc would otherwise raise the threshold and reuse freed heap unseen)
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(2**20)}
    out = subprocess.run([sys.executable, "-c", PEAK_PROBE, str(tmp_path)], capture_output=True, text=True,
                         check=True, env=env)
    sizes = json.loads(out.stdout.strip().splitlines()[-1])  # measured ~46 MiB, estimated 64 (dense: 156)
    assert sizes["measured"] <= sizes["estimate"] <= 1.6 * sizes["measured"], sizes
    assert sizes["estimate"] < sizes["dense_estimate"] / 2, sizes
    # the probe is that path too (a dense one, as before, estimated ~15 s for this 0.6 s merge); 4× either way,
    # as both are timed on a machine that may be busy
    assert sizes["seconds"] / 4 <= sizes["estimated_seconds"] <= 4 * sizes["seconds"], sizes


def test_sti_of_adapters_matches_dense(loras):
    factored = hf_tsv.sti(loras["base"], loras["adapters"])
    dense = hf_tsv.sti(loras["base"], loras["dense"])
    assert factored.total == pytest.approx(dense.total, rel=1e-3)


@pytest.mark.parametrize("method, alpha", [("tsv-m", 1.3), ("ta", 0.4)])
def test_peft_output_loads_in_peft_and_equals_the_dense_merge(loras, tmp_path, method, alpha):
    out = tmp_path / "adapter"
    result = hf_tsv.merge(loras["base"], loras["adapters"], method=method, alpha=alpha, output_dir=out,
                          output_format="peft")
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "adapter_config.json", "adapter_model.safetensors",
                                                    "merge_report.json"]
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["lora_alpha"] == config["r"]
    assert config["alpha_pattern"] == config["rank_pattern"]
    ranks = [config["rank_pattern"].get(m, config["r"]) for m in config["target_modules"]]
    budget = 3 * (32 // 3) if method == "tsv-m" else sum(a.get("r") for a in ADAPTERS) + 2  # T·k; Σ r_t (fc2: 5)
    assert max(ranks) <= budget
    merged = peft.PeftModel.from_pretrained(_clip(loras["base"]), out).merge_and_unload().state_dict()
    reference = _reference(loras, method, alpha)
    size = max(float(torch.stack([d[k] for d in loras["deltas"]]).abs().max()) for k in reference)
    assert _max_rel(merged, reference) <= TOL * size
    card = (out / "README.md").read_text()
    assert "library_name: peft" in card and "PeftModel.from_pretrained" in card
    assert result.report.output.format == "peft"
    assert json.loads((out / "merge_report.json").read_text())["output"]["format"] == "peft"
    with pytest.raises(hf_tsv.MergeInputError, match="PeftModel.from_pretrained"):
        result.to_model()
    assert hf_tsv.write_card(out).text == card  # `hf-tsv card` and push render the adapter's card, not a model's


def test_base_named_differently_in_adapter_config_is_merged_with_a_warning(loras, tmp_path):
    edited = tmp_path / "renamed"
    shutil.copytree(loras["adapters"][0], edited)
    config = json.loads((edited / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "someone/other-base"
    (edited / "adapter_config.json").write_text(json.dumps(config))
    result = hf_tsv.merge(loras["base"], [str(edited), *loras["adapters"][1:]])
    assert any("names base_model_name_or_path 'someone/other-base'" in w for w in result.report.warnings)
    assert not any("base_model_name_or_path" in w for w in hf_tsv.merge(loras["base"],
                                                                          loras["adapters"]).report.warnings)


# ----------------------------------------------------------------------------------------------------------------
# bad input
# ----------------------------------------------------------------------------------------------------------------


def _edited(src: str, dst: Path, config=None, tensors=None) -> str:
    shutil.copytree(src, dst)
    if config:
        data = json.loads((dst / "adapter_config.json").read_text())
        config(data)
        (dst / "adapter_config.json").write_text(json.dumps(data))
    if tensors:
        from safetensors.torch import save_file

        state = load_state_adapter(dst)
        tensors(state)
        save_file(state, str(dst / "adapter_model.safetensors"))
    return str(dst)


def load_state_adapter(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "adapter_model.safetensors"))


def _rename(state: dict, old: str, new: str) -> None:
    for key in [k for k in state if old in k]:
        state[key.replace(old, new)] = state.pop(key)


BAD = [
    pytest.param(dict(config=lambda c: c.update(use_dora=True)), {}, "sets use_dora = True", id="LRA-01"),
    pytest.param(dict(config=lambda c: c.update(peft_type="IA3")), {}, "peft_type 'IA3'", id="LRA-02"),
    pytest.param(dict(config=lambda c: c.update(bias="all")), {}, "sets bias = 'all'", id="LRA-03"),
    pytest.param(dict(config=lambda c: c.update(fan_in_fan_out=True)), {}, "sets fan_in_fan_out = True", id="LRA-04"),
    pytest.param(dict(config=lambda c: c.update(modules_to_save=["post_layernorm"])), {},
                 "sets modules_to_save = \\['post_layernorm'\\]", id="LRA-05"),
    pytest.param(dict(tensors=lambda s: _rename(s, "layers.0.self_attn.q_proj", "layers.0.self_attn.nonexistent")), {},
                 "which the base has no weight for", id="LRA-06"),
    pytest.param(dict(tensors=lambda s: s.update({"base_model.model.encoder.layers.0.self_attn.q_proj."
                                                  "lora_magnitude_vector": torch.ones(32)})), {},
                 "is not a LoRA factor", id="LRA-07"),
    pytest.param(dict(tensors=lambda s: s.pop(next(k for k in s if "lora_B" in k))), {}, "has no lora_B partner",
                 id="LRA-08"),
    pytest.param(dict(tensors=lambda s: s.update({k: v[:, :16].contiguous() for k, v in s.items()
                                                  if "lora_A" in k})), {},
                 "gives ΔW of shape .* but the base key .* has shape", id="LRA-14"),
    pytest.param(dict(config=lambda c: c.update(lora_alpha=float("nan"))), {}, "sets lora_alpha to nan", id="LRA-15"),
    pytest.param({}, dict(output_format="peft", exclude="fc1"), "changes key .*fc1.weight', which this merge averages",
                 id="LRA-16"),
    pytest.param({}, dict(method="ties", output_format="peft"), "method 'ties' cannot", id="LRA-09"),
    pytest.param({}, dict(output_format="safetensors"), "output_format \\(--output-format\\) must be one of",
                 id="LRA-10"),
]


@pytest.mark.parametrize("edit, options, message", BAD)
def test_bad_lora_input(loras, tmp_path, edit, options, message):
    first = _edited(loras["adapters"][0], tmp_path / "edited", **edit) if edit else loras["adapters"][0]
    out = tmp_path / "out"
    with pytest.raises(hf_tsv.MergeInputError, match=message):
        hf_tsv.merge(loras["base"], [first, *loras["adapters"][1:]], output_dir=out, **options)
    assert not out.exists()


def _without_safetensors(loras, tmp_path):
    folder = Path(_edited(loras["adapters"][0], tmp_path / "bin"))
    (folder / "adapter_model.safetensors").rename(folder / "adapter_model.bin")
    return loras["base"], [str(folder), *loras["adapters"][1:]], {}


CALLS = [
    pytest.param(lambda loras, tmp: (loras["adapters"][0], loras["adapters"][1:], {}),
                 "is a LoRA adapter .*pass the full model", id="LRA-11"),
    pytest.param(lambda loras, tmp: (loras["base"], [loras["dense"][0], *loras["adapters"][1:]],
                                     {"output_format": "peft"}), "'dense_0' is a full checkpoint", id="LRA-12"),
    pytest.param(lambda loras, tmp: (loras["base"], loras["adapters"], {"output_format": "peft", "output_dir": None}),
                 "give output_dir", id="LRA-13"),
    pytest.param(_without_safetensors, "adapter_model.safetensors not found .*save_pretrained", id="LRA-17"),
]


@pytest.mark.parametrize("call, message", CALLS)
def test_bad_lora_call(loras, tmp_path, call, message):
    base, models, options = call(loras, tmp_path)
    options = {"output_dir": tmp_path / "out", **options}
    with pytest.raises(hf_tsv.MergeInputError, match=message):
        hf_tsv.merge(base, models, **options)
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------------------------------------------
# CLI and Hub
# ----------------------------------------------------------------------------------------------------------------


def test_cli_merges_adapters_into_an_adapter(loras, tmp_path, capsys):
    from hf_tsv.cli import main

    out = tmp_path / "cli-adapter"
    assert main(["merge", loras["base"], *loras["adapters"], "-o", str(out), "--output-format", "peft"]) == 0
    expected = hf_tsv.merge(loras["base"], loras["adapters"], output_dir=tmp_path / "api", output_format="peft")
    assert all(torch.equal(v, expected.state_dict()[k]) for k, v in load_state_adapter(out).items())
    capsys.readouterr()
    assert main(["merge", loras["base"], *loras["adapters"], "-o", str(tmp_path / "x"), "--output-format", "peft",
                 "--method", "iso-c"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "method 'iso-c' cannot" in err[0]


def test_hub_adapters_download_exactly_their_two_files(loras, tmp_path, monkeypatch):
    from hub_server import running_hub
    from huggingface_hub import HfApi, constants

    with running_hub(tmp_path / "hub"):
        monkeypatch.setenv("HF_HUB_OFFLINE", "0")
        api = HfApi()
        ids = []
        for i, folder in enumerate(loras["adapters"]):
            api.create_repo(f"ns/lora{i}")
            api.upload_folder(repo_id=f"ns/lora{i}", folder_path=folder)  # with PEFT's README.md
            ids.append(f"ns/lora{i}")
        result = hf_tsv.merge(loras["base"], ids)
        local = hf_tsv.merge(loras["base"], loras["adapters"])
        assert all(torch.equal(result.state_dict()[k], v) for k, v in local.state_dict().items())
        snapshots = list(Path(constants.HF_HUB_CACHE).glob("models--ns--lora0/snapshots/*"))
        assert len(snapshots) == 1
        assert sorted(p.name for p in snapshots[0].iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
        assert [m.repo_id for m in result.report.models] == ids


def test_peft_output_pushes_with_its_card(loras, tmp_path, monkeypatch):
    from hub_server import running_hub
    from huggingface_hub import HfApi

    out = tmp_path / "adapter"
    result = hf_tsv.merge(loras["base"], loras["adapters"], output_dir=out, output_format="peft")
    with running_hub(tmp_path / "hub"):
        monkeypatch.setenv("HF_HUB_OFFLINE", "0")
        result.push_to_hub("ns/merged-lora")
        files = set(HfApi().list_repo_files("ns/merged-lora"))
        assert {"adapter_config.json", "adapter_model.safetensors", "README.md", "merge_report.json"} <= files
        card = Path(HfApi().hf_hub_download("ns/merged-lora", "README.md")).read_text()
        assert "library_name: peft" in card



def test_sti_of_adapters_is_computed_on_their_kept_columns_only(monkeypatch):
    """Null triplets contribute nothing to STI; leaving them out (Grams of Σ r_t columns, not T·k) gives the value of
    the full T·k formula, and the Grams really are of the kept columns."""
    from hf_tsv.core import cpu_lapack, singular_task_interference
    from hf_tsv.core.tsv import TaskFactors

    gen = torch.Generator().manual_seed(4)
    factors = task_factors(torch.zeros(3, 40, 30, dtype=torch.float64),
                           [LowRankDelta(torch.randn(40, 2, generator=gen, dtype=torch.float64),
                                         torch.randn(2, 30, generator=gen, dtype=torch.float64)) for _ in range(3)],
                           compute_dtype=torch.float64)
    assert factors.k == 10 and int((factors.s != 0).sum()) == 6
    u_hat, s_hat, v_hat = factors.concatenated()
    same = torch.block_diag(*[torch.ones(10, 10, dtype=torch.bool)] * 3)
    left, right = (u_hat.T @ u_hat).masked_fill(same, 0), (v_hat.T @ v_hat).masked_fill(same, 0)
    full = float(((left * s_hat) @ right).abs().sum())
    shapes = []
    real_gram = cpu_lapack.gram
    monkeypatch.setattr(cpu_lapack, "gram", lambda a: shapes.append(tuple(a.shape)) or real_gram(a))
    compact = singular_task_interference(TaskFactors(factors.u, factors.s, factors.v))
    assert full > 0 and compact == pytest.approx(full, rel=1e-12)
    assert shapes == [(40, 6), (30, 6)]
