"""The service side of the hf-tsv Space, without any Gradio: settings, model references, limits and workers.

Everything a visitor types goes through :func:`resolve_inputs` before anything is read: a model is either a
Hub id (``namespace/name``, optionally ``@revision``) or the exact name of a sub-folder of the server's model
library (``HF_TSV_MODEL_LIBRARY``). Paths are never accepted, so a visitor cannot make the server read a file
of its choosing. The heavy work (STI, merge, comparison, evaluation, card, zip) runs in a separate worker process
(``space_worker.py``), one per job, so that a crash or an out-of-memory kill takes down only that process.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import importlib.util
import json
import logging
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

logger = logging.getLogger("hf_tsv.space")

HERE = Path(__file__).resolve().parent
WORKER_SCRIPT = HERE / "space_worker.py"

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[\w.-]{1,96}$")
REVISION = re.compile(r"^[\w.-]{1,100}(?:/[\w.-]{1,100}){0,3}$")
REPO_TARGET = re.compile(r"^(?:[A-Za-z0-9][\w.-]{0,95}/)?[\w.-]{1,96}$")
GB = 1e9
# The workers download Hub models into a cache of their own, which the Space prunes (a personal Hub cache of whoever
# runs the app is never touched).
DEFAULT_HUB_CACHE = Path("~/.cache/hf-tsv-space/hub").expanduser()


class SpaceError(Exception):
    """A problem to show to the visitor; the message never holds a server path or a token."""


def visitor_message(text: str, server_paths: Iterable[str | os.PathLike] = (), secrets: Iterable[str] | None = None
                    ) -> str:
    """A message of hf_tsv (an ``HFTSVError``) as a visitor may see it: the server folders in ``server_paths``
    removed from the paths that start with them (a job's files keep their names relative to the job), then
    :func:`hf_tsv.secrets.public_text`: every other absolute path (the Hub cache, a spec's data) reduced to its
    last component, and every token redacted (``secrets``, default: the ones this process knows)."""
    from hf_tsv.secrets import public_text

    message = str(text)
    for folder in sorted({str(p) for p in server_paths if p}, key=len, reverse=True):
        message = message.replace(folder.rstrip("/") + "/", "").replace(folder, "")
    return " ".join(public_text(message, secrets).split())


class WorkerDied(SpaceError):
    """The worker process ended without a result (killed, crashed, out of memory)."""


# --------------------------------------------------------------------------------------------------------------
# Settings
# --------------------------------------------------------------------------------------------------------------


def _env_number(environ, name: str, default, cast, minimum):
    raw = environ.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        value = cast(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a number") from None
    if not math.isfinite(value) or value < minimum:
        raise ValueError(f"{name}={raw!r} must be at least {minimum}")
    return value


@dataclass(frozen=True)
class Settings:
    """How the Space behaves; :meth:`from_env` reads the ``HF_TSV_*`` environment variables."""

    library: Path | None = None  # HF_TSV_MODEL_LIBRARY: its sub-folders are offered by name
    max_models: int = 8  # HF_TSV_SPACE_MAX_MODELS: fine-tuned models per job
    max_total_gb: float = 12.0  # HF_TSV_SPACE_MAX_TOTAL_GB: weights of base + fine-tuned models together
    timeout_s: float = 1800.0  # HF_TSV_SPACE_TIMEOUT_S: a worker running longer is stopped
    queue_size: int = 16  # HF_TSV_SPACE_QUEUE_SIZE: jobs waiting at most
    concurrency: int = 1  # HF_TSV_SPACE_CONCURRENCY: STI/merge jobs running at once
    threads: int | None = None  # HF_TSV_SPACE_THREADS: torch threads per worker (default: torch's)
    worker_memory_gb: float | None = None  # HF_TSV_SPACE_WORKER_MEMORY_GB: address-space cap per worker
    result_ttl_s: int = 3600  # HF_TSV_SPACE_RESULT_TTL_S: how long a session's results are kept
    max_results_gb: float = 20.0  # HF_TSV_SPACE_MAX_RESULTS_GB: disk for all sessions' kept results together
    hub_cache: Path | None = None  # HF_TSV_SPACE_HUB_CACHE: the workers' Hub cache (default: DEFAULT_HUB_CACHE)
    max_cache_gb: float = 40.0  # HF_TSV_SPACE_MAX_CACHE_GB: Hub downloads kept there for later jobs, at most
    tasks: Path | None = None  # HF_TSV_SPACE_TASKS: task spec (JSON/YAML) of hf_tsv.evaluation; enables evaluation
    eval_max_examples: int = 1000  # HF_TSV_SPACE_EVAL_MAX_EXAMPLES: test images per task, at most
    spare_workers: int = 1  # HF_TSV_SPACE_SPARE_WORKERS: workers started ahead of the next jobs
    on_spaces: bool = False  # a Space with hf_oauth: true (SYSTEM=spaces, OAUTH_CLIENT_ID): sign-in is offered

    @classmethod
    def from_env(cls, environ=None, **overrides) -> Settings:
        env = os.environ if environ is None else environ
        library = env.get("HF_TSV_MODEL_LIBRARY") or None
        if library is not None:
            library = Path(library).expanduser().resolve()
            if not library.is_dir():
                raise ValueError(f"HF_TSV_MODEL_LIBRARY={env['HF_TSV_MODEL_LIBRARY']!r} is not a folder")
        threads = _env_number(env, "HF_TSV_SPACE_THREADS", None, int, 1)
        memory = _env_number(env, "HF_TSV_SPACE_WORKER_MEMORY_GB", None, float, 0.1)
        values = dict(
            library=library,
            max_models=_env_number(env, "HF_TSV_SPACE_MAX_MODELS", cls.max_models, int, 2),
            max_total_gb=_env_number(env, "HF_TSV_SPACE_MAX_TOTAL_GB", cls.max_total_gb, float, 0.0),
            timeout_s=_env_number(env, "HF_TSV_SPACE_TIMEOUT_S", cls.timeout_s, float, 1.0),
            queue_size=_env_number(env, "HF_TSV_SPACE_QUEUE_SIZE", cls.queue_size, int, 1),
            concurrency=_env_number(env, "HF_TSV_SPACE_CONCURRENCY", cls.concurrency, int, 1),
            threads=threads,
            worker_memory_gb=memory,
            result_ttl_s=_env_number(env, "HF_TSV_SPACE_RESULT_TTL_S", cls.result_ttl_s, int, 60),
            max_results_gb=_env_number(env, "HF_TSV_SPACE_MAX_RESULTS_GB", cls.max_results_gb, float, 0.0),
            hub_cache=Path(env["HF_TSV_SPACE_HUB_CACHE"]).expanduser() if env.get("HF_TSV_SPACE_HUB_CACHE") else None,
            max_cache_gb=_env_number(env, "HF_TSV_SPACE_MAX_CACHE_GB", cls.max_cache_gb, float, 0.0),
            tasks=Path(env["HF_TSV_SPACE_TASKS"]).expanduser() if env.get("HF_TSV_SPACE_TASKS") else None,
            eval_max_examples=_env_number(env, "HF_TSV_SPACE_EVAL_MAX_EXAMPLES", cls.eval_max_examples, int, 1),
            spare_workers=_env_number(env, "HF_TSV_SPACE_SPARE_WORKERS", cls.spare_workers, int, 0),
            on_spaces=env.get("SYSTEM") == "spaces" and bool(env.get("SPACE_ID") and env.get("OAUTH_CLIENT_ID")),
        )
        values.update(overrides)
        if values["library"] is not None:
            values["library"] = Path(values["library"]).resolve()
        values["hub_cache"] = Path(values["hub_cache"] or DEFAULT_HUB_CACHE).resolve()
        if env.get("HF_TSV_SPACE_EVAL"):
            raise ValueError("HF_TSV_SPACE_EVAL (an evaluation hook) is no longer read: set HF_TSV_SPACE_TASKS to a "
                             "task spec of hf_tsv.evaluation instead (see spaces_app/README.md)")
        if values["tasks"] is not None:
            values["tasks"] = Path(values["tasks"]).resolve()
            task_names(values["tasks"])  # a spec that cannot be used stops the server at start, not a visitor's job
        return cls(**values)


def task_names(spec: str | os.PathLike) -> list[str]:
    """The names of the tasks of the operator's task spec (``HF_TSV_SPACE_TASKS``), after checking what can be
    checked without loading any data: the spec itself, its head files and local datasets, and that the
    evaluation packages are installed. Raises ``ValueError`` (a message for the operator)."""
    missing = [name for name in ("datasets", "evaluate") if importlib.util.find_spec(name) is None]
    if missing:
        raise ValueError(f"HF_TSV_SPACE_TASKS is set but {' and '.join(missing)} is not installed; install "
                         "hf-tsv[eval] (spaces_app/requirements.txt does)")
    from hf_tsv.errors import HFTSVError
    from hf_tsv.evaluation import load_tasks_spec

    try:
        config = load_tasks_spec(spec)
    except HFTSVError as exc:
        raise ValueError(f"HF_TSV_SPACE_TASKS: {exc}") from None
    for task in config.tasks:
        if task.head and not Path(task.head).is_file():
            raise ValueError(f"HF_TSV_SPACE_TASKS: task {task.name!r}: head file {task.head} does not exist")
        local = next((task.dataset[len(p):] for p in ("disk:", "imagefolder:") if task.dataset.startswith(p)), None)
        if local is not None and not Path(local).is_dir():
            raise ValueError(f"HF_TSV_SPACE_TASKS: task {task.name!r}: dataset folder {local} does not exist")
    return config.task_names()


# --------------------------------------------------------------------------------------------------------------
# Model references
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelRef:
    """One model of a job: a library folder (``path`` set) or a Hub repository (``repo_id`` set)."""

    label: str  # what the visitor chose: the library name, or the Hub id with its revision
    path: Path | None = None
    repo_id: str | None = None
    revision: str | None = None
    commit: str | None = None  # the commit the size check resolved ``revision`` to (see pin_models)

    @property
    def worker_ref(self) -> str:
        """What the worker hands to hf_tsv: an absolute folder, or ``ns/name@commit`` (``ns/name[@revision]``
        before :func:`pin_models`)."""
        if self.path is not None:
            return str(self.path)
        revision = self.commit or self.revision
        return f"{self.repo_id}@{revision}" if revision else str(self.repo_id)


# --------------------------------------------------------------------------------------------------------------
# Jobs
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EvaluationSettings:
    """How a merge is evaluated: on the test split of every task of the operator's spec, at most ``max_examples``
    images per task."""

    tasks: str  # the task spec (HF_TSV_SPACE_TASKS)
    max_examples: int


@dataclass(frozen=True)
class StiJob:
    """An STI analysis for a worker: the models (as :attr:`ModelRef.worker_ref`), the options, the worker's
    limits and the server paths its messages must not show (``scrub``)."""

    kind: ClassVar[str] = "sti"
    base: str
    models: tuple[str, ...]
    fuse_qkv: bool = False
    device: str = "auto"
    threads: int | None = None  # torch threads of the worker (default: torch's)
    memory_gb: float | None = None  # the worker's address-space cap
    scrub: tuple[str, ...] = ()


@dataclass(frozen=True)
class MergeJob(StiJob):
    """A merge for a worker: an STI job's fields, plus the method, α, where the merged folder and its zip go, the
    command recorded on the card and, optionally, its evaluation."""

    kind: ClassVar[str] = "merge"
    output: str = ""
    zip: str | None = None
    method: str = "tsv-m"
    alpha: float | None = None
    command: str | None = None
    evaluate: EvaluationSettings | None = None
    comparison: str | None = None  # a comparison folder (CompareJob.output) whose files go beside the merge


@dataclass(frozen=True)
class CompareJob(StiJob):
    """A comparison for a worker (:func:`hf_tsv.iter_compare`): an STI job's fields, plus the methods (in the
    order the visitor sees them), the folder for ``compare.json``/``compare.md``/plots, the models as the visitor
    named them (``labels``: base first) and, optionally, the evaluation. Each method runs at its own default α."""

    kind: ClassVar[str] = "compare"
    methods: tuple[str, ...] = ()
    output: str = ""
    labels: tuple[str, ...] = ()
    evaluate: EvaluationSettings | None = None


JOB_KINDS: dict[str, type[StiJob]] = {job.kind: job for job in (StiJob, MergeJob, CompareJob)}


def job_to_json(job: StiJob) -> str:
    """The job as the worker reads it (``job.json``)."""
    return json.dumps({"kind": job.kind, **dataclasses.asdict(job)})


def job_from_json(text: str) -> StiJob:
    """The job written by :func:`job_to_json`."""
    data = json.loads(text)
    kind = JOB_KINDS[data.pop("kind")]
    data["models"] = tuple(data["models"])
    for name in ("scrub", "methods", "labels"):
        if name in data:
            data[name] = tuple(data[name] or ())
    if data.get("evaluate") is not None:
        data["evaluate"] = EvaluationSettings(**data["evaluate"])
    return kind(**data)


def _shown(text: str, limit: int = 60) -> str:
    """A visitor's input, quoted and shortened, for an error message."""
    text = str(text)
    return repr(text if len(text) <= limit else text[:limit] + "…")


def library_models(library: Path | None) -> dict[str, Path]:
    """The library's models by name: sub-folders with a ``config.json`` whose real location (symlinks
    followed) is inside the library. Hidden entries are left out."""
    if library is None:
        return {}
    root = Path(library).resolve()
    found: dict[str, Path] = {}
    try:
        entries = sorted(os.scandir(root), key=lambda e: e.name)
    except OSError:
        logger.warning("the model library cannot be listed")
        return {}
    for entry in entries:
        if entry.name.startswith("."):
            continue
        real = (root / entry.name).resolve()
        if real == root or not real.is_relative_to(root):
            continue  # a symlink that leads out of the library
        if real.is_dir() and (real / "config.json").is_file():
            found[entry.name] = real
    return found


def parse_library_name(name, settings: Settings) -> ModelRef:
    """A model named by the library: the name must be exactly one of the library's sub-folder names."""
    if settings.library is None:
        raise SpaceError("this server has no model library; give Hub ids (namespace/name) instead")
    if not isinstance(name, str):
        raise SpaceError(f"{_shown(name)} is not a model name")
    models = library_models(settings.library)
    path = models.get(name)
    if path is None:
        choices = ", ".join(models) or "none"
        raise SpaceError(f"{_shown(name)} is not a model of this server's library (its models: {choices})")
    root = settings.library.resolve()
    real = path.resolve()
    if not real.is_relative_to(root) or real == root:  # checked again: the folder may have changed since listing
        raise SpaceError(f"{_shown(name)} is not a model of this server's library")
    return ModelRef(label=name, path=real)


def parse_hub_id(text) -> ModelRef:
    """A Hub model ``namespace/name`` with an optional ``@revision``; anything path-like is refused."""
    if not isinstance(text, str):
        raise SpaceError(f"{_shown(text)} is not a Hub id")
    ref = text.strip()
    hint = ("give a Hub id such as 'openai/clip-vit-base-patch32' (optionally '@revision'), or pick a model "
            "from the library: paths on the server are not accepted")
    if not ref or ref.startswith(("/", "~", ".")) or ".." in ref or "\\" in ref or "//" in ref:
        raise SpaceError(f"{_shown(ref)} is not a Hub id: {hint}")
    repo_id, at, revision = ref.partition("@")
    if not HUB_ID.match(repo_id) or (at and not REVISION.match(revision)):
        raise SpaceError(f"{_shown(ref)} is not a Hub id: {hint}")
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        raise SpaceError(f"{_shown(ref)} is not a valid Hub id: {hint}") from None
    return ModelRef(label=ref, repo_id=repo_id, revision=revision or None)


def _split_ids(text) -> list[str]:
    if text is None:
        return []
    if isinstance(text, (list, tuple)):
        parts: list[str] = []
        for item in text:
            parts.extend(_split_ids(item))
        return parts
    return [p for p in re.split(r"[\s,;]+", str(text)) if p]


def _as_list(value) -> list:
    if value is None or value == "":
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def resolve_inputs(base_library, base_hub, models_library, models_hub, settings: Settings
                   ) -> tuple[ModelRef, list[ModelRef]]:
    """Check the visitor's choice of models and turn it into references; refuse anything else."""
    base_names = _as_list(base_library)
    base_ids = [base_hub.strip()] if isinstance(base_hub, str) and base_hub.strip() else _split_ids(base_hub)
    if len(base_names) + len(base_ids) == 0:
        raise SpaceError("choose a base model (from the library, or as a Hub id)")
    if len(base_names) + len(base_ids) > 1:
        raise SpaceError("give exactly one base model: pick it from the library or type its Hub id, not both")
    base = parse_library_name(base_names[0], settings) if base_names else parse_hub_id(base_ids[0])

    names, ids = _as_list(models_library), _split_ids(models_hub)
    count = len(names) + len(ids)
    if count > settings.max_models:
        raise SpaceError(f"{count} fine-tuned models were given; this server merges at most "
                         f"{settings.max_models} at a time (HF_TSV_SPACE_MAX_MODELS)")
    models = [parse_library_name(n, settings) for n in names] + [parse_hub_id(i) for i in ids]
    if len(models) < 2:
        raise SpaceError("choose at least two fine-tuned models of the base")
    labels = [m.label for m in models]
    repeated = sorted({label for label in labels if labels.count(label) > 1})
    if repeated:
        raise SpaceError(f"each fine-tuned model may be given once; repeated: {', '.join(repeated)}")
    if base.label in labels:
        raise SpaceError(f"{base.label} is the base model; it cannot also be one of the fine-tuned models")
    return base, models


# --------------------------------------------------------------------------------------------------------------
# Size limits (checked before any weights are downloaded)
# --------------------------------------------------------------------------------------------------------------


MAX_INDEX_BYTES = 16 * 2**20  # a shard index larger than this is refused before it is downloaded


def _library_files(ref: ModelRef) -> list[tuple[str, int]]:
    """The files the reader opens in a library model, with their sizes; each must lie inside the model's folder
    (symlinks followed), else the model is refused without a word about where the link leads."""
    from hf_tsv.errors import HFTSVError
    from hf_tsv.io.layout import files_to_read, inside, model_root

    folder, who = ref.path, f"library model {ref.label!r}"
    root = model_root(folder)

    def member(name: str) -> Path:
        return inside(folder, root, name, who)

    try:
        names = files_to_read(lambda name: os.path.lexists(folder / name), lambda name: member(name).read_bytes(),
                              who)
        return [(name, member(name).stat().st_size) for name in names]
    except HFTSVError as exc:
        raise SpaceError(str(exc).replace(str(folder), ref.label)) from None
    except OSError:
        raise SpaceError(f"{who}: its files cannot be read") from None


def _hub_files(ref: ModelRef, cache_dir: str | os.PathLike | None) -> tuple[str, list[tuple[str, int | None]]]:
    """Resolve a Hub model's revision to a commit and list the files the reader opens at that commit with the
    Hub's sizes; a shard index is downloaded (into ``cache_dir``, where the worker finds it) to learn its shards."""
    from huggingface_hub import HfApi, hf_hub_download
    from huggingface_hub.errors import (
        GatedRepoError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    from hf_tsv.io.layout import files_to_read

    try:
        info = HfApi().model_info(ref.repo_id, revision=ref.revision, files_metadata=True, token=False)
    except GatedRepoError:
        raise SpaceError(f"{ref.label} is a gated model; this Space reads public models only") from None
    except RevisionNotFoundError:
        raise SpaceError(f"{ref.label}: the Hub has no revision {ref.revision!r} of {ref.repo_id}") from None
    except RepositoryNotFoundError:
        raise SpaceError(f"{ref.label} was not found on the Hub (this Space reads public models only)") from None
    except OfflineModeIsEnabled:
        raise SpaceError(f"{ref.label}: this server is offline (HF_HUB_OFFLINE=1) and cannot read Hub models; "
                         "use the models of its library") from None
    except Exception as exc:  # noqa: BLE001 - network errors of many kinds mean the same to the visitor
        raise SpaceError(f"{ref.label}: could not read its file list from the Hub ({type(exc).__name__})") from None
    sizes = {sibling.rfilename: sibling.size for sibling in info.siblings or ()}

    def read_index(name: str) -> bytes:
        if sizes[name] is None or sizes[name] > MAX_INDEX_BYTES:
            raise SpaceError(f"{ref.label}: its shard index {name} is missing a size or larger than "
                             f"{MAX_INDEX_BYTES // 2**20} MiB; this server does not read it")
        try:
            return Path(hf_hub_download(ref.repo_id, name, revision=info.sha, token=False,
                                        cache_dir=cache_dir)).read_bytes()
        except Exception as exc:  # noqa: BLE001 - network errors of many kinds mean the same to the visitor
            raise SpaceError(f"{ref.label}: could not download {name} ({type(exc).__name__})") from None

    return info.sha, [(name, sizes[name]) for name in files_to_read(sizes.__contains__, read_index,
                                                                    f"model {ref.label!r}")]


def model_files(ref: ModelRef, cache_dir: str | os.PathLike | None = None) -> tuple[str | None, list[tuple[str, int]]]:
    """Exactly the files a worker reads for ``ref`` (``config.json``, then ``model.safetensors`` or an index and
    the shards it names, else ``pytorch_model.bin`` the same way; :func:`hf_tsv.io.layout.files_to_read`) with
    their sizes, and for a Hub model the commit its revision resolves to (``None`` for a library model)."""
    from hf_tsv.io.layout import WEIGHT_ENTRIES

    commit, files = (None, _library_files(ref)) if ref.path is not None else _hub_files(ref, cache_dir)
    if not any(name in WEIGHT_ENTRIES for name, _ in files):
        where = "on the Hub" if ref.path is None else "in the library"
        raise SpaceError(f"{ref.label} has no safetensors (or pytorch_model.bin) weights {where}")
    if any(size is None for _, size in files):
        raise SpaceError(f"{ref.label}: the Hub did not tell the size of its weights, so it cannot be checked "
                         "against this server's limits")
    return commit, files


def model_bytes(ref: ModelRef, cache_dir: str | os.PathLike | None = None) -> int:
    """Bytes of the files a worker reads for ``ref`` (see :func:`model_files`), before any weights are downloaded."""
    return sum(size for _, size in model_files(ref, cache_dir)[1])


def pin_models(refs: list[ModelRef], settings: Settings) -> tuple[list[ModelRef], int]:
    """Resolve every Hub model to one commit and size exactly the files its worker will read at that commit;
    refuse a job whose models add up to more than ``max_total_gb``. Returns the refs pinned to those commits
    (what the worker downloads is what was counted) and the total bytes."""
    total, pinned = 0, []
    for ref in refs:
        commit, files = model_files(ref, settings.hub_cache)
        pinned.append(dataclasses.replace(ref, commit=commit))
        total += sum(size for _, size in files)
        if total > settings.max_total_gb * GB:
            raise SpaceError(f"the models' weights add up to more than this server's limit of "
                             f"{settings.max_total_gb:g} GB (HF_TSV_SPACE_MAX_TOTAL_GB) "
                             f"({total / GB:.2f} GB with {ref.label}); choose fewer or smaller models")
    return pinned, total


def check_total_size(refs: list[ModelRef], settings: Settings) -> int:
    """Refuse a job whose models' files add up to more than ``max_total_gb``; return the total bytes (see
    :func:`pin_models`, which also returns the refs pinned to the commits that were counted)."""
    return pin_models(refs, settings)[1]


def check_repo_target(repo_id) -> str:
    """The repository a visitor pushes to: ``namespace/name`` or ``name`` (the token's own namespace)."""
    target = str(repo_id or "").strip()
    if not target:
        raise SpaceError("give the repository to push to, e.g. your-name/clip-tsv-merged")
    if ".." in target or not REPO_TARGET.match(target):
        raise SpaceError(f"{_shown(target)} is not a repository id (expected namespace/name)")
    return target


def prune_hub_cache(cache_dir: str | os.PathLike, max_bytes: float) -> list[str]:
    """Delete the least recently used models from the workers' Hub cache until it holds at most ``max_bytes``;
    return the ids of the models deleted."""
    from huggingface_hub import scan_cache_dir

    if not Path(cache_dir).is_dir():
        return []
    try:
        info = scan_cache_dir(cache_dir)
    except Exception:  # noqa: BLE001 - a cache that cannot be read: nothing to prune
        return []
    total = info.size_on_disk
    removed = []
    for repo in sorted(info.repos, key=lambda r: r.last_accessed):
        if total <= max_bytes:
            break
        info.delete_revisions(*[rev.commit_hash for rev in repo.revisions]).execute()
        total -= repo.size_on_disk
        removed.append(repo.repo_id)
    if removed:
        logger.info("pruned the Hub cache (over %.1f GB): %s", max_bytes / GB, ", ".join(removed))
    return removed


# --------------------------------------------------------------------------------------------------------------
# Session folders
# --------------------------------------------------------------------------------------------------------------


def _disk_bytes(folder: Path) -> int:
    """Bytes of the files under ``folder`` (symbolic links not followed)."""
    total = 0
    for root, _, files in os.walk(folder):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass  # removed meanwhile
    return total


class Workspace:
    """A private temporary folder for this server; one sub-folder per visitor session, removed with it. Each job
    of a session (an STI analysis, a merge) keeps its result in a folder of its own there, until the session
    ends, a newer job of the session replaces it, or :meth:`make_room` evicts it to keep the disk used by all
    results within the operator's cap."""

    def __init__(self, parent: str | os.PathLike | None = None):
        self.root = Path(tempfile.mkdtemp(prefix="hf-tsv-space-", dir=parent)).resolve()
        self._lock = threading.Lock()
        self._in_use: dict[Path, int] = {}
        atexit.register(self.close)

    @contextlib.contextmanager
    def in_use(self, folder: str | os.PathLike):
        """Keep ``folder`` (a job's folder, or a folder inside one) from eviction while the block runs (a
        running job, a push reading a merge)."""
        real = Path(folder).resolve()
        with self._lock:
            self._in_use[real] = self._in_use.get(real, 0) + 1
        try:
            yield real
        finally:
            with self._lock:
                self._in_use[real] -= 1
                if not self._in_use[real]:
                    del self._in_use[real]

    def results(self) -> list[tuple[Path, int]]:
        """Every kept result (the job folders of every session) with its size in bytes, oldest first."""
        found = []
        for session in self.root.glob("session-*"):
            try:
                jobs = [p for p in session.iterdir() if p.is_dir() and not p.is_symlink()]
            except OSError:
                continue  # the session ended meanwhile
            for job in jobs:
                try:
                    found.append((job.stat().st_mtime, job, _disk_bytes(job)))
                except OSError:
                    continue
        return [(job, size) for _, job, size in sorted(found, key=lambda item: (item[0], str(item[1])))]

    def make_room(self, max_bytes: float, reserve: float = 0, keep: Iterable[str | os.PathLike] = ()) -> bool:
        """Evict the oldest results (of any session) until they take at most ``max_bytes`` with ``reserve`` bytes
        more for a new one; results in use and those in ``keep`` are never evicted. Returns whether it fits."""
        with self._lock:
            protected = [*self._in_use, *(Path(p).resolve() for p in keep)]
            results = self.results()
            total = sum(size for _, size in results)
            for job, size in results:
                if total + reserve <= max_bytes:
                    break
                real = job.resolve()
                if any(p == real or p.is_relative_to(real) for p in protected):
                    continue
                self.delete(job)
                total -= size
                logger.info("evicted a kept result of %.1f MB (HF_TSV_SPACE_MAX_RESULTS_GB)", size / 1e6)
            return total + reserve <= max_bytes

    def session_dir(self, state: dict | None) -> Path:
        if state and state.get("dir"):
            folder = Path(state["dir"])
            if folder.is_dir() and self.owns(folder):
                return folder
        return Path(tempfile.mkdtemp(prefix="session-", dir=self.root))

    def owns(self, folder: str | os.PathLike) -> bool:
        real = Path(folder).resolve()
        return real != self.root and real.is_relative_to(self.root)

    def delete(self, folder: str | os.PathLike | None) -> None:
        if folder and self.owns(folder):
            shutil.rmtree(folder, ignore_errors=True)

    def delete_session(self, state) -> None:
        """``gr.State`` delete callback: the session's folder goes with its state."""
        if isinstance(state, dict):
            self.delete(state.get("dir"))

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


# --------------------------------------------------------------------------------------------------------------
# Worker processes
# --------------------------------------------------------------------------------------------------------------


def _kill(proc: subprocess.Popen, flag: list) -> None:
    if proc.poll() is None:
        flag.append(True)
        proc.kill()


def _log_tail(path: Path, limit: int = 4000) -> str:
    try:
        data = path.read_bytes()[-limit:]
    except OSError:
        return ""
    return data.decode("utf-8", "replace")


@dataclass
class _Worker:
    proc: subprocess.Popen
    home: Path  # holds the worker's empty working folder ("cwd") and its log


class WorkerPool:
    """Runs each job in a fresh worker process (``space_worker.py``), one process per job.

    Starting a worker (importing torch and transformers) takes seconds, so ``spares`` workers (default 1) are
    started ahead of time and wait, idle, for a job; with ``refill`` a new spare is started after each job. A
    worker never runs a second job, so a crash or an out-of-memory kill loses only the job it was running.
    """

    def __init__(self, settings: Settings, workspace: Workspace, *, script: str | os.PathLike | None = None,
                 spares: int = 1, refill: bool = True):
        self.settings = settings
        self.workspace = workspace
        self.script = Path(script or WORKER_SCRIPT)
        self.spares = max(0, int(spares))
        self.refill = refill
        self._lock = threading.Lock()
        self._ready: list[_Worker] = []
        self._running = 0
        self._closed = False
        self._fill()
        atexit.register(self.close)

    def _env(self) -> dict:
        env = dict(os.environ, PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false",
                   HF_HUB_DISABLE_IMPLICIT_TOKEN="1")
        for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
            env.pop(name, None)  # workers read public models only: the server's own token stays out of reach
        env["HF_HUB_CACHE"] = str(self.settings.hub_cache or DEFAULT_HUB_CACHE)
        if self.settings.threads:
            env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(self.settings.threads)
        if self.settings.tasks is not None:
            env["HF_TSV_SPACE_WORKER_EVAL"] = "1"  # a spare worker imports the evaluation packages too
        return env

    def _spawn(self) -> _Worker:
        home = Path(tempfile.mkdtemp(prefix="worker-", dir=self.workspace.root))
        (home / "cwd").mkdir()  # empty: no relative name can reach a file from there
        with open(home / "worker.log", "wb") as log:
            proc = subprocess.Popen([sys.executable, str(self.script), "--wait"], cwd=home / "cwd",
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, env=self._env(),
                                    start_new_session=True)
        return _Worker(proc, home)

    def _fill(self) -> None:
        with self._lock:
            while not self._closed and len(self._ready) < self.spares:
                self._ready.append(self._spawn())

    def _take(self) -> _Worker:
        with self._lock:
            self._running += 1
            worker = self._ready.pop(0) if self._ready else None
        if worker is not None and worker.proc.poll() is None:
            return worker
        if worker is not None:
            logger.warning("a spare worker had stopped; its log ends with:\n%s",
                           _log_tail(worker.home / "worker.log"))
            self._discard(worker)
        try:
            return self._spawn()
        except BaseException:
            with self._lock:
                self._running -= 1
            raise

    def _discard(self, worker: _Worker) -> None:
        if worker.proc.poll() is None:
            worker.proc.kill()
        worker.proc.wait()
        for stream in (worker.proc.stdin, worker.proc.stdout):
            if stream is not None:
                stream.close()
        shutil.rmtree(worker.home, ignore_errors=True)

    def _after_job(self) -> None:
        """Count the job as done and, when no other job is running (none can start meanwhile: the lock is
        held), keep the Hub cache within ``max_cache_gb``."""
        with self._lock:
            self._running -= 1
            if self._running == 0:
                try:
                    prune_hub_cache(self.settings.hub_cache or DEFAULT_HUB_CACHE, self.settings.max_cache_gb * GB)
                except Exception:  # noqa: BLE001 - a cache that cannot be pruned must not fail the job
                    logger.exception("the Hub cache could not be pruned")

    def close(self) -> None:
        with self._lock:
            self._closed = True
            workers, self._ready = self._ready, []
        for worker in workers:
            self._discard(worker)

    def run(self, job: StiJob, job_dir: Path, on_event: Callable[[dict], None] | None = None) -> dict:
        """Run one job and return its result (``result.json`` of the worker).

        The worker sends one JSON line per progress event on its stdout (handed to ``on_event``). A worker
        that is killed or crashes raises :class:`WorkerDied`; one that runs past ``timeout_s`` is stopped.
        """
        job_dir.mkdir(parents=True, exist_ok=True)
        job_file = job_dir / "job.json"
        job_file.write_text(job_to_json(job))
        worker = self._take()
        proc = worker.proc
        timed_out: list = []
        timer = threading.Timer(self.settings.timeout_s, _kill, (proc, timed_out))
        timer.daemon = True
        timer.start()
        try:
            try:
                proc.stdin.write((str(job_file) + "\n").encode())
                proc.stdin.close()
            except OSError:
                pass  # it died before the job was handed over: reported below like any other death
            for raw in proc.stdout:
                try:
                    event = json.loads(raw)
                except ValueError:
                    continue
                if on_event is not None and isinstance(event, dict):
                    on_event(event)
            code = proc.wait()
        finally:
            timer.cancel()
            log = _log_tail(worker.home / "worker.log")
            self._discard(worker)
            self._after_job()
            if self.refill:
                threading.Thread(target=self._fill, daemon=True).start()
        if timed_out:
            raise SpaceError(f"the job ran longer than this server's limit of {self.settings.timeout_s:g} s "
                             "(HF_TSV_SPACE_TIMEOUT_S) and was stopped; try fewer or smaller models")
        result_file = job_dir / "result.json"
        if code != 0 or not result_file.is_file():
            how = (f"killed by {signal.Signals(-code).name}" if code < 0 and -code in signal.valid_signals()
                   else f"exit status {code}")
            logger.error("worker of a %s job stopped (%s); its log ends with:\n%s", job.kind, how, log)
            raise WorkerDied(f"the merge worker stopped unexpectedly (out of memory?) ({how}); the server is still "
                             "running: try fewer or smaller models, or a machine with more memory")
        result = json.loads(result_file.read_text())
        if not result.get("ok"):
            if result.get("internal"):
                logger.error("internal error in a %s job; the worker's log ends with:\n%s", job.kind, log)
            raise SpaceError(str(result.get("error") or "the job failed"))
        return result
