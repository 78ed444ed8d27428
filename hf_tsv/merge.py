"""The Python API for merging and interference analysis: :func:`merge`, :func:`sti`, :func:`plan`."""

from __future__ import annotations

import copy
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import __version__
from .adapters import get_adapter
from .engine import (
    OUTPUT_OVERFLOW_HINT,
    MergePlan,
    Timer,
    build_plan,
    check_finite,
    iter_units,
    split_rows,
    task_vector_scan,
)
from .errors import MergeInputError
from .io.output import InputLocation, input_locations, write_json
from .io.writer import (
    DEFAULT_MAX_SHARD_SIZE,
    ShardedSafetensorsWriter,
    atomic_output_dir,
    check_output_dir,
    save_config,
    save_side_files,
    set_config_dtype,
)
from .methods import DEFAULT_METHOD, KeyContext
from .options import MergeOptions, check_model_references, check_output_options, finite_number
from .report import (
    InputRecord,
    MergeReport,
    OutputRecord,
    ReportOptions,
    STIRecord,
    device_description,
    library_versions,
)
from .secrets import known_secrets, public_command
from .sti_table import sti_table


class MergeResult:
    """A merged model: its weights (in memory, or in the folder it was streamed to), config and report.

    Example:
        >>> result = hf_tsv.merge("base", ["ft_a", "ft_b"])  # doctest: +SKIP
        >>> result.save_pretrained("merged")  # doctest: +SKIP
        >>> model = result.to_model()  # a CLIPVisionModel  # doctest: +SKIP
    """

    def __init__(self, report: MergeReport, config, model_class: type, state_dict: dict | None = None,
                 folder: Path | None = None, inputs: tuple[InputLocation, ...] = (),
                 side_files: dict[str, bytes] | None = None):
        self.report = report
        self.side_files = side_files or {}  # the base's files the output keeps (tokenizer...), written beside it
        self.config = config
        self.model_class = model_class
        self._state_dict = state_dict
        self.folder = folder
        self.inputs = inputs  # where the merged models live: save_pretrained never writes there

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The merged weights, keyed as ``model_class`` saves them."""
        if self._state_dict is None:
            self._state_dict = _load_folder_weights(self.folder)
        return self._state_dict

    def to_model(self):
        """The merged model as an instance of the output transformers class (e.g. CLIPVisionModel)."""
        model = self.model_class(self.config, **_init_kwargs(self.report))
        load_tied(model, self.state_dict())
        return model.eval()

    def save_pretrained(self, save_directory: str | os.PathLike, *, overwrite: bool = False,
                        max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE) -> Path:
        """Write a folder that ``from_pretrained`` loads, atomically (temporary folder, then rename; see
        :mod:`hf_tsv.io.output`): ``overwrite`` replaces only an empty folder or an earlier hf-tsv output, and
        never a folder of the merged models."""
        check_output_options(overwrite, max_shard_size)
        with atomic_output_dir(save_directory, overwrite, inputs=self.inputs) as tmp:
            self.write_files(tmp, max_shard_size=max_shard_size)
        return Path(save_directory)

    def write_files(self, folder: Path, *, max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE) -> None:
        """Write the weights, config and report into ``folder`` as it is: the body of :meth:`save_pretrained`,
        for a caller that already holds a scratch folder of :func:`~hf_tsv.io.output.atomic_output_dir`."""
        state = self.state_dict()
        writer = ShardedSafetensorsWriter(folder, {k: (t.dtype, tuple(t.shape)) for k, t in state.items()},
                                          max_shard_size)
        for key, tensor in state.items():
            writer.write(key, tensor)
        writer.close()
        save_config(folder, self.config)
        save_side_files(folder, self.side_files)
        self.report.save(folder)

    def __repr__(self) -> str:
        r = self.report
        return (f"MergeResult(method={r.method!r}, alpha={r.alpha}, num_tasks={r.num_tasks}, "
                f"model_class={self.model_class.__name__}, folder={str(self.folder) if self.folder else None})")

    def push_to_hub(self, repo_id: str, *, private: bool | None = None, revision: str | None = None,
                    create_pr: bool = False, commit_message: str | None = None, token: str | None = None,
                    license: str | None = None, max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE):
        """Publish the merge to the Hub in one commit, with a generated model card (see
        :func:`hf_tsv.push_to_hub`). A result held in memory is saved to a temporary folder first.

        Example:
            >>> result = hf_tsv.merge("base", ["ft_a", "ft_b"])  # doctest: +SKIP
            >>> url = result.push_to_hub("me/clip-tsv-merged", private=True)  # doctest: +SKIP
        """
        import tempfile

        from .hub import push_to_hub

        options = dict(private=private, revision=revision, create_pr=create_pr, commit_message=commit_message,
                       token=token, license=license)
        if self.folder is not None:
            return push_to_hub(self.folder, repo_id, **options)
        with tempfile.TemporaryDirectory(prefix="hf-tsv-push-") as tmp:
            folder = self.save_pretrained(Path(tmp) / repo_id.split("/")[-1], max_shard_size=max_shard_size)
            return push_to_hub(folder, repo_id, **options)


def load_tied(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """``model.load_state_dict(state, strict=True)``, except that a key ``state`` lacks is fine when the model ties
    it to a key it has (an LLM's ``lm_head`` tied to its embeddings, which a merge writes once).

    Example:
        >>> layer = torch.nn.Linear(2, 2)
        >>> load_tied(layer, {"weight": torch.eye(2), "bias": torch.zeros(2)})
    """
    missing, unexpected = model.load_state_dict(state, strict=False)
    loaded = model.state_dict()
    shared = {loaded[key].data_ptr() for key in state if key in loaded}
    untied = [key for key in missing if loaded[key].data_ptr() not in shared]
    if untied or unexpected:
        raise RuntimeError(f"error(s) loading the merged weights into {type(model).__name__}: missing keys {untied}, "
                           f"unexpected keys {unexpected}")


def _load_folder_weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    state: dict[str, torch.Tensor] = {}
    for file in sorted(Path(folder).glob("*.safetensors")):
        state.update(load_file(str(file)))
    return state


def _check_output(tensor: torch.Tensor, key: str) -> torch.Tensor:
    """The output check: a merged tensor (in its output dtype) must be finite, or nothing is written."""
    return check_finite(tensor, f"the merged tensor of key {key!r} ({str(tensor.dtype).removeprefix('torch.')})",
                        OUTPUT_OVERFLOW_HINT)


def _output_layout(plan: MergePlan, dtype: torch.dtype | None) -> dict[str, tuple[torch.dtype, tuple]]:
    layout = {}
    for canon, saved in plan.output_names.items():
        info = plan.base_infos[canon]
        layout[saved] = (dtype or info.dtype, info.shape)
    return layout


def _main_dtype(layout: dict) -> torch.dtype:
    sizes: dict[torch.dtype, int] = {}
    for dtype, shape in layout.values():
        n = 1
        for d in shape:
            n *= d
        sizes[dtype] = sizes.get(dtype, 0) + n
    return max(sizes, key=sizes.get)


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _merge_report(plan: MergePlan, options: MergeOptions, output_dtype: torch.dtype, command: str | None,
                  token) -> MergeReport:
    """The report of a merge about to run (STI and timings are added as it runs). A command is recorded as it
    may be published (:func:`hf_tsv.secrets.public_command`): no secret, local paths reduced to names."""
    method = options.merge_method
    hub_ids = {m.hub_id for m in [plan.base, *plan.models] if m.hub_id}
    return MergeReport(
        method=options.method, method_description=method.description, alpha=options.effective_alpha,
        hf_tsv_version=__version__, num_tasks=plan.num_tasks,
        base=InputRecord.from_dict(plan.base.provenance()),
        models=[InputRecord.from_dict(m.provenance()) for m in plan.models],
        options=ReportOptions(plan.fuse_qkv, list(plan.excluded), _dtype_name(options.compute_dtype),
                              device_description(options.device),
                              options.svd if method.task_rank is not None else None,  # it truncates per task
                              options.method_parameters(),
                              options.embeddings if any(map(plan.adapter.is_embedding, plan.base_infos)) else None),
        keys=plan.counts(), notes=list(plan.notes), versions=library_versions(),
        mixed_precision=dict(plan.mixed_precision), warnings=list(plan.warnings),
        k=method.task_rank if method.uses_svd else None,
        output=OutputRecord(plan.output_class.__name__, _dtype_name(output_dtype), plan.adapter.name,
                            dict(plan.output.init_kwargs)),
        command=public_command(command, hub_ids, known_secrets(token)) if command else None)


class _MergeJob:
    """What :func:`merge` and :func:`merge_linear` share: the checked plan, the report and the unit loop."""

    def __init__(self, base, models, options: MergeOptions, *, revision, token, command, started):
        self.started = started
        self.options = options
        self.method = options.method
        self.merge_method = options.merge_method
        self.alpha = options.effective_alpha
        self.compute_dtype = options.compute_dtype
        self.opts = options.method_options
        self.device = options.device
        self.plan = plan = build_plan(base, models, fuse_qkv=options.merge_fuses_qkv, exclude=options.exclude,
                                      allow_duplicates=options.allow_duplicates, revision=revision, token=token,
                                      architecture=options.architecture, drop_heads=options.drop_heads,
                                      embeddings=options.embeddings)
        self.timer = Timer()
        self.timer.totals["preflight_s"] = time.perf_counter() - started
        self.layout = layout = _output_layout(plan, options.dtype)
        self.config = plan.output_config
        self.output_dtype = _main_dtype(layout)
        set_config_dtype(self.config, self.output_dtype)
        self.report = _merge_report(plan, options, self.output_dtype, command, token)

    def deltas(self):
        """Yield ``(unit, base, Δ)`` per unit, streaming; records STI (TSV-M) in the report at the end."""
        sti_keys: dict[str, float] = {}
        timer = self.timer
        start = time.perf_counter()
        scan = task_vector_scan(self.plan, self.device, self.compute_dtype, Timer(), desc=f"{self.method} model pass")
        statistics = self.merge_method.statistics(scan, self.opts)  # TIES over the whole model: its thresholds
        if statistics is not None:
            timer.add("model_pass_s", start)
        for item in iter_units(self.plan, self.device, self.compute_dtype, timer, desc=f"{self.method} merge"):
            start = time.perf_counter()
            if item.unit.from_base:  # --embeddings base: the base's tensor, unchanged (a zero Δ, stored once)
                delta = torch.zeros((), dtype=item.base.dtype, device=item.base.device).expand(item.base.shape)
                sti_value = None
            else:
                delta, sti_value = self.merge_method.key_delta(item.task_vectors, item.unit.is_matrix, self.opts,
                                                               KeyContext(item.precision, statistics))
            if sti_value is not None:
                sti_keys[self.plan.base_key(item.unit)] = sti_value
            start = timer.add("compute_s", start)
            yield item.unit, item.base, delta
            timer.add("write_s", start)
        for key, value in sti_keys.items():  # after the merged tensors' own checks
            check_finite(value, f"the STI of key {key!r}", OUTPUT_OVERFLOW_HINT)
        if self.merge_method.reports_sti:
            self.report.sti = STIRecord(sti_keys, sum(sti_keys.values()), self.merge_method.task_rank)

    def input_locations(self) -> tuple[InputLocation, ...]:
        """Where the resolved inputs live on disk (an output must stay clear of them)."""
        return tuple(input_locations([self.plan.base, *self.plan.models]))

    def finish(self) -> None:
        timings = {k: round(v, 4) for k, v in self.timer.totals.items()}
        timings["total_s"] = round(time.perf_counter() - self.started, 4)
        self.report.timings = timings


class LinearMerge:
    """A merge as θ(α) = θ₀ + α·Δ, with Δ computed once: every method here is linear in α, so an α sweep
    costs one merge plus a weight update per α. Held in memory (float32 unless ``compute_dtype`` says more).

    Example:
        >>> lin = hf_tsv.merge_linear("base", ["ft_a", "ft_b"], method="tsv-m")  # doctest: +SKIP
        >>> model = lin.to_model(alpha=1.0); lin.load_into(model, alpha=0.5)  # doctest: +SKIP
        >>> lin.at(0.5).save_pretrained("merged")  # doctest: +SKIP
    """

    def __init__(self, base_state: dict[str, torch.Tensor], delta_state: dict[str, torch.Tensor], report: MergeReport,
                 config, model_class: type, dtypes: dict[str, torch.dtype], inputs: tuple[InputLocation, ...] = (),
                 alpha_grid: list[float] | None = None, side_files: dict[str, bytes] | None = None):
        self.inputs = inputs  # where the merged models live (see MergeResult.inputs)
        self.side_files = side_files or {}  # see MergeResult.side_files
        self.alpha_grid = alpha_grid  # the method's default α grid for its options (None: look it up by name)
        self.base_state = base_state
        self.delta_state = delta_state
        self.report = report
        self.config = config
        self.model_class = model_class
        self.dtypes = dtypes  # the output dtype of each key

    @property
    def method(self) -> str:
        return self.report.method

    def state_dict(self, alpha: float) -> dict[str, torch.Tensor]:
        """θ₀ + α·Δ in the output dtypes (each checked finite)."""
        alpha = finite_number(alpha, "alpha")
        return {k: _check_output((b + alpha * self.delta_state[k]).to(self.dtypes[k]), k)
                for k, b in self.base_state.items()}

    def at(self, alpha: float, alpha_search: dict | None = None) -> MergeResult:
        """The merge at ``alpha`` as a :class:`MergeResult` (its report says which α, and the validation sweep
        ``alpha_search`` that chose it, when given)."""
        report = self.report.with_alpha(finite_number(alpha, "alpha"), alpha_search)
        return MergeResult(report, copy.deepcopy(self.config), self.model_class, state_dict=self.state_dict(alpha),
                           inputs=self.inputs, side_files=self.side_files)

    def to_model(self, alpha: float):
        """A new model instance (eval mode) holding θ₀ + α·Δ."""
        model = self.model_class(copy.deepcopy(self.config), **_init_kwargs(self.report))
        self.load_into(model, alpha)
        return model.eval()

    @torch.no_grad()
    def load_into(self, model: torch.nn.Module, alpha: float) -> None:
        """Overwrite ``model``'s weights with θ₀ + α·Δ in place (no new model; for sweeps)."""
        alpha = finite_number(alpha, "alpha")
        params = model.state_dict()
        missing = set(self.base_state) - set(params)
        if missing:
            raise MergeInputError(f"the model has no key {sorted(missing)[0]!r}; pass a {self.model_class.__name__}")
        for key, base in self.base_state.items():
            target = params[key]
            target.copy_(base.to(target.device) + alpha * self.delta_state[key].to(target.device))


def merge_linear(base, models, method: str = DEFAULT_METHOD, *, fuse_qkv: bool = False, exclude: str | None = None,
                 device: str | torch.device = "auto", dtype=None, compute_dtype=torch.float32, svd: str = "exact",
                 allow_duplicates: bool = False, revision: str | None = None, token=None, command: str | None = None,
                 **method_params) -> LinearMerge:
    """Compute a method's merged delta Δ once and return a :class:`LinearMerge` (θ₀ and Δ, in memory), for
    choosing α on validation data. Arguments as in :func:`merge`.

    Example:
        >>> lin = hf_tsv.merge_linear("base", ["ft_a", "ft_b"], method="ta")  # doctest: +SKIP
        >>> [lin.to_model(a) for a in (0.1, 0.3, 1.0)]  # doctest: +SKIP
    """
    started = time.perf_counter()
    options = MergeOptions.from_arguments(method=method, fuse_qkv=fuse_qkv, exclude=exclude, device=device,
                                          dtype=dtype, compute_dtype=compute_dtype, svd=svd,
                                          allow_duplicates=allow_duplicates, **method_params)
    job = _MergeJob(base, models, options, revision=revision, token=token, command=command, started=started)
    keep = torch.float64 if job.compute_dtype == torch.float64 else torch.float32
    base_state: dict[str, torch.Tensor] = {}
    delta_state: dict[str, torch.Tensor] = {}
    for unit, base_tensor, delta in job.deltas():
        bases = split_rows(unit, job.plan, base_tensor)
        for canon, tensor in split_rows(unit, job.plan, delta).items():
            saved = job.plan.output_names[canon]
            base_state[saved] = bases[canon].to(device="cpu", dtype=keep)
            delta_state[saved] = check_finite(tensor.to(device="cpu", dtype=keep),
                                              f"the merged delta of key {saved!r}", OUTPUT_OVERFLOW_HINT)
    job.finish()
    if not job.merge_method.uses_alpha:  # averaging: α is not a parameter of the method
        job.report.alpha = 1.0
    dtypes = {k: v[0] for k, v in job.layout.items()}
    return LinearMerge(base_state, delta_state, job.report, job.config, job.plan.output_class, dtypes,
                       inputs=job.input_locations(), alpha_grid=list(job.options.search_grid),
                       side_files=job.plan.side_files)


def merge(base, models, method: str = DEFAULT_METHOD, alpha: float | None = None, *, fuse_qkv: bool = False,
          exclude: str | None = None, device: str | torch.device = "auto", dtype=None,
          compute_dtype=torch.float32, svd: str = "exact", allow_duplicates: bool = False,
          output_dir: str | os.PathLike | None = None, overwrite: bool = False,
          max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE, revision: str | None = None, token=None,
          command: str | None = None, **method_params) -> MergeResult:
    """Merge fine-tuned models of one base with TSV-M (default) or a baseline.

    ``base`` and each of ``models`` is a local folder, a Hub id (``"ns/name"``, ``"ns/name@rev"``) or an
    in-memory transformers model. The merge streams one key (or fused q/k/v group) at a time. With
    ``output_dir`` the result is written straight to disk (atomically) and never held whole in memory;
    without it the merged weights are kept in memory.

    ``method`` is one of :data:`hf_tsv.METHODS`; each declares, in its module of :mod:`hf_tsv.methods`, its α
    default (used when ``alpha`` is None), its α search grid and its parameters, which are keyword arguments
    here (``ties_density=0.3``; ``hf-tsv merge --help`` lists them with their ranges and defaults). Its
    definition is the docstring of its :mod:`hf_tsv.core` function. TIES over the whole model
    (``ties_scope="model"``, as its reference code) reads the inputs 3 more times, 5 with float64 compute.
    ``dtype`` is the output dtype (default: the base's); SVDs run in ``compute_dtype`` (float32, or float64).
    ``svd`` chooses how each task's top-k triplets are computed: ``"exact"`` (default: Gram matrix + float64
    eigendecomposition + Rayleigh-Ritz), ``"fast"`` (float32 eigendecomposition) or ``"lapack"`` (a full SVD
    per task, as the paper's code does).

    The inputs are read by the adapter (:mod:`hf_tsv.adapters`) that reads every one's ``config.json``: CLIP
    (the vision tower, or whole ``CLIPModel``s when every input is one), SigLIP, ViT or DINOv2; the keyword
    ``architecture="clip-vision"`` (any adapter's name) forces one. Task-specific heads (``classifier.*``) are refused
    unless ``drop_heads=True``, which leaves them out. A decoder LLM's token embeddings and ``lm_head`` are
    averaged unless ``embeddings="tsv"`` (merged as matrices by the method) or ``"base"`` (kept from the base).
    See docs/adapters.md.

    Every option is checked (:class:`hf_tsv.options.MergeOptions`) before any model is read or downloaded.
    A model given twice, or the base given again as a fine-tuned model, is refused unless
    ``allow_duplicates=True`` (then the report carries a warning). Every input and output tensor must be
    finite. Fine-tunes stored in a lower precision than the base (bf16 fine-tunes of an fp32 base) are taken
    against the base rounded to their dtype, and the report says so (``mixed_precision``).

    Raises:
        MergeInputError: a bad option, model reference or checkpoint, naming the option, model, file or key.
        OutputExistsError: ``output_dir`` holds files and ``overwrite`` is False.

    Example:
        >>> import hf_tsv
        >>> result = hf_tsv.merge("openai/clip-vit-base-patch32",  # doctest: +SKIP
        ...                       ["me/clip-cars", "me/clip-dtd", "me/clip-eurosat"], method="tsv-m")
        >>> result.report.sti.total  # doctest: +SKIP
        >>> result.save_pretrained("clip-tsv-merged")  # doctest: +SKIP
    """
    started = time.perf_counter()
    options = MergeOptions.from_arguments(method=method, alpha=alpha, fuse_qkv=fuse_qkv, exclude=exclude,
                                          device=device, dtype=dtype, compute_dtype=compute_dtype, svd=svd,
                                          allow_duplicates=allow_duplicates, **method_params)
    check_output_options(overwrite, max_shard_size)
    models = check_model_references(base, models, revision=revision)
    if output_dir is not None:
        check_output_dir(output_dir, overwrite, inputs=[base, *models])
    job = _MergeJob(base, models, options, revision=revision, token=token, command=command, started=started)
    report, layout, config, plan = job.report, job.layout, job.config, job.plan

    def run(write) -> None:
        for unit, base_tensor, delta in job.deltas():
            merged = base_tensor if unit.from_base else base_tensor + job.alpha * delta
            for canon, tensor in split_rows(unit, plan, merged).items():
                saved = plan.output_names[canon]
                write(saved, _check_output(tensor.to(device="cpu", dtype=layout[saved][0]), saved))

    finish = job.finish
    inputs = job.input_locations()
    if output_dir is None:
        state: dict[str, torch.Tensor] = {}
        run(state.__setitem__)
        finish()
        return MergeResult(report, config, plan.output_class, state_dict=state, inputs=inputs,
                           side_files=plan.side_files)
    with atomic_output_dir(output_dir, overwrite, inputs=inputs) as tmp:
        writer = ShardedSafetensorsWriter(tmp, layout, max_shard_size)
        run(writer.write)
        writer.close()
        finish()
        save_config(tmp, config)
        save_side_files(tmp, plan.side_files)
        report.save(tmp)
    return MergeResult(report, config, plan.output_class, folder=Path(output_dir), inputs=inputs,
                       side_files=plan.side_files)


def _init_kwargs(report: MergeReport) -> dict:
    """What the output class needs beyond its config (``add_pooling_layer=False``...), as the report records it."""
    return dict(report.output.init_kwargs) if report.output else {}


@dataclass
class STIReport:
    """Singular Task Interference per matrix key (named as in the base checkpoint) and in total."""

    keys: dict[str, float]
    total: float
    num_tasks: int
    fuse_qkv: bool = False
    warnings: list[str] = field(default_factory=list)  # e.g. a model given twice, with allow_duplicates
    architecture: str = ""  # the adapter that read the checkpoints (it names the table's layers and types)

    def to_dict(self) -> dict:
        data = {"k": "floor(r/T)", "keys": self.keys, "total": self.total, "num_tasks": self.num_tasks,
                "fuse_qkv": self.fuse_qkv, "architecture": self.architecture}
        if self.warnings:
            data["warnings"] = self.warnings
        return data

    def to_json(self, path: str | os.PathLike) -> None:
        """Write :meth:`to_dict` to ``path`` atomically (see :func:`hf_tsv.io.output.write_file_atomic`)."""
        write_json(path, self.to_dict())

    def table(self) -> str:
        """A per-layer plain-text table (columns: layer types)."""
        layout = get_adapter(self.architecture) if self.architecture else None
        return sti_table(self.keys, self.total, layout).text()


def sti(base, models, *, fuse_qkv: bool = False, exclude: str | None = None, device="auto",
        compute_dtype=torch.float32, svd: str = "exact", allow_duplicates: bool = False, revision: str | None = None,
        token=None, architecture: str | None = None, drop_heads: bool = False,
        embeddings: str = "average") -> STIReport:
    """Singular Task Interference of fine-tuned models, without merging. Options as in :func:`merge`.

    Example:
        >>> report = hf_tsv.sti("base", ["ft_a", "ft_b", "ft_c"])  # doctest: +SKIP
        >>> print(report.table()); report.total  # doctest: +SKIP
    """
    from .core import singular_task_interference, truncated_task_factors

    options = MergeOptions.from_arguments(fuse_qkv=fuse_qkv, exclude=exclude, device=device,
                                          compute_dtype=compute_dtype, svd=svd, allow_duplicates=allow_duplicates,
                                          architecture=architecture, drop_heads=drop_heads, embeddings=embeddings)
    plan = build_plan(base, models, fuse_qkv=options.fuse_qkv, exclude=options.exclude,
                      allow_duplicates=options.allow_duplicates, revision=revision, token=token,
                      architecture=options.architecture, drop_heads=options.drop_heads,
                      embeddings=options.embeddings)
    matrix_units = [u for u in plan.units if u.is_matrix]
    keys: dict[str, float] = {}
    for item in iter_units(plan, options.device, options.compute_dtype, Timer(), units=matrix_units, desc="STI"):
        factors = truncated_task_factors(item.task_vectors, compute_dtype=options.compute_dtype, svd=options.svd,
                                         precision=item.precision)
        key = plan.base_key(item.unit)
        keys[key] = check_finite(singular_task_interference(factors), f"the STI of key {key!r}", OUTPUT_OVERFLOW_HINT)
    return STIReport(keys, sum(keys.values()), plan.num_tasks, options.fuse_qkv, plan.warnings, plan.adapter.name)


def plan(base, models, *, method: str = DEFAULT_METHOD, alpha: float | None = None, svd: str = "exact",
         fuse_qkv: bool = False, exclude: str | None = None, device="auto", dtype=None, compute_dtype=torch.float32,
         allow_duplicates: bool = False, revision: str | None = None, token=None, **method_params) -> dict:
    """The preflight alone: checks every option and input as :func:`merge` does, and returns key counts and
    peak-memory/time estimates.

    Example:
        >>> hf_tsv.plan("base", ["ft_a", "ft_b"])["estimated_peak_memory_bytes"]  # doctest: +SKIP
    """
    from .estimate import estimate_seconds

    options = MergeOptions.from_arguments(method=method, alpha=alpha, svd=svd, fuse_qkv=fuse_qkv, exclude=exclude,
                                          device=device, dtype=dtype, compute_dtype=compute_dtype,
                                          allow_duplicates=allow_duplicates, **method_params)
    p = build_plan(base, models, fuse_qkv=options.merge_fuses_qkv, exclude=options.exclude,
                   allow_duplicates=options.allow_duplicates, revision=revision, token=token,
                   architecture=options.architecture, drop_heads=options.drop_heads, embeddings=options.embeddings)
    weights_bytes = sum(i.nbytes for i in p.base_infos.values())
    info = {
        "method": options.method,
        "num_tasks": p.num_tasks,
        "base": p.base.provenance(),
        "models": [m.provenance() for m in p.models],
        "output_class": p.output_class.__name__,
        "architecture": p.adapter.name,
        "keys": p.counts(),
        "notes": p.notes,
        "model_bytes": weights_bytes,
        "estimated_peak_memory_bytes": p.estimate_peak_bytes(),
        "estimated_seconds": estimate_seconds(p, options.merge_method, options.method_options),
    }
    if p.mixed_precision:
        info["mixed_precision"] = p.mixed_precision
    if p.warnings:
        info["warnings"] = p.warnings
    return info
