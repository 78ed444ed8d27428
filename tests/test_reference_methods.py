"""Every merge method against an independent float64 implementation written here, from the papers' definitions and
(where it is what produced the published numbers) the authors' code; nothing of ``hf_tsv.core`` is imported. The
merges run through the CLI (``hf_tsv.cli.main`` in-process) with the default float32 compute; every key must agree
to 1e-4 relative.

Checkpoints: tiny CLIP vision models with hidden size 64 and 65 positions (r = 64 for every matrix key), T = 4
and T = 8, each method on a spectrum where float32 can be expected to match float64 (see ``SPECTRUM``). At r = 64
the Iso-CTS size rules differ: the authors' keep exactly 64 directions for T = 4 and 8, where
⌊0.8·r⌋ + ⌊(r − ⌊0.8·r⌋)/T⌋·T would keep 63 and 59.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from conftest import copy_checkpoint, load_state, max_rel_diff

import hf_tsv
from hf_tsv.cli import main
from hf_tsv.synthetic import make_checkpoints

F64 = torch.float64
CONFIG = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, patch_size=4)  # 65 positions: r = 64
TOLERANCE = 1e-4


@pytest.fixture(scope="module", params=[4, 8], ids=["T4", "T8"])
def tasks(request, tmp_path_factory) -> dict:
    """Per spectrum, a base and T fine-tunes."""
    num_tasks = request.param
    return {spectrum: make_checkpoints(tmp_path_factory.mktemp(f"{spectrum}{num_tasks}"), preset="tiny",
                                       num_tasks=num_tasks, spectrum=spectrum, relative_size=0.05, seed=11,
                                       config_overrides=CONFIG)
            for spectrum in ("gapped", "noise")}


# ---- the references, float64, from the definitions -------------------------------------------------------------

def task_vectors(paths: dict) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """θ₀ and τ_t = θ_t − θ₀ per key, stacked (T, ...). The difference is taken in the checkpoints' float32, as
    every implementation (the authors' included) does; everything after it in float64."""
    theta0 = load_state(paths["base"])
    thetas = [load_state(t) for t in paths["tasks"]]
    return theta0, {k: torch.stack([th[k] - w0 for th in thetas]).to(F64) for k, w0 in theta0.items()}


def polar(a: torch.Tensor) -> torch.Tensor:
    p, _, qh = torch.linalg.svd(a, full_matrices=False)
    return p @ qh


def tsv_factors(tau: torch.Tensor):
    """Each task's top k = ⌊r/T⌋ triplets, concatenated: Û (m, T·k), σ̂ (T·k), V̂ (n, T·k)."""
    num_tasks, m, n = tau.shape
    k = min(m, n) // num_tasks
    us, ss, vs = [], [], []
    for t in range(num_tasks):
        u, s, vh = torch.linalg.svd(tau[t], full_matrices=False)
        us.append(u[:, :k]), ss.append(s[:k]), vs.append(vh[:k].T)
    return torch.cat(us, 1), torch.cat(ss), torch.cat(vs, 1)


def ref_tsv_m(tau: torch.Tensor) -> torch.Tensor:
    """Gargiulo et al., CVPR 2025: Δ = U⊥ diag(σ̂) V⊥ᵀ, U⊥ and V⊥ the polar factors of Û and V̂."""
    u, s, v = tsv_factors(tau)
    return polar(u) @ torch.diag(s) @ polar(v).T


def ref_sti(tau: torch.Tensor) -> float:
    """STI = Σ |(ÛᵀÛ − I) Σ̂ (V̂ᵀV̂ − I)|."""
    u, s, v = tsv_factors(tau)
    eye = torch.eye(s.numel(), dtype=F64)
    return float(((u.T @ u - eye) @ torch.diag(s) @ (v.T @ v - eye)).abs().sum())


def ref_iso_c(tau: torch.Tensor) -> torch.Tensor:
    """Marczak et al., ICML 2025: Σ_t τ_t = U S Vᵀ → mean(S)·U Vᵀ."""
    u, s, vh = torch.linalg.svd(tau.sum(0), full_matrices=False)
    return s.mean() * u @ vh


def ref_iso_cts(tau: torch.Tensor, common_fraction: float = 0.8) -> torch.Tensor:
    """Marczak et al., ICML 2025, with the authors' subspace sizes: k_c = int(f·r), then every task gets
    round((r − k_c)/T) directions and k_c = r − T·that, so exactly r directions; flat spectrum at their mean."""
    num_tasks, m, n = tau.shape
    r = min(m, n)
    k_c = int(common_fraction * r)
    per_task = round((r - k_c) / num_tasks)
    k_c = r - per_task * num_tasks
    u, s, vh = torch.linalg.svd(tau.sum(0), full_matrices=False)
    us, ss, vs = [u[:, :k_c]], [s[:k_c]], [vh[:k_c].T]
    for t in range(num_tasks):
        residual = tau[t] - u[:, :k_c] @ (u[:, :k_c].T @ tau[t])
        ut, st, vht = torch.linalg.svd(residual, full_matrices=False)
        us.append(ut[:, :per_task]), ss.append(st[:per_task]), vs.append(vht[:per_task].T)
    s_all = torch.cat(ss)
    assert s_all.numel() == r
    return s_all.mean() * polar(torch.cat(us, 1)) @ polar(torch.cat(vs, 1)).T


def ref_ties(taus: dict[str, torch.Tensor], density: float, merge: str, scope: str) -> dict[str, torch.Tensor]:
    """Yadav et al., NeurIPS 2023, as github.com/prateeky2806/ties-merging computes it: per task, keep |τ| ≥ the
    (d − int(d·K))-th smallest |τ| of the task's flattened parameters (the whole model, or one tensor); sign =
    sign of the sum, 0 → the sign of the sum of all signs; mean (or sum) of the entries that agree."""
    groups = [list(taus)] if scope == "model" else [[k] for k in taus]
    out = {}
    for keys in groups:
        flat = torch.cat([taus[k].reshape(taus[k].shape[0], -1) for k in keys], dim=1)
        d = flat.shape[1]
        kth = flat.abs().kthvalue(d - int(d * density), dim=1, keepdim=True).values
        trimmed = flat * (flat.abs() >= kth)
        sign = torch.sign(trimmed.sum(0))
        sign[sign == 0] = torch.sign(sign.sum())
        agree = torch.where(sign > 0, trimmed > 0, trimmed < 0)
        merged = (trimmed * agree).sum(0)
        if merge == "mean":
            merged = merged / agree.sum(0).clamp(min=1)
        sizes = [taus[k][0].numel() for k in keys]
        for key, part in zip(keys, merged.split(sizes)):
            out[key] = part.reshape(taus[key].shape[1:])
    return out


def reference_delta(method: str, taus: dict[str, torch.Tensor], **options) -> dict[str, torch.Tensor]:
    if method == "ties":
        return ref_ties(taus, options.get("density", 0.2), options.get("merge", "mean"), options.get("scope", "model"))
    if method == "avg":
        return {k: tau.mean(0) for k, tau in taus.items()}
    if method == "ta":
        return {k: tau.sum(0) for k, tau in taus.items()}
    svd_rule = {"tsv-m": ref_tsv_m, "iso-c": ref_iso_c, "iso-cts": ref_iso_cts}[method]
    return {k: svd_rule(tau) if tau.ndim == 3 else tau.mean(0) for k, tau in taus.items()}


# ---- the comparisons -------------------------------------------------------------------------------------------

def cli_merge(paths: dict, out: Path, *args: str) -> tuple[dict[str, torch.Tensor], dict]:
    assert main(["merge", paths["base"], *paths["tasks"], "-o", str(out), "--device", "cpu", *args]) == 0
    return load_state(out), json.loads((out / "merge_report.json").read_text())


# The spectrum each method is checked on, so that float32 can be expected to match float64: TSV-M's kept vectors
# are well defined where each task has a gap at k (gapped); Iso-C/Iso-CTS flatten the spectrum of Σ_t τ_t, whose
# smallest singular values set their conditioning: ~2e3 on "noise" data, ~4e4 on "gapped" (σ_max/σ_min).
SPECTRUM = {"tsv-m": "gapped", "iso-c": "noise", "iso-cts": "noise"}
METHOD_ARGS = {
    "avg": ([], {}),
    "ta": ([], {}),
    "ties-mean-model": (["--ties-merge", "mean", "--ties-scope", "model"], dict(merge="mean", scope="model")),
    "ties-sum-model": (["--ties-merge", "sum", "--ties-scope", "model"], dict(merge="sum", scope="model")),
    "ties-mean-tensor": (["--ties-merge", "mean", "--ties-scope", "tensor"], dict(merge="mean", scope="tensor")),
    "ties-sum-tensor": (["--ties-merge", "sum", "--ties-scope", "tensor"], dict(merge="sum", scope="tensor")),
    "iso-c": ([], {}),
    "iso-cts": ([], {}),
    "tsv-m": ([], {}),
}


@pytest.mark.parametrize("variant", list(METHOD_ARGS))
def test_cli_merge_matches_independent_reference(tasks, tmp_path, variant):
    method = variant.split("-")[0] if variant.startswith("ties") else variant
    args, options = METHOD_ARGS[variant]
    paths = tasks[SPECTRUM.get(method, "noise")]
    merged, report = cli_merge(paths, tmp_path / "out", "--method", method, *args)
    theta0, taus = task_vectors(paths)
    alpha = report["alpha"]
    expected = reference_delta(method, taus, **options)
    worst = {k: max_rel_diff(merged[k].to(F64) - theta0[k].to(F64), alpha * expected[k]) for k in expected}
    assert max(worst.values()) <= TOLERANCE, sorted(worst.items(), key=lambda kv: -kv[1])[:3]
    if method == "ties":
        assert alpha == (1.0 if options["merge"] == "mean" else 0.3)
        assert report["options"]["ties_scope"] == options["scope"]


def test_ties_model_and_tensor_scope_differ_on_small_tensors(tasks, tmp_path):
    """The reference trims over the whole model. Every tensor moved by 5% of its norm, so a LayerNorm weight (~1)
    moved far more per entry than a weight matrix (~0.02): all its entries survive every task's trim, whereas
    per-tensor trimming keeps the top 20% (+1) of every tensor, LayerNorms included."""
    paths = tasks["noise"]
    model, _ = cli_merge(paths, tmp_path / "model", "--method", "ties")
    per_tensor, _ = cli_merge(paths, tmp_path / "tensor", "--method", "ties", "--ties-scope", "tensor")
    theta0 = load_state(paths["base"])

    def changed(state, key):
        return float((state[key] != theta0[key]).float().mean())

    norm, matrix = "encoder.layers.0.layer_norm1.weight", "encoder.layers.0.mlp.fc1.weight"
    assert changed(model, norm) == 1.0 and changed(per_tensor, norm) < 0.95
    assert max_rel_diff(model[norm] - theta0[norm], per_tensor[norm] - theta0[norm]) > 0.1
    assert max_rel_diff(model[matrix] - theta0[matrix], per_tensor[matrix] - theta0[matrix]) > 0.1


def test_sti_matches_independent_reference(tasks, tmp_path):
    paths = tasks["gapped"]
    assert main(["sti", paths["base"], *paths["tasks"], "--device", "cpu", "--json", str(tmp_path / "sti.json")]) == 0
    keys = json.loads((tmp_path / "sti.json").read_text())["keys"]
    _, taus = task_vectors(paths)
    expected = {k: ref_sti(tau) for k, tau in taus.items() if tau.ndim == 3}
    assert set(keys) == set(expected)
    worst = max(abs(keys[k] - v) / v for k, v in expected.items())
    assert worst <= TOLERANCE, worst


def test_iso_cts_size_rules_differ_here():
    """The checkpoints above are a case the old rule (⌊(r − k_c)/T⌋ per task) got wrong."""
    from hf_tsv.core import iso_cts_sizes

    for num_tasks, old_total in ((4, 63), (8, 59)):
        k_c = int(0.8 * 64)
        assert k_c + (64 - k_c) // num_tasks * num_tasks == old_total
        common, per_task = iso_cts_sizes(64, num_tasks)
        assert common + per_task * num_tasks == 64
    assert iso_cts_sizes(768, 20) == (608, 8)  # not 754 directions


# ---- null directions: one rule, whatever the compute dtype -----------------------------------------------------

@pytest.fixture(scope="module")
def low_rank_tasks(tmp_path_factory) -> dict:
    """Four float32 fine-tunes whose every weight matrix moved by a rank-2 matrix (a merged LoRA): far below
    k = ⌊r/T⌋ = 8, so most kept triplets are null. Stored in float32, so each τ also carries float32 rounding."""
    root = tmp_path_factory.mktemp("lowrank")
    paths = make_checkpoints(root / "gen", preset="tiny", num_tasks=1, seed=5)
    base = paths["base"]
    gen = torch.Generator().manual_seed(7)
    tasks = []
    for t in range(4):
        def edit(state, t=t):
            for key, w in state.items():
                if w.ndim == 2:
                    delta = torch.randn(w.shape[0], 2, generator=gen, dtype=F64) @ torch.randn(
                        2, w.shape[1], generator=gen, dtype=F64)
                else:
                    delta = torch.randn(w.shape, generator=gen, dtype=F64)
                delta *= 1e-3 * float(w.norm()) / float(delta.norm())
                state[key] = (w.to(F64) + delta).to(w.dtype)
        tasks.append(str(copy_checkpoint(base, root / f"lora{t}", edit=edit)))
    return {"base": base, "tasks": tasks}


@pytest.mark.parametrize("method,svd", [("tsv-m", "exact"), ("tsv-m", "fast"), ("tsv-m", "lapack"),
                                        ("iso-c", "exact"), ("iso-cts", "exact")])
def test_float32_and_float64_svds_agree_on_rank_deficient_tasks(low_rank_tasks, method, svd):
    """The merged deltas Δ (before they are added to θ₀ and rounded) of float32 and float64 SVDs agree to float32
    rounding. With the compute dtype's epsilon in the null rule they differed by 0.3-0.8."""
    single = hf_tsv.merge_linear(low_rank_tasks["base"], low_rank_tasks["tasks"], method=method, svd=svd,
                                 compute_dtype="float32", device="cpu")
    double = hf_tsv.merge_linear(low_rank_tasks["base"], low_rank_tasks["tasks"], method=method, svd=svd,
                                 compute_dtype="float64", device="cpu")
    worst = max(max_rel_diff(single.delta_state[k], double.delta_state[k])
                for k, v in double.delta_state.items() if v.ndim == 2)
    assert worst < 1e-5, worst


def test_sti_of_rank_deficient_tasks_does_not_depend_on_the_compute_dtype(low_rank_tasks):
    single = hf_tsv.sti(low_rank_tasks["base"], low_rank_tasks["tasks"], compute_dtype="float32", device="cpu")
    double = hf_tsv.sti(low_rank_tasks["base"], low_rank_tasks["tasks"], compute_dtype="float64", device="cpu")
    assert single.total == pytest.approx(double.total, rel=1e-4)


# ---- TIES over the whole model in bounded memory ---------------------------------------------------------------

def test_ties_model_scope_peak_memory_stays_far_below_one_task_vector(tmp_path):
    """A fresh process merges 4 fine-tunes of a 48-layer model (37 MB each, keys of at most 256 KB) with TIES over
    the whole model. Its peak resident memory (VmHWM, which unlike ru_maxrss does not inherit the parent's) may
    grow by far less than one model: the exact global threshold never holds a whole task vector."""
    import subprocess
    import sys

    paths = make_checkpoints(tmp_path / "ck", preset="small", num_tasks=4, seed=3,
                             config_overrides=dict(hidden_size=128, intermediate_size=512, num_hidden_layers=48))
    warm = make_checkpoints(tmp_path / "warm", preset="tiny", num_tasks=2)
    model_bytes = (Path(paths["base"]) / "model.safetensors").stat().st_size
    code = (
        "import re, torch, hf_tsv\n"
        "def peak():\n"
        "    status = open('/proc/self/status').read()\n"
        "    return int(re.search(r'VmHWM:\\s+(\\d+) kB', status).group(1)) * 1024\n"
        "torch.set_num_threads(1)\n"
        f"hf_tsv.merge({warm['base']!r}, {warm['tasks']!r}, method='ties', output_dir={str(tmp_path / 'w')!r})\n"
        "before = peak()\n"
        f"r = hf_tsv.merge({paths['base']!r}, {paths['tasks']!r}, method='ties', output_dir={str(tmp_path / 'o')!r})\n"
        "assert r.report.options.parameters['ties_scope'] == 'model'\n"
        "print(before, peak())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    before, after = map(int, out.stdout.split())
    growth = after - before
    # Holding the 4 task vectors would take 4 x model_bytes; streaming needs a few copies of one key.
    assert growth < 0.5 * model_bytes, (growth, model_bytes)


def test_ties_over_the_whole_model_through_merge_linear_plan_and_alpha_grids(tiny, monkeypatch):
    """merge_linear (what --alpha search and the benchmark use) computes the same model-wide TIES once; the α grid
    follows --ties-merge; plan estimates it, with the extra reads of the model-wide pass."""
    from hf_tsv.evaluation import default_grid

    linear = hf_tsv.merge_linear(tiny["base"], tiny["tasks"], method="ties", device="cpu")
    direct = hf_tsv.merge(tiny["base"], tiny["tasks"], method="ties", alpha=0.7, device="cpu")
    assert "model_pass_s" in direct.report.timings
    at = linear.state_dict(0.7)
    assert all(torch.equal(at[k], v) for k, v in direct.state_dict().items())
    grid = linear.alpha_grid  # the documented grids: 0.1, 0.2 … 3.0 for the disjoint mean, 1/30 … 1 for the sum
    assert grid == default_grid("ties") and len(grid) == 30 and grid[:3] == [0.1, 0.2, 0.3] and grid[-1] == 3.0
    summed = hf_tsv.merge_linear(tiny["base"], tiny["tasks"], method="ties", ties_merge="sum", device="cpu")
    assert len(summed.alpha_grid) == 30 and summed.alpha_grid[-1] == 1.0 and summed.report.alpha == 0.3
    assert summed.alpha_grid[0] == pytest.approx(1 / 30) and summed.alpha_grid[14] == pytest.approx(0.5)
    info = hf_tsv.plan(tiny["base"], tiny["tasks"], method="ties")
    assert info["method"] == "ties"
    # on a disk that reads one model per second, reading the 4 inputs takes 4 s; the model-wide trim reads them again
    monkeypatch.setattr("hf_tsv.estimate.READ_BYTES_PER_SECOND", info["model_bytes"])
    per_tensor = hf_tsv.plan(tiny["base"], tiny["tasks"], method="ties", ties_scope="tensor")["estimated_seconds"]
    model_wide = hf_tsv.plan(tiny["base"], tiny["tasks"], method="ties")["estimated_seconds"]
    assert per_tensor == 4.0 and model_wide >= 2 * per_tensor


# ---- bad input -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("args,fragment", [
    pytest.param(["--method", "ties", "--ties-density", "0"], "ties_density (--ties-density) must be in (0, 1]",
                 id="BL-01"),
    pytest.param(["--method", "ties", "--ties-density", "nan"],
                 "ties_density (--ties-density) must be a finite number, got nan", id="BL-02"),
    pytest.param(["--method", "iso-cts", "--iso-common-fraction", "1.5"],
                 "iso_common_fraction (--iso-common-fraction) must be in (0, 1]", id="BL-03"),
    pytest.param(["--method", "ties", "--ties-merge", "max"], "invalid choice: 'max'", id="BL-04"),
    pytest.param(["--method", "ties", "--ties-scope", "layer"], "invalid choice: 'layer'", id="BL-05"),
])
def test_bad_method_options_fail_early(tiny, tmp_path, capsys, args, fragment):
    out = tmp_path / "out"
    try:
        code = main(["merge", tiny["base"], *tiny["tasks"], "-o", str(out), *args])
    except SystemExit as exc:  # argparse's own refusal
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err
    assert fragment in err
    assert not out.exists() and not list(tmp_path.iterdir())


@pytest.mark.parametrize("options,fragment", [
    pytest.param(dict(ties_merge="max"), "ties_merge (--ties-merge) must be one of mean, sum", id="BL-06"),
    pytest.param(dict(ties_scope="layer"), "ties_scope (--ties-scope) must be one of model, tensor", id="BL-07"),
])
def test_bad_method_options_in_python_fail_before_reading(options, fragment):
    with pytest.raises(hf_tsv.MergeInputError, match=re.escape(fragment)):
        hf_tsv.merge("/nonexistent/base", ["/nonexistent/a", "/nonexistent/b"], method="ties", **options)
