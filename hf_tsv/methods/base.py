"""What a merge method is, and the registry that holds them.

A :class:`MergeMethod` gives the merged delta Δ of one key from the stacked task vectors ``(T, ...)``; the
engine adds α·Δ to the base. SVD methods treat matrix keys with their own rule and average the other keys;
elementwise methods use one rule for every key. A method may first need a pass over the whole model (TIES trims
each task over all its parameters): :meth:`MergeMethod.statistics` runs it on a ``scan`` of every key's task
vectors, and each key's Δ then gets its result in :class:`KeyContext`.

Everything else known about a method is declared with it, in its own module of :mod:`hf_tsv.methods`: its
names, paper, model-card text and tags, its α default and α search grid (:class:`AlphaRule`), and its
parameters (:class:`Parameter`). The registry (:data:`METHODS`, :data:`PARAMETERS`, :func:`register`) is filled
from those modules; the CLI, the options, the card, the α search, the Space and the benchmark read it.

Importing this module does not import torch: the bindings to :mod:`hf_tsv.core` import it when they run.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import FrozenInstanceError, dataclass, field, replace
from typing import TYPE_CHECKING, Any

from ..errors import MergeInputError

if TYPE_CHECKING:
    import torch

    from ..core import InputPrecision

# α grids that several methods search (each method names its own in its AlphaRule).
TSV_GRID = tuple(round(0.1 * i, 2) for i in range(1, 31))  # 0.1, 0.2, …, 3.0: the TSV paper's grid
TSV_QUICK_GRID = (0.5, 1.0, 1.5, 2.0)  # its coarse version, for quick searches (`hf-tsv bench run --quick`)
TASK_ARITHMETIC_GRID = tuple(i / 30 for i in range(1, 31))  # 1/30, 2/30, …, 1: task arithmetic's
TASK_ARITHMETIC_QUICK_GRID = (0.1, 0.2, 0.3, 0.5, 1.0)

# The options every method shares (MethodOptions' own fields).
SHARED_OPTIONS = ("compute_dtype", "svd")
# Names a method parameter cannot take: those, and every other option of a merge (reserve_names adds them).
RESERVED_NAMES: set[str] = set(SHARED_OPTIONS)
# True once hf_tsv.methods has registered its own methods: a method registered after that comes from outside, and
# register() first imports hf_tsv.options, whose import reserves MergeOptions' field names (it imports torch, which
# the package's own import must not).
OWN_METHODS_REGISTERED = False


@dataclass(frozen=True)
class Parameter:
    """One method parameter: its keyword (``name``, also its command-line flag ``--name-with-dashes``), its
    default, a line of help, and what it accepts: a number in ``[low, high]`` (``low`` itself excluded when
    ``low_open``), or one of ``choices``. :class:`hf_tsv.options.MergeOptions` checks every parameter against its
    declaration, the CLI adds its flag to ``hf-tsv merge``, and the merge report records the parameters of the
    method that ran. A method declares its parameters in its own module; :data:`PARAMETERS` collects them."""

    name: str
    default: float | str
    help: str
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    choices: tuple[str, ...] | None = None
    methods: tuple[str, ...] = ()  # the methods that read it (filled in by the registry)

    @property
    def flag(self) -> str:
        """Its command-line flag: ``ties_density`` → ``--ties-density``."""
        return flag(self.name)

    def accepted(self) -> str:
        """What it accepts, as help text shows it: ``in (0, 1]`` or ``mean or sum``."""
        if self.choices is not None:
            return " or ".join(self.choices)
        low = "-inf" if self.low is None else f"{self.low:g}"
        high = "inf" if self.high is None else f"{self.high:g}"
        return f"in {'(' if self.low_open or self.low is None else '['}{low}, {high}]"


@dataclass(frozen=True)
class AlphaRule:
    """A method's α when none is given (``default``; None: the method ignores α) and the α values an α search
    scores (``grid``; ``quick_grid``, a few of them, for quick searches). With ``when = (parameter, value)`` the
    rule holds only while that parameter of the method has that value (TIES's ``ties_merge="sum"``); a method's
    last rule holds otherwise."""

    default: float | None
    grid: tuple[float, ...]
    quick_grid: tuple[float, ...] | None = None
    when: tuple[str, str] | None = None

    def applies(self, opts: MethodOptions) -> bool:
        return self.when is None or getattr(opts, self.when[0]) == self.when[1]


@dataclass(frozen=True)
class KeyContext:
    """What a method may use besides one key's task vectors."""

    precision: InputPrecision = field(default_factory=lambda: _core().InputPrecision())  # decides null directions
    statistics: object | None = None  # what the method's model-wide pass found (TIES: thresholds, majority sign)
    # per task: its task matrix as factors (a LoRA adapter, hf_tsv.core.LowRankDelta) or None (given densely);
    # () when every task is dense. A method with ``factored_tasks`` finds zeros in such a task's dense slot.
    factored: tuple = ()


# Every key's stacked task vectors, one fresh pass per call. In a merge sharded over processes (torch.distributed)
# the engine's scan yields this process's share of the keys, and has an ``all_reduce`` attribute (sums an integer
# tensor in place over the processes) for a method whose ``shards_model_pass`` is True; see docs/distributed.md.
Scan = Callable[[], Iterable["torch.Tensor"]]
Delta = Callable[["torch.Tensor", "MethodOptions", KeyContext], "tuple[torch.Tensor, float | None]"]


def flag(name: str) -> str:
    """The command-line flag of an option: ``ties_density`` → ``--ties-density``."""
    return "--" + name.replace("_", "-")


def _core():
    from .. import core

    return core


def _no_model_pass(opts: MethodOptions) -> int:
    return 0


@dataclass(frozen=True, kw_only=True)
class MergeMethod:
    """One merge method: everything known about it, in one place (its module of :mod:`hf_tsv.methods`). Its
    mathematical definition is the docstring of the :mod:`hf_tsv.core` function ``delta`` binds.

    Example:
        >>> from hf_tsv.methods import get_method
        >>> ta = get_method("ta")
        >>> ta.title, ta.default_alpha, ta.tags
        ('task arithmetic', 0.3, ('task-arithmetic',))
    """

    name: str  # what --method and method= take
    title: str  # as a sentence names it: "TSV-M", "task arithmetic"
    card_description: str  # how the model card explains the merge
    alpha: AlphaRule | tuple[AlphaRule, ...]  # α default and search grid (a tuple: the first rule that applies)
    delta: Delta = field(repr=False)  # (task vectors, options, key context) → (Δ, STI or None)
    full_title: str | None = None  # its full name where the title shortens it ("Task Singular Vectors: Merge")
    expansion: str | None = None  # what an acronym title stands for, shown beside it in menus
    authors: str | None = None  # of its paper: "Gargiulo et al."
    venue: str | None = None  # "CVPR"
    year: int | None = None  # 2025; methods are listed in the order of their papers
    paper_title: str | None = None
    paper_url: str | None = None
    tags: tuple[str, ...] = ()  # Hub tags of its merges (default: its name)
    uses_svd: bool = False  # matrix keys get its own rule, other keys are averaged
    parameters: tuple[Parameter, ...] = ()
    # The rank k each task keeps when the method truncates every task's SVD, as reports record it (TSV-M:
    # "floor(r/T)"); such a method reads the SVD mode (--svd), which the report then records too.
    task_rank: str | None = None
    reports_sti: bool = False  # its Δ comes with each matrix key's STI, which the merge report records
    # A pass over the whole model before merging (TIES's model scope); returns KeyContext.statistics, or None.
    model_statistics: Callable[[Scan, MethodOptions], object | None] | None = field(default=None, repr=False)
    # How many times that pass reads every input (for the time estimate).
    model_pass_reads: Callable[[MethodOptions], int] = field(default=_no_model_pass, repr=False)
    # Whether that pass combines shards exactly with ``scan.all_reduce`` (TIES: integer histograms). A method
    # without it gets every key in its scan on every process of a sharded merge (exact, but read on each).
    shards_model_pass: bool = False
    # Its Δ of a matrix key reads tasks given as factors (KeyContext.factored, LoRA adapters) without their ΔW
    # being formed: the engine leaves their dense slots zero.
    factored_tasks: bool = False
    # Its Δ of a matrix key as exact low-rank factors, (task vectors, options, key context) → (LowRankDelta, STI or
    # None), every task given as factors: what `--output-format peft` writes. None: the method cannot write an
    # adapter (its Δ does not factorise exactly).
    low_rank_delta: Callable | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        rules = self.alpha if isinstance(self.alpha, tuple) else (self.alpha,)
        object.__setattr__(self, "alpha", rules)
        object.__setattr__(self, "tags", tuple(self.tags) or (self.name,))
        object.__setattr__(self, "parameters", tuple(self.parameters))

    # -- names -----------------------------------------------------------------------------------------------

    @property
    def label(self) -> str:
        """The title as a table row or menu starts it: "Task arithmetic", "TSV-M"."""
        return self.title[:1].upper() + self.title[1:]

    @property
    def citation(self) -> str | None:
        """``"Gargiulo et al., CVPR 2025"`` (None without a paper)."""
        if not self.authors:
            return None
        return ", ".join(filter(None, [self.authors, " ".join(str(x) for x in (self.venue, self.year) if x)]))

    @property
    def description(self) -> str:
        """Its full name and citation: ``"Task arithmetic (Ilharco et al., ICLR 2023)"``."""
        name = self.full_title or self.label
        return f"{name} ({self.citation})" if self.citation else name

    # -- α -----------------------------------------------------------------------------------------------------

    def alpha_rule(self, opts: MethodOptions | None = None) -> AlphaRule:
        """The :class:`AlphaRule` that holds for ``opts`` (default: the default options)."""
        opts = opts if opts is not None else MethodOptions()
        return next(rule for rule in self.alpha if rule.applies(opts))

    @property
    def default_alpha(self) -> float | None:
        """α with the default options (None: α is not used)."""
        return self.alpha_rule().default

    @property
    def uses_alpha(self) -> bool:
        """Whether α scales its Δ (weight averaging ignores it)."""
        return any(rule.default is not None for rule in self.alpha)

    def alpha_grid(self, opts: MethodOptions | None = None, *, quick: bool = False) -> list[float]:
        """The α values ``--alpha search`` scores for this method (and these options); ``quick``: a few of them."""
        rule = self.alpha_rule(opts)
        return list(rule.quick_grid or rule.grid) if quick else list(rule.grid)

    # -- computing ---------------------------------------------------------------------------------------------

    def statistics(self, scan: Scan, opts: MethodOptions) -> object | None:
        """Run the model-wide pass this method needs with ``opts`` (None when it needs none)."""
        return None if self.model_statistics is None else self.model_statistics(scan, opts)

    @property
    def writes_adapters(self) -> bool:
        """Whether a merge with it can be written as one LoRA adapter (``--output-format peft``)."""
        return self.low_rank_delta is not None

    def key_delta(self, task_vectors: torch.Tensor, is_matrix: bool, opts: MethodOptions,
                  context: KeyContext | None = None):
        """Δ of one key (and its STI for TSV-M matrix keys, else None)."""
        if self.uses_svd and not is_matrix:
            return _core().weight_average(task_vectors), None
        return self.delta(task_vectors, opts, context or KeyContext())


def describe_grid(grid: Iterable[float]) -> str:
    """An α grid in a few characters: ``0.1…3 by 0.1`` (an even grid) or ``[0.5, 1, 2]``.

    Example:
        >>> describe_grid(TASK_ARITHMETIC_GRID), describe_grid([0.5, 1, 2])
        ('0.0333…1 by 0.0333', '[0.5, 1, 2]')
    """
    values = list(grid)
    steps = {round(b - a, 9) for a, b in zip(values, values[1:])}
    if len(values) > 3 and len(steps) == 1:
        return f"{values[0]:.3g}…{values[-1]:.3g} by {steps.pop():.3g}"
    return "[" + ", ".join(f"{v:.3g}" for v in values) + "]"


def describe_alpha(method: MergeMethod, *, grid: bool = False) -> str:
    """A method's α default (or its grid) as help text shows it, conditions included:
    ``1 (0.3 with --ties-merge sum)``; ``ignores α`` for a method without one."""
    if not method.uses_alpha:
        return "ignores α"

    def text(rule: AlphaRule) -> str:
        return describe_grid(rule.grid) if grid else "ignores α" if rule.default is None else f"{rule.default:g}"

    *conditional, otherwise = method.alpha
    extra = [f"{text(rule)} with {flag(rule.when[0])} {rule.when[1]}" for rule in conditional]
    return text(otherwise) + (f" ({'; '.join(extra)})" if extra else "")


# ----------------------------------------------------------------------------------------------------------------
# The registry
# ----------------------------------------------------------------------------------------------------------------

DEFAULT_METHOD = "tsv-m"  # the method a merge uses when none is named
METHODS: dict[str, MergeMethod] = {}  # by name, in the order of their papers (year, then name)
PARAMETERS: dict[str, Parameter] = {}  # every method's parameters, by name, with the methods that read them


def _check_definition(method: MergeMethod) -> None:
    """Refuse a definition the rest of hf_tsv could not use, naming what to fix."""
    where = f"merge method {method.name!r}"
    if not isinstance(method.name, str) or not method.name or method.name != method.name.strip().lower():
        raise ValueError(f"{where}: its name must be a non-empty lower-case string (what --method takes)")
    if method.name in METHODS and METHODS[method.name] is not method:
        raise ValueError(f"{where} is already registered; choose another name")
    rules = method.alpha
    if not rules or not all(isinstance(r, AlphaRule) for r in rules) or rules[-1].when is not None:
        raise ValueError(f"{where}: alpha must be an AlphaRule, or a tuple of them whose last has no 'when'")
    own = {p.name: p for p in method.parameters}
    for rule in rules:
        if not rule.grid or not all(isinstance(a, (int, float)) and math.isfinite(a) for a in rule.grid):
            raise ValueError(f"{where}: every α grid needs at least one finite number")
        if rule.when is not None and (rule.when[0] not in own or rule.when[1] not in (own[rule.when[0]].choices
                                                                                     or ())):
            raise ValueError(f"{where}: an AlphaRule's when={rule.when!r} must name one of its own parameters "
                             "with choices, and one of those choices")
    for p in method.parameters:
        if not p.name.isidentifier() or p.name in RESERVED_NAMES:
            raise ValueError(f"{where}: parameter name {p.name!r} must be a Python identifier and not the name of "
                             f"an option every merge has ({', '.join(sorted(RESERVED_NAMES))})")
        other = PARAMETERS.get(p.name)
        if other is not None and replace(other, methods=()) != p and set(other.methods) - {method.name}:
            raise ValueError(f"{where}: parameter {p.name!r} is declared differently by "
                             f"{', '.join(other.methods)}; give it another name")


def _rebuild() -> None:
    """Order :data:`METHODS` by paper (year, then name) and rebuild :data:`PARAMETERS` from them, in place (other
    modules hold these dicts)."""
    ordered = sorted(METHODS.values(), key=lambda m: (m.year or math.inf, m.name))
    METHODS.clear()
    METHODS.update((m.name, m) for m in ordered)
    owners: dict[str, list[str]] = {}
    declared: dict[str, Parameter] = {}
    for method in ordered:
        for p in method.parameters:
            owners.setdefault(p.name, []).append(method.name)
            declared.setdefault(p.name, p)
    PARAMETERS.clear()
    PARAMETERS.update((name, replace(p, methods=tuple(owners[name]))) for name, p in declared.items())


def reserve_names(names: Iterable[str]) -> None:
    """Keep ``names`` (the options of every merge: :class:`hf_tsv.options.MergeOptions`' fields) from method
    parameters, which share their keyword arguments.

    Raises:
        ValueError: a registered method already has a parameter of one of those names.
    """
    names = set(names)
    clash = sorted(names & set(PARAMETERS))
    if clash:
        raise ValueError(f"method parameter {clash[0]!r} of {', '.join(PARAMETERS[clash[0]].methods)} has the name "
                         "of an option every merge has; rename the parameter")
    RESERVED_NAMES.update(names)


def register(method: MergeMethod) -> MergeMethod:
    """Add ``method`` to :data:`METHODS` (its parameters to :data:`PARAMETERS`), after checking its definition;
    :mod:`hf_tsv.methods` does this for every module in it. Returns the method.

    Raises:
        ValueError: the name is taken by another method, or the definition is inconsistent (an α rule without
            a grid, a parameter declared differently by another method...).
    """
    if not isinstance(method, MergeMethod):
        raise TypeError(f"register() takes a MergeMethod, got {type(method).__name__}")
    if OWN_METHODS_REGISTERED:
        import hf_tsv.options  # noqa: F401 - reserves the names of every merge option (reserve_names)
    _check_definition(method)
    METHODS[method.name] = method
    _rebuild()
    return method


def unregister(name: str) -> None:
    """Remove a method registered with :func:`register` (and the parameters only it read)."""
    METHODS.pop(name, None)
    _rebuild()


def get_method(name: str) -> MergeMethod:
    """The registered method called ``name``.

    Raises:
        MergeInputError: no method has that name (the message lists them).
    """
    try:
        return METHODS[name]
    except (KeyError, TypeError):
        raise MergeInputError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}") from None


def resolve_alpha(method: MergeMethod, alpha: float | None, opts: MethodOptions | None = None) -> float:
    """α to use: the method's default (for ``opts``) when not given; 1.0 for a method that ignores α."""
    default = method.alpha_rule(opts).default
    if default is None:
        return 1.0
    return default if alpha is None else float(alpha)


# ----------------------------------------------------------------------------------------------------------------
# The options a method reads
# ----------------------------------------------------------------------------------------------------------------


_UNSET: Any = object()  # an option not given (MethodOptions reads its default when needed)


class MethodOptions:
    """What a method reads besides α: the SVDs' ``compute_dtype`` and ``svd`` mode (not given: the default,
    :data:`hf_tsv.core.svd.DEFAULT_SVD_MODE`), and every registered method
    parameter, as an attribute of its name (``opts.ties_density``); a parameter not given has its declared
    default. Immutable. Values are checked where every option is: in :class:`hf_tsv.options.MergeOptions`.

    Example:
        >>> opts = MethodOptions(ties_density=0.5)
        >>> opts.ties_density, opts.ties_merge, opts.svd
        (0.5, 'mean', 'fast')
    """

    __slots__ = ("compute_dtype", "svd", "_given")

    def __init__(self, compute_dtype: torch.dtype | str | None = None, svd: str = _UNSET, **parameters: Any):
        unknown = sorted(set(parameters) - set(PARAMETERS))
        if unknown:
            raise MergeInputError(f"unknown method parameter {unknown[0]!r}; the method parameters are "
                                  f"{', '.join(PARAMETERS) or 'none'}")
        if compute_dtype is None:
            import torch

            compute_dtype = torch.float32
        if svd is _UNSET:
            from ..core.svd import DEFAULT_SVD_MODE

            svd = DEFAULT_SVD_MODE
        object.__setattr__(self, "compute_dtype", compute_dtype)
        object.__setattr__(self, "svd", svd)
        object.__setattr__(self, "_given", dict(parameters))

    def __getattr__(self, name: str) -> Any:  # only for names that are not slots: the method parameters
        spec = PARAMETERS.get(name)
        if spec is None or name.startswith("_"):
            raise AttributeError(f"{type(self).__name__} has no option {name!r}")
        return self._given.get(name, spec.default)

    def __setattr__(self, name: str, value: Any) -> None:
        raise FrozenInstanceError(f"cannot assign to field {name!r}")

    def __delattr__(self, name: str) -> None:
        raise FrozenInstanceError(f"cannot delete field {name!r}")

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """Every option it holds: the shared ones, then each registered parameter."""
        return (*SHARED_OPTIONS, *PARAMETERS)

    @property
    def parameters(self) -> dict[str, Any]:
        """Every registered method parameter with its value (given, or its default)."""
        return {name: getattr(self, name) for name in PARAMETERS}

    def replace(self, **changes: Any) -> MethodOptions:
        """A copy with ``changes``."""
        values = {"compute_dtype": self.compute_dtype, "svd": self.svd, **self._given, **changes}
        return type(self)(**values)

    def _key(self) -> tuple:
        return self.compute_dtype, self.svd, tuple(sorted(self.parameters.items()))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, MethodOptions) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        given = "".join(f", {k}={v!r}" for k, v in self._given.items())
        return f"MethodOptions(compute_dtype={self.compute_dtype}, svd={self.svd!r}{given})"

    def __reduce__(self):
        return _rebuild_options, (self.compute_dtype, self.svd, dict(self._given))


def _rebuild_options(compute_dtype, svd, given) -> MethodOptions:
    return MethodOptions(compute_dtype, svd, **given)
