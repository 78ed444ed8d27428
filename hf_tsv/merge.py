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
from .core.svd import DEFAULT_SVD_MODE
from .distributed import Shards, current_shards, options_fixing_output, shard_units, step, write_sharded
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
        if self.report.output is not None and self.report.output.format == "peft":
            raise MergeInputError("this merge was written as a LoRA adapter (output_format='peft'); load it with "
                                  f"PeftModel.from_pretrained(base_model, {str(self.folder)!r})")
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

        Inside a process group of several processes (a sharded merge), call it on every process, as the merge
        was: the main process alone pushes, once every process is there (the output complete), and every process
        returns its :class:`~hf_tsv.hub.PushResult`, or raises when the push failed (the main process its
        :class:`~hf_tsv.errors.PushError`, the others :class:`~hf_tsv.errors.DistributedMergeError` quoting it).

        Example:
            >>> result = hf_tsv.merge("base", ["ft_a", "ft_b"])  # doctest: +SKIP
            >>> url = result.push_to_hub("me/clip-tsv-merged", private=True)  # doctest: +SKIP
        """
        import tempfile

        from .distributed import on_main
        from .hub import push_to_hub

        options = dict(private=private, revision=revision, create_pr=create_pr, commit_message=commit_message,
                       token=token, license=license)

        def push():
            if self.folder is not None:
                return push_to_hub(self.folder, repo_id, **options)
            with tempfile.TemporaryDirectory(prefix="hf-tsv-push-") as tmp:
                folder = self.save_pretrained(Path(tmp) / repo_id.split("/")[-1], max_shard_size=max_shard_size)
                return push_to_hub(folder, repo_id, **options)

        return on_main(current_shards(), "while pushing to the Hub", push)


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
                  token, shards: Shards | None = None) -> MergeReport:
    """The report of a merge about to run (STI and timings are added as it runs). A command is recorded as it
    may be published (:func:`hf_tsv.secrets.public_command`): no secret, local paths reduced to names. A sharded
    merge's device ends with its processes (``"cpu (…, 1 torch threads) × 2 processes (gloo)"``): with the
    timings, the only difference from the report of a single-process merge."""
    method = options.merge_method
    device = device_description(options.device) + (f" × {shards.describe()}" if shards else "")
    hub_ids = {m.hub_id for m in [plan.base, *plan.models] if m.hub_id}
    return MergeReport(
        method=options.method, method_description=method.description, alpha=options.effective_alpha,
        hf_tsv_version=__version__, num_tasks=plan.num_tasks,
        base=InputRecord.from_dict(plan.base.provenance()),
        models=[InputRecord.from_dict(m.provenance()) for m in plan.models],
        options=ReportOptions(plan.fuse_qkv, list(plan.excluded), _dtype_name(options.compute_dtype),
                              device,
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
        self.shards = shards = current_shards()
        self.units = shard_units(plan.units, shards, plan.num_tasks, self.merge_method.uses_svd)  # this process's
        self.sti_keys: dict[str, float] = {}
        self.timer = Timer()
        self.timer.totals["preflight_s"] = time.perf_counter() - started
        self.layout = layout = _output_layout(plan, options.dtype)
        self.config = plan.output_config
        self.output_dtype = _main_dtype(layout)
        set_config_dtype(self.config, self.output_dtype)
        self.report = _merge_report(plan, options, self.output_dtype, command, token, shards)

    def _model_scan(self):
        """The scan of the method's model-wide pass: this process's units, summed over the processes, when the
        method combines shards (TIES) and every process has a unit; else every unit (exact, read by each)."""
        desc = f"{self.method} model pass"
        shards = self.shards
        merged = [u for u in self.units if not u.from_base]  # keys kept from the base are not scanned
        if shards is not None and self.merge_method.shards_model_pass and all(shards.gather(bool(merged))):
            return task_vector_scan(self.plan, self.device, self.compute_dtype, Timer(), desc, merged,
                                    shards.all_reduce)
        return task_vector_scan(self.plan, self.device, self.compute_dtype, Timer(), desc)

    def check_output(self, tensor: torch.Tensor, key: str) -> torch.Tensor:
        return _check_output(tensor, key)

    def deltas(self, low_rank: bool = False):
        """Yield ``(unit, base, Δ)`` per unit of this process, streaming; a single process then records STI
        (TSV-M) in the report (:meth:`record_sti`; a sharded merge calls it once every process is done). With
        ``low_rank`` a matrix unit's Δ is the method's exact factors (a :class:`~hf_tsv.core.LowRankDelta`, every
        task a LoRA adapter), for ``--output-format peft``."""
        form_factored = not (low_rank or self.merge_method.factored_tasks)
        timer = self.timer
        start = time.perf_counter()
        statistics = None
        if self.merge_method.model_statistics is not None:
            scan = self._model_scan()
            statistics = self.merge_method.statistics(scan, self.opts)  # TIES over the whole model: its thresholds
            if scan.error is not None:
                raise scan.error
            if statistics is not None:
                timer.add("model_pass_s", start)
        for item in iter_units(self.plan, self.device, self.compute_dtype, timer, self.units,
                               desc=f"{self.method} merge", form_factored=form_factored):
            start = time.perf_counter()
            context = KeyContext(item.precision, statistics, item.factored)
            if item.unit.from_base:  # --embeddings base: the base's tensor, unchanged (a zero Δ, stored once)
                delta = torch.zeros((), dtype=item.base.dtype, device=item.base.device).expand(item.base.shape)
                sti_value = None
            elif low_rank and item.unit.is_matrix:
                delta, sti_value = self.merge_method.low_rank_delta(item.task_vectors, self.opts, context)
            else:
                delta, sti_value = self.merge_method.key_delta(item.task_vectors, item.unit.is_matrix, self.opts,
                                                               context)
            if sti_value is not None:
                self.sti_keys[self.plan.base_key(item.unit)] = sti_value
            start = timer.add("compute_s", start)
            yield item.unit, item.base, delta
            timer.add("write_s", start)
        if self.shards is None:
            self.record_sti()

    def record_sti(self) -> None:
        """Check every matrix key's STI (after the merged tensors' own checks) and record them in the report, in
        the plan's order; a sharded merge first gathers every process's (a collective: every process calls it)."""
        sti_keys = self.sti_keys
        if self.shards is not None:
            gathered = {k: v for part in self.shards.gather(sti_keys) for k, v in part.items()}
            names = [self.plan.base_key(u) for u in self.plan.units]
            sti_keys = {key: gathered[key] for key in names if key in gathered}
        for key, value in sti_keys.items():
            check_finite(value, f"the STI of key {key!r}", OUTPUT_OVERFLOW_HINT)
        if self.merge_method.reports_sti:
            self.report.sti = STIRecord(sti_keys, sum(sti_keys.values()), self.merge_method.task_rank)

    def check_same_plan(self) -> None:
        """In a sharded merge, refuse processes that planned different outputs (:meth:`Shards.check_same`)."""
        if self.shards is not None:
            report = self.report.to_dict()
            report["options"].pop("device")
            self.shards.check_same((self.layout, options_fixing_output(self.options),
                                    [(u.name, u.keys) for u in self.plan.units], report))

    def output_keys(self) -> list[str]:
        """The saved keys of this process's units (every key in a single process)."""
        return [self.plan.output_names[key] for unit in self.units for key in unit.keys]

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
                 device: str | torch.device = "auto", dtype=None, compute_dtype=torch.float32,
                 svd: str = DEFAULT_SVD_MODE, allow_duplicates: bool = False, revision: str | None = None,
                 token=None, command: str | None = None,
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
    if options.output_format != "model":
        raise MergeInputError("merge_linear keeps θ₀ and Δ in memory for an α sweep; output_format='peft' "
                              "(--output-format peft) applies to merge with a fixed alpha only")
    shards = current_shards()
    with step(shards, "in the preflight"):
        job = _MergeJob(base, models, options, revision=revision, token=token, command=command, started=started)
    job.check_same_plan()
    keep = torch.float64 if job.compute_dtype == torch.float64 else torch.float32
    base_state: dict[str, torch.Tensor] = {}
    delta_state: dict[str, torch.Tensor] = {}
    with step(shards, "while merging"):
        for unit, base_tensor, delta in job.deltas():
            bases = split_rows(unit, job.plan, base_tensor)
            for canon, tensor in split_rows(unit, job.plan, delta).items():
                saved = job.plan.output_names[canon]
                base_state[saved] = bases[canon].to(device="cpu", dtype=keep)
                delta_state[saved] = check_finite(tensor.to(device="cpu", dtype=keep),
                                                  f"the merged delta of key {saved!r}", OUTPUT_OVERFLOW_HINT)
    if shards is not None:  # every process holds the whole θ₀ and Δ, as a single process would
        job.record_sti()
        base_state = _gather_state(shards, base_state, job.layout)
        delta_state = _gather_state(shards, delta_state, job.layout)
    job.finish()
    if not job.merge_method.uses_alpha:  # averaging: α is not a parameter of the method
        job.report.alpha = 1.0
    dtypes = {k: v[0] for k, v in job.layout.items()}
    return LinearMerge(base_state, delta_state, job.report, job.config, job.plan.output_class, dtypes,
                       inputs=job.input_locations(), alpha_grid=list(job.options.search_grid),
                       side_files=job.plan.side_files)


def merge(base, models, method: str = DEFAULT_METHOD, alpha: float | None = None, *, fuse_qkv: bool = False,
          exclude: str | None = None, device: str | torch.device = "auto", dtype=None,
          compute_dtype=torch.float32, svd: str = DEFAULT_SVD_MODE, allow_duplicates: bool = False,
          output_dir: str | os.PathLike | None = None, overwrite: bool = False,
          max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE, revision: str | None = None, token=None,
          command: str | None = None, **method_params) -> MergeResult:
    """Merge fine-tuned models of one base with TSV-M (default) or a baseline.

    ``base`` and each of ``models`` is a local folder, a Hub id (``"ns/name"``, ``"ns/name@rev"``) or an
    in-memory transformers model; a model may also be a PEFT LoRA adapter (folder or Hub id), whose task matrices
    are used as factors (docs/lora.md). ``output_format="peft"`` (with ``output_dir``; every model an adapter,
    method TSV-M or task arithmetic) writes the merge as one LoRA adapter for ``PeftModel.from_pretrained``.
    The merge streams one key (or fused q/k/v group) at a time. With
    ``output_dir`` the result is written straight to disk (atomically) and never held whole in memory;
    without it the merged weights are kept in memory.

    ``method`` is one of :data:`hf_tsv.METHODS`; each declares, in its module of :mod:`hf_tsv.methods`, its α
    default (used when ``alpha`` is None), its α search grid and its parameters, which are keyword arguments
    here (``ties_density=0.3``; ``hf-tsv merge --help`` lists them with their ranges and defaults). Its
    definition is the docstring of its :mod:`hf_tsv.core` function. TIES over the whole model
    (``ties_scope="model"``, as its reference code) reads the inputs 3 more times, 5 with float64 compute.
    ``dtype`` is the output dtype (default: the base's); SVDs run in ``compute_dtype`` (float32, or float64).
    ``svd`` chooses how each task's top-k triplets are computed: ``"fast"`` (default: Gram matrix + float32
    eigendecomposition + Rayleigh-Ritz, on CPU through SciPy's LAPACK), ``"exact"`` (a float64
    eigendecomposition; the previous default) or ``"lapack"`` (a full SVD per task, as the paper's code does).

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
    if options.output_format == "peft" and output_dir is None:
        raise MergeInputError("output_format='peft' writes a LoRA adapter folder; give output_dir (-o/--output)")
    shards = current_shards()
    if options.output_format == "peft" and shards is not None:
        raise MergeInputError("output_format='peft' (--output-format peft) runs in one process; start it without "
                              "torchrun")
    with step(shards, "in the preflight"):
        if output_dir is not None and (shards is None or shards.is_main):
            check_output_dir(output_dir, overwrite, inputs=[base, *models])
        job = _MergeJob(base, models, options, revision=revision, token=token, command=command, started=started)
    job.check_same_plan()
    report, layout, config, plan = job.report, job.layout, job.config, job.plan
    if options.output_format == "peft":
        return _merge_to_adapter(job, output_dir, overwrite)

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
        with step(shards, "while merging"):
            run(state.__setitem__)
        if shards is not None:
            job.record_sti()
            state = _gather_state(shards, state, layout)
        finish()
        return MergeResult(report, config, plan.output_class, state_dict=state, inputs=inputs,
                           side_files=plan.side_files)
    if shards is not None:
        def write_rest(folder: Path) -> None:
            finish()
            save_config(folder, config)
            save_side_files(folder, plan.side_files)
            report.save(folder)

        write_sharded(shards, output_dir, overwrite, inputs, layout, max_shard_size, "model",
                      job.output_keys(), run, job.record_sti, write_rest)
        if not shards.is_main:  # its report (timings of its own share) is returned, not saved
            finish()
        return MergeResult(report, config, plan.output_class, folder=Path(output_dir), inputs=inputs,
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


def _gather_state(shards: Shards, state: dict[str, torch.Tensor], layout: dict) -> dict[str, torch.Tensor]:
    """Every process's share of a state dict, on every process, in the output's key order."""
    gathered = {k: v for part in shards.gather(state) for k, v in part.items()}
    return {key: gathered[key] for key in layout}


def _merge_to_adapter(job: _MergeJob, output_dir, overwrite: bool) -> MergeResult:
    """The merge written as one PEFT LoRA adapter (:mod:`hf_tsv.peft_output`), atomically."""
    from . import peft_output

    peft_output.check_peft_inputs(job.plan)
    report, plan = job.report, job.plan
    report.output.format = "peft"
    inputs = job.input_locations()
    with atomic_output_dir(output_dir, overwrite, inputs=inputs) as tmp:
        tensors, ranks = peft_output.collect(job, job.alpha)
        base_model = plan.base.hub_id or plan.base.name
        adapter_config = peft_output.adapter_config(ranks, base_model)
        report.notes.append(f"written as a PEFT LoRA adapter of {len(ranks)} modules, rank "
                            f"{min(ranks.values())}-{max(ranks.values())} (lora_alpha = r, so s = 1); load it with "
                            f"PeftModel.from_pretrained({plan.output_class.__name__}.from_pretrained(base), folder)")
        job.finish()
        peft_output.write_adapter_files(tmp, tensors, adapter_config, report)
    return MergeResult(report, adapter_config, plan.output_class, state_dict=tensors, folder=Path(output_dir),
                       inputs=inputs)


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
        compute_dtype=torch.float32, svd: str = DEFAULT_SVD_MODE, allow_duplicates: bool = False,
        revision: str | None = None, token=None, architecture: str | None = None, drop_heads: bool = False,
        embeddings: str = "average") -> STIReport:
    """Singular Task Interference of fine-tuned models, without merging. Options as in :func:`merge`.

    Example:
        >>> report = hf_tsv.sti("base", ["ft_a", "ft_b", "ft_c"])  # doctest: +SKIP
        >>> print(report.table()); report.total  # doctest: +SKIP
    """
    from .core import singular_task_interference, task_factors

    options = MergeOptions.from_arguments(fuse_qkv=fuse_qkv, exclude=exclude, device=device,
                                          compute_dtype=compute_dtype, svd=svd, allow_duplicates=allow_duplicates,
                                          architecture=architecture, drop_heads=drop_heads, embeddings=embeddings)
    shards = current_shards()
    with step(shards, "in the preflight"):
        plan = build_plan(base, models, fuse_qkv=options.fuse_qkv, exclude=options.exclude,
                          allow_duplicates=options.allow_duplicates, revision=revision, token=token,
                          architecture=options.architecture, drop_heads=options.drop_heads,
                          embeddings=options.embeddings)
    matrix_units = [u for u in plan.units if u.is_matrix]
    if shards is not None:
        shards.check_same((options_fixing_output(options), [(u.name, u.keys, u.shape) for u in matrix_units]),
                          "STI computation")
    keys: dict[str, float] = {}
    with step(shards, "while computing STI"):
        for item in iter_units(plan, options.device, options.compute_dtype, Timer(), desc="STI",
                               units=shard_units(matrix_units, shards, plan.num_tasks, uses_svd=True),
                               form_factored=False):
            factors = task_factors(item.task_vectors, item.factored, compute_dtype=options.compute_dtype,
                                   svd=options.svd, precision=item.precision)
            key = plan.base_key(item.unit)
            keys[key] = check_finite(singular_task_interference(factors), f"the STI of key {key!r}",
                                     OUTPUT_OVERFLOW_HINT)
    if shards is not None:  # every process's keys, in the plan's order (the total sums them in that order)
        gathered = {k: v for part in shards.gather(keys) for k, v in part.items()}
        keys = {key: gathered[key] for key in (plan.base_key(u) for u in matrix_units)}
    return STIReport(keys, sum(keys.values()), plan.num_tasks, options.fuse_qkv, plan.warnings, plan.adapter.name)


def plan(base, models, *, method: str = DEFAULT_METHOD, alpha: float | None = None, svd: str = DEFAULT_SVD_MODE,
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
        "estimated_peak_memory_bytes": p.estimate_peak_bytes(options.merge_method.factored_tasks),
        "estimated_seconds": estimate_seconds(p, options.merge_method, options.method_options),
    }
    if p.mixed_precision:
        info["mixed_precision"] = p.mixed_precision
    if p.warnings:
        info["warnings"] = p.warnings
    return info
