"""Publishing an hf-tsv output folder to the Hugging Face Hub in one commit.

:func:`push_to_hub` (re)writes the model card, creates the repository (and branch) when missing, and uploads
the weights, config, card, reports, STI heatmap and evaluation files with a single ``HfApi.create_commit``.
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
from pathlib import Path

from .card import (
    CARD_NAME,
    EVAL_NAME,
    HEATMAP_NAME,
    REPORT_NAME,
    STI_STATS_NAME,
    TSVC_INDEX_NAME,
    public_command,
    write_card,
)
from .errors import PushError
from .json_io import dumps_json

logger = logging.getLogger(__name__)

# Top-level files that are published; anything else in the folder stays local.
PUBLISHED_PATTERNS = (
    "*.safetensors", "*.safetensors.index.json", "config.json", CARD_NAME, REPORT_NAME, STI_STATS_NAME,
    HEATMAP_NAME, TSVC_INDEX_NAME, EVAL_NAME, "eval_*.json", "eval_*.csv", "eval_*.md", "eval_*.png",
)


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


def _secrets(token) -> list[str]:
    """Every token string this call could send: the explicit one and the one huggingface_hub would find."""
    found = [token] if isinstance(token, str) and token else []
    try:
        from huggingface_hub import get_token

        stored = get_token()
    except Exception:  # noqa: BLE001 - only used to scrub messages
        stored = None
    if stored:
        found.append(stored)
    return found


def _scrub(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, "***")
    return " ".join(text.split())  # one line, for the CLI


def _describe(exc: BaseException, secrets: list[str]) -> str:
    return _scrub(f"{type(exc).__name__}: {exc}", secrets)


def _raise(message: str, exc: BaseException, secrets: list[str]):
    text = f"{type(exc).__name__}: {exc!s} {exc!r}"
    if any(secret in text for secret in secrets):
        raise PushError(message) from None  # do not chain an exception that carries the token
    raise PushError(message) from exc


def publishable_files(folder: Path) -> list[Path]:
    """The files of ``folder`` that a push uploads (top level only), sorted by name."""
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and any(fnmatch.fnmatch(p.name, pattern) for pattern in PUBLISHED_PATTERNS))


def _public_json(path: Path) -> bytes:
    """``merge_report.json`` / ``tsv_c.json`` as published: the recorded command with local paths reduced to
    folder names, and no local path of the TSV-C base."""
    data = json.loads(path.read_text(encoding="utf-8"))
    if path.name == REPORT_NAME and isinstance(data.get("command"), str):
        hub_ids = {m.get("repo_id") for m in [data.get("base") or {}, *(data.get("models") or [])]
                   if isinstance(m, dict) and m.get("repo_id")}
        data["command"] = public_command(data["command"], hub_ids)
    if path.name == TSVC_INDEX_NAME and isinstance(data.get("base"), dict):
        data["base"].pop("path", None)
    return dumps_json(data, path.name).encode()


def _check_folder(folder: Path) -> None:
    if not folder.is_dir():
        raise PushError(f"{folder.name!r} is not a folder; push the output folder of `hf-tsv merge` "
                        "(or `compress`/`expand`)")
    if not (folder / "config.json").is_file() or not any(folder.glob("*.safetensors")):
        raise PushError(f"folder {folder.name!r} has no config.json and safetensors weights; push the output "
                        "folder of `hf-tsv merge` (or `compress`/`expand`)")


def _default_message(folder: Path) -> str:
    from . import __version__

    try:
        if (folder / TSVC_INDEX_NAME).is_file():
            index = json.loads((folder / TSVC_INDEX_NAME).read_text())
            return f"Upload TSV-C factors of {index.get('num_tasks')} tasks (hf-tsv {__version__})"
        report = json.loads((folder / REPORT_NAME).read_text())
        if report.get("method") == "tsv-c expand":
            return f"Upload a task rebuilt from TSV-C factors (hf-tsv {__version__})"
        return (f"Upload {report.get('method')} merge of {report.get('num_tasks')} models "
                f"(hf-tsv {__version__})")
    except (OSError, ValueError):
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
    so. ``token`` defaults to ``HF_TOKEN`` or the stored login; it never appears in any output.

    Returns a :class:`PushResult`: the commit URL (or the pull request URL), with details.
    """
    from huggingface_hub import CommitOperationAdd, HfApi
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError
    from huggingface_hub.utils import validate_repo_id

    folder = Path(folder)
    secrets = _secrets(token)
    _check_folder(folder)
    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        raise PushError(f"{repo_id!r} is not a valid repository id (expected 'namespace/name'): "
                        f"{_describe(exc, secrets)}") from None
    if revision is not None and not revision.strip():
        raise PushError("--revision must name a branch")
    api = HfApi(token=token)
    if "/" not in repo_id:
        try:
            repo_id = f"{api.whoami()['name']}/{repo_id}"
        except Exception as exc:  # noqa: BLE001
            _raise(f"cannot tell the namespace for {repo_id!r} (log in, or write namespace/name): "
                   f"{_describe(exc, secrets)}", exc, secrets)

    card = write_card(folder, repo_id=repo_id, license=license, token=token)
    warnings = list(card.warnings)
    files = publishable_files(folder)
    operations = [CommitOperationAdd(path_in_repo=p.name,
                                     path_or_fileobj=_public_json(p) if p.name in (REPORT_NAME, TSVC_INDEX_NAME)
                                     else str(p))
                  for p in files]
    names = [p.name for p in files]
    logger.info("pushing %d files to %s: %s", len(names), repo_id, ", ".join(names))

    created = False
    try:
        # Whether THIS call creates the repository decides what a failed commit cleans up: ask first, then
        # create without exist_ok, so that a repository that appeared in between (409) is never taken for ours.
        if not api.repo_exists(repo_id):
            try:
                api.create_repo(repo_id, private=private)
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
        _raise(f"push to {repo_id} failed: could not create or access the repository ({_describe(exc, secrets)})"
               f"{hint}; nothing was pushed", exc, secrets)
    if created:
        logger.info("created the %s repository %s", "private" if private else "public", repo_id)

    step = "create the branch"
    try:
        if revision and revision != "main":
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        step = f"commit {len(operations)} files"
        info = api.create_commit(repo_id, operations, commit_message=commit_message or _default_message(folder),
                                 commit_description=commit_description, revision=revision, create_pr=create_pr)
    except BaseException as exc:
        cleanup = _cleanup(api, repo_id, created, secrets)
        if not isinstance(exc, Exception):
            raise
        _raise(f"push to {repo_id} failed: could not {step} ({_describe(exc, secrets)}); {cleanup}", exc, secrets)

    # huggingface_hub drops files whose content is already there and makes no commit when none is left
    unchanged = all(getattr(op, "_remote_oid", None) is not None and op._remote_oid == op._local_oid
                    for op in operations)
    if unchanged:
        warnings.append(f"every file is already on {revision or 'main'} of {repo_id} as it is here: no commit "
                        f"{'and no pull request ' if create_pr else ''}was made")
    url = info.pr_url or info.commit_url
    logger.info("pushed %s", url)
    return PushResult(url, commit_url=info.commit_url, pr_url=info.pr_url, oid=info.oid, repo_id=repo_id,
                      revision=info.pr_revision or revision or "main", created_repo=created, files=names,
                      warnings=warnings, unchanged=unchanged)


def _cleanup(api, repo_id: str, created: bool, secrets: list[str]) -> str:
    """Delete the repository if this call created it; a sentence saying what is left on the Hub."""
    if not created:
        return f"the repository {repo_id} existed before this push and was left unchanged"
    try:
        api.delete_repo(repo_id, missing_ok=True)
    except Exception as exc:  # noqa: BLE001
        return (f"the repository {repo_id}, created by this push, could not be removed "
                f"({_describe(exc, secrets)}); delete it by hand")
    logger.info("deleted %s, which this failed push had created", repo_id)
    return f"the repository {repo_id}, created by this push, was removed"
