"""Publishing an hf-tsv output folder to the Hugging Face Hub in one commit.

:func:`push_to_hub` (re)writes the model card, creates the repository (and branch) when missing, and uploads
exactly the files of :data:`PUBLISHED_FILES` (weights, config, card, reports, STI heatmap and evaluation files;
every JSON and text file scrubbed of secrets and local paths) with a single ``HfApi.create_commit``.
If that commit fails, a repository that this call created is deleted again. The token is never written to the
card, the reports, a log line or an exception message.

Example:
    >>> import hf_tsv
    >>> url = hf_tsv.push_to_hub("merged", "me/clip-tsv-merged", private=True)  # doctest: +SKIP
    >>> print(url)  # doctest: +SKIP
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from .card import write_card
from .errors import HFTSVError, PushError
from .files import (
    ADAPTER_CONFIG_NAME,
    ADAPTER_FILES,
    CARD_NAME,
    COMPARE_JSON_NAME,
    COMPARE_TABLE_NAME,
    EVAL_RESULTS_NAME,
    HEATMAP_NAME,
    REPORT_NAME,
    SIDE_FILES,
    SIDE_FOLDERS,
    STI_STATS_NAME,
    TSVC_INDEX_NAME,
)
from .json_io import dumps_json
from .secrets import (
    describe_exception,
    known_secrets,
    public_json,
    public_text,
    redact,
    resolve_token,
    safe_cause,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PublishedGroup:
    """Files that a push uploads (top-level names matching ``patterns``) and what they are, for docs/hub.md."""

    patterns: tuple[str, ...]
    what: str


# Exactly what a push uploads: docs/hub.md's table "What a pushed repository contains" is rendered from this
# (:func:`published_files_table`); every other file of the folder stays local, with a warning.
PUBLISHED_FILES = (
    PublishedGroup(("model.safetensors", "model-*-of-*.safetensors", "model.safetensors.index.json", "config.json"),
                   'the merged model; `CLIPVisionModel.from_pretrained("me/clip-tsv-merged")` loads it'),
    PublishedGroup((CARD_NAME,), "the model card (below)"),
    PublishedGroup((REPORT_NAME,), "method, α, every input with its revision or fingerprint, options, per-key STI, "
                   "timings, device, dtypes, library versions, command"),
    PublishedGroup((STI_STATS_NAME, HEATMAP_NAME), 'TSV-M merges: `{"k", "keys", "total"}` and the STI heatmap '
                   "(layers × layer types)"),
    PublishedGroup((EVAL_RESULTS_NAME, "eval_*.json", "eval_*.csv", "eval_*.md", "eval_*.png"),
                   "evaluation results, when present in the folder"),
    PublishedGroup((COMPARE_JSON_NAME, COMPARE_TABLE_NAME, "compare_*.png"),
                   "`hf-tsv compare --keep-best`: every method's scores side by side, when present in the folder"),
    PublishedGroup((TSVC_INDEX_NAME, "tsv_c.safetensors", "tsv_c-*-of-*.safetensors", "tsv_c.safetensors.index.json"),
                   "TSV-C folders (`hf-tsv compress`) instead of the weights and merge report"),
    PublishedGroup(SIDE_FILES, "the base's tokenizer and sentence-transformers files, which a merge keeps (BERT, "
                   "decoder LLMs)"),
    PublishedGroup(ADAPTER_FILES, "a merge written as one LoRA adapter (`--output-format peft`) instead of the "
                   "weights and config; `PeftModel.from_pretrained(base, ...)` loads it"),
)
PUBLISHED_PATTERNS = tuple(pattern for group in PUBLISHED_FILES for pattern in group.patterns)
WEIGHT_PATTERNS = tuple(pattern for pattern in PUBLISHED_PATTERNS if pattern.endswith(".safetensors"))
TEXT_SUFFIXES = (".md", ".csv")


def published_files_table() -> str:
    """The Markdown table of what a push uploads, as docs/hub.md shows it."""
    rows = ["| file | what |", "|---|---|"]
    rows += [f"| {', '.join(f'`{p}`' for p in group.patterns)} | {group.what} |" for group in PUBLISHED_FILES]
    return "\n".join(rows)


def _matches(name: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


class PushResult(str):
    """The URL of the pushed commit, or of the pull request with ``create_pr=True`` (a ``str``), with details.

    Attributes: ``url``, ``commit_url``, ``pr_url``, ``oid``, ``repo_id``, ``revision``, ``created_repo`` (this
    call created the repository), ``files`` (the published paths; huggingface_hub leaves files that are already
    on the branch unchanged out of the commit), ``unchanged`` (every file was already there, so no commit was
    made) and ``warnings``.
    """

    def __new__(cls, url: str, **details):
        obj = super().__new__(cls, url)
        obj.url = url
        obj.commit_url = details.get("commit_url", url)
        obj.pr_url = details.get("pr_url")
        obj.oid = details.get("oid")
        obj.repo_id = details.get("repo_id")
        obj.revision = details.get("revision")
        obj.created_repo = details.get("created_repo", False)
        obj.files = tuple(details.get("files", ()))
        obj.warnings = tuple(details.get("warnings", ()))
        obj.unchanged = details.get("unchanged", False)
        return obj

    def __reduce__(self):
        return (_rebuild_push_result, (str(self), dict(self.__dict__)))


def _rebuild_push_result(url: str, details: dict) -> PushResult:
    details = {k: v for k, v in details.items() if k != "url"}
    return PushResult(url, **details)


def _raise(message: str, exc: BaseException, secrets: list[str]):
    raise PushError(message) from safe_cause(exc, secrets)  # no chained exception that carries the token


def publishable_files(folder: Path, prefix: str = "") -> tuple[list[Path], list[str]]:
    """The files of ``folder`` that a push uploads (top level or in a side folder such as ``1_Pooling``, named in
    :data:`PUBLISHED_FILES`, not symbolic links), sorted by name, and what it leaves out (hidden entries are left
    out without a word). ``prefix``: the side folder's name and ``/``, when listing one."""
    files, skipped = [], []
    for path in sorted(folder.iterdir()):
        name = prefix + path.name
        if path.name.startswith("."):
            continue
        if path.is_symlink():
            skipped.append(f"{name} (a symbolic link)")
        elif path.is_file() and _matches(name, PUBLISHED_PATTERNS):
            files.append(path)
        elif path.is_dir() and not prefix and path.name in SIDE_FOLDERS:
            inner, inner_skipped = publishable_files(path, f"{path.name}/")
            files += inner
            skipped += inner_skipped
        else:
            skipped.append(name + ("/" if path.is_dir() else ""))
    return files, skipped


def _repo_path(folder: Path, path: Path) -> str:
    """A published file's path in the repository (``1_Pooling/config.json``)."""
    return path.relative_to(folder).as_posix()


def _public_content(path: Path) -> str | bytes:
    """What is uploaded for ``path``: its own bytes (as a path) when nothing in it needs scrubbing, else the
    published copy. Every JSON file has every string through :func:`hf_tsv.secrets.public_json` (no secret, no
    local path; the pushed ``tsv_c.json`` also drops the base's local path) and every text file goes through
    :func:`hf_tsv.secrets.public_text`; weights and images go as they are."""
    if path.suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise PushError(f"{path.name} in {path.parent.name!r} is not valid JSON ({exc.__class__.__name__}); "
                            "fix or remove it before pushing") from None
        published = public_json(data)
        if path.name == TSVC_INDEX_NAME and isinstance(published, dict) and isinstance(published.get("base"), dict):
            published["base"].pop("path", None)
        return str(path) if published == data else dumps_json(published, path.name).encode()
    if path.suffix in TEXT_SUFFIXES:
        text = path.read_text(encoding="utf-8", errors="replace")
        published = public_text(text)
        return str(path) if published == text else published.encode()
    return str(path)


def _check_folder(folder: Path) -> None:
    if not folder.is_dir():
        raise PushError(f"{folder.name!r} is not a folder; push the output folder of `hf-tsv merge` "
                        "(or `compress`/`expand`)")
    weights = [p for p in folder.iterdir() if p.is_file() and not p.is_symlink() and _matches(p.name, WEIGHT_PATTERNS)]
    config = (folder / "config.json").is_file() or (folder / ADAPTER_CONFIG_NAME).is_file()  # a model, an adapter
    if not config or not weights:
        raise PushError(f"folder {folder.name!r} has no config.json and safetensors weights; push the output "
                        "folder of `hf-tsv merge` (or `compress`/`expand`)")


def _default_message(folder: Path) -> str:
    from . import __version__
    from .report import MergeReport

    try:
        if (folder / TSVC_INDEX_NAME).is_file():
            index = json.loads((folder / TSVC_INDEX_NAME).read_text())
            return f"Upload TSV-C factors of {index.get('num_tasks')} tasks (hf-tsv {__version__})"
        report = MergeReport.load(folder)
        if report.is_expand:
            return f"Upload a task rebuilt from TSV-C factors (hf-tsv {__version__})"
        return f"Upload {report.method} merge of {report.num_tasks} models (hf-tsv {__version__})"
    except (OSError, ValueError, HFTSVError):
        return f"Upload with hf-tsv {__version__}"


def push_to_hub(folder: str | os.PathLike, repo_id: str, *, private: bool | None = None,
                revision: str | None = None, create_pr: bool = False, commit_message: str | None = None,
                commit_description: str | None = None, token: str | None = None,
                license: str | None = None) -> PushResult:
    """Publish an hf-tsv output folder to the Hub repository ``repo_id`` in one commit.

    The model card is (re)generated first (``README.md``, ``sti_heatmap.png``, ``sti_stats.json``). The
    repository is created when missing (``private`` sets its visibility; an existing repository keeps
    its own); ``revision`` names the branch to commit to, created from ``main`` when missing; with
    ``create_pr`` the commit is opened as a pull request (against ``revision`` or ``main``). Weights,
    config, card, ``merge_report.json`` (or ``tsv_c.json``), STI files and evaluation files go in a single
    commit. If the commit fails, a repository created by this call is deleted and :class:`PushError` says
    so. ``token`` defaults to ``HF_TOKEN`` or the stored login; surrounding whitespace is stripped and it never
    appears in any output. Exactly the files of :data:`PUBLISHED_FILES` are uploaded (any other file of the folder
    is left out, with a warning), and every JSON and text file with its secrets and local paths scrubbed.

    Returns a :class:`PushResult`: the commit URL (or the pull request URL), with details.
    """
    from huggingface_hub import CommitOperationAdd, HfApi

    folder = Path(folder)
    token = resolve_token(token)
    secrets = known_secrets(token)
    _check_folder(folder)
    if revision is not None and not revision.strip():
        raise PushError("--revision must name a branch")
    api = HfApi(token=token)
    repo_id = full_repo_id(api, repo_id, secrets)

    card = write_card(folder, repo_id=repo_id, license=license, token=token)
    warnings = list(card.warnings)
    files, skipped = publishable_files(folder)
    operations = [CommitOperationAdd(path_in_repo=_repo_path(folder, p), path_or_fileobj=_public_content(p))
                  for p in files]
    names = [_repo_path(folder, p) for p in files]
    logger.info("pushing %d files to %s: %s", len(names), repo_id, ", ".join(names))
    left_out = (f"not published (a push uploads only the files listed in hf-tsv's docs/hub.md, 'What a pushed "
                f"repository contains'): {', '.join(skipped)}" if skipped else None)
    if left_out:
        logger.warning("%s", left_out)

    created = create_repo_if_missing(api, repo_id, private=private, secrets=secrets, warnings=warnings)

    step = "create the branch"
    try:
        if revision and revision != "main":
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        step = f"commit {len(operations)} files"
        info = create_public_commit(api, repo_id, operations, commit_message or _default_message(folder), secrets,
                                    commit_description=commit_description, revision=revision, create_pr=create_pr)
    except BaseException as exc:
        cleanup = rollback_created_repo(api, repo_id, created, secrets)
        if not isinstance(exc, Exception):
            raise
        _raise(f"push to {repo_id} failed: could not {step} ({describe_exception(exc, secrets)}); {cleanup}", exc,
               secrets)

    # huggingface_hub drops files whose content is already there and makes no commit when none is left
    unchanged = all(getattr(op, "_remote_oid", None) is not None and op._remote_oid == op._local_oid
                    for op in operations)
    if unchanged:
        warnings.append(f"every file is already on {revision or 'main'} of {repo_id} as it is here: no commit "
                        f"{'and no pull request ' if create_pr else ''}was made")
    if left_out:
        warnings.append(left_out)
    url = info.pr_url or info.commit_url
    logger.info("pushed %s", url)
    return PushResult(url, commit_url=info.commit_url, pr_url=info.pr_url, oid=info.oid, repo_id=repo_id,
                      revision=info.pr_revision or revision or "main", created_repo=created, files=names,
                      warnings=warnings, unchanged=unchanged)


def create_public_commit(api, repo_id: str, operations: list, commit_message: str, secrets: list[str], *,
                         commit_description: str | None = None, **options):
    """``api.create_commit`` with the commit message and description redacted (:func:`hf_tsv.secrets.redact`):
    they are typed by the user and kept on the Hub (a pull request's title too), so a token in them (the one
    given, ``HF_TOKEN``, the stored login, or anything shaped like a token) is committed as ``***``. Every hf-tsv
    commit goes through here; ``options`` go to ``create_commit`` as they are.

    Example:
        >>> create_public_commit(api, "me/m", ops, "merged with hf_AbCdEf...", secrets)  # doctest: +SKIP
        CommitInfo(...)  # committed as "merged with ***"
    """
    description = redact(commit_description, secrets) if commit_description else commit_description
    return api.create_commit(repo_id, operations, commit_message=redact(commit_message, secrets),
                             commit_description=description, **options)


def full_repo_id(api, repo_id: str, secrets: list[str], what: str = "repository") -> str:
    """``repo_id`` checked (:class:`PushError` when it is not a valid Hub id) and as ``namespace/name`` (a bare
    name gets the namespace of the token's user)."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        raise PushError(f"{repo_id!r} is not a valid {what} id (expected 'namespace/name'): "
                        f"{describe_exception(exc, secrets)}") from None
    if "/" in repo_id:
        return repo_id
    try:
        return f"{api.whoami()['name']}/{repo_id}"
    except Exception as exc:  # noqa: BLE001
        _raise(f"cannot tell the namespace for {repo_id!r} (log in, or write namespace/name): "
               f"{describe_exception(exc, secrets)}", exc, secrets)


def create_repo_if_missing(api, repo_id: str, *, private: bool | None, secrets: list[str], warnings: list[str],
                           repo_type: str | None = None, **create_options) -> bool:
    """Create ``repo_id`` (of ``repo_type``; ``create_options`` go to ``HfApi.create_repo``) when it is missing;
    whether THIS call created it (which decides what :func:`rollback_created_repo` removes after a failed commit).

    An existing repository keeps its visibility (a warning says so when ``private`` was given). Raises
    :class:`PushError` (no token in it) when the repository can be neither created nor accessed.
    """
    from huggingface_hub.errors import HfHubHTTPError

    created = False
    try:
        # Ask first, then create without exist_ok, so that a repository that appeared in between (409) is never
        # taken for ours.
        if not api.repo_exists(repo_id, repo_type=repo_type):
            try:
                api.create_repo(repo_id, private=private, repo_type=repo_type, **create_options)
                created = True
            except HfHubHTTPError as exc:
                if exc.response is None or exc.response.status_code != 409:
                    raise
        if not created and private is not None:
            warnings.append(f"{repo_id} already exists; its visibility was left as it is")
    except Exception as exc:  # noqa: BLE001
        status = getattr(getattr(exc, "response", None), "status_code", None)
        hint = ("; log in (`hf auth login`), set HF_TOKEN or pass --token with write access to its namespace"
                if status in (401, 403) else "")
        _raise(f"push to {repo_id} failed: could not create or access the repository "
               f"({describe_exception(exc, secrets)}){hint}; nothing was pushed", exc, secrets)
    if created:
        logger.info("created the %s repository %s", "private" if private else "public", repo_id)
    return created


def rollback_created_repo(api, repo_id: str, created: bool, secrets: list[str], repo_type: str | None = None) -> str:
    """Delete the repository if this call created it; a sentence saying what is left on the Hub."""
    if not created:
        return f"the repository {repo_id} existed before this push and was left unchanged"
    try:
        api.delete_repo(repo_id, missing_ok=True, repo_type=repo_type)
    except Exception as exc:  # noqa: BLE001
        return (f"the repository {repo_id}, created by this push, could not be removed "
                f"({describe_exception(exc, secrets)}); delete it by hand")
    logger.info("deleted %s, which this failed push had created", repo_id)
    return f"the repository {repo_id}, created by this push, was removed"
