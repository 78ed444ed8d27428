"""The properties of method.md, checked on the pure core functions."""

from __future__ import annotations

import math

import pytest
import torch

from hf_tsv import core

F64 = torch.float64
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def padded_reference_tsv_m(tau: torch.Tensor) -> torch.Tensor:
    """method.md's TSV-M step by step in float64, with the paper's zero-padded r-column layout."""
    tau = tau.to(F64)
    num_tasks, m, n = tau.shape
    r = min(m, n)
    k = r // num_tasks
    u_pad = torch.zeros(m, r, dtype=F64)
    s_pad = torch.zeros(r, dtype=F64)
    v_pad = torch.zeros(n, r, dtype=F64)
    for t in range(num_tasks):
        u, s, vh = torch.linalg.svd(tau[t], full_matrices=False)
        u_pad[:, t * k:(t + 1) * k] = u[:, :k]
        s_pad[t * k:(t + 1) * k] = s[:k]
        v_pad[:, t * k:(t + 1) * k] = vh[:k].T
    p, _, qh = torch.linalg.svd(u_pad, full_matrices=False)
    u_perp = p @ qh
    p, _, qh = torch.linalg.svd(v_pad, full_matrices=False)
    v_perp = p @ qh
    return u_perp @ torch.diag(s_pad) @ v_perp.T


def literal_sti(tau: torch.Tensor) -> float:
    """STI exactly as written: Σ|(ÛᵀÛ − I) Σ̂ (V̂ᵀV̂ − I)| on the truncated concatenated factors."""
    tau = tau.to(F64)
    num_tasks, m, n = tau.shape
    k = min(m, n) // num_tasks
    us, ss, vs = [], [], []
    for t in range(num_tasks):
        u, s, vh = torch.linalg.svd(tau[t], full_matrices=False)
        us.append(u[:, :k])
        ss.append(s[:k])
        vs.append(vh[:k].T)
    u_hat, s_hat, v_hat = torch.cat(us, 1), torch.cat(ss), torch.cat(vs, 1)
    eye = torch.eye(num_tasks * k, dtype=F64)
    return float(((u_hat.T @ u_hat - eye) @ torch.diag(s_hat) @ (v_hat.T @ v_hat - eye)).abs().sum())


@pytest.mark.parametrize("shape", [(24, 14), (14, 24), (18, 18)], ids=["tall", "wide", "square"])
@pytest.mark.parametrize("num_tasks", [2, 3, 5])
def test_tsv_m_matches_padded_reference(shape, num_tasks):
    tau = torch.randn(num_tasks, *shape, generator=torch.Generator().manual_seed(7), dtype=F64)
    ours = core.tsv_merge(tau, compute_dtype=F64)
    assert ours.dtype == F64
    torch.testing.assert_close(ours, padded_reference_tsv_m(tau), atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("shape", [(24, 14), (14, 24)])
def test_float32_close_to_float64_with_a_spectral_gap(shape):
    gen = torch.Generator().manual_seed(3)
    num_tasks, k = 3, min(shape) // 3
    tau = torch.stack([torch.randn(shape[0], k, generator=gen) @ torch.randn(k, shape[1], generator=gen)
                       + 1e-5 * torch.randn(*shape, generator=gen) for _ in range(num_tasks)])
    ours = core.tsv_merge(tau)
    assert ours.dtype == torch.float32
    ref = padded_reference_tsv_m(tau)
    assert float((ours.double() - ref).norm() / ref.norm()) < 1e-5


@pytest.mark.parametrize("shape", [(10, 6), (6, 10), (8, 8)])
def test_single_task_returns_the_task_vector(shape):
    tau = torch.randn(1, *shape, dtype=F64)
    torch.testing.assert_close(core.tsv_merge(tau, compute_dtype=F64), tau[0])
    torch.testing.assert_close(core.tsv_merge(tau.float()), tau[0].float(), atol=1e-5, rtol=1e-5)


def test_invariant_to_singular_vector_sign_flips():
    gen = torch.Generator().manual_seed(11)
    tau = torch.randn(3, 16, 12, generator=gen, dtype=F64)
    f = core.truncated_task_factors(tau, compute_dtype=F64)
    signs = torch.where(torch.rand(f.s.shape, generator=gen) < 0.5, -1.0, 1.0).to(F64)
    flipped = core.TaskFactors(f.u * signs[:, None, :], f.s, f.v * signs[:, None, :])
    torch.testing.assert_close(core.tsv_merge_factors(flipped), core.tsv_merge_factors(f))
    assert core.singular_task_interference(flipped) == pytest.approx(core.singular_task_interference(f), rel=1e-9)


def test_orthogonal_low_rank_tasks_give_task_arithmetic():
    gen = torch.Generator().manual_seed(5)
    m, n, num_tasks = 20, 16, 4
    k = min(m, n) // num_tasks  # 4
    q_left, _ = torch.linalg.qr(torch.randn(m, m, generator=gen, dtype=F64))
    q_right, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=F64))
    tasks = []
    for t in range(num_tasks):
        rank = k - (t % 2)  # ranks 4 and 3, all ≤ k
        u = q_left[:, t * k:t * k + rank]
        v = q_right[:, t * k:t * k + rank]
        s = torch.rand(rank, generator=gen, dtype=F64) + 0.5
        tasks.append(u @ torch.diag(s) @ v.T)
    tau = torch.stack(tasks)
    torch.testing.assert_close(core.tsv_merge(tau, compute_dtype=F64), core.task_arithmetic(tau))
    assert core.singular_task_interference(core.truncated_task_factors(tau, compute_dtype=F64)) < 1e-10


def test_sti_matches_the_literal_formula_and_vanishes_after_orthogonalisation():
    tau = torch.randn(3, 15, 12, generator=torch.Generator().manual_seed(2), dtype=F64)
    f = core.truncated_task_factors(tau, compute_dtype=F64)
    assert core.singular_task_interference(f) == pytest.approx(literal_sti(tau), rel=1e-9)
    assert core.singular_task_interference(f) > 0.1
    u_hat, s_hat, v_hat = f.concatenated()
    u_perp, v_perp = core.polar_factor(u_hat), core.polar_factor(v_hat)
    t, k = f.s.shape
    orth = core.TaskFactors(u_perp.reshape(15, t, k).permute(1, 0, 2), f.s,
                            v_perp.reshape(12, t, k).permute(1, 0, 2))
    assert core.singular_task_interference(orth) < 1e-10


def test_zero_rank_when_more_tasks_than_rank():
    tau = torch.randn(5, 3, 4)
    assert core.tasks_rank((3, 4), 5) == 0
    delta = core.tsv_merge(tau)
    assert delta.shape == (3, 4) and torch.count_nonzero(delta) == 0
    assert core.singular_task_interference(core.truncated_task_factors(tau)) == 0.0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs_are_decomposed_in_float32(dtype):
    tau = (torch.randn(2, 12, 8) * 1e-3).to(dtype)
    f = core.truncated_task_factors(tau)
    assert f.u.dtype == f.s.dtype == f.v.dtype == torch.float32
    ref = core.truncated_task_factors(tau.float())
    torch.testing.assert_close(f.s, ref.s)


@pytest.mark.parametrize("device", DEVICES)
def test_batched_svd_wide_and_tall_reconstruct(device):
    for shape in [(4, 9, 30), (4, 30, 9)]:
        a = torch.randn(*shape, device=device) * 1e-4
        u, s, v = core.batched_svd(a)
        assert u.device.type == device
        torch.testing.assert_close((u * s[:, None, :]) @ v.mT, a, atol=1e-9, rtol=1e-4)
        assert torch.all(s[:, :-1] >= s[:, 1:])


def test_polar_factor_is_the_nearest_orthonormal_matrix():
    a = torch.randn(10, 4, dtype=F64)
    q = core.polar_factor(a)
    torch.testing.assert_close(q.T @ q, torch.eye(4, dtype=F64))
    # Whitening a (aᵀa)^-1/2 gives the same matrix when a has full column rank.
    evals, evecs = torch.linalg.eigh(a.T @ a)
    torch.testing.assert_close(q, a @ evecs @ torch.diag(evals.rsqrt()) @ evecs.T)
    # and it stays finite with a zero column (rank deficiency)
    a[:, 2] = 0
    assert torch.isfinite(core.polar_factor(a)).all()


@pytest.mark.parametrize("condition", [3.0, 1e3])
def test_fast_polar_factor_of_a_tall_block_comes_from_its_exact_gram(condition):
    """A tall float32 block's fast polar factor (Gram in float64, float64 eigendecomposition) equals the float64
    SVD's polar factor of the block as stored, closer than a float32 SVD gets, up to κ ~ 1e3 (applied in float64
    beyond κ = 10)."""
    from hf_tsv.core.svd import polar_factor_from_gram

    gen = torch.Generator().manual_seed(5)
    left, _ = torch.linalg.qr(torch.randn(96, 24, generator=gen, dtype=F64))
    right, _ = torch.linalg.qr(torch.randn(24, 24, generator=gen, dtype=F64))
    sigma = torch.logspace(0, -math.log10(condition), 24, dtype=F64)
    block = ((left * sigma) @ right.T).float()
    truth = core.polar_factor(block.double())
    fast = core.polar_factor(block, mode="fast")
    assert fast.dtype == torch.float32
    error = float((fast.double() - truth).abs().max())
    float32_svd = float((core.polar_factor(block).double() - truth).abs().max())
    assert error <= 1e-6 and error <= float32_svd, (error, float32_svd)
    torch.testing.assert_close(polar_factor_from_gram(block).double(), fast.double(), rtol=0, atol=0)


def test_fast_polar_factor_of_a_rank_deficient_tall_block_takes_the_svd():
    """No Gram route where the block is numerically rank-deficient: σ_min² would be rounding noise (or 0)."""
    from hf_tsv.core.svd import polar_factor_from_gram

    block = torch.randn(60, 12)
    block[:, 5] = block[:, 4]
    assert polar_factor_from_gram(block) is None
    fast = core.polar_factor(block, mode="fast")
    # a polar factor still (not unique here: the null direction's vectors are free): orthonormal columns P with
    # Pᵀ·block symmetric positive semi-definite and P·(Pᵀ·block) = block
    torch.testing.assert_close(fast.T @ fast, torch.eye(12), atol=1e-5, rtol=0)
    h = fast.T @ block
    torch.testing.assert_close(h, h.T, atol=1e-4, rtol=0)
    assert float(torch.linalg.eigvalsh((h + h.T) / 2).min()) > -1e-4
    torch.testing.assert_close(fast @ h, block, atol=1e-4, rtol=0)


def test_weight_average_and_task_arithmetic():
    tau = torch.randn(3, 5, 4)
    torch.testing.assert_close(core.weight_average(tau), tau.mean(0))
    torch.testing.assert_close(core.task_arithmetic(tau), tau.sum(0))


def test_ties_trim_elect_disjoint_mean():
    tau = torch.tensor([[0.9, -0.1, 0.5, 0.0, -0.8],
                        [0.7, 0.2, -0.6, 0.05, -0.1],
                        [-0.2, 0.3, -0.4, 0.1, 0.9]])
    # density 0.4, d = 5: the reference's threshold is the (5 - int(5 * 0.4)) = 3rd smallest |entry|, and
    # entries >= it survive, i.e. the top 3 of each task:
    # t0: 0.9, 0.5, -0.8   t1: 0.7, 0.2, -0.6   t2: 0.3, -0.4, 0.9
    # sums: [1.6, 0.5, -0.5, 0, 0.1] -> signs [+, +, -, 0, +]
    out = core.ties(tau, density=0.4)
    expected = torch.tensor([0.8, 0.25, -0.5, 0.0, 0.9])
    torch.testing.assert_close(out, expected)
    assert core.ties(tau, density=1.0).shape == (5,)
    with pytest.raises(ValueError):
        core.ties(tau, density=0.0)


def test_iso_c_and_iso_cts_have_flat_spectra():
    tau = torch.randn(3, 16, 12, dtype=F64)
    for delta in (core.iso_c(tau, compute_dtype=F64), core.iso_cts(tau, compute_dtype=F64)):
        s = torch.linalg.svdvals(delta)
        s = s[s > 1e-9 * s.max()]
        torch.testing.assert_close(s, torch.full_like(s, float(s.mean())))
    u, s, vh = torch.linalg.svd(tau.sum(0), full_matrices=False)
    torch.testing.assert_close(core.iso_c(tau, compute_dtype=F64), s.mean() * u @ vh)
    # With the whole rank as common subspace, Iso-CTS is Iso-C.
    torch.testing.assert_close(core.iso_cts(tau, 1.0, compute_dtype=F64), core.iso_c(tau, compute_dtype=F64))


def test_tsv_m_reduces_interference_relative_to_task_arithmetic_energy():
    """Sanity on the merged delta: TSV-M's delta keeps every task's top singular values (as a multiset)."""
    tau = torch.randn(2, 12, 12, dtype=F64)
    f = core.truncated_task_factors(tau, compute_dtype=F64)
    delta = core.tsv_merge_factors(f)
    got = torch.sort(torch.linalg.svdvals(delta)[: 2 * f.k]).values
    torch.testing.assert_close(got, torch.sort(f.s.reshape(-1)).values)


def gapped_tasks(num_tasks: int, m: int, n: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    k = min(m, n) // num_tasks
    return torch.stack([torch.randn(m, k, generator=gen) @ torch.randn(k, n, generator=gen)
                        + 1e-4 * torch.randn(m, n, generator=gen) for _ in range(num_tasks)])


@pytest.mark.parametrize("mode", ["exact", "fast", "lapack"])
@pytest.mark.parametrize("shape", [(40, 24), (24, 40), (30, 30)], ids=["tall", "wide", "square"])
def test_svd_modes_match_float64_on_a_gapped_spectrum(mode, shape):
    tau = gapped_tasks(3, *shape)
    ref = core.tsv_merge(tau.double(), compute_dtype=F64)
    got = core.tsv_merge(tau, svd=mode)
    assert got.dtype == torch.float32
    assert float((got.double() - ref).norm() / ref.norm()) < 1e-5


@pytest.mark.parametrize("mode", ["exact", "fast"])
def test_gram_route_triplets_match_lapack(mode):
    a = torch.randn(4, 50, 20, generator=torch.Generator().manual_seed(1))
    u, s, v = core.top_k_svd(a, 6, mode=mode)
    ref_s = torch.linalg.svdvals(a.double())[..., :6]
    torch.testing.assert_close(s.double(), ref_s, rtol=1e-5, atol=0)
    eye = torch.eye(6).expand(4, 6, 6)
    torch.testing.assert_close(u.mT @ u, eye, atol=1e-5, rtol=0)
    torch.testing.assert_close(v.mT @ v, eye, atol=1e-5, rtol=0)
    # each triplet is a singular triplet: A v = s u
    torch.testing.assert_close(a @ v, u * s[:, None, :], atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="unknown SVD mode"):
        core.top_k_svd(a, 2, mode="magic")


def _without_scipy(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_scipy(name, *args, **kwargs):
        if name.startswith("scipy"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_scipy)


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_cpu_lapack_kernels_equal_torch_without_scipy(dtype, monkeypatch):
    """The NumPy/SciPy kernels (the fast mode's Grams, SVDs and top eigenvectors) agree with the torch fallback
    that runs without SciPy or off the CPU: same Gram, same factorisation, same eigenvectors up to sign."""
    from hf_tsv.core import cpu_lapack

    gen = torch.Generator().manual_seed(3)
    a = torch.randn(2, 40, 30, generator=gen, dtype=dtype)
    wide = a.mT  # a transposed view: NumPy gets strides, not a copy
    g = (a.mT @ a).contiguous()
    results = []
    for scipy_present in (True, False):
        if not scipy_present:
            _without_scipy(monkeypatch)
        assert cpu_lapack.on_cpu_lapack(a) is scipy_present
        u, s, vh = cpu_lapack.thin_svd(wide)
        results.append((cpu_lapack.gram(a), cpu_lapack.gram(wide), u, s, vh, cpu_lapack.top_eigenvectors(g, 5)))
    tol = {"rtol": 1e-4, "atol": 1e-4} if dtype == torch.float32 else {}
    (g1, gw1, u1, s1, vh1, e1), (g2, gw2, u2, s2, vh2, e2) = results
    torch.testing.assert_close(g1, g2, **tol)
    torch.testing.assert_close(gw1, gw2, **tol)
    torch.testing.assert_close(g1, g1.mT)
    torch.testing.assert_close(s1, s2, **tol)
    torch.testing.assert_close((u1 * s1[..., None, :]) @ vh1, wide, **tol)
    signs = (u1 * u2).sum(-2).sign()
    torch.testing.assert_close(u1 * signs[..., None, :], u2, **tol)
    torch.testing.assert_close((e1 * e2).sum(-2).abs(), torch.ones(2, 5, dtype=dtype), **tol)
    assert g1.dtype == u1.dtype == e1.dtype == dtype


@pytest.mark.parametrize("shape", [(17, 0), (0, 5), (2, 0, 0), (0, 3, 4)])
def test_cpu_lapack_kernels_take_empty_matrices(shape):
    """Empty blocks (adapters whose every triplet is null leave no kept column) give empty results, as torch does."""
    from hf_tsv.core import cpu_lapack

    a = torch.zeros(shape)
    assert cpu_lapack.gram(a).shape == (a.mT @ a).shape
    assert [t.shape for t in cpu_lapack.thin_svd(a)] == [t.shape for t in torch.linalg.svd(a, full_matrices=False)]


def test_rank_deficient_tasks_in_every_mode():
    """Null triplets are zeroed in every mode, so orthogonal low-rank tasks still give task arithmetic."""
    gen = torch.Generator().manual_seed(9)
    q_left, _ = torch.linalg.qr(torch.randn(24, 24, generator=gen))
    q_right, _ = torch.linalg.qr(torch.randn(16, 16, generator=gen))
    tau = torch.stack([q_left[:, 4 * t:4 * t + 2] @ torch.diag(torch.tensor([2.0, 1.0])) @ q_right[:, 4 * t:4 * t + 2].T
                       for t in range(4)])  # rank 2 < k = 4
    for mode in ("exact", "fast", "lapack"):
        torch.testing.assert_close(core.tsv_merge(tau, svd=mode), tau.sum(0), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("density", [0.2, 0.37, 1e-6, 1.0])
def test_ties_model_thresholds_equal_kthvalue_over_the_flattened_model(dtype, density):
    """The streaming radix select finds exactly the reference's threshold (kthvalue over all keys), also with
    ties at the threshold, zeros, subnormals and huge values, over keys of different sizes."""
    gen = torch.Generator().manual_seed(4)
    keys = [torch.randn(3, 40, 9, generator=gen, dtype=dtype),
            (torch.randn(3, 25, generator=gen, dtype=dtype) * 3).round(),  # many exact ties
            torch.zeros(3, 7, dtype=dtype),
            torch.full((3, 4), torch.finfo(dtype).tiny / 8, dtype=dtype),  # subnormal
            torch.tensor([[1e30], [-1e-30], [0.0]], dtype=dtype)]
    stats = core.ties_model_statistics(lambda: keys, density)
    flat = torch.cat([k.reshape(3, -1) for k in keys], dim=1)
    rank = flat.shape[1] - int(flat.shape[1] * density)
    expected = flat.abs().kthvalue(rank, dim=1).values if rank else torch.zeros(3, dtype=dtype)
    assert torch.equal(stats.thresholds, expected)
    assert stats.numel == flat.shape[1]


def test_ties_majority_sign_decides_zero_sums_over_the_whole_scope():
    # Entry 0 sums to exactly 0 with both tasks kept: the reference gives it the majority sign of all elected
    # signs (here +: two positive entries elsewhere), then averages the agreeing entry.
    tau = torch.tensor([[0.5, 0.3, 0.2], [-0.5, 0.1, 0.4]])
    out = core.ties(tau, density=1.0)
    torch.testing.assert_close(out, torch.tensor([0.5, 0.2, 0.3]))
    negative = core.ties(-tau, density=1.0)  # majority -: the negative entry survives
    torch.testing.assert_close(negative, torch.tensor([-0.5, -0.2, -0.3]))
    assert torch.equal(core.ties(tau, density=1.0, merge="sum"), torch.tensor([0.5, 0.4, 0.6]))


def test_ties_model_scope_streaming_equals_one_flattened_vector():
    """Model-scope TIES key by key from the streamed statistics equals TIES on the whole model flattened."""
    gen = torch.Generator().manual_seed(6)
    keys = [torch.randn(4, 12, 5, generator=gen), torch.randn(4, 30, generator=gen) * 0.01,
            torch.randn(4, 3, generator=gen) * 10]
    flat = torch.cat([k.reshape(4, -1) for k in keys], dim=1)
    for merge in core.TIES_MERGES:
        stats = core.ties_model_statistics(lambda: keys, 0.2)
        streamed = torch.cat([core.ties_merge_trimmed(k, stats.thresholds, stats.majority, merge).reshape(-1)
                              for k in keys])
        assert torch.equal(streamed, core.ties(flat, 0.2, merge))


def test_iso_cts_keeps_exactly_r_directions():
    for r in (1, 2, 17, 32, 64, 768):
        for num_tasks in (1, 2, 4, 8, 14, 20):
            common, per_task = core.iso_cts_sizes(r, num_tasks)
            assert common >= 0 and per_task >= 0 and common + per_task * num_tasks == r
    tau = torch.randn(8, 64, 64, dtype=F64)
    s = torch.linalg.svdvals(core.iso_cts(tau, compute_dtype=F64))
    assert int((s > 1e-9 * s[0]).sum()) == 64  # 48 common + 8 x 2 task directions, all kept


def test_null_directions_do_not_depend_on_the_compute_dtype():
    """A rank-2 task stored as float32 weights (base + low rank, rounded): float32 and float64 SVDs keep the same
    2 triplets when told the inputs' precision (not with the compute dtype's epsilon: 0.3-0.8 apart)."""
    gen = torch.Generator().manual_seed(3)
    base = torch.randn(32, 48, generator=gen) * 0.02
    low_rank = torch.stack([torch.randn(32, 2, generator=gen, dtype=F64) @ torch.randn(2, 48, generator=gen,
                                                                                       dtype=F64)
                            for _ in range(4)])
    low_rank *= 1e-3 * float(base.norm()) / low_rank.norm(dim=(1, 2), keepdim=True)
    tau = ((base.to(F64) + low_rank).float() - base).to(F64)  # what the engine reads from float32 checkpoints
    precision = core.InputPrecision(torch.float32, float(base.norm()) / (32 * 48) ** 0.5)
    for mode in core.SVD_MODES:
        single = core.truncated_task_factors(tau.float(), svd=mode, precision=precision)
        double = core.truncated_task_factors(tau, svd=mode, compute_dtype=F64, precision=precision)
        assert int((single.s > 0).sum()) == int((double.s > 0).sum()) == 4 * 2
        merged = core.tsv_merge_factors(single).to(F64)
        torch.testing.assert_close(merged, core.tsv_merge_factors(double), rtol=0, atol=1e-5 * float(merged.norm()))


def test_the_lapack_kernels_run_with_torchs_thread_count():
    """``--threads`` means one thing: OpenBLAS (NumPy/SciPy) runs with torch's thread count inside the kernels, and
    gets its own count back afterwards."""
    from threadpoolctl import threadpool_info, threadpool_limits

    from hf_tsv.core import cpu_lapack

    def blas_threads():
        return {info["filepath"]: info["num_threads"] for info in threadpool_info() if info["user_api"] == "blas"}

    torch_count = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        with threadpool_limits(2, user_api="blas"):
            outside = blas_threads()
            with cpu_lapack.torch_threads():
                assert set(blas_threads().values()) == {1}
            assert blas_threads() == outside and set(outside.values()) == {2}
    finally:
        torch.set_num_threads(torch_count)


def _steep_tasks(num_tasks: int, n: int, k: int, ratio: float, seed: int = 0) -> torch.Tensor:
    """``num_tasks`` random n×n task matrices whose singular values fall geometrically, σ_1/σ_k = ``ratio``."""
    gen = torch.Generator().manual_seed(seed)
    tasks = []
    for _ in range(num_tasks):
        left = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=F64)).Q
        right = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=F64)).Q
        sigma = ratio ** (-torch.arange(n, dtype=F64) / (k - 1))
        tasks.append((left * sigma) @ right.T * 1e-3)
    return torch.stack(tasks)


@pytest.mark.parametrize("mode", ["fast", "exact"])
def test_gram_modes_keep_a_float32_svds_accuracy_on_steep_spectra(mode):
    """σ_1/σ_k = 100: the Gram matrix squares the condition, so without the refinement (svd._refine_top_k) the small
    kept directions carry rounding of the large ones and TSV-M's error against float64 is ~10x a float32 SVD's
    (FusionBench's); with it the Gram modes are at least as close to float64 as the float32 SVD."""
    tau = _steep_tasks(num_tasks=4, n=192, k=48, ratio=100.0)
    reference = core.tsv_merge(tau, compute_dtype=F64, svd="lapack")

    def error(svd: str) -> float:
        return float((core.tsv_merge(tau.float(), svd=svd).double() - reference).norm() / reference.norm())

    assert error(mode) <= error("lapack")


@pytest.mark.parametrize("mode", ["fast", "exact"])
def test_gram_modes_refine_only_steep_spectra(mode, monkeypatch):
    """Below svd.STEEP_SPECTRUM nothing is refined: the result is bit for bit the Gram step's (so merges of flat
    spectra, such as the benchmark's, are what they were); above it, it is refined."""
    from hf_tsv.core import svd

    flat = torch.randn(4, 192, 160, generator=torch.Generator().manual_seed(1)) * 1e-3
    steep = _steep_tasks(num_tasks=4, n=192, k=48, ratio=100.0).float()
    results = {}
    for threshold in (svd.STEEP_SPECTRUM, math.inf):
        monkeypatch.setattr(svd, "STEEP_SPECTRUM", threshold)
        results[threshold] = [svd.top_k_svd(t, 48, mode=mode) for t in (flat, steep, steep.mT)]
    (flat_refined, steep_refined, wide_refined), (flat_gram, steep_gram, wide_gram) = results.values()
    assert all(torch.equal(a, b) for a, b in zip(flat_refined, flat_gram))
    assert not torch.equal(steep_refined[2], steep_gram[2])
    assert not torch.equal(wide_refined[0], wide_gram[0])  # a wide matrix is refined through its transpose


def test_the_docs_quote_the_steep_spectrum_threshold_in_force():
    """docs/methods.md names the threshold the code uses (svd.STEEP_SPECTRUM), so the two cannot drift apart."""
    from pathlib import Path

    from hf_tsv.core import svd

    text = (Path(__file__).resolve().parents[1] / "docs" / "methods.md").read_text()
    assert f"`STEEP_SPECTRUM` = {svd.STEEP_SPECTRUM:g}" in text
