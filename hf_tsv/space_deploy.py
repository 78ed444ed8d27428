"""Deploying the hf-tsv Gradio Space (``spaces_app/``) to the Hub in one commit: ``hf-tsv space deploy``.

:func:`deploy_space` creates (or updates) a Space repository with the app files, a README whose YAML header
names the tested gradio, Python and hardware, and a ``requirements.txt`` that installs hf-tsv from a wheel built
from this checkout and shipped in the same commit (hf-tsv is not on PyPI). The operator's optional model library
and task spec go in the commit too, and the Space variables ``HF_TSV_MODEL_LIBRARY`` / ``HF_TSV_SPACE_TASKS``
point at them. The guarantees of :func:`hf_tsv.push_to_hub` hold: a repository that this call created is deleted
again when the commit fails, and the token appears in no file, log line or message.

Example:
    >>> import hf_tsv
    >>> url = hf_tsv.deploy_space("me/hf-tsv", hardware="cpu-upgrade", private=True)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from .errors import PushError
from .hub import PushResult, create_public_commit, create_repo_if_missing, full_repo_id, rollback_created_repo
from .secrets import describe_exception, known_secrets, public_text, resolve_token

logger = logging.getLogger(__name__)

CHECKOUT = Path(__file__).resolve().parent.parent
SPACE_APP = CHECKOUT / "spaces_app"
APP_FILES = ("app.py", "space_compare.py", "space_core.py", "space_worker.py")  # the Space's code, shipped as is
APP_FILE = "app.py"
WHEELS_DIR = "wheels"
LIBRARY_DIR = "model_library"
TASKS_NAME = "tasks"  # + the spec's own suffix (.json, .yaml, .yml)
TORCH_VERSION = "2.13.0"
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
PACKAGE_EXTRAS = "space,eval"
OAUTH_SCOPES = ("write-repos", "manage-repos")
# what the wheel is built from: copied to a temporary folder so the build writes nothing into the checkout
WHEEL_SOURCES = ("pyproject.toml", "README.md", "hf_tsv")


def space_hardware() -> tuple[str, ...]:
    """The Space hardware names huggingface_hub knows (``cpu-basic``, ``cpu-upgrade``, ``t4-small``, ...)."""
    from huggingface_hub import SpaceHardware

    return tuple(hardware.value for hardware in SpaceHardware)


def is_gpu(hardware: str) -> bool:
    """Whether ``hardware`` has a GPU (every Space hardware but the ``cpu-*`` ones)."""
    return not hardware.startswith("cpu")


def requirements_text(wheel_name: str, hardware: str, gradio_version: str) -> str:
    """The Space's ``requirements.txt``: torch first (from PyTorch's CPU index on CPU hardware, so pip does not
    pull the CUDA build), then hf-tsv with its Space and eval extras from the shipped wheel (relative path)."""
    torch_lines = ([f"--extra-index-url {TORCH_CPU_INDEX}"] if not is_gpu(hardware) else []) + [
        f"torch=={TORCH_VERSION}"]
    return "\n".join([
        f"# Written by `hf-tsv space deploy` for {hardware} hardware.",
        f"gradio[oauth]=={gradio_version}",
        *torch_lines,
        "# hf-tsv itself, built from the deploying checkout and shipped in this repository",
        f"./{WHEELS_DIR}/{wheel_name}[{PACKAGE_EXTRAS}]",
        "",
    ])


def space_readme(hardware: str, gradio_version: str) -> str:
    """spaces_app/README.md with its YAML header set for this deploy: sdk gradio at the installed (tested)
    version, the app file, this Python's minor version, OAuth with its scopes and the suggested hardware."""
    from huggingface_hub import RepoCard, SpaceCardData

    card = RepoCard((SPACE_APP / "README.md").read_text(encoding="utf-8"))
    data = card.data.to_dict()
    data.update(sdk="gradio", sdk_version=gradio_version, app_file=APP_FILE,
                python_version=f"{sys.version_info.major}.{sys.version_info.minor}", hf_oauth=True,
                hf_oauth_scopes=list(OAUTH_SCOPES), suggested_hardware=hardware)
    card.data = SpaceCardData(**data)
    return str(card)


def build_wheel(into: Path) -> Path:
    """A wheel of this checkout's hf-tsv, built offline (no dependencies, no isolated build environment) from a
    copy of its sources in a temporary folder, written to ``into``."""
    with tempfile.TemporaryDirectory(prefix="hf-tsv-wheel-") as tmp:
        source = Path(tmp) / "src"
        source.mkdir()
        for name in WHEEL_SOURCES:
            path = CHECKOUT / name
            if path.is_dir():
                shutil.copytree(path, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            else:
                shutil.copy2(path, source / name)
        command = [sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation",
                   "--no-index", "-q", "-w", str(into)]
        done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PIP_NO_INPUT": "1"})
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise PushError(f"could not build the hf-tsv wheel to ship in the Space (pip wheel: {public_text(last)})"
                            "; nothing was pushed")
    wheels = sorted(into.glob("hf_tsv-*.whl"))
    if len(wheels) != 1:
        raise PushError(f"building the hf-tsv wheel gave {len(wheels)} wheels, expected one; nothing was pushed")
    return wheels[0]


def _check_inputs(hardware: str, model_library: Path | None, tasks: Path | None) -> None:
    """Every bad input stops here, before anything is built or sent."""
    if not (SPACE_APP / APP_FILE).is_file():
        raise PushError(f"no spaces_app/{APP_FILE} beside the hf_tsv package: `hf-tsv space deploy` runs from a "
                        "source checkout of hf-tsv")
    known = space_hardware()
    if hardware not in known:
        raise PushError(f"--hardware {hardware!r} is not a Space hardware; use one of {', '.join(known)}")
    if model_library is not None:
        if not model_library.is_dir() or model_library.is_symlink():
            raise PushError(f"--model-library {model_library.name!r} is not a folder; give a folder whose "
                            "sub-folders are checkpoints")
        if not any(_library_models(model_library)):
            raise PushError(f"--model-library {model_library.name!r} has no checkpoint sub-folder (a folder "
                            "with config.json); give a folder whose sub-folders are checkpoints")
    if tasks is not None:
        if tasks.suffix not in (".json", ".yaml", ".yml"):
            raise PushError(f"--tasks {tasks.name!r} is not a task spec (.json, .yaml or .yml)")
        from .evaluation import load_tasks_spec

        try:
            load_tasks_spec(tasks)
        except Exception as exc:  # noqa: BLE001 - any reason the spec cannot be used is the operator's to fix
            raise PushError(f"--tasks {tasks.name!r} cannot be used: {exc}") from None


def _library_models(library: Path):
    """The checkpoint sub-folders of ``library`` (with a config.json; no hidden or linked entries)."""
    for path in sorted(library.iterdir()):
        if not path.name.startswith(".") and path.is_dir() and not path.is_symlink() \
                and (path / "config.json").is_file():
            yield path


def _library_files(library: Path) -> list[tuple[str, Path]]:
    """``(path in the Space, local file)`` for each regular file of each checkpoint sub-folder of ``library``
    (top level of the sub-folder; hidden files and links are left out, nothing outside is read)."""
    files = []
    for model in _library_models(library):
        for path in sorted(model.iterdir()):
            if not path.name.startswith(".") and path.is_file() and not path.is_symlink():
                files.append((f"{LIBRARY_DIR}/{model.name}/{path.name}", path))
    return files


def deploy_space(space_id: str, *, private: bool | None = None, hardware: str = "cpu-basic",
                 model_library: str | os.PathLike | None = None, tasks: str | os.PathLike | None = None,
                 token: str | None = None, commit_message: str | None = None) -> PushResult:
    """Create (or update) the Gradio Space ``space_id`` with the hf-tsv app, in one commit.

    The commit holds ``app.py`` and its modules, ``README.md`` (Space YAML for ``hardware``), a
    ``requirements.txt`` (torch pinned for ``hardware``; hf-tsv from ``wheels/``, a wheel of this checkout),
    and, when given, the checkpoints of ``model_library`` under ``model_library/`` and the task spec ``tasks``
    as ``tasks.<suffix>``; the Space variables ``HF_TSV_MODEL_LIBRARY`` and ``HF_TSV_SPACE_TASKS`` name them.
    A new Space is created with ``private`` and asks for ``hardware``; an existing one keeps its visibility and
    hardware (a warning says so) and gets its variables set after the commit. If the commit fails, a Space that
    this call created is deleted again. ``token`` defaults to ``HF_TOKEN`` or the stored login and never appears
    in any output. Bad input raises :class:`PushError` before anything is built or sent.

    Returns a :class:`PushResult`: the commit URL, with details.
    """
    import gradio
    from huggingface_hub import CommitOperationAdd, HfApi

    from . import __version__

    library = Path(model_library) if model_library is not None else None
    spec = Path(tasks) if tasks is not None else None
    token = resolve_token(token)
    secrets = known_secrets(token)
    _check_inputs(hardware, library, spec)
    api = HfApi(token=token)
    space_id = full_repo_id(api, space_id, secrets, what="Space")

    variables = {}
    with tempfile.TemporaryDirectory(prefix="hf-tsv-space-") as tmp:
        wheel = build_wheel(Path(tmp))
        contents: list[tuple[str, str | bytes]] = [(name, str(SPACE_APP / name)) for name in APP_FILES]
        contents += [("README.md", space_readme(hardware, gradio.__version__).encode()),
                     ("requirements.txt", requirements_text(wheel.name, hardware, gradio.__version__).encode()),
                     (f"{WHEELS_DIR}/{wheel.name}", str(wheel))]
        if library is not None:
            contents += [(name, str(path)) for name, path in _library_files(library)]
            variables["HF_TSV_MODEL_LIBRARY"] = LIBRARY_DIR
        if spec is not None:
            contents.append((TASKS_NAME + spec.suffix, str(spec)))
            variables["HF_TSV_SPACE_TASKS"] = TASKS_NAME + spec.suffix
        operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=content) for name, content in contents]
        names = sorted(name for name, _ in contents)
        logger.info("deploying %d files to the Space %s: %s", len(names), space_id, ", ".join(names))

        warnings: list[str] = []
        created = create_repo_if_missing(
            api, space_id, private=private, secrets=secrets, warnings=warnings, repo_type="space",
            space_sdk="gradio", space_hardware=hardware,
            space_variables=[{"key": key, "value": value} for key, value in variables.items()] or None)
        try:
            info = create_public_commit(api, space_id, operations,
                                        commit_message or f"Deploy the hf-tsv Space (hf-tsv {__version__})", secrets,
                                        repo_type="space")
        except BaseException as exc:
            cleanup = rollback_created_repo(api, space_id, created, secrets, repo_type="space")
            if not isinstance(exc, Exception):
                raise
            raise PushError(f"deploy to {space_id} failed: could not commit {len(operations)} files "
                            f"({describe_exception(exc, secrets)}); {cleanup}") from None

    if not created:
        warnings.append(f"the Space {space_id} already existed: its hardware was left as it is (suggested in its "
                        f"README: {hardware}; change it in the Space's settings)")
        for key, value in variables.items():
            try:
                api.add_space_variable(space_id, key, value)
            except Exception as exc:  # noqa: BLE001
                warnings.append(f"the files are committed but the Space variable {key}={value} could not be set "
                                f"({describe_exception(exc, secrets)}); set it in the Space's settings")
    logger.info("deployed %s", info.commit_url)
    return PushResult(info.commit_url, commit_url=info.commit_url, oid=info.oid, repo_id=space_id, revision="main",
                      created_repo=created, files=names, warnings=warnings)
