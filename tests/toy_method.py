"""A toy merge method in one file, written as a module of ``hf_tsv/methods/`` is (there it would import from
``.base``). ``tests/test_method_registry.py`` registers it at test time and merges with it through the Python
API, the CLI and the α search: everything about a method lives in its one file.

Its merge is θ₀ + α · toy_scale · mean_t τ_t, so with α = 0.5 and toy_scale = 2 it is weight averaging.
"""

from __future__ import annotations

from hf_tsv.methods import AlphaRule, MergeMethod, Parameter

SCALE = Parameter("toy_scale", 1.0, "how many mean task vectors to add", low=0.0, high=10.0, low_open=True)


def _delta(task_vectors, opts, key):
    from hf_tsv import core

    return opts.toy_scale * core.weight_average(task_vectors), None


METHOD = MergeMethod(
    name="toy",
    title="toy merge",
    authors="Tester et al.",
    venue="PyTest",
    year=2031,
    paper_title="A Toy Merge for Registry Tests",
    paper_url="https://example.org/toy-merge",
    tags=("toy-merge",),
    card_description="θ = θ_0 + α · toy_scale · mean_t τ_t (a method of the test suite).",
    alpha=AlphaRule(0.5, (0.25, 0.5, 1.0), quick_grid=(0.5,)),
    parameters=(SCALE,),
    delta=_delta,
)
