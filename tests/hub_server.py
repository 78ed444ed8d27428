"""A small, dependency-free Hugging Face Hub server for tests.

It implements the part of the Hub HTTP API that ``huggingface_hub`` (2.x) and ``transformers`` (5.x) use to
create / delete repos, upload files in commits (plain, on a branch, or as a pull request) and download them
again.  It binds to ``127.0.0.1`` on an ephemeral port and stores every repo on disk under a root folder:

    <root>/<type>s/<namespace>/<name>/repo.json             visibility, creation date and refs
    <root>/<type>s/<namespace>/<name>/commits/<oid>.json    one snapshot (path -> blob) per commit
    <root>/<type>s/<namespace>/<name>/blobs/<oid>           file contents, named by their git blob sha1

Every file is answered with the "regular" upload mode (base64 content inside the commit payload), so neither
git-LFS nor Xet storage is involved on either side.

Typical use (see ``running_hub``)::

    with running_hub(tmp_path) as hub:
        HfApi().create_repo("me/model", private=True)   # goes to hub.endpoint, with hub.token
        ...
        assert hub.repos["me/model"].commits[-1].files == ("config.json",)

Tokens: the server knows its own fake token (``HubServer.token``) and compares the ``Authorization`` header
against it; it never keeps, records or logs any header value.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import secrets
import shutil
import socketserver
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from unittest import mock
from urllib.parse import parse_qs, unquote, urlsplit

logger = logging.getLogger(__name__)

DEFAULT_USERNAME = "hf-tsv-tester"
DEFAULT_BRANCH = "main"
MAX_BODY_BYTES = 512 * 1024 * 1024
MAX_RECORDS = 100_000
INITIAL_GITATTRIBUTES = (
    "*.bin filter=lfs diff=lfs merge=lfs -text\n"
    "*.pt filter=lfs diff=lfs merge=lfs -text\n"
    "*.safetensors filter=lfs diff=lfs merge=lfs -text\n"
    "*.onnx filter=lfs diff=lfs merge=lfs -text\n"
    "*.zip filter=lfs diff=lfs merge=lfs -text\n"
)
REPO_TYPE_PREFIXES = {"models": "model", "datasets": "dataset", "spaces": "space"}
_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())


def git_blob_oid(content: bytes) -> str:
    """The git object id of a blob (what ``git hash-object`` prints)."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


class HubError(Exception):
    """An error answered to the client: HTTP status, message and optional ``X-Error-Code``."""

    def __init__(self, status: int, message: str, code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.headers = headers or {}


# --------------------------------------------------------------------------------------------------------------
# Records exposed to tests (immutable snapshots)
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RequestRecord:
    """One request as the server saw it. Headers are deliberately not kept (they carry the token)."""

    method: str
    path: str  # percent-decoded, without the query string
    query: dict[str, list[str]]
    status: int
    authenticated: bool  # a valid token was sent; the token itself is never stored


@dataclass(frozen=True)
class CommitRecord:
    """One commit made through the commit endpoint."""

    oid: str
    parent: str
    revision: str  # the ref the commit landed on: "main", "dev", "refs/pr/1", ...
    requested_revision: str  # the revision in the URL ("main" for a create_pr=1 commit on main)
    files: tuple[str, ...]  # paths added or overwritten by this commit
    deleted: tuple[str, ...]  # paths removed by this commit
    snapshot: tuple[str, ...]  # every path present after this commit
    message: str
    description: str
    is_pr: bool
    pr_num: int | None
    private: bool  # visibility of the repo when the commit was made
    created_at: str


@dataclass(frozen=True)
class DiscussionRecord:
    num: int
    title: str
    is_pull_request: bool
    status: str
    base_ref: str  # e.g. "refs/heads/main"
    git_ref: str | None  # e.g. "refs/pr/1"


@dataclass(frozen=True)
class RepoRecord:
    repo_id: str
    repo_type: str
    private: bool
    refs: dict[str, str]  # "main" / "dev" / "refs/pr/1" -> commit oid
    commits: tuple[CommitRecord, ...]  # client commits only (not the initial .gitattributes commit)
    discussions: tuple[DiscussionRecord, ...]


# --------------------------------------------------------------------------------------------------------------
# Storage
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FileEntry:
    oid: str  # git blob sha1
    size: int
    sha256: str


@dataclass
class _Repo:
    repo_type: str
    repo_id: str
    private: bool
    created_at: str
    folder: Path
    refs: dict[str, str] = field(default_factory=dict)  # full ref name -> commit oid
    trees: dict[str, dict[str, FileEntry]] = field(default_factory=dict)  # commit oid -> snapshot
    commit_dates: dict[str, str] = field(default_factory=dict)
    commits: list[CommitRecord] = field(default_factory=list)
    discussions: dict[int, DiscussionRecord] = field(default_factory=dict)


def _branch_ref(name: str) -> str:
    return name if name.startswith("refs/") else f"refs/heads/{name}"


def _short_ref(ref: str) -> str:
    return ref[len("refs/heads/") :] if ref.startswith("refs/heads/") else ref


def _check_path_in_repo(path: str) -> str:
    if not path or path.startswith("/") or any(part in ("", ".", "..") for part in path.split("/")):
        raise HubError(400, f"Invalid path in repo: {path!r}")
    return path


class HubStorage:
    """Repos, refs, commits and blobs. Every public method is atomic (one lock)."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._repos: dict[tuple[str, str], _Repo] = {}
        self._lock = threading.RLock()
        self._seq = 0

    # -- repos --------------------------------------------------------------------------------------------------

    def create_repo(self, repo_type: str, repo_id: str, private: bool) -> _Repo:
        with self._lock:
            if (repo_type, repo_id) in self._repos:
                raise HubError(409, f"You already created this {repo_type} repo: {repo_id}")
            folder = self.root / f"{repo_type}s" / repo_id
            if folder.exists():  # left over by a deleted repo of the same name
                shutil.rmtree(folder)
            (folder / "blobs").mkdir(parents=True)
            (folder / "commits").mkdir()
            repo = _Repo(repo_type, repo_id, private, _now(), folder)
            self._repos[(repo_type, repo_id)] = repo
            initial = {".gitattributes": self._store_blob(repo, INITIAL_GITATTRIBUTES.encode())}
            oid = self._write_commit(repo, parent=None, tree=initial, message="initial commit", description="")
            repo.refs[_branch_ref(DEFAULT_BRANCH)] = oid
            self._write_repo_json(repo)
            return repo

    def delete_repo(self, repo_type: str, repo_id: str) -> None:
        with self._lock:
            repo = self._repos.pop((repo_type, repo_id), None)
            if repo is None:
                raise HubError(404, f"Repository not found: {repo_id}", code="RepoNotFound")
            shutil.rmtree(repo.folder, ignore_errors=True)

    def get_repo(self, repo_type: str, repo_id: str) -> _Repo | None:
        with self._lock:
            return self._repos.get((repo_type, repo_id))

    def snapshot(self) -> dict[str, RepoRecord]:
        with self._lock:
            records = {}
            for (repo_type, repo_id), repo in self._repos.items():
                key = repo_id if repo_type == "model" else f"{repo_type}s/{repo_id}"
                records[key] = RepoRecord(
                    repo_id=repo_id,
                    repo_type=repo_type,
                    private=repo.private,
                    refs={_short_ref(ref): oid for ref, oid in repo.refs.items()},
                    commits=tuple(repo.commits),
                    discussions=tuple(repo.discussions[num] for num in sorted(repo.discussions)),
                )
            return records

    # -- reading ------------------------------------------------------------------------------------------------

    def resolve(self, repo: _Repo, revision: str) -> str:
        """Commit oid of a branch name, full ref ("refs/pr/1"), or (short) commit oid."""
        with self._lock:
            for candidate in (revision, _branch_ref(revision)):
                if candidate in repo.refs:
                    return repo.refs[candidate]
            if len(revision) >= 7 and all(c in "0123456789abcdef" for c in revision):
                matches = [oid for oid in repo.trees if oid.startswith(revision)]
                if len(matches) == 1:
                    return matches[0]
            raise HubError(404, f"Invalid rev id: {revision}", code="RevisionNotFound")

    def tree(self, repo: _Repo, commit_oid: str) -> dict[str, FileEntry]:
        with self._lock:
            return dict(repo.trees[commit_oid])

    def refs(self, repo: _Repo) -> dict[str, str]:
        with self._lock:
            return dict(repo.refs)

    def discussion(self, repo: _Repo, num: int) -> DiscussionRecord | None:
        with self._lock:
            return repo.discussions.get(num)

    def commit_date(self, repo: _Repo, commit_oid: str) -> str:
        with self._lock:
            return repo.commit_dates[commit_oid]

    def read_blob(self, repo: _Repo, oid: str) -> bytes:
        return (repo.folder / "blobs" / oid).read_bytes()

    # -- writing ------------------------------------------------------------------------------------------------

    def create_branch(self, repo: _Repo, branch: str, starting_point: str | None) -> None:
        with self._lock:
            ref = _branch_ref(branch)
            if ref in repo.refs:
                raise HubError(409, f"Reference already exists: {ref}")
            repo.refs[ref] = self.resolve(repo, starting_point or DEFAULT_BRANCH)
            self._write_repo_json(repo)

    def delete_branch(self, repo: _Repo, branch: str) -> None:
        with self._lock:
            ref = _branch_ref(branch)
            if ref not in repo.refs:
                raise HubError(404, f"Invalid rev id: {branch}", code="RevisionNotFound")
            if ref == _branch_ref(DEFAULT_BRANCH):
                raise HubError(403, f"Cannot delete the default branch {branch}")
            del repo.refs[ref]
            self._write_repo_json(repo)

    def create_discussion(self, repo: _Repo, title: str, is_pr: bool, base: str, status: str) -> DiscussionRecord:
        with self._lock:
            base_ref = _branch_ref(base)
            if is_pr and base_ref not in repo.refs:
                raise HubError(404, f"Invalid rev id: {base}", code="RevisionNotFound")
            num = max(repo.discussions, default=0) + 1
            git_ref = f"refs/pr/{num}" if is_pr else None
            record = DiscussionRecord(num, title, is_pr, status, base_ref, git_ref)
            repo.discussions[num] = record
            if git_ref is not None:
                repo.refs[git_ref] = repo.refs[base_ref]
            self._write_repo_json(repo)
            return record

    def commit(
        self,
        repo: _Repo,
        *,
        revision: str,
        create_pr: bool,
        header: dict[str, Any],
        operations: list[tuple[str, dict[str, Any]]],
    ) -> tuple[CommitRecord, DiscussionRecord | None]:
        """Apply a parsed NDJSON commit payload atomically; returns the commit and the PR it opened, if any."""
        with self._lock:
            message = str(header.get("summary") or "")
            if not message:
                raise HubError(400, "Commit summary (message) must not be empty")
            description = str(header.get("description") or "")
            parent_commit = header.get("parentCommit")
            target_ref = _branch_ref(revision)
            if target_ref not in repo.refs:
                raise HubError(404, f"Invalid rev id: {revision}", code="RevisionNotFound")
            if parent_commit and not create_pr and not repo.refs[target_ref].startswith(parent_commit):
                raise HubError(412, "A commit has happened since. Please refresh and try again.")

            # Build the new snapshot first: nothing is changed if any operation is invalid.
            start = self.resolve(repo, parent_commit) if parent_commit and create_pr else repo.refs[target_ref]
            tree = dict(repo.trees[start])
            added: list[str] = []
            deleted: list[str] = []
            for key, value in operations:
                raw_path = str(value.get("path", ""))
                path = _check_path_in_repo(raw_path.rstrip("/") if key == "deletedFolder" else raw_path)
                if key == "file":
                    content = value.get("content", "")
                    data = base64.b64decode(content) if value.get("encoding") == "base64" else content.encode()
                    tree[path] = self._store_blob(repo, data)
                    added.append(path)
                elif key == "deletedFile":
                    if tree.pop(path, None) is None:
                        raise HubError(404, f"File not found in repo: {path}", code="EntryNotFound")
                    deleted.append(path)
                elif key == "deletedFolder":
                    removed = [p for p in tree if p.startswith(path + "/")]
                    if not removed:
                        raise HubError(404, f"Folder not found in repo: {path}", code="EntryNotFound")
                    for p in removed:
                        del tree[p]
                    deleted.extend(removed)
                elif key == "lfsFile":
                    entry = self._find_blob_by_sha256(repo, str(value.get("oid", "")))
                    if entry is None:
                        raise HubError(422, f"LFS object {value.get('oid')} for {path} was never uploaded")
                    tree[path] = entry
                    added.append(path)
                else:
                    raise HubError(400, f"Unknown commit operation: {key!r}")

            pull_request = None
            if create_pr:
                pull_request = self.create_discussion(repo, message, True, revision, status="open")
                target_ref = pull_request.git_ref
                repo.refs[target_ref] = start
            parent = repo.refs[target_ref]
            oid = self._write_commit(repo, parent=parent, tree=tree, message=message, description=description)
            repo.refs[target_ref] = oid
            self._write_repo_json(repo)
            record = CommitRecord(
                oid=oid,
                parent=parent,
                revision=_short_ref(target_ref),
                requested_revision=revision,
                files=tuple(added),
                deleted=tuple(deleted),
                snapshot=tuple(sorted(tree)),
                message=message,
                description=description,
                is_pr=target_ref.startswith("refs/pr/"),
                pr_num=int(target_ref.rsplit("/", 1)[1]) if target_ref.startswith("refs/pr/") else None,
                private=repo.private,
                created_at=repo.commit_dates[oid],
            )
            repo.commits.append(record)
            return record, pull_request

    # -- internals ----------------------------------------------------------------------------------------------

    def _store_blob(self, repo: _Repo, data: bytes) -> FileEntry:
        oid = git_blob_oid(data)
        path = repo.folder / "blobs" / oid
        if not path.exists():
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(data)
            tmp.replace(path)
        return FileEntry(oid=oid, size=len(data), sha256=hashlib.sha256(data).hexdigest())

    def _find_blob_by_sha256(self, repo: _Repo, sha256: str) -> FileEntry | None:
        for tree in repo.trees.values():
            for entry in tree.values():
                if entry.sha256 == sha256:
                    return entry
        return None

    def _write_commit(self, repo: _Repo, *, parent: str | None, tree: dict, message: str, description: str) -> str:
        self._seq += 1
        manifest = {
            "parents": [parent] if parent else [],
            "message": message,
            "description": description,
            "createdAt": _now(),
            "files": {path: vars(entry) for path, entry in sorted(tree.items())},
        }
        identity = json.dumps({**manifest, "seq": self._seq, "repo": repo.repo_id}, sort_keys=True)
        oid = hashlib.sha1(b"commit " + identity.encode()).hexdigest()
        (repo.folder / "commits" / f"{oid}.json").write_text(json.dumps({"oid": oid, **manifest}, indent=1))
        repo.trees[oid] = dict(tree)
        repo.commit_dates[oid] = manifest["createdAt"]
        return oid

    def _write_repo_json(self, repo: _Repo) -> None:
        info = {"id": repo.repo_id, "type": repo.repo_type, "private": repo.private,
                "createdAt": repo.created_at, "refs": repo.refs}
        (repo.folder / "repo.json").write_text(json.dumps(info, indent=1))


# --------------------------------------------------------------------------------------------------------------
# HTTP layer
# --------------------------------------------------------------------------------------------------------------


@dataclass
class Reply:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "application/json"


def _json(obj: Any, status: int = 200, headers: dict | None = None) -> Reply:
    return Reply(status, json.dumps(obj).encode(), dict(headers or {}))


def _ascii_header(value: str) -> str:
    return value.encode("ascii", "replace").decode().replace("\r", " ").replace("\n", " ")


class HubRequestHandler(BaseHTTPRequestHandler):
    """Routes one request to the storage. Never reads a header into anything that outlives the request."""

    server: _HubHTTPServer
    protocol_version = "HTTP/1.0"  # one request per connection: no idle keep-alive threads to clean up
    timeout = 30

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    # -- plumbing -----------------------------------------------------------------------------------------------

    @property
    def hub(self) -> HubServer:
        return self.server.hub

    @property
    def storage(self) -> HubStorage:
        return self.server.hub.storage

    def _dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        segments = [unquote(s) for s in url.path.split("/")[1:]]
        query = parse_qs(url.query, keep_blank_values=True)
        auth = self._auth_state()
        try:
            body = self._read_body()
            if auth == "invalid":
                raise HubError(401, "Invalid credentials in Authorization header")
            reply = self._route(method, segments, query, body, auth == "valid")
        except HubError as err:
            headers = {"X-Error-Message": _ascii_header(err.message), **err.headers}
            if err.code:
                headers["X-Error-Code"] = err.code
            reply = _json({"error": err.message}, err.status, headers)
        except Exception as exc:  # a bug in this server: answer 500 and keep the traceback in the log
            self.hub.log(f"error handling {method} {url.path}:\n{traceback.format_exc()}")
            reply = _json({"error": f"Internal error in test hub: {type(exc).__name__}: {exc}"}, 500)
        # Record before answering, so a test sees the request as soon as its client call returns.
        self.hub.record_request(RequestRecord(method, unquote(url.path), query, reply.status, auth == "valid"))
        self._send(reply, with_body=method != "HEAD")

    def _auth_state(self) -> str:
        header = self.headers.get("Authorization")
        if not header:
            return "none"
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(), self.hub.token.encode()):
            return "valid"
        return "invalid"

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks, total = [], 0
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    return b"".join(chunks)
                total += size
                if total > self.hub.max_body_bytes:
                    raise HubError(413, "Request body too large for the test hub")
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        if length > self.hub.max_body_bytes:
            raise HubError(413, "Request body too large for the test hub")
        return self.rfile.read(length) if length else b""

    def _send(self, reply: Reply, with_body: bool) -> None:
        self.send_response(reply.status)
        self.send_header("Content-Type", reply.content_type)
        if "Content-Length" not in reply.headers:
            self.send_header("Content-Length", str(len(reply.body)))
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.send_header("Connection", "close")
        self.end_headers()
        if with_body and reply.body:
            self.wfile.write(reply.body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - signature of the base class
        # The request line holds method + path only; headers (and so tokens) never reach the log.
        self.hub.log(f"{self.address_string()} {format % args}")

    # -- routing ------------------------------------------------------------------------------------------------

    def _route(self, method: str, seg: list[str], query: dict, body: bytes, authed: bool) -> Reply:
        if seg[:1] == ["api"]:
            rest = seg[1:]
            if rest == ["whoami-v2"] and method == "GET":
                return self._whoami(authed)
            if rest == ["validate-yaml"] and method == "POST":
                return _json({"errors": [], "warnings": []})
            if rest == ["agent-harnesses"] and method == "GET":
                return _json({"standardEnvVars": [], "harnesses": {}})
            if rest == ["repos", "create"] and method == "POST":
                return self._create_repo(self._json_body(body), authed)
            if rest == ["repos", "delete"] and method == "DELETE":
                return self._delete_repo(self._json_body(body), authed)
            if len(rest) >= 3 and rest[0] in REPO_TYPE_PREFIXES:
                return self._repo_api(method, REPO_TYPE_PREFIXES[rest[0]], "/".join(rest[1:3]), rest[3:],
                                      query, body, authed)
        else:
            repo_type = "model"
            if seg[:1] and seg[0] in REPO_TYPE_PREFIXES and seg[0] != "models":
                repo_type, seg = REPO_TYPE_PREFIXES[seg[0]], seg[1:]
            if len(seg) >= 5 and seg[2] == "resolve" and method in ("GET", "HEAD"):
                repo = self._readable_repo(repo_type, "/".join(seg[:2]), authed)
                return self._resolve(repo, seg[3], "/".join(seg[4:]))
        raise HubError(404, f"Not implemented by the test hub: {method} /{'/'.join(seg)}")

    def _repo_api(self, method: str, repo_type: str, repo_id: str, action: list[str], query: dict,
                  body: bytes, authed: bool) -> Reply:
        name = action[0] if action else ""
        arg = "/".join(action[1:])
        if method == "GET" and (not action or (name == "revision" and arg)):
            return self._repo_info(self._readable_repo(repo_type, repo_id, authed), arg or DEFAULT_BRANCH, query)
        if method == "GET" and name == "tree" and arg:
            revision, _, path = arg.partition("/")
            return self._tree(self._readable_repo(repo_type, repo_id, authed), revision, path, query)
        if method == "POST" and name == "paths-info" and arg:
            form = parse_qs(body.decode(), keep_blank_values=True)
            return self._paths_info(self._readable_repo(repo_type, repo_id, authed), arg, form.get("paths", []))
        if method == "GET" and name == "refs":
            return self._refs(self._readable_repo(repo_type, repo_id, authed), query)
        if method == "GET" and name == "discussions" and arg.isdigit():
            return self._discussion(self._readable_repo(repo_type, repo_id, authed), int(arg))
        repo = self._writable_repo(repo_type, repo_id, authed)
        if method == "POST" and name == "preupload" and arg:
            return self._preupload(repo, arg, self._json_body(body))
        if method == "POST" and name == "commit" and arg:
            return self._commit(repo, arg, query, body)
        if name == "branch" and arg and method in ("POST", "DELETE"):
            if method == "DELETE":
                self.storage.delete_branch(repo, arg)
            else:
                self.storage.create_branch(repo, arg, self._json_body(body).get("startingPoint"))
            return _json({})
        if method == "POST" and name == "variables" and not arg and repo_type == "space":
            payload = self._json_body(body)
            variables = self.hub.spaces.setdefault(repo_id, {}).setdefault("variables", {})
            variables[str(payload.get("key"))] = str(payload.get("value"))
            return _json({key: {"value": value} for key, value in variables.items()})
        if method == "POST" and name == "discussions" and not arg:
            payload = self._json_body(body)
            is_pr = bool(payload.get("pullRequest"))
            record = self.storage.create_discussion(repo, str(payload.get("title", "")), is_pr, DEFAULT_BRANCH,
                                                    status="draft" if is_pr else "open")
            return _json({"num": record.num, "pullRequest": is_pr, "url": self._discussion_url(repo, record.num)})
        raise HubError(404, f"Not implemented by the test hub: {method} {name or 'info'} on {repo_id}")

    # -- helpers ------------------------------------------------------------------------------------------------

    @staticmethod
    def _json_body(body: bytes) -> dict:
        try:
            value = json.loads(body or b"{}")
        except ValueError as err:
            raise HubError(400, f"Malformed JSON body: {err}") from None
        if not isinstance(value, dict):
            raise HubError(400, "JSON body must be an object")
        return value

    def _repo_url(self, repo: _Repo) -> str:
        prefix = "" if repo.repo_type == "model" else f"{repo.repo_type}s/"
        return f"{self.hub.endpoint}/{prefix}{repo.repo_id}"

    def _discussion_url(self, repo: _Repo, num: int) -> str:
        return f"{self._repo_url(repo)}/discussions/{num}"

    def _readable_repo(self, repo_type: str, repo_id: str, authed: bool) -> _Repo:
        repo = self.storage.get_repo(repo_type, repo_id)
        if repo is None or (repo.private and not authed):
            status = 404 if authed else 401
            raise HubError(status, "Repository not found", code="RepoNotFound")
        return repo

    def _writable_repo(self, repo_type: str, repo_id: str, authed: bool) -> _Repo:
        self._require_auth(authed)
        return self._readable_repo(repo_type, repo_id, authed)

    @staticmethod
    def _require_auth(authed: bool) -> None:
        if not authed:
            raise HubError(401, "You must be authenticated (Authorization: Bearer <token>) to write")

    # -- endpoints ----------------------------------------------------------------------------------------------

    def _whoami(self, authed: bool) -> Reply:
        if not authed:
            raise HubError(401, "Invalid credentials in Authorization header")
        name = self.hub.username
        return _json({
            "type": "user", "id": hashlib.sha1(name.encode()).hexdigest()[:24], "name": name, "fullname": name,
            "email": None, "emailVerified": False, "canPay": False, "isPro": False, "periodEnd": None,
            "avatarUrl": "", "orgs": [],
            "auth": {"type": "access_token", "accessToken": {"displayName": "test-hub-token", "role": "write",
                                                              "createdAt": "2024-01-01T00:00:00.000Z"}},
        })

    def _create_repo(self, payload: dict, authed: bool) -> Reply:
        self._require_auth(authed)
        repo_type = payload.get("type") or "model"
        namespace = payload.get("organization") or self.hub.username
        name = payload.get("name") or ""
        for part in (namespace, name):
            if not part or len(part) > 96 or not set(part) <= _NAME_CHARS or part[0] in ".-" or ".." in part:
                raise HubError(400, f"Invalid repo name: {namespace}/{name}")
        if repo_type not in REPO_TYPE_PREFIXES.values():
            raise HubError(400, f"Invalid repo type: {repo_type}")
        repo_id = f"{namespace}/{name}"
        prefix = "" if repo_type == "model" else f"{repo_type}s/"
        url = f"{self.hub.endpoint}/{prefix}{repo_id}"
        try:
            self.storage.create_repo(repo_type, repo_id, private=payload.get("visibility") == "private")
        except HubError as err:
            return _json({"error": err.message, "url": url}, err.status, {"X-Error-Message": err.message})
        if repo_type == "space":
            self.hub.record_space(repo_id, payload)
        return _json({"url": url, "name": repo_id, "id": repo_id})

    def _delete_repo(self, payload: dict, authed: bool) -> Reply:
        self._require_auth(authed)
        namespace = payload.get("organization") or self.hub.username
        repo_type = payload.get("type") or "model"
        self.storage.delete_repo(repo_type, f"{namespace}/{payload.get('name')}")
        if repo_type == "space":
            self.hub.spaces.pop(f"{namespace}/{payload.get('name')}", None)
        return _json({})

    def _repo_info(self, repo: _Repo, revision: str, query: dict) -> Reply:
        commit = self.storage.resolve(repo, revision)
        tree = self.storage.tree(repo, commit)
        with_blobs = query.get("blobs", ["false"])[-1].lower() in ("1", "true")
        siblings = [
            {"rfilename": path, **({"size": e.size, "blobId": e.oid} if with_blobs else {})}
            for path, e in sorted(tree.items())
        ]
        namespace = repo.repo_id.split("/")[0]
        return _json({
            "_id": hashlib.sha1(repo.repo_id.encode()).hexdigest()[:24], "id": repo.repo_id,
            "modelId": repo.repo_id, "author": namespace, "sha": commit,
            "lastModified": self.storage.commit_date(repo, commit), "createdAt": repo.created_at,
            "private": repo.private, "disabled": False, "gated": False, "downloads": 0, "likes": 0, "tags": [],
            "siblings": siblings, "usedStorage": sum(e.size for e in tree.values()),
        })

    def _resolve(self, repo: _Repo, revision: str, path: str) -> Reply:
        commit = self.storage.resolve(repo, revision)
        entry = self.storage.tree(repo, commit).get(path)
        if entry is None:
            raise HubError(404, f"Entry not found: {path}", code="EntryNotFound",
                           headers={"X-Repo-Commit": commit})
        data = self.storage.read_blob(repo, entry.oid)
        headers = {"X-Repo-Commit": commit, "ETag": f'"{entry.oid}"', "Accept-Ranges": "bytes"}
        status, byte_range = 200, self.headers.get("Range", "")
        if byte_range.startswith("bytes=") and "," not in byte_range:
            first, _, last = byte_range[len("bytes="):].partition("-")
            start = int(first) if first else max(len(data) - int(last or 0), 0)
            stop = min(int(last) + 1, len(data)) if first and last else len(data)
            headers["Content-Range"] = f"bytes {start}-{max(stop - 1, start)}/{len(data)}"
            data, status = data[start:stop], 206
        return Reply(status, data, headers, content_type="application/octet-stream")

    def _tree(self, repo: _Repo, revision: str, path: str, query: dict) -> Reply:
        tree = self.storage.tree(repo, self.storage.resolve(repo, revision))
        recursive = query.get("recursive", ["false"])[-1].lower() in ("1", "true")
        prefix = f"{path.strip('/')}/" if path.strip("/") else ""
        if prefix and not any(p.startswith(prefix) for p in tree):
            raise HubError(404, f"Entry not found: {path}", code="EntryNotFound")
        files: list[dict] = []
        folders: dict[str, list[str]] = {}
        for file_path, entry in sorted(tree.items()):
            if not file_path.startswith(prefix):
                continue
            parts = file_path[len(prefix):].split("/")
            for depth in range(1, len(parts) if recursive else min(len(parts), 2)):
                folders.setdefault(prefix + "/".join(parts[:depth]), []).append(entry.oid)
            if recursive or len(parts) == 1:
                files.append({"type": "file", "oid": entry.oid, "size": entry.size, "path": file_path})
        dirs = [{"type": "directory", "oid": hashlib.sha1("".join(oids).encode()).hexdigest(), "path": p}
                for p, oids in sorted(folders.items())]
        return _json(dirs + files)

    def _paths_info(self, repo: _Repo, revision: str, paths: list[str]) -> Reply:
        tree = self.storage.tree(repo, self.storage.resolve(repo, revision))
        found = []
        for path in paths:
            if path in tree:
                entry = tree[path]
                found.append({"type": "file", "oid": entry.oid, "size": entry.size, "path": path})
            elif any(p.startswith(path.rstrip("/") + "/") for p in tree):
                found.append({"type": "directory", "oid": hashlib.sha1(path.encode()).hexdigest(), "path": path})
        return _json(found)

    def _refs(self, repo: _Repo, query: dict) -> Reply:
        refs = self.storage.refs(repo)
        branches = [{"name": _short_ref(r), "ref": r, "targetCommit": oid}
                    for r, oid in sorted(refs.items()) if r.startswith("refs/heads/")]
        body: dict[str, Any] = {"branches": branches, "converts": [], "tags": []}
        if query.get("include_prs"):
            body["pullRequests"] = [{"name": r, "ref": r, "targetCommit": oid}
                                    for r, oid in sorted(refs.items()) if r.startswith("refs/pr/")]
        return _json(body)

    def _discussion(self, repo: _Repo, num: int) -> Reply:
        record = self.storage.discussion(repo, num)
        if record is None:
            raise HubError(404, f"Discussion {num} not found")
        return _json({
            "num": num, "title": record.title, "status": record.status, "isPullRequest": record.is_pull_request,
            "author": {"name": self.hub.username}, "createdAt": _now(),
            "repo": {"name": repo.repo_id, "type": repo.repo_type}, "events": [],
            "changes": {"base": record.base_ref, "mergeCommitId": None}, "filesWithConflicts": [], "diff": "",
        })

    def _preupload(self, repo: _Repo, revision: str, payload: dict) -> Reply:
        tree = self.storage.tree(repo, self.storage.resolve(repo, revision))
        files = []
        for item in payload.get("files", []):
            path = str(item.get("path", ""))
            existing = tree.get(path)
            files.append({"path": path, "uploadMode": "regular", "shouldIgnore": False,
                          "oid": existing.oid if existing else None})
        return _json({"files": files, "commitOid": self.storage.resolve(repo, revision)})

    def _commit(self, repo: _Repo, revision: str, query: dict, body: bytes) -> Reply:
        failure = self.hub.take_commit_failure()
        if failure is not None:
            raise HubError(*failure)
        header: dict = {}
        operations: list[tuple[str, dict]] = []
        for line in body.splitlines():
            if not line.strip():
                continue
            try:
                item = json.loads(line)
                key, value = item["key"], item["value"]
            except (ValueError, KeyError, TypeError):
                raise HubError(400, "Malformed NDJSON commit payload") from None
            if key == "header":
                header = value
            else:
                operations.append((key, value))
        create_pr = query.get("create_pr", ["0"])[-1] in ("1", "true", "True")
        record, pull_request = self.storage.commit(
            repo, revision=revision, create_pr=create_pr, header=header, operations=operations
        )
        return _json({
            "success": True, "commitOid": record.oid, "commitMessage": record.message, "hookOutput": "",
            "commitUrl": f"{self._repo_url(repo)}/commit/{record.oid}",
            "pullRequestUrl": self._discussion_url(repo, pull_request.num) if pull_request else None,
        })


class _HubHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = False

    def __init__(self, hub: HubServer):
        self.hub = hub
        super().__init__(("127.0.0.1", 0), HubRequestHandler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind calls socket.getfqdn (a DNS look-up): not needed on loopback.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def handle_error(self, request: Any, client_address: Any) -> None:
        self.hub.log(f"connection error from {client_address[0]}:\n{traceback.format_exc()}")


# --------------------------------------------------------------------------------------------------------------
# Server object and client wiring
# --------------------------------------------------------------------------------------------------------------


class HubServer:
    """The test Hub: start/stop, what tests inspect, and failure injection.

    Failure injection: set ``fail_next_commit = True`` and the next request to the commit endpoint is answered
    ``fail_commit_status`` (500) with ``fail_commit_message``, and changes nothing. It is one-shot.
    """

    def __init__(self, root: str | os.PathLike, *, token: str | None = None, username: str = DEFAULT_USERNAME,
                 max_body_bytes: int = MAX_BODY_BYTES):
        self.root = Path(root)
        self.token = token or f"hf_testhub_{secrets.token_hex(16)}"
        self.username = username
        self.max_body_bytes = max_body_bytes
        self.storage = HubStorage(self.root)
        self.spaces: dict[str, dict] = {}  # Space id -> {"sdk", "hardware", "variables": {key: value}}
        self.fail_next_commit = False
        self.fail_commit_status = 500
        self.fail_commit_message = "Injected failure: the test hub rejected this commit"
        self._requests: deque[RequestRecord] = deque(maxlen=MAX_RECORDS)
        self._log: deque[str] = deque(maxlen=MAX_RECORDS)
        self._lock = threading.Lock()
        self._httpd: _HubHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ----------------------------------------------------------------------------------------------

    def start(self) -> HubServer:
        if self._httpd is None:
            self._httpd = _HubHTTPServer(self)
            self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                            name="test-hub", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            if self._thread is not None:
                self._thread.join(timeout=5)
            self._httpd = self._thread = None

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def endpoint(self) -> str:
        if self._httpd is None:
            raise RuntimeError("The test hub is not running")
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    # -- what tests inspect -------------------------------------------------------------------------------------

    @property
    def requests(self) -> list[RequestRecord]:
        with self._lock:
            return list(self._requests)

    @property
    def log_lines(self) -> list[str]:
        with self._lock:
            return list(self._log)

    @property
    def repos(self) -> dict[str, RepoRecord]:
        """Live repos keyed by repo id ("datasets/<id>" / "spaces/<id>" for other types)."""
        return self.storage.snapshot()

    def clear_requests(self) -> None:
        with self._lock:
            self._requests.clear()

    def read_file(self, repo_id: str, path: str, revision: str = DEFAULT_BRANCH, repo_type: str = "model") -> bytes:
        repo = self.storage.get_repo(repo_type, repo_id)
        if repo is None:
            raise KeyError(repo_id)
        entry = self.storage.tree(repo, self.storage.resolve(repo, revision))[path]
        return self.storage.read_blob(repo, entry.oid)

    # -- used by the handler ------------------------------------------------------------------------------------

    def record_request(self, record: RequestRecord) -> None:
        with self._lock:
            self._requests.append(record)

    def log(self, line: str) -> None:
        with self._lock:
            self._log.append(line)
        logger.debug("%s", line)

    def record_space(self, repo_id: str, payload: dict) -> None:
        """Keep what a Space's creation asked for (SDK, hardware, variables), as tests inspect it in ``spaces``."""
        variables = {str(v.get("key")): str(v.get("value")) for v in payload.get("variables") or []}
        with self._lock:
            self.spaces[repo_id] = {"sdk": payload.get("sdk"), "hardware": payload.get("hardware"),
                                    "variables": variables}

    def take_commit_failure(self) -> tuple[int, str] | None:
        with self._lock:
            if not self.fail_next_commit:
                return None
            self.fail_next_commit = False
            return self.fail_commit_status, self.fail_commit_message


@contextmanager
def hf_clients_pointed_at(endpoint: str, hf_home: str | os.PathLike, *, token: str | None = None,
                          disable_xet: bool = False) -> Iterator[None]:
    """Point the already-imported ``huggingface_hub`` and ``transformers`` at ``endpoint`` and restore them after.

    ``huggingface_hub`` reads its environment once, at import, into ``huggingface_hub.constants``; so setting
    ``HF_ENDPOINT`` & co. in ``os.environ`` is not enough inside one process. Patched here:

    * ``os.environ``: HF_ENDPOINT, HF_HOME, HF_HUB_CACHE, HF_HUB_OFFLINE=0, HF_TOKEN (or removed), NO_PROXY, ...
      (for subprocesses and for code that reads the environment later);
    * ``huggingface_hub.constants``: ENDPOINT, HUGGINGFACE_CO_URL_TEMPLATE (``hf_hub_download``/``hf_hub_url``
      build URLs from it, not from ENDPOINT), HF_HUB_OFFLINE, cache and token paths, telemetry off (which also
      skips the agent-harness look-up done while building the User-Agent);
    * ``huggingface_hub.hf_api.api.endpoint``: the module-level ``HfApi`` behind ``huggingface_hub.create_repo``,
      ``upload_folder``, ``model_info``... was built at import time with the old endpoint;
    * ``transformers.utils.hub._hf_api``: transformers' own cached ``HfApi`` (used by ``push_to_hub`` and by
      ``from_pretrained`` to resolve revisions) is reset so that it is rebuilt with the new endpoint;
    * the shared httpx client of huggingface_hub is closed before and after, so it picks up NO_PROXY.
    """
    import huggingface_hub.constants as constants
    from huggingface_hub import hf_api
    from huggingface_hub.utils import _http

    hf_home = Path(hf_home)
    hub_cache = hf_home / "hub"
    env = {
        "HF_ENDPOINT": endpoint,
        "HF_HOME": str(hf_home),
        "HF_HUB_CACHE": str(hub_cache),
        "HF_HUB_OFFLINE": "0",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "NO_PROXY": ",".join(filter(None, ["127.0.0.1,localhost", os.environ.get("NO_PROXY")])),
        "no_proxy": ",".join(filter(None, ["127.0.0.1,localhost", os.environ.get("no_proxy")])),
    }
    if token is not None:
        env["HF_TOKEN"] = token
    if disable_xet:
        env["HF_HUB_DISABLE_XET"] = "1"
    constant_values = {
        "ENDPOINT": endpoint,
        "HUGGINGFACE_CO_URL_TEMPLATE": endpoint + "/{repo_id}/resolve/{revision}/{filename}",
        "HF_HUB_OFFLINE": False,
        "HF_HOME": str(hf_home),
        "HF_HUB_CACHE": str(hub_cache),
        "HUGGINGFACE_HUB_CACHE": str(hub_cache),
        "HF_ASSETS_CACHE": str(hf_home / "assets"),
        "HF_XET_CACHE": str(hf_home / "xet"),
        "HF_TOKEN_PATH": str(hf_home / "token"),
        "HF_STORED_TOKENS_PATH": str(hf_home / "stored_tokens"),
        "AGENT_HARNESSES_PATH": str(hf_home / ".agent_harnesses.json"),
        "HF_HUB_DISABLE_TELEMETRY": True,
    }
    if disable_xet:
        constant_values["HF_HUB_DISABLE_XET"] = True
    module_copies = [  # modules that did `from ..constants import X`
        ("huggingface_hub.utils._cache_manager", "HF_HUB_CACHE", str(hub_cache)),
        ("huggingface_hub.utils._cache_assets", "HF_ASSETS_CACHE", str(hf_home / "assets")),
    ]
    with ExitStack() as stack:
        stack.enter_context(mock.patch.dict(os.environ, env))
        removed = ["TRANSFORMERS_OFFLINE", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE", "HUGGINGFACE_CO_STAGING"]
        for name in removed + ([] if token is not None else ["HF_TOKEN"]):
            os.environ.pop(name, None)  # restored by patch.dict
        for name, value in constant_values.items():
            if hasattr(constants, name):
                stack.enter_context(mock.patch.object(constants, name, value))
        stack.enter_context(mock.patch.object(hf_api.api, "endpoint", endpoint))
        for module_name, name, value in module_copies:
            if module_name in sys.modules:
                stack.enter_context(mock.patch.object(sys.modules[module_name], name, value))
        transformers_hub = sys.modules.get("transformers.utils.hub")
        if transformers_hub is not None:
            stack.enter_context(mock.patch.object(transformers_hub, "_hf_api", None))
        else:  # imported during the block: do not leave its HfApi pointing at a stopped server
            stack.callback(_forget_transformers_hf_api)
        _http.close_session()
        stack.callback(_http.close_session)
        yield


def _forget_transformers_hf_api() -> None:
    module = sys.modules.get("transformers.utils.hub")
    if module is not None:
        module._hf_api = None


@contextmanager
def running_hub(tmp_path: str | os.PathLike, *, patch_clients: bool = True, token_in_env: bool = True,
                disable_xet: bool = False, username: str = DEFAULT_USERNAME) -> Iterator[HubServer]:
    """Start a test Hub under ``tmp_path`` and point huggingface_hub/transformers at it for the block.

    Storage goes to ``tmp_path/hub-storage``, the client cache (HF_HOME) to ``tmp_path/hf-home``. With
    ``token_in_env`` the server's fake token is exported as ``HF_TOKEN`` (so calls without ``token=`` are
    authenticated); otherwise ``HF_TOKEN`` is removed and calls are anonymous unless given ``token=``.
    """
    tmp_path = Path(tmp_path)
    with HubServer(tmp_path / "hub-storage", username=username) as server, ExitStack() as stack:
        if patch_clients:
            stack.enter_context(hf_clients_pointed_at(
                server.endpoint, tmp_path / "hf-home", token=server.token if token_in_env else None,
                disable_xet=disable_xet,
            ))
        yield server
