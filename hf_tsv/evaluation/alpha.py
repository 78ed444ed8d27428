"""Choosing α on validation data: θ(α) = θ₀ + α·Δ, Δ computed once (:func:`hf_tsv.merge_linear`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..distributed import Shards, gather_in_order, my_share, step
from ..methods import METHODS, MethodOptions
from ..options import parse_alpha_grid
from ..progress import progress_bar
from .heads import EvalInputError
from .runner import EvalReport, PreparedTask, evaluate_model, load_metric


def default_grid(method: str, opts: MethodOptions | None = None, *, quick: bool = False) -> list[float]:
    """The α grid searched for ``method`` (with ``opts``, default the method's defaults) when none is given
    (``quick``: its coarse version); each method declares its grids in its module of :mod:`hf_tsv.methods`."""
    try:
        return METHODS[method].alpha_grid(opts, quick=quick)
    except KeyError:
        raise EvalInputError(f"no default α grid for method {method!r}") from None


DEFAULT_GRIDS: dict[str, list[float]] = {name: default_grid(name) for name in METHODS}  # default options


def parse_grid(text: str) -> list[float]:
    """``"0.1,0.5,1"`` or ``"0.1:3.0:0.1"`` (start:stop:step, inclusive) → a list of α values, each finite
    (:func:`hf_tsv.options.parse_alpha_grid` checks it).

    Example:
        >>> parse_grid("0.5:1.5:0.5")
        [0.5, 1.0, 1.5]
    """
    return list(parse_alpha_grid(text))


@dataclass
class AlphaSearch:
    """The sweep: per α the mean validation accuracy (absolute and normalised), and the chosen α."""

    method: str
    criterion: str  # "normalized" or "absolute"
    grid: list[float]
    validation: dict[float, EvalReport] = field(default_factory=dict)
    best_alpha: float | None = None

    def score(self, alpha: float) -> float:
        report = self.validation[alpha]
        return report.mean_normalized_accuracy if self.criterion == "normalized" else report.mean_accuracy

    def to_dict(self) -> dict:
        return {"method": self.method, "criterion": f"mean {self.criterion} validation accuracy",
                "best_alpha": self.best_alpha,
                "sweep": [{"alpha": a, "mean_accuracy": r.mean_accuracy,
                           "mean_normalized_accuracy": r.mean_normalized_accuracy}
                          for a, r in self.validation.items()]}


def pick_best(scores: dict[float, float]) -> float:
    """The α with the highest score; on a tie the smallest such α (the gentler merge).

    Example:
        >>> pick_best({0.5: 80.0, 1.0: 82.5, 1.5: 82.5})
        1.0
    """
    if not scores:
        raise EvalInputError("the α grid is empty")
    best = max(scores.values())
    return min(a for a, s in scores.items() if s == best)


def search_alpha(linear, tasks: list[PreparedTask], *, grid: list[float] | None = None,
                 split: str = "validation", batch_size: int = 256, device: str | torch.device = "cpu",
                 projection: torch.Tensor | None = None, progress: bool = True,
                 shards: Shards | None = None) -> AlphaSearch:
    """Score ``linear`` (a :class:`hf_tsv.LinearMerge`) at every α of ``grid`` (default: the method's grid for the
    options it was merged with) on ``split`` and pick the best mean normalised accuracy (mean absolute accuracy
    where a task lacks its fine-tuned reference). With ``shards`` the grid is split over the processes
    (:func:`sweep_alpha`); every process must call it.

    Example:
        >>> lin = hf_tsv.merge_linear("base", ["ft_a", "ft_b"], method="tsv-m")  # doctest: +SKIP
        >>> search = search_alpha(lin, prepare_tasks(cfg, "base", splits=("validation",)))  # doctest: +SKIP
        >>> search.best_alpha  # doctest: +SKIP
    """
    if grid is not None:
        grid = list(parse_alpha_grid(grid))
    else:  # the grid that came with the merge (its method's, for its options)
        grid = list(getattr(linear, "alpha_grid", None) or default_grid(linear.method))
    criterion = "normalized" if all(t.finetuned_accuracy.get(split) for t in tasks) else "absolute"
    metric = load_metric()
    return sweep_alpha(linear, lambda model: evaluate_model(model, tasks, split=split, batch_size=batch_size,
                                                            projection=projection, metric=metric, progress=False),
                       grid, criterion, device=device, progress=progress, shards=shards)[0]


def sweep_alpha(linear, score: Callable[[torch.nn.Module], EvalReport], grid: list[float], criterion: str, *,
                device: str | torch.device = "cpu", progress: bool = True,
                shards: Shards | None = None) -> tuple[AlphaSearch, torch.nn.Module]:
    """The α sweep itself: one model, θ₀ + α·Δ loaded in place for each α of ``grid``, scored by ``score``;
    the best α by ``criterion`` (``"normalized"`` or ``"absolute"`` mean accuracy). Returns the search and
    that model (holding the last α it scored), for the caller to load the chosen α into.

    With ``shards`` (every process of a sharded run calls it, each holding the whole θ₀ and Δ), each process
    scores its share of the grid (round robin) and the scores are gathered in grid order on every process:
    the same search as one process's, since each α's model is θ₀ + α·Δ whatever was loaded before it.

    Example:
        >>> search, model = sweep_alpha(lin, lambda m: evaluate_model(m, tasks, split="validation"),  # doctest: +SKIP
        ...                             [0.5, 1.0], "absolute")
    """
    result = AlphaSearch(linear.method, criterion, list(grid))
    model = linear.to_model(grid[0]).to(device)
    mine = [grid[i] for i in my_share([1.0] * len(grid), shards)]
    scores: dict[float, EvalReport] = {}
    with step(shards, "while searching α"):
        for alpha in progress_bar(mine, desc=f"α search ({linear.method})", unit="α", leave=False, show=progress):
            linear.load_into(model, alpha)
            scores[alpha] = score(model)
    result.validation = gather_in_order(shards, scores, grid)
    result.best_alpha = pick_best({a: result.score(a) for a in grid})
    return result, model
